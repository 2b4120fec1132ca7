//! An in-process supplier (渠道) for engine tests and soak tests: card keys and direct top-ups
//! with seeded faults, idempotency by [`RequestId`], signed callbacks and counters to assert on.
//!
//! Nothing here sleeps or reads the wall clock. Asynchronous top-ups finish when the test calls
//! [`SimSupplier::finish_pending`], and every record is stamped with the simulator's own clock,
//! set by the test ([`SimSupplier::set_now`], [`SimSupplier::advance`]).
//!
//! ```
//! use std::sync::Arc;
//! use quanyi_core::{Currency, Money};
//! use quanyi_supplier::{CardPurchase, ProductCode, RequestId, Supplier, SupplierId};
//! use quanyi_testkit::supplier_sim::SimSupplier;
//!
//! # tokio::runtime::Builder::new_current_thread().build()?.block_on(async {
//! let code = ProductCode::new("CARD-30")?;
//! let sim = Arc::new(
//!     SimSupplier::new(SupplierId::new("acme")?, 7).with_card_product(
//!         code.clone(),
//!         10,
//!         Money::from_minor(2_500, Currency::CNY),
//!     ),
//! );
//! let request = CardPurchase { request: RequestId::new("r-1")?, product: code, quantity: 2 };
//! let first = sim.purchase_cards(&request).await?;
//! let again = sim.purchase_cards(&request).await?;
//! assert_eq!(first, again);
//! assert_eq!(sim.executed(&request.request), 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::HashMap;
use std::fmt;

use async_trait::async_trait;
use chrono::{DateTime, Duration, TimeZone, Utc};
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use quanyi_core::{Currency, Money};
use quanyi_supplier::{
    Availability, CallbackEvent, CallbackStatus, CardPurchase, ProductCode, PurchaseOutcome,
    RawCallback, RequestId, RequestStatus, Result, StatementRecord, StatementStatus, Supplier,
    SupplierError, SupplierId, SupplierStock, TopUpOutcome, TopUpRequest,
};
use quanyi_vault::{CardCode, CardKey};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sha2::Sha256;

/// The header carrying a callback's signature: lower-case hex HMAC-SHA256 of the body.
pub const SIGNATURE_HEADER: &str = "x-sim-signature";

/// The header (value `true`) marking the stale "failed" callback emitted after a "succeeded"
/// one under [`Faults::out_of_order_callback`]. It is signed like any other callback.
pub const STALE_HEADER: &str = "x-sim-stale";

/// The secret callbacks are signed with unless [`SimSupplier::with_secret`] says otherwise.
pub const DEFAULT_SECRET: &[u8] = b"quanyi-sim-secret";

/// The largest fault probability: 1000 per mille, always.
pub const ALWAYS: u16 = 1000;

/// How a top-up product finishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TopUpMode {
    /// `submit_top_up` answers [`TopUpOutcome::Succeeded`].
    Immediate,
    /// `submit_top_up` answers [`TopUpOutcome::Accepted`]; the request finishes at
    /// [`SimSupplier::finish_pending`], which returns its callbacks.
    Async,
}

/// Fault probabilities in per mille (0 never, [`ALWAYS`] always), drawn from the simulator's
/// seeded generator so a run repeats exactly.
///
/// Every call draws the same number of values whatever the probabilities, so changing one
/// probability does not shift the decisions of another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Faults {
    /// A new request is refused ([`SupplierError::Rejected`]) before anything is done.
    pub definite_error: u16,
    /// The work is done (or the recorded answer found), then the answer is lost:
    /// [`SupplierError::Timeout`].
    pub timeout_after_success: u16,
    /// The call never reaches the supplier: [`SupplierError::Unreachable`], nothing done.
    pub timeout_before_send: u16,
    /// An [`TopUpMode::Async`] top-up finishes failed at [`SimSupplier::finish_pending`].
    pub async_failure: u16,
    /// A finished async request yields its callback twice.
    pub duplicate_callback: u16,
    /// A stale "failed" callback (marked with [`STALE_HEADER`]) follows a "succeeded" one.
    pub out_of_order_callback: u16,
}

impl Faults {
    /// No faults at all.
    pub const NONE: Faults = Faults {
        definite_error: 0,
        timeout_after_success: 0,
        timeout_before_send: 0,
        async_failure: 0,
        duplicate_callback: 0,
        out_of_order_callback: 0,
    };

