//! Conformance cases of the pricing port: versioned rules with revisions, placements priced
//! from rules that changed, issued coupons, and budgets of amounts.

use quanyi_storage::{BudgetTake, EntryChange, IssuedCoupon, PricingKind, PricingWrite, Trail};

use super::*;

fn change(kind: PricingKind, id: &str, body: Option<&str>) -> EntryChange {
    EntryChange {
        kind,
        id: id.into(),
        body: body.map(str::to_owned),
    }
}

fn pricing_audit(tenant: &TenantId, subject: &str) -> AuditRecord {
    AuditRecord {
        id: id(quanyi_core::AuditId::generate),
        tenant: tenant.clone(),
        at: t0(),
        actor: "operator:lin".into(),
        action: AuditAction::PricingChanged,
        subject: subject.into(),
        outcome: AuditOutcome::Allowed,
        detail: "1 change".into(),
    }
}

async fn write(
    store: &dyn Store,
    tenant: &TenantId,
    expected: u64,
    changes: &[EntryChange],
    minutes: i64,
) -> quanyi_storage::Result<u64> {
    store
        .write_pricing(
            PricingWrite {
                tenant,
                expected,
                changes,
                at: t0() + Duration::minutes(minutes),
            },
            Trail::NONE,
        )
        .await
}

