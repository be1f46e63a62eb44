//! Schema-aware walks over JSON objects: field sets, merge, comparison, removal
//! (upstream's `typed` package of structured-merge-diff).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use serde_json::{Map, Value};

use super::fieldset::{path_string, FieldPath, FieldSet, PathElement};
use super::{ApplySchema, ListType, MapType};
use crate::{json_eq, FieldMeta};

/// The schema of one JSON value (cheap to clone: its parts are shared).
#[derive(Clone, Debug)]
pub(crate) enum Ty {
    /// Unknown: objects merge field by field, lists are atomic.
    Unknown,
    /// An object type with named fields.
    Struct { name: Arc<str>, atomic: bool },
    /// A map whose values all have one schema.
    Map { values: Arc<Ty>, atomic: bool },
    /// A list; `key_defaults` are the schema defaults of the key fields of a
    /// `map` list's items (taken when an item leaves a key field out).
    List {
        items: Arc<Ty>,
        kind: Arc<ListType>,
        key_defaults: Arc<Vec<(String, Value)>>,
    },
}

/// Memo of resolved field types, for schemas that never change (see
/// [`super::TypeCache`]).
#[derive(Debug, Default)]
pub(crate) struct TyMemo {
    by_type: RwLock<HashMap<String, HashMap<String, Ty>>>,
}

impl TyMemo {
    fn get(&self, type_name: &str, field: &str) -> Option<Ty> {
        let map = self.by_type.read().ok()?;
        map.get(type_name)?.get(field).cloned()
    }

    fn put(&self, type_name: &str, field: &str, ty: &Ty) {
        if let Ok(mut map) = self.by_type.write() {
            map.entry(type_name.to_string())
                .or_default()
                .insert(field.to_string(), ty.clone());
        }
    }
}

/// Resolves the schema of fields.
pub(crate) struct Typer<'a> {
    pub(crate) schema: &'a dyn ApplySchema,
}

impl Typer<'_> {
    pub(crate) fn root(&self, root_type: &str) -> Ty {
        if root_type.is_empty() {
            Ty::Unknown
        } else {
            Ty::Struct {
                name: root_type.into(),
                atomic: false,
            }
        }
    }

    fn field(&self, parent: &Ty, field: &str) -> Ty {
        match parent {
            Ty::Struct { name, .. } => {
                let memo = self.schema.type_cache().map(|c| &c.memo);
                if let Some(ty) = memo.and_then(|m| m.get(name, field)) {
                    return ty;
                }
                let ty = match self.schema.field(name, field) {
                    Some(meta) => self.of_meta(name, field, &meta),
                    None => Ty::Unknown,
                };
                if let Some(m) = memo {
                    m.put(name, field, &ty);
                }
                ty
            }
            Ty::Map { values, .. } => (**values).clone(),
            _ => Ty::Unknown,
        }
    }

    fn of_meta(&self, parent: &str, field: &str, meta: &FieldMeta) -> Ty {
        let elem = match &meta.type_name {
            Some(t) => Ty::Struct {
                name: t.as_str().into(),
                atomic: false,
            },
            None => Ty::Unknown,
        };
        if meta.is_list {
            let kind = self
                .schema
                .list_type(parent, field)
                .unwrap_or(ListType::Atomic);
            let mut key_defaults = Vec::new();
            if let (ListType::Map(keys), Some(item_type)) = (&kind, &meta.type_name) {
                for k in keys {
                    if let Some(d) = self.schema.field(item_type, k).and_then(|m| m.default) {
                        key_defaults.push((k.clone(), d));
                    }
                }
            }
            return Ty::List {
                items: Arc::new(elem),
                kind: Arc::new(kind),
                key_defaults: Arc::new(key_defaults),
            };
        }
        let atomic = self.schema.map_type(parent, field) == MapType::Atomic;
        if meta.is_map {
            Ty::Map {
                values: Arc::new(elem),
                atomic,
            }
        } else if let Some(name) = &meta.type_name {
            Ty::Struct {
                name: name.as_str().into(),
                atomic,
            }
        } else if atomic {
            Ty::Map {
                values: Arc::new(Ty::Unknown),
                atomic,
            }
        } else {
            Ty::Unknown
        }
    }
}

