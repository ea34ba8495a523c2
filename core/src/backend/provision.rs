//! The one small trait a backend implements: a [`Provisioner`] makes machines that run
//! `chaos-agent` and says how to reach them; [`super::agent_cluster::AgentCluster`] does
//! everything else once (CA and identities, waiting for agents, heartbeats and supervision,
//! numbering, machine-fault bookkeeping, graceful shutdown, synchronous `Drop`).
//!
//! See ARCHITECTURE.md, "How to add a backend", for a walk-through.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use async_trait::async_trait;
use chaos_proto::MachineFault;

use crate::agent_client::Timeouts;
use crate::certs::{CertError, ClusterCa, Identity};
use crate::{Error, Result};

/// One machine a provisioner made, running the node's agent.
#[derive(Debug, Clone)]
pub struct Machine {
    /// Where the runner reaches the machine's agent (the agent's certificate must name its IP).
    pub agent: SocketAddr,
    /// Addresses at which the other nodes of the cluster reach this one.
    pub ips: Vec<IpAddr>,
    /// The machine's network interfaces on the cluster network, the main one first. Faults
    /// that act on an interface (bandwidth, link) default to the first.
    pub interfaces: Vec<String>,
    /// A directory on the machine that belongs to this node alone.
    pub root_dir: String,
}

/// What the cluster asks of a provisioner for one new machine.
pub struct MachineRequest<'a> {
    /// The node's number (`k` of `n<k>`), 1-based, unique in the cluster.
    pub number: u32,
    /// The node's name: `n<k>`, or what [`Provisioner::node_name`] says.
    pub name: String,
    /// How long the agent waits without a heartbeat before it heals, kills everything it
    /// started and exits: pass it to the agent (`--heartbeat-timeout`).
    pub heartbeat_timeout: Duration,
    /// Bound on the agent announcing itself (the cluster bounds the whole creation too).
    pub ready_timeout: Duration,
    pub(crate) ca: &'a ClusterCa,
}

impl MachineRequest<'_> {
    /// Issues the node's server certificate for the addresses (`ips`) and names (`dns`) the
    /// runner and its peers use to reach the agent. Write it with
    /// [`Identity::write_node_dir`] and [`MachineRequest::ca_pem`] (keys 0600), or copy the same
    /// files onto the machine.
    pub fn issue_identity(&self, ips: &[IpAddr], dns: &[String]) -> Result<Identity, CertError> {
        self.ca.issue_node(&self.name, ips, dns)
    }

    /// The cluster CA's certificate (PEM), which the agent trusts for client certificates.
    pub fn ca_pem(&self) -> &str {
        self.ca.cert_pem()
    }
}

/// Limits of a backend, as the registry and `chaos up` report them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most nodes one cluster may hold.
    pub max_nodes: u32,
    /// Time [`Provisioner::provision`] may take on top of the agent's ready bound
    /// ([`super::ClusterOptions::node_ready_timeout`]) before creating the node fails.
    pub provision_time: Duration,
}

