//! Events the order aggregate emits.

use std::sync::{Arc, LazyLock};

use quanyi_core::{CardId, DomainEvent, MemberId, Money, OrderId, Payload, SupplierId};
use serde::{Deserialize, Serialize};

/// What happened to an order. Events carry card ids, never card key text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OrderEvent {
    /// The order was placed.
    Placed {
        /// The order.
        order: OrderId,
        /// The buyer.
        member: MemberId,
        /// The total to pay.
        total: Money,
        /// Number of lines.
        lines: u16,
    },
    /// The payment was confirmed.
    Paid {
        /// The order.
        order: OrderId,
        /// The payment provider.
        provider: Arc<str>,
        /// The provider's transaction id.
        transaction_id: Arc<str>,
        /// The amount paid.
        amount: Money,
    },
    /// Fulfilment started.
    FulfilmentStarted,
    /// A line was delivered.
    LineDelivered {
        /// The line number.
        line: u16,
        /// Units delivered.
        quantity: u32,
        /// The vault cards committed to the line (ids only).
        cards: Vec<CardId>,
    },
    /// A membership line was delivered by granting its entitlement.
    EntitlementGranted {
        /// The line number.
        line: u16,
        /// The member.
        member: MemberId,
        /// The plan.
        plan: String,
        /// Days per unit.
        days: u32,
        /// Units.
        quantity: u32,
    },
    /// A supplier was called, or answered, for a line.
    LineAttempted {
        /// The line number.
        line: u16,
        /// The supplier.
        supplier: SupplierId,
        /// pending, succeeded, definite or unknown.
        outcome: String,
    },
    /// A line could not be delivered.
    LineFailed {
        /// The line number.
        line: u16,
        /// Why.
        reason: String,
    },
    /// A line was set aside for an operator to decide (delivered or failed).
    LineHeld {
        /// The line number.
        line: u16,
        /// Why.
        reason: String,
    },
    /// A failed line was refunded.
    LineRefunded {
        /// The line number.
        line: u16,
        /// The line's amount.
        amount: Money,
    },
    /// Every line was delivered.
    Delivered,
    /// Some lines were delivered; `refund` is owed for the failed ones.
    PartiallyDelivered {
        /// The sum of the failed lines' amounts.
        refund: Money,
    },
    /// The payment window closed.
    Expired,
    /// The order was cancelled before payment.
    Cancelled {
        /// Why.
        reason: String,
    },
    /// A refund was asked for.
    RefundRequested {
        /// The amount to refund.
        amount: Money,
        /// Why.
        reason: String,
    },
    /// The refund completed.
    Refunded {
        /// The amount refunded.
        amount: Money,
    },
    /// An after-sales refund was asked for (by the buyer or an operator).
    RefundOpened {
        /// The refund's number on the order.
        refund: u16,
        /// The lines it names.
        lines: Vec<u16>,
        /// What it pays back.
        amount: Money,
        /// Why.
        reason: String,
        /// `buyer` or the operator (`role:name`).
        by: String,
        /// True when it waits for an operator's decision.
        needs_decision: bool,
    },
    /// An after-sales refund was approved, by an operator or by its lines' rule.
    RefundApproved {
        /// The refund.
        refund: u16,
        /// The operator (`role:name`), or `policy` when the lines' rule approved it.
        by: String,
        /// True when an operator overrode a line's rule.
        overridden: bool,
    },
    /// An after-sales refund was rejected by an operator.
    RefundRejected {
        /// The refund.
        refund: u16,
        /// The operator (`role:name`).
        by: String,
        /// Why.
        reason: String,
    },
    /// Card keys of a refunded line were voided: never revealed, never sold again.
    CardsVoided {
        /// The refund.
        refund: u16,
        /// The line.
        line: u16,
        /// The cards (ids only).
        cards: Vec<CardId>,
    },
    /// An after-sales refund was paid back through the payment gateway.
    RefundPaid {
        /// The refund.
        refund: u16,
        /// What was paid back.
        amount: Money,
        /// The payment provider's id of the refund.
        receipt: String,
    },
}

impl DomainEvent for OrderEvent {
    fn name(&self) -> &'static str {
        match self {
            OrderEvent::Placed { .. } => "order.placed",
            OrderEvent::Paid { .. } => "order.paid",
            OrderEvent::FulfilmentStarted => "order.fulfilment_started",
            OrderEvent::LineDelivered { .. } => "order.line_delivered",
            OrderEvent::LineAttempted { .. } => "order.line_attempted",
            OrderEvent::EntitlementGranted { .. } => "order.entitlement_granted",
            OrderEvent::LineFailed { .. } => "order.line_failed",
            OrderEvent::LineHeld { .. } => "order.line_held",
            OrderEvent::LineRefunded { .. } => "order.line_refunded",
            OrderEvent::Delivered => "order.delivered",
            OrderEvent::PartiallyDelivered { .. } => "order.partially_delivered",
            OrderEvent::Expired => "order.expired",
            OrderEvent::Cancelled { .. } => "order.cancelled",
            OrderEvent::RefundRequested { .. } => "order.refund_requested",
            OrderEvent::Refunded { .. } => "order.refunded",
            OrderEvent::RefundOpened { .. } => "order.refund_opened",
            OrderEvent::RefundApproved { .. } => "order.refund_approved",
            OrderEvent::RefundRejected { .. } => "order.refund_rejected",
            OrderEvent::CardsVoided { .. } => "order.cards_voided",
            OrderEvent::RefundPaid { .. } => "order.refund_paid",
        }
    }

    fn shared_payload(&self) -> Option<Payload> {
        /// The bodies of the kinds without fields, written once per process.
        static BODIES: LazyLock<Option<[Payload; 3]>> = LazyLock::new(|| {
            Some([
                Payload::of(&OrderEvent::FulfilmentStarted).ok()?,
                Payload::of(&OrderEvent::Delivered).ok()?,
                Payload::of(&OrderEvent::Expired).ok()?,
            ])
        });
        let i = match self {
            OrderEvent::FulfilmentStarted => 0,
            OrderEvent::Delivered => 1,
            OrderEvent::Expired => 2,
            _ => return None,
        };
        BODIES.as_ref().and_then(|bodies| bodies.get(i)).cloned()
    }
}
