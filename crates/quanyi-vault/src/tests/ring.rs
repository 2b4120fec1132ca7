use std::sync::atomic::{AtomicU64, Ordering};

use quanyi_core::{ErrorKind, TenantId};

use super::{card, now, ring_with_budget, rng, sku, tenant};
use crate::{
    BlindIndex, CardCode, CardKey, CardSecret, DEFAULT_KEY_USE_LIMIT, Error, Field, HEADER_LEN,
    IndexScheme, KeyId, KeyRing, KeyState, RootKey, SealContext, SealedCard, SealedValue, TAG_LEN,
    WrappedKeyRing, needs_rotation,
};

fn key(code: &str, secret: Option<&str>) -> CardKey {
    CardKey::new(
        CardCode::new(code).unwrap(),
        secret.map(|s| CardSecret::new(s).unwrap()),
    )
}

#[test]
fn key_ring_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<KeyRing>();
    assert_send_sync::<SealedValue>();
    assert_send_sync::<Error>();
}

#[test]
fn seal_open_round_trip_and_format() {
    let (_, ring, mut rng) = ring_with_budget(10);
    let t = tenant();
    let ctx = SealContext {
        tenant: &t,
        sku: sku(&mut rng),
        card: card(&mut rng),
        field: Field::Code,
    };
    let sealed = ring.seal(&ctx, b"AB12-3456-7890", &mut rng).unwrap();
    let bytes = sealed.as_bytes();
    assert_eq!(bytes.len(), HEADER_LEN + 14 + TAG_LEN);
    assert_eq!(&bytes[..4], &[b'Q', b'V', 1, 1]);
    assert_eq!(&bytes[4..8], &1u32.to_be_bytes());
    assert_eq!(sealed.key_id().unwrap(), KeyId(1));
    assert_eq!(&**ring.open(&ctx, &sealed).unwrap(), b"AB12-3456-7890");
    // Same plaintext twice: different nonces, different bytes.
    let again = ring.seal(&ctx, b"AB12-3456-7890", &mut rng).unwrap();
    assert_ne!(sealed, again);
    // Empty plaintext is fine.
    let empty = ring.seal(&ctx, b"", &mut rng).unwrap();
    assert!(ring.open(&ctx, &empty).unwrap().is_empty());
    assert_eq!(
        SealedValue::from_bytes(vec![1, 2, 3]).key_id(),
        Err(Error::MalformedSealedValue)
    );
}

#[test]
fn ciphertext_moved_to_another_context_fails() {
    let (root, ring, mut rng) = ring_with_budget(10);
    let t = tenant();
    let other_tenant = TenantId::new("shop-2").unwrap();
    let ctx = SealContext {
        tenant: &t,
        sku: sku(&mut rng),
        card: card(&mut rng),
        field: Field::Code,
    };
    let sealed = ring.seal(&ctx, b"AB12-3456-7890", &mut rng).unwrap();
    let moved = [
        SealContext {
            card: card(&mut rng),
            ..ctx
        },
        SealContext {
            sku: sku(&mut rng),
            ..ctx
        },
        SealContext {
            field: Field::Secret,
            ..ctx
        },
        SealContext {
            tenant: &other_tenant,
            ..ctx
        },
    ];
    for other in &moved {
        assert_eq!(
            ring.open(other, &sealed),
            Err(Error::OpenFailed),
            "{other:?}"
        );
    }
    // A ring of another tenant under the same root cannot open it either.
    let (ring2, _) = KeyRing::create(other_tenant.clone(), &root, now(), &mut rng).unwrap();
    for c in [ctx, moved[3]] {
        assert_eq!(ring2.open(&c, &sealed), Err(Error::OpenFailed));
    }
    // A whole sealed card swapped onto another card, or code and secret swapped, fails.
    ring.grant(ring.active_key_id(), 4).unwrap();
    let k = key("AB12-3456-7890", Some("s3cret-pass"));
    let (s1, c1) = (sku(&mut rng), card(&mut rng));
    let sealed = ring.seal_card(&t, s1, c1, &k, &mut rng).unwrap();
    assert_eq!(ring.open_card(&t, s1, c1, &sealed).unwrap(), k);
    assert_eq!(
        ring.open_card(&t, s1, card(&mut rng), &sealed),
        Err(Error::OpenFailed)
    );
    let swapped = SealedCard {
        code: sealed.secret.clone().unwrap(),
        secret: Some(sealed.code.clone()),
    };
    assert_eq!(ring.open_card(&t, s1, c1, &swapped), Err(Error::OpenFailed));
}

