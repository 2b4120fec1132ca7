//! PostgreSQL placements priced by promotions against placements without: the cost of the
//! checkout's price stage with stored rules on the durable path.
//!
//! Two stores on one server, each in a fresh schema `bench_<random>` (dropped afterwards), each
//! a shop with one card-key SKU at 19.90 (`shop_path`). The plain shop has no pricing rules. The
//! promoted shop has rules stored through `shop.promotions()`: one automatic promotion (5% off
//! the order, at most 2.00) and one coupon template (1.00 off); before each round every buyer
//! is issued one coupon per order it may place (untimed), and each placement enters the next
//! of its buyer's coupons, so it is priced by both promotions, looks its coupon up, and takes
//! the coupon's one use in the same write as the order. Both sides place through
//! `Shop::place` with a `PlaceOrder`; a placement reserves one key (stock imported untimed
//! before each round); orders are not paid.
//!
//! Plain timing loops (throughput of concurrent buyers, like the `durable` bench): per round
//! and buyer count (1 and 8) both sides run for `ROUND_SECS` back to back, in alternating
//! order (promoted first where round + client index is odd), so that neither always runs
//! second. Every round prints both rates and promoted / plain; the summary prints the minimum
//! and median ratio per buyer count. Budget (issue "Pricing and promotions"): the promoted
//! placements at 0.8x or more of the plain ones, judged on the median of the rounds.
//!
//! `QUANYI_BENCH_PG_URL` names the server (default `postgres://postgres@127.0.0.1:5432/test`;
//! empty: skipped); `QUANYI_BENCH_ROUND_SECS` overrides the seconds of each measurement
//! (default 3). `cargo test --benches` runs a smoke test: a few placements on each side.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]

// Placements only: the path's paying half is not used here.
#[allow(dead_code)]
mod shop_path;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quanyi::pricing::{Budget, Effect, Promotion, Rules, Stacking, Target, Window};
use quanyi::{Actor, CartLine, CouponSource, Currency, MemberId, Money, PlaceOrder};
use quanyi_storage_postgres::{PgOptions, PgStore};
use shop_path::Path;
use tokio::sync::Mutex;

/// Concurrent buyers measured.
const CLIENTS: [usize; 2] = [1, 8];
/// Interleaved rounds.
const ROUNDS: usize = 3;
/// Seconds of each measurement (`QUANYI_BENCH_ROUND_SECS` overrides).
const ROUND_SECS: f64 = 3.0;
/// The budget: promoted placements over plain ones.
const BUDGET: f64 = 0.8;
/// Connections in each store's pool.
const POOL: usize = 16;
/// Coupons issued per call.
const ISSUE_CHUNK: usize = 1_000;

fn cny(minor: i64) -> Money {
    Money::from_minor(minor, Currency::CNY)
}

fn promotion(id: &str, effect: Effect) -> Promotion {
    Promotion {
        id: id.into(),
        name: id.into(),
        code: None,
        priority: 1,
        stacking: Stacking::Stackable,
        target: Target::Order,
        conditions: vec![],
        effect,
        window: Window::default(),
        budget: None::<Budget>,
        coupon: false,
    }
}

/// The promoted shop's rules: an automatic 5% up to 2.00, and a coupon template of 1.00 off.
fn rules() -> Rules {
    let mut welcome = promotion("welcome", Effect::AmountOff { amount: cny(100) });
    welcome.coupon = true;
    Rules {
        promotions: vec![
            promotion(
                "five-percent",
                Effect::PercentOff {
                    bps: 500,
                    cap: Some(cny(200)),
                },
            ),
            welcome,
        ],
        ..Rules::none(Currency::CNY)
    }
}

/// One side of the comparison: a shop, and (promoted) each buyer's unused coupons.
struct Side {
    path: Path,
    coupons: Option<Vec<Mutex<VecDeque<String>>>>,
}

impl Side {
    /// Imports stock and issues coupons for `orders` placements per buyer, untimed.
    async fn prepare(&self, buyers: usize, orders: usize) {
        self.path
            .stock_up((buyers * orders) as u64 + 100, 5_000)
            .await;
        let Some(coupons) = &self.coupons else {
            return;
        };
        let actor = Actor::new("bench", "pricing").unwrap();
        let now = chrono::Utc::now();
        for (b, queue) in coupons.iter().enumerate().take(buyers) {
            let mut queue = queue.lock().await;
            while queue.len() < orders {
                let n = ISSUE_CHUNK.min(orders - queue.len());
                let members = vec![buyer(b); n];
                let issued = self
                    .path
                    .shop
                    .promotions()
                    .issue_coupons(
                        &actor,
                        "welcome",
                        &members,
                        CouponSource::Campaign("bench".into()),
                        now - chrono::Duration::minutes(1),
                        now + chrono::Duration::days(1),
                    )
                    .await
                    .unwrap();
                queue.extend(issued.into_iter().map(|c| c.code));
            }
        }
    }

    /// One placement by buyer `b`.
    async fn place(&self, b: usize) {
        let mut request = PlaceOrder::new(buyer(b), vec![CartLine::new(self.path.sku, 1)]);
        if let Some(coupons) = &self.coupons {
            let code = coupons[b].lock().await.pop_front().expect("coupons issued");
            request = request.promotion_code(&code);
        }
        let order = self.path.shop.place(request).await.unwrap();
        // 19.90; promoted: 5% (1.00 at half-even) and the coupon's 1.00 off.
        let expected = if self.coupons.is_some() { 1_790 } else { 1_990 };
        assert_eq!(order.total(), cny(expected));
    }

