//! Durable jobs: the kinds a shop runs (the engine's and the host's registered handlers), the
//! periodic sweeps, and the pass that claims due jobs and runs them.
//!
//! A worker claims only the kinds its shop can run, so during a rolling deploy an older process
//! leaves a kind that only newer processes know in the queue instead of giving it up. Sweeps are
//! jobs keyed by their period: every process that runs a worker enqueues the current period's job
//! of each sweep, the store keeps one per (tenant, key), and one worker claims it, so a sweep runs
//! once per period however many processes run.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Duration, TimeZone, Utc};
use quanyi_core::{Calendar, JobId, OrderId};
use quanyi_order::OrderStatus;
use quanyi_storage::{Job, NewJob};

use crate::sales::DELIVER_ORDER_JOB;
use crate::{Error, Result, Shop};

/// A job is given up (dead-lettered) after this many attempts.
pub const MAX_JOB_ATTEMPTS: u32 = 10;

/// The prefix of every sweep's job kind: sweep `name` runs as jobs of kind `sweep.<name>`.
pub const SWEEP_JOB_PREFIX: &str = "sweep.";

/// The name of the engine's sweep that expires unpaid orders past their deadline
/// ([`Shop::expire_unpaid_orders`]).
pub const EXPIRE_UNPAID_SWEEP: &str = "expire_unpaid";

/// The name of the engine's sweep that pays approved after-sales refunds whose payment did not
/// finish ([`Orders::pay_due_refunds`](crate::Orders::pay_due_refunds)).
pub const PAY_REFUNDS_SWEEP: &str = "pay_refunds";

/// How often the `pay_refunds` sweep runs.
const PAY_REFUNDS_EVERY_SECONDS: i64 = 60;

/// How often the unpaid-order expiry sweep runs unless told otherwise: every 30 seconds.
pub const DEFAULT_EXPIRY_SWEEP_SECONDS: i64 = 30;

/// What one [`Shop::run_due_jobs`] pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobRun {
    /// Jobs finished.
    pub done: usize,
    /// Jobs put back for a later attempt.
    pub retried: usize,
    /// Jobs given up.
    pub dead: usize,
    /// Card keys re-indexed by the pass (see [`Shop::reindex_card_keys`]).
    pub reindexed: usize,
    /// Sweep periods this pass enqueued (a period another process enqueued first is not
    /// counted); see [`Sweep`].
    pub sweeps_scheduled: usize,
    /// Events the registered consumers handled in the pass (see [`crate::EventConsumer`]).
    pub events_consumed: usize,
}

/// What a [`JobHandler`] made of a job it ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    /// Finished: the job is done for good.
    Done,
    /// Not finished, and not failed: run it again at `at` (waiting on a third party, say). The
    /// attempt is counted but never gives the job up.
    Later {
        /// When to run it again.
        at: DateTime<Utc>,
        /// Why, kept on the job as its last note.
        note: String,
    },
}

/// Why a [`JobHandler`] could not finish a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobError {
    message: String,
    transient: bool,
}

impl JobError {
    /// A failure that may pass (a service down, a time-out): the job is retried with exponential
    /// backoff, and given up after [`MAX_JOB_ATTEMPTS`].
    pub fn transient(message: impl Into<String>) -> Self {
        JobError {
            message: message.into(),
            transient: true,
        }
    }

    /// A failure that will not pass (a malformed payload): the job is given up at once and kept
    /// among the dead jobs with this reason.
    pub fn permanent(message: impl Into<String>) -> Self {
        JobError {
            message: message.into(),
            transient: false,
        }
    }

    /// Whether a retry may succeed.
    pub fn is_transient(&self) -> bool {
        self.transient
    }

    /// What went wrong.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for JobError {}

impl From<Error> for JobError {
    fn from(e: Error) -> Self {
        JobError {
            transient: e.kind().is_transient(),
            message: e.to_string(),
        }
    }
}

/// A host's job kind: registered on the builder ([`crate::ShopBuilder::job_handler`]), claimed
/// and run by the shop's workers. Jobs are enqueued with [`Shop::enqueue_job`].
///
/// A job may run more than once (a worker can stop after the work and before recording it, and
/// another takes the job over when its lease runs out), so a handler must be idempotent.
#[async_trait]
pub trait JobHandler: Send + Sync {
    /// The kind it runs: 1 to 64 printable ASCII characters, unique in the shop, neither
    /// [`DELIVER_ORDER_JOB`] nor starting with [`SWEEP_JOB_PREFIX`].
    fn kind(&self) -> &str;

