//! The supplier port: what a channel adapter implements, and the plain data it exchanges.

use std::fmt;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use quanyi_core::Money;
use quanyi_vault::CardKey;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use quanyi_core::{ProductCode, RequestId, SupplierId};

/// How many units a supplier can deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Availability {
    /// At most this many units.
    Limited(u64),
    /// No practical limit (typical for direct top-ups).
    Unlimited,
}

impl Availability {
    /// The sum of two figures: unlimited dominates, limited figures add without overflow.
    pub fn plus(self, other: Availability) -> Availability {
        match (self, other) {
            (Availability::Limited(a), Availability::Limited(b)) => {
                Availability::Limited(a.saturating_add(b))
            }
            _ => Availability::Unlimited,
        }
    }

    /// True when `quantity` units fit.
    pub fn covers(self, quantity: u64) -> bool {
        match self {
            Availability::Limited(n) => n >= quantity,
            Availability::Unlimited => true,
        }
    }
}

/// A supplier's answer to a stock question.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupplierStock {
    /// How many units it can deliver now.
    pub available: Availability,
    /// What one unit costs us.
    pub cost: Money,
}

/// A request to buy card keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardPurchase {
    /// Our idempotency key: the same id must return the first purchase, never buy again.
    pub request: RequestId,
    /// The supplier's product.
    pub product: ProductCode,
    /// How many card keys.
    pub quantity: u32,
}

/// Card keys bought. Debug shows only redacted cards (see [`CardKey`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurchaseOutcome {
    /// The card keys, exactly the quantity asked for.
    pub cards: Vec<CardKey>,
    /// What the whole purchase cost us.
    pub cost: Money,
}

/// A request to credit a buyer's account directly (直充).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopUpRequest {
    /// Our idempotency key: the same id must return the first submission, never credit twice.
    pub request: RequestId,
    /// The supplier's product.
    pub product: ProductCode,
    /// The account to credit (phone number, QQ number, game id), already validated by the
    /// goods' account rule.
    pub account: String,
    /// How many units.
    pub quantity: u32,
}

/// What a supplier said to a top-up submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopUpOutcome {
    /// Taken and in progress: it finishes by callback or by [`Supplier::query`].
    Accepted,
    /// Done already.
    Succeeded {
        /// The supplier's receipt (its order number or voucher).
        receipt: String,
    },
}

/// What a supplier knows about one of our requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestStatus {
    /// The supplier never received the request and will not act on it: a definite failure, so
    /// the line may fail over. Adapters answer this only when the supplier says so explicitly.
    NotFound,
    /// Received and still in progress.
    Pending,
    /// Done. `cards` holds the card keys of a card purchase (empty for a top-up).
    Succeeded {
        /// The supplier's receipt.
        receipt: String,
        /// The card keys bought, redacted in Debug.
        cards: Vec<CardKey>,
    },
    /// Finished without doing the work: definite.
    Failed {
        /// The supplier's reason.
        reason: String,
    },
}

/// A callback exactly as received, for [`Supplier::verify_callback`].
///
/// Debug prints header names and the body length only: bodies may carry card keys or account
/// numbers, headers may carry signatures.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct RawCallback {
    /// HTTP headers (or their equivalent) in received order.
    pub headers: Vec<(String, String)>,
    /// The body bytes, unparsed.
    pub body: Vec<u8>,
}

impl RawCallback {
    /// The first header named `name`, compared without regard to ASCII case.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl fmt::Debug for RawCallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("RawCallback")
            .field("headers", &names)
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// How a request ended, as a callback tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallbackStatus {
    /// Done.
    Succeeded {
        /// The supplier's receipt.
        receipt: String,
    },
    /// Finished without doing the work: definite.
    Failed {
        /// The supplier's reason.
        reason: String,
    },
}

/// A verified callback. Callbacks are at-least-once and may come in any order, so the engine
/// applies each one idempotently; card keys are always fetched with [`Supplier::query`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackEvent {
    /// Which of our requests it is about.
    pub request: RequestId,
    /// How the request ended.
    pub status: CallbackStatus,
    /// What the supplier charged, when the callback says.
    pub amount: Option<Money>,
}

/// How a request ended, as a statement tells it (and as we record it, see
/// [`OurRecord`](crate::OurRecord)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StatementStatus {
    /// Done and charged.
    Succeeded,
    /// Not done; nothing charged.
    Failed,
}

