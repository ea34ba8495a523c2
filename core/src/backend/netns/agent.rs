//! Finding the `chaos-agent` binary and launching it inside a node's namespace.

use std::fs::File;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::namespace;
use crate::{Error, Result};

/// Environment variable naming the agent binary explicitly.
pub const AGENT_BIN_ENV: &str = "CHAOS_AGENT_BIN";

/// The agent binary's file name.
const AGENT_NAME: &str = "chaos-agent";

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Finds the `chaos-agent` binary: `$CHAOS_AGENT_BIN`; else next to the running executable or in
/// its parent directory (tests run from `target/<profile>/deps`, the agent is built into
/// `target/<profile>`); else on `PATH`. Any backend that launches agents on this host uses it.
pub fn find_agent_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(AGENT_BIN_ENV) {
        let path = PathBuf::from(path);
        return if is_executable(&path) {
            Ok(path)
        } else {
            Err(Error::backend(
                "netns",
                format!("{AGENT_BIN_ENV}={}: not an executable file", path.display()),
            ))
        };
    }
    let beside_exe = std::env::current_exe().ok().into_iter().flat_map(|exe| {
        let dir = exe.parent().map(Path::to_path_buf);
        let parent = dir.as_deref().and_then(Path::parent).map(Path::to_path_buf);
        [dir, parent].into_iter().flatten()
    });
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>());
    beside_exe.chain(on_path).map(|dir| dir.join(AGENT_NAME)).find(|p| is_executable(p)).ok_or_else(|| {
        Error::backend(
            "netns",
            format!("{AGENT_NAME} binary not found: build it with `cargo build -p chaos-agent` or set {AGENT_BIN_ENV}"),
        )
    })
}

/// What to launch an agent with.
pub struct Launch<'a> {
    /// Node name, for errors.
    pub node: &'a str,
    /// The agent binary.
    pub binary: &'a Path,
    /// The node's network namespace.
    pub netns: &'a File,
    /// Address to listen on (inside the namespace).
    pub listen: SocketAddr,
    /// The node's TLS directory.
    pub tls_dir: &'a Path,
    /// The node's root directory (also the agent's working directory).
    pub root_dir: &'a Path,
    /// The node's cgroup; the agent itself goes into its `agent` child.
    pub cgroup: &'a Path,
    /// Where the agent's stderr goes.
    pub log: &'a Path,
    /// The agent's heartbeat timeout.
    pub heartbeat_timeout: Duration,
    /// Bound on the agent printing its ready line.
    pub ready_timeout: Duration,
}

/// A started agent that has announced it accepts connections.
pub struct Started {
    /// The agent process.
    pub child: Child,
    /// The address it announced.
    pub addr: SocketAddr,
}

/// Spawns the agent inside the node's namespace and cgroup and waits for its ready line.
/// On failure the process is killed and the error carries the end of its log.
pub async fn launch(l: Launch<'_>) -> Result<Started> {
    let node = l.node;
    let log = File::create(l.log)
        .map_err(|e| Error::io(format!("node {node}: creating {}", l.log.display()), e))?;
    let procs_path = l.cgroup.join("agent").join("cgroup.procs");
    let procs = std::fs::OpenOptions::new()
        .write(true)
        .open(&procs_path)
        .map_err(|e| Error::io(format!("node {node}: opening {}", procs_path.display()), e))?;
    let mut cmd = Command::new(l.binary);
    cmd.arg("--listen")
        .arg(l.listen.to_string())
        .arg("--tls-dir")
        .arg(l.tls_dir)
        .arg("--root-dir")
        .arg(l.root_dir)
        .arg("--cgroup")
        .arg(l.cgroup)
        .arg("--heartbeat-timeout")
        .arg(format!("{}ms", l.heartbeat_timeout.as_millis()))
        .current_dir(l.root_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        // Should the caller give up on the node half-way, the agent must not outlive it.
        .kill_on_drop(true);
    let ns_fd = l.netns.as_raw_fd();
    let procs_fd = procs.as_raw_fd();
    // SAFETY: the closure runs in the forked child before exec and only makes async-signal-safe
    // system calls (setns, write) on descriptors that stay open in the parent until `spawn`
    // returns; it allocates nothing and takes no locks.
    unsafe {
        cmd.pre_exec(move || {
            namespace::enter(ns_fd)?;
            // Writing "0" to cgroup.procs moves the writing process itself, before exec, so the
            // agent never runs outside its cgroup.
            if libc::write(procs_fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::io(format!("node {node}: starting agent {}", l.binary.display()), e))?;
    drop(procs);
    let Some(stdout) = child.stdout.take() else {
        let _ = child.start_kill();
        return Err(Error::backend(
            "netns",
            format!("node {node}: the agent's stdout was not captured"),
        ));
    };
    let mut lines = BufReader::new(stdout).lines();

    let ready = async {
        loop {
            match lines.next_line().await {
                Ok(Some(line)) => {
                    if let Some(rest) = line.strip_prefix(chaos_proto::READY_LINE_PREFIX) {
                        return rest.trim().parse::<SocketAddr>().map_err(|e| {
                            format!("agent announced an unparsable address {:?}: {e}", rest.trim())
                        });
                    }
                }
                Ok(None) => return Err("agent exited before it was ready".to_string()),
                Err(e) => return Err(format!("reading the agent's stdout: {e}")),
            }
        }
    };
    let outcome = match tokio::time::timeout(l.ready_timeout, ready).await {
        Ok(Ok(addr)) => Ok(addr),
        Ok(Err(message)) => Err(message),
        Err(_) => Err(format!(
            "agent did not print its ready line within {:?}",
            l.ready_timeout
        )),
    };
    match outcome {
        Ok(addr) => {
            // Keep draining stdout so the agent never blocks on (or dies of) a full pipe.
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            Ok(Started { child, addr })
        }
        Err(message) => {
            let _ = child.start_kill();
            let status = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
            let status = match status {
                Ok(Ok(s)) => format!(" ({s})"),
                _ => String::new(),
            };
            Err(Error::backend(
                "netns",
                format!(
                    "node {node}: {message}{status}; agent log {}: {}",
                    l.log.display(),
                    log_tail(l.log)
                ),
            ))
        }
    }
}

/// The last few lines of a log, joined on one line.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(5)..].join(" | ");
    if tail.is_empty() {
        "(empty)".to_string()
    } else {
        tail
    }
}
