//! Direct top-ups through suppliers, on the memory, SQLite and PostgreSQL stores: failover only
//! after a definite failure, queries after an unknown outcome, breakers, callbacks applied once,
//! refunds when every route fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use quanyi::crates::storage::AuditOutcome;
use quanyi::crates::supplier::{ProductCode, RequestId};
use quanyi::*;
use quanyi_testkit::fixtures::t0;
use quanyi_testkit::supplier_sim::{ALWAYS, Faults, SimSupplier, TopUpMode};
use quanyi_testkit::{service_url, unique_name};

/// A store for one test and what removes it afterwards.
struct Backing {
    store: Arc<dyn Store>,
    cleanup: Option<Box<dyn FnOnce() + Send>>,
}

async fn memory() -> Option<Backing> {
    Some(Backing {
        store: Arc::new(MemoryStore::new()),
        cleanup: None,
    })
}

async fn sqlite() -> Option<Backing> {
    let path = std::env::temp_dir().join(format!("{}.db", unique_name("quanyi_supply")));
    let store = quanyi_storage_sqlite::SqliteStore::open(&path)
        .await
        .unwrap();
    Some(Backing {
        store: Arc::new(store),
        cleanup: Some(Box::new(move || {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
            }
        })),
    })
}

async fn postgres() -> Option<Backing> {
    use quanyi_storage_postgres::{PgOptions, PgStore};
    let url = service_url("QUANYI_TEST_PG_URL")?;
    let schema = unique_name("qs");
    let store = PgStore::connect_with(PgOptions::new(&url).schema(&schema))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    Some(Backing {
        store: Arc::new(store),
        cleanup: Some(Box::new(move || {
            // Dropped on a runtime of its own: the test's runtime is ending.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    if let Ok((client, conn)) =
                        tokio_postgres::connect(&url, tokio_postgres::NoTls).await
                    {
                        tokio::spawn(conn);
                        let _ = client
                            .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                            .await;
                    }
                });
            })
            .join();
        })),
    })
}

/// A gateway that records refunds by id.
#[derive(Debug, Default)]
struct Refunds(Mutex<Vec<RefundRequest>>);

#[async_trait::async_trait]
impl PaymentGateway for Refunds {
    async fn refund(&self, r: &RefundRequest) -> Result<RefundReceipt, GatewayError> {
        let mut all = self.0.lock().unwrap();
        if !all.iter().any(|x| x.refund_id == r.refund_id) {
            all.push(r.clone());
        }
        Ok(RefundReceipt {
            provider_refund_id: r.refund_id.clone(),
        })
    }
}

struct World {
    shop: Shop,
    clock: ManualClock,
    a: Arc<SimSupplier>,
    b: Arc<SimSupplier>,
    refunds: Arc<Refunds>,
    sku: SkuId,
}

fn product() -> ProductCode {
    ProductCode::new("MOBILE-50").unwrap()
}

async fn world(store: Arc<dyn Store>, a: SimSupplier, b: SimSupplier) -> World {
    let clock = ManualClock::new(t0());
    let (a, b) = (Arc::new(a), Arc::new(b));
    let refunds = Arc::new(Refunds::default());
    let shop = Shop::builder(
        store,
        Arc::new(StaticKeyProvider::new(RootKey::generate(
            &mut rand::thread_rng(),
        ))),
    )
    .clock(Arc::new(clock.clone()))
    .tenant(TenantId::new(unique_name("t")).unwrap())
    .supplier(a.clone())
    .supplier(b.clone())
    .payment_gateway(refunds.clone())
    .breaker_config(BreakerConfig {
        failure_threshold: 2,
        open_for: chrono::Duration::seconds(30),
        half_open_probes: 1,
    })
    .build()
    .unwrap();
    let sku = SkuId::generate(t0(), &mut rand::thread_rng());
    let cost = Money::parse("48.00", Currency::CNY).unwrap();
    shop.create_goods(
        &quanyi::Actor::new("merchant", "catalog").unwrap(),
        GoodsDraft {
            title: "Mobile top-up 50".into(),
            kind: GoodsKind::DirectTopUp {
                account: AccountRule::MainlandMobile,
            },
            skus: vec![
                SkuDraft::new(
                    sku,
                    "50 yuan",
                    Money::parse("49.50", Currency::CNY).unwrap(),
                )
                .with_stock(StockSource::Supplier)
                .with_routes(vec![
                    SupplierRoute::new(
                        SupplierId::new("sim-a").unwrap(),
                        ProductCode::new("MOBILE-50").unwrap(),
                        cost,
                    ),
                    SupplierRoute::new(
                        SupplierId::new("sim-b").unwrap(),
                        ProductCode::new("MOBILE-50").unwrap(),
                        cost,
                    ),
                ]),
            ],
            categories: vec![],
        },
    )
    .await
    .unwrap();
    World {
        shop,
        clock,
        a,
        b,
        refunds,
        sku,
    }
}

