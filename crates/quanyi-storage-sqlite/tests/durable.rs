//! The durable suite: each `open` is a new `SqliteStore` (a new pool) on the same file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use quanyi_storage::Store;
use quanyi_storage_sqlite::SqliteStore;
use quanyi_testkit::Durable;

struct SqliteFile {
    path: PathBuf,
}

impl Durable for SqliteFile {
    fn open(&self) -> Pin<Box<dyn Future<Output = Arc<dyn Store>> + Send + '_>> {
        Box::pin(async move {
            let store = SqliteStore::open(&self.path)
                .await
                .expect("open the database");
            Arc::new(store) as Arc<dyn Store>
        })
    }

    fn cleanup(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move { common::remove_files(&self.path) })
    }
}

async fn factory() -> Option<Arc<dyn Durable>> {
    Some(Arc::new(SqliteFile {
        path: common::fresh_path(),
    }))
}

quanyi_testkit::durable_conformance!(factory);
