//! The built-in key-value workload: reads, writes, compare-and-sets and deletes over a small key
//! space, spoken to etcd's v3 HTTP/JSON gateway (etcd 3.4: `POST /v3/kv/range`, `/v3/kv/put`,
//! `/v3/kv/txn`, `/v3/kv/deleterange`; keys and values base64) through each node's TCP proxy.
//!
//! Every value written is unique (`client × 10⁹ + sequence`), so the linearizability checker can
//! tell writes apart. Outcomes follow what the client can know: a reply is `ok` (or `fail` for a
//! compare-and-set whose comparison failed); a request that never left (connection refused) is
//! `fail`; a mutation without a complete reply (timeout, error status, dropped connection) is
//! `unknown`, since etcd may still apply it; a read without a reply is `fail`, since a read
//! changes nothing.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use chaos_check::{Op, OpKind, Outcome};
use hyper::Method;
use rand::RngExt;
use rand::rngs::Xoshiro256PlusPlus;
use serde_json::{Value, json};

use super::super::http::{Connection, HttpError};
use super::{ClientCtx, pace, ticker, weighted};

const DEFAULT_PREFIX: &str = "/chaos/";

/// The client id of the final reads.
pub const FINAL_READS_CLIENT: u64 = u32::MAX as u64;

/// What one request produced.
struct Done {
    outcome: Outcome,
    /// For reads: the value read (`null` = absent).
    read: Option<Value>,
    error: Option<String>,
}

impl Done {
    fn ok(read: Option<Value>) -> Done {
        Done {
            outcome: Outcome::Ok,
            read,
            error: None,
        }
    }
    fn fail(e: impl Into<String>) -> Done {
        Done {
            outcome: Outcome::Fail,
            read: None,
            error: Some(e.into()),
        }
    }
    fn unknown(e: impl Into<String>) -> Done {
        Done {
            outcome: Outcome::Unknown,
            read: None,
            error: Some(e.into()),
        }
    }
}

fn b64(s: &str) -> String {
    B64.encode(s.as_bytes())
}

/// A stored value back into the history's JSON: an integer when it is one.
fn decode_value(encoded: &str) -> Value {
    let raw = B64.decode(encoded).unwrap_or_default();
    let text = String::from_utf8_lossy(&raw).into_owned();
    text.parse::<i64>()
        .map(Value::from)
        .unwrap_or(Value::String(text))
}

fn encode_value(v: &Value) -> String {
    match v {
        Value::String(s) => b64(s),
        other => b64(&other.to_string()),
    }
}

/// The error etcd's gateway put in a non-2xx reply, or the status.
fn error_of(status: u16, body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
        .map(|e| format!("HTTP {status}: {e}"))
        .unwrap_or_else(|| format!("HTTP {status}: {}", String::from_utf8_lossy(body)))
}

/// Sends one gateway request. Mutations map an indeterminate failure to `unknown`.
async fn call(
    conn: &mut Connection,
    path: &str,
    body: Value,
    mutation: bool,
    bound: std::time::Duration,
) -> Result<Value, Done> {
    let reply = conn
        .request(&Method::POST, path, Some(Bytes::from(body.to_string())), bound)
        .await;
    let indeterminate = |e: String| if mutation { Done::unknown(e) } else { Done::fail(e) };
    match reply {
        Err(HttpError::Connect(e)) => Err(Done::fail(e)),
        Err(HttpError::Indeterminate(e)) => Err(indeterminate(e)),
        Ok(r) if r.status == 200 => serde_json::from_slice::<Value>(&r.body)
            .map_err(|e| indeterminate(format!("unreadable reply: {e}"))),
        Ok(r) => Err(indeterminate(error_of(r.status, &r.body))),
    }
}

/// Reads `key`: the value, or `null` when absent.
async fn read(conn: &mut Connection, key: &str, bound: std::time::Duration) -> Done {
    match call(conn, "/v3/kv/range", json!({"key": b64(key)}), false, bound).await {
        Ok(v) => {
            let value = v
                .get("kvs")
                .and_then(|k| k.get(0))
                .and_then(|kv| kv.get("value"))
                .and_then(Value::as_str)
                .map(decode_value)
                // A key with an empty value has no `value` field in proto3 JSON.
                .or_else(|| {
                    v.get("kvs")
                        .and_then(|k| k.get(0))
                        .map(|_| Value::String(String::new()))
                })
                .unwrap_or(Value::Null);
            Done::ok(Some(value))
        }
        Err(done) => done,
    }
}

async fn write(conn: &mut Connection, key: &str, value: &Value, bound: std::time::Duration) -> Done {
    let body = json!({"key": b64(key), "value": encode_value(value)});
    match call(conn, "/v3/kv/put", body, true, bound).await {
        Ok(_) => Done::ok(None),
        Err(done) => done,
    }
}

async fn delete(conn: &mut Connection, key: &str, bound: std::time::Duration) -> Done {
    match call(conn, "/v3/kv/deleterange", json!({"key": b64(key)}), true, bound).await {
        Ok(_) => Done::ok(None),
        Err(done) => done,
    }
}

/// Sets `key` to `value` if it holds `expected` (`null`: if it is absent).
async fn cas(
    conn: &mut Connection,
    key: &str,
    expected: &Value,
    value: &Value,
    bound: std::time::Duration,
) -> Done {
    let compare = if expected.is_null() {
        json!({"key": b64(key), "result": "EQUAL", "target": "CREATE", "create_revision": "0"})
    } else {
        json!({"key": b64(key), "result": "EQUAL", "target": "VALUE", "value": encode_value(expected)})
    };
    let body = json!({
        "compare": [compare],
        "success": [{"request_put": {"key": b64(key), "value": encode_value(value)}}],
    });
    match call(conn, "/v3/kv/txn", body, true, bound).await {
        Ok(v) if v.get("succeeded").and_then(Value::as_bool) == Some(true) => Done::ok(None),
        Ok(_) => Done::fail("compare failed"),
        Err(done) => done,
    }
}

