//! Sealed card keys: import, reservation, commit, release, stock and resealing.

use std::collections::HashSet;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use quanyi_core::{BatchId, CardId, OrderId, SkuId, TenantId};
use quanyi_storage::{
    CardState, Error, HeldCard, InsertCardsOutcome, NewCard, OrderChange, Result, StockCount,
    StoredCard, VaultStore,
};
use quanyi_vault::{BlindIndex, KeyId, SealedCard, SealedValue};
use rusqlite::{OptionalExtension, Row, Transaction, params};

use crate::SqliteStore;
use crate::convert::{SqlResult, from_ts, limit, ts, uint, uint32, uuid};
use crate::orders::{apply_order_change, change_row, check_order_change};

/// The columns [`CardCols::read`] expects, in order.
const CARD_COLUMNS: &str = "id, tenant, sku, batch, blind_index, code, secret, key_id, state, \
                            order_id, until, sold_at, imported_at";

/// One card row as stored, before it is checked.
struct CardCols {
    id: [u8; 16],
    tenant: String,
    sku: [u8; 16],
    batch: [u8; 16],
    blind_index: [u8; 32],
    code: Vec<u8>,
    secret: Option<Vec<u8>>,
    key_id: i64,
    state: String,
    order_id: Option<[u8; 16]>,
    until: Option<i64>,
    sold_at: Option<i64>,
    imported_at: i64,
}

impl CardCols {
    fn read(r: &Row<'_>) -> rusqlite::Result<CardCols> {
        Ok(CardCols {
            id: r.get(0)?,
            tenant: r.get(1)?,
            sku: r.get(2)?,
            batch: r.get(3)?,
            blind_index: r.get(4)?,
            code: r.get(5)?,
            secret: r.get(6)?,
            key_id: r.get(7)?,
            state: r.get(8)?,
            order_id: r.get(9)?,
            until: r.get(10)?,
            sold_at: r.get(11)?,
            imported_at: r.get(12)?,
        })
    }

    fn state(&self) -> Result<CardState> {
        let id = CardId::from_uuid(uuid(self.id));
        let corrupt = || {
            Error::Corrupt(format!(
                "card {id} has state {} without its columns",
                self.state
            ))
        };
        let order = || self.order_id.map(|o| OrderId::from_uuid(uuid(o)));
        match self.state.as_str() {
            "available" => Ok(CardState::Available),
            "reserved" => Ok(CardState::Reserved {
                order: order().ok_or_else(corrupt)?,
                until: from_ts(self.until.ok_or_else(corrupt)?),
            }),
            "sold" => Ok(CardState::Sold {
                order: order().ok_or_else(corrupt)?,
                at: from_ts(self.sold_at.ok_or_else(corrupt)?),
            }),
            other => Err(Error::Corrupt(format!(
                "card {id} has unknown state {other}"
            ))),
        }
    }

    fn into_card(self) -> Result<StoredCard> {
        let state = self.state()?;
        Ok(StoredCard {
            id: CardId::from_uuid(uuid(self.id)),
            tenant: TenantId::new(self.tenant)
                .map_err(|e| Error::Corrupt(format!("stored tenant: {e}")))?,
            sku: SkuId::from_uuid(uuid(self.sku)),
            batch: BatchId::from_uuid(uuid(self.batch)),
            blind_index: BlindIndex::from_bytes(self.blind_index),
            sealed: SealedCard {
                code: SealedValue::from_bytes(self.code),
                secret: self.secret.map(SealedValue::from_bytes),
            },
            key_id: KeyId(uint32(self.key_id, "card key id")?),
            state,
            imported_at: from_ts(self.imported_at),
        })
    }
}

fn ids(rows: Vec<[u8; 16]>) -> Vec<CardId> {
    rows.into_iter()
        .map(|b| CardId::from_uuid(uuid(b)))
        .collect()
}

