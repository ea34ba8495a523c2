//! The `local` backend: every node is a set of processes on this host, with no isolation and no
//! agent.
//!
//! Each node gets its own root directory under one temporary directory per cluster; processes
//! start there by default, each in its own process group so it and its children can be signalled
//! and killed as one tree. The cluster kills every group it started and removes its directory on
//! [`Cluster::cleanup`] and, synchronously and best effort, when it is dropped — so a panicking
//! test leaks nothing.
//!
//! # What `local` cannot do
//!
//! Nodes are not isolated from each other or from the host:
//! - they share the host's network: every node's address is `127.0.0.1`, two nodes cannot listen
//!   on the same port, and network faults (partitions, delay, loss) cannot target one node;
//! - they share the filesystem, the process table and the user: only paths under
//!   [`Node::root_dir`] belong to a node, and tests must build every path from it;
//! - there is no agent, so there is no heartbeat: if the runner is killed with `SIGKILL`, the
//!   processes it started keep running.
//!
//! Tests that need any of this should use an isolating backend such as `netns`.
//!
//! (Why this file is long: `local` still implements `Node` itself — process table, restart,
//! the TTL'd pause registry — instead of running the agent on this host as a provisioner of
//! `AgentCluster`; that move, with an agent that refuses network faults there, is the planned
//! way to shrink it to a provisioner of ~150 lines. See `core/tests/provisioner.rs` for such a
//! provisioner.)
//!
//! # Faults on `local`
//!
//! Process faults work on processes the node started: pause ([`FreezeTarget::Proc`],
//! [`FreezeTarget::AllProcs`], or [`FreezeTarget::ProcessTree`] of such a process) by
//! SIGSTOP/SIGCONT of each process of the tree, with the TTL kept by a timer of the runner and
//! every pause lifted when the node stops; kill by process id or of every process; restart.
//!
//! What cannot work without isolation, and is refused with an `Unsupported` error:
//! - **network faults** (partition, loss, delay, packet effects, bandwidth, link): every node is
//!   `127.0.0.1` on the host's own network stack, so a rule cannot tell one node's packets from
//!   another's. Scoping rules by each node's ports would still catch the runner's and every
//!   other node's traffic to those ports (a "partition" of n1 from n2 would cut n1 from
//!   everyone), and it would mean adding firewall rules and qdiscs to the host itself — the one
//!   place this toolkit never touches. Use the `netns` backend;
//! - pausing a **cgroup**: local processes have no cgroup of their own;
//! - signalling processes **by pid, group or name**: the process table is the host's, so such a
//!   match could hit another node's or the host's processes.

use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, UNIX_EPOCH};

