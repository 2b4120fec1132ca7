//! The root key and the providers that load it. The root key only wraps data keys; it is never
//! stored by the vault.

use std::fmt;
use std::path::PathBuf;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// The 32-byte root key that wraps a tenant's data keys and blind-index key.
///
/// Debug shows only its non-secret [`id`](RootKey::id). Zeroized on drop.
///
/// ```
/// use quanyi_vault::RootKey;
///
/// let root = RootKey::from_bytes([7; 32]);
/// assert!(root.id().starts_with("rk_"));
/// assert_eq!(format!("{root:?}"), format!("RootKey({})", root.id()));
/// ```
#[derive(Clone)]
pub struct RootKey {
    bytes: Zeroizing<[u8; 32]>,
    id: String,
}

impl RootKey {
    /// Wraps 32 key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        let bytes = Zeroizing::new(bytes);
        let id = fingerprint(&bytes);
        RootKey { bytes, id }
    }

    /// A new random root key.
    pub fn generate(rng: &mut dyn RngCore) -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(&mut *bytes);
        let id = fingerprint(&bytes);
        RootKey { bytes, id }
    }

    /// Parses the text form the key providers read: standard base64 (padding optional) or 64
    /// hex digits, surrounding whitespace ignored.
    ///
    /// # Errors
    /// [`Error::KeyProvider`] when the text is neither encoding of 32 bytes; the message never
    /// repeats the text.
    pub fn parse(text: &str) -> Result<Self> {
        let text = text.trim();
        let mut bytes = Zeroizing::new([0u8; 32]);
        if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode_to_slice(text, &mut *bytes).map_err(|_| bad_encoding())?;
        } else {
            let engine = base64::engine::GeneralPurpose::new(
                &base64::alphabet::STANDARD,
                base64::engine::GeneralPurposeConfig::new()
                    .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
            );
            let decoded = Zeroizing::new(engine.decode(text).map_err(|_| bad_encoding())?);
            if decoded.len() != 32 {
                return Err(Error::KeyProvider(format!(
                    "root key must be 32 bytes, got {}",
                    decoded.len()
                )));
            }
            bytes.copy_from_slice(&decoded);
        }
        let id = fingerprint(&bytes);
        Ok(RootKey { bytes, id })
    }

    /// The non-secret fingerprint: `rk_` and 16 hex digits of HMAC-SHA256(key, "quanyi root key id").
    /// Stored with a key ring so a wrong root key is reported as such.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The key as standard base64, for a setup tool that prints a freshly generated key once.
    pub fn expose_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(*self.bytes))
    }

    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.bytes
    }
}

fn bad_encoding() -> Error {
    Error::KeyProvider("root key is neither 64 hex digits nor base64 of 32 bytes".to_owned())
}

fn fingerprint(bytes: &[u8; 32]) -> String {
    let mut mac = hmac_sha256(bytes);
    mac.update(b"quanyi root key id");
    let out = mac.finalize().into_bytes();
    format!("rk_{}", hex::encode(&out[..8]))
}

/// HMAC-SHA256 keyed with 32 bytes. A key shorter than the 64-byte block is zero-padded by
/// HMAC itself, so padding it here gives the same MAC through the infallible constructor.
pub(crate) fn hmac_sha256(key: &[u8; 32]) -> Hmac<Sha256> {
    let mut block = Zeroizing::new([0u8; 64]);
    block[..32].copy_from_slice(key);
    <Hmac<Sha256> as hmac::digest::KeyInit>::new(&(*block).into())
}

impl fmt::Debug for RootKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RootKey({})", self.id)
    }
}

/// Where the root key comes from. Implementations must never put key text in errors or logs.
pub trait KeyProvider: Send + Sync + fmt::Debug {
    /// Loads the root key.
    ///
    /// # Errors
    /// [`Error::KeyProvider`] when the key is missing, unreadable or badly encoded.
    fn root_key(&self) -> Result<RootKey>;
}

/// Reads the root key from an environment variable (standard base64 or 64 hex digits).
#[derive(Debug, Clone)]
pub struct EnvKeyProvider {
    var: String,
}

impl EnvKeyProvider {
    /// A provider reading the variable `var`.
    pub fn new(var: impl Into<String>) -> Self {
        EnvKeyProvider { var: var.into() }
    }
}

impl KeyProvider for EnvKeyProvider {
    fn root_key(&self) -> Result<RootKey> {
        match std::env::var(&self.var) {
            Ok(value) => {
                let value = Zeroizing::new(value);
                RootKey::parse(&value).map_err(|e| match e {
                    Error::KeyProvider(m) => {
                        Error::KeyProvider(format!("environment variable {}: {m}", self.var))
                    }
                    other => other,
                })
            }
            Err(std::env::VarError::NotPresent) => Err(Error::KeyProvider(format!(
                "environment variable {} is not set",
                self.var
            ))),
            Err(std::env::VarError::NotUnicode(raw)) => {
                // The raw value is dropped here; it is not echoed.
                drop(raw);
                Err(Error::KeyProvider(format!(
                    "environment variable {} is not valid unicode",
                    self.var
                )))
            }
        }
    }
}

/// Reads the root key from a file holding standard base64 or 64 hex digits
/// (surrounding whitespace ignored).
#[derive(Debug, Clone)]
pub struct FileKeyProvider {
    path: PathBuf,
}

impl FileKeyProvider {
    /// A provider reading the file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileKeyProvider { path: path.into() }
    }
}

impl KeyProvider for FileKeyProvider {
    fn root_key(&self) -> Result<RootKey> {
        let raw = Zeroizing::new(std::fs::read(&self.path).map_err(|e| {
            Error::KeyProvider(format!(
                "cannot read root key file {}: {}",
                self.path.display(),
                e.kind()
            ))
        })?);
        let text = std::str::from_utf8(&raw).map_err(|_| {
            Error::KeyProvider(format!(
                "root key file {} is not valid utf-8",
                self.path.display()
            ))
        })?;
        RootKey::parse(text).map_err(|e| match e {
            Error::KeyProvider(m) => {
                Error::KeyProvider(format!("root key file {}: {m}", self.path.display()))
            }
            other => other,
        })
    }
}

/// Hands out a root key held in memory (tests, or a host that loads the key itself).
#[derive(Debug, Clone)]
pub struct StaticKeyProvider {
    root: RootKey,
}

impl StaticKeyProvider {
    /// A provider that always returns `root`.
    pub fn new(root: RootKey) -> Self {
        StaticKeyProvider { root }
    }
}

impl KeyProvider for StaticKeyProvider {
    fn root_key(&self) -> Result<RootKey> {
        Ok(self.root.clone())
    }
}
