//! Operators' pricing rules (`shop.promotions()`): price lists, promotions and coupon
//! templates stored per tenant as one versioned set, each change validated against the whole
//! set and audited in the same write; coupons issued to members; and the rules this process
//! prices by, reloaded when they change.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use quanyi_core::{Actor, Currency, MemberId, Rounding, TenantId};
use quanyi_pricing::{PriceList, PricingError, Promotion, Rules, ValidRules};
use quanyi_storage::{
    AuditAction, AuditOutcome, COUPON_BUDGET, EntryChange, IssuedCoupon, PricingKind,
    PricingRevision, PricingSnapshot, PricingWrite, Trail,
};
use serde::{Deserialize, Serialize};

use crate::{Error, Result, Shop};

/// The most coupons one call issues.
pub const MAX_COUPONS_PER_ISSUE: usize = 1_000;

/// The longest campaign id a coupon names, in characters.
const MAX_CAMPAIGN_CHARS: usize = 64;

/// How many times a change is made again when another change of the rules won the race.
const WRITE_TRIES: usize = 5;

/// Characters of issued coupon codes: digits and capitals without I, L, O and U, so a code read
/// aloud or typed from a poster is not mistaken.
const CODE_ALPHABET: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Characters of an issued coupon's code (80 random bits).
const CODE_CHARS: usize = 16;

/// The pricing rules of a shop, for operators: `shop.promotions()`.
#[derive(Debug, Clone, Copy)]
pub struct Promotions<'a> {
    pub(crate) shop: &'a Shop,
}

/// A tenant's stored pricing rules: their version, the rules (none before the first write),
/// and each entry's version, for the `expected` of its next change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PricingRules {
    /// How many changes the rules took (0: never written).
    pub version: u64,
    /// The rules in force.
    pub rules: Option<Rules>,
    /// Every entry (settings, lists, promotions) with the version that last changed it.
    pub entries: Vec<EntryVersion>,
}

impl PricingRules {
    /// The version that last changed an entry, if it is stored.
    pub fn entry_version(&self, kind: PricingKind, id: &str) -> Option<u64> {
        self.entries
            .iter()
            .find(|e| e.kind == kind && e.id == id)
            .map(|e| e.version)
    }
}

/// An entry of the stored rules and the version that last changed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryVersion {
    /// What it is.
    pub kind: PricingKind,
    /// Its id (`rules` for the settings).
    pub id: String,
    /// The rules' version that last changed it.
    pub version: u64,
    /// When.
    pub updated_at: DateTime<Utc>,
}

/// Who issues coupons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CouponSource {
    /// The operator who issues them (the call's actor).
    Operator,
    /// A campaign, by its id (printable, at most 64 characters).
    Campaign(String),
    /// A referral: the member who referred.
    Referral(MemberId),
}

/// A coupon issued to a member, and whether an order holds its use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberCoupon {
    /// The coupon.
    pub coupon: IssuedCoupon,
    /// An order took its use (and did not close unpaid).
    pub used: bool,
}

/// The rules' settings entry.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Settings {
    currency: Currency,
    rounding: Rounding,
}

/// The id of the settings entry.
const SETTINGS_ID: &str = "rules";

/// The rules a process prices by, with the version they were read at and when that version
/// was last confirmed.
#[derive(Debug)]
pub(crate) struct LoadedRules {
    pub(crate) version: u64,
    pub(crate) rules: Option<ValidRules>,
    checked: parking_lot::Mutex<Instant>,
}

/// Each tenant's rules as this process last read them.
#[derive(Debug, Default)]
pub(crate) struct RulesCache(parking_lot::Mutex<HashMap<TenantId, Arc<LoadedRules>>>);

