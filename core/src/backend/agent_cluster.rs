//! The one generic [`Cluster`] of every agent-based backend: [`AgentCluster`] wraps a
//! [`Provisioner`] (which only makes machines running `chaos-agent`) and does the rest once:
//!
//! - the cluster CA, the runner's client identity, one server certificate per node;
//! - node numbering (`n1`, `n2`, … across calls) and the backend's node limit;
//! - concurrent creation, each node bounded, waiting until its agent answers over mutual TLS;
//! - supervision ([`super::supervisor`]): heartbeats, restarting an agent that died;
//! - machine faults ([`crate::machine`]): the agent told to expect silence, a stopped machine
//!   kept away from the supervisor, TTL, waiting for the agent after the heal;
//! - graceful shutdown in [`Cluster::cleanup`] (agents heal and kill what they started), then the
//!   provisioner's teardown; a synchronous best-effort teardown on `Drop`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chaos_proto::MachineFault;

use super::ClusterOptions;
use super::provision::{Machine, MachineRequest, Provisioner};
use super::supervisor::{AgentEvent, AgentKeeper, RestartPolicy, Supervisor};
use crate::agent_client::{AgentClient, AgentNode};
use crate::certs::{self, ClusterCa};
use crate::cluster::{Cluster, Node};
use crate::machine::{self, MachineFaultHandle, MachineFaultHost, MachineFaultInfo, MachineFaultTable};
use crate::{Error, Result};

/// Bound on an agent's graceful shutdown during [`Cluster::cleanup`].
const SHUTDOWN_BOUND: Duration = Duration::from_secs(2);
/// Grace an agent gets on top of a machine fault's TTL before it gives up on the runner.
const FAULT_GRACE_MARGIN: Duration = Duration::from_secs(10);

/// A cluster of machines made by a [`Provisioner`], each running the agent. See the
/// [module documentation](self).
pub struct AgentCluster<P: Provisioner> {
    shared: Arc<Shared<P>>,
}

struct Shared<P: Provisioner> {
    /// Shared with the supervisor's waits for an agent's end ([`Keeper::agent_exited`]), which
    /// must not keep the cluster itself alive: a dropped cluster is torn down at once.
    provisioner: Arc<P>,
    options: ClusterOptions,
    ca: ClusterCa,
    runner: certs::Identity,
    tls: Arc<rustls::ClientConfig>,
    supervisor: Supervisor,
    machine_faults: MachineFaultTable,
    state: Mutex<State>,
    /// Set by [`Cluster::run_failed`] when the agents own the kept directories: their
    /// shutdown says `keep`.
    keep_on_shutdown: std::sync::atomic::AtomicBool,
}

struct State {
    next_node: u32,
    nodes: Vec<NodeEntry>,
    /// Nodes whose machine is down on purpose (a stop fault, a machine restart): the supervisor
    /// leaves them alone until they are back.
    held_down: HashSet<String>,
    cleaned: bool,
}

struct NodeEntry {
    name: String,
    machine: Machine,
    client: Arc<AgentClient>,
}

/// Releases a provisioned machine when dropped before it was recorded in the cluster: node
/// creation that fails after provisioning, or is cancelled (the caller dropped `create_nodes`)
/// at any point after it, leaves no machine behind.
struct ReleaseGuard<P: Provisioner> {
    cluster: Option<Arc<Shared<P>>>,
    node: String,
}

impl<P: Provisioner> ReleaseGuard<P> {
    /// The machine is the cluster's now: nothing to release.
    fn disarm(mut self) {
        self.cluster = None;
    }
}

impl<P: Provisioner> Drop for ReleaseGuard<P> {
    fn drop(&mut self) {
        let Some(cluster) = self.cluster.take() else {
            return;
        };
        let node = std::mem::take(&mut self.node);
        // Without a runtime (the cluster is being dropped), cleanup or Drop tears it down.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = cluster.provisioner.release(&node).await {
                    tracing::warn!(node = %node, "releasing a node whose creation did not finish: {e}");
                }
            });
        }
    }
}

impl<P: Provisioner> AgentCluster<P> {
    /// A cluster on `provisioner`'s machines: mints the cluster CA and the runner's identity.
    /// Creates no node yet.
    pub fn with_provisioner(provisioner: P, options: ClusterOptions) -> Result<Self> {
        let ca = ClusterCa::generate(&options.name)?;
        let runner = ca.issue_runner()?;
        Self::with_identity(provisioner, options, ca, runner)
    }

