//! The vault port of the memory store: sealed cards and their pools.

use super::*;

#[async_trait]
impl VaultStore for MemoryStore {
    async fn insert_cards(
        &self,
        tenant: &TenantId,
        cards: &[NewCard],
        now: DateTime<Utc>,
        trail: Trail<'_>,
    ) -> Result<InsertCardsOutcome> {
        let mut s = self.state.lock();
        s.check_keys(tenant, cards)?;
        let mut ids = HashSet::with_capacity(cards.len());
        if let Some(c) = cards
            .iter()
            .find(|c| s.cards.contains_key(&c.id) || !ids.insert(c.id))
        {
            return Err(Error::conflict("card", c.id, "id already stored"));
        }
        s.check_trail(&trail, tenant)?;
        s.push_trail(&trail);
        let mut outcome = InsertCardsOutcome::default();
        let mut seen = HashSet::new();
        for (i, c) in cards.iter().enumerate() {
            if s.holds_index_of(tenant, c) || !seen.insert(c.blind_index) {
                outcome.duplicates.push(i);
                continue;
            }
            outcome.inserted.push(c.id);
        }
        let dup: HashSet<usize> = outcome.duplicates.iter().copied().collect();
        for (i, c) in cards.iter().enumerate() {
            if dup.contains(&i) {
                continue;
            }
            s.blind.insert((tenant.clone(), c.blind_index), c.id);
            s.pools
                .entry((tenant.clone(), c.sku))
                .or_default()
                .free
                .insert(c.id);
            s.cards.insert(c.id, available(tenant, c, now));
        }
        Ok(outcome)
    }

