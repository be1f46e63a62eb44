//! Decoder for Kubernetes protobuf bodies (`application/vnd.kubernetes.protobuf`).
//!
//! kubectl ≥ 1.32 sends the bodies of its typed create/update calls as
//! protobuf: the 4-byte magic `k8s\0` followed by a `runtime.Unknown` message
//! whose `raw` field holds the object's own message. [`decode`] turns such a
//! body into the JSON object the JSON API would have received: camelCase field
//! names, `kind`/`apiVersion`, RFC 3339 times, int-or-string, quantities as
//! strings, base64 for `[]byte` fields and embedded JSON for RawExtension and
//! FieldsV1.
//!
//! Field numbers come from a generated table (`src/tags.rs`, written by
//! `gen/gen_tags.py` from the k8s-pb crate's field numbers and k8s-openapi's
//! JSON names).

mod decode;
mod table;
#[allow(clippy::all)]
mod tags;
mod wire;

use serde_json::Value;

/// The media type of Kubernetes protobuf bodies.
pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// The 4 bytes every Kubernetes protobuf body starts with.
pub const MAGIC: &[u8; 4] = b"k8s\0";

/// Why a protobuf body could not be turned into JSON.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The body does not start with the `k8s\0` magic.
    #[error("not a Kubernetes protobuf body: missing the k8s\\0 prefix")]
    NotProtobuf,
    /// The bytes end in the middle of a field.
    #[error("truncated protobuf data")]
    Truncated,
    /// A varint is longer than 10 bytes.
    #[error("malformed protobuf varint")]
    VarintOverflow,
    /// A field key has an invalid field number.
    #[error("invalid protobuf field number {0}")]
    BadTag(u64),
    /// A field key has an unknown or unsupported wire type.
    #[error("unsupported protobuf wire type {wire_type} for field {tag}")]
    BadWireType {
        /// Field number.
        tag: u32,
        /// Wire type found.
        wire_type: u8,
    },
    /// A known field arrived with a wire type that does not fit its declared type.
    #[error("field {field} of {message}: expected {expected} on the wire")]
    WrongWireType {
        /// Message name.
        message: &'static str,
        /// JSON name of the field.
        field: &'static str,
        /// What the field's type needs.
        expected: &'static str,
    },
    /// A string field is not valid UTF-8.
    #[error("field {field} of {message} is not valid UTF-8")]
    InvalidUtf8 {
        /// Message name.
        message: &'static str,
        /// JSON name of the field.
        field: &'static str,
    },
    /// An embedded JSON document (RawExtension, FieldsV1, JSON) does not parse.
    #[error("field {field} of {message} holds invalid JSON: {source}")]
    InvalidJson {
        /// Message name.
        message: &'static str,
        /// JSON name of the field.
        field: &'static str,
        /// Parser error.
        source: serde_json::Error,
    },
    /// A double field is NaN or infinite, which JSON cannot hold.
    #[error("field {field} of {message} is not a finite number")]
    NonFinite {
        /// Message name.
        message: &'static str,
        /// JSON name of the field.
        field: &'static str,
    },
    /// The envelope has no apiVersion/kind and the caller named no message.
    #[error("protobuf envelope has no apiVersion/kind")]
    MissingTypeMeta,
    /// No known message for this apiVersion and kind.
    #[error("no protobuf message known for apiVersion {api_version:?}, kind {kind:?}")]
    UnknownKind {
        /// apiVersion from the envelope.
        api_version: String,
        /// kind from the envelope.
        kind: String,
    },
    /// The caller named a message the table does not have.
    #[error("unknown protobuf message {0}")]
    UnknownMessage(String),
    /// The envelope declares a content encoding (compression) we do not support.
    #[error("unsupported protobuf content encoding {0:?}")]
    UnsupportedEncoding(String),
    /// Messages nest deeper than any Kubernetes object does.
    #[error("protobuf messages nested too deeply")]
    TooDeep,
}

/// Whether a `Content-Type` header value names Kubernetes protobuf
/// (parameters such as `; charset=` are ignored).
pub fn is_protobuf_content_type(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|m| m.trim().eq_ignore_ascii_case(CONTENT_TYPE))
}

/// Decodes an envelope (`k8s\0` + runtime.Unknown) into the JSON object, with
/// `kind` and `apiVersion` set from the envelope's typeMeta. The object's
/// message is derived from apiVersion + kind (see [`message_name`]).
pub fn decode(bytes: &[u8]) -> Result<Value, DecodeError> {
    decode::envelope(bytes, None, 0)
}

/// Like [`decode`], but when `expected_message` is given (a full proto name
/// such as `k8s.io.api.autoscaling.v1.Scale`), the object is decoded as that
/// message whatever the envelope says; useful for subresources and for
/// envelopes without typeMeta.
pub fn decode_with(bytes: &[u8], expected_message: Option<&str>) -> Result<Value, DecodeError> {
    decode::envelope(bytes, expected_message, 0)
}

