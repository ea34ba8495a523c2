//! Parsing: valid files round-trip; malformed ones fail with the line and the field named.

use chaos_check::{CheckError, FaultPhase, History, OpKind, Outcome, check_history_file};
use serde_json::Value;

const HEADER: &str = r#"{"type":"header","version":1,"run":"demo","nodes":["n1","n2"]}"#;

fn parse(lines: &[&str]) -> Result<History, String> {
    History::parse(&lines.join("\n"), "h.jsonl").map_err(|e| e.to_string())
}

#[test]
fn a_complete_history_parses() {
    let h = parse(&[
        HEADER,
        "",
        r#"{"type":"op","id":1,"client":0,"kind":"write","key":"x","value":{"a":1},"invoke_us":5,"complete_us":9,"outcome":"ok","node":"n1"}"#,
        r#"{"type":"op","id":2,"client":1,"kind":"read","key":"x","value":null,"invoke_us":6,"complete_us":8,"outcome":"ok"}"#,
        r#"{"type":"op","id":3,"client":1,"kind":"cas","key":"x","expected":null,"value":2,"invoke_us":10,"outcome":"unknown","error":"timeout"}"#,
        r#"{"type":"fault","event":"injected","case":"c1","kind":"partition","nodes":["n1"],"time_us":7,"future_field":true}"#,
        r#"{"type":"op","id":4,"client":2,"kind":"read_set","key":"s","values":[1,2],"invoke_us":11,"complete_us":12,"outcome":"ok"}"#,
        r#"{"type":"op","id":5,"client":2,"kind":"generate","value":"u-1","invoke_us":13,"complete_us":14,"outcome":"ok"}"#,
    ])
    .unwrap();
    assert_eq!(h.header.run.as_deref(), Some("demo"));
    assert_eq!(h.ops.len(), 5);
    assert_eq!(h.ops[0].value, Some(serde_json::json!({"a": 1})));
    // An explicit null (absent) is kept apart from a missing field.
    assert_eq!(h.ops[1].value, Some(Value::Null));
    assert_eq!(h.ops[2].expected, Some(Value::Null));
    assert_eq!(
        (h.ops[2].kind, h.ops[2].outcome, h.ops[2].complete_us),
        (OpKind::Cas, Outcome::Unknown, None)
    );
    assert_eq!(h.faults[0].event, FaultPhase::Injected);
    assert_eq!(h.end_us(), 14);

    let mut text = Vec::new();
    h.write_jsonl(&mut text).unwrap();
    let back = History::parse(std::str::from_utf8(&text).unwrap(), "again").unwrap();
    assert_eq!(back.header, h.header);
    assert_eq!(back.faults, h.faults);
    let mut ops = h.ops.clone();
    ops.sort_by_key(|o| o.invoke_us);
    assert_eq!(back.ops, ops);
}