    /// Runs one claimed job. `shop` is a handle on the job's tenant.
    ///
    /// # Errors
    /// A [`JobError`]: transient ones are retried with backoff, permanent ones give the job up.
    async fn run(&self, shop: &Shop, job: &Job) -> std::result::Result<JobOutcome, JobError>;
}

/// Work a shop does once per period, whichever of its processes gets to it: registered on the
/// builder ([`crate::ShopBuilder::sweep`]) and run by [`crate::Worker`]s as jobs of kind
/// `sweep.<name>` keyed by the period's start, so with several workers each period runs once
/// (a second run is possible only when a worker stops mid-sweep and its lease runs out, so a
/// sweep must be idempotent). Its [`period`](Sweep::period) says how periods are cut: fixed
/// lengths counted from the Unix epoch, or the days or months of the shop's calendar
/// ([`crate::ShopBuilder::time_zone`]); a period whose job was not run before the next began
/// still runs, once.
#[async_trait]
pub trait Sweep: Send + Sync {
    /// Its name: 1 to 57 printable ASCII characters, unique in the shop.
    fn name(&self) -> &str;

    /// How its periods are cut.
    fn period(&self) -> SweepPeriod;

    /// Runs the sweep of the period that starts at `period`. `shop` is a handle on the tenant
    /// the sweep was scheduled for.
    ///
    /// # Errors
    /// As [`JobHandler::run`].
    async fn run(&self, shop: &Shop, period: DateTime<Utc>) -> std::result::Result<(), JobError>;
}

/// How a [`Sweep`]'s periods are cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SweepPeriod {
    /// Fixed lengths (at least a second) counted from the Unix epoch, whatever the calendar.
    Every(Duration),
    /// The days of the shop's calendar: each starts at local midnight (days across a
    /// daylight-saving change are 23 or 25 hours).
    Daily,
    /// The months of the shop's calendar: each starts at local midnight of its first day.
    Monthly,
}

impl SweepPeriod {
    /// The start of the period that holds `now`, in `calendar`.
    pub fn start(self, now: DateTime<Utc>, calendar: &Calendar) -> Option<DateTime<Utc>> {
        match self {
            SweepPeriod::Every(every) => {
                let every = every.num_microseconds()?;
                let at = now.timestamp_micros();
                let start = at.checked_sub(at.rem_euclid(every))?;
                Utc.timestamp_micros(start).single()
            }
            SweepPeriod::Daily => calendar.day_start(now),
            SweepPeriod::Monthly => calendar.month_start(now),
        }
    }
}

/// The engine's sweep that expires unpaid orders past their deadline.
struct ExpireUnpaid {
    every: Duration,
}

#[async_trait]
impl Sweep for ExpireUnpaid {
    fn name(&self) -> &str {
        EXPIRE_UNPAID_SWEEP
    }

    fn period(&self) -> SweepPeriod {
        SweepPeriod::Every(self.every)
    }

    async fn run(&self, shop: &Shop, _period: DateTime<Utc>) -> std::result::Result<(), JobError> {
        shop.expire_unpaid_orders().await?;
        Ok(())
    }
}

/// The engine's sweep that pays approved refunds whose payment did not finish.
struct PayRefunds;

#[async_trait]
impl Sweep for PayRefunds {
    fn name(&self) -> &str {
        PAY_REFUNDS_SWEEP
    }

    fn period(&self) -> SweepPeriod {
        SweepPeriod::Every(Duration::seconds(PAY_REFUNDS_EVERY_SECONDS))
    }

