//! Setup and teardown: the cluster, the nemeses and what they can do, shipped and templated
//! files, setup commands, the system and its readiness; at the end every fault healed, teardown
//! commands, the system stopped, logs collected, the cluster cleaned up.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chaos::backend::ClusterOptions;
use chaos::backend::workspace_binary::{BUILTIN_ADAPTERS, Linkage, WorkspaceBinary};
use chaos::cluster::Node;
use chaos::ext::NodeExt;
use chaos::faults;
use chaos_check::Header;
use serde_json::json;

use super::run::{Abort, Run};
use super::{COMMAND_BOUND, DATA_ARCHIVE_LIMIT, Progress, builtin_of, find_on_runner};
use crate::checks::System;
use crate::model::{Check, Dur, OnceStep};
use crate::nemesis::machine::MachineNemesis;
use crate::nemesis::network::{AgentNemesis, PartitionNemesis};
use crate::nemesis::process::ProcessNemesis;
use crate::nemesis::{self, Probes};
use crate::sut::Suts;
use crate::template::{self, NodeVars, Templates, Vars, ship_destination};
use crate::workload::{Recorder, Workload};

/// Default bound of a `[[setup.once]]` step.
const ONCE_TIMEOUT: Dur = Dur::secs(30);

/// Default pause between a `[[setup.once]]` step's attempts.
const ONCE_INTERVAL: Dur = Dur::secs(1);

impl Run {
    /// Finds every file `[[setup.ship]]` names on the runner, in order, and the built-in adapters
    /// a runner-side adapter names: a built-in is found or built (once, minutes) here, before
    /// any node exists, with the linkage the backend's nodes need.
    async fn resolve_ships(&mut self) -> Result<(Vec<PathBuf>, Vec<(String, PathBuf)>), Abort> {
        let scenario = self.scenario.clone();
        let linkage = scenario.cluster.backend.entry().ship_linkage;
        let mut sources = Vec::new();
        for ship in &scenario.setup.ship {
            let source = match builtin_of(ship) {
                Some(adapter) => self.obtain(adapter, linkage).await?,
                None => find_on_runner(&ship.from).map_err(Abort::Setup)?,
            };
            sources.push(source);
        }
        let mut on_runner = Vec::new();
        for adapter in BUILTIN_ADAPTERS {
            if template::runner_uses(&scenario, adapter.bin) {
                let path = self.obtain(adapter, Linkage::Any).await?;
                on_runner.push((adapter.bin.to_string(), path));
            }
        }
        Ok((sources, on_runner))
    }

    /// One built-in adapter for `linkage`, interruptible.
    async fn obtain(&mut self, adapter: WorkspaceBinary, linkage: Linkage) -> Result<PathBuf, Abort> {
        self.interrupted()?;
        self.status_line(&format!("finding {} (built once when missing)", adapter.bin));
        tokio::select! {
            found = adapter.obtain(linkage) => found.map_err(|e| Abort::Setup(format!("setup.ship: {e}"))),
            _ = self.cancel.cancelled() => Err(Abort::Interrupted),
        }
    }

