//! From a Pod to CRI configs: the sandbox config (hostname, DNS, ports, namespaces,
//! cgroup parent), container configs (command with `$(VAR)` expansion, env, working
//! dir, security context, resources, log path), quantities and QoS.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};

use crate::cri::types::*;

/// CRI label: pod name.
pub const LABEL_POD_NAME: &str = "io.kubernetes.pod.name";
/// CRI label: pod namespace.
pub const LABEL_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
/// CRI label: pod UID.
pub const LABEL_POD_UID: &str = "io.kubernetes.pod.uid";
/// CRI label: container name.
pub const LABEL_CONTAINER_NAME: &str = "io.kubernetes.container.name";
/// CRI annotation: restart count of a container.
pub const ANN_RESTART_COUNT: &str = "io.kubernetes.container.restartCount";
/// CRI annotation: termination message path of a container.
pub const ANN_TERMINATION_MESSAGE_PATH: &str = "io.kubernetes.container.terminationMessagePath";
/// CRI annotation: grace period of the pod.
pub const ANN_GRACE: &str = "io.kubernetes.pod.terminationGracePeriod";
/// CRI annotation: the image of the container spec an instance was created from (the
/// pod's `status` reports what runs, not a spec image changed since).
pub const ANN_IMAGE: &str = "io.rk3s.container.image";

/// Node-level settings that shape the CRI configs.
#[derive(Clone, Debug)]
pub struct SpecContext {
    /// Cluster DNS servers (`--cluster-dns`).
    pub cluster_dns: Vec<String>,
    /// Cluster domain (`cluster.local`).
    pub cluster_domain: String,
    /// The host's resolv.conf text.
    pub host_resolv_conf: String,
    /// The node's memory capacity in bytes (for OOM score of burstable pods).
    pub node_memory: u64,
    /// Where the pod's logs go: `<log root>/<ns>_<name>_<uid>`.
    pub log_root: std::path::PathBuf,
}

/// A Kubernetes quantity in its base unit (cores, bytes...), or None when malformed
/// (parsed by [`rk3s_core::Quantity`]).
pub fn parse_quantity(s: &str) -> Option<f64> {
    rk3s_core::Quantity::parse(s.trim())
        .ok()
        .map(|q| q.as_f64())
}

fn resource(c: &Container, kind: &str, name: &str) -> Option<f64> {
    let r = c.resources.as_ref()?;
    let m = if kind == "limits" {
        r.limits.as_ref()?
    } else {
        r.requests.as_ref()?
    };
    parse_quantity(&m.get(name)?.0)
}

/// The pod's QoS class (`Guaranteed`, `Burstable`, `BestEffort`), as upstream computes it.
pub fn qos_class(spec: &PodSpec) -> &'static str {
    let all: Vec<&Container> = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .collect();
    let any = all.iter().any(|c| {
        c.resources.as_ref().is_some_and(|r| {
            r.requests.as_ref().is_some_and(|m| {
                m.iter().any(|(k, v)| {
                    (k == "cpu" || k == "memory") && parse_quantity(&v.0).is_some_and(|x| x > 0.0)
                })
            }) || r.limits.as_ref().is_some_and(|m| {
                m.iter().any(|(k, v)| {
                    (k == "cpu" || k == "memory") && parse_quantity(&v.0).is_some_and(|x| x > 0.0)
                })
            })
        })
    });
    if !any {
        return "BestEffort";
    }
    let guaranteed = all.iter().all(|c| {
        ["cpu", "memory"].iter().all(|r| {
            let lim = resource(c, "limits", r);
            let req = resource(c, "requests", r).or(lim);
            lim.is_some() && req == lim
        })
    });
    if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// The cgroup parent of a pod (cgroupfs layout, as upstream's kubelet).
pub fn cgroup_parent(pod: &Pod) -> String {
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    match pod.spec.as_ref().map(qos_class).unwrap_or("BestEffort") {
        "Guaranteed" => format!("/kubepods/pod{uid}"),
        "Burstable" => format!("/kubepods/burstable/pod{uid}"),
        _ => format!("/kubepods/besteffort/pod{uid}"),
    }
}

