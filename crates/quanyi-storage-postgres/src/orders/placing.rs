//! Placing orders: the one statement of a placement, its combined form for concurrent
//! placements, and placements with member limits or claims in a transaction of their own.

use super::batch::{PLACE_BATCH, PlaceColumns};
use super::*;

/// Places an order in one statement: checks the id, the versions of the goods it was priced
/// from, the version of the tenant's pricing rules it was priced from and the member limits,
/// picks each SKU's cards (oldest first from the `free_cards` queue and lapsed reservations,
/// skipping rows other transactions hold), and only if everything fits inserts the order, its
/// lines and events, takes the cards out of the queue and reserves them.
///
/// $1 tenant, $2 order id, $3 member, $4 status, $5 expires_at (also the reservation deadline),
/// $6 version, $7 doc, $8 line numbers, $9 line SKUs, $10 line quantities, $11..$15 events,
/// $16 reservation SKUs, $17 quantities, $18 now, $19 limit SKUs, $20 limits, $21 requested,
/// $22 whether the call is well formed, $23 the order's updated_at, $24 and $25 the goods the
/// order was priced from and their versions (checked against the statement's snapshot), $26 the
/// order's placement time (`placed_at`), $27 whether each limit releases units on refund, $28
/// the version of the tenant's pricing rules the order was priced from (null: no check).
///
/// The pricing check is one lookup of `pricing_heads` by its key, against the statement's
/// snapshot (as the goods versions are checked): a write of the rules that commits while the
/// placement runs is ordered after it, as a write of goods is.
///
/// The "lines" ($8..$10, and the `line_skus`, `line_qtys` columns) are what the order counts
/// toward member limits (`Order::limit_units`): each line's SKU and quantity, and each benefit
/// pack's SKU and packs.
///
/// Four shapes: with member limits or without (most orders), and with a pricing version or
/// without. The server sets up every part of a statement on every call (plan nodes, tables and
/// their indexes opened and locked), used or not, so the shapes without leave the member count
/// and the lookup of `pricing_heads` out of the statement; they take the same parameters and
/// refuse a call that passes limits or a version.
///
/// Two more shapes (with a pricing version or without, never with limits) take one budget
/// ([`place_budget_shape`]: an issued coupon's one use, the common case of a placement with
/// budgets) in the same statement: $29 its scope, $30 its key, $31 its limit, $32 the amount.
/// Only if every other check passed (`ok`), the amount is added to the budget's row with
/// `INSERT ... ON CONFLICT DO UPDATE ... WHERE used <= limit - amount` (as [`TAKE_BUDGETS`]
/// does: concurrent takers queue on the row, and each checks the row as the one before it left
/// it), the order is written only if that take happened, and the take is recorded for the order
/// in `order_budgets` (given back when it closes unpaid). The order is written if and only if
/// the budget is taken, so nothing is partial, and a refused placement takes nothing and locks
/// no budget row. The eighth column says whether the budget was taken. The shapes without a
/// budget do not name `sale_budgets` or `order_budgets` (and take 28 parameters).
fn place_sql(with_limits: bool, with_pricing: bool, with_budget: bool) -> String {
    assert!(
        !(with_limits && with_budget),
        "no shape takes limits and a budget"
    );
    let (spend_cte, spend_ok, record_cte, spend_out) = if with_budget {
        (
            " spend AS (INSERT INTO sale_budgets (tenant, scope, key, used, lim) \
                         SELECT $1, $29::text, $30::text, $32::bigint, $31::bigint \
                         FROM ok WHERE ok.v AND $32::bigint <= $31::bigint \
                         ON CONFLICT (tenant, scope, key) DO UPDATE \
                             SET used = sale_budgets.used + EXCLUDED.used, lim = EXCLUDED.lim \
                             WHERE sale_budgets.used <= EXCLUDED.lim - EXCLUDED.used \
                         RETURNING 1),",
            " AND EXISTS (SELECT 1 FROM spend)",
            ", spent AS (INSERT INTO order_budgets (tenant, order_id, scope, key, amount) \
                        SELECT $1, $2, $29::text, $30::text, $32::bigint \
                        WHERE EXISTS (SELECT 1 FROM new_order))",
            ", EXISTS (SELECT 1 FROM spend)",
        )
    } else {
        ("", "", "", "")
    };
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
    let (pricing_cte, pricing_ok, pricing_out) = if with_pricing {
        (
            "stale AS (SELECT COALESCE((SELECT h.version FROM pricing_heads h \
                                        WHERE h.tenant = $1), 0) <> $28::bigint AS v), ",
            "NOT (SELECT v FROM stale)",
            "(SELECT v FROM stale)",
        )
    } else {
        ("", "$28::bigint IS NULL", "false")
    };
    format!(
        "WITH existing AS (SELECT EXISTS (SELECT 1 FROM orders WHERE tenant = $1 AND id = $2) AS v), \
         changed AS (SELECT (SELECT p.id FROM unnest($24::uuid[], $25::bigint[]) AS p(id, version) \
                             WHERE NOT EXISTS (SELECT 1 FROM goods g WHERE g.tenant = $1 \
                                               AND g.id = p.id AND g.version = p.version) \
                             LIMIT 1) AS id), \
         {pricing_cte}\
         {limits_cte}\
         wanted AS (SELECT r.sku, r.qty, r.ord \
                    FROM unnest($16::uuid[], $17::bigint[]) WITH ORDINALITY AS r(sku, qty, ord)), \
         {pick}, \
         got AS (SELECT w.ord, w.qty, (SELECT count(*) FROM pick p WHERE p.ord = w.ord) AS n FROM wanted w), \
         ok AS (SELECT $22::boolean AND NOT (SELECT v FROM existing) \
                   AND (SELECT id FROM changed) IS NULL \
                   AND {pricing_ok} \
                   AND {limits_ok} \
                   AND NOT EXISTS (SELECT 1 FROM got WHERE n < qty) AS v),\
         {spend_cte} \
         new_order AS ( \
             INSERT INTO orders (tenant, id, member, status, expires_at, version, doc, updated_at, \
                                 line_skus, line_qtys, placed_at) \
             SELECT $1, $2, $3, $4, $5, $6, $7, $23, \
                    ARRAY(SELECT u.sku FROM unnest($8::integer[], $9::uuid[]) AS u(no, sku) \
                          ORDER BY u.no), \
                    ARRAY(SELECT u.qty FROM unnest($8::integer[], $10::bigint[]) AS u(no, qty) \
                          ORDER BY u.no), $26 \
             FROM ok WHERE ok.v{spend_ok} \
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
         link AS ({link}){record_cte} \
         SELECT (SELECT v FROM existing), {limits_out}, \
                ARRAY(SELECT n FROM got ORDER BY ord), \
                EXISTS (SELECT 1 FROM new_order), ARRAY(SELECT id FROM pick ORDER BY ord, id), \
                (SELECT id FROM changed), {pricing_out}{spend_out}",
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

/// [`place_sql`] in its six shapes, at [`place_shape`] and [`place_budget_shape`].
pub(crate) static PLACE: LazyLock<[String; 6]> = LazyLock::new(|| {
    [
        place_sql(false, false, false),
        place_sql(true, false, false),
        place_sql(false, true, false),
        place_sql(true, true, false),
        place_sql(false, false, true),
        place_sql(false, true, true),
    ]
});

/// The shape of [`PLACE`] without a budget for a call with member limits or not, and with a
/// pricing version or not.
pub(crate) fn place_shape(with_limits: bool, with_pricing: bool) -> usize {
    usize::from(with_limits) + 2 * usize::from(with_pricing)
}

/// The shape of [`PLACE`] that takes one budget (no member limits), with a pricing version or
/// not.
pub(crate) fn place_budget_shape(with_pricing: bool) -> usize {
    4 + usize::from(with_pricing)
}

/// The parameters of the shapes of [`PLACE`] without a budget; those with one take four more.
const PLACE_PARAMS: usize = 28;

/// Serializes the limit checks of one member (taken before [`PLACE`], in the same transaction,
/// so its count sees every order committed before the lock was granted).
const MEMBER_LOCK: &str = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))";

