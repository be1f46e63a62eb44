//! `componentstatuses` (core/v1 `ComponentStatus`, deprecated since 1.19 but still
//! served by 1.33 and used by k3s users' health scripts), as upstream's REST storage:
//! one entry per control-plane component, computed on each request, never stored.
//!
//! Entries and names are upstream's: `scheduler`, `controller-manager` and `etcd-0` (the
//! datastore, SQLite here, as k3s reports its kine datastore). Each has one condition
//! `Healthy` whose status is `True`, or `False` with a message (or an error) saying why.
//! rk3s's scheduler and controller manager run in this process and are leader-elected
//! on the Leases `kube-system/kube-scheduler` and `kube-system/kube-controller-manager`:
//! a component is healthy while its Lease has a holder that renewed it within its
//! duration. The datastore is healthy when a read of it succeeds. Every answer carries
//! upstream's deprecation warning; a name that is no component is upstream's plain 500
//! `Component not found: <name>`; label and field selectors filter as upstream's.

use std::time::Duration;

use rk3s_api::ApiError;
use serde_json::{json, Value};

use crate::body::{self, Response};
use crate::output::{partial_metadata, Output};
use crate::rest::{with_warnings, Call, Filter};
use crate::state::Inner;

/// The `Warning` upstream sends with every ComponentStatus answer.
pub const DEPRECATION: &str = "v1 ComponentStatus is deprecated in v1.19+";

/// The components, in the order they are listed, and the Lease each is elected on
/// (`None`: the datastore).
pub const COMPONENTS: &[(&str, Option<&str>)] = &[
    ("scheduler", Some("kube-scheduler")),
    ("controller-manager", Some("kube-controller-manager")),
    ("etcd-0", None),
];

/// How long the datastore read may take (upstream's probe timeout).
const STORE_PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// A `ComponentStatus` with one `Healthy` condition.
fn status(name: &str, healthy: bool, message: &str, error: &str) -> Value {
    let mut condition =
        json!({"type": "Healthy", "status": if healthy { "True" } else { "False" }});
    if !message.is_empty() {
        condition["message"] = json!(message);
    }
    if !error.is_empty() {
        condition["error"] = json!(error);
    }
    json!({
        "kind": "ComponentStatus",
        "apiVersion": "v1",
        "metadata": {"name": name, "creationTimestamp": null},
        "conditions": [condition],
    })
}

