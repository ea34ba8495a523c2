//! The scalar values and closed sets of scenario files: durations and their ranges, signals,
//! command lines, backends, target selectors, node sets, times and workload kinds.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

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

/// The backend a scenario runs on: a name from the runner's backend registry
/// ([`chaos::backend::registry`]), checked when the scenario is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backend(&'static chaos::backend::Backend);

impl Backend {
    /// The backend named `name`, when the registry knows it.
    pub fn named(name: &str) -> Result<Backend, String> {
        chaos::backend::registry::find(name)
            .map(Backend)
            .map_err(|e| e.to_string())
    }

    /// The backend's name.
    pub fn name(self) -> &'static str {
        self.0.name
    }

    /// The registry's entry: availability, constructor, limits, what its nodes can do.
    pub fn entry(self) -> &'static chaos::backend::Backend {
        self.0
    }
}

impl Default for Backend {
    /// `netns` where it is compiled in (Linux), else the first registered backend.
    fn default() -> Self {
        Backend::named("netns").unwrap_or(Backend(&chaos::backend::registry::all()[0]))
    }
}

impl FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Backend::named(s)
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for Backend {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Backend {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Backend::named(&name).map_err(serde::de::Error::custom)
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
    /// A long-lived adapter process per client speaking JSON lines (`docs/adapters.md`).
    Adapter,
}

/// Where a client's adapter process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdapterPlace {
    /// On the client's node, through its agent (it reaches node-local addresses).
    #[default]
    Node,
    /// On the runner, as a child process of `chaos run`.
    Runner,
}

/// An outcome a command's exit code maps to, besides `ok` (exit 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotOk {
    /// It definitely did not take effect.
    Fail,
    /// It may or may not have taken effect.
    #[default]
    Unknown,
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
    /// `adapter` workloads only: compare-and-set the register from the value this client last
    /// read or wrote there (absent if none) to a new unique value.
    Cas,
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
    /// `adapter` workloads only: a list-append transaction, drawn as `[workload.txn]` says.
    Txn,
}

impl CommandOpKind {
    /// The history kind it records.
    pub fn op_kind(self) -> chaos_check::OpKind {
        use chaos_check::OpKind;
        match self {
            CommandOpKind::Read => OpKind::Read,
            CommandOpKind::Write => OpKind::Write,
            CommandOpKind::Delete => OpKind::Delete,
            CommandOpKind::Cas => OpKind::Cas,
            CommandOpKind::Add => OpKind::Add,
            CommandOpKind::ReadSet => OpKind::ReadSet,
            CommandOpKind::Incr => OpKind::Incr,
            CommandOpKind::ReadCounter => OpKind::ReadCounter,
            CommandOpKind::Generate => OpKind::Generate,
            CommandOpKind::Txn => OpKind::Txn,
        }
    }
}
