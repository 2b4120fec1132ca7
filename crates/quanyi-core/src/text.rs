//! Text helpers: quoting untrusted text in error messages, and shared text built without a
//! temporary string.

use std::fmt::{self, Write as _};
use std::sync::Arc;

/// The longest piece of untrusted input an error message repeats.
pub const CLIP_CHARS: usize = 48;

/// A short, printable copy of untrusted text for an error message: control characters are
/// escaped and the text is cut to [`CLIP_CHARS`] characters.
pub fn clip(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(CLIP_CHARS + 8));
    for (n, c) in text.chars().enumerate() {
        if n == CLIP_CHARS {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// `value` as shared text. Short values (ids, names) are written on the stack and copied once
/// into the shared allocation; longer ones go through a temporary string.
pub fn shared(value: &impl fmt::Display) -> Arc<str> {
    let mut stack = StackText {
        buf: [0; STACK_TEXT],
        len: 0,
    };
    if write!(stack, "{value}").is_ok() {
        if let Ok(text) = std::str::from_utf8(&stack.buf[..stack.len]) {
            return Arc::from(text);
        }
    }
    Arc::from(value.to_string())
}

const STACK_TEXT: usize = 96;

/// A fixed buffer that refuses what does not fit.
struct StackText {
    buf: [u8; STACK_TEXT],
    len: usize,
}

impl fmt::Write for StackText {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len.checked_add(s.len()).ok_or(fmt::Error)?;
        let slot = self.buf.get_mut(self.len..end).ok_or(fmt::Error)?;
        slot.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn shared_text_of_short_and_long_values() {
        assert_eq!(&*super::shared(&"ord_0123"), "ord_0123");
        let long = "长".repeat(100);
        assert_eq!(&*super::shared(&long), long.as_str());
        assert_eq!(&*super::shared(&12345), "12345");
    }

    #[test]
    fn clip_escapes_and_cuts() {
        assert_eq!(super::clip("a\nb"), "a\\nb");
        let long = "x".repeat(100);
        assert_eq!(super::clip(&long).chars().count(), super::CLIP_CHARS + 1);
    }
}
