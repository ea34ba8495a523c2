//! `chaos gc`: finds and removes what crashed runners left behind, on every backend that can
//! leave anything (netns namespaces/links/cgroups, Docker containers/networks/images).
//!
//! A runner cleans up its clusters itself — on `cleanup()`, on drop, and its agents on heartbeat
//! loss — but a runner that is SIGKILLed (or whose machine loses power) leaves the host-side
//! resources behind. Every such resource records its owner (an [`owner`](super::owner) tag in a
//! netns state file, the `io.chaos.owner` label on Docker containers and networks); gc removes
//! a cluster only when its owner ran on this host and is gone, unless [`GcOptions::all`] says
//! to remove every chaos resource.
//!
//! Each backend registers its collector in [`super::registry`]; [`collect_garbage`] runs them
//! all. Per backend:
//! - **netns** (`netns::collect_garbage`): kills every process in the cluster's cgroup
//!   tree (agents included, so nothing waits for heartbeat loss), then removes the cgroups, node
//!   and hub namespaces, host link, temporary directory and, last, the state file. The backend
//!   creates a cluster's state file before anything else of it and removes it after everything
//!   else, so a runner killed at any instant leaves nothing without one; namespaces or links
//!   without a state file come from older versions or from hand, and only `--all` removes them.
//! - **docker** (`docker::collect_garbage`, with the `docker` feature): containers, networks
//!   and bind-mounted node files of dead owners' clusters, judged by their labels, and dangling
//!   chaos images; nothing without chaos labels is ever touched.
//!
//! Every daemon call and every wait is bounded, so gc finishes in seconds.

/// What to collect.
#[derive(Debug, Clone, Default)]
pub struct GcOptions {
    /// Only report what would be removed.
    pub dry_run: bool,
    /// Also remove resources whose owner is alive or unknown (every chaos resource on the host).
    pub all: bool,
    /// Also remove the node images chaos built (they are a cache, rebuilt on demand).
    pub images: bool,
    /// Only this backend's collector (`None`: every backend that needs no remote account; a
    /// cloud backend such as `ec2` collects only when named).
    pub backend: Option<String>,
    /// The region a cloud backend looks in (else its settings' or the standard chain's).
    pub region: Option<String>,
    /// The backend's own settings file ([`super::ClusterOptions::backend_config`]).
    pub backend_config: Option<std::path::PathBuf>,
}

/// What a collection did.
#[derive(Debug, Clone, Default)]
pub struct GcReport {
    /// Resources removed (or, with `dry_run`, that would be), one line each: kind and name.
    pub removed: Vec<String>,
    /// Resources kept because their owner is alive or elsewhere, one line each with the reason.
    pub kept: Vec<String>,
    /// What could not be removed, one line each.
    pub errors: Vec<String>,
}

impl GcReport {
    /// Appends `other`'s lines to this report's.
    pub fn append(&mut self, other: GcReport) {
        self.removed.extend(other.removed);
        self.kept.extend(other.kept);
        self.errors.extend(other.errors);
    }
}

pub use super::registry::collect_garbage;
