//! Typed, time-ordered identifiers (UUID version 7) and validated external names.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::ErrorKind;

/// An identifier or name could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what}: {text}")]
pub struct IdError {
    what: &'static str,
    text: String,
}

impl IdError {
    pub(crate) fn new(what: &'static str, text: &str) -> Self {
        IdError {
            what,
            text: crate::text::clip(text),
        }
    }

    /// The driver-neutral kind of this error.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::Invalid
    }

    /// What was being parsed (`supplier id`, `time zone`...).
    pub fn what(&self) -> &'static str {
        self.what
    }

    /// The refused text, clipped and with control characters escaped.
    pub fn text(&self) -> &str {
        &self.text
    }
}

/// A new time-ordered UUID (version 7) from a timestamp and a random source.
pub fn uuid_v7(now: DateTime<Utc>, rng: &mut dyn RngCore) -> uuid::Uuid {
    let mut random = [0u8; 10];
    rng.fill_bytes(&mut random);
    let millis = u64::try_from(now.timestamp_millis()).unwrap_or(0);
    uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid()
}

/// `n` time-ordered UUIDs (version 7) that also sort in generation order within one
/// millisecond: a 26-bit counter, started at a random value below 2^25, fills the top of the
/// random bits (RFC 9562, method 1), and 48 random bits follow it.
pub fn uuid_v7_sequence(now: DateTime<Utc>, rng: &mut dyn RngCore, n: usize) -> Vec<uuid::Uuid> {
    let millis = u64::try_from(now.timestamp_millis()).unwrap_or(0);
    let mut start = [0u8; 4];
    rng.fill_bytes(&mut start);
    let mut counter = u32::from_be_bytes(start) & 0x01ff_ffff;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let mut random = [0u8; 10];
        rng.fill_bytes(&mut random[4..]);
        // Counter bits 25..22 | 21..14 | 13..8 | 7..0 go where the builder keeps them
        // (it overwrites only the version nibble and the two variant bits).
        random[0] = u8::try_from((counter >> 22) & 0x0f).unwrap_or(0);
        random[1] = u8::try_from((counter >> 14) & 0xff).unwrap_or(0);
        random[2] = u8::try_from((counter >> 8) & 0x3f).unwrap_or(0);
        random[3] = u8::try_from(counter & 0xff).unwrap_or(0);
        out.push(uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid());
        counter = (counter + 1) & 0x03ff_ffff;
    }
    out
}

/// The random bits below a version 7 UUID's variant bits.
const RAND_B: u128 = (1 << 62) - 1;

/// Time-ordered ids (UUID version 7) that also sort in the order one generator handed them
/// out, across threads: an id that would not sort after the last one becomes the last one plus
/// one (RFC 9562, monotonic random). Readers that keep ids in order, such as an event log, then
/// see them arrive in order.
#[derive(Debug, Default)]
pub struct IdSequence {
    last: std::sync::Mutex<u128>,
}

impl IdSequence {
    /// A generator that has handed out nothing yet.
    pub fn new() -> Self {
        IdSequence::default()
    }

    /// A new id that sorts after every id this generator handed out before.
    pub fn next(&self, now: DateTime<Utc>, rng: &mut dyn RngCore) -> uuid::Uuid {
        let candidate = uuid_v7(now, rng).as_u128();
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // The last id plus one keeps its time, version and variant unless its random bits
        // are all ones, which a random id almost never is; then the fresh id is used as it is.
        let id = if candidate > *last || *last & RAND_B == RAND_B {
            candidate
        } else {
            *last + 1
        };
        *last = (*last).max(id);
        uuid::Uuid::from_u128(id)
    }
}

macro_rules! define_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        ///
        /// Time-ordered (UUID v7); shown as the prefix followed by 32 hex digits.
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
        #[serde(try_from = "String")]
        pub struct $name(uuid::Uuid);

        // Written as its text straight into the output, without an intermediate string.
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl $name {
            /// The text prefix of this id type.
            pub const PREFIX: &'static str = $prefix;

            /// A new id ordered by `now`, with random bits from `rng`.
            pub fn generate(now: DateTime<Utc>, rng: &mut dyn RngCore) -> Self {
                $name(uuid_v7(now, rng))
            }

            /// `n` new ids ordered by `now` that also sort in generation order.
            pub fn generate_sequence(now: DateTime<Utc>, rng: &mut dyn RngCore, n: usize) -> Vec<Self> {
                uuid_v7_sequence(now, rng, n).into_iter().map($name).collect()
            }

            /// A new id from `sequence`: it sorts after every id `sequence` handed out before.
            pub fn next_in(sequence: &IdSequence, now: DateTime<Utc>, rng: &mut dyn RngCore) -> Self {
                $name(sequence.next(now, rng))
            }

            /// Wraps an existing UUID.
            pub const fn from_uuid(id: uuid::Uuid) -> Self {
                $name(id)
            }

            /// The UUID inside.
            pub const fn as_uuid(&self) -> &uuid::Uuid {
                &self.0
            }

            /// The 16 bytes of the UUID.
            pub const fn as_bytes(&self) -> &[u8; 16] {
                self.0.as_bytes()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}_{}", $prefix, self.0.simple())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                let rest = s
                    .strip_prefix($prefix)
                    .and_then(|r| r.strip_prefix('_'))
                    .ok_or_else(|| IdError::new(stringify!($name), s))?;
                if rest.len() != 32 {
                    return Err(IdError::new(stringify!($name), s));
                }
                uuid::Uuid::try_parse(rest)
                    .map($name)
                    .map_err(|_| IdError::new(stringify!($name), s))
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                s.parse()
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.to_string()
            }
        }
    };
}

