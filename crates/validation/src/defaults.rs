//! Upstream's v1 defaulters, applied to JSON objects in place.

use serde_json::{json, Map, Value};

/// Fills in upstream's defaults (the v1 defaulters) in place. Unknown kinds are left
/// alone. Values the API server allocates itself (clusterIP, nodePorts, UID, the
/// service-account admission's volumes, priority...) are not set here.
pub fn apply_defaults(group: &str, version: &str, kind: &str, obj: &mut Value) {
    let Some(o) = obj.as_object_mut() else { return };
    match (group, kind) {
        ("", "Pod") => {
            let spec = obj_at(o, "spec");
            default_pod_spec(spec);
            set(spec, "enableServiceLinks", json!(true));
        }
        ("", "PodTemplate") => {
            if let Some(t) = o.get_mut("template") {
                default_template(t);
            }
        }
        ("", "ReplicationController") => {
            let spec = obj_at(o, "spec");
            set(spec, "replicas", json!(1));
            let tmpl_labels = spec
                .get("template")
                .and_then(|t| t.get("metadata"))
                .and_then(|m| m.get("labels"))
                .cloned();
            if let Some(l) = tmpl_labels.filter(|l| l.as_object().is_some_and(|m| !m.is_empty())) {
                if spec
                    .get("selector")
                    .and_then(Value::as_object)
                    .is_none_or(|m| m.is_empty())
                {
                    spec.insert("selector".into(), l.clone());
                }
                let meta = obj_at(o, "metadata");
                if meta
                    .get("labels")
                    .and_then(Value::as_object)
                    .is_none_or(|m| m.is_empty())
                {
                    meta.insert("labels".into(), l);
                }
            }
            if let Some(t) = obj_at(o, "spec").get_mut("template") {
                default_template(t);
            }
        }
        ("", "Service") => default_service(obj_at(o, "spec")),
        ("", "Namespace") => {
            let name = o
                .get("metadata")
                .and_then(|m| m.get("name"))
                .and_then(Value::as_str)
                .map(str::to_string);
            if let Some(name) = name {
                let meta = obj_at(o, "metadata");
                obj_at(meta, "labels").insert("kubernetes.io/metadata.name".into(), json!(name));
            }
            let spec = obj_at(o, "spec");
            set(spec, "finalizers", json!(["kubernetes"]));
            set(obj_at(o, "status"), "phase", json!("Active"));
        }
        ("", "Secret") => set(o, "type", json!("Opaque")),
        ("", "PersistentVolumeClaim") => {
            set(obj_at(o, "spec"), "volumeMode", json!("Filesystem"));
            set(obj_at(o, "status"), "phase", json!("Pending"));
        }
        ("", "PersistentVolume") => {
            let spec = obj_at(o, "spec");
            set(spec, "persistentVolumeReclaimPolicy", json!("Retain"));
            set(spec, "volumeMode", json!("Filesystem"));
            set(obj_at(o, "status"), "phase", json!("Pending"));
        }
        ("", "Endpoints") => {
            for s in arr_mut(o, "subsets") {
                if let Some(so) = s.as_object_mut() {
                    for p in arr_mut(so, "ports") {
                        if let Some(po) = p.as_object_mut() {
                            set(po, "protocol", json!("TCP"));
                        }
                    }
                }
            }
        }
        ("", "Node") => {
            let status = obj_at(o, "status");
            if status.get("allocatable").is_none() {
                if let Some(c) = status.get("capacity").cloned() {
                    status.insert("allocatable".into(), c);
                }
            }
        }
        ("apps", "Deployment") => {
            let spec = obj_at(o, "spec");
            set(spec, "replicas", json!(1));
            let strategy = obj_at(spec, "strategy");
            set(strategy, "type", json!("RollingUpdate"));
            if strategy.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
                let ru = obj_at(strategy, "rollingUpdate");
                set(ru, "maxUnavailable", json!("25%"));
                set(ru, "maxSurge", json!("25%"));
            }
            set(spec, "revisionHistoryLimit", json!(10));
            set(spec, "progressDeadlineSeconds", json!(600));
            if let Some(t) = spec.get_mut("template") {
                default_template(t);
            }
        }
        ("apps", "ReplicaSet") => {
            let spec = obj_at(o, "spec");
            set(spec, "replicas", json!(1));
            if let Some(t) = spec.get_mut("template") {
                default_template(t);
            }
        }
        ("apps", "StatefulSet") => {
            let spec = obj_at(o, "spec");
            set(spec, "podManagementPolicy", json!("OrderedReady"));
            let us = obj_at(spec, "updateStrategy");
            set(us, "type", json!("RollingUpdate"));
            if us.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
                set(obj_at(us, "rollingUpdate"), "partition", json!(0));
            }
            let pvc = obj_at(spec, "persistentVolumeClaimRetentionPolicy");
            set(pvc, "whenDeleted", json!("Retain"));
            set(pvc, "whenScaled", json!("Retain"));
            set(spec, "replicas", json!(1));
            set(spec, "revisionHistoryLimit", json!(10));
            if let Some(t) = spec.get_mut("template") {
                default_template(t);
            }
            for c in arr_mut(spec, "volumeClaimTemplates") {
                if let Some(co) = c.as_object_mut() {
                    set(obj_at(co, "spec"), "volumeMode", json!("Filesystem"));
                    set(obj_at(co, "status"), "phase", json!("Pending"));
                }
            }
        }
        ("apps", "DaemonSet") => {
            let spec = obj_at(o, "spec");
            let us = obj_at(spec, "updateStrategy");
            set(us, "type", json!("RollingUpdate"));
            if us.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
                let ru = obj_at(us, "rollingUpdate");
                set(ru, "maxUnavailable", json!(1));
                set(ru, "maxSurge", json!(0));
            }
            set(spec, "revisionHistoryLimit", json!(10));
            if let Some(t) = spec.get_mut("template") {
                default_template(t);
            }
        }
        ("batch", "Job") => {
            let tmpl_labels = o
                .get("spec")
                .and_then(|s| s.get("template"))
                .and_then(|t| t.get("metadata"))
                .and_then(|m| m.get("labels"))
                .cloned();
            if let Some(l) = tmpl_labels.filter(|l| l.as_object().is_some_and(|m| !m.is_empty())) {
                let meta = obj_at(o, "metadata");
                if meta
                    .get("labels")
                    .and_then(Value::as_object)
                    .is_none_or(|m| m.is_empty())
                {
                    meta.insert("labels".into(), l);
                }
            }
            default_job_spec(obj_at(o, "spec"));
        }
        ("batch", "CronJob") => {
            let spec = obj_at(o, "spec");
            set(spec, "concurrencyPolicy", json!("Allow"));
            set(spec, "suspend", json!(false));
            set(spec, "successfulJobsHistoryLimit", json!(3));
            set(spec, "failedJobsHistoryLimit", json!(1));
            if let Some(t) = spec
                .get_mut("jobTemplate")
                .and_then(|j| j.get_mut("spec"))
                .and_then(|s| s.get_mut("template"))
            {
                default_template(t);
            }
        }
        ("networking.k8s.io", "NetworkPolicy") => {
            let spec = obj_at(o, "spec");
            for dir in ["ingress", "egress"] {
                for rule in arr_mut(spec, dir) {
                    if let Some(r) = rule.as_object_mut() {
                        for p in arr_mut(r, "ports") {
                            if let Some(po) = p.as_object_mut() {
                                set(po, "protocol", json!("TCP"));
                            }
                        }
                    }
                }
            }
            if spec
                .get("policyTypes")
                .and_then(Value::as_array)
                .is_none_or(|a| a.is_empty())
            {
                let mut types = vec![json!("Ingress")];
                if spec
                    .get("egress")
                    .and_then(Value::as_array)
                    .is_some_and(|a| !a.is_empty())
                {
                    types.push(json!("Egress"));
                }
                spec.insert("policyTypes".into(), Value::Array(types));
            }
        }
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => {
            default_role_binding(o)
        }
        ("storage.k8s.io", "StorageClass") => {
            set(o, "reclaimPolicy", json!("Delete"));
            set(o, "volumeBindingMode", json!("Immediate"));
        }
        ("autoscaling", "HorizontalPodAutoscaler") => default_hpa(version, obj_at(o, "spec")),
        ("scheduling.k8s.io", "PriorityClass") => {
            set(o, "preemptionPolicy", json!("PreemptLowerPriority"))
        }
        (
            "admissionregistration.k8s.io",
            "ValidatingWebhookConfiguration" | "MutatingWebhookConfiguration",
        ) => {
            let mutating = kind == "MutatingWebhookConfiguration";
            for w in arr_mut(o, "webhooks") {
                if let Some(wo) = w.as_object_mut() {
                    set(wo, "failurePolicy", json!("Fail"));
                    set(wo, "matchPolicy", json!("Equivalent"));
                    set(wo, "namespaceSelector", json!({}));
                    set(wo, "objectSelector", json!({}));
                    set(wo, "timeoutSeconds", json!(10));
                    if mutating {
                        set(wo, "reinvocationPolicy", json!("Never"));
                    }
                    for r in arr_mut(wo, "rules") {
                        if let Some(ro) = r.as_object_mut() {
                            set(ro, "scope", json!("*"));
                        }
                    }
                    if let Some(svc) = wo
                        .get_mut("clientConfig")
                        .and_then(|c| c.get_mut("service"))
                        .and_then(Value::as_object_mut)
                    {
                        set(svc, "port", json!(443));
                    }
                }
            }
        }
        _ => {}
    }
}