/// A tenant's pricing rules start empty at version 0; each write is the next version, taken
/// only from the version it was made from, with its audit record; each entry keeps its
/// revisions (a removal too); malformed writes change nothing; another tenant's rules are its
/// own.
pub async fn pricing_rules_are_versioned_with_revisions_per_tenant(store: Arc<dyn Store>) {
    let tenant = fixtures::tenant();
    let empty = store.pricing(&tenant).await.unwrap();
    assert_eq!((empty.version, empty.entries.len()), (0, 0));
    assert_eq!(store.pricing_version(&tenant).await.unwrap(), 0);

    let first = [
        change(PricingKind::Settings, "rules", Some(r#"{"s":1}"#)),
        change(PricingKind::List, "gold", Some(r#"{"l":1}"#)),
        change(PricingKind::Promotion, "spring", Some(r#"{"p":1}"#)),
    ];
    let audit = pricing_audit(&tenant, "rules");
    let v1 = store
        .write_pricing(
            PricingWrite {
                tenant: &tenant,
                expected: 0,
                changes: &first,
                at: t0(),
            },
            Trail {
                events: &[],
                audit: Some(&audit),
            },
        )
        .await
        .unwrap();
    assert_eq!(v1, 1);
    let snapshot = store.pricing(&tenant).await.unwrap();
    assert_eq!(snapshot.version, 1);
    let entries: Vec<(PricingKind, &str, u64, &str)> = snapshot
        .entries
        .iter()
        .map(|e| (e.kind, e.id.as_str(), e.version, e.body.as_str()))
        .collect();
    assert_eq!(
        entries,
        vec![
            (PricingKind::Settings, "rules", 1, r#"{"s":1}"#),
            (PricingKind::List, "gold", 1, r#"{"l":1}"#),
            (PricingKind::Promotion, "spring", 1, r#"{"p":1}"#),
        ]
    );
    assert!(snapshot.entries.iter().all(|e| e.updated_at == t0()));
    let records = store.audit_records(&tenant, 10).await.unwrap();
    assert_eq!(records, vec![audit]);

    // A write made from version 0 lost the race: refused, nothing written.
    let stale = write(
        &*store,
        &tenant,
        0,
        &[change(PricingKind::List, "gold", Some("{}"))],
        1,
    )
    .await;
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
    assert_eq!(store.pricing(&tenant).await.unwrap(), snapshot);

    // Version 2 changes a promotion and removes the list; the settings keep version 1.
    let v2 = write(
        &*store,
        &tenant,
        1,
        &[
            change(PricingKind::Promotion, "spring", Some(r#"{"p":2}"#)),
            change(PricingKind::List, "gold", None),
        ],
        5,
    )
    .await
    .unwrap();
    assert_eq!(v2, 2);
    let snapshot = store.pricing(&tenant).await.unwrap();
    assert_eq!(snapshot.version, 2);
    let entries: Vec<(PricingKind, &str, u64)> = snapshot
        .entries
        .iter()
        .map(|e| (e.kind, e.id.as_str(), e.version))
        .collect();
    assert_eq!(
        entries,
        vec![
            (PricingKind::Settings, "rules", 1),
            (PricingKind::Promotion, "spring", 2),
        ]
    );
    let history = store
        .pricing_history(&tenant, PricingKind::List, "gold")
        .await
        .unwrap();
    let history: Vec<(u64, Option<&str>)> = history
        .iter()
        .map(|r| (r.version, r.body.as_deref()))
        .collect();
    assert_eq!(history, vec![(2, None), (1, Some(r#"{"l":1}"#))]);
    let promo = store
        .pricing_history(&tenant, PricingKind::Promotion, "spring")
        .await
        .unwrap();
    assert_eq!(promo.len(), 2);
    assert_eq!(promo[0].at, t0() + Duration::minutes(5));
    // The same id of another kind is another entry.
    assert!(
        store
            .pricing_history(&tenant, PricingKind::Promotion, "gold")
            .await
            .unwrap()
            .is_empty()
    );

    // Malformed writes: nothing, a repeated entry, an empty or overlong id, an overlong body.
    let long_id = "x".repeat(quanyi_storage::MAX_PRICING_ID + 1);
    let long_body = "x".repeat(quanyi_storage::MAX_PRICING_BODY + 1);
    for bad in [
        vec![],
        vec![
            change(PricingKind::List, "a", Some("{}")),
            change(PricingKind::List, "a", None),
        ],
        vec![change(PricingKind::List, "", Some("{}"))],
        vec![change(PricingKind::List, &long_id, Some("{}"))],
        vec![change(PricingKind::List, "a", Some(&long_body))],
    ] {
        let refused = write(&*store, &tenant, 2, &bad, 9).await;
        assert!(matches!(refused, Err(Error::Invalid(_))), "{refused:?}");
    }
    assert_eq!(store.pricing(&tenant).await.unwrap(), snapshot);

    // Another tenant's rules are its own.
    let other = fixtures::tenant();
    assert_eq!(store.pricing_version(&other).await.unwrap(), 0);
    let v = write(
        &*store,
        &other,
        0,
        &[change(PricingKind::List, "gold", Some("{}"))],
        0,
    )
    .await
    .unwrap();
    assert_eq!(v, 1);
    assert_eq!(store.pricing_version(&tenant).await.unwrap(), 2);
    assert_eq!(store.pricing(&other).await.unwrap().entries.len(), 1);
    assert_eq!(
        store
            .pricing_history(&other, PricingKind::List, "gold")
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(store.audit_records(&other, 10).await.unwrap().is_empty());
}

async fn place_priced(
    store: &dyn Store,
    goods: &quanyi_goods::Goods,
    buyer: &str,
    pricing_version: Option<u64>,
    budgets: &[BudgetTake],
) -> (
    quanyi_order::Order,
    quanyi_storage::Result<Vec<quanyi_core::CardId>>,
) {
    let (order, events) = order(goods, &member(buyer), 1);
    let envs = envelopes(&order, &events);
    let placed = store
        .place_order(
            NewOrder {
                order: &order,
                events: &envs,
                reservations: &[Reservation {
                    sku: first_sku(goods),
                    quantity: 1,
                }],
                member_limits: &[],
                priced_from: &[],
                claims: &[],
                budgets,
                pricing_version,
            },
            t0(),
        )
        .await;
    (order, placed)
}

async fn stocked(store: &dyn Store, cards_in_stock: usize) -> (TenantId, quanyi_goods::Goods) {
    let tenant = fixtures::vault_tenant(store).await;
    let goods = card_goods(&tenant, PurchaseLimits::default());
    store.insert_goods(&goods, Trail::NONE).await.unwrap();
    store
        .insert_cards(
            &tenant,
            &cards(first_sku(&goods), cards_in_stock),
            t0(),
            Trail::NONE,
        )
        .await
        .unwrap();
    (tenant, goods)
}

/// A placement names the pricing rules' version it was priced from: at the stored version it
/// is written; after the rules changed it is refused (`Conflict` on `"pricing"`), alone or
/// racing, and writes nothing; without rules the version is 0; another tenant's rules do not
/// count.
pub async fn placements_priced_from_changed_rules_are_refused(store: Arc<dyn Store>) {
    let (tenant, goods) = stocked(&*store, 20).await;
    let (_, placed) = place_priced(&*store, &goods, "ann", Some(0), &[]).await;
    placed.unwrap();
    write(
        &*store,
        &tenant,
        0,
        &[change(PricingKind::Promotion, "p", Some("{}"))],
        0,
    )
    .await
    .unwrap();
    let (stale, refused) = place_priced(&*store, &goods, "bob", Some(0), &[]).await;
    assert!(
        matches!(&refused, Err(Error::Conflict { what: "pricing", reason, .. }) if *reason == quanyi_storage::PRICING_CHANGED),
        "{refused:?}"
    );
    assert!(store.order(&tenant, stale.id()).await.unwrap().is_none());
    let stock = store.stock(&tenant, first_sku(&goods), t0()).await.unwrap();
    // Racing placements priced from the old version: all refused, none written.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..8 {
        let (store, goods) = (store.clone(), goods.clone());
        tasks.spawn(async move {
            let (order, placed) =
                place_priced(&*store, &goods, &format!("racer-{i}"), Some(0), &[]).await;
            (order.id(), placed)
        });
    }
    for (id, placed) in tasks.join_all().await {
        assert!(
            matches!(
                &placed,
                Err(Error::Conflict {
                    what: "pricing",
                    ..
                })
            ),
            "{placed:?}"
        );
        assert!(store.order(&tenant, id).await.unwrap().is_none());
    }
    assert_eq!(
        store.stock(&tenant, first_sku(&goods), t0()).await.unwrap(),
        stock
    );
    // Racing placements priced from the stored version: all written.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..8 {
        let (store, goods) = (store.clone(), goods.clone());
        tasks.spawn(async move {
            place_priced(&*store, &goods, &format!("fresh-{i}"), Some(1), &[])
                .await
                .1
        });
    }
    assert!(tasks.join_all().await.iter().all(Result::is_ok));
    // No check without a version; another tenant without rules is at 0.
    let (_, placed) = place_priced(&*store, &goods, "cat", None, &[]).await;
    placed.unwrap();
    let (_, other_goods) = stocked(&*store, 2).await;
    let (_, placed) = place_priced(&*store, &other_goods, "dee", Some(0), &[]).await;
    placed.unwrap();
    let (_, refused) = place_priced(&*store, &other_goods, "dee", Some(1), &[]).await;
    assert!(matches!(
        refused,
        Err(Error::Conflict {
            what: "pricing",
            ..
        })
    ));
}

fn issued(tenant: &TenantId, code: &str, member_name: &str, minutes: i64) -> IssuedCoupon {
    IssuedCoupon {
        tenant: tenant.clone(),
        code: code.into(),
        template: "welcome".into(),
        member: member(member_name),
        source: "campaign:spring".into(),
        valid_from: t0(),
        valid_to: t0() + Duration::days(30),
        issued_at: t0() + Duration::minutes(minutes),
    }
}

/// Coupons are issued with their audit record in one step, each code once per tenant (a call
/// with one stored code writes none of its coupons), found by code and listed per member in
/// issue order; malformed coupons are refused; another tenant's coupons are its own.
pub async fn coupons_are_issued_once_per_code_and_listed_per_member(store: Arc<dyn Store>) {
    let tenant = fixtures::tenant();
    let audit = AuditRecord {
        action: AuditAction::CouponsIssued,
        ..pricing_audit(&tenant, "welcome")
    };
    let first = [
        issued(&tenant, "C-ANN-2", "ann", 2),
        issued(&tenant, "C-ANN-1", "ann", 1),
        issued(&tenant, "C-BOB-1", "bob", 1),
    ];
    store
        .issue_coupons(
            &tenant,
            &first,
            Trail {
                events: &[],
                audit: Some(&audit),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        store.coupon(&tenant, "C-BOB-1").await.unwrap(),
        Some(first[2].clone())
    );
    assert_eq!(store.coupon(&tenant, "c-bob-1").await.unwrap(), None);
    let ann = store.member_coupons(&tenant, &member("ann")).await.unwrap();
    assert_eq!(ann, vec![first[1].clone(), first[0].clone()]);
    assert_eq!(store.audit_records(&tenant, 10).await.unwrap(), vec![audit]);

    // A call with a stored code writes nothing.
    let again = [
        issued(&tenant, "C-CAT-1", "cat", 3),
        issued(&tenant, "C-ANN-1", "cat", 3),
    ];
    let refused = store.issue_coupons(&tenant, &again, Trail::NONE).await;
    assert!(
        matches!(&refused, Err(Error::Conflict { what: "coupon", .. })),
        "{refused:?}"
    );
    assert_eq!(store.coupon(&tenant, "C-CAT-1").await.unwrap(), None);
    assert!(
        store
            .member_coupons(&tenant, &member("cat"))
            .await
            .unwrap()
            .is_empty()
    );

    // Malformed: an empty code, a window that ends before it starts, another tenant's coupon,
    // a code twice in one call.
    let other = fixtures::tenant();
    let mut backwards = issued(&tenant, "C-X", "cat", 4);
    backwards.valid_to = backwards.valid_from;
    for bad in [
        vec![issued(&tenant, "", "cat", 4)],
        vec![backwards],
        vec![issued(&other, "C-Y", "cat", 4)],
        vec![
            issued(&tenant, "C-Z", "cat", 4),
            issued(&tenant, "C-Z", "dee", 4),
        ],
    ] {
        let refused = store.issue_coupons(&tenant, &bad, Trail::NONE).await;
        assert!(matches!(refused, Err(Error::Invalid(_))), "{refused:?}");
    }
    assert!(
        store
            .member_coupons(&tenant, &member("cat"))
            .await
            .unwrap()
            .is_empty()
    );

    // Another tenant: the same code is its own, and it sees none of the first tenant's.
    assert_eq!(store.coupon(&other, "C-ANN-1").await.unwrap(), None);
    store
        .issue_coupons(&other, &[issued(&other, "C-ANN-1", "ann", 5)], Trail::NONE)
        .await
        .unwrap();
    assert_eq!(
        store
            .member_coupons(&other, &member("ann"))
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        store
            .member_coupons(&tenant, &member("ann"))
            .await
            .unwrap()
            .len(),
        2
    );
}

fn discount(key: &str, limit: u64, amount: u64) -> BudgetTake {
    BudgetTake {
        scope: "promotion.discount".into(),
        key: key.into(),
        limit,
        amount,
    }
}

/// A budget of amounts (a promotion's total discount) takes what each order names and refuses
/// a take that would pass its limit; an order closed unpaid gives back exactly what it took,
/// once; racing takes never pass the limit.
pub async fn budgets_of_amounts_take_what_each_order_names(store: Arc<dyn Store>) {
    let (tenant, goods) = stocked(&*store, 40).await;
    let used = || {
        let (store, tenant) = (store.clone(), tenant.clone());
        async move {
            store
                .budget_used(&tenant, "promotion.discount", "spring")
                .await
                .unwrap()
        }
    };
    let (first, placed) =
        place_priced(&*store, &goods, "ann", None, &[discount("spring", 100, 60)]).await;
    placed.unwrap();
    assert_eq!(used().await, 60);
    let (refused_order, refused) =
        place_priced(&*store, &goods, "bob", None, &[discount("spring", 100, 50)]).await;
    assert!(
        matches!(&refused, Err(Error::BudgetExhausted { key, .. }) if key == "spring"),
        "{refused:?}"
    );
    assert!(
        store
            .order(&tenant, refused_order.id())
            .await
            .unwrap()
            .is_none()
    );
    let (_, placed) =
        place_priced(&*store, &goods, "cat", None, &[discount("spring", 100, 40)]).await;
    placed.unwrap();
    assert_eq!(used().await, 100);
    // The first order closes unpaid: its 60 go back, once.
    let mut expired = first.clone();
    let events = expired.expire(first.expires_at()).unwrap();
    store
        .close_unpaid_order(OrderChange {
            order: &expired,
            expected_version: first.version(),
            events: &envelopes(&expired, &events),
        })
        .await
        .unwrap();
    assert_eq!(used().await, 40);
    // Twelve racing takes of 7 with 60 left: eight are written.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..12 {
        let (store, goods) = (store.clone(), goods.clone());
        tasks.spawn(async move {
            place_priced(
                &*store,
                &goods,
                &format!("racer-{i}"),
                None,
                &[discount("spring", 100, 7)],
            )
            .await
            .1
        });
    }
    let won = tasks.join_all().await.iter().filter(|o| o.is_ok()).count();
    assert_eq!(won, 8);
    assert_eq!(used().await, 96);
    // A take of nothing is malformed.
    let (_, refused) =
        place_priced(&*store, &goods, "dee", None, &[discount("spring", 100, 0)]).await;
    assert!(matches!(refused, Err(Error::Invalid(_))), "{refused:?}");
}
