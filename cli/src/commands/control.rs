//! The control socket of `chaos up` (`<state dir>/control.sock`): how `chaos fault` reaches the
//! faults only the cluster object can carry out — machine faults (a node's container paused,
//! stopped, disconnected), which the provisioner injects from outside the node and which no
//! agent can list or heal.
//!
//! `chaos up` holds the cluster, so it holds these faults and their TTLs: a machine fault heals
//! when its TTL passes even if the `chaos fault` that asked for it is long gone, and `chaos up`'s
//! cleanup heals what is left. The socket lives in the state directory (mode 0700, as it also
//! holds the runner's private key) and is itself mode 0600: whoever may read the key may inject.
//!
//! The protocol is one JSON request line and one JSON reply line per connection
//! ([`Request`], [`Reply`]); machine fault ids are `machine-<n>`, so `chaos fault heal ID` can
//! tell them from agent fault ids.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context;
use chaos::{Cluster, MachineFault, MachineFaultHandle, MachineFaultInfo};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Mutex;

/// The socket's file name in the state directory.
pub const SOCKET: &str = "control.sock";

/// Bound on one request, from connecting to the reply: a stopped container takes up to its stop
/// timeout (10 s) plus the agent's return to answer.
const REQUEST_BOUND: Duration = Duration::from_secs(60);

/// Bound on reading a request line once a client connected.
const READ_BOUND: Duration = Duration::from_secs(5);

/// The prefix of machine fault ids.
const ID_PREFIX: &str = "machine-";

/// One request to `chaos up`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Inject a machine fault on `node` for `ttl_ms`.
    Inject {
        /// The node.
        node: String,
        /// What to do to its machine.
        fault: MachineFault,
        /// Its TTL in milliseconds.
        ttl_ms: u64,
    },
    /// The active machine faults.
    List,
    /// Heal the fault with this id (`machine-<n>`).
    Heal {
        /// The fault's id.
        id: String,
    },
    /// Heal every machine fault (of `node`, or of every node).
    HealAll {
        /// Only this node's.
        node: Option<String>,
    },
}

/// An active machine fault, as `chaos fault` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MachineRecord {
    /// `machine-<n>`.
    pub id: String,
    /// The node whose machine it acts on.
    pub node: String,
    /// What it does.
    pub machine: MachineFault,
    /// The backend that carries it out.
    pub backend: String,
    /// When it heals by itself, in milliseconds since the epoch.
    pub expires_ms: u64,
}

/// `chaos up`'s answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// The fault injected.
    Injected(MachineRecord),
    /// The active faults.
    Faults(Vec<MachineRecord>),
    /// Whether the fault was still active (and is healed now).
    Healed(bool),
    /// The faults healed.
    HealedAll(Vec<MachineRecord>),
    /// The request failed; one line saying why.
    Error(String),
}

/// Whether `id` names a machine fault.
pub fn is_machine_id(id: &str) -> bool {
    id.strip_prefix(ID_PREFIX)
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn record(backend: &str, info: &MachineFaultInfo) -> MachineRecord {
    MachineRecord {
        id: format!("{ID_PREFIX}{}", info.id),
        node: info.node.clone(),
        machine: info.fault,
        backend: backend.to_string(),
        expires_ms: info
            .expires
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    }
}

/// What the server keeps: the cluster and the handles of the faults it injected.
struct Served {
    cluster: Arc<dyn Cluster>,
    handles: Mutex<HashMap<u64, MachineFaultHandle>>,
}

impl Served {
    async fn answer(&self, request: Request) -> Reply {
        let backend = self.cluster.backend();
        let active = self.cluster.list_machine_faults();
        // Handles of faults healed by their TTL are dropped here; the table is the truth.
        self.handles
            .lock()
            .await
            .retain(|id, _| active.iter().any(|f| f.id == *id));
        match request {
            Request::List => Reply::Faults(active.iter().map(|f| record(backend, f)).collect()),
            Request::Inject { node, fault, ttl_ms } => {
                let ttl = Duration::from_millis(ttl_ms);
                match self.cluster.inject_machine_fault(&node, fault, ttl).await {
                    Ok(handle) => {
                        let info = MachineFaultInfo {
                            id: handle.id(),
                            node: handle.node().to_string(),
                            fault: handle.fault(),
                            expires: handle.expires(),
                        };
                        self.handles.lock().await.insert(handle.id(), handle);
                        Reply::Injected(record(backend, &info))
                    }
                    Err(e) => Reply::Error(e.to_string()),
                }
            }
            Request::Heal { id } => {
                let Some(n) = id.strip_prefix(ID_PREFIX).and_then(|n| n.parse::<u64>().ok()) else {
                    return Reply::Error(format!("{id:?} is not a machine fault id (machine-<n>)"));
                };
                let handle = self.handles.lock().await.remove(&n);
                match handle {
                    None => Reply::Healed(false),
                    Some(handle) => match handle.heal().await {
                        Ok(healed) => Reply::Healed(healed),
                        Err(e) => Reply::Error(format!("healing {id} on {}: {e}", handle.node())),
                    },
                }
            }
            Request::HealAll { node } => {
                let chosen: Vec<u64> = active
                    .iter()
                    .filter(|f| node.as_deref().is_none_or(|n| f.node == n))
                    .map(|f| f.id)
                    .collect();
                let mut healed = Vec::new();
                let mut errors = Vec::new();
                for n in chosen {
                    let Some(handle) = self.handles.lock().await.remove(&n) else {
                        continue;
                    };
                    let info = active.iter().find(|f| f.id == n).expect("chosen from active");
                    match handle.heal().await {
                        Ok(true) => healed.push(record(backend, info)),
                        Ok(false) => {}
                        Err(e) => errors.push(format!("{ID_PREFIX}{n} on {}: {e}", info.node)),
                    }
                }
                if errors.is_empty() {
                    Reply::HealedAll(healed)
                } else {
                    Reply::Error(format!("healing machine faults: {}", errors.join("; ")))
                }
            }
        }
    }
}

/// Serves the control socket at `path` until the returned task is aborted. A stale socket file
/// (from a `chaos up` that was killed) is replaced.
pub fn serve(path: &Path, cluster: Arc<dyn Cluster>) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing the stale {}", path.display()));
        }
        _ => {}
    }
    let listener = UnixListener::bind(path).with_context(|| format!("listening on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("making {} private", path.display()))?;
    let served = Arc::new(Served {
        cluster,
        handles: Mutex::new(HashMap::new()),
    });
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let served = served.clone();
            tokio::spawn(async move {
                if let Err(e) = one_connection(stream, &served).await {
                    tracing::debug!("control connection: {e:#}");
                }
            });
        }
    }))
}

