//! The process table: starting processes in their own process group (and cgroup), reaping
//! them, signalling them, and killing every tree on shutdown; which processes are the node's
//! (`node`), adopted orphans (`orphans`) and how much of the table is kept and listed
//! (`retain`).

mod node;
mod orphans;
mod retain;
mod stdio;
mod tree;

use std::collections::{BTreeMap, HashSet};
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use chaos_proto::{
    ApiError, ErrorKind, ExitStatus, OutputSpec, PROCS_TOTAL_HEADER, ProcId, ProcInfo, ProcSpec, Signal,
    StdinSpec,
};
use tokio::process::{ChildStderr, ChildStdin, ChildStdout, Command};
use tokio::sync::watch;
use tokio::task::AbortHandle;

use self::stdio::{enlarge_pipe, exit_status, output_stdio, spawn_error, stdin_stdio};
use self::tree::{cgroup_pids, kill_tree, live_groups, remove_cgroup, send_signal, signal_tree};

pub(crate) use node::{Membership, NodeScope};

/// Pipe buffer size asked for stdout/stderr pipes: a fast writer then fills large chunks
/// before the agent reads, so each read (and each WebSocket frame) moves more bytes.
const PIPE_SIZE: i32 = 1 << 20;

/// errno the child reports when it could not move itself into its cgroup. execve never
/// returns it, so the parent can tell this failure from a missing command.
const CGROUP_MOVE_FAILED: i32 = libc::EREMCHG;

/// How long kill-all waits for killed processes to be reaped and their cgroups to empty.
const KILL_GRACE: Duration = Duration::from_secs(2);

/// One process the agent started.
pub(crate) struct ProcEntry {
    pub(crate) id: ProcId,
    pub(crate) pid: u32,
    spec: ProcSpec,
    started_ms: u64,
    exit: watch::Receiver<Option<ExitStatus>>,
    cgroup: Option<PathBuf>,
    /// Set once a restart took this process over, so two restarts cannot both start a copy.
    restarted: AtomicBool,
    /// Set once its exit status was delivered to a client (a `wait` that returned it, an exec
    /// stream that reported it): such entries are pruned first.
    collected: AtomicBool,
    /// [`ProcSpec::size`] of its spec, for the retention budget.
    spec_bytes: usize,
}

impl ProcEntry {
    /// A receiver that sees the exit status once the reaper recorded it.
    pub(crate) fn exit_watch(&self) -> watch::Receiver<Option<ExitStatus>> {
        self.exit.clone()
    }

    /// Call when an exec stream of this process has ended: if the process has exited, its
    /// status was streamed, and the entry is among the first pruned.
    pub(crate) fn stream_ended(&self) {
        if self.exit().is_some() {
            self.collected.store(true, Ordering::Relaxed);
        }
    }

    fn exit(&self) -> Option<ExitStatus> {
        *self.exit.borrow()
    }

    fn info(&self) -> ProcInfo {
        ProcInfo {
            id: self.id,
            pid: self.pid,
            spec: self.spec.clone(),
            started_ms: self.started_ms,
            exit: self.exit(),
        }
    }
}

/// What a freeze of one started process acts on.
pub(crate) struct FreezeTarget {
    /// Its pid (the root of its tree).
    pub(crate) pid: u32,
    /// Its cgroup, when the agent has one.
    pub(crate) cgroup: Option<PathBuf>,
}

/// A freshly started process and the pipe ends the agent holds.
pub(crate) struct Spawned {
    pub(crate) entry: Arc<ProcEntry>,
    pub(crate) stdin: Option<ChildStdin>,
    pub(crate) stdout: Option<ChildStdout>,
    pub(crate) stderr: Option<ChildStderr>,
}

#[derive(Default)]
struct Table {
    entries: BTreeMap<ProcId, Arc<ProcEntry>>,
    /// Set by the final kill-all: processes started afterwards are killed at once.
    closed: bool,
}

