//! Anomalies in words: each cycle as the chain of "X must come before Y, because …" steps that
//! closes on itself, in the spirit of Elle's explanations.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::Value;

use super::cycles::{Cycle, edges};
use super::graph::{Edge, Graph, PROCESS, REALTIME, RW, WR, WW};
use super::txns::{Elem, KeyId, TxnId, Txns};
use super::version_order::Inference;
use crate::fxhash::FxBuildHasher;

/// How a transaction is named in explanations: its operation id.
pub(crate) fn label(txns: &Txns, t: TxnId) -> String {
    format!("#{}", txns.txns[t as usize].id)
}

/// Microseconds as seconds, to the microsecond.
fn seconds(us: u64) -> String {
    format!("{}.{:06} s", us / 1_000_000, us % 1_000_000)
}

/// Elements as a short list (`3, 4`).
pub(crate) fn list_of(txns: &Txns, elems: &[Elem]) -> String {
    elems.iter().map(|e| txns.show(*e)).collect::<Vec<_>>().join(", ")
}

/// The name of an edge kind, as reports show it.
pub(crate) fn kind_name(kind: u8) -> &'static str {
    match kind {
        WW => "ww",
        WR => "wr",
        RW => "rw",
        PROCESS => "process",
        REALTIME => "realtime",
        _ => "?",
    }
}

/// One step of a cycle, for machines and for the report's cycle diagram.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct CycleStep {
    /// Operation id of the transaction that must come first.
    pub from: u64,
    /// Operation id of the one that must come after it.
    pub to: u64,
    /// `ww`, `wr`, `rw`, `process` or `realtime`.
    pub kind: &'static str,
    /// The key behind a dependency edge.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The element behind a dependency edge.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub element: Option<Value>,
    /// Why, in words.
    pub why: String,
}

/// Explains cycles; indexes what it needs once.
pub(crate) struct Explainer<'a> {
    txns: &'a Txns,
    inference: &'a Inference,
    graph: &'a Graph,
    /// (transaction, key) → its external read's index in `inference.external_reads`.
    external: HashMap<(TxnId, KeyId), usize, FxBuildHasher>,
}

impl<'a> Explainer<'a> {
    pub fn new(txns: &'a Txns, inference: &'a Inference, graph: &'a Graph) -> Explainer<'a> {
        let external = inference
            .external_reads
            .iter()
            .enumerate()
            .map(|(i, r)| ((r.txn, r.key), i))
            .collect();
        Explainer {
            txns,
            inference,
            graph,
            external,
        }
    }

    /// The external read of `key` by `t`, as it was read (own appends included).
    fn read_of(&self, t: TxnId, key: KeyId) -> (&'a [Elem], usize) {
        match self.external.get(&(t, key)) {
            Some(&i) => {
                let r = &self.inference.external_reads[i];
                (Inference::read_list(self.txns, r.txn, r.mop), r.len as usize)
            }
            None => (&[], 0),
        }
    }

    fn step(&self, e: &Edge) -> CycleStep {
        let t = self.txns;
        let (a, b) = (label(t, e.from), label(t, e.to));
        let key = t.key(e.key);
        let why = match e.kind {
            WW => {
                let order = &self.inference.orders[e.key as usize];
                let before = order
                    .iter()
                    .position(|x| *x == e.elem)
                    .and_then(|p| p.checked_sub(1))
                    .map(|p| t.show(order[p]))
                    .unwrap_or_else(|| "?".into());
                format!(
                    "{a} < {b}: {key}'s version order has {b}'s append of {} right after {a}'s append \
                     of {before} (ww)",
                    t.show(e.elem)
                )
            }
            WR => {
                let (list, len) = self.read_of(e.to, e.key);
                format!(
                    "{a} < {b}: {b} read {key} = {}, which ends with {a}'s append of {} (wr)",
                    t.show_list(&list[..len]),
                    t.show(e.elem)
                )
            }
            RW => {
                let (list, len) = self.read_of(e.from, e.key);
                format!(
                    "{a} < {b}: {a} read {key} = {} without {}, the next element, which {b} appended \
                     (rw)",
                    t.show_list(&list[..len]),
                    t.show(e.elem)
                )
            }
            PROCESS => format!(
                "{a} < {b}: client {} ran {a} and then {b} (process)",
                t.txns[e.from as usize].client
            ),
            _ => format!(
                "{a} < {b}: {a} completed at {}, before {b} was invoked at {} (realtime)",
                seconds(t.txns[e.from as usize].complete.unwrap_or(0)),
                seconds(t.txns[e.to as usize].invoke)
            ),
        };
        let dependency = e.kind & (WW | WR | RW) != 0;
        CycleStep {
            from: t.txns[e.from as usize].id,
            to: t.txns[e.to as usize].id,
            kind: kind_name(e.kind),
            key: dependency.then(|| key.to_string()),
            element: dependency.then(|| t.elements[e.elem as usize].clone()),
            why,
        }
    }

    /// The cycle's transactions (in cycle order), its steps, and the whole explanation.
    pub fn cycle(&self, cycle: &Cycle) -> (Vec<TxnId>, Vec<CycleStep>, String) {
        // Start at the earliest transaction, so the same cycle always reads the same.
        let mut edges = edges(self.graph, cycle);
        let first = (0..edges.len())
            .min_by_key(|i| self.txns.txns[edges[*i].from as usize].id)
            .unwrap_or(0);
        edges.rotate_left(first);
        let members: Vec<TxnId> = edges.iter().map(|e| e.from).collect();
        let steps: Vec<CycleStep> = edges.iter().map(|e| self.step(e)).collect();
        let mut names: Vec<String> = members.iter().map(|m| label(self.txns, *m)).collect();
        names.push(names[0].clone());
        let text = format!(
            "{}: {}. Each must come before the next, and the last before the first: no order of these \
             transactions is consistent with what they saw.",
            names.join(" → "),
            steps
                .iter()
                .map(|s| s.why.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        );
        (members, steps, text)
    }
}
