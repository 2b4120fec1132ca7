//! Payment notices, recorded once with the order change, card sales and job they carry, and
//! the conflicting repeats kept for reconciliation.
//!
//! Both live in `payment_notices`, keyed by tenant, provider, transaction id and claim: a notice
//! recorded by `record_payment` has the claim `''` (its transaction's row); a conflicting repeat
//! has the claim it makes (order and amount), so it is kept once per claim. A notice kept for
//! reconciliation takes the next `seq` of its tenant's notices to reconcile (through their
//! partial index), which is the order they are listed in; an applied notice has none.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use quanyi_core::{CardId, TenantId};
use quanyi_storage::{
    CONFLICTING_REPEAT, Error, NoticeDisposition, PaymentNotice, PaymentStore, PaymentWrite,
    RecordOutcome, Result,
};
use rusqlite::{OptionalExtension, Transaction, params};

use crate::SqliteStore;
use crate::cards::sell_held_by;
use crate::convert::{SqlResult, from_doc, limit, to_doc, ts};
use crate::jobs::{JobRow, enqueue, job_row};
use crate::orders::{ChangeRow, apply_order_change, change_row, check_order_change};

/// Inserts an applied notice (`?1` to `?4`: tenant, provider, transaction id, claim; `?5` the
/// document). Applied notices have no place among the notices to reconcile.
pub(crate) const INSERT_APPLIED_NOTICE: &str = "INSERT INTO payment_notices
         (tenant, provider, transaction_id, claim, reconcile, seq, doc)
     VALUES (?1, ?2, ?3, ?4, 0, NULL, ?5)";

/// Inserts a notice kept for reconciliation (parameters as [`INSERT_APPLIED_NOTICE`]): it takes
/// the next `seq` of its tenant's notices to reconcile, through their partial index.
pub(crate) const INSERT_RECONCILE_NOTICE: &str = "INSERT INTO payment_notices
         (tenant, provider, transaction_id, claim, reconcile, seq, doc)
     VALUES (?1, ?2, ?3, ?4, 1,
             (SELECT COALESCE(MAX(seq), 0) + 1 FROM payment_notices
              WHERE tenant = ?1 AND reconcile = 1),
             ?5)";

/// Inserts a notice, applied or kept for reconciliation.
fn insert_notice(
    tx: &Transaction<'_>,
    notice: [&str; 4],
    reconcile: bool,
    doc: &str,
) -> Result<()> {
    let sql = if reconcile {
        INSERT_RECONCILE_NOTICE
    } else {
        INSERT_APPLIED_NOTICE
    };
    let [tenant, provider, transaction_id, claim] = notice;
    tx.prepare_cached(sql)
        .db()?
        .execute(params![tenant, provider, transaction_id, claim, doc])
        .db()?;
    Ok(())
}

/// The document of the notice recorded for a transaction, if any.
fn recorded(
    tx: &Transaction<'_>,
    tenant: &str,
    provider: &str,
    transaction_id: &str,
) -> Result<Option<String>> {
    tx.prepare_cached(
        "SELECT doc FROM payment_notices
         WHERE tenant = ?1 AND provider = ?2 AND transaction_id = ?3 AND claim = ''",
    )
    .db()?
    .query_row(params![tenant, provider, transaction_id], |r| r.get(0))
    .optional()
    .db()
}

/// What a conflicting repeat claims, as its unique key: the order and the exact amount.
fn claim(notice: &PaymentNotice) -> String {
    let currency = notice.amount.currency();
    format!(
        "{} {} {} {}",
        notice.order,
        notice.amount.minor(),
        currency.code(),
        currency.exponent()
    )
}