    pub(super) async fn setup(&mut self) -> Result<(), Abort> {
        let scenario = self.scenario.clone();
        let (ship_sources, runner_builtins) = self.resolve_ships().await?;
        let n = scenario.cluster.nodes;
        self.status_line(&format!("creating {n} {} nodes", scenario.cluster.backend));
        let options = ClusterOptions {
            name: format!("scn-{}", scenario.name),
            backend_config: self.options.backend_config.clone(),
            host_labels: scenario.cluster.labels.clone(),
            keep_failed_runs: self.options.keep_failed,
            image_include: scenario.cluster.docker.include.iter().map(Into::into).collect(),
            ..ClusterOptions::default()
        };
        let backend = scenario.cluster.backend.entry();
        let cluster = tokio::select! {
            c = backend.create(options) => c.map_err(|e| Abort::Setup(format!("creating the cluster: {e}")))?,
            _ = self.cancel.cancelled() => return Err(Abort::Interrupted),
        };
        self.cluster = Some(cluster.clone());
        self.agent_events = cluster
            .agent_events()
            .map(|events| self.record_agent_events(events));
        let nodes = tokio::select! {
            created = cluster.create_nodes(n) => created.map_err(|e| Abort::Setup(format!("creating {n} nodes: {e}")))?,
            _ = self.cancel.cancelled() => return Err(Abort::Interrupted),
        };
        let node_vars: Vec<NodeVars> = nodes
            .iter()
            .enumerate()
            .map(|(i, node)| NodeVars {
                name: node.name().to_string(),
                ip: node
                    .addresses()
                    .first()
                    .map(|a| a.to_string())
                    .unwrap_or_default(),
                index: i + 1,
                root: node.root_dir().to_string(),
            })
            .collect();
        self.dir.event(
            "nodes_created",
            json!({"nodes": node_vars.iter().map(|n| json!({"name": n.name, "ip": n.ip, "root": n.root})).collect::<Vec<_>>()}),
        );
        let templates = Templates::new();
        let base = Vars {
            scenario: scenario.name.clone(),
            seed: self.seed,
            run_id: self.dir.run_id.clone(),
            values: scenario.values.clone(),
            nodes: node_vars.clone(),
            node: None,
            bin: Default::default(),
            extra: Default::default(),
        };
        let vars = (0..nodes.len())
            .map(|i| base.for_node(i, &scenario, &templates))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Abort::Setup(format!("templates: {e}")))?;
        let log_paths = nodes
            .iter()
            .map(|n| format!("{}/logs/system.log", n.root_dir()))
            .collect();
        let system = Arc::new(System {
            scenario: scenario.clone(),
            nodes: nodes.clone(),
            vars,
            templates,
            log_paths,
            runner_bin: template::runner_bin(&scenario, &ship_sources, &runner_builtins),
            measurements: Default::default(),
        });
        self.system = Some(system.clone());
        let suts = Arc::new(Suts::new(system.clone(), self.dir.clone()));
        self.suts = Some(suts.clone());
        let probes = Probes::new(nodes.clone());
        self.nemeses = vec![
            Box::new(AgentNemesis::new(nodes.clone(), probes.clone())),
            Box::new(PartitionNemesis::new(nodes.clone(), probes.clone())),
            Box::new(ProcessNemesis::new(
                nodes.clone(),
                probes,
                suts.clone(),
                scenario.timeout_multiplier,
            )),
            Box::new(MachineNemesis::new(cluster.clone(), nodes.clone(), suts.clone())),
        ];
        self.check_capabilities().await?;

