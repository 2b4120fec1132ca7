#![doc = include_str!("../README.md")]

#[cfg(test)]
mod batch_tests;
#[cfg(test)]
mod budget_tests;
mod codec;
mod combine;
mod error;
mod goods;
mod jobs;
mod logs;
mod migrate;
mod options;
mod orders;
mod payments;
#[cfg(test)]
mod plan_tests;
#[cfg(test)]
mod pool_tests;
mod pricing;
#[cfg(test)]
mod pricing_tests;
mod ring;
mod upkeep;
#[cfg(test)]
mod upkeep_tests;
mod vault;

use std::fmt;
use std::sync::Arc;

use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, QueueMode, RecyclingMethod, Runtime,
};
use quanyi_storage::{Error, Result};
use tokio_postgres::{NoTls, Statement};

pub use combine::BatchCount;
pub use migrate::SCHEMA_VERSION;
pub use options::{DEFAULT_CARD_QUEUE_VACUUM_EVERY, DEFAULT_SCHEMA, PgOptions};

/// The most requests one combined write carries.
const MAX_BATCH: usize = 64;

/// Every quanyi storage port over PostgreSQL, on a pool of connections whose `search_path` is
/// the store's schema. Cheap to clone (clones share the pool).
///
/// Each command is one transaction, most of them one statement and one round trip; see the
/// crate documentation for the design.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    shared: Arc<Shared>,
}

struct Shared {
    schema: String,
    target: String,
    max_connections: usize,
    /// Concurrent placements, combined.
    placements: combine::Combiner<orders::PlaceRequest, Vec<quanyi_core::CardId>>,
    /// Concurrent payment records, combined.
    payments: combine::Combiner<payments::RecordRequest, quanyi_storage::RecordOutcome>,
    /// Vacuums of the free-card queue.
    upkeep: upkeep::QueueUpkeep,
    /// Placements tried again because cards were held locked by other transactions.
    contended: std::sync::atomic::AtomicU64,
}

impl fmt::Debug for PgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = self.pool.status();
        f.debug_struct("PgStore")
            .field("target", &self.shared.target)
            .field("schema", &self.shared.schema)
            .field("max_connections", &self.shared.max_connections)
            .field("open_connections", &status.size)
            .finish()
    }
}

impl PgStore {
    /// Connects to a server URL with the default options (schema `quanyi`); see
    /// [`connect_with`](PgStore::connect_with).
    ///
    /// # Errors
    /// As [`connect_with`](PgStore::connect_with).
    pub async fn connect(url: &str) -> Result<PgStore> {
        PgStore::connect_with(PgOptions::new(url)).await
    }

    /// Builds the pool and opens one connection to check that the server answers. Does not
    /// create or change any table: run [`migrate`](PgStore::migrate) for that.
    ///
    /// # Errors
    /// `Invalid` for a bad URL, schema name or pool size; `Unavailable` when the server cannot
    /// be reached.
    pub async fn connect_with(options: PgOptions) -> Result<PgStore> {
        let config = options.pg_config()?;
        let target = options::describe(&config);
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.max_connections)
            // The most recently returned connection serves the next call. Each connection is a
            // server process with its own plan and catalog caches; handing calls round the
            // whole pool (first in, first out) kept every one of them cold, and made every one
            // replan a statement after each change of its tables' statistics. Connections the
            // load does not need stay idle. (PgBouncer reuses server connections the same way
            // by default.)
            .queue_mode(QueueMode::Lifo)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(options.acquire_timeout))
            .create_timeout(Some(options.connect_timeout))
            .build()
            .map_err(|e| Error::Invalid(format!("connection pool: {e}")))?;
        let store = PgStore {
            pool,
            shared: Arc::new(Shared {
                schema: options.schema,
                target,
                max_connections: options.max_connections,
                placements: combine::Combiner::new(options.write_batches, MAX_BATCH),
                payments: combine::Combiner::new(options.write_batches, MAX_BATCH),
                upkeep: upkeep::QueueUpkeep::new(options.card_queue_vacuum_every),
                contended: std::sync::atomic::AtomicU64::new(0),
            }),
        };
        drop(store.conn().await?);
        Ok(store)
    }

    /// The schema this store works in.
    pub fn schema(&self) -> &str {
        &self.shared.schema
    }

    /// How this store's combined writes went so far: batches of placements and of payment
    /// records, and the calls they carried (see [`PgOptions::write_batches`]). The mean batch
    /// size is `requests / batches`; 1.0 means calls never overlapped.
    pub fn batch_counts(&self) -> BatchCounts {
        BatchCounts {
            placements: self.shared.placements.count(),
            payments: self.shared.payments.count(),
        }
    }

    /// Sends `request` through `combiner` (see `combine`): its batches run `batch` on a clone of
    /// this store, and a request a batch gives back runs `alone`.
    async fn combined<R, T, B, BF, A, AF>(
        &self,
        combiner: &combine::Combiner<R, T>,
        request: R,
        batch: B,
        alone: A,
    ) -> Result<T>
    where
        B: Fn(PgStore, Vec<combine::Pending<R, T>>) -> BF,
        BF: std::future::Future<Output = ()> + Send + 'static,
        A: FnOnce(R) -> AF,
        AF: std::future::Future<Output = Result<T>>,
    {
        let store = self.clone();
        match combiner
            .submit(request, move |pending| batch(store.clone(), pending))
            .await
        {
            combine::Answer::Done(result) => result,
            combine::Answer::Alone(request) => alone(request).await,
        }
    }

    /// Runs one combined write's statement (autocommit) and returns its rows.
    async fn batch_rows(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> std::result::Result<Vec<tokio_postgres::Row>, error::Batch> {
        let conn = self.conn().await.map_err(error::Batch::Failed)?;
        let stmt = conn.prepare(sql).await.map_err(error::Batch::Failed)?;
        conn.client()
            .query(&stmt, params)
            .await
            .map_err(error::Batch::of)
    }

    /// A pooled connection.
    async fn conn(&self) -> Result<Conn> {
        let obj = self.pool.get().await.map_err(error::pool)?;
        Ok(Conn {
            obj: Some(obj),
            in_txn: false,
        })
    }
}

