//! Sealed card keys: import, reservation, commit, release, stock, resealing, re-indexing and
//! withdrawal.

use std::collections::HashSet;

use crate::logs::{trail_rows, write_trail};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use quanyi_core::{BatchId, CardId, OrderId, SkuId, TenantId};
use quanyi_storage::{
    CardState, Error, HeldCard, IndexChange, InsertCardsOutcome, NewCard, OrderChange, Reindexed,
    Result, StockCount, StoredCard, Trail, VaultStore,
};
use quanyi_vault::{BlindIndex, IndexScheme, KeyId, SealedCard, SealedValue};
use rusqlite::{OptionalExtension, Row, Transaction, params};

use crate::SqliteStore;
use crate::convert::{SqlResult, from_ts, limit, ts, uint, uint32, uuid};
use crate::orders::{apply_order_change, change_row, check_order_change};
use crate::rings::active_key;

/// The columns [`CardCols::read`] expects, in order.
const CARD_COLUMNS: &str = "id, tenant, sku, batch, blind_index, code, secret, key_id, state, \
                            order_id, until, sold_at, imported_at, index_scheme, withdrawn_at, \
                            revealed_at, voided_at";

/// The cards of a tenant indexed with a scheme before [`IndexScheme::Nfkc`], in card order (read
/// through the partial index `cards_to_reindex`, whose condition this repeats).
const CARDS_BEFORE_NFKC: &str = "tenant = ?1 AND index_scheme < 2 ORDER BY id LIMIT ?2";

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
    index_scheme: i64,
    withdrawn_at: Option<i64>,
    revealed_at: Option<i64>,
    voided_at: Option<i64>,
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
            index_scheme: r.get(13)?,
            withdrawn_at: r.get(14)?,
            revealed_at: r.get(15)?,
            voided_at: r.get(16)?,
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
            "withdrawn" => Ok(CardState::Withdrawn {
                at: from_ts(self.withdrawn_at.ok_or_else(corrupt)?),
            }),
            other => Err(Error::Corrupt(format!(
                "card {id} has unknown state {other}"
            ))),
        }
    }

    fn index_scheme(&self) -> Result<IndexScheme> {
        u8::try_from(self.index_scheme)
            .ok()
            .and_then(IndexScheme::from_u8)
            .ok_or_else(|| {
                Error::Corrupt(format!(
                    "card {} has unknown index scheme {}",
                    CardId::from_uuid(uuid(self.id)),
                    self.index_scheme
                ))
            })
    }

    fn into_card(self) -> Result<StoredCard> {
        let state = self.state()?;
        let index_scheme = self.index_scheme()?;
        Ok(StoredCard {
            id: CardId::from_uuid(uuid(self.id)),
            tenant: TenantId::new(self.tenant)
                .map_err(|e| Error::Corrupt(format!("stored tenant: {e}")))?,
            sku: SkuId::from_uuid(uuid(self.sku)),
            batch: BatchId::from_uuid(uuid(self.batch)),
            blind_index: BlindIndex::from_bytes(self.blind_index),
            index_scheme,
            sealed: SealedCard {
                code: SealedValue::from_bytes(self.code),
                secret: self.secret.map(SealedValue::from_bytes),
            },
            key_id: KeyId(uint32(self.key_id, "card key id")?),
            state,
            imported_at: from_ts(self.imported_at),
            revealed_at: self.revealed_at.map(from_ts),
            voided_at: self.voided_at.map(from_ts),
        })
    }
}

fn ids(rows: Vec<[u8; 16]>) -> Vec<CardId> {
    rows.into_iter()
        .map(|b| CardId::from_uuid(uuid(b)))
        .collect()
}

/// Available cards of a SKU, oldest id first.
pub(crate) const FREE_AVAILABLE: &str = "SELECT id FROM cards INDEXED BY cards_free
     WHERE tenant = ?1 AND sku = ?2 AND state = 'available' ORDER BY id";

/// Cards of a SKU reserved until `?3` or earlier, oldest id first.
pub(crate) const FREE_LAPSED: &str = "SELECT id FROM cards INDEXED BY cards_deadlines
     WHERE tenant = ?1 AND sku = ?2 AND state = 'reserved' AND until <= ?3 ORDER BY id";

