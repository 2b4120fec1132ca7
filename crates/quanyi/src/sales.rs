//! The cart, quotes and placing orders (the checkout; see `checkout` for its stages).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use quanyi_core::{Currency, MemberId, Money, OrderId, SkuId};
use quanyi_goods::{Goods, KindTag, PurchaseCheck, PurchaseLimits, StockSource};
use quanyi_order::{NewLine, Order, OrderContext, PackTerms, PriceSource};
use quanyi_storage::{CardState, GoodsVersion, HeldCard, MemberLimit, NewOrder, Reservation};

use crate::memo::PlacedOrder;
use crate::placement::{Idempotency, PlaceOrder};
use crate::price_stage::PriceInputs;
use crate::{Error, Result, Shop};

/// The most lines a cart may have: an order's line limit ([`quanyi_order::MAX_LINES`]).
/// Larger carts are refused before anything is read.
pub const MAX_CART_LINES: usize = quanyi_order::MAX_LINES;

/// The largest quantity one cart line may ask for. Larger quantities are refused before
/// anything is read.
pub const MAX_LINE_QUANTITY: u32 = 10_000;

/// Checks a cart's shape before any other work: 1 to [`MAX_CART_LINES`] lines, each quantity
/// 1 to [`MAX_LINE_QUANTITY`]. Constant work per line, no reads.
fn check_cart(cart: &[CartLine]) -> Result<()> {
    if cart.is_empty() {
        return Err(Error::EmptyCart);
    }
    if cart.len() > MAX_CART_LINES {
        return Err(Error::CartTooLarge {
            lines: cart.len(),
            max: MAX_CART_LINES,
        });
    }
    match cart
        .iter()
        .find(|l| l.quantity < 1 || l.quantity > i64::from(MAX_LINE_QUANTITY))
    {
        Some(bad) => Err(Error::InvalidQuantity(bad.quantity)),
        None => Ok(()),
    }
}

/// The job kind that delivers a paid order.
pub const DELIVER_ORDER_JOB: &str = "deliver_order";

/// One line of a cart, as a host receives it. The quantity is signed so that a zero or
/// negative quantity from a client is a typed error rather than a parse failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CartLine {
    /// The SKU.
    pub sku: SkuId,
    /// How many.
    pub quantity: i64,
    /// The account to top up, for direct top-up goods.
    pub account: Option<String>,
}

impl CartLine {
    /// A line of `quantity` of `sku`.
    pub fn new(sku: SkuId, quantity: i64) -> Self {
        CartLine {
            sku,
            quantity,
            account: None,
        }
    }

    /// The account a direct top-up credits.
    pub fn with_account(mut self, account: impl Into<String>) -> Self {
        self.account = Some(account.into());
        self
    }
}

/// A priced cart line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuoteLine {
    /// What was checked (at list price: `check.unit_price`, `check.amount`).
    pub check: PurchaseCheck,
    /// The goods of the SKU.
    pub goods: quanyi_core::GoodsId,
    /// The unit price after the shop's price lists (the list price without pricing rules).
    pub unit_price: Money,
    /// What the line costs after promotions.
    pub amount: Money,
    /// Why this price.
    pub source: PriceSource,
}

/// A priced cart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quote {
    /// The lines in cart order.
    pub lines: Vec<QuoteLine>,
    /// The sum of the lines.
    pub total: Money,
    /// The pricing engine's explanation (lists, promotions applied and missed, with why),
    /// when the shop has pricing rules.
    pub explained: Option<quanyi_pricing::Quote>,
    /// The budget uses the order takes for the promotions that applied.
    pub(crate) budgets: Vec<quanyi_storage::BudgetTake>,
}

