//! One member's settings and the etcd command line built from them.

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::PathBuf;

use crate::{EtcdError, CLIENT_PORT, PEER_PORT};

/// Whether the member starts a new cluster or joins an existing one (etcd's
/// `--initial-cluster-state`; ignored by etcd once its data dir holds a member).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitialState {
    /// `new`: the first server (`--cluster-init`).
    New,
    /// `existing`: a server that joined through MemberAdd.
    Existing,
}

impl InitialState {
    fn as_str(self) -> &'static str {
        match self {
            InitialState::New => "new",
            InitialState::Existing => "existing",
        }
    }
}

/// TLS files of a member (all signed by the cluster CA).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberTls {
    /// The CA that client and peer certificates must chain to.
    pub ca_file: PathBuf,
    /// Serving certificate of the client URLs.
    pub server_cert_file: PathBuf,
    /// Its key.
    pub server_key_file: PathBuf,
    /// Peer certificate (server and client auth).
    pub peer_cert_file: PathBuf,
    /// Its key.
    pub peer_key_file: PathBuf,
}

/// Everything needed to run one etcd member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberConfig {
    /// The etcd binary (default `etcd`, found on `PATH`).
    pub binary: PathBuf,
    /// Member name: the server's node name.
    pub name: String,
    /// etcd's `--data-dir`: `<data-dir>/server/db/etcd`.
    pub data_dir: PathBuf,
    /// Where etcd's output goes.
    pub log_path: PathBuf,
    /// The address peers and clients of other servers reach this member at.
    pub advertise_ip: IpAddr,
    /// Client port (2379).
    pub client_port: u16,
    /// Peer port (2380).
    pub peer_port: u16,
    /// `--initial-cluster`: `name=peerURL,...`.
    pub initial_cluster: String,
    /// `--initial-cluster-state`.
    pub initial_state: InitialState,
    /// TLS files.
    pub tls: MemberTls,
}

fn url(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V6(v6) => format!("https://[{v6}]:{port}"),
        IpAddr::V4(v4) => format!("https://{v4}:{port}"),
    }
}

impl MemberConfig {
    /// A member named `name` with k3s's ports and layout: data in `data_dir`, log beside
    /// it (`<data_dir>.log`), alone in a new cluster until told otherwise.
    pub fn new(name: &str, data_dir: PathBuf, advertise_ip: IpAddr, tls: MemberTls) -> Self {
        let mut log = data_dir.clone().into_os_string();
        log.push(".log");
        let mut config = MemberConfig {
            binary: PathBuf::from("etcd"),
            name: name.to_string(),
            data_dir,
            log_path: PathBuf::from(log),
            advertise_ip,
            client_port: CLIENT_PORT,
            peer_port: PEER_PORT,
            initial_cluster: String::new(),
            initial_state: InitialState::New,
            tls,
        };
        config.initial_cluster = format!("{}={}", config.name, config.peer_url());
        config
    }

    /// The peer URL: `https://<advertise>:2380`.
    pub fn peer_url(&self) -> String {
        url(self.advertise_ip, self.peer_port)
    }

    /// The client URLs etcd listens on: `https://127.0.0.1:2379` and
    /// `https://<advertise>:2379`; only the latter when the advertise address is itself a
    /// loopback address (several servers on one machine, each on its own loopback IP).
    pub fn client_urls(&self) -> Vec<String> {
        let own = url(self.advertise_ip, self.client_port);
        if self.advertise_ip.is_loopback() {
            return vec![own];
        }
        vec![url(IpAddr::from([127, 0, 0, 1]), self.client_port), own]
    }

    /// The URL this server's own clients (its datastore) use: the first client URL.
    pub fn local_client_url(&self) -> String {
        self.client_urls()
            .into_iter()
            .next()
            .unwrap_or_else(|| url(self.advertise_ip, self.client_port))
    }

    /// The URL advertised to clients: `https://<advertise>:2379`.
    pub fn advertise_client_url(&self) -> String {
        url(self.advertise_ip, self.client_port)
    }

    /// Whether etcd's data dir already holds a member (a restart: the initial-cluster
    /// settings are then ignored by etcd).
    pub fn has_data(&self) -> bool {
        self.data_dir.join("member").is_dir()
    }

    /// Checks the settings etcd would reject later with a less clear message.
    pub fn validate(&self) -> Result<(), EtcdError> {
        if self.name.is_empty() || self.name.contains([',', '=', ' ']) {
            return Err(EtcdError::Invalid(format!(
                "member name {:?} must be non-empty without ',', '=' or spaces",
                self.name
            )));
        }
        if self.initial_cluster.is_empty() {
            return Err(EtcdError::Invalid("empty --initial-cluster".into()));
        }
        if self.client_port == self.peer_port {
            return Err(EtcdError::Invalid(
                "the client and peer ports must differ".into(),
            ));
        }
        Ok(())
    }

