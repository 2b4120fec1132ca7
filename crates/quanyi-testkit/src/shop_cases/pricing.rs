//! Shop case of the checkout's price stage: the shop's pricing rules price quotes and
//! placements, lines keep how they were priced, codes must apply, a free order is delivered at
//! once.

use std::sync::Arc;

use quanyi::pricing::{
    Condition, Effect, ListKind, ListPrice, MemberFacts, PriceList, Promotion, Purchase, Rules,
    Stacking, Target, Window,
};
use quanyi::{
    CartLine, Currency, GoodsDraft, GoodsKind, OrderStatus, PlaceOrder, PriceSource, SkuDraft,
    SkuId, StockSource, Store,
};

use super::{Rig, cny, import, member, notice};
use crate::fixtures;

fn promotion(id: &str, priority: i32, target: Target, effect: Effect) -> Promotion {
    Promotion {
        id: id.into(),
        name: format!("{id} promotion").into(),
        code: None,
        priority,
        stacking: Stacking::Stackable,
        target,
        conditions: vec![],
        effect,
        window: Window::default(),
        budget: None,
        coupon: false,
    }
}

/// The shop's rules: a gold price for the video card, 10.00 off from 50.00, a coupon code
/// worth 3.00 from 30.00, and the music trial free for members who never bought music.
fn rules(video: SkuId) -> Rules {
    let mut coupon = promotion(
        "coupon-3",
        1,
        Target::Order,
        Effect::AmountOff {
            amount: cny("3.00"),
        },
    );
    coupon.code = Some("WELCOME3".into());
    coupon.conditions = vec![Condition::MinSpend {
        amount: cny("30.00"),
    }];
    let mut trial = promotion(
        "music-trial",
        9,
        Target::Categories {
            categories: vec!["music".into()],
        },
        Effect::SetPrice {
            quantity: 1,
            price: cny("0.00"),
        },
    );
    trial.stacking = Stacking::Exclusive;
    trial.conditions = vec![Condition::NeverBought {
        purchase: Purchase::Category {
            category: "music".into(),
        },
    }];
    Rules {
        lists: vec![PriceList {
            id: "gold".into(),
            name: "Gold member prices".into(),
            currency: Currency::CNY,
            kind: ListKind::Sale,
            priority: 0,
            applies: quanyi::pricing::Applies {
                levels: vec!["gold".into()],
                ..Default::default()
            },
            prices: vec![ListPrice {
                sku: video,
                tiers: vec![(1, cny("17.90"))],
            }],
        }],
        promotions: vec![
            promotion(
                "spend-50",
                5,
                Target::Order,
                Effect::Threshold {
                    tiers: vec![(cny("50.00"), cny("10.00"))],
                },
            ),
            coupon,
            trial,
        ],
        ..Rules::none(Currency::CNY)
    }
}

