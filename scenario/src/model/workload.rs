//! The `[workload]` tables: the workload's type and pace, its operation mix, the `command`
//! workload's exit-code mapping, the `adapter` workload's process and the `txn` mix.

use serde::{Deserialize, Serialize};

use super::*;

/// `[workload]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSpec {
    /// `kv`, `command` or `adapter`.
    #[serde(rename = "type")]
    pub kind: WorkloadType,
    /// Target rate over all clients, operations per second (default 50).
    #[serde(default = "default_rate")]
    pub rate: f64,
    /// Number of concurrent clients (default 4). Client `i` talks to node `i mod n`.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Bound on one operation; past it the outcome is `unknown` (default 2s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Dur>,
    /// Number of keys (`k0` … `kN-1`) the operations pick from (default 8).
    #[serde(default = "default_keys")]
    pub keys: usize,
    /// `kv`: `HOST:PORT` of the node's etcd client URL, as seen from the node (template).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    /// `kv`: key prefix (default `/chaos/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// `kv`: relative weights of read / write / cas / delete (default 50/30/15/5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mix: Option<Mix>,
    /// Read every key once at the end with each read kind the workload has, so a lost
    /// acknowledged write shows (default true).
    #[serde(default = "default_true")]
    pub final_reads: bool,
    /// `command` and `adapter`: the operations, drawn by weight.
    #[serde(default)]
    pub ops: Vec<CommandOp>,
    /// `command`: which exit codes mean `fail` and `unknown` (exit 0 is `ok`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_codes: Option<ExitCodes>,
    /// `adapter`: the adapter process each client starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<AdapterSpec>,
    /// `adapter` with `txn` operations: how transactions are drawn (default [`TxnSpec::default`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub txn: Option<TxnSpec>,
}

/// `[workload.txn]`: the list-append transactions of an adapter workload's `txn` operations, as
/// Jepsen's list-append generator draws them. `workload.keys` keys are in use at a time; a key
/// that has had `max_writes_per_key` appends is retired for a fresh one, so lists stay short
/// (the checker's work grows with their length) while every key sees contention. Each key's
/// elements are 1, 2, 3, … — unique per key, as the list-append checker requires.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TxnSpec {
    /// Fewest micro-operations in a transaction (default 1).
    #[serde(default = "default_txn_min_ops")]
    pub min_ops: usize,
    /// Most micro-operations in a transaction (default 4).
    #[serde(default = "default_txn_max_ops")]
    pub max_ops: usize,
    /// Percentage of micro-operations that are reads, the rest appends (default 50).
    #[serde(default = "default_txn_read_percent")]
    pub read_percent: u32,
    /// Appends a key takes before it is retired for a fresh one (default 32).
    #[serde(default = "default_txn_max_writes_per_key")]
    pub max_writes_per_key: u64,
}

impl Default for TxnSpec {
    fn default() -> Self {
        TxnSpec {
            min_ops: default_txn_min_ops(),
            max_ops: default_txn_max_ops(),
            read_percent: default_txn_read_percent(),
            max_writes_per_key: default_txn_max_writes_per_key(),
        }
    }
}

fn default_txn_min_ops() -> usize {
    1
}
fn default_txn_max_ops() -> usize {
    4
}
fn default_txn_read_percent() -> u32 {
    50
}
fn default_txn_max_writes_per_key() -> u64 {
    32
}

/// `[workload.exit_codes]`: how a `command` operation's exit code maps to its outcome. Exit 0 is
/// `ok`; a code listed in `fail` is `fail` (it definitely did not take effect); one in `unknown`
/// is `unknown`; any other code, `other` (default `unknown`: a client that exits non-zero after
/// a timeout cannot say whether its write happened). A process killed by a signal or timed out
/// is always `unknown`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExitCodes {
    /// Codes meaning `fail`.
    #[serde(default)]
    pub fail: Vec<i32>,
    /// Codes meaning `unknown`.
    #[serde(default)]
    pub unknown: Vec<i32>,
    /// The outcome of any other non-zero code (default `unknown`).
    #[serde(default)]
    pub other: NotOk,
}

impl ExitCodes {
    /// The outcome of exit code `code` (`None`: killed by a signal).
    pub fn outcome(&self, code: Option<i32>) -> chaos_check::Outcome {
        use chaos_check::Outcome;
        match code {
            Some(0) => Outcome::Ok,
            None => Outcome::Unknown,
            Some(c) if self.fail.contains(&c) => Outcome::Fail,
            Some(c) if self.unknown.contains(&c) => Outcome::Unknown,
            Some(_) => match self.other {
                NotOk::Fail => Outcome::Fail,
                NotOk::Unknown => Outcome::Unknown,
            },
        }
    }
}

/// `[workload.adapter]`: the long-lived process behind each client of an `adapter` workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdapterSpec {
    /// Program and arguments (templates, rendered for the client's node; they see `client`).
    pub command: CommandLine,
    /// Where it runs (default `node`).
    #[serde(default)]
    pub on: AdapterPlace,
    /// Extra environment variables (values are templates).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

fn default_rate() -> f64 {
    50.0
}
fn default_concurrency() -> usize {
    4
}
fn default_keys() -> usize {
    8
}

/// `[workload.mix]`: weights of the key-value operations.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mix {
    /// Linearizable range reads.
    #[serde(default)]
    pub read: u32,
    /// Puts of a unique value.
    #[serde(default)]
    pub write: u32,
    /// Compare-and-set transactions from the value this client last saw.
    #[serde(default)]
    pub cas: u32,
    /// Deletes.
    #[serde(default)]
    pub delete: u32,
}

impl Default for Mix {
    fn default() -> Self {
        Mix {
            read: 50,
            write: 30,
            cas: 15,
            delete: 5,
        }
    }
}

/// `[[workload.ops]]`: one kind of command operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandOp {
    /// What the history records it as.
    pub kind: CommandOpKind,
    /// `command` workload: the command (template; sees `client`, `seq`, `key`, `value`,
    /// `node`). An `adapter` workload has none: its adapter performs the kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<CommandLine>,
    /// Relative weight (default 1).
    #[serde(default = "default_one_u32")]
    pub weight: u32,
}
