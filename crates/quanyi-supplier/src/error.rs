//! The supplier error and the one rule that keeps failover safe: only a
//! [`FailureOutcome::Definite`] failure may fail over.

use quanyi_core::ErrorKind;

/// A supplier result.
pub type Result<T, E = SupplierError> = std::result::Result<T, E>;

/// What a failed call tells about the request it carried.
///
/// This is the rule the engine lives by: a **definite** failure means the supplier certainly did
/// not and will not do the work, so the line may move to the next route. An **unknown** outcome
/// (the request may have been received) must be resolved by asking the *same* supplier with the
/// *same* [`RequestId`](crate::RequestId) before anything else is tried; otherwise a line could
/// be delivered twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureOutcome {
    /// The supplier certainly did not and will not do the work: safe to fail over.
    Definite,
    /// The supplier may have done (or may still do) the work: query it before anything else.
    Unknown,
}

impl FailureOutcome {
    /// True only for [`FailureOutcome::Definite`].
    pub fn may_fail_over(self) -> bool {
        matches!(self, FailureOutcome::Definite)
    }
}

/// Everything a supplier adapter or this crate's validation can report.
///
/// Messages are lower case and never carry card keys or credentials; adapters should build
/// variants through the constructors ([`SupplierError::rejected`]...), which clip untrusted text.
/// When an adapter cannot tell whether a request reached the supplier it must answer
/// [`SupplierError::Timeout`] or [`SupplierError::Protocol`] (unknown), never a definite variant:
/// a wrong "unknown" costs one query, a wrong "definite" can deliver twice.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SupplierError {
    /// The supplier answered and refused: out of stock, invalid account, product off the shelf.
    /// Definite.
    #[error("rejected by supplier: {reason}")]
    Rejected {
        /// The supplier's reason, clipped.
        reason: String,
    },
    /// The request never left: connection refused, DNS failure, no route. Definite.
    #[error("supplier unreachable: {reason}")]
    Unreachable {
        /// What failed, clipped.
        reason: String,
    },
    /// The request was (or may have been) sent and no answer came in time. Unknown.
    #[error("supplier timed out: {reason}")]
    Timeout {
        /// What timed out, clipped.
        reason: String,
    },
    /// The request was sent and the answer could not be understood. Unknown.
    #[error("supplier protocol error: {reason}")]
    Protocol {
        /// What was wrong with the answer, clipped.
        reason: String,
    },
    /// A callback's signature does not verify. Says nothing about any request.
    #[error("callback signature does not verify")]
    BadSignature,
    /// A callback is signed correctly but cannot be read. Says nothing about any request.
    #[error("malformed callback: {reason}")]
    MalformedCallback {
        /// What was wrong, clipped.
        reason: String,
    },
    /// The supplier does not know a request id it was asked about in a way that does not prove
    /// it never received it (e.g. a cancel). Unknown; [`RequestStatus::NotFound`](crate::RequestStatus::NotFound)
    /// is the definite answer to a query.
    #[error("unknown request")]
    UnknownRequest,
    /// A value built by this crate (an id, a route plan) breaks a rule. Definite: nothing was sent.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// What was being built.
        what: &'static str,
        /// Why it was refused, clipped.
        reason: String,
    },
}

impl SupplierError {
    /// [`SupplierError::Rejected`] with `reason` clipped.
    pub fn rejected(reason: &str) -> Self {
        SupplierError::Rejected {
            reason: quanyi_core::text::clip(reason),
        }
    }

    /// [`SupplierError::Unreachable`] with `reason` clipped.
    pub fn unreachable(reason: &str) -> Self {
        SupplierError::Unreachable {
            reason: quanyi_core::text::clip(reason),
        }
    }

    /// [`SupplierError::Timeout`] with `reason` clipped.
    pub fn timeout(reason: &str) -> Self {
        SupplierError::Timeout {
            reason: quanyi_core::text::clip(reason),
        }
    }

    /// [`SupplierError::Protocol`] with `reason` clipped.
    pub fn protocol(reason: &str) -> Self {
        SupplierError::Protocol {
            reason: quanyi_core::text::clip(reason),
        }
    }

