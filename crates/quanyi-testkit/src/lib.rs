#![doc = include_str!("../README.md")]
// Test support: a failed expectation here is a failed test, so panicking is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod conformance;
pub mod durable;
pub mod fixtures;
pub mod harness;
pub mod hooked;
pub mod shop_cases;
pub mod supplier_sim;

pub use harness::{
    Durable, Harness, run_case, run_durable_case, service_url, services_required, unique_name,
};

/// Generates one `#[tokio::test]` per conformance case for a storage adapter.
///
/// `$factory` is an async function returning `Option<Harness>`; `None` means the adapter's
/// service is not configured and the case is skipped (see [`service_url`]). Each case runs in a
/// task of its own; the harness's clean-up runs afterwards whether the case passed or not.
#[macro_export]
macro_rules! storage_conformance {
    ($factory:expr) => {
        $crate::storage_conformance!(@cases $factory;
            goods_round_trip,
            goods_stale_version_conflicts,
            order_round_trip_with_events,
            order_stale_version_conflicts,
            member_limit_is_atomic,
            duplicate_blind_index_is_skipped,
            reserve_is_idempotent,
            reserve_out_of_stock_changes_nothing,
            commit_is_idempotent_and_final,
            release_returns_cards_to_stock,
            expired_reservation_is_free_again,
            late_commit_never_takes_a_card_twice,
            concurrent_buyers_never_oversell,
            concurrent_writes_get_their_own_answers,
            place_order_is_all_or_nothing,
            place_order_checks_goods_versions,
            payment_sells_only_held_cards,
            bought_cards_arrive_with_their_order_change,
            payment_notice_recorded_once,
            payment_with_stale_order_writes_nothing,
            unpaid_orders_due_in_deadline_order,
            orders_updated_in_a_period_page_in_order,
            events_feed_in_write_order,
            audit_records_newest_first,
            jobs_lease_retry_and_dead_letter,
            job_enqueue_is_idempotent,
            jobs_are_claimed_only_by_kinds_the_worker_runs,
            claims_are_taken_once_with_the_sale,
            the_feed_is_gap_free_under_concurrent_writers,
            consumer_cursors_move_by_compare_and_swap,
            racing_placements_with_one_claim_place_one_order,
            operators_search_orders,
            pack_limits,
            operator_changes_are_written_with_their_records,
            refunds_void_unrevealed_cards_and_queue_per_tenant,
            budgets_are_taken_within_their_limit_and_returned_once,
            pricing_rules_are_versioned_with_revisions_per_tenant,
            placements_priced_from_changed_rules_are_refused,
            coupons_are_issued_once_per_code_and_listed_per_member,
            budgets_of_amounts_take_what_each_order_names,
            cards_are_found_by_blind_index,
            events_keep_their_schema_version_and_correlation,
            key_ring_versions_and_use_limit,
            reseal_replaces_ciphertext,
            tenants_are_isolated,
            cards_need_the_active_key,
            an_import_racing_a_rotation_never_stores_an_old_key,
            legacy_indexes_find_stored_cards,
            reindex_moves_cards_and_finds_duplicates,
            withdrawn_cards_leave_sale_for_good,
            a_destroyed_key_shreds_what_it_sealed,
            closing_an_unpaid_order_releases_its_cards,
            conflicting_notices_are_kept_for_reconciliation
        );
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let Some(harness) = ($factory)().await else { return };
                $crate::run_case(harness, $crate::conformance::$case).await;
            }
        )*
    };
}

/// Generates one `#[tokio::test]` per case of [`shop_cases`]: the facade's use cases that depend
/// on what the store does, driven through [`quanyi::Shop`] on the adapter's store.
///
/// `$factory` is an async function returning `Option<Harness>`, as for
/// [`storage_conformance!`].
#[macro_export]
macro_rules! shop_conformance {
    ($factory:expr) => {
        $crate::shop_conformance!(@cases $factory;
            invisible_variants_of_a_code_are_duplicates,
            reindexing_moves_legacy_keys_and_resumes_after_a_stop,
            an_import_racing_a_retirement_is_sealed_again,
            a_destroyed_key_never_opens_again_in_any_shop,
            a_retired_key_stops_opening_within_the_refresh,
            a_supplier_card_already_held_fails_over_or_is_refunded,
            a_conflicting_repeat_notice_is_kept_for_reconciliation,
            expiry_and_cancel_write_the_order_and_release_together,
            sweeps_run_once_per_period_with_two_workers,
            a_worker_leaves_job_kinds_it_does_not_run,
            a_placement_retried_with_its_key_is_one_order,
            a_restarted_consumer_resumes_at_its_cursor,
            operators_search_orders_and_find_cards,
            sweeps_follow_the_shops_calendar,
            a_line_waiting_on_a_supplier_past_the_deadline_is_refunded,
            checkout_keeps_its_decisions_and_a_denial_writes_nothing,
            what_was_bought_is_delivered_and_a_trial_pack_is_sold_once,
            a_line_held_past_the_deadline_waits_for_an_operator,
            refunds_follow_each_lines_rule,
            refund_requests_wait_in_the_queue_for_a_decision,
            a_reveal_racing_a_refund_gives_the_key_or_the_money,
            identical_refund_requests_refund_once,
            pricing_rules_price_the_checkout,
            coupons_are_used_within_their_budget,
            a_coupon_is_returned_once_or_used_once,
            operators_change_the_rules_and_placements_follow,
            issued_coupons_are_used_once_by_their_member
        );
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let Some(harness) = ($factory)().await else { return };
                $crate::run_case(harness, $crate::shop_cases::$case).await;
            }
        )*
    };
}

/// Generates one `#[tokio::test]` per case of [`durable`]: data that survives a reopen, and two
/// independent shops on one database.
///
/// `$factory` is an async function returning `Option<Arc<dyn Durable>>`.
#[macro_export]
macro_rules! durable_conformance {
    ($factory:expr) => {
        $crate::durable_conformance!(@cases $factory;
            reopen_finds_everything,
            two_shops_never_sell_a_key_twice,
            retries_with_one_key_on_two_shops_place_one_order,
            a_notice_applied_by_one_shop_is_a_no_op_on_the_other
        );
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let Some(durable) = ($factory)().await else { return };
                $crate::run_durable_case(durable, $crate::durable::$case).await;
            }
        )*
    };
}
