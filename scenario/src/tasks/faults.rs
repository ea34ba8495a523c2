//! Faults while tasks run: the task file's fault cases planned from a seed exactly as a
//! scenario's ([`crate::plan::Plan`]) and injected through the scenario engine's network nemeses
//! ([`crate::nemesis`]) — no fault case is defined twice. Steps run one after the other (a
//! case's `overlap` is not honoured here) until the plan ends or the tasks are done; the fault in
//! place then is healed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chaos::Node;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::Scenario;
use crate::nemesis::network::{AgentNemesis, PartitionNemesis};
use crate::nemesis::{self, Nemesis, Probes, Refusal};
use crate::plan::{Plan, PlannedTarget};

/// Extra time a fault lives on its node beyond its planned duration (healed by the node then,
/// should the runner die).
const TTL_MARGIN: Duration = Duration::from_secs(30);

/// One step in `summary.json`'s `faults`.
#[derive(Debug, Clone, Serialize)]
pub struct FaultRecord {
    /// Position in the plan.
    pub step: usize,
    /// The case.
    pub case: String,
    /// The fault kind.
    pub kind: String,
    /// Nodes targeted.
    pub nodes: Vec<String>,
    /// `healed`, `skipped` or `error`.
    pub status: &'static str,
    /// Why, when not healed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Milliseconds after the tasks began.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub injected_ms: Option<u64>,
    /// How long it was in place.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault_ms: Option<u64>,
}

/// The nemeses a task run has: network faults only (agent-carried and partitions).
pub(super) fn nemeses(nodes: &[Arc<dyn Node>]) -> Vec<Box<dyn Nemesis>> {
    let probes = Probes::new(nodes.to_vec());
    vec![
        Box::new(AgentNemesis::new(nodes.to_vec(), probes.clone())),
        Box::new(PartitionNemesis::new(nodes.to_vec(), probes)),
    ]
}

/// Checks every case can be carried out here, before any task starts.
pub(super) async fn check(scenario: &Scenario, nemeses: &[Box<dyn Nemesis>]) -> Result<(), String> {
    for case in &scenario.faults {
        let Some(nemesis) = nemesis::find(nemeses, &case.fault) else {
            return Err(format!(
                "fault case `{}`: {} faults are not available in task files (they act on a system \
                 under test, which a task run has not); use network faults",
                case.name,
                case.fault.kind()
            ));
        };
        nemesis
            .supports(&case.fault)
            .await
            .map_err(|why| format!("fault case `{}`: {why}", case.name))?;
    }
    Ok(())
}

/// Runs `plan`'s steps until it ends or `done` fires; returns what happened.
pub(super) async fn run(
    plan: Plan,
    nodes: Vec<Arc<dyn Node>>,
    nemeses: Vec<Box<dyn Nemesis>>,
    done: CancellationToken,
) -> Vec<FaultRecord> {
    let start = Instant::now();
    let mut records = Vec::new();
    for step in plan.steps {
        if done.is_cancelled() {
            break;
        }
        let mut record = FaultRecord {
            step: step.number,
            case: step.case.clone(),
            kind: step.kind().to_string(),
            nodes: Vec::new(),
            status: "skipped",
            reason: None,
            injected_ms: None,
            fault_ms: None,
        };
        let targets: Vec<usize> = match &step.target {
            PlannedTarget::Nodes(names) => names
                .iter()
                .filter_map(|name| nodes.iter().position(|n| n.name() == name))
                .collect(),
            other => {
                record.reason = Some(format!("target {other} needs a leader, which a task run has not"));
                records.push(record);
                continue;
            }
        };
        record.nodes = targets.iter().map(|&i| nodes[i].name().to_string()).collect();
        let duration = Duration::from_millis(step.duration_ms);
        let Some(nemesis) = nemesis::find(&nemeses, &step.fault) else {
            record.status = "error";
            record.reason = Some("no nemesis for this fault".into());
            records.push(record);
            continue;
        };
        let injected = Instant::now();
        match nemesis
            .inject(&step.fault, &targets, None, duration + TTL_MARGIN)
            .await
        {
            Ok(active) => {
                record.injected_ms = Some(start.elapsed().as_millis() as u64);
                tokio::select! {
                    _ = tokio::time::sleep(duration) => {}
                    _ = done.cancelled() => {}
                }
                match active.heal().await {
                    Ok(()) => record.status = "healed",
                    Err(why) => {
                        record.status = "error";
                        record.reason = Some(format!("heal: {why}"));
                    }
                }
                record.fault_ms = Some(injected.elapsed().as_millis() as u64);
            }
            Err(Refusal::Skip(why)) => record.reason = Some(why),
            Err(Refusal::Failed(why)) => {
                record.status = "error";
                record.reason = Some(why);
            }
        }
        records.push(record);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(step.pause_ms)) => {}
            _ = done.cancelled() => break,
        }
    }
    records
}
