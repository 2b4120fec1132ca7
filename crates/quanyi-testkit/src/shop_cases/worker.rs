//! Shop cases of the worker: sweeps once per period, job kinds it does not run, consumers that resume at their cursor.

use super::*;

/// Two workers (two processes) run each sweep once per period: the host's and the engine's
/// expiry of unpaid orders, which needs no timer of the host's.
pub async fn sweeps_run_once_per_period_with_two_workers(store: Arc<dyn Store>) {
    let rig = Rig::new(store);
    let tally = Arc::new(Tally {
        name: "tally",
        period: quanyi::SweepPeriod::Every(Duration::minutes(1)),
        periods: Mutex::new(Vec::new()),
    });
    let process = |name: &str| {
        rig.builder(rig.store.clone())
            .worker_name(name)
            .sweep(tally.clone())
            .build()
            .unwrap()
    };
    let (a, b) = (process("worker-a"), process("worker-b"));
    let sku = card_sku(&a).await;
    import(&a, sku, &["SWP-0001"]).await;
    let unpaid = a
        .place_order(&member("idle"), &[CartLine::new(sku, 1)])
        .await
        .unwrap();
    rig.clock.advance(Duration::minutes(16));
    let (wa, wb) = (Worker::new(a.clone()), Worker::new(b.clone()));
    for _ in 0..3 {
        let (ra, rb) = tokio::join!(wa.run_once(), wb.run_once());
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        assert_eq!(ra.dead + rb.dead, 0);
    }
    let first = tally.periods.lock().clone();
    assert_eq!(first.len(), 1, "one run of the period: {first:?}");
    assert!(first[0] <= rig.clock.now() && rig.clock.now() - first[0] < Duration::minutes(1));
    assert_eq!(
        a.order(unpaid.id()).await.unwrap().status(),
        OrderStatus::Expired
    );
    assert_eq!(a.stock().count(sku).await.unwrap().available, 1);
    // The next period runs once more.
    rig.clock.advance(Duration::minutes(1));
    for _ in 0..2 {
        let (ra, rb) = tokio::join!(wa.run_once(), wb.run_once());
        ra.unwrap();
        rb.unwrap();
    }
    let periods = tally.periods.lock().clone();
    assert_eq!(periods.len(), 2, "{periods:?}");
    assert_eq!(periods[1] - periods[0], Duration::minutes(1));
}

/// A host job kind that records what it ran and answers as the payload says.
struct Grants {
    ran: Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl quanyi::JobHandler for Grants {
    fn kind(&self) -> &str {
        "grant_monthly"
    }

    async fn run(
        &self,
        shop: &Shop,
        job: &quanyi::Job,
    ) -> Result<quanyi::JobOutcome, quanyi::JobError> {
        assert_eq!(&job.tenant, shop.tenant());
        self.ran.lock().push(job.dedupe_key.clone());
        match job.payload.get("answer").and_then(|v| v.as_str()) {
            Some("permanent") => Err(quanyi::JobError::permanent("no such plan")),
            Some("transient") => Err(quanyi::JobError::transient("ledger busy")),
            _ => Ok(quanyi::JobOutcome::Done),
        }
    }
}

/// A worker claims only the kinds its shop runs: an older process without a newer kind's
/// handler leaves the job queued (it is neither run nor given up) for a process that has one.
/// A handler's errors retry or give the job up as they say.
pub async fn a_worker_leaves_job_kinds_it_does_not_run(store: Arc<dyn Store>) {
    let rig = Rig::new(store);
    let grants = Arc::new(Grants {
        ran: Mutex::new(Vec::new()),
    });
    let newer = rig
        .builder(rig.store.clone())
        .worker_name("newer")
        .job_handler(grants.clone())
        .build()
        .unwrap();
    let older = rig
        .builder(rig.store.clone())
        .worker_name("older")
        .build()
        .unwrap();
    let now = rig.clock.now();
    let ok = newer
        .enqueue_job("grant_monthly", "m-1", serde_json::json!({}), now)
        .await
        .unwrap();
    assert_eq!(
        newer
            .enqueue_job("grant_monthly", "m-1", serde_json::json!({}), now)
            .await
            .unwrap(),
        ok
    );
    let bad = newer
        .enqueue_job(
            "grant_monthly",
            "m-2",
            serde_json::json!({ "answer": "permanent" }),
            now,
        )
        .await
        .unwrap();
    let flaky = newer
        .enqueue_job(
            "grant_monthly",
            "m-3",
            serde_json::json!({ "answer": "transient" }),
            now,
        )
        .await
        .unwrap();
    assert!(matches!(
        older
            .enqueue_job("grant_monthly", "m-4", serde_json::json!({}), now)
            .await,
        Err(Error::InvalidInput(_))
    ));

    let run = older.run_due_jobs(10).await.unwrap();
    assert_eq!((run.done, run.retried, run.dead), (0, 0, 0));
    for id in [ok, bad, flaky] {
        let job = rig.store.job(id).await.unwrap().unwrap();
        assert_eq!((job.status, job.attempts), (quanyi::JobStatus::Queued, 0));
    }

    let run = newer.run_due_jobs(10).await.unwrap();
    assert_eq!((run.done, run.retried, run.dead), (1, 1, 1));
    assert_eq!(grants.ran.lock().len(), 3);
    let job = |id| {
        let store = rig.store.clone();
        async move { store.job(id).await.unwrap().unwrap() }
    };
    assert_eq!(job(ok).await.status, quanyi::JobStatus::Done);
    assert_eq!(
        job(bad).await.status,
        quanyi::JobStatus::Dead {
            reason: "no such plan".into()
        }
    );
    let retried = job(flaky).await;
    assert_eq!(retried.status, quanyi::JobStatus::Queued);
    assert_eq!(retried.last_error.as_deref(), Some("ledger busy"));
    assert!(retried.run_at > now);
    assert_eq!(rig.store.dead_jobs(&rig.tenant, 10).await.unwrap().len(), 1);
}

/// A consumer that records the events it handled.
struct Collector {
    name: &'static str,
    start: quanyi::StartAt,
    seen: Mutex<Vec<quanyi::crates::core::EventId>>,
}

impl Collector {
    fn new(name: &'static str, start: quanyi::StartAt) -> Arc<Self> {
        Arc::new(Collector {
            name,
            start,
            seen: Mutex::new(Vec::new()),
        })
    }
}

#[async_trait::async_trait]
impl quanyi::EventConsumer for Collector {
    fn name(&self) -> &str {
        self.name
    }

