//! `chaos fault inject|list|heal`: faults on the nodes of a cluster started by `chaos up`,
//! through the runner's fault API ([`chaos::faults`]): peers given by node name are resolved to
//! the nodes' addresses, and every lasting fault carries a TTL after which its node heals it.
//!
//! All inject options sit in one flat list (any order); an option that does not apply to the
//! chosen kind is refused rather than ignored.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chaos::Node;
use chaos::agent_client::AgentNode;
use chaos::faults::{self, Fault, Peer, ProcessTarget, Traffic};
use chaos::proto::ProcId;
use chaos::proto::fault::{Direction, Distribution, FaultSpec, Mechanism, PacketEffects, Protocol};
use clap::{Args, Subcommand, ValueEnum};

use super::BadInput;
use super::state::{ClusterState, StateDir};

/// `chaos fault …`.
#[derive(Debug, Subcommand)]
pub enum FaultCommand {
    /// Inject a fault on a node; prints its id (details on stderr, or everything with --json).
    Inject(Box<InjectArgs>),
    /// List the active faults of one node or of every node.
    List(ListArgs),
    /// Heal a fault by id (on NODE, or wherever it is), or every fault with --all.
    Heal(HealArgs),
}

/// Kinds of fault `chaos fault inject` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    /// Drop every matching packet.
    Partition,
    /// Drop a percentage of matching packets (--percent, --correlation).
    Loss,
    /// Delay matching packets (--delay, --jitter, --distribution).
    Delay,
    /// Any mix of --delay/--jitter/--loss/--duplicate/--corrupt/--reorder.
    Packet,
    /// Limit the node's outgoing bandwidth (--rate, --burst, --interface).
    Bandwidth,
    /// Take an interface down or up, or change its MTU (--interface, --down|--up, --mtu).
    Link,
    /// Freeze processes until healed (--proc ID | --pid PID | --all-procs | --cgroup PATH).
    Pause,
    /// Send a signal once (--signal; --proc | --pid | --group | --name | --all-procs).
    Kill,
    /// Stop a process started through the node and start it again (--proc, --signal, --grace).
    Restart,
}

/// `chaos fault inject`.
#[derive(Debug, Args)]
pub struct InjectArgs {
    /// State directory given to `chaos up`.
    #[arg(long, value_name = "DIR")]
    pub state: PathBuf,
    /// The node to inject on (n1, n2, …).
    pub node: String,
    /// What to break.
    #[arg(value_enum)]
    pub kind: Kind,
    /// After this long the node heals the fault by itself (e.g. 30s, 5m); required except for
    /// kill and restart, which act once.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub ttl: Option<Duration>,
    /// The fault's id (1–64 of A-Z a-z 0-9 _ . -) [default: KIND-<random>].
    #[arg(long)]
    pub id: Option<String>,
    /// Print the whole injection record as JSON instead of the id.
    #[arg(long)]
    pub json: bool,

    /// Network faults: peers whose traffic is affected, comma-separated node names, IPs or
    /// networks (n2,n3 or 10.0.0.0/24) [default: every peer].
    #[arg(long, value_delimiter = ',', value_name = "PEERS")]
    pub peers: Vec<String>,
    /// Network faults: packets from the peers (in), to them (out), or both.
    #[arg(long, value_enum)]
    pub direction: Option<DirectionArg>,
    /// Network faults: only this protocol.
    #[arg(long, value_enum)]
    pub protocol: Option<ProtocolArg>,
    /// Network faults: only packets from or to these ports, comma-separated (TCP and UDP).
    #[arg(long, value_delimiter = ',', value_name = "PORTS")]
    pub ports: Vec<u16>,

    /// loss: percent of packets dropped (0-100).
    #[arg(long, value_parser = parse_percent)]
    pub percent: Option<f64>,
    /// loss and packet: how much each loss decision follows the previous one (0-100).
    #[arg(long, value_parser = parse_percent)]
    pub correlation: Option<f64>,
    /// delay and packet: added latency (e.g. 100ms).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub delay: Option<Duration>,
    /// delay and packet: spread around the delay (e.g. 10ms).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub jitter: Option<Duration>,
    /// delay and packet: shape of the spread.
    #[arg(long, value_enum)]
    pub distribution: Option<DistributionArg>,
    /// packet: percent of packets dropped.
    #[arg(long, value_parser = parse_percent)]
    pub loss: Option<f64>,
    /// packet: percent of packets sent twice.
    #[arg(long, value_parser = parse_percent)]
    pub duplicate: Option<f64>,
    /// packet: percent of packets with a bit flipped.
    #[arg(long, value_parser = parse_percent)]
    pub corrupt: Option<f64>,
    /// packet: percent of packets sent at once while the others wait --delay.
    #[arg(long, value_parser = parse_percent)]
    pub reorder: Option<f64>,

