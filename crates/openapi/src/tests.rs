use super::*;
use rk3s_api::resource::{Scope, Subresource};

fn res(
    group: &str,
    version: &str,
    kind: &str,
    plural: &str,
    scope: Scope,
    def: &str,
    subs: &[&str],
) -> ResourceInfo {
    ResourceInfo {
        group: group.into(),
        version: version.into(),
        kind: kind.into(),
        plural: plural.into(),
        singular: kind.to_lowercase(),
        short_names: vec![],
        categories: vec![],
        scope,
        verbs: [
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        subresources: subs
            .iter()
            .map(|s| {
                let (kind, group, version) = if *s == "scale" {
                    ("Scale", "autoscaling", "v1")
                } else {
                    (kind, "", "")
                };
                Subresource {
                    name: s.to_string(),
                    kind: kind.into(),
                    group: group.into(),
                    version: version.into(),
                    verbs: vec!["get".into(), "patch".into(), "update".into()],
                }
            })
            .collect(),
        definition: def.into(),
        storage_group: group.into(),
        preferred: true,
    }
}

fn sample() -> Vec<ResourceInfo> {
    vec![
        res(
            "",
            "v1",
            "Pod",
            "pods",
            Scope::Namespaced,
            "io.k8s.api.core.v1.Pod",
            &["status"],
        ),
        res(
            "",
            "v1",
            "Namespace",
            "namespaces",
            Scope::Cluster,
            "io.k8s.api.core.v1.Namespace",
            &["status"],
        ),
        res(
            "",
            "v1",
            "Service",
            "services",
            Scope::Namespaced,
            "io.k8s.api.core.v1.Service",
            &["status"],
        ),
        res(
            "apps",
            "v1",
            "Deployment",
            "deployments",
            Scope::Namespaced,
            "io.k8s.api.apps.v1.Deployment",
            &["status", "scale"],
        ),
        res(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRole",
            "clusterroles",
            Scope::Cluster,
            "io.k8s.api.rbac.v1.ClusterRole",
            &[],
        ),
        res(
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
            Scope::Cluster,
            "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.CustomResourceDefinition",
            &["status"],
        ),
    ]
}

fn built() -> OpenApi {
    let start = std::time::Instant::now();
    let o = OpenApi::build(&sample(), "v1.33.0+rk3s").expect("build");
    eprintln!("OpenApi::build took {:?}", start.elapsed());
    o
}

fn v3(o: &OpenApi, gv: &str) -> Value {
    let (json, _) = o.v3_group_version(gv).expect("gv doc");
    serde_json::from_slice(&json).expect("json")
}

#[test]
fn definitions_have_gvk() {
    let o = built();
    assert!(o.missing_definitions().is_empty());
    let d = o
        .definition("io.k8s.api.apps.v1.Deployment")
        .expect("deployment");
    assert_eq!(
        d["x-kubernetes-group-version-kind"],
        json!([{"group": "apps", "kind": "Deployment", "version": "v1"}])
    );
    let p = o.definition("io.k8s.api.core.v1.Pod").expect("pod");
    assert_eq!(p["x-kubernetes-group-version-kind"][0]["kind"], "Pod");
    let l = o
        .definition("io.k8s.api.core.v1.PodList")
        .expect("pod list");
    assert_eq!(l["x-kubernetes-group-version-kind"][0]["kind"], "PodList");
    let s = o
        .definition("io.k8s.api.autoscaling.v1.Scale")
        .expect("scale");
    assert_eq!(
        s["x-kubernetes-group-version-kind"][0]["group"],
        "autoscaling"
    );
}

#[test]
fn container_merge_key_in_documents_and_patch_schema() {
    let o = built();
    let v2: Value = serde_json::from_slice(&o.v2_json()).expect("v2");
    let c = &v2["definitions"]["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"];
    assert_eq!(c["x-kubernetes-patch-merge-key"], "name");
    assert_eq!(c["x-kubernetes-patch-strategy"], "merge");
    let d = v3(&o, "api/v1");
    let c3 = &d["components"]["schemas"]["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"];
    assert_eq!(c3["x-kubernetes-patch-merge-key"], "name");
    assert_eq!(c3["x-kubernetes-list-map-keys"], json!(["name"]));

    let m = o
        .field("io.k8s.api.core.v1.PodSpec", "containers")
        .expect("meta");
    assert_eq!(m.merge_key.as_deref(), Some("name"));
    assert_eq!(m.patch_strategy, vec!["merge".to_string()]);
    assert!(m.is_list);
    assert_eq!(m.type_name.as_deref(), Some("io.k8s.api.core.v1.Container"));
    let v = o
        .field("io.k8s.api.core.v1.PodSpec", "volumes")
        .expect("volumes");
    assert_eq!(
        v.patch_strategy,
        vec!["merge".to_string(), "retainKeys".to_string()]
    );
    let s = o
        .field("io.k8s.api.apps.v1.DeploymentSpec", "strategy")
        .expect("strategy");
    assert_eq!(s.patch_strategy, vec!["retainKeys".to_string()]);
    assert_eq!(
        s.type_name.as_deref(),
        Some("io.k8s.api.apps.v1.DeploymentStrategy")
    );
    assert!(!s.is_list);
    let l = o
        .field("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta", "labels")
        .expect("labels");
    assert!(l.is_map);
    assert_eq!(l.type_name, None);
    assert!(o.field("io.k8s.api.core.v1.PodSpec", "nope").is_none());
}

#[test]
fn v3_index_and_apps_document() {
    let o = built();
    let idx = o.v3_index();
    for gv in [
        "api/v1",
        "apis/apps/v1",
        "apis/apps",
        "api",
        "apis",
        "version",
    ] {
        let url = idx["paths"][gv]["serverRelativeURL"]
            .as_str()
            .unwrap_or_default();
        assert!(
            url.starts_with(&format!("/openapi/v3/{gv}?hash=")),
            "{gv}: {url}"
        );
        let (_, hash) = o.v3_group_version(gv).expect("doc");
        assert!(url.ends_with(&hash));
    }
    let d = v3(&o, "apis/apps/v1");
    assert_eq!(d["openapi"], "3.0.0");
    let item = &d["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"];
    let patch = &item["patch"];
    assert_eq!(patch["operationId"], "patchAppsV1NamespacedDeployment");
    assert_eq!(patch["x-kubernetes-action"], "patch");
    assert_eq!(
        patch["x-kubernetes-group-version-kind"],
        json!({"group": "apps", "kind": "Deployment", "version": "v1"})
    );
    let names: Vec<&str> = patch["parameters"]
        .as_array()
        .expect("params")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert!(names.contains(&"fieldValidation"));
    assert!(patch["requestBody"]["content"]["application/apply-patch+yaml"].is_object());
    assert!(
        d["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments"]["post"]["parameters"]
            .as_array()
            .expect("post params")
            .iter()
            .any(|p| p["name"] == "fieldValidation")
    );
    assert_eq!(
        d["paths"]["/apis/apps/v1/deployments"]["get"]["operationId"],
        "listAppsV1DeploymentForAllNamespaces"
    );
    let scale = &d["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale"]["put"];
    assert_eq!(
        scale["x-kubernetes-group-version-kind"]["group"],
        "autoscaling"
    );
    let schemas = &d["components"]["schemas"];
    assert!(schemas["io.k8s.api.apps.v1.DeploymentStrategy"].is_object());
    assert!(schemas["io.k8s.api.autoscaling.v1.Scale"].is_object());
    // description next to a $ref becomes allOf in v3
    let strategy = &schemas["io.k8s.api.apps.v1.DeploymentSpec"]["properties"]["strategy"];
    assert_eq!(
        strategy["allOf"][0]["$ref"],
        "#/components/schemas/io.k8s.api.apps.v1.DeploymentStrategy"
    );
    assert_eq!(strategy["x-kubernetes-patch-strategy"], "retainKeys");
    // kinds of other groups are not in this document
    assert!(schemas.get("io.k8s.api.rbac.v1.ClusterRole").is_none());
    // int-or-string has no type in v3 (explain prints <IntOrString>)
    let ios = &schemas["io.k8s.apimachinery.pkg.util.intstr.IntOrString"];
    assert_eq!(ios["x-kubernetes-int-or-string"], true);
    assert!(ios.get("type").is_none());
}

fn check_refs(v: &Value, prefix: &str, defs: &Value, where_: &str) -> usize {
    let mut n = 0;
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if let (true, Some(r)) = (k == "$ref", x.as_str()) {
                    let name = r
                        .strip_prefix(prefix)
                        .unwrap_or_else(|| panic!("{where_}: bad ref prefix {r}"));
                    assert!(defs.get(name).is_some(), "{where_}: dangling $ref {r}");
                    n += 1;
                } else {
                    n += check_refs(x, prefix, defs, where_);
                }
            }
        }
        Value::Array(a) => a
            .iter()
            .for_each(|x| n += check_refs(x, prefix, defs, where_)),
        _ => {}
    }
    n
}

