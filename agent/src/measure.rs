//! The built-in network measurement (`/v1/measure/serve`, `/v1/measure/run`): a minimal iperf
//! between two agents, so an experiment has throughput, RTT and loss figures without extra tools.
//! The wire format between the agents is described in [`chaos_proto::measure`].
//!
//! **Bounded:** a server lives at most [`MAX_SERVE_TTL_MS`] and at most [`MAX_SERVERS`] run at
//! once; it counts at most [`MAX_TCP_CONNECTIONS`] connections at a time and its per-run UDP
//! counters keep at most [`MAX_UDP_RUNS`] entries (it is not authenticated: anyone reaching its
//! address may talk to it until its TTL, so the runner binds it to the one address measured); a measurement sends for
//! at most [`chaos_proto::measure::MAX_DURATION_MS`] and every wait after it is bounded
//! ([`DRAIN_BOUND`], [`PROBE_WAIT`]).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use chaos_proto::measure::{
    MAX_SERVE_TTL_MS, MAX_SERVERS, MeasureProtocol, MeasureReport, MeasureRun, MeasureServe, MeasureServing,
    RttStats, UDP_DATA, UDP_PROBE, UDP_STATS,
};
use chaos_proto::{ApiError, ErrorKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::time::{Instant, timeout, timeout_at};

use crate::api::{Failure, json};

/// Most UDP runs a server keeps counters for (the oldest is forgotten first).
const MAX_UDP_RUNS: usize = 64;
/// Most TCP connections a server counts at once; more are closed at once. The server is open to
/// anyone who reaches its address for its TTL, so what it holds is bounded.
const MAX_TCP_CONNECTIONS: usize = 8;
/// Pause after a failed accept or receive, so a persistent error (EMFILE) never spins.
const ERROR_PAUSE: Duration = Duration::from_millis(10);
/// How long the client waits, after sending, for the server's TCP count (the queues drain).
const DRAIN_BOUND: Duration = Duration::from_secs(30);
/// How long a probe may take to come back before it counts as lost.
const PROBE_WAIT: Duration = Duration::from_secs(1);
/// Spacing of RTT probes.
const PROBE_EVERY: Duration = Duration::from_millis(20);
/// Connecting to the server's TCP sink.
const CONNECT_BOUND: Duration = Duration::from_secs(5);

/// Servers running now.
static SERVERS: AtomicUsize = AtomicUsize::new(0);

fn invalid(message: impl Into<String>) -> Failure {
    Failure(ApiError::new(ErrorKind::InvalidRequest, message))
}

fn failed(what: &str, e: impl std::fmt::Display) -> Failure {
    Failure(ApiError::new(
        ErrorKind::Internal,
        format!("measure: {what}: {e}"),
    ))
}

/// `POST /v1/measure/serve`: starts a TCP sink and a UDP echo/sink for `ttl_ms`.
pub(crate) async fn serve(body: Result<Bytes, BytesRejection>) -> Result<Json<MeasureServing>, Failure> {
    let req: MeasureServe = json("measure serve", body)?;
    if req.ttl_ms == 0 || req.ttl_ms > MAX_SERVE_TTL_MS {
        return Err(invalid(format!(
            "measure serve: ttl_ms {} is outside 1 ..= {MAX_SERVE_TTL_MS}",
            req.ttl_ms
        )));
    }
    let bind = req.bind.unwrap_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED));
    let tcp = TcpListener::bind((bind, 0))
        .await
        .map_err(|e| failed(&format!("listen on {bind} (TCP)"), e))?;
    let udp = UdpSocket::bind((bind, 0))
        .await
        .map_err(|e| failed(&format!("listen on {bind} (UDP)"), e))?;
    // Room for bursts, so a receiver short of CPU loses less of what the network delivered
    // (capped by net.core.rmem_max; best effort).
    let _ = nix::sys::socket::setsockopt(&udp, nix::sys::socket::sockopt::RcvBuf, &(4 << 20));
    let serving = MeasureServing {
        tcp_port: tcp.local_addr().map_err(|e| failed("local address", e))?.port(),
        udp_port: udp.local_addr().map_err(|e| failed("local address", e))?.port(),
    };
    if SERVERS.fetch_add(1, Ordering::SeqCst) >= MAX_SERVERS {
        SERVERS.fetch_sub(1, Ordering::SeqCst);
        return Err(Failure(ApiError::new(
            ErrorKind::Conflict,
            format!("measure serve: {MAX_SERVERS} measurement servers run already; wait for their TTL"),
        )));
    }
    let ttl = Duration::from_millis(req.ttl_ms);
    tokio::spawn(async move {
        let _ = timeout(ttl, async { tokio::join!(tcp_sink(tcp, ttl), udp_server(udp)) }).await;
        SERVERS.fetch_sub(1, Ordering::SeqCst);
        tracing::debug!(?serving, "measurement server ended");
    });
    tracing::info!(?serving, %bind, ttl_ms = req.ttl_ms, "measurement server started");
    Ok(Json(serving))
}