    /// bandwidth: rate limit, tc-style (8mbit, 500kbit, 1gbit; 1mbps is a megabyte per second).
    #[arg(long, value_parser = parse_rate, value_name = "RATE")]
    pub rate: Option<u64>,
    /// bandwidth: bucket size (32kb, 1mb, 1500) [default: the node picks].
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    pub burst: Option<u64>,
    /// bandwidth and link: the interface [default for bandwidth: the node's main interface, as
    /// its backend reported it].
    #[arg(long, value_name = "NAME")]
    pub interface: Option<String>,
    /// link: take the interface down.
    #[arg(long, conflicts_with = "up")]
    pub down: bool,
    /// link: bring the interface up.
    #[arg(long)]
    pub up: bool,
    /// link: set the interface's MTU.
    #[arg(long)]
    pub mtu: Option<u32>,

    /// pause, kill, restart: a process started through the node, by the node's process id.
    #[arg(long = "proc", value_name = "ID")]
    pub proc_id: Option<ProcId>,
    /// pause, kill: the process with this OS pid (and, for pause, its descendants).
    #[arg(long)]
    pub pid: Option<u32>,
    /// kill: every process of this process group.
    #[arg(long, value_name = "PGID")]
    pub group: Option<u32>,
    /// kill: every process with this command name.
    #[arg(long, value_name = "COMM")]
    pub name: Option<String>,
    /// pause: every process of this cgroup directory.
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<String>,
    /// pause, kill: every process started through the node.
    #[arg(long)]
    pub all_procs: bool,
    /// kill, restart: the signal [default: SIGKILL for kill, SIGTERM for restart].
    #[arg(long)]
    pub signal: Option<chaos::Signal>,
    /// restart: how long the process may take to exit before SIGKILL.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub grace: Option<Duration>,
}

/// `--direction`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DirectionArg {
    /// Packets arriving from the peers.
    In,
    /// Packets sent to the peers.
    Out,
    /// Both.
    Both,
}

/// `--protocol`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ProtocolArg {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// ICMP (ICMPv6 for IPv6 peers).
    Icmp,
}

/// `--distribution`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DistributionArg {
    /// Uniform in delay ± jitter.
    Uniform,
    /// Normal with standard deviation jitter.
    Normal,
}

/// `chaos fault list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// State directory given to `chaos up`.
    #[arg(long, value_name = "DIR")]
    pub state: PathBuf,
    /// Only this node [default: every node].
    pub node: Option<String>,
    /// Print JSON (node name → active faults).
    #[arg(long)]
    pub json: bool,
}

/// `chaos fault heal`.
#[derive(Debug, Args)]
pub struct HealArgs {
    /// State directory given to `chaos up`.
    #[arg(long, value_name = "DIR")]
    pub state: PathBuf,
    /// `[NODE] ID`, or `[NODE]` with --all: the node is optional (default: every node).
    #[arg(value_name = "NODE|ID", num_args = 0..=2)]
    pub targets: Vec<String>,
    /// Heal every fault (of NODE, or of every node).
    #[arg(long)]
    pub all: bool,
}

/// Runs a `chaos fault` subcommand.
pub async fn run(cmd: FaultCommand) -> anyhow::Result<()> {
    match cmd {
        FaultCommand::Inject(args) => inject(*args).await,
        FaultCommand::List(args) => list(args).await,
        FaultCommand::Heal(args) => heal(args).await,
    }
}

