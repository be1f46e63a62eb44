//! Message bytes → JSON, driven by the generated field table.

use base64::Engine as _;
use serde_json::{Map, Number, Value};

use crate::table::{self, Field, Kind, Message, INLINE, OMIT_EMPTY, OMIT_ZERO, REPEATED};
use crate::wire::{Raw, Reader};
use crate::{DecodeError, MAGIC};

/// Deeper than any real object (a pod template in a CronJob is about 12).
const MAX_DEPTH: usize = 100;

/// Decodes `k8s\0` + runtime.Unknown.
pub(crate) fn envelope(
    bytes: &[u8],
    expected: Option<&str>,
    depth: usize,
) -> Result<Value, DecodeError> {
    let body = bytes
        .strip_prefix(MAGIC.as_slice())
        .ok_or(DecodeError::NotProtobuf)?;
    let (mut api_version, mut kind, mut raw, mut encoding) = ("", "", &[][..], "");
    let mut r = Reader::new(body);
    while let Some((tag, value)) = r.next()? {
        match (tag, value) {
            (1, Raw::Bytes(type_meta)) => {
                let mut t = Reader::new(type_meta);
                while let Some((tag, value)) = t.next()? {
                    match (tag, value) {
                        (1, Raw::Bytes(s)) => api_version = envelope_str(s, "apiVersion")?,
                        (2, Raw::Bytes(s)) => kind = envelope_str(s, "kind")?,
                        _ => {}
                    }
                }
            }
            (2, Raw::Bytes(b)) => raw = b,
            (3, Raw::Bytes(s)) => encoding = envelope_str(s, "contentEncoding")?,
            _ => {}
        }
    }
    if !encoding.is_empty() {
        return Err(DecodeError::UnsupportedEncoding(encoding.to_string()));
    }
    let index = match expected {
        Some(name) => {
            table::index_of(name).ok_or_else(|| DecodeError::UnknownMessage(name.to_string()))?
        }
        None if api_version.is_empty() && kind.is_empty() => {
            return Err(DecodeError::MissingTypeMeta)
        }
        None => table::index_for(api_version, kind).ok_or_else(|| DecodeError::UnknownKind {
            api_version: api_version.to_string(),
            kind: kind.to_string(),
        })?,
    };
    let fields = message(index, raw, depth)?;
    let mut out = Map::with_capacity(fields.len() + 2);
    if !kind.is_empty() {
        out.insert("kind".into(), Value::String(kind.to_string()));
    }
    if !api_version.is_empty() {
        out.insert("apiVersion".into(), Value::String(api_version.to_string()));
    }
    for (k, v) in fields {
        out.entry(k).or_insert(v);
    }
    Ok(Value::Object(out))
}

fn envelope_str<'a>(s: &'a [u8], field: &'static str) -> Result<&'a str, DecodeError> {
    std::str::from_utf8(s).map_err(|_| DecodeError::InvalidUtf8 {
        message: "runtime.Unknown",
        field,
    })
}

/// Decodes the message at `index` into a JSON object.
pub(crate) fn message(
    index: u16,
    bytes: &[u8],
    depth: usize,
) -> Result<Map<String, Value>, DecodeError> {
    let mut out = Map::new();
    message_into(index, bytes, depth, &mut out)?;
    Ok(out)
}

