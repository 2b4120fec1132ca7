//! Shop cases of the vault's keys and codes: invisible variants, re-indexing, retirement and destruction across shops.

use super::*;

/// A code written with invisible or compatibility characters is the code itself: importing it
/// after the code, or beside it in one file, finds a duplicate, so it is never sold twice.
pub async fn invisible_variants_of_a_code_are_duplicates(store: Arc<dyn Store>) {
    let rig = Rig::new(store);
    let shop = rig.shop();
    let sku = card_sku(&shop).await;
    import(&shop, sku, &["QY-1234-ABCD"]).await;
    let variants = [
        "QY-1234\u{200B}-ABCD",
        "ＱＹ－１２３４－ＡＢＣＤ",
        "QY\u{2013}1234\u{2014}ABCD",
        "qy-1234-abcd\u{00AD}",
        "\u{FEFF}QY-1234-ABCD\u{200D}",
        "QY\u{2212}1234\u{2060}ABCD",
    ];
    let report = import(&shop, sku, &variants).await;
    assert_eq!(report.imported, 0, "{report}");
    assert_eq!(report.duplicates.len(), variants.len());
    // The first variant repeats the stored code; the rest repeat the first (and the code).
    assert_eq!(report.duplicates[0].of, DuplicateOf::Stored);
    assert!(
        report.duplicates[1..]
            .iter()
            .all(|d| d.of == DuplicateOf::Line(1))
    );
    assert_eq!(shop.stock().count(sku).await.unwrap().available, 1);
    // Within one file, too.
    let report = import(&shop, sku, &["NEW-0001", "NEW\u{200B}-0001", "ＮＥＷ-0001"]).await;
    assert_eq!(report.imported, 1);
    assert_eq!(
        report
            .duplicates
            .iter()
            .map(|d| (d.line, d.of))
            .collect::<Vec<_>>(),
        vec![(2, DuplicateOf::Line(1)), (3, DuplicateOf::Line(1))]
    );
    assert_eq!(shop.stock().count(sku).await.unwrap().available, 2);
}

