//! Wire types of the chaos agent's HTTPS API.
//!
//! This crate is the single definition of the protocol between the runner (`chaos`) and the node
//! agent (`chaos-agent`). It holds only plain serde types and constants, so both sides — and any
//! third-party client — can depend on it without pulling in a server, a TLS stack or Linux code.
//!
//! (This file is long on purpose: its documentation is the API reference — the endpoint table
//! and every body — and the types sit beside the words that define them.)
//!
//! # Transport
//!
//! HTTP/1.1 over TLS 1.3 with mutual authentication: the agent presents its own per-node server
//! certificate and requires a client certificate signed by the cluster's CA. All paths start with
//! [`API_PREFIX`]. Errors are returned as a non-2xx status with an [`ApiError`] JSON body.
//!
//! # Endpoints
//!
//! | method | path | request | reply |
//! |---|---|---|---|
//! | `GET` | `/v1/info` | – | [`NodeInfo`] |
//! | `POST` | `/v1/heartbeat?grace_ms=G&run=ID` | – | [`HeartbeatReply`]; with `run`, `409` unless that run holds the [`lease`] |
//! | `POST` | `/v1/shutdown?run=ID` | – | `204`; the agent kills its process trees and exits (a persistent agent ends the run instead, see [`lease`]) |
//! | `PUT` | `/v1/files?path=P&mode=M` | file bytes (streamed) | [`FileWritten`] |
//! | `GET` | `/v1/files?path=P` | – | file bytes (streamed) |
//! | `DELETE` | `/v1/files?path=P&recursive=B` | – | `204` |
//! | `GET` | `/v1/files/stat?path=P` | – | [`FileStat`] |
//! | `GET` | `/v1/files/list?path=P` | – | `Vec<`[`DirEntry`]`>` |
//! | `GET` | `/v1/procs` | – | `Vec<`[`ProcInfo`]`>`, bounded (header [`PROCS_TOTAL_HEADER`]) |
//! | `POST` | `/v1/procs` | [`ProcSpec`] | [`ProcStarted`] (stdio must not be `pipe`) |
//! | `GET` | `/v1/procs/exec` | WebSocket, see [`exec`] | |
//! | `POST` | `/v1/procs/{id}/signal` | [`SignalRequest`] | `204` |
//! | `POST` | `/v1/procs/{id}/wait?timeout_ms=T` | – | [`WaitReply`] |
//! | `GET` | `/v1/dial?addr=HOST:PORT` | WebSocket, see [`dial`] | |
//! | `POST` | `/v1/faults` | [`fault::FaultRequest`] | [`fault::FaultInfo`] |
//! | `GET` | `/v1/faults` | – | `Vec<`[`fault::FaultInfo`]`>` |
//! | `DELETE` | `/v1/faults/{id}` | – | [`fault::HealReply`] |
//! | `DELETE` | `/v1/faults` | – | `Vec<String>`: ids healed |
//! | `GET` | `/v1/probe` | – | [`fault::ProbeReport`] |
//! | `POST` | `/v1/procs/kill-all` | [`KillAllRequest`] | `Vec<`[`ProcId`]`>`: ids signalled |
//! | `POST` | `/v1/procs/{id}/restart` | [`RestartRequest`] | [`ProcStarted`] of the new process |
//! | `POST` | `/v1/signal` | [`NodeSignalRequest`] | `Vec<u32>`: pids signalled |
//! | `POST` | `/v1/measure/serve` | [`measure::MeasureServe`] | [`measure::MeasureServing`] |
//! | `POST` | `/v1/measure/run` | [`measure::MeasureRun`] | [`measure::MeasureReport`] |
//! | `POST`/`GET`/`DELETE` | `/v1/lease` | see [`lease`] | one runner at a time on a persistent agent |
//!
//! File paths are absolute paths on the node. Query values are URL-encoded. Request sizes, body
//! read times and table sizes are bounded: see [`limits`]. The paths are constants in [`paths`],
//! which both the agent's routes and the runner's client use.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use kinds::Fault;

