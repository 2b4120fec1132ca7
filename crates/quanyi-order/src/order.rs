//! The order aggregate.

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use quanyi_core::{CardId, Currency, MemberId, Money, OrderId, SkuId, TenantId};
use quanyi_goods::KindTag;
use serde::{Deserialize, Serialize};

mod refunds;

use crate::line::{LineAttempt, LineStatus, NewLine, OrderLine, check_packs};
use crate::{
    Decision, Error, OrderContext, OrderEvent, OrderStatus, Refund, Result, Trigger, Verdict,
    next_status,
};

/// The most lines one order holds.
pub const MAX_LINES: usize = 100;
/// The longest line title, in characters.
pub const MAX_TITLE_CHARS: usize = 200;
/// Reasons (failure, cancel, refund) longer than this are cut to this many characters.
pub const MAX_REASON_CHARS: usize = 500;
const MAX_ACCOUNT_CHARS: usize = 254;
const MAX_PROVIDER_CHARS: usize = 64;
const MAX_TRANSACTION_CHARS: usize = 128;

/// A confirmed payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    /// The payment provider, such as `alipay`.
    pub provider: Arc<str>,
    /// The provider's transaction id.
    pub transaction_id: Arc<str>,
    /// The amount paid.
    pub amount: Money,
    /// When the provider says it was paid.
    pub paid_at: DateTime<Utc>,
}

/// An order: lines, total, payment and status. The status changes only through the commands,
/// each of which runs [`next_status`], bumps [`Order::version`] by one and returns its events.
/// A refused command leaves the order unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    id: OrderId,
    tenant: TenantId,
    member: MemberId,
    // Shared with copies of the order (a store's, a reader's); a command that changes a line
    // copies them first (`Arc::make_mut`).
    lines: Arc<Vec<OrderLine>>,
    total: Money,
    status: OrderStatus,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    payment: Option<Arc<Payment>>,
    version: u64,
    updated_at: DateTime<Utc>,
    /// Where it was placed; `None` is the default context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    context: Option<Arc<OrderContext>>,
    /// What the checkout's decide stage concluded; `None` is [`Decision::allow_all`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    decision: Option<Arc<Decision>>,
    /// After-sales refunds, in the order they were asked for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    refunds: Vec<Refund>,
}

/// The first of `new` that is already on a line or repeats within `new`.
fn first_repeat(lines: &[OrderLine], new: &[CardId]) -> Option<CardId> {
    let held = lines.iter().map(|l| l.cards.len()).sum::<usize>();
    // Orders hold a few cards: comparing pairs beats hashing them.
    if held + new.len() <= 32 {
        return new.iter().enumerate().find_map(|(i, c)| {
            let repeated = new[..i].contains(c) || lines.iter().any(|l| l.cards.contains(c));
            repeated.then_some(*c)
        });
    }
    let mut seen: HashSet<CardId> = lines.iter().flat_map(|l| l.cards.iter().copied()).collect();
    new.iter().find(|c| !seen.insert(**c)).copied()
}

fn text_ok(text: &str, max: usize) -> bool {
    !text.trim().is_empty() && text.chars().count() <= max && !text.chars().any(char::is_control)
}

fn bounded(mut text: String) -> String {
    if let Some((cut, _)) = text.char_indices().nth(MAX_REASON_CHARS) {
        text.truncate(cut);
    }
    text
}

