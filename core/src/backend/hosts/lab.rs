//! A simulated lab of hosts on this machine, for tests, benchmarks and trying the `hosts`
//! backend without machines: [`Lab::start`] makes a `netns` cluster and, in each of its nodes,
//! starts a **second**, persistent `chaos-agent` the way a service manager would
//! (`--on-heartbeat-loss wait`, a TLS directory issued from a long-lived CA, root and state
//! directories of its own), then writes an inventory pointing at those agents. The `hosts`
//! backend never starts them: it only finds them through the inventory, as on real machines.
//!
//! Everything lives in the netns cluster (namespaces, cgroups, claims: no name of ours can
//! collide with another runner's) and in one temporary directory; [`Lab::cleanup`] (or drop)
//! removes both, killing the lab's agents with their namespaces' cgroups.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chaos_proto::{OutputSpec, ProcSpec};

use crate::backend::agent_binary::{self, Linkage};
use crate::backend::{ClusterOptions, registry};
use crate::certs::ClusterCa;
use crate::cluster::Cluster;
use crate::{Error, Result};

/// Port the lab's host agents listen on (in their own namespaces: the netns agents use
/// [`crate::backend::netns::AGENT_PORT`]).
pub const LAB_AGENT_PORT: u16 = 7443;

/// Heartbeat timeout of the netns agents that carry the lab (not of the hosts' agents).
const LAB_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(60);

/// One simulated host.
#[derive(Debug, Clone)]
pub struct LabHost {
    /// Its name in the inventory.
    pub name: String,
    /// Where its agent listens.
    pub agent: SocketAddr,
    /// Its agent's `--root-dir` (run directories are made below it).
    pub root_dir: PathBuf,
    /// Its agent's log (stdout and stderr).
    pub log: PathBuf,
    /// Its network interfaces, the main one first.
    pub interfaces: Vec<String>,
}

/// A lab of hosts running persistent agents, and the inventory naming them.
pub struct Lab {
    cluster: Arc<dyn Cluster>,
    hosts: Vec<LabHost>,
    inventory: PathBuf,
    tls_dir: PathBuf,
    // Removed on drop, after the cluster (declared after it).
    _dir: tempfile::TempDir,
}

/// Whether a lab can be made here: the one line `netns` gives when it cannot.
pub fn availability() -> std::result::Result<(), String> {
    registry::available("netns").map(drop)
}

impl Lab {
    /// Makes `count` hosts named `n1`, `n2`, … whose agents, when no runner holds their lease,
    /// wait `idle_heartbeat_timeout` before they (again) heal and kill. `name` labels the
    /// underlying netns cluster.
    pub async fn start(name: &str, count: usize, idle_heartbeat_timeout: Duration) -> Result<Self> {
        availability().map_err(|why| Error::backend("hosts", format!("lab: {why}")))?;
        let binary = agent_binary::agent_binary(Linkage::Any).await?;
        let dir = tempfile::Builder::new()
            .prefix("chaos-hosts-lab-")
            .tempdir()
            .map_err(|e| Error::io("hosts lab: creating a temporary directory", e))?;
        let options = ClusterOptions {
            name: format!("{name}-lab"),
            // The lab's own agents must outlast faults a test puts on its hosts (a 100 % loss
            // cuts their heartbeats too); a crashed test's lab still goes within a minute.
            heartbeat_timeout: LAB_HEARTBEAT_TIMEOUT,
            ..ClusterOptions::default()
        };
        let cluster = crate::backend::new_cluster("netns", options).await?;
        let started = Self::populate(&cluster, dir.path(), &binary, count, idle_heartbeat_timeout).await;
        match started {
            Ok((hosts, inventory, tls_dir)) => Ok(Self {
                cluster,
                hosts,
                inventory,
                tls_dir,
                _dir: dir,
            }),
            Err(e) => {
                if let Err(c) = cluster.cleanup().await {
                    tracing::warn!("hosts lab: cleaning up after a failed start: {c}");
                }
                Err(e)
            }
        }
    }

