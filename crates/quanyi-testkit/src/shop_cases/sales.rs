//! Shop cases of sales that go wrong: a supplier's repeated card, a conflicting notice, expiry and cancellation.

use super::*;

/// A supplier that hands over a card key the shop already holds (sold, here) never gets it
/// delivered: the line fails over to the next route, or, with none left, is refunded; the
/// request is recorded for reconciliation with the supplier.
pub async fn a_supplier_card_already_held_fails_over_or_is_refunded(store: Arc<dyn Store>) {
    let rig = Rig::new(store);
    let product = ProductCode::new("CARD-30").unwrap();
    let cost = cny("28.00");
    let sim = |name: &str| {
        Arc::new(
            SimSupplier::new(SupplierId::new(name).unwrap(), 3).with_card_product(
                product.clone(),
                100,
                cost,
            ),
        )
    };
    let (reseller, honest) = (sim("reseller"), sim("honest"));
    let refunds = Arc::new(Refunds::default());
    let shop = rig
        .builder(rig.store.clone())
        .supplier(reseller.clone())
        .supplier(honest.clone())
        .payment_gateway(refunds.clone())
        .build()
        .unwrap();
    // The reseller's first two codes are already in the shop's vault, and sold.
    let vault_sku = card_sku(&shop).await;
    import(&shop, vault_sku, &["SIM-reseller-1", "SIM-reseller-2"]).await;
    let early = member("early");
    buy(&shop, vault_sku, &early, 2).await;
    let supplied = |routes: Vec<SupplierRoute>| {
        let shop = shop.clone();
        async move {
            let sku = fixtures::id(SkuId::generate);
            shop.create_goods(
                &quanyi::Actor::new("merchant", "catalog").unwrap(),
                GoodsDraft {
                    title: "Game card 30".into(),
                    kind: GoodsKind::CardKey,
                    skus: vec![
                        SkuDraft::new(sku, "30", cny("30.00"))
                            .with_stock(StockSource::Supplier)
                            .with_routes(routes),
                    ],
                    categories: vec![],
                },
            )
            .await
            .unwrap();
            sku
        }
    };
    let route = |name: &str| {
        SupplierRoute::new(
            quanyi_supplier::SupplierId::new(name).unwrap(),
            quanyi_supplier::ProductCode::new("CARD-30").unwrap(),
            cost,
        )
    };
    let from = t0() - Duration::hours(1);

    // Two routes: the reseller's duplicate is refused, the honest supplier delivers.
    let sku = supplied(vec![route("reseller"), route("honest")]).await;
    let buyer = member("buyer");
    let order = buy(&shop, sku, &buyer, 1).await;
    assert_eq!(order.status(), OrderStatus::Delivered);
    let outcomes: Vec<&str> = order.lines()[0]
        .attempts
        .iter()
        .map(|a| a.outcome.as_str())
        .collect();
    assert_eq!(outcomes, ["rejected", "succeeded"]);
    assert_eq!(
        revealed(&shop, &buyer, &order).await.unwrap(),
        ["SIM-honest-1"]
    );
    let report = shop
        .reconcile_supplier(
            &SupplierId::new("reseller").unwrap(),
            from,
            rig.clock.now() + Duration::hours(1),
        )
        .await
        .unwrap();
    assert_eq!(report.status_mismatch.len(), 1, "{report:?}");
    assert_eq!(
        report.status_mismatch[0].0.request,
        order.lines()[0].attempts[0].request
    );

    // One route: the line fails and is paid back.
    let sku = supplied(vec![route("reseller")]).await;
    let order = buy(&shop, sku, &buyer, 1).await;
    let order = shop.settle(order.id()).await.unwrap();
    assert_eq!(order.status(), OrderStatus::Refunded);
    assert!(matches!(
        order.lines()[0].attempts[0].outcome,
        AttemptOutcome::Rejected { .. }
    ));
    assert_eq!(
        refunds
            .0
            .lock()
            .iter()
            .filter(|r| r.order == order.id())
            .map(|r| r.amount)
            .collect::<Vec<_>>(),
        vec![cny("30.00")]
    );
    let audit = shop.audit_log(100).await.unwrap();
    assert_eq!(
        audit
            .iter()
            .filter(|r| r.action == AuditAction::SupplierDuplicate)
            .count(),
        2
    );
    // The codes already sold were not sold again.
    assert_eq!(shop.stock().count(vault_sku).await.unwrap().sold, 2);
}

