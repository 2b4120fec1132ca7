//! The connection pool against a real server (`QUANYI_TEST_PG_URL`): which connection serves a
//! call, told apart by the server process behind it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::batch_tests::with_store;
use crate::{Conn, PgStore};

/// The server process behind a connection.
async fn backend(conn: &Conn) -> i32 {
    conn.client()
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

/// Takes two connections, returns them `first_back` first, and answers which of the two
/// serves the next call (`true`: the one returned last).
async fn next_is_last_returned(store: &PgStore, first_back_is_a: bool) -> bool {
    let a = store.conn().await.unwrap();
    let b = store.conn().await.unwrap();
    let (pa, pb) = (backend(&a).await, backend(&b).await);
    assert_ne!(
        pa, pb,
        "two connections held at once are two server processes"
    );
    let last = if first_back_is_a {
        drop(a);
        drop(b);
        pb
    } else {
        drop(b);
        drop(a);
        pa
    };
    let next = store.conn().await.unwrap();
    let pn = backend(&next).await;
    assert!(
        pn == pa || pn == pb,
        "no new connection is opened while two are idle"
    );
    pn == last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_most_recently_returned_connection_serves_the_next_call() {
    with_store(|store, _admin, _schema| async move {
        assert!(next_is_last_returned(&store, true).await);
        assert!(next_is_last_returned(&store, false).await);
        assert!(next_is_last_returned(&store, true).await);
    })
    .await;
}
