//! The chaos node agent: an HTTPS server (TLS 1.3, client certificate required) that starts
//! and streams processes, moves files, tunnels TCP and injects faults for the runner,
//! implementing the server side of [`chaos_proto`].
//!
//! Every process it starts gets its own process group (and, with a cgroup directory, its own
//! child cgroup), so a whole tree can be signalled, frozen and killed. Faults ([`chaos_faults`])
//! carry a TTL and are healed when it expires; the agent's own port is exempt from every
//! network fault. When the agent is told to shut down (`POST /v1/shutdown`, SIGTERM, SIGINT) or
//! the runner stops heartbeating, it first heals every fault (thawing frozen processes), then
//! kills every tree it started — so a crashed runner leaks nothing. What it installed is
//! recorded in a state file under [`AgentConfig::state_dir`] before it is installed, so an
//! agent killed with SIGKILL is cleaned up by the next agent started with the same directory.
//!
//! Process faults reach only the node's processes: with a cgroup directory, those in its
//! subtree; without, the agent's descendants (it is a child subreaper and reaps the orphans it
//! adopts). Anything else is refused, naming the pid. Network faults can be switched off
//! ([`AgentConfig::network_faults`]) for a node that shares its network stack with others. Fault work runs on threads of the agent's
//! own, never behind file operations on tokio's blocking pool; a heal is verified, and a fault
//! whose heal failed stays listed with the error and is retried until it is healed.
//!
//! A client must present a certificate issued directly by the cluster CA for client
//! authentication. Even so, nothing it sends can pin one of the agent's threads or grow its
//! memory without bound: file operations touch only regular files and run a bounded number at a
//! time, and request bodies, WebSocket messages and process specs are bounded in size and time
//! (see [`chaos_proto::limits`]).
//!
//! Run as a service for machines that outlive runners (the `hosts` backend,
//! [`HeartbeatLossAction::Wait`]), the agent serves one runner at a time under a lease
//! ([`chaos_proto::lease`]): each run gets a directory of its own, and when the run ends —
//! released, shut down, taken over, or its runner's heartbeats stopped — the agent heals, kills
//! what the run started, removes the directory and waits for the next runner.
//!
//! The binary (`chaos-agent`) is a thin CLI over [`serve`]; launchers start it and wait for the
//! [`chaos_proto::READY_LINE_PREFIX`] line on its stdout. `chaos-agent install` writes its
//! systemd unit.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

mod api;
mod body;
mod dial;
mod exec;
mod faults;
mod files;
mod heartbeat;
mod lease;
mod measure;
mod procs;
mod server;
mod tls;

/// Settings of one agent.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Address to listen on; port 0 lets the kernel pick.
    pub listen: SocketAddr,
    /// Directory holding `ca.pem`, `node.pem` and `node.key` (see [`chaos_proto::tls_files`]).
    pub tls_dir: PathBuf,
    /// The node's root directory: default working directory of started processes.
    pub root_dir: PathBuf,
    /// A cgroup v2 directory (created by the launcher) under which each started process gets
    /// its own child cgroup `proc-<id>`. Without it, process groups only.
    pub cgroup: Option<PathBuf>,
    /// How long the agent waits without a heartbeat before it acts. The timer starts when the
    /// agent starts.
    pub heartbeat_timeout: Duration,
    /// What to do, after healing every fault and killing every process tree, when the
    /// heartbeat timer expires.
    pub on_heartbeat_loss: HeartbeatLossAction,
    /// Directory of the fault state file (and its lock; one agent per directory); `None` means
    /// `<root_dir>/.chaos-agent`. On start the agent heals whatever a previous agent recorded
    /// there.
    pub state_dir: Option<PathBuf>,
    /// Whether network faults (every kind but a freeze) may be installed. False for an agent
    /// whose node shares its network stack with other nodes (the `local` backend: every node is
    /// 127.0.0.1), where no rule could confine a fault to one node: the probe then reports those
    /// kinds unsupported and injecting one is refused with
    /// [`chaos_proto::ErrorKind::Unsupported`], saying why.
    pub network_faults: bool,
}

