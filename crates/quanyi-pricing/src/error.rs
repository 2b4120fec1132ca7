//! Why a quote or a rule is refused.

use quanyi_core::{ErrorKind, MoneyError};

/// Why the engine refused rules or a cart. Nothing is priced on any error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PricingError {
    /// A price list or promotion is malformed; names the rule and the field.
    #[error("rule {rule}: {field} {reason}")]
    InvalidRule {
        /// The list's or promotion's id.
        rule: String,
        /// The field.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// A rules file does not parse (JSON or TOML); names the place.
    #[error("rules file, line {line}, column {column}: {reason}")]
    InvalidFile {
        /// The line.
        line: usize,
        /// The column.
        column: usize,
        /// What is wrong.
        reason: String,
    },
    /// The cart is malformed (empty, a zero quantity, a negative price).
    #[error("invalid cart: {reason}")]
    InvalidCart {
        /// What is wrong.
        reason: String,
    },
    /// An amount is in another currency than the rules'.
    #[error("currency mismatch: expected {expected}, got {got}")]
    CurrencyMismatch {
        /// The rules' currency.
        expected: String,
        /// The one found.
        got: String,
    },
    /// An amount does not fit.
    #[error("amount overflow")]
    Overflow,
}

impl From<MoneyError> for PricingError {
    fn from(e: MoneyError) -> Self {
        match e {
            MoneyError::CurrencyMismatch { left, right } => PricingError::CurrencyMismatch {
                expected: left.code().to_owned(),
                got: right.code().to_owned(),
            },
            _ => PricingError::Overflow,
        }
    }
}

impl PricingError {
    /// The driver-neutral kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            PricingError::Overflow => ErrorKind::Internal,
            _ => ErrorKind::Invalid,
        }
    }

    /// A stable snake_case code.
    pub fn code(&self) -> &'static str {
        match self {
            PricingError::InvalidRule { .. } => "invalid_rule",
            PricingError::InvalidFile { .. } => "invalid_rules_file",
            PricingError::InvalidCart { .. } => "invalid_cart",
            PricingError::CurrencyMismatch { .. } => "currency_mismatch",
            PricingError::Overflow => "amount_overflow",
        }
    }
}
