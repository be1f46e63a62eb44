//! The horizontal pod autoscaler controller (upstream's `pkg/controller/podautoscaler`).
//! Every 15 s (and on every HPA change) each HorizontalPodAutoscaler reads its target's
//! scale subresource; a target outside `[minReplicas, maxReplicas]` is brought back into
//! bounds first; otherwise each metric proposes a replica count from the resource
//! metrics API (`pods.metrics.k8s.io`, read through the API like any client, so any
//! server of that API works) and the pods matching the scale's selector (the shared Pod
//! informer): `Resource` and `ContainerResource` metrics with utilization (usage /
//! requests of ready pods, tolerance 0.1, missing and unready pods as upstream's replica
//! calculator) or average-value targets. The highest proposal is then normalized as
//! upstream: without `spec.behavior`, 5-minute scale-down stabilization and a scale-up
//! limit of max(2 x current, 4); with it, stabilization windows and scaling policies over
//! the rescales remembered per HPA. Status (`currentMetrics`, desired/current replicas,
//! conditions AbleToScale/ScalingActive/ScalingLimited) and Events
//! (`SuccessfulRescale`, `FailedGetResourceMetric`, `FailedComputeMetricsReplicas`, ...)
//! carry upstream's reasons and messages. Custom and external metrics are not served by
//! rk3s: such metrics are reported invalid, as upstream does without those APIs.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::autoscaling::v2::{
    ContainerResourceMetricStatus, HPAScalingPolicy, HPAScalingRules, HorizontalPodAutoscaler,
    HorizontalPodAutoscalerBehavior, HorizontalPodAutoscalerCondition,
    HorizontalPodAutoscalerStatus, MetricSpec, MetricStatus, MetricTarget, MetricValueStatus,
    ResourceMetricSource, ResourceMetricStatus,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
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

/// What to do with a target at `current` replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Target scaled to zero with minReplicas > 0: autoscaling is disabled.
    Disabled,
    /// Rescale into bounds: new size and upstream's reason text.
    Rescale(i32, &'static str),
    /// Within bounds: the metrics decide.
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

/// Upstream's `--horizontal-pod-autoscaler-tolerance`: no scaling while the usage ratio
/// is within 10 % of 1.
pub const TOLERANCE: f64 = 0.1;
/// Upstream's `--horizontal-pod-autoscaler-cpu-initialization-period`.
pub const CPU_INITIALIZATION_PERIOD: Duration = Duration::from_secs(300);
/// Upstream's `--horizontal-pod-autoscaler-initial-readiness-delay`.
pub const DELAY_OF_INITIAL_READINESS_STATUS: Duration = Duration::from_secs(30);
/// Upstream's `--horizontal-pod-autoscaler-downscale-stabilization`.
pub const DOWNSCALE_STABILIZATION_WINDOW: Duration = Duration::from_secs(300);

/// One pod's figure for a metric (milli-units: milli-cores, milli-bytes), as upstream's
/// metrics client reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodMetric {
    /// The value in milli-units.
    pub value: i64,
    /// When it was measured.
    pub timestamp: jiff::Timestamp,
    /// Over which window.
    pub window: Duration,
}

/// Pod name -> its figure.
pub type PodMetricsInfo = BTreeMap<String, PodMetric>;

/// What the replica calculator reads of a Pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodFacts {
    /// Pod name.
    pub name: String,
    /// Being deleted.
    pub deleted: bool,
    /// `status.phase`.
    pub phase: String,
    /// The `Ready` condition: status and lastTransitionTime.
    pub ready: Option<(String, jiff::Timestamp)>,
    /// `status.startTime`.
    pub start_time: Option<jiff::Timestamp>,
    /// Sum of the requests (milli-units) of the counted containers, or upstream's error.
    pub requests: Result<i64, String>,
}

impl PodFacts {
    /// The facts of `pod` for `resource`, counting only `container` when given (regular
    /// containers and restartable init containers, as upstream).
    pub fn from_pod(pod: &Pod, resource: &str, container: Option<&str>) -> PodFacts {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let status = pod.status.as_ref();
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
            .map(|c| {
                (
                    c.status.clone(),
                    c.last_transition_time
                        .as_ref()
                        .map(|t| t.0)
                        .unwrap_or(jiff::Timestamp::UNIX_EPOCH),
                )
            });
        let mut requests = Ok(0i64);
        if let Some(spec) = pod.spec.as_ref() {
            let sidecars = spec
                .init_containers
                .iter()
                .flatten()
                .filter(|c| c.restart_policy.as_deref() == Some("Always"));
            for c in spec.containers.iter().chain(sidecars) {
                if container.is_some_and(|want| want != c.name) {
                    continue;
                }
                let req = c
                    .resources
                    .as_ref()
                    .and_then(|r| r.requests.as_ref())
                    .and_then(|r| r.get(resource))
                    .and_then(|q| rk3s_core::Quantity::try_from(q).ok());
                match (req, &mut requests) {
                    (Some(q), Ok(sum)) => *sum += q.milli_value_i64(),
                    (None, Ok(_)) => {
                        requests = Err(format!(
                            "missing request for {resource} in container {} of Pod {name}",
                            c.name
                        ))
                    }
                    _ => {}
                }
            }
        }
        PodFacts {
            deleted: pod.metadata.deletion_timestamp.is_some(),
            phase: status.and_then(|s| s.phase.clone()).unwrap_or_default(),
            ready,
            start_time: status.and_then(|s| s.start_time.as_ref()).map(|t| t.0),
            requests,
            name,
        }
    }
}

/// How upstream's `groupPods` sorts pods: ready ones counted, unready (pending, or CPU
/// figures taken too soon after start/readiness), missing (no figure), ignored (deleted
/// or failed).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PodGroups {
    /// Pods counted as ready.
    pub ready: usize,
    /// Pods unready.
    pub unready: BTreeSet<String>,
    /// Pods without a figure.
    pub missing: BTreeSet<String>,
    /// Deleted or failed pods.
    pub ignored: BTreeSet<String>,
}

/// Upstream's `groupPods`.
pub fn group_pods(
    pods: &[PodFacts],
    metrics: &PodMetricsInfo,
    resource: &str,
    now: jiff::Timestamp,
) -> PodGroups {
    let mut g = PodGroups::default();
    let add = |t: jiff::Timestamp, d: Duration| {
        t.checked_add(jiff::SignedDuration::try_from(d).unwrap_or(jiff::SignedDuration::ZERO))
            .unwrap_or(t)
    };
    for p in pods {
        if p.deleted || p.phase == "Failed" {
            g.ignored.insert(p.name.clone());
            continue;
        }
        if p.phase == "Pending" {
            g.unready.insert(p.name.clone());
            continue;
        }
        let Some(m) = metrics.get(&p.name) else {
            g.missing.insert(p.name.clone());
            continue;
        };
        if resource == "cpu" {
            let unready = match (&p.ready, p.start_time) {
                (Some((status, ltt)), Some(start)) => {
                    if add(start, CPU_INITIALIZATION_PERIOD) > now {
                        status == "False" || m.timestamp < add(*ltt, m.window)
                    } else {
                        status == "False" && add(start, DELAY_OF_INITIAL_READINESS_STATUS) > *ltt
                    }
                }
                _ => true,
            };
            if unready {
                g.unready.insert(p.name.clone());
                continue;
            }
        }
        g.ready += 1;
    }
    g
}

