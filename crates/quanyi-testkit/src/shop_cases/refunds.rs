//! Shop cases of after-sales refunds: the rules by line, the queue and its decisions, a reveal
//! racing a refund, and identical requests racing each other.

use std::sync::Arc;

use quanyi::{
    AccountRule, BundleComponent, CartLine, GoodsDraft, GoodsKind, MemberId, Order, OrderStatus,
    RefundPart, RefundStatus, Shop, SkuDraft, SkuId, StockSource, Store, SupplierRoute,
};
use quanyi_supplier::{ProductCode, SupplierId};

use super::{Refunds, Rig, card_sku, cny, import, member, notice};
use crate::fixtures::{self, t0};
use crate::supplier_sim::{ALWAYS, Faults, SimSupplier, TopUpMode};

/// What a case buys.
#[derive(Debug, Clone, Copy)]
pub(super) enum Buy {
    /// One card key (19.90).
    Card,
    /// A benefit pack (9.90): a music membership and a card key, each for its share.
    Pack,
    /// A mobile top-up (50.00) the supplier completes at once.
    TopUp,
    /// A card key and a top-up whose supplier refuses it: the top-up line fails.
    CardAndFailingTopUp,
}

/// What a step should answer.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Paid back, for this amount (`None`: the named lines' amounts).
    Paid(Option<&'static str>),
    /// Waiting for an operator.
    Requested,
    /// Rejected by the operator.
    Rejected,
    /// Refused with this error code; nothing changes.
    Refused(&'static str),
}

/// One step of a case.
#[derive(Debug, Clone)]
enum Step {
    /// The buyer reveals the order's keys.
    Reveal,
    /// The buyer asks for these lines (empty: every line left).
    Ask(&'static [u16], Expect),
    /// An operator refunds, overriding the rules or not.
    Operator(Vec<RefundPart>, bool, Expect),
    /// An operator approves the refund with this number.
    Approve(u16, Expect),
    /// An operator rejects the refund with this number.
    Reject(u16, Expect),
}

/// A case and the order's end: status, what the gateway paid back for it in all (refunds of
/// failed lines included), and how many of its cards were voided.
struct Case {
    name: &'static str,
    buy: Buy,
    steps: Vec<Step>,
    status: OrderStatus,
    refunded: &'static str,
    voided: usize,
}

/// The goods every case buys from.
pub(super) struct Goods {
    pub(super) card: SkuId,
    pack: SkuId,
    top_up: SkuId,
    failing: SkuId,
}

pub(super) async fn shop_with_goods(rig: &Rig, refunds: Arc<Refunds>) -> (Shop, Goods) {
    let product = ProductCode::new("MOBILE-50").unwrap();
    let good = SupplierId::new("refund-sim").unwrap();
    let bad = SupplierId::new("refusing-sim").unwrap();
    let top_ups = Arc::new(SimSupplier::new(good.clone(), 7).with_top_up_product(
        product.clone(),
        cny("48.00"),
        TopUpMode::Immediate,
    ));
    let refusing = Arc::new(
        SimSupplier::new(bad.clone(), 8)
            .with_top_up_product(product.clone(), cny("48.00"), TopUpMode::Immediate)
            .with_faults(Faults {
                definite_error: ALWAYS,
                ..Faults::NONE
            }),
    );
    let shop = rig
        .builder(rig.store.clone())
        .supplier(top_ups)
        .supplier(refusing)
        .payment_gateway(refunds)
        .build()
        .unwrap();
    let card = card_sku(&shop).await;
    let codes: Vec<String> = (0..40).map(|i| format!("REFUND-CASE-{i:04}")).collect();
    let codes: Vec<&str> = codes.iter().map(String::as_str).collect();
    import(&shop, card, &codes).await;
    let catalog = quanyi::Actor::new("merchant", "catalog").unwrap();
    let music = fixtures::id(SkuId::generate);
    shop.create_goods(
        &catalog,
        GoodsDraft {
            title: "Music membership".into(),
            kind: GoodsKind::Membership {
                plan: "music".into(),
                days: 30,
            },
            skus: vec![SkuDraft::new(music, "30 days", cny("15.00"))],
            categories: vec![],
        },
    )
    .await
    .unwrap();
    let pack = fixtures::id(SkuId::generate);
    shop.create_goods(
        &catalog,
        GoodsDraft {
            title: "Music and video pack".into(),
            kind: GoodsKind::BenefitPack {
                components: vec![
                    BundleComponent {
                        sku: music,
                        quantity: 1,
                    },
                    BundleComponent {
                        sku: card,
                        quantity: 1,
                    },
                ],
            },
            skus: vec![SkuDraft::new(pack, "pack", cny("9.90"))],
            categories: vec![],
        },
    )
    .await
    .unwrap();
    let mut top_up_skus = Vec::new();
    for supplier in [good, bad] {
        let sku = fixtures::id(SkuId::generate);
        shop.create_goods(
            &catalog,
            GoodsDraft {
                title: "China Mobile credit 50".into(),
                kind: GoodsKind::DirectTopUp {
                    account: AccountRule::MainlandMobile,
                },
                skus: vec![
                    SkuDraft::new(sku, "50 yuan", cny("50.00"))
                        .with_stock(StockSource::Supplier)
                        .with_routes(vec![SupplierRoute::new(
                            supplier,
                            product.clone(),
                            cny("48.00"),
                        )]),
                ],
                categories: vec![],
            },
        )
        .await
        .unwrap();
        top_up_skus.push(sku);
    }
    let goods = Goods {
        card,
        pack,
        top_up: top_up_skus[0],
        failing: top_up_skus[1],
    };
    (shop, goods)
}

/// Places and pays what `buy` names for `buyer`; answers the order after delivery (and after
/// its failed lines were paid back).
pub(super) async fn bought(shop: &Shop, goods: &Goods, buyer: &MemberId, buy: Buy) -> Order {
    let top_up = |sku| CartLine::new(sku, 1).with_account("13800138000");
    let cart = match buy {
        Buy::Card => vec![CartLine::new(goods.card, 1)],
        Buy::Pack => vec![CartLine::new(goods.pack, 1)],
        Buy::TopUp => vec![top_up(goods.top_up)],
        Buy::CardAndFailingTopUp => vec![CartLine::new(goods.card, 1), top_up(goods.failing)],
    };
    let order = shop.place_order(buyer, &cart).await.unwrap();
    shop.confirm_payment(notice(&order, &format!("txn-{}", order.id())))
        .await
        .unwrap();
    shop.settle(order.id()).await.unwrap()
}

pub(super) fn operator() -> quanyi::Actor {
    quanyi::Actor::new("lin", "support").unwrap()
}

/// What the gateway paid back for `order`, in all.
pub(super) fn paid_back(refunds: &Refunds, order: &Order) -> i64 {
    refunds
        .0
        .lock()
        .iter()
        .filter(|r| r.order == order.id())
        .map(|r| r.amount.minor())
        .sum()
}

/// Runs one case's steps on a fresh order and checks each answer and the order's end.
async fn check(store: &dyn Store, shop: &Shop, goods: &Goods, refunds: &Refunds, case: Case) {
    let name = case.name;
    let buyer = member(&format!("buyer-{}", name.replace(' ', "-")));
    let order = bought(shop, goods, &buyer, case.buy).await;
    for (i, step) in case.steps.iter().enumerate() {
        let before = shop.order(order.id()).await.unwrap();
        let (answer, lines) = match step {
            Step::Reveal => {
                let revealed = shop.reveal(&buyer, order.id()).await.unwrap();
                assert!(
                    !revealed.cards.is_empty(),
                    "{name}: step {i} revealed nothing"
                );
                continue;
            }
            Step::Ask(lines, _) => (
                shop.orders()
                    .request_refund(&buyer, order.id(), lines, "not what I wanted")
                    .await,
                lines.to_vec(),
            ),
            Step::Operator(parts, override_rules, _) => (
                shop.orders()
                    .refund(
                        &operator(),
                        order.id(),
                        parts,
                        "goodwill after a complaint",
                        *override_rules,
                    )
                    .await,
                parts.iter().map(|p| p.line).collect(),
            ),
            Step::Approve(no, _) => (
                shop.orders()
                    .approve_refund(&operator(), order.id(), *no, "checked with the buyer")
                    .await,
                Vec::new(),
            ),
            Step::Reject(no, _) => (
                shop.orders()
                    .reject_refund(&operator(), order.id(), *no, "the key was used")
                    .await,
                Vec::new(),
            ),
        };
        let expect = match step {
            Step::Reveal => unreachable!("handled above"),
            Step::Ask(_, e)
            | Step::Operator(_, _, e)
            | Step::Approve(_, e)
            | Step::Reject(_, e) => *e,
        };
        match (expect, answer) {
            (Expect::Paid(amount), Ok(refund)) => {
                assert_eq!(refund.status, RefundStatus::Paid, "{name}: step {i}");
                let want = match amount {
                    Some(text) => cny(text),
                    None => {
                        let sum: i64 = lines
                            .iter()
                            .map(|no| before.line(*no).unwrap().amount.minor())
                            .sum();
                        quanyi::Money::from_minor(sum, before.currency())
                    }
                };
                assert_eq!(refund.amount, want, "{name}: step {i}");
                assert_eq!(
                    refund.receipt.as_deref(),
                    Some(refund.refund_id(order.id()).as_str())
                );
            }
            (Expect::Requested, Ok(refund)) => {
                assert_eq!(refund.status, RefundStatus::Requested, "{name}: step {i}");
                assert!(refund.due.is_some(), "{name}: step {i}");
            }
            (Expect::Rejected, Ok(refund)) => {
                assert_eq!(refund.status, RefundStatus::Rejected, "{name}: step {i}");
            }
            (Expect::Refused(code), Err(e)) => {
                assert_eq!(e.code(), code, "{name}: step {i}: {e}");
                let after = shop.order(order.id()).await.unwrap();
                assert_eq!(after, before, "{name}: step {i} changed the order");
            }
            (expect, answer) => panic!("{name}: step {i}: expected {expect:?}, got {answer:?}"),
        }
    }
    let end = shop.order(order.id()).await.unwrap();
    assert_eq!(end.status(), case.status, "{name}");
    assert_eq!(
        paid_back(refunds, &end),
        cny(case.refunded).minor(),
        "{name}"
    );
    let paid_refunds: i64 = end
        .refunds()
        .iter()
        .filter(|r| r.status == RefundStatus::Paid)
        .map(|r| r.amount.minor())
        .sum();
    assert!(
        paid_refunds <= end.total().minor(),
        "{name}: more than paid"
    );
    let cards = store.order_cards(end.tenant(), end.id()).await.unwrap();
    let voided = cards.iter().filter(|c| c.voided_at.is_some()).count();
    assert_eq!(voided, case.voided, "{name}");
    assert!(
        cards
            .iter()
            .all(|c| c.voided_at.is_none() || c.revealed_at.is_none()),
        "{name}: a card both revealed and voided"
    );
}

/// The refund rules, one case per row through one helper: an undelivered line (paid back when
/// delivery gives up, so not asked for), a pack's component for its share, an unrevealed key
/// voided and refunded at once (and not back in stock), a revealed key refused without an
/// override and refunded with one, a buyer's request that waits and is approved or rejected, a
/// completed top-up, part of a line then the rest, and a refund larger than what is left.
pub async fn refunds_follow_each_lines_rule(store: Arc<dyn Store>) {
    let rig = Rig::new(store);
    let refunds = Arc::new(Refunds::default());
    let (shop, goods) = shop_with_goods(&rig, refunds.clone()).await;
    let stock_before = shop.stock().count(goods.card).await.unwrap();
    let cases = vec![
        Case {
            name: "undelivered line",
            buy: Buy::CardAndFailingTopUp,
            steps: vec![
                Step::Ask(&[2], Expect::Refused("not_refundable")),
                Step::Ask(&[1], Expect::Paid(None)),
            ],
            status: OrderStatus::Refunded,
            refunded: "69.90",
            voided: 1,
        },
        Case {
            name: "pack component by share",
            buy: Buy::Pack,
            steps: vec![
                Step::Ask(&[2], Expect::Paid(None)),
                Step::Ask(&[2], Expect::Paid(None)),
            ],
            status: OrderStatus::Delivered,
            refunded: "5.64",
            voided: 1,
        },
        Case {
            name: "unrevealed key voided",
            buy: Buy::Card,
            steps: vec![
                Step::Ask(&[], Expect::Paid(Some("19.90"))),
                Step::Ask(&[], Expect::Paid(Some("19.90"))),
            ],
            status: OrderStatus::Refunded,
            refunded: "19.90",
            voided: 1,
        },
        Case {
            name: "revealed key refused then refunded on override",
            buy: Buy::Card,
            steps: vec![
                Step::Reveal,
                Step::Operator(
                    vec![RefundPart::whole(1)],
                    false,
                    Expect::Refused("refund_needs_override"),
                ),
                Step::Operator(vec![RefundPart::whole(1)], true, Expect::Paid(None)),
            ],
            status: OrderStatus::Refunded,
            refunded: "19.90",
            voided: 0,
        },
        Case {
            name: "revealed key asked by the buyer waits for approval",
            buy: Buy::Card,
            steps: vec![
                Step::Reveal,
                Step::Ask(&[1], Expect::Requested),
                Step::Ask(&[1], Expect::Requested),
                Step::Reject(2, Expect::Refused("unknown_refund")),
                Step::Approve(1, Expect::Paid(Some("19.90"))),
                Step::Approve(1, Expect::Refused("refund_status")),
            ],
            status: OrderStatus::Refunded,
            refunded: "19.90",
            voided: 0,
        },
        Case {
            name: "completed top-up asked and rejected",
            buy: Buy::TopUp,
            steps: vec![
                Step::Ask(&[1], Expect::Requested),
                Step::Reject(1, Expect::Rejected),
                Step::Operator(
                    vec![RefundPart::whole(1)],
                    false,
                    Expect::Refused("refund_needs_override"),
                ),
            ],
            status: OrderStatus::Delivered,
            refunded: "0.00",
            voided: 0,
        },
        Case {
            name: "partial then full",
            buy: Buy::Card,
            steps: vec![
                Step::Operator(
                    vec![RefundPart::partial(1, cny("5.00"))],
                    true,
                    Expect::Paid(Some("5.00")),
                ),
                Step::Operator(
                    vec![RefundPart::whole(1)],
                    true,
                    Expect::Paid(Some("14.90")),
                ),
            ],
            status: OrderStatus::Refunded,
            refunded: "19.90",
            voided: 0,
        },
        Case {
            name: "a refund larger than what is left",
            buy: Buy::Card,
            steps: vec![
                Step::Operator(
                    vec![RefundPart::partial(1, cny("5.00"))],
                    true,
                    Expect::Paid(Some("5.00")),
                ),
                Step::Operator(
                    vec![RefundPart::partial(1, cny("15.00"))],
                    true,
                    Expect::Refused("refund_amount"),
                ),
                Step::Operator(
                    vec![RefundPart::partial(1, cny("0.00"))],
                    true,
                    Expect::Refused("refund_amount"),
                ),
                Step::Ask(&[1, 1], Expect::Refused("invalid_refund")),
                Step::Ask(&[9], Expect::Refused("unknown_line")),
            ],
            status: OrderStatus::Delivered,
            refunded: "5.00",
            voided: 0,
        },
    ];
    let sold = cases
        .iter()
        .filter(|c| !matches!(c.buy, Buy::TopUp))
        .count() as u64;
    for case in cases {
        check(rig.store.as_ref(), &shop, &goods, &refunds, case).await;
    }
    // Voided keys do not go back to stock: every card sold stays out of it.
    let stock_after = shop.stock().count(goods.card).await.unwrap();
    assert_eq!(stock_after.available, stock_before.available - sold);
    // The period's report lists every refund the gateway paid (after-sales ones and the
    // pay-back of the failed line), once, with their sum.
    let report = shop
        .orders()
        .refund_report(&operator(), t0(), t0() + chrono::Duration::days(1))
        .await
        .unwrap();
    let gateway: Vec<(String, i64)> = refunds
        .0
        .lock()
        .iter()
        .map(|r| (r.refund_id.clone(), r.amount.minor()))
        .collect();
    let mut listed: Vec<(String, i64)> = report
        .refunds
        .iter()
        .map(|r| (r.refund_id.clone(), r.amount.minor()))
        .collect();
    let mut expected = gateway.clone();
    listed.sort();
    expected.sort();
    assert_eq!(listed, expected);
    let sum: i64 = gateway.iter().map(|(_, m)| m).sum();
    assert_eq!(report.totals.len(), 1);
    assert_eq!(report.totals[0].provider, "testpay");
    assert_eq!(report.totals[0].count, gateway.len());
    assert_eq!(report.totals[0].amount.minor(), sum);
    let before = shop
        .orders()
        .refund_report(&operator(), t0() - chrono::Duration::days(1), t0())
        .await
        .unwrap();
    assert!(before.refunds.is_empty() && before.totals.is_empty());
    let backwards = shop
        .orders()
        .refund_report(&operator(), t0(), t0())
        .await
        .unwrap_err();
    assert_eq!(backwards.code(), "invalid_input");
    // Nobody else's order is found, and a buyer cannot ask for another's.
    let stranger = member("stranger");
    let someone = bought(&shop, &goods, &member("someone"), Buy::Card).await;
    let refused = shop
        .orders()
        .request_refund(&stranger, someone.id(), &[], "mine")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), "unknown_order");
}
