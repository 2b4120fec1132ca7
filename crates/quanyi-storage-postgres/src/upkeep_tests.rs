//! Vacuums of the free-card queue against a real server (`QUANYI_TEST_PG_URL`). A vacuum sets
//! the table's row estimate in `pg_class` (-1 until the table is first vacuumed or analyzed),
//! which shows from the server's side that one ran and what it found.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use quanyi_storage::VaultStore;
use quanyi_testkit::fixtures::{cards, first_sku, order, t0};

use crate::batch_tests::{place, stocked, with_store_options};

/// The server's row estimate of the store's queue table, as an integer (-1: never measured).
async fn queue_rows(admin: &tokio_postgres::Client, schema: &str) -> i64 {
    admin
        .query_one(
            "SELECT c.reltuples::bigint FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = 'free_cards'",
            &[&schema],
        )
        .await
        .unwrap()
        .get(0)
}

/// Returns once `n` vacuums have finished; a guard of a minute, not a pause.
async fn until_vacuumed(finished: &mut tokio::sync::watch::Receiver<u64>, n: u64) {
    tokio::time::timeout(
        Duration::from_secs(60),
        finished.wait_for(|done| *done >= n),
    )
    .await
    .expect("a vacuum within a minute")
    .unwrap();
}

/// Places `n` one-card orders of `goods`, one after another.
async fn place_orders(
    store: &crate::PgStore,
    goods: &quanyi_goods::Goods,
    version: quanyi_storage::GoodsVersion,
    n: usize,
) {
    for i in 0..n {
        let o = order(
            goods,
            &quanyi_testkit::fixtures::member(&format!("m{i}")),
            1,
        )
        .0;
        let (_, placed) = place(store, (o, vec![version], first_sku(goods)), None)
            .await
            .unwrap();
        assert_eq!(placed.unwrap().len(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_vacuums_its_card_queue_after_every_n_cards() {
    with_store_options(
        |o| o.card_queue_vacuum_every(5),
        |store, admin, schema| async move {
            let mut finished = store.shared.upkeep.finished();
            let (goods, version) = stocked(&store, 20).await;
            // The import starts one in the background; a guard, not a pause.
            until_vacuumed(&mut finished, 1).await;
            assert_eq!(queue_rows(&admin, &schema).await, 20, "the import's vacuum");
            place_orders(&store, &goods, version, 4).await;
            assert_eq!(*finished.borrow(), 1, "four cards: no vacuum yet");
            place_orders(&store, &goods, version, 1).await;
            // The fifth card starts one.
            until_vacuumed(&mut finished, 2).await;
            assert_eq!(store.shared.upkeep.failures(), 0);
            // The vacuum ran after the fifth placement committed: 15 cards left in the queue.
            assert_eq!(queue_rows(&admin, &schema).await, 15);
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_upkeep_off_the_host_vacuums_the_queue() {
    with_store_options(
        |o| o.card_queue_vacuum_every(0),
        |store, admin, schema| async move {
            let (goods, version) = stocked(&store, 20).await;
            place_orders(&store, &goods, version, 6).await;
            assert_eq!(*store.shared.upkeep.finished().borrow(), 0);
            // Never vacuumed nor analyzed (too few rows for autovacuum to come).
            assert_eq!(queue_rows(&admin, &schema).await, -1);
            store.vacuum_card_queue().await.unwrap();
            assert_eq!(queue_rows(&admin, &schema).await, 14);
        },
    )
    .await;
}

/// The single placement's generic plan, as a connection of the store would make it now.
async fn placement_plan(admin: &tokio_postgres::Client, schema: &str, name: &str) -> String {
    admin
        .batch_execute(&format!(
            "SET search_path = {schema}; SET plan_cache_mode = force_generic_plan; SET enable_seqscan = off"
        ))
        .await
        .unwrap();
    crate::plan_tests::generic_plan(admin, name, &crate::orders::PLACE[0])
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restock_after_a_sell_out_leaves_plans_for_the_queue_as_it_is() {
    // Allocation never makes a vacuum due here: only the import does.
    with_store_options(
        |o| o.card_queue_vacuum_every(1_000_000),
        |store, admin, schema| async move {
            let mut finished = store.shared.upkeep.finished();
            let (goods, version) = stocked(&store, 3).await;
            until_vacuumed(&mut finished, 1).await;
            place_orders(&store, &goods, version, 3).await;
            // Sold out, and measured so: the planner now knows the queue as empty.
            store.vacuum_card_queue().await.unwrap();
            assert_eq!(queue_rows(&admin, &schema).await, 0);

            store
                .insert_cards(
                    goods.tenant(),
                    &cards(first_sku(&goods), 500),
                    t0(),
                    quanyi_storage::Trail::NONE,
                )
                .await
                .unwrap();
            until_vacuumed(&mut finished, 2).await;
            assert_eq!(store.shared.upkeep.failures(), 0);
            assert_eq!(queue_rows(&admin, &schema).await, 500);
            let plan = placement_plan(&admin, &schema, "after_restock").await;
            assert!(
                plan.contains("free_cards_pkey") && !plan.contains("Seq Scan on free_cards"),
                "the pick reads the queue by its index:\n{plan}"
            );
        },
    )
    .await;
}