/// CRI Linux resources of a container (cpu shares/quota, memory limit, OOM score).
pub fn container_resources(c: &Container, qos: &str, node_memory: u64) -> LinuxContainerResources {
    let cpu_limit = resource(c, "limits", "cpu");
    let cpu_request = resource(c, "requests", "cpu").or(cpu_limit);
    let mem_limit = resource(c, "limits", "memory");
    let mem_request = resource(c, "requests", "memory").or(mem_limit);
    let milli = |x: f64| (x * 1000.0).round() as i64;
    let cpu_shares = cpu_request
        .map(|r| (milli(r) * 1024 / 1000).max(2))
        .unwrap_or(2);
    let (cpu_period, cpu_quota) = match cpu_limit {
        Some(l) => (100_000, (milli(l) * 100_000 / 1000).max(1000)),
        None => (0, 0),
    };
    let oom_score_adj = match qos {
        "Guaranteed" => -997,
        "BestEffort" => 1000,
        _ => {
            let req = mem_request.unwrap_or(0.0) as u64;
            let adj = (1000 * req)
                .checked_div(node_memory)
                .map(|x| 1000 - x as i64)
                .unwrap_or(999);
            adj.clamp(2, 999)
        }
    };
    LinuxContainerResources {
        cpu_period,
        cpu_quota,
        cpu_shares,
        memory_limit_in_bytes: mem_limit.map(|m| m as i64).unwrap_or(0),
        oom_score_adj,
        ..Default::default()
    }
}

/// Expands `$(VAR)` references in `s` from `env` as upstream does: `$$` is an escaped
/// `$`, and unknown references are left as they are.
pub fn expand(s: &str, env: &dyn Fn(&str) -> Option<String>) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            if b[i + 1] == b'$' {
                out.push('$');
                i += 2;
                continue;
            }
            if b[i + 1] == b'(' {
                if let Some(end) = s[i + 2..].find(')') {
                    let name = &s[i + 2..i + 2 + end];
                    match env(name) {
                        Some(v) => out.push_str(&v),
                        None => out.push_str(&s[i..i + 3 + end]),
                    }
                    i += 3 + end;
                    continue;
                }
            }
        }
        let ch = s[i..].chars().next().unwrap_or('\u{fffd}');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// Parses a resolv.conf as upstream's kubelet: (nameservers, searches, options). The
/// last `search` line wins, its domains without a trailing dot (`.` itself dropped).
pub fn parse_resolv_conf(text: &str) -> (Vec<String>, Vec<String>, Vec<String>) {
    let (mut ns, mut search, mut opts) = (Vec::new(), Vec::new(), Vec::new());
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or_default();
        let mut f = line.split_whitespace();
        match f.next() {
            Some("nameserver") => ns.extend(f.next().map(str::to_string)),
            Some("search") => {
                search = f
                    .filter(|d| *d != ".")
                    .map(|d| d.trim_end_matches('.').to_string())
                    .collect()
            }
            Some("options") => opts.extend(f.map(str::to_string)),
            _ => {}
        }
    }
    (ns, search, opts)
}

/// The host resolv.conf pods with dnsPolicy `Default` get (and whose search domains
/// `ClusterFirst` pods inherit), chosen as k3s does: `/etc/resolv.conf` when it names a
/// nameserver that is not a loopback address (a local stub resolver is unreachable
/// from a pod), else systemd-resolved's upstream file, else `nameserver 8.8.8.8`.
pub fn host_resolv_conf() -> String {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    choose_resolv_conf(
        read("/etc/resolv.conf"),
        read("/run/systemd/resolve/resolv.conf"),
    )
}

fn choose_resolv_conf(etc: Option<String>, systemd: Option<String>) -> String {
    let usable = |t: &String| {
        parse_resolv_conf(t).0.iter().any(|n| {
            n.parse::<std::net::IpAddr>()
                .is_ok_and(|ip| !ip.is_loopback() && !ip.is_unspecified())
        })
    };
    etc.filter(usable)
        .or(systemd.filter(usable))
        .unwrap_or_else(|| "nameserver 8.8.8.8\n".to_string())
}

fn push_unique(list: &mut Vec<String>, v: &str) {
    if !v.is_empty() && !list.iter().any(|x| x == v) {
        list.push(v.to_string());
    }
}