/// Upstream's `GetResourceUtilizationRatio`: (usage ratio, utilization %, average value).
pub fn utilization_ratio(
    metrics: &PodMetricsInfo,
    requests: &BTreeMap<String, i64>,
    target_utilization: i32,
) -> Result<(f64, i32, i64), String> {
    let (mut total, mut requested, mut n) = (0i64, 0i64, 0i64);
    for (pod, m) in metrics {
        let Some(r) = requests.get(pod) else {
            continue;
        };
        total += m.value;
        requested += r;
        n += 1;
    }
    if requested == 0 {
        return Err("no metrics returned matched known pods".into());
    }
    let utilization = i32::try_from(total * 100 / requested).unwrap_or(i32::MAX);
    Ok((
        f64::from(utilization) / f64::from(target_utilization.max(1)),
        utilization,
        total / n.max(1),
    ))
}

/// A replica proposal for one metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proposal {
    /// Replicas wanted.
    pub replicas: i32,
    /// Current utilization in percent of the requests (utilization targets).
    pub utilization: Option<i32>,
    /// Current average value, milli-units.
    pub average: i64,
}

/// Upstream's shortcut shared by both replica calculations: with no missing pod and no
/// unready pod holding back a scale-up, the usage ratio alone decides (no change within
/// the tolerance). `None` when missing or unready pods must be accounted for first.
fn from_ratio_alone(groups: &PodGroups, ratio: f64, keep: Proposal) -> Option<Proposal> {
    let scale_up_with_unready = !groups.unready.is_empty() && ratio > 1.0;
    if scale_up_with_unready || !groups.missing.is_empty() {
        return None;
    }
    if (1.0 - ratio).abs() <= TOLERANCE {
        return Some(keep);
    }
    Some(Proposal {
        replicas: ceil_i32(ratio * groups.ready as f64),
        ..keep
    })
}

fn ceil_i32(x: f64) -> i32 {
    let c = x.ceil();
    if c >= f64::from(i32::MAX) {
        i32::MAX
    } else {
        c as i32
    }
}

/// Upstream's `GetResourceReplicas`: the replicas for a utilization target of `resource`
/// from the pods' figures and requests.
pub fn resource_replicas(
    current: i32,
    target_utilization: i32,
    resource: &str,
    pods: &[PodFacts],
    mut metrics: PodMetricsInfo,
    now: jiff::Timestamp,
) -> Result<Proposal, String> {
    if pods.is_empty() {
        return Err("no pods returned by selector while calculating replica count".into());
    }
    let groups = group_pods(pods, &metrics, resource, now);
    for p in groups.ignored.iter().chain(groups.unready.iter()) {
        metrics.remove(p);
    }
    let mut requests = BTreeMap::new();
    for p in pods {
        requests.insert(p.name.clone(), p.requests.clone()?);
    }
    if metrics.is_empty() {
        return Err("did not receive metrics for targeted pods (pods might be unready)".into());
    }
    let (ratio, utilization, average) = utilization_ratio(&metrics, &requests, target_utilization)?;
    let keep = Proposal {
        replicas: current,
        utilization: Some(utilization),
        average,
    };
    let scale_up_with_unready = !groups.unready.is_empty() && ratio > 1.0;
    if let Some(p) = from_ratio_alone(&groups, ratio, keep) {
        return Ok(p);
    }
    let at = |value| PodMetric {
        value,
        timestamp: now,
        window: Duration::ZERO,
    };
    if ratio < 1.0 {
        // Scaling down: missing pods count as using their whole request (or the target,
        // when it is above 100 %).
        let fallback = i64::from(target_utilization.max(100));
        for p in &groups.missing {
            let r = requests.get(p).copied().unwrap_or(0);
            metrics.insert(p.clone(), at(r * fallback / 100));
        }
    } else if ratio > 1.0 {
        for p in &groups.missing {
            metrics.insert(p.clone(), at(0));
        }
    }
    if scale_up_with_unready {
        for p in &groups.unready {
            metrics.insert(p.clone(), at(0));
        }
    }
    let (new_ratio, _, _) = utilization_ratio(&metrics, &requests, target_utilization)?;
    if (1.0 - new_ratio).abs() <= TOLERANCE
        || (ratio < 1.0 && new_ratio > 1.0)
        || (ratio > 1.0 && new_ratio < 1.0)
    {
        return Ok(keep);
    }
    let replicas = ceil_i32(new_ratio * metrics.len() as f64);
    if (new_ratio < 1.0 && replicas > current) || (new_ratio > 1.0 && replicas < current) {
        return Ok(keep);
    }
    Ok(Proposal { replicas, ..keep })
}

/// Upstream's `calcPlainMetricReplicas` (an `AverageValue` target, milli-units).
pub fn average_value_replicas(
    current: i32,
    target_average: i64,
    resource: &str,
    pods: &[PodFacts],
    mut metrics: PodMetricsInfo,
    now: jiff::Timestamp,
) -> Result<Proposal, String> {
    if pods.is_empty() {
        return Err("no pods returned by selector while calculating replica count".into());
    }
    let groups = group_pods(pods, &metrics, resource, now);
    for p in groups.ignored.iter().chain(groups.unready.iter()) {
        metrics.remove(p);
    }
    if metrics.is_empty() {
        return Err("did not receive metrics for targeted pods (pods might be unready)".into());
    }
    let usage = |m: &PodMetricsInfo| {
        let total: i64 = m.values().map(|p| p.value).sum();
        let avg = total / (m.len().max(1) as i64);
        (avg as f64 / target_average.max(1) as f64, avg)
    };
    let (ratio, average) = usage(&metrics);
    let keep = Proposal {
        replicas: current,
        utilization: None,
        average,
    };
    let scale_up_with_unready = !groups.unready.is_empty() && ratio > 1.0;
    if let Some(p) = from_ratio_alone(&groups, ratio, keep) {
        return Ok(p);
    }
    let at = |value| PodMetric {
        value,
        timestamp: now,
        window: Duration::ZERO,
    };
    for p in &groups.missing {
        metrics.insert(p.clone(), at(if ratio < 1.0 { target_average } else { 0 }));
    }
    if scale_up_with_unready {
        for p in &groups.unready {
            metrics.insert(p.clone(), at(0));
        }
    }
    let (new_ratio, _) = usage(&metrics);
    if (1.0 - new_ratio).abs() <= TOLERANCE
        || (ratio < 1.0 && new_ratio > 1.0)
        || (ratio > 1.0 && new_ratio < 1.0)
    {
        return Ok(keep);
    }
    let replicas = ceil_i32(new_ratio * metrics.len() as f64);
    if (new_ratio < 1.0 && replicas > current) || (new_ratio > 1.0 && replicas < current) {
        return Ok(keep);
    }
    Ok(Proposal { replicas, ..keep })
}

