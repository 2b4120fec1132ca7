//! `OrderStore`: orders as JSON documents plus the columns queries need (their lines' SKUs and
//! quantities among them), and `place_order` as one statement.

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use quanyi_core::{CardId, GoodsId, MemberId, OrderId, SkuId, TenantId};
use quanyi_order::Order;
use quanyi_storage::{
    Claim, Error, GOODS_CHANGED, MemberLimit, NewOrder, OrderChange, OrderCursor, OrderQuery,
    OrderStore, PRICING_CHANGED, Result, search_in_pages,
};
use uuid::Uuid;

use crate::codec::{
    EventColumns, TaggedEvents, from_json, get, insert_events_sql, limit, micros, tenant, to_i64,
    to_json, to_u64,
};
use crate::combine::{Pending, answer_all};
use crate::error::{Batch, corrupt, db, with_id};
use crate::vault::{link_sql, pick_ctes, release_ctes, take_free_sql, take_lapsed_sql};
use crate::{Conn, PgStore};

mod batch;
mod placing;

#[cfg(test)]
pub(crate) use batch::PLACE_BATCH;
pub(crate) use placing::PlaceRequest;
#[cfg(test)]
pub(crate) use placing::{PLACE, place_budget_shape, place_shape};

/// What orders not closed unpaid hold of budget ($1 tenant, $2 scope, $3 key).
const BUDGET_USED: &str =
    "SELECT used FROM sale_budgets WHERE tenant = $1 AND scope = $2 AND key = $3";

/// The claim stored for $1 tenant, $2 scope, $3 key.
const CLAIM: &str = "SELECT value FROM sale_claims WHERE tenant = $1 AND scope = $2 AND key = $3";

/// Writes an order change: $1 tenant, $2 id, $3 expected version, $4 new version, $5 status,
/// $6 expires_at, $7 doc, $8 whether the new version is newer, $9..$13 events, $14 the order's
/// updated_at. With `release`, only if the order is written, its reserved cards go back to stock
/// (and to the free queue) in the same statement, and the third column counts them; they are
/// found as in [`RELEASE`](crate::vault::RELEASE), and what the order took of budgets goes back,
/// once (its `order_budgets` rows go; rows from before migration 11 took one use each).
fn update_sql(release: bool) -> String {
    let (release_cte, released) = if release {
        (
            format!(
                ", {}, \
                 gone AS (DELETE FROM order_budgets WHERE tenant = $1 AND order_id = $2 \
                          AND EXISTS (SELECT 1 FROM upd) RETURNING scope, key, amount), \
                 back AS (UPDATE sale_budgets s SET used = GREATEST(s.used - g.amount, 0) \
                          FROM gone g \
                          WHERE s.tenant = $1 AND s.scope = g.scope AND s.key = g.key \
                            AND s.used > 0)",
                release_ctes("$1", "$2", "EXISTS (SELECT 1 FROM upd)")
            ),
            "(SELECT count(*) FROM rel)",
        )
    } else {
        (String::new(), "0::bigint")
    };
    format!(
        "WITH cur AS (SELECT version FROM orders WHERE tenant = $1 AND id = $2 FOR UPDATE), \
         ok AS (SELECT COALESCE((SELECT version FROM cur) = $3, false) AND $8::boolean AS v), \
         upd AS (UPDATE orders SET version = $4, status = $5, expires_at = $6, doc = $7, \
                        updated_at = $14 \
                 WHERE tenant = $1 AND id = $2 AND (SELECT v FROM ok) RETURNING 1), \
         ev AS ({}){release_cte} \
         SELECT (SELECT version FROM cur), EXISTS (SELECT 1 FROM upd), {released}",
        insert_events_sql(9, "EXISTS (SELECT 1 FROM upd)")
    )
}

/// [`update_sql`] of a plain order change.
static UPDATE: LazyLock<String> = LazyLock::new(|| update_sql(false));

/// [`update_sql`] that also releases the order's reserved cards (`close_unpaid_order`).
pub(crate) static CLOSE: LazyLock<String> = LazyLock::new(|| update_sql(true));

/// The cards $2 of tenant $1 a refund would void, locked in id order (as a reveal locks them).
const LOCK_TO_VOID: &str = "SELECT id, state, order_id, revealed_at, voided_at FROM cards \
     WHERE id = ANY($2) AND tenant = $1 ORDER BY id FOR UPDATE";
