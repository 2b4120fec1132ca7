//! What a SKU is sold as: its supplier routes, and the terms an order line keeps.

use quanyi_core::{Currency, Money, ProductCode, SkuId, SupplierId};
use serde::{Deserialize, Serialize};

use crate::{Error, Result, StockSource};

/// How a membership line is granted: the plan and the days one unit gives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipTerms {
    /// The host's plan name.
    pub plan: String,
    /// Days one unit grants.
    pub days: u32,
}

/// What a unit of a SKU is delivered as, fixed when it is sold: an order line keeps these
/// terms, and fulfilment follows them whatever the goods say later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaleTerms {
    /// Where the units come from.
    pub stock: StockSource,
    /// The membership a unit grants (membership goods).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub membership: Option<MembershipTerms>,
    /// Supplier products that fulfil it, in order of preference, with their costs at the time
    /// of sale (supplier-stocked SKUs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<SupplierRoute>,
}

/// The most supplier routes a SKU may have.
pub const MAX_ROUTES: usize = 10;

/// One supplier product that can fulfil a SKU, with what it costs the shop per unit. Plain data:
/// the engine turns it into a route plan of the supplier port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupplierRoute {
    /// The supplier's id, as the shop registered it.
    pub supplier: SupplierId,
    /// The supplier's product code.
    pub product: ProductCode,
    /// The cost of one unit.
    pub cost: Money,
}

impl SupplierRoute {
    /// A route to `supplier`'s `product` at `cost` per unit.
    pub fn new(supplier: SupplierId, product: ProductCode, cost: Money) -> Self {
        SupplierRoute {
            supplier,
            product,
            cost,
        }
    }
}

pub(crate) fn check_routes(
    sku: SkuId,
    stock: StockSource,
    currency: Currency,
    routes: &[SupplierRoute],
) -> Result<()> {
    let bad = |reason: String| Err(Error::InvalidRoute { sku, reason });
    if !routes.is_empty() && stock != StockSource::Supplier {
        return bad("routes need a supplier-stocked sku".into());
    }
    if routes.len() > MAX_ROUTES {
        return bad(format!("at most {MAX_ROUTES} routes"));
    }
    for (i, r) in routes.iter().enumerate() {
        if r.cost.currency() != currency || r.cost.is_negative() {
            return bad(format!(
                "route {}: cost must be a non-negative {currency}",
                i + 1
            ));
        }
        if routes[..i].iter().any(|o| o.supplier == r.supplier) {
            return bad(format!("route {}: supplier listed twice", i + 1));
        }
    }
    Ok(())
}
