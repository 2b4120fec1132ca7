//! The pricing port: a tenant's price lists, promotions and coupon templates as one versioned
//! set of entries, their revisions, and the coupons issued to members.
//!
//! The store keeps each entry's body as the text the domain gives it (the JSON form of a
//! `quanyi_pricing` list or promotion); it checks versions and keeps revisions, and never reads
//! the bodies.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use quanyi_core::{MemberId, TenantId};

use crate::{Result, Trail};

/// The longest entry id or coupon code, in bytes.
pub const MAX_PRICING_ID: usize = 128;

/// The longest entry body, in bytes.
pub const MAX_PRICING_BODY: usize = 256 * 1024;

/// What a pricing entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PricingKind {
    /// The rules' settings (currency, rounding): one entry.
    Settings,
    /// A price list.
    List,
    /// A promotion, automatic, by a shared code, or a coupon template.
    Promotion,
}

impl PricingKind {
    /// Every kind.
    pub const ALL: [PricingKind; 3] = [
        PricingKind::Settings,
        PricingKind::List,
        PricingKind::Promotion,
    ];

    /// Its stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            PricingKind::Settings => "settings",
            PricingKind::List => "list",
            PricingKind::Promotion => "promotion",
        }
    }

    /// The kind of a stored name.
    pub fn parse(s: &str) -> Option<PricingKind> {
        PricingKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// An entry of a tenant's pricing rules at its last change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PricingEntry {
    /// What it is.
    pub kind: PricingKind,
    /// Its id, unique per kind.
    pub id: String,
    /// The rules' version that last wrote it.
    pub version: u64,
    /// Its body (JSON).
    pub body: String,
    /// When it was last written.
    pub updated_at: DateTime<Utc>,
}

/// A tenant's pricing rules: their version (0 when nothing was ever written) and the entries in
/// force, by kind then id.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PricingSnapshot {
    /// The version: how many writes the rules took.
    pub version: u64,
    /// The entries, by kind then id.
    pub entries: Vec<PricingEntry>,
}

/// One change of an entry: its new body, or its removal (`None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryChange {
    /// What it is.
    pub kind: PricingKind,
    /// Its id: 1 to [`MAX_PRICING_ID`] bytes.
    pub id: String,
    /// The new body (at most [`MAX_PRICING_BODY`] bytes), or `None` to remove it.
    pub body: Option<String>,
}

/// A write of a tenant's pricing rules: changes taken together as one new version.
#[derive(Debug, Clone, Copy)]
pub struct PricingWrite<'a> {
    /// The tenant.
    pub tenant: &'a TenantId,
    /// The version the changes were made from; the write is refused when the stored version
    /// differs.
    pub expected: u64,
    /// The changes, each entry at most once.
    pub changes: &'a [EntryChange],
    /// When.
    pub at: DateTime<Utc>,
}

impl PricingWrite<'_> {
    /// Checks the changes' ids, bodies and that no entry repeats.
    ///
    /// # Errors
    /// `Invalid`.
    pub fn check(&self) -> Result<()> {
        if self.changes.is_empty() {
            return Err(crate::Error::Invalid(
                "a pricing write changes nothing".into(),
            ));
        }
        for (i, c) in self.changes.iter().enumerate() {
            let bad = c.id.is_empty()
                || c.id.len() > MAX_PRICING_ID
                || c.body.as_ref().is_some_and(|b| b.len() > MAX_PRICING_BODY)
                || self.changes[..i]
                    .iter()
                    .any(|o| o.kind == c.kind && o.id == c.id);
            if bad {
                return Err(crate::Error::Invalid(format!(
                    "pricing change {}/{} is malformed or repeated",
                    c.kind.as_str(),
                    c.id.escape_debug()
                )));
            }
        }
        Ok(())
    }
}

/// A past or present body of an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PricingRevision {
    /// The rules' version that wrote it.
    pub version: u64,
    /// The body written, or `None` where the entry was removed.
    pub body: Option<String>,
    /// When.
    pub at: DateTime<Utc>,
}

