//! Scenario files: the TOML types, parsing, and validation.
//!
//! Every table denies unknown fields. Errors name the file, the line and column (from TOML spans),
//! the field's path (`faults[2].kind`) and, for closed sets (fault kinds, target selectors,
//! backends, checkers), the valid choices. `docs/scenarios.md` documents each field with an
//! example.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use chaos_proto::Fault;

use super::template::{self, Templates};

// ---------------------------------------------------------------------------------------------
// Scalar types
// ---------------------------------------------------------------------------------------------

pub use chaos_proto::kinds::Dur;

/// A range of durations: `"5s"` (exactly) or `["2s", "8s"]` (uniformly drawn from the seed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DurRange {
    /// Shortest.
    pub min: Dur,
    /// Longest.
    pub max: Dur,
}

impl DurRange {
    /// Exactly `d`.
    pub const fn exactly(d: Dur) -> DurRange {
        DurRange { min: d, max: d }
    }

    /// From `min` to `max`.
    pub const fn between(min: Dur, max: Dur) -> DurRange {
        DurRange { min, max }
    }
}

impl fmt::Display for DurRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.min == self.max {
            write!(f, "{}", self.min)
        } else {
            write!(f, "{}..{}", self.min, self.max)
        }
    }
}

impl Serialize for DurRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.min == self.max {
            self.min.serialize(s)
        } else {
            [self.min, self.max].serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for DurRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = DurRange;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration (\"5s\") or a range [\"2s\", \"8s\"]")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DurRange, E> {
                v.parse::<Dur>().map(DurRange::exactly).map_err(E::custom)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<DurRange, A::Error> {
                let min: Dur = seq.next_element()?.ok_or_else(|| {
                    de::Error::custom("a duration range needs two durations: [\"2s\", \"8s\"]")
                })?;
                let max: Dur = seq.next_element()?.ok_or_else(|| {
                    de::Error::custom("a duration range needs two durations: [\"2s\", \"8s\"]")
                })?;
                if seq.next_element::<Dur>()?.is_some() {
                    return Err(de::Error::custom(
                        "a duration range has exactly two durations: [\"2s\", \"8s\"]",
                    ));
                }
                Ok(DurRange { min, max })
            }
        }
        d.deserialize_any(V)
    }
}

/// A signal by name (`"SIGKILL"`, `"TERM"`) or number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignalName(pub chaos_proto::Signal);

impl fmt::Display for SignalName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for SignalName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SignalName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = SignalName;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a signal name such as \"SIGKILL\" or \"TERM\", or a number")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SignalName, E> {
                v.parse().map(SignalName).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<SignalName, E> {
                self.visit_str(&v.to_string())
            }
        }
        d.deserialize_any(V)
    }
}

/// A command: a string runs through `sh -c`, an array is the program and its arguments.
/// Every element is a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandLine {
    /// `sh -c STRING`.
    Shell(String),
    /// Program and arguments.
    Argv(Vec<String>),
}

impl CommandLine {
    /// The program and arguments, before templating.
    pub fn argv(&self) -> Vec<String> {
        match self {
            CommandLine::Shell(s) => vec!["sh".into(), "-c".into(), s.clone()],
            CommandLine::Argv(v) => v.clone(),
        }
    }

    /// The template strings it contains.
    pub fn templates(&self) -> Vec<&str> {
        match self {
            CommandLine::Shell(s) => vec![s.as_str()],
            CommandLine::Argv(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

impl Serialize for CommandLine {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            CommandLine::Shell(c) => c.serialize(s),
            CommandLine::Argv(v) => v.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for CommandLine {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CommandLine;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a shell command string or an array [\"program\", \"arg\", …]")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<CommandLine, E> {
                if v.trim().is_empty() {
                    return Err(E::custom("the command is empty"));
                }
                Ok(CommandLine::Shell(v.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<CommandLine, A::Error> {
                let mut argv = Vec::new();
                while let Some(a) = seq.next_element::<String>()? {
                    argv.push(a);
                }
                if argv.is_empty() || argv[0].trim().is_empty() {
                    return Err(de::Error::custom(
                        "the command array is empty: give at least the program",
                    ));
                }
                Ok(CommandLine::Argv(argv))
            }
        }
        d.deserialize_any(V)
    }
}

// ---------------------------------------------------------------------------------------------
// Closed sets
// ---------------------------------------------------------------------------------------------

/// The backends a scenario can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Processes on this host.
    Local,
    /// One network namespace per node (needs root).
    #[default]
    Netns,
    /// One container per node (needs a Docker daemon).
    Docker,
}

impl Backend {
    /// Every backend name.
    pub const NAMES: &[&str] = &["local", "netns", "docker"];

    /// The runner's backend kind.
    pub fn kind(self) -> chaos::backend::BackendKind {
        match self {
            Backend::Local => chaos::backend::BackendKind::Local,
            Backend::Netns => chaos::backend::BackendKind::Netns,
            Backend::Docker => chaos::backend::BackendKind::Docker,
        }
    }
}

impl FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "local" => Ok(Backend::Local),
            "netns" => Ok(Backend::Netns),
            "docker" => Ok(Backend::Docker),
            _ => Err(format!(
                "unknown backend `{s}`; valid backends: {}",
                Backend::NAMES.join(", ")
            )),
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Local => "local",
            Backend::Netns => "netns",
            Backend::Docker => "docker",
        })
    }
}

/// Which nodes a fault case targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// One node, drawn from the seed.
    One,
    /// The current leader (from the `[leader]` probe).
    Leader,
    /// One follower (any node but the leader), drawn from the seed.
    Follower,
    /// Every node but the leader.
    Followers,
    /// A minority: ⌊(n−1)/2⌋ nodes drawn from the seed.
    Minority,
    /// A majority: ⌊n/2⌋+1 nodes drawn from the seed.
    Majority,
    /// Every node.
    All,
    /// `random:N`: N distinct nodes drawn from the seed.
    Random(usize),
    /// Named nodes (`["n1", "n3"]`).
    Nodes(Vec<String>),
}

impl Selector {
    /// Every selector form, for error messages.
    pub const CHOICES: &str =
        "one, leader, follower, followers, minority, majority, all, random:N, or an array of node names";

    /// Whether it needs the leader probe.
    pub fn needs_leader(&self) -> bool {
        matches!(self, Selector::Leader | Selector::Follower | Selector::Followers)
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::One => f.write_str("one"),
            Selector::Leader => f.write_str("leader"),
            Selector::Follower => f.write_str("follower"),
            Selector::Followers => f.write_str("followers"),
            Selector::Minority => f.write_str("minority"),
            Selector::Majority => f.write_str("majority"),
            Selector::All => f.write_str("all"),
            Selector::Random(n) => write!(f, "random:{n}"),
            Selector::Nodes(names) => write!(f, "[{}]", names.join(", ")),
        }
    }
}

