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
//! SELECT, one INSERT, one commit) on the same server at the same client count. `pgbench -i -s 1`
//! initialises a database `quanyi_pgbench` (created if missing) once per run; then every round
//! runs `pgbench -N -c C -j 2 -T 10` (`-j 1` for one client) per client count and takes
//! `tps = ... (without initial connection time)`.
//!
//! SQLite has no budget. For context the bench times a floor: a raw rusqlite loop on its own
//! temporary file in WAL mode with `synchronous=FULL` (the store's settings), each iteration
//! one `BEGIN IMMEDIATE`, one INSERT of an order-sized row, one `COMMIT`. An order is at least
//! two such commits (place, pay), so half the floor is a generous ceiling for the path.
//!
//! Plain timing loops, no criterion, in two phases. PostgreSQL first: per round and client count
//! our path and `pgbench -N` run back to back, in alternating order (ours first where round +
//! client index is odd), so that the two sides of a ratio see the same load and neither always
//! runs second. Then SQLite: per round the floor, then the path per client count. (An earlier
//! layout ran SQLite right before our PostgreSQL measurement in every round, so only our side
//! of the ratio ever followed its fsyncs.) Each of our measurements runs
//! buyers for `ROUND_SECS` (a buyer starts no order after the deadline; the time until every
//! buyer is done is the elapsed time). Stock is imported untimed
//! before each measured round, enough for the last seen rate with a margin. Medians of `ROUNDS`
//! rounds are printed with the ratios. Last, a breakdown times `place_order` and
//! `confirm_payment` (delivery included) one by one for one buyer on each store.
//!
//! `QUANYI_BENCH_PG_URL` names the server (default `postgres://postgres@127.0.0.1:5432/test`);
//! set it to the empty string to skip PostgreSQL. An unreachable server, or no `pgbench`, is
//! reported on one line and that part is skipped.
//!
//! `cargo test --benches` (no `--bench` argument) runs a smoke test only: a few orders on each
//! store, no pgbench.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// Rates and durations are converted between f64 and integers; all are small and non-negative.
#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]

mod shop_path;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quanyi::{ErrorKind, MemberId, SqliteStore};
use quanyi_storage_postgres::{PgOptions, PgStore};
use shop_path::Path;
use tokio::runtime::Runtime;

/// Concurrent buyers measured.
const CLIENTS: [usize; 3] = [1, 8, 32];
/// Interleaved rounds; medians are reported.
const ROUNDS: usize = 3;
/// Seconds each of our measurements runs.
const ROUND_SECS: f64 = 4.0;
/// Seconds of each pgbench run.
const PGBENCH_SECS: u32 = 10;
/// Seconds of each run of the SQLite floor.
const FLOOR_SECS: f64 = 2.0;
/// Connections in each store's pool: at least the most buyers.
const POOL: usize = 32;
/// Lines per import call.
const CHUNK: u64 = 5_000;
/// Keys left in stock beyond what a round is expected to sell.
const STOCK_FLOOR: u64 = 500;
/// The database pgbench works in.
const PGBENCH_DB: &str = "quanyi_pgbench";
/// Orders timed one by one for the breakdown.
const BREAKDOWN: u32 = 300;
/// The PostgreSQL budget: our orders/s over pgbench's tps.
const PG_BUDGET: f64 = 0.5;

/// The outcome of one measured run of buyers.
struct Run {
    orders: u64,
    elapsed: Duration,
    ran_out: bool,
}

impl Run {
    fn rate(&self) -> f64 {
        self.orders as f64 / self.elapsed.as_secs_f64()
    }
}

