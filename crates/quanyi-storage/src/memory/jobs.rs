//! The job port of the memory store.

use super::*;

#[async_trait]
impl JobStore for MemoryStore {
    async fn enqueue(&self, job: &NewJob, now: DateTime<Utc>) -> Result<JobId> {
        Ok(self.state.lock().enqueue(job, now))
    }

    async fn claim_jobs(
        &self,
        worker: &str,
        kinds: &[&str],
        now: DateTime<Utc>,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<Job>> {
        let mut s = self.state.lock();
        let handled = |id: &JobId| {
            s.jobs
                .get(id)
                .is_some_and(|j| kinds.contains(&j.kind.as_str()))
        };
        let mut due: Vec<(DateTime<Utc>, JobId)> = s
            .queue
            .iter()
            .take_while(|(at, _)| *at <= now)
            .filter(|(_, id)| handled(id))
            .take(limit)
            .copied()
            .collect();
        due.extend(
            s.leases
                .iter()
                .take_while(|(at, _)| *at <= now)
                .filter(|(_, id)| handled(id))
                .take(limit)
                .copied(),
        );
        due.sort();
        due.truncate(limit);
        let until = now + lease;
        Ok(due
            .into_iter()
            .filter_map(|(_, id)| s.claim(id, worker, until))
            .collect())
    }

    async fn claim_job(
        &self,
        id: JobId,
        worker: &str,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> Result<Option<Job>> {
        let mut s = self.state.lock();
        let due = match s.jobs.get(&id).map(|j| (&j.status, j.run_at)) {
            Some((JobStatus::Queued, run_at)) => run_at <= now,
            Some((JobStatus::Running { lease_until, .. }, _)) => *lease_until <= now,
            _ => false,
        };
        Ok(if due {
            s.claim(id, worker, now + lease)
        } else {
            None
        })
    }

    async fn heartbeat(&self, id: JobId, worker: &str, lease_until: DateTime<Utc>) -> Result<()> {
        let mut s = self.state.lock();
        let job = s.held(id, worker)?;
        job.status = JobStatus::Running {
            worker: worker.to_owned(),
            lease_until,
        };
        s.leases.insert((lease_until, id));
        Ok(())
    }

    async fn complete_job(&self, id: JobId, worker: &str) -> Result<()> {
        let mut s = self.state.lock();
        s.held(id, worker)?.status = JobStatus::Done;
        Ok(())
    }

    async fn retry_job(
        &self,
        id: JobId,
        worker: &str,
        run_at: DateTime<Utc>,
        error: &str,
    ) -> Result<()> {
        let mut s = self.state.lock();
        let job = s.held(id, worker)?;
        job.status = JobStatus::Queued;
        job.run_at = run_at;
        job.last_error = Some(error.to_owned());
        s.queue.insert((run_at, id));
        Ok(())
    }

    async fn dead_letter(&self, id: JobId, worker: &str, reason: &str) -> Result<()> {
        let mut s = self.state.lock();
        let job = s.held(id, worker)?;
        job.status = JobStatus::Dead {
            reason: reason.to_owned(),
        };
        job.last_error = Some(reason.to_owned());
        Ok(())
    }

    async fn job(&self, id: JobId) -> Result<Option<Job>> {
        Ok(self.state.lock().jobs.get(&id).cloned())
    }

    async fn dead_jobs(&self, tenant: &TenantId, limit: usize) -> Result<Vec<Job>> {
        let s = self.state.lock();
        let mut out: Vec<Job> = s
            .jobs
            .values()
            .filter(|j| &j.tenant == tenant && matches!(j.status, JobStatus::Dead { .. }))
            .cloned()
            .collect();
        out.sort_by_key(|j| j.id);
        out.truncate(limit);
        Ok(out)
    }
}