impl Shop {
    /// True when the engine can deliver the line: card keys, links and reservation codes from
    /// the vault pool; direct top-ups and card keys whose supplier routes name registered
    /// suppliers; memberships (granted as an event); generated reservation codes; signed links
    /// when the shop is configured for them.
    fn can_fulfil(&self, check: &PurchaseCheck) -> bool {
        match (check.kind, check.terms.stock) {
            (
                KindTag::CardKey | KindTag::Link | KindTag::ReservationCode,
                StockSource::VaultPool,
            ) => true,
            (KindTag::DirectTopUp | KindTag::CardKey, StockSource::Supplier) => {
                self.fulfillable_routes(&check.terms.routes)
            }
            (KindTag::Membership | KindTag::ReservationCode, StockSource::Unlimited) => true,
            (KindTag::Link, StockSource::Unlimited) => self.inner.links.is_some(),
            _ => false,
        }
    }

    /// The order's lines: each cart line as quoted, except that a benefit pack becomes one line
    /// per component, each carrying its share of the pack's price (allocated by the components'
    /// list prices, so the shares sum to the pack's price) and the pack's terms (its place is
    /// the cart line's number).
    async fn expand_bundles(
        &self,
        quote: &Quote,
        cart: &[CartLine],
        pricing: &mut Pricing,
    ) -> Result<Vec<Planned>> {
        let mut out = Vec::with_capacity(quote.lines.len());
        for ((line, asked), place) in quote.lines.iter().zip(cart).zip(1u16..) {
            if line.check.kind != KindTag::BenefitPack {
                out.push(Planned {
                    goods: line.goods,
                    check: line.check.clone(),
                    unit_price: line.unit_price,
                    allocated: (line.amount != line.check.amount).then_some(line.amount),
                    source: line.source.clone(),
                    pack: None,
                });
                continue;
            }
            let pack = self.priced_goods(line.check.sku, pricing).await?;
            let quanyi_goods::GoodsKind::BenefitPack { components } = pack.kind() else {
                return Err(Error::InvalidInput(
                    "benefit pack without components".into(),
                ));
            };
            let mut parts = Vec::with_capacity(components.len());
            for c in components {
                let goods = self.priced_goods(c.sku, pricing).await?;
                let quantity = c
                    .quantity
                    .checked_mul(line.check.quantity)
                    .ok_or(Error::InvalidQuantity(i64::from(line.check.quantity)))?;
                let account = goods.kind().account_rule().and(asked.account.as_deref());
                let check = goods.check_purchase(c.sku, quantity, account)?;
                parts.push((goods.id(), check, c.quantity));
            }
            let weights: Vec<u64> = parts
                .iter()
                .map(|(_, check, _)| u64::try_from(check.amount.minor()).unwrap_or(0))
                .collect();
            let weights = if weights.iter().all(|w| *w == 0) {
                vec![1; weights.len()]
            } else {
                weights
            };
            // The pack's price after its discounts, split by the components' list prices.
            let shares = line.amount.allocate(&weights)?;
            for ((goods, check, per_pack), share) in parts.into_iter().zip(shares) {
                out.push(Planned {
                    goods,
                    unit_price: check.unit_price,
                    check,
                    allocated: Some(share),
                    source: PriceSource::ListPrice,
                    pack: Some(PackTerms {
                        sku: line.check.sku,
                        goods: pack.id(),
                        place,
                        packs: line.check.quantity,
                        per_pack,
                        price: line.amount,
                    }),
                });
            }
        }
        Ok(out)
    }

    /// Prices a placement request's cart as [`place`](Shop::place) would price it, checking
    /// every line as an order would (shelf, quantity, per-order limits, top-up accounts, one
    /// currency), and writes nothing. The request is the one a checkout will place (member,
    /// cart, context), so prices that depend on who buys and from where quote alike; an
    /// idempotency key on it is checked for form but takes no claim. A cart of more than
    /// [`MAX_CART_LINES`] lines or a quantity above [`MAX_LINE_QUANTITY`] is refused before
    /// anything is read.
    ///
    /// # Errors
    /// [`Error::EmptyCart`]; [`Error::CartTooLarge`]; [`Error::InvalidQuantity`]; [`Error::UnknownSku`];
    /// [`Error::Goods`] (off shelf, limit, account); [`Error::CurrencyMismatch`]; [`Error::Money`];
    /// [`Error::InvalidInput`] for a malformed key; [`Error::Order`] (`invalid_context`) for a
    /// malformed context.
    pub async fn quote(&self, request: &PlaceOrder) -> Result<Quote> {
        request.check()?;
        check_cart(request.cart())?;
        // Fresh goods, and whether a coupon entered is in use; the pricing rules as this
        // process reads them within its refresh.
        let mut pricing = Pricing {
            rules_fresh: false,
            read_coupon_use: true,
            ..Pricing::fresh()
        };
        self.price_cart(request.cart(), &request.price_inputs(), &mut pricing)
            .await
    }

