//! The goods aggregate: a product with its SKUs.

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use quanyi_core::{Currency, GoodsId, Money, SkuId, TenantId};
use serde::{Deserialize, Serialize};

use crate::terms::check_routes;
use crate::{Error, GoodsKind, KindTag, MembershipTerms, Result, SaleTerms, SupplierRoute};

/// The longest title, in characters.
pub const MAX_TITLE_CHARS: usize = 200;
/// The longest SKU name, in characters.
pub const MAX_SKU_NAME_CHARS: usize = 100;
/// The most SKUs one good holds.
pub const MAX_SKUS: usize = 100;
/// The largest quantity one purchase may ask for.
pub const MAX_QUANTITY: u32 = 10_000;

/// Where the units of a SKU come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StockSource {
    /// A pool of stored codes in the vault (card keys, pooled links or reservation codes).
    VaultPool,
    /// Bought from an upstream supplier at fulfilment.
    Supplier,
    /// Generated or granted without a stock count.
    Unlimited,
}

impl StockSource {
    /// A stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            StockSource::VaultPool => "vault_pool",
            StockSource::Supplier => "supplier",
            StockSource::Unlimited => "unlimited",
        }
    }

    /// True when goods of `kind` may take their units from this source.
    pub fn fits(self, kind: KindTag) -> bool {
        use StockSource::{Supplier, Unlimited, VaultPool};
        match kind {
            KindTag::CardKey => matches!(self, VaultPool | Supplier),
            KindTag::DirectTopUp | KindTag::Membership | KindTag::BenefitPack => {
                matches!(self, Supplier | Unlimited)
            }
            KindTag::Link | KindTag::ReservationCode => true,
        }
    }
}

impl fmt::Display for StockSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a SKU is on sale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shelf {
    /// On sale.
    On,
    /// Not on sale.
    Off,
}

/// How many units one order or one member may buy; `None` is no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PurchaseLimits {
    /// The most units in one order.
    pub per_order: Option<u32>,
    /// The most units one member may hold across orders (counted by the engine). Orders
    /// never paid (expired, cancelled) do not count; refunded orders do, unless
    /// `release_on_refund` is set: a trial pack limited to one per member stays used once
    /// bought, even when its money is given back.
    pub per_member: Option<u32>,
    /// A refunded order gives its units back to the member's limit.
    #[serde(default)]
    pub release_on_refund: bool,
}

/// A priced, stocked unit of a good.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sku {
    /// Its id.
    pub id: SkuId,
    /// Its name, such as "30 days".
    pub name: String,
    /// The list price of one unit.
    pub price: Money,
    /// Where units come from.
    pub stock: StockSource,
    /// Purchase limits.
    pub limits: PurchaseLimits,
    /// On sale or not.
    pub shelf: Shelf,
    /// Supplier products that fulfil it, in order of preference (for supplier-stocked SKUs).
    #[serde(default)]
    pub routes: Vec<SupplierRoute>,
}

/// The data a new SKU is made from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkuDraft {
    /// Its id.
    pub id: SkuId,
    /// Its name.
    pub name: String,
    /// The list price of one unit.
    pub price: Money,
    /// Where units come from.
    pub stock: StockSource,
    /// Purchase limits.
    pub limits: PurchaseLimits,
    /// On sale or not.
    pub shelf: Shelf,
    /// Supplier products that fulfil it, in order of preference (for supplier-stocked SKUs).
    #[serde(default)]
    pub routes: Vec<SupplierRoute>,
}

impl SkuDraft {
    /// A draft with unlimited stock, on shelf and without limits.
    pub fn new(id: SkuId, name: impl Into<String>, price: Money) -> Self {
        SkuDraft {
            id,
            name: name.into(),
            price,
            stock: StockSource::Unlimited,
            limits: PurchaseLimits::default(),
            shelf: Shelf::On,
            routes: Vec::new(),
        }
    }

