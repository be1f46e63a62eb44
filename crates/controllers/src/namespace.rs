//! The namespace controller (upstream's `pkg/controller/namespace`): empties a
//! Namespace marked for deletion and then releases it.
//!
//! For a Namespace with a `deletionTimestamp` whose `spec.finalizers` still hold
//! `kubernetes`, it discovers every namespaced resource that can be listed and deleted
//! (the API's discovery documents), deletes that resource's objects in the namespace
//! (DeleteCollection where the resource supports it, else one delete per object;
//! propagation Background, grace period 0), and reports progress in the Namespace's
//! `NamespaceDeletionDiscoveryFailure`, `NamespaceDeletionContentFailure`,
//! `NamespaceContentRemaining` and `NamespaceFinalizersRemaining` conditions. While
//! objects remain (held by finalizers, or failed deletes) it looks again with a per-
//! namespace exponential back-off; once nothing remains it removes `kubernetes` from
//! `spec.finalizers` through the `namespaces/{name}/finalize` subresource, after which
//! the API server deletes the Namespace (when no other finalizer holds it).
//!
//! Invariant: it only ever writes the Namespace's status and its `finalize` subresource,
//! and deletes objects only inside Namespaces that are being deleted.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, NamespaceCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use kube::discovery::{verbs, ApiCapabilities, Discovery, Scope};
use kube::ResourceExt;
use serde_json::json;

use rk3s_runtime::{for_objects, run_controller, Action, Backoff, Trigger, WorkQueue};

use crate::workload_util as wu;
use crate::ControllerError;

/// The `spec.finalizers` entry this controller owns.
pub const FINALIZER: &str = "kubernetes";

/// Back-off between passes over a namespace whose content is not gone yet.
pub const CONTENT_BACKOFF: Backoff = Backoff {
    base: Duration::from_millis(50),
    max: Duration::from_secs(10),
};

/// What one deletion pass over a namespace found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Content {
    /// Why discovery failed, if it did (no resource was looked at then).
    pub discovery_failure: Option<String>,
    /// Failed list/delete calls, one message each.
    pub failures: Vec<String>,
    /// Objects still there after the pass, per resource (`plural.group`).
    pub remaining: BTreeMap<String, usize>,
    /// Finalizers of the objects still there, with how many objects hold each.
    pub finalizers: BTreeMap<String, usize>,
}

impl Content {
    /// True when the namespace is empty and nothing failed: it may be finalized.
    pub fn done(&self) -> bool {
        self.discovery_failure.is_none() && self.failures.is_empty() && self.remaining.is_empty()
    }
}

/// True when `ns` is being deleted and still holds [`FINALIZER`] in its spec.
pub fn needs_finalizing(ns: &Namespace) -> bool {
    ns.metadata.deletion_timestamp.is_some() && has_finalizer(ns)
}

fn has_finalizer(ns: &Namespace) -> bool {
    ns.spec
        .as_ref()
        .and_then(|s| s.finalizers.as_ref())
        .is_some_and(|f| f.iter().any(|x| x == FINALIZER))
}

/// `ns` with [`FINALIZER`] removed from `spec.finalizers` (the body of the `finalize`
/// call); None when it does not hold it.
pub fn without_finalizer(ns: &Namespace) -> Option<Namespace> {
    if !has_finalizer(ns) {
        return None;
    }
    let mut out = ns.clone();
    if let Some(f) = out.spec.as_mut().and_then(|s| s.finalizers.as_mut()) {
        f.retain(|x| x != FINALIZER);
    }
    Some(out)
}

/// Whether this controller deletes the objects of a discovered resource: namespaced,
/// listable and deletable one by one or as a collection.
pub fn deletable(caps: &ApiCapabilities) -> bool {
    caps.scope == Scope::Namespaced
        && caps.supports_operation(verbs::LIST)
        && (caps.supports_operation(verbs::DELETE)
            || caps.supports_operation(verbs::DELETE_COLLECTION))
}

fn resource_name(ar: &ApiResource) -> String {
    if ar.group.is_empty() {
        ar.plural.clone()
    } else {
        format!("{}.{}", ar.plural, ar.group)
    }
}

