//! `JobStore`: jobs with leases; claims take due rows with `FOR UPDATE SKIP LOCKED`.

use std::sync::LazyLock;

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use quanyi_core::{JobId, TenantId};
use quanyi_storage::{Error, Job, JobStatus, JobStore, NewJob, Result};
use tokio_postgres::Row;
use uuid::Uuid;

use crate::PgStore;
use crate::codec::{from_json, from_micros, get, limit, micros, tenant, to_json};
use crate::error::{corrupt, db, with_id};

const JOB_COLUMNS: &str = "id, tenant, kind, dedupe_key, payload, run_at, status, worker, \
                           lease_until, dead_reason, attempts, last_error, created_at";

/// $1 id, $2 tenant, $3 kind, $4 dedupe key, $5 payload, $6 run_at, $7 now.
const ENQUEUE: &str = "WITH ins AS ( \
         INSERT INTO jobs (id, tenant, kind, dedupe_key, payload, run_at, status, attempts, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, 'queued', 0, $7) \
         ON CONFLICT ON CONSTRAINT jobs_dedupe_key DO NOTHING \
         RETURNING id) \
     SELECT id FROM ins \
     UNION ALL \
     SELECT id FROM jobs WHERE tenant = $2 AND dedupe_key = $4 AND NOT EXISTS (SELECT 1 FROM ins)";
const BY_KEY: &str = "SELECT id FROM jobs WHERE tenant = $1 AND dedupe_key = $2";

/// $1 worker, $2 now, $3 lease until, $4 limit.
pub(crate) static CLAIM_DUE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH queued AS ( \
             SELECT id, run_at AS t FROM jobs \
             WHERE status = 'queued' AND run_at <= $2 AND kind = ANY($5) \
             ORDER BY run_at, id LIMIT $4 FOR UPDATE SKIP LOCKED), \
         leased AS ( \
             SELECT id, lease_until AS t FROM jobs \
             WHERE status = 'running' AND lease_until <= $2 AND kind = ANY($5) \
             ORDER BY lease_until, id LIMIT $4 FOR UPDATE SKIP LOCKED), \
         pick AS (SELECT id, t FROM queued UNION ALL SELECT id, t FROM leased ORDER BY t, id LIMIT $4) \
         UPDATE jobs j SET status = 'running', worker = $1, lease_until = $3, \
                attempts = LEAST(j.attempts + 1, 4294967295) \
         FROM pick WHERE j.id = pick.id \
         RETURNING {}, pick.t",
        prefixed("j.")
    )
});

/// $1 id, $2 worker, $3 now, $4 lease until.
static CLAIM_ONE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE jobs SET status = 'running', worker = $2, lease_until = $4, \
                attempts = LEAST(attempts + 1, 4294967295) \
         WHERE id = $1 AND ((status = 'queued' AND run_at <= $3) \
                            OR (status = 'running' AND lease_until <= $3)) \
         RETURNING {JOB_COLUMNS}"
    )
});

static BY_ID: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"));
static DEAD: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE tenant = $1 AND status = 'dead' ORDER BY id LIMIT $2"
    )
});

/// Changes a job the worker holds: `$1` id, `$2` worker, then the statement's own values.
fn held_update(set: &str) -> String {
    format!(
        "WITH cur AS (SELECT 1 FROM jobs WHERE id = $1), \
         upd AS (UPDATE jobs SET {set} WHERE id = $1 AND status = 'running' AND worker = $2 \
                 RETURNING 1) \
         SELECT EXISTS (SELECT 1 FROM cur), EXISTS (SELECT 1 FROM upd)"
    )
}

static HEARTBEAT: LazyLock<String> = LazyLock::new(|| held_update("lease_until = $3"));
static COMPLETE: LazyLock<String> =
    LazyLock::new(|| held_update("status = 'done', worker = NULL, lease_until = NULL"));
static RETRY: LazyLock<String> = LazyLock::new(|| {
    held_update(
        "status = 'queued', worker = NULL, lease_until = NULL, run_at = $3, last_error = $4",
    )
});
static DEAD_LETTER: LazyLock<String> = LazyLock::new(|| {
    held_update(
        "status = 'dead', worker = NULL, lease_until = NULL, dead_reason = $3, last_error = $3",
    )
});

