//! Fulfilment through suppliers: direct top-ups and card keys routed over a line's supplier
//! routes, with failover only after a definite failure and circuit breakers; supplier stock.
//! What suppliers report back (callbacks, statements) is in `reports`.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use quanyi_core::{BatchId, CardId};
use quanyi_goods::{KindTag, SupplierRoute};
use quanyi_order::{AttemptOutcome, LineAttempt, LineStatus, Order, OrderEvent};
use quanyi_storage::NewCard;
use quanyi_supplier::{
    Attempt, AttemptResult, Availability, CardPurchase, FailureOutcome, Freshness, ProductCode,
    RequestId, RequestStatus, Route, RoutePlan, Step, SupplierError, SupplierId, TopUpOutcome,
    TopUpRequest, next_step,
};
use quanyi_vault::{CardKey, IndexScheme};

use crate::{Error, Result, Shop};

/// Where a supplier line stands after a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LineProgress {
    /// Delivered in this pass or before.
    Delivered,
    /// Every route failed definitively: the line is failed and owed a refund.
    Failed,
    /// Waiting for a supplier (a callback, a later query, or an open breaker).
    Pending,
}

/// What a supplier callback did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallbackOutcome {
    /// It finished its line (delivered, or failed over to the next route).
    Applied,
    /// Its line was settled already (a repeated, late or out-of-order callback); nothing changed.
    AlreadySettled,
}

/// Why a supplier's hand-over of card keys was refused.
pub(crate) const DUPLICATE_HAND_OVER: &str =
    "the supplier handed over card keys the shop already holds";

