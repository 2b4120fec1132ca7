//! After-sales refunds (售后) through `shop.orders()`: a buyer's request, an operator's refund,
//! the operators' queue and its decisions, and paying approved refunds through the gateway.
//!
//! What a refund may do without a person is each line's [`RefundRule`](quanyi_order::RefundRule):
//! card keys never revealed are voided in the same write as the refund's approval (a reveal
//! marks each card first and never opens a voided one, so a buyer gets the key or the money,
//! never both); revealed keys, completed top-ups and granted memberships need an operator's
//! override with a reason. A buyer's request that needs one waits in the queue until
//! [`ShopBuilder::refund_review`](crate::ShopBuilder::refund_review) after it was asked (then it
//! is listed overdue; it is never decided by the clock).

use std::collections::HashSet;

use quanyi_core::{Actor, ErrorKind, MemberId, Money, OrderId};
use quanyi_order::{Asker, Order, Refund, RefundAsk, RefundStatus};
use quanyi_storage::{AuditAction, AuditOutcome, OrderChange, PaidRefund, RefundWrite};

use crate::payments::RefundRequest;
use crate::{Error, Orders, Result};

mod ledger;

pub use ledger::{QueuedRefund, RefundQueuePage, RefundReport, RefundTotal};

/// How often a refund command reads the order again after losing a race to another writer.
const ATTEMPTS: usize = 10;

/// Default time an operator has to decide a buyer's refund request.
pub const DEFAULT_REFUND_REVIEW_HOURS: i64 = 72;

/// One line of an operator's refund and the amount to pay back for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefundPart {
    /// The order line (a benefit pack's component is a line with its share of the price).
    pub line: u16,
    /// What to pay back; `None`: what is left of the line's share.
    pub amount: Option<Money>,
}

impl RefundPart {
    /// What is left of the line's share.
    pub fn whole(line: u16) -> RefundPart {
        RefundPart { line, amount: None }
    }

    /// Part of the line's share (an operator's override: the line's codes are not voided).
    pub fn partial(line: u16, amount: Money) -> RefundPart {
        RefundPart {
            line,
            amount: Some(amount),
        }
    }
}

