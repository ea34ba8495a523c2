//! `chaos up`: creates a cluster and keeps it alive (the cluster heartbeats its agents, and
//! restarts one that dies, saying so on stderr) until SIGINT, SIGTERM or SIGHUP — which `chaos
//! down` sends — then cleans everything up. The agents run in process groups of their own, so
//! a Ctrl-C in the terminal reaches only `chaos up`, which then stops them in order.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chaos::backend::local::LocalCluster;
use chaos::backend::{self, BackendKind, ClusterOptions};
use chaos::{Cluster, Node};
use clap::Args;
use tokio::signal::unix::{Signal, SignalKind, signal};

use super::BadInput;
use super::state::{ClusterState, NodeEntry, Occupant, Owner, StateDir};

/// `chaos up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Backend to run the nodes on: netns (isolated nodes with agents) or local (processes on
    /// this host; `chaos exec` runs there directly, faults and probe need an agent backend).
    #[arg(long, default_value = "netns", value_parser = parse_backend)]
    pub backend: BackendKind,
    /// Number of nodes, named n1..nN.
    #[arg(long, default_value_t = 3)]
    pub nodes: u32,
    /// State directory for cluster.json and the TLS material other commands use (created if
    /// missing; one cluster per directory).
    #[arg(long, value_name = "DIR")]
    pub state: PathBuf,
    /// How long an agent waits without a heartbeat from this process before it heals its faults,
    /// kills everything it started and exits (e.g. 15s, 500ms).
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub heartbeat_timeout: Duration,
}

fn parse_backend(s: &str) -> Result<BackendKind, String> {
    s.parse()
}

/// The running cluster, kept as its concrete type for what only that backend offers.
enum Running {
    Local(LocalCluster),
    #[cfg(target_os = "linux")]
    Netns(backend::netns::NetnsCluster),
    #[cfg(feature = "docker")]
    Docker(backend::docker::DockerCluster),
}

impl Running {
    fn cluster(&self) -> &dyn Cluster {
        match self {
            Running::Local(c) => c,
            #[cfg(target_os = "linux")]
            Running::Netns(c) => c,
            #[cfg(feature = "docker")]
            Running::Docker(c) => c,
        }
    }
}

/// Removes the state files when `chaos up` ends, however it ends.
struct StateFilesGuard(StateDir);

impl Drop for StateFilesGuard {
    fn drop(&mut self) {
        if let Err(e) = self.0.remove_all() {
            eprintln!("chaos up: cleaning {}: {e}", self.0.path().display());
        }
    }
}

/// SIGINT, SIGTERM and SIGHUP: any of them stops the cluster.
struct StopSignals(Vec<(&'static str, Signal)>);

impl StopSignals {
    fn install() -> anyhow::Result<Self> {
        let kinds = [
            ("SIGINT", SignalKind::interrupt()),
            ("SIGTERM", SignalKind::terminate()),
            ("SIGHUP", SignalKind::hangup()),
        ];
        let mut signals = Vec::new();
        for (name, kind) in kinds {
            signals.push((
                name,
                signal(kind).with_context(|| format!("installing a {name} handler"))?,
            ));
        }
        Ok(Self(signals))
    }

    /// Waits for the next stop signal and returns its name.
    async fn recv(&mut self) -> &'static str {
        let waits = self
            .0
            .iter_mut()
            .map(|(name, s)| Box::pin(async move { s.recv().await.map(|_| *name) }));
        let (got, _, _) = futures_util::future::select_all(waits).await;
        got.unwrap_or("end of signal stream")
    }
}

/// Writes a line to stdout, ignoring a closed stdout (the cluster must still be cleaned up).
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Runs `chaos up`.
pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    validate(&args)?;
    let dir = StateDir::new(&args.state);
    dir.create()?;
    // Signals are caught from here on: a Ctrl-C during creation still cleans up.
    let mut stop = StopSignals::install()?;
    claim(&dir)?;
    let _files = StateFilesGuard(dir.clone());

    let options = ClusterOptions {
        name: format!("up-{}", std::process::id()),
        heartbeat_timeout: args.heartbeat_timeout,
        ..ClusterOptions::default()
    };
    let running = tokio::select! {
        running = create(args.backend, options) => running?,
        name = stop.recv() => {
            eprintln!("chaos up: {name} while creating the cluster; nothing to clean up yet");
            return Ok(());
        }
    };
    // What the agent supervisor does (an agent died, was restarted, a node was given up) is
    // worth a line: the user sees the cluster heal itself.
    let reporter = running.cluster().agent_events().map(|mut events| {
        tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                match events.recv().await {
                    Ok(event) => eprintln!("chaos up: {event}"),
                    Err(RecvError::Lagged(missed)) => eprintln!("chaos up: {missed} agent events not shown"),
                    Err(RecvError::Closed) => return,
                }
            }
        })
    });
    let result = serve(&args, &dir, &running, &mut stop).await;
    eprintln!("chaos up: cleaning up the cluster");
    let cleaned = running
        .cluster()
        .cleanup()
        .await
        .context("cleaning up the cluster");
    drop(running);
    if let Some(reporter) = reporter {
        reporter.abort();
    }
    result?;
    cleaned?;
    eprintln!("chaos up: cluster stopped and cleaned up");
    Ok(())
}

