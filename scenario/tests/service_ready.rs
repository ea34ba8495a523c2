//! Per-service readiness on the local backend: a service starts on any node only once the
//! services before it are ready on every node (their own `ready` checks passed), and a service
//! that never becomes ready stops the run naming the service and its check, before the services
//! after it start.

use chaos_scenario::{RunStatus, Runner, Scenario};

/// Service `store` becomes ready 400 ms after it starts (it creates `store-ready`); service
/// `manager` records at its start whether the store was ready then. `store_ready` is the store's
/// `[[setup.services.ready]]` table (empty: none).
fn scenario(store_ready: &str) -> Scenario {
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

fn events(run_dir: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run_dir.join("events.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn a_service_starts_only_once_the_one_before_it_is_ready_on_every_node() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let outcome = rt
        .block_on(
            Runner::new(scenario(STORE_READY))
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
        .block_on(Runner::new(scenario("")).seed(1).out_dir(dir.path()).run())
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
        .block_on(Runner::new(scenario(&never)).seed(1).out_dir(dir.path()).run())
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