/// The rules of a stored snapshot.
fn rules_of(snapshot: &PricingSnapshot) -> Result<Option<Rules>> {
    let parse_error = |e: serde_json::Error, id: &str| {
        Error::Pricing(PricingError::InvalidRule {
            rule: id.to_owned(),
            field: "stored body".into(),
            reason: e.to_string(),
        })
    };
    let mut settings = None;
    let mut lists = Vec::new();
    let mut promotions = Vec::new();
    for e in &snapshot.entries {
        match e.kind {
            PricingKind::Settings => {
                settings = Some(
                    serde_json::from_str::<Settings>(&e.body).map_err(|x| parse_error(x, &e.id))?,
                );
            }
            PricingKind::List => lists.push(
                serde_json::from_str::<PriceList>(&e.body).map_err(|x| parse_error(x, &e.id))?,
            ),
            PricingKind::Promotion => promotions.push(
                serde_json::from_str::<Promotion>(&e.body).map_err(|x| parse_error(x, &e.id))?,
            ),
        }
    }
    match settings {
        None if lists.is_empty() && promotions.is_empty() => Ok(None),
        None => Err(Error::Pricing(PricingError::InvalidRule {
            rule: SETTINGS_ID.into(),
            field: "currency".into(),
            reason: "is not set".into(),
        })),
        Some(s) => Ok(Some(Rules {
            currency: s.currency,
            lists,
            promotions,
            rounding: s.rounding,
        })),
    }
}

fn body<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::InvalidInput(e.to_string()))
}

/// The changes that make the stored entries `rules`: every entry written, those not in it
/// removed.
fn replace_all(current: &PricingSnapshot, rules: &Rules) -> Result<Vec<EntryChange>> {
    let mut changes = vec![EntryChange {
        kind: PricingKind::Settings,
        id: SETTINGS_ID.into(),
        body: Some(body(&Settings {
            currency: rules.currency,
            rounding: rules.rounding,
        })?),
    }];
    for list in &rules.lists {
        changes.push(EntryChange {
            kind: PricingKind::List,
            id: list.id.to_string(),
            body: Some(body(list)?),
        });
    }
    for p in &rules.promotions {
        changes.push(EntryChange {
            kind: PricingKind::Promotion,
            id: p.id.to_string(),
            body: Some(body(p)?),
        });
    }
    for e in &current.entries {
        if !changes.iter().any(|c| c.kind == e.kind && c.id == e.id) {
            changes.push(EntryChange {
                kind: e.kind,
                id: e.id.clone(),
                body: None,
            });
        }
    }
    // Entries whose body is unchanged are not rewritten: their versions stay.
    changes.retain(|c| {
        !current
            .entries
            .iter()
            .any(|e| e.kind == c.kind && e.id == c.id && Some(&e.body) == c.body.as_ref())
    });
    Ok(changes)
}

/// Refuses a change of an entry made from another version of it (`None`: the entry is new).
fn check_expected(
    current: &PricingSnapshot,
    kind: PricingKind,
    id: &str,
    expected: Option<u64>,
) -> Result<()> {
    let stored = current
        .entries
        .iter()
        .find(|e| e.kind == kind && e.id == id)
        .map(|e| e.version);
    if stored != expected {
        return Err(Error::Storage(quanyi_storage::Error::conflict(
            kind.as_str(),
            id,
            "stale version",
        )));
    }
    Ok(())
}

