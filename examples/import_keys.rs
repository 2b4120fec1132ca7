//! Imports a card-key file into a SQLite or PostgreSQL store for one SKU, with a progress bar,
//! and writes every duplicate and malformed line, by number, to a report file.
//!
//! ```text
//! cargo run --release --example import_keys -- --store sqlite:/tmp/k.db --sku month-card keys.txt
//! ```
//!
//! `--sku` takes a SKU id (`sku_…`) or a SKU name. A name the tenant does not have yet is
//! created as card-key goods stocked from the vault, priced `--price` (default 0.00 CNY: set the
//! real price before selling). The root key comes from `QUANYI_ROOT_KEY` (base64 or hex of 32
//! bytes) or the file named by `QUANYI_ROOT_KEY_FILE`; the same key must be used by the shop that
//! sells the keys.
//!
//! Options: `--tenant NAME` (default `default`), `--delimiter C` (split `number<C>secret`),
//! `--csv`, `--header` (skip the first line), `--report PATH` (default `FILE.report.txt`),
//! `--reject-bad-lines` (import nothing when any line is malformed).

use std::error::Error;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use quanyi::*;

mod support;
use support::StoreSpec;

/// Lines per import call: each call is one atomic storage write.
const CHUNK_LINES: usize = 5_000;

#[derive(Debug)]
struct Args {
    store: StoreSpec,
    sku: String,
    file: String,
    tenant: TenantId,
    price: Money,
    options: ImportOptions,
    report: String,
    bad_lines: BadLines,
}

const USAGE: &str = "usage: import_keys --store sqlite:PATH|postgres:URL --sku SKU FILE \
[--tenant NAME] [--price 19.90] [--delimiter C] [--csv] [--header] [--report PATH] [--reject-bad-lines]";

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, Box<dyn Error>> {
    let mut store = None;
    let mut sku = None;
    let mut file = None;
    let mut tenant = TenantId::default();
    let mut price = Money::zero(Currency::CNY);
    let mut options = ImportOptions::default();
    let mut report = None;
    let mut bad_lines = BadLines::Skip;
    let value = |args: &mut dyn Iterator<Item = String>, flag: &str| {
        args.next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--store" => store = Some(StoreSpec::parse(&value(&mut args, "--store")?)?),
            "--sku" => sku = Some(value(&mut args, "--sku")?),
            "--tenant" => tenant = TenantId::new(value(&mut args, "--tenant")?)?,
            "--price" => price = Money::parse(&value(&mut args, "--price")?, Currency::CNY)?,
            "--delimiter" => {
                let d = value(&mut args, "--delimiter")?;
                let mut chars = d.chars();
                match (chars.next(), chars.next()) {
                    (Some(c), None) => options.delimiter = Some(c),
                    _ => return Err("--delimiter takes one character".into()),
                }
            }
            "--csv" => options.format = ImportFormat::Csv,
            "--header" => options.has_header = true,
            "--report" => report = Some(value(&mut args, "--report")?),
            "--reject-bad-lines" => bad_lines = BadLines::Reject,
            "-h" | "--help" => return Err(USAGE.into()),
            other if other.starts_with("--") => {
                return Err(format!("unknown option {other}\n{USAGE}").into());
            }
            _ if file.is_none() => file = Some(arg),
            _ => return Err(format!("one file at a time\n{USAGE}").into()),
        }
    }
    let store = store.ok_or(USAGE)?;
    if !store.is_durable() {
        return Err("import into a durable store: sqlite:PATH or postgres:URL".into());
    }
    let file = file.ok_or(USAGE)?;
    Ok(Args {
        store,
        sku: sku.ok_or(USAGE)?,
        report: report.unwrap_or_else(|| format!("{file}.report.txt")),
        file,
        tenant,
        price,
        options,
        bad_lines,
    })
}

fn root_key_provider() -> Result<Arc<dyn KeyProvider>, Box<dyn Error>> {
    if let Some(path) = std::env::var_os("QUANYI_ROOT_KEY_FILE") {
        return Ok(Arc::new(FileKeyProvider::new(path)));
    }
    if std::env::var_os("QUANYI_ROOT_KEY").is_some() {
        return Ok(Arc::new(EnvKeyProvider::new("QUANYI_ROOT_KEY")));
    }
    Err(
        "set QUANYI_ROOT_KEY (base64 or hex of 32 bytes) or QUANYI_ROOT_KEY_FILE; \
         the shop that sells these keys needs the same root key"
            .into(),
    )
}

