//! End-to-end: API fidelity of server-side behaviour against the real `rk3s server`
//! (issue 11 items 6, 10, 11 and 14), driven by kubectl and raw HTTPS.
//!
//! - item 6: a Service created (or client-side applied) by kubectl can then be applied
//!   server-side: the values the server allocates (clusterIP(s), ipFamilies,
//!   ipFamilyPolicy, nodePorts) have no owner in managedFields.
//! - item 10: a watch from a resourceVersion older than the watch cache's window gets a
//!   410 `Expired` ERROR event; watches inside the window and from "0"/absent are served.
//! - item 11: `componentstatuses` lists scheduler, controller-manager and etcd-0 with
//!   upstream's conditions and deprecation warning.
//! - item 14: `namespaces/{name}/finalize` and `pods/{name}/resize` are served, and no
//!   subresource discovery advertises answers 503.

mod common;

use std::time::Duration;

use common::http::{Conn, Creds};
use common::{kubectl_bin, wait_for, Cluster};
use serde_json::{json, Value};

fn conn(c: &Cluster) -> Conn {
    Conn::connect(&Creds::from_kubeconfig(&c.kubeconfig, c.port)).expect("connect")
}

fn parse(out: &[u8]) -> Value {
    serde_json::from_slice(out)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(out).to_string()))
}

fn call(conn: &mut Conn, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let b = body.map(|b| serde_json::to_vec(b).expect("json"));
    let (code, out) = conn.request(method, path, b.as_deref()).expect("request");
    (code, parse(&out))
}

fn patch(conn: &mut Conn, path: &str, content_type: &str, body: &Value) -> (u16, Value) {
    let b = serde_json::to_vec(body).expect("json");
    let (code, out) = conn
        .request_ct("PATCH", path, content_type, Some(&b))
        .expect("request");
    (code, parse(&out))
}

/// The lines of a watch response body.
fn watch_events(conn: &mut Conn, path: &str) -> Vec<Value> {
    let (code, out) = conn.request("GET", path, None).expect("watch");
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&out));
    String::from_utf8_lossy(&out)
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).expect("event json"))
        .collect()
}

fn rv(obj: &Value) -> i64 {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no resourceVersion in {obj}"))
}

fn cm(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": "v"}})
}

