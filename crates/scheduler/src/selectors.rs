//! Label selectors, node selectors and taint/toleration matching.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{NodeSelector, NodeSelectorTerm, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Labels as stored on objects.
pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq)]
enum LabelOp {
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
}

/// A compiled `metav1.LabelSelector`.
#[derive(Debug, Clone, PartialEq)]
pub struct Selector {
    nothing: bool,
    reqs: Vec<(String, LabelOp)>,
}

impl Selector {
    /// A selector matching nothing (what a nil selector means for affinity/spread).
    pub fn nothing() -> Self {
        Selector {
            nothing: true,
            reqs: Vec::new(),
        }
    }

    /// A selector matching everything.
    pub fn everything() -> Self {
        Selector {
            nothing: false,
            reqs: Vec::new(),
        }
    }

    /// Compiles an optional selector: `None` matches nothing, `{}` matches everything,
    /// an invalid operator makes the selector match nothing (as upstream's error path).
    pub fn from_label_selector(sel: Option<&LabelSelector>) -> Self {
        let Some(sel) = sel else {
            return Self::nothing();
        };
        let mut reqs = Vec::new();
        for (k, v) in sel.match_labels.iter().flatten() {
            reqs.push((k.clone(), LabelOp::In(vec![v.clone()])));
        }
        for e in sel.match_expressions.iter().flatten() {
            let values = e.values.clone().unwrap_or_default();
            let op = match e.operator.as_str() {
                "In" => LabelOp::In(values),
                "NotIn" => LabelOp::NotIn(values),
                "Exists" => LabelOp::Exists,
                "DoesNotExist" => LabelOp::DoesNotExist,
                _ => return Self::nothing(),
            };
            reqs.push((e.key.clone(), op));
        }
        Selector {
            nothing: false,
            reqs,
        }
    }

    /// Adds `key In (value)` (used for `matchLabelKeys`).
    pub fn add_in(&mut self, key: &str, value: &str) {
        self.reqs
            .push((key.to_string(), LabelOp::In(vec![value.to_string()])));
    }

    /// Adds `key NotIn (value)` (used for `mismatchLabelKeys`).
    pub fn add_not_in(&mut self, key: &str, value: &str) {
        self.reqs
            .push((key.to_string(), LabelOp::NotIn(vec![value.to_string()])));
    }

    /// Whether `labels` satisfy the selector.
    pub fn matches(&self, labels: Option<&Labels>) -> bool {
        if self.nothing {
            return false;
        }
        self.reqs.iter().all(|(k, op)| {
            let v = labels.and_then(|l| l.get(k));
            match op {
                LabelOp::In(vals) => v.is_some_and(|v| vals.iter().any(|x| x == v)),
                LabelOp::NotIn(vals) => v.is_none_or(|v| !vals.iter().any(|x| x == v)),
                LabelOp::Exists => v.is_some(),
                LabelOp::DoesNotExist => v.is_none(),
            }
        })
    }

    /// True when the selector matches every label set.
    pub fn is_everything(&self) -> bool {
        !self.nothing && self.reqs.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq)]
enum NodeOp {
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
    Gt(i64),
    Lt(i64),
    /// An unparsable requirement: never matches.
    Never,
}

impl NodeOp {
    fn matches(&self, v: Option<&str>) -> bool {
        match self {
            NodeOp::In(vals) => v.is_some_and(|v| vals.iter().any(|x| x == v)),
            NodeOp::NotIn(vals) => v.is_none_or(|v| !vals.iter().any(|x| x == v)),
            NodeOp::Exists => v.is_some(),
            NodeOp::DoesNotExist => v.is_none(),
            NodeOp::Gt(n) => v
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|x| x > *n),
            NodeOp::Lt(n) => v
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|x| x < *n),
            NodeOp::Never => false,
        }
    }
}

