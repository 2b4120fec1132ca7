//! What cannot be delivered is paid back through the payment gateway, once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use quanyi::crates::storage::{JobStatus, JobStore, VaultStore};
use quanyi::*;
use quanyi_testkit::fixtures::t0;

/// A gateway that records refunds by id, and can be told to fail the next calls.
#[derive(Debug, Default)]
struct RecordingGateway {
    refunds: Mutex<Vec<RefundRequest>>,
    fail_next: Mutex<u32>,
}

#[async_trait::async_trait]
impl PaymentGateway for RecordingGateway {
    async fn refund(&self, request: &RefundRequest) -> Result<RefundReceipt, GatewayError> {
        {
            let mut fail = self.fail_next.lock().unwrap();
            if *fail > 0 {
                *fail -= 1;
                return Err(GatewayError::Unavailable {
                    reason: "timeout".into(),
                });
            }
        }
        let mut refunds = self.refunds.lock().unwrap();
        // Idempotent by refund id, as a provider is.
        if !refunds.iter().any(|r| r.refund_id == request.refund_id) {
            refunds.push(request.clone());
        }
        Ok(RefundReceipt {
            provider_refund_id: format!("rf-{}", request.refund_id),
        })
    }
}

fn shop_with(gateway: Option<Arc<RecordingGateway>>) -> (Shop, ManualClock, Arc<MemoryStore>) {
    let store = Arc::new(MemoryStore::new());
    let clock = ManualClock::new(t0());
    let mut builder = Shop::builder(
        store.clone(),
        Arc::new(StaticKeyProvider::new(RootKey::generate(
            &mut rand::thread_rng(),
        ))),
    )
    .clock(Arc::new(clock.clone()));
    if let Some(g) = gateway {
        builder = builder.payment_gateway(g);
    }
    (builder.build().unwrap(), clock, store)
}

/// Places an order of `quantity` whose reservation is then lost to another buyer, leaving one key.
async fn order_with_lost_keys(shop: &Shop, store: &MemoryStore, extra: Option<SkuId>) -> Order {
    let sku = card_sku(shop, "30.00", PurchaseLimits::default()).await;
    stock_up(shop, sku, &codes(2)).await;
    let mut cart = vec![CartLine::new(sku, 2)];
    if let Some(other) = extra {
        cart.push(CartLine::new(other, 1));
    }
    let buyer = member("alice");
    let order = shop.place_order(&buyer, &cart).await.unwrap();
    // The reservation is lost (as if its deadline had passed) and another buyer takes a key.
    store
        .release_cards(shop.tenant(), order.id())
        .await
        .unwrap();
    if let Some(other) = extra {
        let o = order.id();
        // Keep the other SKU's key for this order.
        store
            .reserve_cards(shop.tenant(), other, o, 1, order.expires_at(), t0())
            .await
            .unwrap();
    }
    let rival = shop
        .place_order(&member("bob"), &[CartLine::new(sku, 1)])
        .await
        .unwrap();
    shop.confirm_payment(notice(&rival, "txn-rival"))
        .await
        .unwrap();
    order
}