fn out_ok(out: &std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The fields of `spec` a managedFields entry of `manager` owns (empty when none).
fn owned_spec_fields(svc: &Value, manager: &str) -> Value {
    svc["metadata"]["managedFields"]
        .as_array()
        .and_then(|mf| mf.iter().find(|e| e["manager"] == manager))
        .map(|e| e["fieldsV1"]["f:spec"].clone())
        .unwrap_or(Value::Null)
}

const SVC: &str = "apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
spec:
  type: NodePort
  selector:
    app: web
  ports:
  - name: http
    port: 80
    targetPort: 8080
";

/// item 6: `kubectl create` (and client-side `kubectl apply`) then `kubectl apply
/// --server-side` of the same Service manifest succeeds: what the server allocated is
/// not owned by the creating manager, so the applier never drops it.
#[test]
fn server_side_apply_after_create_of_a_service_keeps_allocated_values() {
    let c = Cluster::start();
    out_ok(
        &c.kubectl_with(&kubectl_bin(), &["create", "-f", "-"], Some(SVC)),
        "kubectl create",
    );
    let created: Value = serde_json::from_str(&c.ok(&[
        "get",
        "service",
        "web",
        "-o",
        "json",
        "--show-managed-fields",
    ]))
    .expect("json");
    let ip = created["spec"]["clusterIP"]
        .as_str()
        .expect("allocated clusterIP")
        .to_string();
    let node_port = created["spec"]["ports"][0]["nodePort"]
        .as_i64()
        .expect("allocated nodePort");
    let owned = owned_spec_fields(&created, "kubectl-create");
    assert!(
        owned.is_object(),
        "kubectl-create owns spec fields: {created}"
    );
    for f in [
        "f:clusterIP",
        "f:clusterIPs",
        "f:ipFamilies",
        "f:ipFamilyPolicy",
    ] {
        assert!(
            owned.get(f).is_none(),
            "{f} is owned by kubectl-create: {owned}"
        );
    }
    // Defaulted fields are the creator's, as upstream (defaulting happens at decoding).
    assert!(owned.get("f:sessionAffinity").is_some(), "{owned}");
    let port = &owned["f:ports"][r#"k:{"port":80,"protocol":"TCP"}"#];
    assert!(port.is_object(), "{owned}");
    assert!(
        port.get("f:nodePort").is_none(),
        "allocated nodePort is owned: {port}"
    );
    assert!(port.get("f:targetPort").is_some(), "{port}");

    let out = c.kubectl_with(
        &kubectl_bin(),
        &["apply", "--server-side", "-f", "-"],
        Some(SVC),
    );
    let stdout = out_ok(&out, "kubectl apply --server-side after kubectl create");
    assert!(
        stdout.contains("service/web serverside-applied"),
        "{stdout}"
    );
    let applied: Value =
        serde_json::from_str(&c.ok(&["get", "service", "web", "-o", "json"])).expect("json");
    assert_eq!(applied["spec"]["clusterIP"], ip.as_str());
    assert_eq!(applied["spec"]["ports"][0]["nodePort"], node_port);

    // Client-side apply first (kubectl migrates its fields to the server-side manager).
    let svc2 = SVC.replace("name: web", "name: web2");
    out_ok(
        &c.kubectl_with(&kubectl_bin(), &["apply", "-f", "-"], Some(&svc2)),
        "client-side apply",
    );
    let out = c.kubectl_with(
        &kubectl_bin(),
        &["apply", "--server-side", "-f", "-"],
        Some(&svc2),
    );
    out_ok(&out, "kubectl apply --server-side after client-side apply");
    let s2: Value = serde_json::from_str(&c.ok(&[
        "get",
        "service",
        "web2",
        "-o",
        "json",
        "--show-managed-fields",
    ]))
    .expect("json");
    assert!(
        s2["spec"]["clusterIP"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "{s2}"
    );
    let kubectl = owned_spec_fields(&s2, "kubectl");
    assert!(kubectl.get("f:clusterIP").is_none(), "{kubectl}");
    // A re-apply without changes keeps working (no field is dropped).
    out_ok(
        &c.kubectl_with(
            &kubectl_bin(),
            &["apply", "--server-side", "-f", "-"],
            Some(&svc2),
        ),
        "re-apply",
    );

    // Updates: a type change that allocates node ports does not give them to the writer.
    let mut k = conn(&c);
    let (code, s) = call(
        &mut k,
        "POST",
        "/api/v1/namespaces/default/services?fieldManager=maker",
        Some(
            &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "plain"}, "spec": {"selector": {"a": "b"}, "ports": [{"port": 81}]}}),
        ),
    );
    assert_eq!(code, 201, "{s}");
    let (code, s) = patch(
        &mut k,
        "/api/v1/namespaces/default/services/plain?fieldManager=changer",
        "application/merge-patch+json",
        &json!({"spec": {"type": "NodePort"}}),
    );
    assert_eq!(code, 200, "{s}");
    assert!(s["spec"]["ports"][0]["nodePort"].as_i64().is_some(), "{s}");
    let changer = owned_spec_fields(&s, "changer");
    assert!(changer.get("f:type").is_some(), "{s}");
    assert!(
        changer.get("f:ports").is_none(),
        "allocated nodePort is owned by the updater: {changer}"
    );
    let maker = owned_spec_fields(&s, "maker");
    assert!(maker.get("f:clusterIP").is_none(), "{maker}");
}

