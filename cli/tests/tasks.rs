//! `chaos tasks`: 20 tasks over 5 `local` nodes, one flaky task that passes on its retry and one
//! that always fails — the summary says exactly that, the JUnit file too, and every task's
//! artifact is collected into the run directory.

use std::path::PathBuf;
use std::process::Command;

const TASKS: &str = r#"
name = "fan-out"
[cluster]
backend = "local"
nodes = 5
[tasks]
list = ["t01", "t02", "t03", "t04", "t05", "t06", "t07", "t08", "t09", "t10",
        "t11", "t12", "t13", "t14", "t15", "t16", "t17", "flaky", "t19", "broken"]
retries = 2
timeout = "20s"
artifacts = ["{{ node.root }}/out/{{ task }}.txt"]
command = """
mkdir -p {{ node.root }}/out
echo "{{ task }} attempt {{ attempt }} on {{ node.name }}" >> {{ node.root }}/out/{{ task }}.txt
case {{ task }} in
  broken) echo "broken is broken" >&2; exit 3 ;;
  flaky) test -e {{ node.root }}/out/flaky.seen || { touch {{ node.root }}/out/flaky.seen; exit 1; } ;;
esac
"""
"#;

#[test]
fn twenty_tasks_over_five_nodes_with_a_flaky_and_a_broken_one() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fan-out.toml");
    std::fs::write(&file, TASKS).unwrap();
    let out_dir = dir.path().join("runs");
    let out = Command::new(env!("CARGO_BIN_EXE_chaos"))
        .args([
            "tasks",
            file.to_str().unwrap(),
            "--out",
            out_dir.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("FAILED: 20 tasks: 19 succeeded (1 flaky), 1 failed, 0 not run"),
        "{stdout}"
    );
    assert!(stdout.contains("failed: broken"), "{stdout}");
    let run_dir = PathBuf::from(
        stdout
            .lines()
            .find_map(|l| l.strip_prefix("run directory: "))
            .unwrap(),
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["status"], "failed");
    assert_eq!(summary["task_count"], 20);
    assert_eq!(summary["success_count"], 19);
    assert_eq!(summary["flaky_count"], 1);
    assert_eq!(summary["failure_count"], 1);
    let tasks = summary["tasks"].as_array().unwrap();
    let nodes: std::collections::BTreeSet<&str> = tasks.iter().map(|t| t["node"].as_str().unwrap()).collect();
    assert_eq!(nodes.len(), 5, "spread over every node: {nodes:?}");
    for task in tasks {
        let name = task["name"].as_str().unwrap();
        let attempts = task["attempts"].as_array().unwrap();
        let (status, tries) = match name {
            "flaky" => ("flaky", 2),
            "broken" => ("failed", 3),
            _ => ("passed", 1),
        };
        assert_eq!(task["status"], status, "{task:#}");
        assert_eq!(attempts.len(), tries, "{task:#}");
        // The artifact holds one line per attempt, all on the task's node.
        let artifact = run_dir.join(task["artifacts"][0].as_str().expect("an artifact"));
        let text = std::fs::read_to_string(&artifact).unwrap();
        assert_eq!(text.lines().count(), tries, "{text}");
        assert!(
            text.starts_with(&format!("{name} attempt 1 on {}", task["node"].as_str().unwrap())),
            "{text}"
        );
        let index = task["index"].as_u64().unwrap();
        assert!(run_dir.join(format!("tasks/{index}/attempt-1.log")).is_file());
    }
    let broken = tasks.iter().find(|t| t["name"] == "broken").unwrap();
    assert_eq!(broken["attempts"][2]["exit_code"], 3);
    let log =
        std::fs::read_to_string(run_dir.join(format!("tasks/{}/attempt-3.log", broken["index"]))).unwrap();
    assert!(log.contains("broken is broken"), "{log}");

    let junit = std::fs::read_to_string(run_dir.join("junit.xml")).unwrap();
    assert_eq!(junit.matches("<testcase ").count(), 20, "{junit}");
    assert_eq!(junit.matches("<failure ").count(), 1, "{junit}");
    assert!(junit.contains("flaky: passed on attempt 2"), "{junit}");
}

#[test]
fn a_bad_task_file_names_the_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[tasks]\nlist = [\"a\"]\ncomand = \"true\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_chaos"))
        .args(["tasks", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:3: unknown field `comand`", file.display())),
        "{stderr}"
    );
}

/// Network faults from the scenario's fault cases while tasks run on `netns` nodes: planned from
/// the seed, injected, healed; the tasks still pass. On `local` the same file is refused before
/// any task runs (its agents cannot confine a network fault to one node).
#[test]
fn faults_from_scenario_cases_run_while_tasks_run() {
    let file_text = |backend: &str| {
        format!(
            r#"
name = "with-faults"
[cluster]
backend = "{backend}"
nodes = 3
[tasks]
list = ["a", "b", "c", "d", "e", "f"]
command = "sleep 0.5"
[schedule]
rounds = 2
pause = "50ms"
[[faults]]
name = "cut-one"
kind = "partition"
target = "one"
duration = "300ms"
[[faults]]
name = "lossy"
kind = "loss"
target = "all"
percent = 20
duration = "200ms"
"#
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("local.toml");
    std::fs::write(&local, file_text("local")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_chaos"))
        .args(["tasks", local.to_str().unwrap(), "--seed", "7", "--out"])
        .arg(dir.path().join("runs"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(stdout.contains("ERROR: fault case `cut-one`"), "{stdout}");

    if let Err(why) = chaos::backend::registry::available("netns") {
        chaos_testkit::skip("faults_from_scenario_cases_run_while_tasks_run", "netns", &why);
        return;
    }
    let netns = dir.path().join("netns.toml");
    std::fs::write(&netns, file_text("netns")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_chaos"))
        .args(["tasks", netns.to_str().unwrap(), "--seed", "7", "--out"])
        .arg(dir.path().join("runs"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("seed 7"), "{stdout}");
    let run_dir = PathBuf::from(
        stdout
            .lines()
            .find_map(|l| l.strip_prefix("run directory: "))
            .unwrap(),
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["seed"], 7);
    assert_eq!(summary["success_count"], 6);
    let faults = summary["faults"].as_array().expect("faults recorded");
    assert!(!faults.is_empty(), "{summary:#}");
    assert_eq!(faults[0]["status"], "healed", "{summary:#}");
    assert!(faults.iter().all(|f| f["status"] != "error"), "{summary:#}");
    assert!(run_dir.join("plan.txt").is_file());
}
