//! Orders that end unpaid: cancelled by their member, or expired past their deadline.

use quanyi_core::{MemberId, OrderId};
use quanyi_order::{Order, OrderStatus};
use quanyi_storage::OrderChange;

use crate::{Error, Result, Shop};

impl Shop {
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
