//! Parsing card-key import files, and planning an import (blind indexes, in-batch duplicates).
//!
//! [`parse_import`] turns the bytes of an uploaded file into card keys and a list of malformed
//! lines; it never panics and never decodes escapes (`%0A` stays four characters).
//! [`KeyRing::plan_import`] then computes each card's [`BlindIndex`] and drops in-batch
//! duplicates, so the caller only has to check the remaining indexes against storage.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;

use zeroize::Zeroizing;

use crate::error::{Error, InvalidReason};
use crate::index::{BlindIndex, IndexScheme};
use crate::ring::KeyRing;
use crate::secret::{CardCode, CardKey, CardSecret};

/// The layout of an import file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ImportFormat {
    /// One card per line; with a delimiter, `number<d>secret`.
    #[default]
    PlainText,
    /// Comma-separated values with double-quote quoting (`""` inside quotes is one quote), one
    /// record per line: first column the code, optional second column the secret.
    Csv,
}

/// How to read an import file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ImportOptions {
    /// For [`ImportFormat::PlainText`]: splits each line into `number<d>secret`; every line
    /// must then have both parts. For [`ImportFormat::Csv`]: replaces `,` as the separator.
    pub delimiter: Option<char>,
    /// The layout.
    pub format: ImportFormat,
    /// When true the first non-blank line is a header and is skipped.
    pub has_header: bool,
}

/// Why a line was not imported. Never carries the line's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MalformedReason {
    /// The line is not valid UTF-8.
    InvalidUtf8,
    /// A control character (a lone carriage return, NUL, a tab that is not the delimiter...).
    ControlCharacter,
    /// A code or secret longer than [`MAX_CODE_CHARS`](crate::MAX_CODE_CHARS) characters.
    TooLong,
    /// The code is empty.
    EmptyCode,
    /// The secret is empty.
    EmptySecret,
    /// A delimiter was configured but the line has no secret part.
    MissingSecret,
    /// More than two fields.
    TooManyFields,
    /// A quoted CSV field is not closed on its line.
    UnterminatedQuote,
    /// A quote inside an unquoted CSV field, or text after a closing quote.
    StrayQuote,
}

impl fmt::Display for MalformedReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MalformedReason::InvalidUtf8 => "not valid utf-8",
            MalformedReason::ControlCharacter => "contains a control character",
            MalformedReason::TooLong => "code or secret is too long",
            MalformedReason::EmptyCode => "empty code",
            MalformedReason::EmptySecret => "empty secret",
            MalformedReason::MissingSecret => "missing secret",
            MalformedReason::TooManyFields => "too many fields",
            MalformedReason::UnterminatedQuote => "unterminated quote",
            MalformedReason::StrayQuote => "stray quote",
        })
    }
}

/// A line that was not imported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MalformedLine {
    /// The 1-based physical line number.
    pub line: usize,
    /// Why.
    pub reason: MalformedReason,
}

impl fmt::Display for MalformedLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

/// A card key read from a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedCard {
    /// The 1-based physical line number.
    pub line: usize,
    /// The card key.
    pub key: CardKey,
}

/// The result of [`parse_import`]: cards in line order and the lines that were rejected.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedImport {
    /// The cards read, in line order.
    pub cards: Vec<ParsedCard>,
    /// The rejected lines, in line order.
    pub malformed: Vec<MalformedLine>,
}

/// Parses an import file. Never panics, whatever the bytes.
///
/// A leading UTF-8 byte-order mark is skipped; lines end with LF or CRLF (a lone CR is a
/// control character); blank (whitespace-only) lines are skipped; each field is trimmed; text
/// is kept literally (no URL or escape decoding). Line numbers are 1-based physical lines.
/// Duplicates are not decided here: see [`KeyRing::plan_import`].
///
/// ```
/// use quanyi_vault::import::{parse_import, ImportOptions};
///
/// let opts = ImportOptions { delimiter: Some('|'), ..ImportOptions::default() };
/// let parsed = parse_import(b"\xEF\xBB\xBFAB12-3456 | pw1\r\n\r\nCD34-5678|\n", &opts);
/// assert_eq!(parsed.cards.len(), 1);
/// assert_eq!(parsed.cards[0].key.masked(), "A****56 / ********");
/// assert_eq!(parsed.malformed[0].to_string(), "line 3: empty secret");
/// ```
pub fn parse_import(input: &[u8], opts: &ImportOptions) -> ParsedImport {
    let input = input.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(input);
    let mut out = ParsedImport::default();
    let mut header_pending = opts.has_header;
    for (i, raw) in input.split(|b| *b == b'\n').enumerate() {
        let line = i + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let text = match std::str::from_utf8(raw) {
            Ok(t) => t,
            Err(_) => {
                if !std::mem::take(&mut header_pending) {
                    out.malformed.push(MalformedLine {
                        line,
                        reason: MalformedReason::InvalidUtf8,
                    });
                }
                continue;
            }
        };
        if text.trim().is_empty() {
            continue;
        }
        if std::mem::take(&mut header_pending) {
            continue;
        }
        match parse_line(text, opts) {
            Ok(key) => out.cards.push(ParsedCard { line, key }),
            Err(reason) => out.malformed.push(MalformedLine { line, reason }),
        }
    }
    out
}