fn sim(id: &str, mode: TopUpMode, faults: Faults) -> SimSupplier {
    SimSupplier::new(SupplierId::new(id).unwrap(), 7)
        .with_top_up_product(
            product(),
            Money::parse("48.00", Currency::CNY).unwrap(),
            mode,
        )
        .with_faults(faults)
}

/// Pays an order in full with a fresh transaction id; returns the order after the payment.
async fn pay(shop: &Shop, order: &Order) -> PaymentReceipt {
    shop.confirm_payment(PaymentNotification {
        provider: "testpay".into(),
        transaction_id: format!("txn-{}", order.id()),
        order: order.id(),
        amount: order.total(),
    })
    .await
    .unwrap()
}

/// Two suppliers that answer at once, without faults.
async fn healthy(store: Arc<dyn Store>) -> World {
    world(
        store,
        sim("sim-a", TopUpMode::Immediate, Faults::NONE),
        sim("sim-b", TopUpMode::Immediate, Faults::NONE),
    )
    .await
}

async fn buy(w: &World, n: u32) -> Order {
    let buyer = MemberId::new(format!("buyer-{n}")).unwrap();
    let order = w
        .shop
        .place_order(
            &buyer,
            &[CartLine::new(w.sku, 1).with_account("13800138000")],
        )
        .await
        .unwrap();
    pay(&w.shop, &order).await.order
}

fn request(order: &Order, supplier: &str) -> RequestId {
    RequestId::for_line(order.id(), 1, &SupplierId::new(supplier).unwrap())
}

async fn a_timeout_after_success_is_queried_not_failed_over(store: Arc<dyn Store>) {
    let faults = Faults {
        timeout_after_success: ALWAYS,
        ..Faults::NONE
    };
    let w = world(
        store,
        sim("sim-a", TopUpMode::Immediate, faults),
        sim("sim-b", TopUpMode::Immediate, Faults::NONE),
    )
    .await;
    let order = buy(&w, 1).await;
    assert_eq!(order.status(), OrderStatus::Delivered);
    assert_eq!(w.a.executed(&request(&order, "sim-a")), 1);
    assert_eq!(w.a.counts().top_ups_executed, 1);
    assert_eq!(
        w.b.counts().calls_submitted,
        0,
        "no failover after an unknown outcome"
    );
    let outcomes: Vec<&str> = order.lines()[0]
        .attempts
        .iter()
        .map(|a| a.outcome.as_str())
        .collect();
    assert_eq!(outcomes, ["succeeded"]);
}

