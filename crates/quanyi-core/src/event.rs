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

    /// The body, when every event of this kind has the same one (a kind without fields): one
    /// shared payload then serves every envelope, which keeps no body of its own. `None`, the
    /// default, gives each envelope its own body.
    fn shared_payload(&self) -> Option<Payload> {
        None
    }

    /// The version of this kind's payload shape: 1 until a change of its fields that readers
    /// must tell apart (a renamed or retyped field); added optional fields keep the version.
    fn schema_version(&self) -> u16 {
        1
    }
}

fn is_first_version(v: &u16) -> bool {
    *v == 1
}

fn first_version() -> u16 {
    1
}

/// The body of an event, written as compact JSON when first needed.
///
/// A payload made from a typed event ([`Payload::deferred`]) keeps the event and writes its JSON
/// text the first time a store or a reader asks for it, once; a store that keeps envelopes in
/// memory never pays for the text. A payload read back from a store holds the text it was
/// stored as. Clones share the body and the text. It embeds in a serialized envelope as JSON,
/// not as a string.
#[derive(Clone)]
pub struct Payload(Arc<dyn Body>);

/// What a payload holds: its JSON text, or a typed body that writes it on demand.
trait Body: Send + Sync {
    /// The JSON text, or why the body cannot be written as JSON.
    fn text(&self) -> Result<&str, &str>;
}

/// A body already in JSON text.
struct Text(Box<str>);

impl Body for Text {
    fn text(&self) -> Result<&str, &str> {
        Ok(&self.0)
    }
}

/// A typed body and, once written, its JSON text.
struct Typed<T> {
    body: T,
    text: std::sync::OnceLock<Result<Box<str>, String>>,
}

impl<T: Serialize + Send + Sync> Body for Typed<T> {
    fn text(&self) -> Result<&str, &str> {
        match self.text.get_or_init(|| {
            serde_json::to_string(&self.body)
                .map(String::into_boxed_str)
                .map_err(|e| e.to_string())
        }) {
            Ok(text) => Ok(text),
            Err(why) => Err(why),
        }
    }
}

impl Payload {
    /// Serializes `body` now.
    ///
    /// # Errors
    /// A serialization error if `body` cannot be written as JSON.
    pub fn of<T: Serialize + ?Sized>(body: &T) -> Result<Self, serde_json::Error> {
        let text = serde_json::to_string(body)?;
        Ok(Payload(Arc::new(Text(text.into_boxed_str()))))
    }

    /// Keeps `body` and writes its JSON text when it is first asked for.
    pub fn deferred<T: Serialize + Send + Sync + 'static>(body: T) -> Self {
        Payload(Arc::new(Typed {
            body,
            text: std::sync::OnceLock::new(),
        }))
    }

    /// The JSON text.
    ///
    /// # Errors
    /// A serialization error when a deferred body cannot be written as JSON (the event types of
    /// this project always can).
    pub fn json(&self) -> Result<&str, serde_json::Error> {
        self.0.text().map_err(serde::ser::Error::custom)
    }

    /// The body as a JSON value.
    ///
    /// # Errors
    /// As [`Payload::json`]; the error type is serde_json's.
    pub fn to_value(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::from_str(self.json()?)
    }

    /// The body as `T`.
    ///
    /// # Errors
    /// A deserialization error if the body does not have the shape of `T`; as [`Payload::json`].
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.json()?)
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
            || matches!((self.0.text(), other.0.text()), (Ok(a), Ok(b)) if a == b)
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.text() {
            Ok(text) => f.write_str(text),
            Err(why) => write!(f, "<not writable as JSON: {why}>"),
        }
    }
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Embedded as JSON: the text is checked (not copied) on the way out.
        let text = self.0.text().map_err(serde::ser::Error::custom)?;
        let raw: &RawValue = serde_json::from_str(text).map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Box::<RawValue>::deserialize(deserializer)
            .map(|raw| Payload(Arc::new(Text(Box::<str>::from(raw.get())))))
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
    /// The version of the payload's shape ([`DomainEvent::schema_version`]); 1 when absent
    /// from stored JSON.
    #[serde(default = "first_version", skip_serializing_if = "is_first_version")]
    pub schema_version: u16,
    /// What ties this event to the others of one request, when that is not its aggregate:
    /// set for the events a placement with an idempotency key writes (`placement:<key>`).
    /// Read it through [`correlation`](EventEnvelope::correlation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<Arc<str>>,
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
            schema_version: event.schema_version(),
            correlation_id: None,
            payload: Payload::of(event)?,
        })
    }

    /// Wraps a domain event whose JSON is written only when a store or reader needs it (see
    /// [`Payload::deferred`]).
    pub fn deferred<E: DomainEvent + Send + Sync + 'static>(
        id: EventId,
        tenant: TenantId,
        aggregate_type: &'static str,
        aggregate_id: Arc<str>,
        aggregate_version: u64,
        occurred_at: DateTime<Utc>,
        event: E,
    ) -> Self {
        EventEnvelope {
            id,
            tenant,
            aggregate_type: Cow::Borrowed(aggregate_type),
            aggregate_id,
            aggregate_version,
            name: Cow::Borrowed(event.name()),
            occurred_at,
            schema_version: event.schema_version(),
            correlation_id: None,
            payload: event
                .shared_payload()
                .unwrap_or_else(|| Payload::deferred(event)),
        }
    }
}

