use chrono::{DateTime, TimeZone, Utc};
use quanyi_core::{Currency, ErrorKind, GoodsId, Money, SkuId, TenantId};

use crate::*;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
}

fn sku(n: u128) -> SkuId {
    format!("sku_{n:032x}").parse().unwrap()
}

fn gid() -> GoodsId {
    "gds_0190c8f0e0e07c4c8a1b2c3d4e5f6a7b".parse().unwrap()
}

fn cny(minor: i64) -> Money {
    Money::from_minor(minor, Currency::CNY)
}

fn draft(kind: GoodsKind, skus: Vec<SkuDraft>) -> GoodsDraft {
    GoodsDraft {
        title: "Title".to_owned(),
        kind,
        skus,
        categories: vec![],
    }
}

fn goods(kind: GoodsKind, skus: Vec<SkuDraft>) -> Result<Goods> {
    Goods::new(gid(), TenantId::default(), draft(kind, skus), now())
}

fn card_sku(n: u128) -> SkuDraft {
    SkuDraft::new(sku(n), "S", cny(1000)).with_stock(StockSource::VaultPool)
}

fn pattern(regex: &str) -> AccountRule {
    AccountRule::Pattern {
        regex: regex.to_owned(),
        description: "a game id".to_owned(),
    }
}

/// One account case: rule, input, expected normalised output or `None` for invalid.
fn check_account(rule: &AccountRule, input: &str, expected: Option<&str>) {
    let got = rule.validate(input);
    match (expected, got) {
        (Some(want), Ok(got)) => assert_eq!(got, want, "{rule:?} {input:?}"),
        (None, Err(e)) => {
            assert_eq!(e.code(), "invalid_account", "{rule:?} {input:?}");
            assert!(e.to_string().chars().count() < 200, "{e}");
        }
        (want, got) => panic!("{rule:?} {input:?}: want {want:?}, got {got:?}"),
    }
}

#[test]
fn account_rules() {
    use AccountRule::*;
    let long = "1".repeat(10_000);
    let cases: &[(AccountRule, &str, Option<&str>)] = &[
        (MainlandMobile, "13800138000", Some("13800138000")),
        (MainlandMobile, " 13800138000 ", Some("13800138000")),
        (MainlandMobile, "+86 138-0013-8000", Some("13800138000")),
        (MainlandMobile, "+8613800138000", Some("13800138000")),
        (MainlandMobile, "8613800138000", Some("13800138000")),
        (MainlandMobile, "008613800138000", Some("13800138000")),
        (MainlandMobile, "138 0013 8000", Some("13800138000")),
        (MainlandMobile, "19912345678", Some("19912345678")),
        (MainlandMobile, "12800138000", None),
        (MainlandMobile, "10800138000", None),
        (MainlandMobile, "23800138000", None),
        (MainlandMobile, "1380013800", None),
        (MainlandMobile, "138001380000", None),
        (MainlandMobile, "+1 13800138000", None),
        (MainlandMobile, "1380013800a", None),
        (MainlandMobile, "１３８００１３８０００", None),
        (MainlandMobile, "", None),
        (MainlandMobile, "   ", None),
        (MainlandMobile, "+86", None),
        (MainlandMobile, &long, None),
        (QqNumber, "10001", Some("10001")),
        (QqNumber, "12345678901", Some("12345678901")),
        (QqNumber, "1234", None),
        (QqNumber, "123456789012", None),
        (QqNumber, "01234", None),
        (QqNumber, "12a45", None),
        (QqNumber, "-12345", None),
        (Email, "Bob@Example.COM", Some("Bob@example.com")),
        (Email, "a.b+tag@mail.qq.com", Some("a.b+tag@mail.qq.com")),
        (Email, "x@y.cn", Some("x@y.cn")),
        (Email, "plain", None),
        (Email, "@example.com", None),
        (Email, "a@", None),
        (Email, "a@b", None),
        (Email, "a@@b.com", None),
        (Email, "a@b@c.com", None),
        (Email, ".a@b.com", None),
        (Email, "a..b@b.com", None),
        (Email, "a b@b.com", None),
        (Email, "a@-b.com", None),
        (Email, "a@b..com", None),
        (Email, "a@b.c0m", None),
        (Email, "用户@例子.中国", None),
        (Email, &format!("{}@b.com", "a".repeat(65)), None),
        (Email, &format!("a@{}.com", "b".repeat(250)), None),
        (pattern(r"[A-Z]{2}\d{6}"), "AB123456", Some("AB123456")),
        (pattern(r"[A-Z]{2}\d{6}"), " AB123456 ", Some("AB123456")),
        (pattern(r"[A-Z]{2}\d{6}"), "xAB123456", None),
        (pattern(r"[A-Z]{2}\d{6}"), "AB1234567", None),
        (pattern(r"a|b"), "a", Some("a")),
        (pattern(r"a|b"), "ab", None),
    ];
    for (rule, input, expected) in cases {
        check_account(rule, input, *expected);
    }
}

