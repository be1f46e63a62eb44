//! Sets of field paths (upstream's `fieldpath.Set`) and their `FieldsV1` encoding.

use std::cmp::Ordering;

use serde_json::{Map, Value};

use crate::PatchError;

/// One step of a field path.
///
/// Ordered as upstream orders path elements: field names first, then keys of
/// associative-list items, then set values, then list indices.
#[derive(Clone, Debug)]
pub enum PathElement {
    /// A field of an object (or a key of a map), encoded `f:<name>`.
    Field(String),
    /// The item of an associative list (`x-kubernetes-list-type: map`) whose key
    /// fields have these values; the pairs are sorted by field name. Encoded
    /// `k:{"name":"web"}`.
    Key(Vec<(String, Value)>),
    /// The item of a set (`x-kubernetes-list-type: set`) with this value, encoded
    /// `v:<json>`.
    Value(Value),
    /// The item at this index of a list, encoded `i:<n>`.
    Index(usize),
}

/// A path to a field: the steps from the object's root.
pub type FieldPath = Vec<PathElement>;

fn rank(v: &Value) -> u8 {
    match v {
        Value::Number(n) if n.is_f64() => 0,
        Value::Number(_) => 1,
        Value::String(_) => 2,
        Value::Bool(_) => 3,
        Value::Array(_) => 4,
        Value::Object(_) => 5,
        Value::Null => 6,
    }
}

/// A total order on JSON values (floats, ints, strings, bools, lists, maps, null).
pub(crate) fn cmp_value(a: &Value, b: &Value) -> Ordering {
    let (ra, rb) = (rank(a), rank(b));
    if ra != rb {
        return ra.cmp(&rb);
    }
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if let (Some(p), Some(q)) = (x.as_i64(), y.as_i64()) {
                p.cmp(&q)
            } else if let (Some(p), Some(q)) = (x.as_u64(), y.as_u64()) {
                p.cmp(&q)
            } else {
                let (p, q) = (x.as_f64().unwrap_or(0.0), y.as_f64().unwrap_or(0.0));
                p.partial_cmp(&q).unwrap_or(Ordering::Equal)
            }
        }
        (Value::String(x), Value::String(y)) => x.cmp(y),
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::Array(x), Value::Array(y)) => {
            for (p, q) in x.iter().zip(y) {
                let c = cmp_value(p, q);
                if c != Ordering::Equal {
                    return c;
                }
            }
            x.len().cmp(&y.len())
        }
        (Value::Object(x), Value::Object(y)) => {
            let mut xs: Vec<_> = x.iter().collect();
            let mut ys: Vec<_> = y.iter().collect();
            xs.sort_by(|p, q| p.0.cmp(q.0));
            ys.sort_by(|p, q| p.0.cmp(q.0));
            for (p, q) in xs.iter().zip(&ys) {
                let c = p.0.cmp(q.0).then_with(|| cmp_value(p.1, q.1));
                if c != Ordering::Equal {
                    return c;
                }
            }
            xs.len().cmp(&ys.len())
        }
        _ => Ordering::Equal,
    }
}

impl PathElement {
    fn variant(&self) -> u8 {
        match self {
            PathElement::Field(_) => 0,
            PathElement::Key(_) => 1,
            PathElement::Value(_) => 2,
            PathElement::Index(_) => 3,
        }
    }

    /// The `FieldsV1` key of this element (`f:name`, `k:{...}`, `v:...`, `i:3`).
    pub fn to_fields_v1_key(&self) -> String {
        match self {
            PathElement::Field(name) => format!("f:{name}"),
            PathElement::Key(fields) => {
                let mut m = Map::new();
                for (k, v) in fields {
                    m.insert(k.clone(), v.clone());
                }
                format!("k:{}", Value::Object(m))
            }
            PathElement::Value(v) => format!("v:{v}"),
            PathElement::Index(i) => format!("i:{i}"),
        }
    }

