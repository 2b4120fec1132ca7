//! `HttpSupplier`: the [`Supplier`] port over HTTP and JSON, written the way a real channel
//! adapter (渠道对接) is written, against the small protocol the `supplier_sim` example serves.
//! It is a module shared by the examples (`mod http_supplier;`), not a binary of its own.
//!
//! The protocol:
//! - Every request from the shop carries `x-quanyi-signature`: lower-case hex
//!   HMAC-SHA256(secret, `METHOD` "\n" `PATH` "\n" `BODY`), where `PATH` is the request target as
//!   sent (path and query string, percent-encoded). The supplier checks it before anything else
//!   and answers 401 when it is missing or wrong.
//! - `POST /top-ups {request, product, account, quantity}` → `{"status": "accepted"}` or
//!   `{"status": "succeeded", "receipt": ...}`; `POST /cards {request, product, quantity}` →
//!   `{"cards": [...], "cost": ...}`; `GET /requests/{id}` → `{"status": "not_found" | "pending" |
//!   "succeeded" | "failed", ...}`; `GET /stock/{product}`; `GET /statement?from=..&to=..`.
//! - Errors are `{"kind", "message"}` with 422 for a refusal ("rejected"), 503 ("unreachable"),
//!   504 ("timeout"), 502 ("protocol"), 400 ("bad_request") and 401 ("unauthorized").
//! - Callbacks to the shop carry `x-sim-signature`: lower-case hex HMAC-SHA256(secret, body).
//!
//! How transport failures map onto the port's rule (only a definite failure may fail over):
//!
//! | what happened | error | outcome |
//! |---|---|---|
//! | connect failed (refused, no route, connect timeout): nothing was sent | `Unreachable` | definite |
//! | 422, or 401 (the signature is checked before any work) | `Rejected` | definite |
//! | no answer within the timeout after sending, or 504 | `Timeout` | unknown |
//! | connection broken after sending, other 5xx, other status, unreadable answer | `Protocol` | unknown |
#![allow(dead_code, unreachable_pub)]

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use quanyi::chrono::{DateTime, SecondsFormat, Utc};
use quanyi::crates::supplier::{
    CallbackEvent, CallbackStatus, CardPurchase, ProductCode, PurchaseOutcome, RawCallback,
    RequestId, RequestStatus, Result, StatementRecord, Supplier, SupplierError, SupplierId,
    SupplierStock, TopUpOutcome, TopUpRequest,
};
use quanyi::{CardCode, CardKey, CardSecret, Currency, Money};
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroizing;

/// The header carrying the signature of a request from the shop to the supplier.
pub const REQUEST_SIGNATURE_HEADER: &str = "x-quanyi-signature";

/// The header carrying the signature of a callback from the supplier to the shop (the same as
/// `quanyi_testkit::supplier_sim::SIGNATURE_HEADER`).
pub const CALLBACK_SIGNATURE_HEADER: &str = "x-sim-signature";

/// The error kinds of the protocol's error body.
pub mod kind {
    /// The supplier refused the request and will not act on it (422).
    pub const REJECTED: &str = "rejected";
    /// The supplier's own upstream could not be reached (503).
    pub const UNREACHABLE: &str = "unreachable";
    /// The supplier gave up waiting (504).
    pub const TIMEOUT: &str = "timeout";
    /// Anything else that went wrong inside the supplier (502).
    pub const PROTOCOL: &str = "protocol";
    /// The request could not be read (400).
    pub const BAD_REQUEST: &str = "bad_request";
    /// The signature is missing or wrong (401).
    pub const UNAUTHORIZED: &str = "unauthorized";
}

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &[u8]) -> Option<HmacSha256> {
    // HMAC takes keys of any length; the error case cannot happen, but is no reason to panic.
    <HmacSha256 as Mac>::new_from_slice(secret).ok()
}

fn request_mac(secret: &[u8], method: &str, target: &str, body: &[u8]) -> Option<HmacSha256> {
    let mut mac = mac(secret)?;
    mac.update(method.as_bytes());
    mac.update(b"\n");
    mac.update(target.as_bytes());
    mac.update(b"\n");
    mac.update(body);
    Some(mac)
}

/// The hex signature of a request: HMAC-SHA256(secret, method "\n" target "\n" body). `None`
/// only if the MAC cannot be keyed, which HMAC always can.
pub fn sign_request(secret: &[u8], method: &str, target: &str, body: &[u8]) -> Option<String> {
    let mac = request_mac(secret, method, target, body)?;
    Some(hex::encode(mac.finalize().into_bytes()))
}

