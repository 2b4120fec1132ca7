//! Key rotation through the shop, and no plaintext in logs, Debug output, events or errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::*;
use quanyi::crates::storage::EventStore;
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

    let k2 = w.shop.rotate_data_key().await.unwrap();
    assert_eq!(k2, KeyId(2));
    let new_codes = codes(2);
    stock_up(&w.shop, sku, &new_codes).await;
    // Retiring a key that still seals cards is refused.
    assert_eq!(
        w.shop.retire_key(KeyId(1)).await.unwrap_err().code(),
        "invalid_input"
    );
    assert_eq!(w.shop.reseal_cards(KeyId(1)).await.unwrap(), 3);
    w.shop.retire_key(KeyId(1)).await.unwrap();
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

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn encodings(secret: &str) -> Vec<String> {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let b = secret.as_bytes();
    vec![
        secret.to_owned(),
        hex::encode(b),
        STANDARD.encode(b),
        STANDARD_NO_PAD.encode(b),
        URL_SAFE.encode(b),
        URL_SAFE_NO_PAD.encode(b),
    ]
}

#[test]
fn no_plaintext_in_logs_debug_events_or_errors() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let code = "SECRET-CODE-7Q2W-9X8Y";
    let secret = "PASSWORD-4K3J-2H1G";
    let root = RootKey::generate(&mut rand::thread_rng());
    let root_b64 = root.expose_base64().to_string();
    let mut seen = String::new();
    tracing::subscriber::with_default(subscriber, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let store = Arc::new(MemoryStore::new());
            let shop = Shop::builder(store.clone(), Arc::new(StaticKeyProvider::new(root)))
                .build()
                .unwrap();
            let sku = card_sku(&shop, "30.00", PurchaseLimits::default()).await;
            let options = ImportOptions {
                delimiter: Some('|'),
                ..ImportOptions::default()
            };
            let line = format!("{code}|{secret}\n{code}|{secret}\nbad-without-secret\n");
            let err = shop
                .import_card_keys(sku, line.as_bytes(), &options, BadLines::Reject)
                .await
                .unwrap_err();
            seen.push_str(&format!("{err} {err:?}\n"));
            let report = shop
                .import_card_keys(sku, line.as_bytes(), &options, BadLines::Skip)
                .await
                .unwrap();
            seen.push_str(&format!("{report} {report:?}\n"));
            let buyer = member("alice");
            let order = shop
                .place_order(&buyer, &[CartLine::new(sku, 1)])
                .await
                .unwrap();
            let receipt = shop.confirm_payment(notice(&order, "txn")).await.unwrap();
            seen.push_str(&format!("{receipt:?}\n"));
            let revealed = shop.reveal(&buyer, order.id()).await.unwrap();
            assert_eq!(revealed.cards[0].key.code.expose(), code);
            assert_eq!(
                revealed.cards[0].key.secret.as_ref().unwrap().expose(),
                secret
            );
            tracing::info!(?revealed, "revealed");
            seen.push_str(&format!("{revealed:?} {shop:?} {store:?}\n"));
            for e in store.events_after(None, 1000).await.unwrap() {
                seen.push_str(&serde_json::to_string(&e).unwrap());
            }
            for a in shop.audit_log(100).await.unwrap() {
                seen.push_str(&format!("{a:?}"));
            }
            let err = shop
                .reveal(&member("mallory"), order.id())
                .await
                .unwrap_err();
            seen.push_str(&format!("{err} {err:?}"));
        });
    });
    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("card keys imported"),
        "the capture works: {logs}"
    );
    let all = format!("{logs}\n{seen}");
    for s in [code, secret, &root_b64] {
        for enc in encodings(s) {
            assert!(!all.contains(&enc), "leaked {enc}");
        }
    }
    for s in [code, secret] {
        assert!(
            !all.to_lowercase()
                .contains(&quanyi::crates::vault::normalise(s))
        );
    }
}
