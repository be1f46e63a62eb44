//! Request and response bodies.
//!
//! Requests: [`decode_request`] is the one decoder of request bodies (JSON, YAML and
//! Kubernetes protobuf by `Content-Type`); [`decode_delete_options`],
//! [`decode_eviction`] and [`decode_token_request`] add upstream's typed checks for
//! the bodies whose fields the handlers read, so a wrong-typed or malformed body is a
//! 400 with the message upstream's Go decoder gives, never a panic. Explicit `null`s
//! in those bodies mean "absent", as in Go's typed decoding.
//!
//! Responses: whole buffers or streams (watch).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use serde_json::{Map, Value};
use tokio::sync::mpsc;

/// The body of every response: a full buffer or a channel of chunks.
pub enum ResponseBody {
    /// A complete body.
    Full(Option<Bytes>),
    /// A stream of chunks; ends when the sender is dropped.
    Stream(mpsc::Receiver<Bytes>),
}

impl ResponseBody {
    /// A complete body.
    pub fn full(b: impl Into<Bytes>) -> Self {
        ResponseBody::Full(Some(b.into()))
    }

    /// An empty body.
    pub fn empty() -> Self {
        ResponseBody::Full(None)
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            ResponseBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ResponseBody::Stream(rx) => match rx.poll_recv(cx) {
                Poll::Ready(Some(b)) => Poll::Ready(Some(Ok(Frame::data(b)))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, ResponseBody::Full(None))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            ResponseBody::Full(Some(b)) => http_body::SizeHint::with_exact(b.len() as u64),
            ResponseBody::Full(None) => http_body::SizeHint::with_exact(0),
            ResponseBody::Stream(_) => http_body::SizeHint::default(),
        }
    }
}

/// A response with this crate's body.
pub type Response = http::Response<ResponseBody>;

/// A JSON response.
pub fn json(code: u16, v: &serde_json::Value) -> Response {
    let body = serde_json::to_vec(v).unwrap_or_default();
    bytes_response(code, "application/json", body)
}

/// A response with the given content type.
pub fn bytes_response(code: u16, content_type: &str, body: impl Into<Bytes>) -> Response {
    let mut r = http::Response::new(ResponseBody::full(body));
    *r.status_mut() =
        http::StatusCode::from_u16(code).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    r
}

/// The `Status` response for an API error.
pub fn error(e: &rk3s_api::ApiError) -> Response {
    let mut r = json(e.code, &e.to_status());
    if let Some(s) = e.retry_after_seconds {
        if let Ok(v) = http::HeaderValue::from_str(&s.to_string()) {
            r.headers_mut().insert(http::header::RETRY_AFTER, v);
        }
    }
    r
}

// ---------------------------------------------------------------------------------
// Request bodies
// ---------------------------------------------------------------------------------

/// The `Content-Type` of a request, if it has one that is valid text.
pub fn content_type(headers: &http::HeaderMap) -> Option<&str> {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
}

/// The encodings of request bodies the API decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// `application/json` (also no `Content-Type` and `*/*`, as upstream).
    Json,
    /// `application/yaml` (and `application/x-yaml`, `text/yaml`).
    Yaml,
    /// `application/vnd.kubernetes.protobuf`: `k8s\0` + runtime.Unknown.
    Protobuf,
}

impl BodyFormat {
    /// The format a `Content-Type` value names (parameters and case are ignored).
    pub fn from_content_type(content_type: Option<&str>) -> Result<BodyFormat, RequestBodyError> {
        let media_type = content_type
            .and_then(|c| c.split(';').next())
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match media_type.as_str() {
            "" | "*/*" | "application/json" => Ok(BodyFormat::Json),
            "application/yaml" | "application/x-yaml" | "text/yaml" => Ok(BodyFormat::Yaml),
            rk3s_protobuf::CONTENT_TYPE => Ok(BodyFormat::Protobuf),
            _ => Err(RequestBodyError::UnsupportedMediaType(media_type)),
        }
    }
}

/// Why a request body could not be decoded into JSON.
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    /// The `Content-Type` is none the API decodes (415).
    #[error("unsupported media type {0:?}")]
    UnsupportedMediaType(String),
    /// The body is not JSON (the parser's message).
    #[error("{0}")]
    Json(serde_json::Error),
    /// The body is not YAML that converts to JSON.
    #[error("error converting YAML to JSON: {0}")]
    Yaml(serde_yaml::Error),
    /// The body is not a Kubernetes protobuf envelope of a known kind (upstream's
    /// message where it has a fixed one).
    #[error("{0}")]
    Protobuf(String),
}

