//! The event log and the audit log.

use async_trait::async_trait;
use quanyi_core::{EventEnvelope, EventId, TenantId};
use quanyi_storage::{
    AuditRecord, AuditStore, Error, EventStore, FeedEvent, FeedPosition, Result, Trail,
    check_consumer_name,
};
use rusqlite::{OptionalExtension, Transaction, params};

use crate::SqliteStore;
use crate::convert::{SqlResult, from_doc, limit, to_doc};

/// An operator change's trail encoded for a blocking thread: its event rows and its audit
/// record (id, tenant, document).
pub(crate) struct TrailRows {
    events: Vec<EventRow>,
    audit: Option<(quanyi_core::AuditId, String, String)>,
}

pub(crate) fn trail_rows(trail: Trail<'_>) -> Result<TrailRows> {
    Ok(TrailRows {
        events: event_rows(trail.events)?,
        audit: trail
            .audit
            .map(|r| -> Result<_> {
                Ok((
                    r.id,
                    r.tenant.as_str().to_owned(),
                    to_doc(r, "audit record")?,
                ))
            })
            .transpose()?,
    })
}

/// Writes a trail in the caller's transaction, refusing ids already stored (the caller's
/// transaction then rolls back with the change).
pub(crate) fn write_trail(
    tx: &Transaction<'_>,
    trail: &TrailRows,
    id: impl std::fmt::Display,
) -> Result<()> {
    check_events_new(tx, &trail.events, "event", id)?;
    insert_events(tx, &trail.events)?;
    if let Some((id, tenant, doc)) = &trail.audit {
        insert_audit(tx, *id, tenant, doc)?;
    }
    Ok(())
}

/// Appends one audit record in the caller's transaction.
fn insert_audit(
    tx: &Transaction<'_>,
    id: quanyi_core::AuditId,
    tenant: &str,
    doc: &str,
) -> Result<()> {
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
}

/// One row of the log: a run of consecutive events of one aggregate (the events of one
/// aggregate change), encoded for a blocking thread.
pub(crate) struct EventRow {
    /// The ids of the row's events, in order.
    ids: Vec<EventId>,
    tenant: String,
    aggregate_type: String,
    aggregate_id: String,
    /// The events as one JSON array.
    doc: String,
}

/// Encodes events before they move to a blocking thread: one row per run of consecutive events
/// of one aggregate, so an aggregate change is one row however many events it has.
pub(crate) fn event_rows(events: &[EventEnvelope]) -> Result<Vec<EventRow>> {
    let mut rows = Vec::new();
    let mut rest = events;
    while let Some(first) = rest.first() {
        let len = rest
            .iter()
            .position(|e| {
                e.tenant != first.tenant
                    || e.aggregate_type != first.aggregate_type
                    || e.aggregate_id != first.aggregate_id
            })
            .unwrap_or(rest.len());
        let (run, after) = rest.split_at(len);
        rows.push(EventRow {
            ids: run.iter().map(|e| e.id).collect(),
            tenant: first.tenant.as_str().to_owned(),
            aggregate_type: first.aggregate_type.to_string(),
            aggregate_id: first.aggregate_id.to_string(),
            doc: to_doc(run, "events")?,
        });
        rest = after;
    }
    Ok(rows)
}

/// The events of a stored row: a JSON array (one aggregate change), or one event as a JSON
/// object (rows written before schema version 4).
fn row_events(doc: &str) -> Result<Vec<EventEnvelope>> {
    if doc.trim_start().starts_with('[') {
        from_doc(doc, "events")
    } else {
        Ok(vec![from_doc(doc, "event")?])
    }
}

/// The first of the events that is already stored or repeats an earlier one of the call.
pub(crate) fn stored_event(tx: &Transaction<'_>, rows: &[EventRow]) -> Result<Option<EventId>> {
    let mut stmt = tx
        .prepare_cached("SELECT 1 FROM event_ids WHERE id = ?1")
        .db()?;
    let mut seen: Vec<EventId> = Vec::new();
    for id in rows.iter().flat_map(|r| &r.ids) {
        if seen.contains(id) || stmt.exists(params![id.as_bytes()]).db()? {
            return Ok(Some(*id));
        }
        seen.push(*id);
    }
    Ok(None)
}

/// `Conflict` on `what` `owner` when one of the events is already stored (or repeats one of the
/// call).
pub(crate) fn check_events_new(
    tx: &Transaction<'_>,
    rows: &[EventRow],
    what: &'static str,
    owner: impl ToString,
) -> Result<()> {
    match stored_event(tx, rows)? {
        Some(_) => Err(Error::conflict(
            what,
            owner.to_string(),
            "id already stored",
        )),
        None => Ok(()),
    }
}

