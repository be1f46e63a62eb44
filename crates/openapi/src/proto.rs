//! The Swagger 2.0 document as the gnostic `openapi.v2.Document` protobuf message
//! (`application/com.github.proto-openapi.spec.v2@v1.0+protobuf`), which client-go's
//! `OpenAPISchema()` asks for. A minimal hand-written protobuf encoder: only the fields
//! our documents use. Vendor extensions, defaults, examples and enums are `Any` messages
//! holding their value as YAML text (JSON is YAML), as gnostic does.

use serde_json::{Map, Value};

/// A protobuf message being written.
#[derive(Default)]
struct Msg(Vec<u8>);

impl Msg {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    fn key(&mut self, field: u32, wire: u8) {
        self.varint(((field as u64) << 3) | wire as u64);
    }
    fn bytes(&mut self, field: u32, b: &[u8]) {
        self.key(field, 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }
    fn string(&mut self, field: u32, s: &str) {
        if !s.is_empty() {
            self.bytes(field, s.as_bytes());
        }
    }
    fn msg(&mut self, field: u32, m: Msg) {
        self.bytes(field, &m.0);
    }
    fn boolean(&mut self, field: u32, b: bool) {
        if b {
            self.key(field, 0);
            self.varint(1);
        }
    }
    fn int64(&mut self, field: u32, v: i64) {
        if v != 0 {
            self.key(field, 0);
            self.varint(v as u64);
        }
    }
    fn double(&mut self, field: u32, v: f64) {
        if v != 0.0 {
            self.key(field, 1);
            self.0.extend_from_slice(&v.to_le_bytes());
        }
    }
    fn opt_str(&mut self, field: u32, v: Option<&Value>) {
        if let Some(s) = v.and_then(Value::as_str) {
            self.string(field, s);
        }
    }
    fn opt_bool(&mut self, field: u32, v: Option<&Value>) {
        if let Some(b) = v.and_then(Value::as_bool) {
            self.boolean(field, b);
        }
    }
    fn opt_i64(&mut self, field: u32, v: Option<&Value>) {
        if let Some(n) = v.and_then(Value::as_i64) {
            self.int64(field, n);
        }
    }
    fn opt_f64(&mut self, field: u32, v: Option<&Value>) {
        if let Some(n) = v.and_then(Value::as_f64) {
            self.double(field, n);
        }
    }
    fn strings(&mut self, field: u32, v: Option<&Value>) {
        if let Some(a) = v.and_then(Value::as_array) {
            for s in a.iter().filter_map(Value::as_str) {
                self.bytes(field, s.as_bytes());
            }
        }
    }
    /// `Any` (yaml = 2) at `field`.
    fn any(&mut self, field: u32, v: &Value) {
        let mut a = Msg::default();
        let text = match v {
            Value::String(s) => serde_json::to_string(s).unwrap_or_default(),
            other => other.to_string(),
        };
        a.bytes(2, text.as_bytes());
        self.msg(field, a);
    }
    /// `repeated NamedAny` for every `x-` key of `obj`.
    fn extensions(&mut self, field: u32, obj: &Map<String, Value>) {
        for (k, v) in obj.iter().filter(|(k, _)| k.starts_with("x-")) {
            let mut n = Msg::default();
            n.string(1, k);
            n.any(2, v);
            self.msg(field, n);
        }
    }
}

fn named(name: &str, value: Msg) -> Msg {
    let mut m = Msg::default();
    m.string(1, name);
    m.msg(2, value);
    m
}

fn schema(s: &Value) -> Msg {
    let mut m = Msg::default();
    let Some(o) = s.as_object() else { return m };
    m.opt_str(1, o.get("$ref"));
    m.opt_str(2, o.get("format"));
    m.opt_str(3, o.get("title"));
    m.opt_str(4, o.get("description"));
    if let Some(d) = o.get("default") {
        m.any(5, d);
    }
    m.opt_f64(6, o.get("multipleOf"));
    m.opt_f64(7, o.get("maximum"));
    m.opt_bool(8, o.get("exclusiveMaximum"));
    m.opt_f64(9, o.get("minimum"));
    m.opt_bool(10, o.get("exclusiveMinimum"));
    m.opt_i64(11, o.get("maxLength"));
    m.opt_i64(12, o.get("minLength"));
    m.opt_str(13, o.get("pattern"));
    m.opt_i64(14, o.get("maxItems"));
    m.opt_i64(15, o.get("minItems"));
    m.opt_bool(16, o.get("uniqueItems"));
    m.opt_i64(17, o.get("maxProperties"));
    m.opt_i64(18, o.get("minProperties"));
    m.strings(19, o.get("required"));
    if let Some(e) = o.get("enum").and_then(Value::as_array) {
        for v in e {
            m.any(20, v);
        }
    }
    match o.get("additionalProperties") {
        Some(Value::Bool(b)) => {
            let mut a = Msg::default();
            a.key(2, 0);
            a.varint(u64::from(*b));
            m.msg(21, a);
        }
        Some(v @ Value::Object(_)) => {
            let mut a = Msg::default();
            a.msg(1, schema(v));
            m.msg(21, a);
        }
        _ => {}
    }
    match o.get("type") {
        Some(Value::String(t)) => {
            let mut t_msg = Msg::default();
            t_msg.string(1, t);
            m.msg(22, t_msg);
        }
        Some(a @ Value::Array(_)) => {
            let mut t_msg = Msg::default();
            t_msg.strings(1, Some(a));
            m.msg(22, t_msg);
        }
        _ => {}
    }
    match o.get("items") {
        Some(v @ Value::Object(_)) => {
            let mut i = Msg::default();
            i.msg(1, schema(v));
            m.msg(23, i);
        }
        Some(Value::Array(a)) => {
            let mut i = Msg::default();
            for v in a {
                i.msg(1, schema(v));
            }
            m.msg(23, i);
        }
        _ => {}
    }
    if let Some(a) = o.get("allOf").and_then(Value::as_array) {
        for v in a {
            m.msg(24, schema(v));
        }
    }
    if let Some(p) = o.get("properties").and_then(Value::as_object) {
        let mut props = Msg::default();
        for (k, v) in p {
            props.msg(1, named(k, schema(v)));
        }
        m.msg(25, props);
    }
    m.opt_str(26, o.get("discriminator"));
    m.opt_bool(27, o.get("readOnly"));
    if let Some(e) = o.get("example") {
        m.any(30, e);
    }
    m.extensions(31, o);
    m
}

fn parameter(p: &Value) -> Msg {
    let mut item = Msg::default();
    let Some(o) = p.as_object() else { return item };
    if let Some(r) = o.get("$ref").and_then(Value::as_str) {
        let mut j = Msg::default();
        j.string(1, r);
        item.msg(2, j);
        return item;
    }
    let mut param = Msg::default();
    let loc = o.get("in").and_then(Value::as_str).unwrap_or_default();
    if loc == "body" {
        let mut b = Msg::default();
        b.opt_str(1, o.get("description"));
        b.opt_str(2, o.get("name"));
        b.opt_str(3, o.get("in"));
        b.opt_bool(4, o.get("required"));
        if let Some(s) = o.get("schema") {
            b.msg(5, schema(s));
        }
        b.extensions(6, o);
        param.msg(1, b);
    } else {
        // Query (3), path (4) and header (1) sub-schemas share the first fields; the
        // type and uniqueItems numbers differ by one between query and path/header.
        let (which, ty, unique, ext) = match loc {
            "path" => (4, 5, 19, 22),
            "header" => (1, 5, 19, 22),
            "formData" => (2, 6, 20, 23),
            _ => (3, 6, 20, 23),
        };
        let mut s = Msg::default();
        s.opt_bool(1, o.get("required"));
        s.opt_str(2, o.get("in"));
        s.opt_str(3, o.get("description"));
        s.opt_str(4, o.get("name"));
        s.opt_str(ty, o.get("type"));
        s.opt_str(ty + 1, o.get("format"));
        s.opt_bool(unique, o.get("uniqueItems"));
        s.extensions(ext, o);
        let mut nb = Msg::default();
        nb.msg(which, s);
        param.msg(2, nb);
    }
    item.msg(1, param);
    item
}

fn operation(op: &Value) -> Msg {
    let mut m = Msg::default();
    let Some(o) = op.as_object() else { return m };
    m.strings(1, o.get("tags"));
    m.opt_str(2, o.get("summary"));
    m.opt_str(3, o.get("description"));
    m.opt_str(5, o.get("operationId"));
    m.strings(6, o.get("produces"));
    m.strings(7, o.get("consumes"));
    if let Some(ps) = o.get("parameters").and_then(Value::as_array) {
        for p in ps {
            m.msg(8, parameter(p));
        }
    }
    if let Some(rs) = o.get("responses").and_then(Value::as_object) {
        let mut responses = Msg::default();
        for (code, r) in rs {
            let mut resp = Msg::default();
            resp.opt_str(1, r.get("description"));
            if let Some(s) = r.get("schema") {
                let mut si = Msg::default();
                si.msg(1, schema(s));
                resp.msg(2, si);
            }
            let mut rv = Msg::default();
            rv.msg(1, resp);
            responses.msg(1, named(code, rv));
        }
        m.msg(9, responses);
    }
    m.strings(10, o.get("schemes"));
    m.opt_bool(11, o.get("deprecated"));
    m.extensions(13, o);
    m
}

fn path_item(p: &Value) -> Msg {
    let mut m = Msg::default();
    let Some(o) = p.as_object() else { return m };
    for (field, method) in [
        (2, "get"),
        (3, "put"),
        (4, "post"),
        (5, "delete"),
        (6, "options"),
        (7, "head"),
        (8, "patch"),
    ] {
        if let Some(op) = o.get(method) {
            m.msg(field, operation(op));
        }
    }
    if let Some(ps) = o.get("parameters").and_then(Value::as_array) {
        for x in ps {
            m.msg(9, parameter(x));
        }
    }
    m.extensions(10, o);
    m
}

/// Encodes a Swagger 2.0 JSON document as `openapi.v2.Document`.
#[cfg(test)]
pub(crate) fn encode_document(doc: &Value) -> Vec<u8> {
    let mut e = V2Encoder::default();
    if let Some(paths) = doc.get("paths").and_then(Value::as_object) {
        for (k, v) in paths {
            e.path(k, v);
        }
    }
    if let Some(defs) = doc.get("definitions").and_then(Value::as_object) {
        for (k, v) in defs {
            e.definition(k, v);
        }
    }
    e.finish(doc)
}

/// Encodes a Swagger 2.0 document as `openapi.v2.Document` one path and one definition
/// at a time, so the whole document never exists as a JSON tree.
#[derive(Default)]
pub(crate) struct V2Encoder {
    paths: Msg,
    definitions: Msg,
}

impl V2Encoder {
    /// Adds the path item `name` (in document order).
    pub(crate) fn path(&mut self, name: &str, item: &Value) {
        self.paths.msg(2, named(name, path_item(item)));
    }

