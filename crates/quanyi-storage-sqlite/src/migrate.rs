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
    include_str!("../migrations/0008_line_terms.sql"),
    include_str!("../migrations/0009_after_sales.sql"),
    include_str!("../migrations/0010_pricing.sql"),
];

/// The version whose migration gives old orders' lines their terms ([`complete_line_terms`]).
const LINE_TERMS: i64 = 8;

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
        if current + 1 == LINE_TERMS {
            complete_line_terms(&tx)?;
        }
        tx.execute(
            "INSERT INTO schema_version (version, applied_at) VALUES (?1, ?2)",
            params![current + 1, ts(Utc::now())?],
        )
        .db()?;
        tx.commit().db()?;
    }
}

/// Gives every stored order whose lines lack their terms the terms of its goods as they are
/// now (see [`quanyi_order::complete_terms`]), and rewrites what it counts toward member
/// limits. Orders are read in pages by id, so memory stays bounded on a large store.
fn complete_line_terms(tx: &rusqlite::Transaction<'_>) -> Result<()> {
    let mut after: (String, Vec<u8>) = (String::new(), Vec::new());
    loop {
        let page: Vec<(String, Vec<u8>, String)> = tx
            .prepare(
                "SELECT tenant, id, doc FROM orders WHERE (tenant, id) > (?1, ?2)
                 ORDER BY tenant, id LIMIT 500",
            )
            .db()?
            .query_map(params![after.0, after.1], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .db()?
            .collect::<rusqlite::Result<_>>()
            .db()?;
        let Some((tenant, id, _)) = page.last() else {
            return Ok(());
        };
        after = (tenant.clone(), id.clone());
        for (tenant, id, doc) in page {
            let mut goods_by_sku = |sku: quanyi_core::SkuId| -> Option<quanyi_goods::Goods> {
                tx.query_row(
                    "SELECT g.doc FROM skus s JOIN goods g ON g.tenant = s.tenant AND g.id = s.goods
                     WHERE s.tenant = ?1 AND s.sku = ?2",
                    params![tenant, sku.as_bytes()],
                    |r| r.get::<_, String>(0),
                )
                .ok()
                .and_then(|doc| serde_json::from_str(&doc).ok())
            };
            let completed = quanyi_order::complete_terms(&doc, &mut goods_by_sku)
                .map_err(|reason| Error::Corrupt(format!("stored order: {reason}")))?;
            let Some(order) = completed else { continue };
            tx.execute(
                "UPDATE orders SET doc = ?3, lines = ?4 WHERE tenant = ?1 AND id = ?2",
                params![
                    tenant,
                    id,
                    crate::convert::to_doc(&order, "order")?,
                    crate::orders::encode_lines(&order)
                ],
            )
            .db()?;
        }
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
