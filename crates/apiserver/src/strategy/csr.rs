//! CertificateSigningRequests, as upstream's status and approval strategies: both
//! subresources take the request's metadata (labels, annotations) and keep the spec;
//! `approval` changes only the conditions (kubectl certificate approve|deny), `status`
//! everything but the `Approved`/`Denied` conditions; condition timestamps the writer
//! left out are filled in.

use rk3s_api::ResourceInfo;
use rk3s_validation::{ErrorKind, FieldError};
use serde_json::{json, Value};

use super::Strategy;
use crate::object;

/// The strategy of `certificatesigningrequests`.
pub struct CsrStrategy;

/// The condition types only the `approval` subresource may add or remove.
const APPROVAL_TYPES: [&str; 2] = ["Approved", "Denied"];

impl Strategy for CsrStrategy {
    fn prepare_subresource_update(&self, sub: &str, old: &Value, new: &Value) -> Option<Value> {
        let mut out = super::status_update(old, new, Some(&[]));
        let old_conds = conditions(old);
        match sub {
            "approval" => {
                // The stored status with the request's conditions.
                let conds = new
                    .pointer("/status/conditions")
                    .cloned()
                    .unwrap_or_else(|| json!([]));
                let mut status = old.get("status").cloned().unwrap_or_else(|| json!({}));
                if let Some(m) = status.as_object_mut() {
                    m.insert("conditions".into(), conds);
                }
                if let Some(o) = out.as_object_mut() {
                    o.insert("status".into(), status);
                }
            }
            "status" => {
                // Existing approval conditions stay as they are (a changed count is
                // refused by validation).
                for t in APPROVAL_TYPES {
                    let olds: Vec<&Value> = old_conds.iter().filter(|c| is_type(c, t)).collect();
                    if let Some(cs) = out
                        .pointer_mut("/status/conditions")
                        .and_then(|c| c.as_array_mut())
                    {
                        let at: Vec<usize> =
                            (0..cs.len()).filter(|i| is_type(&cs[*i], t)).collect();
                        if at.len() == olds.len() {
                            for (i, o) in at.into_iter().zip(olds) {
                                cs[i] = o.clone();
                            }
                        }
                    }
                }
            }
            _ => return None,
        }
        populate_condition_timestamps(&mut out, &old_conds);
        Some(out)
    }

    fn validate_update(
        &self,
        res: &ResourceInfo,
        sub: Option<&str>,
        new: &Value,
        old: &Value,
    ) -> Vec<FieldError> {
        let mut errs = rk3s_validation::validate_update(
            &res.group,
            &res.version,
            &res.kind,
            res.namespaced(),
            new,
            old,
        );
        if sub != Some("approval") {
            let (news, olds) = (conditions(new), conditions(old));
            for t in APPROVAL_TYPES {
                let count = |cs: &[Value]| cs.iter().filter(|c| is_type(c, t)).count();
                let verb = match count(&news).cmp(&count(&olds)) {
                    std::cmp::Ordering::Less => "remove",
                    std::cmp::Ordering::Greater => "add",
                    std::cmp::Ordering::Equal => continue,
                };
                errs.push(FieldError {
                    kind: ErrorKind::Forbidden,
                    field: "status.conditions".into(),
                    value: None,
                    detail: format!("updates may not {verb} a condition of type {t:?}"),
                });
            }
        }
        errs
    }
}

fn conditions(obj: &Value) -> Vec<Value> {
    obj.pointer("/status/conditions")
        .and_then(|c| c.as_array())
        .cloned()
        .unwrap_or_default()
}

fn is_type(cond: &Value, t: &str) -> bool {
    cond.get("type").and_then(|v| v.as_str()) == Some(t)
}

