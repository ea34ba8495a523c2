//! The system under test on each node: the process `[setup.start]` describes, started, stopped
//! and taken down by faults. Shared by the engine (setup, teardown) and the nemeses that act on
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

/// The system's process on every node (`None`: not running).
pub(crate) struct Suts {
    system: Arc<System>,
    dir: Arc<RunDir>,
    procs: Mutex<Vec<Option<Process>>>,
}

impl Suts {
    /// No process running yet on the system's nodes.
    pub fn new(system: Arc<System>, dir: Arc<RunDir>) -> Suts {
        let procs = (0..system.nodes.len()).map(|_| None).collect();
        Suts {
            system,
            dir,
            procs: Mutex::new(procs),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Option<Process>>> {
        self.procs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The node-assigned id of the system's process on node `i`, if it runs.
    pub fn running(&self, i: usize) -> Option<ProcId> {
        self.lock().get(i).and_then(|p| p.as_ref().map(|p| p.id))
    }

    /// Takes the process of node `i` out of the table (it is being killed or went down with its
    /// machine) and waits up to `reap` for it to exit, so a restart finds its ports free.
    pub async fn take_down(&self, i: usize, reap: Duration) {
        let process = self.lock().get_mut(i).and_then(Option::take);
        if let Some(p) = process {
            let control = p.control();
            let _ = tokio::time::timeout(reap, control.wait()).await;
            drop(p);
        }
    }

    /// Starts the system on node `i` (its stdout and stderr appended to its log).
    pub async fn start(&self, i: usize) -> Result<(), String> {
        let system = &self.system;
        let Some(start) = &system.scenario.setup.start else {
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
        let log = system.log_paths[i].clone();
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
            .map_err(|e| format!("starting the system on {}: {e}", node.name()))?;
        self.dir.event(
            "system_started",
            json!({"node": node.name(), "pid": process.pid, "id": process.id, "log": log}),
        );
        self.lock()[i] = Some(process);
        Ok(())
    }

    /// Stops the system on node `i`: `signal`, then SIGKILL after `bound`. Without them, the
    /// scenario's `stop_signal` and `stop_timeout` (scaled).
    pub async fn stop(&self, i: usize, signal: Option<Signal>, bound: Option<Duration>) {
        let Some(process) = self.lock().get_mut(i).and_then(Option::take) else {
            return;
        };
        let scenario = &self.system.scenario;
        let start = scenario.setup.start.as_ref();
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
            json!({"node": self.system.nodes[i].name(), "graceful": exit.is_ok()}),
        );
    }
}