    /// [`SupplierError::MalformedCallback`] with `reason` clipped.
    pub fn malformed_callback(reason: &str) -> Self {
        SupplierError::MalformedCallback {
            reason: quanyi_core::text::clip(reason),
        }
    }

    pub(crate) fn invalid(what: &'static str, reason: &str) -> Self {
        SupplierError::Invalid {
            what,
            reason: quanyi_core::text::clip(reason),
        }
    }

    /// Whether the request this error answers may fail over (see [`FailureOutcome`]).
    ///
    /// Definite: `Rejected`, `Unreachable`, `Invalid`. Everything else is unknown, including the
    /// callback errors, which say nothing about a request and so must not trigger failover.
    pub fn outcome(&self) -> FailureOutcome {
        match self {
            SupplierError::Rejected { .. }
            | SupplierError::Unreachable { .. }
            | SupplierError::Invalid { .. } => FailureOutcome::Definite,
            SupplierError::Timeout { .. }
            | SupplierError::Protocol { .. }
            | SupplierError::BadSignature
            | SupplierError::MalformedCallback { .. }
            | SupplierError::UnknownRequest => FailureOutcome::Unknown,
        }
    }

    /// The driver-neutral kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            SupplierError::Rejected { .. } => ErrorKind::Exhausted,
            SupplierError::Unreachable { .. }
            | SupplierError::Timeout { .. }
            | SupplierError::Protocol { .. } => ErrorKind::Unavailable,
            SupplierError::BadSignature => ErrorKind::Forbidden,
            SupplierError::MalformedCallback { .. } | SupplierError::Invalid { .. } => {
                ErrorKind::Invalid
            }
            SupplierError::UnknownRequest => ErrorKind::NotFound,
        }
    }
}

impl From<quanyi_core::IdError> for SupplierError {
    /// A supplier id, product code or request id that failed to parse.
    fn from(e: quanyi_core::IdError) -> Self {
        SupplierError::invalid(e.what(), e.text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(error: SupplierError, outcome: FailureOutcome, kind: ErrorKind) {
        assert_eq!(error.outcome(), outcome, "{error}");
        assert_eq!(error.kind(), kind, "{error}");
        let text = error.to_string();
        assert_eq!(text, text.to_lowercase(), "lower case: {text}");
        assert!(!text.ends_with('.'), "no trailing punctuation: {text}");
    }

    #[test]
    fn outcomes_and_kinds() {
        use FailureOutcome::{Definite, Unknown};
        check(
            SupplierError::rejected("out of stock"),
            Definite,
            ErrorKind::Exhausted,
        );
        check(
            SupplierError::unreachable("connection refused"),
            Definite,
            ErrorKind::Unavailable,
        );
        check(
            SupplierError::timeout("read timed out"),
            Unknown,
            ErrorKind::Unavailable,
        );
        check(
            SupplierError::protocol("bad json"),
            Unknown,
            ErrorKind::Unavailable,
        );
        check(SupplierError::BadSignature, Unknown, ErrorKind::Forbidden);
        check(
            SupplierError::malformed_callback("no id"),
            Unknown,
            ErrorKind::Invalid,
        );
        check(SupplierError::UnknownRequest, Unknown, ErrorKind::NotFound);
        check(
            SupplierError::invalid("route plan", "empty"),
            Definite,
            ErrorKind::Invalid,
        );
    }

    #[test]
    fn only_definite_fails_over() {
        assert!(FailureOutcome::Definite.may_fail_over());
        assert!(!FailureOutcome::Unknown.may_fail_over());
    }

    #[test]
    fn reasons_are_clipped() {
        let long = "x".repeat(500);
        let SupplierError::Rejected { reason } = SupplierError::rejected(&long) else {
            panic!("rejected")
        };
        assert!(reason.chars().count() <= quanyi_core::text::CLIP_CHARS + 1);
    }

    #[test]
    fn errors_are_send_sync_static() {
        fn assert_bounds<T: Send + Sync + 'static + std::error::Error>() {}
        assert_bounds::<SupplierError>();
    }
}