fn parse_line(text: &str, opts: &ImportOptions) -> Result<CardKey, MalformedReason> {
    match opts.format {
        ImportFormat::PlainText => match opts.delimiter {
            None => Ok(CardKey::new(code(text)?, None)),
            Some(d) => {
                let mut parts = text.split(d);
                let first = parts.next().unwrap_or("");
                let second = parts.next();
                if parts.next().is_some() {
                    return Err(MalformedReason::TooManyFields);
                }
                let code = code(first)?;
                let second = second.ok_or(MalformedReason::MissingSecret)?;
                Ok(CardKey::new(code, Some(secret(second)?)))
            }
        },
        ImportFormat::Csv => {
            let fields = csv_fields(text, opts.delimiter.unwrap_or(','))?;
            match fields.as_slice() {
                [c] => Ok(CardKey::new(code(c)?, None)),
                [c, s] => {
                    let code = code(c)?;
                    Ok(CardKey::new(code, Some(secret(s)?)))
                }
                _ => Err(MalformedReason::TooManyFields),
            }
        }
    }
}

fn code(text: &str) -> Result<CardCode, MalformedReason> {
    CardCode::new(text).map_err(|e| reason(e, MalformedReason::EmptyCode))
}

fn secret(text: &str) -> Result<CardSecret, MalformedReason> {
    CardSecret::new(text).map_err(|e| reason(e, MalformedReason::EmptySecret))
}

fn reason(e: Error, empty: MalformedReason) -> MalformedReason {
    match e {
        Error::InvalidCode(r) | Error::InvalidSecret(r) => match r {
            InvalidReason::Empty => empty,
            InvalidReason::TooLong => MalformedReason::TooLong,
            _ => MalformedReason::ControlCharacter,
        },
        _ => MalformedReason::ControlCharacter,
    }
}

/// Splits one CSV record. Fields are untrimmed here; the secret types trim them. At most three
/// fields are collected (a third is already too many).
fn csv_fields(text: &str, sep: char) -> Result<Vec<Zeroizing<String>>, MalformedReason> {
    let mut fields = Vec::with_capacity(2);
    let mut chars = text.chars().peekable();
    loop {
        // Skip spaces before a field, so `a, "b"` is two fields.
        while chars.peek().is_some_and(|c| *c == ' ') {
            chars.next();
        }
        let mut field = Zeroizing::new(String::new());
        if chars.peek() == Some(&'"') && sep != '"' {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err(MalformedReason::UnterminatedQuote),
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                }
            }
            while chars.peek().is_some_and(|c| *c == ' ' && *c != sep) {
                chars.next();
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(c) if c == sep => {}
                Some(_) => return Err(MalformedReason::StrayQuote),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field);
                        return Ok(fields);
                    }
                    Some(c) if c == sep => break,
                    Some('"') => return Err(MalformedReason::StrayQuote),
                    Some(c) => field.push(c),
                }
            }
        }
        fields.push(field);
        if fields.len() > 2 {
            return Err(MalformedReason::TooManyFields);
        }
    }
}

/// A card that [`KeyRing::plan_import`] will import, with its blind index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedCard {
    /// The 1-based physical line number.
    pub line: usize,
    /// The card key.
    pub key: CardKey,
    /// Its blind index under [`IndexScheme::CURRENT`], to check against storage and to store
    /// with the sealed card.
    pub index: BlindIndex,
    /// Its index under [`IndexScheme::Legacy`], when the tenant may still hold cards indexed
    /// that way (re-indexing has not finished) and it differs from `index`: storage checks it
    /// too, so a card stored before the change of scheme is still found.
    pub legacy_index: Option<BlindIndex>,
}

/// A line whose card key repeats an earlier line of the same batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DuplicateLine {
    /// The repeating line.
    pub line: usize,
    /// The first line with the same card key.
    pub first_line: usize,
}

/// What an import will do: the distinct cards to check against storage and seal, the in-batch
/// duplicates dropped, and the malformed lines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportPlan {
    /// Distinct cards, first occurrence of each, in line order.
    pub cards: Vec<PlannedCard>,
    /// Later lines that repeat an earlier card (same blind index), in line order.
    pub duplicates: Vec<DuplicateLine>,
    /// Lines that could not be parsed.
    pub malformed: Vec<MalformedLine>,
}

impl KeyRing {
    /// Plans an import: computes each card's [`BlindIndex`] and keeps only the first line of
    /// each card key, recording later ones as [`DuplicateLine`]s. Two lines are the same card
    /// when they normalise alike (case, whitespace, dashes and invisible characters ignored,
    /// compatibility forms folded; see [`normalise`](crate::normalise)). Duplicates of cards
    /// already stored are the caller's check: look up each planned index (and legacy index) in
    /// storage.
    pub fn plan_import(&self, parsed: ParsedImport) -> ImportPlan {
        let mut seen: HashMap<BlindIndex, usize> = HashMap::with_capacity(parsed.cards.len());
        let mut plan = ImportPlan {
            cards: Vec::with_capacity(parsed.cards.len()),
            duplicates: Vec::new(),
            malformed: parsed.malformed,
        };
        let legacy = self.oldest_index_scheme() < IndexScheme::CURRENT;
        for card in parsed.cards {
            let index = self.blind_index(&card.key);
            match seen.entry(index) {
                Entry::Occupied(first) => plan.duplicates.push(DuplicateLine {
                    line: card.line,
                    first_line: *first.get(),
                }),
                Entry::Vacant(slot) => {
                    slot.insert(card.line);
                    let legacy_index = legacy
                        .then(|| self.blind_index_as(&card.key, IndexScheme::Legacy))
                        .filter(|l| *l != index);
                    plan.cards.push(PlannedCard {
                        line: card.line,
                        key: card.key,
                        index,
                        legacy_index,
                    });
                }
            }
        }
        plan
    }
}