/// The health of a component elected on Lease `kube-system/<lease_name>` (`lease`: the
/// Lease object, if it exists) at `now`.
pub fn lease_status(
    name: &str,
    lease_name: &str,
    lease: Option<&Value>,
    now: jiff::Timestamp,
) -> Value {
    let what = format!("Lease kube-system/{lease_name}");
    let Some(lease) = lease else {
        return status(
            name,
            false,
            &format!("{what} not found: no {lease_name} has been elected"),
            "",
        );
    };
    let holder = lease
        .pointer("/spec/holderIdentity")
        .and_then(Value::as_str)
        .unwrap_or("");
    if holder.is_empty() {
        return status(name, false, &format!("{what} has no holder"), "");
    }
    let duration = lease
        .pointer("/spec/leaseDurationSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(15);
    let renewed = lease
        .pointer("/spec/renewTime")
        .and_then(Value::as_str)
        .and_then(|t| t.parse::<jiff::Timestamp>().ok());
    match renewed {
        Some(t) if now.as_second() - t.as_second() <= duration => status(name, true, "ok", ""),
        Some(t) => status(
            name,
            false,
            &format!("{what} held by {holder:?} was last renewed at {}, more than its duration of {duration}s ago", t.strftime("%Y-%m-%dT%H:%M:%SZ")),
            "",
        ),
        None => status(name, false, &format!("{what} held by {holder:?} has never been renewed"), ""),
    }
}

/// The health of the datastore: a read of it.
async fn store_status(inner: &Inner, name: &str) -> Value {
    match tokio::time::timeout(
        STORE_PROBE_TIMEOUT,
        inner.store.get("/registry/core/namespaces/default"),
    )
    .await
    {
        Ok(Ok(_)) => status(name, true, "ok", ""),
        Ok(Err(e)) => status(name, false, "", &e.to_string()),
        Err(_) => status(
            name,
            false,
            "",
            &format!(
                "datastore read timed out after {}s",
                STORE_PROBE_TIMEOUT.as_secs()
            ),
        ),
    }
}

/// The status of one component, `None` for a name that is none.
pub async fn component(inner: &Inner, name: &str) -> Option<Value> {
    let (_, lease) = COMPONENTS.iter().find(|(n, _)| *n == name)?;
    Some(match lease {
        Some(lease_name) => {
            let cached = inner
                .cache
                .get(&format!(
                    "/registry/coordination.k8s.io/leases/kube-system/{lease_name}"
                ))
                .map(|c| c.object());
            lease_status(name, lease_name, cached.as_deref(), jiff::Timestamp::now())
        }
        None => store_status(inner, name).await,
    })
}

/// Serves GET and LIST of `componentstatuses`.
pub async fn serve(call: &Call<'_>) -> Response {
    let response = match call.info.verb.as_str() {
        "get" => get(call).await,
        "list" => list(call).await,
        _ => Err(ApiError::method_not_allowed(
            "the server does not allow this method on the requested resource",
        )),
    };
    let response = response.unwrap_or_else(|e| body::error(&e));
    with_warnings(response, &[DEPRECATION.to_string()])
}

async fn get(call: &Call<'_>) -> Result<Response, ApiError> {
    let name = call.info.name.as_deref().unwrap_or("");
    match component(call.inner, name).await {
        Some(obj) => Ok(call.render_one(obj, 200)),
        // upstream answers with a plain error: 500, no reason.
        None => Err(ApiError::new(
            500,
            "",
            format!("Component not found: {name}"),
        )),
    }
}

async fn list(call: &Call<'_>) -> Result<Response, ApiError> {
    let filter = Filter::from_query(&call.res, &call.query)?;
    let mut items = Vec::new();
    for (name, _) in COMPONENTS {
        if let Some(obj) = component(call.inner, name).await {
            if filter.matches(&obj) {
                items.push(obj);
            }
        }
    }
    Ok(match &call.output {
        Output::Json => {
            // As upstream's list: items without kind/apiVersion, list metadata empty.
            for i in &mut items {
                if let Some(o) = i.as_object_mut() {
                    o.remove("kind");
                    o.remove("apiVersion");
                }
            }
            body::json(
                200,
                &json!({"kind": "ComponentStatusList", "apiVersion": "v1", "metadata": {}, "items": items}),
            )
        }
        Output::Table(inc) => {
            let mut t = rk3s_printers::table(
                "",
                "ComponentStatus",
                &items,
                "",
                None,
                *inc,
                jiff::Timestamp::now(),
            );
            if let Some(m) = t.get_mut("metadata").and_then(Value::as_object_mut) {
                m.remove("resourceVersion");
            }
            body::json(200, &t)
        }
        Output::PartialMetadata => body::json(
            200,
            &json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": {}, "items": items.iter().map(partial_metadata).collect::<Vec<_>>()}),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> jiff::Timestamp {
        s.parse().expect("timestamp")
    }

    fn lease(holder: &str, renewed: &str, secs: i64) -> Value {
        json!({"metadata": {"name": "kube-scheduler", "namespace": "kube-system"}, "spec": {"holderIdentity": holder, "renewTime": renewed, "leaseDurationSeconds": secs}})
    }

    #[test]
    fn a_component_is_healthy_while_its_lease_is_renewed() {
        let now = at("2025-01-01T00:00:30Z");
        let ok = lease_status(
            "scheduler",
            "kube-scheduler",
            Some(&lease("node-1", "2025-01-01T00:00:20.123456Z", 15)),
            now,
        );
        assert_eq!(
            ok,
            json!({"kind": "ComponentStatus", "apiVersion": "v1", "metadata": {"name": "scheduler", "creationTimestamp": null},
            "conditions": [{"type": "Healthy", "status": "True", "message": "ok"}]})
        );
        let stale = lease_status(
            "scheduler",
            "kube-scheduler",
            Some(&lease("node-1", "2025-01-01T00:00:10Z", 15)),
            now,
        );
        assert_eq!(stale["conditions"][0]["status"], "False");
        assert_eq!(
            stale["conditions"][0]["message"],
            "Lease kube-system/kube-scheduler held by \"node-1\" was last renewed at 2025-01-01T00:00:10Z, more than its duration of 15s ago"
        );
        assert!(stale["conditions"][0].get("error").is_none());
        let free = lease_status(
            "scheduler",
            "kube-scheduler",
            Some(&lease("", "2025-01-01T00:00:29Z", 15)),
            now,
        );
        assert_eq!(
            free["conditions"][0]["message"],
            "Lease kube-system/kube-scheduler has no holder"
        );
        let missing = lease_status("controller-manager", "kube-controller-manager", None, now);
        assert_eq!(missing["conditions"][0]["status"], "False");
        assert_eq!(missing["metadata"]["name"], "controller-manager");
        let never = lease_status(
            "scheduler",
            "kube-scheduler",
            Some(&json!({"spec": {"holderIdentity": "x"}})),
            now,
        );
        assert_eq!(
            never["conditions"][0]["message"],
            "Lease kube-system/kube-scheduler held by \"x\" has never been renewed"
        );
    }

    #[test]
    fn names_are_upstreams() {
        let names: Vec<&str> = COMPONENTS.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, vec!["scheduler", "controller-manager", "etcd-0"]);
    }
}