/// Who runs a refund command, and how its change is written.
enum By<'a> {
    Buyer(&'a MemberId),
    Operator(&'a Actor),
}

impl Orders<'_> {
    /// A buyer asks for the money back for lines of a delivered order (`lines` empty: every
    /// line that can still be refunded), with a reason. Lines whose card keys were never
    /// revealed are refunded at once and their keys voided; a request that needs a decision
    /// (revealed keys, completed top-ups, granted memberships) waits for an operator. Asking
    /// again for the same lines answers the refund already asked for, once, however many
    /// requests race. Answers the refund as it stands after (paid when the gateway answered).
    ///
    /// # Errors
    /// [`Error::UnknownOrder`] (also for another member's order); [`Error::Order`]
    /// (`wrong_status`, `not_refundable`, `refund_open` for lines another refund holds,
    /// `invalid_refund`, `unknown_line`); [`Error::NoPaymentGateway`], [`Error::Gateway`]
    /// (the refund stays approved and is paid by the `pay_refunds` sweep or a repeat);
    /// [`Error::Storage`].
    pub async fn request_refund(
        &self,
        member: &MemberId,
        order: OrderId,
        lines: &[u16],
        reason: &str,
    ) -> Result<Refund> {
        let parts: Vec<RefundPart> = lines.iter().map(|l| RefundPart::whole(*l)).collect();
        self.open_refund(By::Buyer(member), order, parts, reason, false)
            .await
    }

    /// An operator refunds lines of a delivered order, each for what is left of its share or
    /// a part of it, with a reason. Without `override_rules` only lines whose rule refunds at
    /// once may be named (unrevealed keys, voided); with it any delivered line (revealed keys,
    /// completed top-ups, part of a share). The refund and its audit record
    /// (`refund_issued`) are one write; the money is paid back through the gateway at once.
    ///
    /// # Errors
    /// As [`request_refund`](Orders::request_refund), and [`Error::Order`]
    /// (`refund_needs_override`, `refund_amount` for more than is left of a line's share).
    pub async fn refund(
        &self,
        actor: &Actor,
        order: OrderId,
        parts: &[RefundPart],
        reason: &str,
        override_rules: bool,
    ) -> Result<Refund> {
        self.open_refund(
            By::Operator(actor),
            order,
            parts.to_vec(),
            reason,
            override_rules,
        )
        .await
    }

    /// An operator approves a requested refund with a reason: keys still unrevealed are voided,
    /// the rest is an override; the decision and its audit record (`refund_approved`) are one
    /// write, and the money is paid back at once.
    ///
    /// # Errors
    /// [`Error::UnknownOrder`]; [`Error::Order`] (`unknown_refund`, `refund_status` unless
    /// requested, `invalid_refund`); as [`request_refund`](Orders::request_refund) for the
    /// payment.
    pub async fn approve_refund(
        &self,
        actor: &Actor,
        order: OrderId,
        refund: u16,
        reason: &str,
    ) -> Result<Refund> {
        self.decide(actor, order, refund, reason, true).await
    }

    /// An operator rejects a requested refund with a reason; the decision and its audit
    /// record (`refund_rejected`) are one write. The lines may be asked for again.
    ///
    /// # Errors
    /// As [`approve_refund`](Orders::approve_refund), without the payment.
    pub async fn reject_refund(
        &self,
        actor: &Actor,
        order: OrderId,
        refund: u16,
        reason: &str,
    ) -> Result<Refund> {
        self.decide(actor, order, refund, reason, false).await
    }

    /// Opens a refund: reads the order and its cards' reveals, lets the order decide, writes the
    /// refund with the cards it voids, and pays an approved one. A write that loses a race
    /// (the order changed, a card was revealed meanwhile) reads again and decides again.
    async fn open_refund(
        &self,
        by: By<'_>,
        id: OrderId,
        parts: Vec<RefundPart>,
        reason: &str,
        override_rules: bool,
    ) -> Result<Refund> {
        let shop = self.shop;
        let reason = reason.trim().to_owned();
        let asked_by = match by {
            By::Buyer(_) => Asker::Buyer,
            By::Operator(actor) => Asker::Operator {
                actor: actor.clone(),
            },
        };
        for _ in 0..ATTEMPTS {
            let mut order = shop.order(id).await?;
            if let By::Buyer(member) = by {
                if order.member() != member {
                    return Err(Error::UnknownOrder(id));
                }
            }
            let lines: Vec<(u16, Option<Money>)> = if parts.is_empty() {
                refundable_lines(&order)
            } else {
                parts.iter().map(|p| (p.line, p.amount)).collect()
            };
            // A repeat of a request for every line, once they are all asked for, answers the
            // latest refund the same asker asked for.
            let repeat = if parts.is_empty() && lines.is_empty() {
                order
                    .refunds()
                    .iter()
                    .rev()
                    .find(|r| r.status != RefundStatus::Rejected && r.asked_by == asked_by)
            } else {
                same_refund(&order, &lines, &asked_by)
            };
            if let Some(same) = repeat {
                let no = same.no;
                return self.settled(id, no, same.status).await;
            }
            let revealed = self.revealed_lines(&order).await?;
            let expected = order.version();
            let now = shop.now();
            let ask = RefundAsk {
                lines,
                reason: reason.clone(),
                asked_by: asked_by.clone(),
                override_rules,
                due: now + shop.inner.refund_review,
            };
            let (no, events) = order.ask_refund(ask, |l| revealed.contains(&l), now)?;
            let refund = refund_of(&order, no)?;
            let record = match by {
                By::Buyer(_) => None,
                By::Operator(actor) => Some(shop.audit_record(
                    &actor.to_string(),
                    AuditAction::RefundIssued,
                    id.to_string(),
                    AuditOutcome::Allowed,
                    refund_detail(&refund, override_rules),
                )),
            };
            let write = RefundWrite {
                void: &refund.voided,
                paid: None,
                audit: record.as_ref(),
            };
            match self.write(&order, expected, events, write).await {
                Ok(()) => return self.settled(id, no, refund.status).await,
                Err(e) if retry(&e) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(kept_changing(id, "kept changing during the refund"))
    }

    /// An operator's decision on a requested refund.
    async fn decide(
        &self,
        actor: &Actor,
        id: OrderId,
        no: u16,
        reason: &str,
        approve: bool,
    ) -> Result<Refund> {
        let shop = self.shop;
        let reason = reason.trim().to_owned();
        for _ in 0..ATTEMPTS {
            let mut order = shop.order(id).await?;
            let expected = order.version();
            let now = shop.now();
            let revealed = self.revealed_lines(&order).await?;
            let events = if approve {
                order.approve_refund(no, actor, reason.clone(), |l| revealed.contains(&l), now)?
            } else {
                order.reject_refund(no, actor, reason.clone(), now)?
            };
            let refund = refund_of(&order, no)?;
            let action = if approve {
                AuditAction::RefundApproved
            } else {
                AuditAction::RefundRejected
            };
            let detail = format!(
                "refund {no} of {}: {reason}",
                refund.amount.to_decimal().normalize()
            );
            let record = shop.audit_record(
                &actor.to_string(),
                action,
                id.to_string(),
                AuditOutcome::Allowed,
                detail,
            );
            let write = RefundWrite {
                void: &refund.voided,
                paid: None,
                audit: Some(&record),
            };
            match self.write(&order, expected, events, write).await {
                Ok(()) => return self.settled(id, no, refund.status).await,
                Err(e) if retry(&e) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(kept_changing(id, "kept changing during the decision"))
    }

    /// Pays an approved refund, or answers the refund as it stands.
    async fn settled(&self, id: OrderId, no: u16, status: RefundStatus) -> Result<Refund> {
        if status == RefundStatus::Approved {
            return self.pay(id, no).await;
        }
        refund_of(&self.shop.order(id).await?, no)
    }

    /// Pays an approved refund through the gateway under its stable refund id, then marks it
    /// paid. Repeating it is safe: the gateway receives the same refund id, and the mark is
    /// written once.
    async fn pay(&self, id: OrderId, no: u16) -> Result<Refund> {
        let shop = self.shop;
        for _ in 0..ATTEMPTS {
            let mut order = shop.order(id).await?;
            let refund = refund_of(&order, no)?;
            if refund.status != RefundStatus::Approved {
                return Ok(refund);
            }
            let gateway = shop.inner.gateway.as_ref().ok_or(Error::NoPaymentGateway)?;
            let payment = order
                .payment()
                .ok_or_else(|| Error::InvalidInput(format!("order {id} has no payment")))?;
            let receipt = gateway
                .refund(&RefundRequest {
                    refund_id: refund.refund_id(id),
                    order: id,
                    provider: payment.provider.to_string(),
                    transaction_id: payment.transaction_id.to_string(),
                    amount: refund.amount,
                    reason: refund.reason.clone(),
                })
                .await?;
            tracing::info!(order = %id, refund = no, receipt = %receipt.provider_refund_id, amount = %refund.amount, "refund paid");
            let expected = order.version();
            let now = shop.now();
            let paid = PaidRefund {
                tenant: shop.tenant.clone(),
                refund_id: refund.refund_id(id),
                order: id,
                provider: payment.provider.to_string(),
                transaction_id: payment.transaction_id.to_string(),
                amount: refund.amount,
                receipt: receipt.provider_refund_id.clone(),
                paid_at: now,
            };
            let events = order.refund_paid(no, receipt.provider_refund_id, now)?;
            let write = RefundWrite {
                paid: Some(&paid),
                ..RefundWrite::default()
            };
            match self.write(&order, expected, events, write).await {
                Ok(()) => {
                    return refund_of(&order, no);
                }
                Err(e) if retry(&e) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(kept_changing(
            id,
            "kept changing during the refund's payment",
        ))
    }

    /// Writes a refund change of `order` (loaded at `expected`) with its events.
    async fn write(
        &self,
        order: &Order,
        expected: u64,
        events: Vec<quanyi_order::OrderEvent>,
        write: RefundWrite<'_>,
    ) -> Result<()> {
        let shop = self.shop;
        let now = order.updated_at();
        let envs = shop.envelopes("order", order.id(), order.version(), events, now);
        shop.store_ref()
            .refund_order(
                OrderChange {
                    order,
                    expected_version: expected,
                    events: &envs,
                },
                write,
            )
            .await?;
        Ok(())
    }

    /// The lines of `order` with a card its buyer revealed.
    async fn revealed_lines(&self, order: &Order) -> Result<HashSet<u16>> {
        if order.lines().iter().all(|l| l.cards.is_empty()) {
            return Ok(HashSet::new());
        }
        let shop = self.shop;
        let cards = shop
            .store_ref()
            .order_cards(&shop.tenant, order.id())
            .await?;
        Ok(cards
            .iter()
            .filter(|c| c.revealed_at.is_some())
            .filter_map(|c| {
                order
                    .lines()
                    .iter()
                    .find(|l| l.cards.contains(&c.id))
                    .map(|l| l.no)
            })
            .collect())
    }
}

/// A refund of `order` by number.
fn refund_of(order: &Order, no: u16) -> Result<Refund> {
    order
        .refund(no)
        .cloned()
        .ok_or(Error::Order(quanyi_order::Error::UnknownRefund {
            refund: no,
        }))
}

/// The answer when every attempt lost a race to another writer of the order.
fn kept_changing(id: OrderId, what: &'static str) -> Error {
    Error::Storage(quanyi_storage::Error::conflict("order", id, what))
}

/// A write lost to another writer: read again and decide again.
fn retry(e: &Error) -> bool {
    matches!(e, Error::Storage(s) if s.kind() == ErrorKind::Conflict)
}

/// Every line a buyer may still ask for: delivered, not refunded in full, held by no open
/// refund; the whole of what is left of each.
fn refundable_lines(order: &Order) -> Vec<(u16, Option<Money>)> {
    order
        .lines()
        .iter()
        .filter(|l| l.status == quanyi_order::LineStatus::Delivered)
        .filter(|l| order.open_refund_of(l.no).is_none())
        .map(|l| (l.no, None))
        .collect()
}

/// A refund, not rejected, that the same kind of asker asked for the same lines and amounts:
/// the answer to a repeated request.
fn same_refund<'a>(
    order: &'a Order,
    lines: &[(u16, Option<Money>)],
    asked_by: &Asker,
) -> Option<&'a Refund> {
    order.refunds().iter().rev().find(|r| {
        r.status != RefundStatus::Rejected
            && r.asked_by == *asked_by
            && r.lines.len() == lines.len()
            && lines.iter().all(|(no, amount)| {
                r.amount_for(*no).is_some_and(|got| match amount {
                    Some(want) => *want == got,
                    None => Some(got) == rest_before(order, r, *no),
                })
            })
    })
}

/// What was left of a line's share when `refund` was asked for: the line's amount less what
/// earlier paid refunds gave back for it.
fn rest_before(order: &Order, refund: &Refund, line: u16) -> Option<Money> {
    let earlier = order
        .refunds()
        .iter()
        .filter(|r| r.no < refund.no && r.status == RefundStatus::Paid)
        .filter_map(|r| r.amount_for(line))
        .map(|m| m.minor())
        .sum::<i64>();
    let amount = order.line(line)?.amount;
    Some(Money::from_minor(
        amount.minor().saturating_sub(earlier),
        amount.currency(),
    ))
}

fn refund_detail(refund: &Refund, override_rules: bool) -> String {
    let lines: Vec<String> = refund
        .lines
        .iter()
        .map(|l| format!("L{} {}", l.line, l.amount.to_decimal().normalize()))
        .collect();
    format!(
        "refund {}{}: {} ({})",
        refund.no,
        if override_rules { " (override)" } else { "" },
        lines.join(", "),
        refund.reason
    )
}
