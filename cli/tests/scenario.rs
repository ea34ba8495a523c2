//! `chaos validate`, `chaos plan` and `chaos run`, run as a user would: located errors with the
//! valid choices, byte-identical plans per seed, a real 3-member etcd cluster through one round
//! of faults, a violated invariant with its replay line, and Ctrl-C leaving nothing behind.
//!
//! (One file, past the usual size: the tests share the scenario texts and run-directory checks
//! below, and cargo builds one binary per file.)

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use chaos::backend::registry;

#[path = "../../core/tests/common/mod.rs"]
mod common;

fn chaos(args: &[&str]) -> Output {
    chaos_with_pid(args).0
}

/// Runs `chaos` and also returns its pid: the owner of the clusters it made.
fn chaos_with_pid(args: &[&str]) -> (Output, u32) {
    let child = Command::new(env!("CARGO_BIN_EXE_chaos"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running chaos");
    let pid = child.id();
    (child.wait_with_output().expect("waiting for chaos"), pid)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn raft_toml() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/raft.toml")
}

/// Why a real etcd cluster cannot run on `kind` here, if it cannot.
fn etcd_unavailable(kind: &str) -> Option<String> {
    if let Err(why) = registry::available(kind) {
        return Some(why);
    }
    for bin in ["etcd", "etcdctl"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
            .unwrap_or(false);
        if !found {
            return Some(format!(
                "`{bin}` is not on PATH (apt-get install etcd-server etcd-client)"
            ));
        }
    }
    None
}

fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The line of `out` starting with `prefix`, without it.
fn line_after<'a>(out: &'a str, prefix: &str) -> Option<&'a str> {
    out.lines().find_map(|l| l.strip_prefix(prefix))
}

