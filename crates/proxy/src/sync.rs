//! The sync engine of one family's table: what the kernel holds (per Service: chain
//! content hashes, affinity sets, map elements), and the transactions that move it to
//! what the model wants.
//!
//! Invariants:
//! - `services` and `kernel_elements` describe the table as the last *successful*
//!   transaction left it (nft transactions are atomic: a failed one changed nothing), so
//!   an incremental plan computed from them is exact;
//! - an incremental plan touches only the chains, sets and map elements of the Services
//!   it is given (whose spec or endpoints changed), and only those whose content differs;
//! - a map key claimed by several Services (e.g. the same externalIP and port) is given to
//!   the first Service in namespace/name order, so no transaction ever adds a key twice;
//! - a chain that loses its last reference is flushed at once and deleted in the same
//!   transaction on kernels >= 6.2, else at least one second later (older kernels free
//!   map references asynchronously, as upstream notes).
//!
//! Planning never mutates: [`FamilyProxier::plan_full`] / [`FamilyProxier::plan_incremental`]
//! return a [`Plan`] whose script the caller runs; [`FamilyProxier::commit`] records it on
//! success, [`FamilyProxier::failed`] on failure (the next plan is then a full resync, and
//! after a failed full resync a rebuild that deletes and recreates the table).

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use crate::model::{ProxiedService, ServiceKey};
use crate::render::{render_service, Element, MapName, RenderConfig, Script, ServiceRules};

/// How long a chain stays flushed before it is deleted on kernels before 6.2.
pub const STALE_CHAIN_DELAY: Duration = Duration::from_secs(1);

/// What kind of transaction a plan is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncKind {
    /// Delete and recreate the whole table (at start, and after a failed full resync).
    Rebuild,
    /// Rewrite every chain, map and set of the table, keeping affinity state.
    Full,
    /// Rewrite only what changed for the given Services.
    Incremental,
}

/// What one Service has in the kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct AppliedService {
    /// Chain name -> hash of its rules.
    chains: BTreeMap<String, u64>,
    /// Affinity set name -> timeout.
    sets: BTreeMap<String, u32>,
    /// The elements it claims (the kernel has the first claimant's).
    elements: Vec<Element>,
}

type ElementKey = (MapName, String);
/// Claimants of one map key: Service -> (value, comment).
type Claims = BTreeMap<ServiceKey, (String, String)>;

/// The table state of one IP family and the planning of its transactions.
#[derive(Debug)]
pub struct FamilyProxier {
    table: String,
    cfg: RenderConfig,
    services: HashMap<ServiceKey, AppliedService>,
    claims: HashMap<ElementKey, Claims>,
    kernel_elements: HashMap<ElementKey, (String, String)>,
    stale_chains: BTreeMap<String, Instant>,
    next: SyncKind,
    immediate_chain_delete: bool,
}

/// A transaction to run, and what it changes in the recorded state once it succeeded.
#[derive(Debug)]
pub struct Plan {
    /// The `nft -f -` script (empty: nothing to do).
    pub script: String,
    /// The kind of transaction.
    pub kind: SyncKind,
    /// How many Services' rules the plan changes (all of them for a full sync).
    pub changed: usize,
    services: Vec<(ServiceKey, Option<AppliedService>)>,
    claims: Vec<(ElementKey, Claims)>,
    kernel_elements: Vec<(ElementKey, Option<(String, String)>)>,
    stale_added: Vec<String>,
    stale_removed: Vec<String>,
}

fn chain_hash(rules: &[String]) -> u64 {
    let mut h = DefaultHasher::new();
    rules.hash(&mut h);
    h.finish()
}

/// Whether the running kernel frees chain references synchronously (6.2 and later), so
/// a chain can be deleted in the transaction that drops its last reference.
pub fn kernel_deletes_chains_immediately() -> bool {
    let Ok(release) = std::fs::read_to_string("/proc/sys/kernel/osrelease") else {
        return false;
    };
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (major, minor) >= (6, 2)
}

/// The parts of a transaction, concatenated in an order where every object exists before
/// it is referenced and is unreferenced before it is deleted.
struct Sections {
    head: Script,
    add_chains: Script,
    flush_chains: Script,
    delete_sets: Script,
    add_sets: Script,
    rules: Script,
    delete_elements: Script,
    add_elements: Script,
    delete_chains: Script,
}

