//! Deterministic generator of register histories from a sequential model with random concurrent
//! timing, shared by the property tests and the benchmark.
//!
//! Every operation gets a linearization point inside its [invocation, completion] interval (or, for
//! an unknown outcome, anywhere after its invocation, or never); the operations are then applied to
//! a real register in linearization-point order, which decides what each read returned and whether
//! each compare-and-set succeeded. Such a history is linearizable by construction.

#![allow(dead_code)]

use chaos_check::{Header, History, Op, OpKind, Outcome};
use serde_json::Value;

/// splitmix64: tiny, deterministic, good enough to spread timings.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in 0..n (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p && p > 0.0
    }
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct Params {
    pub clients: usize,
    pub keys: usize,
    pub ops: usize,
    /// Probability that an operation's outcome is unknown (it then takes effect half of the time,
    /// possibly after the client gave up).
    pub unknown: f64,
    /// Probability that an update definitely fails (does not take effect).
    pub fail: f64,
    /// Think time between a client's operations, 0..max_gap_us.
    pub max_gap_us: u64,
    /// Latency 1..=max_latency_us.
    pub max_latency_us: u64,
    /// Every written value distinct (else values come from a small domain, so reads are ambiguous).
    pub unique_values: bool,
}

impl Params {
    pub fn new(clients: usize, keys: usize, ops: usize) -> Params {
        Params {
            clients,
            keys,
            ops,
            unknown: 0.0,
            fail: 0.0,
            max_gap_us: 200,
            max_latency_us: 1_000,
            unique_values: true,
        }
    }
}

struct Planned {
    op: Op,
    /// When it takes effect, if it does.
    point: Option<u64>,
    key: usize,
}

/// Generates a linearizable register history.
pub fn register_history(seed: u64, p: &Params) -> History {
    let mut rng = Rng::new(seed);
    let clients = p.clients.max(1);
    let keys = p.keys.max(1);
    let mut free_at = vec![0u64; clients];
    // Values written so far per key, for choosing cas expectations.
    let mut written: Vec<Vec<Value>> = vec![Vec::new(); keys];
    let mut planned: Vec<Planned> = Vec::with_capacity(p.ops);
    for i in 0..p.ops {
        let client = (0..clients).min_by_key(|&c| (free_at[c], c)).unwrap_or(0);
        let invoke = free_at[client] + rng.below(p.max_gap_us + 1);
        let latency = 1 + rng.below(p.max_latency_us.max(1));
        let complete = invoke + latency;
        free_at[client] = complete;
        let key = rng.below(keys as u64) as usize;
        let value = if p.unique_values {
            Value::from(i as u64 + 1)
        } else {
            Value::from(rng.below(4))
        };
        let roll = rng.below(100);
        let kind = match roll {
            0..=39 => OpKind::Read,
            40..=69 => OpKind::Write,
            70..=89 => OpKind::Cas,
            _ => OpKind::Delete,
        };
        let outcome = if rng.chance(p.unknown) {
            Outcome::Unknown
        } else if kind != OpKind::Read && rng.chance(p.fail) {
            Outcome::Fail
        } else {
            Outcome::Ok
        };
        let point = match outcome {
            Outcome::Ok => Some(invoke + rng.below(latency + 1)),
            Outcome::Unknown if kind != OpKind::Read && rng.chance(0.5) => {
                Some(invoke + rng.below(3 * latency + 1))
            }
            _ => None,
        };
        let mut op = Op::new(i as u64 + 1, client as u64, kind, invoke, outcome).key(format!("k{key}"));
        op.node = Some(format!("n{}", client % 3 + 1));
        if outcome != Outcome::Unknown || rng.chance(0.5) {
            op.complete_us = Some(complete);
        }
        match kind {
            OpKind::Write => {
                op.value = Some(value.clone());
                written[key].push(value);
            }
            OpKind::Cas => {
                let options = written[key].len() as u64 + 1;
                let pick = rng.below(options) as usize;
                op.expected = Some(written[key].get(pick).cloned().unwrap_or(Value::Null));
                op.value = Some(value.clone());
                written[key].push(value);
            }
            _ => {}
        }
        planned.push(Planned { op, point, key });
    }
    // Apply in linearization-point order to decide reads and cas outcomes.
    let mut order: Vec<usize> = (0..planned.len())
        .filter(|&i| planned[i].point.is_some())
        .collect();
    order.sort_by_key(|&i| (planned[i].point, i));
    let mut state: Vec<Value> = vec![Value::Null; keys];
    for i in order {
        let entry = &mut planned[i];
        let register = &mut state[entry.key];
        match entry.op.kind {
            OpKind::Read => entry.op.value = Some(register.clone()),
            OpKind::Write => *register = entry.op.value.clone().unwrap_or(Value::Null),
            OpKind::Delete => *register = Value::Null,
            OpKind::Cas => {
                if entry.op.expected.as_ref() == Some(&*register) {
                    *register = entry.op.value.clone().unwrap_or(Value::Null);
                } else if entry.op.outcome == Outcome::Ok {
                    // The compare failed: the client saw a definite failure.
                    entry.op.outcome = Outcome::Fail;
                }
            }
            _ => {}
        }
    }
    let mut history = History::new(Header {
        run: Some(format!("generated-{seed}")),
        ..Header::new()
    });
    history.ops = planned.into_iter().map(|p| p.op).collect();
    history
}

