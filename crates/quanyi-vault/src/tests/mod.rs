//! Tests at the crate boundary, table-driven where there are cases.

use chrono::{DateTime, TimeZone, Utc};
use quanyi_core::{CardId, SkuId, TenantId};
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::{KeyRing, RootKey};

mod import;
mod leaks;
mod providers;
mod ring;
mod secrets;

fn rng() -> StdRng {
    StdRng::seed_from_u64(7)
}

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap()
}

fn tenant() -> TenantId {
    TenantId::new("shop-1").unwrap()
}

fn sku(rng: &mut StdRng) -> SkuId {
    SkuId::generate(now(), rng)
}

fn card(rng: &mut StdRng) -> CardId {
    CardId::generate(now(), rng)
}

/// A root key, a fresh ring for `tenant()` with `budget` uses granted, and the rng.
fn ring_with_budget(budget: u64) -> (RootKey, KeyRing, StdRng) {
    let mut rng = rng();
    let root = RootKey::generate(&mut rng);
    let (ring, _) = KeyRing::create(tenant(), &root, now(), &mut rng).unwrap();
    ring.grant(ring.active_key_id(), budget).unwrap();
    (root, ring, rng)
}
