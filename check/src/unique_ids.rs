//! Unique ids: no two acknowledged `generate` operations may return the same id.

use std::collections::BTreeMap;

use serde_json::json;

use crate::checker::{Checker, Validity, Verdict};
use crate::history::{History, OpKind, Outcome};

/// Checks that ids returned by `ok` `generate` operations are unique (per key, when a key is given:
/// separate generators may share ids).
#[derive(Debug, Clone, Default)]
pub struct UniqueIdsChecker;

impl Checker for UniqueIdsChecker {
    fn name(&self) -> &str {
        "unique-ids"
    }

    fn check(&self, history: &History) -> Verdict {
        // (generator key, id) → operations that returned it.
        let mut seen: BTreeMap<(&str, String), Vec<u64>> = BTreeMap::new();
        let mut attempted = 0usize;
        for op in history.ops.iter().filter(|o| o.kind == OpKind::Generate) {
            attempted += 1;
            if op.outcome != Outcome::Ok {
                continue;
            }
            let Some(value) = &op.value else { continue };
            seen.entry((op.key.as_deref().unwrap_or(""), value.to_string()))
                .or_default()
                .push(op.id);
        }
        if attempted == 0 {
            return Verdict::new(
                self.name(),
                Validity::Unknown,
                "the history has no generate operations",
            );
        }
        let ok: usize = seen.values().map(Vec::len).sum();
        if ok == 0 {
            return Verdict::new(
                self.name(),
                Validity::Unknown,
                format!("none of the {attempted} generate operations succeeded"),
            );
        }
        let duplicates: Vec<(&(&str, String), &Vec<u64>)> =
            seen.iter().filter(|(_, ids)| ids.len() > 1).collect();
        let details = json!({
            "ok_generates": ok,
            "distinct_ids": seen.len(),
            "duplicates": duplicates.iter().map(|((key, id), ops)| json!({"key": key, "id": id, "ops": ops}))
                .collect::<Vec<_>>(),
        });
        if let Some(((key, id), ops)) = duplicates.first() {
            let generator = if key.is_empty() {
                String::new()
            } else {
                format!(" by generator {key:?}")
            };
            let ids: Vec<String> = ops.iter().map(|o| format!("#{o}")).collect();
            return Verdict::new(
                self.name(),
                Validity::Invalid,
                format!(
                    "{} id(s) were handed out more than once; e.g. {id} was returned{generator} to \
                     operations {}",
                    duplicates.len(),
                    ids.join(", ")
                ),
            )
            .with_details(details)
            .with_ops(
                duplicates
                    .iter()
                    .flat_map(|(_, ops)| ops.iter().copied())
                    .collect(),
            );
        }
        Verdict::new(
            self.name(),
            Validity::Valid,
            format!("all {ok} generated ids are distinct"),
        )
        .with_details(details)
    }
}
