//! The report: files are written, the HTML is self-contained and well formed, violations are drawn,
//! JUnit counts are right, and (when Chromium is installed) it renders without console errors.
//!
//! Set CHAOS_CHECK_REPORT_DIR=/some/dir to keep the generated report and screenshot for a look.

#[path = "common/model.rs"]
mod model;

use std::path::{Path, PathBuf};
use std::process::Command;

use chaos_check::{
    CheckReport, FaultEvent, FaultPhase, History, MeasurementEvent, Op, OpKind, Outcome, Validity,
    WarningEvent, check_history, write_report,
};
use model::{Params, inject_violation, register_history};
use serde_json::{Value, json};

/// A two-second run: register traffic from 6 clients on 3 nodes, a set workload that loses one
/// acknowledged add, a stale read, transactions with a read skew (G-single) and a write skew
/// (G2-item), two fault cases, a measurement, a warning about the first case and one about
/// none.
fn sample_history() -> History {
    let params = Params {
        unknown: 0.03,
        fail: 0.02,
        max_gap_us: 2_000,
        max_latency_us: 15_000,
        ..Params::new(6, 4, 700)
    };
    let mut h = register_history(7, &params);
    h.header.run = Some("report <test> & \"quotes\"".into());
    h.header.nodes = vec!["n1".into(), "n2".into(), "n3".into()];
    let end = h.end_us();
    // Operations against n1 fail while it is partitioned away, and for a while after.
    let (cut, heal) = (end / 4, end / 2);
    for op in &mut h.ops {
        if op.node.as_deref() == Some("n1")
            && (cut..heal + end / 20).contains(&op.invoke_us)
            && op.kind == OpKind::Read
        {
            op.outcome = Outcome::Fail;
            op.error = Some("connection refused".into());
        }
    }
    inject_violation(&mut h, 7);
    let mut next = h.ops.iter().map(|o| o.id).max().unwrap_or(0);
    let mut add = |element: i64, t: u64, outcome: Outcome| {
        next += 1;
        Op::new(next, 99, OpKind::Add, t, outcome)
            .key("set <a>")
            .value(element)
            .complete(t + 500)
            .node("n2")
    };
    let adds: Vec<Op> = (0..5)
        .map(|i| add(i, 1_000 + i as u64 * 1_000, Outcome::Ok))
        .collect();
    h.ops.extend(adds);
    let final_read = Op::new(next + 1, 99, OpKind::ReadSet, end - 1_000, Outcome::Ok)
        .key("set <a>")
        .values(vec![
            Value::from(0),
            Value::from(1),
            Value::from(3),
            Value::from(4),
        ])
        .complete(end);
    h.ops.push(final_read);
    let mut id = next + 1;
    let mut txn = |client: u64, t: u64, mops: Value| {
        id += 1;
        Op::new(id, client, OpKind::Txn, t, Outcome::Ok)
            .value(mops)
            .complete(t + 800)
            .node("n2")
    };
    let third = end / 3;
    let txns = vec![
        // Read skew: #b sees #a's append to tx but not to ty.
        txn(50, third, json!([["append", "tx", 1], ["append", "ty", 1]])),
        txn(51, third + 100, json!([["r", "tx", [1]], ["r", "ty", []]])),
        txn(52, third + 5_000, json!([["r", "ty", [1]]])),
        // Write skew on tu / tv.
        txn(
            53,
            third + 10_000,
            json!([["r", "tu", []], ["r", "tv", []], ["append", "tu", 1]]),
        ),
        txn(
            54,
            third + 10_200,
            json!([["r", "tu", []], ["r", "tv", []], ["append", "tv", 1]]),
        ),
        txn(55, third + 20_000, json!([["r", "tu", [1]], ["r", "tv", [1]]])),
    ];
    h.ops.extend(txns);
    let fault = |event, case: &str, kind: &str, node: &str, t| FaultEvent {
        event,
        case: case.into(),
        kind: kind.into(),
        nodes: vec![node.into()],
        time_us: t,
        detail: Some(format!("{kind} {node}")),
    };
    h.faults
        .push(fault(FaultPhase::Injected, "isolate-n1", "partition", "n1", cut));
    h.faults
        .push(fault(FaultPhase::Healed, "isolate-n1", "partition", "n1", heal));
    h.faults.push(fault(
        FaultPhase::Injected,
        "pause-n3",
        "pause",
        "n3",
        end * 6 / 10,
    ));
    h.faults
        .push(fault(FaultPhase::Healed, "pause-n3", "pause", "n3", end * 7 / 10));
    h.measurements.push(MeasurementEvent {
        time_us: end * 3 / 4,
        from: "n1".into(),
        to: "n2 <b>".into(),
        address: "10.0.0.3".into(),
        protocol: "tcp".into(),
        seconds: 1.0,
        throughput_bps: 7_950_000.0,
        loss_percent: 1.5,
        rtt_median_us: Some(1_200),
        rtt_min_us: Some(800),
        rtt_max_us: Some(4_100),
        source: Some("check fast again".into()),
    });
    h.warnings.push(WarningEvent {
        time_us: heal,
        case: Some("isolate-n1".into()),
        message: "the leader n1 was still the leader after 2.0s of partition".into(),
    });
    h.warnings.push(WarningEvent {
        time_us: end / 10,
        case: None,
        message: "a warning about no case <x>".into(),
    });
    h
}

