//! The end-to-end order path on the durable stores: `place_order` of one card key, then
//! `confirm_payment` (a unique transaction id per order), which delivers the key in the same
//! write. On SQLite (a fresh temporary file, removed afterwards) and on PostgreSQL (a fresh
//! schema `bench_<random>`, dropped afterwards), at 1, 8 and 32 concurrent buyers: tokio tasks
//! on a multi-thread runtime with 2 workers, each buyer its own member id. Both stores get a
//! pool of 32 connections (>= the most buyers) and otherwise their default options (on
//! PostgreSQL that includes combined writes: concurrent placements, and concurrent payments,
//! share statements and commits; and the store's vacuum of its free-card queue after every
//! 2,000 cards). Reported as paid-and-delivered orders per second. The header prints the
//! server's version and the settings that move the figures (autovacuum among them).
//!
//! Budget (DESIGN.md "Performance budgets"), PostgreSQL: at least 0.5x the transactions per
//! second of PostgreSQL's own `pgbench -N` (simple-update: per transaction one UPDATE, one
//! SELECT, one INSERT, one commit) on the same server at the same client count, in every
//! round: the budget line judges the minimum ratio over the rounds. And no decay: the last
//! round's orders/s at 8 and 32 clients within 15% of the first round's (a decay line per
//! client count prints last / first, flagged below 0.85 at 8 and 32 clients). `pgbench -i -s 1`
//! initialises a database `quanyi_pgbench` (created if missing) once per run; then every round
//! runs `pgbench -N -c C -j 2 -T 10` (`-j 1` for one client) per client count and takes
//! `tps = ... (without initial connection time)`.
//!
//! SQLite has no budget. For context the bench times a floor: a raw rusqlite loop on its own
//! temporary file in WAL mode with `synchronous=FULL` (the store's settings), each iteration
//! one `BEGIN IMMEDIATE`, one INSERT of an order-sized row, one `COMMIT`. An order is at least
//! two such commits (place, pay), so half the floor is a generous ceiling for the path.
//!
//! Plain timing loops, no criterion, in two phases (three with growth, below). PostgreSQL
//! first: per round and client count our path and `pgbench -N` run back to back, in
//! alternating order (ours first where round + client index is odd), so that the two sides of
//! a ratio see the same load and neither always runs second. Then SQLite: per round the floor,
//! then the path per client count. (An earlier layout ran SQLite right before our PostgreSQL
//! measurement in every round, so only our side of the ratio ever followed its fsyncs.) Each
//! of our measurements runs buyers for `ROUND_SECS` (a buyer starts no order after the
//! deadline; the time until every buyer is done is the elapsed time). Stock is imported untimed
//! before each measured round, enough for the last seen rate with a margin. Every round's
//! orders/s, pgbench tps and ratio are printed as they come, and at the end per client count
//! with the minimum ratio, the medians and the decay. Last, a breakdown times `place_order` and
//! `confirm_payment` (delivery included) one by one for one buyer on each store (on PostgreSQL
//! at the end of its fresh phase, so that its pool is closed before a growth phase opens another).
//!
//! Diagnostics on PostgreSQL, to explain a ratio or a decay:
//! - WAL per step, after the warm-up: one buyer places `WAL_ORDERS` orders, then pays them, and
//!   `pgbench -n -N -c 1 -t WAL_ORDERS` runs (`-n`: without the vacuum and truncation pgbench
//!   does first, which are no part of a transaction), each measured alone on the same server.
//!   Bytes per order from `pg_current_wal_lsn()` before and after (`pg_wal_lsn_diff`); with the
//!   `pg_walinspect` extension (created in `quanyi_pgbench`), records and bytes per order per
//!   table and index (the first block a record names, mapped to relation names through
//!   `pg_class` of the store's schema, or of pgbench's `public`), records without a block
//!   (commits) counted when their transaction wrote one of those relations, and everything
//!   else in the window (other sessions, background) left out and counted apart; and the
//!   whole server's WAL in the window by record type (`pg_get_wal_stats`). The store is left
//!   to finish its own upkeep (no store backend busy) before each window starts and ends, so a
//!   queue vacuum the placements start counts for them. Without `pg_walinspect`: bytes only.
//! - Per round, the store's size (its largest relations, toast apart), its dead tuples
//!   (`pg_stat_user_tables.n_dead_tup`) and the round's updates and how many were HOT
//!   (`n_tup_upd`, `n_tup_hot_upd`), read a second after the round so the statistics have
//!   arrived; and the wait events of the store's backends during each of our measurements: a
//!   task reads `pg_stat_activity` every 50 ms and counts `wait_event_type:wait_event` of the
//!   store's backends that are not idle ("CPU" when a backend waits on nothing, "vacuum ..."
//!   for a backend running the store's own VACUUM), printed with the mean of busy backends
//!   per read. Each store connects with `application_name` set to its schema, so its
//!   backends are told from any other session's.
//!
//! Growth: `QUANYI_BENCH_GROWTH=<orders>` (for example `1000000`; `_` and `,` are allowed in
//! the number) adds a phase after the fresh PostgreSQL phase: a new store (a new schema,
//! dropped afterwards) is loaded with that many orders through its own write path, as the
//! measured path makes them (keys imported through the shop in chunks, then placed and paid by
//! 32 buyers), untimed but for a progress line every 10% with the load rate, and without any
//! VACUUM or ANALYZE of ours (the store's own queue vacuum runs as in production; on a server
//! with autovacuum off nothing else does). Then it prints the store's size, measures WAL per
//! step on it and runs the same rounds (our path and pgbench interleaved), and the summary
//! prints its figures, minimum ratios and decay lines beside the fresh store's. A million
//! orders at about 3,000 orders/s load in about 6 minutes and take about 6 GB (the schema
//! of this writing: 115 MB for 20,000 orders). Without the variable the bench does what it
//! did before.
//!
//! `QUANYI_BENCH_PG_URL` names the server (default `postgres://postgres@127.0.0.1:5432/test`);
//! set it to the empty string to skip PostgreSQL. An unreachable server, or no `pgbench`, is
//! reported on one line and that part is skipped. For short runs while working on the bench,
//! `QUANYI_BENCH_ROUND_SECS` (seconds of each of our measurements, default 4) and
//! `QUANYI_BENCH_PGBENCH_SECS` (of each pgbench run, default 10); the budget is judged on the
//! defaults.
//!
//! `cargo test --benches` (no `--bench` argument) runs a smoke test only: a few orders on each
//! store and the diagnostics' queries once, no pgbench, no growth.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// Rates and durations are converted between f64 and integers; all are small and non-negative.
#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]

mod shop_path;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use quanyi::{ErrorKind, MemberId, SqliteStore};
use quanyi_storage_postgres::{PgOptions, PgStore};
use shop_path::Path;
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;
use tokio_postgres::Client;