/// How a value is walked.
enum Shape<'v> {
    /// Merged / tracked field by field.
    Fields(&'v Map<String, Value>),
    /// Merged / tracked item by item.
    Items(Vec<(PathElement, &'v Value)>),
    /// Replaced and tracked as a whole.
    Leaf,
}

fn items_ty(ty: &Ty) -> Ty {
    match ty {
        Ty::List { items, .. } => (**items).clone(),
        _ => Ty::Unknown,
    }
}

/// The path element of one item of an associative list (a set or a `map` list),
/// as upstream's structured-merge-diff builds it: the values of the key fields
/// (a key field the item leaves out takes its schema default from `key_defaults`),
/// or the value itself in a set. Err is upstream's message for an item that has none.
pub(crate) fn item_path_element(
    kind: &ListType,
    key_defaults: &[(String, Value)],
    item: &Value,
) -> Result<PathElement, String> {
    match kind {
        ListType::Atomic => Err("invalid indexing of non-associative list".to_string()),
        ListType::Set => match item {
            Value::Object(_) => {
                Err("associative list without keys has an element that's a map type".to_string())
            }
            Value::Array(_) => {
                Err("not supported: associative list with lists as elements".to_string())
            }
            Value::Null => Err(
                "associative list without keys has an element that's an explicit null".to_string(),
            ),
            v => Ok(PathElement::Value(v.clone())),
        },
        ListType::Map(keys) => {
            let m = match item {
                Value::Object(m) => m,
                Value::Null => {
                    return Err("associative list with keys may not have a null element".to_string())
                }
                _ => {
                    return Err(
                        "associative list with keys may not have non-map elements".to_string()
                    )
                }
            };
            let mut fields = Vec::with_capacity(keys.len());
            for k in keys {
                let default = || key_defaults.iter().find(|(d, _)| d == k).map(|(_, v)| v);
                match m.get(k).or_else(default) {
                    Some(v) => fields.push((k.clone(), v.clone())),
                    None => {
                        return Err(format!(
                            "associative list with keys has an element that omits key field {k:?} (and doesn't have default value)"
                        ))
                    }
                }
            }
            fields.sort_by(|p, q| p.0.cmp(&q.0));
            Ok(PathElement::Key(fields))
        }
    }
}

/// The path element of each item of an associative list; Err names the problem
/// (missing key field, duplicate item, item of the wrong kind).
pub(crate) fn list_items<'v>(
    kind: &ListType,
    key_defaults: &[(String, Value)],
    list: &'v [Value],
) -> Result<Vec<(PathElement, &'v Value)>, String> {
    let mut out: Vec<(PathElement, &Value)> = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let pe =
            item_path_element(kind, key_defaults, item).map_err(|e| format!("element {i}: {e}"))?;
        if out.iter().any(|(p, _)| *p == pe) {
            return Err(format!("duplicate entries for key {pe}"));
        }
        out.push((pe, item));
    }
    Ok(out)
}

fn shape<'v>(v: &'v Value, ty: &Ty) -> Shape<'v> {
    match (v, ty) {
        (Value::Object(_), Ty::Struct { atomic: true, .. } | Ty::Map { atomic: true, .. }) => {
            Shape::Leaf
        }
        (Value::Object(m), Ty::Struct { .. } | Ty::Map { .. } | Ty::Unknown) => Shape::Fields(m),
        (
            Value::Array(a),
            Ty::List {
                kind, key_defaults, ..
            },
        ) if !matches!(**kind, ListType::Atomic) => match list_items(kind, key_defaults, a) {
            Ok(items) => Shape::Items(items),
            Err(_) => Shape::Leaf,
        },
        _ => Shape::Leaf,
    }
}

