//! Label and field selectors, parsed and matched as upstream (`k8s.io/apimachinery`
//! `labels` and `fields` packages), with upstream's error messages.
//!
//! - [`LabelSelector::parse`]: `a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x)`, `a`,
//!   `!a`, `a>5`, `a<5`; comma means AND.
//! - [`LabelSelector::from_json`] / [`LabelSelector::from_k8s`]: a `metav1.LabelSelector`
//!   (`matchLabels`, `matchExpressions`) as JSON or typed; [`k8s_selector_matches`].
//! - [`NodeSelectorMatcher`]: a `core/v1` `NodeSelector` (node affinity) against a node.
//! - [`FieldSelector::parse`]: `f=v`, `f==v`, `f!=v`, comma means AND, `\` escapes.
//! - [`field_value`] / [`supported_fields`]: the fields each kind can be selected on.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::{
    NodeSelector as K8sNodeSelector, NodeSelectorTerm as K8sNodeSelectorTerm,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector as K8sLabelSelector;
use serde_json::Value;

use crate::quote::go_quote;

/// A selector that could not be parsed or is not supported; the message is upstream's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SelectorError {
    /// Upstream's message, e.g. `unable to parse requirement: found 'b', expected: in, notin, =, ==, !=, gt, lt`.
    pub message: String,
}

impl SelectorError {
    fn new(message: impl Into<String>) -> Self {
        SelectorError {
            message: message.into(),
        }
    }
}

// ---------------------------------------------------------------------------------
// Validation helpers (label keys and values), with upstream's messages.
// ---------------------------------------------------------------------------------

const QUALIFIED_NAME_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const QUALIFIED_NAME_MSG: &str =
    "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const LABEL_VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";
const DNS1123_SUBDOMAIN_FMT: &str =
    "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";

