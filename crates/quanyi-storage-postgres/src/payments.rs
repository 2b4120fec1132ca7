//! `PaymentStore`: notices keyed by (tenant, provider, transaction id), and `record_payment` as
//! one statement.

use std::sync::LazyLock;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use quanyi_core::{CardId, TenantId};
use quanyi_storage::{
    Error, NoticeDisposition, PaymentNotice, PaymentStore, PaymentWrite, RecordOutcome, Result,
};
use uuid::Uuid;

use crate::PgStore;
use crate::codec::{
    EventColumns, from_json, get, insert_events_sql, limit, micros, to_i64, to_json,
};
use crate::error::{db, with_id};
use crate::orders::change_error;

/// Records a notice with everything it changes, in one statement. Every check (the notice is
/// new, the order's version, the new version, the sold cards held by the order) comes before
/// any write (an event id already stored is a unique violation that undoes the statement); the writes hang off the notice insert, so a notice that another
/// transaction recorded first (`ON CONFLICT DO NOTHING`) writes nothing else either.
///
/// $1 notice tenant, $2 provider, $3 transaction id, $4 for reconciliation, $5 notice doc,
/// $6 has an order change, $7 order tenant, $8 order id, $9 expected version, $10 new version,
/// $11 status, $12 expires_at, $13 order doc, $14 the new version is newer, $15 cards to sell,
/// $16 now, $17..$21 events, $22 has a job, $23 job id, $24 job tenant, $25 kind,
/// $26 dedupe key, $27 payload, $28 run_at, $29 the order's updated_at.
static RECORD: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH prior AS (SELECT doc FROM payment_notices \
                        WHERE tenant = $1 AND provider = $2 AND transaction_id = $3), \
         cur AS (SELECT version FROM orders WHERE $6 AND tenant = $7 AND id = $8 FOR UPDATE), \
         held AS (SELECT id FROM cards \
                  WHERE id = ANY($15) AND tenant = $7 AND order_id = $8 AND state <> 'available' \
                  FOR UPDATE), \
         ok AS (SELECT NOT EXISTS (SELECT 1 FROM prior) \
                   AND (NOT $6 OR COALESCE((SELECT version FROM cur) = $9, false)) \
                   AND $14::boolean \
                   AND (SELECT count(*) FROM held) = cardinality($15::uuid[]) AS v), \
         notice AS ( \
             INSERT INTO payment_notices (tenant, provider, transaction_id, reconcile, doc) \
             SELECT $1, $2, $3, $4, $5 FROM ok WHERE ok.v \
             ON CONFLICT DO NOTHING \
             RETURNING 1), \
         paid AS ( \
             UPDATE orders SET version = $10, status = $11, expires_at = $12, doc = $13, \
                    updated_at = $29 \
             WHERE $6 AND tenant = $7 AND id = $8 AND EXISTS (SELECT 1 FROM notice)), \
         sold AS ( \
             UPDATE cards SET state = 'sold', reserved_until = NULL, \
                    sold_at = CASE WHEN state = 'sold' THEN sold_at ELSE $16 END \
             WHERE id IN (SELECT id FROM held) AND EXISTS (SELECT 1 FROM notice)), \
         ev AS ({}), \
         job AS ( \
             INSERT INTO jobs (id, tenant, kind, dedupe_key, payload, run_at, status, attempts, created_at) \
             SELECT $23, $24, $25, $26, $27, $28, 'queued', 0, $16 \
             WHERE $22 AND EXISTS (SELECT 1 FROM notice) \
             ON CONFLICT ON CONSTRAINT jobs_dedupe_key DO NOTHING) \
         SELECT (SELECT doc FROM prior), (SELECT version FROM cur), ARRAY(SELECT id FROM held), \
                EXISTS (SELECT 1 FROM notice)",
        insert_events_sql(17, "EXISTS (SELECT 1 FROM notice)")
    )
});

const NOTICE: &str = "SELECT doc FROM payment_notices \
                      WHERE tenant = $1 AND provider = $2 AND transaction_id = $3";
const TO_RECONCILE: &str = "SELECT doc FROM payment_notices \
                            WHERE tenant = $1 AND reconcile ORDER BY seq LIMIT $2";

impl PgStore {
    async fn notice_doc(
        &self,
        tenant: &TenantId,
        provider: &str,
        transaction_id: &str,
    ) -> Result<Option<PaymentNotice>> {
        let conn = self.conn().await?;
        let stmt = conn.prepare(NOTICE).await?;
        let row = conn
            .client()
            .query_opt(&stmt, &[&tenant.as_str(), &provider, &transaction_id])
            .await
            .map_err(db)?;
        row.map(|r| from_json(get::<&str>(&r, 0)?, "payment notice"))
            .transpose()
    }
}

