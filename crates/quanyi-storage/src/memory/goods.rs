//! The goods port of the memory store.

use super::*;

#[async_trait]
impl GoodsStore for MemoryStore {
    async fn insert_goods(&self, goods: &Goods, trail: Trail<'_>) -> Result<()> {
        let mut s = self.state.lock();
        let tenant = goods.tenant().clone();
        if s.goods.contains_key(&(tenant.clone(), goods.id())) {
            return Err(Error::conflict("goods", goods.id(), "id already stored"));
        }
        if let Some(sku) = goods
            .skus()
            .iter()
            .find(|k| s.sku_goods.contains_key(&(tenant.clone(), k.id)))
        {
            return Err(Error::conflict("sku", sku.id, "id already stored"));
        }
        s.check_trail(&trail, goods.id())?;
        for sku in goods.skus() {
            s.sku_goods.insert((tenant.clone(), sku.id), goods.id());
        }
        s.goods.insert((tenant, goods.id()), goods.clone());
        s.push_trail(&trail);
        Ok(())
    }

    async fn update_goods(
        &self,
        goods: &Goods,
        expected_version: u64,
        trail: Trail<'_>,
    ) -> Result<()> {
        let mut s = self.state.lock();
        let tenant = goods.tenant().clone();
        let key = (tenant.clone(), goods.id());
        let stored = s
            .goods
            .get(&key)
            .ok_or_else(|| Error::not_found("goods", goods.id()))?;
        if stored.version() != expected_version {
            return Err(Error::conflict("goods", goods.id(), "stale version"));
        }
        if let Some(sku) = goods.skus().iter().find(|k| {
            s.sku_goods
                .get(&(tenant.clone(), k.id))
                .is_some_and(|g| *g != goods.id())
        }) {
            return Err(Error::conflict("sku", sku.id, "id already stored"));
        }
        s.check_trail(&trail, goods.id())?;
        for sku in goods.skus() {
            s.sku_goods.insert((tenant.clone(), sku.id), goods.id());
        }
        s.goods.insert(key, goods.clone());
        s.push_trail(&trail);
        Ok(())
    }

    async fn goods(&self, tenant: &TenantId, id: GoodsId) -> Result<Option<Goods>> {
        Ok(self.state.lock().goods.get(&(tenant.clone(), id)).cloned())
    }

    async fn goods_by_sku(&self, tenant: &TenantId, sku: SkuId) -> Result<Option<Goods>> {
        let s = self.state.lock();
        Ok(s.sku_goods
            .get(&(tenant.clone(), sku))
            .and_then(|g| s.goods.get(&(tenant.clone(), *g)))
            .cloned())
    }

    async fn list_goods(&self, tenant: &TenantId) -> Result<Vec<Goods>> {
        let s = self.state.lock();
        let mut all: Vec<Goods> = s
            .goods
            .iter()
            .filter(|((t, _), _)| t == tenant)
            .map(|(_, g)| g.clone())
            .collect();
        all.sort_by_key(Goods::id);
        Ok(all)
    }
}
