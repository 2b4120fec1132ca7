//! `VaultStore`: one row per card key, its state and holding order in columns, and the available
//! ones also in the `free_cards` queue; allocation deletes the oldest queue rows it can lock
//! (`FOR UPDATE SKIP LOCKED`, card order), merged with lapsed reservations.
//!
//! Writes of new sealed values (imports, bought cards, reseals) lock the tenant's `key_rings`
//! row `FOR SHARE` and compare its active key in the same transaction: a rotation (an update of
//! that row) then either commits before the write reads the ring, or waits until the write has
//! committed. So once a rotation is stored, no value sealed with the old key is added, and
//! resealing what that key sealed before retiring it leaves nothing behind.

use std::collections::HashSet;
use std::sync::LazyLock;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use quanyi_core::{BatchId, CardId, OrderId, SkuId, TenantId};
use quanyi_storage::{
    CardState, Error, HeldCard, IndexChange, InsertCardsOutcome, NewCard, OrderChange, Reindexed,
    Result, StockCount, StoredCard, Trail, VaultStore,
};
use quanyi_vault::{BlindIndex, IndexScheme, KeyId, SealedCard, SealedValue};
use tokio_postgres::Row;
use uuid::Uuid;

use crate::codec::{from_micros, get, limit, micros, tenant, to_u64};
use crate::error::{corrupt, db};
use crate::logs::TrailColumns;
use crate::{Conn, PgStore, pipelined};

const CARD_COLUMNS: &str = "id, tenant, sku, batch, blind_index, code, secret, key_id, state, \
                            order_id, reserved_until, sold_at, withdrawn_at, imported_at, \
                            index_scheme, revealed_at, voided_at";

/// Marks the cards sold to order $2 of tenant $1 and not voided as revealed at $3 (keeping an
/// earlier reveal's time). The cards are locked in id order first, as a refund that voids them
/// locks them, so the two queue instead of deadlocking; a card voided by a refund that
/// committed meanwhile is rechecked and left alone.
const MARK_REVEALED: &str = "UPDATE cards c SET revealed_at = COALESCE(c.revealed_at, $3) \
     WHERE c.id IN (SELECT x.id FROM cards x \
                    WHERE x.id = ANY(ARRAY(SELECT card_id FROM order_cards WHERE order_id = $2)) \
                      AND x.tenant = $1 AND x.order_id = $2 AND x.state = 'sold' \
                    ORDER BY x.id FOR UPDATE) \
       AND c.voided_at IS NULL \
     RETURNING c.id";

/// The active data key of the tenant `$1`'s ring, as a key id (`key_rings.doc` is the JSON of a
/// `WrappedKeyRing`, whose `active` is the key's number); NULL when the tenant has no ring.
pub(crate) const ACTIVE_KEY: &str = "(doc::json ->> 'active')::bigint";

/// Locks the tenant `$1`'s key ring until the transaction ends, so that no rotation commits
/// before it does; the statements after it in the transaction read the ring as it stays.
pub(crate) const LOCK_RING: &str = "SELECT 1 FROM key_rings WHERE tenant = $1 FOR SHARE";

/// $1 tenant, $2 ids, $3 SKUs, $4 batches, $5 blind indexes, $6 codes, $7 secrets, $8 key ids,
/// $9 now, $10 index schemes, $11 legacy indexes (NULL for none). Nothing is written when a key
/// is not the active one (the ring locked `FOR SHARE` by the statement, see the module docs)
/// or an id is taken or repeated. A card whose blind index the tenant holds, or that repeats one earlier in
/// the batch, or whose legacy index the tenant holds, is skipped. The legacy check is a
/// subquery per card that has a legacy index (behind `OR`, so the planner cannot turn it into a
/// join, which with thin statistics it did as a scan of all the tenant's cards).
pub(crate) static INSERT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH ring AS (SELECT {ACTIVE_KEY} AS active FROM key_rings WHERE tenant = $1 FOR SHARE), \
         bad_key AS (SELECT u.key_id FROM unnest($8::bigint[]) WITH ORDINALITY AS u(key_id, ord) \
                     WHERE u.key_id IS DISTINCT FROM (SELECT active FROM ring) \
                     ORDER BY u.ord LIMIT 1), \
         taken AS ((SELECT c.id FROM unnest($2::uuid[]) AS u(id) \
                    JOIN cards c ON c.id = u.id LIMIT 1) \
                   UNION ALL \
                   (SELECT id FROM unnest($2::uuid[]) AS r(id) GROUP BY id HAVING count(*) > 1 \
                    LIMIT 1)), \
         ins AS ( \
             INSERT INTO cards (id, tenant, sku, batch, blind_index, index_scheme, code, secret, \
                                key_id, state, imported_at) \
             SELECT u.id, $1, u.sku, u.batch, u.bi, u.scheme, u.code, u.secret, u.key_id, \
                    'available', $9 \
             FROM unnest($2::uuid[], $3::uuid[], $4::uuid[], $5::bytea[], $10::smallint[], \
                         $11::bytea[], $6::bytea[], $7::bytea[], $8::bigint[]) \
                  WITH ORDINALITY AS u(id, sku, batch, bi, scheme, legacy, code, secret, key_id, ord) \
             WHERE NOT EXISTS (SELECT 1 FROM bad_key) AND NOT EXISTS (SELECT 1 FROM taken) \
               AND (u.legacy IS NULL \
                    OR NOT EXISTS (SELECT 1 FROM cards c \
                                   WHERE c.blind_index = u.legacy AND c.tenant = $1)) \
             ORDER BY u.ord \
             ON CONFLICT ON CONSTRAINT cards_blind_index_key DO NOTHING \
             RETURNING id, sku \
         ), \
         free AS (INSERT INTO free_cards (tenant, sku, id) SELECT $1, sku, id FROM ins) \
         SELECT (SELECT key_id FROM bad_key), (SELECT id FROM taken LIMIT 1), \
                ARRAY(SELECT id FROM ins)"
    )
});

