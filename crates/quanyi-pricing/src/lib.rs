#![doc = include_str!("../README.md")]
#![deny(clippy::float_arithmetic)]

mod error;
mod quote;
mod rules;

pub use error::PricingError;
pub use quote::{Adjustment, Applied, MissReason, Missed, PriceFrom, Quote, QuotedLine, quote};
pub use rules::{
    Applies, Budget, Cart, CartItem, Condition, Effect, FULL_PERCENT_BPS, ListKind, ListPrice,
    MemberFacts, PriceList, PricingContext, Promotion, Purchase, Rules, Stacking, Target,
    ValidRules, Window,
};