/// The figure of `resource` for each pod of a `PodMetricsList` (milli-units): the sum
/// of its containers, or one container's; a pod lacking the figure is left out, as
/// upstream's metrics client does.
pub fn pod_metrics_from_list(
    list: &serde_json::Value,
    resource: &str,
    container: Option<&str>,
) -> PodMetricsInfo {
    let mut out = BTreeMap::new();
    for item in list["items"].as_array().into_iter().flatten() {
        let Some(name) = item.pointer("/metadata/name").and_then(|n| n.as_str()) else {
            continue;
        };
        let timestamp = item["timestamp"]
            .as_str()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        let window = item["window"]
            .as_str()
            .and_then(parse_go_duration)
            .unwrap_or(Duration::ZERO);
        let mut sum = 0i64;
        let mut found = false;
        let mut complete = true;
        for c in item["containers"].as_array().into_iter().flatten() {
            if container.is_some_and(|want| c["name"].as_str() != Some(want)) {
                continue;
            }
            match c["usage"]
                .get(resource)
                .and_then(rk3s_core::Quantity::from_json)
            {
                Some(q) => {
                    sum += q.milli_value_i64();
                    found = true;
                }
                None => complete = false,
            }
        }
        if found && complete {
            out.insert(
                name.to_string(),
                PodMetric {
                    value: sum,
                    timestamp,
                    window,
                },
            );
        }
    }
    out
}

/// Parses a Go duration as `metav1.Duration` writes it (`15s`, `1m0.5s`, `250ms`).
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let n: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += n * scale;
        rest = &rest[unit_end..];
    }
    Duration::try_from_secs_f64(total).ok()
}

/// A past recommendation (upstream's `timestampedRecommendation`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Recommendation {
    replicas: i32,
    at: jiff::Timestamp,
}

/// A past rescale (upstream's `timestampedScaleEvent`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ScaleEvent {
    change: i32,
    at: jiff::Timestamp,
    outdated: bool,
}

/// What the controller remembers of one HPA between syncs: recent recommendations
/// (stabilization windows) and recent rescales (scaling policies).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HpaMemory {
    /// When the HPA was last reconciled, and its generation then.
    last_sync: Option<(jiff::Timestamp, Option<i64>)>,
    recommendations: Vec<Recommendation>,
    scale_up_events: Vec<ScaleEvent>,
    scale_down_events: Vec<ScaleEvent>,
}

/// The result of normalizing a desired count: the count, and the `AbleToScale` and
/// `ScalingLimited` conditions upstream sets (status, reason, message).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Normalized {
    /// Replicas to scale to.
    pub replicas: i32,
    /// `AbleToScale`: reason and message (status True).
    pub able_to_scale: (&'static str, &'static str),
    /// `ScalingLimited`: limited?, reason, message.
    pub limited: (bool, &'static str, &'static str),
}

fn secs(n: i32) -> jiff::SignedDuration {
    jiff::SignedDuration::from_secs(i64::from(n.max(0)))
}

/// Scaling rules with upstream's defaults filled in (`SetDefaults_HorizontalPodAutoscalerBehavior`):
/// scale up: no stabilization, max of 100 % and 4 pods per 15 s; scale down: 300 s
/// stabilization, 100 % per 15 s.
pub fn rules_with_defaults(rules: Option<&HPAScalingRules>, up: bool) -> HPAScalingRules {
    let mut r = rules.cloned().unwrap_or_default();
    if r.stabilization_window_seconds.is_none() {
        r.stabilization_window_seconds = Some(if up {
            0
        } else {
            DOWNSCALE_STABILIZATION_WINDOW.as_secs() as i32
        });
    }
    if r.select_policy.is_none() {
        r.select_policy = Some("Max".into());
    }
    if r.policies.is_none() {
        let p = |type_: &str, value| HPAScalingPolicy {
            type_: type_.into(),
            value,
            period_seconds: 15,
        };
        r.policies = Some(if up {
            vec![p("Percent", 100), p("Pods", 4)]
        } else {
            vec![p("Percent", 100)]
        });
    }
    r
}

const STABILIZED_DOWN: (&str, &str) = (
    "ScaleDownStabilized",
    "recent recommendations were higher than current one, applying the highest recent recommendation",
);
const STABILIZED_UP: (&str, &str) = (
    "ScaleUpStabilized",
    "recent recommendations were lower than current one, applying the lowest recent recommendation",
);
const READY_FOR_NEW_SCALE: (&str, &str) =
    ("ReadyForNewScale", "recommended size matches current size");
const WITHIN_RANGE: (&str, &str) = (
    "DesiredWithinRange",
    "the desired count is within the acceptable range",
);
const TOO_MANY: (&str, &str) = (
    "TooManyReplicas",
    "the desired replica count is more than the maximum replica count",
);
const TOO_FEW: (&str, &str) = (
    "TooFewReplicas",
    "the desired replica count is less than the minimum replica count",
);
const SCALE_UP_LIMIT: (&str, &str) = (
    "ScaleUpLimit",
    "the desired replica count is increasing faster than the maximum scale rate",
);
const SCALE_DOWN_LIMIT: (&str, &str) = (
    "ScaleDownLimit",
    "the desired replica count is decreasing faster than the maximum scale rate",
);

impl HpaMemory {
    /// How long until the HPA is due (upstream reconciles each HPA once per sync period,
    /// changes included, except that a spec change or a new HPA is looked at at once).
    pub fn due_in(&self, generation: Option<i64>, now: jiff::Timestamp) -> Option<Duration> {
        let (at, gen) = self.last_sync?;
        if gen != generation {
            return None;
        }
        let since = now.duration_since(at);
        let period = jiff::SignedDuration::try_from(SYNC_PERIOD).unwrap_or_default();
        (since >= jiff::SignedDuration::ZERO && since < period)
            .then(|| Duration::try_from(period - since).unwrap_or(SYNC_PERIOD))
    }

    /// Upstream's `recordInitialRecommendation`.
    pub fn record_initial(&mut self, current: i32, now: jiff::Timestamp) {
        if self.recommendations.is_empty() {
            self.recommendations.push(Recommendation {
                replicas: current,
                at: now,
            });
        }
    }

    fn remember(&mut self, replicas: i32, now: jiff::Timestamp, old: Option<usize>) {
        let rec = Recommendation { replicas, at: now };
        match old {
            Some(i) => self.recommendations[i] = rec,
            None => self.recommendations.push(rec),
        }
    }

    /// Upstream's `normalizeDesiredReplicas` (an HPA without `spec.behavior`): the
    /// highest recommendation of the last 5 minutes, then at most max(2 × current, 4)
    /// and within [min, max].
    pub fn normalize(
        &mut self,
        current: i32,
        desired: i32,
        min: i32,
        max: i32,
        now: jiff::Timestamp,
    ) -> Normalized {
        let cutoff = now
            .checked_sub(
                jiff::SignedDuration::try_from(DOWNSCALE_STABILIZATION_WINDOW).unwrap_or_default(),
            )
            .unwrap_or(now);
        let mut stabilized = desired;
        let mut old = None;
        for (i, r) in self.recommendations.iter().enumerate() {
            if r.at < cutoff {
                old = Some(i);
            } else if r.replicas > stabilized {
                stabilized = r.replicas;
            }
        }
        self.remember(desired, now, old);
        let able_to_scale = if stabilized != desired {
            STABILIZED_DOWN
        } else {
            READY_FOR_NEW_SCALE
        };
        let scale_up_limit = ((2.0 * f64::from(current)).max(4.0)) as i32;
        let (max_allowed, max_reason) = if max > scale_up_limit {
            (scale_up_limit, SCALE_UP_LIMIT)
        } else {
            (max, TOO_MANY)
        };
        let (replicas, reason) = if stabilized < min {
            (min, TOO_FEW)
        } else if stabilized > max_allowed {
            (max_allowed, max_reason)
        } else {
            (stabilized, WITHIN_RANGE)
        };
        Normalized {
            replicas,
            able_to_scale,
            limited: (replicas != stabilized, reason.0, reason.1),
        }
    }

