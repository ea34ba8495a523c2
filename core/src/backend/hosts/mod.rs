//! The `hosts` backend: the cluster is an **inventory** of machines that already run
//! `chaos-agent` as a service (`chaos-agent install`, `--on-heartbeat-loss wait`), reached with
//! the runner identity of a long-lived CA (`chaos certs init`). See `docs/bare-metal.md`.
//!
//! Nothing is created on a machine but a **run directory**: creating node `k` takes the `k`th
//! host of the [`Inventory`] (its `name`, or `n<k>`) — of the hosts whose labels include every
//! pair of [`ClusterOptions::host_labels`] when a scenario selects some — takes its agent's **lease**
//! ([`chaos_proto::lease`]) — one runner at a time; another runner gets "host rack1-a is in use
//! by runner WHO since WHEN" unless the inventory says `takeover = true` — and uses the fresh
//! directory the agent made for the run as the node's root directory. Cleanup (and `Drop`)
//! ends the run on every host: the agent heals every fault, kills every process tree it
//! started, removes the run directory and releases the lease, then waits for the next runner.
//! A runner that dies does the same by silence: the lease lives only as long as its heartbeats.
//! A failed run ([`crate::Cluster::run_failed`]) with `keep_failed_runs` (the inventory's, or
//! [`ClusterOptions::keep_failed_runs`]) keeps each host's run directory instead; with the
//! inventory's, so does a runner that dies ([`LeaseRequest::keep_on_heartbeat_loss`]).
//!
//! The agents are services: this backend never starts one, and "restarting" an agent the
//! supervisor found without our lease (the service was restarted) means taking the lease again.
//! No machine faults (the machines are not ours to pause or power off); `chaos gc` has nothing
//! to collect (every host cleans up after a runner it stops hearing from).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use chaos_proto::ErrorKind;
use chaos_proto::lease::LeaseRequest;

use super::{AgentCluster, ClusterOptions, Limits, Machine, MachineRequest, Provisioner};
use crate::agent_client::AgentClient;
use crate::certs::{self, ClusterCa, Identity};
use crate::cluster::{Cluster, KeptDir};
use crate::{Error, Result};

mod inventory;
#[cfg(target_os = "linux")]
pub mod lab;

pub use inventory::{Host, Inventory};

const NAME: &str = "hosts";

/// Bound of ending the run on every host at teardown.
const RELEASE_BOUND: Duration = Duration::from_secs(10);

/// Bound of asking an agent whether our lease still holds.
const STATUS_BOUND: Duration = Duration::from_secs(2);

/// The registry's entry for `hosts` ([`crate::backend::registry`]).
pub const BACKEND: crate::backend::Backend = crate::backend::Backend {
    name: NAME,
    summary: "machines of an inventory (--inventory FILE) that run chaos-agent as a service; one runner at a time",
    // Nothing is needed on this machine: the agents run on the hosts. A missing or bad
    // inventory is an error of `create`, naming the file, line and field.
    availability: || Ok(()),
    create: |options| {
        Box::pin(async move { Ok(Arc::new(HostsCluster::new(options).await?) as Arc<dyn Cluster>) })
    },
    collect_garbage: None,
    limits: Limits {
        max_nodes: 1000,
        provision_time: Duration::from_secs(10),
    },
    isolated_network: true,
    machine_faults: &[],
    host_labels: true,
    ship_linkage: crate::backend::workspace_binary::Linkage::Static,
};

/// A cluster of inventory hosts: see the [module documentation](self).
pub type HostsCluster = AgentCluster<Hosts>;

impl AgentCluster<Hosts> {
    /// A cluster over the inventory at [`ClusterOptions::backend_config`]: reads it and the
    /// runner's identity from its `tls_dir`. Touches no host yet.
    pub async fn new(options: ClusterOptions) -> Result<Self> {
        let Some(path) = options.backend_config.clone() else {
            return Err(Error::backend(
                NAME,
                "needs an inventory of machines running chaos-agent: pass --inventory FILE \
                 (ClusterOptions::backend_config); see docs/bare-metal.md",
            ));
        };
        let inventory = Inventory::load(&path)?;
        let hint = |e: certs::CertError| {
            Error::backend(
                NAME,
                format!(
                    "inventory {}: tls_dir {}: {e} (make it with `chaos certs init {}`)",
                    path.display(),
                    inventory.tls_dir.display(),
                    inventory.tls_dir.display()
                ),
            )
        };
        let ca = ClusterCa::load(&inventory.tls_dir).map_err(hint)?;
        let runner = Identity::load_runner(&inventory.tls_dir).map_err(hint)?;
        let tls = certs::client_config(ca.cert_pem(), &runner)?;
        let hosts = Hosts::new(inventory, &options.name, tls).select(&options.host_labels);
        Self::with_identity(hosts, options, ca, runner)
    }
}