#[test]
fn every_flipped_or_cut_byte_fails() {
    let (_, ring, mut rng) = ring_with_budget(1);
    let t = tenant();
    let ctx = SealContext {
        tenant: &t,
        sku: sku(&mut rng),
        card: card(&mut rng),
        field: Field::Secret,
    };
    let sealed = ring.seal(&ctx, b"s3cret-pass", &mut rng).unwrap();
    let bytes = sealed.as_bytes().to_vec();
    assert_eq!(HEADER_LEN, 20);
    for i in 0..bytes.len() {
        for bit in [0x01u8, 0x80] {
            let mut tampered = bytes.clone();
            tampered[i] ^= bit;
            let tampered = SealedValue::from_bytes(tampered);
            assert_eq!(
                ring.open(&ctx, &tampered),
                Err(Error::OpenFailed),
                "byte {i}"
            );
        }
    }
    for len in 0..bytes.len() {
        let cut = SealedValue::from_bytes(bytes[..len].to_vec());
        assert_eq!(ring.open(&ctx, &cut), Err(Error::OpenFailed), "len {len}");
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert_eq!(
        ring.open(&ctx, &SealedValue::from_bytes(longer)),
        Err(Error::OpenFailed)
    );
    assert_eq!(&**ring.open(&ctx, &sealed).unwrap(), b"s3cret-pass");
}

#[test]
fn rotate_reseal_retire() {
    let (root, mut ring, mut rng) = ring_with_budget(100);
    let t = tenant();
    let entries: Vec<_> = (0..5)
        .map(|i| {
            let (s, c) = (sku(&mut rng), card(&mut rng));
            let k = key(
                &format!("CODE-{i:04}-XYZW"),
                (i % 2 == 0).then_some("pw-secret"),
            );
            let sealed = ring.seal_card(&t, s, c, &k, &mut rng).unwrap();
            (s, c, k, sealed)
        })
        .collect();
    let index_before = ring.blind_index(&entries[0].2);

    let k2 = ring.rotate(&root, now(), &mut rng).unwrap();
    assert_eq!(k2, KeyId(2));
    assert_eq!(ring.active_key_id(), k2);
    assert_eq!(ring.key_state(KeyId(1)), Some(KeyState::DecryptOnly));
    assert_eq!(
        ring.remaining_budget(),
        0,
        "a new key starts without budget"
    );
    ring.grant(k2, 100).unwrap();
    assert!(matches!(
        ring.grant(KeyId(1), 1),
        Err(Error::IllegalKeyState { .. })
    ));
    // The blind index does not change with data-key rotation.
    assert_eq!(ring.blind_index(&entries[0].2), index_before);

    // Old values still open; reseal every field under k2.
    let mut resealed = Vec::new();
    for (s, c, k, sealed) in &entries {
        assert_eq!(ring.open_card(&t, *s, *c, sealed).unwrap(), *k);
        let reseal = |field, v: &SealedValue, rng: &mut rand::rngs::StdRng| {
            let ctx = SealContext {
                tenant: &t,
                sku: *s,
                card: *c,
                field,
            };
            ring.reseal(&ctx, v, rng).unwrap()
        };
        let code = reseal(Field::Code, &sealed.code, &mut rng);
        let secret = sealed
            .secret
            .as_ref()
            .map(|v| reseal(Field::Secret, v, &mut rng));
        assert_eq!(code.key_id().unwrap(), k2);
        resealed.push(SealedCard { code, secret });
    }

    // Active keys cannot be retired; decrypt-only ones can, once.
    assert!(matches!(
        ring.retire(k2),
        Err(Error::IllegalKeyState { .. })
    ));
    assert_eq!(ring.retire(KeyId(9)), Err(Error::UnknownKey(KeyId(9))));
    ring.retire(KeyId(1)).unwrap();
    assert!(matches!(
        ring.retire(KeyId(1)),
        Err(Error::IllegalKeyState { .. })
    ));
    let stored = ring.to_wrapped();
    assert!(stored.keys[0].wrapped.is_empty());
    assert_eq!(stored.keys[0].state, KeyState::Retired);

    // Both in memory and after a store/unwrap round trip.
    let reloaded = KeyRing::unwrap(&root, &stored).unwrap();
    for r in [&ring, &reloaded] {
        for ((s, c, k, old), new) in entries.iter().zip(&resealed) {
            assert_eq!(r.open_card(&t, *s, *c, new).unwrap(), *k);
            assert_eq!(r.open_card(&t, *s, *c, old), Err(Error::OpenFailed));
            let ctx = SealContext {
                tenant: &t,
                sku: *s,
                card: *c,
                field: Field::Code,
            };
            assert_eq!(r.reseal(&ctx, &old.code, &mut rng), Err(Error::OpenFailed));
        }
    }
}

#[test]
fn rewrap_root_moves_the_ring_to_a_new_root() {
    let (old_root, mut ring, mut rng) = ring_with_budget(10);
    let t = tenant();
    let (s, c) = (sku(&mut rng), card(&mut rng));
    let k = key("AB12-3456-7890", Some("pw-secret"));
    let sealed = ring.seal_card(&t, s, c, &k, &mut rng).unwrap();
    ring.rotate(&old_root, now(), &mut rng).unwrap();
    let index = ring.blind_index(&k);

    let new_root = RootKey::generate(&mut rng);
    assert_eq!(
        ring.rewrap_root(&new_root, &new_root, &mut rng),
        Err(Error::WrongRootKey)
    );
    let stored = ring.rewrap_root(&old_root, &new_root, &mut rng).unwrap();
    assert_eq!(stored.root_key_id, new_root.id());
    assert_eq!(ring.root_key_id(), new_root.id());

    assert_eq!(
        KeyRing::unwrap(&old_root, &stored).unwrap_err(),
        Error::WrongRootKey
    );
    let reloaded = KeyRing::unwrap(&new_root, &stored).unwrap();
    for r in [&ring, &reloaded] {
        assert_eq!(r.open_card(&t, s, c, &sealed).unwrap(), k);
        assert_eq!(r.blind_index(&k), index);
    }
    // The in-memory ring now rotates only with the new root.
    assert_eq!(
        ring.rotate(&old_root, now(), &mut rng),
        Err(Error::WrongRootKey)
    );
    ring.rotate(&new_root, now(), &mut rng).unwrap();
}

#[test]
fn wrong_root_key_and_corrupt_rings_are_refused() {
    let mut rng = rng();
    let root = RootKey::generate(&mut rng);
    let (_, stored) = KeyRing::create(tenant(), &root, now(), &mut rng).unwrap();
    let other = RootKey::generate(&mut rng);
    assert_eq!(
        KeyRing::unwrap(&other, &stored).unwrap_err(),
        Error::WrongRootKey
    );
    // Even with a forged root key id the AEAD check refuses the other root.
    let forged = WrappedKeyRing {
        root_key_id: other.id().to_owned(),
        ..stored.clone()
    };
    assert_eq!(
        KeyRing::unwrap(&other, &forged).unwrap_err(),
        Error::WrongRootKey
    );
    // A ring copied to another tenant does not unwrap (the tenant is bound into the wrapping).
    let moved = WrappedKeyRing {
        tenant: TenantId::new("shop-2").unwrap(),
        ..stored.clone()
    };
    assert_eq!(
        KeyRing::unwrap(&root, &moved).unwrap_err(),
        Error::WrongRootKey
    );

    fn check(root: &RootKey, stored: &WrappedKeyRing, edit: impl Fn(&mut WrappedKeyRing)) {
        let mut bad = stored.clone();
        edit(&mut bad);
        let err = KeyRing::unwrap(root, &bad).unwrap_err();
        assert!(
            matches!(err, Error::CorruptKeyRing(_) | Error::WrongRootKey),
            "{err:?}"
        );
    }
    check(&root, &stored, |r| r.keys.clear());
    check(&root, &stored, |r| r.keys[0].id = KeyId(2));
    check(&root, &stored, |r| r.active = KeyId(2));
    check(&root, &stored, |r| r.keys[0].state = KeyState::DecryptOnly);
    check(&root, &stored, |r| r.keys[0].wrapped.truncate(10));
    check(&root, &stored, |r| r.keys[0].wrapped[20] ^= 1);
    check(&root, &stored, |r| r.index_key[5] ^= 1);
    check(&root, &stored, |r| {
        // Swapping the index key into the data key slot fails: purposes are bound.
        r.keys[0].wrapped = r.index_key.clone();
    });
}

#[test]
fn wrapped_ring_and_sealed_values_round_trip_through_json() {
    let (root, ring, mut rng) = ring_with_budget(5);
    let t = tenant();
    let (s, c) = (sku(&mut rng), card(&mut rng));
    let k = key("AB12-3456-7890", Some("pw-secret"));
    let sealed = ring.seal_card(&t, s, c, &k, &mut rng).unwrap();
    let stored = ring.to_wrapped();
    assert_eq!(stored.keys[0].encryptions, 5, "reserved uses are persisted");

    let json = serde_json::to_string(&stored).unwrap();
    let back: WrappedKeyRing = serde_json::from_str(&json).unwrap();
    assert_eq!(back, stored);
    let json_sealed = serde_json::to_string(&sealed).unwrap();
    let sealed_back: SealedCard = serde_json::from_str(&json_sealed).unwrap();
    let reloaded = KeyRing::unwrap(&root, &back).unwrap();
    assert_eq!(reloaded.open_card(&t, s, c, &sealed_back).unwrap(), k);

    let index = ring.blind_index(&k);
    let json_index = serde_json::to_string(&index).unwrap();
    assert_eq!(json_index, format!("\"{}\"", index.to_hex()));
    assert_eq!(
        serde_json::from_str::<BlindIndex>(&json_index).unwrap(),
        index
    );
    assert_eq!(serde_json::to_string(&KeyId(3)).unwrap(), "3");
    assert_eq!(
        serde_json::to_string(&KeyState::DecryptOnly).unwrap(),
        "\"decrypt_only\""
    );
    assert_eq!(KeyId(3).to_string(), "k3");
}

#[test]
fn blind_index_normalises_and_separates() {
    let (_, ring, _) = ring_with_budget(0);
    let idx = |c: &str, s: Option<&str>| ring.blind_index(&key(c, s));
    assert_eq!(idx("ABCD-1234", None), idx(" abcd1234 ", None));
    assert_eq!(idx("ABCD-1234", None), idx("a b c d - 1 2 3 4", None));
    assert_eq!(idx("ÄBC-DÉF", None), idx("äbcdéf", None));
    assert_eq!(idx("N1", Some("PW-X")), idx("n1", Some(" pwx")));
    assert_ne!(idx("ABCD-1234", None), idx("ABCD-1235", None));
    assert_ne!(idx("ABCD-1234", None), idx("ABCD-1234", Some("pw")));
    // The separator keeps "ab"+"c" apart from "a"+"bc".
    assert_ne!(idx("ab", Some("c")), idx("a", Some("bc")));
    // Another ring (another index key) gives other indexes.
    let (_, other, _) = ring_with_budget(0);
    let mut r = rand::rngs::StdRng::seed_from_u64(99);
    let root = RootKey::generate(&mut r);
    let (third, _) = KeyRing::create(tenant(), &root, now(), &mut r).unwrap();
    let k = key("ABCD-1234", None);
    assert_eq!(
        other.blind_index(&k),
        ring.blind_index(&k),
        "same seed, same key"
    );
    assert_ne!(third.blind_index(&k), ring.blind_index(&k));
    assert_eq!(crate::normalise(" AB-cd\u{3000}12\t"), "abcd12");
    let b = idx("x", None);
    assert_eq!(BlindIndex::from_bytes(*b.as_bytes()), b);
    assert_eq!(BlindIndex::from_hex(&b.to_hex()), Some(b));
    assert_eq!(BlindIndex::from_hex("zz"), None);
}

use rand::SeedableRng as _;

#[test]
fn budget_allows_exactly_what_was_granted() {
    let (root, ring, mut rng) = ring_with_budget(0);
    let t = tenant();
    let ctx = SealContext {
        tenant: &t,
        sku: sku(&mut rng),
        card: card(&mut rng),
        field: Field::Code,
    };
    assert_eq!(ring.seal(&ctx, b"x", &mut rng), Err(Error::BudgetExhausted));
    for n in [1u64, 3, 7] {
        ring.grant(ring.active_key_id(), n).unwrap();
        for _ in 0..n {
            ring.seal(&ctx, b"x", &mut rng).unwrap();
        }
        assert_eq!(ring.seal(&ctx, b"x", &mut rng), Err(Error::BudgetExhausted));
    }
    // A card with a secret takes two uses.
    ring.grant(ring.active_key_id(), 1).unwrap();
    let k = key("AB12-3456-7890", Some("pw"));
    assert_eq!(
        ring.seal_card(&t, ctx.sku, ctx.card, &k, &mut rng),
        Err(Error::BudgetExhausted)
    );
    assert_eq!(Error::BudgetExhausted.kind(), ErrorKind::Exhausted);
    assert_eq!(ring.grant(KeyId(7), 1), Err(Error::UnknownKey(KeyId(7))));
    // Sealing for another tenant is refused before any budget is used.
    let other = TenantId::new("shop-2").unwrap();
    ring.grant(ring.active_key_id(), 1).unwrap();
    let wrong = SealContext {
        tenant: &other,
        ..ctx
    };
    assert_eq!(
        ring.seal(&wrong, b"x", &mut rng),
        Err(Error::TenantMismatch)
    );
    assert_eq!(ring.remaining_budget(), 1);
    drop(root);
}

#[test]
fn use_limit_caps_grants_and_signals_rotation() {
    let (root, mut ring, mut rng) = ring_with_budget(0);
    assert_eq!(ring.use_limit(), DEFAULT_KEY_USE_LIMIT);
    ring.set_use_limit(16);
    ring.grant(ring.active_key_id(), 13).unwrap();
    assert!(!ring.needs_rotation());
    ring.grant(ring.active_key_id(), 1).unwrap();
    assert!(ring.needs_rotation(), "14 >= 16 - 2");
    ring.grant(ring.active_key_id(), 2).unwrap();
    assert_eq!(
        ring.grant(ring.active_key_id(), 1),
        Err(Error::BudgetExhausted)
    );
    ring.rotate(&root, now(), &mut rng).unwrap();
    assert!(!ring.needs_rotation());
    ring.grant(ring.active_key_id(), 16).unwrap();

    fn check(encryptions: u64, limit: u64, expected: bool) {
        assert_eq!(
            needs_rotation(encryptions, limit),
            expected,
            "{encryptions}/{limit}"
        );
    }
    check(0, DEFAULT_KEY_USE_LIMIT, false);
    check(
        DEFAULT_KEY_USE_LIMIT / 8 * 7 - 1,
        DEFAULT_KEY_USE_LIMIT,
        false,
    );
    check(DEFAULT_KEY_USE_LIMIT / 8 * 7, DEFAULT_KEY_USE_LIMIT, true);
    check(u64::MAX, DEFAULT_KEY_USE_LIMIT, true);
    check(0, 0, true);
    const { assert!(DEFAULT_KEY_USE_LIMIT < 1 << 32) };
}

#[test]
fn concurrent_seals_never_exceed_the_budget() {
    let (_, ring, _) = ring_with_budget(1000);
    let t = tenant();
    let ok = AtomicU64::new(0);
    std::thread::scope(|scope| {
        for seed in 0..8u64 {
            let (ring, t, ok) = (&ring, &t, &ok);
            scope.spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                let ctx = SealContext {
                    tenant: t,
                    sku: sku(&mut rng),
                    card: card(&mut rng),
                    field: Field::Code,
                };
                for _ in 0..200 {
                    match ring.seal(&ctx, b"AB12-3456", &mut rng) {
                        Ok(v) => {
                            assert_eq!(&**ring.open(&ctx, &v).unwrap(), b"AB12-3456");
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => assert_eq!(e, Error::BudgetExhausted),
                    }
                }
            });
        }
    });
    assert_eq!(ok.load(Ordering::Relaxed), 1000);
}

