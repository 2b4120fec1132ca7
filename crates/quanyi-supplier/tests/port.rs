//! The port through a fake supplier: object safety, idempotency by request id, redaction.
// Test code: the fake's helpers sit outside #[test] functions, where clippy.toml's allowance ends.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use parking_lot::Mutex;
use quanyi_core::{Currency, Money, OrderId};
use quanyi_supplier::{
    Availability, CallbackEvent, CallbackStatus, CancelOutcome, CardPurchase, FailureOutcome,
    ProductCode, PurchaseOutcome, RawCallback, RequestId, RequestStatus, Result, StatementRecord,
    StatementStatus, Supplier, SupplierBalance, SupplierCancel, SupplierError, SupplierId,
    SupplierStock, TopUpOutcome, TopUpRequest,
};
use quanyi_vault::{CardCode, CardKey, CardSecret};

const CODE: &str = "PLAINTEXT-CODE-0001";
const SECRET: &str = "TOPSECRET-PASS-0001";

#[derive(Debug)]
struct FakeSupplier {
    id: SupplierId,
    done: Mutex<HashMap<RequestId, RequestStatus>>,
    bought: Mutex<u32>,
}

impl FakeSupplier {
    fn new() -> Self {
        FakeSupplier {
            id: SupplierId::new("fake").unwrap(),
            done: Mutex::new(HashMap::new()),
            bought: Mutex::new(0),
        }
    }

    fn price() -> Money {
        Money::from_minor(1_000, Currency::CNY)
    }
}

#[async_trait]
impl Supplier for FakeSupplier {
    fn id(&self) -> &SupplierId {
        &self.id
    }

    async fn stock(&self, product: &ProductCode) -> Result<SupplierStock> {
        if product.as_str() == "OFF" {
            return Err(SupplierError::rejected("product off the shelf"));
        }
        Ok(SupplierStock {
            available: Availability::Limited(100),
            cost: Self::price(),
        })
    }

    async fn purchase_cards(&self, request: &CardPurchase) -> Result<PurchaseOutcome> {
        let mut done = self.done.lock();
        if let Some(RequestStatus::Succeeded { cards, .. }) = done.get(&request.request) {
            return Ok(PurchaseOutcome {
                cards: cards.clone(),
                cost: Self::price()
                    .checked_mul(i64::from(request.quantity))
                    .unwrap(),
            });
        }
        let cards: Vec<CardKey> = (0..request.quantity)
            .map(|_| {
                CardKey::new(
                    CardCode::new(CODE).unwrap(),
                    Some(CardSecret::new(SECRET).unwrap()),
                )
            })
            .collect();
        *self.bought.lock() += request.quantity;
        done.insert(
            request.request.clone(),
            RequestStatus::Succeeded {
                receipt: "R-1".into(),
                cards: cards.clone(),
            },
        );
        Ok(PurchaseOutcome {
            cards,
            cost: Self::price()
                .checked_mul(i64::from(request.quantity))
                .unwrap(),
        })
    }

    async fn submit_top_up(&self, request: &TopUpRequest) -> Result<TopUpOutcome> {
        self.done
            .lock()
            .entry(request.request.clone())
            .or_insert(RequestStatus::Pending);
        Ok(TopUpOutcome::Accepted)
    }

    async fn query(&self, request: &RequestId) -> Result<RequestStatus> {
        Ok(self
            .done
            .lock()
            .get(request)
            .cloned()
            .unwrap_or(RequestStatus::NotFound))
    }

    fn verify_callback(&self, callback: &RawCallback) -> Result<CallbackEvent> {
        if callback.header("x-sign") != Some("ok") {
            return Err(SupplierError::BadSignature);
        }
        let text = std::str::from_utf8(&callback.body)
            .map_err(|_| SupplierError::malformed_callback("body is not utf-8"))?;
        Ok(CallbackEvent {
            request: RequestId::new(text)?,
            status: CallbackStatus::Succeeded {
                receipt: "R-2".into(),
            },
            amount: None,
        })
    }

