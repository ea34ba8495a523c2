//! Operations per second through the workload paths, side by side, on one local node (real
//! agent, real processes): the `adapter` path against the in-memory echo adapter (on the node
//! and on the runner), against real Redis through `chaos-adapter-redis` when `redis-server` is
//! installed, and the `command` path (a process per operation). Per path it prints operations,
//! ops/s and the latency of one operation as the engine recorded it (invocation to completion)
//! — with the echo adapter, whose own work is nothing, that latency is the engine's overhead
//! per operation.
//!
//! `cargo bench -p chaos-adapters --bench throughput` (add `-- SECONDS` to change the 10 s a
//! path runs). A harness that prints figures, not a timed assertion.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chaos_check::{History, Outcome};
use chaos_scenario::{Runner, Scenario};

const ECHO: &str = env!("CARGO_BIN_EXE_chaos-adapter-echo");
const REDIS: &str = env!("CARGO_BIN_EXE_chaos-adapter-redis");

/// The scenario of one path: one node, 8 clients asking as fast as pacing allows (1 ms per
/// client), and one fault case (a pause of an idle process) whose duration is how long the
/// workload runs.
fn scenario(workload: &str, start: &str, seconds: u64) -> String {
    format!(
        r#"
[cluster]
backend = "local"
nodes = 1
[setup.start]
command = {start}
[workload]
type = {workload}
rate = 100000
concurrency = 8
keys = 8
final_reads = false
[[faults]]
name = "hold"
kind = "pause"
target = "one"
duration = "{seconds}s"
[history]
checkers = ["availability"]
max_error_fraction = 1.0
"#
    )
}

fn measure(label: &str, text: &str) {
    let dir = tempfile::tempdir().unwrap();
    let scenario = Scenario::parse(text, "bench.toml").unwrap_or_else(|e| panic!("{label}: {e}"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let outcome = rt
        .block_on(Runner::new(scenario).seed(1).out_dir(dir.path()).run())
        .unwrap_or_else(|e| panic!("{label}: {e}"));
    report(label, &outcome.run_dir);
}

fn report(label: &str, run_dir: &Path) {
    let text = std::fs::read_to_string(run_dir.join("history.jsonl")).unwrap();
    let history = History::parse(&text, "history.jsonl").unwrap();
    let ok: Vec<_> = history.ops.iter().filter(|o| o.outcome == Outcome::Ok).collect();
    let (Some(first), Some(last)) = (
        history.ops.iter().map(|o| o.invoke_us).min(),
        history.ops.iter().filter_map(|o| o.complete_us).max(),
    ) else {
        println!("{label:<28} no operations");
        return;
    };
    let span = Duration::from_micros(last - first).as_secs_f64().max(1e-6);
    let mut lat: Vec<u64> = ok
        .iter()
        .filter_map(|o| Some(o.complete_us? - o.invoke_us))
        .collect();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0)
    };
    let mean = lat.iter().sum::<u64>() as f64 / lat.len().max(1) as f64;
    println!(
        "{label:<28} {:>7} ops ({:>6} ok) {:>9.0} ops/s   latency µs: mean {:>7.0}  p50 {:>6}  p99 {:>6}",
        history.ops.len(),
        ok.len(),
        history.ops.len() as f64 / span,
        mean,
        pct(0.5),
        pct(0.99)
    );
}

/// A `redis-server` on a free port for the Redis path, if one is installed.
fn redis() -> Option<(Child, u16)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .ok()?;
    for _ in 0..50 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some((child, port));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

fn main() {
    let seconds: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(10);
    let idle = r#"["sh", "-c", "sleep 600; : {{ run_id }}"]"#;
    let ops = "\n[[workload.ops]]\nkind = \"write\"\n[[workload.ops]]\nkind = \"read\"\n";
    println!("each path runs {seconds}s, 8 clients, 1 local node");
    for on in ["node", "runner"] {
        let text = scenario("\"adapter\"", idle, seconds)
            + &format!("[workload.adapter]\ncommand = [\"{ECHO}\"]\non = \"{on}\"\n")
            + ops;
        measure(&format!("adapter echo (on {on})"), &text);
    }
    match redis() {
        Some((mut server, port)) => {
            for on in ["node", "runner"] {
                let text = scenario("\"adapter\"", idle, seconds)
                    + &format!(
                        "[workload.adapter]\ncommand = [\"{REDIS}\", \"--addr\", \"127.0.0.1:{port}\"]\non = \"{on}\"\n"
                    )
                    + ops;
                measure(&format!("adapter redis (on {on})"), &text);
            }
            let _ = server.kill();
            let _ = server.wait();
        }
        None => println!("adapter redis                skipped: no redis-server"),
    }
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().display();
    let text = scenario("\"command\"", idle, seconds)
        + &format!(
            "[[workload.ops]]\nkind = \"write\"\ncommand = \"echo {{{{ value }}}} > {store}/{{{{ key }}}}\"\n\
             [[workload.ops]]\nkind = \"read\"\ncommand = \"cat {store}/{{{{ key }}}} 2>/dev/null || true\"\n"
        );
    measure("command (sh per op)", &text);
}
