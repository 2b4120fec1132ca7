use chrono::{DateTime, Duration, TimeZone, Utc};
use proptest::prelude::*;
use quanyi_core::{
    CardId, Currency, DomainEvent, ErrorKind, GoodsId, MemberId, Money, SkuId, TenantId,
};
use quanyi_goods::KindTag;

use crate::*;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
}

fn later(minutes: i64) -> DateTime<Utc> {
    t0() + Duration::minutes(minutes)
}

fn card(n: u128) -> CardId {
    format!("card_{n:032x}").parse().unwrap()
}

fn goods_id() -> GoodsId {
    "gds_0190c8f0e0e07c4c8a1b2c3d4e5f6a7b".parse().unwrap()
}

fn cny(minor: i64) -> Money {
    Money::from_minor(minor, Currency::CNY)
}

/// Terms that fit `kind`.
fn terms_for(kind: KindTag) -> quanyi_goods::SaleTerms {
    use quanyi_goods::StockSource;
    quanyi_goods::SaleTerms {
        stock: match kind {
            KindTag::DirectTopUp => StockSource::Supplier,
            KindTag::Membership | KindTag::BenefitPack => StockSource::Unlimited,
            _ => StockSource::VaultPool,
        },
        membership: (kind == KindTag::Membership).then(|| quanyi_goods::MembershipTerms {
            plan: "vip".into(),
            days: 30,
        }),
        routes: Vec::new(),
    }
}

fn line(kind: KindTag, quantity: u32, unit_price: Money) -> NewLine {
    NewLine {
        sku: format!("sku_{:032x}", quantity).parse().unwrap(),
        goods: goods_id(),
        kind,
        title: "VIP month".to_owned(),
        quantity,
        unit_price,
        account: None,
        allocated: None,
        terms: terms_for(kind),
        pack: None,
        price_source: crate::PriceSource::ListPrice,
    }
}

fn place(lines: Vec<NewLine>) -> Result<(Order, Vec<OrderEvent>)> {
    Order::place(
        "ord_0190c8f0e0e07c4c8a1b2c3d4e5f6a7b".parse().unwrap(),
        TenantId::default(),
        MemberId::new("m-1").unwrap(),
        lines,
        t0(),
        later(15),
    )
}

fn payment(amount: Money) -> Payment {
    Payment {
        provider: "alipay".into(),
        transaction_id: "tx-1".into(),
        amount,
        paid_at: later(1),
    }
}

/// Two lines: 2 card keys at 10.00 and one link at 5.00; total 25.00.
fn two_lines() -> Order {
    place(vec![
        line(KindTag::CardKey, 2, cny(1000)),
        line(KindTag::Link, 1, cny(500)),
    ])
    .unwrap()
    .0
}

fn paid_fulfilling() -> Order {
    let mut o = two_lines();
    o.confirm_payment(payment(cny(2500)), later(1)).unwrap();
    o.start_fulfilment(later(2)).unwrap();
    o
}

#[test]
fn every_state_trigger_pair() {
    use OrderStatus::*;
    const X: Option<OrderStatus> = None;
    let rf = Some(RefundPending);
    // Columns follow Trigger::ALL:
    //  Pay         StartFulfilment   DeliverAll       DeliverPart              Expire         Cancel           RequestRefund CompleteRefund
    let table: [(OrderStatus, [Option<OrderStatus>; 8]); 9] = [
        (
            AwaitingPayment,
            [Some(Paid), X, X, X, Some(Expired), Some(Cancelled), X, X],
        ),
        (Paid, [X, Some(Fulfilling), X, X, X, X, rf, X]),
        (
            Fulfilling,
            [X, X, Some(Delivered), Some(PartiallyDelivered), X, X, rf, X],
        ),
        (Delivered, [X, X, X, X, X, X, rf, Some(Refunded)]),
        (PartiallyDelivered, [X, X, X, X, X, X, rf, Some(Refunded)]),
        (Expired, [X, X, X, X, X, X, X, X]),
        (Cancelled, [X, X, X, X, X, X, X, X]),
        (RefundPending, [X, X, X, X, X, X, X, Some(Refunded)]),
        (Refunded, [X, X, X, X, X, X, X, X]),
    ];
    let mut pairs = 0;
    for (i, (from, row)) in table.iter().enumerate() {
        assert_eq!(*from, OrderStatus::ALL[i]);
        for (trigger, expected) in Trigger::ALL.iter().zip(row) {
            pairs += 1;
            match (next_status(*from, *trigger), expected) {
                (Ok(got), Some(want)) => assert_eq!(got, *want, "{from} {trigger}"),
                (Err(e), None) => {
                    assert_eq!(
                        e,
                        Error::IllegalTransition {
                            from: *from,
                            trigger: *trigger
                        }
                    );
                    assert_eq!(e.code(), "illegal_transition");
                }
                (got, want) => panic!("{from} {trigger}: want {want:?}, got {got:?}"),
            }
        }
        let stuck = row.iter().all(Option::is_none);
        assert_eq!(from.is_terminal(), stuck, "{from}");
    }
    assert_eq!(pairs, OrderStatus::ALL.len() * Trigger::ALL.len());
}

