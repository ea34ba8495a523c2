//! Fault specifications: what a fault does, as plain serde values validated before anything is
//! installed. They travel in agent API requests (`POST /v1/faults`), so they live here; the
//! `chaos-faults` crate carries them out.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A fault specification that cannot be carried out as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidFault {
    /// The offending field.
    pub field: &'static str,
    /// What is wrong with it and what would be accepted.
    pub reason: String,
}

impl fmt::Display for InvalidFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {}: {}", self.field, self.reason)
    }
}

impl std::error::Error for InvalidFault {}

type Result<T, E = InvalidFault> = std::result::Result<T, E>;

struct Error;

impl Error {
    fn invalid(field: &'static str, reason: impl Into<String>) -> InvalidFault {
        InvalidFault {
            field,
            reason: reason.into(),
        }
    }
}

/// An IP network: an address and a prefix length (`10.0.0.0/24`, `fd00::1/128`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IpNet {
    /// The address (host bits beyond the prefix are ignored when matching).
    pub addr: IpAddr,
    /// Prefix length: 0..=32 for IPv4, 0..=128 for IPv6.
    pub prefix: u8,
}

impl IpNet {
    /// A single host.
    pub fn host(addr: IpAddr) -> Self {
        let prefix = if addr.is_ipv4() { 32 } else { 128 };
        Self { addr, prefix }
    }

    /// Address bytes (4 or 16).
    pub fn octets(&self) -> Vec<u8> {
        match self.addr {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        }
    }

    /// The prefix mask as bytes of the address length.
    pub fn mask(&self) -> Vec<u8> {
        let len = self.octets().len();
        (0..len)
            .map(|i| {
                let bits = (self.prefix as usize).saturating_sub(i * 8).min(8);
                if bits == 0 { 0 } else { 0xffu8 << (8 - bits) }
            })
            .collect()
    }
}

impl From<IpAddr> for IpNet {
    fn from(addr: IpAddr) -> Self {
        Self::host(addr)
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for IpNet {
    type Err = InvalidFault;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| Error::invalid("peer", format!("{s:?} is not an IP or IP/prefix: {why}"));
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| bad("bad address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.trim().parse::<u8>().map_err(|_| bad("bad prefix length"))?,
            None => max,
        };
        if prefix > max {
            return Err(bad("prefix length too long"));
        }
        Ok(Self { addr, prefix })
    }
}

impl TryFrom<String> for IpNet {
    type Error = InvalidFault;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<IpNet> for String {
    fn from(n: IpNet) -> String {
        n.to_string()
    }
}

/// Which packets a network fault affects, relative to this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Direction {
    /// Packets arriving from the peers (matched on source address, input hook).
    In,
    /// Packets sent to the peers (matched on destination address, output hook).
    Out,
    /// Both.
    #[default]
    Both,
}

impl Direction {
    /// True for `In` and `Both`.
    pub fn inbound(self) -> bool {
        matches!(self, Direction::In | Direction::Both)
    }
    /// True for `Out` and `Both`.
    pub fn outbound(self) -> bool {
        matches!(self, Direction::Out | Direction::Both)
    }
}

/// A transport protocol to restrict a fault to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// ICMP for IPv4 peers, ICMPv6 for IPv6 peers.
    Icmp,
}

/// The packets a network fault applies to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct NetScope {
    /// Peer addresses or networks; empty means every peer.
    #[serde(default)]
    pub peers: Vec<IpNet>,
    /// Direction relative to this node.
    #[serde(default)]
    pub direction: Direction,
    /// Restrict to one protocol; `None` means all (with `ports`: TCP and UDP).
    #[serde(default)]
    pub protocol: Option<Protocol>,
    /// Restrict to packets whose source *or* destination port is one of these (TCP/UDP only).
    #[serde(default)]
    pub ports: Vec<u16>,
    /// Local TCP ports whose traffic is never affected, both directions (e.g. the agent's
    /// control port). Merged with the injector's own exempt list.
    #[serde(default)]
    pub exempt_tcp_ports: Vec<u16>,
    /// Only packets arriving on (`in`) or leaving by (`out`) this interface; every interface
    /// when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
}

