//! `OrderStore`: orders as JSON documents plus the columns queries need, their lines in
//! `order_lines`, and `place_order` as one statement.

use std::collections::HashMap;
use std::sync::LazyLock;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use quanyi_core::{CardId, GoodsId, MemberId, OrderId, SkuId, TenantId};
use quanyi_order::Order;
use quanyi_storage::{Error, GOODS_CHANGED, NewOrder, OrderChange, OrderStore, Result};
use uuid::Uuid;

use crate::codec::{
    EventColumns, from_json, get, insert_events_sql, limit, micros, tenant, to_i64, to_json, to_u64,
};
use crate::error::{db, with_id};
use crate::vault::{pick_ctes, take_free_sql};
use crate::{Conn, PgStore};

/// Places an order in one statement: checks the id, the versions of the goods it was priced
/// from and the member limits, picks each SKU's cards (oldest first from the `free_cards` queue
/// and lapsed reservations, skipping rows other transactions hold), and only if everything fits
/// inserts the order, its lines and events, takes the cards out of the queue and reserves them.
///
/// $1 tenant, $2 order id, $3 member, $4 status, $5 expires_at (also the reservation deadline),
/// $6 version, $7 doc, $8 line numbers, $9 line SKUs, $10 line quantities, $11..$15 events,
/// $16 reservation SKUs, $17 quantities, $18 now, $19 limit SKUs, $20 limits, $21 requested,
/// $22 whether the call is well formed, $23 the order's updated_at, $24 and $25 the goods the
/// order was priced from and their versions (checked against the statement's snapshot).
///
/// Two shapes: with member limits, and without (most orders), which leaves the member count
/// out of the statement, since the server sets up every part of a statement on every call; that
/// shape takes the same parameters and refuses a call that passes limits.
fn place_sql(with_limits: bool) -> String {
    let (limits_cte, limits_ok, limits_out) = if with_limits {
        (
            LIMITS_CTE,
            "NOT EXISTS (SELECT 1 FROM limits WHERE already + req > max)",
            "ARRAY(SELECT already FROM limits ORDER BY ord)",
        )
    } else {
        (
            "",
            "cardinality($19::uuid[]) + cardinality($20::bigint[]) + cardinality($21::bigint[]) = 0",
            "'{}'::bigint[]",
        )
    };
    format!(
        "WITH existing AS (SELECT EXISTS (SELECT 1 FROM orders WHERE tenant = $1 AND id = $2) AS v), \
         changed AS (SELECT (SELECT p.id FROM unnest($24::uuid[], $25::bigint[]) AS p(id, version) \
                             WHERE NOT EXISTS (SELECT 1 FROM goods g WHERE g.tenant = $1 \
                                               AND g.id = p.id AND g.version = p.version) \
                             LIMIT 1) AS id), \
         {limits_cte}\
         wanted AS (SELECT r.sku, r.qty, r.ord \
                    FROM unnest($16::uuid[], $17::bigint[]) WITH ORDINALITY AS r(sku, qty, ord)), \
         {pick}, \
         got AS (SELECT w.ord, w.qty, (SELECT count(*) FROM pick p WHERE p.ord = w.ord) AS n FROM wanted w), \
         ok AS (SELECT $22::boolean AND NOT (SELECT v FROM existing) \
                   AND (SELECT id FROM changed) IS NULL \
                   AND {limits_ok} \
                   AND NOT EXISTS (SELECT 1 FROM got WHERE n < qty) AS v), \
         new_order AS ( \
             INSERT INTO orders (tenant, id, member, status, expires_at, version, doc, updated_at) \
             SELECT $1, $2, $3, $4, $5, $6, $7, $23 FROM ok WHERE ok.v \
             RETURNING 1 \
         ), \
         lines AS ( \
             INSERT INTO order_lines (tenant, order_id, no, member, sku, quantity) \
             SELECT $1, $2, u.no, $3, u.sku, u.qty \
             FROM unnest($8::integer[], $9::uuid[], $10::bigint[]) AS u(no, sku, qty) \
             WHERE EXISTS (SELECT 1 FROM new_order) \
         ), \
         ev AS ({ev}), \
         take AS ({take}), \
         base AS (SELECT COALESCE(max(hold_pos), 0) AS v FROM cards WHERE order_id = $2), \
         reserve AS ( \
             UPDATE cards c SET state = 'reserved', order_id = $2, reserved_until = $5, \
                    hold_pos = (SELECT v FROM base) + p.pos \
             FROM (SELECT id, row_number() OVER (ORDER BY ord, id) AS pos FROM pick) p \
             WHERE c.id = p.id AND EXISTS (SELECT 1 FROM new_order) \
         ) \
         SELECT (SELECT v FROM existing), {limits_out}, \
                ARRAY(SELECT n FROM got ORDER BY ord), \
                EXISTS (SELECT 1 FROM new_order), ARRAY(SELECT id FROM pick ORDER BY ord, id), \
                (SELECT id FROM changed)",
        ev = insert_events_sql(11, "EXISTS (SELECT 1 FROM new_order)"),
        pick = pick_ctes("wanted", "$1", "$18", ""),
        take = take_free_sql("$1", "EXISTS (SELECT 1 FROM new_order)"),
    )
}