    /// Upstream's `normalizeDesiredReplicasWithBehaviors`: stabilization windows, then
    /// the scaling policies over the recent rescales, within [min, max].
    pub fn normalize_with_behavior(
        &mut self,
        behavior: &HorizontalPodAutoscalerBehavior,
        current: i32,
        desired: i32,
        min: i32,
        max: i32,
        now: jiff::Timestamp,
    ) -> Normalized {
        let up = rules_with_defaults(behavior.scale_up.as_ref(), true);
        let down = rules_with_defaults(behavior.scale_down.as_ref(), false);
        let up_window = up.stabilization_window_seconds.unwrap_or(0);
        let down_window = down.stabilization_window_seconds.unwrap_or(0);
        // Stabilization.
        let (window, pick_min, stabilized_reason) = if desired >= current {
            (up_window, true, STABILIZED_UP)
        } else {
            (down_window, false, STABILIZED_DOWN)
        };
        let obsolete = now
            .checked_sub(secs(up_window.max(down_window)))
            .unwrap_or(now);
        let cutoff = now.checked_sub(secs(window)).unwrap_or(now);
        let mut stabilized = desired;
        let mut old = None;
        for (i, r) in self.recommendations.iter().enumerate() {
            if r.at > cutoff {
                stabilized = if pick_min {
                    stabilized.min(r.replicas)
                } else {
                    stabilized.max(r.replicas)
                };
            }
            if r.at < obsolete {
                old = Some(i);
            }
        }
        self.remember(desired, now, old);
        let able_to_scale = if stabilized != desired {
            stabilized_reason
        } else {
            READY_FOR_NEW_SCALE
        };
        // Rate limits.
        let mut replicas = stabilized;
        let mut reason = WITHIN_RANGE;
        if stabilized > current {
            let limit = scale_up_limit(current, self, &up, now).max(current);
            let (max_allowed, r) = if max > limit {
                (limit, SCALE_UP_LIMIT)
            } else {
                (max, TOO_MANY)
            };
            if stabilized > max_allowed {
                replicas = max_allowed;
                reason = r;
            }
        } else if stabilized < current {
            let limit = scale_down_limit(current, self, &down, now).min(current);
            let (min_allowed, r) = if min < limit {
                (limit, SCALE_DOWN_LIMIT)
            } else {
                (min, TOO_FEW)
            };
            if stabilized < min_allowed {
                replicas = min_allowed;
                reason = r;
            }
        }
        Normalized {
            replicas,
            able_to_scale,
            limited: (replicas != stabilized, reason.0, reason.1),
        }
    }

    /// Upstream's `storeScaleEvent` (only HPAs with `spec.behavior` keep events).
    pub fn record_scale(
        &mut self,
        behavior: Option<&HorizontalPodAutoscalerBehavior>,
        previous: i32,
        new: i32,
        now: jiff::Timestamp,
    ) {
        let Some(b) = behavior else {
            return;
        };
        let (events, rules, change) = if new > previous {
            (
                &mut self.scale_up_events,
                rules_with_defaults(b.scale_up.as_ref(), true),
                new - previous,
            )
        } else {
            (
                &mut self.scale_down_events,
                rules_with_defaults(b.scale_down.as_ref(), false),
                previous - new,
            )
        };
        let longest = rules
            .policies
            .iter()
            .flatten()
            .map(|p| p.period_seconds)
            .max()
            .unwrap_or(0);
        let cutoff = now.checked_sub(secs(longest)).unwrap_or(now);
        for e in events.iter_mut() {
            if e.at < cutoff {
                e.outdated = true;
            }
        }
        let ev = ScaleEvent {
            change,
            at: now,
            outdated: false,
        };
        match events.iter().rposition(|e| e.outdated) {
            Some(i) => events[i] = ev,
            None => events.push(ev),
        }
    }
}

fn change_in_period(period: i32, events: &[ScaleEvent], now: jiff::Timestamp) -> i32 {
    let cutoff = now.checked_sub(secs(period)).unwrap_or(now);
    events
        .iter()
        .filter(|e| e.at > cutoff)
        .map(|e| e.change)
        .sum()
}

/// Upstream's `calculateScaleUpLimitWithScalingRules`: the most replicas the policies
/// allow, counting from the replicas at the start of each policy's period.
fn scale_up_limit(
    current: i32,
    memory: &HpaMemory,
    rules: &HPAScalingRules,
    now: jiff::Timestamp,
) -> i32 {
    let select = rules.select_policy.as_deref().unwrap_or("Max");
    if select == "Disabled" {
        return current;
    }
    let mut result = if select == "Min" { i32::MAX } else { i32::MIN };
    for p in rules.policies.iter().flatten() {
        let start = current - change_in_period(p.period_seconds, &memory.scale_up_events, now)
            + change_in_period(p.period_seconds, &memory.scale_down_events, now);
        let proposed = match p.type_.as_str() {
            "Pods" => start.saturating_add(p.value),
            _ => ceil_i32(f64::from(start) * (1.0 + f64::from(p.value) / 100.0)),
        };
        result = if select == "Min" {
            result.min(proposed)
        } else {
            result.max(proposed)
        };
    }
    result
}

