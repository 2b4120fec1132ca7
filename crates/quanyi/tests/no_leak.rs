//! No plaintext card key or key material in logs, Debug output, events, audit records or errors.
//! Alone in its test binary: tracing caches callsite interest process-wide, so a scoped
//! subscriber only sees every event when no other test runs beside it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::*;
use quanyi::crates::storage::EventStore;
use quanyi::*;

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
                .import_card_keys(
                    &Actor::new("stock-keeper", "stock").unwrap(),
                    sku,
                    line.as_bytes(),
                    &options,
                    BadLines::Reject,
                )
                .await
                .unwrap_err();
            seen.push_str(&format!("{err} {err:?}\n"));
            let report = shop
                .import_card_keys(
                    &Actor::new("stock-keeper", "stock").unwrap(),
                    sku,
                    line.as_bytes(),
                    &options,
                    BadLines::Skip,
                )
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
