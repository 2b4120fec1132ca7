//! What only the SQLite adapter promises: migrations, busy answers, corrupt data, exact instants.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Duration as Span, TimeZone, Utc};
use quanyi_core::{ErrorKind, OrderId};
use quanyi_goods::PurchaseLimits;
use quanyi_storage::{
    CardState, GoodsStore, JobStore, KeyRingStore, OrderStore, Store, VaultStore,
};
use quanyi_storage_sqlite::{SCHEMA_VERSION, SqliteStore};
use quanyi_testkit::fixtures;

/// A database file removed when the test ends, pass or fail.
struct TempDb(PathBuf);

impl TempDb {
    fn new() -> TempDb {
        TempDb(common::fresh_path())
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn raw(&self) -> rusqlite::Connection {
        let conn = rusqlite::Connection::open(&self.0).unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        conn
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        common::remove_files(&self.0);
    }
}

fn t0() -> DateTime<Utc> {
    fixtures::t0()
}

fn versions(conn: &rusqlite::Connection) -> Vec<(i64, i64)> {
    let mut stmt = conn
        .prepare("SELECT version, applied_at FROM schema_version ORDER BY version")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

#[tokio::test]
async fn migrations_are_recorded_once_and_reopen_applies_nothing() {
    let db = TempDb::new();
    let store = SqliteStore::open(db.path()).await.unwrap();
    let first = versions(&db.raw());
    assert_eq!(
        first.iter().map(|v| v.0).collect::<Vec<_>>(),
        (1..=i64::from(SCHEMA_VERSION)).collect::<Vec<_>>()
    );
    assert!(first.iter().all(|(_, at)| *at > 0));
    drop(store);
    let again = SqliteStore::open(db.path()).await.unwrap();
    assert_eq!(versions(&db.raw()), first);
    // Two stores opening one new file at once apply each migration once.
    let other = TempDb::new();
    let (a, b) = tokio::join!(
        SqliteStore::open(other.path()),
        SqliteStore::open(other.path())
    );
    a.unwrap();
    b.unwrap();
    assert_eq!(versions(&other.raw()).len(), first.len());
    drop(again);
}

#[tokio::test]
async fn a_newer_schema_is_refused() {
    let db = TempDb::new();
    drop(SqliteStore::open(db.path()).await.unwrap());
    db.raw()
        .execute(
            "INSERT INTO schema_version (version, applied_at) VALUES (?1, 0)",
            [i64::from(SCHEMA_VERSION) + 1],
        )
        .unwrap();
    let err = SqliteStore::open(db.path()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
    assert!(err.to_string().contains("newer"), "{err}");
}

#[tokio::test]
async fn a_locked_database_answers_unavailable_and_changes_nothing() {
    let db = TempDb::new();
    let store = SqliteStore::builder(db.path())
        .busy_timeout(Duration::from_millis(200))
        .open()
        .await
        .unwrap();
    let tenant = fixtures::tenant();
    let goods = fixtures::card_goods(&tenant, PurchaseLimits::default());
    let job = fixtures::job(&tenant, "locked", t0());

    let raw = db.raw();
    raw.execute_batch("BEGIN IMMEDIATE").unwrap();
    let started = std::time::Instant::now();
    let err = store
        .insert_goods(&goods, quanyi_storage::Trail::NONE)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(
        std::error::Error::source(&err).is_some(),
        "the driver error is kept"
    );
    let err = store.enqueue(&job, t0()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "bounded by the busy timeout"
    );
    // Readers still read in WAL mode while the writer holds the lock.
    assert!(store.goods(&tenant, goods.id()).await.unwrap().is_none());
    raw.execute_batch("ROLLBACK").unwrap();

    assert!(
        store.job(job.id).await.unwrap().is_none(),
        "nothing was written"
    );
    store
        .insert_goods(&goods, quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    assert_eq!(store.goods(&tenant, goods.id()).await.unwrap(), Some(goods));
}

/// Breaks one stored value with `sql` and expects `read` to answer `Corrupt`.
async fn check_corrupt<F, Fut, T>(sql: &str, read: F)
where
    F: FnOnce(Arc<SqliteStore>) -> Fut,
    Fut: std::future::Future<Output = quanyi_storage::Result<T>>,
    T: std::fmt::Debug,
{
    let db = TempDb::new();
    let store = Arc::new(SqliteStore::open(db.path()).await.unwrap());
    let tenant = quanyi_core::TenantId::new("t-corrupt").unwrap();
    store
        .insert_key_ring(&fixtures::key_ring(&tenant))
        .await
        .unwrap();
    let goods = fixtures::card_goods(&tenant, PurchaseLimits::default());
    store
        .insert_goods(&goods, quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    let (order, _) = fixtures::order(&goods, &fixtures::member("mo"), 1);
    store.insert_order(&order, &[], &[]).await.unwrap();
    store
        .insert_cards(
            &tenant,
            &fixtures::cards(fixtures::first_sku(&goods), 1),
            t0(),
            quanyi_storage::Trail::NONE,
        )
        .await
        .unwrap();
    store
        .enqueue(&fixtures::job(&tenant, "corrupt", t0()), t0())
        .await
        .unwrap();
    db.raw().execute_batch(sql).unwrap();
    match read(store).await {
        Err(quanyi_storage::Error::Corrupt(message)) => assert!(!message.is_empty()),
        other => panic!("{sql}: expected Corrupt, got {other:?}"),
    }
}

#[tokio::test]
async fn stored_data_that_does_not_decode_is_corrupt() {
    let tenant = || quanyi_core::TenantId::new("t-corrupt").unwrap();
    check_corrupt("UPDATE goods SET doc = '{not json'", |s| async move {
        s.list_goods(&tenant()).await
    })
    .await;
    check_corrupt("UPDATE orders SET doc = '{\"id\": 1}'", |s| async move {
        s.member_orders(&tenant(), &fixtures::member("mo"), 10)
            .await
    })
    .await;
    check_corrupt(
        "PRAGMA ignore_check_constraints = ON; UPDATE cards SET state = 'lost'",
        |s| async move {
            s.cards_sealed_with(&tenant(), quanyi_vault::KeyId(1), 10)
                .await
        },
    )
    .await;
    check_corrupt("UPDATE cards SET index_scheme = 9", |s| async move {
        s.cards_sealed_with(&tenant(), quanyi_vault::KeyId(1), 10)
            .await
    })
    .await;
    check_corrupt("UPDATE cards SET id = x'00'", |s| async move {
        s.cards_sealed_with(&tenant(), quanyi_vault::KeyId(1), 10)
            .await
    })
    .await;
    check_corrupt("UPDATE jobs SET payload = 'nope'", |s| async move {
        s.claim_jobs("w", &["deliver_order"], t0(), Span::seconds(30), 10)
            .await
    })
    .await;
}

#[tokio::test]
async fn instants_read_back_to_the_nanosecond() {
    let db = TempDb::new();
    let store = SqliteStore::open(db.path()).await.unwrap();
    let tenant = fixtures::vault_tenant(&store).await;
    let sku = fixtures::first_sku(&fixtures::card_goods(&tenant, PurchaseLimits::default()));
    store
        .insert_cards(
            &tenant,
            &fixtures::cards(sku, 1),
            t0(),
            quanyi_storage::Trail::NONE,
        )
        .await
        .unwrap();
    let until = Utc.timestamp_opt(1_800_000_000, 123_456_789).unwrap();
    let order = fixtures::id(OrderId::generate);
    let held = store
        .reserve_cards(&tenant, sku, order, 1, until, t0())
        .await
        .unwrap();
    let card = store.card(&tenant, held[0]).await.unwrap().unwrap();
    assert_eq!(card.state, CardState::Reserved { order, until });
    let far = Utc.with_ymd_and_hms(2300, 1, 1, 0, 0, 0).unwrap();
    let err = store
        .reserve_cards(&tenant, sku, fixtures::id(OrderId::generate), 1, far, t0())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid);
}

#[tokio::test]
async fn debug_shows_settings_not_data() {
    let db = TempDb::new();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(db.path()).await.unwrap());
    let shown = format!("{:?}", SqliteStore::open(db.path()).await.unwrap());
    assert!(shown.starts_with("SqliteStore {"), "{shown}");
    assert!(shown.contains("busy_timeout"), "{shown}");
    drop(store);
}
