//! Porcupine's key-value test histories (`test_data/kv/c01-*.txt`, `c10-*`, `c50-*` in
//! anishathalye/porcupine: Jepsen-style `get` / `put` / `append` events over keys "0"–"9", where
//! `append` concatenates strings and a `get` of a missing key returns `""`) in our format: a few
//! of their shapes, rewritten by hand. Each event's position in their file becomes its time in
//! microseconds; `:get` is our `read`, `:put` our `write`; an operation invoked and never
//! returned (porcupine completes it at the end of the history) is our `unknown`. Porcupine's model
//! starts every key at `""`, ours at absent: on a key with appends the two read alike, and a get
//! of `""` on a key nobody appends to is written as `null` (docs/history.md, "Converting").

use chaos_check::{Checker, History, Linearizability, Validity, Verdict, check_history};

const HEADER: &str = r#"{"type":"header","version":1,"run":"porcupine-kv"}"#;

fn check(ops: &str) -> Verdict {
    let h =
        History::parse(&format!("{HEADER}\n{ops}"), "porcupine-kv.jsonl").unwrap_or_else(|e| panic!("{e}"));
    Linearizability::default().check(&h)
}

/// c01-ok: one client, appends and gets over several keys; a get of a key nobody wrote is `""`.
const ONE_CLIENT_OK: &str = r#"{"type":"op","id":1,"client":0,"kind":"append","key":"0","value":"x 0 0 y","invoke_us":0,"complete_us":1,"outcome":"ok"}
{"type":"op","id":2,"client":0,"kind":"read","key":"7","value":null,"invoke_us":2,"complete_us":3,"outcome":"ok"}
{"type":"op","id":3,"client":0,"kind":"read","key":"3","value":"","invoke_us":4,"complete_us":5,"outcome":"ok"}
{"type":"op","id":4,"client":0,"kind":"append","key":"0","value":"x 0 1 y","invoke_us":6,"complete_us":7,"outcome":"ok"}
{"type":"op","id":5,"client":0,"kind":"append","key":"1","value":"x 0 6 y","invoke_us":8,"complete_us":9,"outcome":"ok"}
{"type":"op","id":6,"client":0,"kind":"read","key":"1","value":"x 0 6 y","invoke_us":10,"complete_us":11,"outcome":"ok"}
{"type":"op","id":7,"client":0,"kind":"read","key":"0","value":"x 0 0 yx 0 1 y","invoke_us":12,"complete_us":13,"outcome":"ok"}
{"type":"op","id":8,"client":0,"kind":"append","key":"2","value":"x 0 7 y","invoke_us":14,"complete_us":15,"outcome":"ok"}
{"type":"op","id":9,"client":0,"kind":"write","key":"2","value":"x 0 10 y","invoke_us":16,"complete_us":17,"outcome":"ok"}
{"type":"op","id":10,"client":0,"kind":"read","key":"2","value":"x 0 10 y","invoke_us":18,"complete_us":19,"outcome":"ok"}
{"type":"op","id":11,"client":0,"kind":"append","key":"2","value":"x 0 11 y","invoke_us":20,"complete_us":21,"outcome":"ok"}
{"type":"op","id":12,"client":0,"kind":"read","key":"2","value":"x 0 10 yx 0 11 y","invoke_us":22,"complete_us":23,"outcome":"ok"}
{"type":"op","id":13,"client":0,"kind":"append","key":"3","value":"x 0 12 y","invoke_us":24,"complete_us":25,"outcome":"ok"}
{"type":"op","id":14,"client":0,"kind":"read","key":"3","value":"x 0 12 y","invoke_us":26,"complete_us":27,"outcome":"ok"}
"#;

/// c01-bad: key "7" gets two appends in a row, then a get returns only the first.
const ONE_CLIENT_BAD: &str = r#"{"type":"op","id":1,"client":0,"kind":"append","key":"7","value":"x 0 0 y","invoke_us":0,"complete_us":1,"outcome":"ok"}
{"type":"op","id":2,"client":0,"kind":"read","key":"0","value":null,"invoke_us":2,"complete_us":3,"outcome":"ok"}
{"type":"op","id":3,"client":0,"kind":"append","key":"7","value":"x 0 3 y","invoke_us":4,"complete_us":5,"outcome":"ok"}
{"type":"op","id":4,"client":0,"kind":"append","key":"3","value":"x 0 4 y","invoke_us":6,"complete_us":7,"outcome":"ok"}
{"type":"op","id":5,"client":0,"kind":"read","key":"7","value":"x 0 0 y","invoke_us":8,"complete_us":9,"outcome":"ok"}
{"type":"op","id":6,"client":0,"kind":"read","key":"3","value":"x 0 4 y","invoke_us":10,"complete_us":11,"outcome":"ok"}
"#;

