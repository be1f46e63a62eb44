use super::*;
use crate::FieldMeta;
use serde_json::json;
use std::collections::HashMap;

/// A slice of the Kubernetes schema: Deployment down to containers.
struct TestSchema(HashMap<(&'static str, &'static str), FieldMeta>);

fn obj(t: &str) -> FieldMeta {
    FieldMeta {
        type_name: Some(t.to_string()),
        ..FieldMeta::default()
    }
}
fn map_of() -> FieldMeta {
    FieldMeta {
        is_map: true,
        ..FieldMeta::default()
    }
}
fn list(t: Option<&str>, key: Option<&str>, strategy: &[&str]) -> FieldMeta {
    FieldMeta {
        type_name: t.map(str::to_string),
        is_list: true,
        patch_strategy: strategy.iter().map(|s| s.to_string()).collect(),
        merge_key: key.map(str::to_string),
        ..FieldMeta::default()
    }
}

impl TestSchema {
    fn new() -> Self {
        let mut m = HashMap::new();
        m.insert(("Deployment", "metadata"), obj("ObjectMeta"));
        m.insert(("Deployment", "spec"), obj("DeploymentSpec"));
        m.insert(("ObjectMeta", "labels"), map_of());
        m.insert(("ObjectMeta", "annotations"), map_of());
        m.insert(("ObjectMeta", "finalizers"), list(None, None, &["merge"]));
        m.insert(("DeploymentSpec", "template"), obj("PodTemplateSpec"));
        m.insert(("DeploymentSpec", "selector"), obj("LabelSelector"));
        m.insert(("LabelSelector", "matchLabels"), map_of());
        m.insert(("PodTemplateSpec", "metadata"), obj("ObjectMeta"));
        m.insert(("PodTemplateSpec", "spec"), obj("PodSpec"));
        m.insert(
            ("PodSpec", "containers"),
            list(Some("Container"), Some("name"), &["merge"]),
        );
        m.insert(
            ("PodSpec", "tolerations"),
            list(Some("Toleration"), None, &[]),
        );
        m.insert(
            ("Container", "ports"),
            list(Some("ContainerPort"), Some("containerPort"), &["merge"]),
        );
        m.insert(("Container", "args"), list(None, None, &[]));
        TestSchema(m)
    }
}

impl PatchSchema for TestSchema {
    fn field(&self, type_name: &str, field: &str) -> Option<FieldMeta> {
        self.0.get(&(type_name, field)).cloned()
    }
}

impl ApplySchema for TestSchema {
    fn map_type(&self, type_name: &str, field: &str) -> MapType {
        if (type_name, field) == ("DeploymentSpec", "selector") {
            MapType::Atomic
        } else {
            MapType::Granular
        }
    }
}

const T1: &str = "2024-01-01T00:00:00Z";
const T2: &str = "2024-01-02T00:00:00Z";
const T3: &str = "2024-01-03T00:00:00Z";

fn apply(
    live: Option<&Value>,
    cfg: &Value,
    manager: &str,
    force: bool,
    now: &str,
) -> Result<Value, ApplyError> {
    server_side_apply(
        live,
        cfg,
        manager,
        force,
        &TestSchema::new(),
        "Deployment",
        now,
        "apps/v1",
        None,
    )
}

fn update(old: Option<&Value>, new: &mut Value, manager: &str, now: &str) {
    track_update(
        old,
        new,
        manager,
        &TestSchema::new(),
        "Deployment",
        now,
        "apps/v1",
        None,
    )
}

fn deploy(replicas: i64) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "d", "labels": {"app": "web"}},
        "spec": {"replicas": replicas}
    })
}

fn entry(obj: &Value, manager: &str) -> Option<ManagedFieldsEntry> {
    parse_managed_fields(obj)
        .unwrap()
        .into_iter()
        .find(|e| e.manager == manager)
}

fn f(s: &str) -> PathElement {
    PathElement::Field(s.to_string())
}

fn with_containers(names: &[(&str, &str)]) -> Value {
    let cs: Vec<Value> = names
        .iter()
        .map(|(n, i)| json!({"name": n, "image": i}))
        .collect();
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
        "spec": {"template": {"spec": {"containers": cs}}}
    })
}

