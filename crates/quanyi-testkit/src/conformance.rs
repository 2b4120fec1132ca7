//! The storage conformance suite: the definition of correct storage. Every adapter runs every case
//! through [`storage_conformance!`](crate::storage_conformance), one named test per case.

use std::collections::HashSet;
use std::sync::Arc;

use chrono::Duration;
use quanyi_core::{BatchId, EventEnvelope, OrderId, TenantId};
use quanyi_goods::{PurchaseLimits, Shelf};
use quanyi_order::{OrderStatus, Payment};
use quanyi_storage::{
    AuditAction, AuditOutcome, AuditRecord, CardState, Claim, Error, FeedEvent, FeedPosition,
    GOODS_CHANGED, GoodsVersion, JobStatus, MemberLimit, NewJob, NewOrder, NoticeDisposition,
    OrderChange, PaymentNotice, PaymentWrite, RecordOutcome, Reservation, Store,
};
use quanyi_vault::{KeyId, SealedCard, SealedValue};

use crate::fixtures::{self, card_goods, cards, envelopes, first_sku, id, member, order, t0};

/// Every case name, in the order the macro generates them.
pub const CASES: &[&str] = &[
    "goods_round_trip",
    "goods_stale_version_conflicts",
    "order_round_trip_with_events",
    "order_stale_version_conflicts",
    "member_limit_is_atomic",
    "duplicate_blind_index_is_skipped",
    "reserve_is_idempotent",
    "reserve_out_of_stock_changes_nothing",
    "commit_is_idempotent_and_final",
    "release_returns_cards_to_stock",
    "expired_reservation_is_free_again",
    "late_commit_never_takes_a_card_twice",
    "concurrent_buyers_never_oversell",
    "concurrent_writes_get_their_own_answers",
    "place_order_is_all_or_nothing",
    "place_order_checks_goods_versions",
    "payment_sells_only_held_cards",
    "bought_cards_arrive_with_their_order_change",
    "payment_notice_recorded_once",
    "payment_with_stale_order_writes_nothing",
    "unpaid_orders_due_in_deadline_order",
    "orders_updated_in_a_period_page_in_order",
    "events_feed_in_write_order",
    "audit_records_newest_first",
    "jobs_lease_retry_and_dead_letter",
    "job_enqueue_is_idempotent",
    "claims_are_taken_once_with_the_sale",
    "the_feed_is_gap_free_under_concurrent_writers",
    "consumer_cursors_move_by_compare_and_swap",
    "racing_placements_with_one_claim_place_one_order",
    "operators_search_orders",
    "pack_limits",
    "operator_changes_are_written_with_their_records",
    "cards_are_found_by_blind_index",
    "events_keep_their_schema_version_and_correlation",
    "jobs_are_claimed_only_by_kinds_the_worker_runs",
    "key_ring_versions_and_use_limit",
    "reseal_replaces_ciphertext",
    "tenants_are_isolated",
    "cards_need_the_active_key",
    "an_import_racing_a_rotation_never_stores_an_old_key",
    "legacy_indexes_find_stored_cards",
    "reindex_moves_cards_and_finds_duplicates",
    "withdrawn_cards_leave_sale_for_good",
    "a_destroyed_key_shreds_what_it_sealed",
    "closing_an_unpaid_order_releases_its_cards",
    "conflicting_notices_are_kept_for_reconciliation",
];

mod events;
mod keys;
mod later;
mod packs;
mod search;
mod trails;

pub use events::events_keep_their_schema_version_and_correlation;
pub use keys::{
    a_destroyed_key_shreds_what_it_sealed, an_import_racing_a_rotation_never_stores_an_old_key,
    cards_need_the_active_key, legacy_indexes_find_stored_cards,
    reindex_moves_cards_and_finds_duplicates, withdrawn_cards_leave_sale_for_good,
};
pub use later::{
    closing_an_unpaid_order_releases_its_cards, conflicting_notices_are_kept_for_reconciliation,
};
pub use packs::{OrdersBeforeLineTerms, pack_limits};
pub use search::{
    cards_are_found_by_blind_index, migrated_orders_are_found_by_placement, operators_search_orders,
};
pub use trails::operator_changes_are_written_with_their_records;

pub(crate) fn kind_of<T: std::fmt::Debug>(r: Result<T, Error>) -> quanyi_core::ErrorKind {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.kind(),
    }
}

