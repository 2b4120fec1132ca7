//! The memory store's event log and its index of event ids.

use super::*;

/// Where each stored event is in the log, by id. Events that arrive in id order (the events of
/// one shop, whose ids come from one sequence) are found by binary search over a plain list;
/// the others in an ordered map.
#[derive(Default)]
pub(super) struct EventIndex {
    /// Ids of the events that sorted after every event stored before them, in arrival order,
    /// so ascending.
    in_order: Vec<u128>,
    /// Their positions in the log.
    in_order_pos: Vec<usize>,
    /// The events that arrived out of id order.
    others: BTreeMap<u128, usize>,
}

impl EventIndex {
    /// The greatest id stored.
    pub(super) fn last(&self) -> Option<u128> {
        self.in_order.last().copied()
    }

    pub(super) fn get(&self, id: &EventId) -> Option<usize> {
        let id = id.seq();
        if self.last().is_none_or(|last| id > last) {
            return None;
        }
        match self.in_order.binary_search(&id) {
            Ok(i) => self.in_order_pos.get(i).copied(),
            Err(_) => self.others.get(&id).copied(),
        }
    }

    /// Records a new id (checked with [`EventIndex::get`] first).
    pub(super) fn insert(&mut self, id: &EventId, pos: usize) {
        let id = id.seq();
        if self.last().is_none_or(|last| id > last) {
            self.in_order.push(id);
            self.in_order_pos.push(pos);
        } else {
            self.others.insert(id, pos);
        }
    }
}

/// The event log in fixed-size chunks: appending never moves what is stored, so a long-lived
/// store does not copy (and fault in) an ever larger buffer as it grows. Events are kept without
/// the names most of them repeat (tenant, aggregate type, event name), which are stored once.
#[derive(Default)]
pub(super) struct EventLog {
    chunks: Vec<Vec<StoredEvent>>,
    len: usize,
    /// Every (tenant, aggregate type, event name) stored, by position.
    kinds: Vec<EventKind>,
    kind_pos: Map<EventKind, usize>,
    /// The tenant (its number in `tenants`) of each kind, by the kind's position.
    kind_tenant: Vec<usize>,
    tenants: Map<TenantId, usize>,
    /// Each tenant's events (log positions, ascending), by the tenant's number: its feed.
    by_tenant: Vec<Vec<usize>>,
    /// The correlation ids of the few events that have one, by log position (kept apart so
    /// that the many without one stay small).
    correlations: Map<usize, Arc<str>>,
}

/// The names an event shares with many others.
pub(super) type EventKind = (TenantId, Cow<'static, str>, Cow<'static, str>, u16);

/// An event as the log keeps it, without its names (and its schema version, kept with them).
pub(super) struct StoredEvent {
    id: EventId,
    payload: Payload,
    aggregate_id: Arc<str>,
    aggregate_version: u64,
    occurred_at: DateTime<Utc>,
    /// Position in [`EventLog::kinds`].
    kind: usize,
}

impl EventLog {
    pub(super) const CHUNK: usize = 4096;
    /// Kinds looked for by comparison before the map is asked.
    pub(super) const SCANNED_KINDS: usize = 16;

    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// The position of an event's names, stored first if new.
    pub(super) fn kind_of(&mut self, e: &EventEnvelope) -> usize {
        // A shop writes a handful of kinds: the first few are found by comparing short strings.
        let same = |(tenant, kind, name, version): &EventKind| {
            *name == e.name
                && *kind == e.aggregate_type
                && *version == e.schema_version
                && *tenant == e.tenant
        };
        if let Some(pos) = self.kinds.iter().take(Self::SCANNED_KINDS).position(same) {
            return pos;
        }
        let key: EventKind = (
            e.tenant.clone(),
            e.aggregate_type.clone(),
            e.name.clone(),
            e.schema_version,
        );
        if let Some(pos) = self.kind_pos.get(&key) {
            return *pos;
        }
        let pos = self.kinds.len();
        let next = self.tenants.len();
        let tenant = *self.tenants.entry(key.0.clone()).or_insert(next);
        if tenant == self.by_tenant.len() {
            self.by_tenant.push(Vec::new());
        }
        self.kind_tenant.push(tenant);
        self.kinds.push(key.clone());
        self.kind_pos.insert(key, pos);
        pos
    }

