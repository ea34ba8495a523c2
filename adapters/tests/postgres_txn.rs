//! List-append transactions through the PostgreSQL adapter against a real PostgreSQL 15: the
//! adapter's `txn` path on a deliberately contended history (serializable holds, read committed
//! shows anomalies), and the shipped `scenarios/postgres-txn.toml` at both levels (about 12 s
//! each on a loaded 2-core machine, so in the default suite).

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chaos_adapters::pg::{Isolation, PgAdapter};
use chaos_check::{
    AdapterRequest, Checker, ConsistencyModel, Header, History, ListAppend, Op, OpKind, Outcome, Validity,
};
use chaos_scenario::{RunStatus, Runner, Scenario};
use serde_json::{Value, json};

/// Runs `clients` threads of `per_client` transactions each through their own adapters at
/// `level`, on three keys named `{prefix}0..2` (2 to 4 micro-operations, half of them appends;
/// elements unique over the whole test), and returns the history.
fn contended(addr: &str, level: Isolation, prefix: &str, clients: u64, per_client: u64) -> History {
    let epoch = Instant::now();
    let next = Arc::new(AtomicU64::new(1));
    let threads: Vec<_> = (0..clients)
        .map(|client| {
            let (addr, prefix, next) = (addr.to_string(), prefix.to_string(), next.clone());
            std::thread::spawn(move || {
                let mut adapter = PgAdapter::new(
                    addr,
                    "postgres".into(),
                    "postgres".into(),
                    None,
                    Duration::from_secs(5),
                )
                .with_isolation(level);
                let mut ops = Vec::new();
                let mut logical = client;
                // A cheap per-thread random stream: the contention, not the draw, matters.
                let mut state = client.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                let mut draw = |n: u64| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state % n
                };
                for _ in 0..per_client {
                    let len = 2 + draw(3);
                    let mops: Vec<Value> = (0..len)
                        .map(|_| {
                            let key = format!("{prefix}{}", draw(3));
                            if draw(2) == 0 {
                                json!(["r", key, null])
                            } else {
                                json!(["append", key, next.fetch_add(1, Ordering::Relaxed)])
                            }
                        })
                        .collect();
                    let id = next.fetch_add(1, Ordering::Relaxed);
                    let invoke = epoch.elapsed().as_micros() as u64;
                    let response = adapter.apply(AdapterRequest {
                        id,
                        kind: OpKind::Txn,
                        key: None,
                        value: Some(Value::Array(mops.clone())),
                        expected: None,
                    });
                    let complete = epoch.elapsed().as_micros() as u64;
                    let value = match (&response.outcome, response.value) {
                        (Outcome::Ok, Some(v)) => v,
                        (Outcome::Ok, None) => panic!("an ok txn without its micro-operations: {mops:?}"),
                        _ => Value::Array(mops),
                    };
                    let mut op = Op::new(id, logical, OpKind::Txn, invoke, response.outcome)
                        .complete(complete)
                        .value(value);
                    op.error = response.error;
                    if response.outcome == Outcome::Unknown {
                        logical += clients;
                    }
                    ops.push(op);
                }
                ops
            })
        })
        .collect();
    let mut history = History::new(Header::new());
    for t in threads {
        history.ops.extend(t.join().unwrap());
    }
    history
}

fn count(history: &History, outcome: Outcome) -> usize {
    history.ops.iter().filter(|o| o.outcome == outcome).count()
}

