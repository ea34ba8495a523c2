//! Deterministic generator of list-append transaction histories from a serial execution with
//! random concurrent timing, shared by the property tests and the benchmark; and injectors of one
//! anomaly of a chosen class.
//!
//! Every transaction gets a commit point inside its [invocation, completion] interval (or, for an
//! unknown outcome, anywhere after its invocation, or never; a failed one never commits); the
//! committed ones then run one at a time in commit-point order against real lists, which decides
//! what each read returned. Such a history is strict serializable by construction. As in Elle's
//! generator, a key takes a bounded number of appends and is then replaced by a fresh one, so
//! lists (and reads) stay short however long the history.

#![allow(dead_code)]

use std::collections::HashMap;

use chaos_check::{Header, History, Op, OpKind, Outcome};
use serde_json::{Value, json};

use super::model::Rng;

/// What to generate.
#[derive(Debug, Clone)]
pub struct TxnParams {
    pub clients: usize,
    pub txns: usize,
    /// Micro-operations per transaction: exactly this many, or 1..=this many when `vary_length`.
    pub mops: usize,
    pub vary_length: bool,
    /// Keys in use at any time.
    pub active_keys: usize,
    /// Appends a key takes before a fresh key replaces it.
    pub appends_per_key: usize,
    /// Probability that a micro-operation is a read.
    pub read_fraction: f64,
    /// Probability that a transaction's outcome is unknown (it then commits half of the time).
    pub unknown: f64,
    /// Probability that a transaction definitely fails.
    pub fail: f64,
    pub max_gap_us: u64,
    pub max_latency_us: u64,
}

impl TxnParams {
    pub fn new(clients: usize, txns: usize, mops: usize) -> TxnParams {
        TxnParams {
            clients,
            txns,
            mops,
            vary_length: false,
            active_keys: 8,
            appends_per_key: 16,
            read_fraction: 0.5,
            unknown: 0.0,
            fail: 0.0,
            max_gap_us: 200,
            max_latency_us: 1_000,
        }
    }
}

enum Planned {
    Append(usize, u64),
    Read(usize),
}

/// Generates a strict serializable list-append history.
pub fn list_append_history(seed: u64, p: &TxnParams) -> History {
    let mut rng = Rng::new(seed);
    let clients = p.clients.max(1);
    let mut free_at = vec![0u64; clients];
    let mut active: Vec<usize> = (0..p.active_keys.max(1)).collect();
    let mut next_key = active.len();
    let mut appends: HashMap<usize, usize> = HashMap::new();
    let mut next_elem = 0u64;
    struct Txn {
        op: Op,
        plan: Vec<Planned>,
        point: Option<u64>,
    }
    let mut txns: Vec<Txn> = Vec::with_capacity(p.txns);
    for i in 0..p.txns {
        let client = (0..clients).min_by_key(|&c| (free_at[c], c)).unwrap_or(0);
        let invoke = free_at[client] + rng.below(p.max_gap_us + 1);
        let latency = 1 + rng.below(p.max_latency_us.max(1));
        let complete = invoke + latency;
        free_at[client] = complete;
        let length = if p.vary_length {
            1 + rng.below(p.mops.max(1) as u64) as usize
        } else {
            p.mops.max(1)
        };
        let mut plan = Vec::with_capacity(length);
        for _ in 0..length {
            let slot = rng.below(active.len() as u64) as usize;
            let key = active[slot];
            if rng.chance(p.read_fraction) {
                plan.push(Planned::Read(key));
            } else {
                next_elem += 1;
                plan.push(Planned::Append(key, next_elem));
                let count = appends.entry(key).or_insert(0);
                *count += 1;
                if *count >= p.appends_per_key.max(1) {
                    active[slot] = next_key;
                    next_key += 1;
                }
            }
        }
        let outcome = if rng.chance(p.unknown) {
            Outcome::Unknown
        } else if rng.chance(p.fail) {
            Outcome::Fail
        } else {
            Outcome::Ok
        };
        let point = match outcome {
            Outcome::Ok => Some(invoke + rng.below(latency + 1)),
            Outcome::Unknown if rng.chance(0.5) => Some(invoke + rng.below(3 * latency + 1)),
            _ => None,
        };
        let mut op = Op::new(i as u64 + 1, client as u64, OpKind::Txn, invoke, outcome);
        if outcome != Outcome::Unknown || rng.chance(0.5) {
            op.complete_us = Some(complete);
        }
        op.node = Some(format!("n{}", client % 3 + 1));
        txns.push(Txn { op, plan, point });
    }
    // Run the committed transactions one at a time, in commit order.
    let mut order: Vec<usize> = (0..txns.len()).filter(|&i| txns[i].point.is_some()).collect();
    order.sort_by_key(|&i| (txns[i].point, i));
    let mut lists: HashMap<usize, Vec<u64>> = HashMap::new();
    let mut results: Vec<Option<Vec<Value>>> = (0..txns.len()).map(|_| None).collect();
    for i in order {
        let txn = &txns[i];
        let mut mops = Vec::with_capacity(txn.plan.len());
        for planned in &txn.plan {
            match *planned {
                Planned::Append(key, elem) => {
                    lists.entry(key).or_default().push(elem);
                    mops.push(json!(["append", format!("k{key}"), elem]));
                }
                Planned::Read(key) => {
                    let list = lists.get(&key).cloned().unwrap_or_default();
                    mops.push(json!(["r", format!("k{key}"), list]));
                }
            }
        }
        results[i] = Some(mops);
    }
    let mut history = History::new(Header {
        run: Some(format!("generated-txns-{seed}")),
        ..Header::new()
    });
    history.ops = txns
        .into_iter()
        .zip(results)
        .map(|(txn, result)| {
            let mut op = txn.op;
            // A transaction whose result the client never saw records no read results.
            let mops = match result {
                Some(mops) if op.outcome == Outcome::Ok => mops,
                _ => txn
                    .plan
                    .iter()
                    .map(|planned| match *planned {
                        Planned::Append(key, elem) => json!(["append", format!("k{key}"), elem]),
                        Planned::Read(key) => json!(["r", format!("k{key}"), null]),
                    })
                    .collect(),
            };
            op.value = Some(Value::Array(mops));
            op
        })
        .collect();
    history
}

