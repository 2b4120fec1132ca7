//! Plain records that cross the storage ports.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use quanyi_core::{
    AuditId, BatchId, CardId, EventEnvelope, GoodsId, JobId, Money, OrderId, SkuId, TenantId,
};
use quanyi_order::Order;
use quanyi_vault::{BlindIndex, IndexScheme, KeyId, SealedCard};
use serde::{Deserialize, Serialize};

/// Where a card key stands. A card moves Available -> Reserved -> Sold, or back to Available
/// when a reservation is released or runs out; Sold is final. An unsold card can be Withdrawn
/// (taken out of sale for good), which is final too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum CardState {
    /// In stock.
    Available,
    /// Held for an order until a deadline; after it, the card counts as available again.
    Reserved {
        /// The order holding it.
        order: OrderId,
        /// Until when.
        until: DateTime<Utc>,
    },
    /// Delivered to an order, forever.
    Sold {
        /// The order it belongs to.
        order: OrderId,
        /// When it was committed.
        at: DateTime<Utc>,
    },
    /// Taken out of sale for good before it was sold: a duplicate of another card found when
    /// re-indexing, or sealed with a destroyed data key. Never reserved or sold again; counted in
    /// no stock figure.
    Withdrawn {
        /// When.
        at: DateTime<Utc>,
    },
}

impl CardState {
    /// The order that holds the card (reserved for it or sold to it), if any.
    pub fn holder(&self) -> Option<OrderId> {
        match self {
            CardState::Available | CardState::Withdrawn { .. } => None,
            CardState::Reserved { order, .. } | CardState::Sold { order, .. } => Some(*order),
        }
    }

    /// True when the card can be reserved at `now`.
    pub fn is_free_at(&self, now: DateTime<Utc>) -> bool {
        match self {
            CardState::Available => true,
            CardState::Reserved { until, .. } => *until <= now,
            CardState::Sold { .. } | CardState::Withdrawn { .. } => false,
        }
    }
}

/// A sealed card key ready to be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCard {
    /// Its id.
    pub id: CardId,
    /// The SKU whose pool it joins.
    pub sku: SkuId,
    /// The import batch.
    pub batch: BatchId,
    /// Keyed blind index of the normalised code, unique per tenant.
    pub blind_index: BlindIndex,
    /// How `blind_index` was normalised ([`IndexScheme::CURRENT`] for every new card).
    pub index_scheme: IndexScheme,
    /// Another index to check for duplicates, not stored: the card's index under an older
    /// scheme, while the tenant may still hold cards indexed that way. A card whose legacy index
    /// the tenant holds is a duplicate too.
    pub legacy_index: Option<BlindIndex>,
    /// The sealed code and secret.
    pub sealed: SealedCard,
    /// The data key that sealed it. Storage refuses a card sealed with a key that is not the
    /// tenant's active key when the write commits.
    pub key_id: KeyId,
}

/// A stored card key. Only sealed values; plaintext never reaches storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCard {
    /// Its id.
    pub id: CardId,
    /// Its tenant.
    pub tenant: TenantId,
    /// Its SKU.
    pub sku: SkuId,
    /// The import batch.
    pub batch: BatchId,
    /// Keyed blind index of the normalised code.
    pub blind_index: BlindIndex,
    /// How `blind_index` was normalised.
    pub index_scheme: IndexScheme,
    /// The sealed code and secret (both empty once shredded with a destroyed data key).
    pub sealed: SealedCard,
    /// The data key that sealed it.
    pub key_id: KeyId,
    /// Where it stands.
    pub state: CardState,
    /// When it was imported.
    pub imported_at: DateTime<Utc>,
    /// When its buyer first revealed it (sold cards only).
    pub revealed_at: Option<DateTime<Utc>>,
    /// When an after-sales refund voided it (sold cards only, never revealed): it stays sold to
    /// its order, is never revealed and never sold again.
    pub voided_at: Option<DateTime<Utc>>,
}

/// What `insert_cards` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InsertCardsOutcome {
    /// Ids of the cards stored.
    pub inserted: Vec<CardId>,
    /// Positions (in the input slice) of cards whose blind index the tenant already had.
    pub duplicates: Vec<usize>,
}