#[async_trait]
impl PaymentStore for SqliteStore {
    async fn record_payment(
        &self,
        write: PaymentWrite<'_>,
        now: DateTime<Utc>,
    ) -> Result<RecordOutcome> {
        let notice = write.notice;
        let tenant = notice.tenant.as_str().to_owned();
        let provider = notice.provider.clone();
        let transaction_id = notice.transaction_id.clone();
        let reconcile = !matches!(notice.disposition, NoticeDisposition::Applied);
        let doc = to_doc(notice, "payment notice")?;
        let change: Option<ChangeRow> = write.change.as_ref().map(change_row).transpose()?;
        let sell: Vec<CardId> = write.sell.to_vec();
        let job: Option<JobRow> = write.job.map(|j| job_row(j, now)).transpose()?;
        let now = ts(now)?;
        self.pool
            .write(move |tx| {
                if let Some(first) = recorded(tx, &tenant, &provider, &transaction_id)? {
                    return Ok(RecordOutcome::Duplicate(from_doc(
                        &first,
                        "payment notice",
                    )?));
                }
                let checked = change
                    .as_ref()
                    .map(|change| check_order_change(tx, change))
                    .transpose()?;
                if !sell.is_empty() {
                    let Some(change) = &change else {
                        return Err(Error::Invalid("cards sold without an order change".into()));
                    };
                    // A card not held by the order fails the call, and the transaction (with
                    // the cards sold before it) is rolled back.
                    sell_held_by(tx, &change.order.tenant, change.order.id, &sell, now)?;
                }
                if let (Some(change), Some(checked)) = (&change, checked) {
                    apply_order_change(tx, change, checked)?;
                }
                if let Some(job) = &job {
                    enqueue(tx, job)?;
                }
                insert_notice(
                    tx,
                    [&tenant, &provider, &transaction_id, ""],
                    reconcile,
                    &doc,
                )?;
                Ok(RecordOutcome::Recorded)
            })
            .await
    }

    async fn payment_notice(
        &self,
        tenant: &TenantId,
        provider: &str,
        transaction_id: &str,
    ) -> Result<Option<PaymentNotice>> {
        let tenant = tenant.as_str().to_owned();
        let provider = provider.to_owned();
        let transaction_id = transaction_id.to_owned();
        self.pool
            .read(move |tx| {
                recorded(tx, &tenant, &provider, &transaction_id)?
                    .map(|d| from_doc(&d, "payment notice"))
                    .transpose()
            })
            .await
    }

    async fn flag_conflicting_notice(&self, notice: &PaymentNotice) -> Result<bool> {
        let tenant = notice.tenant.as_str().to_owned();
        let provider = notice.provider.clone();
        let transaction_id = notice.transaction_id.clone();
        let (order, amount) = (notice.order, notice.amount);
        let claim = claim(notice);
        let mut kept = notice.clone();
        kept.disposition = NoticeDisposition::Reconcile {
            reason: CONFLICTING_REPEAT.to_owned(),
        };
        let doc = to_doc(&kept, "payment notice")?;
        self.pool
            .write(move |tx| {
                let first = recorded(tx, &tenant, &provider, &transaction_id)?
                    .ok_or_else(|| Error::not_found("payment notice", &transaction_id))?;
                let first: PaymentNotice = from_doc(&first, "payment notice")?;
                if first.order == order && first.amount == amount {
                    return Err(Error::Invalid(
                        "the notice repeats the recorded order and amount".into(),
                    ));
                }
                let kept_before = tx
                    .prepare_cached(
                        "SELECT 1 FROM payment_notices
                         WHERE tenant = ?1 AND provider = ?2 AND transaction_id = ?3
                           AND claim = ?4",
                    )
                    .db()?
                    .exists(params![tenant, provider, transaction_id, claim])
                    .db()?;
                if kept_before {
                    return Ok(false);
                }
                insert_notice(
                    tx,
                    [&tenant, &provider, &transaction_id, &claim],
                    true,
                    &doc,
                )?;
                Ok(true)
            })
            .await
    }

    async fn notices_to_reconcile(
        &self,
        tenant: &TenantId,
        limit_to: usize,
    ) -> Result<Vec<PaymentNotice>> {
        let tenant = tenant.as_str().to_owned();
        let n = limit(limit_to);
        self.pool
            .read(move |tx| {
                let docs: Vec<String> = tx
                    .prepare_cached(
                        "SELECT doc FROM payment_notices WHERE tenant = ?1 AND reconcile = 1
                         ORDER BY seq LIMIT ?2",
                    )
                    .db()?
                    .query_map(params![tenant, n], |r| r.get(0))
                    .db()?
                    .collect::<rusqlite::Result<_>>()
                    .db()?;
                docs.iter().map(|d| from_doc(d, "payment notice")).collect()
            })
            .await
    }
}
