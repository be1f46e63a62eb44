//! The horizontal pod autoscaler controller (upstream's `pkg/controller/podautoscaler`),
//! without a metrics API: each HorizontalPodAutoscaler reads its target's scale
//! subresource, scales a target outside `[minReplicas, maxReplicas]` back into bounds
//! (as upstream does before looking at metrics), and otherwise reports
//! `ScalingActive=False` with reason `FailedGetResourceMetric`, as upstream does when the
//! resource metrics API is not served.

use std::time::Duration;

use k8s_openapi::api::autoscaling::v2::{
    HorizontalPodAutoscaler, HorizontalPodAutoscalerCondition, HorizontalPodAutoscalerStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::Resource;
use serde_json::json;

use crate::workload_util::{is_not_found, Events};
use crate::ControllerError;
use rk3s_runtime::{run_controller, Action, Trigger, WorkQueue};

/// Upstream's HPA sync period.
pub const SYNC_PERIOD: Duration = Duration::from_secs(15);

/// The message upstream reports when the resource metrics API is missing.
pub fn missing_metrics_message(resource: &str) -> String {
    format!("the HPA was unable to compute the replica count: unable to get metrics for resource {resource}: unable to fetch metrics from resource metrics API: the server could not find the requested resource (get pods.metrics.k8s.io)")
}

/// The resource the HPA's first metric is about (`cpu` when none is given, as the
/// default 80 % CPU target).
pub fn first_resource(hpa: &HorizontalPodAutoscaler) -> String {
    hpa.spec
        .as_ref()
        .and_then(|s| s.metrics.as_ref())
        .and_then(|m| {
            m.iter().find_map(|m| {
                m.resource
                    .as_ref()
                    .map(|r| r.name.clone())
                    .or_else(|| m.container_resource.as_ref().map(|r| r.name.clone()))
            })
        })
        .unwrap_or_else(|| "cpu".into())
}

/// What to do with a target at `current` replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Target scaled to zero with minReplicas > 0: autoscaling is disabled.
    Disabled,
    /// Rescale into bounds: new size and upstream's reason text.
    Rescale(i32, &'static str),
    /// Within bounds: would need metrics.
    NeedMetrics,
}

/// Upstream's bounds check before metrics are consulted.
pub fn decide(current: i32, min: i32, max: i32) -> Decision {
    if current == 0 && min != 0 {
        Decision::Disabled
    } else if current > max {
        Decision::Rescale(max, "Current number of replicas above Spec.MaxReplicas")
    } else if current < min {
        Decision::Rescale(min, "Current number of replicas below Spec.MinReplicas")
    } else {
        Decision::NeedMetrics
    }
}

/// Sets a condition, keeping its transition time when the status is unchanged.
pub fn set_condition(
    conds: &mut Vec<HorizontalPodAutoscalerCondition>,
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    now: &Time,
) {
    let prev = conds.iter().position(|c| c.type_ == type_);
    let ltt = match prev.map(|i| &conds[i]) {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => Some(now.clone()),
    };
    let c = HorizontalPodAutoscalerCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_transition_time: ltt,
    };
    match prev {
        Some(i) => conds[i] = c,
        None => conds.push(c),
    }
}

fn api_resource(api_version: &str, kind: &str) -> ApiResource {
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g.to_string(), v.to_string()),
        None => (String::new(), api_version.to_string()),
    };
    let lower = kind.to_ascii_lowercase();
    let plural = if lower.ends_with('s') {
        format!("{lower}es")
    } else if let Some(stem) = lower.strip_suffix('y') {
        format!("{stem}ies")
    } else {
        format!("{lower}s")
    };
    ApiResource {
        group,
        version,
        api_version: api_version.to_string(),
        kind: kind.to_string(),
        plural,
    }
}

