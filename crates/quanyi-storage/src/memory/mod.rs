//! The in-memory adapter: every port, behind one lock, so each command is atomic. It is the
//! reference the conformance suite holds the durable adapters to, and the store of tests,
//! examples and single-process hosts that keep nothing across restarts.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use parking_lot::Mutex;
use quanyi_core::{
    AuditId, CardId, EventEnvelope, EventId, GoodsId, JobId, MemberId, OrderId, Payload, SkuId,
    TenantId,
};
use quanyi_goods::Goods;
use quanyi_order::{Order, OrderStatus};
use quanyi_vault::{
    BlindIndex, IndexScheme, KeyId, KeyState, SealedCard, SealedValue, WrappedKeyRing,
};
use smallvec::SmallVec;

use crate::model::{
    AuditRecord, BudgetTake, CONFLICTING_REPEAT, CardState, Claim, DestroyOutcome, FeedEvent,
    FeedPosition, HeldCard, IndexChange, InsertCardsOutcome, Job, JobStatus, NewCard, NewJob,
    NewOrder, NoticeDisposition, OrderChange, OrderCursor, OrderQuery, PaidRefund, PaymentNotice,
    PaymentWrite, RecordOutcome, RefundWrite, Reindexed, StockCount, StoredCard, Trail,
    check_consumer_name, check_paid,
};
use crate::ports::{
    AuditStore, EventStore, GoodsStore, JobStore, KeyRingStore, OrderStore, PaymentStore,
    VaultStore,
};
use crate::{Error, GOODS_CHANGED, PRICING_CHANGED, Result};

mod events;
mod goods;
mod jobs;
mod keys;
mod log;
mod orders;
mod payments;
mod pricing;
mod vault;

use log::{EventIndex, EventLog};

type Key<T> = (TenantId, T);
// Keys are internal ids and validated names; a fast seeded hasher is enough.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type Set<T> = HashSet<T, foldhash::fast::RandomState>;

#[derive(Default)]
struct State {
    goods: Map<Key<GoodsId>, Goods>,
    sku_goods: Map<Key<SkuId>, GoodsId>,
    // Orders are shared: a read clones the order after the lock is released, and a growing map
    // moves pointers, not whole orders.
    orders: Map<Key<OrderId>, Arc<Order>>,
    member_orders: Map<Key<MemberId>, Vec<OrderId>>,
    unpaid: BTreeSet<(DateTime<Utc>, TenantId, OrderId)>,
    /// Orders with an open refund, by tenant and `Order::refund_due`.
    refunds: Map<TenantId, BTreeSet<(DateTime<Utc>, OrderId)>>,
    /// The refund ledger: by tenant, (paid time, refund id).
    refunds_paid: Map<TenantId, BTreeMap<(DateTime<Utc>, String), PaidRefund>>,
    /// The refund ids the ledger holds, by tenant.
    refund_ids: HashSet<(TenantId, String)>,
    cards: IdMap<CardId, StoredCard>,
    pools: Map<Key<SkuId>, Pool>,
    order_cards: Map<Key<OrderId>, Vec<CardId>>,
    /// Every blind index a tenant holds, with the card that holds it.
    blind: Map<Key<BlindIndex>, CardId>,
    rings: Map<TenantId, (WrappedKeyRing, u64)>,
    notices: Map<NoticeKey, NoticeRow>,
    /// The notices kept for reconciliation (not applied), in the order they came: recorded
    /// notices by key, conflicting repeats in full. Notices are never changed once recorded.
    to_reconcile: Vec<Reconcile>,
    events: EventLog,
    event_pos: EventIndex,
    /// Positions in `events` by aggregate; the key shares the envelope's strings. An order's
    /// usual events fit inline.
    aggregate_events: Map<AggregateKey, SmallVec<[usize; 5]>>,
    audit: Vec<AuditRecord>,
    audit_ids: BTreeSet<AuditId>,
    jobs: Map<JobId, Job>,
    job_keys: Map<Key<String>, JobId>,
    queue: BTreeSet<(DateTime<Utc>, JobId)>,
    leases: BTreeSet<(DateTime<Utc>, JobId)>,
    /// Claims sale writes took, by (tenant, scope, key).
    claims: Map<(TenantId, String, String), Claim>,
    /// Budget uses taken by orders not closed unpaid, by (tenant, scope, key).
    budgets: Map<(TenantId, String, String), u64>,
    /// The budgets each order took and how much of each, until it is closed unpaid.
    order_budgets: Map<Key<OrderId>, Vec<(String, String, u64)>>,
    /// Pricing rules by tenant.
    pricing: Map<TenantId, pricing::Rules>,
    /// Issued coupons by (tenant, code).
    coupons: Map<(TenantId, String), crate::IssuedCoupon>,
    /// Consumer cursors, by (tenant, name).
    consumers: Map<(TenantId, String), FeedPosition>,
}

