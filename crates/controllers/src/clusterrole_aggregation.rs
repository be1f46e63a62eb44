//! The ClusterRole aggregation controller (upstream's
//! `pkg/controller/clusterroleaggregation`): a ClusterRole with an `aggregationRule` gets
//! as `rules` the union of the rules of the ClusterRoles its `clusterRoleSelectors`
//! select, kept up to date as those change (so `admin`, `edit` and `view` show the
//! aggregated rules, as upstream).

use std::time::Duration;

use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::Store;
use serde_json::{json, Value};

use crate::workload_util::ignore_not_found;
use crate::ControllerError;
use rk3s_runtime::{run_controller, Action, Trigger, WorkQueue};

/// The aggregated roles whose rules must change: `(name, new rules)`, given all
/// ClusterRoles as JSON.
pub fn plan(roles: &[Value]) -> Vec<(String, Value)> {
    let aggregated = rk3s_auth::aggregate_cluster_roles(roles);
    roles
        .iter()
        .zip(aggregated)
        .filter(|(old, _)| old.get("aggregationRule").is_some_and(|r| !r.is_null()))
        .filter_map(|(old, new)| {
            let new_rules = new.get("rules").cloned().unwrap_or_else(|| json!([]));
            let old_rules = old
                .get("rules")
                .cloned()
                .filter(|r| !r.is_null())
                .unwrap_or_else(|| json!([]));
            (new_rules != old_rules).then(|| {
                (
                    old["metadata"]["name"].as_str().unwrap_or("").to_string(),
                    new_rules,
                )
            })
        })
        .collect()
}

async fn sync(
    api: &Api<ClusterRole>,
    roles: &Store<ClusterRole>,
) -> Result<Option<Duration>, ControllerError> {
    let values: Vec<Value> = roles
        .state()
        .iter()
        .filter_map(|r| serde_json::to_value(r.as_ref()).ok())
        .collect();
    for (name, rules) in plan(&values) {
        tracing::debug!(role = %name, "updating aggregated ClusterRole rules");
        ignore_not_found(
            api.patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"rules": rules})),
            )
            .await
            .map(|_| ()),
        )?;
    }
    Ok(None)
}

/// Runs the ClusterRole aggregation controller forever.
pub async fn run(
    client: kube::Client,
    informers: crate::informers::SharedInformers,
) -> Result<(), ControllerError> {
    // The shared ClusterRole informer; every change wakes the loop.
    let changes = Trigger::changes(&informers, |_: &ClusterRole| Some(()));
    let roles = informers.store::<ClusterRole>().await;
    let api: Api<ClusterRole> = Api::all(client.clone());
    // One key: a pass over every aggregated role, on a change or every minute.
    let triggers = vec![changes, Trigger::every(Duration::from_secs(60), ())];
    run_controller(
        "clusterrole-aggregation",
        1,
        WorkQueue::new(),
        triggers,
        move |()| {
            let (api, roles) = (api.clone(), roles.clone());
            async move { sync(&api, &roles).await.map(Action::requeue_after) }
        },
    )
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(name: &str, labels: Value, rules: Value, agg: Option<Value>) -> Value {
        let mut v = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": name, "labels": labels}, "rules": rules});
        if let Some(a) = agg {
            v["aggregationRule"] = a;
        }
        v
    }

    #[test]
    fn aggregated_rules_are_the_union_of_selected_roles() {
        let sel = json!({"clusterRoleSelectors": [{"matchLabels": {"agg": "yes"}}]});
        let roles = vec![
            role("parent", json!({}), json!([]), Some(sel.clone())),
            role(
                "a",
                json!({"agg": "yes"}),
                json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]),
                None,
            ),
            role(
                "b",
                json!({"agg": "yes"}),
                json!([{"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["list"]}]),
                None,
            ),
            role(
                "c",
                json!({"agg": "no"}),
                json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]),
                None,
            ),
        ];
        let p = plan(&roles);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].0, "parent");
        let text = p[0].1.to_string();
        assert!(
            text.contains("pods") && text.contains("deployments") && !text.contains("secrets"),
            "{text}"
        );
        // Already up to date: nothing to do.
        let mut roles2 = roles.clone();
        roles2[0]["rules"] = p[0].1.clone();
        assert!(plan(&roles2).is_empty());
    }
}
