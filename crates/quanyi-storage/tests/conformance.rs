//! The in-memory adapter runs the whole storage conformance suite, and the facade's use cases
//! that depend on the store.

use std::sync::Arc;

use quanyi_storage::MemoryStore;
use quanyi_testkit::Harness;

async fn memory() -> Option<Harness> {
    Some(Harness::new(Arc::new(MemoryStore::new())))
}

quanyi_testkit::storage_conformance!(memory);

/// The facade's use cases that depend on the store, on the in-memory store.
mod shop {
    use super::memory;

    quanyi_testkit::shop_conformance!(memory);
}
