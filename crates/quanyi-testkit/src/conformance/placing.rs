//! Conformance cases of placing orders: all or nothing, goods versions, and concurrent writes that each get their own answer.

use super::*;

/// Concurrent placements and payments with different fates each get their own answer, and a
/// refused one writes nothing, however the store schedules concurrent writes (a store may run
/// them together, as the PostgreSQL adapter does).
pub async fn concurrent_writes_get_their_own_answers(store: Arc<dyn Store>) {
    let tenant = fixtures::vault_tenant(&*store).await;
    let goods = card_goods(&tenant, PurchaseLimits::default());
    let scarce = card_goods(&tenant, PurchaseLimits::default());
    let (sku, scarce_sku) = (first_sku(&goods), first_sku(&scarce));
    store
        .insert_goods(&goods, quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    store
        .insert_goods(&scarce, quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    // Slack beyond what succeeds: a refused placement may hold a card for a moment.
    store
        .insert_cards(&tenant, &cards(sku, 16), t0(), quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    store
        .insert_cards(
            &tenant,
            &cards(scarce_sku, 3),
            t0(),
            quanyi_storage::Trail::NONE,
        )
        .await
        .unwrap();
    let current = GoodsVersion {
        id: goods.id(),
        version: goods.version(),
    };
    let stale = GoodsVersion {
        id: goods.id(),
        version: goods.version() + 1,
    };

    // Placements: (what, order, its events, SKU, goods priced from).
    let mut placements = Vec::new();
    let mut add =
        |what: &'static str, goods: &quanyi_goods::Goods, n: usize, priced: &[GoodsVersion]| {
            let mut made = Vec::new();
            for i in 0..n {
                let (o, ev) = order(goods, &member(&format!("{what}-{i}")), 1);
                let envs = envelopes(&o, &ev);
                made.push((o.clone(), envs.clone()));
                placements.push((what, o, envs, first_sku(goods), priced.to_vec()));
            }
            made
        };
    let plain = add("plain", &goods, 4, &[current]);
    add("scarce", &scarce, 8, &[]);
    add("stale", &goods, 3, &[stale]);
    let twin = add("twin", &goods, 1, &[current]).remove(0);
    // Two orders whose events share an id: one of them is refused.
    let (first, second) = {
        let mut made = add("shared", &goods, 2, &[current]);
        let second = made.remove(1);
        (made.remove(0), second)
    };
    // The same order placed twice: one of them is refused.
    placements.push(("twin", twin.0.clone(), twin.1.clone(), sku, vec![current]));
    let shared_id = first.1[0].id;
    for p in placements.iter_mut().filter(|p| p.1.id() == second.0.id()) {
        p.2[0].id = shared_id;
    }

    let mut tasks = Vec::new();
    for (what, o, envs, sku, priced) in placements {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let r = store
                .place_order(
                    NewOrder {
                        order: &o,
                        events: &envs,
                        reservations: &[Reservation { sku, quantity: 1 }],
                        member_limits: &[],
                        priced_from: &priced,
                        claims: &[],
                        budgets: &[],
                        pricing_version: None,
                    },
                    t0(),
                )
                .await;
            (what, o, r)
        }));
    }
    let mut placed: Vec<(&str, quanyi_order::Order, Vec<quanyi_core::CardId>)> = Vec::new();
    let mut refused: Vec<(&str, quanyi_order::Order, Error)> = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            (what, o, Ok(cards)) => placed.push((what, o, cards)),
            (what, o, Err(e)) => refused.push((what, o, e)),
        }
    }
    let count = |list: &[(&str, quanyi_order::Order, Vec<quanyi_core::CardId>)], what: &str| {
        list.iter().filter(|p| p.0 == what).count()
    };
    assert_eq!(count(&placed, "plain"), 4, "{refused:?}");
    assert_eq!(count(&placed, "scarce"), 3, "{refused:?}");
    assert_eq!(count(&placed, "stale"), 0);
    assert_eq!(count(&placed, "twin"), 1);
    assert_eq!(count(&placed, "shared"), 1);
    assert!(placed.iter().all(|p| p.2.len() == 1));
    let all_cards: HashSet<_> = placed.iter().flat_map(|p| p.2.iter().copied()).collect();
    assert_eq!(all_cards.len(), placed.len(), "a card went to two orders");
    for (what, o, e) in &refused {
        match *what {
            "scarce" => assert!(matches!(e, Error::OutOfStock { .. }), "{e:?}"),
            "stale" => assert!(
                matches!(e, Error::Conflict { what: "goods", reason, .. } if *reason == GOODS_CHANGED),
                "{e:?}"
            ),
            "twin" | "shared" => assert_eq!(e.kind(), quanyi_core::ErrorKind::Conflict, "{e:?}"),
            other => panic!("{other} refused: {e:?}"),
        }
        if *what != "twin" {
            assert!(store.order(&tenant, o.id()).await.unwrap().is_none());
            assert!(store.held_cards(&tenant, o.id()).await.unwrap().is_empty());
        }
    }
    let stock = store.stock(&tenant, sku, t0()).await.unwrap();
    assert_eq!((stock.available, stock.reserved), (10, 6));
    let stock = store.stock(&tenant, scarce_sku, t0()).await.unwrap();
    assert_eq!((stock.available, stock.reserved), (0, 3));

    // Payments: (order, notice, cards to sell).
    let held_by = |id: OrderId| {
        placed
            .iter()
            .find(|p| p.1.id() == id)
            .map(|p| p.2.clone())
            .unwrap()
    };
    let scarce_placed: Vec<_> = placed.iter().filter(|p| p.0 == "scarce").collect();
    let twin_order = placed.iter().find(|p| p.0 == "twin").unwrap().1.clone();
    let mut payments = Vec::new();
    for (i, (o, _)) in plain.iter().enumerate() {
        payments.push((
            "plain",
            o.clone(),
            format!("txn-plain-{i}"),
            held_by(o.id()),
        ));
    }
    payments.push((
        "again",
        plain[0].0.clone(),
        "txn-plain-0".to_owned(),
        held_by(plain[0].0.id()),
    ));
    for txn in ["txn-twin-a", "txn-twin-b"] {
        payments.push((
            "twin",
            twin_order.clone(),
            txn.to_owned(),
            held_by(twin_order.id()),
        ));
    }
    // The first scarce winner offers another order's card.
    payments.push((
        "foreign",
        scarce_placed[0].1.clone(),
        "txn-foreign".to_owned(),
        scarce_placed[1].2.clone(),
    ));
    for (i, p) in scarce_placed.iter().enumerate().skip(1) {
        payments.push((
            "scarce",
            p.1.clone(),
            format!("txn-scarce-{i}"),
            p.2.clone(),
        ));
    }
    let mut tasks = Vec::new();
    for (what, o, txn, sell) in payments {
        let store = store.clone();
        let n = notice(&tenant, o.id(), &txn, o.total().minor());
        let (paid, envs) = fixtures::paid_by(&o, &n);
        tasks.push(tokio::spawn(async move {
            let change = OrderChange {
                order: &paid,
                expected_version: o.version(),
                events: &envs,
            };
            let r = store
                .record_payment(pay(&n, Some(change), &sell, None), t0())
                .await;
            (what, txn, r)
        }));
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    let recorded = |what: &str| {
        outcomes
            .iter()
            .filter(|o| o.0 == what && matches!(o.2, Ok(RecordOutcome::Recorded)))
            .count()
    };
    let conflicts = |what: &str| {
        outcomes
            .iter()
            .filter(|o| o.0 == what)
            .filter(|o| matches!(&o.2, Err(e) if e.kind() == quanyi_core::ErrorKind::Conflict))
            .count()
    };
    // The same notice twice: recorded once, the other call answered as a repeat.
    let plain_0: Vec<_> = outcomes
        .iter()
        .filter(|o| o.1 == "txn-plain-0")
        .map(|o| o.2.as_ref().unwrap())
        .collect();
    assert_eq!(plain_0.len(), 2);
    assert_eq!(
        plain_0
            .iter()
            .filter(|r| matches!(r, RecordOutcome::Recorded))
            .count(),
        1
    );
    assert!(
        plain_0.iter().any(
            |r| matches!(r, RecordOutcome::Duplicate(n) if &*n.transaction_id == "txn-plain-0")
        )
    );
    assert_eq!(recorded("plain") + recorded("again"), 4);
    assert_eq!((recorded("twin"), conflicts("twin")), (1, 1));
    assert_eq!((recorded("foreign"), conflicts("foreign")), (0, 1));
    assert_eq!(recorded("scarce"), 2);
    assert!(
        store
            .payment_notice(&tenant, "testpay", "txn-foreign")
            .await
            .unwrap()
            .is_none()
    );
    let twin_txn = outcomes
        .iter()
        .find(|o| o.0 == "twin" && o.2.is_ok())
        .map(|o| o.1.clone())
        .unwrap();
    let stored_twin = store
        .order(&tenant, twin_order.id())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored_twin.payment().map(|p| p.transaction_id.to_string()),
        Some(twin_txn)
    );
    assert_eq!(
        store
            .order(&tenant, scarce_placed[0].1.id())
            .await
            .unwrap()
            .unwrap()
            .status(),
        OrderStatus::AwaitingPayment
    );
    // Each paid order's events are stored once: placed, then paid.
    let events = store
        .aggregate_events(&tenant, "order", &plain[0].0.id().to_string())
        .await
        .unwrap();
    let names: Vec<&str> = events.iter().map(|e| &*e.name).collect();
    assert_eq!(names, ["order.placed", "order.paid"]);
    let stock = store.stock(&tenant, sku, t0()).await.unwrap();
    assert_eq!((stock.available, stock.reserved, stock.sold), (10, 1, 5));
    let stock = store.stock(&tenant, scarce_sku, t0()).await.unwrap();
    assert_eq!((stock.available, stock.reserved, stock.sold), (0, 1, 2));
}