/// The next position in an order's list of held cards.
pub(crate) const NEXT_HOLD_SEQ: &str =
    "SELECT COALESCE(MAX(hold_seq), 0) + 1 FROM cards WHERE order_id = ?1";

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
    let n = want.saturating_add(exclude.len());
    // Each query names its partial index: without statistics the planner may prefer the index
    // of every card of the SKU, which starts with the oldest (sold) cards. The rows come in
    // index order, so stepping `n` of them is the limit.
    let available: Vec<[u8; 16]> = tx
        .prepare_cached(FREE_AVAILABLE)
        .db()?
        .query_map(params![tenant, sku.as_bytes()], |r| r.get(0))
        .db()?
        .take(n)
        .collect::<rusqlite::Result<_>>()
        .db()?;
    let lapsed: Vec<[u8; 16]> = tx
        .prepare_cached(FREE_LAPSED)
        .db()?
        .query_map(params![tenant, sku.as_bytes(), now], |r| r.get(0))
        .db()?
        .take(n)
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
        "INSERT INTO cards (id, tenant, sku, batch, blind_index, index_scheme, code, secret,
                            key_id, state, imported_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'available', ?10)",
    )
    .db()?
    .execute(params![
        card.id.as_bytes(),
        tenant,
        card.sku.as_bytes(),
        card.batch.as_bytes(),
        card.blind_index.as_bytes(),
        card.index_scheme.as_u8(),
        card.sealed.code.as_bytes(),
        card.sealed.secret.as_ref().map(SealedValue::as_bytes),
        card.key_id.0,
        now
    ])
    .db()?;
    Ok(())
}

/// Refuses keys that are not the tenant's active key as the stored ring says inside this
/// write's transaction, which holds the write lock until it commits: a rotation stored before
/// is seen, and none can be stored before the commit. A tenant without a ring has no active key.
/// No key, no check.
fn check_keys(
    tx: &Transaction<'_>,
    tenant: &str,
    keys: impl IntoIterator<Item = KeyId>,
) -> Result<()> {
    let mut keys = keys.into_iter().peekable();
    if keys.peek().is_none() {
        return Ok(());
    }
    let active = active_key(tx, tenant)?;
    match keys.find(|k| Some(*k) != active) {
        Some(key) => Err(Error::KeyNotActive {
            key: key.to_string(),
        }),
        None => Ok(()),
    }
}

/// `Conflict` when a card id is stored (in any tenant) or repeats an earlier card of the call.
fn check_ids_new(tx: &Transaction<'_>, cards: &[NewCard]) -> Result<()> {
    let mut stored = tx
        .prepare_cached("SELECT 1 FROM cards WHERE id = ?1")
        .db()?;
    let mut ids = HashSet::with_capacity(cards.len());
    for c in cards {
        if !ids.insert(c.id) || stored.exists(params![c.id.as_bytes()]).db()? {
            return Err(Error::conflict("card", c.id, "id already stored"));
        }
    }
    Ok(())
}

/// The card of the tenant that holds a blind index (in any state, withdrawn included).
fn holder_of(tx: &Transaction<'_>, tenant: &str, index: &BlindIndex) -> Result<Option<CardId>> {
    let id: Option<[u8; 16]> = tx
        .prepare_cached("SELECT id FROM cards WHERE tenant = ?1 AND blind_index = ?2")
        .db()?
        .query_row(params![tenant, index.as_bytes()], |r| r.get(0))
        .optional()
        .db()?;
    Ok(id.map(|b| CardId::from_uuid(uuid(b))))
}