/// A time-ordered id (UUID v7) as one big-endian integer: the same order as the id's bytes.
trait Seq: Copy {
    fn seq(&self) -> u128;
}

impl Seq for CardId {
    fn seq(&self) -> u128 {
        u128::from_be_bytes(*self.as_bytes())
    }
}

impl Seq for EventId {
    fn seq(&self) -> u128 {
        u128::from_be_bytes(*self.as_bytes())
    }
}

/// A map keyed by time-ordered ids, kept in id order: recent entries sit together as the store
/// grows, and comparing two keys is one integer comparison.
struct IdMap<K, V> {
    map: BTreeMap<u128, V>,
    key: std::marker::PhantomData<K>,
}

impl<K, V> Default for IdMap<K, V> {
    fn default() -> Self {
        IdMap {
            map: BTreeMap::new(),
            key: std::marker::PhantomData,
        }
    }
}

impl<K: Seq, V> IdMap<K, V> {
    fn len(&self) -> usize {
        self.map.len()
    }

    fn get(&self, id: &K) -> Option<&V> {
        self.map.get(&id.seq())
    }

    fn get_mut(&mut self, id: &K) -> Option<&mut V> {
        self.map.get_mut(&id.seq())
    }

    fn contains_key(&self, id: &K) -> bool {
        self.map.contains_key(&id.seq())
    }

    fn insert(&mut self, id: K, value: V) -> Option<V> {
        self.map.insert(id.seq(), value)
    }

    fn values(&self) -> impl Iterator<Item = &V> {
        self.map.values()
    }
}

/// An order change copied before the store's lock is taken, so that the lock is held for moves
/// and index updates only.
struct Staged {
    order: Arc<Order>,
    events: Vec<EventEnvelope>,
}

impl Staged {
    fn of(order: &Order, events: &[EventEnvelope]) -> Self {
        Staged {
            order: Arc::new(order.clone()),
            events: events.to_vec(),
        }
    }
}

/// An event's aggregate: tenant, type, id.
type AggregateKey = (TenantId, Cow<'static, str>, Arc<str>);

/// A payment notice's identity: tenant, provider, transaction id.
type NoticeKey = (TenantId, Arc<str>, Arc<str>);

/// A notice kept for reconciliation.
enum Reconcile {
    /// A recorded notice that was not applied.
    Recorded(NoticeKey),
    /// A repeat of a recorded transaction with another order or amount.
    Conflict(PaymentNotice),
}

/// A recorded payment notice without the names its key holds.
struct NoticeRow {
    order: OrderId,
    amount: quanyi_core::Money,
    received_at: DateTime<Utc>,
    disposition: crate::NoticeDisposition,
}

impl NoticeRow {
    fn of(notice: &PaymentNotice) -> Self {
        NoticeRow {
            order: notice.order,
            amount: notice.amount,
            received_at: notice.received_at,
            disposition: notice.disposition.clone(),
        }
    }

    fn notice(&self, (tenant, provider, transaction_id): &NoticeKey) -> PaymentNotice {
        PaymentNotice {
            tenant: tenant.clone(),
            provider: provider.clone(),
            transaction_id: transaction_id.clone(),
            order: self.order,
            amount: self.amount,
            received_at: self.received_at,
            disposition: self.disposition.clone(),
        }
    }
}

/// The unsold cards of one SKU, indexed so that finding free cards costs what is taken, not
/// what is stocked.
#[derive(Default)]
struct Pool {
    /// Available cards, oldest first.
    free: BTreeSet<CardId>,
    /// Reserved cards by deadline; those at or before `now` count as free.
    held: BTreeSet<(DateTime<Utc>, CardId)>,
    /// How many were sold.
    sold: u64,
}

impl Pool {
    /// Up to `n` free cards at `now`, oldest first, skipping `exclude`.
    fn take(&self, now: DateTime<Utc>, n: usize, exclude: &[CardId]) -> Vec<CardId> {
        let mut out: Vec<CardId> = self
            .free
            .iter()
            .filter(|id| !exclude.contains(id))
            .take(n)
            .copied()
            .collect();
        out.extend(
            self.held
                .iter()
                .take_while(|(until, _)| *until <= now)
                .map(|(_, id)| *id)
                .filter(|id| !exclude.contains(id)),
        );
        out.sort_unstable();
        out.truncate(n);
        out
    }

    /// How many cards are free at `now`.
    fn free_count(&self, now: DateTime<Utc>) -> u64 {
        let expired = self
            .held
            .iter()
            .take_while(|(until, _)| *until <= now)
            .count();
        (self.free.len() + expired) as u64
    }
}

/// Every storage port in memory. Cheap to create; nothing survives the process.
///
/// ```
/// use std::sync::Arc;
/// use quanyi_storage::{MemoryStore, Store};
/// let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
/// # let _ = store;
/// ```
#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore::default()
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.state.lock();
        f.debug_struct("MemoryStore")
            .field("goods", &s.goods.len())
            .field("orders", &s.orders.len())
            .field("cards", &s.cards.len())
            .field("events", &s.events.len())
            .field("jobs", &s.jobs.len())
            .finish()
    }
}

