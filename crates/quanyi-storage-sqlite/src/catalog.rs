//! Goods and their SKUs.

use async_trait::async_trait;
use quanyi_core::{GoodsId, SkuId, TenantId};
use quanyi_goods::Goods;
use quanyi_storage::{Error, GoodsStore, Result, Trail};
use rusqlite::{OptionalExtension, Transaction, params};

use crate::SqliteStore;
use crate::convert::{SqlResult, from_doc, int, to_doc, uint, uuid};
use crate::logs::{trail_rows, write_trail};

/// Goods encoded for a blocking thread.
struct GoodsRow {
    tenant: String,
    id: GoodsId,
    version: i64,
    skus: Vec<SkuId>,
    doc: String,
}

fn goods_row(goods: &Goods) -> Result<GoodsRow> {
    Ok(GoodsRow {
        tenant: goods.tenant().as_str().to_owned(),
        id: goods.id(),
        version: int(goods.version(), "goods version")?,
        skus: goods.skus().iter().map(|s| s.id).collect(),
        doc: to_doc(goods, "goods")?,
    })
}

/// The goods that hold `sku`, if any.
fn sku_owner(tx: &Transaction<'_>, tenant: &str, sku: SkuId) -> Result<Option<GoodsId>> {
    let owner: Option<[u8; 16]> = tx
        .prepare_cached("SELECT goods FROM skus WHERE tenant = ?1 AND sku = ?2")
        .db()?
        .query_row(params![tenant, sku.as_bytes()], |r| r.get(0))
        .optional()
        .db()?;
    Ok(owner.map(|b| GoodsId::from_uuid(uuid(b))))
}

fn link_skus(tx: &Transaction<'_>, g: &GoodsRow) -> Result<()> {
    let mut stmt = tx
        .prepare_cached("INSERT OR IGNORE INTO skus (tenant, sku, goods) VALUES (?1, ?2, ?3)")
        .db()?;
    for sku in &g.skus {
        stmt.execute(params![g.tenant, sku.as_bytes(), g.id.as_bytes()])
            .db()?;
    }
    Ok(())
}

fn decode(doc: &str) -> Result<Goods> {
    from_doc(doc, "goods")
}

#[async_trait]
impl GoodsStore for SqliteStore {
    async fn insert_goods(&self, goods: &Goods, trail: Trail<'_>) -> Result<()> {
        let g = goods_row(goods)?;
        let trail = trail_rows(trail)?;
        self.pool
            .write(move |tx| {
                let exists = tx
                    .prepare_cached("SELECT 1 FROM goods WHERE tenant = ?1 AND id = ?2")
                    .db()?
                    .exists(params![g.tenant, g.id.as_bytes()])
                    .db()?;
                if exists {
                    return Err(Error::conflict("goods", g.id, "id already stored"));
                }
                for sku in &g.skus {
                    if sku_owner(tx, &g.tenant, *sku)?.is_some() {
                        return Err(Error::conflict("sku", sku, "id already stored"));
                    }
                }
                link_skus(tx, &g)?;
                tx.prepare_cached(
                    "INSERT INTO goods (tenant, id, version, doc) VALUES (?1, ?2, ?3, ?4)",
                )
                .db()?
                .execute(params![g.tenant, g.id.as_bytes(), g.version, g.doc])
                .db()?;
                write_trail(tx, &trail, g.id)
            })
            .await
    }

    async fn update_goods(
        &self,
        goods: &Goods,
        expected_version: u64,
        trail: Trail<'_>,
    ) -> Result<()> {
        let g = goods_row(goods)?;
        let trail = trail_rows(trail)?;
        self.pool
            .write(move |tx| {
                let stored: Option<i64> = tx
                    .prepare_cached("SELECT version FROM goods WHERE tenant = ?1 AND id = ?2")
                    .db()?
                    .query_row(params![g.tenant, g.id.as_bytes()], |r| r.get(0))
                    .optional()
                    .db()?;
                let stored = stored.ok_or_else(|| Error::not_found("goods", g.id))?;
                if uint(stored, "goods version")? != expected_version {
                    return Err(Error::conflict("goods", g.id, "stale version"));
                }
                for sku in &g.skus {
                    if sku_owner(tx, &g.tenant, *sku)?.is_some_and(|owner| owner != g.id) {
                        return Err(Error::conflict("sku", sku, "id already stored"));
                    }
                }
                link_skus(tx, &g)?;
                tx.prepare_cached(
                    "UPDATE goods SET version = ?3, doc = ?4 WHERE tenant = ?1 AND id = ?2",
                )
                .db()?
                .execute(params![g.tenant, g.id.as_bytes(), g.version, g.doc])
                .db()?;
                write_trail(tx, &trail, g.id)
            })
            .await
    }

    async fn goods(&self, tenant: &TenantId, id: GoodsId) -> Result<Option<Goods>> {
        let tenant = tenant.as_str().to_owned();
        self.pool
            .read(move |tx| {
                let doc: Option<String> = tx
                    .prepare_cached("SELECT doc FROM goods WHERE tenant = ?1 AND id = ?2")
                    .db()?
                    .query_row(params![tenant, id.as_bytes()], |r| r.get(0))
                    .optional()
                    .db()?;
                doc.as_deref().map(decode).transpose()
            })
            .await
    }

    async fn goods_by_sku(&self, tenant: &TenantId, sku: SkuId) -> Result<Option<Goods>> {
        let tenant = tenant.as_str().to_owned();
        self.pool
            .read(move |tx| {
                let doc: Option<String> = tx
                    .prepare_cached(
                        "SELECT g.doc FROM skus s
                         JOIN goods g ON g.tenant = s.tenant AND g.id = s.goods
                         WHERE s.tenant = ?1 AND s.sku = ?2",
                    )
                    .db()?
                    .query_row(params![tenant, sku.as_bytes()], |r| r.get(0))
                    .optional()
                    .db()?;
                doc.as_deref().map(decode).transpose()
            })
            .await
    }

    async fn list_goods(&self, tenant: &TenantId) -> Result<Vec<Goods>> {
        let tenant = tenant.as_str().to_owned();
        self.pool
            .read(move |tx| {
                let mut stmt = tx
                    .prepare_cached("SELECT doc FROM goods WHERE tenant = ?1 ORDER BY id")
                    .db()?;
                let docs = stmt
                    .query_map(params![tenant], |r| r.get::<_, String>(0))
                    .db()?
                    .collect::<rusqlite::Result<Vec<String>>>()
                    .db()?;
                docs.iter().map(|d| decode(d)).collect()
            })
            .await
    }
}
