//! Use cases of the facade that every store must carry: each case builds shops on the store
//! under test and drives them as a host would. [`shop_conformance!`](crate::shop_conformance)
//! runs them on an adapter, so a use case is proven on memory, SQLite and PostgreSQL alike.

use std::sync::Arc;

use chrono::Duration;
use parking_lot::Mutex;
use quanyi::{
    BadLines, CartLine, Clock, Currency, DuplicateOf, Error, GoodsDraft, GoodsKind, ImportOptions,
    IndexScheme, KeyId, KeyState, ManualClock, MemberId, Money, Order, OrderStatus, PaymentGateway,
    PaymentNotification, RootKey, Shop, SkuDraft, SkuId, StaticKeyProvider, StockSource, Store,
    SupplierRoute, TenantId, Worker,
};
use quanyi::{GatewayError, RefundReceipt, RefundRequest};
use quanyi_order::AttemptOutcome;
use quanyi_storage::{AuditAction, CONFLICTING_REPEAT, CardState, NewCard, NoticeDisposition};
use quanyi_supplier::{ProductCode, SupplierId};
use quanyi_vault::{CardCode, CardKey, KeyRing};

use crate::fixtures::{self, t0};

mod calendar;
mod checkout;
mod idempotency;
mod keys;
mod operators;
mod overdue;
mod packs;
mod pricing;
mod promotions;
mod refund_races;
mod refunds;
mod sales;
mod worker;
use crate::hooked::HookedStore;
use crate::supplier_sim::SimSupplier;
pub use calendar::sweeps_follow_the_shops_calendar;
pub use checkout::checkout_keeps_its_decisions_and_a_denial_writes_nothing;
pub use idempotency::a_placement_retried_with_its_key_is_one_order;
pub use keys::{
    a_destroyed_key_never_opens_again_in_any_shop, a_retired_key_stops_opening_within_the_refresh,
    an_import_racing_a_retirement_is_sealed_again, invisible_variants_of_a_code_are_duplicates,
    reindexing_moves_legacy_keys_and_resumes_after_a_stop,
};
pub use operators::operators_search_orders_and_find_cards;
pub use overdue::{
    a_line_held_past_the_deadline_waits_for_an_operator,
    a_line_waiting_on_a_supplier_past_the_deadline_is_refunded,
};
pub use packs::what_was_bought_is_delivered_and_a_trial_pack_is_sold_once;
pub use pricing::{
    a_coupon_is_returned_once_or_used_once, coupons_are_used_within_their_budget,
    pricing_rules_price_the_checkout,
};
pub use promotions::{
    issued_coupons_are_used_once_by_their_member, operators_change_the_rules_and_placements_follow,
};
pub use refund_races::{
    a_reveal_racing_a_refund_gives_the_key_or_the_money, identical_refund_requests_refund_once,
    refund_requests_wait_in_the_queue_for_a_decision,
};
pub use refunds::refunds_follow_each_lines_rule;
pub use sales::{
    a_conflicting_repeat_notice_is_kept_for_reconciliation,
    a_supplier_card_already_held_fails_over_or_is_refunded,
    expiry_and_cancel_write_the_order_and_release_together,
};
pub use worker::{
    a_restarted_consumer_resumes_at_its_cursor, a_worker_leaves_job_kinds_it_does_not_run,
    sweeps_run_once_per_period_with_two_workers,
};

/// Every case name, in the order the macro generates them.
pub const CASES: &[&str] = &[
    "invisible_variants_of_a_code_are_duplicates",
    "reindexing_moves_legacy_keys_and_resumes_after_a_stop",
    "an_import_racing_a_retirement_is_sealed_again",
    "a_destroyed_key_never_opens_again_in_any_shop",
    "a_retired_key_stops_opening_within_the_refresh",
    "a_supplier_card_already_held_fails_over_or_is_refunded",
    "a_conflicting_repeat_notice_is_kept_for_reconciliation",
    "expiry_and_cancel_write_the_order_and_release_together",
    "sweeps_run_once_per_period_with_two_workers",
    "a_worker_leaves_job_kinds_it_does_not_run",
    "a_placement_retried_with_its_key_is_one_order",
    "a_restarted_consumer_resumes_at_its_cursor",
    "operators_search_orders_and_find_cards",
    "sweeps_follow_the_shops_calendar",
    "a_line_waiting_on_a_supplier_past_the_deadline_is_refunded",
    "checkout_keeps_its_decisions_and_a_denial_writes_nothing",
    "what_was_bought_is_delivered_and_a_trial_pack_is_sold_once",
    "a_line_held_past_the_deadline_waits_for_an_operator",
    "refunds_follow_each_lines_rule",
    "refund_requests_wait_in_the_queue_for_a_decision",
    "a_reveal_racing_a_refund_gives_the_key_or_the_money",
    "identical_refund_requests_refund_once",
    "pricing_rules_price_the_checkout",
    "coupons_are_used_within_their_budget",
    "a_coupon_is_returned_once_or_used_once",
    "operators_change_the_rules_and_placements_follow",
    "issued_coupons_are_used_once_by_their_member",
];

