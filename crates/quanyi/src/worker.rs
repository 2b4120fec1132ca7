//! The background worker hosts run next to their shop.

use std::future::Future;
use std::time::Duration;

use crate::{JobRun, Result, Shop};

/// Runs the shop's durable jobs: delivery of paid orders and refunds of what could not be
/// delivered, the kinds of the host's registered [`crate::JobHandler`]s, and the sweeps
/// (expiry of unpaid orders past their deadline, and the host's [`crate::Sweep`]s), each once
/// per period however many workers run; including jobs a stopped process left behind once
/// their lease ran out. A worker claims only the kinds its shop runs. It also keeps
/// the supplier stock figures this process uses fresh; and, while the shop's tenant holds card
/// keys indexed under an older blind-index scheme, re-indexes a batch of them per pass
/// ([`Shop::reindex_card_keys`]). Several
/// workers, in one process or many, can share one database: each job is claimed by one at a
/// time.
///
/// ```no_run
/// # async fn demo(shop: quanyi::Shop) -> quanyi::Result<()> {
/// let worker = quanyi::Worker::new(shop);
/// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
/// # drop(stop);
/// worker.run_until(async { let _ = stopped.await; }).await;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Worker {
    shop: Shop,
    batch: usize,
    idle: Duration,
}

impl Worker {
    /// A worker for `shop`, claiming up to 32 jobs at a time and polling every 500 ms when idle.
    pub fn new(shop: Shop) -> Self {
        Worker {
            shop,
            batch: 32,
            idle: Duration::from_millis(500),
        }
    }

    /// How many jobs one pass claims (at least 1).
    pub fn batch(mut self, n: usize) -> Self {
        self.batch = n.max(1);
        self
    }

    /// How long to wait after a pass that found nothing to do.
    pub fn idle_wait(mut self, wait: Duration) -> Self {
        self.idle = wait;
        self
    }

    /// One pass: refreshes stale supplier stock figures, re-indexes up to 8 batches' worth of
    /// card keys when any are left under an older scheme, enqueues the current period of every
    /// sweep (once per period per process), claims due jobs and runs them, then runs the
    /// registered event consumers ([`Shop::run_consumers`]) over a batch each.
    ///
    /// # Errors
    /// [`crate::Error::Storage`] when jobs cannot be claimed or recorded; [`crate::Error::Vault`]
    /// or [`crate::Error::Storage`] when re-indexing fails.
    pub async fn run_once(&self) -> Result<JobRun> {
        self.shop.refresh_supplier_stock().await;
        let reindexed = if self.shop.needs_reindex().await? {
            self.shop.reindex_card_keys(self.batch * 8).await?.examined
        } else {
            0
        };
        let sweeps_scheduled = self.shop.schedule_sweeps().await?;
        let mut run = self.shop.run_due_jobs(self.batch).await?;
        let consumed = self.shop.run_consumers(self.batch * 8).await?;
        run.reindexed = reindexed;
        run.sweeps_scheduled = sweeps_scheduled;
        run.events_consumed = consumed.handled;
        Ok(run)
    }

    /// Runs passes until `shutdown` completes; a job in progress finishes first. Storage errors
    /// are logged and the pass is tried again after the idle wait, so a database restart does not
    /// stop the worker.
    pub async fn run_until(&self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let busy = match self.run_once().await {
                Ok(run) => {
                    run.done + run.retried + run.dead + run.reindexed + run.events_consumed > 0
                }
                Err(e) => {
                    tracing::warn!(error = %e, "worker pass failed");
                    false
                }
            };
            if busy {
                tokio::select! {
                    () = &mut shutdown => return,
                    () = tokio::task::yield_now() => {}
                }
            } else {
                tokio::select! {
                    () = &mut shutdown => return,
                    () = tokio::time::sleep(self.idle) => {}
                }
            }
        }
    }
}
