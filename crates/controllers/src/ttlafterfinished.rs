//! The TTL-after-finished controller (upstream's `pkg/controller/ttlafterfinished`):
//! deletes a finished Job (a true `Complete` or `Failed` condition) once
//! `spec.ttlSecondsAfterFinished` seconds have passed since it finished, with
//! propagation policy Background and a precondition on its uid.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, DeleteParams, Preconditions};
use kube::runtime::reflector::ObjectRef;
use kube::ResourceExt;

use rk3s_runtime::{for_objects, run_controller, Action, Trigger, WorkQueue};

use crate::workload_util as wu;
use crate::ControllerError;

/// When a finished Job with a TTL expires: its finish time (the `Complete`/`Failed`
/// condition's transition time, else `completionTime`) plus the TTL. None when the Job
/// has no TTL or is not finished.
pub fn expires_at(job: &Job) -> Option<Timestamp> {
    let ttl = job.spec.as_ref()?.ttl_seconds_after_finished?;
    let status = job.status.as_ref()?;
    let cond = status
        .conditions
        .as_ref()?
        .iter()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")?;
    let finished = cond
        .last_transition_time
        .as_ref()
        .or(status.completion_time.as_ref())?
        .0;
    Timestamp::from_second(finished.as_second().saturating_add(i64::from(ttl))).ok()
}

/// What to do with a Job at `now`: delete it (Some(None)), look again after a while
/// (Some(Some(d))), or nothing (None).
pub fn decide(job: &Job, now: Timestamp) -> Option<Option<Duration>> {
    if job.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let at = expires_at(job)?;
    let left = at.as_millisecond() - now.as_millisecond();
    if left <= 0 {
        Some(None)
    } else {
        Some(Some(Duration::from_millis(
            u64::try_from(left).unwrap_or(0),
        )))
    }
}

struct Ctx {
    client: kube::Client,
}

async fn reconcile(job: Arc<Job>, ctx: Arc<Ctx>) -> Result<Action, ControllerError> {
    match decide(&job, Timestamp::now()) {
        None => Ok(Action::await_change()),
        Some(Some(d)) => Ok(Action::requeue(d + Duration::from_millis(100))),
        Some(None) => {
            let api: Api<Job> =
                Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: job.metadata.uid.clone(),
                    resource_version: None,
                }),
                ..DeleteParams::background()
            };
            tracing::debug!(job = %job.name_any(), "ttl-after-finished: deleting expired job");
            wu::ignore_not_found(api.delete(&job.name_any(), &dp).await)?;
            Ok(Action::await_change())
        }
    }
}

/// Runs the TTL-after-finished controller until the watch ends (Jobs from the shared
/// informer).
pub async fn run(
    client: kube::Client,
    informers: crate::informers::SharedInformers,
) -> Result<(), ControllerError> {
    // Subscribe before reading the store: no change after the first list is missed.
    let changes = informers.subscribe::<Job>();
    let jobs = informers.store::<Job>().await;
    let ctx = Arc::new(Ctx { client });
    // Only Jobs with a TTL are this controller's business (upstream's `needsCleanup`).
    let with_ttl = changes.filter(|j| futures_util::future::ready(has_ttl(j)));
    let initial = jobs
        .state()
        .into_iter()
        .filter(|j| has_ttl(j))
        .map(|j| ObjectRef::from_obj(&*j))
        .collect::<Vec<_>>();
    let triggers = vec![
        Trigger::for_each(with_ttl),
        // The Jobs listed before this controller subscribed.
        Trigger::from_stream(futures_util::stream::iter(initial)),
    ];
    run_controller(
        "ttlafterfinished",
        2,
        WorkQueue::new(),
        triggers,
        for_objects(jobs, ctx, reconcile),
    )
    .await;
    Ok(())
}

fn has_ttl(job: &Job) -> bool {
    job.spec
        .as_ref()
        .is_some_and(|s| s.ttl_seconds_after_finished.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::{JobCondition, JobSpec, JobStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn job(ttl: Option<i32>, cond: Option<&str>) -> Job {
        Job {
            spec: Some(JobSpec {
                ttl_seconds_after_finished: ttl,
                ..Default::default()
            }),
            status: Some(JobStatus {
                conditions: cond.map(|c| {
                    vec![JobCondition {
                        type_: c.into(),
                        status: "True".into(),
                        last_transition_time: Some(Time(
                            Timestamp::from_second(1000).unwrap_or(Timestamp::UNIX_EPOCH),
                        )),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    #[test]
    fn deletes_finished_jobs_after_ttl() {
        assert_eq!(
            decide(&job(Some(100), Some("Complete")), at(1050)),
            Some(Some(Duration::from_secs(50)))
        );
        assert_eq!(
            decide(&job(Some(100), Some("Complete")), at(1100)),
            Some(None)
        );
        assert_eq!(decide(&job(Some(0), Some("Failed")), at(1000)), Some(None));
        assert_eq!(
            decide(&job(Some(100), None), at(5000)),
            None,
            "running jobs stay"
        );
        assert_eq!(
            decide(&job(None, Some("Complete")), at(5000)),
            None,
            "no TTL, no deletion"
        );
        assert_eq!(decide(&job(Some(100), Some("Suspended")), at(5000)), None);
    }
}
