//! Shapes of the generated field table (`tags.rs`) and look-ups into it.

use crate::tags::{MESSAGES, RESOURCES};

/// How a field travels on the wire and how it looks in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `string`.
    Str,
    /// `int32` varint (negative values are sign-extended to 64 bits).
    I32,
    /// `int64` varint.
    I64,
    /// `bool` varint.
    Bool,
    /// `double`, fixed 64 bits.
    Double,
    /// `bytes`, base64 in JSON.
    Bytes,
    /// A message, by index into [`MESSAGES`].
    Msg(u16),
    /// `map<string, V>`: repeated entries {1: key, 2: value}.
    Map(&'static Kind),
    /// `meta.v1.Time`: RFC 3339 with seconds precision, `null` when zero.
    Time,
    /// `meta.v1.MicroTime`: RFC 3339 with microseconds, `null` when zero.
    MicroTime,
    /// `meta.v1.Duration`: Go duration string.
    Duration,
    /// A message {1: raw bytes} carrying embedded JSON (RawExtension, FieldsV1, JSON).
    RawJson,
    /// `util.intstr.IntOrString`.
    IntOrString,
    /// `api.resource.Quantity`: its string form.
    Quantity,
    /// `JSONSchemaPropsOrArray` (index of the JSONSchemaProps message).
    SchemaOrArray(u16),
    /// `JSONSchemaPropsOrBool` (index of the JSONSchemaProps message).
    SchemaOrBool(u16),
    /// `JSONSchemaPropsOrStringArray` (index of the JSONSchemaProps message).
    SchemaOrStringArray(u16),
    /// A Go `[]string` type sent as a message {1: repeated string items}.
    StringList,
}

/// Field flag: the field is repeated.
pub(crate) const REPEATED: u8 = 1;
/// Field flag: an empty string is left out of the JSON (Go `omitempty` on a plain string).
pub(crate) const OMIT_EMPTY: u8 = 2;
/// Field flag: the message's fields go into the parent object (Go `json:",inline"`).
pub(crate) const INLINE: u8 = 4;

/// Field flag: a zero int or `false` is left out of the JSON (a plain Go value with `omitempty`).
pub(crate) const OMIT_ZERO: u8 = 8;

/// One field: (tag, JSON name, kind, flags).
#[derive(Debug)]
pub(crate) struct Field(pub u32, pub &'static str, pub Kind, pub u8);

/// One message: (full proto name, fields sorted by tag).
#[derive(Debug)]
pub(crate) struct Message(pub &'static str, pub &'static [Field]);

/// One top-level resource: (apiVersion, kind, message index).
#[derive(Debug)]
pub(crate) struct Resource(pub &'static str, pub &'static str, pub u16);

impl Message {
    /// The field with this tag, if the message has one.
    pub(crate) fn field(&self, tag: u32) -> Option<&'static Field> {
        let fields: &'static [Field] = self.1;
        fields
            .binary_search_by_key(&tag, |f| f.0)
            .ok()
            .and_then(|i| fields.get(i))
    }
}

/// The message at an index taken from the table itself.
pub(crate) fn message(index: u16) -> Option<&'static Message> {
    MESSAGES.get(usize::from(index))
}

/// Index of a message by its full proto name (`k8s.io.api.core.v1.Namespace`).
pub(crate) fn index_of(name: &str) -> Option<u16> {
    MESSAGES
        .binary_search_by(|m| m.0.cmp(name))
        .ok()
        .and_then(|i| u16::try_from(i).ok())
}

