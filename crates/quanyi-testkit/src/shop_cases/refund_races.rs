//! Shop cases of after-sales refunds over time and under races: the operators' queue and its
//! deadlines, a reveal racing a refund, identical requests racing each other.

use std::sync::Arc;

use quanyi::{CartLine, Error, OrderStatus, RefundStatus, Store};

use super::refunds::{Buy, bought, operator, paid_back, shop_with_goods};
use super::{Refunds, Rig, cny, import, member};

/// A buyer's request that waits is queued until its deadline, then listed overdue; approving
/// it pays it and takes it out of the queue. The queue and the decisions are audited.
pub async fn refund_requests_wait_in_the_queue_for_a_decision(store: Arc<dyn Store>) {
    let rig = Rig::new(store);
    let refunds = Arc::new(Refunds::default());
    let (shop, goods) = shop_with_goods(&rig, refunds.clone()).await;
    let buyer = member("queued-buyer");
    let first = bought(&shop, &goods, &buyer, Buy::TopUp).await;
    rig.clock.advance(chrono::Duration::minutes(5));
    let second = bought(&shop, &goods, &buyer, Buy::TopUp).await;
    for order in [&first, &second] {
        let asked = shop
            .orders()
            .request_refund(&buyer, order.id(), &[], "wrong number")
            .await
            .unwrap();
        assert_eq!(asked.status, RefundStatus::Requested);
        rig.clock.advance(chrono::Duration::minutes(1));
    }
    let page = shop
        .orders()
        .refund_queue(&operator(), None, 1)
        .await
        .unwrap();
    assert_eq!(page.refunds.len(), 1);
    assert_eq!(page.refunds[0].order, first.id());
    assert!(!page.refunds[0].overdue);
    let rest = shop
        .orders()
        .refund_queue(&operator(), page.next, 10)
        .await
        .unwrap();
    assert_eq!(rest.refunds.len(), 1);
    assert_eq!(rest.refunds[0].order, second.id());
    assert_eq!(rest.next, None);

    rig.clock
        .advance(chrono::Duration::hours(quanyi::DEFAULT_REFUND_REVIEW_HOURS));
    let late = shop
        .orders()
        .refund_queue(&operator(), None, 10)
        .await
        .unwrap();
    assert!(late.refunds.iter().all(|q| q.overdue));
    let paid = shop
        .orders()
        .approve_refund(&operator(), first.id(), 1, "number checked")
        .await
        .unwrap();
    assert_eq!(paid.status, RefundStatus::Paid);
    let left = shop
        .orders()
        .refund_queue(&operator(), None, 10)
        .await
        .unwrap();
    assert_eq!(
        left.refunds.iter().map(|q| q.order).collect::<Vec<_>>(),
        vec![second.id()]
    );
    shop.orders()
        .reject_refund(&operator(), second.id(), 1, "credit was used")
        .await
        .unwrap();
    let empty = shop
        .orders()
        .refund_queue(&operator(), None, 10)
        .await
        .unwrap();
    assert!(empty.refunds.is_empty());
    let records = rig.store.audit_records(&rig.tenant, 100).await.unwrap();
    let count = |a: quanyi_storage::AuditAction| records.iter().filter(|r| r.action == a).count();
    assert_eq!(count(quanyi_storage::AuditAction::RefundApproved), 1);
    assert_eq!(count(quanyi_storage::AuditAction::RefundRejected), 1);
    assert_eq!(count(quanyi_storage::AuditAction::RefundQueueViewed), 5);
    assert_eq!(paid_back(&refunds, &first), cny("50.00").minor());
    assert_eq!(paid_back(&refunds, &second), 0);
}