/// Upstream's `calculateScaleDownLimitWithBehaviors`: the fewest replicas the policies
/// allow.
fn scale_down_limit(
    current: i32,
    memory: &HpaMemory,
    rules: &HPAScalingRules,
    now: jiff::Timestamp,
) -> i32 {
    let select = rules.select_policy.as_deref().unwrap_or("Max");
    if select == "Disabled" {
        return current;
    }
    let mut result = if select == "Min" { i32::MIN } else { i32::MAX };
    for p in rules.policies.iter().flatten() {
        let start = current + change_in_period(p.period_seconds, &memory.scale_down_events, now)
            - change_in_period(p.period_seconds, &memory.scale_up_events, now);
        let proposed = match p.type_.as_str() {
            "Pods" => start - p.value,
            _ => (f64::from(start) * (1.0 - f64::from(p.value) / 100.0)) as i32,
        };
        result = if select == "Min" {
            result.max(proposed)
        } else {
            result.min(proposed)
        };
    }
    result
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

/// Per-HPA memory of the controller (recommendations, rescales), by `namespace/name`.
pub type Memories = Arc<Mutex<HashMap<String, HpaMemory>>>;

/// What one metric spec proposes, or why it cannot.
struct MetricProposal {
    replicas: i32,
    name: String,
    status: MetricStatus,
}

/// A metric that could not be computed: the condition reason, the inner error (event
/// and condition message) and the error as upstream wraps it for the summary.
struct MetricFailure {
    reason: &'static str,
    inner: String,
    wrapped: String,
}

/// The metrics of an HPA (upstream defaults an empty list to 80 % CPU utilization).
pub fn metric_specs(hpa: &HorizontalPodAutoscaler) -> Vec<MetricSpec> {
    let specs = hpa
        .spec
        .as_ref()
        .and_then(|s| s.metrics.clone())
        .unwrap_or_default();
    if !specs.is_empty() {
        return specs;
    }
    vec![MetricSpec {
        type_: "Resource".into(),
        resource: Some(ResourceMetricSource {
            name: "cpu".into(),
            target: MetricTarget {
                type_: "Utilization".into(),
                average_utilization: Some(80),
                ..Default::default()
            },
        }),
        ..Default::default()
    }]
}

fn milli_quantity(milli: i64) -> Quantity {
    Quantity(
        rk3s_core::Quantity::from_milli(milli, rk3s_core::quantity::Format::DecimalSi).to_string(),
    )
}

/// Reads the pods' figures of `resource` from the resource metrics API.
async fn fetch_pod_metrics(
    client: &kube::Client,
    ns: &str,
    selector: &str,
    resource: &str,
    container: Option<&str>,
) -> Result<PodMetricsInfo, String> {
    let ar = ApiResource {
        group: "metrics.k8s.io".into(),
        version: "v1beta1".into(),
        api_version: "metrics.k8s.io/v1beta1".into(),
        kind: "PodMetrics".into(),
        plural: "pods".into(),
    };
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    let lp = kube::api::ListParams::default().labels(selector);
    let list = api.list(&lp).await.map_err(|e| {
        let mut text = err_text(&e);
        if matches!(&e, kube::Error::Api(s) if s.code == 404) {
            text.push_str(" (get pods.metrics.k8s.io)");
        }
        format!("unable to fetch metrics from resource metrics API: {text}")
    })?;
    if list.items.is_empty() {
        return Err("no metrics returned from resource metrics API".into());
    }
    let json = serde_json::to_value(&list).map_err(|e| e.to_string())?;
    Ok(pod_metrics_from_list(&json, resource, container))
}

/// Upstream's `computeStatusForResourceMetric` / `...ContainerResourceMetric`.
async fn compute_metric(
    client: &kube::Client,
    spec: &MetricSpec,
    ns: &str,
    selector: &str,
    pods: &[Arc<Pod>],
    current: i32,
    now: jiff::Timestamp,
) -> Result<MetricProposal, MetricFailure> {
    let (resource, container, target, reason) = match (
        spec.type_.as_str(),
        &spec.resource,
        &spec.container_resource,
    ) {
        ("Resource", Some(r), _) => (
            r.name.clone(),
            None,
            r.target.clone(),
            "FailedGetResourceMetric",
        ),
        ("ContainerResource", _, Some(c)) => (
            c.name.clone(),
            Some(c.container.clone()),
            c.target.clone(),
            "FailedGetContainerResourceMetric",
        ),
        (t @ ("Pods" | "Object" | "External"), _, _) => {
            let reason = match t {
                "Pods" => "FailedGetPodsMetric",
                "Object" => "FailedGetObjectMetric",
                _ => "FailedGetExternalMetric",
            };
            let inner = format!(
                "unable to fetch metrics from {} metrics API: the server could not find the requested resource",
                if t == "External" { "external" } else { "custom" }
            );
            return Err(MetricFailure {
                reason,
                wrapped: format!(
                    "failed to get {} metric value: {inner}",
                    t.to_ascii_lowercase()
                ),
                inner,
            });
        }
        (t, _, _) => {
            let inner = format!("unknown metric source type {}", rk3s_core::go_quote(t));
            return Err(MetricFailure {
                reason: "InvalidMetricSourceType",
                wrapped: inner.clone(),
                inner,
            });
        }
    };
    let what = |e: String| match &container {
        None => format!("failed to get {resource} utilization: {e}"),
        Some(_) => format!("failed to get {resource} container metric: {e}"),
    };
    let fail = |inner: String| MetricFailure {
        reason,
        wrapped: what(inner.clone()),
        inner,
    };
    let kind = if container.is_some() {
        "container resource"
    } else {
        "resource"
    };
    if target.average_value.is_none() && target.average_utilization.is_none() {
        let inner = format!(
            "invalid {kind} metric source: neither a utilization target nor a value target was set"
        );
        return Err(MetricFailure {
            reason,
            wrapped: inner.clone(),
            inner,
        });
    }
    let metrics = fetch_pod_metrics(client, ns, selector, &resource, container.as_deref())
        .await
        .map_err(|e| {
            fail(format!(
                "unable to get metrics for resource {resource}: {e}"
            ))
        })?;
    let facts: Vec<PodFacts> = pods
        .iter()
        .map(|p| PodFacts::from_pod(p, &resource, container.as_deref()))
        .collect();
    let current_value = |p: &Proposal| MetricValueStatus {
        average_utilization: p.utilization,
        average_value: Some(milli_quantity(p.average)),
        value: None,
    };
    let status = |p: &Proposal| match &container {
        None => MetricStatus {
            type_: "Resource".into(),
            resource: Some(ResourceMetricStatus {
                name: resource.clone(),
                current: current_value(p),
            }),
            ..Default::default()
        },
        Some(c) => MetricStatus {
            type_: "ContainerResource".into(),
            container_resource: Some(ContainerResourceMetricStatus {
                name: resource.clone(),
                container: c.clone(),
                current: current_value(p),
            }),
            ..Default::default()
        },
    };
    if let Some(avg) = &target.average_value {
        let target_milli = rk3s_core::Quantity::try_from(avg)
            .map(|q| q.milli_value_i64())
            .unwrap_or(0);
        let p = average_value_replicas(current, target_milli, &resource, &facts, metrics, now)
            .map_err(fail)?;
        return Ok(MetricProposal {
            replicas: p.replicas,
            name: format!("{resource} {kind}"),
            status: status(&p),
        });
    }
    let target_utilization = target.average_utilization.unwrap_or(0);
    let p = resource_replicas(current, target_utilization, &resource, &facts, metrics, now)
        .map_err(fail)?;
    Ok(MetricProposal {
        replicas: p.replicas,
        name: format!("{resource} {kind} utilization (percentage of request)"),
        status: status(&p),
    })
}

async fn reconcile(
    client: &kube::Client,
    events: &Events,
    pods: &Store<Pod>,
    memories: &Memories,
    hpa: &HorizontalPodAutoscaler,
) -> Result<(), ControllerError> {
    let ns = hpa.metadata.namespace.clone().unwrap_or_default();
    let name = hpa.metadata.name.clone().unwrap_or_default();
    let Some(spec) = hpa.spec.as_ref() else {
        return Ok(());
    };
    let key = format!("{ns}/{name}");
    let now_ts = jiff::Timestamp::now();
    let now = Time(now_ts);
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
            events
                .record(&hpa_ref, true, "FailedGetScale", err_text(&e))
                .await;
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
    set_condition(
        &mut conds,
        "AbleToScale",
        "True",
        "SucceededGetScale",
        "the HPA controller was able to get the target's current scale".into(),
        &now,
    );
    let current = scale.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
    let min = spec.min_replicas.unwrap_or(1);
    let max = spec.max_replicas;
    // Upstream reports the scale's spec replicas as the current count.
    status.current_replicas = Some(current);
    let mut memory = match memories.lock() {
        Ok(m) => m.get(&key).cloned().unwrap_or_default(),
        Err(p) => p.into_inner().get(&key).cloned().unwrap_or_default(),
    };
    memory.record_initial(current, now_ts);
    memory.last_sync = Some((now_ts, hpa.metadata.generation));
    let mut rescale: Option<(i32, String)> = None;
    match decide(current, min, max) {
        Decision::Disabled => {
            status.desired_replicas = 0;
            status.current_metrics = None;
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
            status.current_metrics = None;
            let (r, m) = if n == max { TOO_MANY } else { TOO_FEW };
            set_condition(&mut conds, "ScalingLimited", "True", r, m.into(), &now);
            rescale = Some((n, reason.to_string()));
        }
        Decision::NeedMetrics => {
            let selector = scale
                .status
                .as_ref()
                .and_then(|s| s.selector.clone())
                .unwrap_or_default();
            let parsed = if selector.is_empty() {
                Err("the HPA target's scale is missing a selector".to_string())
            } else {
                rk3s_core::LabelSelector::parse(&selector).map_err(|e| {
                    format!("couldn't convert selector into a corresponding internal selector object: {e}")
                })
            };
            let sel = match parsed {
                Ok(s) => s,
                Err(msg) => {
                    let event = if selector.is_empty() {
                        ("SelectorRequired", "selector is required".to_string())
                    } else {
                        ("InvalidSelector", msg.clone())
                    };
                    events.record(&hpa_ref, true, event.0, event.1).await;
                    set_condition(
                        &mut conds,
                        "ScalingActive",
                        "False",
                        "InvalidSelector",
                        msg,
                        &now,
                    );
                    status.conditions = Some(conds);
                    store_memory(memories, key, memory);
                    return write_status(client, &ns, &name, &old, status).await;
                }
            };
            let empty = BTreeMap::new();
            let target_pods: Vec<Arc<Pod>> = pods
                .state()
                .into_iter()
                .filter(|p| {
                    p.metadata.namespace.as_deref() == Some(ns.as_str())
                        && sel.matches(p.metadata.labels.as_ref().unwrap_or(&empty))
                })
                .collect();
            let specs = metric_specs(hpa);
            let mut best: Option<MetricProposal> = None;
            let mut statuses = Vec::new();
            let mut invalid = 0usize;
            let mut first_failure: Option<MetricFailure> = None;
            for m in &specs {
                match compute_metric(client, m, &ns, &selector, &target_pods, current, now_ts).await
                {
                    Ok(p) => {
                        statuses.push(p.status.clone());
                        if best
                            .as_ref()
                            .is_none_or(|b| b.replicas == 0 || p.replicas > b.replicas)
                        {
                            best = Some(p);
                        }
                    }
                    Err(f) => {
                        events
                            .record(&hpa_ref, true, f.reason, f.inner.clone())
                            .await;
                        invalid += 1;
                        if first_failure.is_none() {
                            first_failure = Some(f);
                        }
                    }
                }
            }
            let proposed = best.as_ref().map(|b| b.replicas).unwrap_or(0);
            match first_failure {
                Some(f) if invalid >= specs.len() || proposed < current => {
                    set_condition(
                        &mut conds,
                        "ScalingActive",
                        "False",
                        f.reason,
                        format!(
                            "the HPA was unable to compute the replica count: {}",
                            f.inner
                        ),
                        &now,
                    );
                    events
                        .record(
                            &hpa_ref,
                            true,
                            "FailedComputeMetricsReplicas",
                            format!(
                                "invalid metrics ({invalid} invalid out of {}), first error is: {}",
                                specs.len(),
                                f.wrapped
                            ),
                        )
                        .await;
                    status.conditions = Some(conds);
                    store_memory(memories, key, memory);
                    return write_status(client, &ns, &name, &old, status).await;
                }
                _ => {}
            }
            let metric_name = best.as_ref().map(|b| b.name.clone()).unwrap_or_default();
            set_condition(
                &mut conds,
                "ScalingActive",
                "True",
                "ValidMetricFound",
                format!(
                    "the HPA was able to successfully calculate a replica count from {metric_name}"
                ),
                &now,
            );
            status.current_metrics = Some(statuses);
            let desired = proposed;
            let reason = if desired > current {
                format!("{metric_name} above target")
            } else {
                "All metrics below target".to_string()
            };
            let normalized = match &spec.behavior {
                None => memory.normalize(current, desired, min, max, now_ts),
                Some(b) => memory.normalize_with_behavior(b, current, desired, min, max, now_ts),
            };
            set_condition(
                &mut conds,
                "AbleToScale",
                "True",
                normalized.able_to_scale.0,
                normalized.able_to_scale.1.into(),
                &now,
            );
            let (limited, r, m) = normalized.limited;
            set_condition(
                &mut conds,
                "ScalingLimited",
                if limited { "True" } else { "False" },
                r,
                m.into(),
                &now,
            );
            if normalized.replicas != current {
                rescale = Some((normalized.replicas, reason));
            } else {
                status.desired_replicas = current;
            }
        }
    }
    if let Some((n, reason)) = rescale {
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
                memory.record_scale(spec.behavior.as_ref(), current, n, now_ts);
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
                status.desired_replicas = old.desired_replicas;
            }
        }
    }
    store_memory(memories, key, memory);
    status.conditions = Some(conds);
    write_status(client, &ns, &name, &old, status).await
}

