//! Scenarios: a TOML file (or a value built in code) describing a cluster, the system under test,
//! a workload, fault cases, a schedule and invariants — planned from one seed and run against
//! real processes. `docs/scenarios.md` documents every field.
//!
//! * [`model`]: the file's types, parsing and validation (errors name file, line and field).
//! * [`plan`]: the seeded plan — every random choice of a run drawn from one seed.
//! * [`template`]: the Jinja templates used in commands, files and checks.

pub mod model;
pub mod plan;
pub mod template;

pub use model::{Scenario, ScenarioError, ScenarioErrors};
pub use plan::{Plan, PlannedTarget, Step};

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
