//! CustomResourceDefinitions end to end with kubectl.

mod common;

use std::time::{Duration, Instant};

use common::Cluster;
use serde_json::Value;

const CRD: &str = include_str!("fixtures/crontab-crd.yaml");

fn wait_served(c: &Cluster) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = c.kubectl(&["get", "crontabs"]);
        if out.status.success() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "CRD not served: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[test]
fn crd_schema_defaults_pruning_columns_explain_scale_and_cleanup() {
    let c = Cluster::start();
    c.ok_with(&common::kubectl_bin(), &["apply", "-f", "-"], Some(CRD));
    let served_at = Instant::now();
    wait_served(&c);
    eprintln!("CRD served after {:?}", served_at.elapsed());
    let crd: Value =
        serde_json::from_str(&c.ok(&["get", "crd", "crontabs.stable.example.com", "-o", "json"]))
            .expect("json");
    let conds = crd["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        conds
            .iter()
            .any(|c| c["type"] == "Established" && c["status"] == "True"),
        "{crd}"
    );
    assert!(
        conds
            .iter()
            .any(|c| c["type"] == "NamesAccepted" && c["status"] == "True"),
        "{crd}"
    );
    let res = c.ok(&["api-resources", "--api-group=stable.example.com"]);
    assert!(
        res.contains("crontabs") && res.contains(" ct ") && res.contains("CronTab"),
        "{res}"
    );

    // Valid object: defaults appear; with --validate=false unknown fields are pruned.
    let good = "apiVersion: stable.example.com/v1\nkind: CronTab\nmetadata:\n  name: good\nspec:\n  cronSpec: \"* * * * */5\"\n  image: my-image\n  bogus: 1\n";
    let strict = c.fails(&["apply", "-f", "-"], Some(good));
    assert!(
        strict.contains("strict decoding error: unknown field \"spec.bogus\""),
        "{strict}"
    );
    c.ok_with(
        &common::kubectl_bin(),
        &["apply", "--validate=false", "-f", "-"],
        Some(good),
    );
    let obj: Value =
        serde_json::from_str(&c.ok(&["get", "ct", "good", "-o", "json"])).expect("json");
    assert_eq!(obj["spec"]["replicas"], 1, "default applied: {obj}");
    assert!(obj["spec"].get("bogus").is_none(), "pruned: {obj}");

    // Invalid object: 422 naming the fields, nothing stored.
    let bad = "apiVersion: stable.example.com/v1\nkind: CronTab\nmetadata:\n  name: bad\nspec:\n  cronSpec: \"xx\"\n  replicas: 20\n";
    let err = c.fails(&["apply", "-f", "-"], Some(bad));
    assert!(err.contains("The CronTab \"bad\" is invalid"), "{err}");
    assert!(err.contains("spec.replicas: Invalid value: 20: spec.replicas in body should be less than or equal to 10"), "{err}");
    assert!(
        err.contains("spec.cronSpec: Invalid value: \"xx\""),
        "{err}"
    );
    assert!(!c.kubectl(&["get", "ct", "bad"]).status.success());

    // Printer columns, explain, scale.
    let table = c.ok(&["get", "crontabs"]);
    let header = table.lines().next().unwrap_or_default();
    assert!(
        header.starts_with("NAME")
            && header.contains("SPEC")
            && header.contains("REPLICAS")
            && header.contains("AGE"),
        "{table}"
    );
    assert!(table.contains("* * * * */5"), "{table}");
    let explain = c.ok(&["explain", "crontab.spec"]);
    assert!(
        explain.contains("cronSpec") && explain.contains("The cron schedule of the job."),
        "{explain}"
    );
    c.ok(&["scale", "crontab", "good", "--replicas=3"]);
    let r = c.ok(&["get", "ct", "good", "-o", "jsonpath={.spec.replicas}"]);
    assert_eq!(r, "3");

    // Deleting the CRD deletes its objects and stops serving it.
    c.ok(&[
        "delete",
        "crd",
        "crontabs.stable.example.com",
        "--timeout=30s",
    ]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while c
        .kubectl(&["get", "--raw", "/apis/stable.example.com/v1"])
        .status
        .success()
    {
        assert!(Instant::now() < deadline, "CRD still served");
        std::thread::sleep(Duration::from_millis(25));
    }
    // Recreating it shows no old objects.
    c.ok_with(&common::kubectl_bin(), &["apply", "-f", "-"], Some(CRD));
    wait_served(&c);
    let left = c.ok(&["get", "crontabs", "-o", "name"]);
    assert!(left.trim().is_empty(), "{left}");
}