fn store_memory(memories: &Memories, key: String, memory: HpaMemory) {
    match memories.lock() {
        Ok(mut m) => m.insert(key, memory),
        Err(p) => p.into_inner().insert(key, memory),
    };
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
    pods: &Store<Pod>,
    memories: &Memories,
) -> Result<Option<Duration>, ControllerError> {
    let mut result: Result<(), ControllerError> = Ok(());
    let all = hpas.state();
    // Forget what was remembered of deleted HPAs.
    let keys: BTreeSet<String> = all
        .iter()
        .map(|h| {
            format!(
                "{}/{}",
                h.metadata.namespace.as_deref().unwrap_or(""),
                h.metadata.name.as_deref().unwrap_or("")
            )
        })
        .collect();
    match memories.lock() {
        Ok(mut m) => m.retain(|k, _| keys.contains(k)),
        Err(p) => p.into_inner().retain(|k, _| keys.contains(k)),
    }
    let now = jiff::Timestamp::now();
    let mut next: Option<Duration> = None;
    for hpa in all {
        let key = format!(
            "{}/{}",
            hpa.metadata.namespace.as_deref().unwrap_or(""),
            hpa.metadata.name.as_deref().unwrap_or("")
        );
        let due = match memories.lock() {
            Ok(m) => m
                .get(&key)
                .and_then(|mem| mem.due_in(hpa.metadata.generation, now)),
            Err(p) => p
                .into_inner()
                .get(&key)
                .and_then(|mem| mem.due_in(hpa.metadata.generation, now)),
        };
        if let Some(wait) = due {
            // Reconciled less than a sync period ago (e.g. this is its own status
            // update): not yet, as upstream's rate-limited queue.
            next = Some(next.map_or(wait, |n| n.min(wait)));
            continue;
        }
        if let Err(e) = reconcile(client, events, pods, memories, &hpa).await {
            result = Err(e);
        }
    }
    result.map(|_| next)
}