    fn all(&self) -> [(&'static str, u16); 6] {
        [
            ("definite_error", self.definite_error),
            ("timeout_after_success", self.timeout_after_success),
            ("timeout_before_send", self.timeout_before_send),
            ("async_failure", self.async_failure),
            ("duplicate_callback", self.duplicate_callback),
            ("out_of_order_callback", self.out_of_order_callback),
        ]
    }
}

/// What the simulator has done, for assertions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SimCounts {
    /// Card purchases actually carried out (stock taken, cards made).
    pub purchases_executed: u64,
    /// Top-ups actually carried out (accepted or credited).
    pub top_ups_executed: u64,
    /// Calls to `purchase_cards` and `submit_top_up`, repeats and failures included.
    pub calls_submitted: u64,
    /// Calls to `query`.
    pub queries: u64,
    /// Calls to `stock`.
    pub stock_checks: u64,
    /// Callbacks returned by [`SimSupplier::finish_pending`], duplicates and stale ones included.
    pub callbacks_emitted: u64,
}

/// An in-process [`Supplier`] with seeded faults. See the [module docs](self).
///
/// Build it with [`SimSupplier::new`] and the `with_` methods, then share it as
/// `Arc<SimSupplier>` (or `Arc<dyn Supplier>`); the runtime switches take `&self`.
pub struct SimSupplier {
    id: SupplierId,
    secret: Vec<u8>,
    state: Mutex<State>,
}

impl fmt::Debug for SimSupplier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No secret and no cards: only what helps read a failed assertion.
        let state = self.state.lock();
        f.debug_struct("SimSupplier")
            .field("id", &self.id)
            .field("products", &state.products.len())
            .field("requests", &state.records.len())
            .field("down", &state.down)
            .field("faults", &state.faults)
            .field("counts", &state.counts)
            .field("now", &state.now)
            .finish_non_exhaustive()
    }
}

struct State {
    rng: StdRng,
    faults: Faults,
    down: bool,
    now: DateTime<Utc>,
    products: HashMap<ProductCode, Product>,
    records: HashMap<RequestId, Record>,
    /// Request ids in the order they were executed: statements and `finish_pending` walk this,
    /// never a hash map, so runs repeat.
    order: Vec<RequestId>,
    executed: HashMap<RequestId, u32>,
    counts: SimCounts,
    next_card: u64,
    next_receipt: u64,
}

struct Product {
    cost: Money,
    kind: ProductKind,
}

enum ProductKind {
    Cards { stock: u64 },
    TopUp { mode: TopUpMode },
}

struct Record {
    product: ProductCode,
    quantity: u32,
    amount: Money,
    receipt: String,
    cards: Option<Vec<CardKey>>,
    state: RecordState,
}

enum RecordState {
    Pending,
    Succeeded { at: DateTime<Utc> },
    Failed { reason: String, at: DateTime<Utc> },
}

/// Which port method a call came through.
#[derive(Clone, Copy, PartialEq, Eq)]
enum CallKind {
    Cards,
    TopUp,
}

/// The three draws every submission makes, in this order.
struct CallRolls {
    before_send: bool,
    definite: bool,
    after_success: bool,
}

/// The instant the simulator's clock starts at: 2026-11-25 12:00 UTC.
pub fn default_now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, 0)
        .single()
        .expect("a valid fixed instant")
}

impl SimSupplier {
    /// A supplier with no products and no faults, whose fault decisions follow `seed`.
    pub fn new(id: SupplierId, seed: u64) -> Self {
        SimSupplier {
            id,
            secret: DEFAULT_SECRET.to_vec(),
            state: Mutex::new(State {
                rng: StdRng::seed_from_u64(seed),
                faults: Faults::NONE,
                down: false,
                now: default_now(),
                products: HashMap::new(),
                records: HashMap::new(),
                order: Vec::new(),
                executed: HashMap::new(),
                counts: SimCounts::default(),
                next_card: 0,
                next_receipt: 0,
            }),
        }
    }

    /// Adds (or replaces) a card-key product with `stock` units at `cost` each. Purchases return
    /// fresh, unique codes `SIM-<supplier>-<n>`.
    pub fn with_card_product(self, code: ProductCode, stock: u64, cost: Money) -> Self {
        self.state.lock().products.insert(
            code,
            Product {
                cost,
                kind: ProductKind::Cards { stock },
            },
        );
        self
    }

