//! `VaultStore`: one row per card key, its state and holding order in columns, and the available
//! ones also in the `free_cards` queue; allocation deletes the oldest queue rows it can lock
//! (`FOR UPDATE SKIP LOCKED`, card order), merged with lapsed reservations.

use std::collections::HashSet;
use std::sync::LazyLock;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use quanyi_core::{BatchId, CardId, OrderId, SkuId, TenantId};
use quanyi_storage::{
    CardState, Error, HeldCard, InsertCardsOutcome, NewCard, OrderChange, Result, StockCount,
    StoredCard, VaultStore,
};
use quanyi_vault::{BlindIndex, KeyId, SealedCard, SealedValue};
use tokio_postgres::Row;
use uuid::Uuid;

use crate::PgStore;
use crate::codec::{from_micros, get, limit, micros, tenant, to_u64};
use crate::error::{corrupt, db};

const CARD_COLUMNS: &str = "id, tenant, sku, batch, blind_index, code, secret, key_id, state, \
                            order_id, reserved_until, sold_at, imported_at";

/// $1 tenant, $2 ids, $3 SKUs, $4 batches, $5 blind indexes, $6 codes, $7 secrets, $8 key ids,
/// $9 now. A blind index the tenant holds, or one repeated earlier in the batch, is skipped.
pub(crate) const INSERT: &str = "WITH taken AS (SELECT c.id FROM unnest($2::uuid[]) AS u(id) \
                       JOIN cards c ON c.id = u.id LIMIT 1), \
     ins AS ( \
         INSERT INTO cards (id, tenant, sku, batch, blind_index, code, secret, key_id, state, imported_at) \
         SELECT u.id, $1, u.sku, u.batch, u.bi, u.code, u.secret, u.key_id, 'available', $9 \
         FROM unnest($2::uuid[], $3::uuid[], $4::uuid[], $5::bytea[], $6::bytea[], $7::bytea[], $8::bigint[]) \
              WITH ORDINALITY AS u(id, sku, batch, bi, code, secret, key_id, ord) \
         WHERE NOT EXISTS (SELECT 1 FROM taken) \
         ORDER BY u.ord \
         ON CONFLICT ON CONSTRAINT cards_blind_index_key DO NOTHING \
         RETURNING id, sku \
     ), \
     free AS (INSERT INTO free_cards (tenant, sku, id) SELECT $1, sku, id FROM ins) \
     SELECT (SELECT id FROM taken), ARRAY(SELECT id FROM ins)";

/// The CTEs that pick cards for the rows of `wanted` (columns `sku`, `qty`, `ord`), oldest card
/// first, among the free ones (`free_cards`) and the reservations that lapsed at `now` (the
/// first two parameters are SQL expressions for the tenant and now; `lapsed_filter` narrows
/// the lapsed ones further). Defines `free_pick`, `lapsed_pick` and
/// `pick (ord, sku, id, free, fctid)`: at most `qty` cards per row, each locked (rows other
/// transactions hold are skipped); `fctid` is the locked queue row's tuple id (free cards only).
/// The caller deletes the picked free rows from `free_cards` when it takes them.
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
             SELECT w.ord, w.sku, c.id FROM {wanted} w \
             CROSS JOIN LATERAL ( \
                 SELECT id FROM cards \
                 WHERE tenant = {tenant} AND sku = w.sku AND state = 'reserved' \
                   AND reserved_until <= {now}{lapsed_filter} \
                 ORDER BY id LIMIT w.qty \
                 FOR UPDATE SKIP LOCKED \
             ) c), \
         pick AS ( \
             SELECT u.ord, u.sku, u.id, u.free, u.fctid FROM ( \
                 SELECT a.ord, a.sku, a.id, a.free, a.fctid, w.qty, \
                        row_number() OVER (PARTITION BY a.ord ORDER BY a.id) AS rn \
                 FROM (SELECT ord, sku, id, true AS free, fctid FROM free_pick \
                       UNION ALL SELECT ord, sku, id, false, NULL::tid FROM lapsed_pick) a \
                 JOIN {wanted} w ON w.ord = a.ord) u \
             WHERE u.rn <= u.qty)"
    )
}

/// Deletes the free cards of `pick` from the queue when `condition` holds, by the tuple ids of
/// the rows `pick` locked: a TID scan, which no estimate can turn into a scan of the queue
/// (with statistics, the planner took a few picked cards for the whole SKU and hash-joined a
/// sequential scan of `free_cards`). A locked row cannot move or go before the statement ends.
pub(crate) fn take_free_sql(tenant: &str, condition: &str) -> String {
    format!(
        "DELETE FROM free_cards f \
         WHERE f.ctid = ANY(ARRAY(SELECT fctid FROM pick WHERE free)) \
           AND f.tenant = {tenant} AND {condition}"
    )
}

