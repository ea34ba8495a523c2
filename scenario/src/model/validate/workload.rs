//! Validation of `[workload]`: its type's required tables, the operation mix, templates and
//! exit codes (the largest section, hence a file of its own).

#[allow(unused_imports)]
use super::*;

impl Scenario {
    /// Checks `[workload]`.
    pub(super) fn check_workload(&self, p: &mut Problems, tm: &Tmpl) {
        // workload
        if let Some(w) = &self.workload {
            let path = [key("workload")];
            if !(w.rate.is_finite() && w.rate > 0.0) {
                p.add(
                    &[key("workload"), key("rate")],
                    "must be a positive number of operations per second",
                );
            }
            if w.concurrency == 0 {
                p.add(&[key("workload"), key("concurrency")], "must be at least 1");
            }
            if w.keys == 0 {
                p.add(&[key("workload"), key("keys")], "must be at least 1");
            }
            match w.kind {
                WorkloadType::Kv => {
                    match &w.addr {
                        Some(a) => tm.call(p, &[key("workload"), key("addr")], a, false),
                        None => p.add(
                            &path,
                            "the kv workload needs `addr`, the etcd client address as seen from a node, e.g. \"127.0.0.1:2379\"",
                        ),
                    }
                    if let Some(m) = &w.mix
                        && m.read + m.write + m.cas + m.delete == 0
                    {
                        p.add(
                            &[key("workload"), key("mix")],
                            "every weight is 0: give at least one a weight",
                        );
                    }
                    if !w.ops.is_empty() {
                        p.add(
                            &[key("workload"), key("ops")],
                            "`ops` belongs to the command and adapter workloads",
                        );
                    }
                    for (field, set) in [
                        ("adapter", w.adapter.is_some()),
                        ("exit_codes", w.exit_codes.is_some()),
                        ("txn", w.txn.is_some()),
                    ] {
                        if set {
                            p.add(
                                &[key("workload"), key(field)],
                                format!("`{field}` does not belong to the kv workload"),
                            );
                        }
                    }
                }
                WorkloadType::Command | WorkloadType::Adapter => {
                    let name = if w.kind == WorkloadType::Command {
                        "command"
                    } else {
                        "adapter"
                    };
                    if w.ops.is_empty() {
                        p.add(
                            &path,
                            format!("the {name} workload needs at least one [[workload.ops]]"),
                        );
                    }
                    if w.ops.iter().all(|o| o.weight == 0) && !w.ops.is_empty() {
                        p.add(&[key("workload"), key("ops")], "every weight is 0");
                    }
                    for (i, op) in w.ops.iter().enumerate() {
                        if op.kind == CommandOpKind::Cas && w.kind == WorkloadType::Command {
                            p.add(
                                &[key("workload"), key("ops"), Seg::Index(i), key("kind")],
                                "`cas` needs an adapter workload: a command has no value to compare with",
                            );
                        }
                        if op.kind == CommandOpKind::Txn && w.kind == WorkloadType::Command {
                            p.add(
                                &[key("workload"), key("ops"), Seg::Index(i), key("kind")],
                                "`txn` needs an adapter workload: a command cannot answer with the micro-operations' reads",
                            );
                        }
                        let at = [key("workload"), key("ops"), Seg::Index(i), key("command")];
                        match (&op.command, w.kind) {
                            (Some(c), WorkloadType::Command) => {
                                for t in c.templates() {
                                    tm.call(p, &at, t, true);
                                }
                            }
                            (None, WorkloadType::Command) => p.add(
                                &[key("workload"), key("ops"), Seg::Index(i)],
                                "a command workload's operation needs `command`",
                            ),
                            (Some(_), _) => p.add(
                                &at,
                                "an adapter workload's operations have no `command`: the adapter performs them ([workload.adapter])",
                            ),
                            (None, _) => {}
                        }
                    }
                    match (&w.adapter, w.kind) {
                        (Some(a), WorkloadType::Adapter) => {
                            let call = |p: &mut Problems, at: &[Seg], t: &str| match a.on {
                                AdapterPlace::Runner => tm.call_runner(p, at, t),
                                AdapterPlace::Node => tm.call(p, at, t, true),
                            };
                            for t in a.command.templates() {
                                call(p, &[key("workload"), key("adapter"), key("command")], t);
                            }
                            for (k, v) in &a.env {
                                call(p, &[key("workload"), key("adapter"), key("env"), key(k)], v);
                            }
                        }
                        (None, WorkloadType::Adapter) => p.add(
                            &path,
                            "the adapter workload needs [workload.adapter] with the adapter's `command`",
                        ),
                        (Some(_), _) => p.add(
                            &[key("workload"), key("adapter")],
                            "`adapter` belongs to the adapter workload (type = \"adapter\")",
                        ),
                        (None, _) => {}
                    }
                    if let Some(codes) = &w.exit_codes {
                        if w.kind != WorkloadType::Command {
                            p.add(
                                &[key("workload"), key("exit_codes")],
                                "`exit_codes` belongs to the command workload",
                            );
                        }
                        if codes.fail.contains(&0) || codes.unknown.contains(&0) {
                            p.add(
                                &[key("workload"), key("exit_codes")],
                                "exit code 0 is always `ok`",
                            );
                        }
                        if let Some(c) = codes.fail.iter().find(|c| codes.unknown.contains(c)) {
                            p.add(
                                &[key("workload"), key("exit_codes")],
                                format!("exit code {c} is listed both as `fail` and as `unknown`"),
                            );
                        }
                    }
                    if let Some(t) = &w.txn {
                        let at = |field| [key("workload"), key("txn"), key(field)];
                        if !w.ops.iter().any(|o| o.kind == CommandOpKind::Txn) {
                            p.add(
                                &[key("workload"), key("txn")],
                                "`txn` sets how `txn` operations are drawn, and there is none: add [[workload.ops]] kind = \"txn\"",
                            );
                        }
                        if t.min_ops == 0 {
                            p.add(&at("min_ops"), "must be at least 1");
                        }
                        if t.max_ops < t.min_ops {
                            p.add(
                                &at("max_ops"),
                                format!("must be at least min_ops ({})", t.min_ops),
                            );
                        }
                        if t.read_percent > 100 {
                            p.add(&at("read_percent"), "is a percentage: 0 to 100");
                        }
                        if t.max_writes_per_key == 0 {
                            p.add(&at("max_writes_per_key"), "must be at least 1");
                        }
                    }
                    for (field, set) in [
                        ("addr", w.addr.is_some()),
                        ("prefix", w.prefix.is_some()),
                        ("mix", w.mix.is_some()),
                    ] {
                        if set {
                            p.add(
                                &[key("workload"), key(field)],
                                format!("`{field}` belongs to the kv workload"),
                            );
                        }
                    }
                }
            }
        }
    }
}
