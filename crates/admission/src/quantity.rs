//! Exact resource quantities (`100m`, `1Gi`, `2e3`) with upstream's canonical
//! formatting, for arithmetic (quota sums) and messages (`limit is 500m`).
//!
//! Values are kept in nano-units as an `i128`, enough for every quantity
//! Kubernetes accepts (`resource.Quantity` rounds up to nano precision too).

use std::cmp::Ordering;
use std::fmt;
use thiserror::Error;

const NANO: i128 = 1_000_000_000;

/// How a quantity is written, as upstream's `resource.Format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Decimal SI suffixes (`m`, `k`, `M`, ...), or no suffix.
    DecimalSi,
    /// Binary SI suffixes (`Ki`, `Mi`, ...).
    BinarySi,
    /// Decimal exponents (`1e3`).
    DecimalExponent,
}

/// A parsed quantity: an exact value in nano-units plus its format.
#[derive(Debug, Clone, Copy)]
pub struct Quantity {
    nanos: i128,
    format: Format,
}

/// Why a string is not a quantity.
#[derive(Debug, Error, PartialEq, Eq)]
#[error(
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
)]
pub struct QuantityError;

impl PartialEq for Quantity {
    fn eq(&self, other: &Self) -> bool {
        self.nanos == other.nanos
    }
}
impl Eq for Quantity {}
impl PartialOrd for Quantity {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Quantity {
    fn cmp(&self, other: &Self) -> Ordering {
        self.nanos.cmp(&other.nanos)
    }
}

fn pow10(e: u32) -> Option<i128> {
    10i128.checked_pow(e)
}

/// `n * 10^e`, rounding up (away from zero for positive values) when `e < 0`.
fn scale10(n: i128, e: i32) -> Option<i128> {
    if e >= 0 {
        n.checked_mul(pow10(e as u32)?)
    } else {
        let d = pow10(e.unsigned_abs())?;
        let q = n / d;
        Some(if n % d > 0 { q + 1 } else { q })
    }
}

impl Quantity {
    /// Zero, in decimal SI format.
    pub const ZERO: Quantity = Quantity {
        nanos: 0,
        format: Format::DecimalSi,
    };

    /// Parses a quantity string such as `500m`, `1.5Gi` or `1e3`.
    pub fn parse(s: &str) -> Result<Quantity, QuantityError> {
        let s = s.trim();
        let (neg, body) = match s.as_bytes().first() {
            Some(b'-') => (true, &s[1..]),
            Some(b'+') => (false, &s[1..]),
            _ => (false, s),
        };
        let split = body
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(body.len());
        let (num, suffix) = body.split_at(split);
        if num.is_empty()
            || num.matches('.').count() > 1
            || !num.bytes().any(|b| b.is_ascii_digit())
        {
            return Err(QuantityError);
        }
        let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
        let digits: String = format!("{int_part}{frac_part}");
        let digits = digits.trim_start_matches('0');
        if digits.len() > 30 {
            return Err(QuantityError);
        }
        let n: i128 = if digits.is_empty() {
            0
        } else {
            digits.parse().map_err(|_| QuantityError)?
        };
        let frac = frac_part.len() as i32;
        let (format, nanos) = match suffix {
            "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" => {
                let j = match suffix {
                    "Ki" => 1,
                    "Mi" => 2,
                    "Gi" => 3,
                    "Ti" => 4,
                    "Pi" => 5,
                    _ => 6,
                };
                let m = n.checked_mul(1024i128.pow(j)).ok_or(QuantityError)?;
                (Format::BinarySi, scale10(m, 9 - frac).ok_or(QuantityError)?)
            }
            _ => {
                let (format, e) = match suffix {
                    "" => (Format::DecimalSi, 0),
                    "n" => (Format::DecimalSi, -9),
                    "u" => (Format::DecimalSi, -6),
                    "m" => (Format::DecimalSi, -3),
                    "k" => (Format::DecimalSi, 3),
                    "M" => (Format::DecimalSi, 6),
                    "G" => (Format::DecimalSi, 9),
                    "T" => (Format::DecimalSi, 12),
                    "P" => (Format::DecimalSi, 15),
                    "E" => (Format::DecimalSi, 18),
                    other => {
                        let exp = other.strip_prefix(['e', 'E']).ok_or(QuantityError)?;
                        let unsigned = exp.trim_start_matches(['+', '-']);
                        if unsigned.is_empty()
                            || !unsigned.bytes().all(|c| c.is_ascii_digit())
                            || exp.len() - unsigned.len() > 1
                            || unsigned.len() > 3
                        {
                            return Err(QuantityError);
                        }
                        let e: i32 = exp.parse().map_err(|_| QuantityError)?;
                        (Format::DecimalExponent, e)
                    }
                };
                (format, scale10(n, 9 + e - frac).ok_or(QuantityError)?)
            }
        };
        Ok(Quantity {
            nanos: if neg { -nanos } else { nanos },
            format,
        })
    }

    /// A quantity of `n` whole units in decimal SI format.
    pub fn from_int(n: i64) -> Quantity {
        Quantity {
            nanos: n as i128 * NANO,
            format: Format::DecimalSi,
        }
    }

