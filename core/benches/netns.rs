//! Benchmarks of the `netns` backend (plain `main`, prints a table).
//!
//! Run with `cargo build --release -p chaos-agent && cargo bench -p chaos --bench netns` as
//! root; the agent is found next to the benchmark (`target/release/chaos-agent`) or through
//! `CHAOS_AGENT_BIN`. Measures:
//!
//! * node ready: `create_nodes(1)` until the node's agent answered a heartbeat over mutual TLS
//!   (namespace, links, certificate, cgroup, agent start and ready line included);
//! * 50 nodes: one `create_nodes(50)` call on a fresh cluster;
//! * `true` end to end through the agent (`node.run("true")`: WebSocket exec, spawn, exit
//!   status back) against `ip netns exec NS true` on the same node, in the same run;
//! * partition inject + heal through the runner API (`chaos::faults::inject` then
//!   `FaultHandle::heal`: HTTPS call, nftables rules installed over netlink, reply; and back)
//!   against `ip netns exec NS iptables` adding and deleting the same DROP rule.

use std::process::Command;
use std::time::{Duration, Instant};

use chaos::backend::ClusterOptions;
use chaos::backend::netns::{self, NetnsCluster};
use chaos::faults::{self, Fault, Partition, Peer, Traffic};
use chaos::{Cluster, NodeExt};

mod common;
use common::{Stats, header, row, run_or_skip};

const SINGLE_NODES: usize = 25;
const FIFTY_ROUNDS: usize = 3;
const TRUE_RUNS: usize = 200;
const PARTITION_RUNS: usize = 200;

async fn cluster(name: &str) -> NetnsCluster {
    let options = ClusterOptions {
        name: name.to_string(),
        ..ClusterOptions::default()
    };
    NetnsCluster::new(options)
        .await
        .unwrap_or_else(|e| panic!("creating a netns cluster: {e}"))
}

async fn run() {
    // Node ready, one at a time, on one cluster (after two warm-up nodes that fill caches).
    let c = cluster("bench-single").await;
    c.create_nodes(2).await.expect("warm-up nodes");
    let mut single = Vec::new();
    for _ in 0..SINGLE_NODES {
        let t = Instant::now();
        c.create_nodes(1).await.expect("creating a node");
        single.push(t.elapsed());
    }
    c.cleanup().await.expect("cleanup");
    let single = Stats::new(single);

    // 50 nodes at once, each round on a fresh cluster.
    let mut fifty = Vec::new();
    let mut fifty_cleanup = Vec::new();
    for _ in 0..FIFTY_ROUNDS {
        let c = cluster("bench-fifty").await;
        let t = Instant::now();
        let nodes = c.create_nodes(50).await.expect("creating 50 nodes");
        fifty.push(t.elapsed());
        assert_eq!(nodes.len(), 50);
        let t = Instant::now();
        c.cleanup().await.expect("cleanup");
        fifty_cleanup.push(t.elapsed());
    }
    let fifty = Stats::new(fifty);
    let fifty_cleanup = Stats::new(fifty_cleanup);

    // `true` through the agent vs `ip netns exec`, interleaved so both see the same machine load.
    let c = cluster("bench-true").await;
    let node = c.create_nodes(1).await.expect("creating a node").remove(0);
    let ns = c.provisioner().node_netns(node.name()).expect("node namespace");
    for _ in 0..10 {
        node.run("true", Vec::<String>::new()).await.expect("warm-up run");
    }
    let (mut agent, mut direct) = (Vec::new(), Vec::new());
    for _ in 0..TRUE_RUNS {
        let t = Instant::now();
        let out = node
            .run("true", Vec::<String>::new())
            .await
            .expect("running true");
        agent.push(t.elapsed());
        assert!(out.status.success());
        let t = Instant::now();
        let status = Command::new("ip")
            .args(["netns", "exec", &ns, "true"])
            .status()
            .expect("ip netns exec");
        direct.push(t.elapsed());
        assert!(status.success());
    }
    c.cleanup().await.expect("cleanup");
    let agent = Stats::new(agent);
    let direct = Stats::new(direct);

    // Partition inject + heal through the runner vs shelling out to iptables in the node.
    let c = cluster("bench-partition").await;
    let nodes = c.create_nodes(2).await.expect("creating two nodes");
    let ns = c
        .provisioner()
        .node_netns(nodes[0].name())
        .expect("node namespace");
    let peer = nodes[1].addresses()[0].to_string();
    let fault = Fault::Partition(Partition {
        traffic: Traffic::with([Peer::Node(nodes[1].name().to_string())]),
    });
    let ttl = Duration::from_secs(60);
    let (mut ours, mut shelled) = (Vec::new(), Vec::new());
    for _ in 0..PARTITION_RUNS {
        let t = Instant::now();
        let handle = faults::inject(&nodes, &nodes[0], &fault, ttl)
            .await
            .expect("inject");
        assert!(handle.heal().await.expect("heal"), "the partition was active");
        ours.push(t.elapsed());
        let t = Instant::now();
        for op in ["-A", "-D"] {
            let status = Command::new("ip")
                .args([
                    "netns", "exec", &ns, "iptables", "-w", op, "INPUT", "-s", &peer, "-j", "DROP",
                ])
                .status()
                .expect("ip netns exec iptables");
            assert!(status.success());
        }
        shelled.push(t.elapsed());
    }
    c.cleanup().await.expect("cleanup");
    let ours = Stats::new(ours);
    let shelled = Stats::new(shelled);

    header("netns benchmark");
    row(
        "node ready (agent accepting mTLS)",
        &single,
        "median ≤ 20 ms",
        single.median() <= Duration::from_millis(20),
    );
    row(
        "50 nodes concurrently",
        &fifty,
        "≤ 1 s",
        fifty.median() <= Duration::from_secs(1),
    );
    row("cleanup of 50 nodes", &fifty_cleanup, "-", true);
    let ratio = agent.median().as_secs_f64() / direct.median().as_secs_f64();
    row(
        "`true` through the agent",
        &agent,
        &format!("≤ 2× ({ratio:.2}×)"),
        ratio <= 2.0,
    );
    row("`ip netns exec NS true`", &direct, "baseline", true);
    row(
        "partition inject + heal (runner API)",
        &ours,
        "median ≤ 5 ms",
        ours.median() <= Duration::from_millis(5),
    );
    row("same rule via `iptables` in the ns", &shelled, "baseline", true);
}

fn main() {
    run_or_skip("netns", netns::availability(), run());
}