impl Order {
    /// Places an order awaiting payment until `expires_at`, at version 1.
    ///
    /// # Errors
    /// [`Error::InvalidLineCount`] (1 to [`MAX_LINES`]), [`Error::InvalidExpiry`] when
    /// `expires_at <= now`, [`Error::InvalidQuantity`] for a zero quantity,
    /// [`Error::InvalidLine`] for a bad title, account or a negative price,
    /// [`Error::CurrencyMismatch`] when lines mix currencies, [`Error::AmountOverflow`].
    pub fn place(
        id: OrderId,
        tenant: TenantId,
        member: MemberId,
        lines: Vec<NewLine>,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<(Order, Vec<OrderEvent>)> {
        let count = lines.len();
        let (Some(first), Ok(count16)) = (lines.first(), u16::try_from(count)) else {
            return Err(Error::InvalidLineCount { count });
        };
        if count > MAX_LINES {
            return Err(Error::InvalidLineCount { count });
        }
        if expires_at <= now {
            return Err(Error::InvalidExpiry);
        }
        let currency = first.unit_price.currency();
        let mut total = Money::zero(currency);
        let mut out = Vec::with_capacity(count);
        for (no, l) in (1..=count16).zip(lines) {
            if l.quantity == 0 {
                return Err(Error::InvalidQuantity { line: no });
            }
            if !text_ok(&l.title, MAX_TITLE_CHARS) {
                return Err(Error::InvalidLine {
                    line: no,
                    reason: "title must have 1 to 200 printable characters",
                });
            }
            if l.account
                .as_deref()
                .is_some_and(|a| !text_ok(a, MAX_ACCOUNT_CHARS))
            {
                return Err(Error::InvalidLine {
                    line: no,
                    reason: "account must have 1 to 254 printable characters",
                });
            }
            if l.unit_price.currency() != currency {
                return Err(Error::CurrencyMismatch {
                    expected: currency,
                    got: l.unit_price.currency(),
                });
            }
            if l.unit_price.is_negative() {
                return Err(Error::InvalidLine {
                    line: no,
                    reason: "negative unit price",
                });
            }
            if (l.kind == KindTag::Membership) != l.terms.membership.is_some() {
                return Err(Error::InvalidLine {
                    line: no,
                    reason: "membership lines, and only they, carry membership terms",
                });
            }
            if !l.terms.stock.fits(l.kind) {
                return Err(Error::InvalidLine {
                    line: no,
                    reason: "stock source does not fit the kind",
                });
            }
            if let Some(p) = &l.pack {
                if p.place == 0
                    || p.per_pack == 0
                    || p.packs.checked_mul(p.per_pack) != Some(l.quantity)
                {
                    return Err(Error::InvalidLine {
                        line: no,
                        reason: "pack terms must be packs times units per pack, both above 0",
                    });
                }
            }
            let amount = match l.allocated {
                Some(share) if share.currency() != currency => {
                    return Err(Error::CurrencyMismatch {
                        expected: currency,
                        got: share.currency(),
                    });
                }
                Some(share) if share.is_negative() => {
                    return Err(Error::InvalidLine {
                        line: no,
                        reason: "negative allocated amount",
                    });
                }
                Some(share) => share,
                None => l.unit_price.checked_mul(i64::from(l.quantity))?,
            };
            total = total.checked_add(amount)?;
            out.push(OrderLine {
                no,
                sku: l.sku,
                goods: l.goods,
                kind: l.kind,
                title: l.title,
                quantity: l.quantity,
                unit_price: l.unit_price,
                amount,
                account: l.account,
                status: LineStatus::Pending,
                delivered: 0,
                cards: Vec::new(),
                attempts: Vec::new(),
                terms: l.terms,
                pack: l.pack,
                price_source: l.price_source,
            });
        }
        check_packs(&out)?;
        let order = Order {
            id,
            tenant,
            member,
            lines: Arc::new(out),
            total,
            status: OrderStatus::AwaitingPayment,
            created_at: now,
            expires_at,
            payment: None,
            version: 1,
            updated_at: now,
            context: None,
            decision: None,
            refunds: Vec::new(),
        };
        let event = OrderEvent::Placed {
            order: id,
            member: order.member.clone(),
            total,
            lines: count16,
        };
        Ok((order, vec![event]))
    }

    /// The order as placed in `context`: set once, when the order is placed and before it is
    /// stored (it is part of the placement, not a change: the version stays).
    ///
    /// # Errors
    /// [`Error::InvalidContext`] when a part is malformed (see [`OrderContext::check`]);
    /// [`Error::WrongStatus`] when the order has moved on from its placement.
    pub fn with_context(mut self, context: OrderContext) -> Result<Order> {
        if self.version != 1 || self.status != OrderStatus::AwaitingPayment {
            return Err(Error::WrongStatus {
                status: self.status,
                expected: OrderStatus::AwaitingPayment,
            });
        }
        context.check()?;
        // The default context (web, nothing else) is not stored: it is what reads back.
        self.context = (!context.is_default()).then(|| Arc::new(context));
        Ok(self)
    }

    /// The units of `sku` the order buys: what a per-member limit of the SKU counts (every
    /// store counts it the same way, over the member's orders that
    /// [count toward the limit](OrderStatus::counts_toward_limit)). A benefit pack counts its
    /// packs, beside its components' units. Saturates at `u32::MAX`.
    pub fn quantity_of(&self, sku: SkuId) -> u32 {
        self.limit_units()
            .filter(|(s, _)| *s == sku)
            .map(|(_, units)| units)
            .fold(0u32, u32::saturating_add)
    }

    /// What the order counts toward per-member limits, as stores keep it beside the order:
    /// each line's SKU and quantity in line order, each pack's SKU and packs after its first
    /// line.
    pub fn limit_units(&self) -> impl Iterator<Item = (SkuId, u32)> + '_ {
        self.lines.iter().enumerate().flat_map(|(i, l)| {
            let first_of_pack = l.pack.as_ref().filter(|p| {
                i == 0
                    || self.lines[i - 1]
                        .pack
                        .as_ref()
                        .is_none_or(|before| before.place != p.place)
            });
            std::iter::once((l.sku, l.quantity)).chain(first_of_pack.map(|p| (p.sku, p.packs)))
        })
    }