/// One problem of an applied configuration: where (`.spec.ports`) and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ValidationError {
    pub(crate) path: String,
    pub(crate) message: String,
}

/// Upstream's rendering of validation errors (structured-merge-diff's
/// `ValidationErrors`): `path: message` for one, `errors:` and one indented line
/// each for several.
pub(crate) fn validation_errors_string(errs: &[ValidationError]) -> String {
    let one = |e: &ValidationError| {
        if e.path.is_empty() {
            e.message.clone()
        } else {
            format!("{}: {}", e.path, e.message)
        }
    };
    if let [e] = errs {
        return one(e);
    }
    let mut lines = vec!["errors:".to_string()];
    lines.extend(errs.iter().map(|e| format!("  {}", one(e))));
    lines.join("\n")
}

fn push_error(errs: &mut Vec<ValidationError>, path: &FieldPath, message: String) {
    errs.push(ValidationError {
        path: path_string(path),
        message,
    });
}

impl Typer<'_> {
    /// Validates an applied configuration as upstream types it
    /// (structured-merge-diff's validating walk): every field of an object type
    /// whose schema declares all its fields must be declared (`field not declared in
    /// schema`; the walk of that object stops at the first such field, as
    /// upstream's), and every associative list must be itemizable (key fields
    /// present or defaulted, no duplicates).
    pub(crate) fn validate(
        &self,
        v: &Value,
        ty: &Ty,
        path: &mut FieldPath,
        errs: &mut Vec<ValidationError>,
    ) {
        if path.len() > 256 {
            return;
        }
        match (v, ty) {
            (Value::Object(m), Ty::Struct { .. } | Ty::Map { .. } | Ty::Unknown) => {
                let closed = match ty {
                    Ty::Struct { name, .. } => self.schema.declares_all_fields(name),
                    _ => false,
                };
                for (k, child) in m {
                    path.push(PathElement::Field(k.clone()));
                    if let (true, Ty::Struct { name, .. }) = (closed, ty) {
                        if self.schema.field(name, k).is_none() {
                            push_error(errs, path, "field not declared in schema".to_string());
                            path.pop();
                            break;
                        }
                    }
                    self.validate(child, &self.field(ty, k), path, errs);
                    path.pop();
                }
            }
            (
                Value::Array(a),
                Ty::List {
                    kind,
                    items,
                    key_defaults,
                },
            ) => {
                let mut seen: Vec<PathElement> = Vec::new();
                for (i, item) in a.iter().enumerate() {
                    let pe = if matches!(**kind, ListType::Atomic) {
                        PathElement::Index(i)
                    } else {
                        match item_path_element(kind, key_defaults, item) {
                            Ok(pe) => pe,
                            Err(e) => {
                                // Without the item's key nothing below it can be
                                // reported: upstream stops at the list.
                                push_error(errs, path, format!("element {i}: {e}"));
                                return;
                            }
                        }
                    };
                    if !matches!(pe, PathElement::Index(_)) {
                        if seen.contains(&pe) {
                            push_error(errs, path, format!("duplicate entries for key {pe}"));
                        }
                        seen.push(pe.clone());
                    }
                    path.push(pe);
                    self.validate(item, items, path, errs);
                    path.pop();
                }
            }
            _ => {}
        }
    }

    /// The fields `v` sets (upstream's `ToFieldSet`): leaves, and the items of
    /// associative lists themselves.
    pub(crate) fn to_field_set(&self, v: &Value, ty: &Ty) -> FieldSet {
        let mut set = FieldSet::new();
        self.fields_into(v, ty, &mut Vec::new(), &mut set);
        set
    }

    fn fields_into(&self, v: &Value, ty: &Ty, path: &mut FieldPath, set: &mut FieldSet) {
        match shape(v, ty) {
            Shape::Fields(m) => {
                for (k, child) in m {
                    path.push(PathElement::Field(k.clone()));
                    self.fields_into(child, &self.field(ty, k), path, set);
                    path.pop();
                }
            }
            Shape::Items(items) => {
                let ity = items_ty(ty);
                for (pe, item) in items {
                    path.push(pe);
                    self.fields_into(item, &ity, path, set);
                    set.insert(path);
                    path.pop();
                }
            }
            Shape::Leaf => set.insert(path),
        }
    }

    /// Merges `rhs` into `lhs` (upstream's `TypedValue.Merge`): objects field by
    /// field, associative lists item by item, everything else replaced by `rhs`.
    pub(crate) fn merge(&self, lhs: Option<&Value>, rhs: &Value, ty: &Ty) -> Value {
        let Some(lhs) = lhs else {
            return rhs.clone();
        };
        match (shape(lhs, ty), shape(rhs, ty)) {
            (Shape::Fields(l), Shape::Fields(r)) => {
                let mut out = l.clone();
                for (k, rv) in r {
                    let merged = self.merge(l.get(k), rv, &self.field(ty, k));
                    out.insert(k.clone(), merged);
                }
                Value::Object(out)
            }
            (Shape::Items(l), Shape::Items(r)) => {
                Value::Array(self.merge_items(&l, &r, &items_ty(ty)))
            }
            _ => rhs.clone(),
        }
    }

    /// Upstream's list-merge order: items of `lhs` keep their place, shared items
    /// follow `rhs`'s order, new items of `rhs` come where `rhs` puts them.
    fn merge_items(
        &self,
        lhs: &[(PathElement, &Value)],
        rhs: &[(PathElement, &Value)],
        ity: &Ty,
    ) -> Vec<Value> {
        let find = |list: &[(PathElement, &Value)], pe: &PathElement| {
            list.iter().position(|(p, _)| p == pe)
        };
        let shared: Vec<&PathElement> = rhs
            .iter()
            .map(|(p, _)| p)
            .filter(|p| find(lhs, p).is_some())
            .collect();
        let mut next_shared = 0usize;
        let mut merged_rhs: Vec<&PathElement> = Vec::new();
        let mut out = Vec::with_capacity(lhs.len().max(rhs.len()));
        let (mut li, mut ri) = (0, 0);
        while li < lhs.len() || ri < rhs.len() {
            if li < lhs.len() && ri < rhs.len() {
                let pe = &lhs[li].0;
                if *pe == rhs[ri].0 {
                    merged_rhs.push(pe);
                    out.push(self.merge(Some(lhs[li].1), rhs[ri].1, ity));
                    li += 1;
                    ri += 1;
                    if shared.get(next_shared) == Some(&pe) {
                        next_shared += 1;
                    }
                    continue;
                }
                if find(rhs, pe).is_some() && shared.get(next_shared).is_some_and(|s| *s != pe) {
                    li += 1;
                    continue;
                }
            }
            if li < lhs.len() {
                let pe = &lhs[li].0;
                if find(rhs, pe).is_none() {
                    out.push(lhs[li].1.clone());
                    li += 1;
                    continue;
                } else if merged_rhs.contains(&pe) {
                    li += 1;
                    continue;
                }
            }
            if ri < rhs.len() {
                let pe = &rhs[ri].0;
                merged_rhs.push(pe);
                let l = find(lhs, pe).map(|i| lhs[i].1);
                out.push(self.merge(l, rhs[ri].1, ity));
                ri += 1;
                if shared.get(next_shared) == Some(&pe) {
                    next_shared += 1;
                }
            }
        }
        out
    }

    /// Compares `lhs` with `rhs` (upstream's `TypedValue.Compare`). With
    /// `created`, objects of named types that appear are not themselves counted
    /// as added (upstream compares against the zero value of the Go type, where
    /// they already exist). With `skip_managed_fields`, `metadata.managedFields` is
    /// left out on both sides, as if removed.
    pub(crate) fn compare(
        &self,
        lhs: Option<&Value>,
        rhs: Option<&Value>,
        ty: &Ty,
        created: bool,
        skip_managed_fields: bool,
    ) -> Comparison {
        let skip = if skip_managed_fields {
            Skip::Root
        } else {
            Skip::None
        };
        self.cmp_node(lhs, rhs, ty, created, false, skip).below
    }

    /// Compares one node: what changed below it, and how the node itself changed.
    fn cmp_node(
        &self,
        lhs: Option<&Value>,
        rhs: Option<&Value>,
        ty: &Ty,
        created: bool,
        is_item: bool,
        skip: Skip,
    ) -> NodeCmp {
        let mut below = Levels::default();
        let interior = match (lhs.map(|v| shape(v, ty)), rhs.map(|v| shape(v, ty))) {
            (Some(Shape::Fields(l)), Some(Shape::Fields(r))) => {
                for (k, lv) in l {
                    if skip.skips(k) {
                        continue;
                    }
                    let c = self.cmp_node(
                        Some(lv),
                        r.get(k),
                        &self.field(ty, k),
                        created,
                        false,
                        skip.child(k),
                    );
                    below.push(PathElement::Field(k.clone()), c);
                }
                for (k, rv) in r {
                    if l.contains_key(k) || skip.skips(k) {
                        continue;
                    }
                    let c = self.cmp_node(
                        None,
                        Some(rv),
                        &self.field(ty, k),
                        created,
                        false,
                        skip.child(k),
                    );
                    below.push(PathElement::Field(k.clone()), c);
                }
                true
            }
            (Some(Shape::Fields(m)), None) | (None, Some(Shape::Fields(m))) => {
                let left = lhs.is_some();
                for (k, v) in m {
                    if skip.skips(k) {
                        continue;
                    }
                    let (l, r) = if left {
                        (Some(v), None)
                    } else {
                        (None, Some(v))
                    };
                    let c = self.cmp_node(l, r, &self.field(ty, k), created, false, skip.child(k));
                    below.push(PathElement::Field(k.clone()), c);
                }
                true
            }
            (Some(Shape::Items(l)), Some(Shape::Items(r))) => {
                let ity = items_ty(ty);
                let mut r: Vec<Option<(PathElement, &Value)>> = r.into_iter().map(Some).collect();
                for (pe, lv) in l {
                    let rv = r
                        .iter_mut()
                        .find(|x| x.as_ref().is_some_and(|(p, _)| *p == pe))
                        .and_then(Option::take)
                        .map(|(_, v)| v);
                    let c = self.cmp_node(Some(lv), rv, &ity, created, true, Skip::None);
                    below.push(pe, c);
                }
                for (pe, rv) in r.into_iter().flatten() {
                    let c = self.cmp_node(None, Some(rv), &ity, created, true, Skip::None);
                    below.push(pe, c);
                }
                true
            }
            (Some(Shape::Items(items)), None) | (None, Some(Shape::Items(items))) => {
                let ity = items_ty(ty);
                let left = lhs.is_some();
                for (pe, v) in items {
                    let (l, r) = if left {
                        (Some(v), None)
                    } else {
                        (None, Some(v))
                    };
                    let c = self.cmp_node(l, r, &ity, created, true, Skip::None);
                    below.push(pe, c);
                }
                true
            }
            _ => false,
        };
        let mut node = NodeCmp {
            below: below.finish(),
            ..NodeCmp::default()
        };
        match (lhs, rhs) {
            (None, Some(_)) => {
                let named_struct = matches!(ty, Ty::Struct { .. }) && !is_item;
                node.added = !(interior && created && named_struct);
            }
            (Some(_), None) => node.removed = true,
            (Some(l), Some(r)) if !interior => node.modified = !skip.leaf_eq(l, r),
            _ => {}
        }
        node
    }

    /// Removes the members of `set` from `v` (upstream's `RemoveItems`).
    pub(crate) fn remove_items(&self, v: &Value, set: &FieldSet, ty: &Ty) -> Value {
        match shape(v, ty) {
            Shape::Fields(m) => {
                let mut out = Map::new();
                for (k, child) in m {
                    let pe = PathElement::Field(k.clone());
                    if set.has_member(&pe) {
                        continue;
                    }
                    let child = match set.child(&pe) {
                        Some(sub) => self.remove_items(child, sub, &self.field(ty, k)),
                        None => child.clone(),
                    };
                    out.insert(k.clone(), child);
                }
                Value::Object(out)
            }
            Shape::Items(items) => {
                let ity = items_ty(ty);
                let mut out = Vec::new();
                for (pe, item) in items {
                    if set.has_member(&pe) {
                        continue;
                    }
                    out.push(match set.child(&pe) {
                        Some(sub) => self.remove_items(item, sub, &ity),
                        None => item.clone(),
                    });
                }
                Value::Array(out)
            }
            Shape::Leaf => v.clone(),
        }
    }
}

