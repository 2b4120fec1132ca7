//! What the PostgreSQL test files share: a fresh schema per test, dropped afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code, unreachable_pub)]

use std::io::Write;
use std::sync::Once;

use quanyi_storage_postgres::{PgOptions, PgStore};
use tokio_postgres::NoTls;

/// The server URL, or `None` (with one skip line) when the tests that need it do not run.
pub fn url() -> Option<String> {
    let url = quanyi_testkit::service_url("QUANYI_TEST_PG_URL");
    if url.is_none() {
        // The harness captures `println!` of passing tests; say it where a person sees it.
        static ONCE: Once = Once::new();
        ONCE.call_once(|| {
            let _ = writeln!(
                std::io::stdout(),
                "skipped: QUANYI_TEST_PG_URL is not set, so the PostgreSQL tests do not run"
            );
        });
    }
    url
}

/// Options for a store in `schema`, small enough that parallel tests fit the server.
pub fn options(url: &str, schema: &str) -> PgOptions {
    PgOptions::new(url).schema(schema).max_connections(8)
}

/// A migrated store in a new schema, or `None` when the server is not configured, or is
/// configured but unreachable and `QUANYI_REQUIRE_SERVICES` is not `1`.
pub async fn fresh() -> Option<(String, String, PgStore)> {
    let url = url()?;
    let schema = quanyi_testkit::unique_name("qt");
    let store = match PgStore::connect_with(options(&url, &schema)).await {
        Ok(store) => store,
        Err(e) if !quanyi_testkit::services_required() => {
            println!("skipped: PostgreSQL at QUANYI_TEST_PG_URL is unreachable: {e}");
            return None;
        }
        Err(e) => panic!("PostgreSQL at QUANYI_TEST_PG_URL is unreachable: {e}"),
    };
    store.migrate().await.expect("migrate");
    Some((url, schema, store))
}

/// A plain connection for what the tests do behind the store's back.
pub async fn admin(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.expect("connect");
    tokio::spawn(connection);
    client
}

/// Drops a test schema and everything in it.
pub async fn drop_schema(url: String, schema: String) {
    let client = admin(&url).await;
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await
        .expect("drop schema");
}
