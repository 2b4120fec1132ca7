//! The HTTP face of `quanyi_testkit::supplier_sim::SimSupplier`: an axum router serving the
//! protocol described in `http_supplier.rs`, shared by the `supplier_sim` binary and the
//! `top_up_over_http` proof (`mod sim_server;`, next to `mod http_supplier;`).
//!
//! Every route checks `x-quanyi-signature` first (401 when missing or wrong), then calls the
//! simulator. The simulator's errors map to HTTP as: rejected → 422, unreachable → 503,
//! timeout → 504, anything else → 502. `POST /admin/finish` finishes the pending asynchronous
//! top-ups and POSTs their signed callbacks (the simulator's own body and headers) to the
//! callback URL; [`spawn_ticker`] does the same periodically.
#![allow(dead_code, unreachable_pub)]

use std::error::Error;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use quanyi::crates::supplier::{
    CardPurchase, ProductCode, RawCallback, RequestId, RequestStatus, Supplier, SupplierError,
    SupplierId, TopUpOutcome, TopUpRequest,
};
use quanyi::{Currency, Money};
use quanyi_testkit::supplier_sim::{SimSupplier, TopUpMode};
use reqwest::Url;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::http_supplier::{
    CardsBody, CardsReply, ErrorReply, REQUEST_SIGNATURE_HEADER, StatementQuery, StatusReply,
    TopUpBody, TopUpReply, WireCard, kind, sign_request, verify_request,
};

/// The direct top-up product every simulator sells: 50 yuan of mobile credit at 48.00 CNY.
pub const TOP_UP_PRODUCT: &str = "MOBILE-50";
/// Its cost per unit, in fen.
pub const TOP_UP_COST_FEN: i64 = 4_800;
/// The card-key product every simulator sells: 100 in stock at 8.00 CNY each.
pub const CARD_PRODUCT: &str = "GAME-CARD";
/// Its cost per card, in fen.
pub const CARD_COST_FEN: i64 = 800;
/// How many cards a simulator starts with.
pub const CARD_STOCK: u64 = 100;
/// The largest request body read.
const MAX_BODY: usize = 64 * 1024;

/// What happened to one callback the simulator sent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallbackDelivery {
    /// The HTTP status the callback URL answered, when it answered.
    pub status: Option<u16>,
    /// Why it was not delivered, when it was not.
    pub error: Option<String>,
}

/// The answer to `POST /admin/finish`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FinishReport {
    /// One entry per callback, in the order they were sent. Empty when nothing was pending.
    pub callbacks: Vec<CallbackDelivery>,
}

/// A simulator behind HTTP. Share it as `Arc<SimServer>`.
pub struct SimServer {
    sim: SimSupplier,
    secret: Zeroizing<Vec<u8>>,
    callback_url: Option<Url>,
    client: reqwest::Client,
}

impl std::fmt::Debug for SimServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimServer")
            .field("sim", &self.sim)
            .field("callback_url", &self.callback_url.as_ref().map(Url::as_str))
            .finish_non_exhaustive()
    }
}

impl SimServer {
    /// A simulator named `id` selling [`TOP_UP_PRODUCT`] (finishing as `mode` says) and
    /// [`CARD_PRODUCT`], checking requests and signing callbacks with `secret`, and sending
    /// callbacks to `callback_url` when there is one.
    ///
    /// # Errors
    /// When the product codes are invalid or the HTTP client cannot be built.
    pub fn new(
        id: SupplierId,
        secret: &[u8],
        mode: TopUpMode,
        callback_url: Option<Url>,
    ) -> Result<Self, Box<dyn Error + Send + Sync>> {
        let sim = SimSupplier::new(id, rand::random())
            .with_secret(secret.to_vec())
            .with_top_up_product(
                ProductCode::new(TOP_UP_PRODUCT)?,
                Money::from_minor(TOP_UP_COST_FEN, Currency::CNY),
                mode,
            )
            .with_card_product(
                ProductCode::new(CARD_PRODUCT)?,
                CARD_STOCK,
                Money::from_minor(CARD_COST_FEN, Currency::CNY),
            );
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()?;
        Ok(SimServer {
            sim,
            secret: Zeroizing::new(secret.to_vec()),
            callback_url,
            client,
        })
    }

