//! The run report: one self-contained `report.html` (inline CSS, SVG and a few lines of JS, nothing
//! fetched), standalone `latency.svg` and `throughput.svg`, `junit.xml` for CI systems and
//! `verdict.json` for machines.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::anomaly_report::render_list_append;
use crate::availability::CaseResult;
use crate::checker::{Validity, Verdict};
use crate::history::{History, Outcome};
use crate::svg::{
    FAIL_COLOR, MEASUREMENT_COLOR, OFFENDING_COLOR, OK_COLOR, Timeline, UNKNOWN_COLOR, WARNING_COLOR, esc,
    latency, secs, violation_svg,
};
use crate::{CheckError, CheckReport};

/// The files [`write_report`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportFiles {
    /// `report.html`: the self-contained report.
    pub html: PathBuf,
    /// `latency.svg`: fault lanes over operation latency.
    pub latency_svg: PathBuf,
    /// `throughput.svg`: throughput and error rate.
    pub throughput_svg: PathBuf,
    /// `junit.xml`: one test case per checker and per fault case.
    pub junit: PathBuf,
    /// `verdict.json`: the verdicts and the availability analysis.
    pub verdict_json: PathBuf,
}

/// Writes `report.html`, `latency.svg`, `throughput.svg`, `junit.xml` and `verdict.json` into `dir`
/// (created if missing) for a checked history.
pub fn write_report(dir: &Path, history: &History, report: &CheckReport) -> Result<ReportFiles, CheckError> {
    std::fs::create_dir_all(dir).map_err(|cause| CheckError::Write {
        path: dir.to_path_buf(),
        cause,
    })?;
    let offending = report.verdict.ops.clone();
    let timeline = Timeline::new(history, report.availability.windows().collect(), &offending);
    let files = ReportFiles {
        html: dir.join("report.html"),
        latency_svg: dir.join("latency.svg"),
        throughput_svg: dir.join("throughput.svg"),
        junit: dir.join("junit.xml"),
        verdict_json: dir.join("verdict.json"),
    };
    let verdict_json = json!({"verdict": report.verdict, "availability": report.availability});
    let writes = [
        (&files.html, render_html(history, report, &timeline)),
        (
            &files.latency_svg,
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n{}\n",
                timeline.latency_file()
            ),
        ),
        (
            &files.throughput_svg,
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n{}\n",
                timeline.throughput_file()
            ),
        ),
        (&files.junit, render_junit(history, report)),
        (
            &files.verdict_json,
            serde_json::to_string_pretty(&verdict_json).unwrap_or_default() + "\n",
        ),
    ];
    for (path, text) in writes {
        std::fs::write(path, text).map_err(|cause| CheckError::Write {
            path: path.clone(),
            cause,
        })?;
    }
    Ok(files)
}