/// Quotes and placements are priced by the shop's rules: a gold member's list price, a
/// threshold discount and a coupon code stack, each line keeps its list and adjustments and
/// the order's total is what the quote said; the notice pays that total. An unknown code, or
/// a code whose promotion does not apply, places nothing. A free trial (total zero) is paid
/// and delivered at once, without a notice; the member's second trial is priced in full.
pub async fn pricing_rules_price_the_checkout(store: Arc<dyn Store>) {
    let rig = Rig::new(store);
    let video = fixtures::id(SkuId::generate);
    let music = fixtures::id(SkuId::generate);
    let shop = rig.shop();
    let catalog = quanyi::Actor::new("merchant", "catalog").unwrap();
    shop.promotions()
        .load(&catalog, rules(video))
        .await
        .unwrap();
    for (sku, title, price, category) in [
        (video, "Video month card", "19.90", "video"),
        (music, "Music month card", "15.00", "music"),
    ] {
        shop.create_goods(
            &catalog,
            GoodsDraft {
                title: title.into(),
                kind: GoodsKind::CardKey,
                skus: vec![
                    SkuDraft::new(sku, "1 month", cny(price)).with_stock(StockSource::VaultPool),
                ],
                categories: vec![category.into()],
            },
        )
        .await
        .unwrap();
    }
    let codes: Vec<String> = (0..8).map(|i| format!("PRICED-{i:04}")).collect();
    let (video_codes, music_codes) = codes.split_at(4);
    import(
        &shop,
        video,
        &video_codes.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;
    import(
        &shop,
        music,
        &music_codes.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;

    let gold = MemberFacts {
        level: Some("gold".into()),
        orders_before: 2,
        bought_categories: ["music".to_owned()].into(),
        ..MemberFacts::default()
    };
    let ann = member("ann");
    let request = PlaceOrder::new(ann.clone(), vec![CartLine::new(video, 3)])
        .promotion_code("welcome3")
        .member_facts(gold.clone());
    let quote = shop.quote(&request).await.unwrap();
    // 3 x 17.90 = 53.70; 10.00 off from 50.00, then 3.00 by code: 40.70.
    assert_eq!(quote.total, cny("40.70"));
    let explained = quote.explained.as_ref().unwrap();
    assert_eq!(explained.subtotal, cny("53.70"));
    let applied: Vec<&str> = explained.applied.iter().map(|a| &*a.promotion).collect();
    assert_eq!(applied, ["spend-50", "coupon-3"]);
    let order = shop.place(request).await.unwrap();
    assert_eq!(order.total(), cny("40.70"));
    let line = &order.lines()[0];
    assert_eq!((line.unit_price, line.amount), (cny("17.90"), cny("40.70")));
    match &line.price_source {
        PriceSource::Priced { list, adjustments } => {
            assert_eq!(list.as_deref(), Some("gold"));
            let off: Vec<(&str, quanyi::Money)> = adjustments
                .iter()
                .map(|a| (&*a.promotion, a.amount))
                .collect();
            assert_eq!(off, [("spend-50", cny("10.00")), ("coupon-3", cny("3.00"))]);
        }
        other => panic!("{other:?}"),
    }
    let stored = shop.order(order.id()).await.unwrap();
    assert_eq!(stored, order);
    let paid = shop
        .confirm_payment(notice(&order, "txn-priced"))
        .await
        .unwrap()
        .order;
    assert_eq!(paid.status(), OrderStatus::Delivered);

    // A code nobody has, or one whose promotion does not apply, places nothing.
    let stock = shop.stock().count(video).await.unwrap();
    let unknown = PlaceOrder::new(ann.clone(), vec![CartLine::new(video, 1)])
        .promotion_code("NOPE")
        .member_facts(gold.clone());
    let refused = shop.place(unknown).await.unwrap_err();
    assert_eq!(refused.code(), "unknown_promotion_code");
    let too_small = PlaceOrder::new(ann.clone(), vec![CartLine::new(video, 1)])
        .promotion_code("WELCOME3")
        .member_facts(gold.clone());
    let refused = shop.place(too_small).await.unwrap_err();
    assert_eq!(refused.code(), "promotion_not_applied");
    assert_eq!(shop.stock().count(video).await.unwrap(), stock);

    // A member who never bought music gets the trial free: paid and delivered at once.
    let bob = member("bob");
    let newcomer = MemberFacts {
        orders_before: 0,
        ..MemberFacts::default()
    };
    let trial =
        PlaceOrder::new(bob.clone(), vec![CartLine::new(music, 1)]).member_facts(newcomer.clone());
    let free = shop.place(trial).await.unwrap();
    assert!(free.total().is_zero());
    assert_eq!(free.status(), OrderStatus::Delivered);
    let payment = free.payment().unwrap();
    assert_eq!(&*payment.provider, quanyi::FREE_ORDER_PROVIDER);
    assert_eq!(shop.reveal(&bob, free.id()).await.unwrap().cards.len(), 1);
    // Once music is bought, the same member pays the list price.
    let bought = MemberFacts {
        bought_categories: ["music".to_owned()].into(),
        ..newcomer
    };
    let again = PlaceOrder::new(bob, vec![CartLine::new(music, 1)]).member_facts(bought);
    let full = shop.place(again).await.unwrap();
    assert_eq!(full.total(), cny("15.00"));
    assert_eq!(full.status(), OrderStatus::AwaitingPayment);
    assert_eq!(full.lines()[0].price_source, PriceSource::ListPrice);
}

/// A shop whose rules hold coupons of 5.00 off: `ONCE-0` to `ONCE-19` (one use in all each)
/// and `MINE` (one use per member); answers it and a card SKU with `stock` keys.
async fn coupon_shop(rig: &Rig, stock: usize) -> (quanyi::Shop, SkuId) {
    let card = fixtures::id(SkuId::generate);
    let coupon = |id: &str, budget: quanyi::pricing::Budget| Promotion {
        code: Some(id.to_uppercase()),
        budget: Some(budget),
        ..promotion(
            id,
            1,
            Target::Order,
            Effect::AmountOff {
                amount: cny("5.00"),
            },
        )
    };
    let mut promotions: Vec<Promotion> = (0..20)
        .map(|i| {
            coupon(
                &format!("once-{i}"),
                quanyi::pricing::Budget {
                    total: Some(1),
                    per_member: None,
                    discount: None,
                },
            )
        })
        .collect();
    promotions.push(coupon(
        "mine",
        quanyi::pricing::Budget {
            total: None,
            per_member: Some(1),
            discount: None,
        },
    ));
    let rules = Rules {
        promotions,
        ..Rules::none(Currency::CNY)
    };
    let shop = rig.shop();
    shop.promotions()
        .load(&quanyi::Actor::new("merchant", "pricing").unwrap(), rules)
        .await
        .unwrap();
    shop.create_goods(
        &quanyi::Actor::new("merchant", "catalog").unwrap(),
        GoodsDraft {
            title: "Video month card".into(),
            kind: GoodsKind::CardKey,
            skus: vec![
                SkuDraft::new(card, "1 month", cny("19.90")).with_stock(StockSource::VaultPool),
            ],
            categories: vec![],
        },
    )
    .await
    .unwrap();
    let codes: Vec<String> = (0..stock).map(|i| format!("COUPON-CARD-{i:04}")).collect();
    import(
        &shop,
        card,
        &codes.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;
    (shop, card)
}

/// A one-use coupon entered by 50 buyers at once gives exactly one order; a once-per-member
/// coupon entered by one member 10 times at once gives one; the others are refused with
/// `promotion_not_applied` and place nothing.
pub async fn coupons_are_used_within_their_budget(store: Arc<dyn Store>) {
    let rig = Rig::new(store);
    let (shop, card) = coupon_shop(&rig, 70).await;
    let race = |buyers: Vec<quanyi::MemberId>, code: &'static str| {
        let shop = shop.clone();
        async move {
            let mut tasks = tokio::task::JoinSet::new();
            for buyer in buyers {
                let shop = shop.clone();
                tasks.spawn(async move {
                    let request =
                        PlaceOrder::new(buyer, vec![CartLine::new(card, 1)]).promotion_code(code);
                    shop.place(request).await
                });
            }
            tasks.join_all().await
        }
    };
    let outcomes = race(
        (0..50).map(|i| member(&format!("buyer-{i}"))).collect(),
        "ONCE-0",
    )
    .await;
    let placed: Vec<_> = outcomes.iter().filter_map(|o| o.as_ref().ok()).collect();
    assert_eq!(placed.len(), 1);
    assert_eq!(placed[0].total(), cny("14.90"));
    for refused in outcomes.iter().filter_map(|o| o.as_ref().err()) {
        assert_eq!(refused.code(), "promotion_not_applied", "{refused}");
    }
    let stock = shop.stock().count(card).await.unwrap();
    assert_eq!(stock.reserved, 1);

    let ann = member("ann");
    let outcomes = race(vec![ann.clone(); 10], "MINE").await;
    assert_eq!(outcomes.iter().filter(|o| o.is_ok()).count(), 1);
    for refused in outcomes.iter().filter_map(|o| o.as_ref().err()) {
        assert_eq!(refused.code(), "promotion_not_applied", "{refused}");
    }
    // Another member still has their use of it.
    let bob = PlaceOrder::new(member("bob"), vec![CartLine::new(card, 1)]).promotion_code("MINE");
    assert_eq!(shop.place(bob).await.unwrap().total(), cny("14.90"));
}

/// An order holding a one-use coupon, cancelled while its payment arrives, either is paid and
/// keeps the coupon used, or is cancelled and gives it back: never both (20 rounds, a coupon
/// each).
pub async fn a_coupon_is_returned_once_or_used_once(store: Arc<dyn Store>) {
    let rig = Rig::new(store);
    let (shop, card) = coupon_shop(&rig, 40).await;
    for round in 0..20 {
        let buyer = member(&format!("racer-{round}"));
        let code = format!("ONCE-{round}");
        let request =
            PlaceOrder::new(buyer.clone(), vec![CartLine::new(card, 1)]).promotion_code(&code);
        let order = shop.place(request).await.unwrap();
        let pay = {
            let (shop, order) = (shop.clone(), order.clone());
            tokio::spawn(async move {
                shop.confirm_payment(notice(&order, &format!("txn-coupon-{round}")))
                    .await
            })
        };
        let cancel = {
            let (shop, buyer, id) = (shop.clone(), buyer.clone(), order.id());
            tokio::spawn(async move { shop.cancel_order(&buyer, id, "changed my mind").await })
        };
        let (paid, cancelled) = (pay.await.unwrap(), cancel.await.unwrap());
        let status = shop.order(order.id()).await.unwrap().status();
        assert_eq!(
            paid.is_ok(),
            status != OrderStatus::Cancelled,
            "round {round}"
        );
        assert_eq!(
            cancelled.is_ok(),
            status == OrderStatus::Cancelled,
            "round {round}"
        );
        let key = format!("once-{round}");
        let used = rig
            .store
            .budget_used(&rig.tenant, "promotion", &key)
            .await
            .unwrap();
        let again =
            PlaceOrder::new(member("next"), vec![CartLine::new(card, 1)]).promotion_code(&code);
        let reused = shop.place(again).await;
        if status == OrderStatus::Cancelled {
            assert_eq!(
                used, 0,
                "round {round}: cancelled but the coupon stays used"
            );
            reused.unwrap();
        } else {
            assert_eq!(used, 1, "round {round}: paid but the coupon was given back");
            assert_eq!(reused.unwrap_err().code(), "promotion_not_applied");
        }
    }
}
