//! Payment notices: applied once per transaction, kept for reconciliation when they cannot be.

use std::collections::HashMap;
use std::sync::Arc;

use quanyi_core::{JobId, Money, OrderId, SkuId};
use quanyi_order::{LineStatus, Order, OrderStatus, Payment};
use quanyi_storage::{
    AuditAction, AuditOutcome, CONFLICTING_REPEAT, CardState, HeldCard, NewJob, NoticeDisposition,
    OrderChange, PaymentNotice, PaymentWrite, RecordOutcome,
};

use crate::sales::DELIVER_ORDER_JOB;
use crate::{Error, Result, Shop};

/// What a payment notice did.
#[derive(Debug, Clone, PartialEq)]
pub struct PaymentReceipt {
    /// The order after the payment (delivered, when delivery finished inline).
    pub order: Order,
    /// True when this transaction had been recorded before and nothing changed now.
    pub repeated: bool,
}

/// A payment provider's notice that an order was paid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentNotification {
    /// The provider, for example `alipay` or `wechatpay`.
    pub provider: String,
    /// The provider's transaction id: a notice is applied once per transaction.
    pub transaction_id: String,
    /// The order the payment is for.
    pub order: OrderId,
    /// The amount paid.
    pub amount: Money,
}

fn check_reference(what: &str, text: &str) -> Result<()> {
    let ok = !text.is_empty() && text.len() <= 128 && text.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "{what} must be 1 to 128 printable ASCII characters: {}",
            quanyi_core::text::clip(text)
        )))
    }
}