/// A buyer revealing a key while asking for its refund gets the key or the money, never both
/// (50 rounds, the two started together); a voided key is never sold again.
pub async fn a_reveal_racing_a_refund_gives_the_key_or_the_money(store: Arc<dyn Store>) {
    const ROUNDS: usize = 50;
    let rig = Rig::new(store);
    let refunds = Arc::new(Refunds::default());
    let (shop, goods) = shop_with_goods(&rig, refunds.clone()).await;
    let codes: Vec<String> = (0..ROUNDS).map(|i| format!("RACE-{i:04}")).collect();
    let codes: Vec<&str> = codes.iter().map(String::as_str).collect();
    import(&shop, goods.card, &codes).await;
    let (mut keys, mut money) = (0, 0);
    for round in 0..ROUNDS {
        let buyer = member(&format!("racer-{round}"));
        let order = bought(&shop, &goods, &buyer, Buy::Card).await;
        let reveal = {
            let (shop, buyer, id) = (shop.clone(), buyer.clone(), order.id());
            tokio::spawn(async move { shop.reveal(&buyer, id).await })
        };
        let refund = {
            let (shop, buyer, id) = (shop.clone(), buyer.clone(), order.id());
            tokio::spawn(async move {
                shop.orders()
                    .request_refund(&buyer, id, &[1], "changed my mind")
                    .await
            })
        };
        let (revealed, refund) = (reveal.await.unwrap(), refund.await.unwrap());
        let refund = refund.unwrap();
        let got_key = match revealed {
            Ok(r) => !r.cards.is_empty(),
            Err(Error::RevealDenied) => false,
            Err(e) => panic!("round {round}: {e}"),
        };
        let got_money = refund.status == RefundStatus::Paid;
        assert!(
            got_key != got_money,
            "round {round}: key {got_key}, money {got_money}"
        );
        if got_money {
            assert_eq!(refund.voided.len(), 1);
            money += 1;
        } else {
            assert_eq!(refund.status, RefundStatus::Requested);
            keys += 1;
        }
        // Whatever came first, a later reveal agrees with it.
        let again = shop.reveal(&buyer, order.id()).await;
        assert_eq!(again.is_ok(), got_key, "round {round}");
    }
    assert_eq!(keys + money, ROUNDS);
    // The voided keys and the revealed ones are all out of stock: what is left are the 40 codes
    // imported with the goods, and no order ever holds a voided card.
    let stock = shop.stock().count(goods.card).await.unwrap();
    assert_eq!(stock.available, 40);
    let buyer = member("after-the-race");
    let mut seen = Vec::new();
    for _ in 0..40 {
        let order = bought(&shop, &goods, &buyer, Buy::Card).await;
        seen.extend(order.lines()[0].cards.iter().copied());
    }
    let refused = shop
        .place_order(&buyer, &[CartLine::new(goods.card, 1)])
        .await
        .unwrap_err();
    assert_eq!(refused.code(), "out_of_stock");
    let voided: Vec<_> = refunds_voided(&rig).await;
    assert_eq!(voided.len(), money);
    assert!(seen.iter().all(|c| !voided.contains(c)));
    // Importing a voided code again is a duplicate: it is never back on sale.
    let again = import(&shop, goods.card, &codes).await;
    assert_eq!(again.imported, 0);
    assert_eq!(again.duplicates.len(), ROUNDS);
}

/// The cards voided by refunds, from the orders' refund records.
async fn refunds_voided(rig: &Rig) -> Vec<quanyi::CardId> {
    let mut out = Vec::new();
    for round in 0..50 {
        let buyer = member(&format!("racer-{round}"));
        for order in rig
            .store
            .member_orders(&rig.tenant, &buyer, 10)
            .await
            .unwrap()
        {
            for refund in order.refunds() {
                out.extend(refund.voided.iter().copied());
            }
        }
    }
    out
}

/// Ten identical refund requests started together refund once: one refund on the order, one
/// payment through the gateway, every request answered with that refund.
pub async fn identical_refund_requests_refund_once(store: Arc<dyn Store>) {
    let rig = Rig::new(store);
    let refunds = Arc::new(Refunds::default());
    let (shop, goods) = shop_with_goods(&rig, refunds.clone()).await;
    let buyer = member("impatient");
    let order = bought(&shop, &goods, &buyer, Buy::Card).await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let (shop, buyer, id) = (shop.clone(), buyer.clone(), order.id());
        tasks.spawn(async move {
            shop.orders()
                .request_refund(&buyer, id, &[1], "please refund")
                .await
        });
    }
    let answers = tasks.join_all().await;
    for answer in &answers {
        let refund = answer.as_ref().unwrap();
        assert_eq!(refund.no, 1);
        assert_eq!(refund.status, RefundStatus::Paid);
    }
    let end = shop.order(order.id()).await.unwrap();
    assert_eq!(end.refunds().len(), 1);
    assert_eq!(end.status(), OrderStatus::Refunded);
    let paid: Vec<_> = refunds
        .0
        .lock()
        .iter()
        .filter(|r| r.order == order.id())
        .cloned()
        .collect();
    assert_eq!(paid.len(), 1);
    assert_eq!(paid[0].amount, cny("19.90"));
    assert_eq!(paid[0].refund_id, format!("{}-R1", order.id()));
}
