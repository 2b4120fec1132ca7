//! The storage conformance suite against a real PostgreSQL server (`QUANYI_TEST_PG_URL`), one
//! fresh schema per case.

mod common;

use std::sync::Arc;

use quanyi_testkit::Harness;

async fn factory() -> Option<Harness> {
    let (url, schema, store) = common::fresh().await?;
    Some(Harness::new(Arc::new(store)).with_cleanup(common::drop_schema(url, schema)))
}

quanyi_testkit::storage_conformance!(factory);

/// The facade's use cases that depend on the store.
mod shop {
    use super::factory;

    quanyi_testkit::shop_conformance!(factory);
}
