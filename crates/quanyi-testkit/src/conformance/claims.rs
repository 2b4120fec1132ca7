//! Conformance cases of claims taken with a sale.

use super::*;

/// A claim for the placement's idempotency key, holding `value`.
fn placement_claim(key: &str, value: &str) -> Claim {
    Claim {
        scope: "placement".into(),
        key: key.into(),
        value: value.into(),
    }
}

/// Places an order for `quantity` cards of the goods' SKU taking `claims`.
async fn place_claiming(
    store: &dyn Store,
    goods: &quanyi_goods::Goods,
    buyer: &str,
    quantity: u32,
    claims: &[Claim],
) -> (
    quanyi_order::Order,
    quanyi_storage::Result<Vec<quanyi_core::CardId>>,
) {
    place_taking(store, goods, buyer, quantity, claims, &[]).await
}

/// Places an order for `quantity` cards of the goods' SKU taking `claims` and `budgets`.
async fn place_taking(
    store: &dyn Store,
    goods: &quanyi_goods::Goods,
    buyer: &str,
    quantity: u32,
    claims: &[Claim],
    budgets: &[quanyi_storage::BudgetTake],
) -> (
    quanyi_order::Order,
    quanyi_storage::Result<Vec<quanyi_core::CardId>>,
) {
    let (order, events) = order(goods, &member(buyer), quantity);
    let envs = envelopes(&order, &events);
    let placed = store
        .place_order(
            NewOrder {
                order: &order,
                events: &envs,
                reservations: &[Reservation {
                    sku: first_sku(goods),
                    quantity,
                }],
                member_limits: &[],
                priced_from: &[],
                claims,
                budgets,
                pricing_version: None,
            },
            t0(),
        )
        .await;
    (order, placed)
}