/// The CTEs that pick cards for the rows of `wanted` (columns `sku`, `qty`, `ord`), oldest card
/// first, among the free ones (`free_cards`) and the reservations that lapsed at `now` (found in
/// `held_cards`; the first two parameters are SQL expressions for the tenant and now;
/// `lapsed_filter` narrows the lapsed cards further, as conditions on the card `c`). Defines
/// `free_pick`, `lapsed_pick` and `pick (ord, sku, id, free, fctid, huntil)`: at most `qty`
/// cards per row, each locked (rows other transactions hold are skipped); `fctid` is the locked
/// queue row's tuple id (free cards only), `huntil` a lapsed card's old deadline (the key of its
/// `held_cards` row). A lapsed card is locked through its card row, as every writer of a
/// reservation locks it (payment, release, withdrawal), and its deadline is read as locked.
/// The caller takes the picked cards out of both queues ([`take_free_sql`], [`take_lapsed_sql`]).
pub(crate) fn pick_ctes(wanted: &str, tenant: &str, now: &str, lapsed_filter: &str) -> String {
    format!(
        "free_pick AS ( \
             SELECT w.ord, w.sku, f.id, f.ctid AS fctid FROM {wanted} w \
             CROSS JOIN LATERAL ( \
                 SELECT id, ctid FROM free_cards WHERE tenant = {tenant} AND sku = w.sku \
                 ORDER BY id LIMIT w.qty \
                 FOR UPDATE SKIP LOCKED \
             ) f), \
         lapsed_pick AS ( \
             SELECT w.ord, w.sku, l.id, l.reserved_until FROM {wanted} w \
             CROSS JOIN LATERAL ( \
                 SELECT c.id, c.reserved_until FROM held_cards h JOIN cards c ON c.id = h.id \
                 WHERE h.tenant = {tenant} AND h.sku = w.sku AND h.until <= {now} \
                   AND c.tenant = {tenant} AND c.state = 'reserved' \
                   AND c.reserved_until <= {now}{lapsed_filter} \
                 ORDER BY h.id LIMIT w.qty \
                 FOR UPDATE OF c SKIP LOCKED \
             ) l), \
         pick AS ( \
             SELECT u.ord, u.sku, u.id, u.free, u.fctid, u.huntil FROM ( \
                 SELECT a.ord, a.sku, a.id, a.free, a.fctid, a.huntil, w.qty, \
                        row_number() OVER (PARTITION BY a.ord ORDER BY a.id) AS rn \
                 FROM (SELECT ord, sku, id, true AS free, fctid, NULL::bigint AS huntil \
                       FROM free_pick \
                       UNION ALL SELECT ord, sku, id, false, NULL::tid, reserved_until \
                       FROM lapsed_pick) a \
                 JOIN {wanted} w ON w.ord = a.ord) u \
             WHERE u.rn <= u.qty)"
    )
}

/// Deletes the free cards of `pick` from the queue when `condition` holds, by the tuple ids of
/// the rows `pick` locked: a TID scan, which no estimate can turn into a scan of the queue
/// (with statistics, the planner took a few picked cards for the whole SKU and hash-joined a
/// sequential scan of `free_cards`). A locked row cannot move or go before the statement ends.
///
/// The tuple ids are the only condition on the table: with one more (the tenant), a plan could
/// read the tenant's whole queue through its index and filter it by tuple id (2.8 ms for one
/// card of a queue of 2,600 in a probe), however few rows the pick locked. The rows were found
/// by the pick's scan of this tenant's queue.
pub(crate) fn take_free_sql(condition: &str) -> String {
    format!(
        "DELETE FROM free_cards f \
         WHERE f.ctid = ANY(ARRAY(SELECT fctid FROM pick WHERE free)) AND {condition}"
    )
}

/// Deletes the `held_cards` rows of the lapsed cards of `pick` when `condition` holds, by key.
pub(crate) fn take_lapsed_sql(tenant: &str, condition: &str) -> String {
    unhold_sql(
        tenant,
        "SELECT sku, huntil, id FROM pick WHERE NOT free",
        condition,
    )
}

/// Deletes the `held_cards` rows of the reservations `rows` lists (columns: SKU, deadline,
/// card) when `condition` holds, by key.
pub(crate) fn unhold_sql(tenant: &str, rows: &str, condition: &str) -> String {
    format!(
        "DELETE FROM held_cards h \
         WHERE h.tenant = {tenant} AND (h.sku, h.until, h.id) IN ({rows}) AND {condition}"
    )
}

/// Links the cards `rows` lists (columns: card, ordering key) to `order` when `condition`
/// holds, after the order's links so far.
pub(crate) fn link_sql(order: &str, rows: &str, condition: &str) -> String {
    format!(
        "INSERT INTO order_cards (order_id, pos, card_id) \
         SELECT {order}, \
                (SELECT COALESCE(max(pos), 0) FROM order_cards WHERE order_id = {order}) \
                  + row_number() OVER (ORDER BY r.k), \
                r.id \
         FROM ({rows}) AS r(id, k) WHERE {condition}"
    )
}

