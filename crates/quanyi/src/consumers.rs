//! Durable consumers of the event feed: effects that may lag a sale (growth value, analytics,
//! messages) read the tenant's gap-free feed from a cursor kept in the store.

use std::sync::Arc;

use async_trait::async_trait;
use quanyi_storage::{FeedEvent, FeedPosition};

use crate::{Error, JobError, Result, Shop};

/// Where a consumer without a stored cursor starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// At the first event the tenant's feed holds.
    Beginning,
    /// After the last event the feed shows when the consumer first runs: it sees only events
    /// the feed shows later. (On PostgreSQL the feed holds back the writes of transactions
    /// older than one still running, so these can include a few committed just before.)
    Now,
}

/// A named, durable reader of a tenant's event feed, registered on the builder
/// ([`crate::ShopBuilder::consumer`]) and run by every [`crate::Worker`] pass. Its cursor lives
/// in the store, so it resumes where it stopped after a restart. Delivery is at least once: a
/// batch whose cursor could not be saved (the process stopped, or another process moved the
/// cursor first) is handed over again, so `handle` must be idempotent (event ids are unique).
#[async_trait]
pub trait EventConsumer: Send + Sync {
    /// Its name: 1 to 64 printable ASCII characters, unique in the shop. The cursor is kept per
    /// tenant under this name; renaming a consumer starts it afresh.
    fn name(&self) -> &str;

    /// Where it starts the first time it runs.
    fn start(&self) -> StartAt;

    /// Handles a batch of events in feed order. An error leaves the cursor where it was, so
    /// the batch comes again on a later pass.
    ///
    /// # Errors
    /// A [`JobError`], logged by the worker.
    async fn handle(&self, shop: &Shop, events: &[FeedEvent]) -> std::result::Result<(), JobError>;
}

/// The consumers a shop runs.
pub(crate) struct Consumers(pub(crate) Vec<Arc<dyn EventConsumer>>);

impl Consumers {
    pub(crate) fn new(consumers: Vec<Arc<dyn EventConsumer>>) -> Result<Self> {
        for (n, c) in consumers.iter().enumerate() {
            quanyi_storage::check_consumer_name(c.name())
                .map_err(|_| Error::InvalidInput("malformed consumer name".into()))?;
            if consumers[..n].iter().any(|o| o.name() == c.name()) {
                return Err(Error::InvalidInput(format!(
                    "consumer {} is registered twice",
                    c.name()
                )));
            }
        }
        Ok(Consumers(consumers))
    }
}

/// What one pass of the consumers did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsumerRun {
    /// Events handed to consumers and acknowledged (their cursor moved past them).
    pub handled: usize,
    /// Batches a consumer failed, or whose cursor another process moved first.
    pub failed: usize,
}

impl Shop {
    /// Runs every registered consumer once for this shop's tenant: each reads up to `batch`
    /// events after its cursor, handles them, and moves its cursor past them.
    ///
    /// # Errors
    /// [`Error::Storage`] when the feed or a cursor cannot be read.
    pub async fn run_consumers(&self, batch: usize) -> Result<ConsumerRun> {
        let store = self.store_ref();
        let mut run = ConsumerRun::default();
        for consumer in &self.inner.consumers.0 {
            let name = consumer.name();
            let stored = store.consumer_cursor(&self.tenant, name).await?;
            let from = match (stored, consumer.start()) {
                (Some(at), _) => at,
                (None, StartAt::Beginning) => FeedPosition::START,
                (None, StartAt::Now) => {
                    let head = store.feed_head(&self.tenant).await?;
                    match store
                        .save_consumer_cursor(&self.tenant, name, None, head)
                        .await
                    {
                        Ok(()) => {}
                        Err(e) if e.kind() == quanyi_core::ErrorKind::Conflict => {}
                        Err(e) => return Err(e.into()),
                    }
                    continue;
                }
            };
            let events = store.read_feed(&self.tenant, from, batch.max(1)).await?;
            let Some(last) = events.last().map(|e| e.position) else {
                continue;
            };
            if let Err(e) = consumer.handle(self, &events).await {
                tracing::warn!(consumer = name, error = %e, "consumer batch failed");
                run.failed += 1;
                continue;
            }
            match store
                .save_consumer_cursor(&self.tenant, name, stored, last)
                .await
            {
                Ok(()) => run.handled += events.len(),
                Err(e) if e.kind() == quanyi_core::ErrorKind::Conflict => run.failed += 1,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(run)
    }
}