/// Changes one ok read so the history cannot be linearized, preferring a stale value (one that was
/// definitely overwritten before the read began) and falling back to a value never written.
/// Returns the id of the changed (or appended) read. Requires unique values.
pub fn inject_violation(history: &mut History, seed: u64) -> u64 {
    let mut rng = Rng::new(seed ^ 0x5eed);
    let is_update =
        |o: &Op| o.outcome == Outcome::Ok && matches!(o.kind, OpKind::Write | OpKind::Cas | OpKind::Delete);
    let reads: Vec<usize> = (0..history.ops.len())
        .filter(|&i| history.ops[i].kind == OpKind::Read && history.ops[i].outcome == Outcome::Ok)
        .collect();
    let start = rng.below(reads.len().max(1) as u64) as usize;
    for offset in 0..reads.len() {
        let r = reads[(start + offset) % reads.len()];
        let read = &history.ops[r];
        // W_v completed before W2 was invoked, W2 completed before the read was invoked.
        let stale = history
            .ops
            .iter()
            .filter(|w| is_update(w) && w.kind != OpKind::Delete && w.key == read.key)
            .find(|wv| {
                history.ops.iter().any(|w2| {
                    is_update(w2)
                        && w2.key == read.key
                        && w2.id != wv.id
                        && wv.complete_us.is_some_and(|c| c < w2.invoke_us)
                        && w2.complete_us.is_some_and(|c| c < read.invoke_us)
                })
            });
        if let Some(wv) = stale {
            let value = wv.value.clone();
            history.ops[r].value = value;
            return history.ops[r].id;
        }
    }
    if let Some(&r) = reads.get(start) {
        history.ops[r].value = Some(Value::from("never-written"));
        return history.ops[r].id;
    }
    let id = history.ops.iter().map(|o| o.id).max().unwrap_or(0) + 1;
    let end = history.end_us() + 10;
    history.ops.push(
        Op::new(id, 1_000_000, OpKind::Read, end, Outcome::Ok)
            .key("k0")
            .value("never-written")
            .complete(end + 5),
    );
    id
}

/// Generates a linearizable history of appending registers: reads, appends of unique integers
/// (so every register is a list, and a read returns it whole), and with `resets` the odd write of
/// `[]` that empties a list. Same timing model as [`register_history`].
pub fn append_register_history(seed: u64, p: &Params, resets: bool) -> History {
    let mut rng = Rng::new(seed);
    let clients = p.clients.max(1);
    let keys = p.keys.max(1);
    let mut free_at = vec![0u64; clients];
    let mut planned: Vec<Planned> = Vec::with_capacity(p.ops);
    for i in 0..p.ops {
        let client = (0..clients).min_by_key(|&c| (free_at[c], c)).unwrap_or(0);
        let invoke = free_at[client] + rng.below(p.max_gap_us + 1);
        let latency = 1 + rng.below(p.max_latency_us.max(1));
        let complete = invoke + latency;
        free_at[client] = complete;
        let key = rng.below(keys as u64) as usize;
        let kind = match rng.below(100) {
            0..=44 => OpKind::Read,
            97.. if resets => OpKind::Write,
            _ => OpKind::Append,
        };
        let outcome = if rng.chance(p.unknown) {
            Outcome::Unknown
        } else if kind != OpKind::Read && rng.chance(p.fail) {
            Outcome::Fail
        } else {
            Outcome::Ok
        };
        let point = match outcome {
            Outcome::Ok => Some(invoke + rng.below(latency + 1)),
            Outcome::Unknown if kind != OpKind::Read && rng.chance(0.5) => {
                Some(invoke + rng.below(3 * latency + 1))
            }
            _ => None,
        };
        let mut op = Op::new(i as u64 + 1, client as u64, kind, invoke, outcome).key(format!("k{key}"));
        if outcome != Outcome::Unknown || rng.chance(0.5) {
            op.complete_us = Some(complete);
        }
        match kind {
            OpKind::Append => op.value = Some(Value::from(i as u64 + 1)),
            OpKind::Write => op.value = Some(Value::Array(Vec::new())),
            _ => {}
        }
        planned.push(Planned { op, point, key });
    }
    let mut order: Vec<usize> = (0..planned.len())
        .filter(|&i| planned[i].point.is_some())
        .collect();
    order.sort_by_key(|&i| (planned[i].point, i));
    // `None`: the register is absent (a key nobody appends to must read `null` then).
    let mut lists: Vec<Option<Vec<Value>>> = vec![None; keys];
    for i in order {
        let entry = &mut planned[i];
        let list = &mut lists[entry.key];
        match entry.op.kind {
            OpKind::Read => entry.op.value = Some(list.clone().map(Value::Array).unwrap_or(Value::Null)),
            OpKind::Append => list
                .get_or_insert_with(Vec::new)
                .push(entry.op.value.clone().unwrap_or(Value::Null)),
            OpKind::Write => *list = Some(Vec::new()),
            _ => {}
        }
    }
    let mut history = History::new(Header {
        run: Some(format!("generated-appends-{seed}")),
        ..Header::new()
    });
    history.ops = planned.into_iter().map(|p| p.op).collect();
    history
}