/// Up to `want` cards of a SKU free at `now` (available, or reserved until `now` or earlier),
/// oldest id first, leaving out `exclude`.
pub(crate) fn free_cards(
    tx: &Transaction<'_>,
    tenant: &str,
    sku: SkuId,
    now: i64,
    want: usize,
    exclude: &[CardId],
) -> Result<Vec<CardId>> {
    let n = limit(want.saturating_add(exclude.len()));
    let available: Vec<[u8; 16]> = tx
        .prepare_cached(
            "SELECT id FROM cards WHERE tenant = ?1 AND sku = ?2 AND state = 'available'
             ORDER BY id LIMIT ?3",
        )
        .db()?
        .query_map(params![tenant, sku.as_bytes(), n], |r| r.get(0))
        .db()?
        .collect::<rusqlite::Result<_>>()
        .db()?;
    let lapsed: Vec<[u8; 16]> = tx
        .prepare_cached(
            "SELECT id FROM cards WHERE tenant = ?1 AND sku = ?2 AND state = 'reserved'
               AND until <= ?3
             ORDER BY id LIMIT ?4",
        )
        .db()?
        .query_map(params![tenant, sku.as_bytes(), now, n], |r| r.get(0))
        .db()?
        .collect::<rusqlite::Result<_>>()
        .db()?;
    let mut all = ids(available);
    all.extend(ids(lapsed));
    all.sort_unstable();
    all.retain(|id| !exclude.contains(id));
    all.truncate(want);
    Ok(all)
}

/// Stores one card as available (a caller may then move it to sold in the same transaction).
fn insert_card(tx: &Transaction<'_>, tenant: &str, card: &NewCard, now: i64) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO cards (id, tenant, sku, batch, blind_index, code, secret, key_id, state,
                            imported_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'available', ?9)",
    )
    .db()?
    .execute(params![
        card.id.as_bytes(),
        tenant,
        card.sku.as_bytes(),
        card.batch.as_bytes(),
        card.blind_index.as_bytes(),
        card.sealed.code.as_bytes(),
        card.sealed.secret.as_ref().map(SealedValue::as_bytes),
        card.key_id.0,
        now
    ])
    .db()?;
    Ok(())
}

/// The next position in the order's list of held cards.
fn next_hold_seq(tx: &Transaction<'_>, order: OrderId) -> Result<i64> {
    tx.prepare_cached("SELECT COALESCE(MAX(hold_seq), 0) + 1 FROM cards WHERE order_id = ?1")
        .db()?
        .query_row(params![order.as_bytes()], |r| r.get(0))
        .db()
}

/// Reserves the cards for the order until `until`, in the given order.
pub(crate) fn reserve(
    tx: &Transaction<'_>,
    order: OrderId,
    cards: &[CardId],
    until: i64,
) -> Result<()> {
    if cards.is_empty() {
        return Ok(());
    }
    let first = next_hold_seq(tx, order)?;
    let mut stmt = tx
        .prepare_cached(
            "UPDATE cards SET state = 'reserved', order_id = ?2, until = ?3, sold_at = NULL,
                              hold_seq = ?4
             WHERE id = ?1",
        )
        .db()?;
    for (seq, id) in (first..).zip(cards) {
        stmt.execute(params![id.as_bytes(), order.as_bytes(), until, seq])
            .db()?;
    }
    Ok(())
}

/// Marks cards the order does not hold yet sold to it, in the given order.
fn sell_free(tx: &Transaction<'_>, order: OrderId, cards: &[CardId], now: i64) -> Result<()> {
    if cards.is_empty() {
        return Ok(());
    }
    let first = next_hold_seq(tx, order)?;
    let mut stmt = tx
        .prepare_cached(
            "UPDATE cards SET state = 'sold', order_id = ?2, until = NULL, sold_at = ?3,
                              hold_seq = ?4
             WHERE id = ?1",
        )
        .db()?;
    for (seq, id) in (first..).zip(cards) {
        stmt.execute(params![id.as_bytes(), order.as_bytes(), now, seq])
            .db()?;
    }
    Ok(())
}

/// Marks cards reserved for their order sold to it; sold ones stay as they are.
pub(crate) fn sell_held(tx: &Transaction<'_>, cards: &[CardId], now: i64) -> Result<()> {
    let mut stmt = tx
        .prepare_cached(
            "UPDATE cards SET state = 'sold', until = NULL, sold_at = ?2
             WHERE id = ?1 AND state = 'reserved'",
        )
        .db()?;
    for id in cards {
        stmt.execute(params![id.as_bytes(), now]).db()?;
    }
    Ok(())
}