/// Decodes a request body into JSON by its `Content-Type`: JSON, YAML, or Kubernetes
/// protobuf. A protobuf envelope is decoded as the message its apiVersion/kind name;
/// `default_message` (a full proto name) is used when the envelope has neither, as
/// upstream defaults the kind from the endpoint. The value may be any JSON value: the
/// callers check its shape.
pub fn decode_request(
    content_type: Option<&str>,
    body: &[u8],
    default_message: Option<&str>,
) -> Result<Value, RequestBodyError> {
    match BodyFormat::from_content_type(content_type)? {
        BodyFormat::Json => serde_json::from_slice(body).map_err(RequestBodyError::Json),
        BodyFormat::Yaml => serde_yaml::from_slice(body).map_err(RequestBodyError::Yaml),
        BodyFormat::Protobuf => decode_protobuf(body, default_message),
    }
}

fn decode_protobuf(body: &[u8], default_message: Option<&str>) -> Result<Value, RequestBodyError> {
    use rk3s_protobuf::DecodeError;
    if body.is_empty() {
        return Err(RequestBodyError::Protobuf("empty data".into()));
    }
    let r = match rk3s_protobuf::decode(body) {
        Err(DecodeError::MissingTypeMeta) if default_message.is_some() => {
            rk3s_protobuf::decode_with(body, default_message)
        }
        r => r,
    };
    r.map_err(|e| {
        RequestBodyError::Protobuf(match e {
            DecodeError::NotProtobuf => {
                let prefix: Vec<String> =
                    rk3s_protobuf::MAGIC.iter().map(|b| b.to_string()).collect();
                format!(
                    "provided data does not appear to be a protobuf message, expected prefix [{}]",
                    prefix.join(" ")
                )
            }
            other => other.to_string(),
        })
    })
}

/// The Go type a field decodes into, as far as upstream's `encoding/json` messages go.
#[derive(Debug, Clone, Copy)]
enum GoType {
    /// `int64` (or `*int64`).
    Int64,
    /// `bool` (or `*bool`).
    Bool,
    /// A string kind, with its Go type name (`string`, `types.UID`, ...).
    Str(&'static str),
    /// `[]string`.
    StrSlice,
    /// A struct (or pointer to one).
    Struct(&'static GoStruct),
}

/// A Go struct: its name, qualified type name and the fields we check (JSON name,
/// type); other fields pass through unchecked.
#[derive(Debug)]
struct GoStruct {
    name: &'static str,
    qualified: &'static str,
    fields: &'static [(&'static str, GoType)],
}

impl GoType {
    fn go_name(self) -> &'static str {
        match self {
            GoType::Int64 => "int64",
            GoType::Bool => "bool",
            GoType::Str(n) => n,
            GoType::StrSlice => "[]string",
            GoType::Struct(s) => s.qualified,
        }
    }
}

static PRECONDITIONS: GoStruct = GoStruct {
    name: "Preconditions",
    qualified: "v1.Preconditions",
    fields: &[
        ("uid", GoType::Str("types.UID")),
        ("resourceVersion", GoType::Str("string")),
    ],
};

static DELETE_OPTIONS: GoStruct = GoStruct {
    name: "DeleteOptions",
    qualified: "v1.DeleteOptions",
    fields: &[
        ("kind", GoType::Str("string")),
        ("apiVersion", GoType::Str("string")),
        ("gracePeriodSeconds", GoType::Int64),
        ("preconditions", GoType::Struct(&PRECONDITIONS)),
        ("orphanDependents", GoType::Bool),
        ("propagationPolicy", GoType::Str("v1.DeletionPropagation")),
        ("dryRun", GoType::StrSlice),
        (
            "ignoreStoreReadErrorWithClusterBreakingPotential",
            GoType::Bool,
        ),
    ],
};

/// The identifying fields of ObjectMeta (the rest is checked with the object's kind).
static OBJECT_META_NAMES: GoStruct = GoStruct {
    name: "ObjectMeta",
    qualified: "v1.ObjectMeta",
    fields: &[
        ("name", GoType::Str("string")),
        ("generateName", GoType::Str("string")),
        ("namespace", GoType::Str("string")),
        ("uid", GoType::Str("types.UID")),
        ("resourceVersion", GoType::Str("string")),
    ],
};

static EVICTION: GoStruct = GoStruct {
    name: "Eviction",
    qualified: "v1.Eviction",
    fields: &[
        ("kind", GoType::Str("string")),
        ("apiVersion", GoType::Str("string")),
        ("metadata", GoType::Struct(&OBJECT_META_NAMES)),
        ("deleteOptions", GoType::Struct(&DELETE_OPTIONS)),
    ],
};

static BOUND_OBJECT_REFERENCE: GoStruct = GoStruct {
    name: "BoundObjectReference",
    qualified: "v1.BoundObjectReference",
    fields: &[
        ("kind", GoType::Str("string")),
        ("apiVersion", GoType::Str("string")),
        ("name", GoType::Str("string")),
        ("uid", GoType::Str("types.UID")),
    ],
};

static TOKEN_REQUEST_SPEC: GoStruct = GoStruct {
    name: "TokenRequestSpec",
    qualified: "v1.TokenRequestSpec",
    fields: &[
        ("audiences", GoType::StrSlice),
        ("expirationSeconds", GoType::Int64),
        ("boundObjectRef", GoType::Struct(&BOUND_OBJECT_REFERENCE)),
    ],
};

