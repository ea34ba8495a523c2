//! What the benchmark harnesses share: sorted samples and the table they print.

#![allow(dead_code)] // Each harness uses a different subset.

use std::future::Future;
use std::time::Duration;

/// The body of a harness's `main`: runs `bench` on a two-worker runtime (the machine has two
/// cores), or says why `name` is skipped when the backend is not `available`. `cargo bench`
/// passes `--bench`; no other argument (filters) is supported.
pub fn run_or_skip(name: &str, available: Result<(), String>, bench: impl Future<Output = ()>) {
    if let Err(why) = available {
        eprintln!("{name} benchmarks skipped: {why}");
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(bench);
}

/// Samples of one measurement, sorted.
pub struct Stats {
    /// The samples, shortest first.
    pub samples: Vec<Duration>,
}

impl Stats {
    /// Sorts `samples`, which must not be empty.
    pub fn new(mut samples: Vec<Duration>) -> Self {
        assert!(!samples.is_empty(), "a measurement without samples");
        samples.sort();
        Self { samples }
    }

    /// The `p` quantile (0 to 1), nearest rank.
    pub fn pct(&self, p: f64) -> Duration {
        let i = ((self.samples.len() - 1) as f64 * p).round() as usize;
        self.samples[i]
    }

    /// The median.
    pub fn median(&self) -> Duration {
        self.pct(0.5)
    }

    /// The shortest sample.
    pub fn min(&self) -> Duration {
        self.samples[0]
    }

    /// The longest sample.
    pub fn max(&self) -> Duration {
        self.samples[self.samples.len() - 1]
    }
}

/// Milliseconds with two decimals.
pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// Prints the header of a table of [`row`]s titled `title`.
pub fn header(title: &str) {
    println!(
        "| {title:<40} | {:>4} | {:>10} | {:>10} | {:>10} | {:>10} | {:<18} | {:<4} |",
        "n", "median", "p90", "min", "max", "target", ""
    );
    println!(
        "|{:-<42}|{:-<6}|{:-<12}|{:-<12}|{:-<12}|{:-<12}|{:-<20}|{:-<6}|",
        "", "", "", "", "", "", "", ""
    );
}

/// Prints one measurement: count, median, p90, min, max, the target and whether it was met.
pub fn row(what: &str, stats: &Stats, target: &str, ok: bool) {
    println!(
        "| {what:<40} | {:>4} | {:>10} | {:>10} | {:>10} | {:>10} | {target:<18} | {:<4} |",
        stats.samples.len(),
        ms(stats.median()),
        ms(stats.pct(0.9)),
        ms(stats.min()),
        ms(stats.max()),
        if ok { "ok" } else { "MISS" }
    );
}
