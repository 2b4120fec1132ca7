//! What suppliers report back: signed callbacks applied to their lines once, and statements
//! reconciled (对账) with what the shop asked of them.

use chrono::{DateTime, Utc};
use quanyi_order::{AttemptOutcome, LineAttempt, LineStatus};
use quanyi_storage::{AuditAction, AuditOutcome, OrderChange};
use quanyi_supplier::{
    CallbackStatus, OurRecord, ProductCode, RawCallback, Reconciliation, RequestId,
    StatementStatus, SupplierId, reconcile,
};

use crate::supply::CallbackOutcome;
use crate::{Error, Result, Shop};

impl Shop {
    /// Reconciles (对账) what this shop asked of a supplier in `[from, to)` with the supplier's
    /// statement for the period: every line attempt at the supplier whose answer came in the
    /// period (a success as succeeded, a definite failure as failed, at the route's cost) against
    /// the statement's lines, by request id. A failure the supplier does not list is not reported
    /// missing: a supplier need not keep what it refused.
    ///
    /// # Errors
    /// [`Error::UnknownSupplier`]; [`Error::Supplier`] when the statement cannot be fetched;
    /// [`Error::Storage`].
    pub async fn reconcile_supplier(
        &self,
        supplier_id: &SupplierId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Reconciliation> {
        let supplier = self
            .inner
            .suppliers
            .get(supplier_id)
            .ok_or_else(|| Error::UnknownSupplier(supplier_id.to_string()))?;
        let mut ours = Vec::new();
        let mut after = None;
        loop {
            let page = self
                .store_ref()
                .orders_updated(&self.tenant, from, to, after, 500)
                .await?;
            let Some(last) = page.last() else { break };
            after = Some((last.updated_at(), last.id()));
            for order in &page {
                for line in order.lines() {
                    // The product and cost the line was sold with.
                    let Some(route) = line
                        .terms
                        .routes
                        .iter()
                        .find(|r| r.supplier == *supplier_id)
                    else {
                        continue;
                    };
                    for a in line
                        .attempts
                        .iter()
                        .filter(|a| a.supplier == *supplier_id && a.at >= from && a.at < to)
                    {
                        let status = match a.outcome {
                            AttemptOutcome::Succeeded { .. } => StatementStatus::Succeeded,
                            // A hand-over we refused is a failure on our side; the supplier's
                            // statement will say it succeeded, and the pair is reported.
                            AttemptOutcome::Definite { .. } | AttemptOutcome::Rejected { .. } => {
                                StatementStatus::Failed
                            }
                            AttemptOutcome::Pending | AttemptOutcome::Unknown { .. } => continue,
                        };
                        let (Ok(request), Ok(product)) = (
                            RequestId::new(a.request.clone()),
                            ProductCode::new(route.product.clone()),
                        ) else {
                            continue;
                        };
                        ours.push(OurRecord {
                            request,
                            product,
                            quantity: line.quantity,
                            amount: route.cost.checked_mul(i64::from(line.quantity))?,
                            status,
                        });
                    }
                }
            }
        }
        let theirs = supplier
            .statement(from, to)
            .await
            .map_err(Error::Supplier)?;
        let mut report = reconcile(&ours, &theirs);
        report
            .missing
            .retain(|r| r.status == StatementStatus::Succeeded);
        Ok(report)
    }

    /// Takes a supplier's callback for a direct top-up: verifies its signature, finds the line by
    /// its request id, and delivers the line or fails over. A repeated, late or out-of-order
    /// callback for a settled line changes nothing. Every refused callback is audited.
    ///
    /// # Errors
    /// [`Error::UnknownSupplier`]; [`Error::Supplier`] for a bad signature or body;
    /// [`Error::UnknownRequest`]; [`Error::CallbackAmountMismatch`]; [`Error::Storage`].
    pub async fn supplier_callback(
        &self,
        supplier: &SupplierId,
        callback: &RawCallback,
    ) -> Result<CallbackOutcome> {
        match self.apply_callback(supplier, callback).await {
            Err(e) if !e.kind().is_transient() => {
                self.audit(
                    supplier.as_str(),
                    AuditAction::SupplierCallback,
                    supplier.to_string(),
                    AuditOutcome::Denied,
                    e.code().to_owned(),
                )
                .await?;
                tracing::warn!(%supplier, error = %e, "supplier callback refused");
                Err(e)
            }
            other => other,
        }
    }

    async fn apply_callback(
        &self,
        supplier_id: &SupplierId,
        callback: &RawCallback,
    ) -> Result<CallbackOutcome> {
        let supplier = self
            .inner
            .suppliers
            .get(supplier_id)
            .ok_or_else(|| Error::UnknownSupplier(supplier_id.to_string()))?;
        let event = supplier
            .verify_callback(callback)
            .map_err(Error::Supplier)?;
        let (order_id, no) = event.request.line().ok_or(Error::UnknownRequest)?;
        for _ in 0..5 {
            let mut order = self
                .store_ref()
                .order(&self.tenant, order_id)
                .await?
                .ok_or(Error::UnknownRequest)?;
            let line = order.line(no).cloned().ok_or(Error::UnknownRequest)?;
            let ours = line
                .attempts
                .iter()
                .any(|a| a.supplier == *supplier_id && a.request == event.request);
            if !ours {
                return Err(Error::UnknownRequest);
            }
            if line.status != LineStatus::Pending {
                return Ok(CallbackOutcome::AlreadySettled);
            }
            if let Some(amount) = event.amount {
                let expected = line
                    .terms
                    .routes
                    .iter()
                    .find(|r| r.supplier == *supplier_id)
                    .map(|r| r.cost.checked_mul(i64::from(line.quantity)))
                    .transpose()?;
                if expected.is_some_and(|e| e != amount) {
                    return Err(Error::CallbackAmountMismatch {
                        expected: expected.unwrap_or(amount),
                        got: amount,
                    });
                }
            }
            let now = self.now();
            let expected_version = order.version();
            let (outcome, delivered) = match event.status.clone() {
                CallbackStatus::Succeeded { receipt } => {
                    (AttemptOutcome::Succeeded { receipt }, true)
                }
                CallbackStatus::Failed { reason } => (AttemptOutcome::Definite { reason }, false),
            };
            let mut events = order.record_attempt(
                no,
                LineAttempt {
                    supplier: supplier_id.clone(),
                    request: event.request.clone(),
                    outcome,
                    at: now,
                },
                now,
            )?;
            if delivered {
                events.extend(order.deliver_line(no, Vec::new(), line.quantity, now)?);
                if order
                    .lines()
                    .iter()
                    .all(|l| l.status != LineStatus::Pending)
                {
                    events.extend(order.finish_fulfilment(now)?);
                }
            }
            let envs = self.envelopes("order", order_id, order.version(), events, now);
            match self
                .store_ref()
                .update_order(
                    OrderChange {
                        order: &order,
                        expected_version,
                        events: &envs,
                    },
                    None,
                )
                .await
            {
                Ok(()) => {
                    if !delivered || order.status() != quanyi_order::OrderStatus::Fulfilling {
                        // Fail over, or pay back what could not be delivered, now rather than at
                        // the job's next turn; the job finishes it should this fail.
                        if let Err(e) = self.settle(order_id).await {
                            tracing::warn!(order = %order_id, error = %e, "settling after a callback");
                        }
                    }
                    return Ok(CallbackOutcome::Applied);
                }
                Err(e) if e.kind() == quanyi_core::ErrorKind::Conflict => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Storage(quanyi_storage::Error::conflict(
            "order",
            order_id,
            "kept changing while applying a callback",
        )))
    }
}
