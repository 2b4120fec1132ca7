//! The generic plans of the hot statements reach the big tables through indexes only, even with
//! real statistics (`ANALYZE`) on a store with one SKU's worth of cards. Every pooled connection
//! runs with `plan_cache_mode=force_generic_plan`, so a plan is made once per connection without
//! the call's values; with statistics the planner used to estimate a single placement's picked
//! cards as the whole SKU and hash-join sequential scans of `free_cards` and `cards` (8.6 ms
//! per placement). Each statement here is prepared on a plain connection with the same setting
//! and explained; a sequential scan of a big table fails the test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use quanyi_core::JobId;
use quanyi_storage::{JobStore, NewJob};
use quanyi_testkit::fixtures::{first_sku, member, order, t0};

use crate::batch_tests::{pay, place, stocked, with_store_options};

/// Orders placed and paid before the statements are explained.
const ORDERS: usize = 400;

/// Tables that grow with the shop: none may be read by a sequential scan.
const BIG: [&str; 11] = [
    "cards",
    "free_cards",
    "held_cards",
    "orders",
    "order_cards",
    "payment_notices",
    "events",
    "jobs",
    "pricing_heads",
    "sale_budgets",
    "order_budgets",
];

/// The highest `$n` in a statement.
fn params(sql: &str) -> usize {
    let bytes = sql.as_bytes();
    let mut most = 0;
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'$' {
            let digits: String = sql[i + 1..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            if let Ok(n) = digits.parse::<usize>() {
                most = most.max(n);
            }
        }
    }
    most
}

/// Prepares `sql` as `name` on `admin` (whose session has the store's `search_path` and
/// `plan_cache_mode=force_generic_plan`) and explains its generic plan.
pub(crate) async fn generic_plan(
    admin: &tokio_postgres::Client,
    name: &str,
    sql: &str,
) -> Result<String, tokio_postgres::Error> {
    admin
        .batch_execute(&format!("PREPARE {name} AS {sql}"))
        .await?;
    let nulls = vec!["NULL"; params(sql)].join(", ");
    let rows = admin
        .query(&format!("EXPLAIN EXECUTE {name}({nulls})"), &[])
        .await?;
    Ok(rows
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_statements_plan_index_lookups_with_statistics() {
    with_store_options(
        |o| o,
        |store, admin, schema| async move {
            // A store in use: cards in stock, orders placed and paid, jobs queued.
            let (goods, version) = stocked(&store, 3_000).await;
            for i in 0..ORDERS {
                let o = order(&goods, &member(&format!("m{i}")), 1).0;
                let (o, placed) = place(&store, (o, vec![version], first_sku(&goods)), None)
                    .await
                    .unwrap();
                let sold = placed.unwrap();
                pay(&store, &o, &format!("tx-{i}"), sold)
                    .await
                    .unwrap()
                    .unwrap();
                let job = NewJob {
                    id: JobId::generate(t0(), &mut rand::thread_rng()),
                    tenant: goods.tenant().clone(),
                    kind: "deliver_order".into(),
                    dedupe_key: format!("deliver:{i}"),
                    payload: serde_json::json!({}),
                    run_at: t0(),
                };
                store.enqueue(&job, t0()).await.unwrap();
            }
            admin
                .batch_execute(&format!(
                    "SET search_path = {schema}; SET plan_cache_mode = force_generic_plan; SET enable_seqscan = off; \
                     ANALYZE"
                ))
                .await
                .unwrap();
            // Not here: the statements of `destroy_key` that read every card of a data key
            // (`WITHDRAW_BY_KEY`, `SHRED`). The key may have sealed most of the table, and then
            // a sequential scan is the plan to have.
            let mut statements: Vec<(String, String)> = vec![
                ("place".into(), crate::orders::PLACE[0].clone()),
                ("place with limits".into(), crate::orders::PLACE[1].clone()),
                ("place priced".into(), crate::orders::PLACE[2].clone()),
                (
                    "place priced with limits".into(),
                    crate::orders::PLACE[3].clone(),
                ),
                (
                    "place with a budget".into(),
                    crate::orders::PLACE[crate::orders::place_budget_shape(false)].clone(),
                ),
                (
                    "place priced with a budget".into(),
                    crate::orders::PLACE[crate::orders::place_budget_shape(true)].clone(),
                ),
                ("place batch".into(), crate::orders::PLACE_BATCH[0].clone()),
                (
                    "place batch priced".into(),
                    crate::orders::PLACE_BATCH[1].clone(),
                ),
                ("reserve".into(), crate::vault::RESERVE.clone()),
                ("commit".into(), crate::vault::COMMIT.clone()),
                ("import".into(), crate::vault::INSERT.clone()),
                ("bought cards".into(), crate::orders::INSERT_SOLD.clone()),
                ("close unpaid order".into(), crate::orders::CLOSE.clone()),
                ("release".into(), crate::vault::RELEASE.to_owned()),
                ("reseal".into(), crate::vault::REPLACE.clone()),
                ("cards to reindex".into(), crate::vault::TO_REINDEX.clone()),
                ("reindex".into(), crate::vault::REINDEX.to_owned()),
                ("withdraw".into(), crate::vault::WITHDRAW_BY_ID.clone()),
                (
                    "to reconcile".into(),
                    crate::payments::TO_RECONCILE.to_owned(),
                ),
                ("record batch".into(), crate::payments::RECORD_BATCH.clone()),
                ("claim due jobs".into(), crate::jobs::CLAIM_DUE.clone()),
                ("search".into(), crate::orders::SEARCH[0].to_owned()),
                ("search by member".into(), crate::orders::SEARCH[1].to_owned()),
            ];
            for shape in crate::payments::RecordShape::ALL {
                statements.push((
                    format!("record {shape:?}"),
                    crate::payments::record_sql(shape),
                ));
            }
            for (i, (name, sql)) in statements.iter().enumerate() {
                let plan = generic_plan(&admin, &format!("s{i}"), sql)
                    .await
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
                assert!(plan.contains("Index"), "{name}: {plan}");
                for table in BIG {
                    assert!(
                        !plan.contains(&format!("Seq Scan on {table} ")),
                        "{name} scans {table}:\n{plan}"
                    );
                }
            }
        },
    )
    .await;
}
