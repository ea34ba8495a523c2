//! Property tests: histories generated from a sequential register model with random concurrent
//! timing are always accepted; the same histories with one injected stale or phantom read are
//! always rejected, and the violation reported always includes that read.

#[path = "common/model.rs"]
mod model;

use chaos_check::{Checker, History, Linearizability, OpKind, Outcome, Validity, Verdict};
use model::{Params, append_register_history, inject_violation, register_history};
use proptest::prelude::*;

fn params() -> impl Strategy<Value = Params> {
    (
        1usize..8,
        1usize..4,
        1usize..120,
        0.0..0.3f64,
        0.0..0.2f64,
        0u64..300,
        1u64..500,
        any::<bool>(),
    )
        .prop_map(
            |(clients, keys, ops, unknown, fail, max_gap_us, max_latency_us, unique_values)| Params {
                clients,
                keys,
                ops,
                unknown,
                fail,
                max_gap_us,
                max_latency_us,
                unique_values,
            },
        )
}

fn checker() -> Linearizability {
    Linearizability {
        threads: 1,
        ..Linearizability::default()
    }
}

/// The reported certificate of the first bad key: the core operations as recorded plus the context
/// ones as "unknown outcome", optionally with one core operation relaxed too.
fn certificate(h: &History, v: &Verdict, relaxed: Option<u64>) -> History {
    let first = &v.details["invalid"][0];
    let ids = |f: &str| -> Vec<u64> {
        first[f]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect()
    };
    let (core, context) = (ids("ops"), ids("context_ops"));
    let mut c = History::new(h.header.clone());
    for op in h
        .ops
        .iter()
        .filter(|o| core.contains(&o.id) || context.contains(&o.id))
    {
        let relax = !core.contains(&op.id) || Some(op.id) == relaxed;
        match (relax, op.kind) {
            (false, _) => c.ops.push(op.clone()),
            (true, OpKind::Read) => {}
            (true, _) => c.ops.push(chaos_check::Op {
                outcome: Outcome::Unknown,
                ..op.clone()
            }),
        }
    }
    c
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn histories_from_the_model_are_accepted(seed in any::<u64>(), p in params()) {
        let h = register_history(seed, &p);
        let v = checker().check(&h);
        prop_assert_eq!(v.valid, Validity::Valid, "{}", v.explanation);
    }

    #[test]
    fn appending_register_histories_from_the_model_are_accepted(
        seed in any::<u64>(),
        p in params(),
        resets in any::<bool>(),
    ) {
        let h = append_register_history(seed, &p, resets);
        let v = checker().check(&h);
        prop_assert_eq!(v.valid, Validity::Valid, "{}", v.explanation);
    }

    #[test]
    fn the_order_of_records_does_not_matter(seed in any::<u64>(), p in params()) {
        let mut h = register_history(seed, &p);
        let before = checker().check(&h);
        h.ops.reverse();
        prop_assert_eq!(checker().check(&h), before);
    }

    #[test]
    fn an_injected_stale_or_phantom_read_is_rejected(seed in any::<u64>(), p in params()) {
        let p = Params { unique_values: true, ..p };
        let mut h = register_history(seed, &p);
        let bad = inject_violation(&mut h, seed);
        let v = checker().check(&h);
        prop_assert_eq!(v.valid, Validity::Invalid, "injected #{}: {}", bad, v.explanation);
        // The rest of the history is linearizable, so the changed read must be in every certificate.
        prop_assert!(v.ops.contains(&bad), "#{} not in {:?}: {}", bad, v.ops, v.explanation);
        // The certificate is sound (still invalid on its own) and minimal (relaxing any one of its
        // acknowledged operations makes it linearizable).
        prop_assert_eq!(checker().check(&certificate(&h, &v, None)).valid, Validity::Invalid);
        for id in &v.ops {
            let relaxed = certificate(&h, &v, Some(*id));
            if !relaxed.ops.is_empty() {
                prop_assert_eq!(checker().check(&relaxed).valid, Validity::Valid, "relaxing #{}", id);
            }
        }
    }

    #[test]
    fn histories_survive_a_round_trip_through_json_lines(seed in any::<u64>(), p in params()) {
        let h = register_history(seed, &p);
        let mut text = Vec::new();
        h.write_jsonl(&mut text).unwrap();
        let back = History::parse(std::str::from_utf8(&text).unwrap(), "round-trip").unwrap();
        prop_assert_eq!(back.ops.len(), h.ops.len());
        prop_assert_eq!(checker().check(&back), checker().check(&h));
    }
}