async fn a_definite_failure_fails_over_and_the_breaker_cycles(store: Arc<dyn Store>) {
    let w = healthy(store).await;
    w.a.set_down(true);
    for n in 0..2 {
        let order = buy(&w, n).await;
        assert_eq!(order.status(), OrderStatus::Delivered);
        assert_eq!(w.b.executed(&request(&order, "sim-b")), 1);
    }
    assert_eq!(w.a.counts().calls_submitted, 2);
    // A's breaker is open: the next order goes straight to B.
    let order = buy(&w, 2).await;
    assert_eq!(order.status(), OrderStatus::Delivered);
    assert_eq!(w.a.counts().calls_submitted, 2);
    // After the open period one probe goes to A; it succeeds and the breaker closes.
    w.a.set_down(false);
    w.clock.advance(chrono::Duration::seconds(31));
    for n in 3..5 {
        let order = buy(&w, n).await;
        assert_eq!(order.status(), OrderStatus::Delivered);
        assert_eq!(w.a.executed(&request(&order, "sim-a")), 1);
    }
    assert_eq!(w.b.counts().top_ups_executed, 3);
}

async fn identical_callbacks_deliver_once(store: Arc<dyn Store>) {
    let faults = Faults {
        duplicate_callback: ALWAYS,
        out_of_order_callback: ALWAYS,
        ..Faults::NONE
    };
    let w = world(
        store,
        sim("sim-a", TopUpMode::Async, faults),
        sim("sim-b", TopUpMode::Immediate, Faults::NONE),
    )
    .await;
    let order = buy(&w, 1).await;
    assert_eq!(order.status(), OrderStatus::Fulfilling);
    let callbacks = w.a.finish_pending();
    assert!(
        callbacks.len() >= 3,
        "success, duplicate and a stale failure"
    );
    let (fresh, stale): (Vec<_>, Vec<_>) = callbacks.into_iter().partition(|c| {
        c.header(quanyi_testkit::supplier_sim::STALE_HEADER)
            .is_none()
    });
    let a_id = SupplierId::new("sim-a").unwrap();
    let mut tasks = Vec::new();
    for _ in 0..5 {
        for c in &fresh {
            let (shop, c, id) = (w.shop.clone(), c.clone(), a_id.clone());
            tasks.push(tokio::spawn(async move {
                shop.supplier_callback(&id, &c).await
            }));
        }
    }
    let mut applied = 0;
    for t in tasks {
        match t.await.unwrap().unwrap() {
            CallbackOutcome::Applied => applied += 1,
            CallbackOutcome::AlreadySettled => {}
        }
    }
    assert_eq!(applied, 1);
    // The late "failed" after "succeeded" changes nothing.
    for c in &stale {
        assert_eq!(
            w.shop.supplier_callback(&a_id, c).await.unwrap(),
            CallbackOutcome::AlreadySettled
        );
    }
    let done = w.shop.order(order.id()).await.unwrap();
    assert_eq!(done.status(), OrderStatus::Delivered);
    assert_eq!(w.a.executed(&request(&order, "sim-a")), 1);
    assert_eq!(w.b.counts().calls_submitted, 0);
    // The job that was polling finds the order done.
    w.clock.advance(chrono::Duration::minutes(10));
    assert_eq!(w.shop.run_due_jobs(10).await.unwrap().done, 1);
    assert!(w.refunds.0.lock().unwrap().is_empty());
}