/// HorizontalPodAutoscaler: `minReplicas` 1 (both versions); v2 also defaults an
/// empty metric list to 80 % CPU utilization and fills a given `behavior`'s missing
/// rules with upstream's (scale up: no window, max of 4 pods or 100 % per 15 s; scale
/// down: 300 s window, 100 % per 15 s).
fn default_hpa(version: &str, spec: &mut Map<String, Value>) {
    set(spec, "minReplicas", json!(1));
    if version != "v2" {
        return;
    }
    if spec
        .get("metrics")
        .and_then(Value::as_array)
        .is_none_or(|m| m.is_empty())
    {
        spec.insert(
            "metrics".into(),
            json!([{"type": "Resource", "resource": {"name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 80}}}]),
        );
    }
    let Some(behavior) = spec.get_mut("behavior").and_then(Value::as_object_mut) else {
        return;
    };
    let rules = [
        (
            "scaleUp",
            0,
            json!([{"type": "Pods", "value": 4, "periodSeconds": 15},
                {"type": "Percent", "value": 100, "periodSeconds": 15}]),
        ),
        (
            "scaleDown",
            300,
            json!([{"type": "Percent", "value": 100, "periodSeconds": 15}]),
        ),
    ];
    for (direction, window, policies) in rules {
        let r = obj_at(behavior, direction);
        set(r, "stabilizationWindowSeconds", json!(window));
        set(r, "selectPolicy", json!("Max"));
        set(r, "policies", policies);
    }
}

/// The object at `k`, created (or replacing a non-object) when needed.
fn obj_at<'a>(o: &'a mut Map<String, Value>, k: &str) -> &'a mut Map<String, Value> {
    let slot = o.entry(k.to_string()).or_insert_with(|| json!({}));
    if !slot.is_object() {
        *slot = json!({});
    }
    match slot {
        Value::Object(m) => m,
        _ => unreachable!("slot was just made an object"),
    }
}

/// Sets `k` when absent or null.
fn set(o: &mut Map<String, Value>, k: &str, v: Value) {
    if o.get(k).is_none_or(Value::is_null) {
        o.insert(k.to_string(), v);
    }
}

fn arr_mut<'a>(o: &'a mut Map<String, Value>, k: &str) -> std::slice::IterMut<'a, Value> {
    match o.get_mut(k) {
        Some(Value::Array(a)) => a.iter_mut(),
        _ => [].iter_mut(),
    }
}

