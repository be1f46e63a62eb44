//! Server-side apply and managed-fields tracking (`metadata.managedFields`).
//!
//! Follows upstream's `sigs.k8s.io/structured-merge-diff` (field sets, merge,
//! conflicts) and `k8s.io/apiserver/.../fieldmanager` (the `FieldsV1` encoding,
//! one entry per manager / operation / subresource, `before-first-apply`, the
//! stripped metadata fields, the 409 conflict message):
//!
//! - [`server_side_apply`] merges a manager's applied configuration into the live
//!   object, reports [`Conflict`]s with fields other managers own (unless forced),
//!   removes fields the manager stopped specifying that nobody else owns, and
//!   records its `Apply` entry;
//! - [`track_update`] records the fields a create / update / patch changed in the
//!   manager's `Update` entry, taking them from other managers.
//!
//! Lists are atomic, sets or maps with key fields (a key field an item leaves out
//! takes its schema default) and objects granular or atomic, as an [`ApplySchema`]
//! says. An applied configuration is typed first, as upstream types it: a field an
//! object type does not declare ([`PatchSchema::declares_all_fields`]) or an
//! associative list whose items cannot be keyed refuses the apply
//! ([`ApplyError::Invalid`]), so nothing undeclared is ever merged or recorded.

mod fieldset;
mod typed;

use serde_json::{Map, Value};

pub use fieldset::{path_string, FieldPath, FieldSet, PathElement};
use typed::Typer;

use crate::{PatchError, PatchSchema};

/// How a list merges under server-side apply (`x-kubernetes-list-type`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListType {
    /// Replaced as a whole, owned as a whole (`atomic`).
    Atomic,
    /// A set of primitives; each value is owned separately (`set`).
    Set,
    /// Items are objects identified by these key fields
    /// (`map` + `x-kubernetes-list-map-keys`); each item merges and is owned
    /// separately.
    Map(Vec<String>),
}

/// How an object merges under server-side apply (`x-kubernetes-map-type`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MapType {
    /// Field by field (the default).
    #[default]
    Granular,
    /// Replaced as a whole, owned as a whole.
    Atomic,
}

/// What server-side apply needs to know of a schema beyond patch metadata.
///
/// Type names are the opaque names [`PatchSchema::field`] hands out in
/// [`crate::FieldMeta::type_name`]: OpenAPI definition names for built-in types; a
/// CRD implementation can use any naming (e.g. JSON pointers into its
/// `openAPIV3Schema`) and answer from `x-kubernetes-list-type`,
/// `x-kubernetes-list-map-keys` and `x-kubernetes-map-type`.
pub trait ApplySchema: PatchSchema {
    /// The list type of the list field `field` of type `type_name`.
    ///
    /// The default follows the field's `x-kubernetes-list-type` and
    /// `x-kubernetes-list-map-keys` ([`crate::FieldMeta::list_type`]) when it has
    /// one; otherwise it derives the type from patch metadata as upstream does for
    /// schemas without it: patch strategy `merge` with a merge key is a map keyed by
    /// it, `merge` without a key a set, anything else atomic.
    fn list_type(&self, type_name: &str, field: &str) -> Option<ListType> {
        let meta = self.field(type_name, field)?;
        if !meta.is_list {
            return None;
        }
        match meta.list_type.as_deref() {
            Some("atomic") => return Some(ListType::Atomic),
            Some("set") => return Some(ListType::Set),
            // A map without keys is an associative list of primitives: a set.
            Some("map") if meta.list_map_keys.is_empty() => return Some(ListType::Set),
            Some("map") => return Some(ListType::Map(meta.list_map_keys)),
            _ => {}
        }
        if meta.patch_strategy.iter().any(|s| s == "merge") {
            Some(match meta.merge_key {
                Some(k) => ListType::Map(vec![k]),
                None => ListType::Set,
            })
        } else {
            Some(ListType::Atomic)
        }
    }

    /// The map type of the object field `field` of type `type_name` (granular
    /// unless the schema says atomic, e.g. `LabelSelector`).
    fn map_type(&self, _type_name: &str, _field: &str) -> MapType {
        MapType::Granular
    }

    /// Where the field types resolved from this schema are remembered across
    /// calls (None: resolved anew by every call). See [`CachedApplySchema`].
    fn type_cache(&self) -> Option<&TypeCache> {
        None
    }
}

