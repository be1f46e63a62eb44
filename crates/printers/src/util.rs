//! Small helpers to read JSON objects and format values the way upstream's
//! printers do (label maps, label selectors, timestamps, durations).

use jiff::Timestamp;
use serde_json::Value;

/// Walks `path` inside `v`; `None` if any step is missing.
pub(crate) fn get<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p)?;
    }
    if cur.is_null() {
        None
    } else {
        Some(cur)
    }
}

/// String at `path`, or "" when missing / not a string.
pub(crate) fn s<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    get(v, path).and_then(Value::as_str).unwrap_or("")
}

/// Optional string at `path` (present and a string).
pub(crate) fn os<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    get(v, path).and_then(Value::as_str)
}

/// Integer at `path`, or `None`.
pub(crate) fn oi(v: &Value, path: &[&str]) -> Option<i64> {
    let x = get(v, path)?;
    x.as_i64()
        .or_else(|| x.as_f64().map(|f| f as i64))
        .or_else(|| x.as_str().and_then(|t| t.parse().ok()))
}

/// Integer at `path`, 0 when missing.
pub(crate) fn i(v: &Value, path: &[&str]) -> i64 {
    oi(v, path).unwrap_or(0)
}

/// Boolean at `path`, or `None`.
pub(crate) fn ob(v: &Value, path: &[&str]) -> Option<bool> {
    get(v, path).and_then(Value::as_bool)
}

/// Boolean at `path`, `default` when missing.
pub(crate) fn b_or(v: &Value, path: &[&str], default: bool) -> bool {
    ob(v, path).unwrap_or(default)
}

static EMPTY: Vec<Value> = Vec::new();

/// Array at `path`, empty when missing.
pub(crate) fn arr<'a>(v: &'a Value, path: &[&str]) -> &'a [Value] {
    get(v, path)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(EMPTY.as_slice())
}

/// Number of entries of the map (or array) at `path`, 0 when missing.
pub(crate) fn len_at(v: &Value, path: &[&str]) -> i64 {
    match get(v, path) {
        Some(Value::Object(m)) => m.len() as i64,
        Some(Value::Array(a)) => a.len() as i64,
        _ => 0,
    }
}

/// A resource.Quantity as its string form (quantities may be JSON numbers).
pub(crate) fn quantity(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(t) => Some(t.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `metadata.name`.
pub(crate) fn name(obj: &Value) -> String {
    s(obj, &["metadata", "name"]).to_string()
}

/// Parses an RFC 3339 timestamp; the Go zero time counts as absent.
pub(crate) fn parse_ts(v: Option<&Value>) -> Option<Timestamp> {
    let t: Timestamp = v?.as_str()?.parse().ok()?;
    if t.as_second() == ZERO_TIME_SECONDS {
        return None;
    }
    Some(t)
}

/// Seconds of 0001-01-01T00:00:00Z since the Unix epoch (Go's zero time).
const ZERO_TIME_SECONDS: i64 = -62_135_596_800;

/// Elapsed time from `ts` to `now` in human form, "<unknown>" when absent.
pub(crate) fn since(ts: Option<&Value>, now: Timestamp) -> String {
    match parse_ts(ts) {
        Some(t) => human_seconds(now.duration_since(t).as_secs()),
        None => "<unknown>".to_string(),
    }
}

/// AGE cell of an object: time since `metadata.creationTimestamp`.
pub(crate) fn age(obj: &Value, now: Timestamp) -> String {
    since(get(obj, &["metadata", "creationTimestamp"]), now)
}

/// upstream's HumanDuration on a signed number of whole seconds.
pub(crate) fn human_seconds(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".to_string();
    }
    if secs < 0 {
        return "0s".to_string();
    }
    if secs < 60 * 2 {
        return format!("{secs}s");
    }
    let minutes = secs / 60;
    if minutes < 10 {
        let sec = secs % 60;
        return if sec == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{sec}s")
        };
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = secs / 3600;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{}h", hours / 24, h)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        return if dy == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{}d", hours / 24 / 365, dy)
        };
    }
    format!("{}y", hours / 24 / 365)
}

/// Formats a label map as "k1=v1,k2=v2" (sorted by key), "<none>" if empty.
pub(crate) fn format_labels(v: Option<&Value>) -> String {
    let mut pairs: Vec<String> = match v.and_then(Value::as_object) {
        Some(m) => m
            .iter()
            .map(|(k, val)| format!("{k}={}", val.as_str().unwrap_or("")))
            .collect(),
        None => Vec::new(),
    };
    if pairs.is_empty() {
        return "<none>".to_string();
    }
    pairs.sort();
    pairs.join(",")
}