/// A new card as stored, available.
fn available(tenant: &TenantId, c: &NewCard, now: DateTime<Utc>) -> StoredCard {
    StoredCard {
        id: c.id,
        tenant: tenant.clone(),
        sku: c.sku,
        batch: c.batch,
        blind_index: c.blind_index,
        index_scheme: c.index_scheme,
        sealed: c.sealed.clone(),
        key_id: c.key_id,
        state: CardState::Available,
        imported_at: now,
        revealed_at: None,
        voided_at: None,
    }
}

impl State {
    /// The first event id that is stored already or repeats within `events`.
    fn event_conflict(&self, events: &[EventEnvelope]) -> Option<EventId> {
        // A change carries a handful of events: comparing pairs beats building a set.
        events
            .iter()
            .enumerate()
            .find(|(i, e)| {
                self.event_pos.get(&e.id).is_some() || events[..*i].iter().any(|p| p.id == e.id)
            })
            .map(|(_, e)| e.id)
    }

    /// Refuses a trail whose event ids or audit id are stored already (checked before the
    /// change, so a refused trail changes nothing).
    fn check_trail(&self, trail: &Trail<'_>, id: impl fmt::Display) -> Result<()> {
        if self.event_conflict(trail.events).is_some() {
            return Err(Error::conflict("event", id, "id already stored"));
        }
        if let Some(record) = trail.audit {
            if self.audit_ids.contains(&record.id) {
                return Err(Error::conflict(
                    "audit record",
                    record.id,
                    "id already stored",
                ));
            }
        }
        Ok(())
    }

    /// Writes a checked trail.
    fn push_trail(&mut self, trail: &Trail<'_>) {
        self.push_checked_events(trail.events.to_vec());
        if let Some(record) = trail.audit {
            self.audit_ids.insert(record.id);
            self.audit.push(record.clone());
        }
    }

    fn push_events(&mut self, events: &[EventEnvelope]) -> Result<()> {
        if let Some(id) = self.event_conflict(events) {
            return Err(Error::conflict("event", id, "id already stored"));
        }
        self.push_checked_events(events.to_vec());
        Ok(())
    }

    /// Appends events whose ids were checked with [`State::event_conflict`] under this lock.
    fn push_checked_events(&mut self, events: Vec<EventEnvelope>) {
        // The events of one change usually share their aggregate: look its index up once.
        let mut run: Option<(AggregateKey, &mut SmallVec<[usize; 5]>)> = None;
        for e in events {
            let pos = self.events.len();
            self.event_pos.insert(&e.id, pos);
            let same = run.as_ref().is_some_and(|((tenant, kind, id), _)| {
                *tenant == e.tenant && *kind == e.aggregate_type && *id == e.aggregate_id
            });
            if !same {
                let key = (
                    e.tenant.clone(),
                    e.aggregate_type.clone(),
                    e.aggregate_id.clone(),
                );
                let index = self.aggregate_events.entry(key.clone()).or_default();
                run = Some((key, index));
            }
            if let Some((_, index)) = run.as_mut() {
                index.push(pos);
            }
            self.events.push(e);
        }
    }

