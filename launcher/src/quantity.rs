//! Kubernetes quantities for memory: `512Mi`, `1Gi`, `1G`, `1.5Gi`, `1e9`, plain bytes.

/// Bytes of a memory quantity, or a message saying why it is not one.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let bad = || format!("{text:?} is not a memory quantity (like 512Mi, 1Gi, 2G)");
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    let multiplier: u64 = match suffix {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        s if s.starts_with(['e', 'E']) => {
            let exp: u32 = s[1..].parse().map_err(|_| bad())?;
            10u64.checked_pow(exp).ok_or_else(bad)?
        }
        _ => return Err(bad()),
    };
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty() && frac.is_empty() {
        return Err(bad());
    }
    let int: u64 = if int.is_empty() { 0 } else { int.parse().map_err(|_| bad())? };
    let mut bytes = int.checked_mul(multiplier).ok_or_else(bad)?;
    if !frac.is_empty() {
        // Fractions: at most 9 digits, rounded up to a whole byte (as Kubernetes does).
        if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let f: u128 = frac.parse().map_err(|_| bad())?;
        let scale = 10u128.pow(frac.len() as u32);
        let part = (f * u128::from(multiplier)).div_ceil(scale);
        bytes = bytes.checked_add(u64::try_from(part).map_err(|_| bad())?).ok_or_else(bad)?;
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn binary_decimal_fraction_and_exponent_suffixes() {
        for (text, want) in [
            ("512Mi", 512 << 20),
            ("1Gi", 1 << 30),
            ("2G", 2_000_000_000),
            ("1.5Gi", 3 << 29),
            ("1e9", 1_000_000_000),
            ("1048576", 1 << 20),
            ("64k", 64_000),
        ] {
            assert_eq!(parse_bytes(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn garbage_and_overflow_are_rejected() {
        for text in ["", "Gi", "1.2.3Gi", "12Qi", "-1Gi", "99999999999Ti", "1e99"] {
            assert!(parse_bytes(text).is_err(), "{text}");
        }
    }
}
