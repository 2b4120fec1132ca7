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
];

/// The schema version this code creates and understands.
pub const SCHEMA_VERSION: u32 = 8;

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