impl NetScope {
    /// Everything to and from `peers`, both directions.
    pub fn peers<I: IntoIterator<Item = IpAddr>>(peers: I) -> Self {
        Self {
            peers: peers.into_iter().map(IpNet::host).collect(),
            ..Self::default()
        }
    }

    /// Sets the direction.
    pub fn direction(mut self, direction: Direction) -> Self {
        self.direction = direction;
        self
    }

    /// Sets the protocol.
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = Some(protocol);
        self
    }

    /// Adds exempt local TCP ports.
    pub fn exempt<I: IntoIterator<Item = u16>>(mut self, ports: I) -> Self {
        self.exempt_tcp_ports.extend(ports);
        self
    }

    /// Checks the values are usable, naming the field that is not.
    pub fn validate(&self) -> Result<()> {
        if !self.ports.is_empty() && self.protocol == Some(Protocol::Icmp) {
            return Err(Error::invalid(
                "ports",
                "ICMP has no ports; drop the ports or the protocol",
            ));
        }
        if self.ports.contains(&0) {
            return Err(Error::invalid("ports", "port 0 cannot be matched"));
        }
        if let Some(name) = &self.interface {
            validate_interface_name(name)?;
        }
        Ok(())
    }
}

/// Checks an interface name as the kernel takes it: 1 to 15 bytes, no `/`, whitespace or NUL.
pub fn validate_interface_name(name: &str) -> Result<()> {
    let bad = name.is_empty()
        || name.len() > 15
        || name == "."
        || name == ".."
        || name.chars().any(|c| c == '/' || c == '\0' || c.is_whitespace());
    if bad {
        return Err(Error::invalid(
            "interface",
            format!("{name:?} is not an interface name (1 to 15 characters, no '/' or whitespace)"),
        ));
    }
    Ok(())
}

/// How delay jitter is distributed around the mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Distribution {
    /// Uniform in `[delay - jitter, delay + jitter]`.
    #[default]
    Uniform,
    /// Normal with standard deviation `jitter`, truncated at zero.
    Normal,
}

/// Per-packet effects of a "packet" fault (the netem feature set). Percentages are 0..=100.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct PacketEffects {
    /// Added latency, microseconds.
    #[serde(default)]
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 0))]
    pub delay_us: u64,
    /// Jitter around `delay_us`, microseconds.
    #[serde(default)]
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 0))]
    pub jitter_us: u64,
    /// Shape of the jitter.
    #[serde(default)]
    #[cfg_attr(feature = "clap", arg(long, value_enum, default_value_t = Distribution::Uniform))]
    pub distribution: Distribution,
    /// Percent of packets dropped.
    #[serde(default)]
    #[cfg_attr(feature = "clap", arg(long, value_parser = crate::kinds::parse_percent, default_value_t = 0.0))]
    pub loss_percent: f64,
    /// Correlation (0..=100) of successive loss decisions (burstiness); mean loss is kept.
    #[serde(default)]
    #[cfg_attr(feature = "clap", arg(long, value_parser = crate::kinds::parse_percent, default_value_t = 0.0))]
    pub loss_correlation: f64,
    /// Percent of packets sent twice.
    #[serde(default)]
    #[cfg_attr(feature = "clap", arg(long, value_parser = crate::kinds::parse_percent, default_value_t = 0.0))]
    pub duplicate_percent: f64,
    /// Percent of packets with one bit flipped (receivers drop them on checksum).
    #[serde(default)]
    #[cfg_attr(feature = "clap", arg(long, value_parser = crate::kinds::parse_percent, default_value_t = 0.0))]
    pub corrupt_percent: f64,
    /// Percent of packets sent immediately while the others wait `delay_us` (needs a delay).
    #[serde(default)]
    #[cfg_attr(feature = "clap", arg(long, value_parser = crate::kinds::parse_percent, default_value_t = 0.0))]
    pub reorder_percent: f64,
}