#[test]
fn validate_names_file_line_field_and_valid_choices() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "field.toml",
            "[cluster]\nnodes = 3\nbakend = \"netns\"\n",
            "field.toml:3:1: field `cluster.bakend`: unknown field `bakend`, expected one of `backend`, `nodes`, `labels`",
        ),
        (
            "kind.toml",
            "[setup.start]\ncommand = \"sleep 9\"\n\n[[faults]]\nname = \"k\"\nkind = \"kil\"\ntarget = \"one\"\n",
            "kind.toml:6:8: field `faults[0].kind`: unknown fault kind `kil`; valid choices: partition, loss, delay, packet, bandwidth, link, flap, pause, kill, restart, machine",
        ),
        (
            "selector.toml",
            "[[faults]]\nname = \"p\"\nkind = \"partition\"\ntarget = \"leaders\"\n",
            "selector.toml:4:10: field `faults[0].target`: unknown target selector `leaders`; valid selectors: one, leader, follower, followers, minority, majority, all, random:N, or an array of node names",
        ),
        (
            "backend.toml",
            "[cluster]\nbackend = \"dockr\"\n",
            "backend.toml:2:11: field `cluster.backend`: unknown backend `dockr`; valid choices: local, netns, docker",
        ),
        (
            "node.toml",
            "[[faults]]\nname = \"l\"\nkind = \"loss\"\npercent = 10\ntarget = [\"n1\", \"n4\"]\n",
            "node.toml:5:10: field `faults[0].target`: no node `n4`; the nodes are n1, n2, n3",
        ),
        (
            "template.toml",
            "[setup.start]\ncommand = [\"sleep\", \"{{ node.nmae }}\"]\n",
            "template.toml:2:11: field `setup.start.command`: bad template: undefined value",
        ),
        (
            "checker.toml",
            "[history]\ncheckers = [\"linearisability\"]\n",
            "checker.toml:2:13: field `history.checkers[0]`: unknown checker `linearisability`; valid checkers: linearizability, list-append, set, counter, unique-ids, availability",
        ),
    ];
    for (name, contents, expected) in cases {
        let path = write(dir.path(), name, contents);
        let out = chaos(&["validate", path.to_str().unwrap()]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {err}");
        let shown = err.replace(&format!("{}/", dir.path().display()), "");
        assert!(
            shown.contains(expected),
            "{name}: expected\n  {expected}\ngot\n  {shown}"
        );
    }
    // A missing file is an error of the same kind.
    let out = chaos(&["validate", "/nonexistent/x.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("/nonexistent/x.toml: cannot read"),
        "{}",
        text(&out.stderr)
    );
    // So is a bad scenario given to `run` and `plan`.
    let bad = dir.path().join("kind.toml");
    let out = chaos(&[
        "run",
        bad.to_str().unwrap(),
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let out = chaos(&["plan", bad.to_str().unwrap(), "--seed", "1"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    // A cluster that cannot carry out the scenario's faults: network faults on the local
    // backend, whose agents refuse them (--no-network-faults) — refused before anything starts.
    let raft = raft_toml();
    let out = chaos(&[
        "run",
        raft.to_str().unwrap(),
        "--backend",
        "local",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("ERROR: fault case `")
            && stdout.contains("cannot run on this local cluster")
            && stdout.contains("--no-network-faults")
            && stdout.contains("netns"),
        "{stdout}"
    );
    let out = chaos(&["run", raft.to_str().unwrap(), "--backend", "ec2"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("unknown backend `ec2`; valid choices: local, netns, docker"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn shipped_scenarios_are_valid() {
    let out = chaos(&["validate", raft_toml().to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("ok — scenario `raft`: 3 nodes on netns, 9 fault cases"));
    let patroni = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/postgres-patroni.toml");
    let out = chaos(&["validate", patroni.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("scenario `postgres-patroni`: 3 nodes on netns, 5 fault cases"));
}

#[test]
fn plans_are_byte_identical_per_seed_and_differ_across_seeds() {
    let raft = raft_toml();
    let raft = raft.to_str().unwrap();
    let a = chaos(&["plan", raft, "--seed", "7"]);
    let b = chaos(&["plan", raft, "--seed", "7"]);
    assert!(a.status.success(), "{}", text(&a.stderr));
    assert_eq!(a.stdout, b.stdout);
    let c = chaos(&["plan", raft, "--seed", "8"]);
    assert_ne!(a.stdout, c.stdout);
    let j1 = chaos(&["plan", raft, "--seed", "7", "--json"]);
    let j2 = chaos(&["plan", raft, "--seed", "7", "--json"]);
    assert_eq!(j1.stdout, j2.stdout);
    let plan: serde_json::Value = serde_json::from_slice(&j1.stdout).unwrap();
    assert_eq!(plan["seed"], 7);
    assert_eq!(plan["steps"].as_array().unwrap().len(), 18, "2 rounds of 9 cases");
    // Without --seed one is drawn and printed first; that seed prints the same plan again.
    let drawn = chaos(&["plan", raft]);
    let out = text(&drawn.stdout);
    let seed = line_after(&out, "seed ")
        .expect("the seed is printed first")
        .trim()
        .to_string();
    assert!(out.starts_with("seed "), "{out}");
    let again = chaos(&["plan", raft, "--seed", &seed]);
    assert_eq!(out.split_once('\n').unwrap().1, text(&again.stdout));
    // --rounds changes the plan's length only.
    let one = chaos(&["plan", raft, "--seed", "7", "--rounds", "1", "--json"]);
    let one: serde_json::Value = serde_json::from_slice(&one.stdout).unwrap();
    assert_eq!(one["steps"].as_array().unwrap().len(), 9);
}

/// One round of scenarios/raft.toml against a real 3-member etcd cluster: every step recovers,
/// the history is linearizable, the run directory is complete and nothing is left behind.
#[test]
fn raft_one_round_passes_against_real_etcd() {
    raft_one_round("netns");
}

/// The same scenario file, unchanged, on containers: etcd and etcdctl shipped into nodes of the
/// default image.
#[test]
fn raft_one_round_passes_on_docker() {
    let Some(pid) = raft_one_round("docker") else {
        return;
    };
    let left = common::containers_owned_by(pid);
    assert!(left.is_empty(), "containers left: {left:?}");
}

/// raft.toml with its fault cases replaced by the Docker-level ones: the leader's container
/// paused, a follower's stopped (etcd goes down with it and is started again at heal), the
/// leader's disconnected from the network. etcd recovers from each and the history stays
/// linearizable.
#[test]
fn container_faults_in_a_scenario_recover_on_docker() {
    let test = "container_faults_in_a_scenario_recover_on_docker";
    if let Some(why) = etcd_unavailable("docker") {
        chaos_testkit::skip(test, "etcd", &why);
        return;
    }
    let mut scenario: toml::Table = std::fs::read_to_string(raft_toml()).unwrap().parse().unwrap();
    let cases: toml::Value = toml::from_str::<toml::Table>(
        r#"
        [[faults]]
        name = "freeze-leader-container"
        kind = "machine"
        action = "pause"
        target = "leader"
        duration = "2s"

        [[faults]]
        name = "stop-follower-container"
        kind = "machine"
        action = "stop"
        target = "follower"
        duration = "2s"

        [[faults]]
        name = "unplug-leader"
        kind = "machine"
        action = "disconnect"
        target = "leader"
        duration = "2s"
        "#,
    )
    .unwrap()
    .remove("faults")
    .unwrap();
    scenario.insert("faults".into(), cases);
    // Recovery bounds (checks, operations, the checker's max_recovery) stretch with the test kit's
    // scale on a busy machine; fault durations and pauses do not.
    scenario.insert(
        "timeout_multiplier".into(),
        chaos_testkit::scaled(Duration::from_secs(1)).as_secs_f64().into(),
    );
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "containers.toml",
        &toml::to_string(&scenario).unwrap(),
    );
    let (out, pid) = chaos_with_pid(&[
        "run",
        file.to_str().unwrap(),
        "--rounds",
        "1",
        "--seed",
        "5",
        "--backend",
        "docker",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    let stdout = text(&out.stdout);
    eprintln!("{stdout}\n{}", text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let run_dir = PathBuf::from(line_after(&stdout, "run directory: ").unwrap().trim());
    let summary = read_json(&run_dir.join("summary.json"));
    assert_eq!(summary["status"], "passed", "{summary:#}");
    let steps = summary["steps"].as_array().unwrap();
    let passed: Vec<&str> = steps
        .iter()
        .filter(|s| s["status"] == "passed")
        .map(|s| s["case"].as_str().unwrap())
        .collect();
    for case in [
        "freeze-leader-container",
        "stop-follower-container",
        "unplug-leader",
    ] {
        assert!(passed.contains(&case), "{case} did not pass: {summary:#}");
    }
    // The stopped follower's etcd was started again once its container was back.
    let starts = etcd_starts(&run_dir);
    assert!(
        starts > 3,
        "expected a restart after the stop, saw {starts} starts"
    );
    let left = common::containers_owned_by(pid);
    assert!(left.is_empty(), "containers left: {left:?}");

    // The same cases are refused, before the schedule, on a cluster that offers no machine
    // faults.
    let out = chaos(&[
        "run",
        file.to_str().unwrap(),
        "--backend",
        "local",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("freeze-leader-container") && stdout.contains("offers no machine pause fault"),
        "{stdout}"
    );
}

/// Runs one round and checks it; returns the runner's pid (`None` when skipped).
fn raft_one_round(kind: &str) -> Option<u32> {
    if let Some(why) = etcd_unavailable(kind) {
        chaos_testkit::skip(&format!("raft_one_round on {kind}"), "etcd", &why);
        return None;
    }
    let out_dir = tempfile::tempdir().unwrap();
    let (out, pid) = chaos_with_pid(&[
        "run",
        raft_toml().to_str().unwrap(),
        "--rounds",
        "1",
        "--seed",
        "42",
        "--backend",
        kind,
        "--out",
        out_dir.path().to_str().unwrap(),
    ]);
    let stdout = text(&out.stdout);
    eprintln!("{stdout}\n{}", text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.starts_with("seed 42\n"), "{stdout}");
    assert!(stdout.contains("PASSED"), "{stdout}");
    let run_dir = PathBuf::from(line_after(&stdout, "run directory: ").unwrap().trim());
    assert_eq!(
        std::fs::read_link(out_dir.path().join("raft/latest")).unwrap(),
        PathBuf::from(run_dir.file_name().unwrap())
    );
    for f in [
        "scenario.toml",
        "seed",
        "plan.json",
        "events.jsonl",
        "history.jsonl",
        "summary.json",
        "report.html",
        "nodes/n1/system.log",
        "nodes/n2/system.log",
        "nodes/n3/system.log",
    ] {
        assert!(run_dir.join(f).is_file(), "{f} missing in {}", run_dir.display());
    }
    let summary = read_json(&run_dir.join("summary.json"));
    assert_eq!(summary["status"], "passed");
    assert_eq!(summary["totals"]["steps"], 9);
    assert_eq!(
        summary["totals"]["passed"].as_u64().unwrap() + summary["totals"]["skipped"].as_u64().unwrap(),
        9,
        "{summary:#}"
    );
    assert!(summary["totals"]["ok"].as_u64().unwrap() > 100, "{summary:#}");
    for step in summary["steps"].as_array().unwrap() {
        if step["status"] == "passed" {
            assert!(step["recovery_ms"].is_u64(), "{step:#}");
        } else {
            assert!(step["reason"].is_string(), "{step:#}");
        }
    }
    let checkers = summary["history"]["checkers"].as_array().unwrap();
    assert!(
        checkers
            .iter()
            .any(|c| c["checker"] == "linearizability" && c["valid"] == "valid"),
        "{checkers:#?}"
    );
    // The etcd logs show the kills: members started more than once.
    let starts = etcd_starts(&run_dir);
    assert!(starts > 3, "expected restarts after kills, saw {starts} starts");
    assert_nothing_left(&run_dir);
    Some(pid)
}

/// How many times etcd started on the three nodes of a run, from their system logs.
fn etcd_starts(run_dir: &Path) -> usize {
    ["n1", "n2", "n3"]
        .iter()
        .map(|n| {
            std::fs::read_to_string(run_dir.join(format!("nodes/{n}/system.log")))
                .unwrap()
                .matches("etcd Version:")
                .count()
        })
        .sum()
}

/// Every node root of the run is gone and no process of the run survives (the system's command
/// lines carry the node root or the run id).
fn assert_nothing_left(run_dir: &Path) {
    let run_id = run_dir.file_name().unwrap().to_string_lossy().into_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_mentioning(&run_id).is_empty() {
        assert!(
            Instant::now() < deadline,
            "processes of run {run_id} left: {:?}",
            processes_mentioning(&run_id)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let events = std::fs::read_to_string(run_dir.join("events.jsonl")).unwrap();
    let created: serde_json::Value = events
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|e| e["event"] == "nodes_created")
        .expect("a nodes_created event");
    for node in created["nodes"].as_array().unwrap() {
        let root = node["root"].as_str().unwrap();
        loop {
            let survivors = processes_mentioning(root);
            if survivors.is_empty() && !Path::new(root).exists() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "left behind: root {root} exists={}, processes {survivors:?}",
                Path::new(root).exists()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Pids of processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(entry.path().join("cmdline"))
            && text(&cmd).contains(needle)
        {
            pids.push(pid);
        }
    }
    pids
}

/// A scenario on the `local` backend whose recovery invariant can never hold.
const MUST_FAIL: &str = r#"
name = "must-fail"
[cluster]
backend = "local"
nodes = 3
[setup.start]
command = ["sh", "-c", "sleep 600; : {{ run_id }}"]
[schedule]
rounds = 2
pause = ["50ms", "150ms"]
[[faults]]
name = "kill-one"
kind = "kill"
target = "one"
duration = ["200ms", "400ms"]
[[faults]]
name = "pause-majority"
kind = "pause"
target = "majority"
duration = ["200ms", "400ms"]
[[invariants]]
name = "a file nobody writes"
at = ["heal"]
command = "test -e {{ node.root }}/never-written"
timeout = "1s"
interval = "200ms"
"#;

#[test]
fn violated_invariant_exits_1_with_a_replay_line_that_reproduces_the_plan() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "must-fail.toml", MUST_FAIL);
    let out_dir = dir.path().join("runs");
    let out = chaos(&[
        "run",
        file.to_str().unwrap(),
        "--seed",
        "1234",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{}", text(&out.stderr));
    assert!(
        stdout.contains("FAILED: invariant `a file nobody writes` violated"),
        "{stdout}"
    );
    let replay = line_after(&stdout, "replay: ")
        .expect("a replay line")
        .trim()
        .to_string();
    assert_eq!(
        replay,
        format!(
            "chaos run {} --seed 1234 --out {}",
            file.display(),
            out_dir.display()
        )
    );
    let first = PathBuf::from(line_after(&stdout, "run directory: ").unwrap().trim());
    let summary = read_json(&first.join("summary.json"));
    assert_eq!(summary["status"], "failed");
    assert_eq!(summary["steps"][0]["status"], "failed", "{summary:#}");
    assert_eq!(
        summary["steps"][1]["status"], "not_run",
        "the schedule stops at a violation"
    );

    // Replaying runs the same plan and fails the same way.
    let args: Vec<&str> = replay.split(' ').skip(1).collect();
    let again = chaos(&args);
    let again_out = text(&again.stdout);
    assert_eq!(again.status.code(), Some(1), "{again_out}");
    let second = PathBuf::from(line_after(&again_out, "run directory: ").unwrap().trim());
    assert_ne!(first, second);
    assert_eq!(
        std::fs::read(first.join("plan.json")).unwrap(),
        std::fs::read(second.join("plan.json")).unwrap()
    );
    let plan = chaos(&["plan", file.to_str().unwrap(), "--seed", "1234", "--json"]);
    assert_eq!(plan.stdout, std::fs::read(first.join("plan.json")).unwrap());
    assert_nothing_left(&first);
    assert_nothing_left(&second);
}

/// A scenario whose invariant holds only when `values.marker` names the file its start command
/// makes: `--value` decides the verdict.
const MARKER: &str = r#"
name = "marker"
[values]
marker = "never-written"
[cluster]
backend = "local"
nodes = 2
[setup.start]
command = ["sh", "-c", "touch {{ node.root }}/present; sleep 600; : {{ run_id }}"]
[schedule]
rounds = 1
pause = ["50ms", "100ms"]
[[faults]]
name = "pause-one"
kind = "pause"
target = "one"
duration = ["100ms", "200ms"]
[[invariants]]
name = "the marker file exists"
at = ["heal"]
command = "test -e {{ node.root }}/{{ values.marker }}"
timeout = "1s"
interval = "100ms"
"#;

#[test]
fn value_overrides_reach_the_templates_and_the_replay_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "marker.toml", MARKER);
    let out_dir = dir.path().join("runs");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "run",
            file.to_str().unwrap(),
            "--seed",
            "5",
            "--out",
            out_dir.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        chaos(&args)
    };

    let failed = run(&[]);
    assert_eq!(failed.status.code(), Some(1), "{}", text(&failed.stdout));

    let passed = run(&["--value", "marker=present"]);
    let stdout = text(&passed.stdout);
    assert_eq!(
        passed.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&passed.stderr)
    );
    let run_dir = PathBuf::from(line_after(&stdout, "run directory: ").unwrap().trim());
    let as_run = std::fs::read_to_string(run_dir.join("scenario.toml")).unwrap();
    assert!(as_run.contains("marker = \"present\""), "{as_run}");
    let summary = read_json(&run_dir.join("summary.json"));
    let replay = summary["replay"].as_str().unwrap_or_default().to_string();
    assert!(
        replay.ends_with(&format!(
            "--seed 5 --value marker=present --out {}",
            out_dir.display()
        )),
        "{summary:#}"
    );

    let typo = run(&["--value", "markr=present"]);
    let stderr = text(&typo.stderr);
    assert_eq!(typo.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("no `markr`") && stderr.contains("it declares: marker"),
        "{stderr}"
    );
    let malformed = run(&["--value", "marker"]);
    assert_eq!(malformed.status.code(), Some(2));
    assert!(
        text(&malformed.stderr).contains("give NAME=VALUE"),
        "{}",
        text(&malformed.stderr)
    );
}

/// Ctrl-C in the middle of a fault: the run heals, stops etcd, collects every node's log, cleans
/// up, writes its summary and exits 130. A terminal sends SIGINT to its whole foreground process
/// group, so `chaos run` gets a group of its own here and the signal goes to the group: had the
/// agents stayed in the runner's group, they would have shut down (killing etcd) before the
/// runner could collect the nodes' logs.
#[test]
fn ctrl_c_heals_stops_and_cleans_up() {
    if let Some(why) = etcd_unavailable("netns") {
        chaos_testkit::skip("ctrl_c_heals_stops_and_cleans_up", "etcd", &why);
        return;
    }
    let out_dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_chaos"))
        .args([
            "run",
            raft_toml().to_str().unwrap(),
            "--seed",
            "5",
            "--out",
            out_dir.path().to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // Wait for the first step's report, then for the second fault to be in place.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut seen = Vec::new();
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("no step reported in time; saw {seen:#?}"));
        let first_step = line.starts_with("step   1/");
        seen.push(line);
        if first_step {
            break;
        }
    }
    let run_dir = out_dir.path().join("raft/latest");
    let injected = |n: u64| {
        std::fs::read_to_string(run_dir.join("events.jsonl"))
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains("\"fault_injected\"") && l.contains(&format!("\"step\":{n},")))
    };
    while !injected(2) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let interrupted_at = Instant::now();
    // What a terminal's Ctrl-C does: SIGINT to every process of the foreground group.
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            interrupted_at.elapsed() < Duration::from_secs(60),
            "chaos run did not exit within 60 s of Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let rest: Vec<String> = rx.try_iter().collect();
    assert_eq!(status.code(), Some(130), "{seen:#?}\n{rest:#?}");
    assert!(rest.iter().any(|l| l.starts_with("INTERRUPTED")), "{rest:#?}");
    let run_dir = std::fs::canonicalize(&run_dir).unwrap();
    let summary = read_json(&run_dir.join("summary.json"));
    assert_eq!(summary["status"], "interrupted");
    let events = std::fs::read_to_string(run_dir.join("events.jsonl")).unwrap();
    assert!(
        events
            .lines()
            .any(|l| l.contains("\"fault_healed\"") && l.contains("\"step\":2,")),
        "the fault in place was healed"
    );
    assert!(events.lines().any(|l| l.contains("\"system_stopped\"")));
    assert!(events.lines().any(|l| l.contains("\"run_finished\"")));
    // The agents outlived the Ctrl-C, so every node's log was collected.
    for node in ["n1", "n2", "n3"] {
        let log = run_dir.join(format!("nodes/{node}/system.log"));
        let text = std::fs::read_to_string(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        assert!(text.contains("etcd Version:"), "{}: {text}", log.display());
    }
    assert_nothing_left(&run_dir);
}

/// A selector that picks nobody — here `leader` when no member names one — skips its step with
/// the reason; the run goes on and passes.
#[test]
fn a_selector_that_picks_nobody_skips_the_step_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "no-leader.toml",
        r#"
[cluster]
backend = "local"
nodes = 3
[setup.start]
command = ["sh", "-c", "sleep 600; : {{ run_id }}"]
[leader]
command = "echo leader=none"
leader = 'leader=(n\d+)'
timeout = "1s"
[schedule]
shuffle = false
pause = "50ms"
[[faults]]
name = "kill-leader"
kind = "kill"
target = "leader"
duration = "200ms"
[[faults]]
name = "kill-one"
kind = "kill"
target = "one"
duration = "200ms"
"#,
    );
    let out_dir = dir.path().join("runs");
    let out = chaos(&[
        "run",
        file.to_str().unwrap(),
        "--seed",
        "3",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", text(&out.stderr));
    let run_dir = PathBuf::from(line_after(&stdout, "run directory: ").unwrap().trim());
    let summary = read_json(&run_dir.join("summary.json"));
    let steps = summary["steps"].as_array().unwrap();
    assert_eq!(steps[0]["case"], "kill-leader");
    assert_eq!(steps[0]["status"], "skipped", "{summary:#}");
    let reason = steps[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("no leader") && reason.contains("names no leader"),
        "{reason}"
    );
    assert_eq!(steps[1]["status"], "passed", "{summary:#}");
    assert_eq!(summary["totals"]["skipped"], 1);
    assert_nothing_left(&run_dir);
}

/// The command workload (a set kept in files, checked for lost adds), overlapping cases, a
/// graceful restart and the schedule's time limit, on the local backend.
#[test]
fn command_workload_overlap_restart_and_time_limit() {
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("sets");
    std::fs::create_dir(&shared).unwrap();
    let scenario = format!(
        r#"
name = "sets"
[values]
shared = "{shared}"
[cluster]
backend = "local"
nodes = 3
[setup.start]
command = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.1; done; : {{{{ run_id }}}}"]
stop_timeout = "2s"
[workload]
type = "command"
rate = 40
concurrency = 3
keys = 2
[[workload.ops]]
kind = "add"
weight = 3
command = "echo {{{{ value }}}} >> {{{{ values.shared }}}}/{{{{ key }}}}"
[[workload.ops]]
kind = "read_set"
command = "cat {{{{ values.shared }}}}/{{{{ key }}}} 2>/dev/null || true"
[schedule]
rounds = 20
shuffle = false
pause = "100ms"
time_limit = "2500ms"
[[faults]]
name = "restart-one"
kind = "restart"
target = "one"
duration = "400ms"
overlap = true
[[faults]]
name = "pause-all"
kind = "pause"
target = "all"
duration = "300ms"
[history]
checkers = ["set"]
"#,
        shared = shared.display()
    );
    let file = write(dir.path(), "sets.toml", &scenario);
    let out_dir = dir.path().join("runs");
    let out = chaos(&[
        "run",
        file.to_str().unwrap(),
        "--seed",
        "9",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", text(&out.stderr));
    let run_dir = PathBuf::from(line_after(&stdout, "run directory: ").unwrap().trim());
    let summary = read_json(&run_dir.join("summary.json"));
    assert!(summary["totals"]["ok"].as_u64().unwrap() > 20, "{summary:#}");
    let checkers = summary["history"]["checkers"].as_array().unwrap();
    assert!(
        checkers
            .iter()
            .any(|c| c["checker"] == "set" && c["valid"] == "valid"),
        "{checkers:#?}"
    );
    // The time limit skipped the tail of the 40 planned steps.
    let steps = summary["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 40);
    assert!(
        steps
            .iter()
            .any(|s| s["status"] == "skipped" && s["reason"].as_str().unwrap().contains("time limit")),
        "{summary:#}"
    );
    // Overlap: the pause was injected while the restart was still in place.
    let events: Vec<serde_json::Value> = std::fs::read_to_string(run_dir.join("events.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let at = |event: &str, step: u64| {
        events
            .iter()
            .position(|e| e["event"] == event && e["step"] == step)
            .unwrap_or_else(|| panic!("no {event} for step {step}"))
    };
    assert!(
        at("fault_injected", 2) < at("fault_healed", 1),
        "steps 1 and 2 overlap"
    );
    // The restart stopped the system gracefully and started it again.
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "system_stopped" && e["graceful"] == true),
        "a graceful stop"
    );
    let starts = events.iter().filter(|e| e["event"] == "system_started").count();
    assert!(starts > 3, "restarts start the system again ({starts} starts)");
    assert_nothing_left(&run_dir);
}

/// Acknowledged writes that a later read does not see fail the run through the history
/// checkers: here every node keeps its own set file but reads only n1's, so adds acknowledged
/// on n2 and n3 are "lost".
#[test]
fn lost_acknowledged_writes_fail_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "lossy.toml",
        r#"
[cluster]
backend = "local"
nodes = 3
[workload]
type = "command"
rate = 60
concurrency = 3
keys = 1
[[workload.ops]]
kind = "add"
weight = 3
command = "echo {{ value }} >> {{ node.root }}/set"
[[workload.ops]]
kind = "read_set"
command = "cat {{ nodes[0].root }}/set 2>/dev/null || true"
[setup.start]
command = ["sh", "-c", "sleep 600; : {{ run_id }}"]
[[faults]]
name = "pause-one"
kind = "pause"
target = "one"
duration = "1500ms"
[history]
checkers = ["set"]
"#,
    );
    let out_dir = dir.path().join("runs");
    let out = chaos(&[
        "run",
        file.to_str().unwrap(),
        "--seed",
        "4",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains("FAILED: history checkers: set:"), "{stdout}");
    assert!(stdout.contains("replay: chaos run"), "{stdout}");
}

/// A netns scenario whose only fault is a long pause, so the test can kill an agent while it
/// runs.
const AGENT_KILLED: &str = r#"
name = "agent-killed"
[cluster]
backend = "netns"
nodes = 2
[setup.start]
command = ["sh", "-c", "sleep 600; : {{ run_id }}"]
[schedule]
rounds = 1
[[faults]]
name = "pause-one"
kind = "pause"
target = "one"
duration = "6s"
"#;

/// An agent SIGKILLed during a run is restarted by the runner's supervisor, and the run's
/// `events.jsonl` says so: `agent_died`, then `agent_restarted`, for that node.
#[test]
fn a_killed_agent_is_restarted_and_recorded_in_the_run_events() {
    let test = "a_killed_agent_is_restarted_and_recorded_in_the_run_events";
    if let Err(why) = registry::available("netns") {
        chaos_testkit::skip(test, "netns", &why);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "agent-killed.toml", AGENT_KILLED);
    let out_dir = dir.path().join("runs");
    let mut child = Command::new(env!("CARGO_BIN_EXE_chaos"))
        .args([
            "run",
            file.to_str().unwrap(),
            "--seed",
            "3",
            "--out",
            out_dir.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let events_file = out_dir.join("agent-killed/latest/events.jsonl");
    let events = || std::fs::read_to_string(&events_file).unwrap_or_default();
    let deadline = Instant::now() + chaos_testkit::scaled(Duration::from_secs(60));
    while !events().contains("\"fault_injected\"") {
        assert!(
            Instant::now() < deadline,
            "no fault injected in time:\n{}",
            events()
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "chaos run ended early:\n{}",
            events()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // n1's agent, found through the cluster's state file, which names this run's runner.
    let record: serde_json::Value = std::fs::read_dir(chaos::backend::netns::STATE_DIR)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .filter_map(|e| serde_json::from_str(&std::fs::read_to_string(e.path()).ok()?).ok())
        .find(|r: &serde_json::Value| r["runner_pid"].as_u64() == Some(u64::from(child.id())))
        .expect("the run's netns state file");
    let procs = Path::new(record["cgroup_dir"].as_str().unwrap()).join("n1/agent/cgroup.procs");
    let agent: i32 = std::fs::read_to_string(&procs).unwrap().trim().parse().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();

    let out = child.wait_with_output().unwrap();
    let events = events();
    let line = |name: &str| {
        events
            .lines()
            .position(|l| l.contains(&format!("\"event\":\"{name}\"")) && l.contains("\"node\":\"n1\""))
    };
    let died = line("agent_died").unwrap_or_else(|| panic!("no agent_died for n1:\n{events}"));
    let restarted = line("agent_restarted").unwrap_or_else(|| panic!("no agent_restarted for n1:\n{events}"));
    assert!(died < restarted, "{events}");
    assert!(events.contains("signal: 9"), "{events}");
    let stdout = text(&out.stdout);
    assert!(stdout.contains("node n1: agent restarted"), "{stdout}");
    let run_dir = std::fs::canonicalize(out_dir.join("agent-killed/latest")).unwrap();
    assert_nothing_left(&run_dir);
}

/// A system that takes 2 s to serve again after every (re)start, with recovery checks that pass
/// at once: a slow recovery, not a missing one. The run must keep the workload going until it
/// sees the node serve again (within `max_recovery`) before the schedule ends — before, the run
/// stopped the workload right after the last heal and the availability checker reported
/// "never recovered" (the CI failure of container faults on a loaded machine, made
/// deterministic).
const SLOW_RECOVERY: &str = r#"
name = "slow-recovery"
[cluster]
backend = "local"
nodes = 1
[setup.start]
command = ["sh", "-c", "rm -f {{ node.root }}/ready; sleep 2; touch {{ node.root }}/ready; while :; do sleep 0.1; done; : {{ run_id }}"]
[[setup.ready]]
name = "serving"
command = "test -e {{ node.root }}/ready"
timeout = "20s"
interval = "100ms"
[workload]
type = "command"
rate = 20
concurrency = 1
keys = 1
timeout = "1s"
[[workload.ops]]
kind = "add"
command = "test -e {{ node.root }}/ready && echo {{ value }}"
[schedule]
rounds = 1
pause = "100ms"
[[faults]]
name = "kill-it"
kind = "kill"
target = "all"
duration = "300ms"
[[invariants]]
name = "alive"
at = ["heal"]
command = "true"
[history]
checkers = ["availability"]
max_error_fraction = 1.0
max_recovery = "15s"
"#;

#[test]
fn a_slow_recovery_is_observed_before_the_run_ends() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "slow-recovery.toml", SLOW_RECOVERY);
    let out_dir = dir.path().join("runs");
    let out = chaos(&[
        "run",
        file.to_str().unwrap(),
        "--seed",
        "1",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", text(&out.stderr));
    let run_dir = PathBuf::from(line_after(&stdout, "run directory: ").unwrap().trim());
    let events = std::fs::read_to_string(run_dir.join("events.jsonl")).unwrap();
    let waited = events
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|e| e["event"] == "workload_recovered")
        .unwrap_or_else(|| panic!("no workload_recovered event:\n{events}"));
    assert_eq!(waited["nodes"], serde_json::json!(["n1"]), "{waited}");
    // The system needs 2 s after its restart; the wait covered most of it.
    assert!(waited["waited_ms"].as_u64().unwrap() >= 1000, "{waited}");
    let summary = read_json(&run_dir.join("summary.json"));
    let availability = summary["history"]["checkers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["checker"] == "availability")
        .cloned()
        .unwrap();
    assert_eq!(availability["valid"], "valid", "{availability:#}");
    assert_nothing_left(&run_dir);
}

/// A `measure` invariant: after a bandwidth fault on n1 is healed, n1 → n2 must be fast again;
/// the figures land in the summary, the history and the report (a table, marks on the
/// timeline).
#[test]
fn a_measure_invariant_reports_its_figures_in_the_summary() {
    if let Err(why) = chaos::backend::registry::available("netns") {
        chaos_testkit::skip(
            "a_measure_invariant_reports_its_figures_in_the_summary",
            "netns",
            &why,
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "measure.toml",
        r#"
[cluster]
backend = "netns"
nodes = 2
[setup.start]
command = ["sh", "-c", "sleep 600; : {{ run_id }}"]
[schedule]
pause = "50ms"
[[faults]]
name = "slow-n1"
kind = "bandwidth"
rate_bps = "8mbit"
target = ["n1"]
duration = "1s"
[[invariants]]
name = "n1 to n2 is fast again"
at = ["heal"]
on = ["n1"]
measure = { to = "n2", duration = "1s", min_mbit = 30 }
timeout = "20s"
[workload]
type = "command"
rate = 10
concurrency = 1
keys = 1
[[workload.ops]]
kind = "add"
command = "echo {{ value }} >> {{ nodes[0].root }}/set"
[[workload.ops]]
kind = "read_set"
command = "cat {{ nodes[0].root }}/set 2>/dev/null || true"
"#,
    );
    let out_dir = dir.path().join("runs");
    let out = chaos(&["run", file.to_str().unwrap(), "--out", out_dir.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", text(&out.stderr));
    let run_dir = PathBuf::from(line_after(&stdout, "run directory: ").unwrap().trim());
    let summary = std::fs::read_to_string(run_dir.join("summary.json")).unwrap();
    assert!(
        summary.contains("n1 → n2") && summary.contains("Mbit/s"),
        "the figures are in the summary: {summary}"
    );
    let history = std::fs::read_to_string(run_dir.join("history.jsonl")).unwrap();
    let measured: Vec<serde_json::Value> = history
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["type"] == "measurement")
        .collect();
    assert!(!measured.is_empty(), "no measurement in the history: {history}");
    let m = &measured[measured.len() - 1];
    assert_eq!(
        (&m["from"], &m["to"], &m["protocol"]),
        (&"n1".into(), &"n2".into(), &"tcp".into()),
        "{m}"
    );
    let mbit = m["throughput_bps"].as_f64().unwrap() / 1e6;
    assert!(mbit >= 30.0, "the passing measurement is fast: {m}");
    let html = std::fs::read_to_string(run_dir.join("report.html")).unwrap();
    let table = &html[html
        .find("<section id=\"measurements\">")
        .expect("a measurements section")..];
    assert!(
        table.contains(&format!("{mbit:.2} Mbit/s")) && table.contains("n1 → n2"),
        "the report shows the figures: {}",
        &table[..table.find("</section>").unwrap_or(table.len())]
    );
    assert!(
        table.contains("check n1 to n2 is fast again"),
        "the report names the check"
    );
    assert!(
        html.contains("<circle class=\"measurement\""),
        "a mark on the timeline"
    );
    assert_nothing_left(&run_dir);
}

/// `chaos run --keep-failed`: a failed netns run keeps its node's root directory, with what the
/// system wrote there, prints where and lists it in summary.json; a passing run keeps nothing.
#[test]
fn keep_failed_keeps_a_failed_runs_node_directories_and_says_where() {
    let test = "keep_failed_keeps_a_failed_runs_node_directories_and_says_where";
    if let Err(why) = chaos::backend::registry::available("netns") {
        chaos_testkit::skip(test, "netns", &why);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let scenario = |check: &str| {
        format!(
            r#"
[cluster]
backend = "netns"
nodes = 1
[setup.start]
command = ["sh", "-c", "echo evidence > {{{{ node.root }}}}/evidence; sleep 600; : {{{{ run_id }}}}"]
[schedule]
rounds = 1
pause = "50ms"
[[faults]]
name = "pause-it"
kind = "pause"
target = "one"
duration = "200ms"
[[invariants]]
name = "the check"
at = ["heal"]
command = "{check}"
timeout = "1s"
interval = "200ms"
"#
        )
    };
    let out_dir = dir.path().join("runs");
    let run = |name: &str, check: &str| {
        let file = write(dir.path(), name, &scenario(check));
        chaos(&[
            "run",
            file.to_str().unwrap(),
            "--keep-failed",
            "--out",
            out_dir.to_str().unwrap(),
        ])
    };

    let out = run("fails.toml", "test -e {{ node.root }}/never-written");
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{}", text(&out.stderr));
    let kept = line_after(&stdout, "kept n1's directory on this machine: ")
        .unwrap_or_else(|| panic!("{test}: no kept line: {stdout}"))
        .trim()
        .to_string();
    let evidence = std::fs::read_to_string(Path::new(&kept).join("evidence"));
    // Ours to remove: the directory and the chaos-kept-… directory holding it.
    let _ = std::fs::remove_dir_all(Path::new(&kept).parent().unwrap());
    assert_eq!(evidence.ok().as_deref(), Some("evidence\n"), "{test}: {kept}");
    let run_dir = PathBuf::from(line_after(&stdout, "run directory: ").unwrap().trim());
    let summary = read_json(&run_dir.join("summary.json"));
    assert_eq!(summary["kept"][0]["path"], kept.as_str(), "{summary:#}");
    assert_eq!(summary["kept"][0]["node"], "n1", "{summary:#}");
    assert_nothing_left(&run_dir);

    let out = run("passes.toml", "true");
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", text(&out.stderr));
    assert!(
        !stdout.contains("kept "),
        "{test}: a passing run kept something: {stdout}"
    );
}
