//! The paths of the API: one neutral description of every operation, rendered to
//! Swagger 2.0 or OpenAPI 3.0.

use rk3s_api::ResourceInfo;
use serde_json::{json, Map, Value};

use crate::schema::{REF_V2, REF_V3};

/// Which document dialect to render.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    V2,
    V3,
}

impl Dialect {
    fn prefix(self) -> &'static str {
        match self {
            Dialect::V2 => REF_V2,
            Dialect::V3 => REF_V3,
        }
    }
}

/// A non-body parameter.
#[derive(Clone, Copy)]
pub(crate) struct Param {
    pub name: &'static str,
    pub location: &'static str,
    pub ty: &'static str,
    pub required: bool,
    pub unique: bool,
    pub description: &'static str,
}

const fn q(name: &'static str, ty: &'static str, description: &'static str) -> Param {
    Param {
        name,
        location: "query",
        ty,
        required: false,
        unique: true,
        description,
    }
}

const P_NAME: Param = Param {
    name: "name",
    location: "path",
    ty: "string",
    required: true,
    unique: true,
    description: "name of the object",
};
const P_NAMESPACE: Param = Param {
    name: "namespace",
    location: "path",
    ty: "string",
    required: true,
    unique: true,
    description: "object name and auth scope, such as for teams and projects",
};
const P_PRETTY: Param = q(
    "pretty",
    "string",
    "If 'true', then the output is pretty printed.",
);
const P_DRY_RUN: Param = q(
    "dryRun",
    "string",
    "When present, indicates that modifications should not be persisted. Valid value: All.",
);
const P_FIELD_MANAGER: Param = q(
    "fieldManager",
    "string",
    "A name associated with the actor or entity that is making these changes.",
);
/// The parameter kubectl looks for to decide on server-side field validation.
pub(crate) const P_FIELD_VALIDATION: Param = q(
    "fieldValidation",
    "string",
    "How the server treats unknown or duplicate fields in the request body: Ignore, Warn or Strict.",
);
const P_FORCE: Param = q(
    "force",
    "boolean",
    "Force an apply request, taking over conflicting fields owned by other managers.",
);
const LIST_PARAMS: &[Param] = &[
    q(
        "allowWatchBookmarks",
        "boolean",
        "Ask for watch events of type BOOKMARK.",
    ),
    q(
        "continue",
        "string",
        "The continue token of a previous paginated list call.",
    ),
    q(
        "fieldSelector",
        "string",
        "A selector restricting the returned objects by their fields.",
    ),
    q(
        "labelSelector",
        "string",
        "A selector restricting the returned objects by their labels.",
    ),
    q(
        "limit",
        "integer",
        "Maximum number of objects to return in one list call.",
    ),
    q(
        "resourceVersion",
        "string",
        "Constrains the resource versions the request may be served from.",
    ),
    q(
        "resourceVersionMatch",
        "string",
        "How resourceVersion is applied to list calls.",
    ),
    q(
        "sendInitialEvents",
        "boolean",
        "Start a watch with synthetic events for the current state.",
    ),
    q(
        "timeoutSeconds",
        "integer",
        "Timeout for the list/watch call.",
    ),
    q(
        "watch",
        "boolean",
        "Watch for changes and return them as a stream of events.",
    ),
];
const DELETE_PARAMS: &[Param] = &[
    P_DRY_RUN,
    q(
        "gracePeriodSeconds",
        "integer",
        "Seconds before the object should be deleted.",
    ),
    q(
        "ignoreStoreReadErrorWithClusterBreakingPotential",
        "boolean",
        "Delete even an object that cannot be read from storage (unsafe).",
    ),
    q(
        "orphanDependents",
        "boolean",
        "Deprecated: use propagationPolicy.",
    ),
    q(
        "propagationPolicy",
        "string",
        "Garbage collection policy: Orphan, Background or Foreground.",
    ),
];