    /// Adds the definition `name` (in document order).
    pub(crate) fn definition(&mut self, name: &str, schema_value: &Value) {
        self.definitions.msg(1, named(name, schema(schema_value)));
    }

    /// The encoded document; `head` holds its other top-level fields (`swagger`, `info`,
    /// `security`, `securityDefinitions`, `x-` extensions); its `paths` and
    /// `definitions` are ignored.
    pub(crate) fn finish(self, head: &Value) -> Vec<u8> {
        let mut d = Msg::default();
        let Some(o) = head.as_object() else {
            return d.0;
        };
        d.opt_str(1, o.get("swagger"));
        if let Some(info) = o.get("info") {
            let mut i = Msg::default();
            i.opt_str(1, info.get("title"));
            i.opt_str(2, info.get("version"));
            i.opt_str(3, info.get("description"));
            d.msg(2, i);
        }
        d.msg(8, self.paths);
        d.msg(9, self.definitions);
        if let Some(sec) = o.get("security").and_then(Value::as_array) {
            for req in sec.iter().filter_map(Value::as_object) {
                let mut r = Msg::default();
                for (name, scopes) in req {
                    let mut sa = Msg::default();
                    sa.strings(1, Some(scopes));
                    r.msg(1, named(name, sa));
                }
                d.msg(12, r);
            }
        }
        if let Some(defs) = o.get("securityDefinitions").and_then(Value::as_object) {
            let mut sd = Msg::default();
            for (name, s) in defs {
                if s.get("type").and_then(Value::as_str) != Some("apiKey") {
                    continue;
                }
                let mut k = Msg::default();
                k.opt_str(1, s.get("type"));
                k.opt_str(2, s.get("name"));
                k.opt_str(3, s.get("in"));
                k.opt_str(4, s.get("description"));
                let mut item = Msg::default();
                item.msg(2, k);
                sd.msg(1, named(name, item));
            }
            d.msg(13, sd);
        }
        d.extensions(16, o);
        d.0
    }
}

#[cfg(test)]
pub(crate) mod decode {
    //! A tiny protobuf reader for tests.