/// True when the tenant holds the card's blind index or its legacy index.
fn holds_index_of(tx: &Transaction<'_>, tenant: &str, card: &NewCard) -> Result<bool> {
    for index in std::iter::once(card.blind_index).chain(card.legacy_index) {
        if holder_of(tx, tenant, &index)?.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Takes the tenant's card out of sale at `now` when it is unsold (available, or reserved: the
/// order no longer holds it); false when it is sold, withdrawn or unknown.
fn withdraw(tx: &Transaction<'_>, tenant: &str, card: CardId, now: i64) -> Result<bool> {
    let n = tx
        .prepare_cached(
            "UPDATE cards SET state = 'withdrawn', withdrawn_at = ?3, order_id = NULL,
                              until = NULL, hold_seq = NULL
             WHERE id = ?1 AND tenant = ?2 AND state IN ('available', 'reserved')",
        )
        .db()?
        .execute(params![card.as_bytes(), tenant, now])
        .db()?;
    Ok(n > 0)
}

/// Withdraws at `now` every unsold card of the tenant sealed with `key`; answers how many.
pub(crate) fn withdraw_sealed_with(
    tx: &Transaction<'_>,
    tenant: &str,
    key: KeyId,
    now: i64,
) -> Result<u64> {
    let n = tx
        .prepare_cached(
            "UPDATE cards SET state = 'withdrawn', withdrawn_at = ?3, order_id = NULL,
                              until = NULL, hold_seq = NULL
             WHERE tenant = ?1 AND key_id = ?2 AND state IN ('available', 'reserved')",
        )
        .db()?
        .execute(params![tenant, key.0, now])
        .db()?;
    Ok(n as u64)
}

/// Empties the sealed values of every card of the tenant sealed with `key`; answers how many.
pub(crate) fn shred_sealed_with(tx: &Transaction<'_>, tenant: &str, key: KeyId) -> Result<u64> {
    let n = tx
        .prepare_cached(
            "UPDATE cards SET code = x'', secret = NULL WHERE tenant = ?1 AND key_id = ?2",
        )
        .db()?
        .execute(params![tenant, key.0])
        .db()?;
    Ok(n as u64)
}

/// Returns the cards reserved for the order to stock; answers how many.
pub(crate) fn release(tx: &Transaction<'_>, tenant: &str, order: OrderId) -> Result<u32> {
    let n = tx
        .prepare_cached(
            "UPDATE cards SET state = 'available', order_id = NULL, until = NULL, hold_seq = NULL
             WHERE order_id = ?1 AND tenant = ?2 AND state = 'reserved'",
        )
        .db()?
        .execute(params![order.as_bytes(), tenant])
        .db()?;
    Ok(count(n))
}

/// The next position in the order's list of held cards.
fn next_hold_seq(tx: &Transaction<'_>, order: OrderId) -> Result<i64> {
    tx.prepare_cached(NEXT_HOLD_SEQ)
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
fn sell_held(tx: &Transaction<'_>, cards: &[CardId], now: i64) -> Result<()> {
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

/// Marks the cards the tenant's order holds sold to it (at `now`), in the given order; cards
/// already sold to it stay as they are. `Conflict` on the first card the order does not hold
/// (reserved for it or sold to it), after selling the ones before: the caller's transaction
/// must then roll back.
pub(crate) fn sell_held_by(
    tx: &Transaction<'_>,
    tenant: &str,
    order: OrderId,
    cards: &[CardId],
    now: i64,
) -> Result<()> {
    // Selling a reserved card changes its row and its deadline entry only: `order_id` and
    // `hold_seq` stay, so the order's index entry does too.
    let mut sell = tx
        .prepare_cached(
            "UPDATE cards SET state = 'sold', until = NULL, sold_at = ?4
             WHERE id = ?1 AND tenant = ?2 AND order_id = ?3 AND state = 'reserved'",
        )
        .db()?;
    for id in cards {
        let sold = sell
            .execute(params![id.as_bytes(), tenant, order.as_bytes(), now])
            .db()?;
        if sold == 0 && !sold_to(tx, tenant, order, *id)? {
            return Err(Error::conflict("card", id, "not held by the order"));
        }
    }
    Ok(())
}

/// True when the card belongs to the tenant and is sold to the order.
fn sold_to(tx: &Transaction<'_>, tenant: &str, order: OrderId, card: CardId) -> Result<bool> {
    tx.prepare_cached(
        "SELECT 1 FROM cards WHERE id = ?1 AND tenant = ?2 AND order_id = ?3 AND state = 'sold'",
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
        trail: Trail<'_>,
    ) -> Result<InsertCardsOutcome> {
        let tenant = tenant.as_str().to_owned();
        let cards = cards.to_vec();
        let now = ts(now)?;
        let trail = trail_rows(trail)?;
        self.pool
            .write(move |tx| {
                check_keys(tx, &tenant, cards.iter().map(|c| c.key_id))?;
                check_ids_new(tx, &cards)?;
                write_trail(tx, &trail, &tenant)?;
                let mut outcome = InsertCardsOutcome::default();
                let mut seen = HashSet::new();
                for (i, c) in cards.iter().enumerate() {
                    // A held index first: a card found by its legacy index does not take its
                    // index into `seen`.
                    if holds_index_of(tx, &tenant, c)? || !seen.insert(c.blind_index) {
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
                let checked = check_order_change(tx, &c)?;
                check_keys(tx, &tenant, cards.iter().map(|card| card.key_id))?;
                check_ids_new(tx, &cards)?;
                let mut indexes = HashSet::new();
                let mut positions = Vec::new();
                for (i, card) in cards.iter().enumerate() {
                    if holds_index_of(tx, &tenant, card)? || !indexes.insert(card.blind_index) {
                        positions.push(i);
                    }
                }
                if !positions.is_empty() {
                    return Err(Error::DuplicateCards { positions });
                }
                for card in &cards {
                    insert_card(tx, &tenant, card, now)?;
                }
                let ids: Vec<CardId> = cards.iter().map(|card| card.id).collect();
                sell_free(tx, order, &ids, now)?;
                apply_order_change(tx, &c, checked)
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
        self.pool.write(move |tx| release(tx, &tenant, order)).await
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

    async fn mark_revealed(
        &self,
        tenant: &TenantId,
        order: OrderId,
        now: DateTime<Utc>,
    ) -> Result<Vec<CardId>> {
        let tenant = tenant.as_str().to_owned();
        let now = ts(now)?;
        self.pool
            .write(move |tx| {
                let mut stmt = tx
                    .prepare_cached(
                        "UPDATE cards SET revealed_at = COALESCE(revealed_at, ?3)
                         WHERE order_id = ?1 AND tenant = ?2 AND state = 'sold'
                           AND voided_at IS NULL
                         RETURNING id",
                    )
                    .db()?;
                let rows = stmt
                    .query_map(params![order.as_bytes(), tenant, now], |r| {
                        r.get::<_, [u8; 16]>(0)
                    })
                    .db()?
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .db()?;
                let mut out = ids(rows);
                out.sort_unstable();
                Ok(out)
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

    async fn card_by_index(
        &self,
        tenant: &TenantId,
        index: &BlindIndex,
    ) -> Result<Option<StoredCard>> {
        let tenant = tenant.as_str().to_owned();
        let index = index.as_bytes().to_vec();
        self.pool
            .read(move |tx| {
                let mut cards = cards_where(
                    tx,
                    "tenant = ?1 AND blind_index = ?2",
                    params![tenant, index],
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
                // Every count reads an index only; sold cards are the rest of the SKU's cards
                // (a card is available, reserved, sold or withdrawn), so that selling a card
                // writes no index entry of its own.
                let (available, lapsed, reserved, withdrawn, all): (i64, i64, i64, i64, i64) = tx
                    .prepare_cached(
                        "SELECT
                           (SELECT COUNT(*) FROM cards INDEXED BY cards_free
                             WHERE tenant = ?1 AND sku = ?2 AND state = 'available'),
                           (SELECT COUNT(*) FROM cards INDEXED BY cards_deadlines
                             WHERE tenant = ?1 AND sku = ?2 AND state = 'reserved' AND until <= ?3),
                           (SELECT COUNT(*) FROM cards INDEXED BY cards_deadlines
                             WHERE tenant = ?1 AND sku = ?2 AND state = 'reserved' AND until > ?3),
                           (SELECT COUNT(*) FROM cards INDEXED BY cards_withdrawn
                             WHERE tenant = ?1 AND sku = ?2 AND state = 'withdrawn'),
                           (SELECT COUNT(*) FROM cards INDEXED BY cards_by_sku
                             WHERE tenant = ?1 AND sku = ?2)",
                    )
                    .db()?
                    .query_row(params![tenant, sku.as_bytes(), now], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                    })
                    .db()?;
                let (available, lapsed, reserved, withdrawn, all) = (
                    uint(available, "count")?,
                    uint(lapsed, "count")?,
                    uint(reserved, "count")?,
                    uint(withdrawn, "count")?,
                    uint(all, "count")?,
                );
                let sold = all
                    .checked_sub(available + lapsed + reserved + withdrawn)
                    .ok_or_else(|| {
                        Error::Corrupt(format!("card counts of SKU {sku} do not add up"))
                    })?;
                Ok(StockCount {
                    available: available + lapsed,
                    reserved,
                    sold,
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
                check_keys(tx, &tenant, [key_id])?;
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

    async fn cards_to_reindex(
        &self,
        tenant: &TenantId,
        scheme: IndexScheme,
        limit_to: usize,
    ) -> Result<Vec<StoredCard>> {
        // One query per scheme, each with the partial index of the schemes before it: a new
        // scheme needs its own (this match fails to compile until it has one).
        let filter = match scheme {
            IndexScheme::Legacy => return Ok(Vec::new()),
            IndexScheme::Nfkc => CARDS_BEFORE_NFKC,
        };
        let tenant = tenant.as_str().to_owned();
        let n = limit(limit_to);
        self.pool
            .read(move |tx| cards_where(tx, filter, params![tenant, n]))
            .await
    }

    async fn reindex_cards(
        &self,
        tenant: &TenantId,
        changes: &[IndexChange],
    ) -> Result<Vec<Reindexed>> {
        let tenant = tenant.as_str().to_owned();
        let changes = changes.to_vec();
        self.pool
            .write(move |tx| {
                let mut out = Vec::with_capacity(changes.len());
                for change in &changes {
                    let held: Option<[u8; 32]> = tx
                        .prepare_cached(
                            "SELECT blind_index FROM cards WHERE id = ?1 AND tenant = ?2",
                        )
                        .db()?
                        .query_row(params![change.card.as_bytes(), tenant], |r| r.get(0))
                        .optional()
                        .db()?;
                    if held.map(BlindIndex::from_bytes) != Some(change.from) {
                        out.push(Reindexed::Stale);
                        continue;
                    }
                    let scheme = change.scheme.as_u8();
                    let answer = match holder_of(tx, &tenant, &change.to)? {
                        Some(holder) if holder != change.card => {
                            // One code: the card keeps its index, so it still holds one.
                            tx.prepare_cached("UPDATE cards SET index_scheme = ?2 WHERE id = ?1")
                                .db()?
                                .execute(params![change.card.as_bytes(), scheme])
                                .db()?;
                            Reindexed::Duplicate { holder }
                        }
                        _ => {
                            tx.prepare_cached(
                                "UPDATE cards SET blind_index = ?2, index_scheme = ?3
                                 WHERE id = ?1",
                            )
                            .db()?
                            .execute(params![
                                change.card.as_bytes(),
                                change.to.as_bytes(),
                                scheme
                            ])
                            .db()?;
                            Reindexed::Moved
                        }
                    };
                    out.push(answer);
                }
                Ok(out)
            })
            .await
    }

    async fn withdraw_cards(
        &self,
        tenant: &TenantId,
        cards: &[CardId],
        now: DateTime<Utc>,
    ) -> Result<Vec<CardId>> {
        let tenant = tenant.as_str().to_owned();
        let cards = cards.to_vec();
        let now = ts(now)?;
        self.pool
            .write(move |tx| {
                let mut withdrawn = Vec::new();
                for id in cards {
                    if withdraw(tx, &tenant, id, now)? {
                        withdrawn.push(id);
                    }
                }
                Ok(withdrawn)
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use rusqlite::{Connection, params};

    use super::{CARD_COLUMNS, CARDS_BEFORE_NFKC};

    /// The plan of `sql` on a new database, one line per step.
    fn plan(sql: &str, params: impl rusqlite::Params) -> String {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::migrate::migrate(&mut conn).unwrap();
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let steps: Vec<String> = stmt
            .query_map(params, |r| r.get(3))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        steps.join("\n")
    }

    #[test]
    fn cards_to_reindex_reads_its_partial_index_in_card_order() {
        let sql = format!("SELECT {CARD_COLUMNS} FROM cards WHERE {CARDS_BEFORE_NFKC}");
        let plan = plan(&sql, params!["t", 10]);
        assert!(plan.contains("USING INDEX cards_to_reindex"), "{plan}");
        assert!(!plan.contains("TEMP B-TREE"), "sorted by the index: {plan}");
    }
}
