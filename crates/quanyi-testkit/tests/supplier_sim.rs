//! The supplier simulator: idempotency, faults, signed callbacks, statements and determinism.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use chrono::Duration;
use quanyi_core::{Currency, Money};
use quanyi_supplier::{
    Availability, CallbackStatus, CardPurchase, FailureOutcome, ProductCode, PurchaseOutcome,
    RawCallback, RequestId, RequestStatus, StatementStatus, Supplier, SupplierError, SupplierId,
    TopUpOutcome, TopUpRequest,
};
use quanyi_testkit::supplier_sim::{
    ALWAYS, Faults, SIGNATURE_HEADER, STALE_HEADER, SimCounts, SimSupplier, TopUpMode, default_now,
};

const CARD_COST: i64 = 2_500;
const TOP_UP_COST: i64 = 9_850;

fn card() -> ProductCode {
    ProductCode::new("CARD-30").unwrap()
}
fn instant() -> ProductCode {
    ProductCode::new("CM-100").unwrap()
}
fn slow() -> ProductCode {
    ProductCode::new("CU-100").unwrap()
}
fn rid(n: u32) -> RequestId {
    RequestId::new(format!("req-{n}")).unwrap()
}

fn sim(faults: Faults) -> SimSupplier {
    sim_seeded(faults, 42)
}

fn sim_seeded(faults: Faults, seed: u64) -> SimSupplier {
    SimSupplier::new(SupplierId::new("acme").unwrap(), seed)
        .with_card_product(card(), 10, Money::from_minor(CARD_COST, Currency::CNY))
        .with_top_up_product(
            instant(),
            Money::from_minor(TOP_UP_COST, Currency::CNY),
            TopUpMode::Immediate,
        )
        .with_top_up_product(
            slow(),
            Money::from_minor(TOP_UP_COST, Currency::CNY),
            TopUpMode::Async,
        )
        .with_faults(faults)
}

fn buy(n: u32, quantity: u32) -> CardPurchase {
    CardPurchase {
        request: rid(n),
        product: card(),
        quantity,
    }
}

fn top_up(n: u32, product: ProductCode) -> TopUpRequest {
    TopUpRequest {
        request: rid(n),
        product,
        account: "13800000000".into(),
        quantity: 1,
    }
}

/// A short name for an answer, so tables compare plain strings.
fn name<T>(result: &Result<T, SupplierError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(SupplierError::Rejected { .. }) => "rejected",
        Err(SupplierError::Unreachable { .. }) => "unreachable",
        Err(SupplierError::Timeout { .. }) => "timeout",
        Err(SupplierError::BadSignature) => "bad_signature",
        Err(SupplierError::MalformedCallback { .. }) => "malformed",
        Err(_) => "other",
    }
}

fn status_name(status: &RequestStatus) -> &'static str {
    match status {
        RequestStatus::NotFound => "not_found",
        RequestStatus::Pending => "pending",
        RequestStatus::Succeeded { .. } => "succeeded",
        RequestStatus::Failed { .. } => "failed",
    }
}

fn codes(outcome: &PurchaseOutcome) -> Vec<String> {
    outcome
        .cards
        .iter()
        .map(|c| c.code().expose().to_owned())
        .collect()
}

#[tokio::test]
async fn idempotent_repeats_execute_once() {
    let sim = sim(Faults::NONE);
    let first = sim.purchase_cards(&buy(1, 3)).await.unwrap();
    assert_eq!(
        codes(&first),
        ["SIM-acme-1", "SIM-acme-2", "SIM-acme-3"],
        "fresh, numbered codes"
    );
    assert_eq!(first.cost, Money::from_minor(3 * CARD_COST, Currency::CNY));
    for _ in 0..3 {
        assert_eq!(sim.purchase_cards(&buy(1, 3)).await.unwrap(), first);
    }
    let again = sim.purchase_cards(&buy(2, 1)).await.unwrap();
    assert_eq!(codes(&again), ["SIM-acme-4"]);

    let instant_first = sim.submit_top_up(&top_up(3, instant())).await.unwrap();
    assert!(matches!(instant_first, TopUpOutcome::Succeeded { .. }));
    assert_eq!(
        sim.submit_top_up(&top_up(3, instant())).await.unwrap(),
        instant_first
    );
    assert_eq!(
        sim.submit_top_up(&top_up(4, slow())).await.unwrap(),
        TopUpOutcome::Accepted
    );
    assert_eq!(
        sim.submit_top_up(&top_up(4, slow())).await.unwrap(),
        TopUpOutcome::Accepted
    );

    for (n, executed) in [(1, 1), (2, 1), (3, 1), (4, 1), (5, 0)] {
        assert_eq!(sim.executed(&rid(n)), executed, "req-{n}");
    }
    assert_eq!(
        sim.counts(),
        SimCounts {
            purchases_executed: 2,
            top_ups_executed: 2,
            calls_submitted: 9,
            queries: 0,
            stock_checks: 0,
            callbacks_emitted: 0,
        }
    );
    let stock = sim.stock(&card()).await.unwrap();
    assert_eq!(stock.available, Availability::Limited(6));
    assert_eq!(
        sim.stock(&instant()).await.unwrap().available,
        Availability::Unlimited
    );
    assert_eq!(sim.counts().stock_checks, 2);
}

