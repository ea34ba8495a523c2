//! Proptest strategies that generate fault schedules for a scenario (feature `proptest`).
//!
//! A generated [`Plan`] is any sequence of the scenario's cases, with targets drawn as the seeded
//! planner draws them and durations and pauses inside the scenario's ranges. Proptest shrinks a
//! failing plan by dropping steps, moving toward the first case and shortening durations, so a
//! failure found under a long random schedule is reported as a minimal one — which
//! [`Runner::plan`](super::Runner::plan) runs and `chaos run FILE --plan plan.json` replays.
//!
//! ```no_run
//! use chaos_scenario::{Runner, Scenario, strategy};
//! use proptest::prelude::*;
//! use proptest::test_runner::{Config, TestRunner};
//!
//! let scenario = Scenario::from_file("scenarios/raft.toml").unwrap();
//! let rt = tokio::runtime::Runtime::new().unwrap();
//! let mut runner = TestRunner::new(Config { cases: 2, ..Config::default() });
//! runner
//!     .run(&strategy::plans(&scenario, 1..=3), |plan| {
//!         let outcome = rt
//!             .block_on(Runner::new(scenario.clone()).plan(plan).run())
//!             .map_err(|e| TestCaseError::fail(e.to_string()))?;
//!         prop_assert!(outcome.passed(), "{}", outcome.replay);
//!         Ok(())
//!     })
//!     .unwrap();
//! ```

use std::ops::RangeInclusive;

use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::Xoshiro256PlusPlus;

use super::model::{DurRange, Scenario};
use super::plan::{Plan, Step, plan_target};

fn ms_range(r: DurRange) -> RangeInclusive<u64> {
    r.min.0.as_millis() as u64..=r.max.0.as_millis() as u64
}

/// One step's raw choices: which case, the seed of its target draw, its duration and pause.
fn raw_step(scenario: &Scenario) -> impl Strategy<Value = (usize, u64, u64, u64)> + use<> {
    let cases: Vec<usize> = scenario
        .faults
        .iter()
        .enumerate()
        .filter(|(_, c)| c.weight > 0)
        .map(|(i, _)| i)
        .collect();
    let durations: Vec<RangeInclusive<u64>> = scenario.faults.iter().map(|c| ms_range(c.duration)).collect();
    let pause = ms_range(scenario.schedule.pause);
    (0..cases.len().max(1)).prop_flat_map(move |k| {
        let case = cases.get(k).copied().unwrap_or(0);
        let duration = durations.get(case).cloned().unwrap_or(0..=0);
        (Just(case), any::<u64>(), duration, pause.clone())
    })
}

/// Plans of `steps` steps (a range, e.g. `1..=5`) over the scenario's cases with positive
/// weight. The scenario must have at least one such case.
pub fn plans(scenario: &Scenario, steps: RangeInclusive<usize>) -> impl Strategy<Value = Plan> + use<> {
    let scenario = scenario.clone();
    let raw = proptest::collection::vec(raw_step(&scenario), steps);
    (raw, any::<u64>(), any::<u64>()).prop_map(move |(raw, seed, workload_seed)| {
        let nodes = scenario.node_names();
        let steps = raw
            .into_iter()
            .enumerate()
            .map(|(i, (case, target_seed, duration_ms, pause_ms))| {
                let c = &scenario.faults[case];
                let mut rng = Xoshiro256PlusPlus::seed_from_u64(target_seed);
                Step {
                    number: i + 1,
                    round: 1,
                    case: c.name.clone(),
                    target: plan_target(&mut rng, &c.target, &nodes),
                    duration_ms,
                    pause_ms,
                    overlap: c.overlap,
                    fault: c.fault.clone(),
                    service: c.service.clone(),
                }
            })
            .collect();
        Plan {
            scenario: scenario.name.clone(),
            seed,
            nodes,
            rounds: 1,
            workload_seed,
            steps,
        }
    })
}

#[cfg(test)]
mod tests {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    use super::*;

    const TEXT: &str = r#"
[setup.start]
command = "sleep 100"
[schedule]
pause = ["100ms", "300ms"]
[[faults]]
name = "kill-one"
kind = "kill"
target = "one"
duration = ["1s", "3s"]
[[faults]]
name = "pause-majority"
kind = "pause"
target = "majority"
duration = ["2s", "2s"]
"#;

    proptest! {
        #[test]
        fn generated_plans_fit_their_scenario(plan in plans(&Scenario::parse(TEXT, "s.toml").unwrap(), 1..=6)) {
            let s = Scenario::parse(TEXT, "s.toml").unwrap();
            if let Err(e) = plan.check_against(&s) {
                return Err(TestCaseError::fail(e));
            }
            prop_assert!((1..=6).contains(&plan.steps.len()));
        }
    }

    /// A failing property over plans shrinks to a minimal plan: here "no plan may contain a
    /// pause", which shrinks to the single pause step with the shortest duration.
    #[test]
    fn failing_schedules_shrink_to_a_minimal_one() {
        let s = Scenario::parse(TEXT, "s.toml").unwrap();
        let mut runner = TestRunner::deterministic();
        let mut tree = plans(&s, 1..=8).new_tree(&mut runner).unwrap();
        // Find a failing value, then shrink as proptest does.
        let fails = |p: &Plan| p.steps.iter().any(|st| st.case == "pause-majority");
        let mut attempts = 0;
        while !fails(&tree.current()) {
            tree = plans(&s, 1..=8).new_tree(&mut runner).unwrap();
            attempts += 1;
            assert!(attempts < 100, "no failing plan generated");
        }
        let mut minimal = tree.current();
        loop {
            let current = tree.current();
            let more = if fails(&current) {
                minimal = current;
                tree.simplify()
            } else {
                tree.complicate()
            };
            if !more {
                break;
            }
        }
        assert_eq!(minimal.steps.len(), 1, "{minimal:?}");
        assert_eq!(minimal.steps[0].case, "pause-majority");
    }
}
