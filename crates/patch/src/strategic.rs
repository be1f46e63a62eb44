//! Strategic merge patch (`application/strategic-merge-patch+json`).
//!
//! Semantics follow upstream's `apimachinery/pkg/util/strategicpatch` when applying
//! a patch (merge options `MergeParallelList` and `IgnoreUnmatchedNulls`):
//! - objects merge recursively, `null` deletes a key;
//! - `$patch: replace` in an object replaces it, `$patch: delete` empties it;
//! - `$retainKeys: [...]` clears the fields of the original object not listed;
//! - lists whose field has patch strategy `merge` merge: lists of objects by merge
//!   key (matched elements merge recursively, others are added), lists of
//!   primitives as a union; elements `{<key>: v, "$patch": "delete"}` are removed,
//!   an element `{"$patch": "replace"}` replaces the whole list;
//! - `$deleteFromPrimitiveList/<field>: [...]` removes primitives from a list;
//! - `$setElementOrder/<field>: [...]` orders the merged list;
//! - other lists are replaced.
//!
//! Directive keys never reach the result.

use serde_json::{Map, Value};

use crate::gofmt::go_fmt;
use crate::{json_eq, json_kind_name, FieldMeta, PatchError, PatchSchema};

const DIRECTIVE: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const DELETE_FROM_PRIMITIVE_LIST: &str = "$deleteFromPrimitiveList";
const SET_ELEMENT_ORDER: &str = "$setElementOrder";

const BAD_PRIMITIVE_LIST: &str = "invalid patch format of primitive list";
const BAD_RETAIN_KEYS: &str = "invalid patch format of retainKeys";
const BAD_SET_ELEMENT_ORDER: &str = "invalid patch format of setElementOrder list";
const NO_LIST_OF_LISTS: &str = "lists of lists are not supported";

/// Applies a strategic merge patch to `doc` and returns the result.
///
/// `root_type` is the OpenAPI definition name of `doc`'s type (e.g.
/// `io.k8s.api.apps.v1.Deployment`); `schema` gives the patch strategy and merge
/// key of each field. With [`crate::NoSchema`] (or fields the schema doesn't know),
/// objects merge and lists are replaced.
///
/// Accepts what `kubectl apply` / `kubectl patch` send, including
/// `$setElementOrder/<field>`, `$deleteFromPrimitiveList/<field>`, `$retainKeys`
/// and `$patch` directives.
pub fn apply_strategic_merge_patch(
    doc: &Value,
    patch: &Value,
    schema: &dyn PatchSchema,
    root_type: &str,
) -> Result<Value, PatchError> {
    let Value::Object(original) = doc else {
        return Err(PatchError::BadRequest("invalid JSON document".to_string()));
    };
    let Value::Object(patch) = patch else {
        return Err(PatchError::BadRequest(format!(
            "json: cannot unmarshal {} into Go value of type map[string]interface {{}}",
            json_kind_name(patch)
        )));
    };
    let merger = Merger { schema };
    let ctx = Ctx {
        type_name: (!root_type.is_empty()).then(|| root_type.to_string()),
        map_values: false,
    };
    merger
        .merge_map(original.clone(), patch.clone(), &ctx)
        .map(Value::Object)
}

/// Where in the schema a JSON object sits.
#[derive(Clone, Debug, Default)]
struct Ctx {
    /// OpenAPI type of the object (or of the map's values when `map_values`).
    type_name: Option<String>,
    /// The object is an additionalProperties map: every key has type `type_name`.
    map_values: bool,
}

impl Ctx {
    fn of_field(meta: &FieldMeta) -> Ctx {
        Ctx {
            type_name: meta.type_name.clone(),
            map_values: meta.is_map && !meta.is_list,
        }
    }

    fn of_elements(meta: &FieldMeta) -> Ctx {
        Ctx {
            type_name: meta.type_name.clone(),
            map_values: false,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Strategy {
    None,
    Merge,
    Replace,
}

fn strategy(meta: &FieldMeta) -> Strategy {
    if meta.patch_strategy.iter().any(|s| s == "replace") {
        Strategy::Replace
    } else if meta.patch_strategy.iter().any(|s| s == "merge") {
        Strategy::Merge
    } else {
        Strategy::None
    }
}

/// Kind of the elements of a list, as upstream's `sliceElementType` sees them.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Null,
    Bool,
    Number,
    String,
    Object,
}

fn kind_of(v: &Value) -> Result<Kind, PatchError> {
    Ok(match v {
        Value::Null => Kind::Null,
        Value::Bool(_) => Kind::Bool,
        Value::Number(_) => Kind::Number,
        Value::String(_) => Kind::String,
        Value::Object(_) => Kind::Object,
        Value::Array(_) => return Err(PatchError::Unprocessable(NO_LIST_OF_LISTS.to_string())),
    })
}

/// The common kind of the elements of `lists`; None when they are all empty.
fn element_kind(lists: &[&[Value]]) -> Result<Option<Kind>, PatchError> {
    let mut kind = None;
    for list in lists {
        for v in list.iter() {
            let k = kind_of(v)?;
            match kind {
                None => kind = Some(k),
                Some(prev) if prev != k => {
                    let all: Vec<Value> = lists.iter().map(|l| Value::Array(l.to_vec())).collect();
                    return Err(PatchError::Merge(format!(
                        "list element types are not identical: {}",
                        go_fmt(&Value::Array(all))
                    )));
                }
                Some(_) => {}
            }
        }
    }
    Ok(kind)
}

fn no_merge_key(m: &Map<String, Value>, key: &str) -> PatchError {
    PatchError::Merge(format!(
        "map: {} does not contain declared merge key: {key}",
        go_fmt(&Value::Object(m.clone()))
    ))
}

fn bad_patch_type(t: &Value, m: &Map<String, Value>) -> PatchError {
    PatchError::Merge(format!(
        "unknown patch type: {} in map: {}",
        go_fmt(t),
        go_fmt(&Value::Object(m.clone()))
    ))
}

fn bad_arg_type(expected: &str, actual: &Value) -> PatchError {
    let actual = match actual {
        Value::Null => "<nil>",
        Value::Bool(_) => "bool",
        Value::Number(_) => "float64",
        Value::String(_) => "string",
        Value::Array(_) => "[]interface {}",
        Value::Object(_) => "map[string]interface {}",
    };
    PatchError::Merge(format!("expected a {expected}, but received a {actual}"))
}

/// Splits `key` = `<prefix>/<field>` and returns `field`.
fn extract_key<'k>(key: &'k str, prefix: &str, err: &str) -> Result<&'k str, PatchError> {
    match key.split_once('/') {
        Some((p, rest)) if p == prefix => Ok(rest),
        _ => Err(PatchError::BadRequest(err.to_string())),
    }
}

