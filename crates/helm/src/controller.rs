//! The HelmChart controller, helm-controller's `OnChange` / `OnRemove`:
//!
//! - a chart is managed when it names a chart (`spec.chart` or `spec.chartContent`),
//!   has no `helmcharts.helm.cattle.io/unmanaged` annotation, and its
//!   `helmcharts.cattle.io/managed-by` annotation names this controller (a chart without
//!   one is claimed by setting it); a managed chart gets the finalizer
//!   `wrangler.cattle.io/on-helm-chart-remove`;
//! - install: the ServiceAccount, ClusterRoleBinding, values Secret and content
//!   ConfigMap are applied (server-side apply) and the Job `helm-install-<name>` created
//!   suspended; once the Job controller has seen it (`Suspended` condition at
//!   generation one) it is resumed. A changed chart (another configHash) replaces the Job once the
//!   old one has conditions and no running pods. A completed Job whose release (Helm's
//!   `owner=helm,name=<chart>` Secrets or ConfigMaps) is `deployed` with the same hash
//!   is left alone. `status.jobName` and the `JobCreated` / `Failed` conditions are
//!   kept as helm-controller keeps them;
//! - delete: the Job `helm-delete-<name>` runs (`delete`); when it completed, every
//!   object made for the chart is deleted and the finalizer removed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::watcher;
use kube::runtime::WatchStreamExt;
use rk3s_runtime::{run_controller, Action, Trigger, WorkQueue};
use serde_json::json;

use crate::job::{self, JobOptions, ANNOTATION_MANAGED_BY, ANNOTATION_UNMANAGED, LABEL_CHART_NAME};
use crate::types::{HelmChart, HelmChartCondition, HelmChartConfig, HelmChartStatus};
use crate::HelmError;

/// The finalizer of managed charts (wrangler's name for helm-controller's remove
/// handler).
pub const FINALIZER: &str = "wrangler.cattle.io/on-helm-chart-remove";
/// Field manager of the controller's applies.
pub const FIELD_MANAGER: &str = "helm-controller";

/// Options of [`run`].
#[derive(Clone, Debug)]
pub struct HelmControllerOptions {
    /// How Jobs are built (image, API port, ClusterRole).
    pub job: JobOptions,
    /// The `managed-by` name of this controller (`helm-controller`, as k3s).
    pub managed_by: String,
    /// Only charts of this namespace (None: all, as k3s).
    pub system_namespace: Option<String>,
    /// Parallel reconciles.
    pub workers: usize,
}

impl Default for HelmControllerOptions {
    fn default() -> Self {
        HelmControllerOptions {
            job: JobOptions::default(),
            managed_by: "helm-controller".into(),
            system_namespace: None,
            workers: 2,
        }
    }
}

impl HelmControllerOptions {
    /// Options with Job image `image` (`--helm-job-image`; empty: the default) and
    /// the API server port for bootstrap charts; proxy variables from this process.
    pub fn new(image: &str, api_server_port: u16) -> Self {
        let mut o = HelmControllerOptions::default();
        if !image.is_empty() {
            o.job.default_image = image.to_string();
        }
        o.job.api_server_port = api_server_port.to_string();
        o.job.proxy_env = JobOptions::proxy_env_from_process();
        o.job.set_id = format!("{}-chart-registration", o.managed_by);
        o
    }
}

fn chart_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(crate::types::GROUP, crate::types::VERSION, "HelmChart"),
        "helmcharts",
    )
}

fn config_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(
            crate::types::GROUP,
            crate::types::VERSION,
            "HelmChartConfig",
        ),
        "helmchartconfigs",
    )
}

/// Applies both CRDs and waits until HelmCharts are served.
pub async fn ensure_crds(client: &kube::Client) -> Result<(), HelmError> {
    let crds: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
            "customresourcedefinitions",
        ),
    );
    for crd in [
        crate::crds::helm_chart_crd(),
        crate::crds::helm_chart_config_crd(),
    ] {
        let name = crd["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        crds.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&crd),
        )
        .await?;
    }
    let charts: Api<DynamicObject> = Api::all_with(client.clone(), &chart_resource());
    let configs: Api<DynamicObject> = Api::all_with(client.clone(), &config_resource());
    for _ in 0..100 {
        if charts.list(&ListParams::default().limit(1)).await.is_ok()
            && configs.list(&ListParams::default().limit(1)).await.is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(HelmError::CrdNotServed)
}