impl FromStr for Selector {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.trim() {
            "one" => Selector::One,
            "leader" => Selector::Leader,
            "follower" => Selector::Follower,
            "followers" => Selector::Followers,
            "minority" => Selector::Minority,
            "majority" => Selector::Majority,
            "all" => Selector::All,
            other => {
                let n = other
                    .strip_prefix("random:")
                    .or_else(|| other.strip_prefix("random "))
                    .and_then(|n| n.trim().parse::<usize>().ok());
                match n {
                    Some(n) if n >= 1 => Selector::Random(n),
                    _ => {
                        return Err(format!(
                            "unknown target selector `{other}`; valid selectors: {}",
                            Selector::CHOICES
                        ));
                    }
                }
            }
        })
    }
}

impl Serialize for Selector {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Selector::Nodes(names) => names.serialize(s),
            other => s.collect_str(other),
        }
    }
}

impl<'de> Deserialize<'de> for Selector {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Selector;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "a target selector: {}", Selector::CHOICES)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Selector, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Selector, A::Error> {
                let mut names = Vec::new();
                while let Some(n) = seq.next_element::<String>()? {
                    names.push(n);
                }
                if names.is_empty() {
                    return Err(de::Error::custom(
                        "the node list is empty: name at least one node",
                    ));
                }
                Ok(Selector::Nodes(names))
            }
        }
        d.deserialize_any(V)
    }
}

/// Where a check runs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum OnNodes {
    /// On every node; every node must pass.
    #[default]
    All,
    /// On each node in turn until one passes.
    Any,
    /// On the current leader.
    Leader,
    /// On the named nodes; each must pass.
    Nodes(Vec<String>),
}

impl OnNodes {
    const CHOICES: &str = "all, any, leader, or an array of node names";
}

impl fmt::Display for OnNodes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OnNodes::All => f.write_str("all"),
            OnNodes::Any => f.write_str("any"),
            OnNodes::Leader => f.write_str("leader"),
            OnNodes::Nodes(n) => write!(f, "[{}]", n.join(", ")),
        }
    }
}

impl Serialize for OnNodes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            OnNodes::Nodes(names) => names.serialize(s),
            other => s.collect_str(other),
        }
    }
}

impl<'de> Deserialize<'de> for OnNodes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OnNodes;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "where to run: {}", OnNodes::CHOICES)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OnNodes, E> {
                match v {
                    "all" => Ok(OnNodes::All),
                    "any" => Ok(OnNodes::Any),
                    "leader" => Ok(OnNodes::Leader),
                    other => Err(E::custom(format!(
                        "unknown node set `{other}`; valid choices: {}",
                        OnNodes::CHOICES
                    ))),
                }
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OnNodes, A::Error> {
                let mut names = Vec::new();
                while let Some(n) = seq.next_element::<String>()? {
                    names.push(n);
                }
                if names.is_empty() {
                    return Err(de::Error::custom(
                        "the node list is empty: name at least one node",
                    ));
                }
                Ok(OnNodes::Nodes(names))
            }
        }
        d.deserialize_any(V)
    }
}

/// When an invariant runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum When {
    /// Once the system is ready, before the first fault (a baseline).
    Start,
    /// After every fault case healed: must pass within its `timeout` (the recovery bound).
    Heal,
    /// At the end, after the workload stopped.
    End,
}

/// Which workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadType {
    /// The built-in key-value workload over etcd's v3 HTTP/JSON gateway.
    Kv,
    /// A templated command per operation.
    Command,
}

/// History operation kinds a `command` workload may record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandOpKind {
    /// A register read: stdout (trimmed, as JSON when it parses) is the value read; empty = absent.
    Read,
    /// A register write of `{{ value }}`.
    Write,
    /// A register delete.
    Delete,
    /// Add `{{ value }}` to the set `{{ key }}`.
    Add,
    /// Read the set `{{ key }}`: one element per non-empty stdout line.
    ReadSet,
    /// Increment the counter `{{ key }}` by one.
    Incr,
    /// Read the counter `{{ key }}`: stdout is the integer.
    ReadCounter,
    /// Generate a unique id: stdout is the id.
    Generate,
}

impl CommandOpKind {
    /// The history kind it records.
    pub fn op_kind(self) -> chaos_check::OpKind {
        use chaos_check::OpKind;
        match self {
            CommandOpKind::Read => OpKind::Read,
            CommandOpKind::Write => OpKind::Write,
            CommandOpKind::Delete => OpKind::Delete,
            CommandOpKind::Add => OpKind::Add,
            CommandOpKind::ReadSet => OpKind::ReadSet,
            CommandOpKind::Incr => OpKind::Incr,
            CommandOpKind::ReadCounter => OpKind::ReadCounter,
            CommandOpKind::Generate => OpKind::Generate,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tables
// ---------------------------------------------------------------------------------------------

fn default_multiplier() -> f64 {
    1.0
}
fn default_nodes() -> usize {
    3
}
fn default_true() -> bool {
    true
}
fn default_one_u32() -> u32 {
    1
}

/// A whole scenario file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Name of the scenario (run directories are grouped by it); default: the file's stem.
    #[serde(default)]
    pub name: String,
    /// One line saying what it tests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Multiplies every timeout (readiness, checks, recovery, workload ops) for slow machines.
    #[serde(default = "default_multiplier")]
    pub timeout_multiplier: f64,
    /// User values, available to templates as `values.NAME`.
    #[serde(default)]
    pub values: BTreeMap<String, toml::Value>,
    /// The nodes.
    #[serde(default)]
    pub cluster: ClusterSpec,
    /// What to put on the nodes and how to start the system.
    #[serde(default)]
    pub setup: Setup,
    /// How to find the leader (needed by the `leader`/`follower(s)` selectors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<LeaderProbe>,
    /// Client load during the faults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<WorkloadSpec>,
    /// The fault cases.
    #[serde(default)]
    pub faults: Vec<FaultCase>,
    /// How the cases are ordered and paced.
    #[serde(default)]
    pub schedule: Schedule,
    /// Checks that must hold.
    #[serde(default)]
    pub invariants: Vec<Invariant>,
    /// Checkers run on the recorded history at the end.
    #[serde(default)]
    pub history: HistorySpec,
    /// What to do before the system is stopped.
    #[serde(default)]
    pub teardown: Teardown,
}

/// `[cluster]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    /// Backend (default `netns`); `chaos run --backend` overrides it.
    #[serde(default)]
    pub backend: Backend,
    /// Number of nodes, named `n1` … `nN` (default 3).
    #[serde(default = "default_nodes")]
    pub nodes: usize,
}

impl Default for ClusterSpec {
    fn default() -> Self {
        ClusterSpec {
            backend: Backend::default(),
            nodes: default_nodes(),
        }
    }
}

/// `[setup]`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Setup {
    /// Binaries or files copied from the runner to every node.
    #[serde(default)]
    pub ship: Vec<Ship>,
    /// Files written on every node from templates.
    #[serde(default)]
    pub files: Vec<FileSpec>,
    /// Commands run to completion on every node before the system starts.
    #[serde(default)]
    pub commands: Vec<CommandLine>,
    /// The system under test: one process per node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<StartSpec>,
    /// Checks that must pass before faults begin.
    #[serde(default)]
    pub ready: Vec<Check>,
}

