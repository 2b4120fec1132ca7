//! Use cases of the facade that every store must carry: each case builds shops on the store
//! under test and drives them as a host would. [`shop_conformance!`](crate::shop_conformance)
//! runs them on an adapter, so a use case is proven on memory, SQLite and PostgreSQL alike.

use std::sync::Arc;

use chrono::Duration;
use parking_lot::Mutex;
use quanyi::{
    BadLines, CartLine, Clock, Currency, DuplicateOf, Error, GoodsDraft, GoodsKind, ImportOptions,
    IndexScheme, KeyId, KeyState, ManualClock, MemberId, Money, Order, OrderStatus, PaymentGateway,
    PaymentNotification, RootKey, Shop, SkuDraft, SkuId, StaticKeyProvider, StockSource, Store,
    SupplierRoute, TenantId, Worker,
};
use quanyi::{GatewayError, RefundReceipt, RefundRequest};
use quanyi_order::AttemptOutcome;
use quanyi_storage::{AuditAction, CONFLICTING_REPEAT, CardState, NewCard, NoticeDisposition};
use quanyi_supplier::{ProductCode, SupplierId};
use quanyi_vault::{CardCode, CardKey, KeyRing};

use crate::fixtures::{self, t0};

mod calendar;
mod checkout;
mod operators;
mod overdue;
mod packs;
use crate::hooked::HookedStore;
use crate::supplier_sim::SimSupplier;
pub use calendar::sweeps_follow_the_shops_calendar;
pub use checkout::checkout_keeps_its_decisions_and_a_denial_writes_nothing;
pub use operators::operators_search_orders_and_find_cards;
pub use overdue::a_line_waiting_on_a_supplier_past_the_deadline_is_refunded;
pub use packs::what_was_bought_is_delivered_and_a_trial_pack_is_sold_once;

/// Every case name, in the order the macro generates them.
pub const CASES: &[&str] = &[
    "invisible_variants_of_a_code_are_duplicates",
    "reindexing_moves_legacy_keys_and_resumes_after_a_stop",
    "an_import_racing_a_retirement_is_sealed_again",
    "a_destroyed_key_never_opens_again_in_any_shop",
    "a_retired_key_stops_opening_within_the_refresh",
    "a_supplier_card_already_held_fails_over_or_is_refunded",
    "a_conflicting_repeat_notice_is_kept_for_reconciliation",
    "expiry_and_cancel_write_the_order_and_release_together",
    "sweeps_run_once_per_period_with_two_workers",
    "a_worker_leaves_job_kinds_it_does_not_run",
    "a_placement_retried_with_its_key_is_one_order",
    "a_restarted_consumer_resumes_at_its_cursor",
    "operators_search_orders_and_find_cards",
    "sweeps_follow_the_shops_calendar",
    "a_line_waiting_on_a_supplier_past_the_deadline_is_refunded",
    "checkout_keeps_its_decisions_and_a_denial_writes_nothing",
    "what_was_bought_is_delivered_and_a_trial_pack_is_sold_once",
];

/// A test's shops share one store, clock, tenant and root key, as processes of one deployment.
struct Rig {
    store: Arc<dyn Store>,
    clock: ManualClock,
    tenant: TenantId,
    root: [u8; 32],
}

impl Rig {
    fn new(store: Arc<dyn Store>) -> Self {
        let mut root = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut root);
        Rig {
            store,
            clock: ManualClock::new(t0()),
            tenant: fixtures::tenant(),
            root,
        }
    }

    /// A shop on the rig's store: a process of its own (its own caches).
    fn shop(&self) -> Shop {
        self.shop_on(self.store.clone())
    }

    fn shop_on(&self, store: Arc<dyn Store>) -> Shop {
        self.builder(store).build().unwrap()
    }

    fn builder(&self, store: Arc<dyn Store>) -> quanyi::ShopBuilder {
        Shop::builder(
            store,
            Arc::new(StaticKeyProvider::new(RootKey::from_bytes(self.root))),
        )
        .clock(Arc::new(self.clock.clone()))
        .tenant(self.tenant.clone())
    }
}

fn cny(text: &str) -> Money {
    Money::parse(text, Currency::CNY).unwrap()
}

fn member(name: &str) -> MemberId {
    MemberId::new(name).unwrap()
}

/// Vault-stocked card-key goods; returns the SKU.
async fn card_sku(shop: &Shop) -> SkuId {
    let sku = fixtures::id(SkuId::generate);
    shop.create_goods(
        &quanyi::Actor::new("merchant", "catalog").unwrap(),
        GoodsDraft {
            title: "Video membership month card".into(),
            kind: GoodsKind::CardKey,
            skus: vec![
                SkuDraft::new(sku, "1 month", cny("19.90")).with_stock(StockSource::VaultPool),
            ],
        },
    )
    .await
    .unwrap();
    sku
}

async fn import(shop: &Shop, sku: SkuId, codes: &[&str]) -> quanyi::ImportReport {
    shop.import_card_keys(
        &quanyi::Actor::new("stock-keeper", "stock").unwrap(),
        sku,
        codes.join("\n").as_bytes(),
        &ImportOptions::default(),
        BadLines::Reject,
    )
    .await
    .unwrap()
}

/// Places and pays an order for `quantity` of `sku`; returns it after the payment.
async fn buy(shop: &Shop, sku: SkuId, buyer: &MemberId, quantity: i64) -> Order {
    let order = shop
        .place_order(buyer, &[CartLine::new(sku, quantity)])
        .await
        .unwrap();
    shop.confirm_payment(notice(&order, &format!("txn-{}", order.id())))
        .await
        .unwrap()
        .order
}

fn notice(order: &Order, txn: &str) -> PaymentNotification {
    PaymentNotification {
        provider: "testpay".into(),
        transaction_id: txn.into(),
        order: order.id(),
        amount: order.total(),
    }
}