/// Concurrent buyers measured.
const CLIENTS: [usize; 3] = [1, 8, 32];
/// Interleaved rounds; every one is reported, with the minimum and the medians.
const ROUNDS: usize = 3;
/// Seconds each of our measurements runs (`QUANYI_BENCH_ROUND_SECS` overrides).
const ROUND_SECS: f64 = 4.0;
/// Seconds of each pgbench run (`QUANYI_BENCH_PGBENCH_SECS` overrides).
const PGBENCH_SECS: u32 = 10;
/// Seconds of each run of the SQLite floor.
const FLOOR_SECS: f64 = 2.0;
/// Connections in each store's pool: at least the most buyers.
const POOL: usize = 32;
/// Lines per import call.
const CHUNK: u64 = 5_000;
/// Keys left in stock beyond what a round is expected to sell.
const STOCK_FLOOR: u64 = 500;
/// The database pgbench works in (and where `pg_walinspect` is created).
const PGBENCH_DB: &str = "quanyi_pgbench";
/// Orders timed one by one for the breakdown.
const BREAKDOWN: u32 = 300;
/// The PostgreSQL budget: our orders/s over pgbench's tps, in every round.
const PG_BUDGET: f64 = 0.5;
/// The least last-round / first-round rate of our path at 8 and 32 clients that is no decay.
const DECAY_FLOOR: f64 = 0.85;
/// The fewest buyers at which decay is judged.
const DECAY_FROM_CLIENTS: usize = 8;
/// Placements, payments and pgbench transactions whose WAL is measured, each.
const WAL_ORDERS: u32 = 1_000;
/// How often the wait events of the store's backends are read during a measurement.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// How long to wait before reading the statistics views: a backend reports its counts at most
/// once a second, and within a second of going idle.
const STATS_LAG: Duration = Duration::from_millis(1_200);
/// The longest wait for the store's backends to go idle (its queue vacuum to end).
const QUIET_WAIT: Duration = Duration::from_secs(60);

/// Run lengths: the defaults, or the environment's for short runs.
#[derive(Clone, Copy)]
struct Secs {
    round: f64,
    pgbench: u32,
}

impl Secs {
    fn from_env() -> Secs {
        Secs {
            round: env_number("QUANYI_BENCH_ROUND_SECS").unwrap_or(ROUND_SECS),
            pgbench: env_number("QUANYI_BENCH_PGBENCH_SECS").unwrap_or(PGBENCH_SECS),
        }
    }
}

/// A positive number from the environment (`_` and `,` allowed as separators), or `None`
/// (after one line when it is set but not a positive number).
fn env_number<T: std::str::FromStr + PartialOrd + Default>(name: &str) -> Option<T> {
    let value = std::env::var(name).ok()?;
    let cleaned: String = value
        .trim()
        .chars()
        .filter(|c| *c != '_' && *c != ',')
        .collect();
    if cleaned.is_empty() {
        return None;
    }
    match cleaned.parse::<T>() {
        Ok(n) if n > T::default() => Some(n),
        _ => {
            println!("ignored: {name}={value:?} is not a positive number");
            None
        }
    }
}

/// The outcome of one measured run of buyers.
struct Run {
    orders: u64,
    elapsed: Duration,
    ran_out: bool,
    /// The wait events of the store's backends while the buyers ran, when sampled.
    waits: Option<Waits>,
}

impl Run {
    fn rate(&self) -> f64 {
        self.orders as f64 / self.elapsed.as_secs_f64()
    }
}

impl Path {
    /// `buyers` tasks order until `secs` have passed (or the stock runs out). Stock for
    /// `expected` orders/s is imported first, untimed. `sampler` reads the store's wait events
    /// while the buyers run.
    async fn run(&self, buyers: usize, secs: f64, expected: f64, sampler: Option<&Sampler>) -> Run {
        let want = ((expected * secs * 1.5) as u64).max(200) + STOCK_FLOOR;
        self.stock_up(want, CHUNK).await;
        let sampling = sampler.map(Sampler::start);
        let start = Instant::now();
        let deadline = start + Duration::from_secs_f64(secs);
        let handles: Vec<_> = (0..buyers)
            .map(|b| {
                let path = self.clone();
                tokio::spawn(async move {
                    let buyer = MemberId::new(format!("buyer-{b}")).unwrap();
                    let mut done = 0u64;
                    while Instant::now() < deadline {
                        match path.order(&buyer).await {
                            Ok(()) => done += 1,
                            Err(e) if e.kind() == ErrorKind::Exhausted => return (done, true),
                            Err(e) => panic!("order failed: {e}"),
                        }
                    }
                    (done, false)
                })
            })
            .collect();
        let (mut orders, mut ran_out) = (0, false);
        for h in handles {
            let (n, out) = h.await.unwrap();
            orders += n;
            ran_out |= out;
        }
        let elapsed = start.elapsed();
        let waits = match sampling {
            Some(sampling) => Some(sampling.stop().await),
            None => None,
        };
        Run {
            orders,
            elapsed,
            ran_out,
            waits,
        }
    }

    /// Mean microseconds of `place_order` and of `confirm_payment` (delivery included), one
    /// buyer, over `orders` orders.
    async fn breakdown(&self, orders: u32) -> (f64, f64) {
        self.stock_up(u64::from(orders) + STOCK_FLOOR, CHUNK).await;
        let buyer = MemberId::new("buyer-0").unwrap();
        let (mut place, mut pay) = (Duration::ZERO, Duration::ZERO);
        for _ in 0..orders {
            let t0 = Instant::now();
            let order = self.place(&buyer).await.unwrap();
            let t1 = Instant::now();
            self.pay(&order).await.unwrap();
            place += t1 - t0;
            pay += t1.elapsed();
        }
        let per = |d: Duration| d.as_secs_f64() * 1e6 / f64::from(orders);
        (per(place), per(pay))
    }

