//! The order path both order benches drive: a shop with one card-key SKU stocked from the vault,
//! on whatever store it is given.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use quanyi::{
    BadLines, CartLine, Currency, GoodsDraft, GoodsKind, ImportOptions, MemberId, Money, Order,
    OrderStatus, PaymentNotification, RootKey, Shop, SkuDraft, SkuId, StaticKeyProvider,
    StockSource, Store,
};

/// A shop with one card-key SKU stocked from the vault.
#[derive(Clone)]
pub(crate) struct Path {
    pub(crate) shop: Shop,
    pub(crate) sku: SkuId,
    /// Unique card codes and transaction ids.
    next_code: Arc<AtomicU64>,
    next_tx: Arc<AtomicU64>,
}

impl Path {
    pub(crate) async fn new(store: Arc<dyn Store>) -> Self {
        let root = RootKey::generate(&mut rand::thread_rng());
        let shop = Shop::builder(store, Arc::new(StaticKeyProvider::new(root)))
            .build()
            .unwrap();
        let sku = SkuId::generate(chrono::Utc::now(), &mut rand::thread_rng());
        shop.create_goods(
            &quanyi::Actor::new("bench", "catalog").expect("a valid actor"),
            GoodsDraft {
                title: "Video membership, 1 month".into(),
                kind: GoodsKind::CardKey,
                skus: vec![
                    SkuDraft::new(
                        sku,
                        "1 month",
                        Money::parse("19.90", Currency::CNY).unwrap(),
                    )
                    .with_stock(StockSource::VaultPool),
                ],
                categories: vec![],
            },
        )
        .await
        .unwrap();
        Path {
            shop,
            sku,
            next_code: Arc::new(AtomicU64::new(0)),
            next_tx: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Imports keys, untimed, `chunk` lines per call, until at least `target` are available.
    pub(crate) async fn stock_up(&self, target: u64, chunk: u64) {
        let mut available = self.shop.stock().count(self.sku).await.unwrap().available;
        while available < target {
            let n = chunk.min(target - available);
            let first = self.next_code.fetch_add(n, Ordering::Relaxed);
            let mut text = String::with_capacity(usize::try_from(n).unwrap() * 20);
            for i in first..first + n {
                // "ABCD-1234-EFGH-5678"-shaped, unique per key.
                let h = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
                text.push_str(&format!(
                    "{:04X}-{:04}-{:04X}-{:04}\n",
                    h >> 48,
                    i / 10_000 % 10_000,
                    (h >> 32) & 0xFFFF,
                    i % 10_000
                ));
            }
            let report = self
                .shop
                .import_card_keys(
                    &quanyi::Actor::new("bench", "stock").unwrap(),
                    self.sku,
                    text.as_bytes(),
                    &ImportOptions::default(),
                    BadLines::Reject,
                )
                .await
                .unwrap();
            assert_eq!(
                u64::try_from(report.imported).unwrap(),
                n,
                "every generated key is new"
            );
            available = report.stock.available;
        }
    }

    /// Places an order of one key.
    pub(crate) async fn place(&self, buyer: &MemberId) -> quanyi::Result<Order> {
        self.shop
            .place_order(buyer, &[CartLine::new(self.sku, 1)])
            .await
    }

    /// Pays it (a unique transaction id); delivery happens inside `confirm_payment`.
    pub(crate) async fn pay(&self, order: &Order) -> quanyi::Result<()> {
        let tx = self.next_tx.fetch_add(1, Ordering::Relaxed);
        let receipt = self
            .shop
            .confirm_payment(PaymentNotification {
                provider: "alipay".into(),
                transaction_id: format!("tx-{tx}"),
                order: order.id(),
                amount: order.total(),
            })
            .await?;
        assert_eq!(receipt.order.status(), OrderStatus::Delivered);
        Ok(())
    }

    /// One order: place (reserves one key), pay and deliver.
    pub(crate) async fn order(&self, buyer: &MemberId) -> quanyi::Result<()> {
        let order = self.place(buyer).await?;
        self.pay(&order).await
    }
}
