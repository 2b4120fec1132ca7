//! A placement that takes one budget (an issued coupon's use) against a real server
//! (`QUANYI_TEST_PG_URL`): one statement takes the budget only when it writes the order, and
//! records the take for the order; a refusal for another reason takes nothing, and a budget
//! refusal writes nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use quanyi_core::SkuId;
use quanyi_goods::Goods;
use quanyi_order::Order;
use quanyi_storage::{
    BudgetTake, Error, GoodsVersion, NewOrder, OrderStore, Reservation, VaultStore,
};
use quanyi_testkit::fixtures::{envelopes, first_sku, member, order, t0};

use crate::PgStore;
use crate::batch_tests::{stocked, with_store};
use crate::orders::{PLACE, place_budget_shape, place_shape};

fn coupon(limit: u64, amount: u64) -> BudgetTake {
    BudgetTake {
        scope: "coupon".into(),
        key: "c-1".into(),
        limit,
        amount,
    }
}

async fn place_with(
    store: &PgStore,
    goods: &Goods,
    version: GoodsVersion,
    who: &str,
    quantity: u32,
    budget: BudgetTake,
) -> (Order, Result<Vec<quanyi_core::CardId>, Error>) {
    let o = order(goods, &member(who), quantity).0;
    let envs = envelopes(&o, &[]);
    let sku: SkuId = first_sku(goods);
    let r = store
        .place_order(
            NewOrder {
                order: &o,
                events: &envs,
                reservations: &[Reservation { sku, quantity }],
                member_limits: &[],
                priced_from: &[version],
                claims: &[],
                budgets: &[budget],
                pricing_version: None,
            },
            t0(),
        )
        .await;
    (o, r)
}

async fn count(admin: &tokio_postgres::Client, sql: &str) -> i64 {
    admin.query_one(sql, &[]).await.unwrap().get(0)
}

#[test]
fn only_the_budget_shapes_name_the_budget_tables() {
    for pricing in [false, true] {
        for limits in [false, true] {
            let sql = &PLACE[place_shape(limits, pricing)];
            assert!(!sql.contains("sale_budgets"), "{sql}");
            assert!(!sql.contains("order_budgets"), "{sql}");
            assert!(!sql.contains("$29"), "{sql}");
        }
        let sql = &PLACE[place_budget_shape(pricing)];
        assert!(sql.contains("sale_budgets") && sql.contains("order_budgets"));
        assert_eq!(sql.contains("pricing_heads"), pricing);
        assert!(sql.contains("$32") && !sql.contains("$33"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_budget_is_taken_only_with_its_order() {
    with_store(|store, admin, schema| async move {
        let (goods, version) = stocked(&store, 2).await;
        let tenant = goods.tenant().clone();
        let orders = format!("SELECT count(*) FROM {schema}.orders");
        let takes = format!("SELECT count(*) FROM {schema}.order_budgets");
        let budget_rows = format!("SELECT count(*) FROM {schema}.sale_budgets");

        // Refused for stock: no use taken, no row of the budget written, nothing recorded.
        let (_, r) = place_with(&store, &goods, version, "greedy", 3, coupon(2, 1)).await;
        assert!(matches!(r, Err(Error::OutOfStock { .. })), "{r:?}");
        assert_eq!(count(&admin, &budget_rows).await, 0);
        assert_eq!(count(&admin, &takes).await, 0);
        assert_eq!(count(&admin, &orders).await, 0);

        // Refused for a stale goods version: nothing taken either.
        let stale = GoodsVersion {
            version: version.version + 1,
            ..version
        };
        let (_, r) = place_with(&store, &goods, stale, "stale", 1, coupon(2, 1)).await;
        assert!(matches!(r, Err(Error::Conflict { .. })), "{r:?}");
        assert_eq!(count(&admin, &budget_rows).await, 0);

        // An amount past the limit: refused for the budget, nothing written.
        let (_, r) = place_with(&store, &goods, version, "big", 1, coupon(2, 3)).await;
        assert!(
            matches!(&r, Err(Error::BudgetExhausted { scope, key }) if scope == "coupon" && key == "c-1"),
            "{r:?}"
        );
        assert_eq!(count(&admin, &orders).await, 0);
        assert_eq!(count(&admin, &budget_rows).await, 0);

        // Taken with the order, and recorded for it with its amount.
        let (first, r) = place_with(&store, &goods, version, "first", 1, coupon(2, 2)).await;
        assert_eq!(r.unwrap().len(), 1);
        assert_eq!(store.budget_used(&tenant, "coupon", "c-1").await.unwrap(), 2);
        let row = admin
            .query_one(
                &format!("SELECT order_id, scope, key, amount FROM {schema}.order_budgets"),
                &[],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, uuid::Uuid>(0), *first.id().as_uuid());
        assert_eq!(row.get::<_, String>(1), "coupon");
        assert_eq!(row.get::<_, String>(2), "c-1");
        assert_eq!(row.get::<_, i64>(3), 2);

        // The budget is spent: the next placement writes nothing and keeps its card free.
        let (second, r) = place_with(&store, &goods, version, "second", 1, coupon(2, 1)).await;
        assert!(matches!(r, Err(Error::BudgetExhausted { .. })), "{r:?}");
        assert!(store.order(&tenant, second.id()).await.unwrap().is_none());
        assert_eq!(count(&admin, &orders).await, 1);
        assert_eq!(count(&admin, &takes).await, 1);
        let stock = store.stock(&tenant, first_sku(&goods), t0()).await.unwrap();
        assert_eq!((stock.available, stock.reserved), (1, 1));
        assert_eq!(store.budget_used(&tenant, "coupon", "c-1").await.unwrap(), 2);
    })
    .await;
}
