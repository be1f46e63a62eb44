//! The CronJob controller (upstream's `pkg/controller/cronjob`, v2): creates a Job
//! `<cronjob>-<scheduled minutes since the epoch>` at each time of a 5-field cron
//! schedule (in `spec.timeZone`, else the controller's local zone), honouring
//! `startingDeadlineSeconds`, `concurrencyPolicy` (Allow, Forbid, Replace), `suspend` and
//! the successful/failed history limits, and keeps `status.active`,
//! `lastScheduleTime` and `lastSuccessfulTime`.
//!
//! Schedules are parsed by [`parse_schedule`] (the one parser of `rk3s_core::cron`, shared
//! with validation); the decisions are in the pure [`plan`],
//! which takes `now` so tests step a fake clock.

use std::sync::Arc;
use std::time::Duration;

use jiff::tz::TimeZone;
use jiff::Timestamp;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::json;

use rk3s_runtime::{for_objects, run_controller, Action, Trigger, WorkQueue};

use crate::informers::{OwnedCache, SharedInformers};
use crate::workload_util::{self as wu, Events, PlannedEvent};
use crate::ControllerError;

/// Annotation with the scheduled time of a Job created by a CronJob (RFC 3339, in the
/// CronJob's time zone).
pub const SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

pub use rk3s_core::cron::{Schedule, ScheduleError};

/// Parses `spec.schedule` with the one cron parser ([`rk3s_core::cron`]), the same that
/// validation uses. A `CRON_TZ=`/`TZ=` prefix is refused: `spec.timeZone` is the way to
/// choose a zone (validation refuses it too).
pub fn parse_schedule(spec: &str) -> Result<Schedule, String> {
    let sched = Schedule::parse(spec).map_err(|e| e.to_string())?;
    if sched.time_zone().is_some() {
        return Err(format!(
            "CRON_TZ or TZ used in schedule {spec:?} is not supported, use spec.timeZone field instead"
        ));
    }
    Ok(sched)
}

/// The most recent schedule time in `(earliest, now]` and how many times were missed.
pub fn most_recent_schedule(
    sched: &Schedule,
    tz: &TimeZone,
    earliest: Timestamp,
    now: Timestamp,
) -> (Option<Timestamp>, u64) {
    let mut last = None;
    let mut count = 0u64;
    let mut t = earliest;
    // Bounded: a minutely schedule missed for a year is ~525,600 steps.
    for _ in 0..600_000 {
        match sched.next(t, tz) {
            Some(n) if n <= now => {
                last = Some(n);
                count += 1;
                t = n;
            }
            _ => break,
        }
    }
    (last, count)
}

/// What the controller does for a CronJob in one pass.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CronPlan {
    /// The new `status.active`.
    pub active: Vec<ObjectReference>,
    /// The new `status.lastScheduleTime`.
    pub last_schedule_time: Option<Time>,
    /// The new `status.lastSuccessfulTime`.
    pub last_successful_time: Option<Time>,
    /// Active Jobs to delete (concurrencyPolicy Replace).
    pub replace: Vec<String>,
    /// The Job to create.
    pub create: Option<Job>,
    /// Finished Jobs to delete beyond the history limits.
    pub cleanup: Vec<String>,
    /// Events to record about the CronJob.
    pub events: Vec<PlannedEvent>,
    /// When to look again (the next schedule time), if no change comes first.
    pub requeue_after: Option<Duration>,
}

fn job_finished(job: &Job) -> Option<&'static str> {
    let conds = job.status.as_ref()?.conditions.as_ref()?;
    for (t, name) in [("Complete", "Complete"), ("Failed", "Failed")] {
        if conds.iter().any(|c| c.type_ == t && c.status == "True") {
            return Some(name);
        }
    }
    None
}

fn job_ref(job: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: job.metadata.name.clone(),
        namespace: job.metadata.namespace.clone(),
        uid: job.metadata.uid.clone(),
        resource_version: job.metadata.resource_version.clone(),
        ..Default::default()
    }
}