fn message_into(
    index: u16,
    bytes: &[u8],
    depth: usize,
    out: &mut Map<String, Value>,
) -> Result<(), DecodeError> {
    if depth > MAX_DEPTH {
        return Err(DecodeError::TooDeep);
    }
    let msg = table::message(index).ok_or(DecodeError::UnknownMessage(format!("#{index}")))?;
    let mut r = Reader::new(bytes);
    while let Some((tag, raw)) = r.next()? {
        // Unknown fields are skipped, as the Go decoder does.
        let Some(field) = msg.field(tag) else {
            continue;
        };
        let Field(_, name, kind, flags) = *field;
        if flags & INLINE != 0 {
            if let (Kind::Msg(sub), Raw::Bytes(b)) = (kind, raw) {
                message_into(sub, b, depth + 1, out)?;
                continue;
            }
        }
        if let Kind::Map(value_kind) = kind {
            let Raw::Bytes(entry) = raw else {
                return Err(wrong(msg, field, "a length-delimited map entry"));
            };
            let (key, value) = map_entry(msg, field, value_kind, entry, depth)?;
            let slot = out.entry(name).or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(m) = slot {
                m.insert(key, value);
            }
            continue;
        }
        if flags & REPEATED != 0 {
            let slot = out.entry(name).or_insert_with(|| Value::Array(Vec::new()));
            let Value::Array(items) = slot else { continue };
            match (kind, raw) {
                // packed scalars
                (Kind::I32 | Kind::I64 | Kind::Bool, Raw::Bytes(b)) => {
                    let mut p = Reader::new(b);
                    while !p.is_empty() {
                        items.push(scalar(msg, field, kind, Raw::Varint(p.varint()?))?);
                    }
                }
                (Kind::Double, Raw::Bytes(b)) => {
                    if b.len() % 8 != 0 {
                        return Err(DecodeError::Truncated);
                    }
                    for c in b.chunks_exact(8) {
                        let mut a = [0u8; 8];
                        a.copy_from_slice(c);
                        items.push(scalar(
                            msg,
                            field,
                            kind,
                            Raw::Fixed64(u64::from_le_bytes(a)),
                        )?);
                    }
                }
                _ => items.push(value(msg, field, kind, raw, depth)?),
            }
            continue;
        }
        let v = value(msg, field, kind, raw, depth)?;
        let zero = v.as_i64() == Some(0) || v.as_bool() == Some(false);
        if (flags & OMIT_EMPTY != 0 && v.as_str() == Some("")) || (flags & OMIT_ZERO != 0 && zero) {
            out.remove(name);
            continue;
        }
        out.insert(name.to_string(), v);
    }
    Ok(())
}

fn wrong(msg: &'static Message, field: &'static Field, expected: &'static str) -> DecodeError {
    DecodeError::WrongWireType {
        message: msg.0,
        field: field.1,
        expected,
    }
}

fn utf8<'a>(
    msg: &'static Message,
    field: &'static Field,
    b: &'a [u8],
) -> Result<&'a str, DecodeError> {
    std::str::from_utf8(b).map_err(|_| DecodeError::InvalidUtf8 {
        message: msg.0,
        field: field.1,
    })
}

/// One map entry {1: key, 2: value} → (key, JSON value).
fn map_entry(
    msg: &'static Message,
    field: &'static Field,
    value_kind: &'static Kind,
    entry: &[u8],
    depth: usize,
) -> Result<(String, Value), DecodeError> {
    let mut key = String::new();
    let mut val = None;
    let mut r = Reader::new(entry);
    while let Some((tag, raw)) = r.next()? {
        match (tag, raw) {
            (1, Raw::Bytes(b)) => key = utf8(msg, field, b)?.to_string(),
            (1, _) => return Err(wrong(msg, field, "a string map key")),
            (2, raw) => val = Some(value(msg, field, *value_kind, raw, depth)?),
            _ => {}
        }
    }
    let val = match val {
        Some(v) => v,
        // an absent value is the zero value of its type
        None => value(msg, field, *value_kind, Raw::Bytes(&[]), depth)?,
    };
    Ok((key, val))
}

/// A varint / fixed64 scalar.
fn scalar(
    msg: &'static Message,
    field: &'static Field,
    kind: Kind,
    raw: Raw<'_>,
) -> Result<Value, DecodeError> {
    Ok(match (kind, raw) {
        // int32 is sign-extended to 64 bits on the wire; Go truncates back.
        (Kind::I32, Raw::Varint(v)) => Value::from(v as i32),
        (Kind::I64, Raw::Varint(v)) => Value::from(v as i64),
        (Kind::Bool, Raw::Varint(v)) => Value::Bool(v != 0),
        (Kind::Double, Raw::Fixed64(v)) => Number::from_f64(f64::from_bits(v))
            .map(Value::Number)
            .ok_or(DecodeError::NonFinite {
            message: msg.0,
            field: field.1,
        })?,
        (Kind::Double, _) => return Err(wrong(msg, field, "a 64-bit double")),
        _ => return Err(wrong(msg, field, "a varint")),
    })
}