    fn start(&self) -> quanyi::StartAt {
        self.start
    }

    async fn handle(
        &self,
        shop: &Shop,
        events: &[quanyi::FeedEvent],
    ) -> Result<(), quanyi::JobError> {
        assert!(events.iter().all(|e| &e.event.tenant == shop.tenant()));
        self.seen.lock().extend(events.iter().map(|e| e.event.id));
        Ok(())
    }
}

/// Runs a shop's consumers until `collector` has seen every id of `want` (a write still in
/// progress elsewhere holds the feed back for a moment on PostgreSQL).
async fn consume_until(shop: &Shop, collector: &Collector, want: &[quanyi::crates::core::EventId]) {
    for _ in 0..100_000 {
        if want.iter().all(|id| collector.seen.lock().contains(id)) {
            return;
        }
        shop.run_consumers(16).await.unwrap();
        tokio::task::yield_now().await;
    }
    panic!("consumer {} never saw every event", collector.name);
}

/// Durable consumers read the tenant's feed from a cursor in the store: one that starts at the
/// beginning sees the events written before it first ran, one that starts at now does not;
/// after a restart (a new process) both resume at their cursors and see each event once.
pub async fn a_restarted_consumer_resumes_at_its_cursor(store: Arc<dyn Store>) {
    let rig = Rig::new(store);
    let setup = rig.shop();
    let sku = card_sku(&setup).await;
    import(&setup, sku, &["FEED-0001", "FEED-0002"]).await;
    let first = setup
        .place_order(&member("una"), &[CartLine::new(sku, 1)])
        .await
        .unwrap();
    let ids_of = |order: quanyi::OrderId| {
        let (store, tenant) = (rig.store.clone(), rig.tenant.clone());
        async move {
            store
                .aggregate_events(&tenant, "order", &order.to_string())
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.id)
                .collect::<Vec<_>>()
        }
    };
    let before = ids_of(first.id()).await;

    let (all, late) = (
        Collector::new("analytics", quanyi::StartAt::Beginning),
        Collector::new("messages", quanyi::StartAt::Now),
    );
    let process = |all: Arc<Collector>, late: Arc<Collector>| {
        rig.builder(rig.store.clone())
            .consumer(all)
            .consumer(late)
            .build()
            .unwrap()
    };
    let alone = |c: Arc<Collector>| rig.builder(rig.store.clone()).consumer(c).build().unwrap();
    consume_until(&alone(all.clone()), &all, &before).await;
    // Once the feed shows those events, a consumer that starts now takes its place after them.
    let a = process(all.clone(), late.clone());
    a.run_consumers(16).await.unwrap();
    a.run_consumers(16).await.unwrap();
    assert!(
        late.seen.lock().is_empty(),
        "a consumer that starts now skips the past"
    );

    // A new process: its consumers resume where the first stopped.
    let (all2, late2) = (
        Collector::new("analytics", quanyi::StartAt::Beginning),
        Collector::new("messages", quanyi::StartAt::Now),
    );
    let b = process(all2.clone(), late2.clone());
    let second = b
        .place_order(&member("vic"), &[CartLine::new(sku, 1)])
        .await
        .unwrap();
    let after = ids_of(second.id()).await;
    consume_until(&b, &all2, &after).await;
    consume_until(&b, &late2, &after).await;
    for c in [&all2, &late2] {
        let seen = c.seen.lock().clone();
        assert!(seen.iter().all(|id| !before.contains(id)), "nothing twice");
        assert_eq!(
            seen.iter().collect::<std::collections::HashSet<_>>().len(),
            seen.len()
        );
    }
    assert!(all.seen.lock().len() >= before.len());
    assert!(matches!(
        rig.builder(rig.store.clone())
            .consumer(Collector::new("twice", quanyi::StartAt::Now))
            .consumer(Collector::new("twice", quanyi::StartAt::Now))
            .build(),
        Err(Error::InvalidInput(_))
    ));
}
