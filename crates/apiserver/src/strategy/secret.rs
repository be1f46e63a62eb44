//! Secrets: `stringData` is merged into `data` (base64) and dropped, as upstream's
//! conversion into the internal form.

use serde_json::{json, Value};

use super::Strategy;

/// The strategy of `secrets`.
pub struct SecretStrategy;

impl Strategy for SecretStrategy {
    fn normalize_input(&self, obj: &mut Value) {
        use base64::Engine;
        let Some(o) = obj.as_object_mut() else { return };
        if let Some(Value::Object(sd)) = o.remove("stringData") {
            let data = o.entry("data").or_insert_with(|| json!({}));
            if !data.is_object() {
                *data = json!({});
            }
            if let Some(d) = data.as_object_mut() {
                for (k, v) in sd {
                    let text = v
                        .as_str()
                        .map(String::from)
                        .unwrap_or_else(|| v.to_string());
                    d.insert(
                        k,
                        json!(base64::engine::general_purpose::STANDARD.encode(text.as_bytes())),
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_data_becomes_data() {
        let mut s = json!({"data": {"a": "eA=="}, "stringData": {"b": "hi"}});
        SecretStrategy.normalize_input(&mut s);
        assert_eq!(s, json!({"data": {"a": "eA==", "b": "aGk="}}));
    }
}
