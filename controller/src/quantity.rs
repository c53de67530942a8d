//! Kubernetes resource quantities (`"10Gi"`, `"500M"`, `"1e3"`, `"1.5Gi"`) as bytes.
//!
//! A [`Quantity`] keeps the text the user wrote, so an object read from YAML is written back
//! unchanged; [`Quantity::bytes`] parses it on demand. The grammar is Kubernetes' own:
//! `[+-]digits[.digits]` followed by nothing, a binary suffix (`Ki Mi Gi Ti Pi Ei`), a decimal
//! suffix (`n u m k M G T P E`) or a decimal exponent (`e3`, `E-2`). Fractions are rounded up to
//! a whole byte, as `resource.Quantity.Value()` does. Arithmetic is exact (integers, no floats)
//! and checked: values beyond `i64::MAX` bytes are rejected rather than wrapped.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Largest decimal exponent considered: `1e40` bytes is far beyond `i64::MAX` already.
const MAX_EXPONENT: i32 = 40;

/// Why a quantity string is not a quantity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QuantityError {
    #[error("quantity is empty")]
    Empty,
    #[error("quantity {0:?} has no digits")]
    NoDigits(String),
    #[error("quantity {0:?} has an unknown suffix")]
    UnknownSuffix(String),
    #[error("quantity {0:?} is too large")]
    TooLarge(String),
}

/// A Kubernetes quantity as written (`"10Gi"`); numbers in YAML/JSON are accepted too.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Quantity(pub String);