/// Every node of the cluster as a [`Node`] reached through its agent.
pub fn agent_nodes(dir: &StateDir, state: &ClusterState) -> anyhow::Result<Vec<Arc<dyn Node>>> {
    state
        .nodes
        .iter()
        .map(|n| {
            let client = dir.client(n)?;
            Ok(Arc::new(AgentNode::with_interfaces(
                client,
                n.ips.clone(),
                n.interfaces.clone(),
                n.root_dir.clone(),
            )) as Arc<dyn Node>)
        })
        .collect()
}

/// The nodes called `name` (or all when `None`), with an error naming the known ones.
fn select(
    nodes: &[Arc<dyn Node>],
    state: &ClusterState,
    name: Option<&str>,
) -> anyhow::Result<Vec<Arc<dyn Node>>> {
    match name {
        None => Ok(nodes.to_vec()),
        Some(name) => {
            state.node(name)?;
            Ok(nodes.iter().filter(|n| n.name() == name).cloned().collect())
        }
    }
}

async fn inject(args: InjectArgs) -> anyhow::Result<()> {
    let fault = build_fault(&args)?;
    let ttl = match (args.ttl, fault.is_lasting()) {
        (Some(ttl), _) => ttl,
        (None, false) => Duration::from_secs(1),
        (None, true) => {
            return Err(BadInput(format!(
                "--ttl is required for {} faults: the node heals the fault by itself after it (e.g. --ttl 30s)",
                fault.kind()
            ))
            .into());
        }
    };
    let dir = StateDir::new(&args.state);
    let state = dir.load_running()?;
    state.node(&args.node)?;
    let nodes = agent_nodes(&dir, &state)?;
    let node = nodes
        .iter()
        .find(|n| n.name() == args.node)
        .cloned()
        .ok_or_else(|| BadInput(format!("unknown node {:?}", args.node)))?;
    let handle = match &args.id {
        Some(id) => faults::inject_as(&nodes, &node, &fault, ttl, id).await?,
        None => faults::inject(&nodes, &node, &fault, ttl).await?,
    };
    let record = handle.record();
    if args.json {
        println!("{}", serde_json::to_string_pretty(record)?);
        return Ok(());
    }
    println!("{}", record.id);
    if fault.is_lasting() {
        eprintln!(
            "{} fault {} on {} ({}), heals itself in {}",
            fault.kind(),
            record.id,
            record.node,
            mechanism_text(&record.mechanism),
            remaining(record.expires_ms)
        );
    } else {
        eprintln!(
            "{} on {} done ({:?}); it acts once, there is nothing to heal",
            fault.kind(),
            record.node,
            record.effect
        );
    }
    Ok(())
}

/// Which options each kind takes; anything else given is refused.
fn check_options(args: &InjectArgs) -> Result<(), BadInput> {
    let given: Vec<(&str, bool)> = vec![
        ("peers", !args.peers.is_empty()),
        ("direction", args.direction.is_some()),
        ("protocol", args.protocol.is_some()),
        ("ports", !args.ports.is_empty()),
        ("percent", args.percent.is_some()),
        ("correlation", args.correlation.is_some()),
        ("delay", args.delay.is_some()),
        ("jitter", args.jitter.is_some()),
        ("distribution", args.distribution.is_some()),
        ("loss", args.loss.is_some()),
        ("duplicate", args.duplicate.is_some()),
        ("corrupt", args.corrupt.is_some()),
        ("reorder", args.reorder.is_some()),
        ("rate", args.rate.is_some()),
        ("burst", args.burst.is_some()),
        ("interface", args.interface.is_some()),
        ("down", args.down),
        ("up", args.up),
        ("mtu", args.mtu.is_some()),
        ("proc", args.proc_id.is_some()),
        ("pid", args.pid.is_some()),
        ("group", args.group.is_some()),
        ("name", args.name.is_some()),
        ("cgroup", args.cgroup.is_some()),
        ("all-procs", args.all_procs),
        ("signal", args.signal.is_some()),
        ("grace", args.grace.is_some()),
    ];
    const NET: [&str; 4] = ["peers", "direction", "protocol", "ports"];
    let allowed: Vec<&str> = match args.kind {
        Kind::Partition => NET.to_vec(),
        Kind::Loss => [&NET[..], &["percent", "correlation"]].concat(),
        Kind::Delay => [&NET[..], &["delay", "jitter", "distribution"]].concat(),
        Kind::Packet => [
            &NET[..],
            &[
                "delay",
                "jitter",
                "distribution",
                "loss",
                "correlation",
                "duplicate",
                "corrupt",
                "reorder",
            ],
        ]
        .concat(),
        Kind::Bandwidth => vec!["rate", "burst", "interface"],
        Kind::Link => vec!["interface", "down", "up", "mtu"],
        Kind::Pause => vec!["proc", "pid", "cgroup", "all-procs"],
        Kind::Kill => vec!["proc", "pid", "group", "name", "all-procs", "signal"],
        Kind::Restart => vec!["proc", "signal", "grace"],
    };
    let kind = kind_name(args.kind);
    for (option, present) in given {
        if present && !allowed.contains(&option) {
            let list: Vec<String> = allowed.iter().map(|o| format!("--{o}")).collect();
            return Err(BadInput(format!(
                "--{option} does not apply to {kind} faults, which take {}",
                list.join(", ")
            )));
        }
    }
    Ok(())
}

