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
    "refunds_void_unrevealed_cards_and_queue_per_tenant",
    "budgets_are_taken_within_their_limit_and_returned_once",
    "pricing_rules_are_versioned_with_revisions_per_tenant",
    "placements_priced_from_changed_rules_are_refused",
    "coupons_are_issued_once_per_code_and_listed_per_member",
    "budgets_of_amounts_take_what_each_order_names",
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

mod cards;
mod claims;
mod events;
mod feed;
mod goods;
mod jobs;
mod keys;
mod later;
mod migrated;
mod orders;
mod packs;
mod payments;
mod placing;
mod pricing;
mod refunds;
mod rings;
mod search;
mod trails;
pub use cards::{
    commit_is_idempotent_and_final, concurrent_buyers_never_oversell,
    duplicate_blind_index_is_skipped, expired_reservation_is_free_again,
    late_commit_never_takes_a_card_twice, release_returns_cards_to_stock, reserve_is_idempotent,
    reserve_out_of_stock_changes_nothing,
};
pub use claims::{
    budgets_are_taken_within_their_limit_and_returned_once, claims_are_taken_once_with_the_sale,
    racing_placements_with_one_claim_place_one_order,
};
pub use feed::{
    audit_records_newest_first, consumer_cursors_move_by_compare_and_swap,
    events_feed_in_write_order, the_feed_is_gap_free_under_concurrent_writers,
};
pub use goods::{goods_round_trip, goods_stale_version_conflicts};
pub use jobs::{
    job_enqueue_is_idempotent, jobs_are_claimed_only_by_kinds_the_worker_runs,
    jobs_lease_retry_and_dead_letter,
};
pub use migrated::check_pricing_after_migration;
pub use orders::{
    member_limit_is_atomic, order_round_trip_with_events, order_stale_version_conflicts,
    orders_updated_in_a_period_page_in_order, unpaid_orders_due_in_deadline_order,
};
pub use payments::{
    bought_cards_arrive_with_their_order_change, payment_notice_recorded_once,
    payment_sells_only_held_cards, payment_with_stale_order_writes_nothing,
};
pub use placing::{
    concurrent_writes_get_their_own_answers, place_order_checks_goods_versions,
    place_order_is_all_or_nothing,
};
pub use pricing::{
    budgets_of_amounts_take_what_each_order_names,
    coupons_are_issued_once_per_code_and_listed_per_member,
    placements_priced_from_changed_rules_are_refused,
    pricing_rules_are_versioned_with_revisions_per_tenant,
};
pub use rings::{key_ring_versions_and_use_limit, reseal_replaces_ciphertext};

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
pub use refunds::{BeforeAfterSales, refunds_void_unrevealed_cards_and_queue_per_tenant};
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
