//! Conformance cases of orders: storing, changing and placing them, member limits, and the queries over them.

use super::*;

/// An order and its events are written together and read back as written.
pub async fn order_round_trip_with_events(store: Arc<dyn Store>) {
    let tenant = fixtures::tenant();
    let goods = card_goods(&tenant, PurchaseLimits::default());
    let buyer = member("alice");
    let (order, events) = order(&goods, &buyer, 2);
    let envs = envelopes(&order, &events);
    store.insert_order(&order, &envs, &[]).await.unwrap();
    assert_eq!(
        store.order(&tenant, order.id()).await.unwrap().as_ref(),
        Some(&order)
    );
    let stored = store
        .aggregate_events(&tenant, "order", &order.id().to_string())
        .await
        .unwrap();
    assert_eq!(stored, envs);
    assert_eq!(
        store.member_orders(&tenant, &buyer, 10).await.unwrap(),
        vec![order.clone()]
    );
    assert_eq!(
        kind_of(store.insert_order(&order, &[], &[]).await),
        quanyi_core::ErrorKind::Conflict
    );
    assert!(
        store
            .order(&tenant, id(OrderId::generate))
            .await
            .unwrap()
            .is_none()
    );
}

/// A stale order write is a conflict; neither the order nor its events change.
pub async fn order_stale_version_conflicts(store: Arc<dyn Store>) {
    let tenant = fixtures::tenant();
    let goods = card_goods(&tenant, PurchaseLimits::default());
    let (mut order, events) = order(&goods, &member("bob"), 1);
    store
        .insert_order(&order, &envelopes(&order, &events), &[])
        .await
        .unwrap();
    let loaded = order.version();
    let stale_copy = order.clone();
    let ev = order.cancel("changed mind".into(), t0()).unwrap();
    let envs = envelopes(&order, &ev);
    store
        .update_order(
            OrderChange {
                order: &order,
                expected_version: loaded,
                events: &envs,
            },
            None,
        )
        .await
        .unwrap();
    let mut other = stale_copy;
    let ev2 = other.expire(t0() + Duration::hours(1)).unwrap();
    let envs2 = envelopes(&other, &ev2);
    assert_eq!(
        kind_of(
            store
                .update_order(
                    OrderChange {
                        order: &other,
                        expected_version: loaded,
                        events: &envs2
                    },
                    None
                )
                .await
        ),
        quanyi_core::ErrorKind::Conflict
    );
    let stored = store.order(&tenant, order.id()).await.unwrap().unwrap();
    assert_eq!(stored.status(), OrderStatus::Cancelled);
    let all = store
        .aggregate_events(&tenant, "order", &order.id().to_string())
        .await
        .unwrap();
    assert_eq!(all.len(), events.len() + ev.len());
}

