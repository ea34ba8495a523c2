//! The runner's fault API: fault values a scheduler can plan, log and replay ([`Fault`]),
//! injecting them on a node ([`inject`]) for a bounded time, healing them ([`FaultHandle::heal`],
//! [`heal_all`]), and Jepsen's partition shapes over a whole cluster ([`partition`]).
//!
//! A [`Fault`] names peers by node name or IP network; the runner resolves node names to the
//! nodes' addresses and sends the node a [`FaultSpec`] with a mandatory TTL, after which the
//! node heals the fault by itself — a fault never outlives a runner that forgot it. Process
//! faults that act once (kill, restart) have nothing to heal.
//!
//! # Partitions
//!
//! A [`Shape`] gives [`Cuts`] — which node must drop packets from which — and [`partition`]
//! installs, on every node that must drop something, one `partition` fault dropping packets
//! **arriving** (direction `in`) from the nodes it must not see. Dropping at the receiver on both
//! ends makes a symmetric partition out of one-way rules, and it is what a real partition looks
//! like to the sender: silence and timeouts. Dropping at the sender (direction `out`) would
//! instead make `send`/`connect` fail at once with `EPERM`, which no network does. During the
//! few milliseconds in which the nodes' rules are installed concurrently, a cut may briefly be
//! one-way.

mod shapes;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chaos_proto::fault::{
    Bandwidth, Direction, Distribution, FaultInfo, FaultRequest, FaultSpec, FreezeTarget, IpNet, LinkChange,
    Mechanism, NetScope, PacketEffects, Protocol,
};
use chaos_proto::{ProcId, ProcStarted, RestartRequest, Signal, SignalTarget};
use futures_util::future::join_all;
use serde::{Deserialize, Serialize};

pub use shapes::{Cuts, Shape};

use crate::cluster::Node;
use crate::{Error, Result};

/// A peer of a network fault: a node of the cluster (by name; the runner uses every address of
/// it) or an IP network. Written as a string: `"n2"`, `"10.0.0.7"`, `"fd00::/64"`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Peer {
    /// A node, by name.
    Node(String),
    /// An address or network.
    Net(IpNet),
}

impl FromStr for Peer {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        if let Ok(net) = s.parse::<IpNet>() {
            return Ok(Peer::Net(net));
        }
        let looks_like_net = s.contains('/') || s.contains(':');
        let name_chars = s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if s.is_empty() || looks_like_net || !name_chars {
            return Err(Error::invalid(
                "fault peer",
                format!(
                    "{s:?} is neither a node name (like n2) nor an IP address or network (like 10.0.0.0/24)"
                ),
            ));
        }
        Ok(Peer::Node(s.to_string()))
    }
}

impl TryFrom<String> for Peer {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<Peer> for String {
    fn from(p: Peer) -> String {
        p.to_string()
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Node(name) => f.write_str(name),
            // Single hosts print without their prefix, as users write them.
            Peer::Net(net) if *net == IpNet::host(net.addr) => write!(f, "{}", net.addr),
            Peer::Net(net) => write!(f, "{net}"),
        }
    }
}

/// Which packets a network fault affects, relative to the node it is injected on.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Traffic {
    /// Peers (node names or networks); empty means every peer. The runner's control traffic to
    /// the node's agent is never affected.
    #[serde(default)]
    pub peers: Vec<Peer>,
    /// `in` (from the peers), `out` (to the peers) or `both`.
    #[serde(default)]
    pub direction: Direction,
    /// Only this protocol; all when absent.
    #[serde(default)]
    pub protocol: Option<Protocol>,
    /// Only packets whose source or destination port is one of these (TCP and UDP).
    #[serde(default)]
    pub ports: Vec<u16>,
}

impl Traffic {
    /// Everything, both ways, to and from every peer.
    pub fn all() -> Self {
        Self::default()
    }

    /// Everything to and from `peers` (node names or networks), both ways.
    pub fn with(peers: impl IntoIterator<Item = Peer>) -> Self {
        Self {
            peers: peers.into_iter().collect(),
            ..Self::default()
        }
    }

