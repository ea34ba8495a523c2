//! Linearizability of per-key registers (read, write, compare-and-set, delete).
//!
//! The search is Wing & Gong's, with Lowe's just-in-time linearization and memoization of
//! (linearized set, register state) as in porcupine and Knossos: walk the history's call and return
//! events in time order, tentatively linearize any pending operation whose effect the register
//! model allows, and backtrack when an operation's return is reached before it was linearized.
//!
//! Operations with an `unknown` outcome have no return event (completion = +∞): they may be
//! linearized at any point after their invocation, or never, so the search succeeds as soon as every
//! `ok` operation is linearized. `fail` operations and reads without a known result constrain nothing
//! and are dropped. Keys are independent registers, so each key is searched alone (in parallel).
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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::checker::{Checker, Validity, Verdict};
use crate::history::{History, Op, OpKind, Outcome};

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

/// The linearizability checker for key-value registers.
#[derive(Debug, Clone, PartialEq)]
pub struct Linearizability {
    /// Search limits.
    pub budget: Budget,
    /// Worker threads (0 = the machine's available parallelism).
    pub threads: usize,
    /// Whether to shrink a violation to a minimal set of operations (bounded by the budget).
    pub minimize: bool,
}

impl Default for Linearizability {
    fn default() -> Self {
        Linearizability {
            budget: Budget::default(),
            threads: 0,
            minimize: true,
        }
    }
}

/// Register state: an interned value; 0 is "absent".
type State = u32;
const ABSENT: State = 0;

/// An operation's effect on the register model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Step {
    Read(State),
    Write(State),
    Cas { expected: State, new: State },
}

/// Applies a step; `None` when the model forbids it in this state.
fn apply(state: State, step: Step) -> Option<State> {
    match step {
        Step::Read(v) => (v == state).then_some(state),
        Step::Write(v) => Some(v),
        Step::Cas { expected, new } => (expected == state).then_some(new),
    }
}

/// One operation of a single key, as the search sees it.
#[derive(Debug, Clone)]
struct KeyOp {
    id: u64,
    invoke: u64,
    /// `None`: unknown outcome, may take effect any time after `invoke`, or never.
    complete: Option<u64>,
    step: Step,
}

/// All register operations on one key.
struct KeyHistory {
    key: String,
    ops: Vec<KeyOp>,
}

/// Splits a history into per-key register histories (keys in sorted order, ops by invocation).
fn key_histories(history: &History) -> Vec<KeyHistory> {
    struct Interner(HashMap<String, State>);
    impl Interner {
        fn get(&mut self, value: &Value) -> State {
            if value.is_null() {
                return ABSENT;
            }
            let next = self.0.len() as State + 1;
            *self.0.entry(value.to_string()).or_insert(next)
        }
    }
    let mut keys: BTreeMap<&str, (Interner, Vec<KeyOp>)> = BTreeMap::new();
    for op in &history.ops {
        if !op.kind.is_register() || op.outcome == Outcome::Fail {
            continue;
        }
        // Reads that did not return constrain nothing.
        if op.kind == OpKind::Read && op.outcome != Outcome::Ok {
            continue;
        }
        let Some(key) = op.key.as_deref() else { continue };
        let (interner, ops) = keys
            .entry(key)
            .or_insert_with(|| (Interner(HashMap::new()), Vec::new()));
        let null = Value::Null;
        let value = op.value.as_ref().unwrap_or(&null);
        let step = match op.kind {
            OpKind::Read => Step::Read(interner.get(value)),
            OpKind::Write => Step::Write(interner.get(value)),
            OpKind::Delete => Step::Write(ABSENT),
            OpKind::Cas => {
                let expected = interner.get(op.expected.as_ref().unwrap_or(&null));
                Step::Cas {
                    expected,
                    new: interner.get(value),
                }
            }
            _ => continue,
        };
        let complete = if op.outcome == Outcome::Ok {
            op.complete_us
        } else {
            None
        };
        ops.push(KeyOp {
            id: op.id,
            invoke: op.invoke_us,
            complete,
            step,
        });
    }
    keys.into_iter()
        .map(|(key, (_, mut ops))| {
            sort_ops(&mut ops);
            merge_unobserved_values(&mut ops);
            KeyHistory {
                key: key.to_string(),
                ops,
            }
        })
        .collect()
}

