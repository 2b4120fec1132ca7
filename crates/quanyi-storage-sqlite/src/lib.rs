#![doc = include_str!("../README.md")]

mod cards;
mod catalog;
mod convert;
mod jobs;
mod logs;
mod migrate;
mod orders;
mod payments;
mod pool;
mod pricing;
mod rings;

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use quanyi_storage::Result;

pub use pool::Synchronous;

use crate::pool::{Pool, Settings};

/// The schema version this build of the adapter writes (the number of embedded migrations).
pub const SCHEMA_VERSION: u32 = 10;

/// Every quanyi storage port over one SQLite database file.
///
/// Cheap to clone (clones share one connection pool). Each command runs on a blocking thread
/// in one transaction: writes in `BEGIN IMMEDIATE`, reads in a deferred transaction. The file
/// uses write-ahead logging (`journal_mode=WAL`) with `synchronous=FULL` by default (see
/// [`Synchronous`]); a database still busy after the busy timeout (5 s by default) answers
/// [`Error::Unavailable`](quanyi_storage::Error::Unavailable). Several stores, in one process
/// or several, may open the same file.
///
/// ```no_run
/// # async fn run() -> Result<(), quanyi_storage::Error> {
/// use std::sync::Arc;
/// use quanyi_storage::Store;
/// use quanyi_storage_sqlite::SqliteStore;
///
/// let store: Arc<dyn Store> = Arc::new(SqliteStore::open("shop.db").await?);
/// # let _ = store;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct SqliteStore {
    pool: Arc<Pool>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` with the default settings, and applies
    /// the embedded migrations it lacks.
    ///
    /// # Errors
    /// `Unavailable` when the file cannot be opened or written, or stays busy; `Invalid` when
    /// the database was written by a newer version of this adapter (its schema version is
    /// higher than [`SCHEMA_VERSION`]).
    pub async fn open(path: impl AsRef<Path>) -> Result<SqliteStore> {
        SqliteStore::builder(path).open().await
    }

    /// A builder for a store with non-default settings.
    pub fn builder(path: impl AsRef<Path>) -> SqliteStoreBuilder {
        SqliteStoreBuilder {
            settings: Settings {
                path: path.as_ref().to_path_buf(),
                busy_timeout: Duration::from_secs(5),
                max_connections: 16,
                synchronous: Synchronous::Full,
            },
        }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.pool.settings().path
    }
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.pool.settings();
        f.debug_struct("SqliteStore")
            .field("path", &s.path)
            .field("busy_timeout", &s.busy_timeout)
            .field("max_connections", &s.max_connections)
            .field("synchronous", &s.synchronous)
            .field("idle_connections", &self.pool.idle_count())
            .finish()
    }
}

/// Settings of a [`SqliteStore`] before it is opened.
#[derive(Debug, Clone)]
pub struct SqliteStoreBuilder {
    settings: Settings,
}

impl SqliteStoreBuilder {
    /// How long a command waits for a lock held by another connection before it answers
    /// `Unavailable`. Default 5 s.
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.settings.busy_timeout = timeout;
        self
    }

    /// The most connections in use at once (readers run in parallel; writers take turns).
    /// Default 16; at least 1.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.settings.max_connections = n.max(1);
        self
    }

    /// How hard commits are synced to disk. Default [`Synchronous::Full`].
    pub fn synchronous(mut self, synchronous: Synchronous) -> Self {
        self.settings.synchronous = synchronous;
        self
    }

    /// Opens the database and applies the migrations it lacks.
    ///
    /// # Errors
    /// As [`SqliteStore::open`].
    pub async fn open(self) -> Result<SqliteStore> {
        let pool = Pool::new(self.settings);
        pool.with_connection(migrate::migrate).await?;
        Ok(SqliteStore { pool })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.settings.path
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use quanyi_goods::PurchaseLimits;
    use quanyi_storage::{
        GoodsStore, NewOrder, NoticeDisposition, OrderChange, OrderStore, PaymentNotice,
        PaymentStore, PaymentWrite, Reservation, VaultStore,
    };
    use quanyi_testkit::fixtures::{self, t0};
    use rusqlite::StatementStatus;
    use rusqlite::config::DbConfig;

    use crate::SqliteStore;
    use crate::cards::{FREE_AVAILABLE, FREE_LAPSED, NEXT_HOLD_SEQ};
    use crate::payments::INSERT_APPLIED_NOTICE;

    /// The order path's statements are planned once per connection, not at every run: SQLite
    /// plans a statement again when a value bound to it may change its plan, which (without the
    /// query planner stability guarantee) it assumes for parameters it compares with a partial
    /// index's condition and for a bound LIMIT.
    #[tokio::test]
    async fn the_order_path_prepares_its_statements_once() {
        let path = std::env::temp_dir().join(format!(
            "{}.db",
            quanyi_testkit::unique_name("quanyi_sqlite_prepared")
        ));
        let store = SqliteStore::builder(&path)
            .max_connections(1)
            .open()
            .await
            .unwrap();
        let tenant = fixtures::vault_tenant(&store).await;
        let goods = fixtures::card_goods(&tenant, PurchaseLimits::default());
        let sku = fixtures::first_sku(&goods);
        store
            .insert_goods(&goods, quanyi_storage::Trail::NONE)
            .await
            .unwrap();
        store
            .insert_cards(
                &tenant,
                &fixtures::cards(sku, 4),
                t0(),
                quanyi_storage::Trail::NONE,
            )
            .await
            .unwrap();
        for (n, name) in ["ann", "bob", "cyd"].into_iter().enumerate() {
            let (order, events) = fixtures::order(&goods, &fixtures::member(name), 1);
            let envs = fixtures::envelopes(&order, &events);
            let held = store
                .place_order(
                    NewOrder {
                        order: &order,
                        events: &envs,
                        reservations: &[Reservation { sku, quantity: 1 }],
                        member_limits: &[],
                        priced_from: &[],
                        claims: &[],
                        budgets: &[],
                        pricing_version: None,
                    },
                    t0(),
                )
                .await
                .unwrap();
            let notice = PaymentNotice {
                tenant: tenant.clone(),
                provider: "testpay".into(),
                transaction_id: format!("txn-{n}").into(),
                order: order.id(),
                amount: order.total(),
                received_at: t0(),
                disposition: NoticeDisposition::Applied,
            };
            let (paid, envs) = fixtures::paid_by(&order, &notice);
            let change = OrderChange {
                order: &paid,
                expected_version: order.version(),
                events: &envs,
            };
            let write = PaymentWrite {
                notice: &notice,
                change: Some(change),
                sell: &held,
                job: None,
            };
            store.record_payment(write, t0()).await.unwrap();
            let stored = store.order(&tenant, order.id()).await.unwrap().unwrap();
            assert_eq!(stored.version(), paid.version());
        }

        let counts = store
            .pool
            .with_writer(|conn| {
                assert!(
                    conn.db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG)
                        .unwrap()
                );
                Ok([
                    FREE_AVAILABLE,
                    FREE_LAPSED,
                    NEXT_HOLD_SEQ,
                    INSERT_APPLIED_NOTICE,
                ]
                .map(|sql| {
                    let stmt = conn.prepare_cached(sql).unwrap();
                    (
                        stmt.get_status(StatementStatus::Run),
                        stmt.get_status(StatementStatus::RePrepare),
                    )
                }))
            })
            .await
            .unwrap();
        drop(store);
        for suffix in ["", "-wal", "-shm"] {
            let mut name = path.as_os_str().to_owned();
            name.push(suffix);
            let _ = std::fs::remove_file(name);
        }
        for (runs, reprepared) in counts {
            assert!(runs >= 3, "the path ran the statement: {runs} runs");
            assert_eq!(reprepared, 0);
        }
    }
}