/// Key of a chart: (namespace, name).
type Key = (String, String);

/// Values Secret (namespace, name) -> the charts whose Job depends on it.
type SecretIndex = Arc<Mutex<HashMap<Key, BTreeSet<Key>>>>;

struct Ctx {
    client: kube::Client,
    opts: HelmControllerOptions,
    recorder: rk3s_runtime::events::EventRecorder,
    secrets: SecretIndex,
}

impl Ctx {
    /// Records that chart `key` depends on the values Secrets `names` (only those).
    fn index_secrets(&self, key: &Key, names: &[String]) {
        let Ok(mut idx) = self.secrets.lock() else {
            return;
        };
        for charts in idx.values_mut() {
            charts.remove(key);
        }
        for n in names {
            idx.entry((key.0.clone(), n.clone()))
                .or_default()
                .insert(key.clone());
        }
        idx.retain(|_, charts| !charts.is_empty());
    }
}

/// Runs the controller forever (on the leader only, as k3s): creates the CRDs
/// (retrying until the API serves them), then reconciles every HelmChart when it, its
/// HelmChartConfig, its Jobs or the values Secrets it names change.
pub async fn run(client: kube::Client, opts: HelmControllerOptions) -> Result<(), HelmError> {
    // the API may still be starting: retry the CRDs until they are served
    let mut delay = Duration::from_millis(200);
    while let Err(e) = ensure_crds(&client).await {
        tracing::warn!(error = %e, "helm-controller: CRDs not ready; retrying");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
    let charts: Api<DynamicObject> = Api::all_with(client.clone(), &chart_resource());
    let configs: Api<DynamicObject> = Api::all_with(client.clone(), &config_resource());
    let jobs: Api<Job> = Api::all(client.clone());
    let dyn_key =
        |o: DynamicObject| -> Option<Key> { Some((o.metadata.namespace?, o.metadata.name?)) };
    let chart_keys = watcher(charts, watcher::Config::default())
        .default_backoff()
        .touched_objects()
        .filter_map(move |r| futures_util::future::ready(r.ok().and_then(dyn_key)));
    let config_keys = watcher(configs, watcher::Config::default())
        .default_backoff()
        .touched_objects()
        .filter_map(move |r| futures_util::future::ready(r.ok().and_then(dyn_key)));
    let job_keys = watcher(jobs, watcher::Config::default().labels(LABEL_CHART_NAME))
        .default_backoff()
        .touched_objects()
        .filter_map(|r| {
            futures_util::future::ready(r.ok().and_then(|j: Job| {
                let chart = j.metadata.labels.as_ref()?.get(LABEL_CHART_NAME)?.clone();
                Some((j.metadata.namespace?, chart))
            }))
        });
    let index: SecretIndex = Arc::default();
    let secret_index = index.clone();
    let secret_meta: Api<kube::core::PartialObjectMeta<Secret>> = Api::all(client.clone());
    let secret_keys = watcher(secret_meta, watcher::Config::default())
        .default_backoff()
        .touched_objects()
        .flat_map(move |r| {
            let keys: Vec<Key> = match r
                .ok()
                .and_then(|m| Some((m.metadata.namespace?, m.metadata.name?)))
            {
                Some(k) => secret_index
                    .lock()
                    .ok()
                    .and_then(|idx| idx.get(&k).cloned())
                    .map(|s| s.into_iter().collect())
                    .unwrap_or_default(),
                None => Vec::new(),
            };
            futures_util::stream::iter(keys)
        });
    let ctx = Arc::new(Ctx {
        recorder: rk3s_runtime::events::EventRecorder::new(client.clone(), "helm-controller"),
        client,
        opts: opts.clone(),
        secrets: index,
    });
    run_controller(
        "helm-controller",
        opts.workers.max(1),
        WorkQueue::new(),
        vec![
            Trigger::from_stream(chart_keys),
            Trigger::from_stream(config_keys),
            Trigger::from_stream(job_keys),
            Trigger::from_stream(secret_keys),
        ],
        move |key: Key| {
            let ctx = ctx.clone();
            async move { reconcile(&ctx, &key.0, &key.1).await }
        },
    )
    .await;
    Ok(())
}

fn charts_api(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &chart_resource())
}

