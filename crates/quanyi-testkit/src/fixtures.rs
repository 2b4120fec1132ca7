//! Builders for the records tests need: goods, orders, events and sealed-looking cards.

use chrono::{DateTime, Duration, TimeZone, Utc};
use quanyi_core::{
    BatchId, CardId, Currency, EventEnvelope, EventId, GoodsId, MemberId, Money, OrderId, SkuId,
    TenantId,
};
use quanyi_goods::{Goods, GoodsDraft, GoodsKind, PurchaseLimits, SkuDraft, StockSource};
use quanyi_order::{NewLine, Order, OrderEvent, Payment};
use quanyi_storage::Store;
use quanyi_storage::{NewCard, NewJob, PaymentNotice};
use quanyi_vault::{BlindIndex, IndexScheme, KeyId, KeyRing, RootKey, SealedCard, SealedValue};
use rand::RngCore;

/// The instant fixtures start at: 2026-11-25 12:00 UTC.
pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, 0).unwrap()
}

/// A tenant unique to one test, so tests sharing a database never collide.
pub fn tenant() -> TenantId {
    let mut bytes = [0u8; 6];
    rand::thread_rng().fill_bytes(&mut bytes);
    let suffix: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    TenantId::new(format!("t-{suffix}")).expect("fixture tenant names are valid")
}

/// The root key of the fixture key rings.
pub fn root_key() -> RootKey {
    RootKey::from_bytes([7; 32])
}

/// A new tenant whose key ring is stored, with `k1` active: storage takes cards only when they
/// are sealed with the tenant's active key, so every test that stores cards starts here.
pub async fn vault_tenant(store: &dyn Store) -> TenantId {
    let tenant = tenant();
    store
        .insert_key_ring(&key_ring(&tenant))
        .await
        .expect("a fresh tenant has no ring");
    tenant
}

/// A wrapped key ring for `tenant` under [`root_key`], `k1` active.
pub fn key_ring(tenant: &TenantId) -> quanyi_vault::WrappedKeyRing {
    let (_, wrapped) = KeyRing::create(tenant.clone(), &root_key(), t0(), &mut rand::thread_rng())
        .expect("fixture rings are made");
    wrapped
}

/// Rotates the tenant's stored ring (made by [`vault_tenant`]) to a new active key; returns it.
pub async fn rotate_ring(store: &dyn Store, tenant: &TenantId) -> KeyId {
    let (wrapped, version) = store
        .key_ring(tenant)
        .await
        .expect("the ring is read")
        .expect("the tenant has a ring");
    let mut ring = KeyRing::unwrap(&root_key(), &wrapped).expect("fixture rings unwrap");
    let key = ring
        .rotate(&root_key(), t0(), &mut rand::thread_rng())
        .expect("fixture rings rotate");
    store
        .update_key_ring(&ring.to_wrapped(), version, quanyi_storage::Trail::NONE)
        .await
        .expect("the rotated ring is stored");
    key
}

/// A member id.
pub fn member(name: &str) -> MemberId {
    MemberId::new(name).expect("fixture member names are valid")
}

/// A fresh time-ordered id of any id type.
pub fn id<T>(make: fn(DateTime<Utc>, &mut dyn RngCore) -> T) -> T {
    make(Utc::now(), &mut rand::thread_rng())
}

/// Card-key goods with one SKU priced 30.00 CNY from the vault pool, with optional limits.
pub fn card_goods(tenant: &TenantId, limits: PurchaseLimits) -> Goods {
    let sku = SkuDraft::new(
        id(SkuId::generate),
        "month card",
        Money::from_minor(3000, Currency::CNY),
    )
    .with_stock(StockSource::VaultPool)
    .with_limits(limits);
    let draft = GoodsDraft {
        title: "Video membership".into(),
        kind: GoodsKind::CardKey,
        skus: vec![sku],
        categories: vec![],
    };
    Goods::new(id(GoodsId::generate), tenant.clone(), draft, t0()).expect("fixture goods are valid")
}

/// The first SKU of goods.
pub fn first_sku(goods: &Goods) -> SkuId {
    goods.skus()[0].id
}

/// An unpaid order for `quantity` of the goods' first SKU, due 15 minutes after [`t0`].
pub fn order(goods: &Goods, member: &MemberId, quantity: u32) -> (Order, Vec<OrderEvent>) {
    order_at(goods, member, quantity, t0())
}

