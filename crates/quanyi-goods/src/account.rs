//! Rules for the account a direct top-up credits.

use quanyi_core::text::clip;
use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The longest account text looked at; longer input is refused before any parsing.
pub const MAX_ACCOUNT_CHARS: usize = 254;
/// The longest custom pattern accepted.
pub const MAX_PATTERN_CHARS: usize = 512;
const MAX_DESCRIPTION_CHARS: usize = 200;
const REGEX_SIZE_LIMIT: usize = 1 << 18;

/// What a valid top-up account looks like, and how it is normalised.
///
/// ```
/// use quanyi_goods::AccountRule;
///
/// let phone = AccountRule::MainlandMobile.validate("+86 138-0013-8000")?;
/// assert_eq!(phone, "13800138000");
/// # Ok::<(), quanyi_goods::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "snake_case")]
pub enum AccountRule {
    /// A mainland China mobile number: 11 digits, `1` then `3`-`9`. `+86`, `0086` or `86`
    /// prefixes, spaces and dashes are accepted and removed.
    MainlandMobile,
    /// A QQ number: 5 to 11 digits without a leading zero.
    QqNumber,
    /// An e-mail address (pragmatic check, ASCII only); the domain is lower-cased.
    Email,
    /// A custom regular expression, matched against the whole (trimmed) input.
    Pattern {
        /// The expression; it is anchored as `^(?:regex)$`.
        regex: String,
        /// What a buyer is told the account looks like.
        description: String,
    },
}

impl AccountRule {
    /// A stable snake_case name of the rule.
    pub fn name(&self) -> &'static str {
        match self {
            AccountRule::MainlandMobile => "mainland_mobile",
            AccountRule::QqNumber => "qq_number",
            AccountRule::Email => "email",
            AccountRule::Pattern { .. } => "pattern",
        }
    }

    /// Checks the rule itself: a custom pattern must compile within the size limit.
    ///
    /// # Errors
    /// [`Error::InvalidPattern`].
    pub fn check(&self) -> Result<()> {
        if let AccountRule::Pattern { regex, description } = self {
            if description.chars().count() > MAX_DESCRIPTION_CHARS {
                return Err(Error::InvalidPattern {
                    reason: "description longer than 200 characters".to_owned(),
                });
            }
            compile(regex)?;
        }
        Ok(())
    }

    /// Validates a buyer's account and returns it normalised (trimmed; for phones, digits only).
    ///
    /// # Errors
    /// [`Error::InvalidAccount`] when the input does not fit the rule (the message quotes at most
    /// a clipped copy of it), [`Error::InvalidPattern`] when a stored pattern does not compile.
    pub fn validate(&self, input: &str) -> Result<String> {
        let input = input.trim();
        if input.is_empty() {
            return Err(self.invalid("empty".to_owned()));
        }
        if input.chars().count() > MAX_ACCOUNT_CHARS {
            return Err(self.invalid(format!("longer than {MAX_ACCOUNT_CHARS} characters")));
        }
        match self {
            AccountRule::MainlandMobile => mobile(input).ok_or_else(|| {
                self.invalid(format!("not a mainland mobile number: \"{}\"", clip(input)))
            }),
            AccountRule::QqNumber => {
                let ok = (5..=11).contains(&input.len())
                    && input.bytes().all(|b| b.is_ascii_digit())
                    && !input.starts_with('0');
                if ok {
                    Ok(input.to_owned())
                } else {
                    Err(self.invalid(format!("not a qq number: \"{}\"", clip(input))))
                }
            }
            AccountRule::Email => email(input)
                .ok_or_else(|| self.invalid(format!("not an e-mail address: \"{}\"", clip(input)))),
            AccountRule::Pattern { regex, description } => {
                if compile(regex)?.is_match(input) {
                    Ok(input.to_owned())
                } else {
                    Err(self.invalid(format!(
                        "expected {}, got \"{}\"",
                        clip(description),
                        clip(input)
                    )))
                }
            }
        }
    }

    fn invalid(&self, reason: String) -> Error {
        Error::InvalidAccount {
            rule: self.name(),
            reason,
        }
    }
}

/// Compiles a custom pattern anchored to the whole input. The bare pattern must compile on its
/// own first, so text such as `a)|(b` cannot escape the anchors.
fn compile(pattern: &str) -> Result<Regex> {
    let fail = |reason: String| Error::InvalidPattern { reason };
    if pattern.is_empty() {
        return Err(fail("empty".to_owned()));
    }
    if pattern.chars().count() > MAX_PATTERN_CHARS {
        return Err(fail(format!("longer than {MAX_PATTERN_CHARS} characters")));
    }
    if pattern.chars().any(char::is_control) {
        return Err(fail("holds control characters".to_owned()));
    }
    let build = |src: &str| {
        RegexBuilder::new(src)
            .size_limit(REGEX_SIZE_LIMIT)
            .dfa_size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map_err(|e| match e {
                regex::Error::CompiledTooBig(_) => fail("too large".to_owned()),
                _ => fail(format!("does not compile: \"{}\"", clip(pattern))),
            })
    };
    build(pattern)?;
    build(&format!("^(?:{pattern})$"))
}

fn mobile(input: &str) -> Option<String> {
    let compact: String = input.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
    let digits = if let Some(rest) = compact.strip_prefix("+86") {
        rest
    } else if let Some(rest) = compact.strip_prefix("0086") {
        rest
    } else if compact.len() == 13 {
        compact.strip_prefix("86")?
    } else {
        &compact
    };
    let b = digits.as_bytes();
    let ok = b.len() == 11
        && b.iter().all(u8::is_ascii_digit)
        && b[0] == b'1'
        && (b'3'..=b'9').contains(&b[1]);
    ok.then(|| digits.to_owned())
}

fn email(input: &str) -> Option<String> {
    const LOCAL_SPECIALS: &str = "!#$%&'*+/=?^_`{|}~.-";
    let (local, domain) = input.split_once('@')?;
    let local_ok = (1..=64).contains(&local.len())
        && local
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || LOCAL_SPECIALS.contains(c))
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..");
    if !local_ok || domain.len() > 253 {
        return None;
    }
    let domain = domain.to_ascii_lowercase();
    let labels: Vec<&str> = domain.split('.').collect();
    let labels_ok = labels.len() >= 2
        && labels.iter().all(|l| {
            (1..=63).contains(&l.len())
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    let tld_ok = labels
        .last()
        .is_some_and(|t| t.len() >= 2 && t.bytes().all(|b| b.is_ascii_alphabetic()));
    (labels_ok && tld_ok).then(|| format!("{local}@{domain}"))
}