/// Voids the cards $2 of tenant $1 at $3 (checked and locked with [`LOCK_TO_VOID`]).
const VOID: &str = "UPDATE cards SET voided_at = $3 WHERE id = ANY($2) AND tenant = $1";
/// Records refund $2 of tenant $1 paid at $3 in the ledger (document $4), once.
const RECORD_PAID: &str = "INSERT INTO refunds_paid (tenant, refund_id, paid_at, doc) \
     VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING";
/// Tenant $1's refunds paid in [$2, $3) after the cursor ($4 time, $5 id), by time then id.
const REFUNDS_PAID: &str = "SELECT doc FROM refunds_paid \
     WHERE tenant = $1 AND paid_at >= $2 AND paid_at < $3 AND (paid_at, refund_id) > ($4, $5) \
     ORDER BY paid_at, refund_id LIMIT $6";
/// Keeps when order $2 of tenant $1 needs attention for its refunds (null: none open).
const SET_REFUND_DUE: &str = "UPDATE orders SET refund_due = $3 WHERE tenant = $1 AND id = $2";
/// Orders of tenant $1 with an open refund after the cursor ($2 due, $3 id), by due then id.
const REFUND_QUEUE: &str = "SELECT doc FROM orders \
     WHERE tenant = $1 AND refund_due IS NOT NULL AND (refund_due, id) > ($2, $3) \
     ORDER BY refund_due, id LIMIT $4";

const BY_ID: &str = "SELECT doc FROM orders WHERE tenant = $1 AND id = $2";
const BY_MEMBER: &str =
    "SELECT doc FROM orders WHERE tenant = $1 AND member = $2 ORDER BY id DESC LIMIT $3";
const UPDATED: &str = "SELECT doc FROM orders \
     WHERE tenant = $1 AND updated_at >= $2 AND updated_at < $3 \
       AND (updated_at, id) > ($4, $5) \
     ORDER BY updated_at, id LIMIT $6";
/// An operator's search, newest first: $1 tenant, $2 member, $3 and $4 the placement window,
/// $5 and $6 the cursor (placement time and id), $7 statuses (none: any), $8 a SKU the order
/// must have a line of (null: any), $9 limit. Two shapes: by member (`orders_member`, the
/// member's orders then sorted) and without (`orders_placed`, read backwards); the rest of a
/// query is checked on the decoded orders.
pub(crate) const SEARCH: [&str; 2] = [
    "SELECT doc FROM orders \
     WHERE tenant = $1 AND $2::text IS NULL AND placed_at >= $3 AND placed_at < $4 \
       AND (placed_at, id) < ($5, $6) \
       AND (cardinality($7::text[]) = 0 OR status = ANY($7)) \
       AND ($8::uuid IS NULL OR $8 = ANY(line_skus)) \
     ORDER BY placed_at DESC, id DESC LIMIT $9",
    "SELECT doc FROM orders \
     WHERE tenant = $1 AND member = $2 AND placed_at >= $3 AND placed_at < $4 \
       AND (placed_at, id) < ($5, $6) \
       AND (cardinality($7::text[]) = 0 OR status = ANY($7)) \
       AND ($8::uuid IS NULL OR $8 = ANY(line_skus)) \
     ORDER BY placed_at DESC, id DESC LIMIT $9",
];

/// An instant as [`micros`] stores it, or the nearest a column can hold: a search bound far
/// outside the stored range holds every stored order on its side.
fn clamped(t: DateTime<Utc>) -> i64 {
    t.timestamp()
        .checked_mul(1_000_000)
        .and_then(|us| us.checked_add(i64::from(t.timestamp_subsec_micros())))
        .unwrap_or(if t.timestamp() < 0 {
            i64::MIN
        } else {
            i64::MAX
        })
}

/// [`clamped`], rounded up to a whole microsecond.
fn ceil_micros(t: DateTime<Utc>) -> i64 {
    let us = clamped(t);
    if t.timestamp_subsec_nanos() % 1_000 == 0 {
        us
    } else {
        us.saturating_add(1)
    }
}

const UNPAID_DUE: &str = "SELECT tenant, id FROM orders \
     WHERE status = 'awaiting_payment' AND expires_at <= $1 \
     ORDER BY expires_at, tenant, id LIMIT $2";