impl Shop {
    /// Applies a payment provider's notice, once per transaction id. The amount and currency
    /// must equal the order's total. A paid order is delivered right away (and, should this
    /// process stop first, by the delivery job recorded with the payment).
    ///
    /// A notice that cannot be applied (unknown, expired, cancelled or already-paid order, or a
    /// wrong amount) is kept for reconciliation, changes no order, delivers nothing, and returns
    /// the same error each time it is repeated. Acknowledge such notices to the provider.
    /// A notice that repeats a recorded transaction id for another order or another amount is
    /// not a repeat: it is kept for reconciliation too ([`NotPayable`](Error::NotPayable) with
    /// the reason `conflicting_repeat`), and the first record stands.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a malformed provider or transaction id (nothing recorded);
    /// [`Error::AmountMismatch`]; [`Error::CurrencyMismatch`]; [`Error::NotPayable`];
    /// [`Error::Storage`].
    pub async fn confirm_payment(&self, notice: PaymentNotification) -> Result<PaymentReceipt> {
        check_reference("provider", &notice.provider)?;
        check_reference("transaction id", &notice.transaction_id)?;
        let store = self.store_ref();
        // Shared by the notice record, the payment and its event: one copy each.
        let provider: Arc<str> = Arc::from(notice.provider.as_str());
        let transaction_id: Arc<str> = Arc::from(notice.transaction_id.as_str());
        for _ in 0..5 {
            // A repeated notice is found by `record_payment`, which writes nothing and returns
            // the first record; whatever is decided below is then discarded.
            let now = self.now();
            // An order this process placed is remembered with its cards until its payment (the
            // write below is checked against the store's copy either way). Otherwise the order
            // and its cards are read: independent reads, sent at once, so on a networked store
            // they cost one round trip of waiting instead of two.
            let remembered = self.inner.placed.take(&self.tenant, notice.order);
            let from_memory = remembered.is_some();
            let (order, held) = match remembered {
                Some(placed) => (Some(placed.order), placed.held),
                None => tokio::try_join!(
                    store.order(&self.tenant, notice.order),
                    store.held_cards(&self.tenant, notice.order),
                )?,
            };
            let mut record = PaymentNotice {
                tenant: self.tenant.clone(),
                provider: provider.clone(),
                transaction_id: transaction_id.clone(),
                order: notice.order,
                amount: notice.amount,
                received_at: now,
                disposition: NoticeDisposition::Applied,
            };
            let reason = match &order {
                None => Some("unknown_order"),
                Some(o) => payability(o, &notice, now),
            };
            if reason.is_some() && from_memory {
                // A refusal is decided from the store's copy, never from memory.
                continue;
            }
            let outcome = match (reason, order) {
                (Some(reason), _) => {
                    record.disposition = NoticeDisposition::Reconcile {
                        reason: reason.to_owned(),
                    };
                    let write = PaymentWrite {
                        notice: &record,
                        change: None,
                        sell: &[],
                        job: None,
                    };
                    store.record_payment(write, now).await
                }
                (None, None) => continue,
                (None, Some(order)) => {
                    let payment = Payment {
                        provider: provider.clone(),
                        transaction_id: transaction_id.clone(),
                        amount: notice.amount,
                        paid_at: now,
                    };
                    let plan = self.plan_payment(order, &held, payment, now)?;
                    let envs = self.envelopes(
                        "order",
                        plan.order.id(),
                        plan.order.version(),
                        plan.events,
                        now,
                    );
                    let write = PaymentWrite {
                        notice: &record,
                        change: Some(OrderChange {
                            order: &plan.order,
                            expected_version: plan.expected_version,
                            events: &envs,
                        }),
                        sell: &plan.sell,
                        job: plan.job.as_ref(),
                    };
                    match store.record_payment(write, now).await {
                        Ok(RecordOutcome::Recorded) => {
                            tracing::info!(order = %plan.order.id(), status = %plan.order.status(), "order paid");
                            let order = match &plan.job {
                                // Delivery was not possible in the same step: run its job now.
                                Some(job) => self.deliver_now(job.id, plan.order.id()).await?,
                                None => plan.order,
                            };
                            return Ok(PaymentReceipt {
                                order,
                                repeated: false,
                            });
                        }
                        other => other,
                    }
                }
            };
            match outcome {
                Ok(RecordOutcome::Recorded) => return self.replay(&record).await,
                Ok(RecordOutcome::Duplicate(first))
                    if first.order != record.order || first.amount != record.amount =>
                {
                    return Err(self.conflicting_repeat(&first, &record).await?);
                }
                Ok(RecordOutcome::Duplicate(first)) => return self.replay(&first).await,
                // The order changed between our read and our write: decide again.
                Err(e) if e.kind() == quanyi_core::ErrorKind::Conflict => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Storage(quanyi_storage::Error::conflict(
            "order",
            notice.order,
            "kept changing while applying a payment",
        )))
    }

    /// Decides what a payment writes. When the order's reserved cards cover every card-key line,
    /// the order is delivered in the same write that records the payment (one atomic step, no job);
    /// otherwise the payment is recorded with a delivery job. `held` are the cards the order
    /// holds, read with the order.
    fn plan_payment(
        &self,
        mut order: Order,
        held: &[HeldCard],
        payment: Payment,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<PaymentPlan> {
        let expected_version = order.version();
        let mut events = order.confirm_payment(payment, now)?;
        let mut sell = Vec::new();
        if let Some(assignments) = assign_held_cards(&order, held) {
            events.extend(order.start_fulfilment(now)?);
            for (no, quantity, cards) in assignments {
                sell.extend(cards.iter().copied());
                events.extend(order.deliver_line(no, cards, quantity, now)?);
            }
            events.extend(order.finish_fulfilment(now)?);
            return Ok(PaymentPlan {
                order,
                expected_version,
                events,
                sell,
                job: None,
            });
        }
        let job = NewJob {
            id: JobId::generate(now, &mut rand::thread_rng()),
            tenant: self.tenant.clone(),
            kind: DELIVER_ORDER_JOB.into(),
            dedupe_key: format!("deliver:{}", order.id()),
            payload: serde_json::json!({ "order": order.id() }),
            run_at: now,
        };
        Ok(PaymentPlan {
            order,
            expected_version,
            events,
            sell,
            job: Some(job),
        })
    }

    /// A notice that repeats a recorded transaction id with another order, amount or currency:
    /// kept for reconciliation (once per claim) and audited; the first record stands and
    /// nothing else changes. Returns the error to answer with.
    async fn conflicting_repeat(
        &self,
        first: &PaymentNotice,
        repeat: &PaymentNotice,
    ) -> Result<Error> {
        let new = self.store_ref().flag_conflicting_notice(repeat).await?;
        if new {
            self.audit(
                repeat.provider.as_ref(),
                AuditAction::NoticeConflict,
                repeat.transaction_id.to_string(),
                AuditOutcome::Denied,
                format!(
                    "recorded for order {} with {}; repeated for order {} with {}",
                    first.order, first.amount, repeat.order, repeat.amount
                ),
            )
            .await?;
            tracing::warn!(
                provider = %repeat.provider,
                transaction = %repeat.transaction_id,
                "a payment notice repeated a transaction with another order or amount"
            );
        }
        Ok(Error::NotPayable {
            order: repeat.order,
            reason: CONFLICTING_REPEAT,
        })
    }

    /// The answer to a notice already recorded: the same every time it is repeated.
    async fn replay(&self, first: &PaymentNotice) -> Result<PaymentReceipt> {
        match &first.disposition {
            NoticeDisposition::Applied => Ok(PaymentReceipt {
                order: self.order(first.order).await?,
                repeated: true,
            }),
            NoticeDisposition::Reconcile { reason } => {
                let order = self.store_ref().order(&self.tenant, first.order).await?;
                Err(reconcile_error(reason, first, order.as_ref()))
            }
        }
    }
}

struct PaymentPlan {
    order: Order,
    expected_version: u64,
    events: Vec<quanyi_order::OrderEvent>,
    sell: Vec<quanyi_core::CardId>,
    job: Option<NewJob>,
}

/// The held cards for each pending card-key line (line, quantity, cards), when they cover every
/// line of the order; `None` when anything is missing or a line is of another kind. Linear in
/// lines plus cards: the reserved cards are grouped by SKU once, in the order they are held,
/// and each line takes the first unused ones of its SKU.
fn assign_held_cards(
    order: &Order,
    held: &[HeldCard],
) -> Option<Vec<(u16, u32, Vec<quanyi_core::CardId>)>> {
    let mut by_sku: HashMap<SkuId, std::collections::VecDeque<quanyi_core::CardId>> =
        HashMap::new();
    for card in held
        .iter()
        .filter(|c| matches!(c.state, CardState::Reserved { .. }))
    {
        by_sku.entry(card.sku).or_default().push_back(card.id);
    }
    let mut out = Vec::with_capacity(order.lines().len());
    for line in order.lines() {
        if line.status != LineStatus::Pending {
            return None;
        }
        let n = usize::try_from(line.quantity).ok()?;
        let queue = by_sku.get_mut(&line.sku)?;
        if queue.len() < n {
            return None;
        }
        let cards: Vec<_> = queue.drain(..n).collect();
        out.push((line.no, line.quantity, cards));
    }
    Some(out)
}

/// Why a notice cannot pay this order, or `None` when it can.
fn payability(
    order: &Order,
    notice: &PaymentNotification,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<&'static str> {
    match order.status() {
        OrderStatus::AwaitingPayment if now >= order.expires_at() => Some("order_expired"),
        OrderStatus::AwaitingPayment => {
            if notice.amount.currency() != order.total().currency() {
                Some("currency_mismatch")
            } else if notice.amount != order.total() {
                Some("amount_mismatch")
            } else {
                None
            }
        }
        OrderStatus::Expired => Some("order_expired"),
        OrderStatus::Cancelled => Some("order_cancelled"),
        OrderStatus::Paid
        | OrderStatus::Fulfilling
        | OrderStatus::Delivered
        | OrderStatus::PartiallyDelivered
        | OrderStatus::RefundPending
        | OrderStatus::Refunded => Some("already_paid"),
    }
}

fn reconcile_error(reason: &str, notice: &PaymentNotice, order: Option<&Order>) -> Error {
    let not_payable = |reason: &'static str| Error::NotPayable {
        order: notice.order,
        reason,
    };
    match (reason, order) {
        ("amount_mismatch", Some(o)) => Error::AmountMismatch {
            expected: o.total(),
            got: notice.amount,
        },
        ("currency_mismatch", Some(o)) => Error::CurrencyMismatch {
            expected: o.total().currency(),
            got: notice.amount.currency(),
        },
        ("unknown_order", _) => not_payable("unknown_order"),
        ("order_expired", _) => not_payable("order_expired"),
        ("order_cancelled", _) => not_payable("order_cancelled"),
        ("already_paid", _) => not_payable("already_paid"),
        _ => not_payable("not_payable"),
    }
}