/// True when `signature` (hex) is the request's signature; compared in constant time.
pub fn verify_request(
    secret: &[u8],
    method: &str,
    target: &str,
    body: &[u8],
    signature: Option<&str>,
) -> bool {
    let (Some(mac), Some(given)) = (
        request_mac(secret, method, target, body),
        signature.and_then(|s| hex::decode(s.trim()).ok()),
    ) else {
        return false;
    };
    mac.verify_slice(&given).is_ok()
}

/// The hex signature of a callback body: HMAC-SHA256(secret, body). `None` only if the MAC
/// cannot be keyed, which HMAC always can.
pub fn sign_body(secret: &[u8], body: &[u8]) -> Option<String> {
    let mut mac = mac(secret)?;
    mac.update(body);
    Some(hex::encode(mac.finalize().into_bytes()))
}

/// True when `signature` (hex) is the body's signature; compared in constant time.
pub fn verify_body(secret: &[u8], body: &[u8], signature: Option<&str>) -> bool {
    let (Some(mut mac), Some(given)) = (
        mac(secret),
        signature.and_then(|s| hex::decode(s.trim()).ok()),
    ) else {
        return false;
    };
    mac.update(body);
    // verify_slice compares in constant time.
    mac.verify_slice(&given).is_ok()
}

/// `POST /top-ups`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TopUpBody {
    /// Our idempotency key.
    pub request: RequestId,
    /// The supplier's product.
    pub product: ProductCode,
    /// The account to credit.
    pub account: String,
    /// How many units.
    pub quantity: u32,
}

/// The answer to `POST /top-ups`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum TopUpReply {
    /// Taken; it finishes by callback or query.
    Accepted,
    /// Done.
    Succeeded {
        /// The supplier's receipt.
        receipt: String,
    },
}

/// `POST /cards`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CardsBody {
    /// Our idempotency key.
    pub request: RequestId,
    /// The supplier's product.
    pub product: ProductCode,
    /// How many card keys.
    pub quantity: u32,
}

/// One card key on the wire. The text is wiped when dropped and never printed by Debug.
#[derive(Clone, Serialize, Deserialize)]
pub struct WireCard {
    /// The card code.
    pub code: Zeroizing<String>,
    /// The card secret (password), when the card has one.
    pub secret: Option<Zeroizing<String>>,
}

impl fmt::Debug for WireCard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WireCard(****)")
    }
}

impl WireCard {
    /// The wire form of a card key: the one place its text is exposed.
    pub fn of(card: &CardKey) -> Self {
        WireCard {
            code: Zeroizing::new(card.code.expose().to_owned()),
            secret: card
                .secret
                .as_ref()
                .map(|s| Zeroizing::new(s.expose().to_owned())),
        }
    }

    fn into_card(self) -> Result<CardKey> {
        let code = CardCode::new(self.code.as_str())
            .map_err(|_| SupplierError::protocol("unreadable card code"))?;
        let secret = match &self.secret {
            None => None,
            Some(s) => Some(
                CardSecret::new(s.as_str())
                    .map_err(|_| SupplierError::protocol("unreadable card secret"))?,
            ),
        };
        Ok(CardKey::new(code, secret))
    }
}

/// The answer to `POST /cards`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CardsReply {
    /// The card keys bought.
    pub cards: Vec<WireCard>,
    /// What the whole purchase cost.
    pub cost: Money,
}

/// The answer to `GET /requests/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum StatusReply {
    /// The supplier never received the request (said explicitly, with 200).
    NotFound,
    /// Still in progress.
    Pending,
    /// Done.
    Succeeded {
        /// The supplier's receipt.
        receipt: String,
        /// The card keys of a card purchase; empty for a top-up.
        #[serde(default)]
        cards: Vec<WireCard>,
    },
    /// Finished without doing the work.
    Failed {
        /// The supplier's reason.
        reason: String,
    },
}

/// The query of `GET /statement`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatementQuery {
    /// Start, inclusive (RFC 3339).
    pub from: DateTime<Utc>,
    /// End, exclusive (RFC 3339).
    pub to: DateTime<Utc>,
}

/// Every error answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorReply {
    /// One of [`kind`].
    pub kind: String,
    /// What went wrong, for a person.
    pub message: String,
}