#[test]
fn no_dangling_refs() {
    let o = built();
    let v2: Value = serde_json::from_slice(&o.v2_json()).expect("v2");
    assert_eq!(v2["swagger"], "2.0");
    assert!(check_refs(&v2, "#/definitions/", &v2["definitions"], "v2") > 100);
    let s = serde_json::to_string(&v2).expect("s");
    assert!(!s.contains("\"nullable\":true"));
    assert!(!s.contains("#/components/"));
    for gv in o.v3_paths() {
        let d = v3(&o, &gv);
        check_refs(
            &d,
            "#/components/schemas/",
            &d["components"]["schemas"],
            &gv,
        );
        let s = serde_json::to_string(&d).expect("s");
        assert!(!s.contains("#/definitions/"), "{gv}");
    }
    let v2_ios = &v2["definitions"]["io.k8s.apimachinery.pkg.util.intstr.IntOrString"];
    assert_eq!(v2_ios["format"], "int-or-string");
    assert_eq!(v2_ios["type"], "string");
}

#[test]
fn unknown_fields_nested_in_container() {
    let o = built();
    let d = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "labels": {"app": "web"}, "bogus": 1},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "strategy": {"rollingUpdate": {"maxSurge": "25%"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [
                    {"name": "a", "image": "x", "resources": {"limits": {"cpu": "1"}}},
                    {"name": "b", "image": "y", "imagePullPolcy": "Always",
                     "ports": [{"containerPort": 80, "prot": "TCP"}]}
                ]}
            }
        }
    });
    let mut u = o.unknown_fields("io.k8s.api.apps.v1.Deployment", &d);
    u.sort();
    assert_eq!(
        u,
        vec![
            "metadata.bogus".to_string(),
            "spec.template.spec.containers[1].imagePullPolcy".to_string(),
            "spec.template.spec.containers[1].ports[0].prot".to_string(),
        ]
    );
    // free-form fields (CRD validation schemas, raw extensions) are not reported
    let crd = json!({"spec": {"versions": [{"name": "v1", "schema": {"openAPIV3Schema": {"type": "object",
        "properties": {"spec": {"type": "object", "default": {"any": {"thing": 1}}, "x-kubernetes-preserve-unknown-fields": true}}}}}]}});
    assert!(o
        .unknown_fields(
            "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.CustomResourceDefinition",
            &crd
        )
        .is_empty());
}

