//! `scenarios/postgres-patroni.toml` against a real 3-node Patroni cluster (PostgreSQL 15, etcd)
//! on netns, one round of failovers, with synchronous replication on and off, and on Docker with
//! it on. Too slow for the main CI job: these run in the opt-in job `.ci/systems`.

use std::path::Path;

use chaos_check::{History, OpKind, Outcome};
use chaos_scenario::{RunOutcome, RunStatus, Runner, Scenario};

/// Why a Patroni cluster cannot run here, if it cannot.
fn patroni_unavailable() -> Option<String> {
    let on_path = |bin: &str| {
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
            .unwrap_or(false)
    };
    for bin in ["patroni", "etcd", "setpriv"] {
        if !on_path(bin) {
            return Some(format!(
                "`{bin}` is not on PATH (apt-get install patroni postgresql etcd-server)"
            ));
        }
    }
    if !Path::new("/usr/lib/postgresql/15/bin/postgres").is_file() {
        return Some("/usr/lib/postgresql/15/bin/postgres is missing (apt-get install postgresql)".into());
    }
    chaos::backend::registry::available("netns").err()
}

/// One seeded round of the shipped scenario, `synchronous` replacing its value, the adapter the
/// built-in one (found in this build, beside the test binaries); `None` (after `chaos_testkit::skip`) when Patroni cannot run here.
fn run(test: &str, synchronous: bool, seed: u64) -> Option<(RunOutcome, tempfile::TempDir)> {
    run_on(test, "netns", synchronous, seed)
}

/// [`run`] on `backend` instead of the scenario's netns.
fn run_on(
    test: &str,
    backend: &str,
    synchronous: bool,
    seed: u64,
) -> Option<(RunOutcome, tempfile::TempDir)> {
    if let Some(why) = patroni_unavailable() {
        chaos_testkit::skip(test, "patroni", &why);
        return None;
    }
    if let Err(why) = chaos::backend::registry::available(backend) {
        chaos_testkit::skip(test, backend, &why);
        return None;
    }
    let out = tempfile::tempdir().unwrap();
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/postgres-patroni.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    let text = text.replace("synchronous = true", &format!("synchronous = {synchronous}"));
    let netns = "backend = \"netns\"";
    assert!(text.contains(netns), "the scenario's backend is netns");
    let text = text.replace(netns, &format!("backend = \"{backend}\""));
    assert!(
        text.contains("{{ bin['chaos-adapter-postgres'] }}"),
        "the scenario's runner-side adapter is the built-in one"
    );
    let mut scenario = Scenario::parse(&text, "postgres-patroni.toml").unwrap_or_else(|e| panic!("{e}"));
    // Readiness, recovery and operation bounds stretch on a busy machine (CHAOS_TIMEOUT_SCALE).
    scenario.timeout_multiplier *= chaos_testkit::timeout_scale();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let started = std::time::Instant::now();
    let outcome = rt
        .block_on(Runner::new(scenario).seed(seed).out_dir(out.path()).run())
        .unwrap_or_else(|e| panic!("run: {e}"));
    eprintln!(
        "{backend}, synchronous = {synchronous}, seed {seed}: {:?} in {:.0?}: {:#?}",
        outcome.status,
        started.elapsed(),
        outcome.summary
    );
    Some((outcome, out))
}

/// The IDs of the node images (`io.chaos.image=node`) the Docker daemon has.
fn node_images() -> std::collections::BTreeSet<String> {
    std::process::Command::new("docker")
        .args([
            "images",
            "-q",
            "--no-trunc",
            "--filter",
            "label=io.chaos.image=node",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Acknowledged adds in the run's history.
fn acknowledged_adds(run_dir: &Path) -> usize {
    let text = std::fs::read_to_string(run_dir.join("history.jsonl")).unwrap();
    let history = History::parse(&text, "history.jsonl").unwrap_or_else(|e| panic!("{e}"));
    history
        .ops
        .iter()
        .filter(|o| o.kind == OpKind::Add && o.outcome == Outcome::Ok)
        .count()
}

#[test]
#[ignore = "opt-in job .ci/systems: a 3-node Patroni cluster through a round of failovers takes minutes"]
fn with_synchronous_replication_no_acknowledged_write_is_lost() {
    let Some((outcome, _dir)) = run(
        "with_synchronous_replication_no_acknowledged_write_is_lost",
        true,
        1,
    ) else {
        return;
    };
    assert_eq!(outcome.status, RunStatus::Passed, "{:#?}", outcome.summary);
    let adds = acknowledged_adds(&outcome.run_dir);
    assert!(adds > 200, "only {adds} acknowledged adds");
}

/// The same on Docker, the node image holding Python, Patroni and PostgreSQL by the scenario's
/// `[cluster.docker] include`.
#[test]
#[ignore = "opt-in job .ci/systems: a 3-node Patroni cluster through a round of failovers takes minutes"]
fn on_docker_with_synchronous_replication_no_acknowledged_write_is_lost() {
    const TEST: &str = "on_docker_with_synchronous_replication_no_acknowledged_write_is_lost";
    let before = node_images();
    let run = std::panic::catch_unwind(|| run_on(TEST, "docker", true, 1));
    // The ~390 MB image this run baked (the default node images other tests use are kept: they
    // existed before, or are in use and refused).
    for image in node_images().difference(&before) {
        let removed = std::process::Command::new("docker")
            .args(["rmi", image])
            .output()
            .is_ok_and(|o| o.status.success());
        eprintln!("{TEST}: removed the node image it made, {image}: {removed}");
    }
    let Some((outcome, _dir)) = run.unwrap_or_else(|panic| std::panic::resume_unwind(panic)) else {
        return;
    };
    assert_eq!(outcome.status, RunStatus::Passed, "{:#?}", outcome.summary);
    assert_eq!(outcome.summary.backend, "docker");
    let adds = acknowledged_adds(&outcome.run_dir);
    assert!(adds > 200, "only {adds} acknowledged adds");
}

/// Asynchronous replication: the primary cut off by `partition-primary` keeps acknowledging
/// the runner's writes until Patroni demotes it (retry_timeout and more), while a replica is
/// promoted; pg_rewind then discards what only the old primary had. The set checker names the
/// lost elements and the run fails.
#[test]
#[ignore = "opt-in job .ci/systems: a 3-node Patroni cluster through a round of failovers takes minutes"]
fn with_asynchronous_replication_a_failover_loses_acknowledged_writes_by_name() {
    let Some((outcome, _dir)) = run(
        "with_asynchronous_replication_a_failover_loses_acknowledged_writes_by_name",
        false,
        1,
    ) else {
        return;
    };
    assert_eq!(outcome.status, RunStatus::Failed, "{:#?}", outcome.summary);
    let reason = outcome.summary.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("set:") && reason.contains("acknowledged adds are missing from the final read"),
        "{reason}"
    );
    // The elements are named: ten of them, then how many in all.
    assert!(reason.contains("in all)"), "{reason}");
}