/// The CTEs that return an order's reserved cards to stock (back in `free_cards`, out of
/// `held_cards`, unlinked from the order) when `condition` holds: `rel (sku, id)` the cards
/// released. Only cards still reserved for the order are touched; its other links to cards it
/// no longer holds go too. $-free: `tenant` and `order` are SQL expressions.
pub(crate) fn release_ctes(tenant: &str, order: &str, condition: &str) -> String {
    format!(
        "mine AS ( \
             SELECT c.id, c.sku, c.reserved_until FROM cards c \
             WHERE c.id IN (SELECT card_id FROM order_cards WHERE order_id = {order}) \
               AND c.tenant = {tenant} AND c.order_id = {order} AND c.state = 'reserved' \
               AND {condition} \
             FOR UPDATE), \
         rel AS ( \
             UPDATE cards SET state = 'available', order_id = NULL, reserved_until = NULL \
             WHERE id = ANY(ARRAY(SELECT id FROM mine)) AND tenant = {tenant} \
               AND order_id = {order} AND state = 'reserved' \
             RETURNING sku, id), \
         unhold AS ({unhold}), \
         unlink AS ( \
             DELETE FROM order_cards oc WHERE oc.order_id = {order} AND {condition} \
               AND NOT EXISTS (SELECT 1 FROM cards c WHERE c.id = oc.card_id \
                               AND c.order_id = {order} AND c.state = 'sold')), \
         free AS (INSERT INTO free_cards (tenant, sku, id) SELECT {tenant}, sku, id FROM rel)",
        unhold = unhold_sql(tenant, "SELECT sku, reserved_until, id FROM mine", "true"),
    )
}

/// The cards an order holds of one SKU (reserved for it or sold to it) with their link
/// position: `$tenant`, `$order` and `$sku` are SQL expressions. With `lock`, the card rows are
/// locked.
fn held_cte(tenant: &str, order: &str, sku: &str, lock: bool) -> String {
    format!(
        "held AS ( \
             SELECT c.id, c.state, c.sku, c.reserved_until, oc.pos FROM cards c \
             JOIN (SELECT card_id, min(pos) AS pos FROM order_cards WHERE order_id = {order} \
                   GROUP BY card_id) oc ON oc.card_id = c.id \
             WHERE c.tenant = {tenant} AND c.sku = {sku} AND c.order_id = {order} \
               AND c.state IN ('reserved', 'sold'){lock})",
        lock = if lock { " FOR UPDATE OF c" } else { "" },
    )
}

/// $1 tenant, $2 SKU, $3 order, $4 quantity, $5 until, $6 now.
pub(crate) static RESERVE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH {held}, \
         wanted AS (SELECT $2::uuid AS sku, \
                           CASE WHEN EXISTS (SELECT 1 FROM held) THEN 0 ELSE $4::bigint END AS qty, \
                           1 AS ord), \
         {pick}, \
         ok AS (SELECT count(*) = $4 AS v FROM pick), \
         take AS ({take}), \
         untake AS ({untake}), \
         upd AS ( \
             UPDATE cards c SET state = 'reserved', order_id = $3, reserved_until = $5 \
             WHERE c.id = ANY(ARRAY(SELECT id FROM pick)) AND (SELECT v FROM ok)), \
         hold AS ( \
             INSERT INTO held_cards (tenant, sku, until, id) \
             SELECT $1, sku, $5, id FROM pick WHERE (SELECT v FROM ok)), \
         link AS ({link}) \
         SELECT ARRAY(SELECT id FROM held ORDER BY state = 'reserved', pos), \
                ARRAY(SELECT id FROM pick ORDER BY id), (SELECT v FROM ok)",
        held = held_cte("$1", "$3", "$2", false),
        pick = pick_ctes("wanted", "$1", "$6", ""),
        take = take_free_sql("(SELECT v FROM ok)"),
        untake = take_lapsed_sql("$1", "(SELECT v FROM ok)"),
        link = link_sql("$3", "SELECT id, id FROM pick", "(SELECT v FROM ok)"),
    )
});

/// $1 tenant, $2 SKU, $3 order, $4 quantity, $5 now. The order's reserved cards first (any
/// deadline), then free ones.
pub(crate) static COMMIT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH {held}, \
         nsold AS (SELECT count(*) AS n FROM held WHERE state = 'sold'), \
         need AS (SELECT GREATEST($4 - (SELECT n FROM nsold), 0) AS v), \
         mine AS (SELECT id, sku, reserved_until, pos FROM held WHERE state = 'reserved' \
                  ORDER BY pos LIMIT (SELECT v FROM need)), \
         wanted AS (SELECT $2::uuid AS sku, \
                           (SELECT v FROM need) - (SELECT count(*) FROM mine) AS qty, 1 AS ord), \
         {pick}, \
         ok AS (SELECT (SELECT count(*) FROM mine) + (SELECT count(*) FROM pick) \
                       = (SELECT v FROM need) AS v), \
         take AS ({take}), \
         untake AS ({untake}), \
         unhold AS ({unhold}), \
         upd AS ( \
             UPDATE cards c SET state = 'sold', sold_at = $5, reserved_until = NULL, order_id = $3 \
             WHERE c.id = ANY(ARRAY(SELECT id FROM mine UNION ALL SELECT id FROM pick)) \
               AND (SELECT v FROM ok)), \
         link AS ({link}) \
         SELECT (SELECT n FROM nsold), \
                ARRAY(SELECT id FROM held WHERE state = 'sold' ORDER BY pos), \
                ARRAY(SELECT id FROM mine ORDER BY pos), ARRAY(SELECT id FROM pick ORDER BY id), \
                (SELECT v FROM ok)",
        held = held_cte("$1", "$3", "$2", true),
        pick = pick_ctes("wanted", "$1", "$5", " AND c.order_id <> $3"),
        take = take_free_sql("(SELECT v FROM ok)"),
        untake = take_lapsed_sql("$1", "(SELECT v FROM ok)"),
        unhold = unhold_sql(
            "$1",
            "SELECT sku, reserved_until, id FROM mine",
            "(SELECT v FROM ok)"
        ),
        link = link_sql("$3", "SELECT id, id FROM pick", "(SELECT v FROM ok)"),
    )
});

