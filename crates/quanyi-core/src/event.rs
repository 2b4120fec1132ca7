//! The envelope every domain event is stored and published in.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{EventId, TenantId};

/// A domain event: plain data with a stable dotted name such as `order.paid`.
pub trait DomainEvent: Serialize {
    /// The stable name of the event.
    fn name(&self) -> &'static str;
}

/// One stored event, with the aggregate it belongs to and the version it produced.
///
/// Events never carry plaintext card keys; see `quanyi-vault`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventEnvelope {
    /// Unique, time-ordered id.
    pub id: EventId,
    /// The tenant of the aggregate.
    pub tenant: TenantId,
    /// The aggregate type, for example `order`.
    pub aggregate_type: String,
    /// The aggregate's id as text.
    pub aggregate_id: String,
    /// The aggregate version this event produced (1 for the first).
    pub aggregate_version: u64,
    /// The event's name, for example `order.paid`.
    pub name: String,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
    /// The event body. Shared, so that copies of an envelope (stores, outboxes) are cheap.
    pub payload: Arc<serde_json::Value>,
}

impl EventEnvelope {
    /// Wraps a domain event.
    ///
    /// # Errors
    /// A serialization error if the event cannot be written as JSON (a bug in the event type).
    pub fn wrap<E: DomainEvent>(
        id: EventId,
        tenant: TenantId,
        aggregate_type: &str,
        aggregate_id: String,
        aggregate_version: u64,
        occurred_at: DateTime<Utc>,
        event: &E,
    ) -> Result<Self, serde_json::Error> {
        Ok(EventEnvelope {
            id,
            tenant,
            aggregate_type: aggregate_type.to_owned(),
            aggregate_id,
            aggregate_version,
            name: event.name().to_owned(),
            occurred_at,
            payload: Arc::new(serde_json::to_value(event)?),
        })
    }
}
