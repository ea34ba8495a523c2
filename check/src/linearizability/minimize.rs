//! Shrinking a non-linearizable key history to a small certificate: the operations that cannot
//! be linearized together, and the context operations they need.

use std::cell::Cell;
use std::collections::HashMap;
use std::time::Instant;

use super::model::{KeyOp, Registers, State, Step, referenced, sort_ops, written};
use super::search::{Limits, SearchResult, search};

/// A violation shrunk to the operations that matter.
#[derive(Debug, Clone)]
pub(super) struct Violation {
    /// The `ok` operations that cannot be linearized together.
    pub core: Vec<u64>,
    /// The operations kept as "may or may not have taken effect" alongside the core.
    pub context: Vec<u64>,
    /// The history was cut here (µs): nothing that completed later is needed to show the violation.
    pub until_us: u64,
    /// How far the operations were shrunk.
    pub shrunk: Shrunk,
}

/// How far a violation was shrunk. The verdict is the same in every case: only the list of
/// operations shown for it may be longer than it needs to be.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Shrunk {
    /// Every core operation was shown to be needed.
    Minimal,
    /// Minimizing stopped early; the string says at which limit.
    Stopped(String),
    /// Minimizing was turned off: all of the key's operations are listed.
    Off,
}

/// What minimizing may spend on one key.
#[derive(Debug, Clone)]
pub(super) struct MinimizeLimits {
    /// Search steps, over all the searches minimizing runs.
    pub max_steps: u64,
    /// Wall-clock end (shared by every key of the check).
    pub deadline: Option<Instant>,
}

/// The whole key history as its own certificate (minimizing off).
pub(super) fn unshrunk(ops: &[KeyOp]) -> Violation {
    let mut core: Vec<(u64, u64)> = ops
        .iter()
        .filter(|o| o.complete.is_some())
        .map(|o| (o.invoke, o.id))
        .collect();
    core.sort_unstable();
    Violation {
        core: core.into_iter().map(|(_, id)| id).collect(),
        context: ops
            .iter()
            .filter(|o| o.complete.is_none())
            .map(|o| o.id)
            .collect(),
        until_us: ops.iter().filter_map(|o| o.complete).max().unwrap_or(0),
        shrunk: Shrunk::Off,
    }
}

/// The history cut at `t`: operations invoked later are dropped, and those still running at `t` may
/// or may not have taken effect (reads among them are dropped). A violation in the cut is a
/// violation in the whole history.
pub(super) fn truncate(ops: &[KeyOp], t: u64) -> Vec<KeyOp> {
    ops.iter()
        .filter(|o| o.invoke <= t)
        .filter_map(|o| match o.complete {
            Some(c) if c > t => match o.step {
                Step::Read(_) => None,
                _ => Some(KeyOp {
                    complete: None,
                    ..o.clone()
                }),
            },
            _ => Some(o.clone()),
        })
        .collect()
}