async fn bad_callbacks_are_refused_and_deliver_nothing(store: Arc<dyn Store>) {
    let w = world(
        store,
        sim("sim-a", TopUpMode::Async, Faults::NONE),
        sim("sim-b", TopUpMode::Immediate, Faults::NONE),
    )
    .await;
    let order = buy(&w, 1).await;
    let good = w.a.finish_pending().remove(0);
    let a_id = SupplierId::new("sim-a").unwrap();
    let mut unsigned = good.clone();
    unsigned.headers.clear();
    let err = w
        .shop
        .supplier_callback(&a_id, &unsigned)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "bad_signature");
    let mut tampered = good.clone();
    tampered.body.push(b' ');
    assert_eq!(
        w.shop
            .supplier_callback(&a_id, &tampered)
            .await
            .unwrap_err()
            .code(),
        "bad_signature"
    );
    let other = RequestId::for_line(OrderId::generate(t0(), &mut rand::thread_rng()), 1, &a_id);
    let body = format!(
        r#"{{"request":"{other}","status":"succeeded","receipt":"x","amount_minor":4800,"currency":"CNY"}}"#
    );
    let forged = w.a.signed_callback(body.into_bytes());
    assert_eq!(
        w.shop
            .supplier_callback(&a_id, &forged)
            .await
            .unwrap_err()
            .code(),
        "unknown_request"
    );
    let wrong_amount = format!(
        r#"{{"request":"{}","status":"succeeded","receipt":"x","amount_minor":1,"currency":"CNY"}}"#,
        request(&order, "sim-a")
    );
    let cb = w.a.signed_callback(wrong_amount.into_bytes());
    assert_eq!(
        w.shop
            .supplier_callback(&a_id, &cb)
            .await
            .unwrap_err()
            .code(),
        "callback_amount_mismatch"
    );
    assert_eq!(
        w.shop
            .supplier_callback(&SupplierId::new("nobody").unwrap(), &good)
            .await
            .unwrap_err()
            .code(),
        "unknown_supplier"
    );
    assert_eq!(
        w.shop.order(order.id()).await.unwrap().status(),
        OrderStatus::Fulfilling
    );
    let audit = w.shop.audit_log(10).await.unwrap();
    assert_eq!(
        audit
            .iter()
            .filter(|r| r.outcome == AuditOutcome::Denied)
            .count(),
        5
    );
    assert_eq!(
        w.shop.supplier_callback(&a_id, &good).await.unwrap(),
        CallbackOutcome::Applied
    );
    assert_eq!(
        w.shop.order(order.id()).await.unwrap().status(),
        OrderStatus::Delivered
    );
}

async fn when_every_route_fails_the_line_is_refunded_once(store: Arc<dyn Store>) {
    let w = healthy(store).await;
    w.a.set_down(true);
    w.b.set_down(true);
    let order = buy(&w, 1).await;
    assert_eq!(order.status(), OrderStatus::Refunded);
    let refunds = w.refunds.0.lock().unwrap().clone();
    assert_eq!(refunds.len(), 1);
    assert_eq!(refunds[0].amount, order.total());
    assert_eq!(
        w.a.counts().top_ups_executed + w.b.counts().top_ups_executed,
        0
    );
    assert_eq!(w.shop.run_due_jobs(10).await.unwrap(), JobRun::default());
    assert_eq!(w.refunds.0.lock().unwrap().len(), 1);
}

