//! The adapter (and command) workloads end to end, on the local backend (real agents, real processes): every
//! outcome an adapter can give, a crashed, a silent and a chatty adapter, garbage answers, final
//! reads — and a deliberately buggy store whose lost acknowledged writes fail the run by name.

mod common;

use std::path::Path;

use common::free_port;

use chaos_check::{History, Op, OpKind, Outcome};
use chaos_scenario::{RunOutcome, Runner, Scenario};

const ECHO: &str = env!("CARGO_BIN_EXE_chaos-adapter-echo");

fn run(text: &str, out: &Path) -> RunOutcome {
    let scenario = Scenario::parse(text, "adapter-test.toml").unwrap_or_else(|e| panic!("{e}"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(Runner::new(scenario).seed(3).out_dir(out).run())
        .unwrap_or_else(|e| panic!("run: {e}"))
}

fn ops(run_dir: &Path) -> Vec<Op> {
    let text = std::fs::read_to_string(run_dir.join("history.jsonl")).unwrap();
    let history = History::parse(&text, "history.jsonl").unwrap_or_else(|e| panic!("{e}"));
    history.ops
}

fn on_key<'a>(ops: &'a [Op], key: &str) -> Vec<&'a Op> {
    ops.iter().filter(|o| o.key.as_deref() == Some(key)).collect()
}

#[test]
fn every_outcome_crash_silence_and_garbage_through_the_protocol() {
    let dir = tempfile::tempdir().unwrap();
    // The adapter runs on the runner, named as the built-in `bin['chaos-adapter-echo']`: a path
    // on the runner, found without a `[[setup.ship]]`.
    // One node, one client at a time per adapter; the test keys k1 … k6 misbehave (see
    // chaos_adapters::echo::test_key), k0 is a plain register.
    let text = r#"
[cluster]
backend = "local"
nodes = 1
[setup.start]
command = ["sh", "-c", "sleep 600; : {{ run_id }}"]
[workload]
type = "adapter"
rate = 80
concurrency = 2
keys = 7
timeout = "400ms"
[workload.adapter]
command = ["{{ bin['chaos-adapter-echo'] }}", "--test-keys"]
on = "runner"
[[workload.ops]]
kind = "write"
[[workload.ops]]
kind = "read"
[[faults]]
name = "pause"
kind = "pause"
target = "one"
duration = "3s"
[history]
checkers = ["availability"]
max_error_fraction = 1.0
"#;
    let outcome = run(text, dir.path());
    let ops = ops(&outcome.run_dir);
    let has = |key: &str, outcome: Outcome, needle: &str| {
        let found = on_key(&ops, key)
            .iter()
            .any(|o| o.outcome == outcome && o.error.as_deref().unwrap_or("").contains(needle));
        assert!(
            found,
            "{key}: no {outcome:?} op with {needle:?}: {:#?}",
            on_key(&ops, key)
        );
    };
    has("k1", Outcome::Fail, "refused, as asked");
    has("k2", Outcome::Unknown, "no idea, as asked");
    has("k3", Outcome::Unknown, "exited");
    has("k4", Outcome::Unknown, "did not answer within");
    has("k6", Outcome::Unknown, "not a response");
    // A chatty adapter's non-JSON lines are skipped: its answers still count.
    assert!(on_key(&ops, "k5").iter().any(|o| o.outcome == Outcome::Ok), "k5");
    // Every op on k0 succeeds, reads return what the client's own store holds.
    assert!(on_key(&ops, "k0").iter().all(|o| o.outcome == Outcome::Ok), "k0");
    // After an unknown operation the client goes on under a new id (client + concurrency).
    assert!(
        ops.iter().any(|o| o.client >= 2 && o.client < u32::MAX as u64),
        "no new client ids"
    );
    // Final reads: every key read once more at the end, by the final-reads client.
    let finals: Vec<&Op> = ops.iter().filter(|o| o.client >= u32::MAX as u64).collect();
    assert!(
        finals
            .iter()
            .any(|o| o.kind == OpKind::Read && o.key.as_deref() == Some("k0")),
        "{finals:#?}"
    );
    assert!(outcome.summary.totals.ok > 20, "{:?}", outcome.summary.totals);
}

