//! What a shop remembers between calls to save reads: the goods it priced orders from, and the
//! orders it placed (with the cards they reserved) until their payment arrives.
//!
//! Neither memory is trusted on its own. A placement names the goods versions it was priced
//! from and the store refuses the order when any changed ([`quanyi_storage::GOODS_CHANGED`]);
//! a payment is written against the order's version and the cards it holds, and the store
//! refuses a stale one. A refusal costs a fresh read and a retry, never a wrong write, so
//! several processes on one database share nothing: each remembers only what it did itself.
//! Both memories are bounded.

use std::collections::{HashMap, VecDeque};

use parking_lot::{Mutex, RwLock};
use quanyi_core::{OrderId, SkuId, TenantId};
use quanyi_goods::Goods;
use quanyi_order::Order;
use quanyi_storage::HeldCard;

/// SKUs whose goods are remembered; past this the memory starts again empty.
const GOODS_MAX: usize = 10_000;
/// Placed orders remembered; past this the oldest are forgotten.
const PLACED_MAX: usize = 4_096;

/// Goods by SKU, as this process last read or wrote them.
#[derive(Default)]
pub(crate) struct GoodsMemo {
    by_sku: RwLock<HashMap<(TenantId, SkuId), Goods>>,
}

impl GoodsMemo {
    pub(crate) fn get(&self, tenant: &TenantId, sku: SkuId) -> Option<Goods> {
        self.by_sku.read().get(&(tenant.clone(), sku)).cloned()
    }

    /// Remembers `goods` for each of its SKUs (copies share one body).
    pub(crate) fn put(&self, goods: &Goods) {
        let mut map = self.by_sku.write();
        if map.len() + goods.skus().len() > GOODS_MAX {
            map.clear();
        }
        for sku in goods.skus() {
            map.insert((goods.tenant().clone(), sku.id), goods.clone());
        }
    }

    /// Forgets the goods of `sku` (and every other SKU of the same goods).
    pub(crate) fn forget(&self, tenant: &TenantId, sku: SkuId) {
        let mut map = self.by_sku.write();
        if let Some(goods) = map.remove(&(tenant.clone(), sku)) {
            for other in goods.skus() {
                map.remove(&(tenant.clone(), other.id));
            }
        }
    }
}

/// An order as this process placed it, with the cards it reserved.
pub(crate) struct PlacedOrder {
    pub(crate) order: Order,
    pub(crate) held: Vec<HeldCard>,
}

/// Orders this process placed whose payment it has not applied yet, oldest forgotten first.
#[derive(Default)]
pub(crate) struct PlacedOrders {
    state: Mutex<Placed>,
}

#[derive(Default)]
struct Placed {
    orders: HashMap<(TenantId, OrderId), PlacedOrder>,
    /// Keys in the order they were remembered; holds every key of `orders` (and some that were
    /// taken since).
    fifo: VecDeque<(TenantId, OrderId)>,
}

impl PlacedOrders {
    pub(crate) fn put(&self, placed: PlacedOrder) {
        let key = (placed.order.tenant().clone(), placed.order.id());
        let mut s = self.state.lock();
        while s.fifo.len() >= PLACED_MAX {
            if let Some(old) = s.fifo.pop_front() {
                s.orders.remove(&old);
            }
        }
        s.fifo.push_back(key.clone());
        s.orders.insert(key, placed);
    }

    /// Takes the order out: a payment uses it once, and reads from the store after that.
    pub(crate) fn take(&self, tenant: &TenantId, id: OrderId) -> Option<PlacedOrder> {
        let mut s = self.state.lock();
        if s.orders.is_empty() {
            return None;
        }
        s.orders.remove(&(tenant.clone(), id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone, Utc};
    use quanyi_core::{Currency, GoodsId, MemberId, Money};
    use quanyi_goods::{GoodsDraft, GoodsKind, SkuDraft, StockSource};
    use quanyi_order::NewLine;

    fn goods(tenant: &TenantId, skus: usize) -> Goods {
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let mut rng = rand::thread_rng();
        let draft = GoodsDraft {
            title: "Month card".into(),
            kind: GoodsKind::CardKey,
            skus: (0..skus)
                .map(|i| {
                    SkuDraft::new(
                        SkuId::generate(now, &mut rng),
                        format!("sku {i}"),
                        Money::parse("9.90", Currency::CNY).unwrap(),
                    )
                    .with_stock(StockSource::VaultPool)
                })
                .collect(),
            categories: vec![],
        };
        Goods::new(GoodsId::generate(now, &mut rng), tenant.clone(), draft, now).unwrap()
    }

    fn order(tenant: &TenantId, goods: &Goods) -> Order {
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let sku = &goods.skus()[0];
        Order::place(
            OrderId::generate(now, &mut rand::thread_rng()),
            tenant.clone(),
            MemberId::new("m").unwrap(),
            vec![NewLine {
                sku: sku.id,
                goods: goods.id(),
                kind: goods.kind().tag(),
                title: goods.title().to_owned(),
                quantity: 1,
                unit_price: sku.price,
                account: None,
                allocated: None,
                terms: goods.sale_terms(sku.id).unwrap(),
                pack: None,
                price_source: quanyi_order::PriceSource::ListPrice,
            }],
            now,
            now + Duration::minutes(15),
        )
        .unwrap()
        .0
    }

    #[test]
    fn goods_are_remembered_per_tenant_and_forgotten_for_every_sku() {
        let (a, b) = (TenantId::default(), TenantId::new("other").unwrap());
        let memo = GoodsMemo::default();
        let g = goods(&a, 2);
        memo.put(&g);
        let (first, second) = (g.skus()[0].id, g.skus()[1].id);
        assert_eq!(memo.get(&a, second).map(|x| x.id()), Some(g.id()));
        assert!(memo.get(&b, first).is_none());
        memo.forget(&a, first);
        assert!(memo.get(&a, first).is_none());
        assert!(memo.get(&a, second).is_none());
    }

    #[test]
    fn goods_memory_is_bounded() {
        let tenant = TenantId::default();
        let memo = GoodsMemo::default();
        let first = goods(&tenant, 1);
        memo.put(&first);
        for _ in 0..GOODS_MAX {
            memo.put(&goods(&tenant, 1));
        }
        assert!(memo.by_sku.read().len() <= GOODS_MAX);
        assert!(memo.get(&tenant, first.skus()[0].id).is_none());
    }

    #[test]
    fn a_placed_order_is_taken_once_and_the_oldest_are_forgotten() {
        let tenant = TenantId::default();
        let g = goods(&tenant, 1);
        let placed = PlacedOrders::default();
        let first = order(&tenant, &g);
        placed.put(PlacedOrder {
            order: first.clone(),
            held: Vec::new(),
        });
        let other = TenantId::new("other").unwrap();
        assert!(placed.take(&other, first.id()).is_none());
        assert_eq!(
            placed.take(&tenant, first.id()).map(|p| p.order),
            Some(first.clone())
        );
        assert!(placed.take(&tenant, first.id()).is_none());

        let oldest = order(&tenant, &g);
        placed.put(PlacedOrder {
            order: oldest.clone(),
            held: Vec::new(),
        });
        let mut newest = None;
        for _ in 0..PLACED_MAX {
            let o = order(&tenant, &g);
            newest = Some(o.id());
            placed.put(PlacedOrder {
                order: o,
                held: Vec::new(),
            });
        }
        assert!(placed.state.lock().fifo.len() <= PLACED_MAX);
        assert!(placed.take(&tenant, oldest.id()).is_none());
        assert!(placed.take(&tenant, newest.unwrap()).is_some());
    }
}
