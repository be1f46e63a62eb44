//! Roles, ClusterRoles and their bindings: escalation prevention, as upstream's RBAC
//! storage.

use rk3s_api::{ApiError, ResourceInfo};
use serde_json::Value;

use super::Strategy;
use crate::state::Inner;
use crate::{object, UserInfo};

/// The strategy of `roles`, `clusterroles`, `rolebindings` and `clusterrolebindings`.
pub struct RbacStrategy;

impl Strategy for RbacStrategy {
    fn check_write(
        &self,
        inner: &Inner,
        res: &ResourceInfo,
        user: &UserInfo,
        obj: &Value,
    ) -> Result<(), ApiError> {
        check_rbac_escalation(inner, res, user, obj)
    }
}

/// Escalation prevention for RBAC writes: a Role/ClusterRole may only grant what the
/// writer holds (unless allowed `escalate`); a binding only to a role whose permissions
/// the writer holds (unless allowed `bind` on it).
fn check_rbac_escalation(
    inner: &Inner,
    res: &ResourceInfo,
    user: &UserInfo,
    obj: &Value,
) -> Result<(), ApiError> {
    let ns = object::namespace(obj).unwrap_or("").to_string();
    let name = object::name(obj).unwrap_or("").to_string();
    let allowed = |verb: &str, resource: &str, rname: &str| {
        inner
            .decide(&rk3s_auth::Attributes::resource(
                user.clone(),
                verb,
                &ns,
                "rbac.authorization.k8s.io",
                resource,
                "",
                rname,
            ))
            .is_allowed()
    };
    let rules: Vec<rk3s_auth::PolicyRule> = match res.plural.as_str() {
        "roles" | "clusterroles" => {
            if allowed("escalate", &res.plural, &name) {
                return Ok(());
            }
            obj.get("rules")
                .and_then(|r| r.as_array())
                .map(|a| a.iter().map(rk3s_auth::PolicyRule::from_json).collect())
                .unwrap_or_default()
        }
        "rolebindings" | "clusterrolebindings" => {
            let kind = obj
                .pointer("/roleRef/kind")
                .and_then(|k| k.as_str())
                .unwrap_or("");
            let rname = obj
                .pointer("/roleRef/name")
                .and_then(|k| k.as_str())
                .unwrap_or("");
            let plural = if kind == "ClusterRole" {
                "clusterroles"
            } else {
                "roles"
            };
            if allowed("bind", plural, rname) {
                return Ok(());
            }
            let snap = inner.rbac();
            if kind == "ClusterRole" {
                snap.cluster_role_rules(rname)
                    .map(|r| r.to_vec())
                    .unwrap_or_default()
            } else {
                inner
                    .cache
                    .get(&format!(
                        "/registry/rbac.authorization.k8s.io/roles/{ns}/{rname}"
                    ))
                    .and_then(|r| {
                        r.object()
                            .get("rules")
                            .and_then(|r| r.as_array())
                            .map(|a| a.iter().map(rk3s_auth::PolicyRule::from_json).collect())
                    })
                    .unwrap_or_default()
            }
        }
        _ => return Ok(()),
    };
    inner
        .rbac()
        .confirm_no_escalation(user, &ns, &rules)
        .map_err(|msg| {
            let mut e = ApiError::forbidden(format!(
                "{} \"{}\" is forbidden: {}",
                res.qualified_plural(),
                name,
                msg
            ));
            e.name = Some(name.clone());
            e.group = Some(res.group.clone());
            e.kind = Some(res.plural.clone());
            e
        })
}
