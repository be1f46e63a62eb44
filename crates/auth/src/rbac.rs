//! RBAC: rule matching, role aggregation, subject resolution, rule listing and the
//! escalation check, following upstream's RBAC authorizer and `rbac/validation`.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::util::{arr, go_quote, go_quote_list, str_at, str_list};
use crate::{Attributes, Decision, UserInfo};

/// One RBAC policy rule (`rbac.authorization.k8s.io/v1` `PolicyRule`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRule {
    /// Verbs, `*` for all.
    #[serde(default)]
    pub verbs: Vec<String>,
    /// API groups, `""` for core, `*` for all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_groups: Vec<String>,
    /// Resources (`pods`, `pods/log`, `*/scale`, `*`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
    /// Object names the rule is restricted to; empty for any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resource_names: Vec<String>,
    /// Non-resource URLs (`/healthz`, `/api/*`, `*`).
    #[serde(
        default,
        rename = "nonResourceURLs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub non_resource_urls: Vec<String>,
}

impl PolicyRule {
    /// Reads a rule from its JSON form; missing or malformed fields are empty lists.
    pub fn from_json(v: &Value) -> Self {
        PolicyRule {
            verbs: str_list(v, "verbs"),
            api_groups: str_list(v, "apiGroups"),
            resources: str_list(v, "resources"),
            resource_names: str_list(v, "resourceNames"),
            non_resource_urls: str_list(v, "nonResourceURLs"),
        }
    }

    /// The JSON form of this rule.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// Upstream's compact rendering used in escalation messages:
    /// `{APIGroups:[""], Resources:["pods"], Verbs:["get"]}`.
    pub fn compact_string(&self) -> String {
        let mut parts = Vec::new();
        if !self.api_groups.is_empty() {
            parts.push(format!("APIGroups:{}", go_quote_list(&self.api_groups)));
        }
        if !self.resources.is_empty() {
            parts.push(format!("Resources:{}", go_quote_list(&self.resources)));
        }
        if !self.non_resource_urls.is_empty() {
            parts.push(format!(
                "NonResourceURLs:{}",
                go_quote_list(&self.non_resource_urls)
            ));
        }
        if !self.resource_names.is_empty() {
            parts.push(format!(
                "ResourceNames:{}",
                go_quote_list(&self.resource_names)
            ));
        }
        if !self.verbs.is_empty() {
            parts.push(format!("Verbs:{}", go_quote_list(&self.verbs)));
        }
        format!("{{{}}}", parts.join(", "))
    }

    /// True when this rule allows the request (upstream's `RuleAllows`).
    pub fn allows(&self, a: &Attributes) -> bool {
        if a.resource_request {
            let combined = if a.subresource.is_empty() {
                a.resource.clone()
            } else {
                format!("{}/{}", a.resource, a.subresource)
            };
            verb_matches(self, &a.verb)
                && api_group_matches(self, &a.api_group)
                && resource_matches(self, &combined, &a.subresource)
                && resource_name_matches(self, &a.name)
        } else {
            verb_matches(self, &a.verb) && non_resource_url_matches(self, &a.path)
        }
    }
}

fn verb_matches(r: &PolicyRule, verb: &str) -> bool {
    r.verbs.iter().any(|v| v == "*" || v == verb)
}

fn api_group_matches(r: &PolicyRule, group: &str) -> bool {
    r.api_groups.iter().any(|g| g == "*" || g == group)
}

fn resource_matches(r: &PolicyRule, combined: &str, subresource: &str) -> bool {
    r.resources.iter().any(|res| {
        res == "*"
            || res == combined
            || (!subresource.is_empty()
                && res.len() == subresource.len() + 2
                && res.starts_with("*/")
                && res.ends_with(subresource))
    })
}

fn resource_name_matches(r: &PolicyRule, name: &str) -> bool {
    r.resource_names.is_empty() || r.resource_names.iter().any(|n| n == name)
}

fn non_resource_url_matches(r: &PolicyRule, path: &str) -> bool {
    r.non_resource_urls.iter().any(|u| {
        u == "*" || u == path || (u.ends_with('*') && path.starts_with(u.trim_end_matches('*')))
    })
}

/// True when any of the rules allows the request (upstream's `RulesAllow`).
pub(crate) fn rules_allow(a: &Attributes, rules: &[PolicyRule]) -> bool {
    rules.iter().any(|r| r.allows(a))
}

#[derive(Debug, Clone)]
struct Subject {
    kind: String,
    name: String,
    namespace: String,
}

#[derive(Debug, Clone)]
struct Binding {
    kind: &'static str,
    name: String,
    namespace: String,
    role_kind: String,
    role_name: String,
    subjects: Vec<Subject>,
}

