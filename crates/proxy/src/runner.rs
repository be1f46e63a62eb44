//! The watch/sync loop behind [`crate::run`]: watches Services and EndpointSlices into
//! local maps, marks the Services whose spec or endpoints changed, batches changes for
//! `min_sync_interval`, and syncs each family's table (full or incremental), retrying
//! failed transactions with back-off.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ObjectReference, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::{watcher, WatchStreamExt};
use tokio::sync::mpsc;

use crate::conntrack::{self, udp_flows, UdpFlow};
use crate::health::{HealthCheck, HealthServer};
use crate::model::{
    cluster_ip_families, proxied_service, Cidr, IpFamily, ProxiedService, ServiceKey,
};
use crate::nft::{valid_table_name, NftRunner};
use crate::render::RenderConfig;
use crate::sync::{FamilyProxier, SyncKind};
use crate::{record_sync, ProxyError, ProxyOptions, SyncStats};

/// First retry delay after a failed transaction.
const RETRY_MIN: Duration = Duration::from_secs(1);
/// Longest retry delay.
const RETRY_MAX: Duration = Duration::from_secs(30);

enum Update {
    Service(Box<watcher::Event<Service>>),
    Slice(Box<watcher::Event<EndpointSlice>>),
}

type SliceKey = (String, String);

/// Aborts the watch tasks when the loop ends or is dropped.
struct Tasks(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

async fn watch<K>(
    api: Api<K>,
    tx: mpsc::UnboundedSender<Update>,
    wrap: fn(watcher::Event<K>) -> Update,
    what: &'static str,
) where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default,
{
    let mut stream = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(ev) => {
                if tx.send(wrap(ev)).is_err() {
                    return;
                }
            }
            Err(e) => tracing::warn!(resource = what, error = %e, "proxy watch failed; retrying"),
        }
    }
}

/// The cluster CIDRs of each family.
fn parse_cluster_cidrs(s: Option<&str>) -> Result<[Option<Cidr>; 2], ProxyError> {
    let mut out = [None, None];
    for part in s
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        let c = Cidr::parse(part)
            .ok_or_else(|| ProxyError::InvalidOption(format!("cluster CIDR {part:?}")))?;
        let slot = &mut out[usize::from(c.family() == IpFamily::V6)];
        if slot.is_none() {
            *slot = Some(c);
        }
    }
    Ok(out)
}

struct Loop {
    opts: ProxyOptions,
    runner: Arc<dyn NftRunner>,
    recorder: Option<Recorder>,
    cidrs: [Option<Cidr>; 2],
    service_cidrs: [Option<Cidr>; 2],
    services: HashMap<ServiceKey, Arc<Service>>,
    slices: HashMap<SliceKey, Arc<EndpointSlice>>,
    slice_owner: HashMap<SliceKey, ServiceKey>,
    slices_by_service: HashMap<ServiceKey, BTreeSet<SliceKey>>,
    service_init: Option<HashMap<ServiceKey, Arc<Service>>>,
    slice_init: Option<HashMap<SliceKey, Arc<EndpointSlice>>>,
    services_synced: bool,
    slices_synced: bool,
    dirty: HashSet<ServiceKey>,
    reported_model: HashMap<ServiceKey, String>,
    reported_health: HashMap<ServiceKey, String>,
    families: Vec<FamilyProxier>,
    health: HealthServer,
    health_by_family: [HashMap<ServiceKey, HealthCheck>; 2],
    /// The UDP flow targets of every Service as last applied (stale conntrack cleanup).
    udp_flows: HashMap<ServiceKey, BTreeSet<UdpFlow>>,
}

