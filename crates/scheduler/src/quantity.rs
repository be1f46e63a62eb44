//! Quantity values for resource accounting: the parser is [`rk3s_core::quantity`]; these
//! adapters return upstream's `int64` values.

pub use rk3s_core::quantity::QuantityError;

/// The value of a quantity in whole units, rounded up (upstream `Quantity.Value()`),
/// saturating at the `i64` range.
pub fn parse_value(s: &str) -> Result<i64, QuantityError> {
    Ok(rk3s_core::Quantity::parse(s.trim())?.value_i64())
}

/// The value of a quantity in thousandths, rounded up (upstream `Quantity.MilliValue()`),
/// saturating at the `i64` range.
pub fn parse_milli_value(s: &str) -> Result<i64, QuantityError> {
    Ok(rk3s_core::Quantity::parse(s.trim())?.milli_value_i64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_for_accounting() {
        assert_eq!(parse_milli_value("100m"), Ok(100));
        assert_eq!(parse_milli_value("1n"), Ok(1));
        assert_eq!(parse_value("1.5Gi"), Ok(3 << 29));
        assert_eq!(parse_value("1E3"), Ok(1000));
        assert_eq!(parse_value("100Ei"), Ok(i64::MAX));
        assert_eq!(parse_value("-1"), Ok(-1));
        assert!(parse_value("1.2.3").is_err());
        assert!(parse_value("").is_err());
    }
}
