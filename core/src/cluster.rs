//! The minimal backend traits: a [`Cluster`] makes [`Node`]s; a node runs processes, moves
//! files and dials addresses.
//!
//! These traits are deliberately small — a new backend implements only what differs between
//! backends. Everything built from these primitives (run-and-collect-output, timeouts, byte
//! helpers) lives once in [`crate::ext`], never per backend. Backends that run the node agent
//! (every registered backend: local, netns, Docker) implement [`Node`] once, by forwarding to
//! [`crate::agent_client`] ([`crate::backend::AgentCluster`]).

use std::fmt;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chaos_proto::fault::{FaultInfo, FaultRequest, ProbeReport};
use chaos_proto::{
    DirEntry, ErrorKind, ExitStatus, FileStat, ProcId, ProcSpec, ProcStarted, RestartRequest, Signal,
    SignalTarget,
};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::backend::supervisor::AgentEvent;
use crate::machine::{MachineFault, MachineFaultHandle, MachineFaultInfo};
use crate::{Error, Result};

/// A boxed byte source (file contents, process output).
pub type ByteReader = Pin<Box<dyn AsyncRead + Send>>;
/// A boxed byte sink (process input).
pub type ByteWriter = Pin<Box<dyn AsyncWrite + Send>>;

/// A bidirectional byte stream, such as a TCP connection proxied through a node.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// A boxed [`Stream`].
pub type BoxStream = Box<dyn Stream>;

/// A node's root directory kept at cleanup for the user to look at ([`Cluster::run_failed`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeptDir {
    /// The node whose root directory it was.
    pub node: String,
    /// The machine it is on: `this machine`, or an inventory host and its address.
    pub host: String,
    /// Its absolute path on that machine.
    pub path: String,
}

/// A set of nodes on one backend.
///
/// Dropping a cluster cleans it up on a best-effort basis (synchronously, so it also happens when
/// a test panics); call [`Cluster::cleanup`] to clean up and see errors.
#[async_trait]
pub trait Cluster: Send + Sync {
    /// The backend's name (`"local"`, `"netns"`, …).
    fn backend(&self) -> &'static str;

    /// Creates `count` new nodes, concurrently, and returns them once all are ready to use.
    /// Nodes are named `n1`, `n2`, … in creation order across calls.
    async fn create_nodes(&self, count: usize) -> Result<Vec<Arc<dyn Node>>>;

    /// Stops every node and releases every resource the cluster holds (processes, namespaces,
    /// links, cgroups, temporary directories). Idempotent.
    async fn cleanup(&self) -> Result<()>;

    /// What the cluster's agent supervisor sees and does from now on (an agent died, was
    /// restarted, a node was given up: [`AgentEvent`]), for backends that run agents; `None` for
    /// backends without agents. See [`crate::backend::supervisor`].
    fn agent_events(&self) -> Option<tokio::sync::broadcast::Receiver<AgentEvent>> {
        None
    }

    /// The CA certificate (PEM) and runner identity another process needs to drive this
    /// cluster's agents (`chaos up` writes them for `chaos exec`); `None` without agents.
    fn agent_access(&self) -> Option<(&str, &crate::certs::Identity)> {
        None
    }

    /// Where the runner reaches `node`'s agent; `None` without agents or for an unknown node.
    fn agent_address(&self, node: &str) -> Option<std::net::SocketAddr> {
        let _ = node;
        None
    }

    /// Facts about the cluster worth showing (its index, network, state file…), by name.
    fn describe(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }

    /// Tells the cluster, before [`Cluster::cleanup`], that the run failed. A cluster asked to
    /// keep failed runs ([`crate::backend::ClusterOptions::keep_failed_runs`], or its backend's
    /// own configuration, such as the `hosts` inventory's `keep_failed_runs`) keeps each node's
    /// root directory at cleanup — processes are still killed and faults healed — and returns
    /// where they are; empty when nothing is kept (not asked, or a backend that cannot).
    fn run_failed(&self) -> Vec<KeptDir> {
        Vec::new()
    }

    // Machine faults: what the backend can do to a node's whole machine from outside it
    // (`crate::machine`). Defaults: a backend that offers none.

    /// The machine faults this cluster offers (empty when none).
    fn machine_faults(&self) -> Vec<MachineFault> {
        Vec::new()
    }