fn validate(args: &UpArgs) -> Result<(), BadInput> {
    let max = match args.backend {
        #[cfg(target_os = "linux")]
        BackendKind::Netns => backend::netns::MAX_NODES,
        #[cfg(feature = "docker")]
        BackendKind::Docker => backend::docker::MAX_NODES,
        _ => 1000,
    };
    if args.nodes == 0 || args.nodes > max {
        return Err(BadInput(format!(
            "--nodes {}: a {} cluster holds 1 to {max} nodes",
            args.nodes, args.backend
        )));
    }
    if args.heartbeat_timeout < Duration::from_millis(100) {
        return Err(BadInput(format!(
            "--heartbeat-timeout {}: must be at least 100ms (agents are heartbeaten at a third of it)",
            humantime::format_duration(args.heartbeat_timeout)
        )));
    }
    if let Err(why) = backend::availability(args.backend) {
        return Err(BadInput(format!("--backend {}: {why}", args.backend)));
    }
    Ok(())
}

/// Claims the state directory; a live owner is refused, a dead one replaced.
fn claim(dir: &StateDir) -> anyhow::Result<()> {
    let me = Owner::current();
    for _ in 0..3 {
        if dir.claim(me)? {
            return Ok(());
        }
        match dir.occupant()? {
            Occupant::Live(owner) => {
                return Err(BadInput(format!(
                    "{0} already holds a running cluster (chaos up pid {1}): stop it with \
                     `chaos down --state {0}` or pick another --state",
                    dir.path().display(),
                    owner.pid
                ))
                .into());
            }
            Occupant::Stale(owner, cluster) => {
                let leftovers = cluster
                    .and_then(|c| c.backend_state_file)
                    .map(|f| format!("; its leftovers, if any, are listed in {}", f.display()))
                    .unwrap_or_default();
                eprintln!(
                    "chaos up: replacing the stale cluster state in {} (its chaos up, pid {}, is gone{leftovers})",
                    dir.path().display(),
                    owner.pid
                );
                dir.remove_all()
                    .with_context(|| format!("removing stale state from {}", dir.path().display()))?;
            }
            Occupant::Empty => {}
        }
    }
    anyhow::bail!(
        "could not claim {}: another chaos up keeps claiming it at the same time",
        dir.path().display()
    )
}

async fn create(kind: BackendKind, options: ClusterOptions) -> anyhow::Result<Running> {
    let what = || format!("creating a {kind} cluster");
    match kind {
        BackendKind::Local => Ok(Running::Local(LocalCluster::new(options).with_context(what)?)),
        #[cfg(target_os = "linux")]
        BackendKind::Netns => Ok(Running::Netns(
            backend::netns::NetnsCluster::new(options)
                .await
                .with_context(what)?,
        )),
        #[cfg(not(target_os = "linux"))]
        BackendKind::Netns => anyhow::bail!("the netns backend needs Linux"),
        #[cfg(feature = "docker")]
        BackendKind::Docker => Ok(Running::Docker(
            backend::docker::DockerCluster::new(options, backend::docker::DockerOptions::from_env())
                .await
                .with_context(what)?,
        )),
        #[cfg(not(feature = "docker"))]
        BackendKind::Docker => anyhow::bail!("this chaos was built without the docker feature"),
    }
}

/// Creates the nodes, publishes the state files and waits for a stop signal.
async fn serve(
    args: &UpArgs,
    dir: &StateDir,
    running: &Running,
    stop: &mut StopSignals,
) -> anyhow::Result<()> {
    let nodes = tokio::select! {
        nodes = running.cluster().create_nodes(args.nodes as usize) => nodes.context("creating the nodes")?,
        name = stop.recv() => {
            eprintln!("chaos up: {name} while creating the nodes");
            return Ok(());
        }
    };
    let state = describe(running, &nodes);
    #[cfg(target_os = "linux")]
    if let Running::Netns(cluster) = running {
        dir.write_tls(cluster.ca_pem(), cluster.runner_identity())?;
    }
    #[cfg(feature = "docker")]
    if let Running::Docker(cluster) = running {
        dir.write_tls(cluster.ca_pem(), cluster.runner_identity())?;
    }
    dir.write_cluster(&state)?;

    for node in &state.nodes {
        let ips: Vec<String> = node.ips.iter().map(ToString::to_string).collect();
        say(&format!("{} {}", node.name, ips.join(",")));
    }
    eprintln!(
        "chaos up: cluster of {} {} node(s) up; state in {}; stop with Ctrl-C or `chaos down --state {}`",
        state.nodes.len(),
        args.backend,
        dir.cluster_file().display(),
        dir.path().display()
    );
    if matches!(running, Running::Local(_)) {
        eprintln!(
            "chaos up: local backend: `chaos exec` runs commands on this host in the node's root \
             directory (not stopped by `chaos down`); fault and probe need an agent backend (netns, docker)"
        );
    }
    let name = stop.recv().await;
    eprintln!("chaos up: {name} received");
    Ok(())
}

fn describe(running: &Running, nodes: &[Arc<dyn Node>]) -> ClusterState {
    let (backend_state_file, agent_port) = match running {
        Running::Local(_) => (None, None),
        #[cfg(target_os = "linux")]
        Running::Netns(c) => (Some(c.state_file()), Some(backend::netns::AGENT_PORT)),
        #[cfg(feature = "docker")]
        Running::Docker(_) => (None, Some(backend::docker::AGENT_PORT)),
    };
    let entries = nodes
        .iter()
        .map(|n| {
            let direct = agent_port
                .zip(n.addresses().first())
                .map(|(port, ip)| std::net::SocketAddr::new(*ip, port));
            // A remote daemon's agents are reached at ports published on its host.
            #[cfg(feature = "docker")]
            let direct = match running {
                Running::Docker(c) => c.agent_address(n.name()).or(direct),
                _ => direct,
            };
            NodeEntry {
                name: n.name().to_string(),
                ips: n.addresses().to_vec(),
                agent: direct,
                root_dir: n.root_dir().to_string(),
            }
        })
        .collect();
    ClusterState::new(running.cluster().backend(), backend_state_file, entries)
}
