//! Validated names of the supplier side: [`SupplierId`], [`ProductCode`] and our idempotency
//! key [`RequestId`]. They live here, beside the other ids, so that goods (their supplier
//! routes), orders (their supplier calls) and the supplier port all hold the same types.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{IdError, OrderId};

type Result<T> = std::result::Result<T, IdError>;

/// The longest [`SupplierId`], [`ProductCode`] or [`RequestId`], in bytes.
pub const MAX_CODE_LEN: usize = 64;

fn valid_supplier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_CODE_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}

fn valid_code(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_CODE_LEN && s.bytes().all(|b| b.is_ascii_graphic())
}

macro_rules! define_code {
    ($(#[$doc:meta])* $name:ident, $what:literal, $valid:ident, $rule:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps the text.
            ///
            /// # Errors
            #[doc = concat!("[`IdError`] unless the text is ", $rule, ".")]
            pub fn new(text: impl Into<String>) -> Result<Self> {
                let text = text.into();
                if $valid(&text) {
                    Ok($name(text))
                } else {
                    Err(IdError::new($what, &text))
                }
            }

            /// The text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self> {
                $name::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self> {
                $name::new(s)
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }
    };
}

define_code!(
    /// Names a supplier channel inside one host: 1 to 64 ASCII letters, digits and `_ - . :`.
    ///
    /// ```
    /// use quanyi_core::SupplierId;
    ///
    /// let id = SupplierId::new("acme-cards")?;
    /// assert_eq!(id.as_str(), "acme-cards");
    /// assert!(SupplierId::new("acme cards").is_err());
    /// # Ok::<(), quanyi_core::IdError>(())
    /// ```
    SupplierId,
    "supplier id",
    valid_supplier,
    "1 to 64 ASCII letters, digits and `_ - . :`"
);

define_code!(
    /// The supplier's own code for a product: 1 to 64 printable ASCII characters, no spaces.
    ProductCode,
    "product code",
    valid_code,
    "1 to 64 printable ASCII characters without spaces"
);

define_code!(
    /// Our idempotency key for one request to one supplier: 1 to 64 printable ASCII characters,
    /// no spaces.
    ///
    /// Build it with [`RequestId::for_line`] so a retry of the same order line on the same
    /// supplier carries the same id and the supplier returns its first result instead of doing
    /// the work again. [`RequestId::new`] is for ids read back from callbacks and statements.
    RequestId,
    "request id",
    valid_code,
    "1 to 64 printable ASCII characters without spaces"
);

impl RequestId {
    /// The deterministic request id of order line `line` sent to `supplier`.
    ///
    /// 44 lower-case hex digits: the order's UUID (32), the line number (4) and the first four
    /// bytes of SHA-256 of the supplier id (8). Fixed width, so distinct inputs never run into
    /// each other, and plain hex, so suppliers that accept only alphanumeric ids take it.
    /// Another supplier gets another id for the same line, so a supplier never sees an id that
    /// a different channel may already have acted on.
    ///
    /// ```
    /// use quanyi_core::OrderId;
    /// use quanyi_core::{RequestId, SupplierId};
    ///
    /// let order: OrderId = "ord_0190c8f0e0e07c4c8a1b2c3d4e5f6a7b".parse()?;
    /// let acme = SupplierId::new("acme")?;
    /// let id = RequestId::for_line(order, 1, &acme);
    /// assert_eq!(id, RequestId::for_line(order, 1, &acme));
    /// assert_ne!(id, RequestId::for_line(order, 2, &acme));
    /// assert_eq!(id.as_str().len(), 44);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn for_line(order: OrderId, line: u16, supplier: &SupplierId) -> RequestId {
        let digest = Sha256::digest(supplier.as_str().as_bytes());
        let mut text = format!("{}{line:04x}", order.as_uuid().simple());
        for byte in &digest[..4] {
            text.push_str(&format!("{byte:02x}"));
        }
        RequestId(text)
    }

    /// The order and line of an id made by [`RequestId::for_line`], so a supplier's callback can
    /// be routed to its line without an index. `None` for ids of another shape.
    pub fn line(&self) -> Option<(OrderId, u16)> {
        let text = self.0.as_str();
        if text.len() != 44 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let order = uuid::Uuid::try_parse(text.get(..32)?).ok()?;
        let line = u16::from_str_radix(text.get(32..36)?, 16).ok()?;
        Some((OrderId::from_uuid(order), line))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn check_supplier(text: &str, ok: bool) {
        assert_eq!(SupplierId::new(text).is_ok(), ok, "{text:?}");
    }

    fn check_code(text: &str, ok: bool) {
        assert_eq!(ProductCode::new(text).is_ok(), ok, "{text:?}");
        assert_eq!(RequestId::new(text).is_ok(), ok, "{text:?}");
    }

    #[test]
    fn request_ids_name_their_line() {
        let order = OrderId::generate(chrono::Utc::now(), &mut rand::thread_rng());
        let supplier = SupplierId::new("acme").unwrap();
        let id = RequestId::for_line(order, 7, &supplier);
        assert_eq!(id.line(), Some((order, 7)));
        for other in ["abc", "zz", &"g".repeat(44)] {
            assert_eq!(RequestId::new(other).unwrap().line(), None);
        }
    }

    #[test]
    fn supplier_ids() {
        let long = "a".repeat(64);
        let too_long = "a".repeat(65);
        for (text, ok) in [
            ("acme", true),
            ("acme-cards_v2.cn:1", true),
            (long.as_str(), true),
            ("", false),
            (too_long.as_str(), false),
            ("a b", false),
            ("a@b", false),
            ("渠道", false),
            ("a\n", false),
        ] {
            check_supplier(text, ok);
        }
    }

    #[test]
    fn product_codes_and_request_ids() {
        let long = "x".repeat(64);
        let too_long = "x".repeat(65);
        for (text, ok) in [
            ("QQ-VIP-30D", true),
            ("sku#12/a?b=c", true),
            (long.as_str(), true),
            ("", false),
            (too_long.as_str(), false),
            ("a b", false),
            ("a\tb", false),
            ("话费100", false),
        ] {
            check_code(text, ok);
        }
    }

    #[test]
    fn errors_quote_clipped_input() {
        let err = SupplierId::new("bad id\n").unwrap_err();
        assert_eq!(err.to_string(), "invalid supplier id: bad id\\n");
    }

    #[test]
    fn request_ids_are_deterministic_and_distinct() {
        let order: OrderId = "ord_0190c8f0e0e07c4c8a1b2c3d4e5f6a7b".parse().unwrap();
        let other: OrderId = "ord_0190c8f0e0e07c4c8a1b2c3d4e5f6a7c".parse().unwrap();
        let a = SupplierId::new("a").unwrap();
        let b = SupplierId::new("b").unwrap();
        let mut seen = HashSet::new();
        for o in [order, other] {
            for line in [0, 1, 2, u16::MAX] {
                for s in [&a, &b] {
                    let id = RequestId::for_line(o, line, s);
                    assert_eq!(id, RequestId::for_line(o, line, s));
                    assert_eq!(id.as_str().len(), 44);
                    assert!(id.as_str().bytes().all(|c| c.is_ascii_hexdigit()));
                    assert_eq!(RequestId::new(id.as_str()).unwrap(), id);
                    assert!(seen.insert(id));
                }
            }
        }
        assert_eq!(
            RequestId::for_line(order, 1, &a).as_str(),
            format!("0190c8f0e0e07c4c8a1b2c3d4e5f6a7b0001{}", &sha_hex("a")[..8])
        );
    }

    fn sha_hex(s: &str) -> String {
        Sha256::digest(s.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    #[test]
    fn serde_validates() {
        let id: SupplierId = serde_json::from_str("\"acme\"").unwrap();
        assert_eq!(id.as_str(), "acme");
        assert!(serde_json::from_str::<SupplierId>("\"a b\"").is_err());
    }
}
