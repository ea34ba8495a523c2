//! The fault model: every fault kind the toolkit knows is **one struct here**, and [`Fault`]
//! (tagged by `kind`) is the one list of them. The same values are the runner API
//! (`chaos::faults::inject`), the `[[faults]]` cases of scenario files, the steps of a plan
//! (`plan.json`, `chaos run --plan`) and the options of `chaos fault inject NODE KIND` (generated
//! from these structs with the `clap` feature).
//!
//! Each struct denies fields it does not have, so a scenario field that belongs to another kind
//! is refused, with the valid fields, instead of being ignored; and no parameter is filled in
//! silently: a required one (a loss's `percent`, a delay's `delay`, a bandwidth's `rate_bps`) is
//! required everywhere, defaults are written here once.
//!
//! A [`Fault`] says *what* to break in the user's words — peers by node name, processes by
//! target. The runner resolves it for one node into a [`crate::fault::FaultSpec`] (addresses,
//! freeze targets) for the agent, sends kill/restart to the process endpoints, and hands
//! [`Machine`] faults to the cluster that provisions the machine.
//!
//! **Adding a fault kind**: a struct here, a variant of [`Fault`] (and its name in
//! [`Fault::NAMES`]), its resolution in `chaos::faults` — and, for a scenario, its family's
//! nemesis in `chaos_scenario::nemesis`.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

pub use crate::units::{Dur, parse_percent, parse_rate, parse_size};

use crate::fault::{Bandwidth, Direction, Distribution, IpNet, LinkChange, PacketEffects, Protocol};
use crate::machine::MachineFault;
use crate::{ProcId, Signal};

// ---------------------------------------------------------------------------------------------
// Values fault fields are made of
// ---------------------------------------------------------------------------------------------

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
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Ok(net) = s.parse::<IpNet>() {
            return Ok(Peer::Net(net));
        }
        let looks_like_net = s.contains('/') || s.contains(':');
        let name_chars = s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if s.is_empty() || looks_like_net || !name_chars {
            return Err(format!(
                "peer {s:?} is neither a node name (like n2) nor an IP address or network (like 10.0.0.0/24)"
            ));
        }
        Ok(Peer::Node(s.to_string()))
    }
}

impl TryFrom<String> for Peer {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
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

/// Which packets a network fault affects, relative to the node it is injected on. In a
/// scenario, no `peers` means the cluster's other nodes, and the direction of a partition says
/// which way it cuts (`in`: only packets arriving at the targets are dropped).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct Traffic {
    /// Peers (node names, IPs or networks, comma-separated on the command line); none means
    /// every peer. The runner's control traffic to the node's agent is never affected.
    #[serde(default)]
    #[cfg_attr(feature = "clap", arg(long, value_delimiter = ',', value_name = "PEERS"))]
    pub peers: Vec<Peer>,
    /// `in` (from the peers), `out` (to the peers) or `both`.
    #[serde(default)]
    #[cfg_attr(feature = "clap", arg(long, value_enum, default_value_t = Direction::Both))]
    pub direction: Direction,
    /// Only this protocol; all when absent.
    #[serde(default)]
    #[cfg_attr(feature = "clap", arg(long, value_enum))]
    pub protocol: Option<Protocol>,
    /// Only packets whose source or destination port is one of these (TCP and UDP).
    #[serde(default)]
    #[cfg_attr(feature = "clap", arg(long, value_delimiter = ',', value_name = "PORTS"))]
    pub ports: Vec<u16>,
    /// Only packets arriving on (`in`) or leaving by (`out`) this network interface of the
    /// node; every interface when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "clap", arg(long, value_name = "INTERFACE"))]
    pub interface: Option<String>,
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

    /// Restricts to packets on one network interface of the node.
    pub fn interface(mut self, interface: impl Into<String>) -> Self {
        self.interface = Some(interface.into());
        self
    }
}

/// Processes a process fault acts on. Written as a string: `proc:3`, `all`, `pid:4242`,
/// `group:4242`, `name:etcd`, `cgroup:/sys/fs/cgroup/x`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ProcessTarget {
    /// A process started through the node (its node-assigned id) and all its descendants.
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
            ProcessTarget::Proc(id) => write!(f, "proc:{id}"),
            ProcessTarget::All => f.write_str("all"),
            ProcessTarget::Pid(pid) => write!(f, "pid:{pid}"),
            ProcessTarget::Group(pgid) => write!(f, "group:{pgid}"),
            ProcessTarget::Name(name) => write!(f, "name:{name}"),
            ProcessTarget::Cgroup(path) => write!(f, "cgroup:{path}"),
        }
    }
}