    /// Everything to and from the named nodes, both ways.
    pub fn nodes<S: Into<String>>(names: impl IntoIterator<Item = S>) -> Self {
        Self::with(names.into_iter().map(|n| Peer::Node(n.into())))
    }

    /// Sets the direction.
    pub fn direction(mut self, direction: Direction) -> Self {
        self.direction = direction;
        self
    }

    /// Restricts to one protocol.
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = Some(protocol);
        self
    }

    /// Restricts to packets from or to these ports.
    pub fn ports(mut self, ports: impl IntoIterator<Item = u16>) -> Self {
        self.ports = ports.into_iter().collect();
        self
    }
}

/// Processes a process fault acts on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessTarget {
    /// A process started through the node ([`crate::Process::id`]) and all its descendants.
    Proc(ProcId),
    /// Every process started through the node that still runs (a node-level crash or freeze).
    All,
    /// The process with this OS pid and its descendants. Agent nodes only: on `local` the
    /// process table is the host's.
    Pid(u32),
    /// Every process of this process group (kill only).
    Group(u32),
    /// Every process whose command name (`/proc/<pid>/comm`) is this (kill only).
    Name(String),
    /// Every process of this cgroup directory (pause only), frozen with the cgroup freezer.
    Cgroup(String),
}

impl fmt::Display for ProcessTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProcessTarget::Proc(id) => write!(f, "process {id}"),
            ProcessTarget::All => f.write_str("every process"),
            ProcessTarget::Pid(pid) => write!(f, "pid {pid}"),
            ProcessTarget::Group(pgid) => write!(f, "process group {pgid}"),
            ProcessTarget::Name(name) => write!(f, "processes named {name:?}"),
            ProcessTarget::Cgroup(path) => write!(f, "cgroup {path}"),
        }
    }
}

/// A fault, as a plain value: what to break on one node. Serialized with a `kind` tag, e.g.
/// `{"kind":"loss","peers":["n2"],"percent":30.0}` or
/// `{"kind":"delay","peers":["n3"],"delay":"100ms","jitter":"10ms"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// Drop every matching packet.
    Partition {
        /// Which packets.
        #[serde(flatten)]
        traffic: Traffic,
    },
    /// Drop a percentage of matching packets (in the kernel; in userspace when correlated).
    Loss {
        /// Which packets.
        #[serde(flatten)]
        traffic: Traffic,
        /// 0..=100.
        percent: f64,
        /// 0..=100: how much each loss decision follows the previous one (bursts).
        #[serde(default)]
        correlation: f64,
    },
    /// Delay matching packets.
    Delay {
        /// Which packets.
        #[serde(flatten)]
        traffic: Traffic,
        /// Mean added latency.
        #[serde(with = "duration_text")]
        delay: Duration,
        /// Spread around the mean.
        #[serde(default, with = "duration_text")]
        jitter: Duration,
        /// Shape of the spread.
        #[serde(default)]
        distribution: Distribution,
    },
    /// Any combination of delay, jitter, loss, duplication, corruption and reordering.
    Packet {
        /// Which packets.
        #[serde(flatten)]
        traffic: Traffic,
        /// What happens to them.
        effects: PacketEffects,
    },
    /// Limit the node's outgoing bandwidth on an interface.
    Bandwidth {
        /// The interface; empty (or absent): the node's main one ([`Node::interfaces`]).
        #[serde(default = "default_interface")]
        interface: String,
        /// Bits per second.
        rate_bps: u64,
        /// Bucket size in bytes (0: the node picks).
        #[serde(default)]
        burst_bytes: u32,
    },
    /// Take an interface down or change its MTU.
    Link {
        /// The interface.
        interface: String,
        /// `false` takes it down.
        #[serde(default)]
        up: Option<bool>,
        /// New MTU.
        #[serde(default)]
        mtu: Option<u32>,
    },
    /// Freeze processes (cgroup freezer, else SIGSTOP of the tree) until healed.
    Pause {
        /// Which processes: [`ProcessTarget::Proc`], `All`, `Pid` or `Cgroup`.
        process: ProcessTarget,
    },
    /// Send a signal, once (SIGKILL when absent). Nothing to heal.
    Kill {
        /// The signal.
        #[serde(default = "default_kill_signal")]
        signal: Signal,
        /// Which processes: any [`ProcessTarget`] but `Cgroup`.
        process: ProcessTarget,
    },
    /// Stop a process started through the node (signal, grace, then SIGKILL) and start it again
    /// with the same spec, once. Nothing to heal.
    Restart {
        /// The process.
        process: ProcId,
        /// The signal asking it to stop (SIGTERM when absent).
        #[serde(default = "default_restart_signal")]
        signal: Signal,
        /// How long it may take to exit before SIGKILL (5 s when absent).
        #[serde(default = "default_grace", with = "duration_text")]
        grace: Duration,
    },
}

