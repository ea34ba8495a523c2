//! The schedule: groups of overlapping steps on a timeline, each step injected through its
//! fault's nemesis on the nodes its target resolves to, healed after its duration, then the
//! recovery checks. A step whose target picks nobody, or whose nemesis finds nothing to act on,
//! is skipped with the reason; a fault that cannot be injected or healed stops the schedule.

use std::time::{Duration, Instant};

use chaos_check::{FaultEvent, FaultPhase, WarningEvent};
use serde_json::json;

use super::run::{Abort, InPlace, Run};
use super::{DEFAULT_WORKLOAD_RECOVERY, TTL_MARGIN};
use crate::model::When;
use crate::nemesis::{self, Refusal};
use crate::plan::{PlannedTarget, Step};
use crate::rundir::StepStatus;
use crate::workload::Recorder;

impl Run {
    pub(super) async fn schedule(&mut self) -> Result<(), Abort> {
        let steps = self.plan.steps.clone();
        let started = Instant::now();
        let limit = self.scenario.schedule.time_limit.map(|d| d.0);
        for group in groups(&steps) {
            let (i, end) = (group[0], group[group.len() - 1]);
            self.interrupted()?;
            if let Some(limit) = limit
                && started.elapsed() >= limit
            {
                for s in &mut self.verdict.steps[i..] {
                    s.status = StepStatus::Skipped;
                    s.reason = Some(format!("the schedule's time limit ({limit:?}) was reached"));
                }
                self.dir.event("time_limit", json!({"after_steps": i}));
                break;
            }
            self.run_group(&steps, &group).await?;
            if self.verdict.violation.is_some() || self.verdict.env_error.is_some() {
                break;
            }
            let pause = Duration::from_millis(steps[end].pause_ms);
            self.status_line(&format!("pause {}", crate::plan::secs(steps[end].pause_ms)));
            self.sleep(pause).await?;
        }
        Ok(())
    }

