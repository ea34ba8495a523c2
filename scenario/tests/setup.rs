//! Setup and feedback on the local backend: a `[[setup.once]]` step runs on its node after readiness, retried
//! until it succeeds; one that never succeeds stops the run within its bound, naming the rendered
//! command, the node and the attempts. A readiness check that fails identically says so early,
//! and gives up early when told. A fault on the leader after which the same node leads is flagged.
//! `[[setup.services]]` start beside the system, log apart, and are paused and killed apart; a
//! service starts on any node only once the services before it are ready on every node (their
//! own `ready` checks passed), and one that never becomes ready stops the run naming the service
//! and its check, before the services after it start.
//! `[cluster] labels` reach the backend: `local`, whose machines carry none, refuses them.

use std::sync::{Arc, Mutex};

use chaos_scenario::{Progress, RunObserver, RunOptions, RunStatus, Runner, Scenario};

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
    let outcome = rt
        .block_on(Runner::new(s).seed(1).out_dir(dir.path()).run())
        .unwrap();
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
    let outcome = rt
        .block_on(Runner::new(s).seed(1).out_dir(dir.path()).run())
        .unwrap();
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

#[test]
fn cluster_labels_reach_the_backend_and_a_backend_without_labels_refuses_them() {
    let dir = tempfile::tempdir().unwrap();
    let text = "[cluster]\nbackend = \"local\"\nnodes = 1\nlabels = { rack = \"1\" }\n\
                [setup.start]\ncommand = [\"sleep\", \"600\"]\n";
    let s = Scenario::parse(text, "labels.toml").unwrap_or_else(|e| panic!("{e}"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let outcome = rt
        .block_on(Runner::new(s).seed(1).out_dir(dir.path()).run())
        .unwrap();
    assert_eq!(outcome.status, RunStatus::Error, "{:?}", outcome.summary);
    let reason = outcome.summary.reason.unwrap_or_default();
    assert!(
        reason.contains("creating the cluster")
            && reason.contains("labelled rack=1")
            && reason.contains("carry no labels"),
        "{reason}"
    );
}

/// Keeps the progress lines of a run.
struct Lines(Mutex<Vec<String>>);

impl RunObserver for Lines {
    fn progress(&self, progress: Progress) {
        if let Progress::Line(line) = progress {
            self.0.lock().unwrap().push(line);
        }
    }
}

#[test]
fn a_readiness_check_failing_identically_says_so_early_and_gives_up_when_told() {
    let dir = tempfile::tempdir().unwrap();
    let s = scenario(
        r#"
[[setup.ready]]
name = "port open"
command = ["sh", "-c", "echo connection refused on {{ node.name }}; exit 7"]
on = ["n1"]
timeout = "120s"
interval = "100ms"
give_up_after = 5
"#,
    );
    let lines = Arc::new(Lines(Mutex::new(Vec::new())));
    let options = RunOptions {
        seed: Some(1),
        out_dir: dir.path().to_path_buf(),
        observer: Some(lines.clone()),
        ..RunOptions::default()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let started = std::time::Instant::now();
    let outcome = rt.block_on(Runner::new(s).options(options).run()).unwrap();
    assert_eq!(outcome.status, RunStatus::Error, "{:?}", outcome.summary);
    // It gave up after 5 identical failures, long before its 120 s timeout.
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
    let reason = outcome.summary.reason.unwrap_or_default();
    assert!(
        reason.contains("failed the same way 5 times in a row"),
        "{reason}"
    );
    // The rendered command is shown, not its template.
    assert!(
        reason.contains("echo connection refused on n1; exit 7"),
        "{reason}"
    );
    // And it said so after the third, while still trying.
    let lines = lines.0.lock().unwrap();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("has failed the same way 3 times in a row; it may never pass")),
        "{lines:#?}"
    );
}

#[test]
fn a_leader_fault_after_which_the_same_leader_leads_is_flagged() {
    let dir = tempfile::tempdir().unwrap();
    // A probe that always names n1: pausing the leader changes nothing it can see.
    let text = r#"
[cluster]
backend = "local"
nodes = 3
[setup.start]
command = ["sh", "-c", "sleep 600; : {{ run_id }}"]
[leader]
command = "echo leader=n1"
leader = "leader=(\\w+)"
[[faults]]
name = "pause-leader"
kind = "pause"
target = "leader"
duration = "500ms"
[workload]
type = "command"
rate = 20
concurrency = 1
keys = 1
[[workload.ops]]
kind = "add"
command = "echo {{ value }} >> {{ nodes[0].root }}/set"
[[workload.ops]]
kind = "read_set"
command = "cat {{ nodes[0].root }}/set 2>/dev/null || true"
"#;
    let s = Scenario::parse(text, "leader.toml").unwrap_or_else(|e| panic!("{e}"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let outcome = rt
        .block_on(Runner::new(s).seed(1).out_dir(dir.path()).run())
        .unwrap();
    // A warning, not a failure.
    assert!(outcome.passed(), "{:?}", outcome.summary);
    let step = &outcome.summary.steps[0];
    assert_eq!(step.warnings.len(), 1, "{step:?}");
    assert!(
        step.warnings[0].contains("the leader n1 was still the leader after")
            && step.warnings[0].contains("of pause"),
        "{:?}",
        step.warnings
    );
    assert!(
        events(&outcome.run_dir)
            .iter()
            .any(|e| e["event"] == "step_warning")
    );
    // In the history, and in the report right under its step's fault case row.
    let history = std::fs::read_to_string(outcome.run_dir.join("history.jsonl")).unwrap();
    assert!(
        history.contains("\"type\":\"warning\"") && history.contains("\"case\":\"01-pause-leader\""),
        "{history}"
    );
    let html = std::fs::read_to_string(outcome.run_dir.join("report.html")).unwrap();
    let case = html
        .find("<tr><td>01-pause-leader</td>")
        .expect("the step's fault case row");
    let warning = html
        .find("<tr class=\"warning\">")
        .expect("a warning row in report.html");
    assert!(case < warning, "the warning row precedes its case");
    assert!(html[warning..].contains("the leader n1 was still the leader after"));
}

/// Nanosecond timestamps a ticker wrote, one a line.
fn ticks(path: &std::path::Path) -> Vec<u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// The longest pause between two ticks: the ticks before and after it, in nanoseconds.
fn longest_gap(ticks: &[u64]) -> (u64, u64) {
    ticks
        .windows(2)
        .map(|w| (w[0], w[1]))
        .max_by_key(|(a, b)| b.saturating_sub(*a))
        .unwrap_or((0, 0))
}

/// The longest pause between two ticks, in milliseconds.
fn longest_gap_ms(ticks: &[u64]) -> u64 {
    let (from, to) = longest_gap(ticks);
    to.saturating_sub(from) / 1_000_000
}

#[test]
fn services_are_started_logged_and_faulted_separately() {
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("ticks");
    std::fs::create_dir(&shared).unwrap();
    let ticker = |name: &str| {
        format!(
            "trap 'exit 0' TERM; while :; do date +%s%N >> {}/{name}; echo {name} tick; sleep 0.05; done",
            shared.display()
        )
    };
    let text = format!(
        r#"
[cluster]
backend = "local"
nodes = 1
[setup.start]
command = ["sh", "-c", "{main}"]
[[setup.services]]
name = "sidecar"
command = ["sh", "-c", "{sidecar}"]
stop_timeout = "2s"
# Ticking before the first fault: on a busy machine the pause came before the sidecar's first
# tick, and the frozen interval was invisible in its ticks.
[[setup.services.ready]]
name = "ticking"
command = ["sh", "-c", "test -s {dir}/main && test -s {dir}/sidecar"]
interval = "20ms"
timeout = "10s"
[schedule]
shuffle = false
pause = "300ms"
[[faults]]
name = "pause-sidecar"
kind = "pause"
target = "one"
service = "sidecar"
duration = "1500ms"
[[faults]]
name = "kill-main"
kind = "kill"
target = "one"
duration = "500ms"
"#,
        main = ticker("main"),
        sidecar = ticker("sidecar"),
        dir = shared.display()
    );
    let s = Scenario::parse(&text, "services.toml").unwrap_or_else(|e| panic!("{e}"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let outcome = rt
        .block_on(Runner::new(s).seed(1).out_dir(dir.path()).run())
        .unwrap();
    assert!(outcome.passed(), "{:?}", outcome.summary);
    // The pause froze the sidecar only.
    let (main, sidecar) = (ticks(&shared.join("main")), ticks(&shared.join("sidecar")));
    assert!(
        longest_gap_ms(&sidecar) >= 1200,
        "sidecar gap {} ms; ticks {:?}; events:\n{}",
        longest_gap_ms(&sidecar),
        sidecar
            .iter()
            .map(|t| (t - sidecar[0]) / 1_000_000)
            .collect::<Vec<_>>(),
        std::fs::read_to_string(outcome.run_dir.join("events.jsonl")).unwrap_or_default()
    );
    // The main ticker kept ticking while the sidecar was frozen (a gap bound on main would
    // measure the machine's load as much as the fault: the kill's restart is slow when busy).
    let (from, to) = longest_gap(&sidecar);
    let during = main.iter().filter(|&&t| t > from && t < to).count();
    assert!(
        during >= 5,
        "main ticked {during} times during the sidecar's {} ms pause",
        (to - from) / 1_000_000
    );
    let events = events(&outcome.run_dir);
    // The kill took the main process down and started it again, not the sidecar.
    let started = |service: &str| {
        events
            .iter()
            .filter(|e| e["event"] == "system_started" && e["service"] == service)
            .count()
    };
    assert_eq!(started("system"), 2, "setup and after the kill");
    assert_eq!(started("sidecar"), 1, "setup only");
    // Each service has its own log, collected into the run directory.
    let log = std::fs::read_to_string(outcome.run_dir.join("nodes/n1/sidecar.log")).unwrap();
    assert!(
        log.contains("sidecar tick") && !log.contains("main tick"),
        "{log}"
    );
    let log = std::fs::read_to_string(outcome.run_dir.join("nodes/n1/system.log")).unwrap();
    assert!(log.contains("main tick") && !log.contains("sidecar tick"));
}

/// Service `store` becomes ready 400 ms after it starts (it creates `store-ready`); service
/// `manager` records at its start whether the store was ready then. `store_ready` is the store's
/// `[[setup.services.ready]]` table (empty: none).
fn staged_services(store_ready: &str) -> Scenario {
    let text = format!(
        r#"
[cluster]
backend = "local"
nodes = 2

[[setup.services]]
name = "store"
command = ["sh", "-c", "sleep 0.4; touch {{{{ node.root }}}}/store-ready; exec sleep 600"]
stop_timeout = "1s"
{store_ready}

[[setup.services]]
name = "manager"
command = ["sh", "-c", "if [ -f {{{{ node.root }}}}/store-ready ]; then echo after; else echo before; fi > {{{{ node.root }}}}/manager-saw; exec sleep 600"]
stop_timeout = "1s"

[[invariants]]
name = "the manager saw"
at = ["start"]
command = ["cat", "{{{{ node.root }}}}/manager-saw"]
regex = "after"
timeout = "2s"

[[faults]]
name = "pause-manager"
kind = "pause"
target = "one"
service = "manager"
duration = "100ms"
"#
    );
    Scenario::parse(&text, "service-ready.toml").unwrap_or_else(|e| panic!("{e}"))
}

const STORE_READY: &str = r#"
[[setup.services.ready]]
name = "store ready"
command = ["test", "-f", "{{ node.root }}/store-ready"]
interval = "100ms"
timeout = "10s"
"#;

#[test]
fn a_service_starts_only_once_the_one_before_it_is_ready_on_every_node() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let outcome = rt
        .block_on(
            Runner::new(staged_services(STORE_READY))
                .seed(1)
                .out_dir(dir.path())
                .run(),
        )
        .unwrap();
    assert!(outcome.passed(), "{:?}", outcome.summary);
    // The order in events.jsonl: the store on every node, its readiness, then the manager.
    let events = events(&outcome.run_dir);
    let position = |pred: &dyn Fn(&serde_json::Value) -> bool| {
        events.iter().position(pred).expect("the event is recorded")
    };
    let ready = position(&|e| e["event"] == "ready_check" && e["service"] == "store");
    assert_eq!(events[ready]["passed"], true, "{}", events[ready]);
    let first_manager = position(&|e| e["event"] == "system_started" && e["service"] == "manager");
    let last_store = events
        .iter()
        .rposition(|e| e["event"] == "system_started" && e["service"] == "store")
        .unwrap();
    assert!(last_store < ready && ready < first_manager, "{events:#?}");

    // Without the store's readiness the manager starts at once and sees it unready: the
    // invariant above can fail, so the pass above is the readiness gate's doing.
    let dir = tempfile::tempdir().unwrap();
    let outcome = rt
        .block_on(Runner::new(staged_services("")).seed(1).out_dir(dir.path()).run())
        .unwrap();
    assert_eq!(outcome.status, RunStatus::Failed, "{:?}", outcome.summary);
}

#[test]
fn a_service_that_never_becomes_ready_stops_the_run_before_the_next_starts() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let never = STORE_READY
        .replace("store-ready\"]", "never\"]")
        .replace("timeout = \"10s\"", "timeout = \"1s\"");
    let started = std::time::Instant::now();
    let outcome = rt
        .block_on(
            Runner::new(staged_services(&never))
                .seed(1)
                .out_dir(dir.path())
                .run(),
        )
        .unwrap();
    assert_eq!(outcome.status, RunStatus::Error, "{:?}", outcome.summary);
    let reason = outcome.summary.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("did not become ready: service `store`: check `store ready`"),
        "{reason}"
    );
    let events = events(&outcome.run_dir);
    assert!(
        !events
            .iter()
            .any(|e| e["event"] == "system_started" && e["service"] == "manager"),
        "{events:#?}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
}
