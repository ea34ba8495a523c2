//! The system under test on each node: the process `[setup.start]` describes and the
//! `[[setup.services]]` beside it (`Scenario::services`, indexed in that order), started,
//! stopped and taken down by faults — all of them, or one service. Shared by the engine (setup, teardown) and the nemeses that act on
//! it (process faults, a stopped machine), hence a table behind a lock rather than fields of
//! the run.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chaos::cluster::Process;
use chaos_proto::{OutputSpec, ProcId, ProcSpec, Signal};
use serde_json::json;

use super::checks::System;
use super::rundir::RunDir;

/// Default bound on a graceful stop of the system.
const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The system's processes on every node, `[node][service]` (`None`: not running).
pub(crate) struct Suts {
    system: Arc<System>,
    dir: Arc<RunDir>,
    procs: Mutex<Vec<Vec<Option<Process>>>>,
}

impl Suts {
    /// No process running yet on the system's nodes.
    pub fn new(system: Arc<System>, dir: Arc<RunDir>) -> Suts {
        let services = system.scenario.services().len();
        let procs = (0..system.nodes.len())
            .map(|_| (0..services).map(|_| None).collect())
            .collect();
        Suts {
            system,
            dir,
            procs: Mutex::new(procs),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Vec<Option<Process>>>> {
        self.procs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The index of service `name` (`None`: the first, `[setup.start]`'s when there is one).
    pub fn service_index(&self, name: Option<&str>) -> Option<usize> {
        match name {
            None => (!self.system.scenario.services().is_empty()).then_some(0),
            Some(n) => self.system.scenario.services().iter().position(|(s, _)| *s == n),
        }
    }

    /// The node-assigned id of service `svc`'s process on node `i`, if it runs.
    pub fn running(&self, i: usize, svc: usize) -> Option<ProcId> {
        self.lock()
            .get(i)
            .and_then(|p| p.get(svc))
            .and_then(|p| p.as_ref().map(|p| p.id))
    }

    /// Takes service `svc`'s process of node `i` out of the table (it is being killed or went
    /// down with its machine; `None`: every service) and waits up to `reap` for it to exit, so
    /// a restart finds its ports free.
    pub async fn take_down(&self, i: usize, svc: Option<usize>, reap: Duration) {
        let taken: Vec<Process> = {
            let mut procs = self.lock();
            let Some(row) = procs.get_mut(i) else { return };
            row.iter_mut()
                .enumerate()
                .filter(|(s, _)| svc.is_none_or(|x| x == *s))
                .filter_map(|(_, p)| p.take())
                .collect()
        };
        for p in taken {
            let control = p.control();
            let _ = tokio::time::timeout(reap, control.wait()).await;
            drop(p);
        }
    }

    /// Starts every service that is not running on node `i`.
    pub async fn start(&self, i: usize) -> Result<(), String> {
        for svc in 0..self.system.scenario.services().len() {
            if self.running(i, svc).is_none() {
                self.start_service(i, svc).await?;
            }
        }
        Ok(())
    }

    /// The log of service `svc` on node `i`: the system's log for `[setup.start]`, else
    /// `logs/NAME.log` beside it.
    pub fn log_path(&self, i: usize, svc: usize) -> String {
        let system = &self.system;
        match system.scenario.services().get(svc) {
            Some(("system", _)) | None => system.log_paths[i].clone(),
            Some((name, _)) => format!("{}/logs/{name}.log", system.nodes[i].root_dir()),
        }
    }

    /// Starts service `svc` on node `i` (its stdout and stderr appended to its log).
    pub async fn start_service(&self, i: usize, svc: usize) -> Result<(), String> {
        let system = &self.system;
        let services = system.scenario.services();
        let Some(&(name, start)) = services.get(svc) else {
            return Ok(());
        };
        let node = &system.nodes[i];
        let mut spec: ProcSpec = system.command_spec(i, &start.command)?;
        for (k, v) in &start.env {
            spec.env.insert(k.clone(), system.render(i, v)?);
        }
        if let Some(cwd) = &start.cwd {
            spec.cwd = Some(system.render(i, cwd)?);
        }
        let log = self.log_path(i, svc);
        spec.stdout = OutputSpec::File {
            path: log.clone(),
            append: true,
        };
        spec.stderr = OutputSpec::File {
            path: log.clone(),
            append: true,
        };
        let process = node
            .start(spec)
            .await
            .map_err(|e| format!("starting {} on {}: {e}", shown_service(name), node.name()))?;
        self.dir.event(
            "system_started",
            json!({"node": node.name(), "service": name, "pid": process.pid, "id": process.id, "log": log}),
        );
        self.lock()[i][svc] = Some(process);
        Ok(())
    }

    /// Stops every service on node `i`, the last started first (see [`Suts::stop_service`]).
    pub async fn stop(&self, i: usize, signal: Option<Signal>, bound: Option<Duration>) {
        for svc in (0..self.system.scenario.services().len()).rev() {
            self.stop_service(i, svc, signal, bound).await;
        }
    }

    /// Stops service `svc` on node `i`: `signal`, then SIGKILL after `bound`. Without them, the
    /// service's `stop_signal` and `stop_timeout` (scaled).
    pub async fn stop_service(&self, i: usize, svc: usize, signal: Option<Signal>, bound: Option<Duration>) {
        let Some(process) = self
            .lock()
            .get_mut(i)
            .and_then(|p| p.get_mut(svc))
            .and_then(Option::take)
        else {
            return;
        };
        let scenario = &self.system.scenario;
        let services = scenario.services();
        let Some(&(name, start)) = services.get(svc) else {
            return;
        };
        let start = Some(start);
        let signal = signal
            .or_else(|| start.and_then(|s| s.stop_signal).map(|s| s.0))
            .unwrap_or(Signal::TERM);
        let bound = bound.unwrap_or_else(|| {
            scenario.scaled(
                start
                    .and_then(|s| s.stop_timeout)
                    .map(|d| d.0)
                    .unwrap_or(DEFAULT_STOP_TIMEOUT),
            )
        });
        let control = process.control();
        let _ = control.signal(signal, true).await;
        let exit = tokio::time::timeout(bound, control.wait()).await;
        if exit.is_err() {
            let _ = control.signal(Signal::KILL, true).await;
            let _ = tokio::time::timeout(Duration::from_secs(5), control.wait()).await;
        }
        self.dir.event(
            "system_stopped",
            json!({"node": self.system.nodes[i].name(), "service": name, "graceful": exit.is_ok()}),
        );
    }
}

/// "the system" or "service `NAME`", for messages.
pub(crate) fn shown_service(name: &str) -> String {
    if name == "system" {
        "the system".to_string()
    } else {
        format!("service `{name}`")
    }
}
