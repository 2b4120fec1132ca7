//! Conformance cases of the event log, the gap-free feed, consumer cursors and the audit log.

use super::*;

/// The event feed returns every event once, in write order, from any point.
pub async fn events_feed_in_write_order(store: Arc<dyn Store>) {
    let tenant = fixtures::tenant();
    let goods = card_goods(&tenant, PurchaseLimits::default());
    let mut written: Vec<EventEnvelope> = Vec::new();
    for n in 0..3 {
        let (order, events) = order(&goods, &member(&format!("g{n}")), 1);
        let envs = envelopes(&order, &events);
        store.insert_order(&order, &envs, &[]).await.unwrap();
        written.extend(envs);
    }
    let extra = envelopes(&order(&goods, &member("g9"), 1).0, &[]);
    store.append_events(&extra).await.unwrap();
    // A batch whose ids descend is stored and listed in write order all the same.
    let mut backwards: Vec<EventEnvelope> = (0..3)
        .flat_map(|n| {
            let (o, ev) = order(&goods, &member(&format!("b{n}")), 1);
            envelopes(&o, &ev)
        })
        .collect();
    backwards.sort_by_key(|e| std::cmp::Reverse(e.id));
    assert!(backwards.len() >= 3);
    store.append_events(&backwards).await.unwrap();
    written.extend(backwards.iter().cloned());
    // Walk the whole feed in pages and keep this tenant's events.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store.events_after(after, 7).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        seen.extend(page.into_iter().filter(|e| e.tenant == tenant));
    }
    assert_eq!(seen, written);
    // Every stored id is refused again, in or out of order, and the feed starts after any.
    for e in [&written[0], &backwards[0], &backwards[1], &backwards[2]] {
        assert_eq!(
            kind_of(store.append_events(std::slice::from_ref(e)).await),
            quanyi_core::ErrorKind::Conflict
        );
    }
    let after_middle = store.events_after(Some(backwards[1].id), 10).await.unwrap();
    assert_eq!(after_middle.first(), Some(&backwards[2]));
}

/// Audit records are kept and listed newest first, per tenant.
pub async fn audit_records_newest_first(store: Arc<dyn Store>) {
    let tenant = fixtures::tenant();
    let mut records = Vec::new();
    for (n, outcome) in [AuditOutcome::Allowed, AuditOutcome::Denied]
        .into_iter()
        .enumerate()
    {
        let r = AuditRecord {
            id: id(quanyi_core::AuditId::generate),
            tenant: tenant.clone(),
            at: t0() + Duration::seconds(n as i64),
            actor: "alice".into(),
            action: AuditAction::Reveal,
            subject: id(OrderId::generate).to_string(),
            outcome,
            detail: "2 cards".into(),
        };
        store.append_audit(&r).await.unwrap();
        records.push(r);
    }
    records.reverse();
    assert_eq!(store.audit_records(&tenant, 10).await.unwrap(), records);
    assert_eq!(store.audit_records(&tenant, 1).await.unwrap().len(), 1);
    assert!(
        store
            .audit_records(&fixtures::tenant(), 10)
            .await
            .unwrap()
            .is_empty()
    );
}

/// One event of an order of `goods` that is not stored (an event of no stored change).
pub(super) fn loose_event(goods: &quanyi_goods::Goods) -> EventEnvelope {
    let (o, events) = order(goods, &member("loose"), 1);
    envelopes(&o, &events).remove(0)
}

/// Reads a tenant's feed from `after` until it holds `want` events or `reads` reads are done.
pub(super) async fn drain_feed(
    store: &dyn Store,
    tenant: &TenantId,
    after: FeedPosition,
    want: usize,
    reads: usize,
) -> Vec<FeedEvent> {
    let mut got: Vec<FeedEvent> = Vec::new();
    let mut cursor = after;
    for _ in 0..reads {
        if got.len() >= want {
            break;
        }
        let batch = store.read_feed(tenant, cursor, 64).await.unwrap();
        match batch.last() {
            Some(last) => cursor = last.position,
            // Nothing new yet (a write still in progress): read again.
            None => tokio::task::yield_now().await,
        }
        got.extend(batch);
    }
    got
}