    /// One field: number and either a varint or bytes.
    #[derive(Debug, Clone)]
    pub enum F<'a> {
        V(u64),
        B(&'a [u8]),
        D(f64),
    }

    fn varint(b: &[u8], i: &mut usize) -> Option<u64> {
        let mut v = 0u64;
        let mut shift = 0;
        loop {
            let x = *b.get(*i)?;
            *i += 1;
            v |= u64::from(x & 0x7f) << shift;
            if x < 0x80 {
                return Some(v);
            }
            shift += 7;
        }
    }

    /// Every (field number, value) of a message, or None if malformed.
    pub fn fields(b: &[u8]) -> Option<Vec<(u32, F<'_>)>> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            let k = varint(b, &mut i)?;
            let (field, wire) = ((k >> 3) as u32, k & 7);
            match wire {
                0 => out.push((field, F::V(varint(b, &mut i)?))),
                1 => {
                    let s = b.get(i..i + 8)?;
                    i += 8;
                    out.push((field, F::D(f64::from_le_bytes(s.try_into().ok()?))));
                }
                2 => {
                    let n = varint(b, &mut i)? as usize;
                    out.push((field, F::B(b.get(i..i + n)?)));
                    i += n;
                }
                _ => return None,
            }
        }
        Some(out)
    }

