//! The `docker` backend: every node is a container running `chaos-agent`, on a user-defined
//! bridge network of the cluster's own.
//!
//! # Layout of a cluster
//!
//! ```text
//!  runner (host) ── bridge of network chaos-<id>, 10.X.Y.1 ──┬── container chaos-<id>-n1  10.X.Y.2  agent :7700
//!                                                            └── container chaos-<id>-n2  10.X.Y.3  agent :7700
//! ```
//!
//! - The cluster id is `<name>-<8 hex>`; the network and every container carry the labels
//!   [`LABEL_CLUSTER`] and [`LABEL_OWNER`] (the runner's [`owner`](super::owner) tag), so
//!   `chaos gc` finds a crashed runner's leftovers.
//! - The network gets a /24 of its own from `10.216.0.0`–`10.231.255.0` (the netns backend uses
//!   `10.200`–`10.215`), so node addresses are known before a container starts and the node
//!   certificate can name them. A /24 Docker refuses (another network holds it) or that a host
//!   route overlaps is skipped.
//! - Nodes run the image [`image::node_image`] builds (FROM scratch: static agent, static busybox,
//!   the host's glibc) or a local image the user names, into which the static agent is copied
//!   before the container starts. Either way the agent is the entrypoint, with `docker-init` as
//!   PID 1 to reap orphans, and `NET_ADMIN` so the agent's network faults work inside.
//! - The runner reaches every agent at its container address when the daemon is local
//!   ([`Reach::Direct`]); for a daemon at `tcp://HOST` each agent's port is published on a fixed
//!   port of that host ([`Reach::Published`]), which the node certificate names too. Nodes always
//!   reach each other at their container addresses.
//!
//! Docker-level faults (pause, stop, disconnect) are the cluster's machine faults
//! ([`crate::machine`], [`Cluster::inject_machine_fault`]); they sit next to the agent's own
//! faults, carry a TTL and are healed by cleanup at the latest.
//!
//! Agents are supervised ([`crate::backend::supervisor`], by the generic [`AgentCluster`]): a
//! container that exits because its agent died is started again (its agent heals what its
//! predecessor recorded in the container's state directory) — unless it was stopped on purpose,
//! by a `stop` fault or [`AgentCluster::restart_node`].

mod container;
mod daemon;
mod gc;
pub mod image;
mod network;

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bollard::Docker;
use bollard::models::{NetworkConnectRequest, NetworkDisconnectRequest};
use bollard::query_parameters::{RestartContainerOptionsBuilder, StopContainerOptionsBuilder};
use chaos_proto::MachineFault;

pub(crate) use daemon::within;
pub use daemon::{availability, connect};
use daemon::{bounded, check_user_image, daemon_address, daemon_host_ip, shares_file_system};
use network::{create_network, docker_safe, remove_cluster_resources};

use crate::agent_client::Timeouts;
use crate::backend::provision::{Limits, Machine, MachineRequest, Provisioner};
use crate::backend::{AgentCluster, ClusterOptions};
use crate::cluster::Cluster;
use crate::{Error, Result};

pub use gc::collect_garbage;

/// Label on every container and network: the cluster's id (`<name>-<8 hex>`).
pub const LABEL_CLUSTER: &str = "io.chaos.cluster";
/// Label on every container and network: the owner tag of the runner ([`super::owner`]).
pub const LABEL_OWNER: &str = "io.chaos.owner";
/// Label on every container: the node's name (`n1`, …).
pub const LABEL_NODE: &str = "io.chaos.node";
/// Label on images chaos built: what they are (`node`).
pub const LABEL_IMAGE: &str = "io.chaos.image";
/// Label on a cluster's network when its nodes' files are bind-mounted from the runner's host:
/// the host directory holding them, which `chaos gc` removes with the network.
pub const LABEL_FILES: &str = "io.chaos.files";
/// Prefix of those host directories' names (in the system's temporary directory); gc removes
/// nothing else.
pub const FILES_DIR_PREFIX: &str = "chaos-docker-";

/// Environment variable naming a local image to run nodes from instead of the default one.
pub const IMAGE_ENV: &str = "CHAOS_DOCKER_IMAGE";
/// Environment variable listing host files and directories (`:`-separated) to bake into the
/// default image.
pub const INCLUDE_ENV: &str = "CHAOS_DOCKER_INCLUDE";
/// Environment variable choosing how the runner reaches agents: `direct` or `published`.
pub const REACH_ENV: &str = "CHAOS_DOCKER_REACH";

