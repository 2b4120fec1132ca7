//! Combined writes against a real server (`QUANYI_TEST_PG_URL`): calls that overlap a running
//! batch share the next statement, and each keeps its own answer. The first batch is held on a
//! table lock while the others queue, so which calls share a statement is decided by the test,
//! not by timing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;

use quanyi_core::{CardId, ErrorKind};
use quanyi_goods::{Goods, PurchaseLimits};
use quanyi_order::Order;
use quanyi_storage::{
    Error, GOODS_CHANGED, GoodsStore, GoodsVersion, JobStore, NewJob, NewOrder, NoticeDisposition,
    OrderChange, OrderStore, PaymentNotice, PaymentStore, PaymentWrite, RecordOutcome, Reservation,
    VaultStore,
};
use quanyi_testkit::fixtures::{
    card_goods, cards, envelopes, first_sku, member, order, paid_by, t0,
};
use tokio::task::JoinHandle;
use tokio_postgres::NoTls;

use crate::{BatchCount, PgOptions, PgStore};

/// A migrated store in a fresh schema that runs one batch of each kind at a time, with
/// `options` applied, and a plain connection; `None` when no server is configured.
async fn setup(
    options: impl FnOnce(PgOptions) -> PgOptions,
) -> Option<(PgStore, tokio_postgres::Client, String)> {
    let Some(url) = quanyi_testkit::service_url("QUANYI_TEST_PG_URL") else {
        // The harness captures `println!` of passing tests; say it where a person sees it.
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            use std::io::Write;
            let _ = writeln!(
                std::io::stdout(),
                "skipped: QUANYI_TEST_PG_URL is not set, so the PostgreSQL batch tests do not run"
            );
        });
        return None;
    };
    let schema = quanyi_testkit::unique_name("qt");
    let store = PgStore::connect_with(options(
        PgOptions::new(url.as_str())
            .schema(schema.clone())
            .max_connections(8)
            .write_batches(1),
    ))
    .await
    .expect("PostgreSQL at QUANYI_TEST_PG_URL");
    store.migrate().await.unwrap();
    let (admin, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(connection);
    Some((store, admin, schema))
}

/// Runs `body` on a fresh store, then drops the schema whether `body` passed or not.
pub(crate) async fn with_store<F, Fut>(body: F)
where
    F: FnOnce(PgStore, Arc<tokio_postgres::Client>, String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    with_store_options(|o| o, body).await;
}

/// [`with_store`] on a store built with `options` applied.
pub(crate) async fn with_store_options<F, Fut>(
    options: impl FnOnce(PgOptions) -> PgOptions,
    body: F,
) where
    F: FnOnce(PgStore, Arc<tokio_postgres::Client>, String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some((store, admin, schema)) = setup(options).await else {
        return;
    };
    let admin = Arc::new(admin);
    let outcome = tokio::spawn(body(store, Arc::clone(&admin), schema.clone())).await;
    admin
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// Holds `orders` locked while `first` starts a batch and `rest` queue behind it, then lets go.
/// Every call in `rest` is queued before the lock is released, so they share one batch.
pub(crate) async fn hold_then_release<T: Send + 'static>(
    store: &PgStore,
    admin: &tokio_postgres::Client,
    schema: &str,
    kind: fn(&PgStore) -> (BatchCount, usize),
    first: impl FnOnce() -> JoinHandle<T>,
    rest: impl FnOnce() -> Vec<JoinHandle<T>>,
) -> (T, Vec<T>) {
    admin
        .batch_execute(&format!(
            "BEGIN; LOCK TABLE {schema}.orders IN EXCLUSIVE MODE"
        ))
        .await
        .unwrap();
    let before = kind(store).0.batches;
    let first = first();
    while kind(store).0.batches == before {
        tokio::task::yield_now().await;
    }
    let rest = rest();
    while kind(store).1 < rest.len() {
        tokio::task::yield_now().await;
    }
    admin.batch_execute("COMMIT").await.unwrap();
    let first = first.await.unwrap();
    let mut answers = Vec::new();
    for r in rest {
        answers.push(r.await.unwrap());
    }
    (first, answers)
}

pub(crate) fn placements(store: &PgStore) -> (BatchCount, usize) {
    (
        store.shared.placements.count(),
        store.shared.placements.queued(),
    )
}

fn payments(store: &PgStore) -> (BatchCount, usize) {
    (
        store.shared.payments.count(),
        store.shared.payments.queued(),
    )
}

pub(crate) type Placed = (Order, Result<Vec<CardId>, Error>);

pub(crate) fn place(
    store: &PgStore,
    placement: (Order, Vec<GoodsVersion>, quanyi_core::SkuId),
    events: Option<Vec<quanyi_core::EventEnvelope>>,
) -> JoinHandle<Placed> {
    place_priced(store, placement, events, None)
}

