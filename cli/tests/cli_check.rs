//! `chaos check`: re-running the checkers on stored histories, with the exit code telling the
//! verdict and the offending operations named; the text a user reads for a stored run; bounded
//! or disabled minimizing; the consistency model for transactions.

use std::path::Path;
use std::process::{Command, Output};

fn chaos_check(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_chaos"))
        .arg("check")
        .args(args)
        .output()
        .expect("running chaos check")
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

const HEADER: &str = r#"{"type":"header","version":1}"#;

/// x=1 is acknowledged, then a later read — starting after the write completed — sees nothing:
/// the stale read a partitioned leader serves.
const STALE_READ: &str = r#"{"type":"op","id":1,"client":0,"kind":"write","key":"x","value":1,"invoke_us":0,"complete_us":10,"outcome":"ok"}
{"type":"op","id":2,"client":1,"kind":"read","key":"x","value":1,"invoke_us":20,"complete_us":30,"outcome":"ok"}
{"type":"op","id":3,"client":0,"kind":"write","key":"x","value":2,"invoke_us":40,"complete_us":50,"outcome":"ok"}
{"type":"op","id":4,"client":1,"kind":"read","key":"x","value":1,"invoke_us":60,"complete_us":70,"outcome":"ok"}
"#;

#[test]
fn a_linearizable_history_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let ok = "{\"type\":\"op\",\"id\":1,\"client\":0,\"kind\":\"write\",\"key\":\"x\",\"value\":1,\"invoke_us\":0,\"complete_us\":10,\"outcome\":\"ok\"}\n\
              {\"type\":\"op\",\"id\":2,\"client\":1,\"kind\":\"read\",\"key\":\"x\",\"value\":1,\"invoke_us\":20,\"complete_us\":30,\"outcome\":\"ok\"}\n";
    let path = write(dir.path(), "ok.jsonl", &format!("{HEADER}\n{ok}"));
    let out = chaos_check(&[&path, "--checker", "linearizability"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("linearizability: valid"), "{stdout}");
}

#[test]
fn a_stale_read_exits_1_naming_the_operations_and_writes_a_report() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "stale.jsonl", &format!("{HEADER}\n{STALE_READ}"));
    let report = dir.path().join("report");
    let out = chaos_check(&[&path, "--report", report.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("invalid"), "{stdout}");
    assert!(
        stdout.contains("key \"x\": operations: 1, 3, 4"),
        "the stale read is named with what contradicts it: {stdout}"
    );
    assert!(report.join("report.html").exists());
    assert!(report.join("junit.xml").exists());
}

