//! Hand-written histories that are and are not linearizable, unknown outcomes both ways, budgets,
//! and the soundness and minimality of reported violations.

#[path = "common/model.rs"]
mod model;

use std::time::{Duration, Instant};

use chaos_check::{
    Budget, Checker, FaultEvent, FaultPhase, Header, History, Linearizability, Minimize, Op, OpKind, Outcome,
    Validity, Verdict,
};
use serde_json::Value;

fn history(ops: Vec<Op>) -> History {
    let mut h = History::new(Header {
        nodes: vec!["n1".into(), "n2".into(), "n3".into()],
        ..Header::new()
    });
    h.ops = ops;
    h
}

fn write(id: u64, client: u64, key: &str, value: i64, span: (u64, u64)) -> Op {
    Op::new(id, client, OpKind::Write, span.0, Outcome::Ok)
        .key(key)
        .value(value)
        .complete(span.1)
}

fn read(id: u64, client: u64, key: &str, value: Option<i64>, span: (u64, u64)) -> Op {
    let v = value.map(Value::from).unwrap_or(Value::Null);
    Op::new(id, client, OpKind::Read, span.0, Outcome::Ok)
        .key(key)
        .value(v)
        .complete(span.1)
}

fn cas(id: u64, client: u64, key: &str, from: i64, to: i64, span: (u64, u64)) -> Op {
    Op::new(id, client, OpKind::Cas, span.0, Outcome::Ok)
        .key(key)
        .expected(from)
        .value(to)
        .complete(span.1)
}

fn unknown(mut op: Op) -> Op {
    op.outcome = Outcome::Unknown;
    op.error = Some("timeout".into());
    op
}

fn check(h: &History) -> Verdict {
    Linearizability::default().check(h)
}

/// Ids of the offending operations and of the "may have happened" context of the first bad key.
fn violation(v: &Verdict) -> (Vec<u64>, Vec<u64>) {
    let first = &v.details["invalid"][0];
    let ids = |f: &str| {
        first[f]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect()
    };
    (ids("ops"), ids("context_ops"))
}

/// A reported violation must be a real certificate: the core operations, with the context ones
/// relaxed to "unknown outcome", are still not linearizable; and it must be minimal: relaxing any
/// single core operation makes it linearizable.
fn assert_sound_and_minimal(h: &History, v: &Verdict) {
    let (core, context) = violation(v);
    let certificate = |relaxed: Option<u64>| {
        let ops = h
            .ops
            .iter()
            .filter(|o| core.contains(&o.id) || context.contains(&o.id))
            .filter_map(|o| {
                let relax = !core.contains(&o.id) || Some(o.id) == relaxed;
                match (relax, o.kind) {
                    (false, _) => Some(o.clone()),
                    (true, OpKind::Read) => None,
                    (true, _) => Some(unknown(o.clone())),
                }
            })
            .collect();
        history(ops)
    };
    assert_eq!(
        check(&certificate(None)).valid,
        Validity::Invalid,
        "the certificate itself must be invalid"
    );
    for id in &core {
        let relaxed = certificate(Some(*id));
        if relaxed.ops.is_empty() {
            continue; // nothing left: trivially linearizable
        }
        assert_eq!(
            check(&relaxed).valid,
            Validity::Valid,
            "relaxing #{id} should make the certificate linearizable, so #{id} belongs in it"
        );
    }
}

#[test]
fn stale_read_after_a_partition_is_not_linearizable() {
    // Client 0 writes 1 through n1; n1 is cut off; client 1 writes 2 through the majority; client 2
    // then reads through the isolated n1 and sees the old value.
    let mut h = history(vec![
        write(1, 0, "x", 1, (0, 10)).node("n1"),
        write(2, 1, "x", 2, (30, 40)).node("n2"),
        read(3, 2, "x", Some(1), (50, 60)).node("n1"),
        read(4, 1, "y", None, (50, 60)).node("n2"),
    ]);
    h.faults.push(FaultEvent {
        event: FaultPhase::Injected,
        case: "isolate-n1".into(),
        kind: "partition".into(),
        nodes: vec!["n1".into()],
        time_us: 20,
        detail: Some("n1 | n2 n3".into()),
    });
    let v = check(&h);
    assert_eq!(v.valid, Validity::Invalid, "{}", v.explanation);
    assert_eq!(v.ops, vec![1, 2, 3]);
    assert!(v.explanation.contains("Key \"x\""), "{}", v.explanation);
    assert_eq!(v.details["keys"], 2);
    assert_eq!(v.details["valid_keys"], 1);
    assert_sound_and_minimal(&h, &v);

    // The same history reading the new value is fine.
    h.ops[2] = read(3, 2, "x", Some(2), (50, 60));
    assert_eq!(check(&h).valid, Validity::Valid);
}

