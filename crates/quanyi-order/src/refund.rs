//! After-sales refunds (售后): what a buyer asks for and an operator decides, line by line.
//!
//! A refund names lines of a delivered order and, per line, an amount up to what is left of
//! the line's share of the payment (a benefit pack's components are lines with their allocated
//! share). What a refund may do without a person deciding is the line's [`RefundRule`]; a
//! refund that needs a decision waits as [`RefundStatus::Requested`] until an operator approves
//! or rejects it. An approved refund is paid through the payment gateway under its own refund
//! id ([`Refund::refund_id`]) and then marked paid; a line whose whole share was paid back is
//! refunded, and an order whose every line is refunded is refunded.

use chrono::{DateTime, Utc};
use quanyi_core::{Actor, CardId, Money, OrderId};
use serde::{Deserialize, Serialize};

use crate::{LineStatus, OrderLine};

/// Who asked for a refund.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum Asker {
    /// The buyer (the order's member).
    Buyer,
    /// An operator.
    Operator {
        /// Who, in which role.
        actor: Actor,
    },
}

impl Asker {
    /// `buyer`, or the operator as `role:name`.
    pub fn name(&self) -> String {
        match self {
            Asker::Buyer => "buyer".to_owned(),
            Asker::Operator { actor } => actor.to_string(),
        }
    }
}

/// Where a refund is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefundStatus {
    /// Waits for an operator's decision until its deadline ([`Refund::due`]).
    Requested,
    /// Decided: to be paid through the payment gateway.
    Approved,
    /// Refused by an operator; its lines may be asked for again.
    Rejected,
    /// Paid back.
    Paid,
}

impl RefundStatus {
    /// A stable snake_case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            RefundStatus::Requested => "requested",
            RefundStatus::Approved => "approved",
            RefundStatus::Rejected => "rejected",
            RefundStatus::Paid => "paid",
        }
    }

    /// True while the refund holds its lines: requested or approved and not yet paid.
    pub const fn is_open(self) -> bool {
        matches!(self, RefundStatus::Requested | RefundStatus::Approved)
    }
}

/// One line of a refund and the amount it pays back for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundLine {
    /// The order line.
    pub line: u16,
    /// What is paid back for it.
    pub amount: Money,
}

/// An operator's decision on a refund.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundDecision {
    /// Who decided; `None` when the line's rule approved it without a person (unrevealed card
    /// keys voided).
    pub actor: Option<Actor>,
    /// Why.
    pub reason: String,
    /// When.
    pub at: DateTime<Utc>,
    /// True when an operator overrode a line's rule (revealed keys, completed top-ups, part of
    /// a line's share).
    pub overridden: bool,
}

/// An after-sales refund of lines of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refund {
    /// Its number on the order, from 1.
    pub no: u16,
    /// The lines and what each pays back.
    pub lines: Vec<RefundLine>,
    /// The sum of the lines' amounts.
    pub amount: Money,
    /// Why it was asked for.
    pub reason: String,
    /// Who asked.
    pub asked_by: Asker,
    /// When.
    pub asked_at: DateTime<Utc>,
    /// Where it is.
    pub status: RefundStatus,
    /// Until when an operator should decide a requested refund.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due: Option<DateTime<Utc>>,
    /// The decision, once approved or rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<RefundDecision>,
    /// The card keys voided by it (never revealed, never sold again).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub voided: Vec<CardId>,
    /// The payment provider's id of the refund, once paid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<String>,
    /// When it was paid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paid_at: Option<DateTime<Utc>>,
}

impl Refund {
    /// The id the payment gateway receives for it, stable across retries: `<order>-R<no>`.
    pub fn refund_id(&self, order: OrderId) -> String {
        format!("{order}-R{}", self.no)
    }

    /// The amount it pays back for `line` (zero when it does not name the line).
    pub fn amount_for(&self, line: u16) -> Option<Money> {
        self.lines.iter().find(|l| l.line == line).map(|l| l.amount)
    }
}

/// What refunding a line needs, by its kind and state. The membership domain adds its kinds'
/// rules here (taking back what a membership granted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundRule {
    /// Its card keys were never revealed: they are voided (never sold again) and the line is
    /// refunded at once, in the same write.
    VoidAndRefund,
    /// Only an operator's override with a reason: revealed card keys, completed top-ups,
    /// granted memberships, lines without codes to take back, or part of a line's share.
    Override,
}

/// The rule for refunding `amount` of a delivered line whose cards are `revealed` (any of
/// them opened by the buyer) and of which `left` is not yet refunded.
pub fn refund_rule(line: &OrderLine, revealed: bool, amount: Money, left: Money) -> RefundRule {
    let whole = amount == left && left == line.amount;
    if line.status == LineStatus::Delivered && !line.cards.is_empty() && !revealed && whole {
        RefundRule::VoidAndRefund
    } else {
        RefundRule::Override
    }
}

/// A refund asked of an order: [`Order::ask_refund`](crate::Order::ask_refund).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundAsk {
    /// The lines, each with the amount to pay back (`None`: what is left of its share).
    pub lines: Vec<(u16, Option<Money>)>,
    /// Why (1 to [`MAX_REASON_CHARS`](crate::MAX_REASON_CHARS) printable characters).
    pub reason: String,
    /// Who asks.
    pub asked_by: Asker,
    /// An operator's override of the lines' rules (revealed keys, completed top-ups, part of a
    /// share); refused for a buyer.
    pub override_rules: bool,
    /// Until when an operator should decide, should the refund need a decision.
    pub due: DateTime<Utc>,
}
