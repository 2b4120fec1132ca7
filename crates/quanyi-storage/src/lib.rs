#![doc = include_str!("../README.md")]

mod error;
pub mod memory;
mod model;
mod ports;

pub use error::{Error, GOODS_CHANGED, Result};
pub use memory::MemoryStore;
pub use model::{
    AuditAction, AuditOutcome, AuditRecord, CardState, GoodsVersion, HeldCard, InsertCardsOutcome,
    Job, JobStatus, MemberLimit, NewCard, NewJob, NewOrder, NoticeDisposition, OrderChange,
    PaymentNotice, PaymentWrite, RecordOutcome, Reservation, StockCount, StoredCard,
};
pub use ports::{
    AuditStore, EventStore, GoodsStore, JobStore, KeyRingStore, OrderStore, PaymentStore, Store,
    VaultStore,
};
