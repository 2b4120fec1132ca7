//! Conformance cases of the vault: cards only under the active key, blind-index schemes and
//! re-indexing, withdrawal, and destroyed keys.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::Duration;
use quanyi_core::{BatchId, CardId, OrderId};
use quanyi_goods::PurchaseLimits;
use quanyi_storage::{CardState, Error, IndexChange, Reindexed, Store};
use quanyi_vault::{BlindIndex, IndexScheme, KeyId, KeyRing, KeyState, SealedCard, SealedValue};

use super::kind_of;
use crate::fixtures::{self, card_goods, cards, first_sku, id, t0};

fn index(byte: u8) -> BlindIndex {
    BlindIndex::from_bytes([byte; 32])
}

fn sealed() -> SealedCard {
    SealedCard {
        code: SealedValue::from_bytes(vec![3; 40]),
        secret: None,
    }
}

fn is_key_not_active<T: std::fmt::Debug>(r: &Result<T, Error>) -> bool {
    matches!(r, Err(Error::KeyNotActive { .. }))
}

/// Storage takes cards only sealed with the tenant's active key: a tenant with no ring, a key
/// the ring does not have, and a rotated-out key are refused, and nothing is written.
pub async fn cards_need_the_active_key(store: Arc<dyn Store>) {
    let no_ring = fixtures::tenant();
    let sku = first_sku(&card_goods(&no_ring, PurchaseLimits::default()));
    let batch = cards(sku, 2);
    let r = store
        .insert_cards(&no_ring, &batch, t0(), quanyi_storage::Trail::NONE)
        .await;
    assert!(is_key_not_active(&r), "{r:?}");
    assert!(store.card(&no_ring, batch[0].id).await.unwrap().is_none());

    let tenant = fixtures::vault_tenant(&*store).await;
    let mut wrong = cards(sku, 2);
    wrong[1].key_id = KeyId(2);
    let r = store
        .insert_cards(&tenant, &wrong, t0(), quanyi_storage::Trail::NONE)
        .await;
    assert!(is_key_not_active(&r), "{r:?}");
    assert!(store.card(&tenant, wrong[0].id).await.unwrap().is_none());
    assert_eq!(store.stock(&tenant, sku, t0()).await.unwrap().available, 0);

    let kept = cards(sku, 1);
    store
        .insert_cards(&tenant, &kept, t0(), quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    assert_eq!(fixtures::rotate_ring(&*store, &tenant).await, KeyId(2));
    // k1 is decrypt-only now: no new card under it, by import or by reseal.
    let r = store
        .insert_cards(&tenant, &cards(sku, 1), t0(), quanyi_storage::Trail::NONE)
        .await;
    assert!(is_key_not_active(&r), "{r:?}");
    let r = store
        .replace_sealed(&tenant, kept[0].id, KeyId(1), &sealed(), KeyId(1))
        .await;
    assert!(is_key_not_active(&r), "{r:?}");
    let card = store.card(&tenant, kept[0].id).await.unwrap().unwrap();
    assert_eq!(card.key_id, KeyId(1));
    let mut fresh = cards(sku, 1);
    fresh[0].key_id = KeyId(2);
    assert_eq!(
        store
            .insert_cards(&tenant, &fresh, t0(), quanyi_storage::Trail::NONE)
            .await
            .unwrap()
            .inserted,
        vec![fresh[0].id]
    );
    assert_eq!(store.stock(&tenant, sku, t0()).await.unwrap().available, 2);
}

/// Imports under the old key racing a rotation: once the rotation is stored, no card sealed with
/// the old key is ever added, so resealing what the old key sealed and then retiring it loses
/// nothing.
pub async fn an_import_racing_a_rotation_never_stores_an_old_key(store: Arc<dyn Store>) {
    let tenant = fixtures::vault_tenant(&*store).await;
    let sku = first_sku(&card_goods(&tenant, PurchaseLimits::default()));
    let rotated = Arc::new(AtomicBool::new(false));
    let importer = {
        let (store, tenant, rotated) = (store.clone(), tenant.clone(), rotated.clone());
        tokio::spawn(async move {
            let mut stored_after = 0usize;
            let mut refused = 0usize;
            // Keep importing under k1 until the importer has seen k1 refused a few times.
            while refused < 3 {
                let after_rotation = rotated.load(Ordering::SeqCst);
                match store
                    .insert_cards(&tenant, &cards(sku, 8), t0(), quanyi_storage::Trail::NONE)
                    .await
                {
                    Ok(out) if after_rotation => stored_after += out.inserted.len(),
                    Ok(_) => {}
                    Err(Error::KeyNotActive { .. }) => refused += 1,
                    Err(e) => panic!("{e}"),
                }
                tokio::task::yield_now().await;
            }
            stored_after
        })
    };
    // Let some imports land first.
    while store.stock(&tenant, sku, t0()).await.unwrap().available < 16 {
        tokio::task::yield_now().await;
    }
    fixtures::rotate_ring(&*store, &tenant).await;
    rotated.store(true, Ordering::SeqCst);
    let at_rotation = store
        .cards_sealed_with(&tenant, KeyId(1), 1_000_000)
        .await
        .unwrap()
        .len();
    let stored_after = importer.await.unwrap();
    assert_eq!(
        stored_after, 0,
        "imports under k1 began after the rotation was stored"
    );
    let after = store
        .cards_sealed_with(&tenant, KeyId(1), 1_000_000)
        .await
        .unwrap()
        .len();
    assert_eq!(
        after, at_rotation,
        "cards under k1 appeared after the rotation"
    );
}

/// A card's legacy index is checked like its index: a stored card found under either is a
/// duplicate, in imports and in bought cards.
pub async fn legacy_indexes_find_stored_cards(store: Arc<dyn Store>) {
    let tenant = fixtures::vault_tenant(&*store).await;
    let sku = first_sku(&card_goods(&tenant, PurchaseLimits::default()));
    let batch = id(BatchId::generate);
    let mut old = fixtures::card_with_index(sku, batch, [1; 32]);
    old.index_scheme = IndexScheme::Legacy;
    store
        .insert_cards(
            &tenant,
            std::slice::from_ref(&old),
            t0(),
            quanyi_storage::Trail::NONE,
        )
        .await
        .unwrap();
    let stored = store.card(&tenant, old.id).await.unwrap().unwrap();
    assert_eq!(stored.index_scheme, IndexScheme::Legacy);
    // A variant whose new index is unknown but whose legacy index is the stored card's.
    let mut variant = fixtures::card_with_index(sku, batch, [2; 32]);
    variant.legacy_index = Some(index(1));
    let plain = fixtures::card_with_index(sku, batch, [3; 32]);
    let out = store
        .insert_cards(
            &tenant,
            &[variant.clone(), plain.clone()],
            t0(),
            quanyi_storage::Trail::NONE,
        )
        .await
        .unwrap();
    assert_eq!(out.duplicates, vec![0]);
    assert_eq!(out.inserted, vec![plain.id]);
    assert!(store.card(&tenant, variant.id).await.unwrap().is_none());
    // A legacy index no one holds is not stored: the card is found by its index only.
    let mut fresh = fixtures::card_with_index(sku, batch, [4; 32]);
    fresh.legacy_index = Some(index(5));
    store
        .insert_cards(&tenant, &[fresh], t0(), quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    let again = fixtures::card_with_index(sku, batch, [5; 32]);
    assert_eq!(
        store
            .insert_cards(&tenant, &[again], t0(), quanyi_storage::Trail::NONE)
            .await
            .unwrap()
            .duplicates,
        Vec::<usize>::new()
    );
    // Another tenant's legacy indexes are its own.
    let other = fixtures::vault_tenant(&*store).await;
    let mut there = fixtures::card_with_index(sku, batch, [6; 32]);
    there.legacy_index = Some(index(1));
    assert_eq!(
        store
            .insert_cards(&other, &[there], t0(), quanyi_storage::Trail::NONE)
            .await
            .unwrap()
            .inserted
            .len(),
        1
    );
}

/// Re-indexing lists the cards of older schemes in card order and moves each on its own: to the
/// new index, or, when another card holds it, keeping the old one (a duplicate); a change whose
/// card no longer holds `from` does nothing. No card is ever without an index.
pub async fn reindex_moves_cards_and_finds_duplicates(store: Arc<dyn Store>) {
    let tenant = fixtures::vault_tenant(&*store).await;
    let sku = first_sku(&card_goods(&tenant, PurchaseLimits::default()));
    let batch = id(BatchId::generate);
    let mut old: Vec<_> = (10..14u8)
        .map(|b| {
            let mut c = fixtures::card_with_index(sku, batch, [b; 32]);
            c.index_scheme = IndexScheme::Legacy;
            c
        })
        .collect();
    // In card order, each with the next index: old[i] holds [10 + i; 32].
    let mut ids: Vec<CardId> = old.iter().map(|c| c.id).collect();
    ids.sort();
    for (c, id) in old.iter_mut().zip(ids) {
        c.id = id;
    }
    let current = fixtures::card_with_index(sku, batch, [20; 32]);
    store
        .insert_cards(&tenant, &old, t0(), quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    store
        .insert_cards(
            &tenant,
            std::slice::from_ref(&current),
            t0(),
            quanyi_storage::Trail::NONE,
        )
        .await
        .unwrap();
    let todo = store
        .cards_to_reindex(&tenant, IndexScheme::CURRENT, 3)
        .await
        .unwrap();
    assert_eq!(
        todo.iter().map(|c| c.id).collect::<Vec<_>>(),
        old[..3].iter().map(|c| c.id).collect::<Vec<_>>()
    );
    assert!(
        store
            .cards_to_reindex(&tenant, IndexScheme::Legacy, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let change = |c: &quanyi_storage::NewCard, to: u8| IndexChange {
        card: c.id,
        from: c.blind_index,
        to: index(to),
        scheme: IndexScheme::CURRENT,
    };
    let answers = store
        .reindex_cards(
            &tenant,
            &[
                change(&old[0], 30), // a new index no one holds
                change(&old[1], 11), // unchanged by the new scheme
                change(&old[2], 20), // the current card's index: a duplicate
                IndexChange {
                    from: index(99), // not what the card holds
                    ..change(&old[3], 31)
                },
                IndexChange {
                    card: id(CardId::generate), // no such card
                    ..change(&old[3], 32)
                },
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        answers,
        vec![
            Reindexed::Moved,
            Reindexed::Moved,
            Reindexed::Duplicate { holder: current.id },
            Reindexed::Stale,
            Reindexed::Stale,
        ]
    );
    let card = |n: usize| {
        let (store, tenant, id) = (store.clone(), tenant.clone(), old[n].id);
        async move { store.card(&tenant, id).await.unwrap().unwrap() }
    };
    assert_eq!(
        (card(0).await.blind_index, card(0).await.index_scheme),
        (index(30), IndexScheme::CURRENT)
    );
    assert_eq!(card(1).await.blind_index, index(11));
    assert_eq!(
        (card(2).await.blind_index, card(2).await.index_scheme),
        (index(12), IndexScheme::CURRENT)
    );
    assert_eq!(card(3).await.index_scheme, IndexScheme::Legacy);
    assert_eq!(
        store
            .cards_to_reindex(&tenant, IndexScheme::CURRENT, 10)
            .await
            .unwrap()
            .iter()
            .map(|c| c.id)
            .collect::<Vec<_>>(),
        vec![old[3].id]
    );
    // Every index is still held: the moved card's new one, the kept old ones. The moved card's
    // old index is free again.
    let probe = |byte: u8| fixtures::card_with_index(sku, batch, [byte; 32]);
    let probes = [probe(30), probe(11), probe(12), probe(20), probe(10)];
    let out = store
        .insert_cards(&tenant, &probes, t0(), quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    assert_eq!(out.duplicates, vec![0, 1, 2, 3]);
    assert_eq!(out.inserted, vec![probes[4].id]);
    // Another tenant's cards are not touched, nor listed.
    let other = fixtures::vault_tenant(&*store).await;
    assert!(
        store
            .cards_to_reindex(&other, IndexScheme::CURRENT, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .reindex_cards(&other, &[change(&old[3], 40)])
            .await
            .unwrap(),
        vec![Reindexed::Stale]
    );
    assert_eq!(card(3).await.blind_index, index(13));
}

/// Withdrawn cards leave sale for good: out of every stock figure, never reserved or sold,
/// released from the unpaid order that held one, and still duplicates for imports.
pub async fn withdrawn_cards_leave_sale_for_good(store: Arc<dyn Store>) {
    let tenant = fixtures::vault_tenant(&*store).await;
    let sku = first_sku(&card_goods(&tenant, PurchaseLimits::default()));
    let batch = cards(sku, 5);
    store
        .insert_cards(&tenant, &batch, t0(), quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    let until = t0() + Duration::minutes(15);
    let unpaid = id(OrderId::generate);
    let reserved = store
        .reserve_cards(&tenant, sku, unpaid, 2, until, t0())
        .await
        .unwrap();
    let paid = id(OrderId::generate);
    let sold = store
        .commit_cards(&tenant, sku, paid, 1, t0())
        .await
        .unwrap();
    let free: Vec<CardId> = batch
        .iter()
        .map(|c| c.id)
        .filter(|c| !reserved.contains(c) && !sold.contains(c))
        .collect();
    assert_eq!(free.len(), 2);
    let later = t0() + Duration::seconds(5);
    let asked = [free[0], reserved[0], sold[0], id(CardId::generate)];
    let withdrawn = store.withdraw_cards(&tenant, &asked, later).await.unwrap();
    assert_eq!(withdrawn, vec![free[0], reserved[0]]);
    assert_eq!(
        store.withdraw_cards(&tenant, &asked, later).await.unwrap(),
        Vec::<CardId>::new(),
        "withdrawing again changes nothing"
    );
    for c in &withdrawn {
        let card = store.card(&tenant, *c).await.unwrap().unwrap();
        assert_eq!(card.state, CardState::Withdrawn { at: later });
    }
    let stock = store.stock(&tenant, sku, t0()).await.unwrap();
    assert_eq!((stock.available, stock.reserved, stock.sold), (1, 1, 1));
    // The unpaid order holds only its other card; paid, it gets a free one instead.
    let held = store.held_cards(&tenant, unpaid).await.unwrap();
    assert_eq!(
        held.iter().map(|c| c.id).collect::<Vec<_>>(),
        vec![reserved[1]]
    );
    let committed = store
        .commit_cards(&tenant, sku, unpaid, 2, t0())
        .await
        .unwrap();
    assert_eq!(committed.len(), 2);
    assert!(!committed.contains(&reserved[0]));
    assert!(committed.contains(&free[1]));
    // Nothing is left to sell, even after every deadline.
    let r = store
        .reserve_cards(&tenant, sku, id(OrderId::generate), 1, until, until)
        .await;
    assert!(matches!(r, Err(Error::OutOfStock { .. })), "{r:?}");
    assert_eq!(store.release_cards(&tenant, unpaid).await.unwrap(), 0);
    // A withdrawn card's index still marks its code as held.
    let again = fixtures::card_with_index(
        sku,
        id(BatchId::generate),
        *batch
            .iter()
            .find(|c| c.id == free[0])
            .map(|c| c.blind_index)
            .unwrap_or(index(0))
            .as_bytes(),
    );
    assert_eq!(
        store
            .insert_cards(&tenant, &[again], t0(), quanyi_storage::Trail::NONE)
            .await
            .unwrap()
            .duplicates,
        vec![0]
    );
    // Another tenant cannot withdraw them.
    let other = fixtures::vault_tenant(&*store).await;
    assert!(
        store
            .withdraw_cards(&other, &[free[1]], later)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Destroying a key stores the ring and, in the same step, empties the sealed values of every
/// card sealed with it and withdraws the unsold ones; other keys' cards and other tenants are
/// untouched. A stale ring version writes nothing.
pub async fn a_destroyed_key_shreds_what_it_sealed(store: Arc<dyn Store>) {
    let tenant = fixtures::vault_tenant(&*store).await;
    let sku = first_sku(&card_goods(&tenant, PurchaseLimits::default()));
    let old = cards(sku, 3);
    store
        .insert_cards(&tenant, &old, t0(), quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    let paid = id(OrderId::generate);
    let sold = store
        .commit_cards(&tenant, sku, paid, 1, t0())
        .await
        .unwrap();
    let other = fixtures::vault_tenant(&*store).await;
    let theirs = cards(sku, 1);
    store
        .insert_cards(&other, &theirs, t0(), quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    assert_eq!(fixtures::rotate_ring(&*store, &tenant).await, KeyId(2));
    let mut new = cards(sku, 1);
    new[0].key_id = KeyId(2);
    store
        .insert_cards(&tenant, &new, t0(), quanyi_storage::Trail::NONE)
        .await
        .unwrap();

    let (wrapped, version) = store.key_ring(&tenant).await.unwrap().unwrap();
    let mut ring = KeyRing::unwrap(&fixtures::root_key(), &wrapped).unwrap();
    // A ring that does not mark the key destroyed is refused.
    assert_eq!(
        kind_of(
            store
                .destroy_key(
                    &ring.to_wrapped(),
                    version,
                    KeyId(1),
                    t0(),
                    quanyi_storage::Trail::NONE
                )
                .await
        ),
        quanyi_core::ErrorKind::Invalid
    );
    ring.destroy(KeyId(1)).unwrap();
    let destroyed = ring.to_wrapped();
    assert_eq!(
        kind_of(
            store
                .destroy_key(
                    &destroyed,
                    version + 5,
                    KeyId(1),
                    t0(),
                    quanyi_storage::Trail::NONE
                )
                .await
        ),
        quanyi_core::ErrorKind::Conflict
    );
    assert_eq!(
        store
            .card(&tenant, old[0].id)
            .await
            .unwrap()
            .unwrap()
            .sealed,
        old[0].sealed,
        "a refused destruction writes nothing"
    );
    let later = t0() + Duration::seconds(1);
    let outcome = store
        .destroy_key(
            &destroyed,
            version,
            KeyId(1),
            later,
            quanyi_storage::Trail::NONE,
        )
        .await
        .unwrap();
    assert_eq!((outcome.shredded, outcome.withdrawn), (3, 2));
    let (stored, after) = store.key_ring(&tenant).await.unwrap().unwrap();
    assert_eq!(after, outcome.version);
    assert!(after > version);
    assert_eq!(stored.keys[0].state, KeyState::Destroyed);
    for c in &old {
        let card = store.card(&tenant, c.id).await.unwrap().unwrap();
        assert!(card.sealed.code.as_bytes().is_empty(), "shredded");
        assert!(card.sealed.secret.is_none());
        if sold.contains(&c.id) {
            assert!(matches!(card.state, CardState::Sold { .. }));
        } else {
            assert_eq!(card.state, CardState::Withdrawn { at: later });
        }
    }
    let kept = store.card(&tenant, new[0].id).await.unwrap().unwrap();
    assert_eq!(kept.sealed, new[0].sealed);
    let stock = store.stock(&tenant, sku, t0()).await.unwrap();
    assert_eq!((stock.available, stock.sold), (1, 1));
    let theirs_now = store.card(&other, theirs[0].id).await.unwrap().unwrap();
    assert_eq!(theirs_now.sealed, theirs[0].sealed);
    assert_eq!(theirs_now.state, CardState::Available);
}