#[async_trait]
impl PaymentStore for PgStore {
    async fn record_payment(
        &self,
        write: PaymentWrite<'_>,
        now: DateTime<Utc>,
    ) -> Result<RecordOutcome> {
        let notice = write.notice;
        if !write.sell.is_empty() && write.change.is_none() {
            // Malformed, unless the notice is a repeat (which writes nothing anyway).
            return match self
                .notice_doc(&notice.tenant, &notice.provider, &notice.transaction_id)
                .await?
            {
                Some(first) => Ok(RecordOutcome::Duplicate(first)),
                None => Err(Error::Invalid("cards sold without an order change".into())),
            };
        }
        let doc = to_json(notice, "payment notice")?;
        let reconcile = !matches!(notice.disposition, NoticeDisposition::Applied);
        let change = write.change.as_ref();
        let has_change = change.is_some();
        let updated = change.map_or(0, |c| micros(c.order.updated_at()));
        let (order_tenant, order_id, expected, version, status, expires, order_doc, newer) =
            match change {
                Some(c) => (
                    c.order.tenant().as_str(),
                    *c.order.id().as_uuid(),
                    to_i64(c.expected_version, "order version")?,
                    to_i64(c.order.version(), "order version")?,
                    c.order.status().as_str(),
                    micros(c.order.expires_at()),
                    to_json(c.order, "order")?,
                    c.order.version() > c.expected_version,
                ),
                None => ("", Uuid::nil(), 0, 0, "", 0, String::new(), true),
            };
        let mut sell: Vec<Uuid> = write.sell.iter().map(|c| *c.as_uuid()).collect();
        sell.sort_unstable();
        sell.dedup();
        let ev = EventColumns::new(change.map_or(&[][..], |c| c.events))?;
        let has_job = write.job.is_some();
        let (job_id, job_tenant, kind, dedupe, payload, run_at) = match write.job {
            Some(j) => (
                *j.id.as_uuid(),
                j.tenant.as_str(),
                j.kind.as_str(),
                j.dedupe_key.as_str(),
                to_json(&j.payload, "job payload")?,
                micros(j.run_at),
            ),
            None => (Uuid::nil(), "", "", "", String::new(), 0),
        };
        let now = micros(now);
        let conn = self.conn().await?;
        let stmt = conn.prepare(&RECORD).await?;
        let row = conn
            .client()
            .query_one(
                &stmt,
                &[
                    &notice.tenant.as_str(),
                    &notice.provider,
                    &notice.transaction_id,
                    &reconcile,
                    &doc,
                    &has_change,
                    &order_tenant,
                    &order_id,
                    &expected,
                    &version,
                    &status,
                    &expires,
                    &order_doc,
                    &newer,
                    &sell,
                    &now,
                    &ev.ids,
                    &ev.tenants,
                    &ev.types,
                    &ev.aggregates,
                    &ev.docs,
                    &has_job,
                    &job_id,
                    &job_tenant,
                    &kind,
                    &dedupe,
                    &payload,
                    &run_at,
                    &updated,
                ],
            )
            .await
            .map_err(|e| with_id(db(e), &notice.transaction_id))?;
        drop(conn);
        if let Some(first) = get::<Option<&str>>(&row, 0)? {
            return Ok(RecordOutcome::Duplicate(from_json(
                first,
                "payment notice",
            )?));
        }
        if get::<bool>(&row, 3)? {
            return Ok(RecordOutcome::Recorded);
        }
        // Not written: a concurrent call may have recorded the same notice after this
        // statement's snapshot (it then also moved the order on). A repeat is not an error.
        if let Some(first) = self
            .notice_doc(&notice.tenant, &notice.provider, &notice.transaction_id)
            .await?
        {
            return Ok(RecordOutcome::Duplicate(first));
        }
        let current: Option<i64> = get(&row, 1)?;
        let held: Vec<Uuid> = get(&row, 2)?;

        if let Some(c) = change {
            let e = change_error(c.order, current, expected, newer);
            if !matches!(
                &e,
                Error::Conflict {
                    reason: "not written",
                    ..
                }
            ) {
                return Err(e);
            }
        }
        if let Some(missing) = sell.iter().find(|id| !held.contains(id)) {
            return Err(Error::conflict(
                "card",
                CardId::from_uuid(*missing),
                "not held by the order",
            ));
        }
        Err(Error::conflict(
            "payment notice",
            &notice.transaction_id,
            "not written",
        ))
    }

    async fn payment_notice(
        &self,
        tenant: &TenantId,
        provider: &str,
        transaction_id: &str,
    ) -> Result<Option<PaymentNotice>> {
        self.notice_doc(tenant, provider, transaction_id).await
    }

    async fn notices_to_reconcile(
        &self,
        tenant: &TenantId,
        max: usize,
    ) -> Result<Vec<PaymentNotice>> {
        let conn = self.conn().await?;
        let stmt = conn.prepare(TO_RECONCILE).await?;
        let rows = conn
            .client()
            .query(&stmt, &[&tenant.as_str(), &limit(max)])
            .await
            .map_err(db)?;
        rows.iter()
            .map(|r| from_json(get::<&str>(r, 0)?, "payment notice"))
            .collect()
    }
}