use async_trait::async_trait;
use chaos_proto::fault::{FaultInfo, FaultRequest, FaultSpec, FreezeTarget, Mechanism};
use chaos_proto::{
    DirEntry, ErrorKind, ExitStatus, FileStat, OutputSpec, ProcId, ProcSpec, ProcStarted, RestartRequest,
    Signal, SignalTarget, StdinSpec,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::backend::ClusterOptions;
use crate::cluster::{BoxStream, ByteReader, ByteWriter, Cluster, Node, Process, ProcessControl};
use crate::{Error, Result};

/// Size of the chunks files are moved in: large enough that a 1 GiB file is a few thousand
/// writes, small enough not to matter in memory.
const CHUNK: usize = 256 * 1024;

/// Bound on connecting to an address in [`Node::dial`].
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Bound on waiting for killed processes to be reaped when a node stops.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

const NAME: &str = "local";

/// The registry's entry for `local` ([`crate::backend::registry`]).
pub const BACKEND: crate::backend::Backend = crate::backend::Backend {
    name: NAME,
    summary: "processes on this host, no isolation, no agent",
    availability: || Ok(()),
    create: |options| Box::pin(async move { Ok(Arc::new(LocalCluster::new(options)?) as Arc<dyn Cluster>) }),
    collect_garbage: None,
    limits: crate::backend::Limits {
        max_nodes: 1000,
        provision_time: Duration::ZERO,
    },
    isolated_network: false,
    machine_faults: &[],
};

/// A cluster of local nodes: see the [module documentation](self).
pub struct LocalCluster {
    /// The cluster's temporary directory; `None` once cleaned up.
    dir: Mutex<Option<tempfile::TempDir>>,
    nodes: Mutex<Vec<Arc<LocalNode>>>,
    /// Number of nodes created so far, for naming (`n1`, `n2`, …).
    created: AtomicUsize,
}

impl LocalCluster {
    /// Creates an empty local cluster with its temporary directory.
    pub fn new(options: ClusterOptions) -> Result<Self> {
        // The label ends up in a path: keep only characters that cannot escape or confuse it.
        let label: String = options
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .take(40)
            .collect();
        let dir = tempfile::Builder::new()
            .prefix(&format!("chaos-local-{label}-"))
            .tempdir()
            .map_err(|e| Error::io("local backend: creating the cluster's temporary directory", e))?;
        tracing::debug!(dir = %dir.path().display(), "local cluster created");
        Ok(Self {
            dir: Mutex::new(Some(dir)),
            nodes: Mutex::new(Vec::new()),
            created: AtomicUsize::new(0),
        })
    }

    /// The cluster's temporary directory, under which every node's root directory lives; `None`
    /// after cleanup.
    pub fn dir(&self) -> Option<PathBuf> {
        lock(&self.dir).as_ref().map(|d| d.path().to_path_buf())
    }
}

#[async_trait]
impl Cluster for LocalCluster {
    fn backend(&self) -> &'static str {
        NAME
    }

    async fn create_nodes(&self, count: usize) -> Result<Vec<Arc<dyn Node>>> {
        let base = self
            .dir()
            .ok_or_else(|| Error::backend(NAME, "cannot create nodes: the cluster was already cleaned up"))?;
        let first = self.created.fetch_add(count, Ordering::SeqCst) + 1;
        let mut created = Vec::with_capacity(count);
        for n in first..first + count {
            let name = format!("n{n}");
            let root = base.join(&name);
            fs::create_dir(&root).map_err(|e| {
                Error::io(
                    format!("node {name}: creating root directory {}", root.display()),
                    e,
                )
            })?;
            let root_dir = root
                .to_str()
                .ok_or_else(|| Error::backend(NAME, format!("temporary directory {root:?} is not UTF-8")))?
                .to_string();
            created.push(Arc::new(LocalNode::new(name, root_dir)));
        }
        lock(&self.nodes).extend(created.iter().cloned());
        Ok(created.into_iter().map(|n| n as Arc<dyn Node>).collect())
    }

    async fn cleanup(&self) -> Result<()> {
        let nodes: Vec<_> = lock(&self.nodes).clone();
        let mut first_error = None;
        for node in nodes {
            if let Err(e) = node.stop().await {
                tracing::warn!("{e}");
                first_error.get_or_insert(e);
            }
        }
        let dir = lock(&self.dir).take();
        if let Some(dir) = dir {
            let path = dir.path().to_path_buf();
            let removed = tokio::task::spawn_blocking(move || dir.close()).await;
            match removed {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    first_error.get_or_insert(Error::io(
                        format!("local backend: removing {}", path.display()),
                        e,
                    ));
                }
                Err(e) => {
                    first_error
                        .get_or_insert(Error::backend(NAME, format!("removing {}: {e}", path.display())));
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        // Synchronous best effort, so that it also happens when a test panics: kill every process
        // group, then let the `TempDir` remove the directory.
        for node in lock(&self.nodes).iter() {
            node.heal_all_sync();
            node.kill_all_groups();
        }
        if let Some(dir) = lock(&self.dir).take()
            && let Err(e) = dir.close()
        {
            tracing::warn!("local backend: removing the cluster directory: {e}");
        }
    }
}

/// A process this node started, as remembered for signalling, stopping, restarting and cleanup.
struct Started {
    id: ProcId,
    pid: u32,
    spec: ProcSpec,
    exit: watch::Receiver<Option<ExitOutcome>>,
}

impl Started {
    fn running(&self) -> bool {
        self.exit.borrow().is_none()
    }
}

/// A pause installed by a local node: the processes it stopped (pid and start time, so a
/// reused pid is never continued), and the timer that heals it when its TTL ends.
struct LocalFault {
    info: FaultInfo,
    stopped: Vec<(i32, u64)>,
    timer: Option<tokio::task::AbortHandle>,
}

/// A node's active faults, shared with their TTL timers.
type LocalFaults = Arc<Mutex<std::collections::BTreeMap<String, LocalFault>>>;

/// Lifts a pause: removes it from `faults` and continues its processes. False when it was not
/// active. Synchronous, so `Drop` can call it.
fn heal_local(faults: &LocalFaults, id: &str) -> bool {
    let Some(fault) = lock(faults).remove(id) else {
        return false;
    };
    if let Some(timer) = fault.timer {
        timer.abort();
    }
    continue_tree(&fault.stopped);
    tracing::info!(id, "local fault healed");
    true
}

#[cfg(target_os = "linux")]
fn continue_tree(stopped: &[(i32, u64)]) {
    if let Err(e) = chaos_faults::process::continue_processes(stopped) {
        tracing::warn!("continuing paused processes: {e}");
    }
}

#[cfg(not(target_os = "linux"))]
fn continue_tree(_stopped: &[(i32, u64)]) {}

/// What the reaper saw: the status, or why waiting failed.
type ExitOutcome = std::result::Result<ExitStatus, String>;

/// A node of a [`LocalCluster`].
pub struct LocalNode {
    name: String,
    root_dir: String,
    addresses: Vec<IpAddr>,
    next_id: AtomicU64,
    /// Every process started and not yet cleaned up by [`Node::stop`].
    started: Mutex<Vec<Started>>,
    stopped: AtomicBool,
    faults: LocalFaults,
    next_fault: AtomicU64,
}

impl LocalNode {
    fn new(name: String, root_dir: String) -> Self {
        Self {
            name,
            root_dir,
            addresses: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            next_id: AtomicU64::new(1),
            started: Mutex::new(Vec::new()),
            stopped: AtomicBool::new(false),
            faults: LocalFaults::default(),
            next_fault: AtomicU64::new(1),
        }
    }

    /// Lifts every pause. Synchronous, for `Drop`.
    fn heal_all_sync(&self) -> Vec<String> {
        let ids: Vec<String> = lock(&self.faults).keys().cloned().collect();
        ids.into_iter()
            .filter(|id| heal_local(&self.faults, id))
            .collect()
    }

    /// Sends SIGKILL to every process group this node started. Synchronous, for `Drop`.
    fn kill_all_groups(&self) {
        for p in lock(&self.started).iter() {
            // Errors mean the group is already gone.
            let _ = send_signal(p.pid, libc::SIGKILL, true);
        }
    }

    fn api(&self, kind: ErrorKind, message: impl Into<String>) -> Error {
        Error::api(&self.name, kind, message)
    }

    /// Maps a filesystem error on `path` the way the agent does, so callers see the same kinds
    /// on every backend.
    fn fs_error(&self, what: &str, path: &Path, e: io::Error) -> Error {
        let kind = match e.kind() {
            io::ErrorKind::NotFound => ErrorKind::NotFound,
            io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
            io::ErrorKind::AlreadyExists | io::ErrorKind::DirectoryNotEmpty => ErrorKind::Conflict,
            io::ErrorKind::NotADirectory | io::ErrorKind::IsADirectory | io::ErrorKind::InvalidInput => {
                ErrorKind::InvalidRequest
            }
            _ => ErrorKind::Internal,
        };
        self.api(kind, format!("{what} {}: {e}", path.display()))
    }

    /// Node paths must be absolute, as on every backend.
    fn check_path<'a>(&self, path: &'a str) -> Result<&'a Path> {
        let p = Path::new(path);
        if p.is_absolute() {
            Ok(p)
        } else {
            Err(self.api(
                ErrorKind::InvalidRequest,
                format!("path {path:?} is not absolute; build node paths from the node's root_dir"),
            ))
        }
    }

    fn stdin(&self, spec: &StdinSpec) -> Result<Stdio> {
        Ok(match spec {
            StdinSpec::Pipe => Stdio::piped(),
            StdinSpec::Null => Stdio::null(),
            StdinSpec::File { path } => {
                let p = self.check_path(path)?;
                fs::File::open(p)
                    .map_err(|e| self.fs_error("opening stdin file", p, e))?
                    .into()
            }
        })
    }

    fn output(&self, spec: &OutputSpec) -> Result<Stdio> {
        Ok(match spec {
            OutputSpec::Pipe => Stdio::piped(),
            OutputSpec::Null => Stdio::null(),
            OutputSpec::File { path, append } => {
                let p = self.check_path(path)?;
                if let Some(parent) = p.parent() {
                    fs::create_dir_all(parent).map_err(|e| self.fs_error("creating directory", parent, e))?;
                }
                let file = fs::OpenOptions::new()
                    .create(true)
                    .write(true)
                    .append(*append)
                    .truncate(!*append)
                    .open(p)
                    .map_err(|e| self.fs_error("opening output file", p, e))?;
                file.into()
            }
        })
    }
}