/// Shrinks a non-linearizable history to a small certificate, using only changes that admit more
/// linearizations (so whatever stays non-linearizable is a sound certificate):
///
/// 1. cut the history at the earliest completion where it is already non-linearizable;
/// 2. drop operations: a read (always a relaxation), or an update whose written value no remaining
///    operation that completes after the update's invocation reads or expects (only such an
///    operation can directly follow it in a linearization, so in every linearization the update is
///    followed by a blind overwrite, and dropping it breaks none; on an appending key no remaining
///    read, cas or append may follow it, see [`referenced`]) — in halving chunks, then one by one
///    to a fixpoint;
/// 3. turn each remaining acknowledged update into "may or may not have taken effect".
///
/// What remains is 1-minimal: relaxing any one remaining `ok` operation makes it linearizable
/// (unless a limit cut the work short, which the result says).
pub(super) fn minimize(
    ops: &[KeyOp],
    registers: &mut Registers,
    limits: &Limits,
    budget: &MinimizeLimits,
    first_search_steps: u64,
) -> Violation {
    let appendable = registers.is_appendable();
    let mut spent = 0u64;
    // One try may take a few times what the first search took, within both budgets: a try that
    // needs far more is not worth it (its candidate is kept, so the result stays sound).
    let try_limits = Limits {
        max_steps: limits
            .max_steps
            .min(budget.max_steps)
            .min(first_search_steps.saturating_mul(4).max(200_000)),
        deadline: match (limits.deadline, budget.deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        },
        ..limits.clone()
    };
    // Why the result may not be minimal, if it may not be; `out` stops all further tries.
    let mut incomplete: Option<String> = None;
    let out = Cell::new(false);
    let mut refutes = |candidate: &[KeyOp]| -> bool {
        if !out.get() && spent >= budget.max_steps {
            incomplete = Some(format!("its budget of {} search steps", budget.max_steps));
            out.set(true);
        }
        if !out.get() && budget.deadline.is_some_and(|d| Instant::now() >= d) {
            incomplete = Some("its time limit".to_string());
            out.set(true);
        }
        if out.get() {
            return false;
        }
        let (result, steps) = search(candidate, registers, &try_limits);
        spent += steps;
        match result {
            SearchResult::NotLinearizable => true,
            SearchResult::Linearizable => false,
            // This candidate is kept as it is; the other tries go on.
            SearchResult::Exhausted(why) => {
                if budget.deadline.is_some_and(|d| Instant::now() >= d) {
                    incomplete = Some("its time limit".to_string());
                    out.set(true);
                } else {
                    incomplete.get_or_insert_with(|| format!("one of its searches stopped: {why}"));
                }
                false
            }
        }
    };
    // 1. The shortest non-linearizable cut (later cuts only add constraints).
    let mut times: Vec<u64> = ops.iter().filter_map(|o| o.complete).collect();
    times.sort_unstable();
    times.dedup();
    let (mut lo, mut hi) = (0usize, times.len().saturating_sub(1));
    while lo < hi {
        let mid = (lo + hi) / 2;
        if refutes(&truncate(ops, times[mid])) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    let until_us = times.get(hi).copied().unwrap_or(0);
    let mut current = truncate(ops, until_us);
    // 2. Drop operations, in chunks of halving size, then singly until nothing more goes.
    let mut chunk = (current.len() / 2).max(1);
    loop {
        let mut changed = false;
        let mut end = current.len();
        // Once the budget is spent no candidate is tried: stop building them too.
        while end > 0 && !out.get() {
            let start = end.saturating_sub(chunk);
            let chunk_range = start..end;
            end = start;
            let mut drop: Vec<bool> = (0..current.len()).map(|i| chunk_range.contains(&i)).collect();
            // An update must stay while a remaining operation that may come after it (completes
            // after its invocation) relies on its value; iterate, since keeping an operation keeps
            // what it relies on too.
            loop {
                let mut latest_use: HashMap<State, u64> = HashMap::new();
                for (o, _) in current.iter().zip(&drop).filter(|(_, d)| !**d) {
                    if let Some(v) = referenced(o, appendable) {
                        let until = o.complete.unwrap_or(u64::MAX);
                        let entry = latest_use.entry(v).or_insert(until);
                        *entry = (*entry).max(until);
                    }
                }
                let mut kept = false;
                for (i, o) in current.iter().enumerate() {
                    let used = written(o, appendable)
                        .and_then(|v| latest_use.get(&v))
                        .is_some_and(|&until| until >= o.invoke);
                    if drop[i] && used {
                        drop[i] = false;
                        kept = true;
                    }
                }
                if !kept {
                    break;
                }
            }
            if !drop.iter().any(|d| *d) {
                continue;
            }
            let candidate: Vec<KeyOp> = current
                .iter()
                .zip(&drop)
                .filter(|(_, d)| !**d)
                .map(|(o, _)| o.clone())
                .collect();
            if refutes(&candidate) {
                end = end.min(candidate.len());
                current = candidate;
                changed = true;
            }
        }
        if out.get() {
            break;
        }
        if chunk > 1 {
            chunk /= 2;
        } else if !changed {
            break;
        }
    }
    // 3. Updates others rely on cannot be dropped, but may not need their acknowledgement.
    for index in (0..current.len()).rev() {
        if out.get() {
            break;
        }
        if current[index].complete.is_none() || written(&current[index], appendable).is_none() {
            continue;
        }
        let mut candidate = current.clone();
        candidate[index].complete = None;
        sort_ops(&mut candidate);
        if refutes(&candidate) {
            current = candidate;
        }
    }
    let mut core: Vec<(u64, u64)> = current
        .iter()
        .filter(|o| o.complete.is_some())
        .map(|o| (o.invoke, o.id))
        .collect();
    core.sort_unstable();
    Violation {
        core: core.into_iter().map(|(_, id)| id).collect(),
        context: current
            .iter()
            .filter(|o| o.complete.is_none())
            .map(|o| o.id)
            .collect(),
        until_us,
        shrunk: match incomplete {
            None => Shrunk::Minimal,
            Some(why) => Shrunk::Stopped(why),
        },
    }
}
