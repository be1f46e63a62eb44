//! Manifest files -> Kubernetes objects, as k3s's deploy controller reads them: YAML
//! (or JSON) documents separated by `---` lines, documents holding only comments or
//! whitespace ignored, `*List` documents expanded into their items. Every document is
//! parsed before anything is applied, so a file with one bad document applies nothing;
//! errors carry the 1-based line of the file where they are.

use serde_json::Value;

/// One object of a manifest file.
#[derive(Clone, Debug, PartialEq)]
pub struct ManifestObject {
    /// The whole object (JSON form).
    pub object: Value,
    /// `apiVersion`.
    pub api_version: String,
    /// `kind`.
    pub kind: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`, when set.
    pub namespace: Option<String>,
    /// 1-based line of the file where the object's document starts.
    pub line: usize,
}

impl ManifestObject {
    /// `group` and `version` of `apiVersion` (`v1` -> core group `""`).
    pub fn group_version(&self) -> (&str, &str) {
        split_api_version(&self.api_version)
    }
}

/// `group/version` -> (`group`, `version`); `v1` -> (`""`, `v1`).
pub fn split_api_version(api_version: &str) -> (&str, &str) {
    match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    }
}

/// Why a manifest did not parse, and where.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ParseError {
    /// 1-based line of the file.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

/// Whether a document holds nothing but whitespace, comments and separators (k3s's
/// `isEmptyYaml`).
fn is_empty_document(doc: &str) -> bool {
    doc.lines().all(|l| {
        let t = l.trim();
        t.is_empty() || t == "---" || t.starts_with('#')
    })
}

/// Whether `line` separates documents: it starts with `---` followed by nothing but
/// spaces or a comment (the Kubernetes YAML reader's rule).
fn is_separator(line: &str) -> bool {
    match line.strip_prefix("---") {
        Some(rest) => {
            let rest = rest.trim();
            rest.is_empty() || rest.starts_with('#')
        }
        None => false,
    }
}

/// The documents of `content`, each with the 1-based line it starts on.
fn documents(content: &str) -> Vec<(usize, String)> {
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut start = 1;
    for (i, line) in content.lines().enumerate() {
        if is_separator(line) {
            docs.push((start, std::mem::take(&mut current)));
            start = i + 2;
            continue;
        }
        current.push_str(line);
        current.push('\n');
    }
    docs.push((start, current));
    docs
}

/// Parses every document of `content`; the first error stops it (nothing is returned).
/// Content starting with `{` is read as a stream of JSON objects (JSON allows tabs,
/// YAML does not), anything else as YAML documents.
pub fn parse_manifest(content: &str) -> Result<Vec<ManifestObject>, ParseError> {
    if content.trim_start().starts_with('{') {
        return parse_json(content);
    }
    let mut out = Vec::new();
    for (start, doc) in documents(content) {
        if is_empty_document(&doc) {
            continue;
        }
        let yaml: serde_yaml::Value = serde_yaml::from_str(&doc).map_err(|e| ParseError {
            line: start
                + e.location()
                    .map(|l| l.line().saturating_sub(1))
                    .unwrap_or(0),
            reason: without_location(&e.to_string()),
        })?;
        let value: Value = serde_json::to_value(&yaml).map_err(|e| ParseError {
            line: start,
            reason: format!("not a JSON-compatible document: {e}"),
        })?;
        if value.is_null() {
            continue;
        }
        let kind = value
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if kind.ends_with("List") {
            if let Some(items) = value.get("items").and_then(Value::as_array) {
                for item in items {
                    out.push(object(item.clone(), start)?);
                }
                continue;
            }
        }
        push_expanded(&mut out, value, start)?;
    }
    Ok(out)
}

/// A stream of JSON values (each an object or a `*List`).
fn parse_json(content: &str) -> Result<Vec<ManifestObject>, ParseError> {
    let mut out = Vec::new();
    let mut stream = serde_json::Deserializer::from_str(content).into_iter::<Value>();
    loop {
        let offset = stream.byte_offset();
        match stream.next() {
            None => break,
            Some(Ok(v)) => {
                let skipped = &content[offset..stream.byte_offset()];
                let ws = skipped.len() - skipped.trim_start().len();
                let line = 1 + content[..offset + ws].matches('\n').count();
                push_expanded(&mut out, v, line)?;
            }
            Some(Err(e)) => {
                return Err(ParseError {
                    line: e.line(),
                    reason: without_location(&e.to_string()),
                })
            }
        }
    }
    Ok(out)
}

/// Adds one document's objects (`*List` items expanded).
fn push_expanded(
    out: &mut Vec<ManifestObject>,
    value: Value,
    line: usize,
) -> Result<(), ParseError> {
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if kind.ends_with("List") {
        if let Some(items) = value.get("items").and_then(Value::as_array) {
            for item in items {
                out.push(object(item.clone(), line)?);
            }
            return Ok(());
        }
    }
    out.push(object(value, line)?);
    Ok(())
}

/// serde_yaml's message without its document-relative " at line L column C".
fn without_location(msg: &str) -> String {
    let mut out = msg.to_string();
    while let Some(i) = out.find(" at line ") {
        // drop " at line L column C"
        let rest = &out[i + " at line ".len()..];
        let after = rest
            .find(" column ")
            .map(|j| &rest[j + " column ".len()..])
            .map(|r| r.trim_start_matches(|c: char| c.is_ascii_digit()))
            .unwrap_or("");
        out = format!("{}{after}", &out[..i]);
    }
    out
}

/// Checks one object's identity (apiVersion, kind, name).
fn object(value: Value, line: usize) -> Result<ManifestObject, ParseError> {
    let err = |reason: &str| ParseError {
        line,
        reason: reason.to_string(),
    };
    if !value.is_object() {
        return Err(err("a document is not an object"));
    }
    let api_version = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| err("Object 'apiVersion' is missing"))?
        .to_string();
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| err("Object 'Kind' is missing"))?
        .to_string();
    let meta = value.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| err(&format!("{kind} has no metadata.name")))?
        .to_string();
    let namespace = meta
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    Ok(ManifestObject {
        object: value,
        api_version,
        kind,
        name,
        namespace,
        line,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_split_and_empty_ones_ignored() {
        let m = "# leading comment\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n--- # next\n\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: b}\n";
        let objs = parse_manifest(m).expect("parses");
        assert_eq!(objs.len(), 2);
        assert_eq!(
            (objs[0].kind.as_str(), objs[0].name.as_str()),
            ("ConfigMap", "a")
        );
        assert_eq!(objs[0].line, 3);
        assert_eq!((objs[1].kind.as_str(), objs[1].line), ("Namespace", 10));
    }

    #[test]
    fn a_syntax_error_reports_the_file_line() {
        let m = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: b\n  labels: [unclosed\n";
        let e = parse_manifest(m).expect_err("bad yaml");
        assert!((10..=11).contains(&e.line), "{e}");
        assert!(!e.reason.contains("at line"), "only the file's line: {e}");
        assert_eq!(
            without_location("did not find x at line 6 column 1, while parsing"),
            "did not find x, while parsing"
        );
        let m2 = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n data: x\n";
        let e2 = parse_manifest(m2).expect_err("bad indentation");
        assert_eq!(e2.line, 5, "{e2}");
    }

    #[test]
    fn a_bad_document_fails_the_whole_file() {
        let m = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ok}\n---\nkind: ConfigMap\nmetadata: {name: x}\n";
        let e = parse_manifest(m).expect_err("no apiVersion");
        assert_eq!(e.line, 5);
        assert!(e.reason.contains("apiVersion"));
        let e =
            parse_manifest("apiVersion: v1\nkind: Secret\nmetadata: {}\n").expect_err("no name");
        assert!(e.reason.contains("metadata.name"), "{e}");
        assert!(parse_manifest("- a\n- b\n").is_err());
    }

    #[test]
    fn lists_expand_and_json_parses() {
        let m = r#"{"apiVersion":"v1","kind":"List","items":[
            {"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"a","namespace":"x"}},
            {"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"d"}}]}"#;
        let objs = parse_manifest(m).expect("parses");
        assert_eq!(objs.len(), 2);
        assert_eq!(objs[0].namespace.as_deref(), Some("x"));
        assert_eq!(objs[1].group_version(), ("apps", "v1"));
        assert_eq!(objs[1].namespace, None);
    }

    #[test]
    fn json_streams_with_tabs_parse_and_errors_have_lines() {
        let m = "{\n\t\"apiVersion\": \"v1\",\n\t\"kind\": \"ConfigMap\",\n\t\"metadata\": {\"name\": \"a\"}\n}\n\n{\"apiVersion\": \"v1\", \"kind\": \"Secret\", \"metadata\": {\"name\": \"s\"}}\n";
        let objs = parse_manifest(m).expect("json");
        assert_eq!(objs.len(), 2);
        assert_eq!((objs[0].line, objs[1].line), (1, 7));
        let e = parse_manifest("{\"apiVersion\": \"v1\",\n \"kind\": ConfigMap}\n")
            .expect_err("bad json");
        assert_eq!(e.line, 2, "{e}");
    }

    #[test]
    fn separators_need_a_line_of_their_own() {
        assert!(is_separator("---"));
        assert!(is_separator("--- # c"));
        assert!(!is_separator("---x"));
        assert!(!is_separator(" ---"));
    }
}