fn to_history(order: &Order, no: u16) -> Vec<Attempt> {
    order
        .line(no)
        .map(|line| {
            line.attempts
                .iter()
                .filter_map(|a| {
                    let supplier = SupplierId::new(a.supplier.clone()).ok()?;
                    let result = match &a.outcome {
                        AttemptOutcome::Pending => AttemptResult::Pending,
                        AttemptOutcome::Succeeded { .. } => AttemptResult::Succeeded,
                        AttemptOutcome::Definite { reason }
                        | AttemptOutcome::Rejected { reason } => AttemptResult::Definite {
                            reason: reason.clone(),
                        },
                        AttemptOutcome::Unknown { reason } => AttemptResult::Unknown {
                            reason: reason.clone(),
                        },
                    };
                    Some(Attempt { supplier, result })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The route plan of a SKU's routes.
pub(crate) fn plan_of(routes: &[SupplierRoute]) -> Option<RoutePlan> {
    let routes = routes
        .iter()
        .map(|r| {
            Some(Route {
                supplier: SupplierId::new(r.supplier.clone()).ok()?,
                product: ProductCode::new(r.product.clone()).ok()?,
                cost: r.cost,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    RoutePlan::new(routes).ok()
}

fn outcome_of_error(e: &SupplierError) -> AttemptOutcome {
    match e.outcome() {
        FailureOutcome::Definite => AttemptOutcome::Definite {
            reason: e.to_string(),
        },
        FailureOutcome::Unknown => AttemptOutcome::Unknown {
            reason: e.to_string(),
        },
    }
}

impl Shop {
    /// The supplier routes of a SKU, when every supplier they name is registered.
    pub(crate) fn fulfillable_routes(&self, routes: &[SupplierRoute]) -> bool {
        !routes.is_empty()
            && routes.iter().all(|r| {
                SupplierId::new(r.supplier.clone())
                    .is_ok_and(|id| self.inner.suppliers.contains_key(&id))
            })
    }

    /// One pass over a pending supplier line: calls or queries suppliers as the route planner
    /// says, records every answer on the line, and delivers or fails it when that is decided.
    ///
    /// A card purchase answered under a request in `rejected` (its cards were refused as
    /// duplicates by an earlier pass's write) is recorded as [`AttemptOutcome::Rejected`], and
    /// the planner moves on to the next route as after a definite failure.
    ///
    /// The routes are the line's own, as it was sold ([`OrderLine::terms`]), not its goods'.
    ///
    /// [`OrderLine::terms`]: quanyi_order::OrderLine::terms
    pub(crate) async fn fulfil_supplier_line(
        &self,
        order: &mut Order,
        no: u16,
        events: &mut Vec<OrderEvent>,
        bought: &mut Vec<NewCard>,
        rejected: &HashSet<String>,
        now: DateTime<Utc>,
    ) -> Result<LineProgress> {
        let Some(line) = order.line(no).cloned() else {
            return Ok(LineProgress::Failed);
        };
        if line.status != LineStatus::Pending {
            return Ok(match line.status {
                LineStatus::Delivered => LineProgress::Delivered,
                _ => LineProgress::Failed,
            });
        }
        let routes = &line.terms.routes;
        let plan = plan_of(routes).filter(|_| self.fulfillable_routes(routes));
        let Some(plan) = plan else {
            events.extend(order.fail_line(no, "no usable supplier route".into(), now)?);
            return Ok(LineProgress::Failed);
        };
        let breakers = &self.inner.breakers;
        // Card keys a supplier handed over in this pass, sealed when the line is done.
        let mut handed_over: Vec<CardKey> = Vec::new();
        // Each route is called at most once and queried at most once per pass.
        for _ in 0..(plan.routes().len() * 2 + 2) {
            let step = next_step(&plan, &to_history(order, no), breakers, now)
                .map_err(|e| Error::InvalidInput(e.to_string()))?;
            let (route, query) = match step {
                Step::Done => {
                    let cards = self
                        .seal_bought(order, &line, bought, &mut handed_over, now)
                        .await?;
                    events.extend(order.deliver_line(no, cards, line.quantity, now)?);
                    return Ok(LineProgress::Delivered);
                }
                Step::Exhausted => {
                    events.extend(order.fail_line(
                        no,
                        "every supplier route failed".into(),
                        now,
                    )?);
                    return Ok(LineProgress::Failed);
                }
                Step::Wait { .. } => return Ok(LineProgress::Pending),
                Step::Call(route) => (route, false),
                Step::Query(route) => (route, true),
            };
            let Some(supplier) = self.inner.suppliers.get(&route.supplier) else {
                return Ok(LineProgress::Pending);
            };
            if !query && !breakers.try_acquire(&route.supplier, now) {
                return Ok(LineProgress::Pending);
            }
            let request = RequestId::for_line(order.id(), no, &route.supplier);
            let outcome = if query {
                match supplier.query(&request).await {
                    Ok(RequestStatus::NotFound) => AttemptOutcome::Definite {
                        reason: "the supplier never received the request".into(),
                    },
                    Ok(RequestStatus::Pending) => AttemptOutcome::Pending,
                    Ok(RequestStatus::Succeeded { receipt, cards }) => {
                        handed_over = cards;
                        AttemptOutcome::Succeeded { receipt }
                    }
                    Ok(RequestStatus::Failed { reason }) => AttemptOutcome::Definite { reason },
                    // Still unknown: ask again on the next pass, try no one else.
                    Err(e) => {
                        tracing::warn!(order = %order.id(), line = no, error = %e, "supplier query failed");
                        return Ok(LineProgress::Pending);
                    }
                }
            } else if line.kind == KindTag::CardKey {
                let purchase = CardPurchase {
                    request: request.clone(),
                    product: route.product.clone(),
                    quantity: line.quantity,
                };
                match supplier.purchase_cards(&purchase).await {
                    Ok(outcome) => {
                        handed_over = outcome.cards;
                        AttemptOutcome::Succeeded {
                            receipt: format!("{} card(s)", handed_over.len()),
                        }
                    }
                    Err(e) => outcome_of_error(&e),
                }
            } else {
                let account = line.account.clone().unwrap_or_default();
                let request = TopUpRequest {
                    request: request.clone(),
                    product: route.product.clone(),
                    account,
                    quantity: line.quantity,
                };
                match supplier.submit_top_up(&request).await {
                    Ok(TopUpOutcome::Accepted) => AttemptOutcome::Pending,
                    Ok(TopUpOutcome::Succeeded { receipt }) => {
                        AttemptOutcome::Succeeded { receipt }
                    }
                    Err(e) => outcome_of_error(&e),
                }
            };
            let outcome = match outcome {
                AttemptOutcome::Succeeded { .. } if rejected.contains(request.as_str()) => {
                    handed_over.clear();
                    AttemptOutcome::Rejected {
                        reason: DUPLICATE_HAND_OVER.into(),
                    }
                }
                other => other,
            };
            match &outcome {
                AttemptOutcome::Succeeded { .. } | AttemptOutcome::Pending => {
                    breakers.record_success(&route.supplier, now);
                }
                AttemptOutcome::Definite { .. }
                | AttemptOutcome::Unknown { .. }
                | AttemptOutcome::Rejected { .. } => {
                    breakers.record_failure(&route.supplier, now);
                }
            }
            let pending = matches!(outcome, AttemptOutcome::Pending);
            let unknown_after_query = query && matches!(outcome, AttemptOutcome::Unknown { .. });
            events.extend(order.record_attempt(
                no,
                LineAttempt {
                    supplier: route.supplier.clone(),
                    request: request.clone(),
                    outcome,
                    at: now,
                },
                now,
            )?);
            if pending || unknown_after_query {
                return Ok(LineProgress::Pending);
            }
        }
        Ok(LineProgress::Pending)
    }

    /// The card ids for a line that is done: none for a top-up; for supplier card keys, the cards
    /// the supplier handed over, sealed and queued in `bought` (stored sold to the order in the
    /// same write that delivers the line). When the hand-over happened in an earlier pass that
    /// was not stored, the supplier is asked again under the same request id.
    async fn seal_bought(
        &self,
        order: &Order,
        line: &quanyi_order::OrderLine,
        bought: &mut Vec<NewCard>,
        cards: &mut Vec<CardKey>,
        now: DateTime<Utc>,
    ) -> Result<Vec<CardId>> {
        if line.kind != KindTag::CardKey {
            return Ok(Vec::new());
        }
        if u32::try_from(cards.len()).ok() != Some(line.quantity) {
            let route = line
                .attempts
                .iter()
                .rev()
                .find(|a| matches!(a.outcome, AttemptOutcome::Succeeded { .. }))
                .and_then(|a| SupplierId::new(a.supplier.clone()).ok())
                .ok_or_else(|| Error::InvalidInput("a done supplier line has no success".into()))?;
            let supplier = self
                .inner
                .suppliers
                .get(&route)
                .ok_or_else(|| Error::UnknownSupplier(route.to_string()))?;
            let request = RequestId::for_line(order.id(), line.no, &route);
            if let RequestStatus::Succeeded { cards: again, .. } =
                supplier.query(&request).await.map_err(Error::Supplier)?
            {
                *cards = again;
            }
            if u32::try_from(cards.len()).ok() != Some(line.quantity) {
                return Err(Error::InvalidInput(format!(
                    "supplier {route} handed over {} card(s) for {}",
                    cards.len(),
                    line.quantity
                )));
            }
        }
        self.seal_new(line.sku, cards, bought, now).await
    }

    /// Seals card keys that enter the vault already sold (bought from a supplier, or generated)
    /// and queues them in `bought`; returns their ids.
    pub(crate) async fn seal_new(
        &self,
        sku: quanyi_core::SkuId,
        cards: &[CardKey],
        bought: &mut Vec<NewCard>,
        now: DateTime<Utc>,
    ) -> Result<Vec<CardId>> {
        let uses: u64 = cards
            .iter()
            .map(|c| 1 + u64::from(c.secret.is_some()))
            .sum();
        let ring = self.ring_with_budget(uses).await?;
        let mut rng = rand::thread_rng();
        let batch = BatchId::generate(now, &mut rng);
        let ids = CardId::generate_sequence(now, &mut rng, cards.len());
        let legacy = ring.oldest_index_scheme() < IndexScheme::CURRENT;
        for (card, id) in cards.iter().zip(&ids) {
            let sealed = ring.seal_card(&self.tenant, sku, *id, card, &mut rng)?;
            let blind_index = ring.blind_index(card);
            bought.push(NewCard {
                id: *id,
                sku,
                batch,
                blind_index,
                index_scheme: IndexScheme::CURRENT,
                legacy_index: legacy
                    .then(|| ring.blind_index_as(card, IndexScheme::Legacy))
                    .filter(|l| *l != blind_index),
                sealed,
                key_id: ring.active_key_id(),
            });
        }
        Ok(ids)
    }

    /// Delivers a link line with one signed, expiring link per unit, sealed and stored sold to
    /// the order with the delivery.
    pub(crate) async fn sign_links(
        &self,
        order: &mut Order,
        no: u16,
        events: &mut Vec<OrderEvent>,
        bought: &mut Vec<NewCard>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let (Some(line), Some((base, valid_for))) = (order.line(no).cloned(), &self.inner.links)
        else {
            events.extend(order.fail_line(no, "signed links are not configured".into(), now)?);
            return Ok(());
        };
        let signer = quanyi_vault::LinkSigner::new(&self.inner.root, &self.tenant);
        let mut links = Vec::with_capacity(usize::try_from(line.quantity).unwrap_or(0));
        for unit in 1..=line.quantity {
            let subject = format!("{}.{no}.{unit}", order.id());
            let link = signer
                .sign(base, &subject, now + *valid_for)
                .ok_or_else(|| Error::InvalidInput("link subject".into()))?;
            links.push(CardKey {
                code: quanyi_vault::CardCode::new(link)?,
                secret: None,
            });
        }
        let ids = self.seal_new(line.sku, &links, bought, now).await?;
        events.extend(order.deliver_line(no, ids, line.quantity, now)?);
        Ok(())
    }

    /// Checks a signed link for the host's redemption endpoint: which order, line and unit it
    /// was delivered for, if it is unchanged, unexpired and this tenant's.
    ///
    /// # Errors
    /// [`Error::Link`].
    pub fn verify_link(&self, link: &str) -> Result<(quanyi_core::OrderId, u16, u32)> {
        let signer = quanyi_vault::LinkSigner::new(&self.inner.root, &self.tenant);
        let subject = signer.verify(link, self.now()).map_err(Error::Link)?;
        let mut parts = subject.split('.');
        let parsed = (|| {
            let order = parts.next()?.parse().ok()?;
            let line = parts.next()?.parse().ok()?;
            let unit = parts.next()?.parse().ok()?;
            parts.next().is_none().then_some((order, line, unit))
        })();
        parsed.ok_or(Error::Link(quanyi_vault::LinkError::Malformed))
    }

    /// Delivers a reservation-code line with freshly generated codes (Crockford base 32 with a
    /// check character), sealed and stored sold to the order with the delivery.
    pub(crate) async fn generate_codes(
        &self,
        order: &mut Order,
        no: u16,
        events: &mut Vec<OrderEvent>,
        bought: &mut Vec<NewCard>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let Some(line) = order.line(no).cloned() else {
            return Ok(());
        };
        // The generator is not held across an await: the future must stay `Send`.
        let codes = {
            let mut rng = rand::thread_rng();
            (0..line.quantity)
                .map(|_| {
                    quanyi_vault::generate_code(&mut rng).map(|code| CardKey { code, secret: None })
                })
                .collect::<quanyi_vault::Result<Vec<_>>>()?
        };
        let ids = self.seal_new(line.sku, &codes, bought, now).await?;
        events.extend(order.deliver_line(no, ids, line.quantity, now)?);
        Ok(())
    }

    /// What a SKU can sell now, as one figure: the vault pool's free cards, the sum of the
    /// suppliers' fresh stock figures (a stale or missing figure is asked for again, and counts
    /// as nothing if the supplier does not answer), or unlimited.
    ///
    /// # Errors
    /// [`Error::UnknownSku`]; [`Error::Storage`].
    pub async fn availability(&self, sku: quanyi_core::SkuId) -> Result<Availability> {
        let goods = self.goods_of(sku).await?;
        let Some(s) = goods.sku(sku) else {
            return Err(Error::UnknownSku(sku));
        };
        match s.stock {
            quanyi_goods::StockSource::Unlimited => Ok(Availability::Unlimited),
            quanyi_goods::StockSource::VaultPool => Ok(Availability::Limited(
                self.store_ref()
                    .stock(&self.tenant, sku, self.now())
                    .await?
                    .available,
            )),
            quanyi_goods::StockSource::Supplier => {
                let Some(plan) = plan_of(&s.routes) else {
                    return Ok(Availability::Limited(0));
                };
                self.refresh_stale_stock(&plan).await;
                Ok(self
                    .inner
                    .supplier_stock
                    .lock()
                    .available_for(&plan, self.now()))
            }
        }
    }

    /// Asks each route's supplier whose figure is stale or missing for its stock. A supplier
    /// that does not answer keeps its old figure, which ages out.
    pub(crate) async fn refresh_stale_stock(&self, plan: &RoutePlan) {
        {
            let mut watched = self.inner.watched_routes.lock();
            for route in plan.routes() {
                if !watched
                    .iter()
                    .any(|w| w.supplier == route.supplier && w.product == route.product)
                {
                    watched.push(route.clone());
                }
            }
        }
        self.refresh_routes(plan.routes()).await;
    }

    /// Refreshes the stale stock figures of every supplier route this process has been asked
    /// about; returns how many routes it asked. The [`Worker`](crate::Worker) calls it on every
    /// pass, so figures stay fresh between orders.
    pub async fn refresh_supplier_stock(&self) -> usize {
        let routes = self.inner.watched_routes.lock().clone();
        self.refresh_routes(&routes).await
    }

    async fn refresh_routes(&self, routes: &[Route]) -> usize {
        let mut asked = 0;
        for route in routes {
            let now = self.now();
            let fresh = matches!(
                self.inner
                    .supplier_stock
                    .lock()
                    .lookup(&route.supplier, &route.product, now),
                Freshness::Fresh(_)
            );
            if fresh {
                continue;
            }
            let Some(supplier) = self.inner.suppliers.get(&route.supplier) else {
                continue;
            };
            asked += 1;
            match supplier.stock(&route.product).await {
                Ok(stock) => self.inner.supplier_stock.lock().record(route, stock, now),
                Err(e) => {
                    tracing::warn!(supplier = %route.supplier, error = %e, "supplier stock unavailable");
                }
            }
        }
        asked
    }
}