/// Appends the rows in order (their `seq` is the feed order) and records where each event is.
pub(crate) fn insert_events(tx: &Transaction<'_>, rows: &[EventRow]) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut row_stmt = tx
        .prepare_cached(
            "INSERT INTO events (tenant, aggregate_type, aggregate_id, doc)
             VALUES (?1, ?2, ?3, ?4)",
        )
        .db()?;
    let mut id_stmt = tx
        .prepare_cached("INSERT INTO event_ids (id, seq) VALUES (?1, ?2)")
        .db()?;
    for r in rows {
        row_stmt
            .execute(params![r.tenant, r.aggregate_type, r.aggregate_id, r.doc])
            .db()?;
        let seq = tx.last_insert_rowid();
        for id in &r.ids {
            id_stmt.execute(params![id.as_bytes(), seq]).db()?;
        }
    }
    Ok(())
}

/// Up to `limit` events from the rows read by `stmt` (with `params`), leaving out the first
/// `skip` events of the first row.
fn expand_rows(
    stmt: &mut rusqlite::CachedStatement<'_>,
    params: impl rusqlite::Params,
    mut skip: usize,
    limit: usize,
) -> Result<Vec<EventEnvelope>> {
    let mut events = Vec::new();
    let mut rows = stmt.query(params).db()?;
    while events.len() < limit {
        let Some(row) = rows.next().db()? else { break };
        let doc: String = row.get(0).db()?;
        let row_events = row_events(&doc)?;
        events.extend(row_events.into_iter().skip(skip));
        skip = 0;
    }
    events.truncate(limit);
    Ok(events)
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
                expand_rows(&mut stmt, params![tenant, ty, id], 0, usize::MAX)
            })
            .await
    }

    async fn events_after(
        &self,
        after: Option<EventId>,
        limit_to: usize,
    ) -> Result<Vec<EventEnvelope>> {
        self.pool
            .read(move |tx| {
                // From the cursor's row, without the events up to the cursor; or from the start.
                let (start, skip) = match after {
                    None => (0, 0),
                    Some(id) => {
                        let seq = event_seq(tx, id)?;
                        let doc: String = tx
                            .prepare_cached("SELECT doc FROM events WHERE seq = ?1")
                            .db()?
                            .query_row(params![seq], |r| r.get(0))
                            .optional()
                            .db()?
                            .ok_or_else(|| {
                                Error::Corrupt(format!("event {id} names a missing row {seq}"))
                            })?;
                        let at = row_events(&doc)?
                            .iter()
                            .position(|e| e.id == id)
                            .ok_or_else(|| {
                                Error::Corrupt(format!("event {id} is not in its row {seq}"))
                            })?;
                        (seq, at + 1)
                    }
                };
                let mut stmt = tx
                    .prepare_cached("SELECT doc FROM events WHERE seq >= ?1 ORDER BY seq LIMIT ?2")
                    .db()?;
                // Every row holds at least one event: the cursor's row and `limit` more are
                // enough.
                let rows = limit(limit_to.saturating_add(1));
                expand_rows(&mut stmt, params![start, rows], skip, limit_to)
            })
            .await
    }

    async fn read_feed(
        &self,
        tenant: &TenantId,
        after: FeedPosition,
        limit_to: usize,
    ) -> Result<Vec<FeedEvent>> {
        let tenant = tenant.as_str().to_owned();
        self.pool
            .read(move |tx| read_feed(tx, &tenant, after, limit_to))
            .await
    }

    async fn feed_head(&self, tenant: &TenantId) -> Result<FeedPosition> {
        let tenant = tenant.as_str().to_owned();
        self.pool
            .read(move |tx| {
                let last: Option<(i64, String)> = tx
                    .prepare_cached(
                        "SELECT seq, doc FROM events WHERE tenant = ?1 ORDER BY seq DESC LIMIT 1",
                    )
                    .db()?
                    .query_row(params![tenant], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
                    .db()?;
                match last {
                    None => Ok(FeedPosition::START),
                    Some((seq, doc)) => position(seq, row_events(&doc)?.len().saturating_sub(1)),
                }
            })
            .await
    }

    async fn consumer_cursor(&self, tenant: &TenantId, name: &str) -> Result<Option<FeedPosition>> {
        check_consumer_name(name)?;
        let (tenant, name) = (tenant.as_str().to_owned(), name.to_owned());
        self.pool
            .read(move |tx| consumer_cursor(tx, &tenant, &name))
            .await
    }

    async fn save_consumer_cursor(
        &self,
        tenant: &TenantId,
        name: &str,
        expected: Option<FeedPosition>,
        to: FeedPosition,
    ) -> Result<()> {
        check_consumer_name(name)?;
        let (tenant, name) = (tenant.as_str().to_owned(), name.to_owned());
        self.pool
            .write(move |tx| {
                if consumer_cursor(tx, &tenant, &name)? != expected {
                    return Err(Error::conflict("consumer", &name, "cursor moved"));
                }
                tx.prepare_cached(
                    "INSERT INTO event_consumers (tenant, name, position) VALUES (?1, ?2, ?3)
                     ON CONFLICT (tenant, name) DO UPDATE SET position = excluded.position",
                )
                .db()?
                .execute(params![tenant, name, to.to_bytes()])
                .db()?;
                Ok(())
            })
            .await
    }
}

