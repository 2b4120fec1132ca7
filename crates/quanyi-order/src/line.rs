//! Order lines: their fulfilment states, supplier attempts, the terms they were sold with and
//! a benefit pack's terms.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use quanyi_core::{CardId, GoodsId, Money, RequestId, SkuId, SupplierId};
use quanyi_goods::{KindTag, PurchaseCheck, SaleTerms};
use serde::{Deserialize, Serialize};

use crate::{Error, PriceSource, Result};

/// Where one line is in its fulfilment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineStatus {
    /// Not delivered yet.
    Pending,
    /// Delivered in full.
    Delivered,
    /// Could not be delivered; owed a refund.
    Failed,
    /// Its amount was refunded.
    Refunded,
    /// Set aside for an operator (its suppliers did not answer in time): the order keeps
    /// fulfilling until the operator decides it delivered or failed
    /// ([`Order::resolve_held_line`]).
    Held,
}

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    /// Line number, 1-based.
    pub no: u16,
    /// The SKU bought.
    pub sku: SkuId,
    /// The good the SKU belongs to.
    pub goods: GoodsId,
    /// The kind of goods.
    pub kind: KindTag,
    /// The title at the time of purchase.
    pub title: String,
    /// Units bought.
    pub quantity: u32,
    /// Price of one unit.
    pub unit_price: Money,
    /// `unit_price * quantity`.
    pub amount: Money,
    /// The normalised top-up account.
    pub account: Option<String>,
    /// Fulfilment state.
    pub status: LineStatus,
    /// Units delivered.
    pub delivered: u32,
    /// Vault cards committed to this line (ids only).
    pub cards: Vec<CardId>,
    /// Calls made to suppliers for this line, oldest first.
    #[serde(default)]
    pub attempts: Vec<LineAttempt>,
    /// What the line is delivered as, as it was sold: fulfilment follows these terms, never
    /// the goods as they are now.
    pub terms: SaleTerms,
    /// The benefit pack this line is a component of, as it was sold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pack: Option<PackTerms>,
    /// Why the line has its price (written only when it is not the list price).
    #[serde(default, skip_serializing_if = "PriceSource::is_list_price")]
    pub price_source: PriceSource,
}

/// What became of a call to a supplier for a line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// Accepted; it finishes by callback or by query.
    Pending,
    /// Done.
    Succeeded {
        /// The supplier's receipt.
        receipt: String,
    },
    /// The supplier certainly did not and will not do it: another route may be tried.
    Definite {
        /// Why.
        reason: String,
    },
    /// Not known (a timeout after sending): the same supplier must be asked before any other.
    Unknown {
        /// Why.
        reason: String,
    },
    /// The supplier answered success, but what it delivered was refused (card keys the shop
    /// already holds, which would be sold twice): the route failed for this line, as a definite
    /// failure would, and the request is one to reconcile with the supplier.
    Rejected {
        /// Why.
        reason: String,
    },
}

impl AttemptOutcome {
    /// A stable name: pending, succeeded, definite, unknown or rejected.
    pub fn as_str(&self) -> &'static str {
        match self {
            AttemptOutcome::Pending => "pending",
            AttemptOutcome::Succeeded { .. } => "succeeded",
            AttemptOutcome::Definite { .. } => "definite",
            AttemptOutcome::Unknown { .. } => "unknown",
            AttemptOutcome::Rejected { .. } => "rejected",
        }
    }
}

/// One supplier call for a line, under our request id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineAttempt {
    /// The supplier.
    pub supplier: SupplierId,
    /// Our request id (the supplier's idempotency key).
    pub request: RequestId,
    /// What became of it.
    pub outcome: AttemptOutcome,
    /// When the outcome was learned.
    pub at: DateTime<Utc>,
}

/// The data a line is placed from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewLine {
    /// The SKU bought.
    pub sku: SkuId,
    /// The good the SKU belongs to.
    pub goods: GoodsId,
    /// The kind of goods.
    pub kind: KindTag,
    /// The title to show.
    pub title: String,
    /// Units bought.
    pub quantity: u32,
    /// Price of one unit.
    pub unit_price: Money,
    /// The normalised top-up account.
    pub account: Option<String>,
    /// The line's share of a bundle's price, when the line is a component of a bundle; `None`
    /// for `unit_price * quantity`.
    pub allocated: Option<Money>,
    /// What the line is delivered as.
    pub terms: SaleTerms,
    /// The benefit pack this line is a component of.
    pub pack: Option<PackTerms>,
    /// Why the line has its price.
    #[serde(default)]
    pub price_source: PriceSource,
}

impl NewLine {
    /// A line from a checked purchase of a SKU of `goods`.
    pub fn from_check(goods: GoodsId, check: &PurchaseCheck) -> NewLine {
        NewLine {
            sku: check.sku,
            goods,
            kind: check.kind,
            title: check.title.clone(),
            quantity: check.quantity,
            unit_price: check.unit_price,
            account: check.account.clone(),
            allocated: None,
            terms: check.terms.clone(),
            pack: None,
            price_source: PriceSource::ListPrice,
        }
    }
}

/// A benefit pack as one of its component lines keeps it: which pack, how many were bought
/// together, and this component's part of one pack. The line's amount is its share of the
/// pack's price; the shares of a pack's lines sum to [`PackTerms::price`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackTerms {
    /// The pack's SKU: per-member limits of the pack count its packs, not its components.
    pub sku: SkuId,
    /// The pack's goods.
    pub goods: GoodsId,
    /// The pack's place in the order, the same on each of its lines and 1-based: two
    /// purchases of one pack in an order are two places.
    pub place: u16,
    /// Packs bought.
    pub packs: u32,
    /// Units of this component in one pack.
    pub per_pack: u32,
    /// What the packs bought cost together.
    pub price: Money,
}

/// Checks the packs of placed lines: each pack's lines follow one another, agree on the pack
/// (SKU, goods, packs, price, currency) and their amounts sum to its price.
pub(crate) fn check_packs(lines: &[OrderLine]) -> Result<()> {
    let mut seen: HashSet<u16> = HashSet::new();
    let mut i = 0;
    while let Some(first) = lines.get(i) {
        let Some(pack) = &first.pack else {
            i += 1;
            continue;
        };
        let bad = |line: u16| Error::InvalidLine {
            line,
            reason: "a pack's lines follow one another, agree on the pack and sum to its price",
        };
        if !seen.insert(pack.place) || pack.price.currency() != first.amount.currency() {
            return Err(bad(first.no));
        }
        let mut sum = Money::zero(pack.price.currency());
        let mut last = first.no;
        while let Some((l, p)) = lines
            .get(i)
            .and_then(|l| l.pack.as_ref().map(|p| (l, p)))
            .filter(|(_, p)| p.place == pack.place)
        {
            if (p.sku, p.goods, p.packs, p.price) != (pack.sku, pack.goods, pack.packs, pack.price)
            {
                return Err(bad(l.no));
            }
            sum = sum.checked_add(l.amount)?;
            last = l.no;
            i += 1;
        }
        if sum != pack.price {
            return Err(bad(last));
        }
    }
    Ok(())
}
