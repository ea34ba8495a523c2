//! Campaigns (`chaos run FILE --seeds … --parallel K`, and `chaos_scenario::campaign` from Rust)
//! on a tiny `local` scenario whose end invariant fails for seed 3 only: the exit code, the
//! failing seed named with its replay command, `campaign.json`, `junit.xml` and `index.html`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use chaos_scenario::campaign::{Campaign, SeedSet, SeedVerdict};
use chaos_scenario::{RunOptions, Scenario};

/// Two local nodes, one short pause, and an end invariant that holds for every seed but 3.
const FAILS_ON_SEED_3: &str = r#"
name = "fails-on-seed-3"
[cluster]
backend = "local"
nodes = 2
[setup.start]
command = ["sh", "-c", "sleep 600; : {{ run_id }}"]
[schedule]
rounds = 1
pause = ["10ms", "20ms"]
[[faults]]
name = "pause-one"
kind = "pause"
target = "one"
duration = ["100ms", "200ms"]
[[invariants]]
name = "seed is not 3"
at = ["end"]
command = "test {{ seed }} != 3"
timeout = "1s"
interval = "200ms"
"#;

fn chaos(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_chaos"))
        .args(args)
        .output()
        .expect("running chaos")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn scenario_file(dir: &Path) -> PathBuf {
    let path = dir.join("fails-on-seed-3.toml");
    std::fs::write(&path, FAILS_ON_SEED_3).unwrap();
    path
}

fn line_after<'a>(out: &'a str, prefix: &str) -> Option<&'a str> {
    out.lines().find_map(|l| l.strip_prefix(prefix))
}

#[test]
fn four_seeds_two_at_a_time_name_the_failing_seed() {
    let dir = tempfile::tempdir().unwrap();
    let file = scenario_file(dir.path());
    let out_dir = dir.path().join("runs");
    let out = chaos(&[
        "run",
        file.to_str().unwrap(),
        "--seeds",
        "1..=4",
        "--parallel",
        "2",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{}", text(&out.stderr));
    assert!(
        stdout.contains("FAILED: 4 seeds: 3 passed, 1 failed, 0 errors"),
        "{stdout}"
    );
    assert!(
        stdout.contains("seed 3 failed: invariant `seed is not 3` violated"),
        "{stdout}"
    );
    let replay = format!(
        "  replay: chaos run {} --seed 3 --out {}",
        file.display(),
        out_dir.display()
    );
    assert!(stdout.lines().any(|l| l == replay), "{stdout}");

    let campaign = PathBuf::from(line_after(&stdout, "campaign directory: ").unwrap());
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(campaign.join("campaign.json")).unwrap()).unwrap();
    assert_eq!(json["status"], "failed");
    assert_eq!(json["parallel"], 2);
    assert_eq!(json["totals"]["passed"], 3);
    assert_eq!(json["totals"]["failed"], 1);
    let runs = json["runs"].as_array().unwrap();
    let seeds: Vec<u64> = runs.iter().map(|r| r["seed"].as_u64().unwrap()).collect();
    assert_eq!(seeds, [1, 2, 3, 4]);
    for run in runs {
        let seed = run["seed"].as_u64().unwrap();
        let expected = if seed == 3 { "failed" } else { "passed" };
        assert_eq!(run["verdict"], expected, "{run:#}");
        assert!(run["elapsed_ms"].as_u64().unwrap() > 0, "{run:#}");
        assert!(
            run["replay"]
                .as_str()
                .unwrap()
                .contains(&format!("--seed {seed} ")),
            "{run:#}"
        );
        // Each seed got its usual run directory, with its own verdict in summary.json.
        let run_dir = PathBuf::from(run["run_dir"].as_str().unwrap());
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run_dir.join("summary.json")).unwrap()).unwrap();
        assert_eq!(summary["seed"], seed);
        assert_eq!(summary["status"], expected);
        assert!(Path::new(run["report"].as_str().unwrap()).is_file(), "{run:#}");
    }
    assert!(
        runs[2]["reason"]
            .as_str()
            .unwrap()
            .contains("invariant `seed is not 3` violated"),
        "{:#}",
        runs[2]
    );

    // index.html: the failing seed first, every run's report linked (relative, and existing).
    let index = std::fs::read_to_string(campaign.join("index.html")).unwrap();
    let order: Vec<&str> = index
        .split("data-seed=\"")
        .skip(1)
        .map(|rest| &rest[..rest.find('"').unwrap()])
        .collect();
    assert_eq!(order[0], "3", "{index}");
    assert_eq!(order.len(), 4, "{index}");
    let links: Vec<&str> = index
        .split("href=\"")
        .skip(1)
        .map(|rest| &rest[..rest.find('"').unwrap()])
        .collect();
    assert_eq!(links.len(), 4, "{index}");
    for link in links {
        assert!(
            link.starts_with("../") && link.ends_with("/report.html"),
            "{link}"
        );
        assert!(campaign.join(link).is_file(), "{link} does not exist");
    }
    // junit.xml: one test case per seed, the failure on seed 3.
    let junit = std::fs::read_to_string(campaign.join("junit.xml")).unwrap();
    assert_eq!(junit.matches("<testcase ").count(), 4, "{junit}");
    assert_eq!(junit.matches("<failure ").count(), 1, "{junit}");
    assert!(
        junit.contains("name=\"seed 3\"") && junit.contains("replay: chaos run"),
        "{junit}"
    );
}

#[test]
fn fail_fast_stops_at_the_first_failing_seed() {
    let dir = tempfile::tempdir().unwrap();
    let file = scenario_file(dir.path());
    let out_dir = dir.path().join("runs");
    let out = chaos(&[
        "run",
        file.to_str().unwrap(),
        "--seeds",
        "3,1,2",
        "--fail-fast",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{}", text(&out.stderr));
    assert!(
        stdout.contains("FAILED: 3 seeds: 0 passed, 1 failed, 0 errors, 0 interrupted, 2 not run"),
        "{stdout}"
    );
}

#[test]
fn bad_seed_sets_are_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let file = scenario_file(dir.path());
    let out = chaos(&["run", file.to_str().unwrap(), "--seeds", "4..4"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("--seeds: seeds `4..4`: the range is empty"),
        "{}",
        text(&out.stderr)
    );
    let out = chaos(&["run", file.to_str().unwrap(), "--parallel", "2"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("give --seeds"),
        "{}",
        text(&out.stderr)
    );
    assert!(!dir.path().join("runs").exists());
}

/// The same from Rust: seeds drawn from a master seed, two at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_from_rust_draws_its_seeds_from_the_master_seed() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = Scenario::from_file(scenario_file(dir.path())).unwrap();
    let seeds = SeedSet::drawn(99, 2).unwrap();
    let expected = seeds.seeds();
    let outcome = Campaign::new(scenario, seeds)
        .parallel(2)
        .options(RunOptions {
            out_dir: dir.path().join("runs"),
            ..RunOptions::default()
        })
        .run()
        .await
        .unwrap();
    assert_eq!(outcome.summary.master_seed, Some(99));
    let ran: Vec<u64> = outcome.summary.runs.iter().map(|r| r.seed).collect();
    assert_eq!(ran, expected);
    assert!(outcome.passed(), "{:#?}", outcome.summary);
    assert!(
        outcome
            .summary
            .runs
            .iter()
            .all(|r| r.verdict == SeedVerdict::Passed)
    );
    assert_eq!(outcome.exit_code(), 0);
    assert!(outcome.junit.is_file() && outcome.index.is_file());
}