/// The state after writing a value that no operation ever reads or expects.
const UNOBSERVED: State = State::MAX;

/// Maps every written value that no operation reads or expects to one state, [`UNOBSERVED`]: no
/// operation can tell such values apart, so the search need not either, and its memo merges the
/// configurations that differ only in which of them the register holds.
fn merge_unobserved_values(ops: &mut [KeyOp]) {
    let observed: HashSet<State> = ops.iter().filter_map(referenced).collect();
    let merge = |v: State| {
        if v == ABSENT || observed.contains(&v) {
            v
        } else {
            UNOBSERVED
        }
    };
    for op in ops {
        op.step = match op.step {
            Step::Write(v) => Step::Write(merge(v)),
            Step::Cas { expected, new } => Step::Cas {
                expected,
                new: merge(new),
            },
            read => read,
        };
    }
}

fn sort_ops(ops: &mut [KeyOp]) {
    ops.sort_by_key(|o| (o.invoke, o.complete.unwrap_or(u64::MAX), o.id));
}

/// The result of one search.
#[derive(Debug, Clone, PartialEq)]
enum SearchResult {
    Linearizable,
    NotLinearizable,
    /// The budget ran out; the string says which limit.
    Exhausted(String),
}

/// Limits for one search.
#[derive(Debug, Clone)]
struct Limits {
    max_steps: u64,
    max_memory: u64,
    deadline: Option<Instant>,
}