    /// A cluster on `provisioner`'s machines whose agents trust an existing CA (`ca`, which
    /// also signs node certificates the provisioner asks for) and accept `runner`'s client
    /// certificate: machines that run the agent with certificates of their own (`hosts`).
    pub fn with_identity(
        provisioner: P,
        options: ClusterOptions,
        ca: ClusterCa,
        runner: certs::Identity,
    ) -> Result<Self> {
        let tls = certs::client_config(ca.cert_pem(), &runner)?;
        Ok(Self {
            shared: Arc::new(Shared {
                provisioner: Arc::new(provisioner),
                options,
                ca,
                runner,
                tls,
                supervisor: Supervisor::new(RestartPolicy::default()),
                machine_faults: MachineFaultTable::default(),
                keep_on_shutdown: std::sync::atomic::AtomicBool::new(false),
                state: Mutex::new(State {
                    next_node: 1,
                    nodes: Vec::new(),
                    held_down: HashSet::new(),
                    cleaned: false,
                }),
            }),
        })
    }

    /// The backend's own view of the cluster (its index, network, paths…).
    pub fn provisioner(&self) -> &P {
        &self.shared.provisioner
    }

    /// The options the cluster was made with.
    pub fn options(&self) -> &ClusterOptions {
        &self.shared.options
    }

    /// The cluster CA's certificate (PEM): what a client must trust to reach the agents.
    pub fn ca_pem(&self) -> &str {
        self.shared.ca.cert_pem()
    }

    /// The runner's client identity, for another process that drives this cluster's agents
    /// (`chaos exec`). Its key must only ever be written to a 0600 file.
    pub fn runner_identity(&self) -> &certs::Identity {
        &self.shared.runner
    }

    /// Where the runner reaches `node`'s agent; `None` for an unknown node.
    pub fn agent_address(&self, node: &str) -> Option<SocketAddr> {
        self.shared.entry(node).ok().map(|(m, _)| m.agent)
    }

    /// The machine of `node`, as its provisioner described it; `None` for an unknown node.
    pub fn machine(&self, node: &str) -> Option<Machine> {
        self.shared.entry(node).ok().map(|(m, _)| m)
    }

    /// Restarts `node`'s whole machine (its processes die, its agent comes back, healing what
    /// its predecessor left); returns once the agent answers. Fails when the backend cannot.
    pub async fn restart_node(&self, node: &str) -> Result<()> {
        let shared = &self.shared;
        let (_, client) = shared.entry(node)?;
        shared.lock().held_down.insert(node.to_string());
        let restarted = async {
            match shared.provisioner.restart_machine(node).await {
                Some(result) => result?,
                None => {
                    return Err(Error::backend(
                        shared.provisioner.name(),
                        format!("node {node}: this backend cannot restart a machine"),
                    ));
                }
            }
            shared.wait_ready(node, &client).await
        }
        .await;
        shared.lock().held_down.remove(node);
        restarted
    }
}

impl<P: Provisioner> Shared<P> {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn backend_error(&self, message: impl Into<String>) -> Error {
        Error::backend(self.provisioner.name(), message)
    }

    /// Machine and client of a node of this cluster.
    fn entry(&self, node: &str) -> Result<(Machine, Arc<AgentClient>)> {
        let state = self.lock();
        state
            .nodes
            .iter()
            .find(|n| n.name == node)
            .map(|n| (n.machine.clone(), n.client.clone()))
            .ok_or_else(|| {
                let names: Vec<&str> = state.nodes.iter().map(|n| n.name.as_str()).collect();
                Error::invalid(
                    format!("node {node}"),
                    format!(
                        "no such node in {} cluster {}; its nodes: {}",
                        self.provisioner.name(),
                        self.options.name,
                        if names.is_empty() {
                            "none yet".to_string()
                        } else {
                            names.join(", ")
                        }
                    ),
                )
            })
    }

