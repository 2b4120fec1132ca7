//! The in-memory adapter runs the whole storage conformance suite.

use std::sync::Arc;

use quanyi_storage::{MemoryStore, Store};

async fn memory() -> Option<Arc<dyn Store>> {
    Some(Arc::new(MemoryStore::new()))
}

quanyi_testkit::storage_conformance!(memory);
