//! Machine faults: a node's whole machine paused, stopped or disconnected by the cluster that
//! provisioned it. A stopped machine takes the system with it; it is started again at heal.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chaos::cluster::{Cluster, Node};
use chaos_proto::{Fault, MachineFault};

use super::process::Down;
use super::{Active, Nemesis, Refusal};
use crate::sut::Suts;

/// How long the system of a stopped machine may take to be reaped.
const REAP: Duration = Duration::from_secs(5);

/// The cluster's machine faults on the targets.
pub(crate) struct MachineNemesis {
    cluster: Arc<dyn Cluster>,
    nodes: Vec<Arc<dyn Node>>,
    suts: Arc<Suts>,
}

impl MachineNemesis {
    /// A nemesis over `cluster`'s `nodes` and the system on them.
    pub fn new(cluster: Arc<dyn Cluster>, nodes: Vec<Arc<dyn Node>>, suts: Arc<Suts>) -> Self {
        Self { cluster, nodes, suts }
    }
}

struct Machines {
    nodes: Vec<usize>,
    handles: Vec<chaos::MachineFaultHandle>,
    restart: bool,
    suts: Arc<Suts>,
    detail: String,
}

#[async_trait]
impl Active for Machines {
    fn nodes(&self) -> &[usize] {
        &self.nodes
    }

    fn detail(&self) -> String {
        self.detail.clone()
    }

    async fn heal(self: Box<Self>) -> Result<(), String> {
        let mut error = None;
        for handle in &self.handles {
            if let Err(e) = handle.heal().await {
                error.get_or_insert(format!("{}: {e}", handle.node()));
            }
        }
        if self.restart
            && let Err(e) = Down::restart(&self.suts, &self.nodes, None).await
        {
            error.get_or_insert(e);
        }
        error.map_or(Ok(()), Err)
    }
}

#[async_trait]
impl Nemesis for MachineNemesis {
    fn handles(&self, fault: &Fault) -> bool {
        matches!(fault, Fault::Machine(_))
    }

    async fn supports(&self, fault: &Fault) -> Result<(), String> {
        let Fault::Machine(m) = fault else {
            return Err(format!("not a machine fault: {}", fault.kind()));
        };
        let offered = self.cluster.machine_faults();
        if offered.contains(&m.action) {
            return Ok(());
        }
        let offered: Vec<&str> = offered.iter().map(|m| m.name()).collect();
        Err(format!(
            "the {} cluster offers no machine {} fault (it offers: {}); run it on a backend whose \
             machines can, e.g. --backend docker",
            self.cluster.backend(),
            m.action,
            if offered.is_empty() {
                "none".to_string()
            } else {
                offered.join(", ")
            }
        ))
    }

    async fn inject(
        &self,
        fault: &Fault,
        targets: &[usize],
        _service: Option<&str>,
        ttl: Duration,
    ) -> Result<Box<dyn Active>, Refusal> {
        let Fault::Machine(m) = fault else {
            return Err(Refusal::Failed(format!("not a machine fault: {}", fault.kind())));
        };
        let mut handles: Vec<chaos::MachineFaultHandle> = Vec::new();
        for &i in targets {
            let node = self.nodes[i].name();
            match self.cluster.inject_machine_fault(node, m.action, ttl).await {
                Ok(handle) => handles.push(handle),
                Err(e) => {
                    for handle in &handles {
                        if let Err(e) = handle.heal().await {
                            tracing::warn!("healing after a failed injection: {e}");
                        }
                    }
                    return Err(Refusal::Failed(format!("{node}: {e}")));
                }
            }
            if m.action == MachineFault::Stop {
                self.suts.take_down(i, None, REAP).await;
            }
        }
        Ok(Box::new(Machines {
            nodes: targets.to_vec(),
            handles,
            restart: m.action == MachineFault::Stop,
            suts: self.suts.clone(),
            detail: format!("machine {}", m.action),
        }))
    }
}
