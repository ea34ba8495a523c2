//! The adapter workload: each client keeps one long-lived adapter process — on its node through
//! the agent (so it reaches node-local addresses), or on the runner — and sends it one operation
//! at a time as a JSON line ([`AdapterRequest`]), reading the answer ([`AdapterResponse`]) from
//! its stdout. `docs/adapters.md` is the protocol's specification.
//!
//! The runner trusts nothing: an adapter that exits, does not answer within the operation's
//! timeout, or answers something that is not the response to the request (a broken object, a
//! wrong id, a read without its value) makes the operation `unknown`; the adapter is then killed
//! and the client goes on under a new client id with a new adapter (a client whose last
//! operation is unknown may still have it in flight, so it must not issue another under the same
//! id). Lines that do not start with `{` are a chatty client library's, not answers: they are
//! skipped (and logged). An adapter that cannot be started fails the operation (`fail`: nothing
//! was sent).

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chaos_check::{AdapterRequest, AdapterResponse, OpKind, Outcome};
use chaos_proto::{OutputSpec, ProcSpec, Signal, StdinSpec};
use rand::RngExt;
use rand::rngs::Xoshiro256PlusPlus;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

use super::{ClientCtx, Done, FINAL_READS_CLIENT, pace, record, ticker, weighted};
use crate::model::{AdapterPlace, AdapterSpec};
use chaos::cluster::ProcessControl;

/// Lines of an adapter's stderr kept for error messages.
const STDERR_TAIL: usize = 5;

/// Most non-JSON lines skipped while waiting for one answer before the adapter is judged broken.
const MAX_SKIPPED_LINES: usize = 1000;

/// An adapter's stdin.
type Writer = Pin<Box<dyn AsyncWrite + Send>>;

/// An adapter's stdout or stderr.
type Reader = Pin<Box<dyn AsyncRead + Send>>;

/// How a running adapter is stopped.
enum Handle {
    /// Started through the node's agent.
    Node(Arc<dyn ProcessControl>),
    /// A child of the runner.
    Runner(tokio::process::Child),
}

/// One running adapter process.
struct Adapter {
    stdin: Writer,
    stdout: BufReader<Reader>,
    handle: Handle,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    /// `` `argv` on n1 `` for messages.
    shown: String,
}

