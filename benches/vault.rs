//! Seal and open of one card key through the vault, next to raw AES-256-GCM on the same bytes.
//!
//! Budget (DESIGN.md "Performance budgets"): vault seal/open within 1.5x of raw AES-256-GCM.
//!
//! Both sides get the same plaintext (a 19-character code), associated data of the same length
//! (the vault's: 20-byte header, tenant, SKU, card, field = 62 bytes for tenant `default`), a
//! fresh random 12-byte nonce per encryption from `rand::thread_rng()` (the RNG the shop passes
//! to the vault), and a cipher whose key schedule was built once, outside the loop. Both return
//! a freshly allocated buffer, as a caller of either would need.
//!
//! After criterion, the ratios are measured again with plain interleaved timing loops
//! (7 rounds of 200k operations each, median per operation) and printed as
//! `ratio vault_seal / raw_encrypt = 1.12`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use criterion::{Criterion, Throughput};
use quanyi_core::{CardId, SkuId, TenantId};
use quanyi_vault::{Field, HEADER_LEN, KeyRing, NONCE_LEN, RootKey, SealContext, SealedValue};
use rand::RngCore;
use zeroize::Zeroizing;

/// A typical card code.
const CODE: &[u8] = b"ABCD-1234-EFGH-5678";

/// Everything both sides need, built once.
struct Fixture {
    tenant: TenantId,
    sku: SkuId,
    card: CardId,
    ring: KeyRing,
    raw: Aes256Gcm,
    /// Associated data as long as the vault's for this context.
    aad: Vec<u8>,
}

impl Fixture {
    fn new() -> Self {
        let mut rng = rand::thread_rng();
        let now = chrono::Utc::now();
        let root = RootKey::generate(&mut rng);
        let tenant = TenantId::default();
        let (mut ring, _) = KeyRing::create(tenant.clone(), &root, now, &mut rng).unwrap();
        // Budget bookkeeping is the same atomic decrement whatever the size; a huge grant just
        // keeps criterion's many millions of seals from running out.
        ring.set_use_limit(u64::MAX);
        ring.grant(ring.active_key_id(), 1 << 62).unwrap();
        let mut raw_key = [0u8; 32];
        rng.fill_bytes(&mut raw_key);
        let raw = Aes256Gcm::new(&raw_key.into());
        // Header, tenant length and name, SKU, card, field: the vault's associated data.
        let aad_len = HEADER_LEN + 2 + tenant.as_str().len() + 16 + 16 + 1;
        let mut aad = vec![0u8; aad_len];
        rng.fill_bytes(&mut aad);
        Fixture {
            sku: SkuId::generate(now, &mut rng),
            card: CardId::generate(now, &mut rng),
            tenant,
            ring,
            raw,
            aad,
        }
    }

    fn ctx(&self) -> SealContext<'_> {
        SealContext {
            tenant: &self.tenant,
            sku: self.sku,
            card: self.card,
            field: Field::Code,
        }
    }

    fn vault_seal(&self, rng: &mut dyn RngCore) -> SealedValue {
        self.ring.seal(&self.ctx(), black_box(CODE), rng).unwrap()
    }

    fn vault_open(&self, sealed: &SealedValue) -> Zeroizing<Vec<u8>> {
        self.ring.open(&self.ctx(), black_box(sealed)).unwrap()
    }

    /// Raw AES-256-GCM: nonce ‖ ciphertext ‖ tag is what a caller would have to keep.
    fn raw_encrypt(&self, rng: &mut dyn RngCore) -> ([u8; NONCE_LEN], Vec<u8>) {
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        let payload = Payload {
            msg: black_box(CODE),
            aad: &self.aad,
        };
        let out = self
            .raw
            .encrypt(Nonce::from_slice(&nonce), payload)
            .unwrap();
        (nonce, out)
    }

    fn raw_decrypt(&self, sealed: &([u8; NONCE_LEN], Vec<u8>)) -> Vec<u8> {
        let (nonce, body) = black_box(sealed);
        let payload = Payload {
            msg: body,
            aad: &self.aad,
        };
        self.raw.decrypt(Nonce::from_slice(nonce), payload).unwrap()
    }
}

fn bench_vault(c: &mut Criterion) {
    let fx = Fixture::new();
    let mut rng = rand::thread_rng();
    let sealed = fx.vault_seal(&mut rng);
    let raw_sealed = fx.raw_encrypt(&mut rng);
    assert_eq!(fx.vault_open(&sealed).as_slice(), CODE);
    assert_eq!(fx.raw_decrypt(&raw_sealed), CODE);

    let mut g = c.benchmark_group("vault");
    g.throughput(Throughput::Elements(1));
    g.bench_function("raw_encrypt", |b| b.iter(|| fx.raw_encrypt(&mut rng)));
    g.bench_function("vault_seal", |b| b.iter(|| fx.vault_seal(&mut rng)));
    g.bench_function("raw_decrypt", |b| b.iter(|| fx.raw_decrypt(&raw_sealed)));
    g.bench_function("vault_open", |b| b.iter(|| fx.vault_open(&sealed)));
    g.finish();
}

/// Nanoseconds per call of `f`, over `n` calls.
fn per_op(n: u32, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    for _ in 0..n {
        f();
    }
    start.elapsed().as_secs_f64() * 1e9 / f64::from(n)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Interleaved rounds so that both sides see the same machine state; prints medians and ratios.
fn print_ratios() {
    const N: u32 = 200_000;
    const ROUNDS: usize = 7;
    let fx = Fixture::new();
    let mut rng = rand::thread_rng();
    let sealed = fx.vault_seal(&mut rng);
    let raw_sealed = fx.raw_encrypt(&mut rng);
    let (mut raw_enc, mut seal, mut raw_dec, mut open) = (vec![], vec![], vec![], vec![]);
    for _ in 0..ROUNDS {
        raw_enc.push(per_op(N, || drop(black_box(fx.raw_encrypt(&mut rng)))));
        seal.push(per_op(N, || drop(black_box(fx.vault_seal(&mut rng)))));
        raw_dec.push(per_op(N, || drop(black_box(fx.raw_decrypt(&raw_sealed)))));
        open.push(per_op(N, || drop(black_box(fx.vault_open(&sealed)))));
    }
    let (raw_enc, seal, raw_dec, open) =
        (median(raw_enc), median(seal), median(raw_dec), median(open));
    println!();
    println!("medians of {ROUNDS} interleaved rounds of {N} operations:");
    println!("  raw_encrypt {raw_enc:8.1} ns   vault_seal {seal:8.1} ns");
    println!("  raw_decrypt {raw_dec:8.1} ns   vault_open {open:8.1} ns");
    println!("ratio vault_seal / raw_encrypt = {:.2}", seal / raw_enc);
    println!("ratio vault_open / raw_decrypt = {:.2}", open / raw_dec);
    println!("budget: within 1.50 (DESIGN.md)");
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
}

fn main() {
    let mut c = config().configure_from_args();
    bench_vault(&mut c);
    c.final_summary();
    // Only `cargo bench` passes `--bench`; `cargo test --benches` runs criterion's quick test
    // mode, and the long timing loops are skipped there.
    if std::env::args().any(|a| a == "--bench") {
        print_ratios();
    }
}
