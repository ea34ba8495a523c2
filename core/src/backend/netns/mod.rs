//! The `netns` backend: every node is a Linux network namespace with its own IPv4 address,
//! running `chaos-agent`, its processes in a cgroup of their own.
//!
//! # Layout of cluster number `i`
//!
//! ```text
//!  host netns                 hub netns chaos-<i>             node netns chaos-<i>-n<k>
//!  chaos<i> <subnet>.1 ────── chaos<i>h ─┐
//!                             br0 ────────┤
//!                               n<k> ─────┴──────── eth0 <subnet>+(k+1)   agent on :7700
//! ```
//!
//! # Address plan
//!
//! Cluster `i` owns the /22 `10.200.0.0 + 1024·i` inside 10.200.0.0/12 (so 1,024 clusters,
//! clear of the docker backend's 10.216/12): the host is `.1` of it and node `k` is
//! `subnet + k + 1`, for up to [`MAX_NODES`] = 1,021 nodes — which also fits the kernel's 1,024
//! ports per bridge (the uplink takes one). An index whose /22 overlaps any host route (another
//! cluster's, including a /24 of an older chaos) is skipped. What else bounds a large cluster —
//! file descriptors, the kernel's neighbour table, pids — is checked before the first node of a
//! batch is made ([`Provisioner::check_capacity`], `capacity.rs`); `docs/scale.md` names each
//! cap and its fix.
//!
//! The bridge lives in a namespace of its own (the *hub*), not on the host: Docker sets the
//! host's iptables `FORWARD` policy to `DROP`, and with `br_netfilter` bridged frames traverse
//! that chain. In the hub they traverse the hub's own, empty, netfilter instead, and runner →
//! node traffic is plain local output on the host — so the backend works on Docker hosts
//! without touching the host firewall.
//!
//! The cluster index is claimed by creating its state file `/run/chaos/netns/<i>.json`
//! exclusively (written aside, then hard-linked into place: the link fails if the name exists),
//! naming the runner that owns it, *before* anything of the cluster exists; the host link
//! `chaos<i>` is created next (the kernel refuses a duplicate, which also keeps runners of older
//! versions, which claimed by the link, apart). Everything else is named after the index, or —
//! the temporary directory — recorded in the state file before it is created, and the state
//! file is removed last. So at every instant, whatever of a cluster exists is covered by a state
//! file naming its owner, and `chaos gc` can collect a runner killed at any point of creation or
//! teardown without `--all`.
//!
//! Each node's agent is supervised ([`crate::backend::supervisor`]): when it dies without being
//! asked to, it is started again in its node — same namespace (entered with `setns`, so it sees
//! the host's `/sys` and cgroups exactly as its predecessor did), same cgroup, listen address,
//! TLS and state directories, its log appended to — and heals what its predecessor left.

mod agent;
mod capacity;
mod cgroup;
mod claim;
mod gc;
mod links;
mod namespace;
mod node;
mod setup;

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

pub use crate::backend::agent_binary::{AGENT_BIN_ENV, find_agent_binary};
use crate::backend::agent_binary::{Linkage, agent_binary};
pub use gc::collect_garbage;

use crate::backend::provision::{Limits, Machine, MachineRequest, Provisioner};
use crate::backend::{AgentCluster, ClusterOptions};
use crate::cluster::Cluster;
use crate::{Error, Result};
use node::{NodeRes, teardown_nodes};
use setup::{ClusterRes, claim_index};

/// Port the agents listen on, on their node's address.
pub const AGENT_PORT: u16 = 7700;

/// Number of cluster indices (and so of clusters that can exist at once on a host): the /22s in
/// 10.200.0.0/12.
pub const MAX_CLUSTERS: u32 = 1024;

/// Length of a cluster's network prefix (a /22: 1,024 addresses).
pub const PREFIX_LEN: u8 = 22;

/// Most nodes a cluster can hold: its /22 minus the network, broadcast and host addresses (the
/// bridge's 1,024-port limit, with the uplink, would allow 1,023).
pub const MAX_NODES: u32 = (1 << (32 - PREFIX_LEN)) - 3;

/// Directory of the state files.
pub const STATE_DIR: &str = namespace::STATE_DIR;

/// Bound on tearing down a node's processes and cgroups.
const TEARDOWN_BOUND: Duration = Duration::from_secs(3);

const BRIDGE: &str = "br0";
const NODE_LINK: &str = "eth0";

fn backend_error(message: impl Into<String>) -> Error {
    Error::backend("netns", message)
}