fn container_names(obj: &Value) -> Vec<String> {
    obj["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn apply_create_records_an_apply_entry() {
    let out = apply(None, &deploy(1), "kubectl", false, T1).unwrap();
    assert_eq!(out["spec"]["replicas"], json!(1));
    assert_eq!(out["metadata"]["labels"], json!({"app": "web"}));
    assert_eq!(
        out["metadata"]["managedFields"],
        json!([{
            "manager": "kubectl",
            "operation": "Apply",
            "apiVersion": "apps/v1",
            "time": T1,
            "fieldsType": "FieldsV1",
            "fieldsV1": {"f:metadata": {"f:labels": {"f:app": {}}}, "f:spec": {"f:replicas": {}}}
        }])
    );
    let text = serde_json::to_string(&out["metadata"]["managedFields"][0]["fieldsV1"]).unwrap();
    assert_eq!(
        text,
        r#"{"f:metadata":{"f:labels":{"f:app":{}}},"f:spec":{"f:replicas":{}}}"#
    );
}

#[test]
fn reapplying_the_same_configuration_is_a_no_op() {
    let first = apply(None, &deploy(1), "kubectl", false, T1).unwrap();
    let second = apply(Some(&first), &deploy(1), "kubectl", false, T2).unwrap();
    assert_eq!(second, first);
    assert_eq!(entry(&second, "kubectl").unwrap().time.as_deref(), Some(T1));
}

#[test]
fn disagreeing_managers_conflict_with_upstream_message() {
    let live = apply(None, &deploy(1), "a", false, T1).unwrap();
    let err = apply(Some(&live), &deploy(3), "b", false, T2).unwrap_err();
    let ApplyError::Conflicts(cs) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(cs.len(), 1);
    assert_eq!(cs[0].manager, "a");
    assert_eq!(cs[0].field, ".spec.replicas");
    assert_eq!(
        err.to_string(),
        r#"Apply failed with 1 conflict: conflict with "a": .spec.replicas"#
    );
    assert_eq!(cs[0].cause_message(), r#"conflict with "a""#);
    assert_eq!(err.status_code(), 409);
}

#[test]
fn conflict_with_an_update_manager_names_its_api_version() {
    let mut created = deploy(1);
    update(None, &mut created, "kubectl-client-side-apply", T1);
    let err = apply(Some(&created), &deploy(2), "kubectl", false, T2).unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"Apply failed with 1 conflict: conflict with "kubectl-client-side-apply" using apps/v1: .spec.replicas"#
    );
}

#[test]
fn plural_conflict_message_groups_by_manager() {
    let c = |m: &str, f: &str| Conflict {
        manager: m.into(),
        operation: "Apply".into(),
        api_version: "v1".into(),
        subresource: None,
        field: f.into(),
    };
    assert_eq!(
        conflict_message(&[c("m2", ".spec.c"), c("m1", ".spec.a"), c("m1", ".spec.b")]),
        "Apply failed with 3 conflicts: conflicts with \"m1\":\n- .spec.a\n- .spec.b\nconflicts with \"m2\":\n- .spec.c"
    );
    let mut sub = c("m", ".status.x");
    sub.subresource = Some("status".into());
    sub.operation = "Update".into();
    assert_eq!(
        sub.manager_description(),
        r#""m" with subresource "status" using v1"#
    );
}

#[test]
fn force_takes_ownership() {
    let live = apply(None, &deploy(1), "a", false, T1).unwrap();
    let out = apply(Some(&live), &deploy(3), "b", true, T2).unwrap();
    assert_eq!(out["spec"]["replicas"], json!(3));
    let a = entry(&out, "a").unwrap();
    let b = entry(&out, "b").unwrap();
    assert!(!a.fields.contains(&[f("spec"), f("replicas")]));
    assert!(a.fields.contains(&[f("metadata"), f("labels"), f("app")]));
    assert!(b.fields.contains(&[f("spec"), f("replicas")]));
    assert_eq!(b.time.as_deref(), Some(T2));
}

#[test]
fn same_value_is_shared_without_conflict() {
    let live = apply(None, &deploy(1), "a", false, T1).unwrap();
    let out = apply(Some(&live), &deploy(1), "b", false, T2).unwrap();
    assert!(entry(&out, "a")
        .unwrap()
        .fields
        .contains(&[f("spec"), f("replicas")]));
    let b = entry(&out, "b").unwrap();
    assert!(b.fields.contains(&[f("spec"), f("replicas")]));
    // Nothing changed: upstream records no time for the new applier.
    assert_eq!(b.time, None);
}

#[test]
fn list_map_items_merge_by_key_and_prune_per_manager() {
    let live = apply(None, &with_containers(&[("a", "img-a")]), "A", false, T1).unwrap();
    let live = apply(
        Some(&live),
        &with_containers(&[("b", "img-b")]),
        "B",
        false,
        T2,
    )
    .unwrap();
    assert_eq!(container_names(&live), vec!["a", "b"]);
    let fv1 = serde_json::to_string(&entry(&live, "B").unwrap().fields.to_fields_v1()).unwrap();
    assert_eq!(
        fv1,
        r#"{"f:spec":{"f:template":{"f:spec":{"f:containers":{"k:{\"name\":\"b\"}":{"f:image":{},"f:name":{},".":{}}}}}}}"#
    );
    // A re-applies without its container: it goes, B's stays.
    let cfg = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {"replicas": 2}});
    let out = apply(Some(&live), &cfg, "A", false, T3).unwrap();
    assert_eq!(container_names(&out), vec!["b"]);
    assert_eq!(out["spec"]["replicas"], json!(2));
}

