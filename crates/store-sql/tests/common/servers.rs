//! The servers of the tests: `rk3s_store_sql::testing` (feature `testing`, enabled for
//! this crate's own tests by its dev-dependency on itself).

pub use rk3s_store_sql::testing::*;
