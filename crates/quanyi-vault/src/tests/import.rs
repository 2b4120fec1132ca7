use proptest::prelude::*;

use super::ring_with_budget;
use crate::import::{
    DuplicateLine, ImportFormat, ImportOptions, MalformedLine, MalformedReason, parse_import,
};

/// One expected line: a card (`code`, `secret`) or a malformed reason.
#[derive(Debug, PartialEq)]
enum Line {
    Card(usize, &'static str, Option<&'static str>),
    Bad(usize, MalformedReason),
}
use Line::{Bad, Card};

const PLAIN: ImportOptions = ImportOptions {
    delimiter: None,
    format: ImportFormat::PlainText,
    has_header: false,
};
const PIPE: ImportOptions = ImportOptions {
    delimiter: Some('|'),
    ..PLAIN
};
const CSV: ImportOptions = ImportOptions {
    format: ImportFormat::Csv,
    ..PLAIN
};

fn check(input: &[u8], opts: ImportOptions, expected: &[Line]) {
    let parsed = parse_import(input, &opts);
    let mut got: Vec<(usize, Line)> = parsed
        .cards
        .iter()
        .map(|c| {
            let code: &'static str = Box::leak(c.key.code().expose().to_owned().into_boxed_str());
            let secret = c
                .key
                .secret()
                .map(|s| &*Box::leak(s.expose().to_owned().into_boxed_str()));
            (c.line, Card(c.line, code, secret))
        })
        .chain(
            parsed
                .malformed
                .iter()
                .map(|m| (m.line, Bad(m.line, m.reason))),
        )
        .collect();
    got.sort_by_key(|(line, _)| *line);
    let got: Vec<Line> = got.into_iter().map(|(_, l)| l).collect();
    assert_eq!(got, expected, "input {:?}", String::from_utf8_lossy(input));
}

#[test]
fn plain_text_table() {
    check(b"", PLAIN, &[]);
    check(b"AB12\n", PLAIN, &[Card(1, "AB12", None)]);
    check(b"AB12", PLAIN, &[Card(1, "AB12", None)]);
    // BOM, CRLF, lone LF, blank and whitespace-only lines, surrounding spaces.
    check(
        b"\xEF\xBB\xBFAB12\r\n\r\n  \t \nCD34 \n   EF56\r\n",
        PLAIN,
        &[
            Card(1, "AB12", None),
            Card(4, "CD34", None),
            Card(5, "EF56", None),
        ],
    );
    // A BOM only counts at the very start.
    check(
        b"A1\n\xEF\xBB\xBFB2",
        PLAIN,
        &[Card(1, "A1", None), Card(2, "\u{feff}B2", None)],
    );
    // Literal text stays literal: no URL or escape decoding.
    check(
        b"AB%0ACD\nX\\nY",
        PLAIN,
        &[Card(1, "AB%0ACD", None), Card(2, "X\\nY", None)],
    );
    // Inner spaces are part of a plain code.
    check(b"AB 12", PLAIN, &[Card(1, "AB 12", None)]);
    // Invalid UTF-8 is reported on its own physical line.
    check(
        b"A1\nB2\n\xFF\xFEbad\nC3",
        PLAIN,
        &[
            Card(1, "A1", None),
            Card(2, "B2", None),
            Bad(3, MalformedReason::InvalidUtf8),
            Card(4, "C3", None),
        ],
    );
    // Control characters: lone CR, NUL, tab, escape.
    check(
        b"A\rB\nA\0B\nA\tB\nA\x1bB\nOK",
        PLAIN,
        &[
            Bad(1, MalformedReason::ControlCharacter),
            Bad(2, MalformedReason::ControlCharacter),
            Bad(3, MalformedReason::ControlCharacter),
            Bad(4, MalformedReason::ControlCharacter),
            Card(5, "OK", None),
        ],
    );
    let long = format!("{}\nOK", "x".repeat(257));
    check(
        long.as_bytes(),
        PLAIN,
        &[Bad(1, MalformedReason::TooLong), Card(2, "OK", None)],
    );
    // A header line is skipped (the first non-blank one).
    check(
        b"\n code \nAB12",
        ImportOptions {
            has_header: true,
            ..PLAIN
        },
        &[Card(3, "AB12", None)],
    );
    // Chinese text and full-width spaces are trimmed like other whitespace.
    check(
        "\u{3000}充值卡ABC\u{3000}".as_bytes(),
        PLAIN,
        &[Card(1, "充值卡ABC", None)],
    );
}

#[test]
fn delimiter_table() {
    check(
        b"N1|P1\n N2 | P2 \r\n",
        PIPE,
        &[Card(1, "N1", Some("P1")), Card(2, "N2", Some("P2"))],
    );
    check(b"N1|P1|X", PIPE, &[Bad(1, MalformedReason::TooManyFields)]);
    check(b"N1|", PIPE, &[Bad(1, MalformedReason::EmptySecret)]);
    check(b"|P1", PIPE, &[Bad(1, MalformedReason::EmptyCode)]);
    check(b" | ", PIPE, &[Bad(1, MalformedReason::EmptyCode)]);
    check(b"N1", PIPE, &[Bad(1, MalformedReason::MissingSecret)]);
    check(b"N1|P%0A1", PIPE, &[Card(1, "N1", Some("P%0A1"))]);
    // A tab delimiter is not a control character.
    let tab = ImportOptions {
        delimiter: Some('\t'),
        ..PLAIN
    };
    check(b"N1\tP1", tab, &[Card(1, "N1", Some("P1"))]);
    check(
        b"N1\tP\x01",
        tab,
        &[Bad(1, MalformedReason::ControlCharacter)],
    );
    // A multi-byte delimiter.
    let wide = ImportOptions {
        delimiter: Some('，'),
        ..PLAIN
    };
    check(
        "卡号，密码".as_bytes(),
        wide,
        &[Card(1, "卡号", Some("密码"))],
    );
}

