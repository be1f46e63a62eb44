//! batch/v1: Job and CronJob.

use crate::meta::{selector_matches, validate_label_selector};
use crate::pod::validate_pod_template_spec;
use crate::util::*;
use serde_json::{json, Value};

/// Job.
pub(crate) fn validate_job(obj: &Value, old: Option<&Value>, errs: &mut Errs) {
    let spec = get(Some(obj), "spec");
    validate_job_spec(spec, "spec", errs);
    if let Some(old) = old {
        let os = get(Some(old), "spec");
        for k in [
            "selector",
            "completionMode",
            "podFailurePolicy",
            "backoffLimitPerIndex",
        ] {
            immutable(errs, get(spec, k), get(os, k), &child("spec", k));
        }
        if gstr(spec, "completionMode") != "Indexed" {
            immutable(
                errs,
                get(spec, "completions"),
                get(os, "completions"),
                "spec.completions",
            );
        }
        // The template may only change while the job is suspended and never started.
        let suspended =
            gbool(spec, "suspend") && get(get(Some(old), "status"), "startTime").is_none();
        if !suspended {
            immutable(
                errs,
                get(spec, "template"),
                get(os, "template"),
                "spec.template",
            );
        }
    }
}

/// JobSpec rules at `path` (`spec` or `spec.jobTemplate.spec`).
pub(crate) fn validate_job_spec(spec: Option<&Value>, path: &str, errs: &mut Errs) {
    for k in [
        "parallelism",
        "completions",
        "backoffLimit",
        "ttlSecondsAfterFinished",
    ] {
        nonnegative(errs, spec, k, path);
    }
    if let Some(n) = gint(spec, "activeDeadlineSeconds") {
        if n <= 0 {
            invalid(
                errs,
                &child(path, "activeDeadlineSeconds"),
                json!(n),
                "must be greater than 0",
            );
        }
    }
    match gstr(spec, "completionMode") {
        "" | "NonIndexed" => {}
        "Indexed" => {
            if gint(spec, "completions").is_none() {
                required(
                    errs,
                    &child(path, "completions"),
                    "when completion mode is Indexed",
                );
            }
        }
        other => not_supported(
            errs,
            &child(path, "completionMode"),
            json!(other),
            &["NonIndexed", "Indexed"],
        ),
    }
    if let Some(p) = get(spec, "podReplacementPolicy") {
        let ok = ["TerminatingOrFailed", "Failed"];
        if !p.as_str().is_some_and(|s| ok.contains(&s)) {
            not_supported(errs, &child(path, "podReplacementPolicy"), p.clone(), &ok);
        }
    }
    let tmpl = get(spec, "template");
    if let Some(sel) = get(spec, "selector") {
        validate_label_selector(sel, &child(path, "selector"), errs);
        let labels = get(get(tmpl, "metadata"), "labels");
        if !selector_matches(sel, labels) {
            invalid(
                errs,
                &child(&child(&child(path, "template"), "metadata"), "labels"),
                labels.cloned().unwrap_or(json!({})),
                "`selector` does not match template `labels`",
            );
        }
    }
    let tp = child(path, "template");
    validate_pod_template_spec(tmpl, &tp, errs);
    let rp = gstr(get(tmpl, "spec"), "restartPolicy");
    if rp != "OnFailure" && rp != "Never" {
        not_supported(
            errs,
            &child(&child(&tp, "spec"), "restartPolicy"),
            json!(rp),
            &["OnFailure", "Never"],
        );
    }
}