/// The provisioner of `hosts`: leases inventory machines. See the [module documentation](self).
pub struct Hosts {
    inventory: Inventory,
    /// The label selector ([`ClusterOptions::host_labels`]); empty: every host.
    selector: BTreeMap<String, String>,
    /// The hosts nodes are made on, in inventory order: those the selector matches.
    selected: Vec<Host>,
    /// This cluster's run id: names the run directory on every host.
    run: String,
    /// Who we are, as a refused runner is told.
    runner: String,
    tls: Arc<rustls::ClientConfig>,
    takeover: AtomicBool,
    /// Set when a failed run keeps its directories: ending the run says `keep`.
    keep: AtomicBool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Hosts leased and not released, by node name, with the heartbeat timeout asked for.
    leased: HashMap<String, (Arc<AgentClient>, Duration)>,
    torn_down: bool,
}

/// A run id from the cluster's name, this process and the time: unique per runner and run.
fn run_id(cluster: &str) -> String {
    let name: String = cluster
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(32)
        .collect();
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!("{}-{}-{ms}", name.trim_start_matches('.'), std::process::id())
}

/// `user@host (pid N)`.
fn runner_name() -> String {
    let user = std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| nix::unistd::getuid().to_string());
    format!("{user}@{} (pid {})", super::owner::hostname(), std::process::id())
}

impl Hosts {
    /// A provisioner over `inventory`, for the cluster named `cluster`, authenticating with
    /// `tls` (the runner identity of the inventory's `tls_dir`).
    pub fn new(inventory: Inventory, cluster: &str, tls: Arc<rustls::ClientConfig>) -> Self {
        Self {
            takeover: AtomicBool::new(inventory.takeover),
            keep: AtomicBool::new(false),
            selector: BTreeMap::new(),
            selected: inventory.hosts.clone(),
            inventory,
            run: run_id(cluster),
            runner: runner_name(),
            tls,
            state: Mutex::new(State::default()),
        }
    }

    /// Makes nodes only on the hosts whose labels include every pair of `selector`, in
    /// inventory order (an empty selector keeps every host).
    pub fn select(mut self, selector: &BTreeMap<String, String>) -> Self {
        self.selector = selector.clone();
        self.selected = self
            .inventory
            .hosts
            .iter()
            .filter(|h| selector.iter().all(|(k, v)| h.labels.get(k) == Some(v)))
            .cloned()
            .collect();
        self
    }

    /// The hosts nodes are made on: those the label selector matches, in inventory order.
    pub fn selected(&self) -> &[Host] {
        &self.selected
    }