fn prefixed(prefix: &str) -> String {
    JOB_COLUMNS
        .split(", ")
        .map(|c| format!("{prefix}{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A row of [`JOB_COLUMNS`].
fn job(row: &Row) -> Result<Job> {
    let status: &str = get(row, 6)?;
    let worker: Option<String> = get(row, 7)?;
    let lease_until: Option<i64> = get(row, 8)?;
    let dead_reason: Option<String> = get(row, 9)?;
    let status = match (status, worker, lease_until, dead_reason) {
        ("queued", ..) => JobStatus::Queued,
        ("running", Some(worker), Some(until), _) => JobStatus::Running {
            worker,
            lease_until: from_micros(until)?,
        },
        ("done", ..) => JobStatus::Done,
        ("dead", _, _, Some(reason)) => JobStatus::Dead { reason },
        (other, ..) => return Err(corrupt("job status", other)),
    };
    let attempts: i64 = get(row, 10)?;
    Ok(Job {
        id: JobId::from_uuid(get(row, 0)?),
        tenant: tenant(get(row, 1)?)?,
        kind: get(row, 2)?,
        dedupe_key: get(row, 3)?,
        payload: from_json(get::<&str>(row, 4)?, "job payload")?,
        run_at: from_micros(get(row, 5)?)?,
        status,
        attempts: u32::try_from(attempts).map_err(|_| corrupt("job attempts", attempts))?,
        last_error: get(row, 11)?,
        created_at: from_micros(get(row, 12)?)?,
    })
}

fn lease_end(now: DateTime<Utc>, lease: Duration) -> Result<i64> {
    now.checked_add_signed(lease)
        .map(micros)
        .ok_or_else(|| Error::Invalid(format!("lease {lease} is too long")))
}

impl PgStore {
    /// Runs one of the held-job updates and maps "not held" to `Conflict`.
    async fn held(
        &self,
        sql: &str,
        id: JobId,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<()> {
        let conn = self.conn().await?;
        let stmt = conn.prepare(sql).await?;
        let row = conn.client().query_one(&stmt, params).await.map_err(db)?;
        let exists: bool = get(&row, 0)?;
        let updated: bool = get(&row, 1)?;
        match (exists, updated) {
            (_, true) => Ok(()),
            (false, false) => Err(Error::not_found("job", id)),
            (true, false) => Err(Error::conflict("job", id, "not held by this worker")),
        }
    }
}

#[async_trait]
impl JobStore for PgStore {
    async fn enqueue(&self, job: &NewJob, now: DateTime<Utc>) -> Result<JobId> {
        let payload = to_json(&job.payload, "job payload")?;
        let conn = self.conn().await?;
        let stmt = conn.prepare(ENQUEUE).await?;
        let row = conn
            .client()
            .query_opt(
                &stmt,
                &[
                    job.id.as_uuid(),
                    &job.tenant.as_str(),
                    &job.kind,
                    &job.dedupe_key,
                    &payload,
                    &micros(job.run_at),
                    &micros(now),
                ],
            )
            .await
            .map_err(|e| with_id(db(e), job.id))?;
        if let Some(row) = row {
            return Ok(JobId::from_uuid(get(&row, 0)?));
        }
        // Another transaction stored the key after this statement's snapshot: read it now.
        let stmt = conn.prepare(BY_KEY).await?;
        let row = conn
            .client()
            .query_one(&stmt, &[&job.tenant.as_str(), &job.dedupe_key])
            .await
            .map_err(db)?;
        Ok(JobId::from_uuid(get(&row, 0)?))
    }

    async fn claim_jobs(
        &self,
        worker: &str,
        kinds: &[&str],
        now: DateTime<Utc>,
        lease: Duration,
        max: usize,
    ) -> Result<Vec<Job>> {
        if kinds.is_empty() {
            return Ok(Vec::new());
        }
        let until = lease_end(now, lease)?;
        let conn = self.conn().await?;
        let stmt = conn.prepare(&CLAIM_DUE).await?;
        let rows = conn
            .client()
            .query(&stmt, &[&worker, &micros(now), &until, &limit(max), &kinds])
            .await
            .map_err(db)?;
        let mut claimed = rows
            .iter()
            .map(|r| Ok((get::<i64>(r, 13)?, get::<Uuid>(r, 0)?, job(r)?)))
            .collect::<Result<Vec<_>>>()?;
        claimed.sort_by_key(|(t, id, _)| (*t, *id));
        Ok(claimed.into_iter().map(|(_, _, j)| j).collect())
    }

    async fn claim_job(
        &self,
        id: JobId,
        worker: &str,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> Result<Option<Job>> {
        let until = lease_end(now, lease)?;
        let conn = self.conn().await?;
        let stmt = conn.prepare(&CLAIM_ONE).await?;
        let row = conn
            .client()
            .query_opt(&stmt, &[id.as_uuid(), &worker, &micros(now), &until])
            .await
            .map_err(db)?;
        row.as_ref().map(job).transpose()
    }

    async fn heartbeat(&self, id: JobId, worker: &str, lease_until: DateTime<Utc>) -> Result<()> {
        self.held(
            &HEARTBEAT,
            id,
            &[id.as_uuid(), &worker, &micros(lease_until)],
        )
        .await
    }

    async fn complete_job(&self, id: JobId, worker: &str) -> Result<()> {
        self.held(&COMPLETE, id, &[id.as_uuid(), &worker]).await
    }

    async fn retry_job(
        &self,
        id: JobId,
        worker: &str,
        run_at: DateTime<Utc>,
        error: &str,
    ) -> Result<()> {
        self.held(
            &RETRY,
            id,
            &[id.as_uuid(), &worker, &micros(run_at), &error],
        )
        .await
    }

    async fn dead_letter(&self, id: JobId, worker: &str, reason: &str) -> Result<()> {
        self.held(&DEAD_LETTER, id, &[id.as_uuid(), &worker, &reason])
            .await
    }

    async fn job(&self, id: JobId) -> Result<Option<Job>> {
        let conn = self.conn().await?;
        let stmt = conn.prepare(&BY_ID).await?;
        let row = conn
            .client()
            .query_opt(&stmt, &[id.as_uuid()])
            .await
            .map_err(db)?;
        row.as_ref().map(job).transpose()
    }

    async fn dead_jobs(&self, tenant: &TenantId, max: usize) -> Result<Vec<Job>> {
        let conn = self.conn().await?;
        let stmt = conn.prepare(&DEAD).await?;
        let rows = conn
            .client()
            .query(&stmt, &[&tenant.as_str(), &limit(max)])
            .await
            .map_err(db)?;
        rows.iter().map(job).collect()
    }
}
