//! The `PodSecurity` admission plugin (upstream
//! `staging/src/k8s.io/pod-security-admission`): the Pod Security Standards
//! levels `privileged`, `baseline` and `restricted`, chosen per namespace by
//! the labels `pod-security.kubernetes.io/{enforce,audit,warn}` and
//! `pod-security.kubernetes.io/{enforce,audit,warn}-version`.
//!
//! Pods are enforced; pod templates of workloads (Deployment, ReplicaSet,
//! StatefulSet, DaemonSet, Job, CronJob, ReplicationController, PodTemplate)
//! only produce warnings and audit annotations, as upstream.

use crate::util::{arr, forbidden_message, object_name, pod_spec_of};
use serde_json::Value;
use std::collections::BTreeSet;

/// The label prefix of the namespace policy labels.
pub const LABEL_PREFIX: &str = "pod-security.kubernetes.io/";
/// The audit annotation key upstream records violations under.
pub const AUDIT_VIOLATIONS_ANNOTATION: &str = "pod-security.kubernetes.io/audit-violations";

/// The newest policy version whose checks are implemented here.
const MAX_MINOR: u32 = 34;

/// A Pod Security Standards level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// No restrictions.
    Privileged,
    /// Prevents known privilege escalations.
    Baseline,
    /// Hardening best practices.
    Restricted,
}

impl Level {
    fn parse(s: &str) -> Option<Level> {
        match s {
            "privileged" => Some(Level::Privileged),
            "baseline" => Some(Level::Baseline),
            "restricted" => Some(Level::Restricted),
            _ => None,
        }
    }
    fn as_str(self) -> &'static str {
        match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        }
    }
}

/// A level at a policy version (`None` = `latest`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LevelVersion {
    /// The level.
    pub level: Level,
    /// The minor version of `v1.<minor>`, or `None` for `latest`.
    pub minor: Option<u32>,
}

impl std::fmt::Display for LevelVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.minor {
            None => write!(f, "{}:latest", self.level.as_str()),
            Some(m) => write!(f, "{}:v1.{m}", self.level.as_str()),
        }
    }
}

impl LevelVersion {
    fn effective_minor(&self) -> u32 {
        self.minor.map(|m| m.min(MAX_MINOR)).unwrap_or(MAX_MINOR)
    }
}

/// The policy of a namespace for each mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Violations reject pods.
    pub enforce: LevelVersion,
    /// Violations are recorded in the audit annotation.
    pub audit: LevelVersion,
    /// Violations are returned as warnings.
    pub warn: LevelVersion,
}

fn label<'a>(labels: &'a Value, key: &str) -> Option<&'a str> {
    labels.get(key).and_then(Value::as_str)
}

fn mode_policy(labels: &Value, mode: &str) -> LevelVersion {
    let level = match label(labels, &format!("{LABEL_PREFIX}{mode}")) {
        None => Level::Privileged,
        // upstream evaluates an invalid level as restricted
        Some(s) => Level::parse(s).unwrap_or(Level::Restricted),
    };
    let minor = label(labels, &format!("{LABEL_PREFIX}{mode}-version")).and_then(|v| {
        if v == "latest" {
            return None;
        }
        let m: u32 = v.strip_prefix("v1.")?.parse().ok()?;
        // versions newer than known checks are "latest"
        if m > MAX_MINOR {
            None
        } else {
            Some(m)
        }
    });
    LevelVersion { level, minor }
}

/// The namespace policy from its labels (a JSON object of labels, or null).
pub fn policy_from_labels(labels: &Value) -> Policy {
    Policy {
        enforce: mode_policy(labels, "enforce"),
        audit: mode_policy(labels, "audit"),
        warn: mode_policy(labels, "warn"),
    }
}

/// The outcome of evaluating one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// `Err` with upstream's full Forbidden message when the pod violates the
    /// enforced level, e.g. `pods "p" is forbidden: violates PodSecurity
    /// "restricted:latest": privileged (container "c" must not set
    /// securityContext.privileged=true), ...`.
    pub enforce: Result<(), String>,
    /// Warnings for the response (`would violate PodSecurity "...": ...`).
    pub warnings: Vec<String>,
    /// Values for the audit annotation [`AUDIT_VIOLATIONS_ANNOTATION`].
    pub audit: Vec<String>,
}

impl Decision {
    fn allow() -> Decision {
        Decision {
            enforce: Ok(()),
            warnings: Vec::new(),
            audit: Vec::new(),
        }
    }
}

