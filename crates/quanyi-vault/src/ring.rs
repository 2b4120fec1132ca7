//! The key ring: per-tenant data keys and the blind-index key, wrapped by the root key.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag};
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use quanyi_core::{CardId, SkuId, TenantId};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

use crate::error::{Error, Result};
use crate::index::{BlindIndex, IndexScheme, normalise_into};
use crate::root::{RootKey, hmac_sha256};
use crate::sealed::{
    Aad, FORMAT_VERSION, Field, HEADER_LEN, MAGIC, NONCE_LEN, SUITE_AES256GCM, SealContext,
    SealedCard, SealedValue, TAG_LEN, parse_key_id,
};
use crate::secret::{CardCode, CardKey, CardSecret};

/// The most encryptions one data key may perform: 2^30.
///
/// Every seal draws a fresh random 96-bit nonce. NIST SP 800-38D caps random-nonce use of one
/// AES-GCM key at 2^32 encryptions (collision chance below 2^-32); stopping at 2^30 keeps the
/// collision chance near 2^-36 and leaves room for counters that run ahead of real use across
/// several processes. [`KeyRing::grant`] refuses budget past the limit, and [`needs_rotation`]
/// tells the engine to rotate once 7/8 of it is reserved, well before sealing would stop.
pub const DEFAULT_KEY_USE_LIMIT: u64 = 1 << 30;

/// True once `encryptions` (the persisted number of uses reserved for the active key) reaches
/// 7/8 of `limit`: time to [`KeyRing::rotate`] before grants start failing.
///
/// ```
/// use quanyi_vault::{needs_rotation, DEFAULT_KEY_USE_LIMIT};
/// assert!(!needs_rotation(1_000, DEFAULT_KEY_USE_LIMIT));
/// assert!(needs_rotation(DEFAULT_KEY_USE_LIMIT, DEFAULT_KEY_USE_LIMIT));
/// ```
pub fn needs_rotation(encryptions: u64, limit: u64) -> bool {
    encryptions >= limit - limit / 8
}

/// Identifies a data key within a tenant's ring: `k1`, `k2`, ... Serialised as a number.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyId(pub u32);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "k{}", self.0)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The life cycle of a data key: `Active` -> `DecryptOnly` (after a rotation) -> `Retired`
/// (after its values were resealed), or `Destroyed` (at once, when the key is compromised).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    /// Seals new values (exactly one key per ring) and opens.
    Active,
    /// Only opens: values sealed with it should be resealed under the active key.
    DecryptOnly,
    /// Its material is gone; nothing sealed with it opens any more. Nothing was sealed with it
    /// when it was retired.
    Retired,
    /// Its material is gone, and so are the values it sealed: a key destroyed because it may be
    /// compromised. Cards still sealed with it were shredded in the same step.
    Destroyed,
}

impl KeyState {
    /// True while the key's material exists (active or decrypt-only).
    pub fn is_live(self) -> bool {
        matches!(self, KeyState::Active | KeyState::DecryptOnly)
    }
}

impl fmt::Display for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyState::Active => "active",
            KeyState::DecryptOnly => "decrypt_only",
            KeyState::Retired => "retired",
            KeyState::Destroyed => "destroyed",
        })
    }
}

mod b64 {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map_err(|_| serde::de::Error::custom("wrapped key is not valid base64"))
    }
}

/// One data key as storage keeps it: wrapped by the root key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedDataKey {
    /// The key's id.
    pub id: KeyId,
    /// Its state.
    pub state: KeyState,
    /// The key wrapped by the root key (base64 in serde); empty once retired.
    #[serde(with = "b64")]
    pub wrapped: Vec<u8>,
    /// Uses reserved (granted) for this key so far: an upper bound of its encryptions.
    pub encryptions: u64,
    /// When the key was made.
    pub created_at: DateTime<Utc>,
}

impl fmt::Debug for WrappedDataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WrappedDataKey")
            .field("id", &self.id)
            .field("state", &self.state)
            .field("wrapped", &format_args!("<{} bytes>", self.wrapped.len()))
            .field("encryptions", &self.encryptions)
            .field("created_at", &self.created_at)
            .finish()
    }
}

