//! Nemeses, Jepsen-style: a nemesis injects a [`Fault`] of its family on target nodes for at
//! most a TTL and returns an [`Active`] fault that heals. The engine knows no fault kind: it asks
//! the nemeses which one [`handles`](Nemesis::handles) a step's fault, and whether the cluster can
//! carry it out at all ([`Nemesis::supports`], from the nodes' probe reports and the cluster's
//! machine faults — no table of backends).
//!
//! One implementation per family: [`network::AgentNemesis`] (loss, delay, packet, bandwidth,
//! link, through each node's agent), [`network::PartitionNemesis`] (partitions over the cluster),
//! `process::ProcessNemesis` (kill, pause, restart of the system under test) and
//! `machine::MachineNemesis` (a node's whole machine, through its cluster). A new fault kind
//! joins its family's nemesis; a new family is one more implementation here.

pub mod machine;
pub mod network;
pub mod process;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chaos::cluster::Node;
use chaos_proto::Fault;
use chaos_proto::fault::ProbeReport;

/// Why a nemesis did not inject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Nothing to do on these targets (the system is not running there, a partition with
    /// nobody on the other side): the step is skipped, with this reason.
    Skip(String),
    /// The fault could not be injected: the run tested less than it says.
    Failed(String),
}

/// A family of faults and how to inject them.
#[async_trait]
pub trait Nemesis: Send + Sync {
    /// Whether this nemesis carries out `fault`.
    fn handles(&self, fault: &Fault) -> bool;

    /// Whether this cluster can carry `fault` out; `Err` says why not (asked before the
    /// schedule starts, so that a run does not fail half-way).
    async fn supports(&self, fault: &Fault) -> Result<(), String>;

    /// Injects `fault` on the nodes `targets` (indices into the cluster's nodes) for at most
    /// `ttl`, after which the nodes (or the cluster) heal it by themselves. `service` names the
    /// `[[setup.services]]` process a process fault acts on (none: the system `[setup.start]`
    /// starts); other families never get one (validation refuses it).
    async fn inject(
        &self,
        fault: &Fault,
        targets: &[usize],
        service: Option<&str>,
        ttl: Duration,
    ) -> Result<Box<dyn Active>, Refusal>;
}

/// A fault in place.
#[async_trait]
pub trait Active: Send + Sync {
    /// The nodes it acts on (indices into the cluster's nodes).
    fn nodes(&self) -> &[usize];

    /// How it was carried out, for the run's events (`nftables_netlink`, `n1 n2 | n3`, …).
    fn detail(&self) -> String;

    /// Heals it (and, for faults that took the system down, starts the system again). Called
    /// once; `Err` says what could not be healed.
    async fn heal(self: Box<Self>) -> Result<(), String>;
}

/// What each node's agent says it can break (`GET /v1/probe`), asked once per run and shared by
/// the nemeses that need it.
pub struct Probes {
    nodes: Vec<Arc<dyn Node>>,
    reports: tokio::sync::OnceCell<Vec<Result<ProbeReport, String>>>,
}

impl Probes {
    /// Not asked yet.
    pub fn new(nodes: Vec<Arc<dyn Node>>) -> Arc<Probes> {
        Arc::new(Probes {
            nodes,
            reports: tokio::sync::OnceCell::new(),
        })
    }

    /// Each node's name and report (or why it gave none), asking the nodes concurrently the
    /// first time.
    pub async fn reports(&self) -> impl Iterator<Item = (&str, &Result<ProbeReport, String>)> {
        let reports = self
            .reports
            .get_or_init(|| async {
                let asked = futures_util::future::join_all(self.nodes.iter().map(|n| n.probe())).await;
                asked.into_iter().map(|r| r.map_err(|e| e.to_string())).collect()
            })
            .await;
        self.nodes.iter().map(|n| n.name()).zip(reports.iter())
    }
}

/// The nemesis of `fault` among `nemeses`.
pub fn find<'a>(nemeses: &'a [Box<dyn Nemesis>], fault: &Fault) -> Option<&'a dyn Nemesis> {
    nemeses.iter().find(|n| n.handles(fault)).map(|n| n.as_ref())
}

/// A mechanism's name as the API writes it (`cgroup_v2_freeze`, `nfqueue_userspace`).
pub(crate) fn mechanism_name(m: &chaos_proto::fault::Mechanism) -> String {
    match serde_json::to_value(m) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(serde_json::Value::Object(o)) => o.keys().next().cloned().unwrap_or_default(),
        _ => format!("{m:?}"),
    }
}

/// Heals every handle, concurrently; the first error, if any.
pub(crate) async fn heal_handles(handles: &[chaos::FaultHandle]) -> Result<(), String> {
    let results = futures_util::future::join_all(handles.iter().map(chaos::FaultHandle::heal)).await;
    match results.into_iter().find_map(|r| r.err()) {
        Some(e) => Err(e.to_string()),
        None => Ok(()),
    }
}
