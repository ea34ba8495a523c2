//! Counters: every read must be explainable by some set of the increments that could have happened.

use std::collections::BTreeMap;

use serde_json::json;

use crate::checker::{Checker, Validity, Verdict};
use crate::history::{History, Op, OpKind, Outcome};

/// Checks counters built with `incr` and read with `read_counter`. A read must equal the sum of the
/// increments that certainly happened before it (acknowledged before the read began) plus some of
/// those that may have (`ok` or `unknown`, invoked before the read completed). With non-negative
/// increments that is the classic bound: the final value lies in [ok increments, ok + unknown
/// increments].
#[derive(Debug, Clone, Default)]
pub struct CounterChecker;

/// Prefix sums over increments sorted by a time, for "sum of deltas with time < t" queries.
struct Prefix {
    times: Vec<u64>,
    /// (positive part, negative part) cumulative sums; index i covers the first i increments.
    sums: Vec<(i128, i128)>,
}

impl Prefix {
    fn new(mut items: Vec<(u64, i64)>) -> Prefix {
        items.sort_unstable();
        let mut sums = Vec::with_capacity(items.len() + 1);
        let (mut pos, mut neg) = (0i128, 0i128);
        sums.push((0, 0));
        for &(_, d) in &items {
            if d >= 0 {
                pos += i128::from(d);
            } else {
                neg += i128::from(d);
            }
            sums.push((pos, neg));
        }
        Prefix {
            times: items.into_iter().map(|(t, _)| t).collect(),
            sums,
        }
    }

    /// (positive, negative) sums of the items whose time is strictly before `t`.
    fn before(&self, t: u64) -> (i128, i128) {
        self.sums[self.times.partition_point(|&x| x < t)]
    }
}

fn delta(op: &Op) -> i64 {
    op.value.as_ref().and_then(|v| v.as_i64()).unwrap_or(1)
}

impl Checker for CounterChecker {
    fn name(&self) -> &str {
        "counter"
    }

    fn check(&self, history: &History) -> Verdict {
        let mut keys: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
        for op in &history.ops {
            if matches!(op.kind, OpKind::Incr | OpKind::ReadCounter) {
                keys.entry(op.key.as_deref().unwrap_or("")).or_default().push(op);
            }
        }
        if keys.is_empty() {
            return Verdict::new(
                self.name(),
                Validity::Unknown,
                "the history has no counter operations (incr, read_counter) to check",
            );
        }
        let mut bad_reads: Vec<(String, u64, i64, i128, i128)> = Vec::new();
        let mut per_key = Vec::new();
        let mut unread = Vec::new();
        let mut reads_checked = 0usize;
        for (key, ops) in &keys {
            let incrs = || ops.iter().filter(|o| o.kind == OpKind::Incr);
            // Certainly applied before a read that starts at t: ok increments completed before t.
            let certain = Prefix::new(
                incrs()
                    .filter(|o| o.outcome == Outcome::Ok)
                    .filter_map(|o| o.complete_us.map(|c| (c, delta(o))))
                    .collect(),
            );
            // Possibly applied before a read that ends at t: ok or unknown increments invoked before t.
            let possible = Prefix::new(
                incrs()
                    .filter(|o| o.outcome != Outcome::Fail)
                    .map(|o| (o.invoke_us, delta(o)))
                    .collect(),
            );
            let mut reads: Vec<&&Op> = ops
                .iter()
                .filter(|o| o.kind == OpKind::ReadCounter && o.outcome == Outcome::Ok)
                .collect();
            reads.sort_by_key(|o| (o.invoke_us, o.id));
            if reads.is_empty() {
                unread.push(key.to_string());
            }
            let mut last = None;
            for read in reads {
                let (Some(value), Some(complete)) =
                    (read.value.as_ref().and_then(|v| v.as_i64()), read.complete_us)
                else {
                    continue;
                };
                reads_checked += 1;
                let (cp, cn) = certain.before(read.invoke_us);
                let (pp, pn) = possible.before(complete.saturating_add(1));
                // The certain increments are among the possible ones; the rest are optional.
                let must = cp + cn;
                let (low, high) = (must + (pn - cn), must + (pp - cp));
                if !(low..=high).contains(&i128::from(value)) {
                    bad_reads.push((key.to_string(), read.id, value, low, high));
                }
                last = Some(json!({"op": read.id, "value": value, "low": low as f64, "high": high as f64}));
            }
            per_key.push(json!({"key": key, "final_read": last}));
        }
        let details = json!({"keys": per_key, "reads_checked": reads_checked, "bad_reads": bad_reads.iter()
            .map(|(k, id, v, lo, hi)| json!({"key": k, "op": id, "value": v, "low": *lo as f64, "high": *hi as f64}))
            .collect::<Vec<_>>()});
        if let Some((key, id, value, low, high)) = bad_reads.first() {
            return Verdict::new(
                self.name(),
                Validity::Invalid,
                format!(
                    "{} counter read(s) cannot be explained by the increments. Counter {key:?}: read #{id} \
                     returned {value}, but the increments that could have happened by then allow only \
                     {low}..={high}",
                    bad_reads.len()
                ),
            )
            .with_details(details)
            .with_ops(bad_reads.iter().map(|b| b.1).collect());
        }
        if !unread.is_empty() {
            return Verdict::new(
                self.name(),
                Validity::Unknown,
                format!(
                    "{} of {} counters were never read successfully ({}), so they cannot be judged",
                    unread.len(),
                    keys.len(),
                    crate::set::preview(&unread)
                ),
            )
            .with_details(details);
        }
        Verdict::new(
            self.name(),
            Validity::Valid,
            format!(
                "all {reads_checked} reads of {} counters are within the possible increments",
                keys.len()
            ),
        )
        .with_details(details)
    }
}