#[test]
fn invalid_account_clips_input() {
    let input = format!("{}\n{}", "x".repeat(20), "y".repeat(500));
    let err = AccountRule::QqNumber.validate(&input).unwrap_err();
    let msg = err.to_string();
    assert!(!msg.contains(&"y".repeat(100)), "{msg}");
    assert!(!msg.contains('\n'), "{msg}");
    assert_eq!(err.kind(), ErrorKind::Invalid);
}

#[test]
fn bad_patterns_fail_at_creation() {
    let huge = r"\w{1000}{1000}";
    for bad in ["", "(", "a)|(b", "[z-a]", "(?x)a#", "a\nb", huge] {
        let err = goods(
            GoodsKind::DirectTopUp {
                account: pattern(bad),
            },
            vec![SkuDraft::new(sku(1), "S", cny(100))],
        )
        .unwrap_err();
        assert_eq!(err.code(), "invalid_pattern", "{bad:?}");
    }
    let long = "a".repeat(MAX_PATTERN_CHARS + 1);
    assert_eq!(
        pattern(&long).check().unwrap_err().code(),
        "invalid_pattern"
    );
}

/// One creation case: the draft and the expected error code (`None` = accepted).
fn check_new(kind: GoodsKind, skus: Vec<SkuDraft>, title: &str, expected: Option<&str>) {
    let mut d = draft(kind, skus);
    d.title = title.to_owned();
    let got = Goods::new(gid(), TenantId::default(), d.clone(), now());
    match (expected, got) {
        (None, Ok(g)) => assert_eq!(g.version(), 1),
        (Some(code), Err(e)) => assert_eq!(e.code(), code, "{d:?}"),
        (want, got) => panic!("{d:?}: want {want:?}, got {got:?}"),
    }
}