    /// Provisions node `k` and waits until its agent answers. The machine is released unless
    /// the returned guard is disarmed (once the node is recorded).
    async fn create_node(self: Arc<Self>, k: u32) -> Result<(Arc<dyn Node>, NodeEntry, ReleaseGuard<P>)> {
        let name = self.provisioner.node_name(k);
        let request = MachineRequest {
            number: k,
            name: name.clone(),
            heartbeat_timeout: self.options.heartbeat_timeout,
            ready_timeout: self.options.node_ready_timeout,
            ca: &self.ca,
        };
        let machine = self.provisioner.provision(request).await?;
        let guard = ReleaseGuard {
            cluster: Some(self.clone()),
            node: name.clone(),
        };
        let client = Arc::new(
            AgentClient::with_timeouts(
                name.clone(),
                machine.agent,
                self.tls.clone(),
                self.provisioner.client_timeouts(),
            )
            .for_run(self.provisioner.run_id()),
        );
        // On failure, dropping the guard releases the machine.
        self.wait_ready(&name, &client).await?;
        let keeper = Keeper {
            cluster: Arc::downgrade(&self),
            node: name.clone(),
        };
        let interval = (self.options.heartbeat_timeout / 3).max(Duration::from_millis(10));
        self.supervisor.watch(client.clone(), Arc::new(keeper), interval);
        let node: Arc<dyn Node> = Arc::new(AgentNode::with_interfaces(
            client.clone(),
            machine.ips.clone(),
            machine.interfaces.clone(),
            machine.root_dir.clone(),
        ));
        Ok((
            node,
            NodeEntry {
                name,
                machine,
                client,
            },
            guard,
        ))
    }

    /// Refuses an agent of another version than this library (one started by hand on a machine,
    /// say): told apart once, when the node is made, rather than as an odd failure of a later
    /// call. The agents this library starts itself were checked before they ran
    /// ([`crate::backend::agent_binary`]).
    async fn check_agent_version(&self, node: &str, client: &AgentClient) -> Result<()> {
        use crate::backend::agent_binary::AGENT_VERSION;
        let info = client.info().await?;
        let protocol = chaos_proto::PROTOCOL_VERSION;
        if info.agent_version == AGENT_VERSION && info.protocol_version == protocol {
            return Ok(());
        }
        Err(self.backend_error(format!(
            "node {node}: its agent is chaos-agent {} (protocol {}), but the chaos library is {AGENT_VERSION} \
             (protocol {protocol}); run a chaos-agent {AGENT_VERSION} there",
            info.agent_version, info.protocol_version
        )))
    }

    /// Waits until `node`'s agent answers a heartbeat over mutual TLS (which also starts its
    /// heartbeat clock), within the node-ready bound. Gives up early when the provisioner says
    /// the agent ended; the error carries the provisioner's diagnosis.
    async fn wait_ready(&self, node: &str, client: &AgentClient) -> Result<()> {
        let bound = self.options.node_ready_timeout;
        let deadline = Instant::now() + bound;
        let mut pause = Duration::from_millis(2);
        let mut checks = 0u32;
        loop {
            let last = match client.heartbeat().await {
                Ok(_) => return self.check_agent_version(node, client).await,
                Err(e) => e,
            };
            checks += 1;
            // Now and then, see whether the agent died: no point waiting for a dead agent.
            let ended = if checks % 25 == 0 {
                self.provisioner.agent_status(node).await
            } else {
                None
            };
            if ended.is_some() || Instant::now() >= deadline {
                let why = match ended {
                    Some(how) => format!("its agent ended ({how})"),
                    None => format!(
                        "no answer within {bound:?} at {} (the runner must reach the agent's \
                         address)",
                        client.addr()
                    ),
                };
                let diagnosis = self.provisioner.diagnose(node).await;
                let diagnosis = if diagnosis.is_empty() {
                    String::new()
                } else {
                    format!("; {diagnosis}")
                };
                return Err(self.backend_error(format!(
                    "node {node}: the agent is not ready: {why}; last error: {last}{diagnosis}"
                )));
            }
            tokio::time::sleep(pause).await;
            // A refused connect costs microseconds; a long pause would be pure added latency.
            pause = (pause * 2).min(Duration::from_millis(10));
        }
    }
}

#[async_trait]
impl<P: Provisioner> MachineFaultHost for Shared<P> {
    fn machine_fault_table(&self) -> &MachineFaultTable {
        &self.machine_faults
    }