pub mod fault;
pub mod fault_id;
pub mod kinds;
pub mod lease;
pub mod limits;
pub mod machine;
pub mod measure;
pub mod paths;
mod units;

pub use fault_id::{MAX_FAULT_ID_LEN, validate_fault_id};
pub use machine::MachineFault;

/// Version of this protocol; bumped on incompatible changes and reported in [`NodeInfo`].
pub const PROTOCOL_VERSION: u32 = 1;

/// Prefix of every API path.
pub const API_PREFIX: &str = "/v1";

/// The line the agent prints on stdout, followed by a space and its bound `IP:PORT`, once it
/// accepts connections. Launchers wait for this line instead of polling the port.
pub const READY_LINE_PREFIX: &str = "CHAOS_AGENT_READY";

/// File names inside a TLS directory, as written by the runner and read by the agent.
///
/// A node's directory holds [`tls_files::CA_CERT`], [`tls_files::NODE_CERT`] and
/// [`tls_files::NODE_KEY`]; the runner's holds the CA (cert and key) and its client identity.
/// Keys are written with mode 0600 and never passed on a command line or in the environment.
pub mod tls_files {
    /// The cluster CA certificate (PEM). Present in every TLS directory.
    pub const CA_CERT: &str = "ca.pem";
    /// The cluster CA private key (PEM). Only in the runner's directory.
    pub const CA_KEY: &str = "ca.key";
    /// A node's server certificate (PEM).
    pub const NODE_CERT: &str = "node.pem";
    /// A node's server private key (PEM).
    pub const NODE_KEY: &str = "node.key";
    /// The runner's client certificate (PEM).
    pub const RUNNER_CERT: &str = "runner.pem";
    /// The runner's client private key (PEM).
    pub const RUNNER_KEY: &str = "runner.key";
}

/// What kind of failure an [`ApiError`] reports. Lets the runner map errors without parsing text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The file, directory or process does not exist. HTTP 404.
    NotFound,
    /// The command to start was not found on the node (or not executable). HTTP 404.
    CommandNotFound,
    /// The request was malformed (bad path, bad query, bad JSON). HTTP 400.
    InvalidRequest,
    /// The operation is not permitted on the node. HTTP 403.
    PermissionDenied,
    /// The target exists already, or is in a state that forbids the operation. HTTP 409.
    Conflict,
    /// The node could not reach the address it was asked to dial. HTTP 502.
    Unreachable,
    /// The node lacks a kernel feature or tool the operation needs. HTTP 501.
    Unsupported,
    /// Any other I/O or internal failure. HTTP 500.
    Internal,
}

impl ErrorKind {
    /// The HTTP status code the agent answers with for this kind.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorKind::NotFound | ErrorKind::CommandNotFound => 404,
            ErrorKind::InvalidRequest => 400,
            ErrorKind::PermissionDenied => 403,
            ErrorKind::Conflict => 409,
            ErrorKind::Unreachable => 502,
            ErrorKind::Unsupported => 501,
            ErrorKind::Internal => 500,
        }
    }
}

/// Error body of every non-2xx reply, and of [`exec::ServerEvent::Error`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// Machine-readable category.
    pub kind: ErrorKind,
    /// Human-readable explanation naming the path, command or address involved.
    pub message: String,
}

impl ApiError {
    /// Builds an error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({:?})", self.message, self.kind)
    }
}

impl std::error::Error for ApiError {}

/// `GET /v1/info`: what the node is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node's hostname.
    pub hostname: String,
    /// Addresses of the node's non-loopback interfaces.
    pub addresses: Vec<IpAddr>,
    /// Kernel release (`uname -r`).
    pub kernel: String,
    /// The agent's crate version.
    pub agent_version: String,
    /// [`PROTOCOL_VERSION`] the agent speaks.
    pub protocol_version: u32,
    /// The agent's process id.
    pub pid: u32,
}

/// Longest grace a heartbeat may grant ([`HeartbeatReply`]): one hour. A runner that needs
/// longer (a node cut off from it for more than an hour) must not leave agents unsupervised that
/// long.
pub const MAX_HEARTBEAT_GRACE_MS: u64 = 3_600_000;

