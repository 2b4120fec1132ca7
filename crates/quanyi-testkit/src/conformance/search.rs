//! Conformance case of an operator's order search.

use std::sync::Arc;

use chrono::Duration;
use quanyi_goods::PurchaseLimits;
use quanyi_order::{Channel, Order, OrderContext, OrderStatus};
use quanyi_storage::{OrderChange, OrderCursor, OrderQuery, Store};

use crate::fixtures::{self, card_goods, envelopes, first_sku, member, order_at, t0};

/// Stores an order of the goods' first SKU placed at `hours` after [`t0`] through `channel`
/// (`None`: no context, which is the web).
async fn stored(
    store: &dyn Store,
    goods: &quanyi_goods::Goods,
    buyer: &str,
    hours: i64,
    channel: Option<Channel>,
) -> Order {
    let (order, events) = order_at(goods, &member(buyer), 1, t0() + Duration::hours(hours));
    let order = match channel {
        Some(c) => order.with_context(OrderContext::new(c)).unwrap(),
        None => order,
    };
    store
        .insert_order(&order, &envelopes(&order, &events), &[])
        .await
        .unwrap();
    order
}

/// The ids of a search's answer.
async fn found(
    store: &dyn Store,
    tenant: &quanyi_core::TenantId,
    query: &OrderQuery,
    after: Option<OrderCursor>,
    limit: usize,
) -> Vec<quanyi_core::OrderId> {
    store
        .search_orders(tenant, query, after, limit)
        .await
        .unwrap()
        .iter()
        .map(Order::id)
        .collect()
}

/// Newest first, as a search answers.
fn newest_first(orders: &[&Order]) -> Vec<quanyi_core::OrderId> {
    let mut v: Vec<&&Order> = orders.iter().collect();
    v.sort_by_key(|o| std::cmp::Reverse((o.created_at(), o.id())));
    v.into_iter().map(|o| o.id()).collect()
}