    /// Injects `fault` on `node`'s machine for at most `ttl`; it heals by itself then. Fails
    /// with `Unsupported` when the cluster does not offer `fault` ([`Cluster::machine_faults`]).
    async fn inject_machine_fault(
        &self,
        node: &str,
        fault: MachineFault,
        ttl: Duration,
    ) -> Result<MachineFaultHandle> {
        let _ = ttl;
        Err(Error::api(
            node,
            ErrorKind::Unsupported,
            format!(
                "the {} backend offers no {fault} machine fault (it offers: {})",
                self.backend(),
                names(&self.machine_faults())
            ),
        ))
    }

    /// The active machine faults.
    fn list_machine_faults(&self) -> Vec<MachineFaultInfo> {
        Vec::new()
    }

    /// Heals every active machine fault; returns those healed.
    async fn heal_all_machine_faults(&self) -> Result<Vec<MachineFaultInfo>> {
        Ok(Vec::new())
    }
}

/// `a, b` or `none`.
fn names(faults: &[MachineFault]) -> String {
    if faults.is_empty() {
        return "none".to_string();
    }
    faults
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// One node of a cluster: a place to run processes, with files and a network position.
#[async_trait]
pub trait Node: Send + Sync {
    /// The node's name, unique in its cluster (`n1`, `n2`, …).
    fn name(&self) -> &str;

    /// Addresses at which other nodes of the cluster reach this node.
    fn addresses(&self) -> &[IpAddr];

    /// A directory on the node that belongs to this node alone; paths in tests should be built
    /// from it, since the layout differs between backends.
    fn root_dir(&self) -> &str;

    /// The node's network interfaces on the cluster network, the main one first, as its backend
    /// reported them; empty when the node has none of its own (`local`). Faults acting on an
    /// interface default to the first — never to an assumed name.
    fn interfaces(&self) -> &[String] {
        &[]
    }

    /// Starts a process. Piped stdio is available on the returned [`Process`].
    async fn start(&self, spec: ProcSpec) -> Result<Process>;

    /// Writes `data` to `path` on the node (parents created, permissions `mode`), streaming it.
    /// Returns the number of bytes written.
    async fn send_file(&self, path: &str, mode: u32, data: ByteReader) -> Result<u64>;

    /// Streams the file at `path` from the node.
    async fn read_file(&self, path: &str) -> Result<ByteReader>;

    /// Metadata of `path` on the node.
    async fn stat(&self, path: &str) -> Result<FileStat>;

    /// Entries of the directory `path` on the node.
    async fn list_dir(&self, path: &str) -> Result<Vec<DirEntry>>;

    /// Removes a file, or a directory (with `recursive` when not empty).
    async fn remove(&self, path: &str, recursive: bool) -> Result<()>;

    /// Opens a TCP connection from the node to `addr` (`HOST:PORT`), e.g. to a service on the
    /// node's loopback that the runner cannot reach directly.
    async fn dial(&self, addr: &str) -> Result<BoxStream>;

    /// Stops the node: kills every process it started and releases it. Idempotent.
    async fn stop(&self) -> Result<()>;

    // Faults. Defaults let a backend without fault support compile unchanged: injecting fails
    // with `Unsupported`, and such a node has no faults to list or heal. Most callers use
    // `crate::faults`, which resolves node names and builds the requests.

    /// Installs a fault on the node until healed or until `request.ttl_ms` passes.
    async fn inject_fault(&self, request: FaultRequest) -> Result<FaultInfo> {
        Err(unsupported(
            self.name(),
            format!("inject {} faults", request.spec.kind()),
        ))
    }

    /// Heals fault `id`; false when it was not active (healed, expired, unknown). Idempotent.
    async fn heal_fault(&self, id: &str) -> Result<bool> {
        let _ = id;
        Ok(false)
    }

    /// The faults active on the node.
    async fn list_faults(&self) -> Result<Vec<FaultInfo>> {
        Ok(Vec::new())
    }

    /// Heals every fault on the node; returns the ids healed.
    async fn heal_all_faults(&self) -> Result<Vec<String>> {
        Ok(Vec::new())
    }

    /// What fault kinds and mechanisms the node supports.
    async fn probe(&self) -> Result<ProbeReport> {
        Err(unsupported(self.name(), "probe for fault support".to_string()))
    }

    /// Sends `signal` to process `id` started through this node, or to its process group.
    async fn signal_proc(&self, id: ProcId, signal: Signal, group: bool) -> Result<()> {
        let _ = (id, group);
        Err(unsupported(self.name(), format!("send {signal} by process id")))
    }

    /// Node-level crash: sends `signal` to every process tree started through this node that
    /// still runs; returns their ids.
    async fn kill_all(&self, signal: Signal) -> Result<Vec<ProcId>> {
        Err(unsupported(
            self.name(),
            format!("send {signal} to every process of the node"),
        ))
    }

    /// Sends `signal` to any process of the node matched by pid, process group or name;
    /// returns the pids signalled.
    async fn signal_target(&self, signal: Signal, target: SignalTarget) -> Result<Vec<u32>> {
        Err(unsupported(
            self.name(),
            format!("send {signal} to processes matched by {target:?}"),
        ))
    }

    /// Stops process `id` (signal, grace, SIGKILL) and starts its spec again under a new id.
    async fn restart_proc(&self, id: ProcId, request: RestartRequest) -> Result<ProcStarted> {
        let _ = request;
        Err(unsupported(self.name(), format!("restart process {id}")))
    }

    // The built-in measurement; most callers use `crate::net::measure`.

    /// Starts a measurement server (TCP sink, UDP echo/sink) on the node for `request.ttl_ms`.
    async fn measure_serve(
        &self,
        request: chaos_proto::measure::MeasureServe,
    ) -> Result<chaos_proto::measure::MeasureServing> {
        let _ = request;
        Err(unsupported(
            self.name(),
            "serve a network measurement".to_string(),
        ))
    }

    /// Measures throughput, RTT and loss from the node towards a measurement server.
    async fn measure_run(
        &self,
        request: chaos_proto::measure::MeasureRun,
    ) -> Result<chaos_proto::measure::MeasureReport> {
        Err(unsupported(
            self.name(),
            format!("measure towards {}", request.target),
        ))
    }
}

/// The error of a fault operation a node's backend does not implement.
fn unsupported(node: &str, what: String) -> Error {
    Error::api(
        node,
        ErrorKind::Unsupported,
        format!(
            "this node's backend cannot {what}: it has no fault support; use a backend whose nodes \
             run the agent (netns)"
        ),
    )
}

impl fmt::Debug for dyn Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("name", &self.name())
            .field("addresses", &self.addresses())
            .finish()
    }
}

