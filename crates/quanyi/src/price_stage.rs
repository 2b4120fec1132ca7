//! The checkout's price stage with the shop's pricing rules: what it reads beyond the cart,
//! the promotions whose budget is used up, and the engine's prices on the quote's lines.

use quanyi_core::MemberId;
use quanyi_order::PriceSource;

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

/// The budget scopes of promotions: uses by everyone, and by one member (key `<id>:<member>`).
const PROMOTION_BUDGET: &str = "promotion";
const PROMOTION_MEMBER_BUDGET: &str = "promotion.member";

impl Shop {
    /// The promotions with a budget that has no use left, for everyone or for this buyer.
    pub(crate) async fn used_up(
        &self,
        rules: &quanyi_pricing::ValidRules,
        buyer: &MemberId,
    ) -> Result<Vec<std::sync::Arc<str>>> {
        let mut out = Vec::new();
        for p in &rules.rules().promotions {
            let Some(budget) = p.budget else { continue };
            let store = self.store_ref();
            let spent_by_all = match budget.total {
                Some(total) => {
                    store
                        .budget_used(&self.tenant, PROMOTION_BUDGET, &p.id)
                        .await?
                        >= total
                }
                None => false,
            };
            let spent_by_buyer = match budget.per_member {
                Some(limit) if !spent_by_all => {
                    let key = format!("{}:{buyer}", p.id);
                    store
                        .budget_used(&self.tenant, PROMOTION_MEMBER_BUDGET, &key)
                        .await?
                        >= limit
                }
                _ => false,
            };
            if spent_by_all || spent_by_buyer {
                out.push(p.id.clone());
            }
        }
        Ok(out)
    }

    /// The price stage with the shop's rules: the engine's unit prices and amounts on the
    /// lines, its explanation beside them.
    pub(crate) async fn priced(
        &self,
        mut lines: Vec<QuoteLine>,
        categories: Vec<Vec<String>>,
        inputs: &PriceInputs<'_>,
        rules: &quanyi_pricing::ValidRules,
    ) -> Result<Quote> {
        let currency = lines
            .first()
            .map(|l| l.check.amount.currency())
            .ok_or(Error::EmptyCart)?;
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
        };
        let used_up = self.used_up(rules, inputs.buyer).await?;
        let ctx = quanyi_pricing::PricingContext {
            member: inputs.member.cloned(),
            channel: Some(inputs.channel.to_owned()),
            now: self.now(),
            used_up,
        };
        let explained = quanyi_pricing::quote(&cart, &ctx, rules)?;
        for code in inputs.codes {
            let known = rules.rules().promotions.iter().any(|p| {
                p.code
                    .as_deref()
                    .is_some_and(|c| c.trim().eq_ignore_ascii_case(code.trim()))
            });
            if !known {
                return Err(Error::UnknownPromotionCode(code.clone()));
            }
        }
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
            let Some(budget) = budget else { continue };
            if let Some(limit) = budget.total {
                budgets.push(quanyi_storage::BudgetTake {
                    scope: PROMOTION_BUDGET.into(),
                    key: applied.promotion.to_string(),
                    limit,
                });
            }
            if let Some(limit) = budget.per_member {
                budgets.push(quanyi_storage::BudgetTake {
                    scope: PROMOTION_MEMBER_BUDGET.into(),
                    key: format!("{}:{}", applied.promotion, inputs.buyer),
                    limit,
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