impl Table {
    /// Drops exited entries beyond the retention limits (see `retain`).
    fn prune(&mut self) {
        let exited: Vec<retain::Exited> = self
            .entries
            .values()
            .filter(|e| e.exit().is_some())
            .map(|e| retain::Exited {
                id: e.id,
                collected: e.collected.load(Ordering::Relaxed),
                bytes: e.spec_bytes,
            })
            .collect();
        let drop = retain::prune_exited(&exited);
        if !drop.is_empty() {
            tracing::debug!(count = drop.len(), "pruned exited processes from the table");
        }
        for id in drop {
            self.entries.remove(&id);
        }
    }
}

/// What the table shares with its reaper tasks.
pub(crate) struct Shared {
    table: Mutex<Table>,
    /// Held (read) from before a fork until the child is in the table, and (write) while
    /// orphans are reaped: see `orphans`.
    gate: RwLock<()>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Table> {
        // A panic while holding the lock cannot leave the map half-updated (single inserts),
        // so a poisoned lock is still usable.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Pids of the table's processes that tokio has not reaped yet.
    fn owned_pids(&self) -> HashSet<i32> {
        self.lock()
            .entries
            .values()
            .filter(|e| e.exit().is_none())
            .map(|e| e.pid as i32)
            .collect()
    }
}

/// See [`ProcTable::child_gate`].
pub(crate) struct ChildGate(Arc<Shared>);

impl ChildGate {
    /// Holds off the orphan reaper until the guard is dropped.
    pub(crate) fn hold(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.0.gate.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// Every process the agent started, running or recently exited.
pub(crate) struct ProcTable {
    /// Default working directory: the root directory, or the run directory of a lease.
    root_dir: Mutex<PathBuf>,
    cgroup: Option<PathBuf>,
    node: NodeScope,
    next_id: AtomicU64,
    shared: Arc<Shared>,
    reaper: Option<AbortHandle>,
}

impl Drop for ProcTable {
    fn drop(&mut self) {
        if let Some(reaper) = &self.reaper {
            reaper.abort();
        }
    }
}

fn err(kind: ErrorKind, message: impl Into<String>) -> ApiError {
    ApiError::new(kind, message)
}

/// Maps an I/O error about `what` to an [`ApiError`] of the matching kind.
pub(crate) fn io_error(what: &str, e: &io::Error) -> ApiError {
    let kind = match e.kind() {
        io::ErrorKind::NotFound => ErrorKind::NotFound,
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => ErrorKind::PermissionDenied,
        io::ErrorKind::AlreadyExists
        | io::ErrorKind::DirectoryNotEmpty
        | io::ErrorKind::IsADirectory
        | io::ErrorKind::NotADirectory => ErrorKind::Conflict,
        io::ErrorKind::InvalidInput | io::ErrorKind::InvalidFilename => ErrorKind::InvalidRequest,
        _ => ErrorKind::Internal,
    };
    err(kind, format!("{what}: {e}"))
}

/// Requires `path` to be absolute; `field` names where it came from.
pub(crate) fn absolute(field: &str, path: &str) -> Result<PathBuf, ApiError> {
    let p = PathBuf::from(path);
    if p.is_absolute() {
        Ok(p)
    } else {
        Err(err(
            ErrorKind::InvalidRequest,
            format!("{field} {path:?} is not an absolute path"),
        ))
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl ProcTable {
    /// An empty table; processes start in `root_dir` unless their spec says otherwise and, with
    /// `cgroup`, each in its own child cgroup of it. Makes the agent a child subreaper and,
    /// inside a tokio runtime, starts reaping the orphans it adopts (see `orphans`).
    pub(crate) fn new(root_dir: PathBuf, cgroup: Option<PathBuf>) -> Self {
        let node = NodeScope::new(cgroup.as_deref());
        let shared = Arc::new(Shared {
            table: Mutex::new(Table::default()),
            gate: RwLock::new(()),
        });
        orphans::become_subreaper();
        let reaper = tokio::runtime::Handle::try_current().ok().map(|rt| {
            rt.spawn(orphans::reap_loop(Arc::downgrade(&shared)))
                .abort_handle()
        });
        Self {
            root_dir: Mutex::new(root_dir),
            cgroup,
            node,
            next_id: AtomicU64::new(1),
            shared,
            reaper,
        }
    }

    /// Which processes are the node's.
    pub(crate) fn node(&self) -> &NodeScope {
        &self.node
    }

    /// A handle for code of the agent that starts and waits for a child of its own (the fault
    /// probe runs `zcat`, `iptables -V`): while it holds the gate, the orphan reaper cannot
    /// take that child's exit status.
    pub(crate) fn child_gate(&self) -> ChildGate {
        ChildGate(self.shared.clone())
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.shared.lock()
    }

    fn get(&self, id: ProcId) -> Result<Arc<ProcEntry>, ApiError> {
        self.lock().entries.get(&id).cloned().ok_or_else(|| {
            err(
                ErrorKind::NotFound,
                format!("no process with id {id} on this agent"),
            )
        })
    }

    /// The working directory of a process whose spec names none.
    pub(crate) fn default_cwd(&self) -> PathBuf {
        self.root_dir.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Changes the default working directory (a lease's run directory, and back).
    pub(crate) fn set_default_cwd(&self, dir: PathBuf) {
        *self.root_dir.lock().unwrap_or_else(|e| e.into_inner()) = dir;
    }

    /// Starts `spec` (refused over the limits of [`ProcSpec::check_limits`]). Pipes are created
    /// where the spec says `pipe`; the caller takes them.
    pub(crate) fn spawn(&self, spec: ProcSpec) -> Result<Spawned, ApiError> {
        spec.check_limits()?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let cwd = match &spec.cwd {
            Some(cwd) => absolute("cwd", cwd)?,
            None => self.default_cwd(),
        };
        match std::fs::metadata(&cwd) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(err(
                    ErrorKind::InvalidRequest,
                    format!("working directory {} is not a directory", cwd.display()),
                ));
            }
            Err(e) => return Err(io_error(&format!("working directory {}", cwd.display()), &e)),
        }

        let mut cmd = Command::new(&spec.command);
        cmd.args(&spec.args)
            .current_dir(&cwd)
            .process_group(0)
            .kill_on_drop(false);
        if spec.env_clear {
            cmd.env_clear();
        }
        cmd.envs(&spec.env);
        cmd.stdin(stdin_stdio(&spec.stdin)?);
        cmd.stdout(output_stdio("stdout", &spec.stdout)?);
        cmd.stderr(output_stdio("stderr", &spec.stderr)?);

        let cgroup = match &self.cgroup {
            Some(parent) => Some(self.prepare_cgroup(&mut cmd, parent, id)?),
            None => None,
        };
        let (cgroup_dir, _procs_fd) = match cgroup {
            Some((dir, fd)) => (Some(dir), Some(fd)),
            None => (None, None),
        };

        // Until the child is in the table, the orphan reaper must not see it (see `orphans`).
        let gate = self.shared.gate.read().unwrap_or_else(|p| p.into_inner());
        let started = Instant::now();
        let started_ms = now_ms();
        let mut child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) => {
                if let Some(dir) = &cgroup_dir {
                    let _ = std::fs::remove_dir(dir);
                }
                return Err(spawn_error(&spec.command, cgroup_dir.as_deref(), &e));
            }
        };
        // The fd of cgroup.procs is only needed by the child before exec.
        drop(_procs_fd);
        let pid = child.id().unwrap_or(0);
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        if let Some(out) = &stdout {
            enlarge_pipe(out);
        }
        if let Some(out) = &stderr {
            enlarge_pipe(out);
        }

        let (exit_tx, exit_rx) = watch::channel(None);
        let spec_bytes = spec.size();
        let entry = Arc::new(ProcEntry {
            id,
            pid,
            spec,
            started_ms,
            exit: exit_rx,
            cgroup: cgroup_dir.clone(),
            restarted: AtomicBool::new(false),
            collected: AtomicBool::new(false),
            spec_bytes,
        });
        let closed = {
            let mut table = self.lock();
            table.entries.insert(id, entry.clone());
            table.closed
        };
        drop(gate);
        tracing::info!(id, pid, command = %entry.spec.command, "started process");

        let shared = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            let status = exit_status(child.wait().await, started);
            tracing::info!(id, pid, "process ended: {status}");
            exit_tx.send_replace(Some(status));
            if let Some(shared) = shared.upgrade() {
                shared.lock().prune();
            }
            if let Some(dir) = cgroup_dir {
                // Daemonized descendants may still live there; kill-all removes it then.
                let _ = std::fs::remove_dir(&dir);
            }
        });

        if closed {
            // The agent is shutting down: nothing may outlive it.
            kill_tree(&entry);
            return Err(err(ErrorKind::Conflict, "the agent is shutting down"));
        }
        Ok(Spawned {
            entry,
            stdin,
            stdout,
            stderr,
        })
    }