/// A tenant's key ring as storage keeps it: plain data, every key wrapped by the root key.
/// The root key itself is never stored; `root_key_id` only names it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedKeyRing {
    /// The tenant the ring belongs to.
    pub tenant: TenantId,
    /// The [`RootKey::id`] of the root key that wraps the ring.
    pub root_key_id: String,
    /// The active data key.
    pub active: KeyId,
    /// Every data key ever made, ordered by id (`k1` first).
    pub keys: Vec<WrappedDataKey>,
    /// The blind-index key wrapped by the root key (base64 in serde).
    #[serde(with = "b64")]
    pub index_key: Vec<u8>,
    /// The oldest [`IndexScheme`] a stored card of the tenant may still be indexed with. Rings
    /// stored before schemes existed read as [`IndexScheme::Legacy`]; a new ring starts at
    /// [`IndexScheme::CURRENT`]; re-indexing moves it up once every card is done.
    #[serde(default = "legacy_scheme")]
    pub oldest_index_scheme: IndexScheme,
}

/// Why a store refused to reserve uses of a data key ([`WrappedKeyRing::reserve_uses`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsesRefused {
    /// The ring has no such key.
    UnknownKey,
    /// The key is not the active one (it was rotated: reload the ring).
    NotActive,
    /// The counter would pass the limit.
    Exhausted,
}

impl WrappedKeyRing {
    /// The state of one data key, if the ring has it.
    pub fn key_state(&self, id: KeyId) -> Option<KeyState> {
        self.keys.iter().find(|k| k.id == id).map(|k| k.state)
    }

    /// Adds `uses` to the encryption counter of `key`, which must be the active key, if the
    /// counter stays within `limit`; returns the counter after. The one rule of the encryption
    /// budget: every store applies it to the ring it holds, atomically with storing it.
    ///
    /// # Errors
    /// [`UsesRefused`]; the ring is unchanged.
    pub fn reserve_uses(&mut self, key: KeyId, uses: u64, limit: u64) -> Result<u64, UsesRefused> {
        let data_key = self
            .keys
            .iter_mut()
            .find(|k| k.id == key)
            .ok_or(UsesRefused::UnknownKey)?;
        if data_key.state != KeyState::Active {
            return Err(UsesRefused::NotActive);
        }
        let after = data_key
            .encryptions
            .checked_add(uses)
            .filter(|n| *n <= limit)
            .ok_or(UsesRefused::Exhausted)?;
        data_key.encryptions = after;
        Ok(after)
    }
}

fn legacy_scheme() -> IndexScheme {
    IndexScheme::Legacy
}

impl fmt::Debug for WrappedKeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WrappedKeyRing")
            .field("tenant", &self.tenant)
            .field("root_key_id", &self.root_key_id)
            .field("active", &self.active)
            .field("keys", &self.keys)
            .field(
                "index_key",
                &format_args!("<{} bytes>", self.index_key.len()),
            )
            .field("oldest_index_scheme", &self.oldest_index_scheme)
            .finish()
    }
}

// ---- key wrapping ------------------------------------------------------------------------

const WRAP_VERSION: u8 = 1;
const WRAPPED_LEN: usize = 1 + NONCE_LEN + 32 + TAG_LEN;
const WRAP_AAD_MAX: usize = 16 + 2 + quanyi_core::MAX_NAME_LEN + 1 + 4;

#[derive(Clone, Copy)]
enum Purpose {
    Data(KeyId),
    Index,
}

/// The key-encryption key: HKDF-SHA256 of the root key, separate from its fingerprint.
fn kek(root: &RootKey) -> Aes256Gcm {
    let hk = hkdf::Hkdf::<Sha256>::new(Some(b"quanyi-vault"), root.bytes());
    let mut okm = Zeroizing::new([0u8; 32]);
    // 32 bytes is far below HKDF-SHA256's 8160-byte limit, so expand cannot fail.
    if hk.expand(b"key wrap v1", &mut *okm).is_err() {
        okm.fill(0);
    }
    Aes256Gcm::new(&(*okm).into())
}

