//! Resource quantities (`resource.Quantity`: `100m`, `1Gi`, `1e9`, `.5`), exact, with
//! upstream's grammar, rounding and canonical form.
//!
//! A value is kept in nano-units as an `i128`. As upstream, a parsed value is rounded up
//! (away from zero) to a whole nano-unit, and a binary-suffixed value is capped at
//! 2^63-1. Deviation: upstream keeps arbitrary precision for huge decimal values
//! (`1e100`); here magnitudes beyond about 1.7·10^29 saturate.

use std::cmp::Ordering;
use std::fmt;

use thiserror::Error;

const NANO: i128 = 1_000_000_000;
/// Upstream's cap for binary-suffixed quantities (2^63-1), in nano-units.
const MAX_BINARY_NANOS: i128 = i64::MAX as i128 * NANO;

/// How a quantity is written, as upstream's `resource.Format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// Decimal SI suffixes (`m`, `k`, `M`, ...), or no suffix.
    DecimalSi,
    /// Binary SI suffixes (`Ki`, `Mi`, ...).
    BinarySi,
    /// Decimal exponents (`1e3`).
    DecimalExponent,
}

/// A quantity: an exact value in nano-units plus the format it prints in. Equality and
/// order compare values only (`1Gi == 1073741824`).
#[derive(Debug, Clone, Copy)]
pub struct Quantity {
    nanos: i128,
    format: Format,
}

/// Why a string is not a quantity.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum QuantityError {
    /// The empty string (upstream's `ErrFormatWrong` too, but worth telling apart).
    #[error("quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'")]
    Empty,
    /// The string does not follow the grammar (upstream's `ErrFormatWrong`).
    #[error("quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'")]
    Format,
    /// The suffix is not one upstream knows (upstream's `ErrSuffix`).
    #[error("unable to parse quantity's suffix")]
    Suffix,
}

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
impl std::hash::Hash for Quantity {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.nanos.hash(state);
    }
}

/// The pieces of a quantity string, as upstream's `parseQuantityString`.
struct Pieces<'a> {
    positive: bool,
    /// Integer digits, leading zeros stripped.
    num: &'a str,
    /// Fraction digits.
    denom: &'a str,
    suffix: &'a str,
}

fn split(s: &str) -> Result<Pieces<'_>, QuantityError> {
    let b = s.as_bytes();
    let mut pos = 0;
    let mut positive = true;
    match b.first() {
        Some(b'-') => {
            positive = false;
            pos = 1;
        }
        Some(b'+') => pos = 1,
        _ => {}
    }
    while pos < b.len() && b[pos] == b'0' {
        pos += 1;
    }
    let num_start = pos;
    while pos < b.len() && b[pos].is_ascii_digit() {
        pos += 1;
    }
    let num = &s[num_start..pos];
    let mut denom = "";
    if pos < b.len() && b[pos] == b'.' {
        pos += 1;
        let d = pos;
        while pos < b.len() && b[pos].is_ascii_digit() {
            pos += 1;
        }
        denom = &s[d..pos];
    }
    let suffix_start = pos;
    while pos < b.len() && b"eEinumkKMGTP".contains(&b[pos]) {
        pos += 1;
    }
    if pos < b.len() && (b[pos] == b'-' || b[pos] == b'+') {
        pos += 1;
    }
    while pos < b.len() && b[pos].is_ascii_digit() {
        pos += 1;
    }
    if pos != b.len() {
        return Err(QuantityError::Format);
    }
    Ok(Pieces {
        positive,
        num,
        denom,
        suffix: &s[suffix_start..],
    })
}

