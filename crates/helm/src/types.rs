//! The `helm.cattle.io/v1` kinds, with helm-controller's field names: `HelmChart`
//! (spec and status) and `HelmChartConfig` (spec).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{LocalObjectReference, PodSecurityContext, SecurityContext};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// API group.
pub const GROUP: &str = "helm.cattle.io";
/// API version.
pub const VERSION: &str = "v1";
/// `apiVersion`.
pub const API_VERSION: &str = "helm.cattle.io/v1";

/// A HelmChart.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HelmChart {
    /// Metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Spec.
    #[serde(default)]
    pub spec: HelmChartSpec,
    /// Status.
    #[serde(default)]
    pub status: HelmChartStatus,
}

/// A values Secret named by a chart (`valuesSecrets`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretSpec {
    /// Secret name.
    #[serde(default)]
    pub name: String,
    /// Keys holding values files.
    #[serde(default)]
    pub keys: Vec<String>,
    /// Changes of the Secret do not re-run the Job.
    #[serde(default)]
    pub ignore_updates: bool,
}

/// `spec` of a HelmChart.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HelmChartSpec {
    /// Namespace of the release (default: the chart's).
    #[serde(default)]
    pub target_namespace: String,
    /// Create the target namespace.
    #[serde(default)]
    pub create_namespace: bool,
    /// Chart name in the repository, or a URL.
    #[serde(default)]
    pub chart: String,
    /// Chart version.
    #[serde(default)]
    pub version: String,
    /// Repository URL.
    #[serde(default)]
    pub repo: String,
    /// CA bundle (PEM) of the repository.
    #[serde(default, rename = "repoCA")]
    pub repo_ca: String,
    /// ConfigMap of CA bundles for the repository.
    #[serde(default, rename = "repoCAConfigMap")]
    pub repo_ca_config_map: Option<LocalObjectReference>,
    /// `--set` values.
    #[serde(default)]
    pub set: BTreeMap<String, IntOrString>,
    /// Values (inline object).
    #[serde(default)]
    pub values: Option<Value>,
    /// Values file content.
    #[serde(default)]
    pub values_content: String,
    /// Secrets holding values files.
    #[serde(default)]
    pub values_secrets: Vec<SecretSpec>,
    /// Helm version (only `v3` or empty is supported).
    #[serde(default)]
    pub helm_version: String,
    /// Install before the cluster is ready (host network, control-plane nodes).
    #[serde(default)]
    pub bootstrap: bool,
    /// `--take-ownership`.
    #[serde(default)]
    pub take_ownership: bool,
    /// Server-side apply (`true`, `false`, `auto`).
    #[serde(default)]
    pub server_side: String,
    /// Force field-manager conflicts.
    #[serde(default)]
    pub force_conflicts: bool,
    /// The chart archive, base64.
    #[serde(default)]
    pub chart_content: String,
    /// Image of the Job.
    #[serde(default)]
    pub job_image: String,
    /// `backoffLimit` of the Job (default 1000).
    #[serde(default)]
    pub back_off_limit: Option<i32>,
    /// Helm timeout (a Go duration, e.g. `5m0s`).
    #[serde(default)]
    pub timeout: Option<String>,
    /// `abort`, `reinstall` (default) or `retry`.
    #[serde(default)]
    pub failure_policy: String,
    /// Basic-auth Secret for the repository.
    #[serde(default)]
    pub auth_secret: Option<LocalObjectReference>,
    /// Pass credentials to all domains.
    #[serde(default)]
    pub auth_pass_credentials: bool,
    /// Skip TLS verification of the repository.
    #[serde(default, rename = "insecureSkipTLSVerify")]
    pub insecure_skip_tls_verify: bool,
    /// Plain HTTP to the repository.
    #[serde(default, rename = "plainHTTP")]
    pub plain_http: bool,
    /// Registry credentials Secret (`.dockerconfigjson`).
    #[serde(default)]
    pub docker_registry_secret: Option<LocalObjectReference>,
    /// Pod security context of the Job.
    #[serde(default)]
    pub pod_security_context: Option<PodSecurityContext>,
    /// Container security context of the Job.
    #[serde(default)]
    pub security_context: Option<SecurityContext>,
    /// Helm storage driver (`secret` default, `configmap`).
    #[serde(default)]
    pub driver: String,
}

/// A condition of a HelmChart.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelmChartCondition {
    /// `JobCreated` or `Failed`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False`, `Unknown`.
    pub status: String,
    /// Reason.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Message.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// `status` of a HelmChart.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HelmChartStatus {
    /// The Job applying the chart.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub job_name: String,
    /// Conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<HelmChartCondition>,
}

/// A HelmChartConfig (same namespace and name as its HelmChart).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HelmChartConfig {
    /// Metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Spec.
    #[serde(default)]
    pub spec: HelmChartConfigSpec,
}

/// `spec` of a HelmChartConfig.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HelmChartConfigSpec {
    /// Values (inline object).
    #[serde(default)]
    pub values: Option<Value>,
    /// Values file content.
    #[serde(default)]
    pub values_content: String,
    /// Secrets holding values files.
    #[serde(default)]
    pub values_secrets: Vec<SecretSpec>,
    /// Overrides the chart's failure policy.
    #[serde(default)]
    pub failure_policy: String,
    /// Overrides the chart's server-side apply setting.
    #[serde(default)]
    pub server_side: String,
    /// Overrides the chart's force-conflicts setting.
    #[serde(default)]
    pub force_conflicts: Option<bool>,
}

/// Whether inline `values` are empty (absent or null; `{}` is not), as
/// helm-controller's `extjson.IsEmpty`.
pub fn values_empty(v: &Option<Value>) -> bool {
    matches!(v, None | Some(Value::Null))
}
