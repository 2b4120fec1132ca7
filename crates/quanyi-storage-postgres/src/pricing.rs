//! `PricingStore`: a tenant's pricing rules as versioned entries with their revisions (the
//! version in `pricing_heads`, moved by compare-and-swap), and the coupons issued to members.

use async_trait::async_trait;
use quanyi_core::{MemberId, TenantId};
use quanyi_storage::{
    Error, IssuedCoupon, PricingEntry, PricingKind, PricingRevision, PricingSnapshot, PricingStore,
    PricingWrite, Result, Trail, check_coupons,
};
use tokio_postgres::Row;

use crate::PgStore;
use crate::codec::{from_micros, get, micros, to_i64, to_u64};
use crate::error::{corrupt, db};
use crate::logs::TrailColumns;

/// The version of tenant $1's rules (no row: 0).
const VERSION: &str = "SELECT version FROM pricing_heads WHERE tenant = $1";

/// Tenant $1's rules in one snapshot: the version on every row, and the entries (none: one
/// row of nulls beside the version).
const SNAPSHOT: &str = "SELECT h.v, e.kind, e.id, e.version, e.body, e.updated_at \
     FROM (SELECT COALESCE((SELECT version FROM pricing_heads WHERE tenant = $1), 0) AS v) h \
     LEFT JOIN pricing_entries e ON e.tenant = $1";

/// Writes tenant $1's rules from version $2 as the next version: $3 kinds, $4 ids, $5 bodies
/// (null: removed), $6 the time. The version moves by compare-and-swap on the head row (an
/// UPDATE from $2, or for version 0 an INSERT that does nothing when a row exists): a writer
/// racing another from the same version waits for its row lock, then finds the row moved and
/// writes nothing. Answers the new version, or null when the stored version is not $2.
const WRITE: &str = "WITH up AS ( \
         UPDATE pricing_heads SET version = $2::bigint + 1 \
         WHERE tenant = $1 AND version = $2 AND $2 > 0 RETURNING version), \
     ins AS ( \
         INSERT INTO pricing_heads (tenant, version) SELECT $1, 1 WHERE $2::bigint = 0 \
         ON CONFLICT (tenant) DO NOTHING RETURNING version), \
     head AS (SELECT version FROM up UNION ALL SELECT version FROM ins), \
     c AS (SELECT * FROM unnest($3::text[], $4::text[], $5::text[]) AS c(kind, id, body)), \
     put AS ( \
         INSERT INTO pricing_entries (tenant, kind, id, version, body, updated_at) \
         SELECT $1, c.kind, c.id, h.version, c.body, $6 FROM c, head h WHERE c.body IS NOT NULL \
         ON CONFLICT (tenant, kind, id) DO UPDATE \
             SET version = EXCLUDED.version, body = EXCLUDED.body, \
                 updated_at = EXCLUDED.updated_at), \
     gone AS ( \
         DELETE FROM pricing_entries e USING c \
         WHERE e.tenant = $1 AND e.kind = c.kind AND e.id = c.id AND c.body IS NULL \
           AND EXISTS (SELECT 1 FROM head)), \
     rev AS ( \
         INSERT INTO pricing_revisions (tenant, kind, id, version, body, at) \
         SELECT $1, c.kind, c.id, h.version, c.body, $6 FROM c, head h) \
     SELECT (SELECT version FROM head)";

/// The revisions of tenant $1's entry ($2 kind, $3 id), newest first.
const HISTORY: &str = "SELECT version, body, at FROM pricing_revisions \
     WHERE tenant = $1 AND kind = $2 AND id = $3 ORDER BY version DESC";