/// The registry's entry for `netns` ([`crate::backend::registry`]).
pub const BACKEND: crate::backend::Backend = crate::backend::Backend {
    name: "netns",
    summary: "one Linux network namespace per node, with its own IP, running the agent",
    availability,
    create: |options| {
        Box::pin(async move { Ok(Arc::new(NetnsCluster::new(options).await?) as Arc<dyn Cluster>) })
    },
    collect_garbage: Some(|options| {
        Box::pin(async move {
            tokio::task::spawn_blocking(move || collect_garbage(&options))
                .await
                .unwrap_or_else(|e| crate::backend::gc::GcReport {
                    errors: vec![format!("netns: the collection task failed: {e}")],
                    ..Default::default()
                })
        })
    }),
    limits: LIMITS,
    isolated_network: true,
    machine_faults: &[],
    host_labels: false,
    ship_linkage: crate::backend::workspace_binary::Linkage::Any,
};

const LIMITS: Limits = Limits {
    max_nodes: MAX_NODES,
    provision_time: Duration::ZERO,
};

/// The network (a /[`PREFIX_LEN`]) of cluster `index`: `10.200.0.0 + 1024·index`.
pub fn subnet(index: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 200, 0, 0)) + (index << (32 - PREFIX_LEN)))
}

/// The host's address in cluster `index` (the subnet's first).
pub fn host_address(index: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet(index)) + 1)
}

/// Address of node `k` (1-based) of cluster `index` (`subnet + k + 1`).
pub fn node_address(index: u32, k: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet(index)) + k + 1)
}

/// The host-side link of cluster `index`, whose creation claims the index.
pub fn host_link_name(index: u32) -> String {
    format!("chaos{index}")
}

/// The hub namespace of cluster `index`, holding the bridge.
pub fn hub_netns_name(index: u32) -> String {
    format!("chaos-{index}")
}

/// The namespace of node `k` of cluster `index`.
pub fn node_netns_name(index: u32, k: u32) -> String {
    format!("chaos-{index}-n{k}")
}

/// Path of the state file of cluster `index`.
pub fn state_file(index: u32) -> PathBuf {
    Path::new(STATE_DIR).join(format!("{index}.json"))
}

/// Whether the netns backend can run here: `Err` holds one line saying what is missing and what
/// to do, without the backend's name (the caller's error adds it once).
pub fn availability() -> Result<(), String> {
    if !has_capabilities() {
        return Err(
            "needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN): run as root (e.g. `sudo -E cargo test`) \
                    or use the local backend"
                .into(),
        );
    }
    namespace::can_unshare().map_err(|e| {
        format!("cannot create network namespaces here (unshare(CLONE_NEWNET): {e}); use the local backend")
    })?;
    if cgroup::cgroup2_mount().is_none() {
        return Err(
            "needs a cgroup2 mount (none in /proc/self/mountinfo): mount one or use the local backend".into(),
        );
    }
    crate::backend::agent_binary::obtainable()
}

/// CAP_NET_ADMIN (12) and CAP_SYS_ADMIN (21) in the effective set.
fn has_capabilities() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let caps = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let needed = (1u64 << 12) | (1u64 << 21);
    caps & needed == needed
}

/// Whether any IPv4 route of the host (other than a default route) overlaps `net`/[`PREFIX_LEN`].
pub(crate) fn overlaps_host_route(net: Ipv4Addr) -> bool {
    let routes = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    let ours = u32::from(net);
    routes.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let parse = |s: &str| {
            u32::from_str_radix(s, 16)
                .ok()
                .map(|v| u32::from(Ipv4Addr::from(v.to_ne_bytes())))
        };
        match (
            fields.get(1).and_then(|s| parse(s)),
            fields.get(7).and_then(|s| parse(s)),
        ) {
            (Some(dest), Some(mask)) if mask != 0 => {
                let common = mask & (u32::MAX << (32 - PREFIX_LEN));
                dest & common == ours & common
            }
            _ => false,
        }
    })
}

/// A cluster of netns nodes: the generic agent cluster on the [`Netns`] provisioner.
pub type NetnsCluster = AgentCluster<Netns>;

impl AgentCluster<Netns> {
    /// Creates an empty netns cluster (see [`Netns::create`]).
    pub async fn new(options: ClusterOptions) -> Result<Self> {
        let netns = Netns::create(&options.name).await?;
        AgentCluster::with_provisioner(netns, options)
    }
}

/// The netns provisioner: makes network namespaces running the agent. See the
/// [module documentation](self).
pub struct Netns {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    index: u32,
    agent_bin: PathBuf,
    cgroup_dir: PathBuf,
    dir: PathBuf,
    bridge_index: u32,
    /// What the state file says (its node list is updated as nodes are made).
    record: claim::StateRecord,
    state: Mutex<State>,
}