/// An interface left empty: the node's main interface, as its backend reported it
/// ([`Node::interfaces`]).
fn default_interface() -> String {
    String::new()
}

/// The interface a fault names, or — when it names none — the main interface `on` reports.
fn interface_on(interface: &str, on: &str, cluster_nodes: &[Arc<dyn Node>]) -> Result<String> {
    if !interface.is_empty() {
        return Ok(interface.to_string());
    }
    let node = cluster_nodes.iter().find(|n| n.name() == on);
    node.and_then(|n| n.interfaces().first().cloned()).ok_or_else(|| {
        Error::invalid(
            format!("fault on {on}"),
            "no interface given, and the node reports none of its own: name one",
        )
    })
}

fn default_kill_signal() -> Signal {
    Signal::KILL
}

fn default_restart_signal() -> Signal {
    Signal::TERM
}

fn default_grace() -> Duration {
    Duration::from_secs(5)
}

impl Fault {
    /// The fault's kind, as in its serialized `kind` tag.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Partition { .. } => "partition",
            Fault::Loss { .. } => "loss",
            Fault::Delay { .. } => "delay",
            Fault::Packet { .. } => "packet",
            Fault::Bandwidth { .. } => "bandwidth",
            Fault::Link { .. } => "link",
            Fault::Pause { .. } => "pause",
            Fault::Kill { .. } => "kill",
            Fault::Restart { .. } => "restart",
        }
    }

    /// True for faults that last until healed (or until their TTL); false for those that act
    /// once (kill, restart).
    pub fn is_lasting(&self) -> bool {
        !matches!(self, Fault::Kill { .. } | Fault::Restart { .. })
    }

    /// Translates a lasting fault into the node's [`FaultSpec`], resolving peer names against
    /// `cluster_nodes`; `on` names the node it is meant for (for errors). Checks every value
    /// before any node is asked. `None` for faults that act once.
    pub fn to_spec(&self, on: &str, cluster_nodes: &[Arc<dyn Node>]) -> Result<Option<FaultSpec>> {
        let what = || format!("{} fault on {on}", self.kind());
        let invalid = |e: chaos_proto::fault::InvalidFault| Error::invalid(what(), e.to_string());
        let scope = |traffic: &Traffic| -> Result<NetScope> {
            let scope = resolve(traffic, cluster_nodes).map_err(|m| Error::invalid(what(), m))?;
            scope.validate().map_err(invalid)?;
            Ok(scope)
        };
        let spec = match self {
            Fault::Partition { traffic } => FaultSpec::Partition {
                scope: scope(traffic)?,
            },
            Fault::Loss {
                traffic,
                percent,
                correlation,
            } => {
                let effects = PacketEffects {
                    loss_percent: *percent,
                    loss_correlation: *correlation,
                    ..PacketEffects::default()
                };
                effects.validate().map_err(invalid)?;
                // Uncorrelated loss is a kernel rule; correlation needs the userspace shaper.
                if *correlation == 0.0 {
                    FaultSpec::Loss {
                        scope: scope(traffic)?,
                        percent: *percent,
                    }
                } else {
                    FaultSpec::Packet {
                        scope: scope(traffic)?,
                        effects,
                    }
                }
            }
            Fault::Delay {
                traffic,
                delay,
                jitter,
                distribution,
            } => {
                let micros = |d: &Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
                let effects = PacketEffects {
                    delay_us: micros(delay),
                    jitter_us: micros(jitter),
                    distribution: *distribution,
                    ..PacketEffects::default()
                };
                if delay.is_zero() {
                    return Err(Error::invalid(what(), "delay must be greater than zero"));
                }
                effects.validate().map_err(invalid)?;
                FaultSpec::Packet {
                    scope: scope(traffic)?,
                    effects,
                }
            }
            Fault::Packet { traffic, effects } => {
                effects.validate().map_err(invalid)?;
                FaultSpec::Packet {
                    scope: scope(traffic)?,
                    effects: effects.clone(),
                }
            }
            Fault::Bandwidth {
                interface,
                rate_bps,
                burst_bytes,
            } => {
                if *rate_bps == 0 {
                    return Err(Error::invalid(
                        what(),
                        "rate_bps must be greater than zero (use a partition to stop all traffic)",
                    ));
                }
                FaultSpec::Bandwidth(Bandwidth {
                    interface: interface_on(interface, on, cluster_nodes)?,
                    rate_bps: *rate_bps,
                    burst_bytes: *burst_bytes,
                    limit_bytes: 0,
                    exempt_tcp_ports: Vec::new(),
                })
            }
            Fault::Link { interface, up, mtu } => {
                if up.is_none() && mtu.is_none() {
                    return Err(Error::invalid(
                        what(),
                        "nothing to change: give `up` and/or `mtu`",
                    ));
                }
                FaultSpec::Link(LinkChange {
                    interface: interface.clone(),
                    up: *up,
                    mtu: *mtu,
                })
            }
            Fault::Pause { process } => FaultSpec::Freeze(match process {
                ProcessTarget::Proc(id) => FreezeTarget::Proc { id: *id },
                ProcessTarget::All => FreezeTarget::AllProcs,
                ProcessTarget::Pid(pid) => FreezeTarget::ProcessTree {
                    pid: i32::try_from(*pid)
                        .map_err(|_| Error::invalid(what(), format!("{pid} is not a process id")))?,
                },
                ProcessTarget::Cgroup(path) => FreezeTarget::Cgroup { path: path.clone() },
                ProcessTarget::Group(_) | ProcessTarget::Name(_) => {
                    return Err(Error::invalid(
                        what(),
                        format!(
                            "cannot pause {process}: pause a process started through the node \
                             (proc), all of them (all), a pid's tree (pid) or a cgroup (cgroup)"
                        ),
                    ));
                }
            }),
            Fault::Kill { process, .. } => {
                if let ProcessTarget::Cgroup(_) = process {
                    return Err(Error::invalid(
                        what(),
                        "kill takes proc, all, pid, group or name; a cgroup is only paused",
                    ));
                }
                return Ok(None);
            }
            Fault::Restart { grace, .. } => {
                if grace.as_millis() > u128::from(RestartRequest::MAX_GRACE_MS) {
                    return Err(Error::invalid(
                        what(),
                        format!("grace {grace:?} is longer than the node allows (60 s)"),
                    ));
                }
                return Ok(None);
            }
        };
        Ok(Some(spec))
    }
}

