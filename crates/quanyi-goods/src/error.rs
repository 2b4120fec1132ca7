//! The goods crate's error type.

use quanyi_core::{Currency, ErrorKind, MoneyError, SkuId};

use crate::{KindTag, StockSource};

/// Why a goods operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A category is empty, too long or holds control characters, or there are too many.
    #[error("invalid category: {reason}")]
    InvalidCategory {
        /// What is wrong.
        reason: &'static str,
    },
    /// The title is empty, too long or holds control characters.
    #[error("invalid title: {reason}")]
    InvalidTitle {
        /// What is wrong.
        reason: &'static str,
    },
    /// A good needs between 1 and [`crate::MAX_SKUS`] SKUs.
    #[error("invalid sku count {count}")]
    InvalidSkuCount {
        /// How many SKUs were given.
        count: usize,
    },
    /// Two SKUs share an id.
    #[error("duplicate sku {sku}")]
    DuplicateSku {
        /// The repeated id.
        sku: SkuId,
    },
    /// A SKU name is empty, too long or holds control characters.
    #[error("invalid name for sku {sku}: {reason}")]
    InvalidSkuName {
        /// The SKU.
        sku: SkuId,
        /// What is wrong.
        reason: &'static str,
    },
    /// A price is below zero.
    #[error("negative price for sku {sku}")]
    NegativePrice {
        /// The SKU.
        sku: SkuId,
    },
    /// All SKUs of a good are priced in one currency.
    #[error("currency mismatch: expected {expected}, got {got}")]
    CurrencyMismatch {
        /// The good's currency.
        expected: Currency,
        /// The currency given.
        got: Currency,
    },
    /// The stock source does not fit the kind of goods.
    #[error("stock source {stock} does not fit {kind} goods")]
    StockMismatch {
        /// The kind of goods.
        kind: KindTag,
        /// The stock source given.
        stock: StockSource,
    },
    /// A supplier route is malformed or does not fit the SKU.
    #[error("invalid supplier route for sku {sku}: {reason}")]
    InvalidRoute {
        /// The SKU.
        sku: SkuId,
        /// Why.
        reason: String,
    },
    /// A purchase limit, when set, is at least 1.
    #[error("invalid purchase limit for sku {sku}")]
    InvalidLimit {
        /// The SKU.
        sku: SkuId,
    },
    /// A custom account pattern does not compile or is too large.
    #[error("invalid account pattern: {reason}")]
    InvalidPattern {
        /// What is wrong.
        reason: String,
    },
    /// A benefit pack's components are not acceptable.
    #[error("invalid benefit pack: {reason}")]
    InvalidBundle {
        /// What is wrong.
        reason: String,
    },
    /// An edit would change what kind of goods they are.
    #[error("{from} goods cannot become {to} goods")]
    KindChanged {
        /// The kind they are.
        from: crate::KindTag,
        /// The kind asked for.
        to: crate::KindTag,
    },
    /// A membership plan or duration is not acceptable.
    #[error("invalid membership: {reason}")]
    InvalidMembership {
        /// What is wrong.
        reason: &'static str,
    },
    /// The good has no SKU with this id.
    #[error("unknown sku {sku}")]
    UnknownSku {
        /// The id asked for.
        sku: SkuId,
    },
    /// The SKU is not on sale.
    #[error("sku {sku} is off shelf")]
    OffShelf {
        /// The SKU.
        sku: SkuId,
    },
    /// The quantity is zero or above [`crate::MAX_QUANTITY`].
    #[error("invalid quantity {quantity}")]
    InvalidQuantity {
        /// The quantity asked for.
        quantity: u32,
    },
    /// More than the per-order limit was asked for.
    #[error("limit exceeded: at most {limit} per order, requested {requested}")]
    LimitExceeded {
        /// The limit.
        limit: u32,
        /// The quantity asked for.
        requested: u32,
    },
    /// A direct top-up needs the account to credit.
    #[error("account required ({rule})")]
    AccountRequired {
        /// The account rule's name.
        rule: &'static str,
    },
    /// The account does not satisfy the good's rule.
    #[error("invalid {rule} account: {reason}")]
    InvalidAccount {
        /// The account rule's name, such as `mainland_mobile`.
        rule: &'static str,
        /// What is wrong; quotes at most a clipped copy of the input.
        reason: String,
    },
    /// An account was given for goods that take none.
    #[error("{kind} goods take no account")]
    UnexpectedAccount {
        /// The kind of goods.
        kind: KindTag,
    },
    /// A money calculation failed (overflow).
    #[error("money: {0}")]
    Money(#[from] MoneyError),
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The driver-neutral kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::UnknownSku { .. } => ErrorKind::NotFound,
            Error::OffShelf { .. } | Error::LimitExceeded { .. } => ErrorKind::Forbidden,
            _ => ErrorKind::Invalid,
        }
    }

    /// A stable snake_case code for UIs and APIs.
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidTitle { .. } => "invalid_title",
            Error::InvalidSkuCount { .. } => "invalid_sku_count",
            Error::InvalidCategory { .. } => "invalid_category",
            Error::DuplicateSku { .. } => "duplicate_sku",
            Error::InvalidSkuName { .. } => "invalid_sku_name",
            Error::NegativePrice { .. } => "negative_price",
            Error::CurrencyMismatch { .. } => "currency_mismatch",
            Error::StockMismatch { .. } => "stock_mismatch",
            Error::InvalidRoute { .. } => "invalid_route",
            Error::InvalidLimit { .. } => "invalid_limit",
            Error::InvalidPattern { .. } => "invalid_pattern",
            Error::InvalidBundle { .. } => "invalid_bundle",
            Error::KindChanged { .. } => "kind_changed",
            Error::InvalidMembership { .. } => "invalid_membership",
            Error::UnknownSku { .. } => "unknown_sku",
            Error::OffShelf { .. } => "off_shelf",
            Error::InvalidQuantity { .. } => "invalid_quantity",
            Error::LimitExceeded { .. } => "limit_exceeded",
            Error::AccountRequired { .. } => "account_required",
            Error::InvalidAccount { .. } => "invalid_account",
            Error::UnexpectedAccount { .. } => "unexpected_account",
            Error::Money(MoneyError::Overflow) => "amount_overflow",
            Error::Money(MoneyError::CurrencyMismatch { .. }) => "currency_mismatch",
            Error::Money(_) => "invalid_amount",
        }
    }
}