impl Adapter {
    /// Starts client `client`'s adapter for node `node_index`.
    async fn start(
        ctx: &ClientCtx,
        spec: &AdapterSpec,
        node_index: usize,
        client: u64,
    ) -> Result<Adapter, String> {
        let system = &ctx.system;
        let node = &system.nodes[node_index];
        let mut vars = system.vars[node_index].with_op(client, 0, "", &Value::Null);
        if spec.on == AdapterPlace::Runner {
            // It runs on the runner: `bin` names files there, not on the node.
            vars.bin = system.runner_bin.clone();
        }
        let render = |t: &str| {
            system
                .templates
                .render(t, &vars)
                .map_err(|e| format!("bad template: {e}"))
        };
        let argv = spec
            .command
            .argv()
            .iter()
            .map(|a| render(a))
            .collect::<Result<Vec<_>, _>>()?;
        let env = spec
            .env
            .iter()
            .map(|(k, v)| Ok((k.clone(), render(v)?)))
            .collect::<Result<Vec<_>, String>>()?;
        let place = match spec.on {
            AdapterPlace::Node => format!("on {}", node.name()),
            AdapterPlace::Runner => "on the runner".to_string(),
        };
        let shown = format!("adapter `{}` {place}", argv.join(" "));
        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
        let (stdin, stdout, stderr, handle): (Writer, Reader, Reader, Handle) = match spec.on {
            AdapterPlace::Node => {
                let mut proc_spec = ProcSpec::new(argv[0].clone(), argv[1..].to_vec());
                proc_spec.cwd = Some(node.root_dir().to_string());
                proc_spec.env = env.into_iter().collect();
                proc_spec.stdin = StdinSpec::Pipe;
                proc_spec.stdout = OutputSpec::Pipe;
                proc_spec.stderr = OutputSpec::Pipe;
                let mut process = node
                    .start(proc_spec)
                    .await
                    .map_err(|e| format!("starting the {shown}: {e}"))?;
                let control = process.control();
                match (process.stdin.take(), process.stdout.take(), process.stderr.take()) {
                    (Some(i), Some(o), Some(e)) => (i, o, e, Handle::Node(control)),
                    _ => {
                        let _ = control.signal(Signal::KILL, true).await;
                        return Err(format!("the {shown} started without piped stdio"));
                    }
                }
            }
            AdapterPlace::Runner => {
                let mut child = tokio::process::Command::new(&argv[0])
                    .args(&argv[1..])
                    .envs(env)
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .process_group(0)
                    .kill_on_drop(true)
                    .spawn()
                    .map_err(|e| format!("starting the {shown}: {e}"))?;
                match (child.stdin.take(), child.stdout.take(), child.stderr.take()) {
                    (Some(i), Some(o), Some(e)) => {
                        (Box::pin(i), Box::pin(o), Box::pin(e), Handle::Runner(child))
                    }
                    _ => return Err(format!("the {shown} started without piped stdio")),
                }
            }
        };
        let tail = stderr_tail.clone();
        let who = shown.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::debug!("{who}: {line}");
                if let Ok(mut t) = tail.lock() {
                    if t.len() == STDERR_TAIL {
                        t.pop_front();
                    }
                    t.push_back(line);
                }
            }
        });
        Ok(Adapter {
            stdin,
            stdout: BufReader::new(stdout),
            handle,
            stderr_tail,
            shown,
        })
    }

    /// The last lines of its stderr, for messages (empty when there are none).
    fn stderr_tail(&self) -> String {
        let tail = self
            .stderr_tail
            .lock()
            .map(|t| t.iter().cloned().collect::<Vec<_>>());
        match tail {
            Ok(lines) if !lines.is_empty() => format!("; its stderr ends with: {}", lines.join(" | ")),
            _ => String::new(),
        }
    }

    /// Sends `request` and waits (up to `bound`) for its answer. An error is a protocol failure:
    /// the adapter must be replaced.
    async fn call(&mut self, request: &AdapterRequest, bound: Duration) -> Result<AdapterResponse, String> {
        let mut line = serde_json::to_string(request).map_err(|e| format!("encoding the request: {e}"))?;
        line.push('\n');
        let exchange = async {
            self.stdin
                .write_all(line.as_bytes())
                .await
                .map_err(|e| format!("writing to it: {e}"))?;
            self.stdin
                .flush()
                .await
                .map_err(|e| format!("writing to it: {e}"))?;
            let mut skipped = 0;
            loop {
                let mut answer = String::new();
                let n = self
                    .stdout
                    .read_line(&mut answer)
                    .await
                    .map_err(|e| format!("reading its stdout: {e}"))?;
                if n == 0 {
                    return Err("it exited (its stdout closed) without answering".to_string());
                }
                let text = answer.trim();
                if !text.starts_with('{') {
                    skipped += 1;
                    tracing::debug!("{}: skipping a line that is not an answer: {text}", self.shown);
                    if skipped > MAX_SKIPPED_LINES {
                        return Err(format!("it printed {skipped} lines that are not answers"));
                    }
                    continue;
                }
                let response: AdapterResponse = serde_json::from_str(text)
                    .map_err(|e| format!("it answered a line that is not a response ({e}): {text}"))?;
                if response.id != request.id {
                    return Err(format!(
                        "it answered id {} to request {} (one operation at a time: answer each before reading the next)",
                        response.id, request.id
                    ));
                }
                return Ok(response);
            }
        };
        let result = match tokio::time::timeout(bound, exchange).await {
            Ok(r) => r,
            Err(_) => Err(format!("it did not answer within {bound:?}")),
        };
        result.map_err(|e| format!("the {}: {e}{}", self.shown, self.stderr_tail()))
    }

    /// Closes its stdin (an adapter ends at EOF), gives it a moment, then kills its process group.
    async fn stop(mut self, graceful: bool) {
        let _ = self.stdin.shutdown().await;
        let grace = if graceful {
            Duration::from_millis(500)
        } else {
            Duration::ZERO
        };
        match &mut self.handle {
            Handle::Node(control) => {
                if tokio::time::timeout(grace, control.wait()).await.is_err() {
                    let _ = control.signal(Signal::KILL, true).await;
                    let _ = tokio::time::timeout(Duration::from_secs(5), control.wait()).await;
                }
            }
            Handle::Runner(child) => {
                if tokio::time::timeout(grace, child.wait()).await.is_err() {
                    if let Some(pid) = child.id() {
                        // The adapter runs in its own process group (process_group(0)): its pid
                        // is the group's id, and it is our child, not yet reaped, so the id
                        // cannot have been reused.
                        // SAFETY: kill(2) with a negative pid only sends a signal; no memory is
                        // touched.
                        unsafe {
                            libc::kill(-(pid as i32), libc::SIGKILL);
                        }
                    }
                    let _ = child.kill().await;
                }
            }
        }
    }
}

