//! Money and currencies: integer minor units, checked arithmetic, explicit rounding and
//! allocation that always sums to the whole.

use std::fmt;
use std::str::FromStr;

use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};

use crate::ErrorKind;

/// Why a money operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MoneyError {
    /// The two amounts are in different currencies.
    #[error("currency mismatch: {left} and {right}")]
    CurrencyMismatch {
        /// Currency of the left operand.
        left: Currency,
        /// Currency of the right operand.
        right: Currency,
    },
    /// The result does not fit in 64-bit minor units.
    #[error("amount overflow")]
    Overflow,
    /// A currency code or exponent is not acceptable.
    #[error("invalid currency: {0}")]
    InvalidCurrency(String),
    /// An amount could not be parsed or has more decimals than the currency allows.
    #[error("invalid amount: {0}")]
    InvalidAmount(String),
    /// Allocation needs at least one weight and a positive weight sum.
    #[error("allocation needs at least one positive weight")]
    InvalidWeights,
}

impl MoneyError {
    /// The driver-neutral kind of this error.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::Invalid
    }
}

/// A currency with its ISO 4217 code and minor-unit exponent (CNY has 2, JPY has 0).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "CurrencyRepr", into = "CurrencyRef")]
pub struct Currency {
    code: [u8; 3],
    exponent: u8,
}

#[derive(Deserialize)]
struct CurrencyRepr {
    code: String,
    exponent: u8,
}

impl TryFrom<CurrencyRepr> for Currency {
    type Error = MoneyError;
    fn try_from(r: CurrencyRepr) -> Result<Self, MoneyError> {
        Currency::new(&r.code, r.exponent)
    }
}

/// The serialized form, borrowing nothing and allocating nothing.
#[derive(Serialize)]
struct CurrencyRef {
    code: CodeText,
    exponent: u8,
}

/// A currency's code written as a string.
struct CodeText(Currency);

impl Serialize for CodeText {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.0.code())
    }
}

impl From<Currency> for CurrencyRef {
    fn from(c: Currency) -> Self {
        CurrencyRef {
            code: CodeText(c),
            exponent: c.exponent,
        }
    }
}

/// The largest minor-unit exponent accepted.
pub const MAX_EXPONENT: u8 = 6;

impl Currency {
    /// Chinese yuan, 2 decimals.
    pub const CNY: Currency = Currency {
        code: *b"CNY",
        exponent: 2,
    };
    /// US dollar, 2 decimals.
    pub const USD: Currency = Currency {
        code: *b"USD",
        exponent: 2,
    };
    /// Euro, 2 decimals.
    pub const EUR: Currency = Currency {
        code: *b"EUR",
        exponent: 2,
    };
    /// Hong Kong dollar, 2 decimals.
    pub const HKD: Currency = Currency {
        code: *b"HKD",
        exponent: 2,
    };
    /// Japanese yen, no decimals.
    pub const JPY: Currency = Currency {
        code: *b"JPY",
        exponent: 0,
    };

    /// A currency from a three-letter upper-case code and its minor-unit exponent.
    ///
    /// # Errors
    /// [`MoneyError::InvalidCurrency`] when the code is not three ASCII upper-case letters or the
    /// exponent exceeds [`MAX_EXPONENT`].
    pub fn new(code: &str, exponent: u8) -> Result<Self, MoneyError> {
        let bytes = code.as_bytes();
        if bytes.len() != 3 || !bytes.iter().all(u8::is_ascii_uppercase) || exponent > MAX_EXPONENT
        {
            return Err(MoneyError::InvalidCurrency(crate::text::clip(code)));
        }
        Ok(Currency {
            code: [bytes[0], bytes[1], bytes[2]],
            exponent,
        })
    }

    /// The three-letter code.
    pub fn code(&self) -> &str {
        // The constructor only admits ASCII upper-case letters.
        std::str::from_utf8(&self.code).unwrap_or("???")
    }

