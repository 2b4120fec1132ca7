//! `GoodsStore`: goods as JSON documents, their SKUs in `skus`.

use std::sync::LazyLock;

use async_trait::async_trait;
use quanyi_core::{GoodsId, SkuId, TenantId};
use quanyi_goods::Goods;
use quanyi_storage::{Error, GoodsStore, Result, Trail};
use uuid::Uuid;

use crate::PgStore;
use crate::codec::{EventColumns, from_json, get, insert_events_sql, to_i64, to_json};
use crate::error::{db, with_id};
use crate::logs::TrailColumns;

/// $1 tenant, $2 id, $3 version, $4 doc, $5 SKU ids, $6..$10 events.
static INSERT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH g AS (INSERT INTO goods (tenant, id, version, doc) VALUES ($1, $2, $3, $4) RETURNING 1), \
         s AS (INSERT INTO skus (tenant, sku, goods) SELECT $1, u, $2 FROM unnest($5::uuid[]) AS u), \
         e AS ({}) \
         SELECT count(*) FROM g",
        insert_events_sql(6, "true")
    )
});

/// $1 tenant, $2 id, $3 expected version, $4 new version, $5 doc, $6 SKU ids, $7..$11 events.
static UPDATE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH cur AS (SELECT version FROM goods WHERE tenant = $1 AND id = $2 FOR UPDATE), \
         other AS (SELECT sku FROM skus WHERE tenant = $1 AND sku = ANY($6) AND goods <> $2 LIMIT 1), \
         ok AS (SELECT COALESCE((SELECT version FROM cur) = $3, false) \
                   AND NOT EXISTS (SELECT 1 FROM other) AS v), \
         upd AS (UPDATE goods SET version = $4, doc = $5 \
                 WHERE tenant = $1 AND id = $2 AND (SELECT v FROM ok) RETURNING 1), \
         s AS (INSERT INTO skus (tenant, sku, goods) SELECT $1, u, $2 FROM unnest($6::uuid[]) AS u \
               WHERE EXISTS (SELECT 1 FROM upd) \
                 AND NOT EXISTS (SELECT 1 FROM skus k WHERE k.tenant = $1 AND k.sku = u)), \
         e AS ({}) \
         SELECT (SELECT version FROM cur), (SELECT sku FROM other), EXISTS (SELECT 1 FROM upd)",
        insert_events_sql(7, "EXISTS (SELECT 1 FROM upd)")
    )
});

const BY_ID: &str = "SELECT doc FROM goods WHERE tenant = $1 AND id = $2";
const BY_SKU: &str = "SELECT g.doc FROM skus s JOIN goods g ON g.tenant = s.tenant AND g.id = s.goods \
                      WHERE s.tenant = $1 AND s.sku = $2";
const LIST: &str = "SELECT doc FROM goods WHERE tenant = $1 ORDER BY id";

fn sku_ids(goods: &Goods) -> Vec<Uuid> {
    goods.skus().iter().map(|s| *s.id.as_uuid()).collect()
}

#[async_trait]
impl GoodsStore for PgStore {
    async fn insert_goods(&self, goods: &Goods, trail: Trail<'_>) -> Result<()> {
        let doc = to_json(goods, "goods")?;
        let version = to_i64(goods.version(), "goods version")?;
        let skus = sku_ids(goods);
        // The events go in the statement; the audit record beside it, in one transaction.
        let ev = EventColumns::new(trail.events)?;
        let audit = TrailColumns::new(Trail {
            events: &[],
            audit: trail.audit,
        })?;
        let mut conn = self.conn().await?;
        let stmt = conn.prepare(&INSERT).await?;
        audit.begin(&mut conn).await?;
        let outcome = conn
            .client()
            .query_one(
                &stmt,
                &[
                    &goods.tenant().as_str(),
                    goods.id().as_uuid(),
                    &version,
                    &doc,
                    &skus,
                    &ev.ids,
                    &ev.tenants,
                    &ev.types,
                    &ev.aggregates,
                    &ev.docs,
                ],
            )
            .await
            .map(|_| ())
            .map_err(|e| with_id(db(e), goods.id()));
        audit.end(&mut conn, outcome).await
    }