/// CronJob.
pub(crate) fn validate_cron_job(obj: &Value, _old: Option<&Value>, errs: &mut Errs) {
    let name = gstr(get(Some(obj), "metadata"), "name");
    if name.len() > 52 {
        invalid(
            errs,
            "metadata.name",
            json!(name),
            "must be no more than 52 characters",
        );
    }
    let spec = get(Some(obj), "spec");
    let schedule = gstr(spec, "schedule");
    if schedule.is_empty() {
        required(errs, "spec.schedule", "");
    } else {
        if schedule.contains("TZ") {
            invalid(
                errs,
                "spec.schedule",
                json!(schedule),
                "cannot use TZ or CRON_TZ in schedule, use timeZone field instead",
            );
        }
        if let Err(m) = check_cron(schedule) {
            invalid(errs, "spec.schedule", json!(schedule), m);
        }
    }
    check_enum(
        errs,
        spec,
        "concurrencyPolicy",
        "spec",
        &["Allow", "Forbid", "Replace"],
        true,
    );
    for k in [
        "startingDeadlineSeconds",
        "successfulJobsHistoryLimit",
        "failedJobsHistoryLimit",
    ] {
        nonnegative(errs, spec, k, "spec");
    }
    let tz = gstr(spec, "timeZone");
    if get(spec, "timeZone").is_some() && (tz.is_empty() || tz.contains(' ') || tz.starts_with('/'))
    {
        invalid(errs, "spec.timeZone", json!(tz), "unknown time zone");
    }
    let jt = get(spec, "jobTemplate");
    crate::meta::validate_template_meta(get(jt, "metadata"), "spec.jobTemplate.metadata", errs);
    validate_job_spec(get(jt, "spec"), "spec.jobTemplate.spec", errs);
}

/// Checks a schedule with the one cron parser ([`rk3s_core::cron`]); the message is
/// robfig/cron's, as upstream's.
fn check_cron(s: &str) -> Result<(), String> {
    rk3s_core::Schedule::parse(s)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{apply_defaults, validate_create, validate_update};

    fn job(restart: &str) -> Value {
        let mut j = json!({"metadata": {"name": "j", "namespace": "d"}, "spec": {"template": {"spec": {
            "containers": [{"name": "c", "image": "busybox"}], "restartPolicy": restart}}}});
        apply_defaults("batch", "v1", "Job", &mut j);
        j
    }

    #[test]
    fn job_restart_policy() {
        assert!(validate_create("batch", "v1", "Job", true, &job("Never")).is_empty());
        let e: Vec<String> = validate_create("batch", "v1", "Job", true, &job("Always"))
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(e, vec!["spec.template.spec.restartPolicy: Unsupported value: \"Always\": supported values: \"OnFailure\", \"Never\""]);
    }

    #[test]
    fn job_template_immutable() {
        let old = job("Never");
        let mut new = old.clone();
        new["spec"]["template"]["spec"]["containers"][0]["image"] = json!("other");
        let e = validate_update("batch", "v1", "Job", true, &new, &old);
        assert_eq!(e.len(), 1);
        assert!(e[0]
            .to_string()
            .starts_with("spec.template: Invalid value: "));
        assert!(e[0].to_string().ends_with(": field is immutable"));
    }

    #[test]
    fn cron_schedules() {
        assert!(check_cron("*/5 * * * *").is_ok());
        assert!(check_cron("0 3 * * mon-fri").is_ok());
        assert!(check_cron("@hourly").is_ok());
        assert!(check_cron("@every 5m").is_ok());
        assert_eq!(
            check_cron("* * *"),
            Err("expected exactly 5 fields, found 3: [* * *]".to_string())
        );
        assert!(check_cron("61 * * * *").is_err());
        assert!(check_cron("@sometimes").is_err());
        // one parser with the controller: what validation admits, the controller runs
        assert_eq!(
            check_cron("0 0 * * 7"),
            Err("end of range (7) above maximum (6): 7".to_string())
        );
        assert!(check_cron("CRON_TZ=UTC 0 * * * *").is_ok());
        let mut c = json!({"metadata": {"name": "c", "namespace": "d"}, "spec": {"schedule": "bad", "jobTemplate": {"spec": {"template": {"spec": {
            "containers": [{"name": "c", "image": "busybox"}], "restartPolicy": "OnFailure"}}}}}});
        apply_defaults("batch", "v1", "CronJob", &mut c);
        let e = validate_create("batch", "v1", "CronJob", true, &c);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].field, "spec.schedule");
        c["spec"]["schedule"] = json!("0 * * * *");
        assert!(validate_create("batch", "v1", "CronJob", true, &c).is_empty());
    }
}