    pub(super) async fn run_group(&mut self, steps: &[Step], group: &[usize]) -> Result<(), Abort> {
        let events = timeline(steps, group);
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
        self.heal_remaining().await;
        result?;
        let healed: Vec<usize> = group
            .iter()
            .copied()
            .filter(|&k| self.verdict.steps[k].status == StepStatus::Passed)
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
            let mut faulted: Vec<String> = healed
                .iter()
                .flat_map(|&k| self.verdict.steps[k].nodes.clone())
                .collect();
            faulted.sort();
            faulted.dedup();
            self.await_workload_recovery(&faulted, since_us, &names).await?;
        }
        for &k in &healed {
            let s = &mut self.verdict.steps[k];
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
            let s = &self.verdict.steps[k];
            let line = match s.status {
                StepStatus::Passed => format!("recovered in {}", crate::plan::secs(recovery_ms)),
                _ => format!("FAILED: {}", s.reason.clone().unwrap_or_default()),
            };
            self.say(format!(
                "step {:>3}/{} {:<24} {:<20} {:<12} {line}",
                s.number,
                self.verdict.steps.len(),
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
    pub(super) async fn await_workload_recovery(
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
    pub(super) async fn resolve(&self, target: &PlannedTarget) -> Result<Vec<usize>, String> {
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

    pub(super) fn skip(&mut self, index: usize, reason: String) {
        let total = self.verdict.steps.len();
        let s = &mut self.verdict.steps[index];
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

    /// Injects `step` through the nemesis of its fault, on the nodes its target resolves to;
    /// records it as in place, skipped (nobody to act on) or failed (the run's environment
    /// error).
    pub(super) async fn inject_step(&mut self, step: &Step) {
        let index = step.number - 1;
        let system = self.system();
        self.status_line(&format!(
            "round {}/{} step {}/{} {} ({}) on {}",
            step.round,
            self.plan.rounds,
            step.number,
            self.verdict.steps.len(),
            step.case,
            step.kind(),
            step.target
        ));
        let targets = match self.resolve(&step.target).await {
            Ok(t) => t,
            Err(why) => return self.skip(index, format!("target {}: {why}", step.target)),
        };
        if targets.is_empty() {
            return self.skip(index, format!("selector `{}` picked no node", step.target));
        }
        let ttl = Duration::from_millis(step.duration_ms) + self.scenario.scaled(TTL_MARGIN);
        let injected = match nemesis::find(&self.nemeses, &step.fault) {
            Some(nemesis) => {
                nemesis
                    .inject(&step.fault, &targets, step.service.as_deref(), ttl)
                    .await
            }
            None => Err(Refusal::Failed(format!(
                "no nemesis carries out {} faults",
                step.kind()
            ))),
        };
        let acted_on = match &injected {
            Ok(active) => active.nodes().to_vec(),
            Err(_) => targets,
        };
        let names: Vec<String> = acted_on
            .iter()
            .map(|&i| system.nodes[i].name().to_string())
            .collect();
        let at_ms = self.dir.elapsed_ms();
        match injected {
            Err(Refusal::Skip(why)) => self.skip(index, why),
            Err(Refusal::Failed(e)) => {
                let s = &mut self.verdict.steps[index];
                s.nodes = names.clone();
                s.injected_ms = Some(at_ms);
                s.status = StepStatus::Error;
                s.reason = Some(format!("injecting: {e}"));
                self.dir.event(
                    "fault_error",
                    json!({"step": step.number, "case": step.case, "nodes": names, "error": e}),
                );
                self.verdict.env_error.get_or_insert(format!(
                    "step {} ({}) could not be injected: {e}",
                    step.number, step.case
                ));
                self.say(format!(
                    "step {:>3}/{} {:<24} ERROR injecting: {e}",
                    step.number,
                    self.verdict.steps.len(),
                    step.case
                ));
            }
            Ok(active) => {
                let detail = active.detail();
                let s = &mut self.verdict.steps[index];
                s.nodes = names.clone();
                s.injected_ms = Some(at_ms);
                s.status = StepStatus::Passed;
                self.dir.event(
                    "fault_injected",
                    json!({"step": step.number, "case": step.case, "kind": step.kind(), "fault": step.fault,
                           "nodes": names, "duration_ms": step.duration_ms, "detail": detail}),
                );
                if let Some(r) = &self.recorder {
                    r.fault(FaultEvent {
                        event: FaultPhase::Injected,
                        case: history_case(step),
                        kind: step.kind().to_string(),
                        nodes: names.clone(),
                        time_us: r.now_us(),
                        detail: (!detail.is_empty()).then(|| detail.clone()),
                    });
                }
                self.active.push(InPlace {
                    index,
                    active,
                    injected: Instant::now(),
                });
            }
        }
    }

    /// Heals the fault of step `index` if it is in place.
    pub(super) async fn heal_step(&mut self, index: usize) {
        let Some(pos) = self.active.iter().position(|a| a.index == index) else {
            return;
        };
        let InPlace { active, injected, .. } = self.active.remove(pos);
        let step = self.plan.steps[index].clone();
        let system = self.system();
        self.check_leader_moved(&step, active.nodes(), injected.elapsed())
            .await;
        let names: Vec<String> = active
            .nodes()
            .iter()
            .map(|&i| system.nodes[i].name().to_string())
            .collect();
        let detail = active.detail();
        let error = active.heal().await.err();
        let fault_ms = injected.elapsed().as_millis() as u64;
        self.verdict.steps[index].fault_ms = Some(fault_ms);
        if let Some(r) = &self.recorder {
            r.fault(FaultEvent {
                event: FaultPhase::Healed,
                case: history_case(&step),
                kind: step.kind().to_string(),
                nodes: names.clone(),
                time_us: r.now_us(),
                detail: None,
            });
        }
        self.dir.event(
            "fault_healed",
            json!({"step": step.number, "case": step.case, "nodes": names, "fault_ms": fault_ms,
                   "detail": detail, "error": error}),
        );
        if let Some(e) = error {
            let s = &mut self.verdict.steps[index];
            s.status = StepStatus::Error;
            s.reason = Some(format!("healing: {e}"));
            self.verdict.env_error.get_or_insert(format!(
                "step {} ({}) could not be healed: {e}",
                step.number, step.case
            ));
        }
    }

    /// Before a fault on the leader is healed: is the node it took down still the leader, as a
    /// majority of the nodes see it? Then the fault changed nothing the probe can see (an election
    /// timeout longer than the fault, a probe that reports a stale leader): a warning on the step,
    /// in the run's events and progress. Only for kinds meant to depose a leader (partition,
    /// kill, pause, machine faults), and only when a leader is found within a short bound.
    async fn check_leader_moved(&mut self, step: &Step, nodes: &[usize], lasted: Duration) {
        let deposing = matches!(step.kind(), "partition" | "kill" | "pause" | "machine");
        if step.target != crate::plan::PlannedTarget::Leader || !deposing || nodes.len() != 1 {
            return;
        }
        let system = self.system();
        let bound = self.scenario.scaled(LEADER_RECHECK);
        let Ok(leader) = system.find_leader(bound).await else {
            return;
        };
        if leader != nodes[0] {
            return;
        }
        let name = system.nodes[leader].name().to_string();
        let warning = format!(
            "the leader {name} was still the leader after {:.1}s of {}: the fault may have changed \
             nothing (is the election timeout longer than the fault, or does the probe report a \
             stale leader?)",
            lasted.as_secs_f64(),
            step.kind()
        );
        self.dir.event(
            "step_warning",
            json!({"step": step.number, "case": step.case, "warning": warning}),
        );
        self.say(format!(
            "step {:>3}/{} {:<24} warning: {warning}",
            step.number,
            self.verdict.steps.len(),
            step.case
        ));
        if let Some(r) = &self.recorder {
            r.warning(WarningEvent {
                time_us: r.now_us(),
                case: Some(history_case(step)),
                message: warning.clone(),
            });
        }
        self.verdict.steps[step.number - 1].warnings.push(warning);
    }

    /// Heals every fault still in place.
    pub(super) async fn heal_remaining(&mut self) {
        let remaining: Vec<usize> = self.active.iter().map(|a| a.index).collect();
        for k in remaining {
            self.heal_step(k).await;
        }
    }
}

/// Bound of the leader probe made before a fault on the leader is healed.
const LEADER_RECHECK: Duration = Duration::from_secs(3);

/// The step's case as the history names it: `03-kill-one`.
fn history_case(step: &Step) -> String {
    format!("{:02}-{}", step.number, step.case)
}

/// The plan's steps in groups run together: a step and the ones it overlaps with.
pub(super) fn groups(steps: &[Step]) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < steps.len() {
        let mut end = i;
        while end + 1 < steps.len() && steps[end].overlap {
            end += 1;
        }
        out.push((i..=end).collect());
        i = end + 1;
    }
    out
}

/// A group's timeline as `(milliseconds from the group's start, heal?, step index)`: each step
/// starts after the previous one's pause (overlap) and heals after its duration; at equal
/// times heals come before injections.
pub(super) fn timeline(steps: &[Step], group: &[usize]) -> Vec<(u64, bool, usize)> {
    let mut events: Vec<(u64, bool, usize)> = Vec::new();
    let mut offset = 0u64;
    for &k in group {
        events.push((offset, false, k));
        events.push((offset + steps[k].duration_ms, true, k));
        offset += steps[k].pause_ms;
    }
    events.sort_by_key(|&(t, heal, k)| (t, !heal, k));
    events
}
