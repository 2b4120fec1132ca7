//! A store that runs hooks around chosen calls of another store: failures injected at a chosen
//! call, another process's action run in the middle of a use case, and stale reads of card
//! ciphertexts (a replica or a backup that lags behind). Tests of the facade use it to put the
//! engine in the states a real deployment reaches by bad timing.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use parking_lot::Mutex;
use quanyi_core::{
    CardId, EventEnvelope, EventId, GoodsId, JobId, MemberId, OrderId, SkuId, TenantId,
};
use quanyi_goods::Goods;
use quanyi_order::Order;
use quanyi_storage::{
    AuditRecord, AuditStore, Claim, DestroyOutcome, Error, EventStore, FeedEvent, FeedPosition,
    GoodsStore, HeldCard, IndexChange, InsertCardsOutcome, Job, JobStore, KeyRingStore, NewCard,
    NewJob, NewOrder, OrderChange, OrderStore, PaymentNotice, PaymentStore, PaymentWrite,
    RecordOutcome, Reindexed, Result, StockCount, Store, StoredCard, Trail, VaultStore,
};
use quanyi_vault::{IndexScheme, KeyId, SealedCard, WrappedKeyRing};

type Action = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

#[derive(Default)]
struct Hooks {
    calls: HashMap<&'static str, u64>,
    failures: HashMap<&'static str, u32>,
    actions: HashMap<&'static str, Vec<Action>>,
    stale: HashMap<CardId, SealedCard>,
}

/// A [`Store`] that passes every call to another store, after the hooks set for it.
pub struct HookedStore {
    inner: Arc<dyn Store>,
    hooks: Mutex<Hooks>,
}

impl fmt::Debug for HookedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HookedStore").finish_non_exhaustive()
    }
}

impl HookedStore {
    /// Wraps `inner`; no hooks yet.
    pub fn new(inner: Arc<dyn Store>) -> Arc<Self> {
        Arc::new(HookedStore {
            inner,
            hooks: Mutex::new(Hooks::default()),
        })
    }

    /// The wrapped store.
    pub fn inner(&self) -> &Arc<dyn Store> {
        &self.inner
    }

    /// The next `times` calls of `method` fail with `Unavailable` and reach nothing.
    pub fn fail_next(&self, method: &'static str, times: u32) {
        self.hooks.lock().failures.insert(method, times);
    }

    /// Runs `action` once, just before the next call of `method` goes to the wrapped store
    /// (after the caller decided what to write, before it is written).
    pub fn before_next<F, Fut>(&self, method: &'static str, action: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let action: Action = Box::new(move || Box::pin(action()));
        self.hooks
            .lock()
            .actions
            .entry(method)
            .or_default()
            .push(action);
    }

    /// How many times `method` was called (failed calls included).
    pub fn calls(&self, method: &'static str) -> u64 {
        self.hooks.lock().calls.get(method).copied().unwrap_or(0)
    }

    /// Calls of every method so far.
    pub fn total_calls(&self) -> u64 {
        self.hooks.lock().calls.values().sum()
    }

    /// From now on `order_cards` answers `sealed` for `card`, as a lagging replica or a restored
    /// backup would after the card was resealed.
    pub fn serve_stale(&self, card: CardId, sealed: SealedCard) {
        self.hooks.lock().stale.insert(card, sealed);
    }

    async fn before(&self, method: &'static str) -> Result<()> {
        let (action, fail) = {
            let mut hooks = self.hooks.lock();
            *hooks.calls.entry(method).or_default() += 1;
            let action = hooks.actions.get_mut(method).and_then(|a| a.pop());
            let fail = match hooks.failures.get_mut(method) {
                Some(n) if *n > 0 => {
                    *n -= 1;
                    true
                }
                _ => false,
            };
            (action, fail)
        };
        if let Some(action) = action {
            action().await;
        }
        if fail {
            return Err(Error::Unavailable {
                message: format!("{method} failed by a test hook"),
                source: None,
            });
        }
        Ok(())
    }

    async fn stale_reads(&self, read: Result<Vec<StoredCard>>) -> Result<Vec<StoredCard>> {
        let mut cards = read?;
        let hooks = self.hooks.lock();
        for card in &mut cards {
            if let Some(sealed) = hooks.stale.get(&card.id) {
                card.sealed = sealed.clone();
            }
        }
        Ok(cards)
    }
}

