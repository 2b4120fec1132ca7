//! The shop: its builder, shared state and the helpers every use case needs.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use parking_lot::RwLock;
use quanyi_core::{
    AuditId, Calendar, Clock, DomainEvent, EventEnvelope, EventId, SystemClock, TenantId,
};
use quanyi_storage::{AuditAction, AuditOutcome, AuditRecord, Store};
use quanyi_supplier::{BreakerConfig, Breakers, StockCache, Supplier, SupplierId};
use quanyi_vault::{DEFAULT_KEY_USE_LIMIT, KeyProvider, KeyRing, RootKey};

use crate::checkout::DecideStage;
use crate::consumers::{Consumers, EventConsumer};
use crate::jobs::{DEFAULT_EXPIRY_SWEEP_SECONDS, JobHandler, JobKinds, Sweep};
use crate::memo::{GoodsMemo, PlacedOrders};
use crate::{Error, PaymentGateway, Result};

/// How long an unpaid order holds its stock unless told otherwise: 15 minutes.
pub const DEFAULT_RESERVATION_TTL_MINUTES: i64 = 15;

/// How long a shop trusts the key ring it has cached before it reads the stored ring again,
/// unless told otherwise: 60 seconds. A data key retired by another process stops opening in
/// this one at most this long after the retirement was stored.
pub const DEFAULT_KEY_RING_REFRESH_SECONDS: i64 = 60;

/// How long a paid line may wait on its suppliers, from the payment, before it is given up
/// and refunded, unless told otherwise: 24 hours.
pub const DEFAULT_SUPPLIER_DEADLINE_HOURS: i64 = 24;

/// What becomes of a paid line still waiting on its suppliers past the shop's supplier
/// deadline ([`ShopBuilder::supplier_deadline`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OverduePolicy {
    /// Given up and refunded through the payment gateway (the default).
    #[default]
    Refund,
    /// Held for an operator, who decides it delivered or failed
    /// ([`Orders::resolve_held`](crate::Orders::resolve_held)); the order keeps fulfilling
    /// meanwhile and no supplier is called again for the line.
    Hold,
}

/// Builds a [`Shop`]. The store and the key provider are required; the rest has defaults.
///
/// ```
/// use std::sync::Arc;
/// use quanyi::{Shop, MemoryStore, StaticKeyProvider, RootKey};
/// let keys = StaticKeyProvider::new(RootKey::generate(&mut rand::thread_rng()));
/// let shop = Shop::builder(Arc::new(MemoryStore::new()), Arc::new(keys))
///     .reservation_ttl(chrono::Duration::minutes(10))
///     .build()?;
/// # let _ = shop;
/// # Ok::<(), quanyi::Error>(())
/// ```
pub struct ShopBuilder {
    store: Arc<dyn Store>,
    keys: Arc<dyn KeyProvider>,
    clock: Arc<dyn Clock>,
    tenant: TenantId,
    reservation_ttl: Duration,
    key_use_limit: u64,
    key_ring_refresh: Duration,
    worker: String,
    lease: Duration,
    gateway: Option<Arc<dyn PaymentGateway>>,
    suppliers: HashMap<SupplierId, Arc<dyn Supplier>>,
    breakers: BreakerConfig,
    stock_fresh_for: Duration,
    supplier_deadline: Duration,
    overdue: OverduePolicy,
    refund_review: Duration,
    pricing_refresh: std::time::Duration,
    links: Option<(String, Duration)>,
    job_handlers: Vec<Arc<dyn JobHandler>>,
    sweeps: Vec<Arc<dyn Sweep>>,
    expiry_every: Duration,
    consumers: Vec<Arc<dyn EventConsumer>>,
    time_zone: Option<String>,
    decide: Option<Arc<dyn DecideStage>>,
}

impl fmt::Debug for ShopBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShopBuilder")
            .field("tenant", &self.tenant)
            .field("reservation_ttl", &self.reservation_ttl)
            .field("key_use_limit", &self.key_use_limit)
            .field("worker", &self.worker)
            .field("time_zone", &self.time_zone)
            .finish_non_exhaustive()
    }
}

impl ShopBuilder {
    /// The clock (default: the system clock). Tests pass a [`quanyi_core::ManualClock`].
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The tenant this handle works for (default: [`TenantId::default`]); see [`Shop::with_tenant`].
    pub fn tenant(mut self, tenant: TenantId) -> Self {
        self.tenant = tenant;
        self
    }

