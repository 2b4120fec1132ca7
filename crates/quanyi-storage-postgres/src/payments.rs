//! `PaymentStore`: notices keyed by (tenant, provider, transaction id), and `record_payment` as
//! one statement.

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use quanyi_core::{CardId, OrderId, TenantId};
use quanyi_storage::{
    CONFLICTING_REPEAT, Error, NoticeDisposition, PaymentNotice, PaymentStore, PaymentWrite,
    RecordOutcome, Result,
};
use uuid::Uuid;

use crate::PgStore;
use crate::codec::{
    EventColumns, TaggedEvents, from_json, get, insert_events_sql, limit, micros, to_i64, to_json,
};
use crate::combine::{Pending, answer_all};
use crate::error::{Batch, db, with_id};
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
pub(crate) fn record_sql(shape: RecordShape) -> String {
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
            "held AS (SELECT id, sku, state, reserved_until FROM cards \
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
                 WHERE id = ANY(ARRAY(SELECT id FROM held)) AND EXISTS (SELECT 1 FROM notice)), \
             unhold AS ({}), ",
            crate::vault::unhold_sql(
                "$7",
                "SELECT sku, reserved_until, id FROM held WHERE state = 'reserved'",
                "EXISTS (SELECT 1 FROM notice)"
            )
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
pub(crate) struct RecordShape {
    sell: bool,
    job: bool,
}

