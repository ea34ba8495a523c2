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
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use chaos_proto::MachineFault;
pub use chaos_proto::fault::{Bandwidth, LinkChange, LinkFlap};
use chaos_proto::fault::{
    Direction, FaultInfo, FaultRequest, FaultSpec, FreezeTarget, IpNet, Mechanism, NetScope, PacketEffects,
};
pub use chaos_proto::kinds::{
    Delay, Dur, Fault, Flap, Kill, Loss, Machine, Packet, Partition, Pause, Peer, ProcessTarget, Restart,
    Traffic,
};
use chaos_proto::{ProcId, ProcStarted, RestartRequest, SignalTarget};
use futures_util::future::join_all;
use serde::{Deserialize, Serialize};

pub use shapes::{Cuts, Shape};

use crate::cluster::Node;
use crate::{Error, Result};

/// The interface a fault names, or — when it names none — the main interface `on` reports
/// ([`Node::interfaces`]), never an assumed name. A node that reports its interfaces allows
/// experiments only on those (a `hosts` inventory's `interfaces`; the cluster interface of a
/// netns or docker node): any other name is refused here, before the node is asked.
fn interface_on(interface: &str, on: &str, cluster_nodes: &[Arc<dyn Node>]) -> Result<String> {
    let node = cluster_nodes.iter().find(|n| n.name() == on);
    let allowed = node.map(|n| n.interfaces()).unwrap_or_default();
    if interface.is_empty() {
        return allowed.first().cloned().ok_or_else(|| {
            Error::invalid(
                format!("fault on {on}"),
                "no interface given, and the node reports none of its own: name one",
            )
        });
    }
    if !allowed.is_empty() && !allowed.iter().any(|a| a == interface) {
        return Err(Error::invalid(
            format!("fault on {on}"),
            format!(
                "interface {interface:?} is not one the node allows experiments on ({}); name one of those",
                allowed.join(", ")
            ),
        ));
    }
    Ok(interface.to_string())
}

