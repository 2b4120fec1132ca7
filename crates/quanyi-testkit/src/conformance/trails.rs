//! Conformance case of operator changes written with their trail.

use std::sync::Arc;

use quanyi_core::{AuditId, EventEnvelope, TenantId};
use quanyi_goods::{PurchaseLimits, Shelf};
use quanyi_storage::{AuditAction, AuditOutcome, AuditRecord, Store, Trail};

use crate::fixtures::{self, card_goods, first_sku, id, t0};

fn record(tenant: &TenantId, action: AuditAction, subject: String) -> AuditRecord {
    AuditRecord {
        id: id(AuditId::generate),
        tenant: tenant.clone(),
        at: t0(),
        actor: "catalog:mei".into(),
        action,
        subject,
        outcome: AuditOutcome::Allowed,
        detail: String::new(),
    }
}

/// An event of the goods, as a catalog change writes it.
fn goods_event(goods: &quanyi_goods::Goods) -> EventEnvelope {
    EventEnvelope::wrap(
        id(quanyi_core::EventId::generate),
        goods.tenant().clone(),
        "goods",
        goods.id().to_string().into(),
        goods.version(),
        t0(),
        &quanyi_order::OrderEvent::Expired,
    )
    .unwrap()
}

/// The audit ids the tenant holds, newest first.
async fn audited(store: &dyn Store, tenant: &TenantId) -> Vec<AuditId> {
    store
        .audit_records(tenant, 100)
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect()
}