#[test]
fn a_read_concurrent_with_a_write_may_see_either_value() {
    for seen in [1, 2] {
        let h = history(vec![
            write(1, 0, "x", 1, (0, 10)),
            write(2, 1, "x", 2, (20, 40)),
            read(3, 2, "x", Some(seen), (30, 50)),
        ]);
        assert_eq!(check(&h).valid, Validity::Valid, "read {seen}");
    }
}

#[test]
fn a_lost_write_is_not_linearizable() {
    let h = history(vec![
        write(1, 0, "x", 1, (0, 10)),
        read(2, 1, "x", Some(1), (20, 30)),
        write(3, 0, "x", 2, (40, 50)),
        read(4, 1, "x", Some(1), (60, 70)),
    ]);
    let v = check(&h);
    assert_eq!(v.valid, Validity::Invalid);
    // The first read is not needed to show the violation.
    assert_eq!(violation(&v).0, vec![1, 3, 4]);
    assert_sound_and_minimal(&h, &v);

    let h = history(vec![
        write(1, 0, "x", 1, (0, 10)),
        read(2, 1, "x", None, (20, 30)),
    ]);
    let v = check(&h);
    assert_eq!(v.valid, Validity::Invalid);
    assert_eq!(violation(&v).0, vec![1, 2]);
}

#[test]
fn two_successful_cas_from_the_same_value_are_an_anomaly() {
    let h = history(vec![
        write(1, 0, "x", 0, (0, 10)),
        cas(2, 1, "x", 0, 1, (20, 40)),
        cas(3, 2, "x", 0, 2, (25, 45)),
    ]);
    let v = check(&h);
    assert_eq!(v.valid, Validity::Invalid, "{}", v.explanation);
    // Even if the initial write only may have happened, both swaps cannot have: it is context.
    assert_eq!(violation(&v), (vec![2, 3], vec![1]));
    assert_sound_and_minimal(&h, &v);

    // One of them failing (definitely not applied) is fine.
    let mut ok = h.clone();
    ok.ops[2].outcome = Outcome::Fail;
    assert_eq!(check(&ok).valid, Validity::Valid);
    // A cas on a value nobody wrote cannot succeed.
    let h = history(vec![write(1, 0, "x", 0, (0, 10)), cas(2, 1, "x", 7, 1, (20, 40))]);
    assert_eq!(check(&h).valid, Validity::Invalid);
}

#[test]
fn an_unknown_write_may_explain_a_later_read() {
    // Write 2 timed out, yet a later read sees 2: it took effect after all.
    let h = history(vec![
        write(1, 0, "x", 1, (0, 10)),
        unknown(write(2, 1, "x", 2, (20, 30))),
        read(3, 2, "x", Some(2), (40, 50)),
    ]);
    assert_eq!(check(&h).valid, Validity::Valid);
    // It may even take effect after the client gave up (no completion time at all).
    let mut no_reply = h.clone();
    no_reply.ops[1].complete_us = None;
    no_reply.ops[2] = read(3, 2, "x", Some(2), (400, 500));
    assert_eq!(check(&no_reply).valid, Validity::Valid);
    // Or never take effect.
    let h = history(vec![
        write(1, 0, "x", 1, (0, 10)),
        unknown(write(2, 1, "x", 2, (20, 30))),
        read(3, 2, "x", Some(1), (40, 50)),
    ]);
    assert_eq!(check(&h).valid, Validity::Valid);
}

#[test]
fn an_unknown_write_cannot_explain_what_it_could_not_cause() {
    // The unknown write of 2 was invoked only after the read of 2 had returned.
    let h = history(vec![
        write(1, 0, "x", 1, (0, 10)),
        read(2, 2, "x", Some(2), (20, 30)),
        unknown(write(3, 1, "x", 2, (40, 50))),
    ]);
    let v = check(&h);
    assert_eq!(v.valid, Validity::Invalid);
    assert_eq!(violation(&v).0, vec![2]);
    assert_sound_and_minimal(&h, &v);
    // And once it took effect, it cannot be undone: reading 2, then 1 again, is invalid.
    let h = history(vec![
        write(1, 0, "x", 1, (0, 10)),
        unknown(write(2, 1, "x", 2, (20, 30))),
        read(3, 2, "x", Some(2), (40, 50)),
        read(4, 2, "x", Some(1), (60, 70)),
    ]);
    let v = check(&h);
    assert_eq!(v.valid, Validity::Invalid);
    assert_eq!(violation(&v).0, vec![1, 3, 4]);
    assert_sound_and_minimal(&h, &v);
}