fn kind_name(kind: Kind) -> String {
    kind.to_possible_value()
        .map(|v| v.get_name().to_string())
        .unwrap_or_default()
}

fn required<T: Copy>(value: Option<T>, option: &str, kind: Kind) -> Result<T, BadInput> {
    value.ok_or_else(|| BadInput(format!("{} faults need --{option}", kind_name(kind))))
}

/// The process target of a pause or kill: exactly one of the target options.
fn process_target(args: &InjectArgs) -> Result<ProcessTarget, BadInput> {
    let mut targets = Vec::new();
    if let Some(id) = args.proc_id {
        targets.push(ProcessTarget::Proc(id));
    }
    if let Some(pid) = args.pid {
        targets.push(ProcessTarget::Pid(pid));
    }
    if let Some(pgid) = args.group {
        targets.push(ProcessTarget::Group(pgid));
    }
    if let Some(name) = &args.name {
        targets.push(ProcessTarget::Name(name.clone()));
    }
    if let Some(path) = &args.cgroup {
        targets.push(ProcessTarget::Cgroup(path.clone()));
    }
    if args.all_procs {
        targets.push(ProcessTarget::All);
    }
    match targets.len() {
        1 => Ok(targets.remove(0)),
        n => Err(BadInput(format!(
            "{} faults need exactly one target (--proc, --pid, …, --all-procs), got {n}",
            kind_name(args.kind)
        ))),
    }
}