#[async_trait]
impl Node for LocalNode {
    fn name(&self) -> &str {
        &self.name
    }

    fn addresses(&self) -> &[IpAddr] {
        &self.addresses
    }

    fn root_dir(&self) -> &str {
        &self.root_dir
    }

    async fn start(&self, spec: ProcSpec) -> Result<Process> {
        let cwd = match &spec.cwd {
            Some(cwd) => self.check_path(cwd)?,
            None => Path::new(&self.root_dir),
        };
        // Check the directory first: spawn reports a missing cwd and a missing command alike.
        if !cwd.is_dir() {
            return Err(self.api(
                ErrorKind::NotFound,
                format!(
                    "working directory {} does not exist (starting {})",
                    cwd.display(),
                    spec.command
                ),
            ));
        }
        let mut cmd = tokio::process::Command::new(&spec.command);
        cmd.args(&spec.args)
            .current_dir(cwd)
            .process_group(0)
            .kill_on_drop(false);
        if spec.env_clear {
            cmd.env_clear();
        }
        cmd.envs(&spec.env);
        cmd.stdin(self.stdin(&spec.stdin)?)
            .stdout(self.output(&spec.stdout)?)
            .stderr(self.output(&spec.stderr)?);

        // Checked and recorded under the lock, so `stop` never misses a process started meanwhile.
        let mut started = lock(&self.started);
        if self.stopped.load(Ordering::SeqCst) {
            return Err(self.api(
                ErrorKind::Conflict,
                format!("cannot start {}: the node was stopped", spec.command),
            ));
        }
        let spawned_at = Instant::now();
        let mut child = cmd.spawn().map_err(|e| match e.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied => self.api(
                ErrorKind::CommandNotFound,
                format!("command {:?} not found or not executable: {e}", spec.command),
            ),
            _ => self.api(ErrorKind::Internal, format!("starting {:?}: {e}", spec.command)),
        })?;
        let pid = child.id().ok_or_else(|| {
            self.api(
                ErrorKind::Internal,
                format!("{:?} exited before its pid was known", spec.command),
            )
        })?;
        let id: ProcId = self.next_id.fetch_add(1, Ordering::SeqCst);
        tracing::debug!(node = %self.name, id, pid, command = %spec.command, "process started");

