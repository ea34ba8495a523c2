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
//! Agents are supervised ([`crate::backend::supervisor`]): a container that exits because its
//! agent died is started again (its agent heals what its predecessor recorded in the
//! container's state directory) — unless it was stopped on purpose, by a `stop` fault or
//! [`DockerCluster::restart_node`].

mod gc;
pub mod image;
mod keeper;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, EndpointIpamConfig, EndpointSettings, HostConfig, Ipam, IpamConfig,
    NetworkConnectRequest, NetworkCreateRequest, NetworkDisconnectRequest, NetworkingConfig, PortBinding,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, StopContainerOptionsBuilder, UploadToContainerOptionsBuilder,
};
use futures_util::StreamExt;

use crate::agent_client::{AgentClient, AgentNode, Timeouts};
use crate::backend::ClusterOptions;
use crate::backend::supervisor::{AgentEvent, RestartPolicy, Supervisor};
use crate::certs::{self, ClusterCa};
use crate::cluster::{Cluster, Node};
use crate::machine::{
    self, MachineFault, MachineFaultHandle, MachineFaultHost, MachineFaultInfo, MachineFaultTable,
};
use crate::{Error, Result};
use keeper::DockerKeeper;

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
const ROOT_DIR: &str = "/chaos/root";
const TLS_DIR: &str = "/chaos/tls";
const STATE_DIR: &str = "/chaos/state";

/// Bound on every daemon call that moves no image (create, start, inspect, remove…).
const DAEMON_BOUND: Duration = Duration::from_secs(30);
/// Bound on an agent's graceful shutdown during [`Cluster::cleanup`].
const SHUTDOWN_BOUND: Duration = Duration::from_secs(2);
/// Grace a node gets on top of a fault's TTL before its agent gives up on the runner.
const FAULT_GRACE_MARGIN: Duration = Duration::from_secs(10);
/// How many /24s to try before giving up on finding a free one.
const SUBNET_ATTEMPTS: u32 = 64;
/// Host ports published agents get, below Linux's ephemeral range so outgoing connections on
/// the daemon host do not take them.
const PUBLISHED_PORTS: std::ops::Range<u16> = 20_000..32_768;
/// How many host ports to try for one node before giving up.
const PORT_ATTEMPTS: u32 = 8;

fn backend_error(message: impl Into<String>) -> Error {
    Error::backend("docker", message)
}

/// A daemon call that failed, or did not answer within its bound.
#[derive(Debug)]
pub(crate) enum CallFailure {
    /// The daemon (or the connection to it) said no.
    Daemon(bollard::errors::Error),
    /// No answer within this bound.
    NoAnswer(Duration),
}

impl CallFailure {
    /// The HTTP status of the daemon's refusal, when it sent one.
    pub(crate) fn status(&self) -> Option<u16> {
        match self {
            CallFailure::Daemon(bollard::errors::Error::DockerResponseServerError {
                status_code, ..
            }) => Some(*status_code),
            _ => None,
        }
    }

    /// The daemon's own message when it sent one.
    fn daemon_message(&self) -> Option<&str> {
        match self {
            CallFailure::Daemon(bollard::errors::Error::DockerResponseServerError { message, .. }) => {
                Some(message)
            }
            _ => None,
        }
    }

    /// One line: what was being done (`context`), then why it failed.
    pub(crate) fn describe(&self, context: &str) -> String {
        match self {
            CallFailure::Daemon(bollard::errors::Error::DockerResponseServerError {
                status_code,
                message,
            }) => {
                format!("{context}: {message} (HTTP {status_code})")
            }
            CallFailure::Daemon(e) => format!("{context}: {e}"),
            CallFailure::NoAnswer(bound) => {
                format!("{context}: the Docker daemon did not answer within {bound:?}")
            }
        }
    }
}

/// Runs one daemon call within `bound`.
pub(crate) async fn within<T>(
    bound: Duration,
    call: impl Future<Output = Result<T, bollard::errors::Error>>,
) -> Result<T, CallFailure> {
    match tokio::time::timeout(bound, call).await {
        Ok(result) => result.map_err(CallFailure::Daemon),
        Err(_) => Err(CallFailure::NoAnswer(bound)),
    }
}

/// Runs one daemon call within [`DAEMON_BOUND`]; the error says what was being done.
async fn bounded<T>(
    context: impl AsRef<str>,
    call: impl Future<Output = Result<T, bollard::errors::Error>>,
) -> Result<T> {
    within(DAEMON_BOUND, call)
        .await
        .map_err(|f| backend_error(f.describe(context.as_ref())))
}

