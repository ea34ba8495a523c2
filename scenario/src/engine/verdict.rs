//! The verdict: invariants at start, after heals and at the end, and the history's checkers.

use chaos_check::History;
use serde_json::json;

use super::run::{Abort, Run};
use crate::checks::CheckResult;
use crate::model::When;
use crate::rundir::HistorySummary;

impl Run {
    /// Runs the invariants that apply `at`; returns them. Sets the violation when one fails.
    pub(super) async fn run_invariants(&mut self, at: When, label: &str) -> Result<Vec<CheckResult>, Abort> {
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
            async move { system.run_check(&inv.check, &cancel).await }
        }))
        .await;
        results.extend(live_results);
        for inv in quiet {
            self.interrupted()?;
            let guard = match &self.workload {
                Some(w) => Some(w.quiesce().await),
                None => None,
            };
            results.push(system.run_check(&inv.check, &cancel).await);
            drop(guard);
        }
        self.interrupted()?;
        for r in &results {
            self.dir
                .event("invariant", json!({"at": at, "during": label, "result": r}));
            if !r.passed {
                self.verdict.failed_nodes.extend(r.failed_nodes.iter().cloned());
                if self.verdict.violation.is_none() {
                    self.verdict.violation =
                        Some(format!("invariant `{}` violated {label}: {}", r.name, r.detail));
                }
            }
        }
        Ok(results)
    }

    pub(super) async fn checks_at(&mut self, at: When) -> Result<(), Abort> {
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
            When::Start => self.verdict.start_checks = results,
            _ => self.verdict.end_checks = results,
        }
        Ok(())
    }

    /// Judges the history with the scenario's checkers and writes the report.
    pub(super) fn judge_history(&mut self) {
        let Some(recorder) = self.recorder.clone() else {
            return;
        };
        if let Some(system) = &self.system {
            for (at, check, m) in system.measurements.drain() {
                recorder.measurement(at, &format!("check {check}"), &m);
            }
        }
        recorder.flush();
        if let Err(e) = recorder.close() {
            tracing::error!("writing history.jsonl: {e}");
        }
        let path = self.dir.path.join("history.jsonl");
        let history = match History::read_file(&path) {
            Ok(h) => h,
            Err(e) => {
                self.verdict
                    .violation
                    .get_or_insert(format!("the recorded history is unreadable: {e}"));
                return;
            }
        };
        let checkers = self.scenario.history.checkers.clone();
        let options = chaos_check::CheckOptions {
            consistency_model: self.scenario.history.consistency_model.unwrap_or_default(),
            ..chaos_check::CheckOptions::default()
        };
        let report = match chaos_check::check_history_with(&history, &checkers, &options) {
            Ok(r) => r,
            Err(e) => {
                self.verdict
                    .violation
                    .get_or_insert(format!("checking the history: {e}"));
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
            self.verdict
                .violation
                .get_or_insert(format!("history checkers: {why}"));
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
        self.verdict.history = Some(HistorySummary {
            verdict,
            checkers: leaves,
            report: report_path.as_ref().map(|p| p.display().to_string()),
        });
        self.verdict.report = report_path;
    }
}