#[test]
fn custom_schema_for_crd() {
    let mut r = res(
        "stable.example.com",
        "v1",
        "CronTab",
        "crontabs",
        Scope::Namespaced,
        "",
        &["status"],
    );
    r.storage_group = "stable.example.com".into();
    let name = resource_definition_name(&r);
    assert_eq!(name, "com.example.stable.v1.CronTab");
    let mut custom = BTreeMap::new();
    custom.insert(
        name.clone(),
        json!({"type": "object", "properties": {
        "metadata": {"$ref": "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"},
        "spec": {"type": "object", "properties": {"cronSpec": {"type": "string"}}}}}),
    );
    let mut custom_v2 = BTreeMap::new();
    custom_v2.insert(name.clone(), json!({"type": "object"}));
    let o = OpenApi::build_with_crd_schemas(&[r.clone()], "v1.33.0", &custom, &custom_v2)
        .expect("build");
    // v2 takes the v2 form (with the group-version-kind), v3 the neutral one.
    let v2: Value = serde_json::from_slice(&o.v2_json()).expect("v2");
    assert_eq!(
        v2["definitions"][&name],
        json!({"type": "object", "x-kubernetes-group-version-kind": [{"group": "stable.example.com", "kind": "CronTab", "version": "v1"}]})
    );
    let d = v3(&o, "apis/stable.example.com/v1");
    assert_eq!(
        d["components"]["schemas"][&name]["properties"]["spec"]["properties"]["cronSpec"]["type"],
        "string"
    );
    let o = OpenApi::build_with_schemas(&[r], "v1.33.0", &custom).expect("build");
    let d = v3(&o, "apis/stable.example.com/v1");
    let s = &d["components"]["schemas"]["com.example.stable.v1.CronTab"];
    assert_eq!(s["x-kubernetes-group-version-kind"][0]["kind"], "CronTab");
    assert!(
        d["components"]["schemas"]["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"].is_object()
    );
    assert_eq!(
        d["paths"]["/apis/stable.example.com/v1/namespaces/{namespace}/crontabs/{name}"]["patch"]
            ["operationId"],
        "patchStableExampleComV1NamespacedCronTab"
    );
    assert_eq!(
        o.unknown_fields(
            "com.example.stable.v1.CronTab",
            &json!({"spec": {"cronSpc": "x"}})
        ),
        vec!["spec.cronSpc".to_string()]
    );
}