/// Turns the command line into a [`Fault`], checking what can be checked without the cluster.
fn build_fault(args: &InjectArgs) -> Result<Fault, BadInput> {
    check_options(args)?;
    let traffic = || -> Result<Traffic, BadInput> {
        let peers = args
            .peers
            .iter()
            .map(|p| p.parse::<Peer>().map_err(|e| BadInput(format!("--peers: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let mut traffic = Traffic::with(peers).ports(args.ports.iter().copied());
        if let Some(d) = args.direction {
            traffic = traffic.direction(match d {
                DirectionArg::In => Direction::In,
                DirectionArg::Out => Direction::Out,
                DirectionArg::Both => Direction::Both,
            });
        }
        if let Some(p) = args.protocol {
            traffic = traffic.protocol(match p {
                ProtocolArg::Tcp => Protocol::Tcp,
                ProtocolArg::Udp => Protocol::Udp,
                ProtocolArg::Icmp => Protocol::Icmp,
            });
        }
        Ok(traffic)
    };
    let distribution = match args.distribution {
        Some(DistributionArg::Normal) => Distribution::Normal,
        _ => Distribution::Uniform,
    };
    let micros = |d: Option<Duration>| d.map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    let kind = args.kind;
    Ok(match kind {
        Kind::Partition => Fault::Partition { traffic: traffic()? },
        Kind::Loss => Fault::Loss {
            traffic: traffic()?,
            percent: required(args.percent, "percent", kind)?,
            correlation: args.correlation.unwrap_or(0.0),
        },
        Kind::Delay => Fault::Delay {
            traffic: traffic()?,
            delay: required(args.delay, "delay", kind)?,
            jitter: args.jitter.unwrap_or_default(),
            distribution,
        },
        Kind::Packet => {
            let effects = PacketEffects {
                delay_us: micros(args.delay),
                jitter_us: micros(args.jitter),
                distribution,
                loss_percent: args.loss.unwrap_or(0.0),
                loss_correlation: args.correlation.unwrap_or(0.0),
                duplicate_percent: args.duplicate.unwrap_or(0.0),
                corrupt_percent: args.corrupt.unwrap_or(0.0),
                reorder_percent: args.reorder.unwrap_or(0.0),
            };
            if effects == PacketEffects::default() {
                return Err(BadInput(
                    "packet faults need at least one of --delay, --loss, --duplicate, --corrupt, --reorder"
                        .into(),
                ));
            }
            Fault::Packet {
                traffic: traffic()?,
                effects,
            }
        }
        Kind::Bandwidth => Fault::Bandwidth {
            interface: args.interface.clone().unwrap_or_default(),
            rate_bps: required(args.rate, "rate", kind)?,
            burst_bytes: u32::try_from(args.burst.unwrap_or(0))
                .map_err(|_| BadInput("--burst: at most 4 GiB".into()))?,
        },
        Kind::Link => {
            let interface = args
                .interface
                .clone()
                .ok_or_else(|| BadInput("link faults need --interface".into()))?;
            let up = match (args.down, args.up) {
                (true, _) => Some(false),
                (_, true) => Some(true),
                _ => None,
            };
            if up.is_none() && args.mtu.is_none() {
                return Err(BadInput("link faults need --down, --up or --mtu".into()));
            }
            Fault::Link {
                interface,
                up,
                mtu: args.mtu,
            }
        }
        Kind::Pause => Fault::Pause {
            process: process_target(args)?,
        },
        Kind::Kill => Fault::Kill {
            signal: args.signal.unwrap_or(chaos::Signal::KILL),
            process: process_target(args)?,
        },
        Kind::Restart => Fault::Restart {
            process: required(args.proc_id, "proc", kind)?,
            signal: args.signal.unwrap_or(chaos::Signal::TERM),
            grace: args.grace.unwrap_or(Duration::from_secs(5)),
        },
    })
}

/// Prints one line per node that could not be asked and fails naming them, once everything the
/// other nodes said has been printed: one dead node must not hide the rest of the cluster.
fn unreachable_nodes(what: &str, failed: &[(String, chaos::Error)], asked: usize) -> anyhow::Result<()> {
    if failed.is_empty() {
        return Ok(());
    }
    for (node, e) in failed {
        eprintln!("{node}: {e}");
    }
    let names: Vec<&str> = failed.iter().map(|(n, _)| n.as_str()).collect();
    anyhow::bail!(
        "{what}: {} of {asked} node(s) did not answer ({}); the others' answers are above",
        failed.len(),
        names.join(", ")
    )
}

async fn list(args: ListArgs) -> anyhow::Result<()> {
    let dir = StateDir::new(&args.state);
    let state = dir.load_running()?;
    let nodes = agent_nodes(&dir, &state)?;
    let nodes = select(&nodes, &state, args.node.as_deref())?;
    let mut faults = std::collections::BTreeMap::new();
    let mut failed = Vec::new();
    for (node, reply) in faults::list_each(&nodes).await {
        match reply {
            Ok(infos) => {
                faults.insert(node, infos);
            }
            Err(e) => failed.push((node, e)),
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&faults)?);
        return unreachable_nodes("listing faults", &failed, nodes.len());
    }
    let mut rows = vec![[
        "NODE".to_string(),
        "ID".into(),
        "KIND".into(),
        "MECHANISM".into(),
        "HEALS IN".into(),
        "WHAT".into(),
    ]];
    for (node, infos) in &faults {
        for info in infos {
            rows.push([
                node.clone(),
                info.id.clone(),
                info.spec.kind().to_string(),
                mechanism_text(&info.mechanism),
                remaining(info.expires_ms),
                describe(&info.spec),
            ]);
        }
    }
    if rows.len() == 1 {
        if faults.is_empty() {
            eprintln!("no node answered");
        } else if failed.is_empty() {
            eprintln!("no active faults");
        } else {
            eprintln!("no active faults on the nodes that answered");
        }
    } else {
        print_table(&rows);
    }
    unreachable_nodes("listing faults", &failed, nodes.len())
}

async fn heal(args: HealArgs) -> anyhow::Result<()> {
    let (node, id) = match (args.all, args.targets.as_slice()) {
        (true, []) => (None, None),
        (true, [node]) => (Some(node.as_str()), None),
        (false, [id]) => (None, Some(id.as_str())),
        (false, [node, id]) => (Some(node.as_str()), Some(id.as_str())),
        (true, _) => return Err(BadInput("--all takes at most a NODE, not a fault id".into()).into()),
        (false, _) => {
            return Err(BadInput("give the fault id to heal ([NODE] ID), or --all".into()).into());
        }
    };
    let dir = StateDir::new(&args.state);
    let state = dir.load_running()?;
    let nodes = agent_nodes(&dir, &state)?;
    let nodes = select(&nodes, &state, node)?;
    let mut failed = Vec::new();
    match id {
        None => {
            let mut count = 0;
            for (node, reply) in faults::heal_all_each(&nodes).await {
                match reply {
                    Ok(ids) => {
                        for id in ids {
                            println!("{node} {id}");
                            count += 1;
                        }
                    }
                    Err(e) => failed.push((node, e)),
                }
            }
            eprintln!("healed {count} fault(s)");
        }
        Some(id) => {
            let results = futures_util::future::join_all(nodes.iter().map(|n| n.heal_fault(id))).await;
            let mut healed_on = Vec::new();
            for (node, result) in nodes.iter().zip(results) {
                match result {
                    Ok(true) => healed_on.push(node.name().to_string()),
                    Ok(false) => {}
                    Err(e) => failed.push((node.name().to_string(), e)),
                }
            }
            if healed_on.is_empty() && !failed.is_empty() {
                eprintln!("fault {id} was not healed on any node that answered");
            } else if healed_on.is_empty() {
                eprintln!(
                    "fault {id} was not active on {} (healed already, expired, or never injected)",
                    node.unwrap_or("any node")
                );
            } else {
                for node in &healed_on {
                    println!("{node} {id}");
                }
            }
        }
    }
    unreachable_nodes("healing", &failed, nodes.len())
}

/// Prints rows as left-aligned columns.
fn print_table<const N: usize>(rows: &[[String; N]]) {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(i, (cell, w))| {
                if i + 1 == N {
                    cell.clone()
                } else {
                    format!("{cell:w$}")
                }
            })
            .collect();
        println!("{}", cells.join("  ").trim_end());
    }
}

/// How long until `expires_ms` (milliseconds since the epoch), rounded to seconds.
fn remaining(expires_ms: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let left = Duration::from_secs(expires_ms.saturating_sub(now).div_ceil(1000));
    humantime::format_duration(left).to_string()
}

/// A mechanism as words.
pub fn mechanism_text(mechanism: &Mechanism) -> String {
    match mechanism {
        Mechanism::Signal => "signal".into(),
        Mechanism::CgroupV2Freeze => "cgroup v2 freeze".into(),
        Mechanism::CgroupV1Freezer => "cgroup v1 freezer".into(),
        Mechanism::SigStopTree => "SIGSTOP of the process tree".into(),
        Mechanism::CgroupKill => "cgroup.kill".into(),
        Mechanism::NftablesNetlink => "nftables over netlink".into(),
        Mechanism::NfqueueUserspace { queue } => format!("NFQUEUE userspace shaper (queue {queue})"),
        Mechanism::Netem => "netem qdisc".into(),
        Mechanism::TbfNetlink => "tbf qdisc over rtnetlink".into(),
        Mechanism::HtbTbfNetlink => "htb+tbf qdiscs over rtnetlink".into(),
        Mechanism::RtnetlinkLink => "link change over rtnetlink".into(),
    }
}

/// One line saying what a fault does.
fn describe(spec: &FaultSpec) -> String {
    use chaos::proto::fault::{FreezeTarget, NetScope};
    let scope = |s: &NetScope| {
        let mut parts = Vec::new();
        if s.peers.is_empty() {
            parts.push("all peers".to_string());
        } else {
            let peers: Vec<String> = s
                .peers
                .iter()
                .map(|p| {
                    if p.prefix == if p.addr.is_ipv4() { 32 } else { 128 } {
                        p.addr.to_string()
                    } else {
                        p.to_string()
                    }
                })
                .collect();
            parts.push(format!("peers {}", peers.join(",")));
        }
        parts.push(format!("{:?}", s.direction).to_lowercase());
        if let Some(p) = s.protocol {
            parts.push(format!("{p:?}").to_lowercase());
        }
        if !s.ports.is_empty() {
            let ports: Vec<String> = s.ports.iter().map(u16::to_string).collect();
            parts.push(format!("ports {}", ports.join(",")));
        }
        parts.join(" ")
    };
    match spec {
        FaultSpec::Partition { scope: s } => scope(s),
        FaultSpec::Loss { scope: s, percent } => format!("{percent}% loss, {}", scope(s)),
        FaultSpec::Packet { scope: s, effects: e } => {
            let mut parts = Vec::new();
            if e.delay_us > 0 {
                parts.push(format!(
                    "delay {} ± {}",
                    humantime::format_duration(Duration::from_micros(e.delay_us)),
                    humantime::format_duration(Duration::from_micros(e.jitter_us))
                ));
            }
            for (name, v) in [
                ("loss", e.loss_percent),
                ("duplicate", e.duplicate_percent),
                ("corrupt", e.corrupt_percent),
                ("reorder", e.reorder_percent),
            ] {
                if v > 0.0 {
                    parts.push(format!("{v}% {name}"));
                }
            }
            format!("{}, {}", parts.join(", "), scope(s))
        }
        FaultSpec::Bandwidth(b) => format!("{} bit/s on {}", b.rate_bps, b.interface),
        FaultSpec::Link(l) => {
            let mut parts = vec![l.interface.clone()];
            match l.up {
                Some(true) => parts.push("up".into()),
                Some(false) => parts.push("down".into()),
                None => {}
            }
            if let Some(mtu) = l.mtu {
                parts.push(format!("mtu {mtu}"));
            }
            parts.join(" ")
        }
        FaultSpec::Freeze(target) => match target {
            FreezeTarget::Cgroup { path } => format!("cgroup {path}"),
            FreezeTarget::ProcessTree { pid } => format!("pid {pid} and descendants"),
            FreezeTarget::Proc { id } => format!("process {id}"),
            FreezeTarget::AllProcs => "every process started through the node".into(),
        },
    }
}

/// A percentage 0..=100, optionally with a trailing `%`.
fn parse_percent(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("{s:?} is not a percentage"))?;
    if (0.0..=100.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{s:?} is not between 0 and 100"))
    }
}