fn wrap_aad(tenant: &TenantId, purpose: Purpose) -> ([u8; WRAP_AAD_MAX], usize) {
    let mut buf = [0u8; WRAP_AAD_MAX];
    let mut at = 0;
    let mut put = |bytes: &[u8]| {
        let end = (at + bytes.len()).min(WRAP_AAD_MAX);
        buf[at..end].copy_from_slice(&bytes[..end - at]);
        at = end;
    };
    put(b"quanyi-vault/wrap");
    let tenant = tenant.as_str().as_bytes();
    put(&u16::try_from(tenant.len())
        .unwrap_or(u16::MAX)
        .to_be_bytes());
    put(tenant);
    match purpose {
        Purpose::Data(id) => {
            put(&[1]);
            put(&id.0.to_be_bytes());
        }
        Purpose::Index => put(&[2]),
    }
    (buf, at)
}

fn wrap(
    kek: &Aes256Gcm,
    tenant: &TenantId,
    purpose: Purpose,
    key: &[u8; 32],
    rng: &mut dyn RngCore,
) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(WRAPPED_LEN);
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    out.push(WRAP_VERSION);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(key);
    let (aad, len) = wrap_aad(tenant, purpose);
    let tag = kek
        .encrypt_in_place_detached(
            Nonce::from_slice(&nonce),
            &aad[..len],
            &mut out[1 + NONCE_LEN..],
        )
        .map_err(|_| Error::SealFailed)?;
    out.extend_from_slice(&tag);
    Ok(out)
}

fn unwrap_key(
    kek: &Aes256Gcm,
    tenant: &TenantId,
    purpose: Purpose,
    wrapped: &[u8],
) -> Result<Zeroizing<[u8; 32]>> {
    if wrapped.len() != WRAPPED_LEN || wrapped[0] != WRAP_VERSION {
        return Err(Error::CorruptKeyRing(
            "wrapped key has the wrong length or version",
        ));
    }
    let nonce = &wrapped[1..1 + NONCE_LEN];
    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(&wrapped[1 + NONCE_LEN..1 + NONCE_LEN + 32]);
    let tag = Tag::from_slice(&wrapped[1 + NONCE_LEN + 32..]);
    let (aad, len) = wrap_aad(tenant, purpose);
    kek.decrypt_in_place_detached(Nonce::from_slice(nonce), &aad[..len], &mut *key, tag)
        .map_err(|_| Error::WrongRootKey)?;
    Ok(key)
}

fn random_key(rng: &mut dyn RngCore) -> Zeroizing<[u8; 32]> {
    let mut key = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(&mut *key);
    key
}

// ---- the ring ------------------------------------------------------------------------------

struct DataKey {
    id: KeyId,
    state: KeyState,
    /// The ready cipher (key schedule computed once); `None` once retired. The AES key
    /// schedule is zeroized on drop.
    cipher: Option<Aes256Gcm>,
    wrapped: Vec<u8>,
    created_at: DateTime<Utc>,
    /// Uses reserved over the key's life (persisted as `encryptions`).
    reserved: AtomicU64,
    /// Granted uses not yet consumed by this process.
    budget: AtomicU64,
}

/// A tenant's key ring, unwrapped in memory: ready AES-256-GCM ciphers per data key and the
/// blind-index key. `Send + Sync`: seal and open take `&self` and may run on many threads.
///
/// The ring seals only within a granted budget: the engine reserves uses in storage (which
/// keeps the exact persisted counter), then calls [`grant`](KeyRing::grant); each sealed field
/// consumes one use.
///
/// ```
/// use quanyi_core::{CardId, SkuId, TenantId};
/// use quanyi_vault::{CardCode, CardKey, KeyRing, RootKey};
///
/// let mut rng = rand::thread_rng();
/// let now = chrono::Utc::now();
/// let root = RootKey::generate(&mut rng);
/// let tenant = TenantId::default();
/// let (ring, stored) = KeyRing::create(tenant.clone(), &root, now, &mut rng)?;
/// ring.grant(ring.active_key_id(), 10)?;
///
/// let (sku, card) = (SkuId::generate(now, &mut rng), CardId::generate(now, &mut rng));
/// let key = CardKey::new(CardCode::new("AB12-3456-7890")?, None);
/// let sealed = ring.seal_card(&tenant, sku, card, &key, &mut rng)?;
///
/// // Later, maybe in another process: unwrap the stored ring with the same root key.
/// let ring = KeyRing::unwrap(&root, &stored)?;
/// assert_eq!(ring.open_card(&tenant, sku, card, &sealed)?, key);
/// # Ok::<(), quanyi_vault::Error>(())
/// ```
pub struct KeyRing {
    tenant: TenantId,
    root_key_id: String,
    /// Index into `keys` of the active key.
    active: usize,
    /// `keys[i].id == KeyId(i + 1)`.
    keys: Vec<DataKey>,
    /// HMAC state keyed with the blind-index key (computed once, cloned per index).
    index_mac: Hmac<Sha256>,
    index_wrapped: Vec<u8>,
    oldest_index_scheme: IndexScheme,
    use_limit: u64,
}