/// A consumer's stored cursor.
fn consumer_cursor(tx: &Transaction<'_>, tenant: &str, name: &str) -> Result<Option<FeedPosition>> {
    let bytes: Option<Vec<u8>> = tx
        .prepare_cached("SELECT position FROM event_consumers WHERE tenant = ?1 AND name = ?2")
        .db()?
        .query_row(params![tenant, name], |r| r.get(0))
        .optional()
        .db()?;
    bytes
        .map(|b| {
            <[u8; 16]>::try_from(b.as_slice())
                .map(FeedPosition::from_bytes)
                .map_err(|_| Error::Corrupt(format!("cursor of consumer {name}")))
        })
        .transpose()
}

/// A feed position on SQLite: the row in the high bits, the event's place in it in the low 32.
fn position(seq: i64, at: usize) -> Result<FeedPosition> {
    let seq = u128::try_from(seq).map_err(|_| Error::Corrupt(format!("event row {seq}")))?;
    Ok(FeedPosition::from_raw(seq << 32 | at as u128))
}

/// The row and place of a feed position (row 0 is before every row).
fn row_and_place(p: FeedPosition) -> Result<(i64, usize)> {
    let seq = i64::try_from(p.raw() >> 32)
        .map_err(|_| Error::Invalid(format!("feed position {p} is not one of this store")))?;
    let place = usize::try_from(p.raw() & 0xffff_ffff).unwrap_or(usize::MAX);
    Ok((seq, place))
}

/// The tenant's events after `after`, up to `limit_to`.
fn read_feed(
    tx: &Transaction<'_>,
    tenant: &str,
    after: FeedPosition,
    limit_to: usize,
) -> Result<Vec<FeedEvent>> {
    let (from_row, place) = row_and_place(after)?;
    let mut stmt = tx
        .prepare_cached(
            "SELECT seq, doc FROM events WHERE tenant = ?1 AND seq >= ?2 ORDER BY seq LIMIT ?3",
        )
        .db()?;
    let rows: Vec<(i64, String)> = stmt
        .query_map(
            params![tenant, from_row, limit(limit_to.saturating_add(1))],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .db()?
        .collect::<rusqlite::Result<_>>()
        .db()?;
    let mut out = Vec::new();
    'rows: for (seq, doc) in rows {
        for (at, event) in row_events(&doc)?.into_iter().enumerate() {
            if seq == from_row && at <= place && after != FeedPosition::START {
                continue;
            }
            if out.len() == limit_to {
                break 'rows;
            }
            out.push(FeedEvent {
                position: position(seq, at)?,
                event,
            });
        }
    }
    Ok(out)
}

/// The row (`seq`) that holds an event; `NotFound` for an event the log does not hold.
fn event_seq(tx: &Transaction<'_>, id: EventId) -> Result<i64> {
    tx.prepare_cached("SELECT seq FROM event_ids WHERE id = ?1")
        .db()?
        .query_row(params![id.as_bytes()], |r| r.get(0))
        .optional()
        .db()?
        .ok_or_else(|| Error::not_found("event", id))
}

#[async_trait]
impl AuditStore for SqliteStore {
    async fn append_audit(&self, record: &AuditRecord) -> Result<()> {
        let id = record.id;
        let tenant = record.tenant.as_str().to_owned();
        let doc = to_doc(record, "audit record")?;
        self.pool
            .write(move |tx| insert_audit(tx, id, &tenant, &doc))
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