    /// Sets the supplier routes, in order of preference.
    #[must_use]
    pub fn with_routes(mut self, routes: Vec<SupplierRoute>) -> Self {
        self.routes = routes;
        self
    }

    /// Sets the stock source.
    #[must_use]
    pub fn with_stock(mut self, stock: StockSource) -> Self {
        self.stock = stock;
        self
    }

    /// Sets the purchase limits.
    #[must_use]
    pub fn with_limits(mut self, limits: PurchaseLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets the shelf state.
    #[must_use]
    pub fn with_shelf(mut self, shelf: Shelf) -> Self {
        self.shelf = shelf;
        self
    }
}

/// The data a new good is made from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GoodsDraft {
    /// The title shown to buyers.
    pub title: String,
    /// What is sold.
    pub kind: GoodsKind,
    /// Its SKUs.
    pub skus: Vec<SkuDraft>,
    /// The categories it belongs to (`video_membership`, `takeaway_voucher`), which price
    /// lists, promotions and conditions name: a kind alone cannot tell a video membership from
    /// a music one. At most [`MAX_CATEGORIES`], each 1 to [`MAX_CATEGORY_CHARS`] printable
    /// characters.
    pub categories: Vec<String>,
}

/// What [`Goods::check_purchase`] found: everything an order line needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurchaseCheck {
    /// The SKU bought.
    pub sku: SkuId,
    /// Units bought.
    pub quantity: u32,
    /// List price of one unit.
    pub unit_price: Money,
    /// `unit_price * quantity`.
    pub amount: Money,
    /// The normalised top-up account, for direct top-ups.
    pub account: Option<String>,
    /// The SKU's purchase limits; the engine still enforces the per-member one across orders.
    pub limits: PurchaseLimits,
    /// What the units are delivered as.
    pub terms: SaleTerms,
    /// The kind of goods.
    pub kind: KindTag,
    /// The good's title.
    pub title: String,
}

/// A good: a product page with its kind and SKUs. Every change goes through its methods and
/// bumps [`Goods::version`].
///
/// Copies share one body until one of them changes (copy on write), so reading goods from a
/// store that keeps them in memory does not copy titles and SKUs.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Goods(Arc<Body>);

/// What goods hold, shared by their copies.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Body {
    id: GoodsId,
    tenant: TenantId,
    title: String,
    kind: GoodsKind,
    skus: Vec<Sku>,
    /// Written only when there are any; goods stored before categories have none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    categories: Vec<String>,
    version: u64,
    created_at: DateTime<Utc>,
}

fn check_text(text: &str, max: usize) -> std::result::Result<(), &'static str> {
    if text.trim().is_empty() {
        Err("empty")
    } else if text.chars().count() > max {
        Err("too long")
    } else if text.chars().any(char::is_control) {
        Err("holds control characters")
    } else {
        Ok(())
    }
}

/// The most categories goods belong to.
pub const MAX_CATEGORIES: usize = 16;
/// The longest category, in characters.
pub const MAX_CATEGORY_CHARS: usize = 64;

/// Categories trimmed, checked and without repeats (in their first order).
fn checked_categories(categories: Vec<String>) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::with_capacity(categories.len());
    for c in categories {
        let c = c.trim().to_owned();
        check_text(&c, MAX_CATEGORY_CHARS).map_err(|reason| Error::InvalidCategory { reason })?;
        if !out.contains(&c) {
            out.push(c);
        }
    }
    if out.len() > MAX_CATEGORIES {
        return Err(Error::InvalidCategory { reason: "too many" });
    }
    Ok(out)
}

fn check_limits(sku: SkuId, limits: PurchaseLimits) -> Result<()> {
    if limits.per_order == Some(0) || limits.per_member == Some(0) {
        return Err(Error::InvalidLimit { sku });
    }
    Ok(())
}

impl fmt::Debug for Goods {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &*self.0;
        f.debug_struct("Goods")
            .field("id", &b.id)
            .field("tenant", &b.tenant)
            .field("title", &b.title)
            .field("kind", &b.kind)
            .field("skus", &b.skus)
            .field("version", &b.version)
            .field("created_at", &b.created_at)
            .finish()
    }
}

