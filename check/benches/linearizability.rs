//! Linearizability checker timings: the 10,000-operation / 10-client / 100-key target (≤ 1 s), and
//! how time grows with clients, history length and concurrency on a single key.
//!
//! Run: `cargo bench -p chaos-check --bench linearizability`. Histories come from the same
//! sequential-model generator as the property tests (valid by construction); generation is not
//! timed. Each figure is the median of several runs of `Linearizability::check` with default
//! settings (all cores, default budget) unless the row says otherwise. Exits with status 1 if the
//! target is missed.

#[path = "../tests/common/model.rs"]
mod model;

use std::time::{Duration, Instant};

use chaos_check::{Budget, Checker, History, Linearizability, Validity};
use model::{Params, inject_violation, register_history};

fn median_time(checker: &Linearizability, history: &History, runs: usize) -> (Duration, Validity, u64) {
    let mut times = Vec::with_capacity(runs);
    let mut last = None;
    for _ in 0..runs {
        let start = Instant::now();
        let verdict = checker.check(history);
        times.push(start.elapsed());
        last = Some(verdict);
    }
    times.sort();
    let verdict = last.expect("at least one run");
    let steps = verdict.details["steps"].as_u64().unwrap_or(0);
    (times[times.len() / 2], verdict.valid, steps)
}

fn row(label: &str, checker: &Linearizability, history: &History, runs: usize) -> Duration {
    let (time, valid, steps) = median_time(checker, history, runs);
    println!(
        "{label:<44} {:>8} ops {:>11.1} ms {:>12} steps  {}",
        history.ops.len(),
        time.as_secs_f64() * 1e3,
        steps,
        valid.as_str()
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

fn main() {
    let default = Linearizability::default();
    let single_thread = Linearizability {
        threads: 1,
        ..Linearizability::default()
    };
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("chaos-check linearizability benchmark ({threads} hardware threads)");

    wanted("target: 10,000 operations, 10 clients, 100 keys (≤ 1 s)");
    let target = register_history(1, &Params::new(10, 100, 10_000));
    let time = row("all ok", &default, &target, 7);
    row("all ok, 1 thread", &single_thread, &target, 5);
    let messy = register_history(
        2,
        &Params {
            unknown: 0.05,
            fail: 0.02,
            ..Params::new(10, 100, 10_000)
        },
    );
    let messy_time = row("5 % unknown, 2 % failed", &default, &messy, 7);
    let mut broken = register_history(3, &Params::new(10, 100, 10_000));
    inject_violation(&mut broken, 3);
    let broken_time = row("one stale read (incl. minimizing it)", &default, &broken, 7);

    if wanted("growth with clients (10,000 operations, 100 keys, 5 % unknown)") {
        for clients in [1, 2, 5, 10, 20, 50, 100] {
            let h = register_history(
                10 + clients as u64,
                &Params {
                    unknown: 0.05,
                    ..Params::new(clients, 100, 10_000)
                },
            );
            row(&format!("{clients} clients"), &default, &h, 3);
        }
    }

    if wanted("growth with history length (10 clients, keys = ops / 100, 5 % unknown)") {
        for ops in [1_000, 10_000, 100_000, 300_000] {
            let h = register_history(
                20 + ops as u64,
                &Params {
                    unknown: 0.05,
                    ..Params::new(10, ops / 100, ops)
                },
            );
            row(&format!("{ops} operations"), &default, &h, 3);
        }
    }

    if wanted("growth with history length on ONE key (4 clients, all ok)") {
        for ops in [1_000, 10_000, 100_000] {
            let h = register_history(30 + ops as u64, &Params::new(4, 1, ops));
            row(&format!("{ops} operations on one key"), &default, &h, 3);
        }
    }

    if wanted("concurrency on ONE key (1,000 operations, all ok)") {
        for clients in [2, 4, 8, 16, 24, 32, 64] {
            let h = register_history(60 + clients as u64, &Params::new(clients, 1, 1_000));
            row(&format!("{clients} clients on one key"), &default, &h, 3);
        }
    }

    if wanted("concurrency on ONE key (1,000 operations, 5 % unknown)") {
        for clients in [2, 4, 8, 16, 24, 32, 64] {
            let h = register_history(
                40 + clients as u64,
                &Params {
                    unknown: 0.05,
                    ..Params::new(clients, 1, 1_000)
                },
            );
            row(&format!("{clients} clients on one key"), &default, &h, 3);
        }
    }

    if wanted("a budget turns a blow-up into `unknown` (64 clients, one key, 20 % unknown, small values)") {
        let hard = register_history(
            50,
            &Params {
                unknown: 0.2,
                unique_values: false,
                max_latency_us: 5_000,
                ..Params::new(64, 1, 2_000)
            },
        );
        let small = Linearizability {
            budget: Budget {
                max_steps_per_key: 2_000_000,
                ..Budget::default()
            },
            ..Linearizability::default()
        };
        row("2M-step budget", &small, &hard, 1);
        row("default budget (20M steps, 1 GiB)", &default, &hard, 1);
    }

    let limit = Duration::from_secs(1);
    let worst = time.max(messy_time).max(broken_time);
    println!(
        "\ntarget: 10,000 ops / 10 clients / 100 keys in {:.1} ms (worst variant {:.1} ms); limit {} ms: {}",
        time.as_secs_f64() * 1e3,
        worst.as_secs_f64() * 1e3,
        limit.as_millis(),
        if worst <= limit { "PASS" } else { "FAIL" }
    );
    if worst > limit {
        std::process::exit(1);
    }
}
