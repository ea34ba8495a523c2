//! `chaos validate FILE...`: parse and check scenario files without running anything.

use std::path::PathBuf;

use chaos_scenario::Scenario;

/// Arguments of `chaos validate`.
#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// Scenario files (TOML) to check.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

/// Prints `FILE: ok …` per valid file and every problem of the others (file:line:column, field,
/// valid choices). Exit code 0 when all are valid, 2 otherwise.
pub fn run(args: ValidateArgs) -> anyhow::Result<u8> {
    let mut code = 0;
    for file in &args.files {
        match Scenario::from_file(file) {
            Ok(s) => println!(
                "{}: ok — scenario `{}`: {} nodes on {}, {} fault cases, {} invariants, {} round(s)",
                file.display(),
                s.name,
                s.cluster.nodes,
                s.cluster.backend,
                s.faults.len(),
                s.invariants.len(),
                s.schedule.rounds
            ),
            Err(errors) => {
                eprintln!("{errors}");
                code = 2;
            }
        }
    }
    Ok(code)
}
