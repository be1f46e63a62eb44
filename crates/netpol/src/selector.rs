//! Label selector matching (`metav1.LabelSelector`), as upstream's
//! `LabelSelectorAsSelector`: `matchLabels` and `matchExpressions` with the operators
//! `In`, `NotIn`, `Exists` and `DoesNotExist`, all requirements ANDed; an empty
//! selector matches everything.
//!
//! NOTE: this helper is local to the netpol crate for now; a later refactor moves it to
//! a shared core crate (the controllers and the scheduler have their own copies).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Why a label selector cannot be used (upstream rejects it at validation; a policy
/// carrying one is skipped).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// An operator other than `In`, `NotIn`, `Exists`, `DoesNotExist`.
    #[error("unknown label selector operator {0:?}")]
    UnknownOperator(String),
    /// `In` / `NotIn` without values.
    #[error("operator {operator} on key {key:?} needs at least one value")]
    MissingValues {
        /// The requirement's operator.
        operator: String,
        /// The requirement's key.
        key: String,
    },
    /// `Exists` / `DoesNotExist` with values.
    #[error("operator {operator} on key {key:?} takes no values")]
    UnexpectedValues {
        /// The requirement's operator.
        operator: String,
        /// The requirement's key.
        key: String,
    },
    /// An empty key.
    #[error("label selector requirement with an empty key")]
    EmptyKey,
}

/// One compiled requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

impl Requirement {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        }
    }
}

/// A validated label selector, ready to match label sets.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selector {
    reqs: Vec<Requirement>,
}

impl Selector {
    /// Compiles `sel`; an invalid requirement is an error (never "matches nothing"
    /// silently, so the caller can report it).
    pub fn compile(sel: &LabelSelector) -> Result<Self, SelectorError> {
        let mut reqs = Vec::new();
        for (k, v) in sel.match_labels.iter().flatten() {
            if k.is_empty() {
                return Err(SelectorError::EmptyKey);
            }
            reqs.push(Requirement::Equals(k.clone(), v.clone()));
        }
        for e in sel.match_expressions.iter().flatten() {
            if e.key.is_empty() {
                return Err(SelectorError::EmptyKey);
            }
            let values = e.values.clone().unwrap_or_default();
            let need_values = |values: Vec<String>| {
                if values.is_empty() {
                    Err(SelectorError::MissingValues {
                        operator: e.operator.clone(),
                        key: e.key.clone(),
                    })
                } else {
                    Ok(values)
                }
            };
            let no_values = || {
                if values.is_empty() {
                    Ok(())
                } else {
                    Err(SelectorError::UnexpectedValues {
                        operator: e.operator.clone(),
                        key: e.key.clone(),
                    })
                }
            };
            let r = match e.operator.as_str() {
                "In" => Requirement::In(e.key.clone(), need_values(values.clone())?),
                "NotIn" => Requirement::NotIn(e.key.clone(), need_values(values.clone())?),
                "Exists" => {
                    no_values()?;
                    Requirement::Exists(e.key.clone())
                }
                "DoesNotExist" => {
                    no_values()?;
                    Requirement::DoesNotExist(e.key.clone())
                }
                other => return Err(SelectorError::UnknownOperator(other.to_string())),
            };
            reqs.push(r);
        }
        Ok(Selector { reqs })
    }

    /// Whether every requirement holds for `labels` (an empty selector matches all).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.reqs.iter().all(|r| r.matches(labels))
    }

    /// Whether the selector has no requirement (selects everything).
    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
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
