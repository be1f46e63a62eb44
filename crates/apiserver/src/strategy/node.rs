//! Nodes: a new Node keeps the status its kubelet registers with (no status reset, as
//! upstream's node strategy).

use rk3s_api::ResourceInfo;
use serde_json::Value;

use super::Strategy;

/// The strategy of `nodes`.
pub struct NodeStrategy;

impl Strategy for NodeStrategy {
    fn prepare_for_create(&self, _res: &ResourceInfo, _obj: &mut Value) {}
}
