//! The CRD status the naming and establishing controllers produce.

use std::collections::HashSet;

use serde_json::{json, Map, Value};

use crate::util::{go_quote, str_at, strings_at};

fn conflict(requested: &str, accepted: &str, taken: &HashSet<String>) -> Option<String> {
    if requested == accepted || !taken.contains(requested) {
        None
    } else {
        Some(format!("{} is already in use", go_quote(requested)))
    }
}

/// Sets (or replaces) a condition, keeping `lastTransitionTime` when the
/// status does not change.
fn set_condition(conds: &mut Vec<Value>, mut cond: Value, now: &str) {
    let ty = str_at(&cond, &["type"]).to_string();
    match conds.iter_mut().find(|c| str_at(c, &["type"]) == ty) {
        Some(existing) => {
            let same = str_at(existing, &["status"]) == str_at(&cond, &["status"]);
            let time = if same {
                existing
                    .get("lastTransitionTime")
                    .cloned()
                    .unwrap_or_else(|| Value::from(now))
            } else {
                Value::from(now)
            };
            cond["lastTransitionTime"] = time;
            *existing = cond;
        }
        None => {
            cond["lastTransitionTime"] = Value::from(now);
            conds.push(cond);
        }
    }
}

fn condition(ty: &str, status: &str, reason: &str, message: &str) -> Value {
    json!({"type": ty, "status": status, "lastTransitionTime": null, "reason": reason, "message": message})
}

