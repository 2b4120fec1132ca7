//! What a shop prices by: price lists and promotions, and what their conditions read.

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use quanyi_core::{Currency, Money, Rounding, SkuId};
use quanyi_goods::KindTag;
use serde::{Deserialize, Serialize};

use crate::PricingError;

/// The most basis points a percentage holds (100%).
pub const FULL_PERCENT_BPS: u32 = 10_000;

/// A half-open window of time `[from, to)`; either end may be open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Window {
    /// From when (included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<DateTime<Utc>>,
    /// Until when (excluded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<DateTime<Utc>>,
}

impl Window {
    /// Whether `at` is inside.
    pub fn contains(&self, at: DateTime<Utc>) -> bool {
        self.from.is_none_or(|f| f <= at) && self.to.is_none_or(|t| at < t)
    }
}

/// What the member behind a cart is, as conditions read it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MemberFacts {
    /// The member's level (`gold`), if any.
    #[serde(default)]
    pub level: Option<String>,
    /// The member's tags.
    #[serde(default)]
    pub tags: BTreeSet<String>,
    /// When the member registered.
    #[serde(default)]
    pub registered_at: Option<DateTime<Utc>>,
    /// How many paid orders the member placed before.
    #[serde(default)]
    pub orders_before: u32,
    /// The categories the member bought before.
    #[serde(default)]
    pub bought_categories: BTreeSet<String>,
    /// The SKUs the member bought before.
    #[serde(default)]
    pub bought_skus: BTreeSet<SkuId>,
    /// The memberships the member holds: plan and when it ends.
    #[serde(default)]
    pub memberships: Vec<(String, DateTime<Utc>)>,
}

/// What conditions read: the member (none for a guest), the channel and the time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PricingContext {
    /// The member, when known.
    pub member: Option<MemberFacts>,
    /// The channel (`app`, `web`, `mini_program`...).
    pub channel: Option<String>,
    /// The time the quote is for.
    pub now: DateTime<Utc>,
    /// The promotions whose budget has no use left (for everyone, or for this member): they
    /// do not apply ([`MissReason::UsedUp`](crate::MissReason::UsedUp)).
    #[serde(default)]
    pub used_up: Vec<Arc<str>>,
}

/// One SKU in a cart, as the checkout hands it to the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CartItem {
    /// The SKU.
    pub sku: SkuId,
    /// Units.
    pub quantity: u32,
    /// Its base price per unit (the SKU's price).
    pub base_price: Money,
    /// The goods kind.
    pub kind: KindTag,
    /// The goods' categories.
    pub categories: Vec<String>,
}

/// A cart to quote: its currency, its items and the promotion codes the buyer entered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cart {
    /// The currency every price is in.
    pub currency: Currency,
    /// The items, in the buyer's order.
    pub items: Vec<CartItem>,
    /// Promotion codes entered.
    pub codes: Vec<String>,
    /// The coupon templates (promotion ids) that coupons issued to the buyer unlock: the
    /// checkout checks each coupon (its member, window and use) before it names its template.
    pub coupons: Vec<Arc<str>>,
}

/// How a price list's price is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ListKind {
    /// Used when lower than the price so far (a sale, a member price).
    Sale,
    /// Used as it is, higher or lower; the override of the highest priority wins.
    Override,
}

/// A price of a SKU on a list, by quantity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListPrice {
    /// The SKU.
    pub sku: SkuId,
    /// Unit prices from a quantity on, by ascending quantity; the first starts at 1.
    pub tiers: Vec<(u32, Money)>,
}

/// When a list applies.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Applies {
    /// Only for members of one of these levels (empty: any).
    #[serde(default)]
    pub levels: Vec<String>,
    /// Only for members with this tag.
    #[serde(default)]
    pub tag: Option<String>,
    /// Only in one of these channels (empty: any).
    #[serde(default)]
    pub channels: Vec<String>,
    /// Only in this window.
    #[serde(default)]
    pub window: Window,
}

/// A price list in one currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceList {
    /// Stable id, named in quotes.
    pub id: Arc<str>,
    /// The name shown.
    pub name: Arc<str>,
    /// The currency of its prices.
    pub currency: Currency,
    /// Sale or override.
    pub kind: ListKind,
    /// Higher first among lists of a kind.
    pub priority: i32,
    /// When it applies.
    #[serde(default)]
    pub applies: Applies,
    /// Its prices.
    pub prices: Vec<ListPrice>,
}