impl PacketEffects {
    /// Checks the values are usable, naming the field that is not.
    pub fn validate(&self) -> Result<()> {
        for (field, v) in [
            ("loss_percent", self.loss_percent),
            ("loss_correlation", self.loss_correlation),
            ("duplicate_percent", self.duplicate_percent),
            ("corrupt_percent", self.corrupt_percent),
            ("reorder_percent", self.reorder_percent),
        ] {
            if !(0.0..=100.0).contains(&v) {
                return Err(Error::invalid(
                    field,
                    format!("{v} is not a percentage between 0 and 100"),
                ));
            }
        }
        if self.reorder_percent > 0.0 && self.delay_us == 0 {
            return Err(Error::invalid(
                "reorder_percent",
                "reordering needs a delay_us > 0",
            ));
        }
        if self.delay_us > 60_000_000 || self.jitter_us > 60_000_000 {
            return Err(Error::invalid("delay_us", "delay and jitter are limited to 60 s"));
        }
        Ok(())
    }
}

/// `bandwidth`: a limit on an interface's egress. The fault model's struct and the wire's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct Bandwidth {
    /// Interface name, e.g. `"eth0"`; empty (or absent) means the node's cluster interface,
    /// which the runner fills in before the agent sees it.
    #[serde(default)]
    #[cfg_attr(feature = "clap", arg(long, default_value = ""))]
    pub interface: String,
    /// Rate, bits per second (a number, or tc-style text: `"500kbit"`, `"8mbit"`). Required.
    #[serde(deserialize_with = "rate_bps")]
    #[cfg_attr(feature = "clap", arg(long = "rate", value_parser = crate::kinds::parse_rate, value_name = "RATE"))]
    pub rate_bps: u64,
    /// Bucket size, bytes (at least the interface MTU; 0 picks max(rate/250 s, 2×MTU)).
    #[serde(default)]
    #[cfg_attr(feature = "clap", arg(long = "burst", value_parser = crate::kinds::parse_size, default_value_t = 0, value_name = "SIZE"))]
    pub burst_bytes: u32,
    /// Queue size, bytes (0 picks 100 ms worth of rate, at least 3×burst).
    #[serde(default)]
    #[cfg_attr(feature = "clap", arg(long = "limit", value_parser = crate::kinds::parse_size, default_value_t = 0, value_name = "SIZE"))]
    pub limit_bytes: u32,
    /// Local TCP ports never shaped (merged with the injector's exempt list).
    #[serde(default)]
    #[cfg_attr(feature = "clap", arg(long = "exempt-tcp-ports", value_delimiter = ','))]
    pub exempt_tcp_ports: Vec<u16>,
}

/// A rate as bits per second, or as tc-style text.
fn rate_bps<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<u64, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = u64;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a rate in bits per second, or text like \"500kbit\" or \"8mbit\"")
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<u64, E> {
            Ok(v)
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<u64, E> {
            u64::try_from(v).map_err(|_| E::custom(format!("{v} is not a rate")))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<u64, E> {
            crate::kinds::parse_rate(v).map_err(E::custom)
        }
    }
    d.deserialize_any(V)
}

/// `link`: a change to a network interface. The fault model's struct and the wire's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct LinkChange {
    /// Interface name. Required.
    #[cfg_attr(feature = "clap", arg(long))]
    pub interface: String,
    /// `Some(false)` takes the link down, `Some(true)` brings it up.
    #[serde(default)]
    #[cfg_attr(feature = "clap", arg(long))]
    pub up: Option<bool>,
    /// New MTU.
    #[serde(default)]
    #[cfg_attr(feature = "clap", arg(long))]
    pub mtu: Option<u32>,
    /// Also on the interface carrying the agent's own control traffic, which is otherwise
    /// refused (the agent's heartbeat watchdog then heals everything if the runner stays cut off
    /// longer than the heartbeat timeout).
    #[serde(default, skip_serializing_if = "is_false")]
    #[cfg_attr(feature = "clap", arg(long))]
    pub force: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// `flap` on the wire: take an interface down and up again, `count` times (0: until healed),
/// one cycle every `period_ms` with the link down for the first half of it; afterwards, and at
/// heal, the link is back in exactly the state it was in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkFlap {
    /// Interface name.
    pub interface: String,
    /// One down+up cycle, milliseconds (at least [`LinkFlap::MIN_PERIOD_MS`]).
    pub period_ms: u64,
    /// Cycles; 0 flaps until healed.
    #[serde(default)]
    pub count: u32,
    /// Also on the interface carrying the agent's control traffic (see [`LinkChange::force`]).
    #[serde(default, skip_serializing_if = "is_false")]
    pub force: bool,
}

