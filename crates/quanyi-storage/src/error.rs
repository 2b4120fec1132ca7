//! The storage error: driver-neutral, so hosts and the engine branch on kinds, not drivers.

use quanyi_core::{CardId, ErrorKind, SkuId};

/// The reason of the `Conflict` on `"goods"` that [`OrderStore::place_order`] answers when
/// goods the order was priced from changed since.
///
/// [`OrderStore::place_order`]: crate::OrderStore::place_order
pub const GOODS_CHANGED: &str = "changed since the order was priced";

/// The reason of a placement's `Conflict` on `"pricing"`: the tenant's pricing rules changed
/// since the order was priced.
pub const PRICING_CHANGED: &str = "pricing rules changed since the order was priced";

/// Why a storage call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The record asked for does not exist.
    #[error("{what} not found: {id}")]
    NotFound {
        /// What kind of record.
        what: &'static str,
        /// Its id.
        id: String,
    },
    /// The write lost a race: a stale version, an id or unique key already taken, a lease lost.
    #[error("conflict on {what} {id}: {reason}")]
    Conflict {
        /// What kind of record.
        what: &'static str,
        /// Its id.
        id: String,
        /// What collided.
        reason: &'static str,
    },
    /// Not enough card keys to reserve or commit; nothing was changed.
    #[error("out of stock for {sku}: requested {requested}, available {available}")]
    OutOfStock {
        /// The SKU.
        sku: SkuId,
        /// How many were asked for.
        requested: u32,
        /// How many were free.
        available: u64,
    },
    /// A budget has no use left (a coupon used up, or used up by this member): nothing was
    /// written.
    #[error("budget {scope}/{key} has no use left")]
    BudgetExhausted {
        /// The kind of budget.
        scope: String,
        /// The budget.
        key: String,
    },
    /// A refund would void a card its buyer has revealed: nothing was written.
    #[error("card {card} was revealed")]
    Revealed {
        /// The card.
        card: CardId,
    },
    /// A member's purchase limit for a SKU would be exceeded; nothing was changed.
    #[error(
        "member limit for {sku} exceeded: limit {limit}, already {already}, requested {requested}"
    )]
    MemberLimitExceeded {
        /// The SKU.
        sku: SkuId,
        /// The limit.
        limit: u32,
        /// Quantity already held in live orders.
        already: u64,
        /// Quantity in this order.
        requested: u32,
    },
    /// Cards were sealed with a data key that is not the tenant's active key when the write
    /// would commit (it was rotated, retired or destroyed meanwhile): nothing was written. Seal
    /// them again under the active key.
    #[error("data key {key} is not the active key")]
    KeyNotActive {
        /// The key id.
        key: String,
    },
    /// Cards bought for an order repeat card keys the tenant already holds (or repeat each
    /// other): nothing was written.
    #[error("{} card(s) repeat keys already held", positions.len())]
    DuplicateCards {
        /// Their positions in the input slice.
        positions: Vec<usize>,
    },
    /// A data key has reached its encryption limit and must be rotated.
    #[error("data key {key} has reached its encryption limit")]
    KeyExhausted {
        /// The key id.
        key: String,
    },
    /// A claim the write would take is taken already (by any earlier write, in any process):
    /// the stored claim, with the value it was taken with. Nothing was written.
    #[error("claim {} {} is taken", claim.scope, quanyi_core::text::clip(&claim.key))]
    Claimed {
        /// The stored claim.
        claim: Box<crate::Claim>,
    },
    /// The call itself is malformed (a bug in the caller).
    #[error("invalid storage call: {0}")]
    Invalid(String),
    /// The backend is down, busy or timed out; nothing was written and the call may be retried.
    #[error("storage unavailable: {message}")]
    Unavailable {
        /// What happened.
        message: String,
        /// The driver's error.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
    },
    /// Stored data could not be decoded.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
}

impl Error {
    /// The driver-neutral kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::Conflict { .. }
            | Error::KeyNotActive { .. }
            | Error::DuplicateCards { .. }
            | Error::Claimed { .. }
            | Error::Revealed { .. } => ErrorKind::Conflict,
            Error::OutOfStock { .. }
            | Error::MemberLimitExceeded { .. }
            | Error::BudgetExhausted { .. }
            | Error::KeyExhausted { .. } => ErrorKind::Exhausted,
            Error::Invalid(_) => ErrorKind::Invalid,
            Error::Unavailable { .. } => ErrorKind::Unavailable,
            Error::Corrupt(_) => ErrorKind::Internal,
        }
    }

    /// A conflict error.
    pub fn conflict(what: &'static str, id: impl ToString, reason: &'static str) -> Self {
        Error::Conflict {
            what,
            id: id.to_string(),
            reason,
        }
    }

    /// The store's answer when a ring refused to reserve uses of `key`
    /// ([`WrappedKeyRing::reserve_uses`](quanyi_vault::WrappedKeyRing::reserve_uses)).
    pub fn uses_refused(key: quanyi_vault::KeyId, refused: quanyi_vault::UsesRefused) -> Self {
        match refused {
            quanyi_vault::UsesRefused::UnknownKey => Error::not_found("data key", key),
            quanyi_vault::UsesRefused::NotActive => {
                Error::conflict("data key", key, "not the active key")
            }
            quanyi_vault::UsesRefused::Exhausted => Error::KeyExhausted {
                key: key.to_string(),
            },
        }
    }

    /// A not-found error.
    pub fn not_found(what: &'static str, id: impl ToString) -> Self {
        Error::NotFound {
            what,
            id: id.to_string(),
        }
    }
}

/// Result of a storage call.
pub type Result<T, E = Error> = std::result::Result<T, E>;