/// A backend: makes and releases machines that run the agent. Implemented once per backend;
/// wrapped in [`super::agent_cluster::AgentCluster`] to become a [`crate::Cluster`].
///
/// Methods taking a `node` get names of machines this provisioner made and has not released.
/// The cluster calls [`Provisioner::provision`] concurrently for the machines of one
/// `create_nodes` call.
#[async_trait]
pub trait Provisioner: Send + Sync + 'static {
    /// The backend's name (`"netns"`, `"docker"`), as in the registry.
    fn name(&self) -> &'static str;

    /// The backend's limits.
    fn limits(&self) -> Limits;

    /// The name of the cluster's `number`th node (1-based): `n<number>` unless the backend's
    /// machines have names of their own (an inventory's hosts).
    fn node_name(&self, number: u32) -> String {
        format!("n{number}")
    }

    /// The run this cluster's agents serve under a lease (`hosts`), named in heartbeats and
    /// shutdown so they count only for it; `None` for agents the cluster starts itself.
    fn run_id(&self) -> Option<String> {
        None
    }

    /// Bounds of the runner's client of each agent (e.g. a short connect for agents that may be
    /// paused).
    fn client_timeouts(&self) -> Timeouts {
        Timeouts::default()
    }

    /// Checks, before any of them is made, that `adding` more machines fit this host beside the
    /// `existing` ones (file descriptors, kernel tables…): `Err` names the cap, what it is, what
    /// the cluster would need and how to raise it. The default finds nothing to check. A
    /// provisioner may raise a soft limit of its own process here rather than fail.
    fn check_capacity(&self, existing: u32, adding: u32) -> Result<()> {
        let _ = (existing, adding);
        Ok(())
    }

    /// Makes one machine and starts the node's agent on it, with the identity
    /// [`MachineRequest::issue_identity`] issues; returns once the agent was started (the cluster
    /// then waits until it answers a heartbeat). On error, releases what it made.
    async fn provision(&self, request: MachineRequest<'_>) -> Result<Machine>;

    /// Releases one machine (its agent was asked to shut down, or is dead). Idempotent.
    async fn release(&self, node: &str) -> Result<()>;

    /// Releases every machine and every cluster-wide resource. Idempotent. The agents were
    /// asked to shut down first.
    async fn teardown(&self) -> Result<()>;

    /// [`Provisioner::teardown`] for `Drop`: blocking, best effort (log what fails), callable
    /// with or without a running Tokio runtime. Idempotent.
    fn teardown_now(&self);

    /// `None` while `node`'s agent runs; how it ended once it does not.
    async fn agent_status(&self, node: &str) -> Option<String>;

    /// Resolves once `node`'s agent is not running, with how it ended. The default asks
    /// [`Provisioner::agent_status`] every 100 ms; a backend that can be told overrides it.
    async fn agent_exited(&self, node: &str) -> String {
        loop {
            if let Some(how) = self.agent_status(node).await {
                return how;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts `node`'s agent again on its machine (same address, TLS and state directory, so
    /// it heals what its predecessor left); returns once it was started. Must refuse once the
    /// machine is released.
    async fn restart_agent(&self, node: &str) -> Result<()>;

    /// What to add to an error about `node`'s agent not answering (the end of its log, the
    /// container's state); empty when nothing helps.
    async fn diagnose(&self, node: &str) -> String {
        let _ = node;
        String::new()
    }

    /// The machine faults this backend can inject ([`MachineFault`]); none by default.
    fn machine_faults(&self) -> Vec<MachineFault> {
        Vec::new()
    }

    /// Applies a machine fault offered by [`Provisioner::machine_faults`]. The cluster has told
    /// the agent to expect silence for the fault's TTL already (pause, disconnect), and keeps the
    /// supervisor off a stopped machine.
    async fn apply_machine_fault(&self, node: &str, fault: MachineFault) -> Result<()> {
        Err(Error::backend(
            self.name(),
            format!("node {node}: no {fault} machine fault on this backend"),
        ))
    }

    /// Undoes a machine fault [`Provisioner::apply_machine_fault`] applied (the cluster then
    /// waits until the agent answers).
    async fn undo_machine_fault(&self, node: &str, fault: MachineFault) -> Result<()> {
        Err(Error::backend(
            self.name(),
            format!("node {node}: no {fault} machine fault on this backend"),
        ))
    }

    /// Restarts `node`'s whole machine (its processes die, its agent comes back); `None` when
    /// the backend cannot.
    async fn restart_machine(&self, node: &str) -> Option<Result<()>> {
        let _ = node;
        None
    }

    /// Facts about the cluster worth showing (`chaos up`'s state, logs): e.g. its index,
    /// network, state file.
    fn describe(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }

    /// The run failed ([`crate::Cluster::run_failed`]): keep the root directories of `nodes`
    /// (name, root directory) at cleanup if `asked` (the cluster's options) or the backend's
    /// own configuration says so; returns what will be kept, and whether the agents' shutdown
    /// must say `keep` (persistent agents own the directories). The default keeps nothing.
    fn keep_root_dirs(
        &self,
        asked: bool,
        nodes: &[(String, String)],
    ) -> (Vec<crate::cluster::KeptDir>, bool) {
        let _ = (asked, nodes);
        (Vec::new(), false)
    }
}