    /// Adds (or replaces) an unlimited direct top-up product at `cost` per unit.
    pub fn with_top_up_product(self, code: ProductCode, cost: Money, mode: TopUpMode) -> Self {
        self.state.lock().products.insert(
            code,
            Product {
                cost,
                kind: ProductKind::TopUp { mode },
            },
        );
        self
    }

    /// Sets the fault probabilities.
    ///
    /// # Panics
    /// When a probability exceeds [`ALWAYS`] (1000 per mille): a mistake in the test.
    pub fn with_faults(self, faults: Faults) -> Self {
        for (name, per_mille) in faults.all() {
            assert!(
                per_mille <= ALWAYS,
                "fault {name} is {per_mille} per mille; the most is {ALWAYS}"
            );
        }
        self.state.lock().faults = faults;
        self
    }

    /// Signs callbacks with `secret` instead of [`DEFAULT_SECRET`].
    pub fn with_secret(mut self, secret: impl Into<Vec<u8>>) -> Self {
        self.secret = secret.into();
        self
    }

    /// While `down`, every port call answers [`SupplierError::Unreachable`] and does nothing.
    pub fn set_down(&self, down: bool) {
        self.state.lock().down = down;
    }

    /// Sets the remaining stock of a card product.
    ///
    /// # Panics
    /// When `product` is not a card product of this simulator: a mistake in the test.
    pub fn set_stock(&self, product: &ProductCode, stock: u64) {
        let mut state = self.state.lock();
        match state.products.get_mut(product).map(|p| &mut p.kind) {
            Some(ProductKind::Cards { stock: left }) => *left = stock,
            _ => panic!("set_stock: {product} is not a card product of {}", self.id),
        }
    }

    /// Sets the simulator's clock, which stamps finished requests.
    pub fn set_now(&self, now: DateTime<Utc>) {
        self.state.lock().now = now;
    }

    /// Moves the simulator's clock on by `by`.
    pub fn advance(&self, by: Duration) {
        let mut state = self.state.lock();
        state.now += by;
    }

    /// The simulator's clock ([`default_now`] unless set).
    pub fn now(&self) -> DateTime<Utc> {
        self.state.lock().now
    }

    /// What the simulator has done so far.
    pub fn counts(&self) -> SimCounts {
        self.state.lock().counts
    }

    /// How many times the work of `request` was actually done. A correct supplier (and a correct
    /// simulator) never goes above 1.
    pub fn executed(&self, request: &RequestId) -> u32 {
        self.state
            .lock()
            .executed
            .get(request)
            .copied()
            .unwrap_or(0)
    }

    /// Finishes every pending async top-up, in the order they were accepted, each succeeding or
    /// failing per [`Faults::async_failure`], and returns the signed callbacks to deliver:
    /// one per request, plus a duplicate ([`Faults::duplicate_callback`]) and a stale "failed"
    /// one after a success ([`Faults::out_of_order_callback`]).
    pub fn finish_pending(&self) -> Vec<RawCallback> {
        let mut state = self.state.lock();
        let state = &mut *state;
        let mut callbacks = Vec::new();
        let pending: Vec<RequestId> = state
            .order
            .iter()
            .filter(|id| {
                state
                    .records
                    .get(*id)
                    .is_some_and(|r| matches!(r.state, RecordState::Pending))
            })
            .cloned()
            .collect();
        for id in pending {
            let fail = roll(&mut state.rng, state.faults.async_failure);
            let duplicate = roll(&mut state.rng, state.faults.duplicate_callback);
            let stale = roll(&mut state.rng, state.faults.out_of_order_callback);
            let Some(record) = state.records.get_mut(&id) else {
                continue;
            };
            let at = state.now;
            let status = if fail {
                let reason = "simulated top-up failure".to_owned();
                record.state = RecordState::Failed {
                    reason: reason.clone(),
                    at,
                };
                CallbackStatus::Failed { reason }
            } else {
                record.state = RecordState::Succeeded { at };
                CallbackStatus::Succeeded {
                    receipt: record.receipt.clone(),
                }
            };
            let callback = self.callback(&id, &status, record.amount, false);
            if duplicate {
                callbacks.push(callback.clone());
            }
            callbacks.push(callback);
            if stale && !fail {
                let status = CallbackStatus::Failed {
                    reason: "simulated stale failure".to_owned(),
                };
                callbacks.push(self.callback(&id, &status, record.amount, true));
            }
        }
        state.counts.callbacks_emitted += callbacks.len() as u64;
        callbacks
    }

