//! The list-append checker on hand-written histories: one per anomaly class, each checked against
//! the models that forbid and allow it, and write skew (valid under snapshot isolation, not
//! serializable).

use chaos_check::{
    Checker, ConsistencyModel, Header, History, ListAppend, Op, OpKind, Outcome, Validity, Verdict,
    check_history, default_checker_names,
};
use serde_json::{Value, json};

use ConsistencyModel::{ReadCommitted, Serializable, SnapshotIsolation, StrictSerializable};

/// A transaction `id` of client `client`, running from `at` to `at + 5` µs.
fn txn(id: u64, client: u64, at: u64, mops: Value) -> Op {
    Op::new(id, client, OpKind::Txn, at, Outcome::Ok)
        .value(mops)
        .complete(at + 5)
}

fn failed(op: Op) -> Op {
    Op {
        outcome: Outcome::Fail,
        ..op
    }
}

fn history(ops: Vec<Op>) -> History {
    let mut h = History::new(Header::new());
    h.ops = ops;
    h
}

fn check(h: &History, model: ConsistencyModel) -> Verdict {
    ListAppend::new(model).check(h)
}

/// The anomaly classes found, by name.
fn found(v: &Verdict) -> Vec<String> {
    v.details["found"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

/// Asserts `class` is found, and the verdict under each model: invalid where forbidden.
#[track_caller]
fn assert_found(h: &History, class: &str, forbidden_by: &[ConsistencyModel]) {
    for model in ConsistencyModel::ALL {
        let v = check(h, model);
        assert!(
            found(&v).contains(&class.to_string()),
            "{model}: {class} not in {:?}: {}",
            found(&v),
            v.explanation
        );
        let expected = if forbidden_by.contains(&model) {
            Validity::Invalid
        } else {
            Validity::Valid
        };
        assert_eq!(v.valid, expected, "{model}: {}", v.explanation);
        let example = v.details["anomalies"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["class"] == class)
            .expect("an example of the class is kept");
        assert_eq!(example["forbidden"], json!(forbidden_by.contains(&model)));
        assert!(!example["explanation"].as_str().unwrap().is_empty());
    }
}

#[test]
fn a_serial_history_is_valid_under_every_model() {
    let h = history(vec![
        txn(1, 0, 0, json!([["append", "x", 1], ["r", "y", null]])),
        txn(2, 1, 10, json!([["r", "x", [1]], ["append", "y", 1]])),
        txn(
            3,
            0,
            20,
            json!([
                ["r", "y", [1]],
                ["r", "x", [1]],
                ["append", "x", 2],
                ["r", "x", [1, 2]]
            ]),
        ),
        txn(4, 1, 30, json!([["r", "x", [1, 2]]])),
    ]);
    for model in ConsistencyModel::ALL {
        let v = check(&h, model);
        assert_eq!(v.valid, Validity::Valid, "{model}: {}", v.explanation);
        assert!(
            v.explanation.contains("no anomaly it forbids"),
            "{}",
            v.explanation
        );
    }
    assert_eq!(default_checker_names(&h), vec!["list-append"]);
    let report = check_history(&h, &[]).unwrap();
    assert_eq!(report.verdict.children[0].checker, "list-append");
}

#[test]
fn g0_write_cycle() {
    // x's order says #1 before #2, y's says #2 before #1.
    let h = history(vec![
        txn(1, 0, 0, json!([["append", "x", 1], ["append", "y", 2]])),
        txn(2, 1, 0, json!([["append", "x", 2], ["append", "y", 1]])),
        txn(3, 2, 20, json!([["r", "x", [1, 2]], ["r", "y", [1, 2]]])),
    ]);
    assert_found(&h, "G0", &ConsistencyModel::ALL);
    let v = check(&h, ReadCommitted);
    assert_eq!(v.ops, vec![1, 2]);
    let cycle = v.details["anomalies"][0]["cycle"].as_array().unwrap();
    assert_eq!(cycle.len(), 2);
    assert!(cycle.iter().all(|s| s["kind"] == "ww"), "{cycle:?}");
}

#[test]
fn g1a_aborted_read() {
    let h = history(vec![
        failed(txn(1, 0, 0, json!([["append", "x", 1]]))),
        txn(2, 1, 10, json!([["r", "x", [1]]])),
    ]);
    assert_found(&h, "G1a", &ConsistencyModel::ALL);
    assert_eq!(check(&h, ReadCommitted).ops, vec![1, 2]);
}

#[test]
fn g1b_intermediate_read() {
    let h = history(vec![
        txn(1, 0, 0, json!([["append", "x", 1], ["append", "x", 2]])),
        txn(2, 1, 2, json!([["r", "x", [1]]])),
    ]);
    assert_found(&h, "G1b", &ConsistencyModel::ALL);
}

#[test]
fn g1c_circular_information_flow() {
    // Elle's README example: #1 saw #2's append to y, and #2's append to x came after #1's.
    let h = history(vec![
        txn(1, 0, 0, json!([["append", "x", 1], ["r", "y", [1]]])),
        txn(2, 1, 0, json!([["append", "x", 2], ["append", "y", 1]])),
        txn(3, 2, 20, json!([["r", "x", [1, 2]]])),
    ]);
    assert_found(&h, "G1c", &ConsistencyModel::ALL);
    let v = check(&h, Serializable);
    let kinds: Vec<&str> = v.details["anomalies"][0]["cycle"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"wr") && kinds.contains(&"ww"), "{kinds:?}");
    assert!(
        v.explanation.contains("#1") && v.explanation.contains("#2"),
        "{}",
        v.explanation
    );
}

#[test]
fn g_single_read_skew() {
    // #2 sees #1's append to x but not its append to y.
    let h = history(vec![
        txn(1, 0, 0, json!([["append", "x", 1], ["append", "y", 1]])),
        txn(2, 1, 0, json!([["r", "x", [1]], ["r", "y", []]])),
        txn(3, 2, 20, json!([["r", "y", [1]]])),
    ]);
    assert_found(
        &h,
        "G-single",
        &[SnapshotIsolation, Serializable, StrictSerializable],
    );
    let v = check(&h, SnapshotIsolation);
    let text = v.details["anomalies"][0]["explanation"].as_str().unwrap();
    assert!(
        text.contains("without 1") && text.contains("(rw)") && text.contains("(wr)"),
        "{text}"
    );
}

#[test]
fn write_skew_is_snapshot_isolation_but_not_serializable() {
    // Each reads both keys empty and appends to one: two adjacent anti-dependencies (G2-item).
    let h = history(vec![
        txn(
            1,
            0,
            0,
            json!([["r", "x", []], ["r", "y", []], ["append", "x", 1]]),
        ),
        txn(
            2,
            1,
            0,
            json!([["r", "x", []], ["r", "y", []], ["append", "y", 1]]),
        ),
        txn(3, 2, 20, json!([["r", "x", [1]], ["r", "y", [1]]])),
    ]);
    assert_found(&h, "G2-item", &[Serializable, StrictSerializable]);
    let si = check(&h, SnapshotIsolation);
    assert!(
        si.explanation
            .contains("Also found, which snapshot-isolation allows: G2-item ×1"),
        "{}",
        si.explanation
    );
    let serializable = check(&h, Serializable);
    assert!(
        serializable.explanation.contains("violate serializable"),
        "{}",
        serializable.explanation
    );
}

#[test]
fn g_nonadjacent_is_forbidden_by_snapshot_isolation() {
    // #1 -rw(a)-> #2 -wr(b)-> #3 -rw(c)-> #4 -wr(d)-> #1: two anti-dependencies, never adjacent.
    let h = history(vec![
        txn(1, 0, 0, json!([["r", "a", []], ["r", "d", [1]]])),
        txn(2, 1, 0, json!([["append", "a", 1], ["append", "b", 1]])),
        txn(3, 2, 0, json!([["r", "b", [1]], ["r", "c", []]])),
        txn(4, 3, 0, json!([["append", "c", 1], ["append", "d", 1]])),
        txn(5, 4, 20, json!([["r", "a", [1]], ["r", "c", [1]]])),
    ]);
    assert_found(
        &h,
        "G-nonadjacent",
        &[SnapshotIsolation, Serializable, StrictSerializable],
    );
    assert_eq!(check(&h, SnapshotIsolation).ops, vec![1, 2, 3, 4]);
}

#[test]
fn duplicate_elements() {
    let h = history(vec![
        txn(1, 0, 0, json!([["append", "x", 1]])),
        txn(2, 1, 10, json!([["r", "x", [1, 1]]])),
    ]);
    assert_found(&h, "duplicate-elements", &ConsistencyModel::ALL);
}

#[test]
fn incompatible_orders() {
    let h = history(vec![
        txn(1, 0, 0, json!([["append", "x", 1]])),
        txn(2, 1, 0, json!([["append", "x", 2]])),
        txn(3, 2, 10, json!([["r", "x", [1, 2]]])),
        txn(4, 3, 10, json!([["r", "x", [2, 1]]])),
    ]);
    assert_found(&h, "incompatible-order", &ConsistencyModel::ALL);
    let v = check(&h, ReadCommitted);
    let text = v.details["anomalies"][0]["explanation"].as_str().unwrap();
    assert!(text.contains("[2,1]") && text.contains("[1,2]"), "{text}");
}

#[test]
fn internal_inconsistency() {
    // Does not see its own append.
    let h = history(vec![txn(1, 0, 0, json!([["append", "x", 1], ["r", "x", []]]))]);
    assert_found(&h, "internal", &ConsistencyModel::ALL);
    // Reads an element it only appends later.
    let h = history(vec![txn(1, 0, 0, json!([["r", "x", [1]], ["append", "x", 1]]))]);
    assert_found(&h, "internal", &ConsistencyModel::ALL);
    // Reads the key again with elements lost.
    let h = history(vec![
        txn(1, 0, 0, json!([["append", "x", 1]])),
        txn(2, 1, 10, json!([["r", "x", [1]], ["r", "x", []]])),
    ]);
    assert_found(&h, "internal", &ConsistencyModel::ALL);
}

#[test]
fn a_non_repeatable_read_is_allowed_by_read_committed_only() {
    let h = history(vec![
        txn(
            1,
            0,
            0,
            json!([
                ["r", "x", []],
                ["append", "y", 5],
                ["r", "x", [1]],
                ["r", "y", [5]]
            ]),
        ),
        txn(2, 1, 1, json!([["append", "x", 1]])),
    ]);
    assert_found(
        &h,
        "non-repeatable-read",
        &[SnapshotIsolation, Serializable, StrictSerializable],
    );
}

#[test]
fn garbage_read() {
    let h = history(vec![txn(1, 0, 0, json!([["r", "x", [9]]]))]);
    assert_found(&h, "garbage-read", &ConsistencyModel::ALL);
}

#[test]
fn a_stale_read_breaks_only_strict_serializability() {
    // #1 appended and completed before #2 began; #2 still read x empty.
    let h = history(vec![
        txn(1, 0, 0, json!([["append", "x", 1]])),
        txn(2, 1, 100, json!([["r", "x", []]])),
        txn(3, 2, 200, json!([["r", "x", [1]]])),
    ]);
    for model in [ReadCommitted, SnapshotIsolation, Serializable] {
        let v = check(&h, model);
        assert_eq!(
            (v.valid, found(&v)),
            (Validity::Valid, vec![]),
            "{model}: {}",
            v.explanation
        );
    }
    let v = check(&h, StrictSerializable);
    assert_eq!(v.valid, Validity::Invalid);
    assert_eq!(found(&v), vec!["G-single-realtime"]);
    let cycle = v.details["anomalies"][0]["cycle"].as_array().unwrap();
    assert!(cycle.iter().any(|s| s["kind"] == "realtime"), "{cycle:?}");
    assert!(
        cycle
            .iter()
            .any(|s| s["why"].as_str().unwrap().contains("completed at 0.000005 s")),
        "{cycle:?}"
    );
}

#[test]
fn a_client_must_see_its_own_committed_append() {
    // The same client: its second transaction does not see its first one's append.
    let h = history(vec![
        txn(1, 7, 0, json!([["append", "x", 1]])),
        txn(2, 7, 6, json!([["r", "x", []]])),
        txn(3, 8, 20, json!([["r", "x", [1]]])),
    ]);
    assert_eq!(check(&h, Serializable).valid, Validity::Valid);
    let v = check(&h, StrictSerializable);
    assert_eq!(v.valid, Validity::Invalid);
    assert!(
        found(&v).contains(&"G-single-process".to_string()),
        "{:?}",
        found(&v)
    );
    assert!(
        v.explanation.contains("client 7 ran #1 and then #2"),
        "{}",
        v.explanation
    );
}

#[test]
fn unknown_and_failed_transactions() {
    // An unknown transaction's append may be seen; a failed one's reads mean nothing.
    let mut maybe = txn(1, 0, 0, json!([["append", "x", 1], ["r", "y", null]]));
    maybe.outcome = Outcome::Unknown;
    maybe.complete_us = None;
    let h = history(vec![
        maybe,
        failed(txn(2, 1, 0, json!([["r", "x", [7, 8]]]))),
        txn(3, 2, 10, json!([["r", "x", [1]]])),
    ]);
    for model in ConsistencyModel::ALL {
        let v = check(&h, model);
        assert_eq!(v.valid, Validity::Valid, "{model}: {}", v.explanation);
    }
}

#[test]
fn repeated_appends_cannot_be_checked() {
    let h = history(vec![
        txn(1, 0, 0, json!([["append", "x", 1]])),
        txn(2, 1, 0, json!([["append", "x", 1]])),
        txn(3, 2, 10, json!([["r", "x", [1]]])),
    ]);
    let v = check(&h, Serializable);
    assert_eq!(v.valid, Validity::Unknown, "{}", v.explanation);
    assert!(v.explanation.contains("at most once"), "{}", v.explanation);
    assert_eq!(v.ops, vec![1, 2]);
}

#[test]
fn integer_keys_and_non_integer_elements() {
    let h = history(vec![
        txn(1, 0, 0, json!([["append", 1, "a"], ["append", 1, {"k": [1]}]])),
        txn(
            2,
            1,
            10,
            json!([["r", 1, ["a", {"k": [1]}]], ["r", "1", ["a", {"k": [1]}]]]),
        ),
    ]);
    let v = check(&h, StrictSerializable);
    assert_eq!(v.valid, Validity::Valid, "{}", v.explanation);
    assert_eq!(
        v.details["keys"], 1,
        "an integer key names the same list as its decimal string"
    );
}

#[test]
fn consistency_models_parse_by_name() {
    for model in ConsistencyModel::ALL {
        assert_eq!(model.as_str().parse::<ConsistencyModel>(), Ok(model));
    }
    let error = "linearizable".parse::<ConsistencyModel>().unwrap_err();
    assert!(
        error.contains("read-committed, snapshot-isolation, serializable, strict-serializable"),
        "{error}"
    );
    assert_eq!(ConsistencyModel::default(), StrictSerializable);
}
