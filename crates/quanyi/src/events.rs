//! Events the facade writes for aggregates that have no event type of their own.

use quanyi_core::{BatchId, DomainEvent, GoodsId, SkuId};
use quanyi_goods::Shelf;
use quanyi_vault::KeyId;
use serde::Serialize;

/// Catalog changes.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum CatalogEvent {
    GoodsCreated {
        goods: GoodsId,
        title: String,
        kind: &'static str,
        skus: usize,
    },
    ShelfChanged {
        sku: SkuId,
        shelf: Shelf,
    },
    GoodsEdited {
        goods: GoodsId,
        version: u64,
    },
}

impl DomainEvent for CatalogEvent {
    fn name(&self) -> &'static str {
        match self {
            CatalogEvent::GoodsCreated { .. } => "goods.created",
            CatalogEvent::ShelfChanged { .. } => "goods.shelf_changed",
            CatalogEvent::GoodsEdited { .. } => "goods.edited",
        }
    }
}

/// Vault changes. Counts and ids only, never card text.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum VaultEvent {
    BatchImported {
        batch: BatchId,
        sku: SkuId,
        imported: usize,
        duplicates: usize,
        malformed: usize,
    },
    KeyRotated {
        key: KeyId,
    },
    CardsResealed {
        from: KeyId,
        to: KeyId,
        cards: usize,
    },
    KeyRetired {
        key: KeyId,
    },
    KeyDestroyed {
        key: KeyId,
        shredded: u64,
        withdrawn: u64,
    },
    CardsReindexed {
        examined: usize,
        moved: usize,
        duplicates: usize,
        finished: bool,
    },
}

impl DomainEvent for VaultEvent {
    fn name(&self) -> &'static str {
        match self {
            VaultEvent::BatchImported { .. } => "vault.batch_imported",
            VaultEvent::KeyRotated { .. } => "vault.key_rotated",
            VaultEvent::CardsResealed { .. } => "vault.cards_resealed",
            VaultEvent::KeyRetired { .. } => "vault.key_retired",
            VaultEvent::KeyDestroyed { .. } => "vault.key_destroyed",
            VaultEvent::CardsReindexed { .. } => "vault.cards_reindexed",
        }
    }
}
