//! `chaos run FILE --seeds A..B|1,5,9 | --count N [--parallel K] [--fail-fast]`: a campaign, one
//! run per seed (`chaos_scenario::campaign`), with live done/failed progress and one verdict.

use std::sync::Arc;

use chaos_scenario::campaign::{Campaign, CampaignError, SeedSet};
use chaos_scenario::{RunOptions, Scenario};
use tokio_util::sync::CancellationToken;

use super::BadInput;
use super::run::RunArgs;

/// Runs the campaign. Exit code 0 when every seed passed, 1 when one failed or ended in error
/// (the failing seeds and their replay commands are printed), 2 for an invalid scenario or
/// campaign, 130 when interrupted.
pub async fn run(args: RunArgs) -> anyhow::Result<u8> {
    let scenario = match Scenario::from_file(&args.file) {
        Ok(s) => s,
        Err(errors) => {
            eprintln!("{errors}");
            return Ok(2);
        }
    };
    let backend = super::backend_override(args.backend.as_deref())?;
    let values = match super::run::value_overrides(&scenario, &args.values) {
        Ok(v) => v,
        Err(errors) => {
            eprintln!("{errors}");
            return Ok(2);
        }
    };
    let seeds = match (&args.seeds, args.count) {
        (Some(text), _) => SeedSet::parse(text).map_err(|e| BadInput(format!("--seeds: {e}")))?,
        (None, Some(count)) => {
            let master = args.seed.unwrap_or_else(chaos_scenario::draw_seed);
            println!("master seed {master}");
            SeedSet::drawn(master, count).map_err(|e| BadInput(e.to_string()))?
        }
        (None, None) => return Err(BadInput("a campaign needs --seeds or --count".into()).into()),
    };
    println!(
        "campaign: {} seeds, {} at a time{}",
        seeds.len(),
        args.parallel,
        if args.fail_fast {
            ", stopping at the first failure"
        } else {
            ""
        }
    );
    let cancel = CancellationToken::new();
    let interrupts = tokio::spawn(super::run::watch_interrupts(cancel.clone()));
    let options = RunOptions {
        seed: None,
        backend,
        backend_config: args.backend_config.clone(),
        rounds: args.rounds,
        values,
        out_dir: args.out.clone(),
        scenario_file: Some(args.file.clone()),
        observer: None,
        cancel,
        keep_failed: args.keep_failed,
    };
    let progress = Arc::new(crate::progress::CampaignBar::new(seeds.len()));
    let outcome = Campaign::new(scenario, seeds)
        .parallel(usize::from(args.parallel))
        .fail_fast(args.fail_fast)
        .options(options)
        .observer(progress.clone())
        .run()
        .await;
    interrupts.abort();
    progress.finish();
    let outcome = match outcome {
        Ok(o) => o,
        Err(CampaignError::Invalid(message)) => {
            eprintln!("error: {message}");
            return Ok(2);
        }
        Err(e) => return Err(e.into()),
    };
    let s = &outcome.summary;
    let t = &s.totals;
    println!(
        "{}: {} seeds: {} passed, {} failed, {} errors, {} interrupted, {} not run; {:.1}s",
        s.status.to_uppercase(),
        t.seeds,
        t.passed,
        t.failed,
        t.errors,
        t.interrupted,
        t.not_run,
        s.elapsed_ms as f64 / 1000.0
    );
    for run in s.runs.iter().filter(|r| r.verdict.is_failure()) {
        println!(
            "seed {} {}: {}",
            run.seed,
            run.verdict,
            run.reason.as_deref().unwrap_or("")
        );
        println!("  replay: {}", run.replay);
    }
    println!("campaign directory: {}", outcome.dir.display());
    println!("index: {}", outcome.index.display());
    Ok(outcome.exit_code())
}