/// c10-ok: ten clients, concurrent appends to the same keys; gets may see any order the
/// overlaps allow, and a client whose last append never returned.
const TEN_CLIENTS_OK: &str = r#"{"type":"op","id":1,"client":9,"kind":"append","key":"0","value":"x 9 0 y","invoke_us":0,"complete_us":12,"outcome":"ok"}
{"type":"op","id":2,"client":2,"kind":"append","key":"1","value":"x 2 0 y","invoke_us":1,"complete_us":20,"outcome":"ok"}
{"type":"op","id":3,"client":0,"kind":"append","key":"0","value":"x 0 0 y","invoke_us":2,"complete_us":30,"outcome":"ok"}
{"type":"op","id":4,"client":1,"kind":"read","key":"9","value":"x 3 0 y","invoke_us":3,"complete_us":16,"outcome":"ok"}
{"type":"op","id":5,"client":5,"kind":"append","key":"9","value":"x 5 0 y","invoke_us":4,"complete_us":18,"outcome":"ok"}
{"type":"op","id":6,"client":3,"kind":"append","key":"9","value":"x 3 0 y","invoke_us":5,"complete_us":14,"outcome":"ok"}
{"type":"op","id":7,"client":4,"kind":"append","key":"1","value":"x 4 0 y","invoke_us":6,"complete_us":10,"outcome":"ok"}
{"type":"op","id":8,"client":7,"kind":"append","key":"5","value":"x 7 0 y","invoke_us":7,"outcome":"unknown"}
{"type":"op","id":9,"client":6,"kind":"append","key":"9","value":"x 6 0 y","invoke_us":8,"complete_us":22,"outcome":"ok"}
{"type":"op","id":10,"client":8,"kind":"read","key":"8","value":null,"invoke_us":9,"complete_us":11,"outcome":"ok"}
{"type":"op","id":11,"client":4,"kind":"append","key":"1","value":"x 4 1 y","invoke_us":13,"complete_us":15,"outcome":"ok"}
{"type":"op","id":12,"client":8,"kind":"read","key":"1","value":"x 4 0 yx 2 0 yx 4 1 y","invoke_us":24,"complete_us":26,"outcome":"ok"}
{"type":"op","id":13,"client":1,"kind":"read","key":"9","value":"x 3 0 yx 5 0 yx 6 0 y","invoke_us":25,"complete_us":27,"outcome":"ok"}
{"type":"op","id":14,"client":9,"kind":"read","key":"0","value":"x 9 0 yx 0 0 y","invoke_us":31,"complete_us":33,"outcome":"ok"}
{"type":"op","id":15,"client":8,"kind":"read","key":"5","value":"x 7 0 y","invoke_us":34,"complete_us":35,"outcome":"ok"}
"#;

/// c10-bad: two gets of key "1" after both appends completed see them in opposite orders.
const TEN_CLIENTS_BAD: &str = r#"{"type":"op","id":1,"client":2,"kind":"append","key":"1","value":"x 2 0 y","invoke_us":1,"complete_us":20,"outcome":"ok"}
{"type":"op","id":2,"client":4,"kind":"append","key":"1","value":"x 4 0 y","invoke_us":6,"complete_us":10,"outcome":"ok"}
{"type":"op","id":3,"client":8,"kind":"read","key":"1","value":"x 4 0 yx 2 0 y","invoke_us":21,"complete_us":26,"outcome":"ok"}
{"type":"op","id":4,"client":1,"kind":"read","key":"1","value":"x 2 0 yx 4 0 y","invoke_us":27,"complete_us":28,"outcome":"ok"}
{"type":"op","id":5,"client":3,"kind":"read","key":"2","value":null,"invoke_us":27,"complete_us":28,"outcome":"ok"}
"#;

#[test]
fn porcupine_one_client_histories() {
    let v = check(ONE_CLIENT_OK);
    assert_eq!(v.valid, Validity::Valid, "{}", v.explanation);
    assert_eq!(v.details["keys"], 5, "{}", v.details);

    let v = check(ONE_CLIENT_BAD);
    assert_eq!(v.valid, Validity::Invalid, "{}", v.explanation);
    // The second append and the stale get, with the first append as context: it must have taken
    // effect for the get to see it, and it may as well not have been acknowledged.
    assert_eq!(v.ops, vec![3, 5], "{}", v.explanation);
    assert_eq!(v.details["invalid"][0]["context_ops"], serde_json::json!([1]));
    assert!(v.explanation.contains("Key \"7\""), "{}", v.explanation);
}

#[test]
fn porcupine_ten_client_histories() {
    let v = check(TEN_CLIENTS_OK);
    assert_eq!(v.valid, Validity::Valid, "{}", v.explanation);

    let v = check(TEN_CLIENTS_BAD);
    assert_eq!(v.valid, Validity::Invalid, "{}", v.explanation);
    assert_eq!(v.ops, vec![3, 4], "the two gets: {}", v.explanation);
    assert_eq!(v.details["invalid"][0]["context_ops"], serde_json::json!([1, 2]));
    assert_eq!(v.details["valid_keys"], 1);
}

/// The converted histories go through the whole pipeline: parsed, the linearizability checker
/// picked for their `append` operations.
#[test]
fn appends_pick_the_linearizability_checker() {
    let h = History::parse(&format!("{HEADER}\n{ONE_CLIENT_BAD}"), "kv").unwrap();
    let report = check_history(&h, &[]).unwrap();
    let names: Vec<&str> = report
        .verdict
        .children
        .iter()
        .map(|v| v.checker.as_str())
        .collect();
    assert_eq!(names, vec!["linearizability"]);
    assert_eq!(report.verdict.valid, Validity::Invalid);
}
