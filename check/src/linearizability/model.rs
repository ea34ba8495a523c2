//! The register model the search runs against: values interned as small integers ([`State`]),
//! operations as [`Step`]s, and for keys with `append` operations the values appending can build.
//!
//! A plain register (read, write, cas, delete) only ever holds a value some operation wrote, so
//! every state is interned before the search starts and a step is a pure function of two
//! integers. An appending register (porcupine's key-value model: `append` concatenates strings;
//! here also lists) can reach values nobody wrote, so its states are made on demand, as nodes of a
//! trie: a string is the path of its characters from the empty string, a list the path of its
//! elements from the empty list. Equal values are the same node however they were built (`"ab"`
//! plus `"c"` and `"a"` plus `"bc"` meet), a transition costs the length of what is appended (then
//! it is cached), and memory grows by a node per character or element actually reached — which
//! the search counts against its memory budget.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::Value;

use crate::history::{History, OpKind, Outcome};

/// Register state: an interned value; 0 is "absent".
pub(super) type State = u32;
pub(super) const ABSENT: State = 0;
/// The state after writing a value that no operation ever reads or expects (plain keys only).
pub(super) const UNOBSERVED: State = State::MAX;
/// What a read or cas of an empty value (`null`, `""`, `[]`) refers to on an appending key: any
/// empty register matches, since stores that append seldom tell a missing key from an empty one.
pub(super) const ANY_EMPTY: State = State::MAX - 1;

/// An operation's effect on the register model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Step {
    Read(State),
    Write(State),
    Cas {
        expected: State,
        new: State,
    },
    /// Append the element with this index in [`Registers::appends`].
    Append(u32),
}

/// One operation of a single key, as the search sees it.
#[derive(Debug, Clone)]
pub(super) struct KeyOp {
    pub id: u64,
    pub invoke: u64,
    /// `None`: unknown outcome, may take effect any time after `invoke`, or never.
    pub complete: Option<u64>,
    pub step: Step,
}

/// All register operations on one key.
pub(super) struct KeyHistory {
    pub key: String,
    pub ops: Vec<KeyOp>,
    /// The values appending can reach (empty for a plain key).
    pub registers: Registers,
}

/// What kind of value a state is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Absent,
    /// A value appending cannot extend (a number, object, boolean; any value on a plain key).
    Atom,
    Str,
    List,
}

/// An element some `append` adds.
#[derive(Debug, Clone)]
struct Appended {
    /// Its characters, when it is a string (appended to a string state, they extend it).
    chars: Option<Box<[u32]>>,
    /// Its id as a list element.
    element: u32,
    /// No read or cas could have seen it (see [`Registers::never_seen`]).
    never_seen: bool,
}

/// The states of one appending key and how `append` moves between them. Empty for plain keys.
#[derive(Debug, Clone, Default)]
pub(super) struct Registers {
    appendable: bool,
    shapes: Vec<Shape>,
    /// Per state: its length (characters or elements) on its trie; 0 off the tries.
    depth: Vec<u32>,
    /// Per non-empty value read or expected on an appending key: the states of its prefixes,
    /// by length, so "is state S a prefix of it" is one lookup ([`Registers::extends`]).
    paths: HashMap<State, Box<[State]>>,
    /// Trie edges: (string or list state, character or element id) → the extended state.
    children: HashMap<(State, u32), State>,
    /// List elements, by their canonical JSON text.
    elements: HashMap<String, u32>,
    appends: Vec<Appended>,
    /// (state, append) → the state after it, or [`NOT_ALLOWED`].
    cache: HashMap<(State, u32), State>,
    /// Bytes added since the search last asked.
    new_bytes: u64,
    /// Elements of the lists written or swapped in (the only way an element comes back after a
    /// write wiped it, elements being appended once).
    reset_elements: HashSet<u32>,
    /// Per list read (by state): its first element.
    first_elements: HashMap<State, u32>,
}

/// What the reads and compare-and-sets of an appending key could have seen appended.
#[derive(Debug, Default)]
struct Seen {
    /// Elements of the lists read or expected.
    elements: HashSet<u32>,
    /// Strings read or expected.
    strings: Vec<String>,
}

const NOT_ALLOWED: State = State::MAX;
const EMPTY_STRING: State = 1;
const EMPTY_LIST: State = 2;
/// Rough cost of a hash-map entry with its share of the table, for the memory budget.
const ENTRY_BYTES: u64 = 32;

impl Registers {
    fn appendable() -> Registers {
        Registers {
            appendable: true,
            shapes: vec![Shape::Absent, Shape::Str, Shape::List],
            depth: vec![0, 0, 0],
            ..Registers::default()
        }
    }