    /// `body` signed with this simulator's secret, as the supplier would send it. For tests that
    /// need a well-signed callback with a body of their own (malformed JSON, say).
    pub fn signed_callback(&self, body: Vec<u8>) -> RawCallback {
        RawCallback {
            headers: vec![
                ("content-type".to_owned(), "application/json".to_owned()),
                (SIGNATURE_HEADER.to_owned(), hex::encode(self.sign(&body))),
            ],
            body,
        }
    }

    fn callback(
        &self,
        request: &RequestId,
        status: &CallbackStatus,
        amount: Money,
        stale: bool,
    ) -> RawCallback {
        let mut body = serde_json::json!({
            "request": request.as_str(),
            "amount_minor": amount.minor(),
            "currency": amount.currency().code(),
        });
        match status {
            CallbackStatus::Succeeded { receipt } => {
                body["status"] = "succeeded".into();
                body["receipt"] = receipt.as_str().into();
            }
            CallbackStatus::Failed { reason } => {
                body["status"] = "failed".into();
                body["reason"] = reason.as_str().into();
            }
        }
        let mut callback = self.signed_callback(body.to_string().into_bytes());
        if stale {
            callback
                .headers
                .push((STALE_HEADER.to_owned(), "true".to_owned()));
        }
        callback
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.secret).expect("hmac takes keys of any length")
    }

    fn sign(&self, body: &[u8]) -> Vec<u8> {
        let mut mac = self.mac();
        mac.update(body);
        mac.finalize().into_bytes().to_vec()
    }

    /// The common path of both submissions: counting, faults, idempotency. `execute` does the
    /// work of a new request and records it; it is called at most once per request id.
    fn submit(
        &self,
        kind: CallKind,
        request: &RequestId,
        execute: impl FnOnce(&mut State, &SupplierId) -> Result<()>,
    ) -> Result<RecordView> {
        let mut state = self.state.lock();
        let state = &mut *state;
        state.counts.calls_submitted += 1;
        if state.down {
            return Err(SupplierError::unreachable("simulated outage"));
        }
        let rolls = CallRolls {
            before_send: roll(&mut state.rng, state.faults.timeout_before_send),
            definite: roll(&mut state.rng, state.faults.definite_error),
            after_success: roll(&mut state.rng, state.faults.timeout_after_success),
        };
        if rolls.before_send {
            return Err(SupplierError::unreachable("simulated connect timeout"));
        }
        if !state.records.contains_key(request) {
            if rolls.definite {
                return Err(SupplierError::rejected("simulated rejection"));
            }
            execute(state, &self.id)?;
            state.order.push(request.clone());
            *state.executed.entry(request.clone()).or_insert(0) += 1;
            match kind {
                CallKind::Cards => state.counts.purchases_executed += 1,
                CallKind::TopUp => state.counts.top_ups_executed += 1,
            }
        }
        let record = state
            .records
            .get(request)
            .ok_or_else(|| SupplierError::protocol("simulator lost a request"))?;
        let is_cards = record.cards.is_some();
        if is_cards != (kind == CallKind::Cards) {
            return Err(SupplierError::protocol(
                "request id was used for another kind of request",
            ));
        }
        if rolls.after_success {
            return Err(SupplierError::timeout(
                "simulated read timeout after sending",
            ));
        }
        Ok(RecordView::of(record))
    }

    fn query_status(&self, request: &RequestId) -> Result<RequestStatus> {
        let mut state = self.state.lock();
        state.counts.queries += 1;
        if state.down {
            return Err(SupplierError::unreachable("simulated outage"));
        }
        Ok(match state.records.get(request) {
            None => RequestStatus::NotFound,
            Some(record) => match &record.state {
                RecordState::Pending => RequestStatus::Pending,
                RecordState::Succeeded { .. } => RequestStatus::Succeeded {
                    receipt: record.receipt.clone(),
                    cards: record.cards.clone().unwrap_or_default(),
                },
                RecordState::Failed { reason, .. } => RequestStatus::Failed {
                    reason: reason.clone(),
                },
            },
        })
    }
}

