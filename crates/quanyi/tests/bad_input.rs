//! Bad input gets a typed error with a stable code, and changes nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use quanyi::crates::storage::{OrderStore, PaymentStore};
use quanyi::*;

/// What the shop holds that a refused call must leave alone.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    stock: StockCount,
    orders: usize,
    reconcile: usize,
}

async fn snapshot(w: &World, sku: SkuId, buyer: &MemberId) -> Snapshot {
    Snapshot {
        stock: w.shop.stock().count(sku).await.unwrap(),
        orders: w
            .store
            .member_orders(w.shop.tenant(), buyer, 1000)
            .await
            .unwrap()
            .len(),
        reconcile: w
            .store
            .notices_to_reconcile(w.shop.tenant(), 1000)
            .await
            .unwrap()
            .len(),
    }
}

#[tokio::test]
async fn refused_orders_change_nothing() {
    let w = world();
    let sku = card_sku(
        &w.shop,
        "30.00",
        PurchaseLimits {
            per_order: Some(3),
            per_member: Some(4),
            release_on_refund: false,
        },
    )
    .await;
    stock_up(&w.shop, sku, &codes(10)).await;
    let off = card_sku(&w.shop, "30.00", PurchaseLimits::default()).await;
    stock_up(&w.shop, off, &codes(2)).await;
    w.shop
        .set_shelf(
            &quanyi::Actor::new("merchant", "catalog").unwrap(),
            off,
            Shelf::Off,
        )
        .await
        .unwrap();
    let usd = new_sku();
    w.shop
        .create_goods(
            &quanyi::Actor::new("merchant", "catalog").unwrap(),
            GoodsDraft {
                title: "Game credit".into(),
                kind: GoodsKind::CardKey,
                skus: vec![
                    SkuDraft::new(usd, "10 USD", Money::parse("10.00", Currency::USD).unwrap())
                        .with_stock(StockSource::VaultPool),
                ],
                categories: vec![],
            },
        )
        .await
        .unwrap();
    stock_up(&w.shop, usd, &codes(2)).await;
    let buyer = member("alice");
    // Hold 3 (the per-order maximum) so the member limit of 4 is one away.
    w.shop
        .place_order(&buyer, &[CartLine::new(sku, 3)])
        .await
        .unwrap();
    let before = snapshot(&w, sku, &buyer).await;

    let cases: Vec<(&str, Vec<CartLine>, &str)> = vec![
        (
            "zero quantity",
            vec![CartLine::new(sku, 0)],
            "invalid_quantity",
        ),
        (
            "negative quantity",
            vec![CartLine::new(sku, -2)],
            "invalid_quantity",
        ),
        (
            "huge quantity",
            vec![CartLine::new(sku, i64::MAX)],
            "invalid_quantity",
        ),
        (
            "unknown sku",
            vec![CartLine::new(new_sku(), 1)],
            "unknown_sku",
        ),
        ("off shelf", vec![CartLine::new(off, 1)], "off_shelf"),
        (
            "currency mismatch",
            vec![CartLine::new(sku, 1), CartLine::new(usd, 1)],
            "currency_mismatch",
        ),
        (
            "per-order limit",
            vec![CartLine::new(sku, 4)],
            "limit_exceeded",
        ),
        (
            "per-member limit",
            vec![CartLine::new(sku, 2)],
            "limit_exceeded",
        ),
        ("out of stock", vec![CartLine::new(usd, 3)], "out_of_stock"),
        ("empty cart", vec![], "empty_cart"),
        (
            "account on a card key",
            vec![CartLine::new(sku, 1).with_account("13800138000")],
            "unexpected_account",
        ),
    ];
    for (what, cart, code) in cases {
        let err = w.shop.place_order(&buyer, &cart).await.unwrap_err();
        assert_eq!(err.code(), code, "{what}: {err}");
        assert_eq!(
            snapshot(&w, sku, &buyer).await,
            before,
            "{what} changed something"
        );
    }
    assert_eq!(w.shop.stock().count(usd).await.unwrap().available, 2);
}