/// What a promotion reduces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "on", rename_all = "snake_case")]
pub enum Target {
    /// Every item.
    Order,
    /// Items of these SKUs.
    Skus {
        /// The SKUs.
        skus: Vec<SkuId>,
    },
    /// Items of goods in one of these categories.
    Categories {
        /// The categories.
        categories: Vec<String>,
    },
    /// Items of these kinds.
    Kinds {
        /// The kinds.
        kinds: Vec<KindTag>,
    },
}

/// Something a member bought before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "of", rename_all = "snake_case")]
pub enum Purchase {
    /// Goods of a category.
    Category {
        /// The category.
        category: String,
    },
    /// A SKU.
    Sku {
        /// The SKU.
        sku: SkuId,
    },
}

/// A condition a promotion needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "if", rename_all = "snake_case")]
pub enum Condition {
    /// The member is of one of these levels.
    Level {
        /// The levels.
        levels: Vec<String>,
    },
    /// The member has this tag.
    Tag {
        /// The tag.
        tag: String,
    },
    /// The order comes through one of these channels.
    Channel {
        /// The channels.
        channels: Vec<String>,
    },
    /// The member has no paid order before.
    FirstOrder,
    /// The member registered at most this many days ago.
    RegisteredWithin {
        /// Days.
        days: u32,
    },
    /// The member bought this before.
    HasBought {
        /// What.
        purchase: Purchase,
    },
    /// The member never bought this (a trial price).
    NeverBought {
        /// What.
        purchase: Purchase,
    },
    /// The member holds this plan and it ends within this many days (a renewal price).
    MembershipEndingWithin {
        /// The plan.
        plan: String,
        /// Days.
        days: u32,
    },
    /// The targeted items sum to at least this (a coupon's minimum spend).
    MinSpend {
        /// The minimum.
        amount: Money,
    },
}

impl Condition {
    /// A stable name, for the "why not" of a quote.
    pub fn name(&self) -> &'static str {
        match self {
            Condition::Level { .. } => "level",
            Condition::Tag { .. } => "tag",
            Condition::Channel { .. } => "channel",
            Condition::FirstOrder => "first_order",
            Condition::RegisteredWithin { .. } => "registered_within",
            Condition::HasBought { .. } => "has_bought",
            Condition::NeverBought { .. } => "never_bought",
            Condition::MembershipEndingWithin { .. } => "membership_ending",
            Condition::MinSpend { .. } => "min_spend",
        }
    }

    /// Whether the context meets it (`MinSpend` is checked against the targeted items).
    pub(crate) fn holds(&self, ctx: &PricingContext) -> bool {
        let member = ctx.member.as_ref();
        let bought = |p: &Purchase| {
            member.is_some_and(|m| match p {
                Purchase::Category { category } => m.bought_categories.contains(category),
                Purchase::Sku { sku } => m.bought_skus.contains(sku),
            })
        };
        match self {
            Condition::Level { levels } => member
                .and_then(|m| m.level.as_ref())
                .is_some_and(|l| levels.contains(l)),
            Condition::Tag { tag } => member.is_some_and(|m| m.tags.contains(tag)),
            Condition::Channel { channels } => {
                ctx.channel.as_ref().is_some_and(|c| channels.contains(c))
            }
            Condition::FirstOrder => member.is_some_and(|m| m.orders_before == 0),
            Condition::RegisteredWithin { days } => member
                .and_then(|m| m.registered_at)
                .is_some_and(|at| ctx.now - at <= Duration::days(i64::from(*days))),
            Condition::HasBought { purchase } => bought(purchase),
            Condition::NeverBought { purchase } => member.is_some() && !bought(purchase),
            Condition::MembershipEndingWithin { plan, days } => member.is_some_and(|m| {
                m.memberships.iter().any(|(p, ends)| {
                    p == plan
                        && *ends > ctx.now
                        && *ends - ctx.now <= Duration::days(i64::from(*days))
                })
            }),
            Condition::MinSpend { .. } => true,
        }
    }
}

/// What a promotion takes off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Effect {
    /// A fixed amount off the targeted items.
    AmountOff {
        /// The amount.
        amount: Money,
    },
    /// A percentage off the targeted items, at most `cap` ("10% up to 50").
    PercentOff {
        /// Basis points (1000 = 10%), 1 to [`FULL_PERCENT_BPS`].
        bps: u32,
        /// The most it takes off.
        #[serde(default)]
        cap: Option<Money>,
    },
    /// Spend at least a tier's amount on the targeted items, get its amount off (the highest
    /// tier reached).
    Threshold {
        /// (spend, off), by ascending spend.
        tiers: Vec<(Money, Money)>,
    },
    /// For every `buy` targeted units, `free` more of the cheapest are free, at most
    /// `max_free` in all.
    BuyGetFree {
        /// Units bought per group.
        buy: u32,
        /// Units free per group.
        free: u32,
        /// The most free units.
        #[serde(default)]
        max_free: Option<u32>,
    },
    /// Every `quantity` targeted units (the dearest first) cost `price` together.
    SetPrice {
        /// Units in a set.
        quantity: u32,
        /// The set's price.
        price: Money,
    },
}

