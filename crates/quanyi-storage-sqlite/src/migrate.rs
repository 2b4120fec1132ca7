//! Embedded migrations, applied in order on open and recorded in `schema_version`.

use chrono::Utc;
use quanyi_storage::{Error, Result};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::convert::{SqlResult, ts};

/// The migrations this build knows, version `i + 1` at index `i`.
const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/0001_init.sql"),
    include_str!("../migrations/0002_orders_updated_at.sql"),
    include_str!("../migrations/0003_withdrawn_cards_index_schemes_notice_repeats.sql"),
    include_str!("../migrations/0004_lean_order_path.sql"),
    include_str!("../migrations/0005_sale_claims.sql"),
    include_str!("../migrations/0006_event_consumers.sql"),
    include_str!("../migrations/0007_order_search.sql"),
];

/// The schema version this build writes and reads.
const SCHEMA_VERSION: i64 = crate::SCHEMA_VERSION as i64;

const _: () = assert!(MIGRATIONS.len() == crate::SCHEMA_VERSION as usize);

/// Brings the database to [`SCHEMA_VERSION`]; each migration runs in its own `BEGIN IMMEDIATE`
/// transaction together with its `schema_version` row, so two processes opening one file at once
/// apply it once.
///
/// # Errors
/// `Invalid` when the database was written by a newer build (its version is higher than this
/// build knows); `Unavailable` when the database is busy or cannot be written.
pub(crate) fn migrate(conn: &mut Connection) -> Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_version (
             version    INTEGER NOT NULL PRIMARY KEY,
             applied_at INTEGER NOT NULL
         )",
    )
    .db()?;
    loop {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .db()?;
        let current = current_version(&tx)?;
        if current > SCHEMA_VERSION {
            return Err(Error::Invalid(format!(
                "database schema version {current} is newer than this build knows \
                 ({SCHEMA_VERSION}); upgrade quanyi-storage-sqlite"
            )));
        }
        if current == SCHEMA_VERSION {
            return tx.commit().db();
        }
        let index = usize::try_from(current).unwrap_or(0);
        let sql = MIGRATIONS
            .get(index)
            .ok_or_else(|| Error::Corrupt(format!("schema version {current} is unknown")))?;
        tx.execute_batch(sql).db()?;
        tx.execute(
            "INSERT INTO schema_version (version, applied_at) VALUES (?1, ?2)",
            params![current + 1, ts(Utc::now())?],
        )
        .db()?;
        tx.commit().db()?;
    }
}

/// The highest applied version, 0 for a new database.
pub(crate) fn current_version(conn: &Connection) -> Result<i64> {
    let v: Option<i64> = conn
        .query_row("SELECT MAX(version) FROM schema_version", [], |r| r.get(0))
        .optional()
        .db()?
        .flatten();
    let v = v.unwrap_or(0);
    if v < 0 {
        return Err(Error::Corrupt(format!("schema version {v} is negative")));
    }
    Ok(v)
}