/// The time zone of a CronJob: `spec.timeZone`, else the controller's local zone.
pub fn cronjob_time_zone(cj: &CronJob) -> Result<TimeZone, String> {
    match cj.spec.as_ref().and_then(|s| s.time_zone.as_deref()) {
        Some(name) => TimeZone::get(name).map_err(|e| e.to_string()),
        None => Ok(TimeZone::try_system().unwrap_or(TimeZone::UTC)),
    }
}

/// RFC 3339 in a zone, as Go prints it (`Z` for UTC).
fn rfc3339_in(t: Timestamp, tz: &TimeZone) -> String {
    let z = t.to_zoned(tz.clone());
    if z.offset().seconds() == 0 {
        z.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
    } else {
        z.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string()
    }
}

/// The Job a CronJob creates for a scheduled time.
pub fn job_for(cj: &CronJob, scheduled: Timestamp, tz: &TimeZone) -> Job {
    let name = format!(
        "{}-{}",
        cj.metadata.name.as_deref().unwrap_or(""),
        scheduled.as_second().div_euclid(60)
    );
    let tmpl = cj
        .spec
        .as_ref()
        .map(|s| s.job_template.clone())
        .unwrap_or_default();
    let tmeta = tmpl.metadata.unwrap_or_default();
    let mut annotations = tmeta.annotations.unwrap_or_default();
    annotations.insert(SCHEDULED_TIMESTAMP.into(), rfc3339_in(scheduled, tz));
    Job {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: cj.metadata.namespace.clone(),
            labels: tmeta.labels,
            annotations: Some(annotations),
            owner_references: Some(vec![wu::controller_ref(
                &cj.metadata,
                "batch/v1",
                "CronJob",
            )]),
            ..Default::default()
        },
        spec: tmpl.spec,
        status: None,
    }
}

fn secs_until(t: Timestamp, now: Timestamp) -> Duration {
    let ms = t.as_millisecond() - now.as_millisecond();
    Duration::from_millis(u64::try_from(ms.max(0)).unwrap_or(0)) + Duration::from_millis(100)
}