/// An operator's change and its trail (events and audit record) are one write: goods created
/// and changed, cards imported, the key ring changed, a key destroyed and an order changed each
/// store their record with them; a change the store refuses (a stale version, a key no longer active, an
/// id of the trail already stored) writes neither the change nor its trail.
pub async fn operator_changes_are_written_with_their_records(store: Arc<dyn Store>) {
    let tenant = fixtures::vault_tenant(&*store).await;
    let mut goods = card_goods(&tenant, PurchaseLimits::default());
    let created = record(&tenant, AuditAction::GoodsCreated, goods.id().to_string());
    let created_events = [goods_event(&goods)];
    store
        .insert_goods(&goods, Trail::events(&created_events).audited(&created))
        .await
        .unwrap();
    assert_eq!(audited(&*store, &tenant).await, [created.id]);
    assert_eq!(
        store
            .aggregate_events(&tenant, "goods", &goods.id().to_string())
            .await
            .unwrap()
            .len(),
        1
    );

    // A stale change writes no record and no event.
    let read = goods.version();
    goods.set_shelf(first_sku(&goods), Shelf::Off).unwrap();
    let stale = record(&tenant, AuditAction::GoodsChanged, goods.id().to_string());
    let stale_events = [goods_event(&goods)];
    let refused = store
        .update_goods(
            &goods,
            read + 1,
            Trail::events(&stale_events).audited(&stale),
        )
        .await;
    assert!(refused.is_err());
    // A record whose id is stored already refuses the change with it.
    let repeated = AuditRecord {
        id: created.id,
        ..stale.clone()
    };
    let refused = store
        .update_goods(&goods, read, Trail::NONE.audited(&repeated))
        .await;
    assert!(refused.is_err());
    assert_eq!(
        store
            .goods(&tenant, goods.id())
            .await
            .unwrap()
            .unwrap()
            .version(),
        read,
        "a refused trail leaves the goods as they were"
    );
    assert_eq!(audited(&*store, &tenant).await, [created.id]);
    store
        .update_goods(&goods, read, Trail::events(&stale_events).audited(&stale))
        .await
        .unwrap();
    assert_eq!(audited(&*store, &tenant).await, [stale.id, created.id]);
    assert_eq!(
        store
            .aggregate_events(&tenant, "goods", &goods.id().to_string())
            .await
            .unwrap()
            .len(),
        2
    );

    // Cards: imported with their record; refused (sealed with a key no longer active)
    // without it.
    let sku = first_sku(&goods);
    let import = record(&tenant, AuditAction::Import, sku.to_string());
    let outcome = store
        .insert_cards(
            &tenant,
            &fixtures::cards(sku, 2),
            t0(),
            Trail::NONE.audited(&import),
        )
        .await
        .unwrap();
    assert_eq!(outcome.inserted.len(), 2);
    fixtures::rotate_ring(&*store, &tenant).await;
    let late = record(&tenant, AuditAction::Import, sku.to_string());
    let refused = store
        .insert_cards(
            &tenant,
            &fixtures::cards(sku, 1),
            t0(),
            Trail::NONE.audited(&late),
        )
        .await;
    assert!(refused.is_err());
    assert_eq!(
        audited(&*store, &tenant).await,
        [import.id, stale.id, created.id]
    );
    assert_eq!(store.stock(&tenant, sku, t0()).await.unwrap().available, 2);

    // The key ring: a stale version writes nothing, a current one its record.
    let (ring, version) = store.key_ring(&tenant).await.unwrap().unwrap();
    let changed = record(&tenant, AuditAction::KeyRotated, tenant.to_string());
    assert!(
        store
            .update_key_ring(&ring, version + 1, Trail::NONE.audited(&changed))
            .await
            .is_err()
    );
    assert_eq!(audited(&*store, &tenant).await.len(), 3);
    let next = store
        .update_key_ring(&ring, version, Trail::NONE.audited(&changed))
        .await
        .unwrap();
    assert_eq!(audited(&*store, &tenant).await[0], changed.id);

    // A key destroyed with its record; the first key sealed the imported cards.
    let first = quanyi_vault::KeyId(1);
    let mut destroyed_ring = ring.clone();
    destroyed_ring
        .keys
        .iter_mut()
        .filter(|k| k.id == first)
        .for_each(|k| k.state = quanyi_vault::KeyState::Destroyed);
    let destroyed = record(&tenant, AuditAction::KeyDestroyed, first.to_string());
    let outcome = store
        .destroy_key(
            &destroyed_ring,
            next,
            first,
            t0(),
            Trail::NONE.audited(&destroyed),
        )
        .await
        .unwrap();
    assert_eq!(outcome.shredded, 2);
    assert_eq!(audited(&*store, &tenant).await[0], destroyed.id);

    // An order changed by an operator: with its record, or not at all.
    let (placed, placed_events) = fixtures::order(&goods, &fixtures::member("ops-case"), 1);
    store
        .insert_order(&placed, &fixtures::envelopes(&placed, &placed_events), &[])
        .await
        .unwrap();
    let mut cancelled = placed.clone();
    let events = cancelled.cancel("operator".into(), t0()).unwrap();
    let envs = fixtures::envelopes(&cancelled, &events);
    let decided = record(
        &tenant,
        AuditAction::HeldLineResolved,
        placed.id().to_string(),
    );
    let stale = quanyi_storage::OrderChange {
        order: &cancelled,
        expected_version: placed.version() + 1,
        events: &envs,
    };
    assert!(store.update_order(stale, Some(&decided)).await.is_err());
    let repeated = AuditRecord {
        id: destroyed.id,
        ..decided.clone()
    };
    let change = quanyi_storage::OrderChange {
        order: &cancelled,
        expected_version: placed.version(),
        events: &envs,
    };
    assert!(store.update_order(change, Some(&repeated)).await.is_err());
    assert_eq!(
        store
            .order(&tenant, placed.id())
            .await
            .unwrap()
            .unwrap()
            .version(),
        placed.version(),
        "a refused record leaves the order as it was"
    );
    assert_eq!(audited(&*store, &tenant).await[0], destroyed.id);
    store.update_order(change, Some(&decided)).await.unwrap();
    assert_eq!(audited(&*store, &tenant).await[0], decided.id);
    assert_eq!(
        store
            .order(&tenant, placed.id())
            .await
            .unwrap()
            .unwrap()
            .status(),
        quanyi_order::OrderStatus::Cancelled
    );

    // Another tenant's records are its own.
    assert!(audited(&*store, &fixtures::tenant()).await.is_empty());
}