/// The DNS config of a pod (dnsPolicy and dnsConfig as upstream).
pub fn dns_config(pod: &Pod, ctx: &SpecContext) -> DnsConfig {
    let spec = pod.spec.as_ref();
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    let policy = spec
        .and_then(|s| s.dns_policy.as_deref())
        .unwrap_or("ClusterFirst");
    let (host_ns, host_search, host_opts) = parse_resolv_conf(&ctx.host_resolv_conf);
    let cluster_first = match policy {
        "ClusterFirstWithHostNet" => true,
        "ClusterFirst" => !host_network,
        _ => false,
    };
    let mut cfg = if cluster_first && !ctx.cluster_dns.is_empty() {
        let d = &ctx.cluster_domain;
        let mut searches = vec![format!("{ns}.svc.{d}"), format!("svc.{d}"), d.clone()];
        for s in &host_search {
            push_unique(&mut searches, s);
        }
        DnsConfig {
            servers: ctx.cluster_dns.clone(),
            searches,
            options: vec!["ndots:5".into()],
        }
    } else if policy == "None" {
        DnsConfig::default()
    } else {
        DnsConfig {
            servers: host_ns,
            searches: host_search,
            options: host_opts,
        }
    };
    if let Some(extra) = spec.and_then(|s| s.dns_config.as_ref()) {
        for s in extra.nameservers.iter().flatten() {
            push_unique(&mut cfg.servers, s);
        }
        for s in extra.searches.iter().flatten() {
            push_unique(&mut cfg.searches, s);
        }
        for o in extra.options.iter().flatten() {
            let Some(name) = o.name.as_deref() else {
                continue;
            };
            cfg.options.retain(|x| x.split(':').next() != Some(name));
            cfg.options.push(match &o.value {
                Some(v) => format!("{name}:{v}"),
                None => name.to_string(),
            });
        }
    }
    cfg.servers.truncate(3);
    // Upstream's limits: 32 search domains in at most 2048 characters.
    cfg.searches.truncate(32);
    while cfg.searches.join(" ").len() > 2048 {
        cfg.searches.pop();
    }
    cfg
}

/// `<ns>_<name>_<uid>`: the pod's log directory name (upstream's `/var/log/pods` layout).
pub fn pod_log_dir_name(pod: &Pod) -> String {
    format!(
        "{}_{}_{}",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or_default(),
        pod.metadata.uid.as_deref().unwrap_or_default()
    )
}

fn ns_mode(b: bool, node: NamespaceMode, otherwise: NamespaceMode) -> i32 {
    if b {
        node as i32
    } else {
        otherwise as i32
    }
}

/// The pod's `/etc/hosts`, as upstream's kubelet writes it for a pod on the pod network:
/// the loopback and IPv6 names, the pod's own IP with its hostname (and its FQDN when the
/// pod has a subdomain), then the `hostAliases`. `None` for host-network pods (they see
/// the node's file) and before the pod has an IP.
pub fn etc_hosts(pod: &Pod, pod_ip: &str, cluster_domain: &str) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if spec.host_network.unwrap_or(false) || pod_ip.is_empty() {
        return None;
    }
    let name = pod.metadata.name.clone().unwrap_or_default();
    let mut hostname = spec.hostname.clone().unwrap_or(name);
    hostname.truncate(63);
    let hostname = hostname.trim_end_matches(['-', '.']).to_string();
    let mut out = String::from(
        "# Kubernetes-managed hosts file.\n\
         127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\n\
         fe00::0\tip6-mcastprefix\n\
         fe00::1\tip6-allnodes\n\
         fe00::2\tip6-allrouters\n",
    );
    match spec.subdomain.as_deref().filter(|s| !s.is_empty()) {
        Some(sub) => {
            let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
            out.push_str(&format!(
                "{pod_ip}\t{hostname}.{sub}.{ns}.svc.{cluster_domain}\t{hostname}\n"
            ));
        }
        None => out.push_str(&format!("{pod_ip}\t{hostname}\n")),
    }
    let aliases = spec.host_aliases.as_deref().unwrap_or_default();
    if !aliases.is_empty() {
        out.push_str("\n# Entries added by HostAliases.\n");
        for a in aliases {
            let names = a.hostnames.as_deref().unwrap_or_default();
            if names.is_empty() {
                continue;
            }
            out.push_str(&format!("{}\t{}\n", a.ip, names.join("\t")));
        }
    }
    Some(out)
}