/// Decides what to do for a CronJob given the Jobs in its namespace at `now`.
pub fn plan(cj: &CronJob, jobs: &[Job], now: Timestamp) -> CronPlan {
    let mut out = CronPlan::default();
    let uid = cj.metadata.uid.clone().unwrap_or_default();
    let spec = cj.spec.clone().unwrap_or_default();
    let status = cj.status.clone().unwrap_or_default();
    out.last_schedule_time = status.last_schedule_time.clone();
    out.last_successful_time = status.last_successful_time.clone();
    let children: Vec<&Job> = jobs
        .iter()
        .filter(|j| wu::controller_of(&j.metadata).is_some_and(|o| o.uid == uid))
        .collect();
    let old_active = status.active.clone().unwrap_or_default();

    for r in &old_active {
        match children.iter().find(|j| j.metadata.uid == r.uid) {
            None => out.events.push(PlannedEvent::normal(
                "MissingJob",
                format!(
                    "Active job went missing: {}",
                    r.name.as_deref().unwrap_or("")
                ),
            )),
            Some(j) => match job_finished(j) {
                Some(cond) => {
                    out.events.push(PlannedEvent::normal(
                        "SawCompletedJob",
                        format!(
                            "Saw completed job: {}, condition: {cond}",
                            j.metadata.name.as_deref().unwrap_or("")
                        ),
                    ));
                    if cond == "Complete" {
                        if let Some(ct) = j.status.as_ref().and_then(|s| s.completion_time.clone())
                        {
                            if out.last_successful_time.as_ref().is_none_or(|l| l.0 < ct.0) {
                                out.last_successful_time = Some(ct);
                            }
                        }
                    }
                }
                // Still running: the reference stays as recorded (as upstream; no status
                // write for every change of the Job).
                None => out.active.push(r.clone()),
            },
        }
    }
    // Unfinished Jobs of ours missing from the list (e.g. created just before a crash).
    for j in &children {
        if job_finished(j).is_none() && !out.active.iter().any(|r| r.uid == j.metadata.uid) {
            out.active.push(job_ref(j));
        }
    }

    // History limits.
    let mut finished: Vec<(&Job, &str)> = children
        .iter()
        .filter_map(|j| job_finished(j).map(|c| (*j, c)))
        .collect();
    finished.sort_by_key(|(j, _)| {
        (
            j.status
                .as_ref()
                .and_then(|s| s.start_time.as_ref())
                .map(|t| t.0),
            j.metadata.creation_timestamp.as_ref().map(|t| t.0),
            j.metadata.name.clone(),
        )
    });
    for (cond, limit) in [
        ("Complete", spec.successful_jobs_history_limit),
        ("Failed", spec.failed_jobs_history_limit),
    ] {
        let Some(limit) = limit else { continue };
        let of: Vec<&Job> = finished
            .iter()
            .filter(|(_, c)| *c == cond)
            .map(|(j, _)| *j)
            .collect();
        let excess = of
            .len()
            .saturating_sub(usize::try_from(limit.max(0)).unwrap_or(0));
        out.cleanup.extend(
            of.iter()
                .take(excess)
                .filter_map(|j| j.metadata.name.clone()),
        );
    }

    if cj.metadata.deletion_timestamp.is_some() || spec.suspend == Some(true) {
        return out;
    }
    let tz = match cronjob_time_zone(cj) {
        Ok(tz) => tz,
        Err(e) => {
            out.events.push(PlannedEvent::warning(
                "UnknownTimeZone",
                format!(
                    "invalid timeZone: {:?}: {e}",
                    spec.time_zone.unwrap_or_default()
                ),
            ));
            return out;
        }
    };
    let sched = match parse_schedule(&spec.schedule) {
        Ok(s) => s,
        Err(e) => {
            out.events.push(PlannedEvent::warning(
                "UnparseableSchedule",
                format!("unparseable schedule: {:?} : {e}", spec.schedule),
            ));
            return out;
        }
    };
    let mut earliest = status
        .last_schedule_time
        .as_ref()
        .map(|t| t.0)
        .or_else(|| cj.metadata.creation_timestamp.as_ref().map(|t| t.0))
        .unwrap_or(now);
    if let Some(sds) = spec.starting_deadline_seconds {
        if let Ok(deadline) = Timestamp::from_second(now.as_second() - sds) {
            earliest = earliest.max(deadline);
        }
    }
    let (scheduled, missed) = if earliest > now {
        (None, 0)
    } else {
        most_recent_schedule(&sched, &tz, earliest, now)
    };
    // As upstream, the next time follows the most recent one (else the earliest): the
    // same as following `now` for calendar schedules, not for `@every`.
    let anchor = scheduled.unwrap_or(earliest).min(now);
    let requeue = |out: &mut CronPlan| {
        let next = sched
            .next(anchor, &tz)
            .filter(|n| *n > now)
            .or_else(|| sched.next(now, &tz));
        out.requeue_after = next.map(|n| secs_until(n, now));
    };
    if missed > 100 {
        out.events.push(PlannedEvent::warning(
            "TooManyMissedTimes",
            format!("too many missed start times: {missed}. Set or decrease .spec.startingDeadlineSeconds or check clock skew"),
        ));
    }
    let Some(scheduled) = scheduled else {
        requeue(&mut out);
        return out;
    };
    if let Some(sds) = spec.starting_deadline_seconds {
        if scheduled.as_second() + sds < now.as_second() {
            out.events.push(PlannedEvent::warning(
                "MissSchedule",
                format!(
                    "Missed scheduled time to start a job: {}",
                    wu::rfc3339(scheduled)
                ),
            ));
            requeue(&mut out);
            return out;
        }
    }
    let job = job_for(cj, scheduled, &tz);
    if children
        .iter()
        .any(|j| j.metadata.name == job.metadata.name)
    {
        requeue(&mut out);
        return out;
    }
    match spec.concurrency_policy.as_deref() {
        Some("Forbid") if !out.active.is_empty() => {
            out.events.push(PlannedEvent::normal("JobAlreadyActive", "Not starting job because prior execution is running and concurrency policy is Forbid"));
            requeue(&mut out);
            return out;
        }
        Some("Replace") => {
            for r in std::mem::take(&mut out.active) {
                if let Some(n) = r.name {
                    out.events.push(PlannedEvent::normal(
                        "SuccessfulDelete",
                        format!("Deleted job {n}"),
                    ));
                    out.replace.push(n);
                }
            }
        }
        _ => {}
    }
    out.events.push(PlannedEvent::normal(
        "SuccessfulCreate",
        format!("Created job {}", job.metadata.name.as_deref().unwrap_or("")),
    ));
    out.active.push(job_ref(&job));
    out.last_schedule_time = Some(Time(scheduled));
    out.create = Some(job);
    requeue(&mut out);
    out
}

