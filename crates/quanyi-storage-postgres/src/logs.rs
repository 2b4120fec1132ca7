//! `EventStore` and `AuditStore`: append-only logs ordered by an identity column.

use std::sync::LazyLock;

use async_trait::async_trait;
use quanyi_core::{EventEnvelope, EventId, TenantId};
use quanyi_storage::{AuditRecord, AuditStore, Error, EventStore, Result};

use crate::PgStore;
use crate::codec::{EventColumns, from_json, get, insert_events_sql, limit, row_events, to_json};
use crate::error::{db, with_id};

static APPEND: LazyLock<String> = LazyLock::new(|| insert_events_sql(1, "true"));

const OF_AGGREGATE: &str = "SELECT doc FROM events \
     WHERE tenant = $1 AND aggregate_type = $2 AND aggregate_id = $3 ORDER BY seq";
const FROM_START: &str = "SELECT doc FROM events ORDER BY seq LIMIT $1";
/// The rows that may hold the event `$1`: those whose first event id is at or before it (and
/// after `$2`, a bound some time earlier), nearest first. An event is written in the row of
/// its change, whose first id was taken just before it; rows of other writers can only come
/// between by the few ids they took meanwhile.
const CANDIDATES: &str = "SELECT seq, doc FROM events WHERE id <= $1 AND id >= $2 \
     ORDER BY id DESC LIMIT $3";
/// The rows from `$1` on, in write order.
const FROM_ROW: &str = "SELECT doc FROM events WHERE seq >= $1 ORDER BY seq LIMIT $2";
/// How many candidate rows are read at a time while looking for an event's row.
const CANDIDATE_BATCH: i64 = 16;

const AUDIT_APPEND: &str = "INSERT INTO audit (id, tenant, doc) VALUES ($1, $2, $3)";
const AUDIT_NEWEST: &str = "SELECT doc FROM audit WHERE tenant = $1 ORDER BY seq DESC LIMIT $2";

#[async_trait]
impl EventStore for PgStore {
    async fn append_events(&self, events: &[EventEnvelope]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let ev = EventColumns::new(events)?;
        let conn = self.conn().await?;
        let stmt = conn.prepare(&APPEND).await?;
        conn.client()
            .execute(
                &stmt,
                &[&ev.ids, &ev.tenants, &ev.types, &ev.aggregates, &ev.docs],
            )
            .await
            .map_err(|e| {
                with_id(
                    db(e),
                    events.first().map(|e| e.id.to_string()).unwrap_or_default(),
                )
            })?;
        Ok(())
    }

    async fn aggregate_events(
        &self,
        tenant: &TenantId,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> Result<Vec<EventEnvelope>> {
        let conn = self.conn().await?;
        let stmt = conn.prepare(OF_AGGREGATE).await?;
        let rows = conn
            .client()
            .query(&stmt, &[&tenant.as_str(), &aggregate_type, &aggregate_id])
            .await
            .map_err(db)?;
        let mut events = Vec::with_capacity(rows.len());
        for r in &rows {
            events.extend(row_events(get::<&str>(r, 0)?)?);
        }
        Ok(events)
    }

    async fn events_after(&self, after: Option<EventId>, max: usize) -> Result<Vec<EventEnvelope>> {
        let conn = self.conn().await?;
        let (rows, skip) = match after {
            None => {
                let stmt = conn.prepare(FROM_START).await?;
                let rows = conn
                    .client()
                    .query(&stmt, &[&limit(max)])
                    .await
                    .map_err(db)?;
                (rows, None)
            }
            Some(id) => {
                let (seq, at) = self.event_position(&conn, id).await?;
                let stmt = conn.prepare(FROM_ROW).await?;
                let rows = conn
                    .client()
                    .query(&stmt, &[&seq, &limit(max.saturating_add(1))])
                    .await
                    .map_err(db)?;
                (rows, Some(at))
            }
        };
        let mut events = Vec::new();
        for (i, r) in rows.iter().enumerate() {
            let row = row_events(get::<&str>(r, 0)?)?;
            // The cursor's own row: only the events after it.
            let from = match (i, skip) {
                (0, Some(at)) => at + 1,
                _ => 0,
            };
            events.extend(row.into_iter().skip(from));
            if events.len() >= max {
                break;
            }
        }
        events.truncate(max);
        Ok(events)
    }
}

impl PgStore {
    /// The row (its `seq`) and the place in it of the event `id`.
    ///
    /// # Errors
    /// `NotFound` for an event the log does not hold.
    async fn event_position(&self, conn: &crate::Conn, id: EventId) -> Result<(i64, usize)> {
        let stmt = conn.prepare(CANDIDATES).await?;
        let lower = earlier_id(*id.as_uuid());
        let mut upper = *id.as_uuid();
        loop {
            let rows = conn
                .client()
                .query(&stmt, &[&upper, &lower, &CANDIDATE_BATCH])
                .await
                .map_err(db)?;
            for r in &rows {
                let events = row_events(get::<&str>(r, 1)?)?;
                if let Some(at) = events.iter().position(|e| e.id == id) {
                    return Ok((get(r, 0)?, at));
                }
            }
            match rows.last() {
                Some(last) if rows.len() as i64 == CANDIDATE_BATCH => {
                    // The next batch starts below the last row looked at.
                    let events = row_events(get::<&str>(last, 1)?)?;
                    let Some(first) = events.first() else {
                        return Err(Error::not_found("event", id));
                    };
                    let below = u128::from_be_bytes(*first.id.as_uuid().as_bytes());
                    let Some(below) = below.checked_sub(1) else {
                        return Err(Error::not_found("event", id));
                    };
                    upper = uuid::Uuid::from_u128(below);
                }
                _ => return Err(Error::not_found("event", id)),
            }
        }
    }
}

/// The smallest time-ordered id of a minute before `id`'s time: no event of the change that
/// holds `id` was given an id earlier than that.
fn earlier_id(id: uuid::Uuid) -> uuid::Uuid {
    let value = u128::from_be_bytes(*id.as_bytes());
    // The 48 high bits of a version 7 id are its Unix time in milliseconds.
    let ms = value >> 80;
    uuid::Uuid::from_u128(ms.saturating_sub(60_000) << 80)
}

#[async_trait]
impl AuditStore for PgStore {
    async fn append_audit(&self, record: &AuditRecord) -> Result<()> {
        let doc = to_json(record, "audit record")?;
        let conn = self.conn().await?;
        let stmt = conn.prepare(AUDIT_APPEND).await?;
        conn.client()
            .execute(&stmt, &[record.id.as_uuid(), &record.tenant.as_str(), &doc])
            .await
            .map_err(|e| with_id(db(e), record.id))?;
        Ok(())
    }

    async fn audit_records(&self, tenant: &TenantId, max: usize) -> Result<Vec<AuditRecord>> {
        let conn = self.conn().await?;
        let stmt = conn.prepare(AUDIT_NEWEST).await?;
        let rows = conn
            .client()
            .query(&stmt, &[&tenant.as_str(), &limit(max)])
            .await
            .map_err(db)?;
        rows.iter()
            .map(|r| from_json(get::<&str>(r, 0)?, "audit record"))
            .collect()
    }
}