#[async_trait]
impl GoodsStore for HookedStore {
    async fn insert_goods(&self, goods: &Goods, trail: Trail<'_>) -> Result<()> {
        self.before("insert_goods").await?;
        self.inner.insert_goods(goods, trail).await
    }

    async fn update_goods(
        &self,
        goods: &Goods,
        expected_version: u64,
        trail: Trail<'_>,
    ) -> Result<()> {
        self.before("update_goods").await?;
        self.inner
            .update_goods(goods, expected_version, trail)
            .await
    }

    async fn goods(&self, tenant: &TenantId, id: GoodsId) -> Result<Option<Goods>> {
        self.before("goods").await?;
        self.inner.goods(tenant, id).await
    }

    async fn goods_by_sku(&self, tenant: &TenantId, sku: SkuId) -> Result<Option<Goods>> {
        self.before("goods_by_sku").await?;
        self.inner.goods_by_sku(tenant, sku).await
    }

    async fn list_goods(&self, tenant: &TenantId) -> Result<Vec<Goods>> {
        self.before("list_goods").await?;
        self.inner.list_goods(tenant).await
    }
}

#[async_trait]
impl OrderStore for HookedStore {
    async fn place_order(&self, new: NewOrder<'_>, now: DateTime<Utc>) -> Result<Vec<CardId>> {
        self.before("place_order").await?;
        self.inner.place_order(new, now).await
    }

    async fn update_order(
        &self,
        change: OrderChange<'_>,
        audit: Option<&AuditRecord>,
    ) -> Result<()> {
        self.before("update_order").await?;
        self.inner.update_order(change, audit).await
    }

    async fn refund_order(
        &self,
        change: OrderChange<'_>,
        write: quanyi_storage::RefundWrite<'_>,
    ) -> Result<()> {
        self.before("refund_order").await?;
        self.inner.refund_order(change, write).await
    }

    async fn refunds_paid(
        &self,
        tenant: &TenantId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        after: Option<(DateTime<Utc>, String)>,
        limit: usize,
    ) -> Result<Vec<quanyi_storage::PaidRefund>> {
        self.before("refunds_paid").await?;
        self.inner
            .refunds_paid(tenant, from, to, after, limit)
            .await
    }

    async fn refund_queue(
        &self,
        tenant: &TenantId,
        after: Option<(DateTime<Utc>, OrderId)>,
        limit: usize,
    ) -> Result<Vec<Order>> {
        self.before("refund_queue").await?;
        self.inner.refund_queue(tenant, after, limit).await
    }

    async fn close_unpaid_order(&self, change: OrderChange<'_>) -> Result<u32> {
        self.before("close_unpaid_order").await?;
        self.inner.close_unpaid_order(change).await
    }

    async fn budget_used(&self, tenant: &TenantId, scope: &str, key: &str) -> Result<u64> {
        self.before("budget_used").await?;
        self.inner.budget_used(tenant, scope, key).await
    }

    async fn claim(&self, tenant: &TenantId, scope: &str, key: &str) -> Result<Option<Claim>> {
        self.before("claim").await?;
        self.inner.claim(tenant, scope, key).await
    }

    async fn order(&self, tenant: &TenantId, id: OrderId) -> Result<Option<Order>> {
        self.before("order").await?;
        self.inner.order(tenant, id).await
    }

    async fn member_orders(
        &self,
        tenant: &TenantId,
        member: &MemberId,
        limit: usize,
    ) -> Result<Vec<Order>> {
        self.before("member_orders").await?;
        self.inner.member_orders(tenant, member, limit).await
    }

    async fn orders_updated(
        &self,
        tenant: &TenantId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        after: Option<(DateTime<Utc>, OrderId)>,
        limit: usize,
    ) -> Result<Vec<Order>> {
        self.before("orders_updated").await?;
        self.inner
            .orders_updated(tenant, from, to, after, limit)
            .await
    }

    async fn search_orders(
        &self,
        tenant: &TenantId,
        query: &quanyi_storage::OrderQuery,
        after: Option<quanyi_storage::OrderCursor>,
        limit: usize,
    ) -> Result<Vec<Order>> {
        self.before("search_orders").await?;
        self.inner.search_orders(tenant, query, after, limit).await
    }