/// A callback body: `{"request", "status", "receipt" | "reason", "amount_minor", "currency"}`.
#[derive(Debug, Deserialize)]
struct CallbackBody {
    request: String,
    status: String,
    receipt: Option<String>,
    reason: Option<String>,
    amount_minor: Option<i64>,
    currency: Option<String>,
}

fn currency(code: &str) -> Option<Currency> {
    [
        Currency::CNY,
        Currency::USD,
        Currency::EUR,
        Currency::HKD,
        Currency::JPY,
    ]
    .into_iter()
    .find(|c| c.code() == code)
}

/// Reads a callback body whose signature has been verified.
fn parse_callback(body: &[u8]) -> Result<CallbackEvent> {
    let body: CallbackBody = serde_json::from_slice(body)
        .map_err(|_| SupplierError::malformed_callback("not a callback body"))?;
    let request = RequestId::new(body.request)
        .map_err(|_| SupplierError::malformed_callback("bad request id"))?;
    let status = match (body.status.as_str(), body.receipt, body.reason) {
        ("succeeded", Some(receipt), _) => CallbackStatus::Succeeded { receipt },
        ("failed", _, Some(reason)) => CallbackStatus::Failed { reason },
        _ => return Err(SupplierError::malformed_callback("bad status")),
    };
    let amount = match (body.amount_minor, body.currency) {
        (None, _) => None,
        (Some(minor), Some(code)) => Some(Money::from_minor(
            minor,
            currency(&code).ok_or_else(|| SupplierError::malformed_callback("unknown currency"))?,
        )),
        (Some(_), None) => {
            return Err(SupplierError::malformed_callback("amount without currency"));
        }
    };
    Ok(CallbackEvent {
        request,
        status,
        amount,
    })
}

/// The error of a request that got no HTTP answer.
fn send_error(e: &reqwest::Error) -> SupplierError {
    if e.is_connect() {
        // The connection was never made (refused, no route, connect timeout): nothing was sent.
        SupplierError::unreachable("could not connect")
    } else if e.is_builder() {
        // The request could not even be built: nothing was sent.
        SupplierError::unreachable("the request could not be built")
    } else if e.is_timeout() {
        SupplierError::timeout("no answer in time after sending")
    } else {
        // Connected, then the exchange broke: the supplier may have the request.
        SupplierError::protocol("the connection broke after sending")
    }
}

/// The error of a request answered with a non-success status.
fn status_error(status: StatusCode, body: &[u8]) -> SupplierError {
    let message = serde_json::from_slice::<ErrorReply>(body)
        .map(|r| r.message)
        .unwrap_or_else(|_| status.to_string());
    match status {
        StatusCode::UNPROCESSABLE_ENTITY => SupplierError::rejected(&message),
        // The supplier checks the signature before it does anything: nothing was done.
        StatusCode::UNAUTHORIZED => SupplierError::rejected("the supplier refused our signature"),
        StatusCode::GATEWAY_TIMEOUT => SupplierError::timeout(&message),
        // Any other answer (503 included) came after the request was sent: unknown.
        _ => SupplierError::protocol(&format!("http {}: {message}", status.as_u16())),
    }
}

/// A supplier reached over HTTP. See the [module docs](self) for the protocol and error mapping.
pub struct HttpSupplier {
    id: SupplierId,
    base: Url,
    secret: Zeroizing<Vec<u8>>,
    timeout: Duration,
    client: reqwest::Client,
}