/// Runs the HPA controller forever.
pub async fn run(
    client: kube::Client,
    informers: crate::informers::SharedInformers,
) -> Result<(), ControllerError> {
    let changes = Trigger::changes(&informers, |_: &HorizontalPodAutoscaler| Some(()));
    let hpas = informers.store::<HorizontalPodAutoscaler>().await;
    let pods = informers.store::<Pod>().await;
    let memories: Memories = Arc::default();
    let events = Events::new(client.clone(), "horizontal-pod-autoscaler");
    // One key: a pass over every HPA, on a change or every sync period.
    let triggers = vec![changes, Trigger::every(SYNC_PERIOD, ())];
    run_controller("hpa", 1, WorkQueue::new(), triggers, move |()| {
        let (client, events, hpas, pods, memories) = (
            client.clone(),
            events.clone(),
            hpas.clone(),
            pods.clone(),
            memories.clone(),
        );
        async move {
            sync(&client, &events, &hpas, &pods, &memories)
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
            "no metrics".into(),
            &t1,
        );
        set_condition(
            &mut c,
            "ScalingActive",
            "False",
            "FailedGetResourceMetric",
            "no metrics".into(),
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
    }

    fn ts(secs: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_700_000_000 + secs).expect("ts")
    }

    /// A Running pod, started an hour ago and Ready since, requesting `req_milli`.
    fn running(name: &str, req_milli: i64) -> PodFacts {
        PodFacts {
            name: name.into(),
            deleted: false,
            phase: "Running".into(),
            ready: Some(("True".into(), ts(-3500))),
            start_time: Some(ts(-3600)),
            requests: Ok(req_milli),
        }
    }

    fn metrics(values: &[(&str, i64)]) -> PodMetricsInfo {
        values
            .iter()
            .map(|(n, v)| {
                (
                    n.to_string(),
                    PodMetric {
                        value: *v,
                        timestamp: ts(-10),
                        window: Duration::from_secs(15),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn utilization_replicas_match_upstream_examples() {
        let now = ts(0);
        // Upstream's TestReplicaCalcScaleUp: 3 pods at 300m/500m/700m of 1 CPU, 30 %.
        let pods = vec![running("a", 1000), running("b", 1000), running("c", 1000)];
        let m = metrics(&[("a", 300), ("b", 500), ("c", 700)]);
        let p = resource_replicas(3, 30, "cpu", &pods, m.clone(), now).expect("ok");
        assert_eq!((p.replicas, p.utilization, p.average), (5, Some(50), 500));
        // TestReplicaCalcScaleDown: 5 pods, 50 % target -> 3.
        let pods5: Vec<PodFacts> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|n| running(n, 1000))
            .collect();
        let m5 = metrics(&[("a", 100), ("b", 300), ("c", 500), ("d", 250), ("e", 250)]);
        let p = resource_replicas(5, 50, "cpu", &pods5, m5, now).expect("ok");
        assert_eq!((p.replicas, p.utilization), (3, Some(28)));
        // TestReplicaCalcScaleUpUnreadyLessScale: an unready pod counts as 0 on scale-up.
        let mut unready = pods.clone();
        unready[0].ready = Some(("False".into(), ts(-3600)));
        let p = resource_replicas(3, 30, "cpu", &unready, m.clone(), now).expect("ok");
        assert_eq!((p.replicas, p.utilization), (4, Some(60)));
        // Within the tolerance: no change.
        let m = metrics(&[("a", 1050), ("b", 1030), ("c", 1020)]);
        let p = resource_replicas(3, 100, "cpu", &pods, m, now).expect("ok");
        assert_eq!((p.replicas, p.utilization), (3, Some(103)));
    }

    #[test]
    fn missing_unready_and_bad_pods_as_upstream() {
        let now = ts(0);
        let pods4: Vec<PodFacts> = ["a", "b", "c", "d"]
            .iter()
            .map(|n| running(n, 1000))
            .collect();
        // Scale down: a pod without figures counts as using its whole request.
        let m = metrics(&[("a", 100), ("b", 100), ("c", 100)]);
        let p = resource_replicas(4, 50, "cpu", &pods4, m, now).expect("ok");
        assert_eq!((p.replicas, p.utilization), (3, Some(10)));
        // Scale up: as using nothing.
        let m = metrics(&[("a", 900), ("b", 900), ("c", 900)]);
        let p = resource_replicas(4, 50, "cpu", &pods4, m, now).expect("ok");
        assert_eq!((p.replicas, p.utilization), (6, Some(90)));
        // Deleted and failed pods are ignored, their figures too.
        let mut pods = pods4.clone();
        pods[3].deleted = true;
        pods[2].phase = "Failed".into();
        let m = metrics(&[("a", 500), ("b", 500), ("c", 5000), ("d", 5000)]);
        let p = resource_replicas(4, 50, "cpu", &pods, m, now).expect("ok");
        assert_eq!((p.replicas, p.utilization), (4, Some(50)));
        // Errors, with upstream's messages.
        assert_eq!(
            resource_replicas(1, 50, "cpu", &[], PodMetricsInfo::new(), now),
            Err("no pods returned by selector while calculating replica count".into())
        );
        let mut pending = pods4.clone();
        for p in &mut pending {
            p.phase = "Pending".into();
        }
        assert_eq!(
            resource_replicas(4, 50, "cpu", &pending, metrics(&[("a", 1)]), now),
            Err("did not receive metrics for targeted pods (pods might be unready)".into())
        );
        let mut no_req = pods4.clone();
        no_req[1].requests = Err("missing request for cpu in container web of Pod b".into());
        assert_eq!(
            resource_replicas(4, 50, "cpu", &no_req, metrics(&[("a", 1)]), now),
            Err("missing request for cpu in container web of Pod b".into())
        );
        // CPU figures taken before a young pod's readiness settled are unready.
        let mut young = running("y", 1000);
        young.start_time = Some(ts(-60));
        young.ready = Some(("True".into(), ts(-20)));
        let g = group_pods(&[young], &metrics(&[("y", 1)]), "cpu", now);
        assert_eq!(g.unready.len(), 1);
    }

    #[test]
    fn average_value_targets() {
        let pods = vec![running("a", 1000), running("b", 1000)];
        // 2 pods averaging 300m against 100m: 6.
        let m = metrics(&[("a", 200), ("b", 400)]);
        let p = average_value_replicas(2, 100, "cpu", &pods, m, ts(0)).expect("ok");
        assert_eq!((p.replicas, p.utilization, p.average), (6, None, 300));
    }

    #[test]
    fn default_normalization_limits_and_stabilizes() {
        let mut mem = HpaMemory::default();
        let t0 = ts(0);
        mem.record_initial(2, t0);
        // Scale-up limit: max(2 x current, 4).
        let n = mem.normalize(2, 10, 1, 20, t0);
        assert_eq!(n.replicas, 4);
        assert_eq!(n.limited, (true, "ScaleUpLimit", SCALE_UP_LIMIT.1));
        let n = mem.normalize(4, 30, 1, 6, t0);
        assert_eq!((n.replicas, n.limited.1), (6, "TooManyReplicas"));
        // Scale-down stabilization: the highest recommendation of the last 5 minutes.
        let mut mem = HpaMemory::default();
        mem.record_initial(5, t0);
        let n = mem.normalize(5, 2, 1, 10, ts(60));
        assert_eq!(n.replicas, 5);
        assert_eq!(n.able_to_scale.0, "ScaleDownStabilized");
        let n = mem.normalize(5, 2, 1, 10, ts(400));
        assert_eq!(n.replicas, 2);
        assert_eq!(n.able_to_scale.0, "ReadyForNewScale");
        assert_eq!(n.limited, (false, "DesiredWithinRange", WITHIN_RANGE.1));
        let n = mem.normalize(2, 0, 1, 10, ts(800));
        assert_eq!((n.replicas, n.limited.1), (1, "TooFewReplicas"));
    }

    #[test]
    fn behavior_policies_limit_the_rate() {
        let behavior = HorizontalPodAutoscalerBehavior::default();
        let mut mem = HpaMemory::default();
        let t0 = ts(0);
        mem.record_initial(3, t0);
        // Default scale-up: max(100 %, 4 pods) per 15 s: 3 -> 7.
        let n = mem.normalize_with_behavior(&behavior, 3, 20, 1, 50, t0);
        assert_eq!(n.replicas, 7);
        assert_eq!(n.limited.1, "ScaleUpLimit");
        mem.record_scale(Some(&behavior), 3, 7, t0);
        // 5 s later the period still holds the +4: no more room.
        let n = mem.normalize_with_behavior(&behavior, 7, 20, 1, 50, ts(5));
        assert_eq!(n.replicas, 7);
        // After the period: 7 -> 14.
        let n = mem.normalize_with_behavior(&behavior, 7, 20, 1, 50, ts(20));
        assert_eq!(n.replicas, 14);
        // Default scale-down: 300 s stabilization keeps the highest recommendation.
        let n = mem.normalize_with_behavior(&behavior, 14, 2, 1, 50, ts(30));
        assert_eq!((n.replicas, n.able_to_scale.0), (20, "ScaleDownStabilized"));
        // A Pods policy of 1 per minute, selectPolicy Min.
        let slow = HorizontalPodAutoscalerBehavior {
            scale_down: Some(HPAScalingRules {
                stabilization_window_seconds: Some(0),
                select_policy: Some("Min".into()),
                policies: Some(vec![
                    HPAScalingPolicy {
                        type_: "Pods".into(),
                        value: 1,
                        period_seconds: 60,
                    },
                    HPAScalingPolicy {
                        type_: "Percent".into(),
                        value: 50,
                        period_seconds: 60,
                    },
                ]),
                tolerance: None,
            }),
            scale_up: None,
        };
        let mut mem = HpaMemory::default();
        let n = mem.normalize_with_behavior(&slow, 10, 2, 1, 50, t0);
        assert_eq!((n.replicas, n.limited.1), (9, "ScaleDownLimit"));
        // Scaling disabled.
        let off = HorizontalPodAutoscalerBehavior {
            scale_up: Some(HPAScalingRules {
                select_policy: Some("Disabled".into()),
                ..Default::default()
            }),
            scale_down: None,
        };
        let n = HpaMemory::default().normalize_with_behavior(&off, 3, 9, 1, 50, t0);
        assert_eq!(n.replicas, 3);
    }

    #[test]
    fn pod_metrics_are_read_from_the_metrics_api() {
        let list = json!({"items": [
            {"metadata": {"name": "a"}, "timestamp": "2023-11-14T22:13:20Z", "window": "15.5s",
             "containers": [{"name": "web", "usage": {"cpu": "250m", "memory": "1Ki"}},
                            {"name": "side", "usage": {"cpu": "12345678n", "memory": "2Ki"}}]},
            {"metadata": {"name": "b"}, "timestamp": "2023-11-14T22:13:20Z", "window": "15s",
             "containers": [{"name": "web", "usage": {"memory": "1Ki"}}]},
        ]});
        let m = pod_metrics_from_list(&list, "cpu", None);
        assert_eq!(m.len(), 1);
        assert_eq!(m["a"].value, 263);
        assert_eq!(m["a"].window, Duration::from_millis(15_500));
        let m = pod_metrics_from_list(&list, "memory", Some("web"));
        assert_eq!(m["b"].value, 1_024_000);
        assert_eq!(
            parse_go_duration("1m0.5s"),
            Some(Duration::from_millis(60_500))
        );
        assert_eq!(parse_go_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_go_duration("x"), None);
    }

    #[test]
    fn pod_requests_include_sidecars_and_name_what_is_missing() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {
                "initContainers": [
                    {"name": "init", "image": "i"},
                    {"name": "side", "image": "s", "restartPolicy": "Always", "resources": {"requests": {"cpu": "100m"}}},
                ],
                "containers": [{"name": "web", "image": "w", "resources": {"requests": {"cpu": "0.5"}}}],
            },
            "status": {"phase": "Running", "startTime": "2023-11-14T22:13:20Z",
                       "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2023-11-14T22:13:30Z"}]},
        }))
        .expect("pod");
        let f = PodFacts::from_pod(&pod, "cpu", None);
        assert_eq!(f.requests, Ok(600));
        assert_eq!(f.phase, "Running");
        assert_eq!(f.ready.as_ref().map(|r| r.0.as_str()), Some("True"));
        assert_eq!(
            PodFacts::from_pod(&pod, "cpu", Some("web")).requests,
            Ok(500)
        );
        assert_eq!(
            PodFacts::from_pod(&pod, "memory", None).requests,
            Err("missing request for memory in container web of Pod p".into())
        );
    }

    #[test]
    fn an_hpa_without_metrics_targets_80_percent_cpu() {
        let hpa = HorizontalPodAutoscaler::default();
        let specs = metric_specs(&hpa);
        assert_eq!(specs.len(), 1);
        let r = specs[0].resource.as_ref().expect("resource");
        assert_eq!(
            (r.name.as_str(), r.target.average_utilization),
            ("cpu", Some(80))
        );
        assert_eq!(milli_quantity(250).0, "250m");
        assert_eq!(milli_quantity(2000).0, "2");
    }

    #[test]
    fn an_hpa_is_reconciled_once_per_period_unless_its_spec_changes() {
        let mut mem = HpaMemory::default();
        assert_eq!(mem.due_in(Some(1), ts(0)), None);
        mem.last_sync = Some((ts(0), Some(1)));
        assert_eq!(mem.due_in(Some(1), ts(5)), Some(Duration::from_secs(10)));
        assert_eq!(mem.due_in(Some(1), ts(15)), None);
        assert_eq!(mem.due_in(Some(2), ts(5)), None);
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
