//! A run's state and its course: setup, start checks, workload and schedule, end checks,
//! teardown, verdict and summary.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chaos::cluster::Cluster;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{Progress, RunObserver, RunOptions, RunOutcome};
use crate::checks::{CheckResult, System};
use crate::model::{Scenario, When};
use crate::nemesis::{Active, Nemesis};
use crate::plan::Plan;
use crate::rundir::{HistorySummary, RunDir, RunStatus, StepStatus, StepSummary, Summary, Totals};
use crate::sut::Suts;
use crate::workload::{Recorder, Workload};

/// A step whose fault is in place.
pub(super) struct InPlace {
    /// The step's index in the plan.
    pub index: usize,
    /// The fault, as its nemesis returned it.
    pub active: Box<dyn Active>,
    pub injected: Instant,
}

/// The workload's counts as last sampled, for the observer's rate.
#[derive(Default)]
pub(super) struct Status {
    pub(super) recorder: Option<Arc<Recorder>>,
    last: Option<(Instant, u64)>,
    rate: Option<f64>,
}

impl Status {
    /// Measures the operation rate since the last sample.
    pub(super) fn sample(&mut self) {
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
    pub(super) fn ops(&self) -> Option<Progress> {
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
pub(super) enum Abort {
    Interrupted,
    Setup(String),
}

/// What a run has found so far: each step's outcome, the checks' results, and why it failed.
#[derive(Default)]
pub(super) struct Verdict {
    pub(super) steps: Vec<StepSummary>,
    pub(super) start_checks: Vec<CheckResult>,
    pub(super) end_checks: Vec<CheckResult>,
    /// Nodes whose data directories are archived.
    pub(super) failed_nodes: BTreeSet<String>,
    /// The first invariant or checker that failed.
    pub(super) violation: Option<String>,
    /// A fault that could not be injected or healed: the run tested less than it says.
    pub(super) env_error: Option<String>,
    pub(super) history: Option<HistorySummary>,
    /// The HTML report.
    pub(super) report: Option<PathBuf>,
}

/// A run in progress: its inputs, what it has built, and what it has found so far.
pub(super) struct Run {
    pub(super) scenario: Arc<Scenario>,
    pub(super) plan: Plan,
    pub(super) options: RunOptions,
    /// Shared with the task that records the agent supervisor's events.
    pub(super) dir: Arc<RunDir>,
    pub(super) replay: String,
    pub(super) seed: u64,
    pub(super) started_at: String,
    pub(super) cancel: CancellationToken,
    pub(super) status: Arc<std::sync::Mutex<Status>>,
    pub(super) cluster: Option<Arc<dyn Cluster>>,
    /// The nodes' directories a failed run kept ([`RunOptions::keep_failed`]).
    pub(super) kept: Vec<chaos::cluster::KeptDir>,
    /// Writes the cluster's agent events (died, restarted, node failed) to `events.jsonl`.
    pub(super) agent_events: Option<tokio::task::JoinHandle<()>>,
    pub(super) system: Option<Arc<System>>,
    /// The system's process on each node, shared with the nemeses that take it down.
    pub(super) suts: Option<Arc<Suts>>,
    /// One per fault family, set up once the cluster exists.
    pub(super) nemeses: Vec<Box<dyn Nemesis>>,
    pub(super) recorder: Option<Arc<Recorder>>,
    pub(super) workload: Option<Workload>,
    /// The faults in place.
    pub(super) active: Vec<InPlace>,
    /// What the run has found so far.
    pub(super) verdict: Verdict,
}

impl Run {
    pub(super) fn new(
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
                kind: s.kind().to_string(),
                planned_target: s.target.to_string(),
                nodes: Vec::new(),
                status: StepStatus::NotRun,
                reason: None,
                injected_ms: None,
                fault_ms: None,
                recovery_ms: None,
                elapsed_ms: None,
                invariants: Vec::new(),
                warnings: Vec::new(),
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
            started_at: crate::rundir::timestamps().1,
            cancel,
            status: Arc::new(std::sync::Mutex::new(Status::default())),
            cluster: None,
            kept: Vec::new(),
            agent_events: None,
            system: None,
            suts: None,
            nemeses: Vec::new(),
            recorder: None,
            workload: None,
            active: Vec::new(),
            verdict: Verdict {
                steps,
                ..Verdict::default()
            },
        }
    }

    pub(super) fn report(&self, progress: Progress) {
        if let Some(observer) = &self.options.observer {
            observer.progress(progress);
        }
    }

    /// Reports a line of its own (a step's outcome, a skipped case, …).
    pub(super) fn say(&self, line: impl AsRef<str>) {
        self.report(Progress::Line(line.as_ref().to_string()));
    }

    /// Reports what the run is doing now.
    pub(super) fn status_line(&self, what: &str) {
        self.report(Progress::Doing(what.to_string()));
    }

    /// Samples the workload's counts and rate every second for the observer.
    pub(super) fn spawn_progress_ticker(
        &self,
        observer: Arc<dyn RunObserver>,
    ) -> tokio::task::JoinHandle<()> {
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

    pub(super) async fn execute(&mut self) -> RunOutcome {
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
        if let Some(v) = &self.verdict.violation
            && status != RunStatus::Interrupted
        {
            status = RunStatus::Failed;
            reason = Some(v.clone());
        } else if let Some(e) = &self.verdict.env_error
            && status == RunStatus::Passed
        {
            status = RunStatus::Error;
            reason = Some(e.clone());
        }
        // Whether anything is kept is the cluster's to say: the option, or its backend's own
        // configuration (the `hosts` inventory's `keep_failed_runs`).
        self.cleanup_cluster(matches!(status, RunStatus::Failed | RunStatus::Error))
            .await;
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
            report: self.verdict.report.clone(),
        }
    }

    pub(super) fn summary(&self, status: RunStatus, reason: Option<String>) -> Summary {
        let mut totals = Totals {
            steps: self.verdict.steps.len(),
            ..Totals::default()
        };
        for s in &self.verdict.steps {
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
            start_checks: self.verdict.start_checks.clone(),
            steps: self.verdict.steps.clone(),
            end_checks: self.verdict.end_checks.clone(),
            history: self.verdict.history.clone(),
            totals,
            kept: self.kept.clone(),
        }
    }

    /// Waits `d`, or returns `Err(Interrupted)` when cancelled first.
    pub(super) async fn sleep(&self, d: Duration) -> Result<(), Abort> {
        tokio::select! {
            _ = tokio::time::sleep(d) => Ok(()),
            _ = self.cancel.cancelled() => Err(Abort::Interrupted),
        }
    }

    pub(super) fn interrupted(&self) -> Result<(), Abort> {
        if self.cancel.is_cancelled() {
            Err(Abort::Interrupted)
        } else {
            Ok(())
        }
    }

    pub(super) fn system(&self) -> Arc<System> {
        self.system
            .clone()
            .expect("the system is set up before it is used")
    }

    pub(super) async fn body(&mut self) -> Result<(), Abort> {
        self.setup().await?;
        self.interrupted()?;
        self.checks_at(When::Start).await?;
        if self.verdict.violation.is_some() {
            return Ok(());
        }
        self.start_workload()?;
        self.schedule().await?;
        self.interrupted()?;
        if let Some(w) = self.workload.take() {
            self.status_line("stopping the workload (final reads)");
            w.stop(true).await;
        }
        if self.verdict.violation.is_none() {
            self.checks_at(When::End).await?;
        }
        Ok(())
    }
}
