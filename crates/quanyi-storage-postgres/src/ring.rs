//! `KeyRingStore`: each tenant's wrapped key ring as a JSON document with a version.

use async_trait::async_trait;
use quanyi_core::TenantId;
use quanyi_storage::{Error, KeyRingStore, Result};
use quanyi_vault::{KeyId, KeyState, WrappedKeyRing};

use crate::PgStore;
use crate::codec::{from_json, get, to_i64, to_json, to_u64};
use crate::error::{db, with_id};

const GET: &str = "SELECT doc, version FROM key_rings WHERE tenant = $1";
const GET_FOR_UPDATE: &str = "SELECT doc, version FROM key_rings WHERE tenant = $1 FOR UPDATE";
const INSERT: &str = "INSERT INTO key_rings (tenant, version, doc) VALUES ($1, 1, $2)";
const UPDATE: &str = "WITH cur AS (SELECT version FROM key_rings WHERE tenant = $1 FOR UPDATE), \
     upd AS (UPDATE key_rings SET version = version + 1, doc = $3 \
             WHERE tenant = $1 AND (SELECT version FROM cur) = $2 RETURNING version) \
     SELECT (SELECT version FROM cur), (SELECT version FROM upd)";
const WRITE_COUNTERS: &str = "UPDATE key_rings SET version = version + 1, doc = $2 \
                              WHERE tenant = $1 RETURNING version";

#[async_trait]
impl KeyRingStore for PgStore {
    async fn key_ring(&self, tenant: &TenantId) -> Result<Option<(WrappedKeyRing, u64)>> {
        let conn = self.conn().await?;
        let stmt = conn.prepare(GET).await?;
        let row = conn
            .client()
            .query_opt(&stmt, &[&tenant.as_str()])
            .await
            .map_err(db)?;
        row.map(|r| {
            Ok((
                from_json(get::<&str>(&r, 0)?, "key ring")?,
                to_u64(get(&r, 1)?, "key ring version")?,
            ))
        })
        .transpose()
    }

    async fn insert_key_ring(&self, ring: &WrappedKeyRing) -> Result<()> {
        let doc = to_json(ring, "key ring")?;
        let conn = self.conn().await?;
        let stmt = conn.prepare(INSERT).await?;
        conn.client()
            .execute(&stmt, &[&ring.tenant.as_str(), &doc])
            .await
            .map_err(|e| match with_id(db(e), &ring.tenant) {
                Error::Conflict { what, id, .. } => Error::Conflict {
                    what,
                    id,
                    reason: "tenant already has one",
                },
                other => other,
            })?;
        Ok(())
    }

    async fn update_key_ring(&self, ring: &WrappedKeyRing, expected_version: u64) -> Result<u64> {
        let doc = to_json(ring, "key ring")?;
        let expected = to_i64(expected_version, "key ring version")?;
        let conn = self.conn().await?;
        let stmt = conn.prepare(UPDATE).await?;
        let row = conn
            .client()
            .query_one(&stmt, &[&ring.tenant.as_str(), &expected, &doc])
            .await
            .map_err(db)?;
        let current: Option<i64> = get(&row, 0)?;
        let written: Option<i64> = get(&row, 1)?;
        match (current, written) {
            (_, Some(v)) => to_u64(v, "key ring version"),
            (None, None) => Err(Error::not_found("key ring", &ring.tenant)),
            (Some(_), None) => Err(Error::conflict("key ring", &ring.tenant, "stale version")),
        }
    }

    async fn reserve_key_uses(
        &self,
        tenant: &TenantId,
        key: KeyId,
        uses: u64,
        limit: u64,
    ) -> Result<u64> {
        let mut conn = self.conn().await?;
        let read = conn.prepare(GET_FOR_UPDATE).await?;
        let write = conn.prepare(WRITE_COUNTERS).await?;
        let name = tenant.as_str();
        let read_params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&name];
        conn.in_txn = true;
        let c = conn.client();
        // Round trip 1: BEGIN and the locked read.
        let (begin, row) = tokio::join!(
            biased;
            c.batch_execute("BEGIN"),
            c.query_opt(&read, &read_params),
        );
        begin.map_err(db)?;
        let row = row.map_err(db)?;
        let decided = match row {
            None => Err(Error::not_found("key ring", tenant)),
            Some(row) => add_uses(
                from_json(get::<&str>(&row, 0)?, "key ring")?,
                key,
                uses,
                limit,
            ),
        };
        // Round trip 2: the write and COMMIT, or ROLLBACK.
        let outcome = match decided {
            Ok((ring, after)) => {
                let doc = to_json(&ring, "key ring")?;
                let write_params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&name, &doc];
                let (written, commit) = tokio::join!(
                    biased;
                    c.query_one(&write, &write_params),
                    c.batch_execute("COMMIT"),
                );
                let done = written.map_err(db).and_then(|_| commit.map_err(db));
                done.map(|()| after)
            }
            Err(e) => {
                c.batch_execute("ROLLBACK").await.map_err(db)?;
                Err(e)
            }
        };
        conn.in_txn = false;
        outcome
    }
}

/// The ring with `uses` more on the active key `key`, and the counter after.
fn add_uses(
    mut ring: WrappedKeyRing,
    key: KeyId,
    uses: u64,
    limit: u64,
) -> Result<(WrappedKeyRing, u64)> {
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
    Ok((ring, after))
}
