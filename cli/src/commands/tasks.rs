//! `chaos tasks FILE.toml [--backend B] [--out DIR]`: fan a task list out over a cluster's nodes
//! (`chaos_scenario::tasks`), a line per finished task, a summary at the end.

use std::path::PathBuf;
use std::sync::Arc;

use chaos_scenario::tasks::{TaskFile, TaskObserver, TaskResult, TaskRunner, TaskStatus};
use tokio_util::sync::CancellationToken;

/// Arguments of `chaos tasks`.
#[derive(Debug, clap::Args)]
pub struct TasksArgs {
    /// The task file (TOML; docs/tasks.md).
    pub file: PathBuf,
    /// Override the file's backend (a name from the backend registry: local, netns, docker, hosts, and ec2 when built with it).
    #[arg(long)]
    pub backend: Option<String>,
    /// The backend's own settings file, for backends that need one.
    #[arg(long, value_name = "FILE", visible_alias = "inventory")]
    pub backend_config: Option<PathBuf>,
    /// The seed the file's fault cases are planned from (drawn and printed when absent).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Where run directories go: OUT/<name>/<timestamp>-tasks/.
    #[arg(long, default_value = "runs")]
    pub out: PathBuf,
}

struct Lines;

impl TaskObserver for Lines {
    fn doing(&self, what: &str) {
        eprintln!("{what}");
    }

    fn finished(&self, t: &TaskResult, done: usize, total: usize) {
        let status = match t.status {
            TaskStatus::Passed => "passed".to_string(),
            TaskStatus::Flaky => format!("flaky (passed on attempt {})", t.attempts.len()),
            TaskStatus::Failed => format!(
                "FAILED after {} attempts: {}",
                t.attempts.len(),
                t.attempts
                    .last()
                    .and_then(|a| a.error.clone())
                    .unwrap_or_default()
            ),
            TaskStatus::NotRun => "not run".to_string(),
        };
        println!(
            "[{done}/{total}] {} on {}: {status} ({:.1}s)",
            t.name,
            t.node,
            t.elapsed_ms as f64 / 1000.0
        );
    }
}

/// Runs the tasks. Exit code 0 when every task passed (flaky ones included), 1 when one
/// failed, 2 for an invalid file or a cluster that could not be made, 130 when interrupted.
pub async fn run(args: TasksArgs) -> anyhow::Result<u8> {
    let file = match TaskFile::from_file(&args.file) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{e}");
            return Ok(2);
        }
    };
    let backend = super::backend_override(args.backend.as_deref())?;
    let seed = (!file.faults.is_empty()).then(|| args.seed.unwrap_or_else(chaos_scenario::draw_seed));
    if let Some(seed) = seed {
        println!("seed {seed}");
    }
    let cancel = CancellationToken::new();
    let interrupts = tokio::spawn(super::run::watch_interrupts(cancel.clone()));
    let outcome = TaskRunner::new(file)
        .backend(backend)
        .backend_config(args.backend_config.clone())
        .out_dir(&args.out)
        .seed(seed)
        .observer(Arc::new(Lines))
        .cancel(cancel)
        .run()
        .await;
    interrupts.abort();
    let outcome = outcome?;
    let s = &outcome.summary;
    match &s.reason {
        Some(reason) => println!("ERROR: {reason}"),
        None => println!(
            "{}: {} tasks: {} succeeded ({} flaky), {} failed, {} not run; {:.1}s",
            s.status.to_uppercase(),
            s.task_count,
            s.success_count,
            s.flaky_count,
            s.failure_count,
            s.not_run_count,
            s.elapsed_ms as f64 / 1000.0
        ),
    }
    if !s.faults.is_empty() {
        let healed = s.faults.iter().filter(|f| f.status == "healed").count();
        println!(
            "{} faults while the tasks ran ({healed} injected and healed)",
            s.faults.len()
        );
    }
    for t in s.tasks.iter().filter(|t| t.status == TaskStatus::Failed) {
        println!("failed: {} (on {}; log: tasks/{}/)", t.name, t.node, t.index);
    }
    println!("run directory: {}", outcome.dir.display());
    Ok(outcome.exit_code())
}
