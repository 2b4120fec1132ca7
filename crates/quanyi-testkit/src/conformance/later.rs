//! Conformance cases of orders that end unpaid and of payment notices that conflict.

use std::sync::Arc;

use quanyi_core::{Currency, Money, OrderId};
use quanyi_goods::PurchaseLimits;
use quanyi_order::OrderStatus;
use quanyi_storage::{
    CONFLICTING_REPEAT, NewOrder, NoticeDisposition, OrderChange, Reservation, Store,
};

use super::{kind_of, notice, pay};
use crate::fixtures::{self, card_goods, cards, envelopes, first_sku, id, member, order, t0};

/// An unpaid order that expires or is cancelled is written together with the release of its
/// cards: after the call both have happened; after a refused call, neither.
pub async fn closing_an_unpaid_order_releases_its_cards(store: Arc<dyn Store>) {
    let tenant = fixtures::vault_tenant(&*store).await;
    let goods = card_goods(&tenant, PurchaseLimits::default());
    let sku = first_sku(&goods);
    store
        .insert_goods(&goods, quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    store
        .insert_cards(&tenant, &cards(sku, 3), t0(), quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    let mut placed = Vec::new();
    for name in ["uma", "vic"] {
        let (order, events) = order(&goods, &member(name), 1);
        let envs = envelopes(&order, &events);
        store
            .place_order(
                NewOrder {
                    order: &order,
                    events: &envs,
                    reservations: &[Reservation { sku, quantity: 1 }],
                    member_limits: &[],
                    priced_from: &[],
                    claims: &[],
                    budgets: &[],
                    pricing_version: None,
                },
                t0(),
            )
            .await
            .unwrap();
        placed.push(order);
    }
    let stock = store.stock(&tenant, sku, t0()).await.unwrap();
    assert_eq!((stock.available, stock.reserved), (1, 2));

    // Expired: the order and the release in one step.
    let mut expired = placed[0].clone();
    let loaded = expired.version();
    let now = expired.expires_at();
    let events = expired.expire(now).unwrap();
    let envs = envelopes(&expired, &events);
    // A stale version writes neither.
    let stale = OrderChange {
        order: &expired,
        expected_version: loaded + 3,
        events: &envs,
    };
    assert_eq!(
        kind_of(store.close_unpaid_order(stale).await),
        quanyi_core::ErrorKind::Conflict
    );
    assert_eq!(
        store
            .held_cards(&tenant, placed[0].id())
            .await
            .unwrap()
            .len(),
        1
    );
    let change = OrderChange {
        order: &expired,
        expected_version: loaded,
        events: &envs,
    };
    assert_eq!(store.close_unpaid_order(change).await.unwrap(), 1);
    let stored = store.order(&tenant, placed[0].id()).await.unwrap().unwrap();
    assert_eq!(stored.status(), OrderStatus::Expired);
    assert!(
        store
            .held_cards(&tenant, placed[0].id())
            .await
            .unwrap()
            .is_empty()
    );
    let events = store
        .aggregate_events(&tenant, "order", &placed[0].id().to_string())
        .await
        .unwrap();
    for e in &envs {
        assert!(
            events.iter().any(|stored| stored.id == e.id),
            "the change's events are stored"
        );
    }

    // Cancelled: the same.
    let mut cancelled = placed[1].clone();
    let loaded = cancelled.version();
    let events = cancelled.cancel("changed my mind".into(), t0()).unwrap();
    let envs = envelopes(&cancelled, &events);
    let change = OrderChange {
        order: &cancelled,
        expected_version: loaded,
        events: &envs,
    };
    assert_eq!(store.close_unpaid_order(change).await.unwrap(), 1);
    let stock = store.stock(&tenant, sku, t0()).await.unwrap();
    assert_eq!((stock.available, stock.reserved), (3, 0));
    let stored = store.order(&tenant, placed[1].id()).await.unwrap().unwrap();
    assert_eq!(stored.status(), OrderStatus::Cancelled);
    // An order that holds nothing releases nothing.
    let (bare, events) = order(&goods, &member("wes"), 1);
    store
        .insert_order(&bare, &envelopes(&bare, &events), &[])
        .await
        .unwrap();
    let mut gone = bare.clone();
    let events = gone.cancel("no".into(), t0()).unwrap();
    let envs = envelopes(&gone, &events);
    let change = OrderChange {
        order: &gone,
        expected_version: bare.version(),
        events: &envs,
    };
    assert_eq!(store.close_unpaid_order(change).await.unwrap(), 0);
}

/// A notice that repeats a recorded transaction with another order or amount is kept for
/// reconciliation once per claim, listed with the other notices to reconcile, and changes
/// nothing else.
pub async fn conflicting_notices_are_kept_for_reconciliation(store: Arc<dyn Store>) {
    let tenant = fixtures::tenant();
    let order_id = id(OrderId::generate);
    let first = notice(&tenant, order_id, "txn-c", 3000);
    let mut unknown = notice(&tenant, id(OrderId::generate), "txn-u", 5);
    unknown.disposition = NoticeDisposition::Reconcile {
        reason: "unknown_order".into(),
    };
    store
        .record_payment(pay(&unknown, None, &[], None), t0())
        .await
        .unwrap();
    store
        .record_payment(pay(&first, None, &[], None), t0())
        .await
        .unwrap();
    // No notice of that transaction: nothing to conflict with.
    let stray = notice(&tenant, order_id, "txn-none", 3000);
    assert_eq!(
        kind_of(store.flag_conflicting_notice(&stray).await),
        quanyi_core::ErrorKind::NotFound
    );
    // The recorded order and amount: a plain repeat, not a conflict.
    assert_eq!(
        kind_of(store.flag_conflicting_notice(&first).await),
        quanyi_core::ErrorKind::Invalid
    );
    let mut more = first.clone();
    more.amount = Money::from_minor(300_000, Currency::CNY);
    more.received_at = t0() + chrono::Duration::seconds(1);
    assert!(store.flag_conflicting_notice(&more).await.unwrap());
    assert!(
        !store.flag_conflicting_notice(&more).await.unwrap(),
        "the same claim is kept once"
    );
    let mut elsewhere = first.clone();
    elsewhere.order = id(OrderId::generate);
    assert!(store.flag_conflicting_notice(&elsewhere).await.unwrap());
    let mut dollars = first.clone();
    dollars.amount = Money::from_minor(3000, Currency::USD);
    assert!(store.flag_conflicting_notice(&dollars).await.unwrap());

    let kept = |n: &quanyi_storage::PaymentNotice| {
        let mut n = n.clone();
        n.disposition = NoticeDisposition::Reconcile {
            reason: CONFLICTING_REPEAT.into(),
        };
        n
    };
    assert_eq!(
        store.notices_to_reconcile(&tenant, 10).await.unwrap(),
        vec![
            unknown.clone(),
            kept(&more),
            kept(&elsewhere),
            kept(&dollars)
        ]
    );
    assert_eq!(
        store.notices_to_reconcile(&tenant, 2).await.unwrap(),
        vec![unknown, kept(&more)]
    );
    // The first record is unchanged.
    assert_eq!(
        store
            .payment_notice(&tenant, "testpay", "txn-c")
            .await
            .unwrap(),
        Some(first)
    );
    // Another tenant sees none of it.
    assert!(
        store
            .notices_to_reconcile(&fixtures::tenant(), 10)
            .await
            .unwrap()
            .is_empty()
    );
}