/// `[[setup.ship]]`: a file copied from the runner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ship {
    /// A program name looked up on the runner's `PATH`, or a path on the runner.
    pub from: String,
    /// Destination on the node (template); default `{{ node.root }}/bin/<file name>`. Templates
    /// see it as `bin.<file name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Permissions (default 0o755).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
}

/// `[[setup.files]]`: a file written from a template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// Destination on the node (template).
    pub to: String,
    /// Contents (template).
    pub content: String,
    /// Permissions (default 0o644).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
}

/// `[setup.start]`: how the system under test starts on each node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartSpec {
    /// Program and arguments (templates).
    pub command: CommandLine,
    /// Extra environment variables (values are templates).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory (template); default the node's root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// The node's data directory (template): archived into the run directory when the node fails
    /// a check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<String>,
    /// Signal of a graceful stop (default SIGTERM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<SignalName>,
    /// How long a graceful stop may take before SIGKILL (default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_timeout: Option<Dur>,
}

/// An HTTP request made from a node (through its TCP proxy).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpRequest {
    /// `HOST:PORT` to connect to, as seen from the node (template), e.g. `"127.0.0.1:2379"`.
    pub addr: String,
    /// Method (default GET).
    #[serde(default = "default_method")]
    pub method: String,
    /// Path and query (template).
    #[serde(default = "default_path")]
    pub path: String,
    /// Request body (template).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Expected status (default: any 2xx).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
}

fn default_method() -> String {
    "GET".into()
}
fn default_path() -> String {
    "/".into()
}

/// A check: run something on nodes and judge its output. Used by `[[setup.ready]]` and
/// `[[invariants]]`. Exactly one of `command`, `http` or `log` says what to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    /// Name shown in progress, events and the summary.
    #[serde(default)]
    pub name: String,
    /// Where to run it (default `all`).
    #[serde(default)]
    pub on: OnNodes,
    /// A command on the node: passes when it exits 0 (and the regexes agree).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<CommandLine>,
    /// An HTTP request from the node: passes on the expected status (and the regexes agree).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpRequest>,
    /// `true`: the regexes judge the system's log on the node (stdout and stderr).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub log: bool,
    /// The output must match this regex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// The output must not match this regex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_regex: Option<String>,
    /// A regex with one capture group: the captured text must be the same on every node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agree: Option<String>,
    /// How long it may take to pass (retried every `interval`); default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Dur>,
    /// Pause between attempts (default 500ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Dur>,
}

/// `[[invariants]]`: a [`Check`] (its fields sit beside these) plus when it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Invariant {
    /// When it runs (default `["heal", "end"]`).
    #[serde(default = "default_when")]
    pub at: Vec<When>,
    /// Hold the workload while the check runs (for checks that need a quiet system, such as
    /// comparing hashes across members).
    #[serde(default)]
    pub pause_workload: bool,
    /// What it runs and how it is judged. Its `timeout` is the recovery bound: how long it may
    /// take to pass after a heal (default 30s).
    #[serde(flatten)]
    pub check: Check,
    /// Fields that neither an invariant nor a check has. Serde cannot deny unknown fields beside
    /// a flattened table, so they are kept here and refused by validation, at their line.
    #[serde(flatten, default, skip_serializing_if = "BTreeMap::is_empty")]
    pub unknown: BTreeMap<String, toml::Value>,
}

/// The fields of an invariant, for errors.
const INVARIANT_FIELDS: &[&str] = &[
    "name",
    "at",
    "pause_workload",
    "on",
    "command",
    "http",
    "log",
    "regex",
    "not_regex",
    "agree",
    "timeout",
    "interval",
];

fn default_when() -> Vec<When> {
    vec![When::Heal, When::End]
}

impl Invariant {
    /// `check`, after every heal and at the end.
    pub fn of(check: Check) -> Invariant {
        Invariant {
            at: default_when(),
            pause_workload: false,
            check,
            unknown: BTreeMap::new(),
        }
    }

    /// Its name (the check's).
    pub fn name(&self) -> &str {
        &self.check.name
    }
}

/// `[leader]`: a probe run on every node whose output names the leader.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaderProbe {
    /// A command on each node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<CommandLine>,
    /// An HTTP request from each node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpRequest>,
    /// Regex whose first capture group is the leader's identity as this node sees it.
    pub leader: String,
    /// Regex whose first capture group is this node's own identity in the same output. The
    /// leader is the node whose own identity equals the leader it reports. Without it, the
    /// captured leader must be a node name, IP address or index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_id: Option<String>,
    /// How long to keep asking until a leader is found (default 15s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Dur>,
}

/// `[workload]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSpec {
    /// `kv` or `command`.
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
    /// `kv`: read every key once at the end, so a lost acknowledged write shows (default true).
    #[serde(default = "default_true")]
    pub final_reads: bool,
    /// `command`: the operations, drawn by weight.
    #[serde(default)]
    pub ops: Vec<CommandOp>,
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
    /// The command (template; sees `client`, `seq`, `key`, `value`, `node`).
    pub command: CommandLine,
    /// Relative weight (default 1).
    #[serde(default = "default_one_u32")]
    pub weight: u32,
}

/// `[[faults]]`: one fault case — when, where and how often, around one [`Fault`] of the fault
/// model, whose fields sit beside the case's own (`kind = "loss"`, `percent = 20`). Each kind
/// denies the fields it does not have, so a field of another kind is refused with the valid ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultCase {
    /// Unique name, used in events, history and summary.
    pub name: String,
    /// Which nodes.
    pub target: Selector,
    /// Relative weight: times per round, or probability with `schedule.picks` (default 1; 0
    /// disables the case).
    #[serde(default = "default_one_u32")]
    pub weight: u32,
    /// How long the fault stays before it is healed (default 5s).
    #[serde(default = "default_duration")]
    pub duration: DurRange,
    /// Start the next case while this one is still active (after the schedule's pause).
    #[serde(default)]
    pub overlap: bool,
    /// What it does: `kind` and that kind's fields.
    #[serde(flatten)]
    pub fault: Fault,
}

