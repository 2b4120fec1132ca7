//! The order crate's error type.

use chrono::{DateTime, Utc};
use quanyi_core::{CardId, Currency, ErrorKind, Money, MoneyError};

use crate::{LineStatus, OrderStatus, Trigger};

/// Why an order command was refused. A refused command leaves the order unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The state machine has no such transition.
    #[error("illegal transition: {trigger} from {from}")]
    IllegalTransition {
        /// The current status.
        from: OrderStatus,
        /// The trigger refused.
        trigger: Trigger,
    },
    /// The command needs another status (line commands).
    #[error("order is {status}, expected {expected}")]
    WrongStatus {
        /// The current status.
        status: OrderStatus,
        /// The status the command needs.
        expected: OrderStatus,
    },
    /// An order has 1 to [`crate::MAX_LINES`] lines.
    #[error("invalid line count {count}")]
    InvalidLineCount {
        /// How many lines were given.
        count: usize,
    },
    /// A line's quantity is zero.
    #[error("invalid quantity on line {line}")]
    InvalidQuantity {
        /// The line number (1-based).
        line: u16,
    },
    /// A line's title, account or price is not acceptable.
    #[error("invalid line {line}: {reason}")]
    InvalidLine {
        /// The line number (1-based).
        line: u16,
        /// What is wrong.
        reason: &'static str,
    },
    /// Amounts in different currencies met.
    #[error("currency mismatch: expected {expected}, got {got}")]
    CurrencyMismatch {
        /// The order's currency.
        expected: Currency,
        /// The currency given.
        got: Currency,
    },
    /// An amount does not fit in 64-bit minor units.
    #[error("amount overflow")]
    AmountOverflow,
    /// Another money error.
    #[error("money: {0}")]
    Money(#[source] MoneyError),
    /// `expires_at` is not after `now`.
    #[error("expiry must be after the time of placing")]
    InvalidExpiry,
    /// A checkout decision's stage name or reasons are malformed.
    #[error("invalid checkout decision: {part}")]
    InvalidDecision {
        /// `stage` or `reasons`.
        part: &'static str,
    },
    /// A part of the order context is too long or holds control characters.
    #[error("invalid order context: {part}")]
    InvalidContext {
        /// The part: `channel`, `device_id`, `user_agent`, `referral` or `attributes`.
        part: &'static str,
    },
    /// The payment window closed.
    #[error("order expired at {expires_at}")]
    Expired {
        /// When the window closed.
        expires_at: DateTime<Utc>,
    },
    /// The payment window is still open.
    #[error("order does not expire before {expires_at}")]
    NotYetExpired {
        /// When the window closes.
        expires_at: DateTime<Utc>,
    },
    /// The paid amount differs from the order total.
    #[error("amount mismatch: expected {expected}, got {got}")]
    AmountMismatch {
        /// The order total.
        expected: Money,
        /// The amount paid.
        got: Money,
    },
    /// The payment's provider or transaction id is empty, too long or holds control characters.
    #[error("invalid payment: {reason}")]
    InvalidPayment {
        /// What is wrong.
        reason: &'static str,
    },
    /// No line has this number.
    #[error("unknown line {line}")]
    UnknownLine {
        /// The line number asked for.
        line: u16,
    },
    /// The line is not pending.
    #[error("line {line} is {status:?}, not pending")]
    LineNotPending {
        /// The line number.
        line: u16,
        /// Its status.
        status: LineStatus,
    },
    /// The line is not held for an operator.
    #[error("line {line} is {status:?}, not held")]
    LineNotHeld {
        /// The line number.
        line: u16,
        /// Its status.
        status: LineStatus,
    },
    /// The line has not failed, so there is nothing to refund on it.
    #[error("line {line} is {status:?}, not failed")]
    LineNotFailed {
        /// The line number.
        line: u16,
        /// Its status.
        status: LineStatus,
    },
    /// A delivery must cover the line's whole quantity.
    #[error("quantity mismatch on line {line}: expected {expected}, got {got}")]
    QuantityMismatch {
        /// The line number.
        line: u16,
        /// The line's quantity.
        expected: u32,
        /// The quantity delivered.
        got: u32,
    },
    /// A card-key line is delivered with one card per unit.
    #[error("card count mismatch on line {line}: expected {expected}, got {got}")]
    CardCountMismatch {
        /// The line number.
        line: u16,
        /// The line's quantity.
        expected: u32,
        /// The number of cards given.
        got: usize,
    },
    /// A card is already delivered on this order (or given twice).
    #[error("card {card} delivered twice")]
    DuplicateCard {
        /// The card.
        card: CardId,
    },
    /// Fulfilment cannot finish while lines are pending.
    #[error("{pending} lines still pending")]
    LinesPending {
        /// How many lines are pending.
        pending: usize,
    },
    /// The version counter is exhausted (corrupted data).
    #[error("version overflow")]
    VersionOverflow,
    /// A line cannot be refunded after sales: it is not delivered (failed lines are paid back
    /// when delivery gives up; pending and held ones are still being decided), or it is
    /// refunded already.
    #[error("line {line} cannot be refunded: {reason}")]
    NotRefundable {
        /// The line number.
        line: u16,
        /// Why.
        reason: &'static str,
    },
    /// An open refund (requested, or approved and not yet paid) already holds the line.
    #[error("line {line} is held by open refund {refund}")]
    RefundOpen {
        /// The line number.
        line: u16,
        /// The open refund's number.
        refund: u16,
    },
    /// The amount asked is more than is left of the line's share, or not positive.
    #[error("refund of {asked} for line {line} is more than the {left} left or not positive")]
    RefundAmount {
        /// The line number.
        line: u16,
        /// What was asked.
        asked: Money,
        /// What is left of the line's share.
        left: Money,
    },
    /// The line's rule needs an operator's override with a reason (revealed keys, completed
    /// top-ups, part of a share), and none was given.
    #[error("refund of line {line} needs an operator's override")]
    NeedsOverride {
        /// The line number.
        line: u16,
    },
    /// The refund asked for names no line, names one twice, or has a reason that is empty,
    /// longer than `MAX_REASON_CHARS` or not printable; or a buyer asked for an override.
    #[error("invalid refund: {reason}")]
    InvalidRefund {
        /// What is wrong.
        reason: &'static str,
    },
    /// No refund with that number on the order.
    #[error("unknown refund {refund}")]
    UnknownRefund {
        /// The number.
        refund: u16,
    },
    /// The refund is not in the status the command needs.
    #[error("refund {refund} is {status}, not {expected}")]
    RefundStatus {
        /// The refund.
        refund: u16,
        /// Where it is.
        status: &'static str,
        /// Where it should be.
        expected: &'static str,
    },
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<MoneyError> for Error {
    fn from(e: MoneyError) -> Self {
        match e {
            MoneyError::Overflow => Error::AmountOverflow,
            MoneyError::CurrencyMismatch { left, right } => Error::CurrencyMismatch {
                expected: left,
                got: right,
            },
            other => Error::Money(other),
        }
    }
}

impl Error {
    /// The driver-neutral kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::IllegalTransition { .. }
            | Error::WrongStatus { .. }
            | Error::NotYetExpired { .. }
            | Error::LineNotPending { .. }
            | Error::LineNotHeld { .. }
            | Error::LineNotFailed { .. }
            | Error::DuplicateCard { .. }
            | Error::LinesPending { .. }
            | Error::NotRefundable { .. }
            | Error::RefundOpen { .. }
            | Error::RefundStatus { .. } => ErrorKind::Conflict,
            Error::NeedsOverride { .. } => ErrorKind::Forbidden,
            Error::UnknownLine { .. } | Error::UnknownRefund { .. } => ErrorKind::NotFound,
            Error::VersionOverflow => ErrorKind::Internal,
            _ => ErrorKind::Invalid,
        }
    }

    /// A stable snake_case code for UIs and APIs.
    pub fn code(&self) -> &'static str {
        match self {
            Error::IllegalTransition { .. } => "illegal_transition",
            Error::WrongStatus { .. } => "wrong_status",
            Error::InvalidLineCount { .. } => "invalid_line_count",
            Error::InvalidQuantity { .. } => "invalid_quantity",
            Error::InvalidLine { .. } => "invalid_line",
            Error::CurrencyMismatch { .. } => "currency_mismatch",
            Error::AmountOverflow => "amount_overflow",
            Error::Money(_) => "invalid_amount",
            Error::InvalidExpiry => "invalid_expiry",
            Error::InvalidContext { .. } => "invalid_context",
            Error::InvalidDecision { .. } => "invalid_decision",
            Error::Expired { .. } => "order_expired",
            Error::NotYetExpired { .. } => "not_yet_expired",
            Error::AmountMismatch { .. } => "amount_mismatch",
            Error::InvalidPayment { .. } => "invalid_payment",
            Error::UnknownLine { .. } => "unknown_line",
            Error::LineNotPending { .. } => "line_not_pending",
            Error::LineNotHeld { .. } => "line_not_held",
            Error::LineNotFailed { .. } => "line_not_failed",
            Error::QuantityMismatch { .. } => "quantity_mismatch",
            Error::CardCountMismatch { .. } => "card_count_mismatch",
            Error::DuplicateCard { .. } => "duplicate_card",
            Error::LinesPending { .. } => "lines_pending",
            Error::VersionOverflow => "version_overflow",
            Error::NotRefundable { .. } => "not_refundable",
            Error::RefundOpen { .. } => "refund_open",
            Error::RefundAmount { .. } => "refund_amount",
            Error::NeedsOverride { .. } => "refund_needs_override",
            Error::InvalidRefund { .. } => "invalid_refund",
            Error::UnknownRefund { .. } => "unknown_refund",
            Error::RefundStatus { .. } => "refund_status",
        }
    }
}
