//! Each schema change from the version before it, with data in every state: a database of the
//! earlier version is written with SQL, opened with the store (which migrates it), and read and
//! changed through the ports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, Utc};
use quanyi_core::{BatchId, CardId, Currency, Money, OrderId, TenantId};
use quanyi_core::{ErrorKind, EventEnvelope};
use quanyi_goods::{Goods, PurchaseLimits};
use quanyi_order::{Order, OrderStatus};
use quanyi_storage::{
    CONFLICTING_REPEAT, CardState, EventStore, IndexChange, KeyRingStore, MemberLimit, NewOrder,
    NoticeDisposition, OrderChange, OrderStore, PaymentNotice, PaymentStore, PaymentWrite,
    Reindexed, Reservation, StockCount, StoredCard, VaultStore,
};
use quanyi_storage_sqlite::{SCHEMA_VERSION, SqliteStore};
use quanyi_testkit::fixtures::{self, t0};
use quanyi_vault::{BlindIndex, IndexScheme, KeyId, KeyRing, SealedCard, SealedValue};
use rusqlite::{Connection, params};

/// The migrations of the versions before 3, as that build applied them.
const BEFORE_V3: [&str; 2] = [
    include_str!("../migrations/0001_init.sql"),
    include_str!("../migrations/0002_orders_updated_at.sql"),
];

/// The migrations of the versions before 4.
const BEFORE_V4: [&str; 3] = [
    BEFORE_V3[0],
    BEFORE_V3[1],
    include_str!("../migrations/0003_withdrawn_cards_index_schemes_notice_repeats.sql"),
];

/// The migrations of the versions before 8 (lines without their terms).
const BEFORE_V8: [&str; 7] = [
    BEFORE_V4[0],
    BEFORE_V4[1],
    BEFORE_V4[2],
    include_str!("../migrations/0004_lean_order_path.sql"),
    include_str!("../migrations/0005_sale_claims.sql"),
    include_str!("../migrations/0006_event_consumers.sql"),
    include_str!("../migrations/0007_order_search.sql"),
];

/// The indexes on `cards` of the current schema, by name.
const CARD_INDEXES: [&str; 7] = [
    "cards_by_key",
    "cards_by_order",
    "cards_by_sku",
    "cards_deadlines",
    "cards_free",
    "cards_to_reindex",
    "cards_withdrawn",
];

/// A database file removed when the test ends, pass or fail.
struct TempDb(PathBuf);

impl TempDb {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        common::remove_files(&self.0);
    }
}

fn nanos(t: DateTime<Utc>) -> i64 {
    t.timestamp_nanos_opt().unwrap()
}

/// A database at schema version 2, as migrations 1 and 2 left it.
fn version_2(path: &Path) -> Connection {
    at_version(path, &BEFORE_V3)
}

/// A database at the version of the last of `migrations`, as they left it.
fn at_version(path: &Path, migrations: &[&str]) -> Connection {
    let conn = Connection::open(path).unwrap();
    conn.execute_batch(
        "CREATE TABLE schema_version (
             version    INTEGER NOT NULL PRIMARY KEY,
             applied_at INTEGER NOT NULL
         )",
    )
    .unwrap();
    for (n, sql) in (1i64..).zip(migrations) {
        conn.execute_batch(sql).unwrap();
        conn.execute(
            "INSERT INTO schema_version (version, applied_at) VALUES (?1, 1)",
            [n],
        )
        .unwrap();
    }
    conn
}

/// A key ring as version 2 stored it: before index schemes, so without `oldest_index_scheme`.
fn insert_v2_ring(conn: &Connection, tenant: &TenantId) {
    let mut doc = serde_json::to_value(fixtures::key_ring(tenant)).unwrap();
    doc.as_object_mut()
        .unwrap()
        .remove("oldest_index_scheme")
        .unwrap();
    conn.execute(
        "INSERT INTO key_rings (tenant, version, doc) VALUES (?1, 1, ?2)",
        params![tenant.as_str(), doc.to_string()],
    )
    .unwrap();
}

fn insert_v2_goods(conn: &Connection, goods: &Goods) {
    conn.execute(
        "INSERT INTO goods (tenant, id, version, doc) VALUES (?1, ?2, ?3, ?4)",
        params![
            goods.tenant().as_str(),
            goods.id().as_bytes(),
            i64::try_from(goods.version()).unwrap(),
            serde_json::to_string(goods).unwrap()
        ],
    )
    .unwrap();
    for sku in goods.skus() {
        conn.execute(
            "INSERT INTO skus (tenant, sku, goods) VALUES (?1, ?2, ?3)",
            params![
                goods.tenant().as_str(),
                sku.id.as_bytes(),
                goods.id().as_bytes()
            ],
        )
        .unwrap();
    }
}