/// Whether a promotion combines with others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stacking {
    /// Applies only alone: first in priority among those that apply, or not at all.
    Exclusive,
    /// Applies after those of higher priority, unless an exclusive one applied.
    Stackable,
}

/// A promotion, automatic or by code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promotion {
    /// Stable id, named in quotes.
    pub id: Arc<str>,
    /// The name shown.
    pub name: Arc<str>,
    /// The code that applies it; `None`: automatic (unless a coupon template).
    #[serde(default)]
    pub code: Option<String>,
    /// A coupon template: it applies only through a coupon issued to the buyer
    /// ([`Cart::coupons`]), never automatically nor by a shared code.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub coupon: bool,
    /// Higher first.
    pub priority: i32,
    /// Exclusive or stackable.
    pub stacking: Stacking,
    /// What it reduces.
    pub target: Target,
    /// What it needs, all of them.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// What it takes off.
    pub effect: Effect,
    /// When it is on.
    #[serde(default)]
    pub window: Window,
    /// How many times it may be used: the checkout takes one use with each order it applies
    /// to, in the order's write, and gives it back when the order ends unpaid.
    #[serde(default)]
    pub budget: Option<Budget>,
}

/// How many times a promotion may be used; the shop's store counts the uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Budget {
    /// Uses by every member together (a one-use coupon: 1).
    #[serde(default)]
    pub total: Option<u32>,
    /// Uses by one member.
    #[serde(default)]
    pub per_member: Option<u32>,
    /// The most it takes off in all orders together, in the rules' currency: an order whose
    /// discount from it would pass what is left is priced again without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discount: Option<Money>,
}

/// A shop's pricing rules in one currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rules {
    /// The currency of every list and promotion.
    pub currency: Currency,
    /// The price lists.
    #[serde(default)]
    pub lists: Vec<PriceList>,
    /// The promotions.
    #[serde(default)]
    pub promotions: Vec<Promotion>,
    /// How percentages round to the minor unit (half to even by default).
    #[serde(default = "half_even")]
    pub rounding: Rounding,
}

fn half_even() -> Rounding {
    Rounding::HalfEven
}

impl Rules {
    /// No lists, no promotions: every item at its base price.
    pub fn none(currency: Currency) -> Rules {
        Rules {
            currency,
            lists: Vec::new(),
            promotions: Vec::new(),
            rounding: Rounding::HalfEven,
        }
    }

    /// Rules from their JSON form (the serde form of [`Rules`]), checked as
    /// [`validated`](Rules::validated) checks them.
    ///
    /// # Errors
    /// [`PricingError::InvalidFile`] with the line and column of what does not parse;
    /// [`PricingError::InvalidRule`].
    pub fn from_json(text: &str) -> Result<ValidRules, PricingError> {
        let rules: Rules = serde_json::from_str(text).map_err(|e| PricingError::InvalidFile {
            line: e.line(),
            column: e.column(),
            reason: e.to_string(),
        })?;
        rules.validated()
    }

    /// Rules from their TOML form (the serde form of [`Rules`]), checked as
    /// [`validated`](Rules::validated) checks them.
    ///
    /// # Errors
    /// [`PricingError::InvalidFile`] with the line and column of what does not parse;
    /// [`PricingError::InvalidRule`].
    pub fn from_toml(text: &str) -> Result<ValidRules, PricingError> {
        let rules: Rules = toml::from_str(text).map_err(|e| {
            let (line, column) = e
                .span()
                .map(|span| line_column(text, span.start))
                .unwrap_or((0, 0));
            PricingError::InvalidFile {
                line,
                column,
                reason: e.message().to_owned(),
            }
        })?;
        rules.validated()
    }

    /// Checks every list and promotion once, so that quotes need not: the rules a quote
    /// takes. The error names the rule and the field.
    ///
    /// # Errors
    /// [`PricingError::InvalidRule`].
    pub fn validated(self) -> Result<ValidRules, PricingError> {
        self.validate()?;
        Ok(ValidRules(self))
    }

