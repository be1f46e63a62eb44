//! Jobs: upstream's Job strategy generates the selector (on the Job's uid) and the
//! matching pod-template labels unless `spec.manualSelector`.

use rk3s_api::ResourceInfo;
use serde_json::{json, Value};

use super::Strategy;

/// The strategy of `jobs`.
pub struct JobStrategy;

impl Strategy for JobStrategy {
    fn prepare_for_create(&self, _res: &ResourceInfo, obj: &mut Value) {
        let Some(o) = obj.as_object_mut() else { return };
        o.insert("status".into(), json!({}));
        let uid = o
            .get("metadata")
            .and_then(|m| m.get("uid"))
            .and_then(|u| u.as_str())
            .unwrap_or("")
            .to_string();
        let name = o
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(|u| u.as_str())
            .unwrap_or("")
            .to_string();
        let manual = o
            .get("spec")
            .and_then(|s| s.get("manualSelector"))
            .and_then(|m| m.as_bool())
            .unwrap_or(false);
        if !manual && !uid.is_empty() {
            // Upstream's Job strategy: a generated selector on the Job's uid and the
            // matching labels on its pod template.
            if let Some(spec) = o.get_mut("spec").and_then(|s| s.as_object_mut()) {
                spec.insert(
                    "selector".into(),
                    json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}),
                );
                let tmpl = spec.entry("template").or_insert_with(|| json!({}));
                if let Some(t) = tmpl.as_object_mut() {
                    let meta = t.entry("metadata").or_insert_with(|| json!({}));
                    if let Some(m) = meta.as_object_mut() {
                        let labels = m.entry("labels").or_insert_with(|| json!({}));
                        if let Some(l) = labels.as_object_mut() {
                            l.insert("batch.kubernetes.io/controller-uid".into(), json!(uid));
                            l.insert("batch.kubernetes.io/job-name".into(), json!(name));
                            l.insert("controller-uid".into(), json!(uid));
                            l.insert("job-name".into(), json!(name));
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jobs() -> ResourceInfo {
        rk3s_api::Registry::builtin()
            .get("batch", "v1", "jobs")
            .map(|r| (*r).clone())
            .expect("jobs")
    }

    #[test]
    fn a_job_gets_a_selector_on_its_uid_unless_manual() {
        let mut job = json!({"metadata": {"name": "j", "uid": "u1"}, "spec": {"template": {}}, "status": {"active": 1}});
        JobStrategy.prepare_for_create(&jobs(), &mut job);
        assert_eq!(job["status"], json!({}));
        assert_eq!(
            job["spec"]["selector"],
            json!({"matchLabels": {"batch.kubernetes.io/controller-uid": "u1"}})
        );
        assert_eq!(
            job["spec"]["template"]["metadata"]["labels"]["job-name"],
            "j"
        );
        let mut manual =
            json!({"metadata": {"name": "j", "uid": "u1"}, "spec": {"manualSelector": true}});
        JobStrategy.prepare_for_create(&jobs(), &mut manual);
        assert!(manual["spec"].get("selector").is_none());
    }
}