    /// The order as the checkout decided it: set once, when the order is placed and before it
    /// is stored, like the context. Only an allowing decision can be kept.
    ///
    /// # Errors
    /// [`Error::InvalidDecision`] when the decision is malformed or does not allow the order;
    /// [`Error::WrongStatus`] when the order has moved on from its placement.
    pub fn with_decision(mut self, decision: Decision) -> Result<Order> {
        if self.version != 1 || self.status != OrderStatus::AwaitingPayment {
            return Err(Error::WrongStatus {
                status: self.status,
                expected: OrderStatus::AwaitingPayment,
            });
        }
        decision.check()?;
        if decision.verdict != Verdict::Allow {
            return Err(Error::InvalidDecision { part: "verdict" });
        }
        // The default decision is not stored: it is what reads back.
        let default = decision.stage == crate::ALLOW_ALL_STAGE && decision.reasons.is_empty();
        self.decision = (!default).then(|| Arc::new(decision));
        Ok(self)
    }

    /// What the checkout's decide stage concluded. Orders placed under the default stage, and
    /// orders stored before decisions existed, read as [`Decision::allow_all`].
    pub fn decision(&self) -> &Decision {
        static DEFAULT: std::sync::LazyLock<Decision> =
            std::sync::LazyLock::new(Decision::allow_all);
        self.decision.as_deref().unwrap_or(&DEFAULT)
    }

    /// Where the order was placed. Orders placed without a context, and orders stored before
    /// contexts existed, read as the default: the web channel with nothing else.
    pub fn context(&self) -> &OrderContext {
        static DEFAULT: std::sync::LazyLock<OrderContext> =
            std::sync::LazyLock::new(OrderContext::default);
        self.context.as_deref().unwrap_or(&DEFAULT)
    }

    /// The order's id.
    pub fn id(&self) -> OrderId {
        self.id
    }

    /// The tenant it belongs to.
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// The buyer.
    pub fn member(&self) -> &MemberId {
        &self.member
    }

    /// Its lines, numbered from 1.
    pub fn lines(&self) -> &[OrderLine] {
        &self.lines
    }

    /// One line by number.
    pub fn line(&self, no: u16) -> Option<&OrderLine> {
        self.lines.iter().find(|l| l.no == no)
    }

    /// The sum of the line amounts.
    pub fn total(&self) -> Money {
        self.total
    }

    /// The order's currency.
    pub fn currency(&self) -> Currency {
        self.total.currency()
    }

    /// Its status.
    pub fn status(&self) -> OrderStatus {
        self.status
    }

    /// When it was placed.
    pub fn created_at(&self) -> DateTime<Utc> {
        self.created_at
    }

    /// When the payment window closes.
    pub fn expires_at(&self) -> DateTime<Utc> {
        self.expires_at
    }

    /// The confirmed payment.
    pub fn payment(&self) -> Option<&Payment> {
        self.payment.as_deref()
    }

    /// Starts at 1 and grows by one per command (optimistic concurrency).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// When the last command ran.
    pub fn updated_at(&self) -> DateTime<Utc> {
        self.updated_at
    }

    fn sum_lines(&self, status: LineStatus) -> Result<Money> {
        Ok(Money::sum(
            self.lines
                .iter()
                .filter(|l| l.status == status)
                .map(|l| l.amount),
            self.currency(),
        )?)
    }