    /// Creates the child cgroup `proc-<id>` and arranges for the child to move itself into it
    /// before exec, so even its first fork lands inside.
    fn prepare_cgroup(
        &self,
        cmd: &mut Command,
        parent: &Path,
        id: ProcId,
    ) -> Result<(PathBuf, OwnedFd), ApiError> {
        let dir = parent.join(format!("proc-{id}"));
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_error(&format!("creating cgroup {}", dir.display()), &e)),
        }
        let procs = dir.join("cgroup.procs");
        let fd: OwnedFd = match OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&procs)
        {
            Ok(f) => f.into(),
            Err(e) => {
                let _ = std::fs::remove_dir(&dir);
                return Err(io_error(&format!("opening {}", procs.display()), &e));
            }
        };
        let raw = fd.as_raw_fd();
        // SAFETY: the closure runs in the forked child before exec and only calls write(2),
        // which is async-signal-safe; it allocates nothing (the error is a raw errno). `raw`
        // stays open until `spawn` returns because the caller keeps the `OwnedFd` alive until
        // then; it is O_CLOEXEC, so no exec'd program inherits it.
        unsafe {
            cmd.pre_exec(move || {
                // Writing "0" moves the writing process itself.
                let written = libc::write(raw, b"0".as_ptr().cast(), 1);
                if written == 1 {
                    Ok(())
                } else {
                    Err(io::Error::from_raw_os_error(CGROUP_MOVE_FAILED))
                }
            });
        }
        Ok((dir, fd))
    }

    /// The `GET /v1/procs` reply: the table's entries as JSON, bounded (see `retain`), with
    /// the table's size in [`PROCS_TOTAL_HEADER`] so a client can tell it was truncated.
    pub(crate) fn list_reply(&self) -> Response {
        let entries: Vec<Arc<ProcEntry>> = self.lock().entries.values().cloned().collect();
        let total = entries.len();
        let items = entries
            .iter()
            .map(|e| {
                // Serializing these plain structs cannot fail; an entry that did would be left out.
                let json = serde_json::to_vec(&e.info()).unwrap_or_default();
                (e.exit().is_none(), e.id, json)
            })
            .filter(|(_, _, json)| !json.is_empty())
            .collect();
        let (body, listed) = retain::bounded_list(items);
        if listed < total {
            tracing::debug!(listed, total, "GET /v1/procs truncated to its limits");
        }
        (
            [
                (header::CONTENT_TYPE, HeaderValue::from_static("application/json")),
                (
                    header::HeaderName::from_static(PROCS_TOTAL_HEADER),
                    HeaderValue::from(total),
                ),
            ],
            body,
        )
            .into_response()
    }

    /// Sends `signal` to process `id`, or to its whole process group.
    pub(crate) fn signal(&self, id: ProcId, signal: Signal, group: bool) -> Result<(), ApiError> {
        check_signal(signal)?;
        let entry = self.get(id)?;
        if !group && entry.exit().is_some() {
            return Err(err(
                ErrorKind::Conflict,
                format!("process {id} (pid {}) has already exited", entry.pid),
            ));
        }
        let pid = entry.pid as i32;
        let target = if group { -pid } else { pid };
        send_signal(target, signal.0).map_err(|e| match e.raw_os_error() {
            Some(libc::ESRCH) => err(
                ErrorKind::Conflict,
                format!("process {id} (pid {pid}) has no live process left to receive {signal}"),
            ),
            Some(libc::EPERM) => err(
                ErrorKind::PermissionDenied,
                format!("sending {signal} to process {id}: {e}"),
            ),
            Some(libc::EINVAL) => err(
                ErrorKind::InvalidRequest,
                format!("signal {} is not valid here: {e}", signal.0),
            ),
            _ => err(
                ErrorKind::Internal,
                format!("sending {signal} to process {id}: {e}"),
            ),
        })?;
        tracing::info!(id, pid, group, "sent {signal}");
        Ok(())
    }

    /// What freezing process `id` acts on. Fails when it is unknown or has exited.
    pub(crate) fn freeze_target(&self, id: ProcId) -> Result<FreezeTarget, ApiError> {
        let entry = self.get(id)?;
        if entry.exit().is_some() {
            return Err(err(
                ErrorKind::Conflict,
                format!("process {id} (pid {}) has exited: nothing to freeze", entry.pid),
            ));
        }
        Ok(FreezeTarget {
            pid: entry.pid,
            cgroup: entry.cgroup.clone(),
        })
    }

    /// Ids of the processes still running.
    pub(crate) fn running_ids(&self) -> Vec<ProcId> {
        self.lock()
            .entries
            .values()
            .filter(|e| e.exit().is_none())
            .map(|e| e.id)
            .collect()
    }

    /// Node-level crash: sends `signal` to every process tree the agent started (see
    /// [`signal_tree`]); with SIGKILL, waits (bounded) until no process of them is alive.
    /// Returns the ids of the trees that had a live process to signal.
    pub(crate) async fn signal_all(&self, signal: Signal) -> Result<Vec<ProcId>, ApiError> {
        check_signal(signal)?;
        let entries: Vec<Arc<ProcEntry>> = self.lock().entries.values().cloned().collect();
        // Zombies (orphans nobody reaped yet) still "receive" signals: only count live trees.
        let live = live_groups();
        let hit: Vec<Arc<ProcEntry>> = entries
            .into_iter()
            .filter(|e| {
                let alive = live.as_ref().is_none_or(|l| l.contains(&(e.pid as i32)))
                    || e.cgroup.as_deref().is_some_and(|d| !cgroup_pids(d).is_empty());
                alive && signal_tree(e, signal.0)
            })
            .collect();
        if signal == Signal::KILL {
            let deadline = tokio::time::Instant::now() + KILL_GRACE;
            for entry in &hit {
                let mut exit = entry.exit_watch();
                if tokio::time::timeout_at(deadline, exit.wait_for(Option::is_some))
                    .await
                    .is_err()
                {
                    tracing::warn!(id = entry.id, pid = entry.pid, "process not reaped after SIGKILL");
                }
            }
            // The rest of each tree dies asynchronously too: wait until no member is alive.
            loop {
                let live = live_groups();
                let left: Vec<ProcId> = hit
                    .iter()
                    .filter(|e| {
                        live.as_ref().is_none_or(|l| l.contains(&(e.pid as i32)))
                            || e.cgroup.as_deref().is_some_and(|d| !cgroup_pids(d).is_empty())
                    })
                    .map(|e| e.id)
                    .collect();
                if left.is_empty() {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    tracing::warn!(ids = ?left, "process trees still alive {KILL_GRACE:?} after SIGKILL");
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let ids: Vec<ProcId> = hit.iter().map(|e| e.id).collect();
        tracing::info!(?ids, "sent {signal} to every process tree");
        Ok(ids)
    }

    /// Restarts process `id`: `signal` to its tree, up to `grace` for it to exit, SIGKILL to
    /// what is left, then the same spec again under a new id (piped stdio becomes null: the
    /// original's streams cannot be re-attached).
    pub(crate) async fn restart(
        &self,
        id: ProcId,
        signal: Signal,
        grace: Duration,
    ) -> Result<Spawned, ApiError> {
        check_signal(signal)?;
        let entry = self.get(id)?;
        if entry.restarted.swap(true, Ordering::SeqCst) {
            return Err(err(
                ErrorKind::Conflict,
                format!("process {id} was already restarted; restart the process that replaced it"),
            ));
        }
        let mut exit = entry.exit_watch();
        if entry.exit().is_none() && signal_tree(&entry, signal.0) {
            let _ = tokio::time::timeout(grace, exit.wait_for(Option::is_some)).await;
        }
        kill_tree(&entry);
        let deadline = tokio::time::Instant::now() + KILL_GRACE;
        if tokio::time::timeout_at(deadline, exit.wait_for(Option::is_some))
            .await
            .is_err()
        {
            entry.restarted.store(false, Ordering::SeqCst);
            return Err(err(
                ErrorKind::Internal,
                format!(
                    "restarting process {id}: pid {} did not exit within {KILL_GRACE:?} of SIGKILL",
                    entry.pid
                ),
            ));
        }
        if let Some(dir) = &entry.cgroup {
            remove_cgroup(dir, deadline).await;
        }
        let mut spec = entry.spec.clone();
        if spec.stdin == StdinSpec::Pipe {
            spec.stdin = StdinSpec::Null;
        }
        for out in [&mut spec.stdout, &mut spec.stderr] {
            if *out == OutputSpec::Pipe {
                *out = OutputSpec::Null;
            }
        }
        let spawned = self.spawn(spec);
        match &spawned {
            Ok(new) => tracing::info!(
                id,
                new_id = new.entry.id,
                new_pid = new.entry.pid,
                "restarted process"
            ),
            Err(e) => {
                entry.restarted.store(false, Ordering::SeqCst);
                tracing::warn!(
                    id,
                    "restart stopped the process but could not start it again: {e}"
                );
            }
        }
        spawned
    }

    /// Waits up to `timeout` for process `id` to exit. A status returned counts as collected.
    pub(crate) async fn wait(&self, id: ProcId, timeout: Duration) -> Result<Option<ExitStatus>, ApiError> {
        let entry = self.get(id)?;
        let mut exit = entry.exit_watch();
        // Timing out just means "still running"; the reaper records before it drops the
        // sender, so a closed channel has the status too.
        let _ = tokio::time::timeout(timeout, exit.wait_for(Option::is_some)).await;
        let status = *exit.borrow();
        if status.is_some() {
            entry.collected.store(true, Ordering::Relaxed);
            self.lock().prune();
        }
        Ok(status)
    }

    /// Kills every process tree the agent started (SIGKILL to each process group, plus
    /// `cgroup.kill`), waits briefly for them to be reaped, and removes their cgroups.
    /// With `close`, processes started afterwards are killed at once.
    pub(crate) async fn kill_all(&self, close: bool) {
        let entries: Vec<Arc<ProcEntry>> = {
            let mut table = self.lock();
            table.closed |= close;
            table.entries.values().cloned().collect()
        };
        for entry in &entries {
            kill_tree(entry);
        }
        // Daemons that left their process group were adopted by the agent (without a cgroup,
        // nothing else catches them).
        let adopted = orphans::kill_adopted(&self.shared, &self.node);
        if !adopted.is_empty() {
            tracing::info!(pids = ?adopted, "killed adopted descendants");
        }
        let deadline = tokio::time::Instant::now() + KILL_GRACE;
        for entry in &entries {
            let mut exit = entry.exit_watch();
            if tokio::time::timeout_at(deadline, exit.wait_for(Option::is_some))
                .await
                .is_err()
            {
                tracing::warn!(id = entry.id, pid = entry.pid, "process not reaped after SIGKILL");
            }
        }
        for dir in entries.iter().filter_map(|e| e.cgroup.as_deref()) {
            remove_cgroup(dir, deadline).await;
        }
        if !entries.is_empty() {
            tracing::info!(count = entries.len(), "killed every process tree");
        }
    }
}

fn check_signal(signal: Signal) -> Result<(), ApiError> {
    if (1..=64).contains(&signal.0) {
        Ok(())
    } else {
        Err(err(
            ErrorKind::InvalidRequest,
            format!("signal {} is out of range 1..=64", signal.0),
        ))
    }
}

/// Checks that `dir` is a cgroup directory the agent can create children in.
pub(crate) fn check_cgroup_dir(dir: &Path) -> Result<(), String> {
    if !dir.is_dir() {
        return Err("does not exist or is not a directory".into());
    }
    if !dir.join("cgroup.procs").exists() {
        return Err("is not a cgroup v2 directory (no cgroup.procs)".into());
    }
    Ok(())
}