impl Path {
    /// `buyers` tasks order until `secs` have passed (or the stock runs out). Stock for
    /// `expected` orders/s is imported first, untimed.
    async fn run(&self, buyers: usize, secs: f64, expected: f64) -> Run {
        let want = ((expected * secs * 1.5) as u64).max(200) + STOCK_FLOOR;
        self.stock_up(want, CHUNK).await;
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
        Run {
            orders,
            elapsed: start.elapsed(),
            ran_out,
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
async fn admin(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
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

/// A migrated store in a new schema, or `None` (after one line) when the server is unreachable.
async fn pg_store(url: &str) -> Option<(PgStore, TempSchema)> {
    let name = format!("bench_{:016x}", rand::random::<u64>());
    let options = PgOptions::new(url)
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

/// How to run pgbench against the server.
struct PgBench {
    /// `-h`, `-p`, `-U` arguments.
    conn: Vec<String>,
    password: Option<String>,
}

impl PgBench {
    /// Creates and initialises the pgbench database, or `None` (after one line) when pgbench
    /// is missing or fails.
    fn setup(rt: &Runtime, url: &str) -> Option<PgBench> {
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
        let bench = PgBench { conn, password };
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

    /// `pgbench -N -c clients -j 2 -T PGBENCH_SECS`: tps without initial connection time.
    fn run(&self, clients: usize) -> Option<f64> {
        let c = clients.to_string();
        let j = clients.min(2).to_string();
        let t = PGBENCH_SECS.to_string();
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

/// Runs `path` for one measured round and remembers its rate as the next stock estimate.
fn measure(rt: &Runtime, path: &Path, buyers: usize, estimate: &mut f64) -> f64 {
    let run = rt.block_on(path.run(buyers, ROUND_SECS, *estimate));
    if run.ran_out {
        println!(
            "    (stock ran out after {} orders; rate measured over {:.2} s)",
            run.orders,
            run.elapsed.as_secs_f64()
        );
    }
    let rate = run.rate();
    *estimate = estimate.max(rate);
    rate
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
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
    let (pg, schema) = match pg_and_schema {
        Some((pg, schema)) => (Some(pg), Some(schema)),
        None => (None, None),
    };

    if !bench {
        rt.block_on(sqlite.smoke());
        println!("smoke: sqlite order path ok");
        if let Some(pg) = &pg {
            rt.block_on(pg.smoke());
            println!("smoke: postgres order path ok");
        }
        return;
    }

    let pgbench = match (&pg, url.as_deref()) {
        (Some(_), Some(url)) => PgBench::setup(&rt, url),
        _ => None,
    };

    println!(
        "durable order path: {} cores, runtime with 2 workers, {ROUNDS} interleaved rounds, \
         {ROUND_SECS} s per measurement, pgbench -T {PGBENCH_SECS}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
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
        let one = rt.block_on(path.run(1, 1.0, 1_000.0)).rate();
        let all = rt.block_on(path.run(POOL, 1.0, 2_000.0)).rate();
        one.max(all)
    };

    // PostgreSQL first, in a phase of its own: our path and pgbench run back to back for each
    // client count, in alternating order, so neither side of a ratio always follows the other
    // or the SQLite rounds' fsyncs.
    let mut ours_pg = vec![vec![]; CLIENTS.len()];
    let mut base_pg = vec![vec![]; CLIENTS.len()];
    if let Some(pg) = &pg {
        let mut pg_est = warm_up(pg);
        for round in 1..=ROUNDS {
            println!("postgres round {round} (load {}):", load());
            for (i, &c) in CLIENTS.iter().enumerate() {
                let ours_first = (round + i) % 2 == 1;
                let mut tps = None;
                if !ours_first {
                    tps = pgbench.as_ref().and_then(|b| b.run(c));
                }
                let p = measure(&rt, pg, c, &mut pg_est);
                if ours_first {
                    tps = pgbench.as_ref().and_then(|b| b.run(c));
                }
                let mut line = format!("  C={c:>2}: postgres {p:>7.0} orders/s");
                ours_pg[i].push(p);
                if let Some(tps) = tps {
                    line += &format!("   pgbench -N {tps:>7.0} tps");
                    base_pg[i].push(tps);
                }
                if pgbench.is_some() {
                    line += if ours_first {
                        "   (postgres first)"
                    } else {
                        "   (pgbench first)"
                    };
                }
                println!("{line}");
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
            let s = measure(&rt, &sqlite, c, &mut sqlite_est);
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
    if pg.is_some() {
        for (i, &c) in CLIENTS.iter().enumerate() {
            let p = median(ours_pg[i].clone());
            println!(
                "  postgres C={c:>2}: {p:>7.0} orders/s (rounds: {})",
                fmt_rate(&ours_pg[i])
            );
            if base_pg[i].len() == ROUNDS {
                let b = median(base_pg[i].clone());
                println!(
                    "  pgbench  C={c:>2}: {b:>7.0} tps (rounds: {})",
                    fmt_rate(&base_pg[i])
                );
                let per_round = ours_pg[i]
                    .iter()
                    .zip(&base_pg[i])
                    .map(|(p, b)| format!("{:.2}", p / b))
                    .collect::<Vec<_>>()
                    .join(", ");
                let ratio = p / b;
                println!(
                    "ratio pg_orders / pgbench_tps ({c} clients) = {ratio:.2}: budget >= {PG_BUDGET} {} \
                     (per round: {per_round})",
                    if ratio >= PG_BUDGET { "met" } else { "MISSED" }
                );
            } else {
                println!("  no pgbench baseline at {c} clients: ratio skipped");
            }
        }
    }

    println!();
    println!("breakdown, 1 buyer, mean of {BREAKDOWN} orders:");
    let mut stores = vec![("sqlite", &sqlite)];
    stores.extend(pg.as_ref().map(|pg| ("postgres", pg)));
    for (name, path) in stores {
        let (place, pay) = rt.block_on(path.breakdown(BREAKDOWN));
        println!(
            "  {name:<8}: place_order {place:7.0} us   confirm_payment+deliver {pay:7.0} us   \
             = {:>5.0} orders/s",
            1e6 / (place + pay)
        );
    }
    println!("load average at end: {}", load());
}
