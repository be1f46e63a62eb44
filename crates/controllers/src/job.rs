//! The Job controller (upstream's `pkg/controller/job`): runs pods until `completions`
//! succeed (NonIndexed or Indexed), at most `parallelism` at a time, with exponential
//! back-off between failed pods (10 s · 2ⁿ, at most 6 min), `backoffLimit`,
//! `activeDeadlineSeconds`, `podFailurePolicy`, `suspend`, and finalizer-based tracking
//! (`batch.kubernetes.io/job-tracking` on every pod, terminated pods recorded in
//! `status.uncountedTerminatedPods` before their finalizer is removed and they are counted).
//! Like the ReplicaSet controller (one implementation, [`crate::podutil::PodClaimer`]) it
//! adopts orphan pods its selector matches and releases its pods that no longer match,
//! adding and removing the tracking finalizer with the owner reference; a pod whose Job is
//! gone or finished, or that no Job controls, never keeps the finalizer.
//!
//! The decisions are in the pure [`plan`]; [`run`] applies them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::batch::v1::{
    Job, JobCondition, JobStatus, PodFailurePolicy, UncountedTerminatedPods,
};
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};
use kube::api::{Api, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};

use rk3s_runtime::{for_objects, run_controller, Action, Change, Trigger, WorkQueue};

use crate::expectations::{Expectations, MetaOf};
use crate::informers::{Index, OwnedCache};
use crate::podutil;
use crate::workload_util::{self as wu, Events, PlannedEvent};
use crate::ControllerError;

/// Finalizer the controller puts on its pods until it has counted them.
pub const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";
/// Annotation and label with an Indexed Job pod's completion index.
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";
/// Label with the Job's uid on its pods (and its generated selector).
pub const CONTROLLER_UID_LABEL: &str = "batch.kubernetes.io/controller-uid";
/// Label with the Job's name on its pods.
pub const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";
/// Base delay between pod recreations after failures.
pub const BACKOFF_BASE: Duration = Duration::from_secs(10);
/// Longest delay between pod recreations after failures.
pub const BACKOFF_MAX: Duration = Duration::from_secs(360);
/// Largest number of pods created in one pass.
const MAX_CREATE_PER_SYNC: usize = 500;

/// What the controller does for a Job in one pass.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JobPlan {
    /// Pods to create: one entry per pod, with its completion index for Indexed Jobs.
    pub create: Vec<Option<i32>>,
    /// Names of pods to delete.
    pub delete: Vec<String>,
    /// Names of pods whose tracking finalizer to remove.
    pub remove_finalizer: Vec<String>,
    /// The status to write before removing finalizers (terminated pods recorded in
    /// `uncountedTerminatedPods`), when it differs from the Job's status.
    pub interim_status: Option<JobStatus>,
    /// The status to write at the end of the pass.
    pub status: JobStatus,
    /// Events to record about the Job.
    pub events: Vec<PlannedEvent>,
    /// When to look at the Job again (back-off or deadline), if no change comes first.
    pub requeue_after: Option<Duration>,
}

/// The action of a matched pod failure policy rule, with its message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyAction {
    /// Fail the whole Job.
    FailJob(String),
    /// Do not count the failure.
    Ignore,
    /// Count the failure as usual.
    Count,
}

fn cond_true(status: &JobStatus, type_: &str) -> Option<JobCondition> {
    status
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
        .cloned()
}

/// Whether the Job has a `Complete` or `Failed` condition that is true.
pub fn is_finished(job: &Job) -> bool {
    job.status
        .as_ref()
        .is_some_and(|s| cond_true(s, "Complete").is_some() || cond_true(s, "Failed").is_some())
}

fn new_condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> JobCondition {
    JobCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

/// Sets a condition, keeping the transition time when the status is unchanged.
fn set_condition(status: &mut JobStatus, c: JobCondition) {
    let conds = status.conditions.get_or_insert_with(Vec::new);
    match conds.iter_mut().find(|x| x.type_ == c.type_) {
        Some(x) if x.status == c.status => {
            x.reason = c.reason;
            x.message = c.message;
            x.last_probe_time = c.last_probe_time;
        }
        Some(x) => *x = c,
        None => conds.push(c),
    }
}

/// The completion index of a pod (annotation, else label).
pub fn pod_index(pod: &Pod) -> Option<i32> {
    let a = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(COMPLETION_INDEX));
    let l = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(COMPLETION_INDEX));
    a.or(l)?.parse().ok().filter(|i: &i32| *i >= 0)
}

/// Parses `status.completedIndexes` ("1,3-5").
pub fn parse_indexes(s: &str) -> BTreeSet<i32> {
    let mut out = BTreeSet::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<i32>(), b.parse::<i32>()) {
                    out.extend(a..=b);
                }
            }
            None => {
                if let Ok(i) = part.parse() {
                    out.insert(i);
                }
            }
        }
    }
    out
}

/// Formats a set of indexes as upstream's interval list ("1,3-5").
pub fn format_indexes(set: &BTreeSet<i32>) -> String {
    let mut parts = Vec::new();
    let mut iter = set.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    parts.join(",")
}

/// Evaluates a pod failure policy on a failed pod: the first rule matching a non-zero
/// container exit code (`onExitCodes`) or a pod condition (`onPodConditions`).
pub fn match_pod_failure_policy(policy: &PodFailurePolicy, pod: &Pod) -> Option<PolicyAction> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("");
    let name = pod.metadata.name.as_deref().unwrap_or("");
    let status = pod.status.as_ref();
    let statuses = status
        .and_then(|s| s.init_container_statuses.as_ref())
        .into_iter()
        .flatten()
        .chain(
            status
                .and_then(|s| s.container_statuses.as_ref())
                .into_iter()
                .flatten(),
        );
    let exits: Vec<(&str, i32)> = statuses
        .filter_map(|c| {
            c.state
                .as_ref()?
                .terminated
                .as_ref()
                .map(|t| (c.name.as_str(), t.exit_code))
        })
        .filter(|(_, code)| *code != 0)
        .collect();
    for (i, rule) in policy.rules.iter().enumerate() {
        let mut message = None;
        if let Some(req) = &rule.on_exit_codes {
            for (cname, code) in &exits {
                if req.container_name.as_deref().is_some_and(|n| n != *cname) {
                    continue;
                }
                let hit = match req.operator.as_str() {
                    "In" => req.values.contains(code),
                    "NotIn" => !req.values.contains(code),
                    _ => false,
                };
                if hit {
                    message = Some(format!("Container {cname} for pod {ns}/{name} failed with exit code {code} matching {} rule at index {i}", rule.action));
                    break;
                }
            }
        }
        if let Some(patterns) = &rule.on_pod_conditions {
            let conds = status.and_then(|s| s.conditions.as_ref());
            for p in patterns {
                let want = if p.status.is_empty() {
                    "True"
                } else {
                    p.status.as_str()
                };
                if conds.is_some_and(|cs| cs.iter().any(|c| c.type_ == p.type_ && c.status == want))
                {
                    message = Some(format!(
                        "Pod {ns}/{name} has condition {} matching {} rule at index {i}",
                        p.type_, rule.action
                    ));
                    break;
                }
            }
        }
        if let Some(m) = message {
            return Some(match rule.action.as_str() {
                "FailJob" => PolicyAction::FailJob(m),
                "Ignore" => PolicyAction::Ignore,
                _ => PolicyAction::Count,
            });
        }
    }
    None
}