/// `POST /v1/heartbeat` reply.
///
/// With `grace_ms=G` the heartbeat counts as given `G` milliseconds in the future: the agent
/// waits `G` plus its timeout before it acts. A runner sends one before it cuts itself off from
/// the node on purpose (pausing its container, disconnecting it from the network) for up to `G`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// How long the agent waits without a heartbeat before it acts, in milliseconds.
    pub timeout_ms: u64,
}

/// `PUT /v1/files` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileWritten {
    /// Bytes written.
    pub bytes: u64,
}

/// Type of a filesystem entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileType {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (not followed).
    Symlink,
    /// Anything else (socket, fifo, device).
    Other,
}

/// `GET /v1/files/stat` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStat {
    /// Entry type.
    pub file_type: FileType,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits (e.g. `0o644`).
    pub mode: u32,
    /// Modification time, milliseconds since the Unix epoch.
    pub modified_ms: u64,
}

#[cfg(unix)]
impl From<&std::fs::Metadata> for FileStat {
    /// The wire form of local metadata (of the entry itself: pass `symlink_metadata` to keep
    /// links as links). Shared by the agent and the `local` backend so both report alike.
    fn from(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::PermissionsExt;
        let ft = meta.file_type();
        let file_type = if ft.is_symlink() {
            FileType::Symlink
        } else if ft.is_dir() {
            FileType::Dir
        } else if ft.is_file() {
            FileType::File
        } else {
            FileType::Other
        };
        let modified_ms = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        FileStat {
            file_type,
            size: meta.len(),
            mode: meta.permissions().mode() & 0o7777,
            modified_ms,
        }
    }
}

/// One entry of `GET /v1/files/list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    /// File name (not the full path).
    pub name: String,
    /// Metadata of the entry.
    pub stat: FileStat,
}

/// Where a process's standard input comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum StdinSpec {
    /// Streamed from the runner over the exec WebSocket.
    Pipe,
    /// `/dev/null`.
    #[default]
    Null,
    /// Read from a file on the node.
    File {
        /// Absolute path on the node.
        path: String,
    },
}

/// Where a process's standard output or error goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OutputSpec {
    /// Streamed to the runner over the exec WebSocket.
    #[default]
    Pipe,
    /// Discarded.
    Null,
    /// Written to a file on the node (created with parent directories).
    File {
        /// Absolute path on the node.
        path: String,
        /// Append instead of truncating.
        #[serde(default)]
        append: bool,
    },
}

/// How to start a process on the node.
///
/// Every process runs in its own process group (and, where the node has one, its own cgroup),
/// so it and all its children can be signalled, frozen or killed as one tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ProcSpec {
    /// Program to run: a path, or a name looked up in `PATH`.
    pub command: String,
    /// Arguments, not including the program name.
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment variables to set (on top of the agent's environment unless `env_clear`).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Start from an empty environment.
    #[serde(default)]
    pub env_clear: bool,
    /// Working directory; the agent's root directory when absent.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Standard input.
    #[serde(default)]
    pub stdin: StdinSpec,
    /// Standard output.
    #[serde(default)]
    pub stdout: OutputSpec,
    /// Standard error.
    #[serde(default)]
    pub stderr: OutputSpec,
}

impl ProcSpec {
    /// Size of the spec in bytes: every string it holds (command, arguments, environment
    /// names and values, working directory, stdio paths) plus its JSON quotes and separators —
    /// about what its JSON takes, computed without serializing it.
    pub fn size(&self) -> usize {
        let string = |s: &str| s.len() + 3;
        let path = |out: &OutputSpec| match out {
            OutputSpec::File { path, .. } => string(path),
            _ => 0,
        };
        let stdin = match &self.stdin {
            StdinSpec::File { path } => string(path),
            _ => 0,
        };
        string(&self.command)
            + self.args.iter().map(|a| string(a)).sum::<usize>()
            + self.env.iter().map(|(k, v)| string(k) + string(v)).sum::<usize>()
            + self.cwd.as_deref().map_or(0, string)
            + stdin
            + path(&self.stdout)
            + path(&self.stderr)
    }