/// Position of `item` in `list`: by merge key value for objects, by value otherwise.
fn index_in(list: &[Value], item: &Value, merge_key: Option<&str>) -> Option<usize> {
    match merge_key {
        Some(key) => {
            let want = item.get(key)?;
            list.iter()
                .position(|v| v.get(key).is_some_and(|got| json_eq(got, want)))
        }
        None => list.iter().position(|v| json_eq(v, item)),
    }
}

fn has_directive(v: &Value) -> bool {
    v.as_object().is_some_and(|m| m.contains_key(DIRECTIVE))
}

fn is_delete_directive(v: &Value) -> bool {
    v.get(DIRECTIVE).and_then(Value::as_str) == Some("delete")
}

struct Merger<'s> {
    schema: &'s dyn PatchSchema,
}

impl Merger<'_> {
    fn field_meta(&self, ctx: &Ctx, key: &str) -> FieldMeta {
        if ctx.map_values {
            return FieldMeta {
                type_name: ctx.type_name.clone(),
                ..FieldMeta::default()
            };
        }
        match &ctx.type_name {
            Some(t) => self.schema.field(t, key).unwrap_or_default(),
            None => FieldMeta::default(),
        }
    }

    /// Merges `patch` into the object `original` of type `ctx`.
    fn merge_map(
        &self,
        mut original: Map<String, Value>,
        mut patch: Map<String, Value>,
        ctx: &Ctx,
    ) -> Result<Map<String, Value>, PatchError> {
        if let Some(directive) = patch.get(DIRECTIVE) {
            return match directive.as_str() {
                Some("replace") => {
                    patch.shift_remove(DIRECTIVE);
                    self.merge_map(Map::new(), patch, ctx)
                }
                Some("delete") => Ok(Map::new()),
                _ => Err(bad_patch_type(directive, &patch)),
            };
        }

        self.apply_retain_keys(&mut original, &mut patch)?;
        self.apply_set_element_order(&mut original, &mut patch, ctx)?;

        for (key, patch_v) in patch {
            let (key, is_delete_list) = if key.starts_with(DELETE_FROM_PRIMITIVE_LIST) {
                let field = extract_key(&key, DELETE_FROM_PRIMITIVE_LIST, BAD_PRIMITIVE_LIST)?;
                (field.to_string(), true)
            } else {
                (key, false)
            };

            if patch_v.is_null() {
                original.shift_remove(&key);
                continue;
            }
            let meta = self.field_meta(ctx, &key);

            let Some(orig_v) = original.get_mut(&key) else {
                if !is_delete_list {
                    if let Some(v) = self.clean_value(patch_v, &meta)? {
                        original.insert(key, v);
                    }
                }
                continue;
            };
            let orig_v = std::mem::take(orig_v);

            let merged = match (orig_v, patch_v) {
                (Value::Object(o), Value::Object(p)) if !is_delete_list => {
                    if strategy(&meta) == Strategy::Replace {
                        self.clean_value(Value::Object(p), &meta)?
                    } else {
                        Some(Value::Object(self.merge_map(
                            o,
                            p,
                            &Ctx::of_field(&meta),
                        )?))
                    }
                }
                (Value::Array(o), Value::Array(p)) => {
                    if is_delete_list {
                        Some(Value::Array(delete_from_list(o, &p)?))
                    } else if strategy(&meta) == Strategy::Merge {
                        Some(Value::Array(self.merge_list(o, p, &meta)?))
                    } else {
                        self.clean_value(Value::Array(p), &meta)?
                    }
                }
                // A deletion list only applies to a list: leave anything else as is.
                (o, _) if is_delete_list => Some(o),
                (_, p) => self.clean_value(p, &meta)?,
            };
            match merged {
                Some(v) => {
                    original.insert(key, v);
                }
                None => {
                    original.shift_remove(&key);
                }
            }
        }
        Ok(original)
    }

    /// The value to store for a patch value that has nothing to merge with:
    /// directives are processed against nothing and nulls dropped. None when the
    /// value is a `$patch: delete` directive (the key is dropped).
    fn clean_value(&self, v: Value, meta: &FieldMeta) -> Result<Option<Value>, PatchError> {
        match v {
            Value::Null => Ok(None),
            Value::Object(m) => {
                if m.get(DIRECTIVE).and_then(Value::as_str) == Some("delete") {
                    return Ok(None);
                }
                Ok(Some(Value::Object(self.merge_map(
                    Map::new(),
                    m,
                    &Ctx::of_field(meta),
                )?)))
            }
            Value::Array(items) => {
                // Like upstream, a list with nothing to merge with is taken as is,
                // less its directive elements (`$patch: delete` / `replace` markers).
                let elem_ctx = Ctx::of_elements(meta);
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        Value::Object(m) => {
                            if m.contains_key(DIRECTIVE) {
                                continue;
                            }
                            out.push(Value::Object(self.merge_map(Map::new(), m, &elem_ctx)?));
                        }
                        other => out.push(other),
                    }
                }
                Ok(Some(Value::Array(out)))
            }
            other => Ok(Some(other)),
        }
    }

    /// `$retainKeys`: clears the fields of `original` not listed, after checking
    /// that the patch only sets listed fields.
    fn apply_retain_keys(
        &self,
        original: &mut Map<String, Value>,
        patch: &mut Map<String, Value>,
    ) -> Result<(), PatchError> {
        let Some(retain) = patch.shift_remove(RETAIN_KEYS) else {
            return Ok(());
        };
        let Value::Array(retain) = retain else {
            return Err(PatchError::BadRequest(BAD_RETAIN_KEYS.to_string()));
        };
        let listed = |k: &str| retain.iter().any(|r| r.as_str() == Some(k));
        for (k, v) in patch.iter() {
            if v.is_null()
                || k.starts_with(DELETE_FROM_PRIMITIVE_LIST)
                || k.starts_with(SET_ELEMENT_ORDER)
            {
                continue;
            }
            if !listed(k) {
                return Err(PatchError::BadRequest(BAD_RETAIN_KEYS.to_string()));
            }
        }
        original.retain(|k, _| listed(k));
        Ok(())
    }

    /// Processes every `$setElementOrder/<field>` with the list `<field>` of the
    /// patch: merges them into `original` in the requested order and removes both
    /// from `patch`.
    fn apply_set_element_order(
        &self,
        original: &mut Map<String, Value>,
        patch: &mut Map<String, Value>,
        ctx: &Ctx,
    ) -> Result<(), PatchError> {
        let keys: Vec<String> = patch
            .keys()
            .filter(|k| k.starts_with(SET_ELEMENT_ORDER))
            .cloned()
            .collect();
        for key in keys {
            let Some(order) = patch.shift_remove(&key) else {
                continue;
            };
            let Value::Array(order) = order else {
                return Err(PatchError::BadRequest(BAD_SET_ELEMENT_ORDER.to_string()));
            };
            let field = extract_key(&key, SET_ELEMENT_ORDER, BAD_SET_ELEMENT_ORDER)?.to_string();
            let original_list = match original.get(&field) {
                None => None,
                Some(Value::Array(l)) => Some(l.clone()),
                Some(other) => return Err(bad_arg_type("[]interface {}", other)),
            };
            let patch_list = match patch.get(&field) {
                None => None,
                Some(Value::Array(l)) => Some(l.clone()),
                Some(other) => return Err(bad_arg_type("[]interface {}", other)),
            };
            let meta = self.field_meta(ctx, &field);
            let merge_key = meta.merge_key.as_deref();
            if let Some(p) = &patch_list {
                validate_patch_with_order(p, &order, merge_key)?;
            }

            let merged = match (&original_list, patch_list) {
                (None, None) => continue,
                (Some(o), None) => o.clone(),
                (None, Some(p)) => match self.clean_value(Value::Array(p), &meta)? {
                    Some(Value::Array(l)) => l,
                    _ => Vec::new(),
                },
                (Some(o), Some(p)) => {
                    if strategy(&meta) == Strategy::Merge {
                        self.merge_list(o.clone(), p, &meta)?
                    } else {
                        match self.clean_value(Value::Array(p), &meta)? {
                            Some(Value::Array(l)) => l,
                            _ => Vec::new(),
                        }
                    }
                }
            };
            patch.shift_remove(&field);

            let original_list = original_list.unwrap_or_default();
            let ordered = match element_kind(&[&original_list, &merged])? {
                None => merged,
                Some(kind) => {
                    let key = if kind == Kind::Object {
                        merge_key
                    } else {
                        None
                    };
                    if kind == Kind::Object && key.is_none() {
                        // Nothing to order objects by: keep the merged order.
                        merged
                    } else {
                        let (patch_items, server_only) = partition(merged, &order, key)?;
                        normalize_order(patch_items, server_only, &order, &original_list, key)?
                    }
                }
            };
            original.insert(field, Value::Array(ordered));
        }
        Ok(())
    }

    /// Merges the list `patch` into the list `original` of a field with patch
    /// strategy `merge`.
    fn merge_list(
        &self,
        original: Vec<Value>,
        patch: Vec<Value>,
        meta: &FieldMeta,
    ) -> Result<Vec<Value>, PatchError> {
        if original.is_empty() && patch.is_empty() {
            return Ok(original);
        }
        let Some(kind) = element_kind(&[&original, &patch])? else {
            return Ok(original);
        };
        if kind != Kind::Object {
            // Union of primitives, without duplicates.
            let mut merged: Vec<Value> = Vec::with_capacity(original.len() + patch.len());
            for v in original.iter().chain(patch.iter()) {
                if !merged.iter().any(|m| json_eq(m, v)) {
                    merged.push(v.clone());
                }
            }
            let (patch_items, server_only) = partition(merged, &patch, None)?;
            return normalize_order(patch_items, server_only, &patch, &original, None);
        }

        let Some(merge_key) = meta.merge_key.as_deref() else {
            return Err(PatchError::Merge(format!(
                "cannot merge lists without merge key for {}",
                meta.type_name.as_deref().unwrap_or("unknown type")
            )));
        };
        let elem_ctx = Ctx::of_elements(meta);

        // Special elements: `$patch: delete` removes, `$patch: replace` replaces.
        let mut original = original;
        let mut plain = Vec::with_capacity(patch.len());
        let mut replace = false;
        for item in patch {
            let Value::Object(m) = item else {
                continue;
            };
            let Some(directive) = m.get(DIRECTIVE) else {
                plain.push(Value::Object(m));
                continue;
            };
            match directive.as_str() {
                Some("delete") => {
                    let Some(value) = m.get(merge_key) else {
                        return Err(no_merge_key(&m, merge_key));
                    };
                    original.retain(|o| !o.get(merge_key).is_some_and(|v| json_eq(v, value)));
                }
                Some("replace") => replace = true,
                Some("merge") => {
                    return Err(PatchError::Merge(
                        "merging lists cannot yet be specified in the patch".to_string(),
                    ))
                }
                _ => return Err(bad_patch_type(directive, &m)),
            }
        }
        let (original, patch) = if replace {
            let mut replaced = Vec::with_capacity(plain.len());
            for item in plain {
                if let Value::Object(m) = item {
                    replaced.push(Value::Object(self.merge_map(Map::new(), m, &elem_ctx)?));
                }
            }
            (replaced, Vec::new())
        } else {
            (original, plain)
        };

        // Merge matched elements, add the others.
        let mut merged = original.clone();
        for item in &patch {
            let Value::Object(m) = item else {
                continue;
            };
            let Some(value) = m.get(merge_key) else {
                return Err(no_merge_key(m, merge_key));
            };
            let mut found = None;
            for (i, o) in merged.iter().enumerate() {
                let Value::Object(om) = o else {
                    return Err(PatchError::Merge(format!("value for key {i} is not a map")));
                };
                if om.get(merge_key).is_some_and(|v| json_eq(v, value)) {
                    found = Some(i);
                    break;
                }
            }
            match found {
                Some(i) => {
                    let current = match std::mem::take(&mut merged[i]) {
                        Value::Object(om) => om,
                        _ => Map::new(),
                    };
                    merged[i] = Value::Object(self.merge_map(current, m.clone(), &elem_ctx)?);
                }
                None => merged.push(Value::Object(self.merge_map(
                    Map::new(),
                    m.clone(),
                    &elem_ctx,
                )?)),
            }
        }

        let (patch_items, server_only) = partition(merged, &patch, Some(merge_key))?;
        normalize_order(patch_items, server_only, &patch, &original, Some(merge_key))
    }
}

