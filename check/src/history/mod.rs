//! The history format: JSON lines, one record per line, the first record a versioned header.
//!
//! `docs/history.md` describes every field with examples. Parsing validates each record against its
//! kind (a `write` needs a `value`, an `ok` operation needs `complete_us`, a `txn` needs well-formed
//! micro-operations, …) so the checkers can rely on well-formed operations, and every error names
//! the line and the field (`validate`).

mod txn;
mod validate;

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

pub use txn::{MICRO_OP_NAMES, MicroOp, micro_ops};
use validate::{explain_record_error, validate_op};

/// The history format version this crate writes and reads.
pub const HISTORY_VERSION: u32 = 1;

/// One line of a history file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    /// The first line: format version and run metadata.
    Header(Header),
    /// One client operation, from invocation to completion.
    Op(Op),
    /// A fault injected into or healed on some nodes.
    Fault(FaultEvent),
    /// A network measurement the run made (a scenario's `measure` check).
    Measurement(MeasurementEvent),
    /// Something the run noticed that is not a violation but worth a look (e.g. a fault on the
    /// leader after which the same node was still the leader).
    Warning(WarningEvent),
}

/// The header record: format version and what the run was.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// Format version; this crate reads [`HISTORY_VERSION`].
    pub version: u32,
    /// Name or id of the run, shown in the report title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// Wall-clock start of the run (RFC 3339), informational; all times in the history are relative.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// The cluster's node names, in the order the report draws their fault lanes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    /// Availability bound for this run: the largest tolerated fraction of failed or unknown
    /// operations within a fault case (default 0.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_fraction: Option<f64>,
    /// Recovery bound for this run: the longest tolerated time from a heal to the first ok operation
    /// invoked after it, in microseconds (default: unbounded, but a fault must recover).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_recovery_us: Option<u64>,
}

impl Header {
    /// A header of the current version with no metadata.
    pub fn new() -> Header {
        Header {
            version: HISTORY_VERSION,
            run: None,
            started_at: None,
            nodes: Vec::new(),
            max_error_fraction: None,
            max_recovery_us: None,
        }
    }
}

impl Default for Header {
    fn default() -> Self {
        Header::new()
    }
}

/// What an operation does. Register kinds (`read`, `write`, `cas`, `delete`, `append`) are checked
/// for linearizability; transactions (`txn`) by the list-append checker; the others feed the set,
/// counter and unique-id checkers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// Read a register; `value` is what was read (`null` = the key is absent).
    Read,
    /// Write `value` to a register.
    Write,
    /// Compare-and-set: if the register holds `expected`, set it to `value`.
    Cas,
    /// Delete a register (a write of "absent").
    Delete,
    /// Append `value` to a register: a string to a string (porcupine's key-value model, `read`
    /// returns the concatenation), anything else to a list. See `docs/history.md`.
    Append,
    /// Add the element `value` to the set `key`.
    Add,
    /// Read the whole set `key`; `values` is what was read.
    ReadSet,
    /// Add `value` (an integer, default 1) to the counter `key`.
    Incr,
    /// Read the counter `key`; `value` is the integer read.
    ReadCounter,
    /// Ask for a fresh unique id; `value` is the id returned.
    Generate,
    /// A transaction: `value` is its list of micro-operations (see [`MicroOp`]), which take
    /// effect together or not at all.
    Txn,
}

impl OpKind {
    /// Every kind, in the order the docs list them.
    pub const ALL: [OpKind; 11] = [
        OpKind::Read,
        OpKind::Write,
        OpKind::Cas,
        OpKind::Delete,
        OpKind::Append,
        OpKind::Add,
        OpKind::ReadSet,
        OpKind::Incr,
        OpKind::ReadCounter,
        OpKind::Generate,
        OpKind::Txn,
    ];

    /// The name used in history files.
    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Read => "read",
            OpKind::Write => "write",
            OpKind::Cas => "cas",
            OpKind::Delete => "delete",
            OpKind::Append => "append",
            OpKind::Add => "add",
            OpKind::ReadSet => "read_set",
            OpKind::Incr => "incr",
            OpKind::ReadCounter => "read_counter",
            OpKind::Generate => "generate",
            OpKind::Txn => "txn",
        }
    }

    /// Whether this kind belongs to the key-value register model.
    pub fn is_register(self) -> bool {
        matches!(
            self,
            OpKind::Read | OpKind::Write | OpKind::Cas | OpKind::Delete | OpKind::Append
        )
    }
}

