//! Launching `chaos-agent` inside a node's namespace (the binary is found by
//! [`crate::backend::agent_binary`]).

use std::fs::File;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use super::namespace;
use crate::backend::agent_launch;
use crate::{Error, Result};

/// How a node's agent is started: the same every time, so a restarted agent lands in the same
/// node — namespace, cgroup, listen address, TLS and state directories — and appends to the
/// same log.
#[derive(Debug, Clone)]
pub struct AgentSpec {
    /// Node name, for errors.
    pub node: String,
    /// The agent binary.
    pub binary: PathBuf,
    /// Address to listen on (inside the namespace).
    pub listen: SocketAddr,
    /// The node's TLS directory.
    pub tls_dir: PathBuf,
    /// The node's root directory (also the agent's working directory).
    pub root_dir: PathBuf,
    /// The agent's state directory (its fault ledger), outside the root directory so nothing
    /// run on the node clobbers it.
    pub state_dir: PathBuf,
    /// The node's cgroup; the agent itself goes into its `agent` child.
    pub cgroup: PathBuf,
    /// Where the agent's stderr goes.
    pub log: PathBuf,
    /// The agent's heartbeat timeout.
    pub heartbeat_timeout: Duration,
    /// Bound on the agent printing its ready line.
    pub ready_timeout: Duration,
}

/// An agent process that has not announced itself yet.
pub struct Spawned {
    /// The agent process.
    pub child: Child,
    /// Its stdout, for [`ready`].
    pub lines: Lines<BufReader<ChildStdout>>,
}

/// Spawns the agent inside the node's namespace `netns` and its cgroup, in a process group of
/// its own (so a Ctrl-C in the runner's terminal reaches only the runner, which then heals and
/// collects before it stops the agents). The log is truncated for the first start and appended
/// to for a restart. Returns at once; [`ready`] waits for the ready line.
pub fn spawn(spec: &AgentSpec, netns: &File, restart: bool) -> Result<Spawned> {
    let node = &spec.node;
    let log = if restart {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log)
    } else {
        File::create(&spec.log)
    }
    .map_err(|e| Error::io(format!("node {node}: opening {}", spec.log.display()), e))?;
    let procs_path = spec.cgroup.join("agent").join("cgroup.procs");
    let procs = std::fs::OpenOptions::new()
        .write(true)
        .open(&procs_path)
        .map_err(|e| Error::io(format!("node {node}: opening {}", procs_path.display()), e))?;
    let mut cmd = Command::new(&spec.binary);
    cmd.arg("--listen")
        .arg(spec.listen.to_string())
        .arg("--tls-dir")
        .arg(&spec.tls_dir)
        .arg("--root-dir")
        .arg(&spec.root_dir)
        .arg("--state-dir")
        .arg(&spec.state_dir)
        .arg("--cgroup")
        .arg(&spec.cgroup)
        .arg("--heartbeat-timeout")
        .arg(format!("{}ms", spec.heartbeat_timeout.as_millis()))
        .current_dir(&spec.root_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .process_group(0)
        // Should the caller give up on the node half-way, the agent must not outlive it.
        .kill_on_drop(true);
    let ns_fd = netns.as_raw_fd();
    let procs_fd = procs.as_raw_fd();
    // SAFETY: the closure runs in the forked child before exec and only makes async-signal-safe
    // system calls (setns, write) on descriptors that stay open in the parent until `spawn`
    // returns; it allocates nothing and takes no locks.
    unsafe {
        cmd.pre_exec(move || {
            // setns only: the node shares the host's mount namespace, so /sys (and the cgroups
            // the agent heals) look the same to every agent of the node, first or restarted.
            namespace::enter(ns_fd)?;
            // Writing "0" to cgroup.procs moves the writing process itself, before exec, so the
            // agent never runs outside its cgroup.
            if libc::write(procs_fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| {
        Error::io(
            format!("node {node}: starting agent {}", spec.binary.display()),
            e,
        )
    })?;
    drop(procs);
    let Some(stdout) = child.stdout.take() else {
        let _ = child.start_kill();
        return Err(Error::backend(
            "netns",
            format!("node {node}: the agent's stdout was not captured"),
        ));
    };
    Ok(Spawned {
        child,
        lines: BufReader::new(stdout).lines(),
    })
}

/// Waits for a spawned agent's ready line; returns the address it announced. On failure the
/// error carries the end of its log, and the caller (which holds the `Child`) kills the agent.
pub async fn ready(spec: &AgentSpec, lines: Lines<BufReader<ChildStdout>>) -> Result<SocketAddr> {
    agent_launch::wait_ready_line(lines, spec.ready_timeout)
        .await
        .map_err(|message| {
            Error::backend(
                "netns",
                format!(
                    "node {}: {message}; agent log {}: {}",
                    spec.node,
                    spec.log.display(),
                    agent_launch::log_tail(&spec.log)
                ),
            )
        })
}