impl Binding {
    fn from_json(v: &Value, kind: &'static str) -> Self {
        Binding {
            kind,
            name: str_at(v, &["metadata", "name"]).to_string(),
            namespace: str_at(v, &["metadata", "namespace"]).to_string(),
            role_kind: str_at(v, &["roleRef", "kind"]).to_string(),
            role_name: str_at(v, &["roleRef", "name"]).to_string(),
            subjects: arr(v, "subjects")
                .iter()
                .map(|s| Subject {
                    kind: str_at(s, &["kind"]).to_string(),
                    name: str_at(s, &["name"]).to_string(),
                    namespace: str_at(s, &["namespace"]).to_string(),
                })
                .collect(),
        }
    }

    /// Upstream's `appliesTo`: does one of the subjects designate the user?
    fn applies_to(&self, user: &UserInfo) -> Option<&Subject> {
        self.subjects.iter().find(|s| match s.kind.as_str() {
            "User" => s.name == user.name,
            "Group" => user.groups.contains(&s.name),
            "ServiceAccount" => {
                let ns = if s.namespace.is_empty() {
                    self.namespace.as_str()
                } else {
                    s.namespace.as_str()
                };
                !ns.is_empty() && format!("system:serviceaccount:{ns}:{}", s.name) == user.name
            }
            _ => false,
        })
    }
}

/// A resource rule as reported by `SelfSubjectRulesReview`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceRule {
    /// Verbs.
    pub verbs: Vec<String>,
    /// API groups.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub api_groups: Vec<String>,
    /// Resources.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
    /// Resource names.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resource_names: Vec<String>,
}

/// A non-resource rule as reported by `SelfSubjectRulesReview`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NonResourceRule {
    /// Verbs.
    pub verbs: Vec<String>,
    /// URLs.
    #[serde(rename = "nonResourceURLs", skip_serializing_if = "Vec::is_empty")]
    pub non_resource_urls: Vec<String>,
}

/// What [`RbacSnapshot::rules_for`] found: the body of a `SubjectRulesReviewStatus`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubjectRules {
    /// Rules on resources, in binding order (cluster bindings first).
    pub resource_rules: Vec<ResourceRule>,
    /// Rules on non-resource URLs.
    pub non_resource_rules: Vec<NonResourceRule>,
    /// True when the list is known to be incomplete (RBAC itself never sets it;
    /// upstream's Node authorizer does for nodes).
    pub incomplete: bool,
    /// Errors met while resolving bindings (e.g. a missing role), as upstream's
    /// `evaluationError`.
    pub evaluation_error: Option<String>,
}

impl SubjectRules {
    /// The `status` object of a `SelfSubjectRulesReview`.
    pub fn to_status_json(&self) -> Value {
        let mut v = json!({
            "resourceRules": self.resource_rules,
            "nonResourceRules": self.non_resource_rules,
            "incomplete": self.incomplete,
        });
        if let (Some(e), Some(o)) = (&self.evaluation_error, v.as_object_mut()) {
            o.insert("evaluationError".into(), Value::String(e.clone()));
        }
        v
    }
}

/// An immutable view of all RBAC objects, built from the watch cache; rebuild it (or
/// swap in a new one) when any Role, ClusterRole or binding changes.
#[derive(Debug, Clone, Default)]
pub struct RbacSnapshot {
    cluster_roles: HashMap<String, Vec<PolicyRule>>,
    roles: HashMap<(String, String), Vec<PolicyRule>>,
    cluster_role_bindings: Vec<Binding>,
    role_bindings: HashMap<String, Vec<Binding>>,
}

impl RbacSnapshot {
    /// Builds the snapshot from lists of `Role`, `ClusterRole`, `RoleBinding` and
    /// `ClusterRoleBinding` objects. ClusterRoles with an `aggregationRule` get the
    /// union of the rules of the ClusterRoles their selectors match (as upstream's
    /// clusterrole-aggregation controller keeps them), whatever their stored rules.
    pub fn new(
        roles: &[Value],
        cluster_roles: &[Value],
        role_bindings: &[Value],
        cluster_role_bindings: &[Value],
    ) -> Self {
        let mut snap = RbacSnapshot::default();
        for cr in aggregate_internal(cluster_roles) {
            snap.cluster_roles.insert(cr.name, cr.rules);
        }
        for r in roles {
            let key = (
                str_at(r, &["metadata", "namespace"]).to_string(),
                str_at(r, &["metadata", "name"]).to_string(),
            );
            let rules = arr(r, "rules").iter().map(PolicyRule::from_json).collect();
            snap.roles.insert(key, rules);
        }
        for b in cluster_role_bindings {
            snap.cluster_role_bindings
                .push(Binding::from_json(b, "ClusterRoleBinding"));
        }
        for b in role_bindings {
            let b = Binding::from_json(b, "RoleBinding");
            snap.role_bindings
                .entry(b.namespace.clone())
                .or_default()
                .push(b);
        }
        snap
    }

    /// The (aggregated) rules of a ClusterRole, if it exists.
    pub fn cluster_role_rules(&self, name: &str) -> Option<&[PolicyRule]> {
        self.cluster_roles.get(name).map(Vec::as_slice)
    }

