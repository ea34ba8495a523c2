//! List-append checker timings and memory: 10,000, 100,000 and 1,000,000 transactions of 4
//! micro-operations (goal: 100,000 in ≤ 5 s), how time grows, and what each consistency model
//! costs; then appending-register linearizability against plain registers.
//!
//! Run: `cargo bench -p chaos-check --bench list_append` (add words after `--` to run only the
//! sections whose titles contain them, e.g. `-- registers`). Histories come from the same
//! serial-execution generators as the property tests (valid by construction; 10 clients, 8 keys
//! in use, a key retired after 16 appends, half reads); generation is not timed. Time is the
//! median of several runs of `Checker::check`. Memory (first section only) is measured in a
//! fresh child process per row, so no other row's freed heap hides it: the peak resident set
//! (`VmHWM`, reset through `/proc/self/clear_refs` just before the check) next to the resident set
//! before the check, which holds the history itself. Exits with status 1 if the goal is missed.

#[path = "../tests/common/model.rs"]
mod model;
#[path = "../tests/common/txn_model.rs"]
mod txn_model;

use std::time::{Duration, Instant};

use chaos_check::{Checker, ConsistencyModel, History, Linearizability, ListAppend};
use model::{Params, append_register_history, register_history};
use txn_model::{TxnParams, list_append_history};

/// A `/proc/self/status` field in KiB.
fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Resets the peak resident set to the current one (Linux ≥ 4.0); false if it cannot.
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Median time over `runs` checks, the verdict, and (before, peak) resident set in MiB around
/// the first check.
fn measure(checker: &dyn Checker, history: &History, runs: usize) -> (Duration, String, Option<(f64, f64)>) {
    let mut times = Vec::with_capacity(runs);
    let mut verdict = String::new();
    let mut memory = None;
    for run in 0..runs {
        let before = if run == 0 && reset_peak() {
            status_kib("VmRSS:")
        } else {
            None
        };
        let start = Instant::now();
        let v = checker.check(history);
        times.push(start.elapsed());
        if let (Some(before), Some(peak)) = (before, status_kib("VmHWM:")) {
            memory = Some((before as f64 / 1024.0, peak as f64 / 1024.0));
        }
        verdict = v.valid.as_str().to_string();
    }
    times.sort();
    (times[times.len() / 2], verdict, memory)
}

fn row(label: &str, checker: &dyn Checker, history: &History, runs: usize) -> Duration {
    row_with(label, checker, history, runs, false)
}

fn row_with(label: &str, checker: &dyn Checker, history: &History, runs: usize, memory: bool) -> Duration {
    let (time, verdict, rss) = measure(checker, history, runs);
    let memory = match rss {
        Some((before, peak)) if memory => format!(
            "RSS {before:>6.0} MiB with the history, peak {peak:>6.0} MiB while checking (+{:.0})",
            peak - before
        ),
        _ => String::new(),
    };
    println!(
        "{label:<46} {:>9} ops {:>10.1} ms {:>8.2} µs/op  {verdict:<8} {memory}",
        history.ops.len(),
        time.as_secs_f64() * 1e3,
        time.as_secs_f64() * 1e6 / history.ops.len().max(1) as f64,
    );
    time
}

/// Whether a section runs: all do, unless arguments (after `--`) name words its title must contain.
fn wanted(title: &str) -> bool {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let run = filters.is_empty() || filters.iter().any(|f| title.contains(f.as_str()));
    if run {
        println!("\n== {title} ==");
    }
    run
}

/// Environment variable naming the row a child process measures (see [`one_row_in_a_child`]).
const CHILD_ROW: &str = "CHAOS_LIST_APPEND_BENCH_ROW";

/// Runs the list-append row for `txns` transactions in a fresh process and returns its time.
fn one_row_in_a_child(txns: usize, runs: usize) -> Duration {
    let output = std::process::Command::new(std::env::current_exe().expect("the bench's own path"))
        .env(CHILD_ROW, format!("{txns}:{runs}"))
        .output()
        .expect("starting the bench again as a child");
    let text = String::from_utf8_lossy(&output.stdout);
    print!(
        "{}",
        text.lines()
            .filter(|l| !l.starts_with("time_ms="))
            .map(|l| format!("{l}\n"))
            .collect::<String>()
    );
    text.lines()
        .find_map(|l| l.strip_prefix("time_ms="))
        .and_then(|t| t.parse::<f64>().ok())
        .map(|ms| Duration::from_secs_f64(ms / 1e3))
        .unwrap_or_else(|| {
            panic!(
                "the child measured nothing: {}",
                String::from_utf8_lossy(&output.stderr)
            )
        })
}