    /// Whether this key has `append` operations (and so the appending model's rules).
    pub fn is_appendable(&self) -> bool {
        self.appendable
    }

    /// An appended element's id and whether it is a string, per append.
    pub fn appended(&self, append: u32) -> Option<(u32, bool)> {
        self.appends
            .get(append as usize)
            .map(|a| (a.element, a.chars.is_some()))
    }

    /// The first element of a list read (by its state), if it is a non-empty list.
    pub fn first_element(&self, read: State) -> Option<u32> {
        self.first_elements.get(&read).copied()
    }

    /// Whether some write or cas puts this element in the register.
    pub fn rewritten(&self, element: u32) -> bool {
        self.reset_elements.contains(&element)
    }

    /// Whether an append's element shows up in no value read or expected, on a key whose appends
    /// are all strings or all non-strings. Such an append, if it took effect, was wiped by a
    /// blind write before anything read the key again — else that read (or cas) would hold its
    /// element — so it changed nothing anyone saw; and since the appends agree in kind it cannot
    /// have been what made a later append possible either. A history is linearizable with it
    /// exactly when it is without it, so an unknown one can be left out of the search.
    pub fn never_seen(&self, append: u32) -> bool {
        self.appends.get(append as usize).is_some_and(|a| a.never_seen)
    }

    /// The memory added since the last call (for the search's memory budget).
    pub fn take_new_bytes(&mut self) -> u64 {
        std::mem::take(&mut self.new_bytes)
    }

    fn new_state(&mut self, shape: Shape, depth: u32) -> State {
        self.shapes.push(shape);
        self.depth.push(depth);
        self.new_bytes += ENTRY_BYTES;
        (self.shapes.len() - 1) as State
    }

    fn child(&mut self, parent: State, label: u32, shape: Shape) -> State {
        if let Some(&child) = self.children.get(&(parent, label)) {
            return child;
        }
        let depth = self.depth.get(parent as usize).copied().unwrap_or(0) + 1;
        let child = self.new_state(shape, depth);
        self.children.insert((parent, label), child);
        child
    }

    fn element(&mut self, value: &Value) -> u32 {
        let next = self.elements.len() as u32;
        *self.elements.entry(value.to_string()).or_insert(next)
    }

    fn is_empty(&self, state: State) -> bool {
        state == ABSENT || (self.appendable && (state == EMPTY_STRING || state == EMPTY_LIST))
    }

    /// Applies a step; `None` when the model forbids it in this state.
    #[inline]
    pub fn apply(&mut self, state: State, step: Step) -> Option<State> {
        match step {
            Step::Read(v) => self.matches(state, v).then_some(state),
            Step::Write(v) => Some(v),
            Step::Cas { expected, new } => self.matches(state, expected).then_some(new),
            Step::Append(a) => self.append(state, a),
        }
    }

    /// The length of the value a read refers to (0 for empties and values off the tries).
    pub fn length(&self, read: State) -> u32 {
        self.depth.get(read as usize).copied().unwrap_or(0)
    }

    /// Whether a read of `read` could still match after the register holds `state`, if only
    /// appends follow: appending only extends a value, so `state` must be a prefix of `read`.
    pub fn extends(&self, read: State, state: State) -> bool {
        if read == ANY_EMPTY {
            return self.is_empty(state);
        }
        if state == ABSENT {
            // Appending to nothing starts a string or a list.
            return read == ABSENT || self.paths.contains_key(&read);
        }
        match (self.paths.get(&read), self.depth.get(state as usize)) {
            (Some(path), Some(&depth)) => path.get(depth as usize) == Some(&state),
            _ => read == state,
        }
    }

    #[inline]
    fn matches(&self, state: State, reference: State) -> bool {
        reference == state || (reference == ANY_EMPTY && self.is_empty(state))
    }

    fn append(&mut self, state: State, append: u32) -> Option<State> {
        if let Some(&next) = self.cache.get(&(state, append)) {
            return (next != NOT_ALLOWED).then_some(next);
        }
        let shape = self.shapes.get(state as usize).copied().unwrap_or(Shape::Atom);
        let appended = self.appends[append as usize].clone();
        let next = match (shape, &appended.chars) {
            // A string onto a string, or onto nothing: concatenation (porcupine's kv model).
            (Shape::Absent, Some(chars)) | (Shape::Str, Some(chars)) => {
                let mut at = if shape == Shape::Absent {
                    EMPTY_STRING
                } else {
                    state
                };
                for &c in chars.iter() {
                    at = self.child(at, c, Shape::Str);
                }
                at
            }
            (Shape::Absent, None) => self.child(EMPTY_LIST, appended.element, Shape::List),
            (Shape::List, _) => self.child(state, appended.element, Shape::List),
            // A non-string onto a string, or anything onto a number, object or boolean.
            (Shape::Str, None) | (Shape::Atom, _) => NOT_ALLOWED,
        };
        self.cache.insert((state, append), next);
        self.new_bytes += ENTRY_BYTES;
        (next != NOT_ALLOWED).then_some(next)
    }
}

