#![doc = include_str!("../README.md")]
#![deny(clippy::float_arithmetic)]

mod account;
mod error;
mod goods;
mod kind;

pub use account::{AccountRule, MAX_ACCOUNT_CHARS, MAX_PATTERN_CHARS};
pub use error::{Error, Result};
pub use goods::{
    Goods, GoodsDraft, MAX_QUANTITY, MAX_ROUTES, MAX_SKU_NAME_CHARS, MAX_SKUS, MAX_TITLE_CHARS,
    MembershipTerms, PurchaseCheck, PurchaseLimits, SaleTerms, Shelf, Sku, SkuDraft, StockSource,
    SupplierRoute,
};
pub use kind::{BundleComponent, GoodsKind, KindTag, MAX_BUNDLE_COMPONENTS};

#[cfg(test)]
mod tests;