/// [`crate::run`] with a given nft runner (e.g. [`crate::Nft::in_netns`] in tests), without
/// touching sysctls.
pub async fn run_with(
    client: kube::Client,
    opts: ProxyOptions,
    runner: Arc<dyn NftRunner>,
) -> Result<(), ProxyError> {
    if !valid_table_name(&opts.table) {
        return Err(ProxyError::InvalidOption(format!(
            "table name {:?}",
            opts.table
        )));
    }
    if opts.full_resync_period.is_zero() {
        return Err(ProxyError::InvalidOption(
            "full_resync_period must not be zero".into(),
        ));
    }
    let cidrs = parse_cluster_cidrs(opts.cluster_cidr.as_deref())?;
    let service_cidrs = parse_cluster_cidrs(opts.service_cidr.as_deref())?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _tasks = Tasks(vec![
        tokio::spawn(watch(
            Api::<Service>::all(client.clone()),
            tx.clone(),
            |e| Update::Service(Box::new(e)),
            "services",
        )),
        tokio::spawn(watch(
            Api::<EndpointSlice>::all(client.clone()),
            tx,
            |e| Update::Slice(Box::new(e)),
            "endpointslices",
        )),
    ]);
    let recorder = Recorder::new(
        client,
        Reporter {
            controller: "rk3s-proxy".into(),
            instance: Some(opts.node_name.clone()),
        },
    );
    let mut l = Loop::new(opts, runner, Some(recorder), cidrs, service_cidrs);

    let mut next_full = Instant::now() + l.opts.full_resync_period;
    let mut retry_at: Option<Instant> = None;
    let mut backoff = RETRY_MIN;
    loop {
        let mut deadline = next_full;
        if let Some(t) = retry_at {
            deadline = deadline.min(t);
        }
        for f in &l.families {
            if let Some(t) = f.next_stale_deadline() {
                deadline = deadline.min(t);
            }
        }
        tokio::select! {
            u = rx.recv() => {
                let Some(u) = u else { return Err(ProxyError::WatchEnded("services/endpointslices")) };
                l.apply(u);
                let until = tokio::time::Instant::now() + l.opts.min_sync_interval;
                while let Ok(Some(u)) = tokio::time::timeout_at(until, rx.recv()).await {
                    l.apply(u);
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => {}
        }
        if !(l.services_synced && l.slices_synced) {
            continue;
        }
        let now = Instant::now();
        if retry_at.is_some_and(|t| now < t) {
            continue;
        }
        if now >= next_full {
            for f in &mut l.families {
                f.request_full();
            }
            next_full = now + l.opts.full_resync_period;
        }
        if l.sync().await {
            retry_at = None;
            backoff = RETRY_MIN;
        } else {
            tracing::warn!(retry_in = ?backoff, "proxy sync failed; the previous rules stay in place");
            retry_at = Some(Instant::now() + backoff);
            backoff = (backoff * 2).min(RETRY_MAX);
        }
    }
}

/// Adds one family's flow targets to those of the other (a Service may have both).
fn merge_flows(
    into: &mut HashMap<ServiceKey, BTreeSet<UdpFlow>>,
    flows: Vec<(ServiceKey, BTreeSet<UdpFlow>)>,
) {
    for (k, f) in flows {
        into.entry(k).or_default().extend(f);
    }
}

impl Loop {
    fn new(
        opts: ProxyOptions,
        runner: Arc<dyn NftRunner>,
        recorder: Option<Recorder>,
        cidrs: [Option<Cidr>; 2],
        service_cidrs: [Option<Cidr>; 2],
    ) -> Self {
        let health = HealthServer::new(opts.node_ips.clone());
        let mut l = Loop {
            opts,
            runner,
            recorder,
            cidrs,
            service_cidrs,
            services: HashMap::new(),
            slices: HashMap::new(),
            slice_owner: HashMap::new(),
            slices_by_service: HashMap::new(),
            service_init: None,
            slice_init: None,
            services_synced: false,
            slices_synced: false,
            dirty: HashSet::new(),
            reported_model: HashMap::new(),
            reported_health: HashMap::new(),
            families: Vec::new(),
            health,
            health_by_family: [HashMap::new(), HashMap::new()],
            udp_flows: HashMap::new(),
        };
        l.families.push(l.family_proxier(IpFamily::V4));
        l
    }

    fn family_proxier(&self, family: IpFamily) -> FamilyProxier {
        let cfg = RenderConfig {
            family,
            cluster_cidr: self.cidrs[usize::from(family == IpFamily::V6)],
            node_ips: self
                .opts
                .node_ips
                .iter()
                .filter(|ip| IpFamily::of(ip) == family)
                .copied()
                .collect::<Vec<IpAddr>>(),
            service_cidr: self.service_cidrs[usize::from(family == IpFamily::V6)],
        };
        FamilyProxier::new(&self.opts.table, cfg)
    }

    fn apply(&mut self, u: Update) {
        match u {
            Update::Service(ev) => self.apply_service(*ev),
            Update::Slice(ev) => self.apply_slice(*ev),
        }
    }

    fn apply_service(&mut self, ev: watcher::Event<Service>) {
        match ev {
            watcher::Event::Apply(s) => {
                let k = ServiceKey::of(&s);
                self.dirty.insert(k.clone());
                self.services.insert(k, Arc::new(s));
            }
            watcher::Event::Delete(s) => {
                let k = ServiceKey::of(&s);
                self.services.remove(&k);
                self.dirty.insert(k);
            }
            watcher::Event::Init => self.service_init = Some(HashMap::new()),
            watcher::Event::InitApply(s) => {
                let k = ServiceKey::of(&s);
                self.service_init
                    .get_or_insert_with(HashMap::new)
                    .insert(k, Arc::new(s));
            }
            watcher::Event::InitDone => {
                let new = self.service_init.take().unwrap_or_default();
                // A relist: every Service that was or is there may have changed.
                self.dirty.extend(self.services.keys().cloned());
                self.dirty.extend(new.keys().cloned());
                self.services = new;
                self.services_synced = true;
            }
        }
    }

    fn index_slice(&mut self, key: SliceKey, slice: Option<Arc<EndpointSlice>>) {
        if let Some(old) = self.slice_owner.remove(&key) {
            if let Some(set) = self.slices_by_service.get_mut(&old) {
                set.remove(&key);
                if set.is_empty() {
                    self.slices_by_service.remove(&old);
                }
            }
            self.dirty.insert(old);
        }
        self.slices.remove(&key);
        if let Some(slice) = slice {
            if let Some(owner) = ServiceKey::of_slice(&slice) {
                self.slices_by_service
                    .entry(owner.clone())
                    .or_default()
                    .insert(key.clone());
                self.slice_owner.insert(key.clone(), owner.clone());
                self.dirty.insert(owner);
            }
            self.slices.insert(key, slice);
        }
    }

    fn apply_slice(&mut self, ev: watcher::Event<EndpointSlice>) {
        let key_of = |s: &EndpointSlice| {
            (
                s.metadata.namespace.clone().unwrap_or_default(),
                s.metadata.name.clone().unwrap_or_default(),
            )
        };
        match ev {
            watcher::Event::Apply(s) => self.index_slice(key_of(&s), Some(Arc::new(s))),
            watcher::Event::Delete(s) => self.index_slice(key_of(&s), None),
            watcher::Event::Init => self.slice_init = Some(HashMap::new()),
            watcher::Event::InitApply(s) => {
                self.slice_init
                    .get_or_insert_with(HashMap::new)
                    .insert(key_of(&s), Arc::new(s));
            }
            watcher::Event::InitDone => {
                let new = self.slice_init.take().unwrap_or_default();
                let old: Vec<SliceKey> = self.slices.keys().cloned().collect();
                for k in old {
                    self.index_slice(k, None);
                }
                for (k, s) in new {
                    self.index_slice(k, Some(s));
                }
                self.slices_synced = true;
            }
        }
    }

    fn model(
        &self,
        key: &ServiceKey,
        family: IpFamily,
    ) -> Result<Option<ProxiedService>, crate::model::ModelError> {
        let Some(svc) = self.services.get(key) else {
            return Ok(None);
        };
        let slices: Vec<Arc<EndpointSlice>> = self
            .slices_by_service
            .get(key)
            .map(|set| {
                set.iter()
                    .filter_map(|k| self.slices.get(k).cloned())
                    .collect()
            })
            .unwrap_or_default();
        proxied_service(svc, &slices, &self.opts.node_name, family)
    }

    /// Builds the model of `key` for `family`, reporting a Service that makes no valid
    /// rule (once per distinct error) and treating it as absent.
    fn model_or_report(&mut self, key: &ServiceKey, family: IpFamily) -> Option<ProxiedService> {
        match self.model(key, family) {
            Ok(m) => {
                self.reported_model.remove(key);
                m
            }
            Err(e) => {
                let msg = e.to_string();
                if self.reported_model.get(key) != Some(&msg) {
                    tracing::warn!(service = %key, error = %msg, "skipping Service: it makes no valid proxy rule");
                    self.event(
                        key,
                        "FailedToProxy",
                        format!("Service makes no valid proxy rule and is skipped: {msg}"),
                    );
                    self.reported_model.insert(key.clone(), msg);
                }
                None
            }
        }
    }

    fn event(&self, key: &ServiceKey, reason: &str, note: String) {
        let Some(recorder) = self.recorder.clone() else {
            return;
        };
        let uid = self.services.get(key).and_then(|s| s.metadata.uid.clone());
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Service".into()),
            namespace: Some(key.namespace.clone()),
            name: Some(key.name.clone()),
            uid,
            ..Default::default()
        };
        let ev = Event {
            type_: EventType::Warning,
            reason: reason.to_string(),
            note: Some(note),
            action: "Proxy".into(),
            secondary: None,
        };
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&ev, &reference).await {
                tracing::debug!(error = %e, "could not publish proxy event");
            }
        });
    }

    /// Syncs every family; true when every transaction succeeded.
    async fn sync(&mut self) -> bool {
        let start = Instant::now();
        let dirty: Vec<ServiceKey> = self.dirty.drain().collect();
        let has_v6 = self
            .families
            .iter()
            .any(|f| f.config().family == IpFamily::V6);
        if !has_v6 {
            let needs_full = self
                .families
                .iter()
                .any(|f| f.next_kind() != SyncKind::Incremental);
            let candidates: Vec<&Arc<Service>> = if needs_full {
                self.services.values().collect()
            } else {
                dirty.iter().filter_map(|k| self.services.get(k)).collect()
            };
            if candidates
                .iter()
                .any(|s| cluster_ip_families(s).contains(&IpFamily::V6))
            {
                let f = self.family_proxier(IpFamily::V6);
                self.families.push(f);
            }
        }

        let mut ok = true;
        let mut bytes = 0;
        let mut changed = 0;
        let mut ran = !dirty.is_empty();
        let mut kind = SyncKind::Incremental;
        let now = Instant::now();
        // UDP flow targets of the Services this sync computed (both families), and whether
        // it covered every Service (a full sync).
        let mut udp_seen: HashMap<ServiceKey, BTreeSet<UdpFlow>> = HashMap::new();
        let mut covered_all = false;
        for i in 0..self.families.len() {
            let family = self.families[i].config().family;
            let fi = usize::from(family == IpFamily::V6);
            let family_flows: Vec<(ServiceKey, BTreeSet<UdpFlow>)>;
            let mut full_family = false;
            let plan = if self.families[i].next_kind() != SyncKind::Incremental {
                let keys: Vec<ServiceKey> = self.services.keys().cloned().collect();
                let mut models = Vec::with_capacity(keys.len());
                self.health_by_family[fi].clear();
                for k in &keys {
                    if let Some(m) = self.model_or_report(k, family) {
                        models.push(m);
                    }
                }
                self.note_health(fi, &keys, &models);
                ran = true;
                family_flows = keys
                    .iter()
                    .map(|k| (k.clone(), BTreeSet::new()))
                    .chain(models.iter().map(|m| (m.key.clone(), udp_flows(m))))
                    .collect();
                full_family = true;
                self.families[i].plan_full(models.iter(), now)
            } else {
                let mut models = Vec::with_capacity(dirty.len());
                for k in &dirty {
                    models.push((k.clone(), self.model_or_report(k, family)));
                }
                let present: Vec<ProxiedService> =
                    models.iter().filter_map(|(_, m)| m.clone()).collect();
                self.note_health(fi, &dirty, &present);
                family_flows = models
                    .iter()
                    .map(|(k, m)| (k.clone(), m.as_ref().map(udp_flows).unwrap_or_default()))
                    .collect();
                let changes: Vec<(ServiceKey, Option<&ProxiedService>)> = models
                    .iter()
                    .map(|(k, m)| (k.clone(), m.as_ref()))
                    .collect();
                self.families[i].plan_incremental(&changes, now)
            };
            if plan.kind != SyncKind::Incremental {
                kind = plan.kind;
            }
            if plan.script.is_empty() {
                changed += plan.changed;
                self.families[i].commit(plan, now);
                merge_flows(&mut udp_seen, family_flows);
                covered_all |= full_family;
                continue;
            }
            let runner = self.runner.clone();
            let script = plan.script.clone();
            let result = match tokio::task::spawn_blocking(move || runner.apply(&script)).await {
                Ok(r) => r,
                Err(e) => Err(ProxyError::Io(std::io::Error::other(e.to_string()))),
            };
            match result {
                Ok(()) => {
                    bytes += plan.script.len();
                    changed += plan.changed;
                    self.families[i].commit(plan, Instant::now());
                    merge_flows(&mut udp_seen, family_flows);
                    covered_all |= full_family;
                }
                Err(e) => {
                    tracing::error!(family = ?family, kind = ?plan.kind, error = %e, "nftables sync failed");
                    self.families[i].failed(&plan);
                    // The changes of this sync are still to be applied (by the full resync).
                    ok = false;
                }
            }
        }
        if ok {
            self.clear_stale_udp(udp_seen, covered_all);
        }
        self.health.set_proxy_healthy(ok);
        self.sync_health().await;
        if ok && ran {
            let services = self
                .families
                .iter()
                .map(FamilyProxier::service_count)
                .max()
                .unwrap_or(0);
            let elapsed = start.elapsed();
            tracing::info!(services, changed, bytes, elapsed_ms = elapsed.as_millis() as u64, kind = ?kind, "proxy rules synced");
            record_sync(SyncStats {
                services,
                changed,
                bytes,
                elapsed,
                kind,
                finished_at: SystemTime::now(),
                count: 0,
            });
        }
        ok
    }

    /// Deletes the conntrack entries of UDP flows whose endpoint left (now that the rules
    /// no longer send new flows there), in the background.
    fn clear_stale_udp(&mut self, seen: HashMap<ServiceKey, BTreeSet<UdpFlow>>, covered_all: bool) {
        let mut gone = Vec::new();
        if covered_all {
            let before = std::mem::take(&mut self.udp_flows);
            for (k, old) in before {
                if !seen.contains_key(&k) {
                    gone.extend(old);
                }
            }
        }
        for (k, new) in seen {
            let old = self.udp_flows.remove(&k).unwrap_or_default();
            gone.extend(conntrack::removed(&old, &new));
            if !new.is_empty() {
                self.udp_flows.insert(k, new);
            }
        }
        if !gone.is_empty() {
            tokio::task::spawn_blocking(move || conntrack::delete(&gone));
        }
    }

    fn note_health(&mut self, fi: usize, keys: &[ServiceKey], models: &[ProxiedService]) {
        for k in keys {
            self.health_by_family[fi].remove(k);
        }
        for m in models {
            if let Some(port) = m.health_check_node_port {
                self.health_by_family[fi].insert(
                    m.key.clone(),
                    HealthCheck {
                        port,
                        local_endpoints: m.local_endpoints(),
                    },
                );
            }
        }
    }

    async fn sync_health(&mut self) {
        let mut desired: HashMap<ServiceKey, HealthCheck> = HashMap::new();
        for map in &self.health_by_family {
            for (k, hc) in map {
                desired
                    .entry(k.clone())
                    .and_modify(|d| d.local_endpoints = d.local_endpoints.max(hc.local_endpoints))
                    .or_insert(*hc);
            }
        }
        self.reported_health.retain(|k, _| desired.contains_key(k));
        for (key, port, err) in self.health.sync(&desired).await {
            let msg = format!(
                "node {} failed to start healthcheck on port {port}: {err}",
                self.opts.node_name
            );
            if self.reported_health.get(&key) != Some(&msg) {
                tracing::warn!(service = %key, port, error = %err, "failed to start service health check");
                self.event(&key, "FailedToStartServiceHealthcheck", msg.clone());
                self.reported_health.insert(key, msg);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_cidrs_by_family() {
        let [v4, v6] = parse_cluster_cidrs(Some("10.42.0.0/16, fd00:42::/56")).unwrap();
        assert_eq!(v4.unwrap().to_string(), "10.42.0.0/16");
        assert_eq!(v6.unwrap().to_string(), "fd00:42::/56");
        assert_eq!(parse_cluster_cidrs(None).unwrap(), [None, None]);
        assert!(parse_cluster_cidrs(Some("10.42.0.0/99")).is_err());
    }
}