/// Control over a started process, implemented per backend.
#[async_trait]
pub trait ProcessControl: Send + Sync {
    /// Waits for the process to exit. May be called again (and concurrently) after it returns.
    async fn wait(&self) -> Result<ExitStatus>;

    /// Sends `signal` to the process, or to its whole process group.
    async fn signal(&self, signal: Signal, group: bool) -> Result<()>;
}

/// A process started on a node.
///
/// Piped stdio handles are public fields: take them (`process.stdout.take()`) to stream.
/// Dropping the stdin writer closes the process's stdin. Dropping the `Process` does not kill
/// the process; the node kills everything it started when it stops.
pub struct Process {
    /// The node-assigned id.
    pub id: ProcId,
    /// The OS process id on the node (also its process group id).
    pub pid: u32,
    /// The process's stdin, when its spec asked for `pipe`.
    pub stdin: Option<ByteWriter>,
    /// The process's stdout, when piped.
    pub stdout: Option<ByteReader>,
    /// The process's stderr, when piped.
    pub stderr: Option<ByteReader>,
    control: Arc<dyn ProcessControl>,
}

impl Process {
    /// Assembles a process handle; backends call this.
    pub fn new(
        id: ProcId,
        pid: u32,
        stdin: Option<ByteWriter>,
        stdout: Option<ByteReader>,
        stderr: Option<ByteReader>,
        control: Arc<dyn ProcessControl>,
    ) -> Self {
        Self {
            id,
            pid,
            stdin,
            stdout,
            stderr,
            control,
        }
    }

    /// Waits for the process to exit.
    pub async fn wait(&self) -> Result<ExitStatus> {
        self.control.wait().await
    }

    /// Sends `signal` to the process only.
    pub async fn signal(&self, signal: Signal) -> Result<()> {
        self.control.signal(signal, false).await
    }

    /// Sends `signal` to the process's whole process group (it and its children).
    pub async fn signal_group(&self, signal: Signal) -> Result<()> {
        self.control.signal(signal, true).await
    }

    /// A cloneable handle for waiting on and signalling the process from elsewhere.
    pub fn control(&self) -> Arc<dyn ProcessControl> {
        self.control.clone()
    }
}

impl fmt::Debug for Process {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Process")
            .field("id", &self.id)
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}
