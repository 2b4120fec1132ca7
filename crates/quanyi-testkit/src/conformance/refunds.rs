//! Conformance case of after-sales refund writes: voiding only unrevealed cards, revealing only
//! unvoided ones, and the refund queue per tenant.

use std::sync::Arc;

use chrono::Duration;
use quanyi_core::{CardId, TenantId};
use quanyi_goods::{Goods, PurchaseLimits};
use quanyi_order::{Asker, Order, Payment, RefundAsk, RefundStatus};
use quanyi_storage::{Error, OrderChange, PaidRefund, RefundWrite, Store, Trail};

use crate::fixtures::{self, card_goods, first_sku, t0};

/// A delivered order of `n` cards of the goods, stored; answers it and its cards.
async fn delivered(store: &dyn Store, goods: &Goods, buyer: &str, n: u32) -> (Order, Vec<CardId>) {
    let (placed, events) = fixtures::order(goods, &fixtures::member(buyer), n);
    store
        .insert_order(&placed, &fixtures::envelopes(&placed, &events), &[])
        .await
        .unwrap();
    let cards = store
        .commit_cards(goods.tenant(), first_sku(goods), placed.id(), n, t0())
        .await
        .unwrap();
    let mut order = placed.clone();
    let mut events = order
        .confirm_payment(
            Payment {
                provider: "testpay".into(),
                transaction_id: format!("txn-{}", order.id()).into(),
                amount: order.total(),
                paid_at: t0(),
            },
            t0(),
        )
        .unwrap();
    events.extend(order.start_fulfilment(t0()).unwrap());
    events.extend(order.deliver_line(1, cards.clone(), n, t0()).unwrap());
    events.extend(order.finish_fulfilment(t0()).unwrap());
    store
        .update_order(
            OrderChange {
                order: &order,
                expected_version: placed.version(),
                events: &fixtures::envelopes(&order, &events),
            },
            None,
        )
        .await
        .unwrap();
    (order, cards)
}

/// The buyer's refund of line 1, asked at `at`: approved at once (its cards voided) unless
/// `revealed`, then requested.
fn asked(order: &Order, revealed: bool, at: chrono::DateTime<chrono::Utc>) -> Order {
    let mut next = order.clone();
    next.ask_refund(
        RefundAsk {
            lines: vec![(1, None)],
            reason: "not what I wanted".into(),
            asked_by: Asker::Buyer,
            override_rules: false,
            due: at + Duration::hours(72),
        },
        |_| revealed,
        at,
    )
    .unwrap();
    next
}

async fn write(
    store: &dyn Store,
    order: &Order,
    expected: u64,
    void: &[CardId],
) -> Result<(), Error> {
    write_paid(store, order, expected, void, None).await
}

async fn write_paid(
    store: &dyn Store,
    order: &Order,
    expected: u64,
    void: &[CardId],
    paid: Option<&PaidRefund>,
) -> Result<(), Error> {
    store
        .refund_order(
            OrderChange {
                order,
                expected_version: expected,
                events: &[],
            },
            RefundWrite {
                void,
                paid,
                audit: None,
            },
        )
        .await
}

/// The ledger entry of an order's refund `no`, paid at `at`.
fn ledger_entry(order: &Order, no: u16, at: chrono::DateTime<chrono::Utc>) -> PaidRefund {
    let refund = order.refund(no).unwrap();
    PaidRefund {
        tenant: order.tenant().clone(),
        refund_id: refund.refund_id(order.id()),
        order: order.id(),
        provider: "testpay".into(),
        transaction_id: format!("txn-{}", order.id()),
        amount: refund.amount,
        receipt: format!("re-{no}"),
        paid_at: at,
    }
}

async fn sold_cards(store: &dyn Store, order: &Order) -> Vec<quanyi_storage::StoredCard> {
    store.order_cards(order.tenant(), order.id()).await.unwrap()
}