/// What changed between two objects.
#[derive(Clone, Debug, Default)]
pub(crate) struct Comparison {
    pub(crate) added: FieldSet,
    pub(crate) modified: FieldSet,
    pub(crate) removed: FieldSet,
}

/// How one node compared, and what changed below it.
#[derive(Default)]
struct NodeCmp {
    added: bool,
    modified: bool,
    removed: bool,
    below: Comparison,
}

/// The nodes of one level of a comparison, collected in any order.
#[derive(Default)]
struct Levels {
    added: Vec<(PathElement, bool, FieldSet)>,
    modified: Vec<(PathElement, bool, FieldSet)>,
    removed: Vec<(PathElement, bool, FieldSet)>,
}

impl Levels {
    fn push(&mut self, pe: PathElement, c: NodeCmp) {
        let NodeCmp {
            added,
            modified,
            removed,
            below,
        } = c;
        let mut pe = Some(pe);
        // Each set takes the element only when the node or something below it is in it.
        let mut put = |list: &mut Vec<(PathElement, bool, FieldSet)>,
                       member: bool,
                       set: FieldSet,
                       last: bool| {
            if member || !set.is_empty() {
                let e = if last { pe.take() } else { pe.clone() };
                if let Some(e) = e {
                    list.push((e, member, set));
                }
            }
        };
        put(&mut self.added, added, below.added, false);
        put(&mut self.modified, modified, below.modified, false);
        put(&mut self.removed, removed, below.removed, true);
    }