/// When a pod finished: the latest container termination, else its latest condition
/// change, else its deletion or creation time.
pub fn finish_time(pod: &Pod) -> Option<Timestamp> {
    let st = pod.status.as_ref();
    let term = st
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|c| {
            c.state
                .as_ref()?
                .terminated
                .as_ref()?
                .finished_at
                .as_ref()
                .map(|t| t.0)
        })
        .max();
    term.or_else(|| {
        st.and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|c| c.last_transition_time.as_ref().map(|t| t.0))
            .max()
    })
    .or_else(|| pod.metadata.deletion_timestamp.as_ref().map(|t| t.0))
    .or_else(|| pod.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

fn is_failed(pod: &Pod, has_policy: bool) -> bool {
    let phase = wu::pod_phase(pod);
    phase == "Failed"
        || (!has_policy && pod.metadata.deletion_timestamp.is_some() && phase != "Succeeded")
}

/// The back-off before creating pods again: `10s · 2^(n-1)` (at most 6 min) after the
/// latest of `n` failures since the last success; None when no back-off applies.
/// Failures ignored by the pod failure policy do not count.
pub fn remaining_backoff(
    pods: &[&Pod],
    policy: Option<&PodFailurePolicy>,
    now: Timestamp,
) -> Option<Duration> {
    let has_policy = policy.is_some();
    let last_success = pods
        .iter()
        .filter(|p| wu::pod_phase(p) == "Succeeded")
        .filter_map(|p| finish_time(p))
        .max();
    let failures: Vec<Timestamp> = pods
        .iter()
        .filter(|p| is_failed(p, has_policy))
        .filter(|p| {
            policy.and_then(|pol| match_pod_failure_policy(pol, p)) != Some(PolicyAction::Ignore)
        })
        .filter_map(|p| finish_time(p))
        .filter(|t| last_success.is_none_or(|s| *t > s))
        .collect();
    let last = failures.iter().max()?;
    let n = u32::try_from(failures.len()).unwrap_or(u32::MAX);
    let delay = BACKOFF_BASE
        .checked_mul(1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX))
        .unwrap_or(BACKOFF_MAX)
        .min(BACKOFF_MAX);
    let ready_at = last.as_millisecond() + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
    let left = ready_at - now.as_millisecond();
    (left > 0).then(|| Duration::from_millis(u64::try_from(left).unwrap_or(0)))
}

