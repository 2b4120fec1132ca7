//! The pricing port of the memory store.

use super::*;
use crate::pricing::{
    IssuedCoupon, PricingEntry, PricingKind, PricingRevision, PricingSnapshot, PricingStore,
    PricingWrite, check_coupons,
};

/// A tenant's pricing rules: the version, the entries in force and every entry's revisions.
#[derive(Default)]
pub(super) struct Rules {
    pub(super) version: u64,
    entries: BTreeMap<(PricingKind, String), PricingEntry>,
    revisions: BTreeMap<(PricingKind, String), Vec<PricingRevision>>,
}

#[async_trait]
impl PricingStore for MemoryStore {
    async fn pricing(&self, tenant: &TenantId) -> Result<PricingSnapshot> {
        let s = self.state.lock();
        Ok(s.pricing
            .get(tenant)
            .map(|r| PricingSnapshot {
                version: r.version,
                entries: r.entries.values().cloned().collect(),
            })
            .unwrap_or_default())
    }

    async fn pricing_version(&self, tenant: &TenantId) -> Result<u64> {
        Ok(self
            .state
            .lock()
            .pricing
            .get(tenant)
            .map_or(0, |r| r.version))
    }

    async fn write_pricing(&self, write: PricingWrite<'_>, trail: Trail<'_>) -> Result<u64> {
        write.check()?;
        let mut s = self.state.lock();
        let stored = s.pricing.get(write.tenant).map_or(0, |r| r.version);
        if stored != write.expected {
            return Err(Error::conflict("pricing", write.tenant, "stale version"));
        }
        s.check_trail(&trail, write.tenant)?;
        let version = stored + 1;
        let rules = s.pricing.entry(write.tenant.clone()).or_default();
        rules.version = version;
        for c in write.changes {
            let key = (c.kind, c.id.clone());
            match &c.body {
                Some(body) => {
                    rules.entries.insert(
                        key.clone(),
                        PricingEntry {
                            kind: c.kind,
                            id: c.id.clone(),
                            version,
                            body: body.clone(),
                            updated_at: write.at,
                        },
                    );
                }
                None => {
                    rules.entries.remove(&key);
                }
            }
            rules
                .revisions
                .entry(key)
                .or_default()
                .push(PricingRevision {
                    version,
                    body: c.body.clone(),
                    at: write.at,
                });
        }
        s.push_trail(&trail);
        Ok(version)
    }

    async fn pricing_history(
        &self,
        tenant: &TenantId,
        kind: PricingKind,
        id: &str,
    ) -> Result<Vec<PricingRevision>> {
        let s = self.state.lock();
        let mut out = s
            .pricing
            .get(tenant)
            .and_then(|r| r.revisions.get(&(kind, id.to_owned())))
            .cloned()
            .unwrap_or_default();
        out.reverse();
        Ok(out)
    }

    async fn issue_coupons(
        &self,
        tenant: &TenantId,
        coupons: &[IssuedCoupon],
        trail: Trail<'_>,
    ) -> Result<()> {
        check_coupons(tenant, coupons)?;
        let mut s = self.state.lock();
        if let Some(taken) = coupons
            .iter()
            .find(|c| s.coupons.contains_key(&(tenant.clone(), c.code.clone())))
        {
            return Err(Error::conflict(
                "coupon",
                &taken.code,
                "code already stored",
            ));
        }
        s.check_trail(&trail, tenant)?;
        for c in coupons {
            s.coupons
                .insert((tenant.clone(), c.code.clone()), c.clone());
        }
        s.push_trail(&trail);
        Ok(())
    }

    async fn coupon(&self, tenant: &TenantId, code: &str) -> Result<Option<IssuedCoupon>> {
        Ok(self
            .state
            .lock()
            .coupons
            .get(&(tenant.clone(), code.to_owned()))
            .cloned())
    }

    async fn member_coupons(
        &self,
        tenant: &TenantId,
        member: &MemberId,
    ) -> Result<Vec<IssuedCoupon>> {
        let s = self.state.lock();
        let mut out: Vec<IssuedCoupon> = s
            .coupons
            .iter()
            .filter(|((t, _), c)| t == tenant && &c.member == member)
            .map(|(_, c)| c.clone())
            .collect();
        out.sort_by(|a, b| (a.issued_at, &a.code).cmp(&(b.issued_at, &b.code)));
        Ok(out)
    }
}
