#![doc = include_str!("../../../README.md")]

mod after_sales;
mod cards;
mod catalog;
mod checkout;
mod closing;
mod consumers;
mod error;
mod events;
mod fulfil;
mod jobs;
mod keys;
mod memo;
mod operators;
mod paying;
mod payments;
mod placement;
mod price_stage;
mod promotions;
mod reindex;
mod reports;
mod sales;
mod shop;
mod supply;
mod worker;

pub use after_sales::{
    DEFAULT_REFUND_REVIEW_HOURS, QueuedRefund, RefundPart, RefundQueuePage, RefundReport,
    RefundTotal,
};
pub use cards::{BadLines, DuplicateLine, DuplicateOf, ImportReport, Revealed, RevealedCard};
pub use checkout::DecideStage;
pub use consumers::{ConsumerRun, EventConsumer, StartAt};
pub use error::{Error, Result};
pub use jobs::{
    DEFAULT_EXPIRY_SWEEP_SECONDS, EXPIRE_UNPAID_SWEEP, JobError, JobHandler, JobOutcome, JobRun,
    MAX_JOB_ATTEMPTS, PAY_REFUNDS_SWEEP, SWEEP_JOB_PREFIX, Sweep, SweepPeriod,
};
pub use keys::DestroyReport;
pub use operators::{FoundCard, HeldResolution, OrderPage, Orders, Stock};
pub use paying::{PaymentNotification, PaymentReceipt};
pub use payments::{GatewayError, PaymentGateway, RefundReceipt, RefundRequest};
pub use placement::{
    MAX_IDEMPOTENCY_KEY, MAX_PROMOTION_CODE_CHARS, MAX_PROMOTION_CODES, PLACEMENT_CLAIM_SCOPE,
    PlaceOrder,
};
/// The pricing engine: rules, contexts and explained quotes.
pub use promotions::{
    CouponSource, EntryVersion, MAX_COUPONS_PER_ISSUE, MemberCoupon, PricingRules, Promotions,
};
pub use quanyi_pricing as pricing;
pub use reindex::{DuplicateCards, ReindexReport};
pub use sales::{
    CartLine, DELIVER_ORDER_JOB, FREE_ORDER_PROVIDER, MAX_CART_LINES, MAX_LINE_QUANTITY, Quote,
    QuoteLine,
};
pub use shop::{
    DEFAULT_KEY_RING_REFRESH_SECONDS, DEFAULT_RESERVATION_TTL_MINUTES,
    DEFAULT_SUPPLIER_DEADLINE_HOURS, OverduePolicy, Shop, ShopBuilder,
};
pub use supply::CallbackOutcome;
pub use worker::Worker;

pub use quanyi_core::{
    Actor, Calendar, CardId, Clock, Currency, Decimal, ErrorKind, EventEnvelope, GoodsId,
    ManualClock, MemberId, Money, OrderId, Payload, Rounding, SkuId, SystemClock, TenantId, chrono,
    chrono_tz,
};
pub use quanyi_goods::{
    AccountRule, BundleComponent, Goods, GoodsDraft, GoodsKind, KindTag, MembershipTerms,
    PurchaseLimits, SaleTerms, Shelf, Sku, SkuDraft, StockSource, SupplierRoute,
};
pub use quanyi_order::{
    ALLOW_ALL_STAGE, Asker, AttemptOutcome, Channel, Decision, LineAttempt, LineStatus, Order,
    OrderContext, OrderLine, OrderStatus, PackTerms, PriceAdjustment, PriceSource, Refund,
    RefundDecision, RefundLine, RefundRule, RefundStatus, Verdict,
};
pub use quanyi_storage::{
    CardState, FeedEvent, FeedPosition, IssuedCoupon, Job, JobStatus, MemoryStore, OrderCursor,
    OrderQuery, PaidRefund, PricingKind, PricingRevision, StockCount, Store,
};
pub use quanyi_supplier::{
    Availability, BreakerConfig, ProductCode, RawCallback, Reconciliation, RequestId, Supplier,
    SupplierId,
};
pub use quanyi_vault::{
    CardCode, CardKey, CardSecret, EnvKeyProvider, FileKeyProvider, ImportFormat, ImportOptions,
    IndexScheme, KeyId, KeyProvider, KeyState, RootKey, StaticKeyProvider,
};

#[cfg(feature = "postgres")]
pub use quanyi_storage_postgres::PgStore;
#[cfg(feature = "sqlite")]
pub use quanyi_storage_sqlite::SqliteStore;

/// The crates behind the facade, for hosts that need more than the re-exports.
pub mod crates {
    pub use quanyi_core as core;
    pub use quanyi_goods as goods;
    pub use quanyi_order as order;
    pub use quanyi_pricing as pricing;
    pub use quanyi_storage as storage;
    pub use quanyi_supplier as supplier;
    pub use quanyi_vault as vault;
}