    async fn statement(
        &self,
        _from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<StatementRecord>> {
        Ok(self
            .done
            .lock()
            .iter()
            .filter(|(_, s)| matches!(s, RequestStatus::Succeeded { .. }))
            .map(|(request, _)| StatementRecord {
                request: request.clone(),
                product: ProductCode::new("CARD").unwrap(),
                quantity: 1,
                amount: Self::price(),
                status: StatementStatus::Succeeded,
                at: to,
            })
            .collect())
    }
}

#[async_trait]
impl SupplierBalance for FakeSupplier {
    async fn balance(&self) -> Result<Money> {
        Ok(Money::from_minor(50_000, Currency::CNY))
    }
}

#[async_trait]
impl SupplierCancel for FakeSupplier {
    async fn cancel(&self, request: &RequestId) -> Result<CancelOutcome> {
        match self.done.lock().get(request) {
            Some(RequestStatus::Pending) => Ok(CancelOutcome::Cancelled),
            Some(_) => Ok(CancelOutcome::Refused {
                reason: "finished".into(),
            }),
            None => Err(SupplierError::UnknownRequest),
        }
    }
}

fn request(line: u16) -> RequestId {
    let order: OrderId = "ord_0190c8f0e0e07c4c8a1b2c3d4e5f6a7b".parse().unwrap();
    RequestId::for_line(order, line, &SupplierId::new("fake").unwrap())
}

#[tokio::test]
async fn purchase_is_idempotent_and_never_shows_card_text() {
    let fake = Arc::new(FakeSupplier::new());
    let supplier: Arc<dyn Supplier> = fake.clone();
    let purchase = CardPurchase {
        request: request(1),
        product: ProductCode::new("CARD").unwrap(),
        quantity: 2,
    };
    let first = supplier.purchase_cards(&purchase).await.unwrap();
    let again = supplier.purchase_cards(&purchase).await.unwrap();
    assert_eq!(first, again);
    assert_eq!(*fake.bought.lock(), 2, "the retry bought nothing");
    assert_eq!(first.cards[0].code().expose(), CODE);

    let status = supplier.query(&purchase.request).await.unwrap();
    assert!(matches!(&status, RequestStatus::Succeeded { cards, .. } if cards.len() == 2));
    for text in [
        format!("{first:?}"),
        format!("{first:#?}"),
        format!("{status:?}"),
        format!("{status:#?}"),
    ] {
        assert!(!text.contains(CODE), "{text}");
        assert!(!text.contains(SECRET), "{text}");
        assert!(!text.contains("PLAINTEXT"), "{text}");
        assert!(text.contains("redacted"), "{text}");
    }
}

#[tokio::test]
async fn top_ups_finish_by_query_and_callback() {
    let supplier: Arc<dyn Supplier> = Arc::new(FakeSupplier::new());
    assert_eq!(
        supplier.query(&request(2)).await.unwrap(),
        RequestStatus::NotFound
    );
    let top_up = TopUpRequest {
        request: request(2),
        product: ProductCode::new("CM-100").unwrap(),
        account: "13800138000".into(),
        quantity: 1,
    };
    assert_eq!(
        supplier.submit_top_up(&top_up).await.unwrap(),
        TopUpOutcome::Accepted
    );
    assert_eq!(
        supplier.query(&request(2)).await.unwrap(),
        RequestStatus::Pending
    );

    let callback = RawCallback {
        headers: vec![("X-Sign".into(), "ok".into())],
        body: request(2).as_str().as_bytes().to_vec(),
    };
    let event = supplier.verify_callback(&callback).unwrap();
    assert_eq!(event.request, request(2));
    let debug = format!("{callback:?}");
    assert!(!debug.contains(request(2).as_str()), "{debug}");
    assert!(
        debug.contains("X-Sign") && debug.contains("body_len"),
        "{debug}"
    );

    let forged = RawCallback {
        headers: vec![],
        body: callback.body.clone(),
    };
    let err = supplier.verify_callback(&forged).unwrap_err();
    assert_eq!(err, SupplierError::BadSignature);
    assert_eq!(err.outcome(), FailureOutcome::Unknown);
}

#[tokio::test]
async fn errors_and_optional_abilities() {
    let fake = Arc::new(FakeSupplier::new());
    let supplier: Arc<dyn Supplier> = fake.clone();
    let err = supplier
        .stock(&ProductCode::new("OFF").unwrap())
        .await
        .unwrap_err();
    assert!(err.outcome().may_fail_over());
    let stock = supplier
        .stock(&ProductCode::new("CARD").unwrap())
        .await
        .unwrap();
    assert_eq!(stock.available, Availability::Limited(100));

    let balance: Arc<dyn SupplierBalance> = fake.clone();
    assert_eq!(balance.balance().await.unwrap().minor(), 50_000);
    assert_eq!(balance.id().as_str(), "fake");

    let cancel: Arc<dyn SupplierCancel> = fake.clone();
    assert_eq!(
        cancel.cancel(&request(9)).await.unwrap_err(),
        SupplierError::UnknownRequest
    );
    let top_up = TopUpRequest {
        request: request(3),
        product: ProductCode::new("CM-100").unwrap(),
        account: "13800138000".into(),
        quantity: 1,
    };
    fake.submit_top_up(&top_up).await.unwrap();
    assert_eq!(
        cancel.cancel(&request(3)).await.unwrap(),
        CancelOutcome::Cancelled
    );

    let t = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    fake.purchase_cards(&CardPurchase {
        request: request(4),
        product: ProductCode::new("CARD").unwrap(),
        quantity: 1,
    })
    .await
    .unwrap();
    let statement = supplier.statement(t, t).await.unwrap();
    assert_eq!(statement.len(), 1);
    assert_eq!(statement[0].request, request(4));
}