struct Ctx {
    client: kube::Client,
    events: Events,
    /// The shared Job informer's store, indexed by controller UID.
    jobs: OwnedCache<Job>,
}

/// The Jobs a CronJob controls, from the shared cache; an active Job the cache does not
/// show yet (just created) is confirmed with the API server, as upstream does, so a slow
/// cache does not make it "missing".
async fn children_of(
    cj: &CronJob,
    ctx: &Ctx,
    jobs_api: &Api<Job>,
) -> Result<Vec<Job>, ControllerError> {
    let ns = cj.namespace().unwrap_or_default();
    let uid = cj.metadata.uid.clone().unwrap_or_default();
    let mut jobs: Vec<Job> = ctx
        .jobs
        .by_owner
        .get(&uid)
        .into_iter()
        .filter(|j| j.metadata.namespace.as_deref() == Some(ns.as_str()))
        .map(|j| (*j).clone())
        .collect();
    let active = cj
        .status
        .as_ref()
        .and_then(|s| s.active.clone())
        .unwrap_or_default();
    for r in active {
        if jobs.iter().any(|j| j.metadata.uid == r.uid) {
            continue;
        }
        let Some(name) = r.name.as_deref() else {
            continue;
        };
        if let Some(j) = jobs_api.get_opt(name).await? {
            if j.metadata.uid == r.uid {
                jobs.push(j);
            }
        }
    }
    Ok(jobs)
}