/// Interns one key's values while its operations are read.
struct Interner {
    atoms: HashMap<String, State>,
    registers: Registers,
    seen: Seen,
}

impl Interner {
    fn new(appendable: bool) -> Interner {
        let registers = if appendable {
            Registers::appendable()
        } else {
            Registers {
                shapes: vec![Shape::Absent],
                depth: vec![0],
                ..Registers::default()
            }
        };
        Interner {
            atoms: HashMap::new(),
            registers,
            seen: Seen::default(),
        }
    }

    /// The state holding exactly this value.
    fn state(&mut self, value: &Value) -> State {
        let r = &mut self.registers;
        match value {
            Value::Null => ABSENT,
            Value::String(s) if r.appendable => s
                .chars()
                .fold(EMPTY_STRING, |at, c| r.child(at, c as u32, Shape::Str)),
            Value::Array(items) if r.appendable => items.iter().fold(EMPTY_LIST, |at, item| {
                let element = r.element(item);
                r.child(at, element, Shape::List)
            }),
            other => {
                let text = other.to_string();
                if let Some(&state) = self.atoms.get(&text) {
                    return state;
                }
                let state = r.new_state(Shape::Atom, 0);
                self.atoms.insert(text, state);
                state
            }
        }
    }

    /// What a read or cas of this value matches.
    fn reference(&mut self, value: &Value) -> State {
        let empty = match value {
            Value::Null => true,
            Value::String(s) => s.is_empty(),
            Value::Array(items) => items.is_empty(),
            _ => false,
        };
        if !self.registers.appendable {
            return self.state(value);
        }
        if empty {
            return ANY_EMPTY;
        }
        let mut first = None;
        match value {
            Value::String(s) => self.seen.strings.push(s.clone()),
            Value::Array(items) => {
                for item in items {
                    let element = self.registers.element(item);
                    first.get_or_insert(element);
                    self.seen.elements.insert(element);
                }
            }
            _ => {}
        }
        let state = self.state(value);
        if let Some(first) = first {
            self.registers.first_elements.insert(state, first);
        }
        let r = &mut self.registers;
        if matches!(value, Value::String(_) | Value::Array(_)) && !r.paths.contains_key(&state) {
            // Walk the trie down to the value again, noting every prefix.
            let mut path = Vec::with_capacity(r.depth[state as usize] as usize + 1);
            let mut at = if value.is_string() {
                EMPTY_STRING
            } else {
                EMPTY_LIST
            };
            path.push(at);
            match value {
                Value::String(s) => {
                    for c in s.chars() {
                        at = r.child(at, c as u32, Shape::Str);
                        path.push(at);
                    }
                }
                Value::Array(items) => {
                    for item in items {
                        let element = r.element(item);
                        at = r.child(at, element, Shape::List);
                        path.push(at);
                    }
                }
                _ => {}
            }
            r.paths.insert(state, path.into_boxed_slice());
        }
        state
    }

    /// The state a write or cas puts in the register, noting the elements it brings.
    fn reset(&mut self, value: &Value) -> State {
        if let (true, Value::Array(items)) = (self.registers.appendable, value) {
            for item in items {
                let element = self.registers.element(item);
                self.registers.reset_elements.insert(element);
            }
        }
        self.state(value)
    }

    /// Marks the appends no read or cas could have seen (see [`Registers::never_seen`]), once all
    /// operations are interned.
    fn finish(mut self, appended: &[(u32, Option<String>)]) -> Registers {
        let r = &mut self.registers;
        let strings = r.appends.iter().filter(|a| a.chars.is_some()).count();
        let mixed = strings != 0 && strings != r.appends.len();
        if !mixed {
            for (id, text) in appended {
                let a = &mut r.appends[*id as usize];
                let as_element = self.seen.elements.contains(&a.element);
                let as_text = text.as_ref().is_some_and(|t| {
                    t.is_empty() || self.seen.strings.iter().any(|s| s.contains(t.as_str()))
                });
                a.never_seen = !as_element && !as_text;
            }
        }
        self.registers
    }