async fn tenant_with_goods(store: &dyn Store) -> (TenantId, Goods) {
    let tenant = fixtures::vault_tenant(store).await;
    let goods = card_goods(&tenant, PurchaseLimits::default());
    store.insert_goods(&goods, Trail::NONE).await.unwrap();
    store
        .insert_cards(
            &tenant,
            &fixtures::cards(first_sku(&goods), 6),
            t0(),
            Trail::NONE,
        )
        .await
        .unwrap();
    (tenant, goods)
}

/// A refund voids the cards it names in the same write as the order, only cards sold to the
/// order and never revealed; a reveal marks only cards not voided and keeps the first reveal's
/// time; a refused write changes nothing. Orders with an open refund are queued by when they
/// need attention, per tenant, and leave the queue once paid.
pub async fn refunds_void_unrevealed_cards_and_queue_per_tenant(store: Arc<dyn Store>) {
    let store = &*store;
    let (tenant, goods) = tenant_with_goods(store).await;
    let at = t0() + Duration::minutes(1);

    // Unrevealed: voided with the refund's approval.
    let (a, a_cards) = delivered(store, &goods, "ann", 2).await;
    let a_refund = asked(&a, false, at);
    let voided = a_refund.refund(1).unwrap().voided.clone();
    assert_eq!(voided, a_cards);
    write(store, &a_refund, a.version(), &voided).await.unwrap();
    let cards = sold_cards(store, &a).await;
    assert_eq!(cards.len(), 2);
    assert!(
        cards
            .iter()
            .all(|c| c.voided_at == Some(at) && c.revealed_at.is_none())
    );
    assert!(
        store
            .mark_revealed(&tenant, a.id(), at)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        sold_cards(store, &a)
            .await
            .iter()
            .all(|c| c.revealed_at.is_none())
    );
    assert_eq!(
        store.order(&tenant, a.id()).await.unwrap().unwrap(),
        a_refund
    );

    // Revealed: a void of its card is refused and changes nothing.
    let (b, b_cards) = delivered(store, &goods, "bob", 1).await;
    let first = store.mark_revealed(&tenant, b.id(), at).await.unwrap();
    assert_eq!(first, b_cards);
    let later = at + Duration::minutes(5);
    assert_eq!(
        store.mark_revealed(&tenant, b.id(), later).await.unwrap(),
        b_cards
    );
    assert_eq!(sold_cards(store, &b).await[0].revealed_at, Some(at));
    let b_void = asked(&b, false, later);
    let refused = write(store, &b_void, b.version(), &b_cards)
        .await
        .unwrap_err();
    assert!(
        matches!(refused, Error::Revealed { card } if card == b_cards[0]),
        "{refused:?}"
    );
    assert_eq!(store.order(&tenant, b.id()).await.unwrap().unwrap(), b);
    assert!(sold_cards(store, &b).await[0].voided_at.is_none());
    // Cards of another order, or voided already, are refused too; so is a stale version.
    let refused = write(store, &b_void, b.version(), &a_cards[..1])
        .await
        .unwrap_err();
    assert!(matches!(refused, Error::Conflict { .. }), "{refused:?}");
    let refused = write(store, &b_void, b.version() - 1, &[])
        .await
        .unwrap_err();
    assert!(matches!(refused, Error::Conflict { .. }), "{refused:?}");
    assert_eq!(store.order(&tenant, b.id()).await.unwrap().unwrap(), b);

    // The revealed card's refund waits for a decision: queued by its deadline, after the
    // approved (unpaid) refund of `a`, due from its approval.
    let b_asked = asked(&b, true, later);
    assert_eq!(b_asked.refund(1).unwrap().status, RefundStatus::Requested);
    write(store, &b_asked, b.version(), &[]).await.unwrap();
    let queue = store.refund_queue(&tenant, None, 10).await.unwrap();
    assert_eq!(queue, vec![a_refund.clone(), b_asked.clone()]);
    let page = store.refund_queue(&tenant, None, 1).await.unwrap();
    assert_eq!(page, vec![a_refund.clone()]);
    let after = Some((a_refund.refund_due().unwrap(), a.id()));
    assert_eq!(
        store.refund_queue(&tenant, after, 10).await.unwrap(),
        vec![b_asked.clone()]
    );

    // Another tenant's queue holds only its own.
    let (other, other_goods) = tenant_with_goods(store).await;
    let (c, c_cards) = delivered(store, &other_goods, "cat", 1).await;
    // A card of another tenant is never voided by this tenant's refund.
    let refused = write(store, &b_void, b.version(), &c_cards)
        .await
        .unwrap_err();
    assert!(matches!(refused, Error::Conflict { .. }), "{refused:?}");
    store.mark_revealed(&other, c.id(), at).await.unwrap();
    let c_asked = asked(&c, true, at);
    write(store, &c_asked, c.version(), &[]).await.unwrap();
    assert_eq!(
        store.refund_queue(&other, None, 10).await.unwrap(),
        vec![c_asked]
    );
    assert_eq!(
        store.refund_queue(&tenant, None, 10).await.unwrap().len(),
        2
    );
    assert!(
        store
            .mark_revealed(&other, a.id(), at)
            .await
            .unwrap()
            .is_empty()
    );

    // Paid: out of the queue and into the ledger, in one write; a ledger entry of another
    // tenant, or of a refund id the ledger holds, is refused with the whole change.
    let mut a_paid = a_refund.clone();
    a_paid.refund_paid(1, "re-1".into(), later).unwrap();
    let entry = ledger_entry(&a_paid, 1, later);
    let foreign = PaidRefund {
        tenant: other.clone(),
        ..entry.clone()
    };
    let refused = write_paid(store, &a_paid, a_refund.version(), &[], Some(&foreign))
        .await
        .unwrap_err();
    assert!(matches!(refused, Error::Invalid(_)), "{refused:?}");
    write_paid(store, &a_paid, a_refund.version(), &[], Some(&entry))
        .await
        .unwrap();
    let b_now = store.order(&tenant, b.id()).await.unwrap().unwrap();
    let mut b_rejected = b_now.clone();
    b_rejected
        .reject_refund(
            1,
            &quanyi_core::Actor::new("lin", "support").unwrap(),
            "used".into(),
            later,
        )
        .unwrap();
    let repeated = PaidRefund {
        order: b.id(),
        ..entry.clone()
    };
    let refused = write_paid(store, &b_rejected, b_now.version(), &[], Some(&repeated))
        .await
        .unwrap_err();
    assert!(matches!(refused, Error::Conflict { .. }), "{refused:?}");
    assert_eq!(store.order(&tenant, b.id()).await.unwrap().unwrap(), b_now);
    let end = later + Duration::seconds(1);
    let ledger = store.refunds_paid(&tenant, t0(), end, None, 10).await;
    assert_eq!(ledger.unwrap(), vec![entry.clone()]);
    let before_it = store.refunds_paid(&tenant, t0(), later, None, 10).await;
    assert!(before_it.unwrap().is_empty());
    let cursor = Some((later, entry.refund_id.clone()));
    let past_it = store.refunds_paid(&tenant, t0(), end, cursor, 10).await;
    assert!(past_it.unwrap().is_empty());
    let others = store.refunds_paid(&other, t0(), end, None, 10).await;
    assert!(others.unwrap().is_empty());
    assert_eq!(
        store.refund_queue(&tenant, None, 10).await.unwrap(),
        vec![b_asked]
    );
    assert_eq!(
        store
            .order(&tenant, a.id())
            .await
            .unwrap()
            .unwrap()
            .status(),
        quanyi_order::OrderStatus::Refunded
    );
}

