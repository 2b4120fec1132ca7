//! Combined writes: concurrent calls of one kind (placing orders, recording payments) share one
//! statement and one commit.
//!
//! A call queues its request, then either finds it already taken by a batch (and waits for its
//! answer) or takes a batch permit and runs everything queued so far, its own request and the
//! ones queued by other calls, as one batch. At most `permits` batches of a kind run at once,
//! so while they run, new calls gather into the next batch: one caller alone runs batches of one
//! with no waiting, and under load the batches grow with it.
//!
//! A batch runs in a task of its own. A caller that is dropped (its future cancelled) does not
//! cut short the batch that carries other callers' requests; a request whose caller is gone
//! before its batch starts is left out.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use quanyi_storage::{Error, Result};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::error::Batch;

/// How often a call that would go out alone yields to the runtime first, so that calls ready
/// in the same instant join its batch. On the durable bench at 8 buyers, batches of one were
/// half of all batches; a batch of one costs the server nearly what a batch of four does.
const COMPANY_YIELDS: usize = 2;

/// What a batch answers for one request.
pub(crate) enum Answer<R, T> {
    /// The request's outcome.
    Done(Result<T>),
    /// The batch did not decide this request (it was refused there, or the batch statement
    /// failed as a whole and wrote nothing): the request goes back to its caller, who runs it
    /// alone, where every refusal gets its exact reason.
    Alone(R),
}

/// A queued request and where its answer goes.
pub(crate) struct Pending<R, T> {
    pub(crate) request: R,
    reply: oneshot::Sender<Answer<R, T>>,
}

impl<R, T> Pending<R, T> {
    /// Answers with the request's outcome. A caller that has gone away no longer wants it.
    pub(crate) fn done(self, result: Result<T>) {
        let _ = self.reply.send(Answer::Done(result));
    }

    /// Gives the request back to its caller to run alone.
    pub(crate) fn alone(self) {
        let _ = self.reply.send(Answer::Alone(self.request));
    }
}

/// The queue and the batch permits of one kind of write.
pub(crate) struct Combiner<R, T> {
    queue: Mutex<Vec<Pending<R, T>>>,
    permits: Arc<Semaphore>,
    max_batch: usize,
    batches: AtomicU64,
    requests: AtomicU64,
}

/// How many batches of one kind a store has run, and how many requests they carried.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchCount {
    /// Batches run (a lone call is a batch of one).
    pub batches: u64,
    /// Requests they carried.
    pub requests: u64,
}

impl<R, T> Combiner<R, T> {
    /// At most `permits` batches at once (at least one), each of at most `max_batch` requests.
    pub(crate) fn new(permits: usize, max_batch: usize) -> Self {
        Combiner {
            queue: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(permits.max(1))),
            max_batch: max_batch.max(1),
            batches: AtomicU64::new(0),
            requests: AtomicU64::new(0),
        }
    }

    /// Requests waiting for a batch.
    #[cfg(test)]
    pub(crate) fn queued(&self) -> usize {
        self.queue.lock().len()
    }

    /// Up to `max_batch` queued requests whose callers still wait, oldest first.
    fn take(&self) -> Vec<Pending<R, T>> {
        let mut queue = self.queue.lock();
        queue.retain(|p| !p.reply.is_closed());
        let n = queue.len().min(self.max_batch);
        if n > 0 {
            self.batches.fetch_add(1, Ordering::Relaxed);
            self.requests.fetch_add(n as u64, Ordering::Relaxed);
        }
        queue.drain(..n).collect()
    }

    /// Batches run so far and the requests they carried.
    pub(crate) fn count(&self) -> BatchCount {
        BatchCount {
            batches: self.batches.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
        }
    }

    /// Queues `request` and returns its answer. `run` runs one batch, in a task of its own, and
    /// must answer every request it is given.
    pub(crate) async fn submit<F, Fut>(&self, request: R, run: F) -> Answer<R, T>
    where
        F: Fn(Vec<Pending<R, T>>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (reply, mut answer) = oneshot::channel();
        self.queue.lock().push(Pending { request, reply });
        loop {
            tokio::select! {
                biased;
                got = &mut answer => return got.unwrap_or_else(|_| lost()),
                permit = Arc::clone(&self.permits).acquire_owned() => {
                    let Ok(permit) = permit else {
                        // The semaphore is never closed.
                        return Answer::Done(Err(Error::Unavailable {
                            message: "write batches closed".into(),
                            source: None,
                        }));
                    };
                    // Callers that are ready to queue (those the last batch's answers woke)
                    // get a chance to before a lone request goes out alone: a couple of
                    // yields to the runtime, nothing when no other task is ready.
                    for _ in 0..COMPANY_YIELDS {
                        if self.queue.lock().len() > 1 {
                            break;
                        }
                        tokio::task::yield_now().await;
                    }
                    let batch = self.take();
                    if batch.is_empty() {
                        // Our request is in a batch another call started.
                        drop(permit);
                        return answer.await.unwrap_or_else(|_| lost());
                    }
                    spawn_batch(permit, run(batch));
                }
            }
        }
    }
}