/// A card to move to the blind index of a newer scheme (see
/// [`VaultStore::reindex_cards`](crate::VaultStore::reindex_cards)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexChange {
    /// The card.
    pub card: CardId,
    /// The index the card holds now; the change is skipped when it holds another.
    pub from: BlindIndex,
    /// Its index under `scheme`.
    pub to: BlindIndex,
    /// The scheme `to` was computed with.
    pub scheme: IndexScheme,
}

/// What [`VaultStore::reindex_cards`](crate::VaultStore::reindex_cards) did with one change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reindexed {
    /// The card holds `to` now, under the new scheme.
    Moved,
    /// Another card of the tenant holds `to`: the two are one code. The card keeps `from`
    /// (so no card is ever without an index) and is marked with the new scheme.
    Duplicate {
        /// The card that holds `to`.
        holder: CardId,
    },
    /// The card is gone or no longer holds `from`; nothing changed.
    Stale,
}

/// What [`KeyRingStore::destroy_key`](crate::KeyRingStore::destroy_key) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DestroyOutcome {
    /// The ring's version after the write.
    pub version: u64,
    /// Cards whose sealed values were emptied.
    pub shredded: u64,
    /// Of those, the unsold ones, now withdrawn.
    pub withdrawn: u64,
}

/// Card-key stock of one SKU at an instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockCount {
    /// Free to reserve.
    pub available: u64,
    /// Held by unpaid orders whose deadline has not passed.
    pub reserved: u64,
    /// Sold.
    pub sold: u64,
}

/// A per-member purchase limit checked atomically when an order is inserted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberLimit {
    /// The SKU.
    pub sku: SkuId,
    /// The most the member may buy, counted over the member's orders (see
    /// [`Order::quantity_of`]) that [count toward the
    /// limit](quanyi_order::OrderStatus::counts_toward_limit): all but those never paid, and
    /// but refunded ones when `release_on_refund` is set.
    pub limit: u32,
    /// Refunded orders give their units back.
    pub release_on_refund: bool,
}

/// Card keys of one SKU to hold for a new order until its payment deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    /// The SKU.
    pub sku: SkuId,
    /// How many cards.
    pub quantity: u32,
}

/// A new order to store in one atomic step with its events, its card reservations (held until
/// the order's `expires_at`) and the per-member limits to check.
#[derive(Debug, Clone, Copy)]
pub struct NewOrder<'a> {
    /// The order, awaiting payment.
    pub order: &'a Order,
    /// The events that placed it.
    pub events: &'a [EventEnvelope],
    /// Cards to reserve, one entry per SKU.
    pub reservations: &'a [Reservation],
    /// Limits on what the member may hold in live orders.
    pub member_limits: &'a [MemberLimit],
    /// The goods the order was priced and checked from, at the versions read. The order is
    /// refused (`Conflict` on `"goods"`, nothing written) when any of them changed or is gone
    /// since: a price or shelf change never meets an order priced before it. Empty: no check.
    pub priced_from: &'a [GoodsVersion],
    /// Claims the placement takes in the same atomic step (an idempotency key, later a one-use
    /// coupon): when any is already taken, the order is refused with
    /// [`Error::Claimed`](crate::Error::Claimed) and nothing is written.
    pub claims: &'a [Claim],
    /// Uses of budgets the placement takes in the same atomic step (a coupon's total uses, its
    /// uses per member): when any would pass its limit, the order is refused with
    /// [`Error::BudgetExhausted`](crate::Error::BudgetExhausted) and nothing is written. The
    /// uses go back, once, when the order ends unpaid
    /// ([`close_unpaid_order`](crate::OrderStore::close_unpaid_order)).
    pub budgets: &'a [BudgetTake],
    /// The version of the tenant's pricing rules ([`PricingStore`](crate::PricingStore)) the
    /// order was priced from: the order is refused (`Conflict` on `"pricing"`, nothing
    /// written) when the stored version differs, so a placement priced from rules that changed
    /// meanwhile is priced again. `None`: no check.
    pub pricing_version: Option<u64>,
}