impl AgentConfig {
    /// The state directory in effect: [`AgentConfig::state_dir`] or `<root_dir>/.chaos-agent`.
    pub fn effective_state_dir(&self) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(|| self.root_dir.join(".chaos-agent"))
    }
}

impl AgentConfig {
    /// A configuration with the defaults of the CLI: root directory = current directory, no
    /// cgroup, 30 s heartbeat timeout, exit on heartbeat loss, state in
    /// `<root_dir>/.chaos-agent`, network faults allowed.
    pub fn new(listen: SocketAddr, tls_dir: impl Into<PathBuf>) -> Self {
        Self {
            listen,
            tls_dir: tls_dir.into(),
            root_dir: std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/")),
            cgroup: None,
            heartbeat_timeout: Duration::from_secs(30),
            on_heartbeat_loss: HeartbeatLossAction::Exit,
            state_dir: None,
            network_faults: true,
        }
    }
}

/// What the agent does once it has healed its faults and killed its process trees after
/// losing the runner's heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HeartbeatLossAction {
    /// [`serve`] returns [`Stopped::HeartbeatLost`]; the binary exits with code 3.
    #[default]
    Exit,
    /// `sync`, then power the machine off (`reboot(RB_POWER_OFF)`). Only for dedicated,
    /// disposable machines (cloud instances created for one test run): a node nobody controls
    /// any more then stops costing money.
    PowerOff,
    /// Log and keep serving.
    None,
    /// The persistent mode of an agent run as a service (the `hosts` backend): end the run —
    /// heal, kill, remove the run directory, release the lease ([`chaos_proto::lease`]) — and
    /// wait for the next runner. `POST /v1/shutdown` then ends the run too instead of the agent
    /// (SIGTERM still stops it).
    Wait,
}

impl FromStr for HeartbeatLossAction {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "exit" => Ok(Self::Exit),
            "poweroff" => Ok(Self::PowerOff),
            "none" => Ok(Self::None),
            "wait" => Ok(Self::Wait),
            other => Err(format!(
                "unknown heartbeat-loss action {other:?}: use exit, poweroff, none or wait"
            )),
        }
    }
}

/// Why [`serve`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// `POST /v1/shutdown`, SIGTERM or SIGINT: the faults were healed and the process trees
    /// killed.
    Shutdown,
    /// The heartbeat timer expired with [`HeartbeatLossAction::Exit`]: the faults were healed
    /// and the process trees killed.
    HeartbeatLost,
}

/// Errors that stop the agent. Start-up errors name the file or address involved.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// TLS material missing or unusable.
    #[error("TLS: {path}: {message}")]
    Tls {
        /// The file (or directory) involved.
        path: PathBuf,
        /// What was wrong and what to do.
        message: String,
    },
    /// The listening socket could not be bound.
    #[error("listening on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// A directory given in the configuration is unusable.
    #[error("{what} {path}: {message}")]
    BadDir {
        /// Which setting (`--root-dir`, `--cgroup`, `--state-dir`).
        what: &'static str,
        /// The directory.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// The fault state file could not be opened, or what a previous agent left in it could not
    /// be healed.
    #[error("fault state {path}: {message}")]
    Faults {
        /// The state file.
        path: PathBuf,
        /// What went wrong and what to do.
        message: String,
    },
    /// Installing a signal handler failed.
    #[error("installing signal handlers: {0}")]
    Signals(std::io::Error),
    /// Powering the machine off failed (after the process trees were killed).
    #[error("powering off after heartbeat loss: {0}")]
    PowerOff(nix::Error),
}

/// Runs the agent until it is shut down or loses the heartbeat.
///
/// Loads the TLS material, binds `config.listen`, heals the faults a previous agent left in the
/// state directory, calls `ready` with the bound address, then serves. On return every fault
/// has been healed and every process tree the agent started has been killed (and its cgroup
/// removed, best effort).
///
/// Makes the calling process a child subreaper that reaps the children it did not start: embed
/// it only in a process that does not wait for children of its own by pid.
pub async fn serve(
    config: AgentConfig,
    ready: impl FnOnce(SocketAddr) + Send,
) -> Result<Stopped, AgentError> {
    server::serve(Arc::new(config), ready).await
}
