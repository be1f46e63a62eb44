//! Kubernetes resource quantities (`100m`, `1Gi`, `1e3`), enough to check syntax and
//! compare values.

use thiserror::Error;

/// A parsed quantity.
#[derive(Debug, Clone, PartialEq)]
pub struct Quantity {
    /// The numeric value (approximate for very large or precise values).
    pub value: f64,
}

/// Why a string is not a quantity.
#[derive(Debug, Error, PartialEq)]
pub enum QuantityError {
    /// The string does not match upstream's quantity syntax.
    #[error("quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'")]
    Format,
}

/// Parses a quantity string.
pub fn parse_quantity(s: &str) -> Result<Quantity, QuantityError> {
    let s = s.trim();
    let split = s
        .char_indices()
        .find(|(i, c)| !(c.is_ascii_digit() || *c == '.' || (*i == 0 && (*c == '+' || *c == '-'))))
        .map(|(i, _)| i)
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let digits = num.trim_start_matches(['+', '-']);
    if digits.is_empty()
        || !digits.bytes().any(|c| c.is_ascii_digit())
        || digits.matches('.').count() > 1
    {
        return Err(QuantityError::Format);
    }
    let mantissa: f64 = num.parse().map_err(|_| QuantityError::Format)?;
    let mult: f64 = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        other => {
            let exp = other
                .strip_prefix(['e', 'E'])
                .ok_or(QuantityError::Format)?;
            let unsigned = exp.trim_start_matches(['+', '-']);
            if unsigned.is_empty()
                || !unsigned.bytes().all(|c| c.is_ascii_digit())
                || exp.len() - unsigned.len() > 1
            {
                return Err(QuantityError::Format);
            }
            let e: i32 = exp.parse().map_err(|_| QuantityError::Format)?;
            10f64.powi(e)
        }
    };
    Ok(Quantity {
        value: mantissa * mult,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_suffixes() {
        assert_eq!(parse_quantity("100m").map(|q| q.value), Ok(0.1));
        assert_eq!(parse_quantity("1Gi").map(|q| q.value), Ok(1073741824.0));
        assert_eq!(parse_quantity("1e3").map(|q| q.value), Ok(1000.0));
        assert_eq!(parse_quantity("2").map(|q| q.value), Ok(2.0));
        assert_eq!(parse_quantity("-1.5k").map(|q| q.value), Ok(-1500.0));
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "abc", "1Xi", "1..2", "1e", "m", "1 Gi"] {
            assert_eq!(parse_quantity(bad), Err(QuantityError::Format), "{bad}");
        }
    }
}