/// A take of a budget: `(tenant, scope, key)` sums the amounts taken by orders that are not
/// closed unpaid (uses, or minor units of a discount), and a take that would pass `limit` is
/// refused.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BudgetTake {
    /// The kind of budget (`coupon`, `coupon.member`): 1 to [`MAX_CLAIM_SCOPE`] bytes.
    pub scope: String,
    /// The budget (a coupon's id, with the member for a per-member budget): 1 to
    /// [`MAX_CLAIM_KEY`] bytes.
    pub key: String,
    /// The most the budget holds, at least 1.
    pub limit: u64,
    /// What this take uses, at least 1 (1 for a use; a discount's minor units for a budget of
    /// amounts).
    pub amount: u64,
}

impl BudgetTake {
    /// Checks every take's scope, key and limit, and that none repeats.
    ///
    /// # Errors
    /// `Invalid`.
    pub fn check_all(takes: &[BudgetTake]) -> crate::Result<()> {
        for (i, t) in takes.iter().enumerate() {
            let bad = t.scope.is_empty()
                || t.scope.len() > MAX_CLAIM_SCOPE
                || t.key.is_empty()
                || t.key.len() > MAX_CLAIM_KEY
                || t.limit == 0
                || t.amount == 0
                || i64::try_from(t.limit).is_err()
                || i64::try_from(t.amount).is_err()
                || takes[..i]
                    .iter()
                    .any(|o| o.scope == t.scope && o.key == t.key);
            if bad {
                return Err(crate::Error::Invalid(format!(
                    "budget take {}/{} is malformed or repeated",
                    t.scope.escape_debug(),
                    t.key.escape_debug()
                )));
            }
        }
        Ok(())
    }
}

/// The longest claim scope, in bytes.
pub const MAX_CLAIM_SCOPE: usize = 32;
/// The longest claim key, in bytes.
pub const MAX_CLAIM_KEY: usize = 200;
/// The longest claim value, in bytes.
pub const MAX_CLAIM_VALUE: usize = 2_000;

/// A mark a sale write takes in its own atomic step: each (tenant, scope, key) is taken at most
/// once, ever, and keeps the value it was taken with. Domains build their "at most once" rules
/// on claims without a change to any adapter: the engine's idempotency keys (scope
/// `placement`), and later one-use coupons or once-per-member trial packs. A write whose claim
/// is taken is refused whole; a write that is refused for any other reason takes no claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// What kind of mark: 1 to [`MAX_CLAIM_SCOPE`] bytes of lowercase ASCII letters, digits,
    /// `_`, `.` and `-`.
    pub scope: String,
    /// The mark itself, unique within its scope and tenant: 1 to [`MAX_CLAIM_KEY`] bytes.
    pub key: String,
    /// What the domain keeps with it (for an idempotency key, the request's fingerprint and the
    /// order): at most [`MAX_CLAIM_VALUE`] bytes.
    pub value: String,
}

impl Claim {
    /// Checks the sizes and the scope's characters.
    ///
    /// # Errors
    /// [`Error::Invalid`](crate::Error::Invalid) naming what is wrong.
    pub fn check(&self) -> crate::Result<()> {
        let scope_ok = !self.scope.is_empty()
            && self.scope.len() <= MAX_CLAIM_SCOPE
            && self.scope.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
            });
        if !scope_ok {
            return Err(crate::Error::Invalid("malformed claim scope".into()));
        }
        if self.key.is_empty() || self.key.len() > MAX_CLAIM_KEY {
            return Err(crate::Error::Invalid(format!(
                "a claim key must be 1 to {MAX_CLAIM_KEY} bytes"
            )));
        }
        if self.value.len() > MAX_CLAIM_VALUE {
            return Err(crate::Error::Invalid(format!(
                "a claim value must be at most {MAX_CLAIM_VALUE} bytes"
            )));
        }
        Ok(())
    }

    /// Checks every claim of a write and that no (scope, key) repeats in it.
    ///
    /// # Errors
    /// As [`check`](Claim::check); `Invalid` for a repeat.
    pub fn check_all(claims: &[Claim]) -> crate::Result<()> {
        for (n, claim) in claims.iter().enumerate() {
            claim.check()?;
            if claims[..n]
                .iter()
                .any(|c| c.scope == claim.scope && c.key == claim.key)
            {
                return Err(crate::Error::Invalid("a claim repeats in one write".into()));
            }
        }
        Ok(())
    }
}

/// Goods at the version a decision was made from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GoodsVersion {
    /// The goods.
    pub id: GoodsId,
    /// The version read.
    pub version: u64,
}