/// Resolves `traffic` into a node-level scope: node names become their addresses.
fn resolve(traffic: &Traffic, cluster_nodes: &[Arc<dyn Node>]) -> std::result::Result<NetScope, String> {
    let mut peers = Vec::new();
    for peer in &traffic.peers {
        match peer {
            Peer::Net(net) => peers.push(*net),
            Peer::Node(name) => {
                let node = cluster_nodes.iter().find(|n| n.name() == name).ok_or_else(|| {
                    let known: Vec<&str> = cluster_nodes.iter().map(|n| n.name()).collect();
                    format!(
                        "peers: unknown node {name:?}; the cluster's nodes are {}",
                        if known.is_empty() {
                            "(none)".to_string()
                        } else {
                            known.join(", ")
                        }
                    )
                })?;
                if node.addresses().is_empty() {
                    return Err(format!("peers: node {name} has no address to match"));
                }
                peers.extend(node.addresses().iter().map(|a| IpNet::host(*a)));
            }
        }
    }
    peers.sort_by_key(|p| (p.addr, p.prefix));
    peers.dedup();
    Ok(NetScope {
        peers,
        direction: traffic.direction,
        protocol: traffic.protocol,
        ports: traffic.ports.clone(),
        exempt_tcp_ports: Vec::new(),
    })
}