/// The per-member count of [`place_sql`]'s shape with limits.
const LIMITS_CTE: &str = "limits AS ( \
     SELECT l.ord, l.max, l.req, COALESCE(( \
         SELECT sum(ol.quantity) FROM order_lines ol \
         JOIN orders o ON o.tenant = ol.tenant AND o.id = ol.order_id \
         WHERE ol.tenant = $1 AND ol.member = $3 AND ol.sku = l.sku \
           AND o.status NOT IN ('expired', 'cancelled', 'refunded') \
     ), 0)::bigint AS already \
     FROM unnest($19::uuid[], $20::bigint[], $21::bigint[]) WITH ORDINALITY AS l(sku, max, req, ord) \
 ), ";

/// [`place_sql`] without and with member limits.
static PLACE: LazyLock<[String; 2]> = LazyLock::new(|| [place_sql(false), place_sql(true)]);

/// Serializes the limit checks of one member (taken before [`PLACE`], in the same transaction,
/// so its count sees every order committed before the lock was granted).
const MEMBER_LOCK: &str = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))";

/// $1 tenant, $2 id, $3 expected version, $4 new version, $5 status, $6 expires_at, $7 doc,
/// $8 whether the new version is newer, $9..$13 events, $14 the order's updated_at.
static UPDATE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH cur AS (SELECT version FROM orders WHERE tenant = $1 AND id = $2 FOR UPDATE), \
         ok AS (SELECT COALESCE((SELECT version FROM cur) = $3, false) AND $8::boolean AS v), \
         upd AS (UPDATE orders SET version = $4, status = $5, expires_at = $6, doc = $7, \
                        updated_at = $14 \
                 WHERE tenant = $1 AND id = $2 AND (SELECT v FROM ok) RETURNING 1), \
         ev AS ({}) \
         SELECT (SELECT version FROM cur), EXISTS (SELECT 1 FROM upd)",
        insert_events_sql(9, "EXISTS (SELECT 1 FROM upd)")
    )
});

const BY_ID: &str = "SELECT doc FROM orders WHERE tenant = $1 AND id = $2";
const BY_MEMBER: &str =
    "SELECT doc FROM orders WHERE tenant = $1 AND member = $2 ORDER BY id DESC LIMIT $3";
const UPDATED: &str = "SELECT doc FROM orders \
     WHERE tenant = $1 AND updated_at >= $2 AND updated_at < $3 \
       AND (updated_at, id) > ($4, $5) \
     ORDER BY updated_at, id LIMIT $6";
const UNPAID_DUE: &str = "SELECT tenant, id FROM orders \
     WHERE status = 'awaiting_payment' AND expires_at <= $1 \
     ORDER BY expires_at, tenant, id LIMIT $2";

/// Runs [`UPDATE`] for an order change on `client`: writes the order and its events when the
/// stored version is the expected one, or answers why not.
async fn write_change(
    client: &deadpool_postgres::ClientWrapper,
    stmt: &tokio_postgres::Statement,
    change: &OrderChange<'_>,
) -> Result<()> {
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
        Ok(())
    } else {
        Err(change_error(order, current, expected, newer))
    }
}

/// The result of [`PLACE`].
struct Placed {
    existing: bool,
    already: Vec<i64>,
    got: Vec<i64>,
    inserted: bool,
    picked: Vec<Uuid>,
    changed_goods: Option<Uuid>,
}

