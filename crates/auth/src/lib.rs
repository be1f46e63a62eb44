//! Authentication and authorization logic for the rk3s API server, independent of
//! HTTP and storage.
//!
//! The API server feeds this crate the objects it keeps in its watch cache (as the
//! JSON `serde_json::Value`s that are stored) and asks it, per request:
//!
//! * **who** is calling: [`TokenVerifier`] (service-account JWTs, legacy and bound),
//!   [`TokenFile`] (`--token-auth-file`), [`authenticate_bootstrap_token`];
//! * **may they** do it: [`NodeGraph`] (the Node authorizer, asked first, as upstream
//!   orders `--authorization-mode=Node,RBAC`) then [`RbacSnapshot`]; a request that no
//!   authorizer allows is answered `403` with [`forbidden_message`];
//! * what may they grant: [`RbacSnapshot::confirm_no_escalation`];
//! * what do they hold: [`RbacSnapshot::rules_for`] (`SelfSubjectRulesReview`).
//!
//! [`bootstrap_policy`] gives the default roles and bindings that upstream's API server
//! creates at start.
//!
//! The behaviour follows upstream Kubernetes (`plugin/pkg/auth/authorizer/rbac`,
//! `pkg/registry/rbac/validation`, `plugin/pkg/auth/authorizer/node`,
//! `pkg/serviceaccount`), written anew.

#![warn(missing_docs)]

use std::collections::BTreeMap;

mod bootstrap;
mod bootstrap_token;
mod node;
mod rbac;
mod sa_token;
mod tokenfile;
pub(crate) mod util;

pub use bootstrap::{bootstrap_policy, AUTOUPDATE_ANNOTATION, BOOTSTRAPPING_LABEL};
pub use bootstrap_token::{
    authenticate_bootstrap_token, bootstrap_token_secret_name, BOOTSTRAP_GROUP,
};
pub use node::NodeGraph;
pub use rbac::{
    aggregate_cluster_roles, NonResourceRule, PolicyRule, RbacSnapshot, ResourceRule, SubjectRules,
};
pub use sa_token::{
    BoundRefs, ObjectRef, SaClaims, TokenIssuer, TokenVerifier, VerifiedToken, EXTRA_CREDENTIAL_ID,
    EXTRA_NODE_NAME, EXTRA_NODE_UID, EXTRA_POD_NAME, EXTRA_POD_UID, LEGACY_ISSUER,
};
pub use tokenfile::TokenFile;

/// The group every authenticated user is put in (upstream's `user.AllAuthenticated`).
pub const GROUP_AUTHENTICATED: &str = "system:authenticated";
/// The group of anonymous requests (upstream's `user.AllUnauthenticated`).
pub const GROUP_UNAUTHENTICATED: &str = "system:unauthenticated";
/// The privileged group: bound to `cluster-admin` by the bootstrap policy.
pub const GROUP_MASTERS: &str = "system:masters";
/// The group of kubelets (`system:node:<name>` users).
pub const GROUP_NODES: &str = "system:nodes";
/// The user name of anonymous requests.
pub const USER_ANONYMOUS: &str = "system:anonymous";

/// An authenticated identity, as upstream's `user.Info`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserInfo {
    /// User name (`system:serviceaccount:ns:sa`, `system:node:n1`, `alice`...).
    pub name: String,
    /// Unique id, may be empty.
    pub uid: String,
    /// Groups the user belongs to.
    pub groups: Vec<String>,
    /// Extra attributes (e.g. `authentication.kubernetes.io/pod-name`).
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    /// A user with a name and groups, no uid nor extra.
    pub fn new(name: impl Into<String>, groups: &[&str]) -> Self {
        UserInfo {
            name: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            ..Default::default()
        }
    }

    /// Adds `system:authenticated` unless the user is anonymous or already has it,
    /// as upstream's authenticated-group adder does after every authenticator. The
    /// authenticators of this crate already call it; the caller calls it for x509
    /// client-certificate users.
    pub fn with_authenticated_group(mut self) -> Self {
        if self.name != USER_ANONYMOUS && !self.groups.iter().any(|g| g == GROUP_AUTHENTICATED) {
            self.groups.push(GROUP_AUTHENTICATED.to_string());
        }
        self
    }
}