/// The cards an order holds, in card order: $1 tenant, $2 order.
const HELD: &str = "SELECT id, sku, state, order_id, reserved_until, sold_at, withdrawn_at \
                    FROM cards \
                    WHERE id IN (SELECT card_id FROM order_cards WHERE order_id = $2) \
                      AND tenant = $1 AND order_id = $2 AND state IN ('reserved', 'sold') \
                    ORDER BY id";

/// Returns the order's reserved cards to stock (and to the free queue); answers how many.
pub(crate) static RELEASE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH {} SELECT count(*) FROM rel",
        release_ctes("$1", "$2", "true")
    )
});

pub(crate) const STOCK: &str = "SELECT \
        (SELECT count(*) FROM free_cards WHERE tenant = $1 AND sku = $2) \
          + (SELECT count(*) FROM held_cards WHERE tenant = $1 AND sku = $2 AND until <= $3), \
        (SELECT count(*) FROM held_cards WHERE tenant = $1 AND sku = $2 AND until > $3), \
        (SELECT count(*) FROM cards WHERE tenant = $1 AND sku = $2 AND state = 'sold')";

/// $1 tenant, $2 card, $3 expected key, $4 code, $5 secret, $6 new key. Runs after
/// [`LOCK_RING`] in the same transaction.
pub(crate) static REPLACE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH ring AS (SELECT {ACTIVE_KEY} AS active FROM key_rings WHERE tenant = $1), \
         cur AS (SELECT key_id FROM cards WHERE id = $2 AND tenant = $1 FOR UPDATE), \
         upd AS (UPDATE cards SET code = $4, secret = $5, key_id = $6 \
                 WHERE id = $2 AND tenant = $1 AND (SELECT key_id FROM cur) = $3 \
                   AND (SELECT active FROM ring) = $6 \
                 RETURNING 1) \
         SELECT (SELECT key_id FROM cur), EXISTS (SELECT 1 FROM upd)"
    )
});

/// The schemes `cards_old_scheme` (migration 4) indexes: every one older than this. Cards to
/// re-index are read through that partial index, so the query names its predicate as a
/// constant (a parameter cannot prove it); a newer current scheme needs a new index.
const OLD_SCHEMES_BELOW: u8 = IndexScheme::CURRENT.as_u8();

/// $1 tenant, $2 the scheme to reach, $3 limit.
pub(crate) static TO_REINDEX: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {CARD_COLUMNS} FROM cards \
         WHERE tenant = $1 AND index_scheme < {OLD_SCHEMES_BELOW} AND index_scheme < $2 \
         ORDER BY id LIMIT $3"
    )
});

/// One change of `reindex_cards`: $1 tenant, $2 card, $3 from, $4 to, $5 scheme. The card moves
/// to `to` unless another card holds it, and takes the scheme either way, when it still holds
/// `from`. Answers whether it did and the other holder of `to`.
pub(crate) const REINDEX: &str = "WITH holder AS ( \
         SELECT id FROM cards WHERE tenant = $1 AND blind_index = $4 AND id <> $2), \
     upd AS ( \
         UPDATE cards SET index_scheme = $5, \
                blind_index = CASE WHEN EXISTS (SELECT 1 FROM holder) THEN blind_index ELSE $4 END \
         WHERE id = $2 AND tenant = $1 AND blind_index = $3 \
         RETURNING 1) \
     SELECT EXISTS (SELECT 1 FROM upd), (SELECT id FROM holder)";

/// One round of withdrawal of the unsold cards `filter` picks (`$1` tenant, `$2` what the
/// filter names, `$3` now).
///
/// Locks are taken in allocation's order, queue row first: the queue rows of the available
/// ones are deleted first (waiting for a buyer that holds one; a row a buyer took is gone),
/// then the card rows are locked and updated, each checked again as it stands then: a reserved
/// card (whose `held_cards` row goes, by the deadline read as locked), or an available one
/// whose queue row this round deleted, is withdrawn. A card that changed in
/// between (taken from the queue and reserved or sold, or released back to it) is answered as
/// missed, and the next round, with a new snapshot, looks at it again. Answers the cards
/// withdrawn and the cards missed.
fn withdraw_sql(filter: &str) -> String {
    let unhold = unhold_sql(
        "$1",
        "SELECT sku, until, id FROM w WHERE was = 'reserved'",
        "true",
    );
    format!(
        "WITH mine AS ( \
             SELECT id, sku, state FROM cards \
             WHERE {filter} AND state IN ('available', 'reserved')), \
         gone AS ( \
             DELETE FROM free_cards f \
             WHERE f.tenant = $1 \
               AND (f.sku, f.id) IN (SELECT sku, id FROM mine WHERE state = 'available') \
             RETURNING f.id), \
         lk AS ( \
             SELECT id, state, reserved_until FROM cards \
             WHERE id = ANY(ARRAY(SELECT id FROM gone \
                                  UNION ALL SELECT id FROM mine WHERE state = 'reserved')) \
               AND tenant = $1 \
             FOR UPDATE), \
         w AS ( \
             UPDATE cards c SET state = 'withdrawn', withdrawn_at = $3, order_id = NULL, \
                    reserved_until = NULL \
             FROM lk \
             WHERE c.id = lk.id AND c.tenant = $1 \
               AND (lk.state = 'reserved' \
                    OR (lk.state = 'available' AND lk.id IN (SELECT id FROM gone))) \
             RETURNING c.id, c.sku, lk.state AS was, lk.reserved_until AS until), \
         unhold AS ({unhold}) \
         SELECT ARRAY(SELECT id FROM w), ARRAY(SELECT id FROM mine WHERE id NOT IN (SELECT id FROM w))"
    )
}

