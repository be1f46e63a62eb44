//! The HelmChart controller against a real in-process API server: a chart becomes a
//! suspended install Job with its Secret, ConfigMap, ServiceAccount and binding; a
//! HelmChartConfig adds its values; deletion runs the delete Job then removes the
//! finalizer.

use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use rk3s_apiserver::testutil::server;
use rk3s_apiserver::{ApiServer, UserInfo};
use rk3s_helm_controller::HelmControllerOptions;
use serde_json::json;

fn client(api: &ApiServer) -> kube::Client {
    let admin = UserInfo::new("system:admin", &["system:masters", "system:authenticated"]);
    kube::Client::new(api.local_service(admin), "default")
}

async fn until<F, Fut, T>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

fn resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("helm.cattle.io", "v1", kind), plural)
}

/// Plays the Job controller: sets the Job's status conditions.
async fn set_job_conditions(
    jobs: &Api<Job>,
    name: &str,
    conds: serde_json::Value,
    extra: serde_json::Value,
) {
    let mut status = json!({"conditions": conds});
    if let (Some(s), Some(e)) = (status.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            s.insert(k.clone(), v.clone());
        }
    }
    jobs.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(&json!({"status": status})),
    )
    .await
    .expect("job status");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_chart_lifecycle() {
    let tmp = tempfile::tempdir().expect("tmp");
    let api = server(tmp.path()).await;
    let c = client(&api);
    let task = tokio::spawn(rk3s_helm_controller::run(
        c.clone(),
        HelmControllerOptions::new("", 6443),
    ));
    let charts: Api<DynamicObject> = Api::namespaced_with(
        c.clone(),
        "kube-system",
        &resource("HelmChart", "helmcharts"),
    );
    let chart = json!({
        "apiVersion": "helm.cattle.io/v1", "kind": "HelmChart",
        "metadata": {"name": "traefik", "namespace": "kube-system"},
        "spec": {
            "chart": "traefik", "repo": "https://traefik.github.io/charts", "version": "27.0.0",
            "targetNamespace": "ingress", "createNamespace": true,
            "set": {"replicas": 2, "hosts": "a,b"},
            "valuesContent": "image:\n  tag: v3\n",
            "chartContent": "H4sIAAAA",
            "valuesSecrets": [{"name": "extra", "keys": ["v.yaml"]}],
        },
    });
    let extra: Secret = serde_json::from_value(json!({
        "metadata": {"name": "extra", "namespace": "kube-system"},
        "stringData": {"v.yaml": "x: 1\n"},
    }))
    .expect("secret");
    Api::<Secret>::namespaced(c.clone(), "kube-system")
        .create(&PostParams::default(), &extra)
        .await
        .expect("extra secret");
    let obj: DynamicObject = serde_json::from_value(chart).expect("chart");
    until(10, "CRDs served and chart created", || {
        let (charts, obj) = (charts.clone(), obj.clone());
        async move { charts.create(&PostParams::default(), &obj).await.ok() }
    })
    .await;

    let jobs: Api<Job> = Api::namespaced(c.clone(), "kube-system");
    let job = until(10, "install job", || {
        let jobs = jobs.clone();
        async move { jobs.get_opt("helm-install-traefik").await.ok().flatten() }
    })
    .await;
    let spec = job.spec.clone().expect("spec");
    assert_eq!(spec.suspend, Some(true));
    assert_eq!(spec.backoff_limit, Some(1000));
    let pod = spec.template.spec.clone().expect("pod");
    let ctr = &pod.containers[0];
    assert_eq!(
        ctr.image.as_deref(),
        Some(rk3s_helm_controller::DEFAULT_JOB_IMAGE)
    );
    assert_eq!(
        ctr.args.clone().expect("args"),
        [
            "install",
            "--namespace",
            "ingress",
            "--create-namespace",
            "--version",
            "27.0.0",
            "--set-string",
            "hosts=a\\,b",
            "--set",
            "replicas=2"
        ]
        .map(String::from)
        .to_vec()
    );
    let env: Vec<(String, String)> = ctr
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
        .collect();
    for (k, v) in [
        ("NAME", "traefik"),
        ("CHART", "traefik/traefik"),
        ("TARGET_NAMESPACE", "ingress"),
        ("HELM_DRIVER", "secret"),
        ("EXPECTED_RELEASE_REVISION", "0"),
    ] {
        assert!(
            env.contains(&(k.to_string(), v.to_string())),
            "{k}={v} in {env:?}"
        );
    }
    assert_eq!(pod.service_account_name.as_deref(), Some("helm-traefik"));
    let owner = &job.metadata.owner_references.clone().expect("owner")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("HelmChart", "traefik")
    );

    let secrets: Api<Secret> = Api::namespaced(c.clone(), "kube-system");
    let s = secrets
        .get("chart-values-traefik")
        .await
        .expect("values secret");
    assert_eq!(s.type_.as_deref(), Some("helmcharts.helm.cattle.io/values"));
    assert_eq!(
        s.data.clone().expect("data")["HelmChartValuesContent"].0,
        b"image:\n  tag: v3\n"
    );
    let cm = Api::<ConfigMap>::namespaced(c.clone(), "kube-system")
        .get("chart-content-traefik")
        .await
        .expect("content");
    assert_eq!(
        cm.data.clone().expect("data")["traefik.tgz.base64"],
        "H4sIAAAA"
    );
    Api::<ServiceAccount>::namespaced(c.clone(), "kube-system")
        .get("helm-traefik")
        .await
        .expect("sa");
    let crb = Api::<ClusterRoleBinding>::all(c.clone())
        .get("helm-kube-system-traefik")
        .await
        .expect("crb");
    assert_eq!(crb.role_ref.name, "cluster-admin");

    let chart = until(5, "status and finalizer", || {
        let charts = charts.clone();
        async move {
            let o = charts.get("traefik").await.ok()?;
            (o.data["status"]["jobName"] == "helm-install-traefik").then_some(o)
        }
    })
    .await;
    assert_eq!(
        chart.metadata.annotations.clone().expect("a")["helmcharts.cattle.io/managed-by"],
        "helm-controller"
    );
    assert!(chart
        .metadata
        .finalizers
        .clone()
        .unwrap_or_default()
        .contains(&rk3s_helm_controller::FINALIZER.to_string()));
    let conds = chart.data["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        conds
            .iter()
            .any(|c| c["type"] == "JobCreated" && c["status"] == "True"),
        "{conds:?}"
    );

    // The Job controller saw the Job: the helm controller resumes it.
    set_job_conditions(&jobs, "helm-install-traefik", json!([{"type": "Suspended", "status": "True", "reason": "JobSuspended", "message": "Job suspended"}]), json!({})).await;
    until(5, "job resumed", || {
        let jobs = jobs.clone();
        async move {
            jobs.get("helm-install-traefik")
                .await
                .ok()
                .filter(|j| j.spec.as_ref().and_then(|s| s.suspend) == Some(false))
        }
    })
    .await;

    let hash_of = |j: &Job| {
        j.spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.annotations.as_ref())
            .map(|a| a["helmcharts.helm.cattle.io/configHash"].clone())
            .unwrap_or_default()
    };
    let h1 = hash_of(&job);

    // A HelmChartConfig adds its values to the Secret and replaces the Job.
    let configs: Api<DynamicObject> = Api::namespaced_with(
        c.clone(),
        "kube-system",
        &resource("HelmChartConfig", "helmchartconfigs"),
    );
    let conf: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "helm.cattle.io/v1", "kind": "HelmChartConfig",
        "metadata": {"name": "traefik", "namespace": "kube-system"},
        "spec": {"valuesContent": "ports:\n  web: 8080\n"},
    }))
    .expect("config");
    configs
        .create(&PostParams::default(), &conf)
        .await
        .expect("create config");
    until(5, "config values in the secret", || {
        let secrets = secrets.clone();
        async move {
            let s = secrets.get("chart-values-traefik").await.ok()?;
            s.data?
                .get("HelmChartConfigValuesContent")
                .filter(|v| v.0 == b"ports:\n  web: 8080\n")
                .map(|_| ())
        }
    })
    .await;

    let j2 = until(5, "job replaced", || {
        let jobs = jobs.clone();
        let h1 = h1.clone();
        async move {
            jobs.get("helm-install-traefik")
                .await
                .ok()
                .filter(|j| hash_of(j) != h1)
        }
    })
    .await;
    assert_eq!(j2.spec.as_ref().and_then(|s| s.suspend), Some(true));
    let h2 = hash_of(&j2);

    // A change of a values Secret the chart names replaces the Job too (once the Job
    // controller has seen the current one).
    Api::<Secret>::namespaced(c.clone(), "kube-system")
        .patch(
            "extra",
            &PatchParams::default(),
            &Patch::Merge(&json!({"stringData": {"v.yaml": "x: 2\n"}})),
        )
        .await
        .expect("update extra");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        hash_of(&jobs.get("helm-install-traefik").await.expect("job")),
        h2,
        "waits for the Job controller"
    );
    set_job_conditions(&jobs, "helm-install-traefik", json!([{"type": "Suspended", "status": "True", "reason": "JobSuspended", "message": "Job suspended"}]), json!({})).await;
    until(5, "job replaced after the secret changed", || {
        let jobs = jobs.clone();
        let (h1, h2) = (h1.clone(), h2.clone());
        async move {
            jobs.get("helm-install-traefik")
                .await
                .ok()
                .filter(|j| hash_of(j) != h2 && hash_of(j) != h1)
        }
    })
    .await;

    // Deleting the chart runs the delete Job; its completion removes everything.
    charts
        .delete("traefik", &DeleteParams::default())
        .await
        .expect("delete");
    let del = until(10, "delete job", || {
        let jobs = jobs.clone();
        async move { jobs.get_opt("helm-delete-traefik").await.ok().flatten() }
    })
    .await;
    let dctr = &del
        .spec
        .clone()
        .expect("s")
        .template
        .spec
        .expect("p")
        .containers[0];
    assert_eq!(dctr.args.clone().expect("args"), vec!["delete".to_string()]);
    assert!(
        charts.get_opt("traefik").await.expect("get").is_some(),
        "the finalizer holds the chart"
    );
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    set_job_conditions(
        &jobs,
        "helm-delete-traefik",
        json!([
            {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached", "message": "Reached expected number of succeeded pods"},
            {"type": "Complete", "status": "True", "reason": "CompletionsReached", "message": "Reached expected number of succeeded pods"},
        ]),
        json!({"startTime": now, "completionTime": now, "succeeded": 1}),
    )
    .await;
    until(10, "chart gone", || {
        let charts = charts.clone();
        async move {
            charts
                .get_opt("traefik")
                .await
                .ok()
                .and_then(|o| o.is_none().then_some(()))
        }
    })
    .await;
    assert!(secrets
        .get_opt("chart-values-traefik")
        .await
        .expect("get")
        .is_none());
    assert!(jobs
        .get_opt("helm-delete-traefik")
        .await
        .expect("get")
        .is_none());
    assert!(Api::<ClusterRoleBinding>::all(c.clone())
        .get_opt("helm-kube-system-traefik")
        .await
        .expect("get")
        .is_none());
    task.abort();
}
