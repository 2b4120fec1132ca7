//! Placements combined: the columns of every request of a batch, and the one statement that places them all.

use super::*;

/// The columns of a [`PLACE_BATCH`] call: every request's values, and the lines, events,
/// reservations and goods versions of all of them, each tagged with its request's position
/// (from 1, as `WITH ORDINALITY` counts).
#[derive(Default)]
pub(super) struct PlaceColumns<'a> {
    pub(super) tenants: Vec<&'a str>,
    pub(super) ids: Vec<Uuid>,
    pub(super) members: Vec<&'a str>,
    pub(super) statuses: Vec<&'a str>,
    pub(super) expires: Vec<i64>,
    pub(super) versions: Vec<i64>,
    pub(super) docs: Vec<&'a str>,
    pub(super) updated: Vec<i64>,
    pub(super) placed: Vec<i64>,
    pub(super) line_k: Vec<i64>,
    pub(super) nos: Vec<i32>,
    pub(super) line_skus: Vec<Uuid>,
    pub(super) line_qtys: Vec<i64>,
    pub(super) ev: TaggedEvents<'a>,
    pub(super) res_k: Vec<i64>,
    pub(super) res_skus: Vec<Uuid>,
    pub(super) res_qtys: Vec<i64>,
    pub(super) goods_k: Vec<i64>,
    pub(super) goods_ids: Vec<Uuid>,
    pub(super) goods_versions: Vec<i64>,
    pub(super) pricing_versions: Vec<Option<i64>>,
}

impl<'a> PlaceColumns<'a> {
    pub(super) fn new(requests: &[&'a PlaceRequest]) -> Self {
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
            c.pricing_versions.push(r.pricing_version);
        }
        c
    }
}

/// Places several orders (no member limits, well formed, distinct ids) in one statement. Each
/// request passes the checks of [`PLACE`] on its own: id not stored, goods unchanged, pricing
/// rules at the version it names (if it names one), every SKU's cards found. The cards of a
/// SKU are picked once for the whole batch, oldest first, as many as all its requests want, and
/// handed out in request order; a request that does not get all it wants takes none and is not
/// written. Returns the position of each placed request (from 1) with its cards in [`PLACE`]'s
/// order; requests not returned wrote nothing.
///
/// $1..$8 per request: tenant, id, member, status, expires_at, version, doc, updated_at;
/// $9 now (the earliest of the calls'); lines $10 request, $11 no, $12 SKU, $13 quantity;
/// events $14 request, $15..$19 id, tenant, aggregate type, aggregate id, doc; reservations
/// $20 request, $21 SKU, $22 quantity; goods $23 request, $24 id, $25 version; $26 per
/// request: placement time; $27 per request: the version of the tenant's pricing rules it was
/// priced from (null: no check). A request refused for its pricing version is not written and
/// runs alone, where [`PLACE`] answers why.
///
/// Two shapes, at index 1 when any request names a pricing version: that shape looks up
/// `pricing_heads` by key for each request that names one (under a `CASE`, so a request
/// without a version reads nothing); the other leaves `pricing_heads` out of the statement
/// (see [`PLACE`] on why) and writes no request that names a version (it would run alone).
pub(crate) static PLACE_BATCH: LazyLock<[String; 2]> =
    LazyLock::new(|| [place_batch_sql(false), place_batch_sql(true)]);

fn place_batch_sql(with_pricing: bool) -> String {
    let stale = if with_pricing {
        "CASE WHEN o.pricing IS NULL THEN false \
              ELSE COALESCE((SELECT h.version FROM pricing_heads h WHERE h.tenant = o.tenant), 0) \
                   <> o.pricing END"
    } else {
        "o.pricing IS NOT NULL"
    };
    format!(
        "WITH o AS ( \
         SELECT * FROM unnest($1::text[], $2::uuid[], $3::text[], $4::text[], $5::bigint[], \
                              $6::bigint[], $7::text[], $8::bigint[], $26::bigint[], $27::bigint[]) \
              WITH ORDINALITY AS o(tenant, id, member, status, expires_at, version, doc, updated_at, \
                                   placed_at, pricing, k)), \
     checked AS ( \
         SELECT o.k, o.tenant, \
                (SELECT EXISTS (SELECT 1 FROM orders x WHERE x.tenant = o.tenant AND x.id = o.id)) AS stored, \
                (SELECT count(*) FROM unnest($23::bigint[], $24::uuid[], $25::bigint[]) AS p(k, id, version) \
                 WHERE p.k = o.k \
                   AND NOT (SELECT EXISTS (SELECT 1 FROM goods g WHERE g.tenant = o.tenant \
                                           AND g.id = p.id AND g.version = p.version))) AS changed, \
                {stale} AS stale \
         FROM o), \
     pre AS (SELECT k, tenant FROM checked WHERE NOT stored AND changed = 0 AND NOT stale), \
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
                COALESCE(l.skus, '{{}}'), COALESCE(l.qtys, '{{}}'), o.placed_at \
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
    )
}