    /// Checks every list and promotion; the error names the rule and the field.
    ///
    /// # Errors
    /// [`PricingError::InvalidRule`].
    pub fn validate(&self) -> Result<(), PricingError> {
        let mut ids = BTreeSet::new();
        for list in &self.lists {
            let bad = |field: &str, why: &str| invalid(&list.id, field, why);
            if list.id.trim().is_empty() || !ids.insert(format!("list:{}", list.id)) {
                return Err(bad("id", "must be non-empty and unique"));
            }
            if list.currency != self.currency {
                return Err(bad("currency", "must be the rules' currency"));
            }
            for price in &list.prices {
                let field = format!("prices[{}].tiers", price.sku);
                if price.tiers.first().is_none_or(|t| t.0 != 1) {
                    return Err(bad(&field, "must start at quantity 1"));
                }
                if price.tiers.windows(2).any(|w| w[0].0 >= w[1].0) {
                    return Err(bad(&field, "quantities must ascend"));
                }
                if price
                    .tiers
                    .iter()
                    .any(|(_, m)| m.currency() != self.currency || m.is_negative())
                {
                    return Err(bad(
                        &field,
                        "prices must be in the currency and not negative",
                    ));
                }
            }
        }
        for p in &self.promotions {
            let bad = |field: &str, why: &str| invalid(&p.id, field, why);
            if p.id.trim().is_empty() || !ids.insert(format!("promotion:{}", p.id)) {
                return Err(bad("id", "must be non-empty and unique"));
            }
            if p.code.as_ref().is_some_and(|c| c.trim().is_empty()) {
                return Err(bad("code", "must not be blank"));
            }
            if p.coupon && p.code.is_some() {
                return Err(bad("code", "a coupon template has no shared code"));
            }
            let money_ok = |m: &Money| m.currency() == self.currency && !m.is_negative();
            match &p.effect {
                Effect::AmountOff { amount } if !money_ok(amount) || amount.is_zero() => {
                    return Err(bad("effect.amount", "must be positive, in the currency"));
                }
                Effect::PercentOff { bps, cap } => {
                    if *bps == 0 || *bps > FULL_PERCENT_BPS {
                        return Err(bad("effect.bps", "must be 1 to 10000"));
                    }
                    if cap.as_ref().is_some_and(|c| !money_ok(c)) {
                        return Err(bad("effect.cap", "must be in the currency, not negative"));
                    }
                }
                Effect::Threshold { tiers } => {
                    if tiers.is_empty() {
                        return Err(bad("effect.tiers", "must not be empty"));
                    }
                    if tiers.iter().any(|(s, o)| !money_ok(s) || !money_ok(o)) {
                        return Err(bad("effect.tiers", "must be in the currency"));
                    }
                    if tiers.windows(2).any(|w| w[0].0.minor() >= w[1].0.minor()) {
                        return Err(bad("effect.tiers", "spends must ascend"));
                    }
                }
                Effect::BuyGetFree { buy, free, .. } if *buy == 0 || *free == 0 => {
                    return Err(bad("effect", "buy and free must be at least 1"));
                }
                Effect::SetPrice { quantity, price } if *quantity == 0 || !money_ok(price) => {
                    return Err(bad("effect", "a set has units and a price in the currency"));
                }
                _ => {}
            }
            if let Some(b) = p.budget {
                if b.total == Some(0) || b.per_member == Some(0) || b == Budget::default() {
                    return Err(bad("budget", "names at least one limit, each at least 1"));
                }
                if b.discount
                    .as_ref()
                    .is_some_and(|d| !money_ok(d) || d.is_zero())
                {
                    return Err(bad("budget.discount", "must be positive, in the currency"));
                }
            }
            for c in &p.conditions {
                if let Condition::MinSpend { amount } = c {
                    if !money_ok(amount) {
                        return Err(bad("conditions.min_spend", "must be in the currency"));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Rules that passed [`Rules::validate`]: what [`quote`](crate::quote) takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidRules(Rules);

impl ValidRules {
    /// The rules.
    pub fn rules(&self) -> &Rules {
        &self.0
    }

    /// The rules back, to change them (and validate them again).
    pub fn into_rules(self) -> Rules {
        self.0
    }
}

/// The 1-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(before.chars().count(), |nl| {
        before[nl + 1..].chars().count()
    }) + 1;
    (line, column)
}

fn invalid(rule: &str, field: &str, why: &str) -> PricingError {
    PricingError::InvalidRule {
        rule: rule.to_owned(),
        field: field.to_owned(),
        reason: why.to_owned(),
    }
}