impl KeyRing {
    /// Makes a new ring for `tenant`: data key `k1` (active) and a random blind-index key,
    /// both wrapped by `root`. Returns the ring and the wrapped form to store.
    ///
    /// # Errors
    /// [`Error::SealFailed`] only if the cipher fails, which it does not for 32-byte keys.
    pub fn create(
        tenant: TenantId,
        root: &RootKey,
        now: DateTime<Utc>,
        rng: &mut dyn RngCore,
    ) -> Result<(KeyRing, WrappedKeyRing)> {
        let kek = kek(root);
        let id = KeyId(1);
        let data = random_key(rng);
        let data_wrapped = wrap(&kek, &tenant, Purpose::Data(id), &data, rng)?;
        let index = random_key(rng);
        let index_wrapped = wrap(&kek, &tenant, Purpose::Index, &index, rng)?;
        let ring = KeyRing {
            tenant,
            root_key_id: root.id().to_owned(),
            active: 0,
            keys: vec![DataKey {
                id,
                state: KeyState::Active,
                cipher: Some(Aes256Gcm::new(&(*data).into())),
                wrapped: data_wrapped,
                created_at: now,
                reserved: AtomicU64::new(0),
                budget: AtomicU64::new(0),
            }],
            index_mac: hmac_sha256(&index),
            index_wrapped,
            oldest_index_scheme: IndexScheme::CURRENT,
            use_limit: DEFAULT_KEY_USE_LIMIT,
        };
        let wrapped = ring.to_wrapped();
        Ok((ring, wrapped))
    }

    /// Unwraps a stored ring with the root key. The ring starts with no encryption budget.
    ///
    /// # Errors
    /// [`Error::WrongRootKey`] when `root` is not the ring's root key (by id, or because a
    /// wrapped key fails to authenticate); [`Error::CorruptKeyRing`] when the stored data is
    /// inconsistent.
    pub fn unwrap(root: &RootKey, wrapped: &WrappedKeyRing) -> Result<KeyRing> {
        if root.id() != wrapped.root_key_id {
            return Err(Error::WrongRootKey);
        }
        let kek = kek(root);
        let tenant = &wrapped.tenant;
        let mut keys = Vec::with_capacity(wrapped.keys.len());
        let mut active = None;
        for (i, k) in wrapped.keys.iter().enumerate() {
            if usize::try_from(k.id.0).ok() != i.checked_add(1) {
                return Err(Error::CorruptKeyRing("data key ids are not 1, 2, 3..."));
            }
            let cipher = match k.state {
                KeyState::Retired | KeyState::Destroyed => None,
                KeyState::Active | KeyState::DecryptOnly => {
                    let key = unwrap_key(&kek, tenant, Purpose::Data(k.id), &k.wrapped)?;
                    Some(Aes256Gcm::new(&(*key).into()))
                }
            };
            if k.state == KeyState::Active {
                if active.is_some() || k.id != wrapped.active {
                    return Err(Error::CorruptKeyRing("active key does not match"));
                }
                active = Some(i);
            }
            keys.push(DataKey {
                id: k.id,
                state: k.state,
                cipher,
                wrapped: if !k.state.is_live() {
                    Vec::new()
                } else {
                    k.wrapped.clone()
                },
                created_at: k.created_at,
                reserved: AtomicU64::new(k.encryptions),
                budget: AtomicU64::new(0),
            });
        }
        let active = active.ok_or(Error::CorruptKeyRing("no active data key"))?;
        let index = unwrap_key(&kek, tenant, Purpose::Index, &wrapped.index_key)?;
        Ok(KeyRing {
            tenant: tenant.clone(),
            root_key_id: wrapped.root_key_id.clone(),
            active,
            keys,
            index_mac: hmac_sha256(&index),
            index_wrapped: wrapped.index_key.clone(),
            oldest_index_scheme: wrapped.oldest_index_scheme,
            use_limit: DEFAULT_KEY_USE_LIMIT,
        })
    }