#[tokio::test]
async fn concurrent_repeats_execute_once() {
    let sim = Arc::new(sim(Faults::NONE));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let sim = Arc::clone(&sim);
            tokio::spawn(async move { sim.purchase_cards(&buy(1, 2)).await.unwrap() })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap());
    }
    assert!(outcomes.iter().all(|o| *o == outcomes[0]));
    assert_eq!(sim.executed(&rid(1)), 1);
    assert_eq!(sim.counts().calls_submitted, 16);
    let shared: Arc<dyn Supplier> = sim;
    assert_eq!(shared.id().as_str(), "acme");
}

#[tokio::test]
async fn timeout_after_success_then_query_finds_the_work() {
    let faulty = Faults {
        timeout_after_success: ALWAYS,
        ..Faults::NONE
    };
    let sim = sim(faulty);
    let err = sim.purchase_cards(&buy(1, 2)).await.unwrap_err();
    assert_eq!(name::<()>(&Err(err.clone())), "timeout");
    assert_eq!(err.outcome(), FailureOutcome::Unknown);
    // A retry of the same id loses its answer too, but never buys again.
    assert!(sim.purchase_cards(&buy(1, 2)).await.is_err());
    assert_eq!(sim.executed(&rid(1)), 1);
    let RequestStatus::Succeeded { receipt, cards } = sim.query(&rid(1)).await.unwrap() else {
        panic!("the purchase was done")
    };
    assert!(receipt.starts_with("SIM-acme-R"), "{receipt}");
    assert_eq!(cards.len(), 2);
    assert_eq!(
        sim.stock(&card()).await.unwrap().available,
        Availability::Limited(8)
    );

    assert!(sim.submit_top_up(&top_up(2, slow())).await.is_err());
    assert_eq!(
        status_name(&sim.query(&rid(2)).await.unwrap()),
        "pending",
        "accepted before the answer was lost"
    );
    assert_eq!(sim.executed(&rid(2)), 1);
    assert_eq!(sim.counts().queries, 2);
}

/// Faults that do nothing: the request is unknown to the supplier afterwards.
#[tokio::test]
async fn failures_before_the_work_execute_nothing() {
    let check = async |faults: Faults, expected: &str| {
        let sim = sim(faults);
        let bought = sim.purchase_cards(&buy(1, 1)).await;
        let topped = sim.submit_top_up(&top_up(2, instant())).await;
        assert_eq!((name(&bought), name(&topped)), (expected, expected));
        for n in [1, 2] {
            assert_eq!(sim.executed(&rid(n)), 0, "{faults:?}");
            let status = sim.query(&rid(n)).await.unwrap();
            assert_eq!(status_name(&status), "not_found", "{faults:?}");
        }
        let counts = sim.counts();
        assert_eq!(
            (counts.purchases_executed, counts.top_ups_executed),
            (0, 0),
            "{faults:?}"
        );
        assert_eq!(
            sim.stock(&card()).await.unwrap().available,
            Availability::Limited(10)
        );
        assert!(bought.unwrap_err().outcome().may_fail_over());
    };
    check(
        Faults {
            definite_error: ALWAYS,
            ..Faults::NONE
        },
        "rejected",
    )
    .await;
    check(
        Faults {
            timeout_before_send: ALWAYS,
            ..Faults::NONE
        },
        "unreachable",
    )
    .await;
}