/// The appending register's rules, written out on JSON values (independently of the checker's
/// trie of states): a string onto a string or nothing concatenates, anything onto a list or
/// nothing extends a list, anything else is impossible.
fn append_to(state: &serde_json::Value, element: &serde_json::Value) -> Option<serde_json::Value> {
    use serde_json::Value;
    match (state, element) {
        (Value::Null, Value::String(s)) => Some(Value::String(s.clone())),
        (Value::String(a), Value::String(b)) => Some(Value::String(format!("{a}{b}"))),
        (Value::Null, other) => Some(Value::Array(vec![other.clone()])),
        (Value::Array(items), other) => {
            let mut items = items.clone();
            items.push(other.clone());
            Some(Value::Array(items))
        }
        _ => None,
    }
}

/// Equality of register values; on an appending key every empty value (`null`, `""`, `[]`) is the
/// same.
fn same(appendable: bool, a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    let empty = |v: &Value| match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(items) => items.is_empty(),
        _ => false,
    };
    a == b || (appendable && empty(a) && empty(b))
}

/// A brute-force reference: tries every subset of the unknown-outcome updates and every order of
/// the chosen operations against a register, respecting real time (an operation that completed
/// before another was invoked comes first; equal times count as concurrent). One key.
fn brute_force_linearizable(h: &History) -> bool {
    use chaos_check::Op;
    use serde_json::Value;
    let appendable = h.ops.iter().any(|o| o.kind == OpKind::Append);
    let ops: Vec<&Op> = h
        .ops
        .iter()
        .filter(|o| o.outcome != Outcome::Fail && !(o.kind == OpKind::Read && o.outcome != Outcome::Ok))
        .collect();
    let must: Vec<&Op> = ops.iter().copied().filter(|o| o.outcome == Outcome::Ok).collect();
    let maybe: Vec<&Op> = ops
        .iter()
        .copied()
        .filter(|o| o.outcome == Outcome::Unknown)
        .collect();
    let end = |o: &Op| {
        if o.outcome == Outcome::Ok {
            o.complete_us.unwrap()
        } else {
            u64::MAX
        }
    };
    fn orders(rest: &mut Vec<&Op>, state: &Value, end: &dyn Fn(&Op) -> u64, appendable: bool) -> bool {
        if rest.is_empty() {
            return true;
        }
        for i in 0..rest.len() {
            let op = rest[i];
            // Every other remaining operation must not have completed before this one was invoked.
            if rest.iter().any(|other| end(other) < op.invoke_us) {
                continue;
            }
            let null = Value::Null;
            let value = op.value.as_ref().unwrap_or(&null);
            let next = match op.kind {
                OpKind::Read if same(appendable, value, state) => state.clone(),
                OpKind::Read => continue,
                OpKind::Write => value.clone(),
                OpKind::Delete => Value::Null,
                OpKind::Cas if same(appendable, op.expected.as_ref().unwrap_or(&null), state) => {
                    value.clone()
                }
                OpKind::Append => match append_to(state, value) {
                    Some(next) => next,
                    None => continue,
                },
                _ => continue,
            };
            rest.remove(i);
            let found = orders(rest, &next, end, appendable);
            rest.insert(i, op);
            if found {
                return true;
            }
        }
        false
    }
    (0u32..1 << maybe.len()).any(|mask| {
        let mut rest: Vec<&Op> = must.clone();
        rest.extend(
            maybe
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, o)| *o),
        );
        orders(&mut rest, &serde_json::Value::Null, &end, appendable)
    })
}

