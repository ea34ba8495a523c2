//! The history's transactions with their keys and elements interned as small integers, so the
//! rest of the checker works on vectors and integer-keyed maps instead of JSON.

use std::collections::HashMap;

use serde_json::Value;

use crate::fxhash::FxBuildHasher;
use crate::history::{History, MicroOp, OpKind, Outcome, micro_ops};

/// A key's index in [`Txns::keys`].
pub(crate) type KeyId = u32;
/// An element's index in [`Txns::elements`].
pub(crate) type Elem = u32;
/// A transaction's index in [`Txns::txns`].
pub(crate) type TxnId = u32;

/// A micro-operation with interned key and elements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Mop {
    Append {
        key: KeyId,
        elem: Elem,
    },
    /// `list` is `None` when the result is unknown (a transaction that is not `ok`).
    Read {
        key: KeyId,
        list: Option<Vec<Elem>>,
    },
}

/// One `txn` operation.
#[derive(Debug, Clone)]
pub(crate) struct Txn {
    /// The operation's id in the history.
    pub id: u64,
    pub client: u64,
    pub invoke: u64,
    /// When it completed; `None` unless `ok` (an `unknown` one may take effect later still).
    pub complete: Option<u64>,
    pub outcome: Outcome,
    pub mops: Vec<Mop>,
}

/// Element identity: integers (the usual elements) without formatting them, anything else by its
/// canonical JSON text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum ElemKey {
    Int(i64),
    Text(String),
}

/// The transactions of a history.
#[derive(Debug, Default)]
pub(crate) struct Txns {
    pub txns: Vec<Txn>,
    pub keys: Vec<String>,
    pub elements: Vec<Value>,
}

impl Txns {
    /// Every `txn` operation of the history, in invocation order. Parsing validated them, so a
    /// malformed one (possible only in a history built in code) is skipped.
    pub fn from_history(history: &History) -> Txns {
        let mut ops: Vec<_> = history.ops.iter().filter(|o| o.kind == OpKind::Txn).collect();
        ops.sort_by_key(|o| (o.invoke_us, o.id));
        let mut keys: HashMap<String, KeyId, FxBuildHasher> = HashMap::default();
        let mut elements: HashMap<ElemKey, Elem, FxBuildHasher> = HashMap::default();
        let mut txns = Txns::default();
        let mut key_id = |key: &str, txns: &mut Txns| -> KeyId {
            if let Some(&id) = keys.get(key) {
                return id;
            }
            let id = txns.keys.len() as KeyId;
            txns.keys.push(key.to_string());
            keys.insert(key.to_string(), id);
            id
        };
        let mut elem_id = |value: &Value, txns: &mut Txns| -> Elem {
            let key = match value.as_i64() {
                Some(i) => ElemKey::Int(i),
                None => ElemKey::Text(value.to_string()),
            };
            *elements.entry(key).or_insert_with(|| {
                txns.elements.push(value.clone());
                (txns.elements.len() - 1) as Elem
            })
        };
        for op in ops {
            let Some(Ok(parsed)) = op.value.as_ref().map(micro_ops) else {
                continue;
            };
            let ok = op.outcome == Outcome::Ok;
            let mops = parsed
                .iter()
                .map(|mop| match mop {
                    MicroOp::Append { key, element } => Mop::Append {
                        key: key_id(key, &mut txns),
                        elem: elem_id(element, &mut txns),
                    },
                    MicroOp::Read { key, list } => {
                        let key = key_id(key, &mut txns);
                        // In an `ok` transaction `null` is the empty list; otherwise nothing is known.
                        let list = match (ok, list) {
                            (true, Some(list)) => Some(list.iter().map(|e| elem_id(e, &mut txns)).collect()),
                            (true, None) => Some(Vec::new()),
                            (false, _) => None,
                        };
                        Mop::Read { key, list }
                    }
                })
                .collect();
            txns.txns.push(Txn {
                id: op.id,
                client: op.client,
                invoke: op.invoke_us,
                complete: if ok { op.complete_us } else { None },
                outcome: op.outcome,
                mops,
            });
        }
        txns
    }

    /// An element as JSON text.
    pub fn show(&self, elem: Elem) -> String {
        self.elements
            .get(elem as usize)
            .map(Value::to_string)
            .unwrap_or_else(|| "?".into())
    }

    /// A list as JSON text, cut in the middle when long.
    pub fn show_list(&self, list: &[Elem]) -> String {
        const EDGE: usize = 4;
        let parts: Vec<String> = if list.len() <= 2 * EDGE + 1 {
            list.iter().map(|e| self.show(*e)).collect()
        } else {
            let mut parts: Vec<String> = list[..EDGE].iter().map(|e| self.show(*e)).collect();
            parts.push(format!("… {} more …", list.len() - 2 * EDGE));
            parts.extend(list[list.len() - EDGE..].iter().map(|e| self.show(*e)));
            parts
        };
        format!("[{}]", parts.join(","))
    }

    /// A key's name.
    pub fn key(&self, key: KeyId) -> &str {
        self.keys.get(key as usize).map(String::as_str).unwrap_or("?")
    }
}