fn to_chart(o: &DynamicObject) -> Result<HelmChart, HelmError> {
    Ok(serde_json::from_value(serde_json::to_value(o)?)?)
}

fn reference(chart: &HelmChart) -> ObjectReference {
    ObjectReference {
        api_version: Some(crate::types::API_VERSION.into()),
        kind: Some("HelmChart".into()),
        namespace: chart.metadata.namespace.clone(),
        name: chart.metadata.name.clone(),
        uid: chart.metadata.uid.clone(),
        resource_version: chart.metadata.resource_version.clone(),
        ..Default::default()
    }
}

/// One pass over chart `ns/name`.
async fn reconcile(ctx: &Ctx, ns: &str, name: &str) -> Result<Action, HelmError> {
    let api = charts_api(&ctx.client, ns);
    let Some(obj) = api.get_opt(name).await? else {
        return Ok(Action::AwaitChange);
    };
    let chart = to_chart(&obj)?;
    if !should_manage(ctx, &api, &chart).await? {
        return Ok(Action::AwaitChange);
    }
    let finalizers = chart.metadata.finalizers.clone().unwrap_or_default();
    let has_finalizer = finalizers.iter().any(|f| f == FINALIZER);
    if chart.metadata.deletion_timestamp.is_some() {
        if !has_finalizer {
            return Ok(Action::AwaitChange);
        }
        return on_remove(ctx, &api, &chart).await;
    }
    if !has_finalizer {
        let mut f = finalizers;
        f.push(FINALIZER.to_string());
        let patch = json!({"metadata": {"finalizers": f, "resourceVersion": chart.metadata.resource_version}});
        api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        // the update triggers the next pass
        return Ok(Action::AwaitChange);
    }
    on_change(ctx, &api, &chart).await
}

/// helm-controller's `shouldManage` (claims unclaimed charts).
async fn should_manage(
    ctx: &Ctx,
    api: &Api<DynamicObject>,
    chart: &HelmChart,
) -> Result<bool, HelmError> {
    if let Some(sys) = &ctx.opts.system_namespace {
        if chart.metadata.namespace.as_deref() != Some(sys.as_str()) {
            return Ok(false);
        }
    }
    if chart.spec.chart.is_empty() && chart.spec.chart_content.is_empty() {
        return Ok(false);
    }
    let annotations = chart.metadata.annotations.clone().unwrap_or_default();
    if annotations.contains_key(ANNOTATION_UNMANAGED) {
        return Ok(false);
    }
    if let Some(m) = annotations.get(ANNOTATION_MANAGED_BY) {
        return Ok(*m == ctx.opts.managed_by);
    }
    let patch = json!({"metadata": {"annotations": {ANNOTATION_MANAGED_BY: ctx.opts.managed_by}}});
    api.patch(
        chart.metadata.name.as_deref().unwrap_or_default(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(false)
}

fn condition(job: &Job, type_: &str) -> Option<bool> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status == "True")
}

fn job_complete(job: Option<&Job>) -> bool {
    job.and_then(|j| condition(j, "Complete")).unwrap_or(false)
}

fn job_failed(job: Option<&Job>) -> bool {
    job.and_then(|j| condition(j, "Failed")).unwrap_or(false)
}

/// Created suspended, never started, and seen by the Job controller.
fn job_ready(job: Option<&Job>) -> bool {
    let Some(j) = job else { return false };
    j.metadata.generation == Some(1)
        && j.spec.as_ref().and_then(|s| s.suspend) == Some(true)
        && condition(j, "Suspended").unwrap_or(false)
}

