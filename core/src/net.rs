//! Network measurement between nodes, built in: throughput, RTT and loss over TCP or UDP, from
//! one node to another's address on a chosen interface — a minimal iperf served by the nodes'
//! agents (`chaos_proto::measure`), so an experiment has numbers without extra tools.
//!
//! ```no_run
//! # async fn f(cluster: &dyn chaos::Cluster) -> chaos::Result<()> {
//! use chaos::net::{MeasureOptions, measure};
//! let nodes = cluster.create_nodes(2).await?;
//! let m = measure(&*nodes[0], &*nodes[1], &MeasureOptions::default()).await?;
//! println!("{}", m.summary());
//! # Ok(()) }
//! ```

use std::net::IpAddr;
use std::time::Duration;

pub use chaos_proto::measure::{MeasureProtocol, MeasureReport, RttStats};
use chaos_proto::measure::{MeasureRun, MeasureServe};
use serde::{Deserialize, Serialize};

use crate::cluster::Node;
use crate::{Error, Result};

/// How to measure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeasureOptions {
    /// TCP (as fast as it goes) or UDP (at `udp_rate_bps`, counting loss).
    pub protocol: MeasureProtocol,
    /// How long to send (at most 60 s).
    pub duration: Duration,
    /// The receiving node's address to measure towards (which picks the interface); its first
    /// address when absent.
    pub address: Option<IpAddr>,
    /// UDP sending rate, bits per second.
    pub udp_rate_bps: u64,
    /// RTT probes sent before the throughput phase (one every 20 ms).
    pub rtt_probes: u32,
}

impl Default for MeasureOptions {
    /// TCP for 3 s to the first address, 20 probes; UDP at 100 Mbit/s.
    fn default() -> Self {
        Self {
            protocol: MeasureProtocol::Tcp,
            duration: Duration::from_secs(3),
            address: None,
            udp_rate_bps: MeasureRun::DEFAULT_UDP_RATE_BPS,
            rtt_probes: MeasureRun::DEFAULT_RTT_PROBES,
        }
    }
}

/// One measurement's result: who measured towards whom, and the figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    /// The sending node.
    pub from: String,
    /// The receiving node.
    pub to: String,
    /// The receiving node's address used.
    pub address: IpAddr,
    /// The figures.
    pub report: MeasureReport,
}

impl Measurement {
    /// Throughput in Mbit/s.
    pub fn mbit_per_s(&self) -> f64 {
        self.report.throughput_bps / 1e6
    }

    /// One line: `n1 → n2 (10.0.0.3) tcp 7.95 Mbit/s, rtt 0.12/0.20/0.41 ms, loss 0.0 %`.
    pub fn summary(&self) -> String {
        let r = &self.report;
        let rtt = match &r.rtt {
            Some(rtt) if rtt.answered > 0 => format!(
                ", rtt {:.2}/{:.2}/{:.2} ms (min/median/max of {})",
                rtt.min_us as f64 / 1e3,
                rtt.median_us as f64 / 1e3,
                rtt.max_us as f64 / 1e3,
                rtt.answered
            ),
            Some(rtt) => format!(", no RTT probe of {} answered", rtt.sent),
            None => String::new(),
        };
        format!(
            "{} → {} ({}) {} {:.2} Mbit/s{rtt}, loss {:.1} %",
            self.from,
            self.to,
            self.address,
            r.protocol,
            self.mbit_per_s(),
            r.loss_percent
        )
    }
}

/// Measures from `from` towards `to`: `to` serves for the measurement's length plus a margin,
/// `from` sends RTT probes, then TCP or UDP traffic, and reports what `to` received.
pub async fn measure(from: &dyn Node, to: &dyn Node, options: &MeasureOptions) -> Result<Measurement> {
    let what = || format!("measure {} → {}", from.name(), to.name());
    let address = match options.address {
        Some(a) => a,
        None => *to
            .addresses()
            .first()
            .ok_or_else(|| Error::invalid(what(), format!("node {} has no address; give one", to.name())))?,
    };
    let duration_ms = u64::try_from(options.duration.as_millis()).unwrap_or(u64::MAX);
    let run = MeasureRun {
        target: address,
        server: chaos_proto::measure::MeasureServing {
            tcp_port: 0,
            udp_port: 0,
        },
        protocol: options.protocol,
        duration_ms,
        udp_rate_bps: options.udp_rate_bps,
        udp_payload: 1200,
        rtt_probes: options.rtt_probes,
    };
    run.validate().map_err(|m| Error::invalid(what(), m))?;
    // Probes, sending, draining and the count's reply all fit in this.
    let ttl = duration_ms + u64::from(options.rtt_probes) * 20 + 60_000;
    let server = to
        .measure_serve(MeasureServe {
            // Only on the address measured: the server answers anyone who reaches it.
            bind: Some(address),
            ttl_ms: ttl.min(chaos_proto::measure::MAX_SERVE_TTL_MS),
        })
        .await?;
    let report = from.measure_run(MeasureRun { server, ..run }).await?;
    Ok(Measurement {
        from: from.name().to_string(),
        to: to.name().to_string(),
        address,
        report,
    })
}
