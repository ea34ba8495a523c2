//! `chaos check`: re-running the checkers on stored histories, with the exit code telling the
//! verdict and the offending operations named.

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
        stdout.contains("operations:") && stdout.contains('4'),
        "the stale read is named: {stdout}"
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