    /// How long an unpaid order holds its card keys (default 15 minutes).
    pub fn reservation_ttl(mut self, ttl: Duration) -> Self {
        self.reservation_ttl = ttl;
        self
    }

    /// Seals per data key before rotation is forced (default [`DEFAULT_KEY_USE_LIMIT`], far below
    /// the 2^32 limit of random 96-bit nonces).
    pub fn key_use_limit(mut self, limit: u64) -> Self {
        self.key_use_limit = limit;
        self
    }

    /// How long the shop uses its cached key ring before reading the stored one again (default
    /// [`DEFAULT_KEY_RING_REFRESH_SECONDS`]). This bounds how long a data key retired by another
    /// process keeps opening here; a destroyed key never opens again anywhere, since the store
    /// shreds what it sealed in the same step.
    pub fn key_ring_refresh(mut self, refresh: Duration) -> Self {
        self.key_ring_refresh = refresh;
        self
    }

    /// The name this process uses when it claims jobs (default `worker-<random>`).
    pub fn worker_name(mut self, name: impl Into<String>) -> Self {
        self.worker = name.into();
        self
    }

    /// How long a claimed job is held before another worker may take it over (default 60 s).
    pub fn job_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// The payment provider used to pay back what could not be delivered. Without one, a
    /// refund's job is given up with the reason "no payment gateway", for a person to handle.
    pub fn payment_gateway(mut self, gateway: Arc<dyn PaymentGateway>) -> Self {
        self.gateway = Some(gateway);
        self
    }

    /// A supplier that fulfils SKUs whose routes name it (direct top-ups). Registering a
    /// second supplier with the same id replaces the first.
    pub fn supplier(mut self, supplier: Arc<dyn Supplier>) -> Self {
        self.suppliers.insert(supplier.id().clone(), supplier);
        self
    }

    /// When a supplier's circuit breaker opens and how it probes again (default: 5 failures in
    /// a row, open for 30 s, 1 probe).
    pub fn breaker_config(mut self, config: BreakerConfig) -> Self {
        self.breakers = config;
        self
    }

    /// How long a supplier's stock figure is trusted before it is asked again (default 60 s).
    pub fn supplier_stock_fresh_for(mut self, fresh_for: Duration) -> Self {
        self.stock_fresh_for = fresh_for;
        self
    }

    /// How long a paid line may wait on its suppliers, counted from the payment (default
    /// [`DEFAULT_SUPPLIER_DEADLINE_HOURS`]): past it the line is given up
    /// (`supplier_overdue`), refunded through the payment gateway, and audited
    /// (`supplier_overdue`) for reconciliation; if the supplier still fulfils it later,
    /// [`Shop::reconcile_supplier`] reports the request as a status mismatch. An order is
    /// never left waiting on a supplier for good.
    pub fn supplier_deadline(mut self, deadline: Duration) -> Self {
        self.supplier_deadline = deadline;
        self
    }

    /// What becomes of a line past the supplier deadline: refunded (the default) or held for
    /// an operator. Either way the case is audited (`supplier_overdue`) with its request.
    pub fn supplier_overdue(mut self, policy: OverduePolicy) -> Self {
        self.overdue = policy;
        self
    }

    /// Delivers link goods that are not stocked from the vault as signed links: `base` (your
    /// redemption endpoint, at most 100 characters, http or https) with a subject naming the
    /// order, line and unit, an expiry `valid_for` after delivery, and a signature that
    /// [`Shop::verify_link`] checks without a lookup.
    pub fn signed_links(mut self, base: impl Into<String>, valid_for: Duration) -> Self {
        self.links = Some((base.into(), valid_for));
        self
    }

    /// Registers a host's job kind: the shop's workers claim and run jobs of that kind
    /// ([`Shop::enqueue_job`] enqueues them). A worker claims only the kinds its shop runs.
    pub fn job_handler(mut self, handler: Arc<dyn JobHandler>) -> Self {
        self.job_handlers.push(handler);
        self
    }

    /// Registers a sweep: work the shop's workers run once per period, whichever process gets
    /// to it (see [`Sweep`]).
    pub fn sweep(mut self, sweep: Arc<dyn Sweep>) -> Self {
        self.sweeps.push(sweep);
        self
    }