/// Supplier card keys: bought on payment, sealed and stored sold to the order in the same write
/// that delivers them, revealed to the buyer; a purchase whose answer was lost is queried, not
/// bought again.
async fn supplier_card_keys_are_bought_once_sealed_and_revealed(store: Arc<dyn Store>) {
    let clock = ManualClock::new(t0());
    let cost = Money::parse("8.00", Currency::CNY).unwrap();
    let cards = ProductCode::new("GAME-CARD").unwrap();
    let faults = Faults {
        timeout_after_success: ALWAYS,
        ..Faults::NONE
    };
    let a = Arc::new(
        SimSupplier::new(SupplierId::new("sim-a").unwrap(), 3)
            .with_card_product(cards.clone(), 10, cost)
            .with_faults(faults),
    );
    let shop = Shop::builder(
        store,
        Arc::new(StaticKeyProvider::new(RootKey::generate(
            &mut rand::thread_rng(),
        ))),
    )
    .clock(Arc::new(clock.clone()))
    .tenant(TenantId::new(unique_name("t")).unwrap())
    .supplier(a.clone())
    .build()
    .unwrap();
    let sku = SkuId::generate(t0(), &mut rand::thread_rng());
    shop.create_goods(
        &quanyi::Actor::new("merchant", "catalog").unwrap(),
        GoodsDraft {
            title: "Game card".into(),
            kind: GoodsKind::CardKey,
            skus: vec![
                SkuDraft::new(
                    sku,
                    "10 credits",
                    Money::parse("9.90", Currency::CNY).unwrap(),
                )
                .with_stock(StockSource::Supplier)
                .with_routes(vec![SupplierRoute::new(
                    SupplierId::new("sim-a").unwrap(),
                    ProductCode::new("GAME-CARD").unwrap(),
                    cost,
                )]),
            ],
            categories: vec![],
        },
    )
    .await
    .unwrap();
    let buyer = MemberId::new("gamer").unwrap();
    let order = shop
        .place_order(&buyer, &[CartLine::new(sku, 2)])
        .await
        .unwrap();
    let receipt = pay(&shop, &order).await;
    assert_eq!(receipt.order.status(), OrderStatus::Delivered);
    assert_eq!(a.counts().purchases_executed, 1);
    assert_eq!(a.executed(&request(&order, "sim-a")), 1);
    let revealed = shop.reveal(&buyer, order.id()).await.unwrap();
    assert_eq!(revealed.cards.len(), 2);
    assert!(
        revealed
            .cards
            .iter()
            .all(|c| c.key.code.expose().starts_with("SIM-"))
    );
    assert_eq!(shop.stock().count(sku).await.unwrap().sold, 2);
    // Availability is the supplier's figure, trusted while fresh, then asked again.
    assert_eq!(
        shop.availability(sku).await.unwrap(),
        Availability::Limited(10)
    );
    clock.advance(chrono::Duration::seconds(61));
    a.set_stock(&cards, 1);
    assert_eq!(
        shop.availability(sku).await.unwrap(),
        Availability::Limited(1)
    );
    let err = shop
        .place_order(&buyer, &[CartLine::new(sku, 2)])
        .await
        .unwrap_err();
    assert_eq!(err.code(), "out_of_stock");
    assert!(
        shop.place_order(&buyer, &[CartLine::new(sku, 1)])
            .await
            .is_ok()
    );
    // The worker keeps the figure fresh between orders.
    let checks = a.counts().stock_checks;
    let worker = Worker::new(shop.clone());
    worker.run_once().await.unwrap();
    assert_eq!(a.counts().stock_checks, checks, "still fresh: not asked");
    clock.advance(chrono::Duration::seconds(61));
    a.set_stock(&cards, 7);
    worker.run_once().await.unwrap();
    assert_eq!(a.counts().stock_checks, checks + 1);
    assert_eq!(
        shop.availability(sku).await.unwrap(),
        Availability::Limited(7)
    );
    assert_eq!(
        a.counts().stock_checks,
        checks + 1,
        "the refreshed figure is used"
    );
}

/// A worker that stops in the middle of a job: once its lease runs out another worker finishes
/// the job, and the supplier did the top-up once.
async fn a_dropped_worker_is_taken_over_after_its_lease(store: Arc<dyn Store>) {
    let w = world(
        store.clone(),
        sim("sim-a", TopUpMode::Async, Faults::NONE),
        sim("sim-b", TopUpMode::Immediate, Faults::NONE),
    )
    .await;
    let order = buy(&w, 1).await;
    assert_eq!(order.status(), OrderStatus::Fulfilling);
    // Another worker claims the job and is never heard of again.
    let later = w.clock.now() + chrono::Duration::minutes(10);
    let claimed = store
        .claim_jobs(
            "crashed-worker",
            &[quanyi::DELIVER_ORDER_JOB],
            later,
            chrono::Duration::seconds(60),
            10,
        )
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    // The supplier finishes, but its callbacks are lost.
    let _lost = w.a.finish_pending();
    w.clock.set(later + chrono::Duration::seconds(30));
    assert_eq!(
        w.shop.run_due_jobs(10).await.unwrap(),
        JobRun::default(),
        "the lease still holds"
    );
    w.clock.set(later + chrono::Duration::seconds(61));
    assert_eq!(w.shop.run_due_jobs(10).await.unwrap().done, 1);
    assert_eq!(
        w.shop.order(order.id()).await.unwrap().status(),
        OrderStatus::Delivered
    );
    assert_eq!(w.a.executed(&request(&order, "sim-a")), 1);
    assert_eq!(w.b.counts().calls_submitted, 0);
    assert_eq!(
        store
            .complete_job(claimed[0].id, "crashed-worker")
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::Conflict
    );
}