async fn reconcile(
    client: &kube::Client,
    events: &Events,
    hpa: &HorizontalPodAutoscaler,
) -> Result<(), ControllerError> {
    let ns = hpa.metadata.namespace.clone().unwrap_or_default();
    let name = hpa.metadata.name.clone().unwrap_or_default();
    let Some(spec) = hpa.spec.as_ref() else {
        return Ok(());
    };
    let now = Time(jiff::Timestamp::now());
    let old = hpa.status.clone().unwrap_or_default();
    let mut status = HorizontalPodAutoscalerStatus {
        observed_generation: hpa.metadata.generation,
        ..old.clone()
    };
    let mut conds = old.conditions.clone().unwrap_or_default();
    let target = &spec.scale_target_ref;
    let ar = api_resource(
        target.api_version.as_deref().unwrap_or("apps/v1"),
        &target.kind,
    );
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
    let hpa_ref = hpa.object_ref(&());
    let scale = match api.get_scale(&target.name).await {
        Ok(s) => s,
        Err(e) => {
            let msg = format!(
                "the HPA controller was unable to get the target's current scale: {}",
                err_text(&e)
            );
            if !conds
                .iter()
                .any(|c| c.type_ == "AbleToScale" && c.reason.as_deref() == Some("FailedGetScale"))
            {
                events
                    .record(&hpa_ref, true, "FailedGetScale", err_text(&e))
                    .await;
            }
            set_condition(
                &mut conds,
                "AbleToScale",
                "False",
                "FailedGetScale",
                msg,
                &now,
            );
            status.conditions = Some(conds);
            return write_status(client, &ns, &name, &old, status).await;
        }
    };
    let current = scale.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
    let min = spec.min_replicas.unwrap_or(1);
    let max = spec.max_replicas;
    status.current_replicas = Some(scale.status.as_ref().map(|s| s.replicas).unwrap_or(current));
    match decide(current, min, max) {
        Decision::Disabled => {
            status.desired_replicas = 0;
            set_condition(
                &mut conds,
                "ScalingActive",
                "False",
                "ScalingDisabled",
                "scaling is disabled since the replica count of the target is zero".into(),
                &now,
            );
        }
        Decision::Rescale(n, reason) => {
            let patch = json!({"spec": {"replicas": n}});
            match api
                .patch_scale(&target.name, &PatchParams::default(), &Patch::Merge(patch))
                .await
            {
                Ok(_) => {
                    events
                        .record(
                            &hpa_ref,
                            false,
                            "SuccessfulRescale",
                            format!("New size: {n}; reason: {reason}"),
                        )
                        .await;
                    set_condition(
                        &mut conds,
                        "AbleToScale",
                        "True",
                        "SucceededRescale",
                        format!("the HPA controller was able to update the target scale to {n}"),
                        &now,
                    );
                    let (r, m) = if n == max {
                        (
                            "TooManyReplicas",
                            "the desired replica count is more than the maximum replica count",
                        )
                    } else {
                        (
                            "TooFewReplicas",
                            "the desired replica count is less than the minimum replica count",
                        )
                    };
                    set_condition(&mut conds, "ScalingLimited", "True", r, m.into(), &now);
                    status.desired_replicas = n;
                    status.last_scale_time = Some(now.clone());
                }
                Err(e) => {
                    events
                        .record(
                            &hpa_ref,
                            true,
                            "FailedRescale",
                            format!("New size: {n}; reason: {reason}; error: {}", err_text(&e)),
                        )
                        .await;
                    set_condition(
                        &mut conds,
                        "AbleToScale",
                        "False",
                        "FailedUpdateScale",
                        format!(
                            "the HPA controller was unable to update the target scale: {}",
                            err_text(&e)
                        ),
                        &now,
                    );
                }
            }
        }
        Decision::NeedMetrics => {
            let resource = first_resource(hpa);
            let msg = missing_metrics_message(&resource);
            let first_time = !conds.iter().any(|c| {
                c.type_ == "ScalingActive" && c.reason.as_deref() == Some("FailedGetResourceMetric")
            });
            set_condition(
                &mut conds,
                "AbleToScale",
                "True",
                "SucceededGetScale",
                "the HPA controller was able to get the target's current scale".into(),
                &now,
            );
            set_condition(
                &mut conds,
                "ScalingActive",
                "False",
                "FailedGetResourceMetric",
                msg.clone(),
                &now,
            );
            status.desired_replicas = current;
            if first_time {
                let detail = msg
                    .trim_start_matches("the HPA was unable to compute the replica count: ")
                    .to_string();
                events
                    .record(
                        &hpa_ref,
                        true,
                        "FailedGetResourceMetric",
                        format!("failed to get {resource} utilization: {detail}"),
                    )
                    .await;
                events.record(&hpa_ref, true, "FailedComputeMetricsReplicas", format!("invalid metrics (1 invalid out of 1), first error is: failed to get {resource} resource metric value: failed to get {resource} utilization: {detail}")).await;
            }
        }
    }
    status.conditions = Some(conds);
    write_status(client, &ns, &name, &old, status).await
}

