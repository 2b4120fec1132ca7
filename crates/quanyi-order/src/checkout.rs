//! What a checkout decided, kept on the order: the source of every line's price and the decide
//! stage's decision.

use std::sync::Arc;

use quanyi_core::Money;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Why a line has its price.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum PriceSource {
    /// The SKU's list price.
    #[default]
    ListPrice,
    /// Priced by the shop's pricing rules: the unit price from a price list (none: the SKU's
    /// own), less what promotions took off the line.
    Priced {
        /// The price list that set the unit price, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        list: Option<Arc<str>>,
        /// What each promotion took off the line, in the order they applied.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        adjustments: Vec<PriceAdjustment>,
    },
}

/// What one promotion took off an order line.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PriceAdjustment {
    /// The promotion's id.
    pub promotion: Arc<str>,
    /// What it took off.
    pub amount: Money,
}

impl PriceSource {
    /// Whether this is the list price (the default, not written with a line).
    pub fn is_list_price(&self) -> bool {
        *self == PriceSource::ListPrice
    }
}

/// The name of the decide stage a shop runs unless told otherwise: it allows every order.
pub const ALLOW_ALL_STAGE: &str = "allow_all";

/// The most reasons a decision keeps.
pub const MAX_DECISION_REASONS: usize = 16;

/// The longest stage name or reason, in bytes.
pub const MAX_DECISION_TEXT: usize = 64;

/// What a decision says of an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Verdict {
    /// The order may be placed.
    Allow,
    /// The order is refused; nothing is stored.
    Deny,
}

/// What the checkout's decide stage concluded about an order. A placed order keeps it
/// (an order placed before decisions existed, or under the default stage without reasons,
/// reads as [`Decision::allow_all`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Decision {
    /// The stage that decided: 1 to [`MAX_DECISION_TEXT`] of `a-z`, `0-9`, `_`, `-`, `.`.
    pub stage: String,
    /// Allow or deny.
    pub verdict: Verdict,
    /// Why, as short codes (rule names), never personal data: up to
    /// [`MAX_DECISION_REASONS`], each printable ASCII of at most [`MAX_DECISION_TEXT`] bytes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
}

impl Decision {
    /// The default stage's decision: allowed, without reasons.
    pub fn allow_all() -> Decision {
        Decision {
            stage: ALLOW_ALL_STAGE.to_owned(),
            verdict: Verdict::Allow,
            reasons: Vec::new(),
        }
    }

    /// `stage` allows the order for `reasons`.
    pub fn allow(stage: impl Into<String>, reasons: Vec<String>) -> Decision {
        Decision {
            stage: stage.into(),
            verdict: Verdict::Allow,
            reasons,
        }
    }

    /// `stage` denies the order for `reasons`.
    pub fn deny(stage: impl Into<String>, reasons: Vec<String>) -> Decision {
        Decision {
            stage: stage.into(),
            verdict: Verdict::Deny,
            reasons,
        }
    }

    /// Checks the stage name and the reasons.
    ///
    /// # Errors
    /// [`Error::InvalidDecision`] naming the part that is malformed.
    pub fn check(&self) -> Result<()> {
        let stage_ok = !self.stage.is_empty()
            && self.stage.len() <= MAX_DECISION_TEXT
            && self.stage.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'.')
            });
        if !stage_ok {
            return Err(Error::InvalidDecision { part: "stage" });
        }
        let reason_ok = |r: &String| {
            !r.is_empty() && r.len() <= MAX_DECISION_TEXT && r.bytes().all(|b| b.is_ascii_graphic())
        };
        if self.reasons.len() > MAX_DECISION_REASONS || !self.reasons.iter().all(reason_ok) {
            return Err(Error::InvalidDecision { part: "reasons" });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_are_checked_and_round_trip() {
        let d = Decision::allow("risk.rules-v2", vec!["trusted_device".into()]);
        d.check().unwrap();
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<Decision>(&json).unwrap(), d);
        Decision::allow_all().check().unwrap();
        for bad in [
            Decision::allow("", vec![]),
            Decision::allow("Risk", vec![]),
            Decision::allow("x".repeat(65), vec![]),
            Decision::deny("risk", vec!["has space".into()]),
            Decision::deny("risk", vec![String::new()]),
            Decision::deny("risk", vec!["r".into(); MAX_DECISION_REASONS + 1]),
        ] {
            assert_eq!(
                bad.check().unwrap_err().code(),
                "invalid_decision",
                "{bad:?}"
            );
        }
        assert!(PriceSource::default().is_list_price());
    }
}