/// A notice that repeats a recorded transaction id with another amount (or for another order)
/// is not a repeat: it is refused, kept for reconciliation once, and changes nothing.
pub async fn a_conflicting_repeat_notice_is_kept_for_reconciliation(store: Arc<dyn Store>) {
    let rig = Rig::new(store);
    let shop = rig.shop();
    let sku = card_sku(&shop).await;
    import(&shop, sku, &["PAY-0001", "PAY-0002"]).await;
    let buyer = member("payer");
    let order = shop
        .place_order(&buyer, &[CartLine::new(sku, 1)])
        .await
        .unwrap();
    let first = notice(&order, "T-1");
    let paid = shop.confirm_payment(first.clone()).await.unwrap();
    assert_eq!(paid.order.status(), OrderStatus::Delivered);
    // A plain repeat is acknowledged as one.
    assert!(shop.confirm_payment(first.clone()).await.unwrap().repeated);
    let mut more = first.clone();
    more.amount = cny("199.00");
    for _ in 0..2 {
        let r = shop.confirm_payment(more.clone()).await;
        assert!(
            matches!(
                r,
                Err(Error::NotPayable {
                    reason: CONFLICTING_REPEAT,
                    ..
                })
            ),
            "{r:?}"
        );
    }
    let other = shop
        .place_order(&buyer, &[CartLine::new(sku, 1)])
        .await
        .unwrap();
    let mut elsewhere = first.clone();
    elsewhere.order = other.id();
    assert!(shop.confirm_payment(elsewhere).await.is_err());
    let kept = rig
        .store
        .notices_to_reconcile(&rig.tenant, 10)
        .await
        .unwrap();
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert!(kept.iter().all(|n| n.disposition
        == NoticeDisposition::Reconcile {
            reason: CONFLICTING_REPEAT.into()
        }));
    assert_eq!(kept[0].amount, cny("199.00"));
    assert_eq!(kept[1].order, other.id());
    // Nothing else changed: the other order is still unpaid, the first delivered once.
    assert_eq!(
        shop.order(other.id()).await.unwrap().status(),
        OrderStatus::AwaitingPayment
    );
    assert_eq!(shop.stock().count(sku).await.unwrap().sold, 1);
    let audit = shop.audit_log(50).await.unwrap();
    assert_eq!(
        audit
            .iter()
            .filter(|r| r.action == AuditAction::NoticeConflict)
            .count(),
        2
    );
}

/// Expiring or cancelling an unpaid order writes its status and the release of its cards in one
/// storage call: when that call fails, neither happened, and a later run does both.
pub async fn expiry_and_cancel_write_the_order_and_release_together(store: Arc<dyn Store>) {
    let rig = Rig::new(store);
    let hooked = HookedStore::new(rig.store.clone());
    let shop = rig.shop_on(hooked.clone());
    let sku = card_sku(&shop).await;
    import(&shop, sku, &["EXP-0001", "EXP-0002"]).await;
    // Releasing cards on their own never happens: a failure there changes nothing.
    hooked.fail_next("release_cards", u32::MAX);
    let late = shop
        .place_order(&member("late"), &[CartLine::new(sku, 1)])
        .await
        .unwrap();
    let fickle = shop
        .place_order(&member("fickle"), &[CartLine::new(sku, 1)])
        .await
        .unwrap();
    let holds = |id| {
        let (store, tenant) = (rig.store.clone(), rig.tenant.clone());
        async move { store.held_cards(&tenant, id).await.unwrap().len() }
    };

    hooked.fail_next("close_unpaid_order", 1);
    assert!(
        shop.cancel_order(&member("fickle"), fickle.id(), "no")
            .await
            .is_err()
    );
    assert_eq!(
        shop.order(fickle.id()).await.unwrap().status(),
        OrderStatus::AwaitingPayment
    );
    assert_eq!(holds(fickle.id()).await, 1);
    let cancelled = shop
        .cancel_order(&member("fickle"), fickle.id(), "no")
        .await
        .unwrap();
    assert_eq!(cancelled.status(), OrderStatus::Cancelled);
    assert_eq!(holds(fickle.id()).await, 0);

    rig.clock.advance(Duration::minutes(16));
    hooked.fail_next("close_unpaid_order", 1);
    assert!(shop.expire_unpaid_orders().await.is_err());
    assert_eq!(
        shop.order(late.id()).await.unwrap().status(),
        OrderStatus::AwaitingPayment
    );
    assert_eq!(holds(late.id()).await, 1);
    assert_eq!(shop.expire_unpaid_orders().await.unwrap(), 1);
    assert_eq!(
        shop.order(late.id()).await.unwrap().status(),
        OrderStatus::Expired
    );
    assert_eq!(holds(late.id()).await, 0);
    let stock = shop.stock().count(sku).await.unwrap();
    assert_eq!((stock.available, stock.reserved), (2, 0));
}
