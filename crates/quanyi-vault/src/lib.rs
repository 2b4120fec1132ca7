#![doc = include_str!("../README.md")]
#![deny(clippy::float_arithmetic)]

mod codes;
mod error;
pub mod import;
mod index;
mod links;
mod ring;
mod root;
mod sealed;
mod secret;

pub use codes::{CODE_DIGITS, code_checks, generate_code};
pub use error::{Error, InvalidReason, Result};
pub use import::{
    DuplicateLine, ImportFormat, ImportOptions, ImportPlan, MalformedLine, MalformedReason,
    ParsedCard, ParsedImport, PlannedCard, parse_import,
};
pub use index::{BlindIndex, IndexScheme, normalise};
pub use links::{LinkError, LinkSigner};
pub use ring::{
    DEFAULT_KEY_USE_LIMIT, KeyId, KeyRing, KeyState, UsesRefused, WrappedDataKey, WrappedKeyRing,
    needs_rotation,
};
pub use root::{EnvKeyProvider, FileKeyProvider, KeyProvider, RootKey, StaticKeyProvider};
pub use sealed::{
    FORMAT_VERSION, Field, HEADER_LEN, MAGIC, NONCE_LEN, SUITE_AES256GCM, SealContext, SealedCard,
    SealedValue, TAG_LEN,
};
pub use secret::{CardCode, CardKey, CardSecret, MASK_MAX_SHOWN, MAX_CODE_CHARS};

#[cfg(test)]
mod tests;
