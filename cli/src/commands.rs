//! The `chaos` command line: one [`Command`] variant and one function per subcommand.
//!
//! To add a subcommand, add a variant to [`Command`] (its doc comment is its `--help` line) and
//! a match arm in [`run`] calling a function in its own module.

mod campaign;
mod certs;
mod check;
mod control;
mod down;
mod exec;
mod fault;
mod gc;
mod hosts;
mod net;
mod plan;
mod probe;
mod run;
mod state;
mod tasks;
mod up;
mod validate;

use clap::{ArgAction, Parser, Subcommand};

/// The parsed command line.
#[derive(Debug, Parser)]
#[command(
    name = "chaos",
    version,
    about = "Fault-injection chaos testing: clusters of nodes, processes, files and faults",
    long_about = None,
)]
pub struct Cli {
    /// Log what chaos does to stderr (-v: debug logs of chaos, -vv: everything).
    #[arg(short, long, action = ArgAction::Count, global = true)]
    pub verbose: u8,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the version of chaos and of the agent protocol it speaks.
    Version,
    /// Create a cluster CA and issue node certificates, for agents started by hand.
    #[command(subcommand)]
    Certs(certs::CertsCommand),
    /// Create a cluster, print its nodes (name, IP) and keep it alive until Ctrl-C or `chaos down`.
    Up(up::UpArgs),
    /// Stop the cluster `chaos up` keeps alive in a state directory, and wait until it is cleaned up.
    Down(down::DownArgs),
    /// Run a command on a node: stdio streamed, exit code passed through.
    Exec(exec::ExecArgs),
    /// Inject, list and heal faults on a cluster's nodes (partition, loss, delay, bandwidth, pause…).
    #[command(subcommand)]
    Fault(fault::FaultCommand),
    /// Show which fault kinds a node supports and with which mechanisms.
    Probe(probe::ProbeArgs),
    /// Measure the network between nodes: throughput, RTT and loss (TCP or UDP), built in.
    #[command(subcommand)]
    Net(net::NetCommand),
    /// Check scenario files: every problem with file:line:column, field and the valid choices.
    Validate(validate::ValidateArgs),
    /// Print the fault schedule a scenario and seed give, without running anything.
    Plan(plan::PlanArgs),
    /// Run a scenario: cluster, system, workload, seeded faults, recovery checks, verdict
    /// (or a campaign of many seeds: --seeds A..B / --count N, --parallel K).
    Run(run::RunArgs),
    /// Fan a task list out over a cluster's nodes (kubetest-style): retries, artifacts, JSON
    /// summary and JUnit (docs/tasks.md).
    Tasks(tasks::TasksArgs),
    /// Re-run the checkers (linearizability, lost writes, availability…) on a stored history.
    Check(check::CheckArgs),
    /// Remove what crashed runs left behind: namespaces, links, cgroups, containers, networks.
    Gc(gc::GcArgs),
    /// Machines of the `hosts` backend: install the agent on them over ssh.
    #[command(subcommand)]
    Hosts(hosts::HostsCommand),
}

/// Runs one subcommand and returns the exit code to leave with.
pub async fn run(command: Command) -> anyhow::Result<u8> {
    let done = |r: anyhow::Result<()>| r.map(|()| 0);
    match command {
        Command::Version => done(version()),
        Command::Certs(cmd) => done(certs::run(cmd)),
        Command::Up(args) => done(up::run(args).await),
        Command::Down(args) => done(down::run(args).await),
        Command::Exec(args) => exec::run(args).await,
        Command::Fault(cmd) => done(fault::run(cmd).await),
        Command::Probe(args) => done(probe::run(args).await),
        Command::Net(cmd) => done(net::run(cmd).await),
        Command::Validate(args) => validate::run(args),
        Command::Plan(args) => plan::run(args),
        Command::Run(args) => run::run(args).await,
        Command::Tasks(args) => tasks::run(args).await,
        Command::Check(args) => check::run(args),
        Command::Gc(args) => gc::run(args).await,
        Command::Hosts(cmd) => done(hosts::run(cmd)),
    }
}

fn version() -> anyhow::Result<()> {
    println!(
        "chaos {} (agent protocol {})",
        env!("CARGO_PKG_VERSION"),
        chaos::proto::PROTOCOL_VERSION
    );
    Ok(())
}

/// An error caused by the user's input (arguments, files, directories) rather than by chaos or
/// the system: it makes the process exit with code 2, like a usage error.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

/// The backend a `--backend NAME` option names (`run`, `tasks`, campaigns), when given.
pub(crate) fn backend_override(
    name: Option<&str>,
) -> Result<Option<chaos_scenario::model::Backend>, BadInput> {
    name.map(str::parse)
        .transpose()
        .map_err(|e| BadInput(format!("--backend: {e}")))
}

/// Exit code for a failed command: 2 for bad input (including certificate files that are
/// missing or malformed, and requests the runner or a node refused as invalid), 1 for anything
/// else.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    let bad_input = err.chain().any(|e| {
        e.is::<BadInput>()
            || matches!(
                e.downcast_ref::<chaos::certs::CertError>(),
                Some(chaos::certs::CertError::Io { .. } | chaos::certs::CertError::BadPem { .. })
            )
            || e.downcast_ref::<chaos::Error>().is_some_and(|e| {
                matches!(e, chaos::Error::Invalid { .. })
                    || e.kind() == Some(chaos::proto::ErrorKind::InvalidRequest)
            })
    });
    if bad_input { 2 } else { 1 }
}

/// Sends tracing logs to stderr: `RUST_LOG` when set and no `-v`, else by verbosity.
pub fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let filter = match verbose {
        0 => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        1 => EnvFilter::new("info,chaos=debug,chaos_agent=debug,chaos_faults=debug"),
        _ => EnvFilter::new("trace"),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}
