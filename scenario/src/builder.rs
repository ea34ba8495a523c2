//! Building scenarios in Rust instead of TOML: the same types, the same validation.
//!
//! ```
//! use chaos_scenario::model::{Backend, FaultCase, Invariant, Selector};
//! use chaos_proto::kinds::{Fault, Kill};
//! use chaos_scenario::Scenario;
//!
//! let scenario = Scenario::builder("sleepers")
//!     .backend(Backend::named("local").unwrap())
//!     .nodes(3)
//!     .start(["sleep", "600"])
//!     .fault(FaultCase::new("kill-one", Fault::Kill(Kill::default()), Selector::One).duration_ms(200, 500))
//!     .invariant(Invariant::command("alive", "pgrep -f 'sleep 600'"))
//!     .build()
//!     .unwrap();
//! assert_eq!(scenario.faults.len(), 1);
//! ```

use std::collections::BTreeMap;

use chaos_proto::kinds::Fault;
#[cfg(test)]
use chaos_proto::kinds::Kill;

use super::model::{
    Backend, Check, CommandLine, Dur, DurRange, FaultCase, HttpRequest, Invariant, LeaderProbe, OnNodes,
    Scenario, ScenarioErrors, Selector, StartSpec, When, WorkloadSpec, WorkloadType,
};

/// Builds a [`Scenario`]; [`ScenarioBuilder::build`] validates it like a file.
#[derive(Debug, Clone)]
pub struct ScenarioBuilder {
    scenario: Scenario,
}

impl Scenario {
    /// A builder for a scenario named `name`, with every default of an empty file.
    pub fn builder(name: impl Into<String>) -> ScenarioBuilder {
        let mut scenario: Scenario = toml::from_str("").expect("an empty scenario has every default");
        scenario.name = name.into();
        ScenarioBuilder { scenario }
    }
}

fn argv<I, S>(argv: I) -> CommandLine
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    CommandLine::Argv(argv.into_iter().map(Into::into).collect())
}

impl ScenarioBuilder {
    /// The backend.
    pub fn backend(mut self, backend: Backend) -> Self {
        self.scenario.cluster.backend = backend;
        self
    }

    /// The number of nodes.
    pub fn nodes(mut self, n: usize) -> Self {
        self.scenario.cluster.nodes = n;
        self
    }

    /// A value for templates (`values.NAME`).
    pub fn value(mut self, name: impl Into<String>, value: impl Into<toml::Value>) -> Self {
        self.scenario.values.insert(name.into(), value.into());
        self
    }

    /// Multiplies every timeout.
    pub fn timeout_multiplier(mut self, m: f64) -> Self {
        self.scenario.timeout_multiplier = m;
        self
    }

    /// Ships a program from the runner's PATH (or a path) to every node, as `bin.<name>`.
    pub fn ship(mut self, from: impl Into<String>) -> Self {
        self.scenario.setup.ship.push(super::model::Ship {
            from: from.into(),
            builtin: None,
            to: None,
            mode: None,
        });
        self
    }

    /// Ships a client adapter of chaos (`chaos-adapter-echo`, …) to every node, as
    /// `bin.<name>`: found or built at chaos's version, with the linkage the backend needs.
    pub fn ship_builtin(mut self, name: impl Into<String>) -> Self {
        self.scenario.setup.ship.push(super::model::Ship {
            from: String::new(),
            builtin: Some(name.into()),
            to: None,
            mode: None,
        });
        self
    }

    /// The system's start command (program and arguments, each a template).
    pub fn start<I, S>(mut self, command: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.scenario.setup.start = Some(StartSpec {
            name: String::new(),
            command: argv(command),
            env: BTreeMap::new(),
            cwd: None,
            data_dir: None,
            stop_signal: None,
            stop_timeout: None,
            ready: Vec::new(),
        });
        self
    }

    /// Replaces the whole start specification.
    pub fn start_spec(mut self, spec: StartSpec) -> Self {
        self.scenario.setup.start = Some(spec);
        self
    }

    /// A readiness check.
    pub fn ready(mut self, check: Check) -> Self {
        self.scenario.setup.ready.push(check);
        self
    }

    /// The leader probe.
    pub fn leader(mut self, probe: LeaderProbe) -> Self {
        self.scenario.leader = Some(probe);
        self
    }

    /// The workload.
    pub fn workload(mut self, workload: WorkloadSpec) -> Self {
        self.scenario.workload = Some(workload);
        self
    }

    /// A fault case.
    pub fn fault(mut self, case: FaultCase) -> Self {
        self.scenario.faults.push(case);
        self
    }

    /// An invariant.
    pub fn invariant(mut self, invariant: Invariant) -> Self {
        self.scenario.invariants.push(invariant);
        self
    }

    /// Rounds of the schedule.
    pub fn rounds(mut self, rounds: u32) -> Self {
        self.scenario.schedule.rounds = rounds;
        self
    }

    /// Pause between cases.
    pub fn pause_ms(mut self, min: u64, max: u64) -> Self {
        self.scenario.schedule.pause = DurRange::between(Dur::millis(min), Dur::millis(max));
        self
    }

    /// History checkers (names from `chaos_check::CHECKER_NAMES`).
    pub fn checkers<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.scenario.history.checkers = names.into_iter().map(Into::into).collect();
        self
    }

    /// Availability bound for the history (largest error fraction during a case).
    pub fn max_error_fraction(mut self, f: f64) -> Self {
        self.scenario.history.max_error_fraction = Some(f);
        self
    }

    /// Gives direct access to anything else.
    pub fn edit(mut self, f: impl FnOnce(&mut Scenario)) -> Self {
        f(&mut self.scenario);
        self
    }

    /// Validates and returns the scenario.
    pub fn build(self) -> Result<Scenario, ScenarioErrors> {
        self.scenario.validate()?;
        Ok(self.scenario)
    }
}

