//! The wrapped key ring of each tenant, its encryption counters, and destroying a data key.

use crate::logs::{trail_rows, write_trail};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use quanyi_core::TenantId;
use quanyi_storage::{DestroyOutcome, Error, KeyRingStore, Result, Trail};
use quanyi_vault::{KeyId, KeyState, WrappedKeyRing};
use rusqlite::{OptionalExtension, Transaction, params};

use crate::SqliteStore;
use crate::cards::{shred_sealed_with, withdraw_sealed_with};
use crate::convert::{SqlResult, from_doc, int, to_doc, ts, uint};

/// The stored ring and its version.
fn load(tx: &Transaction<'_>, tenant: &str) -> Result<Option<(WrappedKeyRing, u64)>> {
    let row: Option<(String, i64)> = tx
        .prepare_cached("SELECT doc, version FROM key_rings WHERE tenant = ?1")
        .db()?
        .query_row(params![tenant], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
        .db()?;
    row.map(|(doc, v)| Ok((from_doc(&doc, "key ring")?, uint(v, "key ring version")?)))
        .transpose()
}

/// The tenant's active data key as its stored ring says; `None` without a ring.
pub(crate) fn active_key(tx: &Transaction<'_>, tenant: &str) -> Result<Option<KeyId>> {
    Ok(load(tx, tenant)?.map(|(ring, _)| ring.active))
}

/// `NotFound` without a ring, `Conflict` when its version is not `expected`; otherwise the
/// version that follows it.
fn next_version(tx: &Transaction<'_>, tenant: &TenantId, expected: u64) -> Result<u64> {
    let stored: Option<i64> = tx
        .prepare_cached("SELECT version FROM key_rings WHERE tenant = ?1")
        .db()?
        .query_row(params![tenant.as_str()], |r| r.get(0))
        .optional()
        .db()?;
    let stored = stored.ok_or_else(|| Error::not_found("key ring", tenant))?;
    if uint(stored, "key ring version")? != expected {
        return Err(Error::conflict("key ring", tenant, "stale version"));
    }
    expected
        .checked_add(1)
        .ok_or_else(|| Error::Invalid("key ring version overflows".into()))
}

fn store(tx: &Transaction<'_>, tenant: &str, ring: &str, version: u64) -> Result<()> {
    tx.prepare_cached("UPDATE key_rings SET doc = ?2, version = ?3 WHERE tenant = ?1")
        .db()?
        .execute(params![tenant, ring, int(version, "key ring version")?])
        .db()?;
    Ok(())
}

#[async_trait]
impl KeyRingStore for SqliteStore {
    async fn key_ring(&self, tenant: &TenantId) -> Result<Option<(WrappedKeyRing, u64)>> {
        let tenant = tenant.as_str().to_owned();
        self.pool.read(move |tx| load(tx, &tenant)).await
    }

    async fn insert_key_ring(&self, ring: &WrappedKeyRing) -> Result<()> {
        let tenant = ring.tenant.clone();
        let doc = to_doc(ring, "key ring")?;
        self.pool
            .write(move |tx| {
                let exists = tx
                    .prepare_cached("SELECT 1 FROM key_rings WHERE tenant = ?1")
                    .db()?
                    .exists(params![tenant.as_str()])
                    .db()?;
                if exists {
                    return Err(Error::conflict(
                        "key ring",
                        &tenant,
                        "tenant already has one",
                    ));
                }
                tx.prepare_cached(
                    "INSERT INTO key_rings (tenant, version, doc) VALUES (?1, 1, ?2)",
                )
                .db()?
                .execute(params![tenant.as_str(), doc])
                .db()?;
                Ok(())
            })
            .await
    }

    async fn update_key_ring(
        &self,
        ring: &WrappedKeyRing,
        expected_version: u64,
        trail: Trail<'_>,
    ) -> Result<u64> {
        let tenant = ring.tenant.clone();
        let doc = to_doc(ring, "key ring")?;
        let trail = trail_rows(trail)?;
        self.pool
            .write(move |tx| {
                let next = next_version(tx, &tenant, expected_version)?;
                store(tx, tenant.as_str(), &doc, next)?;
                write_trail(tx, &trail, &tenant)?;
                Ok(next)
            })
            .await
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
        let tenant = ring.tenant.clone();
        let doc = to_doc(ring, "key ring")?;
        let now = ts(now)?;
        let trail = trail_rows(trail)?;
        self.pool
            .write(move |tx| {
                let version = next_version(tx, &tenant, expected_version)?;
                let withdrawn = withdraw_sealed_with(tx, tenant.as_str(), key, now)?;
                let shredded = shred_sealed_with(tx, tenant.as_str(), key)?;
                store(tx, tenant.as_str(), &doc, version)?;
                write_trail(tx, &trail, &tenant)?;
                Ok(DestroyOutcome {
                    version,
                    shredded,
                    withdrawn,
                })
            })
            .await
    }

    async fn reserve_key_uses(
        &self,
        tenant: &TenantId,
        key: KeyId,
        uses: u64,
        limit: u64,
    ) -> Result<u64> {
        let tenant = tenant.clone();
        self.pool
            .write(move |tx| {
                let (mut ring, version) = load(tx, tenant.as_str())?
                    .ok_or_else(|| Error::not_found("key ring", &tenant))?;
                let after = ring
                    .reserve_uses(key, uses, limit)
                    .map_err(|r| Error::uses_refused(key, r))?;
                let next = version
                    .checked_add(1)
                    .ok_or_else(|| Error::Invalid("key ring version overflows".into()))?;
                store(tx, tenant.as_str(), &to_doc(&ring, "key ring")?, next)?;
                Ok(after)
            })
            .await
    }
}
