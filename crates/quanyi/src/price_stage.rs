//! The checkout's price stage with the shop's pricing rules: what it reads beyond the cart,
//! the promotions whose budget is used up, and the engine's prices on the quote's lines.

use std::sync::Arc;

use quanyi_core::{MemberId, Money};
use quanyi_order::PriceSource;
use quanyi_storage::COUPON_BUDGET;

use crate::promotions::normalized_code;

use crate::sales::{Quote, QuoteLine};
use crate::{Error, Result, Shop};

/// What the price stage reads beyond the cart: the codes entered, what the host says of the
/// member (until the membership domain keeps it), the channel.
pub(crate) struct PriceInputs<'a> {
    pub(crate) buyer: &'a MemberId,
    pub(crate) codes: &'a [String],
    pub(crate) member: Option<&'a quanyi_pricing::MemberFacts>,
    pub(crate) channel: &'a str,
}

impl<'a> PriceInputs<'a> {
    /// No codes, no member facts, the web channel: what `place_order` prices with.
    pub(crate) fn plain(buyer: &'a MemberId) -> PriceInputs<'a> {
        PriceInputs {
            buyer,
            codes: &[],
            member: None,
            channel: "web",
        }
    }
}

/// The budget scopes of promotions: uses by everyone, by one member (key `<id>:<member>`), and
/// the discount given in all (minor units).
const PROMOTION_BUDGET: &str = "promotion";
const PROMOTION_MEMBER_BUDGET: &str = "promotion.member";
const PROMOTION_DISCOUNT_BUDGET: &str = "promotion.discount";

/// The coupons a buyer entered that unlock their templates: (template, code).
type Unlocked = Vec<(Arc<str>, String)>;

impl Shop {
    /// The promotions with a budget that has no use left, for everyone or for this buyer, and
    /// what is left of each discount budget.
    pub(crate) async fn used_up(
        &self,
        rules: &quanyi_pricing::ValidRules,
        buyer: &MemberId,
    ) -> Result<(Vec<Arc<str>>, Vec<(Arc<str>, u64)>)> {
        let mut out = Vec::new();
        let mut left = Vec::new();
        let store = self.store_ref();
        for p in &rules.rules().promotions {
            let Some(budget) = p.budget else { continue };
            let spent_by_all = match budget.total {
                Some(total) => {
                    store
                        .budget_used(&self.tenant, PROMOTION_BUDGET, &p.id)
                        .await?
                        >= u64::from(total)
                }
                None => false,
            };
            let spent_by_buyer = match budget.per_member {
                Some(limit) if !spent_by_all => {
                    let key = format!("{}:{buyer}", p.id);
                    store
                        .budget_used(&self.tenant, PROMOTION_MEMBER_BUDGET, &key)
                        .await?
                        >= u64::from(limit)
                }
                _ => false,
            };
            let discount_left = match budget.discount {
                Some(limit) if !spent_by_all && !spent_by_buyer => {
                    let used = store
                        .budget_used(&self.tenant, PROMOTION_DISCOUNT_BUDGET, &p.id)
                        .await?;
                    Some(minor_units(limit).saturating_sub(used))
                }
                _ => None,
            };
            if spent_by_all || spent_by_buyer || discount_left == Some(0) {
                out.push(p.id.clone());
            } else if let Some(n) = discount_left {
                left.push((p.id.clone(), n));
            }
        }
        Ok((out, left))
    }

    /// The coupon templates the codes entered unlock for this buyer: each code that is no
    /// shared promotion code must be a coupon issued to the buyer, in its window, unused, of a
    /// coupon template of the rules (whether it is unused is read when `read_use`).
    async fn unlocked(
        &self,
        rules: &quanyi_pricing::ValidRules,
        inputs: &PriceInputs<'_>,
        read_use: bool,
    ) -> Result<Unlocked> {
        let mut unlocked: Unlocked = Vec::new();
        for code in inputs.codes {
            let shared = rules.rules().promotions.iter().any(|p| {
                p.code
                    .as_deref()
                    .is_some_and(|c| c.trim().eq_ignore_ascii_case(code.trim()))
            });
            if shared {
                continue;
            }
            let key = normalized_code(code);
            let coupon = match self.store_ref().coupon(&self.tenant, &key).await? {
                Some(c) if &c.member == inputs.buyer => c,
                // Another member's coupon is as unknown as no coupon.
                _ => return Err(Error::UnknownPromotionCode(code.clone())),
            };
            let unavailable = |reason: &'static str| Error::CouponUnavailable {
                code: code.clone(),
                reason,
            };
            let now = self.now();
            if now < coupon.valid_from {
                return Err(unavailable("not_yet_valid"));
            }
            if now >= coupon.valid_to {
                return Err(unavailable("expired"));
            }
            let template = rules
                .rules()
                .promotions
                .iter()
                .find(|p| *p.id == coupon.template && p.coupon)
                .ok_or_else(|| unavailable("withdrawn"))?;
            if read_use
                && self
                    .store_ref()
                    .budget_used(&self.tenant, COUPON_BUDGET, &key)
                    .await?
                    > 0
            {
                return Err(unavailable("used"));
            }
            // Two coupons of one template: one is used.
            if !unlocked.iter().any(|(t, _)| *t == template.id) {
                unlocked.push((template.id.clone(), key));
            }
        }
        Ok(unlocked)
    }