/// [`withdraw_sql`] of the cards `$2` (ids).
pub(crate) static WITHDRAW_BY_ID: LazyLock<String> =
    LazyLock::new(|| withdraw_sql("id = ANY($2::uuid[]) AND tenant = $1"));

/// [`withdraw_sql`] of the cards sealed with the data key `$2`.
pub(crate) static WITHDRAW_BY_KEY: LazyLock<String> =
    LazyLock::new(|| withdraw_sql("key_id = $2 AND tenant = $1"));

/// How many rounds of withdrawal a call runs at most. Each round after the first looks only at
/// cards that changed while the one before ran; they settle in one more round unless they keep
/// going back and forth between the queue and orders.
const WITHDRAW_ROUNDS: usize = 8;

/// Finishes a withdrawal whose first round answered `row`, in the caller's transaction: runs
/// [`WITHDRAW_BY_ID`] on the missed cards until none is missed. Returns every card withdrawn.
pub(crate) async fn withdraw_rounds(
    conn: &Conn,
    tenant: &TenantId,
    now: i64,
    mut row: Row,
) -> Result<Vec<Uuid>> {
    let by_id = conn.prepare(&WITHDRAW_BY_ID).await?;
    let mut withdrawn: Vec<Uuid> = Vec::new();
    for _ in 0..WITHDRAW_ROUNDS {
        withdrawn.extend(get::<Vec<Uuid>>(&row, 0)?);
        let missed: Vec<Uuid> = get(&row, 1)?;
        if missed.is_empty() {
            return Ok(withdrawn);
        }
        row = conn
            .client()
            .query_one(&by_id, &[&tenant.as_str(), &missed, &now])
            .await
            .map_err(db)?;
    }
    Err(Error::conflict(
        "card",
        tenant,
        "cards kept changing while they were withdrawn",
    ))
}

pub(crate) fn key_id(value: i64) -> Result<KeyId> {
    u32::try_from(value)
        .map(KeyId)
        .map_err(|_| corrupt("key id", value))
}

fn card_ids(ids: Vec<Uuid>) -> Vec<CardId> {
    ids.into_iter().map(CardId::from_uuid).collect()
}

/// The state columns (state, order_id, reserved_until, sold_at, withdrawn_at) from `at`.
fn state_at(row: &Row, at: usize) -> Result<CardState> {
    let state: &str = get(row, at)?;
    let order: Option<Uuid> = get(row, at + 1)?;
    let until: Option<i64> = get(row, at + 2)?;
    let sold_at: Option<i64> = get(row, at + 3)?;
    if state == "withdrawn" {
        let at: Option<i64> = get(row, at + 4)?;
        return match at {
            Some(at) => Ok(CardState::Withdrawn {
                at: from_micros(at)?,
            }),
            None => Err(corrupt("card state", "withdrawn without a time")),
        };
    }
    match (state, order, until, sold_at) {
        ("available", _, _, _) => Ok(CardState::Available),
        ("reserved", Some(order), Some(until), _) => Ok(CardState::Reserved {
            order: OrderId::from_uuid(order),
            until: from_micros(until)?,
        }),
        ("sold", Some(order), _, Some(at)) => Ok(CardState::Sold {
            order: OrderId::from_uuid(order),
            at: from_micros(at)?,
        }),
        (other, ..) => Err(corrupt("card state", other)),
    }
}

/// A row of [`CARD_COLUMNS`].
fn stored_card(row: &Row) -> Result<StoredCard> {
    let index: Vec<u8> = get(row, 4)?;
    let index: [u8; 32] = index
        .try_into()
        .map_err(|_| corrupt("blind index", "not 32 bytes"))?;
    let secret: Option<Vec<u8>> = get(row, 6)?;
    let scheme: i16 = get(row, 14)?;
    Ok(StoredCard {
        id: CardId::from_uuid(get(row, 0)?),
        tenant: tenant(get(row, 1)?)?,
        sku: SkuId::from_uuid(get(row, 2)?),
        batch: BatchId::from_uuid(get(row, 3)?),
        blind_index: BlindIndex::from_bytes(index),
        index_scheme: u8::try_from(scheme)
            .ok()
            .and_then(IndexScheme::from_u8)
            .ok_or_else(|| corrupt("index scheme", scheme))?,
        sealed: SealedCard {
            code: SealedValue::from_bytes(get(row, 5)?),
            secret: secret.map(SealedValue::from_bytes),
        },
        key_id: key_id(get(row, 7)?)?,
        state: state_at(row, 8)?,
        imported_at: from_micros(get(row, 13)?)?,
        revealed_at: get::<Option<i64>>(row, 15)?.map(from_micros).transpose()?,
        voided_at: get::<Option<i64>>(row, 16)?.map(from_micros).transpose()?,
    })
}

