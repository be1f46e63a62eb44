//! Exact resource quantities (`100m`, `1Gi`, `2e3`) for quota sums and limit checks: the
//! one implementation is [`rk3s_core::quantity`], re-exported here.

pub use rk3s_core::quantity::{Format, Quantity, QuantityError};

/// Parses an optional JSON quantity (a string, or a number as some clients send).
pub fn from_json(v: &serde_json::Value) -> Option<Quantity> {
    Quantity::from_json(v)
}