#[test]
fn prune_keeps_fields_another_manager_owns() {
    let live = apply(None, &deploy(1), "a", false, T1).unwrap();
    let live = apply(Some(&live), &deploy(1), "b", false, T2).unwrap();
    let cfg = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}});
    let out = apply(Some(&live), &cfg, "a", false, T3).unwrap();
    assert_eq!(out["spec"]["replicas"], json!(1));
    assert_eq!(out["metadata"]["labels"], json!({"app": "web"}));
    assert!(entry(&out, "a").is_none());
    // Now b drops them: nobody owns them any more and they go.
    let out = apply(Some(&out), &cfg, "b", false, T3).unwrap();
    assert!(out.get("spec").is_none());
    assert!(out["metadata"].get("labels").is_none());
}

#[test]
fn set_lists_union_values_of_managers() {
    let cfg = |fz: &[&str]| json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "finalizers": fz}});
    let live = apply(None, &cfg(&["x"]), "A", false, T1).unwrap();
    let live = apply(Some(&live), &cfg(&["y"]), "B", false, T2).unwrap();
    assert_eq!(live["metadata"]["finalizers"], json!(["x", "y"]));
    let fv1 = serde_json::to_string(&entry(&live, "B").unwrap().fields.to_fields_v1()).unwrap();
    assert_eq!(fv1, r#"{"f:metadata":{"f:finalizers":{"v:\"y\"":{}}}}"#);
    let out = apply(Some(&live), &cfg(&[]), "A", false, T3).unwrap();
    assert_eq!(out["metadata"]["finalizers"], json!(["y"]));
}

#[test]
fn atomic_lists_and_maps_are_replaced_and_owned_whole() {
    let cfg = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
        "spec": {"selector": {"matchLabels": {"app": "web"}},
                 "template": {"spec": {"tolerations": [{"key": "k"}]}}}});
    let live = apply(None, &cfg, "A", false, T1).unwrap();
    let e = entry(&live, "A").unwrap();
    assert!(e.fields.contains(&[f("spec"), f("selector")]));
    assert!(e
        .fields
        .contains(&[f("spec"), f("template"), f("spec"), f("tolerations")]));
    let cfg2 = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
        "spec": {"selector": {"matchLabels": {"tier": "x"}}}});
    let err = apply(Some(&live), &cfg2, "B", false, T2).unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"Apply failed with 1 conflict: conflict with "A": .spec.selector"#
    );
    let out = apply(Some(&live), &cfg2, "B", true, T2).unwrap();
    assert_eq!(
        out["spec"]["selector"],
        json!({"matchLabels": {"tier": "x"}})
    );
}

