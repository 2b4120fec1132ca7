//! Cases only a durable store can show: data that survives a reopen, and two independent shops
//! (separate pools, as two processes would have) on one database. Every durable adapter runs
//! them through [`durable_conformance!`](crate::durable_conformance).

use std::collections::HashSet;
use std::sync::Arc;

use quanyi::*;

use crate::fixtures::{self, t0};
use crate::harness::Durable;

fn shop(store: Arc<dyn Store>, root: &RootKey, tenant: &TenantId) -> Shop {
    let keys = StaticKeyProvider::new(RootKey::from_bytes(*root_bytes(root)));
    Shop::builder(store, Arc::new(keys))
        .tenant(tenant.clone())
        .build()
        .expect("shop builds")
}

/// The 32 bytes of a root key, for a second provider of the same key.
fn root_bytes(root: &RootKey) -> Box<[u8; 32]> {
    use base64::Engine as _;
    let text = root.expose_base64();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.as_bytes())
        .expect("root key base64");
    Box::new(bytes.try_into().expect("32 bytes"))
}

async fn card_goods(shop: &Shop, keys: usize) -> (SkuId, Vec<String>) {
    let sku = SkuId::generate(t0(), &mut rand::thread_rng());
    shop.create_goods(
        &quanyi::Actor::new("merchant", "catalog").unwrap(),
        GoodsDraft {
            title: "Music membership month card".into(),
            kind: GoodsKind::CardKey,
            skus: vec![
                SkuDraft::new(sku, "1 month", Money::from_minor(1500, Currency::CNY))
                    .with_stock(StockSource::VaultPool),
            ],
            categories: vec![],
        },
    )
    .await
    .expect("goods");
    let tag: u32 = rand::random();
    let codes: Vec<String> = (0..keys).map(|i| format!("DUR{i:04}-{tag:08X}")).collect();
    shop.import_card_keys(
        &quanyi::Actor::new("stock-keeper", "stock").unwrap(),
        sku,
        codes.join("\n").as_bytes(),
        &ImportOptions::default(),
        BadLines::Reject,
    )
    .await
    .expect("import");
    (sku, codes)
}

fn notice(order: &Order, txn: &str) -> PaymentNotification {
    PaymentNotification {
        provider: "testpay".into(),
        transaction_id: txn.into(),
        order: order.id(),
        amount: order.total(),
    }
}

