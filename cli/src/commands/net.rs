//! `chaos net measure`: throughput, RTT and loss between the nodes of a `chaos up` cluster, with
//! the measurement built into the agents (`chaos::net`).

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chaos::agent_client::AgentNode;
use chaos::net::{MeasureOptions, MeasureProtocol, Measurement, measure};
use chaos::proto::kinds::parse_rate;
use clap::{Args, Subcommand};

use super::BadInput;
use super::state::{NodeEntry, StateDir};

/// `chaos net …`.
#[derive(Debug, Subcommand)]
pub enum NetCommand {
    /// Measure throughput, RTT and loss from the first node to each of the others, in turn.
    Measure(MeasureArgs),
}

/// `chaos net measure`.
#[derive(Debug, Args)]
pub struct MeasureArgs {
    /// State directory given to `chaos up`.
    #[arg(long, value_name = "DIR")]
    pub state: PathBuf,
    /// The sending node, then the receiving nodes (n1 n2 …).
    #[arg(required = true, num_args = 2.., value_name = "NODES")]
    pub nodes: Vec<String>,
    /// TCP (as fast as it goes) or UDP (at --udp-rate, counting loss).
    #[arg(long, value_enum, default_value_t = MeasureProtocol::Tcp)]
    pub protocol: MeasureProtocol,
    /// How long to send to each receiver (at most 60 s).
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// The receiver's address to measure towards (picks its interface); its first address when
    /// absent. Only with a single receiver.
    #[arg(long, value_name = "IP")]
    pub address: Option<IpAddr>,
    /// UDP sending rate (tc-style: 500kbit, 100mbit).
    #[arg(long, default_value = "100mbit", value_parser = parse_rate, value_name = "RATE")]
    pub udp_rate: u64,
    /// RTT probes before the throughput phase (one every 20 ms).
    #[arg(long, default_value_t = 20)]
    pub probes: u32,
    /// Print the measurements as JSON (an array).
    #[arg(long)]
    pub json: bool,
}

/// Runs `chaos net …`.
pub async fn run(command: NetCommand) -> anyhow::Result<()> {
    match command {
        NetCommand::Measure(args) => measure_all(args).await,
    }
}

async fn measure_all(args: MeasureArgs) -> anyhow::Result<()> {
    if args.address.is_some() && args.nodes.len() > 2 {
        return Err(BadInput(
            "--address names one receiver's address: give exactly two nodes with it".into(),
        )
        .into());
    }
    let dir = StateDir::new(&args.state);
    let state = dir.load_running()?;
    let node = |name: &str| -> anyhow::Result<AgentNode> {
        let entry: &NodeEntry = state.node(name)?;
        Ok(AgentNode::with_interfaces(
            dir.client(entry)?,
            entry.ips.clone(),
            entry.interfaces.clone(),
            entry.root_dir.clone(),
        ))
    };
    let from = Arc::new(node(&args.nodes[0])?);
    let options = MeasureOptions {
        protocol: args.protocol,
        duration: args.duration,
        address: args.address,
        udp_rate_bps: args.udp_rate,
        rtt_probes: args.probes,
    };
    let mut results: Vec<Measurement> = Vec::new();
    for name in &args.nodes[1..] {
        let to = node(name)?;
        let m = measure(&*from, &to, &options)
            .await
            .with_context(|| format!("measuring {} → {name}", args.nodes[0]))?;
        if !args.json {
            println!("{}", m.summary());
        }
        results.push(m);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    }
    Ok(())
}
