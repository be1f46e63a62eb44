//! Exact parsing of Kubernetes `Quantity` strings (`100m`, `1Gi`, `1.5`, `2e3`).

/// Why a quantity string could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// The string is empty.
    #[error("quantity is empty")]
    Empty,
    /// The string does not follow the quantity grammar.
    #[error("quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$': {0:?}")]
    Invalid(String),
}

/// A parsed quantity: `digits * 10^dec_exp * 1024^bin_exp`, with a sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Parsed {
    negative: bool,
    digits: i128,
    /// Set when the digits overflowed an i128 (value saturates).
    overflow: bool,
    dec_exp: i32,
    bin_exp: u32,
}

fn parse(s: &str) -> Result<Parsed, QuantityError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(QuantityError::Empty);
    }
    let invalid = || QuantityError::Invalid(s.to_string());
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut negative = false;
    if bytes[0] == b'+' || bytes[0] == b'-' {
        negative = bytes[0] == b'-';
        i = 1;
    }
    let mut digits: i128 = 0;
    let mut overflow = false;
    let mut dec_exp: i32 = 0;
    let mut seen_digit = false;
    let mut seen_dot = false;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_digit() {
            seen_digit = true;
            if overflow {
                // Keep the magnitude: every further integer digit multiplies by 10.
                if !seen_dot {
                    dec_exp = dec_exp.saturating_add(1);
                }
            } else {
                match digits
                    .checked_mul(10)
                    .and_then(|d| d.checked_add(i128::from(c - b'0')))
                {
                    Some(d) => digits = d,
                    None => {
                        overflow = true;
                        if !seen_dot {
                            dec_exp = dec_exp.saturating_add(1);
                        }
                    }
                }
                if seen_dot && !overflow {
                    dec_exp -= 1;
                }
            }
        } else if c == b'.' {
            if seen_dot {
                return Err(invalid());
            }
            seen_dot = true;
        } else {
            break;
        }
        i += 1;
    }
    if !seen_digit {
        return Err(invalid());
    }
    let suffix = &s[i..];
    let mut bin_exp = 0u32;
    match suffix {
        "" => {}
        "n" => dec_exp -= 9,
        "u" => dec_exp -= 6,
        "m" => dec_exp -= 3,
        "k" => dec_exp += 3,
        "M" => dec_exp += 6,
        "G" => dec_exp += 9,
        "T" => dec_exp += 12,
        "P" => dec_exp += 15,
        "E" => dec_exp += 18,
        "Ki" => bin_exp = 1,
        "Mi" => bin_exp = 2,
        "Gi" => bin_exp = 3,
        "Ti" => bin_exp = 4,
        "Pi" => bin_exp = 5,
        "Ei" => bin_exp = 6,
        _ => {
            let rest = suffix
                .strip_prefix('e')
                .or_else(|| suffix.strip_prefix('E'))
                .ok_or_else(invalid)?;
            let (sign, num) = match rest.as_bytes().first() {
                Some(b'-') => (-1i32, &rest[1..]),
                Some(b'+') => (1, &rest[1..]),
                _ => (1, rest),
            };
            if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid());
            }
            let e: i32 = num.parse().map_err(|_| invalid())?;
            dec_exp = dec_exp.saturating_add(sign * e);
        }
    }
    Ok(Parsed {
        negative,
        digits,
        overflow,
        dec_exp,
        bin_exp,
    })
}

/// `ceil(|value| * 10^scale)` with saturation at `i64::MAX`, sign re-applied
/// (rounds away from zero, as upstream's `ScaledValue`).
fn scaled(p: Parsed, scale: i32) -> i64 {
    if p.digits == 0 {
        return 0;
    }
    if p.overflow {
        return if p.negative { i64::MIN } else { i64::MAX };
    }
    let mut num = p.digits;
    for _ in 0..p.bin_exp {
        match num.checked_mul(1024) {
            Some(n) => num = n,
            None => return if p.negative { i64::MIN } else { i64::MAX },
        }
    }
    let e = p.dec_exp.saturating_add(scale);
    let mag: i128 = if e >= 0 {
        let mut v = num;
        for _ in 0..e {
            match v.checked_mul(10) {
                Some(n) => v = n,
                None => {
                    v = i128::MAX;
                    break;
                }
            }
            if v > i128::from(i64::MAX) {
                break;
            }
        }
        v
    } else {
        let neg_e = -(e as i64);
        if neg_e > 38 {
            1
        } else {
            let den = 10i128.pow(neg_e as u32);
            let q = num / den;
            if num % den != 0 {
                q + 1
            } else {
                q
            }
        }
    };
    let mag = mag.min(i128::from(i64::MAX)) as i64;
    if p.negative {
        -mag
    } else {
        mag
    }
}

/// The value of a quantity in whole units, rounded up (upstream `Quantity.Value()`).
pub fn parse_value(s: &str) -> Result<i64, QuantityError> {
    Ok(scaled(parse(s)?, 0))
}

/// The value of a quantity in thousandths, rounded up (upstream `Quantity.MilliValue()`).
pub fn parse_milli_value(s: &str) -> Result<i64, QuantityError> {
    Ok(scaled(parse(s)?, 3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_decimal_and_binary_suffixes() {
        assert_eq!(parse_milli_value("100m"), Ok(100));
        assert_eq!(parse_milli_value("1"), Ok(1000));
        assert_eq!(parse_milli_value("1.5"), Ok(1500));
        assert_eq!(parse_milli_value("0.1"), Ok(100));
        assert_eq!(parse_value("1Gi"), Ok(1 << 30));
        assert_eq!(parse_value("1.5Gi"), Ok(3 << 29));
        assert_eq!(parse_value("128Mi"), Ok(128 << 20));
        assert_eq!(parse_value("2e3"), Ok(2000));
        assert_eq!(parse_value("2E3"), Ok(2000));
        assert_eq!(parse_value("1E"), Ok(1_000_000_000_000_000_000));
        assert_eq!(parse_value("500M"), Ok(500_000_000));
        assert_eq!(parse_value("1k"), Ok(1000));
        assert_eq!(parse_milli_value("1e-3"), Ok(1));
        assert_eq!(parse_value(".5"), Ok(1));
    }

    #[test]
    fn rounds_up_like_upstream() {
        // 1m as a whole value rounds up to 1; 0.5m as millis rounds up to 1.
        assert_eq!(parse_value("1m"), Ok(1));
        assert_eq!(parse_milli_value("500u"), Ok(1));
        assert_eq!(parse_milli_value("1n"), Ok(1));
        assert_eq!(parse_value("0"), Ok(0));
        assert_eq!(parse_milli_value("0.0001"), Ok(1));
    }

    #[test]
    fn saturates_and_rejects_garbage() {
        assert_eq!(parse_value("100Ei"), Ok(i64::MAX));
        assert_eq!(
            parse_value("99999999999999999999999999999999999999999999"),
            Ok(i64::MAX)
        );
        assert!(parse_value("").is_err());
        assert!(parse_value("abc").is_err());
        assert!(parse_value("1Qi").is_err());
        assert!(parse_value("1.2.3").is_err());
        assert!(parse_value("1e").is_err());
        assert_eq!(parse_value("-1"), Ok(-1));
    }
}