/// One (non-map, non-packed) value of a field.
fn value(
    msg: &'static Message,
    field: &'static Field,
    kind: Kind,
    raw: Raw<'_>,
    depth: usize,
) -> Result<Value, DecodeError> {
    let bytes = match (kind, raw) {
        (Kind::I32 | Kind::I64 | Kind::Bool | Kind::Double, raw) => {
            return scalar(msg, field, kind, raw)
        }
        (_, Raw::Bytes(b)) => b,
        _ => return Err(wrong(msg, field, "length-delimited data")),
    };
    Ok(match kind {
        Kind::Str => Value::String(utf8(msg, field, bytes)?.to_string()),
        Kind::Bytes => Value::String(base64::engine::general_purpose::STANDARD.encode(bytes)),
        Kind::Msg(sub) => Value::Object(message(sub, bytes, depth + 1)?),
        Kind::Time | Kind::MicroTime => time(kind, bytes)?,
        Kind::Duration => {
            let mut ns = 0i64;
            let mut r = Reader::new(bytes);
            while let Some((tag, raw)) = r.next()? {
                if let (1, Raw::Varint(v)) = (tag, raw) {
                    ns = v as i64;
                }
            }
            Value::String(go_duration(ns))
        }
        Kind::RawJson => {
            let mut raw_json: &[u8] = &[];
            let mut r = Reader::new(bytes);
            while let Some((tag, raw)) = r.next()? {
                if let (1, Raw::Bytes(b)) = (tag, raw) {
                    raw_json = b;
                }
            }
            if raw_json.is_empty() {
                Value::Null
            } else if raw_json.starts_with(MAGIC) {
                // an object embedded in protobuf form
                envelope(raw_json, None, depth + 1)?
            } else {
                serde_json::from_slice(raw_json).map_err(|source| DecodeError::InvalidJson {
                    message: msg.0,
                    field: field.1,
                    source,
                })?
            }
        }
        Kind::IntOrString => {
            let (mut ty, mut int_val, mut str_val) = (0i64, 0i32, String::new());
            let mut r = Reader::new(bytes);
            while let Some((tag, raw)) = r.next()? {
                match (tag, raw) {
                    (1, Raw::Varint(v)) => ty = v as i64,
                    (2, Raw::Varint(v)) => int_val = v as i32,
                    (3, Raw::Bytes(b)) => str_val = utf8(msg, field, b)?.to_string(),
                    _ => {}
                }
            }
            if ty == 1 {
                Value::String(str_val)
            } else {
                Value::from(int_val)
            }
        }
        Kind::Quantity => {
            let mut s = "0".to_string();
            let mut r = Reader::new(bytes);
            while let Some((tag, raw)) = r.next()? {
                if let (1, Raw::Bytes(b)) = (tag, raw) {
                    if !b.is_empty() {
                        s = utf8(msg, field, b)?.to_string();
                    }
                }
            }
            Value::String(s)
        }
        Kind::StringList => {
            let mut items = Vec::new();
            let mut r = Reader::new(bytes);
            while let Some((tag, raw)) = r.next()? {
                if let (1, Raw::Bytes(b)) = (tag, raw) {
                    items.push(Value::String(utf8(msg, field, b)?.to_string()));
                }
            }
            Value::Array(items)
        }
        Kind::SchemaOrArray(props)
        | Kind::SchemaOrBool(props)
        | Kind::SchemaOrStringArray(props) => schema_or(kind, props, bytes, depth)?,
        // scalars and maps are handled before
        Kind::I32 | Kind::I64 | Kind::Bool | Kind::Double | Kind::Map(_) => Value::Null,
    })
}

