//! The engine: runs a scenario's plan against real processes — the etcd functional tester's loop
//! (start the cluster, inject a failure, expect recovery within a bound), for any system and
//! replayable from its seed.
//!
//! 1. **Environment**: the backend is available, shipped files exist, network faults are not
//!    asked of a backend that cannot isolate nodes. Otherwise the run is invalid (exit 2).
//! 2. **Setup**: a cluster of `cluster.nodes` nodes; shipped files, templated files and setup
//!    commands on every node; the system started on every node (its stdout and stderr in
//!    `<root>/logs/system.log`); readiness checks.
//! 3. **Schedule**: the workload runs while the plan's steps are injected through the runner's
//!    fault API and healed after their duration; after every heal the `heal` invariants must
//!    pass within their timeout (the recovery bound). A step whose selector picks nobody is
//!    skipped with the reason; a violated invariant stops the schedule.
//! 4. **End**: the workload stops (with final reads), the `end` invariants run, the history
//!    checkers judge what the clients saw.
//! 5. **Teardown**, always — also on errors and Ctrl-C: every fault healed, teardown commands,
//!    the system stopped, logs (and data directories of failed nodes) collected, the cluster
//!    cleaned up, `summary.json` and the report written.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chaos_check::{FaultEvent, FaultPhase, Header, History};
use chaos_proto::{OutputSpec, ProcSpec, Signal};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::checks::{CheckResult, System};
use super::model::{Backend, FaultKind, Scenario, When};
use super::plan::{Plan, PlannedTarget, Step};
use super::rundir::{HistorySummary, RunDir, RunStatus, StepStatus, StepSummary, Summary, Totals};
use super::template::{NodeVars, Templates, Vars, ship_destination};
use super::workload::{Recorder, Workload};
use chaos::backend::ClusterOptions;
use chaos::cluster::{Cluster, Node, Process};
use chaos::ext::NodeExt;
use chaos::faults::{self, Fault, FaultHandle, PartitionHandle, ProcessTarget, Shape, Traffic};

/// Extra time a fault lives on its node beyond its planned duration: the node heals it by itself
/// after that, should the runner die.
const TTL_MARGIN: Duration = Duration::from_secs(30);

/// Bound on a setup or teardown command.
const COMMAND_BOUND: Duration = Duration::from_secs(60);

/// Default bound on a graceful stop of the system.
const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// Overrides `schedule.rounds`.
    pub rounds: Option<u32>,
    /// Where run directories go (default `runs`).
    pub out_dir: PathBuf,
    /// The scenario's file, for the replay command.
    pub scenario_file: Option<PathBuf>,
    /// Receives live progress (none: the run is silent; everything is still in the run
    /// directory).
    pub observer: Option<Arc<dyn RunObserver>>,
    /// Fires to interrupt the run (Ctrl-C): faults are healed and everything cleaned up.
    pub cancel: CancellationToken,
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("seed", &self.seed)
            .field("backend", &self.backend)
            .field("rounds", &self.rounds)
            .field("out_dir", &self.out_dir)
            .field("scenario_file", &self.scenario_file)
            .field("observer", &self.observer.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            seed: None,
            backend: None,
            rounds: None,
            out_dir: PathBuf::from("runs"),
            scenario_file: None,
            observer: None,
            cancel: CancellationToken::new(),
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

    /// Overrides the number of rounds.
    pub fn rounds(mut self, rounds: u32) -> Runner {
        self.options.rounds = Some(rounds);
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

/// The machine fault a scenario fault kind injects, if it is one.
fn machine_fault(kind: FaultKind) -> Option<chaos::MachineFault> {
    match kind {
        FaultKind::ContainerPause => Some(chaos::MachineFault::Pause),
        FaultKind::ContainerStop => Some(chaos::MachineFault::Stop),
        FaultKind::ContainerDisconnect => Some(chaos::MachineFault::Disconnect),
        _ => None,
    }
}

/// Checks what can be checked before anything starts.
fn check_environment(scenario: &Scenario) -> Result<(), RunError> {
    // What the backend's nodes can do comes from the backend registry, not from a table here.
    let backend = scenario.cluster.backend;
    let entry = backend.entry();
    entry
        .availability()
        .map_err(|why| RunError::Invalid(format!("backend {backend}: {why}")))?;
    fn offering(wanted: impl Fn(&chaos::backend::Backend) -> bool) -> String {
        let names: Vec<&str> = chaos::backend::registry::all()
            .iter()
            .filter(|b| wanted(b))
            .map(|b| b.name)
            .collect();
        names.join(", ")
    }
    if !entry.isolated_network
        && let Some(case) = scenario
            .faults
            .iter()
            .find(|c| c.kind.is_network() && c.weight > 0)
    {
        return Err(RunError::Invalid(format!(
            "fault case `{}` is a {} fault, which the {backend} backend cannot confine to a node \
             (its nodes share one network stack): run with --backend {}",
            case.name,
            case.kind,
            offering(|b| b.isolated_network)
        )));
    }
    if let Some(case) = scenario
        .faults
        .iter()
        .find(|c| c.weight > 0 && machine_fault(c.kind).is_some_and(|m| !entry.machine_faults.contains(&m)))
    {
        return Err(RunError::Invalid(format!(
            "fault case `{}` is a {} fault, a machine fault the {backend} backend does not offer: \
             run with --backend {} (or set its weight to 0)",
            case.name,
            case.kind,
            offering(|b| machine_fault(case.kind).is_some_and(|m| b.machine_faults.contains(&m)))
        )));
    }
    for ship in &scenario.setup.ship {
        find_on_runner(&ship.from).map_err(RunError::Invalid)?;
    }
    Ok(())
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
    let file = options
        .scenario_file
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| format!("{}.toml", scenario.name));
    let mut cmd = format!("chaos run {file} --plan {}", plan.display());
    if let Some(b) = options.backend {
        cmd.push_str(&format!(" --backend {b}"));
    }
    if options.out_dir != Path::new("runs") {
        cmd.push_str(&format!(" --out {}", options.out_dir.display()));
    }
    cmd
}

fn replay_command(scenario: &Scenario, options: &RunOptions, seed: u64) -> String {
    let file = options
        .scenario_file
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| format!("{}.toml", scenario.name));
    let mut cmd = format!("chaos run {file} --seed {seed}");
    if let Some(b) = options.backend {
        cmd.push_str(&format!(" --backend {b}"));
    }
    if let Some(r) = options.rounds {
        cmd.push_str(&format!(" --rounds {r}"));
    }
    if options.out_dir != Path::new("runs") {
        cmd.push_str(&format!(" --out {}", options.out_dir.display()));
    }
    cmd
}

/// The system under test on one node.
struct Sut {
    process: Process,
}

