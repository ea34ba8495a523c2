//! Linearizability of per-key registers (read, write, compare-and-set, delete, append).
//!
//! The search is Wing & Gong's, with Lowe's just-in-time linearization and memoization of
//! (linearized set, register state) as in porcupine and Knossos: walk the history's call and return
//! events in time order, tentatively linearize any pending operation whose effect the register
//! model allows, and backtrack when an operation's return is reached before it was linearized
//! (`search`).
//!
//! Operations with an `unknown` outcome have no return event (completion = +∞): they may be
//! linearized at any point after their invocation, or never, so the search succeeds as soon as every
//! `ok` operation is linearized. `fail` operations and reads without a known result constrain nothing
//! and are dropped. Keys are independent registers, so each key is searched alone (in parallel).
//!
//! A key with `append` operations follows porcupine's key-value model (Athalye, porcupine's `kv`
//! test model: `append` concatenates strings and `get` returns the concatenation), extended to
//! lists; its states are built as the search reaches them (`model`), within the same budget.
//!
//! The memo set is exact: a linearized set is stored as "every `ok` operation before the first
//! pending one, plus exceptions", which stays as small as the concurrency window instead of growing
//! with the history. A [`Budget`] bounds steps and memo memory per key, so a search that would blow
//! up ends as `unknown` instead of exhausting memory.
//!
//! Four reductions keep the search small without changing any verdict (each is argued where it is
//! implemented, and a property test compares the search with brute force): a read that fits the
//! current state is linearized at once and never backtracked over alone; identical unknown
//! operations are interchangeable, so only the earliest pending one is tried; unknown updates no
//! operation could observe are dropped; and written values nobody reads or expects share one state.
//!
//! A violation is then shrunk to a small certificate (`minimize`), within its own [`Minimize`]
//! budget: that only shortens the list of operations shown, never changes the verdict.

mod minimize;
mod model;
mod search;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::checker::{Checker, Validity, Verdict};
use crate::history::{History, Op};
use minimize::{MinimizeLimits, Shrunk, Violation, minimize, unshrunk};
use model::{KeyHistory, key_histories};
use search::{Limits, SearchResult, search};

/// Limits on the search, per key. The step and memory limits are deterministic (the same history
/// always gets the same verdict); the optional wall-clock limit is not, and is off by default.
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    /// Search steps (event visits) allowed per key before giving up with `unknown`.
    pub max_steps_per_key: u64,
    /// Estimated memo-set memory allowed across all keys searched at the same time (it is split
    /// evenly between the worker threads).
    pub max_memory_bytes: u64,
    /// Wall-clock limit for the whole check; keys not finished by then are `unknown`.
    pub time_limit: Option<Duration>,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            max_steps_per_key: 20_000_000,
            max_memory_bytes: 1 << 30,
            time_limit: None,
        }
    }
}

/// How much work may go into shrinking a violation to a minimal set of operations. It never
/// changes a verdict: a violation found is final, and only the list of operations that shows it
/// may be longer when minimizing stops early or is off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Minimize {
    /// Do not shrink: list every operation of the key.
    Off,
    /// Up to this many search steps per key (deterministic).
    Steps(u64),
    /// Up to this much wall-clock time for the whole check (not deterministic).
    Time(Duration),
}

impl Default for Minimize {
    fn default() -> Self {
        Minimize::Steps(Budget::default().max_steps_per_key)
    }
}

impl std::str::FromStr for Minimize {
    type Err = String;

    /// `off`, a number of search steps (`200000`), or a duration with its unit (`250ms`, `2s`).
    fn from_str(text: &str) -> Result<Minimize, String> {
        let text = text.trim();
        if text == "off" {
            return Ok(Minimize::Off);
        }
        if let Ok(steps) = text.replace('_', "").parse::<u64>() {
            return Ok(Minimize::Steps(steps));
        }
        let split = text
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let scale = match unit.trim() {
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" | "min" => 60.0,
            _ => f64::NAN,
        };
        match number.parse::<f64>() {
            Ok(n) if n >= 0.0 && scale.is_finite() => Ok(Minimize::Time(Duration::from_secs_f64(n * scale))),
            _ => Err(format!(
                "`{text}` is not `off`, a number of search steps (e.g. 200000) or a duration (e.g. 250ms, 2s)"
            )),
        }
    }
}