/// Arbitrary small single-key histories: random kinds, values from a tiny domain, random times and
/// outcomes — most are not linearizable, which is the point.
fn arbitrary_history() -> impl Strategy<Value = History> {
    let value = prop_oneof![
        Just(serde_json::Value::Null),
        (0i64..3).prop_map(serde_json::Value::from)
    ];
    let op = (0u8..4, value.clone(), value, 0u64..20, 0u64..10, 0u8..20);
    proptest::collection::vec(op, 1..8).prop_map(|ops| {
        let mut h = History::new(chaos_check::Header::new());
        for (i, (kind, v, expected, invoke, duration, outcome)) in ops.into_iter().enumerate() {
            let kind = [OpKind::Read, OpKind::Write, OpKind::Cas, OpKind::Delete][kind as usize];
            let outcome = match outcome {
                0..=11 => Outcome::Ok,
                12..=16 => Outcome::Unknown,
                _ => Outcome::Fail,
            };
            let mut op = chaos_check::Op::new(i as u64 + 1, i as u64, kind, invoke, outcome).key("x");
            op.complete_us = Some(invoke + duration);
            match kind {
                OpKind::Read => op.value = Some(v),
                OpKind::Write => {
                    op.value = Some(if v.is_null() {
                        serde_json::Value::from(9)
                    } else {
                        v
                    })
                }
                OpKind::Cas => {
                    op.value = Some(v);
                    op.expected = Some(expected);
                }
                _ => {}
            }
            h.ops.push(op);
        }
        h
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// The optimized search (memoization, forced reads, interchangeable unknowns, pruning of
    /// unobservable unknowns) agrees with brute force on small arbitrary histories.
    #[test]
    fn agrees_with_brute_force(h in arbitrary_history()) {
        let expected = if brute_force_linearizable(&h) { Validity::Valid } else { Validity::Invalid };
        let v = checker().check(&h);
        prop_assert_eq!(v.valid, expected, "{}", v.explanation);
        if expected == Validity::Invalid {
            prop_assert_eq!(checker().check(&certificate(&h, &v, None)).valid, Validity::Invalid);
        }
    }
}

/// Arbitrary small histories of one appending register: appends of strings and numbers, reads of
/// strings, lists and empties, writes and compare-and-sets — a mix where the string and list rules,
/// empty values and impossible appends all come up.
fn arbitrary_append_history() -> impl Strategy<Value = History> {
    use serde_json::json;
    let read_value = prop_oneof![
        Just(json!(null)),
        Just(json!("")),
        Just(json!([])),
        Just(json!("a")),
        Just(json!("ab")),
        Just(json!("ba")),
        Just(json!("aab")),
        Just(json!([1])),
        Just(json!([1, 2])),
        Just(json!([2, 1])),
        Just(json!(["a"])),
        Just(json!(5)),
    ];
    let element = prop_oneof![Just(json!("a")), Just(json!("b")), Just(json!(1)), Just(json!(2))];
    let written = prop_oneof![Just(json!("a")), Just(json!([])), Just(json!(5)), Just(json!(""))];
    let op = (
        0u8..10,
        read_value.clone(),
        element,
        written,
        read_value,
        0u64..20,
        0u64..10,
        0u8..20,
    );
    proptest::collection::vec(op, 1..8).prop_map(|ops| {
        let mut h = History::new(chaos_check::Header::new());
        for (i, (kind, read, element, written, expected, invoke, duration, outcome)) in
            ops.into_iter().enumerate()
        {
            let kind = match kind {
                0..=3 => OpKind::Append,
                4..=6 => OpKind::Read,
                7 => OpKind::Write,
                8 => OpKind::Cas,
                _ => OpKind::Delete,
            };
            let outcome = match outcome {
                0..=11 => Outcome::Ok,
                12..=16 => Outcome::Unknown,
                _ => Outcome::Fail,
            };
            let mut op = chaos_check::Op::new(i as u64 + 1, i as u64, kind, invoke, outcome).key("x");
            op.complete_us = Some(invoke + duration);
            match kind {
                OpKind::Append => op.value = Some(element),
                OpKind::Read => op.value = Some(read),
                OpKind::Write => op.value = Some(written),
                OpKind::Cas => {
                    op.value = Some(written);
                    op.expected = Some(expected);
                }
                _ => {}
            }
            h.ops.push(op);
        }
        // The key is appending whatever the outcomes: at least one append is there.
        if !h.ops.iter().any(|o| o.kind == OpKind::Append) {
            let end = h.end_us();
            h.ops.push(
                chaos_check::Op::new(99, 99, OpKind::Append, end + 1, Outcome::Fail)
                    .key("x")
                    .value("z")
                    .complete(end + 2),
            );
        }
        h
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    /// Appending registers: the search (with its trie of states built on demand, and the same
    /// reductions) agrees with brute force on JSON values; a violation's certificate is sound.
    #[test]
    fn append_registers_agree_with_brute_force(h in arbitrary_append_history()) {
        let expected = if brute_force_linearizable(&h) { Validity::Valid } else { Validity::Invalid };
        let v = checker().check(&h);
        prop_assert_eq!(v.valid, expected, "{}", v.explanation);
        if expected == Validity::Invalid {
            prop_assert_eq!(checker().check(&certificate(&h, &v, None)).valid, Validity::Invalid);
        }
    }
}

/// Arbitrary small histories of one list register whose appends add distinct elements, with
/// writes of lists that hold some of those elements: what lets the search rule out reads whose
/// first element is gone for good (and what must keep it from doing so when a write brings the
/// element back).
fn arbitrary_unique_append_history() -> impl Strategy<Value = History> {
    use serde_json::json;
    let list = proptest::collection::vec(1i64..4, 0..4).prop_map(|l| json!(l));
    let written = prop_oneof![
        Just(json!([])),
        Just(json!([1])),
        Just(json!([2, 1])),
        Just(json!([3]))
    ];
    let op = (0u8..10, list.clone(), written, list, 0u64..20, 0u64..10, 0u8..20);
    proptest::collection::vec(op, 1..8).prop_map(|ops| {
        let mut h = History::new(chaos_check::Header::new());
        let mut next = 0i64;
        for (i, (kind, read, written, expected, invoke, duration, outcome)) in ops.into_iter().enumerate() {
            let kind = match kind {
                0..=3 => OpKind::Append,
                4..=6 => OpKind::Read,
                7 | 8 => OpKind::Write,
                _ => OpKind::Cas,
            };
            let outcome = match outcome {
                0..=11 => Outcome::Ok,
                12..=16 => Outcome::Unknown,
                _ => Outcome::Fail,
            };
            let mut op = chaos_check::Op::new(i as u64 + 1, i as u64, kind, invoke, outcome).key("x");
            op.complete_us = Some(invoke + duration);
            match kind {
                OpKind::Append => {
                    next += 1;
                    op.value = Some(json!(next));
                }
                OpKind::Read => op.value = Some(read),
                OpKind::Write => op.value = Some(written),
                _ => {
                    op.value = Some(written);
                    op.expected = Some(expected);
                }
            }
            h.ops.push(op);
        }
        if !h.ops.iter().any(|o| o.kind == OpKind::Append) {
            let end = h.end_us();
            h.ops.push(
                chaos_check::Op::new(99, 99, OpKind::Append, end + 1, Outcome::Fail)
                    .key("x")
                    .value(9)
                    .complete(end + 2),
            );
        }
        h
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    /// Lists of distinct appended elements, rewritten by writes and compare-and-sets: the search
    /// agrees with brute force.
    #[test]
    fn list_registers_agree_with_brute_force(h in arbitrary_unique_append_history()) {
        let expected = if brute_force_linearizable(&h) { Validity::Valid } else { Validity::Invalid };
        let v = checker().check(&h);
        prop_assert_eq!(v.valid, expected, "{}", v.explanation);
    }
}