impl LinkFlap {
    /// Shortest period: 20 ms (the link is down for 10 ms of it).
    pub const MIN_PERIOD_MS: u64 = 20;
    /// Longest period: one hour.
    pub const MAX_PERIOD_MS: u64 = 3_600_000;

    /// Checks the values are usable, naming the field that is not.
    pub fn validate(&self) -> Result<()> {
        validate_interface_name(&self.interface)?;
        if !(Self::MIN_PERIOD_MS..=Self::MAX_PERIOD_MS).contains(&self.period_ms) {
            return Err(Error::invalid(
                "period",
                format!(
                    "{} ms is outside {} ms ..= {} ms",
                    self.period_ms,
                    Self::MIN_PERIOD_MS,
                    Self::MAX_PERIOD_MS
                ),
            ));
        }
        Ok(())
    }
}

/// `eth0 down mtu 1400`: the interface (when named) and what changes.
impl fmt::Display for LinkChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        if !self.interface.is_empty() {
            parts.push(self.interface.clone());
        }
        match self.up {
            Some(true) => parts.push("up".into()),
            Some(false) => parts.push("down".into()),
            None => {}
        }
        if let Some(mtu) = self.mtu {
            parts.push(format!("mtu {mtu}"));
        }
        f.write_str(&parts.join(" "))
    }
}

/// What a freeze applies to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FreezeTarget {
    /// A cgroup directory (v2 with `cgroup.freeze`, or v1 freezer with `freezer.state`). An
    /// agent accepts only cgroups inside its node's cgroup, and none when it has no cgroup.
    Cgroup {
        /// Absolute path of the cgroup directory.
        path: String,
    },
    /// A process and all its descendants (SIGSTOP/SIGCONT); all must be processes of the node.
    ProcessTree {
        /// The root process.
        pid: i32,
    },
    /// A process the agent started: its cgroup `proc-<id>` when the agent runs with a cgroup,
    /// else its process tree. The agent resolves it into [`FreezeTarget::Cgroup`] or
    /// [`FreezeTarget::ProcessTree`] before anything is installed.
    Proc {
        /// The agent's id of the process.
        id: crate::ProcId,
    },
    /// Node-level freeze (JSON `{"kind":"freeze","all_procs":null}`): every process the agent
    /// started and that is still running, each as in [`FreezeTarget::Proc`]. The agent itself
    /// is never frozen; processes started after the freeze are not frozen.
    AllProcs,
}

/// A fault to install. The id, TTL and peer-name resolution live in the caller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FaultSpec {
    /// Drop every matching packet.
    Partition {
        /// Which packets.
        scope: NetScope,
    },
    /// Drop a percentage of matching packets in the kernel (`numgen random`), no correlation.
    Loss {
        /// Which packets.
        scope: NetScope,
        /// 0..=100, two decimals of precision.
        percent: f64,
    },
    /// Delay / jitter / correlated loss / duplicate / corrupt / reorder.
    Packet {
        /// Which packets.
        scope: NetScope,
        /// What happens to them.
        effects: PacketEffects,
    },
    /// Limit egress bandwidth of an interface.
    Bandwidth(Bandwidth),
    /// Link down/up or MTU change.
    Link(LinkChange),
    /// Link down and up again, periodically (probed and listed as a [`FaultKind::Link`]).
    Flap(LinkFlap),
    /// Freeze processes until healed.
    Freeze(FreezeTarget),
}

/// The kind of a [`FaultSpec`], as named by its `kind` tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// [`FaultSpec::Partition`].
    Partition,
    /// [`FaultSpec::Loss`].
    Loss,
    /// [`FaultSpec::Packet`].
    Packet,
    /// [`FaultSpec::Bandwidth`].
    Bandwidth,
    /// [`FaultSpec::Link`].
    Link,
    /// [`FaultSpec::Freeze`].
    Freeze,
}

impl FaultKind {
    /// Every kind, in declaration order.
    pub const ALL: [FaultKind; 6] = [
        FaultKind::Partition,
        FaultKind::Loss,
        FaultKind::Packet,
        FaultKind::Bandwidth,
        FaultKind::Link,
        FaultKind::Freeze,
    ];