/// Splits `8mbit` into (8.0, "mbit").
fn number_and_unit(s: &str) -> Option<(f64, String)> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let number: f64 = number.parse().ok()?;
    (number.is_finite() && number >= 0.0).then(|| (number, unit.trim().to_ascii_lowercase()))
}

/// A rate in bits per second, with tc's units: `bit`, `kbit`, `mbit`, `gbit`, `tbit` (powers of
/// 1000), `kibit`… (powers of 1024), and `bps`, `kbps`, `mbps`, `gbps` for bytes per second.
/// A bare number is bits per second.
fn parse_rate(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a rate like 8mbit, 500kbit or 1gbit");
    let (n, unit) = number_and_unit(s).ok_or_else(bad)?;
    let factor: f64 = match unit.as_str() {
        "" | "bit" => 1.0,
        "kbit" => 1e3,
        "mbit" => 1e6,
        "gbit" => 1e9,
        "tbit" => 1e12,
        "kibit" => 1024.0,
        "mibit" => 1024.0 * 1024.0,
        "gibit" => 1024.0 * 1024.0 * 1024.0,
        "bps" => 8.0,
        "kbps" => 8e3,
        "mbps" => 8e6,
        "gbps" => 8e9,
        _ => return Err(bad()),
    };
    let bps = (n * factor).round();
    if bps < 1.0 || bps > u64::MAX as f64 {
        return Err(format!("{s:?}: the rate must be at least 1 bit/s"));
    }
    Ok(bps as u64)
}

