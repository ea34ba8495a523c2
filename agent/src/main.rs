//! `chaos-agent`: the node agent binary. See the library ([`chaos_agent`]) for what it does.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use chaos_agent::{AgentConfig, HeartbeatLossAction, Stopped};
use clap::Parser;
use tracing_subscriber::EnvFilter;

mod service;

/// Exit code after heartbeat loss with `--on-heartbeat-loss exit`.
const EXIT_HEARTBEAT_LOST: u8 = 3;

/// The chaos node agent: an mTLS HTTPS API to run processes, move files, tunnel TCP and inject
/// faults on this node. Prints `CHAOS_AGENT_READY <ip>:<port>` on stdout once it accepts connections.
#[derive(Debug, Parser)]
#[command(version, subcommand_negates_reqs = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<ServiceCommand>,
    /// Address to listen on (IP:PORT; port 0 lets the kernel pick).
    #[arg(long, value_name = "ADDR", required = true)]
    listen: Option<SocketAddr>,
    /// Directory with ca.pem, node.pem and node.key.
    #[arg(long, value_name = "DIR", required = true)]
    tls_dir: Option<PathBuf>,
    /// The node's root directory: default working directory of started processes
    /// [default: the current directory].
    #[arg(long, value_name = "DIR")]
    root_dir: Option<PathBuf>,
    /// A cgroup v2 directory (created beforehand) under which every started process gets its
    /// own child cgroup, so daemonized descendants are killed too.
    #[arg(long, value_name = "DIR")]
    cgroup: Option<PathBuf>,
    /// How long to wait without a heartbeat before healing every fault and killing every
    /// process tree.
    #[arg(long, value_name = "DUR", default_value = "30s", value_parser = parse_timeout)]
    heartbeat_timeout: Duration,
    /// After heartbeat loss: `exit` (code 3), `poweroff` (sync and power the machine off; only
    /// for dedicated, disposable machines), `none` (keep serving) or `wait` (a service: end the
    /// run — heal, kill, remove its directory, release the lease — and wait for the next runner;
    /// `POST /v1/shutdown` then ends the run, not the agent).
    #[arg(long, value_name = "ACTION", default_value = "exit")]
    on_heartbeat_loss: HeartbeatLossAction,
    /// Directory of the fault state file: every installed fault is recorded there first, and an
    /// agent started with the same directory heals what a killed one left. One agent per
    /// directory [default: <root-dir>/.chaos-agent].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Refuse every network fault (partition, loss, packet, bandwidth, link), for a node that
    /// shares its network stack with other nodes (the `local` backend), where a rule could not
    /// be confined to this node. Process faults still work.
    #[arg(long)]
    no_network_faults: bool,
}

/// Installing the agent as a service (the `hosts` backend's machines).
#[derive(Debug, clap::Subcommand)]
enum ServiceCommand {
    /// Install the agent as a systemd service in its persistent mode (`--on-heartbeat-loss
    /// wait`) and start it.
    Install(service::InstallArgs),
    /// Stop the service and remove its unit and binary (the TLS directory stays).
    Uninstall(service::UninstallArgs),
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => Err("must be longer than zero".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(format!("{e} (use a duration like 30s, 500ms or 2m)")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(command) = &cli.command {
        let done = match command {
            ServiceCommand::Install(args) => service::install(args),
            ServiceCommand::Uninstall(args) => service::uninstall(args),
        };
        return match done {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("chaos-agent: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
    match run(cli) {
        Ok(Stopped::Shutdown) => ExitCode::SUCCESS,
        Ok(Stopped::HeartbeatLost) => ExitCode::from(EXIT_HEARTBEAT_LOST),
        Err(e) => {
            eprintln!("chaos-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<Stopped> {
    // Both are required unless a subcommand was given (clap checked).
    let (Some(listen), Some(tls_dir)) = (cli.listen, cli.tls_dir) else {
        anyhow::bail!("--listen and --tls-dir are required");
    };
    let mut config = AgentConfig::new(listen, tls_dir);
    if let Some(root) = cli.root_dir {
        config.root_dir = root;
    }
    config.cgroup = cli.cgroup;
    config.heartbeat_timeout = cli.heartbeat_timeout;
    config.on_heartbeat_loss = cli.on_heartbeat_loss;
    config.state_dir = cli.state_dir;
    config.network_faults = !cli.no_network_faults;

    // Two workers are plenty for one runner and keep the idle footprint small.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = runtime.block_on(chaos_agent::serve(config, |addr| {
        let mut out = std::io::stdout().lock();
        let written = writeln!(out, "{} {addr}", chaos_proto::READY_LINE_PREFIX).and_then(|()| out.flush());
        if let Err(e) = written {
            tracing::error!("writing the ready line to stdout: {e}");
        }
    }));
    // Don't let a stuck blocking task (file I/O) delay the exit.
    runtime.shutdown_timeout(Duration::from_millis(500));
    Ok(result?)
}