/// Takes a placement's claims: $1 tenant, $2 scopes, $3 keys, $4 values, $5 now. A claim another
/// transaction took fails on `sale_claims_pkey` (after waiting for it to end).
const INSERT_CLAIMS: &str = "INSERT INTO sale_claims (tenant, scope, key, value, taken_at) \
     SELECT $1, c.scope, c.key, c.value, $5 \
     FROM unnest($2::text[], $3::text[], $4::text[]) AS c(scope, key, value)";

/// Takes what a placement names of each of its budgets: $1 tenant, $2 scopes, $3 keys, $4
/// limits, $5 the order, $6 amounts. A budget the amount would take past its limit is not
/// updated (the comparison is written so that it cannot overflow), so the statement answers
/// fewer rows than budgets and the placement is refused; each take is recorded for the order
/// with its amount (given back when the order closes unpaid). Concurrent takes of one budget
/// queue on its row.
const TAKE_BUDGETS: &str = "WITH b AS (SELECT * FROM unnest($2::text[], $3::text[], $4::bigint[], \
                                                 $6::bigint[]) AS b(scope, key, lim, amount)), \
     up AS (INSERT INTO sale_budgets (tenant, scope, key, used, lim) \
            SELECT $1, scope, key, amount, lim FROM b WHERE amount <= lim \
            ON CONFLICT (tenant, scope, key) DO UPDATE \
                SET used = sale_budgets.used + EXCLUDED.used, lim = EXCLUDED.lim \
                WHERE sale_budgets.used <= EXCLUDED.lim - EXCLUDED.used \
            RETURNING scope, key), \
     rec AS (INSERT INTO order_budgets (tenant, order_id, scope, key, amount) \
             SELECT $1, $5, b.scope, b.key, b.amount FROM up \
             JOIN b ON b.scope = up.scope AND b.key = up.key) \
     SELECT (SELECT count(*) FROM up), \
            ARRAY(SELECT b.scope || chr(31) || b.key FROM b \
                  WHERE NOT EXISTS (SELECT 1 FROM up WHERE up.scope = b.scope AND up.key = b.key))";