/// Whether starting a container failed because the host port it publishes is taken.
fn is_port_taken(e: &Error) -> bool {
    let text = e.to_string();
    text.contains("port is already allocated") || text.contains("address already in use")
}

/// Where the daemon is, for messages.
pub(crate) fn daemon_address() -> String {
    std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".to_string())
}

/// Connects to the daemon `DOCKER_HOST` names (a unix socket by default; `tcp://` with
/// `DOCKER_TLS_VERIFY` and `DOCKER_CERT_PATH` for TLS), negotiating the API version, within a
/// few seconds.
pub async fn connect() -> Result<Docker> {
    let unreachable = |why: String| {
        backend_error(format!(
            "no Docker daemon reachable at {} ({why}); start one, or set DOCKER_HOST",
            daemon_address()
        ))
    };
    let docker = Docker::connect_with_defaults().map_err(|e| unreachable(e.to_string()))?;
    let bound = Duration::from_secs(5);
    let docker = tokio::time::timeout(bound, docker.negotiate_version())
        .await
        .map_err(|_| unreachable(format!("no answer within {bound:?}")))?
        .map_err(|e| unreachable(e.to_string()))?;
    tokio::time::timeout(bound, docker.ping())
        .await
        .map_err(|_| unreachable(format!("no answer within {bound:?}")))?
        .map_err(|e| unreachable(e.to_string()))?;
    Ok(docker)
}

/// Whether the docker backend can run here: `Err` holds one line saying what is missing.
///
/// Asks the daemon for a ping, on a thread of its own so it works inside and outside a runtime.
pub fn availability() -> Result<(), String> {
    let ping = std::thread::spawn(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("docker backend: starting a runtime: {e}"))?;
        runtime.block_on(connect()).map(drop).map_err(|e| e.to_string())
    });
    ping.join()
        .unwrap_or_else(|_| Err("docker backend: the availability check panicked".into()))
}

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

/// Where the runner dials published agent ports: the host part of `DOCKER_HOST=tcp://HOST:PORT`
/// (resolved), or loopback for a local daemon.
async fn daemon_host_ip() -> Result<IpAddr> {
    let address = daemon_address();
    let Some(rest) = address.strip_prefix("tcp://") else {
        return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST));
    };
    let authority = rest.split('/').next().unwrap_or(rest);
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_string()
    } else {
        format!("{authority}:2376")
    };
    let mut found = tokio::time::timeout(Duration::from_secs(5), tokio::net::lookup_host(&with_port))
        .await
        .map_err(|_| backend_error(format!("resolving DOCKER_HOST {address}: no answer within 5s")))?
        .map_err(|e| Error::io(format!("resolving DOCKER_HOST {address}"), e))?;
    found
        .next()
        .map(|a| a.ip())
        .ok_or_else(|| backend_error(format!("DOCKER_HOST {address} resolves to no address")))
}

/// A cluster of container nodes. See the [module documentation](self).
pub struct DockerCluster {
    inner: Arc<Inner>,
}

struct Inner {
    docker: Docker,
    options: ClusterOptions,
    id: String,
    network: String,
    subnet: Ipv4Addr,
    image: String,
    /// The static agent, for containers of a user's image (the default image holds it).
    user_agent: Option<UserAgent>,
    /// How node files reach containers.
    delivery: Delivery,
    ca: ClusterCa,
    runner: certs::Identity,
    tls: Arc<rustls::ClientConfig>,
    /// `Some(daemon host address)` when agents are reached at published ports.
    published_on: Option<IpAddr>,
    owner: String,
    /// The active container faults (pause, stop, disconnect).
    machine_faults: MachineFaultTable,
    /// Restarts containers whose agent died; stopped before cleanup.
    supervisor: Supervisor,
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
enum Delivery {
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

struct State {
    next_node: u32,
    nodes: Vec<NodeEntry>,
    /// Nodes whose container is down on purpose (a `stop` fault being injected or in place, a
    /// restart in progress): the supervisor leaves them alone until they are back.
    held_down: HashSet<String>,
    cleaned: bool,
}

struct NodeEntry {
    name: String,
    container: String,
    ip: Ipv4Addr,
    client: Arc<AgentClient>,
}

/// The /24 of candidate `i`: `10.(216 + i / 256).(i % 256).0`.
fn candidate_subnet(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, (216 + (i / 256) % 16) as u8, (i % 256) as u8, 0)
}

fn with_last_octet(net: Ipv4Addr, last: u8) -> Ipv4Addr {
    let [a, b, c, _] = net.octets();
    Ipv4Addr::new(a, b, c, last)
}

/// Whether a host route other than the default one overlaps `net`/24 (only meaningful when
/// the daemon runs on this host, whose routes decide whether the runner reaches the nodes).
fn overlaps_host_route(net: Ipv4Addr) -> bool {
    #[cfg(target_os = "linux")]
    {
        super::netns::overlaps_host_route(net)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = net;
        false
    }
}

/// A name Docker accepts (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`), at most 40 characters.
fn docker_safe(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    if !out.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        out.insert(0, 'c');
    }
    out
}

