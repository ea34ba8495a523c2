//! A task run's `summary.json` and `junit.xml` (a test case per task; a flaky task passes with
//! its failed attempts in `system-out`).

use std::fmt::Write as _;
use std::path::Path;

use chaos_check::escape_markup as esc;

use super::{TaskStatus, TaskSummary};

/// Writes both files into `dir`.
pub(super) fn write(dir: &Path, summary: &TaskSummary) -> std::io::Result<()> {
    let json = serde_json::to_string_pretty(summary).map_err(std::io::Error::other)?;
    std::fs::write(dir.join("summary.json"), json + "\n")?;
    std::fs::write(dir.join("junit.xml"), render_junit(summary))
}

fn render_junit(s: &TaskSummary) -> String {
    let secs = |ms: u64| ms as f64 / 1000.0;
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let error = usize::from(s.status == "error");
    let _ = writeln!(
        x,
        "<testsuites name=\"chaos tasks\" tests=\"{}\" failures=\"{}\" errors=\"{error}\" skipped=\"{}\" time=\"{:.3}\">",
        s.task_count,
        s.failure_count,
        s.not_run_count,
        secs(s.elapsed_ms)
    );
    let _ = writeln!(
        x,
        "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"{error}\" skipped=\"{}\" time=\"{:.3}\" timestamp=\"{}\">",
        esc(&s.name),
        s.task_count,
        s.failure_count,
        s.not_run_count,
        secs(s.elapsed_ms),
        esc(&s.started_at)
    );
    if let Some(reason) = &s.reason {
        let _ = writeln!(
            x,
            "    <testcase classname=\"chaos.tasks.{}\" name=\"setup\"><error message=\"{}\"/></testcase>",
            esc(&s.name),
            esc(reason)
        );
    }
    for t in &s.tasks {
        let _ = write!(
            x,
            "    <testcase classname=\"chaos.tasks.{}\" name=\"{}\" time=\"{:.3}\"",
            esc(&s.name),
            esc(&t.name),
            secs(t.elapsed_ms)
        );
        let failures: Vec<String> = t
            .attempts
            .iter()
            .filter_map(|a| {
                a.error
                    .as_ref()
                    .map(|e| format!("attempt {} on {}: {e}", a.attempt, t.node))
            })
            .collect();
        match t.status {
            TaskStatus::Passed => x.push_str("/>\n"),
            TaskStatus::Flaky => {
                let _ = writeln!(
                    x,
                    ">\n      <system-out>flaky: passed on attempt {}; {}</system-out>\n    </testcase>",
                    t.attempts.len(),
                    esc(&failures.join("; "))
                );
            }
            TaskStatus::Failed => {
                let _ = writeln!(
                    x,
                    ">\n      <failure message=\"{}\">{}</failure>\n    </testcase>",
                    esc(failures.last().map(String::as_str).unwrap_or("failed")),
                    esc(&failures.join("\n"))
                );
            }
            TaskStatus::NotRun => x.push_str(">\n      <skipped message=\"not run\"/>\n    </testcase>\n"),
        }
    }
    x.push_str("  </testsuite>\n</testsuites>\n");
    x
}
