//! Operator views: order search (`shop.orders()`) and card lookup by code (`shop.stock()`).
//! Every call names its [`Actor`] and leaves an audit record.

use chrono::{DateTime, Utc};
use quanyi_core::{Actor, BatchId, CardId, OrderId, SkuId};
use quanyi_order::{LineStatus, Order};
use quanyi_storage::{
    AuditAction, AuditOutcome, CardState, MAX_SEARCH_PAGE, OrderChange, OrderCursor, OrderQuery,
    StockCount, StoredCard,
};
use quanyi_vault::{CardKey, IndexScheme};

use crate::{Error, Result, Shop};

/// The orders of a shop, for operators: `shop.orders()`.
#[derive(Debug, Clone, Copy)]
pub struct Orders<'a> {
    pub(crate) shop: &'a Shop,
}

/// One page of an order search.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderPage {
    /// The orders, newest first (placement time, then id).
    pub orders: Vec<Order>,
    /// Where the next page starts: `None` when this page is the last. (A full page of
    /// [`MAX_SEARCH_PAGE`] orders always has one, which may lead to an empty page.)
    pub next: Option<OrderCursor>,
}

/// An operator's decision on a line held past the supplier deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeldResolution {
    /// The supplier did it (the operator checked): the line is delivered. Only for lines that
    /// hand over no codes (direct top-ups, memberships).
    Delivered,
    /// The supplier did not and will not: the line fails and is refunded.
    Failed,
}

impl Orders<'_> {
    /// Decides a line held for an operator past the supplier deadline
    /// ([`OverduePolicy::Hold`](crate::OverduePolicy::Hold)), with the operator's reason. The
    /// decision and its audit record (`held_line_resolved`, naming the actor) are one write;
    /// when no line is left waiting, the order finishes and what failed is refunded through the
    /// payment gateway. Answers the order after.
    ///
    /// # Errors
    /// [`Error::UnknownOrder`]; [`Error::InvalidInput`] for a blank, unprintable or too long
    /// reason;
    /// [`Error::Order`] (`line_not_held`, `unknown_line`, `card_count_mismatch` for a line
    /// that hands over codes declared delivered); [`Error::NoPaymentGateway`] when a refund is
    /// due and the shop has no gateway; [`Error::Storage`] (a `conflict` when the order changed
    /// meanwhile: read it again and decide again).
    pub async fn resolve_held(
        &self,
        actor: &Actor,
        id: OrderId,
        line: u16,
        resolution: HeldResolution,
        reason: &str,
    ) -> Result<Order> {
        let reason = reason.trim();
        if reason.is_empty()
            || reason.chars().any(char::is_control)
            || reason.chars().count() > quanyi_order::MAX_REASON_CHARS
        {
            return Err(Error::InvalidInput(format!(
                "a decision on a held line needs a printable reason of at most {} characters",
                quanyi_order::MAX_REASON_CHARS
            )));
        }
        let shop = self.shop;
        let mut order = shop.order(id).await?;
        let expected = order.version();
        let now = shop.now();
        let delivered = resolution == HeldResolution::Delivered;
        if order.line(line).map(|l| l.status) != Some(LineStatus::Held) {
            // Refused by the order below with its reason; checked here first so that a refused
            // decision leaves nothing behind (not even the job).
            order.resolve_held_line(line, delivered, reason.to_owned(), now)?;
        }
        // The delivery job pays back what the decision fails, should the pay back below not
        // finish (queued first: a job for a decision that is then refused finds nothing to do).
        let job = quanyi_core::JobId::generate(now, &mut rand::thread_rng());
        shop.store_ref()
            .enqueue(
                &quanyi_storage::NewJob {
                    id: job,
                    tenant: shop.tenant.clone(),
                    kind: crate::DELIVER_ORDER_JOB.into(),
                    dedupe_key: format!("deliver:{id}:held:{line}"),
                    payload: serde_json::json!({ "order": id }),
                    run_at: now,
                },
                now,
            )
            .await?;
        let mut events = order.resolve_held_line(line, delivered, reason.to_owned(), now)?;
        if order
            .lines()
            .iter()
            .all(|l| !matches!(l.status, LineStatus::Pending | LineStatus::Held))
        {
            events.extend(order.finish_fulfilment(now)?);
        }
        let envs = shop.envelopes("order", id, order.version(), events, now);
        let record = shop.audit_record(
            &actor.to_string(),
            AuditAction::HeldLineResolved,
            id.to_string(),
            AuditOutcome::Allowed,
            format!(
                "line {line} {}: {reason}",
                if delivered { "delivered" } else { "failed" }
            ),
        );
        shop.store_ref()
            .update_order(
                OrderChange {
                    order: &order,
                    expected_version: expected,
                    events: &envs,
                },
                Some(&record),
            )
            .await?;
        // What failed is paid back now (and by the queued job, should this not finish).
        shop.settle(id).await
    }

    /// Up to `limit` (1 to [`MAX_SEARCH_PAGE`]) of the shop's orders that match `query`, newest
    /// first, after `after` (the `next` of the page before). Every criterion given must hold;
    /// a window that cannot hold an order (its start not before its end) answers an empty page.
    /// The search is audited (`orders_searched`) with the actor and the number found.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a limit of 0 or past [`MAX_SEARCH_PAGE`]; [`Error::Storage`].
    pub async fn search(
        &self,
        actor: &Actor,
        query: &OrderQuery,
        after: Option<OrderCursor>,
        limit: usize,
    ) -> Result<OrderPage> {
        if limit == 0 || limit > MAX_SEARCH_PAGE {
            return Err(Error::InvalidInput(format!(
                "a search page holds 1 to {MAX_SEARCH_PAGE} orders"
            )));
        }
        let shop = self.shop;
        // One more than asked, to know whether another page follows; a store answers at most
        // MAX_SEARCH_PAGE, so a full page of that size says only that another may follow.
        let ask = (limit + 1).min(MAX_SEARCH_PAGE);
        let mut orders = shop
            .store_ref()
            .search_orders(&shop.tenant, query, after, ask)
            .await?;
        let more = orders.len() > limit || (ask == limit && orders.len() == limit);
        orders.truncate(limit);
        let next = more
            .then(|| orders.last().map(OrderCursor::after))
            .flatten();
        shop.audit(
            &actor.to_string(),
            AuditAction::OrdersSearched,
            "orders".to_owned(),
            AuditOutcome::Allowed,
            format!("{} found", orders.len()),
        )
        .await?;
        Ok(OrderPage { orders, next })
    }

    /// One order by id.
    ///
    /// # Errors
    /// [`Error::UnknownOrder`]; [`Error::Storage`].
    pub async fn get(&self, id: OrderId) -> Result<Order> {
        self.shop.order(id).await
    }
}