    /// The sum of the failed lines' amounts: what is owed back for lines not delivered.
    ///
    /// # Errors
    /// [`Error::AmountOverflow`] only for corrupted data.
    pub fn refund_amount(&self) -> Result<Money> {
        self.sum_lines(LineStatus::Failed)
    }

    /// The sum of the lines already refunded.
    ///
    /// # Errors
    /// [`Error::AmountOverflow`] only for corrupted data.
    pub fn refunded_amount(&self) -> Result<Money> {
        self.sum_lines(LineStatus::Refunded)
    }

    /// What a whole-order refund pays back: the total less what lines already refunded.
    ///
    /// # Errors
    /// [`Error::AmountOverflow`] only for corrupted data.
    pub fn refundable_amount(&self) -> Result<Money> {
        Ok(self.total.checked_sub(self.refunded_amount()?)?)
    }

    fn next_version(&self) -> Result<u64> {
        self.version.checked_add(1).ok_or(Error::VersionOverflow)
    }

    /// Checks a transition and the version bump without changing anything.
    fn prepare(&self, trigger: Trigger) -> Result<(OrderStatus, u64)> {
        let to = next_status(self.status, trigger)?;
        Ok((to, self.next_version()?))
    }

    fn commit(&mut self, status: OrderStatus, version: u64, now: DateTime<Utc>) {
        self.status = status;
        self.version = version;
        self.updated_at = now;
    }

    fn line_index(&self, no: u16) -> Result<usize> {
        self.lines
            .iter()
            .position(|l| l.no == no)
            .ok_or(Error::UnknownLine { line: no })
    }

    fn require(&self, expected: OrderStatus) -> Result<u64> {
        if self.status != expected {
            return Err(Error::WrongStatus {
                status: self.status,
                expected,
            });
        }
        self.next_version()
    }

    /// Records the payment notice.
    ///
    /// # Errors
    /// [`Error::IllegalTransition`] unless awaiting payment (a second notice included),
    /// [`Error::Expired`] when `now >= expires_at`, [`Error::InvalidPayment`],
    /// [`Error::CurrencyMismatch`], [`Error::AmountMismatch`]. All are checked before anything
    /// changes.
    pub fn confirm_payment(
        &mut self,
        payment: Payment,
        now: DateTime<Utc>,
    ) -> Result<Vec<OrderEvent>> {
        let (to, version) = self.prepare(Trigger::Pay)?;
        if now >= self.expires_at {
            return Err(Error::Expired {
                expires_at: self.expires_at,
            });
        }
        if !text_ok(&payment.provider, MAX_PROVIDER_CHARS) {
            return Err(Error::InvalidPayment {
                reason: "provider must have 1 to 64 printable characters",
            });
        }
        if !text_ok(&payment.transaction_id, MAX_TRANSACTION_CHARS) {
            return Err(Error::InvalidPayment {
                reason: "transaction id must have 1 to 128 printable characters",
            });
        }
        if payment.amount.currency() != self.currency() {
            return Err(Error::CurrencyMismatch {
                expected: self.currency(),
                got: payment.amount.currency(),
            });
        }
        if payment.amount != self.total {
            return Err(Error::AmountMismatch {
                expected: self.total,
                got: payment.amount,
            });
        }
        let event = OrderEvent::Paid {
            order: self.id,
            provider: payment.provider.clone(),
            transaction_id: payment.transaction_id.clone(),
            amount: payment.amount,
        };
        self.payment = Some(Arc::new(payment));
        self.commit(to, version, now);
        Ok(vec![event])
    }

    /// Starts fulfilment of a paid order.
    ///
    /// # Errors
    /// [`Error::IllegalTransition`] unless paid.
    pub fn start_fulfilment(&mut self, now: DateTime<Utc>) -> Result<Vec<OrderEvent>> {
        let (to, version) = self.prepare(Trigger::StartFulfilment)?;
        self.commit(to, version, now);
        Ok(vec![OrderEvent::FulfilmentStarted])
    }

