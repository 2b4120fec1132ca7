//! The driver-neutral error kind every quanyi error maps to.

use std::fmt;

/// What kind of failure an error is, so a host can branch without knowing which crate raised it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The input is malformed or breaks a rule; retrying the same input will fail again.
    Invalid,
    /// The thing asked for does not exist (or is not visible to the caller).
    NotFound,
    /// The state changed underneath the caller (stale version, duplicate, already taken).
    Conflict,
    /// The caller may not do this.
    Forbidden,
    /// Not enough stock or capacity to satisfy the request.
    Exhausted,
    /// A dependency is down or busy; the same call may succeed later.
    Unavailable,
    /// A bug or corrupted data.
    Internal,
}

impl ErrorKind {
    /// A stable lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Invalid => "invalid",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::Exhausted => "exhausted",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Internal => "internal",
        }
    }

    /// True when the same call may succeed if retried later.
    pub fn is_transient(self) -> bool {
        matches!(self, ErrorKind::Unavailable | ErrorKind::Conflict)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
