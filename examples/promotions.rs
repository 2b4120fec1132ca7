//! Pricing and promotions end to end, on the in-memory store: a gold member's price, a
//! threshold discount (满减), a coupon code with a budget, a trial pack (权益尝鲜包) bought once at
//! its trial price and refused the second time by the pack's per-member limit, a renewal price
//! (续费专享价) for a member whose membership ends within a week, and the explanation of each
//! quote: which list set each price, what each promotion took off, and the promotions that did
//! not apply with why.
//!
//! The rules are built in code, written to their JSON form and loaded through
//! `shop.promotions().load_json` (versioned and audited), as an operator would load them from a
//! file; a birthday coupon template is then added on its own and one coupon of it issued to a
//! member, who uses it once.
//!
//! Run it with `cargo run --example promotions`.

use std::error::Error;
use std::sync::Arc;

use quanyi::pricing::{
    Applies, Budget, Condition, Effect, ListKind, ListPrice, MemberFacts, PriceList, Promotion,
    Rules, Stacking, Target, Window,
};
use quanyi::*;

fn cny(text: &str) -> Result<Money, quanyi::crates::core::MoneyError> {
    Money::parse(text, Currency::CNY)
}

fn promotion(id: &str, name: &str, priority: i32, target: Target, effect: Effect) -> Promotion {
    Promotion {
        id: id.into(),
        name: name.into(),
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

/// The shop's rules: gold prices for the video card, 8.00 off from 50.00, a welcome coupon
/// (5.00 off from 20.00, 1,000 uses, one per member), 3.00 off a music membership renewed in
/// its last week.
fn rules(video: SkuId, music: SkuId) -> Result<Rules, Box<dyn Error>> {
    let mut coupon = promotion(
        "welcome",
        "Welcome coupon",
        1,
        Target::Order,
        Effect::AmountOff {
            amount: cny("5.00")?,
        },
    );
    coupon.code = Some("WELCOME5".into());
    coupon.conditions = vec![Condition::MinSpend {
        amount: cny("20.00")?,
    }];
    coupon.budget = Some(Budget {
        total: Some(1_000),
        per_member: Some(1),
        discount: None,
    });
    let mut renewal = promotion(
        "renew-music",
        "Renewal price",
        5,
        Target::Skus { skus: vec![music] },
        Effect::AmountOff {
            amount: cny("3.00")?,
        },
    );
    renewal.conditions = vec![Condition::MembershipEndingWithin {
        plan: "music".into(),
        days: 7,
    }];
    Ok(Rules {
        lists: vec![PriceList {
            id: "gold".into(),
            name: "Gold member price".into(),
            currency: Currency::CNY,
            kind: ListKind::Sale,
            priority: 0,
            applies: Applies {
                levels: vec!["gold".into()],
                ..Applies::default()
            },
            prices: vec![ListPrice {
                sku: video,
                tiers: vec![(1, cny("17.90")?)],
            }],
        }],
        promotions: vec![
            promotion(
                "spend-50",
                "8.00 off from 50.00",
                3,
                Target::Order,
                Effect::Threshold {
                    tiers: vec![(cny("50.00")?, cny("8.00")?)],
                },
            ),
            coupon,
            renewal,
        ],
        ..Rules::none(Currency::CNY)
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let now = chrono::Utc::now();
    let mut rng = rand::thread_rng();
    let (video, music, voucher, trial) = (
        SkuId::generate(now, &mut rng),
        SkuId::generate(now, &mut rng),
        SkuId::generate(now, &mut rng),
        SkuId::generate(now, &mut rng),
    );
    let json = serde_json::to_string_pretty(&rules(video, music)?)?;
    println!("== quanyi promotions ==");
    let shop = Shop::builder(
        Arc::new(MemoryStore::new()),
        Arc::new(StaticKeyProvider::new(RootKey::generate(&mut rng))),
    )
    .build()?;
    let pricer = Actor::new("lin", "pricing")?;
    let version = shop.promotions().load_json(&pricer, &json).await?;
    let stored = shop.promotions().current().await?;
    println!(
        "rules version {version}: {} list(s), {} promotion(s), loaded from {} bytes of JSON",
        stored.rules.as_ref().map_or(0, |r| r.lists.len()),
        stored.rules.as_ref().map_or(0, |r| r.promotions.len()),
        json.len()
    );
    let catalog = Actor::new("mei", "catalog")?;
    let goods = [
        (
            video,
            "Video membership, 1-month card",
            "19.90",
            "video",
            GoodsKind::CardKey,
        ),
        (
            voucher,
            "Takeaway voucher",
            "10.00",
            "takeaway",
            GoodsKind::CardKey,
        ),
        (
            music,
            "Music membership, 30 days",
            "15.00",
            "music",
            GoodsKind::Membership {
                plan: "music".into(),
                days: 30,
            },
        ),
    ];
    for (sku, title, price, category, kind) in goods {
        let stock = if matches!(kind, GoodsKind::Membership { .. }) {
            StockSource::Unlimited
        } else {
            StockSource::VaultPool
        };
        shop.create_goods(
            &catalog,
            GoodsDraft {
                title: title.into(),
                kind,
                skus: vec![SkuDraft::new(sku, "standard", cny(price)?).with_stock(stock)],
                categories: vec![category.into()],
            },
        )
        .await?;
    }
    shop.create_goods(
        &catalog,
        GoodsDraft {
            title: "Trial pack: music and takeaway".into(),
            kind: GoodsKind::BenefitPack {
                components: vec![
                    BundleComponent {
                        sku: music,
                        quantity: 1,
                    },
                    BundleComponent {
                        sku: voucher,
                        quantity: 1,
                    },
                ],
            },
            skus: vec![
                SkuDraft::new(trial, "trial", cny("9.90")?).with_limits(PurchaseLimits {
                    per_member: Some(1),
                    ..PurchaseLimits::default()
                }),
            ],
            categories: vec!["trial".into()],
        },
    )
    .await?;
    let stock_keeper = Actor::new("wei", "stock")?;
    for (sku, prefix) in [(video, "VIDEO"), (voucher, "FOOD")] {
        let lines: Vec<String> = (1..=6).map(|i| format!("{prefix}-0000-{i:04}")).collect();
        shop.import_card_keys(
            &stock_keeper,
            sku,
            lines.join("\n").as_bytes(),
            &ImportOptions::default(),
            BadLines::Reject,
        )
        .await?;
    }

    println!("\n-- ann (gold) buys 3 video cards with the code WELCOME5 --");
    let gold = MemberFacts {
        level: Some("gold".into()),
        orders_before: 4,
        ..MemberFacts::default()
    };
    let ann = MemberId::new("ann")?;
    let request = PlaceOrder::new(ann.clone(), vec![CartLine::new(video, 3)])
        .promotion_code("WELCOME5")
        .member_facts(gold.clone());
    explain(&shop.quote(&request).await?);
    let order = shop.place(request).await?;
    let paid = shop
        .confirm_payment(PaymentNotification {
            provider: "alipay".into(),
            transaction_id: "2026120622001001".into(),
            order: order.id(),
            amount: order.total(),
        })
        .await?;
    println!(
        "order {} placed for {} and {}",
        order.id(),
        order.total(),
        paid.order.status()
    );
    let again = PlaceOrder::new(ann.clone(), vec![CartLine::new(video, 3)])
        .promotion_code("WELCOME5")
        .member_facts(gold);
    match shop.place(again).await {
        Err(e) => println!("ann uses WELCOME5 again: refused ({})", e.code()),
        Ok(o) => return Err(format!("the coupon was used twice: {}", o.id()).into()),
    }

    println!("\n-- bob (no level) looks at 2 video cards --");
    let bob = MemberId::new("bob")?;
    let request =
        PlaceOrder::new(bob, vec![CartLine::new(video, 2)]).member_facts(MemberFacts::default());
    explain(&shop.quote(&request).await?);

    println!("\n-- carol buys the trial pack, then tries again --");
    let carol = MemberId::new("carol")?;
    let pack = PlaceOrder::new(carol.clone(), vec![CartLine::new(trial, 1)])
        .member_facts(MemberFacts::default());
    explain(&shop.quote(&pack).await?);
    let first = shop.place(pack.clone()).await?;
    println!(
        "trial pack placed for {}: {} line(s), shares {}",
        first.total(),
        first.lines().len(),
        first
            .lines()
            .iter()
            .map(|l| l.amount.to_string())
            .collect::<Vec<_>>()
            .join(" + ")
    );
    match shop.place(pack).await {
        Err(e) => println!("a second trial pack: refused ({})", e.code()),
        Ok(o) => return Err(format!("a second trial pack was sold: {}", o.id()).into()),
    }

    println!("\n-- dave's music membership ends in 3 days: he renews --");
    let dave = MemberId::new("dave")?;
    let ending = MemberFacts {
        memberships: vec![("music".into(), now + chrono::Duration::days(3))],
        orders_before: 2,
        ..MemberFacts::default()
    };
    let renew = PlaceOrder::new(dave, vec![CartLine::new(music, 1)]).member_facts(ending);
    explain(&shop.quote(&renew).await?);
    let renewed = shop.place(renew).await?;
    println!("renewal placed for {}", renewed.total());

    println!("\n-- a birthday coupon template, and one coupon of it for erin --");
    let mut birthday = promotion(
        "birthday",
        "Birthday coupon",
        2,
        Target::Order,
        Effect::AmountOff {
            amount: cny("6.00")?,
        },
    );
    birthday.coupon = true;
    let version = shop
        .promotions()
        .put_promotion(&pricer, birthday, None)
        .await?;
    let erin = MemberId::new("erin")?;
    let coupons = shop
        .promotions()
        .issue_coupons(
            &pricer,
            "birthday",
            std::slice::from_ref(&erin),
            CouponSource::Campaign("birthdays-december".into()),
            now,
            now + chrono::Duration::days(30),
        )
        .await?;
    let code = &coupons[0].code;
    println!("rules version {version}; coupon {code} issued to erin");
    let gift = PlaceOrder::new(erin.clone(), vec![CartLine::new(voucher, 1)])
        .promotion_code(code)
        .member_facts(MemberFacts::default());
    explain(&shop.quote(&gift).await?);
    let used = shop.place(gift.clone()).await?;
    println!("erin's order placed for {}", used.total());
    match shop.place(gift).await {
        Err(e) => println!("erin's coupon again: refused ({})", e.code()),
        Ok(o) => return Err(format!("a coupon was used twice: {}", o.id()).into()),
    }
    println!("\ndone.");
    Ok(())
}

/// Prints a quote's explanation: each line's price and source, each adjustment, the totals,
/// and the promotions that did not apply with why.
fn explain(quote: &Quote) {
    let Some(x) = &quote.explained else {
        println!("  (list prices) total {}", quote.total);
        return;
    };
    for line in &x.lines {
        let from = match &line.price_from {
            quanyi::pricing::PriceFrom::Base => "its own price".to_owned(),
            quanyi::pricing::PriceFrom::List { name, .. } => format!("the list \"{name}\""),
        };
        println!(
            "  {} x {} at {} ({from}) = {}",
            line.quantity, line.sku, line.unit_price, line.list_amount
        );
        for a in &line.adjustments {
            println!("      - {} by {}", a.amount, a.promotion);
        }
        println!("      = {}", line.amount);
    }
    for a in &x.applied {
        println!("  applied: {} ({}) took {}", a.name, a.promotion, a.amount);
    }
    for m in &x.missed {
        let why = match &m.reason {
            quanyi::pricing::MissReason::SpendMore {
                more,
                off: Some(off),
            } => {
                format!("spend {more} more to get {off} off")
            }
            quanyi::pricing::MissReason::SpendMore { more, off: None } => {
                format!("spend {more} more")
            }
            quanyi::pricing::MissReason::Condition { condition } => {
                format!("condition {condition} not met")
            }
            quanyi::pricing::MissReason::NoItems => "no item it targets".to_owned(),
            quanyi::pricing::MissReason::UsedUp => "used up".to_owned(),
            quanyi::pricing::MissReason::Excluded { by } => format!("kept out by {by}"),
            quanyi::pricing::MissReason::BuyMore { units } => format!("{units} more unit(s)"),
            other => format!("{other:?}"),
        };
        println!("  not applied: {} ({why})", m.name);
    }
    println!(
        "  subtotal {}, discount {}, total {}",
        x.subtotal, x.discount, x.total
    );
}