/// One line of a supplier's statement (对账单).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatementRecord {
    /// Our request id, as the supplier recorded it.
    pub request: RequestId,
    /// The supplier's product.
    pub product: ProductCode,
    /// How many units.
    pub quantity: u32,
    /// What the supplier charged (or would have, for a failed line).
    pub amount: Money,
    /// How it ended.
    pub status: StatementStatus,
    /// When the supplier finished it.
    pub at: DateTime<Utc>,
}

/// A supplier channel (渠道/上游). Third parties implement it; the engine holds it as
/// `Arc<dyn Supplier>`.
///
/// # Contract
/// - Every request carries our [`RequestId`]. Sending the same id again must return the first
///   result and never do the work twice; an adapter whose supplier lacks idempotency keys must
///   query before resubmitting.
/// - An error's [`outcome`](crate::SupplierError::outcome) must be honest: answer a definite
///   variant only when the supplier certainly did not and will not act on the request. Only
///   definite failures fail over; an unknown outcome is resolved with [`Supplier::query`].
/// - No method returns card keys anywhere but in [`PurchaseOutcome`] and
///   [`RequestStatus::Succeeded`], whose Debug is redacted; errors never carry them.
/// - Optional abilities are separate traits ([`SupplierBalance`], [`SupplierCancel`]).
#[async_trait]
pub trait Supplier: Send + Sync + fmt::Debug {
    /// This channel's id, unique within the host.
    fn id(&self) -> &SupplierId;

    /// How many units of `product` the supplier can deliver now, and at what cost.
    ///
    /// # Errors
    /// Any [`SupplierError`](crate::SupplierError); nothing is bought.
    async fn stock(&self, product: &ProductCode) -> Result<SupplierStock>;

    /// Buys card keys. Synchronous suppliers return the cards; a supplier that answers later
    /// should return [`SupplierError::Timeout`](crate::SupplierError::Timeout) (unknown) so the
    /// engine polls [`Supplier::query`].
    ///
    /// # Errors
    /// A definite or unknown [`SupplierError`](crate::SupplierError), see the trait contract.
    async fn purchase_cards(&self, request: &CardPurchase) -> Result<PurchaseOutcome>;

    /// Submits a direct top-up.
    ///
    /// # Errors
    /// A definite or unknown [`SupplierError`](crate::SupplierError), see the trait contract.
    async fn submit_top_up(&self, request: &TopUpRequest) -> Result<TopUpOutcome>;

    /// What the supplier knows about one of our requests.
    ///
    /// # Errors
    /// A [`SupplierError`](crate::SupplierError) when the question itself failed; the request's
    /// outcome stays unknown and the engine asks again later.
    async fn query(&self, request: &RequestId) -> Result<RequestStatus>;

    /// Verifies a callback's signature and reads it. Pure: no I/O.
    ///
    /// # Errors
    /// [`SupplierError::BadSignature`](crate::SupplierError::BadSignature) or
    /// [`SupplierError::MalformedCallback`](crate::SupplierError::MalformedCallback).
    fn verify_callback(&self, callback: &RawCallback) -> Result<CallbackEvent>;

    /// The supplier's statement of requests finished in `[from, to)`.
    ///
    /// # Errors
    /// Any [`SupplierError`](crate::SupplierError).
    async fn statement(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<StatementRecord>>;
}

/// A supplier that can tell our prepaid balance with it.
#[async_trait]
pub trait SupplierBalance: Supplier {
    /// Our balance with the supplier.
    ///
    /// # Errors
    /// Any [`SupplierError`](crate::SupplierError).
    async fn balance(&self) -> Result<Money>;
}

/// What a cancel achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The supplier will certainly not do the work: a definite failure of the request.
    Cancelled,
    /// Too late (done or under way): the outcome is still to be learned with [`Supplier::query`].
    Refused {
        /// The supplier's reason.
        reason: String,
    },
}

/// A supplier that can cancel a request it has not finished.
#[async_trait]
pub trait SupplierCancel: Supplier {
    /// Asks the supplier to drop `request`.
    ///
    /// # Errors
    /// Any [`SupplierError`](crate::SupplierError); the request's outcome is then unknown.
    async fn cancel(&self, request: &RequestId) -> Result<CancelOutcome>;
}