fn err_text(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message.clone(),
        other => other.to_string(),
    }
}

async fn write_status(
    client: &kube::Client,
    ns: &str,
    name: &str,
    old: &HorizontalPodAutoscalerStatus,
    new: HorizontalPodAutoscalerStatus,
) -> Result<(), ControllerError> {
    if *old == new {
        return Ok(());
    }
    let api: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), ns);
    match api
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": new})),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn sync(
    client: &kube::Client,
    events: &Events,
    hpas: &Store<HorizontalPodAutoscaler>,
) -> Result<Option<Duration>, ControllerError> {
    let mut result = Ok(None);
    for hpa in hpas.state() {
        if let Err(e) = reconcile(client, events, &hpa).await {
            result = Err(e);
        }
    }
    result
}

/// Runs the HPA controller forever.
pub async fn run(
    client: kube::Client,
    informers: crate::informers::SharedInformers,
) -> Result<(), ControllerError> {
    let changes = Trigger::changes(&informers, |_: &HorizontalPodAutoscaler| Some(()));
    let hpas = informers.store::<HorizontalPodAutoscaler>().await;
    let events = Events::new(client.clone(), "horizontal-pod-autoscaler");
    // One key: a pass over every HPA, on a change or every sync period.
    let triggers = vec![changes, Trigger::every(SYNC_PERIOD, ())];
    run_controller("hpa", 1, WorkQueue::new(), triggers, move |()| {
        let (client, events, hpas) = (client.clone(), events.clone(), hpas.clone());
        async move {
            sync(&client, &events, &hpas)
                .await
                .map(Action::requeue_after)
        }
    })
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_enforced_before_metrics() {
        assert_eq!(decide(0, 1, 5), Decision::Disabled);
        assert_eq!(decide(0, 0, 5), Decision::NeedMetrics);
        assert_eq!(
            decide(7, 1, 5),
            Decision::Rescale(5, "Current number of replicas above Spec.MaxReplicas")
        );
        assert_eq!(
            decide(1, 2, 5),
            Decision::Rescale(2, "Current number of replicas below Spec.MinReplicas")
        );
        assert_eq!(decide(3, 2, 5), Decision::NeedMetrics);
    }

    #[test]
    fn conditions_keep_transition_time() {
        let t1 = Time(jiff::Timestamp::from_second(1_700_000_000).unwrap());
        let t2 = Time(jiff::Timestamp::from_second(1_700_000_100).unwrap());
        let mut c = Vec::new();
        set_condition(
            &mut c,
            "ScalingActive",
            "False",
            "FailedGetResourceMetric",
            missing_metrics_message("cpu"),
            &t1,
        );
        set_condition(
            &mut c,
            "ScalingActive",
            "False",
            "FailedGetResourceMetric",
            missing_metrics_message("cpu"),
            &t2,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].last_transition_time, Some(t1));
        set_condition(
            &mut c,
            "ScalingActive",
            "True",
            "ValidMetricFound",
            "x".into(),
            &t2,
        );
        assert_eq!(c[0].last_transition_time, Some(t2));
        assert!(missing_metrics_message("cpu").ends_with("(get pods.metrics.k8s.io)"));
    }

    #[test]
    fn scale_target_resources() {
        let a = api_resource("apps/v1", "Deployment");
        assert_eq!(
            (a.group.as_str(), a.version.as_str(), a.plural.as_str()),
            ("apps", "v1", "deployments")
        );
        assert_eq!(
            api_resource("v1", "ReplicationController").plural,
            "replicationcontrollers"
        );
        assert_eq!(
            api_resource("apps/v1", "StatefulSet").plural,
            "statefulsets"
        );
    }
}