/// The adapter's txn path on a contended history: at `serializable` PostgreSQL refuses what it
/// cannot serialize (40001, answered `fail`) and the rest is serializable; at `read-committed`
/// the same load shows the anomalies that level allows, named by the list-append checker.
#[test]
fn txns_are_serializable_at_serializable_and_not_at_read_committed() {
    if !common::can_run_postgres("txns_are_serializable_at_serializable_and_not_at_read_committed") {
        return;
    }
    let server = common::Server::start();
    let serializable = ListAppend::new(ConsistencyModel::Serializable);

    let strict = contended(&server.addr, Isolation::Serializable, "s", 8, 60);
    let verdict = serializable.check(&strict);
    assert_eq!(verdict.valid, Validity::Valid, "{}", verdict.explanation);
    // A loaded machine stretches every transaction, so more of them overlap and PostgreSQL
    // refuses more (292 of 480 on a busy CI run): a tenth committed keeps the check meaningful.
    assert!(count(&strict, Outcome::Ok) >= 48, "{verdict:?}");
    assert_eq!(
        count(&strict, Outcome::Unknown),
        0,
        "no faults, no unknown outcome"
    );
    let refused = strict
        .ops
        .iter()
        .filter(|o| o.outcome == Outcome::Fail)
        .filter(|o| {
            o.error
                .as_deref()
                .is_some_and(|e| e.contains("40001") || e.contains("40P01"))
        })
        .count();
    assert!(
        refused > 0,
        "8 clients on 3 keys at serializable: expected serialization failures answered `fail`"
    );
    // Reads come back as lists in the micro-operations.
    assert!(strict.ops.iter().any(|o| {
        o.outcome == Outcome::Ok
            && o.value
                .as_ref()
                .unwrap()
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m[0] == "r" && m[2].as_array().is_some_and(|l| !l.is_empty()))
    }));

    // Read committed: batches on fresh keys until the checker finds an anomaly (bounded).
    let bound = chaos_testkit::scaled(Duration::from_secs(40));
    let start = Instant::now();
    let mut batch = 0;
    loop {
        let weak = contended(
            &server.addr,
            Isolation::ReadCommitted,
            &format!("rc{batch}-"),
            8,
            60,
        );
        let verdict = serializable.check(&weak);
        if verdict.valid == Validity::Invalid {
            assert!(
                ["G-single", "G2-item", "G2", "G1c"]
                    .iter()
                    .any(|name| verdict.explanation.contains(name)),
                "{}",
                verdict.explanation
            );
            // Read committed forbids none of what it found.
            let rc = ListAppend::new(ConsistencyModel::ReadCommitted).check(&weak);
            assert_eq!(rc.valid, Validity::Valid, "{}", rc.explanation);
            return;
        }
        assert_eq!(verdict.valid, Validity::Valid, "{}", verdict.explanation);
        batch += 1;
        assert!(
            start.elapsed() < bound,
            "read committed on {}: no anomaly found in {batch} batches of 480 contended transactions within {bound:?}",
            server.addr
        );
    }
}

/// `scenarios/postgres-txn.toml` with `values.isolation` set to `level`. It ships the built-in
/// adapter, which the runner finds in this build (`target/debug`, next to the test binaries:
/// netns nodes run any linkage).
fn shipped_scenario(level: &str) -> Scenario {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/postgres-txn.toml");
    let mut scenario = Scenario::from_file(&file).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        scenario.setup.ship[0].builtin.as_deref(),
        Some("chaos-adapter-postgres"),
        "the scenario ships the built-in adapter"
    );
    scenario.values.insert("isolation".into(), level.into());
    scenario
}

/// The shipped scenario passes at `serializable` and, with `values.isolation` at
/// `read-committed`, fails naming the anomalies in its summary.
#[test]
fn the_postgres_txn_scenario_passes_at_serializable_and_fails_at_read_committed() {
    let test = "the_postgres_txn_scenario_passes_at_serializable_and_fails_at_read_committed";
    if !common::can_run_postgres(test) {
        return;
    }
    if let Err(why) = chaos::backend::registry::available("netns") {
        chaos_testkit::skip(test, "netns", &why);
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let out = tempfile::tempdir().unwrap();
    let run = |level: &str, seed: u64| {
        rt.block_on(
            Runner::new(shipped_scenario(level))
                .seed(seed)
                .out_dir(out.path())
                .run(),
        )
        .unwrap_or_else(|e| panic!("{level}: {e}"))
    };

    let strict = run("serializable", 1);
    eprintln!(
        "serializable: {:?} in {} ms",
        strict.status, strict.summary.elapsed_ms
    );
    assert_eq!(
        strict.status,
        RunStatus::Passed,
        "serializable: {:?}",
        strict.summary
    );
    // It passed through plenty of transactions, and under faults that cost some: failed or
    // unknown for want of the server, not only refused for a conflict.
    let t = &strict.summary.totals;
    assert!(t.ok > 300, "serializable: only {} ok transactions", t.ok);
    let history = History::read_file(&strict.run_dir.join("history.jsonl")).unwrap();
    let cut_off = history
        .ops
        .iter()
        .filter(|o| o.outcome != Outcome::Ok)
        .filter(|o| {
            o.error
                .as_deref()
                .is_some_and(|e| !e.contains("40001") && !e.contains("40P01"))
        })
        .count();
    assert!(
        cut_off > 0,
        "serializable: the kill and pause cost no transaction: {t:?}"
    );

    let weak = run("read-committed", 1);
    eprintln!(
        "read-committed: {:?} in {} ms: {}",
        weak.status,
        weak.summary.elapsed_ms,
        weak.summary.reason.as_deref().unwrap_or_default()
    );
    assert_eq!(
        weak.status,
        RunStatus::Failed,
        "read-committed: {:?}",
        weak.summary
    );
    let reason = weak.summary.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("list-append") && ["G-single", "G2-item", "G2"].iter().any(|a| reason.contains(a)),
        "read-committed should fail naming the anomalies: {reason}"
    );
}