struct State {
    nodes: Vec<NodeRes>,
    /// `None` once the cluster was cleaned up.
    cluster: Option<ClusterRes>,
}

impl Netns {
    /// Claims an index (its state file), creates the host link, the hub namespace with its
    /// bridge, the cgroup and temporary directories. `cluster` names the cluster in the state
    /// file and messages.
    pub async fn create(cluster: &str) -> Result<Self> {
        availability().map_err(backend_error)?;
        let agent_bin = agent_binary(Linkage::Any).await?;
        let cgroup_root = cgroup::cgroup2_mount()
            .ok_or_else(|| backend_error("no cgroup2 mount"))?
            .join("chaos");
        let host = links::host_handle().map_err(|e| Error::io("opening a netlink socket", e))?;

        let (mut res, record, hub_fd, hub_netlink) = claim_index(&host, &cgroup_root, cluster).await?;
        let index = res.index;
        let ctx = |what: &str| format!("netns cluster {cluster} (#{index}): {what}");

        let hub_netlink = hub_netlink.ok_or_else(|| backend_error("hub netlink socket missing"))?;
        let hub = links::handle_for(hub_netlink).map_err(|e| Error::io(ctx("hub netlink socket"), e))?;
        let host_link = host_link_name(index);
        let uplink = format!("{host_link}h");
        let net = async {
            links::move_to_netns(&host, &uplink, hub_fd.as_raw_fd()).await?;
            let host_index = links::index_of(&host, &host_link).await?;
            links::add_address(&host, host_index, IpAddr::V4(host_address(index)), PREFIX_LEN).await?;
            links::set_up(&host, &host_link, None).await?;
            let bridge = links::add_bridge(&hub, BRIDGE).await?;
            links::set_up(&hub, &uplink, Some(bridge)).await?;
            Ok::<_, io::Error>(bridge)
        };
        let net_result = net.await;
        res.hub_fd = Some(hub_fd);
        res.hub = Some(hub);
        let bridge_index = net_result.map_err(|e| Error::io(ctx("setting up the cluster network"), e))?;

        let cgroup_dir = record.cgroup_dir.clone();
        res.cgroup_dir = Some(cgroup_dir.clone());
        cgroup::create(&cgroup_dir).map_err(|e| Error::io(ctx("cgroup"), e))?;
        let dir = record.temp_dir.clone();
        res.temp_dir = Some(dir.clone());
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| Error::io(ctx(&format!("creating {}", dir.display())), e))?;

        let inner = Inner {
            name: cluster.to_string(),
            index,
            agent_bin,
            cgroup_dir,
            dir,
            bridge_index,
            record,
            state: Mutex::new(State {
                nodes: Vec::new(),
                cluster: Some(res),
            }),
        };
        tracing::debug!(index, "netns cluster {cluster} ready");
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// The cluster's index (see the [module documentation](self)).
    pub fn index(&self) -> u32 {
        self.inner.index
    }

    /// The cluster's network (a /[`PREFIX_LEN`]).
    pub fn subnet(&self) -> Ipv4Addr {
        subnet(self.inner.index)
    }

    /// The runner's (the host's) address on the cluster network.
    pub fn host_address(&self) -> Ipv4Addr {
        host_address(self.inner.index)
    }

    /// The host-side link of the cluster.
    pub fn host_link(&self) -> String {
        host_link_name(self.inner.index)
    }

    /// The hub namespace holding the cluster's bridge.
    pub fn hub_netns(&self) -> String {
        hub_netns_name(self.inner.index)
    }

    /// The namespace of node `node` (`"n1"`, …), whether or not it exists (yet).
    pub fn node_netns(&self, node: &str) -> Option<String> {
        let k: u32 = node.strip_prefix('n')?.parse().ok()?;
        (1..=MAX_NODES)
            .contains(&k)
            .then(|| node_netns_name(self.inner.index, k))
    }

    /// The cluster's cgroup directory (each node has a child named after it).
    pub fn cgroup_dir(&self) -> &Path {
        &self.inner.cgroup_dir
    }

    /// The cluster's temporary directory (each node has a child named after it holding
    /// `root/`, `tls/` and `agent.log`).
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The agent log of node `node`.
    pub fn agent_log(&self, node: &str) -> PathBuf {
        self.inner.dir.join(node).join("agent.log")
    }

