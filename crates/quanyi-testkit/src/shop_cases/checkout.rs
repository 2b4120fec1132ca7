//! Shop case of the checkout's decide stage and what the checkout keeps on the order.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;
use quanyi::{CartLine, Decision, OrderQuery, PlaceOrder, PriceSource, Shop, Store, Verdict};

use super::{Rig, card_sku, import, member};

/// A decide stage that denies one member, asks for a step-up proof from another, and counts
/// what it saw.
struct Rules {
    seen: Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl quanyi::DecideStage for Rules {
    fn name(&self) -> &str {
        "test.rules"
    }

    async fn decide(
        &self,
        _shop: &Shop,
        order: &quanyi::Order,
        extras: &BTreeMap<String, String>,
    ) -> quanyi::Result<Decision> {
        self.seen.lock().push(order.member().as_str().to_owned());
        Ok(match order.member().as_str() {
            "mallory" => Decision::deny("test.rules", vec!["blocked_member".into()]),
            "stepup" if extras.get("otp").map(String::as_str) != Some("123456") => {
                Decision::deny("test.rules", vec!["step_up_required".into()])
            }
            "stepup" => Decision::allow("test.rules", vec!["step_up_passed".into()]),
            _ => Decision::allow("test.rules", vec!["known_device".into()]),
        })
    }
}

/// The decide stage sees every placement before anything is reserved: an allowed order keeps
/// its decision (read back from the store) and each line its price source; a denied one is
/// `checkout_denied` and writes nothing, not even a reservation; a retry with a step-up proof
/// outside the request's fingerprint passes under the same key. A shop without a stage keeps
/// the default decision.
pub async fn checkout_keeps_its_decisions_and_a_denial_writes_nothing(store: Arc<dyn Store>) {
    let rig = Rig::new(store);
    let rules = Arc::new(Rules {
        seen: Mutex::new(Vec::new()),
    });
    let shop = rig
        .builder(rig.store.clone())
        .decide_stage(rules.clone())
        .build()
        .unwrap();
    let sku = card_sku(&shop).await;
    import(&shop, sku, &["DEC-0001", "DEC-0002", "DEC-0003"]).await;

    let placed = shop
        .place(PlaceOrder::new(member("ann"), vec![CartLine::new(sku, 1)]))
        .await
        .unwrap();
    let kept = Decision::allow("test.rules", vec!["known_device".into()]);
    assert_eq!(placed.decision(), &kept);
    let stored = shop.order(placed.id()).await.unwrap();
    assert_eq!(stored.decision(), &kept);
    assert_eq!(stored.lines()[0].price_source, PriceSource::ListPrice);

    let err = shop
        .place(PlaceOrder::new(
            member("mallory"),
            vec![CartLine::new(sku, 1)],
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "checkout_denied");
    assert!(err.to_string().contains("blocked_member"), "{err}");
    let stock = shop.stock().count(sku).await.unwrap();
    assert_eq!((stock.available, stock.reserved), (2, 1));
    let support = quanyi::Actor::new("ops", "support").unwrap();
    let mallory = OrderQuery::new().member(member("mallory"));
    let page = shop
        .orders()
        .search(&support, &mallory, None, 10)
        .await
        .unwrap();
    assert!(page.orders.is_empty());

    // A step-up proof is outside the fingerprint: the retry under the same key passes.
    let request =
        PlaceOrder::new(member("stepup"), vec![CartLine::new(sku, 1)]).idempotency_key("stepup-1");
    let err = shop.place(request.clone()).await.unwrap_err();
    assert_eq!(err.code(), "checkout_denied");
    let passed = shop
        .place(request.unfingerprinted("otp", "123456"))
        .await
        .unwrap();
    assert_eq!(passed.decision().reasons, vec!["step_up_passed".to_owned()]);
    assert_eq!(passed.decision().verdict, Verdict::Allow);
    assert_eq!(
        shop.stock().count(sku).await.unwrap().reserved,
        2,
        "the denied try reserved nothing"
    );
    assert!(rules.seen.lock().len() >= 4);

    // Without a stage: the default decision, read back as such.
    let plain = rig.shop();
    let order = plain
        .place_order(&member("bea"), &[CartLine::new(sku, 1)])
        .await
        .unwrap();
    assert_eq!(
        plain.order(order.id()).await.unwrap().decision(),
        &Decision::allow_all()
    );
}
