//! The order port of the memory store.

use super::*;

#[async_trait]
impl OrderStore for MemoryStore {
    async fn place_order(&self, new: NewOrder<'_>, now: DateTime<Utc>) -> Result<Vec<CardId>> {
        Claim::check_all(new.claims)?;
        BudgetTake::check_all(new.budgets)?;
        let staged = Staged::of(new.order, new.events);
        let mut s = self.state.lock();
        let order = new.order;
        let tenant = order.tenant().clone();
        if let Some(taken) = new.claims.iter().find_map(|c| {
            s.claims
                .get(&(tenant.clone(), c.scope.clone(), c.key.clone()))
        }) {
            return Err(Error::Claimed {
                claim: Box::new(taken.clone()),
            });
        }
        if s.orders.contains_key(&(tenant.clone(), order.id())) {
            return Err(Error::conflict("order", order.id(), "id already stored"));
        }
        if let Some(changed) = new.priced_from.iter().find(|g| {
            s.goods
                .get(&(tenant.clone(), g.id))
                .is_none_or(|stored| stored.version() != g.version)
        }) {
            return Err(Error::conflict("goods", changed.id, GOODS_CHANGED));
        }
        if let Some(read) = new.pricing_version {
            if s.pricing.get(&tenant).map_or(0, |p| p.version) != read {
                return Err(Error::conflict("pricing", &tenant, PRICING_CHANGED));
            }
        }
        for limit in new.member_limits {
            let requested = order.quantity_of(limit.sku);
            let already = s.member_quantity(&tenant, order.member(), limit);
            if already.saturating_add(u64::from(requested)) > u64::from(limit.limit) {
                return Err(Error::MemberLimitExceeded {
                    sku: limit.sku,
                    limit: limit.limit,
                    already,
                    requested,
                });
            }
        }
        if s.event_conflict(new.events).is_some() {
            return Err(Error::conflict("event", order.id(), "id already stored"));
        }
        if let Some(spent) = new.budgets.iter().find(|b| {
            let used = s
                .budgets
                .get(&(tenant.clone(), b.scope.clone(), b.key.clone()))
                .copied()
                .unwrap_or(0);
            used.saturating_add(b.amount) > b.limit
        }) {
            return Err(Error::BudgetExhausted {
                scope: spent.scope.clone(),
                key: spent.key.clone(),
            });
        }
        // Choose every card before changing any, so a shortage changes nothing.
        let mut chosen: Vec<CardId> = Vec::new();
        for r in new.reservations {
            if r.quantity == 0 {
                return Err(Error::Invalid("reserve of zero cards".into()));
            }
            let want = usize::try_from(r.quantity).unwrap_or(usize::MAX);
            let free = s.free_cards(&tenant, r.sku, now, want, &chosen);
            if free.len() < want {
                return Err(Error::OutOfStock {
                    sku: r.sku,
                    requested: r.quantity,
                    available: s.free_count(&tenant, r.sku, now),
                });
            }
            chosen.extend(free);
        }
        let until = order.expires_at();
        for id in &chosen {
            s.set_card_state(
                *id,
                CardState::Reserved {
                    order: order.id(),
                    until,
                },
            );
        }
        if !chosen.is_empty() {
            s.order_cards
                .entry((tenant.clone(), order.id()))
                .or_default()
                .extend(chosen.iter().copied());
        }
        s.member_orders
            .entry((tenant.clone(), order.member().clone()))
            .or_default()
            .push(order.id());
        if order.status() == OrderStatus::AwaitingPayment {
            s.unpaid
                .insert((order.expires_at(), tenant.clone(), order.id()));
        }
        for c in new.claims {
            s.claims
                .insert((tenant.clone(), c.scope.clone(), c.key.clone()), c.clone());
        }
        if !new.budgets.is_empty() {
            for b in new.budgets {
                *s.budgets
                    .entry((tenant.clone(), b.scope.clone(), b.key.clone()))
                    .or_default() += b.amount;
            }
            let taken = new
                .budgets
                .iter()
                .map(|b| (b.scope.clone(), b.key.clone(), b.amount))
                .collect();
            s.order_budgets.insert((tenant.clone(), order.id()), taken);
        }
        s.orders.insert((tenant, order.id()), staged.order);
        s.push_checked_events(staged.events);
        Ok(chosen)
    }

