//! Shop case of the operator views: order search and card lookup, each under an actor.

use std::sync::Arc;

use chrono::Duration;
use quanyi::{Actor, CartLine, Channel, OrderContext, OrderQuery, OrderStatus, PlaceOrder, Store};
use quanyi_storage::{AuditAction, CardState};
use quanyi_vault::{CardCode, CardKey};

use super::{Rig, buy, card_sku, import, member};

/// An operator searches orders by member, status, channel and window, pages through them with
/// the cursor, and finds a card by its code through the blind index, masked; every call is
/// audited with the actor, and the audit never holds the code.
pub async fn operators_search_orders_and_find_cards(store: Arc<dyn Store>) {
    let rig = Rig::new(store);
    let shop = rig.shop();
    let sku = card_sku(&shop).await;
    import(
        &shop,
        sku,
        &["OPS-A1B2-0001", "OPS-A1B2-0002", "OPS-A1B2-0003"],
    )
    .await;
    let support = Actor::new("ann.lee", "support").unwrap();

    let ann = buy(&shop, sku, &member("ann"), 1).await;
    rig.clock.advance(Duration::minutes(5));
    let bob = shop
        .place(
            PlaceOrder::new(member("bob"), vec![CartLine::new(sku, 1)])
                .context(OrderContext::new(Channel::App)),
        )
        .await
        .unwrap();
    rig.clock.advance(Duration::minutes(5));

    let orders = shop.orders();
    let ids = |page: &quanyi::OrderPage| page.orders.iter().map(|o| o.id()).collect::<Vec<_>>();
    let all = orders
        .search(&support, &OrderQuery::new(), None, 10)
        .await
        .unwrap();
    assert_eq!(ids(&all), vec![bob.id(), ann.id()]);
    assert_eq!(all.next, None);
    let by_member = OrderQuery::new().member(member("ann"));
    let page = orders.search(&support, &by_member, None, 10).await.unwrap();
    assert_eq!(ids(&page), vec![ann.id()]);
    let app = OrderQuery::new().channel(Channel::App);
    let page = orders.search(&support, &app, None, 10).await.unwrap();
    assert_eq!(ids(&page), vec![bob.id()]);
    let delivered = OrderQuery::new().status(OrderStatus::Delivered);
    let page = orders.search(&support, &delivered, None, 10).await.unwrap();
    assert_eq!(ids(&page), vec![ann.id()]);
    let first_minutes =
        OrderQuery::new().placed_between(ann.created_at(), ann.created_at() + Duration::minutes(1));
    let page = orders
        .search(&support, &first_minutes, None, 10)
        .await
        .unwrap();
    assert_eq!(ids(&page), vec![ann.id()]);
    // One per page: the cursor leads on, and the last page says so.
    let first = orders
        .search(&support, &OrderQuery::new(), None, 1)
        .await
        .unwrap();
    assert_eq!(ids(&first), vec![bob.id()]);
    let second = orders
        .search(&support, &OrderQuery::new(), first.next, 1)
        .await
        .unwrap();
    assert_eq!(ids(&second), vec![ann.id()]);
    assert_eq!(second.next, None);
    for limit in [0, quanyi::crates::storage::MAX_SEARCH_PAGE + 1] {
        let err = orders
            .search(&support, &OrderQuery::new(), None, limit)
            .await
            .unwrap_err();
        assert_eq!(err.code(), "invalid_input");
    }
    assert_eq!(orders.get(bob.id()).await.unwrap().id(), bob.id());

    // A card by its code: sold to ann, or held for bob, or still in stock.
    let stock = shop.stock();
    let key = |code: &str| CardKey::new(CardCode::new(code).unwrap(), None);
    let mut states = Vec::new();
    for code in ["OPS-A1B2-0001", "OPS-A1B2-0002", "OPS-A1B2-0003"] {
        let found = stock
            .find_card(&support, &key(code))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(found.sku, sku);
        assert!(!found.masked.contains("A1B2"), "{}", found.masked);
        states.push(found.state);
    }
    assert!(
        states
            .iter()
            .any(|s| matches!(s, CardState::Sold { order, .. } if *order == ann.id()))
    );
    assert!(
        states
            .iter()
            .any(|s| matches!(s, CardState::Reserved { order, .. } if *order == bob.id()))
    );
    assert!(states.contains(&CardState::Available));
    assert!(
        stock
            .find_card(&support, &key("NOT-A-CARD"))
            .await
            .unwrap()
            .is_none()
    );
    let counts = stock.count(sku).await.unwrap();
    assert_eq!((counts.available, counts.reserved, counts.sold), (1, 1, 1));

    // Audited with the actor, without the codes.
    let log = shop.audit_log(50).await.unwrap();
    let lookups: Vec<_> = log
        .iter()
        .filter(|r| r.action == AuditAction::CardLookedUp)
        .collect();
    assert_eq!(lookups.len(), 4);
    assert!(lookups.iter().all(|r| r.actor == "support:ann.lee"));
    assert!(lookups.iter().all(|r| !r.detail.contains("A1B2")));
    assert_eq!(lookups[0].subject, "none");
    let searches = log
        .iter()
        .filter(|r| r.action == AuditAction::OrdersSearched)
        .count();
    assert_eq!(searches, 7);
    let imports: Vec<_> = log
        .iter()
        .filter(|r| r.action == AuditAction::Import)
        .map(|r| r.actor.as_str())
        .collect();
    assert_eq!(imports, vec!["stock:stock-keeper"]);
    assert!(format!("{log:?}").find("OPS-A1B2").is_none());
}
