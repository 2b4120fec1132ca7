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
    OrderStore, Result, search_in_pages,
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

/// Places an order in one statement: checks the id, the versions of the goods it was priced
/// from and the member limits, picks each SKU's cards (oldest first from the `free_cards` queue
/// and lapsed reservations, skipping rows other transactions hold), and only if everything fits
/// inserts the order, its lines and events, takes the cards out of the queue and reserves them.
///
/// $1 tenant, $2 order id, $3 member, $4 status, $5 expires_at (also the reservation deadline),
/// $6 version, $7 doc, $8 line numbers, $9 line SKUs, $10 line quantities, $11..$15 events,
/// $16 reservation SKUs, $17 quantities, $18 now, $19 limit SKUs, $20 limits, $21 requested,
/// $22 whether the call is well formed, $23 the order's updated_at, $24 and $25 the goods the
/// order was priced from and their versions (checked against the statement's snapshot), $26 the
/// order's placement time (`placed_at`), $27 whether each limit releases units on refund.
///
/// The "lines" ($8..$10, and the `line_skus`, `line_qtys` columns) are what the order counts
/// toward member limits (`Order::limit_units`): each line's SKU and quantity, and each benefit
/// pack's SKU and packs.
///
/// Two shapes: with member limits, and without (most orders), which leaves the member count
/// out of the statement, since the server sets up every part of a statement on every call; that
/// shape takes the same parameters and refuses a call that passes limits.
fn place_sql(with_limits: bool) -> String {
    let (limits_cte, limits_ok, limits_out) = if with_limits {
        (
            limits_cte(),
            "NOT EXISTS (SELECT 1 FROM limits WHERE already + req > max)",
            "ARRAY(SELECT already FROM limits ORDER BY ord)",
        )
    } else {
        (
            String::new(),
            "cardinality($19::uuid[]) + cardinality($20::bigint[]) + cardinality($21::bigint[]) \
             + cardinality($27::boolean[]) = 0",
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
             INSERT INTO orders (tenant, id, member, status, expires_at, version, doc, updated_at, \
                                 line_skus, line_qtys, placed_at) \
             SELECT $1, $2, $3, $4, $5, $6, $7, $23, \
                    ARRAY(SELECT u.sku FROM unnest($8::integer[], $9::uuid[]) AS u(no, sku) \
                          ORDER BY u.no), \
                    ARRAY(SELECT u.qty FROM unnest($8::integer[], $10::bigint[]) AS u(no, qty) \
                          ORDER BY u.no), $26 \
             FROM ok WHERE ok.v \
             RETURNING 1 \
         ), \
         ev AS ({ev}), \
         take AS ({take}), \
         untake AS ({untake}), \
         reserve AS ( \
             UPDATE cards c SET state = 'reserved', order_id = $2, reserved_until = $5 \
             WHERE c.id = ANY(ARRAY(SELECT id FROM pick)) AND EXISTS (SELECT 1 FROM new_order) \
         ), \
         hold AS ( \
             INSERT INTO held_cards (tenant, sku, until, id) \
             SELECT $1, sku, $5, id FROM pick WHERE EXISTS (SELECT 1 FROM new_order)), \
         link AS ({link}) \
         SELECT (SELECT v FROM existing), {limits_out}, \
                ARRAY(SELECT n FROM got ORDER BY ord), \
                EXISTS (SELECT 1 FROM new_order), ARRAY(SELECT id FROM pick ORDER BY ord, id), \
                (SELECT id FROM changed)",
        ev = insert_events_sql(11, "EXISTS (SELECT 1 FROM new_order)"),
        pick = pick_ctes("wanted", "$1", "$18", ""),
        take = take_free_sql("EXISTS (SELECT 1 FROM new_order)"),
        untake = take_lapsed_sql("$1", "EXISTS (SELECT 1 FROM new_order)"),
        link = link_sql(
            "$2",
            "SELECT id, row_number() OVER (ORDER BY ord, id) FROM pick",
            "EXISTS (SELECT 1 FROM new_order)"
        ),
    )
}