#[test]
fn error_kinds() {
    fn check(e: Error, kind: ErrorKind) {
        assert_eq!(e.kind(), kind, "{e}");
        let text = e.to_string();
        assert_eq!(text, text.to_lowercase(), "lowercase message");
        assert!(!text.ends_with('.'));
    }
    check(Error::OpenFailed, ErrorKind::Internal);
    check(Error::BudgetExhausted, ErrorKind::Exhausted);
    check(Error::WrongRootKey, ErrorKind::Forbidden);
    check(Error::KeyProvider("x".into()), ErrorKind::Unavailable);
    check(
        Error::InvalidCode(crate::InvalidReason::Empty),
        ErrorKind::Invalid,
    );
    check(Error::UnknownKey(KeyId(1)), ErrorKind::NotFound);
    check(
        Error::IllegalKeyState {
            id: KeyId(1),
            state: KeyState::Active,
            action: "retire",
        },
        ErrorKind::Conflict,
    );
    check(Error::MalformedSealedValue, ErrorKind::Invalid);
    check(Error::CorruptKeyRing("x"), ErrorKind::Internal);
    check(Error::TenantMismatch, ErrorKind::Invalid);
}

/// Codes that differ only by invisible or compatibility characters are one code: the current
/// scheme gives them one index, where the legacy scheme told them apart.
#[test]
fn invisible_and_compatibility_variants_share_an_index() {
    let (_, ring, _) = ring_with_budget(0);
    let idx = |c: &str, scheme| ring.blind_index_as(&key(c, None), scheme);
    let plain = "AB12-3456-7890";
    let variants = [
        "AB12-3456\u{200B}-7890",         // zero-width space
        "AB12-\u{200C}3456-\u{200D}7890", // zero-width non-joiner and joiner
        "AB12-34\u{00AD}56-7890",         // soft hyphen
        "\u{FEFF}AB12-3456-7890",         // byte-order mark inside the text
        "AB12\u{2060}-3456-7890",         // word joiner
        "\u{200E}AB12-3456-7890\u{200F}", // direction marks
        "ＡＢ１２－３４５６－７８９０",   // full-width forms
        "AB12\u{2010}3456\u{2011}7890",   // hyphen, non-breaking hyphen
        "AB12\u{2013}3456\u{2014}7890",   // en and em dash
        "AB12\u{2212}3456\u{FE63}7890",   // minus sign, small hyphen-minus
        "ab12\u{FE0F}34\u{034F}56 7890",  // variation selector, grapheme joiner
        "\u{1D400}\u{1D401}12-3456-7890", // mathematical bold capitals
    ];
    let current = idx(plain, IndexScheme::CURRENT);
    for v in variants {
        assert_eq!(
            idx(v, IndexScheme::CURRENT),
            current,
            "{:?}",
            v.escape_unicode().to_string()
        );
        assert_ne!(
            idx(v, IndexScheme::Legacy),
            idx(plain, IndexScheme::Legacy),
            "the legacy scheme told {:?} apart",
            v.escape_unicode().to_string()
        );
    }
    // Unicode spaces were ignored by both schemes.
    assert_eq!(
        idx("AB12\u{3000}3456\u{00A0}7890", IndexScheme::CURRENT),
        current
    );
    // Plain ASCII indexes alike under both schemes: stored cards of ASCII codes keep their index.
    assert_eq!(idx(plain, IndexScheme::Legacy), current);
    assert_eq!(idx(" ab12 3456 7890 ", IndexScheme::Legacy), current);
    // Different codes stay different.
    assert_ne!(idx("AB12-3456-7891", IndexScheme::CURRENT), current);
    assert_ne!(idx("AB12-3456-789", IndexScheme::CURRENT), current);
    assert_ne!(idx("AB12_3456_7890", IndexScheme::CURRENT), current);
    // Secrets are normalised the same way.
    assert_eq!(
        ring.blind_index(&key("N1", Some("ｐｗ\u{200B}1"))),
        ring.blind_index(&key("n1", Some("PW1")))
    );
}

