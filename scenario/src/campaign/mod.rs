//! Campaigns: one scenario run under many seeds, `parallel` at a time, each its own cluster and
//! its own run directory, with one aggregate verdict — the loop Jepsen users write by hand.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use chaos_scenario::campaign::{Campaign, SeedSet};
//! use chaos_scenario::Scenario;
//! let scenario = Scenario::from_file("scenarios/raft.toml")?;
//! let outcome = Campaign::new(scenario, SeedSet::parse("1..=8")?)
//!     .parallel(2)
//!     .run()
//!     .await?;
//! assert!(outcome.passed(), "failing seeds: {:?}", outcome.failing_seeds());
//! # Ok(()) }
//! ```
//!
//! Besides every seed's usual run directory, a campaign writes its own directory
//! (`<out>/<scenario>/campaign-<timestamp>/`): `campaign.json` (per seed: verdict, reason,
//! elapsed time, replay command, run directory), `junit.xml` (a test case per seed) and
//! `index.html` (every run's report, failing seeds first). Progress goes to a
//! [`CampaignObserver`]; nothing here draws on a terminal.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use tokio::task::JoinSet;

use super::engine::{RunError, RunOptions, Runner};
use super::model::Scenario;
use super::rundir::RunStatus;

mod report;
mod seeds;

pub use seeds::{MAX_SEEDS, SeedSet, SeedSetError};

/// How one seed of a campaign ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SeedVerdict {
    /// The run passed.
    Passed,
    /// An invariant was violated or the history was found invalid.
    Failed,
    /// The run could not set its system up or judge it (see the reason).
    Error,
    /// Interrupted (Ctrl-C, or stopped by `fail_fast` while it ran).
    Interrupted,
    /// Never started: the campaign stopped first (`fail_fast`, Ctrl-C).
    NotRun,
}

impl SeedVerdict {
    fn of(status: RunStatus) -> SeedVerdict {
        match status {
            RunStatus::Passed => SeedVerdict::Passed,
            RunStatus::Failed => SeedVerdict::Failed,
            RunStatus::Error => SeedVerdict::Error,
            RunStatus::Interrupted => SeedVerdict::Interrupted,
        }
    }

    /// Whether this seed makes the campaign fail (failed or error).
    pub fn is_failure(self) -> bool {
        matches!(self, SeedVerdict::Failed | SeedVerdict::Error)
    }
}

impl std::fmt::Display for SeedVerdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SeedVerdict::Passed => "passed",
            SeedVerdict::Failed => "failed",
            SeedVerdict::Error => "error",
            SeedVerdict::Interrupted => "interrupted",
            SeedVerdict::NotRun => "not run",
        })
    }
}

/// One seed's line in `campaign.json`.
#[derive(Debug, Clone, Serialize)]
pub struct SeedResult {
    /// The seed.
    pub seed: u64,
    /// How it ended.
    pub verdict: SeedVerdict,
    /// Why, when it did not pass.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// How long the run took.
    pub elapsed_ms: u64,
    /// The command that replays this seed alone.
    pub replay: String,
    /// Its run directory (none when it never started).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_dir: Option<PathBuf>,
    /// Its HTML report, when one was written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<PathBuf>,
}

/// Counts over a campaign's seeds.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct CampaignTotals {
    /// Seeds in the campaign.
    pub seeds: usize,
    /// Passed.
    pub passed: usize,
    /// Failed.
    pub failed: usize,
    /// Errors.
    pub errors: usize,
    /// Interrupted.
    pub interrupted: usize,
    /// Never started.
    pub not_run: usize,
}

impl CampaignTotals {
    fn of(results: &[SeedResult]) -> CampaignTotals {
        let count = |v: SeedVerdict| results.iter().filter(|r| r.verdict == v).count();
        CampaignTotals {
            seeds: results.len(),
            passed: count(SeedVerdict::Passed),
            failed: count(SeedVerdict::Failed),
            errors: count(SeedVerdict::Error),
            interrupted: count(SeedVerdict::Interrupted),
            not_run: count(SeedVerdict::NotRun),
        }
    }
}

/// What `campaign.json` holds.
#[derive(Debug, Clone, Serialize)]
pub struct CampaignSummary {
    /// The scenario's name.
    pub scenario: String,
    /// The master seed, when the seeds were drawn from one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub master_seed: Option<u64>,
    /// Runs at a time.
    pub parallel: usize,
    /// Whether the campaign stops at the first failing seed.
    pub fail_fast: bool,
    /// `passed` when every seed passed, `failed` when one failed or ended in error,
    /// `interrupted` otherwise.
    pub status: &'static str,
    /// Wall-clock start (RFC 3339, UTC).
    pub started_at: String,
    /// Duration of the whole campaign.
    pub elapsed_ms: u64,
    /// Counts.
    pub totals: CampaignTotals,
    /// Every seed, in the campaign's order.
    pub runs: Vec<SeedResult>,
}