/// A fault in place.
enum Installed {
    /// Per-node faults (loss, delay, bandwidth, pause).
    Handles(Vec<FaultHandle>),
    /// A partition over the cluster.
    Partition(PartitionHandle),
    /// Processes killed or stopped; `restart` says whether to start them at heal.
    Down { restart: bool },
    /// Machine faults on the targets (the backend's, e.g. a container paused); `restart`: the
    /// system went down with them (a stopped machine) and is started again once they are healed.
    Containers {
        handles: Vec<chaos::MachineFaultHandle>,
        restart: bool,
    },
}

/// A step whose fault is in place.
struct Active {
    index: usize,
    nodes: Vec<usize>,
    installed: Installed,
    injected: Instant,
    detail: String,
}

/// The workload's counts as last sampled, for the observer's rate.
#[derive(Default)]
struct Status {
    recorder: Option<Arc<Recorder>>,
    last: Option<(Instant, u64)>,
    rate: Option<f64>,
}

impl Status {
    /// Measures the operation rate since the last sample.
    fn sample(&mut self) {
        let Some(r) = &self.recorder else { return };
        let (ok, fail, unknown) = r.counts.get();
        let total = ok + fail + unknown;
        let now = Instant::now();
        if let Some((then, before)) = self.last {
            let dt = now.duration_since(then).as_secs_f64();
            if dt > 0.0 {
                self.rate = Some(total.saturating_sub(before) as f64 / dt);
            }
        }
        self.last = Some((now, total));
    }

    /// The counts now, with the last sampled rate; `None` before the workload starts.
    fn ops(&self) -> Option<Progress> {
        let r = self.recorder.as_ref()?;
        let (ok, fail, unknown) = r.counts.get();
        Some(Progress::Ops {
            ok,
            fail,
            unknown,
            rate: self.rate,
        })
    }
}

/// Why the schedule stopped early.
enum Abort {
    Interrupted,
    Setup(String),
}

struct Run {
    scenario: Arc<Scenario>,
    plan: Plan,
    options: RunOptions,
    /// Shared with the task that records the agent supervisor's events.
    dir: Arc<RunDir>,
    replay: String,
    seed: u64,
    started_at: String,
    cancel: CancellationToken,
    status: Arc<std::sync::Mutex<Status>>,
    cluster: Option<Arc<dyn Cluster>>,
    /// Writes the cluster's agent events (died, restarted, node failed) to `events.jsonl`.
    agent_events: Option<tokio::task::JoinHandle<()>>,
    system: Option<Arc<System>>,
    suts: Vec<Option<Sut>>,
    recorder: Option<Arc<Recorder>>,
    workload: Option<Workload>,
    active: Vec<Active>,
    steps: Vec<StepSummary>,
    start_checks: Vec<CheckResult>,
    end_checks: Vec<CheckResult>,
    failed_nodes: BTreeSet<String>,
    violation: Option<String>,
    /// A fault that could not be injected or healed: the run tested less than it says.
    env_error: Option<String>,
    history: Option<HistorySummary>,
    report: Option<PathBuf>,
}

impl Run {
    fn new(
        scenario: Scenario,
        plan: Plan,
        options: RunOptions,
        dir: RunDir,
        replay: String,
        seed: u64,
    ) -> Run {
        let steps = plan
            .steps
            .iter()
            .map(|s| StepSummary {
                number: s.number,
                round: s.round,
                case: s.case.clone(),
                kind: s.kind.to_string(),
                planned_target: s.target.to_string(),
                nodes: Vec::new(),
                status: StepStatus::NotRun,
                reason: None,
                injected_ms: None,
                fault_ms: None,
                recovery_ms: None,
                elapsed_ms: None,
                invariants: Vec::new(),
            })
            .collect();
        let cancel = options.cancel.clone();
        Run {
            scenario: Arc::new(scenario),
            plan,
            options,
            dir: Arc::new(dir),
            replay,
            seed,
            started_at: super::rundir::timestamps().1,
            cancel,
            status: Arc::new(std::sync::Mutex::new(Status::default())),
            cluster: None,
            agent_events: None,
            system: None,
            suts: Vec::new(),
            recorder: None,
            workload: None,
            active: Vec::new(),
            steps,
            start_checks: Vec::new(),
            end_checks: Vec::new(),
            failed_nodes: BTreeSet::new(),
            violation: None,
            env_error: None,
            history: None,
            report: None,
        }
    }

    fn report(&self, progress: Progress) {
        if let Some(observer) = &self.options.observer {
            observer.progress(progress);
        }
    }

    /// Reports a line of its own (a step's outcome, a skipped case, …).
    fn say(&self, line: impl AsRef<str>) {
        self.report(Progress::Line(line.as_ref().to_string()));
    }

    /// Reports what the run is doing now.
    fn status_line(&self, what: &str) {
        self.report(Progress::Doing(what.to_string()));
    }