impl fmt::Debug for HttpSupplier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secret.
        f.debug_struct("HttpSupplier")
            .field("id", &self.id)
            .field("base", &self.base.as_str())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl HttpSupplier {
    /// A supplier at `base` (`http://127.0.0.1:7070`), signing with `secret`, giving each request
    /// `timeout` to connect and `timeout` to answer.
    ///
    /// # Errors
    /// A base URL that is not `http://` or `https://` with a host, or an HTTP client that cannot
    /// be built.
    pub fn new(
        id: SupplierId,
        base: &str,
        secret: impl Into<Vec<u8>>,
        timeout: Duration,
    ) -> std::result::Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let base = Url::parse(base)?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(format!("not an http base url: {base}").into());
        }
        let client = reqwest::Client::builder()
            // The supplier is named by address; a proxy from the environment must not step in.
            .no_proxy()
            .connect_timeout(timeout)
            .build()?;
        Ok(HttpSupplier {
            id,
            base,
            secret: Zeroizing::new(secret.into()),
            timeout,
            client,
        })
    }

    /// `base` + the percent-encoded `segments`, with `query` pairs.
    fn url(&self, segments: &[&str], query: &[(&str, String)]) -> Result<Url> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|_| SupplierError::unreachable("the base url cannot take a path"))?
            .pop_if_empty()
            .extend(segments);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        Ok(url)
    }

    /// Sends one signed request and reads its JSON answer, mapping every failure per the table
    /// in the [module docs](self).
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        body: Option<Vec<u8>>,
    ) -> Result<T> {
        let body = body.unwrap_or_default();
        let target = match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        };
        let signature = sign_request(&self.secret, method.as_str(), &target, &body)
            .ok_or_else(|| SupplierError::unreachable("the request could not be signed"))?;
        let response = self
            .client
            .request(method, url)
            .timeout(self.timeout)
            .header(REQUEST_SIGNATURE_HEADER, signature)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| send_error(&e))?;
        let status = response.status();
        // The status arrived, so the request was received: from here on nothing is definite
        // unless the supplier says so.
        let bytes = response.bytes().await.map_err(|e| {
            if e.is_timeout() {
                SupplierError::timeout("the answer did not finish in time")
            } else {
                SupplierError::protocol("the answer broke off")
            }
        })?;
        if !status.is_success() {
            return Err(status_error(status, &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|_| SupplierError::protocol("unreadable answer"))
    }

    async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        let body = serde_json::to_vec(body)
            .map_err(|_| SupplierError::unreachable("the request body could not be encoded"))?;
        self.call(Method::POST, self.url(&[path], &[])?, Some(body))
            .await
    }
}

#[async_trait]
impl Supplier for HttpSupplier {
    fn id(&self) -> &SupplierId {
        &self.id
    }

    async fn stock(&self, product: &ProductCode) -> Result<SupplierStock> {
        let url = self.url(&["stock", product.as_str()], &[])?;
        self.call(Method::GET, url, None).await
    }

    async fn purchase_cards(&self, request: &CardPurchase) -> Result<PurchaseOutcome> {
        let body = CardsBody {
            request: request.request.clone(),
            product: request.product.clone(),
            quantity: request.quantity,
        };
        let reply: CardsReply = self.post("cards", &body).await?;
        let cards = reply
            .cards
            .into_iter()
            .map(WireCard::into_card)
            .collect::<Result<Vec<_>>>()?;
        if u32::try_from(cards.len()).ok() != Some(request.quantity) {
            // Unknown, not definite: the purchase was made; a query fetches the cards again.
            return Err(SupplierError::protocol(
                "wrong number of cards in the answer",
            ));
        }
        Ok(PurchaseOutcome {
            cards,
            cost: reply.cost,
        })
    }

    async fn submit_top_up(&self, request: &TopUpRequest) -> Result<TopUpOutcome> {
        let body = TopUpBody {
            request: request.request.clone(),
            product: request.product.clone(),
            account: request.account.clone(),
            quantity: request.quantity,
        };
        Ok(match self.post("top-ups", &body).await? {
            TopUpReply::Accepted => TopUpOutcome::Accepted,
            TopUpReply::Succeeded { receipt } => TopUpOutcome::Succeeded { receipt },
        })
    }

    async fn query(&self, request: &RequestId) -> Result<RequestStatus> {
        let url = self.url(&["requests", request.as_str()], &[])?;
        Ok(match self.call(Method::GET, url, None).await? {
            StatusReply::NotFound => RequestStatus::NotFound,
            StatusReply::Pending => RequestStatus::Pending,
            StatusReply::Succeeded { receipt, cards } => RequestStatus::Succeeded {
                receipt,
                cards: cards
                    .into_iter()
                    .map(WireCard::into_card)
                    .collect::<Result<Vec<_>>>()?,
            },
            StatusReply::Failed { reason } => RequestStatus::Failed { reason },
        })
    }

    fn verify_callback(&self, callback: &RawCallback) -> Result<CallbackEvent> {
        if !verify_body(
            &self.secret,
            &callback.body,
            callback.header(CALLBACK_SIGNATURE_HEADER),
        ) {
            return Err(SupplierError::BadSignature);
        }
        parse_callback(&callback.body)
    }

    async fn statement(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<StatementRecord>> {
        let stamp = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::AutoSi, true);
        let url = self.url(&["statement"], &[("from", stamp(from)), ("to", stamp(to))])?;
        self.call(Method::GET, url, None).await
    }
}