fn default_template(t: &mut Value) {
    if let Some(to) = t.as_object_mut() {
        default_pod_spec(obj_at(to, "spec"));
    }
}

fn default_job_spec(spec: &mut Map<String, Value>) {
    let has_completions = spec.get("completions").is_some_and(|v| !v.is_null());
    let has_parallelism = spec.get("parallelism").is_some_and(|v| !v.is_null());
    if !has_completions && !has_parallelism {
        spec.insert("completions".into(), json!(1));
        spec.insert("parallelism".into(), json!(1));
    }
    set(spec, "parallelism", json!(1));
    if spec
        .get("backoffLimitPerIndex")
        .is_some_and(|v| !v.is_null())
    {
        set(spec, "backoffLimit", json!(i32::MAX));
    } else {
        set(spec, "backoffLimit", json!(6));
    }
    set(spec, "completionMode", json!("NonIndexed"));
    set(spec, "suspend", json!(false));
    if spec.get("podFailurePolicy").is_some_and(|v| !v.is_null()) {
        set(spec, "podReplacementPolicy", json!("Failed"));
    } else {
        set(spec, "podReplacementPolicy", json!("TerminatingOrFailed"));
    }
    if let Some(pfp) = spec
        .get_mut("podFailurePolicy")
        .and_then(Value::as_object_mut)
    {
        for r in arr_mut(pfp, "rules") {
            if let Some(ro) = r.as_object_mut() {
                for p in arr_mut(ro, "onPodConditions") {
                    if let Some(po) = p.as_object_mut() {
                        set(po, "status", json!("True"));
                    }
                }
            }
        }
    }
    if let Some(t) = spec.get_mut("template") {
        default_template(t);
    }
}