    /// Makes `total` orders as the measured path does, untimed: keys imported in chunks for a
    /// segment of orders, then `buyers` buyers place and pay them, segment after segment. A
    /// progress line every 10%. Returns the mean orders/s.
    async fn load(&self, total: u64, buyers: usize) -> f64 {
        let start = Instant::now();
        let segment = (total / 20).clamp(1, 50_000);
        let (mut done, mut tenth) = (0u64, 1u64);
        let (mut mark_at, mut mark_done) = (start, 0u64);
        while done < total {
            let n = segment.min(total - done);
            self.stock_up(n + STOCK_FLOOR, CHUNK).await;
            let left = Arc::new(AtomicU64::new(n));
            let handles: Vec<_> = (0..buyers)
                .map(|b| {
                    let path = self.clone();
                    let left = Arc::clone(&left);
                    tokio::spawn(async move {
                        let buyer = MemberId::new(format!("buyer-{b}")).unwrap();
                        while left
                            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| {
                                l.checked_sub(1)
                            })
                            .is_ok()
                        {
                            path.order(&buyer).await.unwrap();
                        }
                    })
                })
                .collect();
            for h in handles {
                h.await.unwrap();
            }
            done += n;
            if done * 10 >= tenth * total {
                let now = Instant::now();
                println!(
                    "  loaded {} of {} orders: {:.0} orders/s since the last line, {:.0} s in all \
                     (load {})",
                    thousands(done),
                    thousands(total),
                    (done - mark_done) as f64 / (now - mark_at).as_secs_f64(),
                    (now - start).as_secs_f64(),
                    load()
                );
                (mark_at, mark_done) = (now, done);
                tenth = done * 10 / total + 1;
            }
        }
        total as f64 / start.elapsed().as_secs_f64()
    }

    /// A few orders, for the smoke test.
    async fn smoke(&self) {
        self.stock_up(20, CHUNK).await;
        for buyers in [1, 2] {
            let handles: Vec<_> = (0..buyers)
                .map(|b| {
                    let path = self.clone();
                    tokio::spawn(async move {
                        let buyer = MemberId::new(format!("buyer-{b}")).unwrap();
                        for _ in 0..3 {
                            path.order(&buyer).await.unwrap();
                        }
                    })
                })
                .collect();
            for h in handles {
                h.await.unwrap();
            }
        }
    }
}

/// A temporary SQLite database; its file, WAL and shared-memory index are removed on drop.
struct TempDb(PathBuf);

impl TempDb {
    fn new(name: &str) -> Self {
        TempDb(std::env::temp_dir().join(format!(
            "quanyi-bench-{name}-{}-{:016x}.db",
            std::process::id(),
            rand::random::<u64>()
        )))
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.0.display()));
        }
    }
}

/// A schema made for this run; dropped (with everything in it) on drop.
struct TempSchema {
    url: String,
    name: String,
}

impl Drop for TempSchema {
    fn drop(&mut self) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name);
        let dropped = rt.block_on(async {
            let client = admin(&self.url).await?;
            client.batch_execute(&sql).await
        });
        if let Err(e) = dropped {
            eprintln!("could not drop schema {}: {e}", self.name);
        }
    }
}

/// A plain connection to `url`.
async fn admin(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// The server as "host:port/db", without user or password.
fn describe(url: &str) -> String {
    let Ok(config) = url.parse::<tokio_postgres::Config>() else {
        return "(an unparsable URL)".to_owned();
    };
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "{host}:{port}/{}",
        config.get_dbname().unwrap_or("(default db)")
    )
}

/// `url` with `application_name` set to `name` (a later setting overrides an earlier one), for
/// a URL or a `key=value` connection string.
fn with_application_name(url: &str, name: &str) -> String {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}application_name={name}")
    } else {
        format!("{url} application_name={name}")
    }
}

/// The server's version and the settings that move the figures, on one line.
async fn server_settings(url: &str) -> String {
    let settings = async {
        let client = admin(url).await?;
        let rows = client
            .query(
                "SELECT name, setting, unit FROM pg_settings WHERE name IN ('server_version', \
                 'autovacuum', 'shared_buffers', 'max_wal_size', 'synchronous_commit', 'fsync') \
                 ORDER BY name",
                &[],
            )
            .await?;
        Ok::<_, tokio_postgres::Error>(
            rows.iter()
                .map(|r| {
                    let unit: Option<String> = r.get(2);
                    format!(
                        "{}={}{}",
                        r.get::<_, String>(0),
                        r.get::<_, String>(1),
                        unit.map(|u| format!(" x {u}")).unwrap_or_default()
                    )
                })
                .collect::<Vec<_>>()
                .join(", "),
        )
    };
    settings
        .await
        .unwrap_or_else(|e| format!("(settings unreadable: {e})"))
}

/// The PostgreSQL side: the server URL, or `None` (after one line saying why) when it is skipped.
fn pg_url() -> Option<String> {
    match std::env::var("QUANYI_BENCH_PG_URL") {
        Ok(url) if url.trim().is_empty() => {
            println!("skipped: QUANYI_BENCH_PG_URL is empty, so the PostgreSQL bench does not run");
            None
        }
        Ok(url) => Some(url),
        Err(_) => Some("postgres://postgres@127.0.0.1:5432/test".to_owned()),
    }
}

/// A migrated store in a new schema, its connections named after the schema
/// (`application_name`), or `None` (after one line) when the server is unreachable.
async fn pg_store(url: &str) -> Option<(PgStore, TempSchema)> {
    let name = format!("bench_{:016x}", rand::random::<u64>());
    let options = PgOptions::new(with_application_name(url, &name))
        .schema(name.clone())
        .max_connections(POOL)
        .connect_timeout(Duration::from_secs(3));
    let store = match PgStore::connect_with(options).await {
        Ok(store) => store,
        Err(e) => {
            println!(
                "skipped: PostgreSQL at {} is unreachable ({e}), so the PostgreSQL bench does not run \
                 (set QUANYI_BENCH_PG_URL)",
                describe(url)
            );
            return None;
        }
    };
    let schema = TempSchema {
        url: url.to_owned(),
        name,
    };
    store.migrate().await.unwrap();
    Some((store, schema))
}

/// The wait events seen in the samples of one measurement.
#[derive(Default)]
struct Waits {
    /// Reads of `pg_stat_activity`.
    polls: u64,
    /// Busy backends seen, over all reads.
    seen: u64,
    /// Per `wait_event_type:wait_event` ("CPU": waiting on nothing), with "vacuum " before it
    /// for a backend running the store's VACUUM.
    counts: HashMap<String, u64>,
}

impl Waits {
    /// "[2.7 busy] CPU 48%, IO:WALSync 30%, LWLock:WALWrite 9%": the mean busy backends per
    /// read, and the `top` events' shares of what they were doing.
    fn top(&self, top: usize) -> String {
        if self.seen == 0 {
            return format!("none busy in {} reads", self.polls);
        }
        let mut counts: Vec<_> = self.counts.iter().collect();
        counts.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let shares = counts
            .iter()
            .take(top)
            .map(|(event, n)| format!("{event} {:.0}%", **n as f64 * 100.0 / self.seen as f64))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "[{:.1} busy] {shares}",
            self.seen as f64 / self.polls.max(1) as f64
        )
    }
}

/// Reads the wait events of one store's busy backends, told by their `application_name`.
#[derive(Clone)]
struct Sampler {
    client: Arc<Client>,
    application: String,
}

/// A running sampler.
struct Sampling {
    stop: Arc<AtomicBool>,
    task: JoinHandle<Waits>,
}