/// The field types resolved from one schema (field metadata, list and map types),
/// remembered so that later calls skip the schema lookups. Only valid for the schema
/// it was filled from, and only while that schema does not change: make a new one
/// when the schema is rebuilt (e.g. when CRDs change).
#[derive(Debug, Default)]
pub struct TypeCache {
    memo: typed::TyMemo,
}

impl TypeCache {
    /// An empty cache.
    pub fn new() -> TypeCache {
        TypeCache::default()
    }
}

/// An [`ApplySchema`] whose resolved field types are kept in a [`TypeCache`]; it
/// answers exactly as `schema` does.
#[derive(Clone, Copy)]
pub struct CachedApplySchema<'a> {
    /// The schema asked on a cache miss.
    pub schema: &'a dyn ApplySchema,
    /// The cache, filled from `schema` only.
    pub cache: &'a TypeCache,
}

impl PatchSchema for CachedApplySchema<'_> {
    fn field(&self, type_name: &str, field: &str) -> Option<crate::FieldMeta> {
        self.schema.field(type_name, field)
    }

    fn declares_all_fields(&self, type_name: &str) -> bool {
        self.schema.declares_all_fields(type_name)
    }
}

impl ApplySchema for CachedApplySchema<'_> {
    fn list_type(&self, type_name: &str, field: &str) -> Option<ListType> {
        self.schema.list_type(type_name, field)
    }

    fn map_type(&self, type_name: &str, field: &str) -> MapType {
        self.schema.map_type(type_name, field)
    }

    fn type_cache(&self) -> Option<&TypeCache> {
        Some(self.cache)
    }
}

/// Uses any [`PatchSchema`] as an [`ApplySchema`] with the default list and map
/// types (the fields' list types and keys, else derived from patch strategies and
/// merge keys).
#[derive(Clone, Copy)]
pub struct DerivedApplySchema<'a>(pub &'a dyn PatchSchema);

impl PatchSchema for DerivedApplySchema<'_> {
    fn field(&self, type_name: &str, field: &str) -> Option<crate::FieldMeta> {
        self.0.field(type_name, field)
    }

    fn declares_all_fields(&self, type_name: &str) -> bool {
        self.0.declares_all_fields(type_name)
    }
}

impl ApplySchema for DerivedApplySchema<'_> {}

impl ApplySchema for crate::NoSchema {}

/// Operation of a managed-fields entry made by server-side apply.
pub const OPERATION_APPLY: &str = "Apply";
/// Operation of a managed-fields entry made by create / update / patch.
pub const OPERATION_UPDATE: &str = "Update";
/// The manager that owns the fields of an object that had no managed fields when
/// it was first applied.
pub const BEFORE_FIRST_APPLY: &str = "before-first-apply";

/// One entry of `metadata.managedFields`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManagedFieldsEntry {
    /// The field manager (`fieldManager` query parameter / user agent).
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    /// The apiVersion of the object when the fields were set.
    pub api_version: String,
    /// RFC 3339 time of the last change this manager made (upstream leaves it out
    /// when a manager's first apply changed nothing).
    pub time: Option<String>,
    /// `status`, `scale`...; None for the main resource.
    pub subresource: Option<String>,
    /// The fields owned.
    pub fields: FieldSet,
}

impl ManagedFieldsEntry {
    /// True when both entries belong to the same manager identity (upstream's
    /// manager identifier: name, operation, subresource and, for `Update`, the
    /// apiVersion).
    fn same_identity(&self, other: &ManagedFieldsEntry) -> bool {
        self.manager == other.manager
            && self.operation == other.operation
            && self.subresource == other.subresource
            && (self.operation == OPERATION_APPLY || self.api_version == other.api_version)
    }