/// The per-member count of [`place_sql`]'s shape with limits: the member's units in orders
/// that count toward each limit (`OrderStatus::counts_toward_limit`: all but those never paid,
/// and but refunded ones for a limit that releases units on refund).
fn limits_cte() -> String {
    let never_paid: Vec<String> = quanyi_order::OrderStatus::NEVER_PAID
        .iter()
        .map(|s| format!("'{}'", s.as_str()))
        .collect();
    format!(
        "limits AS ( \
         SELECT l.ord, l.max, l.req, COALESCE(( \
             SELECT sum(u.qty) FROM orders o \
             CROSS JOIN LATERAL unnest(o.line_skus, o.line_qtys) AS u(sku, qty) \
             WHERE o.tenant = $1 AND o.member = $3 AND u.sku = l.sku \
               AND o.status NOT IN ({}) AND (NOT l.rel OR o.status <> '{}') \
         ), 0)::bigint AS already \
         FROM unnest($19::uuid[], $20::bigint[], $21::bigint[], $27::boolean[]) \
              WITH ORDINALITY AS l(sku, max, req, rel, ord) \
     ), ",
        never_paid.join(", "),
        quanyi_order::OrderStatus::Refunded.as_str()
    )
}

/// [`place_sql`] without and with member limits.
pub(crate) static PLACE: LazyLock<[String; 2]> =
    LazyLock::new(|| [place_sql(false), place_sql(true)]);

/// Serializes the limit checks of one member (taken before [`PLACE`], in the same transaction,
/// so its count sees every order committed before the lock was granted).
const MEMBER_LOCK: &str = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))";

/// Takes a placement's claims: $1 tenant, $2 scopes, $3 keys, $4 values, $5 now. A claim another
/// transaction took fails on `sale_claims_pkey` (after waiting for it to end).
const INSERT_CLAIMS: &str = "INSERT INTO sale_claims (tenant, scope, key, value, taken_at) \
     SELECT $1, c.scope, c.key, c.value, $5 \
     FROM unnest($2::text[], $3::text[], $4::text[]) AS c(scope, key, value)";

/// The claim stored for $1 tenant, $2 scope, $3 key.
const CLAIM: &str = "SELECT value FROM sale_claims WHERE tenant = $1 AND scope = $2 AND key = $3";

