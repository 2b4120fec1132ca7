//! Shop case of the supplier deadline: a paid line never waits on a supplier for good.

use std::sync::Arc;

use chrono::Duration;
use quanyi::{
    AccountRule, CartLine, Clock, GoodsDraft, GoodsKind, OrderStatus, SkuDraft, SkuId, StockSource,
    Store, SupplierRoute, Worker,
};
use quanyi_storage::AuditAction;
use quanyi_supplier::{ProductCode, SupplierId};

use super::{Refunds, Rig, cny, member, notice};
use crate::fixtures;
use crate::supplier_sim::{SimSupplier, TopUpMode};

/// A shop whose top-ups go to a supplier that accepts and never finishes, with a supplier
/// deadline of 2 hours and `policy` past it; answers the shop, the supplier, the gateway's
/// refunds and the top-up SKU.
async fn slow_top_ups(
    rig: &Rig,
    name: &str,
    policy: quanyi::OverduePolicy,
) -> (quanyi::Shop, Arc<SimSupplier>, Arc<Refunds>, SkuId) {
    let product = ProductCode::new("MOBILE-50").unwrap();
    let sim_id = SupplierId::new(name).unwrap();
    let sim = Arc::new(SimSupplier::new(sim_id.clone(), 5).with_top_up_product(
        product.clone(),
        cny("48.00"),
        TopUpMode::Async,
    ));
    let refunds = Arc::new(Refunds::default());
    let shop = rig
        .builder(rig.store.clone())
        .supplier(sim.clone())
        .payment_gateway(refunds.clone())
        .supplier_deadline(Duration::hours(2))
        .supplier_overdue(policy)
        .build()
        .unwrap();
    let sku = fixtures::id(SkuId::generate);
    shop.create_goods(
        &quanyi::Actor::new("merchant", "catalog").unwrap(),
        GoodsDraft {
            title: "China Mobile credit 50".into(),
            kind: GoodsKind::DirectTopUp {
                account: AccountRule::MainlandMobile,
            },
            skus: vec![
                SkuDraft::new(sku, "50 yuan", cny("50.00"))
                    .with_stock(StockSource::Supplier)
                    .with_routes(vec![SupplierRoute::new(sim_id, product, cny("48.00"))]),
            ],
            categories: vec![],
        },
    )
    .await
    .unwrap();
    (shop, sim, refunds, sku)
}

/// A top-up the supplier accepted but never finishes: the order keeps fulfilling within the
/// shop's supplier deadline, and past it the line is given up, refunded once through the
/// gateway, and audited with the request for reconciliation; the supplier's late callback
/// then changes nothing.
pub async fn a_line_waiting_on_a_supplier_past_the_deadline_is_refunded(store: Arc<dyn Store>) {
    let rig = Rig::new(store);
    let (shop, sim, refunds, sku) =
        slow_top_ups(&rig, "slow-sim", quanyi::OverduePolicy::Refund).await;
    let order = shop
        .place_order(
            &member("dora"),
            &[CartLine::new(sku, 1).with_account("13800138000")],
        )
        .await
        .unwrap();
    let paid = shop
        .confirm_payment(notice(&order, "txn-overdue"))
        .await
        .unwrap()
        .order;
    assert_eq!(paid.status(), OrderStatus::Fulfilling);
    let worker = Worker::new(shop.clone());

    // Within the deadline the line keeps waiting.
    rig.clock.advance(Duration::hours(1));
    worker.run_once().await.unwrap();
    assert_eq!(
        shop.order(order.id()).await.unwrap().status(),
        OrderStatus::Fulfilling
    );
    assert!(refunds.0.lock().is_empty());

    // Past it: given up and paid back, once, however often the worker passes.
    rig.clock.advance(Duration::hours(2));
    for _ in 0..3 {
        worker.run_once().await.unwrap();
        rig.clock.advance(Duration::minutes(10));
    }
    let settled = shop.order(order.id()).await.unwrap();
    assert_eq!(settled.status(), OrderStatus::Refunded);
    assert_eq!(settled.lines()[0].status, quanyi::LineStatus::Refunded);
    let failed: Vec<String> = rig
        .store
        .aggregate_events(&rig.tenant, "order", &order.id().to_string())
        .await
        .unwrap()
        .iter()
        .filter(|e| e.name == "order.line_failed")
        .map(|e| e.payload.json().unwrap().to_owned())
        .collect();
    assert_eq!(failed.len(), 1);
    assert!(failed[0].contains("supplier_overdue"), "{}", failed[0]);
    let paid_back: Vec<_> = refunds
        .0
        .lock()
        .iter()
        .filter(|r| r.order == order.id())
        .map(|r| r.amount)
        .collect();
    assert_eq!(paid_back, vec![cny("50.00")]);
    let request = settled.lines()[0].attempts[0].request.clone();
    let log = shop.audit_log(50).await.unwrap();
    let overdue: Vec<_> = log
        .iter()
        .filter(|r| r.action == AuditAction::SupplierOverdue)
        .collect();
    assert_eq!(overdue.len(), 1);
    assert_eq!(overdue[0].subject, request.as_str());
    assert!(rig.clock.now() > paid.updated_at() + Duration::hours(2));

    // The supplier finishes late: the settled line stays as it is.
    for callback in sim.finish_pending() {
        let _ = shop
            .supplier_callback(&SupplierId::new("slow-sim").unwrap(), &callback)
            .await;
    }
    assert_eq!(
        shop.order(order.id()).await.unwrap().status(),
        OrderStatus::Refunded
    );
}