impl Sampler {
    /// Starts reading `pg_stat_activity` every `SAMPLE_EVERY`, in a task on the runtime.
    fn start(&self) -> Sampling {
        let stop = Arc::new(AtomicBool::new(false));
        let (client, application, stopped) = (
            Arc::clone(&self.client),
            self.application.clone(),
            Arc::clone(&stop),
        );
        let task = tokio::spawn(async move {
            let mut waits = Waits::default();
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !stopped.load(Ordering::Relaxed) {
                tick.tick().await;
                let rows = client
                    .query(
                        "SELECT CASE WHEN query ILIKE 'vacuum%' THEN 'vacuum ' ELSE '' END \
                         || coalesce(wait_event_type || ':' || wait_event, 'CPU') \
                         FROM pg_stat_activity \
                         WHERE application_name = $1 AND state <> 'idle' \
                         AND pid <> pg_backend_pid()",
                        &[&application],
                    )
                    .await
                    .unwrap();
                waits.polls += 1;
                for row in rows {
                    waits.seen += 1;
                    *waits.counts.entry(row.get(0)).or_default() += 1;
                }
            }
            waits
        });
        Sampling { stop, task }
    }
}

impl Sampling {
    async fn stop(self) -> Waits {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

/// Reads a store's schema from the side: sizes, dead tuples, HOT updates, busy backends.
struct Diag {
    client: Arc<Client>,
    /// The store's schema, and its connections' `application_name`.
    schema: String,
    /// Per table, `n_tup_upd` and `n_tup_hot_upd` at the last [`Diag::store_line`].
    updates: HashMap<String, (i64, i64)>,
}

impl Diag {
    async fn connect(url: &str, schema: &str) -> Diag {
        Diag {
            client: Arc::new(admin(url).await.unwrap()),
            schema: schema.to_owned(),
            updates: HashMap::new(),
        }
    }

    fn sampler(&self) -> Sampler {
        Sampler {
            client: Arc::clone(&self.client),
            application: self.schema.clone(),
        }
    }

    /// Waits (at most `QUIET_WAIT`) until none of the store's backends is busy: its own
    /// upkeep, such as the vacuum of its card queue, has ended.
    async fn quiet(&self) {
        let start = Instant::now();
        while start.elapsed() < QUIET_WAIT {
            let busy: i64 = self
                .client
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 \
                     AND state <> 'idle' AND pid <> pg_backend_pid()",
                    &[&self.schema],
                )
                .await
                .unwrap()
                .get(0);
            if busy == 0 {
                return;
            }
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
        println!("    (the store's backends were still busy after {QUIET_WAIT:?})");
    }

    /// The schema's total size, and its `top` largest relations (tables, indexes, and each
    /// table's toast with its index), largest first.
    async fn sizes(&self, top: usize) -> String {
        let rows = self
            .client
            .query(
                "SELECT c.relname::text, pg_relation_size(c.oid)::int8 \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relkind IN ('r', 'i', 'm') \
                 UNION ALL \
                 SELECT c.relname || ' toast', pg_total_relation_size(c.reltoastrelid)::int8 \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relkind IN ('r', 'm') AND c.reltoastrelid <> 0 \
                 ORDER BY 2 DESC, 1",
                &[&self.schema],
            )
            .await
            .unwrap();
        let total: i64 = rows.iter().map(|r| r.get::<_, i64>(1)).sum();
        let largest = rows
            .iter()
            .take(top)
            .map(|r| format!("{} {}", r.get::<_, String>(0), size(r.get(1))))
            .collect::<Vec<_>>()
            .join(", ");
        format!("{} ({largest})", size(total))
    }

    /// One line: sizes, dead tuples, and the updates since the last call and how many were
    /// HOT (with the tables whose updates were least often HOT).
    async fn store_line(&mut self) -> String {
        self.client
            .batch_execute("SELECT pg_stat_clear_snapshot()")
            .await
            .unwrap();
        let rows = self
            .client
            .query(
                "SELECT relname::text, n_dead_tup, n_tup_upd, n_tup_hot_upd \
                 FROM pg_stat_user_tables WHERE schemaname = $1",
                &[&self.schema],
            )
            .await
            .unwrap();
        let mut dead: Vec<(String, i64)> = vec![];
        let mut updated: Vec<(String, i64, i64)> = vec![];
        for row in &rows {
            let name: String = row.get(0);
            let (upd, hot): (i64, i64) = (row.get(2), row.get(3));
            let (upd0, hot0) = self
                .updates
                .insert(name.clone(), (upd, hot))
                .unwrap_or((0, 0));
            dead.push((name.clone(), row.get(1)));
            if upd > upd0 {
                updated.push((name, upd - upd0, hot - hot0));
            }
        }
        dead.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let dead_total: i64 = dead.iter().map(|d| d.1).sum();
        let dead_top = dead
            .iter()
            .filter(|d| d.1 > 0)
            .take(3)
            .map(|(name, n)| format!("{name} {}", thousands(*n as u64)))
            .collect::<Vec<_>>()
            .join(", ");
        let (upd, hot) = updated.iter().fold((0, 0), |(u, h), t| (u + t.1, h + t.2));
        // The tables with the most updates that were not HOT.
        updated.sort_by(|a, b| (b.1 - b.2).cmp(&(a.1 - a.2)).then(a.0.cmp(&b.0)));
        let cold = updated
            .iter()
            .take(3)
            .map(|(name, u, h)| format!("{name} {} of {}", pct(*h, *u), thousands(*u as u64)))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "store {}; dead tuples {}{}; updates since the last line {}, {} HOT{}",
            self.sizes(4).await,
            thousands(dead_total as u64),
            if dead_top.is_empty() {
                String::new()
            } else {
                format!(" ({dead_top})")
            },
            thousands(upd as u64),
            pct(hot, upd),
            if cold.is_empty() {
                String::new()
            } else {
                format!(" ({cold})")
            },
        )
    }
}

/// `part` of `whole` as a percentage.
fn pct(part: i64, whole: i64) -> String {
    if whole == 0 {
        return "-".to_owned();
    }
    format!("{:.0}%", part as f64 * 100.0 / whole as f64)
}

/// 1234567 as "1,234,567".
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Bytes as "512 B", "4.2 KB", "31.0 MB", "2.41 GB" (powers of 1,024).
fn size(bytes: i64) -> String {
    let b = bytes as f64;
    if b < 1024.0 {
        format!("{b:.0} B")
    } else if b < 1024.0 * 1024.0 {
        format!("{:.1} KB", b / 1024.0)
    } else if b < 1024.0 * 1024.0 * 1024.0 {
        format!("{:.1} MB", b / (1024.0 * 1024.0))
    } else {
        format!("{:.2} GB", b / (1024.0 * 1024.0 * 1024.0))
    }
}

/// The server's WAL write position, as text (`pg_lsn`).
async fn wal_position(client: &Client) -> String {
    client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0)
}