/// A test's shops share one store, clock, tenant and root key, as processes of one deployment.
struct Rig {
    store: Arc<dyn Store>,
    clock: ManualClock,
    tenant: TenantId,
    root: [u8; 32],
}

impl Rig {
    fn new(store: Arc<dyn Store>) -> Self {
        let mut root = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut root);
        Rig {
            store,
            clock: ManualClock::new(t0()),
            tenant: fixtures::tenant(),
            root,
        }
    }

    /// A shop on the rig's store: a process of its own (its own caches).
    fn shop(&self) -> Shop {
        self.shop_on(self.store.clone())
    }

    fn shop_on(&self, store: Arc<dyn Store>) -> Shop {
        self.builder(store).build().unwrap()
    }

    fn builder(&self, store: Arc<dyn Store>) -> quanyi::ShopBuilder {
        Shop::builder(
            store,
            Arc::new(StaticKeyProvider::new(RootKey::from_bytes(self.root))),
        )
        .clock(Arc::new(self.clock.clone()))
        .tenant(self.tenant.clone())
    }
}

fn cny(text: &str) -> Money {
    Money::parse(text, Currency::CNY).unwrap()
}

fn member(name: &str) -> MemberId {
    MemberId::new(name).unwrap()
}

/// Vault-stocked card-key goods; returns the SKU.
async fn card_sku(shop: &Shop) -> SkuId {
    let sku = fixtures::id(SkuId::generate);
    shop.create_goods(
        &quanyi::Actor::new("merchant", "catalog").unwrap(),
        GoodsDraft {
            title: "Video membership month card".into(),
            kind: GoodsKind::CardKey,
            skus: vec![
                SkuDraft::new(sku, "1 month", cny("19.90")).with_stock(StockSource::VaultPool),
            ],
            categories: vec![],
        },
    )
    .await
    .unwrap();
    sku
}

async fn import(shop: &Shop, sku: SkuId, codes: &[&str]) -> quanyi::ImportReport {
    shop.import_card_keys(
        &quanyi::Actor::new("stock-keeper", "stock").unwrap(),
        sku,
        codes.join("\n").as_bytes(),
        &ImportOptions::default(),
        BadLines::Reject,
    )
    .await
    .unwrap()
}

/// Places and pays an order for `quantity` of `sku`; returns it after the payment.
async fn buy(shop: &Shop, sku: SkuId, buyer: &MemberId, quantity: i64) -> Order {
    let order = shop
        .place_order(buyer, &[CartLine::new(sku, quantity)])
        .await
        .unwrap();
    shop.confirm_payment(notice(&order, &format!("txn-{}", order.id())))
        .await
        .unwrap()
        .order
}

fn notice(order: &Order, txn: &str) -> PaymentNotification {
    PaymentNotification {
        provider: "testpay".into(),
        transaction_id: txn.into(),
        order: order.id(),
        amount: order.total(),
    }
}

/// The codes a buyer reveals, in order.
async fn revealed(shop: &Shop, buyer: &MemberId, order: &Order) -> Result<Vec<String>, Error> {
    Ok(shop
        .reveal(buyer, order.id())
        .await?
        .cards
        .iter()
        .map(|c| c.key.code.expose().to_owned())
        .collect())
}

/// The operator the key commands of these tests run as.
fn admin() -> quanyi::Actor {
    quanyi::Actor::new("key-admin", "admin").unwrap()
}

/// A gateway that records the refunds it is asked for.
#[derive(Debug, Default)]
struct Refunds(Mutex<Vec<RefundRequest>>);

#[async_trait::async_trait]
impl PaymentGateway for Refunds {
    async fn refund(&self, r: &RefundRequest) -> Result<RefundReceipt, GatewayError> {
        let mut all = self.0.lock();
        if !all.iter().any(|x| x.refund_id == r.refund_id) {
            all.push(r.clone());
        }
        Ok(RefundReceipt {
            provider_refund_id: r.refund_id.clone(),
        })
    }
}

/// A host sweep that records the periods it ran for.
struct Tally {
    name: &'static str,
    period: quanyi::SweepPeriod,
    periods: Mutex<Vec<chrono::DateTime<chrono::Utc>>>,
}

#[async_trait::async_trait]
impl quanyi::Sweep for Tally {
    fn name(&self) -> &str {
        self.name
    }

    fn period(&self) -> quanyi::SweepPeriod {
        self.period
    }

    async fn run(
        &self,
        _shop: &Shop,
        period: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), quanyi::JobError> {
        self.periods.lock().push(period);
        Ok(())
    }
}
