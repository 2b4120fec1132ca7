//! Card keys: the key ring, imports, stock, reveal, rotation.

use std::fmt;

use quanyi_core::{Actor, BatchId, CardId, MemberId, OrderId, SkuId};
use quanyi_goods::StockSource;
use quanyi_order::OrderStatus;
use quanyi_storage::{AuditAction, AuditOutcome, InsertCardsOutcome, NewCard, StockCount, Trail};
use quanyi_vault::{CardKey, ImportOptions, IndexScheme, KeyRing, MalformedLine, parse_import};

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
    /// Seals cards with `seal` under the active data key and stores them as stock. Should the
    /// key stop being the active one before the write commits (another process rotated it, and
    /// may retire it once it has resealed what it holds), the store refuses the batch and it is
    /// sealed again under the new active key: no card is ever stored under a key that is not
    /// active. Gives up with the store's error after a few rotations in a row.
    async fn store_sealed(
        &self,
        seal: impl Fn(&KeyRing, &mut rand::rngs::ThreadRng) -> quanyi_vault::Result<Vec<NewCard>>,
        uses: u64,
        now: chrono::DateTime<chrono::Utc>,
        trail: Trail<'_>,
    ) -> Result<InsertCardsOutcome> {
        if uses == 0 {
            return Ok(self
                .store_ref()
                .insert_cards(&self.tenant, &[], now, trail)
                .await?);
        }
        let mut last = None;
        for _ in 0..KEY_RACE_ATTEMPTS {
            let ring = self.ring_with_budget(uses).await?;
            let cards = seal(&ring, &mut rand::thread_rng())?;
            match self
                .store_ref()
                .insert_cards(&self.tenant, &cards, now, trail)
                .await
            {
                Ok(outcome) => return Ok(outcome),
                Err(e @ quanyi_storage::Error::KeyNotActive { .. }) => {
                    tracing::info!(error = %e, "data key changed while importing: sealing again");
                    self.load_ring().await?;
                    last = Some(e);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Storage(last.unwrap_or(
            quanyi_storage::Error::KeyNotActive { key: String::new() },
        )))
    }

    /// Imports a plain-text or CSV batch of card keys into a SKU's vault pool. Each key is
    /// sealed (AES-256-GCM, bound to tenant, SKU, card and field) before it reaches storage.
    /// Duplicates, within the file or of any card the shop ever held, are skipped and reported;
    /// malformed lines reject the whole batch unless `bad_lines` is [`BadLines::Skip`]. The
    /// import is audited with `actor`, the operator who brought the batch in.
    ///
    /// # Errors
    /// [`Error::UnknownSku`]; [`Error::NotVaultStocked`]; [`Error::ImportRejected`] (nothing
    /// imported); [`Error::Vault`]; [`Error::Storage`].
    pub async fn import_card_keys(
        &self,
        actor: &Actor,
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
        // Ids in file order, so the pool sells the batch in the order it was written.
        let ids = CardId::generate_sequence(now, &mut rand::thread_rng(), plan.cards.len());
        // The operator's record is written with the cards; what the store found (duplicates of
        // stored cards) follows in the batch's event.
        let record = self.audit_record(
            &actor.to_string(),
            AuditAction::Import,
            batch.to_string(),
            AuditOutcome::Allowed,
            format!(
                "sku {sku}: {} card(s) offered, {} repeated in the file, {} malformed",
                plan.cards.len(),
                plan.duplicates.len(),
                plan.malformed.len()
            ),
        );
        let outcome = self
            .store_sealed(
                |ring, rng| {
                    let mut cards = Vec::with_capacity(plan.cards.len());
                    for (planned, id) in plan.cards.iter().zip(&ids) {
                        cards.push(NewCard {
                            id: *id,
                            sku,
                            batch,
                            blind_index: planned.index,
                            index_scheme: IndexScheme::CURRENT,
                            legacy_index: planned.legacy_index,
                            sealed: ring.seal_card(&self.tenant, sku, *id, &planned.key, rng)?,
                            key_id: ring.active_key_id(),
                        });
                    }
                    Ok(cards)
                },
                uses,
                now,
                Trail::NONE.audited(&record),
            )
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
        tracing::info!(%batch, %sku, imported = report.imported, "card keys imported");
        Ok(report)
    }

    /// Card-key stock of a SKU now ([`Stock::count`](crate::Stock::count)).
    pub(crate) async fn stock_count(&self, sku: SkuId) -> Result<StockCount> {
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
        // Each card is marked revealed before it is opened, and only while no refund voided it
        // (a refund voids only cards never revealed): the buyer gets the key or the money.
        let open: std::collections::HashSet<CardId> = store
            .mark_revealed(&self.tenant, order_id, self.now())
            .await
            .map_err(|e| Denied::Failed(e.into()))?
            .into_iter()
            .collect();
        let mut stored = store
            .order_cards(&self.tenant, order_id)
            .await
            .map_err(|e| Denied::Failed(e.into()))?;
        stored.retain(|c| open.contains(&c.id));
        let mut ring = self.ring().await.map_err(Denied::Failed)?;
        let lines: std::collections::HashMap<CardId, u16> = order
            .lines()
            .iter()
            .flat_map(|l| l.cards.iter().map(move |c| (*c, l.no)))
            .collect();
        let mut cards = Vec::with_capacity(stored.len());
        for card in stored {
            let line = *lines
                .get(&card.id)
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
}

/// How many times a write of sealed cards is sealed again after the data key changed under it.
pub(crate) const KEY_RACE_ATTEMPTS: usize = 4;

enum Denied {
    Because(&'static str),
    Failed(Error),
}
