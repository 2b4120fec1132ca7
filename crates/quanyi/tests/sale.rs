//! A card-key sale end to end through the facade: import, order, pay, deliver, reveal, expire.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;

use common::*;
use quanyi::crates::storage::{AuditAction, AuditOutcome, EventStore, PaymentStore};
use quanyi::*;

#[tokio::test]
async fn a_paid_order_is_delivered_once_and_revealed_to_its_buyer() {
    let w = world();
    let sku = card_sku(&w.shop, "30.00", PurchaseLimits::default()).await;
    let codes = codes(5);
    let report = stock_up(&w.shop, sku, &codes).await;
    assert_eq!((report.imported, report.stock.available), (5, 5));

    let buyer = member("alice");
    let order = w
        .shop
        .place_order(&buyer, &[CartLine::new(sku, 2)])
        .await
        .unwrap();
    assert_eq!(order.total(), Money::parse("60.00", Currency::CNY).unwrap());
    let stock = w.shop.stock().count(sku).await.unwrap();
    assert_eq!((stock.available, stock.reserved), (3, 2));

    let first = w
        .shop
        .confirm_payment(notice(&order, "txn-1"))
        .await
        .unwrap();
    assert!(!first.repeated);
    assert_eq!(first.order.status(), OrderStatus::Delivered);
    let again = w
        .shop
        .confirm_payment(notice(&order, "txn-1"))
        .await
        .unwrap();
    assert!(again.repeated);
    assert_eq!(
        again.order, first.order,
        "a repeated notice changes nothing"
    );

    let revealed = w.shop.reveal(&buyer, order.id()).await.unwrap();
    let got: HashSet<&str> = revealed.cards.iter().map(|c| c.key.code.expose()).collect();
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|c| codes.iter().any(|k| k == c)));
    // Oldest import first.
    assert!(got.contains(codes[0].as_str()) && got.contains(codes[1].as_str()));
    let stock = w.shop.stock().count(sku).await.unwrap();
    assert_eq!((stock.available, stock.reserved, stock.sold), (3, 0, 2));

    let names: Vec<String> = w
        .store
        .aggregate_events(w.shop.tenant(), "order", &order.id().to_string())
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name.into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "order.placed",
            "order.paid",
            "order.fulfilment_started",
            "order.line_delivered",
            "order.delivered"
        ]
    );
    let audit = w.shop.audit_log(10).await.unwrap();
    assert_eq!(audit[0].action, AuditAction::Reveal);
    assert_eq!(audit[0].outcome, AuditOutcome::Allowed);
}

#[tokio::test]
async fn reveal_refusals_look_alike_and_are_audited() {
    let w = world();
    let sku = card_sku(&w.shop, "30.00", PurchaseLimits::default()).await;
    stock_up(&w.shop, sku, &codes(4)).await;
    let alice = member("alice");
    let paid = w
        .shop
        .place_order(&alice, &[CartLine::new(sku, 1)])
        .await
        .unwrap();
    w.shop
        .confirm_payment(notice(&paid, "txn-a"))
        .await
        .unwrap();
    let unpaid = w
        .shop
        .place_order(&alice, &[CartLine::new(sku, 1)])
        .await
        .unwrap();
    let unknown = OrderId::generate(quanyi_testkit::fixtures::t0(), &mut rand::thread_rng());

    let attempts = [
        (member("mallory"), paid.id()),
        (alice.clone(), unpaid.id()),
        (alice.clone(), unknown),
    ];
    for (who, order) in &attempts {
        let err = w.shop.reveal(who, *order).await.unwrap_err();
        assert_eq!(err.code(), "reveal_denied");
        assert_eq!(err.to_string(), "card keys cannot be revealed");
    }
    let audit = w.shop.audit_log(10).await.unwrap();
    let denied: Vec<_> = audit
        .iter()
        .filter(|r| r.action == AuditAction::Reveal && r.outcome == AuditOutcome::Denied)
        .collect();
    assert_eq!(denied.len(), 3);
    assert!(w.shop.reveal(&alice, paid.id()).await.is_ok());
}