/// `$deleteFromPrimitiveList`: removes from `original` every value listed.
fn delete_from_list(original: Vec<Value>, to_delete: &[Value]) -> Result<Vec<Value>, PatchError> {
    match element_kind(&[&original, to_delete])? {
        Some(Kind::Object) => Err(PatchError::BadRequest(BAD_PRIMITIVE_LIST.to_string())),
        _ => Ok(original
            .into_iter()
            .filter(|v| !to_delete.iter().any(|d| json_eq(d, v)))
            .collect()),
    }
}

/// Checks that the (non-deleted) items of a patch list appear in the same relative
/// order in its `$setElementOrder` list.
fn validate_patch_with_order(
    patch: &[Value],
    order: &[Value],
    merge_key: Option<&str>,
) -> Result<(), PatchError> {
    if patch.is_empty() || order.is_empty() {
        return Ok(());
    }
    let non_delete: Vec<&Value> = match merge_key {
        Some(_) => {
            let mut kept = Vec::with_capacity(patch.len());
            for v in patch {
                if !v.is_object() {
                    return Err(bad_arg_type("map[string]interface {}", v));
                }
                if !is_delete_directive(v) {
                    kept.push(v);
                }
            }
            kept
        }
        None => patch.iter().collect(),
    };
    let (mut pi, mut oi) = (0, 0);
    while pi < non_delete.len() && oi < order.len() {
        if has_directive(non_delete[pi]) {
            pi += 1;
            continue;
        }
        let equal = match merge_key {
            None => json_eq(non_delete[pi], &order[oi]),
            Some(key) => {
                let left = non_delete[pi]
                    .as_object()
                    .ok_or_else(|| bad_arg_type("map[string]interface {}", non_delete[pi]))?;
                let right = order[oi]
                    .as_object()
                    .ok_or_else(|| bad_arg_type("map[string]interface {}", &order[oi]))?;
                let l = left.get(key).ok_or_else(|| no_merge_key(left, key))?;
                let r = right.get(key).ok_or_else(|| no_merge_key(right, key))?;
                json_eq(l, r)
            }
        };
        if equal {
            pi += 1;
        }
        oi += 1;
    }
    if pi < non_delete.len() && oi >= order.len() {
        return Err(PatchError::Merge(format!(
            "The order in patch list:\n{}\n doesn't match {SET_ELEMENT_ORDER} list:\n{}\n",
            go_fmt(&Value::Array(patch.to_vec())),
            go_fmt(&Value::Array(order.to_vec()))
        )));
    }
    Ok(())
}

