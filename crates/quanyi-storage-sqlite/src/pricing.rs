//! Pricing rules (versioned entries with their revisions) and the coupons issued to members.

use async_trait::async_trait;
use quanyi_core::{MemberId, TenantId};
use quanyi_storage::{
    Error, IssuedCoupon, PRICING_CHANGED, PricingEntry, PricingKind, PricingRevision,
    PricingSnapshot, PricingStore, PricingWrite, Result, Trail, check_coupons,
};
use rusqlite::{OptionalExtension, Row, Transaction, params};

use crate::SqliteStore;
use crate::convert::{SqlResult, from_ts, int, ts, uint};
use crate::logs::{trail_rows, write_trail};

/// A tenant's coupon by code, in the columns [`coupon_of`] reads.
const COUPON: &str = "SELECT code, template, member, source, valid_from, valid_to, issued_at
     FROM coupons WHERE tenant = ?1 AND code = ?2";

/// A tenant's coupons issued to a member, by issue time then code, as [`COUPON`].
const MEMBER_COUPONS: &str = "SELECT code, template, member, source, valid_from, valid_to,
     issued_at FROM coupons INDEXED BY coupons_by_member
     WHERE tenant = ?1 AND member = ?2 ORDER BY issued_at, code";

/// The version of the tenant's rules (0 when they were never written), in the caller's
/// transaction: one lookup by primary key.
fn stored_version(tx: &Transaction<'_>, tenant: &str) -> Result<u64> {
    let version: Option<i64> = tx
        .prepare_cached("SELECT version FROM pricing_heads WHERE tenant = ?1")
        .db()?
        .query_row(params![tenant], |r| r.get(0))
        .optional()
        .db()?;
    version.map_or(Ok(0), |v| uint(v, "pricing version"))
}

/// A placement's check of the rules it was priced from: `Conflict` on `"pricing"` when the
/// stored version is another; nothing to read without a version.
pub(crate) fn check_pricing(tx: &Transaction<'_>, tenant: &str, read: Option<u64>) -> Result<()> {
    match read {
        Some(read) if stored_version(tx, tenant)? != read => {
            Err(Error::conflict("pricing", tenant, PRICING_CHANGED))
        }
        _ => Ok(()),
    }
}

fn kind_of(text: &str) -> Result<PricingKind> {
    PricingKind::parse(text).ok_or_else(|| Error::Corrupt(format!("stored pricing kind {text:?}")))
}

/// A stored coupon of `tenant` from a row of [`COUPON`].
fn coupon_of(tenant: &TenantId, r: &Row<'_>) -> Result<IssuedCoupon> {
    let member: String = r.get(2).db()?;
    Ok(IssuedCoupon {
        tenant: tenant.clone(),
        code: r.get(0).db()?,
        template: r.get(1).db()?,
        member: MemberId::new(member)
            .map_err(|e| Error::Corrupt(format!("stored coupon member: {e}")))?,
        source: r.get(3).db()?,
        valid_from: from_ts(r.get(4).db()?),
        valid_to: from_ts(r.get(5).db()?),
        issued_at: from_ts(r.get(6).db()?),
    })
}

/// A coupon encoded for a blocking thread.
struct CouponRow {
    code: String,
    template: String,
    member: String,
    source: String,
    valid_from: i64,
    valid_to: i64,
    issued_at: i64,
}