#[tokio::test]
async fn a_ciphertext_moved_to_another_card_does_not_open() {
    use quanyi::crates::storage::VaultStore;
    let w = world();
    let sku = card_sku(&w.shop, "30.00", PurchaseLimits::default()).await;
    stock_up(&w.shop, sku, &codes(3)).await;
    let buyer = member("bob");
    let order = w
        .shop
        .place_order(&buyer, &[CartLine::new(sku, 1)])
        .await
        .unwrap();
    w.shop
        .confirm_payment(notice(&order, "txn-b"))
        .await
        .unwrap();
    let tenant = w.shop.tenant().clone();
    let sold = w.store.order_cards(&tenant, order.id()).await.unwrap();
    let other = w
        .store
        .cards_sealed_with(&tenant, sold[0].key_id, 10)
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.id != sold[0].id)
        .unwrap();
    // Copy another card's ciphertext over the sold card's row.
    w.store
        .replace_sealed(
            &tenant,
            sold[0].id,
            sold[0].key_id,
            &other.sealed,
            other.key_id,
        )
        .await
        .unwrap();
    let err = w.shop.reveal(&buyer, order.id()).await.unwrap_err();
    assert_eq!(err.code(), "reveal_denied");
    let audit = w.shop.audit_log(1).await.unwrap();
    assert_eq!(
        (audit[0].outcome, audit[0].detail.as_str()),
        (AuditOutcome::Denied, "open_failed")
    );
}

