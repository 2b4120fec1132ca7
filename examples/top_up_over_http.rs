//! Direct top-ups (直充) through a supplier over real HTTP, end to end in one process: two
//! simulated suppliers (the `supplier_sim` router, one answering at once and one answering later
//! by signed callback) on 127.0.0.1, a shop on the in-memory store with an `HttpSupplier` for
//! each, and a small HTTP endpoint where the shop takes supplier callbacks.
//!
//! It shows: a route whose supplier cannot be reached (connection refused, nothing sent: a
//! definite failure) failing over to the next route; an immediate top-up delivered inside
//! `confirm_payment`; an asynchronous one left pending until the supplier's signed callback
//! reaches the shop's endpoint; a forged callback refused; a client with the wrong secret
//! refused; and each top-up done exactly once. Exits 0 when every step went as expected.
//!
//! Run it with `cargo run --example top_up_over_http`.

use std::error::Error;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use quanyi::crates::supplier::{ProductCode, RequestId, Supplier};
use quanyi::*;
use quanyi_testkit::supplier_sim::TopUpMode;
use reqwest::Url;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

mod http_supplier;
mod sim_server;

use http_supplier::{CALLBACK_SIGNATURE_HEADER, HttpSupplier, sign_body};
use sim_server::{SimServer, TOP_UP_COST_FEN, TOP_UP_PRODUCT};

/// The buyer's phone number, the account the top-up credits.
const PHONE: &str = "13800138000";
/// How long the shop gives a supplier to connect and to answer.
const SUPPLIER_TIMEOUT: Duration = Duration::from_secs(3);
/// How long to wait for the asynchronous supplier's callback before calling the run failed.
const CALLBACK_WAIT: Duration = Duration::from_secs(10);

type AnyResult<T> = Result<T, Box<dyn Error + Send + Sync>>;

fn ensure(ok: bool, what: &str) -> AnyResult<()> {
    if ok {
        Ok(())
    } else {
        Err(format!("unexpected: {what}").into())
    }
}

/// A callback the shop's endpoint applied.
#[derive(Debug)]
struct Seen {
    supplier: SupplierId,
    outcome: CallbackOutcome,
}

/// What the shop's callback endpoint needs.
#[derive(Debug, Clone)]
struct CallbackState {
    shop: Shop,
    seen: mpsc::UnboundedSender<Seen>,
}

/// `POST /callbacks/{supplier}`: hands the callback, exactly as received, to the shop.
async fn take_callback(
    State(state): State<CallbackState>,
    Path(supplier): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(supplier) = SupplierId::new(supplier) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let callback = RawCallback {
        headers: headers
            .iter()
            .filter_map(|(name, value)| {
                Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
            })
            .collect(),
        body: body.to_vec(),
    };
    match state.shop.supplier_callback(&supplier, &callback).await {
        Ok(outcome) => {
            // The receiver may be gone when the example is finishing; that is fine.
            let _ = state.seen.send(Seen { supplier, outcome });
            axum::Json(serde_json::json!({ "outcome": outcome_name(outcome) })).into_response()
        }
        Err(e) => {
            let status = match e.kind() {
                ErrorKind::Forbidden => StatusCode::UNAUTHORIZED,
                ErrorKind::NotFound => StatusCode::NOT_FOUND,
                ErrorKind::Invalid => StatusCode::BAD_REQUEST,
                ErrorKind::Conflict => StatusCode::CONFLICT,
                ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            (status, axum::Json(serde_json::json!({ "code": e.code() }))).into_response()
        }
    }
}

fn outcome_name(outcome: CallbackOutcome) -> &'static str {
    match outcome {
        CallbackOutcome::Applied => "applied",
        CallbackOutcome::AlreadySettled => "already settled",
    }
}

/// Serves `router` on `listener` until the process ends.
fn serve(listener: TcpListener, router: Router) {
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            eprintln!("a server stopped: {e}");
        }
    });
}

async fn loopback_listener() -> AnyResult<TcpListener> {
    Ok(TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await?)
}