    /// The simulator itself, for its counters.
    pub fn sim(&self) -> &SimSupplier {
        &self.sim
    }

    /// Stamps what follows with the wall clock (the simulator keeps a clock of its own).
    fn touch_clock(&self) {
        self.sim.set_now(quanyi::chrono::Utc::now());
    }

    /// Finishes every pending asynchronous top-up and sends its callbacks, one after another.
    pub async fn finish_pending(&self) -> FinishReport {
        self.touch_clock();
        let mut callbacks = Vec::new();
        for callback in self.sim.finish_pending() {
            callbacks.push(self.deliver(&callback).await);
        }
        FinishReport { callbacks }
    }

    /// POSTs one callback, body and headers exactly as the simulator made them. A real supplier
    /// retries failed callbacks for a while; the shop does not depend on it, because its
    /// delivery job also queries pending requests.
    async fn deliver(&self, callback: &RawCallback) -> CallbackDelivery {
        let Some(url) = &self.callback_url else {
            return CallbackDelivery {
                status: None,
                error: Some("no callback url".into()),
            };
        };
        let mut request = self.client.post(url.clone());
        for (name, value) in &callback.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        match request.body(callback.body.clone()).send().await {
            Ok(response) => CallbackDelivery {
                status: Some(response.status().as_u16()),
                error: None,
            },
            Err(e) => CallbackDelivery {
                status: None,
                error: Some(e.without_url().to_string()),
            },
        }
    }
}

/// Finishes pending top-ups every `every` until the process ends (the `--async` mode of the
/// `supplier_sim` binary).
pub fn spawn_ticker(server: Arc<SimServer>, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let report = server.finish_pending().await;
            for delivery in &report.callbacks {
                match (delivery.status, &delivery.error) {
                    (Some(status), _) => println!("callback sent, answered {status}"),
                    (None, Some(error)) => println!("callback not delivered: {error}"),
                    (None, None) => {}
                }
            }
        }
    })
}

/// The routes of the protocol, every one behind the signature check.
pub fn router(server: Arc<SimServer>) -> Router {
    Router::new()
        .route("/top-ups", post(top_up))
        .route("/cards", post(cards))
        .route("/requests/{id}", get(request_status))
        .route("/stock/{product}", get(stock))
        .route("/statement", get(statement))
        .route("/admin/finish", post(finish))
        .route_layer(middleware::from_fn_with_state(server.clone(), authenticate))
        .with_state(server)
}

/// Calls `POST /admin/finish` on a simulator at `base`, signed with `secret`.
///
/// # Errors
/// When the call fails or the answer is not a [`FinishReport`].
pub async fn finish_over_http(
    base: &str,
    secret: &[u8],
) -> Result<FinishReport, Box<dyn Error + Send + Sync>> {
    let url = Url::parse(base)?.join("/admin/finish")?;
    let signature = sign_request(secret, "POST", url.path(), b"").ok_or("cannot sign")?;
    let response = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()?
        .post(url)
        .header(REQUEST_SIGNATURE_HEADER, signature)
        .send()
        .await?
        .error_for_status()?;
    Ok(response.json().await?)
}

fn error(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = ErrorReply {
        kind: kind.to_owned(),
        message: message.to_owned(),
    };
    (status, axum::Json(body)).into_response()
}

fn sim_error(e: &SupplierError) -> Response {
    let (status, kind) = match e {
        SupplierError::Rejected { .. } => (StatusCode::UNPROCESSABLE_ENTITY, kind::REJECTED),
        SupplierError::Unreachable { .. } => (StatusCode::SERVICE_UNAVAILABLE, kind::UNREACHABLE),
        SupplierError::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, kind::TIMEOUT),
        _ => (StatusCode::BAD_GATEWAY, kind::PROTOCOL),
    };
    error(status, kind, &e.to_string())
}

