use crate::{CardCode, CardKey, CardSecret, Error, InvalidReason, MAX_CODE_CHARS};

#[test]
fn masking_table() {
    fn check(code: &str, expected: &str) {
        assert_eq!(CardCode::new(code).unwrap().masked(), expected, "{code}");
    }
    check("AB12-3456-7890", "AB****90"); // 14 chars
    check("ABCDEFGHIJKL", "AB****KL"); // 12 chars: 4 shown, a third
    check("ABCDEFGHIJK", "A****JK"); // 11 chars: 3 shown
    check("ABCDEFGHI", "A****HI"); // 9 chars: 3 shown
    check("ABCDEFGH", "A****H"); // 8 chars: 2 shown
    check("ABCDEFG", "****"); // 7 chars
    check("A", "****");
    check("充值卡号一二三四五六七八", "充值****七八"); // 12 chars
    check("兑换码一二三四五六", "兑****五六"); // 9 chars, by chars not bytes
    check("  AB12-3456-7890  ", "AB****90"); // trimmed before masking
}

/// Whatever the length, a mask shows at most 4 characters of a code and at most a third of it.
#[test]
fn masks_never_show_more_than_four_characters_or_a_third() {
    for n in 1..=MAX_CODE_CHARS {
        let code: String = (0..n)
            .map(|i| char::from(b'a' + u8::try_from(i % 26).unwrap()))
            .collect();
        let masked = CardCode::new(code.as_str()).unwrap().masked();
        let shown = masked.chars().count() - "****".len();
        assert!(shown <= 4, "{n} chars: {shown} shown");
        assert!(shown * 3 <= n, "{n} chars: {shown} shown");
    }
}

#[test]
fn secret_and_key_masks() {
    let secret = CardSecret::new("hunter2-long-secret").unwrap();
    assert_eq!(secret.masked(), "********");
    let code = CardCode::new("AB12-3456-7890").unwrap();
    assert_eq!(CardKey::new(code.clone(), None).masked(), "AB****90");
    assert_eq!(
        CardKey::new(code, Some(secret)).masked(),
        "AB****90 / ********"
    );
}

#[test]
fn validation_table() {
    fn check(text: &str, expected: Result<&str, InvalidReason>) {
        let got = CardCode::new(text);
        match expected {
            Ok(stored) => assert_eq!(got.unwrap().expose(), stored, "{text:?}"),
            Err(reason) => assert_eq!(got.unwrap_err(), Error::InvalidCode(reason), "{text:?}"),
        }
        let got = CardSecret::new(text);
        match expected {
            Ok(stored) => assert_eq!(got.unwrap().expose(), stored, "{text:?}"),
            Err(reason) => assert_eq!(got.unwrap_err(), Error::InvalidSecret(reason)),
        }
    }
    let max = "x".repeat(MAX_CODE_CHARS);
    let over = "x".repeat(MAX_CODE_CHARS + 1);
    let max_wide = "码".repeat(MAX_CODE_CHARS); // counted in chars, not bytes
    check("ABC", Ok("ABC"));
    check("  ABC \t", Ok("ABC"));
    check("A B", Ok("A B"));
    check("%0A", Ok("%0A"));
    check(&max, Ok(&max));
    check(&max_wide, Ok(&max_wide));
    check("", Err(InvalidReason::Empty));
    check(" \t ", Err(InvalidReason::Empty));
    check(&over, Err(InvalidReason::TooLong));
    check("A\nB", Err(InvalidReason::ControlCharacter));
    check("A\u{0}B", Err(InvalidReason::ControlCharacter));
    check("A\u{7f}B", Err(InvalidReason::ControlCharacter));
    check("A\tB", Err(InvalidReason::ControlCharacter));
}

#[test]
fn constant_time_equality() {
    let a = CardCode::new("AB12-3456-7890").unwrap();
    assert_eq!(a, CardCode::new("AB12-3456-7890").unwrap());
    assert_ne!(a, CardCode::new("AB12-3456-7891").unwrap());
    assert_ne!(a, CardCode::new("AB12-3456-789").unwrap());
    let s = CardSecret::new("pw").unwrap();
    assert_eq!(s, CardSecret::new("pw").unwrap());
    assert_ne!(s, CardSecret::new("pW").unwrap());
    let k = CardKey::new(a.clone(), Some(s.clone()));
    assert_eq!(k, CardKey::new(a.clone(), Some(s)));
    assert_ne!(k, CardKey::new(a, None));
}