/// Translates a lasting agent fault into the node's [`FaultSpec`], resolving peer names against
/// `cluster_nodes`; `on` names the node it is meant for (for errors). Checks every value before
/// any node is asked. `None` for faults that act once (kill, restart); machine faults are the
/// cluster's (`Cluster::inject_machine_fault`), not a node's, and are refused here.
pub fn to_spec(fault: &Fault, on: &str, cluster_nodes: &[Arc<dyn Node>]) -> Result<Option<FaultSpec>> {
    let what = || format!("{} fault on {on}", fault.kind());
    let invalid = |e: chaos_proto::fault::InvalidFault| Error::invalid(what(), e.to_string());
    let scope = |traffic: &Traffic| -> Result<NetScope> {
        let mut scope = resolve(traffic, cluster_nodes).map_err(|m| Error::invalid(what(), m))?;
        if let Some(interface) = &traffic.interface {
            scope.interface = Some(interface_on(interface, on, cluster_nodes)?);
        }
        scope.validate().map_err(invalid)?;
        Ok(scope)
    };
    let spec = match fault {
        Fault::Partition(f) => FaultSpec::Partition {
            scope: scope(&f.traffic)?,
        },
        Fault::Loss(f) => {
            let effects = PacketEffects {
                loss_percent: f.percent,
                loss_correlation: f.correlation,
                ..PacketEffects::default()
            };
            effects.validate().map_err(invalid)?;
            // Uncorrelated loss is a kernel rule; correlation needs the userspace shaper.
            if f.correlation == 0.0 {
                FaultSpec::Loss {
                    scope: scope(&f.traffic)?,
                    percent: f.percent,
                }
            } else {
                FaultSpec::Packet {
                    scope: scope(&f.traffic)?,
                    effects,
                }
            }
        }
        Fault::Delay(f) => {
            let micros = |d: &Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
            let effects = PacketEffects {
                delay_us: micros(&f.delay.0),
                jitter_us: micros(&f.jitter.0),
                distribution: f.distribution,
                ..PacketEffects::default()
            };
            if f.delay.0.is_zero() {
                return Err(Error::invalid(what(), "delay must be greater than zero"));
            }
            effects.validate().map_err(invalid)?;
            FaultSpec::Packet {
                scope: scope(&f.traffic)?,
                effects,
            }
        }
        Fault::Packet(f) => {
            f.effects.validate().map_err(invalid)?;
            if f.effects == PacketEffects::default() {
                return Err(Error::invalid(
                    what(),
                    "no effect: give at least one of delay_us, loss_percent, duplicate_percent, \
                         corrupt_percent, reorder_percent",
                ));
            }
            FaultSpec::Packet {
                scope: scope(&f.traffic)?,
                effects: f.effects.clone(),
            }
        }
        Fault::Bandwidth(b) => {
            if b.rate_bps == 0 {
                return Err(Error::invalid(
                    what(),
                    "rate_bps must be greater than zero (use a partition to stop all traffic)",
                ));
            }
            let mut b = b.clone();
            b.interface = interface_on(&b.interface, on, cluster_nodes)?;
            FaultSpec::Bandwidth(b)
        }
        Fault::Link(l) => {
            if l.up.is_none() && l.mtu.is_none() {
                return Err(Error::invalid(
                    what(),
                    "nothing to change: give `up` and/or `mtu`",
                ));
            }
            let mut l = l.clone();
            l.interface = interface_on(&l.interface, on, cluster_nodes)?;
            FaultSpec::Link(l)
        }
        Fault::Flap(f) => {
            let flap = LinkFlap {
                interface: interface_on(&f.interface, on, cluster_nodes)?,
                period_ms: u64::try_from(f.period.0.as_millis()).unwrap_or(u64::MAX),
                count: f.count,
                force: f.force,
            };
            flap.validate().map_err(invalid)?;
            FaultSpec::Flap(flap)
        }
        Fault::Pause(p) => FaultSpec::Freeze(match p.process.as_ref().unwrap_or(&ProcessTarget::All) {
            ProcessTarget::Proc(id) => FreezeTarget::Proc { id: *id },
            ProcessTarget::All => FreezeTarget::AllProcs,
            ProcessTarget::Pid(pid) => FreezeTarget::ProcessTree {
                pid: i32::try_from(*pid)
                    .map_err(|_| Error::invalid(what(), format!("{pid} is not a process id")))?,
            },
            ProcessTarget::Cgroup(path) => FreezeTarget::Cgroup { path: path.clone() },
            process @ (ProcessTarget::Group(_) | ProcessTarget::Name(_)) => {
                return Err(Error::invalid(
                    what(),
                    format!(
                        "cannot pause {process}: pause a process started through the node \
                             (proc:ID), all of them (all), a pid's tree (pid:PID) or a cgroup (cgroup:PATH)"
                    ),
                ));
            }
        }),
        Fault::Kill(k) => {
            if let Some(ProcessTarget::Cgroup(_)) = k.process {
                return Err(Error::invalid(
                    what(),
                    "kill takes proc, all, pid, group or name; a cgroup is only paused",
                ));
            }
            return Ok(None);
        }
        Fault::Restart(r) => {
            if r.process.is_none() {
                return Err(Error::invalid(
                    what(),
                    "process: which process to restart (the id the node gave it)",
                ));
            }
            if r.grace.0.as_millis() > u128::from(RestartRequest::MAX_GRACE_MS) {
                return Err(Error::invalid(
                    what(),
                    format!("grace {} is longer than the node allows (60 s)", r.grace),
                ));
            }
            return Ok(None);
        }
        Fault::Machine(m) => {
            return Err(Error::invalid(
                what(),
                format!(
                    "machine {} is carried out by the cluster that provisioned the node, not by \
                         its agent: inject it through the cluster",
                    m.action
                ),
            ));
        }
    };
    Ok(Some(spec))
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
        interface: None,
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
    let spec = to_spec(fault, &on, cluster_nodes)?;
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
        (None, Fault::Kill(kill)) => {
            let at = now_ms();
            let signal = kill.signal;
            let process = kill.process.clone().unwrap_or(ProcessTarget::All);
            let effect = match &process {
                ProcessTarget::Proc(id) => {
                    node.signal_proc(*id, signal, true).await?;
                    Effect::SignalledProcs { procs: vec![*id] }
                }
                ProcessTarget::All => Effect::SignalledProcs {
                    procs: node.kill_all(signal).await?,
                },
                ProcessTarget::Pid(pid) => Effect::Signalled {
                    pids: node.signal_target(signal, SignalTarget::Pid(*pid)).await?,
                },
                ProcessTarget::Group(pgid) => Effect::Signalled {
                    pids: node.signal_target(signal, SignalTarget::Group(*pgid)).await?,
                },
                ProcessTarget::Name(name) => Effect::Signalled {
                    pids: node
                        .signal_target(signal, SignalTarget::Name(name.clone()))
                        .await?,
                },
                ProcessTarget::Cgroup(_) => unreachable!("refused by to_spec"),
            };
            tracing::info!(node = %on, %signal, target = %process, "processes signalled");
            record(Mechanism::Signal, at, at, effect)
        }
        (None, Fault::Restart(restart)) => {
            let at = now_ms();
            let request = RestartRequest {
                signal: restart.signal,
                grace_ms: u64::try_from(restart.grace.0.as_millis()).unwrap_or(u64::MAX),
            };
            let process = restart.process.expect("refused by to_spec");
            let started = node.restart_proc(process, request).await?;
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
        let fault = Fault::Partition(Partition {
            traffic: Traffic::nodes(from).direction(Direction::In),
        });
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

#[cfg(test)]
mod tests;