/// Eight writers append events (orders with their events, and events of no aggregate) while a
/// reader follows the feed from its cursor: afterwards the reader has seen every event exactly
/// once, in ascending positions, and none of another tenant's.
pub async fn the_feed_is_gap_free_under_concurrent_writers(store: Arc<dyn Store>) {
    let tenant = fixtures::tenant();
    let other = fixtures::tenant();
    let goods = Arc::new(card_goods(&tenant, PurchaseLimits::default()));
    let theirs = Arc::new(card_goods(&other, PurchaseLimits::default()));
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (store, goods, done, theirs) =
                (store.clone(), goods.clone(), done.clone(), theirs.clone());
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for n in 0..12 {
                    let (o, events) = order(&goods, &member(&format!("w{w}-{n}")), 1);
                    let envs = envelopes(&o, &events);
                    store.insert_order(&o, &envs, &[]).await.unwrap();
                    ids.extend(envs.iter().map(|e| e.id));
                    let loose = loose_event(&goods);
                    store
                        .append_events(std::slice::from_ref(&loose))
                        .await
                        .unwrap();
                    ids.push(loose.id);
                    let noise = loose_event(&theirs);
                    store.append_events(&[noise]).await.unwrap();
                }
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                ids
            })
        })
        .collect();
    // The reader races the writers.
    let mut seen: Vec<FeedEvent> = Vec::new();
    let mut cursor = FeedPosition::START;
    while done.load(std::sync::atomic::Ordering::SeqCst) < 8 {
        let batch = store.read_feed(&tenant, cursor, 16).await.unwrap();
        if let Some(last) = batch.last() {
            cursor = last.position;
        }
        seen.extend(batch);
        tokio::task::yield_now().await;
    }
    let mut written = HashSet::new();
    for w in writers {
        written.extend(w.await.unwrap());
    }
    let rest = written.len().saturating_sub(seen.len());
    seen.extend(drain_feed(&*store, &tenant, cursor, rest, 100_000).await);
    let ids: Vec<_> = seen.iter().map(|e| e.event.id).collect();
    assert_eq!(ids.len(), written.len(), "every event exactly once");
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), ids.len());
    assert!(ids.iter().all(|id| written.contains(id)));
    assert!(seen.iter().all(|e| e.event.tenant == tenant));
    assert!(
        seen.windows(2).all(|p| p[0].position < p[1].position),
        "ascending positions"
    );
    assert!(seen[0].position > FeedPosition::START);
    // The head is the last position; nothing comes after it until something is written.
    assert_eq!(
        store.feed_head(&tenant).await.unwrap(),
        seen.last().unwrap().position
    );
    assert!(
        store
            .read_feed(&tenant, seen.last().unwrap().position, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // Reading again from any position gives the same events after it.
    let middle = seen.len() / 2;
    let again = drain_feed(
        &*store,
        &tenant,
        seen[middle].position,
        seen.len() - middle - 1,
        1000,
    )
    .await;
    assert_eq!(
        again.iter().map(|e| e.event.id).collect::<Vec<_>>(),
        ids[middle + 1..]
    );
}

/// A consumer's cursor is stored per tenant and name and moves only from the position the
/// mover read: a second process moving it from a stale position gets a conflict. A consumer
/// that starts at the feed's head sees only what is written after.
pub async fn consumer_cursors_move_by_compare_and_swap(store: Arc<dyn Store>) {
    let tenant = fixtures::tenant();
    let other = fixtures::tenant();
    let goods = card_goods(&tenant, PurchaseLimits::default());
    assert_eq!(store.feed_head(&tenant).await.unwrap(), FeedPosition::START);
    for _ in 0..3 {
        store.append_events(&[loose_event(&goods)]).await.unwrap();
    }
    let feed = drain_feed(&*store, &tenant, FeedPosition::START, 3, 100_000).await;
    assert_eq!(feed.len(), 3);
    let head = store.feed_head(&tenant).await.unwrap();
    assert_eq!(head, feed[2].position);
    assert_eq!(
        store.consumer_cursor(&tenant, "growth").await.unwrap(),
        None
    );
    store
        .save_consumer_cursor(&tenant, "growth", None, feed[0].position)
        .await
        .unwrap();
    assert_eq!(
        kind_of(
            store
                .save_consumer_cursor(&tenant, "growth", None, feed[1].position)
                .await
        ),
        quanyi_core::ErrorKind::Conflict
    );
    store
        .save_consumer_cursor(&tenant, "growth", Some(feed[0].position), feed[1].position)
        .await
        .unwrap();
    assert_eq!(
        kind_of(
            store
                .save_consumer_cursor(&tenant, "growth", Some(feed[0].position), feed[2].position)
                .await
        ),
        quanyi_core::ErrorKind::Conflict
    );
    assert_eq!(
        store.consumer_cursor(&tenant, "growth").await.unwrap(),
        Some(feed[1].position)
    );
    // Another tenant's consumer of the same name is its own, and sees none of these events.
    assert_eq!(store.consumer_cursor(&other, "growth").await.unwrap(), None);
    assert!(
        store
            .read_feed(&other, FeedPosition::START, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // A consumer starting at the head sees only what comes after it.
    store
        .save_consumer_cursor(&tenant, "messages", None, head)
        .await
        .unwrap();
    let later = loose_event(&goods);
    store
        .append_events(std::slice::from_ref(&later))
        .await
        .unwrap();
    let next = drain_feed(&*store, &tenant, head, 1, 100_000).await;
    assert_eq!(
        next.iter().map(|e| e.event.id).collect::<Vec<_>>(),
        [later.id]
    );
    for bad in ["", "has space", &"n".repeat(65)] {
        assert_eq!(
            kind_of(store.consumer_cursor(&tenant, bad).await),
            quanyi_core::ErrorKind::Invalid
        );
        assert_eq!(
            kind_of(store.save_consumer_cursor(&tenant, bad, None, head).await),
            quanyi_core::ErrorKind::Invalid
        );
    }
}