/// The SKU named by id, or by name (created when the tenant has none by that name).
async fn find_or_create_sku(shop: &Shop, args: &Args) -> Result<SkuId, Box<dyn Error>> {
    if let Ok(id) = args.sku.parse::<SkuId>() {
        shop.goods_of(id).await?;
        return Ok(id);
    }
    for goods in shop.store().list_goods(shop.tenant()).await? {
        if let Some(sku) = goods.skus().iter().find(|s| s.name == args.sku) {
            return Ok(sku.id);
        }
    }
    let id = SkuId::generate(chrono::Utc::now(), &mut rand::thread_rng());
    shop.create_goods(
        &quanyi::Actor::new("mei", "catalog")?,
        GoodsDraft {
            title: args.sku.clone(),
            kind: GoodsKind::CardKey,
            skus: vec![
                SkuDraft::new(id, args.sku.clone(), args.price).with_stock(StockSource::VaultPool),
            ],
            categories: vec![],
        },
    )
    .await?;
    println!("created SKU {:?} ({id}) at {}", args.sku, args.price);
    Ok(id)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let args = parse_args(std::env::args().skip(1))?;
    let bytes = std::fs::read(&args.file).map_err(|e| format!("cannot read {}: {e}", args.file))?;
    let store = args.store.open().await?;
    let shop = Shop::builder(store, root_key_provider()?)
        .tenant(args.tenant.clone())
        .build()?;
    let sku = find_or_create_sku(&shop, &args).await?;

    // Split at line ends so every chunk is whole lines; line numbers are offset per chunk.
    let lines: Vec<&[u8]> = bytes.split_inclusive(|b| *b == b'\n').collect();
    let started = Instant::now();
    let bar = ProgressBar::new(lines.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} lines  {per_sec}  eta {eta}")?
            .progress_chars("=> "),
    );
    // The audit log names this tool as the operator of its imports.
    let operator = Actor::new("import_keys", "stock")?;
    let mut imported = 0usize;
    let mut report = String::new();
    let (mut duplicates, mut malformed) = (0usize, 0usize);
    for (n, chunk) in lines.chunks(CHUNK_LINES).enumerate() {
        let offset = n * CHUNK_LINES;
        let mut options = args.options;
        options.has_header &= n == 0;
        let input: Vec<u8> = chunk.concat();
        let result = shop
            .import_card_keys(&operator, sku, &input, &options, args.bad_lines)
            .await;
        let part = match result {
            Ok(part) => part,
            Err(quanyi::Error::ImportRejected { malformed: bad }) => {
                bar.abandon();
                for m in &bad {
                    writeln!(report, "line {}: malformed ({})", m.line + offset, m.reason)?;
                }
                std::fs::write(&args.report, &report)?;
                return Err(format!(
                    "{} malformed line(s) in lines {}..{}; nothing more imported (see {})",
                    bad.len(),
                    offset + 1,
                    offset + chunk.len(),
                    args.report
                )
                .into());
            }
            Err(e) => return Err(e.into()),
        };
        imported += part.imported;
        duplicates += part.duplicates.len();
        malformed += part.malformed.len();
        for d in &part.duplicates {
            match d.of {
                DuplicateOf::Line(first) => {
                    writeln!(
                        report,
                        "line {}: duplicate of line {}",
                        d.line + offset,
                        first + offset
                    )?;
                }
                DuplicateOf::Stored => {
                    writeln!(
                        report,
                        "line {}: duplicate of a key already in the vault",
                        d.line + offset
                    )?;
                }
            }
        }
        for m in &part.malformed {
            writeln!(report, "line {}: malformed ({})", m.line + offset, m.reason)?;
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish();
    std::fs::write(&args.report, &report)?;
    let stock = shop.stock().count(sku).await?;
    println!(
        "imported {imported}, duplicates {duplicates}, malformed {malformed} in {:.1} s; {} available for {sku}",
        started.elapsed().as_secs_f64(),
        stock.available
    );
    println!(
        "report: {} ({} line(s))",
        args.report,
        duplicates + malformed
    );
    Ok(())
}