/// $1 tenant, $2 order, $3 now, $4.. the cards: id, sku, batch, blind index, code, secret, key.
const INSERT_SOLD: &str = "WITH base AS (SELECT COALESCE(max(hold_pos), 0) AS v FROM cards WHERE order_id = $2) \
     INSERT INTO cards (id, tenant, sku, batch, blind_index, code, secret, key_id, state, order_id, \
                        sold_at, hold_pos, imported_at) \
     SELECT u.id, $1, u.sku, u.batch, u.bi, u.code, u.secret, u.key_id, 'sold', $2, $3, \
            (SELECT v FROM base) + u.ord, $3 \
     FROM unnest($4::uuid[], $5::uuid[], $6::uuid[], $7::bytea[], $8::bytea[], $9::bytea[], $10::bigint[]) \
          WITH ORDINALITY AS u(id, sku, batch, bi, code, secret, key_id, ord) \
     ORDER BY u.ord \
     ON CONFLICT DO NOTHING \
     RETURNING id";

impl PgStore {
    /// Cards bought for an order, stored sold to it, with the order change, in one transaction.
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
        let mut conn = self.conn().await?;
        let insert = conn.prepare(INSERT_SOLD).await?;
        let update = conn.prepare(&UPDATE).await?;
        conn.in_txn = true;
        let c = conn.client();
        c.batch_execute("BEGIN").await.map_err(db)?;
        let outcome = async {
            let stored = c
                .query(
                    &insert,
                    &[
                        &order.tenant().as_str(),
                        order.id().as_uuid(),
                        &micros(now),
                        &ids,
                        &skus,
                        &batches,
                        &indexes,
                        &codes,
                        &secrets,
                        &keys,
                    ],
                )
                .await
                .map_err(db)?;
            if stored.len() != cards.len() {
                return Err(Error::conflict(
                    "card",
                    order.id(),
                    "card id or blind index already stored",
                ));
            }
            write_change(c, &update, &change).await
        }
        .await;
        match outcome {
            Ok(()) => c.batch_execute("COMMIT").await.map_err(db)?,
            Err(e) => {
                c.batch_execute("ROLLBACK").await.map_err(db)?;
                conn.in_txn = false;
                return Err(e);
            }
        }
        conn.in_txn = false;
        Ok(())
    }

    async fn run_place(
        &self,
        conn: &mut Conn,
        lock_key: Option<String>,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Placed> {
        let place = conn
            .prepare(&PLACE[usize::from(lock_key.is_some())])
            .await?;
        let row = match lock_key {
            None => conn.client().query_one(&place, params).await.map_err(db)?,
            Some(key) => {
                // BEGIN, lock, place and COMMIT go out together: one round trip. A failed
                // statement aborts the transaction, and COMMIT then rolls it back.
                let lock = conn.prepare(MEMBER_LOCK).await?;
                let lock_params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&key];
                conn.in_txn = true;
                let c = conn.client();
                let (begin, locked, placed, commit) = tokio::join!(
                    biased;
                    c.batch_execute("BEGIN"),
                    c.execute(&lock, &lock_params),
                    c.query_one(&place, params),
                    c.batch_execute("COMMIT"),
                );
                // COMMIT was answered (or the connection is gone): no transaction is open.
                conn.in_txn = false;
                begin.map_err(db)?;
                locked.map_err(db)?;
                let row = placed.map_err(db)?;
                commit.map_err(db)?;
                row
            }
        };
        Ok(Placed {
            existing: get(&row, 0)?,
            already: get(&row, 1)?,
            got: get(&row, 2)?,
            inserted: get(&row, 3)?,
            picked: get(&row, 4)?,
            changed_goods: get(&row, 5)?,
        })
    }
}

fn is_newer(change: &OrderChange<'_>) -> bool {
    change.order.version() > change.expected_version
}