/// Decides what to do for a Job given the pods matching its selector at `now`.
pub fn plan(job: &Job, pods: &[Pod], now: Timestamp) -> JobPlan {
    let mut out = JobPlan::default();
    let old_status = job.status.clone().unwrap_or_default();
    let mut status = old_status.clone();
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let spec = job.spec.clone().unwrap_or_default();
    let owned: Vec<&Pod> = pods
        .iter()
        .filter(|p| wu::controller_of(&p.metadata).is_some_and(|o| o.uid == uid))
        .collect();
    let has_fin = |p: &Pod| {
        p.metadata
            .finalizers
            .as_ref()
            .is_some_and(|f| f.iter().any(|x| x == TRACKING_FINALIZER))
    };
    let pname = |p: &Pod| p.metadata.name.clone().unwrap_or_default();
    let puid = |p: &Pod| p.metadata.uid.clone().unwrap_or_default();

    if is_finished(job) || job.metadata.deletion_timestamp.is_some() {
        out.remove_finalizer = owned
            .iter()
            .filter(|p| has_fin(p))
            .map(|p| pname(p))
            .collect();
        out.status = status;
        return out;
    }

    let policy = spec.pod_failure_policy.as_ref();
    let has_policy = policy.is_some();
    let suspended = spec.suspend == Some(true);
    let failure_target = cond_true(&status, "FailureTarget");
    let success_target = cond_true(&status, "SuccessCriteriaMet");
    let finishing = failure_target.is_some() || success_target.is_some();
    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    let completions = spec.completions;
    let parallelism = spec.parallelism.unwrap_or(1).max(0);
    let backoff_limit = spec.backoff_limit.unwrap_or(6);

    // Classify pods.
    let unc = status.uncounted_terminated_pods.clone().unwrap_or_default();
    let mut unc_succ: Vec<String> = unc.succeeded.unwrap_or_default();
    let mut unc_fail: Vec<String> = unc.failed.unwrap_or_default();
    let mut fail_job: Option<String> = None;
    let mut active: Vec<&Pod> = Vec::new();
    let mut terminating = 0i32;
    for p in &owned {
        let id = puid(p);
        let phase = wu::pod_phase(p);
        if phase == "Succeeded" {
            if has_fin(p) && !unc_succ.contains(&id) {
                unc_succ.push(id);
            }
        } else if is_failed(p, has_policy) {
            if has_fin(p) && !unc_fail.contains(&id) {
                let deleted_by_us = (suspended || finishing) && phase != "Failed";
                let action = if deleted_by_us {
                    Some(PolicyAction::Ignore)
                } else {
                    policy.and_then(|pol| match_pod_failure_policy(pol, p))
                };
                match action {
                    Some(PolicyAction::Ignore) => out.remove_finalizer.push(pname(p)),
                    Some(PolicyAction::FailJob(m)) => {
                        fail_job.get_or_insert(m);
                        unc_fail.push(id);
                    }
                    _ => {
                        unc_fail.push(id);
                    }
                }
            }
        } else if p.metadata.deletion_timestamp.is_some() {
            terminating += 1;
        } else {
            active.push(p);
        }
    }
    // Pods recorded as uncounted lose their finalizer, then are counted.
    for p in &owned {
        let id = puid(p);
        if has_fin(p) && (unc_succ.contains(&id) || unc_fail.contains(&id)) {
            out.remove_finalizer.push(pname(p));
        }
    }
    let prev_unc = old_status
        .uncounted_terminated_pods
        .clone()
        .unwrap_or_default();
    if unc_succ.len() != prev_unc.succeeded.as_ref().map_or(0, Vec::len)
        || unc_fail.len() != prev_unc.failed.as_ref().map_or(0, Vec::len)
    {
        let mut interim = status.clone();
        interim.uncounted_terminated_pods = Some(UncountedTerminatedPods {
            succeeded: Some(unc_succ.clone()),
            failed: Some(unc_fail.clone()),
        });
        out.interim_status = Some(interim);
    }
    let succeeded =
        status.succeeded.unwrap_or(0) + i32::try_from(unc_succ.len()).unwrap_or(i32::MAX);
    let failed = status.failed.unwrap_or(0) + i32::try_from(unc_fail.len()).unwrap_or(i32::MAX);
    status.succeeded = Some(succeeded);
    status.failed = Some(failed);
    status.uncounted_terminated_pods = Some(UncountedTerminatedPods {
        succeeded: Some(vec![]),
        failed: Some(vec![]),
    });

    // Completed indexes.
    let mut completed: BTreeSet<i32> = status
        .completed_indexes
        .as_deref()
        .map(parse_indexes)
        .unwrap_or_default();
    if indexed {
        let total = completions.unwrap_or(0);
        for p in owned.iter().filter(|p| wu::pod_phase(p) == "Succeeded") {
            if let Some(i) = pod_index(p).filter(|i| *i < total) {
                completed.insert(i);
            }
        }
        status.completed_indexes = Some(format_indexes(&completed));
    }

    if !suspended && status.start_time.is_none() {
        status.start_time = Some(Time(now));
    }

    // Failure.
    let mut failure: Option<(String, String)> = failure_target.as_ref().map(|c| {
        (
            c.reason.clone().unwrap_or_default(),
            c.message.clone().unwrap_or_default(),
        )
    });
    if failure.is_none() && success_target.is_none() {
        let restarts: i32 = if spec
            .template
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.as_deref())
            == Some("OnFailure")
        {
            active
                .iter()
                .filter_map(|p| p.status.as_ref()?.container_statuses.as_ref())
                .flatten()
                .map(|c| c.restart_count)
                .sum()
        } else {
            0
        };
        if let Some(m) = fail_job {
            failure = Some(("PodFailurePolicy".into(), m));
        } else if failed.saturating_add(restarts) > backoff_limit {
            failure = Some((
                "BackoffLimitExceeded".into(),
                "Job has reached the specified backoff limit".into(),
            ));
        } else if let (Some(ads), Some(start), false) = (
            spec.active_deadline_seconds,
            status.start_time.as_ref(),
            suspended,
        ) {
            let deadline = start.0.as_second().saturating_add(ads);
            if deadline <= now.as_second() {
                failure = Some((
                    "DeadlineExceeded".into(),
                    "Job was active longer than specified deadline".into(),
                ));
            } else {
                out.requeue_after = Some(Duration::from_secs(
                    u64::try_from(deadline - now.as_second()).unwrap_or(1),
                ));
            }
        }
    }
    // Success.
    let success = success_target.is_some()
        || match (indexed, completions) {
            (true, Some(c)) => i32::try_from(completed.len()).unwrap_or(i32::MAX) >= c,
            (false, Some(c)) => succeeded >= c,
            (_, None) => succeeded > 0 && active.is_empty(),
        };

    let mut delete: Vec<&Pod> = Vec::new();
    let mut create: Vec<Option<i32>> = Vec::new();
    if let Some((reason, message)) = failure {
        if failure_target.is_none() {
            set_condition(
                &mut status,
                new_condition("FailureTarget", "True", &reason, &message, now),
            );
            out.events
                .push(PlannedEvent::warning(&reason, message.clone()));
        }
        delete.extend(active.iter().copied());
        if active.is_empty() && terminating == 0 {
            set_condition(
                &mut status,
                new_condition("Failed", "True", &reason, &message, now),
            );
        }
    } else if success && !suspended {
        const MSG: &str = "Reached expected number of succeeded pods";
        if success_target.is_none() {
            set_condition(
                &mut status,
                new_condition("SuccessCriteriaMet", "True", "CompletionsReached", MSG, now),
            );
        }
        delete.extend(active.iter().copied());
        if active.is_empty() && terminating == 0 {
            set_condition(
                &mut status,
                new_condition("Complete", "True", "CompletionsReached", MSG, now),
            );
            status.completion_time = Some(Time(now));
            out.events
                .push(PlannedEvent::normal("Completed", "Job completed"));
        }
    } else if suspended {
        delete.extend(active.iter().copied());
        if cond_true(&status, "Suspended").is_none() {
            set_condition(
                &mut status,
                new_condition("Suspended", "True", "JobSuspended", "Job suspended", now),
            );
            out.events
                .push(PlannedEvent::normal("Suspended", "Job suspended"));
        }
    } else {
        if cond_true(&status, "Suspended").is_some() {
            set_condition(
                &mut status,
                new_condition("Suspended", "False", "JobResumed", "Job resumed", now),
            );
            status.start_time = Some(Time(now));
            out.events
                .push(PlannedEvent::normal("Resumed", "Job resumed"));
        }
        let mut sorted = active.clone();
        sorted.sort_by(|a, b| active_pod_order(a, b));
        if indexed {
            let total = completions.unwrap_or(0);
            let mut seen: BTreeSet<i32> = BTreeSet::new();
            let mut keep = 0i32;
            // Keep one pod per pending index (the most advanced), delete the rest.
            for p in sorted.iter().rev() {
                match pod_index(p) {
                    Some(i) if i < total && !completed.contains(&i) && seen.insert(i) => keep += 1,
                    _ => delete.push(p),
                }
            }
            let free = usize::try_from(parallelism - keep).unwrap_or(0);
            create.extend(
                (0..total)
                    .filter(|i| !completed.contains(i) && !seen.contains(i))
                    .take(free)
                    .map(Some),
            );
        } else {
            let want = match completions {
                None if succeeded > 0 => i32::try_from(active.len()).unwrap_or(i32::MAX),
                None => parallelism,
                Some(c) => (c - succeeded).clamp(0, parallelism),
            };
            let have = i32::try_from(active.len()).unwrap_or(i32::MAX);
            if have > want {
                delete.extend(
                    sorted
                        .iter()
                        .take(usize::try_from(have - want).unwrap_or(0)),
                );
            } else {
                create.extend(std::iter::repeat_n(
                    None,
                    usize::try_from(want - have).unwrap_or(0),
                ));
            }
        }
        create.truncate(MAX_CREATE_PER_SYNC);
        if !create.is_empty() {
            if let Some(wait) = remaining_backoff(&owned, policy, now) {
                create.clear();
                out.requeue_after = Some(out.requeue_after.map_or(wait, |r| r.min(wait)));
            }
        }
    }
    let deleted: BTreeSet<String> = delete.iter().map(|p| pname(p)).collect();
    let still_active: Vec<&&Pod> = active
        .iter()
        .filter(|p| !deleted.contains(&pname(p)))
        .collect();
    status.active = Some(i32::try_from(still_active.len() + create.len()).unwrap_or(i32::MAX));
    status.ready = Some(
        i32::try_from(still_active.iter().filter(|p| wu::is_pod_ready(p)).count())
            .unwrap_or(i32::MAX),
    );
    status.terminating = Some(terminating + i32::try_from(deleted.len()).unwrap_or(i32::MAX));
    out.delete = deleted.into_iter().collect();
    out.create = create;
    out.remove_finalizer.sort();
    out.remove_finalizer.dedup();
    out.status = status;
    out
}