/// [`order`] placed at `at`, due 15 minutes later.
pub fn order_at(
    goods: &Goods,
    member: &MemberId,
    quantity: u32,
    at: DateTime<Utc>,
) -> (Order, Vec<OrderEvent>) {
    let sku = &goods.skus()[0];
    let line = NewLine {
        sku: sku.id,
        goods: goods.id(),
        kind: goods.kind().tag(),
        title: goods.title().to_owned(),
        quantity,
        unit_price: sku.price,
        account: None,
        allocated: None,
        terms: goods
            .sale_terms(sku.id)
            .expect("the goods hold their first SKU"),
        pack: None,
        price_source: quanyi_order::PriceSource::ListPrice,
    };
    Order::place(
        id(OrderId::generate),
        goods.tenant().clone(),
        member.clone(),
        vec![line],
        at,
        at + Duration::minutes(15),
    )
    .expect("fixture orders are valid")
}

/// Wraps order events in envelopes numbered from the order's version.
pub fn envelopes(order: &Order, events: &[OrderEvent]) -> Vec<EventEnvelope> {
    let base = order.version().saturating_sub(events.len() as u64);
    let aggregate: std::sync::Arc<str> = order.id().to_string().into();
    events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            EventEnvelope::wrap(
                id(EventId::generate),
                order.tenant().clone(),
                "order",
                aggregate.clone(),
                base + i as u64 + 1,
                t0(),
                e,
            )
            .expect("order events serialize")
        })
        .collect()
}

/// The order as the notice pays it (at [`t0`]), with the change's events in envelopes.
pub fn paid_by(order: &Order, notice: &PaymentNotice) -> (Order, Vec<EventEnvelope>) {
    let mut paid = order.clone();
    let events = paid
        .confirm_payment(
            Payment {
                provider: notice.provider.clone(),
                transaction_id: notice.transaction_id.clone(),
                amount: notice.amount,
                paid_at: t0(),
            },
            t0(),
        )
        .expect("the fixture notice pays the order");
    let envs = envelopes(&paid, &events);
    (paid, envs)
}

/// `n` cards for a SKU with random blind indexes and ciphertext-shaped bytes.
pub fn cards(sku: SkuId, n: usize) -> Vec<NewCard> {
    let batch = id(BatchId::generate);
    (0..n)
        .map(|_| {
            let mut index = [0u8; 32];
            rand::thread_rng().fill_bytes(&mut index);
            card_with_index(sku, batch, index)
        })
        .collect()
}

/// One card with a chosen blind index.
pub fn card_with_index(sku: SkuId, batch: BatchId, index: [u8; 32]) -> NewCard {
    let mut bytes = vec![0u8; 48];
    rand::thread_rng().fill_bytes(&mut bytes);
    NewCard {
        id: id(CardId::generate),
        sku,
        batch,
        blind_index: BlindIndex::from_bytes(index),
        index_scheme: IndexScheme::CURRENT,
        legacy_index: None,
        sealed: SealedCard {
            code: SealedValue::from_bytes(bytes),
            secret: None,
        },
        key_id: KeyId(1),
    }
}

/// A job to deliver an order.
pub fn job(tenant: &TenantId, key: &str, run_at: DateTime<Utc>) -> NewJob {
    NewJob {
        id: id(quanyi_core::JobId::generate),
        tenant: tenant.clone(),
        kind: "deliver_order".into(),
        dedupe_key: key.to_owned(),
        payload: serde_json::json!({ "key": key }),
        run_at,
    }
}

/// The document of `order` as stores wrote it before lines kept their terms (SQLite schema 7,
/// PostgreSQL schema 8 and earlier): no `terms` and no `pack` on its lines, a pack's lines
/// naming the pack's SKU in `bundle`.
pub fn doc_before_line_terms(order: &Order) -> String {
    let mut doc = serde_json::to_value(order).expect("orders serialize");
    if let Some(lines) = doc
        .get_mut("lines")
        .and_then(serde_json::Value::as_array_mut)
    {
        for line in lines
            .iter_mut()
            .filter_map(serde_json::Value::as_object_mut)
        {
            line.remove("terms");
            if let Some(pack) = line.remove("pack") {
                line.insert("bundle".into(), pack["sku"].clone());
            }
        }
    }
    doc.to_string()
}