/// The result of [`PLACE`].
struct Placed {
    existing: bool,
    already: Vec<i64>,
    got: Vec<i64>,
    inserted: bool,
    picked: Vec<Uuid>,
    changed_goods: Option<Uuid>,
    stale_pricing: bool,
    /// Whether the shape with one budget took it (true for the shapes without).
    budget_taken: bool,
}

impl PgStore {
    async fn run_place(
        &self,
        conn: &mut Conn,
        request: &PlaceRequest,
        lock_key: Option<String>,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Placed> {
        let place = conn.prepare(&PLACE[request.shape()]).await?;
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
        let place = conn.prepare(&PLACE[r.shape()]).await?;
        let lock = conn.prepare(MEMBER_LOCK).await?;
        let insert = conn.prepare(INSERT_CLAIMS).await?;
        let take = conn.prepare(TAKE_BUDGETS).await?;
        let claim_params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] = [
            &r.tenant,
            &r.claim_scopes,
            &r.claim_keys,
            &r.claim_values,
            &r.now,
        ];
        let order_id = *r.order.as_uuid();
        let budget_params: [&(dyn tokio_postgres::types::ToSql + Sync); 6] = [
            &r.tenant,
            &r.budget_scopes,
            &r.budget_keys,
            &r.budget_limits,
            &order_id,
            &r.budget_amounts,
        ];
        conn.in_txn = true;
        let c = conn.client();
        let (begin, locked, claimed, taken, placed) = tokio::join!(
            biased;
            c.batch_execute("BEGIN"),
            async {
                match &lock_key {
                    Some(key) => c.execute(&lock, &[key]).await.map(|_| ()),
                    None => Ok(()),
                }
            },
            c.execute(&insert, &claim_params),
            async {
                if r.budget_keys.is_empty() {
                    Ok(None)
                } else {
                    c.query_one(&take, &budget_params).await.map(Some)
                }
            },
            c.query_one(&place, params),
        );
        let outcome = (|| {
            begin.map_err(db)?;
            locked.map_err(db)?;
            claimed.map_err(db)?;
            let placed = r.outcome(Placed::from_row(&placed.map_err(db)?)?)?;
            if let Some(row) = taken.map_err(db)? {
                let spent: Vec<String> = get(&row, 1)?;
                if let Some((scope, key)) = spent.first().and_then(|s| s.split_once('\u{1f}')) {
                    return Err(Error::BudgetExhausted {
                        scope: scope.to_owned(),
                        key: key.to_owned(),
                    });
                }
            }
            Ok(placed)
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
            stale_pricing: get(row, 6)?,
            budget_taken: if row.len() > 7 { get(row, 7)? } else { true },
        })
    }
}

/// A placement with everything it binds owned, so that a batch task can carry it.
pub(crate) struct PlaceRequest {
    pub(super) order: OrderId,
    pub(super) tenant: String,
    pub(super) member: String,
    pub(super) status: &'static str,
    pub(super) expires: i64,
    pub(super) version: i64,
    pub(super) doc: String,
    pub(super) updated: i64,
    pub(super) placed: i64,
    pub(super) now: i64,
    pub(super) nos: Vec<i32>,
    pub(super) line_skus: Vec<Uuid>,
    pub(super) line_qtys: Vec<i64>,
    pub(super) ev: EventColumns,
    /// One entry per SKU reserved (repeated SKUs, outside the port's contract, merged).
    pub(super) res_skus: Vec<Uuid>,
    pub(super) res_qtys: Vec<i64>,
    /// The reservations as the call gave them, with their SKU's entry in `res_skus`.
    pub(super) reservations: Vec<(SkuId, u32, usize)>,
    pub(super) well_formed: bool,
    /// Per member limit: the limit, and the quantity the order asks for.
    pub(super) limits: Vec<(MemberLimit, u32)>,
    pub(super) goods_ids: Vec<Uuid>,
    pub(super) goods_versions: Vec<i64>,
    /// The claims the placement takes (placed alone, in a transaction, when there are any).
    pub(super) claim_scopes: Vec<String>,
    pub(super) claim_keys: Vec<String>,
    pub(super) claim_values: Vec<String>,
    /// Per budget the placement takes of: scope, key, limit and amount (placed alone, in a
    /// transaction, when there are any).
    pub(super) budget_scopes: Vec<String>,
    pub(super) budget_keys: Vec<String>,
    pub(super) budget_limits: Vec<i64>,
    pub(super) budget_amounts: Vec<i64>,
    /// The version of the tenant's pricing rules the order was priced from (none: no check).
    pub(super) pricing_version: Option<i64>,
}