    /// Parses a `FieldsV1` key; `Ok(None)` for an unknown element type, which
    /// upstream skips.
    pub fn from_fields_v1_key(s: &str) -> Result<Option<PathElement>, PatchError> {
        let bad =
            |why: &str| PatchError::BadRequest(format!("parsing key as path element: {why}: {s}"));
        let b = s.as_bytes();
        if b.len() < 2 {
            return Err(bad("key must be 2 characters long"));
        }
        if b[1] != b':' {
            return Err(bad("missing colon"));
        }
        let rest = &s[2..];
        Ok(Some(match b[0] {
            b'f' => PathElement::Field(rest.to_string()),
            b'v' => {
                PathElement::Value(serde_json::from_str(rest).map_err(|e| bad(&e.to_string()))?)
            }
            b'k' => {
                let v: Value = serde_json::from_str(rest).map_err(|e| bad(&e.to_string()))?;
                let Value::Object(m) = v else {
                    return Err(bad("key is not an object"));
                };
                let mut fields: Vec<(String, Value)> = m.into_iter().collect();
                fields.sort_by(|p, q| p.0.cmp(&q.0));
                PathElement::Key(fields)
            }
            b'i' => PathElement::Index(rest.parse().map_err(|_| bad("bad index"))?),
            _ => return Ok(None),
        }))
    }
}

impl Ord for PathElement {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (PathElement::Field(a), PathElement::Field(b)) => a.cmp(b),
            (PathElement::Key(a), PathElement::Key(b)) => {
                for (p, q) in a.iter().zip(b) {
                    let c = p.0.cmp(&q.0).then_with(|| cmp_value(&p.1, &q.1));
                    if c != Ordering::Equal {
                        return c;
                    }
                }
                a.len().cmp(&b.len())
            }
            (PathElement::Value(a), PathElement::Value(b)) => cmp_value(a, b),
            (PathElement::Index(a), PathElement::Index(b)) => a.cmp(b),
            _ => self.variant().cmp(&other.variant()),
        }
    }
}

impl PartialOrd for PathElement {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for PathElement {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for PathElement {}

impl std::fmt::Display for PathElement {
    /// Upstream's human-readable rendering: `.name`, `[name="web"]`, `[="x"]`, `[0]`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PathElement::Field(n) => write!(f, ".{n}"),
            PathElement::Key(fields) => {
                let parts: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
                write!(f, "[{}]", parts.join(","))
            }
            PathElement::Value(v) => write!(f, "[={v}]"),
            PathElement::Index(i) => write!(f, "[{i}]"),
        }
    }
}

/// Renders a path as upstream does in conflict messages, e.g.
/// `.spec.template.spec.containers[name="web"].image`.
pub fn path_string(path: &[PathElement]) -> String {
    path.iter().map(|pe| pe.to_string()).collect()
}

/// A set of field paths (upstream's `fieldpath.Set`): which fields a manager owns,
/// or which fields an operation touched.
///
/// A path is a *member* when the field itself is in the set; a node can also have
/// members below it without being one (its children).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSet {
    /// The elements of this level, sorted and unique; every node is a member or
    /// has members below it (so equal sets have equal representations).
    nodes: Vec<Node>,
}

/// One element of a level of a [`FieldSet`].
#[derive(Clone, Debug, PartialEq, Eq)]
struct Node {
    pe: PathElement,
    /// The path to this element is a member.
    member: bool,
    /// Members below it (empty when none).
    children: FieldSet,
}

impl Node {
    fn new(pe: PathElement, member: bool, children: FieldSet) -> Node {
        Node {
            pe,
            member,
            children,
        }
    }

    fn keep(&self) -> bool {
        self.member || !self.children.is_empty()
    }
}

/// Walks two sorted levels together, calling `f` with the node of each side for
/// every element of either.
fn merge_join<'s>(
    a: &'s [Node],
    b: &'s [Node],
    mut f: impl FnMut(Option<&'s Node>, Option<&'s Node>),
) {
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].pe.cmp(&b[j].pe) {
            Ordering::Less => {
                f(Some(&a[i]), None);
                i += 1;
            }
            Ordering::Greater => {
                f(None, Some(&b[j]));
                j += 1;
            }
            Ordering::Equal => {
                f(Some(&a[i]), Some(&b[j]));
                i += 1;
                j += 1;
            }
        }
    }
    for n in &a[i..] {
        f(Some(n), None);
    }
    for n in &b[j..] {
        f(None, Some(n));
    }
}

impl FieldSet {
    /// The empty set.
    pub fn new() -> FieldSet {
        FieldSet::default()
    }

