//! The refunds operators watch: the queue of refunds waiting for a decision or their payment,
//! the payment of approved refunds left unpaid (the `pay_refunds` sweep), and the report of a
//! period's refunds from the refund ledger.

use chrono::{DateTime, Duration, Utc};
use quanyi_core::{Actor, Money, OrderId};
use quanyi_order::{Refund, RefundStatus};
use quanyi_storage::{AuditAction, AuditOutcome, MAX_SEARCH_PAGE, PaidRefund};

use crate::{Error, Orders, Result, Shop};

/// An approved refund the shop pays from the sweep when the inline payment did not finish:
/// approved at least this long ago, so a payment still under way is not repeated at once.
const PAYOUT_GRACE_SECONDS: i64 = 60;

/// A refund waiting in the operators' queue: a decision, or its payment.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedRefund {
    /// The order.
    pub order: OrderId,
    /// The refund, requested or approved.
    pub refund: Refund,
    /// A requested refund's deadline, or when an approved one was approved.
    pub due: DateTime<Utc>,
    /// Past its deadline (requested refunds only).
    pub overdue: bool,
}

/// One page of the refund queue.
#[derive(Debug, Clone, PartialEq)]
pub struct RefundQueuePage {
    /// The refunds, earliest due first.
    pub refunds: Vec<QueuedRefund>,
    /// Where the next page starts (`None`: this is the last).
    pub next: Option<(DateTime<Utc>, OrderId)>,
}

/// The refunds paid in a period, to reconcile with the payment providers.
#[derive(Debug, Clone, PartialEq)]
pub struct RefundReport {
    /// The period's start (included).
    pub from: DateTime<Utc>,
    /// Its end (excluded).
    pub to: DateTime<Utc>,
    /// Every refund recorded paid in the period, by time then refund id: after-sales refunds
    /// (`<order>-R<n>`) and pay-backs of lines that could not be delivered (`<order>-L<line>`,
    /// `<order>-all`).
    pub refunds: Vec<PaidRefund>,
    /// The sums by provider and currency, in that order.
    pub totals: Vec<RefundTotal>,
}

/// What one provider paid back in one currency in a report's period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundTotal {
    /// The provider.
    pub provider: String,
    /// The refunds counted.
    pub count: usize,
    /// Their sum.
    pub amount: Money,
}