#[test]
fn names_match_serde() {
    for s in OrderStatus::ALL {
        assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
    }
    for t in Trigger::ALL {
        assert_eq!(serde_json::to_string(&t).unwrap(), format!("\"{t}\""));
    }
}

#[test]
fn place_validation() {
    let ok = || line(KindTag::CardKey, 1, cny(100));
    let with = |f: &dyn Fn(&mut NewLine)| {
        let mut l = ok();
        f(&mut l);
        l
    };
    let cases: Vec<(Vec<NewLine>, &str)> = vec![
        (vec![], "invalid_line_count"),
        ((0..101).map(|_| ok()).collect(), "invalid_line_count"),
        (vec![ok(), with(&|l| l.quantity = 0)], "invalid_quantity"),
        (
            vec![
                ok(),
                with(&|l| l.unit_price = Money::from_minor(100, Currency::USD)),
            ],
            "currency_mismatch",
        ),
        (vec![with(&|l| l.unit_price = cny(-1))], "invalid_line"),
        (vec![with(&|l| l.title = " ".to_owned())], "invalid_line"),
        (vec![with(&|l| l.title = "x".repeat(201))], "invalid_line"),
        (
            vec![with(&|l| l.account = Some("a\u{7}".to_owned()))],
            "invalid_line",
        ),
        (
            vec![with(&|l| {
                l.unit_price = cny(i64::MAX / 2);
                l.quantity = 3;
            })],
            "amount_overflow",
        ),
        (
            vec![
                with(&|l| l.unit_price = cny(i64::MAX / 2 + 1)),
                with(&|l| l.unit_price = cny(i64::MAX / 2 + 1)),
            ],
            "amount_overflow",
        ),
    ];
    for (lines, code) in cases {
        let n = lines.len();
        assert_eq!(place(lines).unwrap_err().code(), code, "{n} lines, {code}");
    }
    for expires_at in [t0(), t0() - Duration::seconds(1)] {
        let err = Order::place(
            "ord_0190c8f0e0e07c4c8a1b2c3d4e5f6a7b".parse().unwrap(),
            TenantId::default(),
            MemberId::new("m-1").unwrap(),
            vec![ok()],
            t0(),
            expires_at,
        )
        .unwrap_err();
        assert_eq!(err.code(), "invalid_expiry");
    }
    let (o, events) = place((0..100).map(|_| ok()).collect()).unwrap();
    assert_eq!(o.total(), cny(10_000));
    assert_eq!(o.lines()[99].no, 100);
    assert_eq!(o.version(), 1);
    assert_eq!(o.status(), OrderStatus::AwaitingPayment);
    assert!(matches!(
        events[..],
        [OrderEvent::Placed { lines: 100, .. }]
    ));
}

#[test]
fn refused_payments_change_nothing() {
    let base = two_lines();
    let mut paid = base.clone();
    paid.confirm_payment(payment(cny(2500)), later(1)).unwrap();
    let mut blank_tx = payment(cny(2500));
    blank_tx.transaction_id = "".into();
    let cases: Vec<(&Order, Payment, DateTime<Utc>, &str, ErrorKind)> = vec![
        (
            &base,
            payment(cny(2499)),
            later(1),
            "amount_mismatch",
            ErrorKind::Invalid,
        ),
        (
            &base,
            payment(Money::from_minor(2500, Currency::USD)),
            later(1),
            "currency_mismatch",
            ErrorKind::Invalid,
        ),
        (
            &base,
            payment(cny(2500)),
            later(15),
            "order_expired",
            ErrorKind::Invalid,
        ),
        (
            &base,
            payment(cny(2500)),
            later(99),
            "order_expired",
            ErrorKind::Invalid,
        ),
        (
            &base,
            blank_tx,
            later(1),
            "invalid_payment",
            ErrorKind::Invalid,
        ),
        (
            &paid,
            payment(cny(2500)),
            later(2),
            "illegal_transition",
            ErrorKind::Conflict,
        ),
    ];
    for (order, p, now, code, kind) in cases {
        let mut o = order.clone();
        let err = o.confirm_payment(p, now).unwrap_err();
        assert_eq!((err.code(), err.kind()), (code, kind), "{err}");
        assert_eq!(&o, order, "{code}");
    }
    assert_eq!(
        base.clone()
            .confirm_payment(payment(cny(2499)), later(1))
            .unwrap_err(),
        Error::AmountMismatch {
            expected: cny(2500),
            got: cny(2499)
        }
    );
}

#[test]
fn happy_path() {
    let mut o = two_lines();
    let mut names = vec![];
    let mut push = |events: Vec<OrderEvent>| names.extend(events.iter().map(|e| e.name()));
    push(o.confirm_payment(payment(cny(2500)), later(1)).unwrap());
    assert_eq!(o.payment().unwrap().transaction_id.as_ref(), "tx-1");
    push(o.start_fulfilment(later(2)).unwrap());
    push(
        o.deliver_line(1, vec![card(1), card(2)], 2, later(3))
            .unwrap(),
    );
    push(o.deliver_line(2, vec![], 1, later(3)).unwrap());
    push(o.finish_fulfilment(later(4)).unwrap());
    assert_eq!(o.status(), OrderStatus::Delivered);
    assert_eq!(o.version(), 6);
    assert_eq!(o.updated_at(), later(4));
    assert_eq!(o.line(1).unwrap().cards, [card(1), card(2)]);
    assert_eq!(o.line(1).unwrap().delivered, 2);
    assert_eq!(o.refund_amount().unwrap(), cny(0));
    assert_eq!(
        names,
        [
            "order.paid",
            "order.fulfilment_started",
            "order.line_delivered",
            "order.line_delivered",
            "order.delivered"
        ]
    );
}