/// What a submission answers, copied out of the record.
struct RecordView {
    receipt: String,
    amount: Money,
    cards: Option<Vec<CardKey>>,
    pending: bool,
    failed: Option<String>,
}

impl RecordView {
    fn of(record: &Record) -> Self {
        RecordView {
            receipt: record.receipt.clone(),
            amount: record.amount,
            cards: record.cards.clone(),
            pending: matches!(record.state, RecordState::Pending),
            failed: match &record.state {
                RecordState::Failed { reason, .. } => Some(reason.clone()),
                _ => None,
            },
        }
    }
}

fn roll(rng: &mut StdRng, per_mille: u16) -> bool {
    rng.gen_range(0..ALWAYS) < per_mille
}

fn total(cost: Money, quantity: u32) -> Result<Money> {
    cost.checked_mul(i64::from(quantity))
        .map_err(|_| SupplierError::rejected("amount overflow"))
}

impl State {
    fn receipt(&mut self, supplier: &SupplierId) -> String {
        self.next_receipt += 1;
        format!("SIM-{supplier}-R{:06}", self.next_receipt)
    }

    fn card(&mut self, supplier: &SupplierId) -> CardKey {
        self.next_card += 1;
        let code = CardCode::new(format!("SIM-{supplier}-{}", self.next_card))
            .expect("simulated card codes are valid");
        CardKey::new(code, None)
    }

    fn buy_cards(&mut self, supplier: &SupplierId, request: &CardPurchase) -> Result<()> {
        if request.quantity == 0 {
            return Err(SupplierError::rejected("quantity must be positive"));
        }
        let (cost, left) = match self.products.get_mut(&request.product) {
            None => return Err(SupplierError::rejected("unknown product")),
            Some(Product {
                cost,
                kind: ProductKind::Cards { stock },
            }) => (*cost, stock),
            Some(_) => return Err(SupplierError::rejected("not a card product")),
        };
        let quantity = u64::from(request.quantity);
        if *left < quantity {
            return Err(SupplierError::rejected("out of stock"));
        }
        let amount = total(cost, request.quantity)?;
        *left -= quantity;
        let cards = (0..request.quantity).map(|_| self.card(supplier)).collect();
        let receipt = self.receipt(supplier);
        let at = self.now;
        self.records.insert(
            request.request.clone(),
            Record {
                product: request.product.clone(),
                quantity: request.quantity,
                amount,
                receipt,
                cards: Some(cards),
                state: RecordState::Succeeded { at },
            },
        );
        Ok(())
    }

    fn top_up(&mut self, supplier: &SupplierId, request: &TopUpRequest) -> Result<()> {
        if request.quantity == 0 {
            return Err(SupplierError::rejected("quantity must be positive"));
        }
        if request.account.trim().is_empty() {
            return Err(SupplierError::rejected("invalid account"));
        }
        let (cost, mode) = match self.products.get(&request.product) {
            None => return Err(SupplierError::rejected("unknown product")),
            Some(Product {
                cost,
                kind: ProductKind::TopUp { mode },
            }) => (*cost, *mode),
            Some(_) => return Err(SupplierError::rejected("not a top-up product")),
        };
        let amount = total(cost, request.quantity)?;
        let receipt = self.receipt(supplier);
        let state = match mode {
            TopUpMode::Immediate => RecordState::Succeeded { at: self.now },
            TopUpMode::Async => RecordState::Pending,
        };
        self.records.insert(
            request.request.clone(),
            Record {
                product: request.product.clone(),
                quantity: request.quantity,
                amount,
                receipt,
                cards: None,
                state,
            },
        );
        Ok(())
    }
}