/// A small, fast, deterministic hasher (FxHash's mixing, murmur3's finalizer) for the memo set: SipHash's DoS
/// resistance buys nothing here and costs a third of the search time.
#[derive(Default)]
struct FxHasher {
    hash: u64,
}

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
    }
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    fn finish(&self) -> u64 {
        // The multiply only carries entropy upwards, and the table indexes by the low bits: without
        // a final avalanche (murmur3's fmix64) keys differing only in later words share buckets.
        let mut h = self.hash;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

const NIL: u32 = u32::MAX;

/// The event list: a doubly linked list over call/return events (node 0 is the head) from which
/// linearized operations are lifted and restored (dancing links).
struct Events {
    next: Vec<u32>,
    prev: Vec<u32>,
    is_call: Vec<bool>,
    node_op: Vec<u32>,
    call_node: Vec<u32>,
    return_node: Vec<u32>,
}

impl Events {
    fn new(ops: &[KeyOp]) -> Events {
        let mut events: Vec<(u64, u8, u32)> = Vec::with_capacity(ops.len() * 2);
        for (i, op) in ops.iter().enumerate() {
            // Calls sort before returns at equal times: simultaneous events count as concurrent,
            // which can only accept more histories, never flag a correct one.
            events.push((op.invoke, 0, i as u32));
            if let Some(c) = op.complete {
                events.push((c, 1, i as u32));
            }
        }
        events.sort_unstable();
        let count = events.len();
        let mut list = Events {
            next: vec![NIL; count + 1],
            prev: vec![0; count + 1],
            is_call: vec![false; count + 1],
            node_op: vec![0; count + 1],
            call_node: vec![NIL; ops.len()],
            return_node: vec![NIL; ops.len()],
        };
        for (k, &(_, kind, op)) in events.iter().enumerate() {
            let node = k + 1;
            list.next[k] = node as u32;
            list.prev[node] = k as u32;
            list.node_op[node] = op;
            list.is_call[node] = kind == 0;
            if kind == 0 {
                list.call_node[op as usize] = node as u32;
            } else {
                list.return_node[op as usize] = node as u32;
            }
        }
        list
    }

    /// Where a fresh scan starts: at a pending read that fits the state, if there is one before
    /// the first return (it is safe to linearize at once, see `search`, and doing so before any
    /// write spares the search from writes that would wrongly hide it), else at the head.
    fn first_choice(&self, ops: &[KeyOp], state: State) -> u32 {
        let mut node = self.next[0];
        while node != NIL && self.is_call[node as usize] {
            if ops[self.node_op[node as usize] as usize].step == Step::Read(state) {
                return node;
            }
            node = self.next[node as usize];
        }
        self.next[0]
    }

    fn remove(&mut self, node: u32) {
        let (p, n) = (self.prev[node as usize], self.next[node as usize]);
        self.next[p as usize] = n;
        if n != NIL {
            self.prev[n as usize] = p;
        }
    }

    fn restore(&mut self, node: u32) {
        let (p, n) = (self.prev[node as usize], self.next[node as usize]);
        self.next[p as usize] = node;
        if n != NIL {
            self.prev[n as usize] = node;
        }
    }

    fn lift(&mut self, op: u32) {
        self.remove(self.call_node[op as usize]);
        let ret = self.return_node[op as usize];
        if ret != NIL {
            self.remove(ret);
        }
    }

    fn unlift(&mut self, op: u32) {
        let ret = self.return_node[op as usize];
        if ret != NIL {
            self.restore(ret);
        }
        self.restore(self.call_node[op as usize]);
    }
}

fn bit(bits: &[u64], i: u32) -> bool {
    bits[(i / 64) as usize] & (1 << (i % 64)) != 0
}

fn set_bit(bits: &mut [u64], i: u32, on: bool) {
    let mask = 1u64 << (i % 64);
    if on {
        bits[(i / 64) as usize] |= mask;
    } else {
        bits[(i / 64) as usize] &= !mask;
    }
}

/// The first index ≥ `from` that is `ok` and not linearized (`n` if none).
fn next_pending_ok(ok: &[u64], linearized: &[u64], from: u32, n: u32) -> u32 {
    let mut word = (from / 64) as usize;
    if word >= ok.len() {
        return n;
    }
    let mut bits = ok[word] & !linearized[word] & (!0u64 << (from % 64));
    loop {
        if bits != 0 {
            return (word as u32 * 64 + bits.trailing_zeros()).min(n);
        }
        word += 1;
        if word >= ok.len() {
            return n;
        }
        bits = ok[word] & !linearized[word];
    }
}

/// A frame of the search stack: the operation linearized and what to restore on backtracking.
struct Frame {
    op: u32,
    state: State,
    pending: u32,
    high: u32,
    /// A read linearized as soon as it fit (see `search`): no alternative to it needs trying.
    forced: bool,
}

/// Searches for a linearization of one key's operations. Returns the result and the steps taken.
fn search(ops: &[KeyOp], limits: &Limits) -> (SearchResult, u64) {
    let relevant = without_unobservable_unknowns(ops);
    let ops = &relevant[..];
    let n = ops.len() as u32;
    let words = ops.len().div_ceil(64);
    let mut ok = vec![0u64; words];
    let mut unknown: Vec<u32> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        if op.complete.is_some() {
            set_bit(&mut ok, i as u32, true);
        } else {
            unknown.push(i as u32);
        }
    }
    let mut remaining_ok = ops.len() - unknown.len();
    if remaining_ok == 0 {
        return (SearchResult::Linearizable, 0);
    }
    // Unknown operations with the same effect are interchangeable once invoked: only the earliest
    // still pending one may be linearized (a linearization using a later one can use the earlier
    // one in its place), which removes their k! orders and 2^k choices of "which ones".
    let mut previous_same = vec![NIL; ops.len()];
    let mut last_with_step: HashMap<Step, u32> = HashMap::new();
    for &u in &unknown {
        if let Some(previous) = last_with_step.insert(ops[u as usize].step, u) {
            previous_same[u as usize] = previous;
        }
    }
    let mut events = Events::new(ops);
    let mut linearized = vec![0u64; words];
    // `pending`: the first ok operation not yet linearized; `high`: one past the highest
    // linearized index. Together with the exceptions they name the linearized set exactly.
    let mut pending = next_pending_ok(&ok, &linearized, 0, n);
    let mut high = 0u32;
    let mut state = ABSENT;
    let mut stack: Vec<Frame> = Vec::new();
    let mut memo: HashSet<Box<[u32]>, BuildHasherDefault<FxHasher>> = HashSet::default();
    let mut memory = 0u64;
    let mut key: Vec<u32> = Vec::new();
    let mut entry = events.first_choice(ops, state);
    let mut steps = 0u64;
    loop {
        steps += 1;
        if steps > limits.max_steps {
            return (
                SearchResult::Exhausted(format!(
                    "the search visited {} steps, its budget",
                    limits.max_steps
                )),
                steps,
            );
        }
        if steps % 1024 == 0 && limits.deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            return (
                SearchResult::Exhausted("the check's time limit passed".to_string()),
                steps,
            );
        }
        let mut backtrack = entry == NIL || !events.is_call[entry as usize];
        if !backtrack {
            let op = events.node_op[entry as usize];
            let step = ops[op as usize].step;
            let previous = previous_same[op as usize];
            let symmetric = previous != NIL && !bit(&linearized, previous);
            if symmetric {
                // An earlier identical unknown operation is still pending: try that one instead.
            } else if let Some(new_state) = apply(state, step) {
                set_bit(&mut linearized, op, true);
                let new_pending = if op == pending {
                    next_pending_ok(&ok, &linearized, op + 1, n)
                } else {
                    pending
                };
                let new_high = high.max(op + 1);
                memo_key(&mut key, new_state, new_pending, new_high, &linearized, &unknown);
                // A read that fits the state can be linearized right away without loss: it changes
                // nothing, and every operation that had to precede it is already linearized (its
                // return would have stopped the scan). So it is never backtracked over on its own,
                // which removes the 2^k orders of k concurrent reads of the same value.
                let forced = matches!(step, Step::Read(_));
                if !memo.contains(&key[..]) {
                    // Slot, box header and allocator overhead, plus the exceptions themselves.
                    memory += 48 + 4 * key.len() as u64;
                    if memory > limits.max_memory {
                        return (
                            SearchResult::Exhausted(format!(
                                "the memo set reached its memory budget of {} MiB ({} entries)",
                                limits.max_memory >> 20,
                                memo.len()
                            )),
                            steps,
                        );
                    }
                    memo.insert(key.clone().into_boxed_slice());
                    stack.push(Frame {
                        op,
                        state,
                        pending,
                        high,
                        forced,
                    });
                    state = new_state;
                    pending = new_pending;
                    high = new_high;
                    events.lift(op);
                    if bit(&ok, op) {
                        remaining_ok -= 1;
                        if remaining_ok == 0 {
                            return (SearchResult::Linearizable, steps);
                        }
                    }
                    entry = events.first_choice(ops, state);
                    continue;
                }
                set_bit(&mut linearized, op, false);
                // Memo hit: that configuration failed. For a forced read, so does this one.
                backtrack = forced;
            }
            if !backtrack {
                entry = events.next[entry as usize];
                continue;
            }
        }
        // An ok operation returned before it could be linearized (or a dead end): undo the last
        // choice that had alternatives.
        loop {
            let Some(frame) = stack.pop() else {
                return (SearchResult::NotLinearizable, steps);
            };
            set_bit(&mut linearized, frame.op, false);
            state = frame.state;
            pending = frame.pending;
            high = frame.high;
            events.unlift(frame.op);
            if bit(&ok, frame.op) {
                remaining_ok += 1;
            }
            if !frame.forced {
                entry = events.next[events.call_node[frame.op as usize] as usize];
                break;
            }
        }
    }
}

