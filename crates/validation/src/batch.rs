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

/// A basic cron check: five fields of numbers, ranges, steps, lists, names or `*`/`?`,
/// or one of the `@` descriptors.
fn check_cron(s: &str) -> Result<(), String> {
    let s = s.trim();
    if let Some(d) = s.strip_prefix('@') {
        return match d {
            "yearly" | "annually" | "monthly" | "weekly" | "daily" | "midnight" | "hourly" => {
                Ok(())
            }
            _ if d.starts_with("every ") => {
                let dur = d["every ".len()..].trim();
                if !dur.is_empty()
                    && dur.chars().all(|c| c.is_ascii_alphanumeric() || c == '.')
                    && dur.chars().any(|c| c.is_ascii_digit())
                {
                    Ok(())
                } else {
                    Err(format!(
                        "failed to parse duration @every {dur}: time: invalid duration {}",
                        crate::errors::go_quote(dur)
                    ))
                }
            }
            _ => Err(format!("unrecognized descriptor: @{d}")),
        };
    }
    let fields: Vec<&str> = s.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(format!(
            "expected exactly 5 fields, found {}: [{}]",
            fields.len(),
            fields.join(" ")
        ));
    }
    let ranges = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)];
    for (f, (lo, hi)) in fields.iter().zip(ranges) {
        for part in f.split(',') {
            let (range, step) = match part.split_once('/') {
                Some((r, st)) => (r, Some(st)),
                None => (part, None),
            };
            if let Some(st) = step {
                if st.parse::<u32>().map_or(true, |n| n == 0) {
                    return Err(format!(
                        "failed to parse int from {st}: strconv.Atoi: parsing {}: invalid syntax",
                        crate::errors::go_quote(st)
                    ));
                }
            }
            if range == "*" || range == "?" {
                continue;
            }
            let bounds: Vec<&str> = range.split('-').collect();
            if bounds.len() > 2 {
                return Err(format!("too many hyphens: {part}"));
            }
            for b in bounds {
                let n = match b.parse::<i64>() {
                    Ok(n) => n,
                    Err(_) => match name_value(b) {
                        Some(n) => n,
                        None => {
                            return Err(format!("failed to parse int from {b}: strconv.Atoi: parsing {}: invalid syntax", crate::errors::go_quote(b)))
                        }
                    },
                };
                if n < lo || n > hi {
                    return Err(if n < lo {
                        format!("beginning of range ({n}) below minimum ({lo}): {part}")
                    } else {
                        format!("end of range ({n}) above maximum ({hi}): {part}")
                    });
                }
            }
        }
    }
    Ok(())
}

fn name_value(s: &str) -> Option<i64> {
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
    let l = s.to_ascii_lowercase();
    MONTHS
        .iter()
        .position(|m| *m == l)
        .map(|i| i as i64 + 1)
        .or_else(|| DAYS.iter().position(|d| *d == l).map(|i| i as i64))
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
