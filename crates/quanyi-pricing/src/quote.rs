//! The engine: a cart, a context and the rules to an explained quote.

use std::sync::Arc;

use quanyi_core::{Decimal, Money, SkuId};
use serde::{Deserialize, Serialize};

use crate::rules::{
    Cart, CartItem, Condition, Effect, ListKind, PriceList, PricingContext, Promotion, Rules,
    Stacking, Target, ValidRules,
};
use crate::{FULL_PERCENT_BPS, PricingError};

/// Where a line's unit price came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "from", rename_all = "snake_case")]
pub enum PriceFrom {
    /// The SKU's own price.
    Base,
    /// A price list.
    List {
        /// The list's id.
        id: Arc<str>,
        /// Its name.
        name: Arc<str>,
    },
}

/// What one promotion took off one line (its name is in [`Quote::applied`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Adjustment {
    /// The promotion's id.
    pub promotion: Arc<str>,
    /// What it took off this line.
    pub amount: Money,
}

/// One line of a quote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotedLine {
    /// The SKU.
    pub sku: SkuId,
    /// Units.
    pub quantity: u32,
    /// The SKU's own unit price.
    pub base_price: Money,
    /// The unit price after price lists.
    pub unit_price: Money,
    /// Which list set it.
    pub price_from: PriceFrom,
    /// `unit_price * quantity`.
    pub list_amount: Money,
    /// What promotions took off, in the order they applied.
    pub adjustments: Vec<Adjustment>,
    /// What the line costs: `list_amount` less its adjustments, never below zero.
    pub amount: Money,
}

/// A promotion that applied and what it took off in all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The promotion's id.
    pub promotion: Arc<str>,
    /// Its name.
    pub name: Arc<str>,
    /// What it took off.
    pub amount: Money,
}

/// Why a promotion did not apply, for the storefront to show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "why", rename_all = "snake_case")]
pub enum MissReason {
    /// A condition is not met (its name: `level`, `first_order`...).
    Condition {
        /// The condition.
        condition: String,
    },
    /// The targeted items sum to less than needed: spend `more` to get `off` off.
    SpendMore {
        /// What is missing.
        more: Money,
        /// What it would take off, when known.
        off: Option<Money>,
    },
    /// Too few targeted units: add `units` more.
    BuyMore {
        /// Units missing.
        units: u32,
    },
    /// No item of the cart is targeted.
    NoItems,
    /// An exclusive promotion applied, or this exclusive one came after others.
    Excluded {
        /// The promotion that kept it out.
        by: Arc<str>,
    },
    /// It would take nothing off (the lines are already free).
    NothingOff,
    /// Its budget has no use left.
    UsedUp,
}

/// A promotion that did not apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Missed {
    /// The promotion's id.
    pub promotion: Arc<str>,
    /// Its name.
    pub name: Arc<str>,
    /// Why.
    pub reason: MissReason,
}

/// An explained quote. Line amounts sum to `total`; `subtotal - discount = total`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quote {
    /// The lines, in the cart's order.
    pub lines: Vec<QuotedLine>,
    /// The lines' amounts after price lists.
    pub subtotal: Money,
    /// What promotions took off.
    pub discount: Money,
    /// What the buyer pays.
    pub total: Money,
    /// The promotions that applied, in the order they applied.
    pub applied: Vec<Applied>,
    /// The active promotions that did not apply (codes only when entered).
    pub missed: Vec<Missed>,
}