#[tokio::test]
async fn an_unpaid_order_expires_and_its_keys_return() {
    let w = world();
    let sku = card_sku(&w.shop, "30.00", PurchaseLimits::default()).await;
    stock_up(&w.shop, sku, &codes(2)).await;
    let buyer = member("carol");
    let order = w
        .shop
        .place_order(&buyer, &[CartLine::new(sku, 2)])
        .await
        .unwrap();
    assert_eq!(w.shop.stock().count(sku).await.unwrap().available, 0);
    assert_eq!(
        w.shop.expire_unpaid_orders().await.unwrap(),
        0,
        "not yet due"
    );
    w.clock
        .advance(chrono::Duration::minutes(DEFAULT_RESERVATION_TTL_MINUTES));
    assert_eq!(w.shop.expire_unpaid_orders().await.unwrap(), 1);
    assert_eq!(
        w.shop.order(order.id()).await.unwrap().status(),
        OrderStatus::Expired
    );
    let stock = w.shop.stock().count(sku).await.unwrap();
    assert_eq!((stock.available, stock.reserved), (2, 0));
    // A late payment is kept for reconciliation and delivers nothing.
    let err = w
        .shop
        .confirm_payment(notice(&order, "txn-late"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "not_payable");
    let kept = w
        .store
        .notices_to_reconcile(w.shop.tenant(), 10)
        .await
        .unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!(w.shop.stock().count(sku).await.unwrap().sold, 0);
    // Repeating it gives the same answer.
    let again = w
        .shop
        .confirm_payment(notice(&order, "txn-late"))
        .await
        .unwrap_err();
    assert_eq!(again.code(), "not_payable");
}

#[tokio::test]
async fn fifty_buyers_race_for_ten_keys() {
    let w = world();
    let sku = card_sku(&w.shop, "30.00", PurchaseLimits::default()).await;
    stock_up(&w.shop, sku, &codes(10)).await;
    let mut tasks = Vec::new();
    for n in 0..50 {
        let shop = w.shop.clone();
        tasks.push(tokio::spawn(async move {
            let buyer = member(&format!("buyer-{n}"));
            let order = shop.place_order(&buyer, &[CartLine::new(sku, 1)]).await?;
            shop.confirm_payment(notice(&order, &format!("txn-{n}")))
                .await?;
            shop.reveal(&buyer, order.id()).await
        }));
    }
    let mut delivered = Vec::new();
    let mut out_of_stock = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(r) => delivered.extend(r.cards.into_iter().map(|c| c.key.code.expose().to_owned())),
            Err(e) if e.code() == "out_of_stock" => out_of_stock += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(delivered.len(), 10);
    assert_eq!(out_of_stock, 40);
    assert_eq!(delivered.iter().collect::<HashSet<_>>().len(), 10);
}

#[tokio::test]
async fn concurrent_identical_notices_apply_once() {
    let w = world();
    let sku = card_sku(&w.shop, "30.00", PurchaseLimits::default()).await;
    stock_up(&w.shop, sku, &codes(3)).await;
    let buyer = member("dave");
    let order = w
        .shop
        .place_order(&buyer, &[CartLine::new(sku, 2)])
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let shop = w.shop.clone();
        let n = notice(&order, "txn-same");
        tasks.push(tokio::spawn(async move { shop.confirm_payment(n).await }));
    }
    let mut fresh = 0;
    for t in tasks {
        let receipt = t.await.unwrap().unwrap();
        if !receipt.repeated {
            fresh += 1;
        }
    }
    assert_eq!(fresh, 1);
    assert_eq!(w.shop.stock().count(sku).await.unwrap().sold, 2);
    let order = w.shop.order(order.id()).await.unwrap();
    assert_eq!(order.status(), OrderStatus::Delivered);
    // A second, different transaction for the same order is kept for reconciliation.
    let err = w
        .shop
        .confirm_payment(notice(&order, "txn-other"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "not_payable");
    assert_eq!(w.shop.stock().count(sku).await.unwrap().sold, 2);
}

#[tokio::test]
async fn a_paid_order_left_undelivered_is_delivered_by_the_job() {
    use quanyi::crates::order::Payment;
    use quanyi::crates::storage::{
        NewJob, NoticeDisposition, OrderChange, PaymentNotice, PaymentWrite,
    };
    let w = world();
    let sku = card_sku(&w.shop, "30.00", PurchaseLimits::default()).await;
    stock_up(&w.shop, sku, &codes(2)).await;
    let buyer = member("erin");
    let mut order = w
        .shop
        .place_order(&buyer, &[CartLine::new(sku, 1)])
        .await
        .unwrap();
    // A process recorded the payment and its delivery job, then stopped before delivering.
    let now = quanyi_testkit::fixtures::t0();
    let expected = order.version();
    order
        .confirm_payment(
            Payment {
                provider: "testpay".into(),
                transaction_id: "txn-crash".into(),
                amount: order.total(),
                paid_at: now,
            },
            now,
        )
        .unwrap();
    let record = PaymentNotice {
        tenant: w.shop.tenant().clone(),
        provider: "testpay".into(),
        transaction_id: "txn-crash".into(),
        order: order.id(),
        amount: order.total(),
        received_at: now,
        disposition: NoticeDisposition::Applied,
    };
    let job = NewJob {
        id: quanyi::crates::core::JobId::generate(now, &mut rand::thread_rng()),
        tenant: w.shop.tenant().clone(),
        kind: DELIVER_ORDER_JOB.into(),
        dedupe_key: format!("deliver:{}", order.id()),
        payload: serde_json::json!({ "order": order.id() }),
        run_at: now,
    };
    let write = PaymentWrite {
        notice: &record,
        change: Some(OrderChange {
            order: &order,
            expected_version: expected,
            events: &[],
        }),
        sell: &[],
        job: Some(&job),
    };
    w.store.record_payment(write, now).await.unwrap();
    assert_eq!(
        w.shop.order(order.id()).await.unwrap().status(),
        OrderStatus::Paid
    );
    // After a restart, the job delivers it; the notice repeated changes nothing.
    let run = w.shop.run_due_jobs(10).await.unwrap();
    assert_eq!(
        run,
        JobRun {
            done: 1,
            ..JobRun::default()
        }
    );
    assert_eq!(
        w.shop.order(order.id()).await.unwrap().status(),
        OrderStatus::Delivered
    );
    assert_eq!(w.shop.run_due_jobs(10).await.unwrap(), JobRun::default());
    let receipt = w
        .shop
        .confirm_payment(notice(&order, "txn-crash"))
        .await
        .unwrap();
    assert!(receipt.repeated);
    assert_eq!(w.shop.stock().count(sku).await.unwrap().sold, 1);
}

#[tokio::test]
async fn cancelled_orders_release_and_refuse_payment() {
    let w = world();
    let sku = card_sku(&w.shop, "30.00", PurchaseLimits::default()).await;
    stock_up(&w.shop, sku, &codes(1)).await;
    let buyer = member("fay");
    let order = w
        .shop
        .place_order(&buyer, &[CartLine::new(sku, 1)])
        .await
        .unwrap();
    let err = w
        .shop
        .cancel_order(&member("mallory"), order.id(), "not mine")
        .await
        .unwrap_err();
    assert_eq!(err.code(), "unknown_order");
    w.shop
        .cancel_order(&buyer, order.id(), "changed my mind")
        .await
        .unwrap();
    assert_eq!(w.shop.stock().count(sku).await.unwrap().available, 1);
    let err = w
        .shop
        .confirm_payment(notice(&order, "txn-c"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "not_payable");
    assert_eq!(w.shop.stock().count(sku).await.unwrap().available, 1);
}

#[tokio::test]
async fn signed_links_are_delivered_and_checked_without_a_lookup() {
    let store = std::sync::Arc::new(MemoryStore::new());
    let clock = ManualClock::new(quanyi_testkit::fixtures::t0());
    let keys = std::sync::Arc::new(StaticKeyProvider::new(RootKey::generate(
        &mut rand::thread_rng(),
    )));
    let shop = Shop::builder(store.clone(), keys.clone())
        .clock(std::sync::Arc::new(clock.clone()))
        .signed_links("https://shop.example/redeem", chrono::Duration::days(7))
        .build()
        .unwrap();
    let sku = new_sku();
    shop.create_goods(
        &quanyi::Actor::new("merchant", "catalog").unwrap(),
        GoodsDraft {
            title: "Online course access".into(),
            kind: GoodsKind::Link,
            skus: vec![SkuDraft::new(
                sku,
                "lifetime",
                Money::parse("99.00", Currency::CNY).unwrap(),
            )],
            categories: vec![],
        },
    )
    .await
    .unwrap();
    let buyer = member("learner");
    let order = shop
        .place_order(&buyer, &[CartLine::new(sku, 2)])
        .await
        .unwrap();
    let done = shop
        .confirm_payment(notice(&order, "txn-links"))
        .await
        .unwrap()
        .order;
    assert_eq!(done.status(), OrderStatus::Delivered);
    let links: Vec<String> = shop
        .reveal(&buyer, order.id())
        .await
        .unwrap()
        .cards
        .into_iter()
        .map(|c| c.key.code.expose().to_owned())
        .collect();
    assert_eq!(links.len(), 2);
    for (unit, link) in links.iter().enumerate() {
        assert!(link.starts_with("https://shop.example/redeem?t="));
        let unit = u32::try_from(unit + 1).unwrap();
        assert_eq!(shop.verify_link(link).unwrap(), (order.id(), 1, unit));
    }
    let tampered = links[0].replace(".1.1&", ".1.2&");
    assert_eq!(
        shop.verify_link(&tampered).unwrap_err().code(),
        "link_invalid"
    );
    let other_tenant = shop.with_tenant(TenantId::new("other-shop").unwrap());
    assert_eq!(
        other_tenant.verify_link(&links[0]).unwrap_err().code(),
        "link_invalid"
    );
    clock.advance(chrono::Duration::days(8));
    assert_eq!(
        shop.verify_link(&links[0]).unwrap_err().code(),
        "link_expired"
    );
    // A shop without signed links cannot sell such goods.
    let plain = Shop::builder(store, keys).build().unwrap();
    let err = plain
        .place_order(&buyer, &[CartLine::new(sku, 1)])
        .await
        .unwrap_err();
    assert_eq!(err.code(), "not_fulfillable");
    let bad = Shop::builder(
        std::sync::Arc::new(MemoryStore::new()),
        std::sync::Arc::new(StaticKeyProvider::new(RootKey::generate(
            &mut rand::thread_rng(),
        ))),
    )
    .signed_links("ftp://nope", chrono::Duration::days(1))
    .build()
    .unwrap_err();
    assert_eq!(bad.code(), "invalid_input");
}