/// A card an order holds: reserved for it (even past the deadline, until another order takes
/// it) or sold to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldCard {
    /// The card.
    pub id: CardId,
    /// Its SKU.
    pub sku: SkuId,
    /// Reserved or sold.
    pub state: CardState,
}

/// A payment notice to record, with everything it changes, in one atomic step.
#[derive(Debug, Clone, Copy)]
pub struct PaymentWrite<'a> {
    /// The notice; recorded once per (tenant, provider, transaction id).
    pub notice: &'a PaymentNotice,
    /// The order change it makes, if it pays an order.
    pub change: Option<OrderChange<'a>>,
    /// Cards held by the changed order to mark sold to it (delivery in the same step).
    pub sell: &'a [CardId],
    /// A job to enqueue (delivery by a worker when it is not done in this step).
    pub job: Option<&'a NewJob>,
}

/// A new version of an order to write together with its events.
#[derive(Debug, Clone, Copy)]
pub struct OrderChange<'a> {
    /// The order as it should be stored.
    pub order: &'a Order,
    /// The version the caller loaded; a different stored version is a conflict.
    pub expected_version: u64,
    /// The events the change produced.
    pub events: &'a [EventEnvelope],
}

/// The reason of a notice kept by
/// [`PaymentStore::flag_conflicting_notice`](crate::PaymentStore::flag_conflicting_notice): it
/// repeats a recorded transaction id with another order, amount or currency.
pub const CONFLICTING_REPEAT: &str = "conflicting_repeat";

/// What happened to a payment notice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "disposition", rename_all = "snake_case")]
pub enum NoticeDisposition {
    /// The order was marked paid by this notice.
    Applied,
    /// Kept for reconciliation (对账); it changed no order and delivered nothing.
    Reconcile {
        /// Why: unknown_order, order_expired, order_cancelled, amount_mismatch, currency_mismatch,
        /// already_paid, not_payable, conflicting_repeat ([`CONFLICTING_REPEAT`]).
        reason: String,
    },
}

/// A payment provider's notice, recorded once per (tenant, provider, transaction id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentNotice {
    /// The tenant.
    pub tenant: TenantId,
    /// The payment provider, for example `alipay`.
    pub provider: Arc<str>,
    /// The provider's transaction id.
    pub transaction_id: Arc<str>,
    /// The order the notice names (it may not exist).
    pub order: OrderId,
    /// The amount the provider says was paid.
    pub amount: Money,
    /// When the notice arrived.
    pub received_at: DateTime<Utc>,
    /// What was done with it.
    pub disposition: NoticeDisposition,
}

/// What `record_payment` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordOutcome {
    /// The notice was new; it and the order change (if any) were written.
    Recorded,
    /// The same transaction was recorded before; nothing was written. The first record is returned.
    Duplicate(PaymentNotice),
}

/// Kind of an audited action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AuditAction {
    /// A buyer asked to see the card keys of an order.
    Reveal,
    /// A batch of card keys was imported.
    Import,
    /// A data key was rotated.
    KeyRotated,
    /// Entries were resealed under the active key.
    KeyRewrapped,
    /// A data key was retired.
    KeyRetired,
    /// A supplier's callback was taken or refused.
    SupplierCallback,
    /// A data key was destroyed (it may be compromised); what it sealed was shredded.
    KeyDestroyed,
    /// Cards were moved to the blind index of a newer scheme.
    CardsReindexed,
    /// Cards were taken out of sale for good.
    CardsWithdrawn,
    /// A supplier handed over a card key the shop already holds; it was refused.
    SupplierDuplicate,
    /// A payment notice repeated a recorded transaction with another order or amount.
    NoticeConflict,
    /// A paid line waited on its suppliers past the shop's deadline and was given up.
    SupplierOverdue,
    /// An operator searched the orders.
    OrdersSearched,
    /// An operator looked a card up by its code.
    CardLookedUp,
    /// An operator created goods.
    GoodsCreated,
    /// An operator changed goods (price, limits, routes, kind data, shelf).
    GoodsChanged,
    /// An operator decided a line held past the supplier deadline.
    HeldLineResolved,
    /// An operator refunded lines of an order (after sales), overriding their rules or not.
    RefundIssued,
    /// An operator approved a buyer's refund request.
    RefundApproved,
    /// An operator rejected a buyer's refund request.
    RefundRejected,
    /// An operator read the queue of refunds waiting for a decision or a payment.
    RefundQueueViewed,
    /// An operator read the refunds paid in a period.
    RefundReportViewed,
    /// An operator changed the pricing rules (price lists, promotions, coupon templates).
    PricingChanged,
    /// Coupons were issued to members.
    CouponsIssued,
}