/// Quotes a cart. Deterministic: the same cart, context and rules give the same quote.
///
/// # Errors
/// [`PricingError::InvalidCart`] for an empty cart, a zero quantity or a negative price;
/// [`PricingError::CurrencyMismatch`]; [`PricingError::Overflow`].
pub fn quote(cart: &Cart, ctx: &PricingContext, rules: &ValidRules) -> Result<Quote, PricingError> {
    let rules = rules.rules();
    check_cart(cart, rules)?;
    let currency = cart.currency;
    let mut lines = Vec::with_capacity(cart.items.len());
    for item in &cart.items {
        let (unit_price, price_from) = unit_price(item, ctx, &rules.lists);
        let list_amount = unit_price.checked_mul(i64::from(item.quantity))?;
        lines.push(QuotedLine {
            sku: item.sku,
            quantity: item.quantity,
            base_price: item.base_price,
            unit_price,
            price_from,
            list_amount,
            adjustments: Vec::new(),
            amount: list_amount,
        });
    }
    let mut applied: Vec<Applied> = Vec::new();
    let mut missed = Vec::new();
    let mut exclusive: Option<Arc<str>> = None;
    // Reused by every promotion: the lines it targets and what is left of each.
    let (mut targeted, mut room) = (Vec::new(), Vec::new());
    for promotion in ordered(&rules.promotions, cart, ctx) {
        let miss = |reason| Missed {
            promotion: promotion.id.clone(),
            name: promotion.name.clone(),
            reason,
        };
        targeted.clear();
        targeted
            .extend((0..cart.items.len()).filter(|i| targets(&promotion.target, &cart.items[*i])));
        if targeted.is_empty() {
            missed.push(miss(MissReason::NoItems));
            continue;
        }
        if ctx.used_up.contains(&promotion.id) {
            missed.push(miss(MissReason::UsedUp));
            continue;
        }
        if let Some(failed) = promotion.conditions.iter().find(|c| !c.holds(ctx)) {
            missed.push(miss(MissReason::Condition {
                condition: failed.name().to_owned(),
            }));
            continue;
        }
        if let Some(by) = exclusive.clone().or_else(|| {
            (promotion.stacking == Stacking::Exclusive)
                .then(|| applied.first().map(|a| a.promotion.clone()))
                .flatten()
        }) {
            missed.push(miss(MissReason::Excluded { by }));
            continue;
        }
        room.clear();
        room.extend(targeted.iter().map(|i| lines[*i].amount.minor()));
        let spend: i64 = room.iter().sum();
        if let Some(min) = promotion.conditions.iter().find_map(|c| match c {
            Condition::MinSpend { amount } if amount.minor() > spend => Some(*amount),
            _ => None,
        }) {
            missed.push(miss(MissReason::SpendMore {
                more: Money::from_minor(min.minor() - spend, currency),
                off: nominal(&promotion.effect),
            }));
            continue;
        }
        let wanted = match wanted(promotion, &targeted, &room, &lines, spend, rules) {
            Ok(w) => w,
            Err(Want::Missed(reason)) => {
                missed.push(miss(reason));
                continue;
            }
            Err(Want::Failed(e)) => return Err(e),
        };
        let taken = spread(&wanted, &room);
        let total: i64 = taken.iter().sum();
        if total == 0 {
            missed.push(miss(MissReason::NothingOff));
            continue;
        }
        for (k, i) in targeted.iter().enumerate() {
            if taken[k] == 0 {
                continue;
            }
            let off = Money::from_minor(taken[k], currency);
            let line = &mut lines[*i];
            line.amount = line.amount.checked_sub(off)?;
            line.adjustments.push(Adjustment {
                promotion: promotion.id.clone(),
                amount: off,
            });
        }
        applied.push(Applied {
            promotion: promotion.id.clone(),
            name: promotion.name.clone(),
            amount: Money::from_minor(total, currency),
        });
        if promotion.stacking == Stacking::Exclusive {
            exclusive = Some(promotion.id.clone());
        }
    }
    let subtotal = Money::sum(lines.iter().map(|l| l.list_amount), currency)?;
    let total = Money::sum(lines.iter().map(|l| l.amount), currency)?;
    Ok(Quote {
        discount: subtotal.checked_sub(total)?,
        lines,
        subtotal,
        total,
        applied,
        missed,
    })
}

fn check_cart(cart: &Cart, rules: &Rules) -> Result<(), PricingError> {
    if cart.items.is_empty() {
        return Err(PricingError::InvalidCart {
            reason: "a cart has at least one item".into(),
        });
    }
    if cart.currency != rules.currency {
        return Err(PricingError::CurrencyMismatch {
            expected: rules.currency.code().to_owned(),
            got: cart.currency.code().to_owned(),
        });
    }
    for item in &cart.items {
        if item.quantity == 0 {
            return Err(PricingError::InvalidCart {
                reason: format!("item {} has no units", item.sku),
            });
        }
        if item.base_price.currency() != cart.currency {
            return Err(PricingError::CurrencyMismatch {
                expected: cart.currency.code().to_owned(),
                got: item.base_price.currency().code().to_owned(),
            });
        }
        if item.base_price.is_negative() {
            return Err(PricingError::InvalidCart {
                reason: format!("item {} has a negative price", item.sku),
            });
        }
    }
    Ok(())
}

