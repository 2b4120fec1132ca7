//! Shop cases of operators' pricing rules (`shop.promotions()`): versioned, validated and
//! audited changes that placements follow, even in a process that read the rules before; and
//! coupons issued to members, each used once by its member.

use std::sync::Arc;

use chrono::Duration;
use quanyi::pricing::{Budget, Effect, Promotion, Rules, Stacking, Target, Window};
use quanyi::{
    Actor, CartLine, CouponSource, Currency, OrderStatus, PlaceOrder, PricingKind, Store,
};

use super::{Rig, card_sku, cny, import, member};

fn amount_off(id: &str, amount: &str) -> Promotion {
    Promotion {
        id: id.into(),
        name: format!("{id} promotion").into(),
        code: None,
        priority: 0,
        stacking: Stacking::Stackable,
        target: Target::Order,
        conditions: vec![],
        effect: Effect::AmountOff {
            amount: cny(amount),
        },
        window: Window::default(),
        budget: None,
        coupon: false,
    }
}

fn operator() -> Actor {
    Actor::new("lin", "pricing").unwrap()
}

/// Operators change the rules one entry at a time, each change a new version validated against
/// the whole set (a bad rule names its field and writes nothing), from the entry's version they
/// saw (a stale one is refused), audited, with each entry's revisions kept. An order placed
/// before a change keeps its price; a process that read the rules before a change and places
/// after it is refused by the store and prices again from the new rules. Rules load from TOML
/// as from code.
pub async fn operators_change_the_rules_and_placements_follow(store: Arc<dyn Store>) {
    let rig = Rig::new(store);
    let shop = rig.shop();
    // Another process, which reads the rules once an hour.
    let other = rig
        .builder(rig.store.clone())
        .pricing_refresh(std::time::Duration::from_secs(3_600))
        .build()
        .unwrap();
    let card = card_sku(&shop).await;
    let codes: Vec<String> = (0..6).map(|i| format!("RULES-CARD-{i:04}")).collect();
    import(
        &shop,
        card,
        &codes.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;
    let promotions = shop.promotions();
    assert_eq!(promotions.current().await.unwrap().version, 0);
    let v1 = promotions
        .load(
            &operator(),
            Rules {
                promotions: vec![amount_off("spring", "2.00")],
                ..Rules::none(Currency::CNY)
            },
        )
        .await
        .unwrap();
    assert_eq!(v1, 1);
    let buy = |who: &str| PlaceOrder::new(member(who), vec![CartLine::new(card, 1)]);
    // The other process reads version 1 with its first order.
    let before = other.place(buy("ann")).await.unwrap();
    assert_eq!(before.total(), cny("17.90"));

    // A new promotion, then a change of it from the version seen.
    let current = promotions.current().await.unwrap();
    assert_eq!(
        current.entry_version(PricingKind::Promotion, "spring"),
        Some(1)
    );
    let v2 = promotions
        .put_promotion(&operator(), amount_off("autumn", "1.00"), None)
        .await
        .unwrap();
    assert_eq!(v2, 2);
    let v3 = promotions
        .put_promotion(&operator(), amount_off("spring", "5.00"), Some(1))
        .await
        .unwrap();
    assert_eq!(v3, 3);
    // From a version no longer stored: refused, nothing written.
    let stale = promotions
        .put_promotion(&operator(), amount_off("spring", "9.00"), Some(1))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), "conflict", "{stale}");
    let twice = promotions
        .put_promotion(&operator(), amount_off("autumn", "9.00"), None)
        .await
        .unwrap_err();
    assert_eq!(twice.code(), "conflict", "{twice}");
    // A bad rule names its field and writes nothing.
    let mut bad = amount_off("winter", "1.00");
    bad.effect = Effect::PercentOff {
        bps: 20_000,
        cap: None,
    };
    match promotions.put_promotion(&operator(), bad, None).await {
        Err(quanyi::Error::Pricing(quanyi::pricing::PricingError::InvalidRule {
            rule,
            field,
            ..
        })) => assert_eq!((rule.as_str(), field.as_str()), ("winter", "effect.bps")),
        other => panic!("expected an invalid rule, got {other:?}"),
    }
    let usd = amount_off("dollar", "1.00");
    let usd = Promotion {
        effect: Effect::AmountOff {
            amount: quanyi::Money::from_minor(100, Currency::USD),
        },
        ..usd
    };
    assert_eq!(
        promotions
            .put_promotion(&operator(), usd, None)
            .await
            .unwrap_err()
            .code(),
        "invalid_rule"
    );
    assert_eq!(promotions.current().await.unwrap().version, 3);

    // The order placed before keeps its price.
    assert_eq!(shop.order(before.id()).await.unwrap().total(), cny("17.90"));
    // The other process still holds version 1: its quote shows the old price until it reads
    // again, but the store refuses its placement and it prices again from version 3.
    let quoted = other.quote(&buy("bob")).await.unwrap();
    assert_eq!(quoted.total, cny("17.90"));
    let after = other.place(buy("bob")).await.unwrap();
    assert_eq!(after.total(), cny("13.90"));
    assert_eq!(shop.place(buy("cat")).await.unwrap().total(), cny("13.90"));

    // Removal, revisions and the audit trail.
    let v4 = promotions
        .remove(&operator(), PricingKind::Promotion, "autumn", 2)
        .await
        .unwrap();
    assert_eq!(v4, 4);
    assert_eq!(shop.quote(&buy("dee")).await.unwrap().total, cny("14.90"));
    let history = promotions
        .history(PricingKind::Promotion, "autumn")
        .await
        .unwrap();
    assert_eq!(
        history.iter().map(|r| r.version).collect::<Vec<_>>(),
        vec![4, 2]
    );
    assert!(history[0].body.is_none() && history[1].body.is_some());
    let changes = shop
        .audit_log(50)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.action == quanyi::crates::storage::AuditAction::PricingChanged)
        .count();
    assert_eq!(changes, 4);

    // Loaded from TOML: the same as from code; loading the same rules again changes nothing.
    let toml = r#"