fn insert_v2_order(conn: &Connection, order: &Order) {
    conn.execute(
        "INSERT INTO orders (tenant, id, member, status, expires_at, version, doc, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            order.tenant().as_str(),
            order.id().as_bytes(),
            order.member().as_str(),
            order.status().as_str(),
            nanos(order.expires_at()),
            i64::try_from(order.version()).unwrap(),
            fixtures::doc_before_line_terms(order),
            nanos(order.updated_at())
        ],
    )
    .unwrap();
    for (n, line) in (0i64..).zip(order.lines()) {
        conn.execute(
            "INSERT INTO order_lines (tenant, member, sku, order_id, line, quantity)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                order.tenant().as_str(),
                order.member().as_str(),
                line.sku.as_bytes(),
                order.id().as_bytes(),
                n,
                line.quantity
            ],
        )
        .unwrap();
    }
}

/// Stores a card with version 2's columns; `hold_seq` is its place in its order's list.
fn insert_v2_card(conn: &Connection, card: &StoredCard, hold_seq: Option<i64>) {
    let (state, order, until, sold_at) = match card.state {
        CardState::Available => ("available", None, None, None),
        CardState::Reserved { order, until } => ("reserved", Some(order), Some(nanos(until)), None),
        CardState::Sold { order, at } => ("sold", Some(order), None, Some(nanos(at))),
        CardState::Withdrawn { .. } => panic!("version 2 has no withdrawn cards"),
    };
    conn.execute(
        "INSERT INTO cards (id, tenant, sku, batch, blind_index, code, secret, key_id, state,
                            order_id, until, sold_at, hold_seq, imported_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        params![
            card.id.as_bytes(),
            card.tenant.as_str(),
            card.sku.as_bytes(),
            card.batch.as_bytes(),
            card.blind_index.as_bytes(),
            card.sealed.code.as_bytes(),
            card.sealed.secret.as_ref().map(SealedValue::as_bytes),
            card.key_id.0,
            state,
            order.map(|o| o.as_bytes().to_vec()),
            until,
            sold_at,
            hold_seq,
            nanos(card.imported_at)
        ],
    )
    .unwrap();
}

fn insert_v2_notice(conn: &Connection, notice: &PaymentNotice) {
    let reconcile = !matches!(notice.disposition, NoticeDisposition::Applied);
    conn.execute(
        "INSERT INTO payment_notices (tenant, provider, transaction_id, reconcile, doc)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            notice.tenant.as_str(),
            &*notice.provider,
            &*notice.transaction_id,
            reconcile,
            serde_json::to_string(notice).unwrap()
        ],
    )
    .unwrap();
}

fn notice(tenant: &TenantId, order: OrderId, txn: &str, amount: Money) -> PaymentNotice {
    PaymentNotice {
        tenant: tenant.clone(),
        provider: "testpay".into(),
        transaction_id: txn.into(),
        order,
        amount,
        received_at: t0(),
        disposition: NoticeDisposition::Applied,
    }
}

/// A card as version 2 held it: every index was of the Legacy scheme.
fn v2_card(tenant: &TenantId, sku: quanyi_core::SkuId, byte: u8, state: CardState) -> StoredCard {
    StoredCard {
        id: fixtures::id(CardId::generate),
        tenant: tenant.clone(),
        sku,
        batch: fixtures::id(BatchId::generate),
        blind_index: BlindIndex::from_bytes([byte; 32]),
        index_scheme: IndexScheme::Legacy,
        sealed: SealedCard {
            code: SealedValue::from_bytes(vec![byte; 40]),
            secret: (byte % 2 == 0).then(|| SealedValue::from_bytes(vec![byte ^ 0xff; 36])),
        },
        key_id: KeyId(1),
        state,
        imported_at: t0() - Duration::days(1),
        revealed_at: None,
        voided_at: None,
    }
}