#[test]
fn index_schemes_round_trip_and_old_rings_read_as_legacy() {
    for scheme in [IndexScheme::Legacy, IndexScheme::Nfkc] {
        assert_eq!(IndexScheme::from_u8(scheme.as_u8()), Some(scheme));
        let json = serde_json::to_string(&scheme).unwrap();
        assert_eq!(serde_json::from_str::<IndexScheme>(&json).unwrap(), scheme);
    }
    assert_eq!(IndexScheme::from_u8(0), None);
    assert!(serde_json::from_str::<IndexScheme>("9").is_err());
    let (_, ring, _) = ring_with_budget(0);
    assert_eq!(ring.oldest_index_scheme(), IndexScheme::CURRENT);
    let mut json = serde_json::to_value(ring.to_wrapped()).unwrap();
    json.as_object_mut().unwrap().remove("oldest_index_scheme");
    let old: WrappedKeyRing = serde_json::from_value(json).unwrap();
    assert_eq!(old.oldest_index_scheme, IndexScheme::Legacy);
}

/// While the tenant may hold legacy-indexed cards, an import plans each card's legacy index too
/// (when it differs), so a stored variant is still found.
#[test]
fn plan_import_adds_legacy_indexes_until_reindexed() {
    use crate::import::{ImportOptions, parse_import};
    let (root, ring, _) = ring_with_budget(0);
    let input = "AB12-3456\nCD\u{200B}34-5678\n".as_bytes();
    let plan = ring.plan_import(parse_import(input, &ImportOptions::default()));
    assert!(plan.cards.iter().all(|c| c.legacy_index.is_none()));

    let mut wrapped = ring.to_wrapped();
    wrapped.oldest_index_scheme = IndexScheme::Legacy;
    let mut old = KeyRing::unwrap(&root, &wrapped).unwrap();
    let plan = old.plan_import(parse_import(input, &ImportOptions::default()));
    // ASCII: the legacy index is the index, so there is nothing more to check.
    assert_eq!(plan.cards[0].legacy_index, None);
    assert_eq!(
        plan.cards[1].legacy_index,
        Some(old.blind_index_as(&plan.cards[1].key, IndexScheme::Legacy))
    );
    assert_ne!(plan.cards[1].legacy_index, Some(plan.cards[1].index));
    old.set_oldest_index_scheme(IndexScheme::CURRENT);
    old.set_oldest_index_scheme(IndexScheme::Legacy);
    assert_eq!(
        old.oldest_index_scheme(),
        IndexScheme::CURRENT,
        "never moves back"
    );
}