/// Converts a metav1.LabelSelector to its selector string ("" when it selects everything
/// or is absent) with [`rk3s_core::LabelSelector`]; `None` when the selector is invalid.
pub(crate) fn selector_string(sel: Option<&Value>) -> Option<String> {
    let Some(sel) = sel else {
        return Some(String::new());
    };
    rk3s_core::LabelSelector::from_json(sel)
        .ok()
        .map(|s| s.to_string())
}

/// upstream's FormatLabelSelector: "<none>" when empty, "<error>" if invalid.
pub(crate) fn format_label_selector(sel: Option<&Value>) -> String {
    match selector_string(sel) {
        None => "<error>".to_string(),
        Some(t) if t.is_empty() => "<none>".to_string(),
        Some(t) => t,
    }
}

/// Container names and images of a pod spec, each joined by ",".
pub(crate) fn containers_cells(pod_spec: Option<&Value>) -> (String, String) {
    let mut names = Vec::new();
    let mut images = Vec::new();
    if let Some(spec) = pod_spec {
        for c in arr(spec, &["containers"]) {
            names.push(s(c, &["name"]));
            images.push(s(c, &["image"]));
        }
    }
    (names.join(","), images.join(","))
}

/// "True"/"False" for a boolean, "<unset>" when absent.
pub(crate) fn bool_ptr(v: Option<bool>) -> String {
    match v {
        Some(true) => "True".to_string(),
        Some(false) => "False".to_string(),
        None => "<unset>".to_string(),
    }
}

/// Joins up to `max` items, then " + N more..."; "<unset>" when empty.
pub(crate) fn list_with_more(items: &[String], max: usize) -> String {
    if items.len() > max {
        return format!("{} + {} more...", items[..max].join(","), items.len() - max);
    }
    if items.is_empty() {
        return "<unset>".to_string();
    }
    items.join(",")
}

/// Joins a host and port the way Go's net.JoinHostPort does.
pub(crate) fn join_host_port(host: &str, port: i64) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn human_boundaries() {
        assert_eq!(human_seconds(-2), "<invalid>");
        assert_eq!(human_seconds(-1), "0s");
        assert_eq!(human_seconds(0), "0s");
        assert_eq!(human_seconds(119), "119s");
        assert_eq!(human_seconds(120), "2m");
        assert_eq!(human_seconds(182), "3m2s");
        assert_eq!(human_seconds(599), "9m59s");
        assert_eq!(human_seconds(600), "10m");
        assert_eq!(human_seconds(720), "12m");
        assert_eq!(human_seconds(3 * 3600 - 1), "179m");
        assert_eq!(human_seconds(3 * 3600), "3h");
        assert_eq!(human_seconds(4 * 3600 + 5 * 60), "4h5m");
        assert_eq!(human_seconds(8 * 3600), "8h");
        assert_eq!(human_seconds(47 * 3600 + 59 * 60), "47h");
        assert_eq!(human_seconds(48 * 3600), "2d");
        assert_eq!(human_seconds(3 * 86400 + 4 * 3600), "3d4h");
        assert_eq!(human_seconds(8 * 86400), "8d");
        assert_eq!(human_seconds(729 * 86400), "729d");
        assert_eq!(human_seconds(730 * 86400), "2y");
        assert_eq!(human_seconds(731 * 86400), "2y1d");
        assert_eq!(human_seconds(8 * 365 * 86400 + 86400), "8y");
    }

    #[test]
    fn labels_sorted_and_none() {
        assert_eq!(format_labels(Some(&json!({"b":"2","a":"1"}))), "a=1,b=2");
        assert_eq!(format_labels(Some(&json!({}))), "<none>");
        assert_eq!(format_labels(None), "<none>");
    }

    #[test]
    fn selectors() {
        let sel = json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["b", "a"]},
                {"key": "env", "operator": "NotIn", "values": ["prod"]},
                {"key": "x", "operator": "Exists"},
                {"key": "y", "operator": "DoesNotExist"}
            ]
        });
        assert_eq!(
            format_label_selector(Some(&sel)),
            "app=web,env notin (prod),tier in (a,b),x,!y"
        );
        assert_eq!(format_label_selector(Some(&json!({}))), "<none>");
        assert_eq!(format_label_selector(None), "<none>");
        let bad = json!({"matchExpressions": [{"key": "a", "operator": "In", "values": []}]});
        assert_eq!(format_label_selector(Some(&bad)), "<error>");
    }

    #[test]
    fn zero_time_is_unknown() {
        let now: Timestamp = "2024-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(
            since(Some(&json!("0001-01-01T00:00:00Z")), now),
            "<unknown>"
        );
        assert_eq!(since(None, now), "<unknown>");
        assert_eq!(since(Some(&json!("2023-12-31T23:55:00Z")), now), "5m");
    }

    #[test]
    fn host_port() {
        assert_eq!(join_host_port("10.0.0.1", 80), "10.0.0.1:80");
        assert_eq!(join_host_port("fd00::1", 80), "[fd00::1]:80");
    }
}
