//! The scenario engine from Rust, against real processes: a 3-member etcd cluster (on the `local`
//! backend, so it runs without root) built in code, run from a seed to a verdict; and a property
//! test whose fault schedules proptest generates — and would shrink to a minimal failing one.
//!
//! Skipped (with the reason) when `etcd` is not on PATH (`apt-get install etcd-server`).

use std::path::Path;

use chaos::Signal;
use chaos::faults::{Fault, Kill, Pause};
use chaos_scenario::model::{
    Backend, Check, FaultCase, HttpRequest, Invariant, LeaderProbe, Selector, When, WorkloadSpec,
};
use chaos_scenario::{Plan, Runner, Scenario, strategy};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// Whether `test` cannot run here (no etcd, or `local` without a built agent), skipping it.
fn etcd_missing(test: &str) -> bool {
    if let Err(why) = chaos::backend::registry::available("local") {
        chaos_testkit::skip(test, "agent", &why);
        return true;
    }
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("etcd").is_file()))
        .unwrap_or(false);
    if !found {
        chaos_testkit::skip(
            test,
            "etcd",
            &"`etcd` is not on PATH (apt-get install etcd-server)",
        );
    }
    !found
}

/// Three etcd members on this host, each on its own ports from `port_base` (every node of the
/// local backend is 127.0.0.1), under a key-value workload, with a kill and a pause.
fn etcd_on_local(port_base: u16) -> Scenario {
    let client = "127.0.0.1:{{ values.port_base + node.index * 10 }}";
    let peer = "http://127.0.0.1:{{ values.port_base + 1 + node.index * 10 }}";
    let members = "{% for n in nodes %}{{ n.name }}=http://127.0.0.1:{{ values.port_base + 1 + n.index * 10 }}\
                   {% if not loop.last %},{% endif %}{% endfor %}";
    let status = || HttpRequest::post(client, "/v3/maintenance/status", "{}");
    Scenario::builder("etcd-local")
        .backend(Backend::named("local").unwrap())
        .nodes(3)
        .value("port_base", i64::from(port_base))
        .start([
            "etcd",
            "--name",
            "{{ node.name }}",
            "--data-dir",
            "{{ node.root }}/data",
            "--listen-client-urls",
            &format!("http://{client}"),
            "--advertise-client-urls",
            &format!("http://{client}"),
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
            "--initial-cluster",
            members,
            "--initial-cluster-token",
            "{{ run_id }}",
        ])
        .ready(Check::http("healthy", HttpRequest::get(client, "/health")).regex(r#""health":"true""#))
        .leader(LeaderProbe::http(
            status(),
            r#""leader":"(\d+)""#,
            Some(r#""member_id":"(\d+)""#),
        ))
        .workload(WorkloadSpec::kv(client).load(30.0, 3))
        .fault(
            FaultCase::new(
                "kill-leader",
                Fault::Kill(Kill {
                    signal: Signal::KILL,
                    process: None,
                }),
                Selector::Leader,
            )
            .duration_ms(1000, 2000),
        )
        .fault(
            FaultCase::new(
                "pause-follower",
                Fault::Pause(Pause::default()),
                Selector::Follower,
            )
            .duration_ms(1000, 2000),
        )
        .invariant(
            Invariant::http("healthy", HttpRequest::get(client, "/health"))
                .regex(r#""health":"true""#)
                .timeout_secs(20),
        )
        .invariant(
            Invariant::http("one leader", status())
                .agree(r#""leader":"([1-9]\d*)""#)
                .at([When::Heal, When::End])
                .timeout_secs(20),
        )
        .pause_ms(200, 500)
        .checkers(["linearizability"])
        .build()
        .expect("the built scenario is valid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scenario_from_code_runs_from_a_seed_to_a_verdict() {
    // A scenario file loads and plans the same way as one built in code.
    let raft =
        Scenario::from_file(Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/raft.toml")).unwrap();
    assert_eq!(Plan::generate(&raft, 3), Plan::generate(&raft, 3));

    if etcd_missing("a_scenario_from_code_runs_from_a_seed_to_a_verdict") {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let outcome = Runner::new(etcd_on_local(32300))
        .seed(11)
        .out_dir(out.path())
        .run()
        .await
        .expect("the run starts");
    let s = &outcome.summary;
    assert!(
        outcome.passed(),
        "{:?}: {:?}; replay with: {}",
        outcome.status,
        s.reason,
        outcome.replay
    );
    assert_eq!(s.steps.len(), 2);
    assert!(s.totals.ok > 20, "{:?}", s.totals);
    assert_eq!(s.history.as_ref().unwrap().verdict, "valid");
}

#[test]
fn generated_fault_schedules_hold_and_would_shrink() {
    if etcd_missing("generated_fault_schedules_hold_and_would_shrink") {
        return;
    }
    let scenario = etcd_on_local(32400);
    let out = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Two short schedules; a failing one would be shrunk by proptest to fewer, shorter steps and
    // reported with a `chaos run … --plan …/plan.json` line replaying it.
    let mut runner = TestRunner::new(Config {
        cases: 2,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&strategy::plans(&scenario, 1..=2), |plan| {
            let steps = plan.steps.len();
            let outcome = rt
                .block_on(Runner::new(scenario.clone()).plan(plan).out_dir(out.path()).run())
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(
                outcome.passed(),
                "{:?}: {:?}; replay with: {}",
                outcome.status,
                outcome.summary.reason,
                outcome.replay
            );
            prop_assert!(outcome.replay.contains("--plan"));
            prop_assert_eq!(outcome.summary.steps.len(), steps);
            Ok(())
        })
        .unwrap();
}
