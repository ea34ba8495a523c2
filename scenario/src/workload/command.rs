//! The generic workload: each operation runs a templated command on the client's node.
//!
//! The command sees `client`, `seq`, `key` (`k0` … `kN-1`) and `value` (unique per operation)
//! besides the usual variables. Exit 0 is `ok`; another exit code maps to `fail` or `unknown`
//! through `[workload.exit_codes]` (default `unknown`: a client that gave up cannot say whether its
//! write happened); no exit within the operation timeout, a signal or a lost node is `unknown`.
//! Read kinds take their result from stdout: `read` and `read_counter` and `generate` the
//! trimmed text (JSON when it parses; empty = absent), `read_set` one element per non-empty
//! line. With `final_reads`, every key is read once more at the end with each read kind the
//! workload has.

use std::sync::Arc;

use chaos_check::{OpKind, Outcome};
use rand::RngExt;
use rand::rngs::Xoshiro256PlusPlus;
use serde_json::Value;

use super::{ClientCtx, Done, FINAL_READS_CLIENT, pace, record, ticker, weighted};
use crate::model::{CommandLine, CommandOpKind};
use chaos::ext::NodeExt;

fn parse_value(text: &str) -> Value {
    let t = text.trim();
    if t.is_empty() {
        return Value::Null;
    }
    serde_json::from_str(t).unwrap_or_else(|_| Value::String(t.to_string()))
}

/// What a read kind's stdout says: `read_set` an array of its lines, the others one value.
fn parse_output(kind: OpKind, stdout: &str) -> Value {
    match kind {
        OpKind::ReadSet => Value::Array(
            stdout
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(parse_value)
                .collect(),
        ),
        _ => parse_value(stdout),
    }
}

/// Runs one operation's command on node `node_index`.
async fn perform(
    ctx: &ClientCtx,
    node_index: usize,
    command: &CommandLine,
    kind: OpKind,
    (client, seq, key, value): (u64, u64, &str, &Value),
) -> Done {
    let system = &ctx.system;
    let node = &system.nodes[node_index];
    let vars = system.vars[node_index].with_op(client, seq, key, value);
    let argv: Result<Vec<String>, String> = command
        .argv()
        .iter()
        .map(|a| system.templates.render(a, &vars))
        .collect();
    let argv = match argv {
        Ok(argv) => argv,
        Err(e) => return Done::fail(format!("bad template: {e}")),
    };
    let mut spec = chaos_proto::ProcSpec::new(argv[0].clone(), argv[1..].to_vec());
    spec.cwd = Some(node.root_dir().to_string());
    let codes = ctx.spec.exit_codes.clone().unwrap_or_default();
    match node.run_timeout(spec, None, ctx.op_timeout).await {
        Ok(out) if out.status.success() => Done {
            outcome: Outcome::Ok,
            result: Some(parse_output(kind, &out.stdout_str())),
            error: None,
        },
        Ok(out) => Done {
            outcome: codes.outcome(out.status.code),
            result: None,
            error: Some(format!(
                "`{}`: {}: {}",
                argv.join(" "),
                out.status,
                out.stderr_str().trim()
            )),
        },
        Err(e) => Done::unknown(e.to_string()),
    }
}

/// One client's loop.
pub(crate) async fn run_client(ctx: Arc<ClientCtx>, client: u64, mut rng: Xoshiro256PlusPlus) {
    let n = ctx.system.nodes.len();
    let node_index = (client as usize) % n;
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
        let Some(command) = op_spec.command.as_ref() else {
            continue;
        };
        let key = format!("k{}", rng.random_range(0..ctx.spec.keys));
        seq += 1;
        let value = Value::from(client * 1_000_000_000 + seq);
        let kind = op_spec.kind.op_kind();
        let id = ctx.recorder.next_id();
        let invoke = ctx.recorder.now_us();
        let done = perform(&ctx, node_index, command, kind, (logical, seq, &key, &value)).await;
        let unknown = done.outcome == Outcome::Unknown;
        record(
            &ctx,
            id,
            logical,
            kind,
            invoke,
            node_index,
            &key,
            (value, None),
            done,
        );
        if unknown {
            logical += ctx.spec.concurrency as u64;
        }
    }
}

/// Reads every key once with each read kind the workload has, from the first node whose read
/// succeeds, so a lost acknowledged write shows in the history.
pub(crate) async fn final_reads(ctx: &ClientCtx) {
    let reads: Vec<(CommandOpKind, CommandLine)> = super::read_kinds(&ctx.spec)
        .into_iter()
        .filter_map(|k| {
            let op = ctx.spec.ops.iter().find(|o| o.kind == k)?;
            Some((k, op.command.clone()?))
        })
        .collect();
    for key_index in 0..ctx.spec.keys {
        let key = format!("k{key_index}");
        for (kind, command) in &reads {
            let kind = kind.op_kind();
            for node_index in 0..ctx.system.nodes.len() {
                let id = ctx.recorder.next_id();
                let invoke = ctx.recorder.now_us();
                let args = (FINAL_READS_CLIENT, id, key.as_str(), &Value::Null);
                let done = perform(ctx, node_index, command, kind, args).await;
                let ok = done.outcome == Outcome::Ok;
                record(
                    ctx,
                    id,
                    FINAL_READS_CLIENT,
                    kind,
                    invoke,
                    node_index,
                    &key,
                    (Value::Null, None),
                    done,
                );
                if ok {
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ExitCodes;

    #[test]
    fn outputs_parse_as_json_or_text() {
        assert_eq!(parse_value(" 42\n"), Value::from(42));
        assert_eq!(parse_value("abc"), Value::from("abc"));
        assert_eq!(parse_value(""), Value::Null);
        assert_eq!(
            parse_output(OpKind::ReadSet, "1\n\nx\n"),
            serde_json::json!([1, "x"])
        );
    }

    #[test]
    fn exit_codes_map_to_outcomes() {
        let default = ExitCodes::default();
        assert_eq!(default.outcome(Some(0)), Outcome::Ok);
        assert_eq!(default.outcome(Some(1)), Outcome::Unknown);
        assert_eq!(default.outcome(None), Outcome::Unknown);
        let codes = ExitCodes {
            fail: vec![1],
            unknown: vec![124],
            other: crate::model::NotOk::Fail,
        };
        assert_eq!(codes.outcome(Some(1)), Outcome::Fail);
        assert_eq!(codes.outcome(Some(124)), Outcome::Unknown);
        assert_eq!(codes.outcome(Some(7)), Outcome::Fail);
        assert_eq!(codes.outcome(None), Outcome::Unknown);
    }
}