    /// How often the workers expire unpaid orders past their deadline (the engine's sweep
    /// [`EXPIRE_UNPAID_SWEEP`](crate::EXPIRE_UNPAID_SWEEP); default [`DEFAULT_EXPIRY_SWEEP_SECONDS`]). An order is expired
    /// at most this long after its deadline; its reserved card keys are free for other buyers
    /// from the deadline on either way.
    pub fn expiry_sweep_every(mut self, every: Duration) -> Self {
        self.expiry_every = every;
        self
    }

    /// How long this process prices by the pricing rules it last read before it asks the
    /// store whether they changed (default 1 s). The rules are written through
    /// [`Shop::promotions`]; a placement priced from rules that changed meanwhile is refused by
    /// the store and priced again from the new rules whatever this setting, so it bounds only
    /// how long a quote may show a replaced price.
    pub fn pricing_refresh(mut self, every: std::time::Duration) -> Self {
        self.pricing_refresh = every;
        self
    }

    /// How long operators have to decide a buyer's refund request that needs a decision
    /// (default [`DEFAULT_REFUND_REVIEW_HOURS`](crate::DEFAULT_REFUND_REVIEW_HOURS)): the
    /// request's deadline in the refund queue, where it is listed overdue after it. The clock
    /// never decides a request.
    pub fn refund_review(mut self, within: Duration) -> Self {
        self.refund_review = within;
        self
    }

    /// The checkout's decide stage (see [`DecideStage`]); without one every order is allowed
    /// ([`quanyi_order::ALLOW_ALL_STAGE`]).
    pub fn decide_stage(mut self, stage: Arc<dyn DecideStage>) -> Self {
        self.decide = Some(stage);
        self
    }

    /// The shop's time zone, an IANA name (`Asia/Shanghai`): every calendar rule follows it
    /// (daily and monthly sweeps now; daily caps, monthly grants and billing periods as those
    /// domains join). Without one the calendar is UTC.
    pub fn time_zone(mut self, name: impl Into<String>) -> Self {
        self.time_zone = Some(name.into());
        self
    }

    /// Registers a durable consumer of the tenant's event feed, run by every worker pass (see
    /// [`EventConsumer`]).
    pub fn consumer(mut self, consumer: Arc<dyn EventConsumer>) -> Self {
        self.consumers.push(consumer);
        self
    }

    /// Validates the settings and loads the root key.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a non-positive TTL, lease, key ring refresh or key-use limit,
    /// an empty worker name, a time zone that is not an IANA name, or a job kind or sweep that
    /// is invalid or registered twice; [`Error::Vault`] when the key provider cannot supply the root key.
    pub fn build(self) -> Result<Shop> {
        if self.reservation_ttl <= Duration::zero() {
            return Err(Error::InvalidInput(
                "reservation ttl must be positive".into(),
            ));
        }
        if self.pricing_refresh.is_zero() {
            return Err(Error::InvalidInput(
                "pricing refresh must be positive".into(),
            ));
        }
        if self.refund_review <= Duration::zero() {
            return Err(Error::InvalidInput(
                "the refund review window must be positive".into(),
            ));
        }
        if self.supplier_deadline <= Duration::zero() {
            return Err(Error::InvalidInput(
                "supplier deadline must be positive".into(),
            ));
        }
        if self.lease <= Duration::zero() {
            return Err(Error::InvalidInput("job lease must be positive".into()));
        }
        if self.key_ring_refresh <= Duration::zero() {
            return Err(Error::InvalidInput(
                "key ring refresh must be positive".into(),
            ));
        }
        if self.key_use_limit == 0 || self.key_use_limit > DEFAULT_KEY_USE_LIMIT {
            return Err(Error::InvalidInput(format!(
                "key use limit must be between 1 and {DEFAULT_KEY_USE_LIMIT}"
            )));
        }
        if self.worker.is_empty() || self.worker.len() > 64 {
            return Err(Error::InvalidInput(
                "worker name must be 1 to 64 bytes".into(),
            ));
        }
        if let Some((base, valid_for)) = &self.links {
            let scheme = base.starts_with("https://") || base.starts_with("http://");
            if !scheme || base.len() > 100 || !base.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(Error::InvalidInput(
                    "signed links need an http(s) base of at most 100 printable characters".into(),
                ));
            }
            if *valid_for <= Duration::zero() {
                return Err(Error::InvalidInput(
                    "signed links need a positive lifetime".into(),
                ));
            }
        }
        let calendar = match &self.time_zone {
            None => Calendar::utc(),
            Some(name) => Calendar::new(name).map_err(|e| {
                Error::InvalidInput(format!("the shop's time zone must be an IANA name: {e}"))
            })?,
        };
        let jobs = JobKinds::new(self.job_handlers, self.sweeps, self.expiry_every)?;
        let consumers = Consumers::new(self.consumers)?;
        let root = self.keys.root_key()?;
        Ok(Shop {
            inner: Arc::new(Inner {
                store: self.store,
                clock: self.clock,
                root,
                rings: RwLock::new(HashMap::new()),
                reservation_ttl: self.reservation_ttl,
                key_use_limit: self.key_use_limit,
                key_ring_refresh: self.key_ring_refresh,
                worker: self.worker,
                lease: self.lease,
                gateway: self.gateway,
                suppliers: self.suppliers,
                breakers: Breakers::new(self.breakers),
                supplier_stock: parking_lot::Mutex::new(StockCache::new(self.stock_fresh_for)),
                supplier_deadline: self.supplier_deadline,
                overdue: self.overdue,
                refund_review: self.refund_review,
                pricing_refresh: self.pricing_refresh,
                rules_cache: crate::promotions::RulesCache::default(),
                links: self.links,
                watched_routes: parking_lot::Mutex::new(Vec::new()),
                event_ids: quanyi_core::IdSequence::new(),
                goods_memo: GoodsMemo::default(),
                placed: PlacedOrders::default(),
                jobs,
                consumers,
                calendar,
                decide: self.decide,
            }),
            tenant: self.tenant,
        })
    }
}

