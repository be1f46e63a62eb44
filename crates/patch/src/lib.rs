//! rk3s-patch (being written).