    /// The JSON of the entry, fields in upstream's order.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("manager".into(), Value::String(self.manager.clone()));
        m.insert("operation".into(), Value::String(self.operation.clone()));
        m.insert("apiVersion".into(), Value::String(self.api_version.clone()));
        if let Some(t) = &self.time {
            m.insert("time".into(), Value::String(t.clone()));
        }
        m.insert("fieldsType".into(), Value::String("FieldsV1".into()));
        m.insert("fieldsV1".into(), self.fields.to_fields_v1());
        if let Some(s) = self.subresource.as_deref().filter(|s| !s.is_empty()) {
            m.insert("subresource".into(), Value::String(s.to_string()));
        }
        Value::Object(m)
    }

    /// Parses one entry of `metadata.managedFields`.
    pub fn from_json(v: &Value) -> Result<ManagedFieldsEntry, PatchError> {
        let bad = |m: String| PatchError::BadRequest(m);
        let Value::Object(m) = v else {
            return Err(bad("managed fields entry must be an object".into()));
        };
        let s = |k: &str| m.get(k).and_then(Value::as_str).map(str::to_string);
        match s("fieldsType").as_deref() {
            Some("FieldsV1") => {}
            other => {
                return Err(bad(format!(
                    "error decoding versioned set: unknown fields type: {:?}",
                    other.unwrap_or("")
                )))
            }
        }
        let fields = match m.get("fieldsV1") {
            Some(v) => FieldSet::from_fields_v1(v)?,
            None => FieldSet::new(),
        };
        Ok(ManagedFieldsEntry {
            manager: s("manager").unwrap_or_default(),
            operation: s("operation").unwrap_or_default(),
            api_version: s("apiVersion").unwrap_or_default(),
            time: s("time"),
            subresource: s("subresource").filter(|s| !s.is_empty()),
            fields,
        })
    }
}

/// The managed-fields entries of `obj` (`metadata.managedFields`; none when
/// absent).
pub fn parse_managed_fields(obj: &Value) -> Result<Vec<ManagedFieldsEntry>, PatchError> {
    let Some(list) = obj.get("metadata").and_then(|m| m.get("managedFields")) else {
        return Ok(Vec::new());
    };
    match list {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => {
            let mut out: Vec<ManagedFieldsEntry> = Vec::with_capacity(items.len());
            for item in items {
                let e = ManagedFieldsEntry::from_json(item)?;
                if out.iter().any(|o| o.same_identity(&e)) {
                    return Err(PatchError::BadRequest(format!(
                        "duplicate entries for manager {:?}",
                        e.manager
                    )));
                }
                out.push(e);
            }
            Ok(out)
        }
        _ => Err(PatchError::BadRequest(
            "metadata.managedFields must be a list".into(),
        )),
    }
}

/// Sorts entries as upstream stores them (operation, time, manager, apiVersion,
/// subresource) and writes them to `obj`'s `metadata.managedFields` (removed when
/// there is none).
pub fn set_managed_fields(obj: &mut Value, mut entries: Vec<ManagedFieldsEntry>) {
    entries.sort_by(|p, q| {
        p.operation
            .cmp(&q.operation)
            .then_with(|| {
                p.time
                    .as_deref()
                    .unwrap_or("")
                    .cmp(q.time.as_deref().unwrap_or(""))
            })
            .then_with(|| p.manager.cmp(&q.manager))
            .then_with(|| p.api_version.cmp(&q.api_version))
            .then_with(|| p.subresource.cmp(&q.subresource))
    });
    let Value::Object(root) = obj else {
        return;
    };
    if entries.is_empty() {
        if let Some(Value::Object(meta)) = root.get_mut("metadata") {
            meta.remove("managedFields");
        }
        return;
    }
    let meta = root
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(meta) = meta {
        meta.insert(
            "managedFields".into(),
            Value::Array(entries.iter().map(ManagedFieldsEntry::to_json).collect()),
        );
    }
}

/// The set of fields an applied configuration specifies (leaves and
/// associative-list items), as upstream's `ToFieldSet`.
pub fn fields_of(obj: &Value, schema: &dyn ApplySchema, root_type: &str) -> FieldSet {
    let typer = Typer { schema };
    typer.to_field_set(obj, &typer.root(root_type))
}

/// A field another manager owns with a different value than the one applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// The manager owning the field.
    pub manager: String,
    /// Its operation (`Apply` or `Update`).
    pub operation: String,
    /// Its apiVersion.
    pub api_version: String,
    /// Its subresource, if any.
    pub subresource: Option<String>,
    /// The field, rendered as upstream does (`.spec.replicas`,
    /// `.spec.template.spec.containers[name="web"].image`).
    pub field: String,
}

impl Conflict {
    /// How upstream names the manager in messages: `"name"`, plus
    /// ` with subresource "status"`, plus ` using apps/v1` for `Update` managers.
    pub fn manager_description(&self) -> String {
        let mut s = format!("{:?}", self.manager);
        if let Some(sub) = &self.subresource {
            s.push_str(&format!(" with subresource {sub:?}"));
        }
        if self.operation == OPERATION_UPDATE {
            s.push_str(&format!(" using {}", self.api_version));
        }
        s
    }

