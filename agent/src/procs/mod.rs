//! The process table: starting processes in their own process group (and cgroup), reaping
//! them, signalling them, and killing every tree on shutdown.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chaos_proto::{
    ApiError, ErrorKind, ExitStatus, OutputSpec, ProcId, ProcInfo, ProcSpec, Signal, StdinSpec,
};
use tokio::process::{ChildStderr, ChildStdin, ChildStdout, Command};
use tokio::sync::watch;

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
}

impl ProcEntry {
    /// A receiver that sees the exit status once the reaper recorded it.
    pub(crate) fn exit_watch(&self) -> watch::Receiver<Option<ExitStatus>> {
        self.exit.clone()
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

/// Every process the agent started, running or exited.
pub(crate) struct ProcTable {
    root_dir: PathBuf,
    cgroup: Option<PathBuf>,
    next_id: AtomicU64,
    table: Mutex<Table>,
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

/// Sends signal number `signal` to `target` (a pid, or a negated process group id).
fn send_signal(target: i32, signal: i32) -> io::Result<()> {
    // SAFETY: kill(2) takes two integers and touches no memory of ours; any values are
    // acceptable to it (bad ones give EINVAL/ESRCH).
    let rc = unsafe { libc::kill(target, signal) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn output_stdio(field: &str, spec: &OutputSpec) -> Result<Stdio, ApiError> {
    Ok(match spec {
        OutputSpec::Pipe => Stdio::piped(),
        OutputSpec::Null => Stdio::null(),
        OutputSpec::File { path, append } => {
            let path = absolute(field, path)?;
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| io_error(&format!("creating {} for {field}", parent.display()), &e))?;
            }
            let mut opts = OpenOptions::new();
            opts.create(true).mode(0o644);
            if *append {
                opts.append(true);
            } else {
                opts.write(true).truncate(true);
            }
            let file = opts
                .open(&path)
                .map_err(|e| io_error(&format!("opening {field} {}", path.display()), &e))?;
            Stdio::from(file)
        }
    })
}

fn stdin_stdio(spec: &StdinSpec) -> Result<Stdio, ApiError> {
    Ok(match spec {
        StdinSpec::Pipe => Stdio::piped(),
        StdinSpec::Null => Stdio::null(),
        StdinSpec::File { path } => {
            let path = absolute("stdin", path)?;
            let file = std::fs::File::open(&path)
                .map_err(|e| io_error(&format!("opening stdin {}", path.display()), &e))?;
            Stdio::from(file)
        }
    })
}

fn spawn_error(command: &str, cgroup: Option<&Path>, e: &io::Error) -> ApiError {
    match e.raw_os_error() {
        Some(CGROUP_MOVE_FAILED) => err(
            ErrorKind::Internal,
            format!(
                "starting `{command}`: could not move it into cgroup {} (is it a writable cgroup v2 directory?)",
                cgroup.map(|p| p.display().to_string()).unwrap_or_default()
            ),
        ),
        Some(libc::ENOENT) if command.contains('/') => err(
            ErrorKind::CommandNotFound,
            format!("command `{command}` does not exist on the node"),
        ),
        Some(libc::ENOENT) => err(
            ErrorKind::CommandNotFound,
            format!("command `{command}` not found in PATH on the node"),
        ),
        Some(libc::EACCES) => err(
            ErrorKind::CommandNotFound,
            format!("command `{command}` is not executable (permission denied)"),
        ),
        Some(libc::ENOEXEC) => err(
            ErrorKind::CommandNotFound,
            format!("command `{command}` is not a valid executable (exec format error)"),
        ),
        _ => err(ErrorKind::Internal, format!("starting `{command}`: {e}")),
    }
}

/// Asks for a larger pipe buffer; a failure only costs throughput.
fn enlarge_pipe(fd: impl std::os::fd::AsFd) {
    if let Err(e) = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_SIZE)) {
        tracing::debug!("could not enlarge an output pipe: {e}");
    }
}

fn exit_status(status: io::Result<std::process::ExitStatus>, started: Instant) -> ExitStatus {
    let duration_us = started.elapsed().as_micros() as u64;
    match status {
        Ok(s) => ExitStatus {
            code: s.code(),
            signal: s.signal(),
            duration_us,
        },
        Err(e) => {
            tracing::error!("waiting for a child failed: {e}");
            ExitStatus {
                code: None,
                signal: None,
                duration_us,
            }
        }
    }
}

impl ProcTable {
    /// An empty table; processes start in `root_dir` unless their spec says otherwise and, with
    /// `cgroup`, each in its own child cgroup of it.
    pub(crate) fn new(root_dir: PathBuf, cgroup: Option<PathBuf>) -> Self {
        Self {
            root_dir,
            cgroup,
            next_id: AtomicU64::new(1),
            table: Mutex::new(Table::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // A panic while holding the lock cannot leave the map half-updated (single inserts),
        // so a poisoned lock is still usable.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, id: ProcId) -> Result<Arc<ProcEntry>, ApiError> {
        self.lock().entries.get(&id).cloned().ok_or_else(|| {
            err(
                ErrorKind::NotFound,
                format!("no process with id {id} on this agent"),
            )
        })
    }

    /// Starts `spec`. Pipes are created where the spec says `pipe`; the caller takes them.
    pub(crate) fn spawn(&self, spec: ProcSpec) -> Result<Spawned, ApiError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let cwd = match &spec.cwd {
            Some(cwd) => absolute("cwd", cwd)?,
            None => self.root_dir.clone(),
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
        let entry = Arc::new(ProcEntry {
            id,
            pid,
            spec,
            started_ms,
            exit: exit_rx,
            cgroup: cgroup_dir.clone(),
            restarted: AtomicBool::new(false),
        });
        let closed = {
            let mut table = self.lock();
            table.entries.insert(id, entry.clone());
            table.closed
        };
        tracing::info!(id, pid, command = %entry.spec.command, "started process");

        tokio::spawn(async move {
            let status = exit_status(child.wait().await, started);
            tracing::info!(id, pid, "process ended: {status}");
            exit_tx.send_replace(Some(status));
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

    /// Every process, by id.
    pub(crate) fn list(&self) -> Vec<ProcInfo> {
        self.lock().entries.values().map(|e| e.info()).collect()
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
                let alive = live.contains(&(e.pid as i32))
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
                        live.contains(&(e.pid as i32))
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

    /// Waits up to `timeout` for process `id` to exit.
    pub(crate) async fn wait(&self, id: ProcId, timeout: Duration) -> Result<Option<ExitStatus>, ApiError> {
        let mut exit = self.get(id)?.exit_watch();
        // Timing out just means "still running"; the reaper records before it drops the
        // sender, so a closed channel has the status too.
        let _ = tokio::time::timeout(timeout, exit.wait_for(Option::is_some)).await;
        Ok(*exit.borrow())
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

/// Pids listed in the cgroup `dir` (empty when it is gone).
fn cgroup_pids(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Process groups with at least one live (not zombie) member, from `/proc/*/stat`.
fn live_groups() -> BTreeSet<i32> {
    let mut out = BTreeSet::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        if !entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Fields after the (parenthesized, possibly spaced) name: state, ppid, pgrp, …
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next();
        if let Some(pgrp) = fields.nth(1).and_then(|p| p.parse().ok())
            && state != Some("Z")
        {
            out.insert(pgrp);
        }
    }
    out
}

/// The process group of `pid`, from `/proc/<pid>/stat`.
fn pgid_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(2)?.parse().ok()
}

/// Sends `signal` to a started process's tree: its process group, and the processes of its
/// cgroup that left the group (each gets it once). SIGKILL uses [`kill_tree`]. Returns whether
/// any process was there to receive it.
fn signal_tree(entry: &ProcEntry, signal: i32) -> bool {
    if signal == libc::SIGKILL {
        return kill_tree(entry);
    }
    let leader = entry.pid as i32;
    let mut any = match send_signal(-leader, signal) {
        Ok(()) => true,
        Err(e) => {
            if e.raw_os_error() != Some(libc::ESRCH) {
                tracing::warn!(id = entry.id, pid = entry.pid, "signalling process group: {e}");
            }
            false
        }
    };
    if let Some(dir) = &entry.cgroup {
        for pid in cgroup_pids(dir) {
            if pgid_of(pid) != Some(leader) && send_signal(pid, signal).is_ok() {
                any = true;
            }
        }
    }
    any
}

/// SIGKILL to the process group and, if it has one, to the whole cgroup. Returns whether any
/// process was there to receive it.
fn kill_tree(entry: &ProcEntry) -> bool {
    // The group may outlive its leader (background children), so it is killed even when the
    // leader has exited. ESRCH just means nothing is left.
    let mut any = match send_signal(-(entry.pid as i32), libc::SIGKILL) {
        Ok(()) => true,
        Err(e) => {
            if e.raw_os_error() != Some(libc::ESRCH) {
                tracing::warn!(id = entry.id, pid = entry.pid, "killing process group: {e}");
            }
            false
        }
    };
    if let Some(dir) = &entry.cgroup {
        any |= !cgroup_pids(dir).is_empty();
        kill_cgroup(dir);
    }
    any
}

/// Kills every process in the cgroup `dir`, including ones that left the process group.
fn kill_cgroup(dir: &Path) {
    match std::fs::write(dir.join("cgroup.kill"), b"1") {
        Ok(()) => return,
        Err(e) if e.kind() == io::ErrorKind::NotFound && !dir.exists() => return,
        Err(e) => tracing::debug!(
            "cgroup.kill in {}: {e}; killing its processes one by one",
            dir.display()
        ),
    }
    // Kernels before 5.14 lack cgroup.kill.
    if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let _ = send_signal(pid, libc::SIGKILL);
        }
    }
}

/// Removes the (killed) cgroup `dir` once its processes have exited, retrying until `deadline`.
async fn remove_cgroup(dir: &Path, deadline: tokio::time::Instant) {
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(e) => {
                if tokio::time::Instant::now() >= deadline {
                    tracing::warn!("could not remove cgroup {}: {e}", dir.display());
                    return;
                }
                kill_cgroup(dir);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
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
