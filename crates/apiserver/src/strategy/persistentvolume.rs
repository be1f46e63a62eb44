//! PersistentVolumes and PersistentVolumeClaims: phase `Pending` on create.

use rk3s_api::ResourceInfo;
use serde_json::{json, Value};

use super::Strategy;

/// The strategy of `persistentvolumes` and `persistentvolumeclaims`.
pub struct PersistentVolumeStrategy;

impl Strategy for PersistentVolumeStrategy {
    fn prepare_for_create(&self, _res: &ResourceInfo, obj: &mut Value) {
        if let Some(o) = obj.as_object_mut() {
            o.insert("status".into(), json!({"phase": "Pending"}));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_start_pending() {
        let pvc = rk3s_api::Registry::builtin()
            .get("", "v1", "persistentvolumeclaims")
            .map(|r| (*r).clone())
            .expect("pvcs");
        let mut obj = json!({"status": {"phase": "Bound"}});
        PersistentVolumeStrategy.prepare_for_create(&pvc, &mut obj);
        assert_eq!(obj["status"], json!({"phase": "Pending"}));
    }
}