    /// The message of the conflict's `StatusCause` (`conflict with "m"`); its
    /// `field` is [`Conflict::field`], its type `FieldManagerConflict`.
    pub fn cause_message(&self) -> String {
        format!("conflict with {}", self.manager_description())
    }
}

/// Upstream's message of the 409 Conflict answered to an apply with conflicts,
/// e.g. `Apply failed with 1 conflict: conflict with "kubectl-client-side-apply" using apps/v1: .spec.replicas`.
pub fn conflict_message(conflicts: &[Conflict]) -> String {
    if let [c] = conflicts {
        return format!(
            "Apply failed with 1 conflict: conflict with {}: {}",
            c.manager_description(),
            c.field
        );
    }
    let mut managers: Vec<String> = conflicts
        .iter()
        .map(Conflict::manager_description)
        .collect();
    managers.sort();
    managers.dedup();
    let mut lines = Vec::new();
    for m in &managers {
        lines.push(format!("conflicts with {m}:"));
        for c in conflicts.iter().filter(|c| &c.manager_description() == m) {
            lines.push(format!("- {}", c.field));
        }
    }
    format!(
        "Apply failed with {} conflicts: {}",
        conflicts.len(),
        lines.join("\n")
    )
}

/// Why a server-side apply failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// Other managers own fields the configuration sets to other values (HTTP 409,
    /// reason `Conflict`, one `FieldManagerConflict` cause per conflict).
    #[error("{}", conflict_message(.0))]
    Conflicts(Vec<Conflict>),
    /// The request is malformed (HTTP 400), e.g. `metadata.managedFields must be nil`.
    #[error("{0}")]
    BadRequest(String),
    /// The configuration cannot be applied (upstream answers HTTP 500 with this
    /// message and no reason), e.g. duplicate items in an associative list or a field
    /// the schema does not declare (`failed to create typed patch object (ns/name;
    /// apps/v1, Kind=Deployment): .spec.foo: field not declared in schema`).
    #[error("{0}")]
    Invalid(String),
}

impl ApplyError {
    /// The HTTP status code upstream answers with.
    pub fn status_code(&self) -> u16 {
        match self {
            ApplyError::Conflicts(_) => 409,
            ApplyError::BadRequest(_) => 400,
            ApplyError::Invalid(_) => 500,
        }
    }
}

/// The fields upstream never tracks (its `stripMeta` set).
fn strip_set() -> &'static FieldSet {
    static SET: std::sync::OnceLock<FieldSet> = std::sync::OnceLock::new();
    SET.get_or_init(build_strip_set)
}

fn build_strip_set() -> FieldSet {
    let f = |s: &str| PathElement::Field(s.to_string());
    let mut set = FieldSet::new();
    set.insert(&[f("apiVersion")]);
    set.insert(&[f("kind")]);
    set.insert(&[f("metadata")]);
    for m in [
        "name",
        "namespace",
        "creationTimestamp",
        "selfLink",
        "uid",
        "clusterName",
        "generation",
        "managedFields",
        "resourceVersion",
    ] {
        set.insert(&[f("metadata"), f(m)]);
    }
    set
}

fn without_managed_fields(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(Value::Object(meta)) = v.get_mut("metadata") {
        meta.remove("managedFields");
    }
    v
}

/// How upstream names an object in server-side apply errors:
/// `<namespace>/<name>; <group>/<version>, Kind=<kind>` (`default/web; apps/v1,
/// Kind=Deployment`, `/cm; /v1, Kind=ConfigMap` for the core group), from the
/// object's own metadata and type.
fn object_gvknn(obj: &Value) -> String {
    let meta = |k: &str| {
        obj.get("metadata")
            .and_then(|m| m.get(k))
            .and_then(Value::as_str)
            .unwrap_or("")
    };
    let api_version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    };
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
    format!(
        "{}/{}; {group}/{version}, Kind={kind}",
        meta("namespace"),
        meta("name")
    )
}