#[test]
fn creation_rules() {
    use GoodsKind::*;
    use StockSource::*;
    let top_up = DirectTopUp {
        account: AccountRule::MainlandMobile,
    };
    let pack = |n: usize, q: u32| BenefitPack {
        components: (0..n)
            .map(|i| BundleComponent {
                sku: sku(1000 + i as u128),
                quantity: q,
            })
            .collect(),
    };
    let member = |plan: &str, days| Membership {
        plan: plan.to_owned(),
        days,
    };
    let s = |stock| SkuDraft::new(sku(1), "S", cny(100)).with_stock(stock);
    let t = "Title";
    let (t200, t201) = ("长".repeat(200), "长".repeat(201));
    let cases: Vec<(GoodsKind, Vec<SkuDraft>, &str, Option<&str>)> = vec![
        (CardKey, vec![card_sku(1)], t, None),
        (CardKey, vec![card_sku(1)], "  ", Some("invalid_title")),
        (CardKey, vec![card_sku(1)], "", Some("invalid_title")),
        (CardKey, vec![card_sku(1)], &t200, None),
        (CardKey, vec![card_sku(1)], &t201, Some("invalid_title")),
        (CardKey, vec![card_sku(1)], "a\u{0}b", Some("invalid_title")),
        (CardKey, vec![], t, Some("invalid_sku_count")),
        (
            CardKey,
            (0..101).map(card_sku).collect(),
            t,
            Some("invalid_sku_count"),
        ),
        (
            CardKey,
            vec![card_sku(1), card_sku(1)],
            t,
            Some("duplicate_sku"),
        ),
        (CardKey, vec![card_sku(1), card_sku(2)], t, None),
        (CardKey, vec![s(Unlimited)], t, Some("stock_mismatch")),
        (CardKey, vec![s(Supplier)], t, None),
        (
            top_up.clone(),
            vec![s(VaultPool)],
            t,
            Some("stock_mismatch"),
        ),
        (top_up.clone(), vec![s(Supplier)], t, None),
        (top_up.clone(), vec![s(Unlimited)], t, None),
        (Link, vec![s(VaultPool)], t, None),
        (ReservationCode, vec![s(VaultPool)], t, None),
        (
            member("gold", 30),
            vec![s(VaultPool)],
            t,
            Some("stock_mismatch"),
        ),
        (member("gold", 30), vec![s(Unlimited)], t, None),
        (
            member("gold", 0),
            vec![s(Unlimited)],
            t,
            Some("invalid_membership"),
        ),
        (
            member("", 30),
            vec![s(Unlimited)],
            t,
            Some("invalid_membership"),
        ),
        (pack(1, 1), vec![s(Unlimited)], t, None),
        (pack(50, 3), vec![s(Supplier)], t, None),
        (pack(0, 1), vec![s(Unlimited)], t, Some("invalid_bundle")),
        (pack(51, 1), vec![s(Unlimited)], t, Some("invalid_bundle")),
        (pack(2, 0), vec![s(Unlimited)], t, Some("invalid_bundle")),
        (pack(1, 1), vec![s(VaultPool)], t, Some("stock_mismatch")),
        (
            BenefitPack {
                components: vec![BundleComponent {
                    sku: sku(1),
                    quantity: 1,
                }],
            },
            vec![s(Unlimited)],
            t,
            Some("invalid_bundle"),
        ),
        (
            Link,
            vec![SkuDraft::new(sku(1), "S", cny(-1))],
            t,
            Some("negative_price"),
        ),
        (Link, vec![SkuDraft::new(sku(1), "S", cny(0))], t, None),
        (
            Link,
            vec![
                SkuDraft::new(sku(1), "S", cny(1)),
                SkuDraft::new(sku(2), "S", Money::from_minor(1, Currency::USD)),
            ],
            t,
            Some("currency_mismatch"),
        ),
        (
            Link,
            vec![SkuDraft::new(sku(1), " ", cny(1))],
            t,
            Some("invalid_sku_name"),
        ),
        (
            Link,
            vec![
                SkuDraft::new(sku(1), "S", cny(1)).with_limits(PurchaseLimits {
                    per_order: Some(0),
                    per_member: None,
                    release_on_refund: false,
                }),
            ],
            t,
            Some("invalid_limit"),
        ),
        (
            Link,
            vec![
                SkuDraft::new(sku(1), "S", cny(1)).with_limits(PurchaseLimits {
                    per_order: None,
                    per_member: Some(0),
                    release_on_refund: false,
                }),
            ],
            t,
            Some("invalid_limit"),
        ),
    ];
    for (kind, skus, title, expected) in cases {
        check_new(kind, skus, title, expected);
    }
}

