//! An in-memory store behind the adapter protocol, for every history kind: registers (`read`,
//! `write`, `cas`, `delete`, `append`), sets (`add`, `read_set`), counters (`incr`,
//! `read_counter`), unique ids (`generate`) and list-append transactions (`txn`).
//!
//! It is correct unless told otherwise. [`EchoStore::lose_every`] makes it acknowledge writes it
//! drops (a deliberately buggy system); [`EchoStore::test_keys`] makes the keys a workload
//! generates misbehave at the protocol level, for the runner's tests (see [`test_key`]).

use std::collections::HashMap;
use std::io::Write;

use chaos_check::{AdapterRequest, AdapterResponse, OpKind};
use serde_json::Value;

/// The store and its switches.
#[derive(Debug, Default)]
pub struct EchoStore {
    registers: HashMap<String, Value>,
    sets: HashMap<String, Vec<Value>>,
    counters: HashMap<String, i64>,
    lists: HashMap<String, Vec<Value>>,
    next_id: u64,
    writes: u64,
    /// Acknowledge but drop every Nth write, add, incr or append (0 or `None`: never).
    pub lose_every: Option<u64>,
    /// Let the keys `k1` … `k6` misbehave (see [`test_key`]).
    pub test_keys: bool,
}

impl EchoStore {
    /// Whether this acknowledged write is to be dropped.
    fn lose(&mut self) -> bool {
        self.writes += 1;
        matches!(self.lose_every, Some(n) if n > 0 && self.writes % n == 0)
    }

    /// Performs `req`; `None` = answer nothing (the `silent` test key).
    pub fn apply(&mut self, req: AdapterRequest) -> Option<AdapterResponse> {
        if self.test_keys
            && let Some(handled) = test_key(&req)
        {
            return handled;
        }
        Some(self.perform_now(req))
    }

    /// Performs `req` on the store, whatever its key (no test-key misbehaviour).
    pub fn perform_now(&mut self, req: AdapterRequest) -> AdapterResponse {
        let id = req.id;
        let key = req.key.clone().unwrap_or_default();
        let value = req.value.clone();
        match req.kind {
            OpKind::Read => {
                AdapterResponse::ok(id, Some(self.registers.get(&key).cloned().unwrap_or(Value::Null)))
            }
            OpKind::Write => {
                if !self.lose() {
                    self.registers.insert(key, value.unwrap_or(Value::Null));
                }
                AdapterResponse::ok(id, None)
            }
            OpKind::Delete => {
                self.registers.remove(&key);
                AdapterResponse::ok(id, None)
            }
            OpKind::Cas => {
                let current = self.registers.get(&key).cloned().unwrap_or(Value::Null);
                if Some(&current) == req.expected.as_ref() {
                    self.registers.insert(key, value.unwrap_or(Value::Null));
                    AdapterResponse::ok(id, None)
                } else {
                    AdapterResponse::fail(id, format!("expected {:?}, found {current}", req.expected))
                }
            }
            OpKind::Append => {
                let lost = self.lose();
                let entry = self.registers.entry(key).or_insert(Value::Null);
                if !lost {
                    append(entry, value.unwrap_or(Value::Null));
                }
                AdapterResponse::ok(id, None)
            }
            OpKind::Add => {
                if !self.lose() {
                    self.sets
                        .entry(key)
                        .or_default()
                        .push(value.unwrap_or(Value::Null));
                }
                AdapterResponse::ok(id, None)
            }
            OpKind::ReadSet => {
                let set = self.sets.get(&key).cloned().unwrap_or_default();
                AdapterResponse::ok(id, Some(Value::Array(set)))
            }
            OpKind::Incr => {
                let by = value.as_ref().and_then(Value::as_i64).unwrap_or(1);
                if !self.lose() {
                    *self.counters.entry(key).or_default() += by;
                }
                AdapterResponse::ok(id, None)
            }
            OpKind::ReadCounter => {
                AdapterResponse::ok(id, Some(Value::from(*self.counters.get(&key).unwrap_or(&0))))
            }
            OpKind::Generate => {
                self.next_id += 1;
                AdapterResponse::ok(id, Some(Value::from(self.next_id)))
            }
            OpKind::Txn => match self.txn(value.unwrap_or(Value::Null)) {
                Ok(done) => AdapterResponse::ok(id, Some(done)),
                Err(e) => AdapterResponse::fail(id, e),
            },
        }
    }

