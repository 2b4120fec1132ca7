//! Shared set-up for the facade tests.
#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    missing_debug_implementations,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::sync::Arc;

use quanyi::*;
use quanyi_testkit::fixtures::t0;

pub struct World {
    pub shop: Shop,
    pub clock: ManualClock,
    pub store: Arc<MemoryStore>,
}

pub fn world() -> World {
    let store = Arc::new(MemoryStore::new());
    let clock = ManualClock::new(t0());
    let root = RootKey::generate(&mut rand::thread_rng());
    let shop = Shop::builder(store.clone(), Arc::new(StaticKeyProvider::new(root)))
        .clock(Arc::new(clock.clone()))
        .build()
        .unwrap();
    World { shop, clock, store }
}

pub fn new_sku() -> SkuId {
    SkuId::generate(t0(), &mut rand::thread_rng())
}

/// Card-key goods from the vault with one SKU at `price` CNY.
pub async fn card_sku(shop: &Shop, price: &str, limits: PurchaseLimits) -> SkuId {
    let sku = new_sku();
    shop.create_goods(
        &quanyi::Actor::new("merchant", "catalog").unwrap(),
        GoodsDraft {
            title: "Video membership month card".into(),
            kind: GoodsKind::CardKey,
            skus: vec![
                SkuDraft::new(sku, "1 month", Money::parse(price, Currency::CNY).unwrap())
                    .with_stock(StockSource::VaultPool)
                    .with_limits(limits),
            ],
            categories: vec![],
        },
    )
    .await
    .unwrap();
    sku
}

/// `n` distinct codes such as `QY0001-7F3A`, with a random part so tenants never collide.
pub fn codes(n: usize) -> Vec<String> {
    let tag: u32 = rand::random();
    (0..n).map(|i| format!("QY{i:04}-{tag:08X}")).collect()
}

pub async fn stock_up(shop: &Shop, sku: SkuId, codes: &[String]) -> ImportReport {
    let text = codes.join("\n");
    shop.import_card_keys(
        &Actor::new("stock-keeper", "stock").unwrap(),
        sku,
        text.as_bytes(),
        &ImportOptions::default(),
        BadLines::Reject,
    )
    .await
    .unwrap()
}

pub fn member(name: &str) -> MemberId {
    MemberId::new(name).unwrap()
}

pub fn notice(order: &Order, txn: &str) -> PaymentNotification {
    PaymentNotification {
        provider: "testpay".into(),
        transaction_id: txn.into(),
        order: order.id(),
        amount: order.total(),
    }
}
