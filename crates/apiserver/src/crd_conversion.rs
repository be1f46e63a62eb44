//! Versions of custom resources: a CRD's objects are stored in its storage version and
//! served in every served version, converted as `spec.conversion` says:
//! - `None`: only `apiVersion` changes;
//! - `Webhook`: a `ConversionReview` (`apiextensions.k8s.io/v1`, or `v1beta1` when the
//!   CRD's `conversionReviewVersions` only allows that) goes to the webhook, whose
//!   answer is checked as upstream checks it (same uid, `Success`, one object per object
//!   sent, each in the desired version and of the same kind; only labels and
//!   annotations of the metadata may change).
//!
//! Objects already in the desired version are not sent. The transport is the one of
//! admission webhooks ([`rk3s_admission::webhook::post_review`]).

use std::time::Duration;

use serde_json::{json, Map, Value};
use thiserror::Error;

/// Why a conversion failed (the API answers 500 with this text, as upstream).
#[derive(Debug, Error, Clone, PartialEq)]
pub enum ConversionError {
    /// Calling the webhook failed.
    #[error("conversion webhook for {gvk} failed: {reason}")]
    Webhook {
        /// `group/version, Kind=kind` of the objects sent.
        gvk: String,
        /// What went wrong.
        reason: String,
    },
    /// The webhook's answer was not usable.
    #[error("conversion webhook for {gvk} returned invalid response: {reason}")]
    Invalid {
        /// `group/version, Kind=kind` of the objects sent.
        gvk: String,
        /// What was wrong.
        reason: String,
    },
}

/// How a CRD converts between its versions.
#[derive(Debug, Clone, PartialEq)]
pub enum Strategy {
    /// Only `apiVersion` changes.
    None,
    /// A conversion webhook.
    Webhook {
        /// `spec.conversion.webhook.clientConfig`.
        client_config: Value,
        /// The `ConversionReview` version to send (`v1` or `v1beta1`).
        review_version: String,
    },
}

/// The conversion of one CRD's objects.
#[derive(Debug, Clone, PartialEq)]
pub struct Conversion {
    /// `group` of the CRD.
    pub group: String,
    /// `names.kind`.
    pub kind: String,
    /// The version objects are stored in (`storage: true`).
    pub storage_version: String,
    /// How to convert.
    pub strategy: Strategy,
}

impl Conversion {
    /// The conversion a CRD object declares (`None` when it has no storage version).
    pub fn from_crd(crd: &Value) -> Option<Conversion> {
        let spec = crd.get("spec")?;
        let storage_version = spec
            .get("versions")?
            .as_array()?
            .iter()
            .find(|v| v.get("storage").and_then(Value::as_bool) == Some(true))?
            .get("name")?
            .as_str()?
            .to_string();
        let conv = spec.get("conversion");
        let strategy = match conv.and_then(|c| c.get("strategy")).and_then(Value::as_str) {
            Some("Webhook") => {
                let hook = conv.and_then(|c| c.get("webhook"));
                let review_version = hook
                    .and_then(|w| w.get("conversionReviewVersions"))
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .find(|v| matches!(*v, "v1" | "v1beta1"))
                    .unwrap_or("v1")
                    .to_string();
                Strategy::Webhook {
                    client_config: hook
                        .and_then(|w| w.get("clientConfig"))
                        .cloned()
                        .unwrap_or(Value::Null),
                    review_version,
                }
            }
            _ => Strategy::None,
        };
        Some(Conversion {
            group: spec.get("group")?.as_str()?.to_string(),
            kind: spec.get("names")?.get("kind")?.as_str()?.to_string(),
            storage_version,
            strategy,
        })
    }

    /// `group/version` of the storage version.
    pub fn storage_api_version(&self) -> String {
        format!("{}/{}", self.group, self.storage_version)
    }

    fn gvk(&self, api_version: &str) -> String {
        format!("{api_version}, Kind={}", self.kind)
    }

