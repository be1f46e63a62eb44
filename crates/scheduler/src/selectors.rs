//! Label selectors, node selectors and taint/toleration matching.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use rk3s_core::selector::{Operator, Requirement};

/// Labels as stored on objects.
pub type Labels = BTreeMap<String, String>;

/// A compiled `metav1.LabelSelector` (the one implementation in
/// [`rk3s_core::selector`]), with the additions affinity terms need.
#[derive(Debug, Clone, PartialEq)]
pub struct Selector(rk3s_core::LabelSelector);

impl Selector {
    /// A selector matching nothing (what a nil selector means for affinity/spread).
    pub fn nothing() -> Self {
        Selector(rk3s_core::LabelSelector::nothing())
    }

    /// A selector matching everything.
    pub fn everything() -> Self {
        Selector(rk3s_core::LabelSelector::everything())
    }

    /// Compiles an optional selector: `None` matches nothing, `{}` matches everything,
    /// an invalid selector matches nothing (as upstream's error path).
    pub fn from_label_selector(sel: Option<&LabelSelector>) -> Self {
        sel.and_then(|s| rk3s_core::LabelSelector::from_k8s(s).ok())
            .map_or_else(Self::nothing, Selector)
    }

    fn add(&mut self, key: &str, op: Operator, value: &str) {
        if let Ok(r) = Requirement::new(key, op, vec![value.to_string()]) {
            self.0.add(r);
        }
    }

    /// Adds `key In (value)` (used for `matchLabelKeys`).
    pub fn add_in(&mut self, key: &str, value: &str) {
        self.add(key, Operator::In, value);
    }

    /// Adds `key NotIn (value)` (used for `mismatchLabelKeys`).
    pub fn add_not_in(&mut self, key: &str, value: &str) {
        self.add(key, Operator::NotIn, value);
    }

    /// Whether `labels` satisfy the selector.
    pub fn matches(&self, labels: Option<&Labels>) -> bool {
        self.0
            .matches_with(|k| labels.and_then(|l| l.get(k)).map(String::as_str))
    }

    /// True when the selector matches every label set.
    pub fn is_everything(&self) -> bool {
        self.0.is_empty()
    }
}

/// Compiled `NodeSelectorTerm` and `NodeSelector` (node affinity): the one implementation
/// of [`rk3s_core::selector`]. A term that is empty or does not parse matches nothing.
pub use rk3s_core::selector::{NodeSelectorMatcher, NodeSelectorTermMatcher as NodeTerm};

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
    use k8s_openapi::api::core::v1::{NodeSelectorRequirement, NodeSelectorTerm};
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
