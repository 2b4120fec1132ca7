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
    AuditRecord, CONFLICTING_REPEAT, CardState, Claim, DestroyOutcome, FeedEvent, FeedPosition,
    HeldCard, IndexChange, InsertCardsOutcome, Job, JobStatus, NewCard, NewJob, NewOrder,
    NoticeDisposition, OrderChange, OrderCursor, OrderQuery, PaymentNotice, PaymentWrite,
    RecordOutcome, Reindexed, StockCount, StoredCard, check_consumer_name,
};
use crate::ports::{
    AuditStore, EventStore, GoodsStore, JobStore, KeyRingStore, OrderStore, PaymentStore,
    VaultStore,
};
use crate::{Error, GOODS_CHANGED, Result};

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

/// Where each stored event is in the log, by id. Events that arrive in id order (the events of
/// one shop, whose ids come from one sequence) are found by binary search over a plain list;
/// the others in an ordered map.
#[derive(Default)]
struct EventIndex {
    /// Ids of the events that sorted after every event stored before them, in arrival order,
    /// so ascending.
    in_order: Vec<u128>,
    /// Their positions in the log.
    in_order_pos: Vec<usize>,
    /// The events that arrived out of id order.
    others: BTreeMap<u128, usize>,
}

impl EventIndex {
    /// The greatest id stored.
    fn last(&self) -> Option<u128> {
        self.in_order.last().copied()
    }

    fn get(&self, id: &EventId) -> Option<usize> {
        let id = id.seq();
        if self.last().is_none_or(|last| id > last) {
            return None;
        }
        match self.in_order.binary_search(&id) {
            Ok(i) => self.in_order_pos.get(i).copied(),
            Err(_) => self.others.get(&id).copied(),
        }
    }