#[test]
fn update_takes_changed_fields_from_an_applier() {
    let live = apply(None, &deploy(1), "A", false, T1).unwrap();
    let mut new = live.clone();
    new["spec"]["replicas"] = json!(5);
    update(Some(&live), &mut new, "kubectl-scale", T2);
    let scale = entry(&new, "kubectl-scale").unwrap();
    assert_eq!(scale.operation, "Update");
    assert_eq!(scale.time.as_deref(), Some(T2));
    assert_eq!(
        serde_json::to_string(&scale.fields.to_fields_v1()).unwrap(),
        r#"{"f:spec":{"f:replicas":{}}}"#
    );
    assert!(!entry(&new, "A")
        .unwrap()
        .fields
        .contains(&[f("spec"), f("replicas")]));
    // Entries are sorted: Apply before Update.
    assert_eq!(new["metadata"]["managedFields"][0]["manager"], json!("A"));
    // A re-applying its old replicas now conflicts with the updater.
    let err = apply(Some(&new), &deploy(1), "A", false, T3).unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"Apply failed with 1 conflict: conflict with "kubectl-scale" using apps/v1: .spec.replicas"#
    );
}

#[test]
fn update_records_added_maps_and_items_with_dot() {
    let mut created = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "labels": {"app": "web"}},
        "spec": {"template": {"spec": {"containers": [{"name": "web", "image": "nginx"}]}}}});
    update(None, &mut created, "kubectl-create", T1);
    let e = entry(&created, "kubectl-create").unwrap();
    assert_eq!(
        serde_json::to_string(&e.fields.to_fields_v1()).unwrap(),
        r#"{"f:metadata":{"f:labels":{"f:app":{},".":{}}},"f:spec":{"f:template":{"f:spec":{"f:containers":{"k:{\"name\":\"web\"}":{"f:image":{},"f:name":{},".":{}},".":{}}}}}}"#
    );
    // An update that changes nothing tracked keeps the entry and its time.
    let mut same = created.clone();
    same["metadata"]["resourceVersion"] = json!("7");
    update(Some(&created), &mut same, "kubectl-create", T2);
    assert_eq!(
        entry(&same, "kubectl-create").unwrap().time.as_deref(),
        Some(T1)
    );
    // Removing a field drops it from its owner.
    let mut removed = created.clone();
    removed["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("labels");
    update(Some(&created), &mut removed, "editor", T2);
    let e = entry(&removed, "kubectl-create").unwrap();
    assert!(!e.fields.contains(&[f("metadata"), f("labels"), f("app")]));
    assert!(entry(&removed, "editor").is_none());
}

#[test]
fn untracked_objects_start_with_before_first_apply() {
    let live = deploy(1);
    // Updates of an untracked object stay untracked.
    let mut updated = deploy(2);
    update(Some(&live), &mut updated, "m", T1);
    assert!(updated["metadata"].get("managedFields").is_none());
    let err = apply(Some(&live), &deploy(4), "kubectl", false, T2).unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"Apply failed with 1 conflict: conflict with "before-first-apply" using apps/v1: .spec.replicas"#
    );
}

#[test]
fn managed_fields_round_trip_and_reset() {
    let live = apply(None, &deploy(1), "A", false, T1).unwrap();
    let entries = parse_managed_fields(&live).unwrap();
    let mut copy = live.clone();
    set_managed_fields(&mut copy, entries);
    assert_eq!(
        copy["metadata"]["managedFields"],
        live["metadata"]["managedFields"]
    );
    // A client sending `managedFields: []` resets tracking.
    let mut new = live.clone();
    new["metadata"]["managedFields"] = json!([]);
    new["spec"]["replicas"] = json!(2);
    update(Some(&live), &mut new, "m", T2);
    assert!(new["metadata"].get("managedFields").is_none());
}