    /// True when the set has no member.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    fn find(&self, pe: &PathElement) -> Result<usize, usize> {
        self.nodes.binary_search_by(|n| n.pe.cmp(pe))
    }

    fn node(&self, pe: &PathElement) -> Option<&Node> {
        self.find(pe).ok().map(|i| &self.nodes[i])
    }

    /// The node of `pe`, added (neither member nor with children: the caller makes
    /// it one or the other) when missing.
    fn node_mut(&mut self, pe: &PathElement) -> &mut Node {
        let i = match self.find(pe) {
            Ok(i) => i,
            Err(i) => {
                self.nodes
                    .insert(i, Node::new(pe.clone(), false, FieldSet::new()));
                i
            }
        };
        &mut self.nodes[i]
    }

    /// Adds `path` (the empty path is ignored, as upstream does).
    pub fn insert(&mut self, path: &[PathElement]) {
        match path {
            [] => {}
            [last] => self.node_mut(last).member = true,
            [first, rest @ ..] => self.node_mut(first).children.insert(rest),
        }
    }

    /// Builds a set from nodes of one level in any order with unique elements;
    /// nodes that are neither members nor have children are dropped.
    pub(crate) fn from_unsorted(mut entries: Vec<(PathElement, bool, FieldSet)>) -> FieldSet {
        entries.retain(|(_, member, children)| *member || !children.is_empty());
        entries.sort_unstable_by(|p, q| p.0.cmp(&q.0));
        FieldSet {
            nodes: entries
                .into_iter()
                .map(|(pe, member, children)| Node::new(pe, member, children))
                .collect(),
        }
    }

    /// True when `path` is a member.
    pub fn contains(&self, path: &[PathElement]) -> bool {
        match path {
            [] => false,
            [last] => self.node(last).is_some_and(|n| n.member),
            [first, rest @ ..] => self.node(first).is_some_and(|n| n.children.contains(rest)),
        }
    }

    /// True when `path` is a member or has members below it.
    pub fn contains_prefix(&self, path: &[PathElement]) -> bool {
        match path {
            [] => !self.is_empty(),
            [last] => self.node(last).is_some(),
            [first, rest @ ..] => self
                .node(first)
                .is_some_and(|n| n.children.contains_prefix(rest)),
        }
    }

    /// The sub-set below `pe` (None when there is no member below it).
    pub(crate) fn child(&self, pe: &PathElement) -> Option<&FieldSet> {
        self.node(pe).map(|n| &n.children).filter(|c| !c.is_empty())
    }

    /// True when `pe` is a member at this level.
    pub(crate) fn has_member(&self, pe: &PathElement) -> bool {
        self.node(pe).is_some_and(|n| n.member)
    }

    /// Paths in either set.
    pub fn union(&self, other: &FieldSet) -> FieldSet {
        if other.is_empty() {
            return self.clone();
        }
        if self.is_empty() {
            return other.clone();
        }
        let mut nodes = Vec::with_capacity(self.nodes.len().max(other.nodes.len()));
        merge_join(&self.nodes, &other.nodes, |a, b| {
            nodes.push(match (a, b) {
                (Some(a), Some(b)) => Node::new(
                    a.pe.clone(),
                    a.member || b.member,
                    a.children.union(&b.children),
                ),
                (Some(n), None) | (None, Some(n)) => n.clone(),
                (None, None) => return,
            })
        });
        FieldSet { nodes }
    }

    /// Adds every path of `other` to this set.
    pub(crate) fn union_with(&mut self, other: &FieldSet) {
        if other.is_empty() {
            return;
        }
        if self.is_empty() {
            self.nodes = other.nodes.clone();
            return;
        }
        *self = self.union(other);
    }

    /// Paths in both sets.
    pub fn intersection(&self, other: &FieldSet) -> FieldSet {
        let mut nodes = Vec::new();
        if self.is_empty() || other.is_empty() {
            return FieldSet { nodes };
        }
        merge_join(&self.nodes, &other.nodes, |a, b| {
            if let (Some(a), Some(b)) = (a, b) {
                let n = Node::new(
                    a.pe.clone(),
                    a.member && b.member,
                    a.children.intersection(&b.children),
                );
                if n.keep() {
                    nodes.push(n);
                }
            }
        });
        FieldSet { nodes }
    }

    /// Paths of `self` that are not members of `other` (members below a member of
    /// `other` stay).
    pub fn difference(&self, other: &FieldSet) -> FieldSet {
        if other.is_empty() || self.is_empty() {
            return self.clone();
        }
        let mut nodes = Vec::with_capacity(self.nodes.len());
        merge_join(&self.nodes, &other.nodes, |a, b| match (a, b) {
            (Some(a), Some(b)) => {
                let n = Node::new(
                    a.pe.clone(),
                    a.member && !b.member,
                    a.children.difference(&b.children),
                );
                if n.keep() {
                    nodes.push(n);
                }
            }
            (Some(a), None) => nodes.push(a.clone()),
            _ => {}
        });
        FieldSet { nodes }
    }

    /// Paths of `self` that are neither members of `other` nor below one.
    pub fn recursive_difference(&self, other: &FieldSet) -> FieldSet {
        if other.is_empty() || self.is_empty() {
            return self.clone();
        }
        let mut nodes = Vec::with_capacity(self.nodes.len());
        merge_join(&self.nodes, &other.nodes, |a, b| match (a, b) {
            (Some(a), Some(b)) => {
                let children = if b.member {
                    FieldSet::new()
                } else {
                    a.children.recursive_difference(&b.children)
                };
                let n = Node::new(a.pe.clone(), a.member && !b.member, children);
                if n.keep() {
                    nodes.push(n);
                }
            }
            (Some(a), None) => nodes.push(a.clone()),
            _ => {}
        });
        FieldSet { nodes }
    }

    /// The same set where every object field that has members below it is a
    /// member too (upstream's `EnsureNamedFieldsAreMembers`, used when pruning).
    pub(crate) fn with_field_prefixes(&self) -> FieldSet {
        FieldSet {
            nodes: self
                .nodes
                .iter()
                .map(|n| {
                    let field = matches!(n.pe, PathElement::Field(_));
                    Node::new(
                        n.pe.clone(),
                        n.member || (field && !n.children.is_empty()),
                        n.children.with_field_prefixes(),
                    )
                })
                .collect(),
        }
    }

    /// Every member, in upstream's iteration order (members of a level first, then
    /// the levels below, each sorted).
    pub fn paths(&self) -> Vec<FieldPath> {
        let mut out = Vec::new();
        self.collect(&mut Vec::new(), &mut out);
        out
    }

    fn collect(&self, prefix: &mut FieldPath, out: &mut Vec<FieldPath>) {
        for n in self.nodes.iter().filter(|n| n.member) {
            let mut p = prefix.clone();
            p.push(n.pe.clone());
            out.push(p);
        }
        for n in self.nodes.iter().filter(|n| !n.children.is_empty()) {
            prefix.push(n.pe.clone());
            n.children.collect(prefix, out);
            prefix.pop();
        }
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.nodes
            .iter()
            .map(|n| usize::from(n.member) + n.children.len())
            .sum()
    }

    /// The `FieldsV1` JSON of the set, exactly as upstream encodes it: keys sorted
    /// in path-element order, members as `{}`, a node that is both a member and has
    /// children gets a trailing `".": {}`.
    pub fn to_fields_v1(&self) -> Value {
        Value::Object(self.emit(false))
    }

    fn emit(&self, include_self: bool) -> Map<String, Value> {
        let mut out = Map::with_capacity(self.nodes.len() + usize::from(include_self));
        for n in &self.nodes {
            let v = if n.children.is_empty() {
                Value::Object(Map::new())
            } else {
                Value::Object(n.children.emit(n.member))
            };
            out.insert(n.pe.to_fields_v1_key(), v);
        }
        if include_self && !out.is_empty() {
            out.insert(".".to_string(), Value::Object(Map::new()));
        }
        out
    }

    /// Parses `FieldsV1` JSON (unknown element types are skipped, as upstream does).
    pub fn from_fields_v1(v: &Value) -> Result<FieldSet, PatchError> {
        let Value::Object(m) = v else {
            return Err(PatchError::BadRequest(
                "FieldsV1 must be a JSON object".to_string(),
            ));
        };
        let (set, _) = Self::read(m)?;
        Ok(set.unwrap_or_default())
    }

    /// Returns the children found in `m` and whether `m` marks its node a member.
    fn read(m: &Map<String, Value>) -> Result<(Option<FieldSet>, bool), PatchError> {
        let mut children: Option<FieldSet> = None;
        let mut is_member = false;
        for (k, v) in m {
            if k == "." {
                is_member = true;
                continue;
            }
            let Some(pe) = PathElement::from_fields_v1_key(k)? else {
                continue;
            };
            let Value::Object(sub) = v else {
                return Err(PatchError::BadRequest(format!(
                    "FieldsV1 value of {k} must be a JSON object"
                )));
            };
            let (grand, child_member) = Self::read(sub)?;
            let c = children.get_or_insert_with(FieldSet::new);
            let grand = grand.filter(|g| !g.is_empty());
            if child_member || grand.is_some() {
                let node = c.node_mut(&pe);
                node.member |= child_member;
                if let Some(g) = grand {
                    node.children.union_with(&g);
                }
            }
        }
        if children.is_none() {
            is_member = true;
        }
        Ok((children, is_member))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn f(s: &str) -> PathElement {
        PathElement::Field(s.to_string())
    }

    #[test]
    fn fields_v1_round_trip_keeps_upstream_encoding() {
        // Upstream writes "." after the children of a node.
        let text = r#"{"f:metadata":{"f:labels":{"f:app":{},".":{}}},"f:spec":{"f:containers":{"k:{\"name\":\"web\"}":{"f:image":{},"f:name":{},".":{}}},"f:finalizers":{"v:\"a\"":{}},"f:replicas":{}}}"#;
        let v: Value = serde_json::from_str(text).unwrap();
        let set = FieldSet::from_fields_v1(&v).unwrap();
        assert!(set.contains(&[f("spec"), f("replicas")]));
        assert!(set.contains(&[f("metadata"), f("labels")]));
        assert!(!set.contains(&[f("metadata")]));
        let key = PathElement::Key(vec![("name".into(), json!("web"))]);
        assert!(set.contains(&[f("spec"), f("containers"), key.clone()]));
        assert!(set.contains(&[f("spec"), f("containers"), key, f("image")]));
        assert_eq!(serde_json::to_string(&set.to_fields_v1()).unwrap(), text);
        assert_eq!(set.len(), 7);
        // "." first (as sorted-key encoders write it) reads the same.
        let sorted = r#"{"f:metadata":{"f:labels":{".":{},"f:app":{}}}}"#;
        let set2 = FieldSet::from_fields_v1(&serde_json::from_str(sorted).unwrap()).unwrap();
        assert!(set2.contains(&[f("metadata"), f("labels")]));
        assert!(set2.contains(&[f("metadata"), f("labels"), f("app")]));
        assert!(FieldSet::from_fields_v1(&json!({"f:a": 1})).is_err());
    }

    #[test]
    fn keys_sort_fields_and_render_like_upstream() {
        let pe = PathElement::from_fields_v1_key(r#"k:{"protocol":"TCP","containerPort":80}"#)
            .unwrap()
            .unwrap();
        assert_eq!(
            pe.to_fields_v1_key(),
            r#"k:{"containerPort":80,"protocol":"TCP"}"#
        );
        assert_eq!(
            path_string(&[f("spec"), f("ports"), pe]),
            r#".spec.ports[containerPort=80,protocol="TCP"]"#
        );
        assert_eq!(
            path_string(&[f("a"), PathElement::Value(json!("x"))]),
            r#".a[="x"]"#
        );
        assert_eq!(path_string(&[f("a"), PathElement::Index(2)]), ".a[2]");
        assert_eq!(PathElement::from_fields_v1_key("z:foo").unwrap(), None);
        assert!(PathElement::from_fields_v1_key("f").is_err());
    }

    #[test]
    fn set_algebra() {
        let mut a = FieldSet::new();
        a.insert(&[f("spec"), f("replicas")]);
        a.insert(&[f("spec"), f("paused")]);
        let mut b = FieldSet::new();
        b.insert(&[f("spec"), f("replicas")]);
        b.insert(&[f("metadata"), f("labels")]);
        assert_eq!(
            a.intersection(&b).paths(),
            vec![vec![f("spec"), f("replicas")]]
        );
        assert_eq!(a.difference(&b).paths(), vec![vec![f("spec"), f("paused")]]);
        assert_eq!(a.union(&b).len(), 3);
        let mut spec = FieldSet::new();
        spec.insert(&[f("spec")]);
        assert_eq!(a.difference(&spec), a);
        assert!(a.recursive_difference(&spec).is_empty());
        assert!(a.with_field_prefixes().contains(&[f("spec")]));
    }

    #[test]
    fn members_come_before_children_in_paths() {
        let mut a = FieldSet::new();
        a.insert(&[f("b"), f("x")]);
        a.insert(&[f("c")]);
        assert_eq!(a.paths(), vec![vec![f("c")], vec![f("b"), f("x")]]);
    }
}