impl Orders<'_> {
    /// The refunds waiting for an operator's decision or for their payment, earliest due
    /// first, up to `limit` orders' worth (at most [`MAX_SEARCH_PAGE`]) after `after`. Audited
    /// (`refund_queue_viewed`) after the read.
    ///
    /// # Errors
    /// [`Error::Storage`].
    pub async fn refund_queue(
        &self,
        actor: &Actor,
        after: Option<(DateTime<Utc>, OrderId)>,
        limit: usize,
    ) -> Result<RefundQueuePage> {
        let shop = self.shop;
        let limit = limit.clamp(1, MAX_SEARCH_PAGE);
        let orders = shop
            .store_ref()
            .refund_queue(&shop.tenant, after, limit)
            .await?;
        let now = shop.now();
        let next = if orders.len() == limit {
            orders
                .last()
                .and_then(|o| o.refund_due().map(|due| (due, o.id())))
        } else {
            None
        };
        let refunds: Vec<QueuedRefund> = orders
            .iter()
            .flat_map(|o| {
                o.refunds()
                    .iter()
                    .filter(|r| r.status.is_open())
                    .map(move |r| queued(o.id(), r, now))
            })
            .collect();
        shop.audit(
            &actor.to_string(),
            AuditAction::RefundQueueViewed,
            "refunds".to_owned(),
            AuditOutcome::Allowed,
            format!("{} refund(s)", refunds.len()),
        )
        .await?;
        Ok(RefundQueuePage { refunds, next })
    }

    /// The refunds paid in `[from, to)` (for a calendar day or month of the shop, pass its
    /// bounds from [`Shop::calendar`](crate::Shop::calendar)), with their sums by provider and
    /// currency, to reconcile with the payment providers' statements. Audited
    /// (`refund_report_viewed`) after the read.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when `to` is not after `from`; [`Error::Storage`].
    pub async fn refund_report(
        &self,
        actor: &Actor,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<RefundReport> {
        if to <= from {
            return Err(Error::InvalidInput(
                "a refund report's period ends after it starts".into(),
            ));
        }
        let shop = self.shop;
        let mut refunds: Vec<PaidRefund> = Vec::new();
        loop {
            let after = refunds.last().map(|r| (r.paid_at, r.refund_id.clone()));
            let page = shop
                .store_ref()
                .refunds_paid(&shop.tenant, from, to, after, MAX_SEARCH_PAGE)
                .await?;
            let full = page.len() == MAX_SEARCH_PAGE;
            refunds.extend(page);
            if !full {
                break;
            }
        }
        let mut totals: Vec<RefundTotal> = Vec::new();
        for r in &refunds {
            let same = |t: &&mut RefundTotal| {
                t.provider == r.provider && t.amount.currency() == r.amount.currency()
            };
            match totals.iter_mut().find(same) {
                Some(total) => {
                    total.count += 1;
                    total.amount = total
                        .amount
                        .checked_add(r.amount)
                        .map_err(quanyi_order::Error::from)?;
                }
                None => totals.push(RefundTotal {
                    provider: r.provider.clone(),
                    count: 1,
                    amount: r.amount,
                }),
            }
        }
        totals.sort_by(|a, b| {
            (a.provider.as_str(), a.amount.currency().code())
                .cmp(&(b.provider.as_str(), b.amount.currency().code()))
        });
        shop.audit(
            &actor.to_string(),
            AuditAction::RefundReportViewed,
            "refunds".to_owned(),
            AuditOutcome::Allowed,
            format!("{} refund(s) from {from} to {to}", refunds.len()),
        )
        .await?;
        Ok(RefundReport {
            from,
            to,
            refunds,
            totals,
        })
    }

    /// Pays the approved refunds whose payment did not finish (a stopped process, a gateway
    /// that was down): those approved more than a minute ago. Run by the `Worker` as the
    /// `pay_refunds` sweep. Returns how many were paid.
    ///
    /// # Errors
    /// [`Error::NoPaymentGateway`]; [`Error::Storage`]. A refund the gateway refuses is left
    /// approved and logged; the others are still paid.
    pub async fn pay_due_refunds(&self) -> Result<usize> {
        let shop = self.shop;
        let before = shop.now() - Duration::seconds(PAYOUT_GRACE_SECONDS);
        let mut after = None;
        let mut paid = 0;
        loop {
            let orders = shop
                .store_ref()
                .refund_queue(&shop.tenant, after, MAX_SEARCH_PAGE)
                .await?;
            let full = orders.len() == MAX_SEARCH_PAGE;
            for order in &orders {
                after = order.refund_due().map(|due| (due, order.id()));
                // The queue is by the earliest open refund: once it is later than `before`,
                // no approved refund of this order or any after it is due.
                if after.is_some_and(|(due, _)| due > before) {
                    return Ok(paid);
                }
                let due: Vec<u16> = order
                    .refunds()
                    .iter()
                    .filter(|r| r.status == RefundStatus::Approved)
                    .filter(|r| r.decision.as_ref().is_some_and(|d| d.at <= before))
                    .map(|r| r.no)
                    .collect();
                for no in due {
                    match self.pay(order.id(), no).await {
                        Ok(_) => paid += 1,
                        Err(Error::NoPaymentGateway) => return Err(Error::NoPaymentGateway),
                        Err(e) => {
                            tracing::warn!(order = %order.id(), refund = no, error = %e, "refund not paid");
                        }
                    }
                }
            }
            if !full {
                return Ok(paid);
            }
        }
    }
}

fn queued(order: OrderId, refund: &Refund, now: DateTime<Utc>) -> QueuedRefund {
    let due = match refund.status {
        RefundStatus::Requested => refund.due,
        _ => refund.decision.as_ref().map(|d| d.at),
    }
    .unwrap_or(refund.asked_at);
    QueuedRefund {
        order,
        refund: refund.clone(),
        due,
        overdue: refund.status == RefundStatus::Requested && due <= now,
    }
}

impl Shop {
    /// Pays approved refunds left unpaid ([`Orders::pay_due_refunds`]); the `pay_refunds`
    /// sweep's work.
    pub(crate) async fn pay_due_refunds(&self) -> Result<usize> {
        self.orders().pay_due_refunds().await
    }
}
