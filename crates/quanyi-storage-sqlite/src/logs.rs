//! The event log and the audit log.

use async_trait::async_trait;
use quanyi_core::{EventEnvelope, EventId, TenantId};
use quanyi_storage::{AuditRecord, AuditStore, Error, EventStore, Result};
use rusqlite::{OptionalExtension, Transaction, params};

use crate::SqliteStore;
use crate::convert::{SqlResult, from_doc, limit, to_doc};

/// An event ready to insert.
pub(crate) struct EventRow {
    id: EventId,
    tenant: String,
    aggregate_type: String,
    aggregate_id: String,
    doc: String,
}

/// Encodes events before they move to a blocking thread.
pub(crate) fn event_rows(events: &[EventEnvelope]) -> Result<Vec<EventRow>> {
    events
        .iter()
        .map(|e| {
            Ok(EventRow {
                id: e.id,
                tenant: e.tenant.as_str().to_owned(),
                aggregate_type: e.aggregate_type.to_string(),
                aggregate_id: e.aggregate_id.to_string(),
                doc: to_doc(e, "event")?,
            })
        })
        .collect()
}

/// The first of the events that is already stored, if any.
pub(crate) fn stored_event(tx: &Transaction<'_>, events: &[EventRow]) -> Result<Option<EventId>> {
    let mut stmt = tx
        .prepare_cached("SELECT 1 FROM events WHERE id = ?1")
        .db()?;
    for e in events {
        if stmt.exists(params![e.id.as_bytes()]).db()? {
            return Ok(Some(e.id));
        }
    }
    Ok(None)
}

/// `Conflict` on `what` `owner` when one of the events is already stored.
pub(crate) fn check_events_new(
    tx: &Transaction<'_>,
    events: &[EventRow],
    what: &'static str,
    owner: impl ToString,
) -> Result<()> {
    match stored_event(tx, events)? {
        Some(_) => Err(Error::conflict(
            what,
            owner.to_string(),
            "id already stored",
        )),
        None => Ok(()),
    }
}

/// Appends events in order (their `seq` is the feed order).
pub(crate) fn insert_events(tx: &Transaction<'_>, events: &[EventRow]) -> Result<()> {
    let mut stmt = tx
        .prepare_cached(
            "INSERT INTO events (id, tenant, aggregate_type, aggregate_id, doc)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .db()?;
    for e in events {
        stmt.execute(params![
            e.id.as_bytes(),
            e.tenant,
            e.aggregate_type,
            e.aggregate_id,
            e.doc
        ])
        .db()?;
    }
    Ok(())
}

fn decode_events(docs: Vec<String>) -> Result<Vec<EventEnvelope>> {
    docs.iter().map(|d| from_doc(d, "event")).collect()
}

#[async_trait]
impl EventStore for SqliteStore {
    async fn append_events(&self, events: &[EventEnvelope]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let rows = event_rows(events)?;
        self.pool
            .write(move |tx| {
                if let Some(id) = stored_event(tx, &rows)? {
                    return Err(Error::conflict("event", id, "id already stored"));
                }
                insert_events(tx, &rows)
            })
            .await
    }

    async fn aggregate_events(
        &self,
        tenant: &TenantId,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> Result<Vec<EventEnvelope>> {
        let (tenant, ty, id) = (
            tenant.as_str().to_owned(),
            aggregate_type.to_owned(),
            aggregate_id.to_owned(),
        );
        self.pool
            .read(move |tx| {
                let mut stmt = tx
                    .prepare_cached(
                        "SELECT doc FROM events
                         WHERE tenant = ?1 AND aggregate_type = ?2 AND aggregate_id = ?3
                         ORDER BY seq",
                    )
                    .db()?;
                let docs = stmt
                    .query_map(params![tenant, ty, id], |r| r.get::<_, String>(0))
                    .db()?
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .db()?;
                decode_events(docs)
            })
            .await
    }

    async fn events_after(
        &self,
        after: Option<EventId>,
        limit_to: usize,
    ) -> Result<Vec<EventEnvelope>> {
        let n = limit(limit_to);
        self.pool
            .read(move |tx| {
                let start: i64 = match after {
                    None => 0,
                    Some(id) => tx
                        .prepare_cached("SELECT seq FROM events WHERE id = ?1")
                        .db()?
                        .query_row(params![id.as_bytes()], |r| r.get(0))
                        .optional()
                        .db()?
                        .ok_or_else(|| Error::not_found("event", id))?,
                };
                let mut stmt = tx
                    .prepare_cached("SELECT doc FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2")
                    .db()?;
                let docs = stmt
                    .query_map(params![start, n], |r| r.get::<_, String>(0))
                    .db()?
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .db()?;
                decode_events(docs)
            })
            .await
    }
}

#[async_trait]
impl AuditStore for SqliteStore {
    async fn append_audit(&self, record: &AuditRecord) -> Result<()> {
        let id = record.id;
        let tenant = record.tenant.as_str().to_owned();
        let doc = to_doc(record, "audit record")?;
        self.pool
            .write(move |tx| {
                let exists = tx
                    .prepare_cached("SELECT 1 FROM audit WHERE id = ?1")
                    .db()?
                    .exists(params![id.as_bytes()])
                    .db()?;
                if exists {
                    return Err(Error::conflict("audit record", id, "id already stored"));
                }
                tx.prepare_cached("INSERT INTO audit (id, tenant, doc) VALUES (?1, ?2, ?3)")
                    .db()?
                    .execute(params![id.as_bytes(), tenant, doc])
                    .db()?;
                Ok(())
            })
            .await
    }

    async fn audit_records(&self, tenant: &TenantId, limit_to: usize) -> Result<Vec<AuditRecord>> {
        let tenant = tenant.as_str().to_owned();
        let n = limit(limit_to);
        self.pool
            .read(move |tx| {
                let mut stmt = tx
                    .prepare_cached(
                        "SELECT doc FROM audit WHERE tenant = ?1 ORDER BY seq DESC LIMIT ?2",
                    )
                    .db()?;
                let docs = stmt
                    .query_map(params![tenant, n], |r| r.get::<_, String>(0))
                    .db()?
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .db()?;
                docs.iter().map(|d| from_doc(d, "audit record")).collect()
            })
            .await
    }
}