    /// `the inventory FILE lists N hosts` or `… N hosts labelled rack=1 (M in all)`, and
    /// their names.
    fn describe_selected(&self) -> String {
        let names = self
            .selected
            .iter()
            .map(|h| h.name.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let path = self.inventory.path.display();
        let n = self.selected.len();
        if self.selector.is_empty() {
            format!("the inventory {path} lists {n} hosts ({names})")
        } else {
            format!(
                "the inventory {path} lists {n} hosts labelled {} ({names}; {} hosts in all)",
                super::format_labels(&self.selector),
                self.inventory.hosts.len()
            )
        }
    }

    /// The inventory.
    pub fn inventory(&self) -> &Inventory {
        &self.inventory
    }

    /// This cluster's run id (the run directory's name on every host).
    pub fn run_id(&self) -> &str {
        &self.run
    }

    /// Whether hosts another runner holds are taken over (ending that run) instead of refused.
    pub fn set_takeover(&self, takeover: bool) {
        self.takeover.store(takeover, Ordering::SeqCst);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn host(&self, node: &str) -> Result<&Host> {
        self.selected.iter().find(|h| h.name == node).ok_or_else(|| {
            Error::backend(
                NAME,
                format!(
                    "node {node}: {}; add hosts or ask for fewer nodes",
                    self.describe_selected()
                ),
            )
        })
    }

    /// Takes (or renews) `node`'s lease; returns the run directory.
    async fn lease(&self, node: &str, client: &AgentClient, heartbeat_timeout: Duration) -> Result<String> {
        let request = LeaseRequest {
            runner: self.runner.clone(),
            run: self.run.clone(),
            takeover: self.takeover.load(Ordering::SeqCst),
            heartbeat_timeout_ms: heartbeat_timeout.as_millis().max(1) as u64,
            keep_on_heartbeat_loss: self.inventory.keep_failed_runs,
        };
        match client.take_lease(&request).await {
            Ok(lease) => Ok(lease.run_dir),
            Err(Error::Api { error, .. }) if error.kind == ErrorKind::Conflict => Err(Error::backend(
                NAME,
                format!(
                    "host {node} is {} (set `takeover = true` in the inventory {} to end that run)",
                    error
                        .message
                        .split("; ask for a takeover")
                        .next()
                        .unwrap_or(&error.message),
                    self.inventory.path.display()
                ),
            )),
            Err(e @ Error::Unreachable { .. }) => Err(Error::backend(
                NAME,
                format!(
                    "host {node}: {e} (is chaos-agent running there — `systemctl status chaos-agent` — \
                     and its port open to this machine?)"
                ),
            )),
            Err(e) => Err(e),
        }
    }

    /// Ends the run on every leased host (or only `only`), concurrently, each bounded.
    async fn release_all(&self, only: Option<&str>) -> Result<()> {
        let leased: Vec<(String, Arc<AgentClient>)> = {
            let mut state = self.lock();
            let names: Vec<String> = state
                .leased
                .keys()
                .filter(|n| only.is_none_or(|o| o == n.as_str()))
                .cloned()
                .collect();
            names
                .into_iter()
                .filter_map(|n| state.leased.remove(&n).map(|(c, _)| (n, c)))
                .collect()
        };
        let run = &self.run;
        let keep = self.keep.load(Ordering::SeqCst);
        let releases = leased.iter().map(|(node, client)| async move {
            match tokio::time::timeout(RELEASE_BOUND, client.release_lease(run, keep)).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(format!("host {node}: ending run {run}: {e}")),
                Err(_) => Err(format!(
                    "host {node}: ending run {run} did not finish within {RELEASE_BOUND:?} (its agent ends \
                     the run by itself once our heartbeats stop)"
                )),
            }
        });
        let failures: Vec<String> = futures_util::future::join_all(releases)
            .await
            .into_iter()
            .filter_map(std::result::Result::err)
            .collect();
        if failures.is_empty() {
            Ok(())
        } else {
            Err(Error::backend(NAME, failures.join("; ")))
        }
    }
}

#[async_trait]
impl Provisioner for Hosts {
    fn name(&self) -> &'static str {
        NAME
    }

    // The backend's limits: `check_capacity` refuses more nodes than matching hosts, and says
    // how many match.
    fn limits(&self) -> Limits {
        BACKEND.limits
    }

    fn check_capacity(&self, existing: u32, adding: u32) -> Result<()> {
        let wanted = u64::from(existing) + u64::from(adding);
        if wanted <= self.selected.len() as u64 {
            return Ok(());
        }
        let already = if existing == 0 {
            String::new()
        } else {
            format!(" ({existing} already made)")
        };
        Err(Error::backend(
            NAME,
            format!(
                "asked for {adding} more nodes{already} but {}; add hosts{} or ask for fewer nodes",
                self.describe_selected(),
                if self.selector.is_empty() {
                    ""
                } else {
                    ", label more of them, narrow the selector"
                }
            ),
        ))
    }

    fn run_id(&self) -> Option<String> {
        Some(self.run.clone())
    }

    fn node_name(&self, number: u32) -> String {
        self.selected
            .get(number as usize - 1)
            .map_or_else(|| format!("n{number}"), |h| h.name.clone())
    }