/// The unit price of an item after the lists that apply: the override of the highest
/// priority when there is one, otherwise the lowest of the base price and the sale prices
/// (ties to the higher priority, then the list id).
fn unit_price(item: &CartItem, ctx: &PricingContext, lists: &[PriceList]) -> (Money, PriceFrom) {
    let mut candidates: Vec<(&PriceList, Money)> = lists
        .iter()
        .filter(|l| list_applies(l, ctx))
        .filter_map(|l| {
            let price = l.prices.iter().find(|p| p.sku == item.sku)?;
            let tier = price
                .tiers
                .iter()
                .rev()
                .find(|(from, _)| *from <= item.quantity)?;
            Some((l, tier.1))
        })
        .collect();
    candidates.sort_by(|a, b| b.0.priority.cmp(&a.0.priority).then(a.0.id.cmp(&b.0.id)));
    let from = |l: &PriceList| PriceFrom::List {
        id: l.id.clone(),
        name: l.name.clone(),
    };
    if let Some((list, price)) = candidates
        .iter()
        .find(|(l, _)| l.kind == ListKind::Override)
    {
        return (*price, from(list));
    }
    let mut best = (item.base_price, PriceFrom::Base);
    for (list, price) in &candidates {
        if price.minor() < best.0.minor() {
            best = (*price, from(list));
        }
    }
    best
}

fn list_applies(list: &PriceList, ctx: &PricingContext) -> bool {
    let a = &list.applies;
    let member = ctx.member.as_ref();
    a.window.contains(ctx.now)
        && (a.levels.is_empty()
            || member
                .and_then(|m| m.level.as_ref())
                .is_some_and(|l| a.levels.contains(l)))
        && a.tag
            .as_ref()
            .is_none_or(|t| member.is_some_and(|m| m.tags.contains(t)))
        && (a.channels.is_empty() || ctx.channel.as_ref().is_some_and(|c| a.channels.contains(c)))
}

/// The promotions on now, automatic, entered by code or by an issued coupon, by priority (higher
/// first) then id.
fn ordered<'a>(
    promotions: &'a [Promotion],
    cart: &Cart,
    ctx: &PricingContext,
) -> Vec<&'a Promotion> {
    let entered = |code: &str| {
        cart.codes
            .iter()
            .any(|c| c.trim().eq_ignore_ascii_case(code.trim()))
    };
    let mut on: Vec<&Promotion> = promotions
        .iter()
        .filter(|p| p.window.contains(ctx.now))
        .filter(|p| {
            if p.coupon {
                cart.coupons.contains(&p.id)
            } else {
                p.code.as_deref().is_none_or(entered)
            }
        })
        .collect();
    on.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.id.cmp(&b.id)));
    on
}

fn targets(target: &Target, item: &CartItem) -> bool {
    match target {
        Target::Order => true,
        Target::Skus { skus } => skus.contains(&item.sku),
        Target::Categories { categories } => item.categories.iter().any(|c| categories.contains(c)),
        Target::Kinds { kinds } => kinds.contains(&item.kind),
    }
}

/// What a promotion names as its amount off, when it has one.
fn nominal(effect: &Effect) -> Option<Money> {
    match effect {
        Effect::AmountOff { amount } => Some(*amount),
        Effect::Threshold { tiers } => tiers.first().map(|t| t.1),
        _ => None,
    }
}

enum Want {
    Missed(MissReason),
    Failed(PricingError),
}

impl From<quanyi_core::MoneyError> for Want {
    fn from(e: quanyi_core::MoneyError) -> Self {
        Want::Failed(e.into())
    }
}