    fn check_order_change(&self, change: &OrderChange<'_>) -> Result<()> {
        let key = (change.order.tenant().clone(), change.order.id());
        let stored = self
            .orders
            .get(&key)
            .ok_or_else(|| Error::not_found("order", change.order.id()))?;
        if stored.version() != change.expected_version {
            return Err(Error::conflict("order", change.order.id(), "stale version"));
        }
        if change.order.version() <= change.expected_version {
            return Err(Error::Invalid(format!(
                "order {} written without a new version",
                change.order.id()
            )));
        }
        if self.event_conflict(change.events).is_some() {
            return Err(Error::conflict(
                "event",
                change.order.id(),
                "id already stored",
            ));
        }
        Ok(())
    }

    /// Applies a change checked with [`State::check_order_change`] under this lock. Returns the
    /// order it replaces, to be dropped once the lock is released.
    fn apply_order_change(&mut self, staged: Staged) -> Option<Arc<Order>> {
        let order = &*staged.order;
        let key = (order.tenant().clone(), order.id());
        if let Some(old) = self.orders.get(&key) {
            if old.status() == OrderStatus::AwaitingPayment {
                self.unpaid
                    .remove(&(old.expires_at(), key.0.clone(), key.1));
            }
            if let Some(due) = old.refund_due() {
                if let Some(queue) = self.refunds.get_mut(&key.0) {
                    queue.remove(&(due, key.1));
                }
            }
        }
        if order.status() == OrderStatus::AwaitingPayment {
            self.unpaid
                .insert((order.expires_at(), key.0.clone(), key.1));
        }
        if let Some(due) = order.refund_due() {
            self.refunds
                .entry(key.0.clone())
                .or_default()
                .insert((due, key.1));
        }
        let replaced = self.orders.insert(key, staged.order);
        self.push_checked_events(staged.events);
        replaced
    }

    fn member_quantity(
        &self,
        tenant: &TenantId,
        member: &MemberId,
        limit: &crate::MemberLimit,
    ) -> u64 {
        let Some(ids) = self.member_orders.get(&(tenant.clone(), member.clone())) else {
            return 0;
        };
        ids.iter()
            .filter_map(|id| self.orders.get(&(tenant.clone(), *id)))
            .filter(|o| o.status().counts_toward_limit(limit.release_on_refund))
            .map(|o| u64::from(o.quantity_of(limit.sku)))
            .sum()
    }

    fn enqueue(&mut self, job: &NewJob, now: DateTime<Utc>) -> JobId {
        let key = (job.tenant.clone(), job.dedupe_key.clone());
        if let Some(id) = self.job_keys.get(&key) {
            return *id;
        }
        self.job_keys.insert(key, job.id);
        self.queue.insert((job.run_at, job.id));
        self.jobs.insert(
            job.id,
            Job {
                id: job.id,
                tenant: job.tenant.clone(),
                kind: job.kind.clone(),
                dedupe_key: job.dedupe_key.clone(),
                payload: job.payload.clone(),
                run_at: job.run_at,
                status: JobStatus::Queued,
                attempts: 0,
                last_error: None,
                created_at: now,
            },
        );
        job.id
    }

    /// Claims a job known to be due.
    fn claim(&mut self, id: JobId, worker: &str, lease_until: DateTime<Utc>) -> Option<Job> {
        let job = self.jobs.get_mut(&id)?;
        match &job.status {
            JobStatus::Queued => {
                self.queue.remove(&(job.run_at, id));
            }
            JobStatus::Running { lease_until, .. } => {
                self.leases.remove(&(*lease_until, id));
            }
            JobStatus::Done | JobStatus::Dead { .. } => return None,
        }
        job.status = JobStatus::Running {
            worker: worker.to_owned(),
            lease_until,
        };
        job.attempts = job.attempts.saturating_add(1);
        self.leases.insert((lease_until, id));
        Some(job.clone())
    }

    /// The job if `worker` holds it; removes its lease entry.
    fn held(&mut self, id: JobId, worker: &str) -> Result<&mut Job> {
        let job = self
            .jobs
            .get_mut(&id)
            .ok_or_else(|| Error::not_found("job", id))?;
        match &job.status {
            JobStatus::Running {
                worker: w,
                lease_until,
            } if w == worker => {
                self.leases.remove(&(*lease_until, id));
                Ok(job)
            }
            _ => Err(Error::conflict("job", id, "not held by this worker")),
        }
    }