#[async_trait]
impl VaultStore for PgStore {
    async fn insert_sold_cards(
        &self,
        tenant: &TenantId,
        cards: &[NewCard],
        change: OrderChange<'_>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.write_sold_cards(tenant, cards, change, now).await
    }

    async fn insert_cards(
        &self,
        tenant: &TenantId,
        cards: &[NewCard],
        now: DateTime<Utc>,
        trail: Trail<'_>,
    ) -> Result<InsertCardsOutcome> {
        let trail = TrailColumns::new(trail)?;
        let mut ids = Vec::with_capacity(cards.len());
        let mut skus = Vec::with_capacity(cards.len());
        let mut batches = Vec::with_capacity(cards.len());
        let mut indexes = Vec::with_capacity(cards.len());
        let mut codes = Vec::with_capacity(cards.len());
        let mut secrets = Vec::with_capacity(cards.len());
        let mut keys = Vec::with_capacity(cards.len());
        let mut schemes = Vec::with_capacity(cards.len());
        let mut legacy = Vec::with_capacity(cards.len());
        for c in cards {
            ids.push(*c.id.as_uuid());
            skus.push(*c.sku.as_uuid());
            batches.push(*c.batch.as_uuid());
            indexes.push(c.blind_index.as_bytes().as_slice());
            codes.push(c.sealed.code.as_bytes());
            secrets.push(c.sealed.secret.as_ref().map(SealedValue::as_bytes));
            keys.push(i64::from(c.key_id.0));
            schemes.push(scheme_column(c.index_scheme));
            legacy.push(c.legacy_index.as_ref().map(|i| i.as_bytes().as_slice()));
        }
        let mut conn = self.conn().await?;
        let stmt = conn.prepare(&INSERT).await?;
        trail.begin(&mut conn).await?;
        let outcome = async {
            if cards.is_empty() {
                return Ok(InsertCardsOutcome::default());
            }
            let row = conn
                .client()
                .query_one(
                    &stmt,
                    &[
                        &tenant.as_str(),
                        &ids,
                        &skus,
                        &batches,
                        &indexes,
                        &codes,
                        &secrets,
                        &keys,
                        &micros(now),
                        &schemes,
                        &legacy,
                    ],
                )
                .await
                .map_err(db)?;
            if let Some(key) = get::<Option<i64>>(&row, 0)? {
                return Err(Error::KeyNotActive {
                    key: key_id(key)?.to_string(),
                });
            }
            if let Some(taken) = get::<Option<Uuid>>(&row, 1)? {
                return Err(Error::conflict(
                    "card",
                    CardId::from_uuid(taken),
                    "id already stored",
                ));
            }
            let stored: HashSet<Uuid> = get::<Vec<Uuid>>(&row, 2)?.into_iter().collect();
            if !stored.is_empty() {
                self.restocked();
            }
            let mut outcome = InsertCardsOutcome::default();
            for (i, c) in cards.iter().enumerate() {
                if stored.contains(c.id.as_uuid()) {
                    outcome.inserted.push(c.id);
                } else {
                    outcome.duplicates.push(i);
                }
            }
            Ok(outcome)
        }
        .await;
        trail.end(&mut conn, outcome).await
    }

