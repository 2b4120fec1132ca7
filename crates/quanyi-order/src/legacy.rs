//! Orders stored before lines kept their terms: the terms are taken from the goods, once, by
//! the stores' migrations.

use std::collections::{BTreeMap, HashSet};

use quanyi_core::{Money, SkuId};
use quanyi_goods::{Goods, GoodsKind};
use serde_json::Value;

use crate::{Order, PackTerms};

/// Gives the lines of an order document stored before line terms their terms from the goods
/// as they are now (`goods_by_sku` finds the goods of a SKU): each line its SKU's
/// [`SaleTerms`](quanyi_goods::SaleTerms), each component of a benefit pack its
/// [`PackTerms`]. A pack's components bought together follow one another; a component that
/// repeats starts the next purchase of the pack. Packs are the line's quantity over the
/// component's units per pack when that divides, else one pack of the line's quantity.
///
/// `Ok(None)` when every line has its terms already (nothing to do).
///
/// # Errors
/// A reason, without the document's content, when the document is not an order or a line's
/// goods are not found.
pub fn complete_terms(
    doc: &str,
    goods_by_sku: &mut dyn FnMut(SkuId) -> Option<Goods>,
) -> Result<Option<Order>, String> {
    let mut value: Value =
        serde_json::from_str(doc).map_err(|e| format!("not an order document: {e}"))?;
    let Some(lines) = value.get_mut("lines").and_then(Value::as_array_mut) else {
        return Err("an order document without lines".into());
    };
    if lines.iter().all(|l| l.get("terms").is_some()) {
        return Ok(None);
    }
    let field = |line: &Value, name: &str| -> Result<Value, String> {
        line.get(name)
            .cloned()
            .ok_or_else(|| format!("a line without {name}"))
    };
    // Per line: its pack (SKU, place, units per pack, packs), and each place's price.
    let mut packs: Vec<Option<(SkuId, u16, u32, u32)>> = Vec::with_capacity(lines.len());
    let mut prices: BTreeMap<u16, Money> = BTreeMap::new();
    let mut run: Option<(SkuId, u16, HashSet<SkuId>)> = None;
    let mut places = 0u16;
    for line in lines.iter_mut() {
        let sku: SkuId = serde_json::from_value(field(line, "sku")?).map_err(|e| e.to_string())?;
        let quantity: u32 =
            serde_json::from_value(field(line, "quantity")?).map_err(|e| e.to_string())?;
        let amount: Money =
            serde_json::from_value(field(line, "amount")?).map_err(|e| e.to_string())?;
        let goods = goods_by_sku(sku).ok_or_else(|| format!("no goods hold SKU {sku}"))?;
        let terms = goods
            .sale_terms(sku)
            .ok_or_else(|| format!("no goods hold SKU {sku}"))?;
        let bundle = match line.as_object_mut().and_then(|l| l.remove("bundle")) {
            Some(Value::Null) | None => None,
            Some(b) => Some(serde_json::from_value::<SkuId>(b).map_err(|e| e.to_string())?),
        };
        if let Some(object) = line.as_object_mut() {
            object.insert(
                "terms".into(),
                serde_json::to_value(terms).map_err(|e| e.to_string())?,
            );
        }
        let Some(bundle) = bundle else {
            run = None;
            packs.push(None);
            continue;
        };
        let same_purchase = run
            .as_ref()
            .is_some_and(|(pack, _, skus)| *pack == bundle && !skus.contains(&sku));
        let place = match &mut run {
            Some((_, place, skus)) if same_purchase => {
                skus.insert(sku);
                *place
            }
            _ => {
                places = places.saturating_add(1);
                run = Some((bundle, places, HashSet::from([sku])));
                places
            }
        };
        let per_pack = goods_by_sku(bundle)
            .and_then(|pack| match pack.kind() {
                GoodsKind::BenefitPack { components } => {
                    components.iter().find(|c| c.sku == sku).map(|c| c.quantity)
                }
                _ => None,
            })
            .filter(|per| *per > 0 && quantity % per == 0)
            .unwrap_or(quantity);
        packs.push(Some((bundle, place, per_pack, quantity / per_pack)));
        let price = match prices.get(&place) {
            Some(p) => p.checked_add(amount).map_err(|e| e.to_string())?,
            None => amount,
        };
        prices.insert(place, price);
    }
    for (line, pack) in lines.iter_mut().zip(packs) {
        let Some((sku, place, per_pack, count)) = pack else {
            continue;
        };
        let goods = goods_by_sku(sku).map_or_else(
            || line.get("goods").cloned().unwrap_or(Value::Null),
            |g| Value::String(g.id().to_string()),
        );
        let terms = PackTerms {
            sku,
            goods: serde_json::from_value(goods).map_err(|e| e.to_string())?,
            place,
            // Every place has its price: it was set with the place.
            price: prices
                .get(&place)
                .copied()
                .ok_or("a pack without a price")?,
            packs: count,
            per_pack,
        };
        if let Some(object) = line.as_object_mut() {
            object.insert(
                "pack".into(),
                serde_json::to_value(terms).map_err(|e| e.to_string())?,
            );
        }
    }
    serde_json::from_value(value)
        .map(Some)
        .map_err(|e| format!("not an order document: {e}"))
}