/// How an operation ended, as the client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It took effect, and the recorded result is what the system returned.
    Ok,
    /// It definitely did not take effect (e.g. a refused request, a failed compare).
    Fail,
    /// The client cannot tell (timeout, connection lost): it may take effect at any time after its
    /// invocation, or never.
    Unknown,
}

impl Outcome {
    /// The name used in history files.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Fail => "fail",
            Outcome::Unknown => "unknown",
        }
    }
}

/// One client operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Op {
    /// Unique id of the operation within the history; verdicts and reports refer to it.
    pub id: u64,
    /// The client (logical process) that issued it; a client issues one operation at a time.
    pub client: u64,
    /// What the operation does.
    pub kind: OpKind,
    /// The register, set or counter it acts on (optional only for `generate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Value written, read, added, incremented by or generated; `null` means "absent".
    /// A missing field and an explicit `null` differ: see `docs/history.md`.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub value: Option<Value>,
    /// For `cas`: the value the register must hold for the swap to happen (`null` = absent).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub expected: Option<Value>,
    /// For `read_set`: the elements read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<Value>>,
    /// When the client invoked it, in microseconds since the start of the run.
    pub invoke_us: u64,
    /// When the client saw it complete, in microseconds since the start of the run. Required for
    /// `ok` and `fail`; for `unknown`, when the client gave up (or absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub complete_us: Option<u64>,
    /// How it ended.
    pub outcome: Outcome,
    /// The node the client sent it to, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The error the client saw, for `fail` and `unknown`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Deserializes a field that is present (even as `null`) into `Some`, so that a missing field
/// (`None`, via `default`) and an explicit `null` (`Some(Value::Null)`) stay distinct.
pub(crate) fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

impl Op {
    /// A new operation with only the required fields set; fill the rest with the builder methods.
    pub fn new(id: u64, client: u64, kind: OpKind, invoke_us: u64, outcome: Outcome) -> Op {
        Op {
            id,
            client,
            kind,
            key: None,
            value: None,
            expected: None,
            values: None,
            invoke_us,
            complete_us: None,
            outcome,
            node: None,
            error: None,
        }
    }

    /// Sets the key.
    pub fn key(mut self, key: impl Into<String>) -> Op {
        self.key = Some(key.into());
        self
    }

    /// Sets the value.
    pub fn value(mut self, value: impl Into<Value>) -> Op {
        self.value = Some(value.into());
        self
    }

    /// Sets the expected value of a `cas`.
    pub fn expected(mut self, expected: impl Into<Value>) -> Op {
        self.expected = Some(expected.into());
        self
    }

    /// Sets the elements of a `read_set`.
    pub fn values(mut self, values: Vec<Value>) -> Op {
        self.values = Some(values);
        self
    }

    /// Sets the completion time.
    pub fn complete(mut self, complete_us: u64) -> Op {
        self.complete_us = Some(complete_us);
        self
    }

    /// Sets the node the client talked to.
    pub fn node(mut self, node: impl Into<String>) -> Op {
        self.node = Some(node.into());
        self
    }

    /// The operation's duration, if it completed.
    pub fn latency_us(&self) -> Option<u64> {
        self.complete_us.map(|c| c.saturating_sub(self.invoke_us))
    }

    /// A short human description, e.g. `#7 write "x" ← 3 (client 2): ok`.
    pub fn describe(&self) -> String {
        let key = self.key.as_deref().map(|k| format!(" {k:?}")).unwrap_or_default();
        let what = match self.kind {
            OpKind::Read | OpKind::ReadCounter => match (&self.value, self.outcome) {
                (Some(v), Outcome::Ok) => format!(" → {}", show(v)),
                _ => String::new(),
            },
            OpKind::Write | OpKind::Append | OpKind::Add | OpKind::Incr => self
                .value
                .as_ref()
                .map(|v| format!(" ← {}", show(v)))
                .unwrap_or_default(),
            OpKind::Cas => format!(
                " {} → {}",
                self.expected.as_ref().map(show).unwrap_or_else(|| "?".into()),
                self.value.as_ref().map(show).unwrap_or_else(|| "?".into())
            ),
            OpKind::Delete => String::new(),
            OpKind::ReadSet => match (&self.values, self.outcome) {
                (Some(vs), Outcome::Ok) => format!(" → {} elements", vs.len()),
                _ => String::new(),
            },
            OpKind::Generate => match (&self.value, self.outcome) {
                (Some(v), Outcome::Ok) => format!(" → {}", show(v)),
                _ => String::new(),
            },
            OpKind::Txn => self
                .value
                .as_ref()
                .map(|v| format!(" {}", describe_txn(v, 120)))
                .unwrap_or_default(),
        };
        format!(
            "#{} {}{}{} (client {}): {}",
            self.id,
            self.kind.as_str(),
            key,
            what,
            self.client,
            self.outcome.as_str()
        )
    }
}