// ---------------------------------------------------------------- checks

struct Violation {
    reason: String,
    detail: String,
}

fn pluralize(one: &str, many: &str, n: usize) -> String {
    if n == 1 {
        one.to_string()
    } else {
        many.to_string()
    }
}

fn join_quote<S: AsRef<str>>(items: &[S]) -> String {
    items
        .iter()
        .map(|s| serde_json::to_string(s.as_ref()).unwrap_or_default())
        .collect::<Vec<_>>()
        .join(", ")
}

fn containers(spec: &Value) -> impl Iterator<Item = &Value> {
    arr(&spec["initContainers"])
        .iter()
        .chain(arr(&spec["containers"]))
        .chain(arr(&spec["ephemeralContainers"]))
}

fn cname(c: &Value) -> String {
    c["name"].as_str().unwrap_or_default().to_string()
}

fn v(reason: &str, detail: String) -> Option<Violation> {
    Some(Violation {
        reason: reason.to_string(),
        detail,
    })
}

fn is_windows(spec: &Value) -> bool {
    spec["os"]["name"].as_str() == Some("windows")
}

fn setters(pod: bool, containers: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    if pod {
        out.push("pod".to_string());
    }
    if !containers.is_empty() {
        out.push(format!(
            "{} {}",
            pluralize("container", "containers", containers.len()),
            join_quote(containers)
        ));
    }
    out
}

fn check_allow_privilege_escalation(_: &Value, spec: &Value) -> Option<Violation> {
    if is_windows(spec) {
        return None;
    }
    let bad: Vec<String> = containers(spec)
        .filter(|c| c["securityContext"]["allowPrivilegeEscalation"] != Value::Bool(false))
        .map(cname)
        .collect();
    if bad.is_empty() {
        return None;
    }
    v(
        "allowPrivilegeEscalation != false",
        format!(
            "{} {} must set securityContext.allowPrivilegeEscalation=false",
            pluralize("container", "containers", bad.len()),
            join_quote(&bad)
        ),
    )
}

fn check_app_armor(meta: &Value, spec: &Value) -> Option<Violation> {
    let mut bad: BTreeSet<String> = BTreeSet::new();
    let bad_type = |p: &Value| {
        p["type"]
            .as_str()
            .is_some_and(|t| t != "RuntimeDefault" && t != "Localhost")
    };
    if bad_type(&spec["securityContext"]["appArmorProfile"]) {
        bad.insert(format!(
            "pod must not set securityContext.appArmorProfile.type to {}",
            join_quote(&[spec["securityContext"]["appArmorProfile"]["type"]
                .as_str()
                .unwrap_or_default()])
        ));
    }
    for c in containers(spec) {
        let p = &c["securityContext"]["appArmorProfile"];
        if bad_type(p) {
            bad.insert(format!(
                "container {} must not set securityContext.appArmorProfile.type to {}",
                join_quote(&[cname(c)]),
                join_quote(&[p["type"].as_str().unwrap_or_default()])
            ));
        }
    }
    if let Some(anns) = meta["annotations"].as_object() {
        for (k, val) in anns {
            if k.starts_with("container.apparmor.security.beta.kubernetes.io/") {
                let s = val.as_str().unwrap_or_default();
                if !(s.is_empty() || s == "runtime/default" || s.starts_with("localhost/")) {
                    bad.insert(format!("{k}={}", join_quote(&[s])));
                }
            }
        }
    }
    if bad.is_empty() {
        return None;
    }
    let n = bad.len();
    v(
        &pluralize(
            "forbidden AppArmor profile",
            "forbidden AppArmor profiles",
            n,
        ),
        bad.into_iter().collect::<Vec<_>>().join(", "),
    )
}