/// The card stock of a shop, for operators: `shop.stock()`.
#[derive(Debug, Clone, Copy)]
pub struct Stock<'a> {
    shop: &'a Shop,
}

/// A card found by its code: where it stands, never its plaintext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundCard {
    /// The card.
    pub card: CardId,
    /// Its SKU.
    pub sku: SkuId,
    /// The import or purchase it came in.
    pub batch: BatchId,
    /// Available, reserved, sold (with the order) or withdrawn.
    pub state: CardState,
    /// When it was stored.
    pub imported_at: DateTime<Utc>,
    /// The code as the operator gave it, masked (`AB****90`).
    pub masked: String,
}

impl Stock<'_> {
    /// Card-key stock of a SKU now: available, reserved and sold.
    ///
    /// # Errors
    /// [`Error::UnknownSku`]; [`Error::Storage`].
    pub async fn count(&self, sku: SkuId) -> Result<StockCount> {
        self.shop.stock_count(sku).await
    }

    /// Finds the card that holds `key` (its code, and its secret when the card has one),
    /// through the blind index: the current scheme, then the legacy one while cards indexed
    /// with it remain. The plaintext is never stored, logged or returned; the lookup is audited
    /// (`card_looked_up`) with the actor and the masked code, found or not.
    ///
    /// # Errors
    /// [`Error::Storage`]; a key ring error when the tenant's ring cannot be read.
    pub async fn find_card(&self, actor: &Actor, key: &CardKey) -> Result<Option<FoundCard>> {
        let shop = self.shop;
        let ring = shop.ring().await?;
        let store = shop.store_ref();
        let mut found = store
            .card_by_index(&shop.tenant, &ring.blind_index(key))
            .await?;
        if found.is_none() && ring.oldest_index_scheme() < IndexScheme::CURRENT {
            let legacy = ring.blind_index_as(key, IndexScheme::Legacy);
            found = store.card_by_index(&shop.tenant, &legacy).await?;
        }
        let masked = key.masked();
        shop.audit(
            &actor.to_string(),
            AuditAction::CardLookedUp,
            found
                .as_ref()
                .map_or_else(|| "none".to_owned(), |c| c.id.to_string()),
            AuditOutcome::Allowed,
            masked.clone(),
        )
        .await?;
        Ok(found.map(|c: StoredCard| FoundCard {
            card: c.id,
            sku: c.sku,
            batch: c.batch,
            state: c.state,
            imported_at: c.imported_at,
            masked,
        }))
    }
}

impl Shop {
    /// The shop's orders, for operators: search and lookup.
    pub fn orders(&self) -> Orders<'_> {
        Orders { shop: self }
    }

    /// The shop's card stock, for operators: counts and lookup by code.
    pub fn stock(&self) -> Stock<'_> {
        Stock { shop: self }
    }
}