/// Runs [`update_sql`] (`stmt`) for an order change on `client`: writes the order and its
/// events when the stored version is the expected one, or answers why not. Returns the count
/// of cards released (0 without `release`).
async fn write_change(
    client: &deadpool_postgres::ClientWrapper,
    stmt: &tokio_postgres::Statement,
    change: &OrderChange<'_>,
) -> Result<u64> {
    let order = change.order;
    let doc = to_json(order, "order")?;
    let expected = to_i64(change.expected_version, "order version")?;
    let version = to_i64(order.version(), "order version")?;
    let ev = EventColumns::new(change.events)?;
    let newer = is_newer(change);
    let row = client
        .query_one(
            stmt,
            &[
                &order.tenant().as_str(),
                order.id().as_uuid(),
                &expected,
                &version,
                &order.status().as_str(),
                &micros(order.expires_at()),
                &doc,
                &newer,
                &ev.ids,
                &ev.tenants,
                &ev.types,
                &ev.aggregates,
                &ev.docs,
                &micros(order.updated_at()),
            ],
        )
        .await
        .map_err(|e| with_id(db(e), order.id()))?;
    let current: Option<i64> = get(&row, 0)?;
    let written: bool = get(&row, 1)?;
    if written {
        to_u64(get(&row, 2)?, "count")
    } else {
        Err(change_error(order.id(), current, expected, newer))
    }
}

/// Checks and stores cards bought for an order, sold to it, in the transaction of
/// `write_sold_cards`, after [`LOCK_RING`](crate::vault::LOCK_RING): every card sealed with the
/// tenant's active key, the order at the expected version (locked until the order is written),
/// no card id taken and no blind or legacy index held by the tenant or repeated in the call.
/// Stores the cards only if every check passes; answers each check.
///
/// $1 tenant, $2 order, $3 now, $4.. the cards: id, sku, batch, blind index, index scheme,
/// legacy index, code, secret, key ($4..$12); $13 the expected version, $14 whether the new
/// version is newer.
pub(crate) static INSERT_SOLD: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH ring AS (SELECT {active} AS active FROM key_rings WHERE tenant = $1), \
         cur AS (SELECT version FROM orders WHERE tenant = $1 AND id = $2 FOR UPDATE), \
         u AS (SELECT * FROM unnest($4::uuid[], $5::uuid[], $6::uuid[], $7::bytea[], $8::smallint[], \
                                    $9::bytea[], $10::bytea[], $11::bytea[], $12::bigint[]) \
                    WITH ORDINALITY AS u(id, sku, batch, bi, scheme, legacy, code, secret, key_id, ord)), \
         bad_key AS (SELECT key_id FROM u WHERE key_id IS DISTINCT FROM (SELECT active FROM ring) \
                     ORDER BY ord LIMIT 1), \
         taken AS (SELECT x.id FROM (SELECT id, ord, row_number() OVER (PARTITION BY id ORDER BY ord) AS n \
                                     FROM u) x \
                   WHERE x.n > 1 OR EXISTS (SELECT 1 FROM cards c WHERE c.id = x.id) \
                   ORDER BY x.ord LIMIT 1), \
         dup AS (SELECT x.ord FROM (SELECT bi, legacy, ord, \
                                           row_number() OVER (PARTITION BY bi ORDER BY ord) AS n \
                                    FROM u) x \
                 WHERE x.n > 1 \
                    OR EXISTS (SELECT 1 FROM cards c WHERE c.tenant = $1 AND c.blind_index = x.bi) \
                    OR EXISTS (SELECT 1 FROM cards c WHERE c.tenant = $1 AND c.blind_index = x.legacy)), \
         ok AS (SELECT COALESCE((SELECT version FROM cur) = $13, false) AND $14::boolean \
                       AND NOT EXISTS (SELECT 1 FROM bad_key) AND NOT EXISTS (SELECT 1 FROM taken) \
                       AND NOT EXISTS (SELECT 1 FROM dup) AS v), \
         ins AS ( \
             INSERT INTO cards (id, tenant, sku, batch, blind_index, index_scheme, code, secret, \
                                key_id, state, order_id, sold_at, imported_at) \
             SELECT u.id, $1, u.sku, u.batch, u.bi, u.scheme, u.code, u.secret, u.key_id, 'sold', $2, \
                    $3, $3 \
             FROM u WHERE (SELECT v FROM ok) \
             ORDER BY u.ord \
             ON CONFLICT ON CONSTRAINT cards_blind_index_key DO NOTHING \
             RETURNING id), \
         link AS ({link}) \
         SELECT (SELECT version FROM cur), (SELECT key_id FROM bad_key), (SELECT id FROM taken), \
                ARRAY(SELECT ord FROM dup ORDER BY ord), (SELECT v FROM ok), ARRAY(SELECT id FROM ins)",
        active = crate::vault::ACTIVE_KEY,
        link = link_sql(
            "$2",
            "SELECT u.id, u.ord FROM u WHERE u.id IN (SELECT id FROM ins)",
            "true"
        ),
    )
});

