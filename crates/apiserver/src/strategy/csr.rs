//! CertificateSigningRequests: the `approval` subresource changes only the approval
//! conditions (kubectl certificate approve|deny).

use serde_json::{json, Value};

use super::Strategy;

/// The strategy of `certificatesigningrequests`.
pub struct CsrStrategy;

impl Strategy for CsrStrategy {
    fn prepare_subresource_update(&self, sub: &str, old: &Value, new: &Value) -> Option<Value> {
        if sub != "approval" {
            return None;
        }
        let mut o = old.clone();
        let conds = new
            .pointer("/status/conditions")
            .cloned()
            .unwrap_or_else(|| json!([]));
        if let Some(oo) = o.as_object_mut() {
            let st = oo.entry("status").or_insert_with(|| json!({}));
            if let Some(m) = st.as_object_mut() {
                m.insert("conditions".into(), conds);
            }
        }
        Some(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn approval_changes_only_the_conditions() {
        let old = json!({"spec": {"request": "x"}, "status": {"certificate": "c"}});
        let new = json!({"spec": {"request": "y"}, "status": {"conditions": [{"type": "Approved"}], "certificate": "z"}});
        let out = CsrStrategy
            .prepare_subresource_update("approval", &old, &new)
            .expect("approval");
        assert_eq!(out["spec"]["request"], "x");
        assert_eq!(out["status"]["certificate"], "c");
        assert_eq!(out["status"]["conditions"][0]["type"], "Approved");
        assert!(CsrStrategy
            .prepare_subresource_update("status", &old, &new)
            .is_none());
    }
}
