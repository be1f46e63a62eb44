//! The `rk3s.cattle.io/v1` `Addon` (k3s's `k3s.cattle.io/v1` Addon renamed): one per
//! manifest file in `kube-system`, named after the file, `spec.source` (the path) and
//! `spec.checksum` (hex SHA-256 of the applied content); `status.gvks` (k3s keeps these
//! in the `addon.k3s.cattle.io/gvks` annotation) and `status.objects` (what was applied
//! from the file: k3s's wrangler apply finds them by its `objectset.rio.cattle.io`
//! annotations) say what to prune when the file changes.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// API group of the Addon.
pub const GROUP: &str = "rk3s.cattle.io";
/// Version of the Addon.
pub const VERSION: &str = "v1";
/// `apiVersion` of the Addon.
pub const API_VERSION: &str = "rk3s.cattle.io/v1";
/// Kind of the Addon.
pub const KIND: &str = "Addon";
/// Resource (plural) of the Addon.
pub const PLURAL: &str = "addons";
/// Namespace of every Addon.
pub const NAMESPACE: &str = "kube-system";

/// One object applied from a manifest.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AppliedRef {
    /// `apiVersion`.
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    /// `kind`.
    pub kind: String,
    /// Namespace (absent for cluster-scoped objects).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
}

/// `status` of an Addon.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddonStatus {
    /// The kinds applied, k3s's `group/version, Kind=Kind` strings.
    #[serde(default)]
    pub gvks: Vec<String>,
    /// The objects applied.
    #[serde(default)]
    pub objects: Vec<AppliedRef>,
}

/// `spec` of an Addon.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddonSpec {
    /// Path of the manifest.
    #[serde(default)]
    pub source: String,
    /// Hex SHA-256 of the content last applied.
    #[serde(default)]
    pub checksum: String,
}

/// k3s's string of a group/version/kind (`apps/v1, Kind=Deployment`, `/v1, Kind=Pod`).
pub fn gvk_string(api_version: &str, kind: &str) -> String {
    let (g, v) = crate::parse::split_api_version(api_version);
    format!("{g}/{v}, Kind={kind}")
}

/// The objects of `previous` that are not in `current` (to delete), sorted.
pub fn removed(previous: &[AppliedRef], current: &[AppliedRef]) -> Vec<AppliedRef> {
    let now: BTreeSet<&AppliedRef> = current.iter().collect();
    let mut gone: Vec<AppliedRef> = previous
        .iter()
        .filter(|r| !now.contains(r))
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    gone.sort();
    gone
}

/// The status recording `objects`.
pub fn status_of(objects: &[AppliedRef]) -> AddonStatus {
    let gvks: BTreeSet<String> = objects
        .iter()
        .map(|o| gvk_string(&o.api_version, &o.kind))
        .collect();
    let mut objs = objects.to_vec();
    objs.sort();
    objs.dedup();
    AddonStatus {
        gvks: gvks.into_iter().collect(),
        objects: objs,
    }
}

/// Hex SHA-256 of `content`.
pub fn checksum(content: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, content);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The Addon object for server-side apply.
pub fn addon_object(name: &str, spec: &AddonSpec, status: Option<&AddonStatus>) -> Value {
    let mut o = json!({
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": spec,
    });
    if let Some(s) = status {
        o["status"] = json!(s);
    }
    o
}

/// The CustomResourceDefinition of the Addon (k3s's Addon CRD with our group; status is
/// not a subresource, so one apply writes spec and status).
pub fn crd() -> Value {
    let string = json!({"type": "string"});
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{PLURAL}.{GROUP}")},
        "spec": {
            "group": GROUP,
            "names": {"kind": KIND, "listKind": "AddonList", "plural": PLURAL, "singular": "addon"},
            "scope": "Namespaced",
            "versions": [{
                "name": VERSION,
                "served": true,
                "storage": true,
                "additionalPrinterColumns": [
                    {"name": "Source", "type": "string", "jsonPath": ".spec.source"},
                    {"name": "Checksum", "type": "string", "jsonPath": ".spec.checksum"},
                ],
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "apiVersion": string,
                        "kind": string,
                        "metadata": {"type": "object"},
                        "spec": {"type": "object", "properties": {
                            "source": string,
                            "checksum": string,
                        }},
                        "status": {"type": "object", "properties": {
                            "gvks": {"type": "array", "items": string},
                            "objects": {"type": "array", "items": {
                                "type": "object",
                                "properties": {
                                    "apiVersion": string,
                                    "kind": string,
                                    "namespace": string,
                                    "name": string,
                                },
                            }},
                        }},
                    },
                }},
            }],
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(kind: &str, ns: Option<&str>, name: &str) -> AppliedRef {
        AppliedRef {
            api_version: "v1".into(),
            kind: kind.into(),
            namespace: ns.map(str::to_string),
            name: name.into(),
        }
    }

    #[test]
    fn removed_objects_are_the_difference() {
        let prev = vec![
            r("ConfigMap", Some("default"), "a"),
            r("ConfigMap", Some("default"), "b"),
            r("Namespace", None, "n"),
        ];
        let now = vec![
            r("ConfigMap", Some("default"), "b"),
            r("Secret", Some("default"), "a"),
        ];
        assert_eq!(
            removed(&prev, &now),
            vec![
                r("ConfigMap", Some("default"), "a"),
                r("Namespace", None, "n")
            ]
        );
        assert!(removed(&now, &now).is_empty());
        let moved = vec![r("ConfigMap", Some("other"), "b")];
        assert_eq!(
            removed(&now, &moved).len(),
            2,
            "a namespace change is a different object"
        );
    }

    #[test]
    fn status_and_checksum() {
        let s = status_of(&[
            r("ConfigMap", Some("x"), "a"),
            AppliedRef {
                api_version: "apps/v1".into(),
                kind: "Deployment".into(),
                namespace: Some("x".into()),
                name: "d".into(),
            },
            r("ConfigMap", Some("x"), "a"),
        ]);
        assert_eq!(
            s.gvks,
            vec!["/v1, Kind=ConfigMap", "apps/v1, Kind=Deployment"]
        );
        assert_eq!(s.objects.len(), 2);
        assert_eq!(
            checksum(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let o = addon_object(
            "ccm",
            &AddonSpec {
                source: "/m/ccm.yaml".into(),
                checksum: "c".into(),
            },
            Some(&s),
        );
        assert_eq!(o["metadata"]["namespace"], "kube-system");
        assert_eq!(
            o["status"]["objects"][1]["kind"], "ConfigMap",
            "sorted by apiVersion"
        );
        assert_eq!(o["status"]["objects"][1]["namespace"], "x");
    }
}