/// Seals `codes` the way a shop of the legacy scheme did: sealed under the active key, indexed
/// under [`IndexScheme::Legacy`], and marks the ring as holding legacy-indexed cards.
async fn store_legacy_cards(rig: &Rig, sku: SkuId, codes: &[&str]) -> Vec<quanyi::CardId> {
    let store = &rig.store;
    let root = RootKey::from_bytes(rig.root);
    let (wrapped, _) = store.key_ring(&rig.tenant).await.unwrap().unwrap();
    let ring = KeyRing::unwrap(&root, &wrapped).unwrap();
    let key = ring.active_key_id();
    let uses = u64::try_from(codes.len()).unwrap();
    store
        .reserve_key_uses(&rig.tenant, key, uses, quanyi_vault::DEFAULT_KEY_USE_LIMIT)
        .await
        .unwrap();
    ring.grant(key, uses).unwrap();
    let batch = fixtures::id(quanyi_core::BatchId::generate);
    let cards: Vec<NewCard> = {
        let mut rng = rand::thread_rng();
        let ids = quanyi::CardId::generate_sequence(t0(), &mut rng, codes.len());
        codes
            .iter()
            .zip(&ids)
            .map(|(code, id)| {
                let card = CardKey::new(CardCode::new(*code).unwrap(), None);
                NewCard {
                    id: *id,
                    sku,
                    batch,
                    blind_index: ring.blind_index_as(&card, IndexScheme::Legacy),
                    index_scheme: IndexScheme::Legacy,
                    legacy_index: None,
                    sealed: ring
                        .seal_card(&rig.tenant, sku, *id, &card, &mut rng)
                        .unwrap(),
                    key_id: key,
                }
            })
            .collect()
    };
    let out = store
        .insert_cards(&rig.tenant, &cards, t0(), quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    assert_eq!(out.inserted.len(), codes.len(), "legacy cards are distinct");
    let (mut wrapped, version) = store.key_ring(&rig.tenant).await.unwrap().unwrap();
    wrapped.oldest_index_scheme = IndexScheme::Legacy;
    store
        .update_key_ring(&wrapped, version, quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    cards.iter().map(|c| c.id).collect()
}

/// A store holding keys indexed the legacy way is re-indexed by a job that opens each card: it
/// can stop (a limit, or a failed write) and resume, no card is ever without an index, cards
/// that turn out to be one code are settled (the unsold copy withdrawn), and once it finishes
/// imports find every variant.
pub async fn reindexing_moves_legacy_keys_and_resumes_after_a_stop(store: Arc<dyn Store>) {
    let rig = Rig::new(store);
    let setup = rig.shop();
    let sold_sku = card_sku(&setup).await;
    let sku = card_sku(&setup).await;
    setup.data_keys().await.unwrap();
    // The legacy era: one code stored twice (one copy sold), and codes with invisible or
    // compatibility characters.
    store_legacy_cards(&rig, sold_sku, &["LG-0004-DUP"]).await;
    let legacy = [
        "LG-0001-PLAIN",
        "LG-0002\u{200B}-ZW",
        "ＬＧ-0003-FW",
        "LG-0004\u{200B}-DUP",
        "LG-0005\u{00AD}-SH",
        "LG-0006-PLAIN",
        "LG-0007\u{FEFF}-BOM",
    ];
    store_legacy_cards(&rig, sku, &legacy).await;
    let sold = buy(&setup, sold_sku, &member("early"), 1).await;
    assert_eq!(sold.status(), OrderStatus::Delivered);

    // The upgraded process.
    let hooked = HookedStore::new(rig.store.clone());
    let shop = rig.shop_on(hooked.clone());
    // Until re-indexing ends, an identical legacy code is still a duplicate (its legacy index)...
    let again = import(&shop, sku, &["LG-0002\u{200B}-ZW"]).await;
    assert_eq!((again.imported, again.duplicates.len()), (0, 1));
    // ...and a plain spelling of it is stored: it can only be found once the old card has its
    // new index. Re-indexing then settles the pair.
    let plain = import(&shop, sku, &["LG-0002-ZW"]).await;
    assert_eq!(plain.imported, 1);

    // A first pass stops at its limit.
    let first = shop.reindex_card_keys(3).await.unwrap();
    assert_eq!((first.examined, first.finished), (3, false));
    // A second stops on a failed write: nothing of its batch changed, nothing is lost.
    hooked.fail_next("reindex_cards", 1);
    assert!(shop.reindex_card_keys(3).await.is_err());
    let left = rig
        .store
        .cards_to_reindex(&rig.tenant, IndexScheme::CURRENT, 100)
        .await
        .unwrap();
    assert_eq!(left.len(), 8 - 3);
    // Every code still finds its card, halfway through.
    let everything: Vec<&str> = legacy.iter().copied().chain(["LG-0004-DUP"]).collect();
    let report = import(&shop, sku, &everything).await;
    assert_eq!(report.imported, 0, "{report}");

    // Resumed by the worker, pass by pass, until it is done.
    let worker = Worker::new(shop.clone()).batch(1);
    let mut passes = 0;
    while rig
        .store
        .key_ring(&rig.tenant)
        .await
        .unwrap()
        .unwrap()
        .0
        .oldest_index_scheme
        < IndexScheme::CURRENT
    {
        let run = worker.run_once().await.unwrap();
        assert!(run.reindexed > 0 || passes > 0);
        passes += 1;
        assert!(passes < 20, "re-indexing does not finish");
    }
    assert!(
        rig.store
            .cards_to_reindex(&rig.tenant, IndexScheme::CURRENT, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(shop.reindex_card_keys(10).await.unwrap().finished);

    // Both pairs were settled: the unsold legacy copy of the sold code, and the legacy card
    // whose plain spelling was stored meanwhile.
    let audit = shop.audit_log(100).await.unwrap();
    let withdrawals = audit
        .iter()
        .filter(|r| r.action == AuditAction::CardsWithdrawn)
        .count();
    assert_eq!(withdrawals, 2, "{audit:?}");
    let mut withdrawn = 0;
    for card in rig
        .store
        .cards_sealed_with(&rig.tenant, KeyId(1), 100)
        .await
        .unwrap()
    {
        assert_eq!(card.index_scheme, IndexScheme::CURRENT);
        if matches!(card.state, CardState::Withdrawn { .. }) {
            withdrawn += 1;
        }
    }
    assert_eq!(withdrawn, 2);
    // The pool sells what is left: 6 legacy codes and the plain one, less the two withdrawn.
    assert_eq!(shop.stock().count(sku).await.unwrap().available, 7 + 1 - 2);
    // Now every variant is found.
    let variants = [
        "LG-0001-PLAIN",
        "LG-0002-ZW",
        "LG-0003-FW",
        "LG-0004-DUP",
        "LG-0005-SH",
        "LG-0006-PLAIN",
        "LG-0007-BOM",
        "LG\u{2010}0001\u{2010}PLAIN",
    ];
    let report = import(&shop, sku, &variants).await;
    assert_eq!(report.imported, 0, "{report}");
}

/// An import that sealed under the active key while another process rotated it, resealed what
/// it held and retired it, is refused by the store and sealed again under the new key: no card
/// is stored under a key that is not active, and every card opens.
pub async fn an_import_racing_a_retirement_is_sealed_again(store: Arc<dyn Store>) {
    let rig = Rig::new(store);
    let hooked = HookedStore::new(rig.store.clone());
    let importer = rig.shop_on(hooked.clone());
    let operator = rig.shop();
    let sku = card_sku(&importer).await;
    import(&importer, sku, &["RACE-0001", "RACE-0002"]).await;
    // After the importer sealed its batch and reserved the key's uses, the operator rotates,
    // reseals what the old key sealed and retires it.
    let op = operator.clone();
    hooked.before_next("insert_cards", move || async move {
        let new = op.rotate_data_key(&admin()).await.unwrap();
        assert_eq!(new, KeyId(2));
        assert_eq!(op.reseal_cards(&admin(), KeyId(1)).await.unwrap(), 2);
        op.retire_key(&admin(), KeyId(1)).await.unwrap();
    });
    let report = import(&importer, sku, &["RACE-0003", "RACE-0004", "RACE-0005"]).await;
    assert_eq!(report.imported, 3);
    assert_eq!(
        hooked.calls("insert_cards"),
        3,
        "the refused batch was sealed again"
    );
    assert!(
        rig.store
            .cards_sealed_with(&rig.tenant, KeyId(1), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        operator.data_keys().await.unwrap(),
        vec![(KeyId(1), KeyState::Retired), (KeyId(2), KeyState::Active)]
    );
    // Every card opens for its buyer, in either process.
    let buyer = member("racer");
    let order = buy(&importer, sku, &buyer, 5).await;
    assert_eq!(order.status(), OrderStatus::Delivered);
    let mut codes = revealed(&operator, &buyer, &order).await.unwrap();
    codes.sort();
    assert_eq!(
        codes,
        [
            "RACE-0001",
            "RACE-0002",
            "RACE-0003",
            "RACE-0004",
            "RACE-0005"
        ]
    );
}

/// A destroyed key opens nothing again, at once, in every shop on the store, even one that has
/// the ring cached: what it sealed is shredded in the same write, and its unsold cards leave
/// sale. The shop goes on under a new key.
pub async fn a_destroyed_key_never_opens_again_in_any_shop(store: Arc<dyn Store>) {
    let rig = Rig::new(store);
    let seller = rig.shop();
    let operator = rig.shop();
    let sku = card_sku(&seller).await;
    import(&seller, sku, &["BURN-0001", "BURN-0002", "BURN-0003"]).await;
    let buyer = member("burnt");
    let order = buy(&seller, sku, &buyer, 1).await;
    assert_eq!(
        revealed(&seller, &buyer, &order).await.unwrap(),
        ["BURN-0001"]
    );
    let report = operator.destroy_key(&admin(), KeyId(1)).await.unwrap();
    assert_eq!(report.rotated_to, Some(KeyId(2)));
    assert_eq!((report.shredded, report.withdrawn), (3, 2));
    // The seller's cached ring still holds k1; the ciphertext is gone from the store.
    assert!(matches!(
        seller.reveal(&buyer, order.id()).await,
        Err(Error::RevealDenied)
    ));
    assert_eq!(seller.stock().count(sku).await.unwrap().available, 0);
    let card = rig
        .store
        .order_cards(&rig.tenant, order.id())
        .await
        .unwrap();
    assert!(card[0].sealed.code.as_bytes().is_empty());
    assert_eq!(
        operator.data_keys().await.unwrap(),
        vec![
            (KeyId(1), KeyState::Destroyed),
            (KeyId(2), KeyState::Active)
        ]
    );
    // The seller goes on under the new key.
    import(&seller, sku, &["BURN-0004"]).await;
    let next = buy(&seller, sku, &buyer, 1).await;
    assert_eq!(
        revealed(&seller, &buyer, &next).await.unwrap(),
        ["BURN-0004"]
    );
    let audit = operator.audit_log(50).await.unwrap();
    assert!(audit.iter().any(|r| r.action == AuditAction::KeyDestroyed));
    // A key the ring does not have is refused.
    assert!(operator.destroy_key(&admin(), KeyId(9)).await.is_err());
}

/// A retired key stops opening in another process within that process's key ring refresh:
/// a ciphertext under the retired key (from a lagging replica, say) opens there until the
/// refresh is due, and never after.
pub async fn a_retired_key_stops_opening_within_the_refresh(store: Arc<dyn Store>) {
    let rig = Rig::new(store);
    let hooked = HookedStore::new(rig.store.clone());
    let refresh = Duration::seconds(30);
    let seller = rig
        .builder(hooked.clone())
        .key_ring_refresh(refresh)
        .build()
        .unwrap();
    let operator = rig.shop();
    let sku = card_sku(&seller).await;
    import(&seller, sku, &["OLD-0001"]).await;
    let buyer = member("patient");
    let order = buy(&seller, sku, &buyer, 1).await;
    assert_eq!(
        revealed(&seller, &buyer, &order).await.unwrap(),
        ["OLD-0001"]
    );
    let before = rig
        .store
        .order_cards(&rig.tenant, order.id())
        .await
        .unwrap()
        .remove(0);
    operator.rotate_data_key(&admin()).await.unwrap();
    operator.reseal_cards(&admin(), KeyId(1)).await.unwrap();
    operator.retire_key(&admin(), KeyId(1)).await.unwrap();
    hooked.serve_stale(before.id, before.sealed.clone());
    // The operator's ring dropped k1 at once.
    let stale_operator = rig.shop_on(hooked.clone());
    assert!(matches!(
        stale_operator.reveal(&buyer, order.id()).await,
        Err(Error::RevealDenied)
    ));
    // The seller read its ring at the sale; once the refresh is due, k1 is gone there too.
    rig.clock.advance(refresh);
    assert!(matches!(
        seller.reveal(&buyer, order.id()).await,
        Err(Error::RevealDenied)
    ));
    // The resealed card opens everywhere.
    assert_eq!(
        revealed(&operator, &buyer, &order).await.unwrap(),
        ["OLD-0001"]
    );
}