/// Whether an audited action was allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditOutcome {
    /// It happened.
    Allowed,
    /// It was refused.
    Denied,
}

/// What an operator's change writes beside it, in the same atomic step as the change: its
/// events and the operator's audit record. A failure or crash never leaves a change without
/// its record, nor a record of a change that was not made.
#[derive(Debug, Clone, Copy, Default)]
pub struct Trail<'a> {
    /// The change's events.
    pub events: &'a [EventEnvelope],
    /// The operator's record of the change.
    pub audit: Option<&'a AuditRecord>,
}

impl<'a> Trail<'a> {
    /// Nothing beside the change.
    pub const NONE: Trail<'static> = Trail {
        events: &[],
        audit: None,
    };

    /// The change's events, without an audit record.
    pub fn events(events: &'a [EventEnvelope]) -> Trail<'a> {
        Trail {
            events,
            audit: None,
        }
    }

    /// The same trail with the operator's record.
    #[must_use]
    pub fn audited(self, record: &'a AuditRecord) -> Trail<'a> {
        Trail {
            audit: Some(record),
            ..self
        }
    }
}

/// One audit record. Details never hold plaintext keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Its id.
    pub id: AuditId,
    /// The tenant.
    pub tenant: TenantId,
    /// When.
    pub at: DateTime<Utc>,
    /// Who: a member id, `operator:NAME` or `system`.
    pub actor: String,
    /// What.
    pub action: AuditAction,
    /// On what: an order, card, key or batch id.
    pub subject: String,
    /// Allowed or denied.
    pub outcome: AuditOutcome,
    /// A short note (counts, reasons), never secret material.
    pub detail: String,
}

/// Where a job stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum JobStatus {
    /// Waiting for `run_at`.
    Queued,
    /// Claimed by a worker until the lease runs out.
    Running {
        /// The worker holding the lease.
        worker: String,
        /// When the lease runs out.
        lease_until: DateTime<Utc>,
    },
    /// Finished.
    Done,
    /// Given up; needs a person.
    Dead {
        /// Why.
        reason: String,
    },
}

/// A job to enqueue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJob {
    /// Its id.
    pub id: JobId,
    /// The tenant.
    pub tenant: TenantId,
    /// What to do, for example `deliver_order`.
    pub kind: String,
    /// Unique per tenant: enqueuing the same key twice returns the first job.
    pub dedupe_key: String,
    /// Arguments.
    pub payload: serde_json::Value,
    /// Not before.
    pub run_at: DateTime<Utc>,
}

/// A stored job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// Its id.
    pub id: JobId,
    /// The tenant.
    pub tenant: TenantId,
    /// What to do.
    pub kind: String,
    /// Unique per tenant.
    pub dedupe_key: String,
    /// Arguments.
    pub payload: serde_json::Value,
    /// Not before.
    pub run_at: DateTime<Utc>,
    /// Where it stands.
    pub status: JobStatus,
    /// How many times it was claimed.
    pub attempts: u32,
    /// The last failure, if any.
    pub last_error: Option<String>,
    /// When it was enqueued.
    pub created_at: DateTime<Utc>,
}

/// A place in a tenant's event feed. Stores assign every event one when it is written; a reader
/// that keeps the position of the last event it handled and asks for what comes after it sees
/// every committed event exactly once, in position order. Opaque: only its order, and
/// [`FeedPosition::START`] (before every event), mean anything; an adapter encodes what it needs
/// (a log index, a row and a place in it, a transaction and a row) in its 128 bits.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct FeedPosition(u128);

impl FeedPosition {
    /// Before every event: a consumer that starts at the beginning starts here.
    pub const START: FeedPosition = FeedPosition(0);

    /// A position from its stored form.
    pub const fn from_raw(raw: u128) -> Self {
        FeedPosition(raw)
    }

    /// The stored form.
    pub const fn raw(self) -> u128 {
        self.0
    }

