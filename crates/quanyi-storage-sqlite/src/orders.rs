//! Orders (with their lines' SKUs and quantities, for member limits) and placing an order with
//! its reservations.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use quanyi_core::{CardId, GoodsId, MemberId, OrderId, SkuId, TenantId};
use quanyi_order::{Order, OrderStatus};
use quanyi_storage::{
    Claim, Error, GOODS_CHANGED, MemberLimit, NewOrder, OrderChange, OrderCursor, OrderQuery,
    OrderStore, Result, search_in_pages,
};
use rusqlite::{OptionalExtension, Transaction, params};

use crate::SqliteStore;
use crate::cards::{free_cards, release, reserve};
use crate::convert::{SqlResult, from_doc, int, limit, read_docs, to_doc, ts, uint, uuid};
use crate::logs::{EventRow, check_events_new, event_rows, insert_events};
use crate::pricing::check_pricing;

/// An order encoded for a blocking thread.
pub(crate) struct OrderRow {
    pub(crate) tenant: String,
    pub(crate) id: OrderId,
    member: String,
    status: &'static str,
    expires_at: i64,
    version: u64,
    updated_at: i64,
    /// `Order::created_at`, for searches.
    placed_at: i64,
    doc: String,
    /// What the order counts toward member limits, as [`encode_lines`] writes it.
    lines: Vec<u8>,
}

/// Bytes per entry in `orders.lines`: the SKU (16) and the units (4, big-endian).
const LINE_BYTES: usize = 20;

/// What an order counts toward member limits ([`Order::limit_units`]: each line's SKU and
/// quantity, each pack's SKU and packs) as `orders.lines` holds it.
pub(crate) fn encode_lines(order: &Order) -> Vec<u8> {
    let mut out = Vec::with_capacity(order.lines().len() * LINE_BYTES);
    for (sku, units) in order.limit_units() {
        out.extend_from_slice(sku.as_bytes());
        out.extend_from_slice(&units.to_be_bytes());
    }
    out
}

/// The quantity of `sku` in stored `orders.lines`.
fn quantity_of(lines: &[u8], sku: SkuId) -> Result<u64> {
    if lines.len() % LINE_BYTES != 0 {
        return Err(Error::Corrupt(format!(
            "stored order lines of {} bytes",
            lines.len()
        )));
    }
    let sku = sku.as_bytes();
    Ok(lines
        .chunks_exact(LINE_BYTES)
        .filter(|line| line[..16] == sku[..])
        .map(|line| u64::from(u32::from_be_bytes([line[16], line[17], line[18], line[19]])))
        .sum())
}

pub(crate) fn order_row(order: &Order) -> Result<OrderRow> {
    int(order.version(), "order version")?;
    Ok(OrderRow {
        tenant: order.tenant().as_str().to_owned(),
        id: order.id(),
        member: order.member().as_str().to_owned(),
        status: order.status().as_str(),
        expires_at: ts(order.expires_at())?,
        version: order.version(),
        updated_at: ts(order.updated_at())?,
        placed_at: ts(quanyi_storage::placed_at(order))?,
        doc: to_doc(order, "order")?,
        lines: encode_lines(order),
    })
}

/// An order change encoded for a blocking thread.
pub(crate) struct ChangeRow {
    pub(crate) order: OrderRow,
    expected_version: u64,
    events: Vec<EventRow>,
}

pub(crate) fn change_row(change: &OrderChange<'_>) -> Result<ChangeRow> {
    Ok(ChangeRow {
        order: order_row(change.order)?,
        expected_version: change.expected_version,
        events: event_rows(change.events)?,
    })
}

/// What [`check_order_change`] found of the stored order beyond its version.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Checked {
    /// The change keeps the order's member, deadline and lines (as the order's commands do),
    /// so the write need not touch the indexes on them.
    same_fixed: bool,
}