    /// Records the delivery of a whole line. Card-key lines carry one card id per unit; other
    /// kinds carry none, or one per unit when their codes come from a vault pool.
    ///
    /// # Errors
    /// [`Error::WrongStatus`] unless fulfilling, [`Error::UnknownLine`],
    /// [`Error::LineNotPending`], [`Error::QuantityMismatch`], [`Error::CardCountMismatch`],
    /// [`Error::DuplicateCard`] when a card is given twice or already sits on another line.
    pub fn deliver_line(
        &mut self,
        no: u16,
        cards: Vec<CardId>,
        quantity: u32,
        now: DateTime<Utc>,
    ) -> Result<Vec<OrderEvent>> {
        let version = self.require(OrderStatus::Fulfilling)?;
        let i = self.line_index(no)?;
        let line = &self.lines[i];
        if line.status != LineStatus::Pending {
            return Err(Error::LineNotPending {
                line: no,
                status: line.status,
            });
        }
        if quantity != line.quantity {
            return Err(Error::QuantityMismatch {
                line: no,
                expected: line.quantity,
                got: quantity,
            });
        }
        let full = u32::try_from(cards.len()).is_ok_and(|n| n == quantity);
        if !(full || (cards.is_empty() && line.kind != KindTag::CardKey)) {
            return Err(Error::CardCountMismatch {
                line: no,
                expected: quantity,
                got: cards.len(),
            });
        }
        if let Some(card) = first_repeat(&self.lines, &cards) {
            return Err(Error::DuplicateCard { card });
        }
        let line = &mut Arc::make_mut(&mut self.lines)[i];
        line.status = LineStatus::Delivered;
        line.delivered = quantity;
        line.cards.clone_from(&cards);
        self.version = version;
        self.updated_at = now;
        Ok(vec![OrderEvent::LineDelivered {
            line: no,
            quantity,
            cards,
        }])
    }

    /// Delivers a membership line by granting its entitlement: the line is delivered and an
    /// `order.entitlement_granted` event carries the member, plan, days and quantity, for the
    /// membership engine (or the host) to act on.
    ///
    /// # Errors
    /// As [`Order::deliver_line`].
    pub fn grant_entitlement(
        &mut self,
        no: u16,
        plan: String,
        days: u32,
        now: DateTime<Utc>,
    ) -> Result<Vec<OrderEvent>> {
        let quantity = self.lines[self.line_index(no)?].quantity;
        let mut events = self.deliver_line(no, Vec::new(), quantity, now)?;
        events.push(OrderEvent::EntitlementGranted {
            line: no,
            member: self.member.clone(),
            plan,
            days,
            quantity,
        });
        Ok(events)
    }

    /// Records a call to a supplier for a pending line, or its later answer (an attempt with the
    /// same supplier and request as the last one replaces it).
    ///
    /// # Errors
    /// [`Error::WrongStatus`] unless fulfilling, [`Error::UnknownLine`],
    /// [`Error::LineNotPending`].
    pub fn record_attempt(
        &mut self,
        no: u16,
        attempt: LineAttempt,
        now: DateTime<Utc>,
    ) -> Result<Vec<OrderEvent>> {
        let version = self.require(OrderStatus::Fulfilling)?;
        let i = self.line_index(no)?;
        let line = &mut Arc::make_mut(&mut self.lines)[i];
        if line.status != LineStatus::Pending {
            return Err(Error::LineNotPending {
                line: no,
                status: line.status,
            });
        }
        let event = OrderEvent::LineAttempted {
            line: no,
            supplier: attempt.supplier.clone(),
            outcome: attempt.outcome.as_str().to_owned(),
        };
        match line.attempts.last_mut() {
            // A later answer about the same request replaces the earlier one.
            Some(last) if last.supplier == attempt.supplier && last.request == attempt.request => {
                *last = attempt;
            }
            _ => line.attempts.push(attempt),
        }
        self.version = version;
        self.updated_at = now;
        Ok(vec![event])
    }

    /// Records that a line cannot be delivered; it is owed a refund. The reason is cut to
    /// [`MAX_REASON_CHARS`].
    ///
    /// # Errors
    /// [`Error::WrongStatus`] unless fulfilling, [`Error::UnknownLine`],
    /// [`Error::LineNotPending`].
    pub fn fail_line(
        &mut self,
        no: u16,
        reason: String,
        now: DateTime<Utc>,
    ) -> Result<Vec<OrderEvent>> {
        self.move_pending_line(no, LineStatus::Failed, now)?;
        Ok(vec![OrderEvent::LineFailed {
            line: no,
            reason: bounded(reason),
        }])
    }