impl PgStore {
    /// Cards bought for an order, stored sold to it, with the order change, in one transaction
    /// that holds the tenant's key ring locked `FOR SHARE` (see `vault`).
    pub(crate) async fn write_sold_cards(
        &self,
        tenant_name: &TenantId,
        cards: &[quanyi_storage::NewCard],
        change: OrderChange<'_>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let order = change.order;
        if order.tenant() != tenant_name {
            return Err(Error::Invalid("order of another tenant".into()));
        }
        let ids: Vec<Uuid> = cards.iter().map(|c| *c.id.as_uuid()).collect();
        let skus: Vec<Uuid> = cards.iter().map(|c| *c.sku.as_uuid()).collect();
        let batches: Vec<Uuid> = cards.iter().map(|c| *c.batch.as_uuid()).collect();
        let indexes: Vec<&[u8]> = cards
            .iter()
            .map(|c| c.blind_index.as_bytes().as_slice())
            .collect();
        let schemes: Vec<i16> = cards
            .iter()
            .map(|c| crate::vault::scheme_column(c.index_scheme))
            .collect();
        let legacy: Vec<Option<&[u8]>> = cards
            .iter()
            .map(|c| c.legacy_index.as_ref().map(|i| i.as_bytes().as_slice()))
            .collect();
        let codes: Vec<&[u8]> = cards.iter().map(|c| c.sealed.code.as_bytes()).collect();
        let secrets: Vec<Option<&[u8]>> = cards
            .iter()
            .map(|c| {
                c.sealed
                    .secret
                    .as_ref()
                    .map(quanyi_vault::SealedValue::as_bytes)
            })
            .collect();
        let keys: Vec<i64> = cards.iter().map(|c| i64::from(c.key_id.0)).collect();
        let expected = to_i64(change.expected_version, "order version")?;
        let newer = is_newer(&change);
        let name = order.tenant().as_str();
        let order_id = order.id();
        let at = micros(now);
        let lock_params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&name];
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 14] = [
            &name,
            order_id.as_uuid(),
            &at,
            &ids,
            &skus,
            &batches,
            &indexes,
            &schemes,
            &legacy,
            &codes,
            &secrets,
            &keys,
            &expected,
            &newer,
        ];
        let mut conn = self.conn().await?;
        let lock = conn.prepare(crate::vault::LOCK_RING).await?;
        let insert = conn.prepare(&INSERT_SOLD).await?;
        let update = conn.prepare(&UPDATE).await?;
        conn.in_txn = true;
        let c = conn.client();
        // One round trip: the ring is locked before the checking statement reads it.
        let (begin, locked, checked) = tokio::join!(
            biased;
            c.batch_execute("BEGIN"),
            c.execute(&lock, &lock_params),
            c.query_one(&insert, &params),
        );
        let outcome = async {
            begin.map_err(db)?;
            locked.map_err(db)?;
            let row = checked.map_err(db)?;
            sold_cards_stored(&row, cards, &change, expected, newer)?;
            write_change(c, &update, &change).await.map(|_| ())
        }
        .await;
        conn.finish(outcome).await
    }
}

fn is_newer(change: &OrderChange<'_>) -> bool {
    change.order.version() > change.expected_version
}

#[async_trait]
impl OrderStore for PgStore {
    async fn place_order(&self, new: NewOrder<'_>, now: DateTime<Utc>) -> Result<Vec<CardId>> {
        let request = PlaceRequest::new(&new, now)?;
        let cards = if !request.limits.is_empty()
            || !request.well_formed
            || !request.claim_keys.is_empty()
            || !request.budget_keys.is_empty()
        {
            // Member limits count under a per-member lock, claims are taken in a transaction,
            // and a malformed call is refused with its reason: all alone.
            self.place_alone(&request).await?
        } else {
            self.combined(
                &self.shared.placements,
                request,
                |store, batch| async move { store.place_batch(batch).await },
                |request| async move { self.place_alone(&request).await },
            )
            .await?
        };
        self.allocated(cards.len());
        Ok(cards)
    }