impl Goods {
    /// Creates a good at version 1 after checking the draft.
    ///
    /// ```
    /// use quanyi_core::{Currency, GoodsId, Money, SkuId, TenantId};
    /// use quanyi_goods::{Goods, GoodsDraft, GoodsKind, SkuDraft, StockSource};
    ///
    /// let now = quanyi_core::chrono::Utc::now();
    /// let sku: SkuId = "sku_0190c8f0e0e07c4c8a1b2c3d4e5f6a7b".parse()?;
    /// let draft = GoodsDraft {
    ///     title: "Video VIP month".to_owned(),
    ///     kind: GoodsKind::CardKey,
    ///     skus: vec![SkuDraft::new(sku, "1 month", Money::parse("15.00", Currency::CNY)?)
    ///         .with_stock(StockSource::VaultPool)],
    ///     categories: vec!["video_membership".to_owned()],
    /// };
    /// let id: GoodsId = "gds_0190c8f0e0e07c4c8a1b2c3d4e5f6a7b".parse()?;
    /// let goods = Goods::new(id, TenantId::default(), draft, now)?;
    /// assert_eq!(goods.version(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidTitle`] (1 to 200 characters), [`Error::InvalidSkuCount`],
    /// [`Error::DuplicateSku`], [`Error::InvalidSkuName`], [`Error::NegativePrice`],
    /// [`Error::CurrencyMismatch`] (all SKUs in one currency), [`Error::StockMismatch`],
    /// [`Error::InvalidLimit`], and the kind's own errors (see [`GoodsKind::check`]).
    pub fn new(
        id: GoodsId,
        tenant: TenantId,
        draft: GoodsDraft,
        now: DateTime<Utc>,
    ) -> Result<Goods> {
        let GoodsDraft {
            title,
            kind,
            skus,
            categories,
        } = draft;
        let categories = checked_categories(categories)?;
        let title = title.trim().to_owned();
        check_text(&title, MAX_TITLE_CHARS).map_err(|reason| Error::InvalidTitle { reason })?;
        kind.check()?;
        if skus.is_empty() || skus.len() > MAX_SKUS {
            return Err(Error::InvalidSkuCount { count: skus.len() });
        }
        let currency = skus[0].price.currency();
        let tag = kind.tag();
        let mut out: Vec<Sku> = Vec::with_capacity(skus.len());
        for d in skus {
            if out.iter().any(|s| s.id == d.id) {
                return Err(Error::DuplicateSku { sku: d.id });
            }
            let name = d.name.trim().to_owned();
            check_text(&name, MAX_SKU_NAME_CHARS)
                .map_err(|reason| Error::InvalidSkuName { sku: d.id, reason })?;
            check_price(d.id, d.price, currency)?;
            if !d.stock.fits(tag) {
                return Err(Error::StockMismatch {
                    kind: tag,
                    stock: d.stock,
                });
            }
            check_limits(d.id, d.limits)?;
            check_routes(d.id, d.stock, currency, &d.routes)?;
            if let GoodsKind::BenefitPack { components } = &kind {
                if components.iter().any(|c| c.sku == d.id) {
                    return Err(Error::InvalidBundle {
                        reason: format!("sku {} contains itself", d.id),
                    });
                }
            }
            out.push(Sku {
                id: d.id,
                name,
                price: d.price,
                stock: d.stock,
                limits: d.limits,
                shelf: d.shelf,
                routes: d.routes,
            });
        }
        Ok(Goods(Arc::new(Body {
            id,
            tenant,
            title,
            kind,
            skus: out,
            categories,
            version: 1,
            created_at: now,
        })))
    }

    /// The good's id.
    pub fn id(&self) -> GoodsId {
        self.0.id
    }

    /// The tenant it belongs to.
    pub fn tenant(&self) -> &TenantId {
        &self.0.tenant
    }