define_id!(
    /// Identifies a good (a product page grouping SKUs).
    GoodsId,
    "gds"
);
define_id!(
    /// Identifies a SKU, the unit that is priced, stocked and bought.
    SkuId,
    "sku"
);
define_id!(
    /// Identifies an order.
    OrderId,
    "ord"
);
define_id!(
    /// Identifies one card key held in the vault.
    CardId,
    "card"
);
define_id!(
    /// Identifies a stored event.
    EventId,
    "evt"
);
define_id!(
    /// Identifies a durable job.
    JobId,
    "job"
);
define_id!(
    /// Identifies an audit record.
    AuditId,
    "aud"
);
define_id!(
    /// Identifies an import batch of card keys.
    BatchId,
    "bat"
);

/// The longest external name (tenant, member, provider transaction id) accepted.
pub const MAX_NAME_LEN: usize = 64;

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'@'))
}

macro_rules! define_name {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        ///
        /// 1 to 64 characters of ASCII letters, digits and `_ - . : @`.
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
        #[serde(try_from = "String")]
        pub struct $name(std::sync::Arc<str>);

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl $name {
            /// Validates and wraps a name.
            ///
            /// # Errors
            /// [`IdError`] when the text is empty, too long or has other characters.
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                if valid_name(&s) {
                    Ok($name(s.into()))
                } else {
                    Err(IdError::new(stringify!($name), &s))
                }
            }

            /// The name as text.
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
            fn from_str(s: &str) -> Result<Self, IdError> {
                $name::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                $name::new(s)
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0.as_ref().to_owned()
            }
        }
    };
}

define_name!(
    /// The shop (tenant) an aggregate belongs to. Single-shop hosts use [`TenantId::default`].
    TenantId
);
define_name!(
    /// The host's identifier of a member (buyer).
    MemberId
);

impl TenantId {
    /// The name of the default tenant.
    pub const DEFAULT: &'static str = "default";
}

impl Default for TenantId {
    fn default() -> Self {
        TenantId(TenantId::DEFAULT.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn ids_round_trip_and_order_by_time() {
        let mut rng = rand::thread_rng();
        let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let a = OrderId::generate(t0, &mut rng);
        let b = OrderId::generate(t0 + chrono::Duration::milliseconds(1), &mut rng);
        assert!(a < b);
        let text = a.to_string();
        assert!(text.starts_with("ord_"));
        assert_eq!(text.parse::<OrderId>().unwrap(), a);
        assert_eq!(serde_json::to_string(&a).unwrap(), format!("\"{text}\""));
    }

    #[test]
    fn sequences_sort_in_generation_order() {
        let mut rng = rand::thread_rng();
        let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        for _ in 0..20 {
            let ids = CardId::generate_sequence(t0, &mut rng, 1000);
            assert!(ids.windows(2).all(|w| w[0] < w[1]));
            assert!(ids.iter().all(|id| id.as_uuid().get_version_num() == 7));
            assert_eq!(
                ids[0].as_uuid().get_timestamp(),
                ids[999].as_uuid().get_timestamp()
            );
        }
    }

    #[test]
    fn a_sequence_hands_out_ids_in_order_across_threads_and_a_clock_going_back() {
        let seq = std::sync::Arc::new(IdSequence::new());
        let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        // Two threads, one millisecond: each thread's ids sort in the order it took them.
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let seq = seq.clone();
                std::thread::spawn(move || {
                    let mut rng = rand::thread_rng();
                    (0..2_000)
                        .map(|_| EventId::next_in(&seq, t0, &mut rng))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in threads {
            let ids = t.join().unwrap();
            assert!(ids.windows(2).all(|w| w[0] < w[1]));
            all.extend(ids);
        }
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 4_000, "no id twice");
        // A clock set back still gives a later id, still a valid version 7 UUID.
        let mut rng = rand::thread_rng();
        let last = *all.last().unwrap();
        let back = EventId::next_in(&seq, t0 - chrono::Duration::hours(1), &mut rng);
        assert!(back > last);
        assert_eq!(back.as_uuid().get_version_num(), 7);
        assert_eq!(back.as_uuid().get_variant(), uuid::Variant::RFC4122);
        assert_eq!(back.to_string().parse::<EventId>().unwrap(), back);
    }

    #[test]
    fn bad_ids_are_errors() {
        for bad in [
            "",
            "ord_",
            "sku_0190c8f0e0e07c4c8a1b2c3d4e5f6a7b",
            "ord_xyz",
            "ord_0190c8f0-e0e0-7c4c-8a1b-2c3d4e5f6a7b",
        ] {
            assert!(bad.parse::<OrderId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn names_are_validated() {
        assert!(TenantId::new("shop-1").is_ok());
        assert_eq!(TenantId::default().as_str(), "default");
        for bad in [
            "",
            "a b",
            "x".repeat(65).as_str(),
            "租户",
            "a\nb",
            "'; drop table",
        ] {
            assert!(MemberId::new(bad).is_err(), "{bad:?}");
        }
    }
}