    async fn update_order(
        &self,
        change: OrderChange<'_>,
        audit: Option<&quanyi_storage::AuditRecord>,
    ) -> Result<()> {
        // An operator's change goes out with its record in one transaction; the engine's own
        // changes stay one statement.
        let trail = crate::logs::TrailColumns::new(quanyi_storage::Trail { events: &[], audit })?;
        let mut conn = self.conn().await?;
        let stmt = conn.prepare(&UPDATE).await?;
        trail.begin(&mut conn).await?;
        let outcome = write_change(conn.client(), &stmt, &change)
            .await
            .map(|_| ());
        trail.end(&mut conn, outcome).await
    }

    async fn refund_order(
        &self,
        change: OrderChange<'_>,
        write: quanyi_storage::RefundWrite<'_>,
    ) -> Result<()> {
        let order = change.order;
        quanyi_storage::check_paid(write.paid, order.tenant())?;
        let void = write.void;
        let trail = crate::logs::TrailColumns::new(quanyi_storage::Trail {
            events: &[],
            audit: write.audit,
        })?;
        let paid = write
            .paid
            .map(|p| -> Result<_> { Ok((p, to_json(p, "refund")?)) })
            .transpose()?;
        let mut conn = self.conn().await?;
        let stmt = conn.prepare(&UPDATE).await?;
        conn.in_txn = true;
        conn.client().batch_execute("BEGIN").await.map_err(db)?;
        let outcome = async {
            if !void.is_empty() {
                let ids: Vec<Uuid> = void.iter().map(|c| *c.as_uuid()).collect();
                let lock = conn.prepare(LOCK_TO_VOID).await?;
                let rows = conn
                    .client()
                    .query(&lock, &[&order.tenant().as_str(), &ids])
                    .await
                    .map_err(db)?;
                for card in void {
                    let row = rows
                        .iter()
                        .find(|r| get::<Uuid>(r, 0).is_ok_and(|id| id == *card.as_uuid()));
                    let Some(row) = row else {
                        return Err(Error::conflict("card", card, "not sold to the order"));
                    };
                    if get::<Option<i64>>(row, 3)?.is_some() {
                        return Err(Error::Revealed { card: *card });
                    }
                    let state: &str = get(row, 1)?;
                    let holder: Option<Uuid> = get(row, 2)?;
                    let voided: Option<i64> = get(row, 4)?;
                    if state != "sold" || holder != Some(*order.id().as_uuid()) || voided.is_some()
                    {
                        return Err(Error::conflict("card", card, "not sold to the order"));
                    }
                }
                let mark = conn.prepare(VOID).await?;
                conn.client()
                    .execute(
                        &mark,
                        &[&order.tenant().as_str(), &ids, &micros(order.updated_at())],
                    )
                    .await
                    .map_err(db)?;
            }
            if let Some((p, doc)) = &paid {
                let ledger = conn.prepare(RECORD_PAID).await?;
                let taken = conn
                    .client()
                    .execute(
                        &ledger,
                        &[
                            &order.tenant().as_str(),
                            &p.refund_id,
                            &micros(p.paid_at),
                            doc,
                        ],
                    )
                    .await
                    .map_err(db)?;
                if taken == 0 {
                    return Err(Error::conflict("refund", &p.refund_id, "paid already"));
                }
            }
            write_change(conn.client(), &stmt, &change).await?;
            let due = conn.prepare(SET_REFUND_DUE).await?;
            conn.client()
                .execute(
                    &due,
                    &[
                        &order.tenant().as_str(),
                        order.id().as_uuid(),
                        &order.refund_due().map(micros),
                    ],
                )
                .await
                .map_err(db)?;
            trail.write(&conn).await
        }
        .await;
        conn.finish(outcome).await
    }

    async fn refunds_paid(
        &self,
        tenant: &TenantId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        after: Option<(DateTime<Utc>, String)>,
        max: usize,
    ) -> Result<Vec<quanyi_storage::PaidRefund>> {
        let (after_at, after_id) = match after {
            Some((at, id)) => (micros(at), id),
            None => (i64::MIN, String::new()),
        };
        let conn = self.conn().await?;
        let stmt = conn.prepare(REFUNDS_PAID).await?;
        let rows = conn
            .client()
            .query(
                &stmt,
                &[
                    &tenant.as_str(),
                    &clamped(from),
                    &clamped(to),
                    &after_at,
                    &after_id,
                    &limit(max),
                ],
            )
            .await
            .map_err(db)?;
        rows.iter()
            .map(|r| from_json(get::<&str>(r, 0)?, "refund"))
            .collect()
    }