#[test]
fn unknown_definitions_are_reported_not_fatal() {
    let r = res(
        "example.io",
        "v1",
        "Thing",
        "things",
        Scope::Cluster,
        "io.example.v1.Thing",
        &[],
    );
    let o = OpenApi::build(&[r], "v1").expect("build");
    assert_eq!(o.missing_definitions(), ["io.example.v1.Thing".to_string()]);
    assert!(o.v3_group_version("apis/example.io/v1").is_some());
}

#[test]
fn v2_protobuf_carries_definitions_and_extensions() {
    use crate::proto::decode::{get, named};
    let o = built();
    let pb = o.v2_protobuf();
    assert_eq!(get(&pb, 1), Some(&b"2.0"[..]));
    let defs = get(&pb, 9).expect("definitions");
    let dep = named(defs, 1, "io.k8s.api.apps.v1.Deployment").expect("deployment");
    let gvk = named(dep, 31, "x-kubernetes-group-version-kind").expect("gvk");
    let yaml = std::str::from_utf8(get(gvk, 2).expect("yaml")).expect("utf8");
    let v: Value = serde_json::from_str(yaml).expect("json is yaml");
    assert_eq!(
        v,
        json!([{"group": "apps", "kind": "Deployment", "version": "v1"}])
    );
    let spec = named(defs, 1, "io.k8s.api.core.v1.PodSpec").expect("podspec");
    let containers = named(get(spec, 25).expect("props"), 1, "containers").expect("containers");
    let mk = named(containers, 31, "x-kubernetes-patch-merge-key").expect("merge key");
    assert_eq!(get(mk, 2), Some(&b"\"name\""[..]));
}

