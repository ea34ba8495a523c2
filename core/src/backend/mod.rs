//! The backends, and how to pick one.
//!
//! Each backend is one module implementing [`Cluster`] (and, for `local`, [`crate::Node`]).
//! Agent-based backends reuse [`crate::agent_client::AgentNode`] for their nodes.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use crate::cluster::Cluster;
use crate::{Error, Result};

#[cfg(feature = "docker")]
pub mod docker;
pub mod gc;
pub mod local;
#[cfg(target_os = "linux")]
pub mod netns;
pub mod owner;
pub mod supervisor;

/// Which backend to run a cluster on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// Processes on this host, no isolation, no agent.
    Local,
    /// One Linux network namespace per node, with its own IP, running the agent.
    Netns,
    /// One container per node on a network of the cluster's own, running the agent.
    Docker,
}

impl BackendKind {
    /// Every backend, in the order tests try them.
    pub const ALL: [BackendKind; 3] = [BackendKind::Local, BackendKind::Netns, BackendKind::Docker];

    /// The backend's name as used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Local => "local",
            BackendKind::Netns => "netns",
            BackendKind::Docker => "docker",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BackendKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|k| k.name() == s).ok_or_else(|| {
            let names: Vec<_> = Self::ALL.iter().map(|k| k.name()).collect();
            format!("unknown backend {s:?}; choose one of: {}", names.join(", "))
        })
    }
}

/// Why `docker` is unavailable in a build without the `docker` feature.
#[cfg(not(feature = "docker"))]
const DOCKER_NOT_BUILT: &str =
    "this chaos was built without the `docker` feature; rebuild with `--features docker`";

/// Options common to every backend.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// A label for the cluster, used in resource names and logs.
    pub name: String,
    /// How long an agent waits without a heartbeat from the runner before it kills everything
    /// it started and exits. The runner heartbeats at a third of this.
    pub heartbeat_timeout: Duration,
    /// Bound on creating one node (including its agent becoming ready).
    pub node_ready_timeout: Duration,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            name: "chaos".to_string(),
            heartbeat_timeout: Duration::from_secs(15),
            node_ready_timeout: Duration::from_secs(20),
        }
    }
}

/// Creates an empty cluster on `kind`. Fails with one line naming what is missing when the
/// backend cannot run here (e.g. `netns` without root).
pub async fn new_cluster(kind: BackendKind, options: ClusterOptions) -> Result<Arc<dyn Cluster>> {
    match kind {
        BackendKind::Local => Ok(Arc::new(local::LocalCluster::new(options)?)),
        #[cfg(target_os = "linux")]
        BackendKind::Netns => Ok(Arc::new(netns::NetnsCluster::new(options).await?)),
        #[cfg(not(target_os = "linux"))]
        BackendKind::Netns => Err(crate::Error::backend("netns", "network namespaces need Linux")),
        #[cfg(feature = "docker")]
        BackendKind::Docker => Ok(Arc::new(
            docker::DockerCluster::new(options, docker::DockerOptions::from_env()).await?,
        )),
        #[cfg(not(feature = "docker"))]
        BackendKind::Docker => Err(crate::Error::backend("docker", DOCKER_NOT_BUILT)),
    }
}

/// Whether `kind` can run on this machine: `Err` holds the one-line reason when not.
/// Tests use it to run on every available backend and say which they skipped and why.
pub fn availability(kind: BackendKind) -> Result<(), String> {
    match kind {
        BackendKind::Local => Ok(()),
        #[cfg(target_os = "linux")]
        BackendKind::Netns => netns::availability(),
        #[cfg(not(target_os = "linux"))]
        BackendKind::Netns => Err("network namespaces need Linux".into()),
        #[cfg(feature = "docker")]
        BackendKind::Docker => docker::availability(),
        #[cfg(not(feature = "docker"))]
        BackendKind::Docker => Err(format!("docker backend: {DOCKER_NOT_BUILT}")),
    }
}

/// Takes the numbers of `count` new nodes from `next` (nodes are `n1`, `n2`, … in creation
/// order across calls) and returns the first; fails, taking none, when a cluster of
/// `backend` would then hold more than `max`.
pub(crate) fn reserve_nodes(
    next: &mut u32,
    count: usize,
    max: u32,
    backend: &'static str,
    cluster: &str,
) -> Result<u32> {
    let first = *next;
    let last = u64::from(first) + count as u64 - 1;
    if last > u64::from(max) {
        return Err(Error::backend(
            backend,
            format!(
                "cluster {cluster}: asked for {count} more nodes but a {backend} cluster holds at \
                 most {max} ({} already made)",
                first - 1
            ),
        ));
    }
    *next = last as u32 + 1;
    Ok(first)
}

/// Runs `create(k)` for nodes `first..first + count` concurrently, each bounded by `bound` (a
/// timeout names the node). Returns what was made, in node order, and the first error — a
/// backend keeps what was made even then, so that its cleanup releases it.
pub(crate) async fn create_concurrently<T, F, Fut>(
    backend: &'static str,
    first: u32,
    count: usize,
    bound: Duration,
    create: F,
) -> (Vec<T>, Option<Error>)
where
    F: Fn(u32) -> Fut,
    Fut: Future<Output = Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let mut tasks = tokio::task::JoinSet::new();
    for k in first..first + count as u32 {
        let creating = create(k);
        tasks.spawn(async move {
            let name = format!("n{k}");
            (
                k,
                crate::ext::with_timeout(&name, "creating the node", bound, creating).await,
            )
        });
    }
    let mut made = Vec::with_capacity(count);
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((k, Ok(node))) => made.push((k, node)),
            Ok((_, Err(e))) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(Error::backend(backend, format!("node creation task failed: {e}")));
            }
        }
    }
    made.sort_by_key(|(k, _)| *k);
    (made.into_iter().map(|(_, node)| node).collect(), first_error)
}
