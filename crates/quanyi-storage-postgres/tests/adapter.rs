//! What only the PostgreSQL adapter has to show: migrations, connection loss, corrupt rows,
//! and a Debug without secrets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use chrono::Duration as Span;
use quanyi_core::{ErrorKind, OrderId};
use quanyi_goods::PurchaseLimits;
use quanyi_storage::{
    CardState, Error, GoodsStore, MemberLimit, NewOrder, NoticeDisposition, OrderChange,
    OrderStore, PaymentNotice, PaymentStore, PaymentWrite, RecordOutcome, Reservation, VaultStore,
};
use quanyi_storage_postgres::{PgOptions, PgStore, SCHEMA_VERSION};
use quanyi_testkit::fixtures::{self, card_goods, cards, envelopes, first_sku, member, order, t0};

/// The URL with `application_name` set, so the test can find the store's backends.
fn named(url: &str, name: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}application_name={name}")
}

async fn version_rows(url: &str, schema: &str) -> i64 {
    common::admin(url)
        .await
        .query_one(
            &format!("SELECT count(*) FROM {schema}.schema_version"),
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Terminates the store's backend once it waits on a lock; panics if it never does.
async fn kill_when_waiting(url: &str, app: &str) {
    let admin = common::admin(url).await;
    for _ in 0..200 {
        let killed = admin
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = $1 AND wait_event_type = 'Lock'",
                &[&app],
            )
            .await
            .unwrap();
        if !killed.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the store never waited on the lock");
}

/// After a connection is killed, the pool may hand it out once more before it notices: that
/// call is `Unavailable`, and the caller retries, as any host would.
async fn settle(store: &PgStore) {
    for _ in 0..10 {
        match store.schema_version().await {
            Ok(_) => return,
            Err(e) => assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}"),
        }
    }
    panic!("the pool never recovered");
}

#[tokio::test]
async fn migrate_twice_is_a_no_op() {
    let Some((url, schema, store)) = common::fresh().await else {
        return;
    };
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    assert_eq!(store.schema_version().await.unwrap(), Some(SCHEMA_VERSION));
    assert_eq!(version_rows(&url, &schema).await, i64::from(SCHEMA_VERSION));
    common::drop_schema(url, schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_migrations_are_safe() {
    let Some(url) = common::url() else { return };
    let schema = quanyi_testkit::unique_name("qt");
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let options = common::options(&url, &schema).max_connections(1);
        tasks.push(tokio::spawn(async move {
            let store = PgStore::connect_with(options).await?;
            assert!(store.schema_version().await?.unwrap_or(0) <= SCHEMA_VERSION);
            store.migrate().await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(version_rows(&url, &schema).await, i64::from(SCHEMA_VERSION));
    let store = PgStore::connect_with(common::options(&url, &schema))
        .await
        .unwrap();
    assert_eq!(store.schema_version().await.unwrap(), Some(SCHEMA_VERSION));
    common::drop_schema(url, schema).await;
}

#[tokio::test]
async fn a_newer_schema_version_is_refused() {
    let Some((url, schema, store)) = common::fresh().await else {
        return;
    };
    common::admin(&url)
        .await
        .execute(
            &format!("INSERT INTO {schema}.schema_version (version, name) VALUES (999, 'future')"),
            &[],
        )
        .await
        .unwrap();
    let e = store.migrate().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");
    assert!(e.to_string().contains("999"), "{e}");
    common::drop_schema(url, schema).await;
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable() {
    // Port 1 on the loopback: nothing listens there.
    let options = PgOptions::new("postgres://postgres@127.0.0.1:1/test")
        .connect_timeout(Duration::from_secs(2))
        .acquire_timeout(Duration::from_secs(2));
    let e = PgStore::connect_with(options).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(
        std::error::Error::source(&e).is_some(),
        "the driver error is kept"
    );
}

#[tokio::test]
async fn bad_options_are_invalid() {
    for options in [
        PgOptions::new("postgres://postgres@127.0.0.1/test").schema("Robert'); DROP"),
        PgOptions::new("postgres://postgres@127.0.0.1/test").max_connections(0),
        PgOptions::new("postgres://[bad"),
    ] {
        let e = PgStore::connect_with(options).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");
    }
}

#[tokio::test]
async fn debug_shows_no_password() {
    let Some(url) = common::url() else { return };
    let Some(with_password) = url
        .strip_prefix("postgres://postgres@")
        .map(|rest| format!("postgres://postgres:hunter2@{rest}"))
    else {
        return;
    };
    // Trust authentication ignores the password; other set-ups may refuse it.
    let Ok(store) = PgStore::connect(&with_password).await else {
        return;
    };
    let text = format!("{store:?}");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(text.contains("schema"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_mid_transaction_writes_nothing() {
    let Some((url, schema, store)) = common::fresh().await else {
        return;
    };
    drop(store);
    // One connection, named so the test can find it.
    let app = format!("{schema}_place");
    let store =
        PgStore::connect_with(common::options(&named(&url, &app), &schema).max_connections(1))
            .await
            .unwrap();
    let tenant = fixtures::tenant();
    let goods = card_goods(
        &tenant,
        PurchaseLimits {
            per_order: None,
            per_member: Some(5),
        },
    );
    let sku = first_sku(&goods);
    store.insert_goods(&goods, &[]).await.unwrap();
    store
        .insert_cards(&tenant, &cards(sku, 3), t0())
        .await
        .unwrap();
    let buyer = member("lost");
    let limits = [MemberLimit { sku, limit: 5 }];
    let place = |o: &quanyi_order::Order| {
        let store = store.clone();
        let o = o.clone();
        async move {
            let envs = envelopes(&o, &[]);
            store
                .place_order(
                    NewOrder {
                        order: &o,
                        events: &envs,
                        reservations: &[Reservation { sku, quantity: 1 }],
                        member_limits: &limits,
                        priced_from: &[],
                    },
                    t0(),
                )
                .await
        }
    };
    // Prepares the statements on the pool's connection.
    let (first, _) = order(&goods, &buyer, 1);
    place(&first).await.unwrap();

    // Block the order insert behind a table lock: the store's transaction has begun and taken
    // the member lock when its connection is terminated.
    let admin = common::admin(&url).await;
    admin
        .batch_execute(&format!(
            "BEGIN; LOCK TABLE {schema}.orders IN EXCLUSIVE MODE"
        ))
        .await
        .unwrap();
    let (second, _) = order(&goods, &buyer, 1);
    let attempt = tokio::spawn(place(&second));
    kill_when_waiting(&url, &app).await;
    let e = attempt.await.unwrap().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    admin.batch_execute("ROLLBACK").await.unwrap();
    settle(&store).await;

    assert!(store.order(&tenant, second.id()).await.unwrap().is_none());
    let stock = store.stock(&tenant, sku, t0()).await.unwrap();
    assert_eq!((stock.available, stock.reserved), (2, 1));
    // The pool replaces the connection; the same order goes through.
    assert_eq!(place(&second).await.unwrap().len(), 1);
    common::drop_schema(url, schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_cut_off_mid_statement_writes_nothing() {
    let Some((url, schema, store)) = common::fresh().await else {
        return;
    };
    drop(store);
    let app = format!("{schema}_pay");
    let store =
        PgStore::connect_with(common::options(&named(&url, &app), &schema).max_connections(1))
            .await
            .unwrap();
    let tenant = fixtures::tenant();
    let goods = card_goods(&tenant, PurchaseLimits::default());
    let sku = first_sku(&goods);
    store
        .insert_cards(&tenant, &cards(sku, 2), t0())
        .await
        .unwrap();
    let (placed, _) = order(&goods, &member("cut"), 1);
    let held = store
        .place_order(
            NewOrder {
                order: &placed,
                events: &[],
                reservations: &[Reservation { sku, quantity: 1 }],
                member_limits: &[],
                priced_from: &[],
            },
            t0(),
        )
        .await
        .unwrap();
    let notice = PaymentNotice {
        tenant: tenant.clone(),
        provider: "testpay".into(),
        transaction_id: "txn-cut".into(),
        order: placed.id(),
        amount: placed.total(),
        received_at: t0(),
        disposition: NoticeDisposition::Applied,
    };
    let (paid, envs) = fixtures::paid_by(&placed, &notice);
    let job = fixtures::job(&tenant, "deliver:cut", t0());
    let pay = {
        let store = store.clone();
        let (notice, paid, envs, held, job) = (
            notice.clone(),
            paid.clone(),
            envs.clone(),
            held.clone(),
            job.clone(),
        );
        let expected = placed.version();
        move || {
            let store = store.clone();
            let (notice, paid, envs, held, job) = (
                notice.clone(),
                paid.clone(),
                envs.clone(),
                held.clone(),
                job.clone(),
            );
            async move {
                store
                    .record_payment(
                        PaymentWrite {
                            notice: &notice,
                            change: Some(OrderChange {
                                order: &paid,
                                expected_version: expected,
                                events: &envs,
                            }),
                            sell: &held,
                            job: Some(&job),
                        },
                        t0(),
                    )
                    .await
            }
        }
    };

    let admin = common::admin(&url).await;
    admin
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM {schema}.orders WHERE id = '{}' FOR UPDATE",
            placed.id().as_uuid()
        ))
        .await
        .unwrap();
    let attempt = tokio::spawn(pay());
    kill_when_waiting(&url, &app).await;
    let e = attempt.await.unwrap().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    admin.batch_execute("ROLLBACK").await.unwrap();
    settle(&store).await;

    assert!(
        store
            .payment_notice(&tenant, "testpay", "txn-cut")
            .await
            .unwrap()
            .is_none()
    );
    let stored = store.order(&tenant, placed.id()).await.unwrap().unwrap();
    assert_eq!(stored, placed);
    let card = store.card(&tenant, held[0]).await.unwrap().unwrap();
    assert!(matches!(card.state, CardState::Reserved { .. }));
    // A retry records it once.
    assert_eq!(pay().await.unwrap(), RecordOutcome::Recorded);
    assert!(matches!(pay().await.unwrap(), RecordOutcome::Duplicate(_)));
    common::drop_schema(url, schema).await;
}

#[tokio::test]
async fn a_corrupt_document_is_corrupt() {
    let Some((url, schema, store)) = common::fresh().await else {
        return;
    };
    let tenant = fixtures::tenant();
    let goods = card_goods(&tenant, PurchaseLimits::default());
    store.insert_goods(&goods, &[]).await.unwrap();
    let (placed, _) = order(&goods, &member("rot"), 1);
    store.insert_order(&placed, &[], &[]).await.unwrap();
    let admin = common::admin(&url).await;
    admin
        .batch_execute(&format!(
            "UPDATE {schema}.goods SET doc = '{{\"title\": 7}}'; \
             UPDATE {schema}.orders SET doc = 'not json'"
        ))
        .await
        .unwrap();
    let e = store.goods(&tenant, goods.id()).await.unwrap_err();
    assert!(matches!(e, Error::Corrupt(_)), "{e}");
    let e = store.order(&tenant, placed.id()).await.unwrap_err();
    assert!(matches!(e, Error::Corrupt(_)), "{e}");
    assert_eq!(e.kind(), ErrorKind::Internal);
    let e = store
        .member_orders(&tenant, &member("rot"), 10)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Corrupt(_)), "{e}");
    common::drop_schema(url, schema).await;
}

#[tokio::test]
async fn timestamps_round_trip_to_the_microsecond() {
    let Some((url, schema, store)) = common::fresh().await else {
        return;
    };
    let tenant = fixtures::tenant();
    let sku = first_sku(&card_goods(&tenant, PurchaseLimits::default()));
    store
        .insert_cards(&tenant, &cards(sku, 1), t0())
        .await
        .unwrap();
    let until = t0() + Span::microseconds(123_457);
    let id = fixtures::id(OrderId::generate);
    let held = store
        .reserve_cards(&tenant, sku, id, 1, until, t0())
        .await
        .unwrap();
    let card = store.card(&tenant, held[0]).await.unwrap().unwrap();
    assert_eq!(card.state, CardState::Reserved { order: id, until });
    assert_eq!(card.imported_at, t0());
    common::drop_schema(url, schema).await;
}

/// A schema at version 2 (before `free_cards`) with cards in every state: after `migrate`,
/// stock counts are unchanged and allocation takes the available cards, then a lapsed
/// reservation.
#[tokio::test]
async fn migration_3_queues_the_available_cards_of_an_older_schema() {
    let Some(url) = common::url() else { return };
    let schema = quanyi_testkit::unique_name("qt");
    let admin = common::admin(&url).await;
    admin
        .batch_execute(&format!(
            "CREATE SCHEMA {schema}; SET search_path TO {schema}; \
             CREATE TABLE schema_version (version integer PRIMARY KEY, name text NOT NULL, \
                                          applied_at timestamptz NOT NULL DEFAULT now()); \
             {} {} \
             INSERT INTO schema_version (version, name) VALUES (1, 'init'), (2, 'orders_updated_at');",
            include_str!("../migrations/0001_init.sql"),
            include_str!("../migrations/0002_orders_updated_at.sql"),
        ))
        .await
        .unwrap();
    let tenant = fixtures::tenant();
    let sku = first_sku(&card_goods(&tenant, PurchaseLimits::default()));
    let new = cards(sku, 4);
    let (holder, buyer) = (
        fixtures::id(OrderId::generate),
        fixtures::id(OrderId::generate),
    );
    let until = t0() + Span::minutes(15);
    for (i, c) in new.iter().enumerate() {
        let (state, order, reserved_until, sold_at) = match i {
            0 => ("sold", Some(holder), None, Some(t0().timestamp_micros())),
            1 => (
                "reserved",
                Some(holder),
                Some(until.timestamp_micros()),
                None,
            ),
            _ => ("available", None, None, None),
        };
        admin
            .execute(
                &format!(
                    "INSERT INTO {schema}.cards (id, tenant, sku, batch, blind_index, code, key_id, \
                     state, order_id, reserved_until, sold_at, hold_pos, imported_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, 1, $7, $8, $9, $10, NULL, $11)"
                ),
                &[
                    c.id.as_uuid(),
                    &tenant.as_str(),
                    sku.as_uuid(),
                    c.batch.as_uuid(),
                    &c.blind_index.as_bytes().as_slice(),
                    &c.sealed.code.as_bytes(),
                    &state,
                    &order.map(|o| *o.as_uuid()),
                    &reserved_until,
                    &sold_at,
                    &t0().timestamp_micros(),
                ],
            )
            .await
            .unwrap();
    }
    let store = PgStore::connect_with(common::options(&url, &schema))
        .await
        .unwrap();
    assert_eq!(store.schema_version().await.unwrap(), Some(2));
    store.migrate().await.unwrap();
    assert_eq!(store.schema_version().await.unwrap(), Some(SCHEMA_VERSION));

    let stock = store.stock(&tenant, sku, t0()).await.unwrap();
    assert_eq!((stock.available, stock.reserved, stock.sold), (2, 1, 1));
    let taken = store
        .reserve_cards(&tenant, sku, buyer, 2, t0() + Span::hours(2), t0())
        .await
        .unwrap();
    let mut free: Vec<_> = new[2..].iter().map(|c| c.id).collect();
    free.sort();
    assert_eq!(taken, free);
    let later = until + Span::seconds(1);
    let other = fixtures::id(OrderId::generate);
    let lapsed = store
        .reserve_cards(&tenant, sku, other, 1, later + Span::minutes(15), later)
        .await
        .unwrap();
    assert_eq!(lapsed, vec![new[1].id]);
    let stock = store.stock(&tenant, sku, later).await.unwrap();
    assert_eq!((stock.available, stock.reserved, stock.sold), (0, 3, 1));
    drop(store);
    common::drop_schema(url, schema).await;
}
