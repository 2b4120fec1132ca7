//! The facade's error: every failure a host sees, each with a stable `code()`.

use quanyi_core::{ErrorKind, GoodsId, Money, MoneyError, OrderId, SkuId};
use quanyi_vault::MalformedLine;

/// Why a shop operation failed. Match on [`Error::code`] in APIs and UIs; it never changes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No SKU with this id in this shop.
    #[error("unknown sku {0}")]
    UnknownSku(SkuId),
    /// No order with this id in this shop.
    #[error("unknown order {0}")]
    UnknownOrder(OrderId),
    /// No goods with this id in this shop.
    #[error("unknown goods {0}")]
    UnknownGoods(GoodsId),
    /// The cart has no lines.
    #[error("the cart is empty")]
    EmptyCart,
    /// The idempotency key was used before with a different request (another member, cart or
    /// context); nothing was placed. The first request's order stands.
    #[error("idempotency key used before with a different request (order {order})")]
    IdempotencyConflict {
        /// The order the key placed.
        order: OrderId,
    },
    /// The checkout's decide stage refused the order; nothing was placed.
    #[error("checkout denied by {stage}: {}", reasons.join(", "))]
    CheckoutDenied {
        /// The stage that decided.
        stage: String,
        /// Its reasons (rule names).
        reasons: Vec<String>,
    },
    /// A quantity is zero, negative or larger than [`MAX_LINE_QUANTITY`](crate::MAX_LINE_QUANTITY).
    #[error("invalid quantity {0}")]
    InvalidQuantity(i64),
    /// The cart has more lines than [`MAX_CART_LINES`](crate::MAX_CART_LINES); nothing was read.
    #[error("the cart has {lines} lines; at most {max} are taken")]
    CartTooLarge {
        /// Lines in the cart.
        lines: usize,
        /// The most taken.
        max: usize,
    },
    /// Amounts in different currencies were mixed.
    #[error("currency mismatch: expected {expected}, got {got}")]
    CurrencyMismatch {
        /// The order's or cart's currency.
        expected: quanyi_core::Currency,
        /// The other currency.
        got: quanyi_core::Currency,
    },
    /// Not enough stock; nothing was reserved.
    #[error("out of stock for {sku}: requested {requested}, available {available}")]
    OutOfStock {
        /// The SKU.
        sku: SkuId,
        /// How many were asked for.
        requested: u32,
        /// How many are free.
        available: u64,
    },
    /// A per-member purchase limit would be exceeded.
    #[error(
        "purchase limit for {sku} exceeded: limit {limit}, already {already}, requested {requested}"
    )]
    MemberLimitExceeded {
        /// The SKU.
        sku: SkuId,
        /// The limit.
        limit: u32,
        /// Held in live orders.
        already: u64,
        /// In this order.
        requested: u32,
    },
    /// A payment notice's amount differs from the order's total. The notice is kept for
    /// reconciliation; the order is unchanged.
    #[error("payment amount mismatch: expected {expected}, got {got}")]
    AmountMismatch {
        /// The order total.
        expected: Money,
        /// The notice's amount.
        got: Money,
    },
    /// A payment notice names an order that cannot be paid (unknown, expired, cancelled or
    /// already paid by another transaction). The notice is kept for reconciliation.
    #[error("order {order} cannot take this payment: {reason}")]
    NotPayable {
        /// The order named by the notice.
        order: OrderId,
        /// unknown_order, order_expired, order_cancelled, already_paid, not_payable, or
        /// conflicting_repeat (the transaction id was recorded for another order or amount).
        reason: &'static str,
    },
    /// The engine has no fulfilment for this kind of goods yet; nothing was ordered.
    #[error("{kind} goods cannot be fulfilled by this shop yet (sku {sku})")]
    NotFulfillable {
        /// The SKU.
        sku: SkuId,
        /// The goods kind.
        kind: &'static str,
    },
    /// Card keys can be imported only into a SKU stocked from the vault pool.
    #[error("sku {0} is not stocked from the vault")]
    NotVaultStocked(SkuId),
    /// The import has malformed lines and was not imported (ask to skip bad lines to import the
    /// rest).
    #[error("import rejected: {} malformed line(s)", malformed.len())]
    ImportRejected {
        /// The malformed lines, by line number.
        malformed: Vec<MalformedLine>,
    },
    /// The card keys cannot be revealed: the same answer whether the order is unknown, belongs
    /// to someone else, is not delivered, or a ciphertext fails to open. Every attempt is audited.
    #[error("card keys cannot be revealed")]
    RevealDenied,
    /// No supplier with this id is registered with the shop.
    #[error("unknown supplier {0}")]
    UnknownSupplier(String),
    /// A supplier call or callback failed (a bad signature, a malformed body...).
    #[error("supplier: {0}")]
    Supplier(#[source] quanyi_supplier::SupplierError),
    /// A supplier callback names a request this shop did not make.
    #[error("unknown supplier request")]
    UnknownRequest,
    /// A supplier callback's amount differs from what the route costs for the line.
    #[error("callback amount mismatch: expected {expected}, got {got}")]
    CallbackAmountMismatch {
        /// The route's cost for the line.
        expected: Money,
        /// The callback's amount.
        got: Money,
    },
    /// A signed link does not check (changed, expired, malformed or another shop's).
    #[error("link: {0}")]
    Link(quanyi_vault::LinkError),
    /// A refund is due but the shop has no payment gateway to make it.
    #[error("a refund is due but no payment gateway is configured")]
    NoPaymentGateway,
    /// The payment gateway refused or failed a refund.
    #[error(transparent)]
    Gateway(#[from] crate::GatewayError),
    /// The caller's input is malformed.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A goods rule refused the request.
    #[error(transparent)]
    Goods(#[from] quanyi_goods::Error),
    /// An order rule refused the request.
    #[error(transparent)]
    Order(#[from] quanyi_order::Error),
    /// The pricing engine refused the rules or the cart.
    #[error(transparent)]
    Pricing(#[from] quanyi_pricing::PricingError),
    /// A promotion code entered that no promotion of the shop has.
    #[error("unknown promotion code")]
    UnknownPromotionCode(String),
    /// A coupon issued to the buyer cannot be used now: `reason` is `not_yet_valid`,
    /// `expired`, `used` (an order holds its use) or `withdrawn` (its template is gone).
    #[error("coupon cannot be used: {reason}")]
    CouponUnavailable {
        /// The code entered.
        code: String,
        /// Why.
        reason: &'static str,
    },
    /// A promotion entered by code did not apply, so the order is not placed: the buyer asked
    /// for its discount. `reason` says why (a condition, a spend, an exclusion...).
    #[error("promotion {promotion} did not apply")]
    PromotionNotApplied {
        /// The promotion.
        promotion: String,
        /// Why.
        reason: quanyi_pricing::MissReason,
    },
    /// Money arithmetic failed.
    #[error(transparent)]
    Money(#[from] MoneyError),
    /// The vault refused.
    #[error("vault: {0}")]
    Vault(#[from] quanyi_vault::Error),
    /// Storage failed.
    #[error("storage: {0}")]
    Storage(#[source] quanyi_storage::Error),
}

impl From<quanyi_storage::Error> for Error {
    fn from(e: quanyi_storage::Error) -> Self {
        match e {
            quanyi_storage::Error::OutOfStock {
                sku,
                requested,
                available,
            } => Error::OutOfStock {
                sku,
                requested,
                available,
            },
            quanyi_storage::Error::MemberLimitExceeded {
                sku,
                limit,
                already,
                requested,
            } => Error::MemberLimitExceeded {
                sku,
                limit,
                already,
                requested,
            },
            other => Error::Storage(other),
        }
    }
}

impl Error {
    /// A stable snake_case code for APIs and UIs.
    pub fn code(&self) -> &'static str {
        match self {
            Error::UnknownSku(_) => "unknown_sku",
            Error::UnknownOrder(_) => "unknown_order",
            Error::UnknownGoods(_) => "unknown_goods",
            Error::EmptyCart => "empty_cart",
            Error::CartTooLarge { .. } => "cart_too_large",
            Error::IdempotencyConflict { .. } => "idempotency_conflict",
            Error::CheckoutDenied { .. } => "checkout_denied",
            Error::InvalidQuantity(_) => "invalid_quantity",
            Error::CurrencyMismatch { .. } => "currency_mismatch",
            Error::OutOfStock { .. } => "out_of_stock",
            Error::MemberLimitExceeded { .. } => "limit_exceeded",
            Error::AmountMismatch { .. } => "amount_mismatch",
            Error::NotPayable { .. } => "not_payable",
            Error::NotFulfillable { .. } => "not_fulfillable",
            Error::NotVaultStocked(_) => "not_vault_stocked",
            Error::ImportRejected { .. } => "import_rejected",
            Error::RevealDenied => "reveal_denied",
            Error::InvalidInput(_) => "invalid_input",
            Error::NoPaymentGateway => "no_payment_gateway",
            Error::Link(quanyi_vault::LinkError::Expired) => "link_expired",
            Error::Link(_) => "link_invalid",
            Error::UnknownSupplier(_) => "unknown_supplier",
            Error::Supplier(quanyi_supplier::SupplierError::BadSignature) => "bad_signature",
            Error::Supplier(_) => "supplier_error",
            Error::UnknownRequest => "unknown_request",
            Error::CallbackAmountMismatch { .. } => "callback_amount_mismatch",
            Error::Gateway(crate::GatewayError::Declined { .. }) => "refund_declined",
            Error::Gateway(_) => "gateway_unavailable",
            Error::Goods(e) => e.code(),
            Error::Order(e) => e.code(),
            Error::Pricing(e) => e.code(),
            Error::UnknownPromotionCode(_) => "unknown_promotion_code",
            Error::CouponUnavailable { .. } => "coupon_unavailable",
            Error::PromotionNotApplied { .. } => "promotion_not_applied",
            Error::Money(MoneyError::Overflow) => "amount_overflow",
            Error::Money(_) => "invalid_amount",
            Error::Vault(quanyi_vault::Error::WrongRootKey) => "wrong_root_key",
            Error::Vault(e) => match e.kind() {
                ErrorKind::Unavailable => "vault_unavailable",
                ErrorKind::Invalid => "invalid_card_key",
                _ => "vault_error",
            },
            Error::Storage(e) => match e.kind() {
                ErrorKind::Conflict => "conflict",
                ErrorKind::NotFound => "not_found",
                ErrorKind::Unavailable => "storage_unavailable",
                _ => "storage_error",
            },
        }
    }

    /// The driver-neutral kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::UnknownSku(_) | Error::UnknownOrder(_) | Error::UnknownGoods(_) => {
                ErrorKind::NotFound
            }
            Error::OutOfStock { .. } | Error::MemberLimitExceeded { .. } => ErrorKind::Exhausted,
            Error::RevealDenied => ErrorKind::Forbidden,
            Error::NotPayable { .. } => ErrorKind::Conflict,
            Error::NoPaymentGateway => ErrorKind::Unavailable,
            Error::Link(_) => ErrorKind::Forbidden,
            Error::UnknownSupplier(_) | Error::UnknownRequest => ErrorKind::NotFound,
            Error::Supplier(e) => e.kind(),
            Error::CallbackAmountMismatch { .. } => ErrorKind::Invalid,
            Error::Gateway(e) => e.kind(),
            Error::Goods(e) => e.kind(),
            Error::Order(e) => e.kind(),
            Error::Pricing(e) => e.kind(),
            Error::UnknownPromotionCode(_) => ErrorKind::NotFound,
            Error::CouponUnavailable { .. } => ErrorKind::Conflict,
            Error::PromotionNotApplied { .. } => ErrorKind::Conflict,
            Error::Money(e) => e.kind(),
            Error::Vault(e) => e.kind(),
            Error::Storage(e) => e.kind(),
            Error::IdempotencyConflict { .. } => ErrorKind::Conflict,
            Error::CheckoutDenied { .. } => ErrorKind::Forbidden,
            Error::EmptyCart
            | Error::InvalidQuantity(_)
            | Error::CartTooLarge { .. }
            | Error::CurrencyMismatch { .. }
            | Error::AmountMismatch { .. }
            | Error::NotFulfillable { .. }
            | Error::NotVaultStocked(_)
            | Error::ImportRejected { .. }
            | Error::InvalidInput(_) => ErrorKind::Invalid,
        }
    }
}

/// Result of a shop operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;