/// The fields every fault case has besides its kind's own.
pub const CASE_FIELDS: &[&str] = &["name", "target", "weight", "duration", "overlap", "kind"];

fn default_duration() -> DurRange {
    DurRange::exactly(Dur::secs(5))
}

/// `[schedule]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// Rounds (default 1); `chaos run --rounds` overrides it.
    #[serde(default = "default_one_u32")]
    pub rounds: u32,
    /// Shuffle the cases of each round (default true).
    #[serde(default = "default_true")]
    pub shuffle: bool,
    /// Draw this many cases per round by weight instead of running each `weight` times.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub picks: Option<u32>,
    /// Pause between cases, after recovery (default 1s).
    #[serde(default = "default_pause")]
    pub pause: DurRange,
    /// Stop starting new cases after this long (the rest are recorded as skipped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_limit: Option<Dur>,
}

fn default_pause() -> DurRange {
    DurRange::exactly(Dur::secs(1))
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule {
            rounds: 1,
            shuffle: true,
            picks: None,
            pause: default_pause(),
            time_limit: None,
        }
    }
}

/// `[history]`: checkers run on the recorded history at the end.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistorySpec {
    /// Checker names (default: every checker that applies to the history).
    #[serde(default)]
    pub checkers: Vec<String>,
    /// Availability bound: largest fraction of failed or unknown operations during a case
    /// (default 0.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_fraction: Option<f64>,
    /// Recovery bound: longest time from a heal to the first ok operation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_recovery: Option<Dur>,
}

/// `[teardown]`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Teardown {
    /// Commands run on every node before the system is stopped (failures are logged only).
    #[serde(default)]
    pub commands: Vec<CommandLine>,
    /// Extra files or directories (templates) copied from every node into the run directory.
    #[serde(default)]
    pub collect: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// One problem in a scenario file, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioError {
    /// The file (or source name).
    pub file: String,
    /// 1-based line (0 when unknown).
    pub line: usize,
    /// 1-based column (0 when unknown).
    pub column: usize,
    /// The field's path, e.g. `faults[2].kind` (empty for the whole file).
    pub field: String,
    /// What is wrong and what would be accepted.
    pub message: String,
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.field.is_empty() {
            write!(f, ": field `{}`", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in a scenario file (at least one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ScenarioErrors(pub Vec<ScenarioError>);

impl fmt::Display for ScenarioErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl ScenarioErrors {
    fn one(file: &str, message: impl Into<String>) -> ScenarioErrors {
        ScenarioErrors(vec![ScenarioError {
            file: file.to_string(),
            line: 0,
            column: 0,
            field: String::new(),
            message: message.into(),
        }])
    }
}

/// A step of a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

fn path_string(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Maps byte offsets to line/column and field paths to spans, from the parsed document.
struct Locator<'a> {
    text: &'a str,
    doc: Option<toml::Spanned<toml::de::DeTable<'a>>>,
}

impl<'a> Locator<'a> {
    fn new(text: &'a str) -> Self {
        Locator {
            text,
            doc: toml::de::DeTable::parse(text).ok(),
        }
    }

    fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
        (line, col)
    }

    /// The span of the value at `path`, or of its nearest existing ancestor.
    fn span_of(&self, path: &[Seg]) -> Option<Range<usize>> {
        let doc = self.doc.as_ref()?;
        let mut best = None;
        let mut table = Some(doc.get_ref());
        let mut value: Option<&toml::Spanned<toml::de::DeValue>> = None;
        for seg in path {
            let next = match (seg, table, value) {
                (Seg::Key(k), Some(t), _) => t.get(k.as_str()),
                (Seg::Index(i), _, Some(v)) => v.get_ref().as_array().and_then(|a| a.get(*i)),
                _ => None,
            };
            let Some(next) = next else { break };
            best = Some(next.span());
            value = Some(next);
            table = match next.get_ref() {
                toml::de::DeValue::Table(t) => Some(t),
                _ => None,
            };
        }
        best
    }

    /// The deepest field path whose key or value span contains `span`. Tables are searched
    /// through their entries rather than by their own span, because an array-of-tables item's
    /// span covers only its `[[header]]`.
    fn path_at(&self, span: &Range<usize>) -> Vec<Seg> {
        fn contains(outer: &Range<usize>, inner: &Range<usize>) -> bool {
            outer.start <= inner.start && inner.end <= outer.end.max(outer.start + 1)
        }
        fn in_table(t: &toml::de::DeTable, span: &Range<usize>) -> Option<Vec<Seg>> {
            for (k, v) in t.iter() {
                if let Some(mut rest) = in_value(v.get_ref(), span) {
                    rest.insert(0, Seg::Key(k.get_ref().to_string()));
                    return Some(rest);
                }
                if contains(&v.span(), span) || contains(&k.span(), span) {
                    return Some(vec![Seg::Key(k.get_ref().to_string())]);
                }
            }
            None
        }
        fn in_value(v: &toml::de::DeValue, span: &Range<usize>) -> Option<Vec<Seg>> {
            match v {
                toml::de::DeValue::Table(t) => in_table(t, span),
                toml::de::DeValue::Array(a) => a.iter().enumerate().find_map(|(i, item)| {
                    let mut rest = in_value(item.get_ref(), span)
                        .or_else(|| contains(&item.span(), span).then(Vec::new))?;
                    rest.insert(0, Seg::Index(i));
                    Some(rest)
                }),
                _ => None,
            }
        }
        self.doc
            .as_ref()
            .and_then(|doc| in_table(doc.get_ref(), span))
            .unwrap_or_default()
    }
}

/// Collects validation problems with their field paths.
struct Problems<'a> {
    file: &'a str,
    locator: &'a Locator<'a>,
    list: Vec<ScenarioError>,
}

impl Problems<'_> {
    fn add(&mut self, path: &[Seg], message: impl Into<String>) {
        let (line, column) = match self.locator.span_of(path) {
            Some(span) => self.locator.line_col(span.start),
            None => (0, 0),
        };
        self.list.push(ScenarioError {
            file: self.file.to_string(),
            line,
            column,
            field: path_string(path),
            message: message.into(),
        });
    }
}

fn key(k: &str) -> Seg {
    Seg::Key(k.to_string())
}

// ---------------------------------------------------------------------------------------------
// Loading and validation
// ---------------------------------------------------------------------------------------------

