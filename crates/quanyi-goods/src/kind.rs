//! Kinds of goods and how they are delivered.

use std::fmt;

use quanyi_core::SkuId;
use serde::{Deserialize, Serialize};

use crate::{AccountRule, Error, Result};

/// The most components a benefit pack holds.
pub const MAX_BUNDLE_COMPONENTS: usize = 50;
const MAX_PLAN_CHARS: usize = 64;
const MAX_MEMBERSHIP_DAYS: u32 = 36_600;

/// What is sold and how it is delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum GoodsKind {
    /// A redeemable code (卡密) taken from the vault or bought from a supplier.
    CardKey,
    /// The supplier credits the buyer's account (直充).
    DirectTopUp {
        /// What a valid account looks like.
        account: AccountRule,
    },
    /// A URL.
    Link,
    /// A generated or pooled booking code.
    ReservationCode,
    /// A membership plan granted for a number of days.
    Membership {
        /// The host's plan name.
        plan: String,
        /// How many days one unit grants.
        days: u32,
    },
    /// A bundle of other SKUs (权益包).
    BenefitPack {
        /// The SKUs granted per unit.
        components: Vec<BundleComponent>,
    },
}

/// One SKU inside a benefit pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleComponent {
    /// The component SKU (of another good).
    pub sku: SkuId,
    /// Units of it per pack.
    pub quantity: u32,
}

/// The kind of goods without its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KindTag {
    /// [`GoodsKind::CardKey`].
    CardKey,
    /// [`GoodsKind::DirectTopUp`].
    DirectTopUp,
    /// [`GoodsKind::Link`].
    Link,
    /// [`GoodsKind::ReservationCode`].
    ReservationCode,
    /// [`GoodsKind::Membership`].
    Membership,
    /// [`GoodsKind::BenefitPack`].
    BenefitPack,
}

impl KindTag {
    /// Every tag.
    pub const ALL: [KindTag; 6] = [
        KindTag::CardKey,
        KindTag::DirectTopUp,
        KindTag::Link,
        KindTag::ReservationCode,
        KindTag::Membership,
        KindTag::BenefitPack,
    ];

    /// A stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            KindTag::CardKey => "card_key",
            KindTag::DirectTopUp => "direct_top_up",
            KindTag::Link => "link",
            KindTag::ReservationCode => "reservation_code",
            KindTag::Membership => "membership",
            KindTag::BenefitPack => "benefit_pack",
        }
    }
}

impl fmt::Display for KindTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl GoodsKind {
    /// The kind without its data.
    pub fn tag(&self) -> KindTag {
        match self {
            GoodsKind::CardKey => KindTag::CardKey,
            GoodsKind::DirectTopUp { .. } => KindTag::DirectTopUp,
            GoodsKind::Link => KindTag::Link,
            GoodsKind::ReservationCode => KindTag::ReservationCode,
            GoodsKind::Membership { .. } => KindTag::Membership,
            GoodsKind::BenefitPack { .. } => KindTag::BenefitPack,
        }
    }

    /// The account rule of a direct top-up, `None` for kinds that take no account.
    pub fn account_rule(&self) -> Option<&AccountRule> {
        match self {
            GoodsKind::DirectTopUp { account } => Some(account),
            _ => None,
        }
    }

    /// Checks the kind's own data: the account pattern compiles, the plan is named, the pack
    /// has 1 to [`MAX_BUNDLE_COMPONENTS`] distinct components of quantity at least 1.
    ///
    /// # Errors
    /// [`Error::InvalidPattern`], [`Error::InvalidMembership`] or [`Error::InvalidBundle`].
    pub fn check(&self) -> Result<()> {
        match self {
            GoodsKind::DirectTopUp { account } => account.check(),
            GoodsKind::Membership { plan, days } => {
                let n = plan.chars().count();
                if plan.trim().is_empty() || n > MAX_PLAN_CHARS {
                    return Err(Error::InvalidMembership {
                        reason: "plan must have 1 to 64 characters",
                    });
                }
                if plan.chars().any(char::is_control) {
                    return Err(Error::InvalidMembership {
                        reason: "plan holds control characters",
                    });
                }
                if *days == 0 || *days > MAX_MEMBERSHIP_DAYS {
                    return Err(Error::InvalidMembership {
                        reason: "days must be between 1 and 36600",
                    });
                }
                Ok(())
            }
            GoodsKind::BenefitPack { components } => {
                if components.is_empty() || components.len() > MAX_BUNDLE_COMPONENTS {
                    return Err(Error::InvalidBundle {
                        reason: format!(
                            "{} components, expected 1 to {MAX_BUNDLE_COMPONENTS}",
                            components.len()
                        ),
                    });
                }
                for (i, c) in components.iter().enumerate() {
                    if c.quantity == 0 {
                        return Err(Error::InvalidBundle {
                            reason: format!("component {} has quantity 0", c.sku),
                        });
                    }
                    if components[..i].iter().any(|p| p.sku == c.sku) {
                        return Err(Error::InvalidBundle {
                            reason: format!("component {} appears twice", c.sku),
                        });
                    }
                }
                Ok(())
            }
            GoodsKind::CardKey | GoodsKind::Link | GoodsKind::ReservationCode => Ok(()),
        }
    }
}
