//! The objects helm-controller makes for a HelmChart, built exactly as it builds them
//! (pure: no I/O): ServiceAccount `helm-<name>`, ClusterRoleBinding
//! `helm-<namespace>-<name>` to the job ClusterRole (`cluster-admin`), Secret
//! `chart-values-<name>` (type `helmcharts.helm.cattle.io/values`), ConfigMap
//! `chart-content-<name>`, and the klipper-helm Job `helm-install-<name>` (or
//! `helm-delete-<name>` for a chart being deleted), created suspended, with the
//! `helmcharts.helm.cattle.io/configHash` annotation on its pod template (SHA-256 of
//! backoffLimit, the pod template and the values/content data) so a changed chart,
//! HelmChartConfig or values Secret gives a different Job.

use std::collections::BTreeMap;

use base64::Engine as _;
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, EmptyDirVolumeSource, EnvVar,
    KeyToPath, PodSecurityContext, PodSpec, PodTemplateSpec, ProjectedVolumeSource,
    ResourceRequirements, SeccompProfile, Secret, SecretProjection, SecretVolumeSource,
    SecurityContext, ServiceAccount, Toleration, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::ByteString;

use crate::types::{values_empty, HelmChart, HelmChartConfig, SecretSpec};

/// Type of the values Secret.
pub const SECRET_TYPE: &str = "helmcharts.helm.cattle.io/values";
/// Pod template annotation holding the configuration hash.
pub const KEY_CONFIG_HASH: &str = "helmcharts.helm.cattle.io/configHash";
/// Label naming the chart on the Job and its pods.
pub const LABEL_CHART_NAME: &str = "helmcharts.helm.cattle.io/chart";
/// Annotation naming the controller that manages a chart.
pub const ANNOTATION_MANAGED_BY: &str = "helmcharts.cattle.io/managed-by";
/// Annotation: the chart is not managed by any controller.
pub const ANNOTATION_UNMANAGED: &str = "helmcharts.helm.cattle.io/unmanaged";
/// Annotation: where `chartContent` came from (for Events).
pub const ANNOTATION_CHART_URL: &str = "helm.cattle.io/chart-url";
/// Taint of nodes an external cloud provider has not initialized.
pub const TAINT_EXTERNAL_CLOUD_PROVIDER: &str = "node.cloudprovider.kubernetes.io/uninitialized";
/// Default `backoffLimit` of the Job.
pub const DEFAULT_BACKOFF_LIMIT: i32 = 1000;
/// Default Job image when the caller names none (helm-controller's release pin).
pub const DEFAULT_JOB_IMAGE: &str = "rancher/klipper-helm:v0.9.10-build20251111";

/// The default Job image as k3s chooses it: `--helm-job-image` when given, else
/// [`DEFAULT_JOB_IMAGE`] behind `--system-default-registry` (when set).
pub fn default_job_image(helm_job_image: &str, system_default_registry: &str) -> String {
    match (
        helm_job_image.trim(),
        system_default_registry.trim_end_matches('/'),
    ) {
        ("", "") => DEFAULT_JOB_IMAGE.to_string(),
        ("", reg) => format!("{reg}/{DEFAULT_JOB_IMAGE}"),
        (image, _) => image.to_string(),
    }
}

/// How the Jobs are built (the controller's flags).
#[derive(Clone, Debug)]
pub struct JobOptions {
    /// Image when `spec.jobImage` is empty (`--helm-job-image`).
    pub default_image: String,
    /// API server port for bootstrap charts (`KUBERNETES_SERVICE_PORT`).
    pub api_server_port: String,
    /// ClusterRole bound to the Job's ServiceAccount.
    pub job_cluster_role: String,
    /// Proxy variables passed to the Job (helm-controller passes its own
    /// `*_proxy`/`*_PROXY` environment).
    pub proxy_env: Vec<(String, String)>,
    /// Owner annotations' set id (`<managedBy>-chart-registration`).
    pub set_id: String,
    /// Tolerations added to every Job (helm-controller's `JobTolerations`).
    pub tolerations: Vec<Toleration>,
    /// Resources of the helm container (helm-controller's `JobResources`).
    pub resources: Option<ResourceRequirements>,
}

impl Default for JobOptions {
    fn default() -> Self {
        JobOptions {
            default_image: DEFAULT_JOB_IMAGE.to_string(),
            api_server_port: "6443".to_string(),
            job_cluster_role: "cluster-admin".to_string(),
            proxy_env: Vec::new(),
            set_id: "helm-controller-chart-registration".to_string(),
            tolerations: Vec::new(),
            resources: None,
        }
    }
}

impl JobOptions {
    /// The proxy variables of this process's environment, in helm-controller's order.
    pub fn proxy_env_from_process() -> Vec<(String, String)> {
        [
            "all_proxy",
            "ALL_PROXY",
            "http_proxy",
            "HTTP_PROXY",
            "https_proxy",
            "HTTPS_PROXY",
            "no_proxy",
            "NO_PROXY",
        ]
        .iter()
        .filter_map(|k| {
            std::env::var(k)
                .ok()
                .filter(|v| !v.is_empty())
                .map(|v| (k.to_string(), v))
        })
        .collect()
    }
}

/// Everything made for one chart.
#[derive(Clone, Debug, PartialEq)]
pub struct ChartObjects {
    /// The install (or delete) Job.
    pub job: Job,
    /// `chart-values-<name>` (not for a chart being deleted).
    pub values_secret: Option<Secret>,
    /// `chart-content-<name>` (not for a chart being deleted).
    pub content_config_map: Option<ConfigMap>,
    /// `helm-<name>`.
    pub service_account: ServiceAccount,
    /// `helm-<namespace>-<name>`.
    pub cluster_role_binding: ClusterRoleBinding,
}

fn deleting(chart: &HelmChart) -> bool {
    chart.metadata.deletion_timestamp.is_some()
}

fn name(chart: &HelmChart) -> &str {
    chart.metadata.name.as_deref().unwrap_or_default()
}

fn namespace(chart: &HelmChart) -> &str {
    chart.metadata.namespace.as_deref().unwrap_or_default()
}

/// `helm-install-<name>`, or `helm-delete-<name>` for a chart being deleted.
pub fn job_name(chart: &HelmChart) -> String {
    let action = if deleting(chart) { "delete" } else { "install" };
    format!("helm-{action}-{}", name(chart))
}

/// `secret` unless `spec.driver` names another Helm storage driver.
pub fn helm_driver(chart: &HelmChart) -> String {
    if chart.spec.driver.is_empty() {
        "secret".to_string()
    } else {
        chart.spec.driver.clone()
    }
}