fn compile_node_op(op: &str, values: &[String]) -> NodeOp {
    match op {
        "In" => NodeOp::In(values.to_vec()),
        "NotIn" => NodeOp::NotIn(values.to_vec()),
        "Exists" => NodeOp::Exists,
        "DoesNotExist" => NodeOp::DoesNotExist,
        "Gt" | "Lt" => {
            let [v] = values else { return NodeOp::Never };
            match v.parse::<i64>() {
                Ok(n) if op == "Gt" => NodeOp::Gt(n),
                Ok(n) => NodeOp::Lt(n),
                Err(_) => NodeOp::Never,
            }
        }
        _ => NodeOp::Never,
    }
}

/// A compiled `NodeSelectorTerm`: label expressions and `metadata.name` field expressions, ANDed.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeTerm {
    exprs: Vec<(String, NodeOp)>,
    name_exprs: Vec<NodeOp>,
}

impl NodeTerm {
    /// Compiles one term.
    pub fn new(t: &NodeSelectorTerm) -> Self {
        let exprs = t
            .match_expressions
            .iter()
            .flatten()
            .map(|e| {
                (
                    e.key.clone(),
                    compile_node_op(&e.operator, e.values.as_deref().unwrap_or(&[])),
                )
            })
            .collect();
        let name_exprs = t
            .match_fields
            .iter()
            .flatten()
            .map(|e| {
                if e.key == "metadata.name" && (e.operator == "In" || e.operator == "NotIn") {
                    compile_node_op(&e.operator, e.values.as_deref().unwrap_or(&[]))
                } else {
                    NodeOp::Never
                }
            })
            .collect();
        NodeTerm { exprs, name_exprs }
    }

    /// Whether a node with `name` and `labels` matches. An empty term matches nothing.
    pub fn matches(&self, name: &str, labels: Option<&Labels>) -> bool {
        if self.exprs.is_empty() && self.name_exprs.is_empty() {
            return false;
        }
        self.exprs
            .iter()
            .all(|(k, op)| op.matches(labels.and_then(|l| l.get(k)).map(String::as_str)))
            && self.name_exprs.iter().all(|op| op.matches(Some(name)))
    }
}

/// A compiled `NodeSelector`: terms ORed.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSelectorMatcher {
    terms: Vec<NodeTerm>,
}

impl NodeSelectorMatcher {
    /// Compiles a node selector.
    pub fn new(s: &NodeSelector) -> Self {
        NodeSelectorMatcher {
            terms: s.node_selector_terms.iter().map(NodeTerm::new).collect(),
        }
    }

    /// Whether any term matches the node.
    pub fn matches(&self, name: &str, labels: Option<&Labels>) -> bool {
        self.terms.iter().any(|t| t.matches(name, labels))
    }
}

/// Whether one toleration tolerates one taint (upstream `Toleration.ToleratesTaint`).
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if let Some(e) = t.effect.as_deref() {
        if !e.is_empty() && e != taint.effect {
            return false;
        }
    }
    if let Some(k) = t.key.as_deref() {
        if !k.is_empty() && k != taint.key {
            return false;
        }
    }
    match t.operator.as_deref().unwrap_or("") {
        "" | "Equal" => t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
        "Exists" => true,
        _ => false,
    }
}

/// Whether any toleration tolerates the taint.
pub fn tolerations_tolerate(tols: &[Toleration], taint: &Taint) -> bool {
    tols.iter().any(|t| tolerates(t, taint))
}