/// A connection to pgbench's database with `pg_walinspect` created in it, or `None` (after one
/// line) when that cannot be had: WAL is then measured in bytes only.
async fn walinspect(url: &str) -> Option<Client> {
    let inspect = async {
        let mut config: tokio_postgres::Config = url.parse()?;
        config.dbname(PGBENCH_DB);
        let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        client
            .batch_execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
            .await?;
        Ok::<_, tokio_postgres::Error>(client)
    };
    match inspect.await {
        Ok(client) => Some(client),
        Err(e) => {
            let why = e
                .as_db_error()
                .map_or_else(|| e.to_string(), |d| d.message().to_owned());
            println!("pg_walinspect is not available ({why}): WAL is measured in bytes only");
            None
        }
    }
}

/// Every relation of `schema` in the database `client` is connected to, by (database oid,
/// relfilenode) as WAL records name them: tables, indexes, sequences, and each table's toast
/// table and toast index under the table's name.
async fn relation_names(client: &Client, schema: &str) -> HashMap<(i64, i64), String> {
    let rows = client
        .query(
            "WITH db AS (SELECT oid::int8 AS oid FROM pg_database \
                         WHERE datname = current_database()), \
                  rel AS (SELECT c.* FROM pg_class c JOIN pg_namespace n \
                          ON n.oid = c.relnamespace WHERE n.nspname = $1) \
             SELECT db.oid, rel.relfilenode::int8, rel.relname::text FROM rel, db \
             WHERE rel.relfilenode <> 0 \
             UNION ALL \
             SELECT db.oid, t.relfilenode::int8, rel.relname || ' toast' \
             FROM rel JOIN pg_class t ON t.oid = rel.reltoastrelid, db \
             UNION ALL \
             SELECT db.oid, i.relfilenode::int8, rel.relname || ' toast index' \
             FROM rel JOIN pg_index x ON x.indrelid = rel.reltoastrelid \
             JOIN pg_class i ON i.oid = x.indexrelid, db",
            &[&schema],
        )
        .await
        .unwrap();
    rows.iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect()
}

/// A stretch of WAL written by `count` steps of one kind, alone.
struct WalWindow<'a> {
    /// "place", "pay", "pgbench -N".
    label: &'a str,
    /// "order", "transaction".
    unit: &'a str,
    count: u32,
    start: String,
    end: String,
}

/// The WAL of `window` per step: bytes from the positions; with `inspect`, records and bytes
/// per relation of `names` (records without a block counted when their transaction wrote one
/// of those relations), and a second line with the whole server's WAL by record type.
async fn wal_report(
    admin: &Client,
    inspect: Option<&Client>,
    window: &WalWindow<'_>,
    names: &HashMap<(i64, i64), String>,
) -> String {
    let bytes: i64 = admin
        .query_one(
            "SELECT pg_wal_lsn_diff($2::text::pg_lsn, $1::text::pg_lsn)::int8",
            &[&window.start, &window.end],
        )
        .await
        .unwrap()
        .get(0);
    let per = f64::from(window.count);
    let head = format!(
        "  {:<10} {} per {}",
        window.label,
        size((bytes as f64 / per) as i64),
        window.unit
    );
    let Some(inspect) = inspect else {
        return head;
    };
    let rows = inspect
        .query(
            "SELECT xid::text::int8, resource_manager, record_type, record_length::int8, \
             fpi_length::int8, \
             substring(block_ref from 'blkref #0: rel [0-9]+/([0-9]+)/')::int8, \
             substring(block_ref from 'blkref #0: rel [0-9]+/[0-9]+/([0-9]+)')::int8 \
             FROM pg_get_wal_records_info($1::text::pg_lsn, $2::text::pg_lsn)",
            &[&window.start, &window.end],
        )
        .await
        .unwrap();
    let relation = |row: &tokio_postgres::Row| -> Option<(i64, i64)> {
        Some((row.get::<_, Option<i64>>(5)?, row.get::<_, Option<i64>>(6)?))
    };
    // The transactions that wrote one of the relations: their commits are theirs too.
    let ours: HashSet<i64> = rows
        .iter()
        .filter(|r| relation(r).is_some_and(|rel| names.contains_key(&rel)))
        .map(|r| r.get::<_, i64>(0))
        .filter(|xid| *xid != 0)
        .collect();
    let mut per_name: HashMap<String, (u64, i64)> = HashMap::new();
    let (mut records, mut length, mut fpi) = (0u64, 0i64, 0i64);
    let (mut others, mut other_length) = (0u64, 0i64);
    for row in &rows {
        let (xid, len, row_fpi): (i64, i64, i64) = (row.get(0), row.get(3), row.get(4));
        let key = match relation(row) {
            Some(rel) if names.contains_key(&rel) => Some(names[&rel].clone()),
            Some(_) if ours.contains(&xid) => Some("other relations".to_owned()),
            None if ours.contains(&xid) => {
                let (rmgr, kind): (String, String) = (row.get(1), row.get(2));
                Some(if rmgr == "Transaction" && kind.starts_with("COMMIT") {
                    "commit".to_owned()
                } else {
                    format!("{rmgr}/{kind}")
                })
            }
            _ => None,
        };
        let Some(key) = key else {
            others += 1;
            other_length += len;
            continue;
        };
        let entry = per_name.entry(key).or_default();
        entry.0 += 1;
        entry.1 += len;
        records += 1;
        length += len;
        fpi += row_fpi;
    }
    // Relations written less than once in 20 steps (a queue vacuum, a page split) go together.
    let (mut per_name, rare): (Vec<_>, Vec<_>) = per_name
        .into_iter()
        .partition(|(_, (n, _))| *n as f64 / per >= 0.05);
    per_name.sort_by(|a, b| b.1.1.cmp(&a.1.1).then(a.0.cmp(&b.0)));
    let mut relations = per_name
        .iter()
        .map(|(name, (n, len))| {
            format!(
                "{name} {:.1} ({})",
                *n as f64 / per,
                size((*len as f64 / per) as i64)
            )
        })
        .collect::<Vec<_>>();
    if !rare.is_empty() {
        let (n, len) = rare.iter().fold((0, 0), |(n, l), r| (n + r.1.0, l + r.1.1));
        relations.push(format!(
            "{} more {:.2} ({})",
            rare.len(),
            n as f64 / per,
            size((len as f64 / per) as i64)
        ));
    }
    let relations = relations.join(", ");
    let excluded = if others == 0 {
        String::new()
    } else {
        format!(
            "; left out: {} records, {} of other sessions and background",
            thousands(others),
            size(other_length)
        )
    };
    let by_type = inspect
        .query(
            "SELECT \"resource_manager/record_type\", count \
             FROM pg_get_wal_stats($1::text::pg_lsn, $2::text::pg_lsn, true) \
             WHERE count > 0 ORDER BY count DESC, 1 LIMIT 8",
            &[&window.start, &window.end],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{} {:.1}",
                r.get::<_, String>(0),
                r.get::<_, i64>(1) as f64 / per
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "{head}: {:.1} records of {} (full-page images {}): {relations}{excluded}\n  {:<10} \
         by record type, all of the server's WAL: {by_type}",
        records as f64 / per,
        size((length as f64 / per) as i64),
        size((fpi as f64 / per) as i64),
        ""
    )
}

