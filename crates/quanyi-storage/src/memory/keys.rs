//! The key-ring port of the memory store.

use super::*;

#[async_trait]
impl KeyRingStore for MemoryStore {
    async fn key_ring(&self, tenant: &TenantId) -> Result<Option<(WrappedKeyRing, u64)>> {
        Ok(self.state.lock().rings.get(tenant).cloned())
    }

    async fn insert_key_ring(&self, ring: &WrappedKeyRing) -> Result<()> {
        let mut s = self.state.lock();
        if s.rings.contains_key(&ring.tenant) {
            return Err(Error::conflict(
                "key ring",
                &ring.tenant,
                "tenant already has one",
            ));
        }
        s.rings.insert(ring.tenant.clone(), (ring.clone(), 1));
        Ok(())
    }

    async fn update_key_ring(
        &self,
        ring: &WrappedKeyRing,
        expected_version: u64,
        trail: Trail<'_>,
    ) -> Result<u64> {
        let mut s = self.state.lock();
        let stored = s
            .rings
            .get(&ring.tenant)
            .ok_or_else(|| Error::not_found("key ring", &ring.tenant))?;
        if stored.1 != expected_version {
            return Err(Error::conflict("key ring", &ring.tenant, "stale version"));
        }
        s.check_trail(&trail, &ring.tenant)?;
        s.rings
            .insert(ring.tenant.clone(), (ring.clone(), expected_version + 1));
        s.push_trail(&trail);
        Ok(expected_version + 1)
    }

    async fn destroy_key(
        &self,
        ring: &WrappedKeyRing,
        expected_version: u64,
        key: KeyId,
        now: DateTime<Utc>,
        trail: Trail<'_>,
    ) -> Result<DestroyOutcome> {
        if ring.key_state(key) != Some(KeyState::Destroyed) {
            return Err(Error::Invalid(format!(
                "ring does not mark {key} destroyed"
            )));
        }
        let mut s = self.state.lock();
        let stored = s
            .rings
            .get(&ring.tenant)
            .ok_or_else(|| Error::not_found("key ring", &ring.tenant))?;
        if stored.1 != expected_version {
            return Err(Error::conflict("key ring", &ring.tenant, "stale version"));
        }
        s.check_trail(&trail, &ring.tenant)?;
        s.push_trail(&trail);
        let tenant = &ring.tenant;
        let sealed: Vec<CardId> = s
            .cards
            .values()
            .filter(|c| &c.tenant == tenant && c.key_id == key)
            .map(|c| c.id)
            .collect();
        let mut outcome = DestroyOutcome {
            version: expected_version + 1,
            shredded: 0,
            withdrawn: 0,
        };
        for id in sealed {
            if s.withdraw(tenant, id, now) {
                outcome.withdrawn += 1;
            }
            if let Some(card) = s.cards.get_mut(&id) {
                card.sealed = SealedCard {
                    code: SealedValue::from_bytes(Vec::new()),
                    secret: None,
                };
                outcome.shredded += 1;
            }
        }
        s.rings
            .insert(tenant.clone(), (ring.clone(), outcome.version));
        Ok(outcome)
    }

    async fn reserve_key_uses(
        &self,
        tenant: &TenantId,
        key: KeyId,
        uses: u64,
        limit: u64,
    ) -> Result<u64> {
        let mut s = self.state.lock();
        let (ring, version) = s
            .rings
            .get_mut(tenant)
            .ok_or_else(|| Error::not_found("key ring", tenant))?;
        let after = ring
            .reserve_uses(key, uses, limit)
            .map_err(|r| Error::uses_refused(key, r))?;
        *version += 1;
        Ok(after)
    }
}