    /// Number of decimals of the minor unit.
    pub fn exponent(&self) -> u8 {
        self.exponent
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// How to round a value that has more decimals than the currency's minor unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Rounding {
    /// Half to even (banker's rounding).
    HalfEven,
    /// Half away from zero.
    HalfUp,
    /// Toward zero (truncate).
    TowardZero,
    /// Away from zero.
    AwayFromZero,
    /// Toward negative infinity.
    Floor,
    /// Toward positive infinity.
    Ceiling,
}

impl Rounding {
    fn strategy(self) -> RoundingStrategy {
        match self {
            Rounding::HalfEven => RoundingStrategy::MidpointNearestEven,
            Rounding::HalfUp => RoundingStrategy::MidpointAwayFromZero,
            Rounding::TowardZero => RoundingStrategy::ToZero,
            Rounding::AwayFromZero => RoundingStrategy::AwayFromZero,
            Rounding::Floor => RoundingStrategy::ToNegativeInfinity,
            Rounding::Ceiling => RoundingStrategy::ToPositiveInfinity,
        }
    }
}

/// An amount of money in integer minor units of one currency. No floats, no panicking operators.
///
/// ```
/// use quanyi_core::{Currency, Money};
/// let price = Money::parse("19.90", Currency::CNY)?;
/// let total = price.checked_mul(3)?;
/// assert_eq!(total.to_string(), "59.70 CNY");
/// let parts = total.allocate(&[1, 1, 1])?;
/// assert_eq!(parts.iter().map(|m| m.minor()).sum::<i64>(), total.minor());
/// # Ok::<(), quanyi_core::MoneyError>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Money {
    minor: i64,
    currency: Currency,
}

impl Money {
    /// An amount given in minor units (fen for CNY).
    pub const fn from_minor(minor: i64, currency: Currency) -> Self {
        Money { minor, currency }
    }

    /// Zero in `currency`.
    pub const fn zero(currency: Currency) -> Self {
        Money { minor: 0, currency }
    }

    /// Parses a decimal string such as `"19.90"` exactly; more decimals than the currency has is an
    /// error (use [`Money::from_decimal`] to round).
    ///
    /// # Errors
    /// [`MoneyError::InvalidAmount`] for text that is not a decimal number or carries too many
    /// decimals; [`MoneyError::Overflow`] when it does not fit.
    pub fn parse(text: &str, currency: Currency) -> Result<Self, MoneyError> {
        let d = Decimal::from_str(text.trim())
            .map_err(|_| MoneyError::InvalidAmount(crate::text::clip(text)))?;
        if d.normalize().scale() > u32::from(currency.exponent) {
            return Err(MoneyError::InvalidAmount(crate::text::clip(text)));
        }
        Money::from_decimal(d, currency, Rounding::HalfEven)
    }

    /// Converts a decimal in major units, rounding to the minor unit as told.
    ///
    /// # Errors
    /// [`MoneyError::Overflow`] when the amount does not fit in 64-bit minor units.
    pub fn from_decimal(
        value: Decimal,
        currency: Currency,
        rounding: Rounding,
    ) -> Result<Self, MoneyError> {
        let rounded =
            value.round_dp_with_strategy(u32::from(currency.exponent), rounding.strategy());
        let scale = Decimal::from(10_i64.pow(u32::from(currency.exponent)));
        let minor = rounded
            .checked_mul(scale)
            .ok_or(MoneyError::Overflow)?
            .trunc();
        let minor = i64::try_from(minor).map_err(|_| MoneyError::Overflow)?;
        Ok(Money { minor, currency })
    }

    /// Amount in minor units.
    pub const fn minor(&self) -> i64 {
        self.minor
    }

    /// The currency.
    pub const fn currency(&self) -> Currency {
        self.currency
    }

    /// The amount in major units as an exact decimal.
    pub fn to_decimal(&self) -> Decimal {
        Decimal::new(self.minor, u32::from(self.currency.exponent))
    }

    /// True when the amount is zero.
    pub const fn is_zero(&self) -> bool {
        self.minor == 0
    }

    /// True when the amount is below zero.
    pub const fn is_negative(&self) -> bool {
        self.minor < 0
    }

    /// True when the amount is above zero.
    pub const fn is_positive(&self) -> bool {
        self.minor > 0
    }

    fn same_currency(&self, other: &Money) -> Result<(), MoneyError> {
        if self.currency == other.currency {
            Ok(())
        } else {
            Err(MoneyError::CurrencyMismatch {
                left: self.currency,
                right: other.currency,
            })
        }
    }

    /// `self + other`.
    ///
    /// # Errors
    /// [`MoneyError::CurrencyMismatch`] or [`MoneyError::Overflow`].
    pub fn checked_add(self, other: Money) -> Result<Money, MoneyError> {
        self.same_currency(&other)?;
        let minor = self
            .minor
            .checked_add(other.minor)
            .ok_or(MoneyError::Overflow)?;
        Ok(Money { minor, ..self })
    }

    /// `self - other`.
    ///
    /// # Errors
    /// [`MoneyError::CurrencyMismatch`] or [`MoneyError::Overflow`].
    pub fn checked_sub(self, other: Money) -> Result<Money, MoneyError> {
        self.same_currency(&other)?;
        let minor = self
            .minor
            .checked_sub(other.minor)
            .ok_or(MoneyError::Overflow)?;
        Ok(Money { minor, ..self })
    }