/// Close the store and open it again: every goods, order, card, notice, event, audit record,
/// job and key ring is found as it was, and the keys still open.
pub async fn reopen_finds_everything(durable: Arc<dyn Durable>) {
    let tenant = fixtures::tenant();
    let root = RootKey::generate(&mut rand::thread_rng());
    let buyer = MemberId::new("alice").expect("member");
    let first = durable.open().await;
    let s1 = shop(first.clone(), &root, &tenant);
    let (sku, codes) = card_goods(&s1, 4).await;
    let paid = s1
        .place_order(&buyer, &[CartLine::new(sku, 2)])
        .await
        .expect("order");
    s1.confirm_payment(notice(&paid, "txn-reopen"))
        .await
        .expect("paid");
    let unpaid = s1
        .place_order(&buyer, &[CartLine::new(sku, 1)])
        .await
        .expect("order");
    let before = s1.reveal(&buyer, paid.id()).await.expect("reveal");
    let job = fixtures::job(&tenant, "reopen-job", t0());
    first.enqueue(&job, t0()).await.expect("job");

    let goods = s1.goods_of(sku).await.expect("goods");
    let orders = first
        .member_orders(&tenant, &buyer, 10)
        .await
        .expect("orders");
    let sold = first.order_cards(&tenant, paid.id()).await.expect("cards");
    let held = first.held_cards(&tenant, unpaid.id()).await.expect("held");
    let stock = s1.stock().count(sku).await.expect("stock");
    let record = first
        .payment_notice(&tenant, "testpay", "txn-reopen")
        .await
        .expect("notice");
    let events = first
        .aggregate_events(&tenant, "order", &paid.id().to_string())
        .await
        .expect("events");
    let audit = first.audit_records(&tenant, 100).await.expect("audit");
    let ring = first.key_ring(&tenant).await.expect("ring");
    let stored_job = first.job(job.id).await.expect("job");
    drop(s1);
    drop(first);

    let second = durable.open().await;
    let s2 = shop(second.clone(), &root, &tenant);
    assert_eq!(s2.goods_of(sku).await.expect("goods"), goods);
    assert_eq!(
        second
            .member_orders(&tenant, &buyer, 10)
            .await
            .expect("orders"),
        orders
    );
    assert_eq!(
        second.order_cards(&tenant, paid.id()).await.expect("cards"),
        sold
    );
    assert_eq!(
        second.held_cards(&tenant, unpaid.id()).await.expect("held"),
        held
    );
    assert_eq!(s2.stock().count(sku).await.expect("stock"), stock);
    assert_eq!(
        second
            .payment_notice(&tenant, "testpay", "txn-reopen")
            .await
            .expect("notice"),
        record
    );
    assert_eq!(
        second
            .aggregate_events(&tenant, "order", &paid.id().to_string())
            .await
            .expect("events"),
        events
    );
    assert_eq!(
        second.audit_records(&tenant, 100).await.expect("audit"),
        audit
    );
    assert_eq!(second.key_ring(&tenant).await.expect("ring"), ring);
    assert_eq!(second.job(job.id).await.expect("job"), stored_job);
    let after = s2
        .reveal(&buyer, paid.id())
        .await
        .expect("reveal after reopen");
    let codes_of = |r: &Revealed| {
        r.cards
            .iter()
            .map(|c| c.key.code.expose().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(codes_of(&after), codes_of(&before));
    assert!(codes_of(&after).iter().all(|c| codes.contains(c)));
    // The unpaid order still holds its key, and still pays.
    let receipt = s2
        .confirm_payment(notice(&unpaid, "txn-after"))
        .await
        .expect("pay after reopen");
    assert_eq!(receipt.order.status(), OrderStatus::Delivered);
}

/// Two shops on two pools of one database race 40 buyers for 10 keys: 10 sales, no key twice.
pub async fn two_shops_never_sell_a_key_twice(durable: Arc<dyn Durable>) {
    let tenant = fixtures::tenant();
    let root = RootKey::generate(&mut rand::thread_rng());
    let a = shop(durable.open().await, &root, &tenant);
    let b = shop(durable.open().await, &root, &tenant);
    let (sku, codes) = card_goods(&a, 10).await;
    let mut tasks = Vec::new();
    for n in 0..40 {
        let shop = if n % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            let buyer = MemberId::new(format!("buyer-{n}")).expect("member");
            let order = shop.place_order(&buyer, &[CartLine::new(sku, 1)]).await?;
            shop.confirm_payment(notice(&order, &format!("txn-{n}")))
                .await?;
            shop.reveal(&buyer, order.id()).await
        }));
    }
    let mut sold = Vec::new();
    let mut out_of_stock = 0;
    for t in tasks {
        match t.await.expect("task") {
            Ok(r) => sold.extend(r.cards.into_iter().map(|c| c.key.code.expose().to_owned())),
            Err(e) if e.code() == "out_of_stock" => out_of_stock += 1,
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!(sold.len(), 10);
    assert_eq!(out_of_stock, 30);
    assert_eq!(
        sold.iter().collect::<HashSet<_>>().len(),
        10,
        "a key was sold twice"
    );
    assert!(sold.iter().all(|c| codes.contains(c)));
    let stock = b.stock().count(sku).await.expect("stock");
    assert_eq!((stock.available, stock.reserved, stock.sold), (0, 0, 10));
}

/// Ten retries of one placement with one idempotency key, split between two shops with pools
/// of their own on one database and racing, place one order: every retry answers it, one card
/// is reserved, and the key with another request is an `idempotency_conflict`.
pub async fn retries_with_one_key_on_two_shops_place_one_order(durable: Arc<dyn Durable>) {
    let tenant = fixtures::tenant();
    let root = RootKey::generate(&mut rand::thread_rng());
    let a = shop(durable.open().await, &root, &tenant);
    let b = shop(durable.open().await, &root, &tenant);
    let (sku, _) = card_goods(&a, 5).await;
    let buyer = MemberId::new("retrying-buyer").expect("member");
    let request = PlaceOrder::new(buyer.clone(), vec![CartLine::new(sku, 1)])
        .idempotency_key("checkout-7f3a")
        .context(OrderContext::new(Channel::App).referral("share-42"));
    let tasks: Vec<_> = (0..10)
        .map(|n| {
            let shop = if n % 2 == 0 { a.clone() } else { b.clone() };
            let request = request.clone();
            tokio::spawn(async move { shop.place(request).await })
        })
        .collect();
    let mut ids = HashSet::new();
    for t in tasks {
        let order = t
            .await
            .expect("task")
            .expect("every retry answers the order");
        assert_eq!(order.context().referral.as_deref(), Some("share-42"));
        ids.insert(order.id());
    }
    assert_eq!(ids.len(), 1, "one order for one key");
    let stock = b.stock().count(sku).await.expect("stock");
    assert_eq!((stock.available, stock.reserved), (4, 1));
    let other =
        PlaceOrder::new(buyer, vec![CartLine::new(sku, 2)]).idempotency_key("checkout-7f3a");
    let err = a.place(other).await.expect_err("another request");
    assert_eq!(err.code(), "idempotency_conflict");
    assert_eq!(b.stock().count(sku).await.expect("stock").reserved, 1);
}

/// A notice applied by one shop is a no-op on the other, also when both get it at once.
pub async fn a_notice_applied_by_one_shop_is_a_no_op_on_the_other(durable: Arc<dyn Durable>) {
    let tenant = fixtures::tenant();
    let root = RootKey::generate(&mut rand::thread_rng());
    let a = shop(durable.open().await, &root, &tenant);
    let b = shop(durable.open().await, &root, &tenant);
    let (sku, _) = card_goods(&a, 4).await;
    let buyer = MemberId::new("carol").expect("member");
    let order = a
        .place_order(&buyer, &[CartLine::new(sku, 1)])
        .await
        .expect("order");
    let first = a
        .confirm_payment(notice(&order, "txn-one"))
        .await
        .expect("paid");
    assert!(!first.repeated);
    let again = b
        .confirm_payment(notice(&order, "txn-one"))
        .await
        .expect("repeat");
    assert!(again.repeated);
    assert_eq!(again.order, first.order);
    assert_eq!(b.stock().count(sku).await.expect("stock").sold, 1);

    let second = b
        .place_order(&buyer, &[CartLine::new(sku, 2)])
        .await
        .expect("order");
    let (x, y) = tokio::join!(
        a.confirm_payment(notice(&second, "txn-both")),
        b.confirm_payment(notice(&second, "txn-both"))
    );
    let (x, y) = (x.expect("a"), y.expect("b"));
    assert_eq!(
        u8::from(!x.repeated) + u8::from(!y.repeated),
        1,
        "applied exactly once"
    );
    assert_eq!(x.order.status(), OrderStatus::Delivered);
    assert_eq!(y.order.status(), OrderStatus::Delivered);
    let stock = a.stock().count(sku).await.expect("stock");
    assert_eq!((stock.available, stock.sold), (1, 3));
}
