//! `chaos fault inject|list|heal`: faults on the nodes of a cluster started by `chaos up`,
//! through the runner's fault API ([`chaos::faults`]): peers given by node name are resolved to
//! the nodes' addresses, and every lasting fault carries a TTL after which its node heals it.
//!
//! `inject NODE KIND [options]`: each kind's options are generated from its struct in the fault
//! model (`chaos_proto::kinds`, feature `clap`), the same struct scenarios and plans use; an
//! option of another kind is refused by the parser.
//!
//! Machine faults (`inject NODE machine --action pause|stop|disconnect`) are the cluster's, not a
//! node's: they go to the `chaos up` process that holds the cluster, through its control socket
//! ([`super::control`]), and are listed and healed with the agents' faults (ids `machine-<n>`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chaos::Node;
use chaos::agent_client::AgentNode;
use chaos::faults::{self, Fault};
use chaos::proto::fault::{FaultSpec, Mechanism};
use clap::{Args, Subcommand};

use super::BadInput;
use super::control;
use super::state::{ClusterState, StateDir};

/// `chaos fault …`.
#[derive(Debug, Subcommand)]
pub enum FaultCommand {
    /// Inject a fault on a node; prints its id (details on stderr, or everything with --json).
    #[command(subcommand_value_name = "KIND", subcommand_help_heading = "Kinds")]
    Inject(Box<InjectArgs>),
    /// List the active faults of one node or of every node.
    List(ListArgs),
    /// Heal a fault by id (on NODE, or wherever it is), or every fault with --all.
    Heal(HealArgs),
}

/// `chaos fault inject`: the options after KIND are generated from the fault model's struct
/// of that kind (`chaos_proto::kinds`), so they are exactly the fields a scenario or a plan
/// takes for it — an option of another kind is refused by the parser.
#[derive(Debug, Args)]
pub struct InjectArgs {
    /// State directory given to `chaos up`.
    #[arg(long, value_name = "DIR")]
    pub state: PathBuf,
    /// The node to inject on (n1, n2, …).
    pub node: String,
    /// After this long the node heals the fault by itself (e.g. 30s, 5m); required except for
    /// kill and restart, which act once.
    #[arg(long, global = true, value_parser = humantime::parse_duration)]
    pub ttl: Option<Duration>,
    /// The fault's id (1–64 of A-Z a-z 0-9 _ . -) [default: KIND-<random>].
    #[arg(long, global = true)]
    pub id: Option<String>,
    /// Print the whole injection record as JSON instead of the id.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to break, and how.
    #[command(subcommand)]
    pub fault: Fault,
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
    let fault = args.fault;
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
    if let Fault::Machine(m) = &fault {
        return inject_machine(&dir, &args.node, args.id.as_deref(), args.json, m.action, ttl).await;
    }
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

/// A machine fault is the cluster's, held by `chaos up`: asked through its control socket.
async fn inject_machine(
    dir: &StateDir,
    node: &str,
    id: Option<&str>,
    json: bool,
    fault: chaos::MachineFault,
    ttl: Duration,
) -> anyhow::Result<()> {
    if id.is_some() {
        return Err(BadInput("--id: machine faults are numbered by the cluster (machine-<n>)".into()).into());
    }
    let request = control::Request::Inject {
        node: node.to_string(),
        fault,
        ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
    };
    let control::Reply::Injected(record) = control::ask(dir.path(), &request).await? else {
        anyhow::bail!("`chaos up` answered an injection with something else");
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&record)?);
        return Ok(());
    }
    println!("{}", record.id);
    eprintln!(
        "machine {} on {} ({} {}), heals itself in {}",
        record.machine,
        record.node,
        record.backend,
        record.machine,
        remaining(record.expires_ms)
    );
    Ok(())
}