fn condition(type_: &str, failed: bool, reason: &str, message: String) -> NamespaceCondition {
    NamespaceCondition {
        type_: type_.into(),
        status: if failed { "True" } else { "False" }.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_transition_time: None,
    }
}

/// The deletion conditions a pass's `content` gives, in upstream's types and reasons;
/// a condition whose status, reason and message are unchanged keeps its `old`
/// transition time, any other gets `now`.
pub fn conditions(
    content: &Content,
    old: &[NamespaceCondition],
    now: Time,
) -> Vec<NamespaceCondition> {
    let list = |m: &BTreeMap<String, usize>| {
        m.iter()
            .map(|(k, n)| format!("{k} has {n} resource instances"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = vec![
        match &content.discovery_failure {
            Some(e) => condition(
                "NamespaceDeletionDiscoveryFailure",
                true,
                "DiscoveryFailed",
                format!("Discovery failed for some groups: {e}"),
            ),
            None => condition(
                "NamespaceDeletionDiscoveryFailure",
                false,
                "ResourcesDiscovered",
                "All resources successfully discovered".into(),
            ),
        },
        if content.failures.is_empty() {
            condition(
                "NamespaceDeletionContentFailure",
                false,
                "ContentDeleted",
                "All content successfully deleted, may be waiting on finalization".into(),
            )
        } else {
            condition(
                "NamespaceDeletionContentFailure",
                true,
                "ContentDeletionFailed",
                format!(
                    "Failed to delete all resource types: {}",
                    content.failures.join(", ")
                ),
            )
        },
        if content.remaining.is_empty() {
            condition(
                "NamespaceContentRemaining",
                false,
                "ContentRemoved",
                "All content successfully removed".into(),
            )
        } else {
            condition(
                "NamespaceContentRemaining",
                true,
                "SomeResourcesRemain",
                format!("Some resources are remaining: {}", list(&content.remaining)),
            )
        },
        if content.finalizers.is_empty() {
            condition(
                "NamespaceFinalizersRemaining",
                false,
                "ContentHasNoFinalizers",
                "All content-preserving finalizers finished".into(),
            )
        } else {
            condition(
                "NamespaceFinalizersRemaining",
                true,
                "SomeFinalizersRemain",
                format!(
                    "Some content in the namespace has finalizers remaining: {}",
                    content
                        .finalizers
                        .iter()
                        .map(|(f, n)| format!("{f} in {n} resource instances"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        },
    ];
    for c in &mut out {
        let same = old.iter().find(|o| {
            o.type_ == c.type_
                && o.status == c.status
                && o.reason == c.reason
                && o.message == c.message
        });
        c.last_transition_time = Some(
            same.and_then(|o| o.last_transition_time.clone())
                .unwrap_or_else(|| now.clone()),
        );
    }
    out
}

struct Ctx {
    client: kube::Client,
    /// Passes so far per namespace whose content was not gone (for the back-off).
    passes: Mutex<HashMap<String, u32>>,
}

impl Ctx {
    fn next_delay(&self, ns: &str) -> Duration {
        let Ok(mut p) = self.passes.lock() else {
            return CONTENT_BACKOFF.max;
        };
        let n = p.entry(ns.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        CONTENT_BACKOFF.delay(*n)
    }

    fn forget(&self, ns: &str) {
        if let Ok(mut p) = self.passes.lock() {
            p.remove(ns);
        }
    }
}

/// One pass: deletes every object of every deletable namespaced resource in `ns`, then
/// counts what is left.
async fn delete_content(client: &kube::Client, ns: &str) -> Content {
    let mut content = Content::default();
    let discovery = match Discovery::new(client.clone()).run().await {
        Ok(d) => d,
        Err(e) => {
            content.discovery_failure = Some(e.to_string());
            return content;
        }
    };
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        ..DeleteParams::background()
    };
    let lp = ListParams::default();
    for group in discovery.groups() {
        for (ar, caps) in group.recommended_resources() {
            if !deletable(&caps) {
                continue;
            }
            let name = resource_name(&ar);
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
            let before = match api.list_metadata(&lp).await {
                Ok(l) => l.items,
                Err(e) => {
                    content.failures.push(format!("list {name}: {e}"));
                    continue;
                }
            };
            if before.is_empty() {
                continue;
            }
            if caps.supports_operation(verbs::DELETE_COLLECTION) {
                if let Err(e) = wu::ignore_not_found(api.delete_collection(&dp, &lp).await) {
                    content.failures.push(format!("delete {name}: {e}"));
                }
            } else {
                for o in &before {
                    if let Err(e) = wu::ignore_not_found(api.delete(&o.name_any(), &dp).await) {
                        content
                            .failures
                            .push(format!("delete {name}/{}: {e}", o.name_any()));
                    }
                }
            }
            let after = match api.list_metadata(&lp).await {
                Ok(l) => l.items,
                Err(e) => {
                    content.failures.push(format!("list {name}: {e}"));
                    continue;
                }
            };
            if after.is_empty() {
                continue;
            }
            content.remaining.insert(name, after.len());
            for o in &after {
                for f in o.finalizers() {
                    *content.finalizers.entry(f.clone()).or_insert(0) += 1;
                }
            }
        }
    }
    content
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Ctx>) -> Result<Action, ControllerError> {
    let name = ns.name_any();
    if !needs_finalizing(&ns) {
        ctx.forget(&name);
        return Ok(Action::await_change());
    }
    let content = delete_content(&ctx.client, &name).await;
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    let old = ns
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let now = Time(
        jiff::Timestamp::from_second(jiff::Timestamp::now().as_second())
            .unwrap_or(jiff::Timestamp::UNIX_EPOCH),
    );
    let conds = conditions(&content, &old, now);
    if conds != old {
        let patch = json!({"status": {"conditions": conds}});
        wu::ignore_not_found(
            api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await,
        )?;
    }
    if !content.done() {
        let delay = ctx.next_delay(&name);
        tracing::debug!(namespace = %name, ?content, ?delay, "namespace: content remains; looking again");
        return Ok(Action::requeue(delay));
    }
    // Empty: release the namespace (re-read, so the finalize call carries the latest
    // resourceVersion and spec).
    let fresh = match api.get(&name).await {
        Ok(n) => n,
        Err(e) if wu::is_not_found(&e) => {
            ctx.forget(&name);
            return Ok(Action::await_change());
        }
        Err(e) => return Err(e.into()),
    };
    let Some(body) = without_finalizer(&fresh) else {
        ctx.forget(&name);
        return Ok(Action::await_change());
    };
    match api
        .replace_subresource("finalize", &name, &PostParams::default(), &body)
        .await
    {
        Ok(_) => {}
        Err(e) if wu::is_not_found(&e) => {}
        // The answer for a namespace deleted by this call may not be a Namespace.
        Err(kube::Error::SerdeError(_)) => {}
        Err(e) => return Err(e.into()),
    }
    tracing::debug!(namespace = %name, "namespace: emptied and finalized");
    ctx.forget(&name);
    Ok(Action::await_change())
}

/// Runs the namespace controller until the watch ends (Namespaces from the shared
/// informer).
pub async fn run(
    client: kube::Client,
    informers: crate::informers::SharedInformers,
) -> Result<(), ControllerError> {
    // Subscribe before reading the store: no change after the first list is missed.
    let changes = informers.subscribe::<Namespace>();
    let namespaces = informers.store::<Namespace>().await;
    let ctx = Arc::new(Ctx {
        client,
        passes: Mutex::new(HashMap::new()),
    });
    let deleting = changes.filter(|n| futures_util::future::ready(needs_finalizing(n)));
    let triggers = vec![
        Trigger::for_each(deleting),
        // The namespaces listed before this controller subscribed.
        Trigger::all_in(&namespaces),
    ];
    run_controller(
        "namespace",
        4,
        WorkQueue::new(),
        triggers,
        for_objects(namespaces, ctx, reconcile),
    )
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NamespaceSpec;
    use kube::discovery::ApiCapabilities;

    fn ns(deleting: bool, finalizers: &[&str]) -> Namespace {
        let mut n = Namespace {
            spec: Some(NamespaceSpec {
                finalizers: Some(finalizers.iter().map(|s| s.to_string()).collect()),
            }),
            ..Default::default()
        };
        n.metadata.name = Some("x".into());
        if deleting {
            n.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
        }
        n
    }

    fn t(s: i64) -> Time {
        Time(jiff::Timestamp::from_second(s).unwrap_or(jiff::Timestamp::UNIX_EPOCH))
    }

    #[test]
    fn only_deleted_namespaces_holding_the_finalizer_are_finalized() {
        assert!(needs_finalizing(&ns(true, &["kubernetes"])));
        assert!(needs_finalizing(&ns(true, &["a", "kubernetes"])));
        assert!(!needs_finalizing(&ns(false, &["kubernetes"])));
        assert!(!needs_finalizing(&ns(true, &["a"])));
        assert!(!needs_finalizing(&ns(true, &[])));
    }

    #[test]
    fn finalize_body_drops_only_our_finalizer() {
        let body = without_finalizer(&ns(true, &["a", "kubernetes", "b"]));
        let f = body.and_then(|n| n.spec).and_then(|s| s.finalizers);
        assert_eq!(f, Some(vec!["a".to_string(), "b".to_string()]));
        assert!(without_finalizer(&ns(true, &["a"])).is_none());
    }

    #[test]
    fn deletable_resources_are_namespaced_listable_and_deletable() {
        let caps = |scope: Scope, verbs: &[&str]| ApiCapabilities {
            scope,
            subresources: vec![],
            operations: verbs.iter().map(|s| s.to_string()).collect(),
        };
        assert!(deletable(&caps(Scope::Namespaced, &["list", "delete"])));
        assert!(deletable(&caps(
            Scope::Namespaced,
            &["list", "deletecollection"]
        )));
        assert!(!deletable(&caps(Scope::Cluster, &["list", "delete"])));
        assert!(!deletable(&caps(Scope::Namespaced, &["create"])));
        assert!(!deletable(&caps(Scope::Namespaced, &["list", "get"])));
    }

    #[test]
    fn content_is_done_only_when_empty_and_nothing_failed() {
        assert!(Content::default().done());
        let mut c = Content::default();
        c.remaining.insert("pods".into(), 1);
        assert!(!c.done());
        let c = Content {
            failures: vec!["x".into()],
            ..Default::default()
        };
        assert!(!c.done());
        let c = Content {
            discovery_failure: Some("x".into()),
            ..Default::default()
        };
        assert!(!c.done());
    }

    #[test]
    fn conditions_report_remaining_content_and_finalizers() {
        let mut c = Content::default();
        c.remaining.insert("pods".into(), 2);
        c.finalizers.insert("example.com/hold".into(), 1);
        let conds = conditions(&c, &[], t(10));
        let by = |ty: &str| conds.iter().find(|x| x.type_ == ty).cloned();
        let remaining = by("NamespaceContentRemaining").expect("condition");
        assert_eq!(remaining.status, "True");
        assert_eq!(remaining.reason.as_deref(), Some("SomeResourcesRemain"));
        assert!(remaining.message.unwrap_or_default().contains("pods has 2"));
        let fin = by("NamespaceFinalizersRemaining").expect("condition");
        assert_eq!(fin.status, "True");
        assert!(fin
            .message
            .unwrap_or_default()
            .contains("example.com/hold in 1"));
        assert_eq!(
            by("NamespaceDeletionContentFailure").expect("c").status,
            "False"
        );
        assert_eq!(
            by("NamespaceDeletionDiscoveryFailure").expect("c").status,
            "False"
        );
        assert!(conds.iter().all(|x| x.last_transition_time == Some(t(10))));
    }

    #[test]
    fn unchanged_conditions_keep_their_transition_time() {
        let c = Content::default();
        let first = conditions(&c, &[], t(10));
        // Same content later: nothing changes, so no status write is needed.
        assert_eq!(conditions(&c, &first, t(20)), first);
        // A failure changes one condition only.
        let failed = Content {
            failures: vec!["delete pods: boom".into()],
            ..Default::default()
        };
        let next = conditions(&failed, &first, t(20));
        for x in &next {
            let expect = if x.type_ == "NamespaceDeletionContentFailure" {
                t(20)
            } else {
                t(10)
            };
            assert_eq!(x.last_transition_time, Some(expect), "{}", x.type_);
        }
    }
}