/// Decodes one bare message (no magic, no envelope) as the named proto
/// message into JSON; `kind`/`apiVersion` are not added.
pub fn decode_message(message: &str, bytes: &[u8]) -> Result<Value, DecodeError> {
    let index =
        table::index_of(message).ok_or_else(|| DecodeError::UnknownMessage(message.to_string()))?;
    decode::message(index, bytes, 0).map(Value::Object)
}

/// The full proto message name for an apiVersion and kind, e.g. `("v1",
/// "Namespace")` → `k8s.io.api.core.v1.Namespace`, `("apps/v1",
/// "Deployment")` → `k8s.io.api.apps.v1.Deployment`. Kinds of meta.k8s.io
/// (DeleteOptions, Status, ...) are found under any group version.
pub fn message_name(api_version: &str, kind: &str) -> Option<&'static str> {
    table::index_for(api_version, kind)
        .and_then(table::message)
        .map(|m| m.0)
}

#[cfg(test)]
mod fixture_tests {
    //! Bodies captured from `kubectl create ...` (kubectl 1.32) against a
    //! recording HTTP server, compared with what the same command prints with
    //! `--dry-run=client -o json`.
    use super::*;

    fn load(name: &str) -> (Vec<u8>, Value) {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
        let bin = std::fs::read(format!("{dir}/{name}.bin")).unwrap_or_default();
        let json = std::fs::read(format!("{dir}/{name}.json")).unwrap_or_default();
        let expected = serde_json::from_slice(&json).unwrap_or(Value::Null);
        (bin, expected)
    }

    fn check(name: &str) -> Value {
        let (bin, mut expected) = load(name);
        assert!(bin.starts_with(MAGIC), "{name}: fixture is not protobuf");
        let got = match decode(&bin) {
            Ok(v) => v,
            Err(e) => panic!("{name}: {e}"),
        };
        // kubectl -o json does not print the namespace it was given with -n
        if let (Some(ns), Some(meta)) = (
            got.pointer("/metadata/namespace"),
            expected.get_mut("metadata"),
        ) {
            if let Some(m) = meta.as_object_mut() {
                m.entry("namespace").or_insert(ns.clone());
            }
        }
        assert_eq!(got, expected, "{name}");
        got
    }

    #[test]
    fn namespace() {
        let v = check("namespace");
        assert_eq!(v["metadata"]["name"], "demo");
        assert_eq!(v["metadata"]["creationTimestamp"], Value::Null);
        // kind and apiVersion come first, as in Go's JSON
        let keys: Vec<&String> = v
            .as_object()
            .map(|m| m.keys().take(2).collect())
            .unwrap_or_default();
        assert_eq!(keys, ["kind", "apiVersion"]);
    }

    #[test]
    fn configmaps_and_secrets() {
        assert_eq!(check("configmap")["data"]["a"], "b");
        let bin = check("configmap_binary");
        assert_eq!(bin["binaryData"]["blob"], "//4AAQ==");
        assert_eq!(bin["data"]["k"], "v");
        assert_eq!(check("secret")["data"]["p"], "cQ==");
        let reg = check("secret_docker");
        assert_eq!(reg["type"], "kubernetes.io/dockerconfigjson");
        assert!(reg["data"][".dockerconfigjson"]
            .as_str()
            .is_some_and(|s| !s.is_empty()));
    }

    #[test]
    fn workloads() {
        let d = check("deployment");
        assert_eq!(d["spec"]["replicas"], 2);
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"],
            80
        );
        let c = check("cronjob");
        assert_eq!(c["spec"]["schedule"], "*/5 * * * *");
        assert_eq!(
            c["spec"]["jobTemplate"]["spec"]["template"]["spec"]["restartPolicy"],
            "OnFailure"
        );
        let j = check("job");
        assert_eq!(
            j["spec"]["template"]["spec"]["containers"][0]["command"],
            serde_json::json!(["echo", "hi"])
        );
    }

    #[test]
    fn services() {
        assert_eq!(
            check("service_nodeport")["spec"]["ports"][0]["targetPort"],
            8080
        );
        assert_eq!(
            check("service_clusterip")["spec"]["ports"][0]["targetPort"],
            "web"
        );
        assert_eq!(check("service_lb")["spec"]["type"], "LoadBalancer");
    }

    #[test]
    fn policy_rbac_and_others() {
        assert_eq!(check("quota")["spec"]["hard"]["memory"], "1G");
        assert_eq!(check("pdb")["spec"]["minAvailable"], "50%");
        let rb = check("rolebinding");
        assert_eq!(rb["roleRef"]["name"], "view");
        assert_eq!(rb["subjects"].as_array().map(Vec::len), Some(2));
        check("clusterrolebinding");
        check("serviceaccount");
        let pc = check("priorityclass");
        assert_eq!(pc["value"], 1000);
        assert_eq!(pc["preemptionPolicy"], "Never");
        let ing = check("ingress");
        assert_eq!(ing["spec"]["ingressClassName"], "nginx");
        assert_eq!(ing["spec"]["rules"][0]["host"], "foo.com");
    }

    #[test]
    fn content_type_detection() {
        assert!(is_protobuf_content_type(
            "application/vnd.kubernetes.protobuf"
        ));
        assert!(is_protobuf_content_type(
            "application/vnd.kubernetes.protobuf; charset=utf-8"
        ));
        assert!(!is_protobuf_content_type("application/json"));
        assert!(is_protobuf_content_type(
            "Application/Vnd.Kubernetes.Protobuf"
        ));
        assert!(!is_protobuf_content_type(
            "application/vnd.kubernetes.protobuf+json"
        ));
    }
}