/// The child's side: one row, with memory, then its time for the parent.
fn child(spec: &str) {
    let (txns, runs) = spec.split_once(':').expect("txns:runs");
    let (txns, runs): (usize, usize) = (txns.parse().expect("txns"), runs.parse().expect("runs"));
    let h = list_append_history(txns as u64, &TxnParams::new(10, txns, 4));
    let strict = ListAppend::new(ConsistencyModel::StrictSerializable);
    let time = row_with(&format!("{txns} transactions"), &strict, &h, runs, true);
    println!("time_ms={}", time.as_secs_f64() * 1e3);
}

fn main() {
    if let Ok(spec) = std::env::var(CHILD_ROW) {
        return child(&spec);
    }
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("chaos-check list-append benchmark ({threads} hardware threads)");
    let strict = ListAppend::new(ConsistencyModel::StrictSerializable);
    let mut goal = None;

    if wanted("transactions of 4 micro-operations, 10 clients (strict-serializable)") {
        for (txns, runs) in [(10_000, 5), (100_000, 3), (1_000_000, 1)] {
            let time = one_row_in_a_child(txns, runs);
            if txns == 100_000 {
                goal = Some(time);
            }
        }
    }

    if wanted("each model, 100,000 transactions") {
        let h = list_append_history(7, &TxnParams::new(10, 100_000, 4));
        for model in ConsistencyModel::ALL {
            row(model.as_str(), &ListAppend::new(model), &h, 3);
        }
        let messy = list_append_history(
            8,
            &TxnParams {
                unknown: 0.05,
                fail: 0.05,
                ..TxnParams::new(10, 100_000, 4)
            },
        );
        row("strict, 5 % unknown, 5 % failed", &strict, &messy, 3);
    }

    if wanted("concurrency, 100,000 transactions (strict-serializable)") {
        for clients in [1, 10, 100] {
            let h = list_append_history(9 + clients as u64, &TxnParams::new(clients, 100_000, 4));
            row(&format!("{clients} clients"), &strict, &h, 3);
        }
    }

    if wanted("registers: appending vs plain linearizability (10 clients, keys = ops / 100)") {
        let checker = Linearizability::default();
        for ops in [10_000, 100_000] {
            let params = Params::new(10, ops / 100, ops);
            let plain = register_history(ops as u64, &params);
            let appending = append_register_history(ops as u64, &params, true);
            row(&format!("{ops} plain register operations"), &checker, &plain, 3);
            row(
                &format!("{ops} appending register operations"),
                &checker,
                &appending,
                3,
            );
        }
        let params = Params {
            unknown: 0.05,
            ..Params::new(10, 100, 10_000)
        };
        row(
            "10000 plain, 5 % unknown",
            &checker,
            &register_history(3, &params),
            3,
        );
        row(
            "10000 appending, 5 % unknown",
            &checker,
            &append_register_history(3, &params, true),
            3,
        );
        let one_key = Params::new(8, 1, 2_000);
        row(
            "2000 plain on one key, 8 clients",
            &checker,
            &register_history(4, &one_key),
            3,
        );
        row(
            "2000 appending on one key, 8 clients",
            &checker,
            &append_register_history(4, &one_key, false),
            3,
        );
        row(
            "the same with 3 % writes of []",
            &checker,
            &append_register_history(4, &one_key, true),
            1,
        );
    }

    if let Some(time) = goal {
        let limit = Duration::from_secs(5);
        println!(
            "\ngoal: 100,000 transactions of 4 micro-operations in {:.2} s; limit {} s: {}",
            time.as_secs_f64(),
            limit.as_secs(),
            if time <= limit { "PASS" } else { "FAIL" }
        );
        if time > limit {
            std::process::exit(1);
        }
    }
}