/// Upstream's ActivePods order (the first is deleted first): unassigned, then pending,
/// then not ready, then newer.
fn active_pod_order(a: &Pod, b: &Pod) -> std::cmp::Ordering {
    let assigned = |p: &Pod| {
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_some_and(|n| !n.is_empty())
    };
    let rank = |p: &Pod| match wu::pod_phase(p) {
        "Pending" | "" => 0,
        "Unknown" => 1,
        _ => 2,
    };
    let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
    assigned(a)
        .cmp(&assigned(b))
        .then_with(|| rank(a).cmp(&rank(b)))
        .then_with(|| wu::is_pod_ready(a).cmp(&wu::is_pod_ready(b)))
        .then_with(|| created(b).cmp(&created(a)))
}

/// The pod selector of a Job (its `spec.selector`, or the uid label when the API server
/// did not generate one).
pub fn job_selector(job: &Job) -> LabelSelector {
    match job.spec.as_ref().and_then(|s| s.selector.clone()) {
        Some(s) => s,
        None => LabelSelector {
            match_labels: Some(
                [(
                    CONTROLLER_UID_LABEL.to_string(),
                    job.metadata.uid.clone().unwrap_or_default(),
                )]
                .into(),
            ),
            match_expressions: None,
        },
    }
}

/// The pod the controller creates for a Job (and completion index for Indexed Jobs).
pub fn new_pod(job: &Job, index: Option<i32>) -> Pod {
    let name = job.metadata.name.clone().unwrap_or_default();
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let template = job
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let tmeta = template.metadata.unwrap_or_default();
    let mut labels = tmeta.labels.unwrap_or_default();
    let manual = job.spec.as_ref().and_then(|s| s.manual_selector) == Some(true);
    if !manual {
        labels
            .entry(CONTROLLER_UID_LABEL.into())
            .or_insert_with(|| uid.clone());
        labels
            .entry(JOB_NAME_LABEL.into())
            .or_insert_with(|| name.clone());
    }
    let mut annotations = tmeta.annotations.unwrap_or_default();
    let mut spec = template.spec.unwrap_or_default();
    let mut generate_name = format!("{name}-");
    if let Some(i) = index {
        annotations.insert(COMPLETION_INDEX.into(), i.to_string());
        labels.insert(COMPLETION_INDEX.into(), i.to_string());
        generate_name = format!("{name}-{i}-");
        if spec.hostname.is_none() {
            spec.hostname = Some(format!("{name}-{i}"));
        }
        let env = EnvVar {
            name: "JOB_COMPLETION_INDEX".into(),
            value: None,
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    api_version: None,
                    field_path: format!("metadata.labels['{COMPLETION_INDEX}']"),
                }),
                ..Default::default()
            }),
        };
        for c in spec
            .containers
            .iter_mut()
            .chain(spec.init_containers.iter_mut().flatten())
        {
            let envs = c.env.get_or_insert_with(Vec::new);
            if !envs.iter().any(|e| e.name == env.name) {
                envs.push(env.clone());
            }
        }
    }
    let mut finalizers = tmeta.finalizers.unwrap_or_default();
    finalizers.push(TRACKING_FINALIZER.into());
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(generate_name),
            namespace: job.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            finalizers: Some(finalizers),
            owner_references: Some(vec![wu::controller_ref(&job.metadata, "batch/v1", "Job")]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

struct Ctx {
    client: kube::Client,
    events: Events,
    /// Pods from the shared informer, by controller.
    pods: OwnedCache<Pod>,
    /// Pods without a controller, by namespace (orphans a Job may adopt).
    orphans: Arc<Index<Pod>>,
    /// The shared Job store.
    jobs: Store<Job>,
    /// Pod creations, deletions and finalizer removals not yet seen in `pods`.
    expectations: Expectations,
}

async fn reconcile(job: Arc<Job>, ctx: Arc<Ctx>) -> Result<Action, ControllerError> {
    let ns = job.namespace().unwrap_or_default();
    let name = job.name_any();
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let key = format!("{ns}/{name}");
    // Decide only from a cache that shows this Job's own earlier writes (else pods
    // would be created twice, or a finished pod counted twice).
    if !ctx
        .expectations
        .satisfied(&key, |n| ctx.pods.get(&ns, n).map(MetaOf))
    {
        let left = ctx.expectations.time_left(&key).unwrap_or_default();
        return Ok(Action::requeue(left + Duration::from_millis(100)));
    }
    let uid = job.metadata.uid.clone().unwrap_or_default();
    // Adopt matching orphans and release pods that no longer match (upstream's
    // ClaimPods with the tracking finalizer); a finished Job changes no ownership.
    let selector = job_selector(&job);
    let candidates = ctx
        .pods
        .by_owner
        .get(&uid)
        .into_iter()
        .chain(ctx.orphans.get(&ns))
        .filter(|p| p.metadata.namespace.as_deref() == Some(ns.as_str()));
    let mut pods: Vec<Pod> = podutil::PodClaimer {
        owner: &job.metadata,
        api_version: "batch/v1",
        kind: "Job",
        selector: &selector,
        finalizers: &[TRACKING_FINALIZER],
        may_change: !is_finished(&job),
    }
    .claim(&pods_api, candidates)
    .await?
    .into_iter()
    .map(|p| (*p).clone())
    .collect();
    pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let now = Timestamp::now();
    let p = plan(&job, &pods, now);
    let oref = job.object_ref(&());

    let mut current = (*job).clone();
    if let Some(interim) = &p.interim_status {
        current.status = Some(interim.clone());
        current = jobs
            .replace_status(&name, &PostParams::default(), &current)
            .await?;
    }
    let by_name: BTreeMap<String, &Pod> = pods.iter().map(|p| (p.name_any(), p)).collect();
    let uid_of = |n: &str| {
        by_name
            .get(n)
            .and_then(|p| p.metadata.uid.clone())
            .unwrap_or_default()
    };
    for n in &p.remove_finalizer {
        if let Some(pod) = by_name.get(n) {
            wu::remove_finalizer(&pods_api, &pod.metadata, TRACKING_FINALIZER).await?;
            ctx.expectations.expect_finalizer_removals(
                &key,
                TRACKING_FINALIZER,
                [(n.clone(), uid_of(n))],
            );
        }
    }
    for n in &p.delete {
        match pods_api.delete(n, &Default::default()).await {
            Ok(_) => {
                ctx.expectations
                    .expect_deletions(&key, [(n.clone(), uid_of(n))]);
                ctx.events
                    .record(
                        &oref,
                        false,
                        "SuccessfulDelete",
                        format!("Deleted pod: {n}"),
                    )
                    .await
            }
            Err(e) if wu::is_not_found(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let mut created = 0;
    for idx in &p.create {
        match pods_api
            .create(&PostParams::default(), &new_pod(&job, *idx))
            .await
        {
            Ok(pod) => {
                created += 1;
                ctx.expectations.expect_creations(
                    &key,
                    [(pod.name_any(), pod.metadata.uid.clone().unwrap_or_default())],
                );
                ctx.events
                    .record(
                        &oref,
                        false,
                        "SuccessfulCreate",
                        format!("Created pod: {}", pod.name_any()),
                    )
                    .await;
            }
            Err(e) => {
                ctx.events
                    .record(&oref, true, "FailedCreate", format!("Error creating: {e}"))
                    .await;
                break;
            }
        }
    }
    let mut status = p.status.clone();
    if created < p.create.len() {
        status.active = status
            .active
            .map(|a| a - i32::try_from(p.create.len() - created).unwrap_or(0));
    }
    if current.status.as_ref() != Some(&status) {
        current.status = Some(status);
        jobs.replace_status(&name, &PostParams::default(), &current)
            .await?;
    }
    for e in &p.events {
        ctx.events
            .record(&oref, e.warning, &e.reason, e.message.clone())
            .await;
    }
    Ok(match p.requeue_after {
        Some(d) => Action::requeue(d + Duration::from_millis(100)),
        None => Action::await_change(),
    })
}

/// Whether a pod keeps the tracking finalizer although no live Job tracks it: it has no
/// controller (released, or orphaned), or its Job is gone, replaced by another of the
/// same name or finished (upstream's `syncOrphanPod`). A pod controlled by something
/// other than a batch/v1 Job keeps it (not ours to touch).
pub fn orphaned_tracking(pod: &Pod, job: Option<&Job>) -> bool {
    let has = pod
        .metadata
        .finalizers
        .as_ref()
        .is_some_and(|f| f.iter().any(|x| x == TRACKING_FINALIZER));
    if !has {
        return false;
    }
    let Some(owner) = wu::controller_of(&pod.metadata) else {
        return true;
    };
    if owner.kind != "Job" || owner.api_version != "batch/v1" {
        return false;
    }
    match job {
        Some(j) if j.metadata.uid.as_deref() == Some(owner.uid.as_str()) => is_finished(j),
        _ => true,
    }
}

async fn reconcile_pod(pod: Arc<Pod>, ctx: Arc<Ctx>) -> Result<Action, ControllerError> {
    let ns = pod.namespace().unwrap_or_default();
    let owner = wu::controller_of(&pod.metadata)
        .filter(|o| o.kind == "Job")
        .map(|o| o.name.clone());
    let job = owner.and_then(|n| ctx.jobs.get(&ObjectRef::new(&n).within(&ns)));
    if orphaned_tracking(&pod, job.as_deref()) {
        let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
        wu::remove_finalizer(&pods, &pod.metadata, TRACKING_FINALIZER).await?;
    }
    Ok(Action::await_change())
}

/// The Jobs a pod change concerns: its controlling Job, or for an orphan every Job of its
/// namespace whose selector matches it.
pub fn jobs_of_pod(pod: &Pod, jobs: &Store<Job>) -> Vec<ObjectRef<Job>> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    match wu::controller_of(&pod.metadata) {
        Some(r) if r.kind == "Job" && r.api_version == "batch/v1" => {
            vec![ObjectRef::new(&r.name).within(&ns)]
        }
        Some(_) => Vec::new(),
        None => {
            let none = BTreeMap::new();
            let labels = pod.metadata.labels.as_ref().unwrap_or(&none);
            jobs.state()
                .iter()
                .filter(|j| j.metadata.namespace.as_deref() == Some(ns.as_str()))
                .filter(|j| {
                    let sel = job_selector(j);
                    !podutil::selector_is_empty(&sel) && podutil::selector_matches(&sel, labels)
                })
                .map(|j| ObjectRef::from_obj(&**j))
                .collect()
        }
    }
}

/// Runs the Job controller until the watch ends (plus a pod watch that releases the
/// tracking finalizer of pods whose Job was deleted).
pub async fn run(
    client: kube::Client,
    informers: crate::informers::SharedInformers,
) -> Result<(), ControllerError> {
    // Subscribe before reading the stores: no change after the first list is missed.
    let job_changes = informers.subscribe::<Job>();
    let pod_changes = informers.subscribe::<Pod>();
    let orphan_changes = informers.subscribe_all::<Pod>();
    let jobs = informers.store::<Job>().await;
    let pods = informers.owned_cache::<Pod>().await;
    let orphans = informers
        .index::<Pod>(crate::informers::orphans_by_namespace)
        .await;
    let expectations = Expectations::new();
    let ctx = Arc::new(Ctx {
        events: Events::new(client.clone(), "job-controller"),
        client,
        pods: pods.clone(),
        orphans,
        jobs: jobs.clone(),
        expectations: expectations.clone(),
    });
    // A pod deleted before the cache showed it settles what its Job expected of it.
    let pod_store = pods.store.clone();
    let pod_changes = pod_changes.inspect(move |p| {
        if pod_store.get(&ObjectRef::from_obj(&**p)).is_none() {
            if let (Some(o), Some(uid)) = (
                wu::controller_of(&p.metadata).filter(|o| o.kind == "Job"),
                p.metadata.uid.as_deref(),
            ) {
                expectations.observe_gone(
                    &format!(
                        "{}/{}",
                        p.metadata.namespace.as_deref().unwrap_or_default(),
                        o.name
                    ),
                    uid,
                );
            }
        }
    });
    // A pod queues its Job; an orphan queues every Job whose selector matches it (to
    // be adopted).
    let job_store = jobs.clone();
    let triggers = vec![
        Trigger::for_each(job_changes),
        Trigger::map(pod_changes, move |p: Arc<Pod>| jobs_of_pod(&p, &job_store)),
        Trigger::all_in(&jobs),
    ];
    let main = run_controller(
        "job",
        4,
        WorkQueue::new(),
        triggers,
        for_objects(jobs, ctx.clone(), reconcile),
    );
    // Pods still holding the tracking finalizer (a released pod may have lost every
    // label, so no label narrows this).
    let job_pods = orphan_changes.filter(|p| {
        let tracked = p
            .metadata
            .finalizers
            .iter()
            .flatten()
            .any(|f| f == TRACKING_FINALIZER);
        futures_util::future::ready(tracked)
    });
    // A Job gone (or finished) looks at its pods again: their own changes may have come
    // while the Job was still cached.
    let by_owner = pods.by_owner.clone();
    let job_gone = Trigger::on_change::<Job, _, _>(&informers, move |c: &Change<Job>| {
        let job = match c {
            Change::Deleted(j) => Some(j),
            Change::Applied(j) if is_finished(j) => Some(j),
            _ => None,
        };
        job.and_then(|j| j.metadata.uid.clone())
            .map(|uid| {
                by_owner
                    .get(&uid)
                    .iter()
                    .map(|p| ObjectRef::from_obj(&**p))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    });
    let orphans = run_controller(
        "job-orphan-pods",
        2,
        WorkQueue::new(),
        vec![Trigger::for_each(job_pods), job_gone],
        for_objects(pods.store.clone(), ctx, reconcile_pod),
    );
    futures_util::future::join(main, orphans).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::{
        JobSpec, PodFailurePolicyOnExitCodesRequirement, PodFailurePolicyOnPodConditionsPattern,
        PodFailurePolicyRule,
    };
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateTerminated, ContainerStatus, PodCondition, PodStatus,
    };

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn job(completions: Option<i32>, parallelism: i32) -> Job {
        Job {
            metadata: ObjectMeta {
                name: Some("pi".into()),
                namespace: Some("default".into()),
                uid: Some("job-uid".into()),
                ..Default::default()
            },
            spec: Some(JobSpec {
                completions,
                parallelism: Some(parallelism),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn pod(name: &str, phase: &str, finished_at: i64) -> Pod {
        let mut p = new_pod(&job(None, 1), None);
        p.metadata.name = Some(name.into());
        p.metadata.uid = Some(format!("uid-{name}"));
        p.metadata.creation_timestamp = Some(Time(ts(0)));
        let terminated = matches!(phase, "Succeeded" | "Failed").then(|| ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: if phase == "Failed" { 1 } else { 0 },
                finished_at: Some(Time(ts(finished_at))),
                ..Default::default()
            }),
            ..Default::default()
        });
        p.status = Some(PodStatus {
            phase: Some(phase.into()),
            container_statuses: Some(vec![ContainerStatus {
                name: "main".into(),
                state: terminated,
                ..Default::default()
            }]),
            ..Default::default()
        });
        p
    }

    fn indexed_pod(i: i32, phase: &str) -> Pod {
        let mut p = pod(&format!("pi-{i}-{phase}"), phase, 0);
        let j = new_pod(&job(Some(3), 2), Some(i));
        p.metadata.annotations = j.metadata.annotations;
        p
    }

    /// Applies a plan as the controller would: counts and finalizers, created pods.
    fn apply(job: &mut Job, pods: &mut Vec<Pod>, p: &JobPlan, next: &mut usize) {
        job.status = Some(p.status.clone());
        for pod in pods.iter_mut() {
            if p.remove_finalizer
                .contains(pod.metadata.name.as_ref().unwrap_or(&String::new()))
            {
                pod.metadata.finalizers = Some(vec![]);
            }
        }
        pods.retain(|x| {
            !p.delete
                .contains(x.metadata.name.as_ref().unwrap_or(&String::new()))
        });
        for idx in &p.create {
            let mut np = new_pod(job, *idx);
            *next += 1;
            np.metadata.name = Some(format!("p{next}"));
            np.metadata.uid = Some(format!("uid-p{next}"));
            np.status = Some(PodStatus {
                phase: Some("Pending".into()),
                ..Default::default()
            });
            pods.push(np);
        }
    }

    fn set_phase(p: &mut Pod, phase: &str) {
        let f = pod("x", phase, 0);
        p.status = f.status;
    }

    #[test]
    fn completions_three_parallelism_two_steps() {
        let mut j = job(Some(3), 2);
        let mut pods = vec![];
        let mut n = 0;
        let p = plan(&j, &pods, ts(0));
        assert_eq!(p.create.len(), 2, "first pass starts parallelism pods");
        assert_eq!(p.status.active, Some(2));
        assert!(p.status.start_time.is_some());
        apply(&mut j, &mut pods, &p, &mut n);
        // One pod succeeds: 2 more remain to do, both run in parallel => 1 new pod.
        set_phase(&mut pods[0], "Succeeded");
        let p = plan(&j, &pods, ts(10));
        assert_eq!(
            p.interim_status
                .as_ref()
                .and_then(|s| s.uncounted_terminated_pods.as_ref())
                .and_then(|u| u.succeeded.clone()),
            Some(vec!["uid-p1".to_string()])
        );
        assert_eq!(p.remove_finalizer, vec!["p1".to_string()]);
        assert_eq!(p.status.succeeded, Some(1));
        assert_eq!(p.create.len(), 1);
        apply(&mut j, &mut pods, &p, &mut n);
        // Second succeeds: 1 remaining and 1 still active => no new pod.
        set_phase(&mut pods[1], "Succeeded");
        let p = plan(&j, &pods, ts(20));
        assert_eq!(p.status.succeeded, Some(2));
        assert!(p.create.is_empty());
        assert_eq!(p.status.active, Some(1));
        apply(&mut j, &mut pods, &p, &mut n);
        // The counted pod is not counted again.
        let p = plan(&j, &pods, ts(21));
        assert_eq!(p.status.succeeded, Some(2));
        assert!(p.interim_status.is_none());
        set_phase(&mut pods[2], "Succeeded");
        let p = plan(&j, &pods, ts(30));
        assert_eq!(p.status.succeeded, Some(3));
        let types: Vec<_> = p
            .status
            .conditions
            .iter()
            .flatten()
            .map(|c| (c.type_.as_str(), c.reason.as_deref()))
            .collect();
        assert_eq!(
            types,
            vec![
                ("SuccessCriteriaMet", Some("CompletionsReached")),
                ("Complete", Some("CompletionsReached"))
            ]
        );
        assert_eq!(p.status.completion_time, Some(Time(ts(30))));
        assert!(p
            .events
            .contains(&PlannedEvent::normal("Completed", "Job completed")));
        apply(&mut j, &mut pods, &p, &mut n);
        assert!(is_finished(&j));
        assert_eq!(plan(&j, &pods, ts(40)).create.len(), 0);
    }

    #[test]
    fn backoff_delays_recreation_and_limit_fails_job() {
        let mut j = job(Some(1), 1);
        if let Some(s) = j.spec.as_mut() {
            s.backoff_limit = Some(1);
        }
        j.status = Some(JobStatus {
            start_time: Some(Time(ts(0))),
            ..Default::default()
        });
        let pods = vec![pod("a", "Failed", 100)];
        let p = plan(&j, &pods, ts(105));
        assert_eq!(p.status.failed, Some(1));
        assert!(p.create.is_empty(), "within 10s back-off");
        assert_eq!(p.requeue_after, Some(Duration::from_secs(5)));
        let p = plan(&j, &pods, ts(111));
        assert_eq!(p.create.len(), 1);
        // Second failure: 2 > backoffLimit 1 fails the job.
        let mut pods2 = vec![pod("a", "Failed", 100), pod("b", "Failed", 120)];
        pods2[0].metadata.finalizers = Some(vec![]);
        let mut j2 = j.clone();
        if let Some(s) = j2.status.as_mut() {
            s.failed = Some(1);
        }
        let p = plan(&j2, &pods2, ts(121));
        assert_eq!(p.status.failed, Some(2));
        let c: Vec<_> = p
            .status
            .conditions
            .iter()
            .flatten()
            .map(|c| (c.type_.clone(), c.reason.clone()))
            .collect();
        assert_eq!(
            c,
            vec![
                (
                    "FailureTarget".to_string(),
                    Some("BackoffLimitExceeded".to_string())
                ),
                (
                    "Failed".to_string(),
                    Some("BackoffLimitExceeded".to_string())
                )
            ]
        );
        assert!(p
            .events
            .iter()
            .any(|e| e.warning && e.reason == "BackoffLimitExceeded"));
        assert!(p.create.is_empty());
    }

    #[test]
    fn backoff_grows_exponentially_and_is_capped() {
        let pods: Vec<Pod> = (0..3).map(|i| pod(&format!("f{i}"), "Failed", i)).collect();
        let refs: Vec<&Pod> = pods.iter().collect();
        // 3 failures: 40s after the last (t=2).
        assert_eq!(
            remaining_backoff(&refs, None, ts(2)),
            Some(Duration::from_secs(40))
        );
        let many: Vec<Pod> = (0..10)
            .map(|i| pod(&format!("f{i}"), "Failed", i))
            .collect();
        let refs: Vec<&Pod> = many.iter().collect();
        assert_eq!(remaining_backoff(&refs, None, ts(9)), Some(BACKOFF_MAX));
        // A later success resets the count.
        let mut with_success = many.clone();
        with_success.push(pod("s", "Succeeded", 20));
        let refs: Vec<&Pod> = with_success.iter().collect();
        assert_eq!(remaining_backoff(&refs, None, ts(21)), None);
    }

    #[test]
    fn deadline_exceeded_deletes_active_pods() {
        let mut j = job(Some(5), 2);
        if let Some(s) = j.spec.as_mut() {
            s.active_deadline_seconds = Some(30);
        }
        j.status = Some(JobStatus {
            start_time: Some(Time(ts(0))),
            ..Default::default()
        });
        let pods = vec![pod("a", "Running", 0)];
        let p = plan(&j, &pods, ts(10));
        assert_eq!(p.requeue_after, Some(Duration::from_secs(20)));
        let p = plan(&j, &pods, ts(30));
        assert_eq!(p.delete, vec!["a".to_string()]);
        let c = p.status.conditions.clone().unwrap_or_default();
        assert_eq!(c.len(), 1, "Failed waits for the pods to go");
        assert_eq!(c[0].type_, "FailureTarget");
        assert_eq!(c[0].reason.as_deref(), Some("DeadlineExceeded"));
    }

    #[test]
    fn indexed_job_creates_lowest_pending_indexes() {
        let mut j = job(Some(5), 2);
        if let Some(s) = j.spec.as_mut() {
            s.completion_mode = Some("Indexed".into());
        }
        let p = plan(&j, &[], ts(0));
        assert_eq!(p.create, vec![Some(0), Some(1)]);
        let pods = vec![
            indexed_pod(0, "Succeeded"),
            indexed_pod(1, "Running"),
            indexed_pod(1, "Pending"),
        ];
        let p = plan(&j, &pods, ts(1));
        assert_eq!(p.status.completed_indexes.as_deref(), Some("0"));
        assert_eq!(p.delete.len(), 1, "duplicate index 1 pod deleted");
        assert_eq!(p.create, vec![Some(2)]);
        let mut j2 = j.clone();
        j2.status = Some(JobStatus {
            completed_indexes: Some("0-2,4".into()),
            succeeded: Some(4),
            ..Default::default()
        });
        let p = plan(&j2, &[], ts(2));
        assert_eq!(p.create, vec![Some(3)]);
        let pod = new_pod(&j, Some(3));
        assert_eq!(pod.metadata.generate_name.as_deref(), Some("pi-3-"));
        assert_eq!(
            pod.spec.as_ref().and_then(|s| s.hostname.as_deref()),
            Some("pi-3")
        );
        assert_eq!(
            pod.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(COMPLETION_INDEX))
                .map(String::as_str),
            Some("3")
        );
        assert_eq!(
            pod.metadata
                .labels
                .as_ref()
                .and_then(|a| a.get(COMPLETION_INDEX))
                .map(String::as_str),
            Some("3")
        );
        assert_eq!(
            pod.metadata
                .labels
                .as_ref()
                .and_then(|a| a.get(JOB_NAME_LABEL))
                .map(String::as_str),
            Some("pi")
        );
        assert!(pod
            .metadata
            .finalizers
            .iter()
            .flatten()
            .any(|f| f == TRACKING_FINALIZER));
    }

    #[test]
    fn index_sets_format_and_parse() {
        let s = parse_indexes("1,3-5,9");
        assert_eq!(s.iter().copied().collect::<Vec<_>>(), vec![1, 3, 4, 5, 9]);
        assert_eq!(format_indexes(&s), "1,3-5,9");
        assert_eq!(format_indexes(&BTreeSet::new()), "");
    }

    fn policy(action: &str, op: &str, values: Vec<i32>) -> PodFailurePolicy {
        PodFailurePolicy {
            rules: vec![PodFailurePolicyRule {
                action: action.into(),
                on_exit_codes: Some(PodFailurePolicyOnExitCodesRequirement {
                    container_name: None,
                    operator: op.into(),
                    values,
                }),
                on_pod_conditions: None,
            }],
        }
    }

    #[test]
    fn pod_failure_policy_rules() {
        let failed = pod("a", "Failed", 1); // exit code 1
        assert!(
            matches!(match_pod_failure_policy(&policy("FailJob", "In", vec![1, 2]), &failed), Some(PolicyAction::FailJob(m)) if m.contains("exit code 1"))
        );
        assert_eq!(
            match_pod_failure_policy(&policy("FailJob", "In", vec![42]), &failed),
            None
        );
        assert!(matches!(
            match_pod_failure_policy(&policy("FailJob", "NotIn", vec![42]), &failed),
            Some(PolicyAction::FailJob(_))
        ));
        let mut disrupted = pod("b", "Failed", 1);
        if let Some(s) = disrupted.status.as_mut() {
            s.container_statuses = None;
            s.conditions = Some(vec![PodCondition {
                type_: "DisruptionTarget".into(),
                status: "True".into(),
                ..Default::default()
            }]);
        }
        let ignore = PodFailurePolicy {
            rules: vec![PodFailurePolicyRule {
                action: "Ignore".into(),
                on_exit_codes: None,
                on_pod_conditions: Some(vec![PodFailurePolicyOnPodConditionsPattern {
                    type_: "DisruptionTarget".into(),
                    status: "True".into(),
                }]),
            }],
        };
        assert_eq!(
            match_pod_failure_policy(&ignore, &disrupted),
            Some(PolicyAction::Ignore)
        );

        // In a Job: FailJob fails at once; Ignore does not count toward the backoff limit.
        let mut j = job(Some(1), 1);
        if let Some(s) = j.spec.as_mut() {
            s.pod_failure_policy = Some(policy("FailJob", "In", vec![1]));
        }
        let p = plan(&j, std::slice::from_ref(&failed), ts(5));
        assert!(p
            .status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Failed" && c.reason.as_deref() == Some("PodFailurePolicy")));
        let mut j = job(Some(1), 1);
        if let Some(s) = j.spec.as_mut() {
            s.pod_failure_policy = Some(ignore);
            s.backoff_limit = Some(0);
        }
        let p = plan(&j, &[disrupted], ts(5));
        assert_eq!(p.status.failed, Some(0));
        assert_eq!(p.remove_finalizer, vec!["b".to_string()]);
        assert_eq!(
            p.create.len(),
            1,
            "ignored failure is replaced without back-off"
        );
    }

    #[test]
    fn suspend_deletes_pods_and_resume_restarts_clock() {
        let mut j = job(Some(2), 2);
        if let Some(s) = j.spec.as_mut() {
            s.suspend = Some(true);
        }
        let pods = vec![pod("a", "Running", 0)];
        let p = plan(&j, &pods, ts(5));
        assert_eq!(p.delete, vec!["a".to_string()]);
        assert!(p.create.is_empty());
        assert!(p
            .status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Suspended"
                && c.status == "True"
                && c.reason.as_deref() == Some("JobSuspended")));
        assert!(p.status.start_time.is_none());
        j.status = Some(p.status);
        if let Some(s) = j.spec.as_mut() {
            s.suspend = Some(false);
        }
        let p = plan(&j, &[], ts(50));
        assert!(p
            .status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Suspended"
                && c.status == "False"
                && c.reason.as_deref() == Some("JobResumed")));
        assert_eq!(p.status.start_time, Some(Time(ts(50))));
        assert_eq!(p.create.len(), 2);
    }

    #[test]
    fn work_queue_job_completes_when_one_succeeds_and_rest_finish() {
        let j = job(None, 3);
        assert_eq!(plan(&j, &[], ts(0)).create.len(), 3);
        let pods = vec![pod("a", "Succeeded", 1), pod("b", "Running", 0)];
        let p = plan(&j, &pods, ts(2));
        assert!(p.create.is_empty(), "no new pods once one succeeded");
        assert!(p.status.conditions.is_none());
        let pods = vec![pod("a", "Succeeded", 1), pod("b", "Succeeded", 3)];
        let p = plan(&j, &pods, ts(4));
        assert!(p
            .status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Complete"));
    }

    #[test]
    fn finished_job_only_releases_finalizers() {
        let mut j = job(Some(1), 1);
        j.status = Some(JobStatus {
            conditions: Some(vec![new_condition(
                "Complete",
                "True",
                "CompletionsReached",
                "",
                ts(0),
            )]),
            ..Default::default()
        });
        let pods = vec![pod("a", "Succeeded", 0)];
        let p = plan(&j, &pods, ts(1));
        assert_eq!(p.remove_finalizer, vec!["a".to_string()]);
        assert!(p.create.is_empty() && p.delete.is_empty());
    }

    #[test]
    fn orphaned_pods_release_the_finalizer() {
        let p = pod("a", "Running", 0);
        let j = job(Some(1), 1);
        assert!(!orphaned_tracking(&p, Some(&j)));
        assert!(orphaned_tracking(&p, None));
        let mut other = j.clone();
        other.metadata.uid = Some("another".into());
        assert!(orphaned_tracking(&p, Some(&other)));
        let mut released = p.clone();
        released.metadata.finalizers = Some(vec![]);
        assert!(!orphaned_tracking(&released, None));
        // A released pod (no controller) and a pod of a finished Job let go of it too;
        // a pod controlled by something else keeps it.
        let mut orphan = p.clone();
        orphan.metadata.owner_references = None;
        assert!(orphaned_tracking(&orphan, None));
        let mut done = j.clone();
        done.status = Some(JobStatus {
            conditions: Some(vec![JobCondition {
                type_: "Complete".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        assert!(orphaned_tracking(&p, Some(&done)));
        let mut foreign = p.clone();
        if let Some(r) = foreign.metadata.owner_references.as_mut() {
            r[0].kind = "ReplicaSet".into();
            r[0].api_version = "apps/v1".into();
        }
        assert!(!orphaned_tracking(&foreign, None));
        // A Job being deleted releases its pods.
        let mut deleting = j.clone();
        deleting.metadata.deletion_timestamp = Some(Time(ts(0)));
        assert_eq!(
            plan(&deleting, &[p], ts(1)).remove_finalizer,
            vec!["a".to_string()]
        );
    }

    #[test]
    fn orphan_pods_queue_the_jobs_that_match_them() {
        let (writer_store, mut writer) = {
            let w = kube::runtime::reflector::store::Writer::<Job>::default();
            (w.as_reader(), w)
        };
        let mut j = job(Some(1), 1);
        j.spec.as_mut().expect("spec").selector = Some(job_selector(&j));
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(j.clone()));
        let p = pod("a", "Running", 0);
        let want = vec![ObjectRef::new("pi").within("default")];
        assert_eq!(jobs_of_pod(&p, &writer_store), want, "its controller");
        let mut orphan = p.clone();
        orphan.metadata.owner_references = None;
        assert_eq!(jobs_of_pod(&orphan, &writer_store), want, "a matching Job");
        orphan.metadata.labels = None;
        assert!(jobs_of_pod(&orphan, &writer_store).is_empty());
    }

    #[test]
    fn scale_down_parallelism_deletes_pending_first() {
        let j = job(Some(10), 1);
        let mut running = pod("run", "Running", 0);
        if let Some(s) = running.spec.as_mut() {
            s.node_name = Some("n1".into());
        }
        let pods = vec![running, pod("pend", "Pending", 0)];
        let p = plan(&j, &pods, ts(1));
        assert_eq!(p.delete, vec!["pend".to_string()]);
    }
}
