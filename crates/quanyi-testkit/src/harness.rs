//! How adapters hand their stores to the suites: a store plus the clean-up that removes what a
//! test created (a PostgreSQL schema, a SQLite file), and the rule for tests that need a service.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Once};

use quanyi_storage::Store;

type Cleanup = Pin<Box<dyn Future<Output = ()> + Send>>;

/// One test's store and what to do when the test ends.
pub struct Harness {
    /// The store under test.
    pub store: Arc<dyn Store>,
    cleanup: Option<Cleanup>,
}

impl fmt::Debug for Harness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Harness").finish_non_exhaustive()
    }
}

impl Harness {
    /// A store that needs no clean-up.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Harness {
            store,
            cleanup: None,
        }
    }

    /// Runs `cleanup` when the test ends, whether it passed or not.
    pub fn with_cleanup(mut self, cleanup: impl Future<Output = ()> + Send + 'static) -> Self {
        self.cleanup = Some(Box::pin(cleanup));
        self
    }

    /// Runs the clean-up.
    pub async fn finish(self) {
        drop(self.store);
        if let Some(cleanup) = self.cleanup {
            cleanup.await;
        }
    }
}

/// A durable store that can be opened again on the same data, as a restart or a second process
/// would (a new connection pool each time).
pub trait Durable: Send + Sync {
    /// Opens a new, independent store on the same data.
    fn open(&self) -> Pin<Box<dyn Future<Output = Arc<dyn Store>> + Send + '_>>;

    /// Removes the data when the test ends.
    fn cleanup(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// Runs one case on a store in a task of its own, then the clean-up, then re-raises the case's
/// panic if it had one. Used by the suite macros.
pub async fn run_case<F, Fut>(harness: Harness, case: F)
where
    F: FnOnce(Arc<dyn Store>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let outcome = tokio::spawn(case(harness.store.clone())).await;
    harness.finish().await;
    if let Err(e) = outcome {
        if e.is_panic() {
            std::panic::resume_unwind(e.into_panic());
        }
        panic!("case task failed: {e}");
    }
}

/// Runs one durable case, then the clean-up, then re-raises the case's panic.
pub async fn run_durable_case<F, Fut>(durable: Arc<dyn Durable>, case: F)
where
    F: FnOnce(Arc<dyn Durable>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let outcome = tokio::spawn(case(durable.clone())).await;
    durable.cleanup().await;
    if let Err(e) = outcome {
        if e.is_panic() {
            std::panic::resume_unwind(e.into_panic());
        }
        panic!("case task failed: {e}");
    }
}

static SKIP_NOTICE: Once = Once::new();

/// The URL of a test service from the environment variable `var`.
///
/// Unset: prints one line saying the tests that need it are skipped and returns `None`, unless
/// `QUANYI_REQUIRE_SERVICES=1`, in which case a missing service fails the test.
///
/// # Panics
/// When the variable is unset and `QUANYI_REQUIRE_SERVICES=1`.
pub fn service_url(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ if services_required() => {
            panic!("{var} is not set and QUANYI_REQUIRE_SERVICES=1: this test needs the service")
        }
        _ => {
            SKIP_NOTICE.call_once(|| {
                println!(
                    "skipped: {var} is not set, so the tests that need that service do not run"
                );
            });
            None
        }
    }
}

/// True when `QUANYI_REQUIRE_SERVICES=1`: a service that is missing or unreachable fails the run.
pub fn services_required() -> bool {
    std::env::var("QUANYI_REQUIRE_SERVICES").is_ok_and(|v| v.trim() == "1")
}

/// A name unique to one test, for a schema, database file or key prefix: `prefix_` and 16 hex
/// digits.
pub fn unique_name(prefix: &str) -> String {
    let n: u64 = rand::random();
    format!("{prefix}_{n:016x}")
}