/// One client's loop: pace, pick, send, record.
pub(crate) async fn run_client(ctx: Arc<ClientCtx>, client: u64, mut rng: Xoshiro256PlusPlus) {
    let system = &ctx.system;
    let n = system.nodes.len();
    let node_index = (client as usize) % n;
    let node = system.nodes[node_index].clone();
    let node_name = node.name().to_string();
    let addr = match ctx.spec.addr.as_deref().map(|a| system.render(node_index, a)) {
        Some(Ok(a)) => a,
        Some(Err(e)) => {
            tracing::error!(client, "kv workload: bad addr template: {e}");
            return;
        }
        None => return,
    };
    let prefix = ctx.spec.prefix.clone().unwrap_or_else(|| DEFAULT_PREFIX.into());
    let mix = ctx.spec.mix.unwrap_or_default();
    let weights = [mix.read, mix.write, mix.cas, mix.delete];
    let mut conn = Connection::new(node, addr);
    let mut seen: HashMap<usize, Value> = HashMap::new();
    let mut seq: u64 = 0;
    // After an `unknown` outcome the operation may still be in flight, so the client continues
    // under a new logical id (as Jepsen does): one operation in flight per client id.
    let mut logical = client;
    let mut ticker = ticker(ctx.period(), client, ctx.spec.concurrency as u64);
    while pace(&mut ticker, &ctx.stop).await {
        let _gate = ctx.gate.read().await;
        if ctx.stop.is_cancelled() {
            break;
        }
        let key_index = rng.random_range(0..ctx.spec.keys);
        let key = format!("k{key_index}");
        let full_key = format!("{prefix}{key}");
        let kind = match weighted(&mut rng, &weights) {
            0 => OpKind::Read,
            1 => OpKind::Write,
            2 => OpKind::Cas,
            _ => OpKind::Delete,
        };
        seq += 1;
        let value = Value::from(client * 1_000_000_000 + seq);
        let expected = seen.get(&key_index).cloned().unwrap_or(Value::Null);
        let id = ctx.recorder.next_id();
        let invoke = ctx.recorder.now_us();
        let done = match kind {
            OpKind::Read => read(&mut conn, &full_key, ctx.op_timeout).await,
            OpKind::Write => write(&mut conn, &full_key, &value, ctx.op_timeout).await,
            OpKind::Cas => cas(&mut conn, &full_key, &expected, &value, ctx.op_timeout).await,
            _ => delete(&mut conn, &full_key, ctx.op_timeout).await,
        };
        let complete = ctx.recorder.now_us();
        let mut op = Op::new(id, logical, kind, invoke, done.outcome)
            .key(key)
            .complete(complete)
            .node(node_name.clone());
        op.error = done.error;
        match kind {
            OpKind::Read => {
                if let Some(v) = done.read {
                    seen.insert(key_index, v.clone());
                    op = op.value(v);
                }
            }
            OpKind::Write => {
                if done.outcome == Outcome::Ok {
                    seen.insert(key_index, value.clone());
                }
                op = op.value(value);
            }
            OpKind::Cas => {
                if done.outcome == Outcome::Ok {
                    seen.insert(key_index, value.clone());
                }
                op = op.expected(expected).value(value);
            }
            _ => {
                if done.outcome == Outcome::Ok {
                    seen.insert(key_index, Value::Null);
                }
            }
        }
        if op.outcome == Outcome::Unknown {
            logical += ctx.spec.concurrency as u64;
        }
        ctx.recorder.op(op);
    }
}

/// Reads every key once after the clients stopped, from the first node that answers, so a lost
/// acknowledged write shows in the history.
pub(crate) async fn final_reads(ctx: &ClientCtx) {
    let system = &ctx.system;
    let client = FINAL_READS_CLIENT;
    let prefix = ctx.spec.prefix.clone().unwrap_or_else(|| DEFAULT_PREFIX.into());
    let Some(addr_t) = ctx.spec.addr.as_deref() else {
        return;
    };
    for key_index in 0..ctx.spec.keys {
        let key = format!("k{key_index}");
        let full_key = format!("{prefix}{key}");
        for (i, node) in system.nodes.iter().enumerate() {
            let Ok(addr) = system.render(i, addr_t) else {
                continue;
            };
            let mut conn = Connection::new(node.clone(), addr);
            let id = ctx.recorder.next_id();
            let invoke = ctx.recorder.now_us();
            let done = read(&mut conn, &full_key, ctx.op_timeout).await;
            let mut op = Op::new(id, client, OpKind::Read, invoke, done.outcome)
                .key(key.clone())
                .complete(ctx.recorder.now_us())
                .node(node.name());
            op.error = done.error;
            let ok = done.outcome == Outcome::Ok;
            if let Some(v) = done.read {
                op = op.value(v);
            }
            ctx.recorder.op(op);
            if ok {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Mix;

    #[test]
    fn values_round_trip_through_base64() {
        assert_eq!(decode_value(&encode_value(&Value::from(42))), Value::from(42));
        assert_eq!(
            decode_value(&encode_value(&Value::from("abc"))),
            Value::String("abc".into())
        );
        assert_eq!(
            error_of(503, br#"{"error":"etcdserver: no leader","code":14}"#),
            "HTTP 503: etcdserver: no leader"
        );
    }

    #[test]
    fn default_mix_has_every_kind() {
        let m = Mix::default();
        assert!(m.read > 0 && m.write > 0 && m.cas > 0 && m.delete > 0);
    }
}
