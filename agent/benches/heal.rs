//! How late a fault heals after its TTL, and what a flood of file requests does to that and to
//! the agent's memory.
//!
//! `cargo bench -p chaos-agent --bench heal` starts one agent, pauses a process of it with a
//! 1 s TTL again and again, and times each heal from the fault's own expiry (`expires_ms`,
//! the agent's clock) to the moment the process is no longer stopped (`/proc/PID/stat` state,
//! read every 0.5 ms by a thread of its own). It does that on an idle agent and then while 600 clients
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
/// Long enough that an inject answer delayed by the flood still arrives before the expiry.
const TTL_MS: u64 = 1000;
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
/// Rounds whose inject answer arrived after the expiry are counted in `missed`.
async fn heal_latencies(agent: &Agent, id: u64, pid: u32, missed: &mut usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let req = FaultRequest {
            id: None,
            spec: FaultSpec::Freeze(FreezeTarget::Proc { id }),
            ttl_ms: TTL_MS,
        };
        let info: FaultInfo = agent.post("/v1/faults", &req).await;
        let expiry = info.expires_ms;
        if state(pid) != Some('T') {
            // Under the flood the answer can arrive after the TTL: the heal came first and its
            // latency cannot be seen from here. A pause not in place before its expiry is a bug.
            assert!(
                now_ms() >= expiry,
                "the process is not paused after inject returned"
            );
            *missed += 1;
            continue;
        }
        // The watcher is an OS thread of its own: a task of this runtime would wait behind the
        // flood's 600 client tasks, and the figure would be the harness's delay, not the agent's.
        let resumed = std::thread::spawn(move || {
            // Above the agent's fault threads (nice -10), so the watcher's own wait for a CPU
            // does not count as heal latency. Best effort: unprivileged, the figure is an upper
            // bound.
            // SAFETY: no pointers; PRIO_PROCESS with a thread id changes only this thread.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, -15) };
            while state(pid) == Some('T') {
                std::thread::sleep(Duration::from_micros(500));
            }
            now_ms()
        });
        let resumed = tokio::task::spawn_blocking(move || resumed.join().unwrap())
            .await
            .unwrap();
        out.push(resumed.saturating_sub(expiry) as f64);
        // Let the ledger settle before the next round.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    out
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(what: &str, mut ms: Vec<f64>, missed: usize) {
    ms.sort_by(|a, b| a.total_cmp(b));
    assert!(
        !ms.is_empty(),
        "{what}: no heal could be timed ({missed} answers came after the TTL)"
    );
    println!(
        "{what:<44} median {:>5.1} ms   p99 {:>6.1} ms   max {:>6.1} ms   ({} heals, {missed} not timed)",
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

    let mut missed = 0;
    let idle = heal_latencies(&agent, sleeper.id, sleeper.pid, &mut missed).await;
    report("heal after TTL, idle agent", idle, missed);

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
    let mut missed = 0;
    let flooded = heal_latencies(&agent, sleeper.id, sleeper.pid, &mut missed).await;
    let rate = (moved.load(Ordering::Relaxed) - before) as f64 / started.elapsed().as_secs_f64() / 1e6;
    report(
        &format!("heal after TTL, {CLIENTS} clients downloading"),
        flooded,
        missed,
    );
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
