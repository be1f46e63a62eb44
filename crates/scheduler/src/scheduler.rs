//! The scheduling cycle: filter (a rotating share of) the nodes, score the
//! feasible ones, pick the best; on failure, explain and try preemption.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;

use crate::plugins::{Failure, PodCtx, Weights};
use crate::snapshot::{NodeInfo, PodEntry, Snapshot};

/// Fewest nodes upstream evaluates before it stops looking for more feasible ones.
pub const MIN_FEASIBLE_NODES_TO_FIND: usize = 100;
/// Lowest adaptive percentage of nodes to evaluate.
pub const MIN_FEASIBLE_NODES_PERCENTAGE_TO_FIND: usize = 5;

/// Scheduler configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SchedulerConfig {
    /// `percentageOfNodesToScore`: 0 means adaptive (50% - nodes/125, at least 5%),
    /// 100 evaluates every node.
    pub percentage_of_nodes_to_score: u32,
    /// Score plugin weights.
    pub weights: Weights,
}

/// Pods that preemption would evict so that the pod fits on `node`.
#[derive(Debug, Clone, PartialEq)]
pub struct Preemption {
    /// The node the pod should be nominated to (`status.nominatedNodeName`).
    pub node: String,
    /// The pods to delete, most important first.
    pub victims: Vec<Pod>,
    /// How many of the victims violate a PodDisruptionBudget.
    pub pdb_violations: usize,
}

/// Why no node fits a pod. Its `Display` is upstream's message, e.g.
/// `0/3 nodes are available: 3 Insufficient cpu. preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod.`
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct FitError {
    /// Number of nodes in the snapshot.
    pub num_nodes: usize,
    /// Filter reason -> number of nodes that gave it.
    pub reasons: BTreeMap<String, usize>,
    /// Set when a PreFilter rejected the pod for every node (e.g. a missing PVC).
    pub pre_filter_msg: Option<String>,
    /// The preemption (PostFilter) outcome when it did not find a node: `preemption: ...`.
    pub post_filter_msg: Option<String>,
    /// A preemption that would make the pod fit (then `post_filter_msg` is `None`).
    pub preemption: Option<Box<Preemption>>,
}

impl FitError {
    fn new(num_nodes: usize) -> Self {
        FitError {
            num_nodes,
            reasons: BTreeMap::new(),
            pre_filter_msg: None,
            post_filter_msg: None,
            preemption: None,
        }
    }
}

/// The `0/N nodes are available: <sorted "count reason" list>.` part, as upstream builds it.
fn histogram_message(
    num_nodes: usize,
    pre_filter: Option<&str>,
    reasons: &BTreeMap<String, usize>,
) -> String {
    let mut msg = format!("0/{num_nodes} nodes are available:");
    if let Some(p) = pre_filter {
        msg.push_str(&format!(" {p}."));
    } else {
        let mut items: Vec<String> = reasons.iter().map(|(r, c)| format!("{c} {r}")).collect();
        items.sort();
        if !items.is_empty() {
            msg.push_str(&format!(" {}.", items.join(", ")));
        }
    }
    msg
}

impl fmt::Display for FitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.num_nodes == 0 {
            return f.write_str("no nodes available to schedule pods");
        }
        f.write_str(&histogram_message(
            self.num_nodes,
            self.pre_filter_msg.as_deref(),
            &self.reasons,
        ))?;
        if let Some(p) = &self.post_filter_msg {
            if p.ends_with('.') {
                write!(f, " {p}")?;
            } else {
                write!(f, " {p}.")?;
            }
        }
        Ok(())
    }
}

/// The scheduler: upstream's default profile (filters, scores, DefaultPreemption).
/// It is `Sync`; the rotating start index and tie-breaking seed are atomics.
#[derive(Debug)]
pub struct Scheduler {
    /// Configuration.
    pub config: SchedulerConfig,
    next_start: AtomicUsize,
    rng: AtomicU64,
}

impl Default for Scheduler {
    fn default() -> Self {
        Self::new(SchedulerConfig::default())
    }
}

impl Scheduler {
    /// A scheduler with the given configuration.
    pub fn new(config: SchedulerConfig) -> Self {
        Scheduler {
            config,
            next_start: AtomicUsize::new(0),
            rng: AtomicU64::new(0x9E37_79B9_7F4A_7C15),
        }
    }

