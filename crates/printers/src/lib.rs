//! rk3s-printers (being written).
