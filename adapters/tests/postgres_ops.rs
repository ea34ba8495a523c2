//! The PostgreSQL adapter against a real PostgreSQL 15, beyond the workload test of
//! `workload.rs`: `append` on registers (its semantics, and concurrent appends judged
//! linearizable), and the connect bound — a server behind a partition that drops SYNs costs the
//! timeout, and `--hosts` discovery moves past it to the primary (in a network namespace of the
//! test's own, with an nftables drop rule inside it; both vanish with the process).

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chaos_adapters::pg::{Isolation, PgAdapter, PgConnection};
use chaos_adapters::pg_failover::{FailoverPg, Login};
use chaos_check::{
    AdapterRequest, AdapterResponse, Checker, Header, History, Linearizability, Op, OpKind, Outcome, Validity,
};
use serde_json::{Value, json};

fn adapter(addr: &str) -> PgAdapter {
    PgAdapter::new(
        addr.to_string(),
        "postgres".into(),
        "postgres".into(),
        None,
        chaos_testkit::scaled(Duration::from_secs(5)),
    )
}

fn request(id: u64, kind: OpKind, key: &str, value: Option<Value>) -> AdapterRequest {
    AdapterRequest {
        id,
        kind,
        key: Some(key.to_string()),
        value,
        expected: None,
    }
}

/// Asks `a` and insists on `outcome`; returns the response.
fn expect(a: &mut PgAdapter, req: AdapterRequest, outcome: Outcome) -> AdapterResponse {
    let what = format!("{} {:?} {:?}", req.kind.as_str(), req.key, req.value);
    let r = a.apply(req);
    assert_eq!(r.outcome, outcome, "{what}: {r:?}");
    r
}

fn read(a: &mut PgAdapter, key: &str) -> Value {
    let r = expect(a, request(0, OpKind::Read, key, None), Outcome::Ok);
    r.value.unwrap_or(Value::Null)
}

/// `append` as docs/history.md defines it (porcupine's key-value model, extended to lists),
/// then concurrent appends, reads and writes from four clients judged by the linearizability
/// checker — which also rejects the same history with one read falsified, so the check has
/// teeth.
#[test]
fn append_on_registers_concatenates_and_is_linearizable() {
    if !common::can_run_postgres("append_on_registers_concatenates_and_is_linearizable") {
        return;
    }
    let server = common::Server::start();
    let mut a = adapter(&server.addr);
    let append = |a: &mut PgAdapter, key: &str, v: Value, outcome| {
        expect(a, request(1, OpKind::Append, key, Some(v)), outcome)
    };

    // Strings concatenate, from absent; escapes and non-ASCII survive.
    append(&mut a, "s", json!("ab"), Outcome::Ok);
    append(&mut a, "s", json!("c\"d\\"), Outcome::Ok);
    append(&mut a, "s", json!("\né"), Outcome::Ok);
    assert_eq!(read(&mut a, "s"), json!("abc\"d\\\né"));
    // A non-string onto a string is refused and changes nothing.
    let r = append(&mut a, "s", json!(3), Outcome::Fail);
    assert!(
        r.error.as_deref().unwrap().contains("cannot be appended"),
        "{r:?}"
    );
    assert_eq!(read(&mut a, "s"), json!("abc\"d\\\né"));

    // Anything else starts a list; then every element (a string too) is the last.
    append(&mut a, "l", json!(1), Outcome::Ok);
    append(&mut a, "l", json!("x"), Outcome::Ok);
    append(&mut a, "l", json!({"b": [2, 3], "a": null}), Outcome::Ok);
    let list = json!([1, "x", {"a": null, "b": [2, 3]}]);
    assert_eq!(read(&mut a, "l"), list);
    // The stored text is what a write of that list stores: `cas` (which compares the text)
    // matches it.
    let mut cas = request(2, OpKind::Cas, "l", Some(json!("swapped")));
    cas.expected = Some(list);
    expect(&mut a, cas, Outcome::Ok);
    assert_eq!(read(&mut a, "l"), json!("swapped"));

    // Empty values and written ones: "" and [] extend, numbers and objects refuse.
    for (written, element, outcome, after) in [
        (json!(""), json!("q"), Outcome::Ok, json!("q")),
        (json!([]), json!(7), Outcome::Ok, json!([7])),
        (json!([]), json!("q"), Outcome::Ok, json!(["q"])),
        (json!(["a"]), json!(["b"]), Outcome::Ok, json!(["a", ["b"]])),
        (json!(5), json!("z"), Outcome::Fail, json!(5)),
        (json!({"a": 1}), json!(2), Outcome::Fail, json!({"a": 1})),
        (json!("s"), json!(true), Outcome::Fail, json!("s")),
    ] {
        expect(
            &mut a,
            request(3, OpKind::Write, "w", Some(written.clone())),
            Outcome::Ok,
        );
        append(&mut a, "w", element.clone(), outcome);
        assert_eq!(read(&mut a, "w"), after, "{written} then append {element}");
    }
    // Deleted is absent again.
    expect(&mut a, request(4, OpKind::Delete, "w", None), Outcome::Ok);
    append(&mut a, "w", json!("new"), Outcome::Ok);
    assert_eq!(read(&mut a, "w"), json!("new"));
    let r = expect(&mut a, request(5, OpKind::Append, "w", None), Outcome::Fail);
    assert!(r.error.as_deref().unwrap().contains("needs a value"), "{r:?}");

    // Four clients on two keys: unique strings appended, reads, now and then a write.
    let history = concurrent_appends(&server.addr, 4, 60);
    let verdict = Linearizability::default().check(&history);
    assert_eq!(verdict.valid, Validity::Valid, "{}", verdict.explanation);
    let long_read = history.ops.iter().any(|o| {
        o.kind == OpKind::Read
            && o.outcome == Outcome::Ok
            && o.value
                .as_ref()
                .and_then(Value::as_str)
                .is_some_and(|s| s.matches(';').count() >= 3)
    });
    assert!(long_read, "no read saw three appends in a row");

    // The first read that saw an append, falsified: found early in the search (a late one
    // makes the checker exhaust every order before it, tens of seconds).
    let mut falsified = history.clone();
    let Some(op) = falsified.ops.iter_mut().find(|o| {
        o.kind == OpKind::Read
            && o.outcome == Outcome::Ok
            && o.value
                .as_ref()
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty())
    }) else {
        panic!("no ok read")
    };
    op.value = Some(json!("never appended;"));
    let verdict = Linearizability::default().check(&falsified);
    assert_eq!(verdict.valid, Validity::Invalid, "{}", verdict.explanation);
}