/// What is being asked, as upstream's `authorizer.Attributes`.
///
/// For resource requests the caller fills `verb` (`get`, `list`, `watch`, `create`,
/// `update`, `patch`, `delete`, `deletecollection`, or a special verb like `bind`,
/// `escalate`, `impersonate`, `approve`, `use`), `namespace` (empty for cluster-scoped
/// resources and for all-namespace lists), `api_group` (`""` for core), `resource`
/// (plural), `subresource`, and `name` (for `list`/`watch` with a
/// `metadata.name=<x>` field selector, upstream puts `<x>` here too). For non-resource
/// requests it fills `verb` (the lower-cased HTTP method: `get`, `post`, `put`,
/// `delete`...) and `path`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attributes {
    /// The requesting user.
    pub user: UserInfo,
    /// Request verb.
    pub verb: String,
    /// Namespace of the object, empty for cluster scope.
    pub namespace: String,
    /// API group, empty for the core group.
    pub api_group: String,
    /// API version (informational: authorization does not look at it).
    pub api_version: String,
    /// Resource (plural, lower case).
    pub resource: String,
    /// Subresource (`status`, `log`, `scale`...), or empty.
    pub subresource: String,
    /// Object name, or empty.
    pub name: String,
    /// True for requests under `/api` and `/apis` that address resources.
    pub resource_request: bool,
    /// The URL path for non-resource requests (`/healthz`, `/metrics`...).
    pub path: String,
    /// The raw `fieldSelector` query parameter of list/watch requests, if any. The
    /// Node authorizer lets a node list/watch pods only with `spec.nodeName=<node>`.
    pub field_selector: Option<String>,
}

impl Attributes {
    /// A resource request.
    pub fn resource(
        user: UserInfo,
        verb: &str,
        namespace: &str,
        api_group: &str,
        resource: &str,
        subresource: &str,
        name: &str,
    ) -> Self {
        Attributes {
            user,
            verb: verb.into(),
            namespace: namespace.into(),
            api_group: api_group.into(),
            resource: resource.into(),
            subresource: subresource.into(),
            name: name.into(),
            resource_request: true,
            ..Default::default()
        }
    }

    /// A non-resource request (`verb` is the lower-cased HTTP method).
    pub fn non_resource(user: UserInfo, verb: &str, path: &str) -> Self {
        Attributes {
            user,
            verb: verb.into(),
            path: path.into(),
            resource_request: false,
            ..Default::default()
        }
    }
}

/// An authorizer's answer, as upstream's `authorizer.Decision` plus its reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The request is allowed.
    Allow,
    /// The request is denied; no later authorizer is asked.
    Deny(String),
    /// This authorizer neither allows nor denies; the next one is asked. The string
    /// is a reason (possibly empty) that upstream appends to the 403 message.
    NoOpinion(String),
}

impl Decision {
    /// True for [`Decision::Allow`].
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow)
    }
}

/// Chains authorizers as upstream's union authorizer: the first `Allow` or `Deny`
/// wins; when all have no opinion the result is `NoOpinion` with the non-empty
/// reasons joined by newlines (pass it to [`forbidden_message`]).
pub fn union_decision<I: IntoIterator<Item = Decision>>(decisions: I) -> Decision {
    let mut reasons = Vec::new();
    for d in decisions {
        match d {
            Decision::NoOpinion(r) => {
                if !r.is_empty() {
                    reasons.push(r)
                }
            }
            other => return other,
        }
    }
    Decision::NoOpinion(reasons.join("\n"))
}