/// Whether a `set` value goes to `--set` (integers, booleans, null: Helm's typed
/// values) rather than `--set-string`.
pub fn typed_val(v: &IntOrString) -> bool {
    match v {
        IntOrString::Int(_) => true,
        IntOrString::String(s) => {
            matches!(s.to_ascii_lowercase().as_str(), "true" | "false" | "null")
        }
    }
}

/// Escapes every comma not already escaped (a run of backslashes then a comma gets one
/// more backslash when the run is even), so `--set-string` keeps the comma.
pub fn escape_commas(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut slashes = 0usize;
    for c in s.chars() {
        match c {
            '\\' => {
                slashes += 1;
                out.push(c);
            }
            ',' => {
                if slashes % 2 == 0 {
                    out.push('\\');
                }
                out.push(c);
                slashes = 0;
            }
            _ => {
                out.push(c);
                slashes = 0;
            }
        }
    }
    out
}

fn int_or_string(v: &IntOrString) -> String {
    match v {
        IntOrString::Int(i) => i.to_string(),
        IntOrString::String(s) => s.clone(),
    }
}

/// The container's arguments: `delete`, or `install` with the target namespace,
/// `--create-namespace`, `--take-ownership`, `--version` and one `--set`/`--set-string`
/// per `spec.set` key, sorted.
pub fn args(chart: &HelmChart) -> Vec<String> {
    if deleting(chart) {
        return vec!["delete".to_string()];
    }
    let spec = &chart.spec;
    let mut a = vec!["install".to_string()];
    if !spec.target_namespace.is_empty() {
        a.extend(["--namespace".to_string(), spec.target_namespace.clone()]);
    }
    if spec.create_namespace {
        a.push("--create-namespace".into());
    }
    if spec.take_ownership {
        a.push("--take-ownership".into());
    }
    if !spec.version.is_empty() {
        a.extend(["--version".to_string(), spec.version.clone()]);
    }
    for (k, v) in &spec.set {
        if typed_val(v) {
            a.extend(["--set".to_string(), format!("{k}={}", int_or_string(v))]);
        } else {
            a.extend([
                "--set-string".to_string(),
                format!("{k}={}", escape_commas(&int_or_string(v))),
            ]);
        }
    }
    a
}

/// Go's `time.Duration.String()` of a Go duration string (`300s` -> `5m0s`); the input
/// when it does not parse.
pub fn go_duration(s: &str) -> String {
    parse_go_duration(s)
        .map(format_go_duration)
        .unwrap_or_else(|| s.to_string())
}

fn parse_go_duration(s: &str) -> Option<i128> {
    let (neg, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let num: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let mult: f64 = match &rest[..unit_end] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_end..];
        total += num * mult;
    }
    let n = total.round() as i128;
    Some(if neg { -n } else { n })
}

fn format_go_duration(ns: i128) -> String {
    if ns == 0 {
        return "0s".into();
    }
    let sign = if ns < 0 { "-" } else { "" };
    let u = ns.unsigned_abs();
    let frac = |v: u128, digits: u32| -> String {
        let unit = 10u128.pow(digits);
        let (i, f) = (v / unit, v % unit);
        if f == 0 {
            i.to_string()
        } else {
            let fs = format!("{f:0width$}", width = digits as usize);
            format!("{i}.{}", fs.trim_end_matches('0'))
        }
    };
    if u < 1_000 {
        return format!("{sign}{u}ns");
    }
    if u < 1_000_000 {
        return format!("{sign}{}µs", frac(u, 3));
    }
    if u < 1_000_000_000 {
        return format!("{sign}{}ms", frac(u, 6));
    }
    let h = u / 3_600_000_000_000;
    let m = (u / 60_000_000_000) % 60;
    let s = frac(u % 60_000_000_000, 9);
    if h > 0 {
        format!("{sign}{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{sign}{m}m{s}s")
    } else {
        format!("{sign}{s}s")
    }
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: Some(value.into()),
        ..Default::default()
    }
}