    async fn budget_used(&self, tenant: &TenantId, scope: &str, key: &str) -> Result<u64> {
        Ok(self
            .state
            .lock()
            .budgets
            .get(&(tenant.clone(), scope.to_owned(), key.to_owned()))
            .copied()
            .unwrap_or(0))
    }

    async fn claim(&self, tenant: &TenantId, scope: &str, key: &str) -> Result<Option<Claim>> {
        Ok(self
            .state
            .lock()
            .claims
            .get(&(tenant.clone(), scope.to_owned(), key.to_owned()))
            .cloned())
    }

    async fn update_order(
        &self,
        change: OrderChange<'_>,
        audit: Option<&AuditRecord>,
    ) -> Result<()> {
        let staged = Staged::of(change.order, change.events);
        let trail = Trail { events: &[], audit };
        let mut s = self.state.lock();
        s.check_order_change(&change)?;
        s.check_trail(&trail, change.order.id())?;
        s.push_trail(&trail);
        let replaced = s.apply_order_change(staged);
        drop(s);
        drop(replaced);
        Ok(())
    }

    async fn refund_order(&self, change: OrderChange<'_>, write: RefundWrite<'_>) -> Result<()> {
        let staged = Staged::of(change.order, change.events);
        let trail = Trail {
            events: &[],
            audit: write.audit,
        };
        let order = change.order.id();
        let tenant = change.order.tenant();
        let at = change.order.updated_at();
        check_paid(write.paid, tenant)?;
        let mut s = self.state.lock();
        s.check_order_change(&change)?;
        s.check_trail(&trail, order)?;
        for id in write.void {
            match s.cards.get(id).filter(|c| &c.tenant == tenant) {
                Some(c) if c.revealed_at.is_some() => return Err(Error::Revealed { card: *id }),
                Some(c)
                    if c.voided_at.is_none()
                        && matches!(c.state, CardState::Sold { order: o, .. } if o == order) => {}
                _ => return Err(Error::conflict("card", id, "not sold to the order")),
            }
        }
        if let Some(paid) = write.paid {
            if s.refund_ids
                .contains(&(tenant.clone(), paid.refund_id.clone()))
            {
                return Err(Error::conflict("refund", &paid.refund_id, "paid already"));
            }
        }
        for id in write.void {
            if let Some(c) = s.cards.get_mut(id) {
                c.voided_at = Some(at);
            }
        }
        if let Some(paid) = write.paid {
            s.refund_ids
                .insert((tenant.clone(), paid.refund_id.clone()));
            s.refunds_paid
                .entry(tenant.clone())
                .or_default()
                .insert((paid.paid_at, paid.refund_id.clone()), paid.clone());
        }
        s.push_trail(&trail);
        let replaced = s.apply_order_change(staged);
        drop(s);
        drop(replaced);
        Ok(())
    }

    async fn refunds_paid(
        &self,
        tenant: &TenantId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        after: Option<(DateTime<Utc>, String)>,
        limit: usize,
    ) -> Result<Vec<PaidRefund>> {
        let s = self.state.lock();
        Ok(s.refunds_paid
            .get(tenant)
            .into_iter()
            .flat_map(|ledger| ledger.range((from, String::new())..))
            .take_while(|((at, _), _)| *at < to)
            .filter(|(key, _)| after.as_ref().is_none_or(|cursor| *key > cursor))
            .take(limit)
            .map(|(_, paid)| paid.clone())
            .collect())
    }

