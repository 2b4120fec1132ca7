//! Blind indexes: keyed hashes of normalised card keys, so duplicates are found without
//! decrypting anything.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A blind index: HMAC-SHA256, under the ring's blind-index key, of the normalised code and,
/// for number + secret cards, a `0x1f` separator and the normalised secret.
///
/// The blind-index key is independent of data-key rotation, so an index computed before a
/// rotation still finds the duplicate after it. Debug prints `BlindIndex(..)`; serde uses
/// lowercase hex (the index reveals nothing without the key, but logs have no use for it).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlindIndex([u8; 32]);

impl BlindIndex {
    /// Wraps stored bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        BlindIndex(bytes)
    }

    /// The 32 bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex, for storage keys.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex digits; `None` when the text is anything else.
    pub fn from_hex(text: &str) -> Option<Self> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes).ok()?;
        Some(BlindIndex(bytes))
    }
}

impl fmt::Debug for BlindIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BlindIndex(..)")
    }
}

impl Serialize for BlindIndex {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for BlindIndex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        BlindIndex::from_hex(&text)
            .ok_or_else(|| serde::de::Error::custom("blind index is not 64 hex digits"))
    }
}

/// Normalises a code or secret for the blind index: Unicode lowercase, with all whitespace
/// and `-` removed (which also trims). `"ABCD-1234"` and `" abcd 1234 "` normalise alike.
///
/// ```
/// assert_eq!(quanyi_vault::normalise(" AbCd-12 34 "), "abcd1234");
/// ```
pub fn normalise(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    normalise_into(text, &mut out);
    out
}

pub(crate) fn normalise_into(text: &str, out: &mut String) {
    out.extend(
        text.chars()
            .filter(|c| !c.is_whitespace() && *c != '-')
            .flat_map(char::to_lowercase),
    );
}