#[tokio::test]
async fn refused_purchases_and_outages() {
    let sim = sim(Faults::NONE);
    let mut unknown = buy(9, 1);
    unknown.product = ProductCode::new("NOPE").unwrap();
    let mut wrong_kind = buy(10, 1);
    wrong_kind.product = instant();
    for (request, expected) in [
        (buy(1, 11), "rejected"),
        (buy(2, 0), "rejected"),
        (unknown, "rejected"),
        (wrong_kind, "rejected"),
        (buy(3, 10), "ok"),
        (buy(4, 1), "rejected"),
    ] {
        let result = sim.purchase_cards(&request).await;
        assert_eq!(name(&result), expected, "{request:?}");
    }
    let Err(SupplierError::Rejected { reason }) = sim.purchase_cards(&buy(4, 1)).await else {
        panic!("out of stock")
    };
    assert_eq!(reason, "out of stock");

    sim.set_stock(&card(), 1);
    assert_eq!(name(&sim.purchase_cards(&buy(4, 1)).await), "ok");

    sim.set_down(true);
    assert_eq!(name(&sim.purchase_cards(&buy(5, 1)).await), "unreachable");
    assert_eq!(
        name(&sim.submit_top_up(&top_up(6, instant())).await),
        "unreachable"
    );
    assert_eq!(name(&sim.query(&rid(3)).await), "unreachable");
    assert_eq!(name(&sim.stock(&card()).await), "unreachable");
    assert_eq!(
        name(&sim.statement(default_now(), default_now()).await),
        "unreachable"
    );
    // Even a repeat of a done request: the supplier cannot be reached at all.
    assert_eq!(name(&sim.purchase_cards(&buy(3, 10)).await), "unreachable");
    assert_eq!(sim.executed(&rid(5)), 0);

    sim.set_down(false);
    assert_eq!(name(&sim.purchase_cards(&buy(3, 10)).await), "ok");
    assert_eq!(sim.counts().purchases_executed, 2);
}

#[tokio::test]
async fn async_top_up_finishes_with_a_signed_callback() {
    let sim = sim(Faults::NONE);
    assert_eq!(
        sim.submit_top_up(&top_up(1, slow())).await.unwrap(),
        TopUpOutcome::Accepted
    );
    assert_eq!(status_name(&sim.query(&rid(1)).await.unwrap()), "pending");

    let callbacks = sim.finish_pending();
    assert_eq!(callbacks.len(), 1);
    assert!(callbacks[0].header(SIGNATURE_HEADER).is_some());
    let event = sim.verify_callback(&callbacks[0]).unwrap();
    assert_eq!(event.request, rid(1));
    assert_eq!(
        event.amount,
        Some(Money::from_minor(TOP_UP_COST, Currency::CNY))
    );
    let CallbackStatus::Succeeded { receipt } = event.status else {
        panic!("succeeded")
    };
    let RequestStatus::Succeeded {
        receipt: queried,
        cards,
    } = sim.query(&rid(1)).await.unwrap()
    else {
        panic!("succeeded")
    };
    assert_eq!((receipt.as_str(), cards.len()), (queried.as_str(), 0));
    let body: serde_json::Value = serde_json::from_slice(&callbacks[0].body).unwrap();
    assert_eq!(body["status"], "succeeded");
    assert_eq!(body["currency"], "CNY");

    // Nothing left to finish; a repeat now reports the finished state.
    assert!(sim.finish_pending().is_empty());
    assert!(matches!(
        sim.submit_top_up(&top_up(1, slow())).await.unwrap(),
        TopUpOutcome::Succeeded { .. }
    ));
    assert_eq!(sim.counts().callbacks_emitted, 1);
    assert_eq!(sim.executed(&rid(1)), 1);
}

#[tokio::test]
async fn async_failure_finishes_failed() {
    let sim = sim(Faults {
        async_failure: ALWAYS,
        ..Faults::NONE
    });
    sim.submit_top_up(&top_up(1, slow())).await.unwrap();
    let callbacks = sim.finish_pending();
    let event = sim.verify_callback(&callbacks[0]).unwrap();
    assert!(matches!(event.status, CallbackStatus::Failed { .. }));
    assert_eq!(status_name(&sim.query(&rid(1)).await.unwrap()), "failed");
    assert_eq!(
        name(&sim.submit_top_up(&top_up(1, slow())).await),
        "rejected"
    );
    assert_eq!(sim.executed(&rid(1)), 1);
}

fn with_header(callback: &RawCallback, value: &str) -> RawCallback {
    let mut callback = callback.clone();
    callback.headers.retain(|(n, _)| n != SIGNATURE_HEADER);
    callback
        .headers
        .push((SIGNATURE_HEADER.to_uppercase(), value.to_owned()));
    callback
}