/// The sandbox config of a pod; `attempt` counts sandboxes created before for it.
pub fn sandbox_config(pod: &Pod, ctx: &SpecContext, attempt: u32) -> PodSandboxConfig {
    let spec = pod.spec.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let host_network = spec.host_network.unwrap_or(false);
    let hostname = if host_network {
        String::new()
    } else {
        let mut h = spec.hostname.clone().unwrap_or_else(|| name.clone());
        h.truncate(63);
        h.trim_end_matches(['-', '.']).to_string()
    };
    let mut labels: HashMap<String, String> = pod
        .metadata
        .labels
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    labels.insert(LABEL_POD_NAME.into(), name.clone());
    labels.insert(
        LABEL_POD_NAMESPACE.into(),
        pod.metadata.namespace.clone().unwrap_or_default(),
    );
    labels.insert(
        LABEL_POD_UID.into(),
        pod.metadata.uid.clone().unwrap_or_default(),
    );
    let annotations: HashMap<String, String> = pod
        .metadata
        .annotations
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let mut port_mappings = Vec::new();
    for c in &spec.containers {
        for p in c.ports.iter().flatten() {
            let Some(hp) = p.host_port.filter(|h| *h > 0) else {
                continue;
            };
            let protocol = match p.protocol.as_deref() {
                Some("UDP") => Protocol::Udp,
                Some("SCTP") => Protocol::Sctp,
                _ => Protocol::Tcp,
            };
            port_mappings.push(PortMapping {
                protocol: protocol as i32,
                container_port: p.container_port,
                host_port: hp,
                host_ip: p.host_ip.clone().unwrap_or_default(),
            });
        }
    }
    let share_pid = spec.share_process_namespace.unwrap_or(false);
    let psc = spec.security_context.clone().unwrap_or_default();
    let privileged = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| {
            c.security_context
                .as_ref()
                .and_then(|s| s.privileged)
                .unwrap_or(false)
        });
    let sysctls = psc
        .sysctls
        .iter()
        .flatten()
        .map(|s| (s.name.clone(), s.value.clone()))
        .collect();
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name,
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            attempt,
        }),
        hostname,
        log_directory: ctx
            .log_root
            .join(pod_log_dir_name(pod))
            .to_string_lossy()
            .into_owned(),
        dns_config: Some(dns_config(pod, ctx)),
        port_mappings,
        labels,
        annotations,
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: cgroup_parent(pod),
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: ns_mode(host_network, NamespaceMode::Node, NamespaceMode::Pod),
                    pid: if spec.host_pid.unwrap_or(false) {
                        NamespaceMode::Node as i32
                    } else if share_pid {
                        NamespaceMode::Pod as i32
                    } else {
                        NamespaceMode::Container as i32
                    },
                    ipc: ns_mode(
                        spec.host_ipc.unwrap_or(false),
                        NamespaceMode::Node,
                        NamespaceMode::Pod,
                    ),
                    target_id: String::new(),
                }),
                run_as_user: psc.run_as_user.map(|value| Int64Value { value }),
                run_as_group: psc.run_as_group.map(|value| Int64Value { value }),
                supplemental_groups: psc.supplemental_groups.clone().unwrap_or_default(),
                privileged,
                ..Default::default()
            }),
            sysctls,
            ..Default::default()
        }),
    }
}

/// The environment of a container, already resolved to name/value pairs (in order).
pub type Env = Vec<(String, String)>;