static TOKEN_REQUEST: GoStruct = GoStruct {
    name: "TokenRequest",
    qualified: "v1.TokenRequest",
    fields: &[
        ("kind", GoType::Str("string")),
        ("apiVersion", GoType::Str("string")),
        ("metadata", GoType::Struct(&OBJECT_META_NAMES)),
        ("spec", GoType::Struct(&TOKEN_REQUEST_SPEC)),
    ],
};

/// Go's message for a value of the wrong type in struct field `owner`.`path`.
fn field_type_error(v: &Value, t: GoType, owner: &str, path: &str) -> String {
    let word = rk3s_openapi::decode::value_word(v, matches!(t, GoType::Int64));
    if owner.is_empty() && path.is_empty() {
        format!(
            "json: cannot unmarshal {word} into Go value of type {}",
            t.go_name()
        )
    } else {
        format!(
            "json: cannot unmarshal {word} into Go struct field {owner}.{path} of type {}",
            t.go_name()
        )
    }
}

/// Checks `v` against `t` as Go's decoder would, normalizing it to what the typed
/// round trip gives: explicit nulls in objects are dropped (absent in Go), null items
/// of a `[]string` become `""`. `owner` is the innermost Go struct holding `v` and
/// `path` its JSON path (both only for the message). The first error in document
/// order wins, as in Go.
fn check_go(v: &mut Value, t: GoType, owner: &str, path: &str) -> Result<(), String> {
    let ok = match (t, &mut *v) {
        (_, Value::Null) => true,
        (GoType::Int64, Value::Number(n)) => n.as_i64().is_some(),
        (GoType::Bool, Value::Bool(_)) | (GoType::Str(_), Value::String(_)) => true,
        (GoType::StrSlice, Value::Array(items)) => {
            for item in items.iter_mut() {
                match item {
                    Value::Null => *item = Value::String(String::new()),
                    Value::String(_) => {}
                    other => {
                        return Err(field_type_error(other, GoType::Str("string"), owner, path))
                    }
                }
            }
            true
        }
        (GoType::Struct(s), Value::Object(m)) => {
            m.retain(|_, v| !v.is_null());
            for (k, fv) in m.iter_mut() {
                let Some(&(_, ft)) = s.fields.iter().find(|(n, _)| n == k) else {
                    continue;
                };
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                check_go(fv, ft, s.name, &p)?;
            }
            true
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(field_type_error(v, t, owner, path))
    }
}

/// The Go type upstream's `SimpleMetaFactory.Interpret` decodes into to find the kind.
const FIND_KIND: &str = r#"struct { APIVersion string "json:\"apiVersion,omitempty\""; Kind string "json:\"kind,omitempty\"" }"#;

/// Reads apiVersion and kind as upstream does before decoding the object itself
/// (`couldn't get version/kind; json parse error: ...` when the body is not an object
/// or they are not strings). A `null` body has neither.
fn interpret_type_meta(v: &Value) -> Result<(String, String), String> {
    let fail = |m: String| format!("couldn't get version/kind; json parse error: {m}");
    let m = match v {
        Value::Object(m) => m,
        Value::Null => return Ok((String::new(), String::new())),
        other => {
            return Err(fail(format!(
                "json: cannot unmarshal {} into Go value of type {FIND_KIND}",
                rk3s_openapi::decode::value_word(other, false)
            )))
        }
    };
    let (mut api_version, mut kind) = (String::new(), String::new());
    for (k, val) in m {
        let slot = match k.as_str() {
            "apiVersion" => &mut api_version,
            "kind" => &mut kind,
            _ => continue,
        };
        match val {
            Value::String(s) => *slot = s.clone(),
            Value::Null => {}
            other => {
                return Err(fail(format!(
                    "json: cannot unmarshal {} into Go struct field .{k} of type string",
                    rk3s_openapi::decode::value_word(other, false)
                )))
            }
        }
    }
    Ok((api_version, kind))
}

/// Why a typed request body was refused.
#[derive(Debug, thiserror::Error)]
pub enum TypedBodyError {
    /// The `Content-Type` is none the API decodes (415).
    #[error("unsupported media type {0:?}")]
    UnsupportedMediaType(String),
    /// The body failed before its apiVersion/kind were known (not JSON/YAML/protobuf,
    /// not an object, or apiVersion/kind not strings).
    #[error("{0}")]
    Unrecognized(String),
    /// The body names another kind than the endpoint takes.
    #[error("expected kind {expected}, got {kind}")]
    WrongKind {
        /// The kind the endpoint takes.
        expected: &'static str,
        /// The body's apiVersion.
        api_version: String,
        /// The body's kind.
        kind: String,
    },
    /// A field has the wrong type (Go's `json: cannot unmarshal ...` message).
    #[error("{message}")]
    Field {
        /// The body's version (or the endpoint's when the body names none).
        version: String,
        /// Go's message.
        message: String,
    },
}

impl TypedBodyError {
    /// The 400 (or 415) upstream's create handler answers for a body that should be a
    /// `kind`: `the object provided is unrecognized (must be of type K): ...` before the
    /// kind is known, `K in version "v" cannot be handled as a K: ...` after.
    pub fn to_create_error(&self, kind: &str, body: &[u8]) -> rk3s_api::ApiError {
        match self {
            TypedBodyError::UnsupportedMediaType(mt) => {
                rk3s_api::ApiError::unsupported_media_type(mt)
            }
            TypedBodyError::Unrecognized(m) => rk3s_api::ApiError::bad_request(format!(
                "the object provided is unrecognized (must be of type {kind}): {m} ({})",
                summarize_data(body, 30)
            )),
            TypedBodyError::WrongKind {
                api_version,
                kind: got,
                ..
            } => {
                let version = api_version.rsplit('/').next().unwrap_or("");
                rk3s_api::ApiError::bad_request(format!("{got} in version \"{version}\" cannot be handled as a {kind}: expected kind {kind}, got {got}"))
            }
            TypedBodyError::Field { version, message } => rk3s_api::ApiError::bad_request(format!(
                "{kind} in version \"{version}\" cannot be handled as a {kind}: {message}"
            )),
        }
    }
}

/// Upstream's `summarizeData`: the start of a body for an error message (text when it
/// looks like a JSON object, else hex).
fn summarize_data(body: &[u8], max: usize) -> String {
    let (head, more) = if body.len() > max {
        (&body[..max], " ...")
    } else {
        (body, "")
    };
    match body.first() {
        None => "<empty>".into(),
        Some(b'{') => format!("{}{more}", String::from_utf8_lossy(head)),
        Some(_) => format!(
            "{}{more}",
            head.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ),
    }
}

/// Decodes a body that must be a `schema` object (`kind` in `default_api_version`):
/// shared decoder, apiVersion/kind, field types; nulls dropped.
fn decode_typed(
    content_type: Option<&str>,
    body: &[u8],
    schema: &'static GoStruct,
    default_api_version: &str,
    proto_message: &str,
) -> Result<Value, TypedBodyError> {
    let mut v = decode_request(content_type, body, Some(proto_message)).map_err(|e| match e {
        RequestBodyError::UnsupportedMediaType(mt) => TypedBodyError::UnsupportedMediaType(mt),
        RequestBodyError::Json(e) => TypedBodyError::Unrecognized(format!(
            "couldn't get version/kind; json parse error: {e}"
        )),
        other => TypedBodyError::Unrecognized(other.to_string()),
    })?;
    let (api_version, kind) = interpret_type_meta(&v).map_err(TypedBodyError::Unrecognized)?;
    if !kind.is_empty() && kind != schema.name {
        return Err(TypedBodyError::WrongKind {
            expected: schema.name,
            api_version,
            kind,
        });
    }
    if v.is_null() {
        v = Value::Object(Map::new());
    }
    let version = if api_version.is_empty() {
        default_api_version
    } else {
        &api_version
    };
    let version = version.rsplit('/').next().unwrap_or("").to_string();
    check_go(&mut v, GoType::Struct(schema), "", "")
        .map_err(|message| TypedBodyError::Field { version, message })?;
    Ok(v)
}

/// Kinds of meta.k8s.io that decode, but are not DeleteOptions.
const OTHER_META_KINDS: &[&str] = &[
    "Status",
    "APIVersions",
    "APIGroupList",
    "APIGroup",
    "APIResourceList",
    "CreateOptions",
    "UpdateOptions",
    "PatchOptions",
    "GetOptions",
    "ListOptions",
    "WatchEvent",
];

/// Decodes the body of a DELETE (one object or a collection) into `DeleteOptions`
/// JSON, as upstream: JSON, YAML or protobuf; any apiVersion with kind DeleteOptions
/// (or none); wrong-typed fields are 400 with Go's message; explicit nulls are
/// absent. An empty body is `{}`. The result is always an object.
pub fn decode_delete_options(
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Map<String, Value>, rk3s_api::ApiError> {
    use rk3s_api::ApiError;
    if body.is_empty() {
        return Ok(Map::new());
    }
    let v = decode_typed(content_type, body, &DELETE_OPTIONS, "meta.k8s.io/v1", "k8s.io.apimachinery.pkg.apis.meta.v1.DeleteOptions").map_err(|e| match e {
        TypedBodyError::UnsupportedMediaType(mt) => ApiError::unsupported_media_type(&mt),
        TypedBodyError::WrongKind { kind, .. } if OTHER_META_KINDS.contains(&kind.as_str()) => {
            ApiError::bad_request("decoded object cannot be converted to DeleteOptions")
        }
        TypedBodyError::WrongKind { api_version, kind, .. } => {
            let gv = if api_version.is_empty() { "meta.k8s.io/v1".to_string() } else { api_version };
            ApiError::bad_request(format!(
                "no kind \"{kind}\" is registered for version \"{gv}\" in scheme \"k8s.io/apimachinery/pkg/apis/meta/internalversion/scheme/register.go:27\""
            ))
        }
        other => ApiError::bad_request(other.to_string()),
    })?;
    match v {
        Value::Object(m) => Ok(m),
        _ => Ok(Map::new()),
    }
}

/// Decodes the body of `pods/{name}/eviction` (policy/v1 or v1beta1 Eviction) with
/// the checks of [`decode_delete_options`] on its `deleteOptions`.
pub fn decode_eviction(content_type: Option<&str>, body: &[u8]) -> Result<Value, TypedBodyError> {
    decode_typed(
        content_type,
        body,
        &EVICTION,
        "policy/v1",
        "k8s.io.api.policy.v1.Eviction",
    )
}

/// Decodes the body of `serviceaccounts/{name}/token` (authentication.k8s.io/v1
/// TokenRequest): explicit nulls (`"boundObjectRef": null`, as kubectl 1.27-1.31
/// send) are absent; wrong-typed spec fields are refused.
pub fn decode_token_request(
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Value, TypedBodyError> {
    decode_typed(
        content_type,
        body,
        &TOKEN_REQUEST,
        "authentication.k8s.io/v1",
        "k8s.io.api.authentication.v1.TokenRequest",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Protobuf wire helpers to build bodies as client-go does.
    fn varint(mut n: u64, out: &mut Vec<u8>) {
        while n >= 0x80 {
            out.push((n as u8) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
    }
    fn bytes_field(tag: u32, b: &[u8], out: &mut Vec<u8>) {
        varint(u64::from(tag) << 3 | 2, out);
        varint(b.len() as u64, out);
        out.extend_from_slice(b);
    }
    fn varint_field(tag: u32, n: u64, out: &mut Vec<u8>) {
        varint(u64::from(tag) << 3, out);
        varint(n, out);
    }
    /// `k8s\0` + runtime.Unknown{typeMeta{apiVersion, kind}, raw}.
    fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
        let mut type_meta = Vec::new();
        if !api_version.is_empty() {
            bytes_field(1, api_version.as_bytes(), &mut type_meta);
        }
        if !kind.is_empty() {
            bytes_field(2, kind.as_bytes(), &mut type_meta);
        }
        let mut out = b"k8s\0".to_vec();
        bytes_field(1, &type_meta, &mut out);
        bytes_field(2, raw, &mut out);
        bytes_field(3, b"", &mut out);
        bytes_field(4, b"", &mut out);
        out
    }
    /// DeleteOptions{gracePeriodSeconds, preconditions{uid}, propagationPolicy, dryRun}.
    fn delete_options_pb(grace: u64, uid: &str, policy: &str, dry_run: &[&str]) -> Vec<u8> {
        let mut m = Vec::new();
        varint_field(1, grace, &mut m);
        let mut pre = Vec::new();
        bytes_field(1, uid.as_bytes(), &mut pre);
        bytes_field(2, &pre, &mut m);
        bytes_field(4, policy.as_bytes(), &mut m);
        for d in dry_run {
            bytes_field(5, d.as_bytes(), &mut m);
        }
        m
    }

    const PB: Option<&str> = Some("application/vnd.kubernetes.protobuf");
    const JSON: Option<&str> = Some("application/json");

    #[test]
    fn one_decoder_for_json_yaml_and_protobuf() {
        assert_eq!(
            decode_request(JSON, br#"{"a":1}"#, None).expect("json"),
            json!({"a": 1})
        );
        assert_eq!(
            decode_request(None, br#"{"a":1}"#, None).expect("no content type is JSON"),
            json!({"a": 1})
        );
        assert_eq!(
            decode_request(Some("application/yaml; charset=utf-8"), b"a: 1\n", None).expect("yaml"),
            json!({"a": 1})
        );
        let ns = envelope("v1", "Namespace", &{
            let mut meta = Vec::new();
            bytes_field(1, b"demo", &mut meta);
            let mut m = Vec::new();
            bytes_field(1, &meta, &mut m);
            m
        });
        assert_eq!(
            decode_request(Some("Application/Vnd.Kubernetes.Protobuf"), &ns, None)
                .expect("protobuf"),
            json!({"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": "demo"}})
        );
        assert!(
            matches!(decode_request(Some("text/plain"), b"x", None), Err(RequestBodyError::UnsupportedMediaType(m)) if m == "text/plain")
        );
        let not_pb = decode_request(PB, b"{}", None).expect_err("no magic");
        assert_eq!(not_pb.to_string(), "provided data does not appear to be a protobuf message, expected prefix [107 56 115 0]");
        assert!(decode_request(Some("application/yaml"), b"a: [", None)
            .expect_err("bad yaml")
            .to_string()
            .starts_with("error converting YAML to JSON: "));
    }

    #[test]
    fn protobuf_delete_options_as_client_go_sends_them() {
        // client-go encodes DeleteOptions under the client's group version.
        for gv in ["v1", "apps/v1", "meta.k8s.io/v1", "batch/v1"] {
            let body = envelope(
                gv,
                "DeleteOptions",
                &delete_options_pb(0, "u-1", "Background", &["All"]),
            );
            let opts = decode_delete_options(PB, &body).expect("decodes");
            assert_eq!(opts.get("kind"), Some(&json!("DeleteOptions")), "{gv}");
            assert_eq!(
                opts.get("gracePeriodSeconds"),
                Some(&json!(0)),
                "an explicit 0 stays: it means now"
            );
            assert_eq!(opts.get("propagationPolicy"), Some(&json!("Background")));
            assert_eq!(opts.get("preconditions"), Some(&json!({"uid": "u-1"})));
            assert_eq!(opts.get("dryRun"), Some(&json!(["All"])));
        }
        // An envelope without typeMeta is DeleteOptions, as upstream's default kind.
        let bare = decode_delete_options(
            PB,
            &envelope("", "", &delete_options_pb(30, "x", "Foreground", &[])),
        )
        .expect("bare");
        assert_eq!(bare.get("gracePeriodSeconds"), Some(&json!(30)));
        assert_eq!(bare.get("propagationPolicy"), Some(&json!("Foreground")));
        // Eviction (policy/v1) carries DeleteOptions at field 2.
        let mut ev = Vec::new();
        let mut meta = Vec::new();
        bytes_field(1, b"web-0", &mut meta);
        bytes_field(1, &meta, &mut ev);
        bytes_field(2, &delete_options_pb(5, "u-2", "Background", &[]), &mut ev);
        let eviction =
            decode_eviction(PB, &envelope("policy/v1", "Eviction", &ev)).expect("eviction");
        assert_eq!(eviction["metadata"]["name"], "web-0");
        assert_eq!(eviction["deleteOptions"]["gracePeriodSeconds"], 5);
        assert_eq!(eviction["deleteOptions"]["preconditions"]["uid"], "u-2");
    }

    #[test]
    fn delete_options_json_yaml_and_nulls() {
        assert_eq!(decode_delete_options(JSON, b"").expect("empty"), Map::new());
        assert_eq!(
            decode_delete_options(JSON, b"null").expect("null"),
            Map::new()
        );
        let opts = decode_delete_options(JSON, br#"{"kind":"DeleteOptions","apiVersion":"v1","propagationPolicy":null,"gracePeriodSeconds":null,"preconditions":{"uid":null,"resourceVersion":"7"},"dryRun":[null]}"#).expect("nulls");
        assert_eq!(
            Value::Object(opts),
            json!({"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"resourceVersion": "7"}, "dryRun": [""]})
        );
        let y = decode_delete_options(
            Some("application/yaml"),
            b"propagationPolicy: Foreground\ngracePeriodSeconds: 3\n",
        )
        .expect("yaml");
        assert_eq!(
            Value::Object(y),
            json!({"propagationPolicy": "Foreground", "gracePeriodSeconds": 3})
        );
        // Unknown fields pass (upstream's DELETE decoding is not strict).
        assert!(decode_delete_options(JSON, br#"{"foo":[1,{"x":2}]}"#).is_ok());
    }

    #[test]
    fn malformed_delete_bodies_are_400_with_gos_messages() {
        let find_kind = r#"struct { APIVersion string "json:\"apiVersion,omitempty\""; Kind string "json:\"kind,omitempty\"" }"#;
        let cases: Vec<(&[u8], String)> = vec![
            (b"[]", format!("couldn't get version/kind; json parse error: json: cannot unmarshal array into Go value of type {find_kind}")),
            (br#"[{"gracePeriodSeconds":0}]"#, format!("couldn't get version/kind; json parse error: json: cannot unmarshal array into Go value of type {find_kind}")),
            (b"5", format!("couldn't get version/kind; json parse error: json: cannot unmarshal number into Go value of type {find_kind}")),
            (b"\"Background\"", format!("couldn't get version/kind; json parse error: json: cannot unmarshal string into Go value of type {find_kind}")),
            (b"true", format!("couldn't get version/kind; json parse error: json: cannot unmarshal bool into Go value of type {find_kind}")),
            (br#"{"kind":5}"#, "couldn't get version/kind; json parse error: json: cannot unmarshal number into Go struct field .kind of type string".into()),
            (br#"{"apiVersion":["v1"]}"#, "couldn't get version/kind; json parse error: json: cannot unmarshal array into Go struct field .apiVersion of type string".into()),
            (br#"{"gracePeriodSeconds":"30"}"#, "json: cannot unmarshal string into Go struct field DeleteOptions.gracePeriodSeconds of type int64".into()),
            (br#"{"gracePeriodSeconds":1.5}"#, "json: cannot unmarshal number 1.5 into Go struct field DeleteOptions.gracePeriodSeconds of type int64".into()),
            (br#"{"gracePeriodSeconds":18446744073709551615}"#, "json: cannot unmarshal number 18446744073709551615 into Go struct field DeleteOptions.gracePeriodSeconds of type int64".into()),
            (br#"{"gracePeriodSeconds":[]}"#, "json: cannot unmarshal array into Go struct field DeleteOptions.gracePeriodSeconds of type int64".into()),
            (br#"{"propagationPolicy":5}"#, "json: cannot unmarshal number into Go struct field DeleteOptions.propagationPolicy of type v1.DeletionPropagation".into()),
            (br#"{"propagationPolicy":{"a":1}}"#, "json: cannot unmarshal object into Go struct field DeleteOptions.propagationPolicy of type v1.DeletionPropagation".into()),
            (br#"{"orphanDependents":"true"}"#, "json: cannot unmarshal string into Go struct field DeleteOptions.orphanDependents of type bool".into()),
            (br#"{"preconditions":"x"}"#, "json: cannot unmarshal string into Go struct field DeleteOptions.preconditions of type v1.Preconditions".into()),
            (br#"{"preconditions":[]}"#, "json: cannot unmarshal array into Go struct field DeleteOptions.preconditions of type v1.Preconditions".into()),
            (br#"{"preconditions":{"uid":1}}"#, "json: cannot unmarshal number into Go struct field Preconditions.preconditions.uid of type types.UID".into()),
            (br#"{"dryRun":"All"}"#, "json: cannot unmarshal string into Go struct field DeleteOptions.dryRun of type []string".into()),
            (br#"{"dryRun":[1]}"#, "json: cannot unmarshal number into Go struct field DeleteOptions.dryRun of type string".into()),
            // the first error in document order wins
            (br#"{"propagationPolicy":1,"gracePeriodSeconds":"x"}"#, "json: cannot unmarshal number into Go struct field DeleteOptions.propagationPolicy of type v1.DeletionPropagation".into()),
            (br#"{"kind":"Pod","apiVersion":"v1"}"#, "no kind \"Pod\" is registered for version \"v1\" in scheme \"k8s.io/apimachinery/pkg/apis/meta/internalversion/scheme/register.go:27\"".into()),
            (br#"{"kind":"Status","apiVersion":"v1"}"#, "decoded object cannot be converted to DeleteOptions".into()),
        ];
        for (body, want) in cases {
            let e = decode_delete_options(JSON, body).expect_err(&String::from_utf8_lossy(body));
            assert_eq!(
                (e.code, e.reason.as_str(), e.message.as_str()),
                (400, "BadRequest", want.as_str()),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        for body in [&b"{"[..], b"{\"a\":", b"nul", b"\xff\xfe", b"{}}"] {
            let e = decode_delete_options(JSON, body).expect_err("syntax");
            assert_eq!(e.code, 400);
            assert!(
                e.message
                    .starts_with("couldn't get version/kind; json parse error: "),
                "{}",
                e.message
            );
        }
        let e = decode_delete_options(Some("application/x-www-form-urlencoded"), b"a=b")
            .expect_err("form");
        assert_eq!(e.code, 415);
        for body in [
            &b"k8s\0\x0a"[..],
            b"k8s\0\x12\x05abc",
            b"{\"gracePeriodSeconds\":0}",
        ] {
            assert_eq!(
                decode_delete_options(PB, body)
                    .expect_err("bad protobuf")
                    .code,
                400
            );
        }
        // An empty envelope is empty DeleteOptions (upstream defaults the kind).
        assert_eq!(
            decode_delete_options(PB, b"k8s\0").expect("empty envelope"),
            Map::new()
        );
        let wrong_kind = envelope("v1", "Pod", b"");
        assert_eq!(
            decode_delete_options(PB, &wrong_kind)
                .expect_err("pod")
                .code,
            400
        );
    }

    /// xorshift64*: a fixed-seed generator, so a failure reproduces.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
        fn value(&mut self, depth: u32) -> Value {
            match self.below(if depth > 3 { 5 } else { 7 }) {
                0 => Value::Null,
                1 => json!(self.below(2) == 0),
                2 => json!(self.next() as i64),
                3 => json!(self.below(1000) as f64 / 7.0),
                4 => json!(["All", "Foreground", "Orphan", "", "x"][self.below(5) as usize]),
                5 => Value::Array((0..self.below(4)).map(|_| self.value(depth + 1)).collect()),
                _ => {
                    let keys = [
                        "kind",
                        "apiVersion",
                        "gracePeriodSeconds",
                        "preconditions",
                        "uid",
                        "resourceVersion",
                        "orphanDependents",
                        "propagationPolicy",
                        "dryRun",
                        "deleteOptions",
                        "metadata",
                        "name",
                        "spec",
                        "boundObjectRef",
                        "audiences",
                        "expirationSeconds",
                    ];
                    let mut m = Map::new();
                    for _ in 0..self.below(5) {
                        m.insert(
                            keys[self.below(keys.len() as u64) as usize].to_string(),
                            self.value(depth + 1),
                        );
                    }
                    Value::Object(m)
                }
            }
        }
    }

    /// Every decoder of typed bodies on one input: never a panic, always a 400/415 or a
    /// JSON object.
    fn decode_all(ct: Option<&str>, body: &[u8]) {
        match decode_delete_options(ct, body) {
            Ok(_) => {}
            Err(e) => assert!(e.code == 400 || e.code == 415, "{e:?}"),
        }
        for r in [decode_eviction(ct, body), decode_token_request(ct, body)] {
            match r {
                Ok(v) => assert!(v.is_object()),
                Err(e) => {
                    let api = e.to_create_error("X", body);
                    assert!(api.code == 400 || api.code == 415, "{api:?}");
                }
            }
        }
    }

    #[test]
    fn no_body_panics_the_decoders() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let types = [JSON, Some("application/yaml"), PB, None, Some("text/plain")];
        // Random bytes, with and without the protobuf magic.
        for i in 0..4000 {
            let len = rng.below(64) as usize;
            let mut body: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if i % 2 == 0 {
                body.splice(0..0, b"k8s\0".iter().copied());
            }
            decode_all(types[i % types.len()], &body);
        }
        // Mutations (bit flips, truncations) of valid protobuf bodies.
        let valid = envelope(
            "v1",
            "DeleteOptions",
            &delete_options_pb(7, "uid-1", "Background", &["All"]),
        );
        for _ in 0..4000 {
            let mut b = valid.clone();
            for _ in 0..=rng.below(3) {
                let at = rng.below(b.len() as u64) as usize;
                b[at] ^= 1 << rng.below(8);
            }
            b.truncate(rng.below(b.len() as u64 + 1) as usize);
            decode_all(PB, &b);
        }
        // Random JSON documents made of the fields the handlers read.
        for _ in 0..4000 {
            let v = rng.value(0);
            let text = serde_json::to_vec(&v).expect("json");
            decode_all(JSON, &text);
            let yaml = serde_yaml::to_string(&v).expect("yaml");
            decode_all(Some("application/yaml"), yaml.as_bytes());
        }
    }

    #[test]
    fn eviction_and_token_request_bodies() {
        let ev = decode_eviction(JSON, br#"{"apiVersion":"policy/v1","kind":"Eviction","metadata":{"name":"p","labels":null},"deleteOptions":null}"#).expect("eviction");
        assert_eq!(
            ev,
            json!({"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "p"}})
        );
        let body = br#"{"apiVersion":"policy/v1","kind":"Eviction","metadata":{"name":"p"},"deleteOptions":{"gracePeriodSeconds":"x"}}"#;
        let e = decode_eviction(JSON, body)
            .expect_err("typed")
            .to_create_error("Eviction", body);
        assert_eq!(e.message, "Eviction in version \"v1\" cannot be handled as a Eviction: json: cannot unmarshal string into Go struct field DeleteOptions.deleteOptions.gracePeriodSeconds of type int64");
        let e = decode_eviction(JSON, b"[1]")
            .expect_err("array")
            .to_create_error("Eviction", b"[1]");
        assert!(e.message.starts_with("the object provided is unrecognized (must be of type Eviction): couldn't get version/kind; json parse error: json: cannot unmarshal array"), "{}", e.message);
        assert!(e.message.ends_with("(5b315d)"), "{}", e.message);

        // kubectl 1.27-1.31 `create token` sends explicit nulls: they are absent.
        let tr = decode_token_request(JSON, br#"{"kind":"TokenRequest","apiVersion":"authentication.k8s.io/v1","metadata":{"creationTimestamp":null},"spec":{"audiences":null,"expirationSeconds":null,"boundObjectRef":null},"status":{"token":"","expirationTimestamp":null}}"#).expect("nulls");
        assert_eq!(tr["spec"], json!({}));
        assert_eq!(tr["metadata"], json!({}));
        let body = br#"{"spec":{"expirationSeconds":"3600"}}"#;
        let e = decode_token_request(JSON, body)
            .expect_err("typed")
            .to_create_error("TokenRequest", body);
        assert_eq!(e.message, "TokenRequest in version \"v1\" cannot be handled as a TokenRequest: json: cannot unmarshal string into Go struct field TokenRequestSpec.spec.expirationSeconds of type int64");
        let body = br#"{"spec":"x"}"#;
        let e = decode_token_request(JSON, body)
            .expect_err("spec")
            .to_create_error("TokenRequest", body);
        assert_eq!(e.message, "TokenRequest in version \"v1\" cannot be handled as a TokenRequest: json: cannot unmarshal string into Go struct field TokenRequest.spec of type v1.TokenRequestSpec");
        let body = br#"{"spec":{"boundObjectRef":{"kind":"Pod","name":7}}}"#;
        let e = decode_token_request(JSON, body)
            .expect_err("ref")
            .to_create_error("TokenRequest", body);
        assert!(e.message.ends_with("json: cannot unmarshal number into Go struct field BoundObjectReference.spec.boundObjectRef.name of type string"), "{}", e.message);
    }
}