/// Upstream's populateConditionTimestamps: `lastUpdateTime` now when unset;
/// `lastTransitionTime` when unset from a stored condition of that type and status,
/// else now.
fn populate_condition_timestamps(obj: &mut Value, old_conds: &[Value]) {
    let now = object::now_rfc3339();
    let Some(cs) = obj
        .pointer_mut("/status/conditions")
        .and_then(|c| c.as_array_mut())
    else {
        return;
    };
    let unset = |v: Option<&Value>| v.and_then(|v| v.as_str()).is_none_or(|s| s.is_empty());
    for c in cs.iter_mut() {
        let transition = old_conds
            .iter()
            .find(|o| {
                o.get("type") == c.get("type")
                    && o.get("status") == c.get("status")
                    && !unset(o.get("lastTransitionTime"))
            })
            .and_then(|o| o.get("lastTransitionTime").cloned())
            .unwrap_or_else(|| json!(now));
        let Some(m) = c.as_object_mut() else { continue };
        if unset(m.get("lastUpdateTime")) {
            m.insert("lastUpdateTime".into(), json!(now));
        }
        if unset(m.get("lastTransitionTime")) {
            m.insert("lastTransitionTime".into(), transition);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn approval_changes_only_the_conditions_and_metadata() {
        let old = json!({"metadata": {"name": "c", "annotations": {"a": "1"}}, "spec": {"request": "x"},
            "status": {"certificate": "c", "conditions": [{"type": "Approved", "status": "True", "lastTransitionTime": "2020-01-01T00:00:00Z"}]}});
        let new = json!({"metadata": {"name": "c", "annotations": {"a": "2"}}, "spec": {"request": "y"},
            "status": {"conditions": [{"type": "Approved", "status": "True"}, {"type": "Failed", "status": "True"}], "certificate": "z"}});
        let out = CsrStrategy
            .prepare_subresource_update("approval", &old, &new)
            .expect("approval");
        assert_eq!(out["spec"]["request"], "x");
        assert_eq!(out["status"]["certificate"], "c");
        assert_eq!(out["metadata"]["annotations"]["a"], "2");
        let conds = &out["status"]["conditions"];
        assert_eq!(conds[0]["type"], "Approved");
        assert_eq!(
            conds[0]["lastTransitionTime"], "2020-01-01T00:00:00Z",
            "an unchanged condition keeps its transition time"
        );
        assert!(conds[1]["lastUpdateTime"].is_string(), "{conds}");
        assert!(conds[1]["lastTransitionTime"].is_string(), "{conds}");
    }

    #[test]
    fn status_keeps_the_spec_and_approval_but_takes_metadata() {
        let old = json!({"metadata": {"name": "c"}, "spec": {"request": "x"},
            "status": {"conditions": [{"type": "Approved", "status": "True", "reason": "r"}]}});
        let new = json!({"metadata": {"name": "c", "annotations": {"patchedstatus": "true"}}, "spec": {"request": "y"},
            "status": {"certificate": "z", "conditions": [{"type": "Approved", "status": "True", "reason": "changed"}, {"type": "StatusUpdate", "status": "True"}]}});
        let out = CsrStrategy
            .prepare_subresource_update("status", &old, &new)
            .expect("status");
        assert_eq!(out["spec"]["request"], "x");
        assert_eq!(out["status"]["certificate"], "z");
        assert_eq!(out["metadata"]["annotations"]["patchedstatus"], "true");
        assert_eq!(out["status"]["conditions"][0]["reason"], "r");
        assert_eq!(out["status"]["conditions"][1]["type"], "StatusUpdate");
        // Adding an approval through status is refused.
        let res = rk3s_api::Registry::builtin()
            .get("certificates.k8s.io", "v1", "certificatesigningrequests")
            .map(|r| (*r).clone())
            .expect("csr");
        let approved = json!({"metadata": {"name": "c"}, "spec": {"request": "x"},
            "status": {"conditions": [{"type": "Approved", "status": "True"}, {"type": "Denied", "status": "True"}]}});
        let errs = CsrStrategy.validate_update(&res, Some("status"), &approved, &old);
        assert!(
            errs.iter()
                .any(|e| e.detail == "updates may not add a condition of type \"Denied\""),
            "{errs:?}"
        );
        assert!(CsrStrategy
            .prepare_subresource_update("other", &old, &new)
            .is_none());
    }
}