/// The (type, name) of watch events.
fn typed_names(evs: &[Value]) -> Vec<(String, String)> {
    evs.iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap_or("").to_string(),
                e["object"]["metadata"]["name"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect()
}

/// The oldest revision named in a `too old resource version: <rv> (<oldest>)` ERROR.
fn expired_oldest(evs: &[Value], rv: i64) -> i64 {
    assert_eq!(evs.len(), 1, "{evs:?}");
    assert_eq!(evs[0]["type"], "ERROR", "{evs:?}");
    let st = &evs[0]["object"];
    assert_eq!(
        (
            st["kind"].as_str(),
            st["code"].as_i64(),
            st["reason"].as_str(),
            st["status"].as_str()
        ),
        (Some("Status"), Some(410), Some("Expired"), Some("Failure")),
        "{st}"
    );
    let msg = st["message"].as_str().unwrap_or("");
    let prefix = format!("too old resource version: {rv} (");
    assert!(msg.starts_with(&prefix) && msg.ends_with(')'), "{msg}");
    msg[prefix.len()..msg.len() - 1]
        .parse()
        .expect("oldest revision in the message")
}

/// item 10: as upstream's watch cache, each resource keeps a window of at least 100
/// events, more while they are younger than 75 s; a watch from a resourceVersion older
/// than its resource's window answers a 410 `Expired` ERROR event (clients relist),
/// while watches inside the window, of other resources, and from "0"/absent are served.
#[test]
fn watch_from_before_the_cache_window_is_expired() {
    let mut c = Cluster::start();
    let mut k = conn(&c);
    let create = |k: &mut Conn, name: &str| {
        let (code, o) = call(
            k,
            "POST",
            "/api/v1/namespaces/default/configmaps",
            Some(&cm(name)),
        );
        assert_eq!(code, 201, "{o}");
        rv(&o)
    };
    // 110 ConfigMap events in a burst: the window grows to keep them all.
    let first = create(&mut k, "w0");
    for i in 1..110 {
        create(&mut k, &format!("w{i}"));
    }
    let burst_done = std::time::Instant::now();
    let evs = watch_events(&mut k, &format!("/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={first}&timeoutSeconds=1"));
    assert_eq!(
        evs.len(),
        109,
        "a burst stays in the window: {:?}",
        typed_names(&evs).first()
    );
    // Once they are older than 75 s, a full window drops its oldest events.
    // Counted from the end of the burst: on a loaded machine the burst takes seconds, and
    // every one of its events must be past the 75 s age.
    std::thread::sleep(Duration::from_secs(77).saturating_sub(burst_done.elapsed()));
    let mut last = 0;
    for i in 0..100 {
        last = create(&mut k, &format!("x{i}"));
    }
    let evs = watch_events(&mut k, &format!("/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={first}&timeoutSeconds=1"));
    let oldest = expired_oldest(&evs, first);
    assert!(
        oldest > first && oldest < last,
        "{oldest} not in ({first}, {last})"
    );
    // Also for a watch of one object, and with bookmarks.
    let evs = watch_events(&mut k, &format!("/api/v1/namespaces/default/configmaps?watch=1&fieldSelector=metadata.name%3Dw0&resourceVersion={first}&timeoutSeconds=1"));
    expired_oldest(&evs, first);
    let evs = watch_events(&mut k, &format!("/api/v1/configmaps?watch=1&allowWatchBookmarks=true&resourceVersion={first}&timeoutSeconds=1"));
    // The same window: its oldest revision, or a later one when more of the burst has
    // aged out meanwhile (the window drops events older than 75 s as time passes; on a
    // loaded machine the burst spans the boundary).
    let oldest_all = expired_oldest(&evs, first);
    assert!(
        oldest_all >= oldest && oldest_all < last,
        "{oldest_all} not in [{oldest}, {last})"
    );
    // The oldest revision the window serves: every later event, no ERROR.
    let evs = watch_events(&mut k, &format!("/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={oldest}&timeoutSeconds=1"));
    let got = typed_names(&evs);
    assert!(got.iter().all(|(t, _)| t == "ADDED"), "{got:?}");
    assert_eq!(got.last().map(|(_, n)| n.as_str()), Some("x99"));
    assert!(got.len() >= 100, "{}", got.len());
    // Another resource's window is its own: Secrets from the same revision are served.
    let evs = watch_events(
        &mut k,
        &format!(
            "/api/v1/namespaces/default/secrets?watch=1&resourceVersion={first}&timeoutSeconds=1"
        ),
    );
    assert!(evs.iter().all(|e| e["type"] != "ERROR"), "{evs:?}");
    // "0" and absent: the current state first (legacy initial events), never 410.
    for q in ["resourceVersion=0&", ""] {
        let evs = watch_events(&mut k, &format!("/api/v1/namespaces/default/configmaps?watch=1&fieldSelector=metadata.name%3Dw0&{q}timeoutSeconds=1"));
        assert_eq!(
            typed_names(&evs),
            vec![("ADDED".to_string(), "w0".to_string())],
            "{q}"
        );
    }

    // A restart starts a new cache: its windows begin at the revision it loaded.
    create(&mut k, "y");
    c.restart(&[]);
    let mut k = conn(&c);
    let b = create(&mut k, "b");
    let evs = watch_events(
        &mut k,
        &format!(
            "/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={last}&timeoutSeconds=1"
        ),
    );
    let loaded = expired_oldest(&evs, last);
    assert!(loaded > last && loaded < b, "{loaded}");
    let evs = watch_events(&mut k, &format!("/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={loaded}&timeoutSeconds=1"));
    let got = typed_names(&evs);
    assert!(
        got.contains(&("ADDED".to_string(), "b".to_string()))
            && got.iter().all(|(t, _)| t != "ERROR"),
        "{got:?}"
    );
}

/// item 11: componentstatuses lists the scheduler, the controller manager and the
/// datastore (as upstream's `etcd-0`), healthy when their Leases are held and renewed
/// and the store answers; kubectl prints it as upstream with the deprecation warning.
#[test]
fn component_statuses_report_health() {
    let c = Cluster::start();
    let mut k = conn(&c);
    // The scheduler and controller manager take their Leases shortly after start.
    let list = wait_for("healthy components", Duration::from_secs(30), || {
        let (code, l) = call(&mut k, "GET", "/api/v1/componentstatuses", None);
        assert_eq!(code, 200, "{l}");
        let all_healthy = l["items"].as_array().is_some_and(|i| {
            i.len() == 3 && i.iter().all(|s| s["conditions"][0]["status"] == "True")
        });
        all_healthy.then_some(l)
    });
    assert_eq!(list["kind"], "ComponentStatusList");
    assert_eq!(list["apiVersion"], "v1");
    let mut names: Vec<&str> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|s| s["metadata"]["name"].as_str().unwrap_or(""))
        .collect();
    names.sort();
    assert_eq!(names, vec!["controller-manager", "etcd-0", "scheduler"]);
    for s in list["items"].as_array().expect("items") {
        assert_eq!(
            s["conditions"],
            json!([{"type": "Healthy", "status": "True", "message": "ok"}]),
            "{s}"
        );
    }
    let (code, one) = call(&mut k, "GET", "/api/v1/componentstatuses/etcd-0", None);
    assert_eq!(code, 200, "{one}");
    assert_eq!(
        (one["kind"].as_str(), one["metadata"]["name"].as_str()),
        (Some("ComponentStatus"), Some("etcd-0"))
    );
    let (code, missing) = call(&mut k, "GET", "/api/v1/componentstatuses/nope", None);
    assert_eq!(
        (code, missing["message"].as_str()),
        (500, Some("Component not found: nope")),
        "{missing}"
    );
    let (code, _) = call(
        &mut k,
        "GET",
        "/api/v1/componentstatuses?fieldSelector=metadata.name%3Dscheduler",
        None,
    );
    assert_eq!(code, 200);
    let (_, sel) = call(
        &mut k,
        "GET",
        "/api/v1/componentstatuses?fieldSelector=metadata.name%3Dscheduler",
        None,
    );
    assert_eq!(sel["items"].as_array().map(|i| i.len()), Some(1), "{sel}");

    let out = c.kubectl(&["get", "componentstatuses"]);
    let stdout = out_ok(&out, "kubectl get componentstatuses");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Warning: v1 ComponentStatus is deprecated in v1.19+"),
        "{stderr}"
    );
    let lines: Vec<Vec<&str>> = stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines[0],
        vec!["NAME", "STATUS", "MESSAGE", "ERROR"],
        "{stdout}"
    );
    let mut rows: Vec<Vec<&str>> = lines[1..].to_vec();
    rows.sort();
    assert_eq!(
        rows,
        vec![
            vec!["controller-manager", "Healthy", "ok"],
            vec!["etcd-0", "Healthy", "ok"],
            vec!["scheduler", "Healthy", "ok"]
        ],
        "{stdout}"
    );

    // A scheduler Lease nobody renews: the scheduler is reported unhealthy. (The real
    // scheduler takes the Lease back within seconds, so look right after the write.)
    let stale = json!({"spec": {"holderIdentity": "gone", "renewTime": "2020-01-01T00:00:00.000000Z", "leaseDurationSeconds": 15}});
    let mut seen = None;
    for _ in 0..5 {
        let (code, l) = patch(
            &mut k,
            "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/kube-scheduler",
            "application/merge-patch+json",
            &stale,
        );
        assert_eq!(code, 200, "{l}");
        let (_, s) = call(&mut k, "GET", "/api/v1/componentstatuses/scheduler", None);
        if s["conditions"][0]["status"] == "False" {
            seen = Some(s);
            break;
        }
    }
    let s = seen.expect("scheduler reported unhealthy while its Lease was stale");
    assert_eq!(s["conditions"][0]["type"], "Healthy");
    assert!(
        s["conditions"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("kube-scheduler")),
        "{s}"
    );
}

