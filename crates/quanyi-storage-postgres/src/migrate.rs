//! Embedded migrations, recorded in `schema_version`.

use quanyi_storage::{Error, Result};

use crate::PgStore;
use crate::error::db;

/// The migrations this code ships, in order: (version, name, SQL).
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "init", include_str!("../migrations/0001_init.sql")),
    (
        2,
        "orders_updated_at",
        include_str!("../migrations/0002_orders_updated_at.sql"),
    ),
    (
        3,
        "free_cards",
        include_str!("../migrations/0003_free_cards.sql"),
    ),
    (
        4,
        "withdrawn_cards_index_schemes",
        include_str!("../migrations/0004_withdrawn_cards_index_schemes.sql"),
    ),
    (
        5,
        "lean_order_path",
        include_str!("../migrations/0005_lean_order_path.sql"),
    ),
    (
        6,
        "sale_claims",
        include_str!("../migrations/0006_sale_claims.sql"),
    ),
    (
        7,
        "event_feed",
        include_str!("../migrations/0007_event_feed.sql"),
    ),
    (
        8,
        "order_search",
        include_str!("../migrations/0008_order_search.sql"),
    ),
    (
        9,
        "line_terms",
        include_str!("../migrations/0009_line_terms.sql"),
    ),
    (
        10,
        "after_sales",
        include_str!("../migrations/0010_after_sales.sql"),
    ),
    (
        11,
        "pricing",
        include_str!("../migrations/0011_pricing.sql"),
    ),
];

/// The version whose migration gives old orders' lines their terms ([`complete_line_terms`]).
const LINE_TERMS: i32 = 9;

/// The schema version this code creates and understands.
pub const SCHEMA_VERSION: u32 = 11;

impl PgStore {
    /// Creates the schema if missing and applies the migrations it lacks, each recorded in
    /// `schema_version`, all in one transaction. Idempotent, and safe when several processes
    /// call it at once (they take turns on an advisory lock). Hosts may run it at deployment
    /// rather than at start-up.
    ///
    /// # Errors
    /// `Invalid` when the database holds a newer schema version than this code knows;
    /// `Unavailable` when the server fails or cannot be reached (nothing is applied).
    pub async fn migrate(&self) -> Result<()> {
        let schema = self.schema();
        let mut conn = self.conn().await?;
        conn.in_txn = true;
        let client = conn.client();
        client
            .batch_execute(&format!(
                "BEGIN; \
                 SELECT pg_advisory_xact_lock(hashtextextended('quanyi-migrate:{schema}', 0)); \
                 CREATE SCHEMA IF NOT EXISTS {schema}; \
                 SET LOCAL search_path TO {schema}; \
                 CREATE TABLE IF NOT EXISTS schema_version ( \
                     version    integer PRIMARY KEY, \
                     name       text NOT NULL, \
                     applied_at timestamptz NOT NULL DEFAULT now() \
                 );"
            ))
            .await
            .map_err(db)?;
        let row = client
            .query_one("SELECT COALESCE(max(version), 0) FROM schema_version", &[])
            .await
            .map_err(db)?;
        let current: i32 = row.try_get(0).map_err(db)?;
        let known = MIGRATIONS.last().map_or(0, |m| m.0);
        if current > known {
            client.batch_execute("ROLLBACK").await.map_err(db)?;
            conn.in_txn = false;
            return Err(Error::Invalid(format!(
                "schema {schema} is at version {current}, newer than this code knows ({known}): \
                 upgrade quanyi-storage-postgres"
            )));
        }
        for (version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
            client.batch_execute(sql).await.map_err(db)?;
            if *version == LINE_TERMS {
                complete_line_terms(client).await?;
            }
            client
                .execute(
                    "INSERT INTO schema_version (version, name) VALUES ($1, $2)",
                    &[version, name],
                )
                .await
                .map_err(db)?;
        }
        client.batch_execute("COMMIT").await.map_err(db)?;
        conn.in_txn = false;
        Ok(())
    }

    /// The schema version the database holds: `None` before the first
    /// [`migrate`](PgStore::migrate).
    ///
    /// # Errors
    /// `Unavailable` when the server fails or cannot be reached.
    pub async fn schema_version(&self) -> Result<Option<u32>> {
        let conn = self.conn().await?;
        let row = conn
            .client()
            .query_one("SELECT to_regclass('schema_version') IS NOT NULL", &[])
            .await
            .map_err(db)?;
        let exists: bool = row.try_get(0).map_err(db)?;
        if !exists {
            return Ok(None);
        }
        let row = conn
            .client()
            .query_one("SELECT max(version) FROM schema_version", &[])
            .await
            .map_err(db)?;
        let v: Option<i32> = row.try_get(0).map_err(db)?;
        Ok(v.and_then(|v| u32::try_from(v).ok()))
    }
}

/// Gives every stored order whose lines lack their terms the terms of its goods as they are
/// now (see [`quanyi_order::complete_terms`]), and rewrites what it counts toward member
/// limits. The goods are read first (a catalog is small), the orders in pages by key.
async fn complete_line_terms(client: &tokio_postgres::Client) -> Result<()> {
    use std::collections::HashMap;

    let mut goods: HashMap<(String, uuid::Uuid), quanyi_goods::Goods> = HashMap::new();
    for row in client
        .query(
            "SELECT s.tenant, s.sku, g.doc FROM skus s \
             JOIN goods g ON g.tenant = s.tenant AND g.id = s.goods",
            &[],
        )
        .await
        .map_err(db)?
    {
        let doc: &str = row.try_get(2).map_err(db)?;
        goods.insert(
            (row.try_get(0).map_err(db)?, row.try_get(1).map_err(db)?),
            crate::codec::from_json(doc, "goods")?,
        );
    }
    let mut after = (String::new(), uuid::Uuid::nil());
    loop {
        let page = client
            .query(
                "SELECT tenant, id, doc FROM orders WHERE (tenant, id) > ($1, $2) \
                 ORDER BY tenant, id LIMIT 500",
                &[&after.0, &after.1],
            )
            .await
            .map_err(db)?;
        let Some(last) = page.last() else {
            return Ok(());
        };
        after = (last.try_get(0).map_err(db)?, last.try_get(1).map_err(db)?);
        for row in &page {
            let tenant: String = row.try_get(0).map_err(db)?;
            let id: uuid::Uuid = row.try_get(1).map_err(db)?;
            let doc: &str = row.try_get(2).map_err(db)?;
            let mut goods_by_sku =
                |sku: quanyi_core::SkuId| goods.get(&(tenant.clone(), *sku.as_uuid())).cloned();
            let completed = quanyi_order::complete_terms(doc, &mut goods_by_sku)
                .map_err(|reason| Error::Corrupt(format!("stored order {id}: {reason}")))?;
            let Some(order) = completed else { continue };
            let (skus, units): (Vec<uuid::Uuid>, Vec<i64>) = order
                .limit_units()
                .map(|(sku, n)| (*sku.as_uuid(), i64::from(n)))
                .unzip();
            client
                .execute(
                    "UPDATE orders SET doc = $3, line_skus = $4, line_qtys = $5 \
                     WHERE tenant = $1 AND id = $2",
                    &[
                        &tenant,
                        &id,
                        &crate::codec::to_json(&order, "order")?,
                        &skus,
                        &units,
                    ],
                )
                .await
                .map_err(db)?;
        }
    }
}