    /// etcd's command line (k3s's settings: heartbeat 500 ms, election timeout 5 s,
    /// client and peer TLS with client-certificate authentication).
    pub fn args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        let mut flag = |name: &str, value: OsString| {
            a.push(format!("--{name}").into());
            a.push(value);
        };
        flag("name", self.name.clone().into());
        flag("data-dir", self.data_dir.clone().into_os_string());
        flag("listen-client-urls", self.client_urls().join(",").into());
        flag("advertise-client-urls", self.advertise_client_url().into());
        flag("listen-peer-urls", self.peer_url().into());
        flag("initial-advertise-peer-urls", self.peer_url().into());
        flag("initial-cluster", self.initial_cluster.clone().into());
        flag("initial-cluster-state", self.initial_state.as_str().into());
        flag("heartbeat-interval", "500".into());
        flag("election-timeout", "5000".into());
        flag(
            "cert-file",
            self.tls.server_cert_file.clone().into_os_string(),
        );
        flag(
            "key-file",
            self.tls.server_key_file.clone().into_os_string(),
        );
        flag("trusted-ca-file", self.tls.ca_file.clone().into_os_string());
        flag(
            "peer-cert-file",
            self.tls.peer_cert_file.clone().into_os_string(),
        );
        flag(
            "peer-key-file",
            self.tls.peer_key_file.clone().into_os_string(),
        );
        flag(
            "peer-trusted-ca-file",
            self.tls.ca_file.clone().into_os_string(),
        );
        flag("logger", "zap".into());
        flag("log-outputs", "stderr".into());
        // Go's boolean flags take their value after `=` only.
        a.push("--client-cert-auth=true".into());
        a.push("--peer-client-cert-auth=true".into());
        a
    }
}

/// etcd's `--initial-cluster` for a member list as MemberAdd returns it: `name=peerURL`
/// for every peer URL of every member; the member just added (`added_id`, still
/// nameless) is called `added_name`. Members that never started (no name) are listed
/// with an empty name, as etcdctl does.
pub fn initial_cluster(members: &[crate::Member], added_id: u64, added_name: &str) -> String {
    let mut parts = Vec::new();
    for m in members {
        let name = if m.id == added_id {
            added_name
        } else {
            m.name.as_str()
        };
        for u in &m.peer_urls {
            parts.push(format!("{name}={u}"));
        }
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls() -> MemberTls {
        MemberTls {
            ca_file: "/t/ca.crt".into(),
            server_cert_file: "/t/s.crt".into(),
            server_key_file: "/t/s.key".into(),
            peer_cert_file: "/t/p.crt".into(),
            peer_key_file: "/t/p.key".into(),
        }
    }

    fn value(args: &[OsString], name: &str) -> Option<String> {
        let flag = format!("--{name}");
        args.iter()
            .position(|a| *a == *flag)
            .and_then(|i| args.get(i + 1))
            .map(|v| v.to_string_lossy().into_owned())
    }

    #[test]
    fn command_line_of_a_first_server() {
        let c = MemberConfig::new(
            "s1",
            "/var/lib/rk3s/server/db/etcd".into(),
            "10.0.0.5".parse().expect("ip"),
            tls(),
        );
        c.validate().expect("valid");
        let a = c.args();
        assert_eq!(value(&a, "name").as_deref(), Some("s1"));
        assert_eq!(
            value(&a, "listen-client-urls").as_deref(),
            Some("https://127.0.0.1:2379,https://10.0.0.5:2379")
        );
        assert_eq!(
            value(&a, "initial-cluster").as_deref(),
            Some("s1=https://10.0.0.5:2380")
        );
        assert_eq!(value(&a, "initial-cluster-state").as_deref(), Some("new"));
        assert_eq!(
            value(&a, "peer-trusted-ca-file").as_deref(),
            Some("/t/ca.crt")
        );
        assert!(a.contains(&OsString::from("--client-cert-auth=true")));
        assert!(a.contains(&OsString::from("--peer-client-cert-auth=true")));
        assert_eq!(c.local_client_url(), "https://127.0.0.1:2379");
        assert_eq!(
            c.log_path,
            PathBuf::from("/var/lib/rk3s/server/db/etcd.log")
        );
    }

    #[test]
    fn loopback_advertise_listens_on_it_only() {
        let mut c = MemberConfig::new("s2", "/d".into(), "127.0.0.2".parse().expect("ip"), tls());
        assert_eq!(c.client_urls(), vec!["https://127.0.0.2:2379".to_string()]);
        assert_eq!(c.local_client_url(), "https://127.0.0.2:2379");
        c.advertise_ip = "fd00::1".parse().expect("ip");
        assert_eq!(c.peer_url(), "https://[fd00::1]:2380");
    }

    #[test]
    fn invalid_names_are_refused() {
        let mut c = MemberConfig::new("a", "/d".into(), "10.0.0.1".parse().expect("ip"), tls());
        c.name = "a,b".into();
        assert!(c.validate().is_err());
        c.name = String::new();
        assert!(c.validate().is_err());
    }

    #[test]
    fn initial_cluster_names_the_added_member() {
        let members = vec![
            crate::Member {
                id: 1,
                name: "s1".into(),
                peer_urls: vec!["https://10.0.0.1:2380".into()],
                client_urls: vec![],
                is_learner: false,
            },
            crate::Member {
                id: 7,
                name: String::new(),
                peer_urls: vec!["https://10.0.0.2:2380".into()],
                client_urls: vec![],
                is_learner: false,
            },
        ];
        assert_eq!(
            initial_cluster(&members, 7, "s2"),
            "s1=https://10.0.0.1:2380,s2=https://10.0.0.2:2380"
        );
    }
}
