//! Conformance case of per-member limits on benefit packs.

use std::sync::Arc;

use quanyi_core::{GoodsId, MemberId, SkuId, TenantId};
use quanyi_goods::{Goods, PurchaseLimits};
use quanyi_order::{NewLine, Order, PackTerms, PriceSource};
use quanyi_storage::{Error, MemberLimit, OrderChange, OrderQuery, Store};

use crate::fixtures::{self, card_goods, envelopes, id, member, t0};

/// A benefit pack of two card-key components (one unit of the first, two of the second per
/// pack), as the checkout expands it.
struct Pack {
    sku: SkuId,
    goods: GoodsId,
    components: [Goods; 2],
}

impl Pack {
    fn new(tenant: &TenantId) -> Pack {
        Pack {
            sku: id(SkuId::generate),
            goods: id(GoodsId::generate),
            components: [
                card_goods(tenant, PurchaseLimits::default()),
                card_goods(tenant, PurchaseLimits::default()),
            ],
        }
    }

    /// An unpaid order of `packs` packs: one line per component, each with its share.
    fn order(&self, buyer: &MemberId, packs: u32) -> Order {
        let per_pack = [1u32, 2];
        let shares: Vec<_> = self
            .components
            .iter()
            .zip(per_pack)
            .map(|(g, per)| {
                g.skus()[0]
                    .price
                    .checked_mul(i64::from(packs * per))
                    .unwrap()
            })
            .collect();
        let price = shares[0].checked_add(shares[1]).unwrap();
        let lines = self
            .components
            .iter()
            .zip(per_pack)
            .zip(&shares)
            .map(|((g, per), share)| {
                let sku = &g.skus()[0];
                NewLine {
                    sku: sku.id,
                    goods: g.id(),
                    kind: g.kind().tag(),
                    title: g.title().to_owned(),
                    quantity: packs * per,
                    unit_price: sku.price,
                    account: None,
                    allocated: Some(*share),
                    terms: g.sale_terms(sku.id).unwrap(),
                    pack: Some(PackTerms {
                        sku: self.sku,
                        goods: self.goods,
                        place: 1,
                        packs,
                        per_pack: per,
                        price,
                    }),
                    price_source: PriceSource::ListPrice,
                }
            })
            .collect();
        Order::place(
            id(quanyi_core::OrderId::generate),
            self.components[0].tenant().clone(),
            buyer.clone(),
            lines,
            t0(),
            t0() + chrono::Duration::minutes(15),
        )
        .unwrap()
        .0
    }

    fn limit(&self, limit: u32, release_on_refund: bool) -> MemberLimit {
        MemberLimit {
            sku: self.sku,
            limit,
            release_on_refund,
        }
    }
}

/// Stores `order` under `limits`.
async fn place(store: &dyn Store, order: &Order, limits: &[MemberLimit]) -> Result<(), Error> {
    store.insert_order(order, &[], limits).await
}

/// Moves a stored order on with `change` and stores it.
async fn change(store: &dyn Store, order: &mut Order, change: impl FnOnce(&mut Order)) {
    let expected = order.version();
    change(order);
    store
        .update_order(
            OrderChange {
                order,
                expected_version: expected,
                events: &envelopes(order, &[]),
            },
            None,
        )
        .await
        .unwrap();
}

/// A benefit pack's per-member limit counts packs, however many component lines a pack
/// expands into (a component's own limit counts its units); an order cancelled before payment
/// never counts; a refunded one still counts unless the limit releases units on refund; the
/// pack's SKU finds its orders in a search; another tenant's packs never count.
pub async fn pack_limits(store: Arc<dyn Store>) {
    let tenant = fixtures::tenant();
    let pack = Pack::new(&tenant);
    let (ann, bob) = (member("ann"), member("bob"));

    // Two packs fit a limit of two; one more does not, counted in packs, not lines.
    let mut first = pack.order(&ann, 2);
    place(&*store, &first, &[pack.limit(2, false)])
        .await
        .unwrap();
    let more = pack.order(&ann, 1);
    let refused = place(&*store, &more, &[pack.limit(2, false)]).await;
    assert!(
        matches!(
            refused,
            Err(Error::MemberLimitExceeded {
                already: 2,
                requested: 1,
                ..
            })
        ),
        "{refused:?}"
    );
    // A component's own limit counts its units: two per pack of the second component.
    let second = MemberLimit {
        sku: pack.components[1].skus()[0].id,
        limit: 5,
        release_on_refund: false,
    };
    let refused = place(&*store, &more, &[second]).await;
    assert!(
        matches!(
            refused,
            Err(Error::MemberLimitExceeded {
                already: 4,
                requested: 2,
                ..
            })
        ),
        "{refused:?}"
    );

    // An order cancelled before payment never counts.
    let mut cancelled = pack.order(&bob, 1);
    place(&*store, &cancelled, &[pack.limit(1, false)])
        .await
        .unwrap();
    change(&*store, &mut cancelled, |o| {
        o.cancel("changed my mind".into(), t0()).unwrap();
    })
    .await;
    place(&*store, &pack.order(&bob, 1), &[pack.limit(1, false)])
        .await
        .unwrap();

    // A refunded order still counts, unless the limit releases units on refund.
    let (paid, _) = fixtures::paid_by(
        &first,
        &quanyi_storage::PaymentNotice {
            tenant: tenant.clone(),
            provider: "alipay".into(),
            transaction_id: "txn-pack".into(),
            order: first.id(),
            amount: first.total(),
            received_at: t0(),
            disposition: quanyi_storage::NoticeDisposition::Applied,
        },
    );
    change(&*store, &mut first, |o| {
        *o = paid;
        o.request_refund("trial used".into(), t0()).unwrap();
        o.complete_refund(t0()).unwrap();
    })
    .await;
    let refused = place(&*store, &more, &[pack.limit(2, false)]).await;
    assert!(
        matches!(refused, Err(Error::MemberLimitExceeded { already: 2, .. })),
        "{refused:?}"
    );
    place(&*store, &more, &[pack.limit(1, true)]).await.unwrap();

    // The pack's SKU finds the orders that bought it.
    let mut found: Vec<_> = store
        .search_orders(&tenant, &OrderQuery::new().sku(pack.sku), None, 100)
        .await
        .unwrap()
        .iter()
        .map(Order::id)
        .collect();
    found.sort();
    assert_eq!(found.len(), 4, "ann's two, bob's two");
    assert!(found.contains(&first.id()) && found.contains(&cancelled.id()));

    // Another tenant's member of the same name starts from nothing.
    let other = fixtures::tenant();
    let theirs = Pack {
        sku: pack.sku,
        goods: pack.goods,
        components: [
            card_goods(&other, PurchaseLimits::default()),
            card_goods(&other, PurchaseLimits::default()),
        ],
    };
    place(&*store, &theirs.order(&ann, 2), &[theirs.limit(2, false)])
        .await
        .unwrap();
}

