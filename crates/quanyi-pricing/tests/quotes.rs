//! Data-driven quote cases through one check helper, and the engine's properties.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{DateTime, Duration, TimeZone, Utc};
use proptest::prelude::*;
use quanyi_core::{Currency, Money, Rounding, SkuId};
use quanyi_goods::KindTag;
use quanyi_pricing::*;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0).unwrap()
}

fn sku(n: u8) -> SkuId {
    SkuId::from_uuid(uuid::Uuid::from_u128(u128::from(n)))
}

fn cny(text: &str) -> Money {
    Money::parse(text, Currency::CNY).unwrap()
}

fn item(n: u8, quantity: u32, price: &str) -> CartItem {
    CartItem {
        sku: sku(n),
        quantity,
        base_price: cny(price),
        kind: KindTag::CardKey,
        categories: vec![],
    }
}

fn in_category(mut item: CartItem, category: &str) -> CartItem {
    item.categories.push(category.to_owned());
    item
}

fn of_kind(mut item: CartItem, kind: KindTag) -> CartItem {
    item.kind = kind;
    item
}

fn promo(id: &str, effect: Effect) -> Promotion {
    Promotion {
        id: id.into(),
        name: format!("{id} name").into(),
        code: None,
        priority: 0,
        stacking: Stacking::Stackable,
        target: Target::Order,
        conditions: vec![],
        effect,
        window: Window::default(),
        budget: None,
        coupon: false,
    }
}

fn amount_off(id: &str, amount: &str) -> Promotion {
    promo(
        id,
        Effect::AmountOff {
            amount: cny(amount),
        },
    )
}

fn percent(id: &str, bps: u32, cap: Option<&str>) -> Promotion {
    promo(
        id,
        Effect::PercentOff {
            bps,
            cap: cap.map(cny),
        },
    )
}

fn threshold(id: &str, tiers: &[(&str, &str)]) -> Promotion {
    promo(
        id,
        Effect::Threshold {
            tiers: tiers.iter().map(|(s, o)| (cny(s), cny(o))).collect(),
        },
    )
}

fn with(mut p: Promotion, f: impl FnOnce(&mut Promotion)) -> Promotion {
    f(&mut p);
    p
}

fn list(id: &str, kind: ListKind, priority: i32, prices: &[(u8, &[(u32, &str)])]) -> PriceList {
    PriceList {
        id: id.into(),
        name: format!("{id} list").into(),
        currency: Currency::CNY,
        kind,
        priority,
        applies: Applies::default(),
        prices: prices
            .iter()
            .map(|(n, tiers)| ListPrice {
                sku: sku(*n),
                tiers: tiers.iter().map(|(q, p)| (*q, cny(p))).collect(),
            })
            .collect(),
    }
}

fn applies(mut l: PriceList, f: impl FnOnce(&mut Applies)) -> PriceList {
    f(&mut l.applies);
    l
}

fn member(f: impl FnOnce(&mut MemberFacts)) -> Option<MemberFacts> {
    let mut m = MemberFacts {
        registered_at: Some(t0() - Duration::days(400)),
        orders_before: 3,
        ..MemberFacts::default()
    };
    f(&mut m);
    Some(m)
}

fn gold() -> Option<MemberFacts> {
    member(|m| m.level = Some("gold".into()))
}

