//! Network faults: the agent nemesis (one fault per target node, through its agent) and the
//! partition nemesis (a cut over the whole cluster).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chaos::cluster::Node;
use chaos::faults::{self, FaultHandle, PartitionHandle, Shape};
use chaos_proto::Fault;
use chaos_proto::fault::Direction;
use chaos_proto::kinds::{Family, Peer};

use super::{Active, Nemesis, Probes, Refusal, heal_handles, mechanism_name};

/// Whether the nodes' agents can carry out `fault`, from their probe reports.
async fn agents_support(probes: &Probes, fault: &Fault) -> Result<(), String> {
    let Some(kind) = fault.agent_kind() else {
        return Ok(());
    };
    for (node, report) in probes.reports().await {
        let report = report.as_ref().map_err(|e| {
            format!(
                "node {node} cannot say whether it can carry out {} faults: {e}",
                fault.kind()
            )
        })?;
        if !report.supports(kind) {
            let why = report
                .kind(kind)
                .and_then(|k| k.missing.clone())
                .unwrap_or_else(|| "not supported".into());
            return Err(format!(
                "node {node} cannot carry out {} faults: {why}",
                fault.kind()
            ));
        }
    }
    Ok(())
}

/// `fault` with no peers given made to affect the cluster's other nodes (`names`, of which
/// `target` is the faulted one): in a scenario a network fault is between the targets and the
/// rest of the cluster, never the runner's own traffic (the workload's clients).
fn between_nodes(fault: &Fault, names: &[&str], target: usize) -> Fault {
    let mut fault = fault.clone();
    let traffic = match &mut fault {
        Fault::Loss(f) => &mut f.traffic,
        Fault::Delay(f) => &mut f.traffic,
        Fault::Packet(f) => &mut f.traffic,
        Fault::Partition(f) => &mut f.traffic,
        _ => return fault,
    };
    if traffic.peers.is_empty() {
        traffic.peers = (0..names.len())
            .filter(|&j| j != target)
            .map(|j| Peer::Node(names[j].to_string()))
            .collect();
    }
    fault
}

/// Network faults each target's agent installs on its own: loss, delay, packet, bandwidth, link.
pub struct AgentNemesis {
    nodes: Vec<Arc<dyn Node>>,
    probes: Arc<Probes>,
}

impl AgentNemesis {
    /// A nemesis over the cluster's `nodes`, whose agents' `probes` say what they can do.
    pub fn new(nodes: Vec<Arc<dyn Node>>, probes: Arc<Probes>) -> Self {
        Self { nodes, probes }
    }
}

struct Handles {
    nodes: Vec<usize>,
    handles: Vec<FaultHandle>,
}

#[async_trait]
impl Active for Handles {
    fn nodes(&self) -> &[usize] {
        &self.nodes
    }

    fn detail(&self) -> String {
        self.handles
            .first()
            .map(|h| mechanism_name(h.mechanism()))
            .unwrap_or_default()
    }

    async fn heal(self: Box<Self>) -> Result<(), String> {
        heal_handles(&self.handles).await
    }
}

/// Injects `fault(target)` on every target; on a failure, heals what was installed.
pub(super) async fn inject_each(
    nodes: &[Arc<dyn Node>],
    targets: &[usize],
    ttl: Duration,
    fault: impl Fn(usize) -> Fault,
) -> Result<Box<dyn Active>, Refusal> {
    let mut handles = Vec::new();
    for &i in targets {
        match faults::inject(nodes, &nodes[i], &fault(i), ttl).await {
            Ok(h) => handles.push(h),
            Err(e) => {
                if let Err(undo) = heal_handles(&handles).await {
                    tracing::warn!("healing after a failed injection: {undo}");
                }
                return Err(Refusal::Failed(format!("{}: {e}", nodes[i].name())));
            }
        }
    }
    Ok(Box::new(Handles {
        nodes: targets.to_vec(),
        handles,
    }))
}

#[async_trait]
impl Nemesis for AgentNemesis {
    fn handles(&self, fault: &Fault) -> bool {
        fault.family() == Family::Network && !matches!(fault, Fault::Partition(_))
    }

    async fn supports(&self, fault: &Fault) -> Result<(), String> {
        agents_support(&self.probes, fault).await
    }

