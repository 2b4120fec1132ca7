//! The key ring's life: the cached ring and its refresh, encryption budgets, rotation,
//! resealing, retirement, destruction, and re-indexing under a new blind-index scheme.

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use quanyi_core::{Actor, CardId};
use quanyi_storage::{AuditAction, AuditOutcome, AuditRecord, Trail};
use quanyi_vault::{
    Field, KeyId, KeyRing, KeyState, RootKey, SealContext, SealedCard, WrappedKeyRing,
};

use crate::events::VaultEvent;
use crate::{Error, Result, Shop};

/// What [`Shop::destroy_key`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DestroyReport {
    /// The destroyed key.
    pub key: KeyId,
    /// The key made active first, when the destroyed key was the active one.
    pub rotated_to: Option<KeyId>,
    /// Cards whose sealed values were shredded.
    pub shredded: u64,
    /// Of those, the unsold ones, withdrawn from sale.
    pub withdrawn: u64,
}

impl Shop {
    /// The tenant's key ring, unwrapped and cached; created on first use. A ring cached longer
    /// than the shop's key ring refresh is read again first.
    pub(crate) async fn ring(&self) -> Result<Arc<KeyRing>> {
        let now = self.now();
        if let Some((ring, loaded)) = self.inner.rings.read().get(&self.tenant) {
            if now - *loaded < self.inner.key_ring_refresh {
                return Ok(ring.clone());
            }
        }
        self.load_ring().await
    }

    /// Reads the stored ring now (creating it for a new tenant) and caches it. When it has the
    /// same keys in the same states as the cached ring, the cached one is kept with its budget.
    pub(crate) async fn load_ring(&self) -> Result<Arc<KeyRing>> {
        let store = self.store_ref();
        let root = &self.inner.root;
        let now = self.now();
        let wrapped = match store.key_ring(&self.tenant).await? {
            Some((wrapped, _)) => wrapped,
            None => {
                let (_, wrapped) =
                    KeyRing::create(self.tenant.clone(), root, now, &mut rand::thread_rng())?;
                match store.insert_key_ring(&wrapped).await {
                    Ok(()) => wrapped,
                    // Another process created the tenant's ring first: use theirs.
                    Err(e) if e.kind() == quanyi_core::ErrorKind::Conflict => store
                        .key_ring(&self.tenant)
                        .await?
                        .map(|(w, _)| w)
                        .ok_or_else(|| Error::Storage(e))?,
                    Err(e) => return Err(e.into()),
                }
            }
        };
        let cached = self
            .inner
            .rings
            .read()
            .get(&self.tenant)
            .map(|(ring, _)| ring.clone());
        let ring = match cached {
            Some(ring) if same_keys(&ring, &wrapped) => ring,
            _ => {
                let mut ring = KeyRing::unwrap(root, &wrapped)?;
                ring.set_use_limit(self.inner.key_use_limit);
                Arc::new(ring)
            }
        };
        self.cache_ring(ring.clone(), now);
        Ok(ring)
    }

    fn cache_ring(&self, ring: Arc<KeyRing>, now: DateTime<Utc>) {
        self.inner
            .rings
            .write()
            .insert(self.tenant.clone(), (ring, now));
    }