/// Orders of every kind of line, in several states, to store as a schema before line terms
/// held them ([`fixtures::doc_before_line_terms`]) with their goods, and to check after the
/// migration ([`OrdersBeforeLineTerms::check_after_migration`]).
#[derive(Debug)]
pub struct OrdersBeforeLineTerms {
    /// The goods the orders bought: two components and the pack of both.
    pub goods: Vec<Goods>,
    /// A paid order of two packs (one line per component), an expired one of one pack, an
    /// unpaid order of the first component alone.
    pub orders: Vec<Order>,
    pack: SkuId,
    buyer: MemberId,
}

impl OrdersBeforeLineTerms {
    /// The goods and orders of `tenant`.
    pub fn new(tenant: &TenantId) -> OrdersBeforeLineTerms {
        let shape = Pack::new(tenant);
        let components: Vec<quanyi_goods::BundleComponent> = shape
            .components
            .iter()
            .zip([1, 2])
            .map(|(g, quantity)| quanyi_goods::BundleComponent {
                sku: g.skus()[0].id,
                quantity,
            })
            .collect();
        let pack_goods = Goods::new(
            shape.goods,
            tenant.clone(),
            quanyi_goods::GoodsDraft {
                title: "Trial pack".into(),
                kind: quanyi_goods::GoodsKind::BenefitPack { components },
                skus: vec![quanyi_goods::SkuDraft::new(
                    shape.sku,
                    "trial",
                    shape.components[0].skus()[0].price,
                )],
                categories: vec![],
            },
            t0(),
        )
        .unwrap();
        let buyer = member("packer");
        let mut paid = shape.order(&buyer, 2);
        paid.confirm_payment(
            quanyi_order::Payment {
                provider: "alipay".into(),
                transaction_id: "txn-before-terms".into(),
                amount: paid.total(),
                paid_at: t0(),
            },
            t0(),
        )
        .unwrap();
        let mut expired = shape.order(&buyer, 1);
        expired.expire(expired.expires_at()).unwrap();
        let (single, _) = fixtures::order(&shape.components[0], &buyer, 1);
        let [first, second] = shape.components.clone();
        OrdersBeforeLineTerms {
            goods: vec![first, second, pack_goods],
            orders: vec![paid, expired, single],
            pack: shape.sku,
            buyer,
        }
    }

    /// After the migration: every order reads back as it was placed, its lines with the terms
    /// of their goods and a pack's lines with the pack's terms; the paid pack counts its two
    /// packs toward the pack's limit (the expired one nothing); the pack's SKU finds its orders.
    pub async fn check_after_migration(&self, store: &dyn Store) {
        let tenant = self.goods[0].tenant();
        for order in &self.orders {
            assert_eq!(
                store.order(tenant, order.id()).await.unwrap().as_ref(),
                Some(order)
            );
        }
        let limit = MemberLimit {
            sku: self.pack,
            limit: 2,
            release_on_refund: false,
        };
        let shape = Pack {
            sku: self.pack,
            goods: self.goods[2].id(),
            components: [self.goods[0].clone(), self.goods[1].clone()],
        };
        let refused = place(store, &shape.order(&self.buyer, 1), &[limit]).await;
        assert!(
            matches!(refused, Err(Error::MemberLimitExceeded { already: 2, .. })),
            "{refused:?}"
        );
        let mut found: Vec<_> = store
            .search_orders(tenant, &OrderQuery::new().sku(self.pack), None, 100)
            .await
            .unwrap()
            .iter()
            .map(Order::id)
            .collect();
        found.sort();
        let mut packs = vec![self.orders[0].id(), self.orders[1].id()];
        packs.sort();
        assert_eq!(found, packs);
    }
}