    fn append(&mut self, value: &Value) -> Step {
        let r = &mut self.registers;
        let element = r.element(value);
        let chars = value.as_str().map(|s| s.chars().map(|c| c as u32).collect());
        r.appends.push(Appended {
            chars,
            element,
            never_seen: false,
        });
        Step::Append((r.appends.len() - 1) as u32)
    }
}

/// Splits a history into per-key register histories (keys in sorted order, ops by invocation).
pub(super) fn key_histories(history: &History) -> Vec<KeyHistory> {
    // A key follows the appending model's rules when any operation appends to it, whatever its
    // outcome: the rules must not depend on which operations took effect.
    let appendable: HashSet<&str> = history
        .ops
        .iter()
        .filter(|o| o.kind == OpKind::Append)
        .filter_map(|o| o.key.as_deref())
        .collect();
    // Per key: its interner, its operations, and each append's id with its text (if a string).
    type KeyEntry = (Interner, Vec<KeyOp>, Vec<(u32, Option<String>)>);
    let mut keys: BTreeMap<&str, KeyEntry> = BTreeMap::new();
    for op in &history.ops {
        if !op.kind.is_register() || op.outcome == Outcome::Fail {
            continue;
        }
        // Reads that did not return constrain nothing.
        if op.kind == OpKind::Read && op.outcome != Outcome::Ok {
            continue;
        }
        let Some(key) = op.key.as_deref() else { continue };
        let (interner, ops, appended) = keys
            .entry(key)
            .or_insert_with(|| (Interner::new(appendable.contains(key)), Vec::new(), Vec::new()));
        let null = Value::Null;
        let value = op.value.as_ref().unwrap_or(&null);
        let step = match op.kind {
            OpKind::Read => Step::Read(interner.reference(value)),
            OpKind::Write => Step::Write(interner.reset(value)),
            OpKind::Delete => Step::Write(ABSENT),
            OpKind::Cas => {
                let expected = interner.reference(op.expected.as_ref().unwrap_or(&null));
                Step::Cas {
                    expected,
                    new: interner.reset(value),
                }
            }
            OpKind::Append => {
                let step = interner.append(value);
                if let Step::Append(id) = step {
                    appended.push((id, value.as_str().map(str::to_string)));
                }
                step
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
        .map(|(key, (interner, mut ops, appended))| {
            sort_ops(&mut ops);
            let mut registers = interner.finish(&appended);
            if !registers.appendable {
                merge_unobserved_values(&mut ops);
            }
            // Interning is not the search's memory.
            registers.new_bytes = 0;
            KeyHistory {
                key: key.to_string(),
                ops,
                registers,
            }
        })
        .collect()
}

/// Maps every written value that no operation reads or expects to one state, [`UNOBSERVED`]: no
/// operation can tell such values apart, so the search need not either, and its memo merges the
/// configurations that differ only in which of them the register holds. Plain keys only: on an
/// appending key a value nobody reads may still be appended to and read as part of a longer one.
fn merge_unobserved_values(ops: &mut [KeyOp]) {
    let observed: HashSet<State> = ops.iter().filter_map(|o| referenced(o, false)).collect();
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
            other => other,
        };
    }
}

pub(super) fn sort_ops(ops: &mut [KeyOp]) {
    ops.sort_by_key(|o| (o.invoke, o.complete.unwrap_or(u64::MAX), o.id));
}

/// The value an operation relies on finding in the register: what a read returned, what a cas
/// expected. On an appending key every such value is one bucket (0), and an `append` relies on it
/// too: what an update there leads to depends on what came before, and whether an append may
/// happen at all depends on the value's shape (a number cannot be appended to a string), so
/// "nobody relies on the value it writes" cannot be told per value or by reads alone.
pub(super) fn referenced(op: &KeyOp, appendable: bool) -> Option<State> {
    let v = match op.step {
        Step::Read(v) => v,
        Step::Cas { expected, .. } => expected,
        Step::Append(_) if appendable => 0,
        Step::Write(_) | Step::Append(_) => return None,
    };
    Some(if appendable { 0 } else { v })
}

/// The value an update leaves in the register (bucketed like [`referenced`] on appending keys).
pub(super) fn written(op: &KeyOp, appendable: bool) -> Option<State> {
    let v = match op.step {
        Step::Read(_) => return None,
        Step::Write(v) | Step::Cas { new: v, .. } => v,
        Step::Append(_) => 0,
    };
    Some(if appendable { 0 } else { v })
}