    /// The bytes of the first field `n`.
    pub fn get(b: &[u8], n: u32) -> Option<&[u8]> {
        fields(b)?.into_iter().find_map(|(f, v)| match (f == n, v) {
            (true, F::B(x)) => Some(x),
            _ => None,
        })
    }

    /// The `value` of the repeated `Named*` entry called `name` in field `n`.
    pub fn named<'a>(b: &'a [u8], n: u32, name: &str) -> Option<&'a [u8]> {
        fields(b)?.into_iter().find_map(|(f, v)| match (f == n, v) {
            (true, F::B(x)) if get(x, 1) == Some(name.as_bytes()) => get(x, 2),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::decode::{fields, get, named, F};
    use super::{encode_document, Msg};
    use serde_json::json;

    #[test]
    fn encodes_document_fields() {
        let doc = json!({
            "swagger": "2.0",
            "info": {"title": "Kubernetes", "version": "v1.33.0"},
            "paths": {"/api/v1/pods": {"get": {"operationId": "listCoreV1PodForAllNamespaces",
                "parameters": [{"in": "query", "name": "fieldValidation", "type": "string", "uniqueItems": true}],
                "responses": {"200": {"description": "OK", "schema": {"$ref": "#/definitions/X"}}},
                "x-kubernetes-action": "list"}}},
            "definitions": {"X": {"type": "object", "properties": {"a": {"type": "array",
                "items": {"$ref": "#/definitions/Y"}, "x-kubernetes-patch-merge-key": "name"}}}}
        });
        let b = encode_document(&doc);
        assert_eq!(get(&b, 1), Some(&b"2.0"[..]));
        let info = get(&b, 2).expect("info");
        assert_eq!(get(info, 2), Some(&b"v1.33.0"[..]));
        let item = named(get(&b, 8).expect("paths"), 2, "/api/v1/pods").expect("path");
        let op = get(item, 2).expect("get");
        assert_eq!(get(op, 5), Some(&b"listCoreV1PodForAllNamespaces"[..]));
        let param = get(
            get(get(get(op, 8).expect("param item"), 1).expect("param"), 2).expect("non body"),
            3,
        )
        .expect("query");
        assert_eq!(get(param, 4), Some(&b"fieldValidation"[..]));
        let ext = named(op, 13, "x-kubernetes-action").expect("ext");
        assert_eq!(get(ext, 2), Some(&b"\"list\""[..]));
        let x = named(get(&b, 9).expect("defs"), 1, "X").expect("X");
        let a = named(get(x, 25).expect("props"), 1, "a").expect("a");
        assert_eq!(get(get(a, 22).expect("type"), 1), Some(&b"array"[..]));
        let items = get(get(a, 23).expect("items"), 1).expect("schema");
        assert_eq!(get(items, 1), Some(&b"#/definitions/Y"[..]));
        assert_eq!(
            get(named(a, 31, "x-kubernetes-patch-merge-key").expect("mk"), 2),
            Some(&b"\"name\""[..])
        );
    }

    #[test]
    fn varints_and_doubles() {
        let mut m = Msg::default();
        m.int64(1, 300);
        m.double(2, 1.5);
        m.boolean(3, true);
        m.boolean(4, false);
        let f = fields(&m.0).expect("fields");
        assert_eq!(f.len(), 3);
        assert!(matches!(f[0], (1, F::V(300))));
        assert!(matches!(f[1], (2, F::D(x)) if x == 1.5));
        assert!(matches!(f[2], (3, F::V(1))));
    }
}