/// Data in every state as a schema before after-sales refunds held it, to store with an
/// adapter's previous schema version and check after its migration
/// ([`BeforeAfterSales::check_after_migration`]): card goods, cards available, reserved, sold
/// and withdrawn, and orders unpaid (holding the reserved card), delivered (two, each holding a
/// sold card) and expired.
#[derive(Debug)]
pub struct BeforeAfterSales {
    /// The card goods.
    pub goods: Goods,
    /// The orders: unpaid, delivered, delivered, expired.
    pub orders: Vec<Order>,
    /// The cards with their states: available, reserved, sold, sold, withdrawn.
    pub cards: Vec<(quanyi_storage::NewCard, quanyi_storage::CardState)>,
}

impl BeforeAfterSales {
    /// The data of `tenant`.
    pub fn new(tenant: &TenantId) -> BeforeAfterSales {
        use quanyi_storage::CardState;
        let goods = card_goods(tenant, PurchaseLimits::default());
        let sku = first_sku(&goods);
        let cards = fixtures::cards(sku, 5);
        let (unpaid, _) = fixtures::order(&goods, &fixtures::member("unpaid"), 1);
        let deliver = |buyer: &str, card: CardId| {
            let (mut order, _) = fixtures::order(&goods, &fixtures::member(buyer), 1);
            order
                .confirm_payment(
                    Payment {
                        provider: "testpay".into(),
                        transaction_id: format!("txn-{}", order.id()).into(),
                        amount: order.total(),
                        paid_at: t0(),
                    },
                    t0(),
                )
                .unwrap();
            order.start_fulfilment(t0()).unwrap();
            order.deliver_line(1, vec![card], 1, t0()).unwrap();
            order.finish_fulfilment(t0()).unwrap();
            order
        };
        let first = deliver("first", cards[2].id);
        let second = deliver("second", cards[3].id);
        let (mut expired, _) = fixtures::order(&goods, &fixtures::member("late"), 1);
        expired.expire(t0() + Duration::hours(1)).unwrap();
        let states = vec![
            CardState::Available,
            CardState::Reserved {
                order: unpaid.id(),
                until: unpaid.expires_at(),
            },
            CardState::Sold {
                order: first.id(),
                at: t0(),
            },
            CardState::Sold {
                order: second.id(),
                at: t0(),
            },
            CardState::Withdrawn { at: t0() },
        ];
        BeforeAfterSales {
            goods,
            orders: vec![unpaid, first, second, expired],
            cards: cards.into_iter().zip(states).collect(),
        }
    }