/// Sets `spec.suspend` of `job` when it is not already so (guarded by its
/// resourceVersion, as helm-controller's test-and-replace JSON patch); true when it
/// changed.
async fn set_suspended(ctx: &Ctx, chart: &HelmChart, job: Option<&Job>, suspend: bool) -> bool {
    let ns = chart.metadata.namespace.as_deref().unwrap_or_default();
    let Some(job) = job else { return false };
    if job.spec.as_ref().and_then(|s| s.suspend).unwrap_or(false) == suspend {
        return false;
    }
    let job_name = job.metadata.name.clone().unwrap_or_default();
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), ns);
    let patch = json!({"metadata": {"resourceVersion": job.metadata.resource_version}, "spec": {"suspend": suspend}});
    let ok = api
        .patch(&job_name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .is_ok();
    if ok {
        let (reason, what) = if suspend {
            ("SuspendJob", "Suspended Job {} for delete")
        } else {
            ("ResumeJob", "Resumed synced Job {}")
        };
        let note = what.replace("{}", &format!("{ns}/{job_name}"));
        ctx.recorder
            .record(&reference(chart), false, reason, note)
            .await;
    }
    ok
}

/// The latest Helm release of a chart: (revision, hash label, status label).
async fn latest_release(ctx: &Ctx, chart: &HelmChart) -> Result<(i64, String, String), HelmError> {
    let name = chart.metadata.name.as_deref().unwrap_or_default();
    let target = if chart.spec.target_namespace.is_empty() {
        chart.metadata.namespace.clone().unwrap_or_default()
    } else {
        chart.spec.target_namespace.clone()
    };
    let lp = ListParams::default().labels(&format!("owner=helm,name={name}"));
    let metas: Vec<BTreeMap<String, String>> = if job::helm_driver(chart) == "configmap" {
        Api::<ConfigMap>::namespaced(ctx.client.clone(), &target)
            .list(&lp)
            .await?
            .items
            .into_iter()
            .map(|c| c.metadata.labels.unwrap_or_default())
            .collect()
    } else {
        Api::<Secret>::namespaced(ctx.client.clone(), &target)
            .list(&lp)
            .await?
            .items
            .into_iter()
            .filter(|s| s.type_.as_deref() == Some("helm.sh/release.v1"))
            .map(|s| s.metadata.labels.unwrap_or_default())
            .collect()
    };
    let mut best = (0i64, String::new(), String::new());
    for l in metas {
        if let Some(v) = l.get("version").and_then(|v| v.parse::<i64>().ok()) {
            if v > best.0 {
                best = (
                    v,
                    l.get(job::KEY_CONFIG_HASH).cloned().unwrap_or_default(),
                    l.get("status").cloned().unwrap_or_default(),
                );
            }
        }
    }
    Ok(best)
}

/// The values Secrets a chart and its config name (for the hash).
async fn referenced_secrets(
    ctx: &Ctx,
    chart: &HelmChart,
    config: Option<&HelmChartConfig>,
) -> Result<Vec<Secret>, HelmError> {
    let ns = chart.metadata.namespace.as_deref().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let mut out = Vec::new();
    let names = chart
        .spec
        .values_secrets
        .iter()
        .chain(
            config
                .map(|c| c.spec.values_secrets.iter())
                .into_iter()
                .flatten(),
        )
        .filter(|s| !s.ignore_updates)
        .map(|s| s.name.clone());
    for n in names {
        if let Some(s) = api.get_opt(&n).await? {
            out.push(s);
        }
    }
    Ok(out)
}

async fn get_config(ctx: &Ctx, chart: &HelmChart) -> Result<Option<HelmChartConfig>, HelmError> {
    let ns = chart.metadata.namespace.as_deref().unwrap_or_default();
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, &config_resource());
    match api
        .get_opt(chart.metadata.name.as_deref().unwrap_or_default())
        .await?
    {
        Some(o) => Ok(Some(serde_json::from_value(serde_json::to_value(&o)?)?)),
        None => Ok(None),
    }
}