#[test]
fn bad_apply_requests_are_rejected() {
    let live = apply(None, &deploy(1), "A", false, T1).unwrap();
    let err = apply(Some(&live), &live, "A", false, T2).unwrap_err();
    assert_eq!(
        err,
        ApplyError::BadRequest("metadata.managedFields must be nil".into())
    );
    let mut v1 = deploy(1);
    v1["apiVersion"] = json!("apps/v1beta1");
    assert_eq!(
        apply(None, &v1, "A", false, T1).unwrap_err().status_code(),
        400
    );
    let dup = with_containers(&[("a", "x"), ("a", "y")]);
    let err = apply(None, &dup, "A", false, T1).unwrap_err();
    assert!(
        err.to_string()
            .contains(r#".spec.template.spec.containers: duplicate entries for key [name="a"]"#),
        "{err}"
    );
    let nokey = json!({"apiVersion": "apps/v1", "kind": "Deployment", "spec": {"template": {"spec": {"containers": [{"image": "x"}]}}}});
    let err = apply(None, &nokey, "A", false, T1).unwrap_err();
    assert!(
        err.to_string().contains(r#"omits key field "name""#),
        "{err}"
    );
}

#[test]
fn list_merge_keeps_live_order_and_merges_items() {
    let live = apply(
        None,
        &with_containers(&[("a", "1"), ("b", "1")]),
        "A",
        false,
        T1,
    )
    .unwrap();
    let out = apply(
        Some(&live),
        &with_containers(&[("c", "1"), ("b", "2")]),
        "B",
        true,
        T2,
    )
    .unwrap();
    assert_eq!(container_names(&out), vec!["a", "c", "b"]);
    assert_eq!(
        out["spec"]["template"]["spec"]["containers"][2]["image"],
        json!("2")
    );
    // fields_of names the items with their keys.
    let set = fields_of(
        &with_containers(&[("a", "1")]),
        &TestSchema::new(),
        "Deployment",
    );
    let key = PathElement::Key(vec![("name".into(), json!("a"))]);
    assert!(set.contains(&[f("spec"), f("template"), f("spec"), f("containers"), key]));
    // apiVersion, kind, metadata.name, the item, its name and image.
    assert_eq!(set.len(), 6);
}

#[test]
fn derived_schema_uses_patch_metadata() {
    let s = TestSchema::new();
    let d = DerivedApplySchema(&s);
    assert_eq!(
        d.list_type("PodSpec", "containers"),
        Some(ListType::Map(vec!["name".into()]))
    );
    assert_eq!(d.list_type("ObjectMeta", "finalizers"), Some(ListType::Set));
    assert_eq!(
        d.list_type("PodSpec", "tolerations"),
        Some(ListType::Atomic)
    );
    assert_eq!(d.list_type("Deployment", "spec"), None);
    assert_eq!(d.map_type("DeploymentSpec", "selector"), MapType::Granular);
}

#[test]
fn update_managers_are_capped_into_ancient_changes() {
    let mut live = deploy(0);
    update(None, &mut live, "m0", "2024-01-01T00:00:00Z");
    for i in 1..=11 {
        let mut new = live.clone();
        new["metadata"]["labels"][format!("l{i}")] = json!("x");
        update(
            Some(&live),
            &mut new,
            &format!("m{i}"),
            &format!("2024-01-01T00:00:{i:02}Z"),
        );
        live = new;
    }
    let entries = parse_managed_fields(&live).unwrap();
    assert_eq!(entries.len(), 10);
    let ancient = entries
        .iter()
        .find(|e| e.manager == ANCIENT_CHANGES)
        .unwrap();
    // m0 (replicas, app label) and m1 and m2 were merged, keeping m2's time.
    assert!(ancient.fields.contains(&[f("spec"), f("replicas")]));
    assert!(ancient
        .fields
        .contains(&[f("metadata"), f("labels"), f("l1")]));
    assert!(ancient
        .fields
        .contains(&[f("metadata"), f("labels"), f("l2")]));
    assert_eq!(ancient.time.as_deref(), Some("2024-01-01T00:00:02Z"));
    assert!(entries
        .iter()
        .all(|e| !["m0", "m1", "m2"].contains(&e.manager.as_str())));
}

#[test]
fn cached_schema_tracks_exactly_like_the_schema() {
    let schema = TestSchema::new();
    let cache = TypeCache::new();
    let cached = CachedApplySchema {
        schema: &schema,
        cache: &cache,
    };
    let mut created = with_containers(&[("web", "nginx"), ("log", "busybox")]);
    created["spec"]["selector"] = json!({"matchLabels": {"app": "web"}});
    let mut plain = created.clone();
    track_update(
        None,
        &mut plain,
        "m",
        &schema,
        "Deployment",
        T1,
        "apps/v1",
        None,
    );
    // Twice through the cache: filled on the first call, read on the second.
    for _ in 0..2 {
        let mut c = created.clone();
        track_update(
            None,
            &mut c,
            "m",
            &cached,
            "Deployment",
            T1,
            "apps/v1",
            None,
        );
        assert_eq!(c, plain);
    }
    let mut cfg = with_containers(&[("web", "nginx:2")]);
    cfg["spec"]["selector"] = json!({"matchLabels": {"app": "other"}});
    let want = server_side_apply(
        Some(&plain),
        &cfg,
        "a",
        true,
        &schema,
        "Deployment",
        T2,
        "apps/v1",
        None,
    );
    let got = server_side_apply(
        Some(&plain),
        &cfg,
        "a",
        true,
        &cached,
        "Deployment",
        T2,
        "apps/v1",
        None,
    );
    assert_eq!(got, want);
    // The atomic selector is owned whole, through the cache too.
    let e = entry(&got.unwrap(), "a").unwrap();
    assert!(e.fields.contains(&[f("spec"), f("selector")]));
    assert!(!e
        .fields
        .contains(&[f("spec"), f("selector"), f("matchLabels")]));
}

#[test]
fn update_leaves_managed_fields_out_of_the_change() {
    let live = apply(None, &deploy(1), "A", false, T1).unwrap();
    // The client sends the object back with its managedFields and a new label.
    let mut new = live.clone();
    new["metadata"]["labels"]["tier"] = json!("front");
    update(Some(&live), &mut new, "editor", T2);
    let e = entry(&new, "editor").unwrap();
    assert_eq!(
        serde_json::to_string(&e.fields.to_fields_v1()).unwrap(),
        r#"{"f:metadata":{"f:labels":{"f:tier":{}}}}"#
    );
    assert_eq!(e.time.as_deref(), Some(T2));
    // The applier keeps what it applied, and its entry is unchanged.
    assert_eq!(entry(&new, "A"), entry(&live, "A"));
    // A create that sets nothing tracked records no entry.
    let mut bare = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {}});
    update(None, &mut bare, "m", T1);
    assert!(bare["metadata"].get("managedFields").is_none());
}