fn index_names(conn: &Connection, table: &str) -> Vec<String> {
    let mut stmt = conn
        .prepare(
            "SELECT name FROM sqlite_master
             WHERE type = 'index' AND tbl_name = ?1 AND sql IS NOT NULL ORDER BY name",
        )
        .unwrap();
    stmt.query_map([table], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

/// Version 2 to 3: every card keeps its state, data and holder and is of the Legacy scheme;
/// notices, orders, goods and the ring read as before; withdrawal, re-indexing, legacy
/// duplicates, closing an unpaid order, conflicting repeats and destroying a key work on the
/// old data.
#[tokio::test]
async fn version_2_databases_migrate_with_every_card_and_notice() {
    let db = TempDb(common::fresh_path());
    let tenant = fixtures::tenant();
    let goods = fixtures::card_goods(&tenant, PurchaseLimits::default());
    let sku = fixtures::first_sku(&goods);
    let (unpaid, _) = fixtures::order(&goods, &fixtures::member("ann"), 1);
    let (placed, _) = fixtures::order(&goods, &fixtures::member("bob"), 2);
    let paid_notice = notice(&tenant, placed.id(), "txn-paid", placed.total());
    let (paid, _) = fixtures::paid_by(&placed, &paid_notice);
    let mut unknown = notice(
        &tenant,
        fixtures::id(OrderId::generate),
        "txn-unknown",
        Money::from_minor(5, Currency::CNY),
    );
    unknown.disposition = NoticeDisposition::Reconcile {
        reason: "unknown_order".into(),
    };

    // (card, its place in its order's list): a card in every state version 2 had.
    let sold_at = t0() + Duration::minutes(1);
    let cards = [
        (v2_card(&tenant, sku, 1, CardState::Available), None),
        (v2_card(&tenant, sku, 2, CardState::Available), None),
        (
            v2_card(
                &tenant,
                sku,
                3,
                CardState::Reserved {
                    order: unpaid.id(),
                    until: unpaid.expires_at(),
                },
            ),
            Some(1),
        ),
        (
            v2_card(
                &tenant,
                sku,
                4,
                CardState::Sold {
                    order: paid.id(),
                    at: sold_at,
                },
            ),
            Some(2),
        ),
        (
            v2_card(
                &tenant,
                sku,
                5,
                CardState::Sold {
                    order: paid.id(),
                    at: sold_at,
                },
            ),
            Some(1),
        ),
    ];
    {
        let conn = version_2(db.path());
        insert_v2_ring(&conn, &tenant);
        insert_v2_goods(&conn, &goods);
        insert_v2_order(&conn, &unpaid);
        insert_v2_order(&conn, &paid);
        for (card, hold_seq) in &cards {
            insert_v2_card(&conn, card, *hold_seq);
        }
        insert_v2_notice(&conn, &unknown);
        insert_v2_notice(&conn, &paid_notice);
    }

    let store = SqliteStore::open(db.path()).await.unwrap();
    {
        let conn = Connection::open(db.path()).unwrap();
        let versions: Vec<i64> = conn
            .prepare("SELECT version FROM schema_version ORDER BY version")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(
            versions,
            (1..=i64::from(SCHEMA_VERSION)).collect::<Vec<_>>()
        );
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
        // The indexes of the current schema (version 4 replaced `cards_pool`).
        assert_eq!(index_names(&conn, "cards"), CARD_INDEXES);
        assert_eq!(
            index_names(&conn, "payment_notices"),
            ["payment_notices_to_reconcile"]
        );
    }

    // Everything reads back as it was written.
    for (card, _) in &cards {
        assert_eq!(
            store.card(&tenant, card.id).await.unwrap().as_ref(),
            Some(card)
        );
    }
    assert_eq!(
        store.stock(&tenant, sku, t0()).await.unwrap(),
        StockCount {
            available: 2,
            reserved: 1,
            sold: 2
        }
    );
    let held = store.held_cards(&tenant, unpaid.id()).await.unwrap();
    assert_eq!(
        held.iter().map(|c| (c.id, c.state)).collect::<Vec<_>>(),
        [(cards[2].0.id, cards[2].0.state)]
    );
    let sold = store.order_cards(&tenant, paid.id()).await.unwrap();
    assert_eq!(sold, [cards[4].0.clone(), cards[3].0.clone()], "hold order");
    assert_eq!(
        store.order(&tenant, unpaid.id()).await.unwrap().as_ref(),
        Some(&unpaid)
    );
    assert_eq!(
        store.order(&tenant, paid.id()).await.unwrap().as_ref(),
        Some(&paid)
    );
    assert_eq!(
        quanyi_storage::GoodsStore::goods(&store, &tenant, goods.id())
            .await
            .unwrap(),
        Some(goods.clone())
    );
    assert_eq!(
        store
            .payment_notice(&tenant, "testpay", "txn-paid")
            .await
            .unwrap(),
        Some(paid_notice.clone())
    );
    assert_eq!(
        store.notices_to_reconcile(&tenant, 10).await.unwrap(),
        [unknown.clone()]
    );
    let (ring, ring_version) = store.key_ring(&tenant).await.unwrap().unwrap();
    assert_eq!(ring.oldest_index_scheme, IndexScheme::Legacy);
    assert_eq!(ring.active, KeyId(1));

    // Every old card is to be re-indexed, in card order.
    let mut by_id: Vec<CardId> = cards.iter().map(|(c, _)| c.id).collect();
    by_id.sort();
    let todo = store
        .cards_to_reindex(&tenant, IndexScheme::CURRENT, 10)
        .await
        .unwrap();
    assert_eq!(todo.iter().map(|c| c.id).collect::<Vec<_>>(), by_id);

    // An import finds old cards by their legacy index.
    let mut variant = fixtures::card_with_index(sku, fixtures::id(BatchId::generate), [41; 32]);
    variant.legacy_index = Some(cards[3].0.blind_index);
    let fresh = fixtures::card_with_index(sku, fixtures::id(BatchId::generate), [42; 32]);
    let out = store
        .insert_cards(
            &tenant,
            &[variant, fresh.clone()],
            t0(),
            quanyi_storage::Trail::NONE,
        )
        .await
        .unwrap();
    assert_eq!((out.inserted, out.duplicates), (vec![fresh.id], vec![0]));

    // Re-indexing moves an old card; withdrawal takes one out of sale.
    let answers = store
        .reindex_cards(
            &tenant,
            &[IndexChange {
                card: cards[0].0.id,
                from: cards[0].0.blind_index,
                to: BlindIndex::from_bytes([51; 32]),
                scheme: IndexScheme::CURRENT,
            }],
        )
        .await
        .unwrap();
    assert_eq!(answers, [Reindexed::Moved]);
    let later = t0() + Duration::minutes(2);
    assert_eq!(
        store
            .withdraw_cards(&tenant, &[cards[1].0.id, cards[4].0.id], later)
            .await
            .unwrap(),
        [cards[1].0.id]
    );

    // Closing the old unpaid order releases its old reservation.
    let mut expired = unpaid.clone();
    let events = expired.expire(unpaid.expires_at()).unwrap();
    let envs = fixtures::envelopes(&expired, &events);
    let released = store
        .close_unpaid_order(OrderChange {
            order: &expired,
            expected_version: unpaid.version(),
            events: &envs,
        })
        .await
        .unwrap();
    assert_eq!(released, 1);
    assert_eq!(
        store
            .order(&tenant, unpaid.id())
            .await
            .unwrap()
            .unwrap()
            .status(),
        OrderStatus::Expired
    );
    assert_eq!(
        store.stock(&tenant, sku, t0()).await.unwrap(),
        StockCount {
            available: 3,
            reserved: 0,
            sold: 2
        }
    );

    // A conflicting repeat of an old notice, and a new notice to reconcile, list after the old
    // one in the order they came.
    let mut repeat = paid_notice.clone();
    repeat.amount = Money::from_minor(1, Currency::CNY);
    assert!(store.flag_conflicting_notice(&repeat).await.unwrap());
    let mut late = notice(
        &tenant,
        fixtures::id(OrderId::generate),
        "txn-late",
        Money::from_minor(7, Currency::CNY),
    );
    late.disposition = NoticeDisposition::Reconcile {
        reason: "unknown_order".into(),
    };
    store
        .record_payment(
            PaymentWrite {
                notice: &late,
                change: None,
                sell: &[],
                job: None,
            },
            t0(),
        )
        .await
        .unwrap();
    repeat.disposition = NoticeDisposition::Reconcile {
        reason: CONFLICTING_REPEAT.into(),
    };
    assert_eq!(
        store.notices_to_reconcile(&tenant, 10).await.unwrap(),
        [unknown, repeat, late]
    );

    // Destroying k1 shreds every old card and withdraws the unsold ones.
    let mut unwrapped = KeyRing::unwrap(&fixtures::root_key(), &ring).unwrap();
    unwrapped
        .rotate(&fixtures::root_key(), t0(), &mut rand::thread_rng())
        .unwrap();
    unwrapped.destroy(KeyId(1)).unwrap();
    let outcome = store
        .destroy_key(
            &unwrapped.to_wrapped(),
            ring_version,
            KeyId(1),
            later,
            quanyi_storage::Trail::NONE,
        )
        .await
        .unwrap();
    // The five old cards and the new one; of those, three are unsold: the re-indexed one, the
    // released one and the new one (the other available card was withdrawn before).
    assert_eq!((outcome.shredded, outcome.withdrawn), (6, 3));
    for (card, _) in &cards {
        let now = store.card(&tenant, card.id).await.unwrap().unwrap();
        assert!(now.sealed.code.as_bytes().is_empty());
        assert!(now.sealed.secret.is_none());
        match card.state {
            CardState::Sold { .. } => assert_eq!(now.state, card.state),
            _ => assert_eq!(now.state, CardState::Withdrawn { at: later }),
        }
    }
    assert_eq!(
        store.stock(&tenant, sku, t0()).await.unwrap(),
        StockCount {
            available: 0,
            reserved: 0,
            sold: 2
        }
    );
}

/// Stores a card with version 3's columns; `hold_seq` is its place in its order's list.
fn insert_v3_card(conn: &Connection, card: &StoredCard, hold_seq: Option<i64>) {
    let (state, order, until, sold_at, withdrawn_at) = match card.state {
        CardState::Available => ("available", None, None, None, None),
        CardState::Reserved { order, until } => {
            ("reserved", Some(order), Some(nanos(until)), None, None)
        }
        CardState::Sold { order, at } => ("sold", Some(order), None, Some(nanos(at)), None),
        CardState::Withdrawn { at } => ("withdrawn", None, None, None, Some(nanos(at))),
    };
    conn.execute(
        "INSERT INTO cards (id, tenant, sku, batch, blind_index, index_scheme, code, secret,
                            key_id, state, order_id, until, sold_at, withdrawn_at, hold_seq,
                            imported_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
        params![
            card.id.as_bytes(),
            card.tenant.as_str(),
            card.sku.as_bytes(),
            card.batch.as_bytes(),
            card.blind_index.as_bytes(),
            card.index_scheme.as_u8(),
            card.sealed.code.as_bytes(),
            card.sealed.secret.as_ref().map(SealedValue::as_bytes),
            card.key_id.0,
            state,
            order.map(|o| o.as_bytes().to_vec()),
            until,
            sold_at,
            withdrawn_at,
            hold_seq,
            nanos(card.imported_at)
        ],
    )
    .unwrap();
}

/// Stores events as version 3 did: one row per event.
fn insert_v3_events(conn: &Connection, events: &[EventEnvelope]) {
    for e in events {
        conn.execute(
            "INSERT INTO events (id, tenant, aggregate_type, aggregate_id, doc)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                e.id.as_bytes(),
                e.tenant.as_str(),
                &*e.aggregate_type,
                &*e.aggregate_id,
                serde_json::to_string(e).unwrap()
            ],
        )
        .unwrap();
    }
}

/// Stores a notice as version 3 did, with its claim (`''` for a transaction's first notice).
fn insert_v3_notice(conn: &Connection, notice: &PaymentNotice, claim: &str) {
    let reconcile = !matches!(notice.disposition, NoticeDisposition::Applied);
    conn.execute(
        "INSERT INTO payment_notices (tenant, provider, transaction_id, claim, reconcile, doc)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            notice.tenant.as_str(),
            &*notice.provider,
            &*notice.transaction_id,
            claim,
            reconcile,
            serde_json::to_string(notice).unwrap()
        ],
    )
    .unwrap();
}

