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
    let shop = rig
        .builder(rig.store.clone())
        .pricing(rules(video))
        .build()
        .unwrap();
    let catalog = quanyi::Actor::new("merchant", "catalog").unwrap();
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