/// JSONSchemaPropsOr{Array,Bool,StringArray}: whichever alternative is set.
fn schema_or(kind: Kind, props: u16, bytes: &[u8], depth: usize) -> Result<Value, DecodeError> {
    let mut schema = None;
    let mut list = Vec::new();
    let mut allows = false;
    let mut r = Reader::new(bytes);
    while let Some((tag, raw)) = r.next()? {
        match (kind, tag, raw) {
            (Kind::SchemaOrBool(_), 1, Raw::Varint(v)) => allows = v != 0,
            (Kind::SchemaOrBool(_), 2, Raw::Bytes(b)) | (_, 1, Raw::Bytes(b)) => {
                schema = Some(Value::Object(message(props, b, depth + 1)?));
            }
            (Kind::SchemaOrArray(_), 2, Raw::Bytes(b)) => {
                list.push(Value::Object(message(props, b, depth + 1)?))
            }
            (Kind::SchemaOrStringArray(_), 2, Raw::Bytes(b)) => {
                let s = std::str::from_utf8(b).map_err(|_| DecodeError::InvalidUtf8 {
                    message: "JSONSchemaPropsOrStringArray",
                    field: "property",
                })?;
                list.push(Value::String(s.to_string()));
            }
            _ => {}
        }
    }
    Ok(match kind {
        Kind::SchemaOrBool(_) => schema.unwrap_or(Value::Bool(allows)),
        _ if !list.is_empty() => Value::Array(list),
        _ => schema.unwrap_or(Value::Null),
    })
}

/// meta.v1.Time / MicroTime: empty message = zero time = `null`. Time keeps
/// whole seconds only (as the Go decoder does); MicroTime has 6 digits.
fn time(kind: Kind, bytes: &[u8]) -> Result<Value, DecodeError> {
    if bytes.is_empty() {
        return Ok(Value::Null);
    }
    let (mut secs, mut nanos) = (0i64, 0i64);
    let mut r = Reader::new(bytes);
    while let Some((tag, raw)) = r.next()? {
        match (tag, raw) {
            (1, Raw::Varint(v)) => secs = v as i64,
            (2, Raw::Varint(v)) => nanos = i64::from(v as i32),
            _ => {}
        }
    }
    let micros = if kind == Kind::MicroTime {
        secs = secs.saturating_add(nanos.div_euclid(1_000_000_000));
        Some(nanos.rem_euclid(1_000_000_000) / 1000)
    } else {
        None
    };
    Ok(Value::String(rfc3339(secs, micros)))
}

/// Seconds since the Unix epoch → `YYYY-MM-DDTHH:MM:SS[.ffffff]Z`.
pub(crate) fn rfc3339(secs: i64, micros: Option<i64>) -> String {
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // civil-from-days (proleptic Gregorian), after H. Hinnant's algorithm
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s) = (sod / 3600, sod / 60 % 60, sod % 60);
    match micros {
        Some(us) => format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{us:06}Z"),
        None => format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z"),
    }
}