    async fn populate(
        cluster: &Arc<dyn Cluster>,
        dir: &Path,
        binary: &Path,
        count: usize,
        idle_heartbeat_timeout: Duration,
    ) -> Result<(Vec<LabHost>, PathBuf, PathBuf)> {
        let io = |what: String| move |e| Error::io(format!("hosts lab: {what}"), e);
        let tls_dir = dir.join("ca");
        let ca = ClusterCa::generate("hosts-lab")?;
        ca.write(&tls_dir)?;
        ca.issue_runner()?.write_runner(&tls_dir)?;
        let nodes = cluster.create_nodes(count).await?;
        let mut hosts = Vec::with_capacity(count);
        for (i, node) in nodes.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let ip: IpAddr = *node.addresses().first().ok_or_else(|| {
                Error::backend("hosts", format!("lab: netns node {} has no address", node.name()))
            })?;
            let home = dir.join("hosts").join(&name);
            let (tls, root, state, log) = (
                home.join("tls"),
                home.join("root"),
                home.join("state"),
                home.join("agent.log"),
            );
            ca.issue_node(&name, &[ip], &[])?
                .write_node_dir(&tls, ca.cert_pem())?;
            std::fs::create_dir_all(&root).map_err(io(format!("creating {}", root.display())))?;
            let agent = SocketAddr::new(ip, LAB_AGENT_PORT);
            let spec = ProcSpec {
                command: binary.display().to_string(),
                args: vec![
                    "--listen".into(),
                    agent.to_string(),
                    "--tls-dir".into(),
                    tls.display().to_string(),
                    "--root-dir".into(),
                    root.display().to_string(),
                    "--state-dir".into(),
                    state.display().to_string(),
                    "--on-heartbeat-loss".into(),
                    "wait".into(),
                    "--heartbeat-timeout".into(),
                    format!("{}ms", idle_heartbeat_timeout.as_millis().max(1)),
                ],
                stdout: OutputSpec::File {
                    path: log.display().to_string(),
                    append: true,
                },
                stderr: OutputSpec::File {
                    path: log.display().to_string(),
                    append: true,
                },
                ..ProcSpec::default()
            };
            node.start(spec).await?;
            hosts.push(LabHost {
                name,
                agent,
                root_dir: root,
                log,
                interfaces: node.interfaces().to_vec(),
            });
        }
        for host in &hosts {
            wait_ready(host, Duration::from_secs(20)).await?;
        }
        let inventory = dir.join("inventory.toml");
        std::fs::write(&inventory, inventory_text(&tls_dir, &hosts))
            .map_err(io(format!("writing {}", inventory.display())))?;
        Ok((hosts, inventory, tls_dir))
    }

    /// The inventory file naming the lab's hosts.
    pub fn inventory(&self) -> &Path {
        &self.inventory
    }

    /// The runner's TLS directory (`ca.pem`, `ca.key`, `runner.pem`, `runner.key`).
    pub fn tls_dir(&self) -> &Path {
        &self.tls_dir
    }

    /// The hosts.
    pub fn hosts(&self) -> &[LabHost] {
        &self.hosts
    }

    /// Options of a `hosts` cluster named `name` over this lab.
    pub fn cluster_options(&self, name: &str) -> ClusterOptions {
        ClusterOptions {
            name: name.to_string(),
            backend_config: Some(self.inventory.clone()),
            ..ClusterOptions::default()
        }
    }

    /// Stops the lab: its agents, namespaces and temporary directory.
    pub async fn cleanup(self) -> Result<()> {
        self.cluster.cleanup().await
    }
}

/// The inventory of `hosts` (TOML).
fn inventory_text(tls_dir: &Path, hosts: &[LabHost]) -> String {
    let quote = |s: &str| format!("{s:?}");
    let mut text = format!("tls_dir = {}\n", quote(&tls_dir.display().to_string()));
    for host in hosts {
        let nics: Vec<String> = host.interfaces.iter().map(|n| quote(n)).collect();
        text.push_str(&format!(
            "\n[[hosts]]\nagent = {}\ninterfaces = [{}]\n",
            quote(&host.agent.to_string()),
            nics.join(", ")
        ));
    }
    text
}

/// Waits for the ready line in `host`'s log, within `bound`.
async fn wait_ready(host: &LabHost, bound: Duration) -> Result<()> {
    let deadline = Instant::now() + bound;
    loop {
        let log = std::fs::read_to_string(&host.log).unwrap_or_default();
        if log.contains(chaos_proto::READY_LINE_PREFIX) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let tail: String = log.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
            return Err(Error::backend(
                "hosts",
                format!(
                    "lab host {}: its agent did not print its ready line within {bound:?}; log {}: {tail}",
                    host.name,
                    host.log.display()
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
