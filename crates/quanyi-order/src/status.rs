//! The order state machine: one pure transition table.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Where an order is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Placed, waiting for the payment notice.
    AwaitingPayment,
    /// Paid, fulfilment not started.
    Paid,
    /// Lines are being delivered.
    Fulfilling,
    /// Every line was delivered.
    Delivered,
    /// Some lines were delivered; the failed ones are refunded line by line.
    PartiallyDelivered,
    /// Not paid in time.
    Expired,
    /// Cancelled before payment.
    Cancelled,
    /// A refund was asked for and is under way.
    RefundPending,
    /// The refund is done.
    Refunded,
}

impl OrderStatus {
    /// Every status.
    pub const ALL: [OrderStatus; 9] = [
        OrderStatus::AwaitingPayment,
        OrderStatus::Paid,
        OrderStatus::Fulfilling,
        OrderStatus::Delivered,
        OrderStatus::PartiallyDelivered,
        OrderStatus::Expired,
        OrderStatus::Cancelled,
        OrderStatus::RefundPending,
        OrderStatus::Refunded,
    ];

    /// The statuses of orders never paid: they never count toward per-member limits.
    pub const NEVER_PAID: [OrderStatus; 2] = [OrderStatus::Expired, OrderStatus::Cancelled];

    /// Whether an order in this status counts toward a per-member limit: every order but
    /// those [never paid](OrderStatus::NEVER_PAID), and but refunded ones when the limit
    /// releases units on refund (`PurchaseLimits::release_on_refund`).
    pub fn counts_toward_limit(self, release_on_refund: bool) -> bool {
        !OrderStatus::uncounted(release_on_refund).contains(&self)
    }

    /// The statuses a per-member limit leaves out, as a store filters them, always three (a
    /// limit that keeps refunded orders names a never-paid status twice) so one statement
    /// serves both kinds of limit.
    pub const fn uncounted(release_on_refund: bool) -> [OrderStatus; 3] {
        let [expired, cancelled] = OrderStatus::NEVER_PAID;
        if release_on_refund {
            [expired, cancelled, OrderStatus::Refunded]
        } else {
            [expired, cancelled, cancelled]
        }
    }

    /// A stable snake_case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            OrderStatus::AwaitingPayment => "awaiting_payment",
            OrderStatus::Paid => "paid",
            OrderStatus::Fulfilling => "fulfilling",
            OrderStatus::Delivered => "delivered",
            OrderStatus::PartiallyDelivered => "partially_delivered",
            OrderStatus::Expired => "expired",
            OrderStatus::Cancelled => "cancelled",
            OrderStatus::RefundPending => "refund_pending",
            OrderStatus::Refunded => "refunded",
        }
    }

    /// True when no trigger leads anywhere from here (expired, cancelled, refunded).
    /// Delivered orders are not terminal: they may still be refunded.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            OrderStatus::Expired | OrderStatus::Cancelled | OrderStatus::Refunded
        )
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What asks an order to change status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// The payment notice arrived.
    Pay,
    /// Fulfilment jobs were started.
    StartFulfilment,
    /// Every line was delivered.
    DeliverAll,
    /// Some lines were delivered, the rest failed.
    DeliverPart,
    /// The payment window closed.
    Expire,
    /// The buyer or the shop cancelled before payment.
    Cancel,
    /// A refund was asked for.
    RequestRefund,
    /// The payment provider confirmed the refund.
    CompleteRefund,
}

impl Trigger {
    /// Every trigger.
    pub const ALL: [Trigger; 8] = [
        Trigger::Pay,
        Trigger::StartFulfilment,
        Trigger::DeliverAll,
        Trigger::DeliverPart,
        Trigger::Expire,
        Trigger::Cancel,
        Trigger::RequestRefund,
        Trigger::CompleteRefund,
    ];

    /// A stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Pay => "pay",
            Trigger::StartFulfilment => "start_fulfilment",
            Trigger::DeliverAll => "deliver_all",
            Trigger::DeliverPart => "deliver_part",
            Trigger::Expire => "expire",
            Trigger::Cancel => "cancel",
            Trigger::RequestRefund => "request_refund",
            Trigger::CompleteRefund => "complete_refund",
        }
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The order state machine: the status `trigger` leads to from `from`.
///
/// ```
/// use quanyi_order::{OrderStatus, Trigger, next_status};
///
/// assert_eq!(next_status(OrderStatus::AwaitingPayment, Trigger::Pay)?, OrderStatus::Paid);
/// assert!(next_status(OrderStatus::Expired, Trigger::Pay).is_err());
/// # Ok::<(), quanyi_order::Error>(())
/// ```
///
/// # Errors
/// [`Error::IllegalTransition`] for every pair not in the table.
pub fn next_status(from: OrderStatus, trigger: Trigger) -> Result<OrderStatus> {
    use OrderStatus as S;
    use Trigger as T;
    match (from, trigger) {
        (S::AwaitingPayment, T::Pay) => Ok(S::Paid),
        (S::AwaitingPayment, T::Expire) => Ok(S::Expired),
        (S::AwaitingPayment, T::Cancel) => Ok(S::Cancelled),
        (S::Paid, T::StartFulfilment) => Ok(S::Fulfilling),
        (S::Fulfilling, T::DeliverAll) => Ok(S::Delivered),
        (S::Fulfilling, T::DeliverPart) => Ok(S::PartiallyDelivered),
        (S::Paid | S::Fulfilling | S::Delivered | S::PartiallyDelivered, T::RequestRefund) => {
            Ok(S::RefundPending)
        }
        // After sales: the last line of a delivered order paid back.
        (S::RefundPending | S::Delivered | S::PartiallyDelivered, T::CompleteRefund) => {
            Ok(S::Refunded)
        }
        _ => Err(Error::IllegalTransition { from, trigger }),
    }
}
