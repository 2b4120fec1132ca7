//! Shop case of placements retried with their idempotency key.

use super::*;

/// A placement with an idempotency key: retries (racing, from two processes) answer the first
/// order; the key with another request is `idempotency_conflict` and changes nothing; values
/// outside the fingerprint may change; a refused placement keeps no record of its key; the
/// context is stored with the order and masked in its `Debug`.
pub async fn a_placement_retried_with_its_key_is_one_order(store: Arc<dyn Store>) {
    let rig = Rig::new(store);
    let (a, b) = (rig.shop(), rig.shop());
    let sku = card_sku(&a).await;
    import(&a, sku, &["IDEM-0001", "IDEM-0002", "IDEM-0003"]).await;
    let context = quanyi::OrderContext::new(quanyi::Channel::MiniProgram)
        .client_ip("203.0.113.7".parse().unwrap())
        .device_id("device-5c2e91f7")
        .user_agent("MicroMessenger/8.0")
        .attribute("campaign", "double-12");
    let request = quanyi::PlaceOrder::new(member("ona"), vec![CartLine::new(sku, 1)])
        .idempotency_key("ona-checkout-1")
        .context(context.clone());
    let tasks: Vec<_> = (0..10)
        .map(|n| {
            let shop = if n % 2 == 0 { a.clone() } else { b.clone() };
            let request = request.clone();
            tokio::spawn(async move { shop.place(request).await.unwrap() })
        })
        .collect();
    let mut orders = Vec::new();
    for t in tasks {
        orders.push(t.await.unwrap());
    }
    let first = orders[0].clone();
    assert!(orders.iter().all(|o| o.id() == first.id()));
    assert_eq!(first.context(), &context);
    let stored = a.order(first.id()).await.unwrap();
    assert_eq!(stored.context(), &context);
    let placed_events = rig
        .store
        .aggregate_events(&rig.tenant, "order", &first.id().to_string())
        .await
        .unwrap();
    assert!(!placed_events.is_empty());
    assert!(
        placed_events
            .iter()
            .all(|e| e.correlation() == "placement:ona-checkout-1")
    );
    let shown = format!("{stored:?}");
    assert!(!shown.contains("203.0.113.7") && !shown.contains("device-5c2e91f7"));
    assert!(shown.contains("203.0.113.*"));
    let stock = a.stock().count(sku).await.unwrap();
    assert_eq!((stock.available, stock.reserved), (2, 1));

    // A value outside the fingerprint may change on a retry.
    let again = request
        .clone()
        .unfingerprinted("step_up_proof", "otp-123456");
    assert_eq!(b.place(again).await.unwrap().id(), first.id());
    // Another request under the key: refused, nothing changes.
    for other in [
        quanyi::PlaceOrder::new(member("ona"), vec![CartLine::new(sku, 2)]),
        quanyi::PlaceOrder::new(member("pat"), vec![CartLine::new(sku, 1)]),
        quanyi::PlaceOrder::new(member("ona"), vec![CartLine::new(sku, 1)])
            .context(context.clone().attribute("campaign", "other")),
    ] {
        match a.place(other.idempotency_key("ona-checkout-1")).await {
            Err(Error::IdempotencyConflict { order }) => assert_eq!(order, first.id()),
            other => panic!("expected idempotency_conflict, got {other:?}"),
        }
    }
    assert_eq!(a.stock().count(sku).await.unwrap().reserved, 1);
    // Malformed keys and contexts are refused before anything is read.
    for key in ["", "has space", &"k".repeat(201)] {
        let bad = quanyi::PlaceOrder::new(member("ona"), vec![CartLine::new(sku, 1)])
            .idempotency_key(key);
        assert_eq!(a.place(bad).await.unwrap_err().code(), "invalid_input");
    }
    let bad = quanyi::PlaceOrder::new(member("ona"), vec![CartLine::new(sku, 1)])
        .context(quanyi::OrderContext::default().user_agent("evil\u{0}agent"));
    assert_eq!(a.quote(&bad).await.unwrap_err().code(), "invalid_context");
    assert_eq!(a.place(bad).await.unwrap_err().code(), "invalid_context");
    // A quote takes the request a checkout places and writes nothing, key or not.
    let asked = quanyi::PlaceOrder::new(member("ona"), vec![CartLine::new(sku, 2)])
        .idempotency_key("ona-quote")
        .context(context.clone());
    let quote = a.quote(&asked).await.unwrap();
    assert_eq!(quote.lines.len(), 1);
    assert_eq!(quote.total, quote.lines[0].check.amount);
    assert_eq!(quote.lines[0].check.quantity, 2);
    assert_eq!(a.quote(&asked).await.unwrap().total, quote.total);
    assert_eq!(a.stock().count(sku).await.unwrap().reserved, 1);
    // A refused placement keeps no record of its key: the retry is decided afresh.
    let big = quanyi::PlaceOrder::new(member("quinn"), vec![CartLine::new(sku, 3)])
        .idempotency_key("quinn-1");
    assert_eq!(
        a.place(big.clone()).await.unwrap_err().code(),
        "out_of_stock"
    );
    import(&a, sku, &["IDEM-0004"]).await;
    let placed = a.place(big.clone()).await.unwrap();
    assert_eq!(b.place(big).await.unwrap().id(), placed.id());
    assert_eq!(a.stock().count(sku).await.unwrap().available, 0);
}