/// The first NoSchedule/NoExecute taint not tolerated, if any.
pub fn first_untolerated_hard_taint<'a>(
    taints: &'a [Taint],
    tols: &[Toleration],
) -> Option<&'a Taint> {
    taints
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .find(|t| !tolerations_tolerate(tols, t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NodeSelectorRequirement;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(kv: &[(&str, &str)]) -> Labels {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn req(key: &str, op: &str, values: &[&str]) -> NodeSelectorRequirement {
        NodeSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: Some(values.iter().map(|s| s.to_string()).collect()),
        }
    }

    #[test]
    fn node_operators() {
        let l = labels(&[("zone", "a"), ("cores", "8")]);
        let m = |r: NodeSelectorRequirement| {
            NodeTerm::new(&NodeSelectorTerm {
                match_expressions: Some(vec![r]),
                match_fields: None,
            })
            .matches("n1", Some(&l))
        };
        assert!(m(req("zone", "In", &["a", "b"])));
        assert!(!m(req("zone", "In", &["b"])));
        assert!(m(req("zone", "NotIn", &["b"])));
        assert!(!m(req("zone", "NotIn", &["a"])));
        assert!(m(req("missing", "NotIn", &["a"])));
        assert!(m(req("zone", "Exists", &[])));
        assert!(!m(req("zone", "DoesNotExist", &[])));
        assert!(m(req("gpu", "DoesNotExist", &[])));
        assert!(m(req("cores", "Gt", &["4"])));
        assert!(!m(req("cores", "Gt", &["8"])));
        assert!(m(req("cores", "Lt", &["9"])));
        assert!(!m(req("zone", "Lt", &["9"])));
        assert!(!m(req("cores", "Gt", &["x"])));
        assert!(!m(req("cores", "Bogus", &["1"])));
        // empty term matches nothing
        assert!(!NodeTerm::new(&NodeSelectorTerm::default()).matches("n1", Some(&l)));
        // matchFields on metadata.name
        let t = NodeSelectorTerm {
            match_expressions: None,
            match_fields: Some(vec![req("metadata.name", "In", &["n1"])]),
        };
        assert!(NodeTerm::new(&t).matches("n1", Some(&l)));
        assert!(!NodeTerm::new(&t).matches("n2", Some(&l)));
    }

    #[test]
    fn label_selectors() {
        let l = labels(&[("app", "web"), ("tier", "fe")]);
        assert!(!Selector::from_label_selector(None).matches(Some(&l)));
        assert!(Selector::from_label_selector(Some(&LabelSelector::default())).matches(Some(&l)));
        let s = LabelSelector {
            match_labels: Some(labels(&[("app", "web")])),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: "NotIn".into(),
                values: Some(vec!["be".into()]),
            }]),
        };
        assert!(Selector::from_label_selector(Some(&s)).matches(Some(&l)));
        assert!(!Selector::from_label_selector(Some(&s)).matches(Some(&labels(&[("app", "db")]))));
    }

    #[test]
    fn tolerations() {
        let taint = Taint {
            key: "k".into(),
            value: Some("v".into()),
            effect: "NoSchedule".into(),
            time_added: None,
        };
        let tol = |key: Option<&str>,
                   op: Option<&str>,
                   value: Option<&str>,
                   effect: Option<&str>| Toleration {
            key: key.map(Into::into),
            operator: op.map(Into::into),
            value: value.map(Into::into),
            effect: effect.map(Into::into),
            toleration_seconds: None,
        };
        assert!(tolerates(&tol(Some("k"), None, Some("v"), None), &taint));
        assert!(tolerates(
            &tol(Some("k"), Some("Equal"), Some("v"), Some("NoSchedule")),
            &taint
        ));
        assert!(!tolerates(
            &tol(Some("k"), Some("Equal"), Some("w"), None),
            &taint
        ));
        assert!(!tolerates(
            &tol(Some("k"), Some("Equal"), Some("v"), Some("NoExecute")),
            &taint
        ));
        assert!(tolerates(
            &tol(Some("k"), Some("Exists"), None, None),
            &taint
        ));
        assert!(!tolerates(
            &tol(Some("other"), Some("Exists"), None, None),
            &taint
        ));
        // empty key + Exists tolerates everything
        assert!(tolerates(&tol(None, Some("Exists"), None, None), &taint));
        assert!(tolerates(
            &tol(Some(""), Some("Exists"), None, None),
            &taint
        ));
        let pref = Taint {
            effect: "PreferNoSchedule".into(),
            ..taint.clone()
        };
        assert!(first_untolerated_hard_taint(std::slice::from_ref(&pref), &[]).is_none());
        assert_eq!(
            first_untolerated_hard_taint(&[pref, taint.clone()], &[]),
            Some(&taint)
        );
    }
}