async fn one_connection(stream: UnixStream, served: &Served) -> anyhow::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    // A request is one short line: bounded in time and size.
    let mut reader = BufReader::new(tokio::io::AsyncReadExt::take(read, 64 * 1024));
    tokio::time::timeout(READ_BOUND, reader.read_line(&mut line))
        .await
        .context("no request line in time")??;
    let reply = match serde_json::from_str::<Request>(&line) {
        Ok(request) => served.answer(request).await,
        Err(e) => Reply::Error(format!("not a control request: {e}")),
    };
    let mut out = serde_json::to_vec(&reply)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    Ok(())
}

/// Bound on a listing: `chaos up` answers it from memory, so a longer wait means it is stopped
/// or stuck, and the agents' own answers should not wait for it.
pub const LIST_BOUND: Duration = Duration::from_secs(5);

/// Sends `request` to the `chaos up` of `state_dir` and returns its reply, within the bound of
/// a request that may act on a machine; an error reply becomes an error.
pub async fn ask(state_dir: &Path, request: &Request) -> anyhow::Result<Reply> {
    ask_within(state_dir, request, REQUEST_BOUND).await
}

/// [`ask`] within `bound`.
pub async fn ask_within(state_dir: &Path, request: &Request, bound: Duration) -> anyhow::Result<Reply> {
    let path = state_dir.join(SOCKET);
    let exchange = async {
        let mut stream = UnixStream::connect(&path).await.with_context(|| {
            format!(
                "reaching `chaos up` at {} (machine faults are held by the `chaos up` of this state \
                 directory: is it still running?)",
                path.display()
            )
        })?;
        let mut line = serde_json::to_vec(request)?;
        line.push(b'\n');
        stream.write_all(&line).await?;
        let mut reply = String::new();
        BufReader::new(stream).read_line(&mut reply).await?;
        serde_json::from_str::<Reply>(&reply)
            .with_context(|| format!("reading the reply of `chaos up` at {}", path.display()))
    };
    let reply = tokio::time::timeout(bound, exchange).await.map_err(|_| {
        anyhow::anyhow!(
            "`chaos up` at {} did not answer within {} (is it stopped?)",
            path.display(),
            humantime::format_duration(bound)
        )
    })??;
    match reply {
        Reply::Error(message) => anyhow::bail!("{message}"),
        reply => Ok(reply),
    }
}

/// Whether the `chaos up` of `state_dir` serves a control socket (older ones and stopped ones
/// do not).
pub fn available(state_dir: &Path) -> bool {
    state_dir.join(SOCKET).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_ids_are_told_from_agent_ids() {
        assert!(is_machine_id("machine-1"));
        assert!(is_machine_id("machine-42"));
        assert!(!is_machine_id("machine-"));
        assert!(!is_machine_id("machine-x"));
        assert!(!is_machine_id("partition-1"));
    }

    #[test]
    fn requests_and_replies_are_one_json_line_each() {
        let request = Request::Inject {
            node: "n1".into(),
            fault: MachineFault::Pause,
            ttl_ms: 5000,
        };
        let text = serde_json::to_string(&request).unwrap();
        assert_eq!(
            text,
            r#"{"op":"inject","node":"n1","fault":"pause","ttl_ms":5000}"#
        );
        let back: Request = serde_json::from_str(&text).unwrap();
        assert!(matches!(back, Request::Inject { ttl_ms: 5000, .. }));
        let reply = serde_json::to_string(&Reply::Healed(true)).unwrap();
        assert_eq!(reply, r#"{"healed":true}"#);
    }
}