    /// The 16 big-endian bytes of the stored form (what durable stores keep).
    pub fn to_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }

    /// A position from [`to_bytes`](FeedPosition::to_bytes).
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        FeedPosition(u128::from_be_bytes(bytes))
    }
}

impl std::fmt::Display for FeedPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// An event with its position in the feed.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedEvent {
    /// Where it stands in its tenant's feed.
    pub position: FeedPosition,
    /// The event.
    pub event: EventEnvelope,
}

/// The longest consumer name, in bytes.
pub const MAX_CONSUMER_NAME: usize = 64;

/// Checks a consumer name: 1 to [`MAX_CONSUMER_NAME`] printable ASCII characters.
///
/// # Errors
/// [`Error::Invalid`](crate::Error::Invalid).
pub fn check_consumer_name(name: &str) -> crate::Result<()> {
    if name.is_empty()
        || name.len() > MAX_CONSUMER_NAME
        || !name.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(crate::Error::Invalid(format!(
            "a consumer name must be 1 to {MAX_CONSUMER_NAME} printable ASCII characters"
        )));
    }
    Ok(())
}

/// The most orders one [`OrderStore::search_orders`](crate::OrderStore::search_orders) call
/// returns.
pub const MAX_SEARCH_PAGE: usize = 500;

/// What an operator looks for among a tenant's orders: every criterion given must hold, and a
/// query without criteria matches every order. Built with its methods
/// (`OrderQuery::new().member(..).status(..)`); [`matches`](OrderQuery::matches) is the rule
/// every store applies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct OrderQuery {
    /// The buyer.
    pub member: Option<quanyi_core::MemberId>,
    /// Any of these statuses (none given: any status).
    pub statuses: Vec<quanyi_order::OrderStatus>,
    /// Placed at or after ([`placed_at`]).
    pub placed_from: Option<DateTime<Utc>>,
    /// Placed before.
    pub placed_before: Option<DateTime<Utc>>,
    /// With a line of this SKU.
    pub sku: Option<SkuId>,
    /// Placed through this channel (an order without a context was placed on the web).
    pub channel: Option<quanyi_order::Channel>,
}

impl OrderQuery {
    /// A query that matches every order.
    pub fn new() -> Self {
        OrderQuery::default()
    }

    /// Only this member's orders.
    #[must_use]
    pub fn member(mut self, member: quanyi_core::MemberId) -> Self {
        self.member = Some(member);
        self
    }

    /// Also orders in `status` (the first call narrows from any status to this one).
    #[must_use]
    pub fn status(mut self, status: quanyi_order::OrderStatus) -> Self {
        if !self.statuses.contains(&status) {
            self.statuses.push(status);
        }
        self
    }

    /// Only orders placed in `[from, before)`.
    #[must_use]
    pub fn placed_between(mut self, from: DateTime<Utc>, before: DateTime<Utc>) -> Self {
        self.placed_from = Some(from);
        self.placed_before = Some(before);
        self
    }

    /// Only orders with a line of `sku`.
    #[must_use]
    pub fn sku(mut self, sku: SkuId) -> Self {
        self.sku = Some(sku);
        self
    }

    /// Only orders placed through `channel`.
    #[must_use]
    pub fn channel(mut self, channel: quanyi_order::Channel) -> Self {
        self.channel = Some(channel);
        self
    }

    /// Whether `order` meets every criterion (its tenant aside).
    pub fn matches(&self, order: &Order) -> bool {
        self.member.as_ref().is_none_or(|m| order.member() == m)
            && (self.statuses.is_empty() || self.statuses.contains(&order.status()))
            && self.placed_from.is_none_or(|t| placed_at(order) >= t)
            && self.placed_before.is_none_or(|t| placed_at(order) < t)
            && self
                .sku
                .is_none_or(|sku| order.limit_units().any(|(s, _)| s == sku))
            && self
                .channel
                .as_ref()
                .is_none_or(|c| order.context().channel == *c)
    }

    /// Whether the query can match anything: an empty time window cannot.
    pub fn is_satisfiable(&self) -> bool {
        match (self.placed_from, self.placed_before) {
            (Some(from), Some(before)) => from < before,
            _ => true,
        }
    }
}

/// An order's placement time as searches see it: `Order::created_at` to the microsecond, the
/// precision every store keeps it at. Searches order by it and their windows compare it.
pub fn placed_at(order: &Order) -> DateTime<Utc> {
    use chrono::SubsecRound;
    order.created_at().trunc_subsecs(6)
}