#[test]
fn a_store_that_drops_acknowledged_writes_fails_the_run_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // The store is the system under test (one node); each client's adapter runs on the node
    // and forwards to it. The store acknowledges every 7th add and drops it.
    let text = format!(
        r#"
[cluster]
backend = "local"
nodes = 1
[setup.start]
command = ["{ECHO}", "--serve", "127.0.0.1:{port}", "--lose-every", "7"]
[[setup.ready]]
name = "store listens"
command = ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/{port}"]
timeout = "10s"
[workload]
type = "adapter"
rate = 100
concurrency = 3
keys = 2
[workload.adapter]
command = ["{ECHO}", "--connect", "127.0.0.1:{port}"]
[[workload.ops]]
kind = "add"
weight = 3
[[workload.ops]]
kind = "read_set"
[[faults]]
name = "pause"
kind = "pause"
target = "one"
duration = "1s"
[history]
checkers = ["set"]
"#
    );
    let outcome = run(&text, dir.path());
    assert!(!outcome.passed(), "{:?}", outcome.summary);
    let reason = outcome.summary.reason.clone().unwrap_or_default();
    assert!(reason.contains("set"), "{reason}");
    let verdicts = std::fs::read_to_string(outcome.run_dir.join("summary.json")).unwrap();
    let summary: serde_json::Value = serde_json::from_str(&verdicts).unwrap();
    let set = summary["history"]["checkers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["checker"] == "set")
        .cloned()
        .unwrap();
    assert_eq!(set["valid"], "invalid", "{set:#}");
    // The lost elements are named: each is a value some acknowledged add wrote.
    let ops = ops(&outcome.run_dir);
    let text = set.to_string();
    let lost: Vec<&Op> = ops
        .iter()
        .filter(|o| o.kind == OpKind::Add && o.outcome == Outcome::Ok)
        .filter(|o| text.contains(&o.value.as_ref().unwrap().to_string()))
        .collect();
    assert!(!lost.is_empty(), "no lost add named in {set:#}");
}

/// The Redis adapter against a real `redis-server` (the system under test, one node): registers
/// and sets under pauses of the server, judged linearizable and lossless.
#[test]
fn the_redis_adapter_passes_against_a_real_redis() {
    let test = "the_redis_adapter_passes_against_a_real_redis";
    if let Err(why) = which("redis-server") {
        chaos_testkit::skip(test, "redis", &why);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let redis = env!("CARGO_BIN_EXE_chaos-adapter-redis");
    let text = format!(
        r#"
[cluster]
backend = "local"
nodes = 1
[setup.start]
command = ["redis-server", "--port", "{port}", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", "{{{{ node.root }}}}"]
[[setup.ready]]
name = "redis answers"
command = ["redis-cli", "-p", "{port}", "ping"]
regex = "PONG"
timeout = "10s"
[workload]
type = "adapter"
rate = 200
concurrency = 4
keys = 3
timeout = "1s"
[workload.adapter]
command = ["{redis}", "--addr", "127.0.0.1:{port}", "--timeout-ms", "500"]
[[workload.ops]]
kind = "write"
[[workload.ops]]
kind = "cas"
[[workload.ops]]
kind = "read"
[[workload.ops]]
kind = "add"
[[workload.ops]]
kind = "read_set"
[[faults]]
name = "pause-redis"
kind = "pause"
target = "one"
duration = "1s"
[history]
checkers = ["linearizability", "set"]
"#
    );
    let outcome = run(&text, dir.path());
    assert!(outcome.passed(), "{:?}", outcome.summary);
    let ops = ops(&outcome.run_dir);
    // The pause made some operations time out: writes unknown, reads failed.
    assert!(ops.iter().any(|o| o.outcome == Outcome::Unknown), "no unknown op");
    assert!(ops.iter().filter(|o| o.outcome == Outcome::Ok).count() > 100);
    assert!(
        ops.iter()
            .any(|o| o.kind == OpKind::Cas && o.outcome == Outcome::Ok),
        "no cas succeeded"
    );
    assert!(ops.iter().any(|o| o.kind == OpKind::ReadSet
        && o.outcome == Outcome::Ok
        && !o.values.as_ref().unwrap().is_empty()));
}

fn which(program: &str) -> Result<std::path::PathBuf, String> {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(program))
                .find(|f| f.is_file())
        })
        .ok_or_else(|| format!("`{program}` is not on PATH (apt-get install redis-server)"))
}