    fn next_random(&self) -> u64 {
        // splitmix64 over an atomic counter
        let mut z = self
            .rng
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// How many feasible nodes to look for before scoring (upstream `numFeasibleNodesToFind`).
    pub fn num_feasible_nodes_to_find(&self, num_all: usize) -> usize {
        if num_all < MIN_FEASIBLE_NODES_TO_FIND {
            return num_all;
        }
        let mut pct = self.config.percentage_of_nodes_to_score as usize;
        if pct == 0 {
            pct = 50usize
                .saturating_sub(num_all / 125)
                .max(MIN_FEASIBLE_NODES_PERCENTAGE_TO_FIND);
        }
        let n = num_all * pct.min(100) / 100;
        n.max(MIN_FEASIBLE_NODES_TO_FIND)
    }

    /// Picks a node for `pod`. On failure the error carries upstream's message,
    /// including the preemption outcome; if preemption would help,
    /// [`FitError::preemption`] names the node and the victims.
    pub fn schedule(&self, snap: &Snapshot, pod: &Pod) -> Result<String, FitError> {
        let n = snap.nodes.len();
        if n == 0 {
            return Err(FitError::new(0));
        }
        let ctx = match PodCtx::new(snap, pod) {
            Ok(c) => c,
            Err(pf) => {
                let mut err = FitError::new(n);
                err.pre_filter_msg = Some(pf.msg.clone());
                let statuses: Vec<(usize, Failure)> = (0..n)
                    .map(|i| {
                        (
                            i,
                            Failure::Other {
                                msg: pf.msg.clone(),
                                resolvable: pf.resolvable,
                            },
                        )
                    })
                    .collect();
                self.post_filter(snap, pod, None, &statuses, &mut err);
                return Err(err);
            }
        };
        let to_find = self.num_feasible_nodes_to_find(n);
        let start = self.next_start.load(Ordering::Relaxed) % n;
        let mut feasible: Vec<usize> = Vec::with_capacity(to_find.min(n));
        let mut failed: Vec<(usize, Failure)> = Vec::new();
        let mut processed = 0;
        for k in 0..n {
            let i = (start + k) % n;
            processed += 1;
            match ctx.filter(snap, &snap.nodes[i]) {
                Ok(()) => {
                    feasible.push(i);
                    if feasible.len() >= to_find {
                        break;
                    }
                }
                Err(f) => failed.push((i, f)),
            }
        }
        self.next_start
            .store((start + processed) % n, Ordering::Relaxed);
        if feasible.is_empty() {
            let mut err = FitError::new(n);
            for (_, f) in &failed {
                for r in f.reasons() {
                    *err.reasons.entry(r.into_owned()).or_insert(0) += 1;
                }
            }
            self.post_filter(snap, pod, Some(&ctx), &failed, &mut err);
            return Err(err);
        }
        if feasible.len() == 1 {
            return Ok(snap.nodes[feasible[0]].name.clone());
        }
        let scores = ctx.score(snap, &feasible, &self.config.weights);
        // Highest score; ties broken uniformly at random (reservoir sampling, as upstream).
        let mut best = 0usize;
        let mut best_score = i64::MIN;
        let mut ties = 0u64;
        for (k, &s) in scores.iter().enumerate() {
            if s > best_score {
                best_score = s;
                best = k;
                ties = 1;
            } else if s == best_score {
                ties += 1;
                if self.next_random() % ties == 0 {
                    best = k;
                }
            }
        }
        Ok(snap.nodes[feasible[best]].name.clone())
    }

    /// The preemption upstream's DefaultPreemption would perform for `pod`, if any.
    pub fn find_preemption(&self, snap: &Snapshot, pod: &Pod) -> Option<(String, Vec<Pod>)> {
        match self.schedule(snap, pod) {
            Ok(_) => None,
            Err(e) => e.preemption.map(|p| (p.node, p.victims)),
        }
    }

    /// DefaultPreemption PostFilter: fills `post_filter_msg` or `preemption`.
    fn post_filter(
        &self,
        snap: &Snapshot,
        pod: &Pod,
        ctx: Option<&PodCtx<'_>>,
        failed: &[(usize, Failure)],
        err: &mut FitError,
    ) {
        if pod
            .spec
            .as_ref()
            .and_then(|s| s.preemption_policy.as_deref())
            == Some("Never")
        {
            err.post_filter_msg =
                Some("preemption: not eligible due to preemptionPolicy=Never.".into());
            return;
        }
        let priority = crate::snapshot::pod_priority(pod);
        if let Some(nom) = pod
            .status
            .as_ref()
            .and_then(|s| s.nominated_node_name.as_deref())
            .filter(|s| !s.is_empty())
        {
            let nominated_resolvable = snap
                .node_index(nom)
                .and_then(|i| failed.iter().find(|(j, _)| *j == i))
                .is_some_and(|(_, f)| f.resolvable());
            if nominated_resolvable {
                if let Some(i) = snap.node_index(nom) {
                    if snap.nodes[i]
                        .pods
                        .iter()
                        .any(|p| p.terminating && p.priority < priority)
                    {
                        err.post_filter_msg =
                            Some("preemption: not eligible due to a terminating pod on the nominated node.".into());
                        return;
                    }
                }
            }
        }
        let potential: Vec<usize> = failed
            .iter()
            .filter(|(_, f)| f.resolvable())
            .map(|(i, _)| *i)
            .collect();
        let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
        let mut best: Option<(Candidate, usize)> = None;
        if !potential.is_empty() {
            let Some(ctx) = ctx else {
                // PreFilter rejected the pod: no filter can be re-run; each node either
                // has lower-priority pods (still unschedulable) or none.
                for &i in &potential {
                    let msg = if snap.nodes[i].pods.iter().any(|p| p.priority < priority) {
                        err.pre_filter_msg.clone().unwrap_or_default()
                    } else {
                        "No preemption victims found for incoming pod".to_string()
                    };
                    *statuses.entry(msg).or_insert(0) += 1;
                }
                err.post_filter_msg = Some(format!(
                    "preemption: {}",
                    self.preemption_fit_message(snap, potential.len(), &statuses)
                ));
                return;
            };
            let pdb_allowed = pdb_budgets(snap);
            for &i in &potential {
                match select_victims(snap, ctx, &snap.nodes[i], priority, &pdb_allowed) {
                    Ok(c) => {
                        let better = match &best {
                            None => true,
                            Some((b, _)) => c.better_than(b),
                        };
                        if better {
                            best = Some((c, i));
                        }
                    }
                    Err(f) => {
                        for r in f.reasons() {
                            *statuses.entry(r.into_owned()).or_insert(0) += 1;
                        }
                    }
                }
            }
        }
        match best {
            Some((c, i)) => {
                err.preemption = Some(Box::new(Preemption {
                    node: snap.nodes[i].name.clone(),
                    victims: c.victims.iter().map(|v| (*v.pod).clone()).collect(),
                    pdb_violations: c.pdb_violations,
                }));
            }
            None => {
                err.post_filter_msg = Some(format!(
                    "preemption: {}",
                    self.preemption_fit_message(snap, potential.len(), &statuses)
                ));
            }
        }
    }

    fn preemption_fit_message(
        &self,
        snap: &Snapshot,
        evaluated: usize,
        statuses: &BTreeMap<String, usize>,
    ) -> String {
        let n = snap.nodes.len();
        let mut reasons = statuses.clone();
        if evaluated < n {
            *reasons
                .entry("Preemption is not helpful for scheduling".into())
                .or_insert(0) += n - evaluated;
        }
        histogram_message(n, None, &reasons)
    }
}

/// PDB name -> (namespace, selector, disruptions allowed, disrupted pods).
struct PdbBudget {
    namespace: String,
    selector: crate::selectors::Selector,
    allowed: i64,
    disrupted: Vec<String>,
}

fn pdb_budgets(snap: &Snapshot) -> Vec<PdbBudget> {
    snap.pdbs
        .iter()
        .filter_map(|p| {
            let sel = p.spec.as_ref()?.selector.as_ref()?;
            if rk3s_core::selector::k8s_selector_is_empty(sel) {
                return None; // an empty selector matches nothing here, as upstream
            }
            let status = p.status.as_ref();
            Some(PdbBudget {
                namespace: p
                    .metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into()),
                selector: crate::selectors::Selector::from_label_selector(Some(sel)),
                allowed: i64::from(status.map(|s| s.disruptions_allowed).unwrap_or(0)),
                disrupted: status
                    .and_then(|s| s.disrupted_pods.as_ref())
                    .map(|m| m.keys().cloned().collect())
                    .unwrap_or_default(),
            })
        })
        .collect()
}

