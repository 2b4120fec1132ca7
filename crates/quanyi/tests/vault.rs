//! Key rotation through the shop, and a second shop opening what the first sealed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::*;
use quanyi::*;

#[tokio::test]
async fn rotate_reseal_retire_keeps_every_key_readable() {
    let w = world();
    let sku = card_sku(&w.shop, "30.00", PurchaseLimits::default()).await;
    let old_codes = codes(3);
    stock_up(&w.shop, sku, &old_codes).await;
    let buyer = member("alice");
    let first = w
        .shop
        .place_order(&buyer, &[CartLine::new(sku, 1)])
        .await
        .unwrap();
    w.shop
        .confirm_payment(notice(&first, "txn-1"))
        .await
        .unwrap();

    let k2 = w.shop.rotate_data_key(&admin()).await.unwrap();
    assert_eq!(k2, KeyId(2));
    let new_codes = codes(2);
    stock_up(&w.shop, sku, &new_codes).await;
    // Retiring a key that still seals cards is refused.
    assert_eq!(
        w.shop
            .retire_key(&admin(), KeyId(1))
            .await
            .unwrap_err()
            .code(),
        "invalid_input"
    );
    assert_eq!(w.shop.reseal_cards(&admin(), KeyId(1)).await.unwrap(), 3);
    w.shop.retire_key(&admin(), KeyId(1)).await.unwrap();
    let key_records: Vec<_> = w
        .shop
        .audit_log(20)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.subject == "k1" || r.subject == "k2")
        .map(|r| r.actor)
        .collect();
    assert_eq!(key_records.len(), 3, "rotated, resealed, retired");
    assert!(
        key_records.iter().all(|a| a == "admin:key-admin"),
        "{key_records:?}"
    );
    // Re-importing a card sold under the old key is still a duplicate.
    let again = stock_up(&w.shop, sku, &old_codes[..1]).await;
    assert_eq!(again.duplicates.len(), 1);

    let revealed = w.shop.reveal(&buyer, first.id()).await.unwrap();
    assert_eq!(revealed.cards[0].key.code.expose(), old_codes[0]);
    let rest = w
        .shop
        .place_order(&buyer, &[CartLine::new(sku, 4)])
        .await
        .unwrap();
    w.shop
        .confirm_payment(notice(&rest, "txn-2"))
        .await
        .unwrap();
    let mut got: Vec<String> = w
        .shop
        .reveal(&buyer, rest.id())
        .await
        .unwrap()
        .cards
        .into_iter()
        .map(|c| c.key.code.expose().to_owned())
        .collect();
    got.sort();
    let mut want: Vec<String> = old_codes[1..].iter().chain(&new_codes).cloned().collect();
    want.sort();
    assert_eq!(got, want);
}

#[tokio::test]
async fn a_fresh_shop_on_the_same_store_opens_what_the_first_sealed() {
    let store = Arc::new(MemoryStore::new());
    let root = RootKey::generate(&mut rand::thread_rng());
    let keys = Arc::new(StaticKeyProvider::new(root));
    let first = Shop::builder(store.clone(), keys.clone()).build().unwrap();
    let sku = card_sku(&first, "30.00", PurchaseLimits::default()).await;
    let codes = codes(1);
    stock_up(&first, sku, &codes).await;
    let buyer = member("bob");
    let order = first
        .place_order(&buyer, &[CartLine::new(sku, 1)])
        .await
        .unwrap();
    first.confirm_payment(notice(&order, "txn")).await.unwrap();
    let second = Shop::builder(store.clone(), keys).build().unwrap();
    let revealed = second.reveal(&buyer, order.id()).await.unwrap();
    assert_eq!(revealed.cards[0].key.code.expose(), codes[0]);
    // With another root key the ring does not unwrap: a configuration error, not a denial.
    let wrong = Arc::new(StaticKeyProvider::new(RootKey::generate(
        &mut rand::thread_rng(),
    )));
    let third = Shop::builder(store, wrong).build().unwrap();
    let err = third.reveal(&buyer, order.id()).await.unwrap_err();
    assert_eq!(err.code(), "wrong_root_key", "{err}");
}

/// The operator the key commands of these tests run as.
fn admin() -> quanyi::Actor {
    quanyi::Actor::new("key-admin", "admin").unwrap()
}