    fn role_ref_rules(&self, b: &Binding) -> Result<&[PolicyRule], String> {
        match b.role_kind.as_str() {
            "Role" => self
                .roles
                .get(&(b.namespace.clone(), b.role_name.clone()))
                .map(Vec::as_slice)
                .ok_or_else(|| {
                    format!(
                        "role.rbac.authorization.k8s.io {} not found",
                        go_quote(&b.role_name)
                    )
                }),
            "ClusterRole" => self
                .cluster_roles
                .get(&b.role_name)
                .map(Vec::as_slice)
                .ok_or_else(|| {
                    format!(
                        "clusterrole.rbac.authorization.k8s.io {} not found",
                        go_quote(&b.role_name)
                    )
                }),
            other => Err(format!(
                "unsupported role reference kind: {}",
                go_quote(other)
            )),
        }
    }

    /// Visits the rules that apply to `user` in `namespace` (cluster bindings, then
    /// the namespace's bindings when `namespace` is non-empty) until `visit` returns
    /// false. Resolution errors are collected in `errors`.
    fn visit_rules(
        &self,
        user: &UserInfo,
        namespace: &str,
        errors: &mut Vec<String>,
        mut visit: impl FnMut(&Binding, &Subject, &PolicyRule) -> bool,
    ) {
        let ns_bindings: &[Binding] = if namespace.is_empty() {
            &[]
        } else {
            self.role_bindings
                .get(namespace)
                .map(Vec::as_slice)
                .unwrap_or(&[])
        };
        for b in self.cluster_role_bindings.iter().chain(ns_bindings) {
            let Some(subject) = b.applies_to(user) else {
                continue;
            };
            match self.role_ref_rules(b) {
                Ok(rules) => {
                    for r in rules {
                        if !visit(b, subject, r) {
                            return;
                        }
                    }
                }
                Err(e) => errors.push(e),
            }
        }
    }

    /// Decides a request as upstream's RBAC authorizer: `Allow` when a rule of a
    /// binding that applies to the user matches, else `NoOpinion` whose reason is
    /// empty or `RBAC: <resolution errors>`. RBAC never denies outright.
    pub fn authorize(&self, a: &Attributes) -> Decision {
        let mut errors = Vec::new();
        let mut allowed = false;
        self.visit_rules(&a.user, &a.namespace, &mut errors, |b, s, r| {
            if r.allows(a) {
                tracing::trace!(
                    "RBAC: allowed by {} {:?} of {} {:?} to {} {:?}",
                    b.kind,
                    b.name,
                    b.role_kind,
                    b.role_name,
                    s.kind,
                    s.name
                );
                allowed = true;
                return false;
            }
            true
        });
        if allowed {
            return Decision::Allow;
        }
        match aggregate_errors(&errors) {
            Some(e) => Decision::NoOpinion(format!("RBAC: {e}")),
            None => Decision::NoOpinion(String::new()),
        }
    }

    fn all_rules(&self, user: &UserInfo, namespace: &str) -> (Vec<PolicyRule>, Vec<String>) {
        let mut errors = Vec::new();
        let mut rules = Vec::new();
        self.visit_rules(user, namespace, &mut errors, |_, _, r| {
            rules.push(r.clone());
            true
        });
        (rules, errors)
    }

    /// The rules the user holds in `namespace` (cluster-wide ones included), for
    /// `SelfSubjectRulesReview` / `kubectl auth can-i --list`.
    pub fn rules_for(&self, user: &UserInfo, namespace: &str) -> SubjectRules {
        let (rules, errors) = self.all_rules(user, namespace);
        let mut out = SubjectRules {
            evaluation_error: aggregate_errors(&errors),
            ..Default::default()
        };
        for r in rules {
            if !r.resources.is_empty() {
                out.resource_rules.push(ResourceRule {
                    verbs: r.verbs.clone(),
                    api_groups: r.api_groups.clone(),
                    resources: r.resources.clone(),
                    resource_names: r.resource_names.clone(),
                });
            }
            if !r.non_resource_urls.is_empty() {
                out.non_resource_rules.push(NonResourceRule {
                    verbs: r.verbs,
                    non_resource_urls: r.non_resource_urls,
                });
            }
        }
        out
    }

    /// Upstream's `ConfirmNoEscalation`: `Ok` when the user already holds every
    /// permission in `rules` within `namespace` (empty for ClusterRoles), else the
    /// upstream message listing the missing ones. The caller skips the check for
    /// members of `system:masters` and for users allowed the `escalate` verb on the
    /// role (upstream's `EscalationAllowed` / `RoleEscalationAuthorized`), and for a
    /// binding first checks the `bind` verb on the referenced role.
    pub fn confirm_no_escalation(
        &self,
        user: &UserInfo,
        namespace: &str,
        rules: &[PolicyRule],
    ) -> Result<(), String> {
        let (owner, errors) = self.all_rules(user, namespace);
        let missing = covers(&owner, rules);
        if missing.is_empty() {
            return Ok(());
        }
        let descriptions: BTreeSet<String> = compact_rules(missing)
            .iter()
            .map(PolicyRule::compact_string)
            .collect();
        let mut msg = format!(
            "user {} (groups={}) is attempting to grant RBAC permissions not currently held:\n{}",
            go_quote(&user.name),
            go_quote_list(&user.groups),
            descriptions.into_iter().collect::<Vec<_>>().join("\n")
        );
        if !errors.is_empty() {
            msg.push_str(&format!("; resolution errors: [{}]", errors.join(" ")));
        }
        Err(msg)
    }
}

