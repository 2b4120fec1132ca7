//! A shop remembers the goods it priced orders from and the orders it placed until their
//! payment; another process changing either is found by the store's checks, so a remembered
//! copy never decides anything on its own.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::*;
use quanyi::crates::storage::{NoticeDisposition, PaymentStore, VaultStore};
use quanyi::*;

/// A second shop on the same store, as a second process would have.
fn second_shop(w: &World) -> Shop {
    let root = RootKey::generate(&mut rand::thread_rng());
    Shop::builder(w.store.clone(), Arc::new(StaticKeyProvider::new(root)))
        .clock(Arc::new(w.clock.clone()))
        .build()
        .unwrap()
}

#[tokio::test]
async fn goods_taken_off_the_shelf_elsewhere_are_not_sold_from_memory() {
    let w = world();
    let sku = card_sku(&w.shop, "30.00", PurchaseLimits::default()).await;
    stock_up(&w.shop, sku, &codes(3)).await;
    let buyer = member("ada");
    // This shop remembers the goods (it created them and has sold from them).
    w.shop
        .place_order(&buyer, &[CartLine::new(sku, 1)])
        .await
        .unwrap();

    let other = second_shop(&w);
    other
        .set_shelf(
            &quanyi::Actor::new("merchant", "catalog").unwrap(),
            sku,
            Shelf::Off,
        )
        .await
        .unwrap();
    let err = w
        .shop
        .place_order(&buyer, &[CartLine::new(sku, 1)])
        .await
        .unwrap_err();
    assert_eq!(err.code(), "off_shelf", "{err:?}");
    let stock = w.shop.stock().count(sku).await.unwrap();
    assert_eq!((stock.available, stock.reserved), (2, 1));
}

#[tokio::test]
async fn goods_put_back_on_the_shelf_elsewhere_are_sold_again() {
    let w = world();
    let sku = card_sku(&w.shop, "30.00", PurchaseLimits::default()).await;
    stock_up(&w.shop, sku, &codes(2)).await;
    w.shop
        .set_shelf(
            &quanyi::Actor::new("merchant", "catalog").unwrap(),
            sku,
            Shelf::Off,
        )
        .await
        .unwrap();
    let buyer = member("bo");
    let err = w
        .shop
        .place_order(&buyer, &[CartLine::new(sku, 1)])
        .await
        .unwrap_err();
    assert_eq!(err.code(), "off_shelf");

    // This shop last saw the SKU off the shelf; another one puts it back.
    second_shop(&w)
        .set_shelf(
            &quanyi::Actor::new("merchant", "catalog").unwrap(),
            sku,
            Shelf::On,
        )
        .await
        .unwrap();
    let order = w
        .shop
        .place_order(&buyer, &[CartLine::new(sku, 1)])
        .await
        .unwrap();
    assert_eq!(order.status(), OrderStatus::AwaitingPayment);
}

#[tokio::test]
async fn an_order_cancelled_elsewhere_is_not_paid_from_memory() {
    let w = world();
    let sku = card_sku(&w.shop, "30.00", PurchaseLimits::default()).await;
    stock_up(&w.shop, sku, &codes(1)).await;
    let buyer = member("cy");
    let order = w
        .shop
        .place_order(&buyer, &[CartLine::new(sku, 1)])
        .await
        .unwrap();
    second_shop(&w)
        .cancel_order(&buyer, order.id(), "changed my mind")
        .await
        .unwrap();

    let err = w
        .shop
        .confirm_payment(notice(&order, "txn-late"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::NotPayable {
                reason: "order_cancelled",
                ..
            }
        ),
        "{err:?}"
    );
    let recorded = w
        .store
        .payment_notice(w.shop.tenant(), "testpay", "txn-late")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        recorded.disposition,
        NoticeDisposition::Reconcile {
            reason: "order_cancelled".into()
        }
    );
    let stock = w.shop.stock().count(sku).await.unwrap();
    assert_eq!((stock.available, stock.sold), (1, 0));
}

#[tokio::test]
async fn an_order_whose_card_was_lost_is_paid_from_the_stores_copy() {
    let w = world();
    let sku = card_sku(&w.shop, "30.00", PurchaseLimits::default()).await;
    stock_up(&w.shop, sku, &codes(2)).await;
    let buyer = member("di");
    let order = w
        .shop
        .place_order(&buyer, &[CartLine::new(sku, 1)])
        .await
        .unwrap();
    let held = w
        .store
        .held_cards(w.shop.tenant(), order.id())
        .await
        .unwrap();
    // Another process returns the reservation to stock (as an expiry sweep that lost a race
    // would); the remembered copy still lists the card.
    w.store
        .release_cards(w.shop.tenant(), order.id())
        .await
        .unwrap();

    let receipt = w
        .shop
        .confirm_payment(notice(&order, "txn-1"))
        .await
        .unwrap();
    assert_eq!(receipt.order.status(), OrderStatus::Delivered);
    let sold = w
        .store
        .order_cards(w.shop.tenant(), order.id())
        .await
        .unwrap();
    assert_eq!(sold.len(), 1);
    let stock = w.shop.stock().count(sku).await.unwrap();
    assert_eq!((stock.available, stock.reserved, stock.sold), (1, 0, 1));
    assert!(held.iter().all(|c| c.sku == sku));
}
