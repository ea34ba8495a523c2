//! Set (lost acknowledged writes), counter, unique-id and availability checkers, and composition.

use chaos_check::{
    AvailabilityChecker, AvailabilityOptions, Checker, Compose, CounterChecker, FaultEvent, FaultPhase,
    Header, History, Op, OpKind, Outcome, SetChecker, UniqueIdsChecker, Validity, analyze, check_history,
    default_checker_names,
};
use serde_json::{Value, json};

fn history(ops: Vec<Op>) -> History {
    let mut h = History::new(Header::new());
    h.ops = ops;
    h
}

fn op(id: u64, kind: OpKind, key: &str, span: (u64, u64), outcome: Outcome) -> Op {
    let mut o = Op::new(id, id % 5, kind, span.0, outcome).key(key);
    if outcome != Outcome::Unknown {
        o.complete_us = Some(span.1);
    }
    o
}

fn add(id: u64, element: i64, span: (u64, u64), outcome: Outcome) -> Op {
    op(id, OpKind::Add, "s", span, outcome).value(element)
}

fn read_set(id: u64, elements: &[i64], span: (u64, u64)) -> Op {
    op(id, OpKind::ReadSet, "s", span, Outcome::Ok).values(elements.iter().map(|e| Value::from(*e)).collect())
}

#[test]
fn set_finds_lost_acknowledged_adds() {
    let h = history(vec![
        add(1, 1, (0, 10), Outcome::Ok),
        add(2, 2, (5, 15), Outcome::Ok),
        add(3, 3, (20, 30), Outcome::Ok),
        read_set(4, &[1, 3], (40, 50)),
    ]);
    let v = SetChecker.check(&h);
    assert_eq!(v.valid, Validity::Invalid, "{}", v.explanation);
    assert_eq!(v.ops, vec![2]);
    assert_eq!(v.details["keys"][0]["lost"], json!(["2"]));
    assert!(
        v.explanation.contains("1 of 3 acknowledged adds are missing"),
        "{}",
        v.explanation
    );
}

#[test]
fn set_allows_unknown_and_concurrent_adds_either_way() {
    let h = history(vec![
        add(1, 1, (0, 10), Outcome::Ok),
        add(2, 2, (5, 15), Outcome::Unknown),
        add(3, 3, (5, 15), Outcome::Unknown),
        add(4, 4, (35, 60), Outcome::Ok), // still running when the final read began
        read_set(5, &[1, 2], (40, 50)),
    ]);
    let v = SetChecker.check(&h);
    assert_eq!(v.valid, Validity::Valid, "{}", v.explanation);
    assert_eq!(v.details["keys"][0]["recovered_unknown_adds"], 1);
    // Only the final read counts: an earlier read missing an element is not a lost write.
    let mut earlier = h.clone();
    earlier.ops.push(read_set(6, &[], (20, 21)));
    assert_eq!(SetChecker.check(&earlier).valid, Validity::Valid);
}

#[test]
fn set_rejects_elements_nobody_could_have_added() {
    let h = history(vec![
        add(1, 1, (0, 10), Outcome::Ok),
        add(2, 2, (0, 10), Outcome::Fail),
        read_set(3, &[1, 2, 9], (40, 50)),
    ]);
    let v = SetChecker.check(&h);
    assert_eq!(v.valid, Validity::Invalid);
    assert_eq!(v.details["keys"][0]["unexpected"], json!(["2", "9"]));
    assert_eq!(v.ops, vec![3]);
}

#[test]
fn set_without_a_successful_read_is_unknown() {
    let h = history(vec![add(1, 1, (0, 10), Outcome::Ok)]);
    assert_eq!(SetChecker.check(&h).valid, Validity::Unknown);
}

fn incr(id: u64, by: i64, span: (u64, u64), outcome: Outcome) -> Op {
    op(id, OpKind::Incr, "c", span, outcome).value(by)
}

fn read_counter(id: u64, value: i64, span: (u64, u64)) -> Op {
    op(id, OpKind::ReadCounter, "c", span, Outcome::Ok).value(value)
}