#[test]
fn destroyed_keys_open_nothing_and_the_active_key_cannot_be_destroyed() {
    let (root, mut ring, mut rng) = ring_with_budget(0);
    let t = tenant();
    ring.grant(ring.active_key_id(), 1).unwrap();
    let (s, c) = (sku(&mut rng), card(&mut rng));
    let sealed = ring
        .seal_card(&t, s, c, &key("AB12-3456-7890", None), &mut rng)
        .unwrap();
    assert!(matches!(
        ring.destroy(KeyId(1)),
        Err(Error::IllegalKeyState {
            action: "destroy",
            ..
        })
    ));
    ring.rotate(&root, now(), &mut rng).unwrap();
    ring.destroy(KeyId(1)).unwrap();
    assert_eq!(ring.key_state(KeyId(1)), Some(KeyState::Destroyed));
    assert_eq!(ring.open_card(&t, s, c, &sealed), Err(Error::OpenFailed));
    let stored = ring.to_wrapped();
    assert!(stored.keys[0].wrapped.is_empty());
    let again = KeyRing::unwrap(&root, &stored).unwrap();
    assert_eq!(again.open_card(&t, s, c, &sealed), Err(Error::OpenFailed));
    assert_eq!(again.key_state(KeyId(1)), Some(KeyState::Destroyed));
    assert!(matches!(ring.destroy(KeyId(9)), Err(Error::UnknownKey(_))));
}

#[test]
fn uses_are_reserved_on_the_active_key_within_the_limit() {
    let mut rng = rng();
    let root = RootKey::generate(&mut rng);
    let (mut ring, mut stored) = KeyRing::create(tenant(), &root, now(), &mut rng).unwrap();
    let first = stored.active;
    assert_eq!(stored.reserve_uses(first, 3, 5), Ok(3));
    assert_eq!(stored.reserve_uses(first, 2, 5), Ok(5));
    let full = stored.clone();
    assert_eq!(
        stored.reserve_uses(first, 1, 5),
        Err(crate::UsesRefused::Exhausted)
    );
    assert_eq!(stored, full, "a refusal leaves the ring as it was");
    assert_eq!(
        stored.reserve_uses(first, u64::MAX, u64::MAX),
        Err(crate::UsesRefused::Exhausted)
    );
    assert_eq!(
        stored.reserve_uses(KeyId(99), 1, 5),
        Err(crate::UsesRefused::UnknownKey)
    );
    ring.rotate(&root, now(), &mut rng).unwrap();
    let mut rotated = ring.to_wrapped();
    assert_eq!(
        rotated.reserve_uses(first, 1, 5),
        Err(crate::UsesRefused::NotActive)
    );
}