#[test]
fn csv_table() {
    check(
        b"A1\nA2,P2\n",
        CSV,
        &[Card(1, "A1", None), Card(2, "A2", Some("P2"))],
    );
    check(b" A1 , P1 ", CSV, &[Card(1, "A1", Some("P1"))]);
    check(br#""A,1","P""2""#, CSV, &[Card(1, "A,1", Some("P\"2"))]);
    check(br#"  "A1"  ,  "P1"  "#, CSV, &[Card(1, "A1", Some("P1"))]);
    check(br#""""""#, CSV, &[Card(1, "\"", None)]);
    check(b"A1,P1,X", CSV, &[Bad(1, MalformedReason::TooManyFields)]);
    check(b"A1,P1,", CSV, &[Bad(1, MalformedReason::TooManyFields)]);
    check(b"A1,", CSV, &[Bad(1, MalformedReason::EmptySecret)]);
    check(b",P1", CSV, &[Bad(1, MalformedReason::EmptyCode)]);
    check(
        br#""A1,P1"#,
        CSV,
        &[Bad(1, MalformedReason::UnterminatedQuote)],
    );
    // A quote cannot span lines: each line is one record.
    check(
        b"\"A1\nP1\"\nB2",
        CSV,
        &[
            Bad(1, MalformedReason::UnterminatedQuote),
            Bad(2, MalformedReason::StrayQuote),
            Card(3, "B2", None),
        ],
    );
    check(br#"A"1"#, CSV, &[Bad(1, MalformedReason::StrayQuote)]);
    check(br#""A1"x,P1"#, CSV, &[Bad(1, MalformedReason::StrayQuote)]);
    check(
        b"\"A\rB\"",
        CSV,
        &[Bad(1, MalformedReason::ControlCharacter)],
    );
    check(
        b"code,secret\r\nA1,P1\r\n",
        ImportOptions {
            has_header: true,
            ..CSV
        },
        &[Card(2, "A1", Some("P1"))],
    );
    check(
        b"A1;P1",
        ImportOptions {
            delimiter: Some(';'),
            ..CSV
        },
        &[Card(1, "A1", Some("P1"))],
    );
}

#[test]
fn malformed_lines_and_parsed_imports_do_not_show_text() {
    let parsed = parse_import(b"SECRET-CODE-1\nSECRET\x01\n", &PLAIN);
    let debug = format!("{parsed:?}");
    assert!(!debug.contains("SECRET"), "{debug}");
    assert_eq!(
        parsed.malformed,
        vec![MalformedLine {
            line: 2,
            reason: MalformedReason::ControlCharacter
        }]
    );
    assert_eq!(
        parsed.malformed[0].to_string(),
        "line 2: contains a control character"
    );
}

#[test]
fn plan_import_flags_in_batch_duplicates() {
    let (_, ring, _) = ring_with_budget(0);
    let input = b"AB12-3456|pw\nab12 3456|PW\nAB12-3456|other\nbad|\nAB123456|pw\nXY99|pw\n";
    let plan = ring.plan_import(parse_import(input, &PIPE));
    let lines: Vec<usize> = plan.cards.iter().map(|c| c.line).collect();
    assert_eq!(lines, vec![1, 3, 6]);
    assert_eq!(
        plan.duplicates,
        vec![
            DuplicateLine {
                line: 2,
                first_line: 1
            },
            DuplicateLine {
                line: 5,
                first_line: 1
            },
        ]
    );
    assert_eq!(plan.malformed.len(), 1);
    assert_eq!(plan.cards[0].index, ring.blind_index(&plan.cards[0].key));
    assert!(!format!("{plan:?}").contains("AB12"));
}

proptest! {
    #[test]
    fn parse_import_never_panics(
        input in proptest::collection::vec(any::<u8>(), 0..512),
        delimiter in proptest::option::of(any::<char>()),
        csv in any::<bool>(),
        has_header in any::<bool>(),
    ) {
        let opts = ImportOptions {
            delimiter,
            format: if csv { ImportFormat::Csv } else { ImportFormat::PlainText },
            has_header,
        };
        let parsed = parse_import(&input, &opts);
        let lines = input.iter().filter(|b| **b == b'\n').count() + 1;
        for c in &parsed.cards {
            prop_assert!(c.line >= 1 && c.line <= lines);
        }
        for m in &parsed.malformed {
            prop_assert!(m.line >= 1 && m.line <= lines);
        }
    }

    #[test]
    fn parse_import_never_panics_on_texty_input(
        input in "[a-c\"|,; \t\r\n\u{feff}\u{3000}-]{0,200}",
        csv in any::<bool>(),
    ) {
        let opts = ImportOptions {
            delimiter: Some('|'),
            format: if csv { ImportFormat::Csv } else { ImportFormat::PlainText },
            has_header: false,
        };
        let _ = parse_import(input.as_bytes(), &opts);
    }
}