/// The codes a buyer reveals, in order.
async fn revealed(shop: &Shop, buyer: &MemberId, order: &Order) -> Result<Vec<String>, Error> {
    Ok(shop
        .reveal(buyer, order.id())
        .await?
        .cards
        .iter()
        .map(|c| c.key.code.expose().to_owned())
        .collect())
}

/// A code written with invisible or compatibility characters is the code itself: importing it
/// after the code, or beside it in one file, finds a duplicate, so it is never sold twice.
pub async fn invisible_variants_of_a_code_are_duplicates(store: Arc<dyn Store>) {
    let rig = Rig::new(store);
    let shop = rig.shop();
    let sku = card_sku(&shop).await;
    import(&shop, sku, &["QY-1234-ABCD"]).await;
    let variants = [
        "QY-1234\u{200B}-ABCD",
        "ＱＹ－１２３４－ＡＢＣＤ",
        "QY\u{2013}1234\u{2014}ABCD",
        "qy-1234-abcd\u{00AD}",
        "\u{FEFF}QY-1234-ABCD\u{200D}",
        "QY\u{2212}1234\u{2060}ABCD",
    ];
    let report = import(&shop, sku, &variants).await;
    assert_eq!(report.imported, 0, "{report}");
    assert_eq!(report.duplicates.len(), variants.len());
    // The first variant repeats the stored code; the rest repeat the first (and the code).
    assert_eq!(report.duplicates[0].of, DuplicateOf::Stored);
    assert!(
        report.duplicates[1..]
            .iter()
            .all(|d| d.of == DuplicateOf::Line(1))
    );
    assert_eq!(shop.stock().count(sku).await.unwrap().available, 1);
    // Within one file, too.
    let report = import(&shop, sku, &["NEW-0001", "NEW\u{200B}-0001", "ＮＥＷ-0001"]).await;
    assert_eq!(report.imported, 1);
    assert_eq!(
        report
            .duplicates
            .iter()
            .map(|d| (d.line, d.of))
            .collect::<Vec<_>>(),
        vec![(2, DuplicateOf::Line(1)), (3, DuplicateOf::Line(1))]
    );
    assert_eq!(shop.stock().count(sku).await.unwrap().available, 2);
}

