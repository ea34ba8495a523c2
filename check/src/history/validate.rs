//! Validation of parsed records, and error messages that name the field at fault.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::txn::micro_ops;
use super::{FaultPhase, Op, OpKind, Outcome};

/// serde_json's message without its "at line 1 column N" suffix (each record is one line), with the
/// column in front instead.
pub(super) fn json_message(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let message = match text.rfind(" at line ") {
        Some(at) => &text[..at],
        None => &text,
    };
    if e.column() > 0 {
        format!("column {}: {message}", e.column())
    } else {
        message.to_string()
    }
}

/// The message for a line that is JSON but not a valid record. serde cannot say which field of an
/// internally tagged record is wrong ("unknown variant `scan`"), so the line is looked at again as
/// plain JSON to name the field, and for an unknown `type` or `kind` to list the valid ones. Only
/// runs on the error path, so valid histories are parsed once.
pub(super) fn explain_record_error(line: &str, error: &serde_json::Error) -> String {
    let fallback = || json_message(error);
    if !error.is_data() {
        return fallback();
    }
    let Ok(Value::Object(record)) = serde_json::from_str::<Value>(line) else {
        return fallback();
    };
    const TYPES: &str = "header, op, fault";
    let record_type = match record.get("type") {
        None => return format!("field `type`: missing; every record has one ({TYPES})"),
        Some(Value::String(t)) => t.as_str(),
        Some(other) => {
            return format!("field `type`: {other} is not a record type; the record types are: {TYPES}");
        }
    };
    let wrong_field = match record_type {
        "header" => first_wrong_field(
            &record,
            &[
                ("version", check::<u32>),
                ("run", check::<Option<String>>),
                ("started_at", check::<Option<String>>),
                ("nodes", check::<Option<Vec<String>>>),
                ("max_error_fraction", check::<Option<f64>>),
                ("max_recovery_us", check::<Option<u64>>),
            ],
        ),
        "op" => {
            if let Some(kind) = record.get("kind") {
                if serde_json::from_value::<OpKind>(kind.clone()).is_err() {
                    let shown = kind
                        .as_str()
                        .map(|k| format!("`{k}`"))
                        .unwrap_or_else(|| kind.to_string());
                    return format!(
                        "field `kind`: unknown kind {shown}; the kinds are: {}",
                        OpKind::ALL.map(OpKind::as_str).join(", ")
                    );
                }
            }
            first_wrong_field(
                &record,
                &[
                    ("id", check::<u64>),
                    ("client", check::<u64>),
                    ("kind", check::<OpKind>),
                    ("key", check::<Option<String>>),
                    ("values", check::<Option<Vec<Value>>>),
                    ("invoke_us", check::<u64>),
                    ("complete_us", check::<Option<u64>>),
                    ("outcome", check::<Outcome>),
                    ("node", check::<Option<String>>),
                    ("error", check::<Option<String>>),
                ],
            )
        }
        "fault" => first_wrong_field(
            &record,
            &[
                ("event", check::<FaultPhase>),
                ("case", check::<String>),
                ("kind", check::<String>),
                ("nodes", check::<Option<Vec<String>>>),
                ("time_us", check::<u64>),
                ("detail", check::<Option<String>>),
            ],
        ),
        other => {
            return format!("field `type`: unknown record type `{other}`; the record types are: {TYPES}");
        }
    };
    wrong_field.unwrap_or_else(fallback)
}

/// Whether a field's value (or its absence, `None`) deserializes as `T`; the error if not.
fn check<T: DeserializeOwned>(value: Option<&Value>) -> Result<(), String> {
    let value = value.cloned().unwrap_or(Value::Null);
    serde_json::from_value::<T>(value)
        .map(drop)
        .map_err(|e| e.to_string())
}

type FieldCheck = fn(Option<&Value>) -> Result<(), String>;

/// The first field, in record order, that is missing or of the wrong type, as a message.
fn first_wrong_field(record: &Map<String, Value>, fields: &[(&str, FieldCheck)]) -> Option<String> {
    fields.iter().find_map(|(name, check)| {
        let value = record.get(*name);
        check(value).err().map(|e| match value {
            None => format!("field `{name}`: missing; it is required"),
            Some(_) => format!("field `{name}`: {e}"),
        })
    })
}

/// Checks the fields an operation of its kind and outcome needs.
pub(super) fn validate_op(op: &Op) -> Result<(), String> {
    let kind = op.kind.as_str();
    let needs = |field: &str, why: &str| format!("field `{field}`: required for `{kind}` {why}");
    if op.key.is_none() && !matches!(op.kind, OpKind::Generate | OpKind::Txn) {
        return Err(needs("key", "operations"));
    }
    match op.complete_us {
        None if op.outcome != Outcome::Unknown => {
            return Err(format!(
                "field `complete_us`: required when the outcome is `{}` (only `unknown` operations may \
                 lack a completion time)",
                op.outcome.as_str()
            ));
        }
        Some(c) if c < op.invoke_us => {
            return Err(format!(
                "field `complete_us`: {c} is before `invoke_us` {}; an operation cannot complete before \
                 it is invoked",
                op.invoke_us
            ));
        }
        _ => {}
    }
    let ok = op.outcome == Outcome::Ok;
    let integer = |v: &Option<Value>| match v {
        Some(v) => v
            .as_i64()
            .map(Some)
            .ok_or_else(|| format!("field `value`: {v} is not an integer")),
        None => Ok(None),
    };
    match op.kind {
        OpKind::Read => {
            if ok && op.value.is_none() {
                return Err(needs(
                    "value",
                    "operations that are `ok` (use null for an absent key)",
                ));
            }
        }
        OpKind::Write => {
            if op.value.is_none() {
                return Err(needs("value", "operations (use `delete` to remove a key)"));
            }
        }
        OpKind::Cas => {
            if op.value.is_none() {
                return Err(needs("value", "operations (the new value)"));
            }
            if op.expected.is_none() {
                return Err(needs(
                    "expected",
                    "operations (null expects the key to be absent)",
                ));
            }
        }
        OpKind::Delete => {}
        OpKind::Append => match &op.value {
            None | Some(Value::Null) => {
                return Err(needs(
                    "value",
                    "operations (the string or element appended, not null)",
                ));
            }
            Some(_) => {}
        },
        OpKind::Add => match &op.value {
            None | Some(Value::Null) => return Err(needs("value", "operations (the element, not null)")),
            Some(_) => {}
        },
        OpKind::ReadSet => {
            if ok && op.values.is_none() {
                return Err(needs("values", "operations that are `ok` (the elements read)"));
            }
        }
        OpKind::Incr => {
            integer(&op.value)?;
        }
        OpKind::ReadCounter => {
            if ok && integer(&op.value)?.is_none() {
                return Err(needs("value", "operations that are `ok` (the integer read)"));
            }
        }
        OpKind::Generate => {
            if ok && matches!(op.value, None | Some(Value::Null)) {
                return Err(needs("value", "operations that are `ok` (the id returned)"));
            }
        }
        OpKind::Txn => {
            let Some(value) = &op.value else {
                return Err(needs(
                    "value",
                    "operations (the micro-operations, e.g. [[\"append\",\"x\",3],[\"r\",\"y\",[1,2]]])",
                ));
            };
            micro_ops(value)?;
        }
    }
    Ok(())
}
