use std::io::Write;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};

use super::{card, now, rng, sku, tenant};
use crate::import::{ImportOptions, parse_import};
use crate::{CardCode, CardKey, CardSecret, Error, Field, KeyRing, RootKey, SealContext};

/// Fails if `output` contains any secret as text, lower or upper hex, or base64 (standard and
/// URL-safe, with and without padding).
pub(super) fn assert_no_leak(output: &str, secrets: &[&[u8]]) {
    for secret in secrets {
        let mut forms = vec![
            hex::encode(secret),
            hex::encode_upper(secret),
            STANDARD.encode(secret),
            STANDARD_NO_PAD.encode(secret),
            URL_SAFE.encode(secret),
            URL_SAFE_NO_PAD.encode(secret),
        ];
        if let Ok(text) = std::str::from_utf8(secret) {
            forms.push(text.to_owned());
        }
        // Also half of each form, so a truncated dump is caught too.
        let halves: Vec<String> = forms
            .iter()
            .filter(|f| f.len() >= 16)
            .map(|f| f[..f.len() / 2].to_owned())
            .collect();
        for form in forms.iter().chain(&halves) {
            assert!(
                !output.contains(form.as_str()),
                "leaked {form:?} in output:\n{output}"
            );
        }
    }
}

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Buffer {
    type Writer = Buffer;
    fn make_writer(&'a self) -> Buffer {
        self.clone()
    }
}

const CODE: &str = "ZQ7X-LEAK-CODE-93KD";
const SECRET: &str = "pw-LEAK-secret-77Hq";

#[test]
fn no_vault_type_leaks_through_debug_or_tracing() {
    let mut rng = rng();
    let root = RootKey::generate(&mut rng);
    let t = tenant();
    let (mut ring, _) = KeyRing::create(t.clone(), &root, now(), &mut rng).unwrap();
    ring.rotate(&root, now(), &mut rng).unwrap();
    ring.grant(ring.active_key_id(), 10).unwrap();
    let raw_keys = ring.raw_keys_for_test(&root);
    assert_eq!(raw_keys.len(), 3, "two data keys and the index key");

    let code = CardCode::new(CODE).unwrap();
    let secret = CardSecret::new(SECRET).unwrap();
    let key = CardKey::new(code.clone(), Some(secret.clone()));
    let (s, c) = (sku(&mut rng), card(&mut rng));
    let sealed_card = ring.seal_card(&t, s, c, &key, &mut rng).unwrap();
    let ctx = SealContext {
        tenant: &t,
        sku: s,
        card: c,
        field: Field::Code,
    };
    let sealed = ring.seal(&ctx, CODE.as_bytes(), &mut rng).unwrap();
    let opened = ring.open(&ctx, &sealed).unwrap();
    let index = ring.blind_index(&key);
    let wrapped = ring.to_wrapped();
    let input = format!("{CODE}|{SECRET}\n{CODE}|{SECRET}\n{CODE}|\n{CODE}\u{1}|x\n");
    let opts = ImportOptions {
        delimiter: Some('|'),
        ..ImportOptions::default()
    };
    let parsed = parse_import(input.as_bytes(), &opts);
    let plan = ring.plan_import(parsed.clone());
    let errors = [
        CardCode::new(format!("{CODE}\n{CODE}")).unwrap_err(),
        CardSecret::new(format!("{SECRET}\0{SECRET}")).unwrap_err(),
        ring.open(
            &SealContext {
                field: Field::Secret,
                ..ctx
            },
            &sealed,
        )
        .unwrap_err(),
        KeyRing::unwrap(&RootKey::generate(&mut rng), &wrapped).unwrap_err(),
        RootKey::parse(&format!("{}x", hex::encode(*raw_keys[0]))).unwrap_err(),
        Error::BudgetExhausted,
    ];

    let debug_outputs: Vec<String> = vec![
        format!("{code:?}"),
        format!("{secret:?}"),
        format!("{key:?}"),
        format!("{:#?}", Some(&key)),
        format!("{root:?}"),
        format!("{ring:?}"),
        format!("{ring:#?}"),
        format!("{wrapped:?}"),
        format!("{wrapped:#?}"),
        format!("{:?}", wrapped.keys[0]),
        format!("{sealed:?}"),
        format!("{sealed_card:?}"),
        format!("{index:?}"),
        format!("{parsed:?}"),
        format!("{:?}", parsed.cards[0]),
        format!("{plan:#?}"),
        format!("{errors:?}"),
        errors.iter().map(|e| format!("{e}\n")).collect(),
        format!("{opened:?}").replace(' ', ""), // opened bytes are plaintext by design...
    ];
    // ...so the last entry is checked only for the other secrets.
    let (opened_debug, debug_outputs) = debug_outputs.split_last().unwrap();

    let buffer = Buffer::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(buffer.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        tracing::info!(?code, ?secret, ?key, "card");
        tracing::info!(?root, ?ring, ?wrapped, "ring");
        tracing::info!(?sealed, ?sealed_card, ?index, "sealed");
        tracing::info!(?parsed, ?plan, "import");
        for e in &errors {
            tracing::info!(error = %e, ?e, "error");
        }
        tracing::info!(keys = ?wrapped.keys, "keys");
    });
    let traced = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    assert!(
        traced.contains("RootKey(rk_"),
        "the subscriber captured: {traced}"
    );

    let mut secrets: Vec<&[u8]> = vec![CODE.as_bytes(), SECRET.as_bytes(), &index.as_bytes()[..]];
    let root_bytes = *root.bytes();
    secrets.push(&root_bytes);
    for k in &raw_keys {
        secrets.push(&k[..]);
    }
    for out in debug_outputs.iter().chain(std::iter::once(&traced)) {
        assert_no_leak(out, &secrets);
    }
    assert_no_leak(opened_debug, &secrets[2..]);
    // And the serialised forms hold no plaintext or raw key either.
    let stored = serde_json::to_string(&(&wrapped, &sealed_card, &plan.cards[0].index)).unwrap();
    assert_no_leak(&stored, &[CODE.as_bytes(), SECRET.as_bytes(), &root_bytes]);
    for k in &raw_keys {
        assert_no_leak(&stored, &[&k[..]]);
    }
}

#[test]
fn assert_no_leak_catches_every_encoding() {
    let text: &[u8] = b"0123456789abcdef-secret";
    let binary: &[u8] = &[0xfb; 24]; // base64 of this uses the URL-safe only characters
    let cases: Vec<(&[u8], String)> = vec![
        (text, String::from_utf8(text.to_vec()).unwrap()),
        (text, hex::encode(text)),
        (text, hex::encode_upper(text)),
        (text, STANDARD.encode(text)[..20].to_owned()),
        (binary, STANDARD.encode(binary)),
        (binary, STANDARD_NO_PAD.encode(binary)),
        (binary, URL_SAFE.encode(binary)),
        (binary, URL_SAFE_NO_PAD.encode(binary)),
    ];
    for (secret, form) in cases {
        let caught = std::panic::catch_unwind(|| {
            assert_no_leak(&format!("prefix {form} suffix"), &[secret]);
        });
        assert!(caught.is_err(), "{form} not caught");
    }
    assert_no_leak("nothing here", &[text, binary]);
}
