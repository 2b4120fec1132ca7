//! Conversions between domain values and column values.

use chrono::{DateTime, Utc};
use quanyi_core::{EventEnvelope, TenantId};
use quanyi_storage::{Error, Result};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_postgres::Row;
use tokio_postgres::types::FromSql;
use uuid::Uuid;

use crate::error::corrupt;

/// Microseconds since the epoch, the column form of every timestamp.
pub(crate) fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

/// A timestamp column back to a `DateTime`.
pub(crate) fn from_micros(value: i64) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp_micros(value).ok_or_else(|| corrupt("timestamp", value))
}

/// A `u64` (version, counter) as a BIGINT.
pub(crate) fn to_i64(value: u64, what: &str) -> Result<i64> {
    i64::try_from(value).map_err(|_| Error::Invalid(format!("{what} {value} is too large")))
}

/// A BIGINT back to a `u64`.
pub(crate) fn to_u64(value: i64, what: &str) -> Result<u64> {
    u64::try_from(value).map_err(|_| corrupt(what, value))
}

/// A `usize` limit as a BIGINT (saturating: a limit past `i64::MAX` means all).
pub(crate) fn limit(value: usize) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A document as JSON text.
pub(crate) fn to_json<T: Serialize + ?Sized>(value: &T, what: &str) -> Result<String> {
    serde_json::to_string(value)
        .map_err(|e| Error::Invalid(format!("{what} does not serialize: {e}")))
}

/// JSON text back to a document.
pub(crate) fn from_json<T: DeserializeOwned>(text: &str, what: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| corrupt(what, e))
}

/// A tenant column back to a `TenantId`.
pub(crate) fn tenant(text: String) -> Result<TenantId> {
    TenantId::new(text).map_err(|e| corrupt("tenant", e))
}

/// One column of a row, a decoding failure being `Corrupt`.
pub(crate) fn get<'a, T: FromSql<'a>>(row: &'a Row, idx: usize) -> Result<T> {
    row.try_get(idx).map_err(|e| corrupt("column", e))
}

/// Events as the parallel arrays an `unnest` insert takes.
#[derive(Debug, Default)]
pub(crate) struct EventColumns {
    /// The first event id of each row.
    pub(crate) ids: Vec<Uuid>,
    pub(crate) tenants: Vec<String>,
    pub(crate) types: Vec<String>,
    pub(crate) aggregates: Vec<String>,
    /// Each row's events as one JSON array.
    pub(crate) docs: Vec<String>,
}

impl EventColumns {
    /// The rows of `events`: one per run of consecutive events of one aggregate (an aggregate
    /// change writes one row however many events it has), with the events as a JSON array and
    /// the first event's id as the row's id.
    pub(crate) fn new(events: &[EventEnvelope]) -> Result<Self> {
        let mut cols = EventColumns::default();
        let mut start = 0;
        while start < events.len() {
            let first = &events[start];
            let end = events[start..]
                .iter()
                .position(|e| {
                    e.tenant != first.tenant
                        || e.aggregate_type != first.aggregate_type
                        || e.aggregate_id != first.aggregate_id
                })
                .map_or(events.len(), |n| start + n);
            let mut doc = String::from("[");
            for (i, e) in events[start..end].iter().enumerate() {
                if i > 0 {
                    doc.push(',');
                }
                doc.push_str(&to_json(e, "event")?);
            }
            doc.push(']');
            cols.ids.push(*first.id.as_uuid());
            cols.tenants.push(first.tenant.as_str().to_owned());
            cols.types.push(first.aggregate_type.to_string());
            cols.aggregates.push(first.aggregate_id.to_string());
            cols.docs.push(doc);
            start = end;
        }
        Ok(cols)
    }
}

/// The events of a row of `events`: a JSON array (one aggregate change), or one event as rows
/// stored before migration 5 hold it.
pub(crate) fn row_events(doc: &str) -> Result<Vec<EventEnvelope>> {
    if doc.trim_start().starts_with('[') {
        from_json(doc, "events")
    } else {
        Ok(vec![from_json(doc, "event")?])
    }
}

/// The events of several requests as the parallel arrays a batch statement takes, each tagged
/// with its request's position (from 1).
#[derive(Debug, Default)]
pub(crate) struct TaggedEvents<'a> {
    pub(crate) k: Vec<i64>,
    pub(crate) ids: Vec<Uuid>,
    pub(crate) tenants: Vec<&'a str>,
    pub(crate) types: Vec<&'a str>,
    pub(crate) aggregates: Vec<&'a str>,
    pub(crate) docs: Vec<&'a str>,
}

impl<'a> TaggedEvents<'a> {
    /// Adds the events of request `k`.
    pub(crate) fn push(&mut self, k: i64, ev: &'a EventColumns) {
        let text = |v: &'a [String]| v.iter().map(String::as_str);
        self.k.extend(std::iter::repeat_n(k, ev.ids.len()));
        self.ids.extend(&ev.ids);
        self.tenants.extend(text(&ev.tenants));
        self.types.extend(text(&ev.types));
        self.aggregates.extend(text(&ev.aggregates));
        self.docs.extend(text(&ev.docs));
    }
}

/// The SQL that inserts the rows of an [`EventColumns`] bound at `$first..$first+4`, in order,
/// guarded by `condition`.
pub(crate) fn insert_events_sql(first: usize, condition: &str) -> String {
    let (a, b, c, d, e) = (first, first + 1, first + 2, first + 3, first + 4);
    format!(
        "INSERT INTO events (id, tenant, aggregate_type, aggregate_id, doc) \
         SELECT u.id, u.tenant, u.aggregate_type, u.aggregate_id, u.doc \
         FROM unnest(${a}::uuid[], ${b}::text[], ${c}::text[], ${d}::text[], ${e}::text[]) \
              WITH ORDINALITY AS u(id, tenant, aggregate_type, aggregate_id, doc, ord) \
         WHERE {condition} ORDER BY u.ord"
    )
}