/// What a promotion would take off each targeted line, in minor units, before the lines'
/// room is applied.
fn wanted(
    promotion: &Promotion,
    targeted: &[usize],
    room: &[i64],
    lines: &[QuotedLine],
    spend: i64,
    rules: &Rules,
) -> Result<Vec<i64>, Want> {
    let currency = rules.currency;
    // An order-level amount is allocated to the lines by what is left of each (at most all
    // of it, so no line gets more than it has).
    let by_room = |amount: i64| -> Result<Vec<i64>, Want> { Ok(allocate(amount, room)) };
    match &promotion.effect {
        Effect::AmountOff { amount } => by_room(amount.minor()),
        Effect::PercentOff { bps, cap } => {
            let rate = Decimal::new(i64::from(*bps), 4);
            debug_assert!(*bps <= FULL_PERCENT_BPS);
            let mut off = Money::from_minor(spend, currency)
                .mul_rate(rate, rules.rounding)?
                .minor();
            if let Some(cap) = cap {
                off = off.min(cap.minor());
            }
            by_room(off)
        }
        Effect::Threshold { tiers } => {
            match tiers.iter().rev().find(|(min, _)| min.minor() <= spend) {
                Some((_, off)) => by_room(off.minor()),
                None => {
                    let (min, off) = tiers[0];
                    Err(Want::Missed(MissReason::SpendMore {
                        more: Money::from_minor(min.minor() - spend, currency),
                        off: Some(off),
                    }))
                }
            }
        }
        Effect::BuyGetFree {
            buy,
            free,
            max_free,
        } => {
            let units = units(targeted, lines, true);
            let group = u64::from(*buy) + u64::from(*free);
            let count = units.len() as u64;
            let mut free_units = (count / group) * u64::from(*free);
            if let Some(max) = max_free {
                free_units = free_units.min(u64::from(*max));
            }
            if free_units == 0 {
                return Err(Want::Missed(MissReason::BuyMore {
                    units: u32::try_from(group - count % group).unwrap_or(u32::MAX),
                }));
            }
            let mut out = vec![0i64; targeted.len()];
            for (k, price) in units
                .iter()
                .take(usize::try_from(free_units).unwrap_or(usize::MAX))
            {
                out[*k] += price;
            }
            Ok(out)
        }
        Effect::SetPrice { quantity, price } => {
            let units = units(targeted, lines, false);
            let size = usize::try_from(*quantity).unwrap_or(usize::MAX);
            if units.len() < size {
                return Err(Want::Missed(MissReason::BuyMore {
                    units: u32::try_from(size - units.len()).unwrap_or(u32::MAX),
                }));
            }
            let mut out = vec![0i64; targeted.len()];
            for set in units.chunks_exact(size) {
                let sum: i64 = set.iter().map(|(_, p)| p).sum();
                let off = sum - price.minor();
                if off <= 0 {
                    continue;
                }
                let weights: Vec<i64> = set.iter().map(|(_, p)| *p).collect();
                for ((k, _), part) in set.iter().zip(allocate(off, &weights)) {
                    out[*k] += part;
                }
            }
            Ok(out)
        }
    }
}

/// The targeted units, each as (its place in `targeted`, its unit price after lists), cheapest
/// first (`cheapest`) or dearest first; ties in cart order.
fn units(targeted: &[usize], lines: &[QuotedLine], cheapest: bool) -> Vec<(usize, i64)> {
    let mut units: Vec<(usize, i64)> = targeted
        .iter()
        .enumerate()
        .flat_map(|(k, i)| {
            let line = &lines[*i];
            std::iter::repeat_n((k, line.unit_price.minor()), line.quantity as usize)
        })
        .collect();
    units.sort_by(|a, b| {
        let by_price = if cheapest {
            a.1.cmp(&b.1)
        } else {
            b.1.cmp(&a.1)
        };
        by_price.then(a.0.cmp(&b.0))
    });
    units
}

/// What each line takes of what is wanted of it: at most its room; what a line cannot take
/// is spread over the lines with room left, by that room (largest remainder, ties to the
/// earlier line).
fn spread(wanted: &[i64], room: &[i64]) -> Vec<i64> {
    let mut taken: Vec<i64> = wanted
        .iter()
        .zip(room)
        .map(|(w, r)| (*w).clamp(0, (*r).max(0)))
        .collect();
    let excess: i64 = wanted
        .iter()
        .zip(&taken)
        .map(|(w, t)| (*w).max(0) - t)
        .sum();
    if excess <= 0 {
        return taken;
    }
    let left: Vec<i64> = room.iter().zip(&taken).map(|(r, t)| r - t).collect();
    for (t, p) in taken.iter_mut().zip(allocate(excess, &left)) {
        *t += p;
    }
    taken
}

/// Splits `amount` (in minor units) by non-negative `weights` (largest remainder, ties to the
/// earlier part), as `Money::allocate` does; an amount over the weights' sum is cut to it, so
/// no part exceeds its weight, and zero weights get nothing.
fn allocate(amount: i64, weights: &[i64]) -> Vec<i64> {
    let weight = |w: &i64| u128::try_from(*w).unwrap_or(0);
    let total: u128 = weights.iter().map(weight).sum();
    let amount = u128::try_from(amount).unwrap_or(0).min(total);
    if amount == 0 {
        return vec![0; weights.len()];
    }
    let mut handed = 0u128;
    let mut parts: Vec<i64> = weights
        .iter()
        .map(|w| {
            let share = amount * weight(w) / total;
            handed += share;
            i64::try_from(share).unwrap_or(i64::MAX)
        })
        .collect();
    let leftover = usize::try_from(amount - handed).unwrap_or(0);
    if leftover > 0 {
        let mut rest: Vec<(u128, usize)> = weights
            .iter()
            .enumerate()
            .map(|(i, w)| (amount * weight(w) % total, i))
            .collect();
        rest.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        for (_, i) in rest.iter().take(leftover) {
            parts[*i] += 1;
        }
    }
    parts
}