/// Goods are stored, found by id and by SKU, listed, and updated with their version.
pub async fn goods_round_trip(store: Arc<dyn Store>) {
    let tenant = fixtures::tenant();
    let mut goods = card_goods(&tenant, PurchaseLimits::default());
    store
        .insert_goods(&goods, quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    assert_eq!(
        store.goods(&tenant, goods.id()).await.unwrap().as_ref(),
        Some(&goods)
    );
    let sku = first_sku(&goods);
    assert_eq!(
        store.goods_by_sku(&tenant, sku).await.unwrap().as_ref(),
        Some(&goods)
    );
    let before = goods.version();
    goods.set_shelf(sku, Shelf::Off).unwrap();
    store
        .update_goods(&goods, before, quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    let stored = store.goods(&tenant, goods.id()).await.unwrap().unwrap();
    assert_eq!(stored.sku(sku).unwrap().shelf, Shelf::Off);
    assert_eq!(stored.version(), goods.version());
    assert_eq!(
        store.list_goods(&tenant).await.unwrap(),
        vec![goods.clone()]
    );
    assert_eq!(
        kind_of(
            store
                .insert_goods(&goods, quanyi_storage::Trail::NONE)
                .await
        ),
        quanyi_core::ErrorKind::Conflict
    );
}

/// Writing goods with a stale version is a conflict and changes nothing.
pub async fn goods_stale_version_conflicts(store: Arc<dyn Store>) {
    let tenant = fixtures::tenant();
    let mut goods = card_goods(&tenant, PurchaseLimits::default());
    store
        .insert_goods(&goods, quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    let loaded = goods.version();
    let sku = first_sku(&goods);
    goods.set_shelf(sku, Shelf::Off).unwrap();
    store
        .update_goods(&goods, loaded, quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    let mut stale = goods.clone();
    stale.set_shelf(sku, Shelf::On).unwrap();
    assert_eq!(
        kind_of(
            store
                .update_goods(&stale, loaded, quanyi_storage::Trail::NONE)
                .await
        ),
        quanyi_core::ErrorKind::Conflict
    );
    let stored = store.goods(&tenant, goods.id()).await.unwrap().unwrap();
    assert_eq!(stored.sku(sku).unwrap().shelf, Shelf::Off);
    let unknown = card_goods(&tenant, PurchaseLimits::default());
    assert_eq!(
        kind_of(
            store
                .update_goods(&unknown, 1, quanyi_storage::Trail::NONE)
                .await
        ),
        quanyi_core::ErrorKind::NotFound
    );
}

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
        .update_order(OrderChange {
            order: &order,
            expected_version: loaded,
            events: &envs,
        })
        .await
        .unwrap();
    let mut other = stale_copy;
    let ev2 = other.expire(t0() + Duration::hours(1)).unwrap();
    let envs2 = envelopes(&other, &ev2);
    assert_eq!(
        kind_of(
            store
                .update_order(OrderChange {
                    order: &other,
                    expected_version: loaded,
                    events: &envs2
                })
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
        .update_order(OrderChange {
            order: &first,
            expected_version: v,
            events: &envs,
        })
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

/// Concurrent placements and payments with different fates each get their own answer, and a
/// refused one writes nothing, however the store schedules concurrent writes (a store may run
/// them together, as the PostgreSQL adapter does).
pub async fn concurrent_writes_get_their_own_answers(store: Arc<dyn Store>) {
    let tenant = fixtures::vault_tenant(&*store).await;
    let goods = card_goods(&tenant, PurchaseLimits::default());
    let scarce = card_goods(&tenant, PurchaseLimits::default());
    let (sku, scarce_sku) = (first_sku(&goods), first_sku(&scarce));
    store
        .insert_goods(&goods, quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    store
        .insert_goods(&scarce, quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    // Slack beyond what succeeds: a refused placement may hold a card for a moment.
    store
        .insert_cards(&tenant, &cards(sku, 16), t0(), quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    store
        .insert_cards(
            &tenant,
            &cards(scarce_sku, 3),
            t0(),
            quanyi_storage::Trail::NONE,
        )
        .await
        .unwrap();
    let current = GoodsVersion {
        id: goods.id(),
        version: goods.version(),
    };
    let stale = GoodsVersion {
        id: goods.id(),
        version: goods.version() + 1,
    };

    // Placements: (what, order, its events, SKU, goods priced from).
    let mut placements = Vec::new();
    let mut add =
        |what: &'static str, goods: &quanyi_goods::Goods, n: usize, priced: &[GoodsVersion]| {
            let mut made = Vec::new();
            for i in 0..n {
                let (o, ev) = order(goods, &member(&format!("{what}-{i}")), 1);
                let envs = envelopes(&o, &ev);
                made.push((o.clone(), envs.clone()));
                placements.push((what, o, envs, first_sku(goods), priced.to_vec()));
            }
            made
        };
    let plain = add("plain", &goods, 4, &[current]);
    add("scarce", &scarce, 8, &[]);
    add("stale", &goods, 3, &[stale]);
    let twin = add("twin", &goods, 1, &[current]).remove(0);
    // Two orders whose events share an id: one of them is refused.
    let (first, second) = {
        let mut made = add("shared", &goods, 2, &[current]);
        let second = made.remove(1);
        (made.remove(0), second)
    };
    // The same order placed twice: one of them is refused.
    placements.push(("twin", twin.0.clone(), twin.1.clone(), sku, vec![current]));
    let shared_id = first.1[0].id;
    for p in placements.iter_mut().filter(|p| p.1.id() == second.0.id()) {
        p.2[0].id = shared_id;
    }

    let mut tasks = Vec::new();
    for (what, o, envs, sku, priced) in placements {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let r = store
                .place_order(
                    NewOrder {
                        order: &o,
                        events: &envs,
                        reservations: &[Reservation { sku, quantity: 1 }],
                        member_limits: &[],
                        priced_from: &priced,
                        claims: &[],
                    },
                    t0(),
                )
                .await;
            (what, o, r)
        }));
    }
    let mut placed: Vec<(&str, quanyi_order::Order, Vec<quanyi_core::CardId>)> = Vec::new();
    let mut refused: Vec<(&str, quanyi_order::Order, Error)> = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            (what, o, Ok(cards)) => placed.push((what, o, cards)),
            (what, o, Err(e)) => refused.push((what, o, e)),
        }
    }
    let count = |list: &[(&str, quanyi_order::Order, Vec<quanyi_core::CardId>)], what: &str| {
        list.iter().filter(|p| p.0 == what).count()
    };
    assert_eq!(count(&placed, "plain"), 4, "{refused:?}");
    assert_eq!(count(&placed, "scarce"), 3, "{refused:?}");
    assert_eq!(count(&placed, "stale"), 0);
    assert_eq!(count(&placed, "twin"), 1);
    assert_eq!(count(&placed, "shared"), 1);
    assert!(placed.iter().all(|p| p.2.len() == 1));
    let all_cards: HashSet<_> = placed.iter().flat_map(|p| p.2.iter().copied()).collect();
    assert_eq!(all_cards.len(), placed.len(), "a card went to two orders");
    for (what, o, e) in &refused {
        match *what {
            "scarce" => assert!(matches!(e, Error::OutOfStock { .. }), "{e:?}"),
            "stale" => assert!(
                matches!(e, Error::Conflict { what: "goods", reason, .. } if *reason == GOODS_CHANGED),
                "{e:?}"
            ),
            "twin" | "shared" => assert_eq!(e.kind(), quanyi_core::ErrorKind::Conflict, "{e:?}"),
            other => panic!("{other} refused: {e:?}"),
        }
        if *what != "twin" {
            assert!(store.order(&tenant, o.id()).await.unwrap().is_none());
            assert!(store.held_cards(&tenant, o.id()).await.unwrap().is_empty());
        }
    }
    let stock = store.stock(&tenant, sku, t0()).await.unwrap();
    assert_eq!((stock.available, stock.reserved), (10, 6));
    let stock = store.stock(&tenant, scarce_sku, t0()).await.unwrap();
    assert_eq!((stock.available, stock.reserved), (0, 3));

    // Payments: (order, notice, cards to sell).
    let held_by = |id: OrderId| {
        placed
            .iter()
            .find(|p| p.1.id() == id)
            .map(|p| p.2.clone())
            .unwrap()
    };
    let scarce_placed: Vec<_> = placed.iter().filter(|p| p.0 == "scarce").collect();
    let twin_order = placed.iter().find(|p| p.0 == "twin").unwrap().1.clone();
    let mut payments = Vec::new();
    for (i, (o, _)) in plain.iter().enumerate() {
        payments.push((
            "plain",
            o.clone(),
            format!("txn-plain-{i}"),
            held_by(o.id()),
        ));
    }
    payments.push((
        "again",
        plain[0].0.clone(),
        "txn-plain-0".to_owned(),
        held_by(plain[0].0.id()),
    ));
    for txn in ["txn-twin-a", "txn-twin-b"] {
        payments.push((
            "twin",
            twin_order.clone(),
            txn.to_owned(),
            held_by(twin_order.id()),
        ));
    }
    // The first scarce winner offers another order's card.
    payments.push((
        "foreign",
        scarce_placed[0].1.clone(),
        "txn-foreign".to_owned(),
        scarce_placed[1].2.clone(),
    ));
    for (i, p) in scarce_placed.iter().enumerate().skip(1) {
        payments.push((
            "scarce",
            p.1.clone(),
            format!("txn-scarce-{i}"),
            p.2.clone(),
        ));
    }
    let mut tasks = Vec::new();
    for (what, o, txn, sell) in payments {
        let store = store.clone();
        let n = notice(&tenant, o.id(), &txn, o.total().minor());
        let (paid, envs) = fixtures::paid_by(&o, &n);
        tasks.push(tokio::spawn(async move {
            let change = OrderChange {
                order: &paid,
                expected_version: o.version(),
                events: &envs,
            };
            let r = store
                .record_payment(pay(&n, Some(change), &sell, None), t0())
                .await;
            (what, txn, r)
        }));
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    let recorded = |what: &str| {
        outcomes
            .iter()
            .filter(|o| o.0 == what && matches!(o.2, Ok(RecordOutcome::Recorded)))
            .count()
    };
    let conflicts = |what: &str| {
        outcomes
            .iter()
            .filter(|o| o.0 == what)
            .filter(|o| matches!(&o.2, Err(e) if e.kind() == quanyi_core::ErrorKind::Conflict))
            .count()
    };
    // The same notice twice: recorded once, the other call answered as a repeat.
    let plain_0: Vec<_> = outcomes
        .iter()
        .filter(|o| o.1 == "txn-plain-0")
        .map(|o| o.2.as_ref().unwrap())
        .collect();
    assert_eq!(plain_0.len(), 2);
    assert_eq!(
        plain_0
            .iter()
            .filter(|r| matches!(r, RecordOutcome::Recorded))
            .count(),
        1
    );
    assert!(
        plain_0.iter().any(
            |r| matches!(r, RecordOutcome::Duplicate(n) if &*n.transaction_id == "txn-plain-0")
        )
    );
    assert_eq!(recorded("plain") + recorded("again"), 4);
    assert_eq!((recorded("twin"), conflicts("twin")), (1, 1));
    assert_eq!((recorded("foreign"), conflicts("foreign")), (0, 1));
    assert_eq!(recorded("scarce"), 2);
    assert!(
        store
            .payment_notice(&tenant, "testpay", "txn-foreign")
            .await
            .unwrap()
            .is_none()
    );
    let twin_txn = outcomes
        .iter()
        .find(|o| o.0 == "twin" && o.2.is_ok())
        .map(|o| o.1.clone())
        .unwrap();
    let stored_twin = store
        .order(&tenant, twin_order.id())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored_twin.payment().map(|p| p.transaction_id.to_string()),
        Some(twin_txn)
    );
    assert_eq!(
        store
            .order(&tenant, scarce_placed[0].1.id())
            .await
            .unwrap()
            .unwrap()
            .status(),
        OrderStatus::AwaitingPayment
    );
    // Each paid order's events are stored once: placed, then paid.
    let events = store
        .aggregate_events(&tenant, "order", &plain[0].0.id().to_string())
        .await
        .unwrap();
    let names: Vec<&str> = events.iter().map(|e| &*e.name).collect();
    assert_eq!(names, ["order.placed", "order.paid"]);
    let stock = store.stock(&tenant, sku, t0()).await.unwrap();
    assert_eq!((stock.available, stock.reserved, stock.sold), (10, 1, 5));
    let stock = store.stock(&tenant, scarce_sku, t0()).await.unwrap();
    assert_eq!((stock.available, stock.reserved, stock.sold), (0, 1, 2));
}

/// Placing an order reserves every SKU's cards and stores the order, or does none of it.
pub async fn place_order_is_all_or_nothing(store: Arc<dyn Store>) {
    let tenant = fixtures::vault_tenant(&*store).await;
    let a = card_goods(&tenant, PurchaseLimits::default());
    let b = card_goods(
        &tenant,
        PurchaseLimits {
            per_order: None,
            per_member: Some(3),
            release_on_refund: false,
        },
    );
    let (sku_a, sku_b) = (first_sku(&a), first_sku(&b));
    store
        .insert_cards(&tenant, &cards(sku_a, 5), t0(), quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    store
        .insert_cards(&tenant, &cards(sku_b, 2), t0(), quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    let buyer = member("ivy");
    let two_lines = |qa: u32, qb: u32| {
        let line = |g: &quanyi_goods::Goods, q: u32| quanyi_order::NewLine {
            sku: g.skus()[0].id,
            goods: g.id(),
            kind: g.kind().tag(),
            title: g.title().to_owned(),
            quantity: q,
            unit_price: g.skus()[0].price,
            account: None,
            allocated: None,
            terms: g
                .sale_terms(g.skus()[0].id)
                .expect("the goods hold their first SKU"),
            pack: None,
            price_source: quanyi_order::PriceSource::ListPrice,
        };
        quanyi_order::Order::place(
            id(OrderId::generate),
            tenant.clone(),
            buyer.clone(),
            vec![line(&a, qa), line(&b, qb)],
            t0(),
            t0() + Duration::minutes(15),
        )
        .unwrap()
        .0
    };
    let short = two_lines(2, 3);
    let r = store
        .place_order(
            NewOrder {
                order: &short,
                events: &[],
                reservations: &[
                    Reservation {
                        sku: sku_a,
                        quantity: 2,
                    },
                    Reservation {
                        sku: sku_b,
                        quantity: 3,
                    },
                ],
                member_limits: &[],
                priced_from: &[],
                claims: &[],
            },
            t0(),
        )
        .await;
    assert!(
        matches!(r, Err(Error::OutOfStock { sku, .. }) if sku == sku_b),
        "{r:?}"
    );
    assert!(store.order(&tenant, short.id()).await.unwrap().is_none());
    assert_eq!(
        store.stock(&tenant, sku_a, t0()).await.unwrap().available,
        5
    );
    let limited = two_lines(1, 2);
    let limits = [MemberLimit {
        sku: sku_b,
        limit: 1,
        release_on_refund: false,
    }];
    let r = store
        .place_order(
            NewOrder {
                order: &limited,
                events: &[],
                reservations: &[
                    Reservation {
                        sku: sku_a,
                        quantity: 1,
                    },
                    Reservation {
                        sku: sku_b,
                        quantity: 2,
                    },
                ],
                member_limits: &limits,
                priced_from: &[],
                claims: &[],
            },
            t0(),
        )
        .await;
    assert!(matches!(r, Err(Error::MemberLimitExceeded { .. })), "{r:?}");
    assert_eq!(
        store.stock(&tenant, sku_a, t0()).await.unwrap().available,
        5
    );
    let ok = two_lines(2, 2);
    let envs = envelopes(&ok, &[]);
    let held = store
        .place_order(
            NewOrder {
                order: &ok,
                events: &envs,
                reservations: &[
                    Reservation {
                        sku: sku_a,
                        quantity: 2,
                    },
                    Reservation {
                        sku: sku_b,
                        quantity: 2,
                    },
                ],
                member_limits: &[MemberLimit {
                    sku: sku_b,
                    limit: 3,
                    release_on_refund: false,
                }],
                priced_from: &[],
                claims: &[],
            },
            t0(),
        )
        .await
        .unwrap();
    assert_eq!(held.len(), 4);
    let listed = store.held_cards(&tenant, ok.id()).await.unwrap();
    let mut want = held.clone();
    want.sort();
    assert_eq!(listed.iter().map(|c| c.id).collect::<Vec<_>>(), want);
    assert!(listed.iter().all(|c| c.state
        == CardState::Reserved {
            order: ok.id(),
            until: ok.expires_at()
        }));
    assert_eq!(listed.iter().filter(|c| c.sku == sku_b).count(), 2);
    assert_eq!(
        store.stock(&tenant, sku_b, t0()).await.unwrap().available,
        0
    );
    assert_eq!(
        store.order(&tenant, ok.id()).await.unwrap().as_ref(),
        Some(&ok)
    );
}

/// An order priced from goods that changed since (or are gone) is refused as a conflict on the
/// goods and writes nothing; priced from the current version it is placed.
pub async fn place_order_checks_goods_versions(store: Arc<dyn Store>) {
    let tenant = fixtures::vault_tenant(&*store).await;
    let mut goods = card_goods(&tenant, PurchaseLimits::default());
    let sku = first_sku(&goods);
    store
        .insert_goods(&goods, quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    store
        .insert_cards(&tenant, &cards(sku, 2), t0(), quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    let read = GoodsVersion {
        id: goods.id(),
        version: goods.version(),
    };
    goods.set_shelf(sku, Shelf::Off).unwrap();
    store
        .update_goods(&goods, read.version, quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    let buyer = member("quinn");
    let place = |order: quanyi_order::Order, priced_from: Vec<GoodsVersion>| {
        let store = store.clone();
        async move {
            let envs = envelopes(&order, &[]);
            let r = store
                .place_order(
                    NewOrder {
                        order: &order,
                        events: &envs,
                        reservations: &[Reservation { sku, quantity: 1 }],
                        member_limits: &[],
                        priced_from: &priced_from,
                        claims: &[],
                    },
                    t0(),
                )
                .await;
            (order.id(), r)
        }
    };
    let gone = GoodsVersion {
        id: card_goods(&tenant, PurchaseLimits::default()).id(),
        version: 1,
    };
    for stale in [
        vec![read],
        vec![gone],
        vec![
            GoodsVersion {
                id: goods.id(),
                version: goods.version(),
            },
            read,
        ],
    ] {
        let (order_id, r) = place(order(&goods, &buyer, 1).0, stale).await;
        assert!(
            matches!(&r, Err(Error::Conflict { what: "goods", reason, .. }) if *reason == GOODS_CHANGED),
            "{r:?}"
        );
        assert!(store.order(&tenant, order_id).await.unwrap().is_none());
        assert!(
            store
                .held_cards(&tenant, order_id)
                .await
                .unwrap()
                .is_empty()
        );
        let stock = store.stock(&tenant, sku, t0()).await.unwrap();
        assert_eq!((stock.available, stock.reserved), (2, 0));
    }
    let current = GoodsVersion {
        id: goods.id(),
        version: goods.version(),
    };
    let (order_id, r) = place(order(&goods, &buyer, 1).0, vec![current]).await;
    assert_eq!(r.unwrap().len(), 1);
    assert!(store.order(&tenant, order_id).await.unwrap().is_some());
    let stock = store.stock(&tenant, sku, t0()).await.unwrap();
    assert_eq!((stock.available, stock.reserved), (1, 1));
}

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

pub(crate) fn pay<'a>(
    notice: &'a PaymentNotice,
    change: Option<OrderChange<'a>>,
    sell: &'a [quanyi_core::CardId],
    job: Option<&'a quanyi_storage::NewJob>,
) -> PaymentWrite<'a> {
    PaymentWrite {
        notice,
        change,
        sell,
        job,
    }
}

pub(crate) fn notice(tenant: &TenantId, order: OrderId, txn: &str, minor: i64) -> PaymentNotice {
    PaymentNotice {
        tenant: tenant.clone(),
        provider: "testpay".into(),
        transaction_id: txn.into(),
        order,
        amount: quanyi_core::Money::from_minor(minor, quanyi_core::Currency::CNY),
        received_at: t0(),
        disposition: NoticeDisposition::Applied,
    }
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
        .update_order(OrderChange {
            order: &b2,
            expected_version: v,
            events: &envs,
        })
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
            .update_order(OrderChange {
                order: &changed,
                expected_version: o.version(),
                events: &envs,
            })
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

/// The event feed returns every event once, in write order, from any point.
pub async fn events_feed_in_write_order(store: Arc<dyn Store>) {
    let tenant = fixtures::tenant();
    let goods = card_goods(&tenant, PurchaseLimits::default());
    let mut written: Vec<EventEnvelope> = Vec::new();
    for n in 0..3 {
        let (order, events) = order(&goods, &member(&format!("g{n}")), 1);
        let envs = envelopes(&order, &events);
        store.insert_order(&order, &envs, &[]).await.unwrap();
        written.extend(envs);
    }
    let extra = envelopes(&order(&goods, &member("g9"), 1).0, &[]);
    store.append_events(&extra).await.unwrap();
    // A batch whose ids descend is stored and listed in write order all the same.
    let mut backwards: Vec<EventEnvelope> = (0..3)
        .flat_map(|n| {
            let (o, ev) = order(&goods, &member(&format!("b{n}")), 1);
            envelopes(&o, &ev)
        })
        .collect();
    backwards.sort_by_key(|e| std::cmp::Reverse(e.id));
    assert!(backwards.len() >= 3);
    store.append_events(&backwards).await.unwrap();
    written.extend(backwards.iter().cloned());
    // Walk the whole feed in pages and keep this tenant's events.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store.events_after(after, 7).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        seen.extend(page.into_iter().filter(|e| e.tenant == tenant));
    }
    assert_eq!(seen, written);
    // Every stored id is refused again, in or out of order, and the feed starts after any.
    for e in [&written[0], &backwards[0], &backwards[1], &backwards[2]] {
        assert_eq!(
            kind_of(store.append_events(std::slice::from_ref(e)).await),
            quanyi_core::ErrorKind::Conflict
        );
    }
    let after_middle = store.events_after(Some(backwards[1].id), 10).await.unwrap();
    assert_eq!(after_middle.first(), Some(&backwards[2]));
}

/// Audit records are kept and listed newest first, per tenant.
pub async fn audit_records_newest_first(store: Arc<dyn Store>) {
    let tenant = fixtures::tenant();
    let mut records = Vec::new();
    for (n, outcome) in [AuditOutcome::Allowed, AuditOutcome::Denied]
        .into_iter()
        .enumerate()
    {
        let r = AuditRecord {
            id: id(quanyi_core::AuditId::generate),
            tenant: tenant.clone(),
            at: t0() + Duration::seconds(n as i64),
            actor: "alice".into(),
            action: AuditAction::Reveal,
            subject: id(OrderId::generate).to_string(),
            outcome,
            detail: "2 cards".into(),
        };
        store.append_audit(&r).await.unwrap();
        records.push(r);
    }
    records.reverse();
    assert_eq!(store.audit_records(&tenant, 10).await.unwrap(), records);
    assert_eq!(store.audit_records(&tenant, 1).await.unwrap().len(), 1);
    assert!(
        store
            .audit_records(&fixtures::tenant(), 10)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Claims take due jobs under a lease; expired leases are claimable again; only the holder
/// completes, retries or dead-letters.
pub async fn jobs_lease_retry_and_dead_letter(store: Arc<dyn Store>) {
    let tenant = fixtures::tenant();
    let job = fixtures::job(&tenant, "deliver:lease", t0());
    store.enqueue(&job, t0()).await.unwrap();
    let lease = Duration::seconds(30);
    // Not due before run_at.
    assert!(
        store
            .claim_job(job.id, "w1", t0() - Duration::seconds(1), lease)
            .await
            .unwrap()
            .is_none()
    );
    let claimed = store
        .claim_job(job.id, "w1", t0(), lease)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claimed.attempts, 1);
    // Held: another worker cannot claim or complete it.
    assert!(
        store
            .claim_job(job.id, "w2", t0() + Duration::seconds(10), lease)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        kind_of(store.complete_job(job.id, "w2").await),
        quanyi_core::ErrorKind::Conflict
    );
    store
        .heartbeat(job.id, "w1", t0() + Duration::seconds(60))
        .await
        .unwrap();
    assert!(
        store
            .claim_job(job.id, "w2", t0() + Duration::seconds(45), lease)
            .await
            .unwrap()
            .is_none()
    );
    // The lease runs out: w2 takes it over, w1 has lost it.
    let taken = store
        .claim_job(job.id, "w2", t0() + Duration::seconds(61), lease)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(taken.attempts, 2);
    assert_eq!(
        kind_of(
            store
                .heartbeat(job.id, "w1", t0() + Duration::minutes(5))
                .await
        ),
        quanyi_core::ErrorKind::Conflict
    );
    store
        .retry_job(
            job.id,
            "w2",
            t0() + Duration::minutes(5),
            "supplier timeout",
        )
        .await
        .unwrap();
    let stored = store.job(job.id).await.unwrap().unwrap();
    assert_eq!(stored.status, JobStatus::Queued);
    assert_eq!(stored.last_error.as_deref(), Some("supplier timeout"));
    // claim_jobs finds it when due, with other tenants' jobs possibly around.
    let later = t0() + Duration::minutes(5);
    let mut found = None;
    for _ in 0..100 {
        let batch = store
            .claim_jobs("w3", &["deliver_order"], later, lease, 50)
            .await
            .unwrap();
        if batch.is_empty() {
            break;
        }
        if let Some(j) = batch.into_iter().find(|j| j.id == job.id) {
            found = Some(j);
            break;
        }
    }
    let found = found.expect("due job claimed");
    assert_eq!(found.attempts, 3);
    store.dead_letter(job.id, "w3", "gave up").await.unwrap();
    let dead = store.dead_jobs(&tenant, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].status,
        JobStatus::Dead {
            reason: "gave up".into()
        }
    );
    assert!(
        store
            .claim_job(job.id, "w4", later + Duration::days(1), lease)
            .await
            .unwrap()
            .is_none()
    );
    // A completed job is never claimed again.
    let done = fixtures::job(&tenant, "deliver:done", t0());
    store.enqueue(&done, t0()).await.unwrap();
    store
        .claim_job(done.id, "w1", t0(), lease)
        .await
        .unwrap()
        .unwrap();
    store.complete_job(done.id, "w1").await.unwrap();
    assert_eq!(
        store.job(done.id).await.unwrap().unwrap().status,
        JobStatus::Done
    );
    assert!(
        store
            .claim_job(done.id, "w1", t0() + Duration::days(1), lease)
            .await
            .unwrap()
            .is_none()
    );
}

/// A worker claims only the job kinds it names: a due job of another kind (a kind a newer
/// release added, say) stays queued, and its expired lease is not taken over, until a worker
/// that names its kind claims it. No kinds claims nothing.
pub async fn jobs_are_claimed_only_by_kinds_the_worker_runs(store: Arc<dyn Store>) {
    let tenant = fixtures::tenant();
    let lease = Duration::seconds(60);
    let old = fixtures::job(&tenant, "deliver:old", t0());
    let newer = NewJob {
        kind: "grant_monthly".into(),
        ..fixtures::job(&tenant, "grant:newer", t0() - Duration::seconds(1))
    };
    store.enqueue(&old, t0()).await.unwrap();
    store.enqueue(&newer, t0()).await.unwrap();
    assert!(
        store
            .claim_jobs("w0", &[], t0(), lease, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let claimed = store
        .claim_jobs("w1", &["deliver_order"], t0(), lease, 10)
        .await
        .unwrap();
    assert_eq!(
        claimed.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![old.id]
    );
    let untouched = store.job(newer.id).await.unwrap().unwrap();
    assert_eq!(untouched.status, JobStatus::Queued);
    assert_eq!(untouched.attempts, 0);
    // A worker that runs both kinds takes the newer one; its lease runs out.
    let both = store
        .claim_jobs("w2", &["grant_monthly", "deliver_order"], t0(), lease, 10)
        .await
        .unwrap();
    assert_eq!(
        both.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![newer.id]
    );
    // After both leases expire, the old worker takes over only its own kind.
    let later = t0() + Duration::minutes(5);
    let again = store
        .claim_jobs("w1", &["deliver_order"], later, lease, 10)
        .await
        .unwrap();
    assert_eq!(
        again.iter().map(|j| (j.id, j.attempts)).collect::<Vec<_>>(),
        vec![(old.id, 2)]
    );
    let leased = store.job(newer.id).await.unwrap().unwrap();
    assert_eq!(
        leased.status,
        JobStatus::Running {
            worker: "w2".into(),
            lease_until: t0() + lease
        }
    );
    let taken = store
        .claim_jobs("w3", &["grant_monthly"], later, lease, 10)
        .await
        .unwrap();
    assert_eq!(
        taken.iter().map(|j| (j.id, j.attempts)).collect::<Vec<_>>(),
        vec![(newer.id, 2)]
    );
}

/// One event of an order of `goods` that is not stored (an event of no stored change).
fn loose_event(goods: &quanyi_goods::Goods) -> EventEnvelope {
    let (o, events) = order(goods, &member("loose"), 1);
    envelopes(&o, &events).remove(0)
}

/// Reads a tenant's feed from `after` until it holds `want` events or `reads` reads are done.
async fn drain_feed(
    store: &dyn Store,
    tenant: &TenantId,
    after: FeedPosition,
    want: usize,
    reads: usize,
) -> Vec<FeedEvent> {
    let mut got: Vec<FeedEvent> = Vec::new();
    let mut cursor = after;
    for _ in 0..reads {
        if got.len() >= want {
            break;
        }
        let batch = store.read_feed(tenant, cursor, 64).await.unwrap();
        match batch.last() {
            Some(last) => cursor = last.position,
            // Nothing new yet (a write still in progress): read again.
            None => tokio::task::yield_now().await,
        }
        got.extend(batch);
    }
    got
}

/// Eight writers append events (orders with their events, and events of no aggregate) while a
/// reader follows the feed from its cursor: afterwards the reader has seen every event exactly
/// once, in ascending positions, and none of another tenant's.
pub async fn the_feed_is_gap_free_under_concurrent_writers(store: Arc<dyn Store>) {
    let tenant = fixtures::tenant();
    let other = fixtures::tenant();
    let goods = Arc::new(card_goods(&tenant, PurchaseLimits::default()));
    let theirs = Arc::new(card_goods(&other, PurchaseLimits::default()));
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (store, goods, done, theirs) =
                (store.clone(), goods.clone(), done.clone(), theirs.clone());
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for n in 0..12 {
                    let (o, events) = order(&goods, &member(&format!("w{w}-{n}")), 1);
                    let envs = envelopes(&o, &events);
                    store.insert_order(&o, &envs, &[]).await.unwrap();
                    ids.extend(envs.iter().map(|e| e.id));
                    let loose = loose_event(&goods);
                    store
                        .append_events(std::slice::from_ref(&loose))
                        .await
                        .unwrap();
                    ids.push(loose.id);
                    let noise = loose_event(&theirs);
                    store.append_events(&[noise]).await.unwrap();
                }
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                ids
            })
        })
        .collect();
    // The reader races the writers.
    let mut seen: Vec<FeedEvent> = Vec::new();
    let mut cursor = FeedPosition::START;
    while done.load(std::sync::atomic::Ordering::SeqCst) < 8 {
        let batch = store.read_feed(&tenant, cursor, 16).await.unwrap();
        if let Some(last) = batch.last() {
            cursor = last.position;
        }
        seen.extend(batch);
        tokio::task::yield_now().await;
    }
    let mut written = HashSet::new();
    for w in writers {
        written.extend(w.await.unwrap());
    }
    let rest = written.len().saturating_sub(seen.len());
    seen.extend(drain_feed(&*store, &tenant, cursor, rest, 100_000).await);
    let ids: Vec<_> = seen.iter().map(|e| e.event.id).collect();
    assert_eq!(ids.len(), written.len(), "every event exactly once");
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), ids.len());
    assert!(ids.iter().all(|id| written.contains(id)));
    assert!(seen.iter().all(|e| e.event.tenant == tenant));
    assert!(
        seen.windows(2).all(|p| p[0].position < p[1].position),
        "ascending positions"
    );
    assert!(seen[0].position > FeedPosition::START);
    // The head is the last position; nothing comes after it until something is written.
    assert_eq!(
        store.feed_head(&tenant).await.unwrap(),
        seen.last().unwrap().position
    );
    assert!(
        store
            .read_feed(&tenant, seen.last().unwrap().position, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // Reading again from any position gives the same events after it.
    let middle = seen.len() / 2;
    let again = drain_feed(
        &*store,
        &tenant,
        seen[middle].position,
        seen.len() - middle - 1,
        1000,
    )
    .await;
    assert_eq!(
        again.iter().map(|e| e.event.id).collect::<Vec<_>>(),
        ids[middle + 1..]
    );
}

/// A consumer's cursor is stored per tenant and name and moves only from the position the
/// mover read: a second process moving it from a stale position gets a conflict. A consumer
/// that starts at the feed's head sees only what is written after.
pub async fn consumer_cursors_move_by_compare_and_swap(store: Arc<dyn Store>) {
    let tenant = fixtures::tenant();
    let other = fixtures::tenant();
    let goods = card_goods(&tenant, PurchaseLimits::default());
    assert_eq!(store.feed_head(&tenant).await.unwrap(), FeedPosition::START);
    for _ in 0..3 {
        store.append_events(&[loose_event(&goods)]).await.unwrap();
    }
    let feed = drain_feed(&*store, &tenant, FeedPosition::START, 3, 100_000).await;
    assert_eq!(feed.len(), 3);
    let head = store.feed_head(&tenant).await.unwrap();
    assert_eq!(head, feed[2].position);
    assert_eq!(
        store.consumer_cursor(&tenant, "growth").await.unwrap(),
        None
    );
    store
        .save_consumer_cursor(&tenant, "growth", None, feed[0].position)
        .await
        .unwrap();
    assert_eq!(
        kind_of(
            store
                .save_consumer_cursor(&tenant, "growth", None, feed[1].position)
                .await
        ),
        quanyi_core::ErrorKind::Conflict
    );
    store
        .save_consumer_cursor(&tenant, "growth", Some(feed[0].position), feed[1].position)
        .await
        .unwrap();
    assert_eq!(
        kind_of(
            store
                .save_consumer_cursor(&tenant, "growth", Some(feed[0].position), feed[2].position)
                .await
        ),
        quanyi_core::ErrorKind::Conflict
    );
    assert_eq!(
        store.consumer_cursor(&tenant, "growth").await.unwrap(),
        Some(feed[1].position)
    );
    // Another tenant's consumer of the same name is its own, and sees none of these events.
    assert_eq!(store.consumer_cursor(&other, "growth").await.unwrap(), None);
    assert!(
        store
            .read_feed(&other, FeedPosition::START, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // A consumer starting at the head sees only what comes after it.
    store
        .save_consumer_cursor(&tenant, "messages", None, head)
        .await
        .unwrap();
    let later = loose_event(&goods);
    store
        .append_events(std::slice::from_ref(&later))
        .await
        .unwrap();
    let next = drain_feed(&*store, &tenant, head, 1, 100_000).await;
    assert_eq!(
        next.iter().map(|e| e.event.id).collect::<Vec<_>>(),
        [later.id]
    );
    for bad in ["", "has space", &"n".repeat(65)] {
        assert_eq!(
            kind_of(store.consumer_cursor(&tenant, bad).await),
            quanyi_core::ErrorKind::Invalid
        );
        assert_eq!(
            kind_of(store.save_consumer_cursor(&tenant, bad, None, head).await),
            quanyi_core::ErrorKind::Invalid
        );
    }
}

/// A claim for the placement's idempotency key, holding `value`.
fn placement_claim(key: &str, value: &str) -> Claim {
    Claim {
        scope: "placement".into(),
        key: key.into(),
        value: value.into(),
    }
}

/// Places an order for `quantity` cards of the goods' SKU taking `claims`.
async fn place_claiming(
    store: &dyn Store,
    goods: &quanyi_goods::Goods,
    buyer: &str,
    quantity: u32,
    claims: &[Claim],
) -> (
    quanyi_order::Order,
    quanyi_storage::Result<Vec<quanyi_core::CardId>>,
) {
    let (order, events) = order(goods, &member(buyer), quantity);
    let envs = envelopes(&order, &events);
    let placed = store
        .place_order(
            NewOrder {
                order: &order,
                events: &envs,
                reservations: &[Reservation {
                    sku: first_sku(goods),
                    quantity,
                }],
                member_limits: &[],
                priced_from: &[],
                claims,
            },
            t0(),
        )
        .await;
    (order, placed)
}

/// A claim is taken once per (tenant, scope, key), only with a placement that is written, and
/// keeps its value: a second placement taking it is refused with the stored claim and writes
/// nothing; a refused placement takes no claim; another tenant's same key is its own; malformed
/// or repeated claims are refused.
pub async fn claims_are_taken_once_with_the_sale(store: Arc<dyn Store>) {
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
    let first = placement_claim("retry-1", "fingerprint-a");
    let (placed, r) = place_claiming(&*store, &goods, "kim", 1, std::slice::from_ref(&first)).await;
    assert_eq!(r.unwrap().len(), 1);
    assert_eq!(
        store.claim(&tenant, "placement", "retry-1").await.unwrap(),
        Some(first.clone())
    );
    assert_eq!(
        store.claim(&tenant, "placement", "retry-2").await.unwrap(),
        None
    );
    // The same key again, whatever the value: refused with the stored claim, nothing written.
    let (again, r) = place_claiming(
        &*store,
        &goods,
        "kim",
        1,
        &[placement_claim("retry-1", "fingerprint-b")],
    )
    .await;
    match r {
        Err(Error::Claimed { claim }) => assert_eq!(*claim, first),
        other => panic!("expected Claimed, got {other:?}"),
    }
    assert!(store.order(&tenant, again.id()).await.unwrap().is_none());
    let stock = store.stock(&tenant, sku, t0()).await.unwrap();
    assert_eq!((stock.available, stock.reserved), (2, 1));
    // A placement refused for stock takes no claim.
    let (_, r) = place_claiming(
        &*store,
        &goods,
        "lee",
        5,
        &[placement_claim("retry-2", "fingerprint-c")],
    )
    .await;
    assert!(matches!(r, Err(Error::OutOfStock { .. })), "{r:?}");
    assert_eq!(
        store.claim(&tenant, "placement", "retry-2").await.unwrap(),
        None
    );
    // Malformed and repeated claims are refused before anything is written.
    for bad in [
        vec![placement_claim("", "v")],
        vec![placement_claim(&"k".repeat(201), "v")],
        vec![Claim {
            scope: "Not A Scope".into(),
            ..placement_claim("k", "v")
        }],
        vec![placement_claim("k", &"v".repeat(2_001))],
        vec![placement_claim("twice", "a"), placement_claim("twice", "b")],
    ] {
        let (order, r) = place_claiming(&*store, &goods, "max", 1, &bad).await;
        assert!(matches!(r, Err(Error::Invalid(_))), "{r:?}");
        assert!(store.order(&tenant, order.id()).await.unwrap().is_none());
    }
    assert_eq!(
        store.claim(&tenant, "placement", "twice").await.unwrap(),
        None
    );
    let stock = store.stock(&tenant, sku, t0()).await.unwrap();
    assert_eq!((stock.available, stock.reserved), (2, 1));
    // Another tenant's same key is a claim of its own.
    let other = fixtures::vault_tenant(&*store).await;
    let theirs = card_goods(&other, PurchaseLimits::default());
    store
        .insert_goods(&theirs, quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    store
        .insert_cards(
            &other,
            &cards(first_sku(&theirs), 1),
            t0(),
            quanyi_storage::Trail::NONE,
        )
        .await
        .unwrap();
    let mine = placement_claim("retry-1", "fingerprint-other");
    let (_, r) = place_claiming(&*store, &theirs, "kim", 1, std::slice::from_ref(&mine)).await;
    assert_eq!(r.unwrap().len(), 1);
    assert_eq!(
        store.claim(&other, "placement", "retry-1").await.unwrap(),
        Some(mine)
    );
    assert_eq!(
        store.claim(&tenant, "placement", "retry-1").await.unwrap(),
        Some(first)
    );
    assert!(placed.id() != again.id());
}

/// Ten placements racing with one claim (a client retrying at once): exactly one is written;
/// every other is refused with the winner's claim and holds no card.
pub async fn racing_placements_with_one_claim_place_one_order(store: Arc<dyn Store>) {
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
    let goods = Arc::new(goods);
    let tasks: Vec<_> = (0..10)
        .map(|n| {
            let (store, goods) = (store.clone(), goods.clone());
            tokio::spawn(async move {
                let claim = placement_claim("same-key", &format!("attempt-{n}"));
                let (order, r) = place_claiming(&*store, &goods, "nia", 1, &[claim]).await;
                (order.id(), r)
            })
        })
        .collect();
    let mut placed = Vec::new();
    let mut refused = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            (id, Ok(cards)) => placed.push((id, cards)),
            (id, Err(Error::Claimed { claim })) => refused.push((id, claim)),
            (_, Err(e)) => panic!("unexpected answer: {e:?}"),
        }
    }
    assert_eq!(placed.len(), 1, "one placement is written");
    assert_eq!(refused.len(), 9);
    let stored = store
        .claim(&tenant, "placement", "same-key")
        .await
        .unwrap()
        .unwrap();
    for (id, claim) in &refused {
        assert_eq!(**claim, stored);
        assert!(store.order(&tenant, *id).await.unwrap().is_none());
        assert!(store.held_cards(&tenant, *id).await.unwrap().is_empty());
    }
    assert_eq!(placed[0].1.len(), 1);
    let stock = store.stock(&tenant, sku, t0()).await.unwrap();
    assert_eq!((stock.available, stock.reserved), (9, 1));
}

/// Enqueuing the same dedupe key twice returns the first job.
pub async fn job_enqueue_is_idempotent(store: Arc<dyn Store>) {
    let tenant = fixtures::tenant();
    let a = fixtures::job(&tenant, "deliver:x", t0());
    let b = fixtures::job(&tenant, "deliver:x", t0());
    assert_eq!(store.enqueue(&a, t0()).await.unwrap(), a.id);
    assert_eq!(store.enqueue(&b, t0()).await.unwrap(), a.id);
    assert!(store.job(b.id).await.unwrap().is_none());
    let other = fixtures::tenant();
    let c = fixtures::job(&other, "deliver:x", t0());
    assert_eq!(store.enqueue(&c, t0()).await.unwrap(), c.id);
}

/// A key ring is stored once per tenant, updated by version, and its use counter never passes
/// the limit.
pub async fn key_ring_versions_and_use_limit(store: Arc<dyn Store>) {
    let tenant = fixtures::tenant();
    let root = quanyi_vault::RootKey::from_bytes([7; 32]);
    let (ring, wrapped) =
        quanyi_vault::KeyRing::create(tenant.clone(), &root, t0(), &mut rand::thread_rng())
            .unwrap();
    assert!(store.key_ring(&tenant).await.unwrap().is_none());
    store.insert_key_ring(&wrapped).await.unwrap();
    assert_eq!(
        kind_of(store.insert_key_ring(&wrapped).await),
        quanyi_core::ErrorKind::Conflict
    );
    let (loaded, v1) = store.key_ring(&tenant).await.unwrap().unwrap();
    assert_eq!(v1, 1);
    assert_eq!(loaded, wrapped);
    let key = ring.active_key_id();
    assert_eq!(
        store.reserve_key_uses(&tenant, key, 60, 100).await.unwrap(),
        60
    );
    assert_eq!(
        kind_of(store.reserve_key_uses(&tenant, key, 41, 100).await),
        quanyi_core::ErrorKind::Exhausted
    );
    assert_eq!(
        store.reserve_key_uses(&tenant, key, 40, 100).await.unwrap(),
        100
    );
    let (after, v3) = store.key_ring(&tenant).await.unwrap().unwrap();
    assert_eq!(v3, 3, "each reservation bumps the version");
    assert_eq!(
        after.keys.iter().find(|k| k.id == key).unwrap().encryptions,
        100
    );
    // A writer that loaded version 1 cannot overwrite the counters.
    assert_eq!(
        kind_of(
            store
                .update_key_ring(&wrapped, 1, quanyi_storage::Trail::NONE)
                .await
        ),
        quanyi_core::ErrorKind::Conflict
    );
    assert_eq!(
        store
            .update_key_ring(&after, 3, quanyi_storage::Trail::NONE)
            .await
            .unwrap(),
        4
    );
    // After a rotation the old key takes no more uses.
    let root_ring = quanyi_vault::KeyRing::unwrap(&root, &after).unwrap();
    let mut rotated = root_ring;
    let new_key = rotated
        .rotate(&root, t0(), &mut rand::thread_rng())
        .unwrap();
    assert_eq!(
        store
            .update_key_ring(&rotated.to_wrapped(), 4, quanyi_storage::Trail::NONE)
            .await
            .unwrap(),
        5
    );
    assert_eq!(
        kind_of(store.reserve_key_uses(&tenant, key, 1, 1000).await),
        quanyi_core::ErrorKind::Conflict
    );
    assert_eq!(
        store
            .reserve_key_uses(&tenant, new_key, 1, 1000)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        kind_of(store.reserve_key_uses(&tenant, KeyId(999), 1, 100).await),
        quanyi_core::ErrorKind::NotFound
    );
}

/// Resealed values replace the old ones only if the card is still under the expected key.
pub async fn reseal_replaces_ciphertext(store: Arc<dyn Store>) {
    let tenant = fixtures::vault_tenant(&*store).await;
    let sku = first_sku(&card_goods(&tenant, PurchaseLimits::default()));
    let batch = cards(sku, 3);
    store
        .insert_cards(&tenant, &batch, t0(), quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    let old = store.cards_sealed_with(&tenant, KeyId(1), 2).await.unwrap();
    assert_eq!(old.len(), 2);
    assert_eq!(fixtures::rotate_ring(&*store, &tenant).await, KeyId(2));
    let fresh = SealedCard {
        code: SealedValue::from_bytes(vec![9; 40]),
        secret: None,
    };
    store
        .replace_sealed(&tenant, old[0].id, KeyId(1), &fresh, KeyId(2))
        .await
        .unwrap();
    let card = store.card(&tenant, old[0].id).await.unwrap().unwrap();
    assert_eq!((card.key_id, &card.sealed), (KeyId(2), &fresh));
    assert_eq!(
        kind_of(
            store
                .replace_sealed(&tenant, old[0].id, KeyId(1), &fresh, KeyId(2))
                .await
        ),
        quanyi_core::ErrorKind::Conflict
    );
    assert_eq!(
        store
            .cards_sealed_with(&tenant, KeyId(1), 10)
            .await
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        store
            .cards_sealed_with(&tenant, KeyId(2), 10)
            .await
            .unwrap()
            .len(),
        1
    );
}

/// Nothing of one tenant is visible to another.
pub async fn tenants_are_isolated(store: Arc<dyn Store>) {
    let a = fixtures::vault_tenant(&*store).await;
    let b = fixtures::vault_tenant(&*store).await;
    let goods = card_goods(&a, PurchaseLimits::default());
    let sku = first_sku(&goods);
    store
        .insert_goods(&goods, quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    let batch = cards(sku, 2);
    store
        .insert_cards(&a, &batch, t0(), quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    let (order, _) = order(&goods, &member("h"), 1);
    store.insert_order(&order, &[], &[]).await.unwrap();
    assert!(store.goods(&b, goods.id()).await.unwrap().is_none());
    assert!(store.goods_by_sku(&b, sku).await.unwrap().is_none());
    assert!(store.order(&b, order.id()).await.unwrap().is_none());
    assert!(store.card(&b, batch[0].id).await.unwrap().is_none());
    assert_eq!(store.stock(&b, sku, t0()).await.unwrap().available, 0);
    assert!(
        store
            .reserve_cards(&b, sku, order.id(), 1, order.expires_at(), t0())
            .await
            .is_err()
    );
    // The same blind index is not a duplicate in another tenant.
    let same = vec![fixtures::card_with_index(
        sku,
        id(BatchId::generate),
        *batch[0].blind_index.as_bytes(),
    )];
    assert_eq!(
        store
            .insert_cards(&b, &same, t0(), quanyi_storage::Trail::NONE)
            .await
            .unwrap()
            .inserted
            .len(),
        1
    );
}