    async fn refund_queue(
        &self,
        tenant: &TenantId,
        after: Option<(DateTime<Utc>, OrderId)>,
        max: usize,
    ) -> Result<Vec<Order>> {
        let (after_at, after_id) = match after {
            Some((at, id)) => (micros(at), *id.as_uuid()),
            None => (i64::MIN, Uuid::nil()),
        };
        let conn = self.conn().await?;
        let stmt = conn.prepare(REFUND_QUEUE).await?;
        let rows = conn
            .client()
            .query(
                &stmt,
                &[&tenant.as_str(), &after_at, &after_id, &limit(max)],
            )
            .await
            .map_err(db)?;
        rows.iter()
            .map(|r| from_json(get::<&str>(r, 0)?, "order"))
            .collect()
    }

    async fn close_unpaid_order(&self, change: OrderChange<'_>) -> Result<u32> {
        let conn = self.conn().await?;
        let stmt = conn.prepare(&CLOSE).await?;
        let released = write_change(conn.client(), &stmt, &change).await?;
        Ok(u32::try_from(released).unwrap_or(u32::MAX))
    }

    async fn budget_used(&self, tenant: &TenantId, scope: &str, key: &str) -> Result<u64> {
        let conn = self.conn().await?;
        let stmt = conn.prepare(BUDGET_USED).await?;
        let row = conn
            .client()
            .query_opt(&stmt, &[&tenant.as_str(), &scope, &key])
            .await
            .map_err(db)?;
        match row {
            Some(r) => to_u64(get(&r, 0)?, "budget used"),
            None => Ok(0),
        }
    }

    async fn claim(&self, tenant: &TenantId, scope: &str, key: &str) -> Result<Option<Claim>> {
        let conn = self.conn().await?;
        let stmt = conn.prepare(CLAIM).await?;
        let row = conn
            .client()
            .query_opt(&stmt, &[&tenant.as_str(), &scope, &key])
            .await
            .map_err(db)?;
        row.map(|r| {
            Ok(Claim {
                scope: scope.to_owned(),
                key: key.to_owned(),
                value: get(&r, 0)?,
            })
        })
        .transpose()
    }

    async fn order(&self, tenant: &TenantId, id: OrderId) -> Result<Option<Order>> {
        let conn = self.conn().await?;
        let stmt = conn.prepare(BY_ID).await?;
        let row = conn
            .client()
            .query_opt(&stmt, &[&tenant.as_str(), id.as_uuid()])
            .await
            .map_err(db)?;
        row.map(|r| from_json(get::<&str>(&r, 0)?, "order"))
            .transpose()
    }

    async fn member_orders(
        &self,
        tenant: &TenantId,
        member: &MemberId,
        max: usize,
    ) -> Result<Vec<Order>> {
        let conn = self.conn().await?;
        let stmt = conn.prepare(BY_MEMBER).await?;
        let rows = conn
            .client()
            .query(&stmt, &[&tenant.as_str(), &member.as_str(), &limit(max)])
            .await
            .map_err(db)?;
        rows.iter()
            .map(|r| from_json(get::<&str>(r, 0)?, "order"))
            .collect()
    }

    async fn orders_updated(
        &self,
        tenant: &TenantId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        after: Option<(DateTime<Utc>, OrderId)>,
        max: usize,
    ) -> Result<Vec<Order>> {
        let (after_at, after_id) = match after {
            Some((at, id)) => (micros(at), *id.as_uuid()),
            None => (i64::MIN, Uuid::nil()),
        };
        let conn = self.conn().await?;
        let stmt = conn.prepare(UPDATED).await?;
        let rows = conn
            .client()
            .query(
                &stmt,
                &[
                    &tenant.as_str(),
                    &micros(from),
                    &micros(to),
                    &after_at,
                    &after_id,
                    &limit(max),
                ],
            )
            .await
            .map_err(db)?;
        rows.iter()
            .map(|r| from_json(get::<&str>(r, 0)?, "order"))
            .collect()
    }