/// Placing an order reserves every SKU's cards and stores the order, or does none of it.
pub async fn place_order_is_all_or_nothing(store: Arc<dyn Store>) {
    let tenant = fixtures::vault_tenant(&*store).await;
    let a = card_goods(&tenant, PurchaseLimits::default());
    let b = card_goods(
        &tenant,
        PurchaseLimits {
            per_order: None,
            per_member: Some(3),
            release_on_refund: false,
        },
    );
    let (sku_a, sku_b) = (first_sku(&a), first_sku(&b));
    store
        .insert_cards(&tenant, &cards(sku_a, 5), t0(), quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    store
        .insert_cards(&tenant, &cards(sku_b, 2), t0(), quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    let buyer = member("ivy");
    let two_lines = |qa: u32, qb: u32| {
        let line = |g: &quanyi_goods::Goods, q: u32| quanyi_order::NewLine {
            sku: g.skus()[0].id,
            goods: g.id(),
            kind: g.kind().tag(),
            title: g.title().to_owned(),
            quantity: q,
            unit_price: g.skus()[0].price,
            account: None,
            allocated: None,
            terms: g
                .sale_terms(g.skus()[0].id)
                .expect("the goods hold their first SKU"),
            pack: None,
            price_source: quanyi_order::PriceSource::ListPrice,
        };
        quanyi_order::Order::place(
            id(OrderId::generate),
            tenant.clone(),
            buyer.clone(),
            vec![line(&a, qa), line(&b, qb)],
            t0(),
            t0() + Duration::minutes(15),
        )
        .unwrap()
        .0
    };
    let short = two_lines(2, 3);
    let r = store
        .place_order(
            NewOrder {
                order: &short,
                events: &[],
                reservations: &[
                    Reservation {
                        sku: sku_a,
                        quantity: 2,
                    },
                    Reservation {
                        sku: sku_b,
                        quantity: 3,
                    },
                ],
                member_limits: &[],
                priced_from: &[],
                claims: &[],
                budgets: &[],
                pricing_version: None,
            },
            t0(),
        )
        .await;
    assert!(
        matches!(r, Err(Error::OutOfStock { sku, .. }) if sku == sku_b),
        "{r:?}"
    );
    assert!(store.order(&tenant, short.id()).await.unwrap().is_none());
    assert_eq!(
        store.stock(&tenant, sku_a, t0()).await.unwrap().available,
        5
    );
    let limited = two_lines(1, 2);
    let limits = [MemberLimit {
        sku: sku_b,
        limit: 1,
        release_on_refund: false,
    }];
    let r = store
        .place_order(
            NewOrder {
                order: &limited,
                events: &[],
                reservations: &[
                    Reservation {
                        sku: sku_a,
                        quantity: 1,
                    },
                    Reservation {
                        sku: sku_b,
                        quantity: 2,
                    },
                ],
                member_limits: &limits,
                priced_from: &[],
                claims: &[],
                budgets: &[],
                pricing_version: None,
            },
            t0(),
        )
        .await;
    assert!(matches!(r, Err(Error::MemberLimitExceeded { .. })), "{r:?}");
    assert_eq!(
        store.stock(&tenant, sku_a, t0()).await.unwrap().available,
        5
    );
    let ok = two_lines(2, 2);
    let envs = envelopes(&ok, &[]);
    let held = store
        .place_order(
            NewOrder {
                order: &ok,
                events: &envs,
                reservations: &[
                    Reservation {
                        sku: sku_a,
                        quantity: 2,
                    },
                    Reservation {
                        sku: sku_b,
                        quantity: 2,
                    },
                ],
                member_limits: &[MemberLimit {
                    sku: sku_b,
                    limit: 3,
                    release_on_refund: false,
                }],
                priced_from: &[],
                claims: &[],
                budgets: &[],
                pricing_version: None,
            },
            t0(),
        )
        .await
        .unwrap();
    assert_eq!(held.len(), 4);
    let listed = store.held_cards(&tenant, ok.id()).await.unwrap();
    let mut want = held.clone();
    want.sort();
    assert_eq!(listed.iter().map(|c| c.id).collect::<Vec<_>>(), want);
    assert!(listed.iter().all(|c| c.state
        == CardState::Reserved {
            order: ok.id(),
            until: ok.expires_at()
        }));
    assert_eq!(listed.iter().filter(|c| c.sku == sku_b).count(), 2);
    assert_eq!(
        store.stock(&tenant, sku_b, t0()).await.unwrap().available,
        0
    );
    assert_eq!(
        store.order(&tenant, ok.id()).await.unwrap().as_ref(),
        Some(&ok)
    );
}

/// An order priced from goods that changed since (or are gone) is refused as a conflict on the
/// goods and writes nothing; priced from the current version it is placed.
pub async fn place_order_checks_goods_versions(store: Arc<dyn Store>) {
    let tenant = fixtures::vault_tenant(&*store).await;
    let mut goods = card_goods(&tenant, PurchaseLimits::default());
    let sku = first_sku(&goods);
    store
        .insert_goods(&goods, quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    store
        .insert_cards(&tenant, &cards(sku, 2), t0(), quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    let read = GoodsVersion {
        id: goods.id(),
        version: goods.version(),
    };
    goods.set_shelf(sku, Shelf::Off).unwrap();
    store
        .update_goods(&goods, read.version, quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    let buyer = member("quinn");
    let place = |order: quanyi_order::Order, priced_from: Vec<GoodsVersion>| {
        let store = store.clone();
        async move {
            let envs = envelopes(&order, &[]);
            let r = store
                .place_order(
                    NewOrder {
                        order: &order,
                        events: &envs,
                        reservations: &[Reservation { sku, quantity: 1 }],
                        member_limits: &[],
                        priced_from: &priced_from,
                        claims: &[],
                        budgets: &[],
                        pricing_version: None,
                    },
                    t0(),
                )
                .await;
            (order.id(), r)
        }
    };
    let gone = GoodsVersion {
        id: card_goods(&tenant, PurchaseLimits::default()).id(),
        version: 1,
    };
    for stale in [
        vec![read],
        vec![gone],
        vec![
            GoodsVersion {
                id: goods.id(),
                version: goods.version(),
            },
            read,
        ],
    ] {
        let (order_id, r) = place(order(&goods, &buyer, 1).0, stale).await;
        assert!(
            matches!(&r, Err(Error::Conflict { what: "goods", reason, .. }) if *reason == GOODS_CHANGED),
            "{r:?}"
        );
        assert!(store.order(&tenant, order_id).await.unwrap().is_none());
        assert!(
            store
                .held_cards(&tenant, order_id)
                .await
                .unwrap()
                .is_empty()
        );
        let stock = store.stock(&tenant, sku, t0()).await.unwrap();
        assert_eq!((stock.available, stock.reserved), (2, 0));
    }
    let current = GoodsVersion {
        id: goods.id(),
        version: goods.version(),
    };
    let (order_id, r) = place(order(&goods, &buyer, 1).0, vec![current]).await;
    assert_eq!(r.unwrap().len(), 1);
    assert!(store.order(&tenant, order_id).await.unwrap().is_some());
    let stock = store.stock(&tenant, sku, t0()).await.unwrap();
    assert_eq!((stock.available, stock.reserved), (1, 1));
}
