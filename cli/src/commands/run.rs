//! `chaos run FILE [--seed N] [--backend B] [--rounds N] [--out DIR]`: run a scenario against real
//! processes and judge it; with `--seeds`/`--count`, a campaign of many seeds (`campaign.rs`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use chaos_scenario::{RunError, RunOptions, RunStatus, Runner, Scenario};
use tokio_util::sync::CancellationToken;

use super::BadInput;

/// Arguments of `chaos run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The scenario file (TOML).
    pub file: PathBuf,
    /// The seed every random choice is drawn from; one is drawn (and printed first) when absent.
    #[arg(long, conflicts_with = "plan")]
    pub seed: Option<u64>,
    /// Run this plan (a run's plan.json, e.g. a shrunk one from a property test) instead of
    /// drawing one from a seed.
    #[arg(long)]
    pub plan: Option<PathBuf>,
    /// Override the scenario's backend (a name from the backend registry: local, netns, docker, hosts, and ec2 when built with it).
    #[arg(long)]
    pub backend: Option<String>,
    /// The backend's own settings file, for backends that need one (e.g. an inventory of
    /// machines); see the backend's documentation.
    #[arg(long, value_name = "FILE", visible_alias = "inventory")]
    pub backend_config: Option<PathBuf>,
    /// Override the scenario's number of rounds (e.g. 1 for a short run).
    #[arg(long, conflicts_with = "plan")]
    pub rounds: Option<u32>,
    /// Set a scenario value for this run, as NAME=VALUE (repeatable): NAME must be declared in
    /// the scenario's [values], and VALUE is read as that value's type (e.g. `--value
    /// synchronous=false`, `--value isolation=read-committed`). The replay command repeats it.
    #[arg(long = "value", value_name = "NAME=VALUE")]
    pub values: Vec<String>,
    /// Where run directories go: OUT/<scenario>/<timestamp>-seed<N>/ (and a campaign's
    /// OUT/<scenario>/campaign-<timestamp>/).
    #[arg(long, default_value = "runs")]
    pub out: PathBuf,
    /// A campaign over these seeds: A..B (B excluded), A..=B, or a list 1,5,9. Each seed is a
    /// run of its own (its own cluster and run directory).
    #[arg(long, conflicts_with_all = ["seed", "plan", "count"])]
    pub seeds: Option<String>,
    /// A campaign of N seeds drawn from one master seed (printed; --seed sets it).
    #[arg(long, conflicts_with = "plan")]
    pub count: Option<usize>,
    /// Campaign runs at a time, each its own cluster.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub parallel: u16,
    /// Stop the campaign at the first failing seed (running seeds are interrupted and cleaned up).
    #[arg(long)]
    pub fail_fast: bool,
    /// When the run fails (or errs), keep each node's root directory to look at: on `hosts`
    /// the run directory stays on each host, on `netns` it moves to $TMPDIR/chaos-kept-…;
    /// `docker`, `local` and `ec2` keep nothing. Printed and listed in summary.json (`kept`).
    #[arg(long)]
    pub keep_failed: bool,
}