    async fn search_orders(
        &self,
        tenant: &TenantId,
        query: &OrderQuery,
        after: Option<OrderCursor>,
        max: usize,
    ) -> Result<Vec<Order>> {
        let member = query.member.as_ref().map(MemberId::as_str);
        // Placement times are whole microseconds: at or after `from` is at or after its next
        // whole microsecond, and before `before` likewise.
        let from = query.placed_from.map_or(i64::MIN, ceil_micros);
        let before = query.placed_before.map_or(i64::MAX, ceil_micros);
        let statuses: Vec<&str> = query.statuses.iter().map(|s| s.as_str()).collect();
        let sku = query.sku.map(|s| *s.as_uuid());
        let sql = SEARCH[usize::from(member.is_some())];
        search_in_pages(query, after, max, |cursor, n| {
            let (at, id) = match cursor {
                Some(c) => (clamped(c.placed_at_micros()), *c.id.as_uuid()),
                None => (i64::MAX, Uuid::max()),
            };
            let statuses = &statuses;
            async move {
                let conn = self.conn().await?;
                let stmt = conn.prepare(sql).await?;
                let rows = conn
                    .client()
                    .query(
                        &stmt,
                        &[
                            &tenant.as_str(),
                            &member,
                            &from,
                            &before,
                            &at,
                            &id,
                            statuses,
                            &sku,
                            &limit(n),
                        ],
                    )
                    .await
                    .map_err(db)?;
                rows.iter()
                    .map(|r| from_json(get::<&str>(r, 0)?, "order"))
                    .collect()
            }
        })
        .await
    }

    async fn unpaid_orders_due(
        &self,
        now: DateTime<Utc>,
        max: usize,
    ) -> Result<Vec<(TenantId, OrderId)>> {
        let conn = self.conn().await?;
        let stmt = conn.prepare(UNPAID_DUE).await?;
        let rows = conn
            .client()
            .query(&stmt, &[&micros(now), &limit(max)])
            .await
            .map_err(db)?;
        rows.iter()
            .map(|r| Ok((tenant(get(r, 0)?)?, OrderId::from_uuid(get::<Uuid>(r, 1)?))))
            .collect()
    }
}

/// Whether [`INSERT_SOLD`] (its `row`) stored every bought card, or why not, checked in the
/// reference adapter's order: the order change, the data keys, the card ids, the blind indexes.
fn sold_cards_stored(
    row: &tokio_postgres::Row,
    cards: &[quanyi_storage::NewCard],
    change: &OrderChange<'_>,
    expected: i64,
    newer: bool,
) -> Result<()> {
    let current: Option<i64> = get(row, 0)?;
    let ok: bool = get(row, 4)?;
    if !ok {
        if current != Some(expected) || !newer {
            return Err(change_error(change.order.id(), current, expected, newer));
        }
        if let Some(key) = get::<Option<i64>>(row, 1)? {
            return Err(Error::KeyNotActive {
                key: crate::vault::key_id(key)?.to_string(),
            });
        }
        if let Some(id) = get::<Option<Uuid>>(row, 2)? {
            return Err(Error::conflict(
                "card",
                CardId::from_uuid(id),
                "id already stored",
            ));
        }
        let positions = get::<Vec<i64>>(row, 3)?
            .into_iter()
            .map(|ord| usize::try_from(ord - 1).map_err(|_| corrupt("position", ord)))
            .collect::<Result<Vec<_>>>()?;
        if !positions.is_empty() {
            return Err(Error::DuplicateCards { positions });
        }
        return Err(Error::conflict("order", change.order.id(), "not written"));
    }
    let stored: HashSet<Uuid> = get::<Vec<Uuid>>(row, 5)?.into_iter().collect();
    if stored.len() == cards.len() {
        return Ok(());
    }
    // Another transaction stored one of these blind indexes after the statement's snapshot.
    Err(Error::DuplicateCards {
        positions: cards
            .iter()
            .enumerate()
            .filter(|(_, c)| !stored.contains(c.id.as_uuid()))
            .map(|(i, _)| i)
            .collect(),
    })
}

/// Why an order change was not written, checked in the reference adapter's order.
pub(crate) fn change_error(
    order: OrderId,
    current: Option<i64>,
    expected: i64,
    newer: bool,
) -> Error {
    match current {
        None => Error::not_found("order", order),
        Some(v) if v != expected => Error::conflict("order", order, "stale version"),
        Some(_) if !newer => Error::Invalid(format!("order {order} written without a new version")),
        Some(_) => Error::conflict("order", order, "not written"),
    }
}