/// Go's `time.Duration.String()`: "1h2m3.5s", "150ms", "0s".
pub(crate) fn go_duration(ns: i64) -> String {
    if ns == 0 {
        return "0s".to_string();
    }
    let sign = if ns < 0 { "-" } else { "" };
    let u = ns.unsigned_abs();
    // fractional digits of v / 10^prec without trailing zeros, and the quotient
    let frac = |v: u64, prec: u32| -> (String, u64) {
        let p = 10u64.pow(prec);
        let f = v % p;
        if f == 0 {
            return (String::new(), v / p);
        }
        let digits = format!("{f:0width$}", width = prec as usize);
        (format!(".{}", digits.trim_end_matches('0')), v / p)
    };
    if u < 1_000 {
        return format!("{sign}{u}ns");
    }
    if u < 1_000_000 {
        let (f, q) = frac(u, 3);
        return format!("{sign}{q}{f}µs");
    }
    if u < 1_000_000_000 {
        let (f, q) = frac(u, 6);
        return format!("{sign}{q}{f}ms");
    }
    let (f, secs) = frac(u, 9);
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    if h > 0 {
        format!("{sign}{h}h{m}m{s}{f}s")
    } else if m > 0 {
        format!("{sign}{m}m{s}{f}s")
    } else {
        format!("{sign}{s}{f}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{decode, decode_message, decode_with};
    use serde_json::json;

    /// A tiny protobuf writer for building test messages by hand.
    #[derive(Default, Clone)]
    struct Enc(Vec<u8>);

    impl Enc {
        fn varint(mut self, mut v: u64) -> Self {
            while v >= 0x80 {
                self.0.push((v as u8) | 0x80);
                v >>= 7;
            }
            self.0.push(v as u8);
            self
        }
        fn key(self, tag: u32, wire: u8) -> Self {
            self.varint(u64::from(tag) << 3 | u64::from(wire))
        }
        fn int(self, tag: u32, v: i64) -> Self {
            self.key(tag, 0).varint(v as u64)
        }
        fn bytes(self, tag: u32, b: &[u8]) -> Self {
            let mut e = self.key(tag, 2).varint(b.len() as u64);
            e.0.extend_from_slice(b);
            e
        }
        fn str(self, tag: u32, s: &str) -> Self {
            self.bytes(tag, s.as_bytes())
        }
        fn msg(self, tag: u32, m: Enc) -> Self {
            self.bytes(tag, &m.0)
        }
        fn double(self, tag: u32, v: f64) -> Self {
            let mut e = self.key(tag, 1);
            e.0.extend_from_slice(&v.to_bits().to_le_bytes());
            e
        }
        /// map<string, string> entry
        fn entry(self, tag: u32, k: &str, v: &str) -> Self {
            self.msg(tag, Enc::default().str(1, k).str(2, v))
        }
        /// map<string, message> entry
        fn entry_msg(self, tag: u32, k: &str, v: Enc) -> Self {
            self.msg(tag, Enc::default().str(1, k).msg(2, v))
        }
    }

    /// `k8s\0` + runtime.Unknown{typeMeta{apiVersion, kind}, raw}
    fn envelope_of(api_version: &str, kind: &str, raw: Enc) -> Vec<u8> {
        let unknown = Enc::default()
            .msg(1, Enc::default().str(1, api_version).str(2, kind))
            .msg(2, raw)
            .str(3, "")
            .str(4, "");
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&unknown.0);
        out
    }

    fn time(secs: i64) -> Enc {
        Enc::default().int(1, secs)
    }

    #[test]
    fn namespace_with_labels_and_creation_timestamp() {
        let meta = Enc::default()
            .str(1, "prod")
            .str(2, "")
            .int(7, 3)
            .msg(8, time(1_704_164_645))
            .entry(11, "team", "a")
            .entry(11, "env", "prod")
            .entry(12, "note", "x")
            .str(14, "kubernetes");
        let ns = Enc::default()
            .msg(1, meta)
            .msg(2, Enc::default())
            .msg(3, Enc::default().str(1, "Active"));
        let v = decode(&envelope_of("v1", "Namespace", ns)).unwrap_or_default();
        assert_eq!(
            v,
            json!({
                "kind": "Namespace", "apiVersion": "v1",
                "metadata": {
                    "name": "prod", "generation": 3,
                    "creationTimestamp": "2024-01-02T03:04:05Z",
                    "labels": {"team": "a", "env": "prod"},
                    "annotations": {"note": "x"},
                    "finalizers": ["kubernetes"]
                },
                "spec": {},
                "status": {"phase": "Active"}
            })
        );
    }

    #[test]
    fn configmap_and_secret_bytes() {
        let cm = Enc::default()
            .msg(1, Enc::default().str(1, "cm"))
            .entry(2, "plain", "text")
            .msg(3, Enc::default().str(1, "bin").bytes(2, &[0, 1, 2, 0xff]))
            .int(4, 1);
        let v = decode(&envelope_of("v1", "ConfigMap", cm)).unwrap_or_default();
        assert_eq!(v["data"], json!({"plain": "text"}));
        assert_eq!(v["binaryData"], json!({"bin": "AAEC/w=="}));
        assert_eq!(v["immutable"], true);

        let secret = Enc::default()
            .msg(1, Enc::default().str(1, "s"))
            .msg(2, Enc::default().str(1, "password").bytes(2, b"hunter2"))
            .str(3, "Opaque")
            .entry(4, "user", "admin");
        let v = decode(&envelope_of("v1", "Secret", secret)).unwrap_or_default();
        assert_eq!(v["data"], json!({"password": "aHVudGVyMg=="}));
        assert_eq!(v["stringData"], json!({"user": "admin"}));
        assert_eq!(v["type"], "Opaque");
    }

    #[test]
    fn deployment_with_template_resources_env_and_ports() {
        let quantity = |s: &str| Enc::default().str(1, s);
        let container = Enc::default()
            .str(1, "web")
            .str(2, "nginx:1.27")
            .str(3, "nginx")
            .str(4, "-g")
            .str(4, "daemon off;")
            .msg(
                6,
                Enc::default()
                    .str(1, "http")
                    .int(2, 0)
                    .int(3, 8080)
                    .str(4, "TCP"),
            )
            .msg(7, Enc::default().str(1, "MODE").str(2, "prod"))
            .msg(
                7,
                Enc::default().str(1, "POD").msg(
                    3,
                    Enc::default().msg(1, Enc::default().str(1, "v1").str(2, "metadata.name")),
                ),
            )
            .msg(
                8,
                Enc::default()
                    .entry_msg(1, "cpu", quantity("500m"))
                    .entry_msg(1, "memory", quantity("128Mi"))
                    .entry_msg(2, "cpu", quantity("250m")),
            )
            .msg(15, Enc::default().int(4, -1).int(5, 1).int(6, 0))
            .int(16, 0);
        let template = Enc::default()
            .msg(
                1,
                Enc::default()
                    .entry(11, "app", "web")
                    .msg(8, Enc::default()),
            )
            .msg(
                2,
                Enc::default()
                    .msg(2, container)
                    .int(4, 30)
                    .int(11, 0)
                    .str(3, "Always"),
            );
        let spec = Enc::default()
            .int(1, 0)
            .msg(2, Enc::default().entry(1, "app", "web"))
            .msg(3, template)
            .msg(4, Enc::default().str(1, "RollingUpdate"))
            .int(5, 0);
        let d = Enc::default()
            .msg(1, Enc::default().str(1, "web").str(3, "default"))
            .msg(2, spec);
        let v = decode(&envelope_of("apps/v1", "Deployment", d)).unwrap_or_default();
        assert_eq!(
            v,
            json!({
                "kind": "Deployment", "apiVersion": "apps/v1",
                "metadata": {"name": "web", "namespace": "default"},
                "spec": {
                    // a pointer field: replicas 0 stays
                    "replicas": 0,
                    "selector": {"matchLabels": {"app": "web"}},
                    "template": {
                        "metadata": {"labels": {"app": "web"}, "creationTimestamp": null},
                        "spec": {
                            "containers": [{
                                "name": "web",
                                "image": "nginx:1.27",
                                "command": ["nginx"],
                                "args": ["-g", "daemon off;"],
                                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                                "env": [
                                    {"name": "MODE", "value": "prod"},
                                    {"name": "POD", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}}
                                ],
                                "resources": {
                                    "limits": {"cpu": "500m", "memory": "128Mi"},
                                    "requests": {"cpu": "250m"}
                                },
                                // *int64 / *bool keep their zero values; -1 is sign-extended on the wire
                                "securityContext": {"runAsUser": -1, "runAsNonRoot": true, "readOnlyRootFilesystem": false}
                            }],
                            "terminationGracePeriodSeconds": 30,
                            "restartPolicy": "Always"
                        }
                    },
                    "strategy": {"type": "RollingUpdate"}
                }
            })
        );
    }

    #[test]
    fn service_target_port_int_and_string() {
        let port = |target: Enc| Enc::default().str(2, "TCP").int(3, 80).msg(4, target);
        let spec = Enc::default()
            .msg(1, port(Enc::default().int(1, 0).int(2, 8080).str(3, "")))
            .msg(1, port(Enc::default().int(1, 1).int(2, 0).str(3, "http")))
            .str(18, "10.0.0.1")
            .str(18, "fd00::1");
        let svc = Enc::default()
            .msg(1, Enc::default().str(1, "svc"))
            .msg(2, spec);
        let v = decode(&envelope_of("v1", "Service", svc)).unwrap_or_default();
        assert_eq!(v["spec"]["ports"][0]["targetPort"], 8080);
        assert_eq!(v["spec"]["ports"][1]["targetPort"], "http");
        assert_eq!(v["spec"]["clusterIPs"], json!(["10.0.0.1", "fd00::1"]));
    }

    #[test]
    fn inline_fields_micro_time_and_duration() {
        // Probe.handler is Go-embedded (inline): its fields sit in the probe itself.
        let probe = Enc::default()
            .msg(1, Enc::default().msg(1, Enc::default().str(1, "true")))
            .int(2, 5);
        let container = Enc::default().str(1, "c").msg(10, probe);
        let v = decode_message("k8s.io.api.core.v1.Container", &container.0).unwrap_or_default();
        assert_eq!(
            v["livenessProbe"],
            json!({"exec": {"command": ["true"]}, "initialDelaySeconds": 5})
        );

        let lease = Enc::default()
            .str(1, "node-1")
            .int(2, 40)
            .msg(4, Enc::default().int(1, 1_704_164_645).int(2, 123_456_789));
        let v =
            decode_message("k8s.io.api.coordination.v1.LeaseSpec", &lease.0).unwrap_or_default();
        assert_eq!(v["renewTime"], "2024-01-02T03:04:05.123456Z");

        let metrics = Enc::default().msg(3, Enc::default().int(1, 90_000_000_000));
        let v = decode_message(
            "k8s.io.metrics.pkg.apis.metrics.v1beta1.NodeMetrics",
            &metrics.0,
        );
        assert_eq!(v.unwrap_or_default()["window"], "1m30s");
        assert_eq!(go_duration(90_000_000_000), "1m30s");
        assert_eq!(go_duration(3_600_000_000_000), "1h0m0s");
        assert_eq!(go_duration(1_500_000_000), "1.5s");
        assert_eq!(go_duration(1_500_000), "1.5ms");
        assert_eq!(go_duration(2_000), "2µs");
        assert_eq!(go_duration(-5), "-5ns");
        assert_eq!(go_duration(0), "0s");
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0, None), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400, None), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(-1, Some(5)), "1969-12-31T23:59:59.000005Z");
        assert_eq!(rfc3339(253_402_300_799, None), "9999-12-31T23:59:59Z");
    }

    #[test]
    fn raw_extension_and_fields_v1_are_embedded_json() {
        let managed = Enc::default()
            .str(1, "kubectl")
            .str(2, "Update")
            .msg(4, time(0))
            .str(6, "FieldsV1")
            .msg(7, Enc::default().bytes(1, br#"{"f:data":{".":{}}}"#));
        let meta = Enc::default().str(1, "x").msg(17, managed);
        let rev = Enc::default()
            .msg(1, meta)
            .msg(2, Enc::default().bytes(1, br#"{"spec":{"replicas":3}}"#))
            .int(3, 7);
        let v = decode(&envelope_of("apps/v1", "ControllerRevision", rev)).unwrap_or_default();
        assert_eq!(v["data"], json!({"spec": {"replicas": 3}}));
        assert_eq!(v["revision"], 7);
        let mf = &v["metadata"]["managedFields"][0];
        assert_eq!(mf["fieldsV1"], json!({"f:data": {".": {}}}));
        assert_eq!(mf["time"], "1970-01-01T00:00:00Z");

        let broken = Enc::default().msg(2, Enc::default().bytes(1, b"{not json"));
        let err = decode(&envelope_of("apps/v1", "ControllerRevision", broken));
        assert!(matches!(
            err,
            Err(DecodeError::InvalidJson { field: "data", .. })
        ));
    }

    #[test]
    fn packed_and_unpacked_repeated_ints() {
        // NodeSelectorRequirement-like int lists: ServiceSpec has none, use
        // JobSpec.podFailurePolicy onExitCodes values (int32, repeated).
        let unpacked = Enc::default().str(2, "In").int(3, 1).int(3, -2);
        let packed = Enc::default()
            .str(2, "In")
            .bytes(3, &Enc::default().varint(1).varint(-2i64 as u64).0);
        let name = "k8s.io.api.batch.v1.PodFailurePolicyOnExitCodesRequirement";
        for body in [unpacked, packed] {
            let v = decode_message(name, &body.0).unwrap_or_default();
            assert_eq!(v, json!({"operator": "In", "values": [1, -2]}));
        }
    }

    #[test]
    fn crd_schema_alternatives_and_doubles() {
        let string_schema = Enc::default().str(5, "string");
        let props = Enc::default()
            .str(5, "object")
            .double(11, 1.5)
            .msg(20, Enc::default().bytes(1, b"\"a\""))
            .msg(24, Enc::default().msg(1, string_schema.clone()))
            .msg(30, Enc::default().int(1, 1))
            .entry_msg(29, "name", string_schema.clone())
            .int(38, 1);
        let v = decode_message(
            "k8s.io.apiextensions_apiserver.pkg.apis.apiextensions.v1.JSONSchemaProps",
            &props.0,
        )
        .unwrap_or_default();
        assert_eq!(v["type"], "object");
        assert_eq!(v["minimum"], 1.5);
        assert_eq!(v["enum"], json!(["a"]));
        assert_eq!(v["items"], json!({"type": "string"}));
        assert_eq!(v["additionalProperties"], true);
        assert_eq!(v["properties"], json!({"name": {"type": "string"}}));
        assert_eq!(v["x-kubernetes-preserve-unknown-fields"], true);
    }

    #[test]
    fn subresource_with_expected_message() {
        let scale = Enc::default()
            .msg(1, Enc::default().str(1, "web"))
            .msg(2, Enc::default().int(1, 5));
        let bytes = envelope_of("autoscaling/v1", "Scale", scale.clone());
        assert_eq!(decode(&bytes).unwrap_or_default()["spec"]["replicas"], 5);
        let no_type = {
            let mut out = MAGIC.to_vec();
            out.extend_from_slice(&Enc::default().msg(2, scale).0);
            out
        };
        assert!(matches!(
            decode(&no_type),
            Err(DecodeError::MissingTypeMeta)
        ));
        let v = decode_with(&no_type, Some("k8s.io.api.autoscaling.v1.Scale")).unwrap_or_default();
        assert_eq!(
            v,
            json!({"metadata": {"name": "web"}, "spec": {"replicas": 5}})
        );
    }

    #[test]
    fn unknown_fields_are_skipped() {
        let ns = Enc::default()
            .msg(
                1,
                Enc::default()
                    .str(1, "a")
                    .int(99, 5)
                    .double(98, 1.0)
                    .str(97, "zzz"),
            )
            .key(96, 5);
        let mut ns = ns;
        ns.0.extend_from_slice(&[1, 2, 3, 4]);
        let v = decode(&envelope_of("v1", "Namespace", ns)).unwrap_or_default();
        assert_eq!(v["metadata"], json!({"name": "a"}));
    }

    #[test]
    fn errors_are_reported() {
        assert!(matches!(
            decode(b"{\"kind\":\"x\"}"),
            Err(DecodeError::NotProtobuf)
        ));
        let ok = envelope_of(
            "v1",
            "Namespace",
            Enc::default().msg(1, Enc::default().str(1, "a")),
        );
        assert!(matches!(
            decode(&ok[..ok.len() - 1]),
            Err(DecodeError::Truncated)
        ));
        assert!(matches!(
            decode(&envelope_of("example.com/v1", "Widget", Enc::default())),
            Err(DecodeError::UnknownKind { .. })
        ));
        let bad_utf8 = Enc::default().msg(1, Enc::default().bytes(1, &[0xff, 0xfe]));
        assert!(matches!(
            decode(&envelope_of("v1", "Namespace", bad_utf8)),
            Err(DecodeError::InvalidUtf8 { field: "name", .. })
        ));
        let wrong = Enc::default().msg(1, Enc::default().int(1, 5));
        assert!(matches!(
            decode(&envelope_of("v1", "Namespace", wrong)),
            Err(DecodeError::WrongWireType { field: "name", .. })
        ));
        let mut gz = MAGIC.to_vec();
        gz.extend_from_slice(
            &Enc::default()
                .msg(1, Enc::default().str(1, "v1").str(2, "Namespace"))
                .str(3, "gzip")
                .0,
        );
        assert!(matches!(
            decode(&gz),
            Err(DecodeError::UnsupportedEncoding(_))
        ));
        // deeply nested JSONSchemaProps must not overflow the stack
        let mut deep = Enc::default();
        for _ in 0..200 {
            deep = Enc::default().entry_msg(29, "p", deep);
        }
        let name = "k8s.io.apiextensions_apiserver.pkg.apis.apiextensions.v1.JSONSchemaProps";
        assert!(matches!(
            decode_message(name, &deep.0),
            Err(DecodeError::TooDeep)
        ));
    }
}