#[test]
fn every_k8s_openapi_kind_builds_without_dangling_refs() {
    let mut all: Vec<ResourceInfo> = crate::kinds::all()
        .iter()
        .map(|k| (k.name)().into_owned())
        .zip(crate::kinds::all())
        .filter(|(name, _)| !name.starts_with("io.k8s.apimachinery."))
        .map(|(name, k)| {
            let plural = format!("{}s", k.kind.to_lowercase());
            res(
                k.group,
                k.version,
                k.kind,
                &plural,
                Scope::Namespaced,
                &name,
                &["status"],
            )
        })
        .collect();
    all.extend(rk3s_api::resource::builtin::resources());
    let start = std::time::Instant::now();
    let o = OpenApi::build(&all, "v1.33.0").expect("build");
    eprintln!(
        "OpenApi::build of {} resources took {:?}",
        all.len(),
        start.elapsed()
    );
    assert!(
        o.missing_definitions().is_empty(),
        "{:?}",
        o.missing_definitions()
    );
    let v2: Value = serde_json::from_slice(&o.v2_json()).expect("v2");
    check_refs(&v2, "#/definitions/", &v2["definitions"], "v2");
    eprintln!(
        "v2: {} bytes json, {} bytes protobuf",
        o.v2_json().len(),
        o.v2_protobuf().len()
    );
    for gv in o.v3_paths() {
        let d = v3(&o, &gv);
        check_refs(
            &d,
            "#/components/schemas/",
            &d["components"]["schemas"],
            &gv,
        );
    }
    assert!(o.v3_group_version("apis/resource.k8s.io/v1beta2").is_some());
}

#[test]
fn builtin_table_builds() {
    let all = rk3s_api::resource::builtin::resources();
    let start = std::time::Instant::now();
    let o = OpenApi::build(&all, "v1.33.0").expect("build");
    eprintln!(
        "OpenApi::build of the {} built-in resources took {:?}",
        all.len(),
        start.elapsed()
    );
    assert!(
        o.missing_definitions().is_empty(),
        "{:?}",
        o.missing_definitions()
    );
    for r in &all {
        let def = resource_definition_name(r);
        let d = o.definition(&def).unwrap_or_else(|| panic!("{def}"));
        let gvk = gvk_value(&r.group, &r.version, &r.kind);
        assert!(
            d["x-kubernetes-group-version-kind"]
                .as_array()
                .is_some_and(|a| a.contains(&gvk)),
            "{def}"
        );
    }
}

/// The Swagger 2.0 document built the simple way, as one JSON tree, to check the
/// streaming renderers against.
fn v2_tree(o: &OpenApi) -> Value {
    let mut paths = serde_json::Map::new();
    let mut roots = std::collections::BTreeSet::new();
    for p in &o.inner.items {
        let v = crate::paths::render_path(p, crate::paths::Dialect::V2);
        crate::schema::collect_refs(&v, crate::schema::REF_V2, &mut roots);
        paths.insert(p.path.clone(), v);
    }
    for (name, d) in &o.inner.definitions {
        if d.get("x-kubernetes-group-version-kind").is_some() {
            roots.insert(name.clone());
        }
    }
    let mut defs = serde_json::Map::new();
    for name in crate::schema::reachable(&o.inner.definitions, roots) {
        defs.insert(
            name.clone(),
            crate::schema::to_v2(&name, &o.inner.definitions[&name]),
        );
    }
    json!({
        "swagger": "2.0",
        "info": { "title": "Kubernetes", "version": "v1.33.0+rk3s" },
        "paths": paths,
        "definitions": defs,
        "securityDefinitions": { "BearerToken": {
            "description": "Bearer Token authentication", "in": "header", "name": "authorization", "type": "apiKey"
        } },
        "security": [{ "BearerToken": [] }]
    })
}

#[test]
fn streamed_v2_documents_equal_the_tree() {
    let o = built();
    let tree = v2_tree(&o);
    let json = o.v2_json();
    assert_eq!(
        &json[..],
        &serde_json::to_vec(&tree).expect("json")[..],
        "v2 JSON differs from the tree"
    );
    assert_eq!(
        &o.v2_protobuf()[..],
        &crate::proto::encode_document(&tree)[..],
        "v2 protobuf differs"
    );
}

