//! The generic workload: each operation runs a templated command on the client's node.
//!
//! The command sees `client`, `seq`, `key` (`k0` … `kN-1`) and `value` (unique per operation)
//! besides the usual variables. Exit 0 is `ok`, another exit code `fail`, no exit within the
//! operation timeout (or a lost node) `unknown`. Read kinds take their result from stdout: `read`
//! and `read_counter` and `generate` the trimmed text (JSON when it parses; empty = absent),
//! `read_set` one element per non-empty line.

use std::sync::Arc;

use chaos_check::{Op, OpKind, Outcome};
use rand::RngExt;
use rand::rngs::Xoshiro256PlusPlus;
use serde_json::Value;

use super::{ClientCtx, pace, ticker, weighted};
use chaos::Error;
use chaos::ext::NodeExt;

fn parse_value(text: &str) -> Value {
    let t = text.trim();
    if t.is_empty() {
        return Value::Null;
    }
    serde_json::from_str(t).unwrap_or_else(|_| Value::String(t.to_string()))
}

/// One client's loop.
pub(crate) async fn run_client(ctx: Arc<ClientCtx>, client: u64, mut rng: Xoshiro256PlusPlus) {
    let system = &ctx.system;
    let n = system.nodes.len();
    let node_index = (client as usize) % n;
    let node = system.nodes[node_index].clone();
    let weights: Vec<u32> = ctx.spec.ops.iter().map(|o| o.weight).collect();
    let mut seq = 0u64;
    let mut logical = client;
    let mut ticker = ticker(ctx.period(), client, ctx.spec.concurrency as u64);
    while pace(&mut ticker, &ctx.stop).await {
        let _gate = ctx.gate.read().await;
        if ctx.stop.is_cancelled() {
            break;
        }
        let op_spec = &ctx.spec.ops[weighted(&mut rng, &weights)];
        let key = format!("k{}", rng.random_range(0..ctx.spec.keys));
        seq += 1;
        let value = Value::from(client * 1_000_000_000 + seq);
        let vars = system.vars[node_index].with_op(logical, seq, &key, &value);
        let argv: Result<Vec<String>, String> = op_spec
            .command
            .argv()
            .iter()
            .map(|a| system.templates.render(a, &vars))
            .collect();
        let kind = op_spec.kind.op_kind();
        let id = ctx.recorder.next_id();
        let invoke = ctx.recorder.now_us();
        let (outcome, stdout, error) = match argv {
            Err(e) => (Outcome::Fail, String::new(), Some(format!("bad template: {e}"))),
            Ok(argv) => {
                let mut spec = chaos_proto::ProcSpec::new(argv[0].clone(), argv[1..].to_vec());
                spec.cwd = Some(node.root_dir().to_string());
                match node.run_timeout(spec, None, ctx.op_timeout).await {
                    Ok(out) if out.status.success() => (Outcome::Ok, out.stdout_str(), None),
                    Ok(out) => (
                        Outcome::Fail,
                        String::new(),
                        Some(format!("{}: {}", out.status, out.stderr_str().trim())),
                    ),
                    Err(e @ Error::Timeout { .. }) => (Outcome::Unknown, String::new(), Some(e.to_string())),
                    Err(e) => (Outcome::Unknown, String::new(), Some(e.to_string())),
                }
            }
        };
        let mut op = Op::new(id, logical, kind, invoke, outcome)
            .complete(ctx.recorder.now_us())
            .node(node.name());
        if kind != OpKind::Generate {
            op = op.key(key);
        }
        op.error = error;
        let ok = outcome == Outcome::Ok;
        op = match kind {
            OpKind::Write | OpKind::Add => op.value(value),
            OpKind::Incr => op.value(1),
            OpKind::Read | OpKind::ReadCounter | OpKind::Generate if ok => op.value(parse_value(&stdout)),
            OpKind::ReadSet if ok => op.values(
                stdout
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(parse_value)
                    .collect(),
            ),
            _ => op,
        };
        if outcome == Outcome::Unknown {
            logical += ctx.spec.concurrency as u64;
        }
        ctx.recorder.op(op);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_parse_as_json_or_text() {
        assert_eq!(parse_value(" 42\n"), Value::from(42));
        assert_eq!(parse_value("abc"), Value::from("abc"));
        assert_eq!(parse_value(""), Value::Null);
    }
}