    /// The goods of a SKU for pricing, noting the version it was priced from.
    async fn priced_goods(&self, sku: SkuId, pricing: &mut Pricing) -> Result<Goods> {
        let (goods, remembered) = self.goods_for_order(sku, pricing.memo).await?;
        pricing.remembered |= remembered;
        let seen = GoodsVersion {
            id: goods.id(),
            version: goods.version(),
        };
        if pricing.seen.insert(seen) {
            pricing.priced_from.push(seen);
        }
        Ok(goods)
    }

    /// [`quote`](Shop::quote), with the goods taken as `pricing` says.
    async fn price_cart(
        &self,
        cart: &[CartLine],
        inputs: &PriceInputs<'_>,
        pricing: &mut Pricing,
    ) -> Result<Quote> {
        if cart.is_empty() {
            return Err(Error::EmptyCart);
        }
        let loaded = self.pricing_rules(pricing.rules_fresh).await?;
        pricing.rules = Some(loaded.clone());
        let mut goods_cache: HashMap<SkuId, Goods> = HashMap::new();
        let mut lines = Vec::with_capacity(cart.len());
        let mut currency: Option<Currency> = None;
        let mut total: Option<Money> = None;
        let mut categories = Vec::new();
        for line in cart {
            let quantity = u32::try_from(line.quantity)
                .ok()
                .filter(|q| *q > 0)
                .ok_or(Error::InvalidQuantity(line.quantity))?;
            let goods = match goods_cache.get(&line.sku) {
                Some(g) => g,
                None => {
                    let g = self.priced_goods(line.sku, pricing).await?;
                    goods_cache.entry(line.sku).or_insert(g)
                }
            };
            let check = goods.check_purchase(line.sku, quantity, line.account.as_deref())?;
            let expected = *currency.get_or_insert(check.amount.currency());
            if check.amount.currency() != expected {
                return Err(Error::CurrencyMismatch {
                    expected,
                    got: check.amount.currency(),
                });
            }
            total = Some(match total {
                None => check.amount,
                Some(t) => t.checked_add(check.amount)?,
            });
            // Only the pricing engine reads categories: no copy on the list-price path.
            if loaded.rules.is_some() {
                categories.push(goods.categories().to_vec());
            }
            lines.push(QuoteLine {
                unit_price: check.unit_price,
                amount: check.amount,
                check,
                goods: goods.id(),
                source: PriceSource::ListPrice,
            });
        }
        let total = total.ok_or(Error::EmptyCart)?;
        match &loaded.rules {
            None if inputs.codes.is_empty() => Ok(Quote {
                lines,
                total,
                explained: None,
                budgets: Vec::new(),
            }),
            None => Err(Error::UnknownPromotionCode(inputs.codes[0].clone())),
            Some(rules) => {
                self.priced(lines, categories, inputs, rules, pricing.read_coupon_use)
                    .await
            }
        }
    }

    /// Places an order: checks the cart as [`quote`](Shop::quote) does, reserves card keys until
    /// the order's payment deadline, and stores the order with per-member limits checked
    /// atomically. Nothing is reserved when anything fails.
    ///
    /// # Errors
    /// As [`quote`](Shop::quote); [`Error::NotFulfillable`]; [`Error::OutOfStock`];
    /// [`Error::MemberLimitExceeded`]; [`Error::Storage`].
    pub async fn place_order(&self, member: &MemberId, cart: &[CartLine]) -> Result<Order> {
        self.place_checked(
            member,
            cart,
            &OrderContext::default(),
            &BTreeMap::new(),
            &PriceInputs::plain(member),
            None,
        )
        .await
    }

