#![doc = include_str!("../README.md")]
#![deny(clippy::float_arithmetic)]

mod account;
mod error;
mod goods;
mod kind;
mod terms;

pub use account::{AccountRule, MAX_ACCOUNT_CHARS, MAX_PATTERN_CHARS};
pub use error::{Error, Result};
pub use goods::{
    Goods, GoodsDraft, MAX_CATEGORIES, MAX_CATEGORY_CHARS, MAX_QUANTITY, MAX_SKU_NAME_CHARS,
    MAX_SKUS, MAX_TITLE_CHARS, PurchaseCheck, PurchaseLimits, Shelf, Sku, SkuDraft, StockSource,
};
pub use kind::{BundleComponent, GoodsKind, KindTag, MAX_BUNDLE_COMPONENTS};
pub use terms::{MAX_ROUTES, MembershipTerms, SaleTerms, SupplierRoute};

#[cfg(test)]
mod tests;