/// A transaction's micro-operations as `[append x 3, r y [1,2]]`, cut after about `limit`
/// characters.
pub(crate) fn describe_txn(value: &Value, limit: usize) -> String {
    let Ok(mops) = micro_ops(value) else {
        return value.to_string();
    };
    let mut text = String::from("[");
    for (i, mop) in mops.iter().enumerate() {
        if text.len() > limit {
            text.push_str(&format!(", … {} more", mops.len() - i));
            break;
        }
        if i > 0 {
            text.push_str(", ");
        }
        match mop {
            MicroOp::Append { key, element } => text.push_str(&format!("append {key} {element}")),
            MicroOp::Read {
                key,
                list: Some(list),
            } => text.push_str(&format!("r {key} {}", Value::from(list.to_vec()))),
            MicroOp::Read { key, list: None } => text.push_str(&format!("r {key} ?")),
        }
    }
    text.push(']');
    text
}

/// Renders a JSON value compactly; `null` reads as "absent".
pub(crate) fn show(v: &Value) -> String {
    match v {
        Value::Null => "absent".to_string(),
        other => other.to_string(),
    }
}

/// Whether a fault event starts or ends a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultPhase {
    /// The fault was put in place.
    Injected,
    /// The fault was removed.
    Healed,
}

/// A fault injected into or healed on some nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultEvent {
    /// Whether the fault started or ended.
    pub event: FaultPhase,
    /// The fault case (a scenario step) this fault belongs to; availability is measured per case.
    pub case: String,
    /// The fault mechanism, e.g. `partition`, `kill`, `pause`, `delay`, `clock`.
    pub kind: String,
    /// The nodes affected.
    #[serde(default)]
    pub nodes: Vec<String>,
    /// When it happened, in microseconds since the start of the run.
    pub time_us: u64,
    /// Free-form description (e.g. the partition's sides).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// A network measurement between two nodes: throughput, loss and round-trip times.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeasurementEvent {
    /// When it ended, in microseconds since the start of the run (0 for one made before the
    /// history began, such as a start check's).
    pub time_us: u64,
    /// The sending node.
    pub from: String,
    /// The receiving node.
    pub to: String,
    /// The receiving node's address measured to.
    pub address: String,
    /// `tcp` or `udp`.
    pub protocol: String,
    /// How long it sent, in seconds.
    pub seconds: f64,
    /// Bits per second received.
    pub throughput_bps: f64,
    /// Percent of datagrams lost (0 for TCP).
    pub loss_percent: f64,
    /// Round-trip time of the probes, in microseconds: median, min and max (absent when no
    /// probe was answered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_median_us: Option<u64>,
    /// Fastest round trip, in microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_min_us: Option<u64>,
    /// Slowest round trip, in microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_max_us: Option<u64>,
    /// What made it, e.g. `end check`, `step 3 (leader-partition) invariant`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// A warning about the run, tied to a fault case when it concerns one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WarningEvent {
    /// When it was noticed, in microseconds since the start of the run.
    pub time_us: u64,
    /// The fault case ([`FaultEvent::case`]) it concerns, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub case: Option<String>,
    /// What was noticed, in one line.
    pub message: String,
}

/// A parsed, validated history.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct History {
    /// The header record.
    pub header: Header,
    /// The operations, in file order.
    pub ops: Vec<Op>,
    /// The fault events, in file order.
    pub faults: Vec<FaultEvent>,
    /// The measurements, in file order.
    pub measurements: Vec<MeasurementEvent>,
    /// The warnings, in file order.
    pub warnings: Vec<WarningEvent>,
    /// Set when the file's last line was cut in the middle of a record (the run was killed
    /// while writing it): that line was left out and the rest is judged.
    pub cut_tail: Option<CutTail>,
}

/// The last line of a history file, cut mid-record and left out (see [`History::cut_tail`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CutTail {
    /// 1-based number of the cut line.
    pub line: usize,
    /// How many bytes of it were there.
    pub bytes: usize,
}