/// The checks of an order change, in the memory adapter's order: `NotFound`, `Conflict` on a
/// stale version, `Invalid` without a new version, `Conflict` on a stored event id.
pub(crate) fn check_order_change(tx: &Transaction<'_>, c: &ChangeRow) -> Result<Checked> {
    let o = &c.order;
    let stored: Option<(i64, String, i64, Vec<u8>)> = tx
        .prepare_cached(
            "SELECT version, member, expires_at, lines FROM orders WHERE tenant = ?1 AND id = ?2",
        )
        .db()?
        .query_row(params![o.tenant, o.id.as_bytes()], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()
        .db()?;
    let (version, member, expires_at, lines) =
        stored.ok_or_else(|| Error::not_found("order", o.id))?;
    if uint(version, "order version")? != c.expected_version {
        return Err(Error::conflict("order", o.id, "stale version"));
    }
    if o.version <= c.expected_version {
        return Err(Error::Invalid(format!(
            "order {} written without a new version",
            o.id
        )));
    }
    check_events_new(tx, &c.events, "event", o.id)?;
    Ok(Checked {
        same_fixed: member == o.member && expires_at == o.expires_at && lines == o.lines,
    })
}

/// Writes a checked order change and its events. Only the columns an order's commands change
/// are written (and so only their indexes), unless the check found others changed too.
pub(crate) fn apply_order_change(
    tx: &Transaction<'_>,
    c: &ChangeRow,
    checked: Checked,
) -> Result<()> {
    let o = &c.order;
    tx.prepare_cached(
        "UPDATE orders SET status = ?3, version = ?4, doc = ?5, updated_at = ?6
         WHERE tenant = ?1 AND id = ?2",
    )
    .db()?
    .execute(params![
        o.tenant,
        o.id.as_bytes(),
        o.status,
        int(o.version, "order version")?,
        o.doc,
        o.updated_at
    ])
    .db()?;
    if !checked.same_fixed {
        tx.prepare_cached(
            "UPDATE orders SET member = ?3, expires_at = ?4, lines = ?5
             WHERE tenant = ?1 AND id = ?2",
        )
        .db()?
        .execute(params![
            o.tenant,
            o.id.as_bytes(),
            o.member,
            o.expires_at,
            o.lines
        ])
        .db()?;
    }
    insert_events(tx, &c.events)
}

/// The units of `sku` in the member's orders that count toward its limit.
fn member_quantity(
    tx: &Transaction<'_>,
    tenant: &str,
    member: &str,
    sku: SkuId,
    release_on_refund: bool,
) -> Result<u64> {
    let [a, b, c] = OrderStatus::uncounted(release_on_refund);
    let mut stmt = tx
        .prepare_cached(
            // Without statistics the planner might walk the primary key over the whole tenant.
            "SELECT lines FROM orders INDEXED BY orders_by_member
             WHERE tenant = ?1 AND member = ?2 AND status NOT IN (?3, ?4, ?5)",
        )
        .db()?;
    let mut rows = stmt
        .query(params![tenant, member, a.as_str(), b.as_str(), c.as_str()])
        .db()?;
    let mut sum = 0u64;
    while let Some(row) = rows.next().db()? {
        let lines: Vec<u8> = row.get(0).db()?;
        sum = sum.saturating_add(quantity_of(&lines, sku)?);
    }
    Ok(sum)
}

fn insert_order(tx: &Transaction<'_>, o: &OrderRow) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO orders (tenant, id, member, status, expires_at, version, doc, updated_at,
                             lines, placed_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )
    .db()?
    .execute(params![
        o.tenant,
        o.id.as_bytes(),
        o.member,
        o.status,
        o.expires_at,
        int(o.version, "order version")?,
        o.doc,
        o.updated_at,
        o.lines,
        o.placed_at
    ])
    .db()?;
    Ok(())
}

/// An instant as [`ts`] stores it, or the nearest the column can hold: a search bound past
/// 1677..2262 holds every stored order on its side.
fn clamped(t: DateTime<Utc>) -> i64 {
    t.timestamp_nanos_opt().unwrap_or(if t.timestamp() < 0 {
        i64::MIN
    } else {
        i64::MAX
    })
}

fn decode(doc: &str) -> Result<Order> {
    from_doc(doc, "order")
}

fn tenant_of(text: String) -> Result<TenantId> {
    TenantId::new(text).map_err(|e| Error::Corrupt(format!("stored tenant: {e}")))
}