/// The machine faults `chaos up` holds; none when it serves no control socket (a `chaos up` of
/// an older version).
async fn machine_faults(dir: &StateDir) -> anyhow::Result<Vec<control::MachineRecord>> {
    if !control::available(dir.path()) {
        return Ok(Vec::new());
    }
    match control::ask_within(dir.path(), &control::Request::List, control::LIST_BOUND).await? {
        control::Reply::Faults(faults) => Ok(faults),
        _ => anyhow::bail!("`chaos up` answered a listing with something else"),
    }
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
    // A `chaos up` that does not answer hides only its machine faults, not the agents' faults.
    let (machine, machine_error) = match machine_faults(&dir).await {
        Ok(all) => (
            all.into_iter()
                .filter(|m| args.node.as_deref().is_none_or(|n| m.node == n))
                .collect(),
            None,
        ),
        Err(e) => {
            eprintln!("machine faults: {e:#}");
            (Vec::new(), Some(e))
        }
    };
    // A paused, stopped or unplugged machine's agent cannot answer until the fault heals:
    // it is not asked (which would only wait out the bound), and the note says why.
    let (held, nodes): (Vec<_>, Vec<_>) = nodes
        .into_iter()
        .partition(|n| machine.iter().any(|m| m.node == n.name()));
    for node in &held {
        let m = machine
            .iter()
            .find(|m| m.node == node.name())
            .expect("partitioned by it");
        eprintln!(
            "{}: agent not asked: its machine has fault {} ({}), heals in {}",
            m.node,
            m.id,
            m.machine,
            remaining(m.expires_ms)
        );
    }
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
        // Node → its faults: the agent's records, then the machine faults (`"kind": "machine"`).
        let mut json = serde_json::to_value(&faults)?;
        for m in &machine {
            let mut entry = serde_json::to_value(m)?;
            entry["kind"] = "machine".into();
            if let Some(list) = json[m.node.as_str()].as_array_mut() {
                list.push(entry);
            } else {
                json[m.node.as_str()] = serde_json::Value::Array(vec![entry]);
            }
        }
        println!("{}", serde_json::to_string_pretty(&json)?);
        unreachable_nodes("listing faults", &failed, nodes.len())?;
        return machine_error.map_or(Ok(()), Err);
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
    for m in &machine {
        rows.push([
            m.node.clone(),
            m.id.clone(),
            "machine".into(),
            format!("{} {}", m.backend, m.machine),
            remaining(m.expires_ms),
            format!("the whole machine: {}", m.machine),
        ]);
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
    unreachable_nodes("listing faults", &failed, nodes.len())?;
    machine_error.map_or(Ok(()), Err)
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
    if let Some(node) = node {
        state.node(node)?;
    }
    if let Some(id) = id.filter(|id| control::is_machine_id(id)) {
        return heal_machine(&dir, id).await;
    }
    let nodes = agent_nodes(&dir, &state)?;
    let nodes = select(&nodes, &state, node)?;
    let mut failed = Vec::new();
    let mut machine_error: Option<anyhow::Error> = None;
    match id {
        None => {
            let mut count = 0;
            // Asked first within the short listing bound, so a stopped `chaos up` costs seconds,
            // and only when there is something to heal does the heal get the long bound.
            let held = match machine_faults(&dir).await {
                Ok(all) => all.iter().any(|m| node.is_none_or(|n| m.node == n)),
                Err(e) => {
                    machine_error = Some(e);
                    false
                }
            };
            if held {
                let request = control::Request::HealAll {
                    node: node.map(str::to_string),
                };
                match control::ask(dir.path(), &request).await {
                    Ok(control::Reply::HealedAll(healed)) => {
                        for m in healed {
                            println!("{} {}", m.node, m.id);
                            count += 1;
                        }
                    }
                    Ok(_) => eprintln!("machine faults: `chaos up` answered with something else"),
                    // The agents' faults are still healed below; the error is reported at the end.
                    Err(e) => machine_error = Some(e),
                }
            }
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
    if let Some(e) = &machine_error {
        eprintln!("machine faults: {e:#}");
    }
    unreachable_nodes("healing", &failed, nodes.len())?;
    machine_error.map_or(Ok(()), Err)
}

/// Heals machine fault `id` through `chaos up`'s control socket.
async fn heal_machine(dir: &StateDir, id: &str) -> anyhow::Result<()> {
    let request = control::Request::Heal { id: id.to_string() };
    match control::ask(dir.path(), &request).await? {
        control::Reply::Healed(true) => println!("{id}"),
        control::Reply::Healed(false) => {
            eprintln!("fault {id} was not active (healed already, expired, or never injected)");
        }
        _ => anyhow::bail!("`chaos up` answered a heal with something else"),
    }
    Ok(())
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
        Mechanism::RtnetlinkLinkFlap => "link flap by the agent over rtnetlink".into(),
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
        if let Some(interface) = &s.interface {
            parts.push(format!("on {interface}"));
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
        FaultSpec::Link(l) => l.to_string(),
        FaultSpec::Flap(f) => {
            let times = match f.count {
                0 => "until healed".to_string(),
                n => format!("{n} times"),
            };
            format!(
                "{} down and up every {}, {times}",
                f.interface,
                humantime::format_duration(Duration::from_millis(f.period_ms))
            )
        }
        FaultSpec::Freeze(target) => match target {
            FreezeTarget::Cgroup { path } => format!("cgroup {path}"),
            FreezeTarget::ProcessTree { pid } => format!("pid {pid} and descendants"),
            FreezeTarget::Proc { id } => format!("process {id}"),
            FreezeTarget::AllProcs => "every process started through the node".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use chaos::faults::ProcessTarget;
    use chaos::proto::fault::Direction;
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        inject: InjectArgs,
    }

    fn parse(args: &str) -> Result<InjectArgs, clap::Error> {
        let argv = std::iter::once("inject").chain(args.split_whitespace());
        Cli::try_parse_from(argv).map(|c| c.inject)
    }

    fn fault(args: &str) -> Fault {
        parse(args).unwrap_or_else(|e| panic!("{args}: {e}")).fault
    }

    #[test]
    fn the_command_line_becomes_a_fault_of_the_model() {
        let Fault::Partition(p) =
            fault("--state d n1 partition --peers n2,10.0.0.0/24 --direction in --ttl 10s")
        else {
            panic!()
        };
        assert_eq!(p.traffic.peers.len(), 2);
        assert_eq!(p.traffic.direction, Direction::In);
        let args = parse("--state d n1 delay --delay 100ms --jitter 10ms --ttl 1m").unwrap();
        assert_eq!(args.ttl, Some(Duration::from_secs(60)));
        assert!(
            matches!(args.fault, Fault::Delay(ref d) if d.delay.0 == Duration::from_millis(100) && d.jitter.0 == Duration::from_millis(10))
        );
        assert!(matches!(
            fault("--state d n1 bandwidth --rate 8mbit --burst 32kb --ttl 1m"),
            Fault::Bandwidth(ref b) if b.rate_bps == 8_000_000 && b.burst_bytes == 32768
        ));
        assert!(matches!(
            fault("--state d n1 link --interface eth0 --up false --ttl 5s"),
            Fault::Link(ref l) if l.up == Some(false) && l.mtu.is_none()
        ));
        assert!(matches!(
            fault("--state d n1 flap --interface eth1 --period 1s --count 3 --ttl 1m"),
            Fault::Flap(ref f) if f.period.0 == Duration::from_secs(1) && f.count == 3 && !f.force
        ));
        assert!(matches!(
            fault("--state d n1 loss --percent 5 --interface eth1 --ttl 1m"),
            Fault::Loss(ref l) if l.traffic.interface.as_deref() == Some("eth1")
        ));
        assert!(matches!(
            fault("--state d n1 pause --process proc:3 --ttl 5s"),
            Fault::Pause(ref p) if p.process == Some(ProcessTarget::Proc(3))
        ));
        assert!(matches!(
            fault("--state d n1 packet --duplicate-percent 5 --reorder-percent 10 --delay-us 5000 --ttl 5s"),
            Fault::Packet(ref p) if p.effects.duplicate_percent == 5.0
        ));
        assert!(matches!(
            fault("--state d n1 kill"),
            Fault::Kill(ref k) if k.signal == chaos::Signal::KILL && k.process.is_none()
        ));
        assert!(matches!(
            fault("--state d n1 machine --action stop --ttl 5s"),
            Fault::Machine(m) if m.action == chaos::faults::MachineFault::Stop
        ));
    }

    #[test]
    fn options_of_other_kinds_and_missing_values_are_refused_by_the_parser() {
        let err = parse("--state d n1 partition --rate 8mbit --ttl 5s")
            .unwrap_err()
            .to_string();
        assert!(err.contains("--rate"), "{err}");
        let err = parse("--state d n1 loss --ttl 5s").unwrap_err().to_string();
        assert!(err.contains("--percent"), "{err}");
        let err = parse("--state d n1 partition --peers n2/x --ttl 5s")
            .unwrap_err()
            .to_string();
        assert!(err.contains("--peers"), "{err}");
        let err = parse("--state d n1 pause --process everything --ttl 5s")
            .unwrap_err()
            .to_string();
        assert!(err.contains("proc:ID"), "{err}");
    }
}
