//! Shared by the examples: choosing a store from a `--store` argument.
#![allow(dead_code, unreachable_pub)]

use std::error::Error;
use std::sync::Arc;

use quanyi::{MemoryStore, Store};

/// Where an example keeps its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSpec {
    /// In memory, gone when the example ends.
    Memory,
    /// A SQLite database file.
    Sqlite(String),
    /// A PostgreSQL database URL.
    Postgres(String),
}

impl StoreSpec {
    /// Parses `memory`, `sqlite:PATH` or `postgres:URL`.
    pub fn parse(text: &str) -> Result<Self, Box<dyn Error>> {
        if text == "memory" {
            Ok(StoreSpec::Memory)
        } else if let Some(path) = text.strip_prefix("sqlite:").filter(|p| !p.is_empty()) {
            Ok(StoreSpec::Sqlite(path.to_owned()))
        } else if let Some(url) = text.strip_prefix("postgres:").filter(|u| !u.is_empty()) {
            Ok(StoreSpec::Postgres(url.to_owned()))
        } else {
            Err(format!("unknown store {text:?}: use memory, sqlite:PATH or postgres:URL").into())
        }
    }

    /// True for stores that keep data after the process ends.
    pub fn is_durable(&self) -> bool {
        !matches!(self, StoreSpec::Memory)
    }

    /// Opens the store (PostgreSQL: connects and applies migrations).
    pub async fn open(&self) -> Result<Arc<dyn Store>, Box<dyn Error>> {
        Ok(match self {
            StoreSpec::Memory => Arc::new(MemoryStore::new()),
            StoreSpec::Sqlite(path) => Arc::new(quanyi::SqliteStore::open(path).await?),
            StoreSpec::Postgres(url) => {
                let store = quanyi::PgStore::connect(url).await?;
                store.migrate().await?;
                Arc::new(store)
            }
        })
    }
}

impl std::fmt::Display for StoreSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreSpec::Memory => f.write_str("memory"),
            StoreSpec::Sqlite(path) => write!(f, "sqlite:{path}"),
            // Never print a password that may be in the URL.
            StoreSpec::Postgres(_) => f.write_str("postgres"),
        }
    }
}