#[tokio::test]
async fn refused_payment_notices_change_no_order() {
    let w = world();
    let sku = card_sku(&w.shop, "30.00", PurchaseLimits::default()).await;
    stock_up(&w.shop, sku, &codes(3)).await;
    let buyer = member("bob");
    let order = w
        .shop
        .place_order(&buyer, &[CartLine::new(sku, 1)])
        .await
        .unwrap();
    let cases = [
        (
            "amount mismatch",
            Money::parse("29.99", Currency::CNY).unwrap(),
            "amount_mismatch",
        ),
        (
            "currency mismatch",
            Money::parse("30.00", Currency::USD).unwrap(),
            "currency_mismatch",
        ),
        (
            "negative amount",
            Money::parse("-30.00", Currency::CNY).unwrap(),
            "amount_mismatch",
        ),
    ];
    for (n, (what, amount, code)) in cases.into_iter().enumerate() {
        let mut notice = notice(&order, &format!("txn-bad-{n}"));
        notice.amount = amount;
        let err = w.shop.confirm_payment(notice.clone()).await.unwrap_err();
        assert_eq!(err.code(), code, "{what}");
        // Repeated: the same answer, nothing more recorded.
        assert_eq!(
            w.shop.confirm_payment(notice).await.unwrap_err().code(),
            code
        );
        let stored = w.shop.order(order.id()).await.unwrap();
        assert_eq!(stored, order, "{what} changed the order");
    }
    let kept = w
        .store
        .notices_to_reconcile(w.shop.tenant(), 10)
        .await
        .unwrap();
    assert_eq!(kept.len(), 3);
    // Unknown order and malformed references.
    let mut unknown = notice(&order, "txn-unknown");
    unknown.order = OrderId::generate(quanyi_testkit::fixtures::t0(), &mut rand::thread_rng());
    assert_eq!(
        w.shop.confirm_payment(unknown).await.unwrap_err().code(),
        "not_payable"
    );
    for (provider, txn) in [
        ("", "t"),
        ("pay", ""),
        ("pay", "has space"),
        ("pay\n", "t"),
        ("pay", &"x".repeat(129)),
    ] {
        let mut bad = notice(&order, txn);
        bad.provider = provider.into();
        assert_eq!(
            w.shop.confirm_payment(bad).await.unwrap_err().code(),
            "invalid_input"
        );
    }
    assert_eq!(
        w.store
            .notices_to_reconcile(w.shop.tenant(), 10)
            .await
            .unwrap()
            .len(),
        4
    );
    // The right notice still works afterwards.
    let receipt = w
        .shop
        .confirm_payment(notice(&order, "txn-good"))
        .await
        .unwrap();
    assert_eq!(receipt.order.status(), OrderStatus::Delivered);
}

#[tokio::test]
async fn malformed_imports_import_nothing_unless_asked() {
    let w = world();
    let sku = card_sku(&w.shop, "30.00", PurchaseLimits::default()).await;
    let text = b"\xEF\xBB\xBFGOOD-0001\r\n\r\n  GOOD-0002  \nBAD\x01LINE\nGOOD-0003\n%0A-literal\n";
    let err = w
        .shop
        .import_card_keys(
            &Actor::new("stock-keeper", "stock").unwrap(),
            sku,
            text,
            &ImportOptions::default(),
            BadLines::Reject,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "import_rejected");
    match &err {
        Error::ImportRejected { malformed } => {
            assert_eq!(
                malformed.iter().map(|m| m.line).collect::<Vec<_>>(),
                vec![4]
            );
        }
        other => panic!("unexpected {other}"),
    }
    assert_eq!(w.shop.stock().count(sku).await.unwrap().available, 0);
    let report = w
        .shop
        .import_card_keys(
            &Actor::new("stock-keeper", "stock").unwrap(),
            sku,
            text,
            &ImportOptions::default(),
            BadLines::Skip,
        )
        .await
        .unwrap();
    assert_eq!(report.imported, 4);
    assert_eq!(report.malformed.len(), 1);
    // Importing the same file again: every card is a duplicate of a stored one.
    let again = w
        .shop
        .import_card_keys(
            &Actor::new("stock-keeper", "stock").unwrap(),
            sku,
            text,
            &ImportOptions::default(),
            BadLines::Skip,
        )
        .await
        .unwrap();
    assert_eq!(again.imported, 0);
    assert_eq!(
        again
            .duplicates
            .iter()
            .map(|d| (d.line, d.of))
            .collect::<Vec<_>>(),
        vec![
            (1, DuplicateOf::Stored),
            (3, DuplicateOf::Stored),
            (5, DuplicateOf::Stored),
            (6, DuplicateOf::Stored)
        ]
    );
    // Unknown SKU, and a SKU not stocked from the vault.
    let err = w
        .shop
        .import_card_keys(
            &Actor::new("stock-keeper", "stock").unwrap(),
            new_sku(),
            text,
            &ImportOptions::default(),
            BadLines::Skip,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "unknown_sku");
    let unlimited = new_sku();
    w.shop
        .create_goods(
            &quanyi::Actor::new("merchant", "catalog").unwrap(),
            GoodsDraft {
                title: "Gold membership".into(),
                kind: GoodsKind::Membership {
                    plan: "gold".into(),
                    days: 30,
                },
                skus: vec![SkuDraft::new(
                    unlimited,
                    "30 days",
                    Money::parse("15.00", Currency::CNY).unwrap(),
                )],
                categories: vec![],
            },
        )
        .await
        .unwrap();
    let err = w
        .shop
        .import_card_keys(
            &Actor::new("stock-keeper", "stock").unwrap(),
            unlimited,
            text,
            &ImportOptions::default(),
            BadLines::Skip,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "not_vault_stocked");
}