/// What a suffix means: `base^exp` in a format.
fn interpret(suffix: &str) -> Option<(u32, i64, Format)> {
    let dec = |e| Some((10, e, Format::DecimalSi));
    let bin = |e| Some((2, e, Format::BinarySi));
    match suffix {
        "" => dec(0),
        "n" => dec(-9),
        "u" => dec(-6),
        "m" => dec(-3),
        "k" => dec(3),
        "M" => dec(6),
        "G" => dec(9),
        "T" => dec(12),
        "P" => dec(15),
        "E" => dec(18),
        "Ki" => bin(10),
        "Mi" => bin(20),
        "Gi" => bin(30),
        "Ti" => bin(40),
        "Pi" => bin(50),
        "Ei" => bin(60),
        s if s.len() > 1 && (s.starts_with('e') || s.starts_with('E')) => {
            let exp = &s[1..];
            let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            // Go's ParseInt: int64 range; larger exponents are errors.
            let e: i64 = exp.parse().ok()?;
            Some((10, e, Format::DecimalExponent))
        }
        _ => None,
    }
}

/// `(num digits then denom digits) * mul * 10^exp`, rounded up, saturating at
/// `i128::MAX`.
fn magnitude(num: &str, denom: &str, mul: u128, exp: i64) -> i128 {
    // Keep at most 36 significant digits; remember whether anything non-zero was cut.
    let mut v: u128 = 0;
    let mut kept = 0usize;
    let mut dropped: i64 = 0;
    let mut sticky = false;
    for c in num.bytes().chain(denom.bytes()) {
        if kept == 0 && c == b'0' {
            continue;
        }
        if kept < 36 {
            v = v * 10 + u128::from(c - b'0');
            kept += 1;
        } else {
            dropped = dropped.saturating_add(1);
            sticky |= c != b'0';
        }
    }
    if kept == 0 {
        return 0;
    }
    let exp = exp.saturating_add(dropped);
    let Some(mut v) = v.checked_mul(mul) else {
        return i128::MAX;
    };
    if exp >= 0 {
        let p = u32::try_from(exp).ok().and_then(|e| 10u128.checked_pow(e));
        v = match p.and_then(|p| v.checked_mul(p)) {
            Some(x) => x,
            None => return i128::MAX,
        };
        if sticky {
            v = v.saturating_add(1);
        }
    } else {
        let p = u32::try_from(exp.unsigned_abs())
            .ok()
            .and_then(|e| 10u128.checked_pow(e));
        v = match p {
            Some(p) => {
                let q = v / p;
                if v % p != 0 || sticky {
                    q + 1
                } else {
                    q
                }
            }
            // smaller than one nano-unit but not zero: rounds up to one
            None => 1,
        };
    }
    i128::try_from(v).unwrap_or(i128::MAX)
}

impl Quantity {
    /// Zero, in decimal SI format.
    pub const ZERO: Quantity = Quantity {
        nanos: 0,
        format: Format::DecimalSi,
    };

    /// Parses a quantity as upstream's `resource.ParseQuantity`: an optional sign,
    /// digits with an optional fraction (`1`, `1.5`, `.5`, `1.`), and an optional suffix:
    /// decimal SI (`n u m k M G T P E`), binary SI (`Ki` ... `Ei`) or an exponent
    /// (`e3`, `E-3`, `e+6`). No white space is allowed.
    pub fn parse(s: &str) -> Result<Quantity, QuantityError> {
        if s.is_empty() {
            return Err(QuantityError::Empty);
        }
        let p = split(s)?;
        let (base, exp, mut format) = interpret(p.suffix).ok_or(QuantityError::Suffix)?;
        let frac = p.denom.len() as i64;
        let mut nanos = if base == 2 {
            magnitude(p.num, p.denom, 1u128 << exp, 9 - frac)
        } else {
            magnitude(
                p.num,
                p.denom,
                1,
                exp.saturating_add(9).saturating_sub(frac),
            )
        };
        if format == Format::BinarySi {
            nanos = nanos.min(MAX_BINARY_NANOS);
            if nanos > 0 && nanos < NANO {
                format = Format::DecimalSi;
            }
        }
        Ok(Quantity {
            nanos: if p.positive { nanos } else { -nanos },
            format,
        })
    }

