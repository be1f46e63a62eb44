//! Kubernetes resource quantities (`100m`, `1Gi`, `1e3`) for validation: the parser is
//! [`rk3s_core::quantity`]; this module only exposes the value as a float for
//! comparisons.

pub use rk3s_core::quantity::QuantityError;

/// A parsed quantity's value.
#[derive(Debug, Clone, PartialEq)]
pub struct Quantity {
    /// The numeric value (approximate for very large or precise values).
    pub value: f64,
}

/// Parses a quantity string as upstream does when decoding JSON (surrounding white space
/// ignored).
pub fn parse_quantity(s: &str) -> Result<Quantity, QuantityError> {
    rk3s_core::Quantity::parse(s.trim()).map(|q| Quantity { value: q.as_f64() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_through_core() {
        assert_eq!(parse_quantity("100m").map(|q| q.value), Ok(0.1));
        assert_eq!(parse_quantity("1e9").map(|q| q.value), Ok(1e9));
        assert_eq!(parse_quantity(" 1Gi ").map(|q| q.value), Ok(1073741824.0));
        for bad in ["", "abc", "1Xi", "1..2", "1e", "1 Gi", "1.5.5"] {
            assert!(parse_quantity(bad).is_err(), "{bad}");
        }
    }
}