    /// `self * factor` for an integer factor such as a quantity.
    ///
    /// # Errors
    /// [`MoneyError::Overflow`].
    pub fn checked_mul(self, factor: i64) -> Result<Money, MoneyError> {
        let minor = self.minor.checked_mul(factor).ok_or(MoneyError::Overflow)?;
        Ok(Money { minor, ..self })
    }

    /// `-self`.
    ///
    /// # Errors
    /// [`MoneyError::Overflow`] for the most negative amount.
    pub fn checked_neg(self) -> Result<Money, MoneyError> {
        let minor = self.minor.checked_neg().ok_or(MoneyError::Overflow)?;
        Ok(Money { minor, ..self })
    }

    /// Multiplies by a decimal rate (a discount of 0.85, a tax of 0.06) and rounds as told.
    ///
    /// # Errors
    /// [`MoneyError::Overflow`].
    pub fn mul_rate(self, rate: Decimal, rounding: Rounding) -> Result<Money, MoneyError> {
        let value = self
            .to_decimal()
            .checked_mul(rate)
            .ok_or(MoneyError::Overflow)?;
        Money::from_decimal(value, self.currency, rounding)
    }

    /// Sums amounts that must all be in `currency`.
    ///
    /// # Errors
    /// [`MoneyError::CurrencyMismatch`] or [`MoneyError::Overflow`].
    pub fn sum<I: IntoIterator<Item = Money>>(
        items: I,
        currency: Currency,
    ) -> Result<Money, MoneyError> {
        items
            .into_iter()
            .try_fold(Money::zero(currency), Money::checked_add)
    }

    /// Splits the amount by integer weights. Every part gets its floor share; the leftover minor
    /// units go one each to the parts with the largest remainders (ties to the earlier part), so
    /// the parts always sum to the whole, a part with weight zero gets nothing, and no part of a
    /// non-negative amount is negative.
    ///
    /// # Errors
    /// [`MoneyError::InvalidWeights`] when `weights` is empty or sums to zero.
    pub fn allocate(self, weights: &[u64]) -> Result<Vec<Money>, MoneyError> {
        let total: u128 = weights.iter().map(|w| u128::from(*w)).sum();
        if total == 0 {
            return Err(MoneyError::InvalidWeights);
        }
        let negative = self.minor < 0;
        let amount = u128::from(self.minor.unsigned_abs());
        let mut shares = Vec::with_capacity(weights.len());
        let mut remainders = Vec::with_capacity(weights.len());
        let mut handed = 0u128;
        for (i, w) in weights.iter().enumerate() {
            let product = amount * u128::from(*w);
            let share = product / total;
            handed += share;
            shares.push(share);
            remainders.push((product % total, i));
        }
        let leftover = amount - handed;
        // Largest remainder first; equal remainders go to the earlier part.
        remainders.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        for (_, i) in remainders
            .iter()
            .take(usize::try_from(leftover).unwrap_or(usize::MAX))
        {
            shares[*i] += 1;
        }
        shares
            .into_iter()
            .map(|s| {
                let s = i64::try_from(s).map_err(|_| MoneyError::Overflow)?;
                Ok(Money {
                    minor: if negative { -s } else { s },
                    currency: self.currency,
                })
            })
            .collect()
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.to_decimal(), self.currency)
    }
}