    /// [`place_order`](Shop::place_order) with a context, the request's unfingerprinted values
    /// (for the decide stage) and, with `idempotency`, the claim of its key taken in the same
    /// write. The checkout's stages run in order: price, check, decide, reserve and write (see
    /// `checkout`).
    pub(crate) async fn place_checked(
        &self,
        member: &MemberId,
        cart: &[CartLine],
        context: &OrderContext,
        extras: &BTreeMap<String, String>,
        inputs: &PriceInputs<'_>,
        idempotency: Option<&Idempotency>,
    ) -> Result<Order> {
        check_cart(cart)?;
        // First from the goods this process remembers. The store refuses the order if they
        // changed since; then, and when a check fails on remembered goods, decide again from
        // fresh reads.
        let mut pricing = Pricing::from_memory();
        for _ in 0..3 {
            let planned = self
                .plan_order(member, cart, context, extras, inputs, &mut pricing)
                .await;
            let mut plan = match planned {
                Ok(plan) => plan,
                Err(Error::CheckoutDenied { stage, reasons }) => {
                    return Err(Error::CheckoutDenied { stage, reasons });
                }
                Err(_) if pricing.remembered => {
                    pricing = Pricing::fresh();
                    continue;
                }
                Err(e) => return Err(e),
            };
            let claims = match idempotency {
                Some(i) => {
                    let request = i.correlation();
                    for e in &mut plan.events {
                        e.correlation_id = Some(request.clone());
                    }
                    vec![i.claim(plan.order.id())?]
                }
                None => Vec::new(),
            };
            let placed = self
                .store_ref()
                .place_order(
                    NewOrder {
                        order: &plan.order,
                        events: &plan.events,
                        reservations: &plan.reservations,
                        member_limits: &plan.limits,
                        priced_from: &pricing.priced_from,
                        claims: &claims,
                        budgets: &plan.budgets,
                        pricing_version: pricing.rules.as_ref().map(|r| r.version),
                    },
                    plan.now,
                )
                .await;
            match placed {
                Ok(cards) => {
                    let order = plan.order;
                    tracing::info!(order = %order.id(), total = %order.total(), "order placed");
                    if let Some(held) = reserved_cards(&order, &plan.reservations, &cards) {
                        self.inner.placed.put(PlacedOrder {
                            order: order.clone(),
                            held,
                        });
                    }
                    if order.total().is_zero() {
                        return self.pay_free(order).await;
                    }
                    return Ok(order);
                }
                // Goods or pricing rules changed, or a promotion's budget or a coupon was used
                // meanwhile: price again from fresh reads.
                Err(
                    quanyi_storage::Error::Conflict {
                        what: "goods" | "pricing",
                        ..
                    }
                    | quanyi_storage::Error::BudgetExhausted { .. },
                ) => {
                    pricing = Pricing::fresh();
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Storage(quanyi_storage::Error::conflict(
            "goods",
            cart.first().map(|l| l.sku.to_string()).unwrap_or_default(),
            "kept changing while placing an order",
        )))
    }

    /// Checks and prices a cart and builds the order that [`place_order`](Shop::place_order)
    /// stores, with the goods taken as `pricing` says.
    async fn plan_order(
        &self,
        member: &MemberId,
        cart: &[CartLine],
        context: &OrderContext,
        extras: &BTreeMap<String, String>,
        inputs: &PriceInputs<'_>,
        pricing: &mut Pricing,
    ) -> Result<OrderPlan> {
        let quote = self.price_cart(cart, inputs, pricing).await?;
        // A code or coupon entered must have applied: the buyer placed the order for its
        // discount.
        let rules = pricing.rules.as_ref().and_then(|r| r.rules.as_ref());
        if let (Some(explained), Some(rules)) = (&quote.explained, rules) {
            if let Some(missed) = explained.missed.iter().find(|m| {
                rules
                    .rules()
                    .promotions
                    .iter()
                    .any(|p| p.id == m.promotion && (p.code.is_some() || p.coupon))
            }) {
                return Err(Error::PromotionNotApplied {
                    promotion: missed.promotion.to_string(),
                    reason: missed.reason.clone(),
                });
            }
        }
        let planned = self.expand_bundles(&quote, cart, pricing).await?;
        if let Some(bad) = planned.iter().find(|l| !self.can_fulfil(&l.check)) {
            return Err(Error::NotFulfillable {
                sku: bad.check.sku,
                kind: bad.check.kind.as_str(),
            });
        }
        // Supplier card keys are sold only against a fresh supplier stock figure.
        let mut supplier_cards: BTreeMap<SkuId, u64> = BTreeMap::new();
        for l in planned.iter().filter(|l| {
            l.check.kind == KindTag::CardKey && l.check.terms.stock == StockSource::Supplier
        }) {
            *supplier_cards.entry(l.check.sku).or_default() += u64::from(l.check.quantity);
        }
        for (sku, wanted) in supplier_cards {
            let available = self.availability(sku).await?;
            if !available.covers(wanted) {
                return Err(Error::OutOfStock {
                    sku,
                    requested: u32::try_from(wanted).unwrap_or(u32::MAX),
                    available: match available {
                        quanyi_supplier::Availability::Limited(n) => n,
                        quanyi_supplier::Availability::Unlimited => u64::MAX,
                    },
                });
            }
        }
        let now = self.now();
        let expires_at = now + self.inner.reservation_ttl;
        let id = OrderId::generate(now, &mut rand::thread_rng());
        let new_lines = planned
            .iter()
            .map(|l| NewLine {
                unit_price: l.unit_price,
                allocated: l.allocated,
                pack: l.pack.clone(),
                price_source: l.source.clone(),
                ..NewLine::from_check(l.goods, &l.check)
            })
            .collect();
        let (order, events) = Order::place(
            id,
            self.tenant.clone(),
            member.clone(),
            new_lines,
            now,
            expires_at,
        )?;
        // The default context is not stored: nothing to copy for most orders.
        let mut order = if context.is_default() {
            order
        } else {
            order.with_context(context.clone())?
        };
        // The decide stage, before anything is reserved or written (none by default: no call).
        if self.inner.decide.is_some() {
            if let Some(decision) = self.decide(&order, extras).await? {
                order = order.with_decision(decision)?;
            }
        }
        // Per SKU, in a stable order: the quantity, its limits, and whether the vault stocks it
        // (only vault SKUs reserve cards). A benefit pack counts its packs for its own limits.
        let mut per_sku: BTreeMap<SkuId, (u32, PurchaseLimits, bool)> = BTreeMap::new();
        let packs = quote
            .lines
            .iter()
            .filter(|l| l.check.kind == KindTag::BenefitPack)
            .map(|l| &l.check);
        for check in planned.iter().map(|l| &l.check).chain(packs) {
            let entry = per_sku.entry(check.sku).or_insert((
                0,
                check.limits,
                check.kind != KindTag::BenefitPack && check.terms.stock == StockSource::VaultPool,
            ));
            entry.0 = entry
                .0
                .checked_add(check.quantity)
                .ok_or(Error::InvalidQuantity(i64::from(check.quantity)))?;
        }
        let reservations: Vec<Reservation> = per_sku
            .iter()
            .filter(|(_, (_, _, vault))| *vault)
            .map(|(sku, (quantity, _, _))| Reservation {
                sku: *sku,
                quantity: *quantity,
            })
            .collect();
        let limits: Vec<MemberLimit> = per_sku
            .iter()
            .filter_map(|(sku, (_, limits, _))| {
                limits.per_member.map(|limit| MemberLimit {
                    sku: *sku,
                    limit,
                    release_on_refund: limits.release_on_refund,
                })
            })
            .collect();
        let envs = self.envelopes("order", id, order.version(), events, now);
        Ok(OrderPlan {
            order,
            events: envs,
            reservations,
            limits,
            budgets: quote.budgets,
            now,
        })
    }

    /// Pays a placed order whose total is zero (a full discount, a free trial) at once, as
    /// [`FREE_ORDER_PROVIDER`] with the order's id as the transaction, and delivers it. The
    /// order is placed either way: should the payment not be recorded now (the store
    /// unavailable), the placed order is answered, awaiting payment, and the same notice
    /// (`confirm_payment` with that provider and transaction) completes it later.
    async fn pay_free(&self, order: Order) -> Result<Order> {
        let notice = crate::PaymentNotification {
            provider: FREE_ORDER_PROVIDER.into(),
            transaction_id: order.id().to_string(),
            order: order.id(),
            amount: order.total(),
        };
        match self.confirm_payment(notice).await {
            Ok(receipt) => Ok(receipt.order),
            Err(e) => {
                tracing::warn!(order = %order.id(), error = %e, "free order placed but not yet paid");
                Ok(order)
            }
        }
    }

    /// An order by id.
    ///
    /// # Errors
    /// [`Error::UnknownOrder`]; [`Error::Storage`].
    pub async fn order(&self, id: OrderId) -> Result<Order> {
        self.store_ref()
            .order(&self.tenant, id)
            .await?
            .ok_or(Error::UnknownOrder(id))
    }
}

/// One order line to be: a quoted line, or a component of a benefit pack.
struct Planned {
    goods: quanyi_core::GoodsId,
    check: PurchaseCheck,
    /// The unit price after price lists.
    unit_price: Money,
    /// The line's amount when it is not the unit price times the quantity (promotions, a
    /// pack's share).
    allocated: Option<Money>,
    source: PriceSource,
    pack: Option<PackTerms>,
}

/// The provider a free order (total zero) is recorded as paid by, without a payment notice.
pub const FREE_ORDER_PROVIDER: &str = "quanyi.free";

/// How an order is priced: from remembered goods or fresh reads, and the goods versions it
/// was priced from (which the store checks when it places the order).
struct Pricing {
    /// Take goods from memory when this process has them.
    memo: bool,
    /// Some goods came from memory.
    remembered: bool,
    priced_from: Vec<GoodsVersion>,
    /// The same versions, to add each once.
    seen: HashSet<GoodsVersion>,
    /// Ask the store for the pricing rules' version whatever this process read last.
    rules_fresh: bool,
    /// Read whether each coupon entered is in use (a quote, a placement tried again); a
    /// placement's first try leaves it to the store, which refuses a coupon in use.
    read_coupon_use: bool,
    /// The pricing rules priced by (their version is checked by the store at placement).
    rules: Option<Arc<crate::promotions::LoadedRules>>,
}

impl Pricing {
    fn from_memory() -> Self {
        Pricing {
            memo: true,
            remembered: false,
            priced_from: Vec::new(),
            seen: HashSet::new(),
            rules_fresh: false,
            read_coupon_use: false,
            rules: None,
        }
    }

    fn fresh() -> Self {
        Pricing {
            memo: false,
            remembered: false,
            priced_from: Vec::new(),
            seen: HashSet::new(),
            rules_fresh: true,
            read_coupon_use: true,
            rules: None,
        }
    }
}

/// An order ready to store.
struct OrderPlan {
    order: Order,
    events: Vec<quanyi_core::EventEnvelope>,
    reservations: Vec<Reservation>,
    limits: Vec<MemberLimit>,
    budgets: Vec<quanyi_storage::BudgetTake>,
    now: chrono::DateTime<chrono::Utc>,
}

/// The cards a placed order holds, from what the store returned: each reservation's cards in
/// turn (the port's order), listed in card order as [`VaultStore::held_cards`] lists them.
/// `None` when the count does not match.
///
/// [`VaultStore::held_cards`]: quanyi_storage::VaultStore::held_cards
fn reserved_cards(
    order: &Order,
    reservations: &[Reservation],
    cards: &[quanyi_core::CardId],
) -> Option<Vec<HeldCard>> {
    let mut ids = cards.iter();
    let mut held = Vec::with_capacity(cards.len());
    for r in reservations {
        for _ in 0..r.quantity {
            held.push(HeldCard {
                id: *ids.next()?,
                sku: r.sku,
                state: CardState::Reserved {
                    order: order.id(),
                    until: order.expires_at(),
                },
            });
        }
    }
    if ids.next().is_some() {
        return None;
    }
    held.sort_by_key(|c| c.id);
    Some(held)
}
