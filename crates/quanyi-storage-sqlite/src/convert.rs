//! Conversions between quanyi values and SQLite columns, and from driver errors to
//! [`quanyi_storage::Error`].

use chrono::{DateTime, Utc};
use quanyi_storage::{Error, Result};
use rusqlite::ErrorCode;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Extended result codes of the unique and primary-key constraints.
const SQLITE_CONSTRAINT_PRIMARYKEY: i32 = 1555;
const SQLITE_CONSTRAINT_UNIQUE: i32 = 2067;

/// Maps a driver error: busy or locked after the busy timeout is `Unavailable`; a unique or
/// primary-key violation is `Conflict` (a second line of defence: commands check first); a
/// column that does not decode is `Corrupt`; anything else is `Unavailable` with the source.
pub(crate) fn sql_error(e: rusqlite::Error) -> Error {
    match &e {
        rusqlite::Error::SqliteFailure(f, _) => match f.code {
            ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => Error::Unavailable {
                message: "database is busy (locked by another connection)".into(),
                source: Some(Box::new(e)),
            },
            ErrorCode::ConstraintViolation
                if matches!(
                    f.extended_code,
                    SQLITE_CONSTRAINT_PRIMARYKEY | SQLITE_CONSTRAINT_UNIQUE
                ) =>
            {
                Error::Conflict {
                    what: "row",
                    id: e.to_string(),
                    reason: "unique key already stored",
                }
            }
            ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase => {
                Error::Corrupt(format!("database file: {e}"))
            }
            _ => unavailable(e),
        },
        rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::IntegralValueOutOfRange(..)
        | rusqlite::Error::Utf8Error(..)
        | rusqlite::Error::InvalidColumnType(..) => Error::Corrupt(format!("stored column: {e}")),
        _ => unavailable(e),
    }
}

fn unavailable(e: rusqlite::Error) -> Error {
    Error::Unavailable {
        message: format!("sqlite: {e}"),
        source: Some(Box::new(e)),
    }
}

/// Extension to turn driver results into storage results.
pub(crate) trait SqlResult<T> {
    /// Maps the error with [`sql_error`].
    fn db(self) -> Result<T>;
}

impl<T> SqlResult<T> for rusqlite::Result<T> {
    fn db(self) -> Result<T> {
        self.map_err(sql_error)
    }
}

/// An instant as nanoseconds since the epoch (UTC): exact for every `DateTime<Utc>` between
/// 1677 and 2262, so values read back compare equal to what was written.
pub(crate) fn ts(t: DateTime<Utc>) -> Result<i64> {
    t.timestamp_nanos_opt()
        .ok_or_else(|| Error::Invalid(format!("instant {t} is outside 1677..2262")))
}

/// The instant stored by [`ts`].
pub(crate) fn from_ts(nanos: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_nanos(nanos)
}

/// A `LIMIT` value.
pub(crate) fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A counter or version as an SQLite integer.
pub(crate) fn int(v: u64, what: &str) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::Invalid(format!("{what} {v} is too large to store")))
}

/// A stored counter or version.
pub(crate) fn uint(v: i64, what: &str) -> Result<u64> {
    u64::try_from(v).map_err(|_| Error::Corrupt(format!("{what} is negative: {v}")))
}

/// A stored 32-bit counter.
pub(crate) fn uint32(v: i64, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::Corrupt(format!("{what} is out of range: {v}")))
}

/// A JSON document of a value.
pub(crate) fn to_doc<T: Serialize + ?Sized>(value: &T, what: &str) -> Result<String> {
    serde_json::to_string(value)
        .map_err(|e| Error::Invalid(format!("{what} does not serialize: {e}")))
}

/// A value from its stored JSON document; a document that does not decode is `Corrupt`.
pub(crate) fn from_doc<T: DeserializeOwned>(doc: &str, what: &str) -> Result<T> {
    serde_json::from_str(doc).map_err(|e| Error::Corrupt(format!("stored {what} document: {e}")))
}

/// The values whose JSON documents the first column of `sql` returns for `params`, in order.
pub(crate) fn read_docs<T: DeserializeOwned>(
    tx: &rusqlite::Transaction<'_>,
    sql: &str,
    params: impl rusqlite::Params,
    what: &str,
) -> Result<Vec<T>> {
    let mut stmt = tx.prepare_cached(sql).db()?;
    let docs = stmt
        .query_map(params, |r| r.get::<_, String>(0))
        .db()?
        .collect::<rusqlite::Result<Vec<String>>>()
        .db()?;
    docs.iter().map(|d| from_doc(d, what)).collect()
}

/// A 16-byte id column as a UUID.
pub(crate) fn uuid(bytes: [u8; 16]) -> uuid::Uuid {
    uuid::Uuid::from_bytes(bytes)
}