/// Tracks field ownership for one resource (or subresource) and API version.
pub struct FieldManager<'a> {
    /// Schema of the objects.
    pub schema: &'a dyn ApplySchema,
    /// Type name of the objects' root in `schema` (empty: unknown schema).
    pub root_type: &'a str,
    /// apiVersion of the request (`apps/v1`).
    pub api_version: &'a str,
    /// Subresource written (`status`), None for the main resource.
    pub subresource: Option<&'a str>,
    /// RFC 3339 time recorded in changed entries.
    pub now: &'a str,
    /// Fields this endpoint resets and that are never tracked here (upstream's
    /// reset fields, e.g. `status` for a main resource); removed with all below.
    pub reset_fields: FieldSet,
}

impl FieldManager<'_> {
    fn typer(&self) -> Typer<'_> {
        Typer {
            schema: self.schema,
        }
    }

    fn clean(&self, set: FieldSet) -> FieldSet {
        let set = set.difference(strip_set());
        if self.reset_fields.is_empty() {
            return set;
        }
        set.recursive_difference(&self.reset_fields)
    }

    fn entry(&self, manager: &str, operation: &str) -> ManagedFieldsEntry {
        ManagedFieldsEntry {
            manager: manager.to_string(),
            operation: operation.to_string(),
            api_version: self.api_version.to_string(),
            time: None,
            subresource: self.subresource.map(str::to_string),
            fields: FieldSet::new(),
        }
    }

    /// Upstream's `update`: gives the fields changed from `old` to `new` to
    /// `entries[me]`'s rivals' detriment; with `force` false, returns the conflicts
    /// instead.
    fn take_changed(
        &self,
        old: Option<&Value>,
        new: &Value,
        entries: &mut [ManagedFieldsEntry],
        me: Option<usize>,
        force: bool,
        skip_managed_fields: bool,
    ) -> Result<typed::Comparison, Vec<Conflict>> {
        let typer = self.typer();
        let ty = typer.root(self.root_type);
        let created = old.is_none();
        let empty = Value::Object(Map::new());
        let old = old.unwrap_or(&empty);
        let cmp = typer.compare(Some(old), Some(new), &ty, created, skip_managed_fields);
        if entries.iter().enumerate().all(|(i, _)| Some(i) == me) {
            return Ok(cmp);
        }
        let changed = cmp.modified.union(&cmp.added);
        let mut conflicts = Vec::new();
        for (i, e) in entries.iter_mut().enumerate() {
            if Some(i) == me {
                continue;
            }
            let taken = e.fields.intersection(&changed);
            if !taken.is_empty() {
                if !force {
                    for p in taken.paths() {
                        conflicts.push(Conflict {
                            manager: e.manager.clone(),
                            operation: e.operation.clone(),
                            api_version: e.api_version.clone(),
                            subresource: e.subresource.clone(),
                            field: path_string(&p),
                        });
                    }
                    continue;
                }
                e.fields = e.fields.difference(&taken);
            }
            if !cmp.removed.is_empty() {
                e.fields = e.fields.difference(&cmp.removed);
            }
        }
        if !conflicts.is_empty() {
            conflicts.sort_by_cached_key(Conflict::manager_description);
            return Err(conflicts);
        }
        Ok(cmp)
    }

    /// Server-side apply of `applied` by `manager` onto `live` (None: the object
    /// is being created). See [`server_side_apply`].
    pub fn apply(
        &self,
        live: Option<&Value>,
        applied: &Value,
        manager: &str,
        force: bool,
    ) -> Result<Value, ApplyError> {
        let Value::Object(_) = applied else {
            return Err(ApplyError::BadRequest(
                "apply configuration must be an object".into(),
            ));
        };
        if let Some(meta) = applied.get("metadata") {
            if meta.get("managedFields").is_some_and(|m| !m.is_null()) {
                return Err(ApplyError::BadRequest(
                    "metadata.managedFields must be nil".into(),
                ));
            }
        }
        if let Some(v) = applied.get("apiVersion").and_then(Value::as_str) {
            if !self.api_version.is_empty() && v != self.api_version {
                return Err(ApplyError::BadRequest(format!(
                    "Incorrect version specified in apply patch. Specified patch version: {v}, expected: {}",
                    self.api_version
                )));
            }
        }
        let typer = self.typer();
        let ty = typer.root(self.root_type);
        let mut errs = Vec::new();
        typer.validate(applied, &ty, &mut Vec::new(), &mut errs);
        if !errs.is_empty() {
            return Err(ApplyError::Invalid(format!(
                "failed to create typed patch object ({}): {}",
                object_gvknn(applied),
                typed::validation_errors_string(&errs)
            )));
        }

        let mut entries = match live {
            Some(l) => parse_managed_fields(l).map_err(|e| {
                ApplyError::Invalid(format!("failed to decode managed fields: {e}"))
            })?,
            None => Vec::new(),
        };
        let live_clean = live.map(without_managed_fields);
        if let (Some(l), true) = (&live_clean, entries.is_empty()) {
            // Objects that were never tracked: everything present belongs to
            // `before-first-apply`.
            let mut e = self.entry(BEFORE_FIRST_APPLY, OPERATION_UPDATE);
            let cmp = typer.compare(None, Some(l), &ty, true, false);
            e.fields = self.clean(cmp.added.union(&cmp.modified));
            if !e.fields.is_empty() {
                e.time = Some(self.now.to_string());
                entries.push(e);
            }
        }

        let merged = typer.merge(live_clean.as_ref(), applied, &ty);
        let new_set = self.clean(typer.to_field_set(applied, &ty));
        let me_entry = self.entry(manager, OPERATION_APPLY);
        let me = entries.iter().position(|e| e.same_identity(&me_entry));
        let last_set = me.map(|i| entries[i].fields.clone());
        let me = match me {
            Some(i) => {
                entries[i].fields = new_set;
                entries[i].api_version = self.api_version.to_string();
                i
            }
            None => {
                let mut e = me_entry;
                e.fields = new_set;
                entries.push(e);
                entries.len() - 1
            }
        };

        // Prune what this manager owned before, stopped specifying and nobody
        // else (nor its new configuration) owns.
        let mut result = merged;
        if let Some(last) = last_set.filter(|s| !s.is_empty()) {
            let owned = entries
                .iter()
                .fold(FieldSet::new(), |acc, e| acc.union(&e.fields))
                .with_field_prefixes();
            let to_remove = last.with_field_prefixes().difference(&owned);
            if !to_remove.is_empty() {
                result = typer.remove_items(&result, &to_remove, &ty);
            }
        }

        self.take_changed(
            live_clean.as_ref(),
            &result,
            &mut entries,
            Some(me),
            force,
            false,
        )
        .map_err(ApplyError::Conflicts)?;

        let changed = live_clean.as_ref() != Some(&result);
        if changed {
            entries[me].time = Some(self.now.to_string());
        }
        entries.retain(|e| !e.fields.is_empty());
        set_managed_fields(&mut result, entries);
        Ok(result)
    }

    /// Records a create (`old` None) / update / patch by `manager` in `new`'s
    /// managed fields. See [`track_update`].
    pub fn update(&self, old: Option<&Value>, new: &mut Value, manager: &str) {
        // Managed fields the client sent win (that is how they are edited or
        // reset); a subresource write, or a client that dropped them, keeps the
        // live ones.
        let sent = new.get("metadata").and_then(|m| m.get("managedFields"));
        let reset = match sent {
            Some(Value::Array(a)) if a.is_empty() => true,
            Some(Value::Array(a)) if a.len() == 1 => a[0].as_object().is_some_and(|m| m.is_empty()),
            _ => false,
        };
        let mut entries = if reset {
            Vec::new()
        } else {
            let from_new = match (sent, self.subresource) {
                (Some(_), None) => parse_managed_fields(new).ok().filter(|e| !e.is_empty()),
                _ => None,
            };
            match from_new {
                Some(e) => e,
                None => old
                    .and_then(|o| parse_managed_fields(o).ok())
                    .unwrap_or_default(),
            }
        };
        if entries.is_empty() && old.is_some() {
            // Upstream does not start tracking on updates of untracked objects.
            set_managed_fields(new, Vec::new());
            return;
        }
        // The change is computed as a fresh manager ("current-operation"), then
        // added to this manager's Update entry; managed fields are left out of the
        // comparison.
        let me_entry = self.entry(manager, OPERATION_UPDATE);
        let cmp = match self.take_changed(old, new, &mut entries, None, true, true) {
            Ok(c) => c,
            Err(_) => return,
        };
        let typed::Comparison {
            added, modified, ..
        } = cmp;
        let changed = if modified.is_empty() {
            added
        } else {
            modified.union(&added)
        };
        let changed = self.clean(changed);
        if !changed.is_empty() {
            match entries.iter_mut().find(|e| e.same_identity(&me_entry)) {
                Some(e) => {
                    e.fields = e.fields.union(&changed);
                    e.time = Some(self.now.to_string());
                }
                None => {
                    let mut e = me_entry;
                    e.fields = changed;
                    e.time = Some(self.now.to_string());
                    entries.push(e);
                }
            }
        }
        entries.retain(|e| !e.fields.is_empty());
        cap_update_managers(&mut entries);
        set_managed_fields(new, entries);
    }
}