        let stdin = child.stdin.take().map(|w| Box::pin(w) as ByteWriter);
        let stdout = child.stdout.take().map(|r| Box::pin(r) as ByteReader);
        let stderr = child.stderr.take().map(|r| Box::pin(r) as ByteReader);

        // The reaper owns the child and publishes its status once, for any number of waiters.
        let (exit_tx, exit_rx) = watch::channel(None);
        tokio::spawn(async move {
            let outcome = match child.wait().await {
                Ok(status) => Ok(ExitStatus {
                    code: status.code(),
                    signal: status.signal(),
                    duration_us: u64::try_from(spawned_at.elapsed().as_micros()).unwrap_or(u64::MAX),
                }),
                Err(e) => Err(format!("waiting for pid {pid}: {e}")),
            };
            let _ = exit_tx.send(Some(outcome));
        });
        started.push(Started {
            id,
            pid,
            spec: spec.clone(),
            exit: exit_rx.clone(),
        });
        drop(started);

        let control = Arc::new(LocalProcess {
            node: self.name.clone(),
            id,
            pid,
            exit: exit_rx,
        });
        Ok(Process::new(id, pid, stdin, stdout, stderr, control))
    }

    async fn send_file(&self, path: &str, mode: u32, mut data: ByteReader) -> Result<u64> {
        let target = self.check_path(path)?.to_path_buf();
        let parent = target
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .ok_or_else(|| self.api(ErrorKind::InvalidRequest, format!("{path:?} names no file")))?
            .to_path_buf();
        tokio::fs::create_dir_all(&parent)
            .await
            .map_err(|e| self.fs_error("creating directory", &parent, e))?;
        // Write next to the target and rename into place, so readers never see a partial file.
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let temp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".part")
            .tempfile_in(&parent)
            .map_err(|e| self.fs_error("creating a temporary file in", &parent, e))?;
        let (file, temp_path) = temp.into_parts();
        let mut file = tokio::fs::File::from_std(file);
        let mut buf = vec![0u8; CHUNK];
        let mut written = 0u64;
        loop {
            let n = data.read(&mut buf).await.map_err(|e| {
                Error::io(
                    format!("node {}: reading the data to send to {path}", self.name),
                    e,
                )
            })?;
            if n == 0 {
                break;
            }
            file.write_all(&buf[..n])
                .await
                .map_err(|e| self.fs_error("writing", &target, e))?;
            written += n as u64;
        }
        file.flush()
            .await
            .map_err(|e| self.fs_error("writing", &target, e))?;
        drop(file);
        tokio::fs::set_permissions(&temp_path, fs::Permissions::from_mode(mode & 0o7777))
            .await
            .map_err(|e| self.fs_error("setting permissions of", &target, e))?;
        temp_path
            .persist(&target)
            .map_err(|e| self.fs_error("renaming into", &target, e.error))?;
        Ok(written)
    }

    async fn read_file(&self, path: &str) -> Result<ByteReader> {
        let p = self.check_path(path)?;
        let file = tokio::fs::File::open(p)
            .await
            .map_err(|e| self.fs_error("opening", p, e))?;
        let meta = file
            .metadata()
            .await
            .map_err(|e| self.fs_error("reading", p, e))?;
        if meta.is_dir() {
            return Err(self.api(
                ErrorKind::InvalidRequest,
                format!("{path} is a directory, not a file"),
            ));
        }
        // Each read of a tokio file is a trip to the blocking pool: read in large chunks.
        Ok(Box::pin(BufReader::with_capacity(CHUNK, file)))
    }

    async fn stat(&self, path: &str) -> Result<FileStat> {
        let p = self.check_path(path)?;
        let meta = tokio::fs::symlink_metadata(p)
            .await
            .map_err(|e| self.fs_error("stat", p, e))?;
        Ok(FileStat::from(&meta))
    }

    async fn list_dir(&self, path: &str) -> Result<Vec<DirEntry>> {
        let p = self.check_path(path)?;
        let mut dir = tokio::fs::read_dir(p)
            .await
            .map_err(|e| self.fs_error("listing", p, e))?;
        let mut entries = Vec::new();
        while let Some(entry) = dir
            .next_entry()
            .await
            .map_err(|e| self.fs_error("listing", p, e))?
        {
            // An entry removed while listing is simply not listed.
            let Ok(meta) = tokio::fs::symlink_metadata(entry.path()).await else {
                continue;
            };
            entries.push(DirEntry {
                name: entry.file_name().to_string_lossy().into_owned(),
                stat: FileStat::from(&meta),
            });
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    async fn remove(&self, path: &str, recursive: bool) -> Result<()> {
        let p = self.check_path(path)?;
        let meta = tokio::fs::symlink_metadata(p)
            .await
            .map_err(|e| self.fs_error("removing", p, e))?;
        let removed = if !meta.is_dir() {
            tokio::fs::remove_file(p).await
        } else if recursive {
            tokio::fs::remove_dir_all(p).await
        } else {
            tokio::fs::remove_dir(p).await
        };
        removed.map_err(|e| match e.kind() {
            io::ErrorKind::DirectoryNotEmpty => self.api(
                ErrorKind::Conflict,
                format!("removing {path}: directory not empty (remove it with recursive = true)"),
            ),
            _ => self.fs_error("removing", p, e),
        })
    }

    async fn dial(&self, addr: &str) -> Result<BoxStream> {
        // Same error kind as the agent's proxy, so callers can retry on `Unreachable` everywhere.
        let unreachable =
            |cause: String| self.api(ErrorKind::Unreachable, format!("dialing {addr}: {cause}"));
        let stream = tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| unreachable(format!("no connection within {DIAL_TIMEOUT:?}")))?
            .map_err(|e| unreachable(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        Ok(Box::new(stream))
    }

    async fn stop(&self) -> Result<()> {
        // Continue paused processes first: a stopped process outside its group would otherwise
        // stay stopped forever.
        self.heal_all_sync();
        let started = {
            let mut guard = lock(&self.started);
            self.stopped.store(true, Ordering::SeqCst);
            std::mem::take(&mut *guard)
        };
        for p in &started {
            let _ = send_signal(p.pid, libc::SIGKILL, true);
        }
        let reaped = async {
            for p in &started {
                let mut exit = p.exit.clone();
                // A closed channel means the reaper is gone (runtime shut down): nothing to wait for.
                let _ = exit.wait_for(Option::is_some).await;
            }
        };
        tokio::time::timeout(STOP_TIMEOUT, reaped)
            .await
            .map_err(|_| Error::Timeout {
                node: self.name.clone(),
                what: format!("stopping: reaping {} killed process groups", started.len()),
                after: STOP_TIMEOUT,
            })
    }

    async fn inject_fault(&self, request: FaultRequest) -> Result<FaultInfo> {
        let FaultSpec::Freeze(target) = &request.spec else {
            return Err(self.api(
                ErrorKind::Unsupported,
                format!(
                    "the local backend cannot inject {} faults: local nodes share the host's network \
                     stack (every node is 127.0.0.1), so no rule can tell one node's packets from \
                     another's, and this backend never changes the host's firewall or qdiscs; use \
                     the netns backend",
                    request.spec.kind()
                ),
            ));
        };
        if request.ttl_ms == 0 {
            return Err(self.api(
                ErrorKind::InvalidRequest,
                "ttl_ms must be greater than zero: every fault heals by itself after its TTL",
            ));
        }
        let id = match &request.id {
            Some(id) => id.clone(),
            None => format!("local-fault-{}", self.next_fault.fetch_add(1, Ordering::SeqCst)),
        };
        if let Err(message) = chaos_proto::validate_fault_id(&id) {
            return Err(self.api(ErrorKind::InvalidRequest, message));
        }
        if lock(&self.faults).contains_key(&id) {
            return Err(self.api(
                ErrorKind::Conflict,
                format!("fault {id:?} is already active; heal it first or use another id"),
            ));
        }
        let roots = self.freeze_roots(target)?;
        let stopped = self.stop_trees(&roots)?;
        let injected_ms = unix_ms();
        let info = FaultInfo {
            id: id.clone(),
            spec: request.spec.clone(),
            mechanism: Mechanism::SigStopTree,
            injected_ms,
            expires_ms: injected_ms.saturating_add(request.ttl_ms),
            heal_error: None,
            heal_attempts: 0,
        };
        let faults = self.faults.clone();
        let ttl = Duration::from_millis(request.ttl_ms);
        let timer_id = id.clone();
        let timer = tokio::spawn(async move {
            tokio::time::sleep(ttl).await;
            heal_local(&faults, &timer_id);
        });
        lock(&self.faults).insert(
            id.clone(),
            LocalFault {
                info: info.clone(),
                stopped,
                timer: Some(timer.abort_handle()),
            },
        );
        tracing::info!(node = %self.name, id, "processes paused");
        Ok(info)
    }

    async fn heal_fault(&self, id: &str) -> Result<bool> {
        Ok(heal_local(&self.faults, id))
    }

    async fn list_faults(&self) -> Result<Vec<FaultInfo>> {
        Ok(lock(&self.faults).values().map(|f| f.info.clone()).collect())
    }

    async fn heal_all_faults(&self) -> Result<Vec<String>> {
        Ok(self.heal_all_sync())
    }

    async fn signal_proc(&self, id: ProcId, signal: Signal, group: bool) -> Result<()> {
        let (pid, exit) = {
            let started = lock(&self.started);
            let p = started.iter().find(|p| p.id == id).ok_or_else(|| {
                self.api(
                    ErrorKind::NotFound,
                    format!("no process with id {id} was started on this node"),
                )
            })?;
            (p.pid, p.exit.clone())
        };
        let control = LocalProcess {
            node: self.name.clone(),
            id,
            pid,
            exit,
        };
        control.signal(signal, group).await
    }

    async fn kill_all(&self, signal: Signal) -> Result<Vec<ProcId>> {
        if !(1..=64).contains(&signal.0) {
            return Err(self.api(
                ErrorKind::InvalidRequest,
                format!("{signal} is not a signal number from 1 to 64"),
            ));
        }
        let running: Vec<(ProcId, u32)> = lock(&self.started)
            .iter()
            .filter(|p| p.running())
            .map(|p| (p.id, p.pid))
            .collect();
        let mut signalled = Vec::new();
        for (id, pid) in running {
            if send_signal(pid, signal.0, true).is_ok() {
                signalled.push(id);
            }
        }
        Ok(signalled)
    }

    async fn signal_target(&self, signal: Signal, target: SignalTarget) -> Result<Vec<u32>> {
        Err(self.api(
            ErrorKind::Unsupported,
            format!(
                "the local backend cannot send {signal} to processes matched by {target:?}: local \
                 nodes share the host's process table, so the match could hit another node's or the \
                 host's processes; signal a process started on the node by its id instead"
            ),
        ))
    }

    async fn restart_proc(&self, id: ProcId, request: RestartRequest) -> Result<ProcStarted> {
        if request.grace_ms > RestartRequest::MAX_GRACE_MS {
            return Err(self.api(
                ErrorKind::InvalidRequest,
                format!(
                    "grace_ms {} is above the limit of {}",
                    request.grace_ms,
                    RestartRequest::MAX_GRACE_MS
                ),
            ));
        }
        let (pid, mut exit, mut spec) = {
            let started = lock(&self.started);
            let p = started.iter().find(|p| p.id == id).ok_or_else(|| {
                self.api(
                    ErrorKind::NotFound,
                    format!("no process with id {id} was started on this node"),
                )
            })?;
            (p.pid, p.exit.clone(), p.spec.clone())
        };
        // Ask, wait the grace period, then make sure: the whole group goes either way.
        let _ = send_signal(pid, request.signal.0, true);
        let grace = Duration::from_millis(request.grace_ms);
        if tokio::time::timeout(grace, exit.wait_for(Option::is_some))
            .await
            .is_err()
        {
            let _ = send_signal(pid, libc::SIGKILL, true);
            let _ = tokio::time::timeout(STOP_TIMEOUT, exit.wait_for(Option::is_some)).await;
        }
        let _ = send_signal(pid, libc::SIGKILL, true);
        // The original's pipes went to its caller; the new process has nobody to stream to.
        if spec.stdin == StdinSpec::Pipe {
            spec.stdin = StdinSpec::Null;
        }
        for out in [&mut spec.stdout, &mut spec.stderr] {
            if *out == OutputSpec::Pipe {
                *out = OutputSpec::Null;
            }
        }
        let process = self.start(spec).await?;
        Ok(ProcStarted {
            id: process.id,
            pid: process.pid,
        })
    }
}

impl LocalNode {
    /// The root pids a freeze of `target` stops (each with its descendants).
    fn freeze_roots(&self, target: &FreezeTarget) -> Result<Vec<u32>> {
        let started = lock(&self.started);
        let running = || started.iter().filter(|p| p.running());
        let roots: Vec<u32> = match target {
            FreezeTarget::Proc { id } => {
                let p = started.iter().find(|p| p.id == *id).ok_or_else(|| {
                    self.api(
                        ErrorKind::NotFound,
                        format!("no process with id {id} was started on this node"),
                    )
                })?;
                if !p.running() {
                    return Err(self.api(
                        ErrorKind::NotFound,
                        format!("process {id} (pid {}) has already exited", p.pid),
                    ));
                }
                vec![p.pid]
            }
            FreezeTarget::AllProcs => running().map(|p| p.pid).collect(),
            FreezeTarget::ProcessTree { pid } => {
                if !running().any(|p| i64::from(p.pid) == i64::from(*pid)) {
                    return Err(self.api(
                        ErrorKind::PermissionDenied,
                        format!(
                            "pid {pid} is not a running process started on this node; local nodes \
                             share the host's process table, so only their own processes may be paused"
                        ),
                    ));
                }
                vec![*pid as u32]
            }
            FreezeTarget::Cgroup { path } => {
                return Err(self.api(
                    ErrorKind::Unsupported,
                    format!(
                        "the local backend cannot freeze cgroup {path}: its processes have no cgroup \
                         of their own; pause a process (proc) or all of them instead"
                    ),
                ));
            }
        };
        Ok(roots)
    }

    /// SIGSTOPs each root and its descendants; returns what was stopped.
    #[cfg(target_os = "linux")]
    fn stop_trees(&self, roots: &[u32]) -> Result<Vec<(i32, u64)>> {
        use chaos_faults::process;
        let mut stopped: Vec<(i32, u64)> = Vec::new();
        for &root in roots {
            let root = i32::try_from(root).unwrap_or(i32::MAX);
            // A root that exited meanwhile has nothing left to stop.
            let Ok(tree) = process::tree(root) else {
                continue;
            };
            for entry in tree {
                if !stopped.contains(&entry) {
                    stopped.push(entry);
                }
            }
        }
        if let Err(e) = process::stop_processes(&stopped) {
            continue_tree(&stopped);
            return Err(self.api(ErrorKind::Internal, format!("pausing processes: {e}")));
        }
        Ok(stopped)
    }

    #[cfg(not(target_os = "linux"))]
    fn stop_trees(&self, _roots: &[u32]) -> Result<Vec<(i32, u64)>> {
        Err(self.api(
            ErrorKind::Unsupported,
            "pausing a process tree needs Linux's /proc to find the tree",
        ))
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// [`ProcessControl`] of a local process: waits on the reaper's status channel and signals by pid.
struct LocalProcess {
    node: String,
    id: ProcId,
    pid: u32,
    exit: watch::Receiver<Option<ExitOutcome>>,
}

impl LocalProcess {
    fn exited(&self) -> bool {
        self.exit.borrow().is_some()
    }
}

#[async_trait]
impl ProcessControl for LocalProcess {
    async fn wait(&self) -> Result<ExitStatus> {
        let mut exit = self.exit.clone();
        let lost = || {
            Error::backend(
                NAME,
                format!(
                    "node {}: lost track of process {} (pid {}): its reaper task ended, \
                     probably because the tokio runtime that started it shut down",
                    self.node, self.id, self.pid
                ),
            )
        };
        let outcome = exit.wait_for(Option::is_some).await.map_err(|_| lost())?.clone();
        match outcome {
            Some(Ok(status)) => Ok(status),
            Some(Err(message)) => Err(Error::api(&self.node, ErrorKind::Internal, message)),
            None => Err(lost()),
        }
    }

    async fn signal(&self, signal: Signal, group: bool) -> Result<()> {
        if !(1..=64).contains(&signal.0) {
            return Err(Error::api(
                &self.node,
                ErrorKind::InvalidRequest,
                format!("{signal} is not a signal number from 1 to 64"),
            ));
        }
        // Once the leader is reaped its pid may be reused: only its group (which keeps the id
        // reserved while it has members) may still be signalled.
        if !group && self.exited() {
            return Err(Error::api(
                &self.node,
                ErrorKind::NotFound,
                format!("process {} (pid {}) has already exited", self.id, self.pid),
            ));
        }
        send_signal(self.pid, signal.0, group).map_err(|e| {
            let target = if group { "process group" } else { "process" };
            let kind = if e == nix::errno::Errno::ESRCH {
                ErrorKind::NotFound
            } else {
                ErrorKind::Internal
            };
            Error::api(
                &self.node,
                kind,
                format!("sending {signal} to {target} {}: {}", self.pid, e.desc()),
            )
        })
    }
}

/// Sends signal number `signal` to `pid`, or to the process group `pid` leads.
///
/// Raw numbers rather than `nix::sys::signal::Signal`, which cannot name real-time signals.
fn send_signal(pid: u32, signal: i32, group: bool) -> std::result::Result<(), nix::errno::Errno> {
    let pid = i32::try_from(pid).map_err(|_| nix::errno::Errno::ESRCH)?;
    // pid 0 and 1 (and so groups 0 and -1) would signal the caller's group or every process.
    if pid <= 1 {
        return Err(nix::errno::Errno::ESRCH);
    }
    let target = if group { -pid } else { pid };
    // SAFETY: kill(2) takes two integers and touches no memory of ours; `target` is never 0 or
    // -1 (checked above), so it addresses exactly one process or process group.
    let rc = unsafe { libc::kill(target, signal) };
    if rc == 0 {
        Ok(())
    } else {
        Err(nix::errno::Errno::last())
    }
}

/// Locks `m`, recovering from poisoning: the protected lists stay consistent even if a holder
/// panicked, and cleanup must still run.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