/// Seals `codes` the way a shop of the legacy scheme did: sealed under the active key, indexed
/// under [`IndexScheme::Legacy`], and marks the ring as holding legacy-indexed cards.
async fn store_legacy_cards(rig: &Rig, sku: SkuId, codes: &[&str]) -> Vec<quanyi::CardId> {
    let store = &rig.store;
    let root = RootKey::from_bytes(rig.root);
    let (wrapped, _) = store.key_ring(&rig.tenant).await.unwrap().unwrap();
    let ring = KeyRing::unwrap(&root, &wrapped).unwrap();
    let key = ring.active_key_id();
    let uses = u64::try_from(codes.len()).unwrap();
    store
        .reserve_key_uses(&rig.tenant, key, uses, quanyi_vault::DEFAULT_KEY_USE_LIMIT)
        .await
        .unwrap();
    ring.grant(key, uses).unwrap();
    let batch = fixtures::id(quanyi_core::BatchId::generate);
    let cards: Vec<NewCard> = {
        let mut rng = rand::thread_rng();
        let ids = quanyi::CardId::generate_sequence(t0(), &mut rng, codes.len());
        codes
            .iter()
            .zip(&ids)
            .map(|(code, id)| {
                let card = CardKey::new(CardCode::new(*code).unwrap(), None);
                NewCard {
                    id: *id,
                    sku,
                    batch,
                    blind_index: ring.blind_index_as(&card, IndexScheme::Legacy),
                    index_scheme: IndexScheme::Legacy,
                    legacy_index: None,
                    sealed: ring
                        .seal_card(&rig.tenant, sku, *id, &card, &mut rng)
                        .unwrap(),
                    key_id: key,
                }
            })
            .collect()
    };
    let out = store
        .insert_cards(&rig.tenant, &cards, t0(), quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    assert_eq!(out.inserted.len(), codes.len(), "legacy cards are distinct");
    let (mut wrapped, version) = store.key_ring(&rig.tenant).await.unwrap().unwrap();
    wrapped.oldest_index_scheme = IndexScheme::Legacy;
    store
        .update_key_ring(&wrapped, version, quanyi_storage::Trail::NONE)
        .await
        .unwrap();
    cards.iter().map(|c| c.id).collect()
}

/// A store holding keys indexed the legacy way is re-indexed by a job that opens each card: it
/// can stop (a limit, or a failed write) and resume, no card is ever without an index, cards
/// that turn out to be one code are settled (the unsold copy withdrawn), and once it finishes
/// imports find every variant.
pub async fn reindexing_moves_legacy_keys_and_resumes_after_a_stop(store: Arc<dyn Store>) {
    let rig = Rig::new(store);
    let setup = rig.shop();
    let sold_sku = card_sku(&setup).await;
    let sku = card_sku(&setup).await;
    setup.data_keys().await.unwrap();
    // The legacy era: one code stored twice (one copy sold), and codes with invisible or
    // compatibility characters.
    store_legacy_cards(&rig, sold_sku, &["LG-0004-DUP"]).await;
    let legacy = [
        "LG-0001-PLAIN",
        "LG-0002\u{200B}-ZW",
        "ＬＧ-0003-FW",
        "LG-0004\u{200B}-DUP",
        "LG-0005\u{00AD}-SH",
        "LG-0006-PLAIN",
        "LG-0007\u{FEFF}-BOM",
    ];
    store_legacy_cards(&rig, sku, &legacy).await;
    let sold = buy(&setup, sold_sku, &member("early"), 1).await;
    assert_eq!(sold.status(), OrderStatus::Delivered);

    // The upgraded process.
    let hooked = HookedStore::new(rig.store.clone());
    let shop = rig.shop_on(hooked.clone());
    // Until re-indexing ends, an identical legacy code is still a duplicate (its legacy index)...
    let again = import(&shop, sku, &["LG-0002\u{200B}-ZW"]).await;
    assert_eq!((again.imported, again.duplicates.len()), (0, 1));
    // ...and a plain spelling of it is stored: it can only be found once the old card has its
    // new index. Re-indexing then settles the pair.
    let plain = import(&shop, sku, &["LG-0002-ZW"]).await;
    assert_eq!(plain.imported, 1);

    // A first pass stops at its limit.
    let first = shop.reindex_card_keys(3).await.unwrap();
    assert_eq!((first.examined, first.finished), (3, false));
    // A second stops on a failed write: nothing of its batch changed, nothing is lost.
    hooked.fail_next("reindex_cards", 1);
    assert!(shop.reindex_card_keys(3).await.is_err());
    let left = rig
        .store
        .cards_to_reindex(&rig.tenant, IndexScheme::CURRENT, 100)
        .await
        .unwrap();
    assert_eq!(left.len(), 8 - 3);
    // Every code still finds its card, halfway through.
    let everything: Vec<&str> = legacy.iter().copied().chain(["LG-0004-DUP"]).collect();
    let report = import(&shop, sku, &everything).await;
    assert_eq!(report.imported, 0, "{report}");

    // Resumed by the worker, pass by pass, until it is done.
    let worker = Worker::new(shop.clone()).batch(1);
    let mut passes = 0;
    while rig
        .store
        .key_ring(&rig.tenant)
        .await
        .unwrap()
        .unwrap()
        .0
        .oldest_index_scheme
        < IndexScheme::CURRENT
    {
        let run = worker.run_once().await.unwrap();
        assert!(run.reindexed > 0 || passes > 0);
        passes += 1;
        assert!(passes < 20, "re-indexing does not finish");
    }
    assert!(
        rig.store
            .cards_to_reindex(&rig.tenant, IndexScheme::CURRENT, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(shop.reindex_card_keys(10).await.unwrap().finished);

    // Both pairs were settled: the unsold legacy copy of the sold code, and the legacy card
    // whose plain spelling was stored meanwhile.
    let audit = shop.audit_log(100).await.unwrap();
    let withdrawals = audit
        .iter()
        .filter(|r| r.action == AuditAction::CardsWithdrawn)
        .count();
    assert_eq!(withdrawals, 2, "{audit:?}");
    let mut withdrawn = 0;
    for card in rig
        .store
        .cards_sealed_with(&rig.tenant, KeyId(1), 100)
        .await
        .unwrap()
    {
        assert_eq!(card.index_scheme, IndexScheme::CURRENT);
        if matches!(card.state, CardState::Withdrawn { .. }) {
            withdrawn += 1;
        }
    }
    assert_eq!(withdrawn, 2);
    // The pool sells what is left: 6 legacy codes and the plain one, less the two withdrawn.
    assert_eq!(shop.stock().count(sku).await.unwrap().available, 7 + 1 - 2);
    // Now every variant is found.
    let variants = [
        "LG-0001-PLAIN",
        "LG-0002-ZW",
        "LG-0003-FW",
        "LG-0004-DUP",
        "LG-0005-SH",
        "LG-0006-PLAIN",
        "LG-0007-BOM",
        "LG\u{2010}0001\u{2010}PLAIN",
    ];
    let report = import(&shop, sku, &variants).await;
    assert_eq!(report.imported, 0, "{report}");
}

/// An import that sealed under the active key while another process rotated it, resealed what
/// it held and retired it, is refused by the store and sealed again under the new key: no card
/// is stored under a key that is not active, and every card opens.
pub async fn an_import_racing_a_retirement_is_sealed_again(store: Arc<dyn Store>) {
    let rig = Rig::new(store);
    let hooked = HookedStore::new(rig.store.clone());
    let importer = rig.shop_on(hooked.clone());
    let operator = rig.shop();
    let sku = card_sku(&importer).await;
    import(&importer, sku, &["RACE-0001", "RACE-0002"]).await;
    // After the importer sealed its batch and reserved the key's uses, the operator rotates,
    // reseals what the old key sealed and retires it.
    let op = operator.clone();
    hooked.before_next("insert_cards", move || async move {
        let new = op.rotate_data_key(&admin()).await.unwrap();
        assert_eq!(new, KeyId(2));
        assert_eq!(op.reseal_cards(&admin(), KeyId(1)).await.unwrap(), 2);
        op.retire_key(&admin(), KeyId(1)).await.unwrap();
    });
    let report = import(&importer, sku, &["RACE-0003", "RACE-0004", "RACE-0005"]).await;
    assert_eq!(report.imported, 3);
    assert_eq!(
        hooked.calls("insert_cards"),
        3,
        "the refused batch was sealed again"
    );
    assert!(
        rig.store
            .cards_sealed_with(&rig.tenant, KeyId(1), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        operator.data_keys().await.unwrap(),
        vec![(KeyId(1), KeyState::Retired), (KeyId(2), KeyState::Active)]
    );
    // Every card opens for its buyer, in either process.
    let buyer = member("racer");
    let order = buy(&importer, sku, &buyer, 5).await;
    assert_eq!(order.status(), OrderStatus::Delivered);
    let mut codes = revealed(&operator, &buyer, &order).await.unwrap();
    codes.sort();
    assert_eq!(
        codes,
        [
            "RACE-0001",
            "RACE-0002",
            "RACE-0003",
            "RACE-0004",
            "RACE-0005"
        ]
    );
}

/// A destroyed key opens nothing again, at once, in every shop on the store, even one that has
/// the ring cached: what it sealed is shredded in the same write, and its unsold cards leave
/// sale. The shop goes on under a new key.
pub async fn a_destroyed_key_never_opens_again_in_any_shop(store: Arc<dyn Store>) {
    let rig = Rig::new(store);
    let seller = rig.shop();
    let operator = rig.shop();
    let sku = card_sku(&seller).await;
    import(&seller, sku, &["BURN-0001", "BURN-0002", "BURN-0003"]).await;
    let buyer = member("burnt");
    let order = buy(&seller, sku, &buyer, 1).await;
    assert_eq!(
        revealed(&seller, &buyer, &order).await.unwrap(),
        ["BURN-0001"]
    );
    let report = operator.destroy_key(&admin(), KeyId(1)).await.unwrap();
    assert_eq!(report.rotated_to, Some(KeyId(2)));
    assert_eq!((report.shredded, report.withdrawn), (3, 2));
    // The seller's cached ring still holds k1; the ciphertext is gone from the store.
    assert!(matches!(
        seller.reveal(&buyer, order.id()).await,
        Err(Error::RevealDenied)
    ));
    assert_eq!(seller.stock().count(sku).await.unwrap().available, 0);
    let card = rig
        .store
        .order_cards(&rig.tenant, order.id())
        .await
        .unwrap();
    assert!(card[0].sealed.code.as_bytes().is_empty());
    assert_eq!(
        operator.data_keys().await.unwrap(),
        vec![
            (KeyId(1), KeyState::Destroyed),
            (KeyId(2), KeyState::Active)
        ]
    );
    // The seller goes on under the new key.
    import(&seller, sku, &["BURN-0004"]).await;
    let next = buy(&seller, sku, &buyer, 1).await;
    assert_eq!(
        revealed(&seller, &buyer, &next).await.unwrap(),
        ["BURN-0004"]
    );
    let audit = operator.audit_log(50).await.unwrap();
    assert!(audit.iter().any(|r| r.action == AuditAction::KeyDestroyed));
    // A key the ring does not have is refused.
    assert!(operator.destroy_key(&admin(), KeyId(9)).await.is_err());
}

/// A retired key stops opening in another process within that process's key ring refresh:
/// a ciphertext under the retired key (from a lagging replica, say) opens there until the
/// refresh is due, and never after.
pub async fn a_retired_key_stops_opening_within_the_refresh(store: Arc<dyn Store>) {
    let rig = Rig::new(store);
    let hooked = HookedStore::new(rig.store.clone());
    let refresh = Duration::seconds(30);
    let seller = rig
        .builder(hooked.clone())
        .key_ring_refresh(refresh)
        .build()
        .unwrap();
    let operator = rig.shop();
    let sku = card_sku(&seller).await;
    import(&seller, sku, &["OLD-0001"]).await;
    let buyer = member("patient");
    let order = buy(&seller, sku, &buyer, 1).await;
    assert_eq!(
        revealed(&seller, &buyer, &order).await.unwrap(),
        ["OLD-0001"]
    );
    let before = rig
        .store
        .order_cards(&rig.tenant, order.id())
        .await
        .unwrap()
        .remove(0);
    operator.rotate_data_key(&admin()).await.unwrap();
    operator.reseal_cards(&admin(), KeyId(1)).await.unwrap();
    operator.retire_key(&admin(), KeyId(1)).await.unwrap();
    hooked.serve_stale(before.id, before.sealed.clone());
    // The operator's ring dropped k1 at once.
    let stale_operator = rig.shop_on(hooked.clone());
    assert!(matches!(
        stale_operator.reveal(&buyer, order.id()).await,
        Err(Error::RevealDenied)
    ));
    // The seller read its ring at the sale; once the refresh is due, k1 is gone there too.
    rig.clock.advance(refresh);
    assert!(matches!(
        seller.reveal(&buyer, order.id()).await,
        Err(Error::RevealDenied)
    ));
    // The resealed card opens everywhere.
    assert_eq!(
        revealed(&operator, &buyer, &order).await.unwrap(),
        ["OLD-0001"]
    );
}

/// A gateway that records the refunds it is asked for.
#[derive(Debug, Default)]
struct Refunds(Mutex<Vec<RefundRequest>>);

#[async_trait::async_trait]
impl PaymentGateway for Refunds {
    async fn refund(&self, r: &RefundRequest) -> Result<RefundReceipt, GatewayError> {
        let mut all = self.0.lock();
        if !all.iter().any(|x| x.refund_id == r.refund_id) {
            all.push(r.clone());
        }
        Ok(RefundReceipt {
            provider_refund_id: r.refund_id.clone(),
        })
    }
}

/// A supplier that hands over a card key the shop already holds (sold, here) never gets it
/// delivered: the line fails over to the next route, or, with none left, is refunded; the
/// request is recorded for reconciliation with the supplier.
pub async fn a_supplier_card_already_held_fails_over_or_is_refunded(store: Arc<dyn Store>) {
    let rig = Rig::new(store);
    let product = ProductCode::new("CARD-30").unwrap();
    let cost = cny("28.00");
    let sim = |name: &str| {
        Arc::new(
            SimSupplier::new(SupplierId::new(name).unwrap(), 3).with_card_product(
                product.clone(),
                100,
                cost,
            ),
        )
    };
    let (reseller, honest) = (sim("reseller"), sim("honest"));
    let refunds = Arc::new(Refunds::default());
    let shop = rig
        .builder(rig.store.clone())
        .supplier(reseller.clone())
        .supplier(honest.clone())
        .payment_gateway(refunds.clone())
        .build()
        .unwrap();
    // The reseller's first two codes are already in the shop's vault, and sold.
    let vault_sku = card_sku(&shop).await;
    import(&shop, vault_sku, &["SIM-reseller-1", "SIM-reseller-2"]).await;
    let early = member("early");
    buy(&shop, vault_sku, &early, 2).await;
    let supplied = |routes: Vec<SupplierRoute>| {
        let shop = shop.clone();
        async move {
            let sku = fixtures::id(SkuId::generate);
            shop.create_goods(
                &quanyi::Actor::new("merchant", "catalog").unwrap(),
                GoodsDraft {
                    title: "Game card 30".into(),
                    kind: GoodsKind::CardKey,
                    skus: vec![
                        SkuDraft::new(sku, "30", cny("30.00"))
                            .with_stock(StockSource::Supplier)
                            .with_routes(routes),
                    ],
                },
            )
            .await
            .unwrap();
            sku
        }
    };
    let route = |name: &str| {
        SupplierRoute::new(
            quanyi_supplier::SupplierId::new(name).unwrap(),
            quanyi_supplier::ProductCode::new("CARD-30").unwrap(),
            cost,
        )
    };
    let from = t0() - Duration::hours(1);

    // Two routes: the reseller's duplicate is refused, the honest supplier delivers.
    let sku = supplied(vec![route("reseller"), route("honest")]).await;
    let buyer = member("buyer");
    let order = buy(&shop, sku, &buyer, 1).await;
    assert_eq!(order.status(), OrderStatus::Delivered);
    let outcomes: Vec<&str> = order.lines()[0]
        .attempts
        .iter()
        .map(|a| a.outcome.as_str())
        .collect();
    assert_eq!(outcomes, ["rejected", "succeeded"]);
    assert_eq!(
        revealed(&shop, &buyer, &order).await.unwrap(),
        ["SIM-honest-1"]
    );
    let report = shop
        .reconcile_supplier(
            &SupplierId::new("reseller").unwrap(),
            from,
            rig.clock.now() + Duration::hours(1),
        )
        .await
        .unwrap();
    assert_eq!(report.status_mismatch.len(), 1, "{report:?}");
    assert_eq!(
        report.status_mismatch[0].0.request,
        order.lines()[0].attempts[0].request
    );

    // One route: the line fails and is paid back.
    let sku = supplied(vec![route("reseller")]).await;
    let order = buy(&shop, sku, &buyer, 1).await;
    let order = shop.settle(order.id()).await.unwrap();
    assert_eq!(order.status(), OrderStatus::Refunded);
    assert!(matches!(
        order.lines()[0].attempts[0].outcome,
        AttemptOutcome::Rejected { .. }
    ));
    assert_eq!(
        refunds
            .0
            .lock()
            .iter()
            .filter(|r| r.order == order.id())
            .map(|r| r.amount)
            .collect::<Vec<_>>(),
        vec![cny("30.00")]
    );
    let audit = shop.audit_log(100).await.unwrap();
    assert_eq!(
        audit
            .iter()
            .filter(|r| r.action == AuditAction::SupplierDuplicate)
            .count(),
        2
    );
    // The codes already sold were not sold again.
    assert_eq!(shop.stock().count(vault_sku).await.unwrap().sold, 2);
}

/// A notice that repeats a recorded transaction id with another amount (or for another order)
/// is not a repeat: it is refused, kept for reconciliation once, and changes nothing.
pub async fn a_conflicting_repeat_notice_is_kept_for_reconciliation(store: Arc<dyn Store>) {
    let rig = Rig::new(store);
    let shop = rig.shop();
    let sku = card_sku(&shop).await;
    import(&shop, sku, &["PAY-0001", "PAY-0002"]).await;
    let buyer = member("payer");
    let order = shop
        .place_order(&buyer, &[CartLine::new(sku, 1)])
        .await
        .unwrap();
    let first = notice(&order, "T-1");
    let paid = shop.confirm_payment(first.clone()).await.unwrap();
    assert_eq!(paid.order.status(), OrderStatus::Delivered);
    // A plain repeat is acknowledged as one.
    assert!(shop.confirm_payment(first.clone()).await.unwrap().repeated);
    let mut more = first.clone();
    more.amount = cny("199.00");
    for _ in 0..2 {
        let r = shop.confirm_payment(more.clone()).await;
        assert!(
            matches!(
                r,
                Err(Error::NotPayable {
                    reason: CONFLICTING_REPEAT,
                    ..
                })
            ),
            "{r:?}"
        );
    }
    let other = shop
        .place_order(&buyer, &[CartLine::new(sku, 1)])
        .await
        .unwrap();
    let mut elsewhere = first.clone();
    elsewhere.order = other.id();
    assert!(shop.confirm_payment(elsewhere).await.is_err());
    let kept = rig
        .store
        .notices_to_reconcile(&rig.tenant, 10)
        .await
        .unwrap();
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert!(kept.iter().all(|n| n.disposition
        == NoticeDisposition::Reconcile {
            reason: CONFLICTING_REPEAT.into()
        }));
    assert_eq!(kept[0].amount, cny("199.00"));
    assert_eq!(kept[1].order, other.id());
    // Nothing else changed: the other order is still unpaid, the first delivered once.
    assert_eq!(
        shop.order(other.id()).await.unwrap().status(),
        OrderStatus::AwaitingPayment
    );
    assert_eq!(shop.stock().count(sku).await.unwrap().sold, 1);
    let audit = shop.audit_log(50).await.unwrap();
    assert_eq!(
        audit
            .iter()
            .filter(|r| r.action == AuditAction::NoticeConflict)
            .count(),
        2
    );
}

/// Expiring or cancelling an unpaid order writes its status and the release of its cards in one
/// storage call: when that call fails, neither happened, and a later run does both.
pub async fn expiry_and_cancel_write_the_order_and_release_together(store: Arc<dyn Store>) {
    let rig = Rig::new(store);
    let hooked = HookedStore::new(rig.store.clone());
    let shop = rig.shop_on(hooked.clone());
    let sku = card_sku(&shop).await;
    import(&shop, sku, &["EXP-0001", "EXP-0002"]).await;
    // Releasing cards on their own never happens: a failure there changes nothing.
    hooked.fail_next("release_cards", u32::MAX);
    let late = shop
        .place_order(&member("late"), &[CartLine::new(sku, 1)])
        .await
        .unwrap();
    let fickle = shop
        .place_order(&member("fickle"), &[CartLine::new(sku, 1)])
        .await
        .unwrap();
    let holds = |id| {
        let (store, tenant) = (rig.store.clone(), rig.tenant.clone());
        async move { store.held_cards(&tenant, id).await.unwrap().len() }
    };

    hooked.fail_next("close_unpaid_order", 1);
    assert!(
        shop.cancel_order(&member("fickle"), fickle.id(), "no")
            .await
            .is_err()
    );
    assert_eq!(
        shop.order(fickle.id()).await.unwrap().status(),
        OrderStatus::AwaitingPayment
    );
    assert_eq!(holds(fickle.id()).await, 1);
    let cancelled = shop
        .cancel_order(&member("fickle"), fickle.id(), "no")
        .await
        .unwrap();
    assert_eq!(cancelled.status(), OrderStatus::Cancelled);
    assert_eq!(holds(fickle.id()).await, 0);

    rig.clock.advance(Duration::minutes(16));
    hooked.fail_next("close_unpaid_order", 1);
    assert!(shop.expire_unpaid_orders().await.is_err());
    assert_eq!(
        shop.order(late.id()).await.unwrap().status(),
        OrderStatus::AwaitingPayment
    );
    assert_eq!(holds(late.id()).await, 1);
    assert_eq!(shop.expire_unpaid_orders().await.unwrap(), 1);
    assert_eq!(
        shop.order(late.id()).await.unwrap().status(),
        OrderStatus::Expired
    );
    assert_eq!(holds(late.id()).await, 0);
    let stock = shop.stock().count(sku).await.unwrap();
    assert_eq!((stock.available, stock.reserved), (2, 0));
}

/// A host sweep that records the periods it ran for.
struct Tally {
    name: &'static str,
    period: quanyi::SweepPeriod,
    periods: Mutex<Vec<chrono::DateTime<chrono::Utc>>>,
}

#[async_trait::async_trait]
impl quanyi::Sweep for Tally {
    fn name(&self) -> &str {
        self.name
    }

    fn period(&self) -> quanyi::SweepPeriod {
        self.period
    }

    async fn run(
        &self,
        _shop: &Shop,
        period: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), quanyi::JobError> {
        self.periods.lock().push(period);
        Ok(())
    }
}

/// Two workers (two processes) run each sweep once per period: the host's and the engine's
/// expiry of unpaid orders, which needs no timer of the host's.
pub async fn sweeps_run_once_per_period_with_two_workers(store: Arc<dyn Store>) {
    let rig = Rig::new(store);
    let tally = Arc::new(Tally {
        name: "tally",
        period: quanyi::SweepPeriod::Every(Duration::minutes(1)),
        periods: Mutex::new(Vec::new()),
    });
    let process = |name: &str| {
        rig.builder(rig.store.clone())
            .worker_name(name)
            .sweep(tally.clone())
            .build()
            .unwrap()
    };
    let (a, b) = (process("worker-a"), process("worker-b"));
    let sku = card_sku(&a).await;
    import(&a, sku, &["SWP-0001"]).await;
    let unpaid = a
        .place_order(&member("idle"), &[CartLine::new(sku, 1)])
        .await
        .unwrap();
    rig.clock.advance(Duration::minutes(16));
    let (wa, wb) = (Worker::new(a.clone()), Worker::new(b.clone()));
    for _ in 0..3 {
        let (ra, rb) = tokio::join!(wa.run_once(), wb.run_once());
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        assert_eq!(ra.dead + rb.dead, 0);
    }
    let first = tally.periods.lock().clone();
    assert_eq!(first.len(), 1, "one run of the period: {first:?}");
    assert!(first[0] <= rig.clock.now() && rig.clock.now() - first[0] < Duration::minutes(1));
    assert_eq!(
        a.order(unpaid.id()).await.unwrap().status(),
        OrderStatus::Expired
    );
    assert_eq!(a.stock().count(sku).await.unwrap().available, 1);
    // The next period runs once more.
    rig.clock.advance(Duration::minutes(1));
    for _ in 0..2 {
        let (ra, rb) = tokio::join!(wa.run_once(), wb.run_once());
        ra.unwrap();
        rb.unwrap();
    }
    let periods = tally.periods.lock().clone();
    assert_eq!(periods.len(), 2, "{periods:?}");
    assert_eq!(periods[1] - periods[0], Duration::minutes(1));
}

/// A host job kind that records what it ran and answers as the payload says.
struct Grants {
    ran: Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl quanyi::JobHandler for Grants {
    fn kind(&self) -> &str {
        "grant_monthly"
    }

    async fn run(
        &self,
        shop: &Shop,
        job: &quanyi::Job,
    ) -> Result<quanyi::JobOutcome, quanyi::JobError> {
        assert_eq!(&job.tenant, shop.tenant());
        self.ran.lock().push(job.dedupe_key.clone());
        match job.payload.get("answer").and_then(|v| v.as_str()) {
            Some("permanent") => Err(quanyi::JobError::permanent("no such plan")),
            Some("transient") => Err(quanyi::JobError::transient("ledger busy")),
            _ => Ok(quanyi::JobOutcome::Done),
        }
    }
}

/// A worker claims only the kinds its shop runs: an older process without a newer kind's
/// handler leaves the job queued (it is neither run nor given up) for a process that has one.
/// A handler's errors retry or give the job up as they say.
pub async fn a_worker_leaves_job_kinds_it_does_not_run(store: Arc<dyn Store>) {
    let rig = Rig::new(store);
    let grants = Arc::new(Grants {
        ran: Mutex::new(Vec::new()),
    });
    let newer = rig
        .builder(rig.store.clone())
        .worker_name("newer")
        .job_handler(grants.clone())
        .build()
        .unwrap();
    let older = rig
        .builder(rig.store.clone())
        .worker_name("older")
        .build()
        .unwrap();
    let now = rig.clock.now();
    let ok = newer
        .enqueue_job("grant_monthly", "m-1", serde_json::json!({}), now)
        .await
        .unwrap();
    assert_eq!(
        newer
            .enqueue_job("grant_monthly", "m-1", serde_json::json!({}), now)
            .await
            .unwrap(),
        ok
    );
    let bad = newer
        .enqueue_job(
            "grant_monthly",
            "m-2",
            serde_json::json!({ "answer": "permanent" }),
            now,
        )
        .await
        .unwrap();
    let flaky = newer
        .enqueue_job(
            "grant_monthly",
            "m-3",
            serde_json::json!({ "answer": "transient" }),
            now,
        )
        .await
        .unwrap();
    assert!(matches!(
        older
            .enqueue_job("grant_monthly", "m-4", serde_json::json!({}), now)
            .await,
        Err(Error::InvalidInput(_))
    ));

    let run = older.run_due_jobs(10).await.unwrap();
    assert_eq!((run.done, run.retried, run.dead), (0, 0, 0));
    for id in [ok, bad, flaky] {
        let job = rig.store.job(id).await.unwrap().unwrap();
        assert_eq!((job.status, job.attempts), (quanyi::JobStatus::Queued, 0));
    }

    let run = newer.run_due_jobs(10).await.unwrap();
    assert_eq!((run.done, run.retried, run.dead), (1, 1, 1));
    assert_eq!(grants.ran.lock().len(), 3);
    let job = |id| {
        let store = rig.store.clone();
        async move { store.job(id).await.unwrap().unwrap() }
    };
    assert_eq!(job(ok).await.status, quanyi::JobStatus::Done);
    assert_eq!(
        job(bad).await.status,
        quanyi::JobStatus::Dead {
            reason: "no such plan".into()
        }
    );
    let retried = job(flaky).await;
    assert_eq!(retried.status, quanyi::JobStatus::Queued);
    assert_eq!(retried.last_error.as_deref(), Some("ledger busy"));
    assert!(retried.run_at > now);
    assert_eq!(rig.store.dead_jobs(&rig.tenant, 10).await.unwrap().len(), 1);
}

/// A placement with an idempotency key: retries (racing, from two processes) answer the first
/// order; the key with another request is `idempotency_conflict` and changes nothing; values
/// outside the fingerprint may change; a refused placement keeps no record of its key; the
/// context is stored with the order and masked in its `Debug`.
pub async fn a_placement_retried_with_its_key_is_one_order(store: Arc<dyn Store>) {
    let rig = Rig::new(store);
    let (a, b) = (rig.shop(), rig.shop());
    let sku = card_sku(&a).await;
    import(&a, sku, &["IDEM-0001", "IDEM-0002", "IDEM-0003"]).await;
    let context = quanyi::OrderContext::new(quanyi::Channel::MiniProgram)
        .client_ip("203.0.113.7".parse().unwrap())
        .device_id("device-5c2e91f7")
        .user_agent("MicroMessenger/8.0")
        .attribute("campaign", "double-12");
    let request = quanyi::PlaceOrder::new(member("ona"), vec![CartLine::new(sku, 1)])
        .idempotency_key("ona-checkout-1")
        .context(context.clone());
    let tasks: Vec<_> = (0..10)
        .map(|n| {
            let shop = if n % 2 == 0 { a.clone() } else { b.clone() };
            let request = request.clone();
            tokio::spawn(async move { shop.place(request).await.unwrap() })
        })
        .collect();
    let mut orders = Vec::new();
    for t in tasks {
        orders.push(t.await.unwrap());
    }
    let first = orders[0].clone();
    assert!(orders.iter().all(|o| o.id() == first.id()));
    assert_eq!(first.context(), &context);
    let stored = a.order(first.id()).await.unwrap();
    assert_eq!(stored.context(), &context);
    let placed_events = rig
        .store
        .aggregate_events(&rig.tenant, "order", &first.id().to_string())
        .await
        .unwrap();
    assert!(!placed_events.is_empty());
    assert!(
        placed_events
            .iter()
            .all(|e| e.correlation() == "placement:ona-checkout-1")
    );
    let shown = format!("{stored:?}");
    assert!(!shown.contains("203.0.113.7") && !shown.contains("device-5c2e91f7"));
    assert!(shown.contains("203.0.113.*"));
    let stock = a.stock().count(sku).await.unwrap();
    assert_eq!((stock.available, stock.reserved), (2, 1));

    // A value outside the fingerprint may change on a retry.
    let again = request
        .clone()
        .unfingerprinted("step_up_proof", "otp-123456");
    assert_eq!(b.place(again).await.unwrap().id(), first.id());
    // Another request under the key: refused, nothing changes.
    for other in [
        quanyi::PlaceOrder::new(member("ona"), vec![CartLine::new(sku, 2)]),
        quanyi::PlaceOrder::new(member("pat"), vec![CartLine::new(sku, 1)]),
        quanyi::PlaceOrder::new(member("ona"), vec![CartLine::new(sku, 1)])
            .context(context.clone().attribute("campaign", "other")),
    ] {
        match a.place(other.idempotency_key("ona-checkout-1")).await {
            Err(Error::IdempotencyConflict { order }) => assert_eq!(order, first.id()),
            other => panic!("expected idempotency_conflict, got {other:?}"),
        }
    }
    assert_eq!(a.stock().count(sku).await.unwrap().reserved, 1);
    // Malformed keys and contexts are refused before anything is read.
    for key in ["", "has space", &"k".repeat(201)] {
        let bad = quanyi::PlaceOrder::new(member("ona"), vec![CartLine::new(sku, 1)])
            .idempotency_key(key);
        assert_eq!(a.place(bad).await.unwrap_err().code(), "invalid_input");
    }
    let bad = quanyi::PlaceOrder::new(member("ona"), vec![CartLine::new(sku, 1)])
        .context(quanyi::OrderContext::default().user_agent("evil\u{0}agent"));
    assert_eq!(a.quote(&bad).await.unwrap_err().code(), "invalid_context");
    assert_eq!(a.place(bad).await.unwrap_err().code(), "invalid_context");
    // A quote takes the request a checkout places and writes nothing, key or not.
    let asked = quanyi::PlaceOrder::new(member("ona"), vec![CartLine::new(sku, 2)])
        .idempotency_key("ona-quote")
        .context(context.clone());
    let quote = a.quote(&asked).await.unwrap();
    assert_eq!(quote.lines.len(), 1);
    assert_eq!(quote.total, quote.lines[0].check.amount);
    assert_eq!(quote.lines[0].check.quantity, 2);
    assert_eq!(a.quote(&asked).await.unwrap().total, quote.total);
    assert_eq!(a.stock().count(sku).await.unwrap().reserved, 1);
    // A refused placement keeps no record of its key: the retry is decided afresh.
    let big = quanyi::PlaceOrder::new(member("quinn"), vec![CartLine::new(sku, 3)])
        .idempotency_key("quinn-1");
    assert_eq!(
        a.place(big.clone()).await.unwrap_err().code(),
        "out_of_stock"
    );
    import(&a, sku, &["IDEM-0004"]).await;
    let placed = a.place(big.clone()).await.unwrap();
    assert_eq!(b.place(big).await.unwrap().id(), placed.id());
    assert_eq!(a.stock().count(sku).await.unwrap().available, 0);
}

/// A consumer that records the events it handled.
struct Collector {
    name: &'static str,
    start: quanyi::StartAt,
    seen: Mutex<Vec<quanyi::crates::core::EventId>>,
}

impl Collector {
    fn new(name: &'static str, start: quanyi::StartAt) -> Arc<Self> {
        Arc::new(Collector {
            name,
            start,
            seen: Mutex::new(Vec::new()),
        })
    }
}

#[async_trait::async_trait]
impl quanyi::EventConsumer for Collector {
    fn name(&self) -> &str {
        self.name
    }

    fn start(&self) -> quanyi::StartAt {
        self.start
    }

    async fn handle(
        &self,
        shop: &Shop,
        events: &[quanyi::FeedEvent],
    ) -> Result<(), quanyi::JobError> {
        assert!(events.iter().all(|e| &e.event.tenant == shop.tenant()));
        self.seen.lock().extend(events.iter().map(|e| e.event.id));
        Ok(())
    }
}

/// Runs a shop's consumers until `collector` has seen every id of `want` (a write still in
/// progress elsewhere holds the feed back for a moment on PostgreSQL).
async fn consume_until(shop: &Shop, collector: &Collector, want: &[quanyi::crates::core::EventId]) {
    for _ in 0..100_000 {
        if want.iter().all(|id| collector.seen.lock().contains(id)) {
            return;
        }
        shop.run_consumers(16).await.unwrap();
        tokio::task::yield_now().await;
    }
    panic!("consumer {} never saw every event", collector.name);
}

/// Durable consumers read the tenant's feed from a cursor in the store: one that starts at the
/// beginning sees the events written before it first ran, one that starts at now does not;
/// after a restart (a new process) both resume at their cursors and see each event once.
pub async fn a_restarted_consumer_resumes_at_its_cursor(store: Arc<dyn Store>) {
    let rig = Rig::new(store);
    let setup = rig.shop();
    let sku = card_sku(&setup).await;
    import(&setup, sku, &["FEED-0001", "FEED-0002"]).await;
    let first = setup
        .place_order(&member("una"), &[CartLine::new(sku, 1)])
        .await
        .unwrap();
    let ids_of = |order: quanyi::OrderId| {
        let (store, tenant) = (rig.store.clone(), rig.tenant.clone());
        async move {
            store
                .aggregate_events(&tenant, "order", &order.to_string())
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.id)
                .collect::<Vec<_>>()
        }
    };
    let before = ids_of(first.id()).await;

    let (all, late) = (
        Collector::new("analytics", quanyi::StartAt::Beginning),
        Collector::new("messages", quanyi::StartAt::Now),
    );
    let process = |all: Arc<Collector>, late: Arc<Collector>| {
        rig.builder(rig.store.clone())
            .consumer(all)
            .consumer(late)
            .build()
            .unwrap()
    };
    let alone = |c: Arc<Collector>| rig.builder(rig.store.clone()).consumer(c).build().unwrap();
    consume_until(&alone(all.clone()), &all, &before).await;
    // Once the feed shows those events, a consumer that starts now takes its place after them.
    let a = process(all.clone(), late.clone());
    a.run_consumers(16).await.unwrap();
    a.run_consumers(16).await.unwrap();
    assert!(
        late.seen.lock().is_empty(),
        "a consumer that starts now skips the past"
    );

    // A new process: its consumers resume where the first stopped.
    let (all2, late2) = (
        Collector::new("analytics", quanyi::StartAt::Beginning),
        Collector::new("messages", quanyi::StartAt::Now),
    );
    let b = process(all2.clone(), late2.clone());
    let second = b
        .place_order(&member("vic"), &[CartLine::new(sku, 1)])
        .await
        .unwrap();
    let after = ids_of(second.id()).await;
    consume_until(&b, &all2, &after).await;
    consume_until(&b, &late2, &after).await;
    for c in [&all2, &late2] {
        let seen = c.seen.lock().clone();
        assert!(seen.iter().all(|id| !before.contains(id)), "nothing twice");
        assert_eq!(
            seen.iter().collect::<std::collections::HashSet<_>>().len(),
            seen.len()
        );
    }
    assert!(all.seen.lock().len() >= before.len());
    assert!(matches!(
        rig.builder(rig.store.clone())
            .consumer(Collector::new("twice", quanyi::StartAt::Now))
            .consumer(Collector::new("twice", quanyi::StartAt::Now))
            .build(),
        Err(Error::InvalidInput(_))
    ));
}

/// The operator the key commands of these tests run as.
fn admin() -> quanyi::Actor {
    quanyi::Actor::new("key-admin", "admin").unwrap()
}