/// Where a page of [`OrderStore::search_orders`](crate::OrderStore::search_orders) ended: the
/// last order's placement time and id. The next page starts after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct OrderCursor {
    /// [`placed_at`] of the last order of the page (compared to the microsecond).
    pub placed_at: DateTime<Utc>,
    /// Its id.
    pub id: OrderId,
}

impl OrderCursor {
    /// The cursor just past `order`.
    pub fn after(order: &Order) -> Self {
        OrderCursor {
            placed_at: placed_at(order),
            id: order.id(),
        }
    }

    /// The cursor's placement time to the microsecond.
    pub fn placed_at_micros(&self) -> DateTime<Utc> {
        use chrono::SubsecRound;
        self.placed_at.trunc_subsecs(6)
    }

    /// Whether `order` comes after this cursor in search order (newest first: placed earlier,
    /// or at the same time with a smaller id).
    pub fn precedes(&self, order: &Order) -> bool {
        (placed_at(order), order.id()) < (self.placed_at_micros(), self.id)
    }
}

/// Reads a page of a search from a store that can narrow by some criteria but not all:
/// `fetch(after, n)` returns up to `n` orders in search order (newest first) after the cursor
/// that match at least what the store can check; this keeps those that match the whole query
/// and reads on until `limit` match or the store has no more.
///
/// # Errors
/// What `fetch` returns.
pub async fn search_in_pages<F, Fut>(
    query: &OrderQuery,
    after: Option<OrderCursor>,
    limit: usize,
    mut fetch: F,
) -> crate::Result<Vec<Order>>
where
    F: FnMut(Option<OrderCursor>, usize) -> Fut,
    Fut: std::future::Future<Output = crate::Result<Vec<Order>>>,
{
    let limit = limit.min(MAX_SEARCH_PAGE);
    let mut out = Vec::new();
    if limit == 0 || !query.is_satisfiable() {
        return Ok(out);
    }
    let chunk = limit.max(100);
    let mut cursor = after;
    loop {
        let rows = fetch(cursor, chunk).await?;
        let full = rows.len() == chunk;
        if let Some(last) = rows.last() {
            cursor = Some(OrderCursor::after(last));
        }
        for order in rows {
            if query.matches(&order) {
                out.push(order);
                if out.len() == limit {
                    return Ok(out);
                }
            }
        }
        if !full {
            return Ok(out);
        }
    }
}

/// A refund the payment provider paid back, as the refund ledger keeps it for reconciliation
/// with the provider: after-sales refunds (`<order>-R<n>`) and the pay-backs of lines that
/// could not be delivered (`<order>-L<line>`, `<order>-all`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaidRefund {
    /// The tenant.
    pub tenant: TenantId,
    /// The refund id the gateway received; unique per tenant.
    pub refund_id: String,
    /// The order.
    pub order: OrderId,
    /// The provider that took the payment.
    pub provider: String,
    /// The provider's transaction id of the payment.
    pub transaction_id: String,
    /// What was paid back.
    pub amount: Money,
    /// The provider's id of the refund.
    pub receipt: String,
    /// When the shop recorded it paid.
    pub paid_at: DateTime<Utc>,
}

/// Refuses a ledger entry of another tenant than the order's.
///
/// # Errors
/// `Invalid`.
pub fn check_paid(paid: Option<&PaidRefund>, tenant: &TenantId) -> crate::Result<()> {
    match paid {
        Some(p) if &p.tenant != tenant => Err(crate::Error::Invalid(format!(
            "refund {} of tenant {} written with an order of tenant {tenant}",
            p.refund_id, p.tenant
        ))),
        _ => Ok(()),
    }
}

/// What an order's refund change writes beside the order ([`OrderStore::refund_order`](crate::OrderStore::refund_order)).
#[derive(Debug, Clone, Copy, Default)]
pub struct RefundWrite<'a> {
    /// Cards to void: each sold to the order, never revealed, not voided yet.
    pub void: &'a [CardId],
    /// A refund the change records paid, for the refund ledger.
    pub paid: Option<&'a PaidRefund>,
    /// The operator's record of the change.
    pub audit: Option<&'a AuditRecord>,
}