/// A claim is taken once per (tenant, scope, key), only with a placement that is written, and
/// keeps its value: a second placement taking it is refused with the stored claim and writes
/// nothing; a refused placement takes no claim; another tenant's same key is its own; malformed
/// or repeated claims are refused.
pub async fn claims_are_taken_once_with_the_sale(store: Arc<dyn Store>) {
    let tenant = fixtures::vault_tenant(&*store).await;
    let goods = card_goods(&tenant, PurchaseLimits::default());
    let sku = first_sku(&goods);
    store
        .insert_goods(&goods, quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    store
        .insert_cards(&tenant, &cards(sku, 3), t0(), quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    let first = placement_claim("retry-1", "fingerprint-a");
    let (placed, r) = place_claiming(&*store, &goods, "kim", 1, std::slice::from_ref(&first)).await;
    assert_eq!(r.unwrap().len(), 1);
    assert_eq!(
        store.claim(&tenant, "placement", "retry-1").await.unwrap(),
        Some(first.clone())
    );
    assert_eq!(
        store.claim(&tenant, "placement", "retry-2").await.unwrap(),
        None
    );
    // The same key again, whatever the value: refused with the stored claim, nothing written.
    let (again, r) = place_claiming(
        &*store,
        &goods,
        "kim",
        1,
        &[placement_claim("retry-1", "fingerprint-b")],
    )
    .await;
    match r {
        Err(Error::Claimed { claim }) => assert_eq!(*claim, first),
        other => panic!("expected Claimed, got {other:?}"),
    }
    assert!(store.order(&tenant, again.id()).await.unwrap().is_none());
    let stock = store.stock(&tenant, sku, t0()).await.unwrap();
    assert_eq!((stock.available, stock.reserved), (2, 1));
    // A placement refused for stock takes no claim.
    let (_, r) = place_claiming(
        &*store,
        &goods,
        "lee",
        5,
        &[placement_claim("retry-2", "fingerprint-c")],
    )
    .await;
    assert!(matches!(r, Err(Error::OutOfStock { .. })), "{r:?}");
    assert_eq!(
        store.claim(&tenant, "placement", "retry-2").await.unwrap(),
        None
    );
    // Malformed and repeated claims are refused before anything is written.
    for bad in [
        vec![placement_claim("", "v")],
        vec![placement_claim(&"k".repeat(201), "v")],
        vec![Claim {
            scope: "Not A Scope".into(),
            ..placement_claim("k", "v")
        }],
        vec![placement_claim("k", &"v".repeat(2_001))],
        vec![placement_claim("twice", "a"), placement_claim("twice", "b")],
    ] {
        let (order, r) = place_claiming(&*store, &goods, "max", 1, &bad).await;
        assert!(matches!(r, Err(Error::Invalid(_))), "{r:?}");
        assert!(store.order(&tenant, order.id()).await.unwrap().is_none());
    }
    assert_eq!(
        store.claim(&tenant, "placement", "twice").await.unwrap(),
        None
    );
    let stock = store.stock(&tenant, sku, t0()).await.unwrap();
    assert_eq!((stock.available, stock.reserved), (2, 1));
    // Another tenant's same key is a claim of its own.
    let other = fixtures::vault_tenant(&*store).await;
    let theirs = card_goods(&other, PurchaseLimits::default());
    store
        .insert_goods(&theirs, quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    store
        .insert_cards(
            &other,
            &cards(first_sku(&theirs), 1),
            t0(),
            quanyi_storage::Trail::NONE,
        )
        .await
        .unwrap();
    let mine = placement_claim("retry-1", "fingerprint-other");
    let (_, r) = place_claiming(&*store, &theirs, "kim", 1, std::slice::from_ref(&mine)).await;
    assert_eq!(r.unwrap().len(), 1);
    assert_eq!(
        store.claim(&other, "placement", "retry-1").await.unwrap(),
        Some(mine)
    );
    assert_eq!(
        store.claim(&tenant, "placement", "retry-1").await.unwrap(),
        Some(first)
    );
    assert!(placed.id() != again.id());
}

/// Ten placements racing with one claim (a client retrying at once): exactly one is written;
/// every other is refused with the winner's claim and holds no card.
pub async fn racing_placements_with_one_claim_place_one_order(store: Arc<dyn Store>) {
    let tenant = fixtures::vault_tenant(&*store).await;
    let goods = card_goods(&tenant, PurchaseLimits::default());
    let sku = first_sku(&goods);
    store
        .insert_goods(&goods, quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    store
        .insert_cards(&tenant, &cards(sku, 10), t0(), quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    let goods = Arc::new(goods);
    let tasks: Vec<_> = (0..10)
        .map(|n| {
            let (store, goods) = (store.clone(), goods.clone());
            tokio::spawn(async move {
                let claim = placement_claim("same-key", &format!("attempt-{n}"));
                let (order, r) = place_claiming(&*store, &goods, "nia", 1, &[claim]).await;
                (order.id(), r)
            })
        })
        .collect();
    let mut placed = Vec::new();
    let mut refused = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            (id, Ok(cards)) => placed.push((id, cards)),
            (id, Err(Error::Claimed { claim })) => refused.push((id, claim)),
            (_, Err(e)) => panic!("unexpected answer: {e:?}"),
        }
    }
    assert_eq!(placed.len(), 1, "one placement is written");
    assert_eq!(refused.len(), 9);
    let stored = store
        .claim(&tenant, "placement", "same-key")
        .await
        .unwrap()
        .unwrap();
    for (id, claim) in &refused {
        assert_eq!(**claim, stored);
        assert!(store.order(&tenant, *id).await.unwrap().is_none());
        assert!(store.held_cards(&tenant, *id).await.unwrap().is_empty());
    }
    assert_eq!(placed[0].1.len(), 1);
    let stock = store.stock(&tenant, sku, t0()).await.unwrap();
    assert_eq!((stock.available, stock.reserved), (9, 1));
}

/// Places an order of one card taking `budgets`.
async fn place_budgeted(
    store: &dyn Store,
    goods: &quanyi_goods::Goods,
    buyer: &str,
    budgets: &[quanyi_storage::BudgetTake],
) -> (
    quanyi_order::Order,
    quanyi_storage::Result<Vec<quanyi_core::CardId>>,
) {
    place_taking(store, goods, buyer, 1, &[], budgets).await
}

fn coupon(key: &str, limit: u64) -> quanyi_storage::BudgetTake {
    quanyi_storage::BudgetTake {
        scope: "coupon".into(),
        key: key.into(),
        limit,
        amount: 1,
    }
}

/// A budget's uses are taken with the placements that are written, never past its limit
/// (however many race), and an order closed unpaid gives its uses back once; a paid order keeps
/// them. A refused placement takes none; another tenant's budget of the same key is its own;
/// malformed or repeated takes are refused.
pub async fn budgets_are_taken_within_their_limit_and_returned_once(store: Arc<dyn Store>) {
    let tenant = fixtures::vault_tenant(&*store).await;
    let goods = card_goods(&tenant, PurchaseLimits::default());
    store
        .insert_goods(&goods, quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    store
        .insert_cards(
            &tenant,
            &cards(first_sku(&goods), 40),
            t0(),
            quanyi_storage::Trail::NONE,
        )
        .await
        .unwrap();
    let used = |key: &'static str| {
        let (store, tenant) = (store.clone(), tenant.clone());
        async move { store.budget_used(&tenant, "coupon", key).await.unwrap() }
    };
    // One use: the first placement takes it, the second is refused and writes nothing.
    let (first, placed) = place_budgeted(&*store, &goods, "ann", &[coupon("once", 1)]).await;
    placed.unwrap();
    assert_eq!(used("once").await, 1);
    let (second, refused) = place_budgeted(&*store, &goods, "bob", &[coupon("once", 1)]).await;
    assert!(
        matches!(&refused, Err(Error::BudgetExhausted { scope, key }) if scope == "coupon" && key == "once"),
        "{refused:?}"
    );
    assert!(store.order(&tenant, second.id()).await.unwrap().is_none());
    // Closed unpaid: the use goes back, once.
    let mut expired = first.clone();
    let events = expired.expire(first.expires_at()).unwrap();
    let change = OrderChange {
        order: &expired,
        expected_version: first.version(),
        events: &envelopes(&expired, &events),
    };
    store.close_unpaid_order(change).await.unwrap();
    assert_eq!(used("once").await, 0);
    let again = OrderChange {
        order: &expired,
        expected_version: first.version(),
        events: &[],
    };
    assert!(store.close_unpaid_order(again).await.is_err());
    assert_eq!(used("once").await, 0);
    let (_, placed) = place_budgeted(&*store, &goods, "cat", &[coupon("once", 1)]).await;
    placed.unwrap();
    assert_eq!(used("once").await, 1);
    // A take with two budgets is refused whole when one is spent.
    let (both, refused) = place_budgeted(
        &*store,
        &goods,
        "dee",
        &[coupon("fresh", 3), coupon("once", 1)],
    )
    .await;
    assert!(matches!(refused, Err(Error::BudgetExhausted { .. })));
    assert!(store.order(&tenant, both.id()).await.unwrap().is_none());
    assert_eq!(used("fresh").await, 0);
    // Twenty placements racing for five uses: five orders.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let (store, goods) = (store.clone(), goods.clone());
        tasks.spawn(async move {
            let buyer = format!("racer-{i}");
            place_budgeted(&*store, &goods, &buyer, &[coupon("five", 5)])
                .await
                .1
        });
    }
    let outcomes = tasks.join_all().await;
    let won = outcomes.iter().filter(|o| o.is_ok()).count();
    assert_eq!(won, 5);
    assert!(
        outcomes
            .iter()
            .filter_map(|o| o.as_ref().err())
            .all(|e| matches!(e, Error::BudgetExhausted { .. })),
        "{outcomes:?}"
    );
    assert_eq!(used("five").await, 5);
    // Another tenant's budget of the same key is its own.
    let other = fixtures::vault_tenant(&*store).await;
    assert_eq!(
        store.budget_used(&other, "coupon", "once").await.unwrap(),
        0
    );
    let other_goods = card_goods(&other, PurchaseLimits::default());
    store
        .insert_goods(&other_goods, quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    store
        .insert_cards(
            &other,
            &cards(first_sku(&other_goods), 1),
            t0(),
            quanyi_storage::Trail::NONE,
        )
        .await
        .unwrap();
    let (_, placed) = place_budgeted(&*store, &other_goods, "eve", &[coupon("once", 1)]).await;
    placed.unwrap();
    assert_eq!(used("once").await, 1);
    // Malformed or repeated takes.
    for bad in [
        vec![coupon("", 1)],
        vec![coupon("zero", 0)],
        vec![coupon("twice", 2), coupon("twice", 2)],
    ] {
        let (_, refused) = place_budgeted(&*store, &goods, "fay", &bad).await;
        assert!(matches!(refused, Err(Error::Invalid(_))), "{refused:?}");
    }
}