    /// Checks the spec against the agent's limits: at most [`limits::MAX_PROC_ARGS`]
    /// arguments plus environment entries and at most [`limits::MAX_PROC_SPEC`] bytes (see
    /// [`ProcSpec::size`]). The error, of kind [`ErrorKind::InvalidRequest`], names the limit
    /// and its value. Every place that starts a process from a spec calls this.
    pub fn check_limits(&self) -> Result<(), ApiError> {
        let entries = self.args.len() + self.env.len();
        if entries > limits::MAX_PROC_ARGS {
            return Err(ApiError::new(
                ErrorKind::InvalidRequest,
                format!(
                    "process spec of `{}` has {} arguments and {} environment entries ({entries}                      together), over the limit of {} (MAX_PROC_ARGS); pass bulk data in a file instead",
                    truncated(&self.command),
                    self.args.len(),
                    self.env.len(),
                    limits::MAX_PROC_ARGS
                ),
            ));
        }
        let size = self.size();
        if size > limits::MAX_PROC_SPEC {
            return Err(ApiError::new(
                ErrorKind::InvalidRequest,
                format!(
                    "process spec of `{}` is {size} bytes (command, arguments, environment and                      paths), over the limit of {} bytes (MAX_PROC_SPEC); pass bulk data in a file instead",
                    truncated(&self.command),
                    limits::MAX_PROC_SPEC
                ),
            ));
        }
        Ok(())
    }

    /// A spec running `command` with `args`, stdout and stderr piped, stdin null.
    pub fn new<I, S>(command: impl Into<String>, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            command: command.into(),
            args: args.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }
}

/// The first 64 characters of `s`, for messages about possibly huge inputs.
fn truncated(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// Header of a `GET /v1/procs` reply: how many processes the agent's table holds. When it is
/// larger than the number of entries in the reply, the reply was truncated (see
/// [`limits::MAX_PROCS_LISTED`] and [`limits::MAX_PROCS_REPLY_BYTES`]).
pub const PROCS_TOTAL_HEADER: &str = "x-chaos-procs-total";

/// Identifier the agent gives a process it started; unique for the agent's lifetime.
pub type ProcId = u64;

/// Reply to starting a process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcStarted {
    /// Agent-assigned id.
    pub id: ProcId,
    /// OS process id (also the process group id).
    pub pid: u32,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// Exit code, when the process exited normally.
    pub code: Option<i32>,
    /// Number of the signal that killed it, when it did not.
    pub signal: Option<i32>,
    /// Wall-clock time from spawn to exit, in microseconds.
    pub duration_us: u64,
}

impl ExitStatus {
    /// True when the process exited with code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code, self.signal) {
            (Some(c), _) => write!(f, "exit code {c}"),
            (None, Some(s)) => write!(f, "killed by {}", Signal(s)),
            (None, None) => write!(f, "unknown exit"),
        }
    }
}

/// State of a process the agent started (`GET /v1/procs`). Exited processes stay listed
/// until pruned: see [`limits::MAX_EXITED_PROCS`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcInfo {
    /// Agent-assigned id.
    pub id: ProcId,
    /// OS process id.
    pub pid: u32,
    /// The spec it was started with.
    pub spec: ProcSpec,
    /// Milliseconds since the Unix epoch when it started.
    pub started_ms: u64,
    /// `None` while running.
    pub exit: Option<ExitStatus>,
}

/// `POST /v1/procs/{id}/signal` body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalRequest {
    /// Signal to send.
    pub signal: Signal,
    /// Send to the whole process group instead of the leader only.
    #[serde(default)]
    pub group: bool,
}

/// `POST /v1/procs/kill-all` body: a node-level crash. The agent sends `signal` to every
/// process tree it started (each process group, and each process of its cgroup when the agent
/// has one; with SIGKILL, `cgroup.kill` where available) and replies with the ids of the
/// processes that had a live process left to signal. With SIGKILL it replies once no process of
/// those trees is alive (bounded wait: 2 s).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KillAllRequest {
    /// Signal to send; SIGKILL when absent.
    #[serde(default = "KillAllRequest::default_signal")]
    pub signal: Signal,
}

