//! The wrapped key ring of each tenant and its encryption counters.

use async_trait::async_trait;
use quanyi_core::TenantId;
use quanyi_storage::{Error, KeyRingStore, Result};
use quanyi_vault::{KeyId, KeyState, WrappedKeyRing};
use rusqlite::{OptionalExtension, Transaction, params};

use crate::SqliteStore;
use crate::convert::{SqlResult, from_doc, int, to_doc, uint};

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

    async fn update_key_ring(&self, ring: &WrappedKeyRing, expected_version: u64) -> Result<u64> {
        let tenant = ring.tenant.clone();
        let doc = to_doc(ring, "key ring")?;
        self.pool
            .write(move |tx| {
                let stored: Option<i64> = tx
                    .prepare_cached("SELECT version FROM key_rings WHERE tenant = ?1")
                    .db()?
                    .query_row(params![tenant.as_str()], |r| r.get(0))
                    .optional()
                    .db()?;
                let stored = stored.ok_or_else(|| Error::not_found("key ring", &tenant))?;
                if uint(stored, "key ring version")? != expected_version {
                    return Err(Error::conflict("key ring", &tenant, "stale version"));
                }
                let next = expected_version
                    .checked_add(1)
                    .ok_or_else(|| Error::Invalid("key ring version overflows".into()))?;
                store(tx, tenant.as_str(), &doc, next)?;
                Ok(next)
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
                let data_key = ring
                    .keys
                    .iter_mut()
                    .find(|k| k.id == key)
                    .ok_or_else(|| Error::not_found("data key", key))?;
                if data_key.state != KeyState::Active {
                    return Err(Error::conflict("data key", key, "not the active key"));
                }
                let after = data_key
                    .encryptions
                    .checked_add(uses)
                    .filter(|n| *n <= limit)
                    .ok_or_else(|| Error::KeyExhausted {
                        key: key.to_string(),
                    })?;
                data_key.encryptions = after;
                let next = version
                    .checked_add(1)
                    .ok_or_else(|| Error::Invalid("key ring version overflows".into()))?;
                store(tx, tenant.as_str(), &to_doc(&ring, "key ring")?, next)?;
                Ok(after)
            })
            .await
    }
}