/// Accepts connections and counts what each sends until it shuts down its write side.
async fn tcp_sink(listener: TcpListener, ttl: Duration) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_TCP_CONNECTIONS));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(ERROR_PAUSE).await;
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue; // dropped: closed at once
        };
        tokio::spawn(async move {
            let _ = timeout(ttl, sink_one(stream)).await;
            drop(slot);
        });
    }
}

async fn sink_one(mut stream: TcpStream) {
    let mut buf = vec![0u8; 128 * 1024];
    let mut bytes: u64 = 0;
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                let now = Instant::now();
                first.get_or_insert(now);
                last = now;
                bytes += n as u64;
            }
            Err(_) => return,
        }
    }
    let span = first.map_or(0, |f| last.duration_since(f).as_nanos() as u64);
    let mut reply = [0u8; 16];
    reply[..8].copy_from_slice(&bytes.to_be_bytes());
    reply[8..].copy_from_slice(&span.to_be_bytes());
    let _ = stream.write_all(&reply).await;
    let _ = stream.shutdown().await;
}

/// Per-run UDP counters: datagrams, bytes, first and last arrival.
#[derive(Clone, Copy)]
struct RunCount {
    datagrams: u64,
    bytes: u64,
    first: Instant,
    last: Instant,
}

async fn udp_server(socket: UdpSocket) {
    let mut buf = vec![0u8; 65_536];
    let mut runs: BTreeMap<u64, RunCount> = BTreeMap::new();
    let mut order: Vec<u64> = Vec::new();
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            tokio::time::sleep(ERROR_PAUSE).await;
            continue;
        };
        let datagram = &buf[..n];
        match datagram.first() {
            Some(&UDP_PROBE) => {
                let _ = socket.send_to(datagram, from).await;
            }
            Some(&UDP_DATA) if n >= 9 => {
                let run = u64::from_be_bytes(datagram[1..9].try_into().expect("8 bytes"));
                let now = Instant::now();
                let count = runs.entry(run).or_insert_with(|| {
                    order.push(run);
                    RunCount {
                        datagrams: 0,
                        bytes: 0,
                        first: now,
                        last: now,
                    }
                });
                count.datagrams += 1;
                count.bytes += n as u64;
                count.last = now;
                if order.len() > MAX_UDP_RUNS {
                    let oldest = order.remove(0);
                    runs.remove(&oldest);
                }
            }
            Some(&UDP_STATS) if n >= 9 => {
                let run = u64::from_be_bytes(datagram[1..9].try_into().expect("8 bytes"));
                let c = runs.get(&run).copied();
                let mut reply = Vec::with_capacity(33);
                reply.push(UDP_STATS);
                reply.extend_from_slice(&run.to_be_bytes());
                reply.extend_from_slice(&c.map_or(0, |c| c.datagrams).to_be_bytes());
                reply.extend_from_slice(&c.map_or(0, |c| c.bytes).to_be_bytes());
                let span = c.map_or(0, |c| c.last.duration_since(c.first).as_nanos() as u64);
                reply.extend_from_slice(&span.to_be_bytes());
                let _ = socket.send_to(&reply, from).await;
            }
            _ => {}
        }
    }
}

