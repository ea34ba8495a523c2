//! The list-append checker: isolation anomalies inferred from `txn` histories, in the manner of
//! Elle (Kingsbury & Alvaro, "Elle: Inferring Isolation Anomalies from Experimental
//! Observations", VLDB 2020), with the anomaly definitions of Adya's thesis ("Weak Consistency: A
//! Generalized Theory and Optimistic Implementations for Distributed Transactions", MIT 1999).
//!
//! Every key is a list that transactions append unique elements to and read whole. Because a
//! read shows the order of every append before it, the checker can recover what a database
//! normally hides — each key's version order — and from it the dependencies between
//! transactions, in time linear in the history:
//!
//! 1. [`txns`]: the `txn` operations, keys and elements interned;
//! 2. [`version_order`]: who appended each element, each key's version order (its longest read;
//!    every other read must be a prefix of it), each transaction's external reads, and the
//!    anomalies visible without a graph (G1a, G1b, garbage reads, duplicates, incompatible
//!    orders, internal inconsistency, non-repeatable reads);
//! 3. [`graph`]: ww, wr and rw dependency edges, plus process and real-time order for strict
//!    serializability;
//! 4. [`cycles`]: strongly connected components decide which cycle classes exist; a
//!    breadth-first search gives the shortest cycle found for each class and component;
//! 5. [`explain`]: each cycle as its transactions and the reason for each edge.
//!
//! The [`ConsistencyModel`] decides which classes make the history invalid ([`anomaly`]); the
//! verdict names the classes the model forbids, those found, and those found that it allows.
//! Deciding is exact for the cycle classes (components, not sampling); only which cycle is shown
//! and how it is labelled depends on the searches tried. A history whose appends are not unique
//! per key cannot be read this way and gets `unknown`.

mod anomaly;
mod cycles;
mod explain;
mod graph;
mod txns;
mod version_order;

use std::collections::BTreeMap;

use serde_json::{Value, json};

pub use anomaly::ConsistencyModel;

use crate::checker::{Checker, Validity, Verdict};
use crate::history::{History, OpKind, Outcome};
use anomaly::AnomalyClass;
use explain::{CycleStep, Explainer, label};
use txns::{TxnId, Txns};

/// How many examples of each anomaly class are kept and explained (all are counted).
const EXAMPLES_PER_CLASS: usize = 8;

/// One anomaly found.
#[derive(Debug, Clone)]
pub(crate) struct Anomaly {
    pub class: AnomalyClass,
    /// The transactions involved (for a cycle: in cycle order).
    pub txns: Vec<TxnId>,
    pub text: String,
    /// For a cycle: its steps.
    pub cycle: Vec<CycleStep>,
}

/// Anomalies found: every one counted, the first few of each class kept.
#[derive(Debug, Default)]
pub(crate) struct Findings {
    counts: BTreeMap<AnomalyClass, usize>,
    examples: Vec<Anomaly>,
}

impl Findings {
    /// Counts an anomaly; `make` (the transactions and the explanation) runs only if it is kept.
    pub fn add(&mut self, class: AnomalyClass, make: impl FnOnce() -> (Vec<TxnId>, String)) {
        let count = self.counts.entry(class).or_insert(0);
        *count += 1;
        if *count <= EXAMPLES_PER_CLASS {
            let (txns, text) = make();
            self.examples.push(Anomaly {
                class,
                txns,
                text,
                cycle: Vec::new(),
            });
        }
    }

    fn add_cycle(
        &mut self,
        class: AnomalyClass,
        make: impl FnOnce() -> (Vec<TxnId>, Vec<CycleStep>, String),
    ) {
        let count = self.counts.entry(class).or_insert(0);
        *count += 1;
        if *count <= EXAMPLES_PER_CLASS {
            let (txns, cycle, text) = make();
            self.examples.push(Anomaly {
                class,
                txns,
                text,
                cycle,
            });
        }
    }
}

/// The list-append checker (`txn` operations). See the module docs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListAppend {
    /// The consistency model the history must satisfy.
    pub model: ConsistencyModel,
}

impl ListAppend {
    /// A checker for this model.
    pub fn new(model: ConsistencyModel) -> ListAppend {
        ListAppend { model }
    }
}

impl Checker for ListAppend {
    fn name(&self) -> &str {
        "list-append"
    }