impl KillAllRequest {
    fn default_signal() -> Signal {
        Signal::KILL
    }
}

impl Default for KillAllRequest {
    fn default() -> Self {
        Self { signal: Signal::KILL }
    }
}

/// `POST /v1/procs/{id}/restart` body. The agent sends `signal` to the process group, waits up
/// to `grace_ms` for the process to exit, then SIGKILLs the group (and cgroup), and starts the
/// same [`ProcSpec`] again under a new [`ProcId`].
///
/// The original's piped stdio (exec WebSocket) cannot be re-attached: the restarted process
/// gets `null` wherever the original had `pipe`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartRequest {
    /// Signal that asks the process to stop; SIGTERM when absent.
    #[serde(default = "RestartRequest::default_signal")]
    pub signal: Signal,
    /// How long to wait for it to exit before SIGKILL, milliseconds (at most 60 000).
    #[serde(default = "RestartRequest::default_grace_ms")]
    pub grace_ms: u64,
}

impl RestartRequest {
    /// Longest accepted `grace_ms`.
    pub const MAX_GRACE_MS: u64 = 60_000;

    fn default_signal() -> Signal {
        Signal::TERM
    }

    fn default_grace_ms() -> u64 {
        5_000
    }
}

impl Default for RestartRequest {
    fn default() -> Self {
        Self {
            signal: Self::default_signal(),
            grace_ms: Self::default_grace_ms(),
        }
    }
}

/// Which processes `POST /v1/signal` reaches: any process *of the node*, not only those the
/// agent started — with a node cgroup, the processes in it; without, the agent's descendants
/// (daemons included). A pid, group or name outside the node is refused
/// ([`ErrorKind::PermissionDenied`], or [`ErrorKind::NotFound`] when no process of the node has
/// that name). The agent never signals itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignalTarget {
    /// One process: `{"pid": 42}`.
    Pid(u32),
    /// Every process of a process group: `{"group": 42}`.
    Group(u32),
    /// Every process whose command name (`/proc/<pid>/comm`, at most 15 bytes) is this:
    /// `{"name": "etcd"}`.
    Name(String),
}

/// `POST /v1/signal` body. Replies with the pids signalled; `not_found` when nothing matched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSignalRequest {
    /// Signal to send.
    pub signal: Signal,
    /// Which processes.
    pub target: SignalTarget,
}

/// `POST /v1/procs/{id}/wait` reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitReply {
    /// `None` when the process was still running at the end of the wait's timeout.
    pub exit: Option<ExitStatus>,
}

/// A POSIX signal, carried on the wire as its Linux number so that any signal (including
/// real-time ones) can be sent. Parses from `"SIGTERM"`, `"TERM"`, `"term"` or `"15"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Signal(pub i32);

/// Linux signal names and numbers (x86-64 / aarch64 numbering).
const SIGNAL_NAMES: &[(&str, i32)] = &[
    ("HUP", 1),
    ("INT", 2),
    ("QUIT", 3),
    ("ILL", 4),
    ("TRAP", 5),
    ("ABRT", 6),
    ("BUS", 7),
    ("FPE", 8),
    ("KILL", 9),
    ("USR1", 10),
    ("SEGV", 11),
    ("USR2", 12),
    ("PIPE", 13),
    ("ALRM", 14),
    ("TERM", 15),
    ("STKFLT", 16),
    ("CHLD", 17),
    ("CONT", 18),
    ("STOP", 19),
    ("TSTP", 20),
    ("TTIN", 21),
    ("TTOU", 22),
    ("URG", 23),
    ("XCPU", 24),
    ("XFSZ", 25),
    ("VTALRM", 26),
    ("PROF", 27),
    ("WINCH", 28),
    ("IO", 29),
    ("PWR", 30),
    ("SYS", 31),
];

impl Signal {
    /// SIGHUP.
    pub const HUP: Signal = Signal(1);
    /// SIGINT.
    pub const INT: Signal = Signal(2);
    /// SIGKILL.
    pub const KILL: Signal = Signal(9);
    /// SIGUSR1.
    pub const USR1: Signal = Signal(10);
    /// SIGTERM.
    pub const TERM: Signal = Signal(15);
    /// SIGCONT.
    pub const CONT: Signal = Signal(18);
    /// SIGSTOP.
    pub const STOP: Signal = Signal(19);