/// What injecting a fault did on its node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "effect", rename_all = "snake_case")]
pub enum Effect {
    /// A lasting fault is installed until healed or until its TTL.
    Installed {
        /// What the node was asked to install.
        spec: FaultSpec,
    },
    /// Processes were signalled (kill by pid, group or name).
    Signalled {
        /// The pids signalled.
        pids: Vec<u32>,
    },
    /// Processes started through the node were signalled (kill by id or all).
    SignalledProcs {
        /// Their node-assigned ids.
        procs: Vec<ProcId>,
    },
    /// A process was restarted.
    Restarted {
        /// The new process (new id and pid).
        started: ProcStarted,
    },
}

/// What a fault injection did, as a plain value for logs and replays.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultRecord {
    /// The node it was injected on.
    pub node: String,
    /// Its id on that node.
    pub id: String,
    /// The fault as asked.
    pub fault: Fault,
    /// How the node carried it out.
    pub mechanism: Mechanism,
    /// When it was injected, milliseconds since the Unix epoch.
    pub injected_ms: u64,
    /// When the node heals it by itself, milliseconds since the Unix epoch (the injection time
    /// for faults that act once).
    pub expires_ms: u64,
    /// What happened.
    pub effect: Effect,
}

/// An injected fault: heal it with [`FaultHandle::heal`] (idempotent). Dropping the handle does
/// not heal the fault; the node does when its TTL expires.
#[derive(Clone)]
pub struct FaultHandle {
    node: Arc<dyn Node>,
    record: FaultRecord,
}

impl fmt::Debug for FaultHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultHandle")
            .field("record", &self.record)
            .finish()
    }
}

impl FaultHandle {
    /// The node the fault is on.
    pub fn node(&self) -> &str {
        &self.record.node
    }

    /// The fault's id on its node.
    pub fn id(&self) -> &str {
        &self.record.id
    }

    /// How the node carried it out.
    pub fn mechanism(&self) -> &Mechanism {
        &self.record.mechanism
    }

    /// When the node heals it by itself.
    pub fn expires(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.record.expires_ms)
    }

    /// Everything about the injection, as a serializable value.
    pub fn record(&self) -> &FaultRecord {
        &self.record
    }

    /// Heals the fault. Returns whether it was still active (false when it was healed before,
    /// expired, or acted once and has nothing to heal). Idempotent.
    pub async fn heal(&self) -> Result<bool> {
        match self.record.effect {
            Effect::Installed { .. } => self.node.heal_fault(&self.record.id).await,
            _ => Ok(false),
        }
    }
}

/// A fresh fault id, `<kind>-<16 hex digits>`: random, so that ids from several runner
/// processes driving the same nodes (tests, the CLI) never collide.
fn new_id(kind: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let salt: u64 = rand::random();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{kind}-{:016x}", salt ^ n.rotate_left(32))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn ttl_ms(ttl: Duration, what: &str) -> Result<u64> {
    let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 {
        return Err(Error::invalid(
            what,
            format!("ttl {ttl:?} is below 1 ms: every fault needs a time to live after which it heals"),
        ));
    }
    Ok(ms)
}

/// Injects `fault` on `node` for at most `ttl`, resolving node names in its peers against
/// `cluster_nodes`. Faults that act once (kill, restart) ignore `ttl`.
pub async fn inject(
    cluster_nodes: &[Arc<dyn Node>],
    node: &Arc<dyn Node>,
    fault: &Fault,
    ttl: Duration,
) -> Result<FaultHandle> {
    inject_as(cluster_nodes, node, fault, ttl, &new_id(fault.kind())).await
}