#[test]
fn documents_render_on_first_request_only() {
    let o = built();
    assert_eq!(o.rendered_bytes(), 0, "nothing is rendered by build");
    let idx = o.v3_index();
    assert_eq!(o.rendered_bytes(), 0, "the index keeps hashes only");
    let url = idx["paths"]["apis/apps/v1"]["serverRelativeURL"]
        .as_str()
        .expect("url")
        .to_string();
    let (apps, hash) = o.v3_group_version("apis/apps/v1").expect("apps");
    assert!(url.ends_with(&format!("?hash={hash}")), "{url} vs {hash}");
    assert_eq!(hash, crate::hash_hex(&apps));
    assert_eq!(o.rendered_bytes(), apps.len());
    // Served again from the kept bytes, and the index still agrees.
    let (again, _) = o.v3_group_version("/apis/apps/v1/").expect("apps");
    assert!(Arc::ptr_eq(&apps, &again));
    assert_eq!(o.v3_index(), idx);
    let v2 = o.v2_json();
    assert_eq!(o.rendered_bytes(), apps.len() + v2.len());
    let doc: Value = serde_json::from_slice(&apps).expect("json");
    let keys: Vec<&str> = doc
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["openapi", "info", "paths", "components", "security"]);
    assert!(doc["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"].is_object());
    assert!(o.v3_group_version("apis/nope/v1").is_none());
}

#[test]
fn multi_key_list_maps_are_upstreams() {
    // Every list keyed by more than one field in Kubernetes 1.33 (`+listMapKey` markers
    // of k8s.io/api v0.33), checked against the facts table.
    let expected = [
        (
            "io.k8s.api.core.v1.Container",
            "ports",
            vec!["containerPort", "protocol"],
        ),
        (
            "io.k8s.api.core.v1.EphemeralContainer",
            "ports",
            vec!["containerPort", "protocol"],
        ),
        (
            "io.k8s.api.core.v1.ServiceSpec",
            "ports",
            vec!["port", "protocol"],
        ),
        (
            "io.k8s.api.core.v1.PodSpec",
            "topologySpreadConstraints",
            vec!["topologyKey", "whenUnsatisfiable"],
        ),
        (
            "io.k8s.api.resource.v1beta1.ResourceClaimStatus",
            "devices",
            vec!["driver", "device", "pool"],
        ),
        (
            "io.k8s.api.resource.v1beta2.ResourceClaimStatus",
            "devices",
            vec!["driver", "device", "pool"],
        ),
    ];
    for (def, field, keys) in &expected {
        let fact = crate::facts::facts_for(def)
            .find(|f| f.field == *field)
            .expect("fact");
        assert_eq!(fact.list_type, Some("map"), "{def}.{field}");
        assert_eq!(fact.list_map_keys, keys.as_slice(), "{def}.{field}");
    }
}