/// The combined writes of a store so far, by kind; see [`PgStore::batch_counts`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchCounts {
    /// `place_order` calls without member limits (those always run alone).
    pub placements: BatchCount,
    /// `record_payment` calls that pay an order.
    pub payments: BatchCount,
}

/// A pooled connection that is thrown away, not returned to the pool, if it is dropped inside
/// an explicit transaction (the caller's future was cancelled mid-way): the server then rolls
/// the transaction back when the socket closes.
struct Conn {
    obj: Option<Object>,
    in_txn: bool,
}

impl Conn {
    fn client(&self) -> &deadpool_postgres::ClientWrapper {
        // `obj` is only taken in `drop`.
        match &self.obj {
            Some(obj) => obj,
            None => unreachable!("connection used after drop"),
        }
    }

    async fn prepare(&self, sql: &str) -> Result<Statement> {
        self.client().prepare_cached(sql).await.map_err(error::db)
    }

    /// Ends the explicit transaction this connection is in: `COMMIT` when `outcome` is a
    /// success, `ROLLBACK` when it is an error, which it then returns. When the server does not
    /// answer, the connection stays marked as inside a transaction, so it is thrown away.
    async fn finish<T>(&mut self, outcome: Result<T>) -> Result<T> {
        let end = if outcome.is_ok() {
            "COMMIT"
        } else {
            "ROLLBACK"
        };
        self.client().batch_execute(end).await.map_err(error::db)?;
        self.in_txn = false;
        outcome
    }
}

/// How many statements [`pipelined`] has in flight at once.
const PIPELINE_DEPTH: usize = 64;

/// Runs the futures `start` makes of `items` on one connection, up to [`PIPELINE_DEPTH`] at a
/// time, and returns their outputs in the order of `items`. tokio-postgres sends a statement
/// when its future is first polled, and the server runs a connection's statements in the order
/// it receives them, so statements sent together run one after another, in order, for one
/// round trip: each sees what the ones before it wrote.
async fn pipelined<'a, I, F, S>(items: &'a [I], start: S) -> Vec<F::Output>
where
    F: std::future::Future,
    S: Fn(&'a I) -> F,
{
    let mut out = Vec::with_capacity(items.len());
    for chunk in items.chunks(PIPELINE_DEPTH) {
        let mut running: Vec<std::pin::Pin<Box<F>>> =
            chunk.iter().map(|i| Box::pin(start(i))).collect();
        let mut done: Vec<Option<F::Output>> = running.iter().map(|_| None).collect();
        std::future::poll_fn(|cx| {
            let mut pending = false;
            for (f, slot) in running.iter_mut().zip(done.iter_mut()) {
                if slot.is_none() {
                    match f.as_mut().poll(cx) {
                        std::task::Poll::Ready(v) => *slot = Some(v),
                        std::task::Poll::Pending => pending = true,
                    }
                }
            }
            if pending {
                std::task::Poll::Pending
            } else {
                std::task::Poll::Ready(())
            }
        })
        .await;
        out.extend(done.into_iter().flatten());
    }
    out
}

impl Drop for Conn {
    fn drop(&mut self) {
        if self.in_txn {
            if let Some(obj) = self.obj.take() {
                drop(Object::take(obj));
            }
        }
    }
}
