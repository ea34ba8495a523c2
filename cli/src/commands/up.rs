//! `chaos up`: creates a cluster and keeps it alive (the cluster heartbeats its agents, and
//! restarts one that dies, saying so on stderr) until SIGINT, SIGTERM or SIGHUP — which `chaos
//! down` sends — then cleans everything up. The agents run in process groups of their own, so
//! a Ctrl-C in the terminal reaches only `chaos up`, which then stops them in order.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chaos::backend::{Backend, ClusterOptions, registry};
use chaos::{Cluster, Node};
use clap::Args;
use tokio::signal::unix::{Signal, SignalKind, signal};

use super::BadInput;
use super::control;
use super::state::{ClusterState, NodeEntry, Occupant, Owner, StateDir};

/// `chaos up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Backend to run the nodes on, from the backend registry: netns (isolated nodes), docker
    /// (containers), local (agent processes on this host, no isolation, no network faults),
    /// hosts (machines of an inventory, `--inventory FILE`) or ec2 (when built with it).
    #[arg(long, default_value = "netns", value_parser = parse_backend)]
    pub backend: &'static Backend,
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
    /// The backend's own settings file, for backends that need one (e.g. an inventory of
    /// machines); see the backend's documentation.
    #[arg(long, value_name = "FILE", visible_alias = "inventory")]
    pub backend_config: Option<PathBuf>,
    /// Make nodes only on machines carrying this label (repeatable: every pair must match), as
    /// a scenario's `[cluster] labels` does; for backends whose machines have labels (`hosts`).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
}

/// `KEY=VALUE`, both non-empty.
fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() && !v.trim().is_empty() => {
            Ok((k.trim().to_string(), v.trim().to_string()))
        }
        _ => Err(format!("{s:?}: give a label as KEY=VALUE, e.g. --label rack=1")),
    }
}

/// The label selector of `--label` pairs; a key given twice with different values is an error
/// (no machine could match).
fn selector(labels: &[(String, String)]) -> Result<BTreeMap<String, String>, BadInput> {
    let mut selector = BTreeMap::new();
    for (k, v) in labels {
        if let Some(old) = selector.insert(k.clone(), v.clone())
            && &old != v
        {
            return Err(BadInput(format!(
                "--label {k}={old} and --label {k}={v}: a machine has one value per label; give one"
            )));
        }
    }
    Ok(selector)
}

fn parse_backend(s: &str) -> Result<&'static Backend, String> {
    registry::find(s).map_err(|e| e.to_string())
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
        backend_config: args.backend_config.clone(),
        host_labels: selector(&args.labels)?,
        ..ClusterOptions::default()
    };
    let running = tokio::select! {
        running = args.backend.create(options) => {
            running.with_context(|| format!("creating a {} cluster", args.backend))?
        }
        name = stop.recv() => {
            eprintln!("chaos up: {name} while creating the cluster; nothing to clean up yet");
            return Ok(());
        }
    };
    // What the agent supervisor does (an agent died, was restarted, a node was given up) is
    // worth a line: the user sees the cluster heal itself.
    let reporter = running.agent_events().map(|mut events| {
        tokio::spawn(async move {
            use chaos::backend::supervisor::AgentEvent;
            use tokio::sync::broadcast::error::RecvError;
            let bar = crate::progress::NodesBar::default();
            loop {
                match events.recv().await {
                    Ok(AgentEvent::NodesReady { ready, total, .. }) => bar.ready(ready, total),
                    Ok(event) => bar.line(&format!("chaos up: {event}")),
                    Err(RecvError::Lagged(missed)) => {
                        bar.line(&format!("chaos up: {missed} agent events not shown"))
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        })
    });
    let result = serve(&args, &dir, &running, &mut stop).await;
    eprintln!("chaos up: cleaning up the cluster");
    let cleaned = running.cleanup().await.context("cleaning up the cluster");
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
    let max = args.backend.limits.max_nodes;
    if args.nodes == 0 || args.nodes > max {
        return Err(BadInput(format!(
            "--nodes {}: a {} cluster holds 1 to {max} nodes",
            args.nodes, args.backend
        )));
    }
    selector(&args.labels)?;
    if args.heartbeat_timeout < Duration::from_millis(100) {
        return Err(BadInput(format!(
            "--heartbeat-timeout {}: must be at least 100ms (agents are heartbeaten at a third of it)",
            humantime::format_duration(args.heartbeat_timeout)
        )));
    }
    if let Err(why) = args.backend.availability() {
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

/// Creates the nodes, publishes the state files and waits for a stop signal.
async fn serve(
    args: &UpArgs,
    dir: &StateDir,
    running: &Arc<dyn Cluster>,
    stop: &mut StopSignals,
) -> anyhow::Result<()> {
    let nodes = tokio::select! {
        nodes = running.create_nodes(args.nodes as usize) => nodes.context("creating the nodes")?,
        name = stop.recv() => {
            eprintln!("chaos up: {name} while creating the nodes");
            return Ok(());
        }
    };
    // `chaos fault` reaches the cluster's machine faults through this socket; it exists before
    // the state files say the cluster is up.
    let socket = dir.path().join(control::SOCKET);
    let control = control::serve(&socket, running.clone())?;
    let state = describe(&**running, &nodes);
    if let Some((ca_pem, runner)) = running.agent_access() {
        dir.write_tls(ca_pem, runner)?;
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
    let name = stop.recv().await;
    eprintln!("chaos up: {name} received");
    control.abort();
    if let Err(e) = std::fs::remove_file(&socket) {
        eprintln!("chaos up: removing {}: {e}", socket.display());
    }
    Ok(())
}

fn describe(cluster: &dyn Cluster, nodes: &[Arc<dyn Node>]) -> ClusterState {
    // The backend's own record of the cluster (netns: its state file under /run/chaos/netns).
    let backend_state_file = cluster
        .describe()
        .into_iter()
        .find(|(key, _)| *key == "state file")
        .map(|(_, path)| PathBuf::from(path));
    let entries = nodes
        .iter()
        .map(|n| NodeEntry {
            name: n.name().to_string(),
            ips: n.addresses().to_vec(),
            agent: cluster.agent_address(n.name()),
            interfaces: n.interfaces().to_vec(),
            root_dir: n.root_dir().to_string(),
        })
        .collect();
    ClusterState::new(cluster.backend(), backend_state_file, entries)
}