impl Quantity {
    /// The quantity in bytes (fractions rounded up, away from zero). Negative quantities are
    /// returned as negative numbers: validation decides what to make of them.
    ///
    /// # Errors
    /// [`QuantityError`] when the text is not a quantity or does not fit in an `i64`.
    pub fn bytes(&self) -> Result<i64, QuantityError> {
        parse_quantity(&self.0)
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for Quantity {
    fn from(s: &str) -> Self {
        Quantity(s.to_owned())
    }
}

impl Serialize for Quantity {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Quantity;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a quantity such as \"10Gi\" or a number")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Quantity, E> {
                Ok(Quantity(v.to_owned()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Quantity, E> {
                Ok(Quantity(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Quantity, E> {
                Ok(Quantity(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Quantity, E> {
                Ok(Quantity(v.to_string()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Parses a Kubernetes quantity into bytes; see the module docs for the grammar.
///
/// # Errors
/// [`QuantityError`] for empty text, missing digits, unknown suffixes, or more than `i64::MAX`.
pub fn parse_quantity(text: &str) -> Result<i64, QuantityError> {
    let s = text.trim();
    if s.is_empty() {
        return Err(QuantityError::Empty);
    }
    let (negative, rest) = match s.as_bytes()[0] {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(number_len);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
        return Err(QuantityError::NoDigits(text.to_owned()));
    }
    let too_large = || QuantityError::TooLarge(text.to_owned());
    // mantissa = whole.fraction as an integer, scaled down by 10^fraction.len() below
    let mut mantissa: u128 = 0;
    for digit in whole.bytes().chain(fraction.bytes()) {
        mantissa = mantissa
            .checked_mul(10)
            .and_then(|m| m.checked_add(u128::from(digit - b'0')))
            .ok_or_else(too_large)?;
    }
    let fraction_digits = i32::try_from(fraction.len()).map_err(|_| too_large())?;
    let (binary_shift, decimal_exponent) = match suffix_scale(suffix) {
        Some(scale) => scale,
        None => (0, exponent(suffix).ok_or_else(|| QuantityError::UnknownSuffix(text.to_owned()))?),
    };
    let value = mantissa.checked_shl(binary_shift).filter(|v| v >> binary_shift == mantissa);
    let value = value.ok_or_else(too_large)?;
    let exponent = decimal_exponent - fraction_digits;
    let magnitude = if value == 0 {
        0
    } else if exponent >= 0 {
        if exponent > MAX_EXPONENT {
            return Err(too_large());
        }
        value.checked_mul(10u128.pow(exponent.unsigned_abs())).ok_or_else(too_large)?
    } else if -exponent > MAX_EXPONENT {
        1 // a positive amount smaller than one byte rounds up to one byte
    } else {
        value.div_ceil(10u128.pow(exponent.unsigned_abs()))
    };
    let magnitude = i64::try_from(magnitude).map_err(|_| too_large())?;
    Ok(if negative { -magnitude } else { magnitude })
}

/// `(binary shift, decimal exponent)` of a suffix, `None` if it is not a plain suffix.
fn suffix_scale(suffix: &str) -> Option<(u32, i32)> {
    Some(match suffix {
        "" => (0, 0),
        "Ki" => (10, 0),
        "Mi" => (20, 0),
        "Gi" => (30, 0),
        "Ti" => (40, 0),
        "Pi" => (50, 0),
        "Ei" => (60, 0),
        "n" => (0, -9),
        "u" => (0, -6),
        "m" => (0, -3),
        "k" => (0, 3),
        "M" => (0, 6),
        "G" => (0, 9),
        "T" => (0, 12),
        "P" => (0, 15),
        "E" => (0, 18),
        _ => return None,
    })
}

/// A decimal exponent suffix: `e3`, `E+6`, `e-2`.
fn exponent(suffix: &str) -> Option<i32> {
    let digits = suffix.strip_prefix(['e', 'E'])?;
    let (negative, digits) = match digits.as_bytes().first()? {
        b'-' => (true, &digits[1..]),
        b'+' => (false, &digits[1..]),
        _ => (false, digits),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Clamp long exponents: anything past MAX_EXPONENT is out of range either way.
    let value = digits.parse::<i32>().unwrap_or(i32::MAX).min(MAX_EXPONENT + 1);
    Some(if negative { -value } else { value })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MI: i64 = 1024 * 1024;
    const GI: i64 = 1024 * MI;

    #[test]
    fn binary_suffixes_are_powers_of_1024() {
        assert_eq!(parse_quantity("1Ki"), Ok(1024));
        assert_eq!(parse_quantity("500Mi"), Ok(500 * MI));
        assert_eq!(parse_quantity("10Gi"), Ok(10 * GI));
        assert_eq!(parse_quantity("2Ti"), Ok(2 * 1024 * GI));
        assert_eq!(parse_quantity("1Ei"), Ok(1 << 60));
    }

    #[test]
    fn decimal_suffixes_are_powers_of_1000() {
        assert_eq!(parse_quantity("500M"), Ok(500_000_000));
        assert_eq!(parse_quantity("100M"), Ok(100_000_000));
        assert_eq!(parse_quantity("1k"), Ok(1000));
        assert_eq!(parse_quantity("3G"), Ok(3_000_000_000));
        assert_eq!(parse_quantity("1E"), Ok(1_000_000_000_000_000_000));
    }

    #[test]
    fn plain_numbers_and_exponents() {
        assert_eq!(parse_quantity("1073741824"), Ok(GI));
        assert_eq!(parse_quantity("1e3"), Ok(1000));
        assert_eq!(parse_quantity("1E3"), Ok(1000));
        assert_eq!(parse_quantity("2e+6"), Ok(2_000_000));
        assert_eq!(parse_quantity("1500e-3"), Ok(2), "1.5 bytes round up");
    }

    #[test]
    fn fractions_are_exact_and_round_up() {
        assert_eq!(parse_quantity("1.5Gi"), Ok(GI + GI / 2));
        assert_eq!(parse_quantity("0.5Ki"), Ok(512));
        assert_eq!(parse_quantity(".5k"), Ok(500));
        assert_eq!(parse_quantity("1.1"), Ok(2));
        assert_eq!(parse_quantity("100m"), Ok(1), "0.1 byte rounds up to one byte");
        assert_eq!(parse_quantity("1n"), Ok(1));
    }

    #[test]
    fn zero_and_negative_quantities_parse() {
        assert_eq!(parse_quantity("0"), Ok(0));
        assert_eq!(parse_quantity("0Gi"), Ok(0));
        assert_eq!(parse_quantity("-1Gi"), Ok(-GI));
        assert_eq!(parse_quantity("+5Mi"), Ok(5 * MI));
    }

    #[test]
    fn surrounding_whitespace_is_ignored() {
        assert_eq!(parse_quantity(" 5Gi "), Ok(5 * GI));
    }

    #[test]
    fn malformed_quantities_are_rejected() {
        assert_eq!(parse_quantity(""), Err(QuantityError::Empty));
        assert!(matches!(parse_quantity("Gi"), Err(QuantityError::NoDigits(_))));
        assert!(matches!(parse_quantity("."), Err(QuantityError::NoDigits(_))));
        assert!(matches!(parse_quantity("1.2.3"), Err(QuantityError::NoDigits(_))));
        assert!(matches!(parse_quantity("10GB"), Err(QuantityError::UnknownSuffix(_))));
        assert!(matches!(parse_quantity("10gi"), Err(QuantityError::UnknownSuffix(_))));
        assert!(matches!(parse_quantity("1e"), Err(QuantityError::UnknownSuffix(_))));
        assert!(matches!(parse_quantity("1 Gi"), Err(QuantityError::UnknownSuffix(_))));
    }

    #[test]
    fn values_past_i64_are_rejected_not_wrapped() {
        assert!(matches!(parse_quantity("8Ei"), Err(QuantityError::TooLarge(_))));
        assert!(matches!(parse_quantity("1e100"), Err(QuantityError::TooLarge(_))));
        assert!(matches!(
            parse_quantity("99999999999999999999999999999999999999999999"),
            Err(QuantityError::TooLarge(_))
        ));
        assert_eq!(parse_quantity("1e-100"), Ok(1));
    }

    #[test]
    fn quantity_deserializes_from_strings_and_numbers() {
        let q: Quantity = serde_json::from_str("\"5Gi\"").unwrap();
        assert_eq!(q.bytes(), Ok(5 * GI));
        let q: Quantity = serde_json::from_str("1048576").unwrap();
        assert_eq!(q, Quantity::from("1048576"));
        assert_eq!(serde_json::to_string(&q).unwrap(), "\"1048576\"");
    }
}
