//! API errors rendered as `meta.k8s.io/v1` `Status` objects, with upstream's codes,
//! reasons and message shapes.

use serde_json::{json, Value};

use crate::ResourceInfo;

/// One cause in `Status.details.causes` (usually a field error).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cause {
    /// Machine reason, e.g. `FieldValueRequired`, `FieldValueInvalid`.
    pub reason: String,
    /// Human message, e.g. `Required value`.
    pub message: String,
    /// The field path, e.g. `spec.template.spec.containers[0].image`.
    pub field: String,
}

/// An error answer of the API: HTTP code, `Status.reason`, message and details.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// `Status.reason`, e.g. `NotFound`, `AlreadyExists`, `Conflict`, `Invalid`.
    pub reason: String,
    /// `Status.message`.
    pub message: String,
    /// `details.name`.
    pub name: Option<String>,
    /// `details.group`.
    pub group: Option<String>,
    /// `details.kind` (the resource's plural for most errors, as upstream).
    pub kind: Option<String>,
    /// `details.causes`.
    pub causes: Vec<Cause>,
    /// `details.retryAfterSeconds`.
    pub retry_after_seconds: Option<u32>,
}

impl ApiError {
    /// A bare error with code, reason and message.
    pub fn new(code: u16, reason: &str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason: reason.to_string(),
            message: message.into(),
            name: None,
            group: None,
            kind: None,
            causes: Vec::new(),
            retry_after_seconds: None,
        }
    }

    fn with_resource(mut self, r: &ResourceInfo, name: &str) -> Self {
        self.name = Some(name.to_string());
        self.group = Some(r.group.clone());
        self.kind = Some(r.plural.clone());
        self
    }

    /// 404: `deployments.apps "web" not found`.
    pub fn not_found(r: &ResourceInfo, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{}\" not found", r.qualified_plural(), name),
        )
        .with_resource(r, name)
    }

    /// 404 for a resource given by plural and group (e.g. a missing namespace).
    pub fn not_found_named(plural: &str, group: &str, name: &str) -> Self {
        let q = if group.is_empty() {
            plural.to_string()
        } else {
            format!("{plural}.{group}")
        };
        let mut e = Self::new(404, "NotFound", format!("{q} \"{name}\" not found"));
        e.name = Some(name.to_string());
        e.group = Some(group.to_string());
        e.kind = Some(plural.to_string());
        e
    }

    /// 409: `configmaps "x" already exists`.
    pub fn already_exists(r: &ResourceInfo, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{}\" already exists", r.qualified_plural(), name),
        )
        .with_resource(r, name)
    }

    /// 409 on a stale resourceVersion, with upstream's message.
    pub fn conflict(r: &ResourceInfo, name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{}\": the object has been modified; please apply your changes to the latest version and try again",
                r.qualified_plural(),
                name
            ),
        )
        .with_resource(r, name)
    }

    /// 409 with a custom message (e.g. a terminating namespace).
    pub fn conflict_msg(r: &ResourceInfo, name: &str, msg: impl Into<String>) -> Self {
        Self::new(409, "Conflict", msg).with_resource(r, name)
    }

    /// 422: `Deployment.apps "web" is invalid: [field: Required value, ...]`.
    /// `kind` is the Kind (not the plural), as upstream.
    pub fn invalid(r: &ResourceInfo, name: &str, causes: Vec<Cause>) -> Self {
        let gk = if r.group.is_empty() {
            r.kind.clone()
        } else {
            format!("{}.{}", r.kind, r.group)
        };
        let parts: Vec<String> = causes
            .iter()
            .map(|c| {
                if c.field.is_empty() {
                    c.message.clone()
                } else {
                    format!("{}: {}", c.field, c.message)
                }
            })
            .collect();
        let list = if parts.len() == 1 {
            parts[0].clone()
        } else {
            format!("[{}]", parts.join(", "))
        };
        let mut e = Self::new(
            422,
            "Invalid",
            format!("{gk} \"{name}\" is invalid: {list}"),
        );
        e.name = Some(name.to_string());
        e.group = Some(r.group.clone());
        e.kind = Some(r.kind.clone());
        e.causes = causes;
        e
    }

    /// 400 BadRequest.
    pub fn bad_request(msg: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", msg)
    }

    /// 401 Unauthorized.
    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    /// 403 Forbidden with upstream's message shape.
    pub fn forbidden(msg: impl Into<String>) -> Self {
        Self::new(403, "Forbidden", msg)
    }

    /// 405 MethodNotAllowed.
    pub fn method_not_allowed(msg: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", msg)
    }

    /// 406 NotAcceptable.
    pub fn not_acceptable(msg: impl Into<String>) -> Self {
        Self::new(406, "NotAcceptable", msg)
    }

    /// 415 UnsupportedMediaType.
    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(415, "UnsupportedMediaType", format!("the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf (got {content_type})"))
    }

    /// 410 Gone / Expired for a compacted resourceVersion.
    pub fn gone(msg: impl Into<String>) -> Self {
        Self::new(410, "Expired", msg)
    }

    /// 500 InternalError.
    pub fn internal(msg: impl Into<String>) -> Self {
        Self::new(
            500,
            "InternalError",
            format!("Internal error occurred: {}", msg.into()),
        )
    }

    /// 504 Timeout.
    pub fn timeout(msg: impl Into<String>) -> Self {
        Self::new(504, "Timeout", msg)
    }

    /// The `Status` object (JSON) for this error.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        let mut details = serde_json::Map::new();
        if let Some(n) = &self.name {
            details.insert("name".into(), json!(n));
        }
        if let Some(g) = &self.group {
            if !g.is_empty() {
                details.insert("group".into(), json!(g));
            }
        }
        if let Some(k) = &self.kind {
            details.insert("kind".into(), json!(k));
        }
        if !self.causes.is_empty() {
            let causes: Vec<Value> = self
                .causes
                .iter()
                .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
                .collect();
            details.insert("causes".into(), Value::Array(causes));
        }
        if let Some(s) = self.retry_after_seconds {
            details.insert("retryAfterSeconds".into(), json!(s));
        }
        if !details.is_empty() {
            status["details"] = Value::Object(details);
        }
        if self.reason.is_empty() {
            if let Some(m) = status.as_object_mut() {
                m.remove("reason");
            }
        }
        status
    }
}

/// A success `Status` (as returned by some deletes).
pub fn success_status(details: Option<Value>) -> Value {
    let mut s = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"});
    if let Some(d) = details {
        s["details"] = d;
    }
    s
}

impl ApiError {
    /// 422 about a request parameter (e.g. watch options), as upstream's
    /// `ListOptions.meta.k8s.io "" is invalid: field: Forbidden: message`.
    pub fn invalid_simple(_param: &str, field: &str, message: &str) -> Self {
        let mut e = Self::new(
            422,
            "Invalid",
            format!("ListOptions.meta.k8s.io \"\" is invalid: {field}: Forbidden: {message}"),
        );
        e.group = Some("meta.k8s.io".into());
        e.kind = Some("ListOptions".into());
        e.causes = vec![Cause {
            reason: "FieldValueForbidden".into(),
            message: format!("Forbidden: {message}"),
            field: field.into(),
        }];
        e
    }
}
