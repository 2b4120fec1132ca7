//! The envelope every domain event is stored and published in.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

use crate::{EventId, TenantId};

/// A domain event: plain data with a stable dotted name such as `order.paid`.
pub trait DomainEvent: Serialize {
    /// The stable name of the event.
    fn name(&self) -> &'static str;
}

/// The body of an event as compact JSON text.
///
/// Kept as text rather than as a `serde_json::Value` tree: an event body is written once and
/// read rarely, and the text is one shared allocation of the body's own size (a tree costs an
/// allocation per object and string). Clones share the text. It embeds in a serialized
/// envelope as JSON, not as a string.
#[derive(Clone)]
pub struct Payload(Arc<str>);

impl Payload {
    /// Serializes `body`.
    ///
    /// # Errors
    /// A serialization error if `body` cannot be written as JSON.
    pub fn of<T: Serialize + ?Sized>(body: &T) -> Result<Self, serde_json::Error> {
        // Written into a per-thread buffer, then copied once into the shared text.
        thread_local! {
            static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        BUF.with(|buf| {
            let mut buf = buf.try_borrow_mut().map_err(serde::ser::Error::custom)?;
            buf.clear();
            let written = serde_json::to_writer(&mut *buf, body)
                .and_then(|()| {
                    std::str::from_utf8(&buf)
                        .map(Arc::<str>::from)
                        .map_err(serde::ser::Error::custom)
                })
                .map(Payload);
            if buf.capacity() > Self::KEPT_BUFFER {
                *buf = Vec::new();
            }
            written
        })
    }

    /// The largest buffer kept per thread between calls to [`Payload::of`].
    const KEPT_BUFFER: usize = 16 * 1024;

    /// The JSON text.
    pub fn json(&self) -> &str {
        &self.0
    }

    /// The body as a JSON value.
    ///
    /// # Errors
    /// Never for a payload built by [`Payload::of`] or read from a store; the error type is
    /// serde_json's.
    pub fn to_value(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::from_str(self.json())
    }

    /// The body as `T`.
    ///
    /// # Errors
    /// A deserialization error if the body does not have the shape of `T`.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.json())
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        self.json() == other.json()
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.json())
    }
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Embedded as JSON: the text is checked (not copied) on the way out.
        let raw: &RawValue = serde_json::from_str(&self.0).map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Box::<RawValue>::deserialize(deserializer).map(|raw| Payload(Arc::from(raw.get())))
    }
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
    pub aggregate_type: Cow<'static, str>,
    /// The aggregate's id as text, shared by the events of one change.
    pub aggregate_id: Arc<str>,
    /// The aggregate version this event produced (1 for the first).
    pub aggregate_version: u64,
    /// The event's name, for example `order.paid`.
    pub name: Cow<'static, str>,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
    /// The event body as JSON. Shared, so that copies of an envelope (stores, outboxes) are
    /// cheap.
    pub payload: Payload,
}

impl EventEnvelope {
    /// Wraps a domain event.
    ///
    /// # Errors
    /// A serialization error if the event cannot be written as JSON (a bug in the event type).
    pub fn wrap<E: DomainEvent>(
        id: EventId,
        tenant: TenantId,
        aggregate_type: &'static str,
        aggregate_id: Arc<str>,
        aggregate_version: u64,
        occurred_at: DateTime<Utc>,
        event: &E,
    ) -> Result<Self, serde_json::Error> {
        Ok(EventEnvelope {
            id,
            tenant,
            aggregate_type: Cow::Borrowed(aggregate_type),
            aggregate_id,
            aggregate_version,
            name: Cow::Borrowed(event.name()),
            occurred_at,
            payload: Payload::of(event)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Paid {
        order: &'static str,
        amount: i64,
    }

    impl DomainEvent for Paid {
        fn name(&self) -> &'static str {
            "order.paid"
        }
    }

    fn envelope() -> EventEnvelope {
        EventEnvelope::wrap(
            EventId::from_uuid(uuid::Uuid::nil()),
            TenantId::default(),
            "order",
            Arc::from("o-1"),
            2,
            DateTime::UNIX_EPOCH,
            &Paid {
                order: "o-1",
                amount: 1990,
            },
        )
        .unwrap()
    }

    #[test]
    fn the_payload_is_compact_json_embedded_in_the_envelope() {
        let e = envelope();
        assert_eq!(e.payload.json(), r#"{"order":"o-1","amount":1990}"#);
        assert_eq!(e.payload.to_value().unwrap()["amount"], 1990);
        let doc = serde_json::to_string(&e).unwrap();
        assert!(
            doc.contains(r#""payload":{"order":"o-1","amount":1990}"#),
            "{doc}"
        );
        let back: EventEnvelope = serde_json::from_str(&doc).unwrap();
        assert_eq!(back, e);
        assert_eq!(
            format!("{:?}", back.payload),
            r#"{"order":"o-1","amount":1990}"#
        );
    }

    #[test]
    fn a_payload_of_another_shape_is_a_typed_error() {
        #[derive(Deserialize, Debug)]
        struct Other {
            #[allow(dead_code)]
            missing: u32,
        }
        assert!(envelope().payload.parse::<Other>().is_err());
        assert!(serde_json::from_str::<EventEnvelope>(r#"{"payload": nope}"#).is_err());
    }
}
