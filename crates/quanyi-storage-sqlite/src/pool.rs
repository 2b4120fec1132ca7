//! A small connection pool: idle connections in a mutex, new ones opened on demand, at most
//! `max_connections` in use at once. Every command runs on a blocking thread; no lock is held
//! across an `.await`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use quanyi_storage::{Error, Result};
use rusqlite::config::DbConfig;
use rusqlite::{Connection, ErrorCode, OpenFlags, Transaction, TransactionBehavior};
use tokio::sync::Semaphore;

use crate::convert::sql_error;

/// How hard SQLite syncs a commit to disk (`PRAGMA synchronous`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Synchronous {
    /// Every commit is synced to disk before it returns (`FULL`): a power loss loses nothing that
    /// was acknowledged. The default.
    #[default]
    Full,
    /// WAL is synced at checkpoints only (`NORMAL`): the database never corrupts and a crash of
    /// the process loses nothing, but a power loss may roll back the last commits.
    Normal,
}

impl Synchronous {
    fn pragma(self) -> &'static str {
        match self {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        }
    }
}

/// Connection settings shared by every connection of a pool.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) path: PathBuf,
    pub(crate) busy_timeout: Duration,
    pub(crate) max_connections: usize,
    pub(crate) synchronous: Synchronous,
}

/// How many prepared statements each connection keeps.
const STATEMENT_CACHE: usize = 96;

pub(crate) struct Pool {
    settings: Settings,
    idle: Mutex<Vec<Connection>>,
    /// Serializes this process's writers before they reach SQLite, so they queue in order
    /// instead of polling SQLite's busy handler; other processes still meet SQLite's own lock.
    /// It holds the connection every write of this process uses: its page cache stays warm,
    /// where connections taking turns at writing would each find their cache out of date
    /// after another's commit and read its pages again.
    writer: Mutex<Option<Connection>>,
    permits: Semaphore,
}

impl Pool {
    pub(crate) fn new(settings: Settings) -> Arc<Pool> {
        let permits = Semaphore::new(settings.max_connections.max(1));
        Arc::new(Pool {
            settings,
            idle: Mutex::new(Vec::new()),
            writer: Mutex::new(None),
            permits,
        })
    }

    pub(crate) fn settings(&self) -> &Settings {
        &self.settings
    }

    pub(crate) fn idle_count(&self) -> usize {
        self.idle.lock().len()
    }

    /// Opens and configures one connection.
    pub(crate) fn connect(settings: &Settings) -> Result<Connection> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn =
            Connection::open_with_flags(&settings.path, flags).map_err(|e| Error::Unavailable {
                message: format!("cannot open {}", settings.path.display()),
                source: Some(Box::new(e)),
            })?;
        configure(&conn, settings)?;
        Ok(conn)
    }

    fn take(&self) -> Result<Connection> {
        if let Some(conn) = self.idle.lock().pop() {
            return Ok(conn);
        }
        Pool::connect(&self.settings)
    }

    fn give_back(&self, conn: Connection) {
        // A connection left inside a transaction (it cannot be after commit or drop of the
        // `Transaction`, but be sure) is closed rather than reused.
        if conn.is_autocommit() {
            self.idle.lock().push(conn);
        }
    }

    /// Runs `f` in a blocking thread once a connection permit is free.
    async fn blocking<T, F>(self: &Arc<Self>, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Pool) -> Result<T> + Send + 'static,
    {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| Error::Unavailable {
                message: "connection pool closed".into(),
                source: Some(Box::new(e)),
            })?;
        let pool = Arc::clone(self);
        tokio::task::spawn_blocking(move || f(&pool))
            .await
            .map_err(|e| Error::Unavailable {
                message: "storage task failed".into(),
                source: Some(Box::new(e)),
            })?
    }

    /// Runs `f` on a pooled connection in a blocking thread.
    async fn run<T, F>(self: &Arc<Self>, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Pool, &mut Connection) -> Result<T> + Send + 'static,
    {
        self.blocking(move |pool| {
            let mut conn = pool.take()?;
            let out = f(pool, &mut conn);
            pool.give_back(conn);
            out
        })
        .await
    }

    /// Runs a command in one `BEGIN IMMEDIATE` transaction on the writer's connection:
    /// committed when `f` returns `Ok`, rolled back otherwise.
    pub(crate) async fn write<T, F>(self: &Arc<Self>, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T> + Send + 'static,
    {
        self.blocking(move |pool| {
            let Some(mut writer) = pool.writer.try_lock_for(pool.settings.busy_timeout) else {
                return Err(Error::Unavailable {
                    message: "timed out waiting for the database writer".into(),
                    source: None,
                });
            };
            let mut conn = match writer.take() {
                Some(conn) => conn,
                None => pool.take()?,
            };
            let out = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql_error)
                .and_then(|tx| {
                    let out = f(&tx)?;
                    tx.commit().map_err(sql_error)?;
                    Ok(out)
                });
            // A connection left inside a transaction is closed rather than kept.
            if conn.is_autocommit() {
                *writer = Some(conn);
            }
            out
        })
        .await
    }

    /// Runs `f` on the writer's connection, outside any transaction (for tests that look at
    /// what the writes prepared).
    #[cfg(test)]
    pub(crate) async fn with_writer<T, F>(self: &Arc<Self>, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        self.blocking(move |pool| {
            let mut writer = pool.writer.lock();
            let mut conn = match writer.take() {
                Some(conn) => conn,
                None => pool.take()?,
            };
            let out = f(&mut conn);
            *writer = Some(conn);
            out
        })
        .await
    }

    /// Runs a query in one deferred (read) transaction, so it sees one snapshot.
    pub(crate) async fn read<T, F>(self: &Arc<Self>, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T> + Send + 'static,
    {
        self.run(move |_, conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Deferred)
                .map_err(sql_error)?;
            let out = f(&tx)?;
            tx.commit().map_err(sql_error)?;
            Ok(out)
        })
        .await
    }

    /// Runs `f` on a connection outside any transaction (migrations manage their own).
    pub(crate) async fn with_connection<T, F>(self: &Arc<Self>, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        self.run(move |_, conn| f(conn)).await
    }
}

/// Sets `journal_mode=WAL` and answers the mode in force. Switching a new file to WAL needs an
/// exclusive lock, and SQLite answers busy at once there instead of calling the busy handler
/// (two stores opening one new file at the same time), so this retries, bounded by the busy
/// timeout. WAL is persistent: on a file already in WAL the pragma takes no lock.
fn journal_mode_wal(conn: &Connection, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        match conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0)) {
            Err(rusqlite::Error::SqliteFailure(f, _))
                if matches!(f.code, ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            other => return other.map_err(sql_error),
        }
    }
}

fn configure(conn: &Connection, settings: &Settings) -> Result<()> {
    conn.busy_timeout(settings.busy_timeout)
        .map_err(sql_error)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    // The query planner stability guarantee: a statement's plan does not depend on the values
    // bound to it. Without it SQLite compares bound values with the conditions of partial
    // indexes while planning, and so plans such a statement again at every run with new
    // values (four statements of the order path, measured at a sixth of its CPU time).
    // It also keeps plans from flipping as data grows.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
        .map_err(sql_error)?;
    let mode = journal_mode_wal(conn, settings.busy_timeout)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::Unavailable {
            message: format!(
                "{} cannot use write-ahead logging (journal mode {mode})",
                settings.path.display()
            ),
            source: None,
        });
    }
    conn.pragma_update(None, "synchronous", settings.synchronous.pragma())
        .map_err(sql_error)?;
    Ok(())
}
