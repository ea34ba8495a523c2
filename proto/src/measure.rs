//! The built-in network measurement (a minimal iperf served by the agent): one node serves
//! (`POST /v1/measure/serve`: a TCP sink and a UDP echo/sink for a bounded time), another
//! measures towards it (`POST /v1/measure/run`) and answers with a [`MeasureReport`]:
//! throughput, RTT and loss.
//!
//! Wire format between the two agents (not the runner's concern, but fixed here so both ends
//! agree): **TCP** — the client sends bytes for the duration and shuts its write side down;
//! the server answers with 16 bytes, the bytes it received and the nanoseconds between the
//! first and the last (both u64 big endian). **UDP** — the first byte of a datagram says what it
//! is: [`UDP_PROBE`] (echoed as is, for RTT), [`UDP_DATA`] (run id u64, sequence u64, padding;
//! counted per run id), [`UDP_STATS`] (run id u64; answered with [`UDP_STATS`], run id, datagrams,
//! bytes and the nanoseconds between the first and the last, each u64 big endian).

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// UDP datagram type: an RTT probe, echoed back unchanged.
pub const UDP_PROBE: u8 = 1;
/// UDP datagram type: throughput data, counted.
pub const UDP_DATA: u8 = 2;
/// UDP datagram type: asks for (and carries) the counts of one run.
pub const UDP_STATS: u8 = 3;

/// Longest measurement, milliseconds.
pub const MAX_DURATION_MS: u64 = 60_000;
/// Longest a measurement server stays up, milliseconds.
pub const MAX_SERVE_TTL_MS: u64 = 600_000;
/// Most measurement servers an agent runs at once.
pub const MAX_SERVERS: usize = 16;
/// Most RTT probes in one measurement.
pub const MAX_RTT_PROBES: u32 = 10_000;
/// Largest UDP payload of a data datagram, bytes.
pub const MAX_UDP_PAYLOAD: u32 = 65_000;

/// What is measured besides RTT and loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum MeasureProtocol {
    /// TCP throughput (as fast as TCP goes).
    #[default]
    Tcp,
    /// UDP throughput and loss at a given sending rate.
    Udp,
}

impl std::fmt::Display for MeasureProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MeasureProtocol::Tcp => "tcp",
            MeasureProtocol::Udp => "udp",
        })
    }
}

/// `POST /v1/measure/serve` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeasureServe {
    /// Address to listen on; every address of the node when absent.
    #[serde(default)]
    pub bind: Option<IpAddr>,
    /// How long the server stays up, milliseconds (at most [`MAX_SERVE_TTL_MS`]).
    pub ttl_ms: u64,
}

/// `POST /v1/measure/serve` reply: where the server listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeasureServing {
    /// The TCP sink's port.
    pub tcp_port: u16,
    /// The UDP echo/sink's port.
    pub udp_port: u16,
}

/// `POST /v1/measure/run` body: measure towards a server another node started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeasureRun {
    /// The server's address (on the interface to measure).
    pub target: IpAddr,
    /// Its [`MeasureServing`].
    pub server: MeasureServing,
    /// TCP or UDP throughput.
    #[serde(default)]
    pub protocol: MeasureProtocol,
    /// How long to send, milliseconds (at most [`MAX_DURATION_MS`]).
    pub duration_ms: u64,
    /// UDP only: the sending rate, bits per second.
    #[serde(default = "default_udp_rate")]
    pub udp_rate_bps: u64,
    /// UDP only: payload bytes per datagram.
    #[serde(default = "default_udp_payload")]
    pub udp_payload: u32,
    /// RTT probes sent before the throughput phase, one every 20 ms (0: none).
    #[serde(default = "default_probes")]
    pub rtt_probes: u32,
}

fn default_udp_rate() -> u64 {
    100_000_000
}

fn default_udp_payload() -> u32 {
    1200
}

fn default_probes() -> u32 {
    20
}

impl MeasureRun {
    /// Default UDP sending rate: 100 Mbit/s.
    pub const DEFAULT_UDP_RATE_BPS: u64 = 100_000_000;
    /// Default RTT probes: 20.
    pub const DEFAULT_RTT_PROBES: u32 = 20;

    /// Checks the values are usable; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.duration_ms == 0 || self.duration_ms > MAX_DURATION_MS {
            return Err(format!(
                "duration_ms: {} is outside 1 ..= {MAX_DURATION_MS}",
                self.duration_ms
            ));
        }
        if self.protocol == MeasureProtocol::Udp && !(8_000..=10_000_000_000).contains(&self.udp_rate_bps) {
            return Err(format!(
                "udp_rate_bps: {} is outside 8 kbit/s ..= 10 Gbit/s",
                self.udp_rate_bps
            ));
        }
        if !(24..=MAX_UDP_PAYLOAD).contains(&self.udp_payload) {
            return Err(format!(
                "udp_payload: {} is outside 24 ..= {MAX_UDP_PAYLOAD} bytes",
                self.udp_payload
            ));
        }
        if self.rtt_probes > MAX_RTT_PROBES {
            return Err(format!(
                "rtt_probes: {} is more than {MAX_RTT_PROBES}",
                self.rtt_probes
            ));
        }
        Ok(())
    }
}

/// Round-trip times of the UDP probes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RttStats {
    /// Probes sent.
    pub sent: u32,
    /// Probes answered within a second.
    pub answered: u32,
    /// Shortest RTT, microseconds (0 when none was answered).
    pub min_us: u64,
    /// Median RTT, microseconds.
    pub median_us: u64,
    /// Longest RTT, microseconds.
    pub max_us: u64,
}

/// `POST /v1/measure/run` reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeasureReport {
    /// TCP or UDP.
    pub protocol: MeasureProtocol,
    /// Bytes the client sent (payload).
    pub sent_bytes: u64,
    /// Bytes the server received (payload).
    pub received_bytes: u64,
    /// Seconds between the first and the last byte the server received.
    pub seconds: f64,
    /// `received_bytes × 8 / seconds`: the throughput the server saw, bits per second.
    pub throughput_bps: f64,
    /// UDP: datagrams sent; TCP: 0.
    #[serde(default)]
    pub datagrams_sent: u64,
    /// UDP: datagrams received by the server; TCP: 0.
    #[serde(default)]
    pub datagrams_received: u64,
    /// Percent lost: of the UDP datagrams (UDP), of the RTT probes (TCP).
    pub loss_percent: f64,
    /// RTT of the probes (none when no probe was asked for).
    #[serde(default)]
    pub rtt: Option<RttStats>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_checked_field_by_field() {
        let json = r#"{"target":"10.0.0.2","server":{"tcp_port":1,"udp_port":2},"duration_ms":1000}"#;
        let run: MeasureRun = serde_json::from_str(json).unwrap();
        assert_eq!(run.protocol, MeasureProtocol::Tcp);
        assert_eq!(run.rtt_probes, MeasureRun::DEFAULT_RTT_PROBES);
        assert_eq!(run.udp_rate_bps, MeasureRun::DEFAULT_UDP_RATE_BPS);
        assert!(run.validate().is_ok());
        let long = MeasureRun {
            duration_ms: MAX_DURATION_MS + 1,
            ..run.clone()
        };
        assert!(long.validate().unwrap_err().starts_with("duration_ms"));
        let slow = MeasureRun {
            protocol: MeasureProtocol::Udp,
            udp_rate_bps: 10,
            ..run
        };
        assert!(slow.validate().unwrap_err().starts_with("udp_rate_bps"));
    }
}