/// WAL per step: one buyer places `count` orders, then pays them, then (with `pgbench`)
/// `pgbench -n -N -c 1 -t count` runs; each alone, the store's upkeep done before and after.
fn wal_per_step(
    rt: &Runtime,
    path: &Path,
    diag: &Diag,
    inspect: Option<&Client>,
    pgbench: Option<&PgBench>,
    count: u32,
) {
    let client = &*diag.client;
    let (place, pay) = rt.block_on(async {
        path.stock_up(u64::from(count) + STOCK_FLOOR, CHUNK).await;
        diag.quiet().await;
        let buyer = MemberId::new("buyer-0").unwrap();
        let a = wal_position(client).await;
        let mut orders = Vec::with_capacity(count as usize);
        for _ in 0..count {
            orders.push(path.place(&buyer).await.unwrap());
        }
        diag.quiet().await;
        let b = wal_position(client).await;
        for order in &orders {
            path.pay(order).await.unwrap();
        }
        diag.quiet().await;
        let c = wal_position(client).await;
        let names = relation_names(client, &diag.schema).await;
        let place = WalWindow {
            label: "place",
            unit: "order",
            count,
            start: a,
            end: b.clone(),
        };
        let pay = WalWindow {
            label: "pay",
            unit: "order",
            count,
            start: b,
            end: c,
        };
        (
            wal_report(client, inspect, &place, &names).await,
            wal_report(client, inspect, &pay, &names).await,
        )
    });
    println!("{place}");
    println!("{pay}");
    let Some(pgbench) = pgbench else {
        return;
    };
    let start = rt.block_on(wal_position(client));
    if !pgbench.transactions(count) {
        return;
    }
    let line = rt.block_on(async {
        let end = wal_position(client).await;
        let names = match inspect {
            Some(inspect) => relation_names(inspect, "public").await,
            None => HashMap::new(),
        };
        let window = WalWindow {
            label: "pgbench -N",
            unit: "transaction",
            count,
            start,
            end,
        };
        wal_report(client, inspect, &window, &names).await
    });
    println!("{line}");
}

/// How to run pgbench against the server.
struct PgBench {
    /// `-h`, `-p`, `-U` arguments.
    conn: Vec<String>,
    password: Option<String>,
    /// Seconds of each timed run.
    secs: u32,
}

