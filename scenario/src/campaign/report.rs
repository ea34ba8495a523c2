//! The campaign directory: `campaign.json`, `junit.xml` (a test case per seed) and `index.html`
//! (every run's report, failing seeds first).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use chaos_check::escape_markup as esc;

use super::{CampaignSummary, SeedResult, SeedVerdict};

/// The files a campaign writes.
pub(super) struct CampaignFiles {
    pub index: PathBuf,
    pub junit: PathBuf,
}

/// Creates `base/<scenario>/campaign-<timestamp>/` (adding `-2`, `-3`… if it exists).
pub(super) fn create_dir(base: &Path, scenario: &str) -> std::io::Result<PathBuf> {
    let parent = base.join(scenario);
    std::fs::create_dir_all(&parent)?;
    let (stamp, _) = crate::rundir::timestamps();
    let mut name = format!("campaign-{stamp}");
    let mut n = 2;
    loop {
        let path = parent.join(&name);
        match std::fs::create_dir(&path) {
            Ok(()) => return Ok(path),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                name = format!("campaign-{stamp}-{n}");
                n += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Writes the three files.
pub(super) fn write(dir: &Path, summary: &CampaignSummary) -> std::io::Result<CampaignFiles> {
    let json = serde_json::to_string_pretty(summary).map_err(std::io::Error::other)?;
    std::fs::write(dir.join("campaign.json"), json + "\n")?;
    let junit = dir.join("junit.xml");
    std::fs::write(&junit, render_junit(summary))?;
    let index = dir.join("index.html");
    std::fs::write(&index, render_index(dir, summary))?;
    Ok(CampaignFiles { index, junit })
}

/// Failing seeds first (failed, error), then interrupted, not run, passed; by seed order within.
fn ordered(summary: &CampaignSummary) -> Vec<&SeedResult> {
    let rank = |v: SeedVerdict| match v {
        SeedVerdict::Failed => 0,
        SeedVerdict::Error => 1,
        SeedVerdict::Interrupted => 2,
        SeedVerdict::NotRun => 3,
        SeedVerdict::Passed => 4,
    };
    let mut runs: Vec<&SeedResult> = summary.runs.iter().collect();
    runs.sort_by_key(|r| rank(r.verdict));
    runs
}

fn render_junit(summary: &CampaignSummary) -> String {
    let t = &summary.totals;
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        x,
        "<testsuites name=\"chaos campaign\" tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"{}\" time=\"{:.3}\">",
        t.seeds,
        t.failed,
        t.errors,
        t.interrupted + t.not_run,
        summary.elapsed_ms as f64 / 1000.0
    );
    let _ = writeln!(
        x,
        "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"{}\" time=\"{:.3}\" timestamp=\"{}\">",
        esc(&summary.scenario),
        t.seeds,
        t.failed,
        t.errors,
        t.interrupted + t.not_run,
        summary.elapsed_ms as f64 / 1000.0,
        esc(&summary.started_at)
    );
    for run in &summary.runs {
        let _ = write!(
            x,
            "    <testcase classname=\"chaos.campaign.{}\" name=\"seed {}\" time=\"{:.3}\"",
            esc(&summary.scenario),
            run.seed,
            run.elapsed_ms as f64 / 1000.0
        );
        let reason = esc(run.reason.as_deref().unwrap_or(""));
        let body = format!("replay: {}", esc(&run.replay));
        match run.verdict {
            SeedVerdict::Passed => x.push_str("/>\n"),
            SeedVerdict::Failed => {
                let _ = writeln!(
                    x,
                    ">\n      <failure message=\"{reason}\">{body}</failure>\n    </testcase>"
                );
            }
            SeedVerdict::Error => {
                let _ = writeln!(
                    x,
                    ">\n      <error message=\"{reason}\">{body}</error>\n    </testcase>"
                );
            }
            SeedVerdict::Interrupted | SeedVerdict::NotRun => {
                let _ = writeln!(
                    x,
                    ">\n      <skipped message=\"{}: {reason}\"/>\n    </testcase>",
                    run.verdict
                );
            }
        }
    }
    x.push_str("  </testsuite>\n</testsuites>\n");
    x
}

/// A link from the campaign directory to `target`: relative when both live under the same
/// output directory (so the directory can be moved or served as a whole), absolute otherwise.
fn link(dir: &Path, target: &Path) -> String {
    let relative = dir
        .parent()
        .and_then(|parent| target.strip_prefix(parent).ok())
        .map(|rest| Path::new("..").join(rest));
    relative
        .unwrap_or_else(|| target.to_path_buf())
        .display()
        .to_string()
}

fn render_index(dir: &Path, summary: &CampaignSummary) -> String {
    let t = &summary.totals;
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>campaign {name}: {status}</title>\n\
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{padding:.3em .8em;border-bottom:1px solid #ddd;text-align:left}}\
.failed,.error{{color:#b00020;font-weight:bold}}.passed{{color:#1b5e20}}.interrupted,.not_run{{color:#666}}code{{font-size:90%}}</style></head><body>\n\
<h1>Campaign <code>{name}</code>: <span class=\"{status}\">{status}</span></h1>\n\
<p>{seeds} seeds, {parallel} at a time: {passed} passed, {failed} failed, {errors} errors, {interrupted} interrupted, {not_run} not run; {secs:.1}s; started {started}{master}.</p>\n\
<table>\n<thead><tr><th>seed</th><th>verdict</th><th>reason</th><th>elapsed</th><th>run</th><th>replay</th></tr></thead>\n<tbody>\n",
        name = esc(&summary.scenario),
        status = summary.status,
        seeds = t.seeds,
        parallel = summary.parallel,
        passed = t.passed,
        failed = t.failed,
        errors = t.errors,
        interrupted = t.interrupted,
        not_run = t.not_run,
        secs = summary.elapsed_ms as f64 / 1000.0,
        started = esc(&summary.started_at),
        master = summary
            .master_seed
            .map(|m| format!("; seeds drawn from master seed {m}"))
            .unwrap_or_default(),
    );
    for run in ordered(summary) {
        let class = serde_json::to_value(run.verdict)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let run_link = match (&run.report, &run.run_dir) {
            (Some(report), _) => format!("<a href=\"{}\">report</a>", esc(&link(dir, report))),
            (None, Some(run_dir)) => format!(
                "<a href=\"{}\">summary</a>",
                esc(&link(dir, &run_dir.join("summary.json")))
            ),
            (None, None) => String::new(),
        };
        let _ = writeln!(
            h,
            "<tr class=\"seed\" data-seed=\"{seed}\" data-verdict=\"{class}\"><td>{seed}</td><td class=\"{class}\">{verdict}</td><td>{reason}</td><td>{secs:.1}s</td><td>{run_link}</td><td><code>{replay}</code></td></tr>",
            seed = run.seed,
            verdict = run.verdict,
            reason = esc(run.reason.as_deref().unwrap_or("")),
            secs = run.elapsed_ms as f64 / 1000.0,
            replay = esc(&run.replay),
        );
    }
    h.push_str("</tbody>\n</table>\n</body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::super::CampaignTotals;
    use super::*;

    #[test]
    fn index_lists_failing_seeds_first_with_relative_links_and_junit_one_case_per_seed() {
        let dir = Path::new("/out/s/campaign-1");
        let run = |seed, verdict, reason: Option<&str>| SeedResult {
            seed,
            verdict,
            reason: reason.map(str::to_string),
            elapsed_ms: 1500,
            replay: format!("chaos run s.toml --seed {seed}"),
            run_dir: Some(PathBuf::from(format!("/out/s/T-seed{seed}"))),
            report: Some(PathBuf::from(format!("/out/s/T-seed{seed}/report.html"))),
        };
        let runs = vec![
            run(1, SeedVerdict::Passed, None),
            run(2, SeedVerdict::Failed, Some("invariant `x<y` violated")),
            run(3, SeedVerdict::Passed, None),
        ];
        let summary = CampaignSummary {
            scenario: "s".into(),
            master_seed: None,
            parallel: 2,
            fail_fast: false,
            status: "failed",
            started_at: "2026-01-01T00:00:00Z".into(),
            elapsed_ms: 3000,
            totals: CampaignTotals::of(&runs),
            runs,
        };
        let html = render_index(dir, &summary);
        let first = html.find("data-seed=\"2\"").unwrap();
        assert!(first < html.find("data-seed=\"1\"").unwrap());
        assert!(html.contains("href=\"../T-seed2/report.html\""), "{html}");
        assert!(html.contains("invariant `x&lt;y` violated"), "{html}");
        let junit = render_junit(&summary);
        assert_eq!(junit.matches("<testcase ").count(), 3);
        assert!(junit.contains("name=\"seed 2\" time=\"1.500\">\n      <failure message=\"invariant `x&lt;y` violated\">replay: chaos run s.toml --seed 2</failure>"), "{junit}");
    }
}
