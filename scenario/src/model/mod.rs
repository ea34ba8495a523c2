//! Scenario files: the TOML types, parsing, and validation.
//!
//! Every table denies unknown fields. Errors name the file, the line and column (from TOML spans),
//! the field's path (`faults[2].kind`) and, for closed sets (fault kinds, target selectors,
//! backends, checkers), the valid choices. `docs/scenarios.md` documents each field with an
//! example.
//!
//! This module holds the tables and loading (the `[workload]` ones in `workload`); `values` the
//! scalar values and closed sets, `errors` the errors and how they are located, `validate` what
//! serde cannot check, section by section. A fault case's fault is the fault model's [`Fault`] (`chaos_proto::kinds`), flattened
//! into the case.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use chaos_proto::Fault;

mod errors;
#[cfg(test)]
mod tests;
mod validate;
mod values;
mod workload;

use errors::{Locator, Problems, fault_field, friendlier, key, path_string};
pub use errors::{ScenarioError, ScenarioErrors};
pub use values::*;
pub use workload::*;

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
    /// Only machines whose labels include every one of these pairs, e.g. `{ rack = "1" }`
    /// (`chaos::backend::ClusterOptions::host_labels`); empty: any. Backends whose machines
    /// carry no labels (all but `hosts`) refuse a selector when the cluster is created.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// `[cluster.docker]`: settings of the `docker` backend, read whichever backend the run
    /// uses (so `--backend docker` finds them) and ignored by the others.
    #[serde(default, skip_serializing_if = "DockerSpec::is_empty")]
    pub docker: DockerSpec,
}

impl Default for ClusterSpec {
    fn default() -> Self {
        ClusterSpec {
            backend: Backend::default(),
            nodes: default_nodes(),
            labels: BTreeMap::new(),
            docker: DockerSpec::default(),
        }
    }
}

/// `[cluster.docker]`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerSpec {
    /// Absolute host paths of files and directories baked into the default node image at the
    /// same paths, with the shared libraries their ELF files need (after those of
    /// `CHAOS_DOCKER_INCLUDE`; `chaos::backend::ClusterOptions::image_include`), e.g. a JDK.
    /// Whether they exist is checked when the image is planned, on the host that builds it.
    #[serde(default)]
    pub include: Vec<String>,
}

impl DockerSpec {
    /// Whether nothing is set (the section is then left out when the scenario is written).
    pub fn is_empty(&self) -> bool {
        self.include.is_empty()
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
    /// The system under test: its main process on each node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<StartSpec>,
    /// More named processes per node (a sidecar, a manager), each with its own command, stop
    /// signal, log and readiness, started after `start` in order (each once the previous one's
    /// `ready` checks passed); process faults may target one by name.
    #[serde(default)]
    pub services: Vec<StartSpec>,
    /// Checks that must pass before faults begin.
    #[serde(default)]
    pub ready: Vec<Check>,
    /// One-time steps run on one node once the system is ready (creating a table, a topic, a
    /// stream), in order, each retried until it succeeds or its timeout expires.
    #[serde(default)]
    pub once: Vec<OnceStep>,
}

/// `[[setup.once]]`: a command run once, on one node, after the readiness checks passed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnceStep {
    /// Name shown in progress, events and errors (default: the command).
    #[serde(default)]
    pub name: String,
    /// Program and arguments (templates, rendered for the node).
    pub command: CommandLine,
    /// The node it runs on (default the first, `n1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// How long it may keep failing before the run gives up (default 30s, scaled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Dur>,
    /// Pause between attempts (default 1s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Dur>,
}

