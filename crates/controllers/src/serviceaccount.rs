//! Every namespace gets a `default` ServiceAccount and the `kube-root-ca.crt` ConfigMap
//! (upstream's serviceaccount-token and root-ca-cert-publisher controllers), recreated
//! when deleted and corrected when changed.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::ResourceExt;

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
        let sa = ServiceAccount { metadata: ObjectMeta { name: Some("default".into()), ..Default::default() }, ..Default::default() };
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
                metadata: ObjectMeta { name: Some(ROOT_CA_CONFIGMAP.into()), annotations: Some(annotations), ..Default::default() },
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
            cms.replace(ROOT_CA_CONFIGMAP, &PostParams::default(), &cm).await?;
        }
        Some(_) => {}
    }
    Ok(Action::await_change())
}

fn error_policy(_ns: Arc<Namespace>, err: &ControllerError, _ctx: Arc<Ctx>) -> Action {
    tracing::debug!(error = %err, "serviceaccount controller: requeue");
    Action::requeue(std::time::Duration::from_secs(2))
}

/// Runs the controller until the watch ends.
pub async fn run(client: kube::Client, ca: String) -> Result<(), ControllerError> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ctx = Arc::new(Ctx { client: client.clone(), ca });
    let sas: Api<ServiceAccount> = Api::all(client.clone());
    let cms: Api<ConfigMap> = Api::all(client.clone());
    Controller::new(namespaces, watcher::Config::default())
        .watches(sas, watcher::Config::default().fields("metadata.name=default"), |sa: ServiceAccount| {
            sa.metadata.namespace.clone().map(|ns| kube::runtime::reflector::ObjectRef::<Namespace>::new(&ns))
        })
        .watches(cms, watcher::Config::default().fields(&format!("metadata.name={ROOT_CA_CONFIGMAP}")), move |cm: ConfigMap| {
            cm.metadata.namespace.clone().map(|ns| kube::runtime::reflector::ObjectRef::<Namespace>::new(&ns))
        })
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
    Ok(())
}
