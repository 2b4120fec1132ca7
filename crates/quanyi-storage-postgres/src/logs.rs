//! `EventStore` and `AuditStore`: append-only logs ordered by an identity column.

use std::sync::LazyLock;

use async_trait::async_trait;
use quanyi_core::{EventEnvelope, EventId, TenantId};
use quanyi_storage::{
    AuditRecord, AuditStore, Error, EventStore, FeedEvent, FeedPosition, Result, Trail,
    check_consumer_name,
};

use crate::codec::{EventColumns, from_json, get, insert_events_sql, limit, row_events, to_json};
use crate::error::{db, with_id};
use crate::{Conn, PgStore};

static APPEND: LazyLock<String> = LazyLock::new(|| insert_events_sql(1, "true"));

/// An operator change's trail as statement parameters: its events and its audit record (id,
/// tenant, document).
pub(crate) struct TrailColumns {
    events: Option<EventColumns>,
    audit: Option<(uuid::Uuid, String, String)>,
}

impl TrailColumns {
    pub(crate) fn new(trail: Trail<'_>) -> Result<TrailColumns> {
        Ok(TrailColumns {
            events: if trail.events.is_empty() {
                None
            } else {
                Some(EventColumns::new(trail.events)?)
            },
            audit: trail
                .audit
                .map(|r| -> Result<_> {
                    Ok((
                        *r.id.as_uuid(),
                        r.tenant.as_str().to_owned(),
                        to_json(r, "audit record")?,
                    ))
                })
                .transpose()?,
        })
    }

    fn is_empty(&self) -> bool {
        self.events.is_none() && self.audit.is_none()
    }

    /// Starts the transaction a change with this trail runs in (nothing for an empty trail).
    pub(crate) async fn begin(&self, conn: &mut Conn) -> Result<()> {
        if self.is_empty() {
            return Ok(());
        }
        conn.in_txn = true;
        conn.client().batch_execute("BEGIN").await.map_err(db)
    }

    /// Writes the trail in the change's transaction (see [`begin`](Self::begin)).
    pub(crate) async fn write(&self, conn: &Conn) -> Result<()> {
        if let Some(ev) = &self.events {
            let stmt = conn.prepare(&APPEND).await?;
            conn.client()
                .execute(
                    &stmt,
                    &[&ev.ids, &ev.tenants, &ev.types, &ev.aggregates, &ev.docs],
                )
                .await
                .map_err(db)?;
        }
        if let Some((id, tenant, doc)) = &self.audit {
            let stmt = conn.prepare(AUDIT_APPEND).await?;
            conn.client()
                .execute(&stmt, &[id, tenant, doc])
                .await
                .map_err(|e| with_id(db(e), id))?;
        }
        Ok(())
    }

    /// Ends a change begun with [`begin`](Self::begin): writes the trail after a change that
    /// succeeded, then commits, or rolls back when anything failed. An empty trail answers the
    /// change's outcome as it is.
    pub(crate) async fn end<T>(&self, conn: &mut Conn, outcome: Result<T>) -> Result<T> {
        if self.is_empty() {
            return outcome;
        }
        let outcome = match outcome {
            Ok(v) => self.write(conn).await.map(|()| v),
            Err(e) => Err(e),
        };
        conn.finish(outcome).await
    }
}

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

/// A tenant's event rows from the feed position ($2 transaction as text, $3 row) on, of
/// transactions older than every one still running, in feed order.
const FEED: &str = "SELECT tx::text, seq, doc FROM events \
     WHERE tenant = $1 AND (tx, seq) >= ($2::text::xid8, $3) \
       AND tx < pg_snapshot_xmin(pg_current_snapshot()) \
     ORDER BY tx, seq LIMIT $4";
/// A tenant's last event row the feed would return now.
const FEED_HEAD: &str = "SELECT tx::text, seq, doc FROM events \
     WHERE tenant = $1 AND tx < pg_snapshot_xmin(pg_current_snapshot()) \
     ORDER BY tx DESC, seq DESC LIMIT 1";
const CURSOR: &str = "SELECT position FROM event_consumers WHERE tenant = $1 AND name = $2";
/// Moves a cursor from $3 (NULL: none yet) to $4; answers a row only when it moved.
const SAVE_CURSOR: &str = "INSERT INTO event_consumers AS c (tenant, name, position) \
     SELECT $1, $2, $4 WHERE $3::bytea IS NULL \
     ON CONFLICT (tenant, name) DO NOTHING RETURNING 1";
const MOVE_CURSOR: &str = "UPDATE event_consumers SET position = $4 \
     WHERE tenant = $1 AND name = $2 AND position = $3 RETURNING 1";

/// Bits of a feed position for the row (`seq`) and for the event's place in its row; the
/// transaction takes the high 64.
const SEQ_BITS: u32 = 40;
const PLACE_BITS: u32 = 24;

