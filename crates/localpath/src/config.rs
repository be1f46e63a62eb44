//! The provisioner's configuration: `config.json` of the `local-path-config` ConfigMap
//! in local-path-provisioner's format (`{"nodePathMap":[{"node":..., "paths":[...]}]}`),
//! checked as upstream checks it (absolute paths, not `/`, no duplicate node or path),
//! and the choice of a node's base path.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

/// The `nodePathMap` entry that applies to every node not listed by name.
pub const DEFAULT_NODE: &str = "DEFAULT_PATH_FOR_NON_LISTED_NODES";

/// The ConfigMap key holding the configuration.
pub const CONFIG_KEY: &str = "config.json";

/// Why a `config.json` was rejected (the messages follow local-path-provisioner's).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// Not JSON of the expected shape.
    #[error("fail to load config file: {0}")]
    Json(String),
    /// The ConfigMap has no `config.json` key.
    #[error("config map has no {CONFIG_KEY:?} key")]
    Missing,
    /// A node is listed twice.
    #[error("config canonicalization failed: duplicate node {0}")]
    DuplicateNode(String),
    /// A path that is not absolute.
    #[error(
        "config canonicalization failed: path must start with / for path {path} on node {node}"
    )]
    RelativePath {
        /// The path as written.
        path: String,
        /// The node entry.
        node: String,
    },
    /// `/` itself as a base path.
    #[error("config canonicalization failed: cannot use root ('/') as path on node {0}")]
    RootPath(String),
    /// A path listed twice for one node.
    #[error("config canonicalization failed: duplicate path {path} on node {node}")]
    DuplicatePath {
        /// The path as written.
        path: String,
        /// The node entry.
        node: String,
    },
    /// `sharedFileSystemPath` (ReadWriteMany on a shared filesystem) is not built in.
    #[error("config canonicalization failed: sharedFileSystemPath is not supported by the built-in provisioner")]
    SharedFileSystem,
}

/// Why no base path could be chosen for a node.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    /// Neither the node nor the default entry is configured.
    #[error("config doesn't contain node {0}, and no {DEFAULT_NODE} available")]
    NoEntry(String),
    /// The node's entry lists no path.
    #[error("no local path available on node {0}")]
    NoPath(String),
}

#[derive(Deserialize)]
struct ConfigData {
    #[serde(rename = "nodePathMap", default)]
    node_path_map: Option<Vec<NodePathMapData>>,
    #[serde(rename = "sharedFileSystemPath", default)]
    shared_file_system_path: Option<String>,
}

#[derive(Deserialize)]
struct NodePathMapData {
    #[serde(default)]
    node: Option<String>,
    #[serde(default)]
    paths: Option<Vec<String>>,
}

/// A checked configuration: each node entry's base paths, cleaned, in the order given.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Config {
    nodes: BTreeMap<String, Vec<PathBuf>>,
}