/// A card as version 3 held it, of the current index scheme.
fn v3_card(tenant: &TenantId, sku: quanyi_core::SkuId, byte: u8, state: CardState) -> StoredCard {
    StoredCard {
        index_scheme: IndexScheme::CURRENT,
        ..v2_card(tenant, sku, byte, state)
    }
}

/// Version 3 to 4: order lines move into the order's row (member limits still count them,
/// and still leave out void orders), events of one row each read as before and the feed goes
/// on from any of them into the rows of the new form, notices to reconcile keep their order,
/// and cards in every state keep their state, holder and hold order.
#[tokio::test]
async fn version_3_databases_migrate_with_lines_events_cards_and_notices() {
    migrate_orders_events_cards_and_notices(3).await;
}

/// Version 4 to 5 adds `sale_claims`: the same data, written at version 3 and moved to version 4
/// by its migration, reads back at version 5, and placements take claims beside it.
#[tokio::test]
async fn version_4_databases_migrate_with_orders_events_and_take_claims() {
    migrate_orders_events_cards_and_notices(4).await;
}

/// Writes orders (unpaid, paid, void), cards in every state, events and notices as version 3
/// stored them, brings the file to `version` (3 or 4) with the migrations of that time, then
/// opens it with the current store and checks everything reads back and keeps working.
async fn migrate_orders_events_cards_and_notices(version: i64) {
    let db = TempDb(common::fresh_path());
    let tenant = fixtures::tenant();
    let goods = fixtures::card_goods(&tenant, PurchaseLimits::default());
    let sku = fixtures::first_sku(&goods);
    let bob = fixtures::member("bob");

    // An unpaid order (one card reserved), a paid one (two cards sold), a void one.
    let (unpaid, unpaid_events) = fixtures::order(&goods, &fixtures::member("ann"), 1);
    let unpaid_envs = fixtures::envelopes(&unpaid, &unpaid_events);
    let (placed, placed_events) = fixtures::order(&goods, &bob, 2);
    let placed_envs = fixtures::envelopes(&placed, &placed_events);
    let paid_notice = notice(&tenant, placed.id(), "txn-paid", placed.total());
    let (paid, paid_envs) = fixtures::paid_by(&placed, &paid_notice);
    // Placed at a time finer than a microsecond: the migration keeps its placement time to
    // the microsecond, as the store does.
    let fine = t0() + Duration::nanoseconds(123_456_789);
    let (mut void, _) = fixtures::order_at(&goods, &bob, 1, fine);
    void.expire(void.expires_at()).unwrap();

    let sold_at = t0() + Duration::minutes(1);
    let withdrawn_at = t0() + Duration::minutes(2);
    let cards = [
        (v3_card(&tenant, sku, 1, CardState::Available), None),
        (v2_card(&tenant, sku, 2, CardState::Available), None),
        (
            v3_card(
                &tenant,
                sku,
                3,
                CardState::Reserved {
                    order: unpaid.id(),
                    until: unpaid.expires_at(),
                },
            ),
            Some(1),
        ),
        (
            v3_card(
                &tenant,
                sku,
                4,
                CardState::Sold {
                    order: paid.id(),
                    at: sold_at,
                },
            ),
            Some(2),
        ),
        (
            v3_card(
                &tenant,
                sku,
                5,
                CardState::Sold {
                    order: paid.id(),
                    at: sold_at,
                },
            ),
            Some(1),
        ),
        (
            v3_card(&tenant, sku, 6, CardState::Withdrawn { at: withdrawn_at }),
            None,
        ),
    ];
    let mut unknown = notice(
        &tenant,
        fixtures::id(OrderId::generate),
        "txn-unknown",
        Money::from_minor(5, Currency::CNY),
    );
    unknown.disposition = NoticeDisposition::Reconcile {
        reason: "unknown_order".into(),
    };
    let mut repeat = paid_notice.clone();
    repeat.amount = Money::from_minor(1, Currency::CNY);
    repeat.disposition = NoticeDisposition::Reconcile {
        reason: CONFLICTING_REPEAT.into(),
    };
    // The old feed: the unpaid order's events, then the paid order's placement and payment.
    let old_feed: Vec<EventEnvelope> = unpaid_envs
        .iter()
        .chain(&placed_envs)
        .chain(&paid_envs)
        .cloned()
        .collect();
    assert!(old_feed.len() >= 3, "events in several rows");
    {
        let conn = at_version(db.path(), &BEFORE_V4);
        conn.execute(
            "INSERT INTO key_rings (tenant, version, doc) VALUES (?1, 1, ?2)",
            params![
                tenant.as_str(),
                serde_json::to_string(&fixtures::key_ring(&tenant)).unwrap()
            ],
        )
        .unwrap();
        insert_v2_goods(&conn, &goods);
        for order in [&unpaid, &paid, &void] {
            insert_v2_order(&conn, order);
        }
        for (card, hold_seq) in &cards {
            insert_v3_card(&conn, card, *hold_seq);
        }
        insert_v3_events(&conn, &old_feed);
        insert_v3_notice(&conn, &unknown, "");
        insert_v3_notice(&conn, &paid_notice, "");
        insert_v3_notice(&conn, &repeat, "claim of the repeat");
        if version >= 4 {
            conn.execute_batch(&format!(
                "BEGIN; {} INSERT INTO schema_version (version, applied_at) VALUES (4, 1); COMMIT;",
                include_str!("../migrations/0004_lean_order_path.sql")
            ))
            .unwrap();
        }
    }

    let store = SqliteStore::open(db.path()).await.unwrap();
    {
        let conn = Connection::open(db.path()).unwrap();
        let version: i64 = conn
            .query_row("SELECT MAX(version) FROM schema_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, i64::from(SCHEMA_VERSION));
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
        assert_eq!(index_names(&conn, "cards"), CARD_INDEXES);
        let tables: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'order_lines'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(tables, 0, "the lines live in the orders");
    }

    // Orders, cards and notices read back as they were written.
    for order in [&unpaid, &paid, &void] {
        assert_eq!(
            store.order(&tenant, order.id()).await.unwrap().as_ref(),
            Some(order)
        );
    }
    // Migration 7 gave every order its placement time: searches find them by it.
    quanyi_testkit::conformance::migrated_orders_are_found_by_placement(
        &store,
        &tenant,
        &void,
        [&unpaid, &paid],
    )
    .await;
    let expired = quanyi_storage::OrderQuery::new()
        .member(bob.clone())
        .status(OrderStatus::Expired);
    let found = store
        .search_orders(&tenant, &expired, None, 10)
        .await
        .unwrap();
    assert_eq!(
        found.iter().map(Order::id).collect::<Vec<_>>(),
        vec![void.id()]
    );
    for (card, _) in &cards {
        assert_eq!(
            store.card(&tenant, card.id).await.unwrap().as_ref(),
            Some(card)
        );
    }
    assert_eq!(
        store.stock(&tenant, sku, t0()).await.unwrap(),
        StockCount {
            available: 2,
            reserved: 1,
            sold: 2
        }
    );
    let held = store.held_cards(&tenant, unpaid.id()).await.unwrap();
    assert_eq!(
        held.iter().map(|c| c.id).collect::<Vec<_>>(),
        [cards[2].0.id]
    );
    let sold = store.order_cards(&tenant, paid.id()).await.unwrap();
    assert_eq!(sold, [cards[4].0.clone(), cards[3].0.clone()], "hold order");
    assert_eq!(
        store
            .payment_notice(&tenant, "testpay", "txn-paid")
            .await
            .unwrap(),
        Some(paid_notice.clone())
    );

    // The old events: per aggregate, in the feed, and from a cursor on any of them.
    assert_eq!(
        store
            .aggregate_events(&tenant, "order", &paid.id().to_string())
            .await
            .unwrap(),
        placed_envs
            .iter()
            .chain(&paid_envs)
            .cloned()
            .collect::<Vec<_>>()
    );
    assert_eq!(store.events_after(None, 100).await.unwrap(), old_feed);
    for (n, e) in old_feed.iter().enumerate() {
        assert_eq!(
            store.events_after(Some(e.id), 100).await.unwrap(),
            old_feed[n + 1..],
            "after event {n}"
        );
    }
    // An old event id is still taken.
    let (other, _) = fixtures::order(&goods, &fixtures::member("cyd"), 1);
    assert_eq!(
        store
            .insert_order(&other, &old_feed[..1], &[])
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::Conflict
    );

    // Member limits count the migrated lines of live orders only: bob holds 2 (the expired
    // order's 1 is void), so 1 more fits a limit of 3 and a second 1 does not.
    let limit = [MemberLimit {
        sku,
        limit: 3,
        release_on_refund: false,
    }];
    let (more, more_events) = fixtures::order(&goods, &bob, 1);
    let more_envs = fixtures::envelopes(&more, &more_events);
    store
        .place_order(
            NewOrder {
                order: &more,
                events: &more_envs,
                reservations: &[Reservation { sku, quantity: 1 }],
                member_limits: &limit,
                priced_from: &[],
                claims: &[],
                budgets: &[],
                pricing_version: None,
            },
            t0(),
        )
        .await
        .unwrap();
    let (too_many, _) = fixtures::order(&goods, &bob, 1);
    let refused = store
        .place_order(
            NewOrder {
                order: &too_many,
                events: &[],
                reservations: &[Reservation { sku, quantity: 1 }],
                member_limits: &limit,
                priced_from: &[],
                claims: &[],
                budgets: &[],
                pricing_version: None,
            },
            t0(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(refused, quanyi_storage::Error::MemberLimitExceeded { .. }),
        "{refused}"
    );

    // The feed goes on from the last old event into the new rows.
    assert_eq!(
        store
            .events_after(old_feed.last().map(|e| e.id), 100)
            .await
            .unwrap(),
        more_envs
    );

    // Paying the old unpaid order sells its old reservation.
    let ann_notice = notice(&tenant, unpaid.id(), "txn-ann", unpaid.total());
    let (ann_paid, ann_envs) = fixtures::paid_by(&unpaid, &ann_notice);
    store
        .record_payment(
            PaymentWrite {
                notice: &ann_notice,
                change: Some(OrderChange {
                    order: &ann_paid,
                    expected_version: unpaid.version(),
                    events: &ann_envs,
                }),
                sell: &[cards[2].0.id],
                job: None,
            },
            t0(),
        )
        .await
        .unwrap();
    assert_eq!(
        store.stock(&tenant, sku, t0()).await.unwrap(),
        StockCount {
            available: 1,
            reserved: 1,
            sold: 3
        }
    );

    // A new notice to reconcile lists after the old ones.
    let mut late = notice(
        &tenant,
        fixtures::id(OrderId::generate),
        "txn-late",
        Money::from_minor(7, Currency::CNY),
    );
    late.disposition = NoticeDisposition::Reconcile {
        reason: "unknown_order".into(),
    };
    store
        .record_payment(
            PaymentWrite {
                notice: &late,
                change: None,
                sell: &[],
                job: None,
            },
            t0(),
        )
        .await
        .unwrap();
    assert_eq!(
        store.notices_to_reconcile(&tenant, 10).await.unwrap(),
        [unknown, repeat, late]
    );

    // The gap-free feed holds the old events first, in write order, then the new rows; a
    // consumer's cursor is stored (version 6).
    let feed = store
        .read_feed(&tenant, quanyi_storage::FeedPosition::START, 1000)
        .await
        .unwrap();
    let ids: Vec<_> = feed.iter().map(|e| e.event.id).collect();
    assert_eq!(
        ids[..old_feed.len()],
        old_feed.iter().map(|e| e.id).collect::<Vec<_>>()[..]
    );
    assert!(feed.windows(2).all(|p| p[0].position < p[1].position));
    store
        .save_consumer_cursor(&tenant, "after-migration", None, feed[0].position)
        .await
        .unwrap();
    assert_eq!(
        store
            .consumer_cursor(&tenant, "after-migration")
            .await
            .unwrap(),
        Some(feed[0].position)
    );

    // Migrated orders read with the default context; a placement takes a claim beside them,
    // and the same claim again is refused with the stored one.
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
    let (keyed, _) = fixtures::order(&goods, &fixtures::member("dee"), 1);
    store
        .place_order(
            NewOrder {
                order: &keyed,
                events: &[],
                reservations: &[],
                member_limits: &[],
                priced_from: &[],
                claims: std::slice::from_ref(&claim),
                budgets: &[],
                pricing_version: None,
            },
            t0(),
        )
        .await
        .unwrap();
    let (again, _) = fixtures::order(&goods, &fixtures::member("dee"), 1);
    let refused = store
        .place_order(
            NewOrder {
                order: &again,
                events: &[],
                reservations: &[],
                member_limits: &[],
                priced_from: &[],
                claims: &[quanyi_storage::Claim {
                    value: "second".into(),
                    ..claim.clone()
                }],
                budgets: &[],
                pricing_version: None,
            },
            t0(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, quanyi_storage::Error::Claimed { claim: stored } if **stored == claim),
        "{refused}"
    );
    assert_eq!(
        store
            .claim(&tenant, "placement", "after-migration")
            .await
            .unwrap(),
        Some(claim)
    );
}

/// Version 7 to 8: lines stored without their terms get them from their goods (a pack's lines
/// the pack's terms), and what each order counts toward member limits is written again, so a
/// pack's limit counts the packs of orders placed before.
#[tokio::test]
async fn version_7_databases_give_old_lines_their_terms() {
    let db = TempDb(common::fresh_path());
    let tenant = fixtures::tenant();
    let before = quanyi_testkit::conformance::OrdersBeforeLineTerms::new(&tenant);
    {
        let conn = at_version(db.path(), &BEFORE_V8);
        for goods in &before.goods {
            insert_v2_goods(&conn, goods);
        }
        for order in &before.orders {
            // Version 7's columns: each line's SKU and quantity, nothing for the pack.
            let lines: Vec<u8> = order
                .lines()
                .iter()
                .flat_map(|l| {
                    let mut entry = l.sku.as_bytes().to_vec();
                    entry.extend_from_slice(&l.quantity.to_be_bytes());
                    entry
                })
                .collect();
            conn.execute(
                "INSERT INTO orders (tenant, id, member, status, expires_at, version, doc,
                                     updated_at, lines, placed_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    order.tenant().as_str(),
                    order.id().as_bytes(),
                    order.member().as_str(),
                    order.status().as_str(),
                    nanos(order.expires_at()),
                    i64::try_from(order.version()).unwrap(),
                    fixtures::doc_before_line_terms(order),
                    nanos(order.updated_at()),
                    lines,
                    nanos(order.created_at())
                ],
            )
            .unwrap();
        }
    }
    let store = SqliteStore::open(db.path()).await.unwrap();
    before.check_after_migration(&store).await;
}

/// The migrations up to version 8.
fn before_v9() -> Vec<&'static str> {
    let mut all = BEFORE_V8.to_vec();
    all.push(include_str!("../migrations/0008_line_terms.sql"));
    all
}