struct Candidate {
    victims: Vec<Arc<PodEntry>>,
    pdb_violations: usize,
}

fn start_time(p: &PodEntry) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time> {
    p.pod.status.as_ref().and_then(|s| s.start_time.as_ref())
}

/// Upstream `MoreImportantPod`: higher priority first, then the one started earlier.
fn more_important(a: &PodEntry, b: &PodEntry) -> std::cmp::Ordering {
    use std::cmp::Ordering as O;
    match b.priority.cmp(&a.priority) {
        O::Equal => {}
        o => return o,
    }
    // earlier start first; unknown start counts as "now" (latest)
    match (start_time(a), start_time(b)) {
        (Some(x), Some(y)) => x.0.cmp(&y.0),
        (Some(_), None) => O::Less,
        (None, Some(_)) => O::Greater,
        (None, None) => O::Equal,
    }
}

impl Candidate {
    fn highest_priority(&self) -> i32 {
        self.victims.first().map(|v| v.priority).unwrap_or(i32::MIN)
    }

    fn priority_sum(&self) -> i64 {
        self.victims
            .iter()
            .map(|v| i64::from(v.priority) + i64::from(i32::MAX) + 1)
            .sum()
    }

    /// Earliest start time among the highest-priority victims.
    fn earliest_top_start(&self) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time> {
        let top = self.highest_priority();
        self.victims
            .iter()
            .filter(|v| v.priority == top)
            .filter_map(|v| start_time(v))
            .min_by(|a, b| a.0.cmp(&b.0))
    }

