//! The `local` backend: every node is a `chaos-agent` process on this host, listening on
//! `127.0.0.1`, with a root directory of its own — a [`Provisioner`] of the generic
//! [`AgentCluster`], like every other backend. The agent does everything a node does (processes,
//! files, dial, process faults, restart); this module only starts and stops agent processes.
//!
//! Agents run as the runner's user: `local` needs no root. Without a cgroup, an agent's process
//! faults reach only its own descendants (it is a child subreaper, so daemonized descendants stay
//! its own), never another node's or the host's processes.
//!
//! # What `local` cannot do
//!
//! Nodes are not isolated from each other or from the host:
//! - they share the host's network: every node's address is `127.0.0.1`, two nodes cannot listen
//!   on the same port, and **network faults are refused** (partition, loss, packet effects,
//!   bandwidth, link): the agents run with `--no-network-faults`, since no rule could tell one
//!   node's packets from another's, and this backend never changes the host's firewall or
//!   qdiscs. Use `netns` or `docker`;
//! - they share the filesystem and the user: only paths under [`crate::Node::root_dir`] belong to
//!   a node, and tests must build every path from it;
//! - there is no machine to pause or stop: no machine faults.
//!
//! # Cleanup
//!
//! [`crate::Cluster::cleanup`] asks each agent to shut down (it heals its faults and kills every
//! process tree it started), then removes the cluster's temporary directory. Dropping the cluster
//! does the same synchronously: SIGTERM (the agent's own graceful shutdown), a short wait, then
//! SIGKILL. Either way it then kills whatever still carries the cluster's [`CLUSTER_ENV`] mark —
//! the processes of an agent that was SIGKILLed and restarted, which no agent knows any more.
//! If the runner itself is killed, its agents lose its heartbeat and, after
//! [`super::ClusterOptions::heartbeat_timeout`], kill what they started and exit; only the
//! temporary directory is left (`chaos gc` has nothing to collect here).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::agent_binary::{self, Linkage};
use super::agent_launch;
use super::{AgentCluster, ClusterOptions, Limits, Machine, MachineRequest, Provisioner};
use crate::cluster::Cluster;
use crate::{Error, Result};

const NAME: &str = "local";

/// How long an agent may take to shut down gracefully (heal, kill its trees) on teardown before
/// it is killed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// The registry's entry for `local` ([`crate::backend::registry`]).
pub const BACKEND: crate::backend::Backend = crate::backend::Backend {
    name: NAME,
    summary: "chaos-agent processes on this host (127.0.0.1), no isolation, no network faults",
    availability: agent_binary::obtainable,
    create: |options| {
        Box::pin(async move { Ok(Arc::new(LocalCluster::new(options).await?) as Arc<dyn Cluster>) })
    },
    collect_garbage: None,
    limits: Limits {
        max_nodes: 1000,
        provision_time: Duration::from_secs(5),
    },
    isolated_network: false,
    machine_faults: &[],
    host_labels: false,
    ship_linkage: crate::backend::workspace_binary::Linkage::Any,
};

/// A cluster of local nodes: see the [module documentation](self).
pub type LocalCluster = AgentCluster<Local>;

impl AgentCluster<Local> {
    /// Creates an empty local cluster with its temporary directory; the agent binary is found
    /// or built once ([`agent_binary::agent_binary`]), and creation fails saying how to get one
    /// when neither works.
    pub async fn new(options: ClusterOptions) -> Result<Self> {
        let binary = agent_binary::agent_binary(Linkage::Any).await?;
        let local = Local::new(&options.name, binary)?;
        AgentCluster::with_provisioner(local, options)
    }

    /// The cluster's temporary directory, under which every node's root directory lives
    /// (`<dir>/n<k>`); `None` after cleanup.
    pub fn dir(&self) -> Option<PathBuf> {
        self.provisioner().dir()
    }
}

/// Environment variable every local agent carries — and so, by inheritance, every process it
/// starts: the cluster's directory. Teardown kills whatever still carries it: the processes of
/// an agent that was killed (SIGKILL) and restarted, which no agent knows any more (netns kills
/// a node's cgroup for the same reason). A process started with a cleared environment escapes.
pub const CLUSTER_ENV: &str = "CHAOS_LOCAL_CLUSTER";

/// The local provisioner: agent processes on this host. See the [module documentation](self).
pub struct Local {
    binary: PathBuf,
    /// The cluster's temporary directory; `None` once torn down.
    dir: Mutex<Option<tempfile::TempDir>>,
    /// Its path, the value of [`CLUSTER_ENV`].
    path: PathBuf,
    agents: Mutex<HashMap<String, Agent>>,
}

/// One node's agent process and how to start it again.
struct Agent {
    child: Child,
    launch: Launch,
}