    /// Moves a card to `state`, keeping its pool's indexes true.
    fn set_card_state(&mut self, id: CardId, state: CardState) {
        let Some(card) = self.cards.get_mut(&id) else {
            return;
        };
        let old = std::mem::replace(&mut card.state, state);
        let pool = self
            .pools
            .entry((card.tenant.clone(), card.sku))
            .or_default();
        match old {
            CardState::Available => {
                pool.free.remove(&id);
            }
            CardState::Reserved { until, .. } => {
                pool.held.remove(&(until, id));
            }
            CardState::Sold { .. } | CardState::Withdrawn { .. } => {}
        }
        match state {
            CardState::Available => {
                pool.free.insert(id);
            }
            CardState::Reserved { until, .. } => {
                pool.held.insert((until, id));
            }
            CardState::Sold { .. } => pool.sold += 1,
            CardState::Withdrawn { .. } => {}
        }
    }

    /// True when the tenant's active data key is `key`.
    fn is_active_key(&self, tenant: &TenantId, key: KeyId) -> bool {
        self.rings
            .get(tenant)
            .is_some_and(|(ring, _)| ring.active == key)
    }

    /// Refuses cards sealed with a key that is not the tenant's active one.
    fn check_keys(&self, tenant: &TenantId, cards: &[NewCard]) -> Result<()> {
        match cards.iter().find(|c| !self.is_active_key(tenant, c.key_id)) {
            Some(c) => Err(Error::KeyNotActive {
                key: c.key_id.to_string(),
            }),
            None => Ok(()),
        }
    }

    /// True when the tenant holds the card's index or legacy index.
    fn holds_index_of(&self, tenant: &TenantId, c: &NewCard) -> bool {
        std::iter::once(c.blind_index)
            .chain(c.legacy_index)
            .any(|i| self.blind.contains_key(&(tenant.clone(), i)))
    }

    /// Takes an unsold card out of sale; false when it is sold, withdrawn or unknown.
    fn withdraw(&mut self, tenant: &TenantId, id: CardId, now: DateTime<Utc>) -> bool {
        let Some(card) = self.cards.get(&id).filter(|c| &c.tenant == tenant) else {
            return false;
        };
        let holder = match card.state {
            CardState::Available => None,
            CardState::Reserved { order, .. } => Some(order),
            CardState::Sold { .. } | CardState::Withdrawn { .. } => return false,
        };
        self.set_card_state(id, CardState::Withdrawn { at: now });
        if let Some(order) = holder {
            let key = (tenant.clone(), order);
            if let Some(ids) = self.order_cards.get_mut(&key) {
                ids.retain(|c| *c != id);
                if ids.is_empty() {
                    self.order_cards.remove(&key);
                }
            }
        }
        true
    }

    /// Returns the order's reserved cards to stock; answers how many.
    fn release(&mut self, tenant: &TenantId, order: OrderId) -> u32 {
        let key = (tenant.clone(), order);
        let Some(ids) = self.order_cards.remove(&key) else {
            return 0;
        };
        let mut released = 0u32;
        let mut kept = Vec::new();
        for id in ids {
            let Some(card) = self.cards.get(&id) else {
                continue;
            };
            match card.state {
                CardState::Reserved { order: o, .. } if o == order => {
                    self.set_card_state(id, CardState::Available);
                    released = released.saturating_add(1);
                }
                CardState::Sold { order: o, .. } if o == order => kept.push(id),
                _ => {}
            }
        }
        if !kept.is_empty() {
            self.order_cards.insert(key, kept);
        }
        released
    }

    /// Up to `n` free cards of a SKU at `now`, oldest first, skipping `exclude`.
    fn free_cards(
        &self,
        tenant: &TenantId,
        sku: SkuId,
        now: DateTime<Utc>,
        n: usize,
        exclude: &[CardId],
    ) -> Vec<CardId> {
        self.pools
            .get(&(tenant.clone(), sku))
            .map(|pool| pool.take(now, n, exclude))
            .unwrap_or_default()
    }

    fn free_count(&self, tenant: &TenantId, sku: SkuId, now: DateTime<Utc>) -> u64 {
        self.pools
            .get(&(tenant.clone(), sku))
            .map_or(0, |pool| pool.free_count(now))
    }

    fn held_by(&self, tenant: &TenantId, order: OrderId, sku: SkuId) -> (Vec<CardId>, Vec<CardId>) {
        let mut reserved = Vec::new();
        let mut sold = Vec::new();
        for id in self
            .order_cards
            .get(&(tenant.clone(), order))
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            if let Some(card) = self.cards.get(id).filter(|c| c.sku == sku) {
                match card.state {
                    CardState::Reserved { order: o, .. } if o == order => reserved.push(*id),
                    CardState::Sold { order: o, .. } if o == order => sold.push(*id),
                    _ => {}
                }
            }
        }
        (reserved, sold)
    }
}