/// item 14: `PUT namespaces/{name}/finalize` replaces `spec.finalizers` (how users
/// clear a namespace stuck in Terminating); the main resource cannot change them.
#[test]
fn namespace_finalize_is_served() {
    let c = Cluster::start();
    let mut k = conn(&c);
    let (code, ns) = call(
        &mut k,
        "POST",
        "/api/v1/namespaces",
        Some(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "stuck"}})),
    );
    assert_eq!(code, 201, "{ns}");
    assert_eq!(ns["spec"]["finalizers"], json!(["kubernetes"]));
    // A PUT of the namespace itself does not change spec.finalizers (upstream's strategy).
    let mut edited = ns.clone();
    edited["spec"]["finalizers"] = json!([]);
    edited["metadata"]["labels"]["x"] = json!("y");
    let (code, e) = call(&mut k, "PUT", "/api/v1/namespaces/stuck", Some(&edited));
    assert_eq!(code, 200, "{e}");
    assert_eq!(e["spec"]["finalizers"], json!(["kubernetes"]), "{e}");
    assert_eq!(e["metadata"]["labels"]["x"], "y");
    // finalize: adds a finalizer of the user's; status stays as stored.
    let mut f = e.clone();
    f["spec"]["finalizers"] = json!(["kubernetes", "example.com/hold"]);
    f["status"]["phase"] = json!("Terminating");
    let (code, r) = call(&mut k, "PUT", "/api/v1/namespaces/stuck/finalize", Some(&f));
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["kind"], "Namespace");
    assert_eq!(
        r["spec"]["finalizers"],
        json!(["kubernetes", "example.com/hold"]),
        "{r}"
    );
    assert_eq!(r["status"]["phase"], "Active", "{r}");
    // An invalid finalizer name is 422, as upstream.
    let mut bad = r.clone();
    bad["spec"]["finalizers"] = json!(["not a name"]);
    let (code, b) = call(
        &mut k,
        "PUT",
        "/api/v1/namespaces/stuck/finalize",
        Some(&bad),
    );
    assert_eq!(code, 422, "{b}");
    // Other verbs are not allowed on finalize.
    let (code, _) = call(&mut k, "GET", "/api/v1/namespaces/stuck/finalize", None);
    assert_eq!(code, 405);

    // Delete: the namespace stays Terminating while a finalizer the system does not know
    // holds it; finalize with an empty list (what users do with kubectl replace --raw)
    // removes it at once.
    out_ok(
        &c.kubectl(&["delete", "namespace", "stuck", "--wait=false"]),
        "delete namespace",
    );
    let terminating = wait_for(
        "namespace emptied but held",
        Duration::from_secs(20),
        || {
            let (_, n) = call(&mut k, "GET", "/api/v1/namespaces/stuck", None);
            (n["status"]["phase"] == "Terminating"
                && n["spec"]["finalizers"] == json!(["example.com/hold"]))
            .then_some(n)
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    let (_, still) = call(&mut k, "GET", "/api/v1/namespaces/stuck", None);
    assert_eq!(still["status"]["phase"], "Terminating", "{still}");
    assert_eq!(
        still["spec"]["finalizers"],
        terminating["spec"]["finalizers"]
    );
    assert_eq!(
        still["metadata"]["resourceVersion"], terminating["metadata"]["resourceVersion"],
        "a held namespace is not rewritten"
    );
    let mut clear = still.clone();
    clear["spec"]["finalizers"] = json!([]);
    let body = serde_json::to_string(&clear).expect("json");
    let out = c.kubectl_with(
        &kubectl_bin(),
        &[
            "replace",
            "--raw",
            "/api/v1/namespaces/stuck/finalize",
            "-f",
            "-",
        ],
        Some(&body),
    );
    let printed = out_ok(&out, "kubectl replace --raw .../finalize");
    let printed: Value = serde_json::from_str(&printed).expect("json answer");
    assert_eq!(printed["metadata"]["name"], "stuck", "{printed}");
    let (code, gone) = call(&mut k, "GET", "/api/v1/namespaces/stuck", None);
    assert_eq!(code, 404, "{gone}");
    // Finalize of a missing namespace is 404.
    let (code, _) = call(
        &mut k,
        "PUT",
        "/api/v1/namespaces/stuck/finalize",
        Some(&clear),
    );
    assert_eq!(code, 404);
}

fn pod(name: &str, resources: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": "r"}}, "spec": {"containers": [
        {"name": "c", "image": "busybox:1", "resources": resources}]}})
}