/// Reads a callback body: `{"request", "status", "receipt" | "reason", "amount_minor", "currency"}`.
fn parse_callback(body: &[u8]) -> Result<CallbackEvent> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| SupplierError::malformed_callback("not json"))?;
    let text = |field: &str| {
        value
            .get(field)
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| SupplierError::malformed_callback(&format!("no {field}")))
    };
    let request = RequestId::new(text("request")?)
        .map_err(|_| SupplierError::malformed_callback("bad request id"))?;
    let status = match text("status")? {
        "succeeded" => CallbackStatus::Succeeded {
            receipt: text("receipt")?.to_owned(),
        },
        "failed" => CallbackStatus::Failed {
            reason: text("reason")?.to_owned(),
        },
        _ => return Err(SupplierError::malformed_callback("unknown status")),
    };
    let amount = match value.get("amount_minor") {
        None | Some(serde_json::Value::Null) => None,
        Some(minor) => {
            let minor = minor
                .as_i64()
                .ok_or_else(|| SupplierError::malformed_callback("bad amount_minor"))?;
            let currency = match text("currency")? {
                "CNY" => Currency::CNY,
                "USD" => Currency::USD,
                "EUR" => Currency::EUR,
                "HKD" => Currency::HKD,
                "JPY" => Currency::JPY,
                _ => return Err(SupplierError::malformed_callback("unknown currency")),
            };
            Some(Money::from_minor(minor, currency))
        }
    };
    Ok(CallbackEvent {
        request,
        status,
        amount,
    })
}

#[async_trait]
impl Supplier for SimSupplier {
    fn id(&self) -> &SupplierId {
        &self.id
    }

    async fn stock(&self, product: &ProductCode) -> Result<SupplierStock> {
        let mut state = self.state.lock();
        state.counts.stock_checks += 1;
        if state.down {
            return Err(SupplierError::unreachable("simulated outage"));
        }
        match state.products.get(product) {
            None => Err(SupplierError::rejected("unknown product")),
            Some(p) => Ok(SupplierStock {
                available: match p.kind {
                    ProductKind::Cards { stock } => Availability::Limited(stock),
                    ProductKind::TopUp { .. } => Availability::Unlimited,
                },
                cost: p.cost,
            }),
        }
    }

    /// Buys card keys; the same request id returns the first purchase's cards without buying
    /// again. A request that was refused (out of stock, [`Faults::definite_error`]) is not
    /// recorded, so it may be sent again.
    async fn purchase_cards(&self, request: &CardPurchase) -> Result<PurchaseOutcome> {
        let view = self.submit(CallKind::Cards, &request.request, |state, id| {
            state.buy_cards(id, request)
        })?;
        Ok(PurchaseOutcome {
            cards: view.cards.unwrap_or_default(),
            cost: view.amount,
        })
    }

    /// Submits a top-up; the same request id answers the request's current state without
    /// crediting again: `Accepted` while pending, `Succeeded` when done, and
    /// [`SupplierError::Rejected`] once an async top-up has failed.
    async fn submit_top_up(&self, request: &TopUpRequest) -> Result<TopUpOutcome> {
        let view = self.submit(CallKind::TopUp, &request.request, |state, id| {
            state.top_up(id, request)
        })?;
        if let Some(reason) = view.failed {
            return Err(SupplierError::rejected(&reason));
        }
        Ok(if view.pending {
            TopUpOutcome::Accepted
        } else {
            TopUpOutcome::Succeeded {
                receipt: view.receipt,
            }
        })
    }

    async fn query(&self, request: &RequestId) -> Result<RequestStatus> {
        self.query_status(request)
    }

    fn verify_callback(&self, callback: &RawCallback) -> Result<CallbackEvent> {
        let signature = callback
            .header(SIGNATURE_HEADER)
            .and_then(|hex_text| hex::decode(hex_text.trim()).ok())
            .ok_or(SupplierError::BadSignature)?;
        let mut mac = self.mac();
        mac.update(&callback.body);
        // verify_slice compares in constant time.
        mac.verify_slice(&signature)
            .map_err(|_| SupplierError::BadSignature)?;
        parse_callback(&callback.body)
    }

    async fn statement(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<StatementRecord>> {
        let state = self.state.lock();
        if state.down {
            return Err(SupplierError::unreachable("simulated outage"));
        }
        let mut lines: Vec<StatementRecord> = state
            .order
            .iter()
            .filter_map(|id| {
                let record = state.records.get(id)?;
                let (status, at) = match &record.state {
                    RecordState::Pending => return None,
                    RecordState::Succeeded { at } => (StatementStatus::Succeeded, *at),
                    RecordState::Failed { at, .. } => (StatementStatus::Failed, *at),
                };
                (from <= at && at < to).then(|| StatementRecord {
                    request: id.clone(),
                    product: record.product.clone(),
                    quantity: record.quantity,
                    amount: record.amount,
                    status,
                    at,
                })
            })
            .collect();
        // Finish order: stable, so requests finished at one instant keep their execution order.
        lines.sort_by_key(|line| line.at);
        Ok(lines)
    }
}
