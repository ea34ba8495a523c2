//! `[[setup.once]]` on the local backend: a one-time step runs on its node after readiness,
//! retried until it succeeds; one that never succeeds stops the run within its bound, naming the
//! rendered command, the node and the attempts.

use chaos_scenario::{RunStatus, Runner, Scenario};

fn scenario(once: &str) -> Scenario {
    let text = format!(
        r#"
[cluster]
backend = "local"
nodes = 2
[setup.start]
command = ["sh", "-c", "sleep 600; : {{{{ run_id }}}}"]
{once}
[[faults]]
name = "pause"
kind = "pause"
target = "one"
duration = "200ms"
"#
    );
    Scenario::parse(&text, "once.toml").unwrap_or_else(|e| panic!("{e}"))
}

fn events(run_dir: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run_dir.join("events.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn a_one_time_step_is_retried_on_its_node_until_it_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    // Fails twice, then succeeds: a counter in the node's root.
    let s = scenario(
        r#"
[[setup.once]]
name = "create the table"
node = "n2"
interval = "100ms"
command = "n=$(cat {{ node.root }}/tries 2>/dev/null || echo 0); echo $((n+1)) > {{ node.root }}/tries; [ $n -ge 2 ]"
"#,
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let outcome = rt.block_on(Runner::new(s).seed(1).out_dir(dir.path()).run()).unwrap();
    assert!(outcome.passed(), "{:?}", outcome.summary);
    let done = events(&outcome.run_dir)
        .into_iter()
        .find(|e| e["event"] == "once_done")
        .expect("a once_done event");
    assert_eq!(done["node"], "n2");
    assert_eq!(done["attempts"], 3, "{done}");
    assert_eq!(done["name"], "create the table");
}

#[test]
fn a_one_time_step_that_never_succeeds_stops_the_run_within_its_bound() {
    let dir = tempfile::tempdir().unwrap();
    let s = scenario(
        r#"
[[setup.once]]
command = ["sh", "-c", "echo no table for {{ node.name }}; exit 3"]
timeout = "1s"
interval = "200ms"
"#,
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let started = std::time::Instant::now();
    let outcome = rt.block_on(Runner::new(s).seed(1).out_dir(dir.path()).run()).unwrap();
    assert_eq!(outcome.status, RunStatus::Error, "{:?}", outcome.summary);
    let reason = outcome.summary.reason.unwrap_or_default();
    assert!(
        reason.contains("one-time step `sh -c echo no table for n1; exit 3`")
            && reason.contains("on n1")
            && reason.contains("did not succeed within 1s")
            && reason.contains("exit code 3: no table for n1"),
        "{reason}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
}