/// The container config of one container instance.
pub fn container_config(
    pod: &Pod,
    c: &Container,
    attempt: u32,
    env: &Env,
    mounts: Vec<Mount>,
    image_ref: &str,
    node_memory: u64,
) -> ContainerConfig {
    let spec = pod.spec.clone().unwrap_or_default();
    let lookup: HashMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let get = |k: &str| lookup.get(k).map(|v| v.to_string());
    let command = c
        .command
        .iter()
        .flatten()
        .map(|s| expand(s, &get))
        .collect();
    let args = c.args.iter().flatten().map(|s| expand(s, &get)).collect();
    let mut labels = HashMap::new();
    labels.insert(
        LABEL_POD_NAME.to_string(),
        pod.metadata.name.clone().unwrap_or_default(),
    );
    labels.insert(
        LABEL_POD_NAMESPACE.to_string(),
        pod.metadata.namespace.clone().unwrap_or_default(),
    );
    labels.insert(
        LABEL_POD_UID.to_string(),
        pod.metadata.uid.clone().unwrap_or_default(),
    );
    labels.insert(LABEL_CONTAINER_NAME.to_string(), c.name.clone());
    let mut annotations = HashMap::new();
    annotations.insert(ANN_RESTART_COUNT.to_string(), attempt.to_string());
    annotations.insert(ANN_IMAGE.to_string(), c.image.clone().unwrap_or_default());
    annotations.insert(
        ANN_TERMINATION_MESSAGE_PATH.to_string(),
        c.termination_message_path
            .clone()
            .unwrap_or_else(|| "/dev/termination-log".into()),
    );
    annotations.insert(
        ANN_GRACE.to_string(),
        spec.termination_grace_period_seconds
            .unwrap_or(30)
            .to_string(),
    );
    let psc = spec.security_context.clone().unwrap_or_default();
    let csc = c.security_context.clone().unwrap_or_default();
    let host_network = spec.host_network.unwrap_or(false);
    let pid = if spec.host_pid.unwrap_or(false) {
        NamespaceMode::Node
    } else if spec.share_process_namespace.unwrap_or(false) {
        NamespaceMode::Pod
    } else {
        NamespaceMode::Container
    };
    let mut groups = psc.supplemental_groups.clone().unwrap_or_default();
    if let Some(g) = psc.fs_group {
        groups.push(g);
    }
    let privileged = csc.privileged.unwrap_or(false);
    let security = LinuxContainerSecurityContext {
        capabilities: csc.capabilities.as_ref().map(|cap| Capability {
            add_capabilities: cap.add.clone().unwrap_or_default(),
            drop_capabilities: cap.drop.clone().unwrap_or_default(),
        }),
        privileged,
        namespace_options: Some(NamespaceOption {
            network: ns_mode(host_network, NamespaceMode::Node, NamespaceMode::Pod),
            pid: pid as i32,
            ipc: ns_mode(
                spec.host_ipc.unwrap_or(false),
                NamespaceMode::Node,
                NamespaceMode::Pod,
            ),
            target_id: String::new(),
        }),
        run_as_user: csc
            .run_as_user
            .or(psc.run_as_user)
            .map(|value| Int64Value { value }),
        run_as_group: csc
            .run_as_group
            .or(psc.run_as_group)
            .map(|value| Int64Value { value }),
        readonly_rootfs: csc.read_only_root_filesystem.unwrap_or(false),
        supplemental_groups: groups,
        no_new_privs: csc.allow_privilege_escalation == Some(false),
        ..Default::default()
    };
    let qos = qos_class(&spec);
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: c.name.clone(),
            attempt,
        }),
        image: Some(ImageSpec {
            image: image_ref.to_string(),
            user_specified_image: c.image.clone().unwrap_or_default(),
            ..Default::default()
        }),
        command,
        args,
        working_dir: c.working_dir.clone().unwrap_or_default(),
        envs: env
            .iter()
            .map(|(k, v)| KeyValue {
                key: k.clone(),
                value: v.clone(),
            })
            .collect(),
        mounts,
        labels,
        annotations,
        log_path: format!("{}/{}.log", c.name, attempt),
        stdin: c.stdin.unwrap_or(false),
        stdin_once: c.stdin_once.unwrap_or(false),
        tty: c.tty.unwrap_or(false),
        linux: Some(LinuxContainerConfig {
            resources: Some(container_resources(c, qos, node_memory)),
            security_context: Some(security),
        }),
    }
}

