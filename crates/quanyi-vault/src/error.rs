//! The vault's error type. No message ever carries plaintext, key text or ciphertext.

use std::fmt;

use quanyi_core::ErrorKind;

use crate::ring::{KeyId, KeyState};

/// A vault result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a card code or secret was rejected. Never carries the text itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum InvalidReason {
    /// Nothing is left after trimming surrounding whitespace.
    Empty,
    /// More than [`MAX_CODE_CHARS`](crate::MAX_CODE_CHARS) characters.
    TooLong,
    /// A control character (such as a tab, a line break or NUL) inside the text.
    ControlCharacter,
}

impl fmt::Display for InvalidReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InvalidReason::Empty => "empty",
            InvalidReason::TooLong => "too long",
            InvalidReason::ControlCharacter => "contains a control character",
        })
    }
}

/// Everything that can go wrong in the vault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A sealed value could not be opened: unknown or retired key, another context, tampered or
    /// malformed bytes. The causes are deliberately not told apart.
    #[error("sealed value could not be opened")]
    OpenFailed,
    /// The active data key has no granted encryption budget left (see [`KeyRing::grant`](crate::KeyRing::grant)),
    /// or a grant would pass the key's use limit: rotate the ring.
    #[error("encryption budget of the data key is exhausted")]
    BudgetExhausted,
    /// The root key is not the one the key ring was wrapped with (or the ring was tampered with).
    #[error("root key does not match the key ring")]
    WrongRootKey,
    /// A key provider could not produce the root key. The message never contains key text.
    #[error("key provider failed: {0}")]
    KeyProvider(String),
    /// A card code was rejected.
    #[error("invalid card code: {0}")]
    InvalidCode(InvalidReason),
    /// A card secret was rejected.
    #[error("invalid card secret: {0}")]
    InvalidSecret(InvalidReason),
    /// No data key with this id in the ring.
    #[error("unknown data key {0}")]
    UnknownKey(KeyId),
    /// The data key is not in a state that allows the operation.
    #[error("data key {id} is {state}: cannot {action}")]
    IllegalKeyState {
        /// The key.
        id: KeyId,
        /// Its current state.
        state: KeyState,
        /// What was attempted.
        action: &'static str,
    },
    /// Bytes that do not start with a valid sealed-value header.
    #[error("malformed sealed value")]
    MalformedSealedValue,
    /// The stored key ring is inconsistent (wrong lengths, missing active key, bad ids).
    #[error("corrupt key ring: {0}")]
    CorruptKeyRing(&'static str),
    /// A value was sealed for a tenant other than the ring's.
    #[error("seal context tenant differs from the key ring's tenant")]
    TenantMismatch,
    /// The cipher refused to seal (input longer than AES-GCM allows).
    #[error("sealing failed")]
    SealFailed,
}

impl Error {
    /// The driver-neutral kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::OpenFailed | Error::CorruptKeyRing(_) | Error::SealFailed => ErrorKind::Internal,
            Error::BudgetExhausted => ErrorKind::Exhausted,
            Error::WrongRootKey => ErrorKind::Forbidden,
            Error::KeyProvider(_) => ErrorKind::Unavailable,
            Error::InvalidCode(_)
            | Error::InvalidSecret(_)
            | Error::MalformedSealedValue
            | Error::TenantMismatch => ErrorKind::Invalid,
            Error::UnknownKey(_) => ErrorKind::NotFound,
            Error::IllegalKeyState { .. } => ErrorKind::Conflict,
        }
    }
}
