#![doc = include_str!("../README.md")]

mod error;
pub mod memory;
mod model;
mod ports;
mod pricing;

pub use error::{Error, GOODS_CHANGED, PRICING_CHANGED, Result};
pub use memory::MemoryStore;
pub use model::{
    AuditAction, AuditOutcome, AuditRecord, CONFLICTING_REPEAT, CardState, Claim, DestroyOutcome,
    GoodsVersion, HeldCard, IndexChange, InsertCardsOutcome, Job, JobStatus, MAX_CLAIM_KEY,
    MAX_CLAIM_SCOPE, MAX_CLAIM_VALUE, MemberLimit, NewCard, NewJob, NewOrder, NoticeDisposition,
    OrderChange, PaymentNotice, PaymentWrite, RecordOutcome, Reindexed, Reservation, StockCount,
    StoredCard, Trail,
};
pub use model::{BudgetTake, PaidRefund, RefundWrite, check_paid};
pub use model::{FeedEvent, FeedPosition, MAX_CONSUMER_NAME, check_consumer_name};
pub use model::{MAX_SEARCH_PAGE, OrderCursor, OrderQuery, placed_at, search_in_pages};
pub use ports::{
    AuditStore, EventStore, GoodsStore, JobStore, KeyRingStore, OrderStore, PaymentStore, Store,
    VaultStore,
};
pub use pricing::{
    COUPON_BUDGET, EntryChange, IssuedCoupon, MAX_PRICING_BODY, MAX_PRICING_ID, PricingEntry,
    PricingKind, PricingRevision, PricingSnapshot, PricingStore, PricingWrite, check_coupons,
};
