//! One node: how its resources — namespace, veth, files, cgroup, its agent process — are made
//! and torn down, and how its agent is restarted in place (for the supervisor).

use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::process::Child;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;

use rtnetlink::Handle;

use super::{
    AGENT_PORT, Inner, NODE_LINK, TEARDOWN_BOUND, agent, backend_error, cgroup, links, namespace,
    node_address, node_netns_name,
};
use crate::backend::provision::{Machine, MachineRequest};
use crate::{Error, Result};

impl Inner {
    /// Makes node `k`'s namespace, files and cgroup and starts its agent; on any failure (or
    /// cancellation) the node's resources are released when `res` drops.
    pub(super) async fn create_node(
        &self,
        request: &MachineRequest<'_>,
        hub: Handle,
    ) -> Result<(Machine, NodeRes)> {
        let name = request.name.clone();
        let k = request.number;
        let ip = node_address(self.index, k);
        let mut res = NodeRes {
            name: name.clone(),
            netns: node_netns_name(self.index, k),
            netns_created: false,
            netns_fd: None,
            cgroup: None,
            agent: Arc::default(),
            spec: None,
        };
        let netns = res.netns.clone();
        let ctx = |what: &str| format!("node {name} ({netns}): {what}");

        // Network: namespace, veth into the hub's bridge, address, loopback.
        let ns = namespace::create(&res.netns, true)
            .await
            .map_err(|e| Error::io(ctx("creating the network namespace"), e))?;
        ns.guard.disarm();
        res.netns_created = true;
        let ns_fd = res.netns_fd.insert(ns.fd).as_raw_fd();
        let node_nl = links::handle_for(
            ns.netlink
                .ok_or_else(|| backend_error("node netlink socket missing"))?,
        )
        .map_err(|e| Error::io(ctx("netlink socket"), e))?;
        let net = async {
            links::add_bridge_port_veth(&hub, &name, self.bridge_index, NODE_LINK, ns_fd).await?;
            let eth = links::index_of(&node_nl, NODE_LINK).await?;
            tokio::try_join!(
                links::add_address(&node_nl, eth, IpAddr::V4(ip), super::PREFIX_LEN),
                links::set_up_index(&node_nl, eth),
                links::set_up_index(&node_nl, links::LOOPBACK_INDEX),
            )?;
            Ok::<_, io::Error>(())
        };
        net.await
            .map_err(|e| Error::io(ctx("configuring the network"), e))?;
        drop(node_nl);

        // Files: root directory, TLS material (keys 0600, never on a command line).
        let node_dir = self.dir.join(&name);
        let root_dir = node_dir.join("root");
        let tls_dir = node_dir.join("tls");
        std::fs::create_dir_all(&root_dir)
            .map_err(|e| Error::io(ctx(&format!("creating {}", root_dir.display())), e))?;
        let identity = request.issue_identity(&[IpAddr::V4(ip)], &[])?;
        identity.write_node_dir(&tls_dir, request.ca_pem())?;

        // cgroup: the node's directory, the agent in its `agent` child.
        let cgroup_dir = self.cgroup_dir.join(&name);
        cgroup::create(&cgroup_dir.join("agent")).map_err(|e| Error::io(ctx("cgroup"), e))?;
        res.cgroup = Some(cgroup_dir.clone());

        let spec = agent::AgentSpec {
            node: name.clone(),
            binary: self.agent_bin.clone(),
            listen: SocketAddr::new(IpAddr::V4(ip), AGENT_PORT),
            tls_dir,
            root_dir: root_dir.clone(),
            state_dir: node_dir.join("state"),
            cgroup: cgroup_dir,
            log: node_dir.join("agent.log"),
            heartbeat_timeout: request.heartbeat_timeout,
            ready_timeout: request.ready_timeout,
        };
        let netns_file = res
            .netns_fd
            .as_ref()
            .ok_or_else(|| backend_error("namespace fd missing"))?;
        let spawned = agent::spawn(&spec, netns_file, false)?;
        res.agent.lock().child = Some(spawned.child);
        let addr = agent::ready(&spec, spawned.lines).await?;
        if addr != spec.listen {
            return Err(backend_error(ctx(&format!(
                "the agent announced {addr} instead of {}",
                spec.listen
            ))));
        }
        res.spec = Some(spec);
        let machine = Machine {
            agent: addr,
            ips: vec![IpAddr::V4(ip)],
            interfaces: vec![NODE_LINK.to_string()],
            root_dir: root_dir.to_string_lossy().into_owned(),
        };
        Ok((machine, res))
    }
}

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