impl EventEnvelope {
    /// The envelope with `correlation` as its correlation id.
    #[must_use]
    pub fn with_correlation(mut self, correlation: Arc<str>) -> Self {
        self.correlation_id = Some(correlation);
        self
    }

    /// The correlation id: the request's when one was set, otherwise the aggregate's id (the
    /// order, for an order's events).
    pub fn correlation(&self) -> &str {
        self.correlation_id.as_deref().unwrap_or(&self.aggregate_id)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[derive(Serialize, Clone)]
    struct Paid {
        order: &'static str,
        amount: i64,
    }

    impl DomainEvent for Paid {
        fn name(&self) -> &'static str {
            "order.paid"
        }
    }

    const PAID: Paid = Paid {
        order: "o-1",
        amount: 1990,
    };

    fn eager() -> EventEnvelope {
        EventEnvelope::wrap(
            EventId::from_uuid(uuid::Uuid::nil()),
            TenantId::default(),
            "order",
            Arc::from("o-1"),
            2,
            DateTime::UNIX_EPOCH,
            &PAID,
        )
        .unwrap()
    }

    fn deferred() -> EventEnvelope {
        EventEnvelope::deferred(
            EventId::from_uuid(uuid::Uuid::nil()),
            TenantId::default(),
            "order",
            Arc::from("o-1"),
            2,
            DateTime::UNIX_EPOCH,
            PAID,
        )
    }

    #[test]
    fn the_payload_is_compact_json_embedded_in_the_envelope() {
        for e in [eager(), deferred()] {
            assert_eq!(
                e.payload.json().unwrap(),
                r#"{"order":"o-1","amount":1990}"#
            );
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
        assert_eq!(eager(), deferred());
    }

    #[test]
    fn schema_versions_and_correlations_round_trip_and_default() {
        let plain = eager();
        assert_eq!(plain.schema_version, 1);
        assert_eq!(plain.correlation(), "o-1");
        let doc = serde_json::to_string(&plain).unwrap();
        assert!(
            !doc.contains("schema_version") && !doc.contains("correlation_id"),
            "{doc}"
        );
        let mut marked = eager().with_correlation(Arc::from("placement:k-1"));
        marked.schema_version = 2;
        assert_eq!(marked.correlation(), "placement:k-1");
        let doc = serde_json::to_string(&marked).unwrap();
        assert!(doc.contains(r#""schema_version":2"#), "{doc}");
        let back: EventEnvelope = serde_json::from_str(&doc).unwrap();
        assert_eq!(back, marked);
    }

    #[test]
    fn a_payload_of_another_shape_is_a_typed_error() {
        #[derive(Deserialize, Debug)]
        struct Other {
            #[allow(dead_code)]
            missing: u32,
        }
        assert!(eager().payload.parse::<Other>().is_err());
        assert!(deferred().payload.parse::<Other>().is_err());
        assert!(serde_json::from_str::<EventEnvelope>(r#"{"payload": nope}"#).is_err());
    }

    #[test]
    fn a_deferred_body_that_is_not_json_is_an_error_when_asked_for() {
        // JSON object keys must be strings: this map cannot be written.
        let body: BTreeMap<(u8, u8), u8> = BTreeMap::from([((1, 2), 3)]);
        assert!(Payload::of(&body).is_err());
        let payload = Payload::deferred(body);
        assert!(payload.json().is_err());
        assert!(payload.to_value().is_err());
        assert!(serde_json::to_string(&payload).is_err());
        assert!(format!("{payload:?}").starts_with("<not writable as JSON"));
        assert_ne!(payload, Payload::of(&3).unwrap());
    }
}