#[async_trait]
impl PricingStore for SqliteStore {
    async fn pricing(&self, tenant: &TenantId) -> Result<PricingSnapshot> {
        let name = tenant.as_str().to_owned();
        self.pool
            .read(move |tx| {
                // One read transaction: the version and the entries are of one snapshot.
                let version = stored_version(tx, &name)?;
                let mut stmt = tx
                    .prepare_cached(
                        "SELECT kind, id, version, body, updated_at FROM pricing_entries
                         WHERE tenant = ?1",
                    )
                    .db()?;
                let rows = stmt
                    .query_map(params![name], |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, i64>(2)?,
                            r.get::<_, String>(3)?,
                            r.get::<_, i64>(4)?,
                        ))
                    })
                    .db()?
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .db()?;
                let mut entries = rows
                    .into_iter()
                    .map(|(kind, id, version, body, at)| {
                        Ok(PricingEntry {
                            kind: kind_of(&kind)?,
                            id,
                            version: uint(version, "pricing version")?,
                            body,
                            updated_at: from_ts(at),
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                // By kind in the port's order (not the stored names' order), then id.
                entries.sort_by(|a, b| (a.kind, &a.id).cmp(&(b.kind, &b.id)));
                Ok(PricingSnapshot { version, entries })
            })
            .await
    }

    async fn pricing_version(&self, tenant: &TenantId) -> Result<u64> {
        let name = tenant.as_str().to_owned();
        self.pool.read(move |tx| stored_version(tx, &name)).await
    }

    async fn write_pricing(&self, write: PricingWrite<'_>, trail: Trail<'_>) -> Result<u64> {
        write.check()?;
        let tenant = write.tenant.as_str().to_owned();
        let expected = write.expected;
        let at = ts(write.at)?;
        let changes: Vec<(&'static str, String, Option<String>)> = write
            .changes
            .iter()
            .map(|c| (c.kind.as_str(), c.id.clone(), c.body.clone()))
            .collect();
        let trail = trail_rows(trail)?;
        self.pool
            .write(move |tx| {
                let stored = stored_version(tx, &tenant)?;
                if stored != expected {
                    return Err(Error::conflict("pricing", &tenant, "stale version"));
                }
                let version = int(stored.saturating_add(1), "pricing version")?;
                tx.prepare_cached(
                    "INSERT INTO pricing_heads (tenant, version) VALUES (?1, ?2)
                     ON CONFLICT (tenant) DO UPDATE SET version = excluded.version",
                )
                .db()?
                .execute(params![tenant, version])
                .db()?;
                for (kind, id, body) in &changes {
                    match body {
                        Some(body) => tx
                            .prepare_cached(
                                "INSERT INTO pricing_entries
                                     (tenant, kind, id, version, body, updated_at)
                                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                                 ON CONFLICT (tenant, kind, id) DO UPDATE
                                 SET version = excluded.version, body = excluded.body,
                                     updated_at = excluded.updated_at",
                            )
                            .db()?
                            .execute(params![tenant, kind, id, version, body, at])
                            .db()?,
                        None => tx
                            .prepare_cached(
                                "DELETE FROM pricing_entries
                                 WHERE tenant = ?1 AND kind = ?2 AND id = ?3",
                            )
                            .db()?
                            .execute(params![tenant, kind, id])
                            .db()?,
                    };
                    tx.prepare_cached(
                        "INSERT INTO pricing_revisions (tenant, kind, id, version, body, at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    )
                    .db()?
                    .execute(params![tenant, kind, id, version, body, at])
                    .db()?;
                }
                write_trail(tx, &trail, &tenant)?;
                uint(version, "pricing version")
            })
            .await
    }

    async fn pricing_history(
        &self,
        tenant: &TenantId,
        kind: PricingKind,
        id: &str,
    ) -> Result<Vec<PricingRevision>> {
        let (tenant, id) = (tenant.as_str().to_owned(), id.to_owned());
        self.pool
            .read(move |tx| {
                let mut stmt = tx
                    .prepare_cached(
                        "SELECT version, body, at FROM pricing_revisions
                         WHERE tenant = ?1 AND kind = ?2 AND id = ?3 ORDER BY version DESC",
                    )
                    .db()?;
                let rows = stmt
                    .query_map(params![tenant, kind.as_str(), id], |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, Option<String>>(1)?,
                            r.get::<_, i64>(2)?,
                        ))
                    })
                    .db()?
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .db()?;
                rows.into_iter()
                    .map(|(version, body, at)| {
                        Ok(PricingRevision {
                            version: uint(version, "pricing version")?,
                            body,
                            at: from_ts(at),
                        })
                    })
                    .collect()
            })
            .await
    }

    async fn issue_coupons(
        &self,
        tenant: &TenantId,
        coupons: &[IssuedCoupon],
        trail: Trail<'_>,
    ) -> Result<()> {
        check_coupons(tenant, coupons)?;
        let rows = coupons
            .iter()
            .map(|c| {
                Ok(CouponRow {
                    code: c.code.clone(),
                    template: c.template.clone(),
                    member: c.member.as_str().to_owned(),
                    source: c.source.clone(),
                    valid_from: ts(c.valid_from)?,
                    valid_to: ts(c.valid_to)?,
                    issued_at: ts(c.issued_at)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let tenant = tenant.as_str().to_owned();
        let trail = trail_rows(trail)?;
        self.pool
            .write(move |tx| {
                // Every code is checked before any is written: the first stored one, in the
                // call's order, is the answer.
                for c in &rows {
                    let stored = tx
                        .prepare_cached("SELECT 1 FROM coupons WHERE tenant = ?1 AND code = ?2")
                        .db()?
                        .exists(params![tenant, c.code])
                        .db()?;
                    if stored {
                        return Err(Error::conflict("coupon", &c.code, "code already stored"));
                    }
                }
                for c in &rows {
                    tx.prepare_cached(
                        "INSERT INTO coupons (tenant, code, template, member, source, valid_from,
                                              valid_to, issued_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    )
                    .db()?
                    .execute(params![
                        tenant,
                        c.code,
                        c.template,
                        c.member,
                        c.source,
                        c.valid_from,
                        c.valid_to,
                        c.issued_at
                    ])
                    .db()?;
                }
                write_trail(tx, &trail, &tenant)
            })
            .await
    }

    async fn coupon(&self, tenant: &TenantId, code: &str) -> Result<Option<IssuedCoupon>> {
        let (tenant, code) = (tenant.clone(), code.to_owned());
        self.pool
            .read(move |tx| {
                let mut stmt = tx.prepare_cached(COUPON).db()?;
                let mut rows = stmt.query(params![tenant.as_str(), code]).db()?;
                rows.next().db()?.map(|r| coupon_of(&tenant, r)).transpose()
            })
            .await
    }

    async fn member_coupons(
        &self,
        tenant: &TenantId,
        member: &MemberId,
    ) -> Result<Vec<IssuedCoupon>> {
        let (tenant, member) = (tenant.clone(), member.as_str().to_owned());
        self.pool
            .read(move |tx| {
                let mut stmt = tx.prepare_cached(MEMBER_COUPONS).db()?;
                let mut rows = stmt.query(params![tenant.as_str(), member]).db()?;
                let mut out = Vec::new();
                while let Some(r) = rows.next().db()? {
                    out.push(coupon_of(&tenant, r)?);
                }
                Ok(out)
            })
            .await
    }
}