/// The rbac/v1 defaulters of RoleBinding / ClusterRoleBinding, then upstream's encoding
/// of what they leave: an empty (or missing) `roleRef.apiGroup` becomes
/// `rbac.authorization.k8s.io`; an empty subject `apiGroup` becomes
/// `rbac.authorization.k8s.io` for `User` and `Group` and stays empty for
/// `ServiceAccount` (and unknown kinds). `Subject.apiGroup` is `omitempty`, so an empty
/// one is dropped, as upstream never returns it (`RoleRef.apiGroup` is always present).
fn default_role_binding(o: &mut Map<String, Value>) {
    const RBAC_GROUP: &str = "rbac.authorization.k8s.io";
    let empty = |v: Option<&Value>| v.is_none_or(|v| v.is_null() || v.as_str() == Some(""));
    // `roleRef` is a struct, not a pointer: upstream defaults it even when it was left out.
    // A roleRef of the wrong type is left for decoding / validation to refuse.
    if o.get("roleRef").is_none_or(Value::is_null) {
        o.insert("roleRef".into(), json!({}));
    }
    if let Some(rr) = o.get_mut("roleRef").and_then(Value::as_object_mut) {
        if empty(rr.get("apiGroup")) {
            rr.insert("apiGroup".into(), json!(RBAC_GROUP));
        }
    }
    for s in arr_mut(o, "subjects") {
        let Some(so) = s.as_object_mut() else {
            continue;
        };
        if !empty(so.get("apiGroup")) {
            continue;
        }
        match so.get("kind").and_then(Value::as_str) {
            Some("User") | Some("Group") => {
                so.insert("apiGroup".into(), json!(RBAC_GROUP));
            }
            _ => {
                so.remove("apiGroup");
            }
        }
    }
}

