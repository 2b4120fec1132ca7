//! Goods and SKUs.

use quanyi_core::{Actor, GoodsId, SkuId};
use quanyi_goods::{Goods, GoodsDraft, Shelf};
use quanyi_storage::{AuditAction, AuditOutcome, Trail};

use crate::events::CatalogEvent;
use crate::{Error, Result, Shop};

impl Shop {
    /// Creates goods with their SKUs, audited with `actor` in the same write.
    ///
    /// ```
    /// # use quanyi::*;
    /// # async fn demo(shop: &Shop) -> std::result::Result<(), Box<dyn std::error::Error>> {
    /// let merchant = Actor::new("lin", "catalog")?;
    /// let sku = SkuDraft::new(SkuId::generate(chrono::Utc::now(), &mut rand::thread_rng()),
    ///     "30 days", Money::parse("19.90", Currency::CNY)?).with_stock(StockSource::VaultPool);
    /// let goods = shop.create_goods(&merchant, GoodsDraft {
    ///     title: "Video membership month card".into(),
    ///     kind: GoodsKind::CardKey,
    ///     skus: vec![sku],
    ///     categories: vec!["video_membership".into()],
    /// }).await?;
    /// # let _ = goods; Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Goods`] when the draft breaks a catalog rule; [`Error::Storage`].
    pub async fn create_goods(&self, actor: &Actor, draft: GoodsDraft) -> Result<Goods> {
        let now = self.now();
        let id = GoodsId::generate(now, &mut rand::thread_rng());
        let goods = Goods::new(id, self.tenant.clone(), draft, now)?;
        let event = CatalogEvent::GoodsCreated {
            goods: id,
            title: goods.title().to_owned(),
            kind: goods.kind().tag().as_str(),
            skus: goods.skus().len(),
        };
        let events = self.envelopes("goods", id, goods.version(), vec![event], now);
        let record = self.audit_record(
            &actor.to_string(),
            AuditAction::GoodsCreated,
            id.to_string(),
            AuditOutcome::Allowed,
            format!("{} sku(s)", goods.skus().len()),
        );
        self.store_ref()
            .insert_goods(&goods, Trail::events(&events).audited(&record))
            .await?;
        self.inner.goods_memo.put(&goods);
        tracing::info!(goods = %id, skus = goods.skus().len(), "goods created");
        Ok(goods)
    }

    /// The goods that hold a SKU.
    ///
    /// # Errors
    /// [`Error::UnknownSku`]; [`Error::Storage`].
    pub async fn goods_of(&self, sku: SkuId) -> Result<Goods> {
        let goods = self
            .store_ref()
            .goods_by_sku(&self.tenant, sku)
            .await?
            .ok_or(Error::UnknownSku(sku))?;
        self.inner.goods_memo.put(&goods);
        Ok(goods)
    }

    /// The goods of a SKU for pricing an order, and whether they came from memory: as this
    /// process last saw them when `memo` is set and it saw them (the order then names their
    /// version and the store refuses it if they changed), otherwise read from the store.
    pub(crate) async fn goods_for_order(&self, sku: SkuId, memo: bool) -> Result<(Goods, bool)> {
        if memo && let Some(goods) = self.inner.goods_memo.get(&self.tenant, sku) {
            return Ok((goods, true));
        }
        Ok((self.goods_of(sku).await?, false))
    }

    /// Puts a SKU on or off the shelf. Off-shelf SKUs cannot be quoted or ordered. Audited with
    /// `actor` in the same write.
    ///
    /// # Errors
    /// [`Error::UnknownSku`]; [`Error::Storage`] (a `conflict` when another writer got there
    /// first: reload and retry).
    pub async fn set_shelf(&self, actor: &Actor, sku: SkuId, shelf: Shelf) -> Result<Goods> {
        let mut goods = self.goods_of(sku).await?;
        let expected = goods.version();
        goods.set_shelf(sku, shelf)?;
        let detail = format!("sku {sku} shelf {}", shelf_name(shelf));
        self.write_goods(
            actor,
            goods,
            expected,
            CatalogEvent::ShelfChanged { sku, shelf },
            detail,
        )
        .await
    }

    /// Edits goods with `edit` (any of [`Goods`]' changes: price, limits, routes, the kind's
    /// data, shelf) and stores them if they are still at the version read. Orders placed
    /// before keep the terms they were sold with: an edit changes what is sold from now on,
    /// never what was bought. Audited with `actor` in the same write.
    ///
    /// # Errors
    /// [`Error::UnknownGoods`]; [`Error::Goods`] when the edit breaks a catalog rule (nothing
    /// is stored); [`Error::Storage`] (a `conflict` when another writer got there first:
    /// reload and retry).
    pub async fn edit_goods(
        &self,
        actor: &Actor,
        id: GoodsId,
        edit: impl FnOnce(&mut Goods) -> quanyi_goods::Result<()>,
    ) -> Result<Goods> {
        let mut goods = self
            .store_ref()
            .goods(&self.tenant, id)
            .await?
            .ok_or(Error::UnknownGoods(id))?;
        let expected = goods.version();
        edit(&mut goods)?;
        let version = goods.version();
        self.write_goods(
            actor,
            goods,
            expected,
            CatalogEvent::GoodsEdited { goods: id, version },
            format!("version {version}"),
        )
        .await
    }

    /// Stores changed goods with their event and `actor`'s audit record in one write, and keeps
    /// this process's memory of them true.
    async fn write_goods(
        &self,
        actor: &Actor,
        goods: Goods,
        expected: u64,
        event: CatalogEvent,
        detail: String,
    ) -> Result<Goods> {
        let now = self.now();
        let events = self.envelopes("goods", goods.id(), goods.version(), vec![event], now);
        let record = self.audit_record(
            &actor.to_string(),
            AuditAction::GoodsChanged,
            goods.id().to_string(),
            AuditOutcome::Allowed,
            detail,
        );
        let written = self
            .store_ref()
            .update_goods(&goods, expected, Trail::events(&events).audited(&record))
            .await;
        match written {
            Ok(()) => self.inner.goods_memo.put(&goods),
            Err(_) => {
                for sku in goods.skus() {
                    self.inner.goods_memo.forget(&self.tenant, sku.id);
                }
            }
        }
        written?;
        Ok(goods)
    }
}

fn shelf_name(shelf: Shelf) -> &'static str {
    match shelf {
        Shelf::On => "on",
        Shelf::Off => "off",
    }
}