    /// Sets a pending line aside for an operator to decide. The reason is cut to
    /// [`MAX_REASON_CHARS`].
    ///
    /// # Errors
    /// [`Error::WrongStatus`] unless fulfilling, [`Error::UnknownLine`],
    /// [`Error::LineNotPending`].
    pub fn hold_line(
        &mut self,
        no: u16,
        reason: String,
        now: DateTime<Utc>,
    ) -> Result<Vec<OrderEvent>> {
        self.move_pending_line(no, LineStatus::Held, now)?;
        Ok(vec![OrderEvent::LineHeld {
            line: no,
            reason: bounded(reason),
        }])
    }

    /// Moves a pending line of a fulfilling order to `to` (failed or held).
    fn move_pending_line(&mut self, no: u16, to: LineStatus, now: DateTime<Utc>) -> Result<()> {
        let version = self.require(OrderStatus::Fulfilling)?;
        let i = self.line_index(no)?;
        let line = &mut Arc::make_mut(&mut self.lines)[i];
        if line.status != LineStatus::Pending {
            return Err(Error::LineNotPending {
                line: no,
                status: line.status,
            });
        }
        line.status = to;
        self.version = version;
        self.updated_at = now;
        Ok(())
    }

    /// An operator's decision on a held line: delivered in full (the operator confirmed it with
    /// the supplier; only for lines that hand over no codes: direct top-ups and memberships) or
    /// failed (it is then refunded like any failed line). The reason is cut to
    /// [`MAX_REASON_CHARS`].
    ///
    /// # Errors
    /// [`Error::WrongStatus`] unless fulfilling, [`Error::UnknownLine`], [`Error::LineNotHeld`],
    /// [`Error::CardCountMismatch`] for a line that hands over codes declared delivered.
    pub fn resolve_held_line(
        &mut self,
        no: u16,
        delivered: bool,
        reason: String,
        now: DateTime<Utc>,
    ) -> Result<Vec<OrderEvent>> {
        let version = self.require(OrderStatus::Fulfilling)?;
        let i = self.line_index(no)?;
        let line = &self.lines[i];
        if line.status != LineStatus::Held {
            return Err(Error::LineNotHeld {
                line: no,
                status: line.status,
            });
        }
        if delivered && !matches!(line.kind, KindTag::DirectTopUp | KindTag::Membership) {
            return Err(Error::CardCountMismatch {
                line: no,
                expected: line.quantity,
                got: 0,
            });
        }
        let line = &mut Arc::make_mut(&mut self.lines)[i];
        let event = if delivered {
            line.status = LineStatus::Delivered;
            line.delivered = line.quantity;
            OrderEvent::LineDelivered {
                line: no,
                quantity: line.quantity,
                cards: Vec::new(),
            }
        } else {
            line.status = LineStatus::Failed;
            OrderEvent::LineFailed {
                line: no,
                reason: bounded(reason),
            }
        };
        self.version = version;
        self.updated_at = now;
        Ok(vec![event])
    }

    /// Ends fulfilment once no line is pending: all delivered -> `Delivered`; some delivered and
    /// the rest failed -> `PartiallyDelivered` (failed lines are refunded with
    /// [`Order::refund_line`]); all failed -> `RefundPending` for the whole total.
    ///
    /// # Errors
    /// [`Error::IllegalTransition`] unless fulfilling, [`Error::LinesPending`].
    pub fn finish_fulfilment(&mut self, now: DateTime<Utc>) -> Result<Vec<OrderEvent>> {
        let count = |s: LineStatus| self.lines.iter().filter(|l| l.status == s).count();
        // A held line waits on an operator as a pending one waits on a supplier.
        let pending = count(LineStatus::Pending) + count(LineStatus::Held);
        let delivered = count(LineStatus::Delivered);
        if pending > 0 {
            next_status(self.status, Trigger::DeliverAll)?;
            return Err(Error::LinesPending { pending });
        }
        let trigger = if delivered == self.lines.len() {
            Trigger::DeliverAll
        } else if delivered == 0 {
            Trigger::RequestRefund
        } else {
            Trigger::DeliverPart
        };
        // Only Fulfilling may finish, even though RequestRefund is also legal from other states.
        if self.status != OrderStatus::Fulfilling {
            return Err(Error::IllegalTransition {
                from: self.status,
                trigger,
            });
        }
        let (to, version) = self.prepare(trigger)?;
        let event = match trigger {
            Trigger::DeliverAll => OrderEvent::Delivered,
            Trigger::DeliverPart => OrderEvent::PartiallyDelivered {
                refund: self.refund_amount()?,
            },
            _ => OrderEvent::RefundRequested {
                amount: self.refund_amount()?,
                reason: "no line could be delivered".to_owned(),
            },
        };
        self.commit(to, version, now);
        Ok(vec![event])
    }

