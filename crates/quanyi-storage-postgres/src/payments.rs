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
/// any write (an event id already stored is a unique violation that undoes the statement); the
/// writes hang off the notice insert, so a notice that another transaction recorded first
/// (`ON CONFLICT DO NOTHING`) writes nothing else either.
///
/// The statement comes in shapes by what the write carries (cards to sell, a job): a part that
/// is not needed is left out of the statement rather than switched off by a parameter, because
/// the server sets up every part of a statement on every call, used or not (on the order path,
/// payment with delivery sells cards and enqueues no job).
///
/// $1 notice tenant, $2 provider, $3 transaction id, $4 for reconciliation, $5 notice doc,
/// $6 has an order change, $7 order tenant, $8 order id, $9 expected version, $10 new version,
/// $11 status, $12 expires_at, $13 order doc, $14 the new version is newer, $15..$19 events,
/// $20 the order's updated_at; then, when the shape has them, now, the cards to sell, and the
/// job's id, tenant, kind, dedupe key, payload and run_at, numbered on in that order.
fn record_sql(shape: RecordShape) -> String {
    let mut next = 21;
    let mut take = |n: usize| {
        let first = next;
        next += n;
        first
    };
    let now = (shape.sell || shape.job).then(|| take(1));
    let cards = shape.sell.then(|| take(1));
    let job = shape.job.then(|| take(6));
    let mut sql = String::from(
        "WITH prior AS (SELECT doc FROM payment_notices \
                        WHERE tenant = $1 AND provider = $2 AND transaction_id = $3), \
         cur AS (SELECT version FROM orders WHERE $6 AND tenant = $7 AND id = $8 FOR UPDATE), ",
    );
    if let Some(c) = cards {
        sql += &format!(
            "held AS (SELECT id FROM cards \
                      WHERE id = ANY(${c}) AND tenant = $7 AND order_id = $8 AND state <> 'available' \
                      FOR UPDATE), "
        );
    }
    sql += "ok AS (SELECT NOT EXISTS (SELECT 1 FROM prior) \
                      AND (NOT $6 OR COALESCE((SELECT version FROM cur) = $9, false)) \
                      AND $14::boolean";
    if let Some(c) = cards {
        sql += &format!(" AND (SELECT count(*) FROM held) = cardinality(${c}::uuid[])");
    }
    sql += " AS v), \
         notice AS ( \
             INSERT INTO payment_notices (tenant, provider, transaction_id, reconcile, doc) \
             SELECT $1, $2, $3, $4, $5 FROM ok WHERE ok.v \
             ON CONFLICT DO NOTHING \
             RETURNING 1), \
         paid AS ( \
             UPDATE orders SET version = $10, status = $11, expires_at = $12, doc = $13, \
                    updated_at = $20 \
             WHERE $6 AND tenant = $7 AND id = $8 AND EXISTS (SELECT 1 FROM notice)), ";
    if let (Some(_), Some(now)) = (cards, now) {
        sql += &format!(
            "sold AS ( \
                 UPDATE cards SET state = 'sold', reserved_until = NULL, \
                        sold_at = CASE WHEN state = 'sold' THEN sold_at ELSE ${now} END \
                 WHERE id IN (SELECT id FROM held) AND EXISTS (SELECT 1 FROM notice)), "
        );
    }
    sql += &format!(
        "ev AS ({})",
        insert_events_sql(15, "EXISTS (SELECT 1 FROM notice)")
    );
    if let (Some(j), Some(now)) = (job, now) {
        let (id, tenant, kind, dedupe, payload, run_at) = (j, j + 1, j + 2, j + 3, j + 4, j + 5);
        sql += &format!(
            ", job AS ( \
                 INSERT INTO jobs (id, tenant, kind, dedupe_key, payload, run_at, status, attempts, created_at) \
                 SELECT ${id}, ${tenant}, ${kind}, ${dedupe}, ${payload}, ${run_at}, 'queued', 0, ${now} \
                 WHERE EXISTS (SELECT 1 FROM notice) \
                 ON CONFLICT ON CONSTRAINT jobs_dedupe_key DO NOTHING)"
        );
    }
    sql += " SELECT (SELECT doc FROM prior), (SELECT version FROM cur), ";
    sql += if cards.is_some() {
        "ARRAY(SELECT id FROM held), "
    } else {
        "'{}'::uuid[], "
    };
    sql += "EXISTS (SELECT 1 FROM notice)";
    sql
}

/// Which parts a [`record_sql`] statement has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RecordShape {
    sell: bool,
    job: bool,
}

impl RecordShape {
    const ALL: [RecordShape; 4] = [
        RecordShape {
            sell: false,
            job: false,
        },
        RecordShape {
            sell: true,
            job: false,
        },
        RecordShape {
            sell: false,
            job: true,
        },
        RecordShape {
            sell: true,
            job: true,
        },
    ];

    fn index(self) -> usize {
        usize::from(self.sell) + 2 * usize::from(self.job)
    }

    /// The statement of this shape.
    fn sql(self) -> &'static str {
        static SQL: LazyLock<[String; 4]> = LazyLock::new(|| RecordShape::ALL.map(record_sql));
        &SQL[self.index()]
    }
}

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
        let notice_tenant = notice.tenant.as_str();
        let shape = RecordShape {
            sell: !sell.is_empty(),
            job: has_job,
        };
        let (provider, transaction_id) = (&*notice.provider, &*notice.transaction_id);
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![
            &notice_tenant,
            &provider,
            &transaction_id,
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
            &ev.ids,
            &ev.tenants,
            &ev.types,
            &ev.aggregates,
            &ev.docs,
            &updated,
        ];
        if shape.sell || shape.job {
            params.push(&now);
        }
        if shape.sell {
            params.push(&sell);
        }
        if shape.job {
            params.extend([
                &job_id as &(dyn tokio_postgres::types::ToSql + Sync),
                &job_tenant,
                &kind,
                &dedupe,
                &payload,
                &run_at,
            ]);
        }
        let conn = self.conn().await?;
        let stmt = conn.prepare(shape.sql()).await?;
        let row = conn
            .client()
            .query_one(&stmt, &params)
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