/// The `command` workload beside the adapter one: exit codes map to outcomes through
/// `[workload.exit_codes]`, errors show the rendered command, and every key is read at the end.
#[test]
fn command_exit_codes_map_to_outcomes_and_final_reads_cover_every_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir(&store).unwrap();
    let store = store.display();
    // Values end in the operation's sequence number: …3 exits 75 (unknown), …7 exits 1 (fail),
    // …9 exits 4 (other: fail here).
    let text = format!(
        r#"
[cluster]
backend = "local"
nodes = 1
[setup.start]
command = ["sh", "-c", "sleep 600; : {{{{ run_id }}}}"]
[workload]
type = "command"
rate = 60
concurrency = 2
keys = 3
[workload.exit_codes]
fail = [1]
unknown = [75]
other = "fail"
[[workload.ops]]
kind = "add"
weight = 2
command = "case {{{{ value }}}} in *3) exit 75;; *7) exit 1;; *9) exit 4;; esac; echo {{{{ value }}}} >> {store}/{{{{ key }}}}"
[[workload.ops]]
kind = "read_set"
command = "cat {store}/{{{{ key }}}} 2>/dev/null || true"
[[faults]]
name = "pause"
kind = "pause"
target = "one"
duration = "2s"
[history]
checkers = ["set"]
"#
    );
    let outcome = run(&text, dir.path());
    assert!(outcome.passed(), "{:?}", outcome.summary);
    let ops = ops(&outcome.run_dir);
    let adds = |outcome: Outcome, code: &str| {
        ops.iter()
            .filter(|o| o.kind == OpKind::Add && o.outcome == outcome)
            .filter(|o| o.error.as_deref().unwrap_or("").contains(code))
            .count()
    };
    assert!(adds(Outcome::Unknown, "exit code 75") > 0, "75 → unknown");
    assert!(adds(Outcome::Fail, "exit code 1:") > 0, "1 → fail");
    assert!(adds(Outcome::Fail, "exit code 4") > 0, "other → fail");
    // The error shows the command as run, not its template.
    let error = ops.iter().find_map(|o| o.error.clone()).unwrap();
    assert!(error.contains("case ") && !error.contains("{{"), "{error}");
    // Final reads: one read_set of every key by the final-reads client.
    for key in ["k0", "k1", "k2"] {
        assert!(
            ops.iter().any(|o| o.client == u32::MAX as u64
                && o.kind == OpKind::ReadSet
                && o.key.as_deref() == Some(key)),
            "no final read of {key}"
        );
    }
}

