//! The in-memory end-to-end order path through the facade: `place_order` of one card key,
//! then `confirm_payment` (a unique transaction id per order), which delivers the key inline.
//!
//! Budget (DESIGN.md "Performance budgets"): 100k orders/s or better on 2 cores.
//!
//! Measured single-task and with 2 concurrent tokio tasks on a multi-thread runtime with
//! 2 workers (criterion `iter_custom`: the N orders of a sample are split across the tasks).
//! Stock is imported untimed before each sample, in chunks of 50k lines, so that the sample
//! never runs out; the SKU's pool then holds `STOCK_FLOOR` keys plus the sample's own.
//!
//! Baseline, "the floor: one locked map write per step": a `tokio::sync::Mutex<HashMap>` of an
//! order-sized row, per order one locked insert (place), one locked get with a clone (read
//! before paying), one locked update (paid) and one locked update (delivered with its card).
//! The path must do at least that much; it does far more (stock, events, payment notices, versions),
//! so the ratio says how much the rest costs, not that it should reach 1.
//!
//! After criterion, both are timed again with plain loops and printed as orders/s and ratios.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod shop_path;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use quanyi::{MemberId, MemoryStore};
use shop_path::Path;
use tokio::runtime::Runtime;

/// Lines per import call.
const CHUNK: u64 = 50_000;
/// Keys left in stock beyond what a sample sells.
const STOCK_FLOOR: u64 = 1_000;

impl Path {
    /// `orders` orders split across `tasks` spawned tasks; stock is bought untimed first.
    async fn run(&self, orders: u64, tasks: u64) -> Duration {
        self.run_counted(orders, tasks).await.0
    }