const JSON_YAML_PB: &[&str] = &[
    "application/json",
    "application/yaml",
    "application/vnd.kubernetes.protobuf",
];
const WATCH_TYPES: &[&str] = &[
    "application/json",
    "application/yaml",
    "application/vnd.kubernetes.protobuf",
    "application/json;stream=watch",
    "application/vnd.kubernetes.protobuf;stream=watch",
];
const PATCH_TYPES: &[&str] = &[
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
    "application/apply-patch+yaml",
];
const ANY: &[&str] = &["*/*"];

const DELETE_OPTIONS: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions";
const STATUS: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Status";
const PATCH: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Patch";
const API_RESOURCE_LIST: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.APIResourceList";
const API_GROUP: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.APIGroup";
const API_GROUP_LIST: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.APIGroupList";
const API_VERSIONS: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.APIVersions";
const VERSION_INFO: &str = "io.k8s.apimachinery.pkg.version.Info";

/// What a response carries.
#[derive(Clone)]
pub(crate) enum Body {
    /// An object of the named definition.
    Def(String),
    /// Plain text (logs).
    Text,
    /// Nothing described.
    None,
}

/// One operation.
#[derive(Clone)]
pub(crate) struct Op {
    pub method: &'static str,
    pub id: String,
    pub description: String,
    pub action: &'static str,
    /// (group, version, kind) for `x-kubernetes-group-version-kind`.
    pub gvk: Option<(String, String, String)>,
    pub params: Vec<Param>,
    pub body: Option<String>,
    pub consumes: &'static [&'static str],
    pub produces: &'static [&'static str],
    pub responses: Vec<(&'static str, &'static str, Body)>,
    pub tag: String,
}

/// One path with its operations.
#[derive(Clone)]
pub(crate) struct PathItem {
    pub path: String,
    /// The OpenAPI v3 document holding the path (`api/v1`, `apis/apps/v1`, `apis`, ...).
    pub doc: String,
    pub params: Vec<Param>,
    pub ops: Vec<Op>,
}