/// Starts a simulator on a free loopback port: the listener is bound before the server task is
/// spawned, so the address is ready to take requests when this returns.
async fn start_sim(
    id: &SupplierId,
    secret: &[u8],
    mode: TopUpMode,
    callback_url: Option<Url>,
) -> AnyResult<(String, Arc<SimServer>)> {
    let listener = loopback_listener().await?;
    let base = format!("http://{}", listener.local_addr()?);
    let server = Arc::new(SimServer::new(id.clone(), secret, mode, callback_url)?);
    serve(listener, sim_server::router(server.clone()));
    Ok((base, server))
}

fn http_supplier(id: &SupplierId, base: &str, secret: &[u8]) -> AnyResult<Arc<HttpSupplier>> {
    Ok(Arc::new(HttpSupplier::new(
        id.clone(),
        base,
        secret.to_vec(),
        SUPPLIER_TIMEOUT,
    )?))
}

fn print_attempts(order: &Order) {
    for line in order.lines() {
        for attempt in &line.attempts {
            let detail = match &attempt.outcome {
                AttemptOutcome::Succeeded { receipt } => format!(" (receipt {receipt})"),
                AttemptOutcome::Definite { reason }
                | AttemptOutcome::Unknown { reason }
                | AttemptOutcome::Rejected { reason } => {
                    format!(" ({reason})")
                }
                _ => String::new(),
            };
            println!(
                "  line {} attempt at {}: {}{detail}",
                line.no,
                attempt.supplier,
                attempt.outcome.as_str()
            );
        }
    }
}

async fn buy_and_pay(shop: &Shop, sku: SkuId, buyer: &str) -> AnyResult<PaymentReceipt> {
    let buyer = MemberId::new(buyer)?;
    let order = shop
        .place_order(&buyer, &[CartLine::new(sku, 1).with_account(PHONE)])
        .await?;
    println!(
        "order {} for {PHONE}: {}, {}",
        order.id(),
        order.total(),
        order.status().as_str()
    );
    let receipt = shop
        .confirm_payment(PaymentNotification {
            provider: "demo-pay".into(),
            transaction_id: format!("txn-{}", order.id()),
            order: order.id(),
            amount: order.total(),
        })
        .await?;
    println!(
        "payment confirmed: order is {}",
        receipt.order.status().as_str()
    );
    Ok(receipt)
}

/// A simulator started on its own (`cargo run --example supplier_sim -- --port 7070 --secret S`)
/// to use for the immediate route instead of one started here.
struct External {
    url: String,
    secret: Vec<u8>,
    id: String,
}

/// `[--supplier URL --secret S [--id sim-http]]`.
fn external_supplier(mut args: impl Iterator<Item = String>) -> AnyResult<Option<External>> {
    let (mut url, mut secret, mut id) = (None, None, "sim-http".to_owned());
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--supplier" => url = Some(value()?),
            "--secret" => secret = Some(value()?),
            "--id" => id = value()?,
            other => {
                return Err(format!(
                    "unknown option {other}; usage: top_up_over_http [--supplier URL --secret S [--id ID]]"
                )
                .into());
            }
        }
    }
    match (url, secret) {
        (None, None) => Ok(None),
        (Some(url), Some(secret)) => {
            let loopback =
                url.starts_with("http://127.0.0.1:") || url.starts_with("http://localhost:");
            if !loopback {
                return Err("--supplier must be a loopback http address".into());
            }
            Ok(Some(External {
                url,
                secret: secret.into_bytes(),
                id,
            }))
        }
        _ => Err("--supplier and --secret go together".into()),
    }
}

