//! A network-hardware experiment: flap a node's link while it sends to another node, and report
//! the numbers — throughput and loss before, during and after the flapping — with the
//! measurement built into the agents ([`chaos::net`]).
//!
//! On `netns` and `docker` the node's only interface is the cluster network, which also carries
//! the runner's control traffic to the node's agent, so the flap is **forced** (`force = true`):
//! the control connection stalls while the link is down (TCP retransmits it), and should the
//! runner stay cut off past the heartbeat timeout the agent heals everything by itself. On bare
//! metal, flap a NIC the inventory allows instead and leave `force` off.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use chaos::faults::{Dur, Fault, Flap, inject};
use chaos::net::{MeasureOptions, MeasureProtocol, Measurement, measure};
use chaos::{Cluster, Node};

/// How to flap.
#[derive(Debug, Clone, Copy)]
pub struct FlapPlan {
    /// One down+up cycle (the link is down for its first half).
    pub period: Duration,
    /// Cycles.
    pub count: u32,
}

impl Default for FlapPlan {
    /// Four cycles of 500 ms.
    fn default() -> Self {
        Self {
            period: Duration::from_millis(500),
            count: 4,
        }
    }
}

/// What [`link_flap_under_load`] measured.
#[derive(Debug, Clone)]
pub struct FlapReport {
    /// The plan carried out.
    pub plan: FlapPlan,
    /// The interface flapped (on n1).
    pub interface: String,
    /// n1 → n2 before the flapping.
    pub before: Measurement,
    /// n1 → n2 while the link flapped.
    pub during: Measurement,
    /// n1 → n2 after the flap was healed.
    pub after: Measurement,
    /// From the injection to the verified heal.
    pub fault_time: Duration,
}

impl FlapReport {
    /// The report as lines of text.
    pub fn lines(&self) -> Vec<String> {
        vec![
            format!(
                "flap {} on n1: {} × {:?}, healed after {:.1?}",
                self.interface, self.plan.count, self.plan.period, self.fault_time
            ),
            format!("before: {}", self.before.summary()),
            format!("during: {}", self.during.summary()),
            format!("after:  {}", self.after.summary()),
        ]
    }
}

/// UDP sending rate of every measurement: well below what a veth carries, so any loss is the
/// link's.
const RATE_BPS: u64 = 20_000_000;

/// Creates two nodes and measures n1 → n2 (UDP at 20 Mbit/s, so loss shows how long the link was
/// down): before, while n1's main interface flaps by `plan`, and after the heal.
pub async fn link_flap_under_load(cluster: &dyn Cluster, plan: FlapPlan) -> anyhow::Result<FlapReport> {
    let nodes: Vec<Arc<dyn Node>> = cluster.create_nodes(2).await.context("creating the nodes")?;
    let (n1, n2) = (nodes[0].clone(), nodes[1].clone());
    let interface = n1
        .interfaces()
        .first()
        .cloned()
        .context("n1 reports no network interface of its own: this backend has no link to flap")?;
    let options = |duration: Duration| MeasureOptions {
        protocol: MeasureProtocol::Udp,
        duration,
        udp_rate_bps: RATE_BPS,
        rtt_probes: 5,
        ..MeasureOptions::default()
    };
    let before = measure(&*n1, &*n2, &options(Duration::from_secs(1)))
        .await
        .context("measuring before")?;

    // The load starts first (its requests travel over the link about to flap), then the flap,
    // which ends well before the load does.
    let flapping = plan.period * plan.count;
    let load = {
        let (n1, n2) = (n1.clone(), n2.clone());
        let options = options(flapping + Duration::from_secs(1));
        tokio::spawn(async move { measure(&*n1, &*n2, &options).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fault = Fault::Flap(Flap {
        interface: interface.clone(),
        period: Dur(plan.period),
        count: plan.count,
        force: true,
    });
    let injected = Instant::now();
    // The TTL bounds the fault should this program die: the agent heals it then.
    let handle = inject(&nodes, &n1, &fault, flapping + Duration::from_secs(30))
        .await
        .context("injecting the flap")?;
    let during = load.await.context("the measurement task panicked")?;
    let healed = handle.heal().await.context("healing the flap");
    let fault_time = injected.elapsed();
    let during = during.context("measuring during the flap")?;
    ensure!(healed?, "the flap was no longer active at heal (expired early?)");
    let after = measure(&*n1, &*n2, &options(Duration::from_secs(1)))
        .await
        .context("measuring after")?;
    Ok(FlapReport {
        plan,
        interface,
        before,
        during,
        after,
        fault_time,
    })
}