#[test]
fn field_set_algebra_keeps_a_canonical_form() {
    let k = |n: &str| PathElement::Key(vec![("name".into(), json!(n))]);
    let mut a = FieldSet::new();
    a.insert(&[f("spec"), f("containers"), k("web"), f("image")]);
    a.insert(&[f("spec"), f("containers"), k("web")]);
    a.insert(&[f("spec"), f("replicas")]);
    let mut b = FieldSet::new();
    b.insert(&[f("spec"), f("replicas")]);
    b.insert(&[f("spec"), f("containers"), k("web"), f("image")]);
    // Differences that empty a level leave no trace of it.
    let d = a.difference(&b);
    assert_eq!(d.paths(), vec![vec![f("spec"), f("containers"), k("web")]]);
    let mut only_item = FieldSet::new();
    only_item.insert(&[f("spec"), f("containers"), k("web")]);
    assert_eq!(d, only_item);
    assert!(d.difference(&only_item).is_empty());
    assert_eq!(d.difference(&only_item), FieldSet::new());
    // Intersections too; unions are order-independent.
    assert_eq!(a.intersection(&b), b);
    assert_eq!(a.union(&b), b.union(&a));
    assert_eq!(a.union(&b), a);
    // Inserting in another order gives an equal set, and the same FieldsV1.
    let mut c = FieldSet::new();
    c.insert(&[f("spec"), f("replicas")]);
    c.insert(&[f("spec"), f("containers"), k("web")]);
    c.insert(&[f("spec"), f("containers"), k("web"), f("image")]);
    assert_eq!(c, a);
    assert_eq!(c.to_fields_v1(), a.to_fields_v1());
    assert_eq!(FieldSet::from_fields_v1(&a.to_fields_v1()).unwrap(), a);
    // Below a member of the other set, recursive difference removes everything.
    let mut spec = FieldSet::new();
    spec.insert(&[f("spec"), f("containers")]);
    assert_eq!(
        a.recursive_difference(&spec).paths(),
        vec![vec![f("spec"), f("replicas")]]
    );
}

