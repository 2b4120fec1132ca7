//! Upkeep of the free-card queue.
//!
//! Allocation deletes rows from the head of `free_cards` (the oldest cards of a SKU), and a
//! deleted row keeps its index entry until a vacuum removes it. Every allocation scans the
//! queue from its head, so without a vacuum each one walks past every card taken since the
//! last: on a busy shop that grows by thousands of entries a second, and autovacuum visits a
//! database at most once a minute (`autovacuum_naptime`). So a store vacuums the queue itself
//! after every `every` cards it allocates: `VACUUM (INDEX_CLEANUP ON, SKIP_LOCKED)` of that
//! one table, in a task of its own on a pooled connection, at most one at a time per store. The
//! cost of one vacuum grows with the queue's size (the whole index is read), the cost of the
//! walk with the cards taken since the last one; see the crate documentation.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use quanyi_storage::Result;
use tokio::sync::watch;

use crate::PgStore;
use crate::error::db;

/// Removes the queue rows allocation deleted, with their index entries. Not in a transaction
/// (VACUUM cannot be); skips the table when another vacuum holds it.
const VACUUM: &str = "VACUUM (INDEX_CLEANUP ON, SKIP_LOCKED) free_cards";

/// When a store vacuums its card queue.
pub(crate) struct QueueUpkeep {
    /// Cards allocated between vacuums; 0: never.
    every: u64,
    /// Cards this store allocated so far.
    allocated: AtomicU64,
    /// A vacuum is running.
    running: AtomicBool,
    /// Vacuums finished (whether or not they succeeded).
    finished: watch::Sender<u64>,
    /// Vacuums that failed.
    failures: AtomicU64,
}

impl QueueUpkeep {
    pub(crate) fn new(every: u64) -> Self {
        QueueUpkeep {
            every,
            allocated: AtomicU64::new(0),
            running: AtomicBool::new(false),
            finished: watch::Sender::new(0),
            failures: AtomicU64::new(0),
        }
    }

    /// Counts `n` cards allocated; true when that crosses a multiple of `every` and no
    /// vacuum is running (the caller then starts one and calls [`QueueUpkeep::done`]).
    fn due(&self, n: u64) -> bool {
        if self.every == 0 || n == 0 {
            return false;
        }
        let before = self.allocated.fetch_add(n, Ordering::Relaxed);
        let crossed = before / self.every != before.saturating_add(n) / self.every;
        crossed && !self.running.swap(true, Ordering::AcqRel)
    }

    fn done(&self, ok: bool) {
        if !ok {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        self.running.store(false, Ordering::Release);
        self.finished.send_modify(|n| *n += 1);
    }

    /// Vacuums finished so far, watched.
    #[cfg(test)]
    pub(crate) fn finished(&self) -> watch::Receiver<u64> {
        self.finished.subscribe()
    }

    /// Vacuums that failed so far.
    #[cfg(test)]
    pub(crate) fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }
}

impl PgStore {
    /// Vacuums the free-card queue (`VACUUM (INDEX_CLEANUP ON, SKIP_LOCKED) free_cards`), as
    /// the store does on its own after every [`PgOptions::card_queue_vacuum_every`] cards it
    /// allocates. For hosts that turn that off and run it on a schedule of their own. Skips
    /// the table, without waiting, while another vacuum of it runs. The server skips it too,
    /// with a warning in its log, when the store's role does not own the table.
    ///
    /// [`PgOptions::card_queue_vacuum_every`]: crate::PgOptions::card_queue_vacuum_every
    ///
    /// # Errors
    /// `Unavailable` when the server cannot be reached.
    pub async fn vacuum_card_queue(&self) -> Result<()> {
        let conn = self.conn().await?;
        conn.client().batch_execute(VACUUM).await.map_err(db)
    }

    /// Counts `n` cards allocated by this store and starts a vacuum of the queue when one is due.
    pub(crate) fn allocated(&self, n: usize) {
        let upkeep = &self.shared.upkeep;
        if !upkeep.due(u64::try_from(n).unwrap_or(u64::MAX)) {
            return;
        }
        let store = self.clone();
        tokio::spawn(async move {
            let vacuumed = store.vacuum_card_queue().await;
            if let Err(e) = &vacuumed {
                tracing::warn!(
                    schema = store.schema(),
                    error = %e,
                    "vacuum of the free-card queue failed"
                );
            }
            store.shared.upkeep.done(vacuumed.is_ok());
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_once_per_crossing_and_never_when_off() {
        let off = QueueUpkeep::new(0);
        assert!(!off.due(1_000));

        let upkeep = QueueUpkeep::new(10);
        assert!(!upkeep.due(0));
        assert!(!upkeep.due(9));
        assert!(upkeep.due(1), "the 10th card");
        // Another crossing while that vacuum runs starts none.
        assert!(!upkeep.due(10));
        upkeep.done(true);
        assert!(!upkeep.due(5), "25 allocated, the next crossing is at 30");
        assert!(
            upkeep.due(25),
            "one vacuum for several multiples crossed at once"
        );
        upkeep.done(false);
        assert_eq!(*upkeep.finished().borrow(), 2);
        assert_eq!(upkeep.failures(), 1);
    }
}