#[cfg(test)]
mod options_tests {
    //! DeleteOptions and Eviction, as client-go encodes them for DELETE and
    //! `pods/eviction` (the envelope's typeMeta is the client's group version).
    use super::*;
    use serde_json::json;

    fn field(tag: u32, wire: u8, payload: &[u8], out: &mut Vec<u8>) {
        out.push(((tag << 3) as u8) | wire);
        if wire == 2 {
            out.push(payload.len() as u8);
        }
        out.extend_from_slice(payload);
    }

    fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
        let mut tm = Vec::new();
        field(1, 2, api_version.as_bytes(), &mut tm);
        field(2, 2, kind.as_bytes(), &mut tm);
        let mut out = MAGIC.to_vec();
        field(1, 2, &tm, &mut out);
        field(2, 2, raw, &mut out);
        out
    }

    #[test]
    fn delete_options_keep_explicit_zero_and_false() {
        // gracePeriodSeconds = 0, preconditions{uid, resourceVersion}, orphanDependents
        // = false, propagationPolicy, dryRun = [All]
        let mut m = Vec::new();
        field(1, 0, &[0], &mut m);
        let mut pre = Vec::new();
        field(1, 2, b"u1", &mut pre);
        field(2, 2, b"42", &mut pre);
        field(2, 2, &pre, &mut m);
        field(3, 0, &[0], &mut m);
        field(4, 2, b"Orphan", &mut m);
        field(5, 2, b"All", &mut m);
        for gv in ["v1", "apps/v1", "meta.k8s.io/v1"] {
            assert_eq!(
                decode(&envelope(gv, "DeleteOptions", &m)).expect("decodes"),
                json!({"kind": "DeleteOptions", "apiVersion": gv, "gracePeriodSeconds": 0, "preconditions": {"uid": "u1", "resourceVersion": "42"}, "orphanDependents": false, "propagationPolicy": "Orphan", "dryRun": ["All"]})
            );
        }
    }

    #[test]
    fn eviction_with_delete_options() {
        let mut meta = Vec::new();
        field(1, 2, b"web-0", &mut meta);
        let mut opts = Vec::new();
        field(1, 0, &[30], &mut opts);
        let mut m = Vec::new();
        field(1, 2, &meta, &mut m);
        field(2, 2, &opts, &mut m);
        for gv in ["policy/v1", "policy/v1beta1"] {
            assert_eq!(
                decode(&envelope(gv, "Eviction", &m)).expect("decodes"),
                json!({"kind": "Eviction", "apiVersion": gv, "metadata": {"name": "web-0"}, "deleteOptions": {"gracePeriodSeconds": 30}})
            );
        }
    }

    /// Length-delimited field `n` holding `body`.
    fn ld(n: u32, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut varint = |mut v: u64| loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                break;
            } else {
                out.push(b | 0x80);
            }
        };
        varint(u64::from(n) << 3 | 2);
        varint(body.len() as u64);
        out.extend_from_slice(body);
        out
    }

    /// Fields of structs upstream inlines (VolumeSource into Volume, ...) keep their
    /// JSON spelling: a protobuf Pod's downwardAPI volume is not lost (it was read as
    /// `downwardApi`, dropped, and the volume defaulted to an emptyDir).
    #[test]
    fn inlined_sources_keep_upstream_json_names() {
        let selector = [ld(2, b"metadata.name")].concat();
        let item = [ld(1, b"podname"), ld(2, &selector)].concat();
        let downward = ld(1, &item);
        let source = ld(16, &downward);
        let volume = [ld(1, b"podinfo"), ld(2, &source)].concat();
        let v = decode_message("k8s.io.api.core.v1.Volume", &volume).expect("decodes");
        assert_eq!(
            v,
            json!({"name": "podinfo", "downwardAPI": {"items": [
                {"path": "podname", "fieldRef": {"fieldPath": "metadata.name"}}]}})
        );
        let scale_io = ld(2, &ld(19, &ld(1, b"gw")));
        let v =
            decode_message("k8s.io.api.core.v1.PersistentVolumeSpec", &scale_io).expect("decodes");
        assert_eq!(v["scaleIO"]["gateway"], "gw", "{v}");
        // APIService (no OpenAPI definition in k8s-openapi): `insecureSkipTLSVerify`.
        let spec = [ld(2, b"metrics.k8s.io"), vec![4 << 3, 1]].concat();
        let v = decode_message(
            "k8s.io.kube_aggregator.pkg.apis.apiregistration.v1.APIServiceSpec",
            &spec,
        )
        .expect("decodes");
        assert_eq!(
            v,
            json!({"group": "metrics.k8s.io", "insecureSkipTLSVerify": true})
        );
    }
}