fn memory_empty_dir(name: &str) -> Volume {
    Volume {
        name: name.to_string(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: Some("Memory".into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.to_string(),
        mount_path: path.to_string(),
        ..Default::default()
    }
}

fn toleration(
    key: &str,
    op: Option<&str>,
    value: Option<&str>,
    effect: Option<&str>,
) -> Toleration {
    Toleration {
        key: Some(key.to_string()),
        operator: op.map(str::to_string),
        value: value.map(str::to_string),
        effect: effect.map(str::to_string),
        ..Default::default()
    }
}

/// Metadata of an object made for `chart`: owner reference (controller) for
/// namespaced objects and the objectset annotations helm-controller's apply writes.
fn owned_meta(chart: &HelmChart, name: String, ns: bool, opts: &JobOptions) -> ObjectMeta {
    let annotations = BTreeMap::from([
        (
            "objectset.rio.cattle.io/id".to_string(),
            opts.set_id.clone(),
        ),
        (
            "objectset.rio.cattle.io/owner-gvk".to_string(),
            "helm.cattle.io/v1, Kind=HelmChart".to_string(),
        ),
        (
            "objectset.rio.cattle.io/owner-name".to_string(),
            self::name(chart).to_string(),
        ),
        (
            "objectset.rio.cattle.io/owner-namespace".to_string(),
            namespace(chart).to_string(),
        ),
    ]);
    ObjectMeta {
        name: Some(name),
        namespace: ns.then(|| namespace(chart).to_string()),
        annotations: Some(annotations),
        owner_references: match (ns, &chart.metadata.uid) {
            (true, Some(uid)) => Some(vec![OwnerReference {
                api_version: crate::types::API_VERSION.to_string(),
                kind: "HelmChart".to_string(),
                name: self::name(chart).to_string(),
                uid: uid.clone(),
                controller: Some(true),
                block_owner_deletion: Some(false),
            }]),
            _ => None,
        },
        ..Default::default()
    }
}

/// The values Secret (`chart-values-<name>`).
fn values_secret(chart: &HelmChart, opts: &JobOptions) -> Secret {
    let mut data = BTreeMap::new();
    if !chart.spec.values_content.is_empty() {
        data.insert(
            "HelmChartValuesContent".to_string(),
            ByteString(chart.spec.values_content.clone().into_bytes()),
        );
    }
    if !values_empty(&chart.spec.values) {
        data.insert(
            "HelmChartValues".to_string(),
            ByteString(to_yaml(&chart.spec.values).into_bytes()),
        );
    }
    if !chart.spec.repo_ca.is_empty() {
        data.insert(
            "RepoCA".to_string(),
            ByteString(chart.spec.repo_ca.clone().into_bytes()),
        );
    }
    Secret {
        metadata: owned_meta(chart, format!("chart-values-{}", name(chart)), true, opts),
        type_: Some(SECRET_TYPE.to_string()),
        data: Some(data),
        ..Default::default()
    }
}

/// YAML of inline values (empty when they do not convert, as helm-controller).
fn to_yaml(v: &Option<serde_json::Value>) -> String {
    match v {
        Some(v) => serde_yaml::to_string(v).unwrap_or_default(),
        None => String::new(),
    }
}

/// The content ConfigMap (`chart-content-<name>`, key `<name>.tgz.base64`).
fn content_config_map(chart: &HelmChart, opts: &JobOptions) -> ConfigMap {
    let mut data = BTreeMap::new();
    if !chart.spec.chart_content.is_empty() {
        data.insert(
            format!("{}.tgz.base64", name(chart)),
            chart.spec.chart_content.clone(),
        );
    }
    ConfigMap {
        metadata: owned_meta(chart, format!("chart-content-{}", name(chart)), true, opts),
        data: Some(data),
        ..Default::default()
    }
}

/// Projection of the values Secrets a chart or config names (`values-<layer>-NNN-...`).
fn values_secret_projections(
    secrets: &[SecretSpec],
    own: &str,
    layer: u8,
    who: &str,
) -> Vec<VolumeProjection> {
    let mut items = 1;
    let mut out = Vec::new();
    for s in secrets {
        if s.keys.is_empty() || s.name == own {
            continue;
        }
        let mut proj = SecretProjection {
            name: s.name.clone(),
            optional: Some(s.ignore_updates),
            items: Some(Vec::new()),
        };
        for key in &s.keys {
            items += 1;
            if let Some(list) = proj.items.as_mut() {
                list.push(KeyToPath {
                    key: key.clone(),
                    path: format!("values-{layer}-{items:03}-{who}-ValuesSecret.yaml"),
                    mode: None,
                });
            }
        }
        out.push(VolumeProjection {
            secret: Some(proj),
            ..Default::default()
        });
    }
    out
}

/// Builds everything for `chart` (with its HelmChartConfig, and the values Secrets it
/// and the config name, for the hash), as helm-controller's `job` +
/// `getJobAndRelatedResources` (without the release variables: see [`with_release`]).
pub fn build(
    chart: &HelmChart,
    config: Option<&HelmChartConfig>,
    referenced_secrets: &[Secret],
    opts: &JobOptions,
) -> ChartObjects {
    let spec = &chart.spec;
    let chart_name = name(chart).to_string();
    let job_image = match spec.job_image.trim() {
        "" => opts.default_image.clone(),
        i => i.to_string(),
    };
    let target_namespace = if spec.target_namespace.is_empty() {
        namespace(chart).to_string()
    } else {
        spec.target_namespace.clone()
    };
    let chart_ref = if spec.repo.is_empty() {
        spec.chart.clone()
    } else {
        format!("{chart_name}/{}", spec.chart)
    };
    let mut envs = vec![
        env("NAME", chart_name.clone()),
        env("VERSION", spec.version.clone()),
        env("REPO", spec.repo.clone()),
        env("HELM_DRIVER", helm_driver(chart)),
        env("CHART_NAMESPACE", namespace(chart)),
        env("CHART", chart_ref),
        env("HELM_VERSION", spec.helm_version.clone()),
        env("TARGET_NAMESPACE", target_namespace),
        env(
            "AUTH_PASS_CREDENTIALS",
            spec.auth_pass_credentials.to_string(),
        ),
        env(
            "INSECURE_SKIP_TLS_VERIFY",
            spec.insecure_skip_tls_verify.to_string(),
        ),
        env("PLAIN_HTTP", spec.plain_http.to_string()),
    ];
    if let Some(t) = &spec.timeout {
        envs.push(env("TIMEOUT", go_duration(t)));
    }
    let mut mounts = vec![
        mount("klipper-helm", "/home/klipper-helm/.helm"),
        mount("klipper-cache", "/home/klipper-helm/.cache"),
        mount("klipper-config", "/home/klipper-helm/.config"),
        mount("tmp", "/tmp"),
    ];
    let mut volumes = vec![
        memory_empty_dir("klipper-helm"),
        memory_empty_dir("klipper-cache"),
        memory_empty_dir("klipper-config"),
        memory_empty_dir("tmp"),
    ];
    let mut node_selector = BTreeMap::from([("kubernetes.io/os".to_string(), "linux".to_string())]);
    let mut tolerations = None;
    let mut host_network = None;
    if spec.bootstrap {
        node_selector.insert(
            "node-role.kubernetes.io/control-plane".into(),
            "true".into(),
        );
        host_network = Some(true);
        tolerations = Some(vec![
            toleration(
                "node.kubernetes.io/not-ready",
                None,
                None,
                Some("NoSchedule"),
            ),
            toleration(
                "node.kubernetes.io/network-unavailable",
                None,
                None,
                Some("NoSchedule"),
            ),
            toleration(
                TAINT_EXTERNAL_CLOUD_PROVIDER,
                Some("Equal"),
                Some("true"),
                Some("NoSchedule"),
            ),
            toleration("CriticalAddonsOnly", Some("Exists"), None, None),
            toleration(
                "node-role.kubernetes.io/etcd",
                Some("Exists"),
                None,
                Some("NoExecute"),
            ),
            toleration(
                "node-role.kubernetes.io/control-plane",
                Some("Exists"),
                None,
                Some("NoSchedule"),
            ),
        ]);
        envs.extend([
            env("KUBERNETES_SERVICE_HOST", "127.0.0.1"),
            env("KUBERNETES_SERVICE_PORT", opts.api_server_port.clone()),
            env("BOOTSTRAP", "true"),
        ]);
    }
    for (k, v) in &opts.proxy_env {
        envs.push(env(k, v.clone()));
    }
    if !opts.tolerations.is_empty() {
        tolerations
            .get_or_insert_with(Vec::new)
            .extend(opts.tolerations.iter().cloned());
    }
    if let Some(s) = &spec.auth_secret {
        volumes.push(Volume {
            name: "auth".into(),
            secret: Some(SecretVolumeSource {
                default_mode: Some(0o644),
                secret_name: Some(s.name.clone()),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(mount("auth", "/auth"));
    }
    if let Some(s) = &spec.docker_registry_secret {
        volumes.push(Volume {
            name: "dockerconfig".into(),
            secret: Some(SecretVolumeSource {
                default_mode: Some(0o644),
                secret_name: Some(s.name.clone()),
                items: Some(vec![KeyToPath {
                    key: ".dockerconfigjson".into(),
                    path: "config.json".into(),
                    mode: None,
                }]),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(mount("dockerconfig", "/home/klipper-helm/.docker"));
    }
    if let Some(cm) = &spec.repo_ca_config_map {
        volumes.push(Volume {
            name: "ca-files".into(),
            config_map: Some(ConfigMapVolumeSource {
                default_mode: Some(0o644),
                name: cm.name.clone(),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(mount("ca-files", "/ca-files"));
    }
    let pod_security_context = spec
        .pod_security_context
        .clone()
        .unwrap_or(PodSecurityContext {
            run_as_non_root: Some(true),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        });
    let security_context = spec.security_context.clone().unwrap_or(SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        read_only_root_filesystem: Some(true),
        ..Default::default()
    });

    let own_values = format!("chart-values-{chart_name}");
    let (mut values_secret_obj, mut content_cm) = (None, None);
    if !deleting(chart) {
        let secret = values_secret(chart, opts);
        let mut items = Vec::new();
        if !spec.values_content.is_empty() {
            items.push(key_to_path(
                "HelmChartValuesContent",
                "values-0-000-HelmChart-ValuesContent.yaml",
            ));
        }
        if !values_empty(&spec.values) {
            items.push(key_to_path(
                "HelmChartValues",
                "values-0-001-HelmChart-Values.yaml",
            ));
        }
        if !spec.repo_ca.is_empty() {
            items.push(key_to_path("RepoCA", "ca-file.pem"));
        }
        let mut sources = vec![VolumeProjection {
            secret: Some(SecretProjection {
                name: own_values.clone(),
                items: Some(items),
                optional: None,
            }),
            ..Default::default()
        }];
        sources.extend(values_secret_projections(
            &spec.values_secrets,
            &own_values,
            0,
            "HelmChart",
        ));
        volumes.push(Volume {
            name: "values".into(),
            projected: Some(ProjectedVolumeSource {
                default_mode: Some(0o644),
                sources: Some(sources),
            }),
            ..Default::default()
        });
        mounts.push(mount("values", "/config"));
        let cm = content_config_map(chart, opts);
        volumes.push(Volume {
            name: "content".into(),
            config_map: Some(ConfigMapVolumeSource {
                default_mode: Some(0o644),
                name: format!("chart-content-{chart_name}"),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(mount("content", "/chart"));
        values_secret_obj = Some(secret);
        content_cm = Some(cm);
    }

    let mut job = Job {
        metadata: {
            let mut m = owned_meta(chart, job_name(chart), true, opts);
            m.labels = Some(BTreeMap::from([(
                LABEL_CHART_NAME.to_string(),
                chart_name.clone(),
            )]));
            m
        },
        spec: Some(JobSpec {
            suspend: Some(true),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    annotations: Some(BTreeMap::new()),
                    labels: Some(BTreeMap::from([(
                        LABEL_CHART_NAME.to_string(),
                        chart_name.clone(),
                    )])),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    restart_policy: Some("OnFailure".into()),
                    containers: vec![Container {
                        name: "helm".into(),
                        image: Some(job_image),
                        image_pull_policy: Some("IfNotPresent".into()),
                        args: Some(args(chart)),
                        env: Some(envs),
                        security_context: Some(security_context),
                        volume_mounts: Some(mounts),
                        resources: opts.resources.clone(),
                        ..Default::default()
                    }],
                    service_account_name: Some(format!("helm-{chart_name}")),
                    security_context: Some(pod_security_context),
                    priority_class_name: Some("system-cluster-critical".into()),
                    volumes: Some(volumes),
                    node_selector: Some(node_selector),
                    host_network,
                    tolerations,
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    };

    // getJobAndRelatedResources: policies, config values, backoff, hash.
    let mut failure_policy = if spec.failure_policy.is_empty() {
        "reinstall".to_string()
    } else {
        spec.failure_policy.clone()
    };
    let mut server_side = if spec.server_side.is_empty() {
        "auto".to_string()
    } else {
        spec.server_side.clone()
    };
    let mut force_conflicts = spec.force_conflicts;
    let mut hashed: Vec<HashData> = Vec::new();
    if let (Some(cm), Some(secret)) = (&content_cm, &values_secret_obj) {
        hashed.push(HashData::from_config_map(cm));
        hashed.push(HashData::from_secret(secret));
        for s in &spec.values_secrets {
            if !s.ignore_updates && s.name != own_values {
                if let Some(found) = referenced_secrets
                    .iter()
                    .find(|x| x.metadata.name.as_deref() == Some(&s.name))
                {
                    hashed.push(HashData::from_secret(found));
                }
            }
        }
    }
    if let (false, Some(config)) = (deleting(chart), config) {
        if let Some(secret) = values_secret_obj.as_mut() {
            add_config(&mut job, secret, config);
            // the values Secret's hashed data includes the config's values
            if let Some(h) = hashed.get_mut(1) {
                *h = HashData::from_secret(secret);
            }
        }
        if !config.spec.failure_policy.is_empty() {
            failure_policy = config.spec.failure_policy.clone();
        }
        if !config.spec.server_side.is_empty() {
            server_side = config.spec.server_side.clone();
        }
        if let Some(f) = config.spec.force_conflicts {
            force_conflicts = f;
        }
        let config_own = format!(
            "chart-values-{}",
            config.metadata.name.as_deref().unwrap_or_default()
        );
        for s in &config.spec.values_secrets {
            if !s.ignore_updates && s.name != config_own {
                if let Some(found) = referenced_secrets
                    .iter()
                    .find(|x| x.metadata.name.as_deref() == Some(&s.name))
                {
                    hashed.push(HashData::from_secret(found));
                }
            }
        }
    }
    push_env(&mut job, env("FAILURE_POLICY", failure_policy));
    push_env(&mut job, env("SERVER_SIDE", server_side));
    push_env(
        &mut job,
        env("FORCE_CONFLICTS", force_conflicts.to_string()),
    );
    let backoff = spec.back_off_limit.unwrap_or(DEFAULT_BACKOFF_LIMIT);
    if let Some(s) = job.spec.as_mut() {
        s.backoff_limit = Some(backoff);
    }
    let hash = config_hash(&job, &hashed);
    if let Some(a) = job
        .spec
        .as_mut()
        .and_then(|s| s.template.metadata.as_mut())
        .and_then(|m| m.annotations.as_mut())
    {
        a.insert(KEY_CONFIG_HASH.to_string(), hash);
    }

    ChartObjects {
        job,
        values_secret: values_secret_obj,
        content_config_map: content_cm,
        service_account: ServiceAccount {
            metadata: owned_meta(chart, format!("helm-{chart_name}"), true, opts),
            automount_service_account_token: Some(true),
            ..Default::default()
        },
        cluster_role_binding: ClusterRoleBinding {
            metadata: owned_meta(
                chart,
                format!("helm-{}-{chart_name}", namespace(chart)),
                false,
                opts,
            ),
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".into(),
                kind: "ClusterRole".into(),
                name: opts.job_cluster_role.clone(),
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".into(),
                name: format!("helm-{chart_name}"),
                namespace: Some(namespace(chart).to_string()),
                ..Default::default()
            }]),
        },
    }
}

fn key_to_path(key: &str, path: &str) -> KeyToPath {
    KeyToPath {
        key: key.to_string(),
        path: path.to_string(),
        mode: None,
    }
}

fn push_env(job: &mut Job, e: EnvVar) {
    if let Some(c) = job
        .spec
        .as_mut()
        .and_then(|s| s.template.spec.as_mut())
        .and_then(|p| p.containers.first_mut())
    {
        c.env.get_or_insert_with(Vec::new).push(e);
    }
}

/// Adds a HelmChartConfig's values to the values Secret and the values volume.
fn add_config(job: &mut Job, secret: &mut Secret, config: &HelmChartConfig) {
    let data = secret.data.get_or_insert_with(BTreeMap::new);
    if !config.spec.values_content.is_empty() {
        data.insert(
            "HelmChartConfigValuesContent".into(),
            ByteString(config.spec.values_content.clone().into_bytes()),
        );
    }
    if !values_empty(&config.spec.values) {
        data.insert(
            "HelmChartConfigValues".into(),
            ByteString(to_yaml(&config.spec.values).into_bytes()),
        );
    }
    let own = format!(
        "chart-values-{}",
        config.metadata.name.as_deref().unwrap_or_default()
    );
    let Some(volumes) = job
        .spec
        .as_mut()
        .and_then(|s| s.template.spec.as_mut())
        .and_then(|p| p.volumes.as_mut())
    else {
        return;
    };
    for v in volumes.iter_mut().filter(|v| v.name == "values") {
        let Some(sources) = v.projected.as_mut().and_then(|p| p.sources.as_mut()) else {
            continue;
        };
        if let Some(items) = sources
            .first_mut()
            .and_then(|s| s.secret.as_mut())
            .and_then(|s| s.items.as_mut())
        {
            if !config.spec.values_content.is_empty() {
                items.push(key_to_path(
                    "HelmChartConfigValuesContent",
                    "values-1-000-HelmChartConfig-ValuesContent.yaml",
                ));
            }
            if !values_empty(&config.spec.values) {
                items.push(key_to_path(
                    "HelmChartConfigValues",
                    "values-1-001-HelmChartConfig-Values.yaml",
                ));
            }
        }
        sources.extend(values_secret_projections(
            &config.spec.values_secrets,
            &own,
            1,
            "HelmChartConfig",
        ));
    }
}

/// The `data` of a Secret (base64 values, as in its JSON) or ConfigMap, for the hash.
#[derive(Clone, Debug)]
struct HashData(BTreeMap<String, String>);

impl HashData {
    fn from_secret(s: &Secret) -> Self {
        let b64 = base64::engine::general_purpose::STANDARD;
        HashData(
            s.data
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), b64.encode(&v.0)))
                .collect(),
        )
    }

    fn from_config_map(c: &ConfigMap) -> Self {
        HashData(c.data.clone().unwrap_or_default())
    }
}

/// `SHA256=<HEX>` of the Job's backoffLimit, pod template (JSON) and the data of the
/// hashed objects (sorted keys), as helm-controller's `hashObjects`.
fn config_hash(job: &Job, objs: &[HashData]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    if let Some(b) = job.spec.as_ref().and_then(|s| s.backoff_limit) {
        ctx.update(b.to_string().as_bytes());
    }
    if let Some(s) = &job.spec {
        if let Ok(b) = serde_json::to_vec(&s.template) {
            ctx.update(&b);
        }
    }
    for o in objs {
        for (k, v) in &o.0 {
            ctx.update(k.as_bytes());
            ctx.update(v.as_bytes());
        }
    }
    let d = ctx.finish();
    let hex: String = d.as_ref().iter().map(|b| format!("{b:02X}")).collect();
    format!("SHA256={hex}")
}

/// The hash part of a Job's configHash annotation, cut to 63 characters (a label
/// value), as helm-controller puts it in `CONFIG_HASH` and release labels.
pub fn short_config_hash(job: &Job) -> String {
    let a = job
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(KEY_CONFIG_HASH))
        .cloned()
        .unwrap_or_default();
    let h = a.split_once('=').map(|(_, h)| h).unwrap_or_default();
    h.chars().take(63).collect()
}

/// Adds `EXPECTED_RELEASE_REVISION` and `CONFIG_HASH` to every container (after the
/// hash was computed, so they do not change it).
pub fn with_release(job: &mut Job, revision: i64) {
    let hash = short_config_hash(job);
    if let Some(p) = job.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
        for c in &mut p.containers {
            let e = c.env.get_or_insert_with(Vec::new);
            e.push(env("EXPECTED_RELEASE_REVISION", revision.to_string()));
            e.push(env("CONFIG_HASH", hash.clone()));
        }
    }
}

/// Where a chart comes from, for Events (helm-controller's `chartSource`).
pub fn chart_source(chart: &HelmChart) -> String {
    let spec = &chart.spec;
    if !spec.chart_content.is_empty() {
        if let Some(url) = chart
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_CHART_URL))
            .filter(|u| !u.is_empty())
        {
            return format!("inline spec.chartContent from {url}");
        }
        return "inline spec.chartContent".into();
    }
    if spec.chart.starts_with("oci://") {
        if !spec.version.is_empty() {
            return format!("version {} from OCI registry {}", spec.version, spec.chart);
        }
        return format!("latest stable version from OCI registry {}", spec.chart);
    }
    if spec.chart.contains("://") {
        return spec.chart.clone();
    }
    if !spec.version.is_empty() {
        return format!(
            "{} version {} from chart repository {}",
            spec.chart, spec.version, spec.repo
        );
    }
    format!(
        "latest stable version of {} from chart repository {}",
        spec.chart, spec.repo
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{HelmChartConfigSpec, HelmChartSpec};
    use k8s_openapi::api::core::v1::LocalObjectReference;

    fn chart(spec: HelmChartSpec) -> HelmChart {
        HelmChart {
            metadata: ObjectMeta {
                name: Some("traefik".into()),
                namespace: Some("kube-system".into()),
                uid: Some("u-1".into()),
                ..Default::default()
            },
            spec,
            ..Default::default()
        }
    }

    fn container(job: &Job) -> &Container {
        &job.spec
            .as_ref()
            .expect("spec")
            .template
            .spec
            .as_ref()
            .expect("pod")
            .containers[0]
    }

    fn pod(job: &Job) -> &PodSpec {
        job.spec
            .as_ref()
            .expect("spec")
            .template
            .spec
            .as_ref()
            .expect("pod")
    }

    fn envs(job: &Job) -> Vec<(String, String)> {
        container(job)
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
            .collect()
    }

    #[test]
    fn repo_chart_job_matches_helm_controller() {
        let c = chart(HelmChartSpec {
            chart: "traefik".into(),
            repo: "https://traefik.github.io/charts".into(),
            version: "27.0.0".into(),
            target_namespace: "ingress".into(),
            create_namespace: true,
            set: BTreeMap::from([
                ("replicas".to_string(), IntOrString::Int(2)),
                (
                    "rbac.enabled".to_string(),
                    IntOrString::String("True".into()),
                ),
                ("hosts".to_string(), IntOrString::String("a,b\\,c".into())),
                ("empty".to_string(), IntOrString::String("null".into())),
            ]),
            values_content: "image:\n  tag: v3\n".into(),
            timeout: Some("300s".into()),
            ..Default::default()
        });
        let objs = build(&c, None, &[], &JobOptions::default());
        let job = &objs.job;
        assert_eq!(job.metadata.name.as_deref(), Some("helm-install-traefik"));
        assert_eq!(job.metadata.namespace.as_deref(), Some("kube-system"));
        assert_eq!(
            job.metadata.labels.as_ref().expect("labels")[LABEL_CHART_NAME],
            "traefik"
        );
        let owner = &job.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("HelmChart", "traefik", "u-1")
        );
        assert_eq!(owner.controller, Some(true));
        let spec = job.spec.as_ref().expect("spec");
        assert_eq!(spec.suspend, Some(true));
        assert_eq!(spec.backoff_limit, Some(1000));
        let tmeta = spec.template.metadata.as_ref().expect("meta");
        assert_eq!(
            tmeta.labels.as_ref().expect("l")[LABEL_CHART_NAME],
            "traefik"
        );
        let hash = &tmeta.annotations.as_ref().expect("a")[KEY_CONFIG_HASH];
        assert!(
            hash.starts_with("SHA256=") && hash.len() == 7 + 64,
            "{hash}"
        );
        assert!(hash[7..]
            .chars()
            .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase()));
        let p = pod(job);
        assert_eq!(p.restart_policy.as_deref(), Some("OnFailure"));
        assert_eq!(p.service_account_name.as_deref(), Some("helm-traefik"));
        assert_eq!(
            p.priority_class_name.as_deref(),
            Some("system-cluster-critical")
        );
        assert_eq!(
            p.node_selector.as_ref().expect("ns")["kubernetes.io/os"],
            "linux"
        );
        assert_eq!(p.host_network, None);
        let psc = p.security_context.as_ref().expect("psc");
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(
            psc.seccomp_profile.as_ref().expect("sp").type_,
            "RuntimeDefault"
        );
        let ctr = container(job);
        assert_eq!(ctr.name, "helm");
        assert_eq!(ctr.image.as_deref(), Some(DEFAULT_JOB_IMAGE));
        assert_eq!(ctr.image_pull_policy.as_deref(), Some("IfNotPresent"));
        let sc = ctr.security_context.as_ref().expect("sc");
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(
            sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
            Some(vec!["ALL".to_string()])
        );
        let want: Vec<String> = [
            "install",
            "--namespace",
            "ingress",
            "--create-namespace",
            "--version",
            "27.0.0",
            "--set",
            "empty=null",
            "--set-string",
            "hosts=a\\,b\\,c",
            "--set",
            "rbac.enabled=True",
            "--set",
            "replicas=2",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(ctr.args.clone().expect("args"), want);
        let want_env: Vec<(&str, &str)> = vec![
            ("NAME", "traefik"),
            ("VERSION", "27.0.0"),
            ("REPO", "https://traefik.github.io/charts"),
            ("HELM_DRIVER", "secret"),
            ("CHART_NAMESPACE", "kube-system"),
            ("CHART", "traefik/traefik"),
            ("HELM_VERSION", ""),
            ("TARGET_NAMESPACE", "ingress"),
            ("AUTH_PASS_CREDENTIALS", "false"),
            ("INSECURE_SKIP_TLS_VERIFY", "false"),
            ("PLAIN_HTTP", "false"),
            ("TIMEOUT", "5m0s"),
            ("FAILURE_POLICY", "reinstall"),
            ("SERVER_SIDE", "auto"),
            ("FORCE_CONFLICTS", "false"),
        ];
        let got = envs(job);
        assert_eq!(
            got.iter()
                .map(|(a, b)| (a.as_str(), b.as_str()))
                .collect::<Vec<_>>(),
            want_env
        );
        let mounts: Vec<(String, String)> = ctr
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| (m.name.clone(), m.mount_path.clone()))
            .collect();
        assert_eq!(
            mounts,
            [
                ("klipper-helm", "/home/klipper-helm/.helm"),
                ("klipper-cache", "/home/klipper-helm/.cache"),
                ("klipper-config", "/home/klipper-helm/.config"),
                ("tmp", "/tmp"),
                ("values", "/config"),
                ("content", "/chart"),
            ]
            .map(|(a, b)| (a.to_string(), b.to_string()))
        );
        let vols = p.volumes.as_ref().expect("vols");
        assert_eq!(
            vols[0]
                .empty_dir
                .as_ref()
                .and_then(|e| e.medium.clone())
                .as_deref(),
            Some("Memory")
        );
        let values = vols.iter().find(|v| v.name == "values").expect("values");
        let proj = values.projected.as_ref().expect("projected");
        assert_eq!(proj.default_mode, Some(0o644));
        let src = proj.sources.as_ref().expect("src")[0]
            .secret
            .as_ref()
            .expect("secret");
        assert_eq!(src.name, "chart-values-traefik");
        assert_eq!(
            src.items.clone().expect("items"),
            vec![key_to_path(
                "HelmChartValuesContent",
                "values-0-000-HelmChart-ValuesContent.yaml"
            )]
        );
        let content = vols.iter().find(|v| v.name == "content").expect("content");
        assert_eq!(
            content.config_map.as_ref().map(|c| c.name.as_str()),
            Some("chart-content-traefik")
        );
        // related objects
        let secret = objs.values_secret.as_ref().expect("secret");
        assert_eq!(
            secret.metadata.name.as_deref(),
            Some("chart-values-traefik")
        );
        assert_eq!(secret.type_.as_deref(), Some(SECRET_TYPE));
        assert_eq!(
            secret.data.as_ref().expect("d")["HelmChartValuesContent"].0,
            b"image:\n  tag: v3\n"
        );
        let cm = objs.content_config_map.as_ref().expect("cm");
        assert_eq!(cm.metadata.name.as_deref(), Some("chart-content-traefik"));
        assert!(cm.data.as_ref().expect("d").is_empty());
        assert_eq!(
            objs.service_account.metadata.name.as_deref(),
            Some("helm-traefik")
        );
        assert_eq!(
            objs.service_account.automount_service_account_token,
            Some(true)
        );
        let crb = &objs.cluster_role_binding;
        assert_eq!(
            crb.metadata.name.as_deref(),
            Some("helm-kube-system-traefik")
        );
        assert!(
            crb.metadata.owner_references.is_none(),
            "cluster-scoped: no namespaced owner"
        );
        assert_eq!(crb.role_ref.name, "cluster-admin");
        let subj = &crb.subjects.as_ref().expect("s")[0];
        assert_eq!(
            (
                subj.kind.as_str(),
                subj.name.as_str(),
                subj.namespace.as_deref()
            ),
            ("ServiceAccount", "helm-traefik", Some("kube-system"))
        );
    }

    #[test]
    fn set_values_are_typed_as_helm_controller() {
        let c = chart(HelmChartSpec {
            chart: "x".into(),
            set: BTreeMap::from([
                ("a".to_string(), IntOrString::Int(2)),
                ("b".to_string(), IntOrString::String("True".into())),
                ("c".to_string(), IntOrString::String("a,b\\,c".into())),
                ("d".to_string(), IntOrString::String("null".into())),
                ("e".to_string(), IntOrString::String("2".into())),
            ]),
            ..Default::default()
        });
        assert_eq!(
            args(&c),
            vec![
                "install",
                "--set",
                "a=2",
                "--set",
                "b=True",
                "--set-string",
                "c=a\\,b\\,c",
                "--set",
                "d=null",
                "--set-string",
                "e=2"
            ]
        );
        assert_eq!(
            escape_commas("a\\\\,b"),
            "a\\\\\\,b",
            "an escaped backslash before a comma"
        );
        assert_eq!(escape_commas("no commas"), "no commas");
    }

    #[test]
    fn chart_content_config_and_secrets() {
        let mut c = chart(HelmChartSpec {
            chart_content: "H4sIAAAA".into(),
            values: Some(serde_json::json!({"a": {"b": 1}})),
            repo_ca: "PEM".into(),
            job_image: " my/helm:1 ".into(),
            back_off_limit: Some(3),
            bootstrap: true,
            auth_secret: Some(LocalObjectReference {
                name: "auth".into(),
            }),
            docker_registry_secret: Some(LocalObjectReference {
                name: "regcred".into(),
            }),
            repo_ca_config_map: Some(LocalObjectReference { name: "cas".into() }),
            values_secrets: vec![SecretSpec {
                name: "extra".into(),
                keys: vec!["v.yaml".into()],
                ignore_updates: false,
            }],
            failure_policy: "abort".into(),
            ..Default::default()
        });
        c.metadata.annotations = Some(BTreeMap::from([(
            ANNOTATION_CHART_URL.to_string(),
            "https://x/c.tgz".to_string(),
        )]));
        let config = HelmChartConfig {
            metadata: ObjectMeta {
                name: Some("traefik".into()),
                namespace: Some("kube-system".into()),
                ..Default::default()
            },
            spec: HelmChartConfigSpec {
                values_content: "extra: true\n".into(),
                failure_policy: "retry".into(),
                force_conflicts: Some(true),
                ..Default::default()
            },
        };
        let extra = Secret {
            metadata: ObjectMeta {
                name: Some("extra".into()),
                ..Default::default()
            },
            data: Some(BTreeMap::from([(
                "v.yaml".to_string(),
                ByteString(b"x: 1".to_vec()),
            )])),
            ..Default::default()
        };
        let opts = JobOptions {
            api_server_port: "6443".into(),
            ..Default::default()
        };
        let objs = build(&c, Some(&config), std::slice::from_ref(&extra), &opts);
        let job = &objs.job;
        assert_eq!(container(job).image.as_deref(), Some("my/helm:1"));
        assert_eq!(job.spec.as_ref().and_then(|s| s.backoff_limit), Some(3));
        let e = envs(job);
        let get = |k: &str| e.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(get("CHART").as_deref(), Some(""));
        assert_eq!(
            get("FAILURE_POLICY").as_deref(),
            Some("retry"),
            "the config overrides"
        );
        assert_eq!(get("FORCE_CONFLICTS").as_deref(), Some("true"));
        assert_eq!(get("KUBERNETES_SERVICE_HOST").as_deref(), Some("127.0.0.1"));
        assert_eq!(get("KUBERNETES_SERVICE_PORT").as_deref(), Some("6443"));
        assert_eq!(get("BOOTSTRAP").as_deref(), Some("true"));
        let p = pod(job);
        assert_eq!(p.host_network, Some(true));
        assert_eq!(
            p.node_selector.as_ref().expect("ns")["node-role.kubernetes.io/control-plane"],
            "true"
        );
        assert_eq!(p.tolerations.as_ref().map(Vec::len), Some(6));
        let names: Vec<&str> = p
            .volumes
            .iter()
            .flatten()
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "klipper-helm",
                "klipper-cache",
                "klipper-config",
                "tmp",
                "auth",
                "dockerconfig",
                "ca-files",
                "values",
                "content"
            ]
        );
        let mounts: Vec<&str> = container(job)
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| m.mount_path.as_str())
            .collect();
        assert_eq!(
            &mounts[4..],
            [
                "/auth",
                "/home/klipper-helm/.docker",
                "/ca-files",
                "/config",
                "/chart"
            ]
        );
        let values = p
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "values")
            .expect("values");
        let sources = values
            .projected
            .as_ref()
            .and_then(|p| p.sources.clone())
            .expect("sources");
        let own: Vec<String> = sources[0]
            .secret
            .as_ref()
            .and_then(|s| s.items.clone())
            .expect("items")
            .into_iter()
            .map(|i| i.path)
            .collect();
        assert_eq!(
            own,
            [
                "values-0-001-HelmChart-Values.yaml",
                "ca-file.pem",
                "values-1-000-HelmChartConfig-ValuesContent.yaml"
            ]
        );
        let extra_src = sources[1].secret.as_ref().expect("extra");
        assert_eq!(extra_src.name, "extra");
        assert_eq!(extra_src.optional, Some(false));
        assert_eq!(
            extra_src.items.as_ref().expect("i")[0].path,
            "values-0-002-HelmChart-ValuesSecret.yaml"
        );
        let data = objs
            .values_secret
            .as_ref()
            .and_then(|s| s.data.clone())
            .expect("data");
        assert_eq!(data["HelmChartValues"].0, b"a:\n  b: 1\n");
        assert_eq!(data["RepoCA"].0, b"PEM");
        assert_eq!(data["HelmChartConfigValuesContent"].0, b"extra: true\n");
        assert_eq!(
            objs.content_config_map
                .as_ref()
                .and_then(|c| c.data.clone())
                .expect("d")["traefik.tgz.base64"],
            "H4sIAAAA"
        );
        assert_eq!(
            chart_source(&c),
            "inline spec.chartContent from https://x/c.tgz"
        );
        // a changed values Secret or config changes the hash
        let mut extra2 = extra.clone();
        extra2.data = Some(BTreeMap::from([(
            "v.yaml".to_string(),
            ByteString(b"x: 2".to_vec()),
        )]));
        let h1 = short_config_hash(job);
        assert_ne!(
            h1,
            short_config_hash(&build(&c, Some(&config), &[extra2], &opts).job)
        );
        assert_ne!(h1, short_config_hash(&build(&c, None, &[extra], &opts).job));
        assert_eq!(h1.len(), 63);
    }

    #[test]
    fn delete_job_and_release_variables() {
        let mut c = chart(HelmChartSpec {
            chart: "stable/x".into(),
            ..Default::default()
        });
        c.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        ));
        let mut objs = build(&c, None, &[], &JobOptions::default());
        assert_eq!(
            objs.job.metadata.name.as_deref(),
            Some("helm-delete-traefik")
        );
        assert_eq!(
            container(&objs.job).args.clone().expect("a"),
            vec!["delete"]
        );
        assert!(objs.values_secret.is_none() && objs.content_config_map.is_none());
        assert!(!pod(&objs.job)
            .volumes
            .iter()
            .flatten()
            .any(|v| v.name == "values" || v.name == "content"));
        let before = short_config_hash(&objs.job);
        with_release(&mut objs.job, 3);
        let e = envs(&objs.job);
        assert_eq!(
            e[e.len() - 2],
            ("EXPECTED_RELEASE_REVISION".to_string(), "3".to_string())
        );
        assert_eq!(e[e.len() - 1], ("CONFIG_HASH".to_string(), before.clone()));
        assert_eq!(
            short_config_hash(&objs.job),
            before,
            "release variables do not change the hash"
        );
    }

    #[test]
    fn typed_values_as_helm_controllers_table() {
        // helm-controller's TestSetVals, with intstr.Parse's rule (integers become Int)
        let parse = |s: &str| match s.parse::<i32>() {
            Ok(i) => IntOrString::Int(i),
            Err(_) => IntOrString::String(s.to_string()),
        };
        for (s, typed) in [
            ("", false),
            (" ", false),
            ("foo", false),
            ("1.0", false),
            ("0.1", false),
            ("0", true),
            ("1", true),
            ("-1", true),
            ("true", true),
            ("TrUe", true),
            ("false", true),
            ("FaLsE", true),
            ("null", true),
            ("NuLl", true),
        ] {
            assert_eq!(typed_val(&parse(s)), typed, "{s:?}");
        }
        // helm-controller's TestInstallArgs
        let c = chart(HelmChartSpec {
            chart: "stable/traefik".into(),
            set: [
                ("rbac.enabled", "true"),
                ("ssl.enabled", "false"),
                ("acme.dnsProvider.name", "cloudflare"),
                ("global.clusterCIDR", "10.42.0.0/16,fd42::/48"),
                ("global.systemDefaultRegistry", ""),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), parse(v)))
            .collect(),
            ..Default::default()
        });
        assert_eq!(
            args(&c).join(" "),
            "install --set-string acme.dnsProvider.name=cloudflare --set-string global.clusterCIDR=10.42.0.0/16\\,fd42::/48 --set-string global.systemDefaultRegistry= --set rbac.enabled=true --set ssl.enabled=false"
        );
    }

    #[test]
    fn job_tolerations_and_resources_options() {
        let c = chart(HelmChartSpec {
            chart: "x".into(),
            bootstrap: true,
            ..Default::default()
        });
        let custom = toleration("custom-taint", Some("Exists"), None, Some("NoExecute"));
        let opts = JobOptions {
            tolerations: vec![custom.clone()],
            resources: Some(ResourceRequirements {
                limits: Some(BTreeMap::from([(
                    "cpu".to_string(),
                    k8s_openapi::apimachinery::pkg::api::resource::Quantity("10".into()),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        };
        let job = build(&c, None, &[], &opts).job;
        let t = pod(&job).tolerations.clone().expect("tolerations");
        assert_eq!(t.len(), 7);
        assert_eq!(t.last(), Some(&custom));
        assert!(container(&job)
            .resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .is_some_and(|l| l["cpu"].0 == "10"));
        let plain = build(
            &chart(HelmChartSpec {
                chart: "x".into(),
                ..Default::default()
            }),
            None,
            &[],
            &JobOptions::default(),
        )
        .job;
        assert!(pod(&plain).tolerations.is_none() && container(&plain).resources.is_none());
    }

    #[test]
    fn job_image_choice() {
        assert_eq!(default_job_image("", ""), DEFAULT_JOB_IMAGE);
        assert_eq!(
            default_job_image("", "reg:5000/"),
            format!("reg:5000/{DEFAULT_JOB_IMAGE}")
        );
        assert_eq!(default_job_image("my/helm:1", "reg:5000"), "my/helm:1");
    }

    #[test]
    fn go_durations() {
        assert_eq!(go_duration("300s"), "5m0s");
        assert_eq!(go_duration("1h"), "1h0m0s");
        assert_eq!(go_duration("90m"), "1h30m0s");
        assert_eq!(go_duration("1.5s"), "1.5s");
        assert_eq!(go_duration("1500ms"), "1.5s");
        assert_eq!(go_duration("250ms"), "250ms");
        assert_eq!(go_duration("0"), "0s");
        assert_eq!(go_duration("bogus"), "bogus");
    }
}