impl FromStr for ProcessTarget {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "process target {s:?} is not one of proc:ID, all, pid:PID, group:PGID, name:COMM, cgroup:PATH"
            )
        };
        if s == "all" {
            return Ok(ProcessTarget::All);
        }
        let (what, value) = s.split_once(':').ok_or_else(bad)?;
        let number = |v: &str| v.parse::<u32>().map_err(|_| bad());
        Ok(match what {
            "proc" => ProcessTarget::Proc(value.parse().map_err(|_| bad())?),
            "pid" => ProcessTarget::Pid(number(value)?),
            "group" => ProcessTarget::Group(number(value)?),
            "name" if !value.is_empty() => ProcessTarget::Name(value.to_string()),
            "cgroup" if value.starts_with('/') => ProcessTarget::Cgroup(value.to_string()),
            _ => return Err(bad()),
        })
    }
}

impl TryFrom<String> for ProcessTarget {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<ProcessTarget> for String {
    fn from(t: ProcessTarget) -> String {
        t.to_string()
    }
}

/// Signals as names in files (`"SIGTERM"`); names or numbers are accepted.
mod signal_name {
    use super::*;

    pub fn serialize<S: Serializer>(signal: &Signal, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(signal)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Signal, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Signal;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a signal name such as \"SIGTERM\" or a number from 1 to 64")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Signal, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Signal, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Signal, E> {
                self.visit_str(&v.to_string())
            }
        }
        d.deserialize_any(V)
    }
}

// ---------------------------------------------------------------------------------------------
// The kinds
// ---------------------------------------------------------------------------------------------

/// `partition`: drop every matching packet.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct Partition {
    /// Which packets.
    #[serde(default)]
    #[cfg_attr(feature = "clap", command(flatten))]
    pub traffic: Traffic,
}

/// `loss`: drop a percentage of matching packets (in the kernel; in userspace when correlated).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct Loss {
    /// Which packets.
    #[serde(default)]
    #[cfg_attr(feature = "clap", command(flatten))]
    pub traffic: Traffic,
    /// Percent of packets dropped, 0 to 100. Required.
    #[cfg_attr(feature = "clap", arg(long, value_parser = parse_percent))]
    pub percent: f64,
    /// 0 to 100: how much each loss decision follows the previous one (bursts).
    #[serde(default)]
    #[cfg_attr(feature = "clap", arg(long, value_parser = parse_percent, default_value_t = 0.0))]
    pub correlation: f64,
}

/// `delay`: delay matching packets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct Delay {
    /// Which packets.
    #[serde(default)]
    #[cfg_attr(feature = "clap", command(flatten))]
    pub traffic: Traffic,
    /// Mean added latency (e.g. `"100ms"`; at most 60 s). Required.
    #[cfg_attr(feature = "clap", arg(long))]
    pub delay: Dur,
    /// Spread around the mean.
    #[serde(default)]
    #[cfg_attr(feature = "clap", arg(long, default_value = "0s"))]
    pub jitter: Dur,
    /// Shape of the spread.
    #[serde(default)]
    #[cfg_attr(feature = "clap", arg(long, value_enum, default_value_t = Distribution::Uniform))]
    pub distribution: Distribution,
}

/// `packet`: any mix of delay, jitter, loss, duplication, corruption and reordering.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct Packet {
    /// Which packets.
    #[serde(default)]
    #[cfg_attr(feature = "clap", command(flatten))]
    pub traffic: Traffic,
    /// What happens to them (at least one effect).
    #[cfg_attr(feature = "clap", command(flatten))]
    pub effects: PacketEffects,
}

