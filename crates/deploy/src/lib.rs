//! k3s's auto-deploying manifests for rk3s (k3s `pkg/deploy`).
//!
//! Two steps, in this order, on the server:
//! 1. [`stage_bundled`] writes the bundled add-ons (every `manifests/*.yaml` of this
//!    crate, embedded at build time) into `<data-dir>/server/manifests` with k3s's
//!    `%{NAME}%` placeholders substituted ([`bundled::PLACEHOLDERS`],
//!    [`bundled::k3s_placeholders`]); disabled add-ons and those with a `.skip` file are
//!    not written.
//! 2. [`run`] (on every server, as k3s, or on the leader) applies every manifest of that folder with
//!    server-side apply and keeps applying it when files change (inotify), tracking
//!    each file by a `rk3s.cattle.io/v1` `Addon` in `kube-system` (its CRD is created by
//!    [`run`]); objects removed from a file are deleted; disabled add-ons are removed
//!    with their objects.
//!
//! Invariants: it is an ordinary API client (`kube::Client`) and depends on no crate of
//! ours but `rk3s-runtime` (the Event recorder); a file is applied all or nothing as far
//! as parsing and kinds go (nothing of a file that does not parse or names an unknown
//! kind is applied); it never deletes an object it did not record applying, and never
//! deletes the objects of a deleted file (as k3s). Map: [`parse`] (files -> objects with
//! line numbers), [`files`] (which files, `.skip`, `--disable`), [`addon`] (the Addon
//! kind, its CRD, applied-set diffing), [`bundled`] (embedded add-ons, staging),
//! [`controller`] (the apply loop).

pub mod addon;
pub mod bundled;
pub mod controller;
pub mod files;
pub mod parse;

use std::path::PathBuf;

pub use bundled::{k3s_placeholders, render, stage_bundled, BUNDLED, PLACEHOLDERS};
pub use controller::{ensure_crd, manifests_dir, run, DeployOptions, FIELD_MANAGER};
pub use files::{Disabled, K3S_ALIASES};

/// Errors that stop the deploy controller or staging (errors of one file are logged,
/// recorded as Events and retried instead).
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// A file or folder could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The manifests folder cannot be watched.
    #[error("watching the manifests folder: {0}")]
    Watch(notify::Error),
    /// The file watcher stopped.
    #[error("the manifests folder watcher stopped")]
    WatchEnded,
    /// The Addon CRD could not be applied.
    #[error("applying the Addon CRD: {0}")]
    Crd(kube::Error),
    /// The Addon CRD was applied but Addons are not served after 10 s.
    #[error("the Addon CRD is not served")]
    CrdNotServed,
}
