//! Conformance cases of key rings and resealing.

use super::*;

/// A key ring is stored once per tenant, updated by version, and its use counter never passes
/// the limit.
pub async fn key_ring_versions_and_use_limit(store: Arc<dyn Store>) {
    let tenant = fixtures::tenant();
    let root = quanyi_vault::RootKey::from_bytes([7; 32]);
    let (ring, wrapped) =
        quanyi_vault::KeyRing::create(tenant.clone(), &root, t0(), &mut rand::thread_rng())
            .unwrap();
    assert!(store.key_ring(&tenant).await.unwrap().is_none());
    store.insert_key_ring(&wrapped).await.unwrap();
    assert_eq!(
        kind_of(store.insert_key_ring(&wrapped).await),
        quanyi_core::ErrorKind::Conflict
    );
    let (loaded, v1) = store.key_ring(&tenant).await.unwrap().unwrap();
    assert_eq!(v1, 1);
    assert_eq!(loaded, wrapped);
    let key = ring.active_key_id();
    assert_eq!(
        store.reserve_key_uses(&tenant, key, 60, 100).await.unwrap(),
        60
    );
    assert_eq!(
        kind_of(store.reserve_key_uses(&tenant, key, 41, 100).await),
        quanyi_core::ErrorKind::Exhausted
    );
    assert_eq!(
        store.reserve_key_uses(&tenant, key, 40, 100).await.unwrap(),
        100
    );
    let (after, v3) = store.key_ring(&tenant).await.unwrap().unwrap();
    assert_eq!(v3, 3, "each reservation bumps the version");
    assert_eq!(
        after.keys.iter().find(|k| k.id == key).unwrap().encryptions,
        100
    );
    // A writer that loaded version 1 cannot overwrite the counters.
    assert_eq!(
        kind_of(
            store
                .update_key_ring(&wrapped, 1, quanyi_storage::Trail::NONE)
                .await
        ),
        quanyi_core::ErrorKind::Conflict
    );
    assert_eq!(
        store
            .update_key_ring(&after, 3, quanyi_storage::Trail::NONE)
            .await
            .unwrap(),
        4
    );
    // After a rotation the old key takes no more uses.
    let root_ring = quanyi_vault::KeyRing::unwrap(&root, &after).unwrap();
    let mut rotated = root_ring;
    let new_key = rotated
        .rotate(&root, t0(), &mut rand::thread_rng())
        .unwrap();
    assert_eq!(
        store
            .update_key_ring(&rotated.to_wrapped(), 4, quanyi_storage::Trail::NONE)
            .await
            .unwrap(),
        5
    );
    assert_eq!(
        kind_of(store.reserve_key_uses(&tenant, key, 1, 1000).await),
        quanyi_core::ErrorKind::Conflict
    );
    assert_eq!(
        store
            .reserve_key_uses(&tenant, new_key, 1, 1000)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        kind_of(store.reserve_key_uses(&tenant, KeyId(999), 1, 100).await),
        quanyi_core::ErrorKind::NotFound
    );
}

/// Resealed values replace the old ones only if the card is still under the expected key.
pub async fn reseal_replaces_ciphertext(store: Arc<dyn Store>) {
    let tenant = fixtures::vault_tenant(&*store).await;
    let sku = first_sku(&card_goods(&tenant, PurchaseLimits::default()));
    let batch = cards(sku, 3);
    store
        .insert_cards(&tenant, &batch, t0(), quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    let old = store.cards_sealed_with(&tenant, KeyId(1), 2).await.unwrap();
    assert_eq!(old.len(), 2);
    assert_eq!(fixtures::rotate_ring(&*store, &tenant).await, KeyId(2));
    let fresh = SealedCard {
        code: SealedValue::from_bytes(vec![9; 40]),
        secret: None,
    };
    store
        .replace_sealed(&tenant, old[0].id, KeyId(1), &fresh, KeyId(2))
        .await
        .unwrap();
    let card = store.card(&tenant, old[0].id).await.unwrap().unwrap();
    assert_eq!((card.key_id, &card.sealed), (KeyId(2), &fresh));
    assert_eq!(
        kind_of(
            store
                .replace_sealed(&tenant, old[0].id, KeyId(1), &fresh, KeyId(2))
                .await
        ),
        quanyi_core::ErrorKind::Conflict
    );
    assert_eq!(
        store
            .cards_sealed_with(&tenant, KeyId(1), 10)
            .await
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        store
            .cards_sealed_with(&tenant, KeyId(2), 10)
            .await
            .unwrap()
            .len(),
        1
    );
}