impl DockerCluster {
    /// Creates an empty cluster: connects to the daemon, makes sure the node image exists
    /// (building the default one if needed), creates the cluster network and CA. A missing
    /// image fails before anything is created.
    pub async fn new(options: ClusterOptions, docker_options: DockerOptions) -> Result<Self> {
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

        let id = format!("{}-{:08x}", docker_safe(&options.name), rand::random::<u32>());
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

        // From here on the network exists: a failure must remove it.
        let material = (|| {
            let ca = ClusterCa::generate(&options.name)?;
            let runner = ca.issue_runner()?;
            let tls = certs::client_config(ca.cert_pem(), &runner)?;
            Ok::<_, Error>((ca, runner, tls))
        })();
        let (ca, runner, tls) = match material {
            Ok(m) => m,
            Err(e) => {
                let _ = docker.remove_network(&network).await;
                return Err(e);
            }
        };
        tracing::debug!(%network, %subnet, %image, "docker cluster {} ready", options.name);
        Ok(Self {
            inner: Arc::new(Inner {
                docker,
                options,
                id,
                network,
                subnet,
                image,
                user_agent,
                delivery,
                ca,
                runner,
                tls,
                published_on,
                owner,
                machine_faults: MachineFaultTable::default(),
                supervisor: Supervisor::new(RestartPolicy::default()),
                state: Mutex::new(State {
                    next_node: 1,
                    nodes: Vec::new(),
                    held_down: HashSet::new(),
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

    /// The cluster CA's certificate (PEM): what a client must trust to reach the agents.
    pub fn ca_pem(&self) -> &str {
        self.inner.ca.cert_pem()
    }

    /// The runner's client identity, for another process that drives this cluster's agents.
    pub fn runner_identity(&self) -> &certs::Identity {
        &self.inner.runner
    }

    /// How the runner reaches the agents.
    pub fn reach(&self) -> Reach {
        if self.inner.published_on.is_some() {
            Reach::Published
        } else {
            Reach::Direct
        }
    }

    /// Where the runner reaches `node`'s agent: its container address, or with
    /// [`Reach::Published`] the published port on the daemon's host. `None` for an unknown node.
    pub fn agent_address(&self, node: &str) -> Option<SocketAddr> {
        self.inner
            .node_entry(node)
            .ok()
            .map(|(_, client, _)| client.addr())
    }

    /// The Docker client the cluster uses.
    pub fn docker(&self) -> &Docker {
        &self.inner.docker
    }

    /// `docker restart` of `node`'s container: its processes die, its agent comes back (healing
    /// what its predecessor left, from its state directory). Returns once the agent answers.
    pub async fn restart_node(&self, node: &str) -> Result<()> {
        let inner = &self.inner;
        let (container, client, _) = inner.node_entry(node)?;
        let options = bollard::query_parameters::RestartContainerOptionsBuilder::new()
            .t(2)
            .build();
        inner.lock().held_down.insert(node.to_string());
        let restarted = async {
            bounded(
                format!("node {node}: restarting container {container}"),
                inner.docker.restart_container(&container, Some(options)),
            )
            .await?;
            inner.wait_ready(node, &container, &client).await
        }
        .await;
        inner.lock().held_down.remove(node);
        restarted
    }
}

/// Whether the daemon runs on this host, so it can bind-mount files the runner writes: its
/// name (the host name of the machine it runs on) is this host's. A socket forwarded from
/// another machine, or a daemon in a VM (Docker Desktop), answers with another name.
async fn shares_file_system(docker: &Docker) -> bool {
    within(DAEMON_BOUND, docker.info())
        .await
        .is_ok_and(|info| info.name.as_deref() == Some(super::owner::hostname()))
}

/// Fails with a clear message when `name` is not an image the daemon has.
async fn check_user_image(docker: &Docker, name: &str) -> Result<()> {
    match within(DAEMON_BOUND, docker.inspect_image(name)).await {
        Ok(_) => Ok(()),
        Err(f) if f.status() == Some(404) => Err(backend_error(format!(
            "image {name:?} not found on the Docker daemon at {}: chaos never pulls images; build \
             or load it there first (`docker build -t {name} …`, `docker load`), check `docker \
             images`, or leave the image unset to use the default node image",
            daemon_address()
        ))),
        Err(f) => Err(backend_error(f.describe(&format!("inspecting image {name:?}")))),
    }
}

/// Creates the cluster's network on the first free candidate /24; returns the /24.
async fn create_network(
    docker: &Docker,
    network: &str,
    id: &str,
    owner: &str,
    files_dir: Option<&Path>,
    local_daemon: bool,
) -> Result<Ipv4Addr> {
    let mut labels = HashMap::from([
        (LABEL_CLUSTER.to_string(), id.to_string()),
        (LABEL_OWNER.to_string(), owner.to_string()),
    ]);
    if let Some(dir) = files_dir {
        labels.insert(LABEL_FILES.to_string(), dir.display().to_string());
    }
    let start = rand::random::<u32>() % 4096;
    let mut last_error = String::new();
    for attempt in 0..SUBNET_ATTEMPTS {
        let subnet = candidate_subnet((start + attempt * 61) % 4096);
        if local_daemon && overlaps_host_route(subnet) {
            continue;
        }
        let request = NetworkCreateRequest {
            name: network.to_string(),
            driver: Some("bridge".to_string()),
            labels: Some(labels.clone()),
            ipam: Some(Ipam {
                config: Some(vec![IpamConfig {
                    subnet: Some(format!("{subnet}/24")),
                    gateway: Some(with_last_octet(subnet, 1).to_string()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        match within(DAEMON_BOUND, docker.create_network(request)).await {
            Ok(_) => return Ok(subnet),
            // "Pool overlaps with other one on this address space": another network has it.
            Err(f) if f.daemon_message().is_some_and(|m| m.contains("overlap")) => {
                last_error = f.daemon_message().unwrap_or_default().to_string();
            }
            Err(f) => return Err(backend_error(f.describe(&format!("creating network {network}")))),
        }
    }
    Err(backend_error(format!(
        "creating network {network}: no free /24 in 10.216.0.0/12 after {SUBNET_ATTEMPTS} tries \
         (last: {last_error}); remove unused networks (`docker network prune`, `chaos gc`)"
    )))
}

/// A tar archive of `files` (path relative to `/`, mode, contents) and `dirs` (path, mode).
fn tar_archive(dirs: &[(&str, u32)], files: &[(&str, u32, &[u8])]) -> std::io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, mode) in dirs {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(*mode);
        header.set_size(0);
        header.set_mtime(0);
        builder.append_data(&mut header, path, std::io::empty())?;
    }
    for (path, mode, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(*mode);
        header.set_size(data.len() as u64);
        header.set_mtime(0);
        builder.append_data(&mut header, path, *data)?;
    }
    builder.into_inner()
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The container name of node `node`: `chaos-<cluster id>-<node>`.
    fn container_name(&self, node: &str) -> String {
        format!("chaos-{}-{node}", self.id)
    }

    fn labels(&self, node: Option<&str>) -> HashMap<String, String> {
        let mut labels = HashMap::from([
            (LABEL_CLUSTER.to_string(), self.id.clone()),
            (LABEL_OWNER.to_string(), self.owner.clone()),
        ]);
        if let Some(node) = node {
            labels.insert(LABEL_NODE.to_string(), node.to_string());
        }
        labels
    }

    /// Container name, agent client and address of a node of this cluster.
    fn node_entry(&self, node: &str) -> Result<(String, Arc<AgentClient>, Ipv4Addr)> {
        let state = self.lock();
        state
            .nodes
            .iter()
            .find(|n| n.name == node)
            .map(|n| (n.container.clone(), n.client.clone(), n.ip))
            .ok_or_else(|| {
                let names: Vec<&str> = state.nodes.iter().map(|n| n.name.as_str()).collect();
                Error::Invalid {
                    what: format!("node {node}"),
                    message: format!(
                        "no such node in docker cluster {}; its nodes: {}",
                        self.options.name,
                        if names.is_empty() {
                            "none yet".to_string()
                        } else {
                            names.join(", ")
                        }
                    ),
                }
            })
    }

    /// The endpoint settings that give node `name` address `ip` on the cluster network.
    fn endpoint(&self, name: &str, ip: Ipv4Addr) -> EndpointSettings {
        EndpointSettings {
            ipam_config: Some(EndpointIpamConfig {
                ipv4_address: Some(ip.to_string()),
                ..Default::default()
            }),
            aliases: Some(vec![name.to_string()]),
            ..Default::default()
        }
    }

    /// Creates node `k`: container (with its TLS files, and the agent for a user's image),
    /// started, its agent answering over mutual TLS. On failure the container is removed.
    async fn create_node(self: Arc<Self>, k: u32) -> Result<(Arc<dyn Node>, NodeEntry)> {
        let name = format!("n{k}");
        let container = self.container_name(&name);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = self.published_on.map(|_| {
                PUBLISHED_PORTS.start
                    + (rand::random::<u32>() % u32::from(PUBLISHED_PORTS.end - PUBLISHED_PORTS.start)) as u16
            });
            let result = self.create_node_in(k, &name, &container, port).await;
            if let Ok((_, entry)) = &result {
                let keeper = DockerKeeper {
                    cluster: Arc::downgrade(&self),
                    docker: self.docker.clone(),
                    node: name.clone(),
                    container: container.clone(),
                    client: entry.client.clone(),
                };
                let interval = (self.options.heartbeat_timeout / 3).max(Duration::from_millis(10));
                self.supervisor
                    .watch(entry.client.clone(), Arc::new(keeper), interval);
            }
            if result.is_err() {
                let options = RemoveContainerOptionsBuilder::new().force(true).v(true).build();
                let _ = tokio::time::timeout(
                    DAEMON_BOUND,
                    self.docker.remove_container(&container, Some(options)),
                )
                .await;
            }
            match result {
                // Another process holds the host port we picked: pick another.
                Err(e) if port.is_some() && attempt < PORT_ATTEMPTS && is_port_taken(&e) => continue,
                other => return other,
            }
        }
    }

    async fn create_node_in(
        &self,
        k: u32,
        name: &str,
        container: &str,
        published_port: Option<u16>,
    ) -> Result<(Arc<dyn Node>, NodeEntry)> {
        let ip = with_last_octet(self.subnet, (k + 1) as u8);
        let mut sans = vec![IpAddr::V4(ip)];
        sans.extend(self.published_on);
        let identity = self
            .ca
            .issue_node(name, &sans, &[name.to_string(), container.to_string()])?;
        let agent_port = format!("{AGENT_PORT}/tcp");
        let port_bindings = published_port.map(|port| {
            HashMap::from([(
                agent_port.clone(),
                Some(vec![PortBinding {
                    host_ip: None,
                    host_port: Some(port.to_string()),
                }]),
            )])
        });

        let binds = match &self.delivery {
            Delivery::Bind { path, .. } => {
                let tls = path.join(name).join("tls");
                identity.write_node_dir(&tls, self.ca.cert_pem())?;
                let mut binds = vec![format!("{}:{TLS_DIR}:ro", tls.display())];
                if let Some(agent) = &self.user_agent {
                    binds.push(format!("{}:{}:ro", agent.path.display(), image::AGENT_PATH));
                }
                Some(binds)
            }
            Delivery::Upload => None,
        };
        let timeout_ms = self.options.heartbeat_timeout.as_millis().max(1);
        let body = ContainerCreateBody {
            image: Some(self.image.clone()),
            hostname: Some(name.to_string()),
            entrypoint: Some(vec![image::AGENT_PATH.to_string()]),
            cmd: Some(vec![
                "--listen".into(),
                format!("0.0.0.0:{AGENT_PORT}"),
                "--tls-dir".into(),
                TLS_DIR.into(),
                "--root-dir".into(),
                ROOT_DIR.into(),
                "--state-dir".into(),
                STATE_DIR.into(),
                "--heartbeat-timeout".into(),
                format!("{timeout_ms}ms"),
            ]),
            working_dir: Some(ROOT_DIR.to_string()),
            // An anonymous volume: node files bypass the storage driver (fuse-overlayfs here
            // moves 1 GiB in over a minute), and removing the container with `v` removes it.
            volumes: Some(vec![ROOT_DIR.to_string()]),
            labels: Some(self.labels(Some(name))),
            host_config: Some(HostConfig {
                cap_add: Some(vec!["NET_ADMIN".to_string()]),
                // docker-init as PID 1 reaps orphans of the processes the agent starts.
                init: Some(true),
                network_mode: Some(self.network.clone()),
                port_bindings,
                binds,
                ..Default::default()
            }),
            exposed_ports: published_port.map(|_| vec![agent_port.clone()]),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(self.network.clone(), self.endpoint(name, ip))])),
            }),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::new().name(container).build();
        bounded(
            format!("node {name}: creating container {container} from {}", self.image),
            self.docker.create_container(Some(options), body),
        )
        .await?;

        if matches!(self.delivery, Delivery::Upload) {
            self.upload_files(name, container, &identity).await?;
        }
        bounded(
            format!("node {name}: starting container {container}"),
            self.docker.start_container(container, None),
        )
        .await?;
        self.connect_node(name, container, ip, published_port).await
    }

    /// Copies node `name`'s TLS files (and the agent, for a user's image) into its created
    /// container: [`Delivery::Upload`].
    async fn upload_files(&self, name: &str, container: &str, identity: &certs::Identity) -> Result<()> {
        let ca = self.ca.cert_pem().as_bytes();
        let mut files: Vec<(&str, u32, &[u8])> = vec![
            ("chaos/tls/ca.pem", 0o644, ca),
            ("chaos/tls/node.pem", 0o644, identity.cert_pem.as_bytes()),
            ("chaos/tls/node.key", 0o600, identity.key_pem.as_bytes()),
        ];
        if let Some(bytes) = self.user_agent.as_ref().and_then(|a| a.bytes.as_ref()) {
            files.push(("chaos/chaos-agent", 0o755, bytes.as_slice()));
        }
        let archive = tar_archive(
            &[
                ("chaos", 0o755),
                ("chaos/tls", 0o700),
                ("chaos/root", 0o755),
                ("chaos/state", 0o700),
            ],
            &files,
        )
        .map_err(|e| Error::io(format!("node {name}: packing its TLS files"), e))?;
        let upload = UploadToContainerOptionsBuilder::new().path("/").build();
        bounded(
            format!("node {name}: copying TLS files into {container}"),
            self.docker
                .upload_to_container(container, Some(upload), bollard::body_full(archive.into())),
        )
        .await
        .map(drop)
    }

    /// Connects to the agent of node `name`, started in `container`, and waits until it answers.
    async fn connect_node(
        &self,
        name: &str,
        container: &str,
        ip: Ipv4Addr,
        published_port: Option<u16>,
    ) -> Result<(Arc<dyn Node>, NodeEntry)> {
        let timeouts = Timeouts {
            connect: Duration::from_secs(2),
            ..Timeouts::default()
        };
        let agent_addr = match (self.published_on, published_port) {
            (Some(host), Some(port)) => SocketAddr::new(host, port),
            _ => SocketAddr::new(IpAddr::V4(ip), AGENT_PORT),
        };
        let client = Arc::new(AgentClient::with_timeouts(
            name.to_string(),
            agent_addr,
            self.tls.clone(),
            timeouts,
        ));
        self.wait_ready(name, container, &client).await?;
        let node: Arc<dyn Node> = Arc::new(AgentNode::new(
            client.clone(),
            vec![IpAddr::V4(ip)],
            ROOT_DIR.to_string(),
        ));
        Ok((
            node,
            NodeEntry {
                name: name.to_string(),
                container: container.to_string(),
                ip,
                client,
            },
        ))
    }

    /// Waits until the node's agent answers a heartbeat over mutual TLS, within the node-ready
    /// bound. On timeout the error carries the container's state and the end of its log.
    async fn wait_ready(&self, name: &str, container: &str, client: &AgentClient) -> Result<()> {
        let deadline = Instant::now() + self.options.node_ready_timeout;
        let mut pause = Duration::from_millis(2);
        let mut checks = 0u32;
        loop {
            let last = match client.heartbeat().await {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            checks += 1;
            // Now and then, see whether the container died: no point waiting for a dead agent.
            let exited = if checks % 25 == 0 {
                matches!(
                    self.docker.inspect_container(container, None).await,
                    Ok(info) if info.state.as_ref().and_then(|s| s.running) == Some(false)
                )
            } else {
                false
            };
            if exited || Instant::now() >= deadline {
                let log = self.log_tail(container).await;
                let why = if exited {
                    "its container exited".to_string()
                } else {
                    format!(
                        "no answer within {:?} (the runner must reach container addresses directly: \
                         a local daemon, or a route to the daemon host's networks)",
                        self.options.node_ready_timeout
                    )
                };
                return Err(backend_error(format!(
                    "node {name} (container {container}): the agent is not ready: {why}; last \
                     error: {last}; container log:\n{log}"
                )));
            }
            tokio::time::sleep(pause).await;
            // A refused connect costs microseconds; a long pause would be pure added latency.
            pause = (pause * 2).min(Duration::from_millis(10));
        }
    }

    /// The last lines a container printed, for error messages.
    async fn log_tail(&self, container: &str) -> String {
        let options = LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .tail("20")
            .build();
        let mut logs = self.docker.logs(container, Some(options));
        let mut text = String::new();
        let collect = async {
            while let Some(Ok(chunk)) = logs.next().await {
                text.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(3), collect).await;
        if text.trim().is_empty() {
            "(empty)".to_string()
        } else {
            text
        }
    }
}

/// Docker-level faults on a node's container: the cluster's machine faults.
#[async_trait]
impl MachineFaultHost for Inner {
    fn machine_fault_table(&self) -> &MachineFaultTable {
        &self.machine_faults
    }

    /// Before pausing or disconnecting, the node's agent is told to expect no heartbeat for
    /// `ttl` (plus a margin), so it does not mistake the silence for a crashed runner.
    async fn apply_machine_fault(&self, node: &str, fault: MachineFault, ttl: Duration) -> Result<()> {
        let (container, client, _) = self.node_entry(node)?;
        let context = format!("node {node}: {fault} container {container}");
        match fault {
            MachineFault::Pause => {
                client.heartbeat_with_grace(ttl + FAULT_GRACE_MARGIN).await?;
                bounded(&context, self.docker.pause_container(&container)).await?;
            }
            MachineFault::Stop => {
                self.lock().held_down.insert(node.to_string());
                let options = StopContainerOptionsBuilder::new().t(2).build();
                if let Err(e) = bounded(&context, self.docker.stop_container(&container, Some(options))).await
                {
                    self.lock().held_down.remove(node);
                    return Err(e);
                }
            }
            MachineFault::Disconnect => {
                client.heartbeat_with_grace(ttl + FAULT_GRACE_MARGIN).await?;
                let request = NetworkDisconnectRequest {
                    container: container.clone(),
                    force: Some(true),
                };
                bounded(&context, self.docker.disconnect_network(&self.network, request)).await?;
            }
        }
        Ok(())
    }

    /// A stopped node is no longer held down afterwards, whatever the outcome (the supervisor
    /// takes over).
    async fn undo_machine_fault(&self, node: &str, fault: MachineFault) -> Result<()> {
        let undone = async {
            let (container, client, ip) = self.node_entry(node)?;
            let context = format!("node {node}: healing {fault} of container {container}");
            match fault {
                MachineFault::Pause => {
                    bounded(&context, self.docker.unpause_container(&container)).await?;
                }
                MachineFault::Stop => {
                    bounded(&context, self.docker.start_container(&container, None)).await?;
                }
                MachineFault::Disconnect => {
                    let request = NetworkConnectRequest {
                        container: container.clone(),
                        endpoint_config: Some(self.endpoint(node, ip)),
                    };
                    bounded(&context, self.docker.connect_network(&self.network, request)).await?;
                }
            }
            self.wait_ready(node, &container, &client).await
        }
        .await;
        if fault == MachineFault::Stop {
            self.lock().held_down.remove(node);
        }
        undone
    }
}

impl Drop for Inner {
    /// Best effort, blocking: removes whatever containers and network are left (a test that
    /// panicked before [`Cluster::cleanup`]). Runs on a thread of its own with its own runtime
    /// and connection, so it works whether or not a runtime is running here.
    fn drop(&mut self) {
        self.supervisor.stop_now();
        let cleaned = self.lock().cleaned;
        if cleaned {
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
    }
}

/// Removes every container labelled with cluster `id`, then the network `network`.
async fn remove_cluster_resources(docker: &Docker, id: &str, network: &str) -> Result<(), String> {
    let filters = HashMap::from([("label".to_string(), vec![format!("{LABEL_CLUSTER}={id}")])]);
    let list = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    let containers = bounded("listing containers", docker.list_containers(Some(list)))
        .await
        .map_err(|e| e.to_string())?;
    let mut errors = Vec::new();
    let removals = containers
        .iter()
        .filter_map(|c| c.id.clone())
        .map(|cid| async move {
            let options = RemoveContainerOptionsBuilder::new().force(true).v(true).build();
            bounded(
                format!("removing container {cid}"),
                docker.remove_container(&cid, Some(options)),
            )
            .await
        });
    for result in futures_util::future::join_all(removals).await {
        if let Err(e) = result {
            errors.push(e.to_string());
        }
    }
    match within(DAEMON_BOUND, docker.remove_network(network)).await {
        Ok(()) => {}
        Err(f) if f.status() == Some(404) => {}
        Err(f) => errors.push(f.describe(&format!("removing network {network}"))),
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

#[async_trait]
impl Cluster for DockerCluster {
    fn backend(&self) -> &'static str {
        "docker"
    }

    async fn create_nodes(&self, count: usize) -> Result<Vec<Arc<dyn Node>>> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let inner = &self.inner;
        let first = {
            let mut state = inner.lock();
            if state.cleaned {
                return Err(backend_error(format!(
                    "cluster {}: already cleaned up; create a new cluster",
                    inner.options.name
                )));
            }
            super::reserve_nodes(
                &mut state.next_node,
                count,
                MAX_NODES,
                "docker",
                &inner.options.name,
            )?
        };
        let bound = inner.options.node_ready_timeout + DAEMON_BOUND;
        let (made, first_error) =
            super::create_concurrently("docker", first, count, bound, |k| inner.clone().create_node(k)).await;
        let nodes: Vec<Arc<dyn Node>> = made.iter().map(|(node, _)| node.clone()).collect();
        {
            let mut state = inner.lock();
            // Even after a failure the made nodes are kept: cleanup removes them.
            state.nodes.extend(made.into_iter().map(|(_, entry)| entry));
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(nodes),
        }
    }

    async fn cleanup(&self) -> Result<()> {
        let inner = &self.inner;
        if inner.lock().cleaned {
            return Ok(());
        }
        // No restart may race the removal.
        inner.supervisor.stop().await;
        {
            let mut state = inner.lock();
            if state.cleaned {
                return Ok(());
            }
            state.cleaned = true;
        }
        let faults = inner.machine_faults.drain();
        let mut errors = Vec::new();
        // Unpause first: a paused agent cannot shut down gracefully, and removing a paused
        // container is refused by older daemons. Stopped and disconnected containers are simply
        // removed below.
        for fault in &faults {
            if fault.fault == MachineFault::Pause {
                let container = inner.container_name(&fault.node);
                let _ = bounded("unpausing", inner.docker.unpause_container(&container)).await;
            }
        }
        let nodes = std::mem::take(&mut inner.lock().nodes);
        // Graceful first: each agent kills its process trees and heals its own faults.
        let shutdowns = nodes.iter().map(|n| {
            let client = n.client.clone();
            async move {
                let _ = tokio::time::timeout(SHUTDOWN_BOUND, client.shutdown()).await;
            }
        });
        futures_util::future::join_all(shutdowns).await;
        drop(nodes);
        if let Err(e) = remove_cluster_resources(&inner.docker, &inner.id, &inner.network).await {
            errors.push(e);
        }
        if let Delivery::Bind { dir, path } = &inner.delivery
            && let Some(dir) = dir.lock().unwrap_or_else(|e| e.into_inner()).take()
            && let Err(e) = dir.close()
        {
            errors.push(format!("removing {}: {e}", path.display()));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(backend_error(format!(
                "cleaning up cluster {} ({}): {}",
                inner.options.name,
                inner.id,
                errors.join("; ")
            )))
        }
    }

    fn agent_events(&self) -> Option<tokio::sync::broadcast::Receiver<AgentEvent>> {
        Some(self.inner.supervisor.subscribe())
    }

    fn machine_faults(&self) -> Vec<MachineFault> {
        MachineFault::ALL.to_vec()
    }

    async fn inject_machine_fault(
        &self,
        node: &str,
        fault: MachineFault,
        ttl: Duration,
    ) -> Result<MachineFaultHandle> {
        machine::inject(&self.inner, node, fault, ttl).await
    }

    fn list_machine_faults(&self) -> Vec<MachineFaultInfo> {
        self.inner.machine_faults.list()
    }

    async fn heal_all_machine_faults(&self) -> Result<Vec<MachineFaultInfo>> {
        machine::heal_all(&*self.inner).await
    }
}

#[cfg(test)]
mod tests {
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