    /// The cluster's state file.
    pub fn state_file(&self) -> PathBuf {
        state_file(self.inner.index)
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the node namespaces in the state file. (gc finds them by name anyway: they are
    /// named after the index the claim covers; the list is for people reading the file.)
    fn write_state_file(&self, state: &State) {
        let Some(res) = &state.cluster else { return };
        let Some(path) = &res.state_file else { return };
        let mut nodes: Vec<(u32, String)> = state
            .nodes
            .iter()
            .map(|n| (n.name[1..].parse().unwrap_or(u32::MAX), n.netns.clone()))
            .collect();
        // In node order, whichever node was made first.
        nodes.sort();
        let record = claim::StateRecord {
            node_netns: nodes.into_iter().map(|(_, netns)| netns).collect(),
            ..self.record.clone()
        };
        if let Err(e) = claim::rewrite(path, &record) {
            tracing::warn!("netns cluster #{}: writing {}: {e}", self.index, path.display());
        }
    }

    /// Takes every node and the cluster-wide resources out of the state, for a teardown.
    fn take_all(&self) -> (Vec<NodeRes>, Option<ClusterRes>) {
        let mut state = self.lock();
        (std::mem::take(&mut state.nodes), state.cluster.take())
    }

    /// The agent slot, start spec and namespace path of `node`.
    fn node_agent(&self, node: &str) -> Result<(Arc<node::AgentSlot>, agent::AgentSpec, PathBuf)> {
        self.lock()
            .nodes
            .iter()
            .find(|n| n.name == node)
            .and_then(|n| Some((n.agent.clone(), n.spec.clone()?, namespace::netns_path(&n.netns))))
            .ok_or_else(|| backend_error(format!("node {node}: no such node in cluster #{}", self.index)))
    }
}

/// Tears down `nodes`, then the cluster-wide resources, blocking; returns what failed.
fn teardown_blocking(mut nodes: Vec<NodeRes>, cluster: Option<ClusterRes>) -> Vec<String> {
    let mut errors = teardown_nodes(&mut nodes);
    drop(nodes);
    if let Some(mut cluster) = cluster {
        errors.extend(cluster.teardown());
    }
    errors
}

impl Drop for Inner {
    fn drop(&mut self) {
        let (nodes, cluster) = self.take_all();
        for e in teardown_blocking(nodes, cluster) {
            tracing::warn!("netns cluster #{}: cleanup: {e}", self.index);
        }
    }
}

#[async_trait]
impl Provisioner for Netns {
    fn name(&self) -> &'static str {
        "netns"
    }

    fn limits(&self) -> Limits {
        LIMITS
    }

    fn check_capacity(&self, existing: u32, adding: u32) -> Result<()> {
        capacity::check(existing, adding).map_err(|why| {
            backend_error(format!(
                "cluster {}: cannot add {adding} nodes here: {why}",
                self.inner.name
            ))
        })
    }

    async fn provision(&self, request: MachineRequest<'_>) -> Result<Machine> {
        let inner = &self.inner;
        let hub = {
            let state = inner.lock();
            state
                .cluster
                .as_ref()
                .and_then(|c| c.hub.clone())
                .ok_or_else(|| {
                    backend_error(format!(
                        "cluster {}: already cleaned up; create a new cluster",
                        inner.name
                    ))
                })?
        };
        let (machine, res) = inner.create_node(&request, hub).await?;
        let mut state = inner.lock();
        if state.cluster.is_none() {
            // Torn down meanwhile: dropping `res` releases the node.
            return Err(backend_error(format!(
                "cluster {}: cleaned up while node {} was being made",
                inner.name, request.name
            )));
        }
        state.nodes.push(res);
        inner.write_state_file(&state);
        Ok(machine)
    }

    async fn release(&self, node: &str) -> Result<()> {
        let res = {
            let mut state = self.inner.lock();
            let found = state.nodes.iter().position(|n| n.name == node);
            let res = found.map(|i| state.nodes.remove(i));
            self.inner.write_state_file(&state);
            res
        };
        let Some(res) = res else { return Ok(()) };
        let errors = tokio::task::spawn_blocking(move || teardown_blocking(vec![res], None))
            .await
            .unwrap_or_else(|e| vec![format!("release task failed: {e}")]);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(backend_error(format!(
                "releasing node {node}: {}",
                errors.join("; ")
            )))
        }
    }