#[test]
fn port_lists_are_keyed_by_port_and_protocol_for_server_side_apply() {
    let o = built();
    let v2: Value = serde_json::from_slice(&o.v2_json()).expect("v2");
    let defs = &v2["definitions"];
    assert_eq!(
        defs["io.k8s.api.core.v1.ServiceSpec"]["properties"]["ports"]["x-kubernetes-list-map-keys"],
        json!(["port", "protocol"])
    );
    assert_eq!(
        defs["io.k8s.api.core.v1.ServicePort"]["properties"]["protocol"]["default"],
        json!("TCP")
    );
    assert_eq!(
        defs["io.k8s.api.core.v1.ContainerPort"]["properties"]["protocol"]["default"],
        json!("TCP")
    );
    let m = o
        .field("io.k8s.api.core.v1.Container", "ports")
        .expect("ports");
    assert_eq!(m.list_type.as_deref(), Some("map"));
    assert_eq!(
        m.list_map_keys,
        vec!["containerPort".to_string(), "protocol".to_string()]
    );
    assert_eq!(
        o.field("io.k8s.api.core.v1.ContainerPort", "protocol")
            .and_then(|m| m.default),
        Some(json!("TCP"))
    );

    // The API server's apply schema (DerivedApplySchema over the documents): a DNS
    // Service (53/UDP + 53/TCP) applies; a port without protocol is keyed by TCP.
    let schema = rk3s_patch::DerivedApplySchema(&o);
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "dns", "namespace": "kube-system"},
        "spec": {"ports": [{"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
                           {"name": "metrics", "port": 9153}]}});
    let out = rk3s_patch::server_side_apply(
        None,
        &svc,
        "m",
        false,
        &schema,
        "io.k8s.api.core.v1.Service",
        "2025-01-01T00:00:00Z",
        "v1",
        None,
    )
    .expect("apply");
    let ports = &out["metadata"]["managedFields"][0]["fieldsV1"]["f:spec"]["f:ports"];
    for k in [
        r#"k:{"port":53,"protocol":"UDP"}"#,
        r#"k:{"port":53,"protocol":"TCP"}"#,
        r#"k:{"port":9153,"protocol":"TCP"}"#,
    ] {
        assert!(ports.get(k).is_some(), "{k} in {ports}");
    }
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "x",
        "ports": [{"containerPort": 53, "protocol": "UDP"}, {"containerPort": 53}]}]}});
    rk3s_patch::server_side_apply(
        None,
        &pod,
        "m",
        false,
        &schema,
        "io.k8s.api.core.v1.Pod",
        "2025-01-01T00:00:00Z",
        "v1",
        None,
    )
    .expect("container ports 53/UDP and 53/TCP");
}

#[test]
fn built_in_types_declare_all_their_fields() {
    let o = built();
    assert!(o.declares_all_fields("io.k8s.api.apps.v1.DeploymentSpec"));
    assert!(o.declares_all_fields("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"));
    assert!(!o.declares_all_fields("io.k8s.apimachinery.pkg.apis.meta.v1.Time"));
    assert!(!o.declares_all_fields("no.such.Type"));
    let schema = rk3s_patch::DerivedApplySchema(&o);
    let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "namespace": "default"},
        "spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "c", "image": "x", "bogus": true}]}}, ".foo": 1}});
    let err = rk3s_patch::server_side_apply(
        None,
        &d,
        "m",
        false,
        &schema,
        "io.k8s.api.apps.v1.Deployment",
        "2025-01-01T00:00:00Z",
        "apps/v1",
        None,
    )
    .expect_err("unknown fields");
    assert_eq!(err.status_code(), 500);
    assert_eq!(err.to_string(), "failed to create typed patch object (default/d; apps/v1, Kind=Deployment): errors:\n  .spec.template.spec.containers[name=\"c\"].bogus: field not declared in schema\n  .spec..foo: field not declared in schema");
    // A free-form (missing) definition and a CRD schema preserving unknown fields accept anything.
    let mut custom = BTreeMap::new();
    custom.insert(
        "com.example.v1.Thing".to_string(),
        json!({"type": "object", "properties": {"spec": {"type": "object"}},
        "x-kubernetes-preserve-unknown-fields": true}),
    );
    let o2 = OpenApi::build_with_schemas(&sample(), "v1.33.0+rk3s", &custom).expect("build");
    assert!(!o2.declares_all_fields("com.example.v1.Thing"));
}