/// $1 tenant, $2 SKU, $3 order, $4 quantity, $5 until, $6 now.
pub(crate) static RESERVE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH held AS ( \
             SELECT id, state, hold_pos FROM cards \
             WHERE order_id = $3 AND tenant = $1 AND sku = $2 AND state <> 'available'), \
         wanted AS (SELECT $2::uuid AS sku, \
                           CASE WHEN EXISTS (SELECT 1 FROM held) THEN 0 ELSE $4::bigint END AS qty, \
                           1 AS ord), \
         {pick}, \
         ok AS (SELECT count(*) = $4 AS v FROM pick), \
         base AS (SELECT COALESCE(max(hold_pos), 0) AS v FROM cards WHERE order_id = $3), \
         take AS ({take}), \
         upd AS ( \
             UPDATE cards c SET state = 'reserved', order_id = $3, reserved_until = $5, \
                    hold_pos = (SELECT v FROM base) + p.pos \
             FROM (SELECT id, row_number() OVER (ORDER BY id) AS pos FROM pick) p \
             WHERE c.id = ANY(ARRAY(SELECT id FROM pick)) AND c.id = p.id AND (SELECT v FROM ok)) \
         SELECT ARRAY(SELECT id FROM held ORDER BY state = 'reserved', hold_pos), \
                ARRAY(SELECT id FROM pick ORDER BY id), (SELECT v FROM ok)",
        pick = pick_ctes("wanted", "$1", "$6", ""),
        take = take_free_sql("$1", "(SELECT v FROM ok)"),
    )
});

/// $1 tenant, $2 SKU, $3 order, $4 quantity, $5 now. The order's reserved cards first (any
/// deadline), then free ones.
pub(crate) static COMMIT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH held AS ( \
             SELECT id, state, hold_pos FROM cards \
             WHERE order_id = $3 AND tenant = $1 AND sku = $2 AND state <> 'available' \
             FOR UPDATE), \
         nsold AS (SELECT count(*) AS n FROM held WHERE state = 'sold'), \
         need AS (SELECT GREATEST($4 - (SELECT n FROM nsold), 0) AS v), \
         mine AS (SELECT id, hold_pos FROM held WHERE state = 'reserved' \
                  ORDER BY hold_pos LIMIT (SELECT v FROM need)), \
         wanted AS (SELECT $2::uuid AS sku, \
                           (SELECT v FROM need) - (SELECT count(*) FROM mine) AS qty, 1 AS ord), \
         {pick}, \
         ok AS (SELECT (SELECT count(*) FROM mine) + (SELECT count(*) FROM pick) \
                       = (SELECT v FROM need) AS v), \
         base AS (SELECT COALESCE(max(hold_pos), 0) AS v FROM cards WHERE order_id = $3), \
         take AS ({take}), \
         upd AS ( \
             UPDATE cards c SET state = 'sold', sold_at = $5, reserved_until = NULL, order_id = $3, \
                    hold_pos = COALESCE((SELECT v FROM base) + p.pos, c.hold_pos) \
             FROM (SELECT id, NULL::bigint AS pos FROM mine \
                   UNION ALL \
                   SELECT id, row_number() OVER (ORDER BY id) FROM pick) p \
             WHERE c.id = ANY(ARRAY(SELECT id FROM mine UNION ALL SELECT id FROM pick)) \
               AND c.id = p.id AND (SELECT v FROM ok)) \
         SELECT (SELECT n FROM nsold), \
                ARRAY(SELECT id FROM held WHERE state = 'sold' ORDER BY hold_pos), \
                ARRAY(SELECT id FROM mine ORDER BY hold_pos), ARRAY(SELECT id FROM pick ORDER BY id), \
                (SELECT v FROM ok)",
        pick = pick_ctes("wanted", "$1", "$5", " AND order_id <> $3"),
        take = take_free_sql("$1", "(SELECT v FROM ok)"),
    )
});

const HELD: &str = "SELECT id, sku, state, order_id, reserved_until, sold_at FROM cards \
                    WHERE order_id = $2 AND tenant = $1 ORDER BY id";

/// Returns the order's reserved cards to stock (and to the free queue); answers how many.
const RELEASE: &str = "WITH rel AS ( \
         UPDATE cards SET state = 'available', order_id = NULL, reserved_until = NULL, \
                hold_pos = NULL \
         WHERE order_id = $2 AND tenant = $1 AND state = 'reserved' \
         RETURNING sku, id), \
     free AS (INSERT INTO free_cards (tenant, sku, id) SELECT $1, sku, id FROM rel) \
     SELECT count(*) FROM rel";

pub(crate) const STOCK: &str = "SELECT \
        (SELECT count(*) FROM free_cards WHERE tenant = $1 AND sku = $2) \
          + (SELECT count(*) FROM cards \
             WHERE tenant = $1 AND sku = $2 AND state = 'reserved' AND reserved_until <= $3), \
        (SELECT count(*) FROM cards \
         WHERE tenant = $1 AND sku = $2 AND state = 'reserved' AND reserved_until > $3), \
        (SELECT count(*) FROM cards WHERE tenant = $1 AND sku = $2 AND state = 'sold')";