    /// The signal's name without the `SIG` prefix, if it has one (`SIGRTMIN+n` otherwise).
    pub fn name(self) -> Option<&'static str> {
        SIGNAL_NAMES
            .iter()
            .find(|(_, n)| *n == self.0)
            .map(|(name, _)| *name)
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "SIG{name}"),
            None if (34..=64).contains(&self.0) => write!(f, "SIGRTMIN+{}", self.0 - 34),
            None => write!(f, "signal {}", self.0),
        }
    }
}

/// Error parsing a [`Signal`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseSignalError(String);

impl fmt::Display for ParseSignalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown signal {:?}: use a name like SIGTERM, TERM or a number from 1 to 64",
            self.0
        )
    }
}

impl std::error::Error for ParseSignalError {}

impl FromStr for Signal {
    type Err = ParseSignalError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseSignalError(s.to_string());
        if let Ok(n) = s.parse::<i32>() {
            return if (1..=64).contains(&n) {
                Ok(Signal(n))
            } else {
                Err(err())
            };
        }
        let upper = s.to_ascii_uppercase();
        let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
        if let Some(off) = bare.strip_prefix("RTMIN+") {
            let off: i32 = off.parse().map_err(|_| err())?;
            return if (0..=30).contains(&off) {
                Ok(Signal(34 + off))
            } else {
                Err(err())
            };
        }
        SIGNAL_NAMES
            .iter()
            .find(|(name, _)| *name == bare)
            .map(|(_, n)| Signal(*n))
            .ok_or_else(err)
    }
}

/// The process exec WebSocket (`GET /v1/procs/exec`).
///
/// 1. The client sends one text frame: a JSON [`ProcSpec`], within
///    [`WS_FIRST_MESSAGE_TIMEOUT_MS`](crate::limits::WS_FIRST_MESSAGE_TIMEOUT_MS) of the
///    upgrade and at most [`MAX_PROC_SPEC`](crate::limits::MAX_PROC_SPEC) bytes. No client
///    message may exceed [`MAX_WS_MESSAGE`](crate::limits::MAX_WS_MESSAGE).
/// 2. The server answers with a text frame [`ServerEvent::Started`](exec::ServerEvent::Started) or [`ServerEvent::Error`](exec::ServerEvent::Error)
///    (then closes).
/// 3. Then, until the process exits:
///    - client → server binary frames are raw stdin bytes (only with `stdin: pipe`);
///    - client → server text frames are [`ClientControl`](exec::ClientControl) messages;
///    - server → client binary frames are `[tag, bytes...]` where `tag` is [`STDOUT`](exec::STDOUT) or
///      [`STDERR`](exec::STDERR) — the payload is the raw output, never re-encoded.
/// 4. When the process has exited and its output pipes are drained, the server sends
///    [`ServerEvent::Exited`](exec::ServerEvent::Exited) and closes.
///
/// If the client goes away first, the process keeps running (its piped output is discarded);
/// it can still be waited for, signalled and listed by id, and the agent kills it on shutdown.
pub mod exec {
    use serde::{Deserialize, Serialize};

    use crate::{ApiError, ExitStatus, ProcStarted, Signal};

    /// Tag byte of a binary frame carrying stdout bytes.
    pub const STDOUT: u8 = 1;
    /// Tag byte of a binary frame carrying stderr bytes.
    pub const STDERR: u8 = 2;

    /// Text frames the server sends.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(tag = "event", rename_all = "snake_case")]
    pub enum ServerEvent {
        /// The process started.
        Started(ProcStarted),
        /// The process could not be started, or the stream failed.
        Error(ApiError),
        /// The process exited; this is the last frame before close.
        Exited(ExitStatus),
    }

