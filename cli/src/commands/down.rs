//! `chaos down`: asks the `chaos up` holding a state directory to stop its cluster, and waits
//! until it has cleaned up.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::BadInput;
use super::state::{Occupant, StateDir};

/// `chaos down`.
#[derive(Debug, Args)]
pub struct DownArgs {
    /// State directory given to `chaos up`.
    #[arg(long, value_name = "DIR")]
    pub state: PathBuf,
    /// How long to wait for the cluster to be cleaned up.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// Runs `chaos down`.
pub async fn run(args: DownArgs) -> anyhow::Result<()> {
    let dir = StateDir::new(&args.state);
    let owner = match dir.occupant()? {
        Occupant::Empty => {
            return Err(BadInput(format!(
                "no cluster in {} (no {} or {}): nothing to stop",
                dir.path().display(),
                super::state::CLUSTER_FILE,
                super::state::PID_FILE
            ))
            .into());
        }
        Occupant::Stale(owner, cluster) => {
            let record = cluster
                .and_then(|c| c.backend_state_file)
                .unwrap_or_else(|| dir.cluster_file());
            anyhow::bail!(
                "the chaos up of the cluster in {} (pid {}) is not running any more and did not clean up; \
                 what it left is described in {} (the next `chaos up --state {}` replaces the state files)",
                dir.path().display(),
                owner.pid,
                record.display(),
                dir.path().display()
            );
        }
        Occupant::Live(owner) => owner,
    };
    let pid = i32::try_from(owner.pid).context("pid out of range")?;
    kill(Pid::from_raw(pid), Signal::SIGTERM)
        .with_context(|| format!("sending SIGTERM to chaos up (pid {pid})"))?;

    let deadline = Instant::now() + args.timeout;
    let files_gone = || !dir.cluster_file().exists() && !dir.pid_file().exists();
    loop {
        let alive = owner.is_alive();
        if !alive && files_gone() {
            println!("cluster in {} stopped and cleaned up", dir.path().display());
            return Ok(());
        }
        if !alive {
            anyhow::bail!(
                "chaos up (pid {pid}) exited without removing its state files from {}; see its output",
                dir.path().display()
            );
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "chaos up (pid {pid}) did not finish cleaning up within {}; it may still be running",
                humantime::format_duration(args.timeout)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