    async fn run(&self, shop: &Shop, _period: DateTime<Utc>) -> std::result::Result<(), JobError> {
        match shop.pay_due_refunds().await {
            // A shop without a gateway has no approved refund it could pay; nothing to retry.
            Ok(_) | Err(Error::NoPaymentGateway) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// What runs a kind.
#[derive(Clone)]
enum Runner {
    Deliver,
    Sweep(Arc<dyn Sweep>),
    Host(Arc<dyn JobHandler>),
}

/// The kinds a shop runs, and its sweeps with the last period each was scheduled for here.
pub(crate) struct JobKinds {
    runners: HashMap<String, Runner>,
    /// Every kind, for claims.
    kinds: Vec<String>,
    sweeps: Vec<Arc<dyn Sweep>>,
    scheduled: parking_lot::Mutex<HashMap<(quanyi_core::TenantId, String), DateTime<Utc>>>,
}

impl JobKinds {
    /// The engine's kinds and sweeps plus the host's.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a kind or sweep name that is empty, too long, not printable
    /// ASCII, reserved or registered twice, or a sweep period under a second.
    pub(crate) fn new(
        handlers: Vec<Arc<dyn JobHandler>>,
        mut sweeps: Vec<Arc<dyn Sweep>>,
        expiry_every: Duration,
    ) -> Result<Self> {
        sweeps.insert(
            0,
            Arc::new(ExpireUnpaid {
                every: expiry_every,
            }),
        );
        sweeps.insert(1, Arc::new(PayRefunds));
        let mut runners = HashMap::new();
        runners.insert(DELIVER_ORDER_JOB.to_owned(), Runner::Deliver);
        for handler in handlers {
            let kind = handler.kind().to_owned();
            check_name("job kind", &kind, 64)?;
            if kind.starts_with(SWEEP_JOB_PREFIX) || runners.contains_key(&kind) {
                return Err(Error::InvalidInput(format!(
                    "job kind {kind} is reserved or registered twice"
                )));
            }
            runners.insert(kind, Runner::Host(handler));
        }
        for sweep in &sweeps {
            check_name("sweep name", sweep.name(), 64 - SWEEP_JOB_PREFIX.len())?;
            if matches!(sweep.period(), SweepPeriod::Every(every) if every < Duration::seconds(1)) {
                return Err(Error::InvalidInput(format!(
                    "sweep {} needs a period of at least a second",
                    sweep.name()
                )));
            }
            let kind = format!("{SWEEP_JOB_PREFIX}{}", sweep.name());
            if runners.insert(kind, Runner::Sweep(sweep.clone())).is_some() {
                return Err(Error::InvalidInput(format!(
                    "sweep {} is registered twice",
                    sweep.name()
                )));
            }
        }
        let mut kinds: Vec<String> = runners.keys().cloned().collect();
        kinds.sort();
        Ok(JobKinds {
            runners,
            kinds,
            sweeps,
            scheduled: parking_lot::Mutex::new(HashMap::new()),
        })
    }
}

fn check_name(what: &str, name: &str, max: usize) -> Result<()> {
    if name.is_empty() || name.len() > max || !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::InvalidInput(format!(
            "a {what} must be 1 to {max} printable ASCII characters"
        )));
    }
    Ok(())
}

impl Shop {
    /// Enqueues a job of a kind a registered [`JobHandler`] runs, for this shop's tenant, due at
    /// `run_at`. A job with the same `dedupe_key` stored before (for the tenant) is returned
    /// instead, so enqueuing is idempotent.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a kind no handler of this shop runs, or a dedupe key that is
    /// empty or over 200 bytes; [`Error::Storage`].
    pub async fn enqueue_job(
        &self,
        kind: &str,
        dedupe_key: &str,
        payload: serde_json::Value,
        run_at: DateTime<Utc>,
    ) -> Result<JobId> {
        if !matches!(self.inner.jobs.runners.get(kind), Some(Runner::Host(_))) {
            return Err(Error::InvalidInput(format!(
                "no job handler of this shop runs kind {}",
                quanyi_core::text::clip(kind)
            )));
        }
        if dedupe_key.is_empty() || dedupe_key.len() > 200 {
            return Err(Error::InvalidInput(
                "a job's dedupe key must be 1 to 200 bytes".into(),
            ));
        }
        let now = self.now();
        let job = NewJob {
            id: JobId::generate(now, &mut rand::thread_rng()),
            tenant: self.tenant.clone(),
            kind: kind.to_owned(),
            dedupe_key: format!("host:{dedupe_key}"),
            payload,
            run_at,
        };
        Ok(self.store_ref().enqueue(&job, now).await?)
    }

    /// Enqueues the current period's job of every sweep for this shop's tenant, unless this
    /// process already did; returns how many periods the store did not hold before.
    pub(crate) async fn schedule_sweeps(&self) -> Result<usize> {
        let now = self.now();
        let mut added = 0;
        for sweep in &self.inner.jobs.sweeps {
            let Some(period) = sweep.period().start(now, &self.inner.calendar) else {
                continue;
            };
            let key = (self.tenant.clone(), sweep.name().to_owned());
            if self.inner.jobs.scheduled.lock().get(&key) == Some(&period) {
                continue;
            }
            let kind = format!("{SWEEP_JOB_PREFIX}{}", sweep.name());
            let job = NewJob {
                id: JobId::generate(now, &mut rand::thread_rng()),
                tenant: self.tenant.clone(),
                dedupe_key: format!("{kind}@{}", period.timestamp_micros()),
                kind,
                payload: serde_json::json!({ "period": period }),
                run_at: period,
            };
            if self.store_ref().enqueue(&job, now).await? == job.id {
                added += 1;
            }
            self.inner.jobs.scheduled.lock().insert(key, period);
        }
        Ok(added)
    }

