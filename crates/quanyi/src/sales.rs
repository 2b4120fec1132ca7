//! Quote, place order, payment notices, cancel and expiry.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use quanyi_core::{Currency, JobId, MemberId, Money, OrderId, SkuId};
use quanyi_goods::{Goods, KindTag, PurchaseCheck, StockSource};
use quanyi_order::{LineStatus, NewLine, Order, OrderContext, OrderStatus, Payment, PriceSource};
use quanyi_storage::{
    AuditAction, AuditOutcome, CONFLICTING_REPEAT, CardState, GoodsVersion, HeldCard, MemberLimit,
    NewJob, NewOrder, NoticeDisposition, OrderChange, PaymentNotice, PaymentWrite, RecordOutcome,
    Reservation,
};

use crate::memo::PlacedOrder;
use crate::placement::{Idempotency, PlaceOrder};
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
    /// What was checked and priced.
    pub check: PurchaseCheck,
    /// The goods of the SKU.
    pub goods: quanyi_core::GoodsId,
    /// Why this price.
    pub source: PriceSource,
    /// The supplier routes of the SKU (empty unless it is supplier-stocked).
    pub routes: Vec<quanyi_goods::SupplierRoute>,
}

/// A priced cart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quote {
    /// The lines in cart order.
    pub lines: Vec<QuoteLine>,
    /// The sum of the lines.
    pub total: Money,
}

/// What a payment notice did.
#[derive(Debug, Clone, PartialEq)]
pub struct PaymentReceipt {
    /// The order after the payment (delivered, when delivery finished inline).
    pub order: Order,
    /// True when this transaction had been recorded before and nothing changed now.
    pub repeated: bool,
}

/// A payment provider's notice that an order was paid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentNotification {
    /// The provider, for example `alipay` or `wechatpay`.
    pub provider: String,
    /// The provider's transaction id: a notice is applied once per transaction.
    pub transaction_id: String,
    /// The order the payment is for.
    pub order: OrderId,
    /// The amount paid.
    pub amount: Money,
}

fn check_reference(what: &str, text: &str) -> Result<()> {
    let ok = !text.is_empty() && text.len() <= 128 && text.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "{what} must be 1 to 128 printable ASCII characters: {}",
            quanyi_core::text::clip(text)
        )))
    }
}

impl Shop {
    /// True when the engine can deliver the line: card keys, links and reservation codes from
    /// the vault pool; direct top-ups and card keys whose supplier routes name registered
    /// suppliers; memberships (granted as an event); generated reservation codes; signed links
    /// when the shop is configured for them.
    fn can_fulfil(&self, check: &PurchaseCheck, routes: &[quanyi_goods::SupplierRoute]) -> bool {
        match (check.kind, check.stock) {
            (
                KindTag::CardKey | KindTag::Link | KindTag::ReservationCode,
                StockSource::VaultPool,
            ) => true,
            (KindTag::DirectTopUp | KindTag::CardKey, StockSource::Supplier) => {
                self.fulfillable_routes(routes)
            }
            (KindTag::Membership | KindTag::ReservationCode, StockSource::Unlimited) => true,
            (KindTag::Link, StockSource::Unlimited) => self.inner.links.is_some(),
            _ => false,
        }
    }