impl Scenario {
    /// Reads, parses and validates a scenario file. The name defaults to the file's stem.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Scenario, ScenarioErrors> {
        let path = path.as_ref();
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ScenarioErrors::one(&file, format!("cannot read the scenario file: {e}")))?;
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "scenario".into());
        Scenario::parse_named(&text, &file, &stem)
    }

    /// Parses and validates scenario text; `source` names it in errors and is the default name.
    pub fn parse(text: &str, source: &str) -> Result<Scenario, ScenarioErrors> {
        let stem = Path::new(source)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "scenario".into());
        Scenario::parse_named(text, source, &stem)
    }

    fn parse_named(text: &str, source: &str, default_name: &str) -> Result<Scenario, ScenarioErrors> {
        let locator = Locator::new(text);
        let mut scenario: Scenario = toml::from_str(text).map_err(|e| {
            let (line, column, field) = match e.span() {
                Some(span) => {
                    let mut path = locator.path_at(&span);
                    let mut at = span.start;
                    // A fault case's kind and fields are read through the fault model (flattened),
                    // which loses their positions: find the field the message names.
                    if let Some(sub) = fault_field(&path, e.message()) {
                        path.push(key(&sub));
                        match locator.span_of(&path) {
                            Some(span) => at = span.start,
                            None => {
                                path.pop();
                            }
                        }
                    }
                    let (l, c) = locator.line_col(at);
                    (l, c, path_string(&path))
                }
                None => (0, 0, String::new()),
            };
            ScenarioErrors(vec![ScenarioError {
                file: source.to_string(),
                line,
                column,
                message: friendlier(e.message().trim(), &field),
                field,
            }])
        })?;
        if scenario.name.is_empty() {
            scenario.name = default_name.to_string();
        }
        let mut problems = Problems {
            file: source,
            locator: &locator,
            list: Vec::new(),
        };
        scenario.check(&mut problems);
        if problems.list.is_empty() {
            Ok(scenario)
        } else {
            Err(ScenarioErrors(problems.list))
        }
    }

    /// Validates a scenario built in code (no file positions in the errors).
    pub fn validate(&self) -> Result<(), ScenarioErrors> {
        let locator = Locator { text: "", doc: None };
        let mut problems = Problems {
            file: &self.name,
            locator: &locator,
            list: Vec::new(),
        };
        self.check(&mut problems);
        if problems.list.is_empty() {
            Ok(())
        } else {
            Err(ScenarioErrors(problems.list))
        }
    }

    /// The names of the nodes: `n1` … `nN`.
    pub fn node_names(&self) -> Vec<String> {
        (1..=self.cluster.nodes).map(|i| format!("n{i}")).collect()
    }

    /// Scales a timeout by `timeout_multiplier`.
    pub fn scaled(&self, d: Duration) -> Duration {
        d.mul_f64(self.timeout_multiplier)
    }

    fn check(&self, p: &mut Problems) {
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            p.add(
                &[key("name")],
                format!(
                    "{:?} cannot name a run directory: use letters, digits, `-`, `_` and `.`",
                    self.name
                ),
            );
        }
        if !(self.timeout_multiplier.is_finite() && self.timeout_multiplier > 0.0) {
            p.add(
                &[key("timeout_multiplier")],
                "must be a positive number, e.g. 1.0 or 2.5",
            );
        }
        let n = self.cluster.nodes;
        if n == 0 || n > 253 {
            p.add(
                &[key("cluster"), key("nodes")],
                format!("{n} nodes: use 1 to 253"),
            );
        }
        let names = self.node_names();
        let templates = Templates::new();
        let sample = template::sample_vars(self);
        let mut tmpl = |p: &mut Problems, path: &[Seg], text: &str, extra: bool| {
            let vars = if extra {
                sample.with_op_vars()
            } else {
                sample.clone()
            };
            if let Err(e) = templates.render(text, &vars) {
                p.add(path, format!("bad template: {e}"));
            }
        };

        // setup
        for (i, ship) in self.setup.ship.iter().enumerate() {
            let path = [key("setup"), key("ship"), Seg::Index(i)];
            if ship.from.trim().is_empty() {
                p.add(
                    &[&path[..], &[key("from")]].concat(),
                    "empty: name a program or a path",
                );
            }
            if let Some(to) = &ship.to {
                tmpl(p, &[&path[..], &[key("to")]].concat(), to, false);
            }
        }
        for (i, file) in self.setup.files.iter().enumerate() {
            let path = [key("setup"), key("files"), Seg::Index(i)];
            tmpl(p, &[&path[..], &[key("to")]].concat(), &file.to, false);
            tmpl(p, &[&path[..], &[key("content")]].concat(), &file.content, false);
        }
        for (i, cmd) in self.setup.commands.iter().enumerate() {
            for t in cmd.templates() {
                tmpl(p, &[key("setup"), key("commands"), Seg::Index(i)], t, false);
            }
        }
        if let Some(start) = &self.setup.start {
            let path = [key("setup"), key("start")];
            for t in start.command.templates() {
                tmpl(p, &[&path[..], &[key("command")]].concat(), t, false);
            }
            for (k, v) in &start.env {
                tmpl(p, &[&path[..], &[key("env"), key(k)]].concat(), v, false);
            }
            for (field, v) in [("cwd", &start.cwd), ("data_dir", &start.data_dir)] {
                if let Some(v) = v {
                    tmpl(p, &[&path[..], &[key(field)]].concat(), v, false);
                }
            }
        }
        for (i, check) in self.setup.ready.iter().enumerate() {
            let path = [key("setup"), key("ready"), Seg::Index(i)];
            self.check_check(p, &path, check, &names, &mut tmpl);
        }

        // leader
        if let Some(probe) = &self.leader {
            let path = [key("leader")];
            let sources = probe.command.is_some() as u8 + probe.http.is_some() as u8;
            if sources != 1 {
                p.add(
                    &path,
                    "give exactly one of `command` or `http` to ask a node for the leader",
                );
            }
            if let Some(c) = &probe.command {
                for t in c.templates() {
                    tmpl(p, &[key("leader"), key("command")], t, false);
                }
            }
            if let Some(h) = &probe.http {
                self.check_http(p, &[key("leader"), key("http")], h, &mut tmpl);
            }
            check_regex(p, &[key("leader"), key("leader")], &probe.leader, true);
            if let Some(r) = &probe.self_id {
                check_regex(p, &[key("leader"), key("self_id")], r, true);
            }
        }

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
                        Some(a) => tmpl(p, &[key("workload"), key("addr")], a, false),
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
                            "`ops` belongs to the command workload",
                        );
                    }
                }
                WorkloadType::Command => {
                    if w.ops.is_empty() {
                        p.add(&path, "the command workload needs at least one [[workload.ops]]");
                    }
                    if w.ops.iter().all(|o| o.weight == 0) && !w.ops.is_empty() {
                        p.add(&[key("workload"), key("ops")], "every weight is 0");
                    }
                    for (i, op) in w.ops.iter().enumerate() {
                        for t in op.command.templates() {
                            tmpl(
                                p,
                                &[key("workload"), key("ops"), Seg::Index(i), key("command")],
                                t,
                                true,
                            );
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

        // faults
        let mut seen = std::collections::HashSet::new();
        for (i, case) in self.faults.iter().enumerate() {
            let path = [key("faults"), Seg::Index(i)];
            let at = |f: &str| [&path[..], &[key(f)]].concat();
            if case.name.trim().is_empty() {
                p.add(&at("name"), "empty: give the case a name");
            } else if !seen.insert(case.name.clone()) {
                p.add(&at("name"), format!("another case is also named `{}`", case.name));
            }
            if case.duration.min > case.duration.max {
                p.add(
                    &at("duration"),
                    "the range's first duration is longer than its second",
                );
            }
            if case.duration.max.0.is_zero() {
                p.add(&at("duration"), "must be longer than 0s");
            }
            match &case.target {
                Selector::Nodes(list) => {
                    for name in list {
                        if !names.contains(name) {
                            p.add(
                                &at("target"),
                                format!("no node `{name}`; the nodes are {}", names.join(", ")),
                            );
                        }
                    }
                }
                Selector::Random(k) if *k > n => {
                    p.add(&at("target"), format!("random:{k} but the cluster has {n} nodes"));
                }
                sel if sel.needs_leader() && self.leader.is_none() => {
                    p.add(
                        &at("target"),
                        format!("selector `{sel}` needs a [leader] probe to find the leader; add one"),
                    );
                }
                _ => {}
            }
            check_fault(p, &path, &case.fault, self.setup.start.is_some());
        }

        // schedule
        let s = &self.schedule;
        if s.rounds == 0 {
            p.add(&[key("schedule"), key("rounds")], "must be at least 1");
        }
        if s.pause.min > s.pause.max {
            p.add(
                &[key("schedule"), key("pause")],
                "the range's first duration is longer than its second",
            );
        }
        if let Some(k) = s.picks {
            if k == 0 {
                p.add(&[key("schedule"), key("picks")], "must be at least 1");
            }
            if self.faults.iter().all(|c| c.weight == 0) {
                p.add(
                    &[key("schedule"), key("picks")],
                    "every fault case has weight 0: nothing to pick",
                );
            }
        }

        // invariants
        let mut seen = std::collections::HashSet::new();
        for (i, inv) in self.invariants.iter().enumerate() {
            let path = [key("invariants"), Seg::Index(i)];
            for field in inv.unknown.keys() {
                p.add(
                    &[&path[..], &[key(field)]].concat(),
                    format!(
                        "unknown field `{field}`, expected one of {}",
                        INVARIANT_FIELDS
                            .iter()
                            .map(|f| format!("`{f}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
            }
            if inv.name().trim().is_empty() {
                p.add(
                    &[&path[..], &[key("name")]].concat(),
                    "empty: give the invariant a name",
                );
            } else if !seen.insert(inv.name().to_string()) {
                p.add(
                    &[&path[..], &[key("name")]].concat(),
                    format!("another invariant is also named `{}`", inv.name()),
                );
            }
            if inv.at.is_empty() {
                p.add(
                    &[&path[..], &[key("at")]].concat(),
                    "empty: say when it runs (start, heal, end)",
                );
            }
            self.check_check(p, &path, &inv.check, &names, &mut tmpl);
        }

        // history
        for (i, c) in self.history.checkers.iter().enumerate() {
            if !chaos_check::CHECKER_NAMES.contains(&c.as_str()) {
                p.add(
                    &[key("history"), key("checkers"), Seg::Index(i)],
                    format!(
                        "unknown checker `{c}`; valid checkers: {}",
                        chaos_check::CHECKER_NAMES.join(", ")
                    ),
                );
            }
        }
        if let Some(f) = self.history.max_error_fraction
            && !(0.0..=1.0).contains(&f)
        {
            p.add(
                &[key("history"), key("max_error_fraction")],
                "must be between 0 and 1",
            );
        }

        // teardown
        for (i, cmd) in self.teardown.commands.iter().enumerate() {
            for t in cmd.templates() {
                tmpl(p, &[key("teardown"), key("commands"), Seg::Index(i)], t, false);
            }
        }
        for (i, c) in self.teardown.collect.iter().enumerate() {
            tmpl(p, &[key("teardown"), key("collect"), Seg::Index(i)], c, false);
        }
    }

    fn check_http(
        &self,
        p: &mut Problems,
        path: &[Seg],
        h: &HttpRequest,
        tmpl: &mut impl FnMut(&mut Problems, &[Seg], &str, bool),
    ) {
        tmpl(p, &[path, &[key("addr")]].concat(), &h.addr, false);
        tmpl(p, &[path, &[key("path")]].concat(), &h.path, false);
        if let Some(b) = &h.body {
            tmpl(p, &[path, &[key("body")]].concat(), b, false);
        }
        if hyper::Method::from_bytes(h.method.as_bytes()).is_err() {
            p.add(
                &[path, &[key("method")]].concat(),
                format!("`{}` is not an HTTP method", h.method),
            );
        }
        if !h.path.starts_with('/') {
            p.add(&[path, &[key("path")]].concat(), "must start with `/`");
        }
    }

    fn check_check(
        &self,
        p: &mut Problems,
        path: &[Seg],
        c: &Check,
        names: &[String],
        tmpl: &mut impl FnMut(&mut Problems, &[Seg], &str, bool),
    ) {
        let at = |f: &str| [path, &[key(f)]].concat();
        let sources = c.command.is_some() as u8 + c.http.is_some() as u8 + c.log as u8;
        if sources != 1 {
            p.add(
                path,
                "give exactly one of `command`, `http` or `log = true` to say what to check",
            );
        }
        if let Some(cmd) = &c.command {
            for t in cmd.templates() {
                tmpl(p, &at("command"), t, false);
            }
        }
        if let Some(h) = &c.http {
            self.check_http(p, &at("http"), h, tmpl);
        }
        if c.log && c.regex.is_none() && c.not_regex.is_none() && c.agree.is_none() {
            p.add(
                path,
                "a `log` check needs `regex`, `not_regex` or `agree` to judge the log",
            );
        }
        if let Some(r) = &c.regex {
            check_regex(p, &at("regex"), r, false);
        }
        if let Some(r) = &c.not_regex {
            check_regex(p, &at("not_regex"), r, false);
        }
        if let Some(r) = &c.agree {
            check_regex(p, &at("agree"), r, true);
            if matches!(c.on, OnNodes::Any | OnNodes::Leader) {
                p.add(
                    &at("agree"),
                    "`agree` compares nodes: run it `on` all or several nodes",
                );
            }
        }
        match &c.on {
            OnNodes::Nodes(list) => {
                for name in list {
                    if !names.contains(name) {
                        p.add(
                            &at("on"),
                            format!("no node `{name}`; the nodes are {}", names.join(", ")),
                        );
                    }
                }
            }
            OnNodes::Leader if self.leader.is_none() => {
                p.add(
                    &at("on"),
                    "`leader` needs a [leader] probe to find the leader; add one",
                );
            }
            _ => {}
        }
        if let Some(t) = c.timeout
            && t.0.is_zero()
        {
            p.add(&at("timeout"), "must be longer than 0s");
        }
    }
}

/// Rewrites serde's "unknown variant `x`, expected one of `a`, `b`" into "unknown fault kind `x`;
/// valid choices: a, b", naming what the field holds.
/// What the fault model cannot say about a fault in a scenario: process faults act on the
/// system the scenario starts (so they need `[setup.start]` and take no `process`), and values
/// the node would refuse are refused before anything starts.
fn check_fault(p: &mut Problems, path: &[Seg], fault: &Fault, has_start: bool) {
    use chaos_proto::kinds::Family;
    let at = |f: &str| [path, &[key(f)]].concat();
    let kind = fault.kind();
    if fault.family() == Family::Process {
        if !has_start {
            p.add(
                &at("kind"),
                format!("`{kind}` acts on the system's processes: add [setup.start]"),
            );
        }
        let given = match fault {
            Fault::Pause(f) => f.process.is_some(),
            Fault::Kill(f) => f.process.is_some(),
            Fault::Restart(f) => f.process.is_some(),
            _ => false,
        };
        if given {
            p.add(
                &at("process"),
                format!(
                    "a scenario's `{kind}` acts on the system started by [setup.start]; `process` is \
                     for `chaos fault inject`"
                ),
            );
        }
    }
    match fault {
        Fault::Loss(f) => {
            if !(0.0..=100.0).contains(&f.percent) {
                p.add(
                    &at("percent"),
                    format!("{} is not a percentage from 0 to 100", f.percent),
                );
            }
            if !(0.0..=100.0).contains(&f.correlation) {
                p.add(
                    &at("correlation"),
                    format!("{} is not a percentage from 0 to 100", f.correlation),
                );
            }
        }
        Fault::Delay(f) => {
            if f.delay.0.is_zero() {
                p.add(&at("delay"), "must be longer than 0s");
            } else if f.delay.0 > Duration::from_secs(60) || f.jitter.0 > Duration::from_secs(60) {
                p.add(&at("delay"), "delay and jitter are at most 60s");
            }
        }
        Fault::Packet(f) => {
            if let Err(e) = f.effects.validate() {
                p.add(&[path, &[key("effects"), key(e.field)]].concat(), e.reason);
            } else if f.effects == chaos_proto::fault::PacketEffects::default() {
                p.add(
                    &at("effects"),
                    "no effect: give at least one of delay_us, loss_percent, duplicate_percent, \
                     corrupt_percent, reorder_percent",
                );
            }
        }
        Fault::Bandwidth(f) if f.rate_bps == 0 => {
            p.add(&at("rate_bps"), "must be greater than 0 (e.g. \"500kbit\")")
        }
        Fault::Link(f) if f.up.is_none() && f.mtu.is_none() => {
            p.add(path, "a `link` case needs `up` and/or `mtu`")
        }
        Fault::Restart(f) if f.grace.0 > Duration::from_secs(60) => p.add(&at("grace"), "at most 60s"),
        _ => {}
    }
}

/// The field of a fault case (`faults[2]`) an error message is about: `kind` for an unknown
/// kind, the field for an unknown one.
fn fault_field(path: &[Seg], message: &str) -> Option<String> {
    match path {
        [Seg::Key(k), Seg::Index(_)] if k == "faults" => {}
        _ => return None,
    }
    if message.starts_with("unknown variant `") {
        return Some("kind".into());
    }
    let rest = message.strip_prefix("unknown field `")?;
    rest.split_once('`').map(|(field, _)| field.to_string())
}

fn friendlier(message: &str, field: &str) -> String {
    if field.starts_with("faults[")
        && let Some(rest) = message.strip_prefix("unknown field `")
    {
        // The kind's own fields are listed by serde; the case's are always allowed.
        return format!(
            "unknown field `{}; or the case's own fields: {}",
            rest.trim_end_matches('.'),
            CASE_FIELDS.join(", ")
        );
    }
    if let Some(old) = ["container_pause", "container_stop", "container_disconnect"]
        .into_iter()
        .find(|old| message.starts_with(&format!("unknown variant `{old}`")))
    {
        let action = old.trim_start_matches("container_");
        return format!(
            "fault kind `{old}` is now kind = \"machine\" with action = \"{action}\" (the cluster's \
             machine faults)"
        );
    }
    let Some(rest) = message.strip_prefix("unknown variant `") else {
        return message.to_string();
    };
    let Some((value, expected)) = rest.split_once("`, expected ") else {
        return message.to_string();
    };
    let choices: Vec<&str> = expected
        .trim_start_matches("one of ")
        .split([',', ' '])
        .map(|c| c.trim_matches('`'))
        .filter(|c| !c.is_empty() && *c != "or")
        .collect();
    let last = field.rsplit('.').next().unwrap_or(field);
    let last = last.split('[').next().unwrap_or(last);
    let noun = match (field.split(['.', '[']).next().unwrap_or(""), last) {
        ("faults", "kind") => "fault kind",
        ("workload", "type") => "workload type",
        ("workload", "kind") => "operation kind",
        ("invariants", "at") => "invariant time",
        (_, "backend") => "backend",
        _ => "value",
    };
    format!("unknown {noun} `{value}`; valid choices: {}", choices.join(", "))
}

fn check_regex(p: &mut Problems, path: &[Seg], re: &str, needs_group: bool) {
    match regex::Regex::new(re) {
        Err(e) => p.add(path, format!("bad regex: {e}")),
        Ok(r) if needs_group && r.captures_len() < 2 => {
            p.add(path, "needs a capture group `( … )` around the part to compare")
        }
        Ok(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> ScenarioErrors {
        Scenario::parse(text, "t.toml").expect_err("should be invalid")
    }

    #[test]
    fn minimal_scenario_parses_with_defaults() {
        let s = Scenario::parse("", "demo.toml").unwrap();
        assert_eq!(s.name, "demo");
        assert_eq!(s.cluster.nodes, 3);
        assert_eq!(s.cluster.backend, Backend::Netns);
        assert_eq!(s.schedule.rounds, 1);
    }

    #[test]
    fn unknown_field_names_file_line_and_choices() {
        let e = err("[cluster]\nnodes = 3\nbackendd = \"netns\"\n");
        let e = &e.0[0];
        assert_eq!((e.file.as_str(), e.line, e.column), ("t.toml", 3, 1));
        assert!(e.message.contains("unknown field `backendd`"), "{e}");
        assert!(e.message.contains("backend"), "{e}");
    }

    #[test]
    fn unknown_kind_selector_backend_list_choices() {
        let text = "[[faults]]\nname = \"a\"\nkind = \"kil\"\ntarget = \"one\"\n";
        let e = &err(text).0[0];
        assert_eq!(e.line, 3, "{e}");
        assert_eq!(e.field, "faults[0].kind");
        assert!(
            e.message.contains("kill") && e.message.contains("partition"),
            "{e}"
        );

        let text = "[[faults]]\nname = \"a\"\nkind = \"kill\"\ntarget = \"leeder\"\n";
        let e = &err(text).0[0];
        assert_eq!(e.line, 4, "{e}");
        assert_eq!(e.field, "faults[0].target");
        assert!(
            e.message.contains("leeder") && e.message.contains("followers"),
            "{e}"
        );

        let e = &err("[cluster]\nbackend = \"dockr\"\n").0[0];
        assert_eq!(e.line, 2, "{e}");
        assert!(
            e.message.contains("local") && e.message.contains("netns") && e.message.contains("docker"),
            "{e}"
        );
    }

    #[test]
    fn a_field_of_another_kind_is_refused_at_its_line_with_the_valid_fields() {
        let text = "[[faults]]\nname = \"cut\"\nkind = \"partition\"\ntarget = \"one\"\npercent = 20\n";
        let e = &err(text).0[0];
        assert_eq!((e.line, e.field.as_str()), (5, "faults[0].percent"), "{e}");
        assert!(
            e.to_string().starts_with(
                "t.toml:5:11: field `faults[0].percent`: unknown field `percent`, expected `traffic`"
            ),
            "{e}"
        );
        assert!(e.message.contains("name, target, weight"), "{e}");
        // A missing parameter is refused, not defaulted.
        let text = "[[faults]]\nname = \"l\"\nkind = \"loss\"\ntarget = \"one\"\n";
        let e = &err(text).0[0];
        assert!(e.message.contains("missing field `percent`"), "{e}");
        // The old container kinds say what they became.
        let text = "[[faults]]\nname = \"c\"\nkind = \"container_stop\"\ntarget = \"one\"\n";
        let e = &err(text).0[0];
        assert_eq!((e.line, e.field.as_str()), (3, "faults[0].kind"), "{e}");
        assert!(
            e.message.contains("kind = \"machine\" with action = \"stop\""),
            "{e}"
        );
        // Parameters of the fault model parse in place.
        let text = "[setup.start]\ncommand = \"sleep 9\"\n[[faults]]\nname = \"k\"\nkind = \"kill\"\ntarget = \"one\"\nsignal = \"SIGTERM\"\n[[faults]]\nname = \"b\"\nkind = \"bandwidth\"\ntarget = \"one\"\nrate_bps = \"500kbit\"\n[[faults]]\nname = \"p\"\nkind = \"partition\"\ntarget = \"one\"\ntraffic = { direction = \"in\" }\n";
        let s = Scenario::parse(text, "t.toml").unwrap();
        assert!(matches!(&s.faults[0].fault, Fault::Kill(k) if k.signal == chaos_proto::Signal::TERM));
        assert!(matches!(&s.faults[1].fault, Fault::Bandwidth(b) if b.rate_bps == 500_000));
        assert!(
            matches!(&s.faults[2].fault, Fault::Partition(p) if p.traffic.direction == chaos_proto::fault::Direction::In)
        );
        // A scenario's process faults act on its system, not on a process named in the file.
        let text = "[setup.start]\ncommand = \"sleep 9\"\n[[faults]]\nname = \"k\"\nkind = \"kill\"\ntarget = \"one\"\nprocess = \"all\"\n";
        let e = &err(text).0[0];
        assert_eq!((e.line, e.field.as_str()), (7, "faults[0].process"), "{e}");
    }

    #[test]
    fn invariants_are_checks_with_a_time_and_refuse_unknown_fields_at_their_line() {
        let text = "[[invariants]]\nname = \"up\"\ncommand = \"true\"\nat = [\"end\"]\ntimeout = \"5s\"\n";
        let s = Scenario::parse(text, "t.toml").unwrap();
        let inv = &s.invariants[0];
        assert_eq!((inv.name(), inv.at.as_slice()), ("up", &[When::End][..]));
        assert_eq!(inv.check.timeout, Some(Dur::secs(5)));
        let text = "[[invariants]]\nname = \"up\"\ncommand = \"true\"\ntimeuot = \"5s\"\n";
        let e = &err(text).0[0];
        assert_eq!((e.line, e.field.as_str()), (4, "invariants[0].timeuot"), "{e}");
        assert!(
            e.message.contains("unknown field `timeuot`") && e.message.contains("`timeout`"),
            "{e}"
        );
    }

    #[test]
    fn semantic_errors_are_located() {
        let text = "\n[cluster]\nnodes = 3\n\n[[faults]]\nname = \"x\"\nkind = \"loss\"\ntarget = [\"n1\", \"n9\"]\npercent = 300\n";
        let errs = err(text);
        let fields: Vec<_> = errs.0.iter().map(|e| (e.field.as_str(), e.line)).collect();
        assert!(fields.contains(&("faults[0].target", 8)), "{errs}");
        assert!(fields.contains(&("faults[0].percent", 9)), "{errs}");
        assert!(
            errs.to_string()
                .contains("no node `n9`; the nodes are n1, n2, n3"),
            "{errs}"
        );
    }

    #[test]
    fn leader_selector_needs_probe_and_templates_are_checked() {
        let text = "[setup.start]\ncommand = [\"sleep\", \"{{ node.nmae }}\"]\n[[faults]]\nname = \"k\"\nkind = \"kill\"\ntarget = \"leader\"\n";
        let errs = err(text);
        let s = errs.to_string();
        assert!(s.contains("needs a [leader] probe"), "{s}");
        assert!(
            s.contains("setup.start.command") && s.contains("bad template"),
            "{s}"
        );
    }

    #[test]
    fn durations_and_ranges() {
        let text =
            "[[faults]]\nname = \"p\"\nkind = \"partition\"\ntarget = \"one\"\nduration = [\"2s\", \"1s\"]\n";
        let e = &err(text).0[0];
        assert_eq!(e.field, "faults[0].duration");
        let e = &err("[schedule]\npause = \"5 parsecs\"\n").0[0];
        assert!(e.message.contains("not a duration"), "{e}");
        assert_eq!(e.line, 2);
    }
}
