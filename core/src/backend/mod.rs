//! The backends, and how to pick one.
//!
//! * [`registry`]: the one list of backends — name, availability, constructor, gc, limits.
//! * [`provision`]: the one small trait an agent-based backend implements ([`Provisioner`]).
//! * [`agent_cluster`]: the one generic [`crate::Cluster`] over a provisioner ([`AgentCluster`]):
//!   CA and identities, numbering, ready wait, supervision, machine faults, shutdown, `Drop`.
//! * [`local`], [`netns`], [`docker`], [`hosts`]: provisioners (agents on this host, in network
//!   namespaces, in containers; machines of an inventory that run the agent as a service);
//!   `ec2` (feature `ec2`): EC2 instances.
//! * [`supervisor`], [`owner`], [`gc`]: agent supervision, runner identity in leftovers, and
//!   what `chaos gc` reports.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::cluster::Cluster;
use crate::{Error, Result};

pub mod agent_binary;
pub mod agent_cluster;
pub(crate) mod agent_launch;
#[cfg(feature = "docker")]
pub mod docker;
#[cfg(feature = "ec2")]
pub mod ec2;
pub(crate) mod elf;
pub mod gc;
pub mod hosts;
pub mod local;
#[cfg(target_os = "linux")]
pub mod netns;
pub mod owner;
pub mod provision;
pub mod registry;
pub mod supervisor;
pub mod workspace_binary;

pub use agent_cluster::AgentCluster;
pub use provision::{Limits, Machine, MachineRequest, Provisioner};
pub use registry::Backend;

/// Creates an empty cluster on the backend named `name` (see [`registry`]). Fails with one line
/// naming what is missing when the backend is unknown or cannot run here (e.g. `netns` without
/// root).
pub async fn new_cluster(name: &str, options: ClusterOptions) -> Result<Arc<dyn Cluster>> {
    let backend = registry::find(name).map_err(|e| Error::invalid("backend", e.to_string()))?;
    backend.create(options).await
}

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
    /// The backend's own settings file, for backends that need one (e.g. the inventory of
    /// machines of a bare-metal backend, the launch settings of a cloud backend). Backends that
    /// need none ignore it; each documents its format and its default.
    pub backend_config: Option<PathBuf>,
    /// Only machines whose labels include every one of these pairs (a scenario's
    /// `[cluster] labels`); empty: any. Only backends whose machines carry labels
    /// ([`Backend::host_labels`], e.g. `hosts`) accept a selector; the others refuse one.
    pub host_labels: BTreeMap<String, String>,
    /// Keep each node's root directory when the run fails ([`Cluster::run_failed`]); a backend
    /// may also be configured to (the `hosts` inventory's `keep_failed_runs`).
    pub keep_failed_runs: bool,
    /// Host files and directories to bake into the node image, for backends that build one
    /// (`docker`, after those of its `CHAOS_DOCKER_INCLUDE`; a scenario's
    /// `[cluster.docker] include`). Backends whose nodes see the host's files ignore them.
    pub image_include: Vec<PathBuf>,
}

/// `rack=1, room=b`: a label selector as errors show it.
pub fn format_labels(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            name: "chaos".to_string(),
            heartbeat_timeout: Duration::from_secs(15),
            node_ready_timeout: Duration::from_secs(20),
            backend_config: None,
            host_labels: BTreeMap::new(),
            keep_failed_runs: false,
            image_include: Vec::new(),
        }
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

/// Most nodes of one `create_nodes` call made at once: enough to keep a machine busy while agents
/// start, few enough that a thousand nodes do not all wait on the same two cores and each
/// node's bound (which starts when its turn comes) stays meaningful.
pub const CREATE_CONCURRENCY: usize = 32;

/// Runs `create(k)` for nodes `first..first + count`, at most [`CREATE_CONCURRENCY`] at once,
/// each bounded by `bound` from its start (a timeout names the node). Returns what was made, in
/// node order, and the first error — a backend keeps what was made even then, so that its
/// cleanup releases it. After an error no further node is started.
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
    let mut pending = first..first + count as u32;
    let mut made = Vec::with_capacity(count);
    let mut first_error = None;
    loop {
        while tasks.len() < CREATE_CONCURRENCY && first_error.is_none() {
            let Some(k) = pending.next() else { break };
            let creating = create(k);
            tasks.spawn(async move {
                let name = format!("n{k}");
                (
                    k,
                    crate::ext::with_timeout(&name, "creating the node", bound, creating).await,
                )
            });
        }
        let Some(joined) = tasks.join_next().await else {
            break;
        };
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Never more than `CREATE_CONCURRENCY` creations at once, every node made in order, and no
    /// node started after a failure.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn creation_is_bounded_and_stops_after_a_failure() {
        let (now, most, started) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
        );
        let create = |fail_at: Option<u32>| {
            let (now, most, started) = (now.clone(), most.clone(), started.clone());
            move |k: u32| {
                let (now, most, started) = (now.clone(), most.clone(), started.clone());
                async move {
                    started.fetch_add(1, Ordering::SeqCst);
                    let in_flight = now.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(in_flight, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    now.fetch_sub(1, Ordering::SeqCst);
                    if Some(k) == fail_at {
                        return Err(Error::backend("test", format!("node n{k} failed")));
                    }
                    Ok(k)
                }
            }
        };
        let (made, error) = create_concurrently("test", 1, 200, Duration::from_secs(5), create(None)).await;
        assert!(error.is_none());
        assert_eq!(made, (1..=200).collect::<Vec<u32>>());
        assert_eq!(most.load(Ordering::SeqCst), CREATE_CONCURRENCY);

        started.store(0, Ordering::SeqCst);
        let (made, error) =
            create_concurrently("test", 1, 200, Duration::from_secs(5), create(Some(5))).await;
        assert!(error.unwrap().to_string().contains("node n5 failed"));
        let started = started.load(Ordering::SeqCst);
        assert!(
            started < 200,
            "creation stopped after the failure ({started} started)"
        );
        assert_eq!(made.len(), started - 1, "what was made is kept for cleanup");
    }
}
