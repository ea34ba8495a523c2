//! The state directory of a cluster started by `chaos up`: what the other subcommands read to
//! reach it.
//!
//! | file | written | content |
//! |---|---|---|
//! | `up.pid` | first, exclusively | the owning `chaos up`'s pid and start time: the claim on the directory |
//! | `ca.pem`, `runner.pem`, `runner.key` (0600) | once the cluster exists | TLS material to reach the agents |
//! | `cluster.json` | last, atomically | [`ClusterState`]: backend, nodes, addresses |
//!
//! `cluster.json` appears only once the cluster is ready, and `chaos up` removes it first when
//! it shuts down, then the TLS material, then `up.pid`.

use std::fs;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use chaos::agent_client::AgentClient;
use chaos::backend::owner;
use chaos::certs::{self, Identity};
use chaos::proto::tls_files;
use serde::{Deserialize, Serialize};

use super::BadInput;

/// Name of the cluster description in a state directory.
pub const CLUSTER_FILE: &str = "cluster.json";
/// Name of the claim file in a state directory.
pub const PID_FILE: &str = "up.pid";
/// Version of the `cluster.json` format.
const FORMAT_VERSION: u32 = 1;

/// A process, identified by its pid and its start time (so that a reused pid is not mistaken
/// for the original process).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// Process id of `chaos up`.
    pub pid: u32,
    /// Its start time in clock ticks since boot (`/proc/PID/stat` field 22).
    pub start_time: u64,
}

impl Owner {
    /// The calling process.
    pub fn current() -> Self {
        let pid = std::process::id();
        Self {
            pid,
            start_time: owner::start_time(pid).unwrap_or(0),
        }
    }

    /// Whether the process still runs (exists, is not a zombie, and started when recorded).
    pub fn is_alive(&self) -> bool {
        owner::process_alive(self.pid, self.start_time)
    }
}

/// One node of a cluster, as `cluster.json` records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEntry {
    /// `n1`, `n2`, …
    pub name: String,
    /// Addresses at which the other nodes reach it.
    pub ips: Vec<IpAddr>,
    /// Where its agent listens; `None` for a cluster without agents (none of the registered
    /// backends; files of older versions for `local`).
    pub agent: Option<SocketAddr>,
    /// Its interfaces on the cluster network, main first, as its backend reported them (faults
    /// on an interface default to the first). Absent in files of older versions.
    #[serde(default)]
    pub interfaces: Vec<String>,
    /// The node's own directory.
    pub root_dir: String,
}

/// `cluster.json`: what later commands need to reach a cluster started by `chaos up`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Format version.
    pub version: u32,
    /// `netns` or `local`.
    pub backend: String,
    /// The `chaos up` process keeping the cluster alive.
    pub owner: Owner,
    /// The backend's own record of what the cluster holds (for `netns`, the file under
    /// `/run/chaos/netns/`), should `chaos up` die without cleaning up.
    pub backend_state_file: Option<PathBuf>,
    /// The nodes, in order.
    pub nodes: Vec<NodeEntry>,
}

/// A state directory given with `--state`.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

/// What a directory holds, as far as `up.pid` and `cluster.json` tell.
#[derive(Debug)]
pub enum Occupant {
    /// Neither file: free.
    Empty,
    /// A `chaos up` that still runs.
    Live(Owner),
    /// A `chaos up` that died without cleaning up (its `cluster.json`, if any).
    Stale(Owner, Option<ClusterState>),
}

impl StateDir {
    /// The directory `dir` (not touched yet).
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Path of `cluster.json`.
    pub fn cluster_file(&self) -> PathBuf {
        self.dir.join(CLUSTER_FILE)
    }

    /// Path of `up.pid`.
    pub fn pid_file(&self) -> PathBuf {
        self.dir.join(PID_FILE)
    }