/// Checks that tags nest properly (skipping script/style bodies, comments and declarations).
fn assert_well_formed(text: &str, what: &str) {
    const VOID: &[&str] = &["meta", "link", "input", "br", "img", "hr"];
    let mut stack: Vec<String> = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find('<') {
        rest = &rest[start..];
        if let Some(after) = rest.strip_prefix("<!--") {
            rest = &after[after
                .find("-->")
                .unwrap_or_else(|| panic!("{what}: unterminated comment"))
                + 3..];
            continue;
        }
        let end = rest
            .find('>')
            .unwrap_or_else(|| panic!("{what}: unterminated tag"));
        let tag = &rest[1..end];
        rest = &rest[end + 1..];
        if tag.starts_with('!') || tag.starts_with('?') {
            continue;
        }
        assert!(!tag.contains('<'), "{what}: '<' inside a tag: {tag}");
        if let Some(name) = tag.strip_prefix('/') {
            let open = stack.pop();
            assert_eq!(
                open.as_deref(),
                Some(name.trim()),
                "{what}: </{name}> closes {open:?}"
            );
            continue;
        }
        let name = tag
            .split(|c: char| c.is_whitespace() || c == '/')
            .next()
            .unwrap_or("")
            .to_string();
        if tag.ends_with('/') || VOID.contains(&name.as_str()) {
            continue;
        }
        if name == "script" || name == "style" {
            let close = format!("</{name}>");
            rest = &rest[rest.find(&close).unwrap_or_else(|| panic!("{what}: no {close}")) + close.len()..];
            continue;
        }
        stack.push(name);
    }
    assert!(stack.is_empty(), "{what}: unclosed tags {stack:?}");
}

fn generate(dir: &Path) -> (History, CheckReport) {
    let history = sample_history();
    let report = check_history(&history, &[]).unwrap();
    write_report(dir, &history, &report).unwrap();
    (history, report)
}

fn output_dir() -> (Option<tempfile::TempDir>, PathBuf) {
    match std::env::var_os("CHAOS_CHECK_REPORT_DIR") {
        Some(dir) => (None, PathBuf::from(dir)),
        None => {
            let tmp = tempfile::tempdir().unwrap();
            let path = tmp.path().to_path_buf();
            (Some(tmp), path)
        }
    }
}