/// `p` with `.` and `..` resolved lexically (Go's `filepath.Clean` of an absolute path).
pub fn clean(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::Normal(s) => out.push(s),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

impl Config {
    /// The configuration giving every node `path` (what k3s ships, with its data dir).
    pub fn with_default_path(path: &Path) -> Config {
        Config {
            nodes: [(DEFAULT_NODE.to_string(), vec![clean(path)])].into(),
        }
    }

    /// Parses and checks a `config.json`.
    pub fn parse(json: &str) -> Result<Config, ConfigError> {
        let data: ConfigData =
            serde_json::from_str(json).map_err(|e| ConfigError::Json(e.to_string()))?;
        if data
            .shared_file_system_path
            .as_deref()
            .is_some_and(|s| !s.is_empty())
        {
            return Err(ConfigError::SharedFileSystem);
        }
        let mut nodes = BTreeMap::new();
        for entry in data.node_path_map.unwrap_or_default() {
            let node = entry.node.unwrap_or_default();
            if nodes.contains_key(&node) {
                return Err(ConfigError::DuplicateNode(node));
            }
            let mut paths: Vec<PathBuf> = Vec::new();
            for p in entry.paths.unwrap_or_default() {
                if !p.starts_with('/') {
                    return Err(ConfigError::RelativePath { path: p, node });
                }
                let c = clean(Path::new(&p));
                if c == Path::new("/") {
                    return Err(ConfigError::RootPath(node));
                }
                if paths.contains(&c) {
                    return Err(ConfigError::DuplicatePath { path: p, node });
                }
                paths.push(c);
            }
            nodes.insert(node, paths);
        }
        Ok(Config { nodes })
    }

    /// The entry that applies to `node`: its own, else the default one.
    fn entry(&self, node: &str) -> Option<&Vec<PathBuf>> {
        self.nodes
            .get(node)
            .or_else(|| self.nodes.get(DEFAULT_NODE))
    }

    /// The base path for new volumes on `node`: the first path of its entry (or of the
    /// default entry when it is not listed).
    pub fn path_for_node(&self, node: &str) -> Result<&Path, PathError> {
        let paths = self
            .entry(node)
            .ok_or_else(|| PathError::NoEntry(node.to_string()))?;
        paths
            .first()
            .map(PathBuf::as_path)
            .ok_or_else(|| PathError::NoPath(node.to_string()))
    }

    /// Every base path configured for `node` (where its volumes may live).
    pub fn paths_for_node(&self, node: &str) -> &[PathBuf] {
        self.entry(node).map(Vec::as_slice).unwrap_or(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_k3s_config() {
        let c = Config::parse(
            r#"{"nodePathMap":[{"node":"DEFAULT_PATH_FOR_NON_LISTED_NODES","paths":["/var/lib/rancher/k3s/storage"]}]}"#,
        )
        .unwrap();
        assert_eq!(
            c.path_for_node("any").unwrap(),
            Path::new("/var/lib/rancher/k3s/storage")
        );
        assert_eq!(
            c,
            Config::with_default_path(Path::new("/var/lib/rancher/k3s/storage/"))
        );
    }

    #[test]
    fn node_entry_wins_over_default_and_first_path_is_chosen() {
        let c = Config::parse(
            r#"{"nodePathMap":[
                {"node":"DEFAULT_PATH_FOR_NON_LISTED_NODES","paths":["/opt/lp"]},
                {"node":"n1","paths":["/data1/./x/../lp","/data2"]},
                {"node":"n3","paths":[]}
            ], "setupCommand": "ignored"}"#,
        )
        .unwrap();
        assert_eq!(c.path_for_node("n1").unwrap(), Path::new("/data1/lp"));
        assert_eq!(
            c.paths_for_node("n1"),
            &[PathBuf::from("/data1/lp"), PathBuf::from("/data2")]
        );
        assert_eq!(c.path_for_node("n2").unwrap(), Path::new("/opt/lp"));
        assert_eq!(c.path_for_node("n3"), Err(PathError::NoPath("n3".into())));
        assert_eq!(
            c.path_for_node("n3").unwrap_err().to_string(),
            "no local path available on node n3"
        );
        let only = Config::parse(r#"{"nodePathMap":[{"node":"n1","paths":["/a"]}]}"#).unwrap();
        assert_eq!(
            only.path_for_node("n2").unwrap_err().to_string(),
            "config doesn't contain node n2, and no DEFAULT_PATH_FOR_NON_LISTED_NODES available"
        );
        assert!(only.paths_for_node("n2").is_empty());
    }

    #[test]
    fn rejects_what_upstream_rejects() {
        assert!(matches!(
            Config::parse("{not json"),
            Err(ConfigError::Json(_))
        ));
        assert!(matches!(
            Config::parse(r#"{"nodePathMap":"x"}"#),
            Err(ConfigError::Json(_))
        ));
        assert_eq!(
            Config::parse(
                r#"{"nodePathMap":[{"node":"a","paths":["/x"]},{"node":"a","paths":["/y"]}]}"#
            ),
            Err(ConfigError::DuplicateNode("a".into()))
        );
        assert_eq!(
            Config::parse(r#"{"nodePathMap":[{"node":"a","paths":["x/y"]}]}"#),
            Err(ConfigError::RelativePath {
                path: "x/y".into(),
                node: "a".into()
            })
        );
        assert_eq!(
            Config::parse(r#"{"nodePathMap":[{"node":"a","paths":["/x/.."]}]}"#),
            Err(ConfigError::RootPath("a".into()))
        );
        assert_eq!(
            Config::parse(r#"{"nodePathMap":[{"node":"a","paths":["/x","/x/"]}]}"#),
            Err(ConfigError::DuplicatePath {
                path: "/x/".into(),
                node: "a".into()
            })
        );
        assert_eq!(
            Config::parse(r#"{"sharedFileSystemPath":"/shared"}"#),
            Err(ConfigError::SharedFileSystem)
        );
        // An empty map is valid but gives no path.
        let empty = Config::parse("{}").unwrap();
        assert!(matches!(
            empty.path_for_node("n"),
            Err(PathError::NoEntry(_))
        ));
    }

    #[test]
    fn cleaning_is_lexical() {
        assert_eq!(clean(Path::new("/a/b/../c/./d/")), PathBuf::from("/a/c/d"));
        assert_eq!(clean(Path::new("/../..")), PathBuf::from("/"));
    }
}