/// Most `Update` entries an object keeps; older ones merge into
/// [`ANCIENT_CHANGES`] entries, one per apiVersion.
pub const MAX_UPDATE_MANAGERS: usize = 10;
/// The manager of merged old `Update` entries.
pub const ANCIENT_CHANGES: &str = "ancient-changes";

/// Upstream's cap on `Update` entries: while there are more than
/// [`MAX_UPDATE_MANAGERS`], the oldest entries merge into the `ancient-changes`
/// entry of their apiVersion (the first oldest of a version becomes it).
fn cap_update_managers(entries: &mut Vec<ManagedFieldsEntry>) {
    let mut updaters: Vec<usize> = (0..entries.len())
        .filter(|&i| entries[i].operation == OPERATION_UPDATE)
        .collect();
    if updaters.len() <= MAX_UPDATE_MANAGERS {
        return;
    }
    updaters.sort_by(|&i, &j| {
        let (p, q) = (&entries[i], &entries[j]);
        p.time
            .as_deref()
            .unwrap_or("")
            .cmp(q.time.as_deref().unwrap_or(""))
            .then_with(|| p.manager.cmp(&q.manager))
            .then_with(|| p.api_version.cmp(&q.api_version))
            .then_with(|| p.subresource.cmp(&q.subresource))
    });
    let mut length = updaters.len();
    let mut first_of_version: Vec<(String, usize)> = Vec::new();
    let mut dropped = vec![false; entries.len()];
    for &i in &updaters {
        if length <= MAX_UPDATE_MANAGERS {
            break;
        }
        let version = entries[i].api_version.clone();
        let Some(&(_, first)) = first_of_version.iter().find(|(v, _)| *v == version) else {
            first_of_version.push((version, i));
            continue;
        };
        let bucket = (0..entries.len()).find(|&b| {
            !dropped[b]
                && entries[b].manager == ANCIENT_CHANGES
                && entries[b].operation == OPERATION_UPDATE
                && entries[b].subresource.is_none()
                && entries[b].api_version == version
        });
        let bucket = match bucket {
            Some(b) => b,
            None => {
                let e = &mut entries[first];
                e.manager = ANCIENT_CHANGES.to_string();
                e.subresource = None;
                first
            }
        };
        let merged = entries[bucket].fields.union(&entries[i].fields);
        entries[bucket].fields = merged;
        entries[bucket].time = entries[i].time.clone();
        dropped[i] = true;
        length -= 1;
    }
    let mut k = 0;
    entries.retain(|_| {
        k += 1;
        !dropped[k - 1]
    });
}