/// Writes an order change: $1 tenant, $2 id, $3 expected version, $4 new version, $5 status,
/// $6 expires_at, $7 doc, $8 whether the new version is newer, $9..$13 events, $14 the order's
/// updated_at. With `release`, only if the order is written, its reserved cards go back to stock
/// (and to the free queue) in the same statement, and the third column counts them; they are
/// found as in [`RELEASE`](crate::vault::RELEASE).
fn update_sql(release: bool) -> String {
    let (release_cte, released) = if release {
        (
            format!(
                ", {}",
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

/// The result of [`PLACE`].
struct Placed {
    existing: bool,
    already: Vec<i64>,
    got: Vec<i64>,
    inserted: bool,
    picked: Vec<Uuid>,
    changed_goods: Option<Uuid>,
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
        Placed::from_row(&row)
    }

    /// [`PLACE`] with the claims the placement takes, in one transaction. BEGIN, the member's
    /// lock (with limits), the claims and the placement go out together; the transaction commits
    /// only when the placement wrote the order, so a refused placement takes no claim. The
    /// claims go first: a retry racing the call that took its key waits for that call's
    /// transaction on the unique key instead of competing for its cards, then finds the key
    /// taken and answers `Claimed` with the stored claim.
    async fn place_claimed(
        &self,
        conn: &mut Conn,
        request: &PlaceRequest,
        lock_key: Option<String>,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<CardId>> {
        let r = request;
        let place = conn
            .prepare(&PLACE[usize::from(lock_key.is_some())])
            .await?;
        let lock = conn.prepare(MEMBER_LOCK).await?;
        let insert = conn.prepare(INSERT_CLAIMS).await?;
        let claim_params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] = [
            &r.tenant,
            &r.claim_scopes,
            &r.claim_keys,
            &r.claim_values,
            &r.now,
        ];
        conn.in_txn = true;
        let c = conn.client();
        let (begin, locked, claimed, placed) = tokio::join!(
            biased;
            c.batch_execute("BEGIN"),
            async {
                match &lock_key {
                    Some(key) => c.execute(&lock, &[key]).await.map(|_| ()),
                    None => Ok(()),
                }
            },
            c.execute(&insert, &claim_params),
            c.query_one(&place, params),
        );
        let outcome = (|| {
            begin.map_err(db)?;
            locked.map_err(db)?;
            claimed.map_err(db)?;
            r.outcome(Placed::from_row(&placed.map_err(db)?)?)
        })();
        match conn.finish(outcome).await {
            Err(Error::Conflict { what: "claim", .. }) => {
                let stmt = conn.prepare(CLAIM).await?;
                for ((scope, key), _) in r
                    .claim_scopes
                    .iter()
                    .zip(&r.claim_keys)
                    .zip(&r.claim_values)
                {
                    let row = conn
                        .client()
                        .query_opt(&stmt, &[&r.tenant, scope, key])
                        .await
                        .map_err(db)?;
                    if let Some(row) = row {
                        return Err(Error::Claimed {
                            claim: Box::new(Claim {
                                scope: scope.clone(),
                                key: key.clone(),
                                value: get(&row, 0)?,
                            }),
                        });
                    }
                }
                Err(Error::conflict(
                    "claim",
                    r.order,
                    "taken by a write that did not commit",
                ))
            }
            other => other,
        }
    }
}

impl Placed {
    fn from_row(row: &tokio_postgres::Row) -> Result<Self> {
        Ok(Placed {
            existing: get(row, 0)?,
            already: get(row, 1)?,
            got: get(row, 2)?,
            inserted: get(row, 3)?,
            picked: get(row, 4)?,
            changed_goods: get(row, 5)?,
        })
    }
}

/// A placement with everything it binds owned, so that a batch task can carry it.
pub(crate) struct PlaceRequest {
    order: OrderId,
    tenant: String,
    member: String,
    status: &'static str,
    expires: i64,
    version: i64,
    doc: String,
    updated: i64,
    placed: i64,
    now: i64,
    nos: Vec<i32>,
    line_skus: Vec<Uuid>,
    line_qtys: Vec<i64>,
    ev: EventColumns,
    /// One entry per SKU reserved (repeated SKUs, outside the port's contract, merged).
    res_skus: Vec<Uuid>,
    res_qtys: Vec<i64>,
    /// The reservations as the call gave them, with their SKU's entry in `res_skus`.
    reservations: Vec<(SkuId, u32, usize)>,
    well_formed: bool,
    /// Per member limit: the limit, and the quantity the order asks for.
    limits: Vec<(MemberLimit, u32)>,
    goods_ids: Vec<Uuid>,
    goods_versions: Vec<i64>,
    /// The claims the placement takes (placed alone, in a transaction, when there are any).
    claim_scopes: Vec<String>,
    claim_keys: Vec<String>,
    claim_values: Vec<String>,
}

impl PlaceRequest {
    fn new(new: &NewOrder<'_>, now: DateTime<Utc>) -> Result<Self> {
        Claim::check_all(new.claims)?;
        let order = new.order;
        let (mut nos, mut line_skus, mut line_qtys) = (Vec::new(), Vec::new(), Vec::new());
        for (no, (sku, units)) in (1..).zip(order.limit_units()) {
            nos.push(no);
            line_skus.push(*sku.as_uuid());
            line_qtys.push(i64::from(units));
        }
        let mut slot: HashMap<SkuId, usize> = HashMap::new();
        let (mut res_skus, mut res_qtys): (Vec<Uuid>, Vec<i64>) = (Vec::new(), Vec::new());
        let mut reservations = Vec::with_capacity(new.reservations.len());
        for r in new.reservations {
            let i = *slot.entry(r.sku).or_insert_with(|| {
                res_skus.push(*r.sku.as_uuid());
                res_qtys.push(0);
                res_qtys.len() - 1
            });
            res_qtys[i] += i64::from(r.quantity);
            reservations.push((r.sku, r.quantity, i));
        }
        let limits = new
            .member_limits
            .iter()
            .map(|l| (*l, order.quantity_of(l.sku)))
            .collect();
        Ok(PlaceRequest {
            order: order.id(),
            tenant: order.tenant().as_str().to_owned(),
            member: order.member().as_str().to_owned(),
            status: order.status().as_str(),
            expires: micros(order.expires_at()),
            version: to_i64(order.version(), "order version")?,
            doc: to_json(order, "order")?,
            updated: micros(order.updated_at()),
            placed: micros(quanyi_storage::placed_at(order)),
            now: micros(now),
            nos,
            line_skus,
            line_qtys,
            ev: EventColumns::new(new.events)?,
            res_skus,
            res_qtys,
            reservations,
            well_formed: new.reservations.iter().all(|r| r.quantity > 0),
            limits,
            goods_ids: new.priced_from.iter().map(|g| *g.id.as_uuid()).collect(),
            goods_versions: new
                .priced_from
                .iter()
                .map(|g| to_i64(g.version, "goods version"))
                .collect::<Result<Vec<i64>>>()?,
            claim_scopes: new.claims.iter().map(|c| c.scope.clone()).collect(),
            claim_keys: new.claims.iter().map(|c| c.key.clone()).collect(),
            claim_values: new.claims.iter().map(|c| c.value.clone()).collect(),
        })
    }

    /// The answer to a call, from what [`PLACE`] reported, in the reference adapter's order
    /// of checks.
    fn outcome(&self, placed: Placed) -> Result<Vec<CardId>> {
        if placed.existing {
            return Err(Error::conflict("order", self.order, "id already stored"));
        }
        if let Some(goods) = placed.changed_goods {
            return Err(Error::conflict(
                "goods",
                GoodsId::from_uuid(goods),
                GOODS_CHANGED,
            ));
        }
        for (i, &(MemberLimit { sku, limit, .. }, requested)) in self.limits.iter().enumerate() {
            let already = to_u64(placed.already.get(i).copied().unwrap_or(0), "quantity")?;
            if already.saturating_add(u64::from(requested)) > u64::from(limit) {
                return Err(Error::MemberLimitExceeded {
                    sku,
                    limit,
                    already,
                    requested,
                });
            }
        }
        let mut used = vec![0u64; self.res_skus.len()];
        for &(sku, quantity, i) in &self.reservations {
            if quantity == 0 {
                return Err(Error::Invalid("reserve of zero cards".into()));
            }
            let got = to_u64(placed.got.get(i).copied().unwrap_or(0), "count")?;
            let available = got.saturating_sub(used[i]);
            if available < u64::from(quantity) {
                return Err(Error::OutOfStock {
                    sku,
                    requested: quantity,
                    available,
                });
            }
            used[i] += u64::from(quantity);
        }
        if !placed.inserted {
            return Err(Error::conflict("order", self.order, "not written"));
        }
        Ok(placed.picked.into_iter().map(CardId::from_uuid).collect())
    }
}

/// The columns of a [`PLACE_BATCH`] call: every request's values, and the lines, events,
/// reservations and goods versions of all of them, each tagged with its request's position
/// (from 1, as `WITH ORDINALITY` counts).
#[derive(Default)]
struct PlaceColumns<'a> {
    tenants: Vec<&'a str>,
    ids: Vec<Uuid>,
    members: Vec<&'a str>,
    statuses: Vec<&'a str>,
    expires: Vec<i64>,
    versions: Vec<i64>,
    docs: Vec<&'a str>,
    updated: Vec<i64>,
    placed: Vec<i64>,
    line_k: Vec<i64>,
    nos: Vec<i32>,
    line_skus: Vec<Uuid>,
    line_qtys: Vec<i64>,
    ev: TaggedEvents<'a>,
    res_k: Vec<i64>,
    res_skus: Vec<Uuid>,
    res_qtys: Vec<i64>,
    goods_k: Vec<i64>,
    goods_ids: Vec<Uuid>,
    goods_versions: Vec<i64>,
}

impl<'a> PlaceColumns<'a> {
    fn new(requests: &[&'a PlaceRequest]) -> Self {
        let mut c = PlaceColumns::default();
        for (k, r) in (1i64..).zip(requests) {
            c.tenants.push(&r.tenant);
            c.ids.push(*r.order.as_uuid());
            c.members.push(&r.member);
            c.statuses.push(r.status);
            c.expires.push(r.expires);
            c.versions.push(r.version);
            c.docs.push(&r.doc);
            c.updated.push(r.updated);
            c.placed.push(r.placed);
            c.line_k.extend(std::iter::repeat_n(k, r.nos.len()));
            c.nos.extend(&r.nos);
            c.line_skus.extend(&r.line_skus);
            c.line_qtys.extend(&r.line_qtys);
            c.ev.push(k, &r.ev);
            c.res_k.extend(std::iter::repeat_n(k, r.res_skus.len()));
            c.res_skus.extend(&r.res_skus);
            c.res_qtys.extend(&r.res_qtys);
            c.goods_k.extend(std::iter::repeat_n(k, r.goods_ids.len()));
            c.goods_ids.extend(&r.goods_ids);
            c.goods_versions.extend(&r.goods_versions);
        }
        c
    }
}

/// Places several orders (no member limits, well formed, distinct ids) in one statement. Each
/// request passes the checks of [`PLACE`] on its own: id not stored, goods unchanged, every
/// SKU's cards found. The cards of a SKU are picked once for the whole batch, oldest first, as
/// many as all its requests want, and handed out in request order; a request that does not get
/// all it wants takes none and is not written. Returns the position of each placed request
/// (from 1) with its cards in [`PLACE`]'s order; requests not returned wrote nothing.
///
/// $1..$8 per request: tenant, id, member, status, expires_at, version, doc, updated_at;
/// $9 now (the earliest of the calls'); lines $10 request, $11 no, $12 SKU, $13 quantity; events $14 request, $15..$19
/// id, tenant, aggregate type, aggregate id, doc; reservations $20 request, $21 SKU,
/// $22 quantity; goods $23 request, $24 id, $25 version; $26 per request: placement time.
pub(crate) static PLACE_BATCH: LazyLock<String> = LazyLock::new(|| {
    "WITH o AS ( \
         SELECT * FROM unnest($1::text[], $2::uuid[], $3::text[], $4::text[], $5::bigint[], \
                              $6::bigint[], $7::text[], $8::bigint[], $26::bigint[]) \
              WITH ORDINALITY AS o(tenant, id, member, status, expires_at, version, doc, updated_at, \
                                   placed_at, k)), \
     checked AS ( \
         SELECT o.k, o.tenant, \
                (SELECT EXISTS (SELECT 1 FROM orders x WHERE x.tenant = o.tenant AND x.id = o.id)) AS stored, \
                (SELECT count(*) FROM unnest($23::bigint[], $24::uuid[], $25::bigint[]) AS p(k, id, version) \
                 WHERE p.k = o.k \
                   AND NOT (SELECT EXISTS (SELECT 1 FROM goods g WHERE g.tenant = o.tenant \
                                           AND g.id = p.id AND g.version = p.version))) AS changed \
         FROM o), \
     pre AS (SELECT k, tenant FROM checked WHERE NOT stored AND changed = 0), \
     want AS ( \
         SELECT r.k, r.ord, pre.tenant, r.sku, r.qty \
         FROM unnest($20::bigint[], $21::uuid[], $22::bigint[]) WITH ORDINALITY AS r(k, sku, qty, ord) \
         JOIN pre ON pre.k = r.k), \
     demand AS (SELECT tenant, sku, sum(qty)::bigint AS qty FROM want GROUP BY tenant, sku), \
     free_pick AS ( \
         SELECT d.tenant, d.sku, f.id, f.ctid AS fctid FROM demand d \
         CROSS JOIN LATERAL ( \
             SELECT id, ctid FROM free_cards WHERE tenant = d.tenant AND sku = d.sku \
             ORDER BY id LIMIT d.qty \
             FOR UPDATE SKIP LOCKED) f), \
     lapsed_pick AS ( \
         SELECT d.tenant, d.sku, l.id, l.reserved_until FROM demand d \
         CROSS JOIN LATERAL ( \
             SELECT c.id, c.reserved_until FROM held_cards h JOIN cards c ON c.id = h.id \
             WHERE h.tenant = d.tenant AND h.sku = d.sku AND h.until <= $9 \
               AND c.tenant = d.tenant AND c.state = 'reserved' AND c.reserved_until <= $9 \
             ORDER BY h.id LIMIT d.qty \
             FOR UPDATE OF c SKIP LOCKED) l), \
     pool AS ( \
         SELECT a.tenant, a.sku, a.id, a.free, a.fctid, a.huntil, \
                row_number() OVER (PARTITION BY a.tenant, a.sku ORDER BY a.id) AS rn \
         FROM (SELECT tenant, sku, id, true AS free, fctid, NULL::bigint AS huntil FROM free_pick \
               UNION ALL SELECT tenant, sku, id, false, NULL::tid, reserved_until \
               FROM lapsed_pick) a), \
     span AS ( \
         SELECT w.k, w.ord, w.tenant, w.sku, w.qty, \
                (sum(w.qty) OVER (PARTITION BY w.tenant, w.sku ORDER BY w.ord))::bigint - w.qty AS start \
         FROM want w), \
     given AS ( \
         SELECT s.k, s.ord, p.tenant, p.sku, p.id, p.free, p.fctid, p.huntil FROM span s \
         JOIN pool p ON p.tenant = s.tenant AND p.sku = s.sku \
                    AND p.rn > s.start AND p.rn <= s.start + s.qty), \
     ok AS ( \
         SELECT pre.k FROM pre \
         WHERE NOT EXISTS (SELECT 1 FROM span s WHERE s.k = pre.k \
                           AND s.qty > (SELECT count(*) FROM given g WHERE g.k = s.k AND g.ord = s.ord))), \
     lines AS ( \
         SELECT l.k, array_agg(l.sku ORDER BY l.no) AS skus, array_agg(l.qty ORDER BY l.no) AS qtys \
         FROM unnest($10::bigint[], $11::integer[], $12::uuid[], $13::bigint[]) AS l(k, no, sku, qty) \
         GROUP BY l.k), \
     new_orders AS ( \
         INSERT INTO orders (tenant, id, member, status, expires_at, version, doc, updated_at, \
                             line_skus, line_qtys, placed_at) \
         SELECT o.tenant, o.id, o.member, o.status, o.expires_at, o.version, o.doc, o.updated_at, \
                COALESCE(l.skus, '{}'), COALESCE(l.qtys, '{}'), o.placed_at \
         FROM o LEFT JOIN lines l ON l.k = o.k WHERE o.k IN (SELECT k FROM ok) ORDER BY o.k), \
     ev AS ( \
         INSERT INTO events (id, tenant, aggregate_type, aggregate_id, doc) \
         SELECT e.id, e.tenant, e.aggregate_type, e.aggregate_id, e.doc \
         FROM unnest($14::bigint[], $15::uuid[], $16::text[], $17::text[], $18::text[], $19::text[]) \
              WITH ORDINALITY AS e(k, id, tenant, aggregate_type, aggregate_id, doc, ord) \
         WHERE e.k IN (SELECT k FROM ok) ORDER BY e.ord), \
     taken AS (SELECT * FROM given WHERE k IN (SELECT k FROM ok)), \
     take AS ( \
         DELETE FROM free_cards f WHERE f.ctid = ANY(ARRAY(SELECT fctid FROM taken WHERE free))), \
     untake AS ( \
         DELETE FROM held_cards h \
         WHERE (h.tenant, h.sku, h.until, h.id) IN \
               (SELECT tenant, sku, huntil, id FROM taken WHERE NOT free)), \
     reserve AS ( \
         UPDATE cards c SET state = 'reserved', order_id = o.id, reserved_until = o.expires_at \
         FROM taken t JOIN o ON o.k = t.k \
         WHERE c.id = ANY(ARRAY(SELECT id FROM taken)) AND c.id = t.id), \
     hold AS ( \
         INSERT INTO held_cards (tenant, sku, until, id) \
         SELECT t.tenant, t.sku, o.expires_at, t.id FROM taken t JOIN o ON o.k = t.k), \
     link AS ( \
         INSERT INTO order_cards (order_id, pos, card_id) \
         SELECT o.id, \
                (SELECT COALESCE(max(x.pos), 0) FROM order_cards x WHERE x.order_id = o.id) \
                  + row_number() OVER (PARTITION BY t.k ORDER BY t.ord, t.id), \
                t.id \
         FROM taken t JOIN o ON o.k = t.k) \
     SELECT ok.k, ARRAY(SELECT t.id FROM taken t WHERE t.k = ok.k ORDER BY t.ord, t.id) FROM ok"
        .to_owned()
});

/// How many times a placement refused for stock is tried again while the SKU's stock, counted
/// without locks, still covers it (see [`PgStore::place_alone`]).
const CONTENDED_TRIES: u32 = 12;

impl PgStore {
    /// Runs one placement on its own ([`PgStore::place_once`]). Allocation skips cards other
    /// transactions hold locked, and a transaction that locked cards may still roll back (a
    /// batch the server refuses as a whole, a placement refused for its order id): a refusal
    /// for stock is therefore checked against the stock counted without locks, and while that
    /// still covers the request the placement is tried again after a short pause (1 ms,
    /// doubling to 32 ms, at most [`CONTENDED_TRIES`] times), until the lock holders are done.
    async fn place_alone(&self, request: &PlaceRequest) -> Result<Vec<CardId>> {
        let mut tries = 0;
        loop {
            let placed = self.place_once(request).await;
            let Err(Error::OutOfStock { sku, requested, .. }) = &placed else {
                return placed;
            };
            tries += 1;
            if tries >= CONTENDED_TRIES
                || self.free_now(request, *sku).await? < u64::from(*requested)
            {
                return placed;
            }
            self.shared
                .contended
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tokio::time::sleep(std::time::Duration::from_millis(1 << tries.min(5))).await;
        }
    }

    /// Cards of `sku` free at the request's time (queue rows and lapsed reservations), counted
    /// in the current snapshot without locks: rows other transactions hold are counted.
    async fn free_now(&self, request: &PlaceRequest, sku: quanyi_core::SkuId) -> Result<u64> {
        let conn = self.conn().await?;
        let stmt = conn.prepare(crate::vault::STOCK).await?;
        let row = conn
            .client()
            .query_one(&stmt, &[&request.tenant, sku.as_uuid(), &request.now])
            .await
            .map_err(crate::error::db)?;
        to_u64(get(&row, 0)?, "count")
    }

    /// One try of [`PLACE`], under the member's lock when it has limits.
    async fn place_once(&self, request: &PlaceRequest) -> Result<Vec<CardId>> {
        let r = request;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 27] = [
            &r.tenant,
            r.order.as_uuid(),
            &r.member,
            &r.status,
            &r.expires,
            &r.version,
            &r.doc,
            &r.nos,
            &r.line_skus,
            &r.line_qtys,
            &r.ev.ids,
            &r.ev.tenants,
            &r.ev.types,
            &r.ev.aggregates,
            &r.ev.docs,
            &r.res_skus,
            &r.res_qtys,
            &r.now,
            &r.limits
                .iter()
                .map(|l| *l.0.sku.as_uuid())
                .collect::<Vec<Uuid>>(),
            &r.limits
                .iter()
                .map(|l| i64::from(l.0.limit))
                .collect::<Vec<i64>>(),
            &r.limits
                .iter()
                .map(|l| i64::from(l.1))
                .collect::<Vec<i64>>(),
            &r.well_formed,
            &r.updated,
            &r.goods_ids,
            &r.goods_versions,
            &r.placed,
            &r.limits
                .iter()
                .map(|l| l.0.release_on_refund)
                .collect::<Vec<bool>>(),
        ];
        let lock_key =
            (!r.limits.is_empty()).then(|| format!("{}:{}:{}", self.schema(), r.tenant, r.member));
        let mut conn = self.conn().await?;
        if !r.claim_keys.is_empty() {
            return self.place_claimed(&mut conn, r, lock_key, &params).await;
        }
        let placed = self
            .run_place(&mut conn, lock_key, &params)
            .await
            .map_err(|e| with_id(e, r.order))?;
        drop(conn);
        r.outcome(placed)
    }

    /// Runs a batch of placements: one alone as [`PLACE`], more in one [`PLACE_BATCH`]
    /// statement. Requests the batch does not place go back to run alone; so do all of them
    /// when the statement fails on the server (it then wrote nothing). A lost connection is the
    /// answer of every request (whether the batch committed is unknown, as for one call).
    async fn place_batch(&self, batch: Vec<Pending<PlaceRequest, Vec<CardId>>>) {
        if let [_] = batch.as_slice() {
            for p in batch {
                let result = self.place_alone(&p.request).await;
                p.done(result);
            }
            return;
        }
        // One request per order id; a repeat runs alone after the batch (and finds the id
        // taken if the batch stored it).
        let mut seen = std::collections::HashSet::new();
        let (batch, repeats): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .partition(|p| seen.insert((p.request.tenant.clone(), p.request.order)));
        let requests: Vec<&PlaceRequest> = batch.iter().map(|p| &p.request).collect();
        let placed = self.run_place_batch(&requests).await;
        drop(requests);
        answer_all(batch, placed);
        repeats.into_iter().for_each(Pending::alone);
    }

    async fn run_place_batch(
        &self,
        requests: &[&PlaceRequest],
    ) -> std::result::Result<HashMap<i64, Vec<CardId>>, Batch> {
        let c = PlaceColumns::new(requests);
        // A reservation counts as lapsed only if it had lapsed at every call's own time.
        let now = requests.iter().map(|r| r.now).min().unwrap_or(0);
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 26] = [
            &c.tenants,
            &c.ids,
            &c.members,
            &c.statuses,
            &c.expires,
            &c.versions,
            &c.docs,
            &c.updated,
            &now,
            &c.line_k,
            &c.nos,
            &c.line_skus,
            &c.line_qtys,
            &c.ev.k,
            &c.ev.ids,
            &c.ev.tenants,
            &c.ev.types,
            &c.ev.aggregates,
            &c.ev.docs,
            &c.res_k,
            &c.res_skus,
            &c.res_qtys,
            &c.goods_k,
            &c.goods_ids,
            &c.goods_versions,
            &c.placed,
        ];
        let rows = self.batch_rows(&PLACE_BATCH, &params).await?;
        rows.iter()
            .map(|row| {
                let cards: Vec<Uuid> = get(row, 1)?;
                Ok((
                    get::<i64>(row, 0)?,
                    cards.into_iter().map(CardId::from_uuid).collect(),
                ))
            })
            .collect::<Result<_>>()
            .map_err(Batch::Failed)
    }
}

fn is_newer(change: &OrderChange<'_>) -> bool {
    change.order.version() > change.expected_version
}

#[async_trait]
impl OrderStore for PgStore {
    async fn place_order(&self, new: NewOrder<'_>, now: DateTime<Utc>) -> Result<Vec<CardId>> {
        let request = PlaceRequest::new(&new, now)?;
        let cards =
            if !request.limits.is_empty() || !request.well_formed || !request.claim_keys.is_empty()
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

    async fn update_order(&self, change: OrderChange<'_>) -> Result<()> {
        let conn = self.conn().await?;
        let stmt = conn.prepare(&UPDATE).await?;
        write_change(conn.client(), &stmt, &change)
            .await
            .map(|_| ())
    }

    async fn close_unpaid_order(&self, change: OrderChange<'_>) -> Result<u32> {
        let conn = self.conn().await?;
        let stmt = conn.prepare(&CLOSE).await?;
        let released = write_change(conn.client(), &stmt, &change).await?;
        Ok(u32::try_from(released).unwrap_or(u32::MAX))
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