    fn check(&self, history: &History) -> Verdict {
        if !history.ops.iter().any(|o| o.kind == OpKind::Txn) {
            return Verdict::new(
                self.name(),
                Validity::Unknown,
                "the history has no transactions (`txn` operations) to check",
            );
        }
        let txns = Txns::from_history(history);
        let mut findings = Findings::default();
        let inference = version_order::infer(&txns, &mut findings);
        let model = self.model;
        let forbidden_names = AnomalyClass::forbidden_names(model);
        let mut details = json!({
            "model": model.as_str(),
            "forbidden": forbidden_names,
            "txns": txns.txns.len(),
            "ok": txns.txns.iter().filter(|t| t.outcome == Outcome::Ok).count(),
            "unknown": txns.txns.iter().filter(|t| t.outcome == Outcome::Unknown).count(),
            "failed": txns.txns.iter().filter(|t| t.outcome == Outcome::Fail).count(),
            "keys": txns.keys.len(),
        });
        if !inference.duplicate_appends.is_empty() {
            let d = &inference.duplicate_appends[0];
            details["duplicate_appends"] = json!(inference.duplicate_appends.len());
            let explanation = format!(
                "cannot check: {} appended {} to {} and so did {} ({} such repeated appends in all); the \
                 list-append checker needs every element appended to a key at most once, so that a read \
                 shows which transaction it saw. Make the workload's elements unique per key.",
                label(&txns, d.first),
                txns.show(d.elem),
                txns.key(d.key),
                label(&txns, d.second),
                inference.duplicate_appends.len()
            );
            let ops = vec![txns.txns[d.first as usize].id, txns.txns[d.second as usize].id];
            return Verdict::new(self.name(), Validity::Unknown, explanation)
                .with_details(details)
                .with_ops(ops);
        }
        let graph = graph::build(&txns, &inference, model.uses_real_time());
        let cycles = cycles::find_cycles(&graph, model.uses_real_time());
        if !cycles.is_empty() {
            let explainer = Explainer::new(&txns, &inference, &graph);
            for (class, cycle) in &cycles {
                findings.add_cycle(*class, || explainer.cycle(cycle));
            }
        }
        details["edges"] = json!(graph.edges.len());
        verdict(self.name(), model, &txns, findings, details)
    }
}

/// Turns the findings into the verdict.
fn verdict(
    name: &str,
    model: ConsistencyModel,
    txns: &Txns,
    findings: Findings,
    mut details: Value,
) -> Verdict {
    let mut ordered: Vec<(AnomalyClass, usize)> = findings.counts.iter().map(|(c, n)| (*c, *n)).collect();
    let rank = AnomalyClass::all();
    ordered.sort_by_key(|(c, _)| rank.iter().position(|r| r == c).unwrap_or(usize::MAX));
    let forbidden: Vec<(AnomalyClass, usize)> = ordered
        .iter()
        .copied()
        .filter(|(c, _)| c.forbidden_by(model))
        .collect();
    let allowed: Vec<(AnomalyClass, usize)> = ordered
        .iter()
        .copied()
        .filter(|(c, _)| !c.forbidden_by(model))
        .collect();
    let count_list = |list: &[(AnomalyClass, usize)]| {
        list.iter()
            .map(|(c, n)| format!("{} ×{n}", c.name()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    details["found"] = json!(
        ordered
            .iter()
            .map(|(c, n)| (c.name(), *n))
            .collect::<BTreeMap<_, _>>()
    );
    let mut examples = findings.examples;
    examples.sort_by_key(|a| {
        (
            !a.class.forbidden_by(model),
            rank.iter().position(|r| *r == a.class),
        )
    });
    details["anomalies"] = Value::Array(
        examples
            .iter()
            .map(|a| {
                let mut entry = json!({
                    "class": a.class.name(),
                    "meaning": a.class.meaning(),
                    "forbidden": a.class.forbidden_by(model),
                    "ops": a.txns.iter().map(|t| txns.txns[*t as usize].id).collect::<Vec<_>>(),
                    "explanation": a.text,
                });
                if !a.cycle.is_empty() {
                    entry["cycle"] = json!(a.cycle);
                }
                entry
            })
            .collect(),
    );
    let summary = format!("{} transactions over {} keys", txns.txns.len(), txns.keys.len());
    let also = if allowed.is_empty() {
        String::new()
    } else {
        format!(" Also found, which {model} allows: {}.", count_list(&allowed))
    };
    if forbidden.is_empty() {
        let explanation = format!(
            "{summary} satisfy {model}: no anomaly it forbids ({}) was found.{also}",
            AnomalyClass::forbidden_names(model).join(", ")
        );
        return Verdict::new(name, Validity::Valid, explanation).with_details(details);
    }
    let first = examples
        .iter()
        .find(|a| a.class.forbidden_by(model))
        .map(|a| {
            format!(
                " For example, {} ({}): {}",
                a.class.name(),
                a.class.meaning(),
                a.text
            )
        })
        .unwrap_or_default();
    let explanation = format!(
        "{summary} violate {model}: found {}, which {model} forbids.{first}{also}",
        count_list(&forbidden)
    );
    let mut ops: Vec<u64> = examples
        .iter()
        .filter(|a| a.class.forbidden_by(model))
        .flat_map(|a| a.txns.iter().map(|t| txns.txns[*t as usize].id))
        .collect();
    ops.sort_unstable();
    ops.dedup();
    Verdict::new(name, Validity::Invalid, explanation)
        .with_details(details)
        .with_ops(ops)
}
