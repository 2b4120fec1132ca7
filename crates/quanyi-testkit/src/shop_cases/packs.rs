//! Shop case of what an order keeps of its goods: the terms each line was sold with, and a
//! benefit pack's per-member limit.

use std::sync::Arc;

use quanyi::{
    BundleComponent, CartLine, GoodsDraft, GoodsKind, OrderStatus, PurchaseLimits, SkuDraft, SkuId,
    Store,
};

use super::{Rig, card_sku, cny, import, member, notice};
use crate::fixtures;

/// A trial pack (a music membership of 30 days and a video card, once per member) is sold as
/// one and delivered as its components. An operator's edit of the membership after the sale
/// changes what is sold from then on, not what was bought: the paid order grants the 30 days
/// it was sold with. A second pack for the same member is refused, counted in packs though
/// the pack is two lines; an order cancelled before payment does not count.
pub async fn what_was_bought_is_delivered_and_a_trial_pack_is_sold_once(store: Arc<dyn Store>) {
    let rig = Rig::new(store);
    let shop = rig.shop();
    let card = card_sku(&shop).await;
    import(&shop, card, &["PACK-0001", "PACK-0002", "PACK-0003"]).await;
    let music = fixtures::id(SkuId::generate);
    let membership = shop
        .create_goods(
            &quanyi::Actor::new("merchant", "catalog").unwrap(),
            GoodsDraft {
                title: "Music membership".into(),
                kind: GoodsKind::Membership {
                    plan: "music".into(),
                    days: 30,
                },
                skus: vec![SkuDraft::new(music, "30 days", cny("15.00"))],
                categories: vec![],
            },
        )
        .await
        .unwrap();
    let trial = fixtures::id(SkuId::generate);
    shop.create_goods(
        &quanyi::Actor::new("merchant", "catalog").unwrap(),
        GoodsDraft {
            title: "Trial pack".into(),
            kind: GoodsKind::BenefitPack {
                components: vec![
                    BundleComponent {
                        sku: music,
                        quantity: 1,
                    },
                    BundleComponent {
                        sku: card,
                        quantity: 1,
                    },
                ],
            },
            skus: vec![
                SkuDraft::new(trial, "trial", cny("9.90")).with_limits(PurchaseLimits {
                    per_member: Some(1),
                    ..PurchaseLimits::default()
                }),
            ],
            categories: vec![],
        },
    )
    .await
    .unwrap();

    let ann = member("ann");
    let placed = shop
        .place_order(&ann, &[CartLine::new(trial, 1)])
        .await
        .unwrap();
    assert_eq!(placed.lines().len(), 2);
    assert_eq!(placed.total(), cny("9.90"));
    for line in placed.lines() {
        let pack = line.pack.as_ref().unwrap();
        assert_eq!((pack.sku, pack.place, pack.packs), (trial, 1, 1));
        assert_eq!(pack.price, cny("9.90"));
    }
    assert_eq!(placed.quantity_of(trial), 1);

    // The operator shortens the membership before the order is paid.
    shop.edit_goods(
        &quanyi::Actor::new("merchant", "catalog").unwrap(),
        membership.id(),
        |g| {
            g.set_kind(GoodsKind::Membership {
                plan: "music".into(),
                days: 7,
            })
        },
    )
    .await
    .unwrap();
    // The edit's audit record names the operator and the goods.
    let log = shop.audit_log(20).await.unwrap();
    let edits: Vec<_> = log
        .iter()
        .filter(|r| r.action == quanyi_storage::AuditAction::GoodsChanged)
        .collect();
    assert_eq!(edits.len(), 1);
    assert_eq!(edits[0].actor, "catalog:merchant");
    assert_eq!(edits[0].subject, membership.id().to_string());
    let created = log
        .iter()
        .filter(|r| r.action == quanyi_storage::AuditAction::GoodsCreated)
        .count();
    assert_eq!(created, 3, "the card, the membership and the pack");
    let paid = shop
        .confirm_payment(notice(&placed, "txn-trial"))
        .await
        .unwrap()
        .order;
    assert_eq!(paid.status(), OrderStatus::Delivered);
    let granted: Vec<serde_json::Value> = rig
        .store
        .aggregate_events(&rig.tenant, "order", &placed.id().to_string())
        .await
        .unwrap()
        .iter()
        .filter(|e| e.name == "order.entitlement_granted")
        .map(|e| e.payload.to_value().unwrap())
        .collect();
    assert_eq!(granted.len(), 1);
    assert_eq!(granted[0]["days"], 30, "the days it was sold with");
    assert_eq!(granted[0]["plan"], "music");

    // Once per member, counted in packs.
    let again = shop
        .place_order(&ann, &[CartLine::new(trial, 1)])
        .await
        .unwrap_err();
    assert!(
        matches!(again, quanyi::Error::MemberLimitExceeded { sku, .. } if sku == trial),
        "{again}"
    );

    // An order never paid does not count; new sales take the edited terms.
    let bob = member("bob");
    let first = shop
        .place_order(&bob, &[CartLine::new(trial, 1)])
        .await
        .unwrap();
    shop.cancel_order(&bob, first.id(), "changed my mind")
        .await
        .unwrap();
    let second = shop
        .place_order(&bob, &[CartLine::new(trial, 1)])
        .await
        .unwrap();
    let kept = second.lines()[0].terms.membership.as_ref().unwrap();
    assert_eq!(kept.days, 7);
    assert_eq!(
        shop.order(second.id()).await.unwrap().lines()[0].terms,
        second.lines()[0].terms,
        "the store keeps the terms"
    );
}