/// A benefit pack of a card key, a top-up and a membership: every route of the top-up fails, so
/// its allocated share is refunded once; the card key and the membership are delivered.
async fn a_bundle_component_that_fails_is_refunded_for_its_share(store: Arc<dyn Store>) {
    let w = healthy(store).await;
    w.a.set_down(true);
    w.b.set_down(true);
    let card = SkuId::generate(t0(), &mut rand::thread_rng());
    w.shop
        .create_goods(
            &quanyi::Actor::new("merchant", "catalog").unwrap(),
            GoodsDraft {
                title: "Video month card".into(),
                kind: GoodsKind::CardKey,
                skus: vec![
                    SkuDraft::new(
                        card,
                        "1 month",
                        Money::parse("30.00", Currency::CNY).unwrap(),
                    )
                    .with_stock(StockSource::VaultPool),
                ],
                categories: vec![],
            },
        )
        .await
        .unwrap();
    let tag: u32 = rand::random();
    w.shop
        .import_card_keys(
            &Actor::new("stock-keeper", "stock").unwrap(),
            card,
            format!("PACK-{tag:08X}\n").as_bytes(),
            &ImportOptions::default(),
            BadLines::Reject,
        )
        .await
        .unwrap();
    let gold = SkuId::generate(t0(), &mut rand::thread_rng());
    w.shop
        .create_goods(
            &quanyi::Actor::new("merchant", "catalog").unwrap(),
            GoodsDraft {
                title: "Gold membership".into(),
                kind: GoodsKind::Membership {
                    plan: "gold".into(),
                    days: 30,
                },
                skus: vec![SkuDraft::new(
                    gold,
                    "30 days",
                    Money::parse("20.50", Currency::CNY).unwrap(),
                )],
                categories: vec![],
            },
        )
        .await
        .unwrap();
    let pack = SkuId::generate(t0(), &mut rand::thread_rng());
    w.shop
        .create_goods(
            &quanyi::Actor::new("merchant", "catalog").unwrap(),
            GoodsDraft {
                title: "Everything pack".into(),
                kind: GoodsKind::BenefitPack {
                    components: vec![
                        BundleComponent {
                            sku: card,
                            quantity: 1,
                        },
                        BundleComponent {
                            sku: w.sku,
                            quantity: 1,
                        },
                        BundleComponent {
                            sku: gold,
                            quantity: 1,
                        },
                    ],
                },
                skus: vec![SkuDraft::new(
                    pack,
                    "pack",
                    Money::parse("80.00", Currency::CNY).unwrap(),
                )],
                categories: vec![],
            },
        )
        .await
        .unwrap();
    let buyer = MemberId::new("packer").unwrap();
    let order = w
        .shop
        .place_order(
            &buyer,
            &[CartLine::new(pack, 1).with_account("13800138000")],
        )
        .await
        .unwrap();
    assert_eq!(order.lines().len(), 3);
    assert!(
        order
            .lines()
            .iter()
            .all(|l| l.pack.as_ref().map(|p| p.sku) == Some(pack))
    );
    let shares: Vec<i64> = order.lines().iter().map(|l| l.amount.minor()).collect();
    assert_eq!(
        shares.iter().sum::<i64>(),
        8000,
        "shares sum to the pack's price"
    );
    let done = pay(&w.shop, &order).await.order;
    assert_eq!(done.status(), OrderStatus::PartiallyDelivered);
    let status: Vec<LineStatus> = done.lines().iter().map(|l| l.status).collect();
    assert_eq!(
        status,
        [
            LineStatus::Delivered,
            LineStatus::Refunded,
            LineStatus::Delivered
        ]
    );
    let refunds = w.refunds.0.lock().unwrap().clone();
    assert_eq!(refunds.len(), 1);
    assert_eq!(refunds[0].amount, done.lines()[1].amount);
    assert_eq!(
        w.shop.reveal(&buyer, done.id()).await.unwrap().cards.len(),
        1
    );
    let events = w
        .shop
        .store()
        .aggregate_events(w.shop.tenant(), "order", &done.id().to_string())
        .await
        .unwrap();
    assert_eq!(
        events
            .iter()
            .filter(|e| e.name == "order.entitlement_granted")
            .count(),
        1
    );
    assert_eq!(w.shop.run_due_jobs(10).await.unwrap(), JobRun::default());
    assert_eq!(w.refunds.0.lock().unwrap().len(), 1);
}