/// A tenant's unwrapped key ring and when it was read from the store.
pub(crate) type CachedRing = (Arc<KeyRing>, DateTime<Utc>);

pub(crate) struct Inner {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) root: RootKey,
    /// Each tenant's unwrapped key ring and when it was last read from the store.
    pub(crate) rings: RwLock<HashMap<TenantId, CachedRing>>,
    pub(crate) reservation_ttl: Duration,
    pub(crate) key_use_limit: u64,
    pub(crate) key_ring_refresh: Duration,
    pub(crate) worker: String,
    pub(crate) lease: Duration,
    pub(crate) gateway: Option<Arc<dyn PaymentGateway>>,
    pub(crate) suppliers: HashMap<SupplierId, Arc<dyn Supplier>>,
    pub(crate) breakers: Breakers,
    pub(crate) supplier_stock: parking_lot::Mutex<StockCache>,
    /// How long a paid line may wait on its suppliers.
    pub(crate) supplier_deadline: Duration,
    pub(crate) overdue: OverduePolicy,
    /// How long an operator has to decide a buyer's refund request.
    pub(crate) refund_review: Duration,
    /// How long the pricing rules read are priced by before the store is asked again.
    pub(crate) pricing_refresh: std::time::Duration,
    /// Each tenant's pricing rules as this process last read them.
    pub(crate) rules_cache: crate::promotions::RulesCache,
    pub(crate) links: Option<(String, Duration)>,
    /// Every supplier route whose stock this process has been asked about, kept fresh by the
    /// worker.
    pub(crate) watched_routes: parking_lot::Mutex<Vec<quanyi_supplier::Route>>,
    /// Event ids, handed out in order: a store's log then receives them in order.
    pub(crate) event_ids: quanyi_core::IdSequence,
    /// Goods this process priced orders from (checked by the store at placement).
    pub(crate) goods_memo: GoodsMemo,
    /// Orders this process placed, until their payment (checked by the store at payment).
    pub(crate) placed: PlacedOrders,
    /// The job kinds and sweeps this shop runs.
    pub(crate) jobs: JobKinds,
    /// The event consumers this shop runs.
    pub(crate) consumers: Consumers,
    /// The shop's calendar (time zone), for every calendar rule.
    pub(crate) calendar: Calendar,
    /// The checkout's decide stage; `None` allows every order without a call.
    pub(crate) decide: Option<Arc<dyn DecideStage>>,
}

/// A shop: every use case of selling virtual goods, for one tenant. Cheap to clone; clones and
/// [`with_tenant`](Shop::with_tenant) handles share the store, clock and key rings.
#[derive(Clone)]
pub struct Shop {
    pub(crate) inner: Arc<Inner>,
    pub(crate) tenant: TenantId,
}

impl fmt::Debug for Shop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shop")
            .field("tenant", &self.tenant)
            .field("worker", &self.inner.worker)
            .finish_non_exhaustive()
    }
}