#[async_trait]
impl OrderStore for SqliteStore {
    async fn place_order(&self, new: NewOrder<'_>, now: DateTime<Utc>) -> Result<Vec<CardId>> {
        let o = order_row(new.order)?;
        let events = event_rows(new.events)?;
        let limits: Vec<(MemberLimit, u32)> = new
            .member_limits
            .iter()
            .map(|l| (*l, new.order.quantity_of(l.sku)))
            .collect();
        let reservations: Vec<(SkuId, u32)> = new
            .reservations
            .iter()
            .map(|r| (r.sku, r.quantity))
            .collect();
        let priced_from: Vec<(GoodsId, u64)> =
            new.priced_from.iter().map(|g| (g.id, g.version)).collect();
        Claim::check_all(new.claims)?;
        quanyi_storage::BudgetTake::check_all(new.budgets)?;
        let claims = new.claims.to_vec();
        let budgets = new.budgets.to_vec();
        let pricing_version = new.pricing_version;
        let now = ts(now)?;
        self.pool
            .write(move |tx| {
                for claim in &claims {
                    if let Some(taken) = stored_claim(tx, &o.tenant, &claim.scope, &claim.key)? {
                        return Err(Error::Claimed {
                            claim: Box::new(taken),
                        });
                    }
                }
                let exists = tx
                    .prepare_cached("SELECT 1 FROM orders WHERE tenant = ?1 AND id = ?2")
                    .db()?
                    .exists(params![o.tenant, o.id.as_bytes()])
                    .db()?;
                if exists {
                    return Err(Error::conflict("order", o.id, "id already stored"));
                }
                for &(goods, version) in &priced_from {
                    let stored: Option<i64> = tx
                        .prepare_cached("SELECT version FROM goods WHERE tenant = ?1 AND id = ?2")
                        .db()?
                        .query_row(params![o.tenant, goods.as_bytes()], |r| r.get(0))
                        .optional()
                        .db()?;
                    if stored.map(|v| uint(v, "goods version")).transpose()? != Some(version) {
                        return Err(Error::conflict("goods", goods, GOODS_CHANGED));
                    }
                }
                check_pricing(tx, &o.tenant, pricing_version)?;
                for &(
                    MemberLimit {
                        sku,
                        limit,
                        release_on_refund,
                    },
                    requested,
                ) in &limits
                {
                    let already =
                        member_quantity(tx, &o.tenant, &o.member, sku, release_on_refund)?;
                    if already.saturating_add(u64::from(requested)) > u64::from(limit) {
                        return Err(Error::MemberLimitExceeded {
                            sku,
                            limit,
                            already,
                            requested,
                        });
                    }
                }
                check_events_new(tx, &events, "event", o.id)?;
                for b in &budgets {
                    let used = budget_used(tx, &o.tenant, &b.scope, &b.key)?;
                    if used.saturating_add(b.amount) > b.limit {
                        return Err(Error::BudgetExhausted {
                            scope: b.scope.clone(),
                            key: b.key.clone(),
                        });
                    }
                }
                // Choose every card before changing any, so a shortage changes nothing.
                let mut chosen: Vec<CardId> = Vec::new();
                for &(sku, quantity) in &reservations {
                    if quantity == 0 {
                        return Err(Error::Invalid("reserve of zero cards".into()));
                    }
                    let want = usize::try_from(quantity).unwrap_or(usize::MAX);
                    let free = free_cards(tx, &o.tenant, sku, now, want, &chosen)?;
                    if free.len() < want {
                        return Err(Error::OutOfStock {
                            sku,
                            requested: quantity,
                            available: free.len() as u64,
                        });
                    }
                    chosen.extend(free);
                }
                reserve(tx, o.id, &chosen, o.expires_at)?;
                insert_order(tx, &o)?;
                insert_events(tx, &events)?;
                for claim in &claims {
                    tx.prepare_cached(
                        "INSERT INTO sale_claims (tenant, scope, key, value, taken_at)
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                    )
                    .db()?
                    .execute(params![o.tenant, claim.scope, claim.key, claim.value, now])
                    .db()?;
                }
                for b in &budgets {
                    // Checked above: the sum stays within the limit, itself within i64.
                    let amount = int(b.amount, "budget amount")?;
                    tx.prepare_cached(
                        "INSERT INTO sale_budgets (tenant, scope, key, used) VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT DO UPDATE SET used = used + excluded.used",
                    )
                    .db()?
                    .execute(params![o.tenant, b.scope, b.key, amount])
                    .db()?;
                    tx.prepare_cached(
                        "INSERT INTO order_budgets (tenant, order_id, scope, key, amount)
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                    )
                    .db()?
                    .execute(params![o.tenant, o.id.as_bytes(), b.scope, b.key, amount])
                    .db()?;
                }
                Ok(chosen)
            })
            .await
    }

    async fn budget_used(&self, tenant: &TenantId, scope: &str, key: &str) -> Result<u64> {
        let (tenant, scope, key) = (tenant.as_str().to_owned(), scope.to_owned(), key.to_owned());
        self.pool
            .read(move |tx| budget_used(tx, &tenant, &scope, &key))
            .await
    }