#[test]
fn failed_operations_never_take_effect() {
    let mut failed = write(2, 1, "x", 2, (20, 30));
    failed.outcome = Outcome::Fail;
    let h = history(vec![
        write(1, 0, "x", 1, (0, 10)),
        failed,
        read(3, 2, "x", Some(2), (40, 50)),
    ]);
    assert_eq!(check(&h).valid, Validity::Invalid);
}

#[test]
fn delete_makes_a_key_absent() {
    let del = Op::new(2, 0, OpKind::Delete, 20, Outcome::Ok)
        .key("x")
        .complete(30);
    let h = history(vec![
        write(1, 0, "x", 1, (0, 10)),
        del.clone(),
        read(3, 1, "x", None, (40, 50)),
    ]);
    assert_eq!(check(&h).valid, Validity::Valid);
    let h = history(vec![
        write(1, 0, "x", 1, (0, 10)),
        del,
        read(3, 1, "x", Some(1), (40, 50)),
    ]);
    assert_eq!(check(&h).valid, Validity::Invalid);
    // cas from absent creates the key.
    let h = history(vec![
        Op::new(1, 0, OpKind::Cas, 0, Outcome::Ok)
            .key("x")
            .expected(Value::Null)
            .value(5)
            .complete(10),
        read(2, 1, "x", Some(5), (20, 30)),
    ]);
    assert_eq!(check(&h).valid, Validity::Valid);
}

#[test]
fn simultaneous_events_count_as_concurrent() {
    // The read starts exactly when the write completes: either order is allowed.
    let h = history(vec![
        write(1, 0, "x", 1, (0, 10)),
        read(2, 1, "x", None, (10, 20)),
    ]);
    assert_eq!(check(&h).valid, Validity::Valid);
}