/// Runs the scenario. Exit code 0 when every invariant held, 1 when one was violated (the replay
/// command is printed), 2 for an invalid scenario or environment, 130 when interrupted.
pub async fn run(args: RunArgs) -> anyhow::Result<u8> {
    if args.seeds.is_some() || args.count.is_some() {
        return super::campaign::run(args).await;
    }
    if args.parallel > 1 || args.fail_fast {
        return Err(BadInput(
            "--parallel and --fail-fast apply to campaigns: give --seeds A..B, --seeds 1,5,9 or --count N"
                .into(),
        )
        .into());
    }
    let scenario = match Scenario::from_file(&args.file) {
        Ok(s) => s,
        Err(errors) => {
            eprintln!("{errors}");
            return Ok(2);
        }
    };
    let backend = super::backend_override(args.backend.as_deref())?;
    let values = match value_overrides(&scenario, &args.values) {
        Ok(v) => v,
        Err(errors) => {
            eprintln!("{errors}");
            return Ok(2);
        }
    };
    let plan = match &args.plan {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| BadInput(format!("--plan {}: {e}", path.display())))?;
            let plan = chaos_scenario::Plan::from_json(&text)
                .map_err(|e| BadInput(format!("--plan {}: {e}", path.display())))?;
            Some(plan)
        }
        None => None,
    };
    let seed = match &plan {
        Some(p) => p.seed,
        None => args.seed.unwrap_or_else(chaos_scenario::draw_seed),
    };
    println!("seed {seed}");
    let cancel = CancellationToken::new();
    let interrupts = tokio::spawn(watch_interrupts(cancel.clone()));
    let options = RunOptions {
        seed: Some(seed),
        backend,
        backend_config: args.backend_config.clone(),
        rounds: args.rounds,
        values,
        out_dir: args.out.clone(),
        scenario_file: Some(args.file.clone()),
        observer: Some(std::sync::Arc::new(crate::progress::Spinner::new())),
        cancel: cancel.clone(),
        keep_failed: args.keep_failed,
    };
    let mut runner = Runner::new(scenario).options(options);
    if let Some(plan) = plan {
        runner = runner.plan(plan);
    }
    let outcome = runner.run().await;
    interrupts.abort();
    let outcome = match outcome {
        Ok(o) => o,
        Err(RunError::Invalid(message)) => {
            eprintln!("error: {message}");
            return Ok(2);
        }
        Err(e) => return Err(e.into()),
    };
    let s = &outcome.summary;
    let t = &s.totals;
    let verdict = match outcome.status {
        RunStatus::Passed => "PASSED".to_string(),
        RunStatus::Failed => format!("FAILED: {}", s.reason.clone().unwrap_or_default()),
        RunStatus::Interrupted => {
            "INTERRUPTED: faults healed, system stopped, cluster cleaned up".to_string()
        }
        RunStatus::Error => format!("ERROR: {}", s.reason.clone().unwrap_or_default()),
    };
    println!("{verdict}");
    println!(
        "{} steps ({} passed, {} failed, {} skipped, {} errors, {} not run); {} operations ({} ok, {} fail, {} unknown); {:.1}s",
        t.steps,
        t.passed,
        t.failed,
        t.skipped,
        t.errors,
        t.not_run,
        t.ops,
        t.ok,
        t.fail,
        t.unknown,
        s.elapsed_ms as f64 / 1000.0
    );
    println!("run directory: {}", outcome.run_dir.display());
    for k in &s.kept {
        println!("kept {}'s directory on {}: {}", k.node, k.host, k.path);
    }
    if let Some(report) = &outcome.report {
        println!("report: {}", report.display());
    }
    if outcome.status != RunStatus::Passed {
        println!("replay: {}", outcome.replay);
    }
    Ok(outcome.exit_code())
}

/// First Ctrl-C (or SIGTERM): cancel the run, which heals every fault, stops the system and
/// cleans up. A second one exits at once (the nodes' agents still clean up after themselves when
/// their heartbeats stop, and every fault expires by its TTL).
pub(super) async fn watch_interrupts(cancel: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
    else {
        return;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    eprintln!("interrupted: healing faults, stopping the system, cleaning up (again to quit at once)");
    cancel.cancel();
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    eprintln!("interrupted twice: exiting without cleaning up");
    std::process::exit(130);
}

/// Reads each `--value NAME=VALUE` as the type the scenario declares for NAME.
pub(super) fn value_overrides(
    scenario: &Scenario,
    args: &[String],
) -> Result<BTreeMap<String, toml::Value>, chaos_scenario::ScenarioErrors> {
    let mut values = BTreeMap::new();
    for arg in args {
        let Some((name, text)) = arg.split_once('=') else {
            return Err(chaos_scenario::ScenarioErrors(vec![
                chaos_scenario::ScenarioError {
                    file: "--value".into(),
                    line: 0,
                    column: 0,
                    field: String::new(),
                    message: format!("`{arg}`: give NAME=VALUE, e.g. --value synchronous=false"),
                },
            ]));
        };
        let name = name.trim();
        values.insert(name.to_string(), scenario.parse_value(name, text)?);
    }
    Ok(values)
}