impl Shop {
    /// Starts building a shop on `store`, with card keys protected by the root key `keys` supplies.
    pub fn builder(store: Arc<dyn Store>, keys: Arc<dyn KeyProvider>) -> ShopBuilder {
        let mut suffix = [0u8; 4];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut suffix);
        ShopBuilder {
            store,
            keys,
            clock: Arc::new(SystemClock),
            tenant: TenantId::default(),
            reservation_ttl: Duration::minutes(DEFAULT_RESERVATION_TTL_MINUTES),
            key_use_limit: DEFAULT_KEY_USE_LIMIT,
            key_ring_refresh: Duration::seconds(DEFAULT_KEY_RING_REFRESH_SECONDS),
            worker: format!(
                "worker-{}",
                suffix
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            ),
            lease: Duration::seconds(60),
            gateway: None,
            suppliers: HashMap::new(),
            breakers: BreakerConfig::default(),
            stock_fresh_for: Duration::seconds(60),
            supplier_deadline: Duration::hours(DEFAULT_SUPPLIER_DEADLINE_HOURS),
            overdue: OverduePolicy::Refund,
            refund_review: Duration::hours(crate::DEFAULT_REFUND_REVIEW_HOURS),
            pricing_refresh: std::time::Duration::from_secs(1),
            links: None,
            job_handlers: Vec::new(),
            sweeps: Vec::new(),
            expiry_every: Duration::seconds(DEFAULT_EXPIRY_SWEEP_SECONDS),
            consumers: Vec::new(),
            time_zone: None,
            decide: None,
        }
    }

    /// A handle on the same shop for another tenant.
    pub fn with_tenant(&self, tenant: TenantId) -> Shop {
        Shop {
            inner: self.inner.clone(),
            tenant,
        }
    }

    /// The tenant this handle works for.
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// The shop's calendar: the time zone its calendar rules follow.
    pub fn calendar(&self) -> Calendar {
        self.inner.calendar
    }

    /// The store, for queries the shop does not wrap.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    pub(crate) fn now(&self) -> DateTime<Utc> {
        self.inner.clock.now()
    }

    pub(crate) fn store_ref(&self) -> &dyn Store {
        &*self.inner.store
    }

    /// Wraps domain events of one aggregate change, all at the version the change produced.
    /// Their JSON is written only if the store needs it (a durable store, when it writes them).
    pub(crate) fn envelopes<E: DomainEvent + Send + Sync + 'static>(
        &self,
        aggregate_type: &'static str,
        aggregate_id: impl std::fmt::Display,
        version: u64,
        events: Vec<E>,
        now: DateTime<Utc>,
    ) -> Vec<EventEnvelope> {
        let mut rng = rand::thread_rng();
        let aggregate_id = quanyi_core::text::shared(&aggregate_id);
        events
            .into_iter()
            .map(|e| {
                EventEnvelope::deferred(
                    EventId::next_in(&self.inner.event_ids, now, &mut rng),
                    self.tenant.clone(),
                    aggregate_type,
                    aggregate_id.clone(),
                    version,
                    now,
                    e,
                )
            })
            .collect()
    }

    pub(crate) async fn audit(
        &self,
        actor: &str,
        action: AuditAction,
        subject: String,
        outcome: AuditOutcome,
        detail: String,
    ) -> Result<()> {
        let record = self.audit_record(actor, action, subject, outcome, detail);
        self.store_ref().append_audit(&record).await?;
        Ok(())
    }

    /// An audit record of this tenant, now, to write with the change it records (a store
    /// write's [`Trail`](quanyi_storage::Trail)).
    pub(crate) fn audit_record(
        &self,
        actor: &str,
        action: AuditAction,
        subject: String,
        outcome: AuditOutcome,
        detail: String,
    ) -> AuditRecord {
        let now = self.now();
        AuditRecord {
            id: AuditId::generate(now, &mut rand::thread_rng()),
            tenant: self.tenant.clone(),
            at: now,
            actor: actor.to_owned(),
            action,
            subject,
            outcome,
            detail,
        }
    }

    /// The latest audit records of this tenant, newest first.
    ///
    /// # Errors
    /// [`Error::Storage`].
    pub async fn audit_log(&self, limit: usize) -> Result<Vec<AuditRecord>> {
        Ok(self.store_ref().audit_records(&self.tenant, limit).await?)
    }
}