    fn finish(self) -> Comparison {
        Comparison {
            added: FieldSet::from_unsorted(self.added),
            modified: FieldSet::from_unsorted(self.modified),
            removed: FieldSet::from_unsorted(self.removed),
        }
    }
}

/// Where `metadata.managedFields` is left out of a comparison.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Skip {
    /// Nowhere (below the root's `metadata`).
    None,
    /// At the root: its `metadata` child skips.
    Root,
    /// In `metadata`: its `managedFields` key is left out.
    Metadata,
}

impl Skip {
    fn child(self, key: &str) -> Skip {
        if self == Skip::Root && key == "metadata" {
            Skip::Metadata
        } else {
            Skip::None
        }
    }

    fn skips(self, key: &str) -> bool {
        self == Skip::Metadata && key == "managedFields"
    }

    /// Equality of two leaves (a `metadata` compared as a whole ignores its
    /// `managedFields`).
    fn leaf_eq(self, l: &Value, r: &Value) -> bool {
        match (self, l, r) {
            (Skip::Metadata, Value::Object(a), Value::Object(b)) => {
                let count =
                    |m: &Map<String, Value>| m.len() - usize::from(m.contains_key("managedFields"));
                count(a) == count(b)
                    && a.iter()
                        .filter(|(k, _)| *k != "managedFields")
                        .all(|(k, v)| b.get(k).is_some_and(|w| json_eq(v, w)))
            }
            _ => json_eq(l, r),
        }
    }
}