impl fmt::Debug for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Money({} {})", self.to_decimal(), self.currency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cny(minor: i64) -> Money {
        Money::from_minor(minor, Currency::CNY)
    }

    #[test]
    fn allocation_table() {
        let cases: &[(i64, &[u64], &[i64])] = &[
            (100, &[1, 1, 1], &[34, 33, 33]),
            (5, &[1, 1, 1, 1], &[2, 1, 1, 1]),
            (1000, &[0, 1], &[0, 1000]),
            (2, &[3, 7], &[1, 1]),
            (0, &[5, 5], &[0, 0]),
            (-100, &[1, 1, 1], &[-34, -33, -33]),
            (5000, &[1990, 2990, 5010], &[996, 1496, 2508]),
        ];
        for (amount, weights, expected) in cases {
            let got: Vec<i64> = cny(*amount)
                .allocate(weights)
                .unwrap()
                .iter()
                .map(Money::minor)
                .collect();
            assert_eq!(&got, expected, "allocate {amount} by {weights:?}");
        }
    }

    #[test]
    fn allocation_refuses_empty_or_zero_weights() {
        assert_eq!(cny(10).allocate(&[]), Err(MoneyError::InvalidWeights));
        assert_eq!(cny(10).allocate(&[0, 0]), Err(MoneyError::InvalidWeights));
    }

    #[test]
    fn parse_and_display_table() {
        let cases: &[(&str, Currency, Result<&str, ()>)] = &[
            ("19.9", Currency::CNY, Ok("19.90 CNY")),
            (" 0.01 ", Currency::CNY, Ok("0.01 CNY")),
            ("100", Currency::JPY, Ok("100 JPY")),
            ("1.234", Currency::CNY, Err(())),
            ("1.5", Currency::JPY, Err(())),
            ("abc", Currency::CNY, Err(())),
            ("", Currency::CNY, Err(())),
            ("99999999999999999999999", Currency::CNY, Err(())),
        ];
        for (text, currency, expected) in cases {
            let got = Money::parse(text, *currency)
                .map(|m| m.to_string())
                .map_err(|_| ());
            assert_eq!(got.as_deref(), expected.as_deref(), "parse {text:?}");
        }
    }

    #[test]
    fn rounding_is_explicit() {
        let d = Decimal::new(12345, 3); // 12.345
        let cases = [
            (Rounding::HalfEven, 1234),
            (Rounding::HalfUp, 1235),
            (Rounding::TowardZero, 1234),
            (Rounding::AwayFromZero, 1235),
            (Rounding::Floor, 1234),
            (Rounding::Ceiling, 1235),
        ];
        for (rounding, minor) in cases {
            assert_eq!(
                Money::from_decimal(d, Currency::CNY, rounding)
                    .unwrap()
                    .minor(),
                minor,
                "{rounding:?}"
            );
        }
        assert_eq!(
            cny(1000)
                .mul_rate(Decimal::new(85, 2), Rounding::HalfEven)
                .unwrap(),
            cny(850)
        );
    }

    #[test]
    fn mismatched_currency_is_an_error() {
        let usd = Money::from_minor(1, Currency::USD);
        assert!(matches!(
            cny(1).checked_add(usd),
            Err(MoneyError::CurrencyMismatch { .. })
        ));
        assert!(Money::sum([cny(1), usd], Currency::CNY).is_err());
    }

    #[test]
    fn currency_codes_are_validated() {
        assert!(Currency::new("CNY", 2).is_ok());
        for (code, exp) in [
            ("cny", 2),
            ("CN", 2),
            ("CNYY", 2),
            ("元元元", 2),
            ("CNY", 7),
        ] {
            assert!(Currency::new(code, exp).is_err(), "{code}");
        }
    }

    #[test]
    fn serde_round_trip() {
        let m = cny(1990);
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(
            json,
            r#"{"minor":1990,"currency":{"code":"CNY","exponent":2}}"#
        );
        assert_eq!(serde_json::from_str::<Money>(&json).unwrap(), m);
        assert!(
            serde_json::from_str::<Money>(r#"{"minor":1,"currency":{"code":"x","exponent":2}}"#)
                .is_err()
        );
    }

    proptest! {
        #[test]
        fn allocate_parts_sum_to_whole_and_are_never_negative(
            amount in 0i64..=i64::MAX,
            weights in proptest::collection::vec(0u64..=u64::MAX, 1..20),
        ) {
            prop_assume!(weights.iter().any(|w| *w > 0));
            let parts = cny(amount).allocate(&weights).unwrap();
            prop_assert_eq!(parts.len(), weights.len());
            let mut sum: i128 = 0;
            for (part, w) in parts.iter().zip(&weights) {
                prop_assert!(part.minor() >= 0);
                if *w == 0 { prop_assert_eq!(part.minor(), 0); }
                sum += i128::from(part.minor());
            }
            prop_assert_eq!(sum, i128::from(amount));
        }

        #[test]
        fn allocate_small_weights_sum(amount in 0i64..1_000_000, weights in proptest::collection::vec(0u64..100, 1..12)) {
            prop_assume!(weights.iter().any(|w| *w > 0));
            let parts = cny(amount).allocate(&weights).unwrap();
            prop_assert_eq!(parts.iter().map(Money::minor).sum::<i64>(), amount);
            prop_assert!(parts.iter().all(|p| p.minor() >= 0));
        }

        #[test]
        fn checked_arithmetic_never_panics(a in any::<i64>(), b in any::<i64>(), k in any::<i64>(), rate in any::<i64>(), scale in 0u32..28) {
            let (x, y) = (cny(a), cny(b));
            let _ = x.checked_add(y);
            let _ = x.checked_sub(y);
            let _ = x.checked_mul(k);
            let _ = x.checked_neg();
            let _ = x.mul_rate(Decimal::new(rate, scale), Rounding::HalfUp);
            let _ = Money::sum([x, y, cny(k)], Currency::CNY);
            match x.checked_add(y) {
                Ok(s) => prop_assert_eq!(i128::from(s.minor()), i128::from(a) + i128::from(b)),
                Err(e) => prop_assert_eq!(e, MoneyError::Overflow),
            }
        }
    }
}
