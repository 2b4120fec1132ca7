//! The main job of quanyi, start to finish, on the in-memory store: a card-key good is created,
//! a batch of keys is imported (with a duplicate and a malformed line), a member buys two, the
//! payment notice arrives twice, the keys are delivered and revealed to the buyer, a second
//! member is refused more than is left, and an unpaid order expires and gives its keys back.
//! A buyer who asks for the money back before revealing the key is refunded at once through
//! the payment gateway; the key is voided, never revealed and not back in stock.
//! A placement retried with its idempotency key answers the first order, and an operator
//! searches the orders and finds a card by its code (shown masked).
//!
//! Run it with `cargo run --example quickstart`, or on a durable store with
//! `-- --store sqlite:/tmp/qs.db` or `-- --store postgres:postgres://postgres@127.0.0.1:5432/test`.
//! On a durable store each run works in a tenant of its own (`quickstart-<random>`), so runs on
//! one database never see each other's goods, keys or orders and the transcript is the same.

use std::error::Error;
use std::sync::Arc;

use quanyi::*;

mod support;
use support::StoreSpec;

/// The import file: five keys, line 3 repeats line 1 (spaces, dashes and case do not matter),
/// and line 5 carries a control character.
const BATCH: &str = "VIP-MONTH-0001-AB12\n\
                     VIP-MONTH-0002-CD34\n\
                     vip month 0001 ab12\n\
                     VIP-MONTH-0003-EF56\n\
                     VIP-MONTH\u{7}0004-XX00\n\
                     VIP-MONTH-0005-GH78\n\
                     VIP-MONTH-0006-JK90\n";

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let spec = parse_store(std::env::args().skip(1))?;
    let store = spec.open().await?;
    let keys = root_key_provider()?;
    // A clock the example can move forward, to show expiry without waiting 15 minutes.
    let clock = ManualClock::new(chrono::Utc::now());
    let mut rng = rand::thread_rng();
    let tenant = if spec.is_durable() {
        TenantId::new(format!("quickstart-{:016x}", rand::random::<u64>()))?
    } else {
        TenantId::default()
    };
    let shop = Shop::builder(store, keys)
        .clock(Arc::new(clock.clone()))
        .tenant(tenant)
        .payment_gateway(Arc::new(DemoGateway))
        .build()?;

    println!("== quanyi quickstart ==");
    println!("store: {spec}, tenant: {}", shop.tenant());
    let sku = SkuId::generate(clock.now(), &mut rng);
    let goods = shop
        .create_goods(
            &quanyi::Actor::new("mei", "catalog")?,
            GoodsDraft {
                title: "Video membership, 1-month card".into(),
                kind: GoodsKind::CardKey,
                skus: vec![
                    SkuDraft::new(sku, "1 month", Money::parse("19.90", Currency::CNY)?)
                        .with_stock(StockSource::VaultPool),
                ],
                categories: vec![],
            },
        )
        .await?;
    println!(
        "created goods \"{}\" with SKU {sku} at 19.90 CNY",
        goods.title()
    );

    println!("\n-- import card keys (7 lines) --");
    // Operator commands name who runs them; the audit log shows it.
    let keeper = Actor::new("wei", "stock")?;
    let report = shop
        .import_card_keys(
            &keeper,
            sku,
            BATCH.as_bytes(),
            &ImportOptions::default(),
            BadLines::Skip,
        )
        .await?;
    print!("{report}");

    println!("\n-- alice buys 2 --");
    let alice = MemberId::new("alice")?;
    // The app sends an idempotency key with the purchase and the same key with every retry.
    let request = PlaceOrder::new(alice.clone(), vec![CartLine::new(sku, 2)])
        .idempotency_key("alice-checkout-0001")
        .context(OrderContext::new(Channel::App).client_ip("203.0.113.7".parse()?));
    let order = shop.place(request.clone()).await?;
    println!(
        "order {} placed from the {} channel: {}, pay by {}",
        order.id(),
        order.context().channel,
        order.total(),
        order.expires_at().format("%H:%M:%S")
    );
    let retried = shop.place(request).await?;
    println!(
        "the app retries with the same key: order {} ({})",
        retried.id(),
        if retried.id() == order.id() {
            "the same order, nothing reserved twice"
        } else {
            "A SECOND ORDER"
        }
    );
    println!("stock: {}", stock_line(shop.stock().count(sku).await?));

    let notice = PaymentNotification {
        provider: "alipay".into(),
        transaction_id: "2026112522001456".into(),
        order: order.id(),
        amount: order.total(),
    };
    let first = shop.confirm_payment(notice.clone()).await?;
    println!(
        "payment notice {}: applied, order is {}",
        notice.transaction_id,
        first.order.status()
    );
    let second = shop.confirm_payment(notice.clone()).await?;
    println!(
        "payment notice {} again: {}, order is still {}",
        notice.transaction_id,
        if second.repeated {
            "already applied, ignored"
        } else {
            "APPLIED TWICE"
        },
        second.order.status()
    );

    let revealed = shop.reveal(&alice, order.id()).await?;
    println!(
        "{} keys delivered to alice (shown masked):",
        revealed.cards.len()
    );
    for card in &revealed.cards {
        println!("  line {}: {}", card.line, card.key.masked());
    }
    let mallory = MemberId::new("mallory")?;
    match shop.reveal(&mallory, order.id()).await {
        Err(e) => println!("mallory asks for the same keys: refused ({})", e.code()),
        Ok(_) => return Err("another member saw alice's keys".into()),
    }
    println!("stock: {}", stock_line(shop.stock().count(sku).await?));

    println!("\n-- bob wants 4, but 3 are left --");
    let bob = MemberId::new("bob")?;
    match shop.place_order(&bob, &[CartLine::new(sku, 4)]).await {
        Err(e) => println!("refused: {} ({e})", e.code()),
        Ok(o) => return Err(format!("oversold: order {}", o.id()).into()),
    }
    println!(
        "stock: {} (nothing reserved)",
        stock_line(shop.stock().count(sku).await?)
    );

    println!("\n-- carol orders 2 and never pays --");
    let carol = MemberId::new("carol")?;
    let unpaid = shop.place_order(&carol, &[CartLine::new(sku, 2)]).await?;
    println!(
        "order {} placed; stock: {}",
        unpaid.id(),
        stock_line(shop.stock().count(sku).await?)
    );
    clock.advance(chrono::Duration::minutes(DEFAULT_RESERVATION_TTL_MINUTES));
    println!("(the clock moves on {DEFAULT_RESERVATION_TTL_MINUTES} minutes)");
    // The worker a host runs beside its shop expires unpaid orders as a sweep, once per
    // period however many processes run one; here one pass of it.
    let pass = quanyi::Worker::new(shop.clone()).run_once().await?;
    println!(
        "a worker pass ran {} job(s); order {} is {}",
        pass.done,
        unpaid.id(),
        shop.order(unpaid.id()).await?.status()
    );
    println!(
        "stock: {} (keys back in stock)",
        stock_line(shop.stock().count(sku).await?)
    );

    println!("\n-- dave buys 1 and asks for his money back before revealing it --");
    let dave = MemberId::new("dave")?;
    let bought = shop.place_order(&dave, &[CartLine::new(sku, 1)]).await?;
    shop.confirm_payment(PaymentNotification {
        provider: "alipay".into(),
        transaction_id: "2026112522001457".into(),
        order: bought.id(),
        amount: bought.total(),
    })
    .await?;
    let before = shop.stock().count(sku).await?;
    // The key was never revealed: the refund is decided by the line's rule, no operator needed.
    let refund = shop
        .orders()
        .request_refund(&dave, bought.id(), &[], "bought the wrong month")
        .await?;
    println!(
        "refund {} is {}: {} paid back, {} key(s) voided",
        refund.no,
        refund.status.as_str(),
        refund.amount,
        refund.voided.len()
    );
    match shop.reveal(&dave, bought.id()).await {
        Err(e) => println!("dave asks for the key afterwards: refused ({})", e.code()),
        Ok(_) => return Err("a refunded key was revealed".into()),
    }
    let after = shop.stock().count(sku).await?;
    println!(
        "order {} is {}; stock: {} (the voided key is not back: {} available before and after)",
        bought.id(),
        shop.order(bought.id()).await?.status(),
        stock_line(after),
        before.available
    );
    if after.available != before.available {
        return Err("a voided key went back to stock".into());
    }

    println!("\n-- an operator looks things up --");
    let support = Actor::new("lin", "support")?;
    let expired = OrderQuery::new().status(OrderStatus::Expired);
    let page = shop.orders().search(&support, &expired, None, 10).await?;
    for order in &page.orders {
        println!(
            "  expired: order {} of {} ({} line(s), {})",
            order.id(),
            order.member(),
            order.lines().len(),
            order.context().channel.as_str()
        );
    }
    let asked = CardKey::new(CardCode::new("vip-month-0002-cd34")?, None);
    if let Some(card) = shop.stock().find_card(&support, &asked).await? {
        println!("  card {} is {:?}", card.masked, card.state);
    }

    println!("\n-- audit log (newest first) --");
    for record in shop.audit_log(10).await? {
        println!(
            "  {:?} {:?} by {} on {}: {}",
            record.action, record.outcome, record.actor, record.subject, record.detail
        );
    }
    println!("\ndone.");
    Ok(())
}