fn bad_request(message: &str) -> Response {
    error(StatusCode::BAD_REQUEST, kind::BAD_REQUEST, message)
}

fn json<T: Serialize>(value: T) -> Response {
    axum::Json(value).into_response()
}

/// Reads the whole body, checks the signature over method, target and body, and passes the
/// request on with its body restored.
async fn authenticate(
    State(server): State<Arc<SimServer>>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
        return bad_request("unreadable or oversized body");
    };
    let target = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path(), |p| p.as_str());
    let signature = parts
        .headers
        .get(REQUEST_SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok());
    if !verify_request(
        &server.secret,
        parts.method.as_str(),
        target,
        &bytes,
        signature,
    ) {
        return error(
            StatusCode::UNAUTHORIZED,
            kind::UNAUTHORIZED,
            "missing or wrong x-quanyi-signature",
        );
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

async fn top_up(State(server): State<Arc<SimServer>>, body: Bytes) -> Response {
    let Ok(body) = serde_json::from_slice::<TopUpBody>(&body) else {
        return bad_request("expected {request, product, account, quantity}");
    };
    server.touch_clock();
    let request = TopUpRequest {
        request: body.request,
        product: body.product,
        account: body.account,
        quantity: body.quantity,
    };
    match server.sim.submit_top_up(&request).await {
        Ok(TopUpOutcome::Accepted) => json(TopUpReply::Accepted),
        Ok(TopUpOutcome::Succeeded { receipt }) => json(TopUpReply::Succeeded { receipt }),
        Err(e) => sim_error(&e),
    }
}

async fn cards(State(server): State<Arc<SimServer>>, body: Bytes) -> Response {
    let Ok(body) = serde_json::from_slice::<CardsBody>(&body) else {
        return bad_request("expected {request, product, quantity}");
    };
    server.touch_clock();
    let purchase = CardPurchase {
        request: body.request,
        product: body.product,
        quantity: body.quantity,
    };
    match server.sim.purchase_cards(&purchase).await {
        Ok(outcome) => json(CardsReply {
            cards: outcome.cards.iter().map(WireCard::of).collect(),
            cost: outcome.cost,
        }),
        Err(e) => sim_error(&e),
    }
}

async fn request_status(State(server): State<Arc<SimServer>>, Path(id): Path<String>) -> Response {
    let Ok(id) = RequestId::new(id) else {
        return bad_request("not a request id");
    };
    match server.sim.query(&id).await {
        Ok(RequestStatus::NotFound) => json(StatusReply::NotFound),
        Ok(RequestStatus::Pending) => json(StatusReply::Pending),
        Ok(RequestStatus::Succeeded { receipt, cards }) => json(StatusReply::Succeeded {
            receipt,
            cards: cards.iter().map(WireCard::of).collect(),
        }),
        Ok(RequestStatus::Failed { reason }) => json(StatusReply::Failed { reason }),
        Err(e) => sim_error(&e),
    }
}

async fn stock(State(server): State<Arc<SimServer>>, Path(product): Path<String>) -> Response {
    let Ok(product) = ProductCode::new(product) else {
        return bad_request("not a product code");
    };
    match server.sim.stock(&product).await {
        Ok(stock) => json(stock),
        Err(e) => sim_error(&e),
    }
}

async fn statement(
    State(server): State<Arc<SimServer>>,
    query: Result<Query<StatementQuery>, QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return bad_request("expected ?from=RFC3339&to=RFC3339");
    };
    match server.sim.statement(query.from, query.to).await {
        Ok(lines) => json(lines),
        Err(e) => sim_error(&e),
    }
}

async fn finish(State(server): State<Arc<SimServer>>) -> Response {
    json(server.finish_pending().await)
}