/// $1 tenant, $2 card, $3 expected key, $4 code, $5 secret, $6 new key.
const REPLACE: &str = "WITH cur AS (SELECT key_id FROM cards WHERE id = $2 AND tenant = $1 FOR UPDATE), \
     upd AS (UPDATE cards SET code = $4, secret = $5, key_id = $6 \
             WHERE id = $2 AND tenant = $1 AND (SELECT key_id FROM cur) = $3 RETURNING 1) \
     SELECT (SELECT key_id FROM cur), EXISTS (SELECT 1 FROM upd)";

fn key_id(value: i64) -> Result<KeyId> {
    u32::try_from(value)
        .map(KeyId)
        .map_err(|_| corrupt("key id", value))
}

fn card_ids(ids: Vec<Uuid>) -> Vec<CardId> {
    ids.into_iter().map(CardId::from_uuid).collect()
}

/// The state columns (state, order_id, reserved_until, sold_at) from `at`.
fn state_at(row: &Row, at: usize) -> Result<CardState> {
    let state: &str = get(row, at)?;
    let order: Option<Uuid> = get(row, at + 1)?;
    let until: Option<i64> = get(row, at + 2)?;
    let sold_at: Option<i64> = get(row, at + 3)?;
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
    Ok(StoredCard {
        id: CardId::from_uuid(get(row, 0)?),
        tenant: tenant(get(row, 1)?)?,
        sku: SkuId::from_uuid(get(row, 2)?),
        batch: BatchId::from_uuid(get(row, 3)?),
        blind_index: BlindIndex::from_bytes(index),
        sealed: SealedCard {
            code: SealedValue::from_bytes(get(row, 5)?),
            secret: secret.map(SealedValue::from_bytes),
        },
        key_id: key_id(get(row, 7)?)?,
        state: state_at(row, 8)?,
        imported_at: from_micros(get(row, 12)?)?,
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
    ) -> Result<InsertCardsOutcome> {
        if cards.is_empty() {
            return Ok(InsertCardsOutcome::default());
        }
        let mut ids = Vec::with_capacity(cards.len());
        let mut skus = Vec::with_capacity(cards.len());
        let mut batches = Vec::with_capacity(cards.len());
        let mut indexes = Vec::with_capacity(cards.len());
        let mut codes = Vec::with_capacity(cards.len());
        let mut secrets = Vec::with_capacity(cards.len());
        let mut keys = Vec::with_capacity(cards.len());
        for c in cards {
            ids.push(*c.id.as_uuid());
            skus.push(*c.sku.as_uuid());
            batches.push(*c.batch.as_uuid());
            indexes.push(c.blind_index.as_bytes().as_slice());
            codes.push(c.sealed.code.as_bytes());
            secrets.push(c.sealed.secret.as_ref().map(SealedValue::as_bytes));
            keys.push(i64::from(c.key_id.0));
        }
        let conn = self.conn().await?;
        let stmt = conn.prepare(INSERT).await?;
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
                ],
            )
            .await
            .map_err(db)?;
        if let Some(taken) = get::<Option<Uuid>>(&row, 0)? {
            return Err(Error::conflict(
                "card",
                CardId::from_uuid(taken),
                "id already stored",
            ));
        }
        let stored: HashSet<Uuid> = get::<Vec<Uuid>>(&row, 1)?.into_iter().collect();
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
        let stmt = conn.prepare(RELEASE).await?;
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
            "SELECT {CARD_COLUMNS} FROM cards \
             WHERE order_id = $2 AND tenant = $1 AND state = 'sold' ORDER BY hold_pos"
        );
        let stmt = conn.prepare(&sql).await?;
        let rows = conn
            .client()
            .query(&stmt, &[&tenant.as_str(), order.as_uuid()])
            .await
            .map_err(db)?;
        rows.iter().map(stored_card).collect()
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
        let conn = self.conn().await?;
        let stmt = conn.prepare(REPLACE).await?;
        let row = conn
            .client()
            .query_one(
                &stmt,
                &[
                    &tenant.as_str(),
                    card.as_uuid(),
                    &i64::from(expected_key.0),
                    &sealed.code.as_bytes(),
                    &sealed.secret.as_ref().map(SealedValue::as_bytes),
                    &i64::from(key.0),
                ],
            )
            .await
            .map_err(db)?;
        let current: Option<i64> = get(&row, 0)?;
        let written: bool = get(&row, 1)?;
        match current {
            None => Err(Error::not_found("card", card)),
            Some(_) if written => Ok(()),
            Some(_) => Err(Error::conflict("card", card, "sealed with another key")),
        }
    }
}