impl Promotions<'_> {
    /// The stored rules, their version and each entry's version.
    ///
    /// # Errors
    /// [`Error::Storage`]; [`Error::Pricing`] for stored bodies that no longer parse.
    pub async fn current(&self) -> Result<PricingRules> {
        let snapshot = self.shop.store_ref().pricing(&self.shop.tenant).await?;
        Ok(PricingRules {
            version: snapshot.version,
            rules: rules_of(&snapshot)?,
            entries: snapshot
                .entries
                .iter()
                .map(|e| EntryVersion {
                    kind: e.kind,
                    id: e.id.clone(),
                    version: e.version,
                    updated_at: e.updated_at,
                })
                .collect(),
        })
    }

    /// Replaces the stored rules with `rules` (a file loaded, say) as one new version: every
    /// list and promotion in it written, every other one removed. Answers the new version (the
    /// current one when nothing changed).
    ///
    /// # Errors
    /// [`Error::Pricing`] (the rule and the field) for rules that do not validate;
    /// [`Error::Storage`].
    pub async fn load(&self, actor: &Actor, rules: Rules) -> Result<u64> {
        rules.validate()?;
        self.change(actor, "rules:all", |current| replace_all(current, &rules))
            .await
    }

    /// [`load`](Promotions::load) from the JSON form of [`Rules`].
    ///
    /// # Errors
    /// As [`load`](Promotions::load); [`Error::Pricing`] (`invalid_rules_file`, with the line
    /// and column) for a file that does not parse.
    pub async fn load_json(&self, actor: &Actor, text: &str) -> Result<u64> {
        self.load(actor, Rules::from_json(text)?.into_rules()).await
    }

    /// [`load`](Promotions::load) from the TOML form of [`Rules`].
    ///
    /// # Errors
    /// As [`load_json`](Promotions::load_json).
    pub async fn load_toml(&self, actor: &Actor, text: &str) -> Result<u64> {
        self.load(actor, Rules::from_toml(text)?.into_rules()).await
    }

    /// Sets the rules' currency and rounding (every list and promotion must be in the
    /// currency). Answers the new version.
    ///
    /// # Errors
    /// [`Error::Pricing`] when a stored list or promotion is in another currency;
    /// [`Error::Storage`].
    pub async fn set_settings(
        &self,
        actor: &Actor,
        currency: Currency,
        rounding: Rounding,
    ) -> Result<u64> {
        let settings = body(&Settings { currency, rounding })?;
        self.change(actor, "settings:rules", |_| {
            Ok(vec![EntryChange {
                kind: PricingKind::Settings,
                id: SETTINGS_ID.into(),
                body: Some(settings.clone()),
            }])
        })
        .await
    }

    /// Writes a price list: new with `expected` `None`, or a change of the list at version
    /// `expected` (its [`EntryVersion`]). Answers the rules' new version.
    ///
    /// # Errors
    /// [`Error::Pricing`] (the rule and the field), also when the rules have no settings yet;
    /// [`Error::Storage`] (a `conflict` when the list is not at `expected`).
    pub async fn put_list(
        &self,
        actor: &Actor,
        list: PriceList,
        expected: Option<u64>,
    ) -> Result<u64> {
        self.put(
            actor,
            PricingKind::List,
            list.id.to_string(),
            body(&list)?,
            expected,
        )
        .await
    }

    /// Writes a promotion or coupon template: new with `expected` `None`, or a change of the
    /// one at version `expected`. Answers the rules' new version.
    ///
    /// # Errors
    /// As [`put_list`](Promotions::put_list).
    pub async fn put_promotion(
        &self,
        actor: &Actor,
        promotion: Promotion,
        expected: Option<u64>,
    ) -> Result<u64> {
        let id = promotion.id.to_string();
        self.put(
            actor,
            PricingKind::Promotion,
            id,
            body(&promotion)?,
            expected,
        )
        .await
    }

    /// Writes one entry from its version `expected` (`None`: new).
    async fn put(
        &self,
        actor: &Actor,
        kind: PricingKind,
        id: String,
        text: String,
        expected: Option<u64>,
    ) -> Result<u64> {
        self.change(actor, &format!("{}:{id}", kind.as_str()), |current| {
            check_expected(current, kind, &id, expected)?;
            Ok(vec![EntryChange {
                kind,
                id: id.clone(),
                body: Some(text.clone()),
            }])
        })
        .await
    }

    /// Removes a price list or promotion at version `expected`. Answers the rules' new
    /// version. Orders placed before keep their prices.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for the settings (replace them instead); [`Error::Storage`] (a
    /// `conflict` when the entry is gone or not at `expected`).
    pub async fn remove(
        &self,
        actor: &Actor,
        kind: PricingKind,
        id: &str,
        expected: u64,
    ) -> Result<u64> {
        if kind == PricingKind::Settings {
            return Err(Error::InvalidInput(
                "the rules' settings are replaced, not removed".into(),
            ));
        }
        self.change(actor, &format!("{}:{id}", kind.as_str()), |current| {
            check_expected(current, kind, id, Some(expected))?;
            Ok(vec![EntryChange {
                kind,
                id: id.to_owned(),
                body: None,
            }])
        })
        .await
    }

    /// The revisions of one entry, newest first: each body written, or its removal (`None`).
    ///
    /// # Errors
    /// [`Error::Storage`].
    pub async fn history(&self, kind: PricingKind, id: &str) -> Result<Vec<PricingRevision>> {
        Ok(self
            .shop
            .store_ref()
            .pricing_history(&self.shop.tenant, kind, id)
            .await?)
    }

    /// Makes a change from the stored rules as they are, checks the whole set, and writes it
    /// with `actor`'s audit record as the next version; made again from the new rules when
    /// another change won the race.
    async fn change(
        &self,
        actor: &Actor,
        subject: &str,
        make: impl Fn(&PricingSnapshot) -> Result<Vec<EntryChange>>,
    ) -> Result<u64> {
        let shop = self.shop;
        let store = shop.store_ref();
        for _ in 0..WRITE_TRIES {
            let current = store.pricing(&shop.tenant).await?;
            let changes = make(&current)?;
            if changes.is_empty() {
                return Ok(current.version);
            }
            let mut next = current.clone();
            for c in &changes {
                next.entries.retain(|e| !(e.kind == c.kind && e.id == c.id));
                if let Some(body) = &c.body {
                    next.entries.push(quanyi_storage::PricingEntry {
                        kind: c.kind,
                        id: c.id.clone(),
                        version: current.version + 1,
                        body: body.clone(),
                        updated_at: shop.now(),
                    });
                }
            }
            if let Some(rules) = rules_of(&next)? {
                rules.validate()?;
            }
            let version = current.version + 1;
            let record = shop.audit_record(
                &actor.to_string(),
                AuditAction::PricingChanged,
                subject.to_owned(),
                AuditOutcome::Allowed,
                format!("version {version}, {} entries changed", changes.len()),
            );
            let written = store
                .write_pricing(
                    PricingWrite {
                        tenant: &shop.tenant,
                        expected: current.version,
                        changes: &changes,
                        at: shop.now(),
                    },
                    Trail {
                        events: &[],
                        audit: Some(&record),
                    },
                )
                .await;
            match written {
                Ok(version) => {
                    shop.inner.rules_cache.forget(&shop.tenant);
                    return Ok(version);
                }
                Err(quanyi_storage::Error::Conflict {
                    what: "pricing", ..
                }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Storage(quanyi_storage::Error::conflict(
            "pricing",
            &shop.tenant,
            "kept changing while writing",
        )))
    }

    /// Issues one coupon of the coupon template `template` (a promotion marked `coupon`) per
    /// entry of `members` (a member named twice gets two), valid in `[valid_from, valid_to)`, with a fresh random code each, in one
    /// write audited as `coupons_issued`. A coupon applies its template for its member only,
    /// once: an order that uses it takes its use, given back when that order closes unpaid.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for no members or more than [`MAX_COUPONS_PER_ISSUE`], a window that ends before it starts or a malformed campaign id;
    /// [`Error::UnknownPromotionCode`] when `template` is not a coupon template of the stored
    /// rules; [`Error::Storage`].
    pub async fn issue_coupons(
        &self,
        actor: &Actor,
        template: &str,
        members: &[MemberId],
        source: CouponSource,
        valid_from: DateTime<Utc>,
        valid_to: DateTime<Utc>,
    ) -> Result<Vec<IssuedCoupon>> {
        let shop = self.shop;
        if members.is_empty() || members.len() > MAX_COUPONS_PER_ISSUE {
            return Err(Error::InvalidInput(format!(
                "coupons are issued to 1 to {MAX_COUPONS_PER_ISSUE} members at a time"
            )));
        }
        if valid_to <= valid_from {
            return Err(Error::InvalidInput(
                "a coupon's window must end after it starts".into(),
            ));
        }
        let source = match source {
            CouponSource::Operator => actor.to_string(),
            CouponSource::Campaign(id) => {
                if id.trim().is_empty()
                    || id.chars().any(char::is_control)
                    || id.chars().count() > MAX_CAMPAIGN_CHARS
                {
                    return Err(Error::InvalidInput(format!(
                        "a campaign id is printable and at most {MAX_CAMPAIGN_CHARS} characters"
                    )));
                }
                format!("campaign:{id}")
            }
            CouponSource::Referral(member) => format!("referral:{member}"),
        };
        let rules = self.current().await?.rules;
        let is_template = rules
            .as_ref()
            .is_some_and(|r| r.promotions.iter().any(|p| &*p.id == template && p.coupon));
        if !is_template {
            return Err(Error::UnknownPromotionCode(template.to_owned()));
        }
        let now = shop.now();
        let coupons: Vec<IssuedCoupon> = members
            .iter()
            .map(|member| IssuedCoupon {
                tenant: shop.tenant.clone(),
                code: new_code(),
                template: template.to_owned(),
                member: member.clone(),
                source: source.clone(),
                valid_from,
                valid_to,
                issued_at: now,
            })
            .collect();
        let record = shop.audit_record(
            &actor.to_string(),
            AuditAction::CouponsIssued,
            format!("promotion:{template}"),
            AuditOutcome::Allowed,
            format!("{} coupons by {source}", coupons.len()),
        );
        shop.store_ref()
            .issue_coupons(
                &shop.tenant,
                &coupons,
                Trail {
                    events: &[],
                    audit: Some(&record),
                },
            )
            .await?;
        Ok(coupons)
    }

    /// The coupons issued to a member, oldest first, each with whether an order holds its
    /// use.
    ///
    /// # Errors
    /// [`Error::Storage`].
    pub async fn coupons_of(&self, member: &MemberId) -> Result<Vec<MemberCoupon>> {
        let store = self.shop.store_ref();
        let tenant = &self.shop.tenant;
        let mut out = Vec::new();
        for coupon in store.member_coupons(tenant, member).await? {
            let used = store
                .budget_used(tenant, COUPON_BUDGET, &coupon.code)
                .await?
                > 0;
            out.push(MemberCoupon { coupon, used });
        }
        Ok(out)
    }
}

/// A fresh coupon code.
fn new_code() -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    (0..CODE_CHARS)
        .map(|_| char::from(CODE_ALPHABET[rng.gen_range(0..CODE_ALPHABET.len())]))
        .collect()
}