    /// A quantity of `n` thousandths in decimal SI format (as upstream's `NewMilliQuantity`).
    pub fn from_milli(n: i64) -> Quantity {
        Quantity {
            nanos: n as i128 * 1_000_000,
            format: Format::DecimalSi,
        }
    }

    /// The format the quantity keeps when printed.
    pub fn format(&self) -> Format {
        self.format
    }

    /// The value in thousandths, rounded up (upstream's `MilliValue`).
    pub fn milli_value(&self) -> i128 {
        let q = self.nanos / 1_000_000;
        if self.nanos % 1_000_000 > 0 {
            q + 1
        } else {
            q
        }
    }

    /// The value in whole units, rounded up (upstream's `Value`).
    pub fn value(&self) -> i128 {
        let q = self.nanos / NANO;
        if self.nanos % NANO > 0 {
            q + 1
        } else {
            q
        }
    }

    /// The value as a float, for ratios.
    pub fn as_f64(&self) -> f64 {
        self.nanos as f64 / NANO as f64
    }

    /// Whether the value is zero.
    pub fn is_zero(&self) -> bool {
        self.nanos == 0
    }

    /// The sum, keeping this quantity's format (as upstream's `Add`).
    pub fn add(&self, other: &Quantity) -> Quantity {
        Quantity {
            nanos: self.nanos.saturating_add(other.nanos),
            format: self.format,
        }
    }

    /// The difference, keeping this quantity's format (as upstream's `Sub`).
    pub fn sub(&self, other: &Quantity) -> Quantity {
        Quantity {
            nanos: self.nanos.saturating_sub(other.nanos),
            format: self.format,
        }
    }
}

impl std::str::FromStr for Quantity {
    type Err = QuantityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Quantity::parse(s)
    }
}

fn decimal_suffix(exp: i32, format: Format) -> String {
    if format == Format::DecimalExponent {
        return if exp == 0 {
            String::new()
        } else {
            format!("e{exp}")
        };
    }
    match exp {
        -9 => "n",
        -6 => "u",
        -3 => "m",
        0 => "",
        3 => "k",
        6 => "M",
        9 => "G",
        12 => "T",
        15 => "P",
        18 => "E",
        _ => return format!("e{exp}"),
    }
    .to_string()
}

impl fmt::Display for Quantity {
    // `is_multiple_of` needs Rust 1.87; the workspace supports 1.85
    #[allow(clippy::manual_is_multiple_of)]
    /// Upstream's canonical form: `500m`, `2`, `1Gi`, `1536Mi`, `2k`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nanos == 0 {
            return f.write_str("0");
        }
        let sign = if self.nanos < 0 { "-" } else { "" };
        let abs = self.nanos.unsigned_abs();
        let mut format = self.format;
        if format == Format::BinarySi && (abs < 1024 * NANO as u128 || abs % NANO as u128 != 0) {
            format = Format::DecimalSi;
        }
        if format == Format::BinarySi {
            let mut units = abs / NANO as u128;
            let mut j = 0;
            while j < 6 && units % 1024 == 0 {
                units /= 1024;
                j += 1;
            }
            let suffix = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"][j];
            return write!(f, "{sign}{units}{suffix}");
        }
        // mantissa * 10^exp with exp a multiple of 3, as large as possible (max 18)
        let mut mantissa = abs;
        let mut exp: i32 = -9;
        while exp < 18 && mantissa % 1000 == 0 {
            mantissa /= 1000;
            exp += 3;
        }
        write!(f, "{sign}{mantissa}{}", decimal_suffix(exp, format))
    }
}

/// Parses an optional JSON quantity (a string, or a number as some clients send).
pub fn from_json(v: &serde_json::Value) -> Option<Quantity> {
    match v {
        serde_json::Value::String(s) => Quantity::parse(s).ok(),
        serde_json::Value::Number(n) => Quantity::parse(&n.to_string()).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        Quantity::parse(s).unwrap_or_else(|_| panic!("bad quantity {s}"))
    }

    #[test]
    fn canonical_forms() {
        for (input, want) in [
            ("100m", "100m"),
            ("0.5", "500m"),
            ("2", "2"),
            ("2000", "2k"),
            ("1500", "1500"),
            ("1Gi", "1Gi"),
            ("1.5Gi", "1536Mi"),
            ("1e3", "1e3"),
            ("0", "0"),
            ("512", "512"),
            ("-1.5k", "-1500"),
            ("1000m", "1"),
        ] {
            assert_eq!(q(input).to_string(), want, "{input}");
        }
    }

    #[test]
    fn arithmetic_keeps_left_format() {
        assert_eq!(q("2").add(&q("500m")).to_string(), "2500m");
        assert_eq!(q("1Gi").add(&q("1Gi")).to_string(), "2Gi");
        assert_eq!(q("500m").add(&q("500m")).to_string(), "1");
        assert!(q("1") > q("999m"));
        assert_eq!(q("1Ki"), q("1024"));
        assert_eq!(q("1.5").milli_value(), 1500);
        assert_eq!(q("1.5").value(), 2);
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "abc", "1Xi", "1..2", "1e", "m", "1 Gi", "."] {
            assert!(Quantity::parse(bad).is_err(), "{bad}");
        }
    }
}