/// `flap`: take a network interface down and up again, `count` times, one cycle per `period`
/// with the link down for its first half; then — and at heal or TTL — the link is exactly as it
/// was. The interface carrying the agent's control traffic is refused unless `force`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct Flap {
    /// Interface name; empty (or absent) means the node's main interface.
    #[serde(default)]
    #[cfg_attr(feature = "clap", arg(long, default_value = ""))]
    pub interface: String,
    /// One down+up cycle (e.g. `"1s"`; 20 ms to 1 h). Required.
    #[cfg_attr(feature = "clap", arg(long))]
    pub period: Dur,
    /// How many cycles; 0 (the default) flaps until healed.
    #[serde(default)]
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 0))]
    pub count: u32,
    /// Also on the interface carrying the agent's own control traffic.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    #[cfg_attr(feature = "clap", arg(long))]
    pub force: bool,
}

/// `pause`: freeze processes (cgroup freezer, else SIGSTOP of the tree) until healed.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct Pause {
    /// Which processes: `proc:ID`, `all`, `pid:PID` or `cgroup:PATH`. Absent: every process
    /// started through the node; in a scenario, the system it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "clap", arg(long))]
    pub process: Option<ProcessTarget>,
}

/// `kill`: send a signal, once. In a scenario the system is started again at heal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct Kill {
    /// The signal (default SIGKILL).
    #[serde(default = "sigkill", with = "signal_name")]
    #[cfg_attr(feature = "clap", arg(long, default_value = "SIGKILL"))]
    pub signal: Signal,
    /// Which processes: any [`ProcessTarget`] but `cgroup`. Absent: every process started
    /// through the node; in a scenario, the system it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "clap", arg(long))]
    pub process: Option<ProcessTarget>,
}

impl Default for Kill {
    /// SIGKILL to the default target.
    fn default() -> Self {
        Kill {
            signal: Signal::KILL,
            process: None,
        }
    }
}

fn sigkill() -> Signal {
    Signal::KILL
}

fn sigterm() -> Signal {
    Signal::TERM
}

fn five_seconds() -> Dur {
    Dur::secs(5)
}

/// `restart`: stop a process (signal, grace, then SIGKILL) and start it again with the same
/// spec. Through the runner it acts once; in a scenario the system stays down for the step's
/// duration and is started again at heal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct Restart {
    /// The process started through the node (its id). Required through the runner; in a
    /// scenario always the system, so absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "clap", arg(long = "proc", value_name = "ID"))]
    pub process: Option<ProcId>,
    /// The signal asking it to stop (default SIGTERM; a scenario's default is its
    /// `stop_signal`).
    #[serde(default = "sigterm", with = "signal_name")]
    #[cfg_attr(feature = "clap", arg(long, default_value = "SIGTERM"))]
    pub signal: Signal,
    /// How long it may take to exit before SIGKILL (default 5 s, at most 60 s).
    #[serde(default = "five_seconds")]
    #[cfg_attr(feature = "clap", arg(long, default_value = "5s"))]
    pub grace: Dur,
}

impl Default for Restart {
    /// SIGTERM, 5 s of grace, the default process.
    fn default() -> Self {
        Restart {
            process: None,
            signal: Signal::TERM,
            grace: five_seconds(),
        }
    }
}

/// `machine`: a fault of the whole machine the cluster provisioned (a container paused,
/// stopped or disconnected), carried out by the cluster, not the node's agent. Only clusters
/// whose `machine_faults()` list the action offer it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct Machine {
    /// `pause`, `stop` or `disconnect`.
    #[cfg_attr(feature = "clap", arg(long))]
    pub action: MachineFault,
}

/// A fault, as a plain value: what to break on one node. Tagged by `kind`, e.g.
/// `{"kind":"loss","traffic":{"peers":["n2"]},"percent":30.0}` in JSON or
/// `kind = "delay"` / `delay = "100ms"` in a scenario's `[[faults]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[cfg_attr(feature = "clap", derive(clap::Subcommand))]
pub enum Fault {
    /// Drop every matching packet.
    Partition(Partition),
    /// Drop a percentage of matching packets.
    Loss(Loss),
    /// Delay matching packets.
    Delay(Delay),
    /// Any mix of delay, loss, duplication, corruption, reordering.
    Packet(Packet),
    /// Limit the node's outgoing bandwidth on an interface.
    Bandwidth(Bandwidth),
    /// Take an interface down or up, or change its MTU.
    Link(LinkChange),
    /// Take an interface down and up again, periodically.
    Flap(Flap),
    /// Freeze processes until healed.
    Pause(Pause),
    /// Send a signal once.
    Kill(Kill),
    /// Stop a process and start it again.
    Restart(Restart),
    /// Pause, stop or disconnect the node's whole machine (through its cluster).
    Machine(Machine),
}