/// Stores the goods, orders and cards of [`BeforeAfterSales`] with the columns of versions 8
/// and 9 (version 9 added none that these rows need).
///
/// [`BeforeAfterSales`]: quanyi_testkit::conformance::BeforeAfterSales
fn insert_before_after_sales(
    conn: &Connection,
    before: &quanyi_testkit::conformance::BeforeAfterSales,
) {
    let tenant = before.goods.tenant();
    insert_v2_goods(conn, &before.goods);
    for order in &before.orders {
        let lines: Vec<u8> = order
            .limit_units()
            .flat_map(|(sku, quantity)| {
                let mut entry = sku.as_bytes().to_vec();
                entry.extend_from_slice(&quantity.to_be_bytes());
                entry
            })
            .collect();
        conn.execute(
            "INSERT INTO orders (tenant, id, member, status, expires_at, version, doc,
                                 updated_at, lines, placed_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                order.tenant().as_str(),
                order.id().as_bytes(),
                order.member().as_str(),
                order.status().as_str(),
                nanos(order.expires_at()),
                i64::try_from(order.version()).unwrap(),
                serde_json::to_string(order).unwrap(),
                nanos(order.updated_at()),
                lines,
                nanos(order.created_at())
            ],
        )
        .unwrap();
    }
    for (card, state) in &before.cards {
        let stored = StoredCard {
            id: card.id,
            sku: card.sku,
            batch: card.batch,
            blind_index: card.blind_index,
            sealed: card.sealed.clone(),
            ..v3_card(tenant, card.sku, 1, *state)
        };
        insert_v3_card(conn, &stored, stored.state.holder().map(|_| 1));
    }
}

