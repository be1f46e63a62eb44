//! Schema-aware walks over JSON objects: field sets, merge, comparison, removal
//! (upstream's `typed` package of structured-merge-diff).

use serde_json::{Map, Value};

use super::fieldset::{path_string, FieldPath, FieldSet, PathElement};
use super::{ApplySchema, ListType, MapType};
use crate::{json_eq, FieldMeta};

/// The schema of one JSON value.
#[derive(Clone, Debug)]
pub(crate) enum Ty {
    /// Unknown: objects merge field by field, lists are atomic.
    Unknown,
    /// An object type with named fields.
    Struct { name: String, atomic: bool },
    /// A map whose values all have one schema.
    Map { values: Box<Ty>, atomic: bool },
    /// A list.
    List { items: Box<Ty>, kind: ListType },
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
                name: root_type.to_string(),
                atomic: false,
            }
        }
    }

    fn field(&self, parent: &Ty, field: &str) -> Ty {
        match parent {
            Ty::Struct { name, .. } => match self.schema.field(name, field) {
                Some(meta) => self.of_meta(name, field, &meta),
                None => Ty::Unknown,
            },
            Ty::Map { values, .. } => (**values).clone(),
            _ => Ty::Unknown,
        }
    }

    fn of_meta(&self, parent: &str, field: &str, meta: &FieldMeta) -> Ty {
        let elem = match &meta.type_name {
            Some(t) => Ty::Struct {
                name: t.clone(),
                atomic: false,
            },
            None => Ty::Unknown,
        };
        if meta.is_list {
            let kind = self
                .schema
                .list_type(parent, field)
                .unwrap_or(ListType::Atomic);
            return Ty::List {
                items: Box::new(elem),
                kind,
            };
        }
        let atomic = self.schema.map_type(parent, field) == MapType::Atomic;
        if meta.is_map {
            Ty::Map {
                values: Box::new(elem),
                atomic,
            }
        } else if let Some(name) = &meta.type_name {
            Ty::Struct {
                name: name.clone(),
                atomic,
            }
        } else if atomic {
            Ty::Map {
                values: Box::new(Ty::Unknown),
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

/// The path element of each item of an associative list; Err names the problem
/// (missing key field, duplicate item, item of the wrong kind).
pub(crate) fn list_items<'v>(
    kind: &ListType,
    list: &'v [Value],
) -> Result<Vec<(PathElement, &'v Value)>, String> {
    let mut out: Vec<(PathElement, &Value)> = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let pe = match kind {
            ListType::Atomic => return Err("atomic list".to_string()),
            ListType::Set => match item {
                Value::Object(_) | Value::Array(_) => {
                    return Err(format!("[{i}]: expected a primitive in a set"));
                }
                v => PathElement::Value(v.clone()),
            },
            ListType::Map(keys) => {
                let Value::Object(m) = item else {
                    return Err(format!("[{i}]: expected an object in an associative list"));
                };
                let mut fields = Vec::with_capacity(keys.len());
                for k in keys {
                    match m.get(k) {
                        Some(v) => fields.push((k.clone(), v.clone())),
                        None => {
                            return Err(format!(
                                "[{i}]: associative list with keys has an element that omits key field {k:?} (and doesn't have default value)"
                            ))
                        }
                    }
                }
                fields.sort_by(|p, q| p.0.cmp(&q.0));
                PathElement::Key(fields)
            }
        };
        if out.iter().any(|(p, _)| *p == pe) {
            return Err(format!(": duplicate entries for key {pe}"));
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
        (Value::Array(a), Ty::List { kind, .. }) if !matches!(kind, ListType::Atomic) => {
            match list_items(kind, a) {
                Ok(items) => Shape::Items(items),
                Err(_) => Shape::Leaf,
            }
        }
        _ => Shape::Leaf,
    }
}

impl Typer<'_> {
    /// Checks that every associative list of an applied configuration can be
    /// itemized (key fields present, no duplicates).
    pub(crate) fn validate(&self, v: &Value, ty: &Ty, path: &mut FieldPath) -> Result<(), String> {
        match (v, ty) {
            (
                Value::Object(m),
                Ty::Struct { atomic: false, .. } | Ty::Map { atomic: false, .. } | Ty::Unknown,
            ) => {
                for (k, child) in m {
                    path.push(PathElement::Field(k.clone()));
                    let r = self.validate(child, &self.field(ty, k), path);
                    path.pop();
                    r?;
                }
                Ok(())
            }
            (Value::Array(a), Ty::List { kind, items }) if !matches!(kind, ListType::Atomic) => {
                let items_list =
                    list_items(kind, a).map_err(|e| format!("{}{e}", path_string(path)))?;
                for (pe, item) in items_list {
                    path.push(pe);
                    let r = self.validate(item, items, path);
                    path.pop();
                    r?;
                }
                Ok(())
            }
            _ => Ok(()),
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
    /// they already exist).
    pub(crate) fn compare(
        &self,
        lhs: Option<&Value>,
        rhs: Option<&Value>,
        ty: &Ty,
        created: bool,
    ) -> Comparison {
        let mut c = Comparison::default();
        self.cmp_into(lhs, rhs, ty, created, false, &mut Vec::new(), &mut c);
        c
    }

    #[allow(clippy::too_many_arguments)]
    fn cmp_into(
        &self,
        lhs: Option<&Value>,
        rhs: Option<&Value>,
        ty: &Ty,
        created: bool,
        is_item: bool,
        path: &mut FieldPath,
        c: &mut Comparison,
    ) {
        let ls = lhs.map(|v| shape(v, ty));
        let rs = rhs.map(|v| shape(v, ty));
        let interior = match (&ls, &rs) {
            (Some(Shape::Fields(l)), Some(Shape::Fields(r))) => {
                let mut keys: Vec<&String> = l.keys().collect();
                keys.extend(r.keys().filter(|k| !l.contains_key(*k)));
                for k in keys {
                    path.push(PathElement::Field(k.clone()));
                    self.cmp_into(
                        l.get(k),
                        r.get(k),
                        &self.field(ty, k),
                        created,
                        false,
                        path,
                        c,
                    );
                    path.pop();
                }
                true
            }
            (Some(Shape::Fields(m)), None) | (None, Some(Shape::Fields(m))) => {
                let left = lhs.is_some();
                for (k, v) in m.iter() {
                    path.push(PathElement::Field(k.clone()));
                    let (l, r) = if left {
                        (Some(v), None)
                    } else {
                        (None, Some(v))
                    };
                    self.cmp_into(l, r, &self.field(ty, k), created, false, path, c);
                    path.pop();
                }
                true
            }
            (Some(Shape::Items(l)), Some(Shape::Items(r))) => {
                let ity = items_ty(ty);
                let mut pes: Vec<&PathElement> = l.iter().map(|(p, _)| p).collect();
                pes.extend(
                    r.iter()
                        .map(|(p, _)| p)
                        .filter(|p| !l.iter().any(|(q, _)| q == *p)),
                );
                for pe in pes {
                    let lv = l.iter().find(|(p, _)| p == pe).map(|(_, v)| *v);
                    let rv = r.iter().find(|(p, _)| p == pe).map(|(_, v)| *v);
                    path.push(pe.clone());
                    self.cmp_into(lv, rv, &ity, created, true, path, c);
                    path.pop();
                }
                true
            }
            (Some(Shape::Items(items)), None) | (None, Some(Shape::Items(items))) => {
                let ity = items_ty(ty);
                let left = lhs.is_some();
                for (pe, v) in items {
                    path.push(pe.clone());
                    let (l, r) = if left {
                        (Some(*v), None)
                    } else {
                        (None, Some(*v))
                    };
                    self.cmp_into(l, r, &ity, created, true, path, c);
                    path.pop();
                }
                true
            }
            _ => false,
        };
        if !interior {
            match (lhs, rhs) {
                (None, Some(_)) => c.added.insert(path),
                (Some(_), None) => c.removed.insert(path),
                (Some(l), Some(r)) if !json_eq(l, r) => c.modified.insert(path),
                _ => {}
            }
            return;
        }
        match (lhs, rhs) {
            (None, Some(_)) => {
                let named_struct = matches!(ty, Ty::Struct { .. }) && !is_item;
                if !(created && named_struct) {
                    c.added.insert(path);
                }
            }
            (Some(_), None) => c.removed.insert(path),
            _ => {}
        }
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