/// Port the agents listen on inside their containers.
pub const AGENT_PORT: u16 = 7700;
/// Most nodes a cluster can hold: its /24 minus network, gateway and broadcast addresses.
pub const MAX_NODES: u32 = 253;

/// Where a node's files live inside its container.
pub(super) const ROOT_DIR: &str = "/chaos/root";
const TLS_DIR: &str = "/chaos/tls";
const STATE_DIR: &str = "/chaos/state";

/// Bound on every daemon call that moves no image (create, start, inspect, remove…).
const DAEMON_BOUND: Duration = Duration::from_secs(30);

fn backend_error(message: impl Into<String>) -> Error {
    Error::backend("docker", message)
}

/// The registry's entry for `docker` ([`crate::backend::registry`]).
pub const BACKEND: crate::backend::Backend = crate::backend::Backend {
    name: "docker",
    summary: "one container per node on a network of the cluster's own, running the agent",
    availability,
    create: |options| {
        Box::pin(async move {
            let cluster = DockerCluster::new(options, DockerOptions::from_env()).await?;
            Ok(Arc::new(cluster) as Arc<dyn Cluster>)
        })
    },
    collect_garbage: Some(|options| Box::pin(async move { collect_garbage(&options).await })),
    limits: LIMITS,
    isolated_network: true,
    machine_faults: &MachineFault::ALL,
    host_labels: false,
    ship_linkage: crate::backend::workspace_binary::Linkage::Static,
};

const LIMITS: Limits = Limits {
    max_nodes: MAX_NODES,
    provision_time: DAEMON_BOUND,
};

/// How the runner reaches the agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// At the container addresses: the daemon is local (or its networks are routed here).
    Direct,
    /// At a port of the daemon's host published for each agent (fixed for the container's
    /// life, so it survives stop/start faults): for a remote daemon.
    Published,
}

impl std::str::FromStr for Reach {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "direct" => Ok(Reach::Direct),
            "published" => Ok(Reach::Published),
            other => Err(format!("{REACH_ENV}={other:?}: use direct or published")),
        }
    }
}

/// Options of the docker backend beyond [`ClusterOptions`].
#[derive(Debug, Clone, Default)]
pub struct DockerOptions {
    /// A local image to run the nodes from (e.g. one holding the system under test). The static
    /// agent is copied into every container and becomes its entrypoint. `None`: the default
    /// node image, built locally.
    pub image: Option<String>,
    /// Host files and directories baked into the default node image at their host paths, with
    /// the shared libraries their executables need (e.g. `/usr/bin/perl` and
    /// `/usr/lib/x86_64-linux-gnu/perl-base`). Ignored with [`DockerOptions::image`].
    /// [`DockerCluster::new`] appends [`ClusterOptions::image_include`].
    pub include: Vec<PathBuf>,
    /// How the runner reaches the agents; `None`: [`Reach::Direct`] for a local daemon (unix
    /// socket), [`Reach::Published`] for `DOCKER_HOST=tcp://…`.
    pub reach: Option<Reach>,
    /// Copy each node's TLS files (and the agent, for a user's image) into its container, as
    /// for a daemon on another machine, even when the daemon could bind-mount them from this
    /// host (which it does by default, being faster).
    pub upload_files: bool,
}