    async fn reserve_cards(
        &self,
        tenant: &TenantId,
        sku: SkuId,
        order: OrderId,
        quantity: u32,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Vec<CardId>> {
        if quantity == 0 {
            return Err(Error::Invalid("reserve of zero cards".into()));
        }
        let conn = self.conn().await?;
        let stmt = conn.prepare(&RESERVE).await?;
        let row = conn
            .client()
            .query_one(
                &stmt,
                &[
                    &tenant.as_str(),
                    sku.as_uuid(),
                    order.as_uuid(),
                    &i64::from(quantity),
                    &micros(until),
                    &micros(now),
                ],
            )
            .await
            .map_err(db)?;
        let held: Vec<Uuid> = get(&row, 0)?;
        if !held.is_empty() {
            return Ok(card_ids(held));
        }
        let picked: Vec<Uuid> = get(&row, 1)?;
        let ok: bool = get(&row, 2)?;
        if !ok {
            return Err(Error::OutOfStock {
                sku,
                requested: quantity,
                available: picked.len() as u64,
            });
        }
        self.allocated(picked.len());
        Ok(card_ids(picked))
    }

    async fn commit_cards(
        &self,
        tenant: &TenantId,
        sku: SkuId,
        order: OrderId,
        quantity: u32,
        now: DateTime<Utc>,
    ) -> Result<Vec<CardId>> {
        if quantity == 0 {
            return Err(Error::Invalid("commit of zero cards".into()));
        }
        let conn = self.conn().await?;
        let stmt = conn.prepare(&COMMIT).await?;
        let row = conn
            .client()
            .query_one(
                &stmt,
                &[
                    &tenant.as_str(),
                    sku.as_uuid(),
                    order.as_uuid(),
                    &i64::from(quantity),
                    &micros(now),
                ],
            )
            .await
            .map_err(db)?;
        let nsold = to_u64(get(&row, 0)?, "count")?;
        let sold: Vec<Uuid> = get(&row, 1)?;
        if nsold >= u64::from(quantity) {
            return Ok(card_ids(sold));
        }
        let mine: Vec<Uuid> = get(&row, 2)?;
        let picked: Vec<Uuid> = get(&row, 3)?;
        let ok: bool = get(&row, 4)?;
        if !ok {
            return Err(Error::OutOfStock {
                sku,
                requested: quantity,
                available: (sold.len() + mine.len() + picked.len()) as u64,
            });
        }
        self.allocated(picked.len());
        Ok(card_ids(
            sold.into_iter().chain(mine).chain(picked).collect(),
        ))
    }

    async fn held_cards(&self, tenant: &TenantId, order: OrderId) -> Result<Vec<HeldCard>> {
        let conn = self.conn().await?;
        let stmt = conn.prepare(HELD).await?;
        let rows = conn
            .client()
            .query(&stmt, &[&tenant.as_str(), order.as_uuid()])
            .await
            .map_err(db)?;
        rows.iter()
            .map(|r| {
                Ok(HeldCard {
                    id: CardId::from_uuid(get(r, 0)?),
                    sku: SkuId::from_uuid(get(r, 1)?),
                    state: state_at(r, 2)?,
                })
            })
            .collect()
    }

    async fn release_cards(&self, tenant: &TenantId, order: OrderId) -> Result<u32> {
        let conn = self.conn().await?;
        let stmt = conn.prepare(&RELEASE).await?;
        let row = conn
            .client()
            .query_one(&stmt, &[&tenant.as_str(), order.as_uuid()])
            .await
            .map_err(db)?;
        let n = to_u64(get(&row, 0)?, "count")?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    async fn order_cards(&self, tenant: &TenantId, order: OrderId) -> Result<Vec<StoredCard>> {
        let conn = self.conn().await?;
        let sql = format!(
            "SELECT {CARD_COLUMNS} FROM cards c \
             JOIN (SELECT card_id, min(pos) AS pos FROM order_cards WHERE order_id = $2 \
                   GROUP BY card_id) oc ON oc.card_id = c.id \
             WHERE c.order_id = $2 AND c.tenant = $1 AND c.state = 'sold' ORDER BY oc.pos"
        );
        let stmt = conn.prepare(&sql).await?;
        let rows = conn
            .client()
            .query(&stmt, &[&tenant.as_str(), order.as_uuid()])
            .await
            .map_err(db)?;
        rows.iter().map(stored_card).collect()
    }

    async fn mark_revealed(
        &self,
        tenant: &TenantId,
        order: OrderId,
        now: DateTime<Utc>,
    ) -> Result<Vec<CardId>> {
        let conn = self.conn().await?;
        let stmt = conn.prepare(MARK_REVEALED).await?;
        let rows = conn
            .client()
            .query(&stmt, &[&tenant.as_str(), order.as_uuid(), &micros(now)])
            .await
            .map_err(db)?;
        let mut out = rows
            .iter()
            .map(|r| Ok(CardId::from_uuid(get(r, 0)?)))
            .collect::<Result<Vec<_>>>()?;
        out.sort_unstable();
        Ok(out)
    }

    async fn card(&self, tenant: &TenantId, id: CardId) -> Result<Option<StoredCard>> {
        let conn = self.conn().await?;
        let sql = format!("SELECT {CARD_COLUMNS} FROM cards WHERE id = $2 AND tenant = $1");
        let stmt = conn.prepare(&sql).await?;
        let row = conn
            .client()
            .query_opt(&stmt, &[&tenant.as_str(), id.as_uuid()])
            .await
            .map_err(db)?;
        row.as_ref().map(stored_card).transpose()
    }

    async fn card_by_index(
        &self,
        tenant: &TenantId,
        index: &BlindIndex,
    ) -> Result<Option<StoredCard>> {
        let conn = self.conn().await?;
        let sql =
            format!("SELECT {CARD_COLUMNS} FROM cards WHERE blind_index = $2 AND tenant = $1");
        let stmt = conn.prepare(&sql).await?;
        let row = conn
            .client()
            .query_opt(&stmt, &[&tenant.as_str(), &index.as_bytes().as_slice()])
            .await
            .map_err(db)?;
        row.as_ref().map(stored_card).transpose()
    }

    async fn stock(&self, tenant: &TenantId, sku: SkuId, now: DateTime<Utc>) -> Result<StockCount> {
        let conn = self.conn().await?;
        let stmt = conn.prepare(STOCK).await?;
        let row = conn
            .client()
            .query_one(&stmt, &[&tenant.as_str(), sku.as_uuid(), &micros(now)])
            .await
            .map_err(db)?;
        Ok(StockCount {
            available: to_u64(get(&row, 0)?, "count")?,
            reserved: to_u64(get(&row, 1)?, "count")?,
            sold: to_u64(get(&row, 2)?, "count")?,
        })
    }

    async fn cards_sealed_with(
        &self,
        tenant: &TenantId,
        key: KeyId,
        max: usize,
    ) -> Result<Vec<StoredCard>> {
        let conn = self.conn().await?;
        let sql = format!(
            "SELECT {CARD_COLUMNS} FROM cards WHERE tenant = $1 AND key_id = $2 ORDER BY id LIMIT $3"
        );
        let stmt = conn.prepare(&sql).await?;
        let rows = conn
            .client()
            .query(&stmt, &[&tenant.as_str(), &i64::from(key.0), &limit(max)])
            .await
            .map_err(db)?;
        rows.iter().map(stored_card).collect()
    }

    async fn replace_sealed(
        &self,
        tenant: &TenantId,
        card: CardId,
        expected_key: KeyId,
        sealed: &SealedCard,
        key: KeyId,
    ) -> Result<()> {
        let mut conn = self.conn().await?;
        let lock = conn.prepare(LOCK_RING).await?;
        let replace = conn.prepare(&REPLACE).await?;
        let name = tenant.as_str();
        let code = sealed.code.as_bytes();
        let secret = sealed.secret.as_ref().map(SealedValue::as_bytes);
        let (expected, new) = (i64::from(expected_key.0), i64::from(key.0));
        let lock_params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&name];
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 6] =
            [&name, card.as_uuid(), &expected, &code, &secret, &new];
        conn.in_txn = true;
        let c = conn.client();
        // One round trip: the ring is locked before the replacing statement reads it. A failed
        // statement aborts the transaction, and COMMIT then rolls it back.
        let (begin, locked, replaced, commit) = tokio::join!(
            biased;
            c.batch_execute("BEGIN"),
            c.execute(&lock, &lock_params),
            c.query_one(&replace, &params),
            c.batch_execute("COMMIT"),
        );
        // COMMIT was answered (or the connection is gone): no transaction is open.
        conn.in_txn = false;
        begin.map_err(db)?;
        locked.map_err(db)?;
        let row = replaced.map_err(db)?;
        commit.map_err(db)?;
        let current: Option<i64> = get(&row, 0)?;
        let written: bool = get(&row, 1)?;
        match current {
            None => Err(Error::not_found("card", card)),
            Some(_) if written => Ok(()),
            Some(k) if k != expected => {
                Err(Error::conflict("card", card, "sealed with another key"))
            }
            Some(_) => Err(Error::KeyNotActive {
                key: key.to_string(),
            }),
        }
    }

