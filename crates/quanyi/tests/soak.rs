//! A seeded soak: 2,000 top-up orders through two simulated suppliers with 10% of every kind of
//! fault. Afterwards every paid order is delivered or refunded, nothing is delivered twice, and
//! refunds plus delivered values equal payments.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use quanyi::crates::supplier::{ProductCode, StatementStatus, Supplier};
use quanyi::*;
use quanyi_testkit::fixtures::t0;
use quanyi_testkit::supplier_sim::{Faults, SimSupplier, TopUpMode};

const ORDERS: u32 = 2_000;

#[derive(Debug, Default)]
struct Refunds(Mutex<HashMap<String, RefundRequest>>);

#[async_trait::async_trait]
impl PaymentGateway for Refunds {
    async fn refund(&self, r: &RefundRequest) -> Result<RefundReceipt, GatewayError> {
        self.0
            .lock()
            .unwrap()
            .entry(r.refund_id.clone())
            .or_insert_with(|| r.clone());
        Ok(RefundReceipt {
            provider_refund_id: r.refund_id.clone(),
        })
    }
}

fn faulty(id: &str, seed: u64, mode: TopUpMode) -> Arc<SimSupplier> {
    let tenth = 100;
    Arc::new(
        SimSupplier::new(SupplierId::new(id).unwrap(), seed)
            .with_top_up_product(
                ProductCode::new("MOBILE-50").unwrap(),
                Money::from_minor(4800, Currency::CNY),
                mode,
            )
            .with_faults(Faults {
                definite_error: tenth,
                timeout_after_success: tenth,
                timeout_before_send: tenth,
                async_failure: tenth,
                duplicate_callback: tenth,
                out_of_order_callback: tenth,
            }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_orders_through_faulty_suppliers_settle_exactly() {
    let clock = ManualClock::new(t0());
    let a = faulty("sim-a", 11, TopUpMode::Async);
    let b = faulty("sim-b", 12, TopUpMode::Immediate);
    let refunds = Arc::new(Refunds::default());
    let shop = Shop::builder(
        Arc::new(MemoryStore::new()),
        Arc::new(StaticKeyProvider::new(RootKey::generate(
            &mut rand::thread_rng(),
        ))),
    )
    .clock(Arc::new(clock.clone()))
    .supplier(a.clone())
    .supplier(b.clone())
    .payment_gateway(refunds.clone())
    .build()
    .unwrap();
    let sku = SkuId::generate(t0(), &mut rand::thread_rng());
    let cost = Money::from_minor(4800, Currency::CNY);
    shop.create_goods(
        &quanyi::Actor::new("merchant", "catalog").unwrap(),
        GoodsDraft {
            title: "Mobile top-up 50".into(),
            kind: GoodsKind::DirectTopUp {
                account: AccountRule::MainlandMobile,
            },
            skus: vec![
                SkuDraft::new(sku, "50 yuan", Money::from_minor(4950, Currency::CNY))
                    .with_stock(StockSource::Supplier)
                    .with_routes(vec![
                        SupplierRoute::new(
                            SupplierId::new("sim-a").unwrap(),
                            ProductCode::new("MOBILE-50").unwrap(),
                            cost,
                        ),
                        SupplierRoute::new(
                            SupplierId::new("sim-b").unwrap(),
                            ProductCode::new("MOBILE-50").unwrap(),
                            cost,
                        ),
                    ]),
            ],
            categories: vec![],
        },
    )
    .await
    .unwrap();

    let mut paid = Money::zero(Currency::CNY);
    let mut orders = Vec::new();
    for n in 0..ORDERS {
        let buyer = MemberId::new(format!("m{n}")).unwrap();
        let order = shop
            .place_order(&buyer, &[CartLine::new(sku, 1).with_account("13800138000")])
            .await
            .unwrap();
        shop.confirm_payment(PaymentNotification {
            provider: "testpay".into(),
            transaction_id: format!("t{n}"),
            order: order.id(),
            amount: order.total(),
        })
        .await
        .unwrap();
        paid = paid.checked_add(order.total()).unwrap();
        orders.push(order.id());
    }
    // Deliver the suppliers' callbacks (duplicates and stale ones included) and run the jobs,
    // moving the clock on, until nothing is left to do.
    let (a_id, b_id) = (
        SupplierId::new("sim-a").unwrap(),
        SupplierId::new("sim-b").unwrap(),
    );
    let mut rounds = 0;
    loop {
        rounds += 1;
        assert!(rounds < 200, "the soak did not settle");
        let mut callbacks = 0;
        for (id, sim) in [(&a_id, &a), (&b_id, &b)] {
            for cb in sim.finish_pending() {
                callbacks += 1;
                // A refused callback (a stale one for a line settled elsewhere) is fine here.
                let _ = shop.supplier_callback(id, &cb).await;
            }
        }
        clock.advance(chrono::Duration::minutes(5));
        let run = shop.run_due_jobs(5_000).await.unwrap();
        if callbacks == 0 && run == JobRun::default() {
            break;
        }
    }

    // What the suppliers say they did: successful top-ups per order, from their statements.
    let mut successes: HashMap<OrderId, u32> = HashMap::new();
    for sim in [&a, &b] {
        let records = sim
            .statement(
                t0() - chrono::Duration::days(1),
                t0() + chrono::Duration::days(1),
            )
            .await
            .unwrap();
        for r in records
            .iter()
            .filter(|r| r.status == StatementStatus::Succeeded)
        {
            *successes.entry(r.request.line().unwrap().0).or_default() += 1;
        }
    }
    let mut delivered = Money::zero(Currency::CNY);
    let (mut n_delivered, mut n_refunded) = (0, 0);
    for id in &orders {
        let order = shop.order(*id).await.unwrap();
        match order.status() {
            OrderStatus::Delivered => {
                n_delivered += 1;
                delivered = delivered.checked_add(order.total()).unwrap();
            }
            OrderStatus::Refunded => n_refunded += 1,
            other => panic!("order {id} ended {other}"),
        }
        assert!(
            *successes.get(id).unwrap_or(&0) <= 1,
            "order {id} topped up twice"
        );
        let expected = u32::from(order.status() == OrderStatus::Delivered);
        assert_eq!(*successes.get(id).unwrap_or(&0), expected, "order {id}");
    }
    let refunded = Money::sum(
        refunds.0.lock().unwrap().values().map(|r| r.amount),
        Currency::CNY,
    )
    .unwrap();
    println!(
        "soak: {ORDERS} orders, {n_delivered} delivered, {n_refunded} refunded, paid {paid}, delivered {delivered}, \
         refunded {refunded}, {rounds} rounds; supplier A {:?}, supplier B {:?}",
        a.counts(),
        b.counts()
    );
    assert_eq!(n_delivered + n_refunded, ORDERS as usize);
    assert_eq!(delivered.checked_add(refunded).unwrap(), paid);
    assert_eq!(refunds.0.lock().unwrap().len(), n_refunded);
    assert!(
        n_delivered > 0 && n_refunded > 0,
        "the faults were exercised"
    );
}
