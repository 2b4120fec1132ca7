//! Blind indexes: keyed hashes of normalised card keys, so duplicates are found without
//! decrypting anything.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

/// A blind index: HMAC-SHA256, under the ring's blind-index key, of the normalised code and,
/// for number + secret cards, a `0x1f` separator and the normalised secret (normalised as the
/// card's [`IndexScheme`] says; see [`normalise`]).
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

/// How a blind index normalises a code before hashing it. Stored with every card, so a store
/// can hold cards of an older scheme while they are re-indexed (see the facade's
/// `Shop::reindex_card_keys`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[repr(u8)]
pub enum IndexScheme {
    /// Version 1: Unicode lowercase, whitespace and ASCII `-` removed. A variant written with
    /// invisible or compatibility characters normalises apart from the plain code.
    Legacy = 1,
    /// Version 2, [`normalise`]: Unicode NFKC, then format and other default-ignorable
    /// characters, whitespace and dashes removed, then lowercase.
    #[default]
    Nfkc = 2,
}

impl IndexScheme {
    /// The scheme new cards are indexed with.
    pub const CURRENT: IndexScheme = IndexScheme::Nfkc;

    /// The number stored for the scheme.
    pub const fn as_u8(self) -> u8 {
        self as u8
    }

    /// The scheme stored as `n`; `None` for a number no scheme has.
    pub const fn from_u8(n: u8) -> Option<Self> {
        match n {
            1 => Some(IndexScheme::Legacy),
            2 => Some(IndexScheme::Nfkc),
            _ => None,
        }
    }
}

impl Serialize for IndexScheme {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(self.as_u8())
    }
}

impl<'de> Deserialize<'de> for IndexScheme {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = u8::deserialize(d)?;
        IndexScheme::from_u8(n).ok_or_else(|| serde::de::Error::custom("unknown index scheme"))
    }
}

/// Normalises a code or secret for the blind index ([`IndexScheme::Nfkc`]), so that codes a
/// person would read as the same are the same code for duplicate detection:
///
/// 1. Unicode NFKC: full-width forms, ligatures and other compatibility characters become
///    their plain forms (`ＡＢ１２` is `AB12`).
/// 2. Removed: format characters (general category Cf: zero-width space and joiners, soft
///    hyphen, byte-order mark, direction marks...) and the other default-ignorable characters
///    (variation selectors, combining grapheme joiner, Hangul fillers); whitespace; dashes
///    (general category Pd, such as `-`, `‐`, `–`, `—`, `〜`, and the look-alikes `−` minus
///    sign, `˗`, `⁃`, `➖`).
/// 3. Unicode lowercase (then NFKC again, in the rare case lowercasing leaves a form NFKC
///    would change).
///
/// Plain ASCII normalises exactly as under [`IndexScheme::Legacy`], so most codes keep their
/// index across the change of scheme.
///
/// ```
/// use quanyi_vault::normalise;
/// assert_eq!(normalise(" AbCd-12 34 "), "abcd1234");
/// assert_eq!(normalise("ＡＢＣＤ\u{200B}１２\u{2013}34\u{00AD}"), "abcd1234");
/// ```
pub fn normalise(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    normalise_into(text, IndexScheme::CURRENT, &mut out);
    out
}

/// Normalises `text` under `scheme` into `out` (appended). Every intermediate copy of the text is
/// zeroized when dropped.
pub(crate) fn normalise_into(text: &str, scheme: IndexScheme, out: &mut String) {
    if scheme == IndexScheme::Legacy || text.is_ascii() {
        // ASCII is its own NFKC form and has no format characters or other dashes: both
        // schemes agree on it.
        out.extend(
            text.chars()
                .filter(|c| !c.is_whitespace() && *c != '-')
                .flat_map(char::to_lowercase),
        );
        return;
    }
    use unicode_normalization::UnicodeNormalization;
    let mut folded = Zeroizing::new(String::with_capacity(text.len()));
    folded.extend(
        text.nfkc()
            .filter(|c| !is_dropped(*c))
            .flat_map(char::to_lowercase),
    );
    match unicode_normalization::is_nfkc_quick(folded.chars()) {
        unicode_normalization::IsNormalized::Yes => out.push_str(&folded),
        _ => out.extend(folded.nfkc().filter(|c| !is_dropped(*c))),
    }
}

/// True for the characters the blind index ignores: whitespace, dashes and their look-alikes,
/// format characters and the other default-ignorable code points.
fn is_dropped(c: char) -> bool {
    use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};
    if c.is_whitespace() {
        return true;
    }
    match c.general_category() {
        GeneralCategory::Format | GeneralCategory::DashPunctuation => return true,
        _ => {}
    }
    matches!(
        c,
        // Dash look-alikes outside Pd: modifier letter minus, hyphen bullet, minus sign,
        // superscript and subscript minus, heavy minus sign.
        '\u{02D7}' | '\u{2043}' | '\u{2212}' | '\u{207B}' | '\u{208B}' | '\u{2796}'
        // Default-ignorable code points that are not format characters: combining grapheme
        // joiner, Hangul fillers, Khmer inherent vowels, Mongolian variation selectors,
        // variation selectors and their supplement, and the unassigned tag block rest.
        | '\u{034F}'
        | '\u{115F}'..='\u{1160}'
        | '\u{17B4}'..='\u{17B5}'
        | '\u{180B}'..='\u{180F}'
        | '\u{3164}'
        | '\u{FE00}'..='\u{FE0F}'
        | '\u{FFA0}'
        | '\u{E0000}'..='\u{E0FFF}'
    )
}