#[test]
fn partial_delivery_and_line_refunds() {
    let mut o = paid_fulfilling();
    o.deliver_line(1, vec![card(1), card(2)], 2, later(3))
        .unwrap();
    let e = o.fail_line(2, "x".repeat(10_000), later(3)).unwrap();
    assert!(
        matches!(&e[..], [OrderEvent::LineFailed { line: 2, reason }] if reason.len() == MAX_REASON_CHARS)
    );
    let e = o.finish_fulfilment(later(4)).unwrap();
    assert_eq!(e, [OrderEvent::PartiallyDelivered { refund: cny(500) }]);
    assert_eq!(o.status(), OrderStatus::PartiallyDelivered);
    assert_eq!(o.refund_amount().unwrap(), cny(500));
    assert_eq!(
        o.refund_line(1, later(5)).unwrap_err().code(),
        "line_not_failed"
    );
    let e = o.refund_line(2, later(5)).unwrap();
    assert_eq!(
        e,
        [OrderEvent::LineRefunded {
            line: 2,
            amount: cny(500)
        }]
    );
    assert_eq!(o.refund_amount().unwrap(), cny(0));
    assert_eq!(o.refunded_amount().unwrap(), cny(500));
    // A later whole-order refund pays back only what is left.
    let e = o
        .request_refund("buyer complaint".to_owned(), later(6))
        .unwrap();
    assert_eq!(
        e,
        [OrderEvent::RefundRequested {
            amount: cny(2000),
            reason: "buyer complaint".to_owned()
        }]
    );
    assert_eq!(
        o.complete_refund(later(7)).unwrap(),
        [OrderEvent::Refunded { amount: cny(2000) }]
    );
    assert_eq!(o.status(), OrderStatus::Refunded);
    assert!(o.lines().iter().all(|l| l.status == LineStatus::Refunded));
    assert_eq!(o.version(), 9);
}

#[test]
fn all_lines_failed_refunds_the_total() {
    let mut o = paid_fulfilling();
    o.fail_line(1, "supplier down".to_owned(), later(3))
        .unwrap();
    assert_eq!(
        o.finish_fulfilment(later(3)).unwrap_err().code(),
        "lines_pending"
    );
    o.fail_line(2, "supplier down".to_owned(), later(3))
        .unwrap();
    let e = o.finish_fulfilment(later(4)).unwrap();
    assert!(matches!(&e[..], [OrderEvent::RefundRequested { amount, .. }] if *amount == cny(2500)));
    assert_eq!(o.status(), OrderStatus::RefundPending);
    assert_eq!(
        o.complete_refund(later(5)).unwrap(),
        [OrderEvent::Refunded { amount: cny(2500) }]
    );
}

#[test]
fn line_command_errors() {
    let fresh = two_lines();
    let mut delivered = paid_fulfilling();
    delivered
        .deliver_line(1, vec![card(1), card(2)], 2, later(3))
        .unwrap();
    type Cmd = fn(&mut Order) -> Result<Vec<OrderEvent>>;
    let cases: Vec<(&Order, Cmd, &str)> = vec![
        (
            &fresh,
            |o| o.deliver_line(1, vec![card(1), card(2)], 2, t0()),
            "wrong_status",
        ),
        (
            &fresh,
            |o| o.fail_line(1, String::new(), t0()),
            "wrong_status",
        ),
        (&fresh, |o| o.refund_line(1, t0()), "wrong_status"),
        (&fresh, |o| o.finish_fulfilment(t0()), "illegal_transition"),
        (&fresh, |o| o.start_fulfilment(t0()), "illegal_transition"),
        (&fresh, |o| o.expire(later(14)), "not_yet_expired"),
        (&fresh, |o| o.complete_refund(t0()), "illegal_transition"),
        (
            &fresh,
            |o| o.request_refund(String::new(), t0()),
            "illegal_transition",
        ),
        (
            &delivered,
            |o| o.deliver_line(3, vec![], 1, t0()),
            "unknown_line",
        ),
        (
            &delivered,
            |o| o.deliver_line(0, vec![], 1, t0()),
            "unknown_line",
        ),
        (
            &delivered,
            |o| o.deliver_line(1, vec![card(3), card(4)], 2, t0()),
            "line_not_pending",
        ),
        (
            &delivered,
            |o| o.fail_line(1, String::new(), t0()),
            "line_not_pending",
        ),
        (
            &delivered,
            |o| o.deliver_line(2, vec![], 2, t0()),
            "quantity_mismatch",
        ),
        (
            &delivered,
            |o| o.deliver_line(2, vec![card(3), card(4)], 1, t0()),
            "card_count_mismatch",
        ),
        (
            &delivered,
            |o| o.deliver_line(2, vec![card(1)], 1, t0()),
            "duplicate_card",
        ),
        (
            &delivered,
            |o| o.cancel(String::new(), t0()),
            "illegal_transition",
        ),
        (&delivered, |o| o.expire(later(99)), "illegal_transition"),
        (&delivered, |o| o.finish_fulfilment(t0()), "lines_pending"),
    ];
    for (order, cmd, code) in cases {
        let mut o = order.clone();
        let err = cmd(&mut o).unwrap_err();
        assert_eq!(err.code(), code, "{err}");
        assert_eq!(&o, order, "{code}");
    }
    // A card-key line needs one card per unit; a link line may carry none.
    let mut o = paid_fulfilling();
    assert_eq!(
        o.deliver_line(1, vec![], 2, t0()).unwrap_err().code(),
        "card_count_mismatch"
    );
    assert_eq!(
        o.deliver_line(1, vec![card(1), card(1)], 2, t0())
            .unwrap_err()
            .code(),
        "duplicate_card"
    );
    o.deliver_line(2, vec![card(9)], 1, t0()).unwrap();
}

