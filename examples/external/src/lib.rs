//! A toy distributed system to test with chaos: a naive leader election in which every node
//! follows the lowest-numbered node it can reach (itself included), probing with `ping`.
//!
//! Under a partition, nodes on different sides elect different leaders; the tests check the
//! election against the model of [`expected_leader`] on real network namespaces or containers,
//! for partitions that seeded fault schedules (proptest) pick.

use std::sync::Arc;

use chaos::faults::Cuts;
use chaos::{Node, NodeExt, Result};

/// Runs one round of the election on `node`: pings every member of `members` (in order) once,
/// and returns the name of the first that answers. `members` is the whole cluster in node order.
pub async fn elect(node: &dyn Node, members: &[Arc<dyn Node>]) -> Result<Option<String>> {
    let mut script = String::new();
    for member in members {
        let Some(address) = member.addresses().first() else {
            continue;
        };
        // One echo request, one second to answer: an unreachable member costs a second.
        script.push_str(&format!(
            "ping -c 1 -W 1 {address} >/dev/null 2>&1 && {{ echo {}; exit 0; }}\n",
            member.name()
        ));
    }
    let out = node.run("sh", ["-c", script.as_str()]).await?;
    let leader = out.stdout_str().trim().to_string();
    Ok((!leader.is_empty()).then_some(leader))
}

/// The leader `node` must elect when the network is cut as `cuts` says: the first member, in
/// node order, that is `node` itself or connected to it both ways.
pub fn expected_leader(cuts: &Cuts, node: &str) -> String {
    cuts.nodes()
        .iter()
        .find(|m| *m == node || cuts.connected(node, m))
        .cloned()
        .unwrap_or_else(|| node.to_string())
}