#[async_trait]
impl OrderStore for PgStore {
    async fn place_order(&self, new: NewOrder<'_>, now: DateTime<Utc>) -> Result<Vec<CardId>> {
        let order = new.order;
        let doc = to_json(order, "order")?;
        let version = to_i64(order.version(), "order version")?;
        let (mut nos, mut line_skus, mut line_qtys) = (Vec::new(), Vec::new(), Vec::new());
        for l in order.lines() {
            nos.push(i32::from(l.no));
            line_skus.push(*l.sku.as_uuid());
            line_qtys.push(i64::from(l.quantity));
        }
        let ev = EventColumns::new(new.events)?;
        // One pick per SKU: repeated SKUs (outside the port's contract) are merged.
        let mut slot: HashMap<SkuId, usize> = HashMap::new();
        let (mut res_skus, mut res_qtys): (Vec<Uuid>, Vec<i64>) = (Vec::new(), Vec::new());
        for r in new.reservations {
            let i = *slot.entry(r.sku).or_insert_with(|| {
                res_skus.push(*r.sku.as_uuid());
                res_qtys.push(0);
                res_qtys.len() - 1
            });
            res_qtys[i] += i64::from(r.quantity);
        }
        let well_formed = new.reservations.iter().all(|r| r.quantity > 0);
        let updated = micros(order.updated_at());
        let mut lim_skus = Vec::new();
        let mut lim_max = Vec::new();
        let mut lim_req = Vec::new();
        let mut requested_of = Vec::new();
        for l in new.member_limits {
            let requested: u32 = order
                .lines()
                .iter()
                .filter(|line| line.sku == l.sku)
                .map(|line| line.quantity)
                .fold(0u32, u32::saturating_add);
            lim_skus.push(*l.sku.as_uuid());
            lim_max.push(i64::from(l.limit));
            lim_req.push(i64::from(requested));
            requested_of.push(requested);
        }
        let tenant_name = order.tenant().as_str();
        let order_id = *order.id().as_uuid();
        let member = order.member().as_str();
        let status = order.status().as_str();
        let expires = micros(order.expires_at());
        let now = micros(now);
        let goods_ids: Vec<Uuid> = new.priced_from.iter().map(|g| *g.id.as_uuid()).collect();
        let goods_versions = new
            .priced_from
            .iter()
            .map(|g| to_i64(g.version, "goods version"))
            .collect::<Result<Vec<i64>>>()?;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 25] = [
            &tenant_name,
            &order_id,
            &member,
            &status,
            &expires,
            &version,
            &doc,
            &nos,
            &line_skus,
            &line_qtys,
            &ev.ids,
            &ev.tenants,
            &ev.types,
            &ev.aggregates,
            &ev.docs,
            &res_skus,
            &res_qtys,
            &now,
            &lim_skus,
            &lim_max,
            &lim_req,
            &well_formed,
            &updated,
            &goods_ids,
            &goods_versions,
        ];
        let lock_key = (!new.member_limits.is_empty())
            .then(|| format!("{}:{}:{}", self.schema(), tenant_name, member));
        let mut conn = self.conn().await?;
        let placed = self
            .run_place(&mut conn, lock_key, &params)
            .await
            .map_err(|e| with_id(e, order.id()))?;
        drop(conn);

        if placed.existing {
            return Err(Error::conflict("order", order.id(), "id already stored"));
        }
        if let Some(goods) = placed.changed_goods {
            return Err(Error::conflict(
                "goods",
                GoodsId::from_uuid(goods),
                GOODS_CHANGED,
            ));
        }
        for (i, l) in new.member_limits.iter().enumerate() {
            let already = to_u64(placed.already.get(i).copied().unwrap_or(0), "quantity")?;
            let requested = requested_of.get(i).copied().unwrap_or(0);
            if already.saturating_add(u64::from(requested)) > u64::from(l.limit) {
                return Err(Error::MemberLimitExceeded {
                    sku: l.sku,
                    limit: l.limit,
                    already,
                    requested,
                });
            }
        }
        let mut used = vec![0u64; res_skus.len()];
        for r in new.reservations {
            if r.quantity == 0 {
                return Err(Error::Invalid("reserve of zero cards".into()));
            }
            let i = slot.get(&r.sku).copied().unwrap_or(0);
            let got = to_u64(placed.got.get(i).copied().unwrap_or(0), "count")?;
            let available = got.saturating_sub(used[i]);
            if available < u64::from(r.quantity) {
                return Err(Error::OutOfStock {
                    sku: r.sku,
                    requested: r.quantity,
                    available,
                });
            }
            used[i] += u64::from(r.quantity);
        }
        if !placed.inserted {
            return Err(Error::conflict("order", order.id(), "not written"));
        }
        Ok(placed.picked.into_iter().map(CardId::from_uuid).collect())
    }

    async fn update_order(&self, change: OrderChange<'_>) -> Result<()> {
        let conn = self.conn().await?;
        let stmt = conn.prepare(&UPDATE).await?;
        write_change(conn.client(), &stmt, &change).await
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

/// Why an order change was not written, checked in the reference adapter's order.
pub(crate) fn change_error(
    order: &Order,
    current: Option<i64>,
    expected: i64,
    newer: bool,
) -> Error {
    match current {
        None => Error::not_found("order", order.id()),
        Some(v) if v != expected => Error::conflict("order", order.id(), "stale version"),
        Some(_) if !newer => Error::Invalid(format!(
            "order {} written without a new version",
            order.id()
        )),
        Some(_) => Error::conflict("order", order.id(), "not written"),
    }
}