/// Why an `ok` answer does not fit the request's kind, if it does not.
fn misfit(kind: OpKind, response: &AdapterResponse) -> Option<String> {
    if response.outcome != Outcome::Ok {
        return None;
    }
    let value = response.value.as_ref();
    let need = match kind {
        OpKind::Read | OpKind::Generate if value.is_none() => "a `value` (null when the key is absent)",
        OpKind::ReadSet if !value.is_some_and(Value::is_array) => {
            "a `value` that is an array of the elements"
        }
        OpKind::ReadCounter if !value.is_some_and(|v| v.is_i64() || v.is_u64()) => "an integer `value`",
        OpKind::Txn if !value.is_some_and(Value::is_array) => {
            "a `value` that is the micro-operations with their reads"
        }
        _ => return None,
    };
    Some(format!("an ok `{}` answer needs {need}", kind.as_str()))
}

/// A client's adapter, started on first use and replaced after a protocol failure.
struct Slot {
    node_index: usize,
    adapter: Option<Adapter>,
}

impl Slot {
    /// Performs `request` under client id `client`; on a protocol failure the adapter is stopped
    /// (the caller moves to a new client id).
    async fn perform(
        &mut self,
        ctx: &ClientCtx,
        spec: &AdapterSpec,
        client: u64,
        request: &AdapterRequest,
    ) -> Done {
        if self.adapter.is_none() {
            match Adapter::start(ctx, spec, self.node_index, client).await {
                Ok(a) => self.adapter = Some(a),
                Err(e) => return Done::fail(e),
            }
        }
        let Some(adapter) = self.adapter.as_mut() else {
            return Done::fail("no adapter");
        };
        let problem = match adapter.call(request, ctx.op_timeout).await {
            Ok(response) => match misfit(request.kind, &response) {
                None => {
                    return Done {
                        outcome: response.outcome,
                        result: response.value,
                        error: response.error,
                    };
                }
                Some(why) => format!("the {}: {why}", adapter.shown),
            },
            Err(e) => e,
        };
        if let Some(a) = self.adapter.take() {
            a.stop(false).await;
        }
        Done::unknown(problem)
    }
}

/// One client's loop.
pub(crate) async fn run_client(ctx: Arc<ClientCtx>, client: u64, mut rng: Xoshiro256PlusPlus) {
    let Some(spec) = ctx.spec.adapter.clone() else {
        return;
    };
    let n = ctx.system.nodes.len();
    let mut slot = Slot {
        node_index: (client as usize) % n,
        adapter: None,
    };
    let weights: Vec<u32> = ctx.spec.ops.iter().map(|o| o.weight).collect();
    let mut seq = 0u64;
    let mut logical = client;
    // What this client last read or wrote per register: the `expected` of its next `cas`.
    let mut last_seen: HashMap<String, Value> = HashMap::new();
    let mut ticker = ticker(ctx.period(), client, ctx.spec.concurrency as u64);
    while pace(&mut ticker, &ctx.stop).await {
        let _gate = ctx.gate.read().await;
        if ctx.stop.is_cancelled() {
            break;
        }
        let kind = ctx.spec.ops[weighted(&mut rng, &weights)].kind.op_kind();
        let key = format!("k{}", rng.random_range(0..ctx.spec.keys));
        seq += 1;
        let value = match (kind, &ctx.txn_keys) {
            (OpKind::Txn, Some(keys)) => keys.draw(&mut rng),
            _ => Value::from(client * 1_000_000_000 + seq),
        };
        let id = ctx.recorder.next_id();
        let mut request = request(id, kind, &key, &value);
        if kind == OpKind::Cas {
            request.expected = Some(last_seen.get(&key).cloned().unwrap_or(Value::Null));
        }
        let invoke = ctx.recorder.now_us();
        let done = slot.perform(&ctx, &spec, logical, &request).await;
        let unknown = done.outcome == Outcome::Unknown;
        if done.outcome == Outcome::Ok {
            match (kind, &done.result) {
                (OpKind::Read, Some(v)) => {
                    last_seen.insert(key.clone(), v.clone());
                }
                (OpKind::Write | OpKind::Cas, _) => {
                    last_seen.insert(key.clone(), value.clone());
                }
                (OpKind::Delete, _) => {
                    last_seen.remove(&key);
                }
                _ => {}
            }
        }
        let sent = (value, request.expected.clone());
        record(&ctx, id, logical, kind, invoke, slot.node_index, &key, sent, done);
        if unknown {
            logical += ctx.spec.concurrency as u64;
            if let Some(a) = slot.adapter.take() {
                a.stop(false).await;
            }
        }
    }
    if let Some(a) = slot.adapter.take() {
        a.stop(true).await;
    }
}