    async fn teardown(&self) -> Result<()> {
        let (nodes, cluster) = self.inner.take_all();
        let errors = tokio::task::spawn_blocking(move || teardown_blocking(nodes, cluster))
            .await
            .unwrap_or_else(|e| vec![format!("cleanup task failed: {e}")]);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(backend_error(format!(
                "#{}: {}",
                self.inner.index,
                errors.join("; ")
            )))
        }
    }

    fn teardown_now(&self) {
        let (nodes, cluster) = self.inner.take_all();
        for e in teardown_blocking(nodes, cluster) {
            tracing::warn!("netns cluster #{}: cleanup: {e}", self.inner.index);
        }
    }

    /// Looks the node up once, then polls its agent slot: with the default (which asks
    /// [`Provisioner::agent_status`], a search of the node list, every 100 ms per node) a
    /// thousand-node cluster spent most of the runner's CPU comparing node names.
    async fn agent_exited(&self, node: &str) -> String {
        let slot = self
            .inner
            .lock()
            .nodes
            .iter()
            .find(|n| n.name == node)
            .map(|n| n.agent.clone());
        let Some(slot) = slot else {
            return "its node is gone".to_string();
        };
        loop {
            if let Some(how) = slot.exit_status() {
                return how;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn agent_status(&self, node: &str) -> Option<String> {
        match self.inner.node_agent(node) {
            Ok((slot, _, _)) => slot.exit_status(),
            Err(_) => Some("its node is gone".to_string()),
        }
    }

    async fn restart_agent(&self, node: &str) -> Result<()> {
        let (slot, spec, netns) = self.inner.node_agent(node)?;
        node::restart_agent(&slot, &spec, &netns).await
    }

    async fn diagnose(&self, node: &str) -> String {
        let log = self.agent_log(node);
        format!(
            "agent log {}: {}",
            log.display(),
            crate::backend::agent_launch::log_tail(&log)
        )
    }

    /// The root directories live in the cluster's temporary directory, removed at cleanup: a
    /// kept one moves out first, to `$TMPDIR/chaos-kept-CLUSTER-MS/NODE` on this machine (a
    /// rename: processes still running there follow it, and are killed at cleanup).
    fn keep_root_dirs(
        &self,
        asked: bool,
        nodes: &[(String, String)],
    ) -> (Vec<crate::cluster::KeptDir>, bool) {
        if !asked || nodes.is_empty() {
            return (Vec::new(), false);
        }
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let name: String = self
            .inner
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let base = std::env::temp_dir().join(format!("chaos-kept-{name}-{ms}"));
        if let Err(e) = std::fs::create_dir_all(&base) {
            tracing::warn!(
                "netns cluster #{}: keeping root directories: creating {}: {e}",
                self.inner.index,
                base.display()
            );
            return (Vec::new(), false);
        }
        let mut kept = Vec::new();
        for (node, root) in nodes {
            let to = base.join(node);
            match std::fs::rename(root, &to) {
                Ok(()) => kept.push(crate::cluster::KeptDir {
                    node: node.clone(),
                    host: "this machine".to_string(),
                    path: to.to_string_lossy().into_owned(),
                }),
                Err(e) => tracing::warn!(node = %node, "keeping {root}: moving it to {}: {e}", to.display()),
            }
        }
        (kept, false)
    }

    fn describe(&self) -> Vec<(&'static str, String)> {
        vec![
            ("index", self.inner.index.to_string()),
            ("subnet", format!("{}/{PREFIX_LEN}", self.subnet())),
            ("state file", self.state_file().display().to_string()),
            ("directory", self.inner.dir.display().to_string()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_follow_the_index() {
        assert_eq!(subnet(0), Ipv4Addr::new(10, 200, 0, 0));
        assert_eq!(subnet(65), Ipv4Addr::new(10, 201, 4, 0));
        assert_eq!(subnet(MAX_CLUSTERS - 1), Ipv4Addr::new(10, 215, 252, 0));
        assert_eq!(host_address(3), Ipv4Addr::new(10, 200, 12, 1));
        assert_eq!(node_address(3, 1), Ipv4Addr::new(10, 200, 12, 2));
        assert_eq!(node_address(3, 255), Ipv4Addr::new(10, 200, 13, 0));
        assert_eq!(node_address(3, MAX_NODES), Ipv4Addr::new(10, 200, 15, 254));
        assert_eq!(MAX_NODES, 1021);
        // The last cluster stays below docker's 10.216/12.
        assert!(
            u32::from(node_address(MAX_CLUSTERS - 1, MAX_NODES)) < u32::from(Ipv4Addr::new(10, 216, 0, 0))
        );
        assert_eq!(node_netns_name(3, 7), "chaos-3-n7");
        assert!(
            host_link_name(MAX_CLUSTERS - 1).len() < 15,
            "link names must fit IFNAMSIZ with the h suffix"
        );
    }
}