impl Sections {
    fn new(cfg: &RenderConfig, table: &str) -> Self {
        let s = || Script::new(cfg.family, table);
        Sections {
            head: s(),
            add_chains: s(),
            flush_chains: s(),
            delete_sets: s(),
            add_sets: s(),
            rules: s(),
            delete_elements: s(),
            add_elements: s(),
            delete_chains: s(),
        }
    }

    fn finish(self) -> String {
        let parts = [
            self.head,
            self.add_chains,
            self.flush_chains,
            self.delete_sets,
            self.add_sets,
            self.rules,
            self.delete_elements,
            self.add_elements,
            self.delete_chains,
        ];
        let mut out = String::with_capacity(parts.iter().map(Script::len).sum());
        for p in &parts {
            out.push_str(p.as_str());
        }
        out
    }
}

fn applied_of(rules: &ServiceRules) -> AppliedService {
    AppliedService {
        chains: rules
            .chains
            .iter()
            .map(|c| (c.name.clone(), chain_hash(&c.rules)))
            .collect(),
        sets: rules
            .sets
            .iter()
            .map(|s| (s.name.clone(), s.timeout))
            .collect(),
        elements: rules.elements.clone(),
    }
}

impl FamilyProxier {
    /// A proxier for `table` of `cfg.family` that knows nothing of the kernel yet (its
    /// first plan is a rebuild).
    pub fn new(table: &str, cfg: RenderConfig) -> Self {
        FamilyProxier {
            table: table.to_string(),
            cfg,
            services: HashMap::new(),
            claims: HashMap::new(),
            kernel_elements: HashMap::new(),
            stale_chains: BTreeMap::new(),
            next: SyncKind::Rebuild,
            immediate_chain_delete: kernel_deletes_chains_immediately(),
        }
    }

    /// Sets whether stale chains are deleted in the transaction that unreferences them
    /// (default: whether the kernel is 6.2 or later).
    pub fn set_immediate_chain_delete(&mut self, immediate: bool) {
        self.immediate_chain_delete = immediate;
    }

    /// The render configuration.
    pub fn config(&self) -> &RenderConfig {
        &self.cfg
    }

    /// The kind of sync the next plan must be (`Incremental` when the state is exact).
    pub fn next_kind(&self) -> SyncKind {
        self.next
    }

    /// Forces the next plan to be at least a full resync (the periodic resync).
    pub fn request_full(&mut self) {
        if self.next == SyncKind::Incremental {
            self.next = SyncKind::Full;
        }
    }

    /// How many Services have rules in the table.
    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    /// When a flushed chain becomes old enough to delete (kernels before 6.2).
    pub fn next_stale_deadline(&self) -> Option<Instant> {
        self.stale_chains
            .values()
            .min()
            .map(|t| *t + STALE_CHAIN_DELAY)
    }