/// [`place`] priced from version `pricing_version` of the tenant's pricing rules.
pub(crate) fn place_priced(
    store: &PgStore,
    (o, priced, sku): (Order, Vec<GoodsVersion>, quanyi_core::SkuId),
    events: Option<Vec<quanyi_core::EventEnvelope>>,
    pricing_version: Option<u64>,
) -> JoinHandle<Placed> {
    let store = store.clone();
    tokio::spawn(async move {
        let envs = events.unwrap_or_else(|| envelopes(&o, &[]));
        let r = store
            .place_order(
                NewOrder {
                    order: &o,
                    events: &envs,
                    reservations: &[Reservation { sku, quantity: 1 }],
                    member_limits: &[],
                    priced_from: &priced,
                    claims: &[],
                    budgets: &[],
                    pricing_version,
                },
                t0(),
            )
            .await;
        (o, r)
    })
}

pub(crate) async fn stocked(store: &PgStore, n: usize) -> (Goods, GoodsVersion) {
    let tenant = quanyi_testkit::fixtures::vault_tenant(store).await;
    let goods = card_goods(&tenant, PurchaseLimits::default());
    store
        .insert_goods(&goods, quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    store
        .insert_cards(
            goods.tenant(),
            &cards(first_sku(&goods), n),
            t0(),
            quanyi_storage::Trail::NONE,
        )
        .await
        .unwrap();
    let version = GoodsVersion {
        id: goods.id(),
        version: goods.version(),
    };
    (goods, version)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_placements_share_one_statement_and_keep_their_answers() {
    with_store(|store, admin, schema| async move {
    let (goods, current) = stocked(&store, 10).await;
    let (scarce, scarce_version) = stocked(&store, 1).await;
    let (sku, scarce_sku) = (first_sku(&goods), first_sku(&scarce));
    let stale = GoodsVersion {
        version: current.version + 1,
        ..current
    };
    let buy = |g: &Goods, v: GoodsVersion, who: &str| {
        (order(g, &member(who), 1).0, vec![v], first_sku(g))
    };
    let twin = buy(&goods, current, "twin");
    let (first, rest) = hold_then_release(
        &store,
        &admin,
        &schema,
        placements,
        || place(&store, buy(&goods, current, "first"), None),
        || {
            let mut calls: Vec<_> = (0..4)
                .map(|i| place(&store, buy(&goods, current, &format!("plain-{i}")), None))
                .collect();
            calls.push(place(&store, buy(&goods, stale, "stale"), None));
            calls.push(place(
                &store,
                buy(&scarce, scarce_version, "scarce-0"),
                None,
            ));
            calls.push(place(
                &store,
                buy(&scarce, scarce_version, "scarce-1"),
                None,
            ));
            calls.push(place(&store, twin.clone(), None));
            calls.push(place(&store, twin.clone(), None));
            calls
        },
    )
    .await;
    assert_eq!(first.1.unwrap().len(), 1);
    // The nine queued calls went out as one batch.
    assert_eq!(
        store.batch_counts().placements,
        BatchCount {
            batches: 2,
            requests: 10
        }
    );
    let mut cards = HashSet::new();
    for (o, r) in &rest[..4] {
        let got = r.as_ref().unwrap();
        assert_eq!(got.len(), 1);
        cards.extend(got.iter().copied());
        assert!(store.order(o.tenant(), o.id()).await.unwrap().is_some());
    }
    assert!(
        matches!(&rest[4].1, Err(Error::Conflict { what: "goods", reason, .. }) if *reason == GOODS_CHANGED),
        "{:?}",
        rest[4].1
    );
    assert!(
        store
            .order(rest[4].0.tenant(), rest[4].0.id())
            .await
            .unwrap()
            .is_none()
    );
    let scarce_ok = rest[5..7].iter().filter(|p| p.1.is_ok()).count();
    assert_eq!(scarce_ok, 1);
    assert!(
        rest[5..7]
            .iter()
            .any(|p| matches!(p.1, Err(Error::OutOfStock { available: 0, .. })))
    );
    let twins: Vec<_> = rest[7..9].iter().map(|p| p.1.as_ref()).collect();
    assert_eq!(twins.iter().filter(|r| r.is_ok()).count(), 1);
    assert!(
        twins
            .iter()
            .any(|r| matches!(r, Err(e) if e.kind() == ErrorKind::Conflict))
    );
    let tenant = goods.tenant();
    let stock = store.stock(tenant, sku, t0()).await.unwrap();
    // first + four plain + one twin.
    assert_eq!((stock.available, stock.reserved), (4, 6));
    assert_eq!(cards.len(), 4);
    let stock = store
        .stock(scarce.tenant(), scarce_sku, t0())
        .await
        .unwrap();
    assert_eq!((stock.available, stock.reserved), (0, 1));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_the_server_refuses_is_decided_call_by_call() {
    with_store(|store, admin, schema| async move {
        let (goods, current) = stocked(&store, 10).await;
        let buy = |who: &str| {
            (
                order(&goods, &member(who), 1).0,
                vec![current],
                first_sku(&goods),
            )
        };
        // Two orders whose events share an id: the batch statement fails on the unique index.
        let (a, placed_a) = order(&goods, &member("a"), 1);
        let (b, placed_b) = order(&goods, &member("b"), 1);
        let events_a = envelopes(&a, &placed_a);
        let mut events_b = envelopes(&b, &placed_b);
        let (a, b) = (
            (a, vec![current], first_sku(&goods)),
            (b, vec![current], first_sku(&goods)),
        );
        events_b[0].id = events_a[0].id;
        let (first, rest) = hold_then_release(
            &store,
            &admin,
            &schema,
            placements,
            || place(&store, buy("first"), None),
            || {
                vec![
                    place(&store, a.clone(), Some(events_a.clone())),
                    place(&store, b.clone(), Some(events_b.clone())),
                    place(&store, buy("plain"), None),
                ]
            },
        )
        .await;
        assert!(first.1.is_ok());
        assert_eq!(store.batch_counts().placements.batches, 2);
        assert!(rest[2].1.is_ok(), "{:?}", rest[2].1);
        let shared: Vec<_> = rest[..2].iter().collect();
        assert_eq!(shared.iter().filter(|p| p.1.is_ok()).count(), 1);
        let (lost, e) = shared
            .iter()
            .find_map(|p| p.1.as_ref().err().map(|e| (&p.0, e)))
            .unwrap();
        assert!(matches!(e, Error::Conflict { what: "event", .. }), "{e:?}");
        assert!(
            store
                .order(lost.tenant(), lost.id())
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            store
                .held_cards(lost.tenant(), lost.id())
                .await
                .unwrap()
                .is_empty()
        );
        let stock = store
            .stock(goods.tenant(), first_sku(&goods), t0())
            .await
            .unwrap();
        assert_eq!((stock.available, stock.reserved), (7, 3));
    })
    .await;
}

fn notice(o: &Order, txn: &str) -> PaymentNotice {
    PaymentNotice {
        tenant: o.tenant().clone(),
        provider: "testpay".into(),
        transaction_id: txn.into(),
        order: o.id(),
        amount: o.total(),
        received_at: t0(),
        disposition: NoticeDisposition::Applied,
    }
}

pub(crate) fn pay(
    store: &PgStore,
    o: &Order,
    txn: &str,
    sell: Vec<CardId>,
) -> JoinHandle<Result<RecordOutcome, Error>> {
    pay_with_job(store, o, txn, sell, None)
}

fn pay_with_job(
    store: &PgStore,
    o: &Order,
    txn: &str,
    sell: Vec<CardId>,
    job: Option<NewJob>,
) -> JoinHandle<Result<RecordOutcome, Error>> {
    let store = store.clone();
    let (o, n) = (o.clone(), notice(o, txn));
    tokio::spawn(async move {
        let (paid, envs) = paid_by(&o, &n);
        let write = PaymentWrite {
            notice: &n,
            change: Some(OrderChange {
                order: &paid,
                expected_version: o.version(),
                events: &envs,
            }),
            sell: &sell,
            job: job.as_ref(),
        };
        store.record_payment(write, t0()).await
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_payments_share_one_statement_and_keep_their_answers() {
    with_store(|store, admin, schema| async move {
        let (goods, current) = stocked(&store, 10).await;
        let mut orders = Vec::new();
        for i in 0..6 {
            let (o, r) = place(
                &store,
                (
                    order(&goods, &member(&format!("m{i}")), 1).0,
                    vec![current],
                    first_sku(&goods),
                ),
                None,
            )
            .await
            .unwrap();
            orders.push((o, r.unwrap()));
        }
        let job = quanyi_testkit::fixtures::job(goods.tenant(), "deliver:txn-2", t0());
        let (first, rest) = hold_then_release(
            &store,
            &admin,
            &schema,
            payments,
            || pay(&store, &orders[0].0, "txn-first", orders[0].1.clone()),
            || {
                vec![
                    pay(&store, &orders[1].0, "txn-1", orders[1].1.clone()),
                    // With a delivery job.
                    pay_with_job(
                        &store,
                        &orders[2].0,
                        "txn-2",
                        orders[2].1.clone(),
                        Some(job.clone()),
                    ),
                    // The same notice twice.
                    pay(&store, &orders[3].0, "txn-3", orders[3].1.clone()),
                    pay(&store, &orders[3].0, "txn-3", orders[3].1.clone()),
                    // Two notices for one order.
                    pay(&store, &orders[4].0, "txn-4a", orders[4].1.clone()),
                    pay(&store, &orders[4].0, "txn-4b", orders[4].1.clone()),
                    // A card another order holds.
                    pay(&store, &orders[5].0, "txn-5", orders[1].1.clone()),
                ]
            },
        )
        .await;
        assert_eq!(first.unwrap(), RecordOutcome::Recorded);
        assert_eq!(
            store.batch_counts().payments,
            BatchCount {
                batches: 2,
                requests: 8
            }
        );
        assert_eq!(rest[0].as_ref().unwrap(), &RecordOutcome::Recorded);
        assert_eq!(rest[1].as_ref().unwrap(), &RecordOutcome::Recorded);
        // Which of a pair queued first is not fixed: one is recorded, the other answered.
        let pair = |i: usize| [&rest[i], &rest[i + 1]];
        let same_notice = pair(2);
        assert!(
            same_notice
                .iter()
                .any(|r| matches!(r, Ok(RecordOutcome::Recorded)))
        );
        assert!(same_notice.iter().any(
            |r| matches!(r, Ok(RecordOutcome::Duplicate(n)) if &*n.transaction_id == "txn-3")
        ));
        let one_order = pair(4);
        let won = one_order
            .iter()
            .position(|r| matches!(r, Ok(RecordOutcome::Recorded)))
            .unwrap();
        assert!(matches!(
            one_order[1 - won],
            Err(Error::Conflict {
                what: "order",
                reason: "stale version",
                ..
            })
        ));
        assert!(
            matches!(&rest[6], Err(Error::Conflict { what: "card", .. })),
            "{:?}",
            rest[6]
        );
        let (winner, loser) = if won == 0 {
            ("txn-4a", "txn-4b")
        } else {
            ("txn-4b", "txn-4a")
        };
        let tenant = goods.tenant();
        for txn in [loser, "txn-5"] {
            assert!(
                store
                    .payment_notice(tenant, "testpay", txn)
                    .await
                    .unwrap()
                    .is_none()
            );
        }
        let stored = store
            .order(tenant, orders[4].0.id())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            stored.payment().map(|p| p.transaction_id.to_string()),
            Some(winner.to_owned())
        );
        let unpaid = store
            .order(tenant, orders[5].0.id())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(unpaid.status(), orders[5].0.status());
        let stock = store.stock(tenant, first_sku(&goods), t0()).await.unwrap();
        assert_eq!((stock.available, stock.reserved, stock.sold), (4, 1, 5));
        // The job came with its payment, once.
        let claimed = store
            .claim_job(job.id, "w", t0(), chrono::Duration::seconds(30))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(claimed.dedupe_key, "deliver:txn-2");
        assert_eq!(store.enqueue(&job, t0()).await.unwrap(), job.id);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_placement_waits_out_cards_held_by_a_transaction_that_rolls_back() {
    with_store(|store, admin, schema| async move {
        let (goods, version) = stocked(&store, 1).await;
        // Another transaction holds the only card's queue row, as a batch the server is about
        // to refuse would.
        admin
            .batch_execute(&format!(
                "BEGIN; SELECT id FROM {schema}.free_cards FOR UPDATE"
            ))
            .await
            .unwrap();
        let buy = (
            order(&goods, &member("patient"), 1).0,
            vec![version],
            first_sku(&goods),
        );
        let call = place(&store, buy, None);
        // Let go only once the placement found the card held and is waiting to try again (the
        // timeout is a guard, not a pause).
        let held = async {
            while store
                .shared
                .contended
                .load(std::sync::atomic::Ordering::Relaxed)
                == 0
            {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(60), held)
            .await
            .expect("the placement tries again while the card is held");
        admin.batch_execute("ROLLBACK").await.unwrap();
        let (o, placed) = call.await.unwrap();
        assert_eq!(placed.unwrap().len(), 1);
        assert!(store.order(o.tenant(), o.id()).await.unwrap().is_some());
        let stock = store
            .stock(goods.tenant(), first_sku(&goods), t0())
            .await
            .unwrap();
        assert_eq!((stock.available, stock.reserved), (0, 1));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_placement_for_stock_that_is_gone_is_refused_without_waiting() {
    with_store(|store, _admin, _schema| async move {
        let (goods, version) = stocked(&store, 1).await;
        let buy = |who: &str| {
            (
                order(&goods, &member(who), 1).0,
                vec![version],
                first_sku(&goods),
            )
        };
        assert!(place(&store, buy("first"), None).await.unwrap().1.is_ok());
        let (_, second) = place(&store, buy("second"), None).await.unwrap();
        assert!(
            matches!(second, Err(Error::OutOfStock { available: 0, .. })),
            "{second:?}"
        );
        assert_eq!(
            store
                .shared
                .contended
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
    })
    .await;
}
