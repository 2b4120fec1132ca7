//! How driver and pool errors become the driver-neutral storage error.

use std::fmt;

use quanyi_storage::Error;
use tokio_postgres::error::SqlState;

/// A `tokio-postgres` error as a storage error.
///
/// Unique violations and lost races (serialization failures, deadlocks) are `Conflict`; bad
/// values are `Invalid`; everything else (a lost connection, a server shutting down, a timeout,
/// a missing table) is `Unavailable` with the driver's error as its source.
pub(crate) fn db(e: tokio_postgres::Error) -> Error {
    let Some(server) = e.as_db_error() else {
        let message = if e.is_closed() {
            "connection closed".to_owned()
        } else {
            format!("database connection failed: {e}")
        };
        return Error::Unavailable {
            message,
            source: Some(Box::new(e)),
        };
    };
    let code = server.code().clone();
    if code == SqlState::UNIQUE_VIOLATION {
        let constraint = server.constraint().unwrap_or("unique key").to_owned();
        return Error::Conflict {
            what: what_of(&constraint),
            id: constraint,
            reason: "id already stored",
        };
    }
    if code == SqlState::T_R_SERIALIZATION_FAILURE
        || code == SqlState::T_R_DEADLOCK_DETECTED
        || code == SqlState::LOCK_NOT_AVAILABLE
    {
        return Error::Conflict {
            what: "transaction",
            id: code.code().to_owned(),
            reason: "lost a race with a concurrent transaction",
        };
    }
    if code.code().starts_with("22") {
        return Error::Invalid(format!("value refused by the database ({})", code.code()));
    }
    Error::Unavailable {
        message: format!("database error {}", code.code()),
        source: Some(Box::new(e)),
    }
}

/// Why a combined write (see `combine`) decided none of its requests.
pub(crate) enum Batch {
    /// The server refused the statement (a unique violation, a lost race, a bad value): it
    /// wrote nothing, and each request runs alone for its own answer.
    Refused,
    /// No answer from the server (a lost connection, a pool timeout) or an answer that does not
    /// decode: whether the batch committed is unknown, and every request gets this error.
    Failed(Error),
}

impl Batch {
    /// The error of a failed batch for each of its requests: the first gets the error itself,
    /// the others a copy that keeps its kind and message (the driver's error is not `Clone`).
    pub(crate) fn errors(e: Error, n: usize) -> impl Iterator<Item = Error> {
        let copy = || match &e {
            Error::Unavailable { message, source } => Error::Unavailable {
                message: match source {
                    Some(source) => format!("{message}: {source}"),
                    None => message.clone(),
                },
                source: None,
            },
            Error::Corrupt(what) => Error::Corrupt(what.clone()),
            other => Error::Unavailable {
                message: other.to_string(),
                source: None,
            },
        };
        let copies: Vec<Error> = (1..n).map(|_| copy()).collect();
        std::iter::once(e).chain(copies)
    }

    pub(crate) fn of(e: tokio_postgres::Error) -> Batch {
        if e.as_db_error().is_some() {
            Batch::Refused
        } else {
            Batch::Failed(db(e))
        }
    }
}

/// A pool error (timeout, closed pool, failed connect) as `Unavailable`.
pub(crate) fn pool(e: deadpool_postgres::PoolError) -> Error {
    if let deadpool_postgres::PoolError::Backend(inner) = e {
        return db(inner);
    }
    Error::Unavailable {
        message: format!("connection pool: {e}"),
        source: Some(Box::new(e)),
    }
}

/// Puts the id of the record the caller wrote into a unique-violation conflict.
pub(crate) fn with_id(e: Error, id: impl fmt::Display) -> Error {
    match e {
        Error::Conflict {
            what,
            reason: "id already stored",
            ..
        } => Error::Conflict {
            what,
            id: id.to_string(),
            reason: "id already stored",
        },
        other => other,
    }
}

/// Stored data that does not decode.
pub(crate) fn corrupt(what: &str, detail: impl fmt::Display) -> Error {
    Error::Corrupt(format!("{what}: {detail}"))
}

fn what_of(constraint: &str) -> &'static str {
    match constraint {
        "goods_pkey" => "goods",
        "skus_pkey" => "sku",
        "orders_pkey" | "order_cards_pkey" => "order",
        "events_id_key" => "event",
        "cards_pkey" | "cards_blind_index_key" => "card",
        "key_rings_pkey" => "key ring",
        "payment_notices_pkey" | "conflicting_notices_pkey" => "payment notice",
        "audit_id_key" => "audit record",
        "jobs_pkey" | "jobs_dedupe_key" => "job",
        "sale_claims_pkey" => "claim",
        "coupons_pkey" => "coupon",
        "pricing_heads_pkey" | "pricing_revisions_pkey" => "pricing",
        _ => "record",
    }
}