/// Service environment variables (`<NAME>_SERVICE_HOST` etc.) for one Service, as
/// upstream's service links.
pub fn service_env(
    name: &str,
    cluster_ip: &str,
    ports: &[(Option<String>, i32, String)],
) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    if cluster_ip.is_empty() || cluster_ip == "None" || ports.is_empty() {
        return m;
    }
    let n = name.to_uppercase().replace('-', "_");
    m.insert(format!("{n}_SERVICE_HOST"), cluster_ip.to_string());
    m.insert(format!("{n}_SERVICE_PORT"), ports[0].1.to_string());
    for (pname, port, _) in ports {
        if let Some(pn) = pname.as_deref().filter(|p| !p.is_empty()) {
            m.insert(
                format!("{n}_SERVICE_PORT_{}", pn.to_uppercase().replace('-', "_")),
                port.to_string(),
            );
        }
    }
    let (_, p0, proto0) = &ports[0];
    m.insert(
        format!("{n}_PORT"),
        format!("{}://{cluster_ip}:{p0}", proto0.to_lowercase()),
    );
    for (_, port, proto) in ports {
        let pr = proto.to_uppercase();
        let prefix = format!("{n}_PORT_{port}_{pr}");
        m.insert(
            prefix.clone(),
            format!("{}://{cluster_ip}:{port}", proto.to_lowercase()),
        );
        m.insert(format!("{prefix}_PROTO"), proto.to_lowercase());
        m.insert(format!("{prefix}_PORT"), port.to_string());
        m.insert(format!("{prefix}_ADDR"), cluster_ip.to_string());
    }
    m
}