#[test]
fn expire_and_cancel() {
    let mut o = two_lines();
    assert_eq!(o.expire(later(15)).unwrap(), [OrderEvent::Expired]);
    assert_eq!(o.status(), OrderStatus::Expired);
    assert_eq!(o.version(), 2);
    let mut o = two_lines();
    let e = o.cancel("changed mind".to_owned(), later(1)).unwrap();
    assert_eq!(e[0].name(), "order.cancelled");
    assert_eq!(o.status(), OrderStatus::Cancelled);
    assert!(o.status().is_terminal());
}

#[test]
fn line_from_purchase_check() {
    use quanyi_goods::{Goods, GoodsDraft, GoodsKind, SkuDraft, StockSource};
    let sku = "sku_0190c8f0e0e07c4c8a1b2c3d4e5f6a7b".parse().unwrap();
    let draft = GoodsDraft {
        title: "VIP".to_owned(),
        kind: GoodsKind::CardKey,
        skus: vec![SkuDraft::new(sku, "month", cny(1500)).with_stock(StockSource::VaultPool)],
        categories: vec![],
    };
    let goods = Goods::new(goods_id(), TenantId::default(), draft, t0()).unwrap();
    let check = goods.check_purchase(sku, 3, None).unwrap();
    let (o, _) = place(vec![NewLine::from_check(goods.id(), &check)]).unwrap();
    assert_eq!(o.total(), check.amount);
    assert_eq!(o.lines()[0].kind, KindTag::CardKey);
}

#[test]
fn order_and_events_round_trip_through_json() {
    let mut o = paid_fulfilling();
    let mut events = vec![];
    events.extend(
        o.deliver_line(1, vec![card(1), card(2)], 2, later(3))
            .unwrap(),
    );
    events.extend(o.fail_line(2, "gone".to_owned(), later(3)).unwrap());
    events.extend(o.finish_fulfilment(later(4)).unwrap());
    let json = serde_json::to_string(&o).unwrap();
    assert_eq!(serde_json::from_str::<Order>(&json).unwrap(), o);
    for e in events {
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(
            v["type"].as_str().unwrap(),
            e.name().trim_start_matches("order.")
        );
        assert_eq!(serde_json::from_value::<OrderEvent>(v).unwrap(), e);
    }
}

#[test]
fn errors_are_send_sync_static() {
    fn check<E: std::error::Error + Send + Sync + 'static>() {}
    check::<Error>();
}

#[derive(Debug, Clone)]
enum Cmd {
    Pay { delta: i64, usd: bool },
    Start,
    Deliver { no: u16, cards: u8, quantity: u32 },
    Fail { no: u16 },
    Finish,
    RefundLine { no: u16 },
    Expire,
    Cancel,
    RequestRefund,
    CompleteRefund,
}

fn cmd() -> impl Strategy<Value = Cmd> {
    prop_oneof![
        8 => (prop_oneof![3 => Just(0_i64), 1 => -1..=1_i64], any::<bool>())
            .prop_map(|(delta, usd)| Cmd::Pay { delta, usd: usd && delta == 1 }),
        6 => Just(Cmd::Start),
        // `cards == 9` and `quantity == 0` mean "as many as the line needs".
        10 => (0..5_u16, prop_oneof![3 => Just(9_u8), 1 => 0..4_u8], prop_oneof![3 => Just(0_u32), 1 => 1..4_u32])
            .prop_map(|(no, cards, quantity)| Cmd::Deliver { no, cards, quantity }),
        4 => (0..5_u16).prop_map(|no| Cmd::Fail { no }),
        6 => Just(Cmd::Finish),
        2 => (0..5_u16).prop_map(|no| Cmd::RefundLine { no }),
        1 => Just(Cmd::Expire),
        1 => Just(Cmd::Cancel),
        1 => Just(Cmd::RequestRefund),
        2 => Just(Cmd::CompleteRefund),
    ]
}