/// A history that cannot be read: names the source, the line and what is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{source_name} line {line}: {message}")]
pub struct HistoryError {
    /// The file (or other source) being parsed.
    pub source_name: String,
    /// 1-based line number (0 when the error concerns the whole history).
    pub line: usize,
    /// What is wrong and, where it helps, what to do.
    pub message: String,
}

impl History {
    /// An empty history with a current-version header.
    pub fn new(header: Header) -> History {
        History {
            header,
            ops: Vec::new(),
            faults: Vec::new(),
            measurements: Vec::new(),
            warnings: Vec::new(),
            cut_tail: None,
        }
    }

    /// Parses JSON-lines text; `source_name` (usually the file path) is used in errors.
    ///
    /// A last line without its newline that is not a whole record is what a run killed while
    /// writing leaves: it is left out and reported in [`History::cut_tail`] instead of failing
    /// the whole history. Any other bad line is an error.
    pub fn parse(text: &str, source_name: &str) -> Result<History, HistoryError> {
        Self::from_reader(text.as_bytes(), source_name)
    }

    /// Parses JSON lines from a reader, like [`History::parse`]; `source_name` (usually the
    /// file path) is used in errors.
    pub fn from_reader(mut reader: impl BufRead, source_name: &str) -> Result<History, HistoryError> {
        let lines = std::iter::from_fn(move || {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) => None,
                Ok(_) => {
                    let complete = line.ends_with('\n');
                    if complete {
                        line.pop();
                        if line.ends_with('\r') {
                            line.pop();
                        }
                    }
                    Some(Ok((line, complete)))
                }
                Err(e) => Some(Err(e)),
            }
        });
        Self::parse_lines(lines, source_name)
    }

    /// Reads and parses a history file.
    pub fn read_file(path: &Path) -> Result<History, HistoryError> {
        let name = path.display().to_string();
        let file = std::fs::File::open(path).map_err(|e| HistoryError {
            source_name: name.clone(),
            line: 0,
            message: format!("cannot open the history file: {e}"),
        })?;
        Self::from_reader(std::io::BufReader::new(file), &name)
    }

    /// Parses `(line, ended by a newline)` pairs.
    fn parse_lines(
        lines: impl Iterator<Item = std::io::Result<(String, bool)>>,
        source_name: &str,
    ) -> Result<History, HistoryError> {
        let err = |line: usize, message: String| HistoryError {
            source_name: source_name.to_string(),
            line,
            message,
        };
        let mut header: Option<Header> = None;
        let mut ops = Vec::new();
        let mut faults = Vec::new();
        let mut measurements = Vec::new();
        let mut warnings = Vec::new();
        let mut id_lines: HashMap<u64, usize> = HashMap::new();
        let mut cut_tail = None;
        for (index, line) in lines.enumerate() {
            let number = index + 1;
            let (line, complete) = line.map_err(|e| err(number, format!("cannot read: {e}")))?;
            if line.trim().is_empty() {
                continue;
            }
            let record: Record = match serde_json::from_str(&line) {
                Ok(record) => record,
                // Only the last line can lack its newline: a record cut mid-write.
                Err(e) if !complete && e.is_eof() => {
                    cut_tail = Some(CutTail {
                        line: number,
                        bytes: line.len(),
                    });
                    continue;
                }
                Err(e) => return Err(err(number, explain_record_error(&line, &e))),
            };
            match (record, &header) {
                (Record::Header(h), None) => {
                    if h.version != HISTORY_VERSION {
                        return Err(err(
                            number,
                            format!(
                                "field `version`: history format version {} is not supported \
                                 (this build reads version {HISTORY_VERSION})",
                                h.version
                            ),
                        ));
                    }
                    if let Some(f) = h.max_error_fraction.filter(|f| !(0.0..=1.0).contains(f)) {
                        return Err(err(
                            number,
                            format!("field `max_error_fraction`: {f} is not a fraction in [0, 1]"),
                        ));
                    }
                    header = Some(h);
                }
                (Record::Header(_), Some(_)) => {
                    return Err(err(
                        number,
                        "a second header record; a history has exactly one".into(),
                    ));
                }
                (_, None) => {
                    return Err(err(
                        number,
                        format!(
                            "the first record must be the header, e.g. \
                             {{\"type\":\"header\",\"version\":{HISTORY_VERSION}}}"
                        ),
                    ));
                }
                (Record::Op(op), Some(_)) => {
                    validate_op(&op).map_err(|m| err(number, m))?;
                    if let Some(first) = id_lines.insert(op.id, number) {
                        return Err(err(
                            number,
                            format!(
                                "field `id`: operation id {} was already used on line {first}",
                                op.id
                            ),
                        ));
                    }
                    ops.push(op);
                }
                (Record::Fault(f), Some(_)) => {
                    if f.case.is_empty() {
                        return Err(err(number, "field `case`: must not be empty".into()));
                    }
                    faults.push(f);
                }
                (Record::Measurement(m), Some(_)) => {
                    let figures = [
                        ("seconds", m.seconds),
                        ("throughput_bps", m.throughput_bps),
                        ("loss_percent", m.loss_percent),
                    ];
                    if let Some((field, v)) = figures.iter().find(|(_, v)| !v.is_finite() || *v < 0.0) {
                        return Err(err(
                            number,
                            format!("field `{field}`: {v} is not a non-negative number"),
                        ));
                    }
                    measurements.push(m);
                }
                (Record::Warning(w), Some(_)) => {
                    if w.case.as_deref() == Some("") {
                        return Err(err(
                            number,
                            "field `case`: must not be empty (leave it out)".into(),
                        ));
                    }
                    warnings.push(w);
                }
            }
        }
        let header = header.ok_or_else(|| {
            err(
                0,
                "the history is empty; it needs at least the header record".to_string(),
            )
        })?;
        Ok(History {
            header,
            ops,
            faults,
            measurements,
            warnings,
            cut_tail,
        })
    }

    /// Writes the history as JSON lines (header first, then operations and fault events in time
    /// order of invocation / occurrence).
    pub fn write_jsonl(&self, out: impl Write) -> std::io::Result<()> {
        let mut writer = HistoryWriter::new(out, &self.header)?;
        let mut events: Vec<(u64, Record)> = self
            .ops
            .iter()
            .map(|o| (o.invoke_us, Record::Op(o.clone())))
            .chain(self.faults.iter().map(|f| (f.time_us, Record::Fault(f.clone()))))
            .chain(
                self.measurements
                    .iter()
                    .map(|m| (m.time_us, Record::Measurement(m.clone()))),
            )
            .chain(
                self.warnings
                    .iter()
                    .map(|w| (w.time_us, Record::Warning(w.clone()))),
            )
            .collect();
        events.sort_by_key(|(t, _)| *t);
        for (_, record) in events {
            writer.record(&record)?;
        }
        writer.flush()
    }

    /// The operation with this id.
    pub fn op(&self, id: u64) -> Option<&Op> {
        self.ops.iter().find(|o| o.id == id)
    }

    /// The last moment the history mentions (latest invocation, completion or fault event).
    pub fn end_us(&self) -> u64 {
        let ops = self
            .ops
            .iter()
            .map(|o| o.complete_us.unwrap_or(o.invoke_us).max(o.invoke_us));
        let faults = self.faults.iter().map(|f| f.time_us);
        ops.chain(faults).max().unwrap_or(0)
    }
}