    /// Parses a quantity as it arrives in JSON (upstream's `UnmarshalJSON`): a string or
    /// a number, surrounding white space ignored. `None` for anything else.
    pub fn from_json(v: &serde_json::Value) -> Option<Quantity> {
        match v {
            serde_json::Value::String(s) => Quantity::parse(s.trim()).ok(),
            serde_json::Value::Number(n) => Quantity::parse(&n.to_string()).ok(),
            _ => None,
        }
    }

    /// A quantity of `n` whole units (upstream's `NewQuantity`).
    pub fn from_int(n: i64, format: Format) -> Quantity {
        Quantity {
            nanos: i128::from(n) * NANO,
            format,
        }
    }

    /// A quantity of `n` thousandths (upstream's `NewMilliQuantity`).
    pub fn from_milli(n: i64, format: Format) -> Quantity {
        Quantity {
            nanos: i128::from(n) * 1_000_000,
            format,
        }
    }

    /// The format the quantity keeps when printed.
    pub fn format(&self) -> Format {
        self.format
    }

    /// The exact value in nano-units (10^-9).
    pub fn nanos(&self) -> i128 {
        self.nanos
    }

    /// The value in thousandths, rounded away from zero (upstream's `MilliValue`).
    pub fn milli_value(&self) -> i128 {
        ceil_div(self.nanos, 1_000_000)
    }

    /// The value in whole units, rounded away from zero (upstream's `Value`): cores,
    /// bytes.
    pub fn value(&self) -> i128 {
        ceil_div(self.nanos, NANO)
    }

    /// [`Quantity::value`] clamped to the `i64` range (upstream's return type).
    pub fn value_i64(&self) -> i64 {
        clamp_i64(self.value())
    }

    /// [`Quantity::milli_value`] clamped to the `i64` range.
    pub fn milli_value_i64(&self) -> i64 {
        clamp_i64(self.milli_value())
    }

    /// The value as a float (for ratios and display; not exact).
    pub fn as_f64(&self) -> f64 {
        self.nanos as f64 / NANO as f64
    }

    /// Whether the value is zero.
    pub fn is_zero(&self) -> bool {
        self.nanos == 0
    }

    /// The sum, in this quantity's format (upstream's `Add`; a zero takes the other's
    /// format, so that `0 + 1Gi` prints `1Gi`).
    pub fn add(&self, other: &Quantity) -> Quantity {
        Quantity {
            nanos: self.nanos.saturating_add(other.nanos),
            format: if self.nanos == 0 {
                other.format
            } else {
                self.format
            },
        }
    }

    /// The difference, in this quantity's format (upstream's `Sub`).
    pub fn sub(&self, other: &Quantity) -> Quantity {
        Quantity {
            nanos: self.nanos.saturating_sub(other.nanos),
            format: if self.nanos == 0 {
                other.format
            } else {
                self.format
            },
        }
    }

    /// The negated value, same format.
    pub fn neg(&self) -> Quantity {
        Quantity {
            nanos: self.nanos.saturating_neg(),
            format: self.format,
        }
    }
}

/// `n / d` rounded away from zero, as upstream's scaling of an inexact value.
fn ceil_div(n: i128, d: i128) -> i128 {
    let q = n / d;
    if n % d != 0 {
        q + n.signum()
    } else {
        q
    }
}

fn clamp_i64(v: i128) -> i64 {
    i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX })
}

impl std::str::FromStr for Quantity {
    type Err = QuantityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Quantity::parse(s)
    }
}

