//! Scenarios: a TOML file (or a value built in code) describing a cluster, the system under test,
//! a workload, fault cases, a schedule and invariants — planned from one seed and run against
//! real processes. `docs/scenarios.md` documents every field.
//!
//! * [`model`]: the file's types, parsing and validation (errors name file, line and field).
//! * [`plan`]: the seeded plan — every random choice of a run drawn from one seed.
//! * [`builder`]: the same scenarios built in Rust ([`Scenario::builder`]).
//! * [`template`]: the Jinja templates used in commands, files and checks.
//! * [`engine`]: runs a plan against real processes and gives a verdict ([`Runner`]).
//! * [`campaign`]: one scenario under many seeds, several at a time, with one verdict.
//! * [`tasks`]: kubetest-style fan-out of a task list over a cluster's nodes.
//! * [`checks`]: readiness checks, invariants and the leader probe.
//! * [`workload`]: clients that load the system and record every operation.
//! * [`rundir`]: the run directory, its event log and `summary.json`.
//! * [`http`]: a small HTTP/1.1 client over a node's TCP proxy.
//! * `strategy` (feature `proptest`): proptest strategies generating fault schedules that shrink.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use chaos_scenario::{Runner, Scenario};
//! let scenario = Scenario::from_file("scenarios/raft.toml")?;
//! let outcome = Runner::new(scenario).seed(42).rounds(1).run().await?;
//! assert!(outcome.passed(), "replay with: {}", outcome.replay);
//! # Ok(()) }
//! ```

pub mod builder;
pub mod campaign;
pub mod checks;
pub mod engine;
pub mod http;
pub mod model;
pub mod nemesis;
pub mod plan;
pub mod rundir;
#[cfg(any(test, feature = "proptest"))]
pub mod strategy;
mod sut;
pub mod tasks;
pub mod template;
pub mod workload;

use std::collections::BTreeMap;

pub use builder::ScenarioBuilder;
pub use engine::{Progress, RunError, RunObserver, RunOptions, RunOutcome, Runner};
pub use model::{Scenario, ScenarioError, ScenarioErrors};
pub use plan::{Plan, PlannedTarget, Step};
pub use rundir::{RunStatus, StepStatus, Summary};

/// A fresh seed from the operating system, for runs and plans given none.
pub fn draw_seed() -> u64 {
    rand::random()
}

impl Scenario {
    /// Applies `--rounds`.
    pub fn override_rounds(&mut self, rounds: Option<u32>) -> Result<(), ScenarioErrors> {
        if let Some(r) = rounds {
            if r == 0 {
                return Err(ScenarioErrors(vec![ScenarioError {
                    file: "--rounds".into(),
                    line: 0,
                    column: 0,
                    field: String::new(),
                    message: "must be at least 1".into(),
                }]));
            }
            self.schedule.rounds = r;
        }
        Ok(())
    }

    /// Applies `--value NAME=VALUE` overrides: each name must be declared in `[values]`, and its
    /// new value has the declared value's type (see [`Scenario::parse_value`]).
    pub fn override_values(&mut self, values: &BTreeMap<String, toml::Value>) -> Result<(), ScenarioErrors> {
        let mut problems = Vec::new();
        for (name, value) in values {
            match self.values.get(name) {
                None => problems.push(value_error(name, self.undeclared(name))),
                Some(declared) if declared.type_str() != value.type_str() => problems.push(value_error(
                    name,
                    format!(
                        "[values] {name} is a {}, not a {}",
                        declared.type_str(),
                        value.type_str()
                    ),
                )),
                Some(_) => {}
            }
        }
        if !problems.is_empty() {
            return Err(ScenarioErrors(problems));
        }
        for (name, value) in values {
            self.values.insert(name.clone(), value.clone());
        }
        Ok(())
    }

    /// Reads the text of a `--value NAME=VALUE` as the type `[values] NAME` declares: a string
    /// as given, a boolean (`true`/`false`), an integer, a float, or — for arrays and tables —
    /// a TOML value. The error names the value, its declared type and what was given.
    pub fn parse_value(&self, name: &str, text: &str) -> Result<toml::Value, ScenarioErrors> {
        let Some(declared) = self.values.get(name) else {
            return Err(ScenarioErrors(vec![value_error(name, self.undeclared(name))]));
        };
        let wrong = || {
            ScenarioErrors(vec![value_error(
                name,
                format!(
                    "[values] {name} is a {}: `{text}` is not one",
                    declared.type_str()
                ),
            )])
        };
        Ok(match declared {
            toml::Value::String(_) => toml::Value::String(text.to_string()),
            toml::Value::Boolean(_) => toml::Value::Boolean(text.parse().map_err(|_| wrong())?),
            toml::Value::Integer(_) => toml::Value::Integer(text.parse().map_err(|_| wrong())?),
            toml::Value::Float(_) => toml::Value::Float(text.parse().map_err(|_| wrong())?),
            _ => {
                let table: toml::Table = toml::from_str(&format!("v = {text}")).map_err(|_| wrong())?;
                let value = table.get("v").cloned().ok_or_else(wrong)?;
                if value.type_str() != declared.type_str() {
                    return Err(wrong());
                }
                value
            }
        })
    }

    /// Why `name` cannot be overridden: it is not in `[values]` (with the names that are).
    fn undeclared(&self, name: &str) -> String {
        let declared: Vec<&str> = self.values.keys().map(String::as_str).collect();
        if declared.is_empty() {
            format!("the scenario declares no [values], so there is no `{name}` to set")
        } else {
            format!(
                "the scenario's [values] has no `{name}`; it declares: {}",
                declared.join(", ")
            )
        }
    }
}

/// An error about `--value NAME=…`.
fn value_error(name: &str, message: String) -> ScenarioError {
    ScenarioError {
        file: "--value".into(),
        line: 0,
        column: 0,
        field: format!("values.{name}"),
        message,
    }
}