/// How a node's agent is started: the same every time, so a restarted agent listens where its
/// predecessor did and heals what it left in the same state directory.
#[derive(Debug, Clone)]
struct Launch {
    /// The node's root directory (also the agent's working directory).
    root: PathBuf,
    /// The agent's TLS and state directories and its log.
    files: PathBuf,
    /// Where it listens (port 0 for the first start: the kernel picks).
    listen: SocketAddr,
    heartbeat_timeout: Duration,
    ready_timeout: Duration,
}

impl Launch {
    fn log(&self) -> PathBuf {
        self.files.join("agent.log")
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Local {
    /// A provisioner with its temporary directory (named after the cluster `label`).
    pub fn new(label: &str, binary: PathBuf) -> Result<Self> {
        // The label ends up in a path: keep only characters that cannot escape or confuse it.
        let label: String = label
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
        Ok(Self {
            binary,
            path: dir.path().to_path_buf(),
            dir: Mutex::new(Some(dir)),
            agents: Mutex::new(HashMap::new()),
        })
    }

    /// The cluster's temporary directory; `None` once torn down.
    pub fn dir(&self) -> Option<PathBuf> {
        lock(&self.dir).as_ref().map(|d| d.path().to_path_buf())
    }

    /// Starts `node`'s agent (appending to its log on a restart) and waits for its ready line.
    async fn spawn(&self, node: &str, agent: &Launch, restart: bool) -> Result<(Child, SocketAddr)> {
        let log_path = agent.log();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(restart)
            .write(true)
            .truncate(!restart)
            .open(&log_path)
            .map_err(|e| Error::io(format!("node {node}: opening {}", log_path.display()), e))?;
        let mut child = Command::new(&self.binary)
            .arg("--listen")
            .arg(agent.listen.to_string())
            .arg("--tls-dir")
            .arg(agent.files.join("tls"))
            .arg("--root-dir")
            .arg(&agent.root)
            .arg("--state-dir")
            .arg(agent.files.join("state"))
            .arg("--heartbeat-timeout")
            .arg(format!("{}ms", agent.heartbeat_timeout.as_millis()))
            .arg("--no-network-faults")
            .env(CLUSTER_ENV, &self.path)
            .current_dir(&agent.root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            // A Ctrl-C in the runner's terminal reaches only the runner, which then heals and
            // collects before it stops the agents.
            .process_group(0)
            // Should the caller give up on the node half-way, the agent must not outlive it.
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                Error::io(
                    format!("node {node}: starting agent {}", self.binary.display()),
                    e,
                )
            })?;
        let Some(stdout) = child.stdout.take() else {
            return Err(Error::backend(
                NAME,
                format!("node {node}: the agent's stdout was not captured"),
            ));
        };
        match agent_launch::wait_ready_line(BufReader::new(stdout).lines(), agent.ready_timeout).await {
            Ok(addr) => Ok((child, addr)),
            Err(message) => Err(Error::backend(
                NAME,
                format!(
                    "node {node}: {message}; agent log {}: {}",
                    log_path.display(),
                    agent_launch::log_tail(&log_path)
                ),
            )),
        }
    }

    /// Takes every agent and asks those still running to shut down (SIGTERM: each heals its
    /// faults and kills its process trees); [`kill_stragglers`] follows.
    fn terminate_all(&self) -> Vec<Agent> {
        let agents: Vec<Agent> = lock(&self.agents).drain().map(|(_, a)| a).collect();
        for agent in &agents {
            if let Some(pid) = agent.child.id() {
                // SAFETY: kill(2) takes two integers and touches no memory of ours; the pid is
                // our own unreaped child's (`id()` is `None` once it was reaped), so it cannot
                // have been reused.
                unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            }
        }
        agents
    }

    /// Takes the cluster's directory, to be removed.
    fn take_dir(&self) -> Option<tempfile::TempDir> {
        lock(&self.dir).take()
    }
}

/// Whether any of `agents` still runs.
fn any_running(agents: &mut [Agent]) -> bool {
    agents.iter_mut().any(|a| matches!(a.child.try_wait(), Ok(None)))
}

/// Kills the agents that did not shut down within [`SHUTDOWN_GRACE`] (their process trees may
/// then survive: said in the log).
fn kill_stragglers(agents: &mut [Agent]) {
    for agent in agents {
        if matches!(agent.child.try_wait(), Ok(None)) {
            tracing::warn!(
                log = %agent.launch.log().display(),
                "local agent did not shut down within {SHUTDOWN_GRACE:?}; killed (what it started may survive)"
            );
            let _ = agent.child.start_kill();
        }
    }
}

/// SIGKILLs every process of this user that carries `CLUSTER_ENV=<dir>` (see [`CLUSTER_ENV`]).
/// Blocking: reads `/proc`.
#[cfg(target_os = "linux")]
fn kill_marked(dir: &std::path::Path) {
    use std::os::unix::ffi::OsStrExt;
    let mut marker = format!("{CLUSTER_ENV}=").into_bytes();
    marker.extend_from_slice(dir.as_os_str().as_bytes());
    let me = std::process::id() as i32;
    let Ok(processes) = chaos_faults::process::processes() else {
        return;
    };
    for (pid, _) in processes {
        // Gone, a kernel thread, or another user's (unreadable): not the cluster's.
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if pid != me && environ.split(|b| *b == 0).any(|var| var == marker.as_slice()) {
            tracing::info!(pid, "local: killing a process its (killed) agent left behind");
            // SAFETY: kill(2) takes two integers and touches no memory of ours; `pid` is a
            // positive pid read from /proc, never 0 or -1.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn kill_marked(_dir: &std::path::Path) {}

/// Kills what is left of the cluster's processes, then removes its directory. Blocking.
fn remove_dir(dir: tempfile::TempDir) -> Result<()> {
    kill_marked(dir.path());
    let path = dir.path().to_path_buf();
    dir.close()
        .map_err(|e| Error::io(format!("local backend: removing {}", path.display()), e))
}

#[async_trait]
impl Provisioner for Local {
    fn name(&self) -> &'static str {
        NAME
    }

    fn limits(&self) -> Limits {
        BACKEND.limits
    }

    async fn provision(&self, request: MachineRequest<'_>) -> Result<Machine> {
        let node = request.name.clone();
        let base = self
            .dir()
            .ok_or_else(|| Error::backend(NAME, "cannot create nodes: the cluster was already cleaned up"))?;
        let root = base.join(&node);
        // The agent's own files sit beside the root directories, where nothing run on a node
        // is told to write.
        let files = base.join(".agents").join(&node);
        for dir in [&root, &files] {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::io(format!("node {node}: creating {}", dir.display()), e))?;
        }
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        request
            .issue_identity(&[ip], &[])?
            .write_node_dir(&files.join("tls"), request.ca_pem())?;
        let root_dir = root
            .to_str()
            .ok_or_else(|| Error::backend(NAME, format!("temporary directory {root:?} is not UTF-8")))?
            .to_string();
        let mut launch = Launch {
            root,
            files,
            listen: SocketAddr::new(ip, 0),
            heartbeat_timeout: request.heartbeat_timeout,
            ready_timeout: request.ready_timeout,
        };
        let (child, listen) = self.spawn(&node, &launch, false).await?;
        launch.listen = listen;
        lock(&self.agents).insert(node, Agent { child, launch });
        Ok(Machine {
            agent: listen,
            ips: vec![ip],
            // The host's loopback is everyone's, not the node's own.
            interfaces: Vec::new(),
            root_dir,
        })
    }

    async fn release(&self, node: &str) -> Result<()> {
        let removed = lock(&self.agents).remove(node);
        if let Some(mut agent) = removed {
            let _ = agent.child.kill().await;
        }
        Ok(())
    }

    async fn teardown(&self) -> Result<()> {
        // The cluster asked each agent to shut down already; this catches stragglers.
        let mut agents = self.terminate_all();
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        while Instant::now() < deadline && any_running(&mut agents) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        kill_stragglers(&mut agents);
        match self.take_dir() {
            Some(dir) => tokio::task::spawn_blocking(move || remove_dir(dir))
                .await
                .map_err(|e| Error::backend(NAME, format!("removing the cluster's directory: {e}")))?,
            None => Ok(()),
        }
    }

    fn teardown_now(&self) {
        let mut agents = self.terminate_all();
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        while Instant::now() < deadline && any_running(&mut agents) {
            std::thread::sleep(Duration::from_millis(10));
        }
        kill_stragglers(&mut agents);
        if let Some(dir) = self.take_dir()
            && let Err(e) = remove_dir(dir)
        {
            tracing::warn!("{e}");
        }
    }

    async fn agent_status(&self, node: &str) -> Option<String> {
        match lock(&self.agents).get_mut(node).map(|a| a.child.try_wait()) {
            Some(Ok(None)) => None,
            Some(Ok(Some(status))) => Some(status.to_string()),
            Some(Err(e)) => Some(format!("waiting for it failed: {e}")),
            None => Some("its node is gone".to_string()),
        }
    }

    async fn restart_agent(&self, node: &str) -> Result<()> {
        let released = || Error::backend(NAME, format!("node {node}: released, not restarted"));
        let launch = lock(&self.agents)
            .get(node)
            .map(|a| a.launch.clone())
            .ok_or_else(released)?;
        let (child, _) = self.spawn(node, &launch, true).await?;
        match lock(&self.agents).get_mut(node) {
            Some(agent) => agent.child = child,
            // Released meanwhile: `child` is killed on drop.
            None => return Err(released()),
        }
        Ok(())
    }

    async fn diagnose(&self, node: &str) -> String {
        match lock(&self.agents).get(node) {
            Some(agent) => format!(
                "agent log {}: {}",
                agent.launch.log().display(),
                agent_launch::log_tail(&agent.launch.log())
            ),
            None => String::new(),
        }
    }

    fn describe(&self) -> Vec<(&'static str, String)> {
        self.dir()
            .map(|d| vec![("directory", d.display().to_string())])
            .unwrap_or_default()
    }
}
