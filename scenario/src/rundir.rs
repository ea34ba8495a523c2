//! The run directory `runs/<scenario>/<timestamp>-seed<N>/` (with a `latest` link next to it):
//! the scenario as run, the seed, the plan, `events.jsonl`, `history.jsonl`, the nodes' logs,
//! `summary.json` and the report.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use serde::Serialize;
use serde_json::{Value, json};

use super::checks::CheckResult;

/// A run's directory and its event log.
pub struct RunDir {
    /// The directory.
    pub path: PathBuf,
    /// The run's id: the directory's name.
    pub run_id: String,
    events: Mutex<std::io::BufWriter<std::fs::File>>,
    start: Instant,
}

impl std::fmt::Debug for RunDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunDir").field("path", &self.path).finish()
    }
}

/// The current UTC time as `YYYYMMDDTHHMMSSZ` and as RFC 3339.
pub fn timestamps() -> (String, String) {
    let now = time::OffsetDateTime::now_utc();
    let compact = format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        now.year(),
        now.month() as u8,
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    );
    let rfc = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        now.year(),
        now.month() as u8,
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    );
    (compact, rfc)
}

impl RunDir {
    /// Creates `base/<scenario>/<timestamp>-seed<seed>/` (adding `-2`, `-3`… if it exists) and
    /// points `base/<scenario>/latest` at it.
    pub fn create(base: &Path, scenario: &str, seed: u64) -> std::io::Result<RunDir> {
        let parent = base.join(scenario);
        std::fs::create_dir_all(&parent)?;
        let (stamp, _) = timestamps();
        let mut run_id = format!("{stamp}-seed{seed}");
        let mut n = 2;
        while parent.join(&run_id).exists() {
            run_id = format!("{stamp}-seed{seed}-{n}");
            n += 1;
        }
        let path = parent.join(&run_id);
        std::fs::create_dir(&path)?;
        // Replace `latest` atomically: a new link under a temporary name, renamed over it.
        let tmp = parent.join(format!(".latest-{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        if std::os::unix::fs::symlink(&run_id, &tmp).is_ok()
            && std::fs::rename(&tmp, parent.join("latest")).is_err()
        {
            let _ = std::fs::remove_file(&tmp);
        }
        let events = std::fs::File::create(path.join("events.jsonl"))?;
        Ok(RunDir {
            path,
            run_id,
            events: Mutex::new(std::io::BufWriter::new(events)),
            start: Instant::now(),
        })
    }

    /// Milliseconds since the run directory was created.
    pub fn elapsed_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Appends `{"t_ms": …, "event": event, …fields}` to `events.jsonl`.
    pub fn event(&self, event: &str, fields: Value) {
        let mut record = json!({"t_ms": self.elapsed_ms(), "event": event});
        if let (Some(obj), Value::Object(extra)) = (record.as_object_mut(), fields) {
            obj.extend(extra);
        }
        tracing::debug!(target: "chaos_scenario", "{record}");
        if let Ok(mut w) = self.events.lock() {
            let _ = writeln!(w, "{record}");
            let _ = w.flush();
        }
    }

    /// Writes a file in the run directory.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> std::io::Result<PathBuf> {
        let path = self.path.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, contents)?;
        Ok(path)
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Every invariant held and the history checkers found nothing wrong.
    Passed,
    /// An invariant was violated or a history checker found the history invalid.
    Failed,
    /// Interrupted (Ctrl-C): faults healed, system stopped, summary written.
    Interrupted,
    /// The system could not be set up (or the environment failed): nothing was judged.
    Error,
}

impl RunStatus {
    /// The process exit code: 0 passed, 1 failed, 2 error, 130 interrupted.
    pub fn exit_code(self) -> u8 {
        match self {
            RunStatus::Passed => 0,
            RunStatus::Failed => 1,
            RunStatus::Error => 2,
            RunStatus::Interrupted => 130,
        }
    }
}

/// How one step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Injected, healed, and every recovery check passed in time.
    Passed,
    /// A recovery check did not pass in time.
    Failed,
    /// Not injected: the selector picked nobody (no leader…), or the time limit was reached.
    Skipped,
    /// Injecting or healing failed.
    Error,
    /// Not reached (an earlier step failed or the run was interrupted).
    NotRun,
}

/// One step in `summary.json`.
#[derive(Debug, Clone, Serialize)]
pub struct StepSummary {
    /// Position in the plan.
    pub number: usize,
    /// Round.
    pub round: u32,
    /// Case name.
    pub case: String,
    /// Fault kind.
    pub kind: String,
    /// The planned target.
    pub planned_target: String,
    /// The nodes actually targeted.
    pub nodes: Vec<String>,
    /// How it ended.
    pub status: StepStatus,
    /// Why (skips, errors, failures).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When it was injected, milliseconds since the run started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub injected_ms: Option<u64>,
    /// How long the fault was in place.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault_ms: Option<u64>,
    /// Time from the heal until every recovery check passed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovery_ms: Option<u64>,
    /// From injection to the end of the recovery checks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub elapsed_ms: Option<u64>,
    /// The recovery checks.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub invariants: Vec<CheckResult>,
    /// Signs that the fault may not have done what it was meant to (the leader it targeted was
    /// still the leader when it was healed). They do not fail the run.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Checker verdicts on the history.
#[derive(Debug, Clone, Serialize)]
pub struct HistorySummary {
    /// `valid`, `invalid` or `unknown`.
    pub verdict: String,
    /// One line per checker.
    pub checkers: Vec<Value>,
    /// The report file, when written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<String>,
}

/// Totals in `summary.json`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    /// Steps planned.
    pub steps: usize,
    /// Passed.
    pub passed: usize,
    /// Failed.
    pub failed: usize,
    /// Skipped.
    pub skipped: usize,
    /// Errors.
    pub errors: usize,
    /// Not run.
    pub not_run: usize,
    /// Operations recorded.
    pub ops: u64,
    /// `ok` operations.
    pub ok: u64,
    /// `fail` operations.
    pub fail: u64,
    /// `unknown` operations.
    pub unknown: u64,
}

/// `summary.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Scenario name.
    pub scenario: String,
    /// The seed.
    pub seed: u64,
    /// The run's id (directory name).
    pub run_id: String,
    /// Backend.
    pub backend: String,
    /// How it ended.
    pub status: RunStatus,
    /// Why, when it did not pass.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Wall-clock start (RFC 3339, UTC).
    pub started_at: String,
    /// Duration of the whole run.
    pub elapsed_ms: u64,
    /// The command that replays this run.
    pub replay: String,
    /// Checks run once the system was ready.
    pub start_checks: Vec<CheckResult>,
    /// The steps.
    pub steps: Vec<StepSummary>,
    /// Checks run at the end.
    pub end_checks: Vec<CheckResult>,
    /// History checkers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<HistorySummary>,
    /// Totals.
    pub totals: Totals,
    /// The nodes' root directories a failed run kept, and where (`--keep-failed`, or the
    /// `hosts` inventory's `keep_failed_runs`); empty when none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kept: Vec<chaos::cluster::KeptDir>,
}