currency = { code = "CNY", exponent = 2 }
rounding = "HalfEven"

[[promotions]]
id = "spring"
name = "spring promotion"
priority = 0
stacking = "stackable"
target = { on = "order" }
effect = { type = "amount_off", amount = { minor = 300, currency = { code = "CNY", exponent = 2 } } }
"#;
    let v5 = promotions.load_toml(&operator(), toml).await.unwrap();
    assert_eq!(v5, 5);
    assert_eq!(promotions.load_toml(&operator(), toml).await.unwrap(), 5);
    assert_eq!(shop.quote(&buy("eve")).await.unwrap().total, cny("16.90"));
    let broken = promotions
        .load_toml(&operator(), "currency = ")
        .await
        .unwrap_err();
    assert_eq!(broken.code(), "invalid_rules_file");
    assert_eq!(promotions.current().await.unwrap().version, 5);
}

/// A coupon template's coupons are issued to members with fresh codes and audited; a coupon
/// applies for its member only (another member's code is unknown), once while an order holds
/// it (ten racing placements by its member give one order), again after that order expires
/// unpaid, and never outside its window. A promotion's discount budget is never passed: the
/// order that would pass it is priced without it.
pub async fn issued_coupons_are_used_once_by_their_member(store: Arc<dyn Store>) {
    let rig = Rig::new(store);
    let shop = rig.shop();
    let card = card_sku(&shop).await;
    let codes: Vec<String> = (0..30).map(|i| format!("COUPON-KEY-{i:04}")).collect();
    import(
        &shop,
        card,
        &codes.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;
    let mut welcome = amount_off("welcome", "4.00");
    welcome.coupon = true;
    let mut capped = amount_off("capped", "10.00");
    capped.budget = Some(Budget {
        discount: Some(cny("25.00")),
        ..Budget::default()
    });
    capped.code = Some("BIG10".into());
    let promotions = shop.promotions();
    promotions
        .load(
            &operator(),
            Rules {
                promotions: vec![welcome, capped],
                ..Rules::none(Currency::CNY)
            },
        )
        .await
        .unwrap();
    let (ann, bob) = (member("ann"), member("bob"));
    let now = quanyi::Clock::now(&rig.clock);
    let issued = promotions
        .issue_coupons(
            &operator(),
            "welcome",
            &[ann.clone(), bob.clone()],
            CouponSource::Campaign("spring".into()),
            now,
            now + Duration::days(7),
        )
        .await
        .unwrap();
    assert_eq!(issued.len(), 2);
    assert_ne!(issued[0].code, issued[1].code);
    assert_eq!(issued[0].source, "campaign:spring");
    let (ann_code, bob_code) = (issued[0].code.clone(), issued[1].code.clone());
    // Only templates are issued; a window must end after it starts; a member named twice
    // gets two coupons.
    let issue = |template: &'static str, to: Vec<quanyi::MemberId>, days: i64| {
        let promotions = shop.promotions();
        async move {
            promotions
                .issue_coupons(
                    &operator(),
                    template,
                    &to,
                    CouponSource::Operator,
                    now,
                    now + Duration::days(days),
                )
                .await
        }
    };
    let refused = issue("capped", vec![ann.clone()], 1).await.unwrap_err();
    assert_eq!(refused.code(), "unknown_promotion_code");
    let refused = issue("welcome", vec![ann.clone()], 0).await.unwrap_err();
    assert_eq!(refused.code(), "invalid_input");
    let pair = issue("welcome", vec![bob.clone(), bob.clone()], 1)
        .await
        .unwrap();
    assert!(pair[0].code != pair[1].code && pair[0].source == "pricing:lin");
    assert_eq!(promotions.coupons_of(&bob).await.unwrap().len(), 3);

    let buy = |who: &quanyi::MemberId, code: &str| {
        PlaceOrder::new(who.clone(), vec![CartLine::new(card, 1)]).promotion_code(code)
    };
    // Another member's code is unknown; the member's own applies, typed in lower case too.
    assert_eq!(
        shop.place(buy(&bob, &ann_code)).await.unwrap_err().code(),
        "unknown_promotion_code"
    );
    let first = shop
        .place(buy(&ann, &ann_code.to_lowercase()))
        .await
        .unwrap();
    assert_eq!(first.total(), cny("15.90"));
    let held = promotions.coupons_of(&ann).await.unwrap();
    assert!(held.len() == 1 && held[0].used);
    match shop.place(buy(&ann, &ann_code)).await {
        Err(quanyi::Error::CouponUnavailable { reason, .. }) => assert_eq!(reason, "used"),
        other => panic!("expected a used coupon, got {other:?}"),
    }
    // The order expires unpaid: the coupon is the member's to use again; ten placements race
    // for it and one wins.
    rig.clock.advance(Duration::minutes(16));
    shop.expire_unpaid_orders().await.unwrap();
    assert_eq!(
        shop.order(first.id()).await.unwrap().status(),
        OrderStatus::Expired
    );
    assert!(!promotions.coupons_of(&ann).await.unwrap()[0].used);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let (shop, request) = (shop.clone(), buy(&ann, &ann_code));
        tasks.spawn(async move { shop.place(request).await });
    }
    let outcomes = tasks.join_all().await;
    assert_eq!(outcomes.iter().filter(|o| o.is_ok()).count(), 1);
    for refused in outcomes.iter().filter_map(|o| o.as_ref().err()) {
        assert_eq!(refused.code(), "coupon_unavailable", "{refused}");
    }
    // Past its window a coupon is expired.
    rig.clock.advance(Duration::days(8));
    match shop.place(buy(&bob, &bob_code)).await {
        Err(quanyi::Error::CouponUnavailable { reason, .. }) => assert_eq!(reason, "expired"),
        other => panic!("expected an expired coupon, got {other:?}"),
    }

    // A discount budget of 25.00 at 10.00 an order: two orders take it, the third would pass
    // it and is priced without it (a code that no longer applies places nothing).
    let big = |who: &str| {
        PlaceOrder::new(member(who), vec![CartLine::new(card, 1)]).promotion_code("BIG10")
    };
    assert_eq!(shop.place(big("dee")).await.unwrap().total(), cny("9.90"));
    assert_eq!(shop.place(big("eve")).await.unwrap().total(), cny("9.90"));
    let quoted = shop.quote(&big("fay")).await.unwrap();
    assert_eq!(quoted.total, cny("19.90"));
    assert_eq!(
        shop.place(big("fay")).await.unwrap_err().code(),
        "promotion_not_applied"
    );
}
