//! rk3s-openapi (being written).