        // Files shipped from the runner.
        for (ship, source) in scenario.setup.ship.iter().zip(&ship_sources) {
            self.interrupted()?;
            self.status_line(&format!("shipping {}", source.display()));
            let bytes = tokio::fs::read(&source)
                .await
                .map_err(|e| Abort::Setup(format!("reading {}: {e}", source.display())))?;
            let mode = ship.mode.unwrap_or(0o755);
            let shown = source.display().to_string();
            let sends = (0..nodes.len()).map(|i| {
                let bytes = bytes.clone();
                let system = system.clone();
                let shown = shown.clone();
                async move {
                    let dest = ship_destination(ship, &system.vars[i], &system.templates)?;
                    system.nodes[i]
                        .send_bytes(&dest, bytes, mode)
                        .await
                        .map_err(|e| format!("shipping {shown} to {dest}: {e}"))?;
                    Ok::<String, String>(dest)
                }
            });
            let results = futures_util::future::join_all(sends).await;
            for r in results {
                let dest = r.map_err(Abort::Setup)?;
                self.dir.event(
                    "shipped",
                    json!({"from": source.display().to_string(), "to": dest}),
                );
            }
        }
        // Templated files.
        for file in &scenario.setup.files {
            for (i, node) in nodes.iter().enumerate() {
                let to = system.render(i, &file.to).map_err(Abort::Setup)?;
                let content = system.render(i, &file.content).map_err(Abort::Setup)?;
                node.send_bytes(&to, content.into_bytes(), file.mode.unwrap_or(0o644))
                    .await
                    .map_err(|e| Abort::Setup(format!("writing {to}: {e}")))?;
            }
        }
        // Setup commands.
        for cmd in &scenario.setup.commands {
            for (i, node) in nodes.iter().enumerate() {
                self.interrupted()?;
                let spec = system.command_spec(i, cmd).map_err(Abort::Setup)?;
                let shown = crate::checks::shown(&spec);
                let out = node
                    .run_timeout(spec, None, scenario.scaled(COMMAND_BOUND))
                    .await
                    .map_err(|e| Abort::Setup(format!("setup command `{shown}` on {}: {e}", node.name())))?;
                if !out.status.success() {
                    return Err(Abort::Setup(format!(
                        "setup command `{shown}` on {}: {}: {}",
                        node.name(),
                        out.status,
                        out.stderr_str().trim()
                    )));
                }
            }
        }
        // The system itself: one service at a time on every node, each gated by its own
        // readiness checks, so a store the next service depends on is healthy before it starts.
        let services = scenario.services();
        for (svc, (name, start)) in services.iter().enumerate() {
            self.status_line(&format!("starting {}", crate::sut::shown_service(name)));
            for i in 0..nodes.len() {
                self.interrupted()?;
                suts.start_service(i, svc).await.map_err(Abort::Setup)?;
            }
            self.wait_ready(&system, &start.ready, Some(name)).await?;
        }
        self.wait_ready(&system, &scenario.setup.ready, None).await?;
        for step in &scenario.setup.once {
            self.run_once(&system, step).await?;
        }
        self.say(format!(
            "{} nodes ready: {}",
            nodes.len(),
            system
                .vars
                .iter()
                .filter_map(|v| v.node.as_ref().map(|n| format!("{} {}", n.name, n.ip)))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        Ok(())
    }

    /// Runs readiness `checks` in order until each passes (those of service `service`, or
    /// `[[setup.ready]]`); the first that does not pass within its bound stops the run.
    async fn wait_ready(
        &mut self,
        system: &System,
        checks: &[Check],
        service: Option<&str>,
    ) -> Result<(), Abort> {
        for check in checks {
            self.interrupted()?;
            self.status_line(&format!("waiting for `{}`", check.name));
            let result = system
                .run_check_noting(check, &self.cancel, &|line| self.say(line))
                .await;
            self.interrupted()?;
            let mut event = json!(result);
            if let (Some(service), Some(map)) = (service, event.as_object_mut()) {
                map.insert("service".into(), json!(service));
            }
            self.dir.event("ready_check", event);
            if !result.passed {
                self.verdict
                    .failed_nodes
                    .extend(result.failed_nodes.iter().cloned());
                let whose = service
                    .map(|s| format!("{}: ", crate::sut::shown_service(s)))
                    .unwrap_or_default();
                return Err(Abort::Setup(format!(
                    "the system did not become ready: {whose}check `{}`: {}",
                    check.name, result.detail
                )));
            }
        }
        Ok(())
    }

    /// Runs a `[[setup.once]]` step on its node until it exits 0, at most its timeout.
    async fn run_once(&mut self, system: &System, step: &OnceStep) -> Result<(), Abort> {
        let scenario = &self.scenario;
        let i = match &step.node {
            Some(name) => system.nodes.iter().position(|n| n.name() == name).unwrap_or(0),
            None => 0,
        };
        let node = system.nodes[i].clone();
        let spec = system.command_spec(i, &step.command).map_err(Abort::Setup)?;
        let shown = crate::checks::shown(&spec);
        let name = if step.name.is_empty() {
            shown.clone()
        } else {
            step.name.clone()
        };
        let timeout = scenario.scaled(step.timeout.unwrap_or(ONCE_TIMEOUT).0);
        let interval = step.interval.unwrap_or(ONCE_INTERVAL).0;
        self.status_line(&format!("one-time step `{name}` on {}", node.name()));
        let started = std::time::Instant::now();
        let mut attempts = 0u32;
        loop {
            self.interrupted()?;
            attempts += 1;
            let left = timeout
                .saturating_sub(started.elapsed())
                .max(Duration::from_secs(1));
            let last = match node
                .run_timeout(spec.clone(), None, left.min(COMMAND_BOUND))
                .await
            {
                Ok(out) if out.status.success() => {
                    self.dir.event(
                        "once_done",
                        json!({"name": name, "node": node.name(), "attempts": attempts,
                               "elapsed_ms": started.elapsed().as_millis() as u64}),
                    );
                    return Ok(());
                }
                Ok(out) => format!(
                    "{}: {}{}",
                    out.status,
                    out.stdout_str().trim(),
                    out.stderr_str().trim()
                ),
                Err(e) => e.to_string(),
            };
            if started.elapsed() + interval >= timeout {
                self.dir.event(
                    "once_failed",
                    json!({"name": name, "node": node.name(), "attempts": attempts, "last": last}),
                );
                return Err(Abort::Setup(format!(
                    "one-time step `{name}` (`{shown}` on {}) did not succeed within {timeout:?} ({attempts} attempts); last attempt: {last}",
                    node.name()
                )));
            }
            tokio::time::sleep(interval).await;
        }
    }

    /// Asks the nemeses whether this cluster can carry out every fault case that may run (the
    /// nodes' probe reports, the cluster's machine faults), so that a run does not stop half-way
    /// on a fault its backend cannot do.
    pub(super) async fn check_capabilities(&mut self) -> Result<(), Abort> {
        let mut asked = std::collections::HashSet::new();
        for case in self.scenario.faults.iter().filter(|c| c.weight > 0) {
            if !asked.insert(serde_json::to_string(&case.fault).unwrap_or_default()) {
                continue;
            }
            let Some(nemesis) = nemesis::find(&self.nemeses, &case.fault) else {
                return Err(Abort::Setup(format!(
                    "fault case `{}`: no nemesis carries out {} faults",
                    case.name,
                    case.fault.kind()
                )));
            };
            if let Err(why) = nemesis.supports(&case.fault).await {
                return Err(Abort::Setup(format!(
                    "fault case `{}` ({}) cannot run on this {} cluster: {why} (or set its weight to 0)",
                    case.name,
                    case.fault.kind(),
                    self.scenario.cluster.backend
                )));
            }
        }
        Ok(())
    }

    pub(super) fn start_workload(&mut self) -> Result<(), Abort> {
        let system = self.system();
        let header = Header {
            run: Some(format!("{} {}", self.scenario.name, self.dir.run_id)),
            started_at: Some(self.started_at.clone()),
            nodes: system.nodes.iter().map(|n| n.name().to_string()).collect(),
            max_error_fraction: self.scenario.history.max_error_fraction,
            max_recovery_us: self
                .scenario
                .history
                .max_recovery
                .map(|d| self.scenario.scaled(d.0).as_micros() as u64),
            ..Header::new()
        };
        let recorder = Recorder::create(&self.dir.path.join("history.jsonl"), &header)
            .map_err(|e| Abort::Setup(format!("creating history.jsonl: {e}")))?;
        self.recorder = Some(recorder.clone());
        if let Ok(mut st) = self.status.lock() {
            st.recorder = Some(recorder.clone());
        }
        if let Some(spec) = &self.scenario.workload {
            self.workload = Some(Workload::start(system, spec, self.plan.workload_seed, recorder));
            self.dir.event(
                "workload_started",
                json!({"type": spec.kind, "rate": spec.rate, "concurrency": spec.concurrency, "seed": self.plan.workload_seed}),
            );
        }
        Ok(())
    }

    pub(super) async fn teardown(&mut self) {
        self.status_line("tearing down");
        if let Some(w) = self.workload.take() {
            // Interrupted or stopped early: no final reads, the system may be down.
            w.stop(false).await;
        }
        self.heal_remaining().await;
        let Some(system) = self.system.clone() else {
            return;
        };
        // Every fault on every node, whoever installed it (the local backend has none to list).
        if let Err(e) = faults::heal_all(&system.nodes).await {
            tracing::debug!("healing all faults: {e}");
        }
        for cmd in &self.scenario.teardown.commands {
            for i in 0..system.nodes.len() {
                let Ok(spec) = system.command_spec(i, cmd) else {
                    continue;
                };
                match system.nodes[i].run_timeout(spec, None, COMMAND_BOUND).await {
                    Ok(out) if out.status.success() => {}
                    Ok(out) => {
                        tracing::warn!("teardown command on {}: {}", system.nodes[i].name(), out.status)
                    }
                    Err(e) => tracing::warn!("teardown command on {}: {e}", system.nodes[i].name()),
                }
            }
        }
        if let Some(suts) = self.suts.clone() {
            for i in 0..system.nodes.len() {
                suts.stop(i, None, None).await;
            }
        }
        self.collect(&system).await;
        // The cluster itself goes once the verdict is known ([`Run::cleanup_cluster`]): a
        // failed run may keep its nodes' directories.
    }

    /// Ends the cluster; when `failed`, first tells it so ([`chaos::Cluster::run_failed`]),
    /// which keeps the nodes' root directories if asked: those are recorded (events and
    /// summary; the CLI prints them).
    pub(super) async fn cleanup_cluster(&mut self, failed: bool) {
        if failed && let Some(cluster) = &self.cluster {
            let kept = cluster.run_failed();
            if !kept.is_empty() {
                self.dir.event("dirs_kept", json!({"kept": kept}));
            }
            self.kept = kept;
        }
        if let Some(cluster) = self.cluster.take()
            && let Err(e) = cluster.cleanup().await
        {
            tracing::error!("cleaning up the cluster: {e}");
            self.dir.event("cleanup_error", json!({"error": e.to_string()}));
        }
        if let Some(task) = self.agent_events.take() {
            // The cleanup stopped the supervisor; what it sent before is written by now or
            // within moments (the channel closes once the cluster is dropped).
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(1), task).await.is_err() {
                abort.abort();
            }
        }
    }

