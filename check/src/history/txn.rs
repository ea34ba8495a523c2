//! The micro-operations of a `txn` operation, in the list-append model of Elle (Kingsbury &
//! Alvaro, "Elle: Inferring Isolation Anomalies from Experimental Observations", VLDB 2020):
//! every key names a list, `["append", KEY, ELEMENT]` adds ELEMENT to its end and
//! `["r", KEY, LIST]` reads the whole list. A transaction's micro-operations take effect together
//! (or not at all, for a `fail`ed one), in their order.

use std::borrow::Cow;

use serde_json::Value;

/// One micro-operation of a `txn`, borrowed from the operation's `value`.
#[derive(Debug, Clone, PartialEq)]
pub enum MicroOp<'a> {
    /// `["append", KEY, ELEMENT]`: ELEMENT (any JSON but `null`) goes at the end of KEY's list.
    Append {
        /// The list's key.
        key: Cow<'a, str>,
        /// The element appended.
        element: &'a Value,
    },
    /// `["r", KEY, LIST]`: the whole list KEY as read; `None` when the read's result is unknown
    /// (`null` in a transaction that is not `ok`). In an `ok` transaction `null` reads as `[]`.
    Read {
        /// The list's key.
        key: Cow<'a, str>,
        /// The elements read, in order.
        list: Option<&'a [Value]>,
    },
}

impl MicroOp<'_> {
    /// The key acted on.
    pub fn key(&self) -> &str {
        match self {
            MicroOp::Append { key, .. } | MicroOp::Read { key, .. } => key,
        }
    }
}

/// The micro-operation names a `txn` accepts.
pub const MICRO_OP_NAMES: &[&str] = &["append", "r"];

/// Parses a `txn`'s `value` into its micro-operations; the error names the micro-operation and
/// what is wrong with it (the caller adds the line).
pub fn micro_ops(value: &Value) -> Result<Vec<MicroOp<'_>>, String> {
    let Value::Array(list) = value else {
        return Err(format!(
            "field `value`: {} is not a list of micro-operations, e.g. [[\"append\",\"x\",3],[\"r\",\"y\",[1,2]]]",
            clip(value)
        ));
    };
    if list.is_empty() {
        return Err("field `value`: a `txn` needs at least one micro-operation".to_string());
    }
    list.iter()
        .enumerate()
        .map(|(i, mop)| {
            micro_op(mop)
                .map_err(|why| format!("field `value`: micro-operation {} ({}): {why}", i + 1, clip(mop)))
        })
        .collect()
}

fn micro_op(mop: &Value) -> Result<MicroOp<'_>, String> {
    let parts = match mop {
        Value::Array(parts) if parts.len() == 3 => parts,
        _ => {
            return Err(
                "must be a list of three: [\"append\", KEY, ELEMENT] or [\"r\", KEY, LIST]".to_string(),
            );
        }
    };
    let key = match &parts[1] {
        Value::String(s) => Cow::Borrowed(s.as_str()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Cow::Owned(n.to_string()),
        other => return Err(format!("the key {} is not a string or an integer", clip(other))),
    };
    match parts[0].as_str() {
        Some("append") => match &parts[2] {
            Value::Null => Err("the element appended must not be null".to_string()),
            element => Ok(MicroOp::Append { key, element }),
        },
        Some("r") => match &parts[2] {
            Value::Null => Ok(MicroOp::Read { key, list: None }),
            Value::Array(list) => Ok(MicroOp::Read {
                key,
                list: Some(list.as_slice()),
            }),
            other => Err(format!("the value read {} is not a list (or null)", clip(other))),
        },
        _ => Err(format!(
            "unknown micro-operation {}; the micro-operations are: {}",
            clip(&parts[0]),
            MICRO_OP_NAMES.join(", ")
        )),
    }
}

/// A value as compact JSON, cut to a readable length for messages.
fn clip(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(60) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}