/// A finished campaign.
#[derive(Debug, Clone)]
pub struct CampaignOutcome {
    /// What `campaign.json` holds.
    pub summary: CampaignSummary,
    /// The campaign directory.
    pub dir: PathBuf,
    /// Its `index.html`.
    pub index: PathBuf,
    /// Its `junit.xml`.
    pub junit: PathBuf,
}

impl CampaignOutcome {
    /// Whether every seed passed.
    pub fn passed(&self) -> bool {
        self.summary.status == "passed"
    }

    /// The seeds that failed or ended in error.
    pub fn failing_seeds(&self) -> Vec<u64> {
        self.summary
            .runs
            .iter()
            .filter(|r| r.verdict.is_failure())
            .map(|r| r.seed)
            .collect()
    }

    /// 0 every seed passed, 1 one failed or ended in error, 130 interrupted.
    pub fn exit_code(&self) -> u8 {
        match self.summary.status {
            "passed" => 0,
            "failed" => 1,
            _ => 130,
        }
    }
}

/// Receives a campaign's progress. Called from the campaign's task: keep it quick.
pub trait CampaignObserver: Send + Sync {
    /// A seed's run starts.
    fn started(&self, _seed: u64) {}
    /// A seed's run ended; `done` and `failed` count the seeds finished so far, of `total`.
    fn finished(&self, result: &SeedResult, done: usize, failed: usize, total: usize);
}

