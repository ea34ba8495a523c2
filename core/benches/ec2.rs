//! The `ec2` backend's runner overhead per node against the AWS emulator (plain `main`, prints
//! a table), on the backend's test lab ([`chaos::backend::ec2::lab::Lab`]: moto and a stand-in
//! for EC2's hypervisor that boots each instance's user data in a network namespace).
//!
//! Run as root with `cargo bench -p chaos --features ec2 --bench ec2` (needs `moto_server`:
//! `pip install 'moto[server]'`; sizes: `CHAOS_BENCH_SIZES=3,10,30`, the default).
//!
//! Per size, one `create_nodes(N)` on a fresh cluster (after a one-node warm-up cluster that
//! uploads the agent binary, which every later cluster reuses by content hash), and from the
//! backend's own per-node phases ([`chaos::backend::ec2::Ec2::phases`]):
//!
//! * **runner's own time per node**: queued for a batch until launched (gathering, presigning,
//!   RunInstances, the batch manifest), certificate issued and bundle uploaded, bundle deleted —
//!   everything but waiting for the instance;
//! * **boot wait per node**: from the bundle's upload until the agent listens — the stand-in's
//!   boot (its 200 ms poll of DescribeInstances, a namespace, the user data downloading the
//!   agent and bundle from moto, the agent starting), which a real instance replaces by tens of
//!   seconds of real boot;
//! * the wall time of the whole call (which also includes the mutual-TLS connection, version
//!   check and first heartbeat per node after its agent listens) and the API calls made.

use std::time::{Duration, Instant};

use chaos::Cluster;
use chaos::backend::ec2::lab::{self, Lab};
use chaos::backend::ec2::{Ec2, NodePhases};

mod common;
use common::{Stats, header, row, run_or_skip};

fn sizes() -> Vec<usize> {
    let text = std::env::var("CHAOS_BENCH_SIZES").unwrap_or_else(|_| "3,10,30".into());
    text.split(',')
        .map(|s| {
            s.trim()
                .parse()
                .unwrap_or_else(|_| panic!("CHAOS_BENCH_SIZES: {s:?} is not a number"))
        })
        .collect()
}

/// One cluster of `n` nodes: wall time, per-node phases, API calls.
async fn one(lab: &Lab, n: usize) -> (Duration, Vec<NodePhases>, u64) {
    let cluster = Ec2::cluster(lab.cluster_options(&format!("bench-{n}")))
        .await
        .expect("an ec2 cluster on the lab");
    let started = Instant::now();
    cluster.create_nodes(n).await.expect("creating the nodes");
    let wall = started.elapsed();
    let phases = cluster.provisioner().phases();
    let calls = cluster.provisioner().api_calls().values().sum();
    cluster.cleanup().await.expect("cleanup");
    (wall, phases, calls)
}

async fn run() {
    let lab = Lab::start("bench-ec2", Duration::from_secs(180))
        .await
        .expect("starting the ec2 lab");
    // Warm-up: the agent binary goes to the bucket once.
    one(&lab, 1).await;
    let mut results = Vec::new();
    for n in sizes() {
        results.push((n, one(&lab, n).await));
    }
    lab.cleanup().await.expect("lab cleanup");

    header("ec2 on moto: per node");
    for (n, (_, phases, _)) in &results {
        let runner = Stats::new(phases.iter().map(NodePhases::runner).collect());
        let launch = Stats::new(phases.iter().map(|p| p.launch).collect());
        let boot = Stats::new(phases.iter().map(|p| p.boot_wait).collect());
        row(&format!("{n} nodes: runner's own time"), &runner, "-", true);
        row(&format!("{n} nodes: of which batch launch"), &launch, "-", true);
        row(&format!("{n} nodes: boot wait (stand-in)"), &boot, "-", true);
    }
    println!();
    println!("| nodes | wall time | per node | API calls | boot share of wall |");
    println!("|------:|----------:|---------:|----------:|-------------------:|");
    for (n, (wall, phases, calls)) in &results {
        let boot = phases.iter().map(|p| p.boot_wait).max().unwrap_or_default();
        println!(
            "| {n} | {:.2} s | {:.0} ms | {calls} | {:.0} % |",
            wall.as_secs_f64(),
            wall.as_secs_f64() * 1e3 / *n as f64,
            100.0 * boot.as_secs_f64() / wall.as_secs_f64()
        );
    }
}

fn main() {
    run_or_skip("ec2", lab::availability(), run());
}