/// `POST /v1/measure/run`: RTT probes, then TCP or UDP throughput towards a server.
pub(crate) async fn run(body: Result<Bytes, BytesRejection>) -> Result<Json<MeasureReport>, Failure> {
    let req: MeasureRun = json("measure run", body)?;
    req.validate().map_err(|m| invalid(format!("measure run: {m}")))?;
    let udp_to = SocketAddr::new(req.target, req.server.udp_port);
    let rtt = if req.rtt_probes > 0 {
        Some(probe_rtt(udp_to, req.rtt_probes).await?)
    } else {
        None
    };
    let duration = Duration::from_millis(req.duration_ms);
    let mut report = match req.protocol {
        MeasureProtocol::Tcp => {
            tcp_throughput(SocketAddr::new(req.target, req.server.tcp_port), duration).await?
        }
        MeasureProtocol::Udp => udp_throughput(udp_to, duration, req.udp_rate_bps, req.udp_payload).await?,
    };
    if let (MeasureProtocol::Tcp, Some(r)) = (req.protocol, rtt.as_ref()) {
        report.loss_percent = lost_percent(r.sent.into(), r.answered.into());
    }
    report.rtt = rtt;
    Ok(Json(report))
}

fn lost_percent(sent: u64, received: u64) -> f64 {
    if sent == 0 {
        return 0.0;
    }
    100.0 * sent.saturating_sub(received) as f64 / sent as f64
}

/// A UDP socket connected to `to`, bound on the matching family.
async fn udp_to(to: SocketAddr) -> Result<UdpSocket, Failure> {
    let any: SocketAddr = if to.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let socket = UdpSocket::bind(any)
        .await
        .map_err(|e| failed("bind a UDP socket", e))?;
    socket
        .connect(to)
        .await
        .map_err(|e| failed(&format!("UDP to {to}"), e))?;
    Ok(socket)
}

/// Sends `count` probes, one every [`PROBE_EVERY`], and collects echoes until [`PROBE_WAIT`]
/// after the last.
async fn probe_rtt(to: SocketAddr, count: u32) -> Result<RttStats, Failure> {
    let socket = udp_to(to).await?;
    let start = Instant::now();
    let mut sent_at: Vec<Option<Instant>> = vec![None; count as usize];
    let mut rtts: Vec<Duration> = Vec::new();
    let mut next = 0u32;
    let mut buf = [0u8; 64];
    let end_of_sending = start + PROBE_EVERY * count;
    loop {
        let now = Instant::now();
        if next < count && now >= start + PROBE_EVERY * next {
            let mut probe = [0u8; 16];
            probe[0] = UDP_PROBE;
            probe[1..5].copy_from_slice(&next.to_be_bytes());
            // A refused or unreachable send counts as a lost probe, like a dropped one.
            let _ = socket.send(&probe).await;
            sent_at[next as usize] = Some(Instant::now());
            next += 1;
            continue;
        }
        let wake = if next < count {
            start + PROBE_EVERY * next
        } else {
            end_of_sending + PROBE_WAIT
        };
        if next >= count && (now >= wake || rtts.len() as u32 == count) {
            break;
        }
        if let Ok(Ok(n)) = timeout_at(wake, socket.recv(&mut buf)).await
            && n >= 5
            && buf[0] == UDP_PROBE
        {
            let seq = u32::from_be_bytes(buf[1..5].try_into().expect("4 bytes"));
            if let Some(at) = sent_at.get_mut(seq as usize).and_then(Option::take) {
                rtts.push(at.elapsed());
            }
        }
    }
    rtts.sort();
    let us = |d: Option<&Duration>| d.map_or(0, |d| d.as_micros() as u64);
    Ok(RttStats {
        sent: count,
        answered: rtts.len() as u32,
        min_us: us(rtts.first()),
        median_us: us(rtts.get(rtts.len() / 2)),
        max_us: us(rtts.last()),
    })
}