#[test]
fn the_report_is_complete_self_contained_and_well_formed() {
    let (_keep, dir) = output_dir();
    let (history, report) = generate(&dir);
    let verdicts: Vec<(&str, Validity)> = report
        .verdict
        .children
        .iter()
        .map(|v| (v.checker.as_str(), v.valid))
        .collect();
    assert_eq!(
        verdicts,
        vec![
            ("linearizability", Validity::Invalid),
            ("list-append", Validity::Invalid),
            ("set", Validity::Invalid),
            ("availability", Validity::Invalid)
        ]
    );

    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert_well_formed(&html, "report.html");
    // Self-contained: nothing is fetched.
    for needle in ["src=", "href=\"http", "@import", "<link rel=\"stylesheet"] {
        assert!(
            !html.contains(needle),
            "report.html references something external: {needle}"
        );
    }
    // `url(` only for the page's own SVG markers.
    assert_eq!(
        html.matches("url(").count(),
        html.matches("url(#arrow-").count(),
        "report.html references something external with url("
    );
    // User text is escaped.
    assert!(html.contains("report &lt;test&gt; &amp; &quot;quotes&quot;"));
    assert!(!html.contains("<test>") && !html.contains("set <a>"));
    // The timeline shows fault lanes per node, every operation, and the violation.
    assert!(html.contains("id=\"timeline-svg\""));
    for node in ["n1", "n2", "n3"] {
        assert!(
            html.contains(&format!("text-anchor=\"end\">{node}</text>")),
            "no lane for {node}"
        );
    }
    assert_eq!(html.matches("class=\"op ").count(), history.ops.len());
    assert_eq!(html.matches("class=\"fault\"").count(), 2);
    assert!(html.contains("class=\"offending\""));
    assert!(
        html.contains("class=\"violation\""),
        "the linearizability violation is drawn as swimlanes"
    );
    assert!(html.contains("isolate-n1") && html.contains("pause-n3"));
    // The transactions' anomalies: each explained, drawn as a cycle and on swimlanes; the one the
    // model allows (write skew, under strict serializability it is forbidden too) is there.
    assert_eq!(
        html.matches("<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"cycle\"")
            .count(),
        2,
        "one cycle diagram per anomaly"
    );
    assert!(html.contains("G-single — read skew"), "the read skew is named");
    assert!(
        html.contains("G2-item — anti-dependency cycle with adjacent anti-dependencies"),
        "the write skew is named"
    );
    assert!(html.contains("class=\"edge rw\"") && html.contains("class=\"edge wr\""));
    assert!(html.contains("marker-end=\"url(#arrow-0-rw)\"") && html.contains("id=\"arrow-1-rw\""));
    assert!(html.contains("The anomaly&#39;s transactions, one lane per client"));

    for svg in ["latency.svg", "throughput.svg"] {
        let text = std::fs::read_to_string(dir.join(svg)).unwrap();
        assert!(text.starts_with("<?xml") && text.contains("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert_well_formed(&text, svg);
    }
    assert!(
        std::fs::read_to_string(dir.join("throughput.svg"))
            .unwrap()
            .contains("class=\"throughput\"")
    );

    let junit = std::fs::read_to_string(dir.join("junit.xml")).unwrap();
    assert_well_formed(&junit, "junit.xml");
    assert_eq!(
        junit.matches("<testcase ").count(),
        4 + report.availability.cases.len()
    );
    let failures = 4 + report
        .availability
        .cases
        .iter()
        .filter(|c| c.valid == Validity::Invalid)
        .count();
    assert!(
        junit.contains(&format!("tests=\"6\" failures=\"{failures}\"")),
        "{junit}"
    );

    let verdict: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("verdict.json")).unwrap()).unwrap();
    assert_eq!(verdict["verdict"]["valid"], "invalid");
    assert_eq!(verdict["availability"]["cases"].as_array().unwrap().len(), 2);
}