    async fn cards_to_reindex(
        &self,
        tenant: &TenantId,
        scheme: IndexScheme,
        max: usize,
    ) -> Result<Vec<StoredCard>> {
        let conn = self.conn().await?;
        let stmt = conn.prepare(&TO_REINDEX).await?;
        let rows = conn
            .client()
            .query(
                &stmt,
                &[&tenant.as_str(), &scheme_column(scheme), &limit(max)],
            )
            .await
            .map_err(db)?;
        rows.iter().map(stored_card).collect()
    }

    async fn reindex_cards(
        &self,
        tenant: &TenantId,
        changes: &[IndexChange],
    ) -> Result<Vec<Reindexed>> {
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        let name = tenant.as_str();
        let columns: Vec<(&[u8], &[u8], i16)> = changes
            .iter()
            .map(|c| {
                (
                    c.from.as_bytes().as_slice(),
                    c.to.as_bytes().as_slice(),
                    scheme_column(c.scheme),
                )
            })
            .collect();
        let params: Vec<[&(dyn tokio_postgres::types::ToSql + Sync); 5]> = changes
            .iter()
            .zip(&columns)
            .map(|(c, (from, to, scheme))| {
                [
                    &name as &(dyn tokio_postgres::types::ToSql + Sync),
                    c.card.as_uuid(),
                    from,
                    to,
                    scheme,
                ]
            })
            .collect();
        let mut conn = self.conn().await?;
        let stmt = conn.prepare(REINDEX).await?;
        conn.in_txn = true;
        let c = conn.client();
        let outcome = async {
            c.batch_execute("BEGIN").await.map_err(db)?;
            // Each change is its own statement, run in order: a change sees what the ones
            // before it did (a card moved to an index, or off one).
            let rows = pipelined(&params, |p| c.query_one(&stmt, p)).await;
            rows.into_iter()
                .map(|row| {
                    let row = row.map_err(db)?;
                    let moved: bool = get(&row, 0)?;
                    let holder: Option<Uuid> = get(&row, 1)?;
                    Ok(match (moved, holder) {
                        (false, _) => Reindexed::Stale,
                        (true, None) => Reindexed::Moved,
                        (true, Some(holder)) => Reindexed::Duplicate {
                            holder: CardId::from_uuid(holder),
                        },
                    })
                })
                .collect::<Result<Vec<_>>>()
        }
        .await;
        conn.finish(outcome).await
    }

    async fn withdraw_cards(
        &self,
        tenant: &TenantId,
        cards: &[CardId],
        now: DateTime<Utc>,
    ) -> Result<Vec<CardId>> {
        if cards.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<Uuid> = cards.iter().map(|c| *c.as_uuid()).collect();
        let name = tenant.as_str();
        let at = micros(now);
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&name, &ids, &at];
        let mut conn = self.conn().await?;
        let stmt = conn.prepare(&WITHDRAW_BY_ID).await?;
        conn.in_txn = true;
        let c = conn.client();
        let (begin, first) = tokio::join!(
            biased;
            c.batch_execute("BEGIN"),
            c.query_one(&stmt, &params),
        );
        let outcome = async {
            begin.map_err(db)?;
            let first = first.map_err(db)?;
            withdraw_rounds(&conn, tenant, at, first).await
        }
        .await;
        let withdrawn: HashSet<Uuid> = conn.finish(outcome).await?.into_iter().collect();
        // In the order asked, each once.
        let mut seen = HashSet::new();
        Ok(cards
            .iter()
            .copied()
            .filter(|c| withdrawn.contains(c.as_uuid()) && seen.insert(*c))
            .collect())
    }
}

/// An index scheme as its column value.
pub(crate) fn scheme_column(scheme: IndexScheme) -> i16 {
    i16::from(scheme.as_u8())
}

#[cfg(test)]
mod tests {
    /// The listing of cards to re-index reaches `cards_old_scheme` only while both name the
    /// same schemes: a newer current scheme needs a migration with a new index.
    #[test]
    fn cards_to_reindex_names_the_predicate_of_its_index() {
        let migration = include_str!("../migrations/0004_withdrawn_cards_index_schemes.sql");
        let predicate = format!("index_scheme < {}", super::OLD_SCHEMES_BELOW);
        assert!(migration.contains(&format!("ON cards (tenant, id) WHERE {predicate};")));
        assert!(super::TO_REINDEX.contains(&predicate));
    }
}
