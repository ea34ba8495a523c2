//! What every backend that starts the agent as a child process on this host (`local`, `netns`)
//! needs once: waiting for its ready line, and the end of its log for errors.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::io::{BufReader, Lines};
use tokio::process::ChildStdout;

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