#[test]
fn an_exhausted_budget_gives_unknown_not_a_guess() {
    // Many concurrent unknown writes in front of many reads: a wide search.
    let mut ops = Vec::new();
    for c in 0..12u64 {
        ops.push(unknown(write(c + 1, c, "x", c as i64, (0, 100))));
    }
    for c in 0..12u64 {
        ops.push(read(
            100 + c,
            20 + c,
            "x",
            Some(((c * 7) % 12) as i64),
            (200 + 10 * c, 205 + 10 * c),
        ));
    }
    let h = history(ops);
    let steps = Linearizability {
        budget: Budget {
            max_steps_per_key: 50,
            ..Budget::default()
        },
        ..Linearizability::default()
    };
    let v = steps.check(&h);
    assert_eq!(v.valid, Validity::Unknown, "{}", v.explanation);
    assert!(v.explanation.contains("budget"), "{}", v.explanation);
    assert_eq!(v.details["unknown"][0]["key"], "x");

    let memory = Linearizability {
        budget: Budget {
            max_memory_bytes: 2_000,
            ..Budget::default()
        },
        threads: 1,
        ..Linearizability::default()
    };
    let v = memory.check(&h);
    assert_eq!(v.valid, Validity::Unknown, "{}", v.explanation);
    assert!(
        v.details["unknown"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("memory"),
        "{}",
        v.explanation
    );

    let time = Linearizability {
        budget: Budget {
            time_limit: Some(std::time::Duration::ZERO),
            ..Budget::default()
        },
        ..Linearizability::default()
    };
    // With no time at all, a search longer than one check interval stops; this one may finish
    // first, but must never claim a violation.
    assert_ne!(time.check(&h).valid, Validity::Invalid);

    // With the default budget it is decided.
    assert_ne!(check(&h).valid, Validity::Unknown);
}

#[test]
fn keys_are_checked_independently_and_deterministically() {
    let mut ops = Vec::new();
    let mut id = 0;
    for k in 0..20u64 {
        let key = format!("k{k}");
        id += 1;
        ops.push(write(id, 0, &key, 1, (k * 100, k * 100 + 10)));
        id += 1;
        // Keys 7 and 13 read a value nobody wrote.
        let seen = if k == 7 || k == 13 { 9 } else { 1 };
        ops.push(read(id, 1, &key, Some(seen), (k * 100 + 20, k * 100 + 30)));
    }
    let h = history(ops);
    let single = Linearizability {
        threads: 1,
        ..Linearizability::default()
    }
    .check(&h);
    let parallel = Linearizability {
        threads: 4,
        ..Linearizability::default()
    }
    .check(&h);
    assert_eq!(single, parallel);
    assert_eq!(single.valid, Validity::Invalid);
    let bad: Vec<&str> = single.details["invalid"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key"].as_str().unwrap())
        .collect();
    assert_eq!(bad, vec!["k13", "k7"]);
    assert_eq!(single.details["valid_keys"], 18);
    assert!(
        single.explanation.starts_with("2 of 20 keys"),
        "{}",
        single.explanation
    );
}

#[test]
fn no_register_operations_is_unknown() {
    let h = history(vec![
        Op::new(1, 0, OpKind::Add, 0, Outcome::Ok)
            .key("s")
            .value(1)
            .complete(5),
    ]);
    assert_eq!(check(&h).valid, Validity::Unknown);
}

/// Minimizing is bounded or off at the user's word, and a bounded one stops promptly: it costs
/// about what no minimizing costs, the verdict is the same, and the result says the list is not
/// minimal. (The bound is loose on purpose — 3× the unminimized check plus a second — since
/// what it guards against is minimizing that keeps building candidates after its budget is
/// spent, which took 13× as long.)
#[test]
fn minimizing_is_bounded_and_never_changes_the_verdict() {
    let mut h = model::register_history(5, &model::Params::new(10, 4, 8_000));
    model::inject_violation(&mut h, 5);
    let run = |minimize| {
        let checker = Linearizability {
            minimize,
            threads: 1,
            ..Linearizability::default()
        };
        let start = Instant::now();
        let v = checker.check(&h);
        (start.elapsed(), v)
    };
    let (off_time, off) = run(Minimize::Off);
    let (_, full) = run(Minimize::default());
    assert_eq!((off.valid, full.valid), (Validity::Invalid, Validity::Invalid));
    assert_eq!(full.details["invalid"][0]["minimizing"], "complete");
    assert!(
        full.ops.len() < off.ops.len(),
        "{} vs {}",
        full.ops.len(),
        off.ops.len()
    );
    assert_eq!(off.details["invalid"][0]["minimizing"], "off");
    assert!(
        off.explanation.contains("minimizing was off"),
        "{}",
        off.explanation
    );
    for bounded in [
        Minimize::Steps(0),
        Minimize::Steps(1_000),
        Minimize::Time(Duration::from_millis(1)),
    ] {
        let (time, v) = run(bounded);
        assert_eq!(v.valid, Validity::Invalid, "{bounded:?}");
        let minimizing = v.details["invalid"][0]["minimizing"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(minimizing.starts_with("stopped at"), "{bounded:?}: {minimizing}");
        assert!(
            v.explanation
                .contains("The verdict is final; only this list may be longer than needed"),
            "{}",
            v.explanation
        );
        assert!(
            time <= off_time * 3 + Duration::from_secs(1),
            "{bounded:?} took {time:?}, minimizing off {off_time:?}"
        );
    }
}

/// A read of a value that was never written to its key is reported as exactly that — with the
/// key it was written to — before the list of operations no order agrees with.
#[test]
fn a_read_of_a_value_written_to_another_key_is_named_as_such() {
    let h = history(vec![
        write(1, 0, "k0", 1, (0, 10)),
        write(2, 1, "k2", 2000000040, (5, 15)),
        read(3, 2, "k0", Some(2000000040), (20, 30)),
    ]);
    let v = Linearizability::default().check(&h);
    assert_eq!(v.valid, Validity::Invalid);
    assert!(
        v.explanation
            .contains("read #3 of \"k0\" returned 2000000040, a value never written to \"k0\" (it was written to \"k2\" by #2)"),
        "{}",
        v.explanation
    );
    // A value nobody wrote anywhere says so; a stale read of a value that was written says nothing.
    let h = history(vec![
        write(1, 0, "k0", 1, (0, 10)),
        read(2, 1, "k0", Some(7), (20, 30)),
    ]);
    let v = Linearizability::default().check(&h);
    assert!(
        v.explanation.contains("no operation wrote it to any key"),
        "{}",
        v.explanation
    );
    let h = history(vec![
        write(1, 0, "k0", 1, (0, 10)),
        write(2, 0, "k0", 2, (20, 30)),
        read(3, 1, "k0", Some(1), (40, 50)),
    ]);
    let v = Linearizability::default().check(&h);
    assert_eq!(v.valid, Validity::Invalid);
    assert!(!v.explanation.contains("never written"), "{}", v.explanation);
}