#[test]
fn errors_name_the_line_and_the_field() {
    let cases: &[(&[&str], &str)] = &[
        (&[], "h.jsonl line 0: the history is empty"),
        (
            &[
                r#"{"type":"op","id":1,"client":0,"kind":"delete","key":"x","invoke_us":1,"outcome":"unknown"}"#,
            ],
            "h.jsonl line 1: the first record must be the header",
        ),
        (
            &[r#"{"type":"header","version":2}"#],
            "line 1: field `version`: history format version 2 is not supported",
        ),
        (&[HEADER, HEADER], "line 2: a second header record"),
        (
            &[HEADER, "{not json"],
            "h.jsonl line 2: column 2: key must be a string",
        ),
        (
            &[HEADER, r#"{"type":"opp"}"#],
            "line 2: field `type`: unknown record type `opp`; the record types are: header, op, fault",
        ),
        (
            &[
                HEADER,
                r#"{"type":"op","id":1,"kind":"read","key":"x","invoke_us":1,"outcome":"ok"}"#,
            ],
            "h.jsonl line 2: field `client`: missing; it is required",
        ),
        (
            &[
                HEADER,
                r#"{"type":"op","id":1,"client":0,"kind":"read","key":"x","value":1,"invoke_us":1,"outcome":"ok"}"#,
            ],
            "line 2: field `complete_us`: required when the outcome is `ok`",
        ),
        (
            &[
                HEADER,
                r#"{"type":"op","id":1,"client":0,"kind":"write","key":"x","invoke_us":1,"complete_us":2,"outcome":"ok"}"#,
            ],
            "line 2: field `value`: required for `write` operations (use `delete` to remove a key)",
        ),
        (
            &[
                HEADER,
                r#"{"type":"op","id":1,"client":0,"kind":"cas","key":"x","value":1,"invoke_us":1,"complete_us":2,"outcome":"ok"}"#,
            ],
            "line 2: field `expected`: required for `cas`",
        ),
        (
            &[
                HEADER,
                r#"{"type":"op","id":1,"client":0,"kind":"write","value":1,"invoke_us":1,"complete_us":2,"outcome":"ok"}"#,
            ],
            "line 2: field `key`: required for `write` operations",
        ),
        (
            &[
                HEADER,
                r#"{"type":"op","id":1,"client":0,"kind":"read","key":"x","value":1,"invoke_us":5,"complete_us":2,"outcome":"ok"}"#,
            ],
            "line 2: field `complete_us`: 2 is before `invoke_us` 5",
        ),
        (
            &[
                HEADER,
                r#"{"type":"op","id":1,"client":0,"kind":"incr","key":"c","value":"x","invoke_us":1,"complete_us":2,"outcome":"ok"}"#,
            ],
            "line 2: field `value`: \"x\" is not an integer",
        ),
        (
            &[
                HEADER,
                r#"{"type":"op","id":7,"client":0,"kind":"delete","key":"x","invoke_us":1,"complete_us":2,"outcome":"ok"}"#,
                r#"{"type":"op","id":7,"client":0,"kind":"delete","key":"x","invoke_us":3,"complete_us":4,"outcome":"ok"}"#,
            ],
            "line 3: field `id`: operation id 7 was already used on line 2",
        ),
        (
            &[
                HEADER,
                r#"{"type":"op","id":1,"client":0,"kind":"scan","key":"x","invoke_us":1,"outcome":"ok"}"#,
            ],
            "line 2: field `kind`: unknown kind `scan`; the kinds are: read, write, cas, delete, append, add, \
             read_set, incr, read_counter, generate, txn",
        ),
        (
            &[
                HEADER,
                r#"{"type":"op","id":1,"client":0,"kind":"read","key":"x","invoke_us":"5","outcome":"unknown"}"#,
            ],
            "line 2: field `invoke_us`: invalid type: string \"5\", expected u64",
        ),
        (
            &[
                HEADER,
                r#"{"type":"op","id":1,"client":0,"kind":"read","key":"x","invoke_us":5,"outcome":"maybe"}"#,
            ],
            "line 2: field `outcome`: unknown variant `maybe`, expected one of `ok`, `fail`, `unknown`",
        ),
        (
            &[
                HEADER,
                r#"{"type":"op","id":1,"client":0,"kind":"append","key":"x","invoke_us":1,"complete_us":2,"outcome":"ok"}"#,
            ],
            "line 2: field `value`: required for `append` operations (the string or element appended, not null)",
        ),
        (
            &[
                HEADER,
                r#"{"type":"op","id":1,"client":0,"kind":"txn","invoke_us":1,"complete_us":2,"outcome":"ok"}"#,
            ],
            "line 2: field `value`: required for `txn` operations (the micro-operations",
        ),
        (
            &[
                HEADER,
                r#"{"type":"op","id":1,"client":0,"kind":"txn","value":[],"invoke_us":1,"complete_us":2,"outcome":"ok"}"#,
            ],
            "line 2: field `value`: a `txn` needs at least one micro-operation",
        ),
        (
            &[
                HEADER,
                r#"{"type":"op","id":1,"client":0,"kind":"txn","value":{"x":1},"invoke_us":1,"complete_us":2,"outcome":"ok"}"#,
            ],
            "line 2: field `value`: {\"x\":1} is not a list of micro-operations",
        ),
        (
            &[
                HEADER,
                r#"{"type":"op","id":1,"client":0,"kind":"txn","value":[["append","x",1],["w","y",2]],"invoke_us":1,"complete_us":2,"outcome":"ok"}"#,
            ],
            "line 2: field `value`: micro-operation 2 ([\"w\",\"y\",2]): unknown micro-operation \"w\"; the \
             micro-operations are: append, r",
        ),
        (
            &[
                HEADER,
                r#"{"type":"op","id":1,"client":0,"kind":"txn","value":[["r","y",3]],"invoke_us":1,"complete_us":2,"outcome":"ok"}"#,
            ],
            "line 2: field `value`: micro-operation 1 ([\"r\",\"y\",3]): the value read 3 is not a list (or null)",
        ),
        (
            &[
                HEADER,
                r#"{"type":"op","id":1,"client":0,"kind":"txn","value":[["append",{"k":1},3]],"invoke_us":1,"complete_us":2,"outcome":"ok"}"#,
            ],
            "micro-operation 1 ([\"append\",{\"k\":1},3]): the key {\"k\":1} is not a string or an integer",
        ),
        (
            &[
                HEADER,
                r#"{"type":"op","id":1,"client":0,"kind":"txn","value":[["append","x",null]],"invoke_us":1,"complete_us":2,"outcome":"ok"}"#,
            ],
            "micro-operation 1 ([\"append\",\"x\",null]): the element appended must not be null",
        ),
        (
            &[
                HEADER,
                r#"{"type":"op","id":1,"client":0,"kind":"txn","value":[["append","x"]],"invoke_us":1,"complete_us":2,"outcome":"ok"}"#,
            ],
            "micro-operation 1 ([\"append\",\"x\"]): must be a list of three",
        ),
        (
            &[r#"{"type":"header","version":1,"max_error_fraction":1.5}"#],
            "line 1: field `max_error_fraction`: 1.5 is not a fraction in [0, 1]",
        ),
        (
            &[
                HEADER,
                r#"{"type":"fault","event":"injected","case":"","kind":"kill","time_us":1}"#,
            ],
            "line 2: field `case`",
        ),
    ];
    let mut wrong = Vec::new();
    for (lines, expected) in cases {
        match parse(lines) {
            Ok(_) => wrong.push(format!("{expected:?}: parsed")),
            Err(error) if !error.contains(expected) => wrong.push(format!("{expected:?}: got {error:?}")),
            Err(_) => {}
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn check_history_file_reports_missing_files_and_unknown_checkers() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.jsonl");
    let error = check_history_file(&missing, &[]).unwrap_err().to_string();
    assert!(
        error.contains("nope.jsonl") && error.contains("cannot open"),
        "{error}"
    );

    let path = dir.path().join("h.jsonl");
    std::fs::write(&path, format!("{HEADER}\n")).unwrap();
    let error = check_history_file(&path, &["linearisability".to_string()]).unwrap_err();
    assert!(matches!(error, CheckError::UnknownChecker { .. }));
    assert!(
        error
            .to_string()
            .contains("linearizability, list-append, set, counter"),
        "{error}"
    );
}

/// The examples in docs/history.md are real: they parse, and the first one is the stale read the
/// text says it is.
#[test]
fn the_documented_examples_parse_and_mean_what_the_docs_say() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/history.md")).unwrap();
    let blocks: Vec<&str> = doc.split("```").skip(1).step_by(2).collect();
    let first = blocks[0]
        .strip_prefix("text\n")
        .expect("the first example is a text block");
    let h = History::parse(first, "docs/history.md").unwrap();
    let report = chaos_check::check_history(&h, &[]).unwrap();
    let lin = &report.verdict.children[0];
    assert_eq!(
        (lin.checker.as_str(), lin.valid),
        ("linearizability", chaos_check::Validity::Invalid)
    );
    assert_eq!(lin.ops, vec![1, 2, 3]);
    let mut json_examples = 0;
    for block in blocks.iter().filter_map(|b| b.strip_prefix("json\n")) {
        let text = if block.contains("\"type\":\"header\"") {
            block.to_string()
        } else {
            format!("{HEADER}\n{block}")
        };
        History::parse(&text, "docs/history.md").unwrap_or_else(|e| panic!("{e}\n{text}"));
        json_examples += 1;
    }
    assert_eq!(json_examples, 7);
}

/// Measurement and warning records are checked like the others: a bad figure or an empty case
/// is an error naming the line and the field.
#[test]
fn bad_measurement_and_warning_records_name_the_field() {
    let m = r#"{"type":"measurement","time_us":1,"from":"n1","to":"n2","address":"10.0.0.3","protocol":"tcp","seconds":1.0,"throughput_bps":-5.0,"loss_percent":0.0}"#;
    let e = History::parse(&format!("{HEADER}\n{m}"), "h.jsonl").unwrap_err();
    assert_eq!(e.line, 2, "{e}");
    assert!(e.message.contains("field `throughput_bps`"), "{e}");
    let w = r#"{"type":"warning","time_us":1,"case":"","message":"x"}"#;
    let e = History::parse(&format!("{HEADER}\n{w}"), "h.jsonl").unwrap_err();
    assert!(e.message.contains("field `case`"), "{e}");
    let ok = r#"{"type":"warning","time_us":1,"message":"x"}"#;
    let h = History::parse(&format!("{HEADER}\n{ok}"), "h.jsonl").unwrap();
    assert_eq!(h.warnings.len(), 1);
}

/// What a run killed while writing leaves: the last line cut mid-record, no newline. That line is
/// left out and reported; everything before it is judged. A cut anywhere else, or a last line
/// that is whole but wrong, is still an error.
#[test]
fn a_history_cut_mid_record_is_judged_without_its_last_line() {
    let op1 = r#"{"type":"op","id":1,"client":0,"kind":"write","key":"x","value":1,"invoke_us":5,"complete_us":9,"outcome":"ok"}"#;
    let op2 = r#"{"type":"op","id":2,"client":1,"kind":"read","key":"x","value":1,"invoke_us":10,"complete_us":12,"outcome":"ok"}"#;
    for cut in [1, 17, op2.len() / 2, op2.len() - 1] {
        let text = format!("{HEADER}\n{op1}\n{}", &op2[..cut]);
        let h = History::parse(&text, "h.jsonl").unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        assert_eq!(h.ops.len(), 1, "cut at {cut}");
        let tail = h.cut_tail.expect("the cut line is reported");
        assert_eq!((tail.line, tail.bytes), (3, cut));
    }
    // Whole records without a final newline are not cut.
    let h = History::parse(&format!("{HEADER}\n{op1}\n{op2}"), "h.jsonl").unwrap();
    assert_eq!((h.ops.len(), h.cut_tail), (2, None));
    // A cut line followed by more lines was not the process dying mid-write: an error.
    let e = History::parse(&format!("{HEADER}\n{}\n{op2}\n", &op1[..20]), "h.jsonl").unwrap_err();
    assert_eq!(e.line, 2, "{e}");
    // A whole last line that is wrong (here: ends in garbage, not mid-record) is an error too.
    let e = History::parse(&format!("{HEADER}\n{op1}\n{op2}x"), "h.jsonl").unwrap_err();
    assert_eq!(e.line, 3, "{e}");
}

/// The writer flushes every record as it is written: a reader sees each one at once, without the
/// writer being flushed or dropped (a SIGKILLed run keeps every completed operation).
#[test]
fn every_record_reaches_the_file_as_it_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history.jsonl");
    let file = std::fs::File::create(&path).unwrap();
    let mut writer = chaos_check::HistoryWriter::new(
        std::io::BufWriter::with_capacity(1 << 20, file),
        &chaos_check::Header::new(),
    )
    .unwrap();
    for id in 1..=3 {
        writer
            .op(&chaos_check::Op::new(id, 0, OpKind::Read, id * 10, Outcome::Unknown).key("k"))
            .unwrap();
        let h = History::read_file(&path).unwrap();
        assert_eq!(
            h.ops.len() as u64,
            id,
            "record {id} is in the file before any flush"
        );
    }
    std::mem::forget(writer); // as a killed process would: no drop, no final flush
}

/// `append` and `txn` records parse, survive a round trip, and describe themselves readably.
#[test]
fn append_and_txn_records_parse_and_round_trip() {
    let h = parse(&[
        HEADER,
        r#"{"type":"op","id":1,"client":0,"kind":"append","key":"x","value":"ab","invoke_us":1,"complete_us":2,"outcome":"ok"}"#,
        r#"{"type":"op","id":2,"client":1,"kind":"txn","value":[["append","x",3],["r",7,[1,2]],["r","z",null]],"invoke_us":3,"complete_us":4,"outcome":"ok"}"#,
        r#"{"type":"op","id":3,"client":2,"kind":"txn","value":[["r","x",null]],"invoke_us":5,"outcome":"unknown"}"#,
    ])
    .unwrap();
    assert_eq!(h.ops[0].kind, OpKind::Append);
    assert_eq!(h.ops[0].describe(), "#1 append \"x\" ← \"ab\" (client 0): ok");
    assert_eq!(h.ops[1].kind, OpKind::Txn);
    assert_eq!(
        h.ops[1].describe(),
        "#2 txn [append x 3, r 7 [1,2], r z ?] (client 1): ok"
    );
    let mops = chaos_check::micro_ops(h.ops[1].value.as_ref().unwrap()).unwrap();
    assert_eq!(mops.len(), 3);
    assert_eq!(mops[1].key(), "7", "an integer key is its decimal string");
    assert!(matches!(mops[2], chaos_check::MicroOp::Read { list: None, .. }));
    let mut text = Vec::new();
    h.write_jsonl(&mut text).unwrap();
    let back = History::parse(std::str::from_utf8(&text).unwrap(), "again").unwrap();
    assert_eq!(back.ops, h.ops);
}