    /// The current wrapped form, to store after [`rotate`](KeyRing::rotate),
    /// [`retire`](KeyRing::retire) or [`rewrap_root`](KeyRing::rewrap_root). `encryptions`
    /// holds the uses reserved so far.
    pub fn to_wrapped(&self) -> WrappedKeyRing {
        WrappedKeyRing {
            tenant: self.tenant.clone(),
            root_key_id: self.root_key_id.clone(),
            active: self.active_key_id(),
            keys: self
                .keys
                .iter()
                .map(|k| WrappedDataKey {
                    id: k.id,
                    state: k.state,
                    wrapped: k.wrapped.clone(),
                    encryptions: k.reserved.load(Ordering::Relaxed),
                    created_at: k.created_at,
                })
                .collect(),
            index_key: self.index_wrapped.clone(),
            oldest_index_scheme: self.oldest_index_scheme,
        }
    }

    /// The oldest index scheme a stored card of the tenant may still have (see
    /// [`WrappedKeyRing::oldest_index_scheme`]).
    pub fn oldest_index_scheme(&self) -> IndexScheme {
        self.oldest_index_scheme
    }

    /// Records that every stored card of the tenant is indexed with `scheme` or newer. Store
    /// [`to_wrapped`](KeyRing::to_wrapped) afterwards. Never moves the mark back.
    pub fn set_oldest_index_scheme(&mut self, scheme: IndexScheme) {
        self.oldest_index_scheme = self.oldest_index_scheme.max(scheme);
    }

    /// The tenant the ring belongs to.
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// The id of the root key that wraps the ring.
    pub fn root_key_id(&self) -> &str {
        &self.root_key_id
    }

    /// The active data key, the one [`seal`](KeyRing::seal) uses.
    pub fn active_key_id(&self) -> KeyId {
        self.keys[self.active].id
    }

