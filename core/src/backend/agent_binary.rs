//! Finding the `chaos-agent` binary on this host, for every backend that starts agents. One
//! environment variable, [`AGENT_BIN_ENV`], names it explicitly for all of them (a statically
//! linked agent serves every backend; `docker` needs one — see `docker::image::static_agent`).
//! Also what every backend that starts the agent as a child process needs once: waiting for its
//! ready line, and the end of its log for errors.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{BufReader, Lines};
use tokio::process::ChildStdout;

use crate::{Error, Result};

/// Environment variable naming the agent binary explicitly.
pub const AGENT_BIN_ENV: &str = "CHAOS_AGENT_BIN";

/// The agent binary's file name.
const AGENT_NAME: &str = "chaos-agent";

pub(crate) fn is_executable(path: &Path) -> bool {
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
            Err(Error::invalid(
                "the chaos-agent binary",
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
        Error::invalid(
            "the chaos-agent binary",
            format!("{AGENT_NAME} not found: build it with `cargo build -p chaos-agent` or set {AGENT_BIN_ENV}"),
        )
    })
}

/// Reads a starting agent's stdout until its ready line ([`chaos_proto::READY_LINE_PREFIX`]),
/// within `bound`; returns the address it announced, or why there is none. Afterwards drains
/// stdout in a task of its own, so the agent never blocks on (or dies of) a full pipe.
pub(crate) async fn wait_ready_line(
    mut lines: Lines<BufReader<ChildStdout>>,
    bound: Duration,
) -> std::result::Result<SocketAddr, String> {
    let wait = async {
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
    let addr = tokio::time::timeout(bound, wait)
        .await
        .map_err(|_| format!("agent did not print its ready line within {bound:?}"))??;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(addr)
}

/// The last few lines of an agent's log, joined on one line.
pub(crate) fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(5)..].join(" | ");
    if tail.is_empty() {
        "(empty)".to_string()
    } else {
        tail
    }
}