#[cfg(test)]
mod tests {
    #[test]
    fn etc_hosts_as_upstream_writes_it() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-0", "namespace": "shop"},
            "spec": {
                "containers": [{"name": "c"}],
                "hostname": "web-0", "subdomain": "web",
                "hostAliases": [{"ip": "10.1.2.3", "hostnames": ["foo.local", "bar.local"]}]
            }
        }))
        .expect("pod");
        let h = etc_hosts(&pod, "10.42.0.7", "cluster.local").expect("hosts");
        assert!(
            h.starts_with("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n"),
            "{h}"
        );
        assert!(
            h.contains("\n10.42.0.7\tweb-0.web.shop.svc.cluster.local\tweb-0\n"),
            "{h}"
        );
        assert!(
            h.ends_with("# Entries added by HostAliases.\n10.1.2.3\tfoo.local\tbar.local\n"),
            "{h}"
        );
        let plain: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}
        }))
        .expect("pod");
        assert!(etc_hosts(&plain, "10.42.0.8", "cluster.local")
            .expect("hosts")
            .contains("\n10.42.0.8\tp\n"));
        assert_eq!(etc_hosts(&plain, "", "cluster.local"), None);
        let hostnet: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "h"}, "spec": {"hostNetwork": true, "containers": [{"name": "c"}]}
        }))
        .expect("pod");
        assert_eq!(etc_hosts(&hostnet, "192.0.2.2", "cluster.local"), None);
    }

    use super::*;
    use k8s_openapi::api::core::v1::ResourceRequirements;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn pod(ns: &str, spec: PodSpec) -> Pod {
        Pod {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some("web".into()),
                namespace: Some(ns.into()),
                uid: Some("u1".into()),
                ..Default::default()
            },
            spec: Some(spec),
            status: None,
        }
    }

    fn ctx() -> SpecContext {
        SpecContext {
            cluster_dns: vec!["10.43.0.10".into()],
            cluster_domain: "cluster.local".into(),
            host_resolv_conf: "nameserver 1.1.1.1\nsearch example.com\noptions edns0\n".into(),
            node_memory: 1 << 30,
            log_root: "/logs".into(),
        }
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("100m"), Some(0.1));
        assert_eq!(parse_quantity("2"), Some(2.0));
        assert_eq!(parse_quantity("64Mi"), Some(64.0 * 1024.0 * 1024.0));
        assert_eq!(parse_quantity("1G"), Some(1e9));
        assert_eq!(parse_quantity("1e3"), Some(1000.0));
        assert_eq!(parse_quantity("x"), None);
        assert_eq!(parse_quantity("1E3"), Some(1000.0));
        assert_eq!(parse_quantity("1.5.5"), None);
        assert_eq!(parse_quantity("1 Ki"), None);
    }

    #[test]
    fn expansion_as_upstream() {
        let env = |k: &str| (k == "A").then(|| "1".to_string());
        assert_eq!(expand("x$(A)y", &env), "x1y");
        assert_eq!(expand("$(B)", &env), "$(B)");
        assert_eq!(expand("$$(A)", &env), "$(A)");
        assert_eq!(expand("a$", &env), "a$");
        assert_eq!(expand("é$(A", &env), "é$(A");
    }

    #[test]
    fn cluster_first_dns() {
        let p = pod("team", PodSpec::default());
        let d = dns_config(&p, &ctx());
        assert_eq!(d.servers, vec!["10.43.0.10"]);
        assert_eq!(
            d.searches,
            vec![
                "team.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local",
                "example.com"
            ]
        );
        assert_eq!(d.options, vec!["ndots:5"]);
        let hp = pod(
            "team",
            PodSpec {
                host_network: Some(true),
                ..Default::default()
            },
        );
        let d = dns_config(&hp, &ctx());
        assert_eq!(d.servers, vec!["1.1.1.1"]);
        assert_eq!(d.options, vec!["edns0"]);
        assert_eq!(sandbox_config(&hp, &ctx(), 0).hostname, "");
        assert_eq!(sandbox_config(&p, &ctx(), 0).hostname, "web");
        assert_eq!(
            sandbox_config(&p, &ctx(), 0).log_directory,
            "/logs/team_web_u1"
        );
    }

    #[test]
    fn dns_policies_as_upstream() {
        use k8s_openapi::api::core::v1::{PodDNSConfig, PodDNSConfigOption};
        let with = |policy: &str, host_network: bool, cfg: Option<PodDNSConfig>| {
            let p = pod(
                "team",
                PodSpec {
                    dns_policy: Some(policy.into()),
                    host_network: Some(host_network),
                    dns_config: cfg,
                    ..Default::default()
                },
            );
            dns_config(&p, &ctx())
        };
        // ClusterFirstWithHostNet: cluster DNS also with the host network.
        let d = with("ClusterFirstWithHostNet", true, None);
        assert_eq!(
            (d.servers, d.options),
            (vec!["10.43.0.10".to_string()], vec!["ndots:5".to_string()])
        );
        // Default: the host's file.
        let d = with("Default", false, None);
        assert_eq!(
            (d.servers, d.searches, d.options),
            (
                vec!["1.1.1.1".into()],
                vec!["example.com".into()],
                vec!["edns0".into()]
            )
        );
        // None: only dnsConfig.
        let extra = PodDNSConfig {
            nameservers: Some(vec!["192.0.2.1".into(), "192.0.2.1".into()]),
            searches: Some(vec!["my.dns.search.suffix".into()]),
            options: Some(vec![
                PodDNSConfigOption {
                    name: Some("ndots".into()),
                    value: Some("2".into()),
                },
                PodDNSConfigOption {
                    name: Some("edns0".into()),
                    value: None,
                },
            ]),
        };
        let d = with("None", false, Some(extra.clone()));
        assert_eq!(d.servers, vec!["192.0.2.1"]);
        assert_eq!(d.searches, vec!["my.dns.search.suffix"]);
        assert_eq!(d.options, vec!["ndots:2", "edns0"]);
        // ClusterFirst + dnsConfig: appended; an option of the same name replaces ours.
        let d = with("ClusterFirst", false, Some(extra));
        assert_eq!(d.servers, vec!["10.43.0.10", "192.0.2.1"]);
        assert_eq!(
            d.searches.last().map(String::as_str),
            Some("my.dns.search.suffix")
        );
        assert_eq!(d.options, vec!["ndots:2", "edns0"]);
        // No cluster DNS configured: ClusterFirst falls back to the host's.
        let mut no_dns = ctx();
        no_dns.cluster_dns.clear();
        assert_eq!(
            dns_config(&pod("team", PodSpec::default()), &no_dns).servers,
            vec!["1.1.1.1"]
        );
        // Search domains from the host are not repeated; long lists are cut.
        let mut dup = ctx();
        dup.host_resolv_conf = "nameserver 1.1.1.1\nsearch cluster.local corp.example. .\n".into();
        assert_eq!(
            dns_config(&pod("a", PodSpec::default()), &dup).searches,
            vec![
                "a.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local",
                "corp.example"
            ]
        );
        let mut long = ctx();
        long.host_resolv_conf = format!(
            "search {}\n",
            (0..40)
                .map(|i| format!("d{i}.{}", "x".repeat(100)))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let d = dns_config(
            &pod(
                "a",
                PodSpec {
                    dns_policy: Some("Default".into()),
                    ..Default::default()
                },
            ),
            &long,
        );
        assert!(
            d.searches.len() <= 32 && d.searches.join(" ").len() <= 2048,
            "{}",
            d.searches.len()
        );
    }

    #[test]
    fn host_resolv_conf_skips_loopback_resolvers() {
        let etc = Some("nameserver 127.0.0.53\noptions edns0\n".to_string());
        let systemd = Some("nameserver 10.0.0.2\nsearch lan\n".to_string());
        assert_eq!(
            choose_resolv_conf(etc.clone(), systemd),
            "nameserver 10.0.0.2\nsearch lan\n"
        );
        assert_eq!(choose_resolv_conf(etc, None), "nameserver 8.8.8.8\n");
        let good = Some("nameserver 10.255.255.53\n".to_string());
        assert_eq!(
            choose_resolv_conf(good.clone(), None),
            "nameserver 10.255.255.53\n"
        );
    }

    #[test]
    fn resources_and_qos() {
        let mut lim = BTreeMap::new();
        lim.insert("cpu".to_string(), Quantity("500m".into()));
        lim.insert("memory".to_string(), Quantity("128Mi".into()));
        let c = Container {
            name: "c".into(),
            resources: Some(ResourceRequirements {
                limits: Some(lim),
                ..Default::default()
            }),
            ..Default::default()
        };
        let spec = PodSpec {
            containers: vec![c.clone()],
            ..Default::default()
        };
        assert_eq!(qos_class(&spec), "Guaranteed");
        let r = container_resources(&c, "Guaranteed", 1 << 30);
        assert_eq!(r.cpu_shares, 512);
        assert_eq!(r.cpu_quota, 50_000);
        assert_eq!(r.cpu_period, 100_000);
        assert_eq!(r.memory_limit_in_bytes, 128 * 1024 * 1024);
        assert_eq!(r.oom_score_adj, -997);
        let be = PodSpec {
            containers: vec![Container {
                name: "c".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(qos_class(&be), "BestEffort");
        assert_eq!(
            container_resources(&be.containers[0], "BestEffort", 1).cpu_shares,
            2
        );
        assert!(cgroup_parent(&pod("d", be)).starts_with("/kubepods/besteffort/pod"));
    }

    #[test]
    fn container_config_paths_and_command() {
        let c = Container {
            name: "app".into(),
            image: Some("busybox".into()),
            command: Some(vec!["sh".into(), "-c".into()]),
            args: Some(vec!["echo $(GREETING)".into()]),
            ..Default::default()
        };
        let p = pod(
            "d",
            PodSpec {
                containers: vec![c.clone()],
                ..Default::default()
            },
        );
        let cfg = container_config(
            &p,
            &c,
            2,
            &vec![("GREETING".into(), "hi".into())],
            vec![],
            "sha256:x",
            1,
        );
        assert_eq!(cfg.log_path, "app/2.log");
        assert_eq!(cfg.args, vec!["echo hi"]);
        assert_eq!(
            cfg.labels.get(LABEL_CONTAINER_NAME).map(String::as_str),
            Some("app")
        );
        assert_eq!(
            cfg.annotations.get(ANN_RESTART_COUNT).map(String::as_str),
            Some("2")
        );
    }

    #[test]
    fn service_links() {
        let m = service_env(
            "my-svc",
            "10.43.0.5",
            &[(Some("http".into()), 80, "TCP".into())],
        );
        assert_eq!(
            m.get("MY_SVC_SERVICE_HOST").map(String::as_str),
            Some("10.43.0.5")
        );
        assert_eq!(
            m.get("MY_SVC_SERVICE_PORT_HTTP").map(String::as_str),
            Some("80")
        );
        assert_eq!(
            m.get("MY_SVC_PORT_80_TCP").map(String::as_str),
            Some("tcp://10.43.0.5:80")
        );
        assert!(service_env("x", "None", &[(None, 1, "TCP".into())]).is_empty());
    }
}