/// With the hold policy, lines past the supplier deadline wait for an operator instead: their
/// orders keep fulfilling (found by an operator's search), nothing is refunded and the worker
/// stops polling; the operator's decision, audited with the actor in the same write, fails one
/// line (refunded once) and delivers another; a second decision on a decided line is refused.
pub async fn a_line_held_past_the_deadline_waits_for_an_operator(store: Arc<dyn Store>) {
    let rig = Rig::new(store);
    let (shop, _sim, refunds, sku) =
        slow_top_ups(&rig, "held-sim", quanyi::OverduePolicy::Hold).await;
    let mut orders = Vec::new();
    for (buyer, txn) in [("dora", "txn-held-1"), ("eve", "txn-held-2")] {
        let order = shop
            .place_order(
                &member(buyer),
                &[CartLine::new(sku, 1).with_account("13800138000")],
            )
            .await
            .unwrap();
        shop.confirm_payment(notice(&order, txn)).await.unwrap();
        orders.push(order);
    }
    let worker = Worker::new(shop.clone());
    rig.clock.advance(Duration::hours(3));
    for _ in 0..3 {
        worker.run_once().await.unwrap();
        rig.clock.advance(Duration::minutes(10));
    }
    for order in &orders {
        let held = shop.order(order.id()).await.unwrap();
        assert_eq!(held.status(), OrderStatus::Fulfilling);
        assert_eq!(held.lines()[0].status, quanyi::LineStatus::Held);
    }
    assert!(refunds.0.lock().is_empty());
    let log = shop.audit_log(50).await.unwrap();
    let overdue: Vec<_> = log
        .iter()
        .filter(|r| r.action == AuditAction::SupplierOverdue)
        .collect();
    assert_eq!(overdue.len(), 2);
    assert!(
        overdue
            .iter()
            .all(|r| r.detail.contains("held for an operator"))
    );
    // Nothing left to poll: the worker has no more jobs to run for them.
    assert_eq!(worker.run_once().await.unwrap().retried, 0);

    // An operator finds them and decides.
    let ops = quanyi::Actor::new("lin", "support").unwrap();
    let page = shop
        .orders()
        .search(
            &ops,
            &quanyi::OrderQuery::new().status(OrderStatus::Fulfilling),
            None,
            10,
        )
        .await
        .unwrap();
    assert_eq!(page.orders.len(), 2);
    let blank = shop
        .orders()
        .resolve_held(
            &ops,
            orders[0].id(),
            1,
            quanyi::HeldResolution::Failed,
            "  ",
        )
        .await
        .unwrap_err();
    assert_eq!(blank.code(), "invalid_input");
    let long = "x".repeat(quanyi_order::MAX_REASON_CHARS + 1);
    let too_long = shop
        .orders()
        .resolve_held(
            &ops,
            orders[0].id(),
            1,
            quanyi::HeldResolution::Failed,
            &long,
        )
        .await
        .unwrap_err();
    assert_eq!(too_long.code(), "invalid_input");
    let failed = shop
        .orders()
        .resolve_held(
            &ops,
            orders[0].id(),
            1,
            quanyi::HeldResolution::Failed,
            "supplier says it never credited",
        )
        .await
        .unwrap();
    assert_eq!(failed.status(), OrderStatus::Refunded);
    let delivered = shop
        .orders()
        .resolve_held(
            &ops,
            orders[1].id(),
            1,
            quanyi::HeldResolution::Delivered,
            "credited per the supplier's statement",
        )
        .await
        .unwrap();
    assert_eq!(delivered.status(), OrderStatus::Delivered);
    let again = shop
        .orders()
        .resolve_held(
            &ops,
            orders[1].id(),
            1,
            quanyi::HeldResolution::Failed,
            "changed my mind",
        )
        .await
        .unwrap_err();
    // The order is delivered now: the decision is refused, and changes nothing.
    assert_eq!(again.kind(), quanyi::ErrorKind::Conflict, "{again}");
    assert_eq!(
        shop.order(orders[1].id()).await.unwrap().status(),
        OrderStatus::Delivered
    );
    worker.run_once().await.unwrap();
    let paid_back: Vec<_> = refunds.0.lock().iter().map(|r| r.amount).collect();
    assert_eq!(paid_back, vec![cny("50.00")], "refunded once");
    let decisions: Vec<_> = shop
        .audit_log(50)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.action == AuditAction::HeldLineResolved)
        .collect();
    assert_eq!(decisions.len(), 2);
    assert!(decisions.iter().all(|r| r.actor == "support:lin"));
}
