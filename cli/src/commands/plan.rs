//! `chaos plan FILE [--seed N]`: print the whole fault schedule a seed gives, without running.

use std::path::PathBuf;

use chaos_scenario::{Plan, Scenario};

use super::BadInput;

/// Arguments of `chaos plan`.
#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// The scenario file (TOML).
    pub file: PathBuf,
    /// The seed; one is drawn (and printed first) when absent.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Override the scenario's number of rounds.
    #[arg(long)]
    pub rounds: Option<u32>,
    /// Print the plan as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Prints the plan. The same file and seed print the same bytes.
pub fn run(args: PlanArgs) -> anyhow::Result<u8> {
    let mut scenario = Scenario::from_file(&args.file).map_err(|e| BadInput(e.to_string()))?;
    scenario
        .override_rounds(args.rounds)
        .map_err(|e| BadInput(e.to_string()))?;
    let seed = match args.seed {
        Some(seed) => seed,
        None => {
            let seed = chaos_scenario::draw_seed();
            // Printed first so a plan seen once can be printed (and run) again.
            if args.json {
                eprintln!("seed {seed}");
            } else {
                println!("seed {seed}");
            }
            seed
        }
    };
    let plan = Plan::generate(&scenario, seed);
    if args.json {
        print!("{}", plan.to_json());
    } else {
        print!("{}", plan.to_text());
    }
    Ok(0)
}