    /// Writes each agent event to `events.jsonl` (and reports it to the observer as a line)
    /// as it happens.
    pub(super) fn record_agent_events(
        &self,
        mut events: tokio::sync::broadcast::Receiver<chaos::backend::supervisor::AgentEvent>,
    ) -> tokio::task::JoinHandle<()> {
        use chaos::backend::supervisor::AgentEvent;
        use tokio::sync::broadcast::error::RecvError;
        let dir = self.dir.clone();
        let observer = self.options.observer.clone();
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(event) => {
                        dir.event(event.name(), json!(event));
                        if let Some(observer) = &observer {
                            // Creation progress is a status, not a line of its own.
                            observer.progress(match event {
                                AgentEvent::NodesReady { ready, total, .. } => {
                                    Progress::Doing(format!("creating nodes: {ready}/{total} ready"))
                                }
                                event => Progress::Line(event.to_string()),
                            });
                        }
                    }
                    Err(RecvError::Lagged(missed)) => {
                        dir.event("agent_events_lost", json!({"missed": missed}));
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        })
    }

    /// Copies every node's system log, the `teardown.collect` paths, and the data directory of
    /// failed nodes into `nodes/<name>/`.
    async fn collect(&self, system: &System) {
        self.status_line("collecting logs");
        for (i, node) in system.nodes.iter().enumerate() {
            let dest = self.dir.path.join("nodes").join(node.name());
            let mut budget = DATA_ARCHIVE_LIMIT;
            copy_from_node(
                node.as_ref(),
                &system.log_paths[i],
                &dest.join("system.log"),
                &mut budget,
            )
            .await;
            for service in &self.scenario.setup.services {
                let log = format!("{}/logs/{}.log", node.root_dir(), service.name);
                let local = dest.join(format!("{}.log", service.name));
                copy_from_node(node.as_ref(), &log, &local, &mut budget).await;
            }
            for c in &self.scenario.teardown.collect {
                let Ok(path) = system.render(i, c) else { continue };
                let name = Path::new(&path)
                    .file_name()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "collected".into());
                copy_from_node(node.as_ref(), &path, &dest.join(name), &mut budget).await;
            }
            if self.verdict.failed_nodes.contains(node.name())
                && let Some(data) = self
                    .scenario
                    .setup
                    .start
                    .as_ref()
                    .and_then(|s| s.data_dir.as_ref())
                && let Ok(path) = system.render(i, data)
            {
                let mut budget = DATA_ARCHIVE_LIMIT;
                copy_from_node(node.as_ref(), &path, &dest.join("data"), &mut budget).await;
                self.dir
                    .event("data_archived", json!({"node": node.name(), "from": path}));
            }
        }
    }
}

/// Copies a file or directory tree from a node, within `budget` bytes. Missing paths are skipped.
async fn copy_from_node(node: &dyn Node, path: &str, dest: &Path, budget: &mut u64) {
    let Ok(stat) = node.stat(path).await else { return };
    match stat.file_type {
        chaos_proto::FileType::Dir => {
            let Ok(entries) = node.list_dir(path).await else {
                return;
            };
            let _ = std::fs::create_dir_all(dest);
            for e in entries {
                let child = format!("{}/{}", path.trim_end_matches('/'), e.name);
                Box::pin(copy_from_node(node, &child, &dest.join(&e.name), budget)).await;
            }
        }
        chaos_proto::FileType::File => {
            if stat.size > *budget {
                tracing::warn!("not copying {path} from {}: over the archive limit", node.name());
                return;
            }
            if let Ok(bytes) = node.read_bytes(path).await {
                *budget = budget.saturating_sub(bytes.len() as u64);
                if let Some(parent) = dest.parent() {
                    let _ = std::fs::create_dir_all(parent);
                }
                let _ = std::fs::write(dest, bytes);
            }
        }
        _ => {}
    }
}