/// Reconciliation compares the shop's supplier requests of a period with the statement.
async fn reconciliation_matches_the_statement_and_finds_extras(store: Arc<dyn Store>) {
    use quanyi::crates::supplier::{Supplier as _, TopUpRequest};
    let w = healthy(store).await;
    for n in 0..2 {
        assert_eq!(buy(&w, n).await.status(), OrderStatus::Delivered);
    }
    let (from, to) = (
        t0() - chrono::Duration::hours(1),
        t0() + chrono::Duration::hours(1),
    );
    let a_id = SupplierId::new("sim-a").unwrap();
    let clean = w.shop.reconcile_supplier(&a_id, from, to).await.unwrap();
    assert_eq!(clean.matched, 2);
    assert!(clean.is_clean(), "{clean:?}");
    // The supplier charges a top-up this shop never asked for.
    let stray = RequestId::for_line(OrderId::generate(t0(), &mut rand::thread_rng()), 1, &a_id);
    w.a.submit_top_up(&TopUpRequest {
        request: stray.clone(),
        product: product(),
        account: "13800138000".into(),
        quantity: 1,
    })
    .await
    .unwrap();
    let report = w.shop.reconcile_supplier(&a_id, from, to).await.unwrap();
    assert_eq!(report.matched, 2);
    assert_eq!(report.extra.len(), 1);
    assert_eq!(report.extra[0].request, stray);
    assert!(report.missing.is_empty());
    assert_eq!(
        w.shop
            .reconcile_supplier(&SupplierId::new("nobody").unwrap(), from, to)
            .await
            .unwrap_err()
            .code(),
        "unknown_supplier"
    );
}

/// Reservation codes are generated on payment, with a check character, sealed, unique, and
/// revealed to the buyer.
async fn reservation_codes_are_generated_sealed_and_revealed(store: Arc<dyn Store>) {
    let w = healthy(store).await;
    let sku = SkuId::generate(t0(), &mut rand::thread_rng());
    w.shop
        .create_goods(
            &quanyi::Actor::new("merchant", "catalog").unwrap(),
            GoodsDraft {
                title: "Museum entry booking".into(),
                kind: GoodsKind::ReservationCode,
                skus: vec![SkuDraft::new(
                    sku,
                    "1 adult",
                    Money::parse("60.00", Currency::CNY).unwrap(),
                )],
                categories: vec![],
            },
        )
        .await
        .unwrap();
    let buyer = MemberId::new("visitor").unwrap();
    let order = w
        .shop
        .place_order(&buyer, &[CartLine::new(sku, 3)])
        .await
        .unwrap();
    let done = pay(&w.shop, &order).await.order;
    assert_eq!(done.status(), OrderStatus::Delivered);
    let codes: Vec<String> = w
        .shop
        .reveal(&buyer, done.id())
        .await
        .unwrap()
        .cards
        .into_iter()
        .map(|c| c.key.code.expose().to_owned())
        .collect();
    assert_eq!(codes.len(), 3);
    assert!(
        codes.iter().all(|c| quanyi::crates::vault::code_checks(c)),
        "{}",
        codes.len()
    );
    assert_eq!(
        codes.iter().collect::<std::collections::HashSet<_>>().len(),
        3
    );
}