/// Answers every request of a batch from what its statement decided: a request it wrote gets
/// its outcome (`written`, by position from 1), any other runs alone; when the server refused
/// the statement every request runs alone; when the batch failed every request gets the error.
pub(crate) fn answer_all<R, T>(
    batch: Vec<Pending<R, T>>,
    decided: std::result::Result<HashMap<i64, T>, Batch>,
) {
    match decided {
        Ok(mut written) => {
            for (k, p) in (1i64..).zip(batch) {
                match written.remove(&k) {
                    Some(outcome) => p.done(Ok(outcome)),
                    None => p.alone(),
                }
            }
        }
        Err(Batch::Refused) => batch.into_iter().for_each(Pending::alone),
        Err(Batch::Failed(e)) => {
            let n = batch.len();
            for (p, e) in batch.into_iter().zip(Batch::errors(e, n)) {
                p.done(Err(e));
            }
        }
    }
}

fn spawn_batch(permit: OwnedSemaphorePermit, batch: impl Future<Output = ()> + Send + 'static) {
    tokio::spawn(async move {
        batch.await;
        drop(permit);
    });
}

/// The answer of a batch that ended without answering (its task panicked or was aborted with
/// the runtime): whether it wrote is unknown, as with a lost connection.
fn lost<R, T>() -> Answer<R, T> {
    Answer::Done(Err(Error::Unavailable {
        message: "write batch ended without an answer".into(),
        source: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use quanyi_core::ErrorKind;
    use tokio::sync::mpsc;
    use tokio::task::JoinHandle;

    type BoxedBatch = std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'static>>;
    type Run = Box<dyn Fn(Vec<Pending<u32, usize>>) -> BoxedBatch + Send + Sync>;

    /// A combiner whose batches report their requests on `seen`, wait until `gate` lets them go
    /// on, then answer every request with the batch size.
    struct Rig {
        combiner: Arc<Combiner<u32, usize>>,
        seen: mpsc::UnboundedReceiver<Vec<u32>>,
        gate: Arc<Semaphore>,
        run: Arc<Run>,
    }

    impl Rig {
        fn new(max_batch: usize, open: usize) -> Rig {
            let (tx, seen) = mpsc::unbounded_channel();
            let gate = Arc::new(Semaphore::new(open));
            let g = Arc::clone(&gate);
            let run: Run = Box::new(move |batch| {
                let (tx, gate) = (tx.clone(), Arc::clone(&g));
                Box::pin(async move {
                    let _ = tx.send(batch.iter().map(|p| p.request).collect());
                    if let Ok(permit) = gate.acquire().await {
                        permit.forget();
                    }
                    let n = batch.len();
                    for p in batch {
                        p.done(Ok(n));
                    }
                })
            });
            Rig {
                combiner: Arc::new(Combiner::new(1, max_batch)),
                seen,
                gate,
                run: Arc::new(run),
            }
        }

        /// A call in a task of its own; its answer is the size of the batch that carried it.
        fn call(&self, n: u32) -> JoinHandle<usize> {
            let (c, run) = (Arc::clone(&self.combiner), Arc::clone(&self.run));
            tokio::spawn(async move { done(c.submit(n, &**run).await) })
        }

        /// Starts a first call and returns once its batch runs (held at the gate).
        async fn first_running(&mut self) -> JoinHandle<usize> {
            let first = self.call(1);
            assert_eq!(self.seen.recv().await, Some(vec![1]));
            first
        }

        async fn until_queued(&self, n: usize) {
            while self.combiner.queued() < n {
                tokio::task::yield_now().await;
            }
        }
    }

    fn done(answer: Answer<u32, usize>) -> usize {
        match answer {
            Answer::Done(Ok(n)) => n,
            Answer::Done(Err(e)) => panic!("error {e}"),
            Answer::Alone(r) => panic!("request {r} back"),
        }
    }

    #[tokio::test]
    async fn a_lone_call_is_a_batch_of_one_at_once() {
        let mut rig = Rig::new(8, Semaphore::MAX_PERMITS);
        assert_eq!(rig.call(7).await.unwrap(), 1);
        assert_eq!(rig.call(8).await.unwrap(), 1);
        assert_eq!(rig.seen.recv().await, Some(vec![7]));
        assert_eq!(rig.seen.recv().await, Some(vec![8]));
        assert_eq!(
            rig.combiner.count(),
            BatchCount {
                batches: 2,
                requests: 2
            }
        );
    }

    #[tokio::test]
    async fn calls_ready_together_share_one_batch_though_none_was_running() {
        // One thread: the three calls run in turn, and only the first's yields let the
        // others queue before it takes the batch.
        let mut rig = Rig::new(8, Semaphore::MAX_PERMITS);
        let calls: Vec<_> = (1..=3).map(|n| rig.call(n)).collect();
        for c in calls {
            assert_eq!(c.await.unwrap(), 3);
        }
        assert_eq!(rig.seen.recv().await, Some(vec![1, 2, 3]));
        assert_eq!(
            rig.combiner.count(),
            BatchCount {
                batches: 1,
                requests: 3
            }
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_that_overlap_a_running_batch_share_the_next_one() {
        let mut rig = Rig::new(8, 0);
        let first = rig.first_running().await;
        let rest: Vec<_> = (2..=4).map(|n| rig.call(n)).collect();
        rig.until_queued(3).await;
        rig.gate.add_permits(2);
        assert_eq!(first.await.unwrap(), 1);
        let mut second = rig.seen.recv().await.unwrap();
        second.sort_unstable();
        assert_eq!(second, vec![2, 3, 4]);
        for r in rest {
            assert_eq!(r.await.unwrap(), 3);
        }
        assert_eq!(
            rig.combiner.count(),
            BatchCount {
                batches: 2,
                requests: 4
            }
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_hold_at_most_max_batch_requests() {
        let mut rig = Rig::new(2, 0);
        let first = rig.first_running().await;
        let rest: Vec<_> = (2..=6).map(|n| rig.call(n)).collect();
        rig.until_queued(5).await;
        rig.gate.add_permits(10);
        assert_eq!(first.await.unwrap(), 1);
        let mut sizes = vec![];
        for _ in 0..3 {
            sizes.push(rig.seen.recv().await.unwrap().len());
        }
        assert_eq!(sizes, vec![2, 2, 1]);
        for r in rest {
            assert!(r.await.unwrap() <= 2);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_caller_gone_before_its_batch_starts_is_left_out() {
        let mut rig = Rig::new(8, 0);
        let first = rig.first_running().await;
        let gone = rig.call(2);
        let kept = rig.call(3);
        rig.until_queued(2).await;
        gone.abort();
        assert!(gone.await.unwrap_err().is_cancelled());
        rig.gate.add_permits(2);
        assert_eq!(first.await.unwrap(), 1);
        assert_eq!(rig.seen.recv().await, Some(vec![3]));
        assert_eq!(kept.await.unwrap(), 1);
    }

    #[tokio::test]
    async fn a_request_the_batch_did_not_decide_comes_back() {
        let c: Combiner<u32, usize> = Combiner::new(1, 8);
        let answer = c
            .submit(5, |batch: Vec<Pending<u32, usize>>| async move {
                batch.into_iter().for_each(Pending::alone);
            })
            .await;
        assert!(matches!(answer, Answer::Alone(5)));
    }

    #[tokio::test]
    async fn a_batch_that_ends_without_answering_is_unavailable() {
        let c: Combiner<u32, usize> = Combiner::new(1, 8);
        let answer = c
            .submit(5, |batch: Vec<Pending<u32, usize>>| async move {
                // Dropped unanswered, as when the batch's task dies.
                drop(batch);
            })
            .await;
        match answer {
            Answer::Done(Err(e)) => assert_eq!(e.kind(), ErrorKind::Unavailable),
            _ => panic!("expected an error"),
        }
    }
}
