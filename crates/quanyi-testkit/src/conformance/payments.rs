//! Conformance cases of payments: notices recorded once and the sale written with them.

use super::*;

/// A payment that sells cards sells only cards its order holds, with the notice and the order
/// change in the same step.
pub async fn payment_sells_only_held_cards(store: Arc<dyn Store>) {
    let tenant = fixtures::vault_tenant(&*store).await;
    let goods = card_goods(&tenant, PurchaseLimits::default());
    let sku = first_sku(&goods);
    store
        .insert_cards(&tenant, &cards(sku, 2), t0(), quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    let (order, _) = order(&goods, &member("jay"), 1);
    let held = store
        .place_order(
            NewOrder {
                order: &order,
                events: &[],
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
    let free: Vec<_> = store
        .cards_sealed_with(&tenant, KeyId(1), 10)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .filter(|c| !held.contains(c))
        .collect();
    let n = notice(&tenant, order.id(), "txn-sell", order.total().minor());
    let mut paid = order.clone();
    paid.confirm_payment(
        Payment {
            provider: n.provider.clone(),
            transaction_id: n.transaction_id.clone(),
            amount: n.amount,
            paid_at: t0(),
        },
        t0(),
    )
    .unwrap();
    let change = || OrderChange {
        order: &paid,
        expected_version: order.version(),
        events: &[],
    };
    let r = store
        .record_payment(pay(&n, Some(change()), &free, None), t0())
        .await;
    assert_eq!(kind_of(r), quanyi_core::ErrorKind::Conflict);
    assert!(
        store
            .payment_notice(&tenant, "testpay", "txn-sell")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        store
            .order(&tenant, order.id())
            .await
            .unwrap()
            .unwrap()
            .status(),
        OrderStatus::AwaitingPayment
    );
    assert_eq!(store.stock(&tenant, sku, t0()).await.unwrap().available, 1);
    let r = store.record_payment(pay(&n, None, &held, None), t0()).await;
    assert_eq!(kind_of(r), quanyi_core::ErrorKind::Invalid);
    assert_eq!(
        store
            .record_payment(pay(&n, Some(change()), &held, None), t0())
            .await
            .unwrap(),
        RecordOutcome::Recorded
    );
    let stock = store.stock(&tenant, sku, t0()).await.unwrap();
    assert_eq!((stock.available, stock.reserved, stock.sold), (1, 0, 1));
    let listed = store.held_cards(&tenant, order.id()).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(matches!(listed[0].state, CardState::Sold { order: o, .. } if o == order.id()));
    assert_eq!(
        store.order_cards(&tenant, order.id()).await.unwrap()[0].id,
        held[0]
    );
}

/// A notice is recorded once with its order change and job; a repeat writes nothing.
pub async fn payment_notice_recorded_once(store: Arc<dyn Store>) {
    let tenant = fixtures::tenant();
    let goods = card_goods(&tenant, PurchaseLimits::default());
    let (mut order, events) = order(&goods, &member("dave"), 1);
    store
        .insert_order(&order, &envelopes(&order, &events), &[])
        .await
        .unwrap();
    let loaded = order.version();
    let n = notice(&tenant, order.id(), "txn-1", order.total().minor());
    let payment = Payment {
        provider: n.provider.clone(),
        transaction_id: n.transaction_id.clone(),
        amount: n.amount,
        paid_at: t0(),
    };
    let ev = order.confirm_payment(payment, t0()).unwrap();
    let envs = envelopes(&order, &ev);
    let job = fixtures::job(&tenant, &format!("deliver:{}", order.id()), t0());
    let change = OrderChange {
        order: &order,
        expected_version: loaded,
        events: &envs,
    };
    assert_eq!(
        store
            .record_payment(pay(&n, Some(change), &[], Some(&job)), t0())
            .await
            .unwrap(),
        RecordOutcome::Recorded
    );
    // The same transaction again: duplicate, nothing written (even with a different claim).
    let mut again = n.clone();
    again.amount = quanyi_core::Money::from_minor(1, quanyi_core::Currency::CNY);
    assert_eq!(
        store
            .record_payment(pay(&again, None, &[], None), t0())
            .await
            .unwrap(),
        RecordOutcome::Duplicate(n.clone())
    );
    let stored = store.order(&tenant, order.id()).await.unwrap().unwrap();
    assert_eq!(stored.status(), OrderStatus::Paid);
    assert_eq!(
        store
            .payment_notice(&tenant, "testpay", "txn-1")
            .await
            .unwrap(),
        Some(n)
    );
    assert_eq!(
        store.job(job.id).await.unwrap().unwrap().status,
        JobStatus::Queued
    );
    // A notice for reconciliation is listed as such.
    let mut odd = notice(&tenant, id(OrderId::generate), "txn-2", 5);
    odd.disposition = NoticeDisposition::Reconcile {
        reason: "unknown_order".into(),
    };
    store
        .record_payment(pay(&odd, None, &[], None), t0())
        .await
        .unwrap();
    assert_eq!(
        store.notices_to_reconcile(&tenant, 10).await.unwrap(),
        vec![odd]
    );
}

/// A notice whose order change is stale records nothing, so the caller can reload and retry.
pub async fn payment_with_stale_order_writes_nothing(store: Arc<dyn Store>) {
    let tenant = fixtures::tenant();
    let goods = card_goods(&tenant, PurchaseLimits::default());
    let (mut order, events) = order(&goods, &member("erin"), 1);
    store
        .insert_order(&order, &envelopes(&order, &events), &[])
        .await
        .unwrap();
    let n = notice(&tenant, order.id(), "txn-stale", order.total().minor());
    let payment = Payment {
        provider: n.provider.clone(),
        transaction_id: n.transaction_id.clone(),
        amount: n.amount,
        paid_at: t0(),
    };
    let ev = order.confirm_payment(payment, t0()).unwrap();
    let envs = envelopes(&order, &ev);
    let job = fixtures::job(&tenant, "deliver:stale", t0());
    let change = OrderChange {
        order: &order,
        expected_version: 99,
        events: &envs,
    };
    assert_eq!(
        kind_of(
            store
                .record_payment(pay(&n, Some(change), &[], Some(&job)), t0())
                .await
        ),
        quanyi_core::ErrorKind::Conflict
    );
    assert!(
        store
            .payment_notice(&tenant, "testpay", "txn-stale")
            .await
            .unwrap()
            .is_none()
    );
    assert!(store.job(job.id).await.unwrap().is_none());
    let stored = store.order(&tenant, order.id()).await.unwrap().unwrap();
    assert_eq!(stored.status(), OrderStatus::AwaitingPayment);
}

/// Cards bought from a supplier are stored sold to their order in the same step as the order
/// change, or not at all.
pub async fn bought_cards_arrive_with_their_order_change(store: Arc<dyn Store>) {
    let tenant = fixtures::vault_tenant(&*store).await;
    let goods = card_goods(&tenant, PurchaseLimits::default());
    let sku = first_sku(&goods);
    let (order, events) = order(&goods, &member("kim"), 2);
    store
        .insert_order(&order, &envelopes(&order, &events), &[])
        .await
        .unwrap();
    let mut paid = order.clone();
    let n = notice(&tenant, order.id(), "txn-bought", order.total().minor());
    let mut ev = paid
        .confirm_payment(
            Payment {
                provider: n.provider.clone(),
                transaction_id: n.transaction_id.clone(),
                amount: n.amount,
                paid_at: t0(),
            },
            t0(),
        )
        .unwrap();
    ev.extend(paid.start_fulfilment(t0()).unwrap());
    let bought = cards(sku, 2);
    let ids: Vec<_> = bought.iter().map(|c| c.id).collect();
    ev.extend(paid.deliver_line(1, ids.clone(), 2, t0()).unwrap());
    ev.extend(paid.finish_fulfilment(t0()).unwrap());
    let envs = envelopes(&paid, &ev);
    // A blind index the tenant already holds refuses the whole step.
    let taken = store
        .insert_cards(&tenant, &cards(sku, 1), t0(), quanyi_storage::Trail::NONE)
        .await
        .unwrap()
        .inserted[0];
    let taken_index = store
        .card(&tenant, taken)
        .await
        .unwrap()
        .unwrap()
        .blind_index;
    let mut clash = bought.clone();
    clash[1].blind_index = taken_index;
    let change = || OrderChange {
        order: &paid,
        expected_version: order.version(),
        events: &envs,
    };
    let r = store
        .insert_sold_cards(&tenant, &clash, change(), t0())
        .await;
    assert!(
        matches!(&r, Err(Error::DuplicateCards { positions }) if positions == &[1]),
        "{r:?}"
    );
    // So does a card whose legacy index the tenant holds, and a card repeated in the call.
    let mut clash = bought.clone();
    clash[0].legacy_index = Some(taken_index);
    let r = store
        .insert_sold_cards(&tenant, &clash, change(), t0())
        .await;
    assert!(
        matches!(&r, Err(Error::DuplicateCards { positions }) if positions == &[0]),
        "{r:?}"
    );
    let mut clash = bought.clone();
    clash[1].blind_index = clash[0].blind_index;
    let r = store
        .insert_sold_cards(&tenant, &clash, change(), t0())
        .await;
    assert!(
        matches!(&r, Err(Error::DuplicateCards { positions }) if positions == &[1]),
        "{r:?}"
    );
    assert!(store.card(&tenant, bought[0].id).await.unwrap().is_none());
    assert_eq!(
        store
            .order(&tenant, order.id())
            .await
            .unwrap()
            .unwrap()
            .status(),
        OrderStatus::AwaitingPayment
    );
    // A stale order version refuses it too.
    let stale = OrderChange {
        order: &paid,
        expected_version: order.version() + 7,
        events: &envs,
    };
    assert_eq!(
        kind_of(store.insert_sold_cards(&tenant, &bought, stale, t0()).await),
        quanyi_core::ErrorKind::Conflict
    );
    assert!(store.card(&tenant, bought[0].id).await.unwrap().is_none());
    store
        .insert_sold_cards(&tenant, &bought, change(), t0())
        .await
        .unwrap();
    let sold = store.order_cards(&tenant, order.id()).await.unwrap();
    assert_eq!(sold.iter().map(|c| c.id).collect::<Vec<_>>(), ids);
    assert!(
        sold.iter()
            .all(|c| matches!(c.state, CardState::Sold { order: o, .. } if o == order.id()))
    );
    assert_eq!(
        store
            .order(&tenant, order.id())
            .await
            .unwrap()
            .unwrap()
            .status(),
        OrderStatus::Delivered
    );
    let stock = store.stock(&tenant, sku, t0()).await.unwrap();
    assert_eq!((stock.available, stock.sold), (1, 2));
    // Sold cards are duplicates for later imports.
    let again = vec![fixtures::card_with_index(
        sku,
        id(BatchId::generate),
        *bought[0].blind_index.as_bytes(),
    )];
    assert_eq!(
        store
            .insert_cards(&tenant, &again, t0(), quanyi_storage::Trail::NONE)
            .await
            .unwrap()
            .duplicates,
        vec![0]
    );
}
