//! The dependency graph over transactions (Adya's direct serialization graph, as Elle infers it
//! from list-append histories), plus process and real-time order.
//!
//! - **ww**: `a` appended the element right before `b`'s in a key's version order;
//! - **wr**: `b`'s external read of a key ends at an element `a` appended;
//! - **rw** (anti-dependency): `a`'s external read of a key stops right before an element `b`
//!   appended: `b` installed the next version, which `a` did not see;
//! - **process**: the same client ran `a`, then `b` (`a` committed first);
//! - **realtime**: `a` completed before `b` was invoked.
//!
//! Failed transactions are no nodes (their effects must not be seen: G1a); transactions with an
//! unknown outcome are, since they may have taken effect, but they are never the source of a
//! process or real-time edge (they may take effect any time after their invocation).
//!
//! Real-time order is quadratic if written out; like Elle, only enough edges to keep its
//! transitive closure are added: each transaction gets an edge from every transaction in the
//! "frontier" of those that completed before it was invoked and are not already ordered before
//! another member of the frontier, so the edges grow with history length times concurrency.

use std::collections::HashMap;

use super::txns::{Elem, KeyId, TxnId, Txns};
use super::version_order::Inference;
use crate::history::Outcome;

/// The kinds of edges, as bits so a search can take any set of them.
pub(crate) const WW: u8 = 1;
pub(crate) const WR: u8 = 2;
pub(crate) const RW: u8 = 4;
pub(crate) const PROCESS: u8 = 8;
pub(crate) const REALTIME: u8 = 16;
/// ww, wr and rw.
pub(crate) const DEPENDENCIES: u8 = WW | WR | RW;
/// Every kind.
pub(crate) const ALL: u8 = DEPENDENCIES | PROCESS | REALTIME;

/// One edge; `key` and `elem` say which element gave rise to it (for ww: the later one; for
/// rw: the one not seen), unused for process and real-time edges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Edge {
    pub from: TxnId,
    pub to: TxnId,
    pub kind: u8,
    pub key: KeyId,
    pub elem: Elem,
}

/// The graph in compressed adjacency form: the edges out of `n` are
/// `edges[start[n]..start[n + 1]]`.
#[derive(Debug, Default)]
pub(crate) struct Graph {
    pub start: Vec<u32>,
    pub edges: Vec<Edge>,
}

impl Graph {
    fn new(nodes: usize, mut edges: Vec<Edge>) -> Graph {
        edges.sort_unstable_by_key(|e| (e.from, e.to, e.kind));
        let mut start = vec![0u32; nodes + 1];
        for e in &edges {
            start[e.from as usize + 1] += 1;
        }
        for n in 0..nodes {
            start[n + 1] += start[n];
        }
        Graph { start, edges }
    }

    /// How many nodes (transactions, failed ones included as isolated nodes).
    pub fn nodes(&self) -> usize {
        self.start.len().saturating_sub(1)
    }
}

/// Builds the graph; process and real-time edges only when `real_time` is set.
pub(crate) fn build(txns: &Txns, inference: &Inference, real_time: bool) -> Graph {
    let live = |t: TxnId| txns.txns[t as usize].outcome != Outcome::Fail;
    let mut edges = Vec::new();
    let mut add = |from: TxnId, to: TxnId, kind: u8, key: KeyId, elem: Elem| {
        if from != to && live(from) && live(to) {
            edges.push(Edge {
                from,
                to,
                kind,
                key,
                elem,
            });
        }
    };
    for (key, order) in inference.orders.iter().enumerate() {
        let key = key as KeyId;
        for pair in order.windows(2) {
            if let (Some(a), Some(b)) = (inference.writer(key, pair[0]), inference.writer(key, pair[1])) {
                add(a.txn, b.txn, WW, key, pair[1]);
            }
        }
    }
    for read in &inference.external_reads {
        let list = Inference::read_list(txns, read.txn, read.mop);
        let ext = &list[..read.len as usize];
        if let Some(&last) = ext.last() {
            if let Some(w) = inference.writer(read.key, last) {
                add(w.txn, read.txn, WR, read.key, last);
            }
        }
        if read.in_order {
            if let Some(&next) = inference.orders[read.key as usize].get(ext.len()) {
                if let Some(w) = inference.writer(read.key, next) {
                    add(read.txn, w.txn, RW, read.key, next);
                }
            }
        }
    }
    if real_time {
        process_edges(txns, &mut add);
        realtime_edges(txns, &mut add);
    }
    Graph::new(txns.txns.len(), edges)
}

/// Each client's committed transactions, in order, to the next transaction it ran.
fn process_edges(txns: &Txns, add: &mut impl FnMut(TxnId, TxnId, u8, KeyId, Elem)) {
    let mut last: HashMap<u64, TxnId> = HashMap::new();
    // Transactions are in invocation order.
    for (t, txn) in txns.txns.iter().enumerate() {
        if txn.outcome == Outcome::Fail {
            continue;
        }
        if let Some(previous) = last.get(&txn.client) {
            add(*previous, t as TxnId, PROCESS, 0, 0);
        }
        // Nothing is ordered after a transaction that may take effect any time later; what the
        // client committed before it still comes before the client's next transaction.
        if txn.outcome == Outcome::Ok {
            last.insert(txn.client, t as TxnId);
        }
    }
}

/// Real-time order, transitively reduced through the frontier (see the module docs).
fn realtime_edges(txns: &Txns, add: &mut impl FnMut(TxnId, TxnId, u8, KeyId, Elem)) {
    // Invocations before completions at the same instant: simultaneous events are concurrent.
    let mut events: Vec<(u64, bool, TxnId)> = Vec::with_capacity(txns.txns.len() * 2);
    for (t, txn) in txns.txns.iter().enumerate() {
        if txn.outcome == Outcome::Fail {
            continue;
        }
        events.push((txn.invoke, false, t as TxnId));
        if let Some(complete) = txn.complete {
            events.push((complete, true, t as TxnId));
        }
    }
    events.sort_unstable();
    let mut frontier: Vec<TxnId> = Vec::new();
    // What the frontier was when each transaction was invoked: it covers those on completion.
    let mut before: HashMap<TxnId, Vec<TxnId>> = HashMap::new();
    for (_, completes, t) in events {
        if completes {
            if let Some(covered) = before.remove(&t) {
                frontier.retain(|f| !covered.contains(f));
            }
            frontier.push(t);
        } else {
            for &f in &frontier {
                add(f, t, REALTIME, 0, 0);
            }
            if txns.txns[t as usize].complete.is_some() && !frontier.is_empty() {
                before.insert(t, frontier.clone());
            }
        }
    }
}