async fn tcp_throughput(to: SocketAddr, duration: Duration) -> Result<MeasureReport, Failure> {
    let mut stream = timeout(CONNECT_BOUND, TcpStream::connect(to))
        .await
        .map_err(|_| {
            failed(
                &format!("connect to {to}"),
                format!("no answer within {CONNECT_BOUND:?}"),
            )
        })?
        .map_err(|e| failed(&format!("connect to {to}"), e))?;
    let chunk = vec![0x5au8; 128 * 1024];
    let mut sent: u64 = 0;
    let stop = Instant::now() + duration;
    while Instant::now() < stop {
        match timeout_at(stop, stream.write(&chunk)).await {
            Ok(Ok(n)) => sent += n as u64,
            Ok(Err(e)) => return Err(failed(&format!("send to {to}"), e)),
            Err(_) => break,
        }
    }
    stream
        .shutdown()
        .await
        .map_err(|e| failed(&format!("finish sending to {to}"), e))?;
    let mut reply = [0u8; 16];
    timeout(DRAIN_BOUND, stream.read_exact(&mut reply))
        .await
        .map_err(|_| {
            failed(
                &format!("the count from {to}"),
                format!("not received within {DRAIN_BOUND:?} after sending"),
            )
        })?
        .map_err(|e| failed(&format!("the count from {to}"), e))?;
    let received = u64::from_be_bytes(reply[..8].try_into().expect("8 bytes"));
    let span = Duration::from_nanos(u64::from_be_bytes(reply[8..].try_into().expect("8 bytes")));
    Ok(report(MeasureProtocol::Tcp, sent, received, span, 0, 0))
}

fn report(
    protocol: MeasureProtocol,
    sent: u64,
    received: u64,
    span: Duration,
    datagrams_sent: u64,
    datagrams_received: u64,
) -> MeasureReport {
    let seconds = span.as_secs_f64();
    MeasureReport {
        protocol,
        sent_bytes: sent,
        received_bytes: received,
        seconds,
        throughput_bps: if seconds > 0.0 {
            received as f64 * 8.0 / seconds
        } else {
            0.0
        },
        datagrams_sent,
        datagrams_received,
        loss_percent: lost_percent(datagrams_sent, datagrams_received),
        rtt: None,
    }
}

async fn udp_throughput(
    to: SocketAddr,
    duration: Duration,
    rate_bps: u64,
    payload: u32,
) -> Result<MeasureReport, Failure> {
    let socket = udp_to(to).await?;
    let run_id: u64 = rand_run_id();
    let mut datagram = vec![0u8; payload as usize];
    datagram[0] = UDP_DATA;
    datagram[1..9].copy_from_slice(&run_id.to_be_bytes());
    let bits_per_datagram = u64::from(payload) * 8;
    let start = Instant::now();
    let stop = start + duration;
    let mut sent: u64 = 0;
    loop {
        let now = Instant::now();
        if now >= stop {
            break;
        }
        let due =
            (now.duration_since(start).as_secs_f64() * rate_bps as f64 / bits_per_datagram as f64) as u64 + 1;
        while sent < due {
            datagram[9..17].copy_from_slice(&sent.to_be_bytes());
            // A full queue or an unreachable peer drops the datagram: that is loss to measure.
            let _ = socket.send(&datagram).await;
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Let the queues drain, then ask for the counts (the question or its answer may be lost).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut query = [0u8; 9];
    query[0] = UDP_STATS;
    query[1..].copy_from_slice(&run_id.to_be_bytes());
    let mut buf = [0u8; 64];
    for _ in 0..20 {
        let _ = socket.send(&query).await;
        if let Ok(Ok(n)) = timeout(Duration::from_millis(250), socket.recv(&mut buf)).await
            && n >= 33
            && buf[0] == UDP_STATS
            && buf[1..9] == run_id.to_be_bytes()
        {
            let field =
                |i: usize| u64::from_be_bytes(buf[9 + 8 * i..17 + 8 * i].try_into().expect("8 bytes"));
            let span = Duration::from_nanos(field(2));
            let span = if span.is_zero() { duration } else { span };
            return Ok(report(
                MeasureProtocol::Udp,
                sent * u64::from(payload),
                field(1),
                span,
                sent,
                field(0),
            ));
        }
    }
    Err(failed(
        &format!("the counts from {to}"),
        "20 requests over 5 s went unanswered (is the path cut?)",
    ))
}

/// A run id unlikely to collide with another client's: time and pid mixed.
fn rand_run_id() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 40)
}