/// A slice of the Service schema as the OpenAPI documents give it: ports keyed by
/// `port` and `protocol` (`x-kubernetes-list-map-keys`), `protocol` defaulting to
/// `TCP`, and object types that declare all their fields.
struct ServiceSchema;

impl PatchSchema for ServiceSchema {
    fn field(&self, type_name: &str, field: &str) -> Option<FieldMeta> {
        let scalar = FieldMeta::default();
        Some(match (type_name, field) {
            ("Service", "apiVersion" | "kind") => scalar,
            ("Service", "metadata") => obj("ObjectMeta"),
            ("Service", "spec") => obj("ServiceSpec"),
            ("ObjectMeta", "name" | "namespace") => scalar,
            ("ObjectMeta", "labels") => map_of(),
            ("ServiceSpec", "selector") => map_of(),
            ("ServiceSpec", "ports") => FieldMeta {
                list_type: Some("map".into()),
                list_map_keys: vec!["port".into(), "protocol".into()],
                ..list(Some("ServicePort"), Some("port"), &["merge"])
            },
            ("ServiceSpec", "externalIPs") => FieldMeta {
                list_type: Some("atomic".into()),
                ..list(None, None, &[])
            },
            ("ServicePort", "protocol") => FieldMeta {
                default: Some(json!("TCP")),
                ..FieldMeta::default()
            },
            ("ServicePort", "port" | "name" | "targetPort") => scalar,
            _ => return None,
        })
    }

    fn declares_all_fields(&self, type_name: &str) -> bool {
        type_name != "ObjectMeta"
    }
}

impl ApplySchema for ServiceSchema {}

fn apply_svc(live: Option<&Value>, cfg: &Value, manager: &str) -> Result<Value, ApplyError> {
    server_side_apply(
        live,
        cfg,
        manager,
        false,
        &ServiceSchema,
        "Service",
        T1,
        "v1",
        None,
    )
}

fn svc(ports: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "dns", "namespace": "kube-system"},
           "spec": {"ports": ports}})
}