/// A code as a buyer typed it, in the form coupons are stored: trimmed, upper case.
pub(crate) fn normalized_code(code: &str) -> String {
    code.trim().to_ascii_uppercase()
}

impl RulesCache {
    fn get(&self, tenant: &TenantId) -> Option<Arc<LoadedRules>> {
        self.0.lock().get(tenant).cloned()
    }

    fn put(&self, tenant: &TenantId, loaded: Arc<LoadedRules>) {
        let mut map = self.0.lock();
        // A slower reader never replaces newer rules.
        if map
            .get(tenant)
            .is_none_or(|old| old.version <= loaded.version)
        {
            map.insert(tenant.clone(), loaded);
        }
    }

    fn forget(&self, tenant: &TenantId) {
        self.0.lock().remove(tenant);
    }
}

impl Shop {
    /// The pricing rules to price by: as this process last read them while that read is
    /// younger than the shop's pricing refresh (and `fresh` is not asked), otherwise after
    /// asking the store for their version (and reading them again when it moved).
    pub(crate) async fn pricing_rules(&self, fresh: bool) -> Result<Arc<LoadedRules>> {
        let cache = &self.inner.rules_cache;
        let cached = cache.get(&self.tenant);
        if let Some(c) = &cached {
            if !fresh && c.checked.lock().elapsed() < self.inner.pricing_refresh {
                return Ok(c.clone());
            }
        }
        let store = self.store_ref();
        if let Some(c) = cached {
            if store.pricing_version(&self.tenant).await? == c.version {
                *c.checked.lock() = Instant::now();
                return Ok(c);
            }
        }
        let snapshot = store.pricing(&self.tenant).await?;
        let rules = rules_of(&snapshot)?.map(Rules::validated).transpose()?;
        let loaded = Arc::new(LoadedRules {
            version: snapshot.version,
            rules,
            checked: parking_lot::Mutex::new(Instant::now()),
        });
        cache.put(&self.tenant, loaded.clone());
        Ok(loaded)
    }

    /// The shop's pricing rules, for operators: versioned price lists, promotions and coupon
    /// templates, and the coupons issued to members.
    pub fn promotions(&self) -> Promotions<'_> {
        Promotions { shop: self }
    }
}
