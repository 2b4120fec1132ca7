//! Paging of the operator's order search at its largest page (facade logic, on memory; the
//! store-dependent search is a shop case on every adapter).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use quanyi::crates::storage::MAX_SEARCH_PAGE;
use quanyi::*;

#[tokio::test]
async fn pages_of_the_largest_size_lead_on_until_every_order_is_seen() {
    let w = world();
    let sku = card_sku(&w.shop, "1.00", PurchaseLimits::default()).await;
    let total = MAX_SEARCH_PAGE + 3;
    stock_up(&w.shop, sku, &codes(total)).await;
    for n in 0..total {
        w.shop
            .place_order(&member(&format!("m{n}")), &[CartLine::new(sku, 1)])
            .await
            .unwrap();
    }
    let ops = Actor::new("ops", "support").unwrap();
    let first = w
        .shop
        .orders()
        .search(&ops, &OrderQuery::new(), None, MAX_SEARCH_PAGE)
        .await
        .unwrap();
    assert_eq!(first.orders.len(), MAX_SEARCH_PAGE);
    assert!(first.next.is_some());
    let second = w
        .shop
        .orders()
        .search(&ops, &OrderQuery::new(), first.next, MAX_SEARCH_PAGE)
        .await
        .unwrap();
    assert_eq!(second.orders.len(), 3);
    assert_eq!(second.next, None);
    let mut seen: Vec<_> = first
        .orders
        .iter()
        .chain(&second.orders)
        .map(Order::id)
        .collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), total);
    // A page one short of the largest still knows when it is the last.
    let third = w
        .shop
        .orders()
        .search(&ops, &OrderQuery::new(), None, MAX_SEARCH_PAGE - 1)
        .await
        .unwrap();
    assert!(third.next.is_some());
}
