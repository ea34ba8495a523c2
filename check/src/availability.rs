//! Availability and recovery under faults: the fraction of operations that succeeded within each
//! fault case, and for each fault the time from its heal to the first successful operation after it.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::checker::{Checker, Validity, Verdict};
use crate::history::{FaultEvent, FaultPhase, History, Op, Outcome};

/// Bounds for the availability checker.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AvailabilityOptions {
    /// The largest tolerated fraction of `fail` + `unknown` operations among those invoked within a
    /// fault case's window (the etcd functional tester tolerated 30 % under stress).
    pub max_error_fraction: f64,
    /// The longest tolerated time from a heal to the first `ok` operation invoked after it (µs);
    /// `None` only requires that some operation succeeds after the heal.
    pub max_recovery_us: Option<u64>,
}

impl Default for AvailabilityOptions {
    fn default() -> Self {
        AvailabilityOptions {
            max_error_fraction: 0.3,
            max_recovery_us: None,
        }
    }
}

impl AvailabilityOptions {
    /// The bounds the history's header asks for, defaults for the rest.
    pub fn from_history(history: &History) -> AvailabilityOptions {
        let default = AvailabilityOptions::default();
        AvailabilityOptions {
            max_error_fraction: history
                .header
                .max_error_fraction
                .unwrap_or(default.max_error_fraction),
            max_recovery_us: history.header.max_recovery_us.or(default.max_recovery_us),
        }
    }
}

/// How many operations ended how.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct OpCounts {
    /// All operations counted.
    pub total: u64,
    /// Those that succeeded.
    pub ok: u64,
    /// Those that definitely failed.
    pub fail: u64,
    /// Those whose outcome is unknown.
    pub unknown: u64,
}

impl OpCounts {
    fn add(&mut self, op: &Op) {
        self.total += 1;
        match op.outcome {
            Outcome::Ok => self.ok += 1,
            Outcome::Fail => self.fail += 1,
            Outcome::Unknown => self.unknown += 1,
        }
    }

    /// The fraction of operations that did not succeed (0 when there were none).
    pub fn error_fraction(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            (self.fail + self.unknown) as f64 / self.total as f64
        }
    }
}

/// One fault, from injection to heal.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FaultWindow {
    /// The fault case it belongs to.
    pub case: String,
    /// The fault mechanism.
    pub kind: String,
    /// The nodes affected.
    pub nodes: Vec<String>,
    /// The injection's detail text, if any.
    pub detail: Option<String>,
    /// When it was injected (µs).
    pub injected_us: u64,
    /// When it was healed (µs); `None` if the history ends with it in place.
    pub healed_us: Option<u64>,
    /// Operations considered for its recovery, invoked after the heal.
    pub ops_after_heal: u64,
    /// Time from the heal to the earliest completion of an `ok` operation invoked after it (µs).
    pub recovery_us: Option<u64>,
    /// That operation's id.
    pub recovered_by: Option<u64>,
}

/// The availability result of one fault case.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CaseResult {
    /// The case id.
    pub case: String,
    /// The window: first injection of the case (µs).
    pub start_us: u64,
    /// The window: last heal of the case, or the end of the history if a fault was never healed.
    pub end_us: u64,
    /// The faults of the case.
    pub faults: Vec<FaultWindow>,
    /// Operations invoked within the window.
    pub ops: OpCounts,
    /// The result against the bounds.
    pub valid: Validity,
    /// Why.
    pub explanation: String,
}

/// Availability per fault case, as drawn in the report and judged by [`AvailabilityChecker`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AvailabilityReport {
    /// The bounds applied.
    pub options: AvailabilityOptions,
    /// One entry per fault case, by start time.
    pub cases: Vec<CaseResult>,
    /// Operations invoked outside every fault window (the baseline).
    pub outside_faults: OpCounts,
    /// Heal events with no matching injection (same case, kind and nodes), which were ignored.
    pub unmatched_heals: Vec<FaultEvent>,
}

impl AvailabilityReport {
    /// All fault windows of all cases.
    pub fn windows(&self) -> impl Iterator<Item = &FaultWindow> {
        self.cases.iter().flat_map(|c| c.faults.iter())
    }
}

