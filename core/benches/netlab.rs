//! The built-in network measurement against Debian's `iperf3`, in the same run, on a 2-node
//! `netns` cluster (veths through the cluster bridge): TCP throughput n1 → n2 for 3 s, five
//! rounds interleaved (ours, then iperf3 from n1 to a one-shot `iperf3 -s` on n2).
//!
//! Run with `cargo build --release -p chaos-agent && cargo bench -p chaos --bench netlab` as
//! root, with `iperf3` installed; the agent is found next to the benchmark or through
//! `CHAOS_AGENT_BIN`.

use std::time::Duration;

use chaos::backend::ClusterOptions;
use chaos::backend::netns::{self, NetnsCluster};
use chaos::net::{MeasureOptions, measure};
use chaos::{Cluster, NodeExt, ProcSpec};

mod common;
use common::run_or_skip;

const ROUNDS: usize = 5;
const SECONDS: u64 = 3;
/// iperf3's port inside n2's own network namespace (nothing else listens there).
const IPERF_PORT: &str = "5201";

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn run() {
    if std::process::Command::new("iperf3")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("netlab benchmark skipped: iperf3 is not installed (apt-get install iperf3)");
        return;
    }
    let cluster = NetnsCluster::new(ClusterOptions {
        name: "bench-netlab".into(),
        ..ClusterOptions::default()
    })
    .await
    .expect("a netns cluster");
    let nodes = cluster.create_nodes(2).await.expect("two nodes");
    let (n1, n2) = (&nodes[0], &nodes[1]);
    let target = n2.addresses()[0].to_string();
    let options = MeasureOptions {
        duration: Duration::from_secs(SECONDS),
        rtt_probes: 0,
        ..MeasureOptions::default()
    };
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let m = measure(&**n1, &**n2, &options).await.expect("chaos measure");
        ours.push(m.mbit_per_s());
        let mut server = n2
            .start(ProcSpec::new("iperf3", ["-s", "-1", "-p", IPERF_PORT]))
            .await
            .expect("iperf3 -s on n2");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let seconds = SECONDS.to_string();
        let out = n1
            .run_timeout(
                ProcSpec::new("iperf3", ["-c", &target, "-p", IPERF_PORT, "-t", &seconds, "-J"]),
                None,
                Duration::from_secs(SECONDS + 30),
            )
            .await
            .expect("iperf3 -c on n1");
        let json: serde_json::Value = serde_json::from_str(&out.stdout_str()).expect("iperf3 -J output");
        let bps = json["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .expect("sum_received");
        theirs.push(bps / 1e6);
        let _ = server.wait().await;
        println!(
            "round {}: chaos net measure {:.0} Mbit/s, iperf3 {:.0} Mbit/s",
            round + 1,
            ours[round],
            theirs[round]
        );
        drop(server.stdout.take());
    }
    cluster.cleanup().await.expect("cleanup");
    let (o, t) = (median(ours), median(theirs));
    println!(
        "| TCP n1 → n2 over veth, {SECONDS} s, median of {ROUNDS} | chaos net measure {o:.0} Mbit/s | iperf3 {t:.0} Mbit/s | ratio {:.2} |",
        o / t
    );
}

fn main() {
    run_or_skip("netlab", netns::availability(), run());
}
