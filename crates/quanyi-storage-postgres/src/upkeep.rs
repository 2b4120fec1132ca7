//! Upkeep of the card queues: `free_cards` (available cards) and `held_cards` (reservations by
//! deadline).
//!
//! Allocation deletes rows from the head of `free_cards` (the oldest cards of a SKU), a sale or a
//! release deletes the reservation's row from `held_cards`, and a deleted row keeps its index
//! entry until a vacuum removes it. Every allocation scans the
//! queue from its head, so without a vacuum each one walks past every card taken since the
//! last: on a busy shop that grows by thousands of entries a second, and autovacuum visits a
//! database at most once a minute (`autovacuum_naptime`). So a store vacuums the queue itself
//! after every `every` cards it allocates: `VACUUM (INDEX_CLEANUP ON, SKIP_LOCKED)` of that
//! one table, in a task of its own on a pooled connection, at most one at a time per store. The
//! cost of one vacuum grows with the queue's size (the whole index is read), the cost of the
//! walk with the cards taken since the last one; see the crate documentation.
//!
//! A vacuum also records the queue's size for the planner, and every connection plans the
//! allocation statements again from it. A vacuum that finds the queue empty (a SKU sold out)
//! therefore leaves plans made for an empty table: a sequential scan and a sort of the whole
//! queue for every pick, once cards are imported again (1.2 ms per pick over 5,000 cards, and
//! growing with the stock), until the next vacuum thousands of cards later. So an import that
//! adds cards to the queue also makes a vacuum due; one asked for while another runs follows it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use quanyi_storage::Result;
use tokio::sync::watch;

use crate::PgStore;
use crate::error::db;

/// Removes the queue rows allocation, sales and releases deleted, with their index entries. Not
/// in a transaction (VACUUM cannot be); skips a table when another vacuum holds it; never
/// truncates: shrinking a table needs its exclusive lock, which a queue in use rarely frees, and
/// a vacuum trying for it would wait up to 5 s (every vacuum after it waiting too) for a few
/// empty pages at the end that the queue soon fills again.
const VACUUM: &str =
    "VACUUM (INDEX_CLEANUP ON, SKIP_LOCKED, TRUNCATE false) free_cards, held_cards";

/// When a store vacuums its card queue.
pub(crate) struct QueueUpkeep {
    /// Cards allocated between vacuums; 0: never.
    every: u64,
    /// Cards this store allocated so far.
    allocated: AtomicU64,
    /// A vacuum is running.
    running: AtomicBool,
    /// Another vacuum was asked for while one ran: it runs when that one ends.
    again: AtomicBool,
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
            again: AtomicBool::new(false),
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

    /// Cards were added to the queue: true when the caller is to start a vacuum now (and call
    /// [`QueueUpkeep::done`]); while one runs, another is due when it ends. Never when off.
    fn restocked(&self) -> bool {
        if self.every == 0 {
            return false;
        }
        if self.running.swap(true, Ordering::AcqRel) {
            self.again.store(true, Ordering::Release);
            false
        } else {
            true
        }
    }

    /// A vacuum ended; true when the caller is to run another at once (one was asked for while
    /// it ran), which it ends with `done` in turn.
    fn done(&self, ok: bool) -> bool {
        if !ok {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        self.finished.send_modify(|n| *n += 1);
        if self.again.swap(false, Ordering::AcqRel) {
            return true;
        }
        self.running.store(false, Ordering::Release);
        // A restock between the swap and the store found a vacuum running and left the work to
        // it: run it unless another caller has started a vacuum since. Only the caller holding
        // `running` clears `again`, so holding it again, the request is still there.
        if self.again.load(Ordering::Acquire) && !self.running.swap(true, Ordering::AcqRel) {
            if self.again.swap(false, Ordering::AcqRel) {
                return true;
            }
            self.running.store(false, Ordering::Release);
        }
        false
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
    /// Vacuums the card queues (`VACUUM (INDEX_CLEANUP ON, SKIP_LOCKED, TRUNCATE false)
    /// free_cards, held_cards`), as
    /// the store does on its own after every [`PgOptions::card_queue_vacuum_every`] cards it
    /// allocates and after every import that adds cards. For hosts that turn that off and run
    /// it on a schedule of their own (and after their imports). Skips
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
        if self.shared.upkeep.due(u64::try_from(n).unwrap_or(u64::MAX)) {
            self.spawn_vacuums();
        }
    }

    /// Cards were added to the queue (an import): the queue's size the planner knows is stale,
    /// so a vacuum is due now, or after the one that runs.
    pub(crate) fn restocked(&self) {
        if self.shared.upkeep.restocked() {
            self.spawn_vacuums();
        }
    }

    /// Vacuums the queue in a task of its own, once and again while more are asked for.
    fn spawn_vacuums(&self) {
        let store = self.clone();
        tokio::spawn(async move {
            loop {
                let vacuumed = store.vacuum_card_queue().await;
                if let Err(e) = &vacuumed {
                    tracing::warn!(
                        schema = store.schema(),
                        error = %e,
                        "vacuum of the free-card queue failed"
                    );
                }
                if !store.shared.upkeep.done(vacuumed.is_ok()) {
                    break;
                }
            }
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
        assert!(!upkeep.done(true));
        assert!(!upkeep.due(5), "25 allocated, the next crossing is at 30");
        assert!(
            upkeep.due(25),
            "one vacuum for several multiples crossed at once"
        );
        assert!(!upkeep.done(false));
        assert_eq!(*upkeep.finished().borrow(), 2);
        assert_eq!(upkeep.failures(), 1);
    }

    #[test]
    fn a_restock_starts_a_vacuum_or_follows_the_running_one() {
        assert!(!QueueUpkeep::new(0).restocked(), "never when off");

        let upkeep = QueueUpkeep::new(1_000);
        assert!(upkeep.restocked(), "none running: start one");
        assert!(
            !upkeep.restocked(),
            "one running: it is followed by another"
        );
        assert!(!upkeep.restocked(), "asked twice, run once more");
        assert!(!upkeep.due(1_000), "a vacuum is running");
        assert!(upkeep.done(true), "the one asked for runs now");
        assert!(!upkeep.done(true), "then nothing is left");
        assert!(upkeep.restocked(), "idle again");
        assert!(!upkeep.done(true));
        assert_eq!(*upkeep.finished().borrow(), 3);
    }
}