/// Pairs injections with heals (same case, kind and set of nodes; first in, first out).
fn fault_windows(history: &History) -> (Vec<FaultWindow>, Vec<FaultEvent>) {
    let mut events: Vec<&FaultEvent> = history.faults.iter().collect();
    events.sort_by_key(|e| e.time_us);
    let mut windows: Vec<FaultWindow> = Vec::new();
    let mut unmatched = Vec::new();
    let identity = |e: &FaultEvent| {
        let nodes: BTreeSet<&str> = e.nodes.iter().map(String::as_str).collect();
        (
            e.case.clone(),
            e.kind.clone(),
            nodes.into_iter().map(str::to_string).collect::<Vec<_>>(),
        )
    };
    for event in events {
        match event.event {
            FaultPhase::Injected => windows.push(FaultWindow {
                case: event.case.clone(),
                kind: event.kind.clone(),
                nodes: event.nodes.clone(),
                detail: event.detail.clone(),
                injected_us: event.time_us,
                healed_us: None,
                ops_after_heal: 0,
                recovery_us: None,
                recovered_by: None,
            }),
            FaultPhase::Healed => {
                let id = identity(event);
                let open = windows.iter_mut().find(|w| {
                    w.healed_us.is_none() && {
                        let nodes: BTreeSet<&str> = w.nodes.iter().map(String::as_str).collect();
                        (
                            w.case.clone(),
                            w.kind.clone(),
                            nodes.into_iter().map(str::to_string).collect(),
                        ) == id
                    }
                });
                match open {
                    Some(w) => w.healed_us = Some(event.time_us),
                    None => unmatched.push(event.clone()),
                }
            }
        }
    }
    (windows, unmatched)
}

/// Measures availability per fault case and recovery per fault.
pub fn analyze(history: &History, options: &AvailabilityOptions) -> AvailabilityReport {
    let (mut windows, unmatched_heals) = fault_windows(history);
    let end = history.end_us();
    let mut ops: Vec<&Op> = history.ops.iter().collect();
    ops.sort_by_key(|o| (o.invoke_us, o.id));
    let nodes_with_ops: BTreeSet<&str> = ops.iter().filter_map(|o| o.node.as_deref()).collect();
    for w in &mut windows {
        let Some(healed) = w.healed_us else { continue };
        // Recovery of the faulted nodes, seen through the clients talking to them when the history
        // says which node each operation went to; otherwise through all clients.
        let watched: BTreeSet<&str> = w
            .nodes
            .iter()
            .map(String::as_str)
            .filter(|n| nodes_with_ops.contains(n))
            .collect();
        let relevant =
            |o: &&&Op| watched.is_empty() || o.node.as_deref().is_some_and(|n| watched.contains(n));
        let start = ops.partition_point(|o| o.invoke_us < healed);
        let after: Vec<&&Op> = ops[start..].iter().filter(relevant).collect();
        w.ops_after_heal = after.len() as u64;
        if let Some(first) = after
            .iter()
            .filter(|o| o.outcome == Outcome::Ok)
            .filter_map(|o| o.complete_us.map(|c| (c, o.id)))
            .min()
        {
            w.recovery_us = Some(first.0.saturating_sub(healed));
            w.recovered_by = Some(first.1);
        }
    }
    let mut cases: BTreeMap<String, Vec<FaultWindow>> = BTreeMap::new();
    for w in windows {
        cases.entry(w.case.clone()).or_default().push(w);
    }
    let mut results: Vec<CaseResult> = cases
        .into_iter()
        .map(|(case, faults)| {
            let start_us = faults.iter().map(|f| f.injected_us).min().unwrap_or(0);
            let end_us = if faults.iter().all(|f| f.healed_us.is_some()) {
                faults
                    .iter()
                    .filter_map(|f| f.healed_us)
                    .max()
                    .unwrap_or(start_us)
            } else {
                end.max(start_us)
            };
            let mut counts = OpCounts::default();
            for op in ops.iter().filter(|o| (start_us..=end_us).contains(&o.invoke_us)) {
                counts.add(op);
            }
            let (valid, explanation) = judge(&faults, &counts, options);
            CaseResult {
                case,
                start_us,
                end_us,
                faults,
                ops: counts,
                valid,
                explanation,
            }
        })
        .collect();
    results.sort_by(|a, b| (a.start_us, &a.case).cmp(&(b.start_us, &b.case)));
    let mut outside_faults = OpCounts::default();
    for op in &ops {
        if !results
            .iter()
            .any(|c| (c.start_us..=c.end_us).contains(&op.invoke_us))
        {
            outside_faults.add(op);
        }
    }
    AvailabilityReport {
        options: options.clone(),
        cases: results,
        outside_faults,
        unmatched_heals,
    }
}

fn seconds(us: u64) -> String {
    format!("{:.3} s", us as f64 / 1e6)
}

fn fault_name(f: &FaultWindow) -> String {
    if f.nodes.is_empty() {
        f.kind.clone()
    } else {
        format!("{} on {}", f.kind, f.nodes.join(","))
    }
}

