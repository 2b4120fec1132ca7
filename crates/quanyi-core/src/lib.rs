#![doc = include_str!("../README.md")]
#![deny(clippy::float_arithmetic)]

mod actor;
mod calendar;
mod clock;
mod error;
mod event;
mod id;
mod money;
mod supplier_ids;
pub mod text;

pub use actor::{Actor, MAX_ACTOR_NAME, MAX_ROLE};
pub use calendar::Calendar;
pub use chrono_tz;
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::ErrorKind;
pub use event::{DomainEvent, EventEnvelope, Payload};
pub use id::{
    AuditId, BatchId, CardId, EventId, GoodsId, IdError, IdSequence, JobId, MAX_NAME_LEN, MemberId,
    OrderId, SkuId, TenantId, uuid_v7, uuid_v7_sequence,
};
pub use money::{Currency, MAX_EXPONENT, Money, MoneyError, Rounding};
pub use supplier_ids::{MAX_CODE_LEN, ProductCode, RequestId, SupplierId};

pub use chrono;
pub use rust_decimal::Decimal;