/// Appends records to a JSON-lines history as a run produces them.
#[derive(Debug)]
pub struct HistoryWriter<W: Write> {
    out: W,
}

impl<W: Write> HistoryWriter<W> {
    /// Starts a history: writes the header line.
    pub fn new(out: W, header: &Header) -> std::io::Result<HistoryWriter<W>> {
        let mut writer = HistoryWriter { out };
        writer.record(&Record::Header(header.clone()))?;
        Ok(writer)
    }

    /// Writes one operation.
    pub fn op(&mut self, op: &Op) -> std::io::Result<()> {
        self.record(&Record::Op(op.clone()))
    }

    /// Writes one fault event.
    pub fn fault(&mut self, event: &FaultEvent) -> std::io::Result<()> {
        self.record(&Record::Fault(event.clone()))
    }

    /// Writes one record as a line, in one write, and flushes it: a record reaches the
    /// destination as it completes, so a process killed afterwards loses nothing and one killed
    /// during the write leaves at most that line cut (which [`History::parse`] tolerates).
    pub fn record(&mut self, record: &Record) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(record)?;
        line.push(b'\n');
        self.out.write_all(&line)?;
        self.out.flush()
    }

    /// Flushes the underlying writer.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }

    /// Returns the underlying writer.
    pub fn into_inner(self) -> W {
        self.out
    }
}