    /// Text frames the client may send after the process started.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(tag = "control", rename_all = "snake_case")]
    pub enum ClientControl {
        /// Close the process's stdin (EOF).
        CloseStdin,
        /// Send a signal to the process (or its group).
        Signal {
            /// Which signal.
            signal: Signal,
            /// Whole process group.
            #[serde(default)]
            group: bool,
        },
    }
}

/// The TCP proxy WebSocket (`GET /v1/dial?addr=HOST:PORT`).
///
/// The agent connects to `addr` from the node's network namespace before accepting the upgrade;
/// if that fails it answers with an [`ApiError`] of kind [`ErrorKind::Unreachable`] instead of
/// upgrading. After the upgrade, binary frames in either direction are raw TCP bytes. A close
/// frame from either side shuts the connection down.
pub mod dial {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_parses_names_numbers_and_realtime() {
        assert_eq!("SIGTERM".parse::<Signal>().unwrap(), Signal::TERM);
        assert_eq!("kill".parse::<Signal>().unwrap(), Signal::KILL);
        assert_eq!("19".parse::<Signal>().unwrap(), Signal::STOP);
        assert_eq!("SIGRTMIN+2".parse::<Signal>().unwrap(), Signal(36));
        assert!("SIGNOPE".parse::<Signal>().is_err());
        assert!("0".parse::<Signal>().is_err());
        assert_eq!(Signal(36).to_string(), "SIGRTMIN+2");
        assert_eq!(Signal::TERM.to_string(), "SIGTERM");
    }

    #[test]
    fn exec_events_are_tagged_json() {
        let ev = exec::ServerEvent::Started(ProcStarted { id: 3, pid: 42 });
        let json = serde_json::to_string(&ev).unwrap();
        assert_eq!(json, r#"{"event":"started","id":3,"pid":42}"#);
        let back: exec::ServerEvent = serde_json::from_str(&json).unwrap();
        assert_eq!(back, ev);
    }

    #[test]
    fn process_fault_bodies_have_defaults_and_compact_targets() {
        let k: KillAllRequest = serde_json::from_str("{}").unwrap();
        assert_eq!(k.signal, Signal::KILL);
        let r: RestartRequest = serde_json::from_str(r#"{"signal":2}"#).unwrap();
        assert_eq!((r.signal, r.grace_ms), (Signal::INT, 5_000));
        let s: NodeSignalRequest = serde_json::from_str(r#"{"signal":15,"target":{"name":"etcd"}}"#).unwrap();
        assert_eq!(s.target, SignalTarget::Name("etcd".into()));
        let s: NodeSignalRequest = serde_json::from_str(r#"{"signal":9,"target":{"pid":42}}"#).unwrap();
        assert_eq!(s.target, SignalTarget::Pid(42));
    }

    #[test]
    fn proc_spec_limits_name_the_limit() {
        let mut spec = ProcSpec::new("sh", ["-c", "true"]);
        assert!(spec.check_limits().is_ok());
        assert_eq!(
            spec.size(),
            5 + 5 + 7,
            "each string plus two quotes and a separator"
        );
        spec.args = vec![String::new(); limits::MAX_PROC_ARGS + 1];
        let e = spec.check_limits().unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidRequest);
        assert!(
            e.message.contains("MAX_PROC_ARGS") && e.message.contains("65536"),
            "{e}"
        );
        spec.args.clear();
        spec.env.insert("BIG".into(), "x".repeat(limits::MAX_PROC_SPEC));
        let e = spec.check_limits().unwrap_err();
        assert!(
            e.message.contains("MAX_PROC_SPEC") && e.message.contains("1048576 bytes"),
            "{e}"
        );
        spec.env.clear();
        spec.command = "y".repeat(limits::MAX_PROC_SPEC);
        let e = spec.check_limits().unwrap_err();
        assert!(e.message.len() < 400, "the command is cut in the message: {e}");
    }

    #[test]
    fn proc_spec_defaults_fill_missing_fields() {
        let spec: ProcSpec = serde_json::from_str(r#"{"command":"true"}"#).unwrap();
        assert_eq!(spec.stdout, OutputSpec::Pipe);
        assert_eq!(spec.stdin, StdinSpec::Null);
        assert!(spec.args.is_empty());
    }
}