    async fn unpaid_orders_due(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<(TenantId, OrderId)>> {
        self.before("unpaid_orders_due").await?;
        self.inner.unpaid_orders_due(now, limit).await
    }
}

#[async_trait]
impl VaultStore for HookedStore {
    async fn insert_cards(
        &self,
        tenant: &TenantId,
        cards: &[NewCard],
        now: DateTime<Utc>,
        trail: Trail<'_>,
    ) -> Result<InsertCardsOutcome> {
        self.before("insert_cards").await?;
        self.inner.insert_cards(tenant, cards, now, trail).await
    }

    async fn reserve_cards(
        &self,
        tenant: &TenantId,
        sku: SkuId,
        order: OrderId,
        quantity: u32,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Vec<CardId>> {
        self.before("reserve_cards").await?;
        self.inner
            .reserve_cards(tenant, sku, order, quantity, until, now)
            .await
    }

    async fn commit_cards(
        &self,
        tenant: &TenantId,
        sku: SkuId,
        order: OrderId,
        quantity: u32,
        now: DateTime<Utc>,
    ) -> Result<Vec<CardId>> {
        self.before("commit_cards").await?;
        self.inner
            .commit_cards(tenant, sku, order, quantity, now)
            .await
    }

    async fn insert_sold_cards(
        &self,
        tenant: &TenantId,
        cards: &[NewCard],
        change: OrderChange<'_>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.before("insert_sold_cards").await?;
        self.inner
            .insert_sold_cards(tenant, cards, change, now)
            .await
    }

    async fn held_cards(&self, tenant: &TenantId, order: OrderId) -> Result<Vec<HeldCard>> {
        self.before("held_cards").await?;
        self.inner.held_cards(tenant, order).await
    }

    async fn release_cards(&self, tenant: &TenantId, order: OrderId) -> Result<u32> {
        self.before("release_cards").await?;
        self.inner.release_cards(tenant, order).await
    }

    async fn order_cards(&self, tenant: &TenantId, order: OrderId) -> Result<Vec<StoredCard>> {
        self.before("order_cards").await?;
        self.stale_reads(self.inner.order_cards(tenant, order).await)
            .await
    }

    async fn mark_revealed(
        &self,
        tenant: &TenantId,
        order: OrderId,
        now: DateTime<Utc>,
    ) -> Result<Vec<CardId>> {
        self.before("mark_revealed").await?;
        self.inner.mark_revealed(tenant, order, now).await
    }

    async fn card(&self, tenant: &TenantId, id: CardId) -> Result<Option<StoredCard>> {
        self.before("card").await?;
        self.inner.card(tenant, id).await
    }

    async fn card_by_index(
        &self,
        tenant: &TenantId,
        index: &quanyi_vault::BlindIndex,
    ) -> Result<Option<StoredCard>> {
        self.before("card_by_index").await?;
        self.inner.card_by_index(tenant, index).await
    }

    async fn stock(&self, tenant: &TenantId, sku: SkuId, now: DateTime<Utc>) -> Result<StockCount> {
        self.before("stock").await?;
        self.inner.stock(tenant, sku, now).await
    }

    async fn cards_sealed_with(
        &self,
        tenant: &TenantId,
        key: KeyId,
        limit: usize,
    ) -> Result<Vec<StoredCard>> {
        self.before("cards_sealed_with").await?;
        self.inner.cards_sealed_with(tenant, key, limit).await
    }

    async fn replace_sealed(
        &self,
        tenant: &TenantId,
        card: CardId,
        expected_key: KeyId,
        sealed: &SealedCard,
        key_id: KeyId,
    ) -> Result<()> {
        self.before("replace_sealed").await?;
        self.inner
            .replace_sealed(tenant, card, expected_key, sealed, key_id)
            .await
    }

    async fn cards_to_reindex(
        &self,
        tenant: &TenantId,
        scheme: IndexScheme,
        limit: usize,
    ) -> Result<Vec<StoredCard>> {
        self.before("cards_to_reindex").await?;
        self.inner.cards_to_reindex(tenant, scheme, limit).await
    }

    async fn reindex_cards(
        &self,
        tenant: &TenantId,
        changes: &[IndexChange],
    ) -> Result<Vec<Reindexed>> {
        self.before("reindex_cards").await?;
        self.inner.reindex_cards(tenant, changes).await
    }

    async fn withdraw_cards(
        &self,
        tenant: &TenantId,
        cards: &[CardId],
        now: DateTime<Utc>,
    ) -> Result<Vec<CardId>> {
        self.before("withdraw_cards").await?;
        self.inner.withdraw_cards(tenant, cards, now).await
    }
}

#[async_trait]
impl KeyRingStore for HookedStore {
    async fn key_ring(&self, tenant: &TenantId) -> Result<Option<(WrappedKeyRing, u64)>> {
        self.before("key_ring").await?;
        self.inner.key_ring(tenant).await
    }