    async fn claim(&self, tenant: &TenantId, scope: &str, key: &str) -> Result<Option<Claim>> {
        let (tenant, scope, key) = (tenant.as_str().to_owned(), scope.to_owned(), key.to_owned());
        self.pool
            .read(move |tx| stored_claim(tx, &tenant, &scope, &key))
            .await
    }

    async fn update_order(
        &self,
        change: OrderChange<'_>,
        audit: Option<&quanyi_storage::AuditRecord>,
    ) -> Result<()> {
        let c = change_row(&change)?;
        let trail = crate::logs::trail_rows(quanyi_storage::Trail { events: &[], audit })?;
        self.pool
            .write(move |tx| {
                let checked = check_order_change(tx, &c)?;
                apply_order_change(tx, &c, checked)?;
                crate::logs::write_trail(tx, &trail, c.order.id)
            })
            .await
    }

    async fn refund_order(
        &self,
        change: OrderChange<'_>,
        write: quanyi_storage::RefundWrite<'_>,
    ) -> Result<()> {
        quanyi_storage::check_paid(write.paid, change.order.tenant())?;
        let c = change_row(&change)?;
        let trail = crate::logs::trail_rows(quanyi_storage::Trail {
            events: &[],
            audit: write.audit,
        })?;
        let due = change.order.refund_due().map(ts).transpose()?;
        let void = write.void.to_vec();
        let paid = write
            .paid
            .map(|p| -> Result<_> {
                Ok((
                    p.refund_id.clone(),
                    ts(p.paid_at)?,
                    crate::convert::to_doc(p, "refund")?,
                ))
            })
            .transpose()?;
        self.pool
            .write(move |tx| {
                let checked = check_order_change(tx, &c)?;
                let o = &c.order;
                let at = o.updated_at;
                for card in &void {
                    let row: Option<(String, Option<[u8; 16]>, Option<i64>, Option<i64>)> = tx
                        .prepare_cached(
                            "SELECT state, order_id, revealed_at, voided_at FROM cards
                             WHERE id = ?1 AND tenant = ?2",
                        )
                        .db()?
                        .query_row(params![card.as_bytes(), o.tenant], |r| {
                            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                        })
                        .optional()
                        .db()?;
                    match row {
                        Some((_, _, Some(_), _)) => return Err(Error::Revealed { card: *card }),
                        Some((state, Some(holder), None, None))
                            if state == "sold" && holder == *o.id.as_bytes() => {}
                        _ => return Err(Error::conflict("card", card, "not sold to the order")),
                    }
                    tx.prepare_cached("UPDATE cards SET voided_at = ?2 WHERE id = ?1")
                        .db()?
                        .execute(params![card.as_bytes(), at])
                        .db()?;
                }
                if let Some((refund_id, paid_at, doc)) = &paid {
                    let taken = tx
                        .prepare_cached(
                            "INSERT INTO refunds_paid (tenant, refund_id, paid_at, doc)
                             VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
                        )
                        .db()?
                        .execute(params![o.tenant, refund_id, paid_at, doc])
                        .db()?;
                    if taken == 0 {
                        return Err(Error::conflict("refund", refund_id, "paid already"));
                    }
                }
                apply_order_change(tx, &c, checked)?;
                tx.prepare_cached(
                    "UPDATE orders SET refund_due = ?3 WHERE tenant = ?1 AND id = ?2",
                )
                .db()?
                .execute(params![o.tenant, o.id.as_bytes(), due])
                .db()?;
                crate::logs::write_trail(tx, &trail, o.id)
            })
            .await
    }

    async fn refunds_paid(
        &self,
        tenant: &TenantId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        after: Option<(DateTime<Utc>, String)>,
        limit_to: usize,
    ) -> Result<Vec<quanyi_storage::PaidRefund>> {
        let tenant = tenant.as_str().to_owned();
        let (from, to) = (clamped(from), clamped(to));
        let (after_at, after_id) = match after {
            Some((at, id)) => (ts(at)?, id),
            None => (i64::MIN, String::new()),
        };
        let n = limit(limit_to);
        self.pool
            .read(move |tx| {
                read_docs(
                    tx,
                    "SELECT doc FROM refunds_paid INDEXED BY refunds_paid_by_time
                     WHERE tenant = ?1 AND paid_at >= ?2 AND paid_at < ?3
                       AND (paid_at > ?4 OR (paid_at = ?4 AND refund_id > ?5))
                     ORDER BY paid_at, refund_id LIMIT ?6",
                    params![tenant, from, to, after_at, after_id, n],
                    "refund",
                )
            })
            .await
    }