#[test]
fn list_map_keys_from_the_schema_with_defaulted_key_fields() {
    // Port 53 on UDP and TCP (every DNS Service): two items, keyed by port and protocol.
    let cfg = svc(json!([
        {"name": "dns", "port": 53, "protocol": "UDP"},
        {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]));
    let live = apply_svc(None, &cfg, "A").unwrap();
    assert_eq!(live["spec"]["ports"], cfg["spec"]["ports"]);
    let fields = entry(&live, "A").unwrap().fields.to_fields_v1();
    let ports = &fields["f:spec"]["f:ports"];
    assert!(
        ports.get(r#"k:{"port":53,"protocol":"UDP"}"#).is_some(),
        "{ports}"
    );
    assert!(
        ports.get(r#"k:{"port":53,"protocol":"TCP"}"#).is_some(),
        "{ports}"
    );
    // A second manager applying the same items shares them; changing one conflicts on it alone.
    apply_svc(Some(&live), &cfg, "B").unwrap();
    let changed = svc(json!([
        {"name": "dns", "port": 53, "protocol": "UDP"},
        {"name": "renamed", "port": 53, "protocol": "TCP"}]));
    match apply_svc(Some(&live), &changed, "B").unwrap_err() {
        ApplyError::Conflicts(cs) => {
            let fields: Vec<&str> = cs.iter().map(|c| c.field.as_str()).collect();
            assert_eq!(fields, vec![r#".spec.ports[port=53,protocol="TCP"].name"#]);
        }
        e => panic!("{e}"),
    }
    // A key field left out takes the schema default (protocol TCP), as upstream.
    let no_proto = svc(json!([{"port": 80}, {"port": 80, "protocol": "UDP"}]));
    let out = apply_svc(None, &no_proto, "A").unwrap();
    let fields = entry(&out, "A").unwrap().fields.to_fields_v1();
    assert!(
        fields["f:spec"]["f:ports"]
            .get(r#"k:{"port":80,"protocol":"TCP"}"#)
            .is_some(),
        "{fields}"
    );
    // The item with the default and the one spelling it out are the same item.
    let dup = svc(json!([{"port": 80}, {"port": 80, "protocol": "TCP"}]));
    assert_eq!(
        apply_svc(None, &dup, "A").unwrap_err().to_string(),
        r#"failed to create typed patch object (kube-system/dns; /v1, Kind=Service): .spec.ports: duplicate entries for key [port=80,protocol="TCP"]"#
    );
    let no_port = svc(json!([{"protocol": "UDP"}]));
    let err = apply_svc(None, &no_port, "A").unwrap_err();
    assert_eq!(err.status_code(), 500);
    assert!(err.to_string().ends_with(
        r#": .spec.ports: element 0: associative list with keys has an element that omits key field "port" (and doesn't have default value)"#
    ), "{err}");
}

#[test]
fn undeclared_fields_are_refused_as_upstream() {
    let mut cfg = svc(json!([{"port": 80, "bogus": 1}]));
    cfg["spec"][".hidden"] = json!("x");
    let err = apply_svc(None, &cfg, "A").unwrap_err();
    assert_eq!(err.status_code(), 500);
    // The walk of an object stops at its first undeclared field (`.hidden`, the fields
    // being walked in order); other objects are still checked.
    assert_eq!(
        err.to_string(),
        "failed to create typed patch object (kube-system/dns; /v1, Kind=Service): errors:\n  .spec.ports[port=80,protocol=\"TCP\"].bogus: field not declared in schema\n  .spec..hidden: field not declared in schema"
    );
    let mut top = svc(json!([]));
    top["status"] = json!({});
    top["spec"]["externalIPs"] = json!([{"x": 1}]);
    assert_eq!(
        apply_svc(None, &top, "A").unwrap_err().to_string(),
        "failed to create typed patch object (kube-system/dns; /v1, Kind=Service): .status: field not declared in schema"
    );
    // Types that do not declare all their fields (ObjectMeta here) and free-form maps
    // accept anything; nothing undeclared is ever recorded.
    let mut open = svc(json!([{"port": 80}]));
    open["metadata"]["anything"] = json!({"goes": true});
    open["spec"]["selector"] = json!({".x": "y"});
    let out = apply_svc(None, &open, "A").unwrap();
    assert_eq!(out["metadata"]["anything"], json!({"goes": true}));
    // A schema that cannot tell (the default) refuses nothing.
    let mut d = deploy(1);
    d["spec"]["whatever"] = json!(1);
    assert!(apply(None, &d, "A", false, T1).is_ok());
}

#[test]
fn list_type_from_field_meta_wins_over_patch_strategy() {
    let s = DerivedApplySchema(&ServiceSchema);
    assert_eq!(
        s.list_type("ServiceSpec", "ports"),
        Some(ListType::Map(vec!["port".into(), "protocol".into()]))
    );
    assert_eq!(
        s.list_type("ServiceSpec", "externalIPs"),
        Some(ListType::Atomic)
    );
    assert!(s.declares_all_fields("ServiceSpec"));
    let cache = TypeCache::new();
    let cached = CachedApplySchema {
        schema: &s,
        cache: &cache,
    };
    assert!(cached.declares_all_fields("Service") && !cached.declares_all_fields("ObjectMeta"));
    // `map` without keys is a set; no list type falls back to the patch strategy.
    struct Keyless;
    impl PatchSchema for Keyless {
        fn field(&self, _t: &str, f: &str) -> Option<FieldMeta> {
            Some(FieldMeta {
                list_type: (f == "a").then(|| "map".to_string()),
                ..list(None, Some("name"), &["merge"])
            })
        }
    }
    let k = DerivedApplySchema(&Keyless);
    assert_eq!(k.list_type("T", "a"), Some(ListType::Set));
    assert_eq!(
        k.list_type("T", "b"),
        Some(ListType::Map(vec!["name".into()]))
    );
}
