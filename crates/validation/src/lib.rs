//! rk3s-validation (being written).