    async fn insert_key_ring(&self, ring: &WrappedKeyRing) -> Result<()> {
        self.before("insert_key_ring").await?;
        self.inner.insert_key_ring(ring).await
    }

    async fn update_key_ring(
        &self,
        ring: &WrappedKeyRing,
        expected_version: u64,
        trail: Trail<'_>,
    ) -> Result<u64> {
        self.before("update_key_ring").await?;
        self.inner
            .update_key_ring(ring, expected_version, trail)
            .await
    }

    async fn destroy_key(
        &self,
        ring: &WrappedKeyRing,
        expected_version: u64,
        key: KeyId,
        now: DateTime<Utc>,
        trail: Trail<'_>,
    ) -> Result<DestroyOutcome> {
        self.before("destroy_key").await?;
        self.inner
            .destroy_key(ring, expected_version, key, now, trail)
            .await
    }

    async fn reserve_key_uses(
        &self,
        tenant: &TenantId,
        key: KeyId,
        uses: u64,
        limit: u64,
    ) -> Result<u64> {
        self.before("reserve_key_uses").await?;
        self.inner.reserve_key_uses(tenant, key, uses, limit).await
    }
}

#[async_trait]
impl PaymentStore for HookedStore {
    async fn record_payment(
        &self,
        write: PaymentWrite<'_>,
        now: DateTime<Utc>,
    ) -> Result<RecordOutcome> {
        self.before("record_payment").await?;
        self.inner.record_payment(write, now).await
    }

    async fn payment_notice(
        &self,
        tenant: &TenantId,
        provider: &str,
        transaction_id: &str,
    ) -> Result<Option<PaymentNotice>> {
        self.before("payment_notice").await?;
        self.inner
            .payment_notice(tenant, provider, transaction_id)
            .await
    }

    async fn flag_conflicting_notice(&self, notice: &PaymentNotice) -> Result<bool> {
        self.before("flag_conflicting_notice").await?;
        self.inner.flag_conflicting_notice(notice).await
    }

    async fn notices_to_reconcile(
        &self,
        tenant: &TenantId,
        limit: usize,
    ) -> Result<Vec<PaymentNotice>> {
        self.before("notices_to_reconcile").await?;
        self.inner.notices_to_reconcile(tenant, limit).await
    }
}

#[async_trait]
impl EventStore for HookedStore {
    async fn append_events(&self, events: &[EventEnvelope]) -> Result<()> {
        self.before("append_events").await?;
        self.inner.append_events(events).await
    }

    async fn aggregate_events(
        &self,
        tenant: &TenantId,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> Result<Vec<EventEnvelope>> {
        self.before("aggregate_events").await?;
        self.inner
            .aggregate_events(tenant, aggregate_type, aggregate_id)
            .await
    }

    async fn events_after(
        &self,
        after: Option<EventId>,
        limit: usize,
    ) -> Result<Vec<EventEnvelope>> {
        self.before("events_after").await?;
        self.inner.events_after(after, limit).await
    }

    async fn read_feed(
        &self,
        tenant: &TenantId,
        after: FeedPosition,
        limit: usize,
    ) -> Result<Vec<FeedEvent>> {
        self.before("read_feed").await?;
        self.inner.read_feed(tenant, after, limit).await
    }

    async fn feed_head(&self, tenant: &TenantId) -> Result<FeedPosition> {
        self.before("feed_head").await?;
        self.inner.feed_head(tenant).await
    }

    async fn consumer_cursor(&self, tenant: &TenantId, name: &str) -> Result<Option<FeedPosition>> {
        self.before("consumer_cursor").await?;
        self.inner.consumer_cursor(tenant, name).await
    }

    async fn save_consumer_cursor(
        &self,
        tenant: &TenantId,
        name: &str,
        expected: Option<FeedPosition>,
        to: FeedPosition,
    ) -> Result<()> {
        self.before("save_consumer_cursor").await?;
        self.inner
            .save_consumer_cursor(tenant, name, expected, to)
            .await
    }
}

#[async_trait]
impl quanyi_storage::PricingStore for HookedStore {
    async fn pricing(&self, tenant: &TenantId) -> Result<quanyi_storage::PricingSnapshot> {
        self.before("pricing").await?;
        self.inner.pricing(tenant).await
    }