    /// As [`Path::run`], with the minor page faults the process took while the orders ran.
    async fn run_counted(&self, orders: u64, tasks: u64) -> (Duration, Option<u64>) {
        self.stock_up(orders + STOCK_FLOOR, CHUNK).await;
        let faults = minor_faults();
        let start = Instant::now();
        let handles: Vec<_> = (0..tasks)
            .map(|t| {
                let path = self.clone();
                let n = share(orders, tasks, t);
                tokio::spawn(async move {
                    let buyer = MemberId::new(format!("member-{t}")).unwrap();
                    for _ in 0..n {
                        path.order(&buyer).await.unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.await.unwrap();
        }
        let elapsed = start.elapsed();
        let faults = faults.zip(minor_faults()).map(|(a, b)| b.saturating_sub(a));
        (elapsed, faults)
    }
}

/// The minor page faults of this process so far (Linux; `None` elsewhere): memory touched for
/// the first time. On a virtual machine the first touch of a page can cost several
/// microseconds, so the count says how much of a round was the store growing.
fn minor_faults() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name in parentheses: state, ppid, pgrp, session, tty_nr,
    // tpgid, flags, minflt.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(7)?.parse().ok()
}

/// Task `t`'s share of `total` split over `tasks`.
fn share(total: u64, tasks: u64, t: u64) -> u64 {
    total / tasks + u64::from(t < total % tasks)
}

/// An order-sized row for the baseline: ids, tenant and member names, one line, money,
/// status, times, the payment reference and the delivered card.
// Only written: the fields are there to give each row an order's size.
#[allow(dead_code)]
#[derive(Clone)]
struct OrderRow {
    id: u128,
    tenant: String,
    member: String,
    sku: u128,
    quantity: u32,
    unit_minor: i64,
    total_minor: i64,
    currency: [u8; 3],
    status: u8,
    created_at: i64,
    expires_at: i64,
    version: u64,
    transaction: Option<String>,
    card: Option<u128>,
}

/// The floor: one locked map write (or read) per step of the path.
#[derive(Clone, Default)]
struct Floor {
    orders: Arc<tokio::sync::Mutex<HashMap<u128, OrderRow>>>,
    next: Arc<AtomicU64>,
}

impl Floor {
    async fn order(&self, member: &str) {
        let n = u128::from(self.next.fetch_add(1, Ordering::Relaxed));
        let row = OrderRow {
            id: n,
            tenant: "default".to_owned(),
            member: member.to_owned(),
            sku: 7,
            quantity: 1,
            unit_minor: 1990,
            total_minor: 1990,
            currency: *b"CNY",
            status: 0,
            created_at: 0,
            expires_at: 900,
            version: 1,
            transaction: None,
            card: None,
        };
        // place
        self.orders.lock().await.insert(n, row);
        // read before paying
        let read = self.orders.lock().await.get(&n).cloned().unwrap();
        let tx = format!("tx-{n}");
        // paid
        if let Some(r) = self.orders.lock().await.get_mut(&n) {
            r.status = 1;
            r.version = read.version + 1;
            r.transaction = Some(tx);
        }
        // delivered
        if let Some(r) = self.orders.lock().await.get_mut(&n) {
            r.status = 2;
            r.version += 1;
            r.card = Some(n ^ read.sku);
        }
    }

    async fn run(&self, orders: u64, tasks: u64) -> Duration {
        self.orders.lock().await.clear();
        let start = Instant::now();
        let handles: Vec<_> = (0..tasks)
            .map(|t| {
                let floor = self.clone();
                let n = share(orders, tasks, t);
                tokio::spawn(async move {
                    let member = format!("member-{t}");
                    for _ in 0..n {
                        floor.order(&member).await;
                    }
                })
            })
            .collect();
        for h in handles {
            h.await.unwrap();
        }
        let elapsed = start.elapsed();
        // The rows may be read: the optimiser has to build every field.
        std::hint::black_box(&*self.orders.lock().await);
        elapsed
    }
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn bench_orders(c: &mut Criterion) {
    let rt = runtime();
    let path = rt.block_on(Path::new(Arc::new(MemoryStore::new())));
    let floor = Floor::default();

    let mut g = c.benchmark_group("orders");
    g.throughput(Throughput::Elements(1));
    for tasks in [1u64, 2] {
        g.bench_function(format!("path_{tasks}_task"), |b| {
            b.iter_custom(|iters| rt.block_on(path.run(iters, tasks)));
        });
        g.bench_function(format!("floor_{tasks}_task"), |b| {
            b.iter_custom(|iters| rt.block_on(floor.run(iters, tasks)));
        });
    }
    g.finish();
}

fn orders_per_sec(orders: u64, d: Duration) -> f64 {
    orders as f64 / d.as_secs_f64()
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Plain timing loops after criterion: medians of interleaved rounds, orders/s and ratios.
fn print_figures() {
    const ORDERS: u64 = 20_000;
    const ROUNDS: usize = 5;
    let rt = runtime();
    let path = rt.block_on(Path::new(Arc::new(MemoryStore::new())));
    let floor = Floor::default();
    println!();
    println!("medians of {ROUNDS} interleaved rounds of {ORDERS} orders (2 worker threads):");
    for tasks in [1u64, 2] {
        let (mut p, mut f, mut faults) = (vec![], vec![], vec![]);
        for _ in 0..ROUNDS {
            let (elapsed, fault_count) = rt.block_on(path.run_counted(ORDERS, tasks));
            p.push(orders_per_sec(ORDERS, elapsed));
            faults.push(fault_count.map_or_else(
                || "-".to_owned(),
                |n| format!("{:.2}", n as f64 / ORDERS as f64),
            ));
            f.push(orders_per_sec(
                ORDERS,
                rt.block_on(floor.run(ORDERS, tasks)),
            ));
        }
        let rounds = |xs: &[f64]| {
            xs.iter()
                .map(|x| format!("{:.0}k", x / 1000.0))
                .collect::<Vec<_>>()
                .join(" ")
        };
        println!(
            "  {tasks} task(s) rounds: path {}   floor {}   minor page faults per order {}",
            rounds(&p),
            rounds(&f),
            faults.join(" ")
        );
        let (p, f) = (median(p), median(f));
        println!("  {tasks} task(s): path {p:>10.0} orders/s   floor {f:>10.0} orders/s");
        println!("ratio path / floor ({tasks} task) = {:.4}", p / f);
        println!(
            "budget 100000 orders/s ({tasks} task): {} ({:.2}x of budget)",
            if p >= 100_000.0 { "met" } else { "MISSED" },
            p / 100_000.0
        );
    }
}

/// Where an order's time goes: timers around `place_order` and `confirm_payment` (which
/// includes delivery), single task, at three sizes of the SKU's pool of unsold keys.
fn print_breakdown() {
    let rt = runtime();
    println!();
    println!("breakdown by pool size (keys in stock while ordering), 1 task:");
    for (pool, orders) in [(100u64, 5_000u64), (1_000, 5_000), (10_000, 1_000)] {
        let (place, pay) = rt.block_on(async {
            let path = Path::new(Arc::new(MemoryStore::new())).await;
            let buyer = MemberId::new("member-0").unwrap();
            let batch = (pool / 10).max(10);
            let (mut place, mut pay) = (Duration::ZERO, Duration::ZERO);
            let mut done = 0;
            while done < orders {
                path.stock_up(pool, CHUNK).await;
                for _ in 0..batch {
                    let t0 = Instant::now();
                    let order = path.place(&buyer).await.unwrap();
                    let t1 = Instant::now();
                    path.pay(&order).await.unwrap();
                    place += t1 - t0;
                    pay += t1.elapsed();
                }
                done += batch;
            }
            let per = |d: Duration| d.as_secs_f64() * 1e6 / done as f64;
            (per(place), per(pay))
        });
        println!(
            "  pool ~{pool:>6}: place_order {place:8.1} us   confirm_payment+deliver {pay:8.1} us   \
             = {:>8.0} orders/s",
            1e6 / (place + pay)
        );
    }
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(10)
}

fn main() {
    let mut c = config().configure_from_args();
    bench_orders(&mut c);
    c.final_summary();
    // Only `cargo bench` passes `--bench`; `cargo test --benches` runs criterion's quick test
    // mode, and the long timing loops are skipped there.
    if std::env::args().any(|a| a == "--bench") {
        print_figures();
        print_breakdown();
    }
}