/// `apps` -> `Apps`, `rbac.authorization.k8s.io` -> `RbacAuthorization`, "" -> `Core`.
pub(crate) fn group_camel(group: &str) -> String {
    if group.is_empty() {
        return "Core".into();
    }
    let g = group.strip_suffix(".k8s.io").unwrap_or(group);
    g.split(['.', '-']).map(capitalize).collect()
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// `api/v1` or `apis/<group>/<version>`.
pub(crate) fn gv_doc(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

fn tag(group: &str, version: &str) -> String {
    let g = if group.is_empty() {
        "core".to_string()
    } else {
        group
            .strip_suffix(".k8s.io")
            .unwrap_or(group)
            .replace('.', "_")
    };
    let g = {
        // upstream joins dotted groups camel-style in tags (rbacAuthorization_v1)
        let mut parts = g.split('_');
        let first = parts.next().unwrap_or_default().to_string();
        first + &parts.map(capitalize).collect::<String>()
    };
    format!("{g}_{version}")
}

fn ok(body: Body) -> Vec<(&'static str, &'static str, Body)> {
    vec![("200", "OK", body), ("401", "Unauthorized", Body::None)]
}

/// Every path of one resource.
pub(crate) fn resource_paths(
    r: &ResourceInfo,
    definition: &str,
    def_of: &dyn Fn(&str, &str, &str) -> String,
) -> Vec<PathItem> {
    let doc = gv_doc(&r.group, &r.version);
    let base = format!("/{doc}");
    let gc = group_camel(&r.group);
    let vc = capitalize(&r.version);
    let ns = r.namespaced();
    let scope = if ns { "Namespaced" } else { "" };
    let kind = &r.kind;
    let gvk = Some((r.group.clone(), r.version.clone(), r.kind.clone()));
    let tag = tag(&r.group, &r.version);
    let list_def = format!("{definition}List");
    let collection = if ns {
        format!("{base}/namespaces/{{namespace}}/{}", r.plural)
    } else {
        format!("{base}/{}", r.plural)
    };
    let scope_params = |extra: &[Param]| {
        let mut v = Vec::new();
        v.extend_from_slice(extra);
        if ns {
            v.push(P_NAMESPACE);
        }
        v.push(P_PRETTY);
        v
    };
    let op = |method, id: String, description: String, action, params: Vec<Param>| Op {
        method,
        id,
        description,
        action,
        gvk: gvk.clone(),
        params,
        body: None,
        consumes: ANY,
        produces: JSON_YAML_PB,
        responses: ok(Body::Def(definition.to_string())),
        tag: tag.clone(),
    };
    let write_params = || vec![P_DRY_RUN, P_FIELD_MANAGER, P_FIELD_VALIDATION];
    let mut paths = Vec::new();

    // Collection.
    let mut ops = Vec::new();
    if r.has_verb("list") {
        let mut o = op(
            "get",
            format!("list{gc}{vc}{scope}{kind}"),
            format!("list or watch objects of kind {kind}"),
            "list",
            LIST_PARAMS.to_vec(),
        );
        o.produces = WATCH_TYPES;
        o.responses = ok(Body::Def(list_def.clone()));
        ops.push(o);
    }
    if r.has_verb("create") {
        let mut o = op(
            "post",
            format!("create{gc}{vc}{scope}{kind}"),
            format!("create a {kind}"),
            "post",
            write_params(),
        );
        o.body = Some(definition.to_string());
        o.responses = vec![
            ("200", "OK", Body::Def(definition.to_string())),
            ("201", "Created", Body::Def(definition.to_string())),
            ("202", "Accepted", Body::Def(definition.to_string())),
            ("401", "Unauthorized", Body::None),
        ];
        ops.push(o);
    }
    if r.has_verb("deletecollection") {
        let mut params = DELETE_PARAMS.to_vec();
        params.extend_from_slice(
            LIST_PARAMS
                .iter()
                .filter(|p| p.name != "watch" && p.name != "allowWatchBookmarks")
                .copied()
                .collect::<Vec<_>>()
                .as_slice(),
        );
        params.sort_by_key(|p| p.name);
        let mut o = op(
            "delete",
            format!("delete{gc}{vc}Collection{scope}{kind}"),
            format!("delete collection of {kind}"),
            "deletecollection",
            params,
        );
        o.body = Some(DELETE_OPTIONS.to_string());
        o.responses = ok(Body::Def(STATUS.to_string()));
        ops.push(o);
    }
    if !ops.is_empty() {
        paths.push(PathItem {
            path: collection.clone(),
            doc: doc.clone(),
            params: scope_params(&[]),
            ops,
        });
    }

    // All namespaces.
    if ns && r.has_verb("list") {
        let mut o = op(
            "get",
            format!("list{gc}{vc}{kind}ForAllNamespaces"),
            format!("list or watch objects of kind {kind}"),
            "list",
            LIST_PARAMS.to_vec(),
        );
        o.produces = WATCH_TYPES;
        o.responses = ok(Body::Def(list_def.clone()));
        let mut params = LIST_PARAMS.to_vec();
        params.push(P_PRETTY);
        o.params = Vec::new();
        paths.push(PathItem {
            path: format!("{base}/{}", r.plural),
            doc: doc.clone(),
            params,
            ops: vec![o],
        });
    }

    // Item.
    let item = format!("{collection}/{{name}}");
    let mut ops = Vec::new();
    if r.has_verb("get") {
        ops.push(op(
            "get",
            format!("read{gc}{vc}{scope}{kind}"),
            format!("read the specified {kind}"),
            "get",
            Vec::new(),
        ));
    }
    if r.has_verb("update") {
        let mut o = op(
            "put",
            format!("replace{gc}{vc}{scope}{kind}"),
            format!("replace the specified {kind}"),
            "put",
            write_params(),
        );
        o.body = Some(definition.to_string());
        o.responses = vec![
            ("200", "OK", Body::Def(definition.to_string())),
            ("201", "Created", Body::Def(definition.to_string())),
            ("401", "Unauthorized", Body::None),
        ];
        ops.push(o);
    }
    if r.has_verb("delete") {
        let mut o = op(
            "delete",
            format!("delete{gc}{vc}{scope}{kind}"),
            format!("delete a {kind}"),
            "delete",
            DELETE_PARAMS.to_vec(),
        );
        o.body = Some(DELETE_OPTIONS.to_string());
        o.responses = vec![
            ("200", "OK", Body::Def(STATUS.to_string())),
            ("202", "Accepted", Body::Def(STATUS.to_string())),
            ("401", "Unauthorized", Body::None),
        ];
        ops.push(o);
    }
    if r.has_verb("patch") {
        ops.push(patch_op(op(
            "patch",
            format!("patch{gc}{vc}{scope}{kind}"),
            format!("partially update the specified {kind}"),
            "patch",
            Vec::new(),
        )));
    }
    if !ops.is_empty() {
        paths.push(PathItem {
            path: item.clone(),
            doc: doc.clone(),
            params: scope_params(&[P_NAME]),
            ops,
        });
    }

    // Subresources.
    for sub in &r.subresources {
        let sub_group = if sub.group.is_empty() && sub.version.is_empty() {
            r.group.clone()
        } else {
            sub.group.clone()
        };
        let sub_version = if sub.version.is_empty() {
            r.version.clone()
        } else {
            sub.version.clone()
        };
        let sub_kind = if sub.kind.is_empty() {
            r.kind.clone()
        } else {
            sub.kind.clone()
        };
        let same_kind = sub_kind == r.kind && sub_group == r.group && sub_version == r.version;
        let sub_def = if same_kind {
            definition.to_string()
        } else {
            def_of(&sub_group, &sub_version, &sub_kind)
        };
        let sc = capitalize(&sub.name);
        let sgvk = Some((sub_group.clone(), sub_version.clone(), sub_kind.clone()));
        let connect = is_connect(&sub.name);
        let mut ops = Vec::new();
        let has = |v: &str| sub.verbs.iter().any(|x| x == v);
        let mk = |method, verb: &str, action, params: Vec<Param>, body: Body| Op {
            method,
            id: format!("{verb}{gc}{vc}{scope}{kind}{sc}"),
            description: format!("{verb} {} of the specified {kind}", sub.name),
            action,
            gvk: sgvk.clone(),
            params,
            body: None,
            consumes: ANY,
            produces: JSON_YAML_PB,
            responses: ok(body),
            tag: tag.clone(),
        };
        if connect {
            for (method, verb) in [("get", "connectGet"), ("post", "connectPost")] {
                if has(if method == "get" { "get" } else { "create" }) {
                    let mut o = mk(method, verb, "connect", Vec::new(), Body::Text);
                    o.consumes = ANY;
                    o.produces = ANY;
                    ops.push(o);
                }
            }
        } else if sub.name == "log" {
            if has("get") {
                let mut o = mk("get", "read", "get", Vec::new(), Body::Text);
                o.produces = &[
                    "text/plain",
                    "application/json",
                    "application/yaml",
                    "application/vnd.kubernetes.protobuf",
                ];
                ops.push(o);
            }
        } else {
            if has("get") {
                ops.push(mk(
                    "get",
                    "read",
                    "get",
                    Vec::new(),
                    Body::Def(sub_def.clone()),
                ));
            }
            if has("create") {
                let mut o = mk(
                    "post",
                    "create",
                    "post",
                    write_params(),
                    Body::Def(sub_def.clone()),
                );
                o.body = Some(sub_def.clone());
                o.responses = vec![
                    ("200", "OK", Body::Def(sub_def.clone())),
                    ("201", "Created", Body::Def(sub_def.clone())),
                    ("202", "Accepted", Body::Def(sub_def.clone())),
                    ("401", "Unauthorized", Body::None),
                ];
                ops.push(o);
            }
            if has("update") {
                let mut o = mk(
                    "put",
                    "replace",
                    "put",
                    write_params(),
                    Body::Def(sub_def.clone()),
                );
                o.body = Some(sub_def.clone());
                o.responses = vec![
                    ("200", "OK", Body::Def(sub_def.clone())),
                    ("201", "Created", Body::Def(sub_def.clone())),
                    ("401", "Unauthorized", Body::None),
                ];
                ops.push(o);
            }
            if has("patch") {
                ops.push(patch_op(mk(
                    "patch",
                    "patch",
                    "patch",
                    Vec::new(),
                    Body::Def(sub_def.clone()),
                )));
            }
        }
        if !ops.is_empty() {
            paths.push(PathItem {
                path: format!("{item}/{}", sub.name),
                doc: doc.clone(),
                params: scope_params(&[P_NAME]),
                ops,
            });
        }
    }
    paths
}

/// Subresources that upgrade the connection (no schema; `x-kubernetes-action: connect`).
pub(crate) fn is_connect(name: &str) -> bool {
    matches!(name, "exec" | "attach" | "portforward" | "proxy")
}

fn patch_op(mut o: Op) -> Op {
    o.params = vec![P_DRY_RUN, P_FIELD_MANAGER, P_FIELD_VALIDATION, P_FORCE];
    o.body = Some(PATCH.to_string());
    o.consumes = PATCH_TYPES;
    let def = match &o.responses[0].2 {
        Body::Def(d) => d.clone(),
        _ => String::new(),
    };
    o.responses = vec![
        ("200", "OK", Body::Def(def.clone())),
        ("201", "Created", Body::Def(def)),
        ("401", "Unauthorized", Body::None),
    ];
    o
}

/// `GET /api/v1/` or `/apis/<group>/<version>/`: the resource list of a group version.
pub(crate) fn resources_path(group: &str, version: &str) -> PathItem {
    let doc = gv_doc(group, version);
    let gc = group_camel(group);
    let vc = capitalize(version);
    PathItem {
        path: format!("/{doc}/"),
        doc,
        params: Vec::new(),
        ops: vec![simple_get(
            format!("get{gc}{vc}APIResources"),
            "get available resources",
            API_RESOURCE_LIST,
            tag(group, version),
        )],
    }
}

/// `GET /apis/<group>/`: the group.
pub(crate) fn group_path(group: &str) -> PathItem {
    let gc = group_camel(group);
    let t = tag(group, "x");
    let t = t.trim_end_matches("_x").to_string();
    PathItem {
        path: format!("/apis/{group}/"),
        doc: format!("apis/{group}"),
        params: Vec::new(),
        ops: vec![simple_get(
            format!("get{gc}APIGroup"),
            "get information of a group",
            API_GROUP,
            t,
        )],
    }
}

/// `/api/`, `/apis/` and `/version/`.
pub(crate) fn root_paths() -> Vec<PathItem> {
    vec![
        PathItem {
            path: "/api/".into(),
            doc: "api".into(),
            params: Vec::new(),
            ops: vec![simple_get(
                "getCoreAPIVersions".into(),
                "get available API versions",
                API_VERSIONS,
                "core".into(),
            )],
        },
        PathItem {
            path: "/apis/".into(),
            doc: "apis".into(),
            params: Vec::new(),
            ops: vec![simple_get(
                "getAPIVersions".into(),
                "get available API versions",
                API_GROUP_LIST,
                "apis".into(),
            )],
        },
        PathItem {
            path: "/version/".into(),
            doc: "version".into(),
            params: Vec::new(),
            ops: vec![simple_get(
                "getCodeVersion".into(),
                "get the code version",
                VERSION_INFO,
                "version".into(),
            )],
        },
    ]
}

fn simple_get(id: String, description: &str, def: &str, tag: String) -> Op {
    Op {
        method: "get",
        id,
        description: description.to_string(),
        action: "",
        gvk: None,
        params: Vec::new(),
        body: None,
        consumes: &[
            "application/json",
            "application/yaml",
            "application/vnd.kubernetes.protobuf",
        ],
        produces: JSON_YAML_PB,
        responses: ok(Body::Def(def.to_string())),
        tag,
    }
}

fn render_param(p: &Param, d: Dialect) -> Value {
    let mut m = Map::new();
    m.insert("description".into(), p.description.into());
    m.insert("in".into(), p.location.into());
    m.insert("name".into(), p.name.into());
    if p.required {
        m.insert("required".into(), true.into());
    }
    match d {
        Dialect::V2 => {
            m.insert("type".into(), p.ty.into());
            if p.unique {
                m.insert("uniqueItems".into(), true.into());
            }
        }
        Dialect::V3 => {
            let mut s = Map::new();
            s.insert("type".into(), p.ty.into());
            if p.unique {
                s.insert("uniqueItems".into(), true.into());
            }
            m.insert("schema".into(), Value::Object(s));
        }
    }
    Value::Object(m)
}

fn schema_of(body: &Body, d: Dialect) -> Option<Value> {
    match body {
        Body::Def(name) => Some(json!({ "$ref": format!("{}{}", d.prefix(), name) })),
        Body::Text => Some(json!({ "type": "string" })),
        Body::None => None,
    }
}

fn render_op(o: &Op, d: Dialect) -> Value {
    let mut m = Map::new();
    m.insert("description".into(), o.description.clone().into());
    if d == Dialect::V2 {
        m.insert("consumes".into(), json!(o.consumes));
        m.insert("produces".into(), json!(o.produces));
        m.insert("schemes".into(), json!(["https"]));
    }
    m.insert("tags".into(), json!([o.tag]));
    m.insert("operationId".into(), o.id.clone().into());
    let mut params: Vec<Value> = Vec::new();
    if let (Some(body), Dialect::V2) = (&o.body, d) {
        params.push(json!({
            "in": "body", "name": "body", "required": true,
            "schema": { "$ref": format!("{REF_V2}{body}") }
        }));
    }
    params.extend(o.params.iter().map(|p| render_param(p, d)));
    if !params.is_empty() {
        m.insert("parameters".into(), Value::Array(params));
    }
    if let (Some(body), Dialect::V3) = (&o.body, d) {
        let mut content = Map::new();
        for ct in o.consumes {
            content.insert(
                (*ct).to_string(),
                json!({ "schema": { "$ref": format!("{REF_V3}{body}") } }),
            );
        }
        m.insert(
            "requestBody".into(),
            json!({ "content": content, "required": true }),
        );
    }
    let mut responses = Map::new();
    for (code, desc, body) in &o.responses {
        let mut r = Map::new();
        r.insert("description".into(), (*desc).into());
        if let Some(s) = schema_of(body, d) {
            match d {
                Dialect::V2 => {
                    r.insert("schema".into(), s);
                }
                Dialect::V3 => {
                    let mut content = Map::new();
                    for ct in o.produces {
                        content.insert((*ct).to_string(), json!({ "schema": s.clone() }));
                    }
                    r.insert("content".into(), Value::Object(content));
                }
            }
        }
        responses.insert((*code).to_string(), Value::Object(r));
    }
    m.insert("responses".into(), Value::Object(responses));
    if !o.action.is_empty() {
        m.insert("x-kubernetes-action".into(), o.action.into());
    }
    if let Some((g, v, k)) = &o.gvk {
        m.insert(
            "x-kubernetes-group-version-kind".into(),
            json!({ "group": g, "kind": k, "version": v }),
        );
    }
    Value::Object(m)
}

/// Renders one path item.
pub(crate) fn render_path(p: &PathItem, d: Dialect) -> Value {
    let mut m = Map::new();
    for o in &p.ops {
        m.insert(o.method.to_string(), render_op(o, d));
    }
    if !p.params.is_empty() {
        m.insert(
            "parameters".into(),
            Value::Array(p.params.iter().map(|x| render_param(x, d)).collect()),
        );
    }
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_names_in_operation_ids() {
        assert_eq!(group_camel(""), "Core");
        assert_eq!(group_camel("apps"), "Apps");
        assert_eq!(
            group_camel("rbac.authorization.k8s.io"),
            "RbacAuthorization"
        );
        assert_eq!(group_camel("stable.example.com"), "StableExampleCom");
        assert_eq!(
            tag("rbac.authorization.k8s.io", "v1"),
            "rbacAuthorization_v1"
        );
        assert_eq!(tag("", "v1"), "core_v1");
    }
}