/// Formats errors as upstream's `utilerrors.NewAggregate(...).Error()`.
fn aggregate_errors(errors: &[String]) -> Option<String> {
    let mut seen = BTreeSet::new();
    let uniq: Vec<&String> = errors.iter().filter(|e| seen.insert(e.as_str())).collect();
    match uniq.len() {
        0 => None,
        1 => Some(uniq[0].clone()),
        _ => Some(format!(
            "[{}]",
            uniq.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// Splits a rule into one rule per (group, resource, verb[, name]) and per (url, verb).
fn breakdown(rule: &PolicyRule) -> Vec<PolicyRule> {
    let mut out = Vec::new();
    for g in &rule.api_groups {
        for res in &rule.resources {
            for v in &rule.verbs {
                let base = PolicyRule {
                    verbs: vec![v.clone()],
                    api_groups: vec![g.clone()],
                    resources: vec![res.clone()],
                    ..Default::default()
                };
                if rule.resource_names.is_empty() {
                    out.push(base);
                } else {
                    for n in &rule.resource_names {
                        let mut r = base.clone();
                        r.resource_names = vec![n.clone()];
                        out.push(r);
                    }
                }
            }
        }
    }
    for u in &rule.non_resource_urls {
        for v in &rule.verbs {
            out.push(PolicyRule {
                verbs: vec![v.clone()],
                non_resource_urls: vec![u.clone()],
                ..Default::default()
            });
        }
    }
    out
}

fn has(set: &[String], s: &str) -> bool {
    set.iter().any(|x| x == s)
}

fn has_all(set: &[String], wanted: &[String]) -> bool {
    wanted.iter().all(|w| has(set, w))
}

fn resource_covers_all(owner: &[String], wanted: &[String]) -> bool {
    if has(owner, "*") || has_all(owner, wanted) {
        return true;
    }
    wanted.iter().all(|path| {
        if has(owner, path) {
            return true;
        }
        match path.split_once('/') {
            Some((_, sub)) => has(owner, &format!("*/{sub}")),
            None => false,
        }
    })
}

fn non_resource_url_covers(owner: &str, path: &str) -> bool {
    owner == path || (owner.ends_with('*') && path.starts_with(owner.trim_end_matches('*')))
}

fn rule_covers(owner: &PolicyRule, sub: &PolicyRule) -> bool {
    let verbs = has(&owner.verbs, "*") || has_all(&owner.verbs, &sub.verbs);
    let groups = has(&owner.api_groups, "*") || has_all(&owner.api_groups, &sub.api_groups);
    let resources = resource_covers_all(&owner.resources, &sub.resources);
    let urls = sub.non_resource_urls.iter().all(|p| {
        owner
            .non_resource_urls
            .iter()
            .any(|o| non_resource_url_covers(o, p))
    });
    let names = if sub.resource_names.is_empty() {
        owner.resource_names.is_empty()
    } else {
        owner.resource_names.is_empty() || has_all(&owner.resource_names, &sub.resource_names)
    };
    verbs && groups && resources && urls && names
}

/// The broken-down parts of `servant` rules that no `owner` rule covers.
fn covers(owner: &[PolicyRule], servant: &[PolicyRule]) -> Vec<PolicyRule> {
    servant
        .iter()
        .flat_map(breakdown)
        .filter(|sub| !owner.iter().any(|o| rule_covers(o, sub)))
        .collect()
}

/// Merges the verbs of rules on the same single (group, resource, name).
fn compact_rules(rules: Vec<PolicyRule>) -> Vec<PolicyRule> {
    let mut out: Vec<PolicyRule> = Vec::new();
    let mut simple: Vec<PolicyRule> = Vec::new();
    for r in rules {
        let is_simple = r.non_resource_urls.is_empty()
            && r.api_groups.len() == 1
            && r.resources.len() == 1
            && r.resource_names.len() <= 1;
        if !is_simple {
            out.push(r);
            continue;
        }
        if let Some(existing) = simple.iter_mut().find(|e| {
            e.api_groups == r.api_groups
                && e.resources == r.resources
                && e.resource_names == r.resource_names
        }) {
            for v in r.verbs {
                if !has(&existing.verbs, &v) {
                    existing.verbs.push(v);
                }
            }
        } else {
            simple.push(r);
        }
    }
    out.extend(simple);
    out
}

struct ClusterRoleInfo {
    name: String,
    labels: HashMap<String, String>,
    selectors: Option<Vec<Value>>,
    rules: Vec<PolicyRule>,
}

/// Whether a `clusterRoleSelectors` entry selects a role's labels (an invalid selector
/// selects nothing, as upstream's aggregation controller skips it).
fn label_selector_matches(sel: &Value, labels: &HashMap<String, String>) -> bool {
    let parsed = match sel {
        Value::Null => Ok(rk3s_core::LabelSelector::everything()),
        s => rk3s_core::LabelSelector::from_json(s),
    };
    parsed.is_ok_and(|s| s.matches_with(|k| labels.get(k).map(String::as_str)))
}

fn aggregate_internal(cluster_roles: &[Value]) -> Vec<ClusterRoleInfo> {
    let mut infos: Vec<ClusterRoleInfo> = cluster_roles
        .iter()
        .map(|cr| ClusterRoleInfo {
            name: str_at(cr, &["metadata", "name"]).to_string(),
            labels: cr
                .pointer("/metadata/labels")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                        .collect()
                })
                .unwrap_or_default(),
            selectors: cr
                .pointer("/aggregationRule/clusterRoleSelectors")
                .and_then(Value::as_array)
                .cloned(),
            rules: arr(cr, "rules").iter().map(PolicyRule::from_json).collect(),
        })
        .collect();
    // Sorted by name, as the controller lists the matches.
    let mut order: Vec<usize> = (0..infos.len()).collect();
    order.sort_by(|&a, &b| infos[a].name.cmp(&infos[b].name));
    // Iterate to a fixed point: aggregated roles can select other aggregated roles
    // (admin <- edit <- view); bounded so that cycles cannot loop forever.
    for _ in 0..16 {
        let mut changed = false;
        for i in 0..infos.len() {
            let Some(selectors) = infos[i].selectors.clone() else {
                continue;
            };
            let mut new_rules: Vec<PolicyRule> = Vec::new();
            for sel in &selectors {
                for &j in &order {
                    if j == i || !label_selector_matches(sel, &infos[j].labels) {
                        continue;
                    }
                    for r in &infos[j].rules {
                        if !new_rules.contains(r) {
                            new_rules.push(r.clone());
                        }
                    }
                }
            }
            if new_rules != infos[i].rules {
                infos[i].rules = new_rules;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    infos
}

/// Returns the ClusterRoles with the `rules` of each aggregated one (with an
/// `aggregationRule`) replaced by the union of the rules of the roles it selects,
/// as upstream's clusterrole-aggregation controller writes them. Other roles are
/// returned unchanged.
pub fn aggregate_cluster_roles(cluster_roles: &[Value]) -> Vec<Value> {
    let infos = aggregate_internal(cluster_roles);
    cluster_roles
        .iter()
        .zip(infos)
        .map(|(orig, info)| {
            let mut v = orig.clone();
            if info.selectors.is_some() {
                if let Some(o) = v.as_object_mut() {
                    o.insert(
                        "rules".into(),
                        Value::Array(info.rules.iter().map(PolicyRule::to_json).collect()),
                    );
                }
            }
            v
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bootstrap_policy;

    fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> PolicyRule {
        PolicyRule {
            verbs: verbs.iter().map(|s| s.to_string()).collect(),
            api_groups: groups.iter().map(|s| s.to_string()).collect(),
            resources: resources.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn u(name: &str) -> UserInfo {
        UserInfo::new(name, &["system:authenticated"])
    }

    fn res(verb: &str, ns: &str, group: &str, resource: &str, sub: &str, name: &str) -> Attributes {
        Attributes::resource(u("alice"), verb, ns, group, resource, sub, name)
    }

    #[test]
    fn verb_group_resource_wildcards() {
        let r = rule(&["*"], &["*"], &["*"]);
        assert!(r.allows(&res("delete", "x", "apps", "deployments", "scale", "a")));
        let r = rule(&["get"], &[""], &["pods"]);
        assert!(r.allows(&res("get", "x", "", "pods", "", "")));
        assert!(!r.allows(&res("list", "x", "", "pods", "", "")));
        assert!(!r.allows(&res("get", "x", "apps", "pods", "", "")));
        // "pods" does not cover subresources
        assert!(!r.allows(&res("get", "x", "", "pods", "log", "p")));
    }

    #[test]
    fn subresource_matching() {
        let r = rule(&["get"], &[""], &["pods/log"]);
        assert!(r.allows(&res("get", "x", "", "pods", "log", "p")));
        assert!(!r.allows(&res("get", "x", "", "pods", "", "p")));
        assert!(!r.allows(&res("get", "x", "", "pods", "exec", "p")));
        let r = rule(&["get"], &["*"], &["*/scale"]);
        assert!(r.allows(&res("get", "x", "apps", "deployments", "scale", "d")));
        assert!(!r.allows(&res("get", "x", "apps", "deployments", "", "d")));
        assert!(!r.allows(&res("get", "x", "apps", "deployments", "status", "d")));
        // "*/scale" must not match a subresource merely ending the same way
        assert!(!r.allows(&res("get", "x", "apps", "deployments", "rescale", "d")));
    }

    #[test]
    fn resource_names_restrict() {
        let mut r = rule(&["get", "list", "update"], &[""], &["configmaps"]);
        r.resource_names = vec!["cfg".into()];
        assert!(r.allows(&res("get", "x", "", "configmaps", "", "cfg")));
        assert!(!r.allows(&res("get", "x", "", "configmaps", "", "other")));
        // list without a name (no metadata.name field selector) is not allowed
        assert!(!r.allows(&res("list", "x", "", "configmaps", "", "")));
        assert!(r.allows(&res("list", "x", "", "configmaps", "", "cfg")));
    }

    #[test]
    fn non_resource_urls() {
        let r = PolicyRule {
            verbs: vec!["get".into()],
            non_resource_urls: vec!["/healthz".into(), "/apis/*".into()],
            ..Default::default()
        };
        let nr = |p: &str| Attributes::non_resource(u("a"), "get", p);
        assert!(r.allows(&nr("/healthz")));
        assert!(!r.allows(&nr("/healthz/etcd")));
        assert!(r.allows(&nr("/apis/apps/v1")));
        assert!(r.allows(&nr("/apis/")));
        assert!(!r.allows(&nr("/apis")));
        assert!(!r.allows(&Attributes::non_resource(u("a"), "post", "/healthz")));
        // resource rules never match non-resource requests
        assert!(!rule(&["*"], &["*"], &["*"]).allows(&nr("/healthz")));
        let star = PolicyRule {
            verbs: vec!["*".into()],
            non_resource_urls: vec!["*".into()],
            ..Default::default()
        };
        assert!(star.allows(&nr("/anything")));
    }

    fn view_binding(ns: &str, user: &str) -> Value {
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "alice-view", "namespace": ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]
        })
    }

    /// The bootstrap policy plus extra objects, split by kind.
    fn snapshot_with(extra: &[Value]) -> RbacSnapshot {
        let mut all = bootstrap_policy();
        all.extend_from_slice(extra);
        let of = |k: &str| -> Vec<Value> {
            all.iter()
                .filter(|o| str_at(o, &["kind"]) == k)
                .cloned()
                .collect()
        };
        RbacSnapshot::new(
            &of("Role"),
            &of("ClusterRole"),
            &of("RoleBinding"),
            &of("ClusterRoleBinding"),
        )
    }

    #[test]
    fn aggregation_fills_view_edit_admin() {
        let snap = snapshot_with(&[]);
        let view = snap.cluster_role_rules("view").unwrap_or_default();
        let get_pods = Attributes::resource(u("x"), "get", "ns", "", "pods", "", "p");
        assert!(rules_allow(&get_pods, view));
        let create_pods = Attributes::resource(u("x"), "create", "ns", "", "pods", "", "");
        assert!(!rules_allow(&create_pods, view));
        let secrets = Attributes::resource(u("x"), "get", "ns", "", "secrets", "", "s");
        assert!(!rules_allow(&secrets, view));
        let edit = snap.cluster_role_rules("edit").unwrap_or_default();
        assert!(rules_allow(&create_pods, edit));
        assert!(rules_allow(&get_pods, edit), "edit includes view");
        assert!(rules_allow(&secrets, edit));
        let admin = snap.cluster_role_rules("admin").unwrap_or_default();
        let roles = Attributes::resource(
            u("x"),
            "create",
            "ns",
            "rbac.authorization.k8s.io",
            "rolebindings",
            "",
            "",
        );
        assert!(rules_allow(&roles, admin));
        assert!(
            rules_allow(&get_pods, admin),
            "admin includes edit includes view"
        );
        assert!(!rules_allow(&roles, edit));
    }

    #[test]
    fn aggregation_with_custom_role_and_expressions() {
        let crs = vec![
            json!({"metadata": {"name": "agg"}, "aggregationRule": {"clusterRoleSelectors": [
                {"matchExpressions": [{"key": "team", "operator": "In", "values": ["a", "b"]}]}]},
                "rules": [{"verbs": ["stale"], "apiGroups": [""], "resources": ["x"]}]}),
            json!({"metadata": {"name": "p1", "labels": {"team": "a"}}, "rules": [{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}]}),
            json!({"metadata": {"name": "p2", "labels": {"team": "c"}}, "rules": [{"verbs": ["get"], "apiGroups": [""], "resources": ["secrets"]}]}),
        ];
        let out = aggregate_cluster_roles(&crs);
        assert_eq!(
            out[0]["rules"],
            json!([{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}])
        );
        assert_eq!(out[1], crs[1]);
    }

    #[test]
    fn view_binding_allows_reads_in_namespace_only() {
        let snap = snapshot_with(&[view_binding("default", "alice")]);
        for verb in ["get", "list", "watch"] {
            assert_eq!(
                snap.authorize(&res(verb, "default", "", "pods", "", "")),
                Decision::Allow,
                "{verb}"
            );
        }
        let create = res("create", "default", "", "pods", "", "");
        let d = snap.authorize(&create);
        assert_eq!(d, Decision::NoOpinion(String::new()));
        assert_eq!(
            crate::forbidden_message(&create, ""),
            r#"pods is forbidden: User "alice" cannot create resource "pods" in API group "" in the namespace "default""#
        );
        let other = res("list", "kube-system", "", "pods", "", "");
        assert!(!snap.authorize(&other).is_allowed());
        assert_eq!(
            crate::forbidden_message(&other, ""),
            r#"pods is forbidden: User "alice" cannot list resource "pods" in API group "" in the namespace "kube-system""#
        );
        // all-namespace list is cluster scope: not allowed by a RoleBinding
        assert!(!snap
            .authorize(&res("list", "", "", "pods", "", ""))
            .is_allowed());
        // discovery is open to all authenticated users
        let disc = Attributes::non_resource(u("alice"), "get", "/apis/apps/v1");
        assert!(snap.authorize(&disc).is_allowed());
        // secrets are not part of view
        assert!(!snap
            .authorize(&res("get", "default", "", "secrets", "", "s"))
            .is_allowed());
        // another user in the same namespace has nothing
        let bob = Attributes::resource(u("bob"), "get", "default", "", "pods", "", "p");
        assert!(!snap.authorize(&bob).is_allowed());
    }

    #[test]
    fn masters_allowed_through_cluster_admin_binding() {
        let root = UserInfo::new("admin", &["system:masters", "system:authenticated"]);
        let snap = snapshot_with(&[]);
        let a = Attributes::resource(root.clone(), "delete", "", "", "nodes", "", "n1");
        assert_eq!(snap.authorize(&a), Decision::Allow);
        assert!(snap
            .authorize(&Attributes::non_resource(root.clone(), "get", "/metrics"))
            .is_allowed());
        // without the binding, nothing special about the group
        let empty = RbacSnapshot::new(&[], &[], &[], &[]);
        assert!(!empty.authorize(&a).is_allowed());
    }

    #[test]
    fn service_account_subjects_and_namespace_defaulting() {
        let b = json!({"kind": "RoleBinding", "metadata": {"name": "b", "namespace": "ns1"},
            "roleRef": {"kind": "ClusterRole", "name": "view"},
            "subjects": [{"kind": "ServiceAccount", "name": "builder"}]});
        let snap = snapshot_with(&[b]);
        let sa = UserInfo::new(
            "system:serviceaccount:ns1:builder",
            &["system:serviceaccounts"],
        );
        let a = Attributes::resource(sa, "list", "ns1", "", "pods", "", "");
        assert!(snap.authorize(&a).is_allowed());
        let other = UserInfo::new("system:serviceaccount:ns2:builder", &[]);
        let a = Attributes::resource(other, "list", "ns1", "", "pods", "", "");
        assert!(!snap.authorize(&a).is_allowed());
    }

    #[test]
    fn controller_service_accounts_bound() {
        let snap = snapshot_with(&[]);
        let sa = UserInfo::new(
            "system:serviceaccount:kube-system:replicaset-controller",
            &[],
        );
        let a = Attributes::resource(sa, "create", "default", "", "pods", "", "");
        assert!(snap.authorize(&a).is_allowed());
        let proxy = UserInfo::new("system:kube-proxy", &[]);
        let a = Attributes::resource(
            proxy,
            "watch",
            "",
            "discovery.k8s.io",
            "endpointslices",
            "",
            "",
        );
        assert!(snap.authorize(&a).is_allowed());
    }

    #[test]
    fn role_in_namespace_and_missing_role_reason() {
        let role = json!({"kind": "Role", "metadata": {"name": "cm", "namespace": "ns1"},
            "rules": [{"verbs": ["update"], "apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["c1"]}]});
        let b = json!({"kind": "RoleBinding", "metadata": {"name": "b", "namespace": "ns1"},
            "roleRef": {"kind": "Role", "name": "cm"}, "subjects": [{"kind": "User", "name": "alice"}]});
        let dangling = json!({"kind": "RoleBinding", "metadata": {"name": "d", "namespace": "ns1"},
            "roleRef": {"kind": "Role", "name": "gone"}, "subjects": [{"kind": "Group", "name": "system:authenticated"}]});
        let snap = snapshot_with(&[role, b, dangling]);
        assert!(snap
            .authorize(&res("update", "ns1", "", "configmaps", "", "c1"))
            .is_allowed());
        assert_eq!(
            snap.authorize(&res("update", "ns1", "", "configmaps", "", "c2")),
            Decision::NoOpinion(r#"RBAC: role.rbac.authorization.k8s.io "gone" not found"#.into())
        );
        let rules = snap.rules_for(&u("alice"), "ns1");
        assert_eq!(
            rules.evaluation_error.as_deref(),
            Some(r#"role.rbac.authorization.k8s.io "gone" not found"#)
        );
    }

    #[test]
    fn rules_for_view_user_matches_can_i_list() {
        let snap = snapshot_with(&[view_binding("default", "alice")]);
        let r = snap.rules_for(&u("alice"), "default");
        assert!(!r.incomplete);
        assert_eq!(r.evaluation_error, None);
        let has_rule = |verbs: &[&str], group: &str, resource: &str| {
            r.resource_rules.iter().any(|x| {
                x.api_groups.iter().any(|g| g == group)
                    && x.resources.iter().any(|s| s == resource)
                    && verbs.iter().all(|v| x.verbs.iter().any(|xv| xv == v))
            })
        };
        // system:basic-user
        assert!(has_rule(
            &["create"],
            "authorization.k8s.io",
            "selfsubjectaccessreviews"
        ));
        assert!(has_rule(
            &["create"],
            "authorization.k8s.io",
            "selfsubjectrulesreviews"
        ));
        assert!(has_rule(
            &["create"],
            "authentication.k8s.io",
            "selfsubjectreviews"
        ));
        // view
        assert!(has_rule(&["get", "list", "watch"], "", "pods"));
        assert!(has_rule(&["get", "list", "watch"], "apps", "deployments"));
        assert!(has_rule(&["get", "list", "watch"], "", "pods/log"));
        assert!(!has_rule(&["get"], "", "secrets"));
        // system:discovery + system:public-info-viewer
        let urls: Vec<&str> = r
            .non_resource_rules
            .iter()
            .flat_map(|n| n.non_resource_urls.iter().map(String::as_str))
            .collect();
        for p in [
            "/api",
            "/api/*",
            "/apis",
            "/apis/*",
            "/healthz",
            "/livez",
            "/readyz",
            "/version",
            "/version/",
            "/openapi",
            "/openapi/*",
        ] {
            assert!(urls.contains(&p), "{p}");
        }
        assert!(r.non_resource_rules.iter().all(|n| n.verbs == vec!["get"]));
        // in another namespace only the cluster-wide rules remain
        let other = snap.rules_for(&u("alice"), "kube-system");
        assert!(other.resource_rules.len() < r.resource_rules.len());
        assert!(!other
            .resource_rules
            .iter()
            .any(|x| x.resources.iter().any(|s| s == "pods")));
        let status = r.to_status_json();
        assert_eq!(status["incomplete"], json!(false));
        assert!(status["nonResourceRules"][0]["nonResourceURLs"].is_array());
    }

    #[test]
    fn escalation_refused_with_upstream_message() {
        let snap = snapshot_with(&[view_binding("default", "alice")]);
        let want = vec![
            rule(&["get", "list"], &[""], &["pods"]),
            rule(&["get", "create"], &[""], &["secrets"]),
            rule(&["delete"], &["apps"], &["deployments"]),
        ];
        let err = snap
            .confirm_no_escalation(&u("alice"), "default", &want)
            .unwrap_err();
        assert_eq!(
            err,
            "user \"alice\" (groups=[\"system:authenticated\"]) is attempting to grant RBAC permissions not currently held:\n\
             {APIGroups:[\"\"], Resources:[\"secrets\"], Verbs:[\"get\" \"create\"]}\n\
             {APIGroups:[\"apps\"], Resources:[\"deployments\"], Verbs:[\"delete\"]}"
                .replace("             ", "")
        );
    }

    #[test]
    fn escalation_allowed_when_covered() {
        let snap = snapshot_with(&[view_binding("default", "alice")]);
        let want = vec![
            rule(&["get", "list"], &[""], &["pods", "pods/log"]),
            PolicyRule {
                verbs: vec!["get".into()],
                non_resource_urls: vec!["/apis/apps".into()],
                ..Default::default()
            },
        ];
        assert_eq!(
            snap.confirm_no_escalation(&u("alice"), "default", &want),
            Ok(())
        );
        // not in another namespace
        assert!(snap
            .confirm_no_escalation(&u("alice"), "other", &want)
            .is_err());
        // cluster-admin covers everything, including named and subresource rules
        let root = UserInfo::new("root", &["system:masters"]);
        let mut named = rule(&["*"], &["*"], &["*/scale", "secrets"]);
        named.resource_names = vec!["x".into()];
        assert_eq!(snap.confirm_no_escalation(&root, "", &[named]), Ok(()));
    }

    #[test]
    fn coverage_details() {
        let owner = vec![rule(&["get"], &["*"], &["*/status"])];
        assert!(covers(
            &owner,
            &[rule(&["get"], &["apps"], &["deployments/status"])]
        )
        .is_empty());
        assert_eq!(
            covers(&owner, &[rule(&["get"], &["apps"], &["deployments"])]).len(),
            1
        );
        let mut named_owner = rule(&["get"], &[""], &["secrets"]);
        named_owner.resource_names = vec!["a".into()];
        // an owner restricted to names does not cover an unrestricted rule
        assert_eq!(
            covers(
                &[named_owner.clone()],
                &[rule(&["get"], &[""], &["secrets"])]
            )
            .len(),
            1
        );
        let mut named = rule(&["get"], &[""], &["secrets"]);
        named.resource_names = vec!["a".into()];
        assert!(covers(&[named_owner], &[named]).is_empty());
    }
}
