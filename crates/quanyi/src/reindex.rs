//! Re-indexing card keys under the current blind-index scheme, and settling the duplicates it
//! finds.

use quanyi_core::CardId;
use quanyi_storage::{AuditAction, AuditOutcome, CardState, IndexChange, Reindexed, StoredCard};
use quanyi_vault::IndexScheme;

use crate::events::VaultEvent;
use crate::{Result, Shop};

/// Two stored cards found to be one code when re-indexing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DuplicateCards {
    /// The card that was re-indexed.
    pub card: CardId,
    /// The card that already held its new index.
    pub holder: CardId,
    /// Which of the two was withdrawn from sale: the unsold one (the re-indexed card when both
    /// are unsold). `None` when both were already sold: the code was sold twice before
    /// duplicates were detected this way, and the pair is reported for a person to handle.
    pub withdrawn: Option<CardId>,
}

/// What a [`Shop::reindex_card_keys`] pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReindexReport {
    /// Cards looked at.
    pub examined: usize,
    /// Cards whose index changed under the new scheme (the others kept theirs).
    pub moved: usize,
    /// Cards that turned out to repeat another stored card.
    pub duplicates: Vec<DuplicateCards>,
    /// Cards that could not be opened (shredded with a destroyed key, or unreadable); they keep
    /// their index and are marked done.
    pub unreadable: Vec<CardId>,
    /// True when every card of the tenant is indexed with the current scheme; imports then
    /// check only the current index.
    pub finished: bool,
}

impl Shop {
    /// True while the tenant may hold card keys indexed under an older blind-index scheme.
    pub(crate) async fn needs_reindex(&self) -> Result<bool> {
        Ok(self.ring().await?.oldest_index_scheme() < IndexScheme::CURRENT)
    }

    /// One pass of re-indexing: opens up to `max_cards` cards indexed under an older
    /// blind-index scheme and moves each to its index under the current scheme
    /// ([`normalise`](quanyi_vault::normalise)), in card order. Run it until
    /// [`ReindexReport::finished`]; it can stop at any point (a crash included) and resume,
    /// since what is left to do is read from the store each time, and every card keeps an index
    /// throughout (its old one until its new one is written). Until it finishes, imports check
    /// both indexes. The [`Worker`](crate::Worker) runs it for its shop's tenant.
    ///
    /// A card whose new index another card already holds is the same code: the unsold one of the
    /// two is withdrawn from sale (the re-indexed card when both are unsold), and the pair is
    /// reported and audited.
    ///
    /// # Errors
    /// [`Error::Vault`]; [`Error::Storage`].
    pub async fn reindex_card_keys(&self, max_cards: usize) -> Result<ReindexReport> {
        let store = self.store_ref();
        let mut report = ReindexReport::default();
        let ring = self.load_ring().await?;
        let mut left = max_cards;
        while left > 0 {
            let batch = store
                .cards_to_reindex(&self.tenant, IndexScheme::CURRENT, left.min(256))
                .await?;
            if batch.is_empty() {
                break;
            }
            left = left.saturating_sub(batch.len());
            report.examined += batch.len();
            let changes: Vec<IndexChange> = batch
                .iter()
                .map(|card| {
                    let to = match ring.open_card(&self.tenant, card.sku, card.id, &card.sealed) {
                        Ok(key) => ring.blind_index(&key),
                        Err(_) => {
                            report.unreadable.push(card.id);
                            card.blind_index
                        }
                    };
                    IndexChange {
                        card: card.id,
                        from: card.blind_index,
                        to,
                        scheme: IndexScheme::CURRENT,
                    }
                })
                .collect();
            let answers = store.reindex_cards(&self.tenant, &changes).await?;
            for (change, answer) in changes.iter().zip(answers) {
                match answer {
                    Reindexed::Moved if change.to != change.from => report.moved += 1,
                    Reindexed::Moved | Reindexed::Stale => {}
                    Reindexed::Duplicate { holder } => {
                        let pair = self.settle_duplicate(change.card, holder).await?;
                        report.duplicates.push(pair);
                    }
                }
            }
        }
        let rest = store
            .cards_to_reindex(&self.tenant, IndexScheme::CURRENT, 1)
            .await?;
        if rest.is_empty() {
            report.finished = true;
            if ring.oldest_index_scheme() < IndexScheme::CURRENT {
                self.change_ring(
                    |ring, _, _| {
                        ring.set_oldest_index_scheme(IndexScheme::CURRENT);
                        Ok(())
                    },
                    |_, ()| (Vec::new(), None),
                )
                .await?;
            }
        }
        if report.examined > 0 {
            self.vault_event(VaultEvent::CardsReindexed {
                examined: report.examined,
                moved: report.moved,
                duplicates: report.duplicates.len(),
                finished: report.finished,
            })
            .await?;
            self.audit(
                "system",
                AuditAction::CardsReindexed,
                self.tenant.to_string(),
                AuditOutcome::Allowed,
                format!(
                    "{} examined, {} moved, {} duplicate(s), {} unreadable",
                    report.examined,
                    report.moved,
                    report.duplicates.len(),
                    report.unreadable.len()
                ),
            )
            .await?;
        }
        Ok(report)
    }

    /// Withdraws the unsold one of two cards found to be one code.
    async fn settle_duplicate(&self, card: CardId, holder: CardId) -> Result<DuplicateCards> {
        let store = self.store_ref();
        let sold = |c: &Option<StoredCard>| {
            c.as_ref()
                .is_some_and(|c| matches!(c.state, CardState::Sold { .. }))
        };
        let (this, that) = tokio::try_join!(
            store.card(&self.tenant, card),
            store.card(&self.tenant, holder)
        )?;
        let withdrawn_already = that
            .as_ref()
            .is_some_and(|c| matches!(c.state, CardState::Withdrawn { .. }));
        // Keep the sold one; of two unsold, keep the one holding the index; when that one is
        // out of sale already, the re-indexed card is the code's only copy for sale.
        let victim = if sold(&this) {
            Some(holder)
        } else if withdrawn_already {
            None
        } else {
            Some(card)
        };
        let withdrawn = match victim {
            Some(victim) => store
                .withdraw_cards(&self.tenant, &[victim], self.now())
                .await?
                .first()
                .copied(),
            None => None,
        };
        self.audit(
            "system",
            AuditAction::CardsWithdrawn,
            card.to_string(),
            AuditOutcome::Allowed,
            match withdrawn {
                Some(w) => format!("same code as {holder}; {w} withdrawn from sale"),
                None if sold(&this) && sold(&that) => {
                    format!("same code as {holder}; both were sold")
                }
                None => format!("same code as {holder}; nothing left to withdraw"),
            },
        )
        .await?;
        if withdrawn.is_none() && sold(&this) && sold(&that) {
            tracing::error!(%card, %holder, "one card key was sold twice before re-indexing");
        }
        Ok(DuplicateCards {
            card,
            holder,
            withdrawn,
        })
    }
}
