//! The payment-notice port of the memory store.

use super::*;

#[async_trait]
impl PaymentStore for MemoryStore {
    async fn record_payment(
        &self,
        write: PaymentWrite<'_>,
        now: DateTime<Utc>,
    ) -> Result<RecordOutcome> {
        let notice = write.notice;
        let key = (
            notice.tenant.clone(),
            notice.provider.clone(),
            notice.transaction_id.clone(),
        );
        let staged = write.change.as_ref().map(|c| Staged::of(c.order, c.events));
        let mut s = self.state.lock();
        if let Some(first) = s.notices.get(&key) {
            return Ok(RecordOutcome::Duplicate(first.notice(&key)));
        }
        if let Some(change) = &write.change {
            s.check_order_change(change)?;
        }
        if !write.sell.is_empty() {
            let Some(change) = &write.change else {
                return Err(Error::Invalid("cards sold without an order change".into()));
            };
            let order = change.order.id();
            for id in write.sell {
                let held = s.cards.get(id).is_some_and(|c| {
                    &c.tenant == change.order.tenant() && c.state.holder() == Some(order)
                });
                if !held {
                    return Err(Error::conflict("card", id, "not held by the order"));
                }
            }
            for id in write.sell {
                let unsold = s
                    .cards
                    .get(id)
                    .is_some_and(|c| !matches!(c.state, CardState::Sold { .. }));
                if unsold {
                    s.set_card_state(*id, CardState::Sold { order, at: now });
                }
            }
        }
        let replaced = staged.and_then(|staged| s.apply_order_change(staged));
        if let Some(job) = write.job {
            s.enqueue(job, now);
        }
        if !matches!(notice.disposition, crate::NoticeDisposition::Applied) {
            s.to_reconcile.push(Reconcile::Recorded(key.clone()));
        }
        s.notices.insert(key, NoticeRow::of(notice));
        drop(s);
        drop(replaced);
        Ok(RecordOutcome::Recorded)
    }

    async fn payment_notice(
        &self,
        tenant: &TenantId,
        provider: &str,
        transaction_id: &str,
    ) -> Result<Option<PaymentNotice>> {
        let key: NoticeKey = (
            tenant.clone(),
            Arc::from(provider),
            Arc::from(transaction_id),
        );
        Ok(self
            .state
            .lock()
            .notices
            .get_key_value(&key)
            .map(|(key, row)| row.notice(key)))
    }

    async fn flag_conflicting_notice(&self, notice: &PaymentNotice) -> Result<bool> {
        let key: NoticeKey = (
            notice.tenant.clone(),
            notice.provider.clone(),
            notice.transaction_id.clone(),
        );
        let mut s = self.state.lock();
        let first = s
            .notices
            .get(&key)
            .ok_or_else(|| Error::not_found("payment notice", &notice.transaction_id))?;
        if first.order == notice.order && first.amount == notice.amount {
            return Err(Error::Invalid(
                "the notice repeats the recorded order and amount".into(),
            ));
        }
        let seen = s.to_reconcile.iter().any(|r| match r {
            Reconcile::Conflict(n) => {
                n.tenant == notice.tenant
                    && n.provider == notice.provider
                    && n.transaction_id == notice.transaction_id
                    && n.order == notice.order
                    && n.amount == notice.amount
            }
            Reconcile::Recorded(_) => false,
        });
        if seen {
            return Ok(false);
        }
        let mut kept = notice.clone();
        kept.disposition = NoticeDisposition::Reconcile {
            reason: CONFLICTING_REPEAT.to_owned(),
        };
        s.to_reconcile.push(Reconcile::Conflict(kept));
        Ok(true)
    }

    async fn notices_to_reconcile(
        &self,
        tenant: &TenantId,
        limit: usize,
    ) -> Result<Vec<PaymentNotice>> {
        let s = self.state.lock();
        Ok(s.to_reconcile
            .iter()
            .filter_map(|r| match r {
                Reconcile::Recorded(k) if &k.0 == tenant => {
                    s.notices.get(k).map(|row| row.notice(k))
                }
                Reconcile::Conflict(n) if &n.tenant == tenant => Some(n.clone()),
                _ => None,
            })
            .take(limit)
            .collect())
    }
}