    /// Every data key and its state, oldest first.
    pub fn keys(&self) -> impl Iterator<Item = (KeyId, KeyState)> + '_ {
        self.keys.iter().map(|k| (k.id, k.state))
    }

    /// The state of one key, if the ring has it.
    pub fn key_state(&self, id: KeyId) -> Option<KeyState> {
        self.key(id).map(|k| k.state)
    }

    /// The per-key use limit enforced by [`grant`](KeyRing::grant)
    /// (default [`DEFAULT_KEY_USE_LIMIT`]).
    pub fn use_limit(&self) -> u64 {
        self.use_limit
    }

    /// Changes the per-key use limit (lower it in tests or for stricter policies).
    pub fn set_use_limit(&mut self, limit: u64) {
        self.use_limit = limit;
    }

    /// True when the active key has reserved 7/8 of the use limit (see [`needs_rotation`]).
    pub fn needs_rotation(&self) -> bool {
        needs_rotation(
            self.keys[self.active].reserved.load(Ordering::Relaxed),
            self.use_limit,
        )
    }

    /// Granted uses of the active key not yet consumed.
    pub fn remaining_budget(&self) -> u64 {
        self.keys[self.active].budget.load(Ordering::Relaxed)
    }

    fn key(&self, id: KeyId) -> Option<&DataKey> {
        let index = usize::try_from(id.0).ok()?.checked_sub(1)?;
        self.keys.get(index)
    }

    fn check_root(&self, root: &RootKey) -> Result<()> {
        if root.id() == self.root_key_id {
            Ok(())
        } else {
            Err(Error::WrongRootKey)
        }
    }

    /// Adds `uses` seals to the budget of the active key `key`. Call after reserving the same
    /// uses in storage, which keeps the exact persisted counter.
    ///
    /// # Errors
    /// [`Error::UnknownKey`]; [`Error::IllegalKeyState`] when `key` is not active;
    /// [`Error::BudgetExhausted`] when the key's reserved uses would pass the use limit
    /// (rotate first).
    pub fn grant(&self, key: KeyId, uses: u64) -> Result<()> {
        let k = self.key(key).ok_or(Error::UnknownKey(key))?;
        if k.state != KeyState::Active {
            return Err(Error::IllegalKeyState {
                id: key,
                state: k.state,
                action: "grant budget",
            });
        }
        let limit = self.use_limit;
        k.reserved
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| {
                r.checked_add(uses).filter(|n| *n <= limit)
            })
            .map_err(|_| Error::BudgetExhausted)?;
        k.budget.fetch_add(uses, Ordering::Relaxed);
        Ok(())
    }

    /// Makes a new active data key; the previous one becomes decrypt-only and loses its unused
    /// budget. Store [`to_wrapped`](KeyRing::to_wrapped) afterwards.
    ///
    /// # Errors
    /// [`Error::WrongRootKey`] when `root` is not the ring's root key.
    pub fn rotate(
        &mut self,
        root: &RootKey,
        now: DateTime<Utc>,
        rng: &mut dyn RngCore,
    ) -> Result<KeyId> {
        self.check_root(root)?;
        let next = self
            .keys
            .len()
            .checked_add(1)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or(Error::CorruptKeyRing("too many data keys"))?;
        let id = KeyId(next);
        let data = random_key(rng);
        let wrapped = wrap(&kek(root), &self.tenant, Purpose::Data(id), &data, rng)?;
        let old = &mut self.keys[self.active];
        old.state = KeyState::DecryptOnly;
        old.budget.store(0, Ordering::Relaxed);
        self.keys.push(DataKey {
            id,
            state: KeyState::Active,
            cipher: Some(Aes256Gcm::new(&(*data).into())),
            wrapped,
            created_at: now,
            reserved: AtomicU64::new(0),
            budget: AtomicU64::new(0),
        });
        self.active = self.keys.len() - 1;
        Ok(id)
    }

    /// Retires a decrypt-only key: its material is dropped (the key schedule is zeroized) and
    /// its wrapped copy emptied. Reseal its values first: afterwards they no longer open.
    ///
    /// # Errors
    /// [`Error::UnknownKey`]; [`Error::IllegalKeyState`] unless the key is decrypt-only.
    pub fn retire(&mut self, id: KeyId) -> Result<()> {
        self.drop_key(
            id,
            KeyState::Retired,
            |state| state == KeyState::DecryptOnly,
            "retire",
        )
    }

    /// Destroys a key that may be compromised: its material is dropped at once, whatever it
    /// still seals (the store shreds those values in the same step that stores the ring).
    /// The active key cannot be destroyed: rotate first. Destroying a retired or destroyed key
    /// marks it destroyed.
    ///
    /// # Errors
    /// [`Error::UnknownKey`]; [`Error::IllegalKeyState`] for the active key.
    pub fn destroy(&mut self, id: KeyId) -> Result<()> {
        self.drop_key(
            id,
            KeyState::Destroyed,
            |state| state != KeyState::Active,
            "destroy",
        )
    }

    /// Moves a key whose state `allowed` accepts to `to`, dropping its material.
    fn drop_key(
        &mut self,
        id: KeyId,
        to: KeyState,
        allowed: impl Fn(KeyState) -> bool,
        action: &'static str,
    ) -> Result<()> {
        let index = usize::try_from(id.0)
            .ok()
            .and_then(|n| n.checked_sub(1))
            .filter(|i| *i < self.keys.len())
            .ok_or(Error::UnknownKey(id))?;
        let k = &mut self.keys[index];
        if !allowed(k.state) {
            return Err(Error::IllegalKeyState {
                id,
                state: k.state,
                action,
            });
        }
        k.state = to;
        k.cipher = None;
        k.wrapped = Vec::new();
        k.budget.store(0, Ordering::Relaxed);
        Ok(())
    }

    /// Root-key rotation: rewraps every live data key and the blind-index key under `new`.
    /// Data keys and indexes are unchanged, so every sealed value still opens. Returns the
    /// wrapped form to store; nothing changes if an error is returned.
    ///
    /// # Errors
    /// [`Error::WrongRootKey`] when `old` is not the ring's root key.
    pub fn rewrap_root(
        &mut self,
        old: &RootKey,
        new: &RootKey,
        rng: &mut dyn RngCore,
    ) -> Result<WrappedKeyRing> {
        self.check_root(old)?;
        let (old_kek, new_kek) = (kek(old), kek(new));
        let mut rewrapped = Vec::with_capacity(self.keys.len());
        for k in &self.keys {
            if !k.state.is_live() {
                rewrapped.push(Vec::new());
                continue;
            }
            let key = unwrap_key(&old_kek, &self.tenant, Purpose::Data(k.id), &k.wrapped)?;
            rewrapped.push(wrap(
                &new_kek,
                &self.tenant,
                Purpose::Data(k.id),
                &key,
                rng,
            )?);
        }
        let index = unwrap_key(&old_kek, &self.tenant, Purpose::Index, &self.index_wrapped)?;
        let index_wrapped = wrap(&new_kek, &self.tenant, Purpose::Index, &index, rng)?;
        for (k, w) in self.keys.iter_mut().zip(rewrapped) {
            k.wrapped = w;
        }
        self.index_wrapped = index_wrapped;
        self.root_key_id = new.id().to_owned();
        Ok(self.to_wrapped())
    }

    /// Seals `plaintext` under the active key for `ctx`, consuming one use of budget.
    ///
    /// # Errors
    /// [`Error::BudgetExhausted`] when no granted use is left; [`Error::TenantMismatch`] when
    /// `ctx.tenant` is not the ring's tenant.
    #[inline]
    pub fn seal(
        &self,
        ctx: &SealContext<'_>,
        plaintext: &[u8],
        rng: &mut dyn RngCore,
    ) -> Result<SealedValue> {
        if *ctx.tenant != self.tenant {
            return Err(Error::TenantMismatch);
        }
        let key = &self.keys[self.active];
        let cipher = key.cipher.as_ref().ok_or(Error::IllegalKeyState {
            id: key.id,
            state: key.state,
            action: "seal",
        })?;
        key.budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1))
            .map_err(|_| Error::BudgetExhausted)?;

        let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN);
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        out.extend_from_slice(&MAGIC);
        out.push(FORMAT_VERSION);
        out.push(SUITE_AES256GCM);
        out.extend_from_slice(&key.id.0.to_be_bytes());
        out.extend_from_slice(&nonce);
        let aad = Aad::new(&out[..HEADER_LEN], ctx).ok_or(Error::TenantMismatch)?;
        // From here until encryption `out` holds plaintext; nothing in between can panic, and
        // the error path wipes it. (A `Zeroizing` wrapper here cost 5% of a seal.)
        out.extend_from_slice(plaintext);
        match cipher.encrypt_in_place_detached(
            Nonce::from_slice(&nonce),
            aad.as_slice(),
            &mut out[HEADER_LEN..],
        ) {
            Ok(tag) => out.extend_from_slice(&tag),
            Err(_) => {
                out.zeroize();
                return Err(Error::SealFailed);
            }
        }
        Ok(SealedValue::from_vec(out))
    }

    /// Opens a value sealed for `ctx` by any live key of this ring.
    ///
    /// # Errors
    /// [`Error::OpenFailed`] for every failure: malformed bytes, unknown or retired key,
    /// another context, tampering.
    #[inline]
    pub fn open(&self, ctx: &SealContext<'_>, sealed: &SealedValue) -> Result<Zeroizing<Vec<u8>>> {
        let bytes = sealed.as_bytes();
        let id = parse_key_id(bytes).ok_or(Error::OpenFailed)?;
        let cipher = self
            .key(id)
            .and_then(|k| k.cipher.as_ref())
            .ok_or(Error::OpenFailed)?;
        if *ctx.tenant != self.tenant {
            return Err(Error::OpenFailed);
        }
        let aad = Aad::new(&bytes[..HEADER_LEN], ctx).ok_or(Error::OpenFailed)?;
        let (body, tag) = bytes[HEADER_LEN..].split_at(bytes.len() - HEADER_LEN - TAG_LEN);
        let mut plain = Zeroizing::new(body.to_vec());
        cipher
            .decrypt_in_place_detached(
                Nonce::from_slice(&bytes[HEADER_LEN - NONCE_LEN..HEADER_LEN]),
                aad.as_slice(),
                &mut plain,
                Tag::from_slice(tag),
            )
            .map_err(|_| Error::OpenFailed)?;
        Ok(plain)
    }

    /// Opens a value with whichever key sealed it and seals it again under the active key
    /// (one use of budget). Used to migrate values off a key before retiring it.
    ///
    /// # Errors
    /// As [`open`](KeyRing::open) and [`seal`](KeyRing::seal).
    pub fn reseal(
        &self,
        ctx: &SealContext<'_>,
        sealed: &SealedValue,
        rng: &mut dyn RngCore,
    ) -> Result<SealedValue> {
        let plain = self.open(ctx, sealed)?;
        self.seal(ctx, &plain, rng)
    }

    /// Seals a card key: the code with [`Field::Code`] and the secret, if any, with
    /// [`Field::Secret`]. Consumes one use of budget per field.
    ///
    /// # Errors
    /// As [`seal`](KeyRing::seal).
    pub fn seal_card(
        &self,
        tenant: &TenantId,
        sku: SkuId,
        card: CardId,
        key: &CardKey,
        rng: &mut dyn RngCore,
    ) -> Result<SealedCard> {
        let ctx = |field| SealContext {
            tenant,
            sku,
            card,
            field,
        };
        let code = self.seal(&ctx(Field::Code), key.code.expose().as_bytes(), rng)?;
        let secret = match &key.secret {
            Some(s) => Some(self.seal(&ctx(Field::Secret), s.expose().as_bytes(), rng)?),
            None => None,
        };
        Ok(SealedCard { code, secret })
    }

    /// Opens a sealed card key.
    ///
    /// # Errors
    /// [`Error::OpenFailed`] as [`open`](KeyRing::open), also when the opened text is not a
    /// valid code or secret.
    pub fn open_card(
        &self,
        tenant: &TenantId,
        sku: SkuId,
        card: CardId,
        sealed: &SealedCard,
    ) -> Result<CardKey> {
        let ctx = |field| SealContext {
            tenant,
            sku,
            card,
            field,
        };
        let code = CardCode::new(to_text(self.open(&ctx(Field::Code), &sealed.code)?)?)
            .map_err(|_| Error::OpenFailed)?;
        let secret = match &sealed.secret {
            Some(s) => Some(
                CardSecret::new(to_text(self.open(&ctx(Field::Secret), s)?)?)
                    .map_err(|_| Error::OpenFailed)?,
            ),
            None => None,
        };
        Ok(CardKey { code, secret })
    }

    /// The blind index of a card key under [`IndexScheme::CURRENT`] (see [`BlindIndex`]).
    pub fn blind_index(&self, key: &CardKey) -> BlindIndex {
        self.blind_index_as(key, IndexScheme::CURRENT)
    }

    /// The blind index of a card key under `scheme`: the current one for new cards, an older
    /// one to find cards stored before a change of scheme.
    pub fn blind_index_as(&self, key: &CardKey, scheme: IndexScheme) -> BlindIndex {
        let mut text = Zeroizing::new(String::new());
        normalise_into(key.code.expose(), scheme, &mut text);
        let mut mac = self.index_mac.clone();
        mac.update(text.as_bytes());
        if let Some(secret) = &key.secret {
            text.clear();
            normalise_into(secret.expose(), scheme, &mut text);
            mac.update(&[0x1f]);
            mac.update(text.as_bytes());
        }
        BlindIndex::from_bytes(mac.finalize().into_bytes().into())
    }
}

