//! ResourceQuotas: `status` (hard and used) is computed by the server on create and
//! whenever `spec.hard` changes.

use serde_json::Value;

use super::Strategy;
use crate::state::Inner;

/// The strategy of `resourcequotas`.
pub struct ResourceQuotaStrategy;

impl Strategy for ResourceQuotaStrategy {
    fn derive_status(&self, inner: &Inner, obj: &mut Value, old: Option<&Value>) {
        if old.is_some_and(|o| o.pointer("/spec/hard") == obj.pointer("/spec/hard")) {
            return;
        }
        obj["status"] = crate::admission::quota_status(inner, obj);
    }
}