/// The linearizability checker for key-value registers.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Linearizability {
    /// Search limits.
    pub budget: Budget,
    /// Worker threads (0 = the machine's available parallelism).
    pub threads: usize,
    /// How far to shrink a violation to a minimal set of operations.
    pub minimize: Minimize,
}

/// The per-key outcome.
#[derive(Debug, Clone)]
enum KeyOutcome {
    Valid,
    Invalid(Violation),
    Unknown(String),
}

struct KeyResult {
    key: String,
    ops: usize,
    steps: u64,
    outcome: KeyOutcome,
}

impl Linearizability {
    fn check_key(&self, key: &KeyHistory, limits: &Limits, shrink: Option<&MinimizeLimits>) -> KeyResult {
        // Each search extends its own copy of the appending states (empty for plain keys).
        let mut registers = key.registers.clone();
        let (result, steps) = search(&key.ops, &mut registers, limits);
        let outcome = match (result, shrink) {
            (SearchResult::Linearizable, _) => KeyOutcome::Valid,
            (SearchResult::Exhausted(why), _) => KeyOutcome::Unknown(why),
            (SearchResult::NotLinearizable, Some(shrink)) => {
                KeyOutcome::Invalid(minimize(&key.ops, &mut registers, limits, shrink, steps))
            }
            (SearchResult::NotLinearizable, None) => KeyOutcome::Invalid(unshrunk(&key.ops)),
        };
        KeyResult {
            key: key.key.clone(),
            ops: key.ops.len(),
            steps,
            outcome,
        }
    }

    fn check_keys(&self, keys: &[KeyHistory]) -> Vec<KeyResult> {
        let threads = match self.threads {
            0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            n => n,
        }
        .clamp(1, keys.len().max(1));
        let limits = Limits {
            max_steps: self.budget.max_steps_per_key,
            max_memory: self.budget.max_memory_bytes / threads as u64,
            deadline: self.budget.time_limit.map(|limit| Instant::now() + limit),
        };
        let shrink = match self.minimize {
            Minimize::Off => None,
            Minimize::Steps(max_steps) => Some(MinimizeLimits {
                max_steps,
                deadline: None,
            }),
            Minimize::Time(limit) => Some(MinimizeLimits {
                max_steps: u64::MAX,
                deadline: Some(Instant::now() + limit),
            }),
        };
        let shrink = shrink.as_ref();
        if threads == 1 {
            return keys.iter().map(|k| self.check_key(k, &limits, shrink)).collect();
        }
        let next = AtomicUsize::new(0);
        let mut results: Vec<(usize, KeyResult)> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    scope.spawn(|| {
                        let mut done = Vec::new();
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(key) = keys.get(i) else { break };
                            done.push((i, self.check_key(key, &limits, shrink)));
                        }
                        done
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
                .collect()
        });
        results.sort_by_key(|(i, _)| *i);
        results.into_iter().map(|(_, r)| r).collect()
    }
}

/// Formats microseconds as seconds with microsecond precision.
fn seconds(us: u64) -> String {
    format!("{}.{:06} s", us / 1_000_000, us % 1_000_000)
}

fn describe_op(op: &Op) -> String {
    let timing = match op.complete_us {
        Some(c) => format!("{}–{}", seconds(op.invoke_us), seconds(c)),
        None => format!("from {}", seconds(op.invoke_us)),
    };
    format!("{} [{timing}]", op.describe())
}

