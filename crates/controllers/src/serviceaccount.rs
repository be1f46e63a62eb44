//! Every namespace gets a `default` ServiceAccount and the `kube-root-ca.crt` ConfigMap
//! (upstream's serviceaccount-token and root-ca-cert-publisher controllers), recreated
//! when deleted and corrected when changed.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::runtime::reflector::ObjectRef;
use kube::ResourceExt;

use rk3s_runtime::{for_objects, run_controller, Action, Trigger, WorkQueue};

use crate::ControllerError;

/// Name of the published CA ConfigMap.
pub const ROOT_CA_CONFIGMAP: &str = "kube-root-ca.crt";

struct Ctx {
    client: kube::Client,
    ca: String,
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Ctx>) -> Result<Action, ControllerError> {
    let name = ns.name_any();
    if ns.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let sas: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), &name);
    if sas.get_opt("default").await?.is_none() {
        let sa = ServiceAccount {
            metadata: ObjectMeta {
                name: Some("default".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        match sas.create(&PostParams::default(), &sa).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 || e.code == 403 => {}
            Err(e) => return Err(e.into()),
        }
    }
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &name);
    let want: BTreeMap<String, String> = [("ca.crt".to_string(), ctx.ca.clone())].into();
    match cms.get_opt(ROOT_CA_CONFIGMAP).await? {
        None => {
            let mut annotations = BTreeMap::new();
            annotations.insert("kubernetes.io/description".to_string(), "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.".to_string());
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(ROOT_CA_CONFIGMAP.into()),
                    annotations: Some(annotations),
                    ..Default::default()
                },
                data: Some(want),
                ..Default::default()
            };
            match cms.create(&PostParams::default(), &cm).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 409 || e.code == 403 => {}
                Err(e) => return Err(e.into()),
            }
        }
        Some(mut cm) if cm.data.as_ref() != Some(&want) => {
            cm.data = Some(want);
            cms.replace(ROOT_CA_CONFIGMAP, &PostParams::default(), &cm)
                .await?;
        }
        Some(_) => {}
    }
    Ok(Action::await_change())
}

/// The namespace of `obj` when it is named `name` (the only ServiceAccount / ConfigMap
/// this controller keeps).
fn namespace_if_named<K: kube::Resource>(obj: &K, name: &str) -> Option<ObjectRef<Namespace>> {
    let m = obj.meta();
    (m.name.as_deref() == Some(name))
        .then(|| m.namespace.as_deref().map(ObjectRef::new))
        .flatten()
}

/// Runs the controller until the watch ends (Namespaces, ServiceAccounts and ConfigMaps
/// from the shared informers, as upstream's controllers).
pub async fn run(
    client: kube::Client,
    ca: String,
    informers: crate::informers::SharedInformers,
) -> Result<(), ControllerError> {
    // Subscribe before reading the store: no change after the first list is missed.
    let ns_changes = informers.subscribe::<Namespace>();
    let sa_changes = informers.subscribe::<ServiceAccount>();
    let cm_changes = informers.subscribe::<ConfigMap>();
    let namespaces = informers.store::<Namespace>().await;
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        ca,
    });
    let triggers = vec![
        Trigger::for_each(ns_changes),
        Trigger::map(sa_changes, |sa: Arc<ServiceAccount>| {
            namespace_if_named(&*sa, "default")
        }),
        Trigger::map(cm_changes, |cm: Arc<ConfigMap>| {
            namespace_if_named(&*cm, ROOT_CA_CONFIGMAP)
        }),
        // The namespaces listed before this controller subscribed.
        Trigger::all_in(&namespaces),
    ];
    run_controller(
        "serviceaccount",
        4,
        WorkQueue::new(),
        triggers,
        for_objects(namespaces, ctx, reconcile),
    )
    .await;
    Ok(())
}