    async fn apply_machine_fault(&self, node: &str, fault: MachineFault, ttl: Duration) -> Result<()> {
        if !self.provisioner.machine_faults().contains(&fault) {
            return Err(self.backend_error(format!("node {node}: no {fault} machine fault on this backend")));
        }
        let (_, client) = self.entry(node)?;
        match fault {
            // The agent is silenced: told beforehand not to mistake that for a crashed runner.
            MachineFault::Pause | MachineFault::Disconnect => {
                client.heartbeat_with_grace(ttl + FAULT_GRACE_MARGIN).await?;
                self.provisioner.apply_machine_fault(node, fault).await
            }
            // The agent dies with its machine, on purpose: the supervisor must not restart it.
            MachineFault::Stop => {
                self.lock().held_down.insert(node.to_string());
                let applied = self.provisioner.apply_machine_fault(node, fault).await;
                if applied.is_err() {
                    self.lock().held_down.remove(node);
                }
                applied
            }
        }
    }

    async fn undo_machine_fault(&self, node: &str, fault: MachineFault) -> Result<()> {
        let undone = async {
            let (_, client) = self.entry(node)?;
            self.provisioner.undo_machine_fault(node, fault).await?;
            self.wait_ready(node, &client).await
        }
        .await;
        // Whatever the outcome, the supervisor takes over again.
        if fault == MachineFault::Stop {
            self.lock().held_down.remove(node);
        }
        undone
    }
}

impl<P: Provisioner> Drop for Shared<P> {
    fn drop(&mut self) {
        self.supervisor.stop_now();
        let cleaned = std::mem::replace(&mut self.lock().cleaned, true);
        if !cleaned {
            self.provisioner.teardown_now();
        }
    }
}

/// The supervisor's hook for one node, forwarding to the provisioner. Holds its cluster weakly,
/// so a dropped cluster is torn down while its supervisor still runs.
struct Keeper<P: Provisioner> {
    cluster: Weak<Shared<P>>,
    node: String,
}

#[async_trait]
impl<P: Provisioner> AgentKeeper for Keeper<P> {
    async fn exit_status(&self) -> Option<String> {
        let cluster = self.cluster.upgrade()?;
        cluster.provisioner.agent_status(&self.node).await
    }

    async fn agent_exited(&self) -> String {
        // Only the provisioner is held while waiting (for the agent's whole life), never the
        // cluster: dropping the cluster must tear it down at once, not when an agent ends.
        let Some(provisioner) = self.cluster.upgrade().map(|c| c.provisioner.clone()) else {
            return "its cluster is gone".to_string();
        };
        provisioner.agent_exited(&self.node).await
    }

    fn down_on_purpose(&self) -> bool {
        self.cluster
            .upgrade()
            .is_some_and(|c| c.lock().held_down.contains(&self.node))
    }

    fn torn_down(&self) -> bool {
        self.cluster.upgrade().is_none_or(|c| c.lock().cleaned)
    }

    async fn restart_agent(&self) -> Result<()> {
        let cluster = self
            .cluster
            .upgrade()
            .ok_or_else(|| Error::invalid(format!("node {}", self.node), "its cluster is gone"))?;
        if cluster.lock().cleaned {
            return Err(cluster.backend_error(format!("node {}: cleaned up, not restarted", self.node)));
        }
        let (_, client) = cluster.entry(&self.node)?;
        cluster.provisioner.restart_agent(&self.node).await?;
        cluster.wait_ready(&self.node, &client).await
    }
}

