//! The storage conformance suite on a fresh SQLite file per case.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use quanyi_storage_sqlite::SqliteStore;
use quanyi_testkit::Harness;

async fn factory() -> Option<Harness> {
    let path = common::fresh_path();
    let store = SqliteStore::open(&path)
        .await
        .expect("open a fresh database");
    Some(Harness::new(Arc::new(store)).with_cleanup(async move { common::remove_files(&path) }))
}

quanyi_testkit::storage_conformance!(factory);

/// The facade's use cases that depend on the store.
mod shop {
    use super::factory;

    quanyi_testkit::shop_conformance!(factory);
}