/// What a case expects of its quote.
#[derive(Default)]
struct Expect {
    /// Each line's amount.
    lines: Vec<&'static str>,
    /// The total.
    total: &'static str,
    /// The promotions that applied, with what each took off.
    applied: Vec<(&'static str, &'static str)>,
    /// The promotions that did not, with why.
    missed: Vec<(&'static str, MissReason)>,
    /// Each line's price source, when checked: "base" or a list id.
    from: Vec<&'static str>,
}

struct Case {
    name: &'static str,
    used_up: Vec<&'static str>,
    items: Vec<CartItem>,
    codes: Vec<&'static str>,
    coupons: Vec<&'static str>,
    member: Option<MemberFacts>,
    channel: Option<&'static str>,
    lists: Vec<PriceList>,
    promotions: Vec<Promotion>,
    rounding: Rounding,
    expect: Expect,
}

impl Default for Case {
    fn default() -> Self {
        Case {
            name: "",
            used_up: vec![],
            items: vec![],
            codes: vec![],
            coupons: vec![],
            member: None,
            channel: None,
            lists: vec![],
            promotions: vec![],
            rounding: Rounding::HalfEven,
            expect: Expect::default(),
        }
    }
}

fn money_in(currency: Currency, text: &str) -> Money {
    Money::parse(text, currency).unwrap()
}

/// Quotes the case and checks every expectation, and the invariants every quote keeps.
fn check(case: Case) {
    let name = case.name;
    let currency = case
        .items
        .first()
        .map_or(Currency::CNY, |i| i.base_price.currency());
    let cart = Cart {
        currency,
        items: case.items,
        codes: case.codes.iter().map(|c| (*c).to_owned()).collect(),
        coupons: case.coupons.iter().map(|c| (*c).into()).collect(),
    };
    let ctx = PricingContext {
        member: case.member,
        channel: case.channel.map(str::to_owned),
        now: t0(),
        used_up: case.used_up.iter().map(|id| (*id).into()).collect(),
    };
    let rules = Rules {
        currency,
        lists: case.lists,
        promotions: case.promotions,
        rounding: case.rounding,
    }
    .validated()
    .unwrap_or_else(|e| panic!("{name}: {e}"));
    let q = quote(&cart, &ctx, &rules).unwrap_or_else(|e| panic!("{name}: {e}"));
    let amounts: Vec<Money> = q.lines.iter().map(|l| l.amount).collect();
    let want: Vec<Money> = case
        .expect
        .lines
        .iter()
        .map(|t| money_in(currency, t))
        .collect();
    assert_eq!(amounts, want, "{name}: line amounts");
    assert_eq!(
        q.total,
        money_in(currency, case.expect.total),
        "{name}: total"
    );
    let applied: Vec<(String, Money)> = q
        .applied
        .iter()
        .map(|a| (a.promotion.to_string(), a.amount))
        .collect();
    let want: Vec<(String, Money)> = case
        .expect
        .applied
        .iter()
        .map(|(id, m)| ((*id).to_owned(), money_in(currency, m)))
        .collect();
    assert_eq!(applied, want, "{name}: applied");
    let missed: Vec<(String, MissReason)> = q
        .missed
        .iter()
        .map(|m| (m.promotion.to_string(), m.reason.clone()))
        .collect();
    let want: Vec<(String, MissReason)> = case
        .expect
        .missed
        .into_iter()
        .map(|(id, r)| (id.to_owned(), r))
        .collect();
    assert_eq!(missed, want, "{name}: missed");
    if !case.expect.from.is_empty() {
        let from: Vec<String> = q
            .lines
            .iter()
            .map(|l| match &l.price_from {
                PriceFrom::Base => "base".to_owned(),
                PriceFrom::List { id, .. } => id.to_string(),
            })
            .collect();
        assert_eq!(from, case.expect.from, "{name}: price sources");
    }
    invariants(&q, name);
    assert_eq!(
        quote(&cart, &ctx, &rules).unwrap(),
        q,
        "{name}: not deterministic"
    );
}

/// What every quote keeps: lines sum to the total, nothing below zero, the discount at most
/// the subtotal, each line's adjustments explain its amount.
fn invariants(q: &Quote, name: &str) {
    let sum: i64 = q.lines.iter().map(|l| l.amount.minor()).sum();
    assert_eq!(sum, q.total.minor(), "{name}: lines sum to the total");
    assert!(
        q.lines.iter().all(|l| !l.amount.is_negative()),
        "{name}: a line below zero"
    );
    assert!(!q.total.is_negative(), "{name}: total below zero");
    assert!(
        q.discount.minor() <= q.subtotal.minor(),
        "{name}: discount over subtotal"
    );
    assert_eq!(
        q.subtotal.minor() - q.discount.minor(),
        q.total.minor(),
        "{name}"
    );
    for l in &q.lines {
        let off: i64 = l.adjustments.iter().map(|a| a.amount.minor()).sum();
        assert_eq!(
            l.list_amount.minor() - off,
            l.amount.minor(),
            "{name}: explanation"
        );
        assert_eq!(
            l.list_amount.minor(),
            l.unit_price.minor() * i64::from(l.quantity),
            "{name}"
        );
    }
    let applied: i64 = q.applied.iter().map(|a| a.amount.minor()).sum();
    assert_eq!(
        applied,
        q.discount.minor(),
        "{name}: applied sums to the discount"
    );
}

fn spend_more(more: &str, off: Option<&str>) -> MissReason {
    MissReason::SpendMore {
        more: cny(more),
        off: off.map(cny),
    }
}

fn condition(name: &str) -> MissReason {
    MissReason::Condition {
        condition: name.to_owned(),
    }
}

#[test]
fn quote_cases() {
    let cases = vec![
        // Price lists.
        Case {
            name: "base prices only",
            items: vec![item(1, 2, "19.90"), item(2, 1, "5.00")],
            expect: Expect {
                lines: vec!["39.80", "5.00"],
                total: "44.80",
                from: vec!["base", "base"],
                ..Expect::default()
            },
            ..Case::default()
        },
        Case {
            name: "a sale list lower than the base is used",
            items: vec![item(1, 1, "19.90")],
            lists: vec![list("sale", ListKind::Sale, 0, &[(1, &[(1, "15.00")])])],
            expect: Expect {
                lines: vec!["15.00"],
                total: "15.00",
                from: vec!["sale"],
                ..Expect::default()
            },
            ..Case::default()
        },
        Case {
            name: "a sale list higher than the base is not",
            items: vec![item(1, 1, "19.90")],
            lists: vec![list("sale", ListKind::Sale, 0, &[(1, &[(1, "25.00")])])],
            expect: Expect {
                lines: vec!["19.90"],
                total: "19.90",
                from: vec!["base"],
                ..Expect::default()
            },
            ..Case::default()
        },
        Case {
            name: "an override is used even when higher",
            items: vec![item(1, 1, "19.90")],
            lists: vec![list("ovr", ListKind::Override, 0, &[(1, &[(1, "25.00")])])],
            expect: Expect {
                lines: vec!["25.00"],
                total: "25.00",
                from: vec!["ovr"],
                ..Expect::default()
            },
            ..Case::default()
        },
        Case {
            name: "the override of the highest priority wins",
            items: vec![item(1, 1, "19.90")],
            lists: vec![
                list("low", ListKind::Override, 1, &[(1, &[(1, "10.00")])]),
                list("high", ListKind::Override, 5, &[(1, &[(1, "12.00")])]),
            ],
            expect: Expect {
                lines: vec!["12.00"],
                total: "12.00",
                from: vec!["high"],
                ..Expect::default()
            },
            ..Case::default()
        },
        Case {
            name: "an override beats a lower sale price",
            items: vec![item(1, 1, "19.90")],
            lists: vec![
                list("sale", ListKind::Sale, 9, &[(1, &[(1, "9.00")])]),
                list("ovr", ListKind::Override, 0, &[(1, &[(1, "18.00")])]),
            ],
            expect: Expect {
                lines: vec!["18.00"],
                total: "18.00",
                from: vec!["ovr"],
                ..Expect::default()
            },
            ..Case::default()
        },
        Case {
            name: "of two sale lists the lower price",
            items: vec![item(1, 1, "19.90")],
            lists: vec![
                list("a", ListKind::Sale, 9, &[(1, &[(1, "17.00")])]),
                list("b", ListKind::Sale, 0, &[(1, &[(1, "16.00")])]),
            ],
            expect: Expect {
                lines: vec!["16.00"],
                total: "16.00",
                from: vec!["b"],
                ..Expect::default()
            },
            ..Case::default()
        },
        Case {
            name: "a member-level list for gold",
            items: vec![item(1, 1, "19.90")],
            member: gold(),
            lists: vec![applies(
                list("gold", ListKind::Sale, 0, &[(1, &[(1, "14.90")])]),
                |a| a.levels = vec!["gold".into()],
            )],
            expect: Expect {
                lines: vec!["14.90"],
                total: "14.90",
                from: vec!["gold"],
                ..Expect::default()
            },
            ..Case::default()
        },
        Case {
            name: "a member-level list not for silver",
            items: vec![item(1, 1, "19.90")],
            member: member(|m| m.level = Some("silver".into())),
            lists: vec![applies(
                list("gold", ListKind::Sale, 0, &[(1, &[(1, "14.90")])]),
                |a| a.levels = vec!["gold".into()],
            )],
            expect: Expect {
                lines: vec!["19.90"],
                total: "19.90",
                from: vec!["base"],
                ..Expect::default()
            },
            ..Case::default()
        },
        Case {
            name: "a tag list",
            items: vec![item(1, 1, "19.90")],
            member: member(|m| {
                m.tags.insert("student".into());
            }),
            lists: vec![applies(
                list("students", ListKind::Sale, 0, &[(1, &[(1, "12.00")])]),
                |a| a.tag = Some("student".into()),
            )],
            expect: Expect {
                lines: vec!["12.00"],
                total: "12.00",
                ..Expect::default()
            },
            ..Case::default()
        },
        Case {
            name: "a channel list in its channel",
            items: vec![item(1, 1, "19.90")],
            channel: Some("app"),
            lists: vec![applies(
                list("app", ListKind::Sale, 0, &[(1, &[(1, "18.80")])]),
                |a| a.channels = vec!["app".into()],
            )],
            expect: Expect {
                lines: vec!["18.80"],
                total: "18.80",
                ..Expect::default()
            },
            ..Case::default()
        },
        Case {
            name: "a channel list outside its channel",
            items: vec![item(1, 1, "19.90")],
            channel: Some("web"),
            lists: vec![applies(
                list("app", ListKind::Sale, 0, &[(1, &[(1, "18.80")])]),
                |a| a.channels = vec!["app".into()],
            )],
            expect: Expect {
                lines: vec!["19.90"],
                total: "19.90",
                ..Expect::default()
            },
            ..Case::default()
        },
        Case {
            name: "a list whose window has not begun",
            items: vec![item(1, 1, "19.90")],
            lists: vec![applies(
                list("later", ListKind::Sale, 0, &[(1, &[(1, "9.90")])]),
                |a| a.window.from = Some(t0() + Duration::hours(1)),
            )],
            expect: Expect {
                lines: vec!["19.90"],
                total: "19.90",
                ..Expect::default()
            },
            ..Case::default()
        },
        Case {
            name: "quantity tiers",
            items: vec![item(1, 1, "19.90"), item(2, 5, "19.90")],
            lists: vec![list(
                "tiers",
                ListKind::Sale,
                0,
                &[
                    (1, &[(1, "19.00"), (5, "17.00")]),
                    (2, &[(1, "19.00"), (5, "17.00"), (10, "15.00")]),
                ],
            )],
            expect: Expect {
                lines: vec!["19.00", "85.00"],
                total: "104.00",
                ..Expect::default()
            },
            ..Case::default()
        },
        // Promotion types.
        Case {
            name: "a fixed amount off the order, by the lines' amounts",
            items: vec![item(1, 1, "30.00"), item(2, 1, "10.00")],
            promotions: vec![amount_off("ten", "10.00")],
            expect: Expect {
                lines: vec!["22.50", "7.50"],
                total: "30.00",
                applied: vec![("ten", "10.00")],
                ..Expect::default()
            },
            ..Case::default()
        },
        Case {
            name: "an amount larger than the order stops at zero",
            items: vec![item(1, 1, "3.00"), item(2, 1, "2.00")],
            promotions: vec![amount_off("big", "50.00")],
            expect: Expect {
                lines: vec!["0.00", "0.00"],
                total: "0.00",
                applied: vec![("big", "5.00")],
                ..Expect::default()
            },
            ..Case::default()
        },
        Case {
            name: "a percentage",
            items: vec![item(1, 2, "19.90")],
            promotions: vec![percent("tenth", 1000, None)],
            expect: Expect {
                lines: vec!["35.82"],
                total: "35.82",
                applied: vec![("tenth", "3.98")],
                ..Expect::default()
            },
            ..Case::default()
        },
        Case {
            name: "a percentage with a cap",
            items: vec![item(1, 10, "19.90")],
            promotions: vec![percent("capped", 1000, Some("5.00"))],
            expect: Expect {
                lines: vec!["194.00"],
                total: "194.00",
                applied: vec![("capped", "5.00")],
                ..Expect::default()
            },
            ..Case::default()
        },
        Case {
            name: "a capped percentage is allocated by what is left of each line",
            items: vec![item(1, 1, "100.00"), item(2, 1, "1.00")],
            promotions: vec![percent("capped", 5000, Some("20.00"))],
            expect: Expect {
                lines: vec!["80.20", "0.80"],
                total: "81.00",
                applied: vec![("capped", "20.00")],
                ..Expect::default()
            },
            ..Case::default()
        },
        Case {
            name: "rounding half to even",
            items: vec![item(1, 1, "0.25")],
            promotions: vec![percent("tenth", 1000, None)],
            expect: Expect {
                lines: vec!["0.23"],
                total: "0.23",
                applied: vec![("tenth", "0.02")],
                ..Expect::default()
            },
            ..Case::default()
        },
        Case {
            name: "rounding half up when the shop says so",
            items: vec![item(1, 1, "0.25")],
            promotions: vec![percent("tenth", 1000, None)],
            rounding: Rounding::HalfUp,
            expect: Expect {
                lines: vec!["0.22"],
                total: "0.22",
                applied: vec![("tenth", "0.03")],
                ..Expect::default()
            },
            ..Case::default()
        },
        Case {
            name: "a currency without minor units",
            items: vec![CartItem {
                base_price: Money::parse("999", Currency::JPY).unwrap(),
                ..item(1, 1, "0")
            }],
            promotions: vec![Promotion {
                effect: Effect::PercentOff {
                    bps: 1000,
                    cap: None,
                },
                ..promo("tenth", Effect::AmountOff { amount: cny("1") })
            }],
            expect: Expect {
                lines: vec!["899"],
                total: "899",
                applied: vec![("tenth", "100")],
                ..Expect::default()
            },
            ..Case::default()
        },
        Case {
            name: "threshold: the first tier",
            items: vec![item(1, 1, "150.00")],
            promotions: vec![threshold(
                "spend",
                &[("100.00", "10.00"), ("200.00", "30.00")],
            )],
            expect: Expect {
                lines: vec!["140.00"],
                total: "140.00",
                applied: vec![("spend", "10.00")],
                ..Expect::default()
            },
            ..Case::default()
        },
        Case {
            name: "threshold: the highest tier reached",
            items: vec![item(1, 1, "250.00")],
            promotions: vec![threshold(
                "spend",
                &[("100.00", "10.00"), ("200.00", "30.00")],
            )],
            expect: Expect {
                lines: vec!["220.00"],
                total: "220.00",
                applied: vec![("spend", "30.00")],
                ..Expect::default()
            },
            ..Case::default()
        },
        Case {
            name: "threshold not reached: spend 12.30 more",
            items: vec![item(1, 1, "87.70")],
            promotions: vec![threshold("spend", &[("100.00", "10.00")])],
            expect: Expect {
                lines: vec!["87.70"],
                total: "87.70",
                missed: vec![("spend", spend_more("12.30", Some("10.00")))],
                ..Expect::default()
            },
            ..Case::default()
        },
        Case {
            name: "buy two get the cheapest free",
            items: vec![
                item(1, 1, "30.00"),
                item(2, 1, "20.00"),
                item(3, 1, "10.00"),
            ],
            promotions: vec![promo(
                "b2g1",
                Effect::BuyGetFree {
                    buy: 2,
                    free: 1,
                    max_free: None,
                },
            )],
            expect: Expect {
                lines: vec!["30.00", "20.00", "0.00"],
                total: "50.00",
                applied: vec![("b2g1", "10.00")],
                ..Expect::default()
            },
            ..Case::default()
        },
        Case {
            name: "buy one get one, at most one free",
            items: vec![item(1, 6, "10.00")],
            promotions: vec![promo(
                "b1g1",
                Effect::BuyGetFree {
                    buy: 1,
                    free: 1,
                    max_free: Some(1),
                },
            )],
            expect: Expect {
                lines: vec!["50.00"],
                total: "50.00",
                applied: vec![("b1g1", "10.00")],
                ..Expect::default()
            },
            ..Case::default()
        },
        Case {
            name: "buy two get one: one unit short",
            items: vec![item(1, 2, "10.00")],
            promotions: vec![promo(
                "b2g1",
                Effect::BuyGetFree {
                    buy: 2,
                    free: 1,
                    max_free: None,
                },
            )],
            expect: Expect {
                lines: vec!["20.00"],
                total: "20.00",
                missed: vec![("b2g1", MissReason::BuyMore { units: 1 })],
                ..Expect::default()
            },
            ..Case::default()
        },
        Case {
            name: "three for 50",
            items: vec![item(1, 3, "20.00"), item(2, 1, "5.00")],
            promotions: vec![promo(
                "set",
                Effect::SetPrice {
                    quantity: 3,
                    price: cny("50.00"),
                },
            )],
            expect: Expect {
                lines: vec!["50.00", "5.00"],
                total: "55.00",
                applied: vec![("set", "10.00")],
                ..Expect::default()
            },
            ..Case::default()
        },
        Case {
            name: "a set price needs the whole set",
            items: vec![item(1, 2, "20.00")],
            promotions: vec![promo(
                "set",
                Effect::SetPrice {
                    quantity: 3,
                    price: cny("50.00"),
                },
            )],
            expect: Expect {
                lines: vec!["40.00"],
                total: "40.00",
                missed: vec![("set", MissReason::BuyMore { units: 1 })],
                ..Expect::default()
            },
            ..Case::default()
        },
        // Targets.
        Case {
            name: "a SKU target",
            items: vec![item(1, 1, "10.00"), item(2, 1, "10.00")],
            promotions: vec![with(amount_off("one", "4.00"), |p| {
                p.target = Target::Skus { skus: vec![sku(2)] }
            })],
            expect: Expect {
                lines: vec!["10.00", "6.00"],
                total: "16.00",
                applied: vec![("one", "4.00")],
                ..Expect::default()
            },
            ..Case::default()
        },
        Case {
            name: "a category target",
            items: vec![
                in_category(item(1, 1, "20.00"), "music"),
                in_category(item(2, 1, "20.00"), "video"),
            ],
            promotions: vec![with(percent("music", 5000, None), |p| {
                p.target = Target::Categories {
                    categories: vec!["music".into()],
                }
            })],
            expect: Expect {
                lines: vec!["10.00", "20.00"],
                total: "30.00",
                applied: vec![("music", "10.00")],
                ..Expect::default()
            },
            ..Case::default()
        },
        Case {
            name: "a kind target",
            items: vec![
                of_kind(item(1, 1, "20.00"), KindTag::Membership),
                item(2, 1, "20.00"),
            ],
            promotions: vec![with(amount_off("members", "5.00"), |p| {
                p.target = Target::Kinds {
                    kinds: vec![KindTag::Membership],
                }
            })],
            expect: Expect {
                lines: vec!["15.00", "20.00"],
                total: "35.00",
                applied: vec![("members", "5.00")],
                ..Expect::default()
            },
            ..Case::default()
        },
        Case {
            name: "nothing targeted",
            items: vec![item(1, 1, "20.00")],
            promotions: vec![with(amount_off("other", "5.00"), |p| {
                p.target = Target::Skus { skus: vec![sku(9)] }
            })],
            expect: Expect {
                lines: vec!["20.00"],
                total: "20.00",
                missed: vec![("other", MissReason::NoItems)],
                ..Expect::default()
            },
            ..Case::default()
        },
        // Conditions.
        Case {
            name: "a level condition met",
            items: vec![item(1, 1, "20.00")],
            member: gold(),
            promotions: vec![with(amount_off("gold", "2.00"), |p| {
                p.conditions = vec![Condition::Level {
                    levels: vec!["gold".into()],
                }]
            })],
            expect: Expect {
                lines: vec!["18.00"],
                total: "18.00",
                applied: vec![("gold", "2.00")],
                ..Expect::default()
            },
            ..Case::default()
        },
        Case {
            name: "a level condition missed, and for a guest",
            items: vec![item(1, 1, "20.00")],
            promotions: vec![with(amount_off("gold", "2.00"), |p| {
                p.conditions = vec![Condition::Level {
                    levels: vec!["gold".into()],
                }]
            })],
            expect: Expect {
                lines: vec!["20.00"],
                total: "20.00",
                missed: vec![("gold", condition("level"))],
                ..Expect::default()
            },
            ..Case::default()
        },
        Case {
            name: "a first order",
            items: vec![item(1, 1, "20.00")],
            member: member(|m| m.orders_before = 0),
            promotions: vec![with(amount_off("first", "5.00"), |p| {
                p.conditions = vec![Condition::FirstOrder]
            })],
            expect: Expect {
                lines: vec!["15.00"],
                total: "15.00",
                applied: vec![("first", "5.00")],
                ..Expect::default()
            },
            ..Case::default()
        },
        Case {
            name: "not a first order",
            items: vec![item(1, 1, "20.00")],
            member: member(|_| {}),
            promotions: vec![with(amount_off("first", "5.00"), |p| {
                p.conditions = vec![Condition::FirstOrder]
            })],
            expect: Expect {
                lines: vec!["20.00"],
                total: "20.00",
                missed: vec![("first", condition("first_order"))],
                ..Expect::default()
            },
            ..Case::default()
        },
        Case {
            name: "registered within a week",
            items: vec![item(1, 1, "20.00")],
            member: member(|m| m.registered_at = Some(t0() - Duration::days(3))),
            promotions: vec![with(amount_off("new", "3.00"), |p| {
                p.conditions = vec![Condition::RegisteredWithin { days: 7 }]
            })],
            expect: Expect {
                lines: vec!["17.00"],
                total: "17.00",
                applied: vec![("new", "3.00")],
                ..Expect::default()
            },
            ..Case::default()
        },
        Case {
            name: "a trial price for a member who never bought the category",
            items: vec![in_category(item(1, 1, "15.00"), "music")],
            member: member(|_| {}),
            promotions: vec![with(
                promo(
                    "trial",
                    Effect::SetPrice {
                        quantity: 1,
                        price: cny("1.00"),
                    },
                ),
                |p| {
                    p.conditions = vec![Condition::NeverBought {
                        purchase: Purchase::Category {
                            category: "music".into(),
                        },
                    }]
                },
            )],
            expect: Expect {
                lines: vec!["1.00"],
                total: "1.00",
                applied: vec![("trial", "14.00")],
                ..Expect::default()
            },
            ..Case::default()
        },
        Case {
            name: "no trial price once the category was bought",
            items: vec![in_category(item(1, 1, "15.00"), "music")],
            member: member(|m| {
                m.bought_categories.insert("music".into());
            }),
            promotions: vec![with(
                promo(
                    "trial",
                    Effect::SetPrice {
                        quantity: 1,
                        price: cny("1.00"),
                    },
                ),
                |p| {
                    p.conditions = vec![Condition::NeverBought {
                        purchase: Purchase::Category {
                            category: "music".into(),
                        },
                    }]
                },
            )],
            expect: Expect {
                lines: vec!["15.00"],
                total: "15.00",
                missed: vec![("trial", condition("never_bought"))],
                ..Expect::default()
            },
            ..Case::default()
        },
        Case {
            name: "a renewal price for a membership ending within a week",
            items: vec![of_kind(item(1, 1, "25.00"), KindTag::Membership)],
            member: member(|m| m.memberships = vec![("video".into(), t0() + Duration::days(5))]),
            promotions: vec![with(amount_off("renew", "5.00"), |p| {
                p.conditions = vec![Condition::MembershipEndingWithin {
                    plan: "video".into(),
                    days: 7,
                }]
            })],
            expect: Expect {
                lines: vec!["20.00"],
                total: "20.00",
                applied: vec![("renew", "5.00")],
                ..Expect::default()
            },
            ..Case::default()
        },
        Case {
            name: "no renewal price a month ahead",
            items: vec![of_kind(item(1, 1, "25.00"), KindTag::Membership)],
            member: member(|m| m.memberships = vec![("video".into(), t0() + Duration::days(30))]),
            promotions: vec![with(amount_off("renew", "5.00"), |p| {
                p.conditions = vec![Condition::MembershipEndingWithin {
                    plan: "video".into(),
                    days: 7,
                }]
            })],
            expect: Expect {
                lines: vec!["25.00"],
                total: "25.00",
                missed: vec![("renew", condition("membership_ending"))],
                ..Expect::default()
            },
            ..Case::default()
        },
        Case {
            name: "a channel condition",
            items: vec![item(1, 1, "20.00")],
            channel: Some("mini_program"),
            promotions: vec![with(amount_off("mp", "1.00"), |p| {
                p.conditions = vec![Condition::Channel {
                    channels: vec!["mini_program".into()],
                }]
            })],
            expect: Expect {
                lines: vec!["19.00"],
                total: "19.00",
                applied: vec![("mp", "1.00")],
                ..Expect::default()
            },
            ..Case::default()
        },
        Case {
            name: "a minimum spend not reached",
            items: vec![item(1, 1, "45.00")],
            promotions: vec![with(amount_off("coupon", "5.00"), |p| {
                p.conditions = vec![Condition::MinSpend {
                    amount: cny("50.00"),
                }]
            })],
            expect: Expect {
                lines: vec!["45.00"],
                total: "45.00",
                missed: vec![("coupon", spend_more("5.00", Some("5.00")))],
                ..Expect::default()
            },
            ..Case::default()
        },
        // Stacking.
        Case {
            name: "an exclusive promotion first keeps the others out",
            items: vec![item(1, 1, "100.00")],
            promotions: vec![
                with(amount_off("excl", "20.00"), |p| {
                    p.priority = 9;
                    p.stacking = Stacking::Exclusive;
                }),
                amount_off("stack", "5.00"),
            ],
            expect: Expect {
                lines: vec!["80.00"],
                total: "80.00",
                applied: vec![("excl", "20.00")],
                missed: vec![("stack", MissReason::Excluded { by: "excl".into() })],
                ..Expect::default()
            },
            ..Case::default()
        },
        Case {
            name: "an exclusive promotion after others does not apply",
            items: vec![item(1, 1, "100.00")],
            promotions: vec![
                with(amount_off("stack", "5.00"), |p| p.priority = 9),
                with(amount_off("excl", "20.00"), |p| {
                    p.stacking = Stacking::Exclusive
                }),
            ],
            expect: Expect {
                lines: vec!["95.00"],
                total: "95.00",
                applied: vec![("stack", "5.00")],
                missed: vec![("excl", MissReason::Excluded { by: "stack".into() })],
                ..Expect::default()
            },
            ..Case::default()
        },
        Case {
            name: "stackable promotions apply in priority order, each on what is left",
            items: vec![item(1, 1, "100.00")],
            promotions: vec![
                amount_off("then", "10.00"),
                with(percent("first", 1000, None), |p| p.priority = 5),
            ],
            expect: Expect {
                lines: vec!["80.00"],
                total: "80.00",
                applied: vec![("first", "10.00"), ("then", "10.00")],
                ..Expect::default()
            },
            ..Case::default()
        },
        Case {
            name: "a code applies when entered, in any case",
            items: vec![item(1, 1, "20.00")],
            codes: vec![" share-ab12 "],
            promotions: vec![with(amount_off("referral", "3.00"), |p| {
                p.code = Some("SHARE-AB12".into())
            })],
            expect: Expect {
                lines: vec!["17.00"],
                total: "17.00",
                applied: vec![("referral", "3.00")],
                ..Expect::default()
            },
            ..Case::default()
        },
        Case {
            name: "a code not entered is never shown",
            items: vec![item(1, 1, "20.00")],
            promotions: vec![with(amount_off("referral", "3.00"), |p| {
                p.code = Some("SHARE-AB12".into())
            })],
            expect: Expect {
                lines: vec!["20.00"],
                total: "20.00",
                ..Expect::default()
            },
            ..Case::default()
        },
        Case {
            name: "a promotion outside its window is not shown",
            items: vec![item(1, 1, "20.00")],
            promotions: vec![with(amount_off("over", "3.00"), |p| {
                p.window.to = Some(t0())
            })],
            expect: Expect {
                lines: vec!["20.00"],
                total: "20.00",
                ..Expect::default()
            },
            ..Case::default()
        },
        Case {
            name: "a promotion whose budget is used up",
            items: vec![item(1, 1, "20.00")],
            used_up: vec!["coupon"],
            promotions: vec![with(amount_off("coupon", "3.00"), |p| {
                p.budget = Some(Budget {
                    total: Some(1),
                    per_member: None,
                    discount: None,
                })
            })],
            expect: Expect {
                lines: vec!["20.00"],
                total: "20.00",
                missed: vec![("coupon", MissReason::UsedUp)],
                ..Expect::default()
            },
            ..Case::default()
        },
        // Coupon templates apply only through a coupon issued to the buyer.
        Case {
            name: "a coupon template unlocked by an issued coupon",
            items: vec![item(1, 1, "20.00")],
            coupons: vec!["welcome"],
            promotions: vec![with(amount_off("welcome", "5.00"), |p| p.coupon = true)],
            expect: Expect {
                lines: vec!["15.00"],
                total: "15.00",
                applied: vec![("welcome", "5.00")],
                ..Expect::default()
            },
            ..Case::default()
        },
        Case {
            name: "a coupon template without a coupon is neither applied nor listed",
            items: vec![item(1, 1, "20.00")],
            codes: vec!["welcome"],
            promotions: vec![with(amount_off("welcome", "5.00"), |p| p.coupon = true)],
            expect: Expect {
                lines: vec!["20.00"],
                total: "20.00",
                ..Expect::default()
            },
            ..Case::default()
        },
        // Floors and the spreading of cut discounts.
        Case {
            name: "a free unit on a line already cut spreads to lines with room",
            items: vec![item(1, 1, "10.00"), item(2, 2, "30.00")],
            promotions: vec![
                with(amount_off("sku1", "8.00"), |p| {
                    p.priority = 9;
                    p.target = Target::Skus { skus: vec![sku(1)] };
                }),
                promo(
                    "b2g1",
                    Effect::BuyGetFree {
                        buy: 2,
                        free: 1,
                        max_free: None,
                    },
                ),
            ],
            expect: Expect {
                lines: vec!["0.00", "52.00"],
                total: "52.00",
                applied: vec![("sku1", "8.00"), ("b2g1", "10.00")],
                ..Expect::default()
            },
            ..Case::default()
        },
        Case {
            name: "a promotion on lines already free takes nothing",
            items: vec![item(1, 1, "5.00")],
            promotions: vec![
                with(amount_off("all", "5.00"), |p| p.priority = 9),
                amount_off("more", "1.00"),
            ],
            expect: Expect {
                lines: vec!["0.00"],
                total: "0.00",
                applied: vec![("all", "5.00")],
                missed: vec![("more", MissReason::NothingOff)],
                ..Expect::default()
            },
            ..Case::default()
        },
    ];
    assert!(cases.len() >= 40, "{} cases", cases.len());
    for case in cases {
        check(case);
    }
}

#[test]
fn bad_rules_name_the_rule_and_the_field() {
    let cart = Cart {
        currency: Currency::CNY,
        items: vec![item(1, 1, "10.00")],
        codes: vec![],
        coupons: vec![],
    };
    let ctx = PricingContext {
        member: None,
        channel: None,
        now: t0(),
        used_up: vec![],
    };
    let bad = |promotions: Vec<Promotion>, lists: Vec<PriceList>| {
        let rules = Rules {
            promotions,
            lists,
            ..Rules::none(Currency::CNY)
        };
        match rules.validated().unwrap_err() {
            PricingError::InvalidRule { rule, field, .. } => (rule, field),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(
        bad(vec![percent("p", 0, None)], vec![]),
        ("p".into(), "effect.bps".into())
    );
    assert_eq!(
        bad(vec![percent("p", 10_001, None)], vec![]),
        ("p".into(), "effect.bps".into())
    );
    assert_eq!(
        bad(
            vec![threshold("t", &[("200.00", "1.00"), ("100.00", "2.00")])],
            vec![]
        ),
        ("t".into(), "effect.tiers".into())
    );
    assert_eq!(
        bad(
            vec![amount_off("a", "1.00"), amount_off("a", "2.00")],
            vec![]
        ),
        ("a".into(), "id".into())
    );
    let no_limit = with(amount_off("b", "1.00"), |p| {
        p.budget = Some(Budget::default())
    });
    assert_eq!(bad(vec![no_limit], vec![]), ("b".into(), "budget".into()));
    let usd = PriceList {
        currency: Currency::USD,
        ..list("l", ListKind::Sale, 0, &[])
    };
    assert_eq!(bad(vec![], vec![usd]), ("l".into(), "currency".into()));
    let no_first_tier = list("l", ListKind::Sale, 0, &[(1, &[(2, "1.00")])]);
    assert_eq!(
        bad(vec![], vec![no_first_tier]).1,
        format!("prices[{}].tiers", sku(1))
    );
    // Rules files: a round trip through JSON, and a file that does not parse.
    let rules = Rules {
        promotions: vec![threshold("t", &[("100.00", "10.00")])],
        ..Rules::none(Currency::CNY)
    };
    let json = serde_json::to_string(&rules).unwrap();
    assert_eq!(Rules::from_json(&json).unwrap().rules(), &rules);
    let broken = Rules::from_json("{\"currency\": 7").unwrap_err();
    assert!(
        matches!(broken, PricingError::InvalidFile { line: 1, .. }),
        "{broken:?}"
    );
    assert_eq!(broken.code(), "invalid_rules_file");
    let bad_bps = json.replace("\"threshold\"", "\"percent_off\", \"bps\": 0, \"x\"");
    assert!(Rules::from_json(&bad_bps).is_err());
    // A coupon template has no shared code; a discount budget is positive, in the currency.
    let coded = with(amount_off("c", "1.00"), |p| {
        p.coupon = true;
        p.code = Some("C".into());
    });
    assert_eq!(bad(vec![coded], vec![]), ("c".into(), "code".into()));
    let usd_budget = with(amount_off("d", "1.00"), |p| {
        p.budget = Some(Budget {
            discount: Some(Money::from_minor(100, Currency::USD)),
            ..Budget::default()
        })
    });
    assert_eq!(
        bad(vec![usd_budget], vec![]),
        ("d".into(), "budget.discount".into())
    );
    // A cart that cannot be quoted.
    let rules = Rules::none(Currency::CNY).validated().unwrap();
    let empty = Cart {
        items: vec![],
        ..cart.clone()
    };
    assert_eq!(
        quote(&empty, &ctx, &rules).unwrap_err().code(),
        "invalid_cart"
    );
    let zero = Cart {
        items: vec![item(1, 0, "1.00")],
        ..cart.clone()
    };
    assert_eq!(
        quote(&zero, &ctx, &rules).unwrap_err().code(),
        "invalid_cart"
    );
    let usd = Cart {
        currency: Currency::USD,
        ..cart
    };
    assert_eq!(
        quote(&usd, &ctx, &rules).unwrap_err().code(),
        "currency_mismatch"
    );
}

fn any_effect() -> impl Strategy<Value = Effect> {
    prop_oneof![
        (1i64..5_000).prop_map(|m| Effect::AmountOff {
            amount: Money::from_minor(m, Currency::CNY)
        }),
        (1u32..=10_000, proptest::option::of(1i64..3_000)).prop_map(|(bps, cap)| {
            Effect::PercentOff {
                bps,
                cap: cap.map(|c| Money::from_minor(c, Currency::CNY)),
            }
        }),
        (1i64..5_000, 1i64..2_000).prop_map(|(spend, off)| Effect::Threshold {
            tiers: vec![(
                Money::from_minor(spend, Currency::CNY),
                Money::from_minor(off, Currency::CNY)
            )]
        }),
        (1u32..4, 1u32..3, proptest::option::of(1u32..4)).prop_map(|(buy, free, max_free)| {
            Effect::BuyGetFree {
                buy,
                free,
                max_free,
            }
        }),
        (1u32..4, 0i64..3_000).prop_map(|(quantity, price)| Effect::SetPrice {
            quantity,
            price: Money::from_minor(price, Currency::CNY),
        }),
    ]
}

proptest! {
    /// Line amounts sum to the total; no line and no total below zero; the discount never
    /// exceeds the subtotal; the same input gives the same quote.
    #[test]
    fn quotes_keep_their_invariants(
        items in proptest::collection::vec((1u8..6, 1u32..5, 0i64..10_000), 1..6),
        effects in proptest::collection::vec((any_effect(), 0i32..3, any::<bool>(), 0u8..7), 0..6),
    ) {
        let cart = Cart {
            currency: Currency::CNY,
            items: items
                .iter()
                .map(|(n, q, p)| CartItem {
                    sku: sku(*n),
                    quantity: *q,
                    base_price: Money::from_minor(*p, Currency::CNY),
                    kind: KindTag::CardKey,
                    categories: vec![],
                })
                .collect(),
            codes: vec![],
            coupons: vec![],
        };
        let promotions = effects
            .into_iter()
            .enumerate()
            .map(|(i, (effect, priority, exclusive, target))| Promotion {
                priority,
                stacking: if exclusive { Stacking::Exclusive } else { Stacking::Stackable },
                target: if target == 0 { Target::Order } else { Target::Skus { skus: vec![sku(target)] } },
                ..promo(&format!("p{i}"), effect)
            })
            .collect();
        let rules = Rules { promotions, ..Rules::none(Currency::CNY) }.validated().unwrap();
        let ctx = PricingContext { member: None, channel: None, now: t0(), used_up: vec![] };
        let q = quote(&cart, &ctx, &rules).unwrap();
        invariants(&q, "property");
        prop_assert_eq!(quote(&cart, &ctx, &rules).unwrap(), q);
    }
}

#[test]
fn rules_load_from_toml_and_errors_name_the_place() {
    let text = r#"
currency = { code = "CNY", exponent = 2 }
rounding = "HalfUp"

[[promotions]]
id = "spring"
name = "Spring threshold"
priority = 5
stacking = "stackable"
target = { on = "order" }
effect = { type = "threshold", tiers = [
    [{ minor = 10000, currency = { code = "CNY", exponent = 2 } },
     { minor = 1000, currency = { code = "CNY", exponent = 2 } }],
] }
budget = { total = 500, discount = { minor = 100000, currency = { code = "CNY", exponent = 2 } } }

[[promotions]]
id = "welcome"
name = "Welcome coupon"
priority = 1
stacking = "exclusive"
coupon = true
target = { on = "categories", categories = ["video"] }
effect = { type = "amount_off", amount = { minor = 500, currency = { code = "CNY", exponent = 2 } } }
"#;
    let rules = Rules::from_toml(text).unwrap();
    let rules = rules.rules();
    assert_eq!(rules.rounding, Rounding::HalfUp);
    assert_eq!(rules.promotions.len(), 2);
    assert_eq!(
        rules.promotions[0].effect,
        Effect::Threshold {
            tiers: vec![(cny("100.00"), cny("10.00"))]
        }
    );
    assert_eq!(
        rules.promotions[0].budget,
        Some(Budget {
            total: Some(500),
            per_member: None,
            discount: Some(cny("1000.00")),
        })
    );
    assert!(rules.promotions[1].coupon);
    // The same rules through JSON are the same rules.
    let json = serde_json::to_string(rules).unwrap();
    assert_eq!(Rules::from_json(&json).unwrap().rules(), rules);
    // A file that does not parse names its line and column; one that parses but breaks a rule
    // names the rule and the field.
    let broken =
        Rules::from_toml("currency = { code = \"CNY\", exponent = 2 }\nrounding = ").unwrap_err();
    assert!(
        matches!(broken, PricingError::InvalidFile { line: 2, .. }),
        "{broken:?}"
    );
    let negative = text.replace("minor = 500,", "minor = -500,");
    assert_eq!(
        Rules::from_toml(&negative).unwrap_err(),
        PricingError::InvalidRule {
            rule: "welcome".into(),
            field: "effect.amount".into(),
            reason: "must be positive, in the currency".into(),
        }
    );
    let unknown = text.replace("type = \"amount_off\"", "type = \"free_money\"");
    assert!(matches!(
        Rules::from_toml(&unknown),
        Err(PricingError::InvalidFile { .. })
    ));
}