impl RecordShape {
    pub(crate) const ALL: [RecordShape; 4] = [
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
/// The notices kept for reconciliation, recorded ones and conflicting repeats, in the order they
/// were kept (both tables draw `seq` from one sequence).
pub(crate) const TO_RECONCILE: &str = "SELECT doc FROM ( \
         (SELECT seq, doc FROM payment_notices WHERE tenant = $1 AND reconcile ORDER BY seq LIMIT $2) \
         UNION ALL \
         (SELECT seq, doc FROM conflicting_notices WHERE tenant = $1 ORDER BY seq LIMIT $2)) n \
     ORDER BY seq LIMIT $2";

/// Keeps a conflicting repeat once per claim: $1 tenant, $2 provider, $3 transaction id,
/// $4 order, $5 amount, $6 currency, $7 doc.
const FLAG_CONFLICT: &str = "INSERT INTO conflicting_notices \
         (tenant, provider, transaction_id, order_id, amount, currency, doc) \
     VALUES ($1, $2, $3, $4, $5, $6, $7) \
     ON CONFLICT ON CONSTRAINT conflicting_notices_pkey DO NOTHING";

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

/// A payment record with everything it binds owned, so that a batch task can carry it.
pub(crate) struct RecordRequest {
    notice_tenant: TenantId,
    provider: String,
    transaction_id: String,
    reconcile: bool,
    doc: String,
    /// The order change, when the notice pays an order.
    change: Option<ChangeColumns>,
    /// The cards to sell, sorted, without repeats.
    sell: Vec<Uuid>,
    ev: EventColumns,
    job: Option<JobColumns>,
    now: i64,
}

/// An order change as [`record_sql`] binds it.
struct ChangeColumns {
    tenant: String,
    order: OrderId,
    expected: i64,
    version: i64,
    status: &'static str,
    expires: i64,
    doc: String,
    newer: bool,
    updated: i64,
}

/// A job as [`record_sql`] binds it.
struct JobColumns {
    id: Uuid,
    tenant: String,
    kind: String,
    dedupe_key: String,
    payload: String,
    run_at: i64,
}

impl RecordRequest {
    fn new(write: &PaymentWrite<'_>, now: DateTime<Utc>) -> Result<Self> {
        let notice = write.notice;
        let change = write
            .change
            .as_ref()
            .map(|c| {
                Ok::<_, Error>(ChangeColumns {
                    tenant: c.order.tenant().as_str().to_owned(),
                    order: c.order.id(),
                    expected: to_i64(c.expected_version, "order version")?,
                    version: to_i64(c.order.version(), "order version")?,
                    status: c.order.status().as_str(),
                    expires: micros(c.order.expires_at()),
                    doc: to_json(c.order, "order")?,
                    newer: c.order.version() > c.expected_version,
                    updated: micros(c.order.updated_at()),
                })
            })
            .transpose()?;
        let mut sell: Vec<Uuid> = write.sell.iter().map(|c| *c.as_uuid()).collect();
        sell.sort_unstable();
        sell.dedup();
        let job = write
            .job
            .map(|j| {
                Ok::<_, Error>(JobColumns {
                    id: *j.id.as_uuid(),
                    tenant: j.tenant.as_str().to_owned(),
                    kind: j.kind.clone(),
                    dedupe_key: j.dedupe_key.clone(),
                    payload: to_json(&j.payload, "job payload")?,
                    run_at: micros(j.run_at),
                })
            })
            .transpose()?;
        Ok(RecordRequest {
            notice_tenant: notice.tenant.clone(),
            provider: notice.provider.to_string(),
            transaction_id: notice.transaction_id.to_string(),
            reconcile: !matches!(notice.disposition, NoticeDisposition::Applied),
            doc: to_json(notice, "payment notice")?,
            change,
            sell,
            ev: EventColumns::new(write.change.as_ref().map_or(&[][..], |c| c.events))?,
            job,
            now: micros(now),
        })
    }

    /// Whether a batch can carry it: it pays an order with a new version (the usual record).
    fn combinable(&self) -> bool {
        self.change.as_ref().is_some_and(|c| c.newer)
    }

    /// The order it pays, as a batch orders its locks.
    fn order_key(&self) -> Option<(&str, Uuid)> {
        self.change
            .as_ref()
            .map(|c| (c.tenant.as_str(), *c.order.as_uuid()))
    }
}

impl PgStore {
    /// Records one payment on its own with the [`record_sql`] statement of its shape.
    async fn record_alone(&self, r: &RecordRequest) -> Result<RecordOutcome> {
        let shape = RecordShape {
            sell: !r.sell.is_empty(),
            job: r.job.is_some(),
        };
        let has_change = r.change.is_some();
        let (order_tenant, order_id, expected, version, status, expires, order_doc, newer, updated) =
            match &r.change {
                Some(c) => (
                    c.tenant.as_str(),
                    *c.order.as_uuid(),
                    c.expected,
                    c.version,
                    c.status,
                    c.expires,
                    c.doc.as_str(),
                    c.newer,
                    c.updated,
                ),
                None => ("", Uuid::nil(), 0, 0, "", 0, "", true, 0),
            };
        let notice_tenant = r.notice_tenant.as_str();
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![
            &notice_tenant,
            &r.provider,
            &r.transaction_id,
            &r.reconcile,
            &r.doc,
            &has_change,
            &order_tenant,
            &order_id,
            &expected,
            &version,
            &status,
            &expires,
            &order_doc,
            &newer,
            &r.ev.ids,
            &r.ev.tenants,
            &r.ev.types,
            &r.ev.aggregates,
            &r.ev.docs,
            &updated,
        ];
        if shape.sell || shape.job {
            params.push(&r.now);
        }
        if shape.sell {
            params.push(&r.sell);
        }
        if let Some(j) = &r.job {
            params.extend([
                &j.id as &(dyn tokio_postgres::types::ToSql + Sync),
                &j.tenant,
                &j.kind,
                &j.dedupe_key,
                &j.payload,
                &j.run_at,
            ]);
        }
        let conn = self.conn().await?;
        let stmt = conn.prepare(shape.sql()).await?;
        let row = conn
            .client()
            .query_one(&stmt, &params)
            .await
            .map_err(|e| with_id(db(e), &r.transaction_id))?;
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
            .notice_doc(&r.notice_tenant, &r.provider, &r.transaction_id)
            .await?
        {
            return Ok(RecordOutcome::Duplicate(first));
        }
        let current: Option<i64> = get(&row, 1)?;
        let held: Vec<Uuid> = get(&row, 2)?;

        if let Some(c) = &r.change {
            let e = change_error(c.order, current, c.expected, c.newer);
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
        if let Some(missing) = r.sell.iter().find(|id| !held.contains(id)) {
            return Err(Error::conflict(
                "card",
                CardId::from_uuid(*missing),
                "not held by the order",
            ));
        }
        Err(Error::conflict(
            "payment notice",
            &r.transaction_id,
            "not written",
        ))
    }

    /// Runs a batch of payment records: one alone, more in one [`RECORD_BATCH`] statement.
    /// Requests the batch does not record go back to run alone (where a repeat is answered as
    /// such and a refusal gets its reason); so do all of them when the statement fails on the
    /// server (it then wrote nothing). A lost connection is the answer of every request.
    async fn record_batch(&self, batch: Vec<Pending<RecordRequest, RecordOutcome>>) {
        if let [_] = batch.as_slice() {
            for p in batch {
                let result = self.record_alone(&p.request).await;
                p.done(result);
            }
            return;
        }
        // One request per notice and per order: a second one runs alone, after this batch's
        // snapshot would have hidden the first one's write from it.
        let mut notices = HashSet::new();
        let mut orders = HashSet::new();
        let (batch, repeats): (Vec<_>, Vec<_>) = batch.into_iter().partition(|p| {
            let r = &p.request;
            let order = r.change.as_ref().map(|c| (c.tenant.clone(), c.order));
            notices.insert((
                r.notice_tenant.clone(),
                r.provider.clone(),
                r.transaction_id.clone(),
            )) && order.is_some_and(|o| orders.insert(o))
        });
        // Every batch locks its orders in key order, so two batches (of two stores) that pay
        // some of the same orders do not wait on each other in a cycle.
        let mut batch = batch;
        batch.sort_by(|a, b| a.request.order_key().cmp(&b.request.order_key()));
        let recorded = self.run_record_batch(&batch).await;
        answer_all(batch, recorded);
        // After the batch, so that each finds the write it repeats.
        for p in repeats {
            p.alone();
        }
    }

    async fn run_record_batch(
        &self,
        batch: &[Pending<RecordRequest, RecordOutcome>],
    ) -> std::result::Result<HashMap<i64, RecordOutcome>, Batch> {
        let mut c = RecordColumns::default();
        for (k, p) in (1i64..).zip(batch) {
            c.push(k, &p.request);
        }
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 29] = [
            &c.tenants,
            &c.providers,
            &c.transaction_ids,
            &c.reconcile,
            &c.docs,
            &c.order_tenants,
            &c.order_ids,
            &c.expected,
            &c.versions,
            &c.statuses,
            &c.expires,
            &c.order_docs,
            &c.updated,
            &c.now,
            &c.sell_k,
            &c.sell,
            &c.ev.k,
            &c.ev.ids,
            &c.ev.tenants,
            &c.ev.types,
            &c.ev.aggregates,
            &c.ev.docs,
            &c.job_k,
            &c.job_ids,
            &c.job_tenants,
            &c.job_kinds,
            &c.job_dedupe,
            &c.job_payloads,
            &c.job_run_at,
        ];
        let rows = self.batch_rows(&RECORD_BATCH, &params).await?;
        rows.iter()
            .map(|row| Ok((get::<i64>(row, 0)?, RecordOutcome::Recorded)))
            .collect::<Result<_>>()
            .map_err(Batch::Failed)
    }
}

/// The columns of a [`RECORD_BATCH`] call.
#[derive(Default)]
struct RecordColumns<'a> {
    tenants: Vec<&'a str>,
    providers: Vec<&'a str>,
    transaction_ids: Vec<&'a str>,
    reconcile: Vec<bool>,
    docs: Vec<&'a str>,
    order_tenants: Vec<&'a str>,
    order_ids: Vec<Uuid>,
    expected: Vec<i64>,
    versions: Vec<i64>,
    statuses: Vec<&'a str>,
    expires: Vec<i64>,
    order_docs: Vec<&'a str>,
    updated: Vec<i64>,
    now: Vec<i64>,
    sell_k: Vec<i64>,
    sell: Vec<Uuid>,
    ev: TaggedEvents<'a>,
    job_k: Vec<i64>,
    job_ids: Vec<Uuid>,
    job_tenants: Vec<&'a str>,
    job_kinds: Vec<&'a str>,
    job_dedupe: Vec<&'a str>,
    job_payloads: Vec<&'a str>,
    job_run_at: Vec<i64>,
}

impl<'a> RecordColumns<'a> {
    /// Adds request `k` (from 1); it has an order change (see [`RecordRequest::combinable`]).
    fn push(&mut self, k: i64, r: &'a RecordRequest) {
        self.tenants.push(r.notice_tenant.as_str());
        self.providers.push(&r.provider);
        self.transaction_ids.push(&r.transaction_id);
        self.reconcile.push(r.reconcile);
        self.docs.push(&r.doc);
        if let Some(c) = &r.change {
            self.order_tenants.push(&c.tenant);
            self.order_ids.push(*c.order.as_uuid());
            self.expected.push(c.expected);
            self.versions.push(c.version);
            self.statuses.push(c.status);
            self.expires.push(c.expires);
            self.order_docs.push(&c.doc);
            self.updated.push(c.updated);
        }
        self.now.push(r.now);
        self.sell_k.extend(std::iter::repeat_n(k, r.sell.len()));
        self.sell.extend(&r.sell);
        self.ev.push(k, &r.ev);
        if let Some(j) = &r.job {
            self.job_k.push(k);
            self.job_ids.push(j.id);
            self.job_tenants.push(&j.tenant);
            self.job_kinds.push(&j.kind);
            self.job_dedupe.push(&j.dedupe_key);
            self.job_payloads.push(&j.payload);
            self.job_run_at.push(j.run_at);
        }
    }
}

/// Records several notices, each paying a different order with a new version, in one
/// statement. Each request passes the checks of [`record_sql`] on its own (notice new, order at
/// the expected version, every card to sell held by the order), and only then writes its
/// notice; its order, cards, events and job hang off that notice insert, as in
/// [`record_sql`]. Returns the position (from 1) of each request recorded; the others wrote
/// nothing.
///
/// Per request: $1 notice tenant, $2 provider, $3 transaction id, $4 for reconciliation,
/// $5 notice doc, $6 order tenant, $7 order id, $8 expected version, $9 new version,
/// $10 status, $11 expires_at, $12 order doc, $13 updated_at, $14 now; cards to sell
/// $15 request, $16 card; events $17 request, $18..$22 id, tenant, aggregate type, aggregate id,
/// doc; jobs $23 request, $24..$29 id, tenant, kind, dedupe key, payload, run_at.
pub(crate) static RECORD_BATCH: LazyLock<String> = LazyLock::new(|| {
    "WITH n AS ( \
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::boolean[], $5::text[], \
                              $6::text[], $7::uuid[], $8::bigint[], $9::bigint[], $10::text[], \
                              $11::bigint[], $12::text[], $13::bigint[], $14::bigint[]) \
              WITH ORDINALITY AS n(tenant, provider, transaction_id, reconcile, doc, otenant, oid, \
                                   expected, version, status, expires_at, odoc, updated_at, now, k)), \
     s AS (SELECT * FROM unnest($15::bigint[], $16::uuid[]) AS s(k, id)), \
     cur AS ( \
         SELECT n.k, o.version FROM n \
         CROSS JOIN LATERAL (SELECT version FROM orders \
                             WHERE tenant = n.otenant AND id = n.oid FOR UPDATE) o), \
     held AS ( \
         SELECT s.k, n.otenant AS tenant, c.id, c.sku, c.state, c.reserved_until FROM s \
         JOIN n ON n.k = s.k \
         CROSS JOIN LATERAL (SELECT id, sku, state, reserved_until FROM cards \
                             WHERE id = s.id AND tenant = n.otenant AND order_id = n.oid \
                               AND state <> 'available' \
                             FOR UPDATE) c), \
     checked AS ( \
         SELECT n.k, \
                (SELECT EXISTS (SELECT 1 FROM payment_notices p WHERE p.tenant = n.tenant \
                                AND p.provider = n.provider \
                                AND p.transaction_id = n.transaction_id)) AS seen \
         FROM n), \
     ok AS ( \
         SELECT n.k FROM n JOIN checked USING (k) \
         WHERE NOT checked.seen \
           AND EXISTS (SELECT 1 FROM cur WHERE cur.k = n.k AND cur.version = n.expected) \
           AND (SELECT count(*) FROM held h WHERE h.k = n.k) = (SELECT count(*) FROM s WHERE s.k = n.k)), \
     notice AS ( \
         INSERT INTO payment_notices (tenant, provider, transaction_id, reconcile, doc) \
         SELECT n.tenant, n.provider, n.transaction_id, n.reconcile, n.doc FROM n \
         WHERE n.k IN (SELECT k FROM ok) ORDER BY n.k \
         ON CONFLICT DO NOTHING \
         RETURNING tenant, provider, transaction_id), \
     done AS ( \
         SELECT n.k, n.otenant, n.oid FROM n \
         JOIN notice x ON x.tenant = n.tenant AND x.provider = n.provider \
                      AND x.transaction_id = n.transaction_id), \
     paid AS ( \
         UPDATE orders o SET version = n.version, status = n.status, expires_at = n.expires_at, \
                doc = n.odoc, updated_at = n.updated_at \
         FROM n \
         WHERE n.k IN (SELECT k FROM done) AND o.tenant = n.otenant AND o.id = n.oid), \
     sold AS ( \
         UPDATE cards c SET state = 'sold', reserved_until = NULL, \
                sold_at = CASE WHEN c.state = 'sold' THEN c.sold_at ELSE x.now END \
         FROM (SELECT h.id, n.now FROM held h JOIN n ON n.k = h.k \
               WHERE h.k IN (SELECT k FROM done)) x \
         WHERE c.id = ANY(ARRAY(SELECT h.id FROM held h WHERE h.k IN (SELECT k FROM done))) \
           AND c.id = x.id), \
     unhold AS ( \
         DELETE FROM held_cards hc \
         WHERE (hc.tenant, hc.sku, hc.until, hc.id) IN \
               (SELECT tenant, sku, reserved_until, id FROM held \
                WHERE state = 'reserved' AND k IN (SELECT k FROM done))), \
     ev AS ( \
         INSERT INTO events (id, tenant, aggregate_type, aggregate_id, doc) \
         SELECT e.id, e.tenant, e.aggregate_type, e.aggregate_id, e.doc \
         FROM unnest($17::bigint[], $18::uuid[], $19::text[], $20::text[], $21::text[], $22::text[]) \
              WITH ORDINALITY AS e(k, id, tenant, aggregate_type, aggregate_id, doc, ord) \
         WHERE e.k IN (SELECT k FROM done) ORDER BY e.ord), \
     job AS ( \
         INSERT INTO jobs (id, tenant, kind, dedupe_key, payload, run_at, status, attempts, created_at) \
         SELECT j.id, j.tenant, j.kind, j.dedupe_key, j.payload, j.run_at, 'queued', 0, n.now \
         FROM unnest($23::bigint[], $24::uuid[], $25::text[], $26::text[], $27::text[], $28::text[], \
                     $29::bigint[]) AS j(k, id, tenant, kind, dedupe_key, payload, run_at) \
         JOIN n ON n.k = j.k \
         WHERE j.k IN (SELECT k FROM done) ORDER BY j.k \
         ON CONFLICT ON CONSTRAINT jobs_dedupe_key DO NOTHING) \
     SELECT k FROM done"
        .to_owned()
});

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
        let request = RecordRequest::new(&write, now)?;
        if !request.combinable() {
            return self.record_alone(&request).await;
        }
        self.combined(
            &self.shared.payments,
            request,
            |store, batch| async move { store.record_batch(batch).await },
            |request| async move { self.record_alone(&request).await },
        )
        .await
    }

    async fn payment_notice(
        &self,
        tenant: &TenantId,
        provider: &str,
        transaction_id: &str,
    ) -> Result<Option<PaymentNotice>> {
        self.notice_doc(tenant, provider, transaction_id).await
    }

    async fn flag_conflicting_notice(&self, notice: &PaymentNotice) -> Result<bool> {
        // The first record never changes once stored, so it can be compared outside a
        // transaction.
        let first = self
            .notice_doc(&notice.tenant, &notice.provider, &notice.transaction_id)
            .await?
            .ok_or_else(|| Error::not_found("payment notice", &notice.transaction_id))?;
        if first.order == notice.order && first.amount == notice.amount {
            return Err(Error::Invalid(
                "the notice repeats the recorded order and amount".into(),
            ));
        }
        let mut kept = notice.clone();
        kept.disposition = NoticeDisposition::Reconcile {
            reason: CONFLICTING_REPEAT.to_owned(),
        };
        let doc = to_json(&kept, "payment notice")?;
        let conn = self.conn().await?;
        let stmt = conn.prepare(FLAG_CONFLICT).await?;
        let written = conn
            .client()
            .execute(
                &stmt,
                &[
                    &notice.tenant.as_str(),
                    &&*notice.provider,
                    &&*notice.transaction_id,
                    notice.order.as_uuid(),
                    &notice.amount.minor(),
                    &notice.amount.currency().code(),
                    &doc,
                ],
            )
            .await
            .map_err(db)?;
        Ok(written == 1)
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
