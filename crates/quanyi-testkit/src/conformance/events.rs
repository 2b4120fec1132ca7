//! Conformance case of what an event envelope carries beyond its body.

use std::sync::Arc;

use quanyi_core::EventEnvelope;
use quanyi_goods::PurchaseLimits;
use quanyi_storage::{FeedPosition, Store};

use super::feed::{drain_feed, loose_event};
use crate::fixtures::{self, card_goods, envelopes, member, order};

/// Events keep their schema version and correlation id through every way a store is read:
/// an aggregate's events, the global log and the gap-free feed; events without them read back
/// as version 1 correlated by their aggregate.
pub async fn events_keep_their_schema_version_and_correlation(store: Arc<dyn Store>) {
    let tenant = fixtures::tenant();
    let goods = card_goods(&tenant, PurchaseLimits::default());
    store
        .insert_goods(&goods, quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    let (placed, events) = order(&goods, &member("cora"), 1);
    let mut envs = envelopes(&placed, &events);
    let request: Arc<str> = Arc::from("placement:cora-checkout-7");
    for e in &mut envs {
        e.correlation_id = Some(request.clone());
        e.schema_version = 2;
    }
    store.insert_order(&placed, &envs, &[]).await.unwrap();
    let plain = loose_event(&goods);
    store
        .append_events(std::slice::from_ref(&plain))
        .await
        .unwrap();

    let stored = store
        .aggregate_events(&tenant, "order", &placed.id().to_string())
        .await
        .unwrap();
    assert_eq!(stored, envs);
    assert!(stored.iter().all(|e| e.correlation() == &*request));
    let feed = drain_feed(
        &*store,
        &tenant,
        FeedPosition::START,
        envs.len() + 1,
        100_000,
    )
    .await;
    let from_feed: Vec<EventEnvelope> = feed.into_iter().map(|f| f.event).collect();
    let mut all = envs.clone();
    all.push(plain.clone());
    assert_eq!(from_feed, all);
    let last = from_feed.last().unwrap();
    assert_eq!(last.schema_version, 1);
    assert_eq!(last.correlation_id, None);
    assert_eq!(last.correlation(), &*last.aggregate_id);
    let logged: Vec<EventEnvelope> = store
        .events_after(None, 100_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.tenant == tenant)
        .collect();
    assert_eq!(logged, all);
}
