//! Delivery of paid orders (run by the delivery job, see `jobs`).

use std::collections::{BTreeMap, HashSet};

use quanyi_core::{JobId, OrderId, SkuId};
use quanyi_goods::{KindTag, StockSource};
use quanyi_order::{LineStatus, Order, OrderStatus};
use quanyi_storage::{AuditAction, AuditOutcome, OrderChange};

use crate::{Error, OverduePolicy, RefundRequest, Result, Shop};

impl Shop {
    /// Runs the delivery job recorded with a payment right away, if no worker holds it.
    pub(crate) async fn deliver_now(&self, job: JobId, order: OrderId) -> Result<Order> {
        let store = self.store_ref();
        let worker = &self.inner.worker;
        let Some(job) = store
            .claim_job(job, worker, self.now(), self.inner.lease)
            .await?
        else {
            return self.order(order).await;
        };
        self.finish_job(&job).await?;
        self.order(order).await
    }

    /// Delivers a paid order: commits its reserved card keys (the same ones on every retry),
    /// records each line delivered, and moves the order to delivered. A line whose keys cannot be
    /// found is marked failed, and the order ends partially delivered or refund pending.
    /// Repeating the call on a delivered order changes nothing.
    ///
    /// # Errors
    /// [`Error::UnknownOrder`]; [`Error::Storage`].
    pub async fn deliver(&self, id: OrderId) -> Result<Order> {
        let store = self.store_ref();
        // Supplier requests whose card keys the store refused as already held: their answers
        // count as failures of their routes from now on.
        let mut rejected: HashSet<String> = HashSet::new();
        for _ in 0..5 {
            let mut order = self.order(id).await?;
            let expected = order.version();
            let now = self.now();
            let mut events = match order.status() {
                OrderStatus::Paid => order.start_fulfilment(now)?,
                OrderStatus::Fulfilling => Vec::new(),
                _ => return Ok(order),
            };
            // Card-key lines, grouped by SKU: one commit per SKU, split over its lines.
            let mut per_sku: BTreeMap<SkuId, Vec<(u16, u32)>> = BTreeMap::new();
            let mut other = Vec::new();
            let lines: Vec<_> = order.lines().to_vec();
            for line in &lines {
                if line.status != LineStatus::Pending {
                    continue;
                }
                // The line's terms say how it is delivered, whatever its goods say now.
                if line.terms.stock == StockSource::VaultPool {
                    per_sku
                        .entry(line.sku)
                        .or_default()
                        .push((line.no, line.quantity));
                } else {
                    other.push((line.no, line.kind));
                }
            }
            for (sku, lines) in per_sku {
                let total: u32 = lines.iter().map(|(_, q)| *q).sum();
                match store.commit_cards(&self.tenant, sku, id, total, now).await {
                    Ok(cards) => {
                        let mut rest = cards.as_slice();
                        for (no, quantity) in lines {
                            let n = usize::try_from(quantity)
                                .unwrap_or(usize::MAX)
                                .min(rest.len());
                            let (mine, tail) = rest.split_at(n);
                            rest = tail;
                            events.extend(order.deliver_line(no, mine.to_vec(), quantity, now)?);
                        }
                    }
                    Err(quanyi_storage::Error::OutOfStock { .. }) => {
                        for (no, _) in lines {
                            events.extend(order.fail_line(no, "out_of_stock".into(), now)?);
                        }
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            let mut bought = Vec::new();
            // For each supplier line that handed over cards in this pass: the positions of its
            // cards in `bought`, and the request that delivered them.
            let mut handed: Vec<(std::ops::Range<usize>, u16, String)> = Vec::new();
            for (no, kind) in other {
                if kind == KindTag::Link {
                    self.sign_links(&mut order, no, &mut events, &mut bought, now)
                        .await?;
                } else if kind == KindTag::ReservationCode {
                    self.generate_codes(&mut order, no, &mut events, &mut bought, now)
                        .await?;
                } else if kind == KindTag::Membership {
                    let membership = order.line(no).and_then(|l| l.terms.membership.clone());
                    if let Some(m) = membership {
                        events.extend(order.grant_entitlement(no, m.plan, m.days, now)?);
                    } else {
                        events.extend(order.fail_line(no, "not a membership".into(), now)?);
                    }
                } else if matches!(kind, KindTag::DirectTopUp | KindTag::CardKey) {
                    let start = bought.len();
                    self.fulfil_supplier_line(
                        &mut order,
                        no,
                        &mut events,
                        &mut bought,
                        &rejected,
                        now,
                    )
                    .await?;
                    if bought.len() > start {
                        if let Some(request) = succeeded_request(&order, no) {
                            handed.push((start..bought.len(), no, request));
                        }
                    }
                } else {
                    events.extend(order.fail_line(
                        no,
                        format!("no fulfilment for {} goods", kind.as_str()),
                        now,
                    )?);
                }
            }
            // A line waiting on its suppliers past the deadline is given up (and refunded by
            // `settle`); the request stays on the line for reconciliation.
            let paid_at = order.payment().map(|p| p.paid_at);
            let overdue: Vec<(u16, String)> = match paid_at {
                Some(paid_at) if now - paid_at > self.inner.supplier_deadline => order
                    .lines()
                    .iter()
                    .filter(|l| l.status == LineStatus::Pending)
                    // A line no supplier was ever called for (every breaker open) is given up
                    // too; its audit record then names no request.
                    .map(|l| {
                        let request = l
                            .attempts
                            .last()
                            .map_or_else(|| "none".to_owned(), |a| a.request.as_str().to_owned());
                        (l.no, request)
                    })
                    .collect(),
                _ => Vec::new(),
            };
            let hold = self.inner.overdue == OverduePolicy::Hold;
            for (no, _) in &overdue {
                events.extend(if hold {
                    order.hold_line(*no, "supplier_overdue".into(), now)?
                } else {
                    order.fail_line(*no, "supplier_overdue".into(), now)?
                });
            }
            // Lines still waiting for a supplier or held for an operator keep the order
            // fulfilling; the job comes back for the first, the operator decides the second.
            if order
                .lines()
                .iter()
                .all(|l| !matches!(l.status, LineStatus::Pending | LineStatus::Held))
            {
                events.extend(order.finish_fulfilment(now)?);
            }
            let envs = self.envelopes("order", id, order.version(), events, now);
            let change = OrderChange {
                order: &order,
                expected_version: expected,
                events: &envs,
            };
            // Cards bought from suppliers are stored in the same step that delivers them.
            let written = if bought.is_empty() {
                store.update_order(change, None).await
            } else {
                store
                    .insert_sold_cards(&self.tenant, &bought, change, now)
                    .await
            };
            match written {
                Ok(()) => {
                    for (no, request) in overdue {
                        let then = if hold {
                            "held for an operator"
                        } else {
                            "refunded"
                        };
                        self.audit(
                            "system",
                            AuditAction::SupplierOverdue,
                            request.clone(),
                            AuditOutcome::Denied,
                            format!(
                                "order {id} line {no}: no answer within the supplier deadline; {then}"
                            ),
                        )
                        .await?;
                        tracing::warn!(order = %id, line = no, %request, then, "supplier line overdue");
                    }
                    tracing::info!(order = %id, status = %order.status(), "order fulfilled");
                    return Ok(order);
                }
                // A supplier handed over card keys the shop already holds (sold, maybe): never
                // deliver them. Its route counts as failed for the line on the next pass, which
                // fails over or refunds; the request is flagged for reconciliation.
                Err(quanyi_storage::Error::DuplicateCards { positions }) => {
                    for (range, no, request) in &handed {
                        let repeated = positions.iter().filter(|p| range.contains(p)).count();
                        if repeated > 0 && rejected.insert(request.clone()) {
                            self.audit(
                                "system",
                                AuditAction::SupplierDuplicate,
                                request.clone(),
                                AuditOutcome::Denied,
                                format!(
                                    "order {id} line {no}: {repeated} card key(s) already held"
                                ),
                            )
                            .await?;
                            tracing::warn!(order = %id, line = no, %request, "supplier handed over card keys already held");
                        }
                    }
                }
                // The data key changed under the sealed cards: seal them again.
                Err(quanyi_storage::Error::KeyNotActive { .. }) => {
                    self.load_ring().await?;
                }
                Err(e) if e.kind() == quanyi_core::ErrorKind::Conflict => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Storage(quanyi_storage::Error::conflict(
            "order",
            id,
            "kept changing during delivery",
        )))
    }

    /// Brings a paid order to its end: delivers what can be delivered, then pays back, through
    /// the payment gateway, every line that could not be. Repeating it is safe: refunds carry a
    /// stable refund id, and a line is marked refunded only after the gateway confirmed.
    ///
    /// # Errors
    /// [`Error::NoPaymentGateway`] when a refund is due and none is configured;
    /// [`Error::Gateway`]; [`Error::Storage`].
    pub async fn settle(&self, id: OrderId) -> Result<Order> {
        let order = self.deliver(id).await?;
        self.pay_back(order).await
    }

    /// Refunds the failed lines of a partially delivered order, or the rest of an order whose
    /// refund is pending.
    async fn pay_back(&self, mut order: Order) -> Result<Order> {
        for _ in 0..10 {
            let (refund_id, amount, line) = match order.status() {
                OrderStatus::PartiallyDelivered => {
                    match order
                        .lines()
                        .iter()
                        .find(|l| l.status == LineStatus::Failed)
                    {
                        Some(l) => (format!("{}-L{}", order.id(), l.no), l.amount, Some(l.no)),
                        None => return Ok(order),
                    }
                }
                OrderStatus::RefundPending => (
                    format!("{}-all", order.id()),
                    order.refundable_amount()?,
                    None,
                ),
                _ => return Ok(order),
            };
            let gateway = self.inner.gateway.as_ref().ok_or(Error::NoPaymentGateway)?;
            let payment = order.payment().ok_or_else(|| {
                Error::InvalidInput(format!("order {} has no payment", order.id()))
            })?;
            let mut paid = None;
            if amount.is_positive() {
                let receipt = gateway
                    .refund(&RefundRequest {
                        refund_id: refund_id.clone(),
                        order: order.id(),
                        provider: payment.provider.to_string(),
                        transaction_id: payment.transaction_id.to_string(),
                        amount,
                        reason: "not delivered".into(),
                    })
                    .await?;
                tracing::info!(order = %order.id(), refund = %receipt.provider_refund_id, %amount, "refunded");
                paid = Some(quanyi_storage::PaidRefund {
                    tenant: self.tenant.clone(),
                    refund_id,
                    order: order.id(),
                    provider: payment.provider.to_string(),
                    transaction_id: payment.transaction_id.to_string(),
                    amount,
                    receipt: receipt.provider_refund_id,
                    paid_at: self.now(),
                });
            }
            let expected = order.version();
            let now = self.now();
            let events = match line {
                Some(no) => order.refund_line(no, now)?,
                None => order.complete_refund(now)?,
            };
            let envs = self.envelopes("order", order.id(), order.version(), events, now);
            // The pay-back and its entry in the refund ledger are one write.
            match self
                .store_ref()
                .refund_order(
                    OrderChange {
                        order: &order,
                        expected_version: expected,
                        events: &envs,
                    },
                    quanyi_storage::RefundWrite {
                        paid: paid.as_ref(),
                        ..quanyi_storage::RefundWrite::default()
                    },
                )
                .await
            {
                Ok(()) => {}
                // Changed meanwhile: reload; the refund id keeps a repeat from paying twice.
                Err(e) if e.kind() == quanyi_core::ErrorKind::Conflict => {
                    order = self.order(order.id()).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(order)
    }
}

/// The request of the line's latest successful supplier attempt.
fn succeeded_request(order: &Order, no: u16) -> Option<String> {
    order.line(no).and_then(|line| {
        line.attempts
            .iter()
            .rev()
            .find(|a| matches!(a.outcome, quanyi_order::AttemptOutcome::Succeeded { .. }))
            .map(|a| a.request.as_str().to_owned())
    })
}