/// Server-side apply: merges `applied` (the manager's full intent) into `live`
/// (None = create), detecting conflicts with fields other managers own with
/// different values; `force` takes ownership instead. Fields the manager owned
/// before but no longer specifies are removed from the object when no other
/// manager owns them. Returns the new object with updated `metadata.managedFields`.
#[allow(clippy::too_many_arguments)]
pub fn server_side_apply(
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    schema: &dyn ApplySchema,
    root_type: &str,
    now: &str,
    api_version: &str,
    subresource: Option<&str>,
) -> Result<Value, ApplyError> {
    FieldManager {
        schema,
        root_type,
        api_version,
        subresource,
        now,
        reset_fields: FieldSet::new(),
    }
    .apply(live, applied, manager, force)
}

/// Tracks a non-apply write: the fields that changed from `old` (None = create) to
/// `new` are taken from other managers and added to `manager`'s `Update` entry in
/// `new`'s `metadata.managedFields`; fields removed are dropped from every entry.
#[allow(clippy::too_many_arguments)]
pub fn track_update(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    schema: &dyn ApplySchema,
    root_type: &str,
    now: &str,
    api_version: &str,
    subresource: Option<&str>,
) {
    FieldManager {
        schema,
        root_type,
        api_version,
        subresource,
        now,
        reset_fields: FieldSet::new(),
    }
    .update(old, new, manager)
}

#[cfg(test)]
mod tests;