    async fn update_goods(
        &self,
        goods: &Goods,
        expected_version: u64,
        trail: Trail<'_>,
    ) -> Result<()> {
        let doc = to_json(goods, "goods")?;
        let expected = to_i64(expected_version, "goods version")?;
        let version = to_i64(goods.version(), "goods version")?;
        let skus = sku_ids(goods);
        let ev = EventColumns::new(trail.events)?;
        let audit = TrailColumns::new(Trail {
            events: &[],
            audit: trail.audit,
        })?;
        let mut conn = self.conn().await?;
        let stmt = conn.prepare(&UPDATE).await?;
        audit.begin(&mut conn).await?;
        let outcome =
            update_outcome(&conn, &stmt, goods, expected, version, &doc, &skus, &ev).await;
        audit.end(&mut conn, outcome).await
    }

    async fn goods(&self, tenant: &TenantId, id: GoodsId) -> Result<Option<Goods>> {
        let conn = self.conn().await?;
        let stmt = conn.prepare(BY_ID).await?;
        let row = conn
            .client()
            .query_opt(&stmt, &[&tenant.as_str(), id.as_uuid()])
            .await
            .map_err(db)?;
        row.map(|r| from_json(get::<&str>(&r, 0)?, "goods"))
            .transpose()
    }

    async fn goods_by_sku(&self, tenant: &TenantId, sku: SkuId) -> Result<Option<Goods>> {
        let conn = self.conn().await?;
        let stmt = conn.prepare(BY_SKU).await?;
        let row = conn
            .client()
            .query_opt(&stmt, &[&tenant.as_str(), sku.as_uuid()])
            .await
            .map_err(db)?;
        row.map(|r| from_json(get::<&str>(&r, 0)?, "goods"))
            .transpose()
    }

    async fn list_goods(&self, tenant: &TenantId) -> Result<Vec<Goods>> {
        let conn = self.conn().await?;
        let stmt = conn.prepare(LIST).await?;
        let rows = conn
            .client()
            .query(&stmt, &[&tenant.as_str()])
            .await
            .map_err(db)?;
        rows.iter()
            .map(|r| from_json(get::<&str>(r, 0)?, "goods"))
            .collect()
    }
}

/// [`GoodsStore::update_goods`]'s statement and what its answer means.
#[allow(clippy::too_many_arguments)]
async fn update_outcome(
    conn: &crate::Conn,
    stmt: &tokio_postgres::Statement,
    goods: &Goods,
    expected: i64,
    version: i64,
    doc: &str,
    skus: &[Uuid],
    ev: &EventColumns,
) -> Result<()> {
    let row = conn
        .client()
        .query_one(
            stmt,
            &[
                &goods.tenant().as_str(),
                goods.id().as_uuid(),
                &expected,
                &version,
                &doc,
                &skus,
                &ev.ids,
                &ev.tenants,
                &ev.types,
                &ev.aggregates,
                &ev.docs,
            ],
        )
        .await
        .map_err(|e| with_id(db(e), goods.id()))?;
    let current: Option<i64> = get(&row, 0)?;
    let other: Option<Uuid> = get(&row, 1)?;
    let written: bool = get(&row, 2)?;
    if written {
        return Ok(());
    }
    match current {
        None => Err(Error::not_found("goods", goods.id())),
        Some(v) if v != expected => Err(Error::conflict("goods", goods.id(), "stale version")),
        Some(_) => {
            if let Some(sku) = other {
                Err(Error::conflict(
                    "sku",
                    SkuId::from_uuid(sku),
                    "id already stored",
                ))
            } else {
                Err(Error::conflict("goods", goods.id(), "not written"))
            }
        }
    }
}
