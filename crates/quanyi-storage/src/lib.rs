#![doc = include_str!("../README.md")]

mod error;
pub mod memory;
mod model;
mod ports;

pub use error::{Error, Result};
pub use memory::MemoryStore;
pub use model::{
    AuditAction, AuditOutcome, AuditRecord, CardState, InsertCardsOutcome, Job, JobStatus,
    MemberLimit, NewCard, NewJob, NoticeDisposition, OrderChange, PaymentNotice, RecordOutcome,
    StockCount, StoredCard,
};
pub use ports::{
    AuditStore, EventStore, GoodsStore, JobStore, KeyRingStore, OrderStore, PaymentStore, Store,
    VaultStore,
};