    /// `objects` in `desired` (`group/version`). Objects already there are kept as they
    /// are; the others go to the webhook in one review (or only change `apiVersion`).
    pub async fn convert(
        &self,
        objects: Vec<Value>,
        desired: &str,
        resolve: rk3s_admission::webhook::ServiceResolver<'_>,
    ) -> Result<Vec<Value>, ConversionError> {
        let todo: Vec<usize> = (0..objects.len())
            .filter(|&i| api_version(&objects[i]) != desired)
            .collect();
        if todo.is_empty() {
            return Ok(objects);
        }
        let (client_config, review_version) = match &self.strategy {
            Strategy::None => {
                let mut objects = objects;
                for i in todo {
                    set_api_version(&mut objects[i], desired);
                }
                return Ok(objects);
            }
            Strategy::Webhook {
                client_config,
                review_version,
            } => (client_config, review_version),
        };
        let from = api_version(&objects[todo[0]]).to_string();
        let gvk = self.gvk(&from);
        let uid = crate::object::new_uid();
        let sent: Vec<Value> = todo.iter().map(|&i| objects[i].clone()).collect();
        let review = review_request(review_version, &uid, desired, &sent);
        let body = serde_json::to_vec(&review).map_err(|e| ConversionError::Webhook {
            gvk: gvk.clone(),
            reason: e.to_string(),
        })?;
        let answer = rk3s_admission::webhook::post_review(
            &format!("{}.{}", self.kind.to_lowercase(), self.group),
            client_config,
            Duration::from_secs(30),
            body,
            resolve,
        )
        .await
        .map_err(|e| ConversionError::Webhook {
            gvk: gvk.clone(),
            reason: e.to_string(),
        })?;
        let answer: Value =
            serde_json::from_slice(&answer).map_err(|e| ConversionError::Invalid {
                gvk: gvk.clone(),
                reason: e.to_string(),
            })?;
        let converted = converted_objects(&gvk, &uid, desired, &sent, &answer)?;
        let mut objects = objects;
        for (i, obj) in todo.into_iter().zip(converted) {
            objects[i] = obj;
        }
        Ok(objects)
    }
}

fn api_version(obj: &Value) -> &str {
    obj.get("apiVersion").and_then(Value::as_str).unwrap_or("")
}

fn set_api_version(obj: &mut Value, v: &str) {
    if let Some(m) = obj.as_object_mut() {
        m.insert("apiVersion".into(), json!(v));
    }
}

/// The `ConversionReview` request of `objects` to `desired`.
pub fn review_request(review_version: &str, uid: &str, desired: &str, objects: &[Value]) -> Value {
    json!({
        "apiVersion": format!("apiextensions.k8s.io/{review_version}"),
        "kind": "ConversionReview",
        "request": {"uid": uid, "desiredAPIVersion": desired, "objects": objects},
    })
}