/// The request of one generated operation: writes carry `value`, `incr` 1, a `txn` its
/// micro-operations (`value`) and no key, reads nothing.
fn request(id: u64, kind: OpKind, key: &str, value: &Value) -> AdapterRequest {
    let (key, value) = match kind {
        OpKind::Write | OpKind::Add | OpKind::Append | OpKind::Cas => (Some(key), Some(value.clone())),
        OpKind::Incr => (Some(key), Some(Value::from(1))),
        OpKind::Txn => (None, Some(value.clone())),
        OpKind::Generate => (None, None),
        _ => (Some(key), None),
    };
    AdapterRequest {
        id,
        kind,
        key: key.map(str::to_string),
        value,
        expected: None,
    }
}

/// Reads every key once with each read kind the workload has — and, with `txn` operations, every
/// active list in one read-only transaction — through a fresh adapter per node, from the first
/// node whose read succeeds.
pub(crate) async fn final_reads(ctx: &ClientCtx) {
    let Some(spec) = ctx.spec.adapter.clone() else {
        return;
    };
    let kinds = super::read_kinds(&ctx.spec);
    if kinds.is_empty() && ctx.txn_keys.is_none() {
        return;
    }
    let mut slots: Vec<Slot> = (0..ctx.system.nodes.len())
        .map(|node_index| Slot {
            node_index,
            adapter: None,
        })
        .collect();
    let mut client = FINAL_READS_CLIENT;
    let mut reads: Vec<(OpKind, String, Value)> = (0..ctx.spec.keys)
        .flat_map(|key_index| {
            kinds
                .iter()
                .map(move |kind| (kind.op_kind(), format!("k{key_index}"), Value::Null))
        })
        .collect();
    if let Some(keys) = &ctx.txn_keys {
        reads.push((OpKind::Txn, String::new(), keys.read_all()));
    }
    for (kind, key, value) in reads {
        for slot in &mut slots {
            let id = ctx.recorder.next_id();
            let request = request(id, kind, &key, &value);
            let invoke = ctx.recorder.now_us();
            let done = slot.perform(ctx, &spec, client, &request).await;
            let outcome = done.outcome;
            record(
                ctx,
                id,
                client,
                kind,
                invoke,
                slot.node_index,
                &key,
                (value.clone(), None),
                done,
            );
            if outcome == Outcome::Unknown {
                client += 1;
            }
            if outcome == Outcome::Ok {
                break;
            }
        }
    }
    for slot in slots {
        if let Some(a) = slot.adapter {
            a.stop(true).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_that_do_not_fit_their_kind_are_named() {
        let ok = |value: Option<Value>| AdapterResponse::ok(1, value);
        assert!(misfit(OpKind::Write, &ok(None)).is_none());
        assert!(misfit(OpKind::Read, &ok(Some(Value::Null))).is_none());
        assert!(misfit(OpKind::Read, &ok(None)).unwrap().contains("`read`"));
        assert!(
            misfit(OpKind::ReadSet, &ok(Some(Value::from(3))))
                .unwrap()
                .contains("array")
        );
        assert!(
            misfit(OpKind::ReadCounter, &ok(Some(Value::from("3"))))
                .unwrap()
                .contains("integer")
        );
        assert!(misfit(OpKind::Read, &AdapterResponse::fail(1, "no")).is_none());
    }

    #[test]
    fn requests_carry_what_their_kind_needs() {
        let w = request(1, OpKind::Write, "k1", &Value::from(5));
        assert_eq!(
            serde_json::to_string(&w).unwrap(),
            r#"{"id":1,"kind":"write","key":"k1","value":5}"#
        );
        let r = request(2, OpKind::Read, "k1", &Value::from(5));
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"id":2,"kind":"read","key":"k1"}"#
        );
        let i = request(3, OpKind::Incr, "k1", &Value::from(5));
        assert_eq!(i.value, Some(Value::from(1)));
        let mops = serde_json::json!([["append", "k2", 1], ["r", "k3", null]]);
        let t = request(5, OpKind::Txn, "k1", &mops);
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            r#"{"id":5,"kind":"txn","value":[["append","k2",1],["r","k3",null]]}"#
        );
        let g = request(4, OpKind::Generate, "k1", &Value::Null);
        assert_eq!(
            serde_json::to_string(&g).unwrap(),
            r#"{"id":4,"kind":"generate"}"#
        );
    }
}