    /// Upstream `pickOneNodeForPreemption` ordering.
    fn better_than(&self, other: &Candidate) -> bool {
        if self.pdb_violations != other.pdb_violations {
            return self.pdb_violations < other.pdb_violations;
        }
        if self.highest_priority() != other.highest_priority() {
            return self.highest_priority() < other.highest_priority();
        }
        if self.priority_sum() != other.priority_sum() {
            return self.priority_sum() < other.priority_sum();
        }
        if self.victims.len() != other.victims.len() {
            return self.victims.len() < other.victims.len();
        }
        match (self.earliest_top_start(), other.earliest_top_start()) {
            (Some(a), Some(b)) => a.0 > b.0,
            (None, Some(_)) => true,
            _ => false,
        }
    }
}

/// Upstream `SelectVictimsOnNode`: remove every lower-priority pod, check the
/// pod fits, then reprieve as many as possible (PDB-violating ones first).
fn select_victims(
    snap: &Snapshot,
    ctx: &PodCtx<'_>,
    node: &NodeInfo,
    priority: i32,
    pdbs: &[PdbBudget],
) -> Result<Candidate, Failure> {
    let mut ni: NodeInfo = node.clone();
    let mut cx = ctx.clone();
    let mut potential: Vec<Arc<PodEntry>> = node
        .pods
        .iter()
        .filter(|p| p.priority < priority)
        .cloned()
        .collect();
    if potential.is_empty() {
        return Err(Failure::Other {
            msg: "No preemption victims found for incoming pod".into(),
            resolvable: false,
        });
    }
    for p in &potential {
        ni.remove_entry(&p.key);
        cx.on_pod_change(snap, p, node, -1);
    }
    cx.filter(snap, &ni)?;
    potential.sort_by(|a, b| more_important(a, b));
    // Split into PDB-violating and not, keeping order.
    let mut allowed: Vec<i64> = pdbs.iter().map(|p| p.allowed).collect();
    let mut violating = Vec::new();
    let mut non_violating = Vec::new();
    for p in potential {
        let mut violates = false;
        for (i, b) in pdbs.iter().enumerate() {
            if b.namespace != p.namespace || !b.selector.matches(p.labels()) {
                continue;
            }
            let name = p.pod.metadata.name.clone().unwrap_or_default();
            if b.disrupted.contains(&name) {
                continue;
            }
            allowed[i] -= 1;
            if allowed[i] < 0 {
                violates = true;
            }
        }
        if violates {
            violating.push(p);
        } else {
            non_violating.push(p);
        }
    }
    let mut victims = Vec::new();
    let mut pdb_violations = 0;
    for (is_violating, list) in [(true, violating), (false, non_violating)] {
        for p in list {
            ni.add_entry(p.clone());
            cx.on_pod_change(snap, &p, node, 1);
            if cx.filter(snap, &ni).is_err() {
                ni.remove_entry(&p.key);
                cx.on_pod_change(snap, &p, node, -1);
                if is_violating {
                    pdb_violations += 1;
                }
                victims.push(p);
            }
        }
    }
    victims.sort_by(|a, b| more_important(a, b));
    Ok(Candidate {
        victims,
        pdb_violations,
    })
}