fn cond(type_: &str, status: bool, reason: &str, message: &str) -> HelmChartCondition {
    HelmChartCondition {
        type_: type_.to_string(),
        status: if status { "True" } else { "False" }.to_string(),
        reason: reason.to_string(),
        message: message.to_string(),
    }
}

async fn set_status(
    api: &Api<DynamicObject>,
    chart: &HelmChart,
    status: &HelmChartStatus,
) -> Result<(), HelmError> {
    if &chart.status == status {
        return Ok(());
    }
    api.patch_status(
        chart.metadata.name.as_deref().unwrap_or_default(),
        &PatchParams::default(),
        &Patch::Merge(
            &json!({"status": {"jobName": status.job_name, "conditions": status.conditions}}),
        ),
    )
    .await?;
    Ok(())
}

/// Server-side applies one object of the chart.
async fn apply<K>(api: &Api<K>, obj: &K, name: &str) -> Result<(), HelmError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await?;
    Ok(())
}

/// Applies the objects around the Job (SA, CRB, and for installs Secret + ConfigMap).
async fn apply_related(ctx: &Ctx, ns: &str, objs: &job::ChartObjects) -> Result<(), HelmError> {
    let c = &ctx.client;
    let sa = &objs.service_account;
    apply(
        &Api::<ServiceAccount>::namespaced(c.clone(), ns),
        sa,
        sa.metadata.name.as_deref().unwrap_or_default(),
    )
    .await?;
    let crb = &objs.cluster_role_binding;
    apply(
        &Api::<ClusterRoleBinding>::all(c.clone()),
        crb,
        crb.metadata.name.as_deref().unwrap_or_default(),
    )
    .await?;
    if let Some(s) = &objs.values_secret {
        apply(
            &Api::<Secret>::namespaced(c.clone(), ns),
            s,
            s.metadata.name.as_deref().unwrap_or_default(),
        )
        .await?;
    }
    if let Some(cm) = &objs.content_config_map {
        apply(
            &Api::<ConfigMap>::namespaced(c.clone(), ns),
            cm,
            cm.metadata.name.as_deref().unwrap_or_default(),
        )
        .await?;
    }
    Ok(())
}

fn env_of(job: &Job, name: &str) -> Option<String> {
    job.spec
        .as_ref()?
        .template
        .spec
        .as_ref()?
        .containers
        .first()?
        .env
        .as_ref()?
        .iter()
        .find(|e| e.name == name)
        .and_then(|e| e.value.clone())
}