impl FaultCase {
    /// A case of `fault` with weight 1 and a 5 s duration, e.g.
    /// `FaultCase::new("kill-one", Fault::Kill(Kill::default()), Selector::One)`.
    pub fn new(name: impl Into<String>, fault: Fault, target: Selector) -> FaultCase {
        FaultCase {
            name: name.into(),
            target,
            weight: 1,
            duration: DurRange::exactly(Dur::secs(5)),
            overlap: false,
            service: None,
            fault,
        }
    }

    /// Duration drawn from `min..=max` milliseconds.
    pub fn duration_ms(mut self, min: u64, max: u64) -> FaultCase {
        self.duration = DurRange::between(Dur::millis(min), Dur::millis(max));
        self
    }

    /// Relative weight.
    pub fn weight(mut self, w: u32) -> FaultCase {
        self.weight = w;
        self
    }
}

impl HttpRequest {
    /// `GET path` to `addr` (templates).
    pub fn get(addr: impl Into<String>, path: impl Into<String>) -> HttpRequest {
        HttpRequest {
            addr: addr.into(),
            method: "GET".into(),
            path: path.into(),
            body: None,
            status: None,
        }
    }

    /// `POST path` with a JSON `body` to `addr` (templates).
    pub fn post(addr: impl Into<String>, path: impl Into<String>, body: impl Into<String>) -> HttpRequest {
        HttpRequest {
            addr: addr.into(),
            method: "POST".into(),
            path: path.into(),
            body: Some(body.into()),
            status: None,
        }
    }
}

impl Check {
    /// An HTTP check on every node.
    pub fn http(name: impl Into<String>, request: HttpRequest) -> Check {
        Check {
            name: name.into(),
            on: OnNodes::All,
            command: None,
            http: Some(request),
            log: false,
            measure: None,
            regex: None,
            not_regex: None,
            agree: None,
            timeout: None,
            interval: None,
            give_up_after: None,
        }
    }

    /// Output must match `re`.
    pub fn regex(mut self, re: impl Into<String>) -> Check {
        self.regex = Some(re.into());
        self
    }

    /// Timeout in seconds.
    pub fn timeout_secs(mut self, s: u64) -> Check {
        self.timeout = Some(Dur::secs(s));
        self
    }
}

impl Invariant {
    fn blank(name: impl Into<String>) -> Invariant {
        Invariant::of(Check {
            name: name.into(),
            on: OnNodes::All,
            command: None,
            http: None,
            log: false,
            measure: None,
            regex: None,
            not_regex: None,
            agree: None,
            timeout: None,
            interval: None,
            give_up_after: None,
        })
    }

    /// A shell command on every node that must exit 0, after every heal and at the end.
    pub fn command(name: impl Into<String>, shell: impl Into<String>) -> Invariant {
        let mut inv = Invariant::blank(name);
        inv.check.command = Some(CommandLine::Shell(shell.into()));
        inv
    }

    /// An HTTP request on every node that must succeed, after every heal and at the end.
    pub fn http(name: impl Into<String>, request: HttpRequest) -> Invariant {
        let mut inv = Invariant::blank(name);
        inv.check.http = Some(request);
        inv
    }

    /// Output must match `re`.
    pub fn regex(mut self, re: impl Into<String>) -> Invariant {
        self.check.regex = Some(re.into());
        self
    }

    /// The first capture of `re` must be the same on every node.
    pub fn agree(mut self, re: impl Into<String>) -> Invariant {
        self.check.agree = Some(re.into());
        self
    }

    /// When it runs.
    pub fn at(mut self, at: impl IntoIterator<Item = When>) -> Invariant {
        self.at = at.into_iter().collect();
        self
    }

    /// The recovery bound, seconds.
    pub fn timeout_secs(mut self, s: u64) -> Invariant {
        self.check.timeout = Some(Dur::secs(s));
        self
    }
}

impl LeaderProbe {
    /// An HTTP probe on every node; `leader` and `self_id` capture identities.
    pub fn http(request: HttpRequest, leader: impl Into<String>, self_id: Option<&str>) -> LeaderProbe {
        LeaderProbe {
            command: None,
            http: Some(request),
            leader: leader.into(),
            self_id: self_id.map(str::to_string),
            timeout: None,
        }
    }
}

impl WorkloadSpec {
    /// The key-value workload against etcd's gateway at `addr` (template), 50 ops/s, 4 clients.
    pub fn kv(addr: impl Into<String>) -> WorkloadSpec {
        WorkloadSpec {
            kind: WorkloadType::Kv,
            rate: 50.0,
            concurrency: 4,
            timeout: None,
            keys: 8,
            addr: Some(addr.into()),
            prefix: None,
            mix: None,
            final_reads: true,
            ops: Vec::new(),
            exit_codes: None,
            adapter: None,
            txn: None,
        }
    }

    /// Operations per second and clients.
    pub fn load(mut self, rate: f64, concurrency: usize) -> WorkloadSpec {
        self.rate = rate;
        self.concurrency = concurrency;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_scenarios_are_validated() {
        let err = Scenario::builder("b")
            .fault(FaultCase::new(
                "k",
                Fault::Kill(Kill::default()),
                Selector::Leader,
            ))
            .build()
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs a [leader] probe"), "{err}");
        assert!(err.contains("add [setup.start]"), "{err}");
        let ok = Scenario::builder("b")
            .start(["sleep", "9"])
            .fault(FaultCase::new("k", Fault::Kill(Kill::default()), Selector::One).duration_ms(100, 200))
            .build()
            .unwrap();
        assert_eq!(ok.cluster.nodes, 3);
    }
}
