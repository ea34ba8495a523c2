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
}