#[tokio::test]
async fn top_up_accounts_are_validated_before_anything_else() {
    let w = world();
    let sku = new_sku();
    w.shop
        .create_goods(
            &quanyi::Actor::new("merchant", "catalog").unwrap(),
            GoodsDraft {
                title: "Mobile top-up".into(),
                kind: GoodsKind::DirectTopUp {
                    account: AccountRule::MainlandMobile,
                },
                skus: vec![
                    SkuDraft::new(
                        sku,
                        "50 yuan",
                        Money::parse("49.50", Currency::CNY).unwrap(),
                    )
                    .with_stock(StockSource::Supplier),
                ],
                categories: vec![],
            },
        )
        .await
        .unwrap();
    let buyer = member("carol");
    for (account, code) in [
        (None, "account_required"),
        (Some("12345"), "invalid_account"),
        (Some("23800138000"), "invalid_account"),
        (Some("1380013800a"), "invalid_account"),
    ] {
        let mut line = CartLine::new(sku, 1);
        line.account = account.map(str::to_owned);
        assert_eq!(
            w.shop
                .quote(&PlaceOrder::new(buyer.clone(), vec![line.clone()]))
                .await
                .unwrap_err()
                .code(),
            code,
            "{account:?}"
        );
        assert_eq!(
            w.shop
                .place_order(&buyer, &[line])
                .await
                .unwrap_err()
                .code(),
            code
        );
    }
    let good = CartLine::new(sku, 1).with_account("+86 138-0013-8000");
    let quote = w
        .shop
        .quote(&PlaceOrder::new(buyer.clone(), vec![good.clone()]))
        .await
        .unwrap();
    assert_eq!(quote.lines[0].check.account.as_deref(), Some("13800138000"));
    // Top-ups are quoted, but this shop has no supplier to fulfil them yet.
    assert_eq!(
        w.shop
            .place_order(&buyer, &[good])
            .await
            .unwrap_err()
            .code(),
        "not_fulfillable"
    );
    assert!(
        w.store
            .member_orders(w.shop.tenant(), &buyer, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Cart bounds are checked before any other work, in quote and placement alike: a cart over
/// the line limit or a quantity over the line maximum is refused without a single storage call,
/// and amounts that would overflow are a typed error.
#[tokio::test]
async fn cart_bounds_are_checked_before_anything_is_read() {
    use quanyi_testkit::hooked::HookedStore;
    let store = HookedStore::new(std::sync::Arc::new(MemoryStore::new()));
    let shop = Shop::builder(
        store.clone(),
        std::sync::Arc::new(StaticKeyProvider::new(RootKey::generate(
            &mut rand::thread_rng(),
        ))),
    )
    .build()
    .unwrap();
    let sku = card_sku(&shop, "30.00", PurchaseLimits::default()).await;
    let buyer = member("bulk");
    let calls = store.total_calls();
    let too_many: Vec<CartLine> = (0..=MAX_CART_LINES)
        .map(|_| CartLine::new(sku, 1))
        .collect();
    let huge: Vec<CartLine> = (0..100_000).map(|_| CartLine::new(sku, 1)).collect();
    let over = vec![CartLine::new(sku, i64::from(MAX_LINE_QUANTITY) + 1)];
    for (what, cart, code) in [
        ("101 lines", &too_many, "cart_too_large"),
        ("100,000 lines", &huge, "cart_too_large"),
        ("quantity over the maximum", &over, "invalid_quantity"),
    ] {
        let quoted = shop
            .quote(&PlaceOrder::new(buyer.clone(), cart.clone()))
            .await
            .unwrap_err();
        assert_eq!(quoted.code(), code, "{what}: {quoted}");
        let placed = shop.place_order(&buyer, cart).await.unwrap_err();
        assert_eq!(placed.code(), code, "{what}: {placed}");
        assert_eq!(store.total_calls(), calls, "{what}: the store was called");
    }
    // At the bounds the cart is read and priced; an amount past what money can hold is a typed
    // error, not an overflow.
    let at_bounds: Vec<CartLine> = (0..MAX_CART_LINES)
        .map(|_| CartLine::new(sku, i64::from(MAX_LINE_QUANTITY)))
        .collect();
    let quote = shop
        .quote(&PlaceOrder::new(buyer.clone(), at_bounds))
        .await
        .unwrap();
    assert_eq!(quote.lines.len(), MAX_CART_LINES);
    assert_eq!(
        quote.total,
        Money::parse("30.00", Currency::CNY)
            .unwrap()
            .checked_mul(i64::from(MAX_LINE_QUANTITY) * 100)
            .unwrap()
    );
    let dear = new_sku();
    shop.create_goods(
        &quanyi::Actor::new("merchant", "catalog").unwrap(),
        GoodsDraft {
            title: "Gold".into(),
            kind: GoodsKind::CardKey,
            skus: vec![
                SkuDraft::new(dear, "bar", Money::from_minor(i64::MAX / 4, Currency::CNY))
                    .with_stock(StockSource::VaultPool),
            ],
            categories: vec![],
        },
    )
    .await
    .unwrap();
    let err = shop
        .quote(&PlaceOrder::new(
            buyer.clone(),
            vec![CartLine::new(dear, 2), CartLine::new(dear, 3)],
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "amount_overflow", "{err}");
    let err = shop
        .place_order(&buyer, &[CartLine::new(dear, 5)])
        .await
        .unwrap_err();
    assert_eq!(err.code(), "amount_overflow", "{err}");
}

/// A host job kind or sweep named in a way the engine cannot run.
struct Named(&'static str, chrono::Duration);

#[async_trait::async_trait]
impl JobHandler for Named {
    fn kind(&self) -> &str {
        self.0
    }

    async fn run(&self, _: &Shop, _: &Job) -> std::result::Result<JobOutcome, JobError> {
        Ok(JobOutcome::Done)
    }
}

#[async_trait::async_trait]
impl Sweep for Named {
    fn name(&self) -> &str {
        self.0
    }

    fn period(&self) -> SweepPeriod {
        SweepPeriod::Every(self.1)
    }

    async fn run(
        &self,
        _: &Shop,
        _: chrono::DateTime<chrono::Utc>,
    ) -> std::result::Result<(), JobError> {
        Ok(())
    }
}

#[test]
fn job_kinds_and_sweeps_are_checked_when_the_shop_is_built() {
    let minute = chrono::Duration::minutes(1);
    let builder = || {
        let keys = StaticKeyProvider::new(RootKey::from_bytes([3; 32]));
        Shop::builder(
            std::sync::Arc::new(MemoryStore::new()),
            std::sync::Arc::new(keys),
        )
    };
    let handler = |name| std::sync::Arc::new(Named(name, minute));
    for bad in [
        builder().job_handler(handler(DELIVER_ORDER_JOB)),
        builder().job_handler(handler("sweep.mine")),
        builder().job_handler(handler("")),
        builder().job_handler(handler("has space")),
        builder()
            .job_handler(handler("dup"))
            .job_handler(handler("dup")),
        builder().sweep(handler(EXPIRE_UNPAID_SWEEP)),
        builder().sweep(std::sync::Arc::new(Named(
            "fast",
            chrono::Duration::milliseconds(10),
        ))),
        builder().expiry_sweep_every(chrono::Duration::zero()),
        builder().supplier_deadline(chrono::Duration::zero()),
        builder().supplier_deadline(chrono::Duration::hours(-1)),
        builder().time_zone("Asia/Nowhere"),
    ] {
        let err = bad.build().unwrap_err();
        assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
        assert_eq!(err.code(), "invalid_input");
    }
    // A sweep and a job kind may share a name: their kinds differ.
    builder()
        .job_handler(handler("dup"))
        .sweep(handler("dup"))
        .build()
        .unwrap();
}