const DEFAULT_CAPS: [&str; 13] = [
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

fn check_capabilities_baseline(_: &Value, spec: &Value) -> Option<Violation> {
    let mut bad = Vec::new();
    let mut caps = BTreeSet::new();
    for c in containers(spec) {
        let mut this_bad = false;
        for cap in arr(&c["securityContext"]["capabilities"]["add"])
            .iter()
            .filter_map(Value::as_str)
        {
            if !DEFAULT_CAPS.contains(&cap) {
                this_bad = true;
                caps.insert(cap.to_string());
            }
        }
        if this_bad {
            bad.push(cname(c));
        }
    }
    if bad.is_empty() {
        return None;
    }
    let caps: Vec<String> = caps.into_iter().collect();
    v(
        "non-default capabilities",
        format!(
            "{} {} must not include {} in securityContext.capabilities.add",
            pluralize("container", "containers", bad.len()),
            join_quote(&bad),
            join_quote(&caps)
        ),
    )
}

fn check_capabilities_restricted(_: &Value, spec: &Value) -> Option<Violation> {
    if is_windows(spec) {
        return None;
    }
    let mut missing_drop = Vec::new();
    let mut adding = Vec::new();
    let mut caps = BTreeSet::new();
    for c in containers(spec) {
        let capsv = &c["securityContext"]["capabilities"];
        if !capsv.is_object() {
            missing_drop.push(cname(c));
            continue;
        }
        if !arr(&capsv["drop"])
            .iter()
            .any(|d| d.as_str() == Some("ALL"))
        {
            missing_drop.push(cname(c));
        }
        let mut this_bad = false;
        for cap in arr(&capsv["add"]).iter().filter_map(Value::as_str) {
            if cap != "NET_BIND_SERVICE" {
                this_bad = true;
                caps.insert(cap.to_string());
            }
        }
        if this_bad {
            adding.push(cname(c));
        }
    }
    let mut details = Vec::new();
    if !missing_drop.is_empty() {
        details.push(format!(
            "{} {} must set securityContext.capabilities.drop=[\"ALL\"]",
            pluralize("container", "containers", missing_drop.len()),
            join_quote(&missing_drop)
        ));
    }
    if !adding.is_empty() {
        let caps: Vec<String> = caps.into_iter().collect();
        details.push(format!(
            "{} {} must not include {} in securityContext.capabilities.add",
            pluralize("container", "containers", adding.len()),
            join_quote(&adding),
            join_quote(&caps)
        ));
    }
    if details.is_empty() {
        return None;
    }
    v("unrestricted capabilities", details.join("; "))
}

fn check_host_namespaces(_: &Value, spec: &Value) -> Option<Violation> {
    let set: Vec<&str> = [
        ("hostNetwork", "hostNetwork=true"),
        ("hostPID", "hostPID=true"),
        ("hostIPC", "hostIPC=true"),
    ]
    .iter()
    .filter(|(f, _)| spec[*f] == Value::Bool(true))
    .map(|(_, s)| *s)
    .collect();
    if set.is_empty() {
        return None;
    }
    v("host namespaces", set.join(", "))
}

fn check_host_path_volumes(_: &Value, spec: &Value) -> Option<Violation> {
    let bad: Vec<String> = arr(&spec["volumes"])
        .iter()
        .filter(|vol| vol.get("hostPath").is_some_and(|h| !h.is_null()))
        .map(cname)
        .collect();
    if bad.is_empty() {
        return None;
    }
    v(
        "hostPath volumes",
        format!(
            "{} {}",
            pluralize("volume", "volumes", bad.len()),
            join_quote(&bad)
        ),
    )
}

fn check_host_ports(_: &Value, spec: &Value) -> Option<Violation> {
    let mut bad = Vec::new();
    let mut ports = BTreeSet::new();
    for c in containers(spec) {
        let mut this_bad = false;
        for p in arr(&c["ports"]) {
            if let Some(hp) = p["hostPort"].as_i64().filter(|hp| *hp != 0) {
                this_bad = true;
                ports.insert(hp);
            }
        }
        if this_bad {
            bad.push(cname(c));
        }
    }
    if bad.is_empty() {
        return None;
    }
    let ports: Vec<String> = ports.iter().map(|p| p.to_string()).collect();
    v(
        "hostPort",
        format!(
            "{} {} {} {} {}",
            pluralize("container", "containers", bad.len()),
            join_quote(&bad),
            pluralize("uses", "use", bad.len()),
            pluralize("hostPort", "hostPorts", ports.len()),
            ports.join(", ")
        ),
    )
}

fn check_host_probes(_: &Value, spec: &Value) -> Option<Violation> {
    let mut bad = BTreeSet::new();
    let mut hosts = BTreeSet::new();
    for c in containers(spec) {
        let handlers = [
            &c["livenessProbe"],
            &c["readinessProbe"],
            &c["startupProbe"],
            &c["lifecycle"]["postStart"],
            &c["lifecycle"]["preStop"],
        ];
        for h in handlers {
            for kind in ["httpGet", "tcpSocket"] {
                if let Some(host) = h[kind]["host"].as_str().filter(|s| !s.is_empty()) {
                    bad.insert(cname(c));
                    hosts.insert(host.to_string());
                }
            }
        }
    }
    if bad.is_empty() {
        return None;
    }
    let bad: Vec<String> = bad.into_iter().collect();
    let hosts: Vec<String> = hosts.into_iter().collect();
    v(
        "probe or lifecycle host",
        format!(
            "{} {} {} {} {}",
            pluralize("container", "containers", bad.len()),
            join_quote(&bad),
            pluralize("uses", "use", bad.len()),
            pluralize(
                "probe or lifecycle host",
                "probe or lifecycle hosts",
                hosts.len()
            ),
            join_quote(&hosts)
        ),
    )
}

fn check_privileged(_: &Value, spec: &Value) -> Option<Violation> {
    let bad: Vec<String> = containers(spec)
        .filter(|c| c["securityContext"]["privileged"] == Value::Bool(true))
        .map(cname)
        .collect();
    if bad.is_empty() {
        return None;
    }
    v(
        "privileged",
        format!(
            "{} {} must not set securityContext.privileged=true",
            pluralize("container", "containers", bad.len()),
            join_quote(&bad)
        ),
    )
}

fn check_proc_mount(_: &Value, spec: &Value) -> Option<Violation> {
    // with user namespaces (hostUsers: false) Unmasked is allowed at baseline
    if spec["hostUsers"] == Value::Bool(false) {
        return None;
    }
    let mut bad = Vec::new();
    let mut vals = BTreeSet::new();
    for c in containers(spec) {
        if let Some(pm) = c["securityContext"]["procMount"]
            .as_str()
            .filter(|p| *p != "Default")
        {
            bad.push(cname(c));
            vals.insert(pm.to_string());
        }
    }
    if bad.is_empty() {
        return None;
    }
    let vals: Vec<String> = vals.into_iter().collect();
    v(
        "procMount",
        format!(
            "{} {} must not set securityContext.procMount to {}",
            pluralize("container", "containers", bad.len()),
            join_quote(&bad),
            join_quote(&vals)
        ),
    )
}

const VOLUME_TYPES: [&str; 25] = [
    "hostPath",
    "emptyDir",
    "gcePersistentDisk",
    "awsElasticBlockStore",
    "gitRepo",
    "secret",
    "nfs",
    "iscsi",
    "glusterfs",
    "persistentVolumeClaim",
    "rbd",
    "flexVolume",
    "cinder",
    "cephfs",
    "flocker",
    "downwardAPI",
    "fc",
    "azureFile",
    "configMap",
    "vsphereVolume",
    "quobyte",
    "azureDisk",
    "photonPersistentDisk",
    "projected",
    "portworxVolume",
];
const MORE_VOLUME_TYPES: [&str; 6] = [
    "scaleIO",
    "storageos",
    "csi",
    "ephemeral",
    "image",
    "unknown",
];
const ALLOWED_VOLUMES: [&str; 8] = [
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

fn check_restricted_volumes(_: &Value, spec: &Value) -> Option<Violation> {
    let mut bad = Vec::new();
    let mut types = BTreeSet::new();
    for vol in arr(&spec["volumes"]) {
        let Some(obj) = vol.as_object() else { continue };
        let t = obj
            .iter()
            .find(|(k, val)| *k != "name" && !val.is_null())
            .map(|(k, _)| k.as_str())
            .filter(|k| VOLUME_TYPES.contains(k) || MORE_VOLUME_TYPES.contains(k))
            .unwrap_or("unknown");
        if !ALLOWED_VOLUMES.contains(&t) {
            bad.push(cname(vol));
            types.insert(t.to_string());
        }
    }
    if bad.is_empty() {
        return None;
    }
    let types: Vec<String> = types.into_iter().collect();
    v(
        "restricted volume types",
        format!(
            "{} {} {} {} {}",
            pluralize("volume", "volumes", bad.len()),
            join_quote(&bad),
            pluralize("uses", "use", bad.len()),
            pluralize(
                "restricted volume type",
                "restricted volume types",
                types.len()
            ),
            join_quote(&types)
        ),
    )
}

fn check_run_as_non_root(_: &Value, spec: &Value) -> Option<Violation> {
    if spec["hostUsers"] == Value::Bool(false) {
        return None;
    }
    let pod_val = &spec["securityContext"]["runAsNonRoot"];
    let pod_bad = *pod_val == Value::Bool(false);
    let pod_ok = *pod_val == Value::Bool(true);
    let mut explicit = Vec::new();
    let mut implicit = Vec::new();
    for c in containers(spec) {
        match c["securityContext"]["runAsNonRoot"].as_bool() {
            Some(false) => explicit.push(cname(c)),
            Some(true) => {}
            None if !pod_ok => implicit.push(cname(c)),
            None => {}
        }
    }
    let bad = setters(pod_bad, &explicit);
    if !bad.is_empty() {
        return v(
            "runAsNonRoot != true",
            format!(
                "{} must not set securityContext.runAsNonRoot=false",
                bad.join(" and ")
            ),
        );
    }
    if !implicit.is_empty() {
        return v(
            "runAsNonRoot != true",
            format!(
                "pod or {} {} must set securityContext.runAsNonRoot=true",
                pluralize("container", "containers", implicit.len()),
                join_quote(&implicit)
            ),
        );
    }
    None
}

fn check_run_as_user(_: &Value, spec: &Value) -> Option<Violation> {
    if spec["hostUsers"] == Value::Bool(false) {
        return None;
    }
    let pod_bad = spec["securityContext"]["runAsUser"].as_i64() == Some(0);
    let bad: Vec<String> = containers(spec)
        .filter(|c| c["securityContext"]["runAsUser"].as_i64() == Some(0))
        .map(cname)
        .collect();
    let s = setters(pod_bad, &bad);
    if s.is_empty() {
        return None;
    }
    v(
        "runAsUser=0",
        format!("{} must not set runAsUser=0", s.join(" and ")),
    )
}

fn check_selinux(_: &Value, spec: &Value, minor: u32) -> Option<Violation> {
    let mut allowed_types = vec!["", "container_t", "container_init_t", "container_kvm_t"];
    if minor >= 31 {
        allowed_types.push("container_engine_t");
    }
    let mut types = BTreeSet::new();
    let mut users = BTreeSet::new();
    let mut roles = BTreeSet::new();
    let mut bad_opts = |o: &Value| -> bool {
        let mut bad = false;
        if let Some(t) = o["type"].as_str() {
            if !allowed_types.contains(&t) {
                types.insert(t.to_string());
                bad = true;
            }
        }
        if let Some(u) = o["user"].as_str().filter(|s| !s.is_empty()) {
            users.insert(u.to_string());
            bad = true;
        }
        if let Some(r) = o["role"].as_str().filter(|s| !s.is_empty()) {
            roles.insert(r.to_string());
            bad = true;
        }
        bad
    };
    let pod_bad = bad_opts(&spec["securityContext"]["seLinuxOptions"]);
    let bad: Vec<String> = containers(spec)
        .filter(|c| bad_opts(&c["securityContext"]["seLinuxOptions"]))
        .map(cname)
        .collect();
    let s = setters(pod_bad, &bad);
    if s.is_empty() {
        return None;
    }
    let mut parts = Vec::new();
    for (one, many, set) in [
        ("type", "types", &types),
        ("user", "users", &users),
        ("role", "roles", &roles),
    ] {
        if !set.is_empty() {
            let items: Vec<&String> = set.iter().collect();
            parts.push(format!(
                "{} {}",
                pluralize(one, many, set.len()),
                join_quote(&items)
            ));
        }
    }
    v(
        "seLinuxOptions",
        format!(
            "{} set forbidden securityContext.seLinuxOptions: {}",
            s.join(" and "),
            parts.join("; ")
        ),
    )
}

fn valid_seccomp(t: &str) -> bool {
    t == "RuntimeDefault" || t == "Localhost"
}

fn check_seccomp_baseline(_: &Value, spec: &Value) -> Option<Violation> {
    let mut vals = BTreeSet::new();
    let pod_bad = match spec["securityContext"]["seccompProfile"]["type"].as_str() {
        Some(t) if !valid_seccomp(t) => {
            vals.insert(t.to_string());
            true
        }
        _ => false,
    };
    let mut bad = Vec::new();
    for c in containers(spec) {
        if let Some(t) = c["securityContext"]["seccompProfile"]["type"]
            .as_str()
            .filter(|t| !valid_seccomp(t))
        {
            vals.insert(t.to_string());
            bad.push(cname(c));
        }
    }
    let s = setters(pod_bad, &bad);
    if s.is_empty() {
        return None;
    }
    let vals: Vec<String> = vals.into_iter().collect();
    v(
        "seccompProfile",
        format!(
            "{} must not set securityContext.seccompProfile.type to {}",
            s.join(" and "),
            join_quote(&vals)
        ),
    )
}

fn check_seccomp_restricted(meta: &Value, spec: &Value) -> Option<Violation> {
    if is_windows(spec) {
        return None;
    }
    if let Some(bad) = check_seccomp_baseline(meta, spec) {
        return Some(bad);
    }
    let pod_set = spec["securityContext"]["seccompProfile"]["type"].is_string();
    let implicit: Vec<String> = containers(spec)
        .filter(|c| !pod_set && !c["securityContext"]["seccompProfile"]["type"].is_string())
        .map(cname)
        .collect();
    if implicit.is_empty() {
        return None;
    }
    v(
        "seccompProfile",
        format!(
            "pod or {} {} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\"",
            pluralize("container", "containers", implicit.len()),
            join_quote(&implicit)
        ),
    )
}

fn check_sysctls(_: &Value, spec: &Value, minor: u32) -> Option<Violation> {
    let mut allowed = vec![
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_unprivileged_port_start",
    ];
    if minor >= 27 {
        allowed.push("net.ipv4.ip_local_reserved_ports");
    }
    if minor >= 29 {
        allowed.extend([
            "net.ipv4.tcp_keepalive_time",
            "net.ipv4.tcp_fin_timeout",
            "net.ipv4.tcp_keepalive_intvl",
            "net.ipv4.tcp_keepalive_probes",
        ]);
    }
    if minor >= 32 {
        allowed.extend(["net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem"]);
    }
    let bad: Vec<&str> = arr(&spec["securityContext"]["sysctls"])
        .iter()
        .filter_map(|s| s["name"].as_str())
        .filter(|n| !allowed.contains(n))
        .collect();
    if bad.is_empty() {
        return None;
    }
    v("forbidden sysctls", bad.join(", "))
}

fn check_windows_host_process(_: &Value, spec: &Value) -> Option<Violation> {
    let pod_bad = spec["securityContext"]["windowsOptions"]["hostProcess"] == Value::Bool(true);
    let bad: Vec<String> = containers(spec)
        .filter(|c| c["securityContext"]["windowsOptions"]["hostProcess"] == Value::Bool(true))
        .map(cname)
        .collect();
    let s = setters(pod_bad, &bad);
    if s.is_empty() {
        return None;
    }
    v(
        "hostProcess",
        format!(
            "{} must not set securityContext.windowsOptions.hostProcess=true",
            s.join(" and ")
        ),
    )
}

/// Evaluates pod metadata + spec at a level; returns the violations in
/// upstream's order (baseline checks, then restricted ones).
fn evaluate_pod(lv: LevelVersion, meta: &Value, spec: &Value) -> Vec<Violation> {
    if lv.level == Level::Privileged {
        return Vec::new();
    }
    let minor = lv.effective_minor();
    let restricted = lv.level == Level::Restricted;
    let mut out = Vec::new();
    // baseline checks, in upstream's registration order
    out.extend(check_app_armor(meta, spec));
    if !restricted {
        out.extend(check_capabilities_baseline(meta, spec));
    }
    out.extend(check_host_namespaces(meta, spec));
    if !restricted {
        out.extend(check_host_path_volumes(meta, spec));
    }
    out.extend(check_host_ports(meta, spec));
    if minor >= 34 {
        out.extend(check_host_probes(meta, spec));
    }
    out.extend(check_privileged(meta, spec));
    out.extend(check_proc_mount(meta, spec));
    out.extend(check_selinux(meta, spec, minor));
    if !restricted {
        out.extend(check_seccomp_baseline(meta, spec));
    }
    out.extend(check_sysctls(meta, spec, minor));
    out.extend(check_windows_host_process(meta, spec));
    if restricted {
        out.extend(check_allow_privilege_escalation(meta, spec));
        out.extend(check_capabilities_restricted(meta, spec));
        out.extend(check_restricted_volumes(meta, spec));
        out.extend(check_run_as_non_root(meta, spec));
        if minor >= 23 {
            out.extend(check_run_as_user(meta, spec));
        }
        out.extend(check_seccomp_restricted(meta, spec));
    }
    out
}

fn details(vs: &[Violation]) -> String {
    vs.iter()
        .map(|v| {
            if v.detail.is_empty() {
                v.reason.clone()
            } else {
                format!("{} ({})", v.reason, v.detail)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks a pod (or pod template) spec against one level and returns the
/// aggregated violation text (`privileged (...), runAsNonRoot != true (...)`),
/// or `None` when allowed.
pub fn check_level(lv: LevelVersion, pod_meta: &Value, pod_spec: &Value) -> Option<String> {
    let vs = evaluate_pod(lv, pod_meta, pod_spec);
    if vs.is_empty() {
        None
    } else {
        Some(details(&vs))
    }
}

fn significant_pod_update(new: &Value, old: &Value) -> bool {
    let seccomp_pod = "seccomp.security.alpha.kubernetes.io/pod";
    if new["metadata"]["annotations"][seccomp_pod] != old["metadata"]["annotations"][seccomp_pod] {
        return true;
    }
    for field in ["containers", "initContainers", "ephemeralContainers"] {
        let (a, b) = (arr(&new["spec"][field]), arr(&old["spec"][field]));
        if a.len() != b.len() {
            return true;
        }
        for (x, y) in a.iter().zip(b) {
            if x["image"] != y["image"] {
                return true;
            }
            let key = format!(
                "container.seccomp.security.alpha.kubernetes.io/{}",
                cname(x)
            );
            if new["metadata"]["annotations"][&key] != old["metadata"]["annotations"][&key] {
                return true;
            }
        }
    }
    false
}

/// Evaluates a create or update (`old` = previous object) of a Pod or of a
/// workload with a pod template (`kind` is the object's kind, e.g. `Pod`,
/// `Deployment`), given the namespace's labels (a JSON object, or null).
///
/// Pods are enforced (`enforce` is `Err` on violation) and also get warnings
/// (warn level, unless identical to a failing enforce level) and audit
/// strings. Workload templates only get warnings and audit strings. Kinds
/// without a pod template, and pod updates that change nothing security
/// relevant (upstream only re-checks image or container-count changes), are
/// allowed. The caller skips pod subresources other than `ephemeralcontainers`.
pub fn evaluate(
    namespace_labels: &Value,
    kind: &str,
    obj: &Value,
    old: Option<&Value>,
) -> Decision {
    let Some((meta, spec)) = pod_spec_of(kind, obj) else {
        return Decision::allow();
    };
    let policy = policy_from_labels(namespace_labels);
    let is_pod = kind == "Pod";
    if let Some(old) = old {
        if is_pod {
            if !significant_pod_update(obj, old) {
                return Decision::allow();
            }
        } else if let Some((ometa, ospec)) = pod_spec_of(kind, old) {
            if ometa == meta && ospec == spec {
                return Decision::allow();
            }
        }
    }
    let mut d = Decision::allow();
    let mut enforce_failed = None;
    if is_pod {
        if let Some(text) = check_level(policy.enforce, meta, spec) {
            let msg = format!("violates PodSecurity \"{}\": {}", policy.enforce, text);
            d.enforce = Err(forbidden_message("", "pods", &object_name(obj), &msg));
            enforce_failed = Some(policy.enforce);
        }
    }
    if enforce_failed != Some(policy.warn) {
        if let Some(text) = check_level(policy.warn, meta, spec) {
            d.warnings.push(format!(
                "would violate PodSecurity \"{}\": {}",
                policy.warn, text
            ));
        }
    }
    if let Some(text) = check_level(policy.audit, meta, spec) {
        d.audit.push(format!(
            "would violate PodSecurity \"{}\": {}",
            policy.audit, text
        ));
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ns(labels: Value) -> Value {
        labels
    }

    fn privileged_pod() -> Value {
        json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "c", "image": "nginx", "securityContext": {"privileged": true}}
        ]}})
    }

    #[test]
    fn restricted_rejects_privileged_pod_listing_checks() {
        let labels = ns(json!({"pod-security.kubernetes.io/enforce": "restricted"}));
        let d = evaluate(&labels, "Pod", &privileged_pod(), None);
        assert_eq!(
            d.enforce,
            Err("pods \"p\" is forbidden: violates PodSecurity \"restricted:latest\": \
                 privileged (container \"c\" must not set securityContext.privileged=true), \
                 allowPrivilegeEscalation != false (container \"c\" must set securityContext.allowPrivilegeEscalation=false), \
                 unrestricted capabilities (container \"c\" must set securityContext.capabilities.drop=[\"ALL\"]), \
                 runAsNonRoot != true (pod or container \"c\" must set securityContext.runAsNonRoot=true), \
                 seccompProfile (pod or container \"c\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")"
                .to_string())
        );
        assert!(d.warnings.is_empty());
    }

    #[test]
    fn restricted_accepts_hardened_pod() {
        let labels = json!({"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "v1.30"});
        let pod = json!({"metadata": {"name": "p"}, "spec": {
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "volumes": [{"name": "data", "emptyDir": {}}],
            "containers": [{"name": "c", "image": "x", "securityContext": {
                "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}}]
        }});
        assert_eq!(evaluate(&labels, "Pod", &pod, None), Decision::allow());
    }

    #[test]
    fn baseline_allows_default_pod_and_rejects_host_things() {
        let labels = json!({"pod-security.kubernetes.io/enforce": "baseline", "pod-security.kubernetes.io/enforce-version": "v1.28"});
        let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "nginx"}]}});
        assert_eq!(evaluate(&labels, "Pod", &pod, None).enforce, Ok(()));
        let bad = json!({"metadata": {"name": "h"}, "spec": {"hostNetwork": true,
            "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
            "containers": [{"name": "a", "image": "x", "ports": [{"containerPort": 80, "hostPort": 80}],
                            "securityContext": {"capabilities": {"add": ["NET_ADMIN", "CHOWN"]}}}]}});
        assert_eq!(
            evaluate(&labels, "Pod", &bad, None).enforce,
            Err("pods \"h\" is forbidden: violates PodSecurity \"baseline:v1.28\": \
                 non-default capabilities (container \"a\" must not include \"NET_ADMIN\" in securityContext.capabilities.add), \
                 host namespaces (hostNetwork=true), hostPath volumes (volume \"root\"), hostPort (container \"a\" uses hostPort 80)"
                .to_string())
        );
    }

    #[test]
    fn warn_only_gives_warnings_and_audit() {
        let labels = json!({"pod-security.kubernetes.io/warn": "baseline", "pod-security.kubernetes.io/audit": "baseline"});
        let d = evaluate(&labels, "Pod", &privileged_pod(), None);
        assert_eq!(d.enforce, Ok(()));
        let want = "would violate PodSecurity \"baseline:latest\": privileged (container \"c\" must not set securityContext.privileged=true)";
        assert_eq!(d.warnings, vec![want.to_string()]);
        assert_eq!(d.audit, vec![want.to_string()]);
    }

    #[test]
    fn workloads_only_warn() {
        let labels = json!({"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/warn": "baseline"});
        let dep = json!({"metadata": {"name": "d"}, "spec": {"template": {"metadata": {}, "spec": privileged_pod()["spec"].clone()}}});
        let d = evaluate(&labels, "Deployment", &dep, None);
        assert_eq!(d.enforce, Ok(()));
        assert_eq!(d.warnings.len(), 1);
        assert!(
            d.warnings[0].starts_with("would violate PodSecurity \"baseline:latest\": privileged")
        );
        // unchanged template on update: nothing to say
        assert_eq!(
            evaluate(&labels, "Deployment", &dep, Some(&dep)),
            Decision::allow()
        );
        // a ConfigMap has no pod template
        assert_eq!(
            evaluate(&labels, "ConfigMap", &json!({}), None),
            Decision::allow()
        );
    }

    #[test]
    fn pod_update_only_rechecked_on_image_change() {
        let labels = json!({"pod-security.kubernetes.io/enforce": "baseline"});
        let old = privileged_pod();
        let mut relabelled = old.clone();
        relabelled["metadata"]["labels"] = json!({"a": "b"});
        assert_eq!(
            evaluate(&labels, "Pod", &relabelled, Some(&old)).enforce,
            Ok(())
        );
        let mut new_image = old.clone();
        new_image["spec"]["containers"][0]["image"] = json!("nginx:2");
        assert!(evaluate(&labels, "Pod", &new_image, Some(&old))
            .enforce
            .is_err());
    }

    #[test]
    fn restricted_volume_and_run_as_user_details() {
        let lv = LevelVersion {
            level: Level::Restricted,
            minor: None,
        };
        let spec = json!({"securityContext": {"runAsNonRoot": true, "runAsUser": 0, "seccompProfile": {"type": "Unconfined"}},
            "volumes": [{"name": "g", "gitRepo": {"repository": "x"}}, {"name": "h", "hostPath": {"path": "/"}}],
            "containers": [{"name": "c", "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}]});
        assert_eq!(
            check_level(lv, &json!({}), &spec).as_deref(),
            Some("restricted volume types (volumes \"g\", \"h\" use restricted volume types \"gitRepo\", \"hostPath\"), \
                  runAsUser=0 (pod must not set runAsUser=0), \
                  seccompProfile (pod must not set securityContext.seccompProfile.type to \"Unconfined\")")
        );
    }
}
