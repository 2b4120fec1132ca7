//! `KeyRingStore`: each tenant's wrapped key ring as a JSON document with a version.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use quanyi_core::TenantId;
use quanyi_storage::{DestroyOutcome, Error, KeyRingStore, Result, Trail};
use quanyi_vault::{KeyId, KeyState, WrappedKeyRing};

use crate::PgStore;
use crate::codec::{from_json, get, micros, to_i64, to_json, to_u64};
use crate::error::{db, with_id};
use crate::logs::TrailColumns;
use crate::vault::{WITHDRAW_BY_KEY, withdraw_rounds};

const GET: &str = "SELECT doc, version FROM key_rings WHERE tenant = $1";
const GET_FOR_UPDATE: &str = "SELECT doc, version FROM key_rings WHERE tenant = $1 FOR UPDATE";
const INSERT: &str = "INSERT INTO key_rings (tenant, version, doc) VALUES ($1, 1, $2)";
const UPDATE: &str = "WITH cur AS (SELECT version FROM key_rings WHERE tenant = $1 FOR UPDATE), \
     upd AS (UPDATE key_rings SET version = version + 1, doc = $3 \
             WHERE tenant = $1 AND (SELECT version FROM cur) = $2 RETURNING version) \
     SELECT (SELECT version FROM cur), (SELECT version FROM upd)";
/// Empties the sealed values of the tenant `$1`'s cards sealed with the data key `$2`, once
/// none of them is unsold any more; answers how many, and how many are still unsold (then
/// nothing is emptied).
pub(crate) const SHRED: &str = "WITH unsold AS (SELECT count(*) AS n FROM cards \
                         WHERE key_id = $2 AND tenant = $1 AND state IN ('available', 'reserved')), \
     s AS (UPDATE cards SET code = ''::bytea, secret = NULL \
           WHERE key_id = $2 AND tenant = $1 AND (SELECT n FROM unsold) = 0 \
           RETURNING 1) \
     SELECT (SELECT count(*) FROM s), (SELECT n FROM unsold)";
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

    async fn update_key_ring(
        &self,
        ring: &WrappedKeyRing,
        expected_version: u64,
        trail: Trail<'_>,
    ) -> Result<u64> {
        let doc = to_json(ring, "key ring")?;
        let expected = to_i64(expected_version, "key ring version")?;
        let trail = TrailColumns::new(trail)?;
        let mut conn = self.conn().await?;
        let stmt = conn.prepare(UPDATE).await?;
        trail.begin(&mut conn).await?;
        let outcome = async {
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
        .await;
        trail.end(&mut conn, outcome).await
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
        let doc = to_json(ring, "key ring")?;
        let expected = to_i64(expected_version, "key ring version")?;
        let tenant = &ring.tenant;
        let name = tenant.as_str();
        let key_number = i64::from(key.0);
        let at = micros(now);
        let trail = TrailColumns::new(trail)?;
        let mut conn = self.conn().await?;
        let update = conn.prepare(UPDATE).await?;
        let withdraw = conn.prepare(&WITHDRAW_BY_KEY).await?;
        let shred = conn.prepare(SHRED).await?;
        let update_params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
            [&name, &expected, &doc];
        conn.in_txn = true;
        let c = conn.client();
        let (begin, stored) = tokio::join!(
            biased;
            c.batch_execute("BEGIN"),
            c.query_one(&update, &update_params),
        );
        let outcome = async {
            begin.map_err(db)?;
            // The ring first: it stays locked until the end, so no card is added under the key
            // (imports and reseals lock it to share) while its cards are shredded.
            let row = stored.map_err(db)?;
            let current: Option<i64> = get(&row, 0)?;
            let written: Option<i64> = get(&row, 1)?;
            let version = match (current, written) {
                (_, Some(v)) => to_u64(v, "key ring version")?,
                (None, None) => return Err(Error::not_found("key ring", tenant)),
                (Some(_), None) => {
                    return Err(Error::conflict("key ring", tenant, "stale version"));
                }
            };
            // Unsold cards leave sale (and the queue), then every card of the key is emptied.
            let first = c
                .query_one(&withdraw, &[&name, &key_number, &at])
                .await
                .map_err(db)?;
            let withdrawn = withdraw_rounds(&conn, tenant, at, first).await?;
            let row = c
                .query_one(&shred, &[&name, &key_number])
                .await
                .map_err(db)?;
            if get::<i64>(&row, 1)? > 0 {
                return Err(Error::conflict(
                    "key ring",
                    tenant,
                    "cards of the key kept changing while they were withdrawn",
                ));
            }
            trail.write(&conn).await?;
            Ok(DestroyOutcome {
                version,
                shredded: to_u64(get(&row, 0)?, "count")?,
                withdrawn: withdrawn.len() as u64,
            })
        }
        .await;
        conn.finish(outcome).await
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
    let after = ring
        .reserve_uses(key, uses, limit)
        .map_err(|r| Error::uses_refused(key, r))?;
    Ok((ring, after))
}