#[test]
fn bad_input_exits_2_naming_the_line_or_the_checker() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "bad.jsonl",
        &format!("{HEADER}\n{{\"type\":\"op\",\"id\":1}}\n"),
    );
    let out = chaos_check(&[&path]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("line 2"), "{stderr}");

    let good = write(dir.path(), "good.jsonl", &format!("{HEADER}\n{STALE_READ}"));
    let out = chaos_check(&[&good, "--checker", "linearisability"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("linearisability") && stderr.contains("linearizability"),
        "{stderr}"
    );

    let out = chaos_check(&[dir.path().join("missing.jsonl").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.jsonl"));
}

/// A SIGKILLed run leaves `history.jsonl` cut mid-line: `chaos check` says so and judges the rest
/// (here the stale read, which is still found).
#[test]
fn a_history_cut_mid_line_is_judged_and_the_cut_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let cut = r#"{"type":"op","id":5,"client":0,"kind":"write","key":"x","val"#;
    let path = write(dir.path(), "cut.jsonl", &format!("{HEADER}\n{STALE_READ}{cut}"));
    let out = chaos_check(&[&path, "--checker", "linearizability"]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains("line 6 is cut mid-record") && stderr.contains("the 4 operations before it"),
        "{stderr}"
    );
    assert!(stdout.contains("linearizability: invalid"), "{stdout}");
}

/// What a run leaves in `runs/<scenario>/latest/history.jsonl`, written the way the runner writes
/// it: a header naming the run and its nodes, a fault, register traffic with a stale read after a
/// write whose outcome was unknown, and transactions with a write skew.
fn stored_run(dir: &Path) -> String {
    use chaos_check::{FaultEvent, FaultPhase, Header, HistoryWriter, Op, OpKind, Outcome};
    use serde_json::json;
    let path = dir.join("history.jsonl");
    let file = std::fs::File::create(&path).unwrap();
    let mut w = HistoryWriter::new(
        file,
        &Header {
            run: Some("kv-partition-7".into()),
            nodes: vec!["n1".into(), "n2".into(), "n3".into()],
            ..Header::new()
        },
    )
    .unwrap();
    let register = |id, client, kind, value: i64, span: (u64, Option<u64>), outcome| {
        let mut op = Op::new(id, client, kind, span.0, outcome).key("x").value(value);
        op.complete_us = span.1;
        op
    };
    w.op(&register(1, 0, OpKind::Write, 1, (0, Some(10)), Outcome::Ok))
        .unwrap();
    w.fault(&FaultEvent {
        event: FaultPhase::Injected,
        case: "isolate-n1".into(),
        kind: "partition".into(),
        nodes: vec!["n1".into()],
        time_us: 15,
        detail: None,
    })
    .unwrap();
    w.op(&register(2, 1, OpKind::Write, 2, (20, None), Outcome::Unknown))
        .unwrap();
    w.op(&register(3, 2, OpKind::Read, 2, (30, Some(40)), Outcome::Ok))
        .unwrap();
    w.op(&register(4, 0, OpKind::Write, 3, (50, Some(60)), Outcome::Ok))
        .unwrap();
    w.op(&register(5, 2, OpKind::Read, 2, (70, Some(80)), Outcome::Ok))
        .unwrap();
    let txn = |id, client, at: u64, mops| {
        Op::new(id, client, OpKind::Txn, at, Outcome::Ok)
            .value(mops)
            .complete(at + 10)
    };
    w.op(&txn(
        6,
        3,
        0,
        json!([["r", "a", []], ["r", "b", []], ["append", "a", 1]]),
    ))
    .unwrap();
    w.op(&txn(
        7,
        4,
        0,
        json!([["r", "a", []], ["r", "b", []], ["append", "b", 1]]),
    ))
    .unwrap();
    w.op(&txn(8, 3, 20, json!([["r", "a", [1]], ["r", "b", [1]]])))
        .unwrap();
    w.flush().unwrap();
    path.to_string_lossy().into_owned()
}

/// The whole text output for a stored run, as a user reads it: the combined verdict on top (not
/// labelled `compose`), then each checker; linearizability names the operations that cannot be
/// ordered and, on their own line, the context operations it counted as "may or may not have
/// taken effect"; list-append names the anomaly, the model that forbids it, and its cycle.
#[test]
fn the_text_output_for_a_stored_run() {
    let dir = tempfile::tempdir().unwrap();
    let path = stored_run(dir.path());
    let out = chaos_check(&[&path, "--checker", "linearizability", "--checker", "list-append"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let expected = "\
verdict: invalid — 2 of 2 checkers: linearizability is invalid, list-append is invalid
  linearizability: invalid — 1 of 1 keys are not linearizable. Key \"x\": no order of these 3 operations \
agrees with their real-time order and a register's semantics even allowing the 1 context operation(s) listed \
after them to have taken effect at any time after their invocation, or not at all: #3 read \"x\" → 2 (client \
2): ok [0.000030 s–0.000040 s]; #4 write \"x\" ← 3 (client 0): ok [0.000050 s–0.000060 s]; #5 read \"x\" → 2 \
(client 2): ok [0.000070 s–0.000080 s]. Context, counted as may or may not have taken effect: #2 write \"x\" ← \
2 (client 1): unknown [from 0.000020 s].
    key \"x\": operations: 3, 4, 5
    key \"x\": context, counted as may or may not have taken effect: 2
  list-append: invalid — 3 transactions over 2 keys violate strict-serializable: found G2-item ×1, which \
strict-serializable forbids. For example, G2-item (anti-dependency cycle with adjacent anti-dependencies, as in \
write skew): #6 → #7 → #6: #6 < #7: #6 read b = [] without 1, the next element, which #7 appended (rw); #7 < \
#6: #7 read a = [] without 1, the next element, which #6 appended (rw). Each must come before the next, and the \
last before the first: no order of these transactions is consistent with what they saw.
    operations: 6, 7
";
    assert_eq!(stdout, expected);
    assert!(!stdout.contains("compose"), "{stdout}");
}

/// Minimizing never changes the verdict; off or bounded, the output says the list is not minimal
/// and that the violation is certain.
#[test]
fn minimizing_can_be_turned_off_or_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let path = stored_run(dir.path());
    for (setting, says) in [
        (
            "off",
            "minimizing was off, so every acknowledged operation of the key is listed",
        ),
        ("0", "minimizing it stopped at its budget of 0 search steps"),
    ] {
        let out = chaos_check(&[&path, "--checker", "linearizability", "--minimize", setting]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{setting}: {stdout}");
        assert!(
            stdout.contains("The verdict is final") && stdout.contains(says),
            "{setting}: {stdout}"
        );
        assert!(
            stdout.contains("key \"x\": operations: 1, 3, 4, 5"),
            "{setting}: {stdout}"
        );
        assert!(
            stdout.contains("not minimal") && stdout.contains("the violation itself is certain"),
            "{setting}: {stdout}"
        );
    }
    // A time bound is accepted too, and a full minimization says nothing about budgets.
    let out = chaos_check(&[&path, "--checker", "linearizability", "--minimize", "2s"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("key \"x\": operations: 3, 4, 5") && !stdout.contains("not minimal"),
        "{stdout}"
    );
    // A bad setting names what is accepted.
    let out = chaos_check(&[&path, "--minimize", "some"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("`some` is not `off`, a number of search steps"),
        "{stderr}"
    );
}

/// The same transactions are valid under snapshot isolation (write skew is allowed there) and
/// invalid under serializability; an unknown model names the valid ones.
#[test]
fn the_consistency_model_decides_what_transactions_may_do() {
    let dir = tempfile::tempdir().unwrap();
    let path = stored_run(dir.path());
    let out = chaos_check(&[
        &path,
        "--checker",
        "list-append",
        "--consistency-model",
        "snapshot-isolation",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("satisfy snapshot-isolation")
            && stdout.contains("Also found, which snapshot-isolation allows: G2-item ×1"),
        "{stdout}"
    );
    let out = chaos_check(&[
        &path,
        "--checker",
        "list-append",
        "--consistency-model",
        "serializable",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let out = chaos_check(&[&path, "--consistency-model", "linearizable"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "the models are: read-committed, snapshot-isolation, serializable, strict-serializable"
        ),
        "{stderr}"
    );
}

/// A kind the format does not know is refused with the line, the field and the valid kinds.
#[test]
fn an_unknown_kind_names_the_field_and_the_kinds() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "scan.jsonl",
        &format!(
            "{HEADER}\n{}\n",
            r#"{"type":"op","id":1,"client":0,"kind":"scan","key":"x","invoke_us":1,"outcome":"unknown"}"#
        ),
    );
    let out = chaos_check(&[&path]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "line 2: field `kind`: unknown kind `scan`; the kinds are: read, write, cas, delete, append"
        ),
        "{stderr}"
    );
}
