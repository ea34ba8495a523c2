//! The search for a linearization of one key (Wing & Gong with Lowe's just-in-time linearization;
//! memoized as in porcupine and Knossos), and the reductions that keep it small.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use crate::fxhash::FxBuildHasher;

use super::model::{ABSENT, KeyOp, Registers, State, Step, referenced, written};

/// The result of one search.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum SearchResult {
    Linearizable,
    NotLinearizable,
    /// The budget ran out; the string says which limit.
    Exhausted(String),
}

/// Limits for one search.
#[derive(Debug, Clone)]
pub(super) struct Limits {
    pub max_steps: u64,
    pub max_memory: u64,
    pub deadline: Option<Instant>,
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
    fn first_choice(&self, ops: &[KeyOp], registers: &mut Registers, state: State) -> u32 {
        let mut node = self.next[0];
        while node != NIL && self.is_call[node as usize] {
            let step = ops[self.node_op[node as usize] as usize].step;
            if matches!(step, Step::Read(_)) && registers.apply(state, step).is_some() {
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

pub(super) fn bit(bits: &[u64], i: u32) -> bool {
    bits[(i / 64) as usize] & (1 << (i % 64)) != 0
}

pub(super) fn set_bit(bits: &mut [u64], i: u32, on: bool) {
    let mask = 1u64 << (i % 64);
    if on {
        bits[(i / 64) as usize] |= mask;
    } else {
        bits[(i / 64) as usize] &= !mask;
    }
}

/// The first index ≥ `from` that is `ok` and not linearized (`n` if none).
pub(super) fn next_pending_ok(ok: &[u64], linearized: &[u64], from: u32, n: u32) -> u32 {
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
pub(super) fn search(ops: &[KeyOp], registers: &mut Registers, limits: &Limits) -> (SearchResult, u64) {
    let appendable = registers.is_appendable();
    let relevant = without_unobservable_unknowns(ops, registers);
    let ops = &relevant[..];
    // On an appending key, reads still to come must be able to see the state's extensions.
    let mut growing = ReadConstraints::new(ops, registers, appendable);
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
    let mut memo: HashSet<Box<[u32]>, FxBuildHasher> = HashSet::default();
    let mut memory = 0u64;
    let mut key: Vec<u32> = Vec::new();
    let mut entry = events.first_choice(ops, registers, state);
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
            } else if let Some(new_state) = registers.apply(state, step).filter(|&s| {
                matches!(step, Step::Read(_)) || {
                    // The operation counts as linearized for the question.
                    set_bit(&mut linearized, op, true);
                    let allowed = growing.allows(s, ops, &linearized, registers);
                    set_bit(&mut linearized, op, false);
                    growing.unlinearized(op);
                    allowed
                }
            }) {
                // States an appending key reaches for the first time are memory too.
                memory += registers.take_new_bytes();
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
                    entry = events.first_choice(ops, registers, state);
                    continue;
                }
                set_bit(&mut linearized, op, false);
                growing.unlinearized(op);
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
            growing.unlinearized(frame.op);
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

/// A list of operations, in a fixed order, and the first of them not linearized yet.
struct Queue {
    ops: Vec<u32>,
    /// Per operation, its place in `ops` (`NIL` if absent).
    place: Vec<u32>,
    /// No operation before this place is unlinearized.
    hint: usize,
}

impl Queue {
    fn new(ops: Vec<u32>, n: usize) -> Queue {
        let mut place = vec![NIL; n];
        for (p, &op) in ops.iter().enumerate() {
            place[op as usize] = p as u32;
        }
        Queue { ops, place, hint: 0 }
    }

    /// The unlinearized operations in order, from the first.
    fn pending<'a>(&'a mut self, linearized: &'a [u64]) -> impl Iterator<Item = u32> + 'a {
        while self.hint < self.ops.len() && bit(linearized, self.ops[self.hint]) {
            self.hint += 1;
        }
        self.ops[self.hint..]
            .iter()
            .copied()
            .filter(move |&op| !bit(linearized, op))
    }

    fn unlinearized(&mut self, op: u32) {
        let place = self.place[op as usize];
        if place != NIL {
            self.hint = self.hint.min(place as usize);
        }
    }
}

/// Reads an appending key's state must still be able to reach.
///
/// Appending only extends a value, so a read that will be linearized before any further write,
/// cas or delete must return an extension of the current state; a state that fails this leads to
/// no linearization, and refusing it at once spares the search every order of the appends pending
/// with it — the k! that otherwise makes appending registers expensive, since each order is a
/// different value and the memo cannot merge them. Which reads come before any further reset:
/// once no reset is left to linearize, all of them, and since a linearizable history's reads are
/// prefixes of one another the shortest one decides; before that, those that complete before the
/// earliest remaining reset is invoked (the first few are asked). Asking fewer reads only prunes
/// less: any subset is sound.
///
/// A read that does not extend the state can still be reached through a reset — unless, on a key
/// of lists whose elements are each appended once, the list it read starts with an element whose
/// append is already linearized: a reset wipes that element, no append brings it back, and only a
/// write or cas of a list holding it could (the first few pending reads are asked that too).
struct ReadConstraints {
    on: bool,
    /// `ok` reads, shortest value first.
    by_length: Queue,
    /// `ok` reads, earliest completion first.
    by_completion: Queue,
    /// Writes, compare-and-sets and deletes, earliest invocation first.
    resets: Queue,
    /// Per element, the append that adds it — when every element is appended once and no
    /// append is a string (strings concatenate: their elements are not list elements).
    appender: Option<HashMap<u32, u32>>,
}

/// How many reads completing before the next reset are asked.
const READS_ASKED: usize = 3;

impl ReadConstraints {
    fn new(ops: &[KeyOp], registers: &Registers, appendable: bool) -> ReadConstraints {
        let n = if appendable { ops.len() } else { 0 };
        let reads: Vec<u32> = (0..n as u32)
            .filter(|&i| ops[i as usize].complete.is_some() && matches!(ops[i as usize].step, Step::Read(_)))
            .collect();
        let value = |i: u32| match ops[i as usize].step {
            Step::Read(v) => v,
            _ => ABSENT,
        };
        let mut by_length = reads.clone();
        by_length.sort_by_key(|&i| (registers.length(value(i)), i));
        let mut by_completion = reads;
        by_completion.sort_by_key(|&i| (ops[i as usize].complete, i));
        // Ops are sorted by invocation already.
        let resets: Vec<u32> = (0..n as u32)
            .filter(|&i| matches!(ops[i as usize].step, Step::Write(_) | Step::Cas { .. }))
            .collect();
        let mut appender = Some(HashMap::new());
        for i in 0..n as u32 {
            if let Step::Append(a) = ops[i as usize].step {
                match (registers.appended(a), appender.as_mut()) {
                    (Some((element, false)), Some(map)) if !map.contains_key(&element) => {
                        map.insert(element, i);
                    }
                    _ => appender = None,
                }
            }
        }
        ReadConstraints {
            on: appendable,
            by_length: Queue::new(by_length, n),
            by_completion: Queue::new(by_completion, n),
            resets: Queue::new(resets, n),
            appender: appender.filter(|_| appendable),
        }
    }

    /// Whether the register may hold `state` with what is linearized so far.
    fn allows(&mut self, state: State, ops: &[KeyOp], linearized: &[u64], registers: &Registers) -> bool {
        if !self.on {
            return true;
        }
        let read = |op: u32| match ops[op as usize].step {
            Step::Read(v) => v,
            _ => ABSENT,
        };
        match self.resets.pending(linearized).next() {
            None => match self.by_length.pending(linearized).next() {
                Some(shortest) => registers.extends(read(shortest), state),
                None => true,
            },
            Some(reset) => {
                let next_reset = ops[reset as usize].invoke;
                let appender = self.appender.as_ref();
                self.by_completion
                    .pending(linearized)
                    .take(READS_ASKED)
                    .all(|op| {
                        let value = read(op);
                        if registers.extends(value, state) {
                            return true;
                        }
                        if ops[op as usize].complete.is_some_and(|c| c < next_reset) {
                            return false;
                        }
                        // Only a reset can lead to this read: not if its first element is gone for good.
                        let gone = registers.first_element(value).is_some_and(|first| {
                            appender
                                .and_then(|a| a.get(&first))
                                .is_some_and(|&by| bit(linearized, by) && !registers.rewritten(first))
                        });
                        !gone
                    })
            }
        }
    }

    /// Called when an operation is taken back out of the linearization.
    fn unlinearized(&mut self, op: u32) {
        if self.on {
            self.by_length.unlinearized(op);
            self.by_completion.unlinearized(op);
            self.resets.unlinearized(op);
        }
    }
}

/// Drops unknown-outcome updates whose effect no operation could observe: no operation that
/// completes after the update's invocation (so could come after it) reads or expects the value it
/// writes (on an appending key: no read, cas or append at all, see [`referenced`]). Such an
/// update, if it took effect, was directly overwritten, so the history is linearizable with it
/// exactly when it is without it. Repeated to a fixpoint, since a dropped compare-and-set no
/// longer observes anything itself. On an appending key, unknown appends nobody saw go first
/// ([`Registers::never_seen`]).
fn without_unobservable_unknowns(ops: &[KeyOp], registers: &Registers) -> Vec<KeyOp> {
    let appendable = registers.is_appendable();
    // Unknown appends whose element nobody saw first: then the updates only they relied on.
    let mut keep: Vec<bool> = ops
        .iter()
        .map(|o| match o.step {
            Step::Append(a) if o.complete.is_none() => !registers.never_seen(a),
            _ => true,
        })
        .collect();
    loop {
        let mut latest_use: HashMap<State, u64> = HashMap::new();
        for (o, _) in ops.iter().zip(&keep).filter(|(_, k)| **k) {
            if let Some(v) = referenced(o, appendable) {
                let until = o.complete.unwrap_or(u64::MAX);
                let entry = latest_use.entry(v).or_insert(until);
                *entry = (*entry).max(until);
            }
        }
        let mut changed = false;
        for (i, o) in ops.iter().enumerate() {
            if keep[i] && o.complete.is_none() {
                let observed = written(o, appendable)
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
pub(super) fn memo_key(
    key: &mut Vec<u32>,
    state: State,
    pending: u32,
    high: u32,
    linearized: &[u64],
    unknown: &[u32],
) {
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
