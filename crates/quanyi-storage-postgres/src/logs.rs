//! `EventStore` and `AuditStore`: append-only logs ordered by an identity column.

use std::sync::LazyLock;

use async_trait::async_trait;
use quanyi_core::{EventEnvelope, EventId, TenantId};
use quanyi_storage::{AuditRecord, AuditStore, Error, EventStore, Result};

use crate::PgStore;
use crate::codec::{EventColumns, from_json, get, insert_events_sql, limit, to_json};
use crate::error::{db, with_id};

static APPEND: LazyLock<String> = LazyLock::new(|| insert_events_sql(1, "true"));

const OF_AGGREGATE: &str = "SELECT doc FROM events \
     WHERE tenant = $1 AND aggregate_type = $2 AND aggregate_id = $3 ORDER BY seq";
const FROM_START: &str = "SELECT doc FROM events ORDER BY seq LIMIT $1";
const AFTER: &str = "SELECT e.doc FROM events e \
     WHERE e.seq > (SELECT seq FROM events WHERE id = $1) ORDER BY e.seq LIMIT $2";
const EXISTS: &str = "SELECT 1 FROM events WHERE id = $1";

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
        rows.iter()
            .map(|r| from_json(get::<&str>(r, 0)?, "event"))
            .collect()
    }

    async fn events_after(&self, after: Option<EventId>, max: usize) -> Result<Vec<EventEnvelope>> {
        let conn = self.conn().await?;
        let rows = match after {
            None => {
                let stmt = conn.prepare(FROM_START).await?;
                conn.client()
                    .query(&stmt, &[&limit(max)])
                    .await
                    .map_err(db)?
            }
            Some(id) => {
                let stmt = conn.prepare(AFTER).await?;
                let rows = conn
                    .client()
                    .query(&stmt, &[id.as_uuid(), &limit(max)])
                    .await
                    .map_err(db)?;
                if rows.is_empty() {
                    let check = conn.prepare(EXISTS).await?;
                    let known = conn
                        .client()
                        .query_opt(&check, &[id.as_uuid()])
                        .await
                        .map_err(db)?;
                    if known.is_none() {
                        return Err(Error::not_found("event", id));
                    }
                }
                rows
            }
        };
        rows.iter()
            .map(|r| from_json(get::<&str>(r, 0)?, "event"))
            .collect()
    }
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