    /// Plans a full resync (or a rebuild, if [`FamilyProxier::next_kind`] says so) to
    /// exactly `services`.
    pub fn plan_full<'a>(
        &self,
        services: impl IntoIterator<Item = &'a ProxiedService>,
        now: Instant,
    ) -> Plan {
        let rebuild = self.next == SyncKind::Rebuild;
        let mut s = Sections::new(&self.cfg, &self.table);
        if rebuild {
            s.head.add_table();
            s.head.delete_table();
        }
        s.head.setup(self.cfg.family, self.cfg.service_cidr);

        let mut new_services: HashMap<ServiceKey, AppliedService> = HashMap::new();
        let mut claims: HashMap<ElementKey, Claims> = HashMap::new();
        let mut sets: BTreeMap<String, u32> = BTreeMap::new();
        for svc in services {
            let rules = render_service(&self.cfg, svc);
            for c in &rules.chains {
                s.add_chains.add_chain(&c.name);
                if !rebuild {
                    s.add_chains.flush_chain(&c.name);
                }
                for r in &c.rules {
                    s.rules.add_rule(&c.name, r);
                }
            }
            for set in &rules.sets {
                sets.insert(set.name.clone(), set.timeout);
            }
            for e in &rules.elements {
                claims
                    .entry((e.map, e.key.clone()))
                    .or_default()
                    .insert(svc.key.clone(), (e.value.clone(), e.comment.clone()));
            }
            new_services.insert(svc.key.clone(), applied_of(&rules));
        }

        // Affinity sets: keep the ones that stay (and their entries); recreate the ones
        // whose timeout changed after the chains referencing them were flushed.
        let old_sets: BTreeMap<&String, u32> = self
            .services
            .values()
            .flat_map(|a| a.sets.iter().map(|(n, t)| (n, *t)))
            .collect();
        for (name, timeout) in &sets {
            let set = crate::render::AffinitySet {
                name: name.clone(),
                timeout: *timeout,
            };
            if !rebuild && old_sets.get(name).is_some_and(|t| t != timeout) {
                s.delete_sets.delete_set(name);
            }
            s.add_sets.add_affinity_set(&set, self.cfg.family);
        }
        if !rebuild {
            for name in old_sets.keys() {
                if !sets.contains_key(*name) {
                    s.delete_sets.delete_set(name);
                }
            }
        }

        let mut kernel_elements: Vec<(ElementKey, Option<(String, String)>)> = Vec::new();
        for (key, c) in &claims {
            if let Some((_, v)) = c.iter().next() {
                s.add_elements.add_element(&Element {
                    map: key.0,
                    key: key.1.clone(),
                    value: v.0.clone(),
                    comment: v.1.clone(),
                });
                kernel_elements.push((key.clone(), Some(v.clone())));
            }
        }

        // Chains of ours that are no longer wanted.
        let mut stale_added = Vec::new();
        let mut stale_removed = Vec::new();
        if !rebuild {
            let wanted_set: std::collections::HashSet<&str> = new_services
                .values()
                .flat_map(|a| a.chains.keys().map(String::as_str))
                .collect();
            let wanted = |name: &str| wanted_set.contains(name);
            for a in self.services.values() {
                for name in a.chains.keys() {
                    if !wanted(name) {
                        s.flush_chains.flush_chain(name);
                        stale_added.push(name.clone());
                    }
                }
            }
            for (name, since) in &self.stale_chains {
                if wanted(name) {
                    stale_removed.push(name.clone());
                } else if self.immediate_chain_delete
                    || now.duration_since(*since) >= STALE_CHAIN_DELAY
                {
                    s.delete_chains.delete_chain(name);
                    stale_removed.push(name.clone());
                }
            }
            if self.immediate_chain_delete {
                for name in stale_added.drain(..) {
                    s.delete_chains.delete_chain(&name);
                }
            }
        }

        let changed = new_services.len();
        Plan {
            script: s.finish(),
            kind: if rebuild {
                SyncKind::Rebuild
            } else {
                SyncKind::Full
            },
            changed,
            services: new_services
                .into_iter()
                .map(|(k, v)| (k, Some(v)))
                .collect(),
            claims: claims.into_iter().collect(),
            kernel_elements,
            stale_added,
            stale_removed,
        }
    }

    /// Plans the changes for the given Services (`None`: no longer proxied). Only valid
    /// when [`FamilyProxier::next_kind`] is `Incremental`.
    pub fn plan_incremental(
        &self,
        changes: &[(ServiceKey, Option<&ProxiedService>)],
        now: Instant,
    ) -> Plan {
        let mut s = Sections::new(&self.cfg, &self.table);
        let mut services = Vec::new();
        let mut touched_keys: BTreeMap<ElementKey, Claims> = BTreeMap::new();
        let mut stale_added = Vec::new();
        let mut stale_removed = Vec::new();
        let mut changed = 0;
        let empty = AppliedService::default();

        for (key, new) in changes {
            let old = self.services.get(key).unwrap_or(&empty);
            let rules = new
                .map(|svc| render_service(&self.cfg, svc))
                .unwrap_or_default();
            let applied = applied_of(&rules);
            if new.is_some() == self.services.contains_key(key) && applied == *old {
                continue;
            }
            changed += 1;

            // A set whose timeout changes is recreated, so every chain of the Service is
            // rewritten (flushed before the set goes away).
            let force = applied
                .sets
                .iter()
                .any(|(n, t)| old.sets.get(n).is_some_and(|o| o != t));
            for c in &rules.chains {
                let h = applied.chains.get(&c.name).copied().unwrap_or(0);
                match old.chains.get(&c.name) {
                    Some(oh) if *oh == h && !force => continue,
                    Some(_) => s.flush_chains.flush_chain(&c.name),
                    None => {
                        s.add_chains.add_chain(&c.name);
                        if self.stale_chains.contains_key(&c.name) {
                            stale_removed.push(c.name.clone());
                        }
                    }
                }
                for r in &c.rules {
                    s.rules.add_rule(&c.name, r);
                }
            }
            for name in old.chains.keys() {
                if !applied.chains.contains_key(name) {
                    s.flush_chains.flush_chain(name);
                    if self.immediate_chain_delete {
                        s.delete_chains.delete_chain(name);
                    } else {
                        stale_added.push(name.clone());
                    }
                }
            }
            for set in &rules.sets {
                match old.sets.get(&set.name) {
                    Some(t) if *t == set.timeout => {}
                    Some(_) => {
                        s.delete_sets.delete_set(&set.name);
                        s.add_sets.add_affinity_set(set, self.cfg.family);
                    }
                    None => s.add_sets.add_affinity_set(set, self.cfg.family),
                }
            }
            for name in old.sets.keys() {
                if !applied.sets.contains_key(name) {
                    s.delete_sets.delete_set(name);
                }
            }

            // Element claims: drop the old ones, add the new ones.
            for e in &old.elements {
                let k = (e.map, e.key.clone());
                let c = touched_keys
                    .entry(k.clone())
                    .or_insert_with(|| self.claims.get(&k).cloned().unwrap_or_default());
                c.remove(key);
            }
            for e in &applied.elements {
                let k = (e.map, e.key.clone());
                let c = touched_keys
                    .entry(k.clone())
                    .or_insert_with(|| self.claims.get(&k).cloned().unwrap_or_default());
                c.insert(key.clone(), (e.value.clone(), e.comment.clone()));
            }
            services.push((key.clone(), new.map(|_| applied)));
        }

        let mut kernel_elements = Vec::new();
        for (k, c) in &touched_keys {
            let want = c.values().next();
            let have = self.kernel_elements.get(k);
            if want == have {
                continue;
            }
            if have.is_some() {
                s.delete_elements.delete_element(k.0, &k.1);
            }
            if let Some(v) = want {
                s.add_elements.add_element(&Element {
                    map: k.0,
                    key: k.1.clone(),
                    value: v.0.clone(),
                    comment: v.1.clone(),
                });
            }
            kernel_elements.push((k.clone(), want.cloned()));
        }

        for (name, since) in &self.stale_chains {
            if stale_removed.contains(name) {
                continue;
            }
            if self.immediate_chain_delete || now.duration_since(*since) >= STALE_CHAIN_DELAY {
                s.delete_chains.delete_chain(name);
                stale_removed.push(name.clone());
            }
        }

        Plan {
            script: s.finish(),
            kind: SyncKind::Incremental,
            changed,
            services,
            claims: touched_keys.into_iter().collect(),
            kernel_elements,
            stale_added,
            stale_removed,
        }
    }

    /// Records a plan whose script the kernel accepted (or that had nothing to run).
    pub fn commit(&mut self, plan: Plan, now: Instant) {
        if plan.kind != SyncKind::Incremental {
            self.services.clear();
            self.claims.clear();
            self.kernel_elements.clear();
            if plan.kind == SyncKind::Rebuild {
                self.stale_chains.clear();
            }
        }
        for (k, a) in plan.services {
            match a {
                Some(a) => {
                    self.services.insert(k, a);
                }
                None => {
                    self.services.remove(&k);
                }
            }
        }
        for (k, c) in plan.claims {
            if c.is_empty() {
                self.claims.remove(&k);
            } else {
                self.claims.insert(k, c);
            }
        }
        for (k, v) in plan.kernel_elements {
            match v {
                Some(v) => {
                    self.kernel_elements.insert(k, v);
                }
                None => {
                    self.kernel_elements.remove(&k);
                }
            }
        }
        for name in plan.stale_removed {
            self.stale_chains.remove(&name);
        }
        for name in plan.stale_added {
            self.stale_chains.insert(name, now);
        }
        self.next = SyncKind::Incremental;
    }

    /// Records that a plan's script failed: the table is as before it, and the next plan
    /// is a full resync (a rebuild if this was already a full resync).
    pub fn failed(&mut self, plan: &Plan) {
        self.next = match plan.kind {
            SyncKind::Incremental => SyncKind::Full,
            SyncKind::Full | SyncKind::Rebuild => SyncKind::Rebuild,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Cidr, Endpoint, IpFamily, Protocol, ServicePort};

    fn cfg() -> RenderConfig {
        RenderConfig {
            family: IpFamily::V4,
            cluster_cidr: Cidr::parse("10.42.0.0/16"),
            node_ips: vec![],
            service_cidr: None,
        }
    }

    fn svc(name: &str, cip: &str, eps: &[u8]) -> ProxiedService {
        let key = ServiceKey::new("ns", name);
        ProxiedService {
            key: key.clone(),
            ports: vec![ServicePort {
                service: key,
                port_name: "http".into(),
                protocol: Protocol::Tcp,
                cluster_ip: cip.parse().unwrap(),
                port: 80,
                node_port: 0,
                external_ips: vec![],
                load_balancer_vips: vec![],
                load_balancer_source_ranges: vec![],
                affinity_timeout: None,
                external_policy_local: false,
                internal_policy_local: false,
                endpoints: eps
                    .iter()
                    .map(|l| Endpoint {
                        ip: format!("10.42.0.{l}").parse().unwrap(),
                        port: 8080,
                        local: false,
                        ready: true,
                        serving: true,
                        terminating: false,
                    })
                    .collect(),
            }],
            health_check_node_port: None,
        }
    }

    fn proxier() -> FamilyProxier {
        let mut p = FamilyProxier::new("t", cfg());
        p.set_immediate_chain_delete(true);
        p
    }

    #[test]
    fn first_sync_rebuilds_then_incremental_touches_only_changes() {
        let mut p = proxier();
        let a = svc("a", "10.43.0.1", &[1, 2]);
        let b = svc("b", "10.43.0.2", &[3]);
        let now = Instant::now();
        let plan = p.plan_full([&a, &b], now);
        assert_eq!(plan.kind, SyncKind::Rebuild);
        assert!(plan.script.starts_with("add table ip t"));
        assert!(plan.script.contains("delete table ip t\n"));
        assert_eq!(plan.changed, 2);
        p.commit(plan, now);
        assert_eq!(p.next_kind(), SyncKind::Incremental);
        assert_eq!(p.service_count(), 2);

        // Unchanged input: nothing to do.
        let plan = p.plan_incremental(&[(a.key.clone(), Some(&a))], now);
        assert!(plan.script.is_empty());
        assert_eq!(plan.changed, 0);

        // One endpoint added to a: a new endpoint chain, a's service chain rewritten,
        // nothing of b, no map change (the ClusterIP still goes to the same chain).
        let a2 = svc("a", "10.43.0.1", &[1, 2, 4]);
        let plan = p.plan_incremental(&[(a.key.clone(), Some(&a2))], now);
        assert_eq!(plan.changed, 1);
        let lines: Vec<&str> = plan.script.lines().collect();
        assert!(lines
            .iter()
            .any(|l| l.starts_with("add chain ip t endpoint-") && l.ends_with("__10.42.0.4/8080")));
        assert!(lines
            .iter()
            .any(|l| l.starts_with("flush chain ip t service-") && l.ends_with("ns/a/tcp/http")));
        assert!(!plan.script.contains("ns/b/"));
        assert!(!plan.script.contains("element"), "{}", plan.script);
        assert!(
            !plan.script.contains("__10.42.0.1/8080 "),
            "unchanged endpoint chains are not rewritten:\n{}",
            plan.script
        );
        p.commit(plan, now);

        // Endpoints to zero: service-ips element replaced by a reject in no-endpoint-services,
        // chains flushed and deleted after their reference is gone.
        let a3 = svc("a", "10.43.0.1", &[]);
        let plan = p.plan_incremental(&[(a.key.clone(), Some(&a3))], now);
        let text = &plan.script;
        let del_elem = text
            .find("delete element ip t service-ips { 10.43.0.1 . tcp . 80 }")
            .unwrap();
        let add_rej = text.find("add element ip t no-endpoint-services { 10.43.0.1 . tcp . 80 comment \"ns/a:http\" : goto reject-chain }").unwrap();
        let flush = text.find("flush chain ip t service-").unwrap();
        let delete = text.find("delete chain ip t service-").unwrap();
        assert!(
            flush < del_elem && del_elem < delete && add_rej < delete,
            "{text}"
        );
        assert_eq!(text.matches("delete chain").count(), 4);
        p.commit(plan, now);

        // Deleting b removes everything of b.
        let plan = p.plan_incremental(&[(b.key.clone(), None)], now);
        assert!(plan
            .script
            .contains("delete element ip t cluster-ips { 10.43.0.2 }"));
        assert!(plan
            .script
            .contains("delete element ip t service-ips { 10.43.0.2 . tcp . 80 }"));
        assert_eq!(plan.script.matches("delete chain").count(), 2);
        p.commit(plan, now);
        assert_eq!(p.service_count(), 1);
    }

    #[test]
    fn delayed_chain_deletion_on_old_kernels() {
        let mut p = proxier();
        p.set_immediate_chain_delete(false);
        let a = svc("a", "10.43.0.1", &[1]);
        let t0 = Instant::now();
        let plan = p.plan_full([&a], t0);
        p.commit(plan, t0);
        let plan = p.plan_incremental(&[(a.key.clone(), None)], t0);
        assert!(plan.script.contains("flush chain"));
        assert!(!plan.script.contains("delete chain"));
        p.commit(plan, t0);
        assert_eq!(p.next_stale_deadline(), Some(t0 + STALE_CHAIN_DELAY));
        // Too early: nothing.
        let plan = p.plan_incremental(&[], t0);
        assert!(plan.script.is_empty());
        let plan = p.plan_incremental(&[], t0 + STALE_CHAIN_DELAY);
        assert_eq!(plan.script.matches("delete chain").count(), 2);
        p.commit(plan, t0 + STALE_CHAIN_DELAY);
        assert_eq!(p.next_stale_deadline(), None);
    }

    #[test]
    fn conflicting_keys_go_to_the_first_service() {
        let mut p = proxier();
        let mut a = svc("a", "10.43.0.1", &[1]);
        let mut b = svc("b", "10.43.0.2", &[2]);
        a.ports[0].external_ips = vec!["192.0.2.1".parse().unwrap()];
        b.ports[0].external_ips = vec!["192.0.2.1".parse().unwrap()];
        let now = Instant::now();
        let plan = p.plan_full([&b, &a], now);
        assert_eq!(
            plan.script
                .matches("add element ip t service-ips { 192.0.2.1 . tcp . 80")
                .count(),
            1
        );
        assert!(
            plan.script
                .contains("{ 192.0.2.1 . tcp . 80 : goto external-")
                && plan.script.contains("-ns/a/tcp/http }")
        );
        p.commit(plan, now);
        // a goes away: the key moves to b.
        let plan = p.plan_incremental(&[(a.key.clone(), None)], now);
        let text = &plan.script;
        assert!(text.contains("delete element ip t service-ips { 192.0.2.1 . tcp . 80 }"));
        let add = text
            .lines()
            .find(|l| l.starts_with("add element ip t service-ips { 192.0.2.1 . tcp . 80"))
            .unwrap();
        assert!(add.ends_with("-ns/b/tcp/http }"), "{add}");
        p.commit(plan, now);
    }

    #[test]
    fn failures_escalate_to_full_then_rebuild() {
        let mut p = proxier();
        let a = svc("a", "10.43.0.1", &[1]);
        let now = Instant::now();
        let plan = p.plan_full([&a], now);
        p.commit(plan, now);
        let a2 = svc("a", "10.43.0.1", &[1, 2]);
        let plan = p.plan_incremental(&[(a.key.clone(), Some(&a2))], now);
        p.failed(&plan);
        assert_eq!(p.next_kind(), SyncKind::Full);
        let plan = p.plan_full([&a2], now);
        assert_eq!(plan.kind, SyncKind::Full);
        assert!(!plan.script.contains("delete table"));
        // A full resync flushes every chain before writing it and keeps affinity sets.
        assert!(plan.script.contains("flush map ip t service-ips"));
        assert_eq!(plan.script.matches("flush chain ip t endpoint-").count(), 2);
        p.failed(&plan);
        assert_eq!(p.next_kind(), SyncKind::Rebuild);
        let plan = p.plan_full([&a2], now);
        assert_eq!(plan.kind, SyncKind::Rebuild);
        p.commit(plan, now);
        assert_eq!(p.next_kind(), SyncKind::Incremental);
        p.request_full();
        assert_eq!(p.next_kind(), SyncKind::Full);
    }

    #[test]
    fn affinity_timeout_change_recreates_set_after_flushing_chains() {
        let mut p = proxier();
        let mut a = svc("a", "10.43.0.1", &[1]);
        a.ports[0].affinity_timeout = Some(100);
        let now = Instant::now();
        let plan = p.plan_full([&a], now);
        p.commit(plan, now);
        let mut a2 = a.clone();
        a2.ports[0].affinity_timeout = Some(200);
        let plan = p.plan_incremental(&[(a.key.clone(), Some(&a2))], now);
        let text = &plan.script;
        let flush = text.find("flush chain ip t endpoint-").unwrap();
        let del = text.find("delete set ip t affinity-").unwrap();
        let add = text.find("timeout 200s").unwrap();
        let rule = text.find("add rule ip t endpoint-").unwrap();
        assert!(flush < del && del < add && add < rule, "{text}");
        p.commit(plan, now);
        // A full resync keeps the set (and its entries): no delete.
        p.request_full();
        let plan = p.plan_full([&a2], now);
        assert!(!plan.script.contains("delete set"));
        assert!(plan.script.contains("add set ip t affinity-"));
    }
}
