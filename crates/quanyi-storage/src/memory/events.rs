//! The event log, feed and audit ports of the memory store.

use super::*;

#[async_trait]
impl EventStore for MemoryStore {
    async fn append_events(&self, events: &[EventEnvelope]) -> Result<()> {
        self.state.lock().push_events(events)
    }

    async fn aggregate_events(
        &self,
        tenant: &TenantId,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> Result<Vec<EventEnvelope>> {
        let s = self.state.lock();
        Ok(s.aggregate_events
            .get(&(
                tenant.clone(),
                Cow::Owned(aggregate_type.to_owned()),
                Arc::from(aggregate_id),
            ))
            .map(|pos| pos.iter().filter_map(|p| s.events.get(*p)).collect())
            .unwrap_or_default())
    }

    async fn events_after(
        &self,
        after: Option<EventId>,
        limit: usize,
    ) -> Result<Vec<EventEnvelope>> {
        let s = self.state.lock();
        let start = match after {
            None => 0,
            Some(id) => s
                .event_pos
                .get(&id)
                .map(|p| p + 1)
                .ok_or_else(|| Error::not_found("event", id))?,
        };
        Ok(s.events.from(start).take(limit).collect())
    }

    async fn read_feed(
        &self,
        tenant: &TenantId,
        after: FeedPosition,
        limit: usize,
    ) -> Result<Vec<FeedEvent>> {
        let s = self.state.lock();
        let feed = s.events.feed(tenant);
        // Writes append under the lock, so the log order is the commit order: gap-free.
        let start = feed.partition_point(|p| (*p as u128) < after.raw());
        Ok(feed[start..]
            .iter()
            .take(limit)
            .filter_map(|p| {
                s.events.get(*p).map(|event| FeedEvent {
                    position: FeedPosition::from_raw(*p as u128 + 1),
                    event,
                })
            })
            .collect())
    }

    async fn feed_head(&self, tenant: &TenantId) -> Result<FeedPosition> {
        let s = self.state.lock();
        Ok(s.events
            .feed(tenant)
            .last()
            .map_or(FeedPosition::START, |p| {
                FeedPosition::from_raw(*p as u128 + 1)
            }))
    }

    async fn consumer_cursor(&self, tenant: &TenantId, name: &str) -> Result<Option<FeedPosition>> {
        check_consumer_name(name)?;
        let s = self.state.lock();
        Ok(s.consumers.get(&(tenant.clone(), name.to_owned())).copied())
    }

    async fn save_consumer_cursor(
        &self,
        tenant: &TenantId,
        name: &str,
        expected: Option<FeedPosition>,
        to: FeedPosition,
    ) -> Result<()> {
        check_consumer_name(name)?;
        let mut s = self.state.lock();
        let key = (tenant.clone(), name.to_owned());
        if s.consumers.get(&key).copied() != expected {
            return Err(Error::conflict("consumer", name, "cursor moved"));
        }
        s.consumers.insert(key, to);
        Ok(())
    }
}

#[async_trait]
impl AuditStore for MemoryStore {
    async fn append_audit(&self, record: &AuditRecord) -> Result<()> {
        let mut s = self.state.lock();
        if !s.audit_ids.insert(record.id) {
            return Err(Error::conflict(
                "audit record",
                record.id,
                "id already stored",
            ));
        }
        s.audit.push(record.clone());
        Ok(())
    }

    async fn audit_records(&self, tenant: &TenantId, limit: usize) -> Result<Vec<AuditRecord>> {
        let s = self.state.lock();
        Ok(s.audit
            .iter()
            .rev()
            .filter(|r| &r.tenant == tenant)
            .take(limit)
            .cloned()
            .collect())
    }
}