    /// A tenant's feed: the log positions of its events, ascending. A feed position is the log
    /// position plus one ([`FeedPosition::START`] is before the first).
    pub(super) fn feed(&self, tenant: &TenantId) -> &[usize] {
        self.tenants
            .get(tenant)
            .and_then(|t| self.by_tenant.get(*t))
            .map_or(&[], Vec::as_slice)
    }

    pub(super) fn push(&mut self, event: EventEnvelope) {
        let kind = self.kind_of(&event);
        if self.chunks.last().is_none_or(|c| c.len() == Self::CHUNK) {
            self.chunks.push(Vec::with_capacity(Self::CHUNK));
        }
        if let Some(feed) = self
            .kind_tenant
            .get(kind)
            .and_then(|t| self.by_tenant.get_mut(*t))
        {
            feed.push(self.len);
        }
        if let Some(correlation) = event.correlation_id {
            self.correlations.insert(self.len, correlation);
        }
        if let Some(chunk) = self.chunks.last_mut() {
            chunk.push(StoredEvent {
                id: event.id,
                payload: event.payload,
                aggregate_id: event.aggregate_id,
                aggregate_version: event.aggregate_version,
                occurred_at: event.occurred_at,
                kind,
            });
            self.len += 1;
        }
    }

    /// The envelope at `pos`, rebuilt from what is stored (copies share their strings).
    pub(super) fn get(&self, pos: usize) -> Option<EventEnvelope> {
        let e = self
            .chunks
            .get(pos / Self::CHUNK)
            .and_then(|c| c.get(pos % Self::CHUNK))?;
        let (tenant, aggregate_type, name, schema_version) = self.kinds.get(e.kind)?;
        Some(EventEnvelope {
            id: e.id,
            tenant: tenant.clone(),
            aggregate_type: aggregate_type.clone(),
            aggregate_id: e.aggregate_id.clone(),
            aggregate_version: e.aggregate_version,
            name: name.clone(),
            occurred_at: e.occurred_at,
            payload: e.payload.clone(),
            schema_version: *schema_version,
            correlation_id: self.correlations.get(&pos).cloned(),
        })
    }

    pub(super) fn from(&self, start: usize) -> impl Iterator<Item = EventEnvelope> + '_ {
        (start..self.len).filter_map(|p| self.get(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_event_is_smaller_than_its_envelope() {
        assert!(std::mem::size_of::<StoredEvent>() <= 80);
        assert!(std::mem::size_of::<EventEnvelope>() > std::mem::size_of::<StoredEvent>());
    }

    #[test]
    fn the_log_gives_back_what_it_was_given() {
        let mut log = EventLog::default();
        let mut rng = rand::thread_rng();
        let now = Utc::now();
        let tenants = [TenantId::default(), TenantId::new("other").unwrap()];
        let mut written = Vec::new();
        // More kinds than are found by comparison, so the map is used too.
        for n in 0..40u64 {
            let name: Cow<'static, str> = Cow::Owned(format!("thing.happened_{}", n % 20));
            let e = EventEnvelope {
                id: EventId::generate(now, &mut rng),
                tenant: tenants[usize::from(n % 3 == 0)].clone(),
                aggregate_type: Cow::Borrowed(if n % 2 == 0 { "order" } else { "goods" }),
                aggregate_id: Arc::from(format!("agg-{}", n % 7)),
                aggregate_version: n,
                name,
                occurred_at: now + Duration::seconds(i64::try_from(n).unwrap()),
                payload: Payload::of(&n).unwrap(),
                schema_version: u16::try_from(n % 3).unwrap() + 1,
                correlation_id: (n % 4 == 0).then(|| Arc::from(format!("placement:k-{n}"))),
            };
            log.push(e.clone());
            written.push(e);
        }
        assert_eq!(log.len(), written.len());
        assert_eq!(log.from(0).collect::<Vec<_>>(), written);
        assert_eq!(log.get(17), written.get(17).cloned());
        assert_eq!(log.get(40), None);
    }
}