/// `[[setup.ship]]`: a file copied from the runner — `from` a path or program there, or a
/// `builtin` adapter of chaos (exactly one of the two).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ship {
    /// A program name looked up on the runner's `PATH`, or a path on the runner; empty with
    /// `builtin`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub from: String,
    /// A client adapter shipped with chaos, by binary name (`chaos-adapter-postgres`; the list
    /// is `chaos::backend::workspace_binary::BUILTIN_ADAPTERS`): the runner finds or builds it
    /// at chaos's own version, statically linked when the backend's nodes need it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builtin: Option<String>,
    /// Destination on the node (template); default `{{ node.root }}/bin/<file name>` (a
    /// built-in's file name is its name). Templates see it as `bin.<file name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Permissions (default 0o755).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
}

impl Ship {
    /// The name templates know it by in `bin`: the built-in's name, else `from`'s file name.
    pub fn name(&self) -> String {
        match &self.builtin {
            Some(name) => name.clone(),
            None => crate::template::ship_file_name(&self.from),
        }
    }
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

/// `[setup.start]`: how the system under test starts on each node; also each
/// `[[setup.services]]` entry, which needs a `name`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartSpec {
    /// `[[setup.services]]`: the service's name (its log is `logs/NAME.log`; fault cases target
    /// it with `service = "NAME"`). `[setup.start]` is the service `system`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
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
    /// This service's own readiness checks: they must pass, in order, after it started on every
    /// node and before the next service starts (a store the next one depends on must be
    /// healthy first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ready: Vec<Check>,
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

/// `measure = { to = "n2", … }` in a check: throughput, RTT and loss from the check's node to
/// node `to`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeasureCheck {
    /// The receiving node.
    pub to: String,
    /// `tcp` (default) or `udp`.
    #[serde(default)]
    pub protocol: chaos::net::MeasureProtocol,
    /// How long to send (default 2 s, at most 60 s).
    #[serde(default = "default_measure_duration")]
    pub duration: Dur,
    /// UDP sending rate (tc-style, default `"100mbit"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp_rate: Option<String>,
    /// Fails below this throughput, Mbit/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_mbit: Option<f64>,
    /// Fails above this loss, percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_loss_percent: Option<f64>,
}

fn default_measure_duration() -> Dur {
    Dur::secs(2)
}

fn default_method() -> String {
    "GET".into()
}
fn default_path() -> String {
    "/".into()
}

/// A check: run something on nodes and judge its output. Used by `[[setup.ready]]` and
/// `[[invariants]]`. Exactly one of `command`, `http`, `log` or `measure` says what to run.
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
    /// A network measurement from the node to a peer (`chaos::net::measure`): its one-line
    /// summary is the output judged (and shown in the summary), and it fails below its
    /// thresholds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measure: Option<MeasureCheck>,
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
    /// Stop trying, before the timeout, once this many attempts in a row failed identically
    /// (default: keep trying until the timeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub give_up_after: Option<u32>,
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
    "measure",
    "regex",
    "not_regex",
    "agree",
    "timeout",
    "interval",
    "give_up_after",
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
    /// Process faults: the `[[setup.services]]` process they act on (default: the system
    /// `[setup.start]` starts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// What it does: `kind` and that kind's fields.
    #[serde(flatten)]
    pub fault: Fault,
}

/// The fields every fault case has besides its kind's own.
pub const CASE_FIELDS: &[&str] = &[
    "name", "target", "weight", "duration", "overlap", "service", "kind",
];

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
    /// The model the list-append checker holds `txn` operations to: `read-committed`,
    /// `snapshot-isolation`, `serializable` or `strict-serializable` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency_model: Option<chaos_check::ConsistencyModel>,
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

    /// The processes started on every node, in order: `[setup.start]` (named `system`), then
    /// `[[setup.services]]`.
    pub fn services(&self) -> Vec<(&str, &StartSpec)> {
        self.setup
            .start
            .iter()
            .map(|s| ("system", s))
            .chain(self.setup.services.iter().map(|s| (s.name.as_str(), s)))
            .collect()
    }

    /// Scales a timeout by `timeout_multiplier`.
    pub fn scaled(&self, d: Duration) -> Duration {
        d.mul_f64(self.timeout_multiplier)
    }
}