/// A size in bytes, with tc's units: `b`, `k`/`kb`, `m`/`mb`, `g`/`gb` (powers of 1024), and
/// `kbit`, `mbit` for sizes given in bits. A bare number is bytes.
fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a size like 32kb, 1mb or 1500");
    let (n, unit) = number_and_unit(s).ok_or_else(bad)?;
    let factor: f64 = match unit.as_str() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "kbit" => 1024.0 / 8.0,
        "mbit" => 1024.0 * 1024.0 / 8.0,
        _ => return Err(bad()),
    };
    let bytes = (n * factor).round();
    if bytes > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        inject: InjectArgs,
    }

    fn parse(args: &str) -> InjectArgs {
        let argv = std::iter::once("inject").chain(args.split_whitespace());
        Cli::try_parse_from(argv)
            .unwrap_or_else(|e| panic!("{args}: {e}"))
            .inject
    }

    #[test]
    fn rates_and_sizes_use_tc_units() {
        assert_eq!(parse_rate("8mbit"), Ok(8_000_000));
        assert_eq!(parse_rate("500kbit"), Ok(500_000));
        assert_eq!(parse_rate("1.5Gbit"), Ok(1_500_000_000));
        assert_eq!(parse_rate("1mbps"), Ok(8_000_000));
        assert_eq!(parse_rate("9600"), Ok(9600));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("8 furlongs").is_err());
        assert!(parse_rate("0bit").is_err());
        assert_eq!(parse_size("32kb"), Ok(32 * 1024));
        assert_eq!(parse_size("1500"), Ok(1500));
        assert_eq!(parse_size("2m"), Ok(2 << 20));
        assert!(parse_size("-3kb").is_err());
        assert_eq!(parse_percent("30%"), Ok(30.0));
        assert!(parse_percent("101").is_err());
    }

    #[test]
    fn the_command_line_becomes_a_fault() {
        let fault = build_fault(&parse(
            "--state d n1 partition --peers n2,10.0.0.0/24 --direction in --ttl 10s",
        ))
        .unwrap();
        let Fault::Partition { traffic } = fault else {
            panic!("{fault:?}")
        };
        assert_eq!(traffic.peers.len(), 2);
        assert_eq!(traffic.direction, Direction::In);

        let fault = build_fault(&parse("--state d n1 delay --delay 100ms --jitter 10ms --ttl 1m")).unwrap();
        assert!(
            matches!(fault, Fault::Delay { delay, jitter, .. } if delay == Duration::from_millis(100) && jitter == Duration::from_millis(10))
        );
        let fault = build_fault(&parse(
            "--state d n1 bandwidth --rate 8mbit --burst 32kb --ttl 1m",
        ))
        .unwrap();
        assert!(matches!(
            fault,
            Fault::Bandwidth {
                rate_bps: 8_000_000,
                burst_bytes: 32768,
                ..
            }
        ));
        let fault = build_fault(&parse("--state d n1 link --interface eth0 --down --ttl 5s")).unwrap();
        assert!(matches!(
            fault,
            Fault::Link {
                up: Some(false),
                mtu: None,
                ..
            }
        ));
        let fault = build_fault(&parse("--state d n1 pause --proc 3 --ttl 5s")).unwrap();
        assert!(matches!(
            fault,
            Fault::Pause {
                process: ProcessTarget::Proc(3)
            }
        ));
        let fault = build_fault(&parse(
            "--state d n1 packet --duplicate 5 --reorder 10 --delay 5ms --ttl 5s",
        ))
        .unwrap();
        assert!(matches!(fault, Fault::Packet { ref effects, .. } if effects.duplicate_percent == 5.0));
    }

    #[test]
    fn options_of_other_kinds_and_missing_values_are_refused() {
        let err = build_fault(&parse("--state d n1 partition --rate 8mbit --ttl 5s")).unwrap_err();
        assert!(
            err.0.contains("--rate") && err.0.contains("partition"),
            "{}",
            err.0
        );
        let err = build_fault(&parse("--state d n1 loss --ttl 5s")).unwrap_err();
        assert!(err.0.contains("--percent"), "{}", err.0);
        let err = build_fault(&parse("--state d n1 pause --pid 3 --proc 4 --ttl 5s")).unwrap_err();
        assert!(err.0.contains("exactly one"), "{}", err.0);
        let err = build_fault(&parse("--state d n1 partition --peers n2/x --ttl 5s")).unwrap_err();
        assert!(err.0.contains("--peers"), "{}", err.0);
        let err = build_fault(&parse("--state d n1 packet --ttl 5s")).unwrap_err();
        assert!(err.0.contains("at least one"), "{}", err.0);
    }
}