/// Splits `merged` into the items present in `by` and the others (server-only).
fn partition(
    merged: Vec<Value>,
    by: &[Value],
    merge_key: Option<&str>,
) -> Result<(Vec<Value>, Vec<Value>), PatchError> {
    let mut in_patch = Vec::new();
    let mut server_only = Vec::new();
    for v in merged {
        if let Some(key) = merge_key {
            match &v {
                Value::Object(m) if !m.contains_key(key) => return Err(no_merge_key(m, key)),
                Value::Object(_) => {}
                other => return Err(bad_arg_type("map[string]interface {}", other)),
            }
        }
        if index_in(by, &v, merge_key).is_some() {
            in_patch.push(v);
        } else {
            server_only.push(v);
        }
    }
    Ok((in_patch, server_only))
}

/// Sorts `to_sort` by the positions of its items in `order` (stable; items not in
/// `order` keep their place relative to each other and go last).
fn sort_by_order(
    to_sort: Vec<Value>,
    order: &[Value],
    merge_key: Option<&str>,
) -> Result<Vec<Value>, PatchError> {
    let mut to_sort = to_sort;
    let mut deleted = Vec::new();
    if let Some(key) = merge_key {
        for v in to_sort.iter().chain(order.iter()) {
            match v {
                Value::Object(m) if !m.contains_key(key) => return Err(no_merge_key(m, key)),
                Value::Object(_) => {}
                other => return Err(bad_arg_type("map[string]interface {}", other)),
            }
        }
        let (keep, del): (Vec<Value>, Vec<Value>) =
            to_sort.into_iter().partition(|v| !is_delete_directive(v));
        to_sort = keep;
        deleted = del;
    }
    let mut keyed: Vec<(usize, Value)> = to_sort
        .into_iter()
        .map(|v| (index_in(order, &v, merge_key).unwrap_or(usize::MAX), v))
        .collect();
    keyed.sort_by_key(|(i, _)| *i);
    let mut out: Vec<Value> = keyed.into_iter().map(|(_, v)| v).collect();
    out.extend(deleted);
    Ok(out)
}

