//! Large `netns` clusters (plain `main`, prints a table): creation time at 10, 100, 500 and
//! 1,000 nodes with where the time goes, and the runner's CPU and memory while it heartbeats
//! every agent of the largest cluster.
//!
//! Run as root with `cargo bench -p chaos --bench netns_scale` (sizes: `CHAOS_BENCH_SIZES=10,100`;
//! idle window: `CHAOS_BENCH_IDLE_SECS`, default 20). A thousand nodes need the kernel's
//! neighbour table raised (`docs/scale.md`); the cluster's capacity check says so.
//!
//! Per size: total creation time (one `create_nodes` call), node-ready time (the median gap
//! between consecutive `NodesReady` progress events, per node), the throughput of the first and
//! the last tenth of the nodes (flat means creation cost does not grow with the cluster), and
//! how the machine's CPU time during creation split between the runner (this process) and
//! everything else (agents starting, the kernel making namespaces and links).

use std::time::{Duration, Instant};

use chaos::Cluster;
use chaos::backend::ClusterOptions;
use chaos::backend::netns::{self, NetnsCluster};
use chaos::backend::supervisor::AgentEvent;

mod common;
use common::run_or_skip;

/// Clock ticks per second of `/proc` CPU times (USER_HZ, 100 on Linux).
const TICKS: f64 = 100.0;

/// This process's user + system CPU time, in ticks.
fn own_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    let rest = &stat[stat.rfind(')').expect("a comm field") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0)
}

/// The whole machine's busy CPU time (everything but idle and iowait), in ticks.
fn machine_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    let cpu: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    cpu.iter().sum::<u64>() - cpu.get(3).copied().unwrap_or(0) - cpu.get(4).copied().unwrap_or(0)
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

struct Size {
    nodes: usize,
    total: Duration,
    ready_median: Duration,
    first_tenth: f64,
    last_tenth: f64,
    runner_cpu: f64,
    other_cpu: f64,
    cleanup: Duration,
}

async fn one_size(nodes: usize, idle: Duration, measure_idle: bool) -> Size {
    let cluster = NetnsCluster::new(ClusterOptions {
        name: format!("bench-{nodes}"),
        ..ClusterOptions::default()
    })
    .await
    .expect("creating a netns cluster");
    let mut events = cluster.agent_events().expect("agent events");
    let started = Instant::now();
    let collector = tokio::spawn(async move {
        let mut stamps = vec![(0u32, Duration::ZERO)];
        while let Ok(event) = events.recv().await {
            if let AgentEvent::NodesReady { ready, total, .. } = event {
                stamps.push((ready, started.elapsed()));
                if ready == total {
                    break;
                }
            }
        }
        stamps
    });
    let (own0, all0) = (own_ticks(), machine_ticks());
    cluster.create_nodes(nodes).await.expect("creating the nodes");
    let total = started.elapsed();
    let (own1, all1) = (own_ticks(), machine_ticks());
    let stamps = collector.await.expect("progress");
    // Per-node gaps between progress events, and throughput at both ends.
    let mut per_node: Vec<Duration> = stamps
        .windows(2)
        .map(|w| (w[1].1 - w[0].1) / (w[1].0 - w[0].0).max(1))
        .collect();
    per_node.sort();
    let ready_median = per_node.get(per_node.len() / 2).copied().unwrap_or_default();
    let rate = |from: u32, to: u32| {
        let at = |n: u32| stamps.iter().find(|(r, _)| *r >= n).map(|(r, t)| (*r, *t));
        match (at(from), at(to)) {
            (Some((r0, t0)), Some((r1, t1))) if t1 > t0 => f64::from(r1 - r0) / (t1 - t0).as_secs_f64(),
            _ => f64::NAN,
        }
    };
    let n = nodes as u32;
    let (first_tenth, last_tenth) = (rate(0, n / 10), rate(n - n / 10, n));
    let runner_cpu = (own1 - own0) as f64 / TICKS;
    let other_cpu = (all1 - all0).saturating_sub(own1 - own0) as f64 / TICKS;

    if measure_idle {
        let (own0, rss0) = (own_ticks(), rss_mib());
        let t = Instant::now();
        tokio::time::sleep(idle).await;
        let cpu = (own_ticks() - own0) as f64 / TICKS / t.elapsed().as_secs_f64() * 100.0;
        let fds = std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0);
        println!(
            "runner heartbeating {nodes} agents for {:.0}s: {cpu:.1}% of one core, RSS {rss0:.0} → {:.0} MiB, {fds} open files",
            idle.as_secs_f64(),
            rss_mib()
        );
    }
    let t = Instant::now();
    cluster.cleanup().await.expect("cleanup");
    Size {
        nodes,
        total,
        ready_median,
        first_tenth,
        last_tenth,
        runner_cpu,
        other_cpu,
        cleanup: t.elapsed(),
    }
}

async fn run() {
    let sizes: Vec<usize> = std::env::var("CHAOS_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![10, 100, 500, 1000]);
    let idle = Duration::from_secs(
        std::env::var("CHAOS_BENCH_IDLE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(20),
    );
    let largest = sizes.iter().copied().max().unwrap_or(0);
    let mut rows = Vec::new();
    for &nodes in &sizes {
        rows.push(one_size(nodes, idle, nodes == largest).await);
    }
    println!(
        "| nodes | created in | node ready (median, per node) | nodes/s first 10% | nodes/s last 10% | CPU s: runner / agents+kernel | cleanup |"
    );
    println!("|---|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {:.2} s | {:.1} ms | {:.0} | {:.0} | {:.1} / {:.1} | {:.2} s |",
            r.nodes,
            r.total.as_secs_f64(),
            r.ready_median.as_secs_f64() * 1e3,
            r.first_tenth,
            r.last_tenth,
            r.runner_cpu,
            r.other_cpu,
            r.cleanup.as_secs_f64()
        );
    }
}

fn main() {
    run_or_skip("netns_scale", netns::availability(), run());
}
