#![doc = include_str!("../README.md")]
#![deny(clippy::float_arithmetic)]

mod checkout;
mod context;
mod error;
mod event;
mod legacy;
mod line;
mod order;
mod refund;
mod status;

pub use checkout::{
    ALLOW_ALL_STAGE, Decision, MAX_DECISION_REASONS, MAX_DECISION_TEXT, PriceAdjustment,
    PriceSource, Verdict,
};
pub use context::{
    Channel, MAX_ATTRIBUTE_NAME, MAX_ATTRIBUTE_VALUE_CHARS, MAX_CONTEXT_ATTRIBUTES,
    MAX_CONTEXT_TEXT_CHARS, OrderContext,
};
pub use error::{Error, Result};
pub use event::OrderEvent;
pub use legacy::complete_terms;
pub use line::{AttemptOutcome, LineAttempt, LineStatus, NewLine, OrderLine, PackTerms};
pub use order::{MAX_LINES, MAX_REASON_CHARS, MAX_TITLE_CHARS, Order, Payment};
pub use refund::{
    Asker, Refund, RefundAsk, RefundDecision, RefundLine, RefundRule, RefundStatus, refund_rule,
};
pub use status::{OrderStatus, Trigger, next_status};

#[cfg(test)]
mod tests;
