//! The check of a store migrated to the schema with pricing, shared by the durable adapters'
//! migration tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::BeforeAfterSales;

/// After a migration to the schema with pricing, on the data of
/// [`BeforeAfterSales`] whose unpaid and first
/// delivered orders each took one use of budget `coupon`/`spring` (used 2) before budgets had
/// amounts: the unpaid order closes and gives back exactly its one use, the delivered order
/// keeps its own; new placements take amounts within the limit; pricing rules are written and
/// read with their revisions, coupons are issued and found; a placement priced from rules that
/// changed is refused and one priced from the stored rules is written.
pub async fn check_pricing_after_migration(
    store: &dyn quanyi_storage::Store,
    before: &BeforeAfterSales,
) {
    use crate::fixtures::{self, t0};
    use quanyi_storage::{
        BudgetTake, EntryChange, Error, IssuedCoupon, NewOrder, OrderChange, PricingKind,
        PricingWrite, Reservation, Trail,
    };

    let goods = &before.goods;
    let tenant = goods.tenant();
    let used = || store.budget_used(tenant, "coupon", "spring");
    assert_eq!(used().await.unwrap(), 2);
    let unpaid = &before.orders[0];
    let mut expired = unpaid.clone();
    let events = expired.expire(unpaid.expires_at()).unwrap();
    let released = store
        .close_unpaid_order(OrderChange {
            order: &expired,
            expected_version: unpaid.version(),
            events: &fixtures::envelopes(&expired, &events),
        })
        .await
        .unwrap();
    assert_eq!(released, 1);
    assert_eq!(used().await.unwrap(), 1);

    let place = |buyer: &'static str, pricing_version: Option<u64>, amount: Option<u64>| async move {
        let (order, events) = fixtures::order(goods, &fixtures::member(buyer), 1);
        let takes: Vec<BudgetTake> = amount
            .map(|amount| BudgetTake {
                scope: "coupon".into(),
                key: "spring".into(),
                limit: 5,
                amount,
            })
            .into_iter()
            .collect();
        store
            .place_order(
                NewOrder {
                    order: &order,
                    events: &fixtures::envelopes(&order, &events),
                    reservations: &[Reservation {
                        sku: fixtures::first_sku(goods),
                        quantity: 1,
                    }],
                    member_limits: &[],
                    priced_from: &[],
                    claims: &[],
                    budgets: &takes,
                    pricing_version,
                },
                t0(),
            )
            .await
    };
    // 1 of 5 used: a take of 3 fits, one of 2 more does not.
    place("ann", None, Some(3)).await.unwrap();
    assert_eq!(used().await.unwrap(), 4);
    let refused = place("bob", None, Some(2)).await;
    assert!(
        matches!(&refused, Err(Error::BudgetExhausted { key, .. }) if key == "spring"),
        "{refused:?}"
    );
    assert_eq!(used().await.unwrap(), 4);

    assert_eq!(store.pricing_version(tenant).await.unwrap(), 0);
    let changes = [EntryChange {
        kind: PricingKind::List,
        id: "gold".into(),
        body: Some(r#"{"l":1}"#.into()),
    }];
    let write = PricingWrite {
        tenant,
        expected: 0,
        changes: &changes,
        at: t0(),
    };
    assert_eq!(store.write_pricing(write, Trail::NONE).await.unwrap(), 1);
    let stale = store.write_pricing(write, Trail::NONE).await;
    assert!(
        matches!(
            &stale,
            Err(Error::Conflict {
                what: "pricing",
                ..
            })
        ),
        "{stale:?}"
    );
    let snapshot = store.pricing(tenant).await.unwrap();
    assert_eq!(snapshot.version, 1);
    assert_eq!(snapshot.entries.len(), 1);
    assert_eq!(snapshot.entries[0].body, r#"{"l":1}"#);
    let history = store
        .pricing_history(tenant, PricingKind::List, "gold")
        .await
        .unwrap();
    assert_eq!(history.len(), 1);

    let coupon = IssuedCoupon {
        tenant: tenant.clone(),
        code: "C-1".into(),
        template: "welcome".into(),
        member: fixtures::member("ann"),
        source: "operator:lin".into(),
        valid_from: t0(),
        valid_to: t0() + chrono::Duration::days(1),
        issued_at: t0(),
    };
    store
        .issue_coupons(tenant, std::slice::from_ref(&coupon), Trail::NONE)
        .await
        .unwrap();
    assert_eq!(
        store.coupon(tenant, "C-1").await.unwrap(),
        Some(coupon.clone())
    );
    assert_eq!(
        store
            .member_coupons(tenant, &fixtures::member("ann"))
            .await
            .unwrap(),
        vec![coupon]
    );

    let refused = place("cat", Some(0), None).await;
    assert!(
        matches!(
            &refused,
            Err(Error::Conflict {
                what: "pricing",
                ..
            })
        ),
        "{refused:?}"
    );
    place("cat", Some(1), None).await.unwrap();
    // The two cards left in stock (the available one and the one the unpaid order released)
    // went to the two placements written.
    let stock = store
        .stock(tenant, fixtures::first_sku(goods), t0())
        .await
        .unwrap();
    assert_eq!(stock.available, 0);
}