    /// Creates the directory (mode 0700: it will hold a private key) if it does not exist.
    pub fn create(&self) -> anyhow::Result<()> {
        match fs::metadata(&self.dir) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(BadInput(format!(
                "--state {}: exists and is not a directory; pick a directory",
                self.dir.display()
            ))
            .into()),
            Err(_) => fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.dir)
                .with_context(|| format!("creating the state directory {}", self.dir.display())),
        }
    }

    /// Claims the directory for the calling process by creating `up.pid` exclusively.
    /// Returns `Ok(false)` when it is already claimed.
    pub fn claim(&self, owner: Owner) -> anyhow::Result<bool> {
        let path = self.pid_file();
        // Written aside, then hard-linked into place: the link fails if the file exists, and a
        // reader never sees it half-written.
        let tmp = self.dir.join(format!(".{PID_FILE}.{}", owner.pid));
        fs::write(&tmp, format!("{} {}\n", owner.pid, owner.start_time))
            .with_context(|| format!("writing {}", tmp.display()))?;
        let linked = fs::hard_link(&tmp, &path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e).with_context(|| format!("creating {}", path.display())),
        }
    }

    /// Who holds the directory: `up.pid` when present, else the owner recorded in
    /// `cluster.json`.
    pub fn occupant(&self) -> anyhow::Result<Occupant> {
        let cluster = self.try_load()?;
        let owner = match fs::read_to_string(self.pid_file()) {
            Ok(text) => Some(parse_pid_file(&text).ok_or_else(|| {
                BadInput(format!(
                    "{}: not a chaos up pid file (expected \"PID START_TIME\"); remove it if no \
                     chaos up uses this directory",
                    self.pid_file().display()
                ))
            })?),
            Err(e) if e.kind() == io::ErrorKind::NotFound => cluster.as_ref().map(|c| c.owner),
            Err(e) => return Err(e).with_context(|| format!("reading {}", self.pid_file().display())),
        };
        Ok(match owner {
            None => Occupant::Empty,
            Some(owner) if owner.is_alive() => Occupant::Live(owner),
            Some(owner) => Occupant::Stale(owner, cluster),
        })
    }

    /// Writes the TLS material a client needs: the CA certificate and the runner's identity
    /// (key 0600).
    pub fn write_tls(&self, ca_pem: &str, runner: &Identity) -> anyhow::Result<()> {
        let ca = self.dir.join(tls_files::CA_CERT);
        fs::write(&ca, ca_pem).with_context(|| format!("writing {}", ca.display()))?;
        runner
            .write_runner(&self.dir)
            .context("writing the runner's identity")?;
        Ok(())
    }

    /// Writes `cluster.json` atomically (a reader sees all of it or nothing).
    pub fn write_cluster(&self, state: &ClusterState) -> anyhow::Result<()> {
        let path = self.cluster_file();
        let tmp = self.dir.join(format!(".{CLUSTER_FILE}.tmp"));
        let json = serde_json::to_vec_pretty(state).context("encoding cluster.json")?;
        fs::write(&tmp, json).with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
    }

    /// Reads `cluster.json` if it exists.
    pub fn try_load(&self) -> anyhow::Result<Option<ClusterState>> {
        let path = self.cluster_file();
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let state: ClusterState = serde_json::from_str(&text).map_err(|e| {
            BadInput(format!(
                "{}: not a chaos cluster description ({e}); was it written by this version of chaos up?",
                path.display()
            ))
        })?;
        if state.version != FORMAT_VERSION {
            return Err(BadInput(format!(
                "{}: format version {} but this chaos reads version {FORMAT_VERSION}",
                path.display(),
                state.version
            ))
            .into());
        }
        Ok(Some(state))
    }

    /// Reads `cluster.json` of a running cluster, with a clear error when there is none or its
    /// `chaos up` has died.
    pub fn load_running(&self) -> anyhow::Result<ClusterState> {
        let Some(state) = self.try_load()? else {
            let starting = self.pid_file().exists();
            return Err(BadInput(if starting {
                format!(
                    "the cluster in {} is still starting (no {CLUSTER_FILE} yet); try again in a moment",
                    self.dir.display()
                )
            } else {
                format!(
                    "no cluster in {0} ({1} not found); start one with `chaos up --state {0}`",
                    self.dir.display(),
                    self.cluster_file().display()
                )
            })
            .into());
        };
        if !state.owner.is_alive() {
            anyhow::bail!(
                "the cluster in {} is not running: its chaos up (pid {}) has exited; start a new one \
                 with `chaos up --state {}`",
                self.dir.display(),
                state.owner.pid,
                self.dir.display()
            );
        }
        Ok(state)
    }

    /// Removes every file `chaos up` writes, `cluster.json` first and `up.pid` last.
    /// Missing files are fine; returns the first real error.
    pub fn remove_all(&self) -> io::Result<()> {
        let mut first = None;
        for name in [
            CLUSTER_FILE,
            tls_files::CA_CERT,
            tls_files::RUNNER_CERT,
            tls_files::RUNNER_KEY,
            super::control::SOCKET,
            PID_FILE,
        ] {
            match fs::remove_file(self.dir.join(name)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    first.get_or_insert(io::Error::new(e.kind(), format!("removing {name}: {e}")));
                }
                _ => {}
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// A client of `node`'s agent, authenticated with the directory's TLS material.
    pub fn client(&self, node: &NodeEntry) -> anyhow::Result<Arc<AgentClient>> {
        let addr = node.agent.ok_or_else(|| {
            BadInput(format!(
                "node {} has no agent address in cluster.json (a cluster without agents): restart it \
                 with this version of `chaos up`",
                node.name
            ))
        })?;
        let ca = fs::read_to_string(self.dir.join(tls_files::CA_CERT))
            .with_context(|| format!("reading {}", self.dir.join(tls_files::CA_CERT).display()))?;
        let runner = Identity::load_runner(&self.dir).context("loading the runner's identity")?;
        let tls = certs::client_config(&ca, &runner).context("building the TLS client configuration")?;
        Ok(Arc::new(AgentClient::new(node.name.clone(), addr, tls)))
    }
}

fn parse_pid_file(text: &str) -> Option<Owner> {
    let mut words = text.split_whitespace();
    let pid = words.next()?.parse().ok()?;
    let start_time = words.next().map_or(Some(0), |w| w.parse().ok())?;
    Some(Owner { pid, start_time })
}

impl ClusterState {
    /// A description of a cluster owned by the calling process.
    pub fn new(backend: &str, backend_state_file: Option<PathBuf>, nodes: Vec<NodeEntry>) -> Self {
        Self {
            version: FORMAT_VERSION,
            backend: backend.to_string(),
            owner: Owner::current(),
            backend_state_file,
            nodes,
        }
    }

    /// The node called `name`, or an error naming the known nodes.
    pub fn node(&self, name: &str) -> Result<&NodeEntry, BadInput> {
        self.nodes.iter().find(|n| n.name == name).ok_or_else(|| {
            let known: Vec<&str> = self.nodes.iter().map(|n| n.name.as_str()).collect();
            BadInput(format!(
                "unknown node {name:?}: the cluster has nodes {}",
                known.join(", ")
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_current_process_is_alive_and_a_reused_pid_is_not() {
        let me = Owner::current();
        assert!(me.start_time > 0);
        assert!(me.is_alive());
        let reused = Owner {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!reused.is_alive());
        let gone = Owner {
            pid: u32::MAX - 1,
            start_time: 0,
        };
        assert!(!gone.is_alive());
    }

    #[test]
    fn the_directory_is_claimed_once_and_a_dead_owner_is_stale() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(&tmp.path().join("s"));
        dir.create().unwrap();
        assert!(matches!(dir.occupant().unwrap(), Occupant::Empty));
        assert!(dir.claim(Owner::current()).unwrap());
        assert!(!dir.claim(Owner::current()).unwrap());
        assert!(matches!(dir.occupant().unwrap(), Occupant::Live(_)));
        dir.remove_all().unwrap();
        let dead = Owner {
            pid: u32::MAX - 1,
            start_time: 1,
        };
        assert!(dir.claim(dead).unwrap());
        assert!(matches!(dir.occupant().unwrap(), Occupant::Stale(o, None) if o == dead));
        dir.remove_all().unwrap();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn unknown_nodes_are_named_with_the_known_ones() {
        let node = |name: &str| NodeEntry {
            name: name.into(),
            ips: vec![],
            agent: None,
            interfaces: vec![],
            root_dir: "/".into(),
        };
        let state = ClusterState::new("local", None, vec![node("n1"), node("n2")]);
        assert_eq!(state.node("n2").unwrap().name, "n2");
        let err = state.node("n9").unwrap_err().to_string();
        assert!(err.contains("\"n9\"") && err.contains("n1, n2"), "{err}");
        let json = serde_json::to_string(&state).unwrap();
        assert_eq!(serde_json::from_str::<ClusterState>(&json).unwrap(), state);
    }
}