fn judge(faults: &[FaultWindow], counts: &OpCounts, options: &AvailabilityOptions) -> (Validity, String) {
    let mut problems = Vec::new();
    let mut unknowns = Vec::new();
    let fraction = counts.error_fraction();
    if counts.total > 0 && fraction > options.max_error_fraction {
        problems.push(format!(
            "{:.1} % of {} operations failed or timed out (bound {:.1} %)",
            fraction * 100.0,
            counts.total,
            options.max_error_fraction * 100.0
        ));
    }
    for f in faults {
        match (f.healed_us, f.recovery_us) {
            (None, _) => unknowns.push(format!("{} was never healed", fault_name(f))),
            (Some(_), None) if f.ops_after_heal == 0 => {
                unknowns.push(format!("no operations followed the heal of {}", fault_name(f)))
            }
            (Some(_), None) => problems.push(format!(
                "never recovered after {} was healed: all {} operations after the heal failed",
                fault_name(f),
                f.ops_after_heal
            )),
            (Some(_), Some(r)) => {
                if let Some(bound) = options.max_recovery_us.filter(|b| r > *b) {
                    problems.push(format!(
                        "recovery after {} took {} (bound {})",
                        fault_name(f),
                        seconds(r),
                        seconds(bound)
                    ));
                }
            }
        }
    }
    if counts.total == 0 {
        unknowns.push("no operations were invoked during the case".to_string());
    }
    let recoveries: Vec<String> = faults.iter().filter_map(|f| f.recovery_us).map(seconds).collect();
    let summary = format!(
        "{} of {} operations ok ({:.1} % errors){}",
        counts.ok,
        counts.total,
        fraction * 100.0,
        if recoveries.is_empty() {
            String::new()
        } else {
            format!(", recovered in {}", recoveries.join(", "))
        }
    );
    if !problems.is_empty() {
        (Validity::Invalid, problems.join("; "))
    } else if !unknowns.is_empty() {
        (Validity::Unknown, format!("{summary}; {}", unknowns.join("; ")))
    } else {
        (Validity::Valid, summary)
    }
}

/// The availability and recovery checker.
#[derive(Debug, Clone, Default)]
pub struct AvailabilityChecker {
    /// Bounds; `None` takes them from the history's header (and defaults).
    pub options: Option<AvailabilityOptions>,
}

impl Checker for AvailabilityChecker {
    fn name(&self) -> &str {
        "availability"
    }

    fn check(&self, history: &History) -> Verdict {
        let options = self
            .options
            .clone()
            .unwrap_or_else(|| AvailabilityOptions::from_history(history));
        let report = analyze(history, &options);
        let details = serde_json::to_value(&report).unwrap_or(serde_json::Value::Null);
        if report.cases.is_empty() {
            return Verdict::new(
                self.name(),
                Validity::Unknown,
                "the history has no fault events, so availability under faults cannot be judged",
            )
            .with_details(details);
        }
        let valid = report
            .cases
            .iter()
            .fold(Validity::Valid, |acc, c| acc.and(c.valid));
        let notable: Vec<String> = report
            .cases
            .iter()
            .filter(|c| c.valid == valid)
            .map(|c| format!("case {:?}: {}", c.case, c.explanation))
            .collect();
        let explanation = match valid {
            Validity::Valid => format!(
                "all {} fault cases stayed within the bounds (at most {:.0} % errors{})",
                report.cases.len(),
                options.max_error_fraction * 100.0,
                options
                    .max_recovery_us
                    .map(|b| format!(", recovery within {}", seconds(b)))
                    .unwrap_or_default()
            ),
            _ => format!(
                "{} of {} fault cases are {}: {}",
                notable.len(),
                report.cases.len(),
                valid.as_str(),
                notable.join(". ")
            ),
        };
        Verdict::new(self.name(), valid, explanation).with_details(details)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Header, OpKind};

    fn fault(event: FaultPhase, case: &str, nodes: &[&str], t: u64) -> FaultEvent {
        FaultEvent {
            event,
            case: case.into(),
            kind: "partition".into(),
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
            time_us: t,
            detail: None,
        }
    }

    #[test]
    fn heals_pair_with_injections_regardless_of_node_order() {
        let mut h = History::new(Header::new());
        h.faults.push(fault(FaultPhase::Injected, "c", &["n1", "n2"], 10));
        h.faults.push(fault(FaultPhase::Healed, "c", &["n2", "n1"], 20));
        h.faults.push(fault(FaultPhase::Healed, "c", &["n3"], 30));
        let (windows, unmatched) = fault_windows(&h);
        assert_eq!(windows.len(), 1);
        assert_eq!(windows[0].healed_us, Some(20));
        assert_eq!(unmatched.len(), 1);
    }

    #[test]
    fn recovery_is_measured_through_the_faulted_nodes_clients() {
        let mut h = History::new(Header::new());
        h.faults.push(fault(FaultPhase::Injected, "c", &["n1"], 100));
        h.faults.push(fault(FaultPhase::Healed, "c", &["n1"], 200));
        let read = |id, node: &str, t, outcome| {
            Op::new(id, id, OpKind::Read, t, outcome)
                .key("k")
                .value(1)
                .complete(t + 10)
                .node(node)
        };
        h.ops.push(read(1, "n2", 210, Outcome::Ok)); // another node: does not count
        h.ops.push(read(2, "n1", 220, Outcome::Fail));
        h.ops.push(read(3, "n1", 300, Outcome::Ok));
        let report = analyze(&h, &AvailabilityOptions::default());
        let w = &report.cases[0].faults[0];
        assert_eq!(
            (w.recovery_us, w.recovered_by, w.ops_after_heal),
            (Some(110), Some(3), 2)
        );
    }
}