impl PlaceRequest {
    pub(super) fn new(new: &NewOrder<'_>, now: DateTime<Utc>) -> Result<Self> {
        Claim::check_all(new.claims)?;
        quanyi_storage::BudgetTake::check_all(new.budgets)?;
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
            budget_scopes: new.budgets.iter().map(|b| b.scope.clone()).collect(),
            budget_keys: new.budgets.iter().map(|b| b.key.clone()).collect(),
            budget_limits: new
                .budgets
                .iter()
                .map(|b| to_i64(b.limit, "budget limit"))
                .collect::<Result<Vec<i64>>>()?,
            budget_amounts: new
                .budgets
                .iter()
                .map(|b| to_i64(b.amount, "budget amount"))
                .collect::<Result<Vec<i64>>>()?,
            pricing_version: new
                .pricing_version
                .map(|v| to_i64(v, "pricing version"))
                .transpose()?,
        })
    }

    /// Whether the call takes exactly one budget and nothing that needs a transaction (no
    /// claims, no member limits) and is well formed: it runs [`PLACE`]'s shape with one budget,
    /// one statement on its own.
    fn one_budget(&self) -> bool {
        self.budget_keys.len() == 1
            && self.claim_keys.is_empty()
            && self.limits.is_empty()
            && self.well_formed
    }

    /// The shape of [`PLACE`] this call runs.
    fn shape(&self) -> usize {
        if self.one_budget() {
            place_budget_shape(self.pricing_version.is_some())
        } else {
            place_shape(!self.limits.is_empty(), self.pricing_version.is_some())
        }
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
        if placed.stale_pricing {
            return Err(Error::conflict("pricing", &self.tenant, PRICING_CHANGED));
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
        if !placed.budget_taken {
            let (scope, key) = (self.budget_scopes.first(), self.budget_keys.first());
            return Err(Error::BudgetExhausted {
                scope: scope.cloned().unwrap_or_default(),
                key: key.cloned().unwrap_or_default(),
            });
        }
        if !placed.inserted {
            return Err(Error::conflict("order", self.order, "not written"));
        }
        Ok(placed.picked.into_iter().map(CardId::from_uuid).collect())
    }
}

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
    pub(super) async fn place_alone(&self, request: &PlaceRequest) -> Result<Vec<CardId>> {
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

    /// One try of [`PLACE`], under the member's lock when it has limits; with claims or
    /// budgets in a transaction, but for one budget alone ([`PlaceRequest::one_budget`]), which
    /// its shape of [`PLACE`] takes in the same statement.
    async fn place_once(&self, request: &PlaceRequest) -> Result<Vec<CardId>> {
        let r = request;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); PLACE_PARAMS + 4] = [
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
            &r.pricing_version,
            &r.budget_scopes.first(),
            &r.budget_keys.first(),
            &r.budget_limits.first(),
            &r.budget_amounts.first(),
        ];
        let lock_key =
            (!r.limits.is_empty()).then(|| format!("{}:{}:{}", self.schema(), r.tenant, r.member));
        let params = if r.one_budget() {
            &params[..]
        } else {
            &params[..PLACE_PARAMS]
        };
        let mut conn = self.conn().await?;
        if !r.one_budget() && (!r.claim_keys.is_empty() || !r.budget_keys.is_empty()) {
            return self.place_claimed(&mut conn, r, lock_key, params).await;
        }
        let placed = self
            .run_place(&mut conn, r, lock_key, params)
            .await
            .map_err(|e| with_id(e, r.order))?;
        drop(conn);
        r.outcome(placed)
    }

    /// Runs a batch of placements: one alone as [`PLACE`], more in one [`PLACE_BATCH`]
    /// statement. Requests the batch does not place go back to run alone; so do all of them
    /// when the statement fails on the server (it then wrote nothing). A lost connection is the
    /// answer of every request (whether the batch committed is unknown, as for one call).
    pub(super) async fn place_batch(&self, batch: Vec<Pending<PlaceRequest, Vec<CardId>>>) {
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
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 27] = [
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
            &c.pricing_versions,
        ];
        let with_pricing = requests.iter().any(|r| r.pricing_version.is_some());
        let rows = self
            .batch_rows(&PLACE_BATCH[usize::from(with_pricing)], &params)
            .await?;
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
