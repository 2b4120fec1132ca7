//! Conformance cases of the card pool: duplicates, reservations, commits and releases under concurrency.

use super::*;

/// A blind index already held by the tenant, sold or not, or repeated in the batch, is skipped.
pub async fn duplicate_blind_index_is_skipped(store: Arc<dyn Store>) {
    let tenant = fixtures::vault_tenant(&*store).await;
    let goods = card_goods(&tenant, PurchaseLimits::default());
    let sku = first_sku(&goods);
    let batch = id(BatchId::generate);
    let first = vec![
        fixtures::card_with_index(sku, batch, [1; 32]),
        fixtures::card_with_index(sku, batch, [2; 32]),
        fixtures::card_with_index(sku, batch, [1; 32]),
    ];
    let out = store
        .insert_cards(&tenant, &first, t0(), quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    assert_eq!(out.inserted, vec![first[0].id, first[1].id]);
    assert_eq!(out.duplicates, vec![2]);
    // Sell card [1;32], then import it again into another SKU: still a duplicate.
    let order_id = id(OrderId::generate);
    let sold = store
        .commit_cards(&tenant, sku, order_id, 2, t0())
        .await
        .unwrap();
    assert_eq!(sold.len(), 2);
    let other_sku = first_sku(&card_goods(&tenant, PurchaseLimits::default()));
    let again = vec![
        fixtures::card_with_index(other_sku, batch, [1; 32]),
        fixtures::card_with_index(other_sku, batch, [3; 32]),
    ];
    let out = store
        .insert_cards(&tenant, &again, t0(), quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    assert_eq!(out.duplicates, vec![0]);
    assert_eq!(out.inserted, vec![again[1].id]);
    assert_eq!(
        store
            .stock(&tenant, other_sku, t0())
            .await
            .unwrap()
            .available,
        1
    );
}

/// Reserving again for the same order returns the same cards and takes no more.
pub async fn reserve_is_idempotent(store: Arc<dyn Store>) {
    let tenant = fixtures::vault_tenant(&*store).await;
    let sku = first_sku(&card_goods(&tenant, PurchaseLimits::default()));
    store
        .insert_cards(&tenant, &cards(sku, 5), t0(), quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    let order_id = id(OrderId::generate);
    let until = t0() + Duration::minutes(15);
    let a = store
        .reserve_cards(&tenant, sku, order_id, 2, until, t0())
        .await
        .unwrap();
    let b = store
        .reserve_cards(&tenant, sku, order_id, 2, until, t0())
        .await
        .unwrap();
    assert_eq!(a.len(), 2);
    assert_eq!(a, b);
    let stock = store.stock(&tenant, sku, t0()).await.unwrap();
    assert_eq!((stock.available, stock.reserved, stock.sold), (3, 2, 0));
    for card in &a {
        let c = store.card(&tenant, *card).await.unwrap().unwrap();
        assert_eq!(
            c.state,
            CardState::Reserved {
                order: order_id,
                until
            }
        );
    }
}

/// Asking for more than is free is out of stock and reserves nothing.
pub async fn reserve_out_of_stock_changes_nothing(store: Arc<dyn Store>) {
    let tenant = fixtures::vault_tenant(&*store).await;
    let sku = first_sku(&card_goods(&tenant, PurchaseLimits::default()));
    store
        .insert_cards(&tenant, &cards(sku, 3), t0(), quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    let until = t0() + Duration::minutes(15);
    let r = store
        .reserve_cards(&tenant, sku, id(OrderId::generate), 4, until, t0())
        .await;
    assert!(
        matches!(
            r,
            Err(Error::OutOfStock {
                requested: 4,
                available: 3,
                ..
            })
        ),
        "{r:?}"
    );
    assert_eq!(store.stock(&tenant, sku, t0()).await.unwrap().available, 3);
    let empty = first_sku(&card_goods(&tenant, PurchaseLimits::default()));
    let r = store
        .reserve_cards(&tenant, empty, id(OrderId::generate), 1, until, t0())
        .await;
    assert_eq!(kind_of(r), quanyi_core::ErrorKind::Exhausted);
}

/// Commit takes the order's reserved cards, repeats return them, and they are sold for good.
pub async fn commit_is_idempotent_and_final(store: Arc<dyn Store>) {
    let tenant = fixtures::vault_tenant(&*store).await;
    let sku = first_sku(&card_goods(&tenant, PurchaseLimits::default()));
    store
        .insert_cards(&tenant, &cards(sku, 4), t0(), quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    let order_id = id(OrderId::generate);
    let reserved = store
        .reserve_cards(
            &tenant,
            sku,
            order_id,
            2,
            t0() + Duration::minutes(15),
            t0(),
        )
        .await
        .unwrap();
    let committed = store
        .commit_cards(&tenant, sku, order_id, 2, t0())
        .await
        .unwrap();
    assert_eq!(committed, reserved);
    let again = store
        .commit_cards(&tenant, sku, order_id, 2, t0())
        .await
        .unwrap();
    assert_eq!(again, committed);
    let sold = store.order_cards(&tenant, order_id).await.unwrap();
    assert_eq!(sold.iter().map(|c| c.id).collect::<Vec<_>>(), committed);
    assert!(
        sold.iter()
            .all(|c| matches!(c.state, CardState::Sold { order, .. } if order == order_id))
    );
    assert_eq!(store.release_cards(&tenant, order_id).await.unwrap(), 0);
    let stock = store
        .stock(&tenant, sku, t0() + Duration::days(1))
        .await
        .unwrap();
    assert_eq!((stock.available, stock.reserved, stock.sold), (2, 0, 2));
    // Commit without a reservation takes free cards; more than there are is out of stock.
    let walk_in = id(OrderId::generate);
    assert_eq!(
        store
            .commit_cards(&tenant, sku, walk_in, 1, t0())
            .await
            .unwrap()
            .len(),
        1
    );
    let r = store
        .commit_cards(&tenant, sku, id(OrderId::generate), 2, t0())
        .await;
    assert!(matches!(r, Err(Error::OutOfStock { .. })), "{r:?}");
    assert_eq!(store.stock(&tenant, sku, t0()).await.unwrap().available, 1);
}

/// Releasing an order's reservation puts its cards back; repeating releases nothing more.
pub async fn release_returns_cards_to_stock(store: Arc<dyn Store>) {
    let tenant = fixtures::vault_tenant(&*store).await;
    let sku = first_sku(&card_goods(&tenant, PurchaseLimits::default()));
    store
        .insert_cards(&tenant, &cards(sku, 2), t0(), quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    let order_id = id(OrderId::generate);
    store
        .reserve_cards(
            &tenant,
            sku,
            order_id,
            2,
            t0() + Duration::minutes(15),
            t0(),
        )
        .await
        .unwrap();
    assert_eq!(store.stock(&tenant, sku, t0()).await.unwrap().available, 0);
    assert_eq!(store.release_cards(&tenant, order_id).await.unwrap(), 2);
    assert_eq!(store.release_cards(&tenant, order_id).await.unwrap(), 0);
    let stock = store.stock(&tenant, sku, t0()).await.unwrap();
    assert_eq!((stock.available, stock.reserved), (2, 0));
    assert!(
        store
            .order_cards(&tenant, order_id)
            .await
            .unwrap()
            .is_empty()
    );
}

/// After its deadline a reservation no longer holds: another order can take the cards.
pub async fn expired_reservation_is_free_again(store: Arc<dyn Store>) {
    let tenant = fixtures::vault_tenant(&*store).await;
    let sku = first_sku(&card_goods(&tenant, PurchaseLimits::default()));
    store
        .insert_cards(&tenant, &cards(sku, 1), t0(), quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    let first = id(OrderId::generate);
    let until = t0() + Duration::minutes(15);
    let held = store
        .reserve_cards(&tenant, sku, first, 1, until, t0())
        .await
        .unwrap();
    let second = id(OrderId::generate);
    assert!(
        store
            .reserve_cards(&tenant, sku, second, 1, until, t0())
            .await
            .is_err()
    );
    let later = until + Duration::seconds(1);
    assert_eq!(store.stock(&tenant, sku, later).await.unwrap().available, 1);
    let taken = store
        .reserve_cards(
            &tenant,
            sku,
            second,
            1,
            later + Duration::minutes(15),
            later,
        )
        .await
        .unwrap();
    assert_eq!(taken, held);
    // The first order can no longer commit what it lost.
    assert!(matches!(
        store.commit_cards(&tenant, sku, first, 1, later).await,
        Err(Error::OutOfStock { .. })
    ));
    assert_eq!(
        store
            .commit_cards(&tenant, sku, second, 1, later)
            .await
            .unwrap(),
        held
    );
}

/// A commit after the deadline for more cards than were reserved takes each card once.
pub async fn late_commit_never_takes_a_card_twice(store: Arc<dyn Store>) {
    let tenant = fixtures::vault_tenant(&*store).await;
    let sku = first_sku(&card_goods(&tenant, PurchaseLimits::default()));
    store
        .insert_cards(&tenant, &cards(sku, 3), t0(), quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    let order_id = id(OrderId::generate);
    let until = t0() + Duration::minutes(15);
    let held = store
        .reserve_cards(&tenant, sku, order_id, 1, until, t0())
        .await
        .unwrap();
    let later = until + Duration::minutes(1);
    let sold = store
        .commit_cards(&tenant, sku, order_id, 2, later)
        .await
        .unwrap();
    assert_eq!(sold.len(), 2);
    assert_eq!(sold.iter().collect::<HashSet<_>>().len(), 2);
    assert!(sold.contains(&held[0]));
    let stock = store.stock(&tenant, sku, later).await.unwrap();
    assert_eq!((stock.available, stock.reserved, stock.sold), (1, 0, 2));
}

/// 50 tasks racing to buy 10 keys: exactly 10 get keys, no key twice, 40 a clean out-of-stock.
pub async fn concurrent_buyers_never_oversell(store: Arc<dyn Store>) {
    let tenant = fixtures::vault_tenant(&*store).await;
    let goods = card_goods(&tenant, PurchaseLimits::default());
    let sku = first_sku(&goods);
    store
        .insert_goods(&goods, quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    store
        .insert_cards(&tenant, &cards(sku, 10), t0(), quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for n in 0..50 {
        let store = store.clone();
        let (order, events) = order(&goods, &member(&format!("buyer-{n}")), 1);
        tasks.push(tokio::spawn(async move {
            let envs = envelopes(&order, &events);
            let new = NewOrder {
                order: &order,
                events: &envs,
                reservations: &[Reservation { sku, quantity: 1 }],
                member_limits: &[],
                priced_from: &[],
                claims: &[],
                budgets: &[],
                pricing_version: None,
            };
            let held = store.place_order(new, t0()).await?;
            let mut paid = order.clone();
            let n = notice(
                order.tenant(),
                order.id(),
                &format!("txn-{n}"),
                order.total().minor(),
            );
            let ev = paid
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
            let envs = envelopes(&paid, &ev);
            let change = OrderChange {
                order: &paid,
                expected_version: order.version(),
                events: &envs,
            };
            store
                .record_payment(pay(&n, Some(change), &held, None), t0())
                .await?;
            Ok::<_, Error>(held)
        }));
    }
    let mut sold = Vec::new();
    let mut out_of_stock = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(cards) => sold.extend(cards),
            Err(Error::OutOfStock { .. }) => out_of_stock += 1,
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!(sold.len(), 10);
    assert_eq!(out_of_stock, 40);
    assert_eq!(
        sold.iter().collect::<HashSet<_>>().len(),
        10,
        "a key was sold twice"
    );
    let stock = store.stock(&tenant, sku, t0()).await.unwrap();
    assert_eq!((stock.available, stock.reserved, stock.sold), (0, 0, 10));
}