    /// Samples the workload's counts and rate every second for the observer.
    fn spawn_progress_ticker(&self, observer: Arc<dyn RunObserver>) -> tokio::task::JoinHandle<()> {
        let status = self.status.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let ops = status.lock().ok().and_then(|mut st| {
                    st.sample();
                    st.ops()
                });
                if let Some(ops) = ops {
                    observer.progress(ops);
                }
            }
        })
    }

    async fn execute(&mut self) -> RunOutcome {
        let ticker = self
            .options
            .observer
            .clone()
            .map(|observer| self.spawn_progress_ticker(observer));
        self.dir.event(
            "run_started",
            json!({"scenario": self.scenario.name, "seed": self.seed, "backend": self.scenario.cluster.backend.to_string(),
                   "steps": self.plan.steps.len(), "replay": self.replay}),
        );
        let abort = self.body().await.err();
        let (mut status, mut reason) = match &abort {
            Some(Abort::Interrupted) => (RunStatus::Interrupted, Some("interrupted".to_string())),
            Some(Abort::Setup(why)) => (RunStatus::Error, Some(why.clone())),
            None => (RunStatus::Passed, None),
        };
        self.teardown().await;
        if status != RunStatus::Error {
            self.judge_history();
        }
        if let Some(v) = &self.violation
            && status != RunStatus::Interrupted
        {
            status = RunStatus::Failed;
            reason = Some(v.clone());
        } else if let Some(e) = &self.env_error
            && status == RunStatus::Passed
        {
            status = RunStatus::Error;
            reason = Some(e.clone());
        }
        if let Some(t) = ticker {
            t.abort();
        }
        self.report(Progress::Finished);
        let summary = self.summary(status, reason);
        if let Err(e) = self.dir.write(
            "summary.json",
            serde_json::to_string_pretty(&summary).unwrap_or_default() + "\n",
        ) {
            tracing::error!("writing summary.json: {e}");
        }
        self.dir.event("run_finished", json!({"status": status}));
        RunOutcome {
            status,
            seed: self.seed,
            run_dir: self.dir.path.clone(),
            summary,
            replay: self.replay.clone(),
            report: self.report.clone(),
        }
    }

    fn summary(&self, status: RunStatus, reason: Option<String>) -> Summary {
        let mut totals = Totals {
            steps: self.steps.len(),
            ..Totals::default()
        };
        for s in &self.steps {
            match s.status {
                StepStatus::Passed => totals.passed += 1,
                StepStatus::Failed => totals.failed += 1,
                StepStatus::Skipped => totals.skipped += 1,
                StepStatus::Error => totals.errors += 1,
                StepStatus::NotRun => totals.not_run += 1,
            }
        }
        if let Some(r) = &self.recorder {
            let (ok, fail, unknown) = r.counts.get();
            totals.ok = ok;
            totals.fail = fail;
            totals.unknown = unknown;
            totals.ops = ok + fail + unknown;
        }
        Summary {
            scenario: self.scenario.name.clone(),
            seed: self.seed,
            run_id: self.dir.run_id.clone(),
            backend: self.scenario.cluster.backend.to_string(),
            status,
            reason,
            started_at: self.started_at.clone(),
            elapsed_ms: self.dir.elapsed_ms(),
            replay: self.replay.clone(),
            start_checks: self.start_checks.clone(),
            steps: self.steps.clone(),
            end_checks: self.end_checks.clone(),
            history: self.history.clone(),
            totals,
        }
    }

    /// Waits `d`, or returns `Err(Interrupted)` when cancelled first.
    async fn sleep(&self, d: Duration) -> Result<(), Abort> {
        tokio::select! {
            _ = tokio::time::sleep(d) => Ok(()),
            _ = self.cancel.cancelled() => Err(Abort::Interrupted),
        }
    }

    fn interrupted(&self) -> Result<(), Abort> {
        if self.cancel.is_cancelled() {
            Err(Abort::Interrupted)
        } else {
            Ok(())
        }
    }

    fn system(&self) -> Arc<System> {
        self.system
            .clone()
            .expect("the system is set up before it is used")
    }

    async fn body(&mut self) -> Result<(), Abort> {
        self.setup().await?;
        self.interrupted()?;
        self.checks_at(When::Start).await?;
        if self.violation.is_some() {
            return Ok(());
        }
        self.start_workload()?;
        self.schedule().await?;
        self.interrupted()?;
        if let Some(w) = self.workload.take() {
            self.status_line("stopping the workload (final reads)");
            w.stop(true).await;
        }
        if self.violation.is_none() {
            self.checks_at(When::End).await?;
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Setup
    // -----------------------------------------------------------------------------------------

    async fn setup(&mut self) -> Result<(), Abort> {
        let scenario = self.scenario.clone();
        let n = scenario.cluster.nodes;
        self.status_line(&format!("creating {n} {} nodes", scenario.cluster.backend));
        let options = ClusterOptions {
            name: format!("scn-{}", scenario.name),
            ..ClusterOptions::default()
        };
        let backend = scenario.cluster.backend.entry();
        let cluster = tokio::select! {
            c = backend.create(options) => c.map_err(|e| Abort::Setup(format!("creating the cluster: {e}")))?,
            _ = self.cancel.cancelled() => return Err(Abort::Interrupted),
        };
        self.cluster = Some(cluster.clone());
        self.agent_events = cluster
            .agent_events()
            .map(|events| self.record_agent_events(events));
        let nodes = tokio::select! {
            created = cluster.create_nodes(n) => created.map_err(|e| Abort::Setup(format!("creating {n} nodes: {e}")))?,
            _ = self.cancel.cancelled() => return Err(Abort::Interrupted),
        };
        let node_vars: Vec<NodeVars> = nodes
            .iter()
            .enumerate()
            .map(|(i, node)| NodeVars {
                name: node.name().to_string(),
                ip: node
                    .addresses()
                    .first()
                    .map(|a| a.to_string())
                    .unwrap_or_default(),
                index: i + 1,
                root: node.root_dir().to_string(),
            })
            .collect();
        self.dir.event(
            "nodes_created",
            json!({"nodes": node_vars.iter().map(|n| json!({"name": n.name, "ip": n.ip, "root": n.root})).collect::<Vec<_>>()}),
        );
        let templates = Templates::new();
        let base = Vars {
            scenario: scenario.name.clone(),
            seed: self.seed,
            run_id: self.dir.run_id.clone(),
            values: scenario.values.clone(),
            nodes: node_vars.clone(),
            node: None,
            bin: Default::default(),
            extra: Default::default(),
        };
        let vars = (0..nodes.len())
            .map(|i| base.for_node(i, &scenario, &templates))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Abort::Setup(format!("templates: {e}")))?;
        let log_paths = nodes
            .iter()
            .map(|n| format!("{}/logs/system.log", n.root_dir()))
            .collect();
        let system = Arc::new(System {
            scenario: scenario.clone(),
            nodes: nodes.clone(),
            vars,
            templates,
            log_paths,
        });
        self.system = Some(system.clone());
        self.suts = (0..nodes.len()).map(|_| None).collect();

        // Files shipped from the runner.
        for ship in &scenario.setup.ship {
            self.interrupted()?;
            let source = find_on_runner(&ship.from).map_err(Abort::Setup)?;
            self.status_line(&format!("shipping {}", source.display()));
            let bytes = tokio::fs::read(&source)
                .await
                .map_err(|e| Abort::Setup(format!("reading {}: {e}", source.display())))?;
            let mode = ship.mode.unwrap_or(0o755);
            let shown = source.display().to_string();
            let sends = (0..nodes.len()).map(|i| {
                let bytes = bytes.clone();
                let system = system.clone();
                let shown = shown.clone();
                async move {
                    let dest = ship_destination(ship, &system.vars[i], &system.templates)?;
                    system.nodes[i]
                        .send_bytes(&dest, bytes, mode)
                        .await
                        .map_err(|e| format!("shipping {shown} to {dest}: {e}"))?;
                    Ok::<String, String>(dest)
                }
            });
            let results = futures_util::future::join_all(sends).await;
            for r in results {
                let dest = r.map_err(Abort::Setup)?;
                self.dir.event(
                    "shipped",
                    json!({"from": source.display().to_string(), "to": dest}),
                );
            }
        }
        // Templated files.
        for file in &scenario.setup.files {
            for (i, node) in nodes.iter().enumerate() {
                let to = system.render(i, &file.to).map_err(Abort::Setup)?;
                let content = system.render(i, &file.content).map_err(Abort::Setup)?;
                node.send_bytes(&to, content.into_bytes(), file.mode.unwrap_or(0o644))
                    .await
                    .map_err(|e| Abort::Setup(format!("writing {to}: {e}")))?;
            }
        }
        // Setup commands.
        for cmd in &scenario.setup.commands {
            for (i, node) in nodes.iter().enumerate() {
                self.interrupted()?;
                let spec = system.command_spec(i, cmd).map_err(Abort::Setup)?;
                let shown = cmd.argv().join(" ");
                let out = node
                    .run_timeout(spec, None, scenario.scaled(COMMAND_BOUND))
                    .await
                    .map_err(|e| Abort::Setup(format!("setup command `{shown}` on {}: {e}", node.name())))?;
                if !out.status.success() {
                    return Err(Abort::Setup(format!(
                        "setup command `{shown}` on {}: {}: {}",
                        node.name(),
                        out.status,
                        out.stderr_str().trim()
                    )));
                }
            }
        }
        // The system itself.
        if scenario.setup.start.is_some() {
            self.status_line("starting the system");
            for i in 0..nodes.len() {
                self.start_sut(i).await.map_err(Abort::Setup)?;
            }
        }
        for check in &scenario.setup.ready {
            self.interrupted()?;
            self.status_line(&format!("waiting for `{}`", check.name));
            let result = system.run_check(check, &self.cancel).await;
            self.interrupted()?;
            self.dir.event("ready_check", json!(result));
            if !result.passed {
                self.failed_nodes.extend(result.failed_nodes.iter().cloned());
                return Err(Abort::Setup(format!(
                    "the system did not become ready: check `{}`: {}",
                    check.name, result.detail
                )));
            }
        }
        self.say(format!(
            "{} nodes ready: {}",
            nodes.len(),
            system
                .vars
                .iter()
                .filter_map(|v| v.node.as_ref().map(|n| format!("{} {}", n.name, n.ip)))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        Ok(())
    }

    async fn start_sut(&mut self, i: usize) -> Result<(), String> {
        let system = self.system();
        let Some(start) = &system.scenario.setup.start else {
            return Ok(());
        };
        let node = &system.nodes[i];
        let mut spec: ProcSpec = system.command_spec(i, &start.command)?;
        for (k, v) in &start.env {
            spec.env.insert(k.clone(), system.render(i, v)?);
        }
        if let Some(cwd) = &start.cwd {
            spec.cwd = Some(system.render(i, cwd)?);
        }
        let log = system.log_paths[i].clone();
        spec.stdout = OutputSpec::File {
            path: log.clone(),
            append: true,
        };
        spec.stderr = OutputSpec::File {
            path: log.clone(),
            append: true,
        };
        let process = node
            .start(spec)
            .await
            .map_err(|e| format!("starting the system on {}: {e}", node.name()))?;
        self.dir.event(
            "system_started",
            json!({"node": node.name(), "pid": process.pid, "id": process.id, "log": log}),
        );
        self.suts[i] = Some(Sut { process });
        Ok(())
    }

    /// Stops the system on node `i`: its stop signal, then SIGKILL after its stop timeout.
    async fn stop_sut(&mut self, i: usize) {
        let Some(sut) = self.suts[i].take() else { return };
        let system = self.system();
        let start = system.scenario.setup.start.as_ref();
        let signal = start
            .and_then(|s| s.stop_signal)
            .map(|s| s.0)
            .unwrap_or(Signal::TERM);
        let bound = system.scenario.scaled(
            start
                .and_then(|s| s.stop_timeout)
                .map(|d| d.0)
                .unwrap_or(DEFAULT_STOP_TIMEOUT),
        );
        let control = sut.process.control();
        let _ = control.signal(signal, true).await;
        let exit = tokio::time::timeout(bound, control.wait()).await;
        if exit.is_err() {
            let _ = control.signal(Signal::KILL, true).await;
            let _ = tokio::time::timeout(Duration::from_secs(5), control.wait()).await;
        }
        self.dir.event(
            "system_stopped",
            json!({"node": system.nodes[i].name(), "graceful": exit.is_ok()}),
        );
    }

    fn start_workload(&mut self) -> Result<(), Abort> {
        let system = self.system();
        let header = Header {
            run: Some(format!("{} {}", self.scenario.name, self.dir.run_id)),
            started_at: Some(self.started_at.clone()),
            nodes: system.nodes.iter().map(|n| n.name().to_string()).collect(),
            max_error_fraction: self.scenario.history.max_error_fraction,
            max_recovery_us: self
                .scenario
                .history
                .max_recovery
                .map(|d| self.scenario.scaled(d.0).as_micros() as u64),
            ..Header::new()
        };
        let recorder = Recorder::create(&self.dir.path.join("history.jsonl"), &header)
            .map_err(|e| Abort::Setup(format!("creating history.jsonl: {e}")))?;
        self.recorder = Some(recorder.clone());
        if let Ok(mut st) = self.status.lock() {
            st.recorder = Some(recorder.clone());
        }
        if let Some(spec) = &self.scenario.workload {
            self.workload = Some(Workload::start(system, spec, self.plan.workload_seed, recorder));
            self.dir.event(
                "workload_started",
                json!({"type": spec.kind, "rate": spec.rate, "concurrency": spec.concurrency, "seed": self.plan.workload_seed}),
            );
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Checks
    // -----------------------------------------------------------------------------------------

    /// Runs the invariants that apply `at`; returns them. Sets the violation when one fails.
    async fn run_invariants(&mut self, at: When, label: &str) -> Result<Vec<CheckResult>, Abort> {
        let system = self.system();
        let scenario = self.scenario.clone();
        let mut results = Vec::new();
        // Checks that need a quiet system run after the others, holding the workload.
        let (quiet, live): (Vec<_>, Vec<_>) = scenario
            .invariants
            .iter()
            .filter(|inv| inv.at.contains(&at))
            .partition(|inv| inv.pause_workload);
        let cancel = self.cancel.clone();
        let live_results = futures_util::future::join_all(live.iter().map(|inv| {
            let system = system.clone();
            let cancel = cancel.clone();
            async move { system.run_check(&inv.check(), &cancel).await }
        }))
        .await;
        results.extend(live_results);
        for inv in quiet {
            self.interrupted()?;
            let guard = match &self.workload {
                Some(w) => Some(w.quiesce().await),
                None => None,
            };
            results.push(system.run_check(&inv.check(), &cancel).await);
            drop(guard);
        }
        self.interrupted()?;
        for r in &results {
            self.dir
                .event("invariant", json!({"at": at, "during": label, "result": r}));
            if !r.passed {
                self.failed_nodes.extend(r.failed_nodes.iter().cloned());
                if self.violation.is_none() {
                    self.violation = Some(format!("invariant `{}` violated {label}: {}", r.name, r.detail));
                }
            }
        }
        Ok(results)
    }

    async fn checks_at(&mut self, at: When) -> Result<(), Abort> {
        let label = match at {
            When::Start => "at start",
            When::End => "at the end",
            When::Heal => "after a heal",
        };
        self.status_line(&format!("checking invariants {label}"));
        let results = self.run_invariants(at, label).await?;
        for r in &results {
            self.say(format!(
                "invariant {:<28} {label}: {} ({} ms)",
                r.name,
                if r.passed { "held" } else { "VIOLATED" },
                r.elapsed_ms
            ));
        }
        match at {
            When::Start => self.start_checks = results,
            _ => self.end_checks = results,
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // The schedule
    // -----------------------------------------------------------------------------------------

    async fn schedule(&mut self) -> Result<(), Abort> {
        let steps = self.plan.steps.clone();
        let started = Instant::now();
        let limit = self.scenario.schedule.time_limit.map(|d| d.0);
        let mut i = 0;
        while i < steps.len() {
            self.interrupted()?;
            // A group: this step and the ones it overlaps with.
            let mut end = i;
            while end + 1 < steps.len() && steps[end].overlap {
                end += 1;
            }
            let group: Vec<usize> = (i..=end).collect();
            if let Some(limit) = limit
                && started.elapsed() >= limit
            {
                for s in &mut self.steps[i..] {
                    s.status = StepStatus::Skipped;
                    s.reason = Some(format!("the schedule's time limit ({limit:?}) was reached"));
                }
                self.dir.event("time_limit", json!({"after_steps": i}));
                break;
            }
            self.run_group(&steps, &group).await?;
            if self.violation.is_some() || self.env_error.is_some() {
                break;
            }
            let pause = Duration::from_millis(steps[end].pause_ms);
            self.status_line(&format!("pause {}", super::plan::secs(steps[end].pause_ms)));
            self.sleep(pause).await?;
            i = end + 1;
        }
        Ok(())
    }

    async fn run_group(&mut self, steps: &[Step], group: &[usize]) -> Result<(), Abort> {
        // Timeline: each step starts after the previous one's pause (overlap), and heals after
        // its duration; heals before injections at equal times.
        let mut events: Vec<(u64, bool, usize)> = Vec::new();
        let mut offset = 0u64;
        for &k in group {
            events.push((offset, false, k));
            events.push((offset + steps[k].duration_ms, true, k));
            offset += steps[k].pause_ms;
        }
        events.sort_by_key(|&(t, heal, k)| (t, !heal, k));
        let t0 = Instant::now();
        let mut result = Ok(());
        for (t, heal, k) in events {
            let at = t0 + Duration::from_millis(t);
            if let Err(e) = self.sleep(at.saturating_duration_since(Instant::now())).await {
                result = Err(e);
                break;
            }
            if heal {
                self.heal_step(k).await;
            } else {
                self.inject_step(&steps[k]).await;
            }
        }
        // Interrupted or done: whatever is still in place is healed now (teardown heals again).
        let remaining: Vec<usize> = self.active.iter().map(|a| a.index).collect();
        for k in remaining {
            self.heal_step(k).await;
        }
        result?;
        let healed: Vec<usize> = group
            .iter()
            .copied()
            .filter(|&k| self.steps[k].status == StepStatus::Passed)
            .collect();
        if healed.is_empty() {
            return Ok(());
        }
        let names: Vec<String> = healed.iter().map(|&k| steps[k].case.clone()).collect();
        self.status_line(&format!("recovery checks after {}", names.join(", ")));
        let heal_done = Instant::now();
        let heal_done_us = self.recorder.as_ref().map(|r| r.now_us());
        let results = self
            .run_invariants(When::Heal, &format!("after {}", names.join(", ")))
            .await?;
        let recovery_ms = heal_done.elapsed().as_millis() as u64;
        let passed = results.iter().all(|r| r.passed);
        if passed && let Some(since_us) = heal_done_us {
            let mut faulted: Vec<String> = healed.iter().flat_map(|&k| self.steps[k].nodes.clone()).collect();
            faulted.sort();
            faulted.dedup();
            self.await_workload_recovery(&faulted, since_us, &names).await?;
        }
        for &k in &healed {
            let s = &mut self.steps[k];
            s.invariants = results.clone();
            s.recovery_ms = passed.then_some(recovery_ms);
            s.elapsed_ms = s.injected_ms.map(|i| self.dir.elapsed_ms().saturating_sub(i));
            if !passed {
                s.status = StepStatus::Failed;
                s.reason = results
                    .iter()
                    .find(|r| !r.passed)
                    .map(|r| format!("invariant `{}`: {}", r.name, r.detail));
            }
        }
        for &k in &healed {
            let s = &self.steps[k];
            let line = match s.status {
                StepStatus::Passed => format!("recovered in {}", super::plan::secs(recovery_ms)),
                _ => format!("FAILED: {}", s.reason.clone().unwrap_or_default()),
            };
            self.say(format!(
                "step {:>3}/{} {:<24} {:<20} {:<12} {line}",
                s.number,
                self.steps.len(),
                s.case,
                s.kind,
                s.nodes.join(",")
            ));
        }
        Ok(())
    }

    /// Waits until the workload itself sees every faulted node serve again — an `ok` operation
    /// invoked after the heal on each node operations go to — bounded by the history's
    /// `max_recovery` (default 20 s), scaled. The recovery invariants passing does not imply it
    /// (they ask differently, and retry longer than one operation's timeout); without this wait,
    /// the next fault (or the end of the run) could cut the observation short on a busy machine,
    /// and the availability checker would report a recovery that merely came late as none.
    async fn await_workload_recovery(
        &mut self,
        nodes: &[String],
        since_us: u64,
        cases: &[String],
    ) -> Result<(), Abort> {
        let Some(recorder) = self.recorder.clone() else {
            return Ok(());
        };
        if self.workload.is_none() || nodes.is_empty() {
            return Ok(());
        }
        let bound = self.scenario.scaled(
            self.scenario
                .history
                .max_recovery
                .map_or(DEFAULT_WORKLOAD_RECOVERY, |d| d.0),
        );
        let started = Instant::now();
        let waiting = |r: &Recorder| -> Vec<String> {
            nodes
                .iter()
                .filter(|n| r.ok_since(n, since_us) == Some(false))
                .cloned()
                .collect()
        };
        if waiting(&recorder).is_empty() {
            return Ok(());
        }
        self.status_line(&format!(
            "waiting for the workload to recover on {}",
            nodes.join(",")
        ));
        loop {
            let left = waiting(&recorder);
            if left.is_empty() {
                self.dir.event(
                    "workload_recovered",
                    json!({"after": cases, "nodes": nodes, "waited_ms": started.elapsed().as_millis() as u64}),
                );
                return Ok(());
            }
            if started.elapsed() >= bound {
                self.dir.event(
                    "workload_not_recovered",
                    json!({"after": cases, "nodes": left, "waited_ms": started.elapsed().as_millis() as u64}),
                );
                return Ok(());
            }
            self.sleep(Duration::from_millis(50)).await?;
        }
    }

    /// Resolves a planned target to node indices, or says why nobody can be picked.
    async fn resolve(&self, target: &PlannedTarget) -> Result<Vec<usize>, String> {
        let system = self.system();
        let n = system.nodes.len();
        let leader = || async { system.wait_leader(&self.cancel).await };
        match target {
            PlannedTarget::Nodes(names) => Ok(names
                .iter()
                .filter_map(|name| system.nodes.iter().position(|x| x.name() == name))
                .collect()),
            PlannedTarget::Leader => leader().await.map(|l| vec![l]),
            PlannedTarget::Followers => {
                let l = leader().await?;
                Ok((0..n).filter(|&i| i != l).collect())
            }
            PlannedTarget::Follower { draw } => {
                let l = leader().await?;
                let followers: Vec<usize> = (0..n).filter(|&i| i != l).collect();
                if followers.is_empty() {
                    return Err("the leader has no followers".into());
                }
                Ok(vec![followers[*draw as usize % followers.len()]])
            }
        }
    }

    fn skip(&mut self, index: usize, reason: String) {
        let total = self.steps.len();
        let s = &mut self.steps[index];
        s.status = StepStatus::Skipped;
        s.reason = Some(reason.clone());
        let s = s.clone();
        self.dir.event(
            "step_skipped",
            json!({"step": s.number, "case": s.case, "reason": reason}),
        );
        self.say(format!(
            "step {:>3}/{} {:<24} {:<20} skipped: {reason}",
            s.number, total, s.case, s.kind
        ));
    }

    fn history_case(step: &Step) -> String {
        format!("{:02}-{}", step.number, step.case)
    }

    async fn inject_step(&mut self, step: &Step) {
        let index = step.number - 1;
        let system = self.system();
        self.status_line(&format!(
            "round {}/{} step {}/{} {} ({}) on {}",
            step.round,
            self.plan.rounds,
            step.number,
            self.steps.len(),
            step.case,
            step.kind,
            step.target
        ));
        let mut targets = match self.resolve(&step.target).await {
            Ok(t) => t,
            Err(why) => return self.skip(index, format!("target {}: {why}", step.target)),
        };
        if step.kind.is_process() {
            let down: Vec<String> = targets
                .iter()
                .filter(|&&i| self.suts[i].is_none())
                .map(|&i| system.nodes[i].name().to_string())
                .collect();
            targets.retain(|&i| self.suts[i].is_some());
            if targets.is_empty() {
                return self.skip(index, format!("the system is not running on {}", down.join(", ")));
            }
        }
        if targets.is_empty() {
            return self.skip(index, format!("selector `{}` picked no node", step.target));
        }
        let names: Vec<String> = targets
            .iter()
            .map(|&i| system.nodes[i].name().to_string())
            .collect();
        let others: Vec<String> = (0..system.nodes.len())
            .filter(|i| !targets.contains(i))
            .map(|i| system.nodes[i].name().to_string())
            .collect();
        let ttl = Duration::from_millis(step.duration_ms) + self.scenario.scaled(TTL_MARGIN);
        let nodes = system.nodes.clone();
        let installed: Result<(Installed, String), String> = match step.kind {
            FaultKind::Kill => {
                let signal: Signal = step
                    .params
                    .signal
                    .as_deref()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(Signal::KILL);
                let mut err = None;
                for &i in &targets {
                    let Some(sut) = self.suts[i].take() else { continue };
                    let fault = Fault::Kill {
                        signal,
                        process: ProcessTarget::Proc(sut.process.id),
                    };
                    if let Err(e) = faults::inject(&nodes, &nodes[i], &fault, ttl).await {
                        err.get_or_insert(e.to_string());
                    }
                    // Reap it, so a restart finds its ports free.
                    let _ = tokio::time::timeout(Duration::from_secs(10), sut.process.wait()).await;
                }
                match err {
                    Some(e) => Err(e),
                    None => Ok((
                        Installed::Down {
                            restart: step.params.restart != Some(false),
                        },
                        signal.to_string(),
                    )),
                }
            }
            FaultKind::Restart => {
                for &i in &targets {
                    self.stop_sut(i).await;
                }
                Ok((Installed::Down { restart: true }, "stopped".into()))
            }
            FaultKind::Pause => {
                let mut handles = Vec::new();
                let mut err = None;
                for &i in &targets {
                    let Some(sut) = &self.suts[i] else { continue };
                    let fault = Fault::Pause {
                        process: ProcessTarget::Proc(sut.process.id),
                    };
                    match faults::inject(&nodes, &nodes[i], &fault, ttl).await {
                        Ok(h) => handles.push(h),
                        Err(e) => {
                            err.get_or_insert(e.to_string());
                        }
                    }
                }
                let detail = handles
                    .first()
                    .map(|h| mechanism_name(h.mechanism()))
                    .unwrap_or_default();
                match err {
                    Some(e) => {
                        heal_handles(&handles).await;
                        Err(e)
                    }
                    None => Ok((Installed::Handles(handles), detail)),
                }
            }
            FaultKind::Partition => {
                if others.is_empty() {
                    return self.skip(
                        index,
                        "a partition needs nodes on both sides; the target is every node".into(),
                    );
                }
                let shape = if step.params.one_way == Some(true) {
                    Shape::OneWay {
                        from: others.clone(),
                        to: names.clone(),
                    }
                } else {
                    Shape::Groups {
                        groups: vec![names.clone(), others.clone()],
                    }
                };
                let arrow = if step.params.one_way == Some(true) {
                    "-/->"
                } else {
                    "|"
                };
                match faults::partition(&nodes, &shape, ttl).await {
                    Ok(p) => Ok((
                        Installed::Partition(p),
                        format!("{} {arrow} {}", others.join(" "), names.join(" ")),
                    )),
                    Err(e) => Err(e.to_string()),
                }
            }
            FaultKind::ContainerPause | FaultKind::ContainerStop | FaultKind::ContainerDisconnect => {
                self.inject_container_faults(step.kind, &targets, ttl).await
            }
            FaultKind::Loss | FaultKind::Delay | FaultKind::Bandwidth => {
                let mut handles = Vec::new();
                let mut err = None;
                for &i in &targets {
                    let peers: Vec<String> = (0..nodes.len())
                        .filter(|&j| j != i)
                        .map(|j| nodes[j].name().to_string())
                        .collect();
                    let fault = match step.kind {
                        FaultKind::Loss => Fault::Loss {
                            traffic: Traffic::nodes(peers),
                            percent: step.params.percent.unwrap_or(0.0),
                            correlation: 0.0,
                        },
                        FaultKind::Delay => Fault::Delay {
                            traffic: Traffic::nodes(peers),
                            delay: Duration::from_millis(step.params.delay_ms.unwrap_or(0)),
                            jitter: Duration::from_millis(step.params.jitter_ms.unwrap_or(0)),
                            distribution: Default::default(),
                        },
                        _ => Fault::Bandwidth {
                            // The node's main interface, as its backend reported it.
                            interface: String::new(),
                            rate_bps: step.params.rate_kbit.unwrap_or(1) * 1000,
                            burst_bytes: 0,
                        },
                    };
                    match faults::inject(&nodes, &nodes[i], &fault, ttl).await {
                        Ok(h) => handles.push(h),
                        Err(e) => {
                            err.get_or_insert(format!("{}: {e}", nodes[i].name()));
                        }
                    }
                }
                let detail = handles
                    .first()
                    .map(|h| mechanism_name(h.mechanism()))
                    .unwrap_or_default();
                match err {
                    Some(e) => {
                        heal_handles(&handles).await;
                        Err(e)
                    }
                    None => Ok((Installed::Handles(handles), detail)),
                }
            }
        };
        let at_ms = self.dir.elapsed_ms();
        {
            let s = &mut self.steps[index];
            s.nodes = names.clone();
            s.injected_ms = Some(at_ms);
        }
        match installed {
            Err(e) => {
                let s = &mut self.steps[index];
                s.status = StepStatus::Error;
                s.reason = Some(format!("injecting: {e}"));
                self.dir.event(
                    "fault_error",
                    json!({"step": step.number, "case": step.case, "nodes": names, "error": e}),
                );
                self.env_error.get_or_insert(format!(
                    "step {} ({}) could not be injected: {e}",
                    step.number, step.case
                ));
                self.say(format!(
                    "step {:>3}/{} {:<24} ERROR injecting: {e}",
                    step.number,
                    self.steps.len(),
                    step.case
                ));
                // A kill that failed half-way may have taken processes down: bring them back.
                if step.kind.is_process() || step.kind == FaultKind::ContainerStop {
                    for &i in &targets {
                        if self.suts[i].is_none()
                            && let Err(e) = self.start_sut(i).await
                        {
                            tracing::warn!("{e}");
                        }
                    }
                }
            }
            Ok((installed, detail)) => {
                self.steps[index].status = StepStatus::Passed;
                self.dir.event(
                    "fault_injected",
                    json!({"step": step.number, "case": step.case, "kind": step.kind, "nodes": names,
                           "duration_ms": step.duration_ms, "detail": detail}),
                );
                if let Some(r) = &self.recorder {
                    r.fault(FaultEvent {
                        event: FaultPhase::Injected,
                        case: Self::history_case(step),
                        kind: step.kind.to_string(),
                        nodes: names.clone(),
                        time_us: r.now_us(),
                        detail: (!detail.is_empty()).then(|| detail.clone()),
                    });
                }
                self.active.push(Active {
                    index,
                    nodes: targets,
                    installed,
                    injected: Instant::now(),
                    detail,
                });
            }
        }
    }

    /// Injects a machine fault (the cluster's offer) on each target. A stopped machine takes the
    /// system's process with it, so that process is reaped here and started again at heal.
    async fn inject_container_faults(
        &mut self,
        kind: FaultKind,
        targets: &[usize],
        ttl: Duration,
    ) -> Result<(Installed, String), String> {
        use chaos::MachineFault;
        let cluster = self.cluster.clone().ok_or("the cluster is gone")?;
        let fault = machine_fault(kind).ok_or_else(|| format!("`{kind}` is not a machine fault"))?;
        if !cluster.machine_faults().contains(&fault) {
            return Err(format!(
                "`{kind}` is a {fault} machine fault, which the {} backend does not offer",
                cluster.backend()
            ));
        }
        let system = self.system();
        let mut handles = Vec::new();
        for &i in targets {
            match cluster
                .inject_machine_fault(system.nodes[i].name(), fault, ttl)
                .await
            {
                Ok(handle) => handles.push(handle),
                Err(e) => {
                    for handle in &handles {
                        if let Err(e) = handle.heal().await {
                            tracing::warn!("healing after a failed injection: {e}");
                        }
                    }
                    return Err(e.to_string());
                }
            }
            if fault == MachineFault::Stop
                && let Some(sut) = self.suts[i].take()
            {
                let _ = tokio::time::timeout(Duration::from_secs(5), sut.process.wait()).await;
            }
        }
        Ok((
            Installed::Containers {
                handles,
                restart: fault == MachineFault::Stop,
            },
            format!("{} {fault}", cluster.backend()),
        ))
    }

    async fn heal_step(&mut self, index: usize) {
        let Some(pos) = self.active.iter().position(|a| a.index == index) else {
            return;
        };
        let active = self.active.remove(pos);
        let step = self.plan.steps[index].clone();
        let system = self.system();
        let mut error = None;
        match &active.installed {
            Installed::Handles(handles) => {
                if let Some(e) = heal_handles(handles).await {
                    error = Some(e);
                }
            }
            Installed::Partition(p) => {
                if let Err(e) = p.heal().await {
                    error = Some(e.to_string());
                }
            }
            Installed::Containers { handles, restart } => {
                for handle in handles {
                    if let Err(e) = handle.heal().await {
                        error.get_or_insert(e.to_string());
                    }
                }
                if *restart {
                    for &i in &active.nodes {
                        if self.suts[i].is_none()
                            && let Err(e) = self.start_sut(i).await
                        {
                            error.get_or_insert(e);
                        }
                    }
                }
            }
            Installed::Down { restart } => {
                if *restart {
                    for &i in &active.nodes {
                        if let Err(e) = self.start_sut(i).await {
                            error.get_or_insert(e);
                        }
                    }
                }
            }
        }
        let names: Vec<String> = active
            .nodes
            .iter()
            .map(|&i| system.nodes[i].name().to_string())
            .collect();
        let fault_ms = active.injected.elapsed().as_millis() as u64;
        self.steps[index].fault_ms = Some(fault_ms);
        if let Some(r) = &self.recorder {
            r.fault(FaultEvent {
                event: FaultPhase::Healed,
                case: Self::history_case(&step),
                kind: step.kind.to_string(),
                nodes: names.clone(),
                time_us: r.now_us(),
                detail: None,
            });
        }
        self.dir.event(
            "fault_healed",
            json!({"step": step.number, "case": step.case, "nodes": names, "fault_ms": fault_ms,
                   "detail": active.detail, "error": error}),
        );
        if let Some(e) = error {
            let s = &mut self.steps[index];
            s.status = StepStatus::Error;
            s.reason = Some(format!("healing: {e}"));
            self.env_error.get_or_insert(format!(
                "step {} ({}) could not be healed: {e}",
                step.number, step.case
            ));
        }
    }

    // -----------------------------------------------------------------------------------------
    // Teardown and verdict
    // -----------------------------------------------------------------------------------------

    async fn teardown(&mut self) {
        self.status_line("tearing down");
        if let Some(w) = self.workload.take() {
            // Interrupted or stopped early: no final reads, the system may be down.
            w.stop(false).await;
        }
        let remaining: Vec<usize> = self.active.iter().map(|a| a.index).collect();
        for k in remaining {
            self.heal_step(k).await;
        }
        let Some(system) = self.system.clone() else {
            self.cleanup_cluster().await;
            return;
        };
        // Every fault on every node, whoever installed it (the local backend has none to list).
        if let Err(e) = faults::heal_all(&system.nodes).await {
            tracing::debug!("healing all faults: {e}");
        }
        for cmd in &self.scenario.teardown.commands {
            for i in 0..system.nodes.len() {
                let Ok(spec) = system.command_spec(i, cmd) else {
                    continue;
                };
                match system.nodes[i].run_timeout(spec, None, COMMAND_BOUND).await {
                    Ok(out) if out.status.success() => {}
                    Ok(out) => {
                        tracing::warn!("teardown command on {}: {}", system.nodes[i].name(), out.status)
                    }
                    Err(e) => tracing::warn!("teardown command on {}: {e}", system.nodes[i].name()),
                }
            }
        }
        for i in 0..system.nodes.len() {
            self.stop_sut(i).await;
        }
        self.collect(&system).await;
        self.cleanup_cluster().await;
    }

    async fn cleanup_cluster(&mut self) {
        if let Some(cluster) = self.cluster.take()
            && let Err(e) = cluster.cleanup().await
        {
            tracing::error!("cleaning up the cluster: {e}");
            self.dir.event("cleanup_error", json!({"error": e.to_string()}));
        }
        if let Some(task) = self.agent_events.take() {
            // The cleanup stopped the supervisor; what it sent before is written by now or
            // within moments (the channel closes once the cluster is dropped).
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(1), task).await.is_err() {
                abort.abort();
            }
        }
    }

    /// Writes each agent event to `events.jsonl` (and reports it to the observer as a line)
    /// as it happens.
    fn record_agent_events(
        &self,
        mut events: tokio::sync::broadcast::Receiver<chaos::backend::supervisor::AgentEvent>,
    ) -> tokio::task::JoinHandle<()> {
        use tokio::sync::broadcast::error::RecvError;
        let dir = self.dir.clone();
        let observer = self.options.observer.clone();
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(event) => {
                        dir.event(event.name(), json!(event));
                        if let Some(observer) = &observer {
                            observer.progress(Progress::Line(event.to_string()));
                        }
                    }
                    Err(RecvError::Lagged(missed)) => {
                        dir.event("agent_events_lost", json!({"missed": missed}));
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        })
    }

    /// Copies every node's system log, the `teardown.collect` paths, and the data directory of
    /// failed nodes into `nodes/<name>/`.
    async fn collect(&self, system: &System) {
        self.status_line("collecting logs");
        for (i, node) in system.nodes.iter().enumerate() {
            let dest = self.dir.path.join("nodes").join(node.name());
            let mut budget = DATA_ARCHIVE_LIMIT;
            copy_from_node(
                node.as_ref(),
                &system.log_paths[i],
                &dest.join("system.log"),
                &mut budget,
            )
            .await;
            for c in &self.scenario.teardown.collect {
                let Ok(path) = system.render(i, c) else { continue };
                let name = Path::new(&path)
                    .file_name()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "collected".into());
                copy_from_node(node.as_ref(), &path, &dest.join(name), &mut budget).await;
            }
            if self.failed_nodes.contains(node.name())
                && let Some(data) = self
                    .scenario
                    .setup
                    .start
                    .as_ref()
                    .and_then(|s| s.data_dir.as_ref())
                && let Ok(path) = system.render(i, data)
            {
                let mut budget = DATA_ARCHIVE_LIMIT;
                copy_from_node(node.as_ref(), &path, &dest.join("data"), &mut budget).await;
                self.dir
                    .event("data_archived", json!({"node": node.name(), "from": path}));
            }
        }
    }

    /// Judges the history with the scenario's checkers and writes the report.
    fn judge_history(&mut self) {
        let Some(recorder) = self.recorder.clone() else {
            return;
        };
        recorder.flush();
        if let Err(e) = recorder.close() {
            tracing::error!("writing history.jsonl: {e}");
        }
        let path = self.dir.path.join("history.jsonl");
        let history = match History::read_file(&path) {
            Ok(h) => h,
            Err(e) => {
                self.violation
                    .get_or_insert(format!("the recorded history is unreadable: {e}"));
                return;
            }
        };
        let checkers = self.scenario.history.checkers.clone();
        let report = match chaos_check::check_history(&history, &checkers) {
            Ok(r) => r,
            Err(e) => {
                self.violation.get_or_insert(format!("checking the history: {e}"));
                return;
            }
        };
        let leaves: Vec<serde_json::Value> = report
            .verdict
            .leaves()
            .into_iter()
            .map(|v| json!({"checker": v.checker, "valid": v.valid, "explanation": v.explanation, "ops": v.ops}))
            .collect();
        let verdict = report.verdict.valid.as_str().to_string();
        if report.verdict.valid == chaos_check::Validity::Invalid {
            let why = report
                .verdict
                .leaves()
                .into_iter()
                .filter(|v| v.valid == chaos_check::Validity::Invalid)
                .map(|v| format!("{}: {}", v.checker, v.explanation))
                .collect::<Vec<_>>()
                .join("; ");
            self.violation.get_or_insert(format!("history checkers: {why}"));
        }
        for v in report.verdict.leaves() {
            self.say(format!(
                "checker {:<28} {}: {}",
                v.checker,
                v.valid.as_str(),
                v.explanation
            ));
        }
        let report_path = match chaos_check::write_report(&self.dir.path, &history, &report) {
            Ok(files) => Some(files.html),
            Err(e) => {
                tracing::error!("writing the report: {e}");
                None
            }
        };
        self.dir
            .event("history_checked", json!({"verdict": verdict, "checkers": leaves}));
        self.history = Some(HistorySummary {
            verdict,
            checkers: leaves,
            report: report_path.as_ref().map(|p| p.display().to_string()),
        });
        self.report = report_path;
    }
}

/// A mechanism's name as the API writes it (`cgroup_v2_freeze`, `nfqueue_userspace`).
fn mechanism_name(m: &chaos_proto::fault::Mechanism) -> String {
    match serde_json::to_value(m) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(serde_json::Value::Object(o)) => o.keys().next().cloned().unwrap_or_default(),
        _ => format!("{m:?}"),
    }
}

/// Heals every handle; the first error, if any.
async fn heal_handles(handles: &[FaultHandle]) -> Option<String> {
    let results = futures_util::future::join_all(handles.iter().map(FaultHandle::heal)).await;
    results.into_iter().find_map(|r| r.err().map(|e| e.to_string()))
}

/// Copies a file or directory tree from a node, within `budget` bytes. Missing paths are skipped.
async fn copy_from_node(node: &dyn Node, path: &str, dest: &Path, budget: &mut u64) {
    let Ok(stat) = node.stat(path).await else { return };
    match stat.file_type {
        chaos_proto::FileType::Dir => {
            let Ok(entries) = node.list_dir(path).await else {
                return;
            };
            let _ = std::fs::create_dir_all(dest);
            for e in entries {
                let child = format!("{}/{}", path.trim_end_matches('/'), e.name);
                Box::pin(copy_from_node(node, &child, &dest.join(&e.name), budget)).await;
            }
        }
        chaos_proto::FileType::File => {
            if stat.size > *budget {
                tracing::warn!("not copying {path} from {}: over the archive limit", node.name());
                return;
            }
            if let Ok(bytes) = node.read_bytes(path).await {
                *budget = budget.saturating_sub(bytes.len() as u64);
                if let Some(parent) = dest.parent() {
                    let _ = std::fs::create_dir_all(parent);
                }
                let _ = std::fs::write(dest, bytes);
            }
        }
        _ => {}
    }
}
