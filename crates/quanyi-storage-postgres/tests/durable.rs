//! The durable suite: each `open` is a new pool on the same schema, as a restart or a second
//! process would have.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use quanyi_storage::Store;
use quanyi_storage_postgres::PgStore;
use quanyi_testkit::Durable;

struct PgDurable {
    url: String,
    schema: String,
}

impl Durable for PgDurable {
    fn open(&self) -> Pin<Box<dyn Future<Output = Arc<dyn Store>> + Send + '_>> {
        Box::pin(async move {
            let store = PgStore::connect_with(common::options(&self.url, &self.schema))
                .await
                .expect("open a new pool");
            Arc::new(store) as Arc<dyn Store>
        })
    }

    fn cleanup(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(common::drop_schema(self.url.clone(), self.schema.clone()))
    }
}

async fn factory() -> Option<Arc<dyn Durable>> {
    let (url, schema, store) = common::fresh().await?;
    drop(store);
    Some(Arc::new(PgDurable { url, schema }))
}

quanyi_testkit::durable_conformance!(factory);