/// The finding behind the simplest violations, said plainly: reads among `core` (ops of `key`)
/// that returned a value no operation ever tried to write to `key` — with where that value was
/// written, when it was written to another key. Empty when there are none (or `key` has
/// appends, whose reads are concatenations).
fn never_written(history: &History, key: &str, core: &[u64]) -> String {
    use crate::history::{OpKind, Outcome};
    let on_key = |o: &&Op| o.key.as_deref() == Some(key);
    if history
        .ops
        .iter()
        .filter(on_key)
        .any(|o| o.kind == OpKind::Append)
    {
        return String::new();
    }
    let written = |o: &Op| {
        o.outcome != Outcome::Fail && matches!(o.kind, OpKind::Write | OpKind::Cas) && o.value.is_some()
    };
    let mut found = Vec::new();
    for op in history
        .ops
        .iter()
        .filter(|o| core.contains(&o.id) && o.kind == OpKind::Read)
    {
        let Some(value) = op.value.as_ref().filter(|v| !v.is_null()) else {
            continue;
        };
        if history
            .ops
            .iter()
            .filter(on_key)
            .any(|w| written(w) && w.value.as_ref() == Some(value))
        {
            continue;
        }
        let elsewhere = history
            .ops
            .iter()
            .find(|w| written(w) && w.value.as_ref() == Some(value) && w.key.as_deref() != Some(key));
        let origin = match elsewhere {
            Some(w) => format!(
                " (it was written to {:?} by #{})",
                w.key.as_deref().unwrap_or(""),
                w.id
            ),
            None => " (no operation wrote it to any key)".to_string(),
        };
        found.push(format!(
            "read #{} of {key:?} returned {value}, a value never written to {key:?}{origin}",
            op.id
        ));
    }
    if found.is_empty() {
        String::new()
    } else {
        format!("{}. ", found.join("; "))
    }
}

impl Checker for Linearizability {
    fn name(&self) -> &str {
        "linearizability"
    }

    fn check(&self, history: &History) -> Verdict {
        if !history.ops.iter().any(|o| o.kind.is_register()) {
            return Verdict::new(
                self.name(),
                Validity::Unknown,
                "the history has no register operations (read, write, cas, delete, append) to check",
            );
        }
        // Keys whose operations all failed (or are reads that never returned) constrain nothing and
        // have no entry here.
        let keys = key_histories(history);
        let results = self.check_keys(&keys);
        let by_id: HashMap<u64, &Op> = history.ops.iter().map(|o| (o.id, o)).collect();
        let ops_checked: usize = results.iter().map(|r| r.ops).sum();
        let steps: u64 = results.iter().map(|r| r.steps).sum();
        let mut invalid = Vec::new();
        let mut unknown = Vec::new();
        let mut offending = Vec::new();
        let mut valid_keys = 0;
        for r in &results {
            match &r.outcome {
                KeyOutcome::Valid => valid_keys += 1,
                KeyOutcome::Invalid(v) => {
                    offending.extend(v.core.iter().copied());
                    invalid.push(json!({
                        "key": r.key,
                        "ops": v.core,
                        "context_ops": v.context,
                        "until_us": v.until_us,
                        "minimal": v.shrunk == Shrunk::Minimal,
                        "minimizing": match &v.shrunk {
                            Shrunk::Minimal => "complete".to_string(),
                            Shrunk::Stopped(why) => format!("stopped at {why}"),
                            Shrunk::Off => "off".to_string(),
                        },
                    }));
                }
                KeyOutcome::Unknown(why) => unknown.push(json!({"key": r.key, "reason": why})),
            }
        }
        let details = json!({
            "keys": results.len(),
            "valid_keys": valid_keys,
            "ops_checked": ops_checked,
            "steps": steps,
            "invalid": invalid,
            "unknown": unknown,
        });
        let first_invalid = results.iter().find_map(|r| match &r.outcome {
            KeyOutcome::Invalid(v) => Some((r, v)),
            _ => None,
        });
        if let Some((r, v)) = first_invalid {
            const SHOWN: usize = 12;
            let list = |ids: &[u64]| {
                let mut listed: Vec<String> = ids
                    .iter()
                    .take(SHOWN)
                    .filter_map(|id| by_id.get(id))
                    .map(|op| describe_op(op))
                    .collect();
                if ids.len() > SHOWN {
                    listed.push(format!("and {} more", ids.len() - SHOWN));
                }
                listed.join("; ")
            };
            let (allowing, context) = if v.context.is_empty() {
                (String::new(), String::new())
            } else {
                (
                    format!(
                        " even allowing the {} context operation(s) listed after them to have taken effect at any \
                         time after their invocation, or not at all",
                        v.context.len()
                    ),
                    format!(
                        " Context, counted as may or may not have taken effect: {}.",
                        list(&v.context)
                    ),
                )
            };
            let shrunk = match &v.shrunk {
                Shrunk::Minimal => String::new(),
                Shrunk::Stopped(why) => format!(
                    " The verdict is final; only this list may be longer than needed: minimizing it \
                     stopped at {why} (set with `--minimize`)."
                ),
                Shrunk::Off => " The verdict is final; minimizing was off, so every acknowledged operation \
                 of the key is listed, not a minimal set."
                    .to_string(),
            };
            let stray = never_written(history, &r.key, &v.core);
            let explanation = format!(
                "{} of {} keys are not linearizable. {stray}Key {:?}: no order of these {} operations agrees \
                 with their real-time order and a register's semantics{allowing}: {}.{context}{shrunk}",
                invalid.len(),
                results.len(),
                r.key,
                v.core.len(),
                list(&v.core),
            );
            return Verdict::new(self.name(), Validity::Invalid, explanation)
                .with_details(details)
                .with_ops(offending);
        }
        if !unknown.is_empty() {
            let (key, why) = results
                .iter()
                .find_map(|r| match &r.outcome {
                    KeyOutcome::Unknown(why) => Some((r.key.as_str(), why.as_str())),
                    _ => None,
                })
                .unwrap_or(("", ""));
            let explanation = format!(
                "{} of {} keys could not be decided within the budget (e.g. key {key:?}: {why}); the \
                 other {valid_keys} are linearizable. Raise the budget or shorten the history.",
                unknown.len(),
                results.len(),
            );
            return Verdict::new(self.name(), Validity::Unknown, explanation).with_details(details);
        }
        let explanation = format!(
            "all {} keys are linearizable ({ops_checked} register operations, {steps} search steps)",
            results.len()
        );
        Verdict::new(self.name(), Validity::Valid, explanation).with_details(details)
    }
}