/// `clients` threads of `per_client` operations on keys `c0`, `c1`: 70 % `append` of a string
/// unique to the run ending in `;`, 25 % `read`, 5 % `write` of such a string.
fn concurrent_appends(addr: &str, clients: u64, per_client: u64) -> History {
    let epoch = Instant::now();
    let next = Arc::new(AtomicU64::new(1));
    let threads: Vec<_> = (0..clients)
        .map(|client| {
            let (addr, next) = (addr.to_string(), next.clone());
            std::thread::spawn(move || {
                let mut a = adapter(&addr).with_isolation(Isolation::default());
                let mut state = (client + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                let mut draw = |n: u64| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state % n
                };
                let mut ops = Vec::new();
                let mut logical = client;
                for _ in 0..per_client {
                    let id = next.fetch_add(1, Ordering::Relaxed);
                    let key = format!("c{}", draw(2));
                    let roll = draw(100);
                    let (kind, value) = match roll {
                        0..70 => (OpKind::Append, Some(json!(format!("{client}.{id};")))),
                        70..95 => (OpKind::Read, None),
                        _ => (OpKind::Write, Some(json!(format!("w{client}.{id};")))),
                    };
                    let invoke = epoch.elapsed().as_micros() as u64;
                    let r = a.apply(request(id, kind, &key, value.clone()));
                    let complete = epoch.elapsed().as_micros() as u64;
                    let mut op = Op::new(id, logical, kind, invoke, r.outcome).key(key);
                    if r.outcome == Outcome::Ok {
                        op = op.complete(complete);
                    }
                    match (kind, r.outcome) {
                        (OpKind::Read, Outcome::Ok) => op = op.value(r.value.unwrap_or(Value::Null)),
                        (OpKind::Read, _) => {}
                        _ => op = op.value(value.unwrap_or(Value::Null)),
                    }
                    op.error = r.error;
                    if r.outcome == Outcome::Unknown {
                        // Its process stays open: the next operation is another logical client.
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
    history.ops.sort_by_key(|o| o.invoke_us);
    history
}

/// The variable that tells this test's binary, run again inside the namespace, to do the inner
/// half.
const INNER: &str = "CHAOS_TEST_PG_BLACKHOLE_INNER";

/// The port whose SYNs the namespace drops (PostgreSQL's usual one: a server behind a
/// partition).
const BLACKHOLED: &str = "127.0.0.1:5432";

/// A connect to a host whose SYNs are dropped gives up after the timeout with an error naming
/// the host, the phase and the bound; `--hosts` discovery with that host first moves on and
/// finds the primary on the next; with it alone, the operation fails naming it. Runs this test
/// again under `unshare --net` (a namespace that ends with the process), where the inner half
/// sets up loopback, the drop rule and a PostgreSQL.
#[test]
fn a_blackholed_host_costs_the_connect_bound_and_discovery_moves_on() {
    let test = "a_blackholed_host_costs_the_connect_bound_and_discovery_moves_on";
    if std::env::var_os(INNER).is_some() {
        return blackholed_inner();
    }
    if !common::can_run_postgres(test) {
        return;
    }
    for program in ["unshare", "nft", "ip"] {
        if Command::new(program).arg("--version").output().is_err() {
            chaos_testkit::skip(
                test,
                "root",
                &format!("`{program}` is missing (util-linux, nftables, iproute2)"),
            );
            return;
        }
    }
    let mut child = Command::new("unshare")
        .args(["--net", "--"])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(INNER, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let bound = chaos_testkit::scaled(Duration::from_secs(120));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > bound {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the inner half (in its network namespace) did not end within {bound:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    assert!(status.success(), "inner half: {status}\n{out}\n{err}");
    // Ran, rather than filtered out by a name that no longer matches.
    assert!(out.contains("1 passed"), "inner half ran no test:\n{out}\n{err}");
}

fn run(program: &str, args: &[&str], stdin: &str) {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    use std::io::Write;
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Inside the namespace: loopback up, SYNs to [`BLACKHOLED`] dropped, a PostgreSQL on another
/// port.
fn blackholed_inner() {
    run("ip", &["link", "set", "lo", "up"], "");
    run(
        "nft",
        &["-f", "-"],
        "table inet chaos_blackhole {\n  chain input {\n    type filter hook input priority 0;\n    \
         tcp dport 5432 drop;\n  }\n}\n",
    );
    let server = common::Server::start();
    let bound = chaos_testkit::scaled(Duration::from_secs(1));

    let start = Instant::now();
    let e = match PgConnection::connect(BLACKHOLED, "postgres", "postgres", None, bound) {
        Ok(_) => panic!("{BLACKHOLED} is blackholed, yet the connect succeeded"),
        Err(e) => e,
    };
    let took = start.elapsed();
    eprintln!("connect to the blackholed {BLACKHOLED}: {e} after {took:?}");
    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
    let text = e.to_string();
    assert!(
        text.contains(BLACKHOLED) && text.contains("TCP connect") && text.contains(&format!("{bound:?}")),
        "{text}"
    );
    // It waited for the bound (the drop rule held), rather than being refused.
    assert!(
        took >= bound,
        "gave up after {took:?}, before the {bound:?} bound"
    );

    // The same bound covers the real server's startup exchange: roomier, for a busy machine.
    let bound = chaos_testkit::scaled(Duration::from_secs(2));
    let login = Login {
        user: "postgres".into(),
        database: "postgres".into(),
        password: None,
        timeout: bound,
        isolation: Isolation::default(),
    };
    let mut pg = FailoverPg::new(vec![BLACKHOLED.to_string(), server.addr.clone()], login.clone());
    let r = pg.apply(request(1, OpKind::Append, "x", Some(json!("a"))));
    assert_eq!(r.outcome, Outcome::Ok, "{r:?}");
    assert_eq!(pg.primary(), Some(server.addr.as_str()));

    let mut alone = FailoverPg::new(vec![BLACKHOLED.to_string()], login);
    let r = alone.apply(request(2, OpKind::Write, "x", Some(json!("b"))));
    assert_eq!(r.outcome, Outcome::Fail, "{r:?}");
    let error = r.error.unwrap_or_default();
    assert!(
        error.contains("no primary") && error.contains(BLACKHOLED) && error.contains(&format!("{bound:?}")),
        "{error}"
    );
}
