//! Sealed values: the byte format and the context bound into it.

use std::fmt;

use base64::Engine as _;
use quanyi_core::{CardId, MAX_NAME_LEN, SkuId, TenantId};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};
use crate::ring::KeyId;

/// The two magic bytes that start every sealed value.
pub const MAGIC: [u8; 2] = *b"QV";
/// The sealed-value format version.
pub const FORMAT_VERSION: u8 = 1;
/// The cipher suite byte: 1 = AES-256-GCM with a random 96-bit nonce.
pub const SUITE_AES256GCM: u8 = 1;
/// Length of the AES-GCM nonce.
pub const NONCE_LEN: usize = 12;
/// Length of the header: magic (2), version (1), suite (1), key id (4, big-endian), nonce (12).
pub const HEADER_LEN: usize = 2 + 1 + 1 + 4 + NONCE_LEN;
/// Length of the AES-GCM tag that ends every sealed value.
pub const TAG_LEN: usize = 16;

/// Which field of a card a value holds. Bound into the associated data, so a sealed code can
/// never be opened as a secret or the other way round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    /// The code or card number.
    Code,
    /// The secret (password).
    Secret,
}

impl Field {
    fn tag(self) -> u8 {
        match self {
            Field::Code => 1,
            Field::Secret => 2,
        }
    }
}

/// Where a sealed value belongs. All of it goes into the associated data, so a ciphertext
/// copied to another tenant, SKU, card or field fails to open.
#[derive(Debug, Clone, Copy)]
pub struct SealContext<'a> {
    /// The tenant (must be the key ring's tenant).
    pub tenant: &'a TenantId,
    /// The SKU the card is stocked under.
    pub sku: SkuId,
    /// The card.
    pub card: CardId,
    /// Which field of the card.
    pub field: Field,
}

/// Longest associated data: header, tenant (2-byte length + up to 64 bytes), sku, card, field.
const AAD_MAX: usize = HEADER_LEN + 2 + MAX_NAME_LEN + 16 + 16 + 1;

/// The associated data, built on the stack.
pub(crate) struct Aad {
    buf: [u8; AAD_MAX],
    len: usize,
}

impl Aad {
    /// `None` when the tenant name is longer than any valid [`TenantId`].
    #[inline]
    pub(crate) fn new(header: &[u8], ctx: &SealContext<'_>) -> Option<Aad> {
        let tenant = ctx.tenant.as_str().as_bytes();
        let tenant_len = u16::try_from(tenant.len()).ok()?;
        let len = HEADER_LEN + 2 + tenant.len() + 16 + 16 + 1;
        if len > AAD_MAX || header.len() != HEADER_LEN {
            return None;
        }
        let mut buf = [0u8; AAD_MAX];
        let mut at = 0;
        let mut put = |bytes: &[u8]| {
            buf[at..at + bytes.len()].copy_from_slice(bytes);
            at += bytes.len();
        };
        put(header);
        put(&tenant_len.to_be_bytes());
        put(tenant);
        put(ctx.sku.as_bytes());
        put(ctx.card.as_bytes());
        put(&[ctx.field.tag()]);
        Some(Aad { buf, len })
    }

    #[inline]
    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// A sealed (encrypted and authenticated) value: the 20-byte header
/// (`b"QV"`, format version 1, suite 1 = AES-256-GCM, key id as u32 big-endian, 12-byte random
/// nonce), then the AES-256-GCM ciphertext and 16-byte tag. The whole header is part of the
/// associated data, so changing any header byte makes the value fail to open.
///
/// Serialises as a standard base64 string. Debug prints only the key id and length, like
/// `SealedValue(k1, 44 bytes)`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SealedValue(Vec<u8>);

impl SealedValue {
    /// Wraps stored bytes. They are checked when opened.
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        SealedValue(bytes)
    }

    /// The stored bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The stored bytes, consuming the value.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    /// The data key that sealed this value, read from the header.
    ///
    /// # Errors
    /// [`Error::MalformedSealedValue`] when the bytes are too short or the header is not a
    /// version-1 header.
    pub fn key_id(&self) -> Result<KeyId> {
        parse_key_id(&self.0).ok_or(Error::MalformedSealedValue)
    }

    pub(crate) fn from_vec(bytes: Vec<u8>) -> Self {
        SealedValue(bytes)
    }
}

/// The key id of a well-formed sealed value (at least header and tag long).
#[inline]
pub(crate) fn parse_key_id(bytes: &[u8]) -> Option<KeyId> {
    if bytes.len() < HEADER_LEN + TAG_LEN
        || bytes[..2] != MAGIC
        || bytes[2] != FORMAT_VERSION
        || bytes[3] != SUITE_AES256GCM
    {
        return None;
    }
    let id: [u8; 4] = bytes[4..8].try_into().ok()?;
    Some(KeyId(u32::from_be_bytes(id)))
}

impl fmt::Debug for SealedValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match parse_key_id(&self.0) {
            Some(id) => write!(f, "SealedValue({id}, {} bytes)", self.0.len()),
            None => write!(f, "SealedValue(malformed, {} bytes)", self.0.len()),
        }
    }
}

impl Serialize for SealedValue {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for SealedValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map(SealedValue)
            .map_err(|_| serde::de::Error::custom("sealed value is not valid base64"))
    }
}

/// A sealed card key: the code and the optional secret, sealed separately with
/// [`Field::Code`] and [`Field::Secret`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedCard {
    /// The sealed code.
    pub code: SealedValue,
    /// The sealed secret, when the card has one.
    pub secret: Option<SealedValue>,
}
