//! The after-sales refund commands of an order (see `crate::refund`).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use quanyi_core::{Actor, CardId, Money};

use super::{MAX_REASON_CHARS, Order, text_ok};
use crate::refund::{RefundDecision, RefundLine, refund_rule};
use crate::{
    Asker, Error, LineStatus, OrderEvent, OrderStatus, Refund, RefundAsk, RefundRule, RefundStatus,
    Result, Trigger, next_status,
};

const REASON: &str = "reason must have 1 to 500 printable characters";

fn reason_ok(reason: &str) -> Result<()> {
    if text_ok(reason, MAX_REASON_CHARS) {
        Ok(())
    } else {
        Err(Error::InvalidRefund { reason: REASON })
    }
}

impl Order {
    /// The after-sales refunds, oldest first.
    pub fn refunds(&self) -> &[Refund] {
        &self.refunds
    }

    /// A refund by number.
    pub fn refund(&self, no: u16) -> Option<&Refund> {
        self.refunds.iter().find(|r| r.no == no)
    }

    /// What paid refunds gave back for a line.
    ///
    /// # Errors
    /// [`Error::AmountOverflow`] only for corrupted data.
    pub fn line_refunded(&self, line: u16) -> Result<Money> {
        let paid = self
            .refunds
            .iter()
            .filter(|r| r.status == RefundStatus::Paid)
            .filter_map(|r| r.amount_for(line));
        Ok(Money::sum(paid, self.currency())?)
    }

    /// The open refund (requested, or approved and not yet paid) that holds a line, if any.
    pub fn open_refund_of(&self, line: u16) -> Option<&Refund> {
        self.refunds
            .iter()
            .find(|r| r.status.is_open() && r.amount_for(line).is_some())
    }

    /// When the earliest open refund needs attention: a requested one's deadline, an approved
    /// one's decision (its payment is due from then). Stores index orders by it for the
    /// operators' queue and for paying approved refunds that a stopped process left unpaid.
    pub fn refund_due(&self) -> Option<DateTime<Utc>> {
        self.refunds
            .iter()
            .filter_map(|r| match r.status {
                RefundStatus::Requested => r.due,
                RefundStatus::Approved => r.decision.as_ref().map(|d| d.at),
                RefundStatus::Rejected | RefundStatus::Paid => None,
            })
            .min()
    }