/// A feed position on PostgreSQL: transaction, row, place in the row.
fn position(tx: u64, seq: i64, at: usize) -> Result<FeedPosition> {
    let seq = u64::try_from(seq)
        .ok()
        .filter(|s| *s < 1 << SEQ_BITS)
        .ok_or_else(|| Error::Corrupt(format!("event row {seq} is past the feed's range")))?;
    let at = u64::try_from(at)
        .ok()
        .filter(|a| *a < 1 << PLACE_BITS)
        .ok_or_else(|| Error::Corrupt(format!("event row {seq} holds too many events")))?;
    Ok(FeedPosition::from_raw(
        u128::from(tx) << 64 | u128::from(seq) << PLACE_BITS | u128::from(at),
    ))
}

/// The transaction, row and place of a feed position.
fn parts(p: FeedPosition) -> (u64, i64, usize) {
    let raw = p.raw();
    let field = |shift: u32, bits: u32| (raw >> shift) & ((1u128 << bits) - 1);
    // Each field fits its type by its width: the conversions cannot fail.
    let tx = u64::try_from(raw >> 64).unwrap_or(u64::MAX);
    let seq = i64::try_from(field(PLACE_BITS, SEQ_BITS)).unwrap_or(i64::MAX);
    let at = usize::try_from(field(0, PLACE_BITS)).unwrap_or(usize::MAX);
    (tx, seq, at)
}

fn parse_tx(text: &str) -> Result<u64> {
    text.parse()
        .map_err(|_| Error::Corrupt(format!("transaction id {text}")))
}

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

    async fn read_feed(
        &self,
        tenant: &TenantId,
        after: FeedPosition,
        max: usize,
    ) -> Result<Vec<FeedEvent>> {
        let (tx, seq, place) = parts(after);
        let conn = self.conn().await?;
        let stmt = conn.prepare(FEED).await?;
        let rows = conn
            .client()
            .query(
                &stmt,
                &[
                    &tenant.as_str(),
                    &tx.to_string(),
                    &seq,
                    &limit(max.saturating_add(1)),
                ],
            )
            .await
            .map_err(db)?;
        let mut out = Vec::new();
        'rows: for r in &rows {
            let row_tx = parse_tx(get::<&str>(r, 0)?)?;
            let row_seq: i64 = get(r, 1)?;
            let cursor_row = after != FeedPosition::START && row_tx == tx && row_seq == seq;
            for (at, event) in row_events(get::<&str>(r, 2)?)?.into_iter().enumerate() {
                if cursor_row && at <= place {
                    continue;
                }
                if out.len() == max {
                    break 'rows;
                }
                out.push(FeedEvent {
                    position: position(row_tx, row_seq, at)?,
                    event,
                });
            }
        }
        Ok(out)
    }

    async fn feed_head(&self, tenant: &TenantId) -> Result<FeedPosition> {
        let conn = self.conn().await?;
        let stmt = conn.prepare(FEED_HEAD).await?;
        let row = conn
            .client()
            .query_opt(&stmt, &[&tenant.as_str()])
            .await
            .map_err(db)?;
        match row {
            None => Ok(FeedPosition::START),
            Some(r) => {
                let events = row_events(get::<&str>(&r, 2)?)?;
                position(
                    parse_tx(get::<&str>(&r, 0)?)?,
                    get(&r, 1)?,
                    events.len().saturating_sub(1),
                )
            }
        }
    }

    async fn consumer_cursor(&self, tenant: &TenantId, name: &str) -> Result<Option<FeedPosition>> {
        check_consumer_name(name)?;
        let conn = self.conn().await?;
        let stmt = conn.prepare(CURSOR).await?;
        let row = conn
            .client()
            .query_opt(&stmt, &[&tenant.as_str(), &name])
            .await
            .map_err(db)?;
        row.map(|r| {
            let bytes: &[u8] = get(&r, 0)?;
            <[u8; 16]>::try_from(bytes)
                .map(FeedPosition::from_bytes)
                .map_err(|_| Error::Corrupt(format!("cursor of consumer {name}")))
        })
        .transpose()
    }

    async fn save_consumer_cursor(
        &self,
        tenant: &TenantId,
        name: &str,
        expected: Option<FeedPosition>,
        to: FeedPosition,
    ) -> Result<()> {
        check_consumer_name(name)?;
        let conn = self.conn().await?;
        let sql = if expected.is_some() {
            MOVE_CURSOR
        } else {
            SAVE_CURSOR
        };
        let stmt = conn.prepare(sql).await?;
        let expected = expected.map(|p| p.to_bytes().to_vec());
        let to = to.to_bytes().to_vec();
        let moved = conn
            .client()
            .query_opt(&stmt, &[&tenant.as_str(), &name, &expected, &to])
            .await
            .map_err(db)?;
        match moved {
            Some(_) => Ok(()),
            None => Err(Error::conflict("consumer", name, "cursor moved")),
        }
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