/// The anomalies [`inject`] can add.
pub const INJECTABLE: &[&str] = &[
    "G0",
    "G1a",
    "G1b",
    "G1c",
    "G-single",
    "G2-item",
    "duplicate-elements",
    "incompatible-order",
    "internal",
    "G-single-realtime",
];

/// Adds one anomaly of class `class` (one of [`INJECTABLE`]) to a generated history, by changing
/// what some transactions saw or by adding a few transactions on fresh keys among the others.
/// Returns the ids of the operations involved.
pub fn inject(history: &mut History, class: &str, seed: u64) -> Vec<u64> {
    let mut rng = Rng::new(seed ^ 0xa11);
    let mut next_id = history.ops.iter().map(|o| o.id).max().unwrap_or(0) + 1;
    // Fresh transactions start somewhere in the history and run on fresh keys.
    let end = history.end_us().max(1);
    let mut at = rng.below(end);
    let fresh = format!("fresh-{seed}");
    let key = |name: &str| format!("{fresh}-{name}");
    let mut add = |history: &mut History, mops: Value, outcome: Outcome, gap: u64| -> u64 {
        let id = next_id;
        next_id += 1;
        at += gap;
        let mut op = Op::new(id, 1_000_000 + id, OpKind::Txn, at, outcome).value(mops);
        op.complete_us = Some(at + 5);
        history.ops.push(op);
        id
    };
    let ok = |o: &Op| o.kind == OpKind::Txn && o.outcome == Outcome::Ok;
    let reads_with = |history: &History, min_len: usize| -> Vec<(usize, usize)> {
        let mut found = Vec::new();
        for (i, op) in history.ops.iter().enumerate().filter(|(_, o)| ok(o)) {
            for (m, mop) in op
                .value
                .as_ref()
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                if mop[0] == "r" && mop[2].as_array().is_some_and(|l| l.len() >= min_len) {
                    found.push((i, m));
                }
            }
        }
        found
    };
    match class {
        "G0" => {
            let a = add(
                history,
                json!([["append", key("a"), 1], ["append", key("b"), 2]]),
                Outcome::Ok,
                0,
            );
            let b = add(
                history,
                json!([["append", key("a"), 2], ["append", key("b"), 1]]),
                Outcome::Ok,
                0,
            );
            add(
                history,
                json!([["r", key("a"), [1, 2]], ["r", key("b"), [1, 2]]]),
                Outcome::Ok,
                20,
            );
            vec![a, b]
        }
        "G1a" => {
            // A failed append that an existing read (or a fresh one) saw.
            let reads = reads_with(history, 0);
            let w = add(history, json!([["append", key("a"), 1]]), Outcome::Fail, 0);
            if let Some(&(i, m)) = reads.get(rng.below(reads.len().max(1) as u64) as usize) {
                let read_key = history.ops[i].value.as_ref().unwrap()[m][1].clone();
                // The failed transaction appended to the read's key.
                history.ops.last_mut().unwrap().value = Some(json!([["append", read_key, "aborted"]]));
                let mop = &mut history.ops[i].value.as_mut().unwrap()[m];
                mop[2].as_array_mut().unwrap().push(json!("aborted"));
                return vec![w, history.ops[i].id];
            }
            let r = add(history, json!([["r", key("a"), [1]]]), Outcome::Ok, 10);
            vec![w, r]
        }
        "G1b" => {
            let w = add(
                history,
                json!([["append", key("a"), 1], ["append", key("a"), 2]]),
                Outcome::Ok,
                0,
            );
            let r = add(history, json!([["r", key("a"), [1]]]), Outcome::Ok, 1);
            vec![w, r]
        }
        "G1c" => {
            let a = add(
                history,
                json!([["append", key("x"), 1], ["r", key("y"), [1]]]),
                Outcome::Ok,
                0,
            );
            let b = add(
                history,
                json!([["append", key("x"), 2], ["append", key("y"), 1]]),
                Outcome::Ok,
                0,
            );
            add(history, json!([["r", key("x"), [1, 2]]]), Outcome::Ok, 20);
            vec![a, b]
        }
        "G-single" => {
            let w = add(
                history,
                json!([["append", key("x"), 1], ["append", key("y"), 1]]),
                Outcome::Ok,
                0,
            );
            let r = add(
                history,
                json!([["r", key("x"), [1]], ["r", key("y"), []]]),
                Outcome::Ok,
                0,
            );
            add(history, json!([["r", key("y"), [1]]]), Outcome::Ok, 20);
            vec![w, r]
        }
        "G2-item" => {
            let a = add(
                history,
                json!([["r", key("x"), []], ["r", key("y"), []], ["append", key("x"), 1]]),
                Outcome::Ok,
                0,
            );
            let b = add(
                history,
                json!([["r", key("x"), []], ["r", key("y"), []], ["append", key("y"), 1]]),
                Outcome::Ok,
                0,
            );
            add(
                history,
                json!([["r", key("x"), [1]], ["r", key("y"), [1]]]),
                Outcome::Ok,
                20,
            );
            vec![a, b]
        }
        "duplicate-elements" => {
            let reads = reads_with(history, 1);
            if let Some(&(i, m)) = reads.get(rng.below(reads.len().max(1) as u64) as usize) {
                let list = history.ops[i].value.as_mut().unwrap()[m][2]
                    .as_array_mut()
                    .unwrap();
                let last = list.last().cloned().unwrap();
                list.push(last);
                return vec![history.ops[i].id];
            }
            add(history, json!([["append", key("x"), 1]]), Outcome::Ok, 0);
            vec![add(history, json!([["r", key("x"), [1, 1]]]), Outcome::Ok, 10)]
        }
        "incompatible-order" => {
            add(history, json!([["append", key("x"), 1]]), Outcome::Ok, 0);
            add(history, json!([["append", key("x"), 2]]), Outcome::Ok, 0);
            let r1 = add(history, json!([["r", key("x"), [1, 2]]]), Outcome::Ok, 10);
            let r2 = add(history, json!([["r", key("x"), [2, 1]]]), Outcome::Ok, 0);
            vec![r1, r2]
        }
        "internal" => {
            // An existing committed transaction that does not see its own append.
            let candidates: Vec<usize> = (0..history.ops.len()).filter(|&i| ok(&history.ops[i])).collect();
            if let Some(&i) = candidates.get(rng.below(candidates.len().max(1) as u64) as usize) {
                let mops = history.ops[i].value.as_mut().unwrap().as_array_mut().unwrap();
                mops.push(json!(["append", key("x"), 1]));
                mops.push(json!(["r", key("x"), []]));
                return vec![history.ops[i].id];
            }
            vec![add(
                history,
                json!([["append", key("x"), 1], ["r", key("x"), []]]),
                Outcome::Ok,
                0,
            )]
        }
        "G-single-realtime" => {
            let w = add(history, json!([["append", key("x"), 1]]), Outcome::Ok, 0);
            let r = add(history, json!([["r", key("x"), []]]), Outcome::Ok, 10);
            add(history, json!([["r", key("x"), [1]]]), Outcome::Ok, 10);
            vec![w, r]
        }
        other => panic!("cannot inject {other}"),
    }
}
