//! Campaign throughput (plain `main`, prints a table): seeds per minute of `scenarios/raft.toml`
//! with one round, at `--parallel` 1, 2 and 4, through `chaos_scenario::campaign` — the same
//! code `chaos run --seeds` drives.
//!
//! Run as root with etcd installed: `cargo bench -p chaos-scenario --bench campaign`
//! (`CHAOS_BENCH_PARALLEL=1,2,4`, `CHAOS_BENCH_SEEDS` seeds per setting, default 4; the backend
//! is raft.toml's, netns). Every seed is a full run: cluster, etcd started, one round of faults,
//! recovery checks, the history checked, teardown.

use std::path::Path;
use std::time::Instant;

use chaos_scenario::campaign::{Campaign, SeedSet};
use chaos_scenario::{RunOptions, Scenario};

fn main() {
    if let Err(why) = chaos::backend::registry::available("netns") {
        eprintln!("campaign benchmark skipped: {why}");
        return;
    }
    let parallel: Vec<usize> = std::env::var("CHAOS_BENCH_PARALLEL")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 2, 4]);
    let seeds: u64 = std::env::var("CHAOS_BENCH_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/raft.toml");
    let scenario = Scenario::from_file(&file).expect("scenarios/raft.toml");
    let out = tempfile::tempdir().expect("a temporary directory");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    println!("| --parallel | seeds | passed | elapsed | seeds/minute | mean seconds per run |");
    println!("|---|---|---|---|---|---|");
    for (i, k) in parallel.into_iter().enumerate() {
        // Fresh seeds per setting, so no two settings replay the same plans.
        let first = 1000 * (i as u64 + 1);
        let set = SeedSet::parse(&format!("{first}..{}", first + seeds)).expect("seeds");
        let started = Instant::now();
        let outcome = runtime
            .block_on(
                Campaign::new(scenario.clone(), set)
                    .parallel(k)
                    .options(RunOptions {
                        rounds: Some(1),
                        out_dir: out.path().to_path_buf(),
                        scenario_file: Some(file.clone()),
                        ..RunOptions::default()
                    })
                    .run(),
            )
            .expect("the campaign starts");
        let elapsed = started.elapsed().as_secs_f64();
        let t = &outcome.summary.totals;
        let mean =
            outcome.summary.runs.iter().map(|r| r.elapsed_ms).sum::<u64>() as f64 / 1000.0 / t.seeds as f64;
        println!(
            "| {k} | {} | {} | {elapsed:.1} s | {:.2} | {mean:.1} |",
            t.seeds,
            t.passed,
            t.seeds as f64 / (elapsed / 60.0)
        );
    }
}
