use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE};

use super::leaks::assert_no_leak;
use crate::{EnvKeyProvider, Error, FileKeyProvider, KeyProvider, RootKey, StaticKeyProvider};

const KEY: [u8; 32] = [
    0x9a, 0x41, 0x07, 0xee, 0x5c, 0x13, 0xd2, 0x88, 0x61, 0x3f, 0xb0, 0x24, 0x7d, 0xc9, 0x06, 0x5e,
    0xa3, 0x19, 0xf4, 0x72, 0x2b, 0x90, 0xce, 0x35, 0x58, 0xe1, 0x0d, 0x6a, 0xb7, 0x43, 0xfc, 0x82,
];

fn unique(name: &str) -> String {
    format!("QUANYI_VAULT_TEST_{name}_{}", std::process::id())
}

/// Good encodings give the key; bad ones give an error that does not repeat the value.
fn cases() -> Vec<(String, Option<[u8; 32]>)> {
    vec![
        (hex::encode(KEY), Some(KEY)),
        (hex::encode_upper(KEY), Some(KEY)),
        (format!("  {}\n", STANDARD.encode(KEY)), Some(KEY)),
        (STANDARD_NO_PAD.encode(KEY), Some(KEY)),
        (String::new(), None),
        ("not a key at all, just text".into(), None),
        (URL_SAFE.encode([0xffu8; 32]), None), // URL-safe alphabet is not accepted
        (STANDARD.encode([1u8; 31]), None),
        (STANDARD.encode([1u8; 48]), None),
        (format!("{}zz", &hex::encode(KEY)[..62]), None),
        (hex::encode([7u8; 33]), None),
    ]
}

fn check(provider: &dyn KeyProvider, value: &str, expected: Option<[u8; 32]>) {
    match (provider.root_key(), expected) {
        (Ok(root), Some(key)) => assert_eq!(root.id(), RootKey::from_bytes(key).id()),
        (Err(Error::KeyProvider(msg)), None) => {
            let trimmed = value.trim();
            if trimmed.len() >= 4 {
                assert!(!msg.contains(trimmed), "{msg}");
                assert!(!msg.contains(&trimmed[..trimmed.len() / 2]), "{msg}");
            }
            assert_no_leak(&msg, &[&KEY]);
        }
        (got, _) => panic!("value {value:?}: got {got:?}"),
    }
}

/// Set by the parent test for the child process: which case to check.
const CHILD_CASE: &str = "QUANYI_VAULT_TEST_CHILD_CASE";
const CHILD_VAR: &str = "QUANYI_VAULT_TEST_CHILD_VAR";

/// `std::env::set_var` is `unsafe` in edition 2024 and this workspace forbids unsafe code, so
/// each case runs this test binary again as a child process with the variable set in its
/// environment, filtered to [`env_provider_child`].
#[test]
fn env_provider_reads_hex_and_base64() {
    let var = unique("ENV");
    let exe = std::env::current_exe().unwrap();
    for (i, (value, _)) in cases().iter().enumerate() {
        let out = std::process::Command::new(&exe)
            .args([
                "--exact",
                "tests::providers::env_provider_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_CASE, i.to_string())
            .env(CHILD_VAR, &var)
            .env(&var, value)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "case {i}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("1 passed"),
            "case {i}: the child ran no test: {stdout}"
        );
    }
    // Not set at all (this unique name is set nowhere in this process).
    let provider = EnvKeyProvider::new(&var);
    let err = provider.root_key().unwrap_err();
    assert!(err.to_string().contains("is not set"), "{err}");
    assert!(format!("{provider:?}").contains(&var));
}

/// The child half of [`env_provider_reads_hex_and_base64`]; does nothing when run directly.
#[test]
fn env_provider_child() {
    let (Ok(case), Ok(var)) = (std::env::var(CHILD_CASE), std::env::var(CHILD_VAR)) else {
        return;
    };
    let (value, expected) = cases().swap_remove(case.parse::<usize>().unwrap());
    assert_eq!(std::env::var(&var).unwrap(), value);
    check(&EnvKeyProvider::new(var), &value, expected);
}

#[test]
fn file_provider_reads_hex_and_base64() {
    let path = std::env::temp_dir().join(format!(
        "quanyi-vault-root-{}-{}.key",
        std::process::id(),
        line!()
    ));
    let provider = FileKeyProvider::new(&path);
    for (value, expected) in cases() {
        std::fs::write(&path, &value).unwrap();
        check(&provider, &value, expected);
    }
    std::fs::write(&path, b"\xff\xfe\x00").unwrap();
    assert!(matches!(provider.root_key(), Err(Error::KeyProvider(_))));
    std::fs::remove_file(&path).unwrap();
    let err = provider.root_key().unwrap_err();
    assert!(
        err.to_string().contains("cannot read root key file"),
        "{err}"
    );
}

#[test]
fn static_provider_and_root_key_basics() {
    let root = RootKey::from_bytes(KEY);
    let provider = StaticKeyProvider::new(root.clone());
    assert_eq!(provider.root_key().unwrap().id(), root.id());
    assert!(root.id().starts_with("rk_"));
    assert_eq!(root.id().len(), 3 + 16);
    assert_ne!(root.id(), RootKey::from_bytes([0; 32]).id());
    assert_eq!(format!("{root:?}"), format!("RootKey({})", root.id()));
    let parsed = RootKey::parse(&root.expose_base64()).unwrap();
    assert_eq!(parsed.id(), root.id());
}
