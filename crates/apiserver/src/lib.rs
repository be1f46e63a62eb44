//! rk3s-apiserver (being written).
