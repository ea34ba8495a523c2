//! How late a fault heals after its TTL, and what a flood of file requests does to that and to
//! the agent's memory.
//!
//! `cargo bench -p chaos-agent --bench heal` starts one agent, pauses a process of it with a
//! 200 ms TTL again and again, and times each heal from the fault's own expiry (`expires_ms`,
//! the agent's clock) to the moment the process is no longer stopped (`/proc/PID/stat` state,
//! read by this harness every 0.5 ms). It does that on an idle agent and then while 600 clients
//! keep downloading a 16 MiB file (each download passes through the agent's file gate and
//! tokio's blocking pool, which heals do not use), and reports median and p99 of each, plus the
//! agent's peak RSS (`VmHWM`) under the flood.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use chaos_proto::fault::{FaultInfo, FaultRequest, FaultSpec, FreezeTarget};
use chaos_proto::{OutputSpec, ProcSpec, ProcStarted};
use common::{Agent, enc, path_str};
use hyper::Method;

const ROUNDS: usize = 60;
const TTL_MS: u64 = 200;
const CLIENTS: usize = 600;

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The process state letter from `/proc/PID/stat` (after the command name's closing paren).
fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Milliseconds from each fault's expiry to its process running again.
async fn heal_latencies(agent: &Agent, id: u64, pid: u32) -> Vec<f64> {
    let mut out = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let req = FaultRequest {
            id: None,
            spec: FaultSpec::Freeze(FreezeTarget::Proc { id }),
            ttl_ms: TTL_MS,
        };
        let info: FaultInfo = agent.post("/v1/faults", &req).await;
        assert_eq!(state(pid), Some('T'), "paused");
        let expiry = info.expires_ms;
        loop {
            if state(pid) != Some('T') {
                break;
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        out.push(now_ms().saturating_sub(expiry) as f64);
        // Let the ledger settle before the next round.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    out
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(what: &str, mut ms: Vec<f64>) {
    ms.sort_by(|a, b| a.total_cmp(b));
    println!(
        "{what:<44} median {:>5.1} ms   p99 {:>6.1} ms   max {:>6.1} ms   ({} heals)",
        percentile(&ms, 0.5),
        percentile(&ms, 0.99),
        ms[ms.len() - 1],
        ms.len()
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let agent = Agent::start(&["--heartbeat-timeout", "10m"]);
    let pid = agent.child.id();
    let mut spec = ProcSpec::new("sleep", ["100000"]);
    spec.stdout = OutputSpec::Null;
    spec.stderr = OutputSpec::Null;
    let sleeper: ProcStarted = agent.post("/v1/procs", &spec).await;

    report(
        "heal after TTL, idle agent",
        heal_latencies(&agent, sleeper.id, sleeper.pid).await,
    );

    let file = agent.root().join("big.bin");
    std::fs::write(&file, vec![7u8; 16 << 20]).unwrap();
    let path = format!("/v1/files?path={}", enc(&path_str(&file)));
    let stop = Arc::new(AtomicBool::new(false));
    let moved = Arc::new(AtomicU64::new(0));
    let mut flood = Vec::new();
    for _ in 0..CLIENTS {
        let (addr, client, path, stop, moved) = (
            agent.addr,
            agent.client.clone(),
            path.clone(),
            stop.clone(),
            moved.clone(),
        );
        flood.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Ok((_, body)) =
                    common::request_with(addr, &client, Method::GET, &path, Bytes::new()).await
                {
                    moved.fetch_add(body.len() as u64, Ordering::Relaxed);
                }
            }
        }));
    }
    // Let the flood build up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = Instant::now();
    let before = moved.load(Ordering::Relaxed);
    let flooded = heal_latencies(&agent, sleeper.id, sleeper.pid).await;
    let rate = (moved.load(Ordering::Relaxed) - before) as f64 / started.elapsed().as_secs_f64() / 1e6;
    report(&format!("heal after TTL, {CLIENTS} clients downloading"), flooded);
    println!(
        "{:<44} {rate:.0} MB/s of downloads during the heals; agent peak RSS {} MiB (now {} MiB, threads {})",
        "",
        status_kib(pid, "VmHWM:") / 1024,
        status_kib(pid, "VmRSS:") / 1024,
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .unwrap_or("?")
            .trim()
    );
    stop.store(true, Ordering::Relaxed);
    for task in flood {
        task.abort();
    }
}