/// Creates `desired`, replacing `existing` when it differs (once the old Job was seen
/// by the Job controller and has no running pods). Ok(false): try again later.
async fn create_or_replace(
    ctx: &Ctx,
    ns: &str,
    existing: Option<&Job>,
    desired: &Job,
) -> Result<bool, HelmError> {
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), ns);
    let name = desired.metadata.name.as_deref().unwrap_or_default();
    if let Some(old) = existing {
        let status = old.status.clone().unwrap_or_default();
        if status.conditions.as_ref().is_none_or(|c| c.is_empty()) {
            return Ok(false);
        }
        if status.active.unwrap_or(0) + status.terminating.unwrap_or(0) != 0 {
            return Ok(false);
        }
        match api.delete(name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    match api.create(&PostParams::default(), desired).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn hash_of(job: &Job) -> String {
    job.spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(job::KEY_CONFIG_HASH))
        .cloned()
        .unwrap_or_default()
}

async fn on_change(
    ctx: &Ctx,
    api: &Api<DynamicObject>,
    chart: &HelmChart,
) -> Result<Action, HelmError> {
    let ns = chart.metadata.namespace.clone().unwrap_or_default();
    let reference = reference(chart);
    match chart.spec.helm_version.as_str() {
        "" | "v3" => {}
        v => {
            ctx.recorder
                .record(
                    &reference,
                    true,
                    "UnsupportedVersion",
                    format!("Unsupported Helm version {v}: only v3 charts are supported"),
                )
                .await;
            let status = HelmChartStatus {
                job_name: chart.status.job_name.clone(),
                conditions: vec![
                    cond("JobCreated", false, "", ""),
                    cond(
                        "Failed",
                        true,
                        "Unsupported version",
                        "Only Helm v3 charts are supported",
                    ),
                ],
            };
            set_status(api, chart, &status).await?;
            return Ok(Action::AwaitChange);
        }
    }
    let job_name = job::job_name(chart);
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let existing = jobs.get_opt(&job_name).await?;
    let created_msg = format!("Applying HelmChart using Job {ns}/{job_name}");
    if job_failed(existing.as_ref()) {
        ctx.recorder
            .record(
                &reference,
                true,
                "JobFailed",
                "Job has reached configured number of retries without succeeding".into(),
            )
            .await;
        let status = HelmChartStatus {
            job_name: chart.status.job_name.clone(),
            conditions: vec![
                cond("JobCreated", true, "Job created", &created_msg),
                cond(
                    "Failed",
                    true,
                    "Job failed",
                    "Job has reached configured number of retries without succeeding",
                ),
            ],
        };
        set_status(api, chart, &status).await?;
    }
    if job_ready(existing.as_ref()) {
        set_suspended(ctx, chart, existing.as_ref(), false).await;
        return Ok(Action::AwaitChange);
    }
    let config = get_config(ctx, chart).await?;
    let secrets = referenced_secrets(ctx, chart, config.as_ref()).await?;
    let chart_name = chart.metadata.name.clone().unwrap_or_default();
    let own = format!("chart-values-{chart_name}");
    let watched: Vec<String> = chart
        .spec
        .values_secrets
        .iter()
        .chain(config.iter().flat_map(|c| c.spec.values_secrets.iter()))
        .filter(|s| !s.ignore_updates && s.name != own)
        .map(|s| s.name.clone())
        .collect();
    ctx.index_secrets(&(ns.clone(), chart_name), &watched);
    let mut objs = job::build(chart, config.as_ref(), &secrets, &ctx.opts.job);
    let hash = job::short_config_hash(&objs.job);
    let (revision, release_hash, release_status) = latest_release(ctx, chart).await?;
    let complete = job_complete(existing.as_ref());
    if complete {
        if release_status == "deployed" && release_hash == hash {
            return Ok(Action::AwaitChange);
        }
    } else if let Some(old) = &existing {
        if hash_of(old) == hash_of(&objs.job) {
            return Ok(Action::AwaitChange);
        }
    }
    job::with_release(&mut objs.job, revision);
    if let (true, Some(old)) = (complete, &existing) {
        // Same template and release variables: nothing would change.
        if hash_of(old) == hash_of(&objs.job)
            && env_of(old, "EXPECTED_RELEASE_REVISION")
                == env_of(&objs.job, "EXPECTED_RELEASE_REVISION")
            && env_of(old, "CONFIG_HASH") == env_of(&objs.job, "CONFIG_HASH")
        {
            return Ok(Action::AwaitChange);
        }
    }
    let status = HelmChartStatus {
        job_name: job_name.clone(),
        conditions: vec![
            cond("JobCreated", true, "Job created", &created_msg),
            cond("Failed", false, "", ""),
        ],
    };
    set_suspended(ctx, chart, existing.as_ref(), true).await;
    apply_related(ctx, &ns, &objs).await?;
    if !create_or_replace(ctx, &ns, existing.as_ref(), &objs.job).await? {
        // the Job watch brings the key back sooner
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    ctx.recorder
        .record(
            &reference,
            false,
            "ApplyJob",
            format!(
                "Applying HelmChart from {} using Job {ns}/{job_name} ",
                job::chart_source(chart)
            ),
        )
        .await;
    set_status(api, chart, &status).await?;
    Ok(Action::AwaitChange)
}

async fn on_remove(
    ctx: &Ctx,
    api: &Api<DynamicObject>,
    chart: &HelmChart,
) -> Result<Action, HelmError> {
    let ns = chart.metadata.namespace.clone().unwrap_or_default();
    let name = chart.metadata.name.clone().unwrap_or_default();
    let done = match chart.spec.helm_version.as_str() {
        "" | "v3" => remove_step(ctx, api, chart, &ns, &name).await?,
        _ => true,
    };
    if !done {
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    let finalizers: Vec<String> = chart
        .metadata
        .finalizers
        .iter()
        .flatten()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": chart.metadata.resource_version}});
    match api
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(Action::AwaitChange),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(Action::AwaitChange),
        Err(e) => Err(e.into()),
    }
}

/// One step of uninstalling; true when the chart's objects are gone.
async fn remove_step(
    ctx: &Ctx,
    api: &Api<DynamicObject>,
    chart: &HelmChart,
    ns: &str,
    name: &str,
) -> Result<bool, HelmError> {
    let reference = reference(chart);
    let job_name = job::job_name(chart);
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), ns);
    let existing = jobs.get_opt(&job_name).await?;
    if job_ready(existing.as_ref()) {
        set_suspended(ctx, chart, existing.as_ref(), false).await;
        return Ok(false);
    }
    if job_complete(existing.as_ref()) {
        ctx.recorder
            .record(
                &reference,
                false,
                "RemoveJob",
                format!("Uninstalled HelmChart using Job {ns}/{job_name}, removing resources"),
            )
            .await;
        delete_all(ctx, ns, name).await?;
        ctx.index_secrets(&(ns.to_string(), name.to_string()), &[]);
        return Ok(true);
    }
    let mut objs = job::build(chart, None, &[], &ctx.opts.job);
    if let Some(old) = &existing {
        if hash_of(old) == hash_of(&objs.job) {
            return Ok(false);
        }
    }
    let (revision, _, _) = latest_release(ctx, chart).await?;
    job::with_release(&mut objs.job, revision);
    let install = jobs.get_opt(&format!("helm-install-{name}")).await?;
    set_suspended(ctx, chart, install.as_ref(), true).await;
    apply_related(ctx, ns, &objs).await?;
    match create_or_replace(ctx, ns, existing.as_ref(), &objs.job).await {
        Ok(true) => {}
        Ok(false) => return Ok(false),
        // a terminating namespace removes the chart anyway
        Err(HelmError::Kube(kube::Error::Api(e)))
            if e.code == 403 && e.message.contains("being terminated") =>
        {
            return Ok(true)
        }
        Err(e) => return Err(e),
    }
    ctx.recorder
        .record(
            &reference,
            false,
            "RemoveJob",
            format!("Uninstalling HelmChart using Job {ns}/{job_name} "),
        )
        .await;
    if chart.status.job_name != job_name {
        let mut status = chart.status.clone();
        status.job_name = job_name;
        set_status(api, chart, &status).await?;
    }
    Ok(false)
}