    async fn refund_queue(
        &self,
        tenant: &TenantId,
        after: Option<(DateTime<Utc>, OrderId)>,
        limit: usize,
    ) -> Result<Vec<Order>> {
        let s = self.state.lock();
        let shared: Vec<Arc<Order>> = s
            .refunds
            .get(tenant)
            .into_iter()
            .flatten()
            .filter(|(due, id)| after.is_none_or(|cursor| (*due, *id) > cursor))
            .take(limit)
            .filter_map(|(_, id)| s.orders.get(&(tenant.clone(), *id)).cloned())
            .collect();
        drop(s);
        Ok(shared.iter().map(|o| Order::clone(o)).collect())
    }

    async fn close_unpaid_order(&self, change: OrderChange<'_>) -> Result<u32> {
        let staged = Staged::of(change.order, change.events);
        let mut s = self.state.lock();
        s.check_order_change(&change)?;
        let released = s.release(change.order.tenant(), change.order.id());
        let tenant = change.order.tenant().clone();
        // The budgets the order took go back, once: the order's record of them goes with it.
        if let Some(taken) = s.order_budgets.remove(&(tenant.clone(), change.order.id())) {
            for (scope, key, amount) in taken {
                if let Some(used) = s.budgets.get_mut(&(tenant.clone(), scope, key)) {
                    *used = used.saturating_sub(amount);
                }
            }
        }
        let replaced = s.apply_order_change(staged);
        drop(s);
        drop(replaced);
        Ok(released)
    }

    async fn order(&self, tenant: &TenantId, id: OrderId) -> Result<Option<Order>> {
        let shared = self.state.lock().orders.get(&(tenant.clone(), id)).cloned();
        Ok(shared.map(|o| Order::clone(&o)))
    }

    async fn member_orders(
        &self,
        tenant: &TenantId,
        member: &MemberId,
        limit: usize,
    ) -> Result<Vec<Order>> {
        let s = self.state.lock();
        let mut out: Vec<Order> = s
            .member_orders
            .get(&(tenant.clone(), member.clone()))
            .map(|ids| {
                ids.iter()
                    .filter_map(|id| s.orders.get(&(tenant.clone(), *id)))
                    .map(|o| Order::clone(o))
                    .collect()
            })
            .unwrap_or_default();
        out.sort_by_key(|o| std::cmp::Reverse(o.id()));
        out.truncate(limit);
        Ok(out)
    }

    async fn orders_updated(
        &self,
        tenant: &TenantId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        after: Option<(DateTime<Utc>, OrderId)>,
        limit: usize,
    ) -> Result<Vec<Order>> {
        let s = self.state.lock();
        let mut out: Vec<&Order> = s
            .orders
            .iter()
            .filter(|((t, _), o)| {
                t == tenant
                    && o.updated_at() >= from
                    && o.updated_at() < to
                    && after.is_none_or(|cursor| (o.updated_at(), o.id()) > cursor)
            })
            .map(|(_, o)| &**o)
            .collect();
        out.sort_by_key(|o| (o.updated_at(), o.id()));
        Ok(out.into_iter().take(limit).cloned().collect())
    }

    async fn search_orders(
        &self,
        tenant: &TenantId,
        query: &OrderQuery,
        after: Option<OrderCursor>,
        limit: usize,
    ) -> Result<Vec<Order>> {
        if !query.is_satisfiable() {
            return Ok(Vec::new());
        }
        let s = self.state.lock();
        let mut out: Vec<&Order> = s
            .orders
            .iter()
            .filter(|((t, _), o)| {
                t == tenant && query.matches(o) && after.is_none_or(|c| c.precedes(o))
            })
            .map(|(_, o)| &**o)
            .collect();
        out.sort_by_key(|o| std::cmp::Reverse((crate::placed_at(o), o.id())));
        Ok(out
            .into_iter()
            .take(limit.min(crate::MAX_SEARCH_PAGE))
            .cloned()
            .collect())
    }

    async fn unpaid_orders_due(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<(TenantId, OrderId)>> {
        let s = self.state.lock();
        Ok(s.unpaid
            .iter()
            .take_while(|(at, _, _)| *at <= now)
            .take(limit)
            .map(|(_, t, id)| (t.clone(), *id))
            .collect())
    }
}