#[cfg(test)]
mod tests {
    use super::model::{KeyOp, Registers, Step};
    use super::search::{memo_key, next_pending_ok, set_bit};
    use super::*;

    fn op(id: u64, invoke: u64, complete: Option<u64>, step: Step) -> KeyOp {
        KeyOp {
            id,
            invoke,
            complete,
            step,
        }
    }

    fn unlimited() -> Limits {
        Limits {
            max_steps: u64::MAX,
            max_memory: u64::MAX,
            deadline: None,
        }
    }

    #[test]
    fn memo_key_names_the_linearized_set_exactly() {
        // ops 0..8; ok = all but 1 and 5 (unknown); linearized = {0, 2, 3, 6}; pending = 4.
        let unknown = [1u32, 5];
        let mut lin = vec![0u64; 1];
        for i in [0, 2, 3, 6] {
            set_bit(&mut lin, i, true);
        }
        let mut key = Vec::new();
        memo_key(&mut key, 7, 4, 7, &lin, &unknown);
        assert_eq!(key, vec![7, 4, 1, 6]);
    }

    #[test]
    fn next_pending_ok_skips_linearized_and_unknown() {
        let mut ok = vec![0u64; 2];
        let mut lin = vec![0u64; 2];
        for i in [0, 3, 70] {
            set_bit(&mut ok, i, true);
        }
        set_bit(&mut lin, 3, true);
        assert_eq!(next_pending_ok(&ok, &lin, 0, 100), 0);
        assert_eq!(next_pending_ok(&ok, &lin, 1, 100), 70);
        assert_eq!(next_pending_ok(&ok, &lin, 71, 100), 100);
    }

    #[test]
    fn search_accepts_overlapping_and_rejects_stale() {
        // write 1 [0,10], read 1 [5,6]: overlapping, fine.
        let ops = vec![
            op(1, 0, Some(10), Step::Write(1)),
            op(2, 5, Some(6), Step::Read(1)),
        ];
        let mut plain = Registers::default();
        assert_eq!(
            search(&ops, &mut plain, &unlimited()).0,
            SearchResult::Linearizable
        );
        // write 1, then write 2, then read 1: stale.
        let ops = vec![
            op(1, 0, Some(1), Step::Write(1)),
            op(2, 2, Some(3), Step::Write(2)),
            op(3, 4, Some(5), Step::Read(1)),
        ];
        assert_eq!(
            search(&ops, &mut plain, &unlimited()).0,
            SearchResult::NotLinearizable
        );
        let budget = MinimizeLimits {
            max_steps: u64::MAX,
            deadline: None,
        };
        let v = minimize(&ops, &mut plain, &unlimited(), &budget, 10);
        assert_eq!(v.core, vec![1, 2, 3]);
        assert_eq!(v.shrunk, Shrunk::Minimal);
    }
}