/// Drops unknown-outcome updates whose effect no operation could observe: no operation that
/// completes after the update's invocation (so could come after it) reads or expects the value it
/// writes. Such an update, if it took effect, was directly overwritten, so the history is
/// linearizable with it exactly when it is without it. Repeated to a fixpoint, since a dropped
/// compare-and-set no longer observes anything itself.
fn without_unobservable_unknowns(ops: &[KeyOp]) -> Vec<KeyOp> {
    let mut keep = vec![true; ops.len()];
    loop {
        let mut latest_use: HashMap<State, u64> = HashMap::new();
        for (o, _) in ops.iter().zip(&keep).filter(|(_, k)| **k) {
            if let Some(v) = referenced(o) {
                let until = o.complete.unwrap_or(u64::MAX);
                let entry = latest_use.entry(v).or_insert(until);
                *entry = (*entry).max(until);
            }
        }
        let mut changed = false;
        for (i, o) in ops.iter().enumerate() {
            if keep[i] && o.complete.is_none() {
                let observed = written(o)
                    .and_then(|v| latest_use.get(&v))
                    .is_some_and(|&until| until >= o.invoke);
                if !observed {
                    keep[i] = false;
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }
    ops.iter()
        .zip(&keep)
        .filter(|(_, k)| **k)
        .map(|(o, _)| o.clone())
        .collect()
}

/// Fills `key` with the canonical name of (state, linearized set): the state, the first pending ok
/// operation, the unknown operations before it that are not linearized, and the linearized
/// operations after it.
fn memo_key(key: &mut Vec<u32>, state: State, pending: u32, high: u32, linearized: &[u64], unknown: &[u32]) {
    key.clear();
    key.push(state);
    key.push(pending);
    for &u in unknown {
        if u >= pending {
            break;
        }
        if !bit(linearized, u) {
            key.push(u);
        }
    }
    let start = pending + 1;
    if start >= high {
        return;
    }
    for word in (start / 64)..=((high - 1) / 64) {
        let mut bits = linearized[word as usize];
        if word == start / 64 {
            bits &= !0u64 << (start % 64);
        }
        while bits != 0 {
            let i = word * 64 + bits.trailing_zeros();
            if i >= high {
                break;
            }
            key.push(i);
            bits &= bits - 1;
        }
    }
}

/// The per-key outcome.
#[derive(Debug, Clone)]
enum KeyOutcome {
    Valid,
    Invalid(Violation),
    Unknown(String),
}

/// A violation shrunk to the operations that matter.
#[derive(Debug, Clone)]
struct Violation {
    /// The `ok` operations that cannot be linearized together.
    core: Vec<u64>,
    /// The operations kept as "may or may not have taken effect" alongside the core.
    context: Vec<u64>,
    /// The history was cut here (µs): nothing that completed later is needed to show the violation.
    until_us: u64,
    /// Whether every core operation was shown to be needed (false when the budget cut the
    /// minimization short).
    minimal: bool,
}

struct KeyResult {
    key: String,
    ops: usize,
    steps: u64,
    outcome: KeyOutcome,
}

/// The history cut at `t`: operations invoked later are dropped, and those still running at `t` may
/// or may not have taken effect (reads among them are dropped). A violation in the cut is a
/// violation in the whole history.
fn truncate(ops: &[KeyOp], t: u64) -> Vec<KeyOp> {
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

/// The values an operation relies on finding in the register: what a read returned, what a cas
/// expected.
fn referenced(op: &KeyOp) -> Option<State> {
    match op.step {
        Step::Read(v) => Some(v),
        Step::Cas { expected, .. } => Some(expected),
        Step::Write(_) => None,
    }
}

fn written(op: &KeyOp) -> Option<State> {
    match op.step {
        Step::Read(_) => None,
        Step::Write(v) | Step::Cas { new: v, .. } => Some(v),
    }
}

/// Shrinks a non-linearizable history to a small certificate, using only changes that admit more
/// linearizations (so whatever stays non-linearizable is a sound certificate):
///
/// 1. cut the history at the earliest completion where it is already non-linearizable;
/// 2. drop operations: a read (always a relaxation), or an update whose written value no remaining
///    operation that completes after the update's invocation reads or expects (only such an
///    operation can directly follow it in a linearization, so in every linearization the update is
///    followed by a blind overwrite, and dropping it breaks none) — in halving chunks, then one by
///    one to a fixpoint;
/// 3. turn each remaining acknowledged update into "may or may not have taken effect".
///
/// What remains is 1-minimal: relaxing any one remaining `ok` operation makes it linearizable
/// (unless the budget cut the work short, which the result says).
fn minimize(ops: &[KeyOp], limits: &Limits, first_search_steps: u64) -> Violation {
    let mut spent = 0u64;
    let try_limits = Limits {
        max_steps: limits
            .max_steps
            .min(first_search_steps.saturating_mul(4).max(200_000)),
        ..limits.clone()
    };
    let mut minimal = true;
    let mut refutes = |candidate: &[KeyOp]| -> bool {
        if spent >= limits.max_steps {
            minimal = false;
            return false;
        }
        let (result, steps) = search(candidate, &try_limits);
        spent += steps;
        match result {
            SearchResult::NotLinearizable => true,
            SearchResult::Linearizable => false,
            SearchResult::Exhausted(_) => {
                minimal = false;
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
        while end > 0 {
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
                    if let Some(v) = referenced(o) {
                        let until = o.complete.unwrap_or(u64::MAX);
                        let entry = latest_use.entry(v).or_insert(until);
                        *entry = (*entry).max(until);
                    }
                }
                let mut kept = false;
                for (i, o) in current.iter().enumerate() {
                    let used = written(o)
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
        if chunk > 1 {
            chunk /= 2;
        } else if !changed {
            break;
        }
    }
    // 3. Updates others rely on cannot be dropped, but may not need their acknowledgement.
    for index in (0..current.len()).rev() {
        if current[index].complete.is_none() || written(&current[index]).is_none() {
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
        minimal,
    }
}

impl Linearizability {
    fn check_key(&self, key: &KeyHistory, limits: &Limits) -> KeyResult {
        let (result, steps) = search(&key.ops, limits);
        let outcome = match result {
            SearchResult::Linearizable => KeyOutcome::Valid,
            SearchResult::Exhausted(why) => KeyOutcome::Unknown(why),
            SearchResult::NotLinearizable if self.minimize => {
                KeyOutcome::Invalid(minimize(&key.ops, limits, steps))
            }
            SearchResult::NotLinearizable => {
                let mut core: Vec<(u64, u64)> = key
                    .ops
                    .iter()
                    .filter(|o| o.complete.is_some())
                    .map(|o| (o.invoke, o.id))
                    .collect();
                core.sort_unstable();
                KeyOutcome::Invalid(Violation {
                    core: core.into_iter().map(|(_, id)| id).collect(),
                    context: key
                        .ops
                        .iter()
                        .filter(|o| o.complete.is_none())
                        .map(|o| o.id)
                        .collect(),
                    until_us: key.ops.iter().filter_map(|o| o.complete).max().unwrap_or(0),
                    minimal: false,
                })
            }
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
        if threads == 1 {
            return keys.iter().map(|k| self.check_key(k, &limits)).collect();
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
                            done.push((i, self.check_key(key, &limits)));
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

impl Checker for Linearizability {
    fn name(&self) -> &str {
        "linearizability"
    }

    fn check(&self, history: &History) -> Verdict {
        if !history.ops.iter().any(|o| o.kind.is_register()) {
            return Verdict::new(
                self.name(),
                Validity::Unknown,
                "the history has no register operations (read, write, cas, delete) to check",
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
                        "minimal": v.minimal,
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
            let listed: Vec<String> = v
                .core
                .iter()
                .take(SHOWN)
                .filter_map(|id| by_id.get(id))
                .map(|op| describe_op(op))
                .collect();
            let more = if v.core.len() > SHOWN {
                format!("; and {} more", v.core.len() - SHOWN)
            } else {
                String::new()
            };
            let context = if v.context.is_empty() {
                String::new()
            } else {
                format!(
                    " even allowing {} other update(s) to have taken effect at any time after their \
                     invocation or not at all",
                    v.context.len()
                )
            };
            let explanation = format!(
                "{} of {} keys are not linearizable. Key {:?}: no order of these {} operations agrees \
                 with their real-time order and a register's semantics{context}{}: {}{more}",
                invalid.len(),
                results.len(),
                r.key,
                v.core.len(),
                if v.minimal {
                    ""
                } else {
                    " (not fully minimized: budget)"
                },
                listed.join("; "),
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
        assert_eq!(search(&ops, &unlimited()).0, SearchResult::Linearizable);
        // write 1, then write 2, then read 1: stale.
        let ops = vec![
            op(1, 0, Some(1), Step::Write(1)),
            op(2, 2, Some(3), Step::Write(2)),
            op(3, 4, Some(5), Step::Read(1)),
        ];
        assert_eq!(search(&ops, &unlimited()).0, SearchResult::NotLinearizable);
        let v = minimize(&ops, &unlimited(), 10);
        assert_eq!(v.core, vec![1, 2, 3]);
        assert!(v.minimal);
    }
}