#[test]
fn unknown_fields_are_removed_in_place_whatever_their_names() {
    let o = built();
    let mut d = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", ".x": 1, "labels": {".kept": "label values are free-form"}},
        "spec": {"replicas": 1, ".foo": {"a": 1}, "a.b": 2, "c[0]": 3, "template": {"spec": {"containers": [
            {"name": "c", "image": "x", ".bogus": true, "ports": [{"containerPort": 80, "prot": "TCP"}]}]}}}});
    let mut paths = o.unknown_fields("io.k8s.api.apps.v1.Deployment", &d);
    paths.sort();
    assert_eq!(
        paths,
        vec![
            "metadata..x",
            "spec..foo",
            "spec.a.b",
            "spec.c[0]",
            "spec.template.spec.containers[0]..bogus",
            "spec.template.spec.containers[0].ports[0].prot"
        ]
    );
    o.remove_unknown_fields("io.k8s.api.apps.v1.Deployment", &mut d);
    assert_eq!(
        d,
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "labels": {".kept": "label values are free-form"}},
        "spec": {"replicas": 1, "template": {"spec": {"containers": [
            {"name": "c", "image": "x", "ports": [{"containerPort": 80}]}]}}}})
    );
    assert!(o
        .unknown_fields("io.k8s.api.apps.v1.Deployment", &d)
        .is_empty());
}

#[test]
fn a_full_featured_crd_applies_server_side() {
    // Server-side apply of a CRD (kubectl apply --server-side -f crds.yaml) walks the
    // JSONSchemaProps schema: every field upstream declares must be declared here too.
    let o = built();
    let schema = rk3s_patch::DerivedApplySchema(&o);
    let crd: Value = serde_json::from_str(r#"{"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "things.example.com", "annotations": {"a": "b"}},
        "spec": {"group": "example.com", "scope": "Namespaced",
            "names": {"plural": "things", "singular": "thing", "kind": "Thing", "listKind": "ThingList", "shortNames": ["th"], "categories": ["all"]},
            "preserveUnknownFields": false,
            "conversion": {"strategy": "None"},
            "versions": [{"name": "v1", "served": true, "storage": true, "deprecated": false, "deprecationWarning": "x",
                "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas", "labelSelectorPath": ".status.selector"}},
                "additionalPrinterColumns": [{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp", "description": "d", "format": "", "priority": 0}],
                "selectableFields": [{"jsonPath": ".spec.color"}],
                "schema": {"openAPIV3Schema": {"type": "object", "description": "d", "required": ["spec"],
                    "x-kubernetes-validations": [{"rule": "self.spec.replicas >= 0", "message": "m", "messageExpression": "'x'", "reason": "FieldValueInvalid", "fieldPath": ".spec", "optionalOldSelf": false}],
                    "properties": {
                        "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true, "nullable": true,
                            "properties": {
                                "replicas": {"type": "integer", "format": "int32", "minimum": 0, "maximum": 10, "exclusiveMinimum": false, "default": 1, "multipleOf": 1},
                                "color": {"type": "string", "enum": ["red", "blue"], "pattern": "^[a-z]+$", "maxLength": 10, "minLength": 1, "example": "red", "title": "t"},
                                "port": {"x-kubernetes-int-or-string": true, "anyOf": [{"type": "integer"}, {"type": "string"}]},
                                "items": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}}}, "maxItems": 3, "minItems": 0, "uniqueItems": false,
                                    "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
                                "labels": {"type": "object", "additionalProperties": {"type": "string"}, "maxProperties": 5, "minProperties": 0, "x-kubernetes-map-type": "granular"},
                                "flags": {"type": "object", "additionalProperties": true},
                                "embedded": {"type": "object", "x-kubernetes-embedded-resource": true, "x-kubernetes-preserve-unknown-fields": true},
                                "oneof": {"oneOf": [{"required": ["a"]}, {"required": ["b"]}], "allOf": [{"required": ["a"]}], "not": {"required": ["c"]}},
                                "ref": {"externalDocs": {"description": "d", "url": "https://example.com"}}}},
                        "status": {"type": "object", "properties": {"replicas": {"type": "integer"}, "selector": {"type": "string"}}}}}}}]}}"#).expect("crd json");
    let out = rk3s_patch::server_side_apply(
        None,
        &crd,
        "kubectl",
        false,
        &schema,
        "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.CustomResourceDefinition",
        "2025-01-01T00:00:00Z",
        "apiextensions.k8s.io/v1",
        None,
    );
    assert!(out.is_ok(), "{:?}", out.err());
}