/// Proto package path (without `k8s.io.` and version) of an API group.
fn group_package(group: &str) -> String {
    match group {
        "" => "api.core".to_string(),
        "apiextensions.k8s.io" => "apiextensions_apiserver.pkg.apis.apiextensions".to_string(),
        "apiregistration.k8s.io" => "kube_aggregator.pkg.apis.apiregistration".to_string(),
        "meta.k8s.io" => "apimachinery.pkg.apis.meta".to_string(),
        "internal.apiserver.k8s.io" => "api.apiserverinternal".to_string(),
        "metrics.k8s.io" => "metrics.pkg.apis.metrics".to_string(),
        "custom.metrics.k8s.io" => "metrics.pkg.apis.custom_metrics".to_string(),
        "external.metrics.k8s.io" => "metrics.pkg.apis.external_metrics".to_string(),
        other => format!("api.{}", other.split('.').next().unwrap_or(other)),
    }
}

/// Index of the message for an apiVersion and kind.
pub(crate) fn index_for(api_version: &str, kind: &str) -> Option<u16> {
    if let Some(r) = RESOURCES.iter().find(|r| r.0 == api_version && r.1 == kind) {
        return Some(r.2);
    }
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    if version.is_empty() || kind.is_empty() {
        return None;
    }
    index_of(&format!("k8s.io.{}.{version}.{kind}", group_package(group)))
        // meta.k8s.io kinds (DeleteOptions, Status, ...) are registered in every group version.
        .or_else(|| index_of(&format!("k8s.io.apimachinery.pkg.apis.meta.v1.{kind}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_sorted_so_binary_search_works() {
        assert!(MESSAGES.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(MESSAGES
            .iter()
            .all(|m| m.1.windows(2).all(|w| w[0].0 < w[1].0)));
    }

    #[test]
    fn message_references_are_in_range() {
        for m in MESSAGES {
            for f in m.1 {
                if let Kind::Msg(i) | Kind::SchemaOrArray(i) = f.2 {
                    assert!(message(i).is_some(), "{}.{}", m.0, f.1);
                }
            }
        }
    }

    #[test]
    fn json_names_come_from_openapi() {
        let idx = index_of("k8s.io.api.core.v1.AWSElasticBlockStoreVolumeSource");
        let m = idx.and_then(message).map(|m| m.1);
        let names: Vec<&str> = m.unwrap_or_default().iter().map(|f| f.1).collect();
        assert_eq!(names, ["volumeID", "fsType", "partition", "readOnly"]);
        let pod_status = index_of("k8s.io.api.core.v1.PodStatus").and_then(message);
        let names: Vec<&str> = pod_status
            .map(|m| m.1)
            .unwrap_or_default()
            .iter()
            .map(|f| f.1)
            .collect();
        assert!(
            names.contains(&"podIP") && names.contains(&"podIPs") && names.contains(&"hostIPs")
        );
    }

    #[test]
    fn finds_messages_by_api_version_and_kind() {
        let name = |av, k| index_for(av, k).and_then(message).map(|m| m.0);
        assert_eq!(
            name("v1", "Namespace"),
            Some("k8s.io.api.core.v1.Namespace")
        );
        assert_eq!(
            name("apps/v1", "Deployment"),
            Some("k8s.io.api.apps.v1.Deployment")
        );
        assert_eq!(
            name("autoscaling/v1", "Scale"),
            Some("k8s.io.api.autoscaling.v1.Scale")
        );
        assert_eq!(
            name("storage.k8s.io/v1", "CSIDriver"),
            Some("k8s.io.api.storage.v1.CSIDriver")
        );
        assert_eq!(
            name("apiextensions.k8s.io/v1", "CustomResourceDefinition"),
            Some(
                "k8s.io.apiextensions_apiserver.pkg.apis.apiextensions.v1.CustomResourceDefinition"
            )
        );
        assert_eq!(
            name("apps/v1", "DeleteOptions"),
            Some("k8s.io.apimachinery.pkg.apis.meta.v1.DeleteOptions")
        );
        assert_eq!(
            name("policy/v1", "Eviction"),
            Some("k8s.io.api.policy.v1.Eviction")
        );
        assert_eq!(name("v1", "NoSuchKind"), None);
    }
}
