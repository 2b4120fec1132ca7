//! The in-memory adapter runs the whole storage conformance suite.

use std::sync::Arc;

use quanyi_storage::MemoryStore;
use quanyi_testkit::Harness;

async fn memory() -> Option<Harness> {
    Some(Harness::new(Arc::new(MemoryStore::new())))
}

quanyi_testkit::storage_conformance!(memory);