const CSS: &str = "
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0 auto;max-width:1140px;padding:16px;color:#222;background:#fafafa}
h1{font-size:22px;margin:4px 0}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:15px;margin:16px 0 6px}
.badge{display:inline-block;padding:2px 8px;border-radius:4px;color:#fff;font-weight:bold;font-size:12px;letter-spacing:.5px}
.valid{background:#2e7d32}.invalid{background:#c62828}.unknown{background:#ef8f00}.warn{background:#ef6c00}
tr.warning td{background:#fff3e0}
.summary{font-size:15px}.meta{color:#555;margin:4px 0}
nav a{margin-right:14px}
table{border-collapse:collapse;width:100%;background:#fff;font-size:13px}
th,td{border:1px solid #ddd;padding:4px 6px;text-align:left;vertical-align:top}th{background:#f0f0f0}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.legend span{display:inline-block;margin-right:14px}.swatch{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:4px;vertical-align:middle}
#timeline{overflow-x:auto;background:#fff;border:1px solid #ddd}
#timeline.hide-ok .op.ok{display:none}
pre{background:#fff;border:1px solid #ddd;padding:8px;overflow:auto;max-height:320px;font-size:12px}
.violation-box{background:#fff;border:1px solid #ddd;padding:8px;margin-bottom:12px;overflow-x:auto}
li.context{color:#777}
h4.anomaly{font-size:14px;margin:14px 0 4px}
.violation-box svg.cycle{display:block;margin:0 auto 8px}
footer{color:#888;font-size:12px;margin-top:30px}
";

/// Wires the "show ok operations" switch, and once the page has loaded records on `<body>` what a
/// headless browser check needs: that the script ran, the timeline's laid-out size, how many
/// operation markers and note marks (measurements, warnings) it laid out, and how many resources
/// the page fetched (must be 0: self-contained).
const SCRIPT: &str = "
(function () {
  var timeline = document.getElementById('timeline');
  var toggle = document.getElementById('show-ok');
  if (toggle) {
    toggle.addEventListener('change', function () { timeline.classList.toggle('hide-ok', !toggle.checked); });
  }
  window.addEventListener('load', function () {
    var body = document.body;
    var box = timeline.getBoundingClientRect();
    body.setAttribute('data-timeline-width', String(Math.round(box.width)));
    body.setAttribute('data-timeline-height', String(Math.round(box.height)));
    body.setAttribute('data-ops-drawn', String(timeline.querySelectorAll('.op').length));
    var marks = timeline.querySelectorAll('.marks circle, .marks polygon');
    var laidOut = Array.prototype.filter.call(marks, function (m) { return m.getBoundingClientRect().width > 0; });
    body.setAttribute('data-marks', String(laidOut.length));
    body.setAttribute('data-resources', String(performance.getEntriesByType('resource').length));
    body.setAttribute('data-ready', '1');
  });
})();
";

fn badge(valid: Validity) -> String {
    format!(
        "<span class=\"badge {0}\">{1}</span>",
        valid.as_str(),
        valid.as_str().to_uppercase()
    )
}

fn render_html(history: &History, report: &CheckReport, timeline: &Timeline) -> String {
    let run = history
        .header
        .run
        .clone()
        .unwrap_or_else(|| "unnamed run".to_string());
    let mut counts = [0usize; 3];
    for op in &history.ops {
        counts[match op.outcome {
            Outcome::Ok => 0,
            Outcome::Fail => 1,
            Outcome::Unknown => 2,
        }] += 1;
    }
    let clients: std::collections::BTreeSet<u64> = history.ops.iter().map(|o| o.client).collect();
    let mut h = String::with_capacity(64 * 1024 + history.ops.len() * 200);
    let _ = writeln!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>chaos report: {}</title>\n<link rel=\"icon\" href=\"data:,\">\n<style>{CSS}</style>\n</head>\n<body>",
        esc(&run)
    );
    let _ = writeln!(
        h,
        "<header>\n<h1>chaos report: {}</h1>\n<p class=\"summary\">{} {}</p>\n<p class=\"meta\">{} operations \
         ({} ok, {} failed, {} unknown) by {} clients over {}; {} faults in {} fault cases{}.</p>\n</header>",
        esc(&run),
        badge(report.verdict.valid),
        esc(&report.verdict.explanation),
        history.ops.len(),
        counts[0],
        counts[1],
        counts[2],
        clients.len(),
        secs(history.end_us()),
        report.availability.windows().count(),
        report.availability.cases.len(),
        history
            .header
            .started_at
            .as_deref()
            .map(|s| format!("; started {}", esc(s)))
            .unwrap_or_default()
    );
    h.push_str(
        "<nav><a href=\"#timeline-section\">Timeline</a><a href=\"#verdicts\">Verdicts</a>\
         <a href=\"#cases\">Fault cases</a><a href=\"#violations\">Violations</a>",
    );
    if !history.measurements.is_empty() {
        h.push_str("<a href=\"#measurements\">Measurements</a>");
    }
    h.push_str("</nav>\n");
    // Timeline.
    h.push_str("<section id=\"timeline-section\">\n<h2>Timeline</h2>\n<p class=\"legend\">");
    for (label, color) in [
        ("ok", OK_COLOR),
        ("failed", FAIL_COLOR),
        ("unknown outcome", UNKNOWN_COLOR),
        ("violation", OFFENDING_COLOR),
    ] {
        let _ = write!(
            h,
            "<span><i class=\"swatch\" style=\"background:{color}\"></i>{label}</span>"
        );
    }
    for (shown, label, color) in [
        (!history.measurements.is_empty(), "measurement", MEASUREMENT_COLOR),
        (!history.warnings.is_empty(), "warning", WARNING_COLOR),
    ] {
        if shown {
            let _ = write!(
                h,
                "<span><i class=\"swatch\" style=\"background:{color}\"></i>{label} (notes lane)</span>"
            );
        }
    }
    for (kind, color) in timeline.kind_colors() {
        let _ = write!(
            h,
            "<span><i class=\"swatch\" style=\"background:{color}\"></i>fault: {}</span>",
            esc(kind)
        );
    }
    h.push_str(
        "<label><input type=\"checkbox\" id=\"show-ok\" checked> show ok operations</label></p>\n\
         <p class=\"meta\">Top: one lane per node, shaded while a fault is in place. Then each operation's \
         latency at its invocation time (hover for details), ok operations completed per second, and the \
         share of operations that failed or timed out.</p>\n<div id=\"timeline\">",
    );
    h.push_str(&timeline.full());
    h.push_str("</div>\n</section>\n");
    // Verdicts.
    h.push_str(
        "<section id=\"verdicts\">\n<h2>Checker verdicts</h2>\n<table>\n\
         <tr><th>checker</th><th>result</th><th>explanation</th></tr>\n",
    );
    let leaves = report.verdict.leaves();
    let verdicts: Vec<&Verdict> = if report.verdict.children.is_empty() {
        vec![&report.verdict]
    } else {
        leaves
    };
    for v in &verdicts {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&v.checker),
            badge(v.valid),
            esc(&v.explanation)
        );
    }
    h.push_str("</table>\n");
    for v in &verdicts {
        if v.details.is_null() {
            continue;
        }
        let mut text = serde_json::to_string_pretty(&v.details).unwrap_or_default();
        if text.len() > 40_000 {
            let cut = (0..=40_000)
                .rev()
                .find(|i| text.is_char_boundary(*i))
                .unwrap_or(0);
            text.truncate(cut);
            text.push_str("\n… (truncated; see verdict.json)");
        }
        let _ = writeln!(
            h,
            "<details><summary>{} details</summary><pre>{}</pre></details>",
            esc(&v.checker),
            esc(&text)
        );
    }
    h.push_str("</section>\n");
    // Fault cases, with the warnings about them.
    render_cases(&mut h, history, report);
    render_measurements(&mut h, history);
    // Violations.
    h.push_str("<section id=\"violations\">\n<h2>Violations</h2>\n");
    let mut any = false;
    for v in &verdicts {
        if v.valid != Validity::Invalid {
            continue;
        }
        any = true;
        if v.checker == "linearizability" {
            render_linearizability_violations(&mut h, history, v);
        } else if v.checker == "list-append" {
            render_list_append(&mut h, history, v);
        } else {
            let _ = writeln!(h, "<h3>{}</h3>\n<ol>", esc(&v.checker));
            for id in v.ops.iter().take(100) {
                if let Some(op) = history.op(*id) {
                    let _ = writeln!(h, "<li>{}</li>", esc(&crate::svg::op_title(op)));
                }
            }
            if v.ops.len() > 100 {
                let _ = writeln!(h, "<li>… and {} more (see verdict.json)</li>", v.ops.len() - 100);
            }
            h.push_str("</ol>\n");
        }
    }
    if !any {
        h.push_str("<p>No checker found a violation.</p>\n");
    }
    h.push_str("</section>\n");
    let _ = writeln!(
        h,
        "<footer>Generated by chaos-check {} from history format version {}.</footer>\n<script>{SCRIPT}</script>\n\
         </body>\n</html>",
        env!("CARGO_PKG_VERSION"),
        history.header.version
    );
    h
}

/// The warnings of `case` (`None`: those tied to no fault case of the report) as table rows
/// spanning `columns`.
fn warning_rows(h: &mut String, history: &History, report: &CheckReport, case: Option<&str>, columns: usize) {
    let known = |c: &str| report.availability.cases.iter().any(|k| k.case == c);
    for w in &history.warnings {
        let matches = match (case, w.case.as_deref()) {
            (Some(case), Some(c)) => c == case,
            (None, Some(c)) => !known(c),
            (None, None) => true,
            (Some(_), None) => false,
        };
        if matches {
            let _ = writeln!(
                h,
                "<tr class=\"warning\"><td colspan=\"{columns}\"><span class=\"badge warn\">WARNING</span> \
                 at {}{}: {}</td></tr>",
                secs(w.time_us),
                w.case
                    .as_deref()
                    .filter(|_| case.is_none())
                    .map(|c| format!(" ({})", esc(c)))
                    .unwrap_or_default(),
                esc(&w.message)
            );
        }
    }
}

/// The measurements, one row each, when the run made any.
fn render_measurements(h: &mut String, history: &History) {
    if history.measurements.is_empty() {
        return;
    }
    h.push_str(
        "<section id=\"measurements\">\n<h2>Measurements</h2>\n<table>\n<tr><th>at</th><th>from → to</th>\
         <th>address</th><th>protocol</th><th>throughput</th><th>RTT median (min – max)</th><th>loss</th>\
         <th>made by</th></tr>\n",
    );
    for m in &history.measurements {
        let rtt = match (m.rtt_median_us, m.rtt_min_us, m.rtt_max_us) {
            (Some(med), Some(min), Some(max)) => format!(
                "{} ({} – {})",
                latency(med as f64),
                latency(min as f64),
                latency(max as f64)
            ),
            (Some(med), _, _) => latency(med as f64),
            _ => "–".to_string(),
        };
        let _ = writeln!(
            h,
            "<tr class=\"measurement\"><td>{}</td><td>{} → {}</td><td>{}</td><td>{}</td>\
             <td class=\"num\">{:.2} Mbit/s</td><td class=\"num\">{rtt}</td><td class=\"num\">{:.1} %</td><td>{}</td></tr>",
            secs(m.time_us),
            esc(&m.from),
            esc(&m.to),
            esc(&m.address),
            esc(&m.protocol),
            m.throughput_bps / 1e6,
            m.loss_percent,
            esc(m.source.as_deref().unwrap_or(""))
        );
    }
    h.push_str("</table>\n</section>\n");
}

fn render_cases(h: &mut String, history: &History, report: &CheckReport) {
    let a = &report.availability;
    let _ = writeln!(
        h,
        "<section id=\"cases\">\n<h2>Fault cases</h2>\n<p class=\"meta\">Bounds: at most {:.0} % of operations \
         invoked during a case may fail or time out; recovery (heal → first ok operation invoked after it) {}. \
         Outside any fault: {} of {} operations ok.</p>",
        a.options.max_error_fraction * 100.0,
        a.options
            .max_recovery_us
            .map(|b| format!("within {}", latency(b as f64)))
            .unwrap_or("must happen".into()),
        a.outside_faults.ok,
        a.outside_faults.total
    );
    if a.cases.is_empty() {
        h.push_str("<p>The history has no fault events.</p>\n");
        if !history.warnings.is_empty() {
            h.push_str("<table>\n");
            warning_rows(h, history, report, None, 1);
            h.push_str("</table>\n");
        }
        h.push_str("</section>\n");
        return;
    }
    h.push_str(
        "<table>\n<tr><th>case</th><th>window</th><th>faults</th><th>ops</th><th>ok</th><th>failed</th>\
         <th>unknown</th><th>errors</th><th>recovery</th><th>result</th></tr>\n",
    );
    for c in &a.cases {
        let faults: Vec<String> = c
            .faults
            .iter()
            .map(|f| {
                if f.nodes.is_empty() {
                    esc(&f.kind)
                } else {
                    format!("{} on {}", esc(&f.kind), esc(&f.nodes.join(", ")))
                }
            })
            .collect();
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{} – {}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{:.1} %</td><td>{}</td>\
             <td>{} {}</td></tr>",
            esc(&c.case),
            secs(c.start_us),
            secs(c.end_us),
            faults.join("<br>"),
            c.ops.total,
            c.ops.ok,
            c.ops.fail,
            c.ops.unknown,
            c.ops.error_fraction() * 100.0,
            recovery_cell(c),
            badge(c.valid),
            esc(&c.explanation)
        );
        warning_rows(h, history, report, Some(&c.case), 10);
    }
    warning_rows(h, history, report, None, 10);
    h.push_str("</table>\n</section>\n");
}

fn recovery_cell(c: &CaseResult) -> String {
    let parts: Vec<String> = c
        .faults
        .iter()
        .map(|f| match (f.healed_us, f.recovery_us) {
            (None, _) => "not healed".to_string(),
            (Some(_), Some(r)) => latency(r as f64),
            (Some(_), None) if f.ops_after_heal == 0 => "no ops after heal".to_string(),
            (Some(_), None) => "never".to_string(),
        })
        .collect();
    parts.join("<br>")
}

fn render_linearizability_violations(h: &mut String, history: &History, v: &Verdict) {
    let invalid = v
        .details
        .get("invalid")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let ids = |value: Option<&Value>| -> Vec<u64> {
        value
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default()
    };
    for (shown, key) in invalid.iter().enumerate() {
        let name = key.get("key").and_then(Value::as_str).unwrap_or("?");
        if shown >= 20 {
            let _ = writeln!(
                h,
                "<p>… and {} more keys (see verdict.json)</p>",
                invalid.len() - shown
            );
            break;
        }
        let core = ids(key.get("ops"));
        let context = ids(key.get("context_ops"));
        let until = key.get("until_us").and_then(Value::as_u64).unwrap_or(0);
        let minimal = key.get("minimal").and_then(Value::as_bool).unwrap_or(false);
        let _ = writeln!(
            h,
            "<h3>linearizability: key {}</h3>\n<p>No order of the {} solid operations agrees with both their \
             real-time order and a register{}{}. Dashed operations may or may not have taken effect.</p>\n\
             <div class=\"violation-box\">{}</div>\n<ol>",
            esc(&format!("{name:?}")),
            core.len(),
            if context.is_empty() {
                String::new()
            } else {
                format!(", whichever of the {} dashed ones took effect", context.len())
            },
            if minimal {
                "; dropping any one of them makes the rest linearizable"
            } else {
                " (minimization was cut short by the budget)"
            },
            violation_svg(
                history,
                &core,
                &context,
                until,
                "Operations that cannot be linearized, one lane per client"
            )
        );
        for id in &core {
            if let Some(op) = history.op(*id) {
                let _ = writeln!(h, "<li>{}</li>", esc(&crate::svg::op_title(op)));
            }
        }
        for id in &context {
            if let Some(op) = history.op(*id) {
                let _ = writeln!(
                    h,
                    "<li class=\"context\">may or may not have taken effect: {}</li>",
                    esc(&crate::svg::op_title(op))
                );
            }
        }
        h.push_str("</ol>\n");
    }
}

/// JUnit XML: a `checkers` suite (one test case per checker) and a `fault-cases` suite (one per
/// case). Invalid is a failure; unknown is an error (not a pass: nobody could tell).
fn render_junit(history: &History, report: &CheckReport) -> String {
    struct Case {
        class: &'static str,
        name: String,
        valid: Validity,
        message: String,
        seconds: f64,
    }
    let verdicts: Vec<&Verdict> = if report.verdict.children.is_empty() {
        vec![&report.verdict]
    } else {
        report.verdict.leaves()
    };
    let checkers: Vec<Case> = verdicts
        .iter()
        .map(|v| Case {
            class: "chaos.checkers",
            name: v.checker.clone(),
            valid: v.valid,
            message: v.explanation.clone(),
            seconds: 0.0,
        })
        .collect();
    let cases: Vec<Case> = report
        .availability
        .cases
        .iter()
        .map(|c| Case {
            class: "chaos.fault-cases",
            name: c.case.clone(),
            valid: c.valid,
            message: c.explanation.clone(),
            seconds: c.end_us.saturating_sub(c.start_us) as f64 / 1e6,
        })
        .collect();
    let count = |cs: &[Case], v: Validity| cs.iter().filter(|c| c.valid == v).count();
    let run = history.header.run.clone().unwrap_or_else(|| "chaos".to_string());
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let all = checkers.len() + cases.len();
    let _ = writeln!(
        x,
        "<testsuites name=\"{}\" tests=\"{all}\" failures=\"{}\" errors=\"{}\">",
        esc(&run),
        count(&checkers, Validity::Invalid) + count(&cases, Validity::Invalid),
        count(&checkers, Validity::Unknown) + count(&cases, Validity::Unknown)
    );
    for (suite, list) in [("checkers", &checkers), ("fault-cases", &cases)] {
        let _ = writeln!(
            x,
            "  <testsuite name=\"{suite}\" tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"0\">",
            list.len(),
            count(list, Validity::Invalid),
            count(list, Validity::Unknown)
        );
        for c in list.iter() {
            let _ = write!(
                x,
                "    <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\">",
                c.class,
                esc(&c.name),
                c.seconds
            );
            match c.valid {
                Validity::Valid => {}
                Validity::Invalid => {
                    let _ = write!(
                        x,
                        "<failure type=\"invalid\" message=\"{0}\">{0}</failure>",
                        esc(&c.message)
                    );
                }
                Validity::Unknown => {
                    let _ = write!(
                        x,
                        "<error type=\"unknown\" message=\"{0}\">{0}</error>",
                        esc(&c.message)
                    );
                }
            }
            let _ = writeln!(x, "<system-out>{}</system-out></testcase>", esc(&c.message));
        }
        x.push_str("  </testsuite>\n");
    }
    x.push_str("</testsuites>\n");
    x
}