    /// The order's lines: each cart line as quoted, except that a benefit pack becomes one line
    /// per component, each carrying its share of the pack's price (allocated by the components'
    /// list prices, so the shares sum to the pack's price) and the pack's SKU.
    async fn expand_bundles(
        &self,
        quote: &Quote,
        cart: &[CartLine],
        pricing: &mut Pricing,
    ) -> Result<Vec<Planned>> {
        let mut out = Vec::with_capacity(quote.lines.len());
        for (line, asked) in quote.lines.iter().zip(cart) {
            if line.check.kind != KindTag::BenefitPack {
                out.push(Planned {
                    goods: line.goods,
                    check: line.check.clone(),
                    routes: line.routes.clone(),
                    allocated: None,
                    bundle: None,
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
                let routes = goods
                    .sku(c.sku)
                    .map(|s| s.routes.clone())
                    .unwrap_or_default();
                parts.push((goods.id(), check, routes));
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
            let shares = line.check.amount.allocate(&weights)?;
            for ((goods, check, routes), share) in parts.into_iter().zip(shares) {
                out.push(Planned {
                    goods,
                    check,
                    routes,
                    allocated: Some(share),
                    bundle: Some(line.check.sku),
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
        self.price_cart(request.cart(), &mut Pricing::fresh()).await
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
    async fn price_cart(&self, cart: &[CartLine], pricing: &mut Pricing) -> Result<Quote> {
        if cart.is_empty() {
            return Err(Error::EmptyCart);
        }
        let mut goods_cache: HashMap<SkuId, Goods> = HashMap::new();
        let mut lines = Vec::with_capacity(cart.len());
        let mut currency: Option<Currency> = None;
        let mut total: Option<Money> = None;
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
            let routes = goods
                .sku(line.sku)
                .map(|s| s.routes.clone())
                .unwrap_or_default();
            lines.push(QuoteLine {
                check,
                goods: goods.id(),
                source: PriceSource::ListPrice,
                routes,
            });
        }
        let total = total.ok_or(Error::EmptyCart)?;
        Ok(Quote { lines, total })
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
        idempotency: Option<&Idempotency>,
    ) -> Result<Order> {
        check_cart(cart)?;
        // First from the goods this process remembers. The store refuses the order if they
        // changed since; then, and when a check fails on remembered goods, decide again from
        // fresh reads.
        let mut pricing = Pricing::from_memory();
        for _ in 0..3 {
            let planned = self
                .plan_order(member, cart, context, extras, &mut pricing)
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
                    return Ok(order);
                }
                Err(quanyi_storage::Error::Conflict { what: "goods", .. }) => {
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
        pricing: &mut Pricing,
    ) -> Result<OrderPlan> {
        let quote = self.price_cart(cart, pricing).await?;
        let planned = self.expand_bundles(&quote, cart, pricing).await?;
        if let Some(bad) = planned
            .iter()
            .find(|l| !self.can_fulfil(&l.check, &l.routes))
        {
            return Err(Error::NotFulfillable {
                sku: bad.check.sku,
                kind: bad.check.kind.as_str(),
            });
        }
        // Supplier card keys are sold only against a fresh supplier stock figure.
        let mut supplier_cards: BTreeMap<SkuId, u64> = BTreeMap::new();
        for l in planned
            .iter()
            .filter(|l| l.check.kind == KindTag::CardKey && l.check.stock == StockSource::Supplier)
        {
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
                allocated: l.allocated,
                bundle: l.bundle,
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
        let order = order.with_context(context.clone())?;
        // The decide stage, before anything is reserved or written.
        let order = self.decide(order, extras).await?;
        // Per SKU, in a stable order: the quantity, its member limit, and whether the vault
        // stocks it (only vault SKUs reserve cards).
        let mut per_sku: BTreeMap<SkuId, (u32, Option<u32>, bool)> = BTreeMap::new();
        for l in &planned {
            let entry = per_sku.entry(l.check.sku).or_insert((
                0,
                l.check.per_member_limit,
                l.check.stock == StockSource::VaultPool,
            ));
            entry.0 = entry
                .0
                .checked_add(l.check.quantity)
                .ok_or(Error::InvalidQuantity(i64::from(l.check.quantity)))?;
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
            .filter_map(|(sku, (_, limit, _))| limit.map(|limit| MemberLimit { sku: *sku, limit }))
            .collect();
        let envs = self.envelopes("order", id, order.version(), events, now);
        Ok(OrderPlan {
            order,
            events: envs,
            reservations,
            limits,
            now,
        })
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

    /// Applies a payment provider's notice, once per transaction id. The amount and currency
    /// must equal the order's total. A paid order is delivered right away (and, should this
    /// process stop first, by the delivery job recorded with the payment).
    ///
    /// A notice that cannot be applied (unknown, expired, cancelled or already-paid order, or a
    /// wrong amount) is kept for reconciliation, changes no order, delivers nothing, and returns
    /// the same error each time it is repeated. Acknowledge such notices to the provider.
    /// A notice that repeats a recorded transaction id for another order or another amount is
    /// not a repeat: it is kept for reconciliation too ([`NotPayable`](Error::NotPayable) with
    /// the reason `conflicting_repeat`), and the first record stands.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a malformed provider or transaction id (nothing recorded);
    /// [`Error::AmountMismatch`]; [`Error::CurrencyMismatch`]; [`Error::NotPayable`];
    /// [`Error::Storage`].
    pub async fn confirm_payment(&self, notice: PaymentNotification) -> Result<PaymentReceipt> {
        check_reference("provider", &notice.provider)?;
        check_reference("transaction id", &notice.transaction_id)?;
        let store = self.store_ref();
        // Shared by the notice record, the payment and its event: one copy each.
        let provider: Arc<str> = Arc::from(notice.provider.as_str());
        let transaction_id: Arc<str> = Arc::from(notice.transaction_id.as_str());
        for _ in 0..5 {
            // A repeated notice is found by `record_payment`, which writes nothing and returns
            // the first record; whatever is decided below is then discarded.
            let now = self.now();
            // An order this process placed is remembered with its cards until its payment (the
            // write below is checked against the store's copy either way). Otherwise the order
            // and its cards are read: independent reads, sent at once, so on a networked store
            // they cost one round trip of waiting instead of two.
            let remembered = self.inner.placed.take(&self.tenant, notice.order);
            let from_memory = remembered.is_some();
            let (order, held) = match remembered {
                Some(placed) => (Some(placed.order), placed.held),
                None => tokio::try_join!(
                    store.order(&self.tenant, notice.order),
                    store.held_cards(&self.tenant, notice.order),
                )?,
            };
            let mut record = PaymentNotice {
                tenant: self.tenant.clone(),
                provider: provider.clone(),
                transaction_id: transaction_id.clone(),
                order: notice.order,
                amount: notice.amount,
                received_at: now,
                disposition: NoticeDisposition::Applied,
            };
            let reason = match &order {
                None => Some("unknown_order"),
                Some(o) => payability(o, &notice, now),
            };
            if reason.is_some() && from_memory {
                // A refusal is decided from the store's copy, never from memory.
                continue;
            }
            let outcome = match (reason, order) {
                (Some(reason), _) => {
                    record.disposition = NoticeDisposition::Reconcile {
                        reason: reason.to_owned(),
                    };
                    let write = PaymentWrite {
                        notice: &record,
                        change: None,
                        sell: &[],
                        job: None,
                    };
                    store.record_payment(write, now).await
                }
                (None, None) => continue,
                (None, Some(order)) => {
                    let payment = Payment {
                        provider: provider.clone(),
                        transaction_id: transaction_id.clone(),
                        amount: notice.amount,
                        paid_at: now,
                    };
                    let plan = self.plan_payment(order, &held, payment, now)?;
                    let envs = self.envelopes(
                        "order",
                        plan.order.id(),
                        plan.order.version(),
                        plan.events,
                        now,
                    );
                    let write = PaymentWrite {
                        notice: &record,
                        change: Some(OrderChange {
                            order: &plan.order,
                            expected_version: plan.expected_version,
                            events: &envs,
                        }),
                        sell: &plan.sell,
                        job: plan.job.as_ref(),
                    };
                    match store.record_payment(write, now).await {
                        Ok(RecordOutcome::Recorded) => {
                            tracing::info!(order = %plan.order.id(), status = %plan.order.status(), "order paid");
                            let order = match &plan.job {
                                // Delivery was not possible in the same step: run its job now.
                                Some(job) => self.deliver_now(job.id, plan.order.id()).await?,
                                None => plan.order,
                            };
                            return Ok(PaymentReceipt {
                                order,
                                repeated: false,
                            });
                        }
                        other => other,
                    }
                }
            };
            match outcome {
                Ok(RecordOutcome::Recorded) => return self.replay(&record).await,
                Ok(RecordOutcome::Duplicate(first))
                    if first.order != record.order || first.amount != record.amount =>
                {
                    return Err(self.conflicting_repeat(&first, &record).await?);
                }
                Ok(RecordOutcome::Duplicate(first)) => return self.replay(&first).await,
                // The order changed between our read and our write: decide again.
                Err(e) if e.kind() == quanyi_core::ErrorKind::Conflict => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Storage(quanyi_storage::Error::conflict(
            "order",
            notice.order,
            "kept changing while applying a payment",
        )))
    }

    /// Decides what a payment writes. When the order's reserved cards cover every card-key line,
    /// the order is delivered in the same write that records the payment (one atomic step, no job);
    /// otherwise the payment is recorded with a delivery job. `held` are the cards the order
    /// holds, read with the order.
    fn plan_payment(
        &self,
        mut order: Order,
        held: &[HeldCard],
        payment: Payment,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<PaymentPlan> {
        let expected_version = order.version();
        let mut events = order.confirm_payment(payment, now)?;
        let mut sell = Vec::new();
        if let Some(assignments) = assign_held_cards(&order, held) {
            events.extend(order.start_fulfilment(now)?);
            for (no, quantity, cards) in assignments {
                sell.extend(cards.iter().copied());
                events.extend(order.deliver_line(no, cards, quantity, now)?);
            }
            events.extend(order.finish_fulfilment(now)?);
            return Ok(PaymentPlan {
                order,
                expected_version,
                events,
                sell,
                job: None,
            });
        }
        let job = NewJob {
            id: JobId::generate(now, &mut rand::thread_rng()),
            tenant: self.tenant.clone(),
            kind: DELIVER_ORDER_JOB.into(),
            dedupe_key: format!("deliver:{}", order.id()),
            payload: serde_json::json!({ "order": order.id() }),
            run_at: now,
        };
        Ok(PaymentPlan {
            order,
            expected_version,
            events,
            sell,
            job: Some(job),
        })
    }

    /// A notice that repeats a recorded transaction id with another order, amount or currency:
    /// kept for reconciliation (once per claim) and audited; the first record stands and
    /// nothing else changes. Returns the error to answer with.
    async fn conflicting_repeat(
        &self,
        first: &PaymentNotice,
        repeat: &PaymentNotice,
    ) -> Result<Error> {
        let new = self.store_ref().flag_conflicting_notice(repeat).await?;
        if new {
            self.audit(
                repeat.provider.as_ref(),
                AuditAction::NoticeConflict,
                repeat.transaction_id.to_string(),
                AuditOutcome::Denied,
                format!(
                    "recorded for order {} with {}; repeated for order {} with {}",
                    first.order, first.amount, repeat.order, repeat.amount
                ),
            )
            .await?;
            tracing::warn!(
                provider = %repeat.provider,
                transaction = %repeat.transaction_id,
                "a payment notice repeated a transaction with another order or amount"
            );
        }
        Ok(Error::NotPayable {
            order: repeat.order,
            reason: CONFLICTING_REPEAT,
        })
    }

    /// The answer to a notice already recorded: the same every time it is repeated.
    async fn replay(&self, first: &PaymentNotice) -> Result<PaymentReceipt> {
        match &first.disposition {
            NoticeDisposition::Applied => Ok(PaymentReceipt {
                order: self.order(first.order).await?,
                repeated: true,
            }),
            NoticeDisposition::Reconcile { reason } => {
                let order = self.store_ref().order(&self.tenant, first.order).await?;
                Err(reconcile_error(reason, first, order.as_ref()))
            }
        }
    }

    /// Cancels an unpaid order of the member and returns its card keys to stock.
    ///
    /// # Errors
    /// [`Error::UnknownOrder`] (also for another member's order); [`Error::Order`] when it is no
    /// longer awaiting payment; [`Error::Storage`].
    pub async fn cancel_order(
        &self,
        member: &MemberId,
        id: OrderId,
        reason: &str,
    ) -> Result<Order> {
        let mut order = self.order(id).await?;
        if order.member() != member {
            return Err(Error::UnknownOrder(id));
        }
        let expected = order.version();
        let now = self.now();
        let events = order.cancel(reason.to_owned(), now)?;
        let envs = self.envelopes("order", id, order.version(), events, now);
        // The order and the release of its cards in one write: neither without the other.
        self.store_ref()
            .close_unpaid_order(OrderChange {
                order: &order,
                expected_version: expected,
                events: &envs,
            })
            .await?;
        Ok(order)
    }

    /// Expires every unpaid order (of every tenant) whose deadline has passed and returns its
    /// card keys to stock; returns how many orders expired. The [`crate::Worker`] runs it as a
    /// sweep ([`crate::EXPIRE_UNPAID_SWEEP`]); call it directly to expire at a moment of your own.
    ///
    /// # Errors
    /// [`Error::Storage`].
    pub async fn expire_unpaid_orders(&self) -> Result<usize> {
        let mut expired = 0;
        loop {
            let now = self.now();
            let due = self.store_ref().unpaid_orders_due(now, 200).await?;
            let page = due.len();
            let mut progressed = false;
            for (tenant, id) in due {
                let shop = self.with_tenant(tenant);
                if shop.expire_one(id).await? {
                    expired += 1;
                    progressed = true;
                }
            }
            if page < 200 || !progressed {
                break;
            }
        }
        Ok(expired)
    }

    async fn expire_one(&self, id: OrderId) -> Result<bool> {
        let Some(mut order) = self.store_ref().order(&self.tenant, id).await? else {
            return Ok(false);
        };
        let now = self.now();
        if order.status() != OrderStatus::AwaitingPayment || now < order.expires_at() {
            return Ok(false);
        }
        let expected = order.version();
        let events = order.expire(now)?;
        let envs = self.envelopes("order", id, order.version(), events, now);
        // The order and the release of its cards in one write: an expired order never keeps
        // its cards reserved, and no card is released from an order that did not expire.
        let released = match self
            .store_ref()
            .close_unpaid_order(OrderChange {
                order: &order,
                expected_version: expected,
                events: &envs,
            })
            .await
        {
            Ok(released) => released,
            // A payment or cancel got there first.
            Err(e) if e.kind() == quanyi_core::ErrorKind::Conflict => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        tracing::info!(order = %id, released, "unpaid order expired");
        Ok(true)
    }
}

/// One order line to be: a quoted line, or a component of a benefit pack.
struct Planned {
    goods: quanyi_core::GoodsId,
    check: PurchaseCheck,
    routes: Vec<quanyi_goods::SupplierRoute>,
    allocated: Option<Money>,
    bundle: Option<SkuId>,
}

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
}

impl Pricing {
    fn from_memory() -> Self {
        Pricing {
            memo: true,
            remembered: false,
            priced_from: Vec::new(),
            seen: HashSet::new(),
        }
    }

    fn fresh() -> Self {
        Pricing {
            memo: false,
            remembered: false,
            priced_from: Vec::new(),
            seen: HashSet::new(),
        }
    }
}

/// An order ready to store.
struct OrderPlan {
    order: Order,
    events: Vec<quanyi_core::EventEnvelope>,
    reservations: Vec<Reservation>,
    limits: Vec<MemberLimit>,
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

struct PaymentPlan {
    order: Order,
    expected_version: u64,
    events: Vec<quanyi_order::OrderEvent>,
    sell: Vec<quanyi_core::CardId>,
    job: Option<NewJob>,
}

/// The held cards for each pending card-key line (line, quantity, cards), when they cover every
/// line of the order; `None` when anything is missing or a line is of another kind. Linear in
/// lines plus cards: the reserved cards are grouped by SKU once, in the order they are held,
/// and each line takes the first unused ones of its SKU.
fn assign_held_cards(
    order: &Order,
    held: &[HeldCard],
) -> Option<Vec<(u16, u32, Vec<quanyi_core::CardId>)>> {
    let mut by_sku: HashMap<SkuId, std::collections::VecDeque<quanyi_core::CardId>> =
        HashMap::new();
    for card in held
        .iter()
        .filter(|c| matches!(c.state, CardState::Reserved { .. }))
    {
        by_sku.entry(card.sku).or_default().push_back(card.id);
    }
    let mut out = Vec::with_capacity(order.lines().len());
    for line in order.lines() {
        if line.status != LineStatus::Pending {
            return None;
        }
        let n = usize::try_from(line.quantity).ok()?;
        let queue = by_sku.get_mut(&line.sku)?;
        if queue.len() < n {
            return None;
        }
        let cards: Vec<_> = queue.drain(..n).collect();
        out.push((line.no, line.quantity, cards));
    }
    Some(out)
}

/// Why a notice cannot pay this order, or `None` when it can.
fn payability(
    order: &Order,
    notice: &PaymentNotification,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<&'static str> {
    match order.status() {
        OrderStatus::AwaitingPayment if now >= order.expires_at() => Some("order_expired"),
        OrderStatus::AwaitingPayment => {
            if notice.amount.currency() != order.total().currency() {
                Some("currency_mismatch")
            } else if notice.amount != order.total() {
                Some("amount_mismatch")
            } else {
                None
            }
        }
        OrderStatus::Expired => Some("order_expired"),
        OrderStatus::Cancelled => Some("order_cancelled"),
        OrderStatus::Paid
        | OrderStatus::Fulfilling
        | OrderStatus::Delivered
        | OrderStatus::PartiallyDelivered
        | OrderStatus::RefundPending
        | OrderStatus::Refunded => Some("already_paid"),
    }
}

fn reconcile_error(reason: &str, notice: &PaymentNotice, order: Option<&Order>) -> Error {
    let not_payable = |reason: &'static str| Error::NotPayable {
        order: notice.order,
        reason,
    };
    match (reason, order) {
        ("amount_mismatch", Some(o)) => Error::AmountMismatch {
            expected: o.total(),
            got: notice.amount,
        },
        ("currency_mismatch", Some(o)) => Error::CurrencyMismatch {
            expected: o.total().currency(),
            got: notice.amount.currency(),
        },
        ("unknown_order", _) => not_payable("unknown_order"),
        ("order_expired", _) => not_payable("order_expired"),
        ("order_cancelled", _) => not_payable("order_cancelled"),
        ("already_paid", _) => not_payable("already_paid"),
        _ => not_payable("not_payable"),
    }
}
