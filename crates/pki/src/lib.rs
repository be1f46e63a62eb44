//! rk3s-pki (being written).