#[async_trait]
impl<P: Provisioner> Cluster for AgentCluster<P> {
    fn backend(&self) -> &'static str {
        self.shared.provisioner.name()
    }

    async fn create_nodes(&self, count: usize) -> Result<Vec<Arc<dyn Node>>> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let shared = &self.shared;
        let existing = shared.lock().next_node.saturating_sub(1);
        let adding = u32::try_from(count).unwrap_or(u32::MAX);
        if existing.saturating_add(adding) <= shared.provisioner.limits().max_nodes {
            shared.provisioner.check_capacity(existing, adding)?;
        }
        let first = {
            let mut state = shared.lock();
            if state.cleaned {
                return Err(shared.backend_error(format!(
                    "cluster {}: already cleaned up; create a new cluster",
                    shared.options.name
                )));
            }
            super::reserve_nodes(
                &mut state.next_node,
                count,
                shared.provisioner.limits().max_nodes,
                shared.provisioner.name(),
                &shared.options.name,
            )?
        };
        let bound = shared.options.node_ready_timeout + shared.provisioner.limits().provision_time;
        let ready = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let (made, first_error) =
            super::create_concurrently(shared.provisioner.name(), first, count, bound, |k| {
                let shared = shared.clone();
                let ready = ready.clone();
                async move {
                    let made = shared.clone().create_node(k).await?;
                    let now = ready.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                    shared.supervisor.node_ready(&format!("n{k}"), now, adding);
                    Ok(made)
                }
            })
            .await;
        let nodes: Vec<Arc<dyn Node>> = made.iter().map(|(node, _, _)| node.clone()).collect();
        // Even after a failure the made nodes are kept: cleanup releases them.
        let mut state = shared.lock();
        // Cleaned up meanwhile: the guards release what was made.
        if !state.cleaned {
            for (_, entry, guard) in made {
                state.nodes.push(entry);
                guard.disarm();
            }
        }
        drop(state);
        match first_error {
            Some(e) => Err(e),
            None => Ok(nodes),
        }
    }

    async fn cleanup(&self) -> Result<()> {
        let shared = &self.shared;
        if shared.lock().cleaned {
            return Ok(());
        }
        // No restart may race the teardown.
        shared.supervisor.stop().await;
        let nodes = {
            let mut state = shared.lock();
            if std::mem::replace(&mut state.cleaned, true) {
                return Ok(());
            }
            std::mem::take(&mut state.nodes)
        };
        // Thaw paused machines first: a paused agent cannot shut down gracefully. Stopped and
        // disconnected machines are simply torn down.
        for fault in shared.machine_faults.drain() {
            if fault.fault == MachineFault::Pause
                && let Err(e) = shared
                    .provisioner
                    .undo_machine_fault(&fault.node, fault.fault)
                    .await
            {
                tracing::warn!(node = %fault.node, "unpausing before cleanup: {e}");
            }
        }
        // Graceful first: each agent kills its process trees and heals its own faults.
        let keep = shared.keep_on_shutdown.load(std::sync::atomic::Ordering::SeqCst);
        let shutdowns = nodes.iter().map(|n| {
            let client = n.client.clone();
            async move {
                let _ = tokio::time::timeout(SHUTDOWN_BOUND, client.shutdown_keeping(keep)).await;
            }
        });
        futures_util::future::join_all(shutdowns).await;
        let exits = nodes.iter().map(|n| async move {
            let exited = async {
                while shared.provisioner.agent_status(&n.name).await.is_none() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            };
            let _ = tokio::time::timeout(SHUTDOWN_BOUND, exited).await;
        });
        futures_util::future::join_all(exits).await;
        drop(nodes);
        shared
            .provisioner
            .teardown()
            .await
            .map_err(|e| shared.backend_error(format!("cleaning up cluster {}: {e}", shared.options.name)))
    }

    fn agent_events(&self) -> Option<tokio::sync::broadcast::Receiver<AgentEvent>> {
        Some(self.shared.supervisor.subscribe())
    }

    fn machine_faults(&self) -> Vec<MachineFault> {
        self.shared.provisioner.machine_faults()
    }

    async fn inject_machine_fault(
        &self,
        node: &str,
        fault: MachineFault,
        ttl: Duration,
    ) -> Result<MachineFaultHandle> {
        self.shared.entry(node)?;
        machine::inject(&self.shared, node, fault, ttl).await
    }

    fn list_machine_faults(&self) -> Vec<MachineFaultInfo> {
        self.shared.machine_faults.list()
    }

    async fn heal_all_machine_faults(&self) -> Result<Vec<MachineFaultInfo>> {
        machine::heal_all(&*self.shared).await
    }

    fn agent_access(&self) -> Option<(&str, &certs::Identity)> {
        Some((self.ca_pem(), self.runner_identity()))
    }

    fn agent_address(&self, node: &str) -> Option<SocketAddr> {
        AgentCluster::agent_address(self, node)
    }

    fn describe(&self) -> Vec<(&'static str, String)> {
        self.shared.provisioner.describe()
    }

    fn run_failed(&self) -> Vec<crate::cluster::KeptDir> {
        let nodes: Vec<(String, String)> = self
            .shared
            .lock()
            .nodes
            .iter()
            .map(|n| (n.name.clone(), n.machine.root_dir.clone()))
            .collect();
        let (kept, by_agents) = self
            .shared
            .provisioner
            .keep_root_dirs(self.shared.options.keep_failed_runs, &nodes);
        self.shared
            .keep_on_shutdown
            .store(by_agents, std::sync::atomic::Ordering::SeqCst);
        kept
    }
}