    async fn inject(
        &self,
        fault: &Fault,
        targets: &[usize],
        _service: Option<&str>,
        ttl: Duration,
    ) -> Result<Box<dyn Active>, Refusal> {
        let names: Vec<&str> = self.nodes.iter().map(|n| n.name()).collect();
        inject_each(&self.nodes, targets, ttl, |i| between_nodes(fault, &names, i)).await
    }
}

/// Partitions: the targets cut off from the other nodes — both ways, or one way by the
/// traffic's direction (`in`: the targets hear nobody; `out`: nobody hears them). With peers
/// given, each target drops exactly that traffic.
pub struct PartitionNemesis {
    nodes: Vec<Arc<dyn Node>>,
    probes: Arc<Probes>,
}

impl PartitionNemesis {
    /// A nemesis over the cluster's `nodes`, whose agents' `probes` say what they can do.
    pub fn new(nodes: Vec<Arc<dyn Node>>, probes: Arc<Probes>) -> Self {
        Self { nodes, probes }
    }
}

struct Cut {
    nodes: Vec<usize>,
    handle: PartitionHandle,
    detail: String,
}

#[async_trait]
impl Active for Cut {
    fn nodes(&self) -> &[usize] {
        &self.nodes
    }

    fn detail(&self) -> String {
        self.detail.clone()
    }

    async fn heal(self: Box<Self>) -> Result<(), String> {
        self.handle.heal().await.map_err(|e| e.to_string())
    }
}

#[async_trait]
impl Nemesis for PartitionNemesis {
    fn handles(&self, fault: &Fault) -> bool {
        matches!(fault, Fault::Partition(_))
    }

    async fn supports(&self, fault: &Fault) -> Result<(), String> {
        agents_support(&self.probes, fault).await
    }

    async fn inject(
        &self,
        fault: &Fault,
        targets: &[usize],
        _service: Option<&str>,
        ttl: Duration,
    ) -> Result<Box<dyn Active>, Refusal> {
        let Fault::Partition(partition) = fault else {
            return Err(Refusal::Failed(format!("not a partition: {}", fault.kind())));
        };
        if !partition.traffic.peers.is_empty() {
            return inject_each(&self.nodes, targets, ttl, |_| fault.clone()).await;
        }
        let name = |i: usize| self.nodes[i].name().to_string();
        let names: Vec<String> = targets.iter().map(|&i| name(i)).collect();
        let others: Vec<String> = (0..self.nodes.len())
            .filter(|i| !targets.contains(i))
            .map(name)
            .collect();
        if others.is_empty() {
            return Err(Refusal::Skip(
                "a partition needs nodes on both sides; the target is every node".into(),
            ));
        }
        let (shape, arrow) = match partition.traffic.direction {
            Direction::Both => (
                Shape::Groups {
                    groups: vec![names.clone(), others.clone()],
                },
                ("|", false),
            ),
            Direction::In => (
                Shape::OneWay {
                    from: others.clone(),
                    to: names.clone(),
                },
                ("-/->", false),
            ),
            Direction::Out => (
                Shape::OneWay {
                    from: names.clone(),
                    to: others.clone(),
                },
                ("-/->", true),
            ),
        };
        let handle = faults::partition(&self.nodes, &shape, ttl)
            .await
            .map_err(|e| Refusal::Failed(e.to_string()))?;
        let (left, right) = if arrow.1 {
            (&names, &others)
        } else {
            (&others, &names)
        };
        Ok(Box::new(Cut {
            nodes: targets.to_vec(),
            handle,
            detail: format!("{} {} {}", left.join(" "), arrow.0, right.join(" ")),
        }))
    }
}

#[cfg(test)]
mod tests {
    use chaos_proto::kinds::{Loss, Traffic};

    use super::*;

    #[test]
    fn a_scenario_network_fault_without_peers_is_between_the_target_and_the_other_nodes() {
        let loss = Fault::Loss(Loss {
            traffic: Traffic::all(),
            percent: 10.0,
            correlation: 0.0,
        });
        let Fault::Loss(l) = between_nodes(&loss, &["n1", "n2", "n3"], 1) else {
            panic!()
        };
        assert_eq!(
            l.traffic.peers,
            [Peer::Node("n1".into()), Peer::Node("n3".into())]
        );
        // Peers given are kept as they are.
        let mut given = loss.clone();
        if let Fault::Loss(l) = &mut given {
            l.traffic.peers = vec!["10.0.0.0/8".parse().unwrap()];
        }
        assert_eq!(between_nodes(&given, &["n1", "n2"], 0), given);
    }
}
