//! Card keys: the key ring, imports, stock, reveal, rotation.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use quanyi_core::{BatchId, CardId, MemberId, OrderId, SkuId};
use quanyi_goods::StockSource;
use quanyi_order::OrderStatus;
use quanyi_storage::{AuditAction, AuditOutcome, NewCard, StockCount};
use quanyi_vault::{
    CardKey, Field, ImportOptions, KeyId, KeyRing, MalformedLine, SealContext, SealedCard,
    parse_import,
};

use crate::events::VaultEvent;
use crate::{Error, Result, Shop};

/// What to do with malformed lines in an import.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BadLines {
    /// Import nothing when any line is malformed (the default).
    #[default]
    Reject,
    /// Import the good lines and report the bad ones.
    Skip,
}

/// Which earlier card a duplicate line repeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DuplicateOf {
    /// An earlier line of the same file.
    Line(usize),
    /// A card the shop already holds (in stock or sold).
    Stored,
}

/// A line that was not imported because its card key is already known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DuplicateLine {
    /// The 1-based line number.
    pub line: usize,
    /// What it repeats.
    pub of: DuplicateOf,
}

/// What an import did. Line numbers only; never card text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportReport {
    /// The batch id the imported cards carry.
    pub batch: BatchId,
    /// The SKU whose pool they joined.
    pub sku: SkuId,
    /// How many cards were stored.
    pub imported: usize,
    /// Lines skipped as duplicates, in line order.
    pub duplicates: Vec<DuplicateLine>,
    /// Malformed lines (skipped), in line order.
    pub malformed: Vec<MalformedLine>,
    /// Stock of the SKU after the import.
    pub stock: StockCount,
}

impl fmt::Display for ImportReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "imported {}, duplicates {}, malformed {}; {} in stock",
            self.imported,
            self.duplicates.len(),
            self.malformed.len(),
            self.stock.available
        )?;
        for d in &self.duplicates {
            match d.of {
                DuplicateOf::Line(first) => {
                    writeln!(f, "  line {}: duplicate of line {first}", d.line)?;
                }
                DuplicateOf::Stored => writeln!(f, "  line {}: already in the vault", d.line)?,
            }
        }
        for m in &self.malformed {
            writeln!(f, "  line {}: malformed ({})", m.line, m.reason)?;
        }
        Ok(())
    }
}

/// One revealed card key. The plaintext is inside [`CardKey`], which never prints it.
#[derive(Debug, Clone)]
pub struct RevealedCard {
    /// The card.
    pub card: CardId,
    /// Its SKU.
    pub sku: SkuId,
    /// The order line it was delivered on.
    pub line: u16,
    /// The code and secret; read them with `key.code.expose()`.
    pub key: CardKey,
}

/// The card keys of a delivered order, for its buyer only.
#[derive(Debug, Clone)]
pub struct Revealed {
    /// The order.
    pub order: OrderId,
    /// Its cards in delivery order.
    pub cards: Vec<RevealedCard>,
}

impl Shop {
    /// The tenant's key ring, unwrapped and cached; created on first use.
    pub(crate) async fn ring(&self) -> Result<Arc<KeyRing>> {
        if let Some(ring) = self.inner.rings.read().get(&self.tenant) {
            return Ok(ring.clone());
        }
        self.load_ring().await
    }

