//! Durable jobs with leases.

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use quanyi_core::{JobId, TenantId};
use quanyi_storage::{Error, Job, JobStatus, JobStore, NewJob, Result};
use rusqlite::{OptionalExtension, Row, Transaction, params};

use crate::SqliteStore;
use crate::convert::{SqlResult, from_doc, from_ts, limit, to_doc, ts, uint32, uuid};

/// A new job encoded for a blocking thread.
pub(crate) struct JobRow {
    id: JobId,
    tenant: String,
    kind: String,
    dedupe_key: String,
    payload: String,
    run_at: i64,
    created_at: i64,
}

pub(crate) fn job_row(job: &NewJob, now: DateTime<Utc>) -> Result<JobRow> {
    Ok(JobRow {
        id: job.id,
        tenant: job.tenant.as_str().to_owned(),
        kind: job.kind.clone(),
        dedupe_key: job.dedupe_key.clone(),
        payload: to_doc(&job.payload, "job payload")?,
        run_at: ts(job.run_at)?,
        created_at: ts(now)?,
    })
}

/// Enqueues a job unless one with its (tenant, dedupe key) is stored; returns the stored id.
pub(crate) fn enqueue(tx: &Transaction<'_>, job: &JobRow) -> Result<JobId> {
    let existing: Option<[u8; 16]> = tx
        .prepare_cached("SELECT id FROM jobs WHERE tenant = ?1 AND dedupe_key = ?2")
        .db()?
        .query_row(params![job.tenant, job.dedupe_key], |r| r.get(0))
        .optional()
        .db()?;
    if let Some(id) = existing {
        return Ok(JobId::from_uuid(uuid(id)));
    }
    tx.prepare_cached(
        "INSERT INTO jobs (id, tenant, kind, dedupe_key, payload, run_at, status, attempts,
                           created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'queued', 0, ?7)",
    )
    .db()?
    .execute(params![
        job.id.as_bytes(),
        job.tenant,
        job.kind,
        job.dedupe_key,
        job.payload,
        job.run_at,
        job.created_at
    ])
    .db()?;
    Ok(job.id)
}

const JOB_COLUMNS: &str = "id, tenant, kind, dedupe_key, payload, run_at, status, worker, \
                           lease_until, dead_reason, attempts, last_error, created_at";

/// One job row as stored, before it is checked.
struct JobCols {
    id: [u8; 16],
    tenant: String,
    kind: String,
    dedupe_key: String,
    payload: String,
    run_at: i64,
    status: String,
    worker: Option<String>,
    lease_until: Option<i64>,
    dead_reason: Option<String>,
    attempts: i64,
    last_error: Option<String>,
    created_at: i64,
}

impl JobCols {
    fn read(r: &Row<'_>) -> rusqlite::Result<JobCols> {
        Ok(JobCols {
            id: r.get(0)?,
            tenant: r.get(1)?,
            kind: r.get(2)?,
            dedupe_key: r.get(3)?,
            payload: r.get(4)?,
            run_at: r.get(5)?,
            status: r.get(6)?,
            worker: r.get(7)?,
            lease_until: r.get(8)?,
            dead_reason: r.get(9)?,
            attempts: r.get(10)?,
            last_error: r.get(11)?,
            created_at: r.get(12)?,
        })
    }

    fn into_job(self) -> Result<Job> {
        let id = JobId::from_uuid(uuid(self.id));
        let corrupt = || {
            Error::Corrupt(format!(
                "job {id} has status {} without its columns",
                self.status
            ))
        };
        let status = match self.status.as_str() {
            "queued" => JobStatus::Queued,
            "running" => JobStatus::Running {
                worker: self.worker.clone().ok_or_else(corrupt)?,
                lease_until: from_ts(self.lease_until.ok_or_else(corrupt)?),
            },
            "done" => JobStatus::Done,
            "dead" => JobStatus::Dead {
                reason: self.dead_reason.clone().ok_or_else(corrupt)?,
            },
            other => {
                return Err(Error::Corrupt(format!(
                    "job {id} has unknown status {other}"
                )));
            }
        };
        Ok(Job {
            id,
            tenant: TenantId::new(self.tenant)
                .map_err(|e| Error::Corrupt(format!("stored tenant: {e}")))?,
            kind: self.kind,
            dedupe_key: self.dedupe_key,
            payload: from_doc(&self.payload, "job payload")?,
            run_at: from_ts(self.run_at),
            status,
            attempts: uint32(self.attempts, "job attempts")?,
            last_error: self.last_error,
            created_at: from_ts(self.created_at),
        })
    }
}

