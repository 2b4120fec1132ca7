//! What only the PostgreSQL adapter has to show: migrations, connection loss, corrupt rows,
//! the key-ring lock of writes of sealed values, and a Debug without secrets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use chrono::Duration as Span;
use quanyi_core::{ErrorKind, OrderId, TenantId};
use quanyi_goods::PurchaseLimits;
use quanyi_order::Order;
use quanyi_storage::{
    CONFLICTING_REPEAT, CardState, Error, EventStore, GoodsStore, IndexChange, KeyRingStore,
    MemberLimit, NewCard, NewOrder, NoticeDisposition, OrderChange, OrderStore, PaymentNotice,
    PaymentStore, PaymentWrite, RecordOutcome, Reindexed, Reservation, VaultStore,
};
use quanyi_storage_postgres::{PgOptions, PgStore, SCHEMA_VERSION};
use quanyi_testkit::fixtures::{self, card_goods, cards, envelopes, first_sku, member, order, t0};
use quanyi_vault::{BlindIndex, IndexScheme, KeyId, KeyRing, SealedCard, SealedValue};

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
    let tenant = fixtures::vault_tenant(&store).await;
    let goods = card_goods(
        &tenant,
        PurchaseLimits {
            per_order: None,
            per_member: Some(5),
            release_on_refund: false,
        },
    );
    let sku = first_sku(&goods);
    store
        .insert_goods(&goods, quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    store
        .insert_cards(&tenant, &cards(sku, 3), t0(), quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    let buyer = member("lost");
    let limits = [MemberLimit {
        sku,
        limit: 5,
        release_on_refund: false,
    }];
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
                        claims: &[],
                        budgets: &[],
                        pricing_version: None,
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
    let tenant = fixtures::vault_tenant(&store).await;
    let goods = card_goods(&tenant, PurchaseLimits::default());
    let sku = first_sku(&goods);
    store
        .insert_cards(&tenant, &cards(sku, 2), t0(), quanyi_storage::Trail::NONE)
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
    store
        .insert_goods(&goods, quanyi_storage::Trail::NONE)
        .await
        .unwrap();
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
    let tenant = fixtures::vault_tenant(&store).await;
    let sku = first_sku(&card_goods(&tenant, PurchaseLimits::default()));
    store
        .insert_cards(&tenant, &cards(sku, 1), t0(), quanyi_storage::Trail::NONE)
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

/// The migrations of older versions: (version, name, SQL).
const OLD_MIGRATIONS: [(i32, &str, &str); 10] = [
    (1, "init", include_str!("../migrations/0001_init.sql")),
    (
        2,
        "orders_updated_at",
        include_str!("../migrations/0002_orders_updated_at.sql"),
    ),
    (
        3,
        "free_cards",
        include_str!("../migrations/0003_free_cards.sql"),
    ),
    (
        4,
        "withdrawn_cards_index_schemes",
        include_str!("../migrations/0004_withdrawn_cards_index_schemes.sql"),
    ),
    (
        5,
        "lean_order_path",
        include_str!("../migrations/0005_lean_order_path.sql"),
    ),
    (
        6,
        "sale_claims",
        include_str!("../migrations/0006_sale_claims.sql"),
    ),
    (
        7,
        "event_feed",
        include_str!("../migrations/0007_event_feed.sql"),
    ),
    (
        8,
        "order_search",
        include_str!("../migrations/0008_order_search.sql"),
    ),
    (
        9,
        "line_terms",
        include_str!("../migrations/0009_line_terms.sql"),
    ),
    (
        10,
        "after_sales",
        include_str!("../migrations/0010_after_sales.sql"),
    ),
];

/// Stores goods as every version wrote them.
async fn old_goods(admin: &tokio_postgres::Client, schema: &str, goods: &quanyi_goods::Goods) {
    admin
        .execute(
            &format!(
                "INSERT INTO {schema}.goods (tenant, id, version, doc) VALUES ($1, $2, $3, $4)"
            ),
            &[
                &goods.tenant().as_str(),
                goods.id().as_uuid(),
                &i64::try_from(goods.version()).unwrap(),
                &serde_json::to_string(goods).unwrap(),
            ],
        )
        .await
        .unwrap();
    for sku in goods.skus() {
        admin
            .execute(
                &format!("INSERT INTO {schema}.skus (tenant, sku, goods) VALUES ($1, $2, $3)"),
                &[
                    &goods.tenant().as_str(),
                    sku.id.as_uuid(),
                    goods.id().as_uuid(),
                ],
            )
            .await
            .unwrap();
    }
}

/// Creates `schema` as the migrations up to `version` left it.
async fn schema_at(admin: &tokio_postgres::Client, schema: &str, version: i32) {
    let mut sql = format!(
        "CREATE SCHEMA {schema}; SET search_path TO {schema}; \
         CREATE TABLE schema_version (version integer PRIMARY KEY, name text NOT NULL, \
                                      applied_at timestamptz NOT NULL DEFAULT now());"
    );
    for (v, name, text) in OLD_MIGRATIONS.iter().filter(|m| m.0 <= version) {
        sql += text;
        sql += &format!("; INSERT INTO schema_version (version, name) VALUES ({v}, '{name}');");
    }
    sql += "SET search_path TO DEFAULT;";
    admin.batch_execute(&sql).await.unwrap();
}

/// Stores a card in `state` as versions 1 to 3 wrote it (no index scheme), sealed with `k1`.
async fn old_card(
    admin: &tokio_postgres::Client,
    schema: &str,
    tenant: &TenantId,
    c: &NewCard,
    state: CardState,
) {
    let micros = |at: chrono::DateTime<chrono::Utc>| at.timestamp_micros();
    let (name, order, until, sold_at) = match state {
        CardState::Available => ("available", None, None, None),
        CardState::Reserved { order, until } => {
            ("reserved", Some(order), Some(micros(until)), None)
        }
        CardState::Sold { order, at } => ("sold", Some(order), None, Some(micros(at))),
        CardState::Withdrawn { .. } => panic!("older schemas have no withdrawn cards"),
    };
    admin
        .execute(
            &format!(
                "INSERT INTO {schema}.cards (id, tenant, sku, batch, blind_index, code, secret, \
                 key_id, state, order_id, reserved_until, sold_at, hold_pos, imported_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, 1, $8, $9, $10, $11, NULL, $12)"
            ),
            &[
                c.id.as_uuid(),
                &tenant.as_str(),
                c.sku.as_uuid(),
                c.batch.as_uuid(),
                &c.blind_index.as_bytes().as_slice(),
                &c.sealed.code.as_bytes(),
                &c.sealed.secret.as_ref().map(SealedValue::as_bytes),
                &name,
                &order.map(|o| *o.as_uuid()),
                &until,
                &sold_at,
                &micros(t0()),
            ],
        )
        .await
        .unwrap();
}

/// Stores an order as versions 1 to 4 wrote it (its lines without their terms).
async fn old_order(admin: &tokio_postgres::Client, schema: &str, o: &Order) {
    admin
        .execute(
            &format!(
                "INSERT INTO {schema}.orders (tenant, id, member, status, expires_at, version, \
                 doc, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
            ),
            &[
                &o.tenant().as_str(),
                o.id().as_uuid(),
                &o.member().as_str(),
                &o.status().as_str(),
                &o.expires_at().timestamp_micros(),
                &i64::try_from(o.version()).unwrap(),
                &fixtures::doc_before_line_terms(o),
                &o.updated_at().timestamp_micros(),
            ],
        )
        .await
        .unwrap();
}

/// Stores a payment notice as every version wrote it.
async fn old_notice(admin: &tokio_postgres::Client, schema: &str, n: &PaymentNotice) {
    admin
        .execute(
            &format!(
                "INSERT INTO {schema}.payment_notices (tenant, provider, transaction_id, \
                 reconcile, doc) VALUES ($1, $2, $3, $4, $5)"
            ),
            &[
                &n.tenant.as_str(),
                &&*n.provider,
                &&*n.transaction_id,
                &!matches!(n.disposition, NoticeDisposition::Applied),
                &serde_json::to_string(n).unwrap(),
            ],
        )
        .await
        .unwrap();
}

fn test_notice(o: &Order, txn: &str, disposition: NoticeDisposition) -> PaymentNotice {
    PaymentNotice {
        tenant: o.tenant().clone(),
        provider: "testpay".into(),
        transaction_id: txn.into(),
        order: o.id(),
        amount: o.total(),
        received_at: t0(),
        disposition,
    }
}

/// A schema at version 3 (before withdrawn cards, index schemes and conflicting notices) with a
/// key ring, cards available, reserved and sold, the orders that hold them, and notices: after
/// `migrate`, every card has its state and data, indexed with the Legacy scheme, the orders and
/// notices are as they were, and re-indexing, legacy duplicates, withdrawal, closing an unpaid
/// order, conflicting notices and destroying the key all work on the old rows.
#[tokio::test]
async fn migration_4_keeps_the_cards_orders_and_notices_of_an_older_schema() {
    let Some(url) = common::url() else { return };
    let schema = quanyi_testkit::unique_name("qt");
    let admin = common::admin(&url).await;
    schema_at(&admin, &schema, 3).await;
    let tenant = fixtures::tenant();
    let goods = card_goods(&tenant, PurchaseLimits::default());
    let sku = first_sku(&goods);
    old_goods(&admin, &schema, &goods).await;
    admin
        .execute(
            &format!("INSERT INTO {schema}.key_rings (tenant, version, doc) VALUES ($1, 1, $2)"),
            &[
                &tenant.as_str(),
                &serde_json::to_string(&fixtures::key_ring(&tenant)).unwrap(),
            ],
        )
        .await
        .unwrap();
    let unpaid = order(&goods, &member("old"), 1).0;
    let placed = order(&goods, &member("older"), 1).0;
    let applied = test_notice(&placed, "txn-old", NoticeDisposition::Applied);
    let paid = fixtures::paid_by(&placed, &applied).0;
    let odd = test_notice(
        &order(&goods, &member("gone"), 1).0,
        "txn-odd",
        NoticeDisposition::Reconcile {
            reason: "unknown_order".into(),
        },
    );
    for o in [&unpaid, &paid] {
        old_order(&admin, &schema, o).await;
    }
    for n in [&applied, &odd] {
        old_notice(&admin, &schema, n).await;
    }
    let mut old = cards(sku, 4);
    old[1].sealed.secret = Some(SealedValue::from_bytes(vec![5; 24]));
    let states = [
        CardState::Sold {
            order: paid.id(),
            at: t0(),
        },
        CardState::Reserved {
            order: unpaid.id(),
            until: unpaid.expires_at(),
        },
        CardState::Available,
        CardState::Available,
    ];
    for (c, state) in old.iter().zip(states) {
        old_card(&admin, &schema, &tenant, c, state).await;
    }
    admin
        .batch_execute(&format!(
            "INSERT INTO {schema}.free_cards (tenant, sku, id) \
             SELECT tenant, sku, id FROM {schema}.cards WHERE state = 'available'"
        ))
        .await
        .unwrap();

    let store = PgStore::connect_with(common::options(&url, &schema))
        .await
        .unwrap();
    assert_eq!(store.schema_version().await.unwrap(), Some(3));
    store.migrate().await.unwrap();
    assert_eq!(store.schema_version().await.unwrap(), Some(SCHEMA_VERSION));

    // Everything as it was.
    for (c, state) in old.iter().zip(states) {
        let stored = store.card(&tenant, c.id).await.unwrap().unwrap();
        assert_eq!(stored.state, state);
        assert_eq!(stored.index_scheme, IndexScheme::Legacy);
        assert_eq!(
            (stored.sku, stored.batch, stored.blind_index, stored.key_id),
            (c.sku, c.batch, c.blind_index, KeyId(1))
        );
        assert_eq!(stored.sealed, c.sealed);
        assert_eq!(stored.imported_at, t0());
    }
    assert_eq!(
        store.order(&tenant, unpaid.id()).await.unwrap(),
        Some(unpaid.clone())
    );
    assert_eq!(
        store.order(&tenant, paid.id()).await.unwrap(),
        Some(paid.clone())
    );
    assert_eq!(
        store
            .payment_notice(&tenant, "testpay", "txn-old")
            .await
            .unwrap(),
        Some(applied.clone())
    );
    let held = store.held_cards(&tenant, unpaid.id()).await.unwrap();
    assert_eq!(
        held.iter().map(|c| c.id).collect::<Vec<_>>(),
        vec![old[1].id]
    );
    let stock = |at| {
        let store = store.clone();
        let tenant = tenant.clone();
        async move {
            let s = store.stock(&tenant, sku, at).await.unwrap();
            (s.available, s.reserved, s.sold)
        }
    };
    assert_eq!(stock(t0()).await, (2, 1, 1));

    // Re-indexing finds every old card, and moves one.
    let mut ids: Vec<_> = old.iter().map(|c| c.id).collect();
    ids.sort();
    let todo = store
        .cards_to_reindex(&tenant, IndexScheme::CURRENT, 10)
        .await
        .unwrap();
    assert_eq!(todo.iter().map(|c| c.id).collect::<Vec<_>>(), ids);
    let moved_to = BlindIndex::from_bytes([0xee; 32]);
    let change = IndexChange {
        card: old[3].id,
        from: old[3].blind_index,
        to: moved_to,
        scheme: IndexScheme::CURRENT,
    };
    assert_eq!(
        store.reindex_cards(&tenant, &[change]).await.unwrap(),
        vec![Reindexed::Moved]
    );
    let moved = store.card(&tenant, old[3].id).await.unwrap().unwrap();
    assert_eq!(
        (moved.blind_index, moved.index_scheme),
        (moved_to, IndexScheme::CURRENT)
    );
    assert_eq!(
        store
            .cards_to_reindex(&tenant, IndexScheme::CURRENT, 10)
            .await
            .unwrap()
            .len(),
        3
    );

    // An import finds an old card by a legacy index.
    let mut variant = cards(sku, 1);
    variant[0].legacy_index = Some(old[2].blind_index);
    let out = store
        .insert_cards(&tenant, &variant, t0(), quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    assert_eq!(out.duplicates, vec![0]);

    // An old available card is withdrawn; the old unpaid order closes with its reservation.
    let later = t0() + Span::seconds(1);
    assert_eq!(
        store
            .withdraw_cards(&tenant, &[old[2].id], later)
            .await
            .unwrap(),
        vec![old[2].id]
    );
    assert_eq!(stock(t0()).await, (1, 1, 1));
    let mut expired = unpaid.clone();
    let events = expired.expire(unpaid.expires_at()).unwrap();
    let envs = envelopes(&expired, &events);
    let change = OrderChange {
        order: &expired,
        expected_version: unpaid.version(),
        events: &envs,
    };
    assert_eq!(store.close_unpaid_order(change).await.unwrap(), 1);
    assert_eq!(stock(t0()).await, (2, 0, 1));

    // A conflicting repeat of an old notice is listed after the old notice to reconcile.
    let mut conflicting = applied.clone();
    conflicting.amount = quanyi_core::Money::from_minor(1, applied.amount.currency());
    assert!(store.flag_conflicting_notice(&conflicting).await.unwrap());
    conflicting.disposition = NoticeDisposition::Reconcile {
        reason: CONFLICTING_REPEAT.into(),
    };
    assert_eq!(
        store.notices_to_reconcile(&tenant, 10).await.unwrap(),
        vec![odd, conflicting]
    );

    // Destroying the old key shreds every old card and withdraws the unsold ones.
    assert_eq!(fixtures::rotate_ring(&store, &tenant).await, KeyId(2));
    let (wrapped, version) = store.key_ring(&tenant).await.unwrap().unwrap();
    let mut ring = KeyRing::unwrap(&fixtures::root_key(), &wrapped).unwrap();
    ring.destroy(KeyId(1)).unwrap();
    let outcome = store
        .destroy_key(
            &ring.to_wrapped(),
            version,
            KeyId(1),
            later,
            quanyi_storage::Trail::NONE,
        )
        .await
        .unwrap();
    assert_eq!((outcome.shredded, outcome.withdrawn), (4, 2));
    for c in &old {
        let card = store.card(&tenant, c.id).await.unwrap().unwrap();
        assert_eq!(
            card.sealed,
            SealedCard {
                code: SealedValue::from_bytes(Vec::new()),
                secret: None,
            }
        );
    }
    assert_eq!(stock(t0()).await, (0, 0, 1));
    drop(store);
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
    schema_at(&admin, &schema, 2).await;
    let tenant = fixtures::tenant();
    let sku = first_sku(&card_goods(&tenant, PurchaseLimits::default()));
    let new = cards(sku, 4);
    let (holder, buyer) = (
        fixtures::id(OrderId::generate),
        fixtures::id(OrderId::generate),
    );
    let until = t0() + Span::minutes(15);
    for (i, c) in new.iter().enumerate() {
        let state = match i {
            0 => CardState::Sold {
                order: holder,
                at: t0(),
            },
            1 => CardState::Reserved {
                order: holder,
                until,
            },
            _ => CardState::Available,
        };
        old_card(&admin, &schema, &tenant, c, state).await;
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

/// Writes of sealed values (an import, cards bought for an order, a reseal), each under `k1`.
#[derive(Debug, Clone, Copy)]
enum SealedWrite {
    Import,
    Bought,
    Reseal,
}

/// Waits until a backend of the application `app` waits on a lock; a guard of a minute, not a
/// pause.
async fn until_waiting(admin: &tokio_postgres::Client, app: &str) {
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let waiting = admin
                .query(
                    "SELECT 1 FROM pg_stat_activity \
                     WHERE application_name = $1 AND wait_event_type = 'Lock'",
                    &[&app],
                )
                .await
                .unwrap();
            if !waiting.is_empty() {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the store waits on the key ring");
}

/// A rotation holds the tenant's ring row (updated, not committed) while `write` runs: the
/// write waits for it, and once it commits, the write is refused as sealed with a key that is
/// no longer active, and writes nothing. A write that read the ring without the lock would have
/// stored its cards under `k1` after the rotation.
async fn check_waits_for_rotation(url: &str, schema: &str, write: SealedWrite) {
    let app = format!("{schema}_{write:?}").to_lowercase();
    let store =
        PgStore::connect_with(common::options(&named(url, &app), schema).max_connections(2))
            .await
            .unwrap();
    let tenant = fixtures::vault_tenant(&store).await;
    let goods = card_goods(&tenant, PurchaseLimits::default());
    let sku = first_sku(&goods);
    let batch = cards(sku, 2);
    let resealed = cards(sku, 1);
    if let SealedWrite::Reseal = write {
        store
            .insert_cards(&tenant, &resealed, t0(), quanyi_storage::Trail::NONE)
            .await
            .unwrap();
    }
    let placed = order(&goods, &member("rot"), 1).0;
    store.insert_order(&placed, &[], &[]).await.unwrap();
    let (paid, envs) = fixtures::paid_by(
        &placed,
        &test_notice(&placed, "txn-rot", NoticeDisposition::Applied),
    );

    let (wrapped, _) = store.key_ring(&tenant).await.unwrap().unwrap();
    let mut ring = KeyRing::unwrap(&fixtures::root_key(), &wrapped).unwrap();
    ring.rotate(&fixtures::root_key(), t0(), &mut rand::thread_rng())
        .unwrap();
    let rotation = common::admin(url).await;
    rotation.batch_execute("BEGIN").await.unwrap();
    rotation
        .execute(
            &format!(
                "UPDATE {schema}.key_rings SET version = version + 1, doc = $2 WHERE tenant = $1"
            ),
            &[
                &tenant.as_str(),
                &serde_json::to_string(&ring.to_wrapped()).unwrap(),
            ],
        )
        .await
        .unwrap();

    let attempt = {
        let (store, tenant, batch, paid, envs) = (
            store.clone(),
            tenant.clone(),
            batch.clone(),
            paid.clone(),
            envs.clone(),
        );
        let (card, expected) = (resealed[0].id, placed.version());
        tokio::spawn(async move {
            match write {
                SealedWrite::Import => store
                    .insert_cards(&tenant, &batch, t0(), quanyi_storage::Trail::NONE)
                    .await
                    .map(|_| ()),
                SealedWrite::Bought => {
                    let change = OrderChange {
                        order: &paid,
                        expected_version: expected,
                        events: &envs,
                    };
                    store.insert_sold_cards(&tenant, &batch, change, t0()).await
                }
                SealedWrite::Reseal => {
                    let sealed = SealedCard {
                        code: SealedValue::from_bytes(vec![9; 40]),
                        secret: None,
                    };
                    store
                        .replace_sealed(&tenant, card, KeyId(1), &sealed, KeyId(1))
                        .await
                }
            }
        })
    };
    until_waiting(&common::admin(url).await, &app).await;
    rotation.batch_execute("COMMIT").await.unwrap();
    let r = attempt.await.unwrap();
    assert!(
        matches!(&r, Err(Error::KeyNotActive { key }) if key == "k1"),
        "{write:?}: {r:?}"
    );
    for c in &batch {
        assert!(
            store.card(&tenant, c.id).await.unwrap().is_none(),
            "{write:?}"
        );
    }
    let kept = store.card(&tenant, resealed[0].id).await.unwrap();
    if let Some(kept) = kept {
        assert_eq!(kept.sealed, resealed[0].sealed, "{write:?}");
    }
    let stored = store.order(&tenant, placed.id()).await.unwrap().unwrap();
    assert_eq!(stored, placed, "{write:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_of_sealed_values_wait_for_a_rotation_and_refuse_the_old_key() {
    let Some((url, schema, store)) = common::fresh().await else {
        return;
    };
    drop(store);
    for write in [
        SealedWrite::Import,
        SealedWrite::Bought,
        SealedWrite::Reseal,
    ] {
        check_waits_for_rotation(&url, &schema, write).await;
    }
    common::drop_schema(url, schema).await;
}

/// Stores a card in `state` as version 4 wrote it (with its index scheme and its place among
/// its order's cards), sealed with `k1`.
async fn v4_card(
    admin: &tokio_postgres::Client,
    schema: &str,
    tenant: &TenantId,
    c: &NewCard,
    state: CardState,
    hold_pos: Option<i64>,
) {
    let micros = |at: chrono::DateTime<chrono::Utc>| at.timestamp_micros();
    let (name, order, until, sold_at, withdrawn_at) = match state {
        CardState::Available => ("available", None, None, None, None),
        CardState::Reserved { order, until } => {
            ("reserved", Some(order), Some(micros(until)), None, None)
        }
        CardState::Sold { order, at } => ("sold", Some(order), None, Some(micros(at)), None),
        CardState::Withdrawn { at } => ("withdrawn", None, None, None, Some(micros(at))),
    };
    admin
        .execute(
            &format!(
                "INSERT INTO {schema}.cards (id, tenant, sku, batch, blind_index, code, secret, \
                 key_id, state, order_id, reserved_until, sold_at, hold_pos, imported_at, \
                 index_scheme, withdrawn_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, 1, $8, $9, $10, $11, $12, $13, 2, $14)"
            ),
            &[
                c.id.as_uuid(),
                &tenant.as_str(),
                c.sku.as_uuid(),
                c.batch.as_uuid(),
                &c.blind_index.as_bytes().as_slice(),
                &c.sealed.code.as_bytes(),
                &c.sealed.secret.as_ref().map(SealedValue::as_bytes),
                &name,
                &order.map(|o| *o.as_uuid()),
                &until,
                &sold_at,
                &hold_pos,
                &micros(t0()),
                &withdrawn_at,
            ],
        )
        .await
        .unwrap();
}

/// Stores an order with its lines and events as versions 1 to 4 wrote them (lines in
/// `order_lines`, one event per row).
async fn v4_order(
    admin: &tokio_postgres::Client,
    schema: &str,
    o: &Order,
    events: &[quanyi_core::EventEnvelope],
) {
    old_order(admin, schema, o).await;
    for l in o.lines() {
        admin
            .execute(
                &format!(
                    "INSERT INTO {schema}.order_lines (tenant, order_id, no, member, sku, quantity) \
                     VALUES ($1, $2, $3, $4, $5, $6)"
                ),
                &[
                    &o.tenant().as_str(),
                    o.id().as_uuid(),
                    &i32::from(l.no),
                    &o.member().as_str(),
                    l.sku.as_uuid(),
                    &i64::from(l.quantity),
                ],
            )
            .await
            .unwrap();
    }
    for e in events {
        admin
            .execute(
                &format!(
                    "INSERT INTO {schema}.events (id, tenant, aggregate_type, aggregate_id, doc) \
                     VALUES ($1, $2, $3, $4, $5)"
                ),
                &[
                    e.id.as_uuid(),
                    &e.tenant.as_str(),
                    &e.aggregate_type.to_string(),
                    &e.aggregate_id.to_string(),
                    &serde_json::to_string(e).unwrap(),
                ],
            )
            .await
            .unwrap();
    }
}

/// A schema at version 4 (order lines in a table of their own, reservations on the card row,
/// one event per row) with cards in every state, orders with their lines and events: after
/// `migrate`, cards, stock, held and sold cards, member limits and the event log read as
/// before, and reserving, lapsing, paying and releasing work on the old rows.
#[tokio::test]
async fn migration_5_keeps_cards_lines_and_events_of_an_older_schema() {
    migrate_v4_data(false).await;
}

/// The same data moved to version 5 by its migration: after `migrate` (migration 6 adds
/// `sale_claims`) everything reads and works as before, old orders read with the default
/// context, and placements take claims.
#[tokio::test]
async fn migration_6_keeps_the_data_of_version_5_and_takes_claims() {
    migrate_v4_data(true).await;
}

/// Writes orders, cards in every state, events and notices as version 4 stored them; with
/// `through_5`, applies migration 5 as that version did; then migrates to the current version
/// and checks.
async fn migrate_v4_data(through_5: bool) {
    let Some(url) = common::url() else { return };
    let schema = quanyi_testkit::unique_name("qt");
    let admin = common::admin(&url).await;
    schema_at(&admin, &schema, 4).await;
    let tenant = fixtures::tenant();
    let goods = card_goods(&tenant, PurchaseLimits::default());
    let sku = first_sku(&goods);
    old_goods(&admin, &schema, &goods).await;
    admin
        .execute(
            &format!("INSERT INTO {schema}.key_rings (tenant, version, doc) VALUES ($1, 1, $2)"),
            &[
                &tenant.as_str(),
                &serde_json::to_string(&fixtures::key_ring(&tenant)).unwrap(),
            ],
        )
        .await
        .unwrap();
    let buyer = member("regular");
    let (unpaid, unpaid_events) = order(&goods, &buyer, 1);
    let unpaid_events = envelopes(&unpaid, &unpaid_events);
    // Placed at a time finer than a microsecond (and holding no card): migration 8 keeps its
    // placement time to the microsecond, as the store does.
    let fine = t0() + Span::nanoseconds(123_456_789);
    let (finer, _) = fixtures::order_at(&goods, &member("finer"), 1, fine);
    let (placed, placed_events) = order(&goods, &buyer, 2);
    let applied = test_notice(&placed, "txn-v4", NoticeDisposition::Applied);
    let (paid, paid_events) = fixtures::paid_by(&placed, &applied);
    let mut placed_events = envelopes(&placed, &placed_events);
    placed_events.extend(paid_events);
    v4_order(&admin, &schema, &unpaid, &unpaid_events).await;
    v4_order(&admin, &schema, &paid, &placed_events).await;
    v4_order(&admin, &schema, &finer, &[]).await;
    old_notice(&admin, &schema, &applied).await;
    let old = cards(sku, 6);
    let gone = t0() + Span::seconds(3);
    let states = [
        (
            CardState::Sold {
                order: paid.id(),
                at: t0(),
            },
            Some(1),
        ),
        (
            CardState::Sold {
                order: paid.id(),
                at: t0(),
            },
            Some(2),
        ),
        (
            CardState::Reserved {
                order: unpaid.id(),
                until: unpaid.expires_at(),
            },
            Some(1),
        ),
        (CardState::Available, None),
        (CardState::Available, None),
        (CardState::Withdrawn { at: gone }, None),
    ];
    for (c, (state, pos)) in old.iter().zip(states) {
        v4_card(&admin, &schema, &tenant, c, state, pos).await;
    }
    admin
        .batch_execute(&format!(
            "INSERT INTO {schema}.free_cards (tenant, sku, id) \
             SELECT tenant, sku, id FROM {schema}.cards WHERE state = 'available'"
        ))
        .await
        .unwrap();

    if through_5 {
        admin
            .batch_execute(&format!(
                "BEGIN; SET LOCAL search_path TO {schema}; {} ; \
                 INSERT INTO schema_version (version, name) VALUES (5, 'lean_order_path'); COMMIT;",
                include_str!("../migrations/0005_lean_order_path.sql")
            ))
            .await
            .unwrap();
    }
    let store = PgStore::connect_with(common::options(&url, &schema))
        .await
        .unwrap();
    assert_eq!(
        store.schema_version().await.unwrap(),
        Some(if through_5 { 5 } else { 4 })
    );
    store.migrate().await.unwrap();
    assert_eq!(store.schema_version().await.unwrap(), Some(SCHEMA_VERSION));

    // Cards, orders and stock as they were.
    for (c, (state, _)) in old.iter().zip(states) {
        let stored = store.card(&tenant, c.id).await.unwrap().unwrap();
        assert_eq!(stored.state, state);
        assert_eq!(
            (stored.sealed.clone(), stored.key_id),
            (c.sealed.clone(), KeyId(1))
        );
    }
    assert_eq!(
        store.order(&tenant, paid.id()).await.unwrap(),
        Some(paid.clone())
    );
    let stock = |at| {
        let store = store.clone();
        let tenant = tenant.clone();
        async move {
            let s = store.stock(&tenant, sku, at).await.unwrap();
            (s.available, s.reserved, s.sold)
        }
    };
    assert_eq!(stock(t0()).await, (2, 1, 2));
    // The old orders' cards, in the order they took them.
    assert_eq!(
        store
            .order_cards(&tenant, paid.id())
            .await
            .unwrap()
            .iter()
            .map(|c| c.id)
            .collect::<Vec<_>>(),
        vec![old[0].id, old[1].id]
    );
    assert_eq!(
        store
            .held_cards(&tenant, unpaid.id())
            .await
            .unwrap()
            .iter()
            .map(|c| c.id)
            .collect::<Vec<_>>(),
        vec![old[2].id]
    );
    // The old lines count for member limits: 1 + 2 held, so 1 more of a limit of 4 fits and 2
    // do not.
    let limit = [MemberLimit {
        sku,
        limit: 4,
        release_on_refund: false,
    }];
    let (more, events) = order(&goods, &buyer, 2);
    let envs = envelopes(&more, &events);
    let r = store
        .place_order(
            NewOrder {
                order: &more,
                events: &envs,
                reservations: &[],
                member_limits: &limit,
                priced_from: &[],
                claims: &[],
                budgets: &[],
                pricing_version: None,
            },
            t0(),
        )
        .await;
    assert!(
        matches!(r, Err(Error::MemberLimitExceeded { already: 3, .. })),
        "{r:?}"
    );
    // The event log reads across old rows (one event each) and new ones (one per change).
    let before = store
        .aggregate_events(&tenant, "order", &paid.id().to_string())
        .await
        .unwrap();
    assert_eq!(before, placed_events);
    let (fresh, events) = order(&goods, &member("new"), 1);
    let fresh_envs = envelopes(&fresh, &events);
    store.insert_order(&fresh, &fresh_envs, &[]).await.unwrap();
    let after_old = store
        .events_after(Some(unpaid_events[0].id), 100)
        .await
        .unwrap();
    let mut expected: Vec<_> = unpaid_events[1..].to_vec();
    expected.extend(placed_events.iter().cloned());
    expected.extend(fresh_envs.iter().cloned());
    assert_eq!(
        after_old.iter().map(|e| e.id).collect::<Vec<_>>(),
        expected.iter().map(|e| e.id).collect::<Vec<_>>()
    );

    // The old reservation lapses and another order takes it; the old unpaid order then holds
    // nothing, and paying another order sells a card it reserved after the migration.
    let later = unpaid.expires_at() + Span::seconds(1);
    assert_eq!(stock(later).await, (3, 0, 2));
    let taker = id_of_new_order();
    let taken = store
        .reserve_cards(&tenant, sku, taker, 3, later + Span::minutes(15), later)
        .await
        .unwrap();
    assert!(taken.contains(&old[2].id));
    assert!(
        store
            .held_cards(&tenant, unpaid.id())
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .commit_cards(&tenant, sku, taker, 3, later)
            .await
            .unwrap()
            .len(),
        3
    );
    assert_eq!(stock(later).await, (0, 0, 5));
    assert_eq!(store.release_cards(&tenant, unpaid.id()).await.unwrap(), 0);

    // Migration 8 gave every old order its placement time: searches find them by it.
    quanyi_testkit::conformance::migrated_orders_are_found_by_placement(
        &store,
        &tenant,
        &finer,
        [&unpaid, &paid],
    )
    .await;
    let by_member = quanyi_storage::OrderQuery::new()
        .member(buyer.clone())
        .sku(sku);
    let mut at_t0 = vec![unpaid.id(), paid.id()];
    at_t0.sort_by(|a, b| b.cmp(a));
    let found: Vec<_> = store
        .search_orders(&tenant, &by_member, None, 10)
        .await
        .unwrap()
        .iter()
        .map(Order::id)
        .filter(|id| at_t0.contains(id))
        .collect();
    assert_eq!(found, at_t0);

    // The gap-free feed (migration 7) holds the old rows first, in write order, then the new.
    let mut old_ids: Vec<_> = unpaid_events.iter().map(|e| e.id).collect();
    old_ids.extend(placed_events.iter().map(|e| e.id));
    old_ids.extend(fresh_envs.iter().map(|e| e.id));
    // A transaction still running elsewhere on the server (another test's) holds the newest
    // rows back for a moment: read until they show.
    let mut feed = Vec::new();
    for _ in 0..100_000 {
        feed = store
            .read_feed(&tenant, quanyi_storage::FeedPosition::START, 1000)
            .await
            .unwrap();
        if feed.len() >= old_ids.len() {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(feed.iter().map(|e| e.event.id).collect::<Vec<_>>(), old_ids);
    assert!(feed.windows(2).all(|p| p[0].position < p[1].position));

    // Old orders read with the default context; a placement takes a claim beside them, and
    // the same claim again is refused with the stored one.
    assert_eq!(
        store
            .order(&tenant, paid.id())
            .await
            .unwrap()
            .unwrap()
            .context(),
        &quanyi_order::OrderContext::default()
    );
    let claim = quanyi_storage::Claim {
        scope: "placement".into(),
        key: "after-migration".into(),
        value: "first".into(),
    };
    let place = |claim: quanyi_storage::Claim| {
        let store = store.clone();
        let goods = goods.clone();
        async move {
            let (o, _) = order(&goods, &member("keyed"), 1);
            store
                .place_order(
                    NewOrder {
                        order: &o,
                        events: &[],
                        reservations: &[],
                        member_limits: &[],
                        priced_from: &[],
                        claims: &[claim],
                        budgets: &[],
                        pricing_version: None,
                    },
                    t0(),
                )
                .await
        }
    };
    place(claim.clone()).await.unwrap();
    let refused = place(quanyi_storage::Claim {
        value: "second".into(),
        ..claim.clone()
    })
    .await
    .unwrap_err();
    assert!(
        matches!(&refused, Error::Claimed { claim: stored } if **stored == claim),
        "{refused}"
    );
    assert_eq!(
        store
            .claim(&tenant, "placement", "after-migration")
            .await
            .unwrap(),
        Some(claim)
    );
    drop(store);
    common::drop_schema(url, schema).await;
}

fn id_of_new_order() -> OrderId {
    fixtures::id(OrderId::generate)
}

/// Migration 9: lines stored without their terms get them from their goods (a pack's lines
/// the pack's terms), and what each order counts toward member limits is written again, so a
/// pack's limit counts the packs of orders placed before.
#[tokio::test]
async fn migration_9_gives_old_lines_their_terms() {
    let Some(url) = common::url() else { return };
    let schema = quanyi_testkit::unique_name("qt");
    let admin = common::admin(&url).await;
    schema_at(&admin, &schema, 8).await;
    let tenant = fixtures::tenant();
    let before = quanyi_testkit::conformance::OrdersBeforeLineTerms::new(&tenant);
    for goods in &before.goods {
        old_goods(&admin, &schema, goods).await;
    }
    for o in &before.orders {
        // Version 8's columns: each line's SKU and quantity, nothing for the pack.
        let skus: Vec<uuid::Uuid> = o.lines().iter().map(|l| *l.sku.as_uuid()).collect();
        let qtys: Vec<i64> = o.lines().iter().map(|l| i64::from(l.quantity)).collect();
        admin
            .execute(
                &format!(
                    "INSERT INTO {schema}.orders (tenant, id, member, status, expires_at, \
                     version, doc, updated_at, line_skus, line_qtys, placed_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
                ),
                &[
                    &o.tenant().as_str(),
                    o.id().as_uuid(),
                    &o.member().as_str(),
                    &o.status().as_str(),
                    &o.expires_at().timestamp_micros(),
                    &i64::try_from(o.version()).unwrap(),
                    &fixtures::doc_before_line_terms(o),
                    &o.updated_at().timestamp_micros(),
                    &skus,
                    &qtys,
                    &o.created_at().timestamp_micros(),
                ],
            )
            .await
            .unwrap();
    }
    let store = PgStore::connect_with(common::options(&url, &schema))
        .await
        .unwrap();
    assert_eq!(store.schema_version().await.unwrap(), Some(8));
    store.migrate().await.unwrap();
    assert_eq!(store.schema_version().await.unwrap(), Some(SCHEMA_VERSION));
    before.check_after_migration(&store).await;
    common::drop_schema(url, schema).await;
}

/// Stores the key ring, goods, orders and cards of [`BeforeAfterSales`] in `schema` with the
/// columns of migrations 9 and 10 (migration 10 added none that these rows need).
///
/// [`BeforeAfterSales`]: quanyi_testkit::conformance::BeforeAfterSales
async fn store_before_after_sales(
    admin: &tokio_postgres::Client,
    schema: &str,
    before: &quanyi_testkit::conformance::BeforeAfterSales,
) {
    let tenant = before.goods.tenant();
    admin
        .execute(
            &format!("INSERT INTO {schema}.key_rings (tenant, version, doc) VALUES ($1, 1, $2)"),
            &[
                &tenant.as_str(),
                &serde_json::to_string(&fixtures::key_ring(tenant)).unwrap(),
            ],
        )
        .await
        .unwrap();
    old_goods(admin, schema, &before.goods).await;
    for o in &before.orders {
        let (skus, qtys): (Vec<uuid::Uuid>, Vec<i64>) = o
            .limit_units()
            .map(|(sku, qty)| (*sku.as_uuid(), i64::from(qty)))
            .unzip();
        admin
            .execute(
                &format!(
                    "INSERT INTO {schema}.orders (tenant, id, member, status, expires_at, \
                     version, doc, updated_at, line_skus, line_qtys, placed_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
                ),
                &[
                    &o.tenant().as_str(),
                    o.id().as_uuid(),
                    &o.member().as_str(),
                    &o.status().as_str(),
                    &o.expires_at().timestamp_micros(),
                    &i64::try_from(o.version()).unwrap(),
                    &serde_json::to_string(o).unwrap(),
                    &o.updated_at().timestamp_micros(),
                    &skus,
                    &qtys,
                    &o.created_at().timestamp_micros(),
                ],
            )
            .await
            .unwrap();
    }
    for (c, state) in &before.cards {
        let micros = |at: chrono::DateTime<chrono::Utc>| at.timestamp_micros();
        let (name, order, until, sold_at, withdrawn_at) = match *state {
            CardState::Available => ("available", None, None, None, None),
            CardState::Reserved { order, until } => {
                ("reserved", Some(order), Some(micros(until)), None, None)
            }
            CardState::Sold { order, at } => ("sold", Some(order), None, Some(micros(at)), None),
            CardState::Withdrawn { at } => ("withdrawn", None, None, None, Some(micros(at))),
        };
        admin
            .execute(
                &format!(
                    "INSERT INTO {schema}.cards (id, tenant, sku, batch, blind_index, code, \
                     secret, key_id, state, order_id, reserved_until, sold_at, imported_at, \
                     index_scheme, withdrawn_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, 1, $8, $9, $10, $11, $12, 2, $13)"
                ),
                &[
                    c.id.as_uuid(),
                    &tenant.as_str(),
                    c.sku.as_uuid(),
                    c.batch.as_uuid(),
                    &c.blind_index.as_bytes().as_slice(),
                    &c.sealed.code.as_bytes(),
                    &c.sealed.secret.as_ref().map(SealedValue::as_bytes),
                    &name,
                    &order.map(|o| *o.as_uuid()),
                    &until,
                    &sold_at,
                    &micros(t0()),
                    &withdrawn_at,
                ],
            )
            .await
            .unwrap();
        if let Some(order) = order {
            admin
                .execute(
                    &format!(
                        "INSERT INTO {schema}.order_cards (order_id, pos, card_id) VALUES ($1, 1, $2)"
                    ),
                    &[order.as_uuid(), c.id.as_uuid()],
                )
                .await
                .unwrap();
        }
        if let Some(until) = until {
            admin
                .execute(
                    &format!(
                        "INSERT INTO {schema}.held_cards (tenant, sku, until, id) VALUES ($1, $2, $3, $4)"
                    ),
                    &[&tenant.as_str(), c.sku.as_uuid(), &until, c.id.as_uuid()],
                )
                .await
                .unwrap();
        }
    }
    admin
        .batch_execute(&format!(
            "INSERT INTO {schema}.free_cards (tenant, sku, id) \
             SELECT tenant, sku, id FROM {schema}.cards WHERE state = 'available'"
        ))
        .await
        .unwrap();
}

/// Migration 10: cards in every state keep their state and are neither revealed nor voided,
/// orders in every state read back unqueued, and reveals and refunds work on what was stored.
#[tokio::test]
async fn migration_10_takes_reveals_and_refunds() {
    let Some(url) = common::url() else { return };
    let schema = quanyi_testkit::unique_name("qt");
    let admin = common::admin(&url).await;
    schema_at(&admin, &schema, 9).await;
    let tenant = fixtures::tenant();
    let before = quanyi_testkit::conformance::BeforeAfterSales::new(&tenant);
    store_before_after_sales(&admin, &schema, &before).await;
    let store = PgStore::connect_with(common::options(&url, &schema))
        .await
        .unwrap();
    assert_eq!(store.schema_version().await.unwrap(), Some(9));
    store.migrate().await.unwrap();
    assert_eq!(store.schema_version().await.unwrap(), Some(SCHEMA_VERSION));
    before.check_after_migration(&store).await;
    common::drop_schema(url, schema).await;
}

/// Migration 11: an unpaid order that took a budget use before budgets had amounts (its
/// `order_budgets` row has no amount, its budget counts in an `integer`) gives back exactly
/// that use when it closes unpaid, and a delivered order keeps its use; placements take
/// amounts; pricing rules and coupons are stored and read; a placement priced from rules that
/// changed is refused.
#[tokio::test]
async fn migration_11_takes_pricing_and_budgets_of_amounts() {
    let Some(url) = common::url() else { return };
    let schema = quanyi_testkit::unique_name("qt");
    let admin = common::admin(&url).await;
    schema_at(&admin, &schema, 10).await;
    let tenant = fixtures::tenant();
    let before = quanyi_testkit::conformance::BeforeAfterSales::new(&tenant);
    store_before_after_sales(&admin, &schema, &before).await;
    // Migration 10's budget rows: one use each, of the unpaid and a delivered order.
    admin
        .execute(
            &format!(
                "INSERT INTO {schema}.sale_budgets (tenant, scope, key, used, lim) \
                 VALUES ($1, 'coupon', 'spring', 2, 5)"
            ),
            &[&tenant.as_str()],
        )
        .await
        .unwrap();
    for order in &before.orders[..2] {
        admin
            .execute(
                &format!(
                    "INSERT INTO {schema}.order_budgets (tenant, order_id, scope, key) \
                     VALUES ($1, $2, 'coupon', 'spring')"
                ),
                &[&tenant.as_str(), order.id().as_uuid()],
            )
            .await
            .unwrap();
    }
    let store = PgStore::connect_with(common::options(&url, &schema))
        .await
        .unwrap();
    assert_eq!(store.schema_version().await.unwrap(), Some(10));
    store.migrate().await.unwrap();
    assert_eq!(store.schema_version().await.unwrap(), Some(SCHEMA_VERSION));
    quanyi_testkit::conformance::check_pricing_after_migration(&store, &before).await;
    common::drop_schema(url, schema).await;
}