#[test]
fn mutations_bump_version() {
    let mut g = goods(GoodsKind::CardKey, vec![card_sku(1)]).unwrap();
    g.set_shelf(sku(1), Shelf::Off).unwrap();
    assert_eq!(g.version(), 2);
    g.set_price(sku(1), cny(2000)).unwrap();
    assert_eq!(g.sku(sku(1)).unwrap().price, cny(2000));
    g.set_limits(
        sku(1),
        PurchaseLimits {
            per_order: Some(3),
            per_member: Some(9),
            release_on_refund: false,
        },
    )
    .unwrap();
    assert_eq!(g.version(), 4);
    let before = g.clone();
    assert_eq!(
        g.set_price(sku(1), cny(-1)).unwrap_err().code(),
        "negative_price"
    );
    assert_eq!(
        g.set_price(sku(1), Money::from_minor(1, Currency::USD))
            .unwrap_err()
            .code(),
        "currency_mismatch"
    );
    assert_eq!(
        g.set_shelf(sku(2), Shelf::On).unwrap_err().code(),
        "unknown_sku"
    );
    assert_eq!(
        g.set_limits(
            sku(1),
            PurchaseLimits {
                per_order: Some(0),
                per_member: None,
                release_on_refund: false
            }
        )
        .unwrap_err()
        .code(),
        "invalid_limit"
    );
    assert_eq!(g, before);
}

#[test]
fn purchase_checks() {
    let limits = PurchaseLimits {
        per_order: Some(5),
        per_member: Some(20),
        release_on_refund: false,
    };
    let cards = goods(
        GoodsKind::CardKey,
        vec![
            card_sku(1).with_limits(limits),
            card_sku(2).with_shelf(Shelf::Off),
        ],
    )
    .unwrap();
    let top_up = goods(
        GoodsKind::DirectTopUp {
            account: AccountRule::QqNumber,
        },
        vec![SkuDraft::new(sku(1), "S", cny(i64::MAX / 2))],
    )
    .unwrap();
    type Case<'a> = (
        &'a Goods,
        SkuId,
        u32,
        Option<&'a str>,
        Result<Option<&'a str>, &'a str>,
    );
    let cases: &[Case<'_>] = &[
        (&cards, sku(1), 1, None, Ok(None)),
        (&cards, sku(1), 5, None, Ok(None)),
        (&cards, sku(1), 5, Some("  "), Ok(None)),
        (&cards, sku(1), 6, None, Err("limit_exceeded")),
        (&cards, sku(1), 0, None, Err("invalid_quantity")),
        (&cards, sku(1), 10_001, None, Err("invalid_quantity")),
        (&cards, sku(2), 1, None, Err("off_shelf")),
        (&cards, sku(3), 1, None, Err("unknown_sku")),
        (&cards, sku(1), 1, Some("10001"), Err("unexpected_account")),
        (&top_up, sku(1), 1, Some(" 10001 "), Ok(Some("10001"))),
        (&top_up, sku(1), 1, None, Err("account_required")),
        (&top_up, sku(1), 1, Some(""), Err("account_required")),
        (&top_up, sku(1), 1, Some("0001"), Err("invalid_account")),
        (&top_up, sku(1), 3, Some("10001"), Err("amount_overflow")),
    ];
    for (g, s, q, account, expected) in cases {
        let got = g.check_purchase(*s, *q, *account);
        match (expected, got) {
            (Ok(acc), Ok(check)) => {
                assert_eq!(check.account.as_deref(), *acc);
                assert_eq!(check.quantity, *q);
                assert_eq!(
                    check.amount,
                    check.unit_price.checked_mul(i64::from(*q)).unwrap()
                );
                assert_eq!(check.kind, g.kind().tag());
            }
            (Err(code), Err(e)) => assert_eq!(e.code(), *code, "{s} {q} {account:?}"),
            (want, got) => panic!("{s} {q} {account:?}: want {want:?}, got {got:?}"),
        }
    }
    let c = cards.check_purchase(sku(1), 2, None).unwrap();
    assert_eq!(c.limits.per_member, Some(20));
    assert_eq!(c.terms.stock, StockSource::VaultPool);
    assert_eq!(c.title, "Title");
    assert_eq!(c.amount, cny(2000));
}

#[test]
fn kind_tags() {
    let names: Vec<&str> = KindTag::ALL.iter().map(|t| t.as_str()).collect();
    assert_eq!(
        names,
        [
            "card_key",
            "direct_top_up",
            "link",
            "reservation_code",
            "membership",
            "benefit_pack"
        ]
    );
    for t in KindTag::ALL {
        assert_eq!(serde_json::to_string(&t).unwrap(), format!("\"{t}\""));
    }
}