    async fn provision(&self, request: MachineRequest<'_>) -> Result<Machine> {
        let host = self.host(&request.name)?.clone();
        if self.lock().torn_down {
            return Err(Error::backend(
                NAME,
                format!("node {}: the cluster was torn down", host.name),
            ));
        }
        let client = Arc::new(AgentClient::new(host.name.clone(), host.agent, self.tls.clone()));
        let run_dir = self.lease(&host.name, &client, request.heartbeat_timeout).await?;
        let late = {
            let mut state = self.lock();
            if state.torn_down {
                true
            } else {
                state
                    .leased
                    .insert(host.name.clone(), (client.clone(), request.heartbeat_timeout));
                false
            }
        };
        if late {
            let _ = client.release_lease(&self.run, false).await;
            return Err(Error::backend(
                NAME,
                format!("node {}: the cluster was torn down", host.name),
            ));
        }
        Ok(Machine {
            agent: host.agent,
            ips: vec![host.address],
            interfaces: host.interfaces.clone(),
            root_dir: run_dir,
        })
    }

    async fn release(&self, node: &str) -> Result<()> {
        self.release_all(Some(node)).await
    }

    async fn teardown(&self) -> Result<()> {
        self.lock().torn_down = true;
        self.release_all(None).await
    }

    fn teardown_now(&self) {
        let leased: Vec<(String, Arc<AgentClient>)> = {
            let mut state = self.lock();
            state.torn_down = true;
            state.leased.drain().map(|(n, (c, _))| (n, c)).collect()
        };
        if leased.is_empty() {
            return;
        }
        let run = self.run.clone();
        let keep = self.keep.load(Ordering::SeqCst);
        // A runtime of our own on a thread of our own: callable inside or outside a runtime.
        let ended = std::thread::spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(e) => {
                    tracing::warn!("hosts teardown: no runtime to end the run: {e}");
                    return;
                }
            };
            runtime.block_on(async {
                let releases = leased.iter().map(|(node, client)| {
                    let run = &run;
                    async move {
                        match tokio::time::timeout(RELEASE_BOUND, client.release_lease(run, keep)).await {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => tracing::warn!(node = %node, "ending run {run}: {e}"),
                            Err(_) => tracing::warn!(node = %node, "ending run {run}: no answer within {RELEASE_BOUND:?}"),
                        }
                    }
                });
                futures_util::future::join_all(releases).await;
            });
        });
        let _ = ended.join();
    }

    async fn agent_status(&self, node: &str) -> Option<String> {
        let client = match self.lock().leased.get(node) {
            Some((client, _)) => client.clone(),
            None => return Some("its run ended (released)".to_string()),
        };
        match tokio::time::timeout(STATUS_BOUND, client.lease()).await {
            Ok(Ok(Some(lease))) if lease.run == self.run => None,
            Ok(Ok(Some(lease))) => Some(format!("its host was taken over by runner {}", lease.runner)),
            Ok(Ok(None)) => {
                Some("its run ended (the agent holds no lease: restarted, or it lost our heartbeats)".into())
            }
            // Unreachable or slow: nothing known; heartbeats go on telling.
            _ => None,
        }
    }

    async fn restart_agent(&self, node: &str) -> Result<()> {
        let (client, timeout) = self
            .lock()
            .leased
            .get(node)
            .cloned()
            .ok_or_else(|| Error::backend(NAME, format!("node {node}: released, not leased again")))?;
        self.lease(node, &client, timeout).await.map(drop)
    }

    fn keep_root_dirs(&self, asked: bool, nodes: &[(String, String)]) -> (Vec<KeptDir>, bool) {
        if !asked && !self.inventory.keep_failed_runs {
            return (Vec::new(), false);
        }
        self.keep.store(true, Ordering::SeqCst);
        let kept = nodes
            .iter()
            .map(|(node, dir)| KeptDir {
                node: node.clone(),
                host: match self.selected.iter().find(|h| &h.name == node) {
                    Some(h) => format!("host {} ({})", h.name, h.address),
                    None => format!("host {node}"),
                },
                path: dir.clone(),
            })
            .collect();
        (kept, true)
    }

    fn describe(&self) -> Vec<(&'static str, String)> {
        vec![
            ("inventory", self.inventory.path.display().to_string()),
            (
                "hosts",
                self.selected
                    .iter()
                    .map(|h| h.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            ("run", self.run.clone()),
        ]
    }
}