fn new_line() -> impl Strategy<Value = NewLine> {
    (
        prop_oneof![9 => 1..4_u32, 1 => Just(0_u32)],
        prop_oneof![2 => Just(0_i64), 16 => 1..100_000_i64, 1 => Just(i64::MAX / 3), 1 => Just(-1)],
        prop_oneof![9 => Just(Currency::CNY), 1 => Just(Currency::USD)],
        any::<bool>(),
    )
        .prop_map(|(quantity, minor, currency, cards)| {
            let kind = if cards {
                KindTag::CardKey
            } else {
                KindTag::Membership
            };
            let mut l = line(kind, quantity, Money::from_minor(minor, currency));
            l.quantity = quantity;
            l
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn commands_never_panic_and_conserve_money(
        lines in prop::collection::vec(new_line(), 0..5),
        cmds in prop::collection::vec((cmd(), 0..20_i64), 0..40),
    ) {
        let Ok((mut o, _)) = place(lines) else { return Ok(()); };
        let mut next_card = 0_u128;
        let mut refunded = Money::zero(o.currency());
        for (c, minutes) in cmds {
            let now = later(minutes);
            let before = o.clone();
            let result = match c {
                Cmd::Pay { delta, usd } => {
                    let mut amount = Money::from_minor(o.total().minor().saturating_add(delta), o.currency());
                    if usd { amount = Money::from_minor(amount.minor(), Currency::USD); }
                    o.confirm_payment(payment(amount), now)
                }
                Cmd::Start => o.start_fulfilment(now),
                Cmd::Deliver { no, cards, quantity } => {
                    let quantity = o.line(no).map_or(quantity, |l| if quantity == 0 { l.quantity } else { quantity });
                    let cards = if cards == 9 { o.line(no).map_or(1, |l| l.quantity) } else { u32::from(cards) };
                    let cards = (0..cards).map(|_| { next_card += 1; card(next_card) }).collect();
                    o.deliver_line(no, cards, quantity, now)
                }
                Cmd::Fail { no } => o.fail_line(no, "failed".to_owned(), now),
                Cmd::Finish => o.finish_fulfilment(now),
                Cmd::RefundLine { no } => o.refund_line(no, now),
                Cmd::Expire => o.expire(now),
                Cmd::Cancel => o.cancel("c".to_owned(), now),
                Cmd::RequestRefund => o.request_refund("r".to_owned(), now),
                Cmd::CompleteRefund => o.complete_refund(now),
            };
            match result {
                Ok(events) => {
                    prop_assert_eq!(o.version(), before.version() + 1);
                    prop_assert!(!events.is_empty());
                    for e in events {
                        match e {
                            OrderEvent::Refunded { amount } | OrderEvent::LineRefunded { amount, .. } => {
                                refunded = refunded.checked_add(amount).unwrap();
                            }
                            _ => {}
                        }
                    }
                }
                Err(_) => prop_assert_eq!(&o, &before),
            }
            let sum = Money::sum(o.lines().iter().map(|l| l.amount), o.currency()).unwrap();
            prop_assert_eq!(sum, o.total());
            prop_assert!(refunded.minor() <= o.total().minor());
            if o.status() == OrderStatus::Refunded {
                prop_assert_eq!(refunded, o.total());
            }
        }
    }
}

#[test]
fn repeated_cards_are_refused_in_small_and_large_deliveries() {
    let big = || {
        let mut o = place(vec![line(KindTag::CardKey, 40, cny(100))]).unwrap().0;
        o.confirm_payment(payment(cny(4000)), later(1)).unwrap();
        o.start_fulfilment(later(2)).unwrap();
        o
    };
    let mut cards: Vec<CardId> = (1..=40).map(card).collect();
    cards[39] = card(7);
    let err = big().deliver_line(1, cards, 40, later(3)).unwrap_err();
    assert!(matches!(err, Error::DuplicateCard { card: c } if c == card(7)));
    let mut ok = big();
    ok.deliver_line(1, (1..=40).map(card).collect(), 40, later(3))
        .unwrap();
    assert_eq!(ok.lines()[0].cards.len(), 40);

    let mut small = paid_fulfilling();
    let err = small
        .deliver_line(1, vec![card(5), card(5)], 2, later(3))
        .unwrap_err();
    assert!(matches!(err, Error::DuplicateCard { card: c } if c == card(5)));
}

#[test]
fn a_copy_of_an_order_does_not_change_with_the_original() {
    let mut o = paid_fulfilling();
    let copy = o.clone();
    o.deliver_line(1, vec![card(1), card(2)], 2, later(3))
        .unwrap();
    assert_eq!(copy.lines()[0].status, LineStatus::Pending);
    assert!(copy.lines()[0].cards.is_empty());
    assert_eq!(o.lines()[0].status, LineStatus::Delivered);
    assert_eq!(copy.payment(), o.payment());
}

#[test]
fn events_without_fields_share_one_body_that_equals_their_own_json() {
    for event in [
        OrderEvent::FulfilmentStarted,
        OrderEvent::Delivered,
        OrderEvent::Expired,
    ] {
        let shared = event.shared_payload().unwrap();
        assert_eq!(
            shared.json().unwrap(),
            serde_json::to_string(&event).unwrap()
        );
        assert_eq!(shared.parse::<OrderEvent>().unwrap(), event);
        assert_eq!(event.shared_payload().unwrap(), shared);
    }
    let refunded = OrderEvent::Refunded {
        amount: Money::parse("1.00", Currency::CNY).unwrap(),
    };
    assert!(refunded.shared_payload().is_none());
}

#[test]
fn orders_never_paid_never_count_and_refunded_ones_count_unless_the_limit_releases_them() {
    for status in OrderStatus::ALL {
        let never_paid = matches!(status, OrderStatus::Expired | OrderStatus::Cancelled);
        let refunded = status == OrderStatus::Refunded;
        assert_eq!(status.counts_toward_limit(false), !never_paid, "{status:?}");
        assert_eq!(
            status.counts_toward_limit(true),
            !never_paid && !refunded,
            "{status:?}"
        );
    }
    let names = |release| OrderStatus::uncounted(release).map(OrderStatus::as_str);
    assert_eq!(names(false), ["expired", "cancelled", "cancelled"]);
    assert_eq!(names(true), ["expired", "cancelled", "refunded"]);
}

/// Two components of a pack bought twice in one purchase (place 1), and once more on its own
/// (place 2).
fn pack_lines() -> (Vec<NewLine>, SkuId) {
    let pack: SkuId = "sku_0000000000000000000000000000aaaa".parse().unwrap();
    let terms = |place, packs, per_pack, price| PackTerms {
        sku: pack,
        goods: goods_id(),
        place,
        packs,
        per_pack,
        price: cny(price),
    };
    let component = |kind, quantity, share, pack| NewLine {
        // One SKU per kind, whatever the quantity.
        sku: line(kind, if kind == KindTag::CardKey { 7 } else { 8 }, cny(1)).sku,
        allocated: Some(cny(share)),
        pack: Some(pack),
        ..line(kind, quantity, cny(100))
    };
    (
        vec![
            component(KindTag::Membership, 2, 300, terms(1, 2, 1, 500)),
            component(KindTag::CardKey, 4, 200, terms(1, 2, 2, 500)),
            component(KindTag::Membership, 1, 150, terms(2, 1, 1, 250)),
            component(KindTag::CardKey, 2, 100, terms(2, 1, 2, 250)),
        ],
        pack,
    )
}

#[test]
fn a_pack_counts_its_packs_toward_its_own_limit() {
    let (lines, pack) = pack_lines();
    let membership = lines[0].sku;
    let (order, _) = place(lines).unwrap();
    assert_eq!(order.quantity_of(pack), 3);
    assert_eq!(order.quantity_of(membership), 3);
    assert_eq!(
        order.limit_units().collect::<Vec<_>>(),
        [
            (membership, 2),
            (pack, 2),
            (order.lines()[1].sku, 4),
            (membership, 1),
            (pack, 1),
            (order.lines()[3].sku, 2),
        ]
    );
    assert_eq!(order.total(), cny(750));
}

#[test]
fn packs_whose_lines_disagree_are_refused() {
    let check = |edit: &dyn Fn(&mut Vec<NewLine>)| {
        let (mut lines, _) = pack_lines();
        edit(&mut lines);
        let placed = place(lines);
        assert!(
            matches!(placed, Err(Error::InvalidLine { .. })),
            "an inconsistent pack is refused: {placed:?}"
        );
    };
    // Packs times units per pack is not the quantity.
    check(&|l| l[0].quantity = 3);
    // A share that does not sum to the pack's price.
    check(&|l| l[1].allocated = Some(cny(201)));
    // A pack's lines apart.
    check(&|l| l.swap(1, 2));
    // Lines of one place that name another count of packs.
    check(&|l| {
        if let Some(p) = l[1].pack.as_mut() {
            p.packs = 4;
            p.per_pack = 1;
        }
    });
    // Membership terms on a line of another kind, and none on a membership line.
    check(&|l| l[1].terms.membership = l[0].terms.membership.clone());
    check(&|l| l[0].terms.membership = None);
}

#[test]
fn the_quantity_of_a_sku_sums_its_lines() {
    let a = line(KindTag::CardKey, 2, cny(100));
    let b = line(KindTag::CardKey, 3, cny(100));
    let again = NewLine {
        quantity: 4,
        ..a.clone()
    };
    let (order, _) = place(vec![a.clone(), b.clone(), again]).unwrap();
    assert_eq!(order.quantity_of(a.sku), 6);
    assert_eq!(order.quantity_of(b.sku), 3);
    assert_eq!(order.quantity_of(line(KindTag::CardKey, 9, cny(1)).sku), 0);
}

#[test]
fn completing_terms_leaves_complete_orders_and_refuses_what_is_not_an_order() {
    let (order, _) = place(vec![line(KindTag::CardKey, 1, cny(100))]).unwrap();
    let doc = serde_json::to_string(&order).unwrap();
    let mut never = |_| panic!("complete lines need no goods");
    assert_eq!(complete_terms(&doc, &mut never), Ok(None));
    for bad in ["", "[]", "{\"lines\": 3}", "{\"lines\": [{\"sku\": 1}]}"] {
        assert!(complete_terms(bad, &mut never).is_err(), "{bad}");
    }
    // A line without terms whose goods are gone is reported, naming the SKU only.
    let mut value: serde_json::Value = serde_json::from_str(&doc).unwrap();
    value["lines"][0].as_object_mut().unwrap().remove("terms");
    let mut none = |_| None;
    let err = complete_terms(&value.to_string(), &mut none).unwrap_err();
    assert!(err.contains(&order.lines()[0].sku.to_string()), "{err}");
    assert!(!err.contains("VIP month"), "{err}");
}

#[test]
fn a_held_line_keeps_the_order_fulfilling_until_an_operator_decides() {
    let mut o = paid_fulfilling();
    o.deliver_line(1, vec![card(1), card(2)], 2, later(3))
        .unwrap();
    let e = o.hold_line(2, "supplier_overdue".into(), later(3)).unwrap();
    assert!(matches!(&e[..], [OrderEvent::LineHeld { line: 2, .. }]));
    assert_eq!(o.line(2).unwrap().status, LineStatus::Held);
    assert_eq!(
        o.finish_fulfilment(later(4)).unwrap_err().code(),
        "lines_pending"
    );
    assert_eq!(
        o.hold_line(2, "again".into(), later(4)).unwrap_err().code(),
        "line_not_pending"
    );
    assert_eq!(
        o.resolve_held_line(1, false, "x".into(), later(4))
            .unwrap_err()
            .code(),
        "line_not_held"
    );
    let before = o.clone();
    // A line that hands over codes (here a link) cannot be declared delivered without them.
    assert_eq!(
        o.resolve_held_line(2, true, String::new(), later(4))
            .unwrap_err()
            .code(),
        "card_count_mismatch"
    );
    assert_eq!(o, before, "a refused decision changes nothing");
    let e = o
        .resolve_held_line(2, false, "supplier confirmed failure".into(), later(5))
        .unwrap();
    assert!(matches!(&e[..], [OrderEvent::LineFailed { line: 2, .. }]));
    o.finish_fulfilment(later(6)).unwrap();
    assert_eq!(o.status(), OrderStatus::PartiallyDelivered);
}

fn delivered() -> Order {
    let mut o = paid_fulfilling();
    o.deliver_line(1, vec![card(1), card(2)], 2, later(3))
        .unwrap();
    o.deliver_line(2, vec![card(3)], 1, later(3)).unwrap();
    o.finish_fulfilment(later(4)).unwrap();
    o
}

fn buyer_asks(lines: Vec<(u16, Option<Money>)>) -> RefundAsk {
    RefundAsk {
        lines,
        reason: "changed my mind".into(),
        asked_by: Asker::Buyer,
        override_rules: false,
        due: later(60),
    }
}

fn support() -> quanyi_core::Actor {
    quanyi_core::Actor::new("lin", "support").unwrap()
}

fn operator_asks(lines: Vec<(u16, Option<Money>)>, override_rules: bool) -> RefundAsk {
    RefundAsk {
        asked_by: Asker::Operator { actor: support() },
        override_rules,
        ..buyer_asks(lines)
    }
}

#[test]
fn unrevealed_lines_are_voided_and_refunded_line_by_line() {
    let mut o = delivered();
    let v = o.version();
    let (no, events) = o
        .ask_refund(buyer_asks(vec![(2, None)]), |_| false, later(5))
        .unwrap();
    assert_eq!(no, 1);
    assert_eq!(o.version(), v + 1);
    let refund = o.refund(1).unwrap();
    assert_eq!(refund.status, RefundStatus::Approved);
    assert_eq!(refund.amount, cny(500));
    assert_eq!(refund.voided, vec![card(3)]);
    assert_eq!(refund.refund_id(o.id()), format!("{}-R1", o.id()));
    assert_eq!(o.refund_due(), Some(later(5)));
    assert!(matches!(
        &events[..],
        [
            OrderEvent::RefundOpened {
                refund: 1,
                needs_decision: false,
                ..
            },
            OrderEvent::RefundApproved {
                refund: 1,
                overridden: false,
                ..
            },
            OrderEvent::CardsVoided {
                refund: 1,
                line: 2,
                ..
            },
        ]
    ));
    // The open refund holds its line; the other line is still free.
    let before = o.clone();
    let held = o.ask_refund(buyer_asks(vec![(2, None)]), |_| false, later(6));
    assert_eq!(held.unwrap_err(), Error::RefundOpen { line: 2, refund: 1 });
    assert_eq!(o, before);
    let events = o.refund_paid(1, "re-1".into(), later(7)).unwrap();
    assert!(matches!(
        &events[..],
        [
            OrderEvent::RefundPaid { refund: 1, .. },
            OrderEvent::LineRefunded { line: 2, .. },
        ]
    ));
    assert_eq!(o.status(), OrderStatus::Delivered);
    assert_eq!(o.line_refunded(2).unwrap(), cny(500));
    assert_eq!(o.refund_due(), None);
    // The last line refunded ends the order.
    o.ask_refund(buyer_asks(vec![]), |_| false, later(8))
        .unwrap_err();
    o.ask_refund(buyer_asks(vec![(1, None)]), |_| false, later(8))
        .unwrap();
    let events = o.refund_paid(2, "re-2".into(), later(9)).unwrap();
    assert!(matches!(events.last(), Some(OrderEvent::Refunded { amount }) if *amount == cny(2500)));
    assert_eq!(o.status(), OrderStatus::Refunded);
    assert_eq!(o.refunded_amount().unwrap(), cny(2500));
}

#[test]
fn revealed_lines_wait_for_an_operator() {
    let mut o = delivered();
    o.ask_refund(buyer_asks(vec![(1, None)]), |l| l == 1, later(5))
        .unwrap();
    let refund = o.refund(1).unwrap().clone();
    assert_eq!(refund.status, RefundStatus::Requested);
    assert_eq!(refund.due, Some(later(60)));
    assert!(refund.voided.is_empty());
    assert_eq!(o.refund_due(), Some(later(60)));
    // Decisions need a requested refund and a reason.
    assert_eq!(
        o.approve_refund(1, &support(), " ".into(), |_| true, later(6))
            .unwrap_err()
            .code(),
        "invalid_refund"
    );
    assert_eq!(
        o.reject_refund(2, &support(), "no".into(), later(6))
            .unwrap_err()
            .code(),
        "unknown_refund"
    );
    let events = o
        .approve_refund(1, &support(), "checked".into(), |_| true, later(6))
        .unwrap();
    assert!(matches!(
        &events[..],
        [OrderEvent::RefundApproved {
            overridden: true,
            ..
        }]
    ));
    assert_eq!(o.refund(1).unwrap().due, None);
    assert_eq!(o.refund_due(), Some(later(6)));
    assert_eq!(
        o.approve_refund(1, &support(), "again".into(), |_| true, later(7))
            .unwrap_err()
            .code(),
        "refund_status"
    );
    // A rejected request frees its lines.
    let mut r = delivered();
    r.ask_refund(buyer_asks(vec![(1, None)]), |_| true, later(5))
        .unwrap();
    r.reject_refund(1, &support(), "used".into(), later(6))
        .unwrap();
    assert_eq!(r.refund_due(), None);
    r.ask_refund(buyer_asks(vec![(1, None)]), |_| true, later(7))
        .unwrap();
    assert_eq!(r.refunds().len(), 2);
}

#[test]
fn refunds_never_exceed_a_lines_share() {
    let mut o = delivered();
    let before = o.clone();
    let refuse =
        |o: &mut Order, ask: RefundAsk| o.ask_refund(ask, |_| false, later(5)).unwrap_err().code();
    assert_eq!(
        refuse(&mut o, operator_asks(vec![(1, Some(cny(2001)))], true)),
        "refund_amount"
    );
    assert_eq!(
        refuse(&mut o, operator_asks(vec![(1, Some(cny(0)))], true)),
        "refund_amount"
    );
    assert_eq!(
        refuse(&mut o, operator_asks(vec![(1, Some(cny(-1)))], true)),
        "refund_amount"
    );
    assert_eq!(
        refuse(&mut o, operator_asks(vec![(1, Some(cny(500)))], false)),
        "refund_needs_override"
    );
    assert_eq!(
        refuse(&mut o, buyer_asks(vec![(1, None), (1, None)])),
        "invalid_refund"
    );
    assert_eq!(refuse(&mut o, buyer_asks(vec![(3, None)])), "unknown_line");
    assert_eq!(
        refuse(
            &mut o,
            RefundAsk {
                override_rules: true,
                ..buyer_asks(vec![(1, None)])
            }
        ),
        "invalid_refund"
    );
    let usd = Money::from_minor(100, quanyi_core::Currency::USD);
    assert_eq!(
        refuse(&mut o, operator_asks(vec![(1, Some(usd))], true)),
        "currency_mismatch"
    );
    assert_eq!(
        refuse(
            &mut o,
            RefundAsk {
                reason: "\u{7}".into(),
                ..buyer_asks(vec![(1, None)])
            }
        ),
        "invalid_refund"
    );
    assert_eq!(o, before);
    // Part, then the rest: the rest is an override too (the line's codes are not voided).
    o.ask_refund(
        operator_asks(vec![(1, Some(cny(500)))], true),
        |_| false,
        later(5),
    )
    .unwrap();
    assert!(o.refund(1).unwrap().voided.is_empty());
    o.refund_paid(1, "re-1".into(), later(6)).unwrap();
    assert_eq!(o.line(1).unwrap().status, LineStatus::Delivered);
    assert_eq!(
        refuse(&mut o, operator_asks(vec![(1, Some(cny(1501)))], true)),
        "refund_amount"
    );
    // The buyer asks for the rest: no longer the whole share, so an operator decides.
    let (no, _) = o
        .ask_refund(buyer_asks(vec![(1, None)]), |_| false, later(7))
        .unwrap();
    let rest = o.refund(no).unwrap();
    assert_eq!(
        (rest.status, rest.amount),
        (RefundStatus::Requested, cny(1500))
    );
}

#[test]
fn a_failed_line_paid_back_last_ends_a_refunded_order() {
    let mut o = paid_fulfilling();
    o.deliver_line(1, vec![card(1), card(2)], 2, later(3))
        .unwrap();
    o.fail_line(2, "supplier refused".into(), later(3)).unwrap();
    o.finish_fulfilment(later(4)).unwrap();
    assert_eq!(
        o.ask_refund(buyer_asks(vec![(2, None)]), |_| false, later(5))
            .unwrap_err()
            .code(),
        "not_refundable"
    );
    o.ask_refund(buyer_asks(vec![(1, None)]), |_| false, later(5))
        .unwrap();
    o.refund_paid(1, "re-1".into(), later(6)).unwrap();
    assert_eq!(o.status(), OrderStatus::PartiallyDelivered);
    let events = o.refund_line(2, later(7)).unwrap();
    assert!(matches!(
        &events[..],
        [OrderEvent::LineRefunded { line: 2, .. }, OrderEvent::Refunded { amount }] if *amount == cny(2500)
    ));
    assert_eq!(o.status(), OrderStatus::Refunded);
}