    /// Asks for an after-sales refund of delivered lines. Each line's [`RefundRule`] (with
    /// `revealed(line)`: whether any of its card keys was revealed) says what happens: when
    /// every line may be refunded at once (unrevealed keys, voided by this refund), or an
    /// operator overrides the rules, the refund is approved at once and names the cards to
    /// void; a buyer's refund that needs a decision waits, requested, until `ask.due`. Returns
    /// the refund's number.
    ///
    /// # Errors
    /// [`Error::WrongStatus`] unless delivered or partially delivered;
    /// [`Error::InvalidRefund`]; [`Error::UnknownLine`]; [`Error::NotRefundable`] for a line
    /// that is not delivered or is refunded already; [`Error::RefundOpen`] when an open refund
    /// holds a line; [`Error::RefundAmount`] for an amount over what is left of the line's share
    /// or not positive; [`Error::NeedsOverride`] for an operator's refund that needs an override
    /// not given. Nothing changes on any error.
    pub fn ask_refund(
        &mut self,
        ask: RefundAsk,
        revealed: impl Fn(u16) -> bool,
        now: DateTime<Utc>,
    ) -> Result<(u16, Vec<OrderEvent>)> {
        if !matches!(
            self.status,
            OrderStatus::Delivered | OrderStatus::PartiallyDelivered
        ) {
            return Err(Error::WrongStatus {
                status: self.status,
                expected: OrderStatus::Delivered,
            });
        }
        let version = self.next_version()?;
        reason_ok(&ask.reason)?;
        if ask.lines.is_empty() || ask.lines.len() > self.lines.len() {
            return Err(Error::InvalidRefund {
                reason: "a refund names 1 to all of the order's lines",
            });
        }
        if ask.override_rules && ask.asked_by == Asker::Buyer {
            return Err(Error::InvalidRefund {
                reason: "only an operator overrides a line's rule",
            });
        }
        let mut lines = Vec::with_capacity(ask.lines.len());
        let mut rules = Vec::with_capacity(ask.lines.len());
        for (i, &(no, amount)) in ask.lines.iter().enumerate() {
            if ask.lines[..i].iter().any(|(other, _)| *other == no) {
                return Err(Error::InvalidRefund {
                    reason: "a refund names a line once",
                });
            }
            let line = self.line(no).ok_or(Error::UnknownLine { line: no })?;
            let reason = match line.status {
                LineStatus::Delivered => None,
                LineStatus::Failed => Some("failed lines are paid back when delivery gives up"),
                LineStatus::Pending | LineStatus::Held => Some("the line is not delivered yet"),
                LineStatus::Refunded => Some("the line is refunded already"),
            };
            if let Some(reason) = reason {
                return Err(Error::NotRefundable { line: no, reason });
            }
            if let Some(open) = self.open_refund_of(no) {
                return Err(Error::RefundOpen {
                    line: no,
                    refund: open.no,
                });
            }
            let left = line.amount.checked_sub(self.line_refunded(no)?)?;
            let asked = amount.unwrap_or(left);
            if asked.currency() != self.currency() {
                return Err(Error::CurrencyMismatch {
                    expected: self.currency(),
                    got: asked.currency(),
                });
            }
            if !asked.is_positive() || asked.minor() > left.minor() {
                return Err(Error::RefundAmount {
                    line: no,
                    asked,
                    left,
                });
            }
            let rule = refund_rule(line, revealed(no), asked, left);
            if rule == RefundRule::Override
                && !ask.override_rules
                && matches!(ask.asked_by, Asker::Operator { .. })
            {
                return Err(Error::NeedsOverride { line: no });
            }
            lines.push(RefundLine {
                line: no,
                amount: asked,
            });
            rules.push(rule);
        }
        let amount = Money::sum(lines.iter().map(|l| l.amount), self.currency())?;
        self.within_payment(amount)?;
        let needs_decision = ask.asked_by == Asker::Buyer && rules.contains(&RefundRule::Override);
        let no = u16::try_from(self.refunds.len() + 1).map_err(|_| Error::InvalidRefund {
            reason: "too many refunds on one order",
        })?;
        let mut refund = Refund {
            no,
            lines,
            amount,
            reason: ask.reason,
            asked_by: ask.asked_by,
            asked_at: now,
            status: RefundStatus::Requested,
            due: needs_decision.then_some(ask.due),
            decision: None,
            voided: Vec::new(),
            receipt: None,
            paid_at: None,
        };
        let mut events = vec![OrderEvent::RefundOpened {
            refund: no,
            lines: refund.lines.iter().map(|l| l.line).collect(),
            amount,
            reason: refund.reason.clone(),
            by: refund.asked_by.name(),
            needs_decision,
        }];
        if !needs_decision {
            let actor = match &refund.asked_by {
                Asker::Operator { actor } => Some(actor.clone()),
                Asker::Buyer => None,
            };
            let decision = RefundDecision {
                actor,
                reason: refund.reason.clone(),
                at: now,
                overridden: rules.contains(&RefundRule::Override),
            };
            events.extend(self.approve(&mut refund, decision, &rules));
        }
        self.refunds.push(refund);
        self.version = version;
        self.updated_at = now;
        Ok((no, events))
    }

    /// An operator approves a requested refund: the lines whose keys were never revealed
    /// (`revealed(line)` false) have them voided, the rest are an override.
    ///
    /// # Errors
    /// [`Error::UnknownRefund`]; [`Error::RefundStatus`] unless requested;
    /// [`Error::InvalidRefund`] for a bad reason.
    pub fn approve_refund(
        &mut self,
        no: u16,
        actor: &Actor,
        reason: String,
        revealed: impl Fn(u16) -> bool,
        now: DateTime<Utc>,
    ) -> Result<Vec<OrderEvent>> {
        let (i, version) = self.requested(no)?;
        reason_ok(&reason)?;
        let mut refund = self.refunds[i].clone();
        let mut rules = Vec::with_capacity(refund.lines.len());
        for l in &refund.lines {
            let line = self
                .line(l.line)
                .ok_or(Error::UnknownLine { line: l.line })?;
            let left = line.amount.checked_sub(self.line_refunded(l.line)?)?;
            rules.push(refund_rule(line, revealed(l.line), l.amount, left));
        }
        let decision = RefundDecision {
            actor: Some(actor.clone()),
            reason,
            at: now,
            overridden: rules.contains(&RefundRule::Override),
        };
        let events = self.approve(&mut refund, decision, &rules);
        refund.due = None;
        self.refunds[i] = refund;
        self.version = version;
        self.updated_at = now;
        Ok(events)
    }

    /// An operator rejects a requested refund; its lines may be asked for again.
    ///
    /// # Errors
    /// [`Error::UnknownRefund`]; [`Error::RefundStatus`] unless requested;
    /// [`Error::InvalidRefund`] for a bad reason.
    pub fn reject_refund(
        &mut self,
        no: u16,
        actor: &Actor,
        reason: String,
        now: DateTime<Utc>,
    ) -> Result<Vec<OrderEvent>> {
        let (i, version) = self.requested(no)?;
        reason_ok(&reason)?;
        let refund = &mut self.refunds[i];
        refund.status = RefundStatus::Rejected;
        refund.due = None;
        refund.decision = Some(RefundDecision {
            actor: Some(actor.clone()),
            reason: reason.clone(),
            at: now,
            overridden: false,
        });
        self.version = version;
        self.updated_at = now;
        Ok(vec![OrderEvent::RefundRejected {
            refund: no,
            by: actor.to_string(),
            reason,
        }])
    }

