//! Label selector matching (`metav1.LabelSelector`) for policies: the one
//! implementation is [`rk3s_core::selector`] (upstream's `LabelSelectorAsSelector`:
//! `matchLabels` and `matchExpressions` with `In`, `NotIn`, `Exists`, `DoesNotExist`,
//! all ANDed; an empty selector matches everything); this wrapper keeps the policy
//! model's vocabulary.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Why a label selector cannot be used (upstream rejects it at validation; a policy
/// carrying one is skipped). The message is upstream's.
pub use rk3s_core::selector::SelectorError;

/// A validated label selector, ready to match label sets.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selector(rk3s_core::LabelSelector);

impl Selector {
    /// Compiles `sel`; an invalid requirement is an error (never "matches nothing"
    /// silently, so the caller can report it).
    pub fn compile(sel: &LabelSelector) -> Result<Self, SelectorError> {
        rk3s_core::LabelSelector::from_k8s(sel).map(Selector)
    }

    /// Whether every requirement holds for `labels` (an empty selector matches all).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.matches(labels)
    }

    /// Whether the selector has no requirement (selects everything).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(v: serde_json::Value) -> LabelSelector {
        serde_json::from_value(v).unwrap()
    }

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn empty_selector_matches_everything() {
        let s = Selector::compile(&sel(serde_json::json!({}))).unwrap();
        assert!(s.is_empty());
        assert!(s.matches(&labels(&[])));
        assert!(s.matches(&labels(&[("a", "b")])));
    }

    #[test]
    fn match_labels_all_required() {
        let s = Selector::compile(&sel(
            serde_json::json!({"matchLabels": {"app": "web", "tier": "fe"}}),
        ))
        .unwrap();
        assert!(s.matches(&labels(&[("app", "web"), ("tier", "fe"), ("x", "y")])));
        assert!(!s.matches(&labels(&[("app", "web")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "be")])));
    }

    #[test]
    fn expressions() {
        let s = Selector::compile(&sel(serde_json::json!({"matchExpressions": [
            {"key": "env", "operator": "In", "values": ["prod", "staging"]},
            {"key": "team", "operator": "NotIn", "values": ["x"]},
            {"key": "app", "operator": "Exists"},
            {"key": "debug", "operator": "DoesNotExist"}
        ]})))
        .unwrap();
        assert!(s.matches(&labels(&[("env", "prod"), ("app", "a")])));
        assert!(s.matches(&labels(&[("env", "staging"), ("app", "a"), ("team", "y")])));
        assert!(!s.matches(&labels(&[("env", "dev"), ("app", "a")])), "In");
        assert!(
            !s.matches(&labels(&[("env", "prod"), ("app", "a"), ("team", "x")])),
            "NotIn"
        );
        assert!(!s.matches(&labels(&[("env", "prod")])), "Exists");
        assert!(
            !s.matches(&labels(&[("env", "prod"), ("app", "a"), ("debug", "")])),
            "DoesNotExist"
        );
    }

    #[test]
    fn not_in_matches_missing_key() {
        let s = Selector::compile(&sel(serde_json::json!({"matchExpressions": [{"key": "k", "operator": "NotIn", "values": ["v"]}]}))).unwrap();
        assert!(s.matches(&labels(&[])));
    }

    #[test]
    fn invalid_selectors_are_errors() {
        let bad = [
            serde_json::json!({"matchExpressions": [{"key": "k", "operator": "Equals", "values": ["v"]}]}),
            serde_json::json!({"matchExpressions": [{"key": "k", "operator": "In", "values": []}]}),
            serde_json::json!({"matchExpressions": [{"key": "k", "operator": "NotIn"}]}),
            serde_json::json!({"matchExpressions": [{"key": "k", "operator": "Exists", "values": ["v"]}]}),
            serde_json::json!({"matchExpressions": [{"key": "", "operator": "Exists"}]}),
        ];
        for b in bad {
            assert!(Selector::compile(&sel(b.clone())).is_err(), "{b}");
        }
    }
}