impl DockerOptions {
    /// Options from the environment: [`IMAGE_ENV`] and [`INCLUDE_ENV`].
    pub fn from_env() -> Self {
        Self {
            image: std::env::var(IMAGE_ENV).ok().filter(|s| !s.is_empty()),
            include: std::env::var_os(INCLUDE_ENV)
                .map(|v| {
                    std::env::split_paths(&v)
                        .filter(|p| !p.as_os_str().is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            reach: std::env::var(REACH_ENV).ok().and_then(|v| match v.parse() {
                Ok(reach) => Some(reach),
                Err(e) => {
                    tracing::warn!("{e}; choosing by DOCKER_HOST");
                    None
                }
            }),
            upload_files: false,
        }
    }
}

/// A cluster of container nodes: the generic agent cluster on the [`DockerProvisioner`].
pub type DockerCluster = AgentCluster<DockerProvisioner>;

impl AgentCluster<DockerProvisioner> {
    /// Creates an empty docker cluster (see [`DockerProvisioner::create`]).
    pub async fn new(options: ClusterOptions, mut docker_options: DockerOptions) -> Result<Self> {
        // The environment's includes first (earlier files win in the image), then the
        // scenario's; one path named by both is one include.
        for path in &options.image_include {
            if !docker_options.include.contains(path) {
                docker_options.include.push(path.clone());
            }
        }
        let provisioner = DockerProvisioner::create(&options.name, docker_options).await?;
        AgentCluster::with_provisioner(provisioner, options)
    }
}

/// The docker provisioner: makes containers running the agent. See the
/// [module documentation](self).
pub struct DockerProvisioner {
    inner: Arc<Inner>,
}

pub(super) struct Inner {
    docker: Docker,
    /// The cluster's name, for messages.
    name: String,
    id: String,
    network: String,
    subnet: Ipv4Addr,
    image: String,
    /// The static agent, for containers of a user's image (the default image holds it).
    user_agent: Option<UserAgent>,
    /// How node files reach containers.
    delivery: Delivery,
    /// `Some(daemon host address)` when agents are reached at published ports.
    published_on: Option<IpAddr>,
    owner: String,
    state: Mutex<State>,
}

/// The static agent put into containers of a user's image.
struct UserAgent {
    /// Its host path, bind-mounted with [`Delivery::Bind`].
    path: PathBuf,
    /// Its bytes, copied in with [`Delivery::Upload`].
    bytes: Option<Arc<Vec<u8>>>,
}

/// How a node's own files (its TLS material, and the agent for a user's image) get into its
/// container.
pub(super) enum Delivery {
    /// The daemon shares this host's file system: the files are written under `dir` and
    /// bind-mounted read-only. Copying into a container instead makes the daemon mount and
    /// unmount its file system once more before it starts (tens of milliseconds a node, more
    /// when many start at once).
    Bind {
        /// `<tmp>/chaos-docker-XXXX`, one subdirectory per node; removed at cleanup.
        dir: Mutex<Option<tempfile::TempDir>>,
        path: PathBuf,
    },
    /// A daemon elsewhere: the files are copied in (archive upload) before the container starts.
    Upload,
}

pub(super) struct State {
    nodes: Vec<NodeEntry>,
    /// Torn down: nothing left to remove on drop.
    cleaned: bool,
}

pub(super) struct NodeEntry {
    name: String,
    container: String,
    ip: Ipv4Addr,
}

impl DockerProvisioner {
    /// Connects to the daemon, makes sure the node image exists (building the default one if
    /// needed) and creates the cluster network. A missing image fails before anything is
    /// created. `cluster` names the cluster in resource names and messages.
    pub async fn create(cluster: &str, docker_options: DockerOptions) -> Result<Self> {
        let docker = connect().await?;
        if let Some(name) = &docker_options.image {
            check_user_image(&docker, name).await?;
        }
        let local_daemon = !daemon_address().starts_with("tcp://");
        let shares_files = !docker_options.upload_files && local_daemon && shares_file_system(&docker).await;
        let agent = image::static_agent().await?;
        let (image, user_agent) = match &docker_options.image {
            Some(name) => {
                let bytes = if shares_files {
                    None
                } else {
                    let bytes = tokio::fs::read(&agent)
                        .await
                        .map_err(|e| Error::io(format!("reading the static agent {}", agent.display()), e))?;
                    Some(Arc::new(bytes))
                };
                (name.clone(), Some(UserAgent { path: agent, bytes }))
            }
            None => (
                image::node_image(&docker, &agent, &docker_options.include).await?,
                None,
            ),
        };
        let delivery = if shares_files {
            let dir = tempfile::Builder::new()
                .prefix(FILES_DIR_PREFIX)
                .tempdir()
                .map_err(|e| Error::io("creating a directory for the nodes' TLS files", e))?;
            Delivery::Bind {
                path: dir.path().to_path_buf(),
                dir: Mutex::new(Some(dir)),
            }
        } else {
            Delivery::Upload
        };

        let id = format!("{}-{:08x}", docker_safe(cluster), rand::random::<u32>());
        let network = format!("chaos-{id}");
        let owner = super::owner::current_tag();
        let reach = docker_options.reach.unwrap_or(if local_daemon {
            Reach::Direct
        } else {
            Reach::Published
        });
        let published_on = match reach {
            Reach::Direct => None,
            Reach::Published => Some(daemon_host_ip().await?),
        };
        let files_dir = match &delivery {
            Delivery::Bind { path, .. } => Some(path.as_path()),
            Delivery::Upload => None,
        };
        let subnet = create_network(&docker, &network, &id, &owner, files_dir, local_daemon).await?;

        tracing::debug!(%network, %subnet, %image, "docker cluster {cluster} ready");
        Ok(Self {
            inner: Arc::new(Inner {
                docker,
                name: cluster.to_string(),
                id,
                network,
                subnet,
                image,
                user_agent,
                delivery,
                published_on,
                owner,
                state: Mutex::new(State {
                    nodes: Vec::new(),
                    cleaned: false,
                }),
            }),
        })
    }

    /// The cluster's id (`<name>-<8 hex>`), the value of its [`LABEL_CLUSTER`] label.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The cluster network's name.
    pub fn network(&self) -> &str {
        &self.inner.network
    }

    /// The cluster network's /24.
    pub fn subnet(&self) -> Ipv4Addr {
        self.inner.subnet
    }

    /// The image the nodes run.
    pub fn image(&self) -> &str {
        &self.inner.image
    }

    /// The container name of node `node` (`"n1"`, …), whether or not it exists (yet).
    pub fn container_name(&self, node: &str) -> String {
        self.inner.container_name(node)
    }

    /// How the runner reaches the agents.
    pub fn reach(&self) -> Reach {
        if self.inner.published_on.is_some() {
            Reach::Published
        } else {
            Reach::Direct
        }
    }

    /// The Docker client the cluster uses.
    pub fn docker(&self) -> &Docker {
        &self.inner.docker
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Container name and address of a node of this cluster.
    fn node_entry(&self, node: &str) -> Result<(String, Ipv4Addr)> {
        self.lock()
            .nodes
            .iter()
            .find(|n| n.name == node)
            .map(|n| (n.container.clone(), n.ip))
            .ok_or_else(|| backend_error(format!("node {node}: no such node in cluster {}", self.name)))
    }

    /// Removes every container and the network, then the nodes' host files. Idempotent.
    async fn teardown(&self) -> Result<(), String> {
        self.lock().cleaned = true;
        let mut errors = Vec::new();
        if let Err(e) = remove_cluster_resources(&self.docker, &self.id, &self.network).await {
            errors.push(e);
        }
        if let Delivery::Bind { dir, path } = &self.delivery
            && let Some(dir) = dir.lock().unwrap_or_else(|e| e.into_inner()).take()
            && let Err(e) = dir.close()
        {
            errors.push(format!("removing {}: {e}", path.display()));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

impl Inner {
    /// Best effort, blocking: removes whatever containers and network are left (a test that
    /// panicked before [`Cluster::cleanup`]). Runs on a thread of its own with its own runtime
    /// and connection, so it works whether or not a runtime is running here. Idempotent.
    fn teardown_blocking(&self) {
        if std::mem::replace(&mut self.lock().cleaned, true) {
            return;
        }
        let id = self.id.clone();
        let network = self.network.clone();
        let worker = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                let docker = connect().await.map_err(|e| e.to_string())?;
                remove_cluster_resources(&docker, &id, &network).await
            })
        });
        match worker.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("docker cluster {}: cleanup on drop: {e}", self.id),
            Err(_) => tracing::warn!("docker cluster {}: cleanup on drop panicked", self.id),
        }
        // The bind-mounted files go with `delivery`'s temporary directory.
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.teardown_blocking();
    }
}

#[async_trait]
impl Provisioner for DockerProvisioner {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn limits(&self) -> Limits {
        LIMITS
    }

    /// A short connect: a paused or disconnected container's agent must not hold a caller for
    /// long.
    fn client_timeouts(&self) -> Timeouts {
        Timeouts {
            connect: Duration::from_secs(2),
            ..Timeouts::default()
        }
    }

    async fn provision(&self, request: MachineRequest<'_>) -> Result<Machine> {
        if self.inner.lock().cleaned {
            return Err(backend_error(format!(
                "cluster {}: already cleaned up; create a new cluster",
                self.inner.name
            )));
        }
        self.inner.create_node(&request).await
    }

    async fn release(&self, node: &str) -> Result<()> {
        let entry = {
            let mut state = self.inner.lock();
            let found = state.nodes.iter().position(|n| n.name == node);
            found.map(|i| state.nodes.remove(i))
        };
        let container = entry.map_or_else(|| self.inner.container_name(node), |e| e.container);
        self.inner.remove_container(&container).await;
        Ok(())
    }

    async fn teardown(&self) -> Result<()> {
        self.inner
            .teardown()
            .await
            .map_err(|e| backend_error(format!("{}: {e}", self.inner.id)))
    }

    fn teardown_now(&self) {
        self.inner.teardown_blocking();
    }

    async fn agent_status(&self, node: &str) -> Option<String> {
        match self.inner.node_entry(node) {
            Ok((container, _)) => self.inner.container_status(&container).await,
            Err(_) => Some("its node is gone".to_string()),
        }
    }

    async fn agent_exited(&self, node: &str) -> String {
        match self.inner.node_entry(node) {
            Ok((container, _)) => self.inner.container_exited(&container).await,
            Err(_) => "its node is gone".to_string(),
        }
    }

    async fn restart_agent(&self, node: &str) -> Result<()> {
        if self.inner.lock().cleaned {
            return Err(backend_error(format!("node {node}: cleaned up, not restarted")));
        }
        let (container, _) = self.inner.node_entry(node)?;
        bounded(
            format!("node {node}: starting container {container} again"),
            self.inner.docker.start_container(&container, None),
        )
        .await
    }

    async fn diagnose(&self, node: &str) -> String {
        let container = self.inner.container_name(node);
        format!(
            "container {container} log:\n{}",
            self.inner.log_tail(&container).await
        )
    }

    fn machine_faults(&self) -> Vec<MachineFault> {
        BACKEND.machine_faults.to_vec()
    }

    async fn apply_machine_fault(&self, node: &str, fault: MachineFault) -> Result<()> {
        let inner = &self.inner;
        let (container, _) = inner.node_entry(node)?;
        let context = format!("node {node}: {fault} container {container}");
        match fault {
            MachineFault::Pause => bounded(&context, inner.docker.pause_container(&container)).await,
            MachineFault::Stop => {
                let options = StopContainerOptionsBuilder::new().t(2).build();
                bounded(&context, inner.docker.stop_container(&container, Some(options))).await
            }
            MachineFault::Disconnect => {
                let request = NetworkDisconnectRequest {
                    container: container.clone(),
                    force: Some(true),
                };
                bounded(&context, inner.docker.disconnect_network(&inner.network, request)).await
            }
        }
    }

    async fn undo_machine_fault(&self, node: &str, fault: MachineFault) -> Result<()> {
        let inner = &self.inner;
        let (container, ip) = inner.node_entry(node)?;
        let context = format!("node {node}: healing {fault} of container {container}");
        match fault {
            MachineFault::Pause => bounded(&context, inner.docker.unpause_container(&container)).await,
            MachineFault::Stop => bounded(&context, inner.docker.start_container(&container, None)).await,
            MachineFault::Disconnect => {
                let request = NetworkConnectRequest {
                    container: container.clone(),
                    endpoint_config: Some(inner.endpoint(node, ip)),
                };
                bounded(&context, inner.docker.connect_network(&inner.network, request)).await
            }
        }
    }

    /// `docker restart` of the node's container.
    async fn restart_machine(&self, node: &str) -> Option<Result<()>> {
        let inner = &self.inner;
        let (container, _) = match inner.node_entry(node) {
            Ok(entry) => entry,
            Err(e) => return Some(Err(e)),
        };
        let options = RestartContainerOptionsBuilder::new().t(2).build();
        Some(
            bounded(
                format!("node {node}: restarting container {container}"),
                inner.docker.restart_container(&container, Some(options)),
            )
            .await,
        )
    }

    fn describe(&self) -> Vec<(&'static str, String)> {
        vec![
            ("id", self.inner.id.clone()),
            ("network", self.inner.network.clone()),
            ("subnet", format!("{}/24", self.inner.subnet)),
            ("image", self.inner.image.clone()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::container::tar_archive;
    use super::network::{candidate_subnet, docker_safe};
    use super::*;

    #[test]
    fn candidate_subnets_stay_clear_of_netns() {
        assert_eq!(candidate_subnet(0), Ipv4Addr::new(10, 216, 0, 0));
        assert_eq!(candidate_subnet(257), Ipv4Addr::new(10, 217, 1, 0));
        assert_eq!(candidate_subnet(4095), Ipv4Addr::new(10, 231, 255, 0));
        assert_eq!(candidate_subnet(4096), Ipv4Addr::new(10, 216, 0, 0));
    }

    #[test]
    fn names_are_made_docker_safe() {
        assert_eq!(docker_safe("stdio_round_trips"), "stdio_round_trips");
        assert_eq!(docker_safe("a b/c"), "a-b-c");
        assert_eq!(docker_safe("-x"), "c-x");
        assert_eq!(docker_safe(&"x".repeat(99)).len(), 40);
    }

    #[test]
    fn tar_archives_keep_modes() {
        let bytes = tar_archive(&[("d", 0o700)], &[("d/f", 0o600, b"hi")]).unwrap();
        let mut archive = tar::Archive::new(bytes.as_slice());
        let entries: Vec<(String, u32, u64)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    e.header().mode().unwrap(),
                    e.header().size().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            entries,
            vec![("d".to_string(), 0o700, 0), ("d/f".to_string(), 0o600, 2)]
        );
    }
}