fn default_service(spec: &mut Map<String, Value>) {
    set(spec, "sessionAffinity", json!("None"));
    set(spec, "type", json!("ClusterIP"));
    let ty = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    for p in arr_mut(spec, "ports") {
        if let Some(po) = p.as_object_mut() {
            set(po, "protocol", json!("TCP"));
            let port_missing = po
                .get("targetPort")
                .is_none_or(|t| t.is_null() || t == &json!(0) || t == &json!(""));
            if port_missing {
                if let Some(port) = po.get("port").cloned() {
                    po.insert("targetPort".into(), port);
                }
            }
        }
    }
    if spec.get("sessionAffinity").and_then(Value::as_str) == Some("ClientIP") {
        let cfg = obj_at(spec, "sessionAffinityConfig");
        set(obj_at(cfg, "clientIP"), "timeoutSeconds", json!(10800));
    }
    if ty == "NodePort" || ty == "LoadBalancer" {
        set(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    if ty == "LoadBalancer" {
        set(spec, "allocateLoadBalancerNodePorts", json!(true));
    }
    if ty != "ExternalName" {
        set(spec, "internalTrafficPolicy", json!("Cluster"));
        let headless = spec.get("clusterIP").and_then(Value::as_str) == Some("None");
        let has_selector = spec
            .get("selector")
            .and_then(Value::as_object)
            .is_some_and(|m| !m.is_empty());
        if headless && !has_selector {
            set(spec, "ipFamilyPolicy", json!("RequireDualStack"));
        } else {
            set(spec, "ipFamilyPolicy", json!("SingleStack"));
        }
        set(spec, "ipFamilies", json!(["IPv4"]));
    }
}

/// SetDefaults_PodSpec + the container / volume / probe defaulters.
fn default_pod_spec(spec: &mut Map<String, Value>) {
    set(spec, "dnsPolicy", json!("ClusterFirst"));
    set(spec, "restartPolicy", json!("Always"));
    set(spec, "securityContext", json!({}));
    set(spec, "terminationGracePeriodSeconds", json!(30));
    set(spec, "schedulerName", json!("default-scheduler"));
    let host_network = spec
        .get("hostNetwork")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        for c in arr_mut(spec, list) {
            if let Some(co) = c.as_object_mut() {
                default_container(co, host_network);
            }
        }
    }
    for v in arr_mut(spec, "volumes") {
        if let Some(vo) = v.as_object_mut() {
            default_volume(vo);
        }
    }
}

fn default_container(c: &mut Map<String, Value>, host_network: bool) {
    if c.get("imagePullPolicy").is_none_or(Value::is_null) {
        let image = c.get("image").and_then(Value::as_str).unwrap_or("");
        c.insert("imagePullPolicy".into(), json!(default_pull_policy(image)));
    }
    set(c, "terminationMessagePath", json!("/dev/termination-log"));
    set(c, "terminationMessagePolicy", json!("File"));
    for p in arr_mut(c, "ports") {
        if let Some(po) = p.as_object_mut() {
            set(po, "protocol", json!("TCP"));
            if host_network {
                if let Some(cp) = po.get("containerPort").cloned() {
                    set(po, "hostPort", cp);
                }
            }
        }
    }
    for e in arr_mut(c, "env") {
        if let Some(fr) = e
            .get_mut("valueFrom")
            .and_then(|v| v.get_mut("fieldRef"))
            .and_then(Value::as_object_mut)
        {
            set(fr, "apiVersion", json!("v1"));
        }
    }
    // Limits without requests: requests default to the limits.
    let limits = c
        .get("resources")
        .and_then(|r| r.get("limits"))
        .and_then(Value::as_object)
        .cloned();
    if let Some(limits) = limits.filter(|l| !l.is_empty()) {
        let res = obj_at(c, "resources");
        let req = obj_at(res, "requests");
        for (k, v) in limits {
            req.entry(k).or_insert(v);
        }
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = c.get_mut(probe).and_then(Value::as_object_mut) {
            set(p, "timeoutSeconds", json!(1));
            set(p, "periodSeconds", json!(10));
            set(p, "successThreshold", json!(1));
            set(p, "failureThreshold", json!(3));
            default_handler(p);
        }
    }
    if let Some(lc) = c.get_mut("lifecycle").and_then(Value::as_object_mut) {
        for h in ["postStart", "preStop"] {
            if let Some(ho) = lc.get_mut(h).and_then(Value::as_object_mut) {
                default_handler(ho);
            }
        }
    }
}

fn default_handler(h: &mut Map<String, Value>) {
    if let Some(g) = h.get_mut("httpGet").and_then(Value::as_object_mut) {
        set(g, "path", json!("/"));
        set(g, "scheme", json!("HTTP"));
    }
    if let Some(g) = h.get_mut("grpc").and_then(Value::as_object_mut) {
        set(g, "service", json!(""));
    }
}

/// `Always` for `:latest` or untagged images (without a digest), else `IfNotPresent`.
fn default_pull_policy(image: &str) -> &'static str {
    if image.contains('@') {
        return "IfNotPresent";
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.rsplit_once(':') {
        Some((_, tag)) if tag != "latest" => "IfNotPresent",
        _ => "Always",
    }
}

fn default_volume(v: &mut Map<String, Value>) {
    const SOURCES: &[&str] = &[
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
        "scaleIO",
        "storageos",
        "csi",
        "ephemeral",
        "image",
    ];
    if !SOURCES
        .iter()
        .any(|s| v.get(*s).is_some_and(|x| !x.is_null()))
    {
        v.insert("emptyDir".into(), json!({}));
    }
    for k in ["secret", "configMap", "downwardAPI", "projected"] {
        if let Some(s) = v.get_mut(k).and_then(Value::as_object_mut) {
            set(s, "defaultMode", json!(420));
        }
    }
    if let Some(h) = v.get_mut("hostPath").and_then(Value::as_object_mut) {
        set(h, "type", json!(""));
    }
    if let Some(d) = v.get_mut("downwardAPI").and_then(Value::as_object_mut) {
        for it in arr_mut(d, "items") {
            if let Some(fr) = it.get_mut("fieldRef").and_then(Value::as_object_mut) {
                set(fr, "apiVersion", json!("v1"));
            }
        }
    }
    if let Some(p) = v.get_mut("projected").and_then(Value::as_object_mut) {
        for s in arr_mut(p, "sources") {
            if let Some(sat) = s
                .get_mut("serviceAccountToken")
                .and_then(Value::as_object_mut)
            {
                set(sat, "expirationSeconds", json!(3600));
            }
            if let Some(d) = s.get_mut("downwardAPI").and_then(Value::as_object_mut) {
                for it in arr_mut(d, "items") {
                    if let Some(fr) = it.get_mut("fieldRef").and_then(Value::as_object_mut) {
                        set(fr, "apiVersion", json!("v1"));
                    }
                }
            }
        }
    }
    if let Some(e) = v
        .get_mut("ephemeral")
        .and_then(|e| e.get_mut("volumeClaimTemplate"))
        .and_then(Value::as_object_mut)
    {
        set(obj_at(e, "spec"), "volumeMode", json!("Filesystem"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaulted(group: &str, kind: &str, mut v: Value) -> Value {
        apply_defaults(group, "v1", kind, &mut v);
        v
    }

    fn container_defaults(name: &str, image: &str, policy: &str) -> Value {
        json!({"name": name, "image": image, "imagePullPolicy": policy,
               "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File"})
    }

    #[test]
    fn hpa_defaults_per_version() {
        let v1 = defaulted(
            "autoscaling",
            "HorizontalPodAutoscaler",
            json!({"spec": {"maxReplicas": 3}}),
        );
        assert_eq!(v1["spec"], json!({"maxReplicas": 3, "minReplicas": 1}));
        let mut v2 = json!({"spec": {"minReplicas": 2, "maxReplicas": 3,
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 10}}}});
        apply_defaults("autoscaling", "v2", "HorizontalPodAutoscaler", &mut v2);
        assert_eq!(v2["spec"]["minReplicas"], 2);
        assert_eq!(
            v2["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
            80
        );
        let down = &v2["spec"]["behavior"]["scaleDown"];
        assert_eq!(down["stabilizationWindowSeconds"], 10);
        assert_eq!(down["selectPolicy"], "Max");
        assert_eq!(down["policies"][0]["type"], "Percent");
        let up = &v2["spec"]["behavior"]["scaleUp"];
        assert_eq!(up["stabilizationWindowSeconds"], 0);
        assert_eq!(up["policies"].as_array().map(Vec::len), Some(2));
        // Without a behavior none is made up; given metrics are kept.
        let mut plain = json!({"spec": {"maxReplicas": 3, "metrics": [{"type": "Pods"}]}});
        apply_defaults("autoscaling", "v2", "HorizontalPodAutoscaler", &mut plain);
        assert!(plain["spec"].get("behavior").is_none());
        assert_eq!(plain["spec"]["metrics"], json!([{"type": "Pods"}]));
    }

    #[test]
    fn pod_defaults() {
        let p = defaulted(
            "",
            "Pod",
            json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "a", "image": "nginx", "ports": [{"containerPort": 80}],
             "readinessProbe": {"httpGet": {"port": 80}}},
            {"name": "b", "image": "nginx:1.27"}],
            "volumes": [{"name": "v"}, {"name": "s", "secret": {"secretName": "x"}}]}}),
        );
        let mut a = container_defaults("a", "nginx", "Always");
        a["ports"] = json!([{"containerPort": 80, "protocol": "TCP"}]);
        a["readinessProbe"] = json!({"httpGet": {"port": 80, "path": "/", "scheme": "HTTP"},
            "timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3});
        let expected = json!({"metadata": {"name": "p"}, "spec": {
            "containers": [a, container_defaults("b", "nginx:1.27", "IfNotPresent")],
            "volumes": [{"name": "v", "emptyDir": {}}, {"name": "s", "secret": {"secretName": "x", "defaultMode": 420}}],
            "dnsPolicy": "ClusterFirst", "restartPolicy": "Always", "securityContext": {},
            "terminationGracePeriodSeconds": 30, "schedulerName": "default-scheduler", "enableServiceLinks": true}});
        assert_eq!(p, expected);
    }

    #[test]
    fn deployment_defaults() {
        let d = defaulted(
            "apps",
            "Deployment",
            json!({"spec": {"selector": {"matchLabels": {"app": "a"}},
            "template": {"metadata": {"labels": {"app": "a"}}, "spec": {"containers": [{"name": "c", "image": "r/img:latest"}]}}}}),
        );
        let expected = json!({"spec": {"selector": {"matchLabels": {"app": "a"}},
            "template": {"metadata": {"labels": {"app": "a"}}, "spec": {
                "containers": [container_defaults("c", "r/img:latest", "Always")],
                "dnsPolicy": "ClusterFirst", "restartPolicy": "Always", "securityContext": {},
                "terminationGracePeriodSeconds": 30, "schedulerName": "default-scheduler"}},
            "replicas": 1, "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}},
            "revisionHistoryLimit": 10, "progressDeadlineSeconds": 600}});
        assert_eq!(d, expected);
    }

    #[test]
    fn service_defaults() {
        let s = defaulted(
            "",
            "Service",
            json!({"spec": {"selector": {"app": "a"}, "ports": [{"port": 80}]}}),
        );
        assert_eq!(
            s,
            json!({"spec": {"selector": {"app": "a"}, "ports": [{"port": 80, "protocol": "TCP", "targetPort": 80}],
            "sessionAffinity": "None", "type": "ClusterIP", "internalTrafficPolicy": "Cluster",
            "ipFamilyPolicy": "SingleStack", "ipFamilies": ["IPv4"]}})
        );
        let np = defaulted(
            "",
            "Service",
            json!({"spec": {"type": "NodePort", "ports": [{"port": 80, "targetPort": "http"}]}}),
        );
        assert_eq!(np["spec"]["externalTrafficPolicy"], json!("Cluster"));
        assert_eq!(np["spec"]["ports"][0]["targetPort"], json!("http"));
        let en = defaulted(
            "",
            "Service",
            json!({"spec": {"type": "ExternalName", "externalName": "x.com"}}),
        );
        assert!(en["spec"].get("ipFamilies").is_none());
    }

    #[test]
    fn job_and_cronjob_defaults() {
        let tmpl = json!({"spec": {"containers": [{"name": "c", "image": "busybox:1"}], "restartPolicy": "Never"}});
        let j = defaulted("batch", "Job", json!({"spec": {"template": tmpl}}));
        for (k, v) in [
            ("completions", json!(1)),
            ("parallelism", json!(1)),
            ("backoffLimit", json!(6)),
            ("completionMode", json!("NonIndexed")),
            ("suspend", json!(false)),
            ("podReplacementPolicy", json!("TerminatingOrFailed")),
        ] {
            assert_eq!(j["spec"][k], v, "{k}");
        }
        assert_eq!(
            j["spec"]["template"]["spec"]["restartPolicy"],
            json!("Never")
        );
        assert_eq!(
            j["spec"]["template"]["spec"]["dnsPolicy"],
            json!("ClusterFirst")
        );
        let j2 = defaulted(
            "batch",
            "Job",
            json!({"spec": {"parallelism": 3, "template": tmpl}}),
        );
        assert!(j2["spec"].get("completions").is_none());
        let c = defaulted(
            "batch",
            "CronJob",
            json!({"spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": tmpl}}}}),
        );
        assert_eq!(c["spec"]["concurrencyPolicy"], json!("Allow"));
        assert_eq!(c["spec"]["suspend"], json!(false));
        assert_eq!(c["spec"]["successfulJobsHistoryLimit"], json!(3));
        assert_eq!(c["spec"]["failedJobsHistoryLimit"], json!(1));
        assert!(c["spec"]["jobTemplate"]["spec"]
            .get("backoffLimit")
            .is_none());
        assert_eq!(
            c["spec"]["jobTemplate"]["spec"]["template"]["spec"]["schedulerName"],
            json!("default-scheduler")
        );
    }

    #[test]
    fn role_binding_defaults_and_encoding() {
        let rb = defaulted(
            "rbac.authorization.k8s.io",
            "RoleBinding",
            json!({
            "roleRef": {"apiGroup": "", "kind": "Role", "name": "r"},
            "subjects": [
                {"kind": "ServiceAccount", "name": "sa", "namespace": "ns", "apiGroup": ""},
                {"kind": "ServiceAccount", "name": "sa2", "namespace": "ns"},
                {"kind": "User", "name": "alice", "apiGroup": ""},
                {"kind": "Group", "name": "devs"},
                {"kind": "User", "name": "bob", "apiGroup": "example.com"},
                {"kind": "Robot", "name": "r2", "apiGroup": null}]}),
        );
        assert_eq!(
            rb,
            json!({
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r"},
            "subjects": [
                {"kind": "ServiceAccount", "name": "sa", "namespace": "ns"},
                {"kind": "ServiceAccount", "name": "sa2", "namespace": "ns"},
                {"kind": "User", "name": "alice", "apiGroup": "rbac.authorization.k8s.io"},
                {"kind": "Group", "name": "devs", "apiGroup": "rbac.authorization.k8s.io"},
                {"kind": "User", "name": "bob", "apiGroup": "example.com"},
                {"kind": "Robot", "name": "r2"}]})
        );
        // A missing roleRef.apiGroup defaults too, on both binding kinds; the result validates.
        let crb = defaulted(
            "rbac.authorization.k8s.io",
            "ClusterRoleBinding",
            json!({
            "metadata": {"name": "b"}, "roleRef": {"kind": "ClusterRole", "name": "view"},
            "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": "kube-system"}]}),
        );
        assert_eq!(
            crb["roleRef"]["apiGroup"],
            json!("rbac.authorization.k8s.io")
        );
        assert!(crb["subjects"][0].get("apiGroup").is_none());
        let errs = crate::validate_create(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRoleBinding",
            false,
            &crb,
        );
        assert!(errs.is_empty(), "{errs:?}");
        // A binding without roleRef gets upstream's zero RoleRef with the group set: only
        // kind and name are then reported.
        let bare = defaulted(
            "rbac.authorization.k8s.io",
            "RoleBinding",
            json!({"metadata": {"name": "b", "namespace": "n"}}),
        );
        assert_eq!(
            bare["roleRef"],
            json!({"apiGroup": "rbac.authorization.k8s.io"})
        );
        let fields: Vec<String> = crate::validate_create(
            "rbac.authorization.k8s.io",
            "v1",
            "RoleBinding",
            true,
            &bare,
        )
        .iter()
        .map(|e| e.field.clone())
        .collect();
        assert_eq!(fields, vec!["roleRef.kind", "roleRef.name"]);
    }

    #[test]
    fn other_defaults() {
        let ns = defaulted("", "Namespace", json!({"metadata": {"name": "dev"}}));
        assert_eq!(
            ns,
            json!({"metadata": {"name": "dev", "labels": {"kubernetes.io/metadata.name": "dev"}},
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}})
        );
        assert_eq!(defaulted("", "Secret", json!({}))["type"], json!("Opaque"));
        let sts = defaulted("apps", "StatefulSet", json!({"spec": {}}));
        assert_eq!(
            sts["spec"]["updateStrategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}})
        );
        assert_eq!(
            sts["spec"]["persistentVolumeClaimRetentionPolicy"],
            json!({"whenDeleted": "Retain", "whenScaled": "Retain"})
        );
        let ds = defaulted("apps", "DaemonSet", json!({"spec": {}}));
        assert_eq!(
            ds["spec"]["updateStrategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}})
        );
        let np = defaulted(
            "networking.k8s.io",
            "NetworkPolicy",
            json!({"spec": {"egress": [{}]}}),
        );
        assert_eq!(np["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
        assert_eq!(default_pull_policy("localhost:5000/img"), "Always");
        assert_eq!(default_pull_policy("img@sha256:abc"), "IfNotPresent");
    }
}