fn regex_error(msg: &str, fmt: &str, examples: &[&str]) -> String {
    if examples.is_empty() {
        return format!("{msg} (regex used for validation is '{fmt}')");
    }
    let mut out = format!("{msg} (e.g. ");
    for (i, e) in examples.iter().enumerate() {
        if i > 0 {
            out.push_str(" or ");
        }
        out.push('\'');
        out.push_str(e);
        out.push_str("', ");
    }
    out.push_str("regex used for validation is '");
    out.push_str(fmt);
    out.push_str("')");
    out
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`
fn is_qualified_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    match (b.first(), b.last()) {
        (Some(f), Some(l)) => {
            f.is_ascii_alphanumeric()
                && l.is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|label| {
            let b = label.as_bytes();
            match (b.first(), b.last()) {
                (Some(f), Some(l)) => {
                    (f.is_ascii_lowercase() || f.is_ascii_digit())
                        && (l.is_ascii_lowercase() || l.is_ascii_digit())
                        && b.iter()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                }
                _ => false,
            }
        })
}

/// Upstream's `IsQualifiedName`: the problems with a label key (empty when valid).
pub fn qualified_name_errors(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let parts: Vec<&str> = value.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errs.push("prefix part must be non-empty".to_string());
            } else {
                if prefix.len() > 253 {
                    errs.push("prefix part must be no more than 253 characters".to_string());
                }
                if !is_dns1123_subdomain(prefix) {
                    errs.push(format!(
                        "prefix part {}",
                        regex_error(
                            DNS1123_SUBDOMAIN_MSG,
                            DNS1123_SUBDOMAIN_FMT,
                            &["example.com"]
                        )
                    ));
                }
            }
            *name
        }
        _ => {
            errs.push(format!(
                "a qualified name {} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
                regex_error(QUALIFIED_NAME_MSG, QUALIFIED_NAME_FMT, &["MyName", "my.name", "123-abc"])
            ));
            return errs;
        }
    };
    if name.is_empty() {
        errs.push("name part must be non-empty".to_string());
    } else if name.len() > 63 {
        errs.push("name part must be no more than 63 characters".to_string());
    }
    if !is_qualified_name_part(name) {
        errs.push(format!(
            "name part {}",
            regex_error(
                QUALIFIED_NAME_MSG,
                QUALIFIED_NAME_FMT,
                &["MyName", "my.name", "123-abc"]
            )
        ));
    }
    errs
}

/// Whether `value` is a valid label key (no problems from [`qualified_name_errors`]),
/// without allocating.
fn is_qualified_name(value: &str) -> bool {
    let (prefix, name) = match value.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, value),
    };
    if name.contains('/') {
        return false;
    }
    if let Some(p) = prefix {
        if p.is_empty() || p.len() > 253 || !is_dns1123_subdomain(p) {
            return false;
        }
    }
    name.len() <= 63 && is_qualified_name_part(name)
}

/// Whether `value` is a valid label value (no problems from [`label_value_errors`]).
fn is_label_value(value: &str) -> bool {
    value.len() <= 63 && (value.is_empty() || is_qualified_name_part(value))
}

/// Upstream's `IsValidLabelValue`: the problems with a label value (empty when valid).
pub fn label_value_errors(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > 63 {
        errs.push("must be no more than 63 characters".to_string());
    }
    if !value.is_empty() && !is_qualified_name_part(value) {
        errs.push(regex_error(
            LABEL_VALUE_MSG,
            &format!("({QUALIFIED_NAME_FMT})?"),
            &["MyValue", "my_value", "12345"],
        ));
    }
    errs
}

fn invalid(path: &str, value: &str, detail: &str) -> String {
    format!("{path}: Invalid value: {}: {detail}", go_quote(value))
}

/// Upstream's aggregate error text: one message alone, several as `[a, b]`.
fn aggregate(errs: Vec<String>) -> Option<String> {
    let mut seen: Vec<String> = Vec::new();
    for e in errs {
        if !seen.contains(&e) {
            seen.push(e);
        }
    }
    match seen.len() {
        0 => None,
        1 => seen.pop(),
        _ => Some(format!("[{}]", seen.join(", "))),
    }
}

// ---------------------------------------------------------------------------------
// Label selectors
// ---------------------------------------------------------------------------------

/// A label selector operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operator {
    /// `key=value`
    Equals,
    /// `key==value`
    DoubleEquals,
    /// `key!=value`
    NotEquals,
    /// `key in (a,b)`
    In,
    /// `key notin (a,b)`
    NotIn,
    /// `key`
    Exists,
    /// `!key`
    DoesNotExist,
    /// `key>5`
    GreaterThan,
    /// `key<5`
    LessThan,
}

/// One requirement of a label selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirement {
    /// The label key.
    pub key: String,
    /// The operator.
    pub operator: Operator,
    /// The values, sorted and without duplicates (empty for `Exists`/`DoesNotExist`).
    pub values: Vec<String>,
}

impl Requirement {
    /// Builds a requirement, validating key and values as upstream's `NewRequirement`.
    pub fn new(
        key: &str,
        operator: Operator,
        values: Vec<String>,
    ) -> Result<Requirement, SelectorError> {
        let mut values = values;
        values.sort();
        values.dedup();
        let mut errs = Vec::new();
        let key_errs = qualified_name_errors(key);
        if !key_errs.is_empty() {
            errs.push(invalid("key", key, &key_errs.join("; ")));
        }
        let list = || {
            format!(
                "[]string{{{}}}",
                values
                    .iter()
                    .map(|v| go_quote(v))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        match operator {
            Operator::In | Operator::NotIn => {
                if values.is_empty() {
                    errs.push(format!(
                        "values: Invalid value: {}: for 'in', 'notin' operators, values set can't be empty",
                        list()
                    ));
                }
            }
            Operator::Equals | Operator::DoubleEquals | Operator::NotEquals => {
                if values.len() != 1 {
                    errs.push(format!(
                        "values: Invalid value: {}: exact-match compatibility requires one single value",
                        list()
                    ));
                }
            }
            Operator::Exists | Operator::DoesNotExist => {
                if !values.is_empty() {
                    errs.push(format!(
                        "values: Invalid value: {}: values set must be empty for exists and does not exist",
                        list()
                    ));
                }
            }
            Operator::GreaterThan | Operator::LessThan => {
                if values.len() != 1 {
                    errs.push(format!(
                        "values: Invalid value: {}: for 'Gt', 'Lt' operators, exactly one value is required",
                        list()
                    ));
                }
                for (i, v) in values.iter().enumerate() {
                    if v.parse::<i64>().is_err() {
                        errs.push(invalid(
                            &format!("values[{i}]"),
                            v,
                            "for 'Gt', 'Lt' operators, the value must be an integer",
                        ));
                    }
                }
            }
        }
        for (i, v) in values.iter().enumerate() {
            let ve = label_value_errors(v);
            if !ve.is_empty() {
                errs.push(invalid(&format!("values[{i}][{key}]"), v, &ve.join("; ")));
            }
        }
        match aggregate(errs) {
            Some(m) => Err(SelectorError::new(m)),
            None => Ok(Requirement {
                key: key.to_string(),
                operator,
                values,
            }),
        }
    }

    /// Whether a label set satisfies the requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matches_with(|k| labels.get(k).map(|s| s.as_str()))
    }

    /// Whether the labels read by `get` (a label's value by key, `None` when absent)
    /// satisfy the requirement.
    pub fn matches_with<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        let v = get(&self.key);
        match self.operator {
            Operator::In | Operator::Equals | Operator::DoubleEquals => {
                v.is_some_and(|v| self.values.iter().any(|x| x == v))
            }
            Operator::NotIn | Operator::NotEquals => {
                v.is_none_or(|v| !self.values.iter().any(|x| x == v))
            }
            Operator::Exists => v.is_some(),
            Operator::DoesNotExist => v.is_none(),
            Operator::GreaterThan | Operator::LessThan => {
                let Some(have) = v.and_then(|v| v.parse::<i64>().ok()) else {
                    return false;
                };
                let [want] = self.values.as_slice() else {
                    return false;
                };
                let Ok(want) = want.parse::<i64>() else {
                    return false;
                };
                if self.operator == Operator::GreaterThan {
                    have > want
                } else {
                    have < want
                }
            }
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let first = self.values.first().map(|s| s.as_str()).unwrap_or("");
        match self.operator {
            Operator::Exists => write!(f, "{}", self.key),
            Operator::DoesNotExist => write!(f, "!{}", self.key),
            Operator::Equals => write!(f, "{}={}", self.key, first),
            Operator::DoubleEquals => write!(f, "{}=={}", self.key, first),
            Operator::NotEquals => write!(f, "{}!={}", self.key, first),
            Operator::GreaterThan => write!(f, "{}>{}", self.key, first),
            Operator::LessThan => write!(f, "{}<{}", self.key, first),
            Operator::In => write!(f, "{} in ({})", self.key, self.values.join(",")),
            Operator::NotIn => write!(f, "{} notin ({})", self.key, self.values.join(",")),
        }
    }
}

/// A parsed label selector: requirements ANDed together, sorted by key.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct LabelSelector {
    /// The requirements (all must hold).
    pub requirements: Vec<Requirement>,
    /// Matches nothing at all (a null `metav1.LabelSelector`).
    pub nothing: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tok {
    Error,
    Eos,
    ClosedPar,
    Comma,
    DoesNotExist,
    DoubleEquals,
    Equals,
    GreaterThan,
    Identifier,
    In,
    LessThan,
    NotEquals,
    NotIn,
    OpenPar,
}

fn is_special(c: char) -> bool {
    matches!(c, '=' | '!' | '(' | ')' | ',' | '>' | '<')
}

fn special_token(s: &str) -> Option<Tok> {
    Some(match s {
        ")" => Tok::ClosedPar,
        "," => Tok::Comma,
        "!" => Tok::DoesNotExist,
        "==" => Tok::DoubleEquals,
        "=" => Tok::Equals,
        ">" => Tok::GreaterThan,
        "<" => Tok::LessThan,
        "!=" => Tok::NotEquals,
        "(" => Tok::OpenPar,
        _ => return None,
    })
}

fn lex(input: &str) -> Vec<(Tok, String)> {
    let chars: Vec<char> = input.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    loop {
        while i < chars.len() && matches!(chars[i], ' ' | '\t' | '\r' | '\n') {
            i += 1;
        }
        if i >= chars.len() {
            out.push((Tok::Eos, String::new()));
            return out;
        }
        if is_special(chars[i]) {
            let mut buf = String::new();
            let mut last: Option<(Tok, String)> = None;
            while i < chars.len() && is_special(chars[i]) {
                buf.push(chars[i]);
                match special_token(&buf) {
                    Some(t) => {
                        last = Some((t, buf.clone()));
                        i += 1;
                    }
                    None if last.is_some() => break,
                    None => i += 1,
                }
            }
            match last {
                Some(t) => out.push(t),
                None => {
                    out.push((Tok::Error, format!("error expected: keyword found '{buf}'")));
                }
            }
        } else {
            let start = i;
            while i < chars.len()
                && !is_special(chars[i])
                && !matches!(chars[i], ' ' | '\t' | '\r' | '\n')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let tok = match word.as_str() {
                "in" => Tok::In,
                "notin" => Tok::NotIn,
                _ => Tok::Identifier,
            };
            out.push((tok, word));
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Ctx {
    KeyAndOperator,
    Values,
}

struct Parser {
    items: Vec<(Tok, String)>,
    pos: usize,
}

impl Parser {
    fn lookahead(&self, ctx: Ctx) -> (Tok, String) {
        let (t, l) = self
            .items
            .get(self.pos)
            .cloned()
            .unwrap_or((Tok::Eos, String::new()));
        if ctx == Ctx::Values && matches!(t, Tok::In | Tok::NotIn) {
            return (Tok::Identifier, l);
        }
        (t, l)
    }

    fn consume(&mut self, ctx: Ctx) -> (Tok, String) {
        let r = self.lookahead(ctx);
        if self.pos < self.items.len() {
            self.pos += 1;
        }
        r
    }

    fn parse(&mut self) -> Result<Vec<Requirement>, String> {
        let mut reqs = Vec::new();
        loop {
            let (tok, lit) = self.lookahead(Ctx::Values);
            match tok {
                Tok::Identifier | Tok::DoesNotExist => {
                    let r = self
                        .parse_requirement()
                        .map_err(|e| format!("unable to parse requirement: {e}"))?;
                    reqs.push(r);
                    let (t, l) = self.consume(Ctx::Values);
                    match t {
                        Tok::Eos => return Ok(reqs),
                        Tok::Comma => {
                            let (t2, l2) = self.lookahead(Ctx::Values);
                            if t2 != Tok::Identifier && t2 != Tok::DoesNotExist {
                                return Err(format!(
                                    "found '{l2}', expected: identifier after ','"
                                ));
                            }
                        }
                        _ => return Err(format!("found '{l}', expected: ',' or 'end of string'")),
                    }
                }
                Tok::Eos => return Ok(reqs),
                _ => {
                    return Err(format!(
                        "found '{lit}', expected: !, identifier, or 'end of string'"
                    ))
                }
            }
        }
    }

    fn parse_requirement(&mut self) -> Result<Requirement, String> {
        let (key, op) = self.parse_key_and_infer_operator()?;
        if let Some(op @ (Operator::Exists | Operator::DoesNotExist)) = op {
            return Requirement::new(&key, op, Vec::new()).map_err(|e| e.message);
        }
        let op = self.parse_operator()?;
        let values = match op {
            Operator::In | Operator::NotIn => self.parse_values()?,
            _ => self.parse_exact_value()?,
        };
        Requirement::new(&key, op, values).map_err(|e| e.message)
    }

    fn parse_key_and_infer_operator(&mut self) -> Result<(String, Option<Operator>), String> {
        let mut op = None;
        let (mut tok, mut lit) = self.consume(Ctx::Values);
        if tok == Tok::DoesNotExist {
            op = Some(Operator::DoesNotExist);
            (tok, lit) = self.consume(Ctx::Values);
        }
        if tok != Tok::Identifier {
            return Err(format!("found '{lit}', expected: identifier"));
        }
        let errs = qualified_name_errors(&lit);
        if !errs.is_empty() {
            return Err(invalid("<nil>", &lit, &errs.join("; ")));
        }
        let (t, _) = self.lookahead(Ctx::Values);
        if (t == Tok::Eos || t == Tok::Comma) && op != Some(Operator::DoesNotExist) {
            op = Some(Operator::Exists);
        }
        Ok((lit, op))
    }

    fn parse_operator(&mut self) -> Result<Operator, String> {
        let (tok, lit) = self.consume(Ctx::KeyAndOperator);
        Ok(match tok {
            Tok::In => Operator::In,
            Tok::Equals => Operator::Equals,
            Tok::DoubleEquals => Operator::DoubleEquals,
            Tok::GreaterThan => Operator::GreaterThan,
            Tok::LessThan => Operator::LessThan,
            Tok::NotIn => Operator::NotIn,
            Tok::NotEquals => Operator::NotEquals,
            _ => {
                return Err(format!(
                    "found '{lit}', expected: in, notin, =, ==, !=, gt, lt"
                ))
            }
        })
    }

    fn parse_values(&mut self) -> Result<Vec<String>, String> {
        let (tok, lit) = self.consume(Ctx::Values);
        if tok != Tok::OpenPar {
            return Err(format!("found '{lit}' expected: '('"));
        }
        let (tok, lit) = self.lookahead(Ctx::Values);
        match tok {
            Tok::Identifier | Tok::Comma => {
                let s = self.parse_identifiers_list()?;
                let (t, _) = self.consume(Ctx::Values);
                if t != Tok::ClosedPar {
                    return Err(format!("found '{lit}', expected: ')'"));
                }
                Ok(s)
            }
            Tok::ClosedPar => {
                self.consume(Ctx::Values);
                Ok(vec![String::new()])
            }
            _ => Err(format!("found '{lit}', expected: ',', ')' or identifier")),
        }
    }

    fn parse_identifiers_list(&mut self) -> Result<Vec<String>, String> {
        let mut s: Vec<String> = Vec::new();
        loop {
            let (tok, lit) = self.consume(Ctx::Values);
            match tok {
                Tok::Identifier => {
                    s.push(lit);
                    let (t2, l2) = self.lookahead(Ctx::Values);
                    match t2 {
                        Tok::Comma => continue,
                        Tok::ClosedPar => return Ok(s),
                        _ => return Err(format!("found '{l2}', expected: ',' or ')'")),
                    }
                }
                Tok::Comma => {
                    if s.is_empty() {
                        s.push(String::new());
                    }
                    let (t2, _) = self.lookahead(Ctx::Values);
                    if t2 == Tok::ClosedPar {
                        s.push(String::new());
                        return Ok(s);
                    }
                    if t2 == Tok::Comma {
                        self.consume(Ctx::Values);
                        s.push(String::new());
                    }
                }
                _ => return Err(format!("found '{lit}', expected: ',', or identifier")),
            }
        }
    }

    fn parse_exact_value(&mut self) -> Result<Vec<String>, String> {
        let (tok, _) = self.lookahead(Ctx::Values);
        if tok == Tok::Eos || tok == Tok::Comma {
            return Ok(vec![String::new()]);
        }
        let (tok, lit) = self.consume(Ctx::Values);
        if tok == Tok::Identifier {
            return Ok(vec![lit]);
        }
        Err(format!("found '{lit}', expected: identifier"))
    }
}

/// A `metav1.LabelSelector` operator (`In`, `NotIn`, `Exists`, `DoesNotExist`).
fn operator_of(op: &str) -> Result<Operator, SelectorError> {
    match op {
        "In" => Ok(Operator::In),
        "NotIn" => Ok(Operator::NotIn),
        "Exists" => Ok(Operator::Exists),
        "DoesNotExist" => Ok(Operator::DoesNotExist),
        other => Err(SelectorError::new(format!(
            "{} is not a valid label selector operator",
            go_quote(other)
        ))),
    }
}

/// Whether `labels` match a typed `metav1.LabelSelector` (upstream's
/// `LabelSelectorAsSelector(sel).Matches(labels)`): `{}` matches everything, an invalid
/// selector (unknown operator, `In` without values, bad key) matches nothing.
///
/// Evaluated in place, without building a [`LabelSelector`] (controllers call it for
/// every pod): the same answer as `LabelSelector::from_k8s(sel)` then `matches`.
pub fn k8s_selector_matches(sel: &K8sLabelSelector, labels: &BTreeMap<String, String>) -> bool {
    for (k, v) in sel.match_labels.iter().flatten() {
        if !is_qualified_name(k) || !is_label_value(v) || labels.get(k) != Some(v) {
            return false;
        }
    }
    for e in sel.match_expressions.iter().flatten() {
        let values = e.values.as_deref().unwrap_or(&[]);
        if !is_qualified_name(&e.key) || !values.iter().all(|v| is_label_value(v)) {
            return false;
        }
        let have = labels.get(&e.key);
        let ok = match e.operator.as_str() {
            "In" => !values.is_empty() && have.is_some_and(|h| values.contains(h)),
            "NotIn" => !values.is_empty() && have.is_none_or(|h| !values.contains(h)),
            "Exists" => values.is_empty() && have.is_some(),
            "DoesNotExist" => values.is_empty() && have.is_none(),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

/// Whether a typed `metav1.LabelSelector` has neither `matchLabels` nor
/// `matchExpressions` (selects everything).
pub fn k8s_selector_is_empty(sel: &K8sLabelSelector) -> bool {
    sel.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && sel.match_expressions.as_ref().is_none_or(|m| m.is_empty())
}

impl LabelSelector {
    /// A selector matching everything (the empty selector).
    pub fn everything() -> Self {
        LabelSelector::default()
    }

    /// A selector matching nothing.
    pub fn nothing() -> Self {
        LabelSelector {
            requirements: Vec::new(),
            nothing: true,
        }
    }

    /// Parses a selector string (`?labelSelector=`, `kubectl -l`) as upstream's
    /// `labels.Parse`. The empty string selects everything.
    pub fn parse(input: &str) -> Result<Self, SelectorError> {
        let mut p = Parser {
            items: lex(input),
            pos: 0,
        };
        let mut reqs = p.parse().map_err(SelectorError::new)?;
        reqs.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(LabelSelector {
            requirements: reqs,
            nothing: false,
        })
    }

    /// Builds a selector from a `metav1.LabelSelector` JSON object (as in a Deployment's
    /// `spec.selector`), as upstream's `LabelSelectorAsSelector`: `null` selects nothing,
    /// `{}` selects everything.
    pub fn from_json(v: &Value) -> Result<Self, SelectorError> {
        let obj = match v {
            Value::Null => return Ok(Self::nothing()),
            Value::Object(o) => o,
            _ => return Err(SelectorError::new("label selector must be an object")),
        };
        let mut reqs = Vec::new();
        if let Some(ml) = obj.get("matchLabels").and_then(|m| m.as_object()) {
            for (k, val) in ml {
                let val = val.as_str().unwrap_or_default().to_string();
                reqs.push(Requirement::new(k, Operator::Equals, vec![val])?);
            }
        }
        if let Some(exprs) = obj.get("matchExpressions").and_then(|m| m.as_array()) {
            for e in exprs {
                let key = e.get("key").and_then(|k| k.as_str()).unwrap_or_default();
                let op_str = e
                    .get("operator")
                    .and_then(|k| k.as_str())
                    .unwrap_or_default();
                let op = operator_of(op_str)?;
                let values: Vec<String> = e
                    .get("values")
                    .and_then(|v| v.as_array())
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default();
                reqs.push(Requirement::new(key, op, values)?);
            }
        }
        reqs.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(LabelSelector {
            requirements: reqs,
            nothing: false,
        })
    }

    /// Builds a selector from a typed `metav1.LabelSelector`, as upstream's
    /// `LabelSelectorAsSelector` (`{}` selects everything; an unknown operator or an
    /// invalid key or value is an error).
    pub fn from_k8s(sel: &K8sLabelSelector) -> Result<Self, SelectorError> {
        let mut reqs = Vec::new();
        for (k, v) in sel.match_labels.iter().flatten() {
            reqs.push(Requirement::new(k, Operator::Equals, vec![v.clone()])?);
        }
        for e in sel.match_expressions.iter().flatten() {
            let op = operator_of(&e.operator)?;
            reqs.push(Requirement::new(
                &e.key,
                op,
                e.values.clone().unwrap_or_default(),
            )?);
        }
        reqs.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(LabelSelector {
            requirements: reqs,
            nothing: false,
        })
    }

    /// Adds a requirement (upstream's `Selector.Add`); the requirements stay sorted by
    /// key. Adding to the selector that matches nothing changes nothing.
    pub fn add(&mut self, r: Requirement) {
        let at = self.requirements.partition_point(|x| x.key <= r.key);
        self.requirements.insert(at, r);
    }

    /// The requirements, sorted by key.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// Whether the labels read by `get` (a label's value by key) match.
    pub fn matches_with<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        !self.nothing && self.requirements.iter().all(|r| r.matches_with(&get))
    }

    /// Whether the selector selects everything.
    pub fn is_empty(&self) -> bool {
        !self.nothing && self.requirements.is_empty()
    }

    /// Whether a label set matches.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        !self.nothing && self.requirements.iter().all(|r| r.matches(labels))
    }

    /// Whether an object's `metadata.labels` (a JSON object, or absent) matches.
    pub fn matches_json(&self, labels: Option<&Value>) -> bool {
        if self.nothing {
            return false;
        }
        let map = labels.and_then(|l| l.as_object());
        self.requirements
            .iter()
            .all(|r| r.matches_with(|k| map.and_then(|m| m.get(k)).and_then(|v| v.as_str())))
    }

    /// If the selector pins `key` to one value (`key=v`, `key==v` or `key in (v)`),
    /// that value (useful for indexes).
    pub fn required_value(&self, key: &str) -> Option<&str> {
        self.requirements
            .iter()
            .find_map(|r| match (r.operator, r.values.as_slice()) {
                (Operator::Equals | Operator::DoubleEquals | Operator::In, [v]) if r.key == key => {
                    Some(v.as_str())
                }
                _ => None,
            })
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.requirements.iter().map(|r| r.to_string()).collect();
        write!(f, "{}", parts.join(","))
    }
}

// ---------------------------------------------------------------------------------
// Node selectors (core/v1 NodeSelector: node affinity, PersistentVolume node affinity)
// ---------------------------------------------------------------------------------

/// A compiled `core/v1` `NodeSelectorTerm`, as upstream's `nodeaffinity` package:
/// `matchExpressions` on the node's labels (`In`, `NotIn`, `Exists`, `DoesNotExist`,
/// `Gt`, `Lt`) and `matchFields` on its fields (`metadata.name`; `In`/`NotIn` with one
/// value), all ANDed. An empty term, or one that does not parse, matches nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSelectorTermMatcher {
    /// `None` when the term is empty or invalid.
    parsed: Option<ParsedTerm>,
}

/// A valid term: label requirements and `(field, equals, value)` requirements.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ParsedTerm {
    labels: LabelSelector,
    fields: Vec<(String, bool, String)>,
}

fn node_operator(op: &str) -> Option<Operator> {
    Some(match op {
        "In" => Operator::In,
        "NotIn" => Operator::NotIn,
        "Exists" => Operator::Exists,
        "DoesNotExist" => Operator::DoesNotExist,
        "Gt" => Operator::GreaterThan,
        "Lt" => Operator::LessThan,
        _ => return None,
    })
}

impl NodeSelectorTermMatcher {
    /// Compiles a term.
    pub fn new(term: &K8sNodeSelectorTerm) -> Self {
        let exprs = term.match_expressions.as_deref().unwrap_or(&[]);
        let fields = term.match_fields.as_deref().unwrap_or(&[]);
        if exprs.is_empty() && fields.is_empty() {
            return NodeSelectorTermMatcher { parsed: None };
        }
        let parse = || -> Option<ParsedTerm> {
            let mut labels = LabelSelector::everything();
            for e in exprs {
                let op = node_operator(&e.operator)?;
                let values = e.values.clone().unwrap_or_default();
                labels.add(Requirement::new(&e.key, op, values).ok()?);
            }
            let mut field_reqs = Vec::new();
            for f in fields {
                let equals = match f.operator.as_str() {
                    "In" => true,
                    "NotIn" => false,
                    _ => return None,
                };
                let [value] = f.values.as_deref().unwrap_or(&[]) else {
                    return None;
                };
                field_reqs.push((f.key.clone(), equals, value.clone()));
            }
            Some(ParsedTerm {
                labels,
                fields: field_reqs,
            })
        };
        NodeSelectorTermMatcher { parsed: parse() }
    }

    /// Whether a node with `name` and `labels` matches.
    pub fn matches(&self, name: &str, labels: Option<&BTreeMap<String, String>>) -> bool {
        let Some(ParsedTerm {
            labels: sel,
            fields,
        }) = &self.parsed
        else {
            return false;
        };
        sel.matches_with(|k| labels.and_then(|l| l.get(k)).map(String::as_str))
            && fields.iter().all(|(key, equals, value)| {
                let have = if key == "metadata.name" { name } else { "" };
                (have == value) == *equals
            })
    }
}

/// A compiled `core/v1` `NodeSelector`: its terms ORed (no terms match nothing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSelectorMatcher {
    terms: Vec<NodeSelectorTermMatcher>,
}

impl NodeSelectorMatcher {
    /// Compiles a node selector.
    pub fn new(sel: &K8sNodeSelector) -> Self {
        NodeSelectorMatcher {
            terms: sel
                .node_selector_terms
                .iter()
                .map(NodeSelectorTermMatcher::new)
                .collect(),
        }
    }

    /// Whether any term matches the node with `name` and `labels`.
    pub fn matches(&self, name: &str, labels: Option<&BTreeMap<String, String>>) -> bool {
        self.terms.iter().any(|t| t.matches(name, labels))
    }
}

// ---------------------------------------------------------------------------------
// Field selectors
// ---------------------------------------------------------------------------------

/// A field selector operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldOp {
    /// `field=value` or `field==value`.
    Equals,
    /// `field!=value`.
    NotEquals,
}

/// One term of a field selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldRequirement {
    /// The field path, e.g. `spec.nodeName`.
    pub field: String,
    /// The operator.
    pub op: FieldOp,
    /// The value (unescaped).
    pub value: String,
}

/// A parsed field selector: terms ANDed together.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct FieldSelector {
    /// The terms, sorted as upstream sorts them.
    pub requirements: Vec<FieldRequirement>,
}

/// Splits on commas not escaped with `\`.
fn split_terms(s: &str) -> Vec<String> {
    if s.is_empty() {
        return Vec::new();
    }
    let mut terms = Vec::new();
    let mut cur = String::new();
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            cur.push(c);
            escaped = false;
        } else if c == '\\' {
            cur.push(c);
            escaped = true;
        } else if c == ',' {
            terms.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    terms.push(cur);
    terms
}

fn split_term(term: &str) -> Option<(&str, &str, &str)> {
    for (i, _) in term.char_indices() {
        let rest = &term[i..];
        for op in ["!=", "==", "="] {
            if let Some(rhs) = rest.strip_prefix(op) {
                return Some((&term[..i], op, rhs));
            }
        }
    }
    None
}

fn unescape_value(s: &str) -> Result<String, SelectorError> {
    if !s.contains(['\\', ',', '=']) {
        return Ok(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut in_slash = false;
    for c in s.chars() {
        if in_slash {
            match c {
                '\\' | ',' | '=' => out.push(c),
                other => {
                    return Err(SelectorError::new(format!(
                        "invalid escape sequence: \\{other}"
                    )))
                }
            }
            in_slash = false;
            continue;
        }
        match c {
            '\\' => in_slash = true,
            ',' | '=' => {
                return Err(SelectorError::new(format!(
                    "invalid field selector: unescaped character in value: {}",
                    c as u32
                )))
            }
            c => out.push(c),
        }
    }
    if in_slash {
        return Err(SelectorError::new("invalid escape sequence: \\"));
    }
    Ok(out)
}

fn escape_value(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace(',', "\\,")
        .replace('=', "\\=")
}

impl FieldSelector {
    /// Parses a field selector string (`?fieldSelector=`) as upstream's
    /// `fields.ParseSelector`. The empty string selects everything.
    pub fn parse(input: &str) -> Result<Self, SelectorError> {
        let mut parts = split_terms(input);
        parts.sort();
        let mut reqs = Vec::new();
        for part in &parts {
            if part.is_empty() {
                continue;
            }
            let Some((lhs, op, rhs)) = split_term(part) else {
                return Err(SelectorError::new(format!(
                    "invalid selector: '{input}'; can't understand '{part}'"
                )));
            };
            let value = unescape_value(rhs)?;
            let op = if op == "!=" {
                FieldOp::NotEquals
            } else {
                FieldOp::Equals
            };
            reqs.push(FieldRequirement {
                field: lhs.to_string(),
                op,
                value,
            });
        }
        Ok(FieldSelector { requirements: reqs })
    }

    /// Whether the selector selects everything.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Checks every field against what the kind supports and applies upstream's
    /// field-label conversions (pods' old `spec.host` becomes `spec.nodeName`).
    /// The error carries upstream's message (answer it as a 400 BadRequest).
    pub fn convert_for(&self, group: &str, kind: &str) -> Result<FieldSelector, SelectorError> {
        let mut out = self.clone();
        for r in &mut out.requirements {
            if group.is_empty() && kind == "Pod" && r.field == "spec.host" {
                r.field = "spec.nodeName".to_string();
                continue;
            }
            if !supported_fields(group, kind).contains(&r.field.as_str()) {
                return Err(unsupported_field_error(group, kind, &r.field));
            }
        }
        Ok(out)
    }

    /// Whether field values (from `get`, `None` meaning the empty value) match.
    pub fn matches(&self, get: impl Fn(&str) -> Option<String>) -> bool {
        self.requirements.iter().all(|r| {
            let have = get(&r.field).unwrap_or_default();
            match r.op {
                FieldOp::Equals => have == r.value,
                FieldOp::NotEquals => have != r.value,
            }
        })
    }

    /// Whether an object of the given kind matches (fields as [`field_value`] reads them).
    pub fn matches_object(&self, group: &str, kind: &str, obj: &Value) -> bool {
        self.matches(|f| field_value(group, kind, obj, f))
    }

    /// If the selector pins `field` to one value (`field=v`), that value.
    pub fn required_value(&self, field: &str) -> Option<&str> {
        self.requirements
            .iter()
            .find(|r| r.field == field && r.op == FieldOp::Equals)
            .map(|r| r.value.as_str())
    }
}

impl fmt::Display for FieldSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .requirements
            .iter()
            .map(|r| {
                let op = if r.op == FieldOp::Equals { "=" } else { "!=" };
                format!("{}{}{}", r.field, op, escape_value(&r.value))
            })
            .collect();
        write!(f, "{}", parts.join(","))
    }
}

const META_ONLY: &[&str] = &["metadata.name", "metadata.namespace"];
const POD_FIELDS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "spec.hostNetwork",
    "status.phase",
    "status.podIP",
    "status.podIPs",
    "status.nominatedNodeName",
];
const EVENT_FIELDS: &[&str] = &[
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
    "metadata.namespace",
    "metadata.name",
];
/// events.k8s.io/v1 Events: upstream maps these names onto the core Event fields
/// (`regarding.*` is `involvedObject.*`, `reportingController` is `reportingComponent`);
/// rk3s filters the events.k8s.io form of the object, so the names are read as they are.
/// There is no `source` (nor `deprecatedSource`) here, as upstream.
const EVENTS_K8S_IO_EVENT_FIELDS: &[&str] = &[
    "reason",
    "regarding.kind",
    "regarding.namespace",
    "regarding.name",
    "regarding.uid",
    "regarding.apiVersion",
    "regarding.resourceVersion",
    "regarding.fieldPath",
    "reportingController",
    "type",
    "metadata.namespace",
    "metadata.name",
];

/// The fields a kind can be selected on (upstream's field-label conversions). Kinds
/// without their own list support `metadata.name` and `metadata.namespace`.
pub fn supported_fields(group: &str, kind: &str) -> &'static [&'static str] {
    own_fields(group, kind).unwrap_or(META_ONLY)
}

/// The kinds with their own field-label conversion upstream.
fn own_fields(group: &str, kind: &str) -> Option<&'static [&'static str]> {
    Some(match (group, kind) {
        ("", "Pod") => POD_FIELDS,
        ("", "Node") => &["metadata.name", "spec.unschedulable"],
        ("", "ReplicationController") => {
            &["metadata.name", "metadata.namespace", "status.replicas"]
        }
        ("", "Event") => EVENT_FIELDS,
        ("events.k8s.io", "Event") => EVENTS_K8S_IO_EVENT_FIELDS,
        ("", "Namespace") => &["status.phase", "metadata.name"],
        ("", "Secret") => &["type", "metadata.namespace", "metadata.name"],
        ("", "Service") => &[
            "metadata.namespace",
            "metadata.name",
            "spec.clusterIP",
            "spec.type",
        ],
        ("apps", "ReplicaSet") => &["metadata.name", "metadata.namespace", "status.replicas"],
        ("batch", "Job") => &["metadata.name", "metadata.namespace", "status.successful"],
        ("certificates.k8s.io", "CertificateSigningRequest") => {
            &["metadata.name", "spec.signerName"]
        }
        _ => return None,
    })
}

/// Upstream's error for a field label a kind does not support: kinds with their own
/// conversion answer `field label not supported: <x>`, the others
/// `"<x>" is not a known field selector: only "metadata.name", "metadata.namespace"`.
pub fn unsupported_field_error(group: &str, kind: &str, field: &str) -> SelectorError {
    if own_fields(group, kind).is_some() {
        SelectorError::new(format!("field label not supported: {field}"))
    } else {
        SelectorError::new(format!(
            "{} is not a known field selector: only \"metadata.name\", \"metadata.namespace\"",
            go_quote(field)
        ))
    }
}

fn str_at(obj: &Value, path: &[&str]) -> String {
    let mut cur = obj;
    for p in path {
        match cur.get(p) {
            Some(v) => cur = v,
            None => return String::new(),
        }
    }
    match cur {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => String::new(),
    }
}

fn bool_at(obj: &Value, path: &[&str]) -> String {
    let mut cur = obj;
    for p in path {
        match cur.get(p) {
            Some(v) => cur = v,
            None => return "false".to_string(),
        }
    }
    cur.as_bool().unwrap_or(false).to_string()
}

fn int_at(obj: &Value, path: &[&str]) -> String {
    let mut cur = obj;
    for p in path {
        match cur.get(p) {
            Some(v) => cur = v,
            None => return "0".to_string(),
        }
    }
    cur.as_i64().unwrap_or(0).to_string()
}

/// The value of a selectable field of an object, as upstream's per-kind field sets
/// render it (booleans `true`/`false`, integers in decimal, absent strings empty).
/// `None` when the kind does not support the field.
pub fn field_value(group: &str, kind: &str, obj: &Value, field: &str) -> Option<String> {
    if !supported_fields(group, kind).contains(&field) {
        return None;
    }
    let v = match field {
        "metadata.name" => str_at(obj, &["metadata", "name"]),
        "metadata.namespace" => str_at(obj, &["metadata", "namespace"]),
        _ => match (group, kind, field) {
            ("", "Pod", "spec.hostNetwork") => bool_at(obj, &["spec", "hostNetwork"]),
            ("", "Pod", "status.podIP") => {
                let first = obj
                    .pointer("/status/podIPs/0/ip")
                    .and_then(|v| v.as_str())
                    .map(String::from);
                first.unwrap_or_else(|| str_at(obj, &["status", "podIP"]))
            }
            // accepted by upstream but not in its field set: always empty
            ("", "Pod", "status.podIPs") => String::new(),
            ("", "Node", "spec.unschedulable") => bool_at(obj, &["spec", "unschedulable"]),
            ("", "ReplicationController", "status.replicas")
            | ("apps", "ReplicaSet", "status.replicas") => int_at(obj, &["status", "replicas"]),
            ("batch", "Job", "status.successful") => int_at(obj, &["status", "succeeded"]),
            ("", "Event", "source") => {
                let s = str_at(obj, &["source", "component"]);
                if s.is_empty() {
                    str_at(obj, &["reportingComponent"])
                } else {
                    s
                }
            }
            (_, _, f) => {
                let path: Vec<&str> = f.split('.').collect();
                str_at(obj, &path)
            }
        },
    };
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn sel(s: &str) -> LabelSelector {
        match LabelSelector::parse(s) {
            Ok(x) => x,
            Err(e) => panic!("parse {s:?}: {e}"),
        }
    }

    fn err(s: &str) -> String {
        match LabelSelector::parse(s) {
            Ok(x) => panic!("{s:?} parsed as {x:?}"),
            Err(e) => e.message,
        }
    }

    #[test]
    fn parses_every_operator() {
        let s = sel("a=1,b==2,c!=3,d in (x, y),e notin (z),f,!g,h>5,i<7");
        let ops: Vec<Operator> = s.requirements.iter().map(|r| r.operator).collect();
        assert_eq!(
            ops,
            vec![
                Operator::Equals,
                Operator::DoubleEquals,
                Operator::NotEquals,
                Operator::In,
                Operator::NotIn,
                Operator::Exists,
                Operator::DoesNotExist,
                Operator::GreaterThan,
                Operator::LessThan
            ]
        );
        assert_eq!(s.requirements[3].values, vec!["x", "y"]);
        assert_eq!(
            s.to_string(),
            "a=1,b==2,c!=3,d in (x,y),e notin (z),f,!g,h>5,i<7"
        );
    }

    #[test]
    fn sorts_by_key_and_handles_whitespace() {
        let s = sel("  zone = east ,  app  in(web,api) ");
        assert_eq!(s.to_string(), "app in (api,web),zone=east");
        assert_eq!(sel("").requirements.len(), 0);
        assert!(sel("").is_empty());
        assert_eq!(sel("a=").requirements[0].values, vec![""]);
        assert_eq!(sel("a in ()").requirements[0].values, vec![""]);
        assert_eq!(sel("in=notin").requirements[0].key, "in");
        assert_eq!(
            sel("example.com/tier=front").requirements[0].key,
            "example.com/tier"
        );
    }

    #[test]
    fn upstream_error_messages() {
        assert_eq!(
            err("a b"),
            "unable to parse requirement: found 'b', expected: in, notin, =, ==, !=, gt, lt"
        );
        assert_eq!(err("a=b c"), "found 'c', expected: ',' or 'end of string'");
        assert_eq!(err("a=b,"), "found '', expected: identifier after ','");
        assert_eq!(
            err(",a"),
            "found ',', expected: !, identifier, or 'end of string'"
        );
        assert_eq!(
            err("a in b"),
            "unable to parse requirement: found 'b' expected: '('"
        );
        assert_eq!(
            err("a in (b c)"),
            "unable to parse requirement: found 'c', expected: ',' or ')'"
        );
        assert_eq!(err("!a=b"), "found '=', expected: ',' or 'end of string'");
        assert_eq!(err("a>x"), "unable to parse requirement: values[0]: Invalid value: \"x\": for 'Gt', 'Lt' operators, the value must be an integer");
        assert_eq!(
            err("-a=b"),
            "unable to parse requirement: <nil>: Invalid value: \"-a\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
        );
        assert_eq!(
            err("a=-b"),
            "unable to parse requirement: values[0][a]: Invalid value: \"-b\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
        );
        assert!(err("Bad_Prefix/a=b").contains("prefix part a lowercase RFC 1123 subdomain"));
    }

    #[test]
    fn matching() {
        let l = labels(&[("app", "web"), ("tier", "front"), ("n", "10")]);
        assert!(sel("app=web").matches(&l));
        assert!(sel("app==web,tier").matches(&l));
        assert!(!sel("app!=web").matches(&l));
        assert!(sel("missing!=x").matches(&l));
        assert!(sel("app in (api,web)").matches(&l));
        assert!(!sel("app notin (api,web)").matches(&l));
        assert!(sel("missing notin (x)").matches(&l));
        assert!(!sel("missing in (x)").matches(&l));
        assert!(sel("!missing").matches(&l));
        assert!(!sel("!app").matches(&l));
        assert!(sel("n>5").matches(&l));
        assert!(!sel("n<5").matches(&l));
        assert!(!sel("app>5").matches(&l));
        assert!(!sel("missing>5").matches(&l));
        assert!(sel("").matches(&l));
        let j = json!({"app": "web", "tier": "front"});
        assert!(sel("app=web,tier=front").matches_json(Some(&j)));
        assert!(!sel("app=api").matches_json(Some(&j)));
        assert!(sel("!app").matches_json(None));
        assert!(!sel("app").matches_json(None));
        assert_eq!(sel("app=web,x in (y)").required_value("app"), Some("web"));
    }

    #[test]
    fn node_selectors() {
        use k8s_openapi::api::core::v1::{NodeSelectorRequirement, NodeSelectorTerm};
        let labels: BTreeMap<String, String> = [("zone", "a"), ("cores", "8")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let req = |key: &str, op: &str, values: &[&str]| NodeSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: Some(values.iter().map(|v| v.to_string()).collect()),
        };
        let exprs = |r: NodeSelectorRequirement| {
            NodeSelectorTermMatcher::new(&NodeSelectorTerm {
                match_expressions: Some(vec![r]),
                match_fields: None,
            })
            .matches("n1", Some(&labels))
        };
        for (r, want) in [
            (req("zone", "In", &["a", "b"]), true),
            (req("zone", "NotIn", &["a"]), false),
            (req("gpu", "NotIn", &["a"]), true),
            (req("zone", "Exists", &[]), true),
            (req("gpu", "DoesNotExist", &[]), true),
            (req("cores", "Gt", &["4"]), true),
            (req("cores", "Gt", &["8"]), false),
            (req("cores", "Lt", &["9"]), true),
            (req("zone", "Lt", &["9"]), false),
            // invalid: the term matches nothing
            (req("cores", "Gt", &["x"]), false),
            (req("cores", "Gt", &["1", "2"]), false),
            (req("zone", "In", &[]), false),
            (req("zone", "Bogus", &["a"]), false),
        ] {
            assert_eq!(exprs(r.clone()), want, "{r:?}");
        }
        let fields = |r: NodeSelectorRequirement, name: &str| {
            NodeSelectorTermMatcher::new(&NodeSelectorTerm {
                match_expressions: None,
                match_fields: Some(vec![r]),
            })
            .matches(name, None)
        };
        assert!(fields(req("metadata.name", "In", &["n1"]), "n1"));
        assert!(!fields(req("metadata.name", "In", &["n1"]), "n2"));
        assert!(fields(req("metadata.name", "NotIn", &["n1"]), "n2"));
        assert!(!fields(req("metadata.name", "In", &["n1", "n2"]), "n1"));
        assert!(!fields(req("metadata.name", "Exists", &[]), "n1"));
        assert!(!NodeSelectorTermMatcher::new(&NodeSelectorTerm::default()).matches("n1", None));
        let sel = k8s_openapi::api::core::v1::NodeSelector {
            node_selector_terms: vec![
                NodeSelectorTerm {
                    match_expressions: Some(vec![req("zone", "In", &["b"])]),
                    match_fields: None,
                },
                NodeSelectorTerm {
                    match_expressions: Some(vec![req("cores", "Gt", &["4"])]),
                    match_fields: Some(vec![req("metadata.name", "In", &["n1"])]),
                },
            ],
        };
        assert!(NodeSelectorMatcher::new(&sel).matches("n1", Some(&labels)));
        assert!(!NodeSelectorMatcher::new(&sel).matches("n2", Some(&labels)));
        let none = k8s_openapi::api::core::v1::NodeSelector::default();
        assert!(!NodeSelectorMatcher::new(&none).matches("n1", Some(&labels)));
    }

    #[test]
    fn typed_label_selectors() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
        let labels: BTreeMap<String, String> = [
            ("app".to_string(), "web".to_string()),
            ("tier".to_string(), "fe".to_string()),
        ]
        .into_iter()
        .collect();
        let req = |key: &str, op: &str, values: Option<Vec<&str>>| LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: values.map(|v| v.into_iter().map(String::from).collect()),
        };
        let sel = |ml: &[(&str, &str)], me: Vec<LabelSelectorRequirement>| K8sLabelSelector {
            match_labels: (!ml.is_empty()).then(|| {
                ml.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            }),
            match_expressions: (!me.is_empty()).then_some(me),
        };
        assert!(k8s_selector_is_empty(&sel(&[], vec![])));
        assert!(k8s_selector_matches(&sel(&[], vec![]), &labels));
        assert!(k8s_selector_matches(
            &sel(&[("app", "web")], vec![]),
            &labels
        ));
        assert!(!k8s_selector_matches(
            &sel(&[("app", "db")], vec![]),
            &labels
        ));
        for (r, want) in [
            (req("tier", "In", Some(vec!["fe", "be"])), true),
            (req("tier", "NotIn", Some(vec!["fe"])), false),
            (req("missing", "NotIn", Some(vec!["x"])), true),
            (req("app", "Exists", None), true),
            (req("app", "DoesNotExist", None), false),
            (req("missing", "DoesNotExist", None), true),
            // invalid selectors match nothing, as upstream's conversion fails
            (req("tier", "In", Some(vec![])), false),
            (req("tier", "Gt", Some(vec!["1"])), false),
            (req("bad key!", "Exists", None), false),
            (req("tier", "In", Some(vec!["fe", "not valid"])), false),
            (req("tier", "Exists", Some(vec!["x"])), false),
            (req("example.com/tier", "DoesNotExist", None), true),
            (req("Example.com/tier", "DoesNotExist", None), false),
            (req("a/b/c", "DoesNotExist", None), false),
        ] {
            let s = sel(&[], vec![r.clone()]);
            assert_eq!(k8s_selector_matches(&s, &labels), want, "{r:?}");
            // the in-place evaluation agrees with building the selector
            assert_eq!(
                LabelSelector::from_k8s(&s).is_ok_and(|x| x.matches(&labels)),
                want,
                "{r:?}"
            );
        }
        let s = LabelSelector::from_k8s(&sel(
            &[("app", "web")],
            vec![req("tier", "NotIn", Some(vec!["be", "a"]))],
        ))
        .unwrap();
        assert_eq!(s.to_string(), "app=web,tier notin (a,be)");
        assert!(s.matches_with(|k| labels.get(k).map(String::as_str)));
        assert_eq!(
            LabelSelector::from_k8s(&sel(&[], vec![req("a", "Foo", None)]))
                .unwrap_err()
                .to_string(),
            "\"Foo\" is not a valid label selector operator"
        );
    }

    #[test]
    fn from_json_label_selector() {
        let s = LabelSelector::from_json(&json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["front", "back"]},
                {"key": "canary", "operator": "DoesNotExist"}
            ]
        }))
        .map_err(|e| e.message);
        let s = match s {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(s.to_string(), "app=web,!canary,tier in (back,front)");
        assert!(s.matches(&labels(&[("app", "web"), ("tier", "back")])));
        assert!(!s.matches(&labels(&[
            ("app", "web"),
            ("tier", "back"),
            ("canary", "1")
        ])));
        assert!(LabelSelector::from_json(&json!({}))
            .map(|s| s.is_empty())
            .unwrap_or(false));
        let nothing = LabelSelector::from_json(&Value::Null).unwrap_or_default();
        assert!(!nothing.matches(&labels(&[])));
        let bad = LabelSelector::from_json(
            &json!({"matchExpressions": [{"key": "a", "operator": "Foo"}]}),
        );
        assert_eq!(
            bad.map_err(|e| e.message),
            Err("\"Foo\" is not a valid label selector operator".to_string())
        );
        let empty_in = LabelSelector::from_json(
            &json!({"matchExpressions": [{"key": "a", "operator": "In", "values": []}]}),
        );
        assert_eq!(
            empty_in.map_err(|e| e.message),
            Err("values: Invalid value: []string{}: for 'in', 'notin' operators, values set can't be empty".to_string())
        );
    }

    #[test]
    fn field_selector_parse() {
        let f =
            FieldSelector::parse("spec.nodeName=n1,status.phase!=Failed").map_err(|e| e.message);
        let f = match f {
            Ok(f) => f,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(f.requirements.len(), 2);
        assert_eq!(f.requirements[0].field, "spec.nodeName");
        assert_eq!(f.requirements[1].op, FieldOp::NotEquals);
        assert_eq!(f.to_string(), "spec.nodeName=n1,status.phase!=Failed");
        let d = FieldSelector::parse("metadata.name==a\\,b").unwrap_or_default();
        assert_eq!(d.requirements[0].value, "a,b");
        assert_eq!(d.requirements[0].op, FieldOp::Equals);
        assert!(FieldSelector::parse("")
            .map(|f| f.is_empty())
            .unwrap_or(false));
        assert_eq!(
            FieldSelector::parse("foo").map_err(|e| e.message),
            Err("invalid selector: 'foo'; can't understand 'foo'".to_string())
        );
        assert_eq!(
            FieldSelector::parse("a=b=c").map_err(|e| e.message),
            Err("invalid field selector: unescaped character in value: 61".to_string())
        );
        assert_eq!(
            FieldSelector::parse("a=b\\x").map_err(|e| e.message),
            Err("invalid escape sequence: \\x".to_string())
        );
    }

    #[test]
    fn field_selector_on_pods() {
        let pod = json!({
            "metadata": {"name": "p", "namespace": "default"},
            "spec": {"nodeName": "n1", "restartPolicy": "Always"},
            "status": {"phase": "Running", "podIPs": [{"ip": "10.42.0.5"}]}
        });
        let f = FieldSelector::parse("spec.nodeName=n1").unwrap_or_default();
        assert!(f.convert_for("", "Pod").is_ok());
        assert!(f.matches_object("", "Pod", &pod));
        assert!(!FieldSelector::parse("spec.nodeName=n2")
            .unwrap_or_default()
            .matches_object("", "Pod", &pod));
        assert!(FieldSelector::parse("spec.nodeName!=")
            .unwrap_or_default()
            .matches_object("", "Pod", &pod));
        assert!(FieldSelector::parse(
            "spec.hostNetwork=false,status.podIP=10.42.0.5,metadata.namespace=default"
        )
        .unwrap_or_default()
        .matches_object("", "Pod", &pod));
        let old = FieldSelector::parse("spec.host=n1")
            .unwrap_or_default()
            .convert_for("", "Pod")
            .unwrap_or_default();
        assert_eq!(old.requirements[0].field, "spec.nodeName");
        let bad = FieldSelector::parse("spec.foo=x")
            .unwrap_or_default()
            .convert_for("", "Pod");
        assert_eq!(
            bad.map_err(|e| e.message),
            Err("field label not supported: spec.foo".to_string())
        );
        let cm = FieldSelector::parse("data.x=y")
            .unwrap_or_default()
            .convert_for("", "ConfigMap");
        assert_eq!(
            cm.map_err(|e| e.message),
            Err("\"data.x\" is not a known field selector: only \"metadata.name\", \"metadata.namespace\"".to_string())
        );
        assert_eq!(
            FieldSelector::parse("metadata.namespace=x")
                .unwrap_or_default()
                .convert_for("", "Node")
                .map_err(|e| e.message),
            Err("field label not supported: metadata.namespace".to_string())
        );
    }

    #[test]
    fn field_values_per_kind() {
        let ev = json!({"involvedObject": {"kind": "Pod", "name": "p"}, "reason": "Started", "type": "Normal", "reportingComponent": "kubelet"});
        assert_eq!(
            field_value("", "Event", &ev, "involvedObject.kind").as_deref(),
            Some("Pod")
        );
        assert_eq!(
            field_value("", "Event", &ev, "source").as_deref(),
            Some("kubelet")
        );
        assert_eq!(
            field_value("", "Event", &ev, "involvedObject.uid").as_deref(),
            Some("")
        );
        let node = json!({"metadata": {"name": "n"}, "spec": {"unschedulable": true}});
        assert_eq!(
            field_value("", "Node", &node, "spec.unschedulable").as_deref(),
            Some("true")
        );
        let job = json!({"status": {"succeeded": 3}});
        assert_eq!(
            field_value("batch", "Job", &job, "status.successful").as_deref(),
            Some("3")
        );
        let secret = json!({"type": "kubernetes.io/tls"});
        assert_eq!(
            field_value("", "Secret", &secret, "type").as_deref(),
            Some("kubernetes.io/tls")
        );
        assert_eq!(field_value("", "ConfigMap", &secret, "type"), None);
        let csr = json!({"spec": {"signerName": "kubernetes.io/kubelet-serving"}});
        assert_eq!(
            field_value(
                "certificates.k8s.io",
                "CertificateSigningRequest",
                &csr,
                "spec.signerName"
            )
            .as_deref(),
            Some("kubernetes.io/kubelet-serving")
        );
        assert!(supported_fields("", "Namespace").contains(&"status.phase"));
    }
}

#[cfg(test)]
mod event_field_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_k8s_io_fields_select_the_new_names() {
        let ev = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "e", "namespace": "d"},
            "regarding": {"kind": "Pod", "name": "p", "namespace": "d", "uid": "u1", "fieldPath": "spec.containers{c}"},
            "reason": "Started", "type": "Normal", "reportingController": "kubelet"});
        let sel = |s: &str| {
            FieldSelector::parse(s)
                .unwrap_or_default()
                .convert_for("events.k8s.io", "Event")
        };
        for (s, want) in [
            ("regarding.kind=Pod", true),
            ("regarding.name=p,regarding.namespace=d", true),
            ("regarding.uid=u1", true),
            ("regarding.fieldPath=spec.containers{c}", true),
            ("regarding.apiVersion=", true),
            ("regarding.resourceVersion!=", false),
            ("reason=Started,type=Normal", true),
            ("reportingController=kubelet", true),
            ("reportingController=other", false),
            ("metadata.name=e,metadata.namespace=d", true),
        ] {
            let f = sel(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(f.matches_object("events.k8s.io", "Event", &ev), want, "{s}");
        }
        // upstream's conversion knows none of the core-only names
        for bad in [
            "involvedObject.kind",
            "source",
            "deprecatedSource",
            "reportingComponent",
            "note",
        ] {
            assert_eq!(
                sel(&format!("{bad}=x")).map_err(|e| e.message),
                Err(format!("field label not supported: {bad}"))
            );
        }
    }

    #[test]
    fn core_event_fields_all_supported() {
        let ev = json!({"metadata": {"name": "e", "namespace": "d"},
            "involvedObject": {"kind": "Pod", "name": "p", "namespace": "d", "uid": "u", "apiVersion": "v1", "resourceVersion": "7", "fieldPath": "f"},
            "reason": "R", "type": "Warning", "source": {"component": "sched"}, "reportingComponent": "rc"});
        for (s, want) in [
            (
                "involvedObject.kind=Pod,involvedObject.name=p,involvedObject.namespace=d",
                true,
            ),
            ("involvedObject.uid=u,involvedObject.apiVersion=v1", true),
            (
                "involvedObject.resourceVersion=7,involvedObject.fieldPath=f",
                true,
            ),
            ("reason=R,type=Warning", true),
            ("source=sched,reportingComponent=rc", true),
            ("source=rc", false),
        ] {
            let f = FieldSelector::parse(s)
                .unwrap_or_default()
                .convert_for("", "Event")
                .unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(f.matches_object("", "Event", &ev), want, "{s}");
        }
        assert_eq!(
            FieldSelector::parse("regarding.kind=Pod")
                .unwrap_or_default()
                .convert_for("", "Event")
                .map_err(|e| e.message),
            Err("field label not supported: regarding.kind".to_string())
        );
    }
}