/// True when the card belongs to the tenant and is reserved for or sold to the order.
pub(crate) fn is_held_by(
    tx: &Transaction<'_>,
    tenant: &str,
    order: OrderId,
    card: CardId,
) -> Result<bool> {
    tx.prepare_cached(
        "SELECT 1 FROM cards WHERE id = ?1 AND tenant = ?2 AND order_id = ?3
           AND state IN ('reserved', 'sold')",
    )
    .db()?
    .exists(params![card.as_bytes(), tenant, order.as_bytes()])
    .db()
}

/// The cards of a SKU the order holds: (reserved, sold), each in the order's list order.
fn held_by(
    tx: &Transaction<'_>,
    tenant: &str,
    order: OrderId,
    sku: SkuId,
) -> Result<(Vec<CardId>, Vec<CardId>)> {
    let rows: Vec<([u8; 16], String)> = tx
        .prepare_cached(
            "SELECT id, state FROM cards WHERE order_id = ?1 AND tenant = ?2 AND sku = ?3
             ORDER BY hold_seq, id",
        )
        .db()?
        .query_map(params![order.as_bytes(), tenant, sku.as_bytes()], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .db()?
        .collect::<rusqlite::Result<_>>()
        .db()?;
    let mut reserved = Vec::new();
    let mut sold = Vec::new();
    for (id, state) in rows {
        let id = CardId::from_uuid(uuid(id));
        match state.as_str() {
            "reserved" => reserved.push(id),
            "sold" => sold.push(id),
            _ => {}
        }
    }
    Ok((reserved, sold))
}

fn cards_where(
    tx: &Transaction<'_>,
    filter: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<StoredCard>> {
    let sql = format!("SELECT {CARD_COLUMNS} FROM cards WHERE {filter}");
    let rows: Vec<CardCols> = tx
        .prepare_cached(&sql)
        .db()?
        .query_map(params, CardCols::read)
        .db()?
        .collect::<rusqlite::Result<_>>()
        .db()?;
    rows.into_iter().map(CardCols::into_card).collect()
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[async_trait]
impl VaultStore for SqliteStore {
    async fn insert_cards(
        &self,
        tenant: &TenantId,
        cards: &[NewCard],
        now: DateTime<Utc>,
    ) -> Result<InsertCardsOutcome> {
        let tenant = tenant.as_str().to_owned();
        let cards = cards.to_vec();
        let now = ts(now)?;
        self.pool
            .write(move |tx| {
                {
                    let mut exists = tx
                        .prepare_cached("SELECT 1 FROM cards WHERE id = ?1")
                        .db()?;
                    for c in &cards {
                        if exists.exists(params![c.id.as_bytes()]).db()? {
                            return Err(Error::conflict("card", c.id, "id already stored"));
                        }
                    }
                }
                let mut outcome = InsertCardsOutcome::default();
                let mut seen = HashSet::new();
                let mut known = tx
                    .prepare_cached("SELECT 1 FROM cards WHERE tenant = ?1 AND blind_index = ?2")
                    .db()?;
                for (i, c) in cards.iter().enumerate() {
                    let index = c.blind_index.as_bytes();
                    if !seen.insert(c.blind_index) || known.exists(params![tenant, index]).db()? {
                        outcome.duplicates.push(i);
                        continue;
                    }
                    insert_card(tx, &tenant, c, now)?;
                    outcome.inserted.push(c.id);
                }
                Ok(outcome)
            })
            .await
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
        let tenant = tenant.as_str().to_owned();
        let (until, now) = (ts(until)?, ts(now)?);
        self.pool
            .write(move |tx| {
                let (reserved, sold) = held_by(tx, &tenant, order, sku)?;
                if !reserved.is_empty() || !sold.is_empty() {
                    return Ok(sold.into_iter().chain(reserved).collect());
                }
                let want = usize::try_from(quantity).unwrap_or(usize::MAX);
                let free = free_cards(tx, &tenant, sku, now, want, &[])?;
                if free.len() < want {
                    return Err(Error::OutOfStock {
                        sku,
                        requested: quantity,
                        available: free.len() as u64,
                    });
                }
                reserve(tx, order, &free, until)?;
                Ok(free)
            })
            .await
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
        let tenant = tenant.as_str().to_owned();
        let now = ts(now)?;
        self.pool
            .write(move |tx| {
                let (reserved, sold) = held_by(tx, &tenant, order, sku)?;
                let want = usize::try_from(quantity).unwrap_or(usize::MAX);
                if sold.len() >= want {
                    return Ok(sold);
                }
                let need = want - sold.len();
                let mut chosen: Vec<CardId> = reserved.into_iter().take(need).collect();
                sell_held(tx, &chosen, now)?;
                if chosen.len() < need {
                    let short = need - chosen.len();
                    let free = free_cards(tx, &tenant, sku, now, short, &chosen)?;
                    if free.len() < short {
                        return Err(Error::OutOfStock {
                            sku,
                            requested: quantity,
                            available: (free.len() + chosen.len() + sold.len()) as u64,
                        });
                    }
                    sell_free(tx, order, &free, now)?;
                    chosen.extend(free);
                }
                Ok(sold.into_iter().chain(chosen).collect())
            })
            .await
    }

    async fn insert_sold_cards(
        &self,
        tenant: &TenantId,
        cards: &[NewCard],
        change: OrderChange<'_>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        if change.order.tenant() != tenant {
            return Err(Error::Invalid("order of another tenant".into()));
        }
        let tenant = tenant.as_str().to_owned();
        let order = change.order.id();
        let c = change_row(&change)?;
        let cards = cards.to_vec();
        let now = ts(now)?;
        self.pool
            .write(move |tx| {
                check_order_change(tx, &c)?;
                {
                    let mut exists = tx
                        .prepare_cached("SELECT 1 FROM cards WHERE id = ?1")
                        .db()?;
                    let mut known = tx
                        .prepare_cached(
                            "SELECT 1 FROM cards WHERE tenant = ?1 AND blind_index = ?2",
                        )
                        .db()?;
                    let mut ids = HashSet::new();
                    let mut indexes = HashSet::new();
                    for card in &cards {
                        if !ids.insert(card.id)
                            || exists.exists(params![card.id.as_bytes()]).db()?
                        {
                            return Err(Error::conflict("card", card.id, "id already stored"));
                        }
                        let index = card.blind_index.as_bytes();
                        if !indexes.insert(card.blind_index)
                            || known.exists(params![tenant, index]).db()?
                        {
                            return Err(Error::conflict(
                                "card",
                                card.id,
                                "blind index already stored",
                            ));
                        }
                    }
                }
                for card in &cards {
                    insert_card(tx, &tenant, card, now)?;
                }
                let ids: Vec<CardId> = cards.iter().map(|card| card.id).collect();
                sell_free(tx, order, &ids, now)?;
                apply_order_change(tx, &c)
            })
            .await
    }

    async fn held_cards(&self, tenant: &TenantId, order: OrderId) -> Result<Vec<HeldCard>> {
        let tenant = tenant.as_str().to_owned();
        self.pool
            .read(move |tx| {
                let cards = cards_where(
                    tx,
                    "order_id = ?1 AND tenant = ?2 ORDER BY id",
                    params![order.as_bytes(), tenant],
                )?;
                Ok(cards
                    .into_iter()
                    .map(|c| HeldCard {
                        id: c.id,
                        sku: c.sku,
                        state: c.state,
                    })
                    .collect())
            })
            .await
    }

    async fn release_cards(&self, tenant: &TenantId, order: OrderId) -> Result<u32> {
        let tenant = tenant.as_str().to_owned();
        self.pool
            .write(move |tx| {
                let n = tx
                    .prepare_cached(
                        "UPDATE cards SET state = 'available', order_id = NULL, until = NULL,
                                          hold_seq = NULL
                         WHERE order_id = ?1 AND tenant = ?2 AND state = 'reserved'",
                    )
                    .db()?
                    .execute(params![order.as_bytes(), tenant])
                    .db()?;
                Ok(count(n))
            })
            .await
    }

    async fn order_cards(&self, tenant: &TenantId, order: OrderId) -> Result<Vec<StoredCard>> {
        let tenant = tenant.as_str().to_owned();
        self.pool
            .read(move |tx| {
                cards_where(
                    tx,
                    "order_id = ?1 AND tenant = ?2 AND state = 'sold' ORDER BY hold_seq, id",
                    params![order.as_bytes(), tenant],
                )
            })
            .await
    }

    async fn card(&self, tenant: &TenantId, id: CardId) -> Result<Option<StoredCard>> {
        let tenant = tenant.as_str().to_owned();
        self.pool
            .read(move |tx| {
                let mut cards = cards_where(
                    tx,
                    "id = ?1 AND tenant = ?2",
                    params![id.as_bytes(), tenant],
                )?;
                Ok(cards.pop())
            })
            .await
    }

    async fn stock(&self, tenant: &TenantId, sku: SkuId, now: DateTime<Utc>) -> Result<StockCount> {
        let tenant = tenant.as_str().to_owned();
        let now = ts(now)?;
        self.pool
            .read(move |tx| {
                let (available, lapsed, reserved, sold): (i64, i64, i64, i64) = tx
                    .prepare_cached(
                        "SELECT
                           (SELECT COUNT(*) FROM cards
                             WHERE tenant = ?1 AND sku = ?2 AND state = 'available'),
                           (SELECT COUNT(*) FROM cards
                             WHERE tenant = ?1 AND sku = ?2 AND state = 'reserved' AND until <= ?3),
                           (SELECT COUNT(*) FROM cards
                             WHERE tenant = ?1 AND sku = ?2 AND state = 'reserved' AND until > ?3),
                           (SELECT COUNT(*) FROM cards
                             WHERE tenant = ?1 AND sku = ?2 AND state = 'sold')",
                    )
                    .db()?
                    .query_row(params![tenant, sku.as_bytes(), now], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                    })
                    .db()?;
                Ok(StockCount {
                    available: uint(available, "count")? + uint(lapsed, "count")?,
                    reserved: uint(reserved, "count")?,
                    sold: uint(sold, "count")?,
                })
            })
            .await
    }

    async fn cards_sealed_with(
        &self,
        tenant: &TenantId,
        key: KeyId,
        limit_to: usize,
    ) -> Result<Vec<StoredCard>> {
        let tenant = tenant.as_str().to_owned();
        let n = limit(limit_to);
        self.pool
            .read(move |tx| {
                cards_where(
                    tx,
                    "tenant = ?1 AND key_id = ?2 ORDER BY id LIMIT ?3",
                    params![tenant, key.0, n],
                )
            })
            .await
    }

    async fn replace_sealed(
        &self,
        tenant: &TenantId,
        card: CardId,
        expected_key: KeyId,
        sealed: &SealedCard,
        key_id: KeyId,
    ) -> Result<()> {
        let tenant = tenant.as_str().to_owned();
        let code = sealed.code.as_bytes().to_vec();
        let secret = sealed.secret.as_ref().map(|s| s.as_bytes().to_vec());
        self.pool
            .write(move |tx| {
                let stored: Option<i64> = tx
                    .prepare_cached("SELECT key_id FROM cards WHERE id = ?1 AND tenant = ?2")
                    .db()?
                    .query_row(params![card.as_bytes(), tenant], |r| r.get(0))
                    .optional()
                    .db()?;
                let stored = stored.ok_or_else(|| Error::not_found("card", card))?;
                if uint32(stored, "card key id")? != expected_key.0 {
                    return Err(Error::conflict("card", card, "sealed with another key"));
                }
                tx.prepare_cached(
                    "UPDATE cards SET code = ?2, secret = ?3, key_id = ?4 WHERE id = ?1",
                )
                .db()?
                .execute(params![card.as_bytes(), code, secret, key_id.0])
                .db()?;
                Ok(())
            })
            .await
    }
}