#[test]
fn goods_round_trip_through_json() {
    let kinds = [
        GoodsKind::CardKey,
        GoodsKind::DirectTopUp {
            account: pattern(r"\d{6,10}"),
        },
        GoodsKind::Membership {
            plan: "gold".to_owned(),
            days: 30,
        },
        GoodsKind::BenefitPack {
            components: vec![BundleComponent {
                sku: sku(9),
                quantity: 2,
            }],
        },
    ];
    for kind in kinds {
        let stock = if kind.tag() == KindTag::CardKey {
            StockSource::VaultPool
        } else {
            StockSource::Supplier
        };
        let g = goods(
            kind,
            vec![
                SkuDraft::new(sku(1), "S", cny(990))
                    .with_stock(stock)
                    .with_limits(PurchaseLimits {
                        per_order: Some(2),
                        per_member: None,
                        release_on_refund: false,
                    }),
            ],
        )
        .unwrap();
        let json = serde_json::to_string(&g).unwrap();
        let back: Goods = serde_json::from_str(&json).unwrap();
        assert_eq!(back, g, "{json}");
    }
}

#[test]
fn errors_are_send_sync_static() {
    fn check<E: std::error::Error + Send + Sync + 'static>() {}
    check::<Error>();
}

#[test]
fn a_changed_copy_leaves_the_original_as_it_was() {
    let original = goods(GoodsKind::CardKey, vec![card_sku(1)]).unwrap();
    let mut copy = original.clone();
    copy.set_price(sku(1), cny(2000)).unwrap();
    copy.set_shelf(sku(1), Shelf::Off).unwrap();
    assert_eq!(original.version(), 1);
    assert_eq!(original.sku(sku(1)).unwrap().price, card_sku(1).price);
    assert_eq!(original.sku(sku(1)).unwrap().shelf, Shelf::On);
    assert_eq!(copy.version(), 3);
    assert_eq!(copy.sku(sku(1)).unwrap().price, cny(2000));
    assert_ne!(copy, original);
    // Serialized as before: the fields, not a wrapper.
    let json = serde_json::to_value(&original).unwrap();
    assert_eq!(json["version"], 1);
    assert_eq!(serde_json::from_value::<Goods>(json).unwrap(), original);
    assert!(format!("{original:?}").starts_with("Goods {"));
}

#[test]
fn categories_are_trimmed_checked_and_kept_once() {
    let mut d = draft(
        GoodsKind::CardKey,
        vec![SkuDraft::new(sku(1), "a", cny(100)).with_stock(StockSource::VaultPool)],
    );
    d.categories = vec![" music ".into(), "music".into(), "takeaway_voucher".into()];
    let mut goods = Goods::new(gid(), TenantId::default(), d, now()).unwrap();
    assert_eq!(goods.categories(), ["music", "takeaway_voucher"]);
    let version = goods.version();
    for bad in [
        vec![" ".to_owned()],
        vec!["x".repeat(65)],
        vec!["a\u{7}".to_owned()],
    ] {
        assert_eq!(
            goods.set_categories(bad).unwrap_err().code(),
            "invalid_category"
        );
    }
    let many: Vec<String> = (0..=MAX_CATEGORIES).map(|i| format!("c{i}")).collect();
    assert_eq!(
        goods.set_categories(many).unwrap_err().code(),
        "invalid_category"
    );
    assert_eq!(goods.version(), version);
    goods.set_categories(vec!["video".into()]).unwrap();
    assert_eq!(goods.categories(), ["video"]);
    assert_eq!(goods.version(), version + 1);
    // Goods stored before categories read as having none.
    let json = serde_json::to_value(&goods).unwrap();
    let mut old = json.clone();
    old.as_object_mut().unwrap().remove("categories");
    let read: Goods = serde_json::from_value(old).unwrap();
    assert!(read.categories().is_empty());
}