/// Version 8 to 9: cards in every state keep their state and are neither revealed nor voided,
/// orders in every state read back unqueued, and reveals and refunds work on what was stored.
#[tokio::test]
async fn version_8_databases_take_reveals_and_refunds() {
    let db = TempDb(common::fresh_path());
    let tenant = fixtures::tenant();
    let before = quanyi_testkit::conformance::BeforeAfterSales::new(&tenant);
    {
        let conn = at_version(db.path(), &before_v9());
        insert_before_after_sales(&conn, &before);
    }
    let store = SqliteStore::open(db.path()).await.unwrap();
    let conn = Connection::open(db.path()).unwrap();
    assert!(index_names(&conn, "orders").contains(&"orders_refund_queue".to_owned()));
    before.check_after_migration(&store).await;
}

/// The migrations up to version 9.
fn before_v10() -> Vec<&'static str> {
    let mut all = before_v9();
    all.push(include_str!("../migrations/0009_after_sales.sql"));
    all
}

/// Version 9 to 10: an unpaid order that took a budget use before budgets had amounts (its
/// `order_budgets` row has no amount) gives back exactly that use when it closes unpaid, and a
/// delivered order keeps its use; placements take amounts; pricing rules and coupons are
/// stored and read; a placement priced from rules that changed is refused.
#[tokio::test]
async fn version_9_databases_take_pricing_and_budgets_of_amounts() {
    let db = TempDb(common::fresh_path());
    let tenant = fixtures::tenant();
    let before = quanyi_testkit::conformance::BeforeAfterSales::new(&tenant);
    {
        let conn = at_version(db.path(), &before_v10());
        insert_before_after_sales(&conn, &before);
        // Version 9's budget rows: one use each, of the unpaid and a delivered order.
        conn.execute(
            "INSERT INTO sale_budgets (tenant, scope, key, used) VALUES (?1, 'coupon', 'spring', 2)",
            params![tenant.as_str()],
        )
        .unwrap();
        for order in &before.orders[..2] {
            conn.execute(
                "INSERT INTO order_budgets (tenant, order_id, scope, key)
                 VALUES (?1, ?2, 'coupon', 'spring')",
                params![tenant.as_str(), order.id().as_bytes()],
            )
            .unwrap();
        }
    }
    let store = SqliteStore::open(db.path()).await.unwrap();
    let conn = Connection::open(db.path()).unwrap();
    assert!(index_names(&conn, "coupons").contains(&"coupons_by_member".to_owned()));
    quanyi_testkit::conformance::check_pricing_after_migration(&store, &before).await;
}