#[tokio::test]
async fn callbacks_that_do_not_verify() {
    let sim = sim(Faults::NONE);
    sim.submit_top_up(&top_up(1, slow())).await.unwrap();
    let good = sim.finish_pending().remove(0);
    let signature = good.header(SIGNATURE_HEADER).unwrap().to_owned();

    let mut tampered = good.clone();
    tampered.body = String::from_utf8(good.body.clone())
        .unwrap()
        .replace("succeeded", "failed")
        .into_bytes();
    let mut unsigned = good.clone();
    unsigned.headers.clear();
    let other_secret = SimSupplier::new(SupplierId::new("acme").unwrap(), 42)
        .with_secret(b"another secret".to_vec())
        .signed_callback(good.body.clone());
    let mut flipped = signature.clone().into_bytes();
    flipped[0] = if flipped[0] == b'0' { b'1' } else { b'0' };

    for (label, callback, expected) in [
        ("good", good.clone(), "ok"),
        (
            "header name in any case",
            with_header(&good, &signature),
            "ok",
        ),
        ("tampered body", tampered, "bad_signature"),
        ("unsigned", unsigned, "bad_signature"),
        ("other secret", other_secret, "bad_signature"),
        ("not hex", with_header(&good, "zz"), "bad_signature"),
        (
            "short",
            with_header(&good, &signature[..10]),
            "bad_signature",
        ),
        (
            "one digit changed",
            with_header(&good, std::str::from_utf8(&flipped).unwrap()),
            "bad_signature",
        ),
        (
            "not json",
            sim.signed_callback(b"{oops".to_vec()),
            "malformed",
        ),
        (
            "no request",
            sim.signed_callback(br#"{"status":"succeeded","receipt":"r"}"#.to_vec()),
            "malformed",
        ),
        (
            "unknown status",
            sim.signed_callback(br#"{"request":"r","status":"maybe"}"#.to_vec()),
            "malformed",
        ),
        (
            "no amount is fine",
            sim.signed_callback(br#"{"request":"r","status":"failed","reason":"x"}"#.to_vec()),
            "ok",
        ),
    ] {
        assert_eq!(name(&sim.verify_callback(&callback)), expected, "{label}");
    }
}

/// What `finish_pending` emits for one async top-up: `(status, stale)` per callback.
async fn emitted(faults: Faults) -> Vec<(String, bool)> {
    let sim = sim(faults);
    sim.submit_top_up(&top_up(1, slow())).await.unwrap();
    let callbacks = sim.finish_pending();
    assert_eq!(sim.counts().callbacks_emitted, callbacks.len() as u64);
    callbacks
        .iter()
        .map(|c| {
            let event = sim.verify_callback(c).unwrap();
            assert_eq!(event.request, rid(1));
            let status = match event.status {
                CallbackStatus::Succeeded { .. } => "succeeded",
                CallbackStatus::Failed { .. } => "failed",
            };
            (status.to_owned(), c.header(STALE_HEADER) == Some("true"))
        })
        .collect()
}

#[tokio::test]
async fn duplicate_and_out_of_order_callbacks() {
    let ok = || ("succeeded".to_owned(), false);
    let failed = || ("failed".to_owned(), false);
    let stale = || ("failed".to_owned(), true);
    let cases = [
        (Faults::NONE, vec![ok()]),
        (
            Faults {
                duplicate_callback: ALWAYS,
                ..Faults::NONE
            },
            vec![ok(), ok()],
        ),
        (
            Faults {
                out_of_order_callback: ALWAYS,
                ..Faults::NONE
            },
            vec![ok(), stale()],
        ),
        (
            Faults {
                duplicate_callback: ALWAYS,
                out_of_order_callback: ALWAYS,
                ..Faults::NONE
            },
            vec![ok(), ok(), stale()],
        ),
        (
            Faults {
                async_failure: ALWAYS,
                duplicate_callback: ALWAYS,
                out_of_order_callback: ALWAYS,
                ..Faults::NONE
            },
            vec![failed(), failed()],
        ),
    ];
    for (faults, expected) in cases {
        assert_eq!(emitted(faults).await, expected, "{faults:?}");
    }
}

#[tokio::test]
async fn statement_lists_executed_requests_in_the_window() {
    let sim = sim(Faults {
        async_failure: ALWAYS,
        ..Faults::NONE
    });
    let t0 = default_now();
    sim.purchase_cards(&buy(1, 2)).await.unwrap();
    sim.advance(Duration::minutes(10));
    sim.submit_top_up(&top_up(2, instant())).await.unwrap();
    sim.submit_top_up(&top_up(3, slow())).await.unwrap();
    // Refused and never-finished requests are not on the statement.
    sim.purchase_cards(&buy(4, 99)).await.unwrap_err();
    sim.submit_top_up(&top_up(5, slow())).await.unwrap();
    sim.set_now(t0 + Duration::hours(1));
    let all = sim.statement(t0, t0 + Duration::days(1)).await.unwrap();
    assert_eq!(all.len(), 2, "only finished requests: {all:?}");
    sim.finish_pending();
    let all = sim.statement(t0, t0 + Duration::days(1)).await.unwrap();
    let lines: Vec<_> = all
        .iter()
        .map(|l| {
            (
                l.request.clone(),
                l.status,
                l.at,
                l.amount.minor(),
                l.quantity,
            )
        })
        .collect();
    let ten = t0 + Duration::minutes(10);
    let hour = t0 + Duration::hours(1);
    use StatementStatus::{Failed, Succeeded};
    assert_eq!(
        lines,
        [
            (rid(1), Succeeded, t0, 2 * CARD_COST, 2),
            (rid(2), Succeeded, ten, TOP_UP_COST, 1),
            (rid(3), Failed, hour, TOP_UP_COST, 1),
            (rid(5), Failed, hour, TOP_UP_COST, 1),
        ]
    );
    for (from, to, expected) in [
        (t0, ten, vec![rid(1)]),
        (ten, hour, vec![rid(2)]),
        (hour, hour + Duration::seconds(1), vec![rid(3), rid(5)]),
        (t0 - Duration::days(1), t0, vec![]),
    ] {
        let got: Vec<_> = sim
            .statement(from, to)
            .await
            .unwrap()
            .into_iter()
            .map(|l| l.request)
            .collect();
        assert_eq!(got, expected, "[{from}, {to})");
    }
}

#[tokio::test]
async fn debug_shows_no_card_text() {
    let sim = sim(Faults::NONE);
    let outcome = sim.purchase_cards(&buy(1, 2)).await.unwrap();
    let status = sim.query(&rid(1)).await.unwrap();
    for text in [
        format!("{outcome:?}"),
        format!("{status:?}"),
        format!("{sim:?}"),
    ] {
        assert!(!text.contains("SIM-acme-1"), "{text}");
        assert!(!text.contains("SIM-acme-2"), "{text}");
    }
    assert!(format!("{outcome:?}").contains("<redacted>"));
    assert!(!format!("{sim:?}").contains("quanyi-sim-secret"));
}

/// Runs one fixed script of calls and names every answer.
async fn script(seed: u64) -> Vec<String> {
    let sim = sim_seeded(
        Faults {
            definite_error: 200,
            timeout_after_success: 200,
            timeout_before_send: 200,
            async_failure: 500,
            duplicate_callback: 500,
            out_of_order_callback: 500,
        },
        seed,
    )
    .with_card_product(card(), 1_000, Money::from_minor(CARD_COST, Currency::CNY));
    let mut answers = Vec::new();
    for n in 0..40 {
        let answer = match n % 3 {
            0 => name(&sim.purchase_cards(&buy(n, 1)).await),
            1 => name(&sim.submit_top_up(&top_up(n, instant())).await),
            _ => name(&sim.submit_top_up(&top_up(n, slow())).await),
        };
        answers.push(format!("{n}:{answer}"));
    }
    for callback in sim.finish_pending() {
        let event = sim.verify_callback(&callback).unwrap();
        answers.push(format!(
            "{}:{:?}:{}",
            event.request,
            event.status,
            callback.header(STALE_HEADER).is_some()
        ));
    }
    for n in 0..40 {
        assert!(sim.executed(&rid(n)) <= 1);
    }
    answers
}

#[tokio::test]
async fn same_seed_same_fault_decisions() {
    let first = script(7).await;
    assert_eq!(first, script(7).await);
    assert_ne!(first, script(8).await);
    for kind in ["ok", "rejected", "unreachable", "timeout"] {
        assert!(
            first.iter().any(|a| a.ends_with(&format!(":{kind}"))),
            "{kind} in {first:?}"
        );
    }
}

#[test]
#[should_panic(expected = "per mille")]
fn probabilities_above_always_are_a_test_mistake() {
    let _ = sim(Faults {
        definite_error: ALWAYS + 1,
        ..Faults::NONE
    });
}