impl PgBench {
    /// Creates and initialises the pgbench database, or `None` (after one line) when pgbench
    /// is missing or fails.
    fn setup(rt: &Runtime, url: &str, secs: u32) -> Option<PgBench> {
        if Command::new("pgbench").arg("--version").output().is_err() {
            println!("pgbench is not installed: no baseline, the PostgreSQL ratio is skipped");
            return None;
        }
        let config: tokio_postgres::Config = url.parse().unwrap();
        let mut conn = vec![];
        match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => conn.extend(["-h".to_owned(), h.clone()]),
            #[cfg(unix)]
            Some(tokio_postgres::config::Host::Unix(p)) => {
                conn.extend(["-h".to_owned(), p.display().to_string()]);
            }
            None => {}
        }
        if let Some(port) = config.get_ports().first() {
            conn.extend(["-p".to_owned(), port.to_string()]);
        }
        if let Some(user) = config.get_user() {
            conn.extend(["-U".to_owned(), user.to_owned()]);
        }
        let password = config
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned());
        let created = rt.block_on(async {
            let client = admin(url).await?;
            let exists = client
                .query_opt(
                    "SELECT 1 FROM pg_database WHERE datname = $1",
                    &[&PGBENCH_DB],
                )
                .await?
                .is_some();
            if !exists {
                client
                    .batch_execute(&format!("CREATE DATABASE {PGBENCH_DB}"))
                    .await?;
            }
            Ok::<_, tokio_postgres::Error>(())
        });
        if let Err(e) = created {
            println!("pgbench skipped: cannot create database {PGBENCH_DB}: {e}");
            return None;
        }
        let bench = PgBench {
            conn,
            password,
            secs,
        };
        let init = bench.command(&["-i", "-s", "1", "-q"]).output().unwrap();
        if !init.status.success() {
            println!(
                "pgbench skipped: pgbench -i failed: {}",
                String::from_utf8_lossy(&init.stderr).trim()
            );
            return None;
        }
        Some(bench)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("pgbench");
        cmd.args(&self.conn).args(args).arg(PGBENCH_DB);
        if let Some(p) = &self.password {
            cmd.env("PGPASSWORD", p);
        }
        cmd
    }

    /// `pgbench -N -c clients -j 2 -T secs`: tps without initial connection time.
    fn run(&self, clients: usize) -> Option<f64> {
        let c = clients.to_string();
        let j = clients.min(2).to_string();
        let t = self.secs.to_string();
        let out = self
            .command(&["-N", "-c", &c, "-j", &j, "-T", &t])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let tps = stdout
            .lines()
            .find(|l| l.contains("without initial connection time"))
            .and_then(|l| l.strip_prefix("tps = "))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|v| v.parse().ok());
        if tps.is_none() {
            println!(
                "pgbench -N -c {clients} gave no tps: {} {}",
                stdout.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        tps
    }

    /// `pgbench -n -N -c 1 -t count`: exactly `count` transactions, without the vacuum and
    /// truncation pgbench does first. False (after one line) when it fails.
    fn transactions(&self, count: u32) -> bool {
        let t = count.to_string();
        let out = self
            .command(&["-n", "-N", "-c", "1", "-t", &t])
            .output()
            .unwrap();
        if !out.status.success() {
            println!(
                "pgbench -n -N -c 1 -t {count} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        out.status.success()
    }
}

/// The SQLite floor: `BEGIN IMMEDIATE; INSERT; COMMIT` in WAL with `synchronous=FULL` on its own
/// temporary file, for `FLOOR_SECS`; commits per second.
fn sqlite_floor() -> f64 {
    let file = TempDb::new("floor");
    let db = rusqlite::Connection::open(&file.0).unwrap();
    db.pragma_update(None, "journal_mode", "WAL").unwrap();
    db.pragma_update(None, "synchronous", "FULL").unwrap();
    db.execute_batch(
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, member TEXT NOT NULL, status INTEGER NOT NULL, \
         doc TEXT NOT NULL)",
    )
    .unwrap();
    // About the size of a stored order document.
    let doc = "x".repeat(600);
    let start = Instant::now();
    let mut n = 0i64;
    while start.elapsed().as_secs_f64() < FLOOR_SECS {
        db.execute_batch("BEGIN IMMEDIATE").unwrap();
        db.execute(
            "INSERT INTO orders (id, member, status, doc) VALUES (?1, ?2, 0, ?3)",
            rusqlite::params![n, "buyer-0", doc],
        )
        .unwrap();
        db.execute_batch("COMMIT").unwrap();
        n += 1;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    drop(db);
    drop(file);
    rate
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn minimum(xs: &[f64]) -> f64 {
    xs.iter().copied().fold(f64::INFINITY, f64::min)
}

/// The load average, as `uptime` shows it.
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

fn fmt_rate(xs: &[f64]) -> String {
    xs.iter()
        .map(|x| format!("{x:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn fmt_ratios(xs: &[f64]) -> String {
    xs.iter()
        .map(|x| format!("{x:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs `path` for one measured round and remembers its rate as the next stock estimate.
fn measure(
    rt: &Runtime,
    path: &Path,
    buyers: usize,
    secs: f64,
    estimate: &mut f64,
    sampler: Option<&Sampler>,
) -> (f64, Option<Waits>) {
    let run = rt.block_on(path.run(buyers, secs, *estimate, sampler));
    if run.ran_out {
        println!(
            "    (stock ran out after {} orders; rate measured over {:.2} s)",
            run.orders,
            run.elapsed.as_secs_f64()
        );
    }
    let rate = run.rate();
    *estimate = estimate.max(rate);
    (rate, run.waits)
}

/// Our path's orders/s and pgbench's tps per client count and round, on one store.
struct PgPhase {
    /// "fresh store", "1,000,000 orders".
    label: String,
    ours: Vec<Vec<f64>>,
    base: Vec<Vec<f64>>,
}

/// `ROUNDS` rounds on `path`: per client count our path and pgbench back to back, in
/// alternating order; after each round the store's diagnostics.
fn pg_rounds(
    rt: &Runtime,
    path: &Path,
    pgbench: Option<&PgBench>,
    diag: &mut Diag,
    estimate: &mut f64,
    secs: f64,
    label: String,
) -> PgPhase {
    let sampler = diag.sampler();
    let mut ours = vec![vec![]; CLIENTS.len()];
    let mut base = vec![vec![]; CLIENTS.len()];
    for round in 1..=ROUNDS {
        println!("postgres round {round}, {label} (load {}):", load());
        let mut waits = vec![];
        for (i, &c) in CLIENTS.iter().enumerate() {
            let ours_first = (round + i) % 2 == 1;
            let mut tps = None;
            if !ours_first {
                tps = pgbench.and_then(|b| b.run(c));
            }
            let (p, w) = measure(rt, path, c, secs, estimate, Some(&sampler));
            if ours_first {
                tps = pgbench.and_then(|b| b.run(c));
            }
            let mut line = format!("  C={c:>2}: postgres {p:>7.0} orders/s");
            ours[i].push(p);
            if let Some(tps) = tps {
                line += &format!("   pgbench -N {tps:>7.0} tps   ratio {:.2}", p / tps);
                base[i].push(tps);
            }
            if pgbench.is_some() {
                line += if ours_first {
                    "   (postgres first)"
                } else {
                    "   (pgbench first)"
                };
            }
            println!("{line}");
            if let Some(w) = w {
                waits.push(format!("C={c} {}", w.top(3)));
            }
        }
        let store = rt.block_on(async {
            tokio::time::sleep(STATS_LAG).await;
            diag.store_line().await
        });
        println!("  {store}");
        println!("  waits: {}", waits.join("; "));
    }
    PgPhase { label, ours, base }
}

/// Per client count, every phase's rounds side by side; then per client count and phase the
/// budget line (the minimum ratio over rounds) and the decay line.
fn report_pg(phases: &[PgPhase]) {
    let width = phases.iter().map(|p| p.label.len()).max().unwrap_or(0);
    println!("postgres per round (orders/s / pgbench -N tps = ratio), medians:");
    for (i, &c) in CLIENTS.iter().enumerate() {
        for phase in phases {
            let (ours, base) = (&phase.ours[i], &phase.base[i]);
            let rounds = if base.len() == ours.len() {
                ours.iter()
                    .zip(base)
                    .map(|(p, b)| format!("{p:>5.0} / {b:>5.0} = {:.2}", p / b))
                    .collect::<Vec<_>>()
                    .join(" | ")
            } else {
                fmt_rate(ours)
            };
            let mut medians = format!("{:.0} orders/s", median(ours.clone()));
            if base.len() == ours.len() {
                medians += &format!(", {:.0} tps", median(base.clone()));
            }
            println!(
                "  {:<width$} C={c:>2}: {rounds}   median {medians}",
                phase.label
            );
        }
    }
    for (i, &c) in CLIENTS.iter().enumerate() {
        for phase in phases {
            let (ours, base) = (&phase.ours[i], &phase.base[i]);
            let at = format!("{c} clients, {}", phase.label);
            if !base.is_empty() && base.len() == ours.len() {
                let ratios: Vec<f64> = ours.iter().zip(base).map(|(p, b)| p / b).collect();
                let min = minimum(&ratios);
                println!(
                    "ratio pg_orders / pgbench_tps ({at}) = {min:.2}, the minimum of rounds {} \
                     (median {:.2}): budget >= {PG_BUDGET} {}",
                    fmt_ratios(&ratios),
                    median(ratios.clone()),
                    if min >= PG_BUDGET { "met" } else { "MISSED" }
                );
            } else {
                println!("no pgbench baseline ({at}): ratio skipped");
            }
            let (Some(first), Some(last)) = (ours.first(), ours.last()) else {
                continue;
            };
            let decay = last / first;
            let verdict = if c < DECAY_FROM_CLIENTS {
                format!(" (context, judged from {DECAY_FROM_CLIENTS} clients)")
            } else if decay >= DECAY_FLOOR {
                format!(": no decay (>= {DECAY_FLOOR})")
            } else {
                format!(": DECAYED (below {DECAY_FLOOR})")
            };
            println!(
                "decay pg_orders round {} / round 1 ({at}) = {decay:.2}{verdict}",
                ours.len()
            );
        }
    }
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let secs = Secs::from_env();
    let rt = runtime();

    let sqlite_file = TempDb::new("store");
    let sqlite = rt.block_on(async {
        let store = SqliteStore::builder(&sqlite_file.0)
            .max_connections(POOL)
            .open()
            .await
            .unwrap();
        Path::new(Arc::new(store)).await
    });

    let url = pg_url();
    let pg_and_schema = url.as_deref().and_then(|url| {
        rt.block_on(async {
            let (store, schema) = pg_store(url).await?;
            Some((Path::new(Arc::new(store)).await, schema))
        })
    });
    // Dropped after `pg`: the store's connections go before the schema does.
    let (mut pg, schema) = match pg_and_schema {
        Some((pg, schema)) => (Some(pg), Some(schema)),
        None => (None, None),
    };

    if !bench {
        rt.block_on(sqlite.smoke());
        println!("smoke: sqlite order path ok");
        if let (Some(pg), Some(url), Some(schema)) = (&pg, url.as_deref(), &schema) {
            rt.block_on(pg.smoke());
            println!("smoke: postgres order path ok");
            // The diagnostics' queries, once each, on a few orders.
            let mut diag = rt.block_on(Diag::connect(url, &schema.name));
            let run = rt.block_on(pg.run(1, 0.2, 100.0, Some(&diag.sampler())));
            let inspect = rt.block_on(walinspect(url));
            wal_per_step(&rt, pg, &diag, inspect.as_ref(), None, 3);
            println!(
                "smoke: postgres diagnostics ok: {}; waits {}",
                rt.block_on(diag.store_line()),
                run.waits.map(|w| w.top(3)).unwrap_or_default()
            );
        }
        return;
    }

    let growth: Option<u64> = env_number("QUANYI_BENCH_GROWTH");
    let pgbench = match (&pg, url.as_deref()) {
        (Some(_), Some(url)) => PgBench::setup(&rt, url, secs.pgbench),
        _ => None,
    };

    println!(
        "durable order path: {} cores, runtime with 2 workers, {ROUNDS} interleaved rounds, \
         {} s per measurement, pgbench -T {}{}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        secs.round,
        secs.pgbench,
        growth.map_or(String::new(), |n| format!(
            ", then the same on a store of {} orders",
            thousands(n)
        ))
    );
    println!("load average at start: {}", load());
    println!("sqlite file: {}", sqlite_file.0.display());
    if let (Some(url), Some(_)) = (&url, &pg) {
        println!(
            "postgres: {} schema {}",
            describe(url),
            schema.as_ref().map_or("", |s| s.name.as_str())
        );
        println!("postgres settings: {}", rt.block_on(server_settings(url)));
    }

    // Warm-up: opens the pools' connections and gives a first rate for the stock estimate.
    let warm_up = |path: &Path| {
        let one = rt.block_on(path.run(1, 1.0, 1_000.0, None)).rate();
        let all = rt.block_on(path.run(POOL, 1.0, 2_000.0, None)).rate();
        one.max(all)
    };

    // PostgreSQL first, in a phase of its own: our path and pgbench run back to back for each
    // client count, in alternating order, so neither side of a ratio always follows the other
    // or the SQLite rounds' fsyncs. Then, with QUANYI_BENCH_GROWTH, the same on a grown store.
    let mut phases = vec![];
    let mut pg_breakdown = None;
    if let (Some(path), Some(url), Some(schema)) = (pg.take(), url.as_deref(), &schema) {
        let mut diag = rt.block_on(Diag::connect(url, &schema.name));
        let inspect = rt.block_on(walinspect(url));
        let mut pg_est = warm_up(&path);
        println!("WAL per step, fresh store, 1 buyer, {WAL_ORDERS} of each, after the warm-up:");
        wal_per_step(
            &rt,
            &path,
            &diag,
            inspect.as_ref(),
            pgbench.as_ref(),
            WAL_ORDERS,
        );
        println!("  {}", rt.block_on(diag.store_line()));
        phases.push(pg_rounds(
            &rt,
            &path,
            pgbench.as_ref(),
            &mut diag,
            &mut pg_est,
            secs.round,
            "fresh store".to_owned(),
        ));
        pg_breakdown = Some(rt.block_on(path.breakdown(BREAKDOWN)));
        // Closes the fresh store's pool before a grown store opens another.
        drop(path);

        if let Some(total) = growth {
            let label = format!("{} orders", thousands(total));
            println!("postgres growth: a new store, loading {label} with {POOL} buyers:");
            if let Some((store, grown_schema)) = rt.block_on(pg_store(url)) {
                let grown = rt.block_on(Path::new(Arc::new(store)));
                let mut diag = rt.block_on(Diag::connect(url, &grown_schema.name));
                let start = Instant::now();
                let rate = rt.block_on(grown.load(total, POOL));
                rt.block_on(diag.quiet());
                println!(
                    "  loaded {label} in {:.0} s ({rate:.0} orders/s); schema {}",
                    start.elapsed().as_secs_f64(),
                    grown_schema.name
                );
                println!("  after the load: {}", rt.block_on(diag.store_line()));
                println!("WAL per step, {label}, 1 buyer, {WAL_ORDERS} of each:");
                wal_per_step(
                    &rt,
                    &grown,
                    &diag,
                    inspect.as_ref(),
                    pgbench.as_ref(),
                    WAL_ORDERS,
                );
                println!("  {}", rt.block_on(diag.store_line()));
                pg_est = pg_est.max(rate);
                phases.push(pg_rounds(
                    &rt,
                    &grown,
                    pgbench.as_ref(),
                    &mut diag,
                    &mut pg_est,
                    secs.round,
                    label,
                ));
                // The pool first, then the schema.
                drop(grown);
                drop(grown_schema);
            }
        }
    }

    // Then SQLite: the floor and the path, per round.
    let mut sqlite_est = warm_up(&sqlite);
    let mut floor = vec![];
    let mut ours_sqlite = vec![vec![]; CLIENTS.len()];
    for round in 1..=ROUNDS {
        println!("sqlite round {round} (load {}):", load());
        let f = sqlite_floor();
        println!("  sqlite floor (1 writer): {f:.0} commits/s");
        floor.push(f);
        for (i, &c) in CLIENTS.iter().enumerate() {
            let (s, _) = measure(&rt, &sqlite, c, secs.round, &mut sqlite_est, None);
            println!("  C={c:>2}: sqlite {s:>7.0} orders/s");
            ours_sqlite[i].push(s);
        }
    }

    println!();
    println!("medians of {ROUNDS} rounds:");
    let floor_median = median(floor.clone());
    println!(
        "  sqlite floor: {floor_median:.0} commits/s (rounds: {})",
        fmt_rate(&floor)
    );
    for (i, &c) in CLIENTS.iter().enumerate() {
        let s = median(ours_sqlite[i].clone());
        println!(
            "  sqlite   C={c:>2}: {s:>7.0} orders/s (rounds: {})",
            fmt_rate(&ours_sqlite[i])
        );
        println!(
            "ratio sqlite_orders / sqlite_floor_commits ({c} clients) = {:.2} (context, no budget)",
            s / floor_median
        );
    }
    if !phases.is_empty() {
        report_pg(&phases);
    }

    println!();
    println!("breakdown, 1 buyer, mean of {BREAKDOWN} orders:");
    let mut breakdowns = vec![("sqlite", rt.block_on(sqlite.breakdown(BREAKDOWN)))];
    breakdowns.extend(pg_breakdown.map(|b| ("postgres", b)));
    for (name, (place, pay)) in breakdowns {
        println!(
            "  {name:<8}: place_order {place:7.0} us   confirm_payment+deliver {pay:7.0} us   \
             = {:>5.0} orders/s",
            1e6 / (place + pay)
        );
    }
    println!("load average at end: {}", load());
    drop(schema);
}