#[test]
fn counter_reads_must_lie_between_certain_and_possible_increments() {
    let ops = vec![
        incr(1, 1, (0, 10), Outcome::Ok),
        incr(2, 1, (0, 10), Outcome::Ok),
        incr(3, 5, (0, 10), Outcome::Unknown),
        incr(4, 1, (0, 10), Outcome::Fail),
    ];
    for (value, expected) in [
        (1, Validity::Invalid),
        (2, Validity::Valid),
        (7, Validity::Valid),
        (8, Validity::Invalid),
    ] {
        let mut with_read = ops.clone();
        with_read.push(read_counter(9, value, (20, 30)));
        let v = CounterChecker.check(&history(with_read));
        assert_eq!(v.valid, expected, "read {value}: {}", v.explanation);
        if expected == Validity::Invalid {
            assert_eq!(v.ops, vec![9]);
            assert!(v.explanation.contains("2..=7"), "{}", v.explanation);
        }
    }
    // A read concurrent with an increment may or may not include it; the counter starts at 0.
    let h = history(vec![
        incr(1, 3, (0, 100), Outcome::Ok),
        read_counter(2, 0, (10, 20)),
        read_counter(3, 3, (30, 40)),
    ]);
    assert_eq!(CounterChecker.check(&h).valid, Validity::Valid);
    // Default increment is 1; negative increments widen the range downwards.
    let mut by_default = op(1, OpKind::Incr, "c", (0, 10), Outcome::Ok);
    by_default.value = None;
    let h = history(vec![
        by_default,
        incr(2, -4, (0, 10), Outcome::Unknown),
        read_counter(3, -3, (20, 30)),
    ]);
    assert_eq!(CounterChecker.check(&h).valid, Validity::Valid);
}

#[test]
fn unique_ids_flags_duplicates() {
    let generate =
        |id: u64, value: &str, outcome| op(id, OpKind::Generate, "g", (id, id + 1), outcome).value(value);
    let h = history(vec![
        generate(1, "a", Outcome::Ok),
        generate(2, "b", Outcome::Ok),
        generate(3, "a", Outcome::Unknown), // not acknowledged: does not count
    ]);
    assert_eq!(UniqueIdsChecker.check(&h).valid, Validity::Valid);
    let mut dup = h.clone();
    dup.ops.push(generate(4, "b", Outcome::Ok));
    let v = UniqueIdsChecker.check(&dup);
    assert_eq!(v.valid, Validity::Invalid);
    assert_eq!(v.ops, vec![2, 4]);
    // Different generators (keys) may hand out the same ids.
    let mut other = h.clone();
    other
        .ops
        .push(op(5, OpKind::Generate, "g2", (5, 6), Outcome::Ok).value("a"));
    assert_eq!(UniqueIdsChecker.check(&other).valid, Validity::Valid);
}

fn fault(event: FaultPhase, case: &str, node: &str, t: u64) -> FaultEvent {
    FaultEvent {
        event,
        case: case.into(),
        kind: "kill".into(),
        nodes: vec![node.into()],
        time_us: t,
        detail: None,
    }
}

/// Reads every 10 ms from t=0 to 2 s against n1 or n2 alternately; `fails(t)` says which fail.
fn steady_load(fails: impl Fn(u64, &str) -> bool) -> Vec<Op> {
    (0..200u64)
        .map(|i| {
            let t = i * 10_000;
            let node = if i % 2 == 0 { "n1" } else { "n2" };
            let outcome = if fails(t, node) {
                Outcome::Fail
            } else {
                Outcome::Ok
            };
            op(i + 1, OpKind::Read, "x", (t, t + 1_000), outcome)
                .value(Value::Null)
                .node(node)
        })
        .collect()
}