    /// Reserves `uses` seals on the active data key in storage (the exact, shared counter) and
    /// grants them to the cached ring; rotates first when the key is used up.
    pub(crate) async fn ring_with_budget(&self, uses: u64) -> Result<Arc<KeyRing>> {
        let mut ring = self.ring().await?;
        for _ in 0..3 {
            let key = ring.active_key_id();
            match self
                .store_ref()
                .reserve_key_uses(&self.tenant, key, uses, self.inner.key_use_limit)
                .await
            {
                Ok(_) => {
                    ring.grant(key, uses)?;
                    return Ok(ring);
                }
                Err(quanyi_storage::Error::KeyExhausted { .. }) => {
                    self.rotate_as("system").await?;
                    ring = self.ring().await?;
                }
                // The key was rotated by another process: reload and try the new one.
                Err(e) if e.kind() == quanyi_core::ErrorKind::Conflict => {
                    ring = self.load_ring().await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Storage(quanyi_storage::Error::conflict(
            "key ring",
            &self.tenant,
            "kept changing while reserving key uses",
        )))
    }

    /// The data keys of the tenant's ring and their states, as stored now.
    ///
    /// # Errors
    /// [`Error::Vault`]; [`Error::Storage`].
    pub async fn data_keys(&self) -> Result<Vec<(KeyId, KeyState)>> {
        Ok(self.load_ring().await?.keys().collect())
    }

    /// Starts a new data key; later imports seal under it. The old key still opens what it
    /// sealed until [`reseal_cards`](Shop::reseal_cards) and [`retire_key`](Shop::retire_key).
    ///
    /// The rotation is audited with `actor`.
    ///
    /// # Errors
    /// [`Error::Vault`]; [`Error::Storage`].
    pub async fn rotate_data_key(&self, actor: &Actor) -> Result<KeyId> {
        self.rotate_as(&actor.to_string()).await
    }

    /// [`rotate_data_key`](Shop::rotate_data_key), audited as `actor` (`system` when the
    /// engine rotates a key whose budget ran out).
    async fn rotate_as(&self, actor: &str) -> Result<KeyId> {
        self.ring().await?;
        let (_, key) = self
            .change_ring(
                |ring, root, now| ring.rotate(root, now, &mut rand::thread_rng()),
                |ring, key| {
                    let record = self.audit_record(
                        actor,
                        AuditAction::KeyRotated,
                        key.to_string(),
                        AuditOutcome::Allowed,
                        format!("active key {}", ring.active_key_id()),
                    );
                    (vec![VaultEvent::KeyRotated { key: *key }], Some(record))
                },
            )
            .await?;
        Ok(key)
    }

    /// Reseals every card still sealed with `from` under the active key; returns how many.
    /// Audited with `actor`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for the active key; [`Error::Vault`] when a card fails to open;
    /// [`Error::Storage`].
    pub async fn reseal_cards(&self, actor: &Actor, from: KeyId) -> Result<usize> {
        let store = self.store_ref();
        let mut done = 0usize;
        let mut skipped: HashSet<CardId> = HashSet::new();
        loop {
            let batch: Vec<_> = store
                .cards_sealed_with(&self.tenant, from, 256 + skipped.len())
                .await?
                .into_iter()
                .filter(|c| !skipped.contains(&c.id))
                .collect();
            if batch.is_empty() {
                break;
            }
            let uses: u64 = batch
                .iter()
                .map(|c| 1 + u64::from(c.sealed.secret.is_some()))
                .sum();
            let ring = self.ring_with_budget(uses).await?;
            let to = ring.active_key_id();
            if to == from {
                return Err(Error::InvalidInput(format!(
                    "{from} is the active key: rotate before resealing"
                )));
            }
            for card in batch {
                let ctx = |field| SealContext {
                    tenant: &self.tenant,
                    sku: card.sku,
                    card: card.id,
                    field,
                };
                // The thread's generator is not held across an await: the future stays `Send`.
                let sealed = {
                    let mut rng = rand::thread_rng();
                    SealedCard {
                        code: ring.reseal(&ctx(Field::Code), &card.sealed.code, &mut rng)?,
                        secret: match &card.sealed.secret {
                            Some(s) => Some(ring.reseal(&ctx(Field::Secret), s, &mut rng)?),
                            None => None,
                        },
                    }
                };
                match store
                    .replace_sealed(&self.tenant, card.id, from, &sealed, to)
                    .await
                {
                    Ok(()) => done += 1,
                    // The active key changed meanwhile: seal the rest under the new one.
                    Err(quanyi_storage::Error::KeyNotActive { .. }) => {
                        self.load_ring().await?;
                        break;
                    }
                    // Resealed concurrently by another process.
                    Err(e) if e.kind() == quanyi_core::ErrorKind::Conflict => {
                        skipped.insert(card.id);
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let to = self.ring().await?.active_key_id();
        self.vault_event(VaultEvent::CardsResealed {
            from,
            to,
            cards: done,
        })
        .await?;
        self.audit(
            &actor.to_string(),
            AuditAction::KeyRewrapped,
            from.to_string(),
            AuditOutcome::Allowed,
            format!("{done} card(s) resealed under {to}"),
        )
        .await?;
        Ok(done)
    }

    /// Retires a decrypt-only data key: its material is destroyed, so it opens nothing again.
    /// Audited with `actor`.
    /// Refused while any card is still sealed with it. Other shops on the same store drop the
    /// key when they next read the ring, at most their key ring refresh later
    /// ([`ShopBuilder::key_ring_refresh`](crate::ShopBuilder::key_ring_refresh)).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when cards still use the key; [`Error::Vault`] for the active or an
    /// unknown key; [`Error::Storage`].
    pub async fn retire_key(&self, actor: &Actor, key: KeyId) -> Result<()> {
        if !self
            .store_ref()
            .cards_sealed_with(&self.tenant, key, 1)
            .await?
            .is_empty()
        {
            return Err(Error::InvalidInput(format!(
                "cards are still sealed with {key}: reseal them first"
            )));
        }
        self.change_ring(
            |ring, _, _| ring.retire(key),
            |_, ()| {
                let record = self.audit_record(
                    &actor.to_string(),
                    AuditAction::KeyRetired,
                    key.to_string(),
                    AuditOutcome::Allowed,
                    String::new(),
                );
                (vec![VaultEvent::KeyRetired { key }], Some(record))
            },
        )
        .await?;
        Ok(())
    }

    /// Destroys a data key that may be compromised, at once (audited with `actor`): its
    /// material is dropped from the
    /// stored ring and, in the same atomic write, every card still sealed with it is shredded
    /// (its sealed values emptied) and the unsold ones are withdrawn from sale. No shop on the
    /// same store can open those cards again, whatever ring it has cached; buyers of cards
    /// already sold under the key can no longer reveal them. The active key is rotated first.
    ///
    /// Use [`reseal_cards`](Shop::reseal_cards) and [`retire_key`](Shop::retire_key) for a
    /// key that is merely old: they lose nothing.
    ///
    /// # Errors
    /// [`Error::Vault`] for an unknown key; [`Error::Storage`].
    pub async fn destroy_key(&self, actor: &Actor, key: KeyId) -> Result<DestroyReport> {
        let store = self.store_ref();
        let by = actor.to_string();
        let mut rotated_to = None;
        if self.load_ring().await?.active_key_id() == key {
            rotated_to = Some(self.rotate_as(&by).await?);
        }
        for _ in 0..5 {
            let (wrapped, version) = store
                .key_ring(&self.tenant)
                .await?
                .ok_or_else(|| Error::InvalidInput("the tenant has no key ring yet".into()))?;
            let mut ring = self.unwrap_ring(&wrapped)?;
            if ring.active_key_id() == key {
                // Made active by another process meanwhile: rotate away from it again.
                rotated_to = Some(self.rotate_as(&by).await?);
                continue;
            }
            ring.destroy(key)?;
            let now = self.now();
            // The operator's record goes with the destruction; the counts of what it shredded
            // follow in the event.
            let record = self.audit_record(
                &by,
                AuditAction::KeyDestroyed,
                key.to_string(),
                AuditOutcome::Allowed,
                rotated_to.map_or_else(
                    || "cards sealed with it shredded, unsold ones withdrawn".to_owned(),
                    |to| {
                        format!(
                            "rotated to {to}; cards sealed with it shredded, unsold ones withdrawn"
                        )
                    },
                ),
            );
            match store
                .destroy_key(
                    &ring.to_wrapped(),
                    version,
                    key,
                    now,
                    Trail::NONE.audited(&record),
                )
                .await
            {
                Ok(outcome) => {
                    self.cache_ring(Arc::new(ring), now);
                    let report = DestroyReport {
                        key,
                        rotated_to,
                        shredded: outcome.shredded,
                        withdrawn: outcome.withdrawn,
                    };
                    self.vault_event(VaultEvent::KeyDestroyed {
                        key,
                        shredded: report.shredded,
                        withdrawn: report.withdrawn,
                    })
                    .await?;
                    tracing::warn!(%key, shredded = report.shredded, "data key destroyed");
                    return Ok(report);
                }
                Err(e) if e.kind() == quanyi_core::ErrorKind::Conflict => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Storage(quanyi_storage::Error::conflict(
            "key ring",
            &self.tenant,
            "kept changing while destroying a key",
        )))
    }

    fn unwrap_ring(&self, wrapped: &WrappedKeyRing) -> Result<KeyRing> {
        let mut ring = KeyRing::unwrap(&self.inner.root, wrapped)?;
        ring.set_use_limit(self.inner.key_use_limit);
        Ok(ring)
    }

    /// Loads the stored ring, applies `change`, and stores it with its version; retries when
    /// another process changed it in between.
    pub(crate) async fn change_ring<T>(
        &self,
        change: impl Fn(&mut KeyRing, &RootKey, DateTime<Utc>) -> quanyi_vault::Result<T>,
        trail: impl Fn(&KeyRing, &T) -> (Vec<VaultEvent>, Option<AuditRecord>),
    ) -> Result<(Arc<KeyRing>, T)> {
        let store = self.store_ref();
        for _ in 0..5 {
            let (wrapped, version) = store
                .key_ring(&self.tenant)
                .await?
                .ok_or_else(|| Error::InvalidInput("the tenant has no key ring yet".into()))?;
            let mut ring = self.unwrap_ring(&wrapped)?;
            let now = self.now();
            let out = change(&mut ring, &self.inner.root, now)?;
            // The change's events and the operator's record go in the same write.
            let (events, record) = trail(&ring, &out);
            let events = self.envelopes("key_ring", &self.tenant, 0, events, now);
            let trail = Trail {
                events: &events,
                audit: record.as_ref(),
            };
            match store
                .update_key_ring(&ring.to_wrapped(), version, trail)
                .await
            {
                Ok(_) => {
                    let ring = Arc::new(ring);
                    self.cache_ring(ring.clone(), now);
                    return Ok((ring, out));
                }
                Err(e) if e.kind() == quanyi_core::ErrorKind::Conflict => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Storage(quanyi_storage::Error::conflict(
            "key ring",
            &self.tenant,
            "kept changing",
        )))
    }

    pub(crate) async fn vault_event(&self, event: VaultEvent) -> Result<()> {
        let now = self.now();
        let events = self.envelopes("key_ring", &self.tenant, 0, vec![event], now);
        self.store_ref().append_events(&events).await?;
        Ok(())
    }
}

/// True when `ring` has the stored ring's root key, keys, key states and index scheme (the
/// encryption counters aside), so the cached ring may be kept.
fn same_keys(ring: &KeyRing, stored: &WrappedKeyRing) -> bool {
    ring.root_key_id() == stored.root_key_id
        && ring.active_key_id() == stored.active
        && ring.oldest_index_scheme() == stored.oldest_index_scheme
        && ring.keys().eq(stored.keys.iter().map(|k| (k.id, k.state)))
}