/// item 14: `pods/{name}/resize` (GET, PATCH, PUT): container resources change, other
/// changes are dropped, and resizes upstream refuses are 422 with its messages.
#[test]
fn pod_resize_is_served() {
    let c = Cluster::start();
    let mut k = conn(&c);
    let burstable = json!({"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "200m", "memory": "128Mi"}});
    let (code, p) = call(
        &mut k,
        "POST",
        "/api/v1/namespaces/default/pods",
        Some(&pod("rz", burstable)),
    );
    assert_eq!(code, 201, "{p}");
    let (code, got) = call(
        &mut k,
        "GET",
        "/api/v1/namespaces/default/pods/rz/resize",
        None,
    );
    assert_eq!(code, 200, "{got}");
    assert_eq!(
        (got["kind"].as_str(), got["metadata"]["name"].as_str()),
        (Some("Pod"), Some("rz"))
    );

    // kubectl patch --subresource resize (strategic merge patch).
    let out = c.kubectl(&["patch", "pod", "rz", "--subresource", "resize", "-p", r#"{"spec":{"containers":[{"name":"c","resources":{"requests":{"cpu":"150m"},"limits":{"cpu":"300m"}}}]}}"#]);
    out_ok(&out, "kubectl patch --subresource resize");
    let (_, now) = call(&mut k, "GET", "/api/v1/namespaces/default/pods/rz", None);
    assert_eq!(
        now["spec"]["containers"][0]["resources"]["requests"]["cpu"], "150m",
        "{now}"
    );
    assert_eq!(
        now["spec"]["containers"][0]["resources"]["limits"]["cpu"], "300m",
        "{now}"
    );
    assert_eq!(now["status"]["qosClass"], "Burstable");

    // Changes outside container resources are dropped, not stored.
    let (code, r) = patch(
        &mut k,
        "/api/v1/namespaces/default/pods/rz/resize",
        "application/strategic-merge-patch+json",
        &json!({"metadata": {"labels": {"app": "changed"}}, "spec": {"activeDeadlineSeconds": 5, "containers": [{"name": "c", "image": "busybox:2", "resources": {"requests": {"memory": "96Mi"}}}]}}),
    );
    assert_eq!(code, 200, "{r}");
    assert_eq!(
        r["spec"]["containers"][0]["resources"]["requests"]["memory"], "96Mi",
        "{r}"
    );
    assert_eq!(r["spec"]["containers"][0]["image"], "busybox:1", "{r}");
    assert_eq!(r["metadata"]["labels"]["app"], "r", "{r}");
    assert!(r["spec"].get("activeDeadlineSeconds").is_none(), "{r}");

    // PUT of the whole pod: a higher memory limit.
    let mut put = r.clone();
    put["spec"]["containers"][0]["resources"]["limits"]["memory"] = json!("256Mi");
    let (code, u) = call(
        &mut k,
        "PUT",
        "/api/v1/namespaces/default/pods/rz/resize",
        Some(&put),
    );
    assert_eq!(code, 200, "{u}");
    assert_eq!(
        u["spec"]["containers"][0]["resources"]["limits"]["memory"],
        "256Mi"
    );
    // The resize policy is not changed through resize (1.33).
    let mut policy = u.clone();
    policy["spec"]["containers"][0]["resizePolicy"] =
        json!([{"resourceName": "memory", "restartPolicy": "RestartContainer"}]);
    let (code, e) = call(
        &mut k,
        "PUT",
        "/api/v1/namespaces/default/pods/rz/resize",
        Some(&policy),
    );
    assert_eq!(code, 422, "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap_or("")
            .contains("spec: Forbidden: only cpu and memory resources are mutable"),
        "{e}"
    );

    // Refused as upstream refuses them.
    let refused = |k: &mut Conn, body: Value, want: &str| {
        let (code, e) = patch(
            k,
            "/api/v1/namespaces/default/pods/rz/resize",
            "application/strategic-merge-patch+json",
            &body,
        );
        assert_eq!(code, 422, "{body}: {e}");
        assert_eq!(e["reason"], "Invalid", "{e}");
        let msg = e["message"].as_str().unwrap_or("");
        assert!(msg.starts_with("Pod \"rz\" is invalid: "), "{msg}");
        assert!(msg.contains(want), "{body}: {msg}");
    };
    refused(
        &mut k,
        json!({"spec": {"containers": [{"name": "c", "resources": {"limits": {"ephemeral-storage": "1Gi"}}}]}}),
        "spec: Forbidden: only cpu and memory resources are mutable",
    );
    refused(
        &mut k,
        json!({"spec": {"containers": [{"name": "c", "resources": {"limits": {"cpu": null}}}]}}),
        "resource limits cannot be removed",
    );
    refused(
        &mut k,
        json!({"spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "300m", "memory": "256Mi"}}}]}}),
        "spec: Invalid value: \"Burstable\": Pod QOS Class may not change as a result of resizing",
    );
    refused(
        &mut k,
        json!({"spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "500m"}}}]}}),
        "must be less than or equal to cpu limit",
    );
    refused(
        &mut k,
        json!({"spec": {"containers": [{"name": "c", "resizePolicy": [{"resourceName": "memory", "restartPolicy": "NotRequired"}], "resources": {"limits": {"memory": "200Mi"}}}]}}),
        "memory limits cannot be decreased unless resizePolicy is RestartContainer",
    );
    let (code, _) = call(
        &mut k,
        "POST",
        "/api/v1/namespaces/default/pods/rz/resize",
        Some(&put),
    );
    assert_eq!(code, 405);

    // A BestEffort pod cannot get requests (its QoS class would change).
    let (code, _) = call(
        &mut k,
        "POST",
        "/api/v1/namespaces/default/pods",
        Some(&pod("be", json!({}))),
    );
    assert_eq!(code, 201);
    let (code, e) = patch(
        &mut k,
        "/api/v1/namespaces/default/pods/be/resize",
        "application/strategic-merge-patch+json",
        &json!({"spec": {"containers": [{"name": "c", "resources": {"requests": {"memory": "40Mi"}}}]}}),
    );
    assert_eq!(code, 422, "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap_or("")
            .contains("Pod QOS Class may not change as a result of resizing"),
        "{e}"
    );
    let (code, _) = call(
        &mut k,
        "GET",
        "/api/v1/namespaces/default/pods/missing/resize",
        None,
    );
    assert_eq!(code, 404);

    // Requests cannot be removed (with limits, defaulting would put them back from the
    // limits, as upstream's: so a pod with requests only).
    let (code, _) = call(
        &mut k,
        "POST",
        "/api/v1/namespaces/default/pods",
        Some(&pod(
            "req",
            json!({"requests": {"cpu": "100m", "memory": "64Mi"}}),
        )),
    );
    assert_eq!(code, 201);
    let (code, e) = patch(
        &mut k,
        "/api/v1/namespaces/default/pods/req/resize",
        "application/strategic-merge-patch+json",
        &json!({"spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": null}}}]}}),
    );
    assert_eq!(code, 422, "{e}");
    assert_eq!(e["message"], "Pod \"req\" is invalid: spec.containers[0].resources.requests: Forbidden: resource requests cannot be removed", "{e}");
    assert_eq!(
        e["details"]["causes"][0]["reason"], "FieldValueForbidden",
        "{e}"
    );
}

/// item 14: every subresource discovery advertises answers (no 503 "not served"):
/// each is asked once with a verb it lists.
#[test]
fn every_advertised_subresource_is_served() {
    let c = Cluster::start();
    let mut k = conn(&c);
    let mut unserved = Vec::new();
    let (_, groups) = call(&mut k, "GET", "/apis", None);
    let mut versions = vec!["/api/v1".to_string()];
    for g in groups["groups"].as_array().expect("groups") {
        for v in g["versions"].as_array().expect("versions") {
            versions.push(format!(
                "/apis/{}",
                v["groupVersion"].as_str().unwrap_or("")
            ));
        }
    }
    let mut checked = 0;
    for gv in versions {
        let (_, list) = call(&mut k, "GET", &gv, None);
        for r in list["resources"].as_array().cloned().unwrap_or_default() {
            let name = r["name"].as_str().unwrap_or("");
            let Some((plural, sub)) = name.split_once('/') else {
                continue;
            };
            let namespaced = r["namespaced"] == true;
            let base = if namespaced {
                format!("{gv}/namespaces/default/{plural}/x/{sub}")
            } else {
                format!("{gv}/{plural}/x/{sub}")
            };
            let verbs: Vec<String> = r["verbs"]
                .as_array()
                .map(|v| {
                    v.iter()
                        .filter_map(|x| x.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            for verb in verbs {
                let method = match verb.as_str() {
                    "get" => "GET",
                    "create" => "POST",
                    "update" => "PUT",
                    "patch" => "PATCH",
                    "delete" => "DELETE",
                    other => panic!("unexpected verb {other} on {name}"),
                };
                let (code, body) = if method == "PATCH" {
                    patch(&mut k, &base, "application/merge-patch+json", &json!({}))
                } else {
                    call(&mut k, method, &base, Some(&json!({})))
                };
                checked += 1;
                if code == 503 || code == 405 {
                    unserved.push(format!("{method} {base}: {code} {body}"));
                }
            }
        }
    }
    assert!(checked >= 20, "only {checked} subresources checked");
    assert!(
        unserved.is_empty(),
        "advertised but not served:\n{}",
        unserved.join("\n")
    );
}

/// item 14: the proxy subresources resolve their targets as upstream and answer with
/// its errors when there is nothing to reach (forwarding itself is unit-tested: these
/// clusters run no pods).
#[test]
fn proxy_subresources_resolve_targets_as_upstream() {
    let c = Cluster::start();
    let mut k = conn(&c);
    let (code, _) = call(
        &mut k,
        "POST",
        "/api/v1/namespaces/default/pods",
        Some(&pod("np", json!({}))),
    );
    assert_eq!(code, 201);
    for method in ["GET", "POST", "PUT", "DELETE"] {
        let (code, e) = call(
            &mut k,
            method,
            "/api/v1/namespaces/default/pods/np:8080/proxy/healthz",
            Some(&json!({})),
        );
        assert_eq!(
            (code, e["message"].as_str()),
            (400, Some("address not allowed")),
            "{method}: {e}"
        );
    }
    let (code, e) = call(
        &mut k,
        "GET",
        "/api/v1/namespaces/default/pods/nope/proxy/",
        None,
    );
    assert_eq!(code, 404, "{e}");
    let (code, e) = call(
        &mut k,
        "GET",
        "/api/v1/namespaces/default/pods/a:b:c:d/proxy/",
        None,
    );
    assert_eq!(
        (code, e["message"].as_str()),
        (400, Some("invalid pod request \"a:b:c:d\"")),
        "{e}"
    );

    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}, "spec": {"selector": {"app": "none"}, "ports": [{"name": "http", "port": 80}]}});
    let (code, _) = call(
        &mut k,
        "POST",
        "/api/v1/namespaces/default/services",
        Some(&svc),
    );
    assert_eq!(code, 201);
    let e = wait_for("the Service's Endpoints", Duration::from_secs(20), || {
        let (code, e) = call(
            &mut k,
            "GET",
            "/api/v1/namespaces/default/services/web/proxy/",
            None,
        );
        (code == 503).then_some(e)
    });
    assert_eq!(
        e["message"], "no endpoints available for service \"web\"",
        "{e}"
    );
    assert_eq!(e["reason"], "ServiceUnavailable");
    let (code, e) = call(
        &mut k,
        "PATCH",
        "/api/v1/namespaces/default/services/web:99/proxy/x",
        Some(&json!({})),
    );
    assert_eq!(
        (code, e["message"].as_str()),
        (503, Some("no service port 99 found for service \"web\"")),
        "{e}"
    );
    let (code, e) = call(
        &mut k,
        "GET",
        "/api/v1/namespaces/default/services/http:web:http/proxy/",
        None,
    );
    assert_eq!(
        (code, e["message"].as_str()),
        (503, Some("no endpoints available for service \"web\"")),
        "{e}"
    );
    let (code, _) = call(&mut k, "DELETE", "/api/v1/nodes/nope/proxy/pods", None);
    assert_eq!(code, 404);
    // Verbs a subresource does not list are refused (no DELETE of a status).
    let (code, _) = call(
        &mut k,
        "DELETE",
        "/api/v1/namespaces/default/pods/np/status",
        None,
    );
    assert_eq!(code, 405);
    let (code, _) = call(&mut k, "GET", "/api/v1/namespaces/default/pods/np", None);
    assert_eq!(code, 200, "the pod is still there");
}