/// Per-member limits hold under concurrency: 20 racing orders of 1 with a limit of 3 give 3.
pub async fn member_limit_is_atomic(store: Arc<dyn Store>) {
    let tenant = fixtures::tenant();
    let goods = card_goods(
        &tenant,
        PurchaseLimits {
            per_order: None,
            per_member: Some(3),
            release_on_refund: false,
        },
    );
    let sku = first_sku(&goods);
    let buyer = member("carol");
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let store = store.clone();
        let (order, _) = order(&goods, &buyer, 1);
        tasks.push(tokio::spawn(async move {
            store
                .insert_order(
                    &order,
                    &[],
                    &[MemberLimit {
                        sku,
                        limit: 3,
                        release_on_refund: false,
                    }],
                )
                .await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => ok += 1,
            Err(Error::MemberLimitExceeded { limit: 3, .. }) => {}
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!(ok, 3);
    // Void orders do not count: cancel one, and one more fits.
    let mut orders = store.member_orders(&tenant, &buyer, 10).await.unwrap();
    let mut first = orders.remove(0);
    let v = first.version();
    let ev = first.cancel("test".into(), t0()).unwrap();
    let envs = envelopes(&first, &ev);
    store
        .update_order(
            OrderChange {
                order: &first,
                expected_version: v,
                events: &envs,
            },
            None,
        )
        .await
        .unwrap();
    let (again, _) = order(&goods, &buyer, 1);
    store
        .insert_order(
            &again,
            &[],
            &[MemberLimit {
                sku,
                limit: 3,
                release_on_refund: false,
            }],
        )
        .await
        .unwrap();
    let (too_many, _) = order(&goods, &buyer, 1);
    assert!(matches!(
        store
            .insert_order(
                &too_many,
                &[],
                &[MemberLimit {
                    sku,
                    limit: 3,
                    release_on_refund: false,
                }]
            )
            .await,
        Err(Error::MemberLimitExceeded {
            already: 3,
            requested: 1,
            ..
        })
    ));
}

/// Unpaid orders past their deadline are listed oldest deadline first; paid ones are not.
pub async fn unpaid_orders_due_in_deadline_order(store: Arc<dyn Store>) {
    let tenant = fixtures::tenant();
    let goods = card_goods(&tenant, PurchaseLimits::default());
    let (a, _) = order(&goods, &member("f1"), 1);
    let (b, _) = order(&goods, &member("f2"), 1);
    store.insert_order(&a, &[], &[]).await.unwrap();
    store.insert_order(&b, &[], &[]).await.unwrap();
    let before = store.unpaid_orders_due(t0(), 1000).await.unwrap();
    assert!(!before.iter().any(|(t, _)| t == &tenant));
    let due = store
        .unpaid_orders_due(a.expires_at(), 100_000)
        .await
        .unwrap();
    let mine: HashSet<OrderId> = due
        .iter()
        .filter(|(t, _)| t == &tenant)
        .map(|(_, o)| *o)
        .collect();
    assert_eq!(mine, HashSet::from([a.id(), b.id()]));
    let mut b2 = b.clone();
    let v = b2.version();
    let ev = b2.cancel("test".into(), t0()).unwrap();
    let envs = envelopes(&b2, &ev);
    store
        .update_order(
            OrderChange {
                order: &b2,
                expected_version: v,
                events: &envs,
            },
            None,
        )
        .await
        .unwrap();
    let due = store
        .unpaid_orders_due(a.expires_at(), 100_000)
        .await
        .unwrap();
    let mine: Vec<OrderId> = due
        .iter()
        .filter(|(t, _)| t == &tenant)
        .map(|(_, o)| *o)
        .collect();
    assert_eq!(mine, vec![a.id()]);
}

/// Orders are found by when they last changed, a period at a time, in pages.
pub async fn orders_updated_in_a_period_page_in_order(store: Arc<dyn Store>) {
    let tenant = fixtures::tenant();
    let goods = card_goods(&tenant, PurchaseLimits::default());
    let mut placed = Vec::new();
    for n in 0..5 {
        let (order, events) = order(&goods, &member(&format!("p{n}")), 1);
        store
            .insert_order(&order, &envelopes(&order, &events), &[])
            .await
            .unwrap();
        placed.push(order);
    }
    // Two of them change an hour later.
    let later = t0() + Duration::hours(1);
    for o in &placed[3..] {
        let mut changed = o.clone();
        let ev = changed.cancel("later".into(), later).unwrap();
        let envs = envelopes(&changed, &ev);
        store
            .update_order(
                OrderChange {
                    order: &changed,
                    expected_version: o.version(),
                    events: &envs,
                },
                None,
            )
            .await
            .unwrap();
    }
    let first_hour = store
        .orders_updated(&tenant, t0(), later, None, 100)
        .await
        .unwrap();
    let mut want: Vec<OrderId> = placed[..3].iter().map(|o| o.id()).collect();
    want.sort();
    assert_eq!(first_hour.iter().map(|o| o.id()).collect::<Vec<_>>(), want);
    // Paging with the cursor walks the same orders.
    let page = store
        .orders_updated(&tenant, t0(), later, None, 2)
        .await
        .unwrap();
    assert_eq!(page.len(), 2);
    let last = page.last().unwrap();
    let rest = store
        .orders_updated(
            &tenant,
            t0(),
            later,
            Some((last.updated_at(), last.id())),
            2,
        )
        .await
        .unwrap();
    assert_eq!(
        rest.iter().map(|o| o.id()).collect::<Vec<_>>(),
        want[2..].to_vec()
    );
    let second_hour = store
        .orders_updated(&tenant, later, later + Duration::hours(1), None, 100)
        .await
        .unwrap();
    assert_eq!(second_hour.len(), 2);
    assert!(
        second_hour
            .iter()
            .all(|o| o.status() == OrderStatus::Cancelled)
    );
    assert!(
        store
            .orders_updated(&fixtures::tenant(), t0(), later, None, 100)
            .await
            .unwrap()
            .is_empty()
    );
}
