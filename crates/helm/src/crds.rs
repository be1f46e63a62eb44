//! The CustomResourceDefinitions of `helmcharts.helm.cattle.io` and
//! `helmchartconfigs.helm.cattle.io` (helm-controller's names, short names, printer
//! columns and status subresource; a structural schema of our own with the fields of
//! [`crate::types`]).

use serde_json::{json, Value};

fn string() -> Value {
    json!({"type": "string"})
}

fn boolean() -> Value {
    json!({"type": "boolean"})
}

fn local_ref() -> Value {
    json!({"type": "object", "properties": {"name": string()}, "x-kubernetes-map-type": "atomic"})
}

fn free_object() -> Value {
    json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
}

fn values_secrets() -> Value {
    json!({"type": "array", "items": {"type": "object", "properties": {
        "name": string(),
        "keys": {"type": "array", "items": string()},
        "ignoreUpdates": boolean(),
    }}})
}

fn policy() -> Value {
    json!({"type": "string", "enum": ["abort", "reinstall", "retry"]})
}

fn server_side() -> Value {
    json!({"type": "string", "enum": ["true", "false", "auto"]})
}

fn crd(kind: &str, plural: &str, short: &str, version: Value) -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{plural}.{}", crate::types::GROUP)},
        "spec": {
            "group": crate::types::GROUP,
            "names": {
                "kind": kind,
                "listKind": format!("{kind}List"),
                "plural": plural,
                "singular": kind.to_ascii_lowercase(),
                "shortNames": [short],
            },
            "scope": "Namespaced",
            "versions": [version],
        },
    })
}

/// The HelmChart CRD.
pub fn helm_chart_crd() -> Value {
    let spec = json!({"type": "object", "properties": {
        "targetNamespace": string(),
        "createNamespace": boolean(),
        "chart": string(),
        "version": string(),
        "repo": string(),
        "repoCA": string(),
        "repoCAConfigMap": local_ref(),
        "set": {"type": "object", "additionalProperties": {"x-kubernetes-int-or-string": true}},
        "values": {"x-kubernetes-preserve-unknown-fields": true},
        "valuesContent": string(),
        "valuesSecrets": values_secrets(),
        "helmVersion": string(),
        "bootstrap": boolean(),
        "takeOwnership": boolean(),
        "serverSide": server_side(),
        "forceConflicts": boolean(),
        "chartContent": string(),
        "jobImage": string(),
        "backOffLimit": {"type": "integer", "format": "int32"},
        "timeout": string(),
        "failurePolicy": policy(),
        "authSecret": local_ref(),
        "authPassCredentials": boolean(),
        "insecureSkipTLSVerify": boolean(),
        "plainHTTP": boolean(),
        "dockerRegistrySecret": local_ref(),
        "podSecurityContext": free_object(),
        "securityContext": free_object(),
        "driver": {"type": "string", "enum": ["secret", "configmap"]},
    }});
    let status = json!({"type": "object", "properties": {
        "jobName": string(),
        "conditions": {"type": "array", "items": {"type": "object", "required": ["status", "type"], "properties": {
            "type": string(),
            "status": string(),
            "reason": string(),
            "message": string(),
        }}},
    }});
    crd(
        "HelmChart",
        "helmcharts",
        "hc",
        json!({
            "name": crate::types::VERSION,
            "served": true,
            "storage": true,
            "subresources": {"status": {}},
            "additionalPrinterColumns": [
                {"name": "Repo", "type": "string", "jsonPath": ".spec.repo"},
                {"name": "Chart", "type": "string", "jsonPath": ".spec.chart"},
                {"name": "Version", "type": "string", "jsonPath": ".spec.version"},
                {"name": "TargetNamespace", "type": "string", "jsonPath": ".spec.targetNamespace"},
                {"name": "Bootstrap", "type": "boolean", "jsonPath": ".spec.bootstrap"},
                {"name": "Failed", "type": "string", "jsonPath": ".status.conditions[?(@.type=='Failed')].status"},
                {"name": "Job", "type": "string", "jsonPath": ".status.jobName", "priority": 10},
            ],
            "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                "apiVersion": string(),
                "kind": string(),
                "metadata": {"type": "object"},
                "spec": spec,
                "status": status,
            }}},
        }),
    )
}

/// The HelmChartConfig CRD.
pub fn helm_chart_config_crd() -> Value {
    let spec = json!({"type": "object", "properties": {
        "values": {"x-kubernetes-preserve-unknown-fields": true},
        "valuesContent": string(),
        "valuesSecrets": values_secrets(),
        "failurePolicy": policy(),
        "serverSide": server_side(),
        "forceConflicts": boolean(),
    }});
    crd(
        "HelmChartConfig",
        "helmchartconfigs",
        "hcc",
        json!({
            "name": crate::types::VERSION,
            "served": true,
            "storage": true,
            "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                "apiVersion": string(),
                "kind": string(),
                "metadata": {"type": "object"},
                "spec": spec,
            }}},
        }),
    )
}
