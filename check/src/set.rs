//! Lost acknowledged writes, with set semantics: every acknowledged `add` must be in the final read.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::json;

use crate::checker::{Checker, Validity, Verdict};
use crate::history::{History, Op, OpKind, Outcome};

/// Checks sets built with `add` and read with `read_set`: per key, every element whose `add` was
/// acknowledged (`ok`) before the final read began must be in that read ("lost" otherwise), and
/// every element read must have been added by an `ok` or `unknown` `add` ("unexpected" otherwise;
/// a `fail`ed add must not take effect). Adds still running during the final read, and `unknown`
/// adds, may be present or not.
#[derive(Debug, Clone, Default)]
pub struct SetChecker;

/// The outcome for one key.
struct KeyReport {
    key: String,
    final_read: Option<u64>,
    ok_adds: usize,
    lost_elements: Vec<String>,
    lost_ops: Vec<u64>,
    unexpected: Vec<String>,
    recovered: usize,
}

impl Checker for SetChecker {
    fn name(&self) -> &str {
        "set"
    }

    fn check(&self, history: &History) -> Verdict {
        let mut keys: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
        for op in &history.ops {
            if matches!(op.kind, OpKind::Add | OpKind::ReadSet) {
                keys.entry(op.key.as_deref().unwrap_or("")).or_default().push(op);
            }
        }
        if keys.is_empty() {
            return Verdict::new(
                self.name(),
                Validity::Unknown,
                "the history has no set operations (add, read_set) to check",
            );
        }
        let reports: Vec<KeyReport> = keys.iter().map(|(key, ops)| check_key(key, ops)).collect();
        let mut offending = Vec::new();
        let mut invalid_keys = Vec::new();
        let mut unread_keys = Vec::new();
        for r in &reports {
            if r.final_read.is_none() {
                unread_keys.push(r.key.clone());
            } else if !r.lost_ops.is_empty() || !r.unexpected.is_empty() {
                offending.extend(r.lost_ops.iter().copied());
                if !r.unexpected.is_empty() {
                    offending.extend(r.final_read);
                }
                invalid_keys.push(r);
            }
        }
        let details = json!({
            "keys": reports.iter().map(|r| json!({
                "key": r.key,
                "final_read": r.final_read,
                "ok_adds": r.ok_adds,
                "lost": r.lost_elements,
                "lost_ops": r.lost_ops,
                "unexpected": r.unexpected,
                "recovered_unknown_adds": r.recovered,
            })).collect::<Vec<_>>(),
        });
        if let Some(first) = invalid_keys.first() {
            let mut parts = Vec::new();
            if !first.lost_elements.is_empty() {
                parts.push(format!(
                    "{} of {} acknowledged adds are missing from the final read (op #{}): {}",
                    first.lost_elements.len(),
                    first.ok_adds,
                    first.final_read.unwrap_or_default(),
                    preview(&first.lost_elements)
                ));
            }
            if !first.unexpected.is_empty() {
                parts.push(format!(
                    "the final read holds {} element(s) no ok or unknown add wrote: {}",
                    first.unexpected.len(),
                    preview(&first.unexpected)
                ));
            }
            let explanation = format!(
                "{} of {} sets lost acknowledged writes or hold unexpected elements. Set {:?}: {}",
                invalid_keys.len(),
                reports.len(),
                first.key,
                parts.join("; ")
            );
            offending.sort_unstable();
            offending.dedup();
            return Verdict::new(self.name(), Validity::Invalid, explanation)
                .with_details(details)
                .with_ops(offending);
        }
        if !unread_keys.is_empty() {
            return Verdict::new(
                self.name(),
                Validity::Unknown,
                format!(
                    "{} of {} sets were never read successfully ({}), so lost writes cannot be judged",
                    unread_keys.len(),
                    reports.len(),
                    preview(&unread_keys)
                ),
            )
            .with_details(details);
        }
        let acknowledged: usize = reports.iter().map(|r| r.ok_adds).sum();
        Verdict::new(
            self.name(),
            Validity::Valid,
            format!(
                "all {acknowledged} acknowledged adds to {} sets are in the final reads, and nothing else",
                reports.len()
            ),
        )
        .with_details(details)
    }
}

fn check_key(key: &str, ops: &[&Op]) -> KeyReport {
    let final_read = ops
        .iter()
        .filter(|o| o.kind == OpKind::ReadSet && o.outcome == Outcome::Ok)
        .max_by_key(|o| (o.invoke_us, o.id));
    let ok_adds = ops
        .iter()
        .filter(|o| o.kind == OpKind::Add && o.outcome == Outcome::Ok)
        .count();
    let mut report = KeyReport {
        key: key.to_string(),
        final_read: final_read.map(|o| o.id),
        ok_adds,
        lost_elements: Vec::new(),
        lost_ops: Vec::new(),
        unexpected: Vec::new(),
        recovered: 0,
    };
    let Some(read) = final_read else { return report };
    let read_elements: BTreeSet<String> = read.values.iter().flatten().map(|v| v.to_string()).collect();
    // Element → whether some ok or unknown add could have put it there.
    let mut may_exist: HashMap<String, bool> = HashMap::new();
    for add in ops.iter().filter(|o| o.kind == OpKind::Add) {
        let Some(element) = add.value.as_ref().map(|v| v.to_string()) else {
            continue;
        };
        let possible = add.outcome != Outcome::Fail;
        *may_exist.entry(element.clone()).or_default() |= possible;
        let present = read_elements.contains(&element);
        match add.outcome {
            Outcome::Ok => {
                let done_before_read = add.complete_us.is_some_and(|c| c < read.invoke_us);
                if done_before_read && !present {
                    report.lost_elements.push(element);
                    report.lost_ops.push(add.id);
                }
            }
            Outcome::Unknown if present => report.recovered += 1,
            _ => {}
        }
    }
    report.lost_elements.sort();
    report.lost_elements.dedup();
    report.unexpected = read_elements
        .into_iter()
        .filter(|e| !may_exist.get(e).copied().unwrap_or(false))
        .collect();
    report
}

/// The first few items, comma-separated.
pub(crate) fn preview(items: &[String]) -> String {
    const SHOWN: usize = 10;
    let mut text = items.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
    if items.len() > SHOWN {
        text.push_str(&format!(", … ({} in all)", items.len()));
    }
    text
}