/// The status of `crd` after the naming controller looked at it against the
/// other CRDs (`others`; the CRD itself is skipped by name): `acceptedNames`
/// (each requested name unless another CRD of the group already accepted it),
/// `NamesAccepted` (True/`NoConflicts`, or False with `PluralConflict`,
/// `SingularConflict`, `ShortNamesConflict`, `KindConflict`,
/// `ListKindConflict`), `Established` (True/`InitialNamesAccepted` once names
/// are accepted; it stays True afterwards) and `storedVersions` (the storage
/// version added). Other status fields and conditions are kept. `now` is an
/// RFC 3339 timestamp.
pub fn crd_status(crd: &Value, others: &[Value], now: &str) -> Value {
    let name = str_at(crd, &["metadata", "name"]);
    let group = str_at(crd, &["spec", "group"]);
    let mut status = crd
        .get("status")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();

    let mut resources: HashSet<String> = HashSet::new();
    let mut kinds: HashSet<String> = HashSet::new();
    for o in others {
        if str_at(o, &["metadata", "name"]) == name || str_at(o, &["spec", "group"]) != group {
            continue;
        }
        let an = o.pointer("/status/acceptedNames").unwrap_or(&Value::Null);
        for f in ["plural", "singular"] {
            let v = str_at(an, &[f]);
            if !v.is_empty() {
                resources.insert(v.to_string());
            }
        }
        resources.extend(strings_at(an, &["shortNames"]));
        for f in ["kind", "listKind"] {
            let v = str_at(an, &[f]);
            if !v.is_empty() {
                kinds.insert(v.to_string());
            }
        }
    }

    let requested = crd.pointer("/spec/names").unwrap_or(&Value::Null);
    let accepted = status
        .get("acceptedNames")
        .cloned()
        .unwrap_or_else(|| json!({}));
    let mut new_names: Map<String, Value> = accepted.as_object().cloned().unwrap_or_default();
    let mut verdict: Option<(&str, String)> = None;

    for (f, reason, set) in [
        ("plural", "PluralConflict", &resources),
        ("singular", "SingularConflict", &resources),
    ] {
        let req = str_at(requested, &[f]);
        match conflict(req, str_at(&accepted, &[f]), set) {
            Some(msg) => verdict = Some((reason, msg)),
            None => {
                new_names.insert(f.into(), Value::from(req));
            }
        }
    }
    let req_short = strings_at(requested, &["shortNames"]);
    let acc_short = strings_at(&accepted, &["shortNames"]);
    if req_short != acc_short {
        let errs: Vec<String> = req_short
            .iter()
            .filter(|s| !acc_short.contains(s))
            .filter_map(|s| conflict(s, "", &resources))
            .collect();
        match errs.len() {
            0 => {
                new_names.insert("shortNames".into(), json!(req_short));
            }
            1 => verdict = Some(("ShortNamesConflict", errs[0].clone())),
            _ => verdict = Some(("ShortNamesConflict", format!("[{}]", errs.join(", ")))),
        }
    }
    for (f, reason) in [("kind", "KindConflict"), ("listKind", "ListKindConflict")] {
        let req = str_at(requested, &[f]);
        match conflict(req, str_at(&accepted, &[f]), &kinds) {
            Some(msg) => verdict = Some((reason, msg)),
            None => {
                new_names.insert(f.into(), Value::from(req));
            }
        }
    }
    let cats = strings_at(requested, &["categories"]);
    if cats.is_empty() {
        new_names.remove("categories");
    } else {
        new_names.insert("categories".into(), json!(cats));
    }
    if new_names
        .get("shortNames")
        .is_some_and(|s| s.as_array().is_some_and(Vec::is_empty))
    {
        new_names.remove("shortNames");
    }
    // upstream's field order
    let mut ordered = Map::new();
    for f in [
        "plural",
        "singular",
        "shortNames",
        "kind",
        "listKind",
        "categories",
    ] {
        if let Some(v) = new_names.get(f) {
            ordered.insert(f.into(), v.clone());
        }
    }

    let mut conds: Vec<Value> = status
        .get("conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let names_ok = verdict.is_none();
    let names_cond = match &verdict {
        None => condition("NamesAccepted", "True", "NoConflicts", "no conflicts found"),
        Some((reason, msg)) => condition("NamesAccepted", "False", reason, msg),
    };
    set_condition(&mut conds, names_cond, now);
    let was_established = conds
        .iter()
        .any(|c| str_at(c, &["type"]) == "Established" && str_at(c, &["status"]) == "True");
    if !was_established {
        let est = if names_ok {
            condition(
                "Established",
                "True",
                "InitialNamesAccepted",
                "the initial names have been accepted",
            )
        } else {
            condition(
                "Established",
                "False",
                "NotAccepted",
                "not all names are accepted",
            )
        };
        set_condition(&mut conds, est, now);
    }

    let mut stored = strings_at(&Value::Object(status.clone()), &["storedVersions"]);
    if let Some(sv) = crate::storage_version(crd) {
        if !stored.contains(&sv) {
            stored.push(sv);
        }
    }

    status.insert("conditions".into(), Value::Array(conds));
    status.insert("acceptedNames".into(), Value::Object(ordered));
    status.insert("storedVersions".into(), json!(stored));
    Value::Object(status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::tests::crontab_crd;

    const NOW: &str = "2024-05-01T12:00:00Z";

    fn cond<'a>(s: &'a Value, ty: &str) -> (&'a str, &'a str, &'a str) {
        let c = s["conditions"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["type"] == ty))
            .unwrap_or(&Value::Null);
        (
            str_at(c, &["status"]),
            str_at(c, &["reason"]),
            str_at(c, &["message"]),
        )
    }

    #[test]
    fn accepts_fresh_names() {
        let s = crd_status(&crontab_crd(), &[], NOW);
        assert_eq!(
            cond(&s, "NamesAccepted"),
            ("True", "NoConflicts", "no conflicts found")
        );
        assert_eq!(
            cond(&s, "Established"),
            (
                "True",
                "InitialNamesAccepted",
                "the initial names have been accepted"
            )
        );
        assert_eq!(
            s["acceptedNames"],
            json!({"plural": "crontabs", "singular": "crontab", "shortNames": ["ct"], "kind": "CronTab",
                   "listKind": "CronTabList", "categories": ["all"]})
        );
        assert_eq!(s["storedVersions"], json!(["v1"]));
        assert_eq!(s["conditions"][0]["type"], json!("NamesAccepted"));
        assert_eq!(s["conditions"][0]["lastTransitionTime"], json!(NOW));
        // the CRD itself in `others` is no conflict
        let mut me = crontab_crd();
        me["status"] = s.clone();
        let again = crd_status(&me, std::slice::from_ref(&me), "2024-05-01T13:00:00Z");
        assert_eq!(cond(&again, "NamesAccepted").0, "True");
        assert_eq!(
            again["conditions"][0]["lastTransitionTime"],
            json!(NOW),
            "unchanged status keeps its time"
        );
    }

    #[test]
    fn detects_plural_and_short_name_conflicts() {
        let mut other = crontab_crd();
        other["metadata"]["name"] = json!("crontabs2.stable.example.com");
        other["status"] = crd_status(&other, &[], NOW);
        let mut mine = crontab_crd();
        mine["metadata"]["name"] = json!("crontabs.stable.example.com");
        mine["spec"]["names"]["kind"] = json!("CronTab2");
        mine["spec"]["names"]["listKind"] = json!("CronTab2List");
        mine["spec"]["names"]["singular"] = json!("crontab2");
        mine["spec"]["names"]["shortNames"] = json!([]);
        let s = crd_status(&mine, std::slice::from_ref(&other), NOW);
        assert_eq!(
            cond(&s, "NamesAccepted"),
            ("False", "PluralConflict", "\"crontabs\" is already in use")
        );
        assert_eq!(
            cond(&s, "Established"),
            ("False", "NotAccepted", "not all names are accepted")
        );
        assert!(s["acceptedNames"].get("plural").is_none());
        assert_eq!(s["acceptedNames"]["kind"], json!("CronTab2"));

        mine["spec"]["names"]["plural"] = json!("crontabs2");
        mine["spec"]["names"]["shortNames"] = json!(["ct"]);
        let s = crd_status(&mine, std::slice::from_ref(&other), NOW);
        assert_eq!(
            cond(&s, "NamesAccepted"),
            ("False", "ShortNamesConflict", "\"ct\" is already in use")
        );

        // another group: no conflict
        other["spec"]["group"] = json!("other.example.com");
        let s = crd_status(&mine, std::slice::from_ref(&other), NOW);
        assert_eq!(cond(&s, "NamesAccepted").0, "True");
    }

    #[test]
    fn stored_versions_accumulate() {
        let mut crd = crontab_crd();
        crd["status"] = json!({"storedVersions": ["v1beta1"]});
        let s = crd_status(&crd, &[], NOW);
        assert_eq!(s["storedVersions"], json!(["v1beta1", "v1"]));
    }
}