/// Stores tenant $1's coupons ($2 codes, $3 templates, $4 members, $5 sources, $6 valid from,
/// $7 valid to, $8 issued at) only if none of the codes is stored; answers the first stored
/// code in the call's order (null: all written). A code a concurrent call stores first fails
/// on `coupons_pkey`.
const ISSUE: &str = "WITH c AS ( \
         SELECT * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], \
                              $7::bigint[], $8::bigint[]) \
              WITH ORDINALITY AS c(code, template, member, source, valid_from, valid_to, \
                                   issued_at, ord)), \
     taken AS ( \
         SELECT c.code FROM c \
         WHERE EXISTS (SELECT 1 FROM coupons s WHERE s.tenant = $1 AND s.code = c.code) \
         ORDER BY c.ord LIMIT 1), \
     ins AS ( \
         INSERT INTO coupons (tenant, code, template, member, source, valid_from, valid_to, \
                              issued_at) \
         SELECT $1, code, template, member, source, valid_from, valid_to, issued_at FROM c \
         WHERE NOT EXISTS (SELECT 1 FROM taken)) \
     SELECT (SELECT code FROM taken)";

/// Tenant $1's coupon of code $2, in the columns [`coupon_of`] reads.
const COUPON: &str = "SELECT code, template, member, source, valid_from, valid_to, issued_at \
     FROM coupons WHERE tenant = $1 AND code = $2";

/// Tenant $1's coupons issued to member $2 (through `coupons_by_member`), as [`COUPON`].
const MEMBER_COUPONS: &str = "SELECT code, template, member, source, valid_from, valid_to, \
     issued_at FROM coupons WHERE tenant = $1 AND member = $2 ORDER BY issued_at, code";

fn kind_of(text: &str) -> Result<PricingKind> {
    PricingKind::parse(text).ok_or_else(|| corrupt("pricing kind", text))
}

/// A stored coupon of `tenant` from a row of [`COUPON`].
fn coupon_of(tenant: &TenantId, r: &Row) -> Result<IssuedCoupon> {
    Ok(IssuedCoupon {
        tenant: tenant.clone(),
        code: get(r, 0)?,
        template: get(r, 1)?,
        member: MemberId::new(get::<String>(r, 2)?).map_err(|e| corrupt("coupon member", e))?,
        source: get(r, 3)?,
        valid_from: from_micros(get(r, 4)?)?,
        valid_to: from_micros(get(r, 5)?)?,
        issued_at: from_micros(get(r, 6)?)?,
    })
}

#[async_trait]
impl PricingStore for PgStore {
    async fn pricing(&self, tenant: &TenantId) -> Result<PricingSnapshot> {
        let conn = self.conn().await?;
        let stmt = conn.prepare(SNAPSHOT).await?;
        let rows = conn
            .client()
            .query(&stmt, &[&tenant.as_str()])
            .await
            .map_err(db)?;
        let mut snapshot = PricingSnapshot::default();
        for r in &rows {
            snapshot.version = to_u64(get(r, 0)?, "pricing version")?;
            let Some(kind) = get::<Option<&str>>(r, 1)? else {
                continue;
            };
            snapshot.entries.push(PricingEntry {
                kind: kind_of(kind)?,
                id: get(r, 2)?,
                version: to_u64(get(r, 3)?, "pricing version")?,
                body: get(r, 4)?,
                updated_at: from_micros(get(r, 5)?)?,
            });
        }
        // By kind in the port's order (not the stored names' order), then id.
        snapshot
            .entries
            .sort_by(|a, b| (a.kind, &a.id).cmp(&(b.kind, &b.id)));
        Ok(snapshot)
    }

    async fn pricing_version(&self, tenant: &TenantId) -> Result<u64> {
        let conn = self.conn().await?;
        let stmt = conn.prepare(VERSION).await?;
        let row = conn
            .client()
            .query_opt(&stmt, &[&tenant.as_str()])
            .await
            .map_err(db)?;
        match row {
            Some(r) => to_u64(get(&r, 0)?, "pricing version"),
            None => Ok(0),
        }
    }