/// Like [`inject`] with a caller-chosen fault id (1–64 of `[A-Za-z0-9_.-]`, unique on the node
/// while active), e.g. to replay a logged schedule with the same ids.
pub async fn inject_as(
    cluster_nodes: &[Arc<dyn Node>],
    node: &Arc<dyn Node>,
    fault: &Fault,
    ttl: Duration,
    id: &str,
) -> Result<FaultHandle> {
    let on = node.name().to_string();
    let what = format!("{} fault on {on}", fault.kind());
    let spec = fault.to_spec(&on, cluster_nodes)?;
    let record = |mechanism, injected_ms, expires_ms, effect| FaultRecord {
        node: on.clone(),
        id: id.to_string(),
        fault: fault.clone(),
        mechanism,
        injected_ms,
        expires_ms,
        effect,
    };
    let record = match (spec, fault) {
        (Some(spec), _) => {
            let request = FaultRequest {
                id: Some(id.to_string()),
                ttl_ms: ttl_ms(ttl, &what)?,
                spec: spec.clone(),
            };
            let info = node.inject_fault(request).await?;
            tracing::info!(node = %on, id = %info.id, kind = fault.kind(), mechanism = ?info.mechanism, "fault injected");
            FaultRecord {
                id: info.id,
                ..record(
                    info.mechanism,
                    info.injected_ms,
                    info.expires_ms,
                    Effect::Installed { spec },
                )
            }
        }
        (None, Fault::Kill { signal, process }) => {
            let at = now_ms();
            let effect = match process {
                ProcessTarget::Proc(id) => {
                    node.signal_proc(*id, *signal, true).await?;
                    Effect::SignalledProcs { procs: vec![*id] }
                }
                ProcessTarget::All => Effect::SignalledProcs {
                    procs: node.kill_all(*signal).await?,
                },
                ProcessTarget::Pid(pid) => Effect::Signalled {
                    pids: node.signal_target(*signal, SignalTarget::Pid(*pid)).await?,
                },
                ProcessTarget::Group(pgid) => Effect::Signalled {
                    pids: node.signal_target(*signal, SignalTarget::Group(*pgid)).await?,
                },
                ProcessTarget::Name(name) => Effect::Signalled {
                    pids: node
                        .signal_target(*signal, SignalTarget::Name(name.clone()))
                        .await?,
                },
                ProcessTarget::Cgroup(_) => unreachable!("refused by to_spec"),
            };
            tracing::info!(node = %on, %signal, target = %process, "processes signalled");
            record(Mechanism::Signal, at, at, effect)
        }
        (
            None,
            Fault::Restart {
                process,
                signal,
                grace,
            },
        ) => {
            let at = now_ms();
            let request = RestartRequest {
                signal: *signal,
                grace_ms: u64::try_from(grace.as_millis()).unwrap_or(u64::MAX),
            };
            let started = node.restart_proc(*process, request).await?;
            tracing::info!(node = %on, old = process, new = started.id, "process restarted");
            record(Mechanism::Signal, at, at, Effect::Restarted { started })
        }
        (None, _) => unreachable!("every lasting fault has a spec"),
    };
    Ok(FaultHandle {
        node: node.clone(),
        record,
    })
}

/// The faults active on every node in `nodes`, asked concurrently, by node name. Fails with the
/// first error; [`list_each`] keeps every node's answer instead.
pub async fn list(nodes: &[Arc<dyn Node>]) -> Result<BTreeMap<String, Vec<FaultInfo>>> {
    list_each(nodes)
        .await
        .into_iter()
        .map(|(node, reply)| Ok((node, reply?)))
        .collect()
}

/// Every node's own answer to "which faults are active?", asked concurrently: a node that cannot
/// be reached does not hide the others.
pub async fn list_each(nodes: &[Arc<dyn Node>]) -> BTreeMap<String, Result<Vec<FaultInfo>>> {
    let replies = join_all(nodes.iter().map(|n| n.list_faults())).await;
    nodes.iter().map(|n| n.name().to_string()).zip(replies).collect()
}

