//! The minimal backend traits: a [`Cluster`] makes [`Node`]s; a node runs processes, moves
//! files and dials addresses.
//!
//! These traits are deliberately small — a new backend implements only what differs between
//! backends. Everything built from these primitives (run-and-collect-output, timeouts, byte
//! helpers) lives once in [`crate::ext`], never per backend. Backends that run the node agent
//! (netns, Docker, EC2, bare metal) implement [`Node`] once, by forwarding to
//! [`crate::agent_client`]; only `local` implements it directly.

use std::fmt;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use chaos_proto::{DirEntry, ExitStatus, FileStat, ProcId, ProcSpec, Signal};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::Result;

/// A boxed byte source (file contents, process output).
pub type ByteReader = Pin<Box<dyn AsyncRead + Send>>;
/// A boxed byte sink (process input).
pub type ByteWriter = Pin<Box<dyn AsyncWrite + Send>>;

/// A bidirectional byte stream, such as a TCP connection proxied through a node.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// A boxed [`Stream`].
pub type BoxStream = Box<dyn Stream>;

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
}

impl fmt::Debug for dyn Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node").field("name", &self.name()).field("addresses", &self.addresses()).finish()
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
        Self { id, pid, stdin, stdout, stderr, control }
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
        f.debug_struct("Process").field("id", &self.id).field("pid", &self.pid).finish_non_exhaustive()
    }
}