/// The payment provider's refund API, as a host implements it; this one only prints.
#[derive(Debug)]
struct DemoGateway;

#[async_trait::async_trait]
impl PaymentGateway for DemoGateway {
    async fn refund(&self, request: &RefundRequest) -> Result<RefundReceipt, GatewayError> {
        println!(
            "  (gateway) refund {} of {} on {} {}",
            request.refund_id, request.amount, request.provider, request.transaction_id
        );
        Ok(RefundReceipt {
            provider_refund_id: format!("demo-{}", request.refund_id),
        })
    }
}

fn stock_line(s: StockCount) -> String {
    format!(
        "{} available, {} reserved, {} sold",
        s.available, s.reserved, s.sold
    )
}

/// `--store memory|sqlite:PATH|postgres:URL`, memory by default.
fn parse_store(mut args: impl Iterator<Item = String>) -> Result<StoreSpec, Box<dyn Error>> {
    match (args.next(), args.next(), args.next()) {
        (None, _, _) => Ok(StoreSpec::Memory),
        (Some(flag), Some(spec), None) if flag == "--store" => StoreSpec::parse(&spec),
        _ => Err("usage: quickstart [--store memory|sqlite:PATH|postgres:URL]".into()),
    }
}

/// The root key from `QUANYI_ROOT_KEY` (base64 or hex of 32 bytes) when set; otherwise a key
/// made for this run only, which is fine for an in-memory demo and wrong for anything kept.
fn root_key_provider() -> Result<Arc<dyn KeyProvider>, Box<dyn Error>> {
    if std::env::var_os("QUANYI_ROOT_KEY").is_some() {
        println!("root key: from QUANYI_ROOT_KEY");
        return Ok(Arc::new(EnvKeyProvider::new("QUANYI_ROOT_KEY")));
    }
    println!("root key: generated for this run (set QUANYI_ROOT_KEY to keep one)");
    Ok(Arc::new(StaticKeyProvider::new(RootKey::generate(
        &mut rand::thread_rng(),
    ))))
}