#[tokio::main]
async fn main() -> AnyResult<()> {
    let started = chrono::Utc::now();
    // One secret per run, shared by the shop and its suppliers (each direction signs with it).
    let secret = hex::encode(rand::random::<[u8; 32]>()).into_bytes();
    let external = external_supplier(std::env::args().skip(1))?;
    let now_id = match &external {
        Some(e) => SupplierId::new(e.id.clone())?,
        None => SupplierId::new("sim-now")?,
    };
    let later_id = SupplierId::new("sim-later")?;
    let gone_id = SupplierId::new("sim-gone")?;

    println!("== quanyi: direct top-ups over HTTP ==");
    // The shop's callback endpoint is bound first, so the simulator can be told its address.
    let callback_listener = loopback_listener().await?;
    let callbacks_at = format!("http://{}/callbacks", callback_listener.local_addr()?);
    let later_callback = Url::parse(&format!("{callbacks_at}/{later_id}"))?;
    let (now_base, now_secret, now_server) = match &external {
        Some(e) => (e.url.clone(), e.secret.clone(), None),
        None => {
            let (base, server) = start_sim(&now_id, &secret, TopUpMode::Immediate, None).await?;
            (base, secret.clone(), Some(server))
        }
    };
    let (later_base, later_server) = start_sim(
        &later_id,
        &secret,
        TopUpMode::Async,
        Some(later_callback.clone()),
    )
    .await?;
    // An address with nothing listening: bind a port, then let it go.
    let gone_base = format!("http://{}", loopback_listener().await?.local_addr()?);
    println!(
        "supplier {now_id} at {now_base} (tops up at once{})",
        if external.is_some() {
            ", started separately"
        } else {
            ""
        }
    );
    println!("supplier {later_id} at {later_base} (accepts, finishes later, calls back)");
    println!("supplier {gone_id} at {gone_base} (nothing listening)");
    println!("shop takes callbacks at {callbacks_at}/{{supplier}}");

    let now = http_supplier(&now_id, &now_base, &now_secret)?;
    let later = http_supplier(&later_id, &later_base, &secret)?;
    let gone = http_supplier(&gone_id, &gone_base, &secret)?;
    let product = ProductCode::new(TOP_UP_PRODUCT)?;
    let stock = now.stock(&product).await?;
    println!(
        "{now_id} stock of {product}: {:?} at {} each",
        stock.available, stock.cost
    );
    let stranger = http_supplier(&now_id, &now_base, b"not the secret")?;
    match stranger.stock(&product).await {
        Err(e) => println!("a client with the wrong secret: {e} ({:?})", e.outcome()),
        Ok(_) => return Err("a client with the wrong secret was served".into()),
    }

    let shop = Shop::builder(
        Arc::new(MemoryStore::new()),
        Arc::new(StaticKeyProvider::new(RootKey::generate(
            &mut rand::thread_rng(),
        ))),
    )
    .supplier(now.clone())
    .supplier(later.clone())
    .supplier(gone)
    .build()?;
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    serve(
        callback_listener,
        Router::new()
            .route("/callbacks/{supplier}", post(take_callback))
            .with_state(CallbackState {
                shop: shop.clone(),
                seen: seen_tx,
            }),
    );

    let cost = Money::from_minor(TOP_UP_COST_FEN, Currency::CNY);
    let price = Money::parse("49.50", Currency::CNY)?;
    let instant = SkuId::generate(started, &mut rand::thread_rng());
    let deferred = SkuId::generate(started, &mut rand::thread_rng());
    shop.create_goods(
        &quanyi::Actor::new("mei", "catalog")?,
        GoodsDraft {
            title: "China Mobile credit, 50 yuan".into(),
            kind: GoodsKind::DirectTopUp {
                account: AccountRule::MainlandMobile,
            },
            skus: vec![
                SkuDraft::new(instant, "50 yuan, instant", price)
                    .with_stock(StockSource::Supplier)
                    .with_routes(vec![
                        SupplierRoute::new(
                            gone_id.clone(),
                            ProductCode::new(TOP_UP_PRODUCT)?,
                            cost,
                        ),
                        SupplierRoute::new(now_id.clone(), ProductCode::new(TOP_UP_PRODUCT)?, cost),
                    ]),
                SkuDraft::new(deferred, "50 yuan, within minutes", price)
                    .with_stock(StockSource::Supplier)
                    .with_routes(vec![SupplierRoute::new(
                        later_id.clone(),
                        ProductCode::new(TOP_UP_PRODUCT)?,
                        cost,
                    )]),
            ],
            categories: vec![],
        },
    )
    .await?;

    println!();
    println!("-- immediate: routes {gone_id}, then {now_id}");
    let receipt = buy_and_pay(&shop, instant, "buyer-1").await?;
    print_attempts(&receipt.order);
    ensure(
        receipt.order.status() == OrderStatus::Delivered,
        "the immediate top-up was not delivered within confirm_payment",
    )?;
    let first = receipt.order.id();

    println!();
    println!("-- asynchronous: route {later_id}");
    let receipt = buy_and_pay(&shop, deferred, "buyer-2").await?;
    print_attempts(&receipt.order);
    ensure(
        receipt.order.status() == OrderStatus::Fulfilling,
        "the asynchronous top-up was not left pending",
    )?;
    let second = receipt.order.id();
    let report = sim_server::finish_over_http(&later_base, &secret).await?;
    let answers: Vec<String> = report
        .callbacks
        .iter()
        .map(|d| match (d.status, &d.error) {
            (Some(status), _) => status.to_string(),
            (None, error) => error.clone().unwrap_or_default(),
        })
        .collect();
    println!(
        "{later_id} finished its pending top-ups: {} callback(s) sent to the shop, answered [{}]",
        report.callbacks.len(),
        answers.join(", ")
    );
    let seen = tokio::time::timeout(CALLBACK_WAIT, seen_rx.recv())
        .await
        .map_err(|_| "no callback reached the shop in time")?
        .ok_or("the callback endpoint stopped")?;
    println!(
        "shop applied a callback from {}: {}",
        seen.supplier,
        outcome_name(seen.outcome)
    );
    let order = shop.order(second).await?;
    println!("order {second} is {}", order.status().as_str());
    print_attempts(&order);
    ensure(
        order.status() == OrderStatus::Delivered,
        "the asynchronous top-up was not delivered by its callback",
    )?;

    println!();
    println!("-- checks");
    let forged_body = format!(
        r#"{{"request":"{}","status":"succeeded","receipt":"FORGED","amount_minor":{TOP_UP_COST_FEN},"currency":"CNY"}}"#,
        RequestId::for_line(second, 1, &later_id)
    );
    let forged_signature = sign_body(b"not the secret", forged_body.as_bytes())
        .ok_or("could not sign the forged callback")?;
    let forged = reqwest::Client::builder()
        .no_proxy()
        .timeout(SUPPLIER_TIMEOUT)
        .build()?
        .post(later_callback)
        .header(CALLBACK_SIGNATURE_HEADER, forged_signature)
        .body(forged_body)
        .send()
        .await?;
    println!(
        "a forged callback to the shop: answered {}",
        forged.status()
    );
    ensure(
        forged.status() == reqwest::StatusCode::UNAUTHORIZED,
        "a forged callback was not refused",
    )?;

    let statement = later.statement(started, chrono::Utc::now()).await?;
    for line in &statement {
        println!(
            "{later_id} statement: {} x{} {} {:?}",
            line.product, line.quantity, line.amount, line.status
        );
    }
    ensure(statement.len() == 1, "the statement does not hold one line")?;

    let first_request = RequestId::for_line(first, 1, &now_id);
    let once_now = match &now_server {
        Some(server) => server.sim().executed(&first_request),
        // A separately started simulator is asked over HTTP what it did.
        None => match now.query(&first_request).await? {
            quanyi::crates::supplier::RequestStatus::Succeeded { .. } => 1,
            _ => 0,
        },
    };
    let once_later = later_server
        .sim()
        .executed(&RequestId::for_line(second, 1, &later_id));
    println!("top-ups done: {now_id} {once_now}, {later_id} {once_later}");
    ensure(
        once_now == 1 && once_later == 1,
        "a top-up was not done exactly once",
    )?;
    if let Some(now_server) = &now_server {
        ensure(
            now_server.sim().counts().top_ups_executed
                + later_server.sim().counts().top_ups_executed
                == 2,
            "more top-ups than orders",
        )?;
    }
    println!("ok: both orders delivered over HTTP, each top-up done once");
    Ok(())
}
