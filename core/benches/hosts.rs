//! Benchmark of the `hosts` backend on a simulated lab (plain `main`, prints a table).
//!
//! Run with `cargo build --release -p chaos-agent && cargo bench -p chaos --bench hosts` as
//! root. Measures, against persistent agents already running in network namespaces
//! ([`chaos::backend::hosts::lab::Lab`]):
//!
//! * node ready: `create_nodes(1)` on a fresh `hosts` cluster until the node is usable — a new
//!   mutual-TLS connection, the lease taken, the run directory made, the first heartbeat and the
//!   version check answered;
//! * the run ended: `cleanup()` of that cluster — the agent heals, kills, removes the run
//!   directory and releases the lease (and the next runner could start).

use std::time::{Duration, Instant};

use chaos::backend::hosts::lab::{self, Lab};
use chaos::backend::new_cluster;

mod common;
use common::{Stats, header, row, run_or_skip};

const RUNS: usize = 25;

async fn run() {
    let lab = Lab::start("bench-hosts", 1, Duration::from_secs(30))
        .await
        .expect("starting the lab");
    let (mut ready, mut ended) = (Vec::new(), Vec::new());
    for i in 0..RUNS + 2 {
        let cluster = new_cluster("hosts", lab.cluster_options("bench"))
            .await
            .expect("a hosts cluster");
        let t = Instant::now();
        cluster.create_nodes(1).await.expect("creating a node");
        let made = t.elapsed();
        let t = Instant::now();
        cluster.cleanup().await.expect("cleanup");
        // Two warm-up rounds.
        if i >= 2 {
            ready.push(made);
            ended.push(t.elapsed());
        }
    }
    lab.cleanup().await.expect("lab cleanup");
    let (ready, ended) = (Stats::new(ready), Stats::new(ended));
    header("hosts benchmark");
    row(
        "node ready: connect + lease + run dir + heartbeat",
        &ready,
        "≤ 50 ms",
        ready.median() <= Duration::from_millis(50),
    );
    row(
        "run ended: heal + kill + run dir removed + lease released",
        &ended,
        "-",
        true,
    );
}

fn main() {
    run_or_skip("hosts", lab::availability(), run());
}