/// Why a campaign could not start (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum CampaignError {
    /// The scenario cannot run here, or the campaign's settings are wrong.
    #[error("{0}")]
    Invalid(String),
    /// The campaign directory could not be written.
    #[error("{context}: {source}")]
    Io {
        /// What was being written.
        context: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// A scenario to run under many seeds: `Campaign::new(scenario, seeds).parallel(4).run()`.
pub struct Campaign {
    scenario: Scenario,
    seeds: SeedSet,
    parallel: usize,
    fail_fast: bool,
    options: RunOptions,
    observer: Option<Arc<dyn CampaignObserver>>,
}

impl std::fmt::Debug for Campaign {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Campaign")
            .field("scenario", &self.scenario.name)
            .field("seeds", &self.seeds)
            .field("parallel", &self.parallel)
            .field("fail_fast", &self.fail_fast)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Campaign {
    /// A campaign of `scenario` over `seeds`, one run at a time, with default run options.
    pub fn new(scenario: Scenario, seeds: SeedSet) -> Campaign {
        Campaign {
            scenario,
            seeds,
            parallel: 1,
            fail_fast: false,
            options: RunOptions::default(),
            observer: None,
        }
    }

    /// Runs at a time (at least 1), each its own cluster.
    pub fn parallel(mut self, runs: usize) -> Campaign {
        self.parallel = runs.max(1);
        self
    }

    /// Stop at the first seed that fails: no new run starts and running ones are interrupted
    /// (healed and cleaned up as on Ctrl-C).
    pub fn fail_fast(mut self, yes: bool) -> Campaign {
        self.fail_fast = yes;
        self
    }

    /// The options every run gets (backend, its settings file, rounds, output directory,
    /// scenario file for the replay commands, cancellation). The seed is the campaign's and a
    /// run's observer is not used: progress goes to the campaign's observer.
    pub fn options(mut self, options: RunOptions) -> Campaign {
        self.options = options;
        self
    }

    /// Receives progress.
    pub fn observer(mut self, observer: Arc<dyn CampaignObserver>) -> Campaign {
        self.observer = Some(observer);
        self
    }

    /// Runs every seed and writes the campaign directory. `Err` only when the campaign could not
    /// start (an invalid scenario or environment, an unwritable directory); a run that fails or
    /// errs is a seed's verdict.
    pub async fn run(self) -> Result<CampaignOutcome, CampaignError> {
        let Campaign {
            scenario,
            seeds,
            parallel,
            fail_fast,
            options,
            observer,
        } = self;
        // What every run would refuse is refused once, before any cluster exists.
        let mut checked = scenario.clone();
        if let Some(b) = options.backend {
            checked.cluster.backend = b;
        }
        checked
            .override_rounds(options.rounds)
            .map_err(|e| CampaignError::Invalid(e.to_string()))?;
        checked
            .validate()
            .map_err(|e| CampaignError::Invalid(e.to_string()))?;
        let dir =
            report::create_dir(&options.out_dir, &scenario.name).map_err(|source| CampaignError::Io {
                context: format!(
                    "creating a campaign directory under {}",
                    options.out_dir.display()
                ),
                source,
            })?;
        let (_, started_at) = crate::rundir::timestamps();
        let start = Instant::now();
        let list = seeds.seeds();
        let total = list.len();
        let stop = options.cancel.child_token();
        let mut results: Vec<Option<SeedResult>> = vec![None; total];
        let mut running = JoinSet::new();
        let mut task_seed = std::collections::HashMap::new();
        let mut next = 0;
        let (mut done, mut failed) = (0, 0);
        loop {
            while running.len() < parallel && next < total && !stop.is_cancelled() {
                let seed = list[next];
                let mut run_options = options.clone();
                run_options.seed = Some(seed);
                run_options.observer = None;
                run_options.cancel = stop.child_token();
                let scenario = scenario.clone();
                if let Some(o) = &observer {
                    o.started(seed);
                }
                let index = next;
                let replay = replay_command(&scenario, &run_options, seed);
                let task = running.spawn(async move {
                    let begun = Instant::now();
                    let result = run_seed(scenario, run_options, seed).await;
                    (index, result, begun.elapsed().as_millis() as u64)
                });
                task_seed.insert(task.id(), (index, seed, replay));
                next += 1;
            }
            let Some(joined) = running.join_next().await else {
                break;
            };
            let (index, mut result, elapsed_ms) = match joined {
                Ok(r) => r,
                Err(e) => {
                    // A defect, not a verdict on the system: say so in the seed's line.
                    let (index, seed, replay) = task_seed.remove(&e.id()).unwrap_or_default();
                    tracing::error!(target: "chaos_scenario", "the run of seed {seed} ended abnormally: {e}");
                    let result = SeedResult {
                        seed,
                        verdict: SeedVerdict::Error,
                        reason: Some(format!("the run ended abnormally (a defect in chaos): {e}")),
                        elapsed_ms: 0,
                        replay,
                        run_dir: None,
                        report: None,
                    };
                    (index, result, 0)
                }
            };
            if result.run_dir.is_none() {
                result.elapsed_ms = elapsed_ms;
            }
            done += 1;
            if result.verdict.is_failure() {
                failed += 1;
                if fail_fast {
                    stop.cancel();
                }
            }
            if let Some(o) = &observer {
                o.finished(&result, done, failed, total);
            }
            results[index] = Some(result);
        }
        let runs: Vec<SeedResult> = results
            .into_iter()
            .zip(&list)
            .map(|(r, &seed)| {
                r.unwrap_or_else(|| SeedResult {
                    seed,
                    verdict: SeedVerdict::NotRun,
                    reason: Some("not started: the campaign stopped first".into()),
                    elapsed_ms: 0,
                    replay: replay_command(&scenario, &options, seed),
                    run_dir: None,
                    report: None,
                })
            })
            .collect();
        let totals = CampaignTotals::of(&runs);
        let status = if totals.failed + totals.errors > 0 {
            "failed"
        } else if totals.passed == totals.seeds {
            "passed"
        } else {
            "interrupted"
        };
        let summary = CampaignSummary {
            scenario: scenario.name.clone(),
            master_seed: seeds.master(),
            parallel,
            fail_fast,
            status,
            started_at,
            elapsed_ms: start.elapsed().as_millis() as u64,
            totals,
            runs,
        };
        let files = report::write(&dir, &summary).map_err(|source| CampaignError::Io {
            context: format!("writing the campaign's files in {}", dir.display()),
            source,
        })?;
        Ok(CampaignOutcome {
            summary,
            dir,
            index: files.index,
            junit: files.junit,
        })
    }
}

/// Runs one seed; a run that cannot start becomes an `error` verdict naming why.
async fn run_seed(scenario: Scenario, options: RunOptions, seed: u64) -> SeedResult {
    let replay = replay_command(&scenario, &options, seed);
    match Runner::new(scenario).options(options).run().await {
        Ok(outcome) => SeedResult {
            seed,
            verdict: SeedVerdict::of(outcome.status),
            reason: outcome.summary.reason.clone(),
            elapsed_ms: outcome.summary.elapsed_ms,
            replay: outcome.replay,
            run_dir: Some(outcome.run_dir),
            report: outcome.report,
        },
        Err(e) => SeedResult {
            seed,
            verdict: SeedVerdict::Error,
            reason: Some(match e {
                RunError::Invalid(why) => why,
                e => e.to_string(),
            }),
            elapsed_ms: 0,
            replay,
            run_dir: None,
            report: None,
        },
    }
}

/// The replay command of a seed that has no run of its own (the engine's, for the rest).
fn replay_command(scenario: &Scenario, options: &RunOptions, seed: u64) -> String {
    super::engine::replay_command(scenario, options, seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(seed: u64, verdict: SeedVerdict) -> SeedResult {
        SeedResult {
            seed,
            verdict,
            reason: None,
            elapsed_ms: 1,
            replay: format!("chaos run x.toml --seed {seed}"),
            run_dir: None,
            report: None,
        }
    }

    #[test]
    fn totals_count_each_verdict() {
        let runs = [
            result(1, SeedVerdict::Passed),
            result(2, SeedVerdict::Failed),
            result(3, SeedVerdict::Error),
            result(4, SeedVerdict::NotRun),
            result(5, SeedVerdict::Passed),
        ];
        assert_eq!(
            CampaignTotals::of(&runs),
            CampaignTotals {
                seeds: 5,
                passed: 2,
                failed: 1,
                errors: 1,
                interrupted: 0,
                not_run: 1
            }
        );
    }
}