    /// Claims due jobs of every tenant whose kinds this shop runs (delivery of paid orders,
    /// sweeps, and the kinds of registered [`JobHandler`]s; including jobs a stopped process
    /// left behind once their lease ran out) and runs them. Failed jobs are retried with
    /// exponential backoff, and given up after [`MAX_JOB_ATTEMPTS`].
    ///
    /// # Errors
    /// [`Error::Storage`] when jobs cannot be claimed or their outcome cannot be recorded.
    pub async fn run_due_jobs(&self, limit: usize) -> Result<JobRun> {
        let store = self.store_ref();
        let kinds: Vec<&str> = self.inner.jobs.kinds.iter().map(String::as_str).collect();
        let jobs = store
            .claim_jobs(
                &self.inner.worker,
                &kinds,
                self.now(),
                self.inner.lease,
                limit,
            )
            .await?;
        let mut run = JobRun::default();
        for job in jobs {
            match self.finish_job(&job).await? {
                JobEnd::Done => run.done += 1,
                JobEnd::Retried => run.retried += 1,
                JobEnd::Dead => run.dead += 1,
            }
        }
        Ok(run)
    }

    /// Runs a claimed job and records how it ended.
    pub(crate) async fn finish_job(&self, job: &Job) -> Result<JobEnd> {
        let store = self.store_ref();
        let worker = &self.inner.worker;
        let shop = self.with_tenant(job.tenant.clone());
        let result = match self.inner.jobs.runners.get(job.kind.as_str()) {
            Some(Runner::Deliver) => deliver(&shop, job).await,
            Some(Runner::Sweep(sweep)) => {
                match job
                    .payload
                    .get("period")
                    .cloned()
                    .map(serde_json::from_value)
                {
                    Some(Ok(period)) => sweep.run(&shop, period).await.map(|()| JobOutcome::Done),
                    _ => Err(JobError::permanent("malformed payload")),
                }
            }
            Some(Runner::Host(handler)) => handler.run(&shop, job).await,
            // Claimed by kind, so never here; leave it for a worker that runs it.
            None => Ok(JobOutcome::Later {
                at: self.now() + self.inner.lease,
                note: "no handler for this kind here".into(),
            }),
        };
        match result {
            Ok(JobOutcome::Done) => {
                store.complete_job(job.id, worker).await?;
                Ok(JobEnd::Done)
            }
            Ok(JobOutcome::Later { at, note }) => {
                store.retry_job(job.id, worker, at, &note).await?;
                Ok(JobEnd::Retried)
            }
            Err(e) if job.attempts >= MAX_JOB_ATTEMPTS || !e.is_transient() => {
                tracing::error!(job = %job.id, kind = %job.kind, error = %e, "job given up");
                store.dead_letter(job.id, worker, e.message()).await?;
                Ok(JobEnd::Dead)
            }
            Err(e) => {
                let backoff = Duration::seconds(1_i64 << job.attempts.min(12));
                tracing::warn!(job = %job.id, kind = %job.kind, error = %e, "job will be retried");
                store
                    .retry_job(job.id, worker, self.now() + backoff, e.message())
                    .await?;
                Ok(JobEnd::Retried)
            }
        }
    }
}

/// The delivery job of a paid order.
async fn deliver(shop: &Shop, job: &Job) -> std::result::Result<JobOutcome, JobError> {
    let order = job
        .payload
        .get("order")
        .and_then(|v| v.as_str())
        .and_then(|s| s.parse::<OrderId>().ok())
        .ok_or_else(|| JobError::permanent("malformed payload"))?;
    let settled = shop.settle(order).await?;
    let waiting = settled
        .lines()
        .iter()
        .any(|l| l.status == quanyi_order::LineStatus::Pending);
    match settled.status() {
        // Waiting for a supplier: poll again with a capped backoff; never given up, since the
        // supplier's answer (callback or query) decides the line. Lines held for an operator
        // alone leave nothing to poll: the operator's decision settles the order.
        OrderStatus::Fulfilling if waiting => Ok(JobOutcome::Later {
            at: shop.now() + Duration::seconds(1_i64 << job.attempts.min(8)),
            note: "waiting for a supplier".into(),
        }),
        _ => Ok(JobOutcome::Done),
    }
}

pub(crate) enum JobEnd {
    Done,
    Retried,
    Dead,
}