    /// Records a new id (checked with [`EventIndex::get`] first).
    fn insert(&mut self, id: &EventId, pos: usize) {
        let id = id.seq();
        if self.last().is_none_or(|last| id > last) {
            self.in_order.push(id);
            self.in_order_pos.push(pos);
        } else {
            self.others.insert(id, pos);
        }
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

/// The event log in fixed-size chunks: appending never moves what is stored, so a long-lived
/// store does not copy (and fault in) an ever larger buffer as it grows. Events are kept without
/// the names most of them repeat (tenant, aggregate type, event name), which are stored once.
#[derive(Default)]
struct EventLog {
    chunks: Vec<Vec<StoredEvent>>,
    len: usize,
    /// Every (tenant, aggregate type, event name) stored, by position.
    kinds: Vec<EventKind>,
    kind_pos: Map<EventKind, usize>,
    /// The tenant (its number in `tenants`) of each kind, by the kind's position.
    kind_tenant: Vec<usize>,
    tenants: Map<TenantId, usize>,
    /// Each tenant's events (log positions, ascending), by the tenant's number: its feed.
    by_tenant: Vec<Vec<usize>>,
    /// The correlation ids of the few events that have one, by log position (kept apart so
    /// that the many without one stay small).
    correlations: Map<usize, Arc<str>>,
}

/// The names an event shares with many others.
type EventKind = (TenantId, Cow<'static, str>, Cow<'static, str>, u16);

/// An event as the log keeps it, without its names (and its schema version, kept with them).
struct StoredEvent {
    id: EventId,
    payload: Payload,
    aggregate_id: Arc<str>,
    aggregate_version: u64,
    occurred_at: DateTime<Utc>,
    /// Position in [`EventLog::kinds`].
    kind: usize,
}

impl EventLog {
    const CHUNK: usize = 4096;
    /// Kinds looked for by comparison before the map is asked.
    const SCANNED_KINDS: usize = 16;

    fn len(&self) -> usize {
        self.len
    }

    /// The position of an event's names, stored first if new.
    fn kind_of(&mut self, e: &EventEnvelope) -> usize {
        // A shop writes a handful of kinds: the first few are found by comparing short strings.
        let same = |(tenant, kind, name, version): &EventKind| {
            *name == e.name
                && *kind == e.aggregate_type
                && *version == e.schema_version
                && *tenant == e.tenant
        };
        if let Some(pos) = self.kinds.iter().take(Self::SCANNED_KINDS).position(same) {
            return pos;
        }
        let key: EventKind = (
            e.tenant.clone(),
            e.aggregate_type.clone(),
            e.name.clone(),
            e.schema_version,
        );
        if let Some(pos) = self.kind_pos.get(&key) {
            return *pos;
        }
        let pos = self.kinds.len();
        let next = self.tenants.len();
        let tenant = *self.tenants.entry(key.0.clone()).or_insert(next);
        if tenant == self.by_tenant.len() {
            self.by_tenant.push(Vec::new());
        }
        self.kind_tenant.push(tenant);
        self.kinds.push(key.clone());
        self.kind_pos.insert(key, pos);
        pos
    }

    /// A tenant's feed: the log positions of its events, ascending. A feed position is the log
    /// position plus one ([`FeedPosition::START`] is before the first).
    fn feed(&self, tenant: &TenantId) -> &[usize] {
        self.tenants
            .get(tenant)
            .and_then(|t| self.by_tenant.get(*t))
            .map_or(&[], Vec::as_slice)
    }

    fn push(&mut self, event: EventEnvelope) {
        let kind = self.kind_of(&event);
        if self.chunks.last().is_none_or(|c| c.len() == Self::CHUNK) {
            self.chunks.push(Vec::with_capacity(Self::CHUNK));
        }
        if let Some(feed) = self
            .kind_tenant
            .get(kind)
            .and_then(|t| self.by_tenant.get_mut(*t))
        {
            feed.push(self.len);
        }
        if let Some(correlation) = event.correlation_id {
            self.correlations.insert(self.len, correlation);
        }
        if let Some(chunk) = self.chunks.last_mut() {
            chunk.push(StoredEvent {
                id: event.id,
                payload: event.payload,
                aggregate_id: event.aggregate_id,
                aggregate_version: event.aggregate_version,
                occurred_at: event.occurred_at,
                kind,
            });
            self.len += 1;
        }
    }

    /// The envelope at `pos`, rebuilt from what is stored (copies share their strings).
    fn get(&self, pos: usize) -> Option<EventEnvelope> {
        let e = self
            .chunks
            .get(pos / Self::CHUNK)
            .and_then(|c| c.get(pos % Self::CHUNK))?;
        let (tenant, aggregate_type, name, schema_version) = self.kinds.get(e.kind)?;
        Some(EventEnvelope {
            id: e.id,
            tenant: tenant.clone(),
            aggregate_type: aggregate_type.clone(),
            aggregate_id: e.aggregate_id.clone(),
            aggregate_version: e.aggregate_version,
            name: name.clone(),
            occurred_at: e.occurred_at,
            payload: e.payload.clone(),
            schema_version: *schema_version,
            correlation_id: self.correlations.get(&pos).cloned(),
        })
    }

    fn from(&self, start: usize) -> impl Iterator<Item = EventEnvelope> + '_ {
        (start..self.len).filter_map(|p| self.get(p))
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
    }
}

fn is_live(status: OrderStatus) -> bool {
    status.counts_toward_limits()
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
        }
        if order.status() == OrderStatus::AwaitingPayment {
            self.unpaid
                .insert((order.expires_at(), key.0.clone(), key.1));
        }
        let replaced = self.orders.insert(key, staged.order);
        self.push_checked_events(staged.events);
        replaced
    }

    fn member_quantity(&self, tenant: &TenantId, member: &MemberId, sku: SkuId) -> u64 {
        let Some(ids) = self.member_orders.get(&(tenant.clone(), member.clone())) else {
            return 0;
        };
        ids.iter()
            .filter_map(|id| self.orders.get(&(tenant.clone(), *id)))
            .filter(|o| is_live(o.status()))
            .flat_map(|o| o.lines().iter())
            .filter(|l| l.sku == sku)
            .map(|l| u64::from(l.quantity))
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

#[async_trait]
impl GoodsStore for MemoryStore {
    async fn insert_goods(&self, goods: &Goods, events: &[EventEnvelope]) -> Result<()> {
        let mut s = self.state.lock();
        let tenant = goods.tenant().clone();
        if s.goods.contains_key(&(tenant.clone(), goods.id())) {
            return Err(Error::conflict("goods", goods.id(), "id already stored"));
        }
        if let Some(sku) = goods
            .skus()
            .iter()
            .find(|k| s.sku_goods.contains_key(&(tenant.clone(), k.id)))
        {
            return Err(Error::conflict("sku", sku.id, "id already stored"));
        }
        if s.event_conflict(events).is_some() {
            return Err(Error::conflict("event", goods.id(), "id already stored"));
        }
        for sku in goods.skus() {
            s.sku_goods.insert((tenant.clone(), sku.id), goods.id());
        }
        s.goods.insert((tenant, goods.id()), goods.clone());
        s.push_events(events)
    }

    async fn update_goods(
        &self,
        goods: &Goods,
        expected_version: u64,
        events: &[EventEnvelope],
    ) -> Result<()> {
        let mut s = self.state.lock();
        let tenant = goods.tenant().clone();
        let key = (tenant.clone(), goods.id());
        let stored = s
            .goods
            .get(&key)
            .ok_or_else(|| Error::not_found("goods", goods.id()))?;
        if stored.version() != expected_version {
            return Err(Error::conflict("goods", goods.id(), "stale version"));
        }
        if let Some(sku) = goods.skus().iter().find(|k| {
            s.sku_goods
                .get(&(tenant.clone(), k.id))
                .is_some_and(|g| *g != goods.id())
        }) {
            return Err(Error::conflict("sku", sku.id, "id already stored"));
        }
        if s.event_conflict(events).is_some() {
            return Err(Error::conflict("event", goods.id(), "id already stored"));
        }
        for sku in goods.skus() {
            s.sku_goods.insert((tenant.clone(), sku.id), goods.id());
        }
        s.goods.insert(key, goods.clone());
        s.push_events(events)
    }

    async fn goods(&self, tenant: &TenantId, id: GoodsId) -> Result<Option<Goods>> {
        Ok(self.state.lock().goods.get(&(tenant.clone(), id)).cloned())
    }

    async fn goods_by_sku(&self, tenant: &TenantId, sku: SkuId) -> Result<Option<Goods>> {
        let s = self.state.lock();
        Ok(s.sku_goods
            .get(&(tenant.clone(), sku))
            .and_then(|g| s.goods.get(&(tenant.clone(), *g)))
            .cloned())
    }

    async fn list_goods(&self, tenant: &TenantId) -> Result<Vec<Goods>> {
        let s = self.state.lock();
        let mut all: Vec<Goods> = s
            .goods
            .iter()
            .filter(|((t, _), _)| t == tenant)
            .map(|(_, g)| g.clone())
            .collect();
        all.sort_by_key(Goods::id);
        Ok(all)
    }
}

#[async_trait]
impl OrderStore for MemoryStore {
    async fn place_order(&self, new: NewOrder<'_>, now: DateTime<Utc>) -> Result<Vec<CardId>> {
        Claim::check_all(new.claims)?;
        let staged = Staged::of(new.order, new.events);
        let mut s = self.state.lock();
        let order = new.order;
        let tenant = order.tenant().clone();
        if let Some(taken) = new.claims.iter().find_map(|c| {
            s.claims
                .get(&(tenant.clone(), c.scope.clone(), c.key.clone()))
        }) {
            return Err(Error::Claimed {
                claim: Box::new(taken.clone()),
            });
        }
        if s.orders.contains_key(&(tenant.clone(), order.id())) {
            return Err(Error::conflict("order", order.id(), "id already stored"));
        }
        if let Some(changed) = new.priced_from.iter().find(|g| {
            s.goods
                .get(&(tenant.clone(), g.id))
                .is_none_or(|stored| stored.version() != g.version)
        }) {
            return Err(Error::conflict("goods", changed.id, GOODS_CHANGED));
        }
        for limit in new.member_limits {
            let requested: u32 = order
                .lines()
                .iter()
                .filter(|l| l.sku == limit.sku)
                .map(|l| l.quantity)
                .fold(0u32, u32::saturating_add);
            let already = s.member_quantity(&tenant, order.member(), limit.sku);
            if already.saturating_add(u64::from(requested)) > u64::from(limit.limit) {
                return Err(Error::MemberLimitExceeded {
                    sku: limit.sku,
                    limit: limit.limit,
                    already,
                    requested,
                });
            }
        }
        if s.event_conflict(new.events).is_some() {
            return Err(Error::conflict("event", order.id(), "id already stored"));
        }
        // Choose every card before changing any, so a shortage changes nothing.
        let mut chosen: Vec<CardId> = Vec::new();
        for r in new.reservations {
            if r.quantity == 0 {
                return Err(Error::Invalid("reserve of zero cards".into()));
            }
            let want = usize::try_from(r.quantity).unwrap_or(usize::MAX);
            let free = s.free_cards(&tenant, r.sku, now, want, &chosen);
            if free.len() < want {
                return Err(Error::OutOfStock {
                    sku: r.sku,
                    requested: r.quantity,
                    available: s.free_count(&tenant, r.sku, now),
                });
            }
            chosen.extend(free);
        }
        let until = order.expires_at();
        for id in &chosen {
            s.set_card_state(
                *id,
                CardState::Reserved {
                    order: order.id(),
                    until,
                },
            );
        }
        if !chosen.is_empty() {
            s.order_cards
                .entry((tenant.clone(), order.id()))
                .or_default()
                .extend(chosen.iter().copied());
        }
        s.member_orders
            .entry((tenant.clone(), order.member().clone()))
            .or_default()
            .push(order.id());
        if order.status() == OrderStatus::AwaitingPayment {
            s.unpaid
                .insert((order.expires_at(), tenant.clone(), order.id()));
        }
        for c in new.claims {
            s.claims
                .insert((tenant.clone(), c.scope.clone(), c.key.clone()), c.clone());
        }
        s.orders.insert((tenant, order.id()), staged.order);
        s.push_checked_events(staged.events);
        Ok(chosen)
    }

    async fn claim(&self, tenant: &TenantId, scope: &str, key: &str) -> Result<Option<Claim>> {
        Ok(self
            .state
            .lock()
            .claims
            .get(&(tenant.clone(), scope.to_owned(), key.to_owned()))
            .cloned())
    }

    async fn update_order(&self, change: OrderChange<'_>) -> Result<()> {
        let staged = Staged::of(change.order, change.events);
        let mut s = self.state.lock();
        s.check_order_change(&change)?;
        let replaced = s.apply_order_change(staged);
        drop(s);
        drop(replaced);
        Ok(())
    }

    async fn close_unpaid_order(&self, change: OrderChange<'_>) -> Result<u32> {
        let staged = Staged::of(change.order, change.events);
        let mut s = self.state.lock();
        s.check_order_change(&change)?;
        let released = s.release(change.order.tenant(), change.order.id());
        let replaced = s.apply_order_change(staged);
        drop(s);
        drop(replaced);
        Ok(released)
    }

    async fn order(&self, tenant: &TenantId, id: OrderId) -> Result<Option<Order>> {
        let shared = self.state.lock().orders.get(&(tenant.clone(), id)).cloned();
        Ok(shared.map(|o| Order::clone(&o)))
    }

    async fn member_orders(
        &self,
        tenant: &TenantId,
        member: &MemberId,
        limit: usize,
    ) -> Result<Vec<Order>> {
        let s = self.state.lock();
        let mut out: Vec<Order> = s
            .member_orders
            .get(&(tenant.clone(), member.clone()))
            .map(|ids| {
                ids.iter()
                    .filter_map(|id| s.orders.get(&(tenant.clone(), *id)))
                    .map(|o| Order::clone(o))
                    .collect()
            })
            .unwrap_or_default();
        out.sort_by_key(|o| std::cmp::Reverse(o.id()));
        out.truncate(limit);
        Ok(out)
    }

    async fn orders_updated(
        &self,
        tenant: &TenantId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        after: Option<(DateTime<Utc>, OrderId)>,
        limit: usize,
    ) -> Result<Vec<Order>> {
        let s = self.state.lock();
        let mut out: Vec<&Order> = s
            .orders
            .iter()
            .filter(|((t, _), o)| {
                t == tenant
                    && o.updated_at() >= from
                    && o.updated_at() < to
                    && after.is_none_or(|cursor| (o.updated_at(), o.id()) > cursor)
            })
            .map(|(_, o)| &**o)
            .collect();
        out.sort_by_key(|o| (o.updated_at(), o.id()));
        Ok(out.into_iter().take(limit).cloned().collect())
    }

    async fn search_orders(
        &self,
        tenant: &TenantId,
        query: &OrderQuery,
        after: Option<OrderCursor>,
        limit: usize,
    ) -> Result<Vec<Order>> {
        if !query.is_satisfiable() {
            return Ok(Vec::new());
        }
        let s = self.state.lock();
        let mut out: Vec<&Order> = s
            .orders
            .iter()
            .filter(|((t, _), o)| {
                t == tenant && query.matches(o) && after.is_none_or(|c| c.precedes(o))
            })
            .map(|(_, o)| &**o)
            .collect();
        out.sort_by_key(|o| std::cmp::Reverse((crate::placed_at(o), o.id())));
        Ok(out
            .into_iter()
            .take(limit.min(crate::MAX_SEARCH_PAGE))
            .cloned()
            .collect())
    }

    async fn unpaid_orders_due(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<(TenantId, OrderId)>> {
        let s = self.state.lock();
        Ok(s.unpaid
            .iter()
            .take_while(|(at, _, _)| *at <= now)
            .take(limit)
            .map(|(_, t, id)| (t.clone(), *id))
            .collect())
    }
}

#[async_trait]
impl VaultStore for MemoryStore {
    async fn insert_cards(
        &self,
        tenant: &TenantId,
        cards: &[NewCard],
        now: DateTime<Utc>,
    ) -> Result<InsertCardsOutcome> {
        let mut s = self.state.lock();
        s.check_keys(tenant, cards)?;
        let mut ids = HashSet::with_capacity(cards.len());
        if let Some(c) = cards
            .iter()
            .find(|c| s.cards.contains_key(&c.id) || !ids.insert(c.id))
        {
            return Err(Error::conflict("card", c.id, "id already stored"));
        }
        let mut outcome = InsertCardsOutcome::default();
        let mut seen = HashSet::new();
        for (i, c) in cards.iter().enumerate() {
            if s.holds_index_of(tenant, c) || !seen.insert(c.blind_index) {
                outcome.duplicates.push(i);
                continue;
            }
            outcome.inserted.push(c.id);
        }
        let dup: HashSet<usize> = outcome.duplicates.iter().copied().collect();
        for (i, c) in cards.iter().enumerate() {
            if dup.contains(&i) {
                continue;
            }
            s.blind.insert((tenant.clone(), c.blind_index), c.id);
            s.pools
                .entry((tenant.clone(), c.sku))
                .or_default()
                .free
                .insert(c.id);
            s.cards.insert(c.id, available(tenant, c, now));
        }
        Ok(outcome)
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
        if quantity == 0 {
            return Err(Error::Invalid("reserve of zero cards".into()));
        }
        let mut s = self.state.lock();
        let (reserved, sold) = s.held_by(tenant, order, sku);
        if !reserved.is_empty() || !sold.is_empty() {
            return Ok(sold.into_iter().chain(reserved).collect());
        }
        let want = usize::try_from(quantity).unwrap_or(usize::MAX);
        let chosen = s.free_cards(tenant, sku, now, want, &[]);
        if chosen.len() < want {
            return Err(Error::OutOfStock {
                sku,
                requested: quantity,
                available: s.free_count(tenant, sku, now),
            });
        }
        for id in &chosen {
            s.set_card_state(*id, CardState::Reserved { order, until });
        }
        s.order_cards
            .entry((tenant.clone(), order))
            .or_default()
            .extend(chosen.iter().copied());
        Ok(chosen)
    }

    async fn commit_cards(
        &self,
        tenant: &TenantId,
        sku: SkuId,
        order: OrderId,
        quantity: u32,
        now: DateTime<Utc>,
    ) -> Result<Vec<CardId>> {
        if quantity == 0 {
            return Err(Error::Invalid("commit of zero cards".into()));
        }
        let mut s = self.state.lock();
        let (reserved, sold) = s.held_by(tenant, order, sku);
        let want = usize::try_from(quantity).unwrap_or(usize::MAX);
        if sold.len() >= want {
            return Ok(sold);
        }
        let need = want - sold.len();
        let mut chosen: Vec<CardId> = reserved.into_iter().take(need).collect();
        if chosen.len() < need {
            let short = need - chosen.len();
            let extra = s.free_cards(tenant, sku, now, short, &chosen);
            if extra.len() < short {
                return Err(Error::OutOfStock {
                    sku,
                    requested: quantity,
                    available: (extra.len() + chosen.len() + sold.len()) as u64,
                });
            }
            s.order_cards
                .entry((tenant.clone(), order))
                .or_default()
                .extend(extra.iter().copied());
            chosen.extend(extra);
        }
        for id in &chosen {
            s.set_card_state(*id, CardState::Sold { order, at: now });
        }
        Ok(sold.into_iter().chain(chosen).collect())
    }

    async fn insert_sold_cards(
        &self,
        tenant: &TenantId,
        cards: &[NewCard],
        change: OrderChange<'_>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let staged = Staged::of(change.order, change.events);
        let mut s = self.state.lock();
        if change.order.tenant() != tenant {
            return Err(Error::Invalid("order of another tenant".into()));
        }
        s.check_order_change(&change)?;
        s.check_keys(tenant, cards)?;
        let mut ids = Set::default();
        let mut indexes = Set::default();
        let mut duplicates = Vec::new();
        for (i, c) in cards.iter().enumerate() {
            if s.cards.contains_key(&c.id) || !ids.insert(c.id) {
                return Err(Error::conflict("card", c.id, "id already stored"));
            }
            if s.holds_index_of(tenant, c) || !indexes.insert(c.blind_index) {
                duplicates.push(i);
            }
        }
        if !duplicates.is_empty() {
            return Err(Error::DuplicateCards {
                positions: duplicates,
            });
        }
        let order = change.order.id();
        for c in cards {
            s.blind.insert((tenant.clone(), c.blind_index), c.id);
            s.cards.insert(c.id, available(tenant, c, now));
            s.set_card_state(c.id, CardState::Sold { order, at: now });
            s.order_cards
                .entry((tenant.clone(), order))
                .or_default()
                .push(c.id);
        }
        let replaced = s.apply_order_change(staged);
        drop(s);
        drop(replaced);
        Ok(())
    }

    async fn held_cards(&self, tenant: &TenantId, order: OrderId) -> Result<Vec<HeldCard>> {
        let s = self.state.lock();
        let mut held: Vec<HeldCard> = s
            .order_cards
            .get(&(tenant.clone(), order))
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(|id| s.cards.get(id))
            .filter(|c| c.state.holder() == Some(order))
            .map(|c| HeldCard {
                id: c.id,
                sku: c.sku,
                state: c.state,
            })
            .collect();
        held.sort_by_key(|c| c.id);
        held.dedup_by_key(|c| c.id);
        Ok(held)
    }

    async fn release_cards(&self, tenant: &TenantId, order: OrderId) -> Result<u32> {
        Ok(self.state.lock().release(tenant, order))
    }

    async fn order_cards(&self, tenant: &TenantId, order: OrderId) -> Result<Vec<StoredCard>> {
        let s = self.state.lock();
        Ok(s.order_cards
            .get(&(tenant.clone(), order))
            .map(|ids| {
                ids.iter()
                    .filter_map(|id| s.cards.get(id))
                    .filter(|c| matches!(c.state, CardState::Sold { order: o, .. } if o == order))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn card(&self, tenant: &TenantId, id: CardId) -> Result<Option<StoredCard>> {
        Ok(self
            .state
            .lock()
            .cards
            .get(&id)
            .filter(|c| &c.tenant == tenant)
            .cloned())
    }

    async fn card_by_index(
        &self,
        tenant: &TenantId,
        index: &BlindIndex,
    ) -> Result<Option<StoredCard>> {
        let s = self.state.lock();
        Ok(s.blind
            .get(&(tenant.clone(), *index))
            .and_then(|id| s.cards.get(id))
            .filter(|c| &c.tenant == tenant && c.blind_index == *index)
            .cloned())
    }

    async fn stock(&self, tenant: &TenantId, sku: SkuId, now: DateTime<Utc>) -> Result<StockCount> {
        let s = self.state.lock();
        let key = (tenant.clone(), sku);
        Ok(s.pools.get(&key).map_or_else(StockCount::default, |pool| {
            let available = pool.free_count(now);
            StockCount {
                available,
                reserved: (pool.free.len() as u64 + pool.held.len() as u64) - available,
                sold: pool.sold,
            }
        }))
    }

    async fn cards_sealed_with(
        &self,
        tenant: &TenantId,
        key: KeyId,
        limit: usize,
    ) -> Result<Vec<StoredCard>> {
        let s = self.state.lock();
        let mut out: Vec<StoredCard> = s
            .cards
            .values()
            .filter(|c| &c.tenant == tenant && c.key_id == key)
            .cloned()
            .collect();
        out.sort_by_key(|c| c.id);
        out.truncate(limit);
        Ok(out)
    }

    async fn replace_sealed(
        &self,
        tenant: &TenantId,
        card: CardId,
        expected_key: KeyId,
        sealed: &SealedCard,
        key_id: KeyId,
    ) -> Result<()> {
        let mut s = self.state.lock();
        let stored = s
            .cards
            .get(&card)
            .filter(|c| &c.tenant == tenant)
            .ok_or_else(|| Error::not_found("card", card))?;
        if stored.key_id != expected_key {
            return Err(Error::conflict("card", card, "sealed with another key"));
        }
        if !s.is_active_key(tenant, key_id) {
            return Err(Error::KeyNotActive {
                key: key_id.to_string(),
            });
        }
        if let Some(stored) = s.cards.get_mut(&card) {
            stored.sealed = sealed.clone();
            stored.key_id = key_id;
        }
        Ok(())
    }

    async fn cards_to_reindex(
        &self,
        tenant: &TenantId,
        scheme: IndexScheme,
        limit: usize,
    ) -> Result<Vec<StoredCard>> {
        let s = self.state.lock();
        let mut out: Vec<StoredCard> = s
            .cards
            .values()
            .filter(|c| &c.tenant == tenant && c.index_scheme < scheme)
            .cloned()
            .collect();
        out.sort_by_key(|c| c.id);
        out.truncate(limit);
        Ok(out)
    }

    async fn reindex_cards(
        &self,
        tenant: &TenantId,
        changes: &[IndexChange],
    ) -> Result<Vec<Reindexed>> {
        let mut s = self.state.lock();
        let mut out = Vec::with_capacity(changes.len());
        for change in changes {
            let current = s
                .cards
                .get(&change.card)
                .filter(|c| &c.tenant == tenant && c.blind_index == change.from);
            if current.is_none() {
                out.push(Reindexed::Stale);
                continue;
            }
            let to = (tenant.clone(), change.to);
            let answer = match s.blind.get(&to).copied() {
                Some(holder) if holder != change.card => Reindexed::Duplicate { holder },
                _ => {
                    s.blind.remove(&(tenant.clone(), change.from));
                    s.blind.insert(to, change.card);
                    Reindexed::Moved
                }
            };
            if let Some(card) = s.cards.get_mut(&change.card) {
                if answer == Reindexed::Moved {
                    card.blind_index = change.to;
                }
                card.index_scheme = change.scheme;
            }
            out.push(answer);
        }
        Ok(out)
    }

    async fn withdraw_cards(
        &self,
        tenant: &TenantId,
        cards: &[CardId],
        now: DateTime<Utc>,
    ) -> Result<Vec<CardId>> {
        let mut s = self.state.lock();
        Ok(cards
            .iter()
            .copied()
            .filter(|id| s.withdraw(tenant, *id, now))
            .collect())
    }
}

#[async_trait]
impl KeyRingStore for MemoryStore {
    async fn key_ring(&self, tenant: &TenantId) -> Result<Option<(WrappedKeyRing, u64)>> {
        Ok(self.state.lock().rings.get(tenant).cloned())
    }

    async fn insert_key_ring(&self, ring: &WrappedKeyRing) -> Result<()> {
        let mut s = self.state.lock();
        if s.rings.contains_key(&ring.tenant) {
            return Err(Error::conflict(
                "key ring",
                &ring.tenant,
                "tenant already has one",
            ));
        }
        s.rings.insert(ring.tenant.clone(), (ring.clone(), 1));
        Ok(())
    }

    async fn update_key_ring(&self, ring: &WrappedKeyRing, expected_version: u64) -> Result<u64> {
        let mut s = self.state.lock();
        let stored = s
            .rings
            .get_mut(&ring.tenant)
            .ok_or_else(|| Error::not_found("key ring", &ring.tenant))?;
        if stored.1 != expected_version {
            return Err(Error::conflict("key ring", &ring.tenant, "stale version"));
        }
        *stored = (ring.clone(), expected_version + 1);
        Ok(stored.1)
    }

    async fn destroy_key(
        &self,
        ring: &WrappedKeyRing,
        expected_version: u64,
        key: KeyId,
        now: DateTime<Utc>,
    ) -> Result<DestroyOutcome> {
        if ring.key_state(key) != Some(KeyState::Destroyed) {
            return Err(Error::Invalid(format!(
                "ring does not mark {key} destroyed"
            )));
        }
        let mut s = self.state.lock();
        let stored = s
            .rings
            .get(&ring.tenant)
            .ok_or_else(|| Error::not_found("key ring", &ring.tenant))?;
        if stored.1 != expected_version {
            return Err(Error::conflict("key ring", &ring.tenant, "stale version"));
        }
        let tenant = &ring.tenant;
        let sealed: Vec<CardId> = s
            .cards
            .values()
            .filter(|c| &c.tenant == tenant && c.key_id == key)
            .map(|c| c.id)
            .collect();
        let mut outcome = DestroyOutcome {
            version: expected_version + 1,
            shredded: 0,
            withdrawn: 0,
        };
        for id in sealed {
            if s.withdraw(tenant, id, now) {
                outcome.withdrawn += 1;
            }
            if let Some(card) = s.cards.get_mut(&id) {
                card.sealed = SealedCard {
                    code: SealedValue::from_bytes(Vec::new()),
                    secret: None,
                };
                outcome.shredded += 1;
            }
        }
        s.rings
            .insert(tenant.clone(), (ring.clone(), outcome.version));
        Ok(outcome)
    }

    async fn reserve_key_uses(
        &self,
        tenant: &TenantId,
        key: KeyId,
        uses: u64,
        limit: u64,
    ) -> Result<u64> {
        let mut s = self.state.lock();
        let (ring, version) = s
            .rings
            .get_mut(tenant)
            .ok_or_else(|| Error::not_found("key ring", tenant))?;
        let data_key = ring
            .keys
            .iter_mut()
            .find(|k| k.id == key)
            .ok_or_else(|| Error::not_found("data key", key))?;
        if data_key.state != KeyState::Active {
            return Err(Error::conflict("data key", key, "not the active key"));
        }
        let after = data_key
            .encryptions
            .checked_add(uses)
            .filter(|n| *n <= limit)
            .ok_or_else(|| Error::KeyExhausted {
                key: key.to_string(),
            })?;
        data_key.encryptions = after;
        *version += 1;
        Ok(after)
    }
}

#[async_trait]
impl PaymentStore for MemoryStore {
    async fn record_payment(
        &self,
        write: PaymentWrite<'_>,
        now: DateTime<Utc>,
    ) -> Result<RecordOutcome> {
        let notice = write.notice;
        let key = (
            notice.tenant.clone(),
            notice.provider.clone(),
            notice.transaction_id.clone(),
        );
        let staged = write.change.as_ref().map(|c| Staged::of(c.order, c.events));
        let mut s = self.state.lock();
        if let Some(first) = s.notices.get(&key) {
            return Ok(RecordOutcome::Duplicate(first.notice(&key)));
        }
        if let Some(change) = &write.change {
            s.check_order_change(change)?;
        }
        if !write.sell.is_empty() {
            let Some(change) = &write.change else {
                return Err(Error::Invalid("cards sold without an order change".into()));
            };
            let order = change.order.id();
            for id in write.sell {
                let held = s.cards.get(id).is_some_and(|c| {
                    &c.tenant == change.order.tenant() && c.state.holder() == Some(order)
                });
                if !held {
                    return Err(Error::conflict("card", id, "not held by the order"));
                }
            }
            for id in write.sell {
                let unsold = s
                    .cards
                    .get(id)
                    .is_some_and(|c| !matches!(c.state, CardState::Sold { .. }));
                if unsold {
                    s.set_card_state(*id, CardState::Sold { order, at: now });
                }
            }
        }
        let replaced = staged.and_then(|staged| s.apply_order_change(staged));
        if let Some(job) = write.job {
            s.enqueue(job, now);
        }
        if !matches!(notice.disposition, crate::NoticeDisposition::Applied) {
            s.to_reconcile.push(Reconcile::Recorded(key.clone()));
        }
        s.notices.insert(key, NoticeRow::of(notice));
        drop(s);
        drop(replaced);
        Ok(RecordOutcome::Recorded)
    }

    async fn payment_notice(
        &self,
        tenant: &TenantId,
        provider: &str,
        transaction_id: &str,
    ) -> Result<Option<PaymentNotice>> {
        let key: NoticeKey = (
            tenant.clone(),
            Arc::from(provider),
            Arc::from(transaction_id),
        );
        Ok(self
            .state
            .lock()
            .notices
            .get_key_value(&key)
            .map(|(key, row)| row.notice(key)))
    }

    async fn flag_conflicting_notice(&self, notice: &PaymentNotice) -> Result<bool> {
        let key: NoticeKey = (
            notice.tenant.clone(),
            notice.provider.clone(),
            notice.transaction_id.clone(),
        );
        let mut s = self.state.lock();
        let first = s
            .notices
            .get(&key)
            .ok_or_else(|| Error::not_found("payment notice", &notice.transaction_id))?;
        if first.order == notice.order && first.amount == notice.amount {
            return Err(Error::Invalid(
                "the notice repeats the recorded order and amount".into(),
            ));
        }
        let seen = s.to_reconcile.iter().any(|r| match r {
            Reconcile::Conflict(n) => {
                n.tenant == notice.tenant
                    && n.provider == notice.provider
                    && n.transaction_id == notice.transaction_id
                    && n.order == notice.order
                    && n.amount == notice.amount
            }
            Reconcile::Recorded(_) => false,
        });
        if seen {
            return Ok(false);
        }
        let mut kept = notice.clone();
        kept.disposition = NoticeDisposition::Reconcile {
            reason: CONFLICTING_REPEAT.to_owned(),
        };
        s.to_reconcile.push(Reconcile::Conflict(kept));
        Ok(true)
    }

    async fn notices_to_reconcile(
        &self,
        tenant: &TenantId,
        limit: usize,
    ) -> Result<Vec<PaymentNotice>> {
        let s = self.state.lock();
        Ok(s.to_reconcile
            .iter()
            .filter_map(|r| match r {
                Reconcile::Recorded(k) if &k.0 == tenant => {
                    s.notices.get(k).map(|row| row.notice(k))
                }
                Reconcile::Conflict(n) if &n.tenant == tenant => Some(n.clone()),
                _ => None,
            })
            .take(limit)
            .collect())
    }
}

#[async_trait]
impl EventStore for MemoryStore {
    async fn append_events(&self, events: &[EventEnvelope]) -> Result<()> {
        self.state.lock().push_events(events)
    }

    async fn aggregate_events(
        &self,
        tenant: &TenantId,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> Result<Vec<EventEnvelope>> {
        let s = self.state.lock();
        Ok(s.aggregate_events
            .get(&(
                tenant.clone(),
                Cow::Owned(aggregate_type.to_owned()),
                Arc::from(aggregate_id),
            ))
            .map(|pos| pos.iter().filter_map(|p| s.events.get(*p)).collect())
            .unwrap_or_default())
    }

    async fn events_after(
        &self,
        after: Option<EventId>,
        limit: usize,
    ) -> Result<Vec<EventEnvelope>> {
        let s = self.state.lock();
        let start = match after {
            None => 0,
            Some(id) => s
                .event_pos
                .get(&id)
                .map(|p| p + 1)
                .ok_or_else(|| Error::not_found("event", id))?,
        };
        Ok(s.events.from(start).take(limit).collect())
    }

    async fn read_feed(
        &self,
        tenant: &TenantId,
        after: FeedPosition,
        limit: usize,
    ) -> Result<Vec<FeedEvent>> {
        let s = self.state.lock();
        let feed = s.events.feed(tenant);
        // Writes append under the lock, so the log order is the commit order: gap-free.
        let start = feed.partition_point(|p| (*p as u128) < after.raw());
        Ok(feed[start..]
            .iter()
            .take(limit)
            .filter_map(|p| {
                s.events.get(*p).map(|event| FeedEvent {
                    position: FeedPosition::from_raw(*p as u128 + 1),
                    event,
                })
            })
            .collect())
    }

    async fn feed_head(&self, tenant: &TenantId) -> Result<FeedPosition> {
        let s = self.state.lock();
        Ok(s.events
            .feed(tenant)
            .last()
            .map_or(FeedPosition::START, |p| {
                FeedPosition::from_raw(*p as u128 + 1)
            }))
    }

    async fn consumer_cursor(&self, tenant: &TenantId, name: &str) -> Result<Option<FeedPosition>> {
        check_consumer_name(name)?;
        let s = self.state.lock();
        Ok(s.consumers.get(&(tenant.clone(), name.to_owned())).copied())
    }

    async fn save_consumer_cursor(
        &self,
        tenant: &TenantId,
        name: &str,
        expected: Option<FeedPosition>,
        to: FeedPosition,
    ) -> Result<()> {
        check_consumer_name(name)?;
        let mut s = self.state.lock();
        let key = (tenant.clone(), name.to_owned());
        if s.consumers.get(&key).copied() != expected {
            return Err(Error::conflict("consumer", name, "cursor moved"));
        }
        s.consumers.insert(key, to);
        Ok(())
    }
}

#[async_trait]
impl AuditStore for MemoryStore {
    async fn append_audit(&self, record: &AuditRecord) -> Result<()> {
        let mut s = self.state.lock();
        if !s.audit_ids.insert(record.id) {
            return Err(Error::conflict(
                "audit record",
                record.id,
                "id already stored",
            ));
        }
        s.audit.push(record.clone());
        Ok(())
    }

    async fn audit_records(&self, tenant: &TenantId, limit: usize) -> Result<Vec<AuditRecord>> {
        let s = self.state.lock();
        Ok(s.audit
            .iter()
            .rev()
            .filter(|r| &r.tenant == tenant)
            .take(limit)
            .cloned()
            .collect())
    }
}

#[async_trait]
impl JobStore for MemoryStore {
    async fn enqueue(&self, job: &NewJob, now: DateTime<Utc>) -> Result<JobId> {
        Ok(self.state.lock().enqueue(job, now))
    }

    async fn claim_jobs(
        &self,
        worker: &str,
        kinds: &[&str],
        now: DateTime<Utc>,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<Job>> {
        let mut s = self.state.lock();
        let handled = |id: &JobId| {
            s.jobs
                .get(id)
                .is_some_and(|j| kinds.contains(&j.kind.as_str()))
        };
        let mut due: Vec<(DateTime<Utc>, JobId)> = s
            .queue
            .iter()
            .take_while(|(at, _)| *at <= now)
            .filter(|(_, id)| handled(id))
            .take(limit)
            .copied()
            .collect();
        due.extend(
            s.leases
                .iter()
                .take_while(|(at, _)| *at <= now)
                .filter(|(_, id)| handled(id))
                .take(limit)
                .copied(),
        );
        due.sort();
        due.truncate(limit);
        let until = now + lease;
        Ok(due
            .into_iter()
            .filter_map(|(_, id)| s.claim(id, worker, until))
            .collect())
    }

    async fn claim_job(
        &self,
        id: JobId,
        worker: &str,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> Result<Option<Job>> {
        let mut s = self.state.lock();
        let due = match s.jobs.get(&id).map(|j| (&j.status, j.run_at)) {
            Some((JobStatus::Queued, run_at)) => run_at <= now,
            Some((JobStatus::Running { lease_until, .. }, _)) => *lease_until <= now,
            _ => false,
        };
        Ok(if due {
            s.claim(id, worker, now + lease)
        } else {
            None
        })
    }

    async fn heartbeat(&self, id: JobId, worker: &str, lease_until: DateTime<Utc>) -> Result<()> {
        let mut s = self.state.lock();
        let job = s.held(id, worker)?;
        job.status = JobStatus::Running {
            worker: worker.to_owned(),
            lease_until,
        };
        s.leases.insert((lease_until, id));
        Ok(())
    }

    async fn complete_job(&self, id: JobId, worker: &str) -> Result<()> {
        let mut s = self.state.lock();
        s.held(id, worker)?.status = JobStatus::Done;
        Ok(())
    }

    async fn retry_job(
        &self,
        id: JobId,
        worker: &str,
        run_at: DateTime<Utc>,
        error: &str,
    ) -> Result<()> {
        let mut s = self.state.lock();
        let job = s.held(id, worker)?;
        job.status = JobStatus::Queued;
        job.run_at = run_at;
        job.last_error = Some(error.to_owned());
        s.queue.insert((run_at, id));
        Ok(())
    }

    async fn dead_letter(&self, id: JobId, worker: &str, reason: &str) -> Result<()> {
        let mut s = self.state.lock();
        let job = s.held(id, worker)?;
        job.status = JobStatus::Dead {
            reason: reason.to_owned(),
        };
        job.last_error = Some(reason.to_owned());
        Ok(())
    }

    async fn job(&self, id: JobId) -> Result<Option<Job>> {
        Ok(self.state.lock().jobs.get(&id).cloned())
    }

    async fn dead_jobs(&self, tenant: &TenantId, limit: usize) -> Result<Vec<Job>> {
        let s = self.state.lock();
        let mut out: Vec<Job> = s
            .jobs
            .values()
            .filter(|j| &j.tenant == tenant && matches!(j.status, JobStatus::Dead { .. }))
            .cloned()
            .collect();
        out.sort_by_key(|j| j.id);
        out.truncate(limit);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_event_is_smaller_than_its_envelope() {
        assert!(std::mem::size_of::<StoredEvent>() <= 80);
        assert!(std::mem::size_of::<EventEnvelope>() > std::mem::size_of::<StoredEvent>());
    }

    #[test]
    fn the_log_gives_back_what_it_was_given() {
        let mut log = EventLog::default();
        let mut rng = rand::thread_rng();
        let now = Utc::now();
        let tenants = [TenantId::default(), TenantId::new("other").unwrap()];
        let mut written = Vec::new();
        // More kinds than are found by comparison, so the map is used too.
        for n in 0..40u64 {
            let name: Cow<'static, str> = Cow::Owned(format!("thing.happened_{}", n % 20));
            let e = EventEnvelope {
                id: EventId::generate(now, &mut rng),
                tenant: tenants[usize::from(n % 3 == 0)].clone(),
                aggregate_type: Cow::Borrowed(if n % 2 == 0 { "order" } else { "goods" }),
                aggregate_id: Arc::from(format!("agg-{}", n % 7)),
                aggregate_version: n,
                name,
                occurred_at: now + Duration::seconds(i64::try_from(n).unwrap()),
                payload: Payload::of(&n).unwrap(),
                schema_version: u16::try_from(n % 3).unwrap() + 1,
                correlation_id: (n % 4 == 0).then(|| Arc::from(format!("placement:k-{n}"))),
            };
            log.push(e.clone());
            written.push(e);
        }
        assert_eq!(log.len(), written.len());
        assert_eq!(log.from(0).collect::<Vec<_>>(), written);
        assert_eq!(log.get(17), written.get(17).cloned());
        assert_eq!(log.get(40), None);
    }
}
