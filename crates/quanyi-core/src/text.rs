//! Helpers for quoting untrusted text in error messages.

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

#[cfg(test)]
mod tests {
    #[test]
    fn clip_escapes_and_cuts() {
        assert_eq!(super::clip("a\nb"), "a\\nb");
        let long = "x".repeat(100);
        assert_eq!(super::clip(&long).chars().count(), super::CLIP_CHARS + 1);
    }
}