    async fn load_ring(&self) -> Result<Arc<KeyRing>> {
        let store = self.store_ref();
        let root = &self.inner.root;
        let wrapped = match store.key_ring(&self.tenant).await? {
            Some((wrapped, _)) => wrapped,
            None => {
                let now = self.now();
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
        let mut ring = KeyRing::unwrap(root, &wrapped)?;
        ring.set_use_limit(self.inner.key_use_limit);
        let ring = Arc::new(ring);
        self.inner
            .rings
            .write()
            .insert(self.tenant.clone(), ring.clone());
        Ok(ring)
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
                    self.rotate_data_key().await?;
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

    /// Imports a plain-text or CSV batch of card keys into a SKU's vault pool. Each key is
    /// sealed (AES-256-GCM, bound to tenant, SKU, card and field) before it reaches storage.
    /// Duplicates, within the file or of any card the shop ever held, are skipped and reported;
    /// malformed lines reject the whole batch unless `bad_lines` is [`BadLines::Skip`].
    ///
    /// # Errors
    /// [`Error::UnknownSku`]; [`Error::NotVaultStocked`]; [`Error::ImportRejected`] (nothing
    /// imported); [`Error::Vault`]; [`Error::Storage`].
    pub async fn import_card_keys(
        &self,
        sku: SkuId,
        input: &[u8],
        options: &ImportOptions,
        bad_lines: BadLines,
    ) -> Result<ImportReport> {
        let goods = self.goods_of(sku).await?;
        let stock_source = goods.sku(sku).map(|s| s.stock);
        if stock_source != Some(StockSource::VaultPool) {
            return Err(Error::NotVaultStocked(sku));
        }
        let parsed = parse_import(input, options);
        if !parsed.malformed.is_empty() && bad_lines == BadLines::Reject {
            return Err(Error::ImportRejected {
                malformed: parsed.malformed,
            });
        }
        let plan = self.ring().await?.plan_import(parsed);
        let uses: u64 = plan
            .cards
            .iter()
            .map(|c| 1 + u64::from(c.key.secret.is_some()))
            .sum();
        let now = self.now();
        let batch = BatchId::generate(now, &mut rand::thread_rng());
        let mut cards = Vec::with_capacity(plan.cards.len());
        if uses > 0 {
            let ring = self.ring_with_budget(uses).await?;
            let mut rng = rand::thread_rng();
            // Ids in file order, so the pool sells the batch in the order it was written.
            let ids = CardId::generate_sequence(now, &mut rng, plan.cards.len());
            for (planned, id) in plan.cards.iter().zip(ids) {
                let sealed = ring.seal_card(&self.tenant, sku, id, &planned.key, &mut rng)?;
                cards.push(NewCard {
                    id,
                    sku,
                    batch,
                    blind_index: planned.index,
                    sealed,
                    key_id: ring.active_key_id(),
                });
            }
        }
        let outcome = self
            .store_ref()
            .insert_cards(&self.tenant, &cards, now)
            .await?;
        let mut duplicates: Vec<DuplicateLine> = plan
            .duplicates
            .iter()
            .map(|d| DuplicateLine {
                line: d.line,
                of: DuplicateOf::Line(d.first_line),
            })
            .chain(outcome.duplicates.iter().filter_map(|pos| {
                plan.cards.get(*pos).map(|c| DuplicateLine {
                    line: c.line,
                    of: DuplicateOf::Stored,
                })
            }))
            .collect();
        duplicates.sort_by_key(|d| d.line);
        let stock = self.store_ref().stock(&self.tenant, sku, now).await?;
        let report = ImportReport {
            batch,
            sku,
            imported: outcome.inserted.len(),
            duplicates,
            malformed: plan.malformed,
            stock,
        };
        let event = VaultEvent::BatchImported {
            batch,
            sku,
            imported: report.imported,
            duplicates: report.duplicates.len(),
            malformed: report.malformed.len(),
        };
        let events = self.envelopes("card_batch", batch, 1, vec![event], now);
        self.store_ref().append_events(&events).await?;
        self.audit(
            "system",
            AuditAction::Import,
            batch.to_string(),
            AuditOutcome::Allowed,
            format!(
                "sku {sku}: imported {}, duplicates {}, malformed {}",
                report.imported,
                report.duplicates.len(),
                report.malformed.len()
            ),
        )
        .await?;
        tracing::info!(%batch, %sku, imported = report.imported, "card keys imported");
        Ok(report)
    }

    /// Card-key stock of a SKU now.
    ///
    /// # Errors
    /// [`Error::UnknownSku`]; [`Error::Storage`].
    pub async fn stock(&self, sku: SkuId) -> Result<StockCount> {
        self.goods_of(sku).await?;
        Ok(self
            .store_ref()
            .stock(&self.tenant, sku, self.now())
            .await?)
    }

    /// Opens the card keys of a delivered order for its buyer. Every attempt is audited, and
    /// every refusal is the same [`Error::RevealDenied`]: an unknown order, another member's
    /// order, an undelivered order and a ciphertext that fails to open look alike.
    ///
    /// # Errors
    /// [`Error::RevealDenied`]; [`Error::Storage`].
    pub async fn reveal(&self, member: &MemberId, order: OrderId) -> Result<Revealed> {
        match self.try_reveal(member, order).await {
            Ok(revealed) => {
                self.audit(
                    member.as_str(),
                    AuditAction::Reveal,
                    order.to_string(),
                    AuditOutcome::Allowed,
                    format!("{} card(s)", revealed.cards.len()),
                )
                .await?;
                Ok(revealed)
            }
            Err(Denied::Because(why)) => {
                self.audit(
                    member.as_str(),
                    AuditAction::Reveal,
                    order.to_string(),
                    AuditOutcome::Denied,
                    why.to_owned(),
                )
                .await?;
                tracing::warn!(%order, reason = why, "reveal denied");
                Err(Error::RevealDenied)
            }
            Err(Denied::Failed(e)) => Err(e),
        }
    }

    async fn try_reveal(&self, member: &MemberId, order_id: OrderId) -> Result<Revealed, Denied> {
        let store = self.store_ref();
        let order = store
            .order(&self.tenant, order_id)
            .await
            .map_err(|e| Denied::Failed(e.into()))?
            .ok_or(Denied::Because("unknown_order"))?;
        if order.member() != member {
            return Err(Denied::Because("not_the_buyer"));
        }
        if !matches!(
            order.status(),
            OrderStatus::Delivered | OrderStatus::PartiallyDelivered
        ) {
            return Err(Denied::Because("not_delivered"));
        }
        let stored = store
            .order_cards(&self.tenant, order_id)
            .await
            .map_err(|e| Denied::Failed(e.into()))?;
        let mut ring = self.ring().await.map_err(Denied::Failed)?;
        let mut cards = Vec::with_capacity(stored.len());
        for card in stored {
            let line = order
                .lines()
                .iter()
                .find(|l| l.cards.contains(&card.id))
                .map(|l| l.no)
                .ok_or(Denied::Because("card_not_on_order"))?;
            let key = match ring.open_card(&self.tenant, card.sku, card.id, &card.sealed) {
                Ok(key) => key,
                // The key may have been rotated by another process: reload once.
                Err(_) => {
                    ring = self.load_ring().await.map_err(Denied::Failed)?;
                    ring.open_card(&self.tenant, card.sku, card.id, &card.sealed)
                        .map_err(|_| Denied::Because("open_failed"))?
                }
            };
            cards.push(RevealedCard {
                card: card.id,
                sku: card.sku,
                line,
                key,
            });
        }
        if cards.is_empty() {
            return Err(Denied::Because("no_cards"));
        }
        Ok(Revealed {
            order: order_id,
            cards,
        })
    }

    /// Starts a new data key; later imports seal under it. The old key still opens what it
    /// sealed until [`reseal_cards`](Shop::reseal_cards) and [`retire_key`](Shop::retire_key).
    ///
    /// # Errors
    /// [`Error::Vault`]; [`Error::Storage`].
    pub async fn rotate_data_key(&self) -> Result<KeyId> {
        self.ring().await?;
        let (ring, key) = self
            .change_ring(|ring, root, now| ring.rotate(root, now, &mut rand::thread_rng()))
            .await?;
        self.vault_event(VaultEvent::KeyRotated { key }).await?;
        self.audit(
            "system",
            AuditAction::KeyRotated,
            key.to_string(),
            AuditOutcome::Allowed,
            format!("active key {}", ring.active_key_id()),
        )
        .await?;
        Ok(key)
    }

    /// Reseals every card still sealed with `from` under the active key; returns how many.
    ///
    /// # Errors
    /// [`Error::Vault`] when a card fails to open; [`Error::Storage`].
    pub async fn reseal_cards(&self, from: KeyId) -> Result<usize> {
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
            let mut rng = rand::thread_rng();
            for card in batch {
                let ctx = |field| SealContext {
                    tenant: &self.tenant,
                    sku: card.sku,
                    card: card.id,
                    field,
                };
                let sealed = SealedCard {
                    code: ring.reseal(&ctx(Field::Code), &card.sealed.code, &mut rng)?,
                    secret: match &card.sealed.secret {
                        Some(s) => Some(ring.reseal(&ctx(Field::Secret), s, &mut rng)?),
                        None => None,
                    },
                };
                match store
                    .replace_sealed(&self.tenant, card.id, from, &sealed, to)
                    .await
                {
                    Ok(()) => done += 1,
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
            "system",
            AuditAction::KeyRewrapped,
            from.to_string(),
            AuditOutcome::Allowed,
            format!("{done} card(s) resealed under {to}"),
        )
        .await?;
        Ok(done)
    }

    /// Retires a decrypt-only data key: its material is destroyed, so it opens nothing again.
    /// Refused while any card is still sealed with it.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when cards still use the key; [`Error::Vault`] for the active or an
    /// unknown key; [`Error::Storage`].
    pub async fn retire_key(&self, key: KeyId) -> Result<()> {
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
        self.change_ring(|ring, _, _| ring.retire(key)).await?;
        self.vault_event(VaultEvent::KeyRetired { key }).await?;
        self.audit(
            "system",
            AuditAction::KeyRetired,
            key.to_string(),
            AuditOutcome::Allowed,
            String::new(),
        )
        .await
    }

    /// Loads the stored ring, applies `change`, and stores it with its version; retries when
    /// another process changed it in between.
    async fn change_ring<T>(
        &self,
        change: impl Fn(
            &mut KeyRing,
            &quanyi_vault::RootKey,
            chrono::DateTime<chrono::Utc>,
        ) -> quanyi_vault::Result<T>,
    ) -> Result<(Arc<KeyRing>, T)> {
        let store = self.store_ref();
        for _ in 0..5 {
            let (wrapped, version) = store
                .key_ring(&self.tenant)
                .await?
                .ok_or_else(|| Error::InvalidInput("the tenant has no key ring yet".into()))?;
            let mut ring = KeyRing::unwrap(&self.inner.root, &wrapped)?;
            ring.set_use_limit(self.inner.key_use_limit);
            let out = change(&mut ring, &self.inner.root, self.now())?;
            match store.update_key_ring(&ring.to_wrapped(), version).await {
                Ok(_) => {
                    let ring = Arc::new(ring);
                    self.inner
                        .rings
                        .write()
                        .insert(self.tenant.clone(), ring.clone());
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

    async fn vault_event(&self, event: VaultEvent) -> Result<()> {
        let now = self.now();
        let events = self.envelopes("key_ring", &self.tenant, 0, vec![event], now);
        self.store_ref().append_events(&events).await?;
        Ok(())
    }
}

enum Denied {
    Because(&'static str),
    Failed(Error),
}