#[tokio::test]
async fn an_undeliverable_order_is_refunded_in_full_once() {
    let gateway = Arc::new(RecordingGateway::default());
    let (shop, _, store) = shop_with(Some(gateway.clone()));
    let order = order_with_lost_keys(&shop, &store, None).await;
    let receipt = shop.confirm_payment(notice(&order, "txn-a")).await.unwrap();
    assert_eq!(receipt.order.status(), OrderStatus::Refunded);
    let refunds = gateway.refunds.lock().unwrap().clone();
    assert_eq!(refunds.len(), 1);
    assert_eq!(refunds[0].amount, order.total());
    assert_eq!(refunds[0].transaction_id, "txn-a");
    // Running the jobs again pays nothing more.
    assert_eq!(shop.run_due_jobs(10).await.unwrap(), JobRun::default());
    assert_eq!(gateway.refunds.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_partly_deliverable_order_refunds_only_the_missing_line() {
    let gateway = Arc::new(RecordingGateway::default());
    let (shop, _, store) = shop_with(Some(gateway.clone()));
    let other = card_sku(&shop, "12.50", PurchaseLimits::default()).await;
    stock_up(&shop, other, &codes(1)).await;
    let order = order_with_lost_keys(&shop, &store, Some(other)).await;
    let receipt = shop.confirm_payment(notice(&order, "txn-p")).await.unwrap();
    let done = receipt.order;
    assert_eq!(done.status(), OrderStatus::PartiallyDelivered);
    let statuses: Vec<LineStatus> = done.lines().iter().map(|l| l.status).collect();
    assert_eq!(statuses, vec![LineStatus::Refunded, LineStatus::Delivered]);
    let refunds = gateway.refunds.lock().unwrap().clone();
    assert_eq!(refunds.len(), 1);
    assert_eq!(refunds[0].amount, done.lines()[0].amount);
    // Money is conserved: delivered plus refunded is what was paid.
    let delivered = done.lines()[1].amount;
    assert_eq!(
        delivered.checked_add(refunds[0].amount).unwrap(),
        done.total()
    );
    assert_eq!(
        shop.reveal(&member("alice"), done.id())
            .await
            .unwrap()
            .cards
            .len(),
        1
    );
}

#[tokio::test]
async fn a_failing_gateway_is_retried_and_pays_once() {
    let gateway = Arc::new(RecordingGateway::default());
    *gateway.fail_next.lock().unwrap() = 1;
    let (shop, clock, store) = shop_with(Some(gateway.clone()));
    let order = order_with_lost_keys(&shop, &store, None).await;
    let receipt = shop.confirm_payment(notice(&order, "txn-r")).await.unwrap();
    assert_eq!(receipt.order.status(), OrderStatus::RefundPending);
    assert!(gateway.refunds.lock().unwrap().is_empty());
    // The job was put back with a backoff; once due it finishes the refund.
    assert_eq!(shop.run_due_jobs(10).await.unwrap(), JobRun::default());
    clock.advance(chrono::Duration::minutes(1));
    assert_eq!(shop.run_due_jobs(10).await.unwrap().done, 1);
    assert_eq!(
        shop.order(order.id()).await.unwrap().status(),
        OrderStatus::Refunded
    );
    assert_eq!(gateway.refunds.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn without_a_gateway_the_refund_waits_in_its_job() {
    let (shop, _, store) = shop_with(None);
    let order = order_with_lost_keys(&shop, &store, None).await;
    let receipt = shop.confirm_payment(notice(&order, "txn-n")).await.unwrap();
    assert_eq!(receipt.order.status(), OrderStatus::RefundPending);
    let job = store
        .claim_jobs(
            "inspector",
            &[quanyi::DELIVER_ORDER_JOB],
            t0() + chrono::Duration::days(1),
            chrono::Duration::seconds(1),
            10,
        )
        .await
        .unwrap();
    assert_eq!(job.len(), 1);
    assert_eq!(
        job[0].last_error.as_deref(),
        Some("a refund is due but no payment gateway is configured")
    );
    assert!(matches!(job[0].status, JobStatus::Running { .. }));
}

#[tokio::test]
async fn a_worker_runs_until_shutdown() {
    let (shop, _, _) = shop_with(None);
    let worker = Worker::new(shop).idle_wait(std::time::Duration::from_millis(1));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        worker
            .run_until(async {
                let _ = rx.await;
            })
            .await
    });
    tx.send(()).unwrap();
    handle.await.unwrap();
    // A fresh shop's first pass runs the period's engine sweeps (expiring unpaid orders, paying
    // approved refunds); the next pass of the same period has nothing to do.
    let worker = Worker::new(shop_with(None).0);
    let first = worker.run_once().await.unwrap();
    assert_eq!(
        first,
        JobRun {
            done: 2,
            sweeps_scheduled: 2,
            ..JobRun::default()
        }
    );
    assert_eq!(worker.run_once().await.unwrap(), JobRun::default());
}
