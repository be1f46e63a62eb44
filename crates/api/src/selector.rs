//! Label and field selectors: the one implementation lives in [`rk3s_core::selector`];
//! this re-export keeps `rk3s_api::selector` paths working.

pub use rk3s_core::selector::*;