/// A coupon issued to a member: a code that applies one coupon template (a promotion) for that
/// member in its window, used by at most one order at a time (a budget of scope
/// [`COUPON_BUDGET`] keyed by the code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCoupon {
    /// The tenant.
    pub tenant: TenantId,
    /// Its code, unique per tenant: 1 to [`MAX_PRICING_ID`] bytes.
    pub code: String,
    /// The template (a promotion's id).
    pub template: String,
    /// The member it was issued to.
    pub member: MemberId,
    /// Who issued it: `operator:NAME`, `campaign:ID` or `referral:MEMBER`.
    pub source: String,
    /// From when it may be used (included).
    pub valid_from: DateTime<Utc>,
    /// Until when (excluded).
    pub valid_to: DateTime<Utc>,
    /// When it was issued.
    pub issued_at: DateTime<Utc>,
}

/// The budget scope of an issued coupon's one use.
pub const COUPON_BUDGET: &str = "coupon";

/// Price lists, promotions and coupon templates as a versioned set per tenant, and the coupons
/// issued to members.
#[async_trait]
pub trait PricingStore: Send + Sync {
    /// The tenant's entries in force and the rules' version.
    async fn pricing(&self, tenant: &TenantId) -> Result<PricingSnapshot>;

    /// The tenant's rules' version alone (0 when nothing was ever written).
    async fn pricing_version(&self, tenant: &TenantId) -> Result<u64>;

    /// Writes the changes as the rules' next version, with the trail, in one atomic step;
    /// returns the new version. Each changed entry keeps a revision (its body, or its removal).
    /// Placements priced from an earlier version are refused from then on
    /// ([`NewOrder::pricing_version`](crate::NewOrder::pricing_version)).
    ///
    /// # Errors
    /// `Invalid` for a malformed write; `Conflict` on `"pricing"` when the stored version is
    /// not `write.expected`, or on an id of the trail already stored. Nothing is written on
    /// any error.
    async fn write_pricing(&self, write: PricingWrite<'_>, trail: Trail<'_>) -> Result<u64>;

    /// The revisions of one entry, newest first.
    async fn pricing_history(
        &self,
        tenant: &TenantId,
        kind: PricingKind,
        id: &str,
    ) -> Result<Vec<PricingRevision>>;

    /// Stores coupons issued to members (all of one tenant) with the trail, in one atomic
    /// step.
    ///
    /// # Errors
    /// `Invalid` for a malformed code, a coupon of another tenant or a code repeated in the
    /// call; `Conflict` on `"coupon"` when a code is stored already. Nothing is written on any
    /// error.
    async fn issue_coupons(
        &self,
        tenant: &TenantId,
        coupons: &[IssuedCoupon],
        trail: Trail<'_>,
    ) -> Result<()>;

    /// An issued coupon by its code.
    async fn coupon(&self, tenant: &TenantId, code: &str) -> Result<Option<IssuedCoupon>>;

    /// The coupons issued to a member, by issue time then code.
    async fn member_coupons(
        &self,
        tenant: &TenantId,
        member: &MemberId,
    ) -> Result<Vec<IssuedCoupon>>;
}

/// Checks a call's coupons: codes, tenant, window, no code twice.
///
/// # Errors
/// `Invalid`.
pub fn check_coupons(tenant: &TenantId, coupons: &[IssuedCoupon]) -> Result<()> {
    for (i, c) in coupons.iter().enumerate() {
        let bad = &c.tenant != tenant
            || c.code.is_empty()
            || c.code.len() > MAX_PRICING_ID
            || c.template.is_empty()
            || c.template.len() > MAX_PRICING_ID
            || c.valid_to <= c.valid_from
            || coupons[..i].iter().any(|o| o.code == c.code);
        if bad {
            return Err(crate::Error::Invalid(format!(
                "coupon {} is malformed, of another tenant or repeated",
                c.code.escape_debug()
            )));
        }
    }
    Ok(())
}