    /// Runs a list-append transaction: appends, and reads filled in.
    fn txn(&mut self, micro: Value) -> Result<Value, String> {
        let Value::Array(ops) = micro else {
            return Err("a txn's value must be an array of micro-operations".into());
        };
        let mut done = Vec::with_capacity(ops.len());
        for op in ops {
            let parts = op.as_array().cloned().unwrap_or_default();
            match (
                parts.first().and_then(Value::as_str),
                parts.get(1).and_then(Value::as_str),
            ) {
                (Some("append"), Some(key)) => {
                    let element = parts.get(2).cloned().unwrap_or(Value::Null);
                    self.lists.entry(key.to_string()).or_default().push(element);
                    done.push(op);
                }
                (Some("r"), Some(key)) => {
                    let list = self.lists.get(key).cloned().unwrap_or_default();
                    done.push(Value::Array(vec!["r".into(), key.into(), Value::Array(list)]));
                }
                _ => return Err(format!("not a micro-operation: {op}")),
            }
        }
        Ok(Value::Array(done))
    }
}

/// The protocol-level misbehaviour of a test key: `k1` answers `fail`, `k2` `unknown`, `k3`
/// exits the process without answering, `k4` never answers, `k5` prints a line that is not JSON
/// before its (correct) answer, `k6` answers with a broken object. `None` for other keys (the
/// store performs them), else what to answer (`Some(None)`: nothing).
pub fn test_key(req: &AdapterRequest) -> Option<Option<AdapterResponse>> {
    match req.key.as_deref()? {
        "k1" => Some(Some(AdapterResponse::fail(req.id, "refused, as asked"))),
        "k2" => Some(Some(AdapterResponse::unknown(req.id, "no idea, as asked"))),
        "k3" => std::process::exit(3),
        "k4" => loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        },
        "k5" => {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "log line from a chatty client library");
            let _ = out.flush();
            None
        }
        "k6" => {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{{\"id\":{},\"outcome\":", req.id);
            let _ = out.flush();
            Some(None)
        }
        _ => None,
    }
}

/// Appends to a register: strings concatenate, anything else becomes a list.
fn append(register: &mut Value, element: Value) {
    match (register, element) {
        (Value::String(s), Value::String(e)) => s.push_str(&e),
        (r @ Value::Null, Value::String(e)) => *r = Value::String(e),
        (Value::Array(list), e) => list.push(e),
        (r, e) => {
            let old = std::mem::take(r);
            *r = if old.is_null() {
                Value::Array(vec![e])
            } else {
                Value::Array(vec![old, e])
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chaos_check::Outcome;

    fn req(id: u64, kind: OpKind, key: &str, value: Option<Value>) -> AdapterRequest {
        AdapterRequest {
            id,
            kind,
            key: Some(key.into()),
            value,
            expected: None,
        }
    }

    #[test]
    fn every_kind_behaves() {
        let mut s = EchoStore::default();
        s.apply(req(1, OpKind::Write, "a", Some(1.into())));
        assert_eq!(
            s.apply(req(2, OpKind::Read, "a", None)).unwrap().value,
            Some(1.into())
        );
        let mut cas = req(3, OpKind::Cas, "a", Some(2.into()));
        cas.expected = Some(9.into());
        assert_eq!(s.apply(cas.clone()).unwrap().outcome, Outcome::Fail);
        cas.expected = Some(1.into());
        assert_eq!(s.apply(cas).unwrap().outcome, Outcome::Ok);
        s.apply(req(4, OpKind::Add, "s", Some(7.into())));
        assert_eq!(
            s.apply(req(5, OpKind::ReadSet, "s", None)).unwrap().value,
            Some(serde_json::json!([7]))
        );
        s.apply(req(6, OpKind::Incr, "c", None));
        s.apply(req(7, OpKind::Incr, "c", Some(2.into())));
        assert_eq!(
            s.apply(req(8, OpKind::ReadCounter, "c", None)).unwrap().value,
            Some(3.into())
        );
        let a = s.apply(req(9, OpKind::Generate, "", None)).unwrap().value;
        let b = s.apply(req(10, OpKind::Generate, "", None)).unwrap().value;
        assert_ne!(a, b);
        let txn = s
            .apply(req(
                11,
                OpKind::Txn,
                "",
                Some(serde_json::json!([["append", "x", 1], ["r", "x", null]])),
            ))
            .unwrap();
        assert_eq!(
            txn.value,
            Some(serde_json::json!([["append", "x", 1], ["r", "x", [1]]]))
        );
        s.apply(req(12, OpKind::Delete, "a", None));
        assert_eq!(
            s.apply(req(13, OpKind::Read, "a", None)).unwrap().value,
            Some(Value::Null)
        );
    }

    #[test]
    fn lose_every_drops_acknowledged_writes() {
        let mut s = EchoStore {
            lose_every: Some(2),
            ..EchoStore::default()
        };
        for i in 0..4 {
            assert_eq!(
                s.apply(req(i, OpKind::Add, "s", Some(i.into()))).unwrap().outcome,
                Outcome::Ok
            );
        }
        assert_eq!(
            s.apply(req(9, OpKind::ReadSet, "s", None)).unwrap().value,
            Some(serde_json::json!([0, 2]))
        );
    }
}
