//! The client adapter protocol: JSON lines between the runner and a long-lived adapter process
//! that turns abstract operations into calls on the system under test (`docs/adapters.md`).
//!
//! The runner writes one [`AdapterRequest`] per line on the adapter's stdin and waits for the
//! [`AdapterResponse`] with the same `id` on its stdout, one operation at a time per adapter. The
//! shapes are those of a history [`Op`](crate::Op) without times: `kind`, `key`, `value` and
//! `expected` mean what they mean there (`docs/history.md`), so every history kind — registers,
//! sets, counters, unique ids and `txn` transactions — goes through the same two types.
//!
//! ```
//! use chaos_check::{AdapterRequest, AdapterResponse, OpKind, Outcome};
//! let req: AdapterRequest = serde_json::from_str(r#"{"id":7,"kind":"write","key":"k1","value":3}"#).unwrap();
//! assert_eq!(req.kind, OpKind::Write);
//! let resp = AdapterResponse::ok(req.id, None);
//! assert_eq!(serde_json::to_string(&resp).unwrap(), r#"{"id":7,"outcome":"ok"}"#);
//! let read: AdapterResponse = serde_json::from_str(r#"{"id":8,"outcome":"ok","value":null}"#).unwrap();
//! assert_eq!(read.value, Some(serde_json::Value::Null));
//! assert_eq!(read.outcome, Outcome::Ok);
//! ```

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::history::{OpKind, Outcome, present};

/// One operation the runner asks an adapter to perform.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterRequest {
    /// Unique per request (the history operation's id); the response repeats it.
    pub id: u64,
    /// What to do.
    pub kind: OpKind,
    /// The register, set, counter or list acted on (absent for `generate` and `txn`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// What to write, add, increment by; for `txn` the micro-operations
    /// (`[["append","k1",5],["r","k2",null]]`). Absent for reads.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub value: Option<Value>,
    /// For `cas`: the value the register must hold (`null` = absent).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub expected: Option<Value>,
}

/// An adapter's answer to one [`AdapterRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterResponse {
    /// The request's id.
    pub id: u64,
    /// `ok` (it took effect / this is what was read), `fail` (it definitely did not take effect)
    /// or `unknown` (the adapter cannot tell: a timeout, a lost connection).
    pub outcome: Outcome,
    /// What was read or generated: the register's value (`null` = absent), the set's elements
    /// (an array), the counter (an integer), the id; for an `ok` `txn` the micro-operations with
    /// their reads filled in. Absent for writes.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub value: Option<Value>,
    /// What went wrong, for `fail` and `unknown`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl AdapterResponse {
    /// An `ok` answer, with what was read (if anything).
    pub fn ok(id: u64, value: Option<Value>) -> AdapterResponse {
        AdapterResponse {
            id,
            outcome: Outcome::Ok,
            value,
            error: None,
        }
    }

    /// A `fail` answer: the operation definitely did not take effect.
    pub fn fail(id: u64, error: impl Into<String>) -> AdapterResponse {
        AdapterResponse {
            id,
            outcome: Outcome::Fail,
            value: None,
            error: Some(error.into()),
        }
    }

    /// An `unknown` answer: the operation may or may not have taken effect.
    pub fn unknown(id: u64, error: impl Into<String>) -> AdapterResponse {
        AdapterResponse {
            id,
            outcome: Outcome::Unknown,
            value: None,
            error: Some(error.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips() {
        for kind in OpKind::ALL {
            let req = AdapterRequest {
                id: 1,
                kind,
                key: Some("k".into()),
                value: Some(Value::Null),
                expected: None,
            };
            let text = serde_json::to_string(&req).unwrap();
            assert_eq!(
                serde_json::from_str::<AdapterRequest>(&text).unwrap(),
                req,
                "{text}"
            );
        }
        let txn: AdapterRequest =
            serde_json::from_str(r#"{"id":2,"kind":"txn","value":[["append","x",1],["r","y",null]]}"#)
                .unwrap();
        assert_eq!(txn.kind, OpKind::Txn);
        assert!(txn.key.is_none());
    }

    #[test]
    fn a_missing_value_and_null_differ() {
        let absent: AdapterResponse = serde_json::from_str(r#"{"id":1,"outcome":"ok"}"#).unwrap();
        assert_eq!(absent.value, None);
        let null: AdapterResponse = serde_json::from_str(r#"{"id":1,"outcome":"ok","value":null}"#).unwrap();
        assert_eq!(null.value, Some(Value::Null));
        assert!(serde_json::from_str::<AdapterResponse>(r#"{"id":1,"outcome":"maybe"}"#).is_err());
    }
}