    /// Records that the payment provider paid an approved refund back (`receipt`: its id of
    /// the refund). A line whose whole share is paid back is refunded; when every line is, so
    /// is the order.
    ///
    /// # Errors
    /// [`Error::UnknownRefund`]; [`Error::RefundStatus`] unless approved;
    /// [`Error::InvalidRefund`] for an empty or overlong receipt.
    pub fn refund_paid(
        &mut self,
        no: u16,
        receipt: String,
        now: DateTime<Utc>,
    ) -> Result<Vec<OrderEvent>> {
        let i = self.refund_index(no)?;
        let refund = &self.refunds[i];
        if refund.status != RefundStatus::Approved {
            return Err(Error::RefundStatus {
                refund: no,
                status: refund.status.as_str(),
                expected: RefundStatus::Approved.as_str(),
            });
        }
        if !text_ok(&receipt, MAX_REASON_CHARS) {
            return Err(Error::InvalidRefund {
                reason: "a receipt has 1 to 500 printable characters",
            });
        }
        let version = self.next_version()?;
        let amount = refund.amount;
        let refund = &mut self.refunds[i];
        refund.status = RefundStatus::Paid;
        refund.receipt = Some(receipt.clone());
        refund.paid_at = Some(now);
        let names: Vec<u16> = refund.lines.iter().map(|l| l.line).collect();
        let mut events = vec![OrderEvent::RefundPaid {
            refund: no,
            amount,
            receipt,
        }];
        for no in names {
            let index = self.line_index(no)?;
            let refunded = self.line_refunded(no)?;
            if refunded == self.lines[index].amount {
                Arc::make_mut(&mut self.lines)[index].status = LineStatus::Refunded;
                events.push(OrderEvent::LineRefunded {
                    line: no,
                    amount: refunded,
                });
            }
        }
        if self.lines.iter().all(|l| l.status == LineStatus::Refunded) {
            self.status = next_status(self.status, Trigger::CompleteRefund)?;
            events.push(OrderEvent::Refunded {
                amount: self.refunded_amount()?,
            });
        }
        self.version = version;
        self.updated_at = now;
        Ok(events)
    }

    /// Approves `refund` with `decision`: voids the cards of the lines refunded at once.
    fn approve(
        &self,
        refund: &mut Refund,
        decision: RefundDecision,
        rules: &[RefundRule],
    ) -> Vec<OrderEvent> {
        let mut events = vec![OrderEvent::RefundApproved {
            refund: refund.no,
            by: decision
                .actor
                .as_ref()
                .map_or_else(|| "policy".to_owned(), ToString::to_string),
            overridden: decision.overridden,
        }];
        for (l, rule) in refund.lines.iter().zip(rules) {
            if *rule != RefundRule::VoidAndRefund {
                continue;
            }
            let cards: Vec<CardId> = self
                .line(l.line)
                .map(|line| line.cards.clone())
                .unwrap_or_default();
            refund.voided.extend(cards.iter().copied());
            events.push(OrderEvent::CardsVoided {
                refund: refund.no,
                line: l.line,
                cards,
            });
        }
        refund.status = RefundStatus::Approved;
        refund.decision = Some(decision);
        events
    }

    fn refund_index(&self, no: u16) -> Result<usize> {
        self.refunds
            .iter()
            .position(|r| r.no == no)
            .ok_or(Error::UnknownRefund { refund: no })
    }

    /// The index of a requested refund and the version a decision on it writes.
    fn requested(&self, no: u16) -> Result<(usize, u64)> {
        let i = self.refund_index(no)?;
        let status = self.refunds[i].status;
        if status != RefundStatus::Requested {
            return Err(Error::RefundStatus {
                refund: no,
                status: status.as_str(),
                expected: RefundStatus::Requested.as_str(),
            });
        }
        Ok((i, self.next_version()?))
    }

    /// Refuses a refund that, with every refund not rejected and every failed line paid
    /// back, would give back more than was paid.
    fn within_payment(&self, amount: Money) -> Result<()> {
        let paid = self.payment().map_or(self.total, |p| p.amount);
        let promised = Money::sum(
            self.refunds
                .iter()
                .filter(|r| r.status != RefundStatus::Rejected)
                .map(|r| r.amount),
            self.currency(),
        )?;
        let failed = Money::sum(
            self.lines
                .iter()
                .filter(|l| matches!(l.status, LineStatus::Failed | LineStatus::Refunded))
                .filter(|l| self.line_refunded(l.no).is_ok_and(|m| m.is_zero()))
                .map(|l| l.amount),
            self.currency(),
        )?;
        let left = paid.checked_sub(promised)?.checked_sub(failed)?;
        if amount.minor() > left.minor() {
            return Err(Error::RefundAmount {
                line: 0,
                asked: amount,
                left,
            });
        }
        Ok(())
    }
}