#[test]
fn availability_measures_errors_per_case_and_recovery_per_fault() {
    // n1 is down from 0.5 s to 1.0 s and serves again from 1.2 s.
    let mut h = history(steady_load(|t, node| {
        node == "n1" && (500_000..1_200_000).contains(&t)
    }));
    h.faults
        .push(fault(FaultPhase::Injected, "kill-n1", "n1", 500_000));
    h.faults
        .push(fault(FaultPhase::Healed, "kill-n1", "n1", 1_000_000));
    let report = analyze(&h, &AvailabilityOptions::default());
    let case = &report.cases[0];
    assert_eq!((case.ops.total, case.ops.ok, case.ops.fail), (51, 25, 26));
    // First ok operation on n1 invoked after the heal: invoked 1.2 s, completed 1.201 s.
    assert_eq!(case.faults[0].recovery_us, Some(201_000));
    assert_eq!(report.outside_faults.total, 149);
    // 51 % errors is over the default 30 % bound.
    let v = AvailabilityChecker::default().check(&h);
    assert_eq!(v.valid, Validity::Invalid, "{}", v.explanation);
    assert!(
        v.explanation.contains("51.0 % of 51 operations failed"),
        "{}",
        v.explanation
    );
    // A looser bound (from the header) passes; a recovery bound below 201 ms fails.
    h.header.max_error_fraction = Some(0.6);
    assert_eq!(AvailabilityChecker::default().check(&h).valid, Validity::Valid);
    let strict = AvailabilityChecker {
        options: Some(AvailabilityOptions {
            max_error_fraction: 0.6,
            max_recovery_us: Some(100_000),
        }),
    };
    let v = strict.check(&h);
    assert_eq!(v.valid, Validity::Invalid);
    assert!(
        v.explanation.contains("recovery after kill on n1 took 0.201 s"),
        "{}",
        v.explanation
    );
}

#[test]
fn availability_flags_a_node_that_never_recovers() {
    let mut h = history(steady_load(|t, node| node == "n1" && t >= 500_000));
    h.header.max_error_fraction = Some(1.0);
    h.faults
        .push(fault(FaultPhase::Injected, "kill-n1", "n1", 500_000));
    h.faults
        .push(fault(FaultPhase::Healed, "kill-n1", "n1", 1_000_000));
    let v = AvailabilityChecker::default().check(&h);
    assert_eq!(v.valid, Validity::Invalid);
    assert!(v.explanation.contains("never recovered"), "{}", v.explanation);
    // A fault still in place at the end cannot be judged for recovery.
    h.faults.pop();
    assert_eq!(AvailabilityChecker::default().check(&h).valid, Validity::Unknown);
    // And no faults at all: nothing to judge.
    h.faults.clear();
    assert_eq!(AvailabilityChecker::default().check(&h).valid, Validity::Unknown);
}

#[test]
fn compose_combines_and_defaults_pick_what_applies() {
    let mut h = history(vec![
        add(1, 1, (0, 10), Outcome::Ok),
        read_set(2, &[], (20, 30)),
        op(3, OpKind::Write, "x", (0, 10), Outcome::Ok).value(1),
        op(4, OpKind::Read, "x", (20, 30), Outcome::Ok).value(1),
    ]);
    assert_eq!(default_checker_names(&h), vec!["linearizability", "set"]);
    let report = check_history(&h, &[]).unwrap();
    assert_eq!(report.verdict.valid, Validity::Invalid);
    assert_eq!(report.verdict.children.len(), 2);
    assert_eq!(report.verdict.children[0].valid, Validity::Valid);
    assert_eq!(report.verdict.ops, vec![1]);
    assert!(
        report.verdict.explanation.contains("set is invalid"),
        "{}",
        report.verdict.explanation
    );
    // Selecting only linearizability ignores the set.
    let only = check_history(&h, &["linearizability".to_string()]).unwrap();
    assert_eq!(only.verdict.valid, Validity::Valid);
    // Unknown beats valid, invalid beats unknown.
    h.ops[1] = read_set(2, &[1], (20, 30));
    let with_unknown = Compose::new(vec![Box::new(SetChecker), Box::new(CounterChecker)]).check(&h);
    assert_eq!(with_unknown.valid, Validity::Unknown);
}