/// An operator's search: every criterion narrows (member, statuses, placement window, SKU,
/// channel, an absent context counting as the web), answers come newest first (placement time,
/// then id), pages continue after their cursor without a gap or a repeat, criteria the store
/// checks after reading (the channel) still fill a page, and another tenant's orders never
/// show.
pub async fn operators_search_orders(store: Arc<dyn Store>) {
    let tenant = fixtures::tenant();
    let video = card_goods(&tenant, PurchaseLimits::default());
    let music = card_goods(&tenant, PurchaseLimits::default());
    store
        .insert_goods(&video, quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    store
        .insert_goods(&music, quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    let s = &*store;
    let o1 = stored(s, &video, "ann", 0, None).await;
    let o2 = stored(s, &music, "bob", 1, Some(Channel::App)).await;
    let o3 = stored(s, &music, "ann", 2, Some(Channel::MiniProgram)).await;
    let mut o4 = stored(s, &video, "ann", 2, Some(Channel::Web)).await;
    let o5 = stored(s, &video, "cy", 3, Some(Channel::App)).await;
    let before = o4.version();
    let events = o4
        .cancel("changed my mind".into(), t0() + Duration::hours(5))
        .unwrap();
    store
        .update_order(
            OrderChange {
                order: &o4,
                expected_version: before,
                events: &envelopes(&o4, &events),
            },
            None,
        )
        .await
        .unwrap();
    let all = newest_first(&[&o1, &o2, &o3, &o4, &o5]);
    assert_eq!(found(s, &tenant, &OrderQuery::new(), None, 50).await, all);

    let ann = OrderQuery::new().member(member("ann"));
    assert_eq!(
        found(s, &tenant, &ann, None, 50).await,
        newest_first(&[&o1, &o3, &o4])
    );
    let cancelled = OrderQuery::new().status(OrderStatus::Cancelled);
    assert_eq!(found(s, &tenant, &cancelled, None, 50).await, vec![o4.id()]);
    let either = cancelled.clone().status(OrderStatus::AwaitingPayment);
    assert_eq!(found(s, &tenant, &either, None, 50).await, all);
    let window =
        OrderQuery::new().placed_between(t0() + Duration::hours(1), t0() + Duration::hours(2));
    assert_eq!(found(s, &tenant, &window, None, 50).await, vec![o2.id()]);
    let music_sku = OrderQuery::new().sku(first_sku(&music));
    assert_eq!(
        found(s, &tenant, &music_sku, None, 50).await,
        vec![o3.id(), o2.id()]
    );
    let app = OrderQuery::new().channel(Channel::App);
    assert_eq!(
        found(s, &tenant, &app, None, 50).await,
        vec![o5.id(), o2.id()]
    );
    let web = OrderQuery::new().channel(Channel::Web);
    assert_eq!(
        found(s, &tenant, &web, None, 50).await,
        newest_first(&[&o1, &o4])
    );
    let narrow = OrderQuery::new()
        .member(member("ann"))
        .sku(first_sku(&video))
        .status(OrderStatus::AwaitingPayment);
    assert_eq!(found(s, &tenant, &narrow, None, 50).await, vec![o1.id()]);
    let nobody = OrderQuery::new().member(member("zed"));
    assert!(found(s, &tenant, &nobody, None, 50).await.is_empty());

    // Pages of two walk the whole answer once, in order.
    let mut paged = Vec::new();
    let mut cursor = None;
    loop {
        let page = store
            .search_orders(&tenant, &OrderQuery::new(), cursor, 2)
            .await
            .unwrap();
        assert!(page.len() <= 2);
        let Some(last) = page.last() else { break };
        cursor = Some(OrderCursor::after(last));
        paged.extend(page.iter().map(Order::id));
    }
    assert_eq!(paged, all);
    // No limit, an empty window and a reversed one match nothing.
    assert!(
        found(s, &tenant, &OrderQuery::new(), None, 0)
            .await
            .is_empty()
    );
    for (from, to) in [(2, 2), (3, 1)] {
        let q = OrderQuery::new()
            .placed_between(t0() + Duration::hours(from), t0() + Duration::hours(to));
        assert!(found(s, &tenant, &q, None, 50).await.is_empty());
    }
    // Far bounds hold every order on their side.
    let wide = OrderQuery::new().placed_between(
        chrono::DateTime::<chrono::Utc>::MIN_UTC,
        chrono::DateTime::<chrono::Utc>::MAX_UTC,
    );
    assert_eq!(found(s, &tenant, &wide, None, 50).await, all);

    // 120 newer web orders: the app orders are still found, past what one read returns.
    for n in 0..120 {
        stored(s, &video, &format!("web{n}"), 10, None).await;
    }
    assert_eq!(
        found(s, &tenant, &app, None, 5).await,
        vec![o5.id(), o2.id()]
    );
    assert_eq!(
        found(s, &tenant, &OrderQuery::new(), None, 1_000)
            .await
            .len(),
        125
    );

    // Another tenant sees its own orders only.
    let other = fixtures::tenant();
    let theirs = card_goods(&other, PurchaseLimits::default());
    store
        .insert_goods(&theirs, quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    let o6 = stored(s, &theirs, "ann", 0, None).await;
    assert_eq!(
        found(s, &other, &OrderQuery::new(), None, 50).await,
        vec![o6.id()]
    );
    assert_eq!(found(s, &other, &ann, None, 50).await, vec![o6.id()]);
    assert!(found(s, &other, &app, None, 50).await.is_empty());

    // Placement times compare to the microsecond, whatever finer time the order carries.
    let at = t0() + Duration::hours(7) + Duration::nanoseconds(123_456_789);
    let (o7, events) = order_at(&theirs, &member("bea"), 1, at);
    store
        .insert_order(&o7, &envelopes(&o7, &events), &[])
        .await
        .unwrap();
    let micro = t0() + Duration::hours(7) + Duration::nanoseconds(123_456_000);
    let window = |from: chrono::DateTime<chrono::Utc>, before| {
        OrderQuery::new().placed_between(from, before)
    };
    assert_eq!(
        found(
            s,
            &other,
            &window(micro, micro + Duration::microseconds(1)),
            None,
            50
        )
        .await,
        vec![o7.id()]
    );
    assert!(
        found(
            s,
            &other,
            &window(micro + Duration::nanoseconds(1), at + Duration::hours(1)),
            None,
            50
        )
        .await
        .is_empty()
    );
    assert!(
        found(s, &other, &window(at - Duration::hours(1), micro), None, 50)
            .await
            .is_empty()
    );
    assert_eq!(
        found(s, &other, &OrderQuery::new(), None, 50).await,
        vec![o7.id(), o6.id()]
    );
    let after_o7 = OrderCursor::after(&o7);
    assert_eq!(after_o7.placed_at, micro);
    assert_eq!(
        found(s, &other, &OrderQuery::new(), Some(after_o7), 50).await,
        vec![o6.id()]
    );
}

/// A card is found by its blind index in any state, only in its own tenant, and an index no
/// card holds finds nothing.
pub async fn cards_are_found_by_blind_index(store: Arc<dyn Store>) {
    let tenant = fixtures::vault_tenant(&*store).await;
    let goods = card_goods(&tenant, PurchaseLimits::default());
    let sku = first_sku(&goods);
    store
        .insert_goods(&goods, quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    let batch = fixtures::cards(sku, 3);
    store
        .insert_cards(&tenant, &batch, t0(), quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    let (order, events) = fixtures::order(&goods, &member("kim"), 1);
    let reserved = store
        .place_order(
            quanyi_storage::NewOrder {
                order: &order,
                events: &envelopes(&order, &events),
                reservations: &[quanyi_storage::Reservation { sku, quantity: 1 }],
                member_limits: &[],
                priced_from: &[],
                claims: &[],
                budgets: &[],
                pricing_version: None,
            },
            t0(),
        )
        .await
        .unwrap();
    let withdrawn = batch.iter().find(|c| c.id != reserved[0]).unwrap().id;
    store
        .withdraw_cards(&tenant, &[withdrawn], t0())
        .await
        .unwrap();
    for card in &batch {
        let got = store
            .card_by_index(&tenant, &card.blind_index)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.id, card.id);
        assert_eq!(got.blind_index, card.blind_index);
        assert_eq!(
            Some(&got),
            store.card(&tenant, card.id).await.unwrap().as_ref()
        );
    }
    let state = |card| {
        let store = Arc::clone(&store);
        let tenant = tenant.clone();
        async move { store.card(&tenant, card).await.unwrap().unwrap().state }
    };
    assert!(matches!(
        state(reserved[0]).await,
        quanyi_storage::CardState::Reserved { .. }
    ));
    assert!(matches!(
        state(withdrawn).await,
        quanyi_storage::CardState::Withdrawn { .. }
    ));
    let unknown = quanyi_vault::BlindIndex::from_bytes([7; 32]);
    assert!(
        store
            .card_by_index(&tenant, &unknown)
            .await
            .unwrap()
            .is_none()
    );
    let other = fixtures::vault_tenant(&*store).await;
    assert!(
        store
            .card_by_index(&other, &batch[0].blind_index)
            .await
            .unwrap()
            .is_none()
    );
}

/// Checks, after a migration, that stored orders are found by their placement time: `finer`
/// (placed a fraction of a microsecond after a whole microsecond past [`t0`]) alone in its
/// microsecond, the two orders placed at [`t0`] in theirs, and all three newest first. Other
/// orders of the tenant are left out of the comparison.
pub async fn migrated_orders_are_found_by_placement(
    store: &dyn Store,
    tenant: &quanyi_core::TenantId,
    finer: &Order,
    at_t0: [&Order; 2],
) {
    use quanyi_core::chrono::SubsecRound;
    let ours = [finer.id(), at_t0[0].id(), at_t0[1].id()];
    let search = |query: OrderQuery| async move {
        let mut ids = found(store, tenant, &query, None, 100).await;
        ids.retain(|id| ours.contains(id));
        ids
    };
    let micro = finer.created_at().trunc_subsecs(6);
    let mut at_start = vec![at_t0[0].id(), at_t0[1].id()];
    at_start.sort_by(|a, b| b.cmp(a));
    let window = |from| OrderQuery::new().placed_between(from, from + Duration::microseconds(1));
    assert_eq!(search(window(micro)).await, vec![finer.id()]);
    assert_eq!(search(window(t0())).await, at_start);
    let mut all = vec![finer.id()];
    all.extend(&at_start);
    assert_eq!(search(OrderQuery::new()).await, all);
}