/// Heals every fault on every node in `nodes`, concurrently; returns the healed ids by node
/// name. Every node is asked even when some fail; the first error is returned then (see
/// [`heal_all_each`] for every node's answer).
pub async fn heal_all(nodes: &[Arc<dyn Node>]) -> Result<BTreeMap<String, Vec<String>>> {
    let mut out = BTreeMap::new();
    let mut first_error = None;
    for (node, reply) in heal_all_each(nodes).await {
        match reply {
            Ok(ids) => {
                out.insert(node, ids);
            }
            Err(e) => {
                tracing::warn!("{e}");
                first_error.get_or_insert(e);
            }
        }
    }
    first_error.map_or(Ok(out), Err)
}

/// Heals every fault on every node in `nodes`, concurrently; each node's own answer (the ids it
/// healed, or why it could not be asked), by node name.
pub async fn heal_all_each(nodes: &[Arc<dyn Node>]) -> BTreeMap<String, Result<Vec<String>>> {
    let replies = join_all(nodes.iter().map(|n| n.heal_all_faults())).await;
    nodes.iter().map(|n| n.name().to_string()).zip(replies).collect()
}

/// A partition installed over a cluster; heal it with [`PartitionHandle::heal`].
#[derive(Debug, Clone)]
pub struct PartitionHandle {
    cuts: Cuts,
    faults: Vec<FaultHandle>,
}

impl PartitionHandle {
    /// Who cannot send to whom.
    pub fn cuts(&self) -> &Cuts {
        &self.cuts
    }

    /// The per-node faults making up the partition.
    pub fn faults(&self) -> &[FaultHandle] {
        &self.faults
    }

    /// Heals the partition on every node, concurrently. Idempotent; every node is asked even
    /// when some fail, and the first error is returned then.
    pub async fn heal(&self) -> Result<()> {
        heal_handles(&self.faults).await
    }
}

async fn heal_handles(handles: &[FaultHandle]) -> Result<()> {
    let results = join_all(handles.iter().map(FaultHandle::heal)).await;
    let mut first_error = None;
    for result in results {
        if let Err(e) = result {
            tracing::warn!("healing a partition: {e}");
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Partitions `nodes` into `shape` for at most `ttl`, installing on every node concurrently.
pub async fn partition(nodes: &[Arc<dyn Node>], shape: &Shape, ttl: Duration) -> Result<PartitionHandle> {
    let names: Vec<String> = nodes.iter().map(|n| n.name().to_string()).collect();
    let cuts = shape.cuts(&names)?;
    partition_cuts(nodes, &cuts, ttl).await
}

/// Installs arbitrary `cuts` over `nodes` (whose names they use) for at most `ttl`: each node
/// drops packets arriving from the nodes it must not hear from. If any node fails, the nodes
/// that succeeded are healed and the error is returned.
pub async fn partition_cuts(nodes: &[Arc<dyn Node>], cuts: &Cuts, ttl: Duration) -> Result<PartitionHandle> {
    for name in cuts.nodes() {
        if !nodes.iter().any(|n| n.name() == name) {
            let known: Vec<&str> = nodes.iter().map(|n| n.name()).collect();
            return Err(Error::invalid(
                "partition",
                format!(
                    "the cuts name node {name}, which is not among the nodes given ({})",
                    known.join(", ")
                ),
            ));
        }
    }
    let id = new_id("partition");
    let mut installs = Vec::new();
    for node in nodes {
        let from = cuts.dropped_at(node.name());
        if from.is_empty() {
            continue;
        }
        let fault = Fault::Partition {
            traffic: Traffic::nodes(from).direction(Direction::In),
        };
        let id = id.clone();
        installs.push(async move { inject_as(nodes, node, &fault, ttl, &id).await });
    }
    let results = join_all(installs).await;
    let mut faults = Vec::new();
    let mut first_error = None;
    for result in results {
        match result {
            Ok(handle) => faults.push(handle),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        if let Err(undo) = heal_handles(&faults).await {
            tracing::error!("undoing a partially installed partition: {undo}");
        }
        return Err(e);
    }
    Ok(PartitionHandle {
        cuts: cuts.clone(),
        faults,
    })
}

/// Durations as human-readable text (`"100ms"`, `"1m 30s"`), so that logged faults read well
/// and replay exactly.
mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!("{text:?} is not a duration like 100ms or 1m30s: {e}"))
        })
    }
}

#[cfg(test)]
mod tests;