fn load(tx: &Transaction<'_>, id: JobId) -> Result<Option<Job>> {
    let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1");
    let row = tx
        .prepare_cached(&sql)
        .db()?
        .query_row(params![id.as_bytes()], JobCols::read)
        .optional()
        .db()?;
    row.map(JobCols::into_job).transpose()
}

/// Claims a job known to be due: running for `worker` until `lease_until`, one more attempt.
fn claim(tx: &Transaction<'_>, id: JobId, worker: &str, lease_until: i64) -> Result<Option<Job>> {
    let n = tx
        .prepare_cached(
            "UPDATE jobs SET status = 'running', worker = ?2, lease_until = ?3,
                             attempts = MIN(attempts + 1, 4294967295)
             WHERE id = ?1 AND status IN ('queued', 'running')",
        )
        .db()?
        .execute(params![id.as_bytes(), worker, lease_until])
        .db()?;
    if n == 0 {
        return Ok(None);
    }
    load(tx, id)
}

/// `NotFound`, or `Conflict` unless `worker` holds the job.
fn check_held(tx: &Transaction<'_>, id: JobId, worker: &str) -> Result<()> {
    let row: Option<(String, Option<String>)> = tx
        .prepare_cached("SELECT status, worker FROM jobs WHERE id = ?1")
        .db()?
        .query_row(params![id.as_bytes()], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
        .db()?;
    match row {
        None => Err(Error::not_found("job", id)),
        Some((status, Some(w))) if status == "running" && w == worker => Ok(()),
        Some(_) => Err(Error::conflict("job", id, "not held by this worker")),
    }
}

fn lease_end(now: DateTime<Utc>, lease: Duration) -> Result<DateTime<Utc>> {
    now.checked_add_signed(lease)
        .ok_or_else(|| Error::Invalid(format!("lease of {lease} from {now} overflows")))
}

/// Due jobs of the kinds `kinds` (a JSON array of strings) names, as (due, id).
fn due_ids(
    tx: &Transaction<'_>,
    sql: &str,
    now: i64,
    n: i64,
    kinds: &str,
) -> Result<Vec<(i64, JobId)>> {
    let rows: Vec<(i64, [u8; 16])> = tx
        .prepare_cached(sql)
        .db()?
        .query_map(params![now, n, kinds], |r| Ok((r.get(0)?, r.get(1)?)))
        .db()?
        .collect::<rusqlite::Result<_>>()
        .db()?;
    Ok(rows
        .into_iter()
        .map(|(at, id)| (at, JobId::from_uuid(uuid(id))))
        .collect())
}

#[async_trait]
impl JobStore for SqliteStore {
    async fn enqueue(&self, job: &NewJob, now: DateTime<Utc>) -> Result<JobId> {
        let row = job_row(job, now)?;
        self.pool.write(move |tx| enqueue(tx, &row)).await
    }

    async fn claim_jobs(
        &self,
        worker: &str,
        kinds: &[&str],
        now: DateTime<Utc>,
        lease: Duration,
        limit_to: usize,
    ) -> Result<Vec<Job>> {
        if kinds.is_empty() {
            return Ok(Vec::new());
        }
        let worker = worker.to_owned();
        let kinds = to_doc(kinds, "job kinds")?;
        let until = ts(lease_end(now, lease)?)?;
        let now = ts(now)?;
        let n = limit(limit_to);
        self.pool
            .write(move |tx| {
                let mut due = due_ids(
                    tx,
                    "SELECT run_at, id FROM jobs WHERE status = 'queued' AND run_at <= ?1
                       AND kind IN (SELECT value FROM json_each(?3))
                     ORDER BY run_at, id LIMIT ?2",
                    now,
                    n,
                    &kinds,
                )?;
                due.extend(due_ids(
                    tx,
                    "SELECT lease_until, id FROM jobs WHERE status = 'running' AND lease_until <= ?1
                       AND kind IN (SELECT value FROM json_each(?3))
                     ORDER BY lease_until, id LIMIT ?2",
                    now,
                    n,
                    &kinds,
                )?);
                due.sort();
                due.truncate(limit_to);
                let mut claimed = Vec::with_capacity(due.len());
                for (_, id) in due {
                    if let Some(job) = claim(tx, id, &worker, until)? {
                        claimed.push(job);
                    }
                }
                Ok(claimed)
            })
            .await
    }

    async fn claim_job(
        &self,
        id: JobId,
        worker: &str,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> Result<Option<Job>> {
        let worker = worker.to_owned();
        let until = ts(lease_end(now, lease)?)?;
        let now = ts(now)?;
        self.pool
            .write(move |tx| {
                let due = tx
                    .prepare_cached(
                        "SELECT 1 FROM jobs WHERE id = ?1 AND (
                           (status = 'queued' AND run_at <= ?2)
                           OR (status = 'running' AND lease_until <= ?2))",
                    )
                    .db()?
                    .exists(params![id.as_bytes(), now])
                    .db()?;
                if !due {
                    return Ok(None);
                }
                claim(tx, id, &worker, until)
            })
            .await
    }

    async fn heartbeat(&self, id: JobId, worker: &str, lease_until: DateTime<Utc>) -> Result<()> {
        let worker = worker.to_owned();
        let lease_until = ts(lease_until)?;
        self.pool
            .write(move |tx| {
                check_held(tx, id, &worker)?;
                tx.prepare_cached("UPDATE jobs SET lease_until = ?2 WHERE id = ?1")
                    .db()?
                    .execute(params![id.as_bytes(), lease_until])
                    .db()?;
                Ok(())
            })
            .await
    }

    async fn complete_job(&self, id: JobId, worker: &str) -> Result<()> {
        let worker = worker.to_owned();
        self.pool
            .write(move |tx| {
                check_held(tx, id, &worker)?;
                tx.prepare_cached(
                    "UPDATE jobs SET status = 'done', worker = NULL, lease_until = NULL
                     WHERE id = ?1",
                )
                .db()?
                .execute(params![id.as_bytes()])
                .db()?;
                Ok(())
            })
            .await
    }

    async fn retry_job(
        &self,
        id: JobId,
        worker: &str,
        run_at: DateTime<Utc>,
        error: &str,
    ) -> Result<()> {
        let worker = worker.to_owned();
        let error = error.to_owned();
        let run_at = ts(run_at)?;
        self.pool
            .write(move |tx| {
                check_held(tx, id, &worker)?;
                tx.prepare_cached(
                    "UPDATE jobs SET status = 'queued', worker = NULL, lease_until = NULL,
                                     run_at = ?2, last_error = ?3
                     WHERE id = ?1",
                )
                .db()?
                .execute(params![id.as_bytes(), run_at, error])
                .db()?;
                Ok(())
            })
            .await
    }

    async fn dead_letter(&self, id: JobId, worker: &str, reason: &str) -> Result<()> {
        let worker = worker.to_owned();
        let reason = reason.to_owned();
        self.pool
            .write(move |tx| {
                check_held(tx, id, &worker)?;
                tx.prepare_cached(
                    "UPDATE jobs SET status = 'dead', worker = NULL, lease_until = NULL,
                                     dead_reason = ?2, last_error = ?2
                     WHERE id = ?1",
                )
                .db()?
                .execute(params![id.as_bytes(), reason])
                .db()?;
                Ok(())
            })
            .await
    }

    async fn job(&self, id: JobId) -> Result<Option<Job>> {
        self.pool.read(move |tx| load(tx, id)).await
    }

    async fn dead_jobs(&self, tenant: &TenantId, limit_to: usize) -> Result<Vec<Job>> {
        let tenant = tenant.as_str().to_owned();
        let n = limit(limit_to);
        self.pool
            .read(move |tx| {
                let sql = format!(
                    "SELECT {JOB_COLUMNS} FROM jobs WHERE tenant = ?1 AND status = 'dead'
                     ORDER BY id LIMIT ?2"
                );
                let rows: Vec<JobCols> = tx
                    .prepare_cached(&sql)
                    .db()?
                    .query_map(params![tenant, n], JobCols::read)
                    .db()?
                    .collect::<rusqlite::Result<_>>()
                    .db()?;
                rows.into_iter().map(JobCols::into_job).collect()
            })
            .await
    }
}
