//! A supplier (渠道) to develop an adapter against: `quanyi_testkit`'s `SimSupplier` behind a
//! small signed HTTP/JSON API on 127.0.0.1, selling the direct top-up `MOBILE-50` and the card
//! key `GAME-CARD`. The protocol is described in `http_supplier.rs`, whose `HttpSupplier` is the
//! adapter that speaks it.
//!
//! ```sh
//! cargo run --example supplier_sim -- [--port 7070] [--secret S] [--id sim-http]
//!     [--callback-url http://127.0.0.1:PORT/path] [--async]
//! ```
//!
//! With `--async`, top-ups answer `accepted` and stay pending until `POST /admin/finish`; with a
//! callback URL as well, a tick every 200 ms finishes them and POSTs each signed callback
//! (header `x-sim-signature`) to the URL. Every request must carry `x-quanyi-signature` (see
//! `http_supplier.rs`); the simulator only listens on, and only calls back to, loopback.

use std::error::Error;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use quanyi::SupplierId;
use quanyi_testkit::supplier_sim::{DEFAULT_SECRET, TopUpMode};
use reqwest::Url;

mod http_supplier;
mod sim_server;

use sim_server::{CARD_PRODUCT, SimServer, TOP_UP_PRODUCT};

/// How often pending top-ups are finished in `--async` mode with a callback URL.
const TICK: Duration = Duration::from_millis(200);

/// The command line.
#[derive(Debug)]
struct Args {
    port: u16,
    secret: String,
    id: String,
    callback_url: Option<Url>,
    mode: TopUpMode,
}

fn usage() -> String {
    "usage: supplier_sim [--port 7070] [--secret S] [--id sim-http] \
     [--callback-url http://127.0.0.1:PORT/path] [--async]"
        .to_owned()
}

fn parse_args(
    mut args: impl Iterator<Item = String>,
) -> Result<Args, Box<dyn Error + Send + Sync>> {
    let mut parsed = Args {
        port: 7070,
        secret: String::from_utf8(DEFAULT_SECRET.to_vec())?,
        id: "sim-http".to_owned(),
        callback_url: None,
        mode: TopUpMode::Immediate,
    };
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| format!("{arg} needs a value\n{}", usage()))
        };
        match arg.as_str() {
            "--port" => parsed.port = value()?.parse()?,
            "--secret" => parsed.secret = value()?,
            "--id" => parsed.id = value()?,
            "--callback-url" => {
                let url = Url::parse(&value()?)?;
                let host = url.host_str().unwrap_or_default();
                let loopback = host == "localhost"
                    || host
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback());
                if url.scheme() != "http" || !loopback {
                    return Err(format!("the callback url must be http on loopback: {url}").into());
                }
                parsed.callback_url = Some(url);
            }
            "--async" => parsed.mode = TopUpMode::Async,
            "-h" | "--help" => return Err(usage().into()),
            other => return Err(format!("unknown argument {other:?}\n{}", usage()).into()),
        }
    }
    Ok(parsed)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error + Send + Sync>> {
    let args = parse_args(std::env::args().skip(1))?;
    let id = SupplierId::new(args.id.as_str())?;
    let server = Arc::new(SimServer::new(
        id.clone(),
        args.secret.as_bytes(),
        args.mode,
        args.callback_url.clone(),
    )?);
    let listener =
        tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, args.port))).await?;
    let addr = listener.local_addr()?;
    println!("supplier {id} listening on http://{addr}");
    println!(
        "products: {TOP_UP_PRODUCT} (direct top-up, {:?}), {CARD_PRODUCT} (card keys)",
        args.mode
    );
    match (&args.callback_url, args.mode) {
        (Some(url), TopUpMode::Async) => {
            println!("pending top-ups finish every {TICK:?}; callbacks go to {url}");
            sim_server::spawn_ticker(server.clone(), TICK);
        }
        (Some(url), TopUpMode::Immediate) => {
            println!("callbacks go to {url} after POST /admin/finish (top-ups finish at once)");
        }
        (None, TopUpMode::Async) => {
            println!(
                "pending top-ups finish at POST /admin/finish; no callback url, so query them"
            );
        }
        (None, TopUpMode::Immediate) => {}
    }
    println!("requests must carry x-quanyi-signature; ctrl-c stops");
    axum::serve(listener, sim_server::router(server)).await?;
    Ok(())
}