    /// The title shown to buyers.
    pub fn title(&self) -> &str {
        &self.0.title
    }

    /// What is sold.
    pub fn kind(&self) -> &GoodsKind {
        &self.0.kind
    }

    /// Its SKUs.
    pub fn skus(&self) -> &[Sku] {
        &self.0.skus
    }

    /// One SKU by id.
    pub fn sku(&self, id: SkuId) -> Option<&Sku> {
        self.0.skus.iter().find(|s| s.id == id)
    }

    /// The currency every SKU is priced in.
    pub fn currency(&self) -> Option<Currency> {
        self.0.skus.first().map(|s| s.price.currency())
    }

    /// Starts at 1 and grows by one per change (optimistic concurrency).
    pub fn version(&self) -> u64 {
        self.0.version
    }

    /// When it was created.
    pub fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }

    fn sku_index(&self, id: SkuId) -> Result<usize> {
        self.0
            .skus
            .iter()
            .position(|s| s.id == id)
            .ok_or(Error::UnknownSku { sku: id })
    }

    /// The body to change, copied first if another copy shares it.
    fn body_mut(&mut self) -> &mut Body {
        Arc::make_mut(&mut self.0)
    }

    fn bump(&mut self) {
        let body = self.body_mut();
        body.version = body.version.saturating_add(1);
    }

    /// The categories the goods belong to.
    pub fn categories(&self) -> &[String] {
        &self.0.categories
    }

    /// Sets the categories (from then on; orders placed keep what they were priced by).
    ///
    /// # Errors
    /// [`Error::InvalidCategory`] for an empty, too long or unprintable category, or more than
    /// [`MAX_CATEGORIES`]; nothing changes.
    pub fn set_categories(&mut self, categories: Vec<String>) -> Result<()> {
        let categories = checked_categories(categories)?;
        self.body_mut().categories = categories;
        self.bump();
        Ok(())
    }

    /// Puts a SKU on or off shelf.
    ///
    /// # Errors
    /// [`Error::UnknownSku`].
    pub fn set_shelf(&mut self, sku: SkuId, shelf: Shelf) -> Result<()> {
        let i = self.sku_index(sku)?;
        self.body_mut().skus[i].shelf = shelf;
        self.bump();
        Ok(())
    }

    /// Changes a SKU's supplier routes, in order of preference. Lines already sold keep the
    /// routes they were sold with.
    ///
    /// # Errors
    /// [`Error::UnknownSku`], [`Error::InvalidRoute`].
    pub fn set_routes(&mut self, sku: SkuId, routes: Vec<SupplierRoute>) -> Result<()> {
        let i = self.sku_index(sku)?;
        let s = &self.0.skus[i];
        check_routes(sku, s.stock, s.price.currency(), &routes)?;
        self.body_mut().skus[i].routes = routes;
        self.bump();
        Ok(())
    }

    /// Changes the kind's data (a membership's plan and days, a pack's components, a top-up's
    /// account rule) within the same kind. Lines already sold keep the terms they were sold
    /// with.
    ///
    /// # Errors
    /// [`Error::KindChanged`] for another kind; the kind's own errors (see
    /// [`GoodsKind::check`]); [`Error::InvalidBundle`] for a pack that would contain itself.
    pub fn set_kind(&mut self, kind: GoodsKind) -> Result<()> {
        let (from, to) = (self.0.kind.tag(), kind.tag());
        if from != to {
            return Err(Error::KindChanged { from, to });
        }
        kind.check()?;
        if let GoodsKind::BenefitPack { components } = &kind {
            if let Some(c) = components.iter().find(|c| self.sku(c.sku).is_some()) {
                return Err(Error::InvalidBundle {
                    reason: format!("sku {} contains itself", c.sku),
                });
            }
        }
        self.body_mut().kind = kind;
        self.bump();
        Ok(())
    }

    /// Changes a SKU's price; the currency stays the good's.
    ///
    /// # Errors
    /// [`Error::UnknownSku`], [`Error::NegativePrice`], [`Error::CurrencyMismatch`].
    pub fn set_price(&mut self, sku: SkuId, price: Money) -> Result<()> {
        let i = self.sku_index(sku)?;
        check_price(sku, price, self.0.skus[i].price.currency())?;
        self.body_mut().skus[i].price = price;
        self.bump();
        Ok(())
    }

    /// Changes a SKU's purchase limits.
    ///
    /// # Errors
    /// [`Error::UnknownSku`], [`Error::InvalidLimit`] for a limit of zero.
    pub fn set_limits(&mut self, sku: SkuId, limits: PurchaseLimits) -> Result<()> {
        let i = self.sku_index(sku)?;
        check_limits(sku, limits)?;
        self.body_mut().skus[i].limits = limits;
        self.bump();
        Ok(())
    }

    /// The terms a unit of `sku` is sold with now; `None` for a SKU the goods do not have.
    pub fn sale_terms(&self, sku: SkuId) -> Option<SaleTerms> {
        self.sku(sku).map(|s| self.terms_of(s))
    }

    fn terms_of(&self, s: &Sku) -> SaleTerms {
        SaleTerms {
            stock: s.stock,
            membership: match &self.0.kind {
                GoodsKind::Membership { plan, days } => Some(MembershipTerms {
                    plan: plan.clone(),
                    days: *days,
                }),
                _ => None,
            },
            routes: s.routes.clone(),
        }
    }

    /// Checks that `quantity` units of `sku` may be bought in one order, with `account` for
    /// direct top-ups (a benefit pack passes it on to its components unchecked). A blank account
    /// counts as none.
    ///
    /// # Errors
    /// [`Error::UnknownSku`], [`Error::OffShelf`], [`Error::InvalidQuantity`] (0 or above
    /// [`MAX_QUANTITY`]), [`Error::LimitExceeded`] (per order), [`Error::AccountRequired`],
    /// [`Error::InvalidAccount`], [`Error::UnexpectedAccount`], [`Error::Money`] on overflow.
    pub fn check_purchase(
        &self,
        sku: SkuId,
        quantity: u32,
        account: Option<&str>,
    ) -> Result<PurchaseCheck> {
        let s = self.sku(sku).ok_or(Error::UnknownSku { sku })?;
        if s.shelf == Shelf::Off {
            return Err(Error::OffShelf { sku });
        }
        if quantity == 0 || quantity > MAX_QUANTITY {
            return Err(Error::InvalidQuantity { quantity });
        }
        if let Some(limit) = s.limits.per_order {
            if quantity > limit {
                return Err(Error::LimitExceeded {
                    limit,
                    requested: quantity,
                });
            }
        }
        let account = account.filter(|a| !a.trim().is_empty());
        let account = match (self.0.kind.account_rule(), account) {
            (Some(rule), Some(a)) => Some(rule.validate(a)?),
            // A pack passes the account on to its top-up components, which check it.
            (None, Some(a)) if matches!(self.0.kind, GoodsKind::BenefitPack { .. }) => {
                Some(a.trim().to_owned())
            }
            (Some(rule), None) => return Err(Error::AccountRequired { rule: rule.name() }),
            (None, Some(_)) => {
                return Err(Error::UnexpectedAccount {
                    kind: self.0.kind.tag(),
                });
            }
            (None, None) => None,
        };
        let amount = s.price.checked_mul(i64::from(quantity))?;
        Ok(PurchaseCheck {
            sku,
            quantity,
            unit_price: s.price,
            amount,
            account,
            limits: s.limits,
            terms: self.terms_of(s),
            kind: self.0.kind.tag(),
            title: self.0.title.clone(),
        })
    }
}

fn check_price(sku: SkuId, price: Money, currency: Currency) -> Result<()> {
    if price.currency() != currency {
        return Err(Error::CurrencyMismatch {
            expected: currency,
            got: price.currency(),
        });
    }
    if price.is_negative() {
        return Err(Error::NegativePrice { sku });
    }
    Ok(())
}