/// Which part of the system carries a fault out: each family has one nemesis in the scenario
/// engine and one path in the runner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// Network faults the node's agent installs (partition, loss, delay, packet, bandwidth,
    /// link, flap).
    Network,
    /// Faults on processes (pause, kill, restart).
    Process,
    /// Faults the cluster carries out on a node's machine.
    Machine,
}

impl Fault {
    /// Every kind's name, as in the `kind` tag.
    pub const NAMES: &[&str] = &[
        "partition",
        "loss",
        "delay",
        "packet",
        "bandwidth",
        "link",
        "flap",
        "pause",
        "kill",
        "restart",
        "machine",
    ];

    /// The fault's kind, as in its `kind` tag.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Partition(_) => "partition",
            Fault::Loss(_) => "loss",
            Fault::Delay(_) => "delay",
            Fault::Packet(_) => "packet",
            Fault::Bandwidth(_) => "bandwidth",
            Fault::Link(_) => "link",
            Fault::Flap(_) => "flap",
            Fault::Pause(_) => "pause",
            Fault::Kill(_) => "kill",
            Fault::Restart(_) => "restart",
            Fault::Machine(_) => "machine",
        }
    }

    /// Who carries it out.
    pub fn family(&self) -> Family {
        match self {
            Fault::Partition(_)
            | Fault::Loss(_)
            | Fault::Delay(_)
            | Fault::Packet(_)
            | Fault::Bandwidth(_)
            | Fault::Link(_)
            | Fault::Flap(_) => Family::Network,
            Fault::Pause(_) | Fault::Kill(_) | Fault::Restart(_) => Family::Process,
            Fault::Machine(_) => Family::Machine,
        }
    }

    /// True for faults that last until healed (or until their TTL); false for those that act
    /// once through the runner (kill, restart).
    pub fn is_lasting(&self) -> bool {
        !matches!(self, Fault::Kill(_) | Fault::Restart(_))
    }

    /// The traffic a network fault affects (`None` for other kinds).
    pub fn traffic(&self) -> Option<&Traffic> {
        match self {
            Fault::Partition(f) => Some(&f.traffic),
            Fault::Loss(f) => Some(&f.traffic),
            Fault::Delay(f) => Some(&f.traffic),
            Fault::Packet(f) => Some(&f.traffic),
            _ => None,
        }
    }

    /// The wire kind the node's agent must support to carry the fault out, for capability
    /// checks against its probe report (`None`: not an agent fault).
    pub fn agent_kind(&self) -> Option<crate::fault::FaultKind> {
        use crate::fault::FaultKind as K;
        Some(match self {
            Fault::Partition(_) => K::Partition,
            Fault::Loss(f) if f.correlation == 0.0 => K::Loss,
            Fault::Loss(_) | Fault::Delay(_) | Fault::Packet(_) => K::Packet,
            Fault::Bandwidth(_) => K::Bandwidth,
            Fault::Link(_) | Fault::Flap(_) => K::Link,
            Fault::Pause(_) => K::Freeze,
            Fault::Kill(_) | Fault::Restart(_) | Fault::Machine(_) => return None,
        })
    }

    /// One short phrase of its parameters, for plans and logs (`30%`, `100ms±10ms`, `SIGKILL`).
    pub fn describe(&self) -> String {
        let dir = |t: &Traffic| match t.direction {
            Direction::Both => String::new(),
            Direction::In => " in".into(),
            Direction::Out => " out".into(),
        };
        match self {
            Fault::Partition(f) => dir(&f.traffic).trim().to_string(),
            Fault::Loss(f) if f.correlation > 0.0 => {
                format!("{}% ~{}%{}", f.percent, f.correlation, dir(&f.traffic))
            }
            Fault::Loss(f) => format!("{}%{}", f.percent, dir(&f.traffic)),
            Fault::Delay(f) if !f.jitter.0.is_zero() => {
                format!("{}±{}{}", f.delay, f.jitter, dir(&f.traffic))
            }
            Fault::Delay(f) => format!("{}{}", f.delay, dir(&f.traffic)),
            Fault::Packet(f) => {
                let e = &f.effects;
                let mut parts = Vec::new();
                if e.delay_us > 0 {
                    parts.push(format!("{}us", e.delay_us));
                }
                for (name, v) in [
                    ("loss", e.loss_percent),
                    ("dup", e.duplicate_percent),
                    ("corrupt", e.corrupt_percent),
                    ("reorder", e.reorder_percent),
                ] {
                    if v > 0.0 {
                        parts.push(format!("{name} {v}%"));
                    }
                }
                parts.join(" ")
            }
            Fault::Bandwidth(b) => format!("{}kbit/s", b.rate_bps / 1000),
            Fault::Link(l) => l.to_string(),
            Fault::Flap(f) => {
                let mut parts = Vec::new();
                if !f.interface.is_empty() {
                    parts.push(f.interface.clone());
                }
                parts.push(format!("every {}", f.period));
                if f.count > 0 {
                    parts.push(format!("×{}", f.count));
                }
                parts.join(" ")
            }
            Fault::Pause(p) => p.process.as_ref().map(|t| t.to_string()).unwrap_or_default(),
            Fault::Kill(k) => match &k.process {
                Some(t) => format!("{} {t}", k.signal),
                None => k.signal.to_string(),
            },
            Fault::Restart(r) => r.signal.to_string(),
            Fault::Machine(m) => m.action.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_named_once() {
        let mut names = Fault::NAMES.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Fault::NAMES.len());
    }

    #[test]
    fn a_field_of_another_kind_is_refused_with_the_valid_ones() {
        let err = serde_json::from_str::<Fault>(r#"{"kind":"partition","percent":3}"#).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("unknown field `percent`") && text.contains("traffic"),
            "{text}"
        );
        let err = serde_json::from_str::<Fault>(r#"{"kind":"loss"}"#).unwrap_err();
        assert!(err.to_string().contains("missing field `percent`"), "{err}");
        let err = serde_json::from_str::<Fault>(r#"{"kind":"kill","signal":"SIGNOPE"}"#).unwrap_err();
        assert!(err.to_string().contains("unknown signal"), "{err}");
    }

    #[test]
    fn faults_round_trip_with_their_defaults_written_once() {
        let kill: Fault = serde_json::from_str(r#"{"kind":"kill"}"#).unwrap();
        assert_eq!(
            kill,
            Fault::Kill(Kill {
                signal: Signal::KILL,
                process: None
            })
        );
        let json = serde_json::to_string(&kill).unwrap();
        assert_eq!(json, r#"{"kind":"kill","signal":"SIGKILL"}"#);
        let delay: Fault = serde_json::from_str(
            r#"{"kind":"delay","delay":"100ms","traffic":{"peers":["n2","10.0.0.0/24"]}}"#,
        )
        .unwrap();
        assert_eq!(
            serde_json::from_str::<Fault>(&serde_json::to_string(&delay).unwrap()).unwrap(),
            delay
        );
        assert_eq!(delay.describe(), "100ms");
        let bw: Fault = serde_json::from_str(r#"{"kind":"bandwidth","rate_bps":"500kbit"}"#).unwrap();
        assert_eq!(bw.describe(), "500kbit/s");
        let target: ProcessTarget = "name:etcd".parse().unwrap();
        assert_eq!(target.to_string(), "name:etcd");
        assert!("cgroup:relative".parse::<ProcessTarget>().is_err());
    }

    #[test]
    fn rates_and_sizes_use_tc_units() {
        assert_eq!(parse_rate("8mbit"), Ok(8_000_000));
        assert_eq!(parse_rate("500kbit"), Ok(500_000));
        assert_eq!(parse_rate("1.5Gbit"), Ok(1_500_000_000));
        assert_eq!(parse_rate("1mbps"), Ok(8_000_000));
        assert_eq!(parse_rate("9600"), Ok(9600));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("0bit").is_err());
        assert_eq!(parse_size("32kb"), Ok(32 * 1024));
        assert_eq!(parse_size("1500"), Ok(1500));
        assert!(parse_size("-3kb").is_err());
        assert!(parse_size("8gb").is_err());
        assert_eq!(parse_percent("30%"), Ok(30.0));
        assert!(parse_percent("101").is_err());
    }
}