    /// Whether the kind acts on the node's network (everything but [`FaultKind::Freeze`]): what an
    /// agent started with `--no-network-faults` refuses.
    pub fn is_network(self) -> bool {
        !matches!(self, FaultKind::Freeze)
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            FaultKind::Partition => "partition",
            FaultKind::Loss => "loss",
            FaultKind::Packet => "packet",
            FaultKind::Bandwidth => "bandwidth",
            FaultKind::Link => "link",
            FaultKind::Freeze => "freeze",
        };
        f.write_str(name)
    }
}

impl FaultSpec {
    /// The kind of this fault.
    pub fn kind(&self) -> FaultKind {
        match self {
            FaultSpec::Partition { .. } => FaultKind::Partition,
            FaultSpec::Loss { .. } => FaultKind::Loss,
            FaultSpec::Packet { .. } => FaultKind::Packet,
            FaultSpec::Bandwidth(_) => FaultKind::Bandwidth,
            FaultSpec::Link(_) | FaultSpec::Flap(_) => FaultKind::Link,
            FaultSpec::Freeze(_) => FaultKind::Freeze,
        }
    }
}

/// How a fault was (or would be) carried out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mechanism {
    /// A signal sent with kill(2).
    Signal,
    /// cgroup v2 `cgroup.freeze`.
    CgroupV2Freeze,
    /// cgroup v1 freezer `freezer.state`.
    CgroupV1Freezer,
    /// SIGSTOP/SIGCONT of every process in a tree.
    SigStopTree,
    /// cgroup v2 `cgroup.kill`.
    CgroupKill,
    /// Rules in our own nftables table, installed over netlink (no `nft` binary).
    NftablesNetlink,
    /// nftables rules sending packets to an NFQUEUE handled in this process.
    NfqueueUserspace {
        /// The queue number.
        queue: u16,
    },
    /// The kernel's netem qdisc.
    Netem,
    /// A tbf qdisc installed over rtnetlink.
    TbfNetlink,
    /// An htb root over rtnetlink whose default class has a tbf leaf, with u32 filters sending
    /// exempt local TCP ports to an unshaped class.
    HtbTbfNetlink,
    /// Link attributes changed over rtnetlink.
    RtnetlinkLink,
    /// A thread of the agent taking the link down and up over rtnetlink, on a fixed schedule.
    RtnetlinkLinkFlap,
}

/// `POST /v1/faults` body: install `spec` on the node for at most `ttl_ms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultRequest {
    /// Caller-chosen id (1–64 of `[A-Za-z0-9_.-]`); the agent picks one when absent.
    #[serde(default)]
    pub id: Option<String>,
    /// Time to live: the agent heals the fault by itself after this many milliseconds, so a
    /// fault never outlives a runner that forgot it. Required, greater than zero.
    pub ttl_ms: u64,
    /// What to break.
    pub spec: FaultSpec,
}

/// A fault active on a node (`POST /v1/faults` reply, `GET /v1/faults` entries).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultInfo {
    /// The fault's id on this node.
    pub id: String,
    /// What it does.
    pub spec: FaultSpec,
    /// How the node carried it out.
    pub mechanism: Mechanism,
    /// When it was installed, milliseconds since the Unix epoch.
    pub injected_ms: u64,
    /// When the agent heals it unless healed before, milliseconds since the Unix epoch.
    pub expires_ms: u64,
    /// Why the last attempt to heal it failed, while it stays in place: the agent lists a fault
    /// until the kernel confirms its effect is gone, and retries the heal with backoff (100 ms
    /// doubling to 5 s) for as long as it lives. `None` while no heal has failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heal_error: Option<String>,
    /// How many attempts to heal it have failed so far.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub heal_attempts: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// `DELETE /v1/faults/{id}` reply. Healing is idempotent: healing a fault that is not active
/// (healed already, expired, never existed) succeeds with `healed: false`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealReply {
    /// True when the fault was active and has now been removed.
    pub healed: bool,
}