/// The converted objects of a `ConversionReview` answer, checked against what was sent;
/// each keeps its sent metadata but for labels and annotations (upstream restores the
/// rest).
pub fn converted_objects(
    gvk: &str,
    uid: &str,
    desired: &str,
    sent: &[Value],
    answer: &Value,
) -> Result<Vec<Value>, ConversionError> {
    let invalid = |reason: String| ConversionError::Invalid {
        gvk: gvk.to_string(),
        reason,
    };
    let resp = answer
        .get("response")
        .filter(|r| r.is_object())
        .ok_or_else(|| invalid("no response provided".into()))?;
    let got_uid = resp.get("uid").and_then(Value::as_str).unwrap_or("");
    if got_uid != uid {
        return Err(invalid(format!(
            "expected response.uid=\"{uid}\", got \"{got_uid}\""
        )));
    }
    let result = resp.get("result");
    let status = result
        .and_then(|r| r.get("status"))
        .and_then(Value::as_str)
        .unwrap_or("");
    if status != "Success" {
        let message = result
            .and_then(|r| r.get("message"))
            .and_then(Value::as_str)
            .unwrap_or("");
        return Err(ConversionError::Webhook {
            gvk: gvk.to_string(),
            reason: message.to_string(),
        });
    }
    let converted = resp
        .get("convertedObjects")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if converted.len() != sent.len() {
        return Err(invalid(format!(
            "expected {} converted objects, got {}",
            sent.len(),
            converted.len()
        )));
    }
    let mut out = Vec::with_capacity(converted.len());
    for (i, (mut c, orig)) in converted.into_iter().zip(sent).enumerate() {
        let Some(cm) = c.as_object_mut() else {
            return Err(invalid(format!(
                "invalid converted object at index {i}: not an object"
            )));
        };
        let got = cm.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        if got != desired {
            return Err(invalid(format!(
                "invalid converted object at index {i}: invalid apiVersion \"{got}\", expected \"{desired}\""
            )));
        }
        let kind = cm.get("kind").and_then(Value::as_str).unwrap_or("");
        let want_kind = orig.get("kind").and_then(Value::as_str).unwrap_or("");
        if kind != want_kind {
            return Err(invalid(format!(
                "invalid converted object at index {i}: invalid kind \"{kind}\", expected \"{want_kind}\""
            )));
        }
        let mut meta: Map<String, Value> = orig
            .get("metadata")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let new_meta = cm.get("metadata").and_then(Value::as_object);
        for key in ["labels", "annotations"] {
            match new_meta.and_then(|m| m.get(key)) {
                Some(v) if v.is_object() => {
                    meta.insert(key.into(), v.clone());
                }
                Some(v) if !v.is_null() => {
                    return Err(invalid(format!(
                        "invalid converted object at index {i}: metadata.{key} must be a map"
                    )));
                }
                _ => {
                    meta.remove(key);
                }
            }
        }
        cm.insert("metadata".into(), Value::Object(meta));
        out.push(c);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crd(conversion: Value) -> Value {
        json!({"spec": {"group": "stable.example.com", "names": {"kind": "Widget"},
            "versions": [{"name": "v1", "storage": true}, {"name": "v2", "storage": false}],
            "conversion": conversion}})
    }

    fn cr(v: &str, name: &str) -> Value {
        json!({"apiVersion": format!("stable.example.com/{v}"), "kind": "Widget",
            "metadata": {"name": name, "namespace": "d", "uid": "u-1", "resourceVersion": "7",
                "labels": {"a": "1"}}, "hostPort": "localhost:8080"})
    }

    #[test]
    fn strategies_from_the_crd() {
        let none = Conversion::from_crd(&crd(json!({"strategy": "None"}))).unwrap();
        assert_eq!(none.strategy, Strategy::None);
        assert_eq!(none.storage_api_version(), "stable.example.com/v1");
        let hook = Conversion::from_crd(&crd(json!({"strategy": "Webhook", "webhook": {
            "clientConfig": {"url": "https://h/convert"},
            "conversionReviewVersions": ["v2", "v1beta1", "v1"]}})))
        .unwrap();
        assert_eq!(
            hook.strategy,
            Strategy::Webhook {
                client_config: json!({"url": "https://h/convert"}),
                review_version: "v1beta1".into()
            }
        );
        assert!(Conversion::from_crd(&json!({"spec": {"versions": []}})).is_none());
    }

    #[tokio::test]
    async fn none_changes_only_the_api_version() {
        let c = Conversion::from_crd(&crd(json!({"strategy": "None"}))).unwrap();
        let no_services = |_: &str, _: &str, _: u16| None;
        let out = c
            .convert(
                vec![cr("v1", "a"), cr("v2", "b")],
                "stable.example.com/v2",
                &no_services,
            )
            .await
            .unwrap();
        assert_eq!(out[0]["apiVersion"], "stable.example.com/v2");
        assert_eq!(out[0]["hostPort"], "localhost:8080");
        assert_eq!(out[1], cr("v2", "b"));
    }

    #[tokio::test]
    async fn nothing_to_convert_calls_no_webhook() {
        let c = Conversion::from_crd(&crd(json!({"strategy": "Webhook", "webhook": {
            "clientConfig": {"url": "https://127.0.0.1:1/never"}}})))
        .unwrap();
        let no_services = |_: &str, _: &str, _: u16| None;
        let objs = vec![cr("v2", "a")];
        let out = c
            .convert(objs.clone(), "stable.example.com/v2", &no_services)
            .await
            .unwrap();
        assert_eq!(out, objs);
        // Something to convert, nobody listening: the webhook error.
        let e = c
            .convert(vec![cr("v1", "a")], "stable.example.com/v2", &no_services)
            .await
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("conversion webhook for stable.example.com/v1, Kind=Widget failed:"),
            "{e}"
        );
    }

    #[test]
    fn answers_are_checked_and_metadata_restored() {
        let gvk = "stable.example.com/v1, Kind=Widget";
        let sent = vec![cr("v1", "a")];
        let mut conv = cr("v2", "a");
        conv["metadata"]["name"] = json!("renamed");
        conv["metadata"]["labels"] = json!({"b": "2"});
        conv["port"] = json!(8080);
        let ok = json!({"response": {"uid": "x", "result": {"status": "Success"}, "convertedObjects": [conv]}});
        let out = converted_objects(gvk, "x", "stable.example.com/v2", &sent, &ok).unwrap();
        assert_eq!(out[0]["metadata"]["name"], "a");
        assert_eq!(out[0]["metadata"]["uid"], "u-1");
        assert_eq!(out[0]["metadata"]["labels"], json!({"b": "2"}));
        assert_eq!(out[0]["port"], 8080);

        let check = |answer: Value| {
            converted_objects(gvk, "x", "stable.example.com/v2", &sent, &answer)
                .unwrap_err()
                .to_string()
        };
        assert!(check(json!({})).contains("no response provided"));
        assert!(check(json!({"response": {"uid": "y"}})).contains("expected response.uid=\"x\""));
        assert_eq!(
            check(
                json!({"response": {"uid": "x", "result": {"status": "Failure", "message": "nope"}}})
            ),
            "conversion webhook for stable.example.com/v1, Kind=Widget failed: nope"
        );
        assert!(check(json!({"response": {"uid": "x", "result": {"status": "Success"}, "convertedObjects": []}}))
            .contains("expected 1 converted objects, got 0"));
        assert!(check(json!({"response": {"uid": "x", "result": {"status": "Success"}, "convertedObjects": [cr("v1", "a")]}}))
            .contains("invalid apiVersion \"stable.example.com/v1\""));
        let mut other_kind = cr("v2", "a");
        other_kind["kind"] = json!("Gadget");
        assert!(check(json!({"response": {"uid": "x", "result": {"status": "Success"}, "convertedObjects": [other_kind]}}))
            .contains("invalid kind \"Gadget\""));
        assert!(check(json!({"response": {"uid": "x", "result": {"status": "Success"}, "convertedObjects": [7]}}))
            .contains("not an object"));
    }
}
