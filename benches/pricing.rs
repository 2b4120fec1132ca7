//! A quote of 20 lines with 10 active promotions (6 of which apply: a percentage with a cap,
//! a threshold, buy two get one, a set price, a category amount and a level amount; the other
//! 4 miss on a condition, a target, a spend or exclusivity), next to the list-price-only quote
//! of the same cart (no promotions, no lists), from the same run.
//!
//! Budget (DESIGN.md "Performance budgets", issue "Pricing and promotions"): the promoted quote
//! under 10 us. After criterion, interleaved timing loops print both per-quote times and
//! `ratio promoted_quote / list_price_quote`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use criterion::Criterion;
use quanyi_core::{Currency, Money, SkuId};
use quanyi_goods::KindTag;
use quanyi_pricing::{
    Cart, CartItem, Condition, Effect, MemberFacts, PricingContext, Promotion, Rules, Stacking,
    Target, ValidRules, Window, quote,
};

fn cny(minor: i64) -> Money {
    Money::from_minor(minor, Currency::CNY)
}

fn sku(n: u128) -> SkuId {
    SkuId::from_uuid(uuid::Uuid::from_u128(n))
}

fn promo(id: &str, priority: i32, target: Target, effect: Effect) -> Promotion {
    Promotion {
        id: id.into(),
        name: id.into(),
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

fn setup() -> (Cart, PricingContext, ValidRules, ValidRules) {
    let items: Vec<CartItem> = (0..20u8)
        .map(|n| CartItem {
            sku: sku(u128::from(n)),
            quantity: 1 + u32::from(n % 3),
            base_price: cny(990 + 500 * i64::from(n % 7)),
            kind: if n % 4 == 0 {
                KindTag::Membership
            } else {
                KindTag::CardKey
            },
            categories: vec![if n % 2 == 0 { "music" } else { "video" }.into()],
        })
        .collect();
    let cart = Cart {
        currency: Currency::CNY,
        items,
        codes: vec![],
        coupons: vec![],
    };
    let ctx = PricingContext {
        member: Some(MemberFacts {
            level: Some("gold".into()),
            orders_before: 2,
            ..MemberFacts::default()
        }),
        channel: Some("app".into()),
        now: Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0).unwrap(),
        used_up: vec![],
    };
    let music = Target::Categories {
        categories: vec!["music".into()],
    };
    let mut level = promo(
        "level",
        1,
        Target::Order,
        Effect::AmountOff { amount: cny(500) },
    );
    level.conditions = vec![Condition::Level {
        levels: vec!["gold".into()],
    }];
    let mut first = promo(
        "first",
        1,
        Target::Order,
        Effect::AmountOff { amount: cny(800) },
    );
    first.conditions = vec![Condition::FirstOrder];
    let mut excl = promo(
        "exclusive",
        0,
        Target::Order,
        Effect::AmountOff { amount: cny(100) },
    );
    excl.stacking = Stacking::Exclusive;
    let promotions = vec![
        promo(
            "pct",
            9,
            Target::Order,
            Effect::PercentOff {
                bps: 500,
                cap: Some(cny(2_000)),
            },
        ),
        promo(
            "spend",
            8,
            Target::Order,
            Effect::Threshold {
                tiers: vec![(cny(10_000), cny(1_000)), (cny(30_000), cny(3_000))],
            },
        ),
        promo(
            "b2g1",
            7,
            music.clone(),
            Effect::BuyGetFree {
                buy: 2,
                free: 1,
                max_free: Some(2),
            },
        ),
        promo(
            "set",
            6,
            Target::Kinds {
                kinds: vec![KindTag::Membership],
            },
            Effect::SetPrice {
                quantity: 2,
                price: cny(2_000),
            },
        ),
        promo("music", 5, music, Effect::AmountOff { amount: cny(300) }),
        level,
        first,
        promo(
            "nothing",
            0,
            Target::Skus {
                skus: vec![sku(99)],
            },
            Effect::AmountOff { amount: cny(100) },
        ),
        promo(
            "big-spend",
            0,
            Target::Order,
            Effect::Threshold {
                tiers: vec![(cny(10_000_000), cny(1_000))],
            },
        ),
        excl,
    ];
    let promoted = Rules {
        promotions,
        ..Rules::none(Currency::CNY)
    }
    .validated()
    .unwrap();
    let plain = Rules::none(Currency::CNY).validated().unwrap();
    (cart, ctx, promoted, plain)
}

fn bench_quotes(c: &mut Criterion) {
    let (cart, ctx, promoted, plain) = setup();
    let q = quote(&cart, &ctx, &promoted).unwrap();
    assert_eq!(q.applied.len(), 6, "{:?}", q.missed);
    assert_eq!(q.missed.len(), 4);
    let mut group = c.benchmark_group("quote_20_lines");
    group.bench_function("list_price", |b| {
        b.iter(|| quote(black_box(&cart), black_box(&ctx), black_box(&plain)).unwrap())
    });
    group.bench_function("10_promotions", |b| {
        b.iter(|| quote(black_box(&cart), black_box(&ctx), black_box(&promoted)).unwrap())
    });
    group.finish();
}

/// Median time per quote over 7 interleaved rounds of `n` quotes each.
fn print_ratios() {
    let (cart, ctx, promoted, plain) = setup();
    let n = 20_000;
    let time = |rules: &ValidRules| {
        let start = Instant::now();
        for _ in 0..n {
            black_box(quote(black_box(&cart), black_box(&ctx), black_box(rules)).unwrap());
        }
        start.elapsed().as_nanos() as f64 / f64::from(n)
    };
    let (mut a, mut b) = (vec![], vec![]);
    for _ in 0..7 {
        a.push(time(&plain));
        b.push(time(&promoted));
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (plain_ns, promoted_ns) = (median(a), median(b));
    println!("list-price quote of 20 lines: {plain_ns:.0} ns");
    println!("promoted quote of 20 lines (10 promotions, 6 apply): {promoted_ns:.0} ns");
    println!(
        "ratio promoted_quote / list_price_quote = {:.2}",
        promoted_ns / plain_ns
    );
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
        .configure_from_args();
    bench_quotes(&mut c);
    c.final_summary();
    if std::env::args().any(|a| a == "--bench") {
        print_ratios();
    }
}
