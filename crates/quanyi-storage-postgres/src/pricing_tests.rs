//! Pricing rules against a real server (`QUANYI_TEST_PG_URL`): combined placements check each
//! request's pricing version, placements without one leave the rules out of their statements,
//! and writes of the rules from one version take turns on the tenant's head row.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use quanyi_core::TenantId;
use quanyi_goods::Goods;
use quanyi_storage::{
    EntryChange, Error, GoodsVersion, OrderStore, PRICING_CHANGED, PricingKind, PricingStore,
    PricingWrite, Trail, VaultStore,
};
use quanyi_testkit::fixtures::{first_sku, member, order, t0};

use crate::batch_tests::{hold_then_release, place, place_priced, placements, stocked, with_store};
use crate::orders::{PLACE, PLACE_BATCH, place_shape};
use crate::{BatchCount, PgStore};

/// Writes the tenant's rules from version `expected` (one promotion).
async fn write_rules(
    store: &PgStore,
    tenant: &TenantId,
    expected: u64,
) -> quanyi_storage::Result<u64> {
    let changes = [EntryChange {
        kind: PricingKind::Promotion,
        id: "spring".into(),
        body: Some(format!("{{\"from\":{expected}}}")),
    }];
    let write = PricingWrite {
        tenant,
        expected,
        changes: &changes,
        at: t0(),
    };
    store.write_pricing(write, Trail::NONE).await
}

fn buy(
    goods: &Goods,
    version: GoodsVersion,
    who: &str,
) -> (quanyi_order::Order, Vec<GoodsVersion>, quanyi_core::SkuId) {
    (
        order(goods, &member(who), 1).0,
        vec![version],
        first_sku(goods),
    )
}

#[test]
fn placements_without_a_pricing_version_leave_the_rules_out() {
    for limits in [false, true] {
        assert!(!PLACE[place_shape(limits, false)].contains("pricing_heads"));
        assert!(PLACE[place_shape(limits, true)].contains("pricing_heads"));
    }
    assert!(!PLACE_BATCH[0].contains("pricing_heads"));
    assert!(PLACE_BATCH[1].contains("pricing_heads"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_checks_each_requests_pricing_version() {
    with_store(|store, admin, schema| async move {
        let (goods, current) = stocked(&store, 10).await;
        // Another tenant, whose rules were never written (version 0).
        let (other, other_version) = stocked(&store, 10).await;
        assert_eq!(write_rules(&store, goods.tenant(), 0).await.unwrap(), 1);
        let (first, rest) = hold_then_release(
            &store,
            &admin,
            &schema,
            placements,
            || place(&store, buy(&goods, current, "first"), None),
            || {
                vec![
                    place_priced(&store, buy(&goods, current, "fresh"), None, Some(1)),
                    place_priced(&store, buy(&goods, current, "stale"), None, Some(0)),
                    place_priced(&store, buy(&goods, current, "ahead"), None, Some(2)),
                    place(&store, buy(&goods, current, "unpriced"), None),
                    place_priced(&store, buy(&other, other_version, "other"), None, Some(0)),
                ]
            },
        )
        .await;
        assert!(first.1.is_ok(), "{:?}", first.1);
        // The five queued calls went out as one batch; the two refused ran alone after it.
        assert_eq!(
            store.batch_counts().placements,
            BatchCount {
                batches: 2,
                requests: 6
            }
        );
        for (o, r) in [&rest[0], &rest[3], &rest[4]] {
            assert_eq!(r.as_ref().unwrap().len(), 1);
            assert!(store.order(o.tenant(), o.id()).await.unwrap().is_some());
        }
        for (o, r) in &rest[1..3] {
            assert!(
                matches!(r, Err(Error::Conflict { what: "pricing", reason, .. }) if *reason == PRICING_CHANGED),
                "{r:?}"
            );
            assert!(store.order(o.tenant(), o.id()).await.unwrap().is_none());
        }
        // first, fresh and unpriced hold a card each; the refused took none.
        let stock = store
            .stock(goods.tenant(), first_sku(&goods), t0())
            .await
            .unwrap();
        assert_eq!((stock.available, stock.reserved), (7, 3));
    })
    .await;
}

/// Waits (yielding, no sleep) until a backend waits on a lock `admin`'s transaction holds.
async fn until_blocked_by(admin: &tokio_postgres::Client) {
    loop {
        let row = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE pg_backend_pid() = ANY(pg_blocking_pids(pid))",
                &[],
            )
            .await
            .unwrap();
        if row.get::<_, i64>(0) > 0 {
            return;
        }
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_of_the_rules_from_one_version_take_turns_on_the_head_row() {
    with_store(|store, admin, schema| async move {
        // Version 0: a writer that inserted the head row first (uncommitted) wins; the second
        // waits for it, then writes nothing.
        for (commit, expected) in [("COMMIT", None), ("ROLLBACK", Some(1))] {
            let tenant = quanyi_testkit::fixtures::tenant();
            admin
                .batch_execute(&format!(
                    "BEGIN; INSERT INTO {schema}.pricing_heads (tenant, version) VALUES ('{}', 1)",
                    tenant.as_str()
                ))
                .await
                .unwrap();
            let racing = {
                let (store, tenant) = (store.clone(), tenant.clone());
                tokio::spawn(async move { write_rules(&store, &tenant, 0).await })
            };
            until_blocked_by(&admin).await;
            admin.batch_execute(commit).await.unwrap();
            let written = racing.await.unwrap();
            match expected {
                Some(v) => assert_eq!(written.unwrap(), v),
                None => assert!(
                    matches!(
                        &written,
                        Err(Error::Conflict {
                            what: "pricing",
                            ..
                        })
                    ),
                    "{written:?}"
                ),
            }
            let history = store
                .pricing_history(&tenant, PricingKind::Promotion, "spring")
                .await
                .unwrap();
            assert_eq!(history.len(), usize::from(expected.is_some()));
        }
        // From version 1: a writer that moved the row to 2 (uncommitted) holds it; the second
        // writer from 1 waits, then finds the row moved (or, after a rollback, writes 2).
        for (commit, expected) in [("COMMIT", None), ("ROLLBACK", Some(2))] {
            let tenant = quanyi_testkit::fixtures::tenant();
            assert_eq!(write_rules(&store, &tenant, 0).await.unwrap(), 1);
            admin
                .batch_execute(&format!(
                    "BEGIN; UPDATE {schema}.pricing_heads SET version = 2 WHERE tenant = '{}'",
                    tenant.as_str()
                ))
                .await
                .unwrap();
            let racing = {
                let (store, tenant) = (store.clone(), tenant.clone());
                tokio::spawn(async move { write_rules(&store, &tenant, 1).await })
            };
            until_blocked_by(&admin).await;
            admin.batch_execute(commit).await.unwrap();
            let written = racing.await.unwrap();
            match expected {
                Some(v) => assert_eq!(written.unwrap(), v),
                None => assert!(
                    matches!(
                        &written,
                        Err(Error::Conflict {
                            what: "pricing",
                            ..
                        })
                    ),
                    "{written:?}"
                ),
            }
            let snapshot = store.pricing(&tenant).await.unwrap();
            let body = if expected.is_some() {
                "{\"from\":1}"
            } else {
                "{\"from\":0}"
            };
            assert_eq!(snapshot.entries[0].body, body);
        }
    })
    .await;
}
