//! Conformance cases of durable jobs.

use super::*;

/// Claims take due jobs under a lease; expired leases are claimable again; only the holder
/// completes, retries or dead-letters.
pub async fn jobs_lease_retry_and_dead_letter(store: Arc<dyn Store>) {
    let tenant = fixtures::tenant();
    let job = fixtures::job(&tenant, "deliver:lease", t0());
    store.enqueue(&job, t0()).await.unwrap();
    let lease = Duration::seconds(30);
    // Not due before run_at.
    assert!(
        store
            .claim_job(job.id, "w1", t0() - Duration::seconds(1), lease)
            .await
            .unwrap()
            .is_none()
    );
    let claimed = store
        .claim_job(job.id, "w1", t0(), lease)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claimed.attempts, 1);
    // Held: another worker cannot claim or complete it.
    assert!(
        store
            .claim_job(job.id, "w2", t0() + Duration::seconds(10), lease)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        kind_of(store.complete_job(job.id, "w2").await),
        quanyi_core::ErrorKind::Conflict
    );
    store
        .heartbeat(job.id, "w1", t0() + Duration::seconds(60))
        .await
        .unwrap();
    assert!(
        store
            .claim_job(job.id, "w2", t0() + Duration::seconds(45), lease)
            .await
            .unwrap()
            .is_none()
    );
    // The lease runs out: w2 takes it over, w1 has lost it.
    let taken = store
        .claim_job(job.id, "w2", t0() + Duration::seconds(61), lease)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(taken.attempts, 2);
    assert_eq!(
        kind_of(
            store
                .heartbeat(job.id, "w1", t0() + Duration::minutes(5))
                .await
        ),
        quanyi_core::ErrorKind::Conflict
    );
    store
        .retry_job(
            job.id,
            "w2",
            t0() + Duration::minutes(5),
            "supplier timeout",
        )
        .await
        .unwrap();
    let stored = store.job(job.id).await.unwrap().unwrap();
    assert_eq!(stored.status, JobStatus::Queued);
    assert_eq!(stored.last_error.as_deref(), Some("supplier timeout"));
    // claim_jobs finds it when due, with other tenants' jobs possibly around.
    let later = t0() + Duration::minutes(5);
    let mut found = None;
    for _ in 0..100 {
        let batch = store
            .claim_jobs("w3", &["deliver_order"], later, lease, 50)
            .await
            .unwrap();
        if batch.is_empty() {
            break;
        }
        if let Some(j) = batch.into_iter().find(|j| j.id == job.id) {
            found = Some(j);
            break;
        }
    }
    let found = found.expect("due job claimed");
    assert_eq!(found.attempts, 3);
    store.dead_letter(job.id, "w3", "gave up").await.unwrap();
    let dead = store.dead_jobs(&tenant, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].status,
        JobStatus::Dead {
            reason: "gave up".into()
        }
    );
    assert!(
        store
            .claim_job(job.id, "w4", later + Duration::days(1), lease)
            .await
            .unwrap()
            .is_none()
    );
    // A completed job is never claimed again.
    let done = fixtures::job(&tenant, "deliver:done", t0());
    store.enqueue(&done, t0()).await.unwrap();
    store
        .claim_job(done.id, "w1", t0(), lease)
        .await
        .unwrap()
        .unwrap();
    store.complete_job(done.id, "w1").await.unwrap();
    assert_eq!(
        store.job(done.id).await.unwrap().unwrap().status,
        JobStatus::Done
    );
    assert!(
        store
            .claim_job(done.id, "w1", t0() + Duration::days(1), lease)
            .await
            .unwrap()
            .is_none()
    );
}

/// A worker claims only the job kinds it names: a due job of another kind (a kind a newer
/// release added, say) stays queued, and its expired lease is not taken over, until a worker
/// that names its kind claims it. No kinds claims nothing.
pub async fn jobs_are_claimed_only_by_kinds_the_worker_runs(store: Arc<dyn Store>) {
    let tenant = fixtures::tenant();
    let lease = Duration::seconds(60);
    let old = fixtures::job(&tenant, "deliver:old", t0());
    let newer = NewJob {
        kind: "grant_monthly".into(),
        ..fixtures::job(&tenant, "grant:newer", t0() - Duration::seconds(1))
    };
    store.enqueue(&old, t0()).await.unwrap();
    store.enqueue(&newer, t0()).await.unwrap();
    assert!(
        store
            .claim_jobs("w0", &[], t0(), lease, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let claimed = store
        .claim_jobs("w1", &["deliver_order"], t0(), lease, 10)
        .await
        .unwrap();
    assert_eq!(
        claimed.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![old.id]
    );
    let untouched = store.job(newer.id).await.unwrap().unwrap();
    assert_eq!(untouched.status, JobStatus::Queued);
    assert_eq!(untouched.attempts, 0);
    // A worker that runs both kinds takes the newer one; its lease runs out.
    let both = store
        .claim_jobs("w2", &["grant_monthly", "deliver_order"], t0(), lease, 10)
        .await
        .unwrap();
    assert_eq!(
        both.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![newer.id]
    );
    // After both leases expire, the old worker takes over only its own kind.
    let later = t0() + Duration::minutes(5);
    let again = store
        .claim_jobs("w1", &["deliver_order"], later, lease, 10)
        .await
        .unwrap();
    assert_eq!(
        again.iter().map(|j| (j.id, j.attempts)).collect::<Vec<_>>(),
        vec![(old.id, 2)]
    );
    let leased = store.job(newer.id).await.unwrap().unwrap();
    assert_eq!(
        leased.status,
        JobStatus::Running {
            worker: "w2".into(),
            lease_until: t0() + lease
        }
    );
    let taken = store
        .claim_jobs("w3", &["grant_monthly"], later, lease, 10)
        .await
        .unwrap();
    assert_eq!(
        taken.iter().map(|j| (j.id, j.attempts)).collect::<Vec<_>>(),
        vec![(newer.id, 2)]
    );
}

/// Enqueuing the same dedupe key twice returns the first job.
pub async fn job_enqueue_is_idempotent(store: Arc<dyn Store>) {
    let tenant = fixtures::tenant();
    let a = fixtures::job(&tenant, "deliver:x", t0());
    let b = fixtures::job(&tenant, "deliver:x", t0());
    assert_eq!(store.enqueue(&a, t0()).await.unwrap(), a.id);
    assert_eq!(store.enqueue(&b, t0()).await.unwrap(), a.id);
    assert!(store.job(b.id).await.unwrap().is_none());
    let other = fixtures::tenant();
    let c = fixtures::job(&other, "deliver:x", t0());
    assert_eq!(store.enqueue(&c, t0()).await.unwrap(), c.id);
}