    /// Checks the data read back after the migration: cards keep their states and are
    /// neither revealed nor voided, orders read back as stored and none is queued; then a
    /// reveal marks the first delivered order's card, a refund of the second voids its card,
    /// and voiding the revealed card is refused.
    pub async fn check_after_migration(&self, store: &dyn Store) {
        let tenant = self.goods.tenant();
        for (card, state) in &self.cards {
            let stored = store.card(tenant, card.id).await.unwrap().unwrap();
            assert_eq!(stored.state, *state);
            assert_eq!((stored.revealed_at, stored.voided_at), (None, None));
        }
        for order in &self.orders {
            assert_eq!(
                &store.order(tenant, order.id()).await.unwrap().unwrap(),
                order
            );
        }
        assert!(
            store
                .refund_queue(tenant, None, 10)
                .await
                .unwrap()
                .is_empty()
        );
        let (from, to) = (t0() - Duration::days(1), t0() + Duration::days(1));
        let ledger = store.refunds_paid(tenant, from, to, None, 10).await;
        assert!(ledger.unwrap().is_empty());
        assert_eq!(store.budget_used(tenant, "coupon", "any").await.unwrap(), 0);
        let (first, second) = (&self.orders[1], &self.orders[2]);
        let at = t0() + Duration::hours(2);
        assert_eq!(
            store.mark_revealed(tenant, first.id(), at).await.unwrap(),
            vec![self.cards[2].0.id]
        );
        let refunded = asked(second, false, at);
        let void = [self.cards[3].0.id];
        write(store, &refunded, second.version(), &void)
            .await
            .unwrap();
        let voided = store.card(tenant, void[0]).await.unwrap().unwrap();
        assert_eq!(voided.voided_at, Some(at));
        assert_eq!(
            store.refund_queue(tenant, None, 10).await.unwrap(),
            vec![refunded]
        );
        let refused = write(
            store,
            &asked(first, false, at),
            first.version(),
            &[self.cards[2].0.id],
        )
        .await
        .unwrap_err();
        assert!(matches!(refused, Error::Revealed { .. }), "{refused:?}");
        // The stock still counts the available card alone.
        let stock = store
            .stock(tenant, first_sku(&self.goods), t0())
            .await
            .unwrap();
        assert_eq!(stock.available, 1);
    }
}