#[cfg(test)]
impl KeyRing {
    /// Test-only: the raw data keys (live ones) and the blind-index key, for leak checks.
    pub(crate) fn raw_keys_for_test(&self, root: &RootKey) -> Vec<Zeroizing<[u8; 32]>> {
        let kek = kek(root);
        let mut out: Vec<_> = self
            .keys
            .iter()
            .filter(|k| k.state.is_live())
            .filter_map(|k| unwrap_key(&kek, &self.tenant, Purpose::Data(k.id), &k.wrapped).ok())
            .collect();
        out.extend(unwrap_key(&kek, &self.tenant, Purpose::Index, &self.index_wrapped).ok());
        out
    }
}

/// Turns opened bytes into a String without copying, zeroizing them if they are not UTF-8.
fn to_text(mut plain: Zeroizing<Vec<u8>>) -> Result<String> {
    String::from_utf8(std::mem::take(&mut *plain)).map_err(|e| {
        drop(Zeroizing::new(e.into_bytes()));
        Error::OpenFailed
    })
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Keys<'a>(&'a [DataKey]);
        impl fmt::Debug for Keys<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_map()
                    .entries(self.0.iter().map(|k| (k.id, k.state)))
                    .finish()
            }
        }
        f.debug_struct("KeyRing")
            .field("tenant", &self.tenant)
            .field("root_key_id", &self.root_key_id)
            .field("active", &self.active_key_id())
            .field("keys", &Keys(&self.keys))
            .finish_non_exhaustive()
    }
}