    async fn refund_queue(
        &self,
        tenant: &TenantId,
        after: Option<(DateTime<Utc>, OrderId)>,
        limit_to: usize,
    ) -> Result<Vec<Order>> {
        let tenant = tenant.as_str().to_owned();
        let (after_at, after_id) = match after {
            Some((at, id)) => (ts(at)?, id.as_bytes().to_vec()),
            None => (i64::MIN, Vec::new()),
        };
        let n = limit(limit_to);
        self.pool
            .read(move |tx| {
                read_docs(
                    tx,
                    "SELECT doc FROM orders INDEXED BY orders_refund_queue
                     WHERE tenant = ?1 AND refund_due IS NOT NULL
                       AND (refund_due > ?2 OR (refund_due = ?2 AND id > ?3))
                     ORDER BY refund_due, id LIMIT ?4",
                    params![tenant, after_at, after_id, n],
                    "order",
                )
            })
            .await
    }

    async fn close_unpaid_order(&self, change: OrderChange<'_>) -> Result<u32> {
        let c = change_row(&change)?;
        self.pool
            .write(move |tx| {
                let checked = check_order_change(tx, &c)?;
                let released = release(tx, &c.order.tenant, c.order.id)?;
                // What the order took of each budget goes back, once: its record of the takes
                // goes too. Rows from before version 10 took one use (the column's default).
                let taken: Vec<(String, String, i64)> = tx
                    .prepare_cached(
                        "DELETE FROM order_budgets WHERE tenant = ?1 AND order_id = ?2
                         RETURNING scope, key, amount",
                    )
                    .db()?
                    .query_map(params![c.order.tenant, c.order.id.as_bytes()], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })
                    .db()?
                    .collect::<rusqlite::Result<_>>()
                    .db()?;
                for (scope, key, amount) in taken {
                    tx.prepare_cached(
                        "UPDATE sale_budgets SET used = max(used - ?4, 0)
                         WHERE tenant = ?1 AND scope = ?2 AND key = ?3 AND used > 0",
                    )
                    .db()?
                    .execute(params![c.order.tenant, scope, key, amount])
                    .db()?;
                }
                apply_order_change(tx, &c, checked)?;
                Ok(released)
            })
            .await
    }

    async fn order(&self, tenant: &TenantId, id: OrderId) -> Result<Option<Order>> {
        let tenant = tenant.as_str().to_owned();
        self.pool
            .read(move |tx| {
                let doc: Option<String> = tx
                    .prepare_cached("SELECT doc FROM orders WHERE tenant = ?1 AND id = ?2")
                    .db()?
                    .query_row(params![tenant, id.as_bytes()], |r| r.get(0))
                    .optional()
                    .db()?;
                doc.as_deref().map(decode).transpose()
            })
            .await
    }

    async fn member_orders(
        &self,
        tenant: &TenantId,
        member: &MemberId,
        limit_to: usize,
    ) -> Result<Vec<Order>> {
        let tenant = tenant.as_str().to_owned();
        let member = member.as_str().to_owned();
        let n = limit(limit_to);
        self.pool
            .read(move |tx| {
                // Without statistics the planner would rather walk the primary
                // key (in id order) over the whole tenant.
                read_docs(
                    tx,
                    "SELECT doc FROM orders INDEXED BY orders_by_member
                     WHERE tenant = ?1 AND member = ?2
                     ORDER BY id DESC LIMIT ?3",
                    params![tenant, member, n],
                    "order",
                )
            })
            .await
    }

    async fn orders_updated(
        &self,
        tenant: &TenantId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        after: Option<(DateTime<Utc>, OrderId)>,
        limit_to: usize,
    ) -> Result<Vec<Order>> {
        let tenant = tenant.as_str().to_owned();
        let (from, to) = (ts(from)?, ts(to)?);
        // Without a cursor, start before everything in the window.
        let (after_at, after_id) = match after {
            Some((at, id)) => (ts(at)?, id.as_bytes().to_vec()),
            None => (i64::MIN, Vec::new()),
        };
        let n = limit(limit_to);
        self.pool
            .read(move |tx| {
                read_docs(
                    tx,
                    "SELECT doc FROM orders INDEXED BY orders_updated
                     WHERE tenant = ?1 AND updated_at >= ?2 AND updated_at < ?3
                       AND (updated_at > ?4 OR (updated_at = ?4 AND id > ?5))
                     ORDER BY updated_at, id LIMIT ?6",
                    params![tenant, from, to, after_at, after_id, n],
                    "order",
                )
            })
            .await
    }

    async fn search_orders(
        &self,
        tenant: &TenantId,
        query: &OrderQuery,
        after: Option<OrderCursor>,
        limit_to: usize,
    ) -> Result<Vec<Order>> {
        // The member and the time window narrow in SQL (through `orders_by_member` or
        // `orders_placed`); the rest of the query is checked on the decoded orders.
        let tenant = tenant.as_str().to_owned();
        let member = query.member.as_ref().map(|m| m.as_str().to_owned());
        let from = query.placed_from.map_or(i64::MIN, clamped);
        let before = query.placed_before.map_or(i64::MAX, clamped);
        search_in_pages(query, after, limit_to, |cursor, n| {
            let (tenant, member) = (tenant.clone(), member.clone());
            let (cursor_at, cursor_id) = match cursor {
                Some(c) => (clamped(c.placed_at_micros()), c.id.as_bytes().to_vec()),
                // Before everything: no id is 17 bytes of 0xff.
                None => (i64::MAX, vec![0xff; 17]),
            };
            async move {
                let n = limit(n);
                self.pool
                    .read(move |tx| {
                        let sql = if member.is_some() {
                            "SELECT doc FROM orders INDEXED BY orders_by_member
                             WHERE tenant = ?1 AND member = ?2
                               AND placed_at >= ?3 AND placed_at < ?4
                               AND (placed_at < ?5 OR (placed_at = ?5 AND id < ?6))
                             ORDER BY placed_at DESC, id DESC LIMIT ?7"
                        } else {
                            // ?2 (no member) keeps the parameters of both shapes alike.
                            "SELECT doc FROM orders INDEXED BY orders_placed
                             WHERE tenant = ?1 AND ?2 IS NULL
                               AND placed_at >= ?3 AND placed_at < ?4
                               AND (placed_at < ?5 OR (placed_at = ?5 AND id < ?6))
                             ORDER BY placed_at DESC, id DESC LIMIT ?7"
                        };
                        let mut stmt = tx.prepare_cached(sql).db()?;
                        let docs = stmt
                            .query_map(
                                params![tenant, member, from, before, cursor_at, cursor_id, n],
                                |r| r.get::<_, String>(0),
                            )
                            .db()?
                            .collect::<rusqlite::Result<Vec<String>>>()
                            .db()?;
                        docs.iter().map(|d| decode(d)).collect()
                    })
                    .await
            }
        })
        .await
    }

    async fn unpaid_orders_due(
        &self,
        now: DateTime<Utc>,
        limit_to: usize,
    ) -> Result<Vec<(TenantId, OrderId)>> {
        let now = ts(now)?;
        let n = limit(limit_to);
        self.pool
            .read(move |tx| {
                let mut stmt = tx
                    .prepare_cached(
                        "SELECT tenant, id FROM orders
                         WHERE status = 'awaiting_payment' AND expires_at <= ?1
                         ORDER BY expires_at, tenant, id LIMIT ?2",
                    )
                    .db()?;
                let rows = stmt
                    .query_map(params![now, n], |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, [u8; 16]>(1)?))
                    })
                    .db()?
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .db()?;
                rows.into_iter()
                    .map(|(t, id)| Ok((tenant_of(t)?, OrderId::from_uuid(uuid(id)))))
                    .collect()
            })
            .await
    }
}

/// What orders not closed unpaid hold of a budget (uses, or minor units).
fn budget_used(tx: &Transaction<'_>, tenant: &str, scope: &str, key: &str) -> Result<u64> {
    let used: Option<i64> = tx
        .prepare_cached(
            "SELECT used FROM sale_budgets WHERE tenant = ?1 AND scope = ?2 AND key = ?3",
        )
        .db()?
        .query_row(params![tenant, scope, key], |r| r.get(0))
        .optional()
        .db()?;
    uint(used.unwrap_or(0), "budget used")
}

/// The claim stored for (tenant, scope, key).
fn stored_claim(
    tx: &Transaction<'_>,
    tenant: &str,
    scope: &str,
    key: &str,
) -> Result<Option<Claim>> {
    let value: Option<String> = tx
        .prepare_cached(
            "SELECT value FROM sale_claims WHERE tenant = ?1 AND scope = ?2 AND key = ?3",
        )
        .db()?
        .query_row(params![tenant, scope, key], |r| r.get(0))
        .optional()
        .db()?;
    Ok(value.map(|value| Claim {
        scope: scope.to_owned(),
        key: key.to_owned(),
        value,
    }))
}