macro_rules! on_every_store {
    ($($case:ident),* $(,)?) => {
        mod on_memory { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $case() { super::run(super::memory, super::$case).await } )* }
        mod on_sqlite { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $case() { super::run(super::sqlite, super::$case).await } )* }
        mod on_postgres { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $case() { super::run(super::postgres, super::$case).await } )* }
    };
}

async fn run<M, MF, C, CF>(make: M, case: C)
where
    M: FnOnce() -> MF,
    MF: std::future::Future<Output = Option<Backing>>,
    C: FnOnce(Arc<dyn Store>) -> CF,
    CF: std::future::Future<Output = ()> + Send + 'static,
{
    let Some(backing) = make().await else { return };
    let outcome = tokio::spawn(case(backing.store.clone())).await;
    drop(backing.store);
    if let Some(cleanup) = backing.cleanup {
        cleanup();
    }
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

on_every_store!(
    a_timeout_after_success_is_queried_not_failed_over,
    a_definite_failure_fails_over_and_the_breaker_cycles,
    identical_callbacks_deliver_once,
    bad_callbacks_are_refused_and_deliver_nothing,
    when_every_route_fails_the_line_is_refunded_once,
    supplier_card_keys_are_bought_once_sealed_and_revealed,
    a_dropped_worker_is_taken_over_after_its_lease,
    a_bundle_component_that_fails_is_refunded_for_its_share,
    reconciliation_matches_the_statement_and_finds_extras,
    reservation_codes_are_generated_sealed_and_revealed,
);

/// Two shops with separate pools on one PostgreSQL, each running a worker, drain 500 delivery
/// jobs: every order is delivered, and no job runs twice to completion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shops_workers_drain_500_jobs_on_postgres() {
    use quanyi_storage_postgres::{PgOptions, PgStore};
    let Some(url) = service_url("QUANYI_TEST_PG_URL") else {
        return;
    };
    let schema = unique_name("qs");
    let open = || async {
        let store = PgStore::connect_with(PgOptions::new(&url).schema(&schema).max_connections(8))
            .await
            .unwrap();
        store.migrate().await.unwrap();
        Arc::new(store) as Arc<dyn Store>
    };
    let first = open().await;
    let w = world(
        first.clone(),
        sim("sim-a", TopUpMode::Async, Faults::NONE),
        sim("sim-b", TopUpMode::Immediate, Faults::NONE),
    )
    .await;
    let mut orders = Vec::new();
    for n in 0..500 {
        orders.push(buy(&w, n).await.id());
    }
    let _lost = w.a.finish_pending();
    w.clock.advance(chrono::Duration::minutes(10));
    // A second shop on its own pool, same tenant, root key and suppliers.
    let second_store = open().await;
    let keys = Arc::new(StaticKeyProvider::new(RootKey::generate(
        &mut rand::thread_rng(),
    )));
    let other = Shop::builder(second_store.clone(), keys)
        .clock(Arc::new(w.clock.clone()))
        .tenant(w.shop.tenant().clone())
        .supplier(w.a.clone())
        .supplier(w.b.clone())
        .build()
        .unwrap();
    let drain = |shop: Shop| async move {
        let mut done = 0;
        loop {
            let run = shop.run_due_jobs(25).await.unwrap();
            if run == JobRun::default() {
                return done;
            }
            done += run.done;
        }
    };
    let (a, b) = tokio::join!(
        tokio::spawn(drain(w.shop.clone())),
        tokio::spawn(drain(other))
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a + b, 500, "each job completed once ({a} + {b})");
    assert!(a > 0 && b > 0, "both workers took part ({a} + {b})");
    for id in orders {
        let events = first
            .aggregate_events(w.shop.tenant(), "order", &id.to_string())
            .await
            .unwrap();
        assert_eq!(
            events
                .iter()
                .filter(|e| e.name == "order.delivered")
                .count(),
            1
        );
    }
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await
        .unwrap();
}
