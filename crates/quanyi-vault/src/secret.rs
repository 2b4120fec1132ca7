//! Secret newtypes for card codes and secrets: redacted Debug, no Display, no serde,
//! zeroized on drop, compared in constant time.

use std::fmt;

use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::error::{Error, InvalidReason, Result};

/// The longest card code or secret accepted, in characters.
pub const MAX_CODE_CHARS: usize = 256;

/// Trims and validates secret text, zeroizing every copy that is dropped.
fn validate(text: String) -> std::result::Result<Zeroizing<String>, InvalidReason> {
    let mut raw = Zeroizing::new(text);
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(InvalidReason::Empty);
    }
    let mut chars = 0usize;
    for c in trimmed.chars() {
        if c.is_control() {
            return Err(InvalidReason::ControlCharacter);
        }
        chars += 1;
    }
    if chars > MAX_CODE_CHARS {
        return Err(InvalidReason::TooLong);
    }
    if trimmed.len() == raw.len() {
        // Move the String out; the emptied shell left behind holds nothing.
        Ok(Zeroizing::new(std::mem::take(&mut *raw)))
    } else {
        Ok(Zeroizing::new(trimmed.to_owned()))
    }
}

fn ct_eq(a: &str, b: &str) -> bool {
    // Lengths are compared first (not secret enough to hide); contents in constant time.
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// The most characters a mask shows of a code, whatever its length.
pub const MASK_MAX_SHOWN: usize = 4;

/// Masks text for display: at most [`MASK_MAX_SHOWN`] characters and never more than a third
/// of the text are shown, split between its start and its end (the end gets the odd one);
/// text under 8 characters shows nothing.
///
/// | characters | shown | example |
/// |---|---|---|
/// | 12 or more | first 2, last 2 | `AB****90` |
/// | 9 to 11 | first 1, last 2 | `A****90` |
/// | 8 | first 1, last 1 | `A****0` |
/// | under 8 | none | `****` |
fn mask(text: &str) -> String {
    let n = text.chars().count();
    let shown = if n < 8 {
        0
    } else {
        (n / 3).min(MASK_MAX_SHOWN)
    };
    if shown == 0 {
        return "****".to_owned();
    }
    let (head, tail) = (shown / 2, shown - shown / 2);
    let mut out = String::with_capacity(shown * 4 + 4);
    out.extend(text.chars().take(head));
    out.push_str("****");
    out.extend(text.chars().skip(n - tail));
    out
}

/// The redeemable code of a card key, or the card number of a number + secret card.
///
/// Debug prints `CardCode(<redacted>)`; there is no `Display` and no serde: the text is reached
/// only through [`CardCode::expose`]. The text is zeroized on drop and compared in constant time.
///
/// ```
/// use quanyi_vault::CardCode;
///
/// let code = CardCode::new(" AB12-3456-7890 ")?;
/// assert_eq!(code.expose(), "AB12-3456-7890");
/// assert_eq!(code.masked(), "AB****90");
/// assert_eq!(format!("{code:?}"), "CardCode(<redacted>)");
/// # Ok::<(), quanyi_vault::Error>(())
/// ```
#[derive(Clone)]
pub struct CardCode(Zeroizing<String>);

impl CardCode {
    /// Validates and wraps a code. Surrounding whitespace is trimmed.
    ///
    /// # Errors
    /// [`Error::InvalidCode`] when the code is empty after trimming, longer than
    /// [`MAX_CODE_CHARS`] characters or contains a control character.
    pub fn new(code: impl Into<String>) -> Result<Self> {
        validate(code.into())
            .map(CardCode)
            .map_err(Error::InvalidCode)
    }

    /// The plaintext code. Call only to seal it or to show it to its buyer.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A display mask such as `AB****90`: at most 4 characters and at most a third of the code
    /// are shown; codes under 8 characters show nothing.
    pub fn masked(&self) -> String {
        mask(&self.0)
    }
}

impl fmt::Debug for CardCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CardCode(<redacted>)")
    }
}

impl PartialEq for CardCode {
    fn eq(&self, other: &Self) -> bool {
        ct_eq(&self.0, &other.0)
    }
}

impl Eq for CardCode {}

/// The password half of a number + secret card. Same guarantees as [`CardCode`]; its mask is
/// always `********`.
#[derive(Clone)]
pub struct CardSecret(Zeroizing<String>);

impl CardSecret {
    /// Validates and wraps a secret. Surrounding whitespace is trimmed.
    ///
    /// # Errors
    /// [`Error::InvalidSecret`] under the same rules as [`CardCode::new`].
    pub fn new(secret: impl Into<String>) -> Result<Self> {
        validate(secret.into())
            .map(CardSecret)
            .map_err(Error::InvalidSecret)
    }

    /// The plaintext secret. Call only to seal it or to show it to its buyer.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Always `********`: a secret shows nothing, not even its length.
    pub fn masked(&self) -> String {
        "********".to_owned()
    }
}

impl fmt::Debug for CardSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CardSecret(<redacted>)")
    }
}

impl PartialEq for CardSecret {
    fn eq(&self, other: &Self) -> bool {
        ct_eq(&self.0, &other.0)
    }
}

impl Eq for CardSecret {}

/// A card key: a code, plus a secret for number + secret cards.
#[derive(Clone, PartialEq, Eq)]
pub struct CardKey {
    /// The code (or card number).
    pub code: CardCode,
    /// The secret (password), when the card has one.
    pub secret: Option<CardSecret>,
}

impl CardKey {
    /// A card key from its parts.
    pub fn new(code: CardCode, secret: Option<CardSecret>) -> Self {
        CardKey { code, secret }
    }

    /// The code (or card number).
    pub fn code(&self) -> &CardCode {
        &self.code
    }

    /// The secret, when the card has one.
    pub fn secret(&self) -> Option<&CardSecret> {
        self.secret.as_ref()
    }

    /// A display mask: `AB****90`, or `AB****90 / ********` with a secret.
    pub fn masked(&self) -> String {
        match &self.secret {
            None => self.code.masked(),
            Some(s) => format!("{} / {}", self.code.masked(), s.masked()),
        }
    }
}

impl fmt::Debug for CardKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.secret.is_some() {
            f.write_str("CardKey(<redacted> / <redacted>)")
        } else {
            f.write_str("CardKey(<redacted>)")
        }
    }
}