    async fn reserve_cards(
        &self,
        tenant: &TenantId,
        sku: SkuId,
        order: OrderId,
        quantity: u32,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Vec<CardId>> {
        if quantity == 0 {
            return Err(Error::Invalid("reserve of zero cards".into()));
        }
        let mut s = self.state.lock();
        let (reserved, sold) = s.held_by(tenant, order, sku);
        if !reserved.is_empty() || !sold.is_empty() {
            return Ok(sold.into_iter().chain(reserved).collect());
        }
        let want = usize::try_from(quantity).unwrap_or(usize::MAX);
        let chosen = s.free_cards(tenant, sku, now, want, &[]);
        if chosen.len() < want {
            return Err(Error::OutOfStock {
                sku,
                requested: quantity,
                available: s.free_count(tenant, sku, now),
            });
        }
        for id in &chosen {
            s.set_card_state(*id, CardState::Reserved { order, until });
        }
        s.order_cards
            .entry((tenant.clone(), order))
            .or_default()
            .extend(chosen.iter().copied());
        Ok(chosen)
    }

    async fn commit_cards(
        &self,
        tenant: &TenantId,
        sku: SkuId,
        order: OrderId,
        quantity: u32,
        now: DateTime<Utc>,
    ) -> Result<Vec<CardId>> {
        if quantity == 0 {
            return Err(Error::Invalid("commit of zero cards".into()));
        }
        let mut s = self.state.lock();
        let (reserved, sold) = s.held_by(tenant, order, sku);
        let want = usize::try_from(quantity).unwrap_or(usize::MAX);
        if sold.len() >= want {
            return Ok(sold);
        }
        let need = want - sold.len();
        let mut chosen: Vec<CardId> = reserved.into_iter().take(need).collect();
        if chosen.len() < need {
            let short = need - chosen.len();
            let extra = s.free_cards(tenant, sku, now, short, &chosen);
            if extra.len() < short {
                return Err(Error::OutOfStock {
                    sku,
                    requested: quantity,
                    available: (extra.len() + chosen.len() + sold.len()) as u64,
                });
            }
            s.order_cards
                .entry((tenant.clone(), order))
                .or_default()
                .extend(extra.iter().copied());
            chosen.extend(extra);
        }
        for id in &chosen {
            s.set_card_state(*id, CardState::Sold { order, at: now });
        }
        Ok(sold.into_iter().chain(chosen).collect())
    }

    async fn insert_sold_cards(
        &self,
        tenant: &TenantId,
        cards: &[NewCard],
        change: OrderChange<'_>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let staged = Staged::of(change.order, change.events);
        let mut s = self.state.lock();
        if change.order.tenant() != tenant {
            return Err(Error::Invalid("order of another tenant".into()));
        }
        s.check_order_change(&change)?;
        s.check_keys(tenant, cards)?;
        let mut ids = Set::default();
        let mut indexes = Set::default();
        let mut duplicates = Vec::new();
        for (i, c) in cards.iter().enumerate() {
            if s.cards.contains_key(&c.id) || !ids.insert(c.id) {
                return Err(Error::conflict("card", c.id, "id already stored"));
            }
            if s.holds_index_of(tenant, c) || !indexes.insert(c.blind_index) {
                duplicates.push(i);
            }
        }
        if !duplicates.is_empty() {
            return Err(Error::DuplicateCards {
                positions: duplicates,
            });
        }
        let order = change.order.id();
        for c in cards {
            s.blind.insert((tenant.clone(), c.blind_index), c.id);
            s.cards.insert(c.id, available(tenant, c, now));
            s.set_card_state(c.id, CardState::Sold { order, at: now });
            s.order_cards
                .entry((tenant.clone(), order))
                .or_default()
                .push(c.id);
        }
        let replaced = s.apply_order_change(staged);
        drop(s);
        drop(replaced);
        Ok(())
    }

    async fn held_cards(&self, tenant: &TenantId, order: OrderId) -> Result<Vec<HeldCard>> {
        let s = self.state.lock();
        let mut held: Vec<HeldCard> = s
            .order_cards
            .get(&(tenant.clone(), order))
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(|id| s.cards.get(id))
            .filter(|c| c.state.holder() == Some(order))
            .map(|c| HeldCard {
                id: c.id,
                sku: c.sku,
                state: c.state,
            })
            .collect();
        held.sort_by_key(|c| c.id);
        held.dedup_by_key(|c| c.id);
        Ok(held)
    }

    async fn release_cards(&self, tenant: &TenantId, order: OrderId) -> Result<u32> {
        Ok(self.state.lock().release(tenant, order))
    }

    async fn order_cards(&self, tenant: &TenantId, order: OrderId) -> Result<Vec<StoredCard>> {
        let s = self.state.lock();
        Ok(s.order_cards
            .get(&(tenant.clone(), order))
            .map(|ids| {
                ids.iter()
                    .filter_map(|id| s.cards.get(id))
                    .filter(|c| matches!(c.state, CardState::Sold { order: o, .. } if o == order))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn mark_revealed(
        &self,
        tenant: &TenantId,
        order: OrderId,
        now: DateTime<Utc>,
    ) -> Result<Vec<CardId>> {
        let mut s = self.state.lock();
        let ids = s
            .order_cards
            .get(&(tenant.clone(), order))
            .cloned()
            .unwrap_or_default();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(c) = s.cards.get_mut(&id) {
                let sold = matches!(c.state, CardState::Sold { order: o, .. } if o == order);
                if sold && c.voided_at.is_none() {
                    c.revealed_at.get_or_insert(now);
                    out.push(id);
                }
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    async fn card(&self, tenant: &TenantId, id: CardId) -> Result<Option<StoredCard>> {
        Ok(self
            .state
            .lock()
            .cards
            .get(&id)
            .filter(|c| &c.tenant == tenant)
            .cloned())
    }

    async fn card_by_index(
        &self,
        tenant: &TenantId,
        index: &BlindIndex,
    ) -> Result<Option<StoredCard>> {
        let s = self.state.lock();
        Ok(s.blind
            .get(&(tenant.clone(), *index))
            .and_then(|id| s.cards.get(id))
            .filter(|c| &c.tenant == tenant && c.blind_index == *index)
            .cloned())
    }

    async fn stock(&self, tenant: &TenantId, sku: SkuId, now: DateTime<Utc>) -> Result<StockCount> {
        let s = self.state.lock();
        let key = (tenant.clone(), sku);
        Ok(s.pools.get(&key).map_or_else(StockCount::default, |pool| {
            let available = pool.free_count(now);
            StockCount {
                available,
                reserved: (pool.free.len() as u64 + pool.held.len() as u64) - available,
                sold: pool.sold,
            }
        }))
    }

    async fn cards_sealed_with(
        &self,
        tenant: &TenantId,
        key: KeyId,
        limit: usize,
    ) -> Result<Vec<StoredCard>> {
        let s = self.state.lock();
        let mut out: Vec<StoredCard> = s
            .cards
            .values()
            .filter(|c| &c.tenant == tenant && c.key_id == key)
            .cloned()
            .collect();
        out.sort_by_key(|c| c.id);
        out.truncate(limit);
        Ok(out)
    }

    async fn replace_sealed(
        &self,
        tenant: &TenantId,
        card: CardId,
        expected_key: KeyId,
        sealed: &SealedCard,
        key_id: KeyId,
    ) -> Result<()> {
        let mut s = self.state.lock();
        let stored = s
            .cards
            .get(&card)
            .filter(|c| &c.tenant == tenant)
            .ok_or_else(|| Error::not_found("card", card))?;
        if stored.key_id != expected_key {
            return Err(Error::conflict("card", card, "sealed with another key"));
        }
        if !s.is_active_key(tenant, key_id) {
            return Err(Error::KeyNotActive {
                key: key_id.to_string(),
            });
        }
        if let Some(stored) = s.cards.get_mut(&card) {
            stored.sealed = sealed.clone();
            stored.key_id = key_id;
        }
        Ok(())
    }

    async fn cards_to_reindex(
        &self,
        tenant: &TenantId,
        scheme: IndexScheme,
        limit: usize,
    ) -> Result<Vec<StoredCard>> {
        let s = self.state.lock();
        let mut out: Vec<StoredCard> = s
            .cards
            .values()
            .filter(|c| &c.tenant == tenant && c.index_scheme < scheme)
            .cloned()
            .collect();
        out.sort_by_key(|c| c.id);
        out.truncate(limit);
        Ok(out)
    }

    async fn reindex_cards(
        &self,
        tenant: &TenantId,
        changes: &[IndexChange],
    ) -> Result<Vec<Reindexed>> {
        let mut s = self.state.lock();
        let mut out = Vec::with_capacity(changes.len());
        for change in changes {
            let current = s
                .cards
                .get(&change.card)
                .filter(|c| &c.tenant == tenant && c.blind_index == change.from);
            if current.is_none() {
                out.push(Reindexed::Stale);
                continue;
            }
            let to = (tenant.clone(), change.to);
            let answer = match s.blind.get(&to).copied() {
                Some(holder) if holder != change.card => Reindexed::Duplicate { holder },
                _ => {
                    s.blind.remove(&(tenant.clone(), change.from));
                    s.blind.insert(to, change.card);
                    Reindexed::Moved
                }
            };
            if let Some(card) = s.cards.get_mut(&change.card) {
                if answer == Reindexed::Moved {
                    card.blind_index = change.to;
                }
                card.index_scheme = change.scheme;
            }
            out.push(answer);
        }
        Ok(out)
    }

    async fn withdraw_cards(
        &self,
        tenant: &TenantId,
        cards: &[CardId],
        now: DateTime<Utc>,
    ) -> Result<Vec<CardId>> {
        let mut s = self.state.lock();
        Ok(cards
            .iter()
            .copied()
            .filter(|id| s.withdraw(tenant, *id, now))
            .collect())
    }
}