/// Errors of the authentication part.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// A key could not be read.
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// The token is not a well-formed JWT.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The signature does not verify with any known key.
    #[error("invalid signature")]
    InvalidSignature,
    /// The issuer is not accepted.
    #[error("token issuer {0:?} is not accepted")]
    UnknownIssuer(String),
    /// Past `exp` (plus leeway).
    #[error("service account token has expired")]
    Expired,
    /// Before `nbf` (minus leeway).
    #[error("service account token is not valid yet")]
    NotYetValid,
    /// `iat` in the future (beyond leeway).
    #[error("service account token is issued in the future")]
    IssuedInFuture,
    /// No audience of the token is an API audience.
    #[error("token audiences {} is invalid for the target audiences {}", util::go_quote_list(.token), util::go_quote_list(.expected))]
    InvalidAudience {
        /// The token's audiences.
        token: Vec<String>,
        /// The accepted audiences.
        expected: Vec<String>,
    },
    /// Required claims are missing or wrong.
    #[error("invalid claims: {0}")]
    InvalidClaims(String),
    /// Signing failed.
    #[error("signing failed")]
    Signing,
    /// The token file is malformed.
    #[error("token file line {line}: {message}")]
    TokenFile {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

/// The message of upstream's 403 `Status` for a request no authorizer allowed, e.g.
/// `pods is forbidden: User "alice" cannot list resource "pods" in API group "" in
/// the namespace "default"`; `reason` (the authorizers' reasons, may be empty) is
/// appended after `": "` when non-empty.
pub fn forbidden_message(a: &Attributes, reason: &str) -> String {
    let user = util::go_quote(&a.user.name);
    let msg = if !a.resource_request {
        format!(
            "User {user} cannot {} path {}",
            a.verb,
            util::go_quote(&a.path)
        )
    } else {
        let mut resource = a.resource.clone();
        if !a.subresource.is_empty() {
            resource.push('/');
            resource.push_str(&a.subresource);
        }
        if !a.namespace.is_empty() {
            format!(
                "User {user} cannot {} resource {} in API group {} in the namespace {}",
                a.verb,
                util::go_quote(&resource),
                util::go_quote(&a.api_group),
                util::go_quote(&a.namespace)
            )
        } else {
            format!(
                "User {user} cannot {} resource {} in API group {} at the cluster scope",
                a.verb,
                util::go_quote(&resource),
                util::go_quote(&a.api_group)
            )
        }
    };
    let err = if reason.is_empty() {
        msg
    } else {
        format!("{msg}: {reason}")
    };
    // apierrors.NewForbidden(GroupResource{group, resource}, name, err)
    let qualified = if !a.resource_request {
        String::new()
    } else if a.api_group.is_empty() {
        a.resource.clone()
    } else {
        format!("{}.{}", a.resource, a.api_group)
    };
    if qualified.is_empty() {
        format!("forbidden: {err}")
    } else if a.name.is_empty() {
        format!("{qualified} is forbidden: {err}")
    } else {
        format!(
            "{qualified} {} is forbidden: {err}",
            util::go_quote(&a.name)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> UserInfo {
        UserInfo::new("alice", &["system:authenticated"])
    }

    #[test]
    fn forbidden_namespaced_list() {
        let a = Attributes::resource(alice(), "list", "default", "", "pods", "", "");
        assert_eq!(
            forbidden_message(&a, ""),
            r#"pods is forbidden: User "alice" cannot list resource "pods" in API group "" in the namespace "default""#
        );
    }

    #[test]
    fn forbidden_named_subresource_group() {
        let a = Attributes::resource(alice(), "get", "ns1", "apps", "deployments", "scale", "web");
        assert_eq!(
            forbidden_message(&a, ""),
            r#"deployments.apps "web" is forbidden: User "alice" cannot get resource "deployments/scale" in API group "apps" in the namespace "ns1""#
        );
    }

    #[test]
    fn forbidden_cluster_scope_with_reason() {
        let a = Attributes::resource(alice(), "list", "", "", "nodes", "", "");
        assert_eq!(
            forbidden_message(&a, "RBAC: clusterrole.rbac.authorization.k8s.io \"x\" not found"),
            "nodes is forbidden: User \"alice\" cannot list resource \"nodes\" in API group \"\" at the cluster scope: RBAC: clusterrole.rbac.authorization.k8s.io \"x\" not found"
        );
    }

    #[test]
    fn forbidden_non_resource() {
        let a = Attributes::non_resource(alice(), "get", "/metrics");
        assert_eq!(
            forbidden_message(&a, ""),
            r#"forbidden: User "alice" cannot get path "/metrics""#
        );
    }

    #[test]
    fn union_first_opinion_wins_and_reasons_join() {
        let d = union_decision([
            Decision::NoOpinion("a".into()),
            Decision::NoOpinion(String::new()),
            Decision::NoOpinion("b".into()),
        ]);
        assert_eq!(d, Decision::NoOpinion("a\nb".into()));
        let d = union_decision([
            Decision::NoOpinion("a".into()),
            Decision::Allow,
            Decision::Deny("x".into()),
        ]);
        assert_eq!(d, Decision::Allow);
    }

    #[test]
    fn authenticated_group_added_once_not_for_anonymous() {
        let u = UserInfo::new("bob", &[])
            .with_authenticated_group()
            .with_authenticated_group();
        assert_eq!(u.groups, vec!["system:authenticated"]);
        let anon =
            UserInfo::new(USER_ANONYMOUS, &[GROUP_UNAUTHENTICATED]).with_authenticated_group();
        assert_eq!(anon.groups, vec![GROUP_UNAUTHENTICATED]);
    }
}
