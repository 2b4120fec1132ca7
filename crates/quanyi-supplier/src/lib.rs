#![doc = include_str!("../README.md")]
#![deny(clippy::float_arithmetic)]

mod backoff;
mod breaker;
mod error;
mod port;
mod reconcile;
mod route;
mod stock;

pub use backoff::{Backoff, Jitter};
pub use breaker::{BreakerConfig, BreakerState, Breakers, CircuitBreaker};
pub use error::{FailureOutcome, Result, SupplierError};
pub use port::{
    Availability, CallbackEvent, CallbackStatus, CancelOutcome, CardPurchase, PurchaseOutcome,
    RawCallback, RequestStatus, StatementRecord, StatementStatus, Supplier, SupplierBalance,
    SupplierCancel, SupplierStock, TopUpOutcome, TopUpRequest,
};
pub use quanyi_core::{MAX_CODE_LEN, ProductCode, RequestId, SupplierId};
pub use reconcile::{OurRecord, Reconciliation, reconcile};
pub use route::{Attempt, AttemptResult, MAX_ROUTES, Route, RoutePlan, Step, next_step};
pub use stock::{Freshness, StockCache};

pub use async_trait::async_trait;