async fn reconcile(cj: Arc<CronJob>, ctx: Arc<Ctx>) -> Result<Action, ControllerError> {
    let ns = cj.namespace().unwrap_or_default();
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let cjs: Api<CronJob> = Api::namespaced(ctx.client.clone(), &ns);
    let jobs = children_of(&cj, &ctx, &jobs_api).await?;
    let now = Timestamp::now();
    let mut p = plan(&cj, &jobs, now);
    let oref = cj.object_ref(&());
    for n in &p.replace {
        wu::delete_background(&jobs_api, n).await?;
    }
    if let Some(job) = p.create.take() {
        match jobs_api.create(&PostParams::default(), &job).await {
            Ok(created) => {
                if let Some(r) = p.active.last_mut() {
                    *r = job_ref(&created);
                }
            }
            Err(e) if wu::is_conflict(&e) => {
                // Created by an earlier pass the cache has not shown yet: track that Job if
                // it is ours, else do not claim it.
                let existing = match job.metadata.name.as_deref() {
                    Some(n) => jobs_api.get_opt(n).await?,
                    None => None,
                };
                match existing.filter(|j| {
                    wu::controller_of(&j.metadata)
                        .is_some_and(|o| Some(&o.uid) == cj.metadata.uid.as_ref())
                }) {
                    Some(j) => {
                        if let Some(r) = p.active.last_mut() {
                            *r = job_ref(&j);
                        }
                    }
                    None => {
                        p.active.pop();
                    }
                }
                p.events.retain(|e| e.reason != "SuccessfulCreate");
            }
            Err(e) => {
                ctx.events
                    .record(
                        &oref,
                        true,
                        "FailedCreate",
                        format!("Error creating job: {e}"),
                    )
                    .await;
                return Err(e.into());
            }
        }
    }
    for e in &p.events {
        ctx.events
            .record(&oref, e.warning, &e.reason, e.message.clone())
            .await;
    }
    let old = cj.status.clone().unwrap_or_default();
    let active = (!p.active.is_empty()).then(|| p.active.clone());
    if old.active != active
        || old.last_schedule_time != p.last_schedule_time
        || old.last_successful_time != p.last_successful_time
    {
        // On the resourceVersion this plan was made from: a pass that ran on a CronJob
        // the cache had not yet updated gets a conflict (and is retried) instead of
        // overwriting a newer status, as upstream's UpdateStatus.
        let patch = json!({"metadata": {"resourceVersion": cj.metadata.resource_version}, "status": {
            "active": active,
            "lastScheduleTime": p.last_schedule_time.as_ref().map(|t| wu::rfc3339(t.0)),
            "lastSuccessfulTime": p.last_successful_time.as_ref().map(|t| wu::rfc3339(t.0)),
        }});
        cjs.patch_status(
            &cj.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await?;
    }
    for n in &p.cleanup {
        wu::delete_background(&jobs_api, n).await?;
        ctx.events
            .record(&oref, false, "SuccessfulDelete", format!("Deleted job {n}"))
            .await;
    }
    Ok(match p.requeue_after {
        Some(d) => Action::requeue(d),
        None => Action::await_change(),
    })
}

/// Runs the CronJob controller until the watches end (CronJobs and Jobs from the shared
/// informers).
pub async fn run(client: kube::Client, informers: SharedInformers) -> Result<(), ControllerError> {
    // Subscribe before reading the stores: no change after the first list is missed.
    let cj_changes = informers.subscribe::<CronJob>();
    let job_changes = informers.subscribe::<Job>();
    let cjs = informers.store::<CronJob>().await;
    let jobs = informers.owned_cache::<Job>().await;
    let ctx = Arc::new(Ctx {
        events: Events::new(client.clone(), "cronjob-controller"),
        client,
        jobs,
    });
    let triggers = vec![
        Trigger::for_each(cj_changes),
        Trigger::owners(job_changes),
        // The CronJobs listed before this controller subscribed.
        Trigger::all_in(&cjs),
    ];
    run_controller(
        "cronjob",
        4,
        WorkQueue::new(),
        triggers,
        for_objects(cjs, ctx, reconcile),
    )
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::{CronJobSpec, CronJobStatus, JobCondition, JobStatus};

    fn utc(s: &str) -> Timestamp {
        s.parse().unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn cronjob(schedule: &str) -> CronJob {
        CronJob {
            metadata: ObjectMeta {
                name: Some("hello".into()),
                namespace: Some("default".into()),
                uid: Some("cj-uid".into()),
                creation_timestamp: Some(Time(utc("2024-01-01T00:00:00Z"))),
                ..Default::default()
            },
            spec: Some(CronJobSpec {
                schedule: schedule.into(),
                time_zone: Some("UTC".into()),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn child(cj: &CronJob, at: &str, finished: Option<&str>) -> Job {
        let mut j = job_for(cj, utc(at), &TimeZone::UTC);
        j.metadata.uid = Some(format!("uid-{}", j.metadata.name.as_deref().unwrap_or("")));
        j.status = Some(JobStatus {
            start_time: Some(Time(utc(at))),
            completion_time: finished.filter(|c| *c == "Complete").map(|_| Time(utc(at))),
            conditions: finished.map(|c| {
                vec![JobCondition {
                    type_: c.into(),
                    status: "True".into(),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        });
        j
    }

    #[test]
    fn creates_job_for_most_recent_time_with_name_and_annotation() {
        let mut cj = cronjob("*/5 * * * *");
        if let Some(s) = cj.spec.as_mut() {
            s.time_zone = Some("Europe/Paris".into());
        }
        let now = utc("2024-01-01T00:12:00Z");
        let p = plan(&cj, &[], now);
        let job = p.create.clone().unwrap_or_default();
        let scheduled = utc("2024-01-01T00:10:00Z");
        assert_eq!(
            job.metadata.name,
            Some(format!("hello-{}", scheduled.as_second() / 60))
        );
        assert_eq!(
            job.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(SCHEDULED_TIMESTAMP))
                .map(String::as_str),
            Some("2024-01-01T01:10:00+01:00")
        );
        assert_eq!(p.last_schedule_time, Some(Time(scheduled)));
        assert_eq!(p.active.len(), 1);
        assert_eq!(p.requeue_after, Some(Duration::from_millis(180_100)));
        // Nothing due between schedule times.
        let mut cj2 = cj.clone();
        cj2.status = Some(CronJobStatus {
            last_schedule_time: Some(Time(scheduled)),
            ..Default::default()
        });
        let p = plan(&cj2, &[], utc("2024-01-01T00:14:59Z"));
        assert!(p.create.is_none());
        assert_eq!(p.requeue_after, Some(Duration::from_millis(1_100)));
    }

    #[test]
    fn starting_deadline_skips_old_times() {
        let mut cj = cronjob("0 * * * *");
        cj.status = Some(CronJobStatus {
            last_schedule_time: Some(Time(utc("2024-01-01T00:00:00Z"))),
            ..Default::default()
        });
        // 5 hours later: without a deadline the 05:00 run starts (and 4 were missed).
        let now = utc("2024-01-01T05:10:00Z");
        let p = plan(&cj, &[], now);
        assert_eq!(
            p.last_schedule_time,
            Some(Time(utc("2024-01-01T05:00:00Z")))
        );
        // A 5-minute starting deadline: 05:00 is 10 minutes late => no Job.
        if let Some(s) = cj.spec.as_mut() {
            s.starting_deadline_seconds = Some(300);
        }
        let p = plan(&cj, &[], now);
        assert!(p.create.is_none());
        assert_eq!(
            p.requeue_after,
            Some(Duration::from_millis(50 * 60_000 + 100))
        );
        let p = plan(&cj, &[], utc("2024-01-01T05:04:00Z"));
        assert!(p.create.is_some());
        // Too many missed times are reported.
        let mut cj = cronjob("* * * * *");
        cj.status = Some(CronJobStatus {
            last_schedule_time: Some(Time(utc("2024-01-01T00:00:00Z"))),
            ..Default::default()
        });
        let p = plan(&cj, &[], utc("2024-01-01T05:00:00Z"));
        assert!(p.events.iter().any(|e| e.reason == "TooManyMissedTimes"));
        assert_eq!(
            p.last_schedule_time,
            Some(Time(utc("2024-01-01T05:00:00Z")))
        );
    }

    #[test]
    fn concurrency_policies() {
        let mut cj = cronjob("*/10 * * * *");
        let running = child(&cj, "2024-01-01T00:00:00Z", None);
        cj.status = Some(CronJobStatus {
            active: Some(vec![job_ref(&running)]),
            last_schedule_time: Some(Time(utc("2024-01-01T00:00:00Z"))),
            ..Default::default()
        });
        let now = utc("2024-01-01T00:10:05Z");
        // Allow: a second Job runs beside the first.
        let p = plan(&cj, std::slice::from_ref(&running), now);
        assert!(p.create.is_some());
        assert_eq!(p.active.len(), 2);
        // Forbid: skipped while one is active.
        if let Some(s) = cj.spec.as_mut() {
            s.concurrency_policy = Some("Forbid".into());
        }
        let p = plan(&cj, std::slice::from_ref(&running), now);
        assert!(p.create.is_none());
        assert!(p.events.iter().any(|e| e.reason == "JobAlreadyActive"));
        // Forbid with the previous Job finished: runs.
        let done = child(&cj, "2024-01-01T00:00:00Z", Some("Complete"));
        let p = plan(&cj, std::slice::from_ref(&done), now);
        assert!(p.create.is_some());
        assert_eq!(p.active.len(), 1);
        assert_eq!(
            p.last_successful_time,
            Some(Time(utc("2024-01-01T00:00:00Z")))
        );
        assert!(p.events.iter().any(|e| e.reason == "SawCompletedJob"
            && e.message
                == format!(
                    "Saw completed job: {}, condition: Complete",
                    done.metadata.name.as_deref().unwrap_or("")
                )));
        // Replace: the active one is deleted.
        if let Some(s) = cj.spec.as_mut() {
            s.concurrency_policy = Some("Replace".into());
        }
        let p = plan(&cj, std::slice::from_ref(&running), now);
        assert_eq!(
            p.replace,
            vec![running.metadata.name.clone().unwrap_or_default()]
        );
        assert_eq!(p.active.len(), 1);
        assert!(p.create.is_some());
        // Suspended: nothing.
        if let Some(s) = cj.spec.as_mut() {
            s.suspend = Some(true);
        }
        let p = plan(&cj, std::slice::from_ref(&running), now);
        assert!(p.create.is_none() && p.replace.is_empty());
    }

    #[test]
    fn running_job_keeps_its_recorded_reference() {
        let mut cj = cronjob("*/10 * * * *");
        let mut running = child(&cj, "2024-01-01T00:00:00Z", None);
        running.metadata.resource_version = Some("5".into());
        let recorded = job_ref(&running);
        cj.status = Some(CronJobStatus {
            active: Some(vec![recorded.clone()]),
            last_schedule_time: Some(Time(utc("2024-01-01T00:00:00Z"))),
            ..Default::default()
        });
        // The Job's status changed (a newer resourceVersion): the CronJob's status does not.
        running.metadata.resource_version = Some("9".into());
        let p = plan(
            &cj,
            std::slice::from_ref(&running),
            utc("2024-01-01T00:05:00Z"),
        );
        assert_eq!(p.active, vec![recorded]);
        assert!(p.create.is_none() && p.events.is_empty());
    }

    #[test]
    fn history_limits_delete_oldest_finished() {
        let mut cj = cronjob("0 * * * *");
        if let Some(s) = cj.spec.as_mut() {
            s.successful_jobs_history_limit = Some(2);
            s.failed_jobs_history_limit = Some(1);
        }
        let jobs = vec![
            child(&cj, "2024-01-01T01:00:00Z", Some("Complete")),
            child(&cj, "2024-01-01T02:00:00Z", Some("Complete")),
            child(&cj, "2024-01-01T03:00:00Z", Some("Complete")),
            child(&cj, "2024-01-01T04:00:00Z", Some("Failed")),
            child(&cj, "2024-01-01T05:00:00Z", Some("Failed")),
            child(&cj, "2024-01-01T06:00:00Z", None),
        ];
        let p = plan(&cj, &jobs, utc("2024-01-01T06:30:00Z"));
        let name = |at: &str| format!("hello-{}", utc(at).as_second() / 60);
        assert_eq!(
            p.cleanup,
            vec![name("2024-01-01T01:00:00Z"), name("2024-01-01T04:00:00Z")]
        );
        // The unfinished child is adopted into the active list.
        assert!(p
            .active
            .iter()
            .any(|r| r.name == Some(name("2024-01-01T06:00:00Z"))));
    }

    #[test]
    fn every_schedule_gets_a_next_time_and_runs() {
        // validation admits `@every 5m`; the controller must run it (it did not)
        let cj = cronjob("@every 5m");
        let p = plan(&cj, &[], utc("2024-01-01T00:03:00Z"));
        assert!(p.create.is_none());
        assert!(p.events.is_empty(), "{:?}", p.events);
        // next time: creation (00:00) + 5m, so requeue in 2 minutes
        assert_eq!(p.requeue_after, Some(Duration::from_millis(120_100)));
        let p = plan(&cj, &[], utc("2024-01-01T00:05:30Z"));
        let scheduled = utc("2024-01-01T00:05:00Z");
        assert_eq!(
            p.create.and_then(|j| j.metadata.name),
            Some(format!("hello-{}", scheduled.as_second() / 60))
        );
        assert_eq!(p.last_schedule_time, Some(Time(scheduled)));
        assert_eq!(p.requeue_after, Some(Duration::from_millis(270_100)));
        assert!(parse_schedule("CRON_TZ=UTC @every 5m").is_err());
    }

    #[test]
    fn bad_schedule_and_time_zone_are_reported() {
        let p = plan(&cronjob("not a schedule"), &[], utc("2024-01-01T00:00:00Z"));
        assert!(p
            .events
            .iter()
            .any(|e| e.warning && e.reason == "UnparseableSchedule"));
        let mut cj = cronjob("* * * * *");
        if let Some(s) = cj.spec.as_mut() {
            s.time_zone = Some("Mars/Olympus".into());
        }
        let p = plan(&cj, &[], utc("2024-01-01T00:00:00Z"));
        assert!(p
            .events
            .iter()
            .any(|e| e.warning && e.reason == "UnknownTimeZone"));
        assert!(p.create.is_none());
    }
}
