//! Conformance cases of the goods port.

use super::*;

/// Goods are stored, found by id and by SKU, listed, and updated with their version.
pub async fn goods_round_trip(store: Arc<dyn Store>) {
    let tenant = fixtures::tenant();
    let mut goods = card_goods(&tenant, PurchaseLimits::default());
    store
        .insert_goods(&goods, quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    assert_eq!(
        store.goods(&tenant, goods.id()).await.unwrap().as_ref(),
        Some(&goods)
    );
    let sku = first_sku(&goods);
    assert_eq!(
        store.goods_by_sku(&tenant, sku).await.unwrap().as_ref(),
        Some(&goods)
    );
    let before = goods.version();
    goods.set_shelf(sku, Shelf::Off).unwrap();
    store
        .update_goods(&goods, before, quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    let stored = store.goods(&tenant, goods.id()).await.unwrap().unwrap();
    assert_eq!(stored.sku(sku).unwrap().shelf, Shelf::Off);
    assert_eq!(stored.version(), goods.version());
    assert_eq!(
        store.list_goods(&tenant).await.unwrap(),
        vec![goods.clone()]
    );
    assert_eq!(
        kind_of(
            store
                .insert_goods(&goods, quanyi_storage::Trail::NONE)
                .await
        ),
        quanyi_core::ErrorKind::Conflict
    );
}

/// Writing goods with a stale version is a conflict and changes nothing.
pub async fn goods_stale_version_conflicts(store: Arc<dyn Store>) {
    let tenant = fixtures::tenant();
    let mut goods = card_goods(&tenant, PurchaseLimits::default());
    store
        .insert_goods(&goods, quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    let loaded = goods.version();
    let sku = first_sku(&goods);
    goods.set_shelf(sku, Shelf::Off).unwrap();
    store
        .update_goods(&goods, loaded, quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    let mut stale = goods.clone();
    stale.set_shelf(sku, Shelf::On).unwrap();
    assert_eq!(
        kind_of(
            store
                .update_goods(&stale, loaded, quanyi_storage::Trail::NONE)
                .await
        ),
        quanyi_core::ErrorKind::Conflict
    );
    let stored = store.goods(&tenant, goods.id()).await.unwrap().unwrap();
    assert_eq!(stored.sku(sku).unwrap().shelf, Shelf::Off);
    let unknown = card_goods(&tenant, PurchaseLimits::default());
    assert_eq!(
        kind_of(
            store
                .update_goods(&unknown, 1, quanyi_storage::Trail::NONE)
                .await
        ),
        quanyi_core::ErrorKind::NotFound
    );
}
