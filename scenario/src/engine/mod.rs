//! The engine: runs a scenario's plan against real processes — the etcd functional tester's loop
//! (start the cluster, inject a failure, expect recovery within a bound), for any system and
//! replayable from its seed.
//!
//! 1. **Environment**: the backend is available and shipped files exist. Otherwise the run is
//!    invalid (exit 2).
//! 2. **Setup**: a cluster of `cluster.nodes` nodes; every fault case is checked against what
//!    the cluster and its nodes say they can do ([`crate::nemesis::Nemesis::supports`]: the
//!    agents' probe reports, the cluster's machine faults) before anything else happens — no
//!    table of backends here; shipped files, templated files and setup
//!    commands on every node; the system started on every node (its stdout and stderr in
//!    `<root>/logs/system.log`); readiness checks.
//! 3. **Schedule**: the workload runs while the plan's steps are injected through the nemesis of
//!    their fault's family ([`crate::nemesis`]) and healed after their duration; after every heal the `heal` invariants must
//!    pass within their timeout (the recovery bound). A step whose selector picks nobody is
//!    skipped with the reason; a violated invariant stops the schedule.
//! 4. **End**: the workload stops (with final reads), the `end` invariants run, the history
//!    checkers judge what the clients saw.
//! 5. **Teardown**, always — also on errors and Ctrl-C: every fault healed, teardown commands,
//!    the system stopped, logs (and data directories of failed nodes) collected, the cluster
//!    cleaned up, `summary.json` and the report written.
//!
//! Modules by job: this one is the public API ([`Runner`], [`RunOptions`], [`Progress`]);
//! `run` the run's state and its course, `setup` setup and teardown, `schedule` the steps'
//! timeline, injection and healing, `verdict` the invariants and the history's judgement.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::model::{Backend, Scenario};
use super::plan::Plan;
use super::rundir::{RunDir, RunStatus, Summary};

mod run;
mod schedule;
mod setup;
#[cfg(test)]
mod tests;
mod verdict;

use run::Run;

/// Extra time a fault lives on its node beyond its planned duration: the node heals it by itself
/// after that, should the runner die.
const TTL_MARGIN: Duration = Duration::from_secs(30);

/// Bound on a setup or teardown command.
const COMMAND_BOUND: Duration = Duration::from_secs(60);

/// Most bytes of a failed node's data directory copied into the run directory.
const DATA_ARCHIVE_LIMIT: u64 = 256 << 20;

/// How long the workload may take to succeed on a healed node before the run goes on, when the
/// scenario sets no `history.max_recovery` (scaled by `timeout_multiplier`).
const DEFAULT_WORKLOAD_RECOVERY: Duration = Duration::from_secs(20);

/// What a run reports while it runs, for a front end to show. The engine draws nothing itself:
/// the `chaos` command renders these as a progress line and step lines; tests may record them.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// What the run is doing now: "starting the system", "pause 1.0s", "recovery checks after …".
    Doing(String),
    /// Something that happened and deserves a line of its own: a step's outcome, a skipped
    /// case, an agent restarted, the invariants' verdict.
    Line(String),
    /// The workload's operation counts so far, sampled about once a second while it runs, with
    /// the rate since the previous sample.
    Ops {
        /// Operations that completed successfully.
        ok: u64,
        /// Operations that definitely failed.
        fail: u64,
        /// Operations whose outcome is unknown.
        unknown: u64,
        /// Operations per second since the previous sample.
        rate: Option<f64>,
    },
    /// The run is over (the summary follows in [`RunOutcome`]).
    Finished,
}

/// Receives a run's [`Progress`] as it happens. Called from the engine's tasks: keep it quick.
pub trait RunObserver: Send + Sync {
    /// One progress report.
    fn progress(&self, progress: Progress);
}

/// How a run is configured beyond its scenario.
#[derive(Clone)]
pub struct RunOptions {
    /// The seed; drawn when absent.
    pub seed: Option<u64>,
    /// Overrides `cluster.backend`.
    pub backend: Option<Backend>,
    /// The backend's own settings file (`chaos::backend::ClusterOptions::backend_config`).
    pub backend_config: Option<PathBuf>,
    /// Overrides `schedule.rounds`.
    pub rounds: Option<u32>,
    /// Overrides entries of `[values]` (each must be declared there, with the same type).
    pub values: BTreeMap<String, toml::Value>,
    /// Where run directories go (default `runs`).
    pub out_dir: PathBuf,
    /// The scenario's file, for the replay command.
    pub scenario_file: Option<PathBuf>,
    /// Receives live progress (none: the run is silent; everything is still in the run
    /// directory).
    pub observer: Option<Arc<dyn RunObserver>>,
    /// Fires to interrupt the run (Ctrl-C): faults are healed and everything cleaned up.
    pub cancel: CancellationToken,
    /// Keep each node's root directory when the run fails or errs
    /// (`chaos::backend::ClusterOptions::keep_failed_runs`); where they are lands in
    /// `summary.json` ([`crate::rundir::Summary::kept`]).
    pub keep_failed: bool,
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("seed", &self.seed)
            .field("backend", &self.backend)
            .field("backend_config", &self.backend_config)
            .field("rounds", &self.rounds)
            .field("values", &self.values)
            .field("out_dir", &self.out_dir)
            .field("scenario_file", &self.scenario_file)
            .field("observer", &self.observer.is_some())
            .field("keep_failed", &self.keep_failed)
            .finish_non_exhaustive()
    }
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            seed: None,
            backend: None,
            backend_config: None,
            rounds: None,
            values: BTreeMap::new(),
            out_dir: PathBuf::from("runs"),
            scenario_file: None,
            observer: None,
            cancel: CancellationToken::new(),
            keep_failed: false,
        }
    }
}