/// Whether a node can carry out one fault kind (`GET /v1/probe`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindSupport {
    /// The fault kind.
    pub kind: FaultKind,
    /// How the node carries it out; `None` when it cannot. For `packet` faults the queue
    /// number is the first one tried (each fault takes the next free one).
    pub mechanism: Option<Mechanism>,
    /// When unsupported: the missing feature and why, e.g. `"nfqueue: CONFIG_NFT_COMPAT is not
    /// set"`.
    pub missing: Option<String>,
    /// The kernel itself ends the fault at its TTL, so it stops acting even if the agent is dead
    /// (nftables rules with a `meta time` deadline). Otherwise the TTL is kept by the agent —
    /// and, when the agent dies, by the next agent the runner's supervisor starts.
    #[serde(default)]
    pub kernel_expiry: bool,
}

/// One kernel feature or facility the fault mechanisms may use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Feature {
    /// Present and usable.
    pub available: bool,
    /// How that was determined, or — when absent — what is missing.
    pub detail: String,
}

/// `GET /v1/probe` reply: what this node's agent can break, and with what.
///
/// Feature names: `nftables_netlink`, `nft_numgen`, `nft_queue`, `nfqueue`, `netem`, `tbf`,
/// `cgroup_v2_freeze`, `cgroup_v1_freezer`, `cgroup_kill`, `agent_cgroup` (whether the agent
/// runs with a cgroup of its own for started processes), `iptables` (informational: the agent
/// never needs it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeReport {
    /// One entry per [`FaultKind`].
    pub kinds: Vec<KindSupport>,
    /// Every probed feature by name, present or not.
    pub features: std::collections::BTreeMap<String, Feature>,
    /// External programs the fault mechanisms need (none today).
    pub external_binaries: Vec<String>,
}

impl ProbeReport {
    /// The entry of `kind`, if the report has one.
    pub fn kind(&self, kind: FaultKind) -> Option<&KindSupport> {
        self.kinds.iter().find(|k| k.kind == kind)
    }

    /// Whether the node can carry out faults of `kind`.
    pub fn supports(&self, kind: FaultKind) -> bool {
        self.kind(kind).is_some_and(|k| k.mechanism.is_some())
    }

    /// Whether feature `name` is available (false when the report does not know it).
    pub fn has(&self, name: &str) -> bool {
        self.features.get(name).is_some_and(|f| f.available)
    }

    /// The missing features, each with its reason.
    pub fn missing(&self) -> impl Iterator<Item = (&str, &str)> {
        self.features
            .iter()
            .filter(|(_, f)| !f.available)
            .map(|(name, f)| (name.as_str(), f.detail.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_info_heal_errors_are_optional_on_the_wire() {
        let old = r#"{"id":"f1","spec":{"kind":"freeze","proc":{"id":7}},"mechanism":"sig_stop_tree","injected_ms":1,"expires_ms":2}"#;
        let info: FaultInfo = serde_json::from_str(old).unwrap();
        assert_eq!((info.heal_error.as_deref(), info.heal_attempts), (None, 0));
        assert_eq!(
            serde_json::to_string(&info).unwrap(),
            old,
            "nothing new on the wire while healthy"
        );
        let failing = FaultInfo {
            heal_error: Some("EMFILE".into()),
            heal_attempts: 3,
            ..info
        };
        let json = serde_json::to_string(&failing).unwrap();
        assert!(
            json.contains(r#""heal_error":"EMFILE","heal_attempts":3"#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<FaultInfo>(&json).unwrap(), failing);
    }

    #[test]
    fn process_freeze_targets_are_compact_json() {
        let spec = FaultSpec::Freeze(FreezeTarget::Proc { id: 7 });
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(json, r#"{"kind":"freeze","proc":{"id":7}}"#);
        assert_eq!(serde_json::from_str::<FaultSpec>(&json).unwrap(), spec);
        let all = FaultSpec::Freeze(FreezeTarget::AllProcs);
        let json = serde_json::to_string(&all).unwrap();
        assert_eq!(json, r#"{"kind":"freeze","all_procs":null}"#);
        assert_eq!(serde_json::from_str::<FaultSpec>(&json).unwrap(), all);
        assert_eq!(all.kind(), FaultKind::Freeze);
        assert_eq!(FaultKind::Packet.to_string(), "packet");
    }
}