/// Deletes everything made for chart `ns/name`.
async fn delete_all(ctx: &Ctx, ns: &str, name: &str) -> Result<(), HelmError> {
    let c = &ctx.client;
    let dp = DeleteParams::background();
    let gone = |r: Result<(), kube::Error>| match r {
        Ok(()) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(HelmError::Kube(e)),
    };
    let jobs: Api<Job> = Api::namespaced(c.clone(), ns);
    for j in [
        format!("helm-install-{name}"),
        format!("helm-delete-{name}"),
    ] {
        gone(jobs.delete(&j, &dp).await.map(|_| ()))?;
    }
    gone(
        Api::<Secret>::namespaced(c.clone(), ns)
            .delete(&format!("chart-values-{name}"), &dp)
            .await
            .map(|_| ()),
    )?;
    gone(
        Api::<ConfigMap>::namespaced(c.clone(), ns)
            .delete(&format!("chart-content-{name}"), &dp)
            .await
            .map(|_| ()),
    )?;
    gone(
        Api::<ServiceAccount>::namespaced(c.clone(), ns)
            .delete(&format!("helm-{name}"), &dp)
            .await
            .map(|_| ()),
    )?;
    gone(
        Api::<ClusterRoleBinding>::all(c.clone())
            .delete(&format!("helm-{ns}-{name}"), &dp)
            .await
            .map(|_| ()),
    )?;
    Ok(())
}
