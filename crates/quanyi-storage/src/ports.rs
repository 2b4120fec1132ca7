//! The storage ports. Each method is one atomic command or a query; commands that change an
//! aggregate take its events and write both together or neither.

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use quanyi_core::{
    CardId, EventEnvelope, EventId, GoodsId, JobId, MemberId, OrderId, SkuId, TenantId,
};
use quanyi_goods::Goods;
use quanyi_order::Order;
use quanyi_vault::{BlindIndex, IndexScheme, KeyId, SealedCard, WrappedKeyRing};

use crate::Result;
use crate::model::{
    AuditRecord, Claim, DestroyOutcome, FeedEvent, FeedPosition, HeldCard, IndexChange,
    InsertCardsOutcome, Job, MemberLimit, NewCard, NewJob, NewOrder, OrderChange, OrderCursor,
    OrderQuery, PaidRefund, PaymentNotice, PaymentWrite, RecordOutcome, RefundWrite, Reindexed,
    StockCount, StoredCard, Trail,
};
use crate::pricing::PricingStore;

/// Goods and their SKUs, stored as one versioned aggregate.
#[async_trait]
pub trait GoodsStore: Send + Sync {
    /// Stores new goods with their trail (events and the operator's audit record) in one
    /// atomic step.
    ///
    /// # Errors
    /// `Conflict` when the goods id, one of its SKU ids, an event id or the audit record's id
    /// is already stored. Nothing is written on any error.
    async fn insert_goods(&self, goods: &Goods, trail: Trail<'_>) -> Result<()>;

    /// Replaces goods whose stored version is `expected_version`, with their trail in the same
    /// atomic step.
    ///
    /// # Errors
    /// `NotFound`, or `Conflict` when the stored version differs or an id of the trail is
    /// already stored. Nothing is written on any error.
    async fn update_goods(
        &self,
        goods: &Goods,
        expected_version: u64,
        trail: Trail<'_>,
    ) -> Result<()>;

    /// Goods by id.
    async fn goods(&self, tenant: &TenantId, id: GoodsId) -> Result<Option<Goods>>;

    /// The goods that hold a SKU.
    async fn goods_by_sku(&self, tenant: &TenantId, sku: SkuId) -> Result<Option<Goods>>;

    /// All goods of a tenant, oldest first.
    async fn list_goods(&self, tenant: &TenantId) -> Result<Vec<Goods>>;
}

/// Orders.
#[async_trait]
pub trait OrderStore: Send + Sync {
    /// Stores a new order with its events and reserves its card keys until the order's
    /// `expires_at`, oldest card first, in one atomic step; returns the reserved cards in
    /// reservation order. For every `member_limits` entry, the member's quantity of that SKU in
    /// live orders (any status but expired, cancelled or refunded) plus this order's must not
    /// exceed the limit.
    ///
    /// # Errors
    /// `Conflict` when the id is taken, on `"goods"` when goods in `priced_from` changed, or on
    /// `"pricing"` when the tenant's pricing rules are no longer at `pricing_version`;
    /// `MemberLimitExceeded`; `OutOfStock` for the first SKU short of cards; `Claimed` with the
    /// stored claim when one of `claims` is taken; `Invalid` for a malformed claim. Nothing is
    /// written on any error.
    async fn place_order(&self, new: NewOrder<'_>, now: DateTime<Utc>) -> Result<Vec<CardId>>;

    /// Stores a new order that reserves nothing: [`place_order`](OrderStore::place_order)
    /// without reservations.
    ///
    /// # Errors
    /// As [`place_order`](OrderStore::place_order).
    async fn insert_order(
        &self,
        order: &Order,
        events: &[EventEnvelope],
        member_limits: &[MemberLimit],
    ) -> Result<()> {
        let new = NewOrder {
            order,
            events,
            reservations: &[],
            member_limits,
            priced_from: &[],
            claims: &[],
            budgets: &[],
            pricing_version: None,
        };
        self.place_order(new, order.created_at()).await.map(|_| ())
    }

    /// Writes a new version of an order with its events and, for an operator's change, the
    /// operator's audit record, in one atomic step.
    ///
    /// # Errors
    /// `NotFound`, or `Conflict` when the stored version is not `change.expected_version` or
    /// the record's id is stored already. Nothing is written on any error.
    async fn update_order(
        &self,
        change: OrderChange<'_>,
        audit: Option<&AuditRecord>,
    ) -> Result<()>;

    /// Writes a refund's change of an order (an after-sales refund asked, approved, rejected or
    /// paid, or the pay-back of lines that could not be delivered) with its events, and in the
    /// same atomic step what `write` names: the cards it voids (each must be sold to the order,
    /// never revealed and not voided yet; it is marked voided at the order's `updated_at` and is
    /// never revealed or sold again), the refund it records paid in the refund ledger (once per
    /// tenant and refund id), and the operator's audit record. The store keeps the order's
    /// [`refund_due`](Order::refund_due) for [`refund_queue`](OrderStore::refund_queue); only
    /// this method changes an order's after-sales refunds.
    ///
    /// # Errors
    /// As [`update_order`](OrderStore::update_order); [`Revealed`](crate::Error::Revealed) for
    /// a card to void that its buyer revealed; `Conflict` on `"card"` for one not sold to the
    /// order or voided already, on `"refund"` for a refund id the ledger holds. Nothing is
    /// written on any error.
    async fn refund_order(&self, change: OrderChange<'_>, write: RefundWrite<'_>) -> Result<()>;

    /// Up to `limit` refunds of a tenant the ledger recorded paid in `[from, to)`, by (paid
    /// time, refund id), after the cursor `after` when given: a period's refunds, to reconcile
    /// with the payment provider.
    async fn refunds_paid(
        &self,
        tenant: &TenantId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        after: Option<(DateTime<Utc>, String)>,
        limit: usize,
    ) -> Result<Vec<PaidRefund>>;

    /// Up to `limit` of a tenant's orders with an open refund, by
    /// [`refund_due`](Order::refund_due) then id, after the cursor `after` when given: the
    /// operators' queue, and the approved refunds still to pay.
    async fn refund_queue(
        &self,
        tenant: &TenantId,
        after: Option<(DateTime<Utc>, OrderId)>,
        limit: usize,
    ) -> Result<Vec<Order>>;

    /// Writes a new version of an unpaid order that ends without a sale (expired or cancelled)
    /// and returns its reserved cards to stock and the budget uses it took ([`NewOrder::budgets`],
    /// once), in one atomic step; returns how many cards were released. An order never ends with its cards still held, and no card is released from an
    /// order that did not end.
    ///
    /// # Errors
    /// As [`update_order`](OrderStore::update_order); nothing is written on any error.
    async fn close_unpaid_order(&self, change: OrderChange<'_>) -> Result<u32>;

    /// How many uses of the budget (tenant, scope, key) orders not closed unpaid hold.
    /// How much of the budget (tenant, scope, key) orders not closed unpaid hold (uses, or
    /// minor units for a budget of amounts).
    async fn budget_used(&self, tenant: &TenantId, scope: &str, key: &str) -> Result<u64>;

    /// The claim a sale write took for (tenant, scope, key), if any.
    async fn claim(&self, tenant: &TenantId, scope: &str, key: &str) -> Result<Option<Claim>>;

    /// An order by id.
    async fn order(&self, tenant: &TenantId, id: OrderId) -> Result<Option<Order>>;

    /// A member's orders, newest first.
    async fn member_orders(
        &self,
        tenant: &TenantId,
        member: &MemberId,
        limit: usize,
    ) -> Result<Vec<Order>>;

    /// Up to `limit` orders of a tenant whose last change (`Order::updated_at`) is in
    /// `[from, to)`, ordered by (last change, id), after the cursor `after` when given: the
    /// orders a reconciliation of that period must look at.
    async fn orders_updated(
        &self,
        tenant: &TenantId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        after: Option<(DateTime<Utc>, OrderId)>,
        limit: usize,
    ) -> Result<Vec<Order>>;

    /// Up to `limit` (at most [`MAX_SEARCH_PAGE`](crate::MAX_SEARCH_PAGE)) of a tenant's orders
    /// that match `query` ([`OrderQuery::matches`]), newest first: by placement time
    /// (`Order::created_at`), then id, both descending; after the cursor `after` when given.
    /// An operator's order search; a query that cannot match (an empty time window) returns
    /// nothing.
    async fn search_orders(
        &self,
        tenant: &TenantId,
        query: &OrderQuery,
        after: Option<OrderCursor>,
        limit: usize,
    ) -> Result<Vec<Order>>;

    /// Orders of any tenant still awaiting payment whose deadline is at or before `now`, oldest
    /// deadline first.
    async fn unpaid_orders_due(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<(TenantId, OrderId)>>;
}

/// Sealed card keys and their pools.
#[async_trait]
pub trait VaultStore: Send + Sync {
    /// Stores sealed cards as available stock. A card whose blind index (or legacy index, when it
    /// has one) the tenant already holds (in any SKU and any state, sold and withdrawn included)
    /// or that repeats an earlier card of the same call is skipped and reported by position; the
    /// rest are stored in one atomic step, with the import's trail (events and the operator's
    /// audit record).
    ///
    /// # Errors
    /// `KeyNotActive` when a card is sealed with a key that is not the tenant's active key as
    /// the write commits (also when the tenant has no key ring); `Conflict` when a card id or
    /// an id of the trail is taken. Nothing is written on any error.
    async fn insert_cards(
        &self,
        tenant: &TenantId,
        cards: &[NewCard],
        now: DateTime<Utc>,
        trail: Trail<'_>,
    ) -> Result<InsertCardsOutcome>;

    /// Holds `quantity` cards of a SKU for an order until `until`, oldest import first. Repeating the
    /// call returns the cards the order already holds (reserved or sold) for that SKU.
    ///
    /// # Errors
    /// `OutOfStock` when fewer are free at `now`; nothing changes.
    async fn reserve_cards(
        &self,
        tenant: &TenantId,
        sku: SkuId,
        order: OrderId,
        quantity: u32,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Vec<CardId>>;

    /// Marks `quantity` cards of a SKU sold to the order: the order's reserved cards first (even if
    /// their deadline passed, as long as no other order took them), then free ones. Repeating the
    /// call returns the same cards.
    ///
    /// # Errors
    /// `OutOfStock` when not enough can be found; nothing changes.
    async fn commit_cards(
        &self,
        tenant: &TenantId,
        sku: SkuId,
        order: OrderId,
        quantity: u32,
        now: DateTime<Utc>,
    ) -> Result<Vec<CardId>>;

    /// Stores cards bought from a supplier for an order as sold to it (at `now`), together with
    /// the order change that delivers them, in one atomic step: a crash cannot lose bought cards
    /// or deliver cards that were not stored. Blind indexes stay unique per tenant.
    ///
    /// # Errors
    /// `DuplicateCards` with the positions of the cards whose blind index (or legacy index) the
    /// tenant already holds or that repeat an earlier card of the call; `KeyNotActive` as
    /// [`insert_cards`](VaultStore::insert_cards); `Conflict` when the order's version is stale
    /// or a card id is taken; `NotFound` for an unknown order. Nothing is written on any error.
    async fn insert_sold_cards(
        &self,
        tenant: &TenantId,
        cards: &[NewCard],
        change: OrderChange<'_>,
        now: DateTime<Utc>,
    ) -> Result<()>;

    /// The cards an order holds (reserved for it or sold to it), in card order.
    async fn held_cards(&self, tenant: &TenantId, order: OrderId) -> Result<Vec<HeldCard>>;

    /// Returns the order's reserved (unsold) cards to stock; returns how many. Idempotent.
    async fn release_cards(&self, tenant: &TenantId, order: OrderId) -> Result<u32>;

    /// The cards sold to an order, in commit order.
    async fn order_cards(&self, tenant: &TenantId, order: OrderId) -> Result<Vec<StoredCard>>;

    /// Marks the cards sold to `order` that are not voided as revealed (a card keeps the time
    /// of its first reveal) and returns their ids in card order, in one atomic step. A card is
    /// revealed only while not voided and voided only while not revealed
    /// ([`OrderStore::refund_order`]), so no card is both.
    async fn mark_revealed(
        &self,
        tenant: &TenantId,
        order: OrderId,
        now: DateTime<Utc>,
    ) -> Result<Vec<CardId>>;

    /// One card by id.
    async fn card(&self, tenant: &TenantId, id: CardId) -> Result<Option<StoredCard>>;

    /// The tenant's card that holds `index` as its blind index, in any state (an operator's
    /// lookup of a code: the caller computes the index of the code under each scheme it
    /// accepts).
    async fn card_by_index(
        &self,
        tenant: &TenantId,
        index: &BlindIndex,
    ) -> Result<Option<StoredCard>>;

    /// Card stock of a SKU at `now`.
    async fn stock(&self, tenant: &TenantId, sku: SkuId, now: DateTime<Utc>) -> Result<StockCount>;

    /// Up to `limit` cards of a tenant still sealed with `key`, for resealing before retirement.
    async fn cards_sealed_with(
        &self,
        tenant: &TenantId,
        key: KeyId,
        limit: usize,
    ) -> Result<Vec<StoredCard>>;

    /// Replaces a card's sealed values after resealing.
    ///
    /// # Errors
    /// `NotFound`; `Conflict` when the card is no longer sealed with `expected_key`;
    /// `KeyNotActive` when `key_id` is not the tenant's active key as the write commits.
    async fn replace_sealed(
        &self,
        tenant: &TenantId,
        card: CardId,
        expected_key: KeyId,
        sealed: &SealedCard,
        key_id: KeyId,
    ) -> Result<()>;

    /// Up to `limit` cards of a tenant indexed with a scheme older than `scheme`, in card
    /// order: what re-indexing still has to do. Withdrawn cards are included.
    ///
    /// # Errors
    /// `Unavailable` or `Corrupt` as any read.
    async fn cards_to_reindex(
        &self,
        tenant: &TenantId,
        scheme: IndexScheme,
        limit: usize,
    ) -> Result<Vec<StoredCard>>;

    /// Applies each change on its own, all in one atomic step, and answers for each in input
    /// order: a card that still holds `from` moves to `to` under the new scheme, or, when another
    /// card of the tenant holds `to`, keeps `from` and takes the new scheme
    /// ([`Reindexed::Duplicate`]); a card that no longer holds `from` is left alone. A card always
    /// has an index.
    ///
    /// # Errors
    /// `Unavailable` as any write; nothing is written on any error.
    async fn reindex_cards(
        &self,
        tenant: &TenantId,
        changes: &[IndexChange],
    ) -> Result<Vec<Reindexed>>;

    /// Takes unsold cards (available, or reserved by an unpaid order) out of sale for good at
    /// `now`: they leave every stock figure, and an order that reserved one no longer holds it
    /// (it is given another card when paid). Returns the cards withdrawn; sold, withdrawn and
    /// unknown cards are left alone. Atomic.
    ///
    /// # Errors
    /// `Unavailable` as any write; nothing is written on any error.
    async fn withdraw_cards(
        &self,
        tenant: &TenantId,
        cards: &[CardId],
        now: DateTime<Utc>,
    ) -> Result<Vec<CardId>>;
}

/// The wrapped key ring of each tenant and its encryption counters.
#[async_trait]
pub trait KeyRingStore: Send + Sync {
    /// The tenant's wrapped ring and its version.
    async fn key_ring(&self, tenant: &TenantId) -> Result<Option<(WrappedKeyRing, u64)>>;

    /// Stores a tenant's first ring at version 1.
    ///
    /// # Errors
    /// `Conflict` when the tenant already has one (another process created it first).
    async fn insert_key_ring(&self, ring: &WrappedKeyRing) -> Result<()>;

    /// Replaces the ring whose stored version is `expected_version`, with the change's trail in
    /// the same atomic step; returns the new version.
    ///
    /// # Errors
    /// `NotFound`, or `Conflict` on a stale version or an id of the trail already stored.
    /// Nothing is written on any error.
    async fn update_key_ring(
        &self,
        ring: &WrappedKeyRing,
        expected_version: u64,
        trail: Trail<'_>,
    ) -> Result<u64>;

    /// Stores `ring`, in which `key` is destroyed, over the version `expected_version`, and in the
    /// same atomic step shreds every card of the tenant sealed with `key`: its sealed values are
    /// emptied (so no process can open them again, whatever ring it holds), and unsold ones are
    /// withdrawn at `now`; the trail is written in the same step.
    ///
    /// # Errors
    /// `NotFound`; `Conflict` on a stale version or an id of the trail already stored;
    /// `Invalid` when `ring` does not mark `key` destroyed. Nothing is written on any error.
    async fn destroy_key(
        &self,
        ring: &WrappedKeyRing,
        expected_version: u64,
        key: KeyId,
        now: DateTime<Utc>,
        trail: Trail<'_>,
    ) -> Result<DestroyOutcome>;

    /// Adds `uses` to a data key's encryption counter if it stays within `limit`; bumps the ring's
    /// version; returns the counter after.
    ///
    /// # Errors
    /// `KeyExhausted` when the counter would pass `limit`; `Conflict` when the key is not the
    /// ring's active key (it was rotated: reload the ring); `NotFound` for an unknown ring or key.
    async fn reserve_key_uses(
        &self,
        tenant: &TenantId,
        key: KeyId,
        uses: u64,
        limit: u64,
    ) -> Result<u64>;
}

/// Payment notices.
#[async_trait]
pub trait PaymentStore: Send + Sync {
    /// Records a notice once per (tenant, provider, transaction id) and, in the same atomic step,
    /// writes the order change, marks the listed cards sold to the order (at `now`) and enqueues
    /// the job. A repeated notice writes nothing and returns the first record.
    ///
    /// # Errors
    /// `Conflict` when the order's version is stale or a listed card is not held by the order;
    /// `Invalid` when cards are listed without an order change. Nothing is written on any error,
    /// not even the notice.
    async fn record_payment(
        &self,
        write: PaymentWrite<'_>,
        now: DateTime<Utc>,
    ) -> Result<RecordOutcome>;

    /// A recorded notice.
    async fn payment_notice(
        &self,
        tenant: &TenantId,
        provider: &str,
        transaction_id: &str,
    ) -> Result<Option<PaymentNotice>>;

    /// Keeps, for reconciliation, a notice that repeats a recorded transaction (same tenant,
    /// provider and transaction id) with another order, amount or currency: once per
    /// (tenant, provider, transaction id, order, amount). Its disposition is `Reconcile` with
    /// the reason [`CONFLICTING_REPEAT`](crate::CONFLICTING_REPEAT); the first record is not
    /// changed. Returns true when it was not kept before.
    ///
    /// # Errors
    /// `NotFound` when no notice with that transaction id is recorded; `Invalid` when the notice
    /// names the recorded order and amount (it is a plain repeat).
    async fn flag_conflicting_notice(&self, notice: &PaymentNotice) -> Result<bool>;

    /// Notices kept for reconciliation, conflicting repeats included, oldest first.
    async fn notices_to_reconcile(
        &self,
        tenant: &TenantId,
        limit: usize,
    ) -> Result<Vec<PaymentNotice>>;
}

/// The event log (an outbox hosts can read).
#[async_trait]
pub trait EventStore: Send + Sync {
    /// Appends events that belong to no stored aggregate change (an import report, a rotation).
    async fn append_events(&self, events: &[EventEnvelope]) -> Result<()>;

    /// The events of one aggregate, in the order written.
    async fn aggregate_events(
        &self,
        tenant: &TenantId,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> Result<Vec<EventEnvelope>>;

    /// Up to `limit` events of every tenant written after `after` (from the start when `None`), in
    /// the order written. On a store whose writers commit concurrently (PostgreSQL), an event
    /// whose write commits after a later-written one was read can be passed over: readers that
    /// must see every event use [`read_feed`](EventStore::read_feed).
    async fn events_after(
        &self,
        after: Option<EventId>,
        limit: usize,
    ) -> Result<Vec<EventEnvelope>>;

    /// Up to `limit` events of a tenant after the position `after`, in position order, each
    /// with its position. Gap-free: a reader that asks again after the last position it got
    /// sees every committed event exactly once, also when writers commit out of order (an
    /// event is returned only once no write still in progress can take an earlier position),
    /// and no writer waits for another to take a position.
    async fn read_feed(
        &self,
        tenant: &TenantId,
        after: FeedPosition,
        limit: usize,
    ) -> Result<Vec<FeedEvent>>;

    /// The position of the tenant's last event [`read_feed`](EventStore::read_feed) would
    /// return now ([`FeedPosition::START`] when none): where a consumer that starts at "now"
    /// starts, so that it sees every event committed later.
    async fn feed_head(&self, tenant: &TenantId) -> Result<FeedPosition>;

    /// The stored cursor of the tenant's consumer `name`, if it has one.
    ///
    /// # Errors
    /// `Invalid` for a malformed name (see [`check_consumer_name`](crate::check_consumer_name)).
    async fn consumer_cursor(&self, tenant: &TenantId, name: &str) -> Result<Option<FeedPosition>>;

    /// Moves the tenant's consumer `name` from `expected` (`None`: it has no cursor yet) to
    /// `to`, atomically.
    ///
    /// # Errors
    /// `Conflict` when the stored cursor is not `expected` (another process moved it);
    /// `Invalid` for a malformed name. Nothing is written on any error.
    async fn save_consumer_cursor(
        &self,
        tenant: &TenantId,
        name: &str,
        expected: Option<FeedPosition>,
        to: FeedPosition,
    ) -> Result<()>;
}

/// The audit log.
#[async_trait]
pub trait AuditStore: Send + Sync {
    /// Appends one record.
    async fn append_audit(&self, record: &AuditRecord) -> Result<()>;

    /// A tenant's records, newest first.
    async fn audit_records(&self, tenant: &TenantId, limit: usize) -> Result<Vec<AuditRecord>>;
}

/// Durable jobs with leases.
#[async_trait]
pub trait JobStore: Send + Sync {
    /// Enqueues a job; a job with the same (tenant, dedupe key) already stored is returned instead.
    async fn enqueue(&self, job: &NewJob, now: DateTime<Utc>) -> Result<JobId>;

    /// Claims up to `limit` jobs of the given kinds that are due (queued with `run_at <= now`, or
    /// running with an expired lease) for `worker` until `now + lease`, earliest due first; each
    /// claim counts an attempt. Jobs of other kinds are left alone, whatever their state: a worker
    /// claims only what it can run (during a rolling deploy an older worker leaves a newer kind to
    /// the workers that know it). No kinds, no jobs.
    async fn claim_jobs(
        &self,
        worker: &str,
        kinds: &[&str],
        now: DateTime<Utc>,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<Job>>;

    /// Claims one job by id if it is due; `None` when it is not (done, dead, leased, or later).
    async fn claim_job(
        &self,
        id: JobId,
        worker: &str,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> Result<Option<Job>>;

    /// Extends the lease of a job the worker holds.
    ///
    /// # Errors
    /// `Conflict` when the worker no longer holds it.
    async fn heartbeat(&self, id: JobId, worker: &str, lease_until: DateTime<Utc>) -> Result<()>;

    /// Marks a held job done.
    ///
    /// # Errors
    /// `Conflict` when the worker no longer holds it.
    async fn complete_job(&self, id: JobId, worker: &str) -> Result<()>;

    /// Puts a held job back in the queue for `run_at`, keeping the error.
    ///
    /// # Errors
    /// `Conflict` when the worker no longer holds it.
    async fn retry_job(
        &self,
        id: JobId,
        worker: &str,
        run_at: DateTime<Utc>,
        error: &str,
    ) -> Result<()>;

    /// Gives a held job up.
    ///
    /// # Errors
    /// `Conflict` when the worker no longer holds it.
    async fn dead_letter(&self, id: JobId, worker: &str, reason: &str) -> Result<()>;

    /// A job by id.
    async fn job(&self, id: JobId) -> Result<Option<Job>>;

    /// Dead jobs of a tenant, oldest first.
    async fn dead_jobs(&self, tenant: &TenantId, limit: usize) -> Result<Vec<Job>>;
}

/// Everything a shop stores. Implemented for every type that implements all the ports.
pub trait Store:
    GoodsStore
    + OrderStore
    + VaultStore
    + KeyRingStore
    + PaymentStore
    + EventStore
    + AuditStore
    + JobStore
    + PricingStore
{
}

impl<T> Store for T where
    T: GoodsStore
        + OrderStore
        + VaultStore
        + KeyRingStore
        + PaymentStore
        + EventStore
        + AuditStore
        + JobStore
        + PricingStore
{
}
