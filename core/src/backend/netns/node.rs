//! One node's resources — namespace, cgroup, its agent process — how they are torn down, and
//! how the node's agent is restarted in place (for the supervisor).

use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::process::Child;

use super::{TEARDOWN_BOUND, agent, backend_error, cgroup, namespace};
use crate::{Error, Result};

/// One node's resources, released by [`teardown_nodes`] (also on drop, so a node whose
/// creation fails or is cancelled half-way leaves nothing behind).
pub(super) struct NodeRes {
    pub(super) name: String,
    pub(super) netns: String,
    pub(super) netns_created: bool,
    pub(super) netns_fd: Option<File>,
    pub(super) cgroup: Option<PathBuf>,
    pub(super) agent: Arc<AgentSlot>,
    /// How its agent is started; set once it was.
    pub(super) spec: Option<agent::AgentSpec>,
}

impl Drop for NodeRes {
    fn drop(&mut self) {
        for e in teardown_nodes(std::slice::from_mut(self)) {
            tracing::warn!("netns node {}: cleanup: {e}", self.name);
        }
    }
}

/// A node's agent process, shared by the node's resources (whose teardown kills it) and its
/// supervisor's keeper (which puts a restarted agent here).
#[derive(Default)]
pub(super) struct AgentSlot(Mutex<SlotState>);

#[derive(Default)]
pub(super) struct SlotState {
    pub(super) child: Option<Child>,
    /// The node is being torn down: no agent may be started in it any more.
    closed: bool,
}

impl AgentSlot {
    pub(super) fn lock(&self) -> MutexGuard<'_, SlotState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `None` while an agent runs in the slot; how it ended otherwise.
    pub(super) fn exit_status(&self) -> Option<String> {
        match self.lock().child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => None,
            Some(Ok(Some(status))) => Some(status.to_string()),
            Some(Err(e)) => Some(format!("waiting for it failed: {e}")),
            None => Some("no agent process".to_string()),
        }
    }

    /// Closes the slot and returns its agent, for the teardown to kill.
    fn close(&self) -> Option<Child> {
        let mut slot = self.lock();
        slot.closed = true;
        slot.child.take()
    }
}

/// Kills and releases `nodes`, blocking, in phases so that many nodes die in parallel:
/// kill every agent and cgroup, then reap, then remove cgroups and namespaces. Idempotent.
pub(super) fn teardown_nodes(nodes: &mut [NodeRes]) -> Vec<String> {
    let mut errors = Vec::new();
    let deadline = Instant::now() + TEARDOWN_BOUND;
    let mut agents: Vec<(String, Child)> = Vec::new();
    for n in nodes.iter_mut() {
        if let Some(mut agent) = n.agent.close() {
            let _ = agent.start_kill();
            agents.push((n.name.clone(), agent));
        }
        if let Some(dir) = &n.cgroup
            && let Err(e) = cgroup::kill(dir)
        {
            errors.push(format!("node {}: {e}", n.name));
        }
    }
    for (name, mut agent) in agents {
        loop {
            match agent.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
                Ok(None) => {
                    errors.push(format!("node {name}: agent pid {:?} did not exit", agent.id()));
                    break;
                }
            }
        }
    }
    for n in nodes.iter_mut() {
        if let Some(dir) = n.cgroup.take()
            && let Err(e) = cgroup::remove_tree(&dir, deadline)
        {
            errors.push(format!("node {}: {e}", n.name));
        }
        n.netns_fd = None;
        if std::mem::take(&mut n.netns_created)
            && let Err(e) = namespace::remove(&n.netns)
        {
            errors.push(format!("node {}: {e}", n.name));
        }
    }
    errors
}

/// Starts the agent of a node whose agent died again in the node — same namespace (`netns`,
/// opened by name: a torn-down node has none), cgroup, listen address, TLS and state
/// directories, its log appended to — and waits for its ready line. Refused once the node is
/// being torn down.
pub(super) async fn restart_agent(
    slot: &AgentSlot,
    spec: &agent::AgentSpec,
    netns: &std::path::Path,
) -> Result<()> {
    let node = &spec.node;
    let netns =
        File::open(netns).map_err(|e| Error::io(format!("node {node}: opening {}", netns.display()), e))?;
    let lines = {
        let mut slot = slot.lock();
        if slot.closed {
            return Err(backend_error(format!("node {node}: torn down, not restarted")));
        }
        // Spawned under the slot's lock, so a teardown either sees the new agent or closed the
        // slot before it could start.
        let spawned = agent::spawn(spec, &netns, true)?;
        if let Some(mut old) = slot.child.replace(spawned.child) {
            // Exited already (that is why we restart); reap it.
            let _ = old.try_wait();
        }
        spawned.lines
    };
    let started = async {
        let addr = agent::ready(spec, lines).await?;
        if addr != spec.listen {
            return Err(backend_error(format!(
                "node {node}: the restarted agent announced {addr} instead of {}",
                spec.listen
            )));
        }
        Ok(())
    };
    let result = started.await;
    if result.is_err()
        && let Some(child) = slot.lock().child.as_mut()
    {
        let _ = child.start_kill();
    }
    result
}