    /// `buyers` buyers place until `secs` have passed; placements per second.
    async fn run(self: &Arc<Self>, buyers: usize, secs: f64, expected: f64) -> f64 {
        let per_buyer = ((expected * secs * 1.5) as usize / buyers).max(50);
        self.prepare(buyers, per_buyer).await;
        let start = Instant::now();
        let deadline = start + Duration::from_secs_f64(secs);
        let handles: Vec<_> = (0..buyers)
            .map(|b| {
                let side = Arc::clone(self);
                tokio::spawn(async move {
                    let mut done = 0u64;
                    while Instant::now() < deadline && (done as usize) < per_buyer {
                        side.place(b).await;
                        done += 1;
                    }
                    done
                })
            })
            .collect();
        let mut placed = 0;
        for h in handles {
            placed += h.await.unwrap();
        }
        placed as f64 / start.elapsed().as_secs_f64()
    }
}

fn buyer(b: usize) -> MemberId {
    MemberId::new(format!("buyer-{b}")).unwrap()
}

/// A schema made for this run; dropped on drop.
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
            let (client, connection) =
                tokio_postgres::connect(&self.url, tokio_postgres::NoTls).await?;
            tokio::spawn(connection);
            client.batch_execute(&sql).await
        });
        if let Err(e) = dropped {
            eprintln!("could not drop schema {}: {e}", self.name);
        }
    }
}

async fn side(url: &str, promoted: bool) -> Option<(Arc<Side>, TempSchema)> {
    let name = format!("bench_{:016x}", rand::random::<u64>());
    let options = PgOptions::new(url)
        .schema(name.clone())
        .max_connections(POOL)
        .connect_timeout(Duration::from_secs(3));
    let store = match PgStore::connect_with(options).await {
        Ok(store) => store,
        Err(e) => {
            println!("skipped: PostgreSQL is unreachable ({e}), so this bench does not run");
            return None;
        }
    };
    let schema = TempSchema {
        url: url.to_owned(),
        name,
    };
    store.migrate().await.unwrap();
    let path = Path::new(Arc::new(store)).await;
    let coupons = if promoted {
        path.shop
            .promotions()
            .load(&Actor::new("bench", "pricing").unwrap(), rules())
            .await
            .unwrap();
        Some(
            (0..CLIENTS[CLIENTS.len() - 1])
                .map(|_| Mutex::new(VecDeque::new()))
                .collect(),
        )
    } else {
        None
    };
    Some((Arc::new(Side { path, coupons }), schema))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let url = match std::env::var("QUANYI_BENCH_PG_URL") {
        Ok(url) if url.trim().is_empty() => {
            println!("skipped: QUANYI_BENCH_PG_URL is empty");
            return;
        }
        Ok(url) => url,
        Err(_) => "postgres://postgres@127.0.0.1:5432/test".to_owned(),
    };
    let secs = std::env::var("QUANYI_BENCH_ROUND_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .unwrap_or(ROUND_SECS);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let Some((plain, plain_schema)) = rt.block_on(side(&url, false)) else {
        return;
    };
    let Some((promoted, promoted_schema)) = rt.block_on(side(&url, true)) else {
        return;
    };
    if !bench {
        rt.block_on(async {
            plain.prepare(2, 3).await;
            promoted.prepare(2, 3).await;
            for b in 0..2 {
                for _ in 0..3 {
                    plain.place(b).await;
                    promoted.place(b).await;
                }
            }
        });
        println!("smoke: plain and promoted placements ok");
    } else {
        println!(
            "promoted placements (one automatic promotion, one issued coupon) against plain \
             ones, PostgreSQL, {secs} s per measurement, {ROUNDS} rounds"
        );
        // A warm-up of each side.
        rt.block_on(async {
            plain.run(1, 1.0, 300.0).await;
            promoted.run(1, 1.0, 300.0).await;
        });
        let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); CLIENTS.len()];
        let mut rates: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); CLIENTS.len()];
        let mut expected = [600.0f64; CLIENTS.len()];
        for round in 0..ROUNDS {
            for (i, &clients) in CLIENTS.iter().enumerate() {
                let (p, q) = rt.block_on(async {
                    if (round + i) % 2 == 1 {
                        let q = promoted.run(clients, secs, expected[i]).await;
                        (plain.run(clients, secs, expected[i]).await, q)
                    } else {
                        let p = plain.run(clients, secs, expected[i]).await;
                        (p, promoted.run(clients, secs, expected[i]).await)
                    }
                });
                expected[i] = p.max(q);
                println!(
                    "round {} clients {clients:>2}: plain {p:>7.0}/s promoted {q:>7.0}/s ratio {:.2}",
                    round + 1,
                    q / p
                );
                ratios[i].push(q / p);
                rates[i].0.push(p);
                rates[i].1.push(q);
            }
        }
        for (i, &clients) in CLIENTS.iter().enumerate() {
            let min = ratios[i].iter().copied().fold(f64::INFINITY, f64::min);
            let med = median(ratios[i].clone());
            println!(
                "clients {clients:>2}: median plain {:.0}/s promoted {:.0}/s; ratio min {min:.2} \
                 median {med:.2} (budget {BUDGET}: {})",
                median(rates[i].0.clone()),
                median(rates[i].1.clone()),
                if med >= BUDGET { "met" } else { "MISSED" }
            );
        }
    }
    drop(plain);
    drop(promoted);
    drop(plain_schema);
    drop(promoted_schema);
}