/// Orders the merged list: patch items by `patch_order`, server-only items by
/// their order in the live list, then interleaves them. A server-only item goes
/// before a patch item only when both are in the live list and it came first
/// there; otherwise the patch item goes first (as upstream's `mergeSortedSlice`).
fn normalize_order(
    patch_items: Vec<Value>,
    server_only: Vec<Value>,
    patch_order: &[Value],
    server_order: &[Value],
    merge_key: Option<&str>,
) -> Result<Vec<Value>, PatchError> {
    let patch_items = sort_by_order(patch_items, patch_order, merge_key)?;
    let server_only = sort_by_order(server_only, server_order, merge_key)?;
    let mut out = Vec::with_capacity(patch_items.len() + server_only.len());
    let mut left = server_only.into_iter().peekable();
    let mut right = patch_items.into_iter().peekable();
    loop {
        let take_left = match (left.peek(), right.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(l), Some(r)) => {
                match (
                    index_in(server_order, l, merge_key),
                    index_in(server_order, r, merge_key),
                ) {
                    (Some(li), Some(ri)) => li < ri,
                    _ => false,
                }
            }
        };
        let next = if take_left { left.next() } else { right.next() };
        if let Some(v) = next {
            out.push(v);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NoSchema;
    use serde_json::json;
    use std::collections::HashMap;

    /// A hand-written slice of the Kubernetes schema: Deployment down to containers.
    struct TestSchema(HashMap<(&'static str, &'static str), FieldMeta>);

    fn obj(t: &str) -> FieldMeta {
        FieldMeta {
            type_name: Some(t.to_string()),
            ..FieldMeta::default()
        }
    }
    fn map_of(t: Option<&str>) -> FieldMeta {
        FieldMeta {
            type_name: t.map(str::to_string),
            is_map: true,
            ..FieldMeta::default()
        }
    }
    fn merge_list(t: Option<&str>, key: Option<&str>, strategy: &[&str]) -> FieldMeta {
        FieldMeta {
            type_name: t.map(str::to_string),
            is_list: true,
            patch_strategy: strategy.iter().map(|s| s.to_string()).collect(),
            merge_key: key.map(str::to_string),
            ..FieldMeta::default()
        }
    }
    fn atomic_list(t: Option<&str>) -> FieldMeta {
        merge_list(t, None, &[])
    }

    impl TestSchema {
        fn new() -> Self {
            let mut m = HashMap::new();
            m.insert(("Deployment", "metadata"), obj("ObjectMeta"));
            m.insert(("Deployment", "spec"), obj("DeploymentSpec"));
            m.insert(("ObjectMeta", "labels"), map_of(None));
            m.insert(("ObjectMeta", "annotations"), map_of(None));
            m.insert(
                ("ObjectMeta", "finalizers"),
                merge_list(None, None, &["merge"]),
            );
            m.insert(
                ("ObjectMeta", "ownerReferences"),
                merge_list(Some("OwnerReference"), Some("uid"), &["merge"]),
            );
            m.insert(("DeploymentSpec", "template"), obj("PodTemplateSpec"));
            m.insert(("DeploymentSpec", "selector"), obj("LabelSelector"));
            m.insert(
                ("DeploymentSpec", "strategy"),
                FieldMeta {
                    patch_strategy: vec!["retainKeys".into()],
                    ..obj("DeploymentStrategy")
                },
            );
            m.insert(
                ("DeploymentStrategy", "rollingUpdate"),
                obj("RollingUpdateDeployment"),
            );
            m.insert(("LabelSelector", "matchLabels"), map_of(None));
            m.insert(("PodTemplateSpec", "metadata"), obj("ObjectMeta"));
            m.insert(("PodTemplateSpec", "spec"), obj("PodSpec"));
            m.insert(
                ("PodSpec", "containers"),
                merge_list(Some("Container"), Some("name"), &["merge"]),
            );
            m.insert(
                ("PodSpec", "initContainers"),
                merge_list(Some("Container"), Some("name"), &["merge"]),
            );
            m.insert(
                ("PodSpec", "volumes"),
                merge_list(Some("Volume"), Some("name"), &["merge", "retainKeys"]),
            );
            m.insert(("PodSpec", "tolerations"), atomic_list(Some("Toleration")));
            m.insert(("PodSpec", "nodeSelector"), map_of(None));
            m.insert(
                ("Container", "env"),
                merge_list(Some("EnvVar"), Some("name"), &["merge"]),
            );
            m.insert(
                ("Container", "ports"),
                merge_list(Some("ContainerPort"), Some("containerPort"), &["merge"]),
            );
            m.insert(
                ("Container", "volumeMounts"),
                merge_list(Some("VolumeMount"), Some("mountPath"), &["merge"]),
            );
            m.insert(("Container", "args"), atomic_list(None));
            m.insert(("Container", "resources"), obj("ResourceRequirements"));
            m.insert(("ResourceRequirements", "limits"), map_of(None));
            m.insert(("EnvVar", "valueFrom"), obj("EnvVarSource"));
            m.insert(("Volume", "configMap"), obj("ConfigMapVolumeSource"));
            m.insert(("Volume", "emptyDir"), obj("EmptyDirVolumeSource"));
            m.insert(
                ("ConfigMapVolumeSource", "items"),
                atomic_list(Some("KeyToPath")),
            );
            TestSchema(m)
        }
    }

    impl PatchSchema for TestSchema {
        fn field(&self, type_name: &str, field: &str) -> Option<FieldMeta> {
            self.0
                .iter()
                .find(|((t, f), _)| *t == type_name && *f == field)
                .map(|(_, m)| m.clone())
        }
    }

    fn smp(doc: &Value, patch: &Value) -> Result<Value, PatchError> {
        apply_strategic_merge_patch(doc, patch, &TestSchema::new(), "Deployment")
    }

    fn live_deployment() -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": "web",
                "namespace": "default",
                "labels": {"app": "web"},
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
                "finalizers": ["a.example.com/x"],
                "resourceVersion": "42"
            },
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {
                        "containers": [
                            {
                                "name": "nginx",
                                "image": "nginx:1.25",
                                "imagePullPolicy": "IfNotPresent",
                                "ports": [{"containerPort": 80, "protocol": "TCP"}],
                                "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                                "terminationMessagePath": "/dev/termination-log"
                            },
                            {
                                "name": "sidecar",
                                "image": "busybox:1.36",
                                "args": ["sleep", "infinity"],
                                "volumeMounts": [{"name": "data", "mountPath": "/data"}]
                            }
                        ],
                        "volumes": [{"name": "data", "emptyDir": {}}],
                        "tolerations": [{"key": "k1", "operator": "Exists"}],
                        "restartPolicy": "Always"
                    }
                }
            }
        })
    }

    fn containers(v: &Value) -> &Vec<Value> {
        v["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
    }

    #[test]
    fn kubectl_apply_changes_image_of_one_container() {
        // What kubectl apply sends when the manifest changes only nginx's image.
        let patch = json!({
            "metadata": {"annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"new\":1}\n"}},
            "spec": {"template": {"spec": {
                "$setElementOrder/containers": [{"name": "nginx"}, {"name": "sidecar"}],
                "containers": [{"image": "nginx:1.26", "name": "nginx"}]
            }}}
        });
        let out = smp(&live_deployment(), &patch).unwrap();
        let mut expected = live_deployment();
        expected["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] =
            json!("{\"new\":1}\n");
        expected["spec"]["template"]["spec"]["containers"][0]["image"] = json!("nginx:1.26");
        assert_eq!(out, expected);
        // Field order of the merged container is kept.
        let keys: Vec<_> = containers(&out)[0]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        assert_eq!(keys[..2], ["name", "image"]);
    }

    #[test]
    fn adds_env_var_to_one_container() {
        // Old-style patch without $setElementOrder: upstream puts patch items that
        // are new before the server-only ones.
        let patch = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "nginx", "env": [{"name": "C", "value": "3"}]}
        ]}}}});
        let out = smp(&live_deployment(), &patch).unwrap();
        let c = &containers(&out)[0];
        assert_eq!(
            c["env"],
            json!([{"name": "C", "value": "3"}, {"name": "A", "value": "1"}, {"name": "B", "value": "2"}])
        );
        assert_eq!(c["image"], json!("nginx:1.25"));
        assert_eq!(containers(&out)[1]["name"], json!("sidecar"));

        // kubectl sends $setElementOrder/env, which puts the new variable last.
        let patch = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "nginx"}, {"name": "sidecar"}],
            "containers": [{
                "$setElementOrder/env": [{"name": "A"}, {"name": "B"}, {"name": "C"}],
                "env": [{"name": "C", "value": "3"}],
                "name": "nginx"
            }]
        }}}});
        let out = smp(&live_deployment(), &patch).unwrap();
        assert_eq!(
            containers(&out)[0]["env"],
            json!([{"name": "A", "value": "1"}, {"name": "B", "value": "2"}, {"name": "C", "value": "3"}])
        );
    }

    #[test]
    fn changes_env_value_and_deletes_env_field_with_null() {
        let patch = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "nginx", "env": [{"name": "B", "value": null, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]}
        ]}}}});
        let out = smp(&live_deployment(), &patch).unwrap();
        assert_eq!(
            containers(&out)[0]["env"],
            json!([{"name": "A", "value": "1"}, {"name": "B", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}])
        );
    }

    #[test]
    fn deletes_container_with_patch_delete() {
        // kubectl apply after removing the sidecar from the manifest.
        let patch = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "nginx"}],
            "containers": [{"$patch": "delete", "name": "sidecar"}]
        }}}});
        let out = smp(&live_deployment(), &patch).unwrap();
        assert_eq!(containers(&out).len(), 1);
        assert_eq!(
            containers(&out)[0],
            live_deployment()["spec"]["template"]["spec"]["containers"][0]
        );

        // Without $setElementOrder too, and deleting a missing element is a no-op.
        let patch = json!({"spec": {"template": {"spec": {"containers": [
            {"$patch": "delete", "name": "nginx"}, {"$patch": "delete", "name": "ghost"}
        ]}}}});
        let out = smp(&live_deployment(), &patch).unwrap();
        let names: Vec<_> = containers(&out).iter().map(|c| c["name"].clone()).collect();
        assert_eq!(names, [json!("sidecar")]);
    }

    #[test]
    fn set_element_order_reorders_and_adds() {
        let patch = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "sidecar"}, {"name": "init"}, {"name": "nginx"}],
            "containers": [{"name": "init", "image": "alpine"}]
        }}}});
        let out = smp(&live_deployment(), &patch).unwrap();
        let names: Vec<_> = containers(&out)
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(names, ["sidecar", "init", "nginx"]);
        assert_eq!(containers(&out)[2]["image"], json!("nginx:1.25"));
    }

    #[test]
    fn set_element_order_only_reorders() {
        let patch = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "sidecar"}, {"name": "nginx"}]
        }}}});
        let out = smp(&live_deployment(), &patch).unwrap();
        assert_eq!(containers(&out)[0]["name"], json!("sidecar"));
        assert_eq!(
            containers(&out)[1]["ports"],
            json!([{"containerPort": 80, "protocol": "TCP"}])
        );
    }

    #[test]
    fn set_element_order_must_match_patch_order() {
        let patch = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "nginx"}, {"name": "sidecar"}],
            "containers": [{"name": "sidecar", "image": "x"}, {"name": "nginx", "image": "y"}]
        }}}});
        let err = smp(&live_deployment(), &patch).unwrap_err();
        assert!(
            err.to_string()
                .contains("doesn't match $setElementOrder list"),
            "{err}"
        );
    }

    #[test]
    fn retain_keys_clears_unlisted_fields() {
        // kubectl apply switching the strategy to Recreate.
        let patch = json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate", "rollingUpdate": null}}});
        let out = smp(&live_deployment(), &patch).unwrap();
        assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));

        // Volume source switch: emptyDir -> configMap on a merge,retainKeys list.
        let patch = json!({"spec": {"template": {"spec": {"volumes": [
            {"$retainKeys": ["configMap", "name"], "configMap": {"name": "cm"}, "name": "data"}
        ]}}}});
        let out = smp(&live_deployment(), &patch).unwrap();
        assert_eq!(
            out["spec"]["template"]["spec"]["volumes"],
            json!([{"name": "data", "configMap": {"name": "cm"}}])
        );
    }

    #[test]
    fn retain_keys_rejects_patch_fields_not_listed() {
        let patch = json!({"spec": {"strategy": {"$retainKeys": ["type"], "rollingUpdate": {"maxSurge": 1}}}});
        let err = smp(&live_deployment(), &patch).unwrap_err();
        assert_eq!(
            err,
            PatchError::BadRequest("invalid patch format of retainKeys".into())
        );
        let patch = json!({"spec": {"strategy": {"$retainKeys": "type"}}});
        assert_eq!(
            smp(&live_deployment(), &patch).unwrap_err().status_code(),
            400
        );
    }

    #[test]
    fn patch_replace_on_map_and_list() {
        let patch =
            json!({"spec": {"selector": {"$patch": "replace", "matchLabels": {"tier": "x"}}}});
        let out = smp(&live_deployment(), &patch).unwrap();
        assert_eq!(
            out["spec"]["selector"],
            json!({"matchLabels": {"tier": "x"}})
        );

        let patch = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "only", "image": "x"}, {"$patch": "replace"}
        ]}}}});
        let out = smp(&live_deployment(), &patch).unwrap();
        assert_eq!(
            containers(&out),
            &vec![json!({"name": "only", "image": "x"})]
        );
    }

    #[test]
    fn patch_delete_on_map_empties_it() {
        let patch = json!({"metadata": {"labels": {"$patch": "delete"}}});
        let out = smp(&live_deployment(), &patch).unwrap();
        assert_eq!(out["metadata"]["labels"], json!({}));
        assert_eq!(out["metadata"]["name"], json!("web"));
    }

    #[test]
    fn primitive_merge_list_is_a_union_and_delete_list_removes() {
        let patch = json!({"metadata": {"finalizers": ["b.example.com/y", "a.example.com/x"]}});
        let out = smp(&live_deployment(), &patch).unwrap();
        assert_eq!(
            out["metadata"]["finalizers"],
            json!(["b.example.com/y", "a.example.com/x"])
        );

        let patch =
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a.example.com/x"]}});
        let out = smp(&live_deployment(), &patch).unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!([]));

        // On a list that doesn't exist, nothing is created.
        let patch = json!({"metadata": {"$deleteFromPrimitiveList/nope": ["x"]}});
        let out = smp(&live_deployment(), &patch).unwrap();
        assert!(out["metadata"].get("nope").is_none());
        assert!(out["metadata"]
            .get("$deleteFromPrimitiveList/nope")
            .is_none());
    }

    #[test]
    fn kubectl_apply_adds_and_removes_finalizers() {
        let mut doc = live_deployment();
        doc["metadata"]["finalizers"] = json!(["f1", "f2", "f3"]);
        let patch = json!({"metadata": {
            "$setElementOrder/finalizers": ["f1", "f3", "f4"],
            "$deleteFromPrimitiveList/finalizers": ["f2"],
            "finalizers": ["f4"]
        }});
        let out = smp(&doc, &patch).unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!(["f1", "f3", "f4"]));
    }

    #[test]
    fn atomic_lists_are_replaced() {
        let patch = json!({"spec": {"template": {"spec": {
            "tolerations": [{"key": "k2", "operator": "Equal", "value": "v"}],
            "containers": [{"name": "sidecar", "args": ["sh"]}]
        }}}});
        let out = smp(&live_deployment(), &patch).unwrap();
        assert_eq!(
            out["spec"]["template"]["spec"]["tolerations"],
            json!([{"key": "k2", "operator": "Equal", "value": "v"}])
        );
        assert_eq!(containers(&out)[1]["args"], json!(["sh"]));
        assert_eq!(containers(&out)[1]["image"], json!("busybox:1.36"));
    }

    #[test]
    fn maps_merge_and_null_deletes() {
        let patch = json!({
            "metadata": {"labels": {"app": null, "tier": "web"}, "resourceVersion": null},
            "spec": {"replicas": 5}
        });
        let out = smp(&live_deployment(), &patch).unwrap();
        assert_eq!(out["metadata"]["labels"], json!({"tier": "web"}));
        assert!(out["metadata"].get("resourceVersion").is_none());
        assert_eq!(out["spec"]["replicas"], json!(5));
        assert_eq!(
            out["spec"]["selector"],
            json!({"matchLabels": {"app": "web"}})
        );
    }

    #[test]
    fn merges_by_non_name_keys() {
        let patch = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "nginx", "ports": [{"containerPort": 80, "name": "http"}, {"containerPort": 443}]},
            {"name": "sidecar", "volumeMounts": [{"mountPath": "/data", "readOnly": true}]}
        ]}}}});
        let out = smp(&live_deployment(), &patch).unwrap();
        assert_eq!(
            containers(&out)[0]["ports"],
            json!([{"containerPort": 80, "protocol": "TCP", "name": "http"}, {"containerPort": 443}])
        );
        assert_eq!(
            containers(&out)[1]["volumeMounts"],
            json!([{"name": "data", "mountPath": "/data", "readOnly": true}])
        );

        let mut doc = live_deployment();
        doc["metadata"]["ownerReferences"] = json!([{"uid": "u1", "kind": "X", "name": "a"}]);
        let patch = json!({"metadata": {"ownerReferences": [{"uid": "u1", "controller": true}, {"uid": "u2", "kind": "Y", "name": "b"}]}});
        let out = smp(&doc, &patch).unwrap();
        assert_eq!(
            out["metadata"]["ownerReferences"],
            json!([{"uid": "u1", "kind": "X", "name": "a", "controller": true}, {"uid": "u2", "kind": "Y", "name": "b"}])
        );
    }

    #[test]
    fn directives_never_leak_into_new_fields() {
        let patch = json!({"spec": {"template": {"spec": {
            "initContainers": [
                {"name": "init", "image": "x", "env": [{"name": "E", "value": null}]},
                {"$patch": "delete", "name": "ghost"}
            ],
            "$setElementOrder/initContainers": [{"name": "init"}],
            "nodeSelector": {"$patch": "replace", "disk": "ssd", "gone": null}
        }}}});
        let out = smp(&live_deployment(), &patch).unwrap();
        let spec = &out["spec"]["template"]["spec"];
        assert_eq!(
            spec["initContainers"],
            json!([{"name": "init", "image": "x", "env": [{"name": "E"}]}])
        );
        assert_eq!(spec["nodeSelector"], json!({"disk": "ssd"}));
        assert!(!out.to_string().contains('$'), "{out}");
    }

    #[test]
    fn malformed_patches_report_upstream_errors() {
        let patch = json!({"spec": {"template": {"spec": {"containers": [{"image": "nginx"}]}}}});
        let err = smp(&live_deployment(), &patch).unwrap_err();
        assert_eq!(
            err.to_string(),
            "map: map[image:nginx] does not contain declared merge key: name"
        );
        assert_eq!(err.status_code(), 500);

        let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "nginx", "$patch": "frob"}]}}}});
        let err = smp(&live_deployment(), &patch).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown patch type: frob in map: map[$patch:frob name:nginx]"
        );

        let patch = json!({"metadata": {"$patch": "frob"}});
        assert!(smp(&live_deployment(), &patch)
            .unwrap_err()
            .to_string()
            .starts_with("unknown patch type: frob"));

        let patch = json!({"spec": {"template": {"spec": {"containers": [{"$patch": "merge"}]}}}});
        assert_eq!(
            smp(&live_deployment(), &patch).unwrap_err().to_string(),
            "merging lists cannot yet be specified in the patch"
        );

        let patch = json!({"metadata": {"$deleteFromPrimitiveListfinalizers": ["x"]}});
        assert_eq!(
            smp(&live_deployment(), &patch).unwrap_err(),
            PatchError::BadRequest("invalid patch format of primitive list".into())
        );

        let patch = json!({"metadata": {"finalizers": [["nested"]]}});
        assert_eq!(
            smp(&live_deployment(), &patch).unwrap_err(),
            PatchError::Unprocessable("lists of lists are not supported".into())
        );

        let err = apply_strategic_merge_patch(&live_deployment(), &json!([1]), &NoSchema, "")
            .unwrap_err();
        assert_eq!(err.status_code(), 400);
    }

    #[test]
    fn no_schema_merges_maps_and_replaces_lists() {
        let out = apply_strategic_merge_patch(
            &live_deployment(),
            &json!({"metadata": {"labels": {"x": "y"}, "finalizers": ["z"]},
                    "spec": {"template": {"spec": {"containers": [{"name": "c"}]}}}}),
            &NoSchema,
            "",
        )
        .unwrap();
        assert_eq!(out["metadata"]["labels"], json!({"app": "web", "x": "y"}));
        assert_eq!(out["metadata"]["finalizers"], json!(["z"]));
        assert_eq!(containers(&out), &vec![json!({"name": "c"})]);
    }

    // Ordering cases from upstream's test suite ("preserve the order from the patch").
    #[test]
    fn ordering_matches_upstream() {
        let schema = TestSchema::new();
        let pod_spec = |containers: Value| json!({"containers": containers});
        let names = |v: &Value| -> Vec<String> {
            v["containers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["name"].as_str().unwrap().to_string())
                .collect()
        };
        let original = pod_spec(json!([{"name": "1"}, {"name": "2", "value": "b"}, {"name": "3"}]));
        let out = apply_strategic_merge_patch(
            &original,
            &pod_spec(json!([{"name": "3", "value": "c"}, {"name": "1", "value": "a"}])),
            &schema,
            "PodSpec",
        )
        .unwrap();
        assert_eq!(names(&out), ["2", "3", "1"]);
        assert_eq!(out["containers"][0]["value"], json!("b"));

        let original = json!({"finalizers": ["1", "2", "3"]});
        let out = apply_strategic_merge_patch(
            &original,
            &json!({"finalizers": ["3", "1"]}),
            &schema,
            "ObjectMeta",
        )
        .unwrap();
        assert_eq!(out["finalizers"], json!(["2", "3", "1"]));

        let original = json!({"finalizers": [1, 2]});
        let out = apply_strategic_merge_patch(
            &original,
            &json!({"finalizers": [2, 3]}),
            &schema,
            "ObjectMeta",
        )
        .unwrap();
        assert_eq!(out["finalizers"], json!([1, 2, 3]));
    }

    #[test]
    fn map_values_use_their_type() {
        // limits is a map of quantities: merged per key, values replaced.
        let doc = json!({"containers": [{"name": "c", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]});
        let patch = json!({"containers": [{"name": "c", "resources": {"limits": {"cpu": "2", "memory": null}}}]});
        let out = apply_strategic_merge_patch(&doc, &patch, &TestSchema::new(), "PodSpec").unwrap();
        assert_eq!(
            out["containers"][0]["resources"],
            json!({"limits": {"cpu": "2"}})
        );
    }

    #[test]
    fn input_is_not_modified() {
        let doc = live_deployment();
        let patch = json!({"spec": {"replicas": 9}});
        let _ = smp(&doc, &patch).unwrap();
        assert_eq!(doc, live_deployment());
    }
}
