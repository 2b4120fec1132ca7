//! Generated redeemable codes (reservation codes) with a check character.

use rand::RngCore;

use crate::{CardCode, Result};

/// Crockford's base-32 alphabet: no I, L, O or U, so codes survive being read aloud.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Crockford's check symbols: the 32 digits and five more, for a value modulo 37.
const CHECK: &[u8; 37] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ*~$=U";

/// The number of random characters in a generated code (50 bits), before the check character.
pub const CODE_DIGITS: usize = 10;

fn value_of(c: u8) -> Option<u64> {
    let c = c.to_ascii_uppercase();
    let c = match c {
        b'O' => b'0',
        b'I' | b'L' => b'1',
        other => other,
    };
    ALPHABET.iter().position(|a| *a == c).map(|p| p as u64)
}

fn check_symbol(digits: &[u8]) -> Option<u8> {
    let mut rem = 0u64;
    for d in digits {
        rem = (rem * 32 + value_of(*d)?) % 37;
    }
    usize::try_from(rem)
        .ok()
        .and_then(|i| CHECK.get(i).copied())
}

/// A new random code: [`CODE_DIGITS`] Crockford base-32 characters and a check character,
/// written in groups such as `7KQ2-M9XD-4T*`.
///
/// # Errors
/// Never in practice; the code is built from the alphabet, which is always a valid code.
pub fn generate_code(rng: &mut dyn RngCore) -> Result<CardCode> {
    let mut digits = [0u8; CODE_DIGITS];
    let mut bytes = [0u8; CODE_DIGITS];
    rng.fill_bytes(&mut bytes);
    for (d, b) in digits.iter_mut().zip(bytes) {
        *d = ALPHABET[usize::from(b & 31)];
    }
    let check = check_symbol(&digits).unwrap_or(b'0');
    let mut text = String::with_capacity(CODE_DIGITS + 3);
    for (i, d) in digits.iter().enumerate() {
        if i > 0 && i % 4 == 0 {
            text.push('-');
        }
        text.push(char::from(*d));
    }
    text.push(char::from(check));
    CardCode::new(text)
}

/// True when a code's last character is the right check character for the rest (dashes and
/// spaces ignored, case and Crockford's look-alikes forgiven): a mistyped code is caught before
/// anything is looked up.
pub fn code_checks(text: &str) -> bool {
    let chars: Vec<u8> = text.bytes().filter(|b| !matches!(b, b'-' | b' ')).collect();
    let Some((last, digits)) = chars.split_last() else {
        return false;
    };
    !digits.is_empty() && check_symbol(digits) == Some(last.to_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn generated_codes_check_and_typos_do_not() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..2_000 {
            let code = generate_code(&mut rng).unwrap();
            let text = code.expose().to_owned();
            assert!(code_checks(&text), "{}", text.len());
            assert!(code_checks(&text.to_lowercase().replace('-', " ")));
            assert!(seen.insert(text.clone()));
            // Any single changed digit is caught.
            let bytes = text.as_bytes();
            let pos = bytes.iter().position(|b| *b != b'-').unwrap_or(0);
            let mut typo = bytes.to_vec();
            typo[pos] = if typo[pos] == b'7' { b'8' } else { b'7' };
            assert!(!code_checks(&String::from_utf8(typo).unwrap()));
        }
    }

    #[test]
    fn malformed_codes_do_not_check() {
        for bad in ["", "-", "A", "ÅÅÅ", "!!!!"] {
            assert!(!code_checks(bad), "{bad:?}");
        }
    }
}