/// Measurements get a table and marks on the timeline; a warning sits right under its fault
/// case's row (one about no case at the table's end); none of it when the run has none.
#[test]
fn measurements_and_warnings_show_in_the_report() {
    let (_keep, dir) = output_dir();
    let (history, _) = generate(&dir);
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(html.contains("<a href=\"#measurements\">Measurements</a>"));
    let table = &html[html
        .find("<section id=\"measurements\">")
        .expect("a measurements section")..];
    let table = &table[..table.find("</section>").unwrap()];
    for figure in [
        "n1 → n2 &lt;b&gt;",
        "10.0.0.3",
        "tcp",
        "7.95 Mbit/s",
        "1.5 %",
        "check fast again",
    ] {
        assert!(table.contains(figure), "{figure} missing in {table}");
    }
    assert_eq!(table.matches("<tr class=\"measurement\">").count(), 1, "{table}");
    assert!(
        html.contains("<circle class=\"measurement\""),
        "a mark on the timeline"
    );
    assert_eq!(html.matches("<polygon class=\"warning\"").count(), 2);

    let cases = &html[html.find("<section id=\"cases\">").unwrap()..];
    let cases = &cases[..cases.find("</section>").unwrap()];
    let row = |needle: &str| {
        cases
            .find(needle)
            .unwrap_or_else(|| panic!("{needle} missing in {cases}"))
    };
    let (isolate, warning, pause) = (
        row("<tr><td>isolate-n1</td>"),
        row("the leader n1 was still the leader after 2.0s of partition"),
        row("<tr><td>pause-n3</td>"),
    );
    assert!(
        isolate < warning && warning < pause,
        "the warning is not right under its case's row: {cases}"
    );
    assert!(
        row("a warning about no case &lt;x&gt;") > pause,
        "the orphan warning ends the table"
    );
    assert_eq!(cases.matches("<tr class=\"warning\">").count(), 2);

    // The history carries them: written and read back unchanged.
    let mut jsonl = Vec::new();
    history.write_jsonl(&mut jsonl).unwrap();
    let back = History::parse(std::str::from_utf8(&jsonl).unwrap(), "roundtrip").unwrap();
    assert_eq!(back.measurements, history.measurements);
    // Written in time order.
    let mut warnings = history.warnings.clone();
    warnings.sort_by_key(|w| w.time_us);
    assert_eq!(back.warnings, warnings);

    // Without them: no section, no marks, no warning rows.
    let plain = History {
        measurements: Vec::new(),
        warnings: Vec::new(),
        ..history
    };
    let report = check_history(&plain, &[]).unwrap();
    let plain_dir = dir.join("plain");
    write_report(&plain_dir, &plain, &report).unwrap();
    let html = std::fs::read_to_string(plain_dir.join("report.html")).unwrap();
    for absent in ["id=\"measurements\"", "class=\"marks\"", "<tr class=\"warning\">"] {
        assert!(!html.contains(absent), "{absent} in a report without notes");
    }
}

#[test]
fn report_renders_in_headless_chromium() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/report_browser.sh");
    let has_chromium = ["chromium", "chromium-browser"].iter().any(|b| {
        Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {b}"))
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if !has_chromium {
        chaos_testkit::skip(
            "report_renders_in_headless_chromium",
            "chromium",
            &"chromium is not installed (apt-get install chromium), so the report cannot be rendered",
        );
        return;
    }
    let (_keep, dir) = output_dir();
    generate(&dir);
    let screenshot = dir.join("report.png");
    let run = Command::new("bash")
        .arg(&script)
        .arg(dir.join("report.html"))
        .arg(&screenshot)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "report_browser.sh failed: {stderr}");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.contains("report_browser: ok"), "{stdout}");
    // The sample's measurement and two warnings are laid out on the timeline.
    assert!(stdout.contains("3 note marks"), "{stdout}");
    assert!(std::fs::metadata(&screenshot).unwrap().len() > 20_000);

    // The check must be able to fail: a script error in the page is caught.
    let broken = dir.join("broken.html");
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    std::fs::write(
        &broken,
        html.replace("</body>", "<script>notDefined();</script></body>"),
    )
    .unwrap();
    let run = Command::new("bash")
        .arg(&script)
        .arg(&broken)
        .arg(dir.join("broken.png"))
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&run.stderr).contains("notDefined is not defined"));
}