    async fn write_pricing(&self, write: PricingWrite<'_>, trail: Trail<'_>) -> Result<u64> {
        write.check()?;
        let expected = to_i64(write.expected, "pricing version")?;
        let kinds: Vec<&str> = write.changes.iter().map(|c| c.kind.as_str()).collect();
        let ids: Vec<&str> = write.changes.iter().map(|c| c.id.as_str()).collect();
        let bodies: Vec<Option<&str>> = write.changes.iter().map(|c| c.body.as_deref()).collect();
        let at = micros(write.at);
        let tenant = write.tenant;
        // The change is one statement; with a trail, it and the trail are one transaction.
        let trail = TrailColumns::new(trail)?;
        let mut conn = self.conn().await?;
        let stmt = conn.prepare(WRITE).await?;
        trail.begin(&mut conn).await?;
        let outcome = async {
            let row = conn
                .client()
                .query_one(
                    &stmt,
                    &[&tenant.as_str(), &expected, &kinds, &ids, &bodies, &at],
                )
                .await
                .map_err(db)?;
            match get::<Option<i64>>(&row, 0)? {
                Some(v) => to_u64(v, "pricing version"),
                None => Err(Error::conflict("pricing", tenant, "stale version")),
            }
        }
        .await;
        trail.end(&mut conn, outcome).await
    }

    async fn pricing_history(
        &self,
        tenant: &TenantId,
        kind: PricingKind,
        id: &str,
    ) -> Result<Vec<PricingRevision>> {
        let conn = self.conn().await?;
        let stmt = conn.prepare(HISTORY).await?;
        let rows = conn
            .client()
            .query(&stmt, &[&tenant.as_str(), &kind.as_str(), &id])
            .await
            .map_err(db)?;
        rows.iter()
            .map(|r| {
                Ok(PricingRevision {
                    version: to_u64(get(r, 0)?, "pricing version")?,
                    body: get(r, 1)?,
                    at: from_micros(get(r, 2)?)?,
                })
            })
            .collect()
    }

    async fn issue_coupons(
        &self,
        tenant: &TenantId,
        coupons: &[IssuedCoupon],
        trail: Trail<'_>,
    ) -> Result<()> {
        check_coupons(tenant, coupons)?;
        let codes: Vec<&str> = coupons.iter().map(|c| c.code.as_str()).collect();
        let templates: Vec<&str> = coupons.iter().map(|c| c.template.as_str()).collect();
        let members: Vec<&str> = coupons.iter().map(|c| c.member.as_str()).collect();
        let sources: Vec<&str> = coupons.iter().map(|c| c.source.as_str()).collect();
        let from: Vec<i64> = coupons.iter().map(|c| micros(c.valid_from)).collect();
        let to: Vec<i64> = coupons.iter().map(|c| micros(c.valid_to)).collect();
        let issued: Vec<i64> = coupons.iter().map(|c| micros(c.issued_at)).collect();
        let trail = TrailColumns::new(trail)?;
        let mut conn = self.conn().await?;
        let stmt = conn.prepare(ISSUE).await?;
        trail.begin(&mut conn).await?;
        let outcome = async {
            let row = conn
                .client()
                .query_one(
                    &stmt,
                    &[
                        &tenant.as_str(),
                        &codes,
                        &templates,
                        &members,
                        &sources,
                        &from,
                        &to,
                        &issued,
                    ],
                )
                .await
                .map_err(db)?;
            match get::<Option<String>>(&row, 0)? {
                Some(code) => Err(Error::conflict("coupon", code, "code already stored")),
                None => Ok(()),
            }
        }
        .await;
        trail.end(&mut conn, outcome).await
    }

    async fn coupon(&self, tenant: &TenantId, code: &str) -> Result<Option<IssuedCoupon>> {
        let conn = self.conn().await?;
        let stmt = conn.prepare(COUPON).await?;
        let row = conn
            .client()
            .query_opt(&stmt, &[&tenant.as_str(), &code])
            .await
            .map_err(db)?;
        row.map(|r| coupon_of(tenant, &r)).transpose()
    }

    async fn member_coupons(
        &self,
        tenant: &TenantId,
        member: &MemberId,
    ) -> Result<Vec<IssuedCoupon>> {
        let conn = self.conn().await?;
        let stmt = conn.prepare(MEMBER_COUPONS).await?;
        let rows = conn
            .client()
            .query(&stmt, &[&tenant.as_str(), &member.as_str()])
            .await
            .map_err(db)?;
        rows.iter().map(|r| coupon_of(tenant, r)).collect()
    }
}