    async fn pricing_version(&self, tenant: &TenantId) -> Result<u64> {
        self.before("pricing_version").await?;
        self.inner.pricing_version(tenant).await
    }

    async fn write_pricing(
        &self,
        write: quanyi_storage::PricingWrite<'_>,
        trail: Trail<'_>,
    ) -> Result<u64> {
        self.before("write_pricing").await?;
        self.inner.write_pricing(write, trail).await
    }

    async fn pricing_history(
        &self,
        tenant: &TenantId,
        kind: quanyi_storage::PricingKind,
        id: &str,
    ) -> Result<Vec<quanyi_storage::PricingRevision>> {
        self.before("pricing_history").await?;
        self.inner.pricing_history(tenant, kind, id).await
    }

    async fn issue_coupons(
        &self,
        tenant: &TenantId,
        coupons: &[quanyi_storage::IssuedCoupon],
        trail: Trail<'_>,
    ) -> Result<()> {
        self.before("issue_coupons").await?;
        self.inner.issue_coupons(tenant, coupons, trail).await
    }

    async fn coupon(
        &self,
        tenant: &TenantId,
        code: &str,
    ) -> Result<Option<quanyi_storage::IssuedCoupon>> {
        self.before("coupon").await?;
        self.inner.coupon(tenant, code).await
    }

    async fn member_coupons(
        &self,
        tenant: &TenantId,
        member: &MemberId,
    ) -> Result<Vec<quanyi_storage::IssuedCoupon>> {
        self.before("member_coupons").await?;
        self.inner.member_coupons(tenant, member).await
    }
}

#[async_trait]
impl AuditStore for HookedStore {
    async fn append_audit(&self, record: &AuditRecord) -> Result<()> {
        self.before("append_audit").await?;
        self.inner.append_audit(record).await
    }

    async fn audit_records(&self, tenant: &TenantId, limit: usize) -> Result<Vec<AuditRecord>> {
        self.before("audit_records").await?;
        self.inner.audit_records(tenant, limit).await
    }
}

#[async_trait]
impl JobStore for HookedStore {
    async fn enqueue(&self, job: &NewJob, now: DateTime<Utc>) -> Result<JobId> {
        self.before("enqueue").await?;
        self.inner.enqueue(job, now).await
    }

    async fn claim_jobs(
        &self,
        worker: &str,
        kinds: &[&str],
        now: DateTime<Utc>,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<Job>> {
        self.before("claim_jobs").await?;
        self.inner
            .claim_jobs(worker, kinds, now, lease, limit)
            .await
    }

    async fn claim_job(
        &self,
        id: JobId,
        worker: &str,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> Result<Option<Job>> {
        self.before("claim_job").await?;
        self.inner.claim_job(id, worker, now, lease).await
    }

    async fn heartbeat(&self, id: JobId, worker: &str, lease_until: DateTime<Utc>) -> Result<()> {
        self.before("heartbeat").await?;
        self.inner.heartbeat(id, worker, lease_until).await
    }

    async fn complete_job(&self, id: JobId, worker: &str) -> Result<()> {
        self.before("complete_job").await?;
        self.inner.complete_job(id, worker).await
    }

    async fn retry_job(
        &self,
        id: JobId,
        worker: &str,
        run_at: DateTime<Utc>,
        error: &str,
    ) -> Result<()> {
        self.before("retry_job").await?;
        self.inner.retry_job(id, worker, run_at, error).await
    }

    async fn dead_letter(&self, id: JobId, worker: &str, reason: &str) -> Result<()> {
        self.before("dead_letter").await?;
        self.inner.dead_letter(id, worker, reason).await
    }

    async fn job(&self, id: JobId) -> Result<Option<Job>> {
        self.before("job").await?;
        self.inner.job(id).await
    }

    async fn dead_jobs(&self, tenant: &TenantId, limit: usize) -> Result<Vec<Job>> {
        self.before("dead_jobs").await?;
        self.inner.dead_jobs(tenant, limit).await
    }
}