    /// Refunds one failed line of a partially delivered order (refunded when every other line
    /// was refunded after sales).
    ///
    /// # Errors
    /// [`Error::WrongStatus`] unless partially delivered, [`Error::UnknownLine`],
    /// [`Error::LineNotFailed`].
    pub fn refund_line(&mut self, no: u16, now: DateTime<Utc>) -> Result<Vec<OrderEvent>> {
        let version = self.require(OrderStatus::PartiallyDelivered)?;
        let i = self.line_index(no)?;
        let line = &mut Arc::make_mut(&mut self.lines)[i];
        if line.status != LineStatus::Failed {
            return Err(Error::LineNotFailed {
                line: no,
                status: line.status,
            });
        }
        line.status = LineStatus::Refunded;
        let amount = line.amount;
        let mut events = vec![OrderEvent::LineRefunded { line: no, amount }];
        // Its other lines refunded after sales: nothing is left, the order is refunded.
        if self.lines.iter().all(|l| l.status == LineStatus::Refunded) {
            self.status = next_status(self.status, Trigger::CompleteRefund)?;
            events.push(OrderEvent::Refunded {
                amount: self.refunded_amount()?,
            });
        }
        self.version = version;
        self.updated_at = now;
        Ok(events)
    }

    /// Expires an unpaid order once its window has closed.
    ///
    /// # Errors
    /// [`Error::IllegalTransition`] unless awaiting payment, [`Error::NotYetExpired`] when
    /// `now < expires_at`.
    pub fn expire(&mut self, now: DateTime<Utc>) -> Result<Vec<OrderEvent>> {
        let (to, version) = self.prepare(Trigger::Expire)?;
        if now < self.expires_at {
            return Err(Error::NotYetExpired {
                expires_at: self.expires_at,
            });
        }
        self.commit(to, version, now);
        Ok(vec![OrderEvent::Expired])
    }

    /// Cancels an unpaid order. The reason is cut to [`MAX_REASON_CHARS`].
    ///
    /// # Errors
    /// [`Error::IllegalTransition`] unless awaiting payment.
    pub fn cancel(&mut self, reason: String, now: DateTime<Utc>) -> Result<Vec<OrderEvent>> {
        let (to, version) = self.prepare(Trigger::Cancel)?;
        self.commit(to, version, now);
        Ok(vec![OrderEvent::Cancelled {
            reason: bounded(reason),
        }])
    }

    /// Asks for a refund of everything not yet refunded ([`Order::refundable_amount`]).
    ///
    /// # Errors
    /// [`Error::IllegalTransition`] unless paid, fulfilling, delivered or partially delivered.
    pub fn request_refund(
        &mut self,
        reason: String,
        now: DateTime<Utc>,
    ) -> Result<Vec<OrderEvent>> {
        let (to, version) = self.prepare(Trigger::RequestRefund)?;
        let amount = self.refundable_amount()?;
        self.commit(to, version, now);
        Ok(vec![OrderEvent::RefundRequested {
            amount,
            reason: bounded(reason),
        }])
    }

    /// Completes a pending refund: every line not yet refunded is marked refunded.
    ///
    /// # Errors
    /// [`Error::IllegalTransition`] unless a refund is pending.
    pub fn complete_refund(&mut self, now: DateTime<Utc>) -> Result<Vec<OrderEvent>> {
        // After-sales refunds end delivered orders through their own commands.
        if self.status != OrderStatus::RefundPending {
            return Err(Error::IllegalTransition {
                from: self.status,
                trigger: Trigger::CompleteRefund,
            });
        }
        let (to, version) = self.prepare(Trigger::CompleteRefund)?;
        let amount = self.refundable_amount()?;
        for line in Arc::make_mut(&mut self.lines) {
            line.status = LineStatus::Refunded;
        }
        self.commit(to, version, now);
        Ok(vec![OrderEvent::Refunded { amount }])
    }
}