/// The result of a run.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// How it ended.
    pub status: RunStatus,
    /// The seed used.
    pub seed: u64,
    /// The run directory.
    pub run_dir: PathBuf,
    /// What `summary.json` holds.
    pub summary: Summary,
    /// The command that replays the run.
    pub replay: String,
    /// The HTML report, when written.
    pub report: Option<PathBuf>,
}

impl RunOutcome {
    /// Whether every invariant held and the history was found valid.
    pub fn passed(&self) -> bool {
        self.status == RunStatus::Passed
    }

    /// 0 passed, 1 failed, 2 error, 130 interrupted.
    pub fn exit_code(&self) -> u8 {
        self.status.exit_code()
    }
}

/// Why a run could not start: an invalid scenario or environment (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The scenario, its plan or the machine cannot run it; the message says what to do.
    #[error("{0}")]
    Invalid(String),
    /// The run directory could not be written.
    #[error("{context}: {source}")]
    Io {
        /// What was being written.
        context: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Runs a scenario: `Runner::new(scenario).seed(7).run().await`.
#[derive(Debug)]
pub struct Runner {
    scenario: Scenario,
    options: RunOptions,
    plan: Option<Plan>,
}

impl Runner {
    /// A runner of `scenario` with default options.
    pub fn new(scenario: Scenario) -> Runner {
        Runner {
            scenario,
            options: RunOptions::default(),
            plan: None,
        }
    }

    /// Replaces all options.
    pub fn options(mut self, options: RunOptions) -> Runner {
        self.options = options;
        self
    }

    /// Sets the seed.
    pub fn seed(mut self, seed: u64) -> Runner {
        self.options.seed = Some(seed);
        self
    }

    /// Overrides the backend.
    pub fn backend(mut self, backend: Backend) -> Runner {
        self.options.backend = Some(backend);
        self
    }

    /// Sets the backend's own settings file (`chaos::backend::ClusterOptions::backend_config`).
    pub fn backend_config(mut self, path: impl Into<PathBuf>) -> Runner {
        self.options.backend_config = Some(path.into());
        self
    }

    /// Overrides the number of rounds.
    pub fn rounds(mut self, rounds: u32) -> Runner {
        self.options.rounds = Some(rounds);
        self
    }

    /// Overrides `[values] name` for this run (declared there, with the same type; checked when
    /// the run starts). [`Scenario::parse_value`] reads one from text as its declared type.
    pub fn value(mut self, name: impl Into<String>, value: impl Into<toml::Value>) -> Runner {
        self.options.values.insert(name.into(), value.into());
        self
    }

    /// Sets where run directories go.
    pub fn out_dir(mut self, dir: impl Into<PathBuf>) -> Runner {
        self.options.out_dir = dir.into();
        self
    }

    /// Runs this plan instead of drawing one from the seed (e.g. one a property test generated).
    /// Its seed becomes the run's seed.
    pub fn plan(mut self, plan: Plan) -> Runner {
        self.options.seed = Some(plan.seed);
        self.plan = Some(plan);
        self
    }

    /// Sets the token that interrupts the run.
    pub fn cancel(mut self, token: CancellationToken) -> Runner {
        self.options.cancel = token;
        self
    }

    /// Runs the scenario to its verdict. `Err` only when it could not start (invalid scenario,
    /// plan or environment; unwritable run directory); everything after that — including a
    /// system that never became ready — ends in a [`RunOutcome`] with a summary on disk.
    pub async fn run(self) -> Result<RunOutcome, RunError> {
        let Runner {
            mut scenario,
            options,
            plan,
        } = self;
        if let Some(b) = options.backend {
            scenario.cluster.backend = b;
        }
        scenario
            .override_rounds(options.rounds)
            .map_err(|e| RunError::Invalid(e.to_string()))?;
        scenario
            .override_values(&options.values)
            .map_err(|e| RunError::Invalid(e.to_string()))?;
        scenario
            .validate()
            .map_err(|e| RunError::Invalid(e.to_string()))?;
        check_environment(&scenario)?;
        let seed = options.seed.unwrap_or_else(super::draw_seed);
        let custom_plan = plan.is_some();
        let plan = match plan {
            Some(p) => {
                p.check_against(&scenario)
                    .map_err(|e| RunError::Invalid(format!("the plan does not fit the scenario: {e}")))?;
                p
            }
            None => Plan::generate(&scenario, seed),
        };
        let dir = RunDir::create(&options.out_dir, &scenario.name, seed).map_err(|source| RunError::Io {
            context: format!("creating a run directory under {}", options.out_dir.display()),
            source,
        })?;
        // A plan drawn from the seed replays from the seed; any other plan from its file.
        let replay = if custom_plan {
            replay_plan_command(&scenario, &options, &dir.path.join("plan.json"))
        } else {
            replay_command(&scenario, &options, seed)
        };
        let io = |context: &str| {
            let context = context.to_string();
            move |source| RunError::Io { context, source }
        };
        let as_run = toml::to_string(&scenario).unwrap_or_default();
        dir.write("scenario.toml", as_run)
            .map_err(io("writing scenario.toml"))?;
        dir.write("seed", format!("{seed}\n"))
            .map_err(io("writing seed"))?;
        dir.write("plan.json", plan.to_json())
            .map_err(io("writing plan.json"))?;
        dir.write("plan.txt", plan.to_text())
            .map_err(io("writing plan.txt"))?;
        let mut run = Run::new(scenario, plan, options, dir, replay, seed);
        Ok(run.execute().await)
    }
}

/// Checks what can be checked before anything starts. What the cluster can break is asked of
/// the cluster itself once it exists (see `setup.rs`).
fn check_environment(scenario: &Scenario) -> Result<(), RunError> {
    let backend = scenario.cluster.backend;
    backend
        .entry()
        .availability()
        .map_err(|why| RunError::Invalid(format!("backend {backend}: {why}")))?;
    for ship in &scenario.setup.ship {
        match builtin_of(ship) {
            Some(adapter) => adapter
                .obtainable()
                .map_err(|why| RunError::Invalid(format!("setup.ship: {}: {why}", adapter.bin)))?,
            None => drop(find_on_runner(&ship.from).map_err(RunError::Invalid)?),
        }
    }
    Ok(())
}

/// The built-in adapter a `[[setup.ship]]` entry names, if it names one (validation has refused
/// unknown names).
pub(crate) fn builtin_of(
    ship: &crate::model::Ship,
) -> Option<chaos::backend::workspace_binary::WorkspaceBinary> {
    ship.builtin
        .as_deref()
        .and_then(chaos::backend::workspace_binary::builtin_adapter)
}

/// Resolves a `ship.from`: a path, or a name looked up on the runner's `PATH`.
pub fn find_on_runner(from: &str) -> Result<PathBuf, String> {
    if from.contains('/') {
        let p = PathBuf::from(from);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("setup.ship: {from} is not a file on this machine"))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(from))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!("setup.ship: `{from}` is not on this machine's PATH: install it or give its path")
        })
}