    /// The price stage with the shop's rules: the engine's unit prices and amounts on the
    /// lines, its explanation beside them. With `read_coupon_use`, a coupon entered that an
    /// order holds is refused here (`coupon_unavailable`, `used`); without, the placement's
    /// take of its use is refused by the store and the checkout prices again with it.
    pub(crate) async fn priced(
        &self,
        mut lines: Vec<QuoteLine>,
        categories: Vec<Vec<String>>,
        inputs: &PriceInputs<'_>,
        rules: &quanyi_pricing::ValidRules,
        read_coupon_use: bool,
    ) -> Result<Quote> {
        let currency = lines
            .first()
            .map(|l| l.check.amount.currency())
            .ok_or(Error::EmptyCart)?;
        let unlocked = self.unlocked(rules, inputs, read_coupon_use).await?;
        let cart = quanyi_pricing::Cart {
            currency,
            items: lines
                .iter()
                .zip(categories)
                .map(|(l, categories)| quanyi_pricing::CartItem {
                    sku: l.check.sku,
                    quantity: l.check.quantity,
                    base_price: l.check.unit_price,
                    kind: l.check.kind,
                    categories,
                })
                .collect(),
            codes: inputs.codes.to_vec(),
            coupons: unlocked.iter().map(|(t, _)| t.clone()).collect(),
        };
        let (used_up, discount_left) = self.used_up(rules, inputs.buyer).await?;
        let mut ctx = quanyi_pricing::PricingContext {
            member: inputs.member.cloned(),
            channel: Some(inputs.channel.to_owned()),
            now: self.now(),
            used_up,
        };
        // A promotion whose discount would pass what is left of its discount budget does not
        // apply: priced again without it.
        let explained = loop {
            let explained = quanyi_pricing::quote(&cart, &ctx, rules)?;
            let over = explained.applied.iter().find(|a| {
                discount_left
                    .iter()
                    .any(|(id, left)| *id == a.promotion && minor_units(a.amount) > *left)
            });
            match over {
                Some(a) => ctx.used_up.push(a.promotion.clone()),
                None => break explained,
            }
        };
        for (line, priced) in lines.iter_mut().zip(&explained.lines) {
            line.unit_price = priced.unit_price;
            line.amount = priced.amount;
            let list = match &priced.price_from {
                quanyi_pricing::PriceFrom::List { id, .. } => Some(id.clone()),
                quanyi_pricing::PriceFrom::Base => None,
            };
            if list.is_some() || !priced.adjustments.is_empty() {
                line.source = PriceSource::Priced {
                    list,
                    adjustments: priced
                        .adjustments
                        .iter()
                        .map(|a| quanyi_order::PriceAdjustment {
                            promotion: a.promotion.clone(),
                            amount: a.amount,
                        })
                        .collect(),
                };
            }
        }
        let mut budgets = Vec::new();
        for applied in &explained.applied {
            let budget = rules
                .rules()
                .promotions
                .iter()
                .find(|p| p.id == applied.promotion)
                .and_then(|p| p.budget);
            if let Some((_, code)) = unlocked.iter().find(|(t, _)| *t == applied.promotion) {
                budgets.push(quanyi_storage::BudgetTake {
                    scope: COUPON_BUDGET.into(),
                    key: code.clone(),
                    limit: 1,
                    amount: 1,
                });
            }
            let Some(budget) = budget else { continue };
            if let Some(limit) = budget.discount {
                budgets.push(quanyi_storage::BudgetTake {
                    scope: PROMOTION_DISCOUNT_BUDGET.into(),
                    key: applied.promotion.to_string(),
                    limit: minor_units(limit),
                    amount: minor_units(applied.amount),
                });
            }
            if let Some(limit) = budget.total {
                budgets.push(quanyi_storage::BudgetTake {
                    scope: PROMOTION_BUDGET.into(),
                    key: applied.promotion.to_string(),
                    limit: u64::from(limit),
                    amount: 1,
                });
            }
            if let Some(limit) = budget.per_member {
                budgets.push(quanyi_storage::BudgetTake {
                    scope: PROMOTION_MEMBER_BUDGET.into(),
                    key: format!("{}:{}", applied.promotion, inputs.buyer),
                    limit: u64::from(limit),
                    amount: 1,
                });
            }
        }
        Ok(Quote {
            lines,
            total: explained.total,
            explained: Some(explained),
            budgets,
        })
    }
}

/// An amount's minor units as a budget counts them (a negative amount counts as none).
fn minor_units(amount: Money) -> u64 {
    u64::try_from(amount.minor()).unwrap_or(0)
}