impl TryFrom<&k8s_openapi::apimachinery::pkg::api::resource::Quantity> for Quantity {
    type Error = QuantityError;
    fn try_from(
        q: &k8s_openapi::apimachinery::pkg::api::resource::Quantity,
    ) -> Result<Self, Self::Error> {
        Quantity::parse(q.0.trim())
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
    /// Upstream's canonical form: `500m`, `2`, `1Gi`, `1536Mi`, `2k`, `1e3`, `1e21`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nanos == 0 {
            return f.write_str("0");
        }
        let sign = if self.nanos < 0 { "-" } else { "" };
        let abs = self.nanos.unsigned_abs();
        let nano = NANO as u128;
        let mut format = self.format;
        if format == Format::BinarySi && (abs < 1024 * nano || abs % nano != 0) {
            format = Format::DecimalSi;
        }
        if format == Format::BinarySi {
            let mut units = abs / nano;
            let mut j = 0;
            while j < 6 && units % 1024 == 0 {
                units /= 1024;
                j += 1;
            }
            let suffix = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"][j];
            return write!(f, "{sign}{units}{suffix}");
        }
        // mantissa * 10^exp with exp a multiple of 3, as large as possible
        let mut mantissa = abs;
        let mut exp: i32 = -9;
        while mantissa % 1000 == 0 {
            mantissa /= 1000;
            exp += 3;
        }
        write!(f, "{sign}{mantissa}{}", decimal_suffix(exp, format))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        Quantity::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn accepts_upstream_forms() {
        for (s, nanos, format) in [
            ("0", 0, Format::DecimalSi),
            ("0Ki", 0, Format::BinarySi),
            ("1", NANO, Format::DecimalSi),
            ("+1", NANO, Format::DecimalSi),
            ("-1", -NANO, Format::DecimalSi),
            (".5", NANO / 2, Format::DecimalSi),
            ("1.", NANO, Format::DecimalSi),
            ("1.G", NANO * NANO, Format::DecimalSi),
            (".", 0, Format::DecimalSi),
            ("-.", 0, Format::DecimalSi),
            ("100m", NANO / 10, Format::DecimalSi),
            ("1Ki", 1024 * NANO, Format::BinarySi),
            ("3Ei", (3 << 60) * NANO, Format::BinarySi),
            ("5n", 5, Format::DecimalSi),
            ("50k", 50_000 * NANO, Format::DecimalSi),
            ("1e9", NANO * NANO, Format::DecimalExponent),
            ("1E3", 1000 * NANO, Format::DecimalExponent),
            ("1E-3", NANO / 1000, Format::DecimalExponent),
            ("1.3E+6", 1_300_000 * NANO, Format::DecimalExponent),
            ("1E", 1_000_000_000_000_000_000 * NANO, Format::DecimalSi),
            ("100.035k", 100_035 * NANO, Format::DecimalSi),
            ("0.0005k", NANO / 2, Format::DecimalSi),
            ("100.035Ki", 10_243_584 * NANO / 100, Format::BinarySi),
            ("0.5Mi", 512 * 1024 * NANO, Format::BinarySi),
        ] {
            let got = q(s);
            assert_eq!((got.nanos(), got.format()), (nanos, format), "{s}");
        }
        // "3Ei" above: 3 * 2^60 units
        assert_eq!(q("3Ei").value(), 3 << 60);
    }

    #[test]
    fn rounds_up_to_nano_and_caps_binary() {
        assert_eq!(q("3.001n").nanos(), 4);
        assert_eq!(q("1.1E-9").nanos(), 2);
        assert_eq!(q("0.0000000001").nanos(), 1);
        assert_eq!(q("0.00000012345").nanos(), 124);
        assert_eq!(q("-0.00000012345").nanos(), -124);
        let troll = q("0.000000000001Ki");
        assert_eq!((troll.nanos(), troll.format()), (2, Format::DecimalSi));
        assert_eq!(q("9Ei").value(), i128::from(i64::MAX));
        assert_eq!(q("9223372036854775807Ki").value(), i128::from(i64::MAX));
        assert_eq!(q("12E").value(), 12_000_000_000_000_000_000);
        assert_eq!(q("1e-100").nanos(), 1);
        assert_eq!(q("1e100").nanos(), i128::MAX);
        // more digits than an i128 holds: exact where it matters, rounded up
        assert_eq!(
            q("0.0000000010000000000000000000000000000000000001").nanos(),
            2
        );
        assert_eq!(
            q("000000000000000000000000000000000000000001").nanos(),
            NANO
        );
        assert_eq!(
            q("1234567890123456789012345678901234567890").nanos(),
            i128::MAX
        );
    }

