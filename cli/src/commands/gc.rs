//! `chaos gc`: removes what crashed runners left behind.

use chaos::backend::gc::{self, GcOptions};
use clap::Args;

/// What `chaos gc --help` says after the options.
const AFTER_HELP: &str = "\
Finds what runners that ran on this host and are gone (killed, crashed) left behind, and removes it:
  netns:  the processes in the cluster's cgroups (agents included), the cgroups, node and hub
          namespaces, host link, temporary directory and state file (/run/chaos/netns/<i>.json)
  docker: containers (forced, with their volumes) and networks labelled io.chaos.cluster whose
          io.chaos.owner runner is gone, the host directory of their nodes' TLS files
          ($TMPDIR/chaos-docker-*), and dangling io.chaos.image images
  local:  nothing: its agents lose the runner's heartbeat, kill what they started and exit by
          themselves; only the temporary directory ($TMPDIR/chaos-local-*) is left
  ec2:    only with --backend ec2 (it calls AWS): instances tagged io.chaos.cluster whose
          io.chaos.expires passed or whose io.chaos.owner runner of this host is gone, terminated,
          and their clusters' leftover bundle objects
Clusters of live runners, and Docker clusters of runners on other hosts, are kept. Namespaces or
links without a state file may be a cluster being created right now: only --all removes them.
Nothing without chaos's names or labels is touched; a Docker daemon that cannot be reached is
skipped.

Prints one line per removed resource (`removed: ...`, or `would remove: ...` with --dry-run),
per kept cluster (`kept: ...`, with the reason) and per failure (`error: ...`), then a summary.
Exit status: 0 when everything it meant to remove is gone, 1 when something could not be removed.";

/// `chaos gc`. Its `--help` text is [`AFTER_HELP`].
#[derive(Debug, Args)]
#[command(after_help = AFTER_HELP)]
pub struct GcArgs {
    /// Only print what would be removed; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Remove every chaos resource on this host, including live clusters (their runners will
    /// fail) and namespaces or links without a state file (a cluster being created right now).
    #[arg(long)]
    pub all: bool,
    /// Also remove the node images chaos built (a cache: they are rebuilt when needed), except
    /// images a remaining container uses. Dangling chaos images are always removed.
    #[arg(long)]
    pub images: bool,
    /// Collect on this backend only (`ec2` is collected only when named here).
    #[arg(long, value_name = "NAME")]
    pub backend: Option<String>,
    /// The region a cloud backend looks in (ec2: else its settings' or the standard AWS chain's).
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,
    /// The backend's settings file (ec2: bucket, stack, key prefix; see docs/ec2.md).
    #[arg(long, value_name = "FILE")]
    pub backend_config: Option<std::path::PathBuf>,
}

/// Runs `chaos gc` and returns the exit code.
pub async fn run(args: GcArgs) -> anyhow::Result<u8> {
    let options = GcOptions {
        dry_run: args.dry_run,
        all: args.all,
        images: args.images,
        backend: args.backend,
        region: args.region,
        backend_config: args.backend_config,
    };
    if let Some(name) = &options.backend {
        chaos::backend::registry::find(name).map_err(|e| anyhow::anyhow!("--backend: {e}"))?;
    }
    let report = gc::collect_garbage(&options).await;
    let verb = if options.dry_run {
        "would remove"
    } else {
        "removed"
    };
    for line in &report.removed {
        println!("{verb}: {line}");
    }
    for line in &report.kept {
        println!("kept: {line}");
    }
    for line in &report.errors {
        println!("error: {line}");
    }
    let mut summary = format!("{verb} {}, kept {}", report.removed.len(), report.kept.len());
    if !report.errors.is_empty() {
        summary.push_str(&format!(", {} error(s)", report.errors.len()));
    }
    println!("{summary}");
    Ok(if report.errors.is_empty() { 0 } else { 1 })
}