fn replay_plan_command(scenario: &Scenario, options: &RunOptions, plan: &Path) -> String {
    replay_with(scenario, options, &format!("--plan {}", plan.display()), false)
}

/// The command that replays `seed` with these options (backend, its settings file, rounds,
/// values, output).
pub(crate) fn replay_command(scenario: &Scenario, options: &RunOptions, seed: u64) -> String {
    replay_with(scenario, options, &format!("--seed {seed}"), true)
}

/// `chaos run FILE SOURCE` plus every option that shaped the run (`--rounds` only when the
/// schedule comes from the seed: a plan file fixes its own steps).
fn replay_with(scenario: &Scenario, options: &RunOptions, source: &str, with_rounds: bool) -> String {
    let file = options
        .scenario_file
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| format!("{}.toml", scenario.name));
    let mut cmd = format!("chaos run {file} {source}");
    if let Some(b) = options.backend {
        cmd.push_str(&format!(" --backend {b}"));
    }
    if let Some(config) = &options.backend_config {
        cmd.push_str(&format!(" --backend-config {}", config.display()));
    }
    if let (Some(r), true) = (options.rounds, with_rounds) {
        cmd.push_str(&format!(" --rounds {r}"));
    }
    for (name, value) in &options.values {
        let text = match value {
            toml::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        cmd.push_str(&format!(" --value {}", shell_word(&format!("{name}={text}"))));
    }
    if options.out_dir != Path::new("runs") {
        cmd.push_str(&format!(" --out {}", options.out_dir.display()));
    }
    cmd
}

/// `word` quoted for a POSIX shell when it holds anything but plain characters.
fn shell_word(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_.,:/=+@%".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}