/// The Python example of `docs/adapters.md` works as written, its store a directory shared by
/// all its processes.
#[test]
fn the_python_example_adapter_passes() {
    let test = "the_python_example_adapter_passes";
    if let Err(why) = which("python3") {
        chaos_testkit::skip(test, "python", &why);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/adapters/toy_adapter.py");
    let text = format!(
        r#"
[cluster]
backend = "local"
nodes = 1
[setup.start]
command = ["sh", "-c", "sleep 600; : {{{{ run_id }}}}"]
[workload]
type = "adapter"
rate = 100
concurrency = 3
keys = 2
[workload.adapter]
command = ["python3", "{example}"]
env = {{ TOY_STORE = "{{{{ node.root }}}}" }}
[[workload.ops]]
kind = "add"
[[workload.ops]]
kind = "read_set"
[[workload.ops]]
kind = "write"
[[workload.ops]]
kind = "read"
[[faults]]
name = "pause"
kind = "pause"
target = "one"
duration = "1s"
[history]
checkers = ["set", "linearizability"]
"#
    );
    let outcome = run(&text, dir.path());
    assert!(outcome.passed(), "{:?}", outcome.summary);
    assert!(outcome.summary.totals.ok > 50, "{:?}", outcome.summary.totals);
}

/// The scenario `docs/guide.md` builds, taken from its TOML blocks, runs as the guide says: it
/// fails with the lost adds named, and passes once the store stops dropping writes. (Run on the
/// local backend here, with a free port and this build's echo binary.)
#[test]
fn the_guides_toy_store_fails_as_the_guide_says_and_passes_when_fixed() {
    let guide = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/guide.md")).unwrap();
    let mut text = String::new();
    let mut rest = guide.as_str();
    while let Some(start) = rest.find("```toml\n") {
        let body = &rest[start + 8..];
        let end = body.find("```").unwrap();
        text.push_str(&body[..end]);
        text.push('\n');
        rest = &body[end..][3..];
    }
    let port = free_port().to_string();
    let text = text
        .replace("backend = \"netns\"", "backend = \"local\"")
        .replace("port = 7400", &format!("port = {port}"));
    assert!(text.contains("--lose-every"), "{text}");
    assert!(text.contains("builtin = \"chaos-adapter-echo\""), "{text}");
    let dir = tempfile::tempdir().unwrap();
    let failing = run(&text, dir.path());
    assert!(!failing.passed());
    // The built-in adapter was found, not built: this build's, beside the test binaries (the
    // local backend takes any linkage), shipped to the node under its own name.
    let events = std::fs::read_to_string(failing.run_dir.join("events.jsonl")).unwrap();
    let shipped = events
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|e| e["event"] == "shipped")
        .unwrap_or_else(|| panic!("nothing shipped: {events}"));
    assert!(
        shipped["from"].as_str().unwrap().ends_with("/chaos-adapter-echo"),
        "{shipped}"
    );
    assert!(
        shipped["to"]
            .as_str()
            .unwrap()
            .ends_with("/bin/chaos-adapter-echo"),
        "{shipped}"
    );
    let reason = failing.summary.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("set:") && reason.contains("acknowledged adds are missing"),
        "{reason}"
    );
    let fixed = run(&text.replace(", \"--lose-every\", \"7\"", ""), dir.path());
    assert!(fixed.passed(), "{:?}", fixed.summary);
}

/// The PostgreSQL adapter against a real PostgreSQL 15 (one node, fsync off): registers, sets
/// and counters under pauses of the server, judged linearizable and lossless.
#[test]
fn the_postgres_adapter_passes_against_a_real_postgres() {
    if !common::can_run_postgres("the_postgres_adapter_passes_against_a_real_postgres") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = common::initdb(dir.path());
    let port = free_port();
    let start = common::server_argv(&data, port)
        .iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let adapter = env!("CARGO_BIN_EXE_chaos-adapter-postgres");
    let text = format!(
        r#"
[cluster]
backend = "local"
nodes = 1
[setup.start]
command = [{start}]
[[setup.ready]]
name = "postgres accepts connections"
log = true
regex = "ready to accept connections"
timeout = "30s"
[workload]
type = "adapter"
rate = 150
concurrency = 4
keys = 3
timeout = "2s"
[workload.adapter]
command = ["{adapter}", "--addr", "127.0.0.1:{port}", "--timeout-ms", "1000"]
[[workload.ops]]
kind = "write"
[[workload.ops]]
kind = "cas"
[[workload.ops]]
kind = "read"
[[workload.ops]]
kind = "add"
[[workload.ops]]
kind = "read_set"
[[workload.ops]]
kind = "incr"
[[workload.ops]]
kind = "read_counter"
[[faults]]
name = "pause-postgres"
kind = "pause"
target = "one"
duration = "1500ms"
[history]
checkers = ["linearizability", "set", "counter"]
"#
    );
    let outcome = run(&text, dir.path());
    assert!(outcome.passed(), "{:?}", outcome.summary);
    let ops = ops(&outcome.run_dir);
    assert!(ops.iter().filter(|o| o.outcome == Outcome::Ok).count() > 100);
    assert!(
        ops.iter()
            .any(|o| o.kind == OpKind::Cas && o.outcome == Outcome::Ok),
        "no cas succeeded"
    );
    assert!(ops.iter().any(|o| o.kind == OpKind::ReadCounter
        && o.outcome == Outcome::Ok
        && o.value.as_ref().unwrap().as_i64().unwrap() > 0));
    assert!(ops.iter().any(|o| o.kind == OpKind::ReadSet
        && o.outcome == Outcome::Ok
        && !o.values.as_ref().unwrap().is_empty()));
}