    #[test]
    fn rejects_what_upstream_rejects() {
        for bad in [
            "", "1.5.5", "1 Ki", " 1", "1 ", "1.1.M", "1+1.0M", "0.1mi", "0.1am", "aoeu", ".5i",
            "1i", "-3.01i", "-3.01e-", "1e", "1Qi", "1e1.5", "--1",
        ] {
            assert!(Quantity::parse(bad).is_err(), "{bad:?} parsed");
        }
        assert_eq!(Quantity::parse(""), Err(QuantityError::Empty));
        assert_eq!(Quantity::parse("1Qi"), Err(QuantityError::Format));
        assert_eq!(Quantity::parse("1mi"), Err(QuantityError::Suffix));
    }

    #[test]
    fn canonical_strings() {
        for (s, want) in [
            ("1Ki", "1Ki"),
            ("1024Mi", "1Gi"),
            ("1000M", "1G"),
            ("1.5Gi", "1536Mi"),
            ("5Ki", "5Ki"),
            (".001Ki", "1024m"),
            (".000001Ki", "1024u"),
            (".000000000001Ki", "2n"),
            ("1025", "1025"),
            ("1.08", "1080m"),
            ("0.001T", "1G"),
            ("300M", "300M"),
            ("1000E", "1e21"),
            ("5000E", "5e21"),
            ("1e3", "1e3"),
            ("1e9", "1e9"),
            ("0.001e0", "1e-3"),
            ("80e-3", "80e-3"),
            ("1.5e3", "1500"),
            ("300e6", "300e6"),
            ("0.5", "500m"),
            ("-9.01", "-9010m"),
            ("-1Gi", "-1Gi"),
            ("-0", "0"),
            ("00", "0"),
        ] {
            assert_eq!(q(s).to_string(), want, "{s}");
        }
        assert_eq!(
            Quantity::from_milli(1024, Format::BinarySi).to_string(),
            "1024m"
        );
        assert_eq!(
            Quantity::from_int(1024, Format::BinarySi).to_string(),
            "1Ki"
        );
        assert_eq!(
            Quantity::from_int(1000, Format::DecimalSi).to_string(),
            "1k"
        );
        assert_eq!(
            Quantity::from_int(1_000_000, Format::DecimalExponent).to_string(),
            "1e6"
        );
    }

    #[test]
    fn compare_and_values() {
        assert!(q("100m") > q("50m"));
        assert!(q("10000T") > q("100Gi"));
        assert_eq!(q("1Gi"), q("1073741824"));
        assert_eq!(q("1m").value(), 1);
        assert_eq!(q("500u").milli_value(), 1);
        assert_eq!(q("1.5").milli_value(), 1500);
        assert_eq!(q("128Mi").value(), 128 << 20);
        assert_eq!(q("100Ei").value_i64(), i64::MAX);
        assert_eq!(q("1e9").value(), 1_000_000_000);
        assert_eq!(q("-1.5").value(), -2);
        assert_eq!(q("-1m").value(), -1);
    }

    #[test]
    fn arithmetic_keeps_the_suffix() {
        let zero = q("0");
        assert_eq!(q("100m").add(&zero).to_string(), "100m");
        assert_eq!(zero.add(&q("1Gi")).to_string(), "1Gi");
        assert_eq!(zero.sub(&q("1Gi")).to_string(), "-1Gi");
        assert_eq!(q("1Gi").sub(&q("512Mi")).to_string(), "512Mi");
        assert_eq!(q("1").neg().to_string(), "-1");
    }

    #[test]
    fn json_forms() {
        use serde_json::json;
        assert_eq!(Quantity::from_json(&json!(" 1 ")), Some(q("1")));
        assert_eq!(Quantity::from_json(&json!(10)), Some(q("10")));
        assert_eq!(Quantity::from_json(&json!(-1)), Some(q("-1")));
        assert_eq!(Quantity::from_json(&json!(true)), None);
        let k = k8s_openapi::apimachinery::pkg::api::resource::Quantity("2Gi".into());
        assert_eq!(Quantity::try_from(&k), Ok(q("2Gi")));
    }
}
