//! The userspace packet shaper: netem's effects without netem.
//!
//! Our nftables rules send matching packets to an NFQUEUE (with the bypass flag: if no process
//! listens, packets pass). One thread per fault reads the queue over netlink and decides per
//! packet: drop (loss, optionally correlated), flip a bit (corrupt; the receiver's checksum check
//! drops it), hold it until its release time (delay + jitter; reorder = some packets skip the
//! delay), and send a copy (duplicate, re-injected through a raw socket carrying [`OWN_MARK`] so
//! our rules don't queue it again). Held packets stay in the kernel; we keep only their ids in a
//! heap keyed by release time and sleep with `ppoll` until the next one is due.
//!
//! The queue is configured fail-open: if it overflows, the kernel accepts packets instead of
//! dropping them. Stopping the shaper releases every held packet at once.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags};
use nix::sys::signal::SigSet;
use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, sockopt};
use nix::sys::time::TimeSpec;
use rand::RngExt;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::netlink::{MsgBuilder, NLM_F_ACK, NLM_F_REQUEST, NlSocket, find_attr, messages};
use crate::nft::OWN_MARK;
use crate::spec::{Distribution, PacketEffects};

const NFNL_SUBSYS_QUEUE: u16 = 3;
const NFQNL_MSG_PACKET: u16 = 0;
const NFQNL_MSG_VERDICT: u16 = 1;
const NFQNL_MSG_CONFIG: u16 = 2;
const NFQA_CFG_CMD: u16 = 1;
const NFQA_CFG_PARAMS: u16 = 2;
const NFQA_CFG_QUEUE_MAXLEN: u16 = 3;
const NFQA_CFG_MASK: u16 = 4;
const NFQA_CFG_FLAGS: u16 = 5;
const NFQNL_CFG_CMD_BIND: u8 = 1;
const NFQNL_CFG_CMD_UNBIND: u8 = 2;
const NFQNL_COPY_META: u8 = 1;
const NFQNL_COPY_PACKET: u8 = 2;
const NFQA_CFG_F_FAIL_OPEN: u32 = 1;
const NFQA_PACKET_HDR: u16 = 1;
const NFQA_VERDICT_HDR: u16 = 2;
const NFQA_PAYLOAD: u16 = 10;
const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;

/// Packets the kernel may hold for us before failing open.
const QUEUE_MAXLEN: u32 = 32_768;
/// Socket receive buffer: bursts of queued packets wait here until we read them.
const RCVBUF: usize = 32 << 20;
/// How often an idle worker checks its stop flag.
const IDLE_WAKE: Duration = Duration::from_millis(50);
/// Flush verdicts once this many bytes are pending.
const VERDICT_FLUSH: usize = 48 * 1024;

/// Counters of a running shaper.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShaperStats {
    /// Packets read from the queue.
    pub received: u64,
    /// Packets dropped (loss).
    pub dropped: u64,
    /// Packets corrupted.
    pub corrupted: u64,
    /// Extra copies sent.
    pub duplicated: u64,
    /// Packets held for a delay.
    pub delayed: u64,
    /// Packets accepted so far (held ones once released).
    pub accepted: u64,
}

#[derive(Default)]
struct Counters {
    received: AtomicU64,
    dropped: AtomicU64,
    corrupted: AtomicU64,
    duplicated: AtomicU64,
    delayed: AtomicU64,
    accepted: AtomicU64,
}

/// A running NFQUEUE worker for one fault.
pub struct Shaper {
    queue: u16,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    thread: Option<JoinHandle<()>>,
}

impl Shaper {
    /// Binds NFQUEUE `queue` in the calling thread's network namespace and starts its worker.
    /// Fails with an `EPERM`/`EBUSY` netlink error when another socket owns the queue.
    pub fn start(queue: u16, effects: PacketEffects) -> Result<Self> {
        effects.validate()?;
        let needs_payload = effects.corrupt_percent > 0.0 || effects.duplicate_percent > 0.0;
        let sock = open_queue(queue, needs_payload)?;
        let dup = if effects.duplicate_percent > 0.0 {
            Some(Reinjector::open()?)
        } else {
            None
        };
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let worker = Worker {
            sock,
            queue,
            effects,
            dup,
            stop: stop.clone(),
            counters: counters.clone(),
            held: BinaryHeap::new(),
            seq: 0,
            verdicts: MsgBuilder::default(),
            last_lost: false,
        };
        let thread = std::thread::Builder::new()
            .name(format!("nfqueue-{queue}"))
            .spawn(move || worker.run())
            .map_err(|e| Error::io("spawn thread", "nfqueue worker", e))?;
        Ok(Self {
            queue,
            stop,
            counters,
            thread: Some(thread),
        })
    }

    /// The queue number.
    pub fn queue(&self) -> u16 {
        self.queue
    }

    /// Current counters.
    pub fn stats(&self) -> ShaperStats {
        let c = &self.counters;
        ShaperStats {
            received: c.received.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            corrupted: c.corrupted.load(Ordering::Relaxed),
            duplicated: c.duplicated.load(Ordering::Relaxed),
            delayed: c.delayed.load(Ordering::Relaxed),
            accepted: c.accepted.load(Ordering::Relaxed),
        }
    }

    /// Releases every held packet, unbinds the queue and joins the worker.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!(queue = self.queue, "nfqueue worker panicked");
        }
    }
}

impl Drop for Shaper {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn nfgen(queue: u16) -> [u8; 4] {
    let q = queue.to_be_bytes();
    [libc::AF_UNSPEC as u8, 0, q[0], q[1]]
}

const fn queue_type(msg: u16) -> u16 {
    (NFNL_SUBSYS_QUEUE << 8) | msg
}

fn config(sock: &mut NlSocket, queue: u16, add: impl FnOnce(&mut MsgBuilder)) -> io::Result<()> {
    let mut b = MsgBuilder::default();
    let seq = sock.next_seq();
    b.begin(
        queue_type(NFQNL_MSG_CONFIG),
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        &nfgen(queue),
    );
    add(&mut b);
    b.end();
    match sock.transact(&b, false)? {
        Ok(_) => Ok(()),
        Err(e) => Err(e.io()),
    }
}

fn open_queue(queue: u16, payload: bool) -> Result<NlSocket> {
    let op = |what: &str| format!("{what} NFQUEUE {queue}");
    let mut sock = NlSocket::open(netlink_sys::protocols::NETLINK_NETFILTER)
        .map_err(|e| Error::netlink(op("open socket for"), e))?;
    config(&mut sock, queue, |b| {
        b.attr(NFQA_CFG_CMD, &[NFQNL_CFG_CMD_BIND, 0, 0, 0])
    })
    .map_err(|e| match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EBUSY) => {
            Error::netlink(op("bind"), io::Error::from_raw_os_error(libc::EBUSY))
        }
        Some(libc::ENOENT) | Some(libc::EOPNOTSUPP) | Some(libc::EPROTONOSUPPORT) => Error::Unsupported {
            feature: "nfnetlink_queue (CONFIG_NETFILTER_NETLINK_QUEUE)",
            reason: e.to_string(),
        },
        _ => Error::netlink(op("bind"), e),
    })?;
    let mut params = Vec::with_capacity(8);
    params.extend_from_slice(&0xffffu32.to_be_bytes());
    params.push(if payload {
        NFQNL_COPY_PACKET
    } else {
        NFQNL_COPY_META
    });
    let setup = |sock: &mut NlSocket| -> io::Result<()> {
        config(sock, queue, |b| b.attr(NFQA_CFG_PARAMS, &params))?;
        config(sock, queue, |b| b.attr_be32(NFQA_CFG_QUEUE_MAXLEN, QUEUE_MAXLEN))?;
        config(sock, queue, |b| {
            b.attr_be32(NFQA_CFG_MASK, NFQA_CFG_F_FAIL_OPEN);
            b.attr_be32(NFQA_CFG_FLAGS, NFQA_CFG_F_FAIL_OPEN);
        })?;
        let fd = sock.sock.as_fd();
        // Root may exceed rmem_max; fall back to the capped size otherwise.
        if socket::setsockopt(&fd, sockopt::RcvBufForce, &RCVBUF).is_err() {
            socket::setsockopt(&fd, sockopt::RcvBuf, &RCVBUF).map_err(io::Error::from)?;
        }
        sock.sock.set_no_enobufs(true)?;
        sock.sock.set_non_blocking(true)
    };
    setup(&mut sock).map_err(|e| Error::netlink(op("configure"), e))?;
    Ok(sock)
}

/// A packet the kernel holds for us, waiting for its release time.
struct Held {
    release: Instant,
    seq: u64,
    id: u32,
    /// Set when the payload was changed (corrupt) or is needed again (duplicate).
    payload: Option<Vec<u8>>,
    mangled: bool,
    duplicate: bool,
}

impl PartialEq for Held {
    fn eq(&self, o: &Self) -> bool {
        (self.release, self.seq) == (o.release, o.seq)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Held {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.release, self.seq).cmp(&(o.release, o.seq))
    }
}

struct Worker {
    sock: NlSocket,
    queue: u16,
    effects: PacketEffects,
    dup: Option<Reinjector>,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    held: BinaryHeap<Reverse<Held>>,
    seq: u64,
    verdicts: MsgBuilder,
    last_lost: bool,
}

impl Worker {
    fn run(mut self) {
        // Wake up as close to release times as the timer allows.
        let _ = nix::sys::prctl::set_timerslack(1_000);
        let mut rx = vec![0u8; 70 * 1024];
        let mut rng = rand::rng();
        while !self.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            let wait = match self.held.peek() {
                Some(Reverse(h)) => h.release.saturating_duration_since(now).min(IDLE_WAKE),
                None => IDLE_WAKE,
            };
            if !wait.is_zero() {
                let mut fds = [PollFd::new(self.sock.sock.as_fd(), PollFlags::POLLIN)];
                let ts = TimeSpec::from_duration(wait);
                match nix::poll::ppoll(&mut fds, Some(ts), Some(SigSet::empty())) {
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => {
                        tracing::error!(queue = self.queue, error = %e, "ppoll failed; stopping shaper");
                        break;
                    }
                }
            }
            // Read what is there, releasing due packets between reads so a burst of arrivals
            // does not delay departures.
            for _ in 0..256 {
                match self.sock.sock.recv(&mut &mut rx[..], libc::MSG_DONTWAIT) {
                    Ok(n) => {
                        let arrived = Instant::now();
                        self.handle_datagram(&rx[..n.min(rx.len())], arrived, &mut rng);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        // ENOBUFS is disabled; anything else is unexpected but not fatal.
                        tracing::warn!(queue = self.queue, error = %e, "nfqueue recv failed");
                        break;
                    }
                }
                self.release_due(Instant::now());
                if self.verdicts.bytes().len() > VERDICT_FLUSH
                    || self
                        .held
                        .peek()
                        .is_none_or(|Reverse(h)| h.release <= Instant::now())
                {
                    self.flush();
                }
            }
            self.release_due(Instant::now());
            self.flush();
        }
        // Stopping: let everything we hold go now, then unbind.
        while let Some(Reverse(h)) = self.held.pop() {
            self.release(h);
            if self.verdicts.bytes().len() > VERDICT_FLUSH {
                self.flush();
            }
        }
        self.flush();
        let queue = self.queue;
        if let Err(e) = config(&mut self.sock, queue, |b| {
            b.attr(NFQA_CFG_CMD, &[NFQNL_CFG_CMD_UNBIND, 0, 0, 0])
        }) {
            tracing::debug!(queue, error = %e, "unbind NFQUEUE");
        }
    }

    fn handle_datagram(&mut self, datagram: &[u8], arrived: Instant, rng: &mut impl rand::Rng) {
        for m in messages(datagram) {
            if m.ty != queue_type(NFQNL_MSG_PACKET) {
                continue;
            }
            let Some(body) = m.payload.get(4..) else { continue };
            let Some(hdr) = find_attr(body, NFQA_PACKET_HDR) else {
                continue;
            };
            let Some(id) = hdr
                .get(0..4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            else {
                continue;
            };
            let payload = find_attr(body, NFQA_PAYLOAD);
            self.counters.received.fetch_add(1, Ordering::Relaxed);
            self.decide(id, payload, arrived, rng);
        }
    }

    fn chance(rng: &mut impl rand::Rng, percent: f64) -> bool {
        percent > 0.0 && rng.random::<f64>() * 100.0 < percent
    }

    fn decide(&mut self, id: u32, payload: Option<&[u8]>, arrived: Instant, rng: &mut impl rand::Rng) {
        let e = &self.effects;
        if e.loss_percent > 0.0 {
            // Two-state Markov chain: mean loss p, lag-1 correlation r.
            let (p, r) = (e.loss_percent / 100.0, e.loss_correlation / 100.0);
            let p_loss = if self.last_lost {
                p + r * (1.0 - p)
            } else {
                p * (1.0 - r)
            };
            self.last_lost = rng.random::<f64>() < p_loss;
            if self.last_lost {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                self.verdict(id, NF_DROP, None);
                return;
            }
        }
        let mut held = Held {
            release: arrived,
            seq: self.seq,
            id,
            payload: None,
            mangled: false,
            duplicate: false,
        };
        self.seq += 1;
        if Self::chance(rng, e.corrupt_percent)
            && let Some(p) = payload.filter(|p| !p.is_empty())
        {
            let mut p = p.to_vec();
            // Flip a bit past the IP header so the packet is routed normally and the transport
            // checksum catches it (short packets: anywhere).
            let header = if p[0] >> 4 == 6 {
                40
            } else {
                ((p[0] & 0x0f) as usize) * 4
            };
            let start = if p.len() > header { header } else { 0 };
            let i = rng.random_range(start..p.len());
            p[i] ^= 1 << rng.random_range(0..8u32);
            held.payload = Some(p);
            held.mangled = true;
            self.counters.corrupted.fetch_add(1, Ordering::Relaxed);
        }
        if self.dup.is_some() && Self::chance(rng, e.duplicate_percent) {
            if held.payload.is_none() {
                held.payload = payload.map(<[u8]>::to_vec);
            }
            held.duplicate = held.payload.is_some();
        }
        let delay = if e.delay_us == 0 && e.jitter_us == 0 || Self::chance(rng, e.reorder_percent) {
            Duration::ZERO
        } else {
            sample_delay(e.delay_us, e.jitter_us, e.distribution, rng)
        };
        if delay.is_zero() {
            self.release(held);
        } else {
            held.release = arrived + delay;
            self.counters.delayed.fetch_add(1, Ordering::Relaxed);
            self.held.push(Reverse(held));
        }
    }

    fn release_due(&mut self, now: Instant) {
        while self.held.peek().is_some_and(|Reverse(h)| h.release <= now) {
            let Some(Reverse(h)) = self.held.pop() else { break };
            self.release(h);
        }
    }

    fn release(&mut self, h: Held) {
        let payload = if h.mangled { h.payload.as_deref() } else { None };
        self.verdict(h.id, NF_ACCEPT, payload);
        self.counters.accepted.fetch_add(1, Ordering::Relaxed);
        if h.duplicate
            && let (Some(dup), Some(p)) = (&self.dup, h.payload.as_deref())
        {
            match dup.send(p) {
                Ok(()) => {
                    self.counters.duplicated.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => tracing::debug!(queue = self.queue, error = %e, "re-inject duplicate"),
            }
        }
    }

    fn verdict(&mut self, id: u32, verdict: u32, payload: Option<&[u8]>) {
        let seq = self.sock.next_seq();
        self.verdicts.begin(
            queue_type(NFQNL_MSG_VERDICT),
            NLM_F_REQUEST,
            seq,
            &nfgen(self.queue),
        );
        let mut hdr = [0u8; 8];
        hdr[0..4].copy_from_slice(&verdict.to_be_bytes());
        hdr[4..8].copy_from_slice(&id.to_be_bytes());
        self.verdicts.attr(NFQA_VERDICT_HDR, &hdr);
        if let Some(p) = payload {
            self.verdicts.attr(NFQA_PAYLOAD, p);
        }
        self.verdicts.end();
    }

    fn flush(&mut self) {
        if self.verdicts.is_empty() {
            return;
        }
        // Several verdict messages in one datagram: the kernel processes them in order.
        loop {
            match self.sock.sock.send(self.verdicts.bytes(), 0) {
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => {
                    std::thread::yield_now();
                }
                Err(e) => {
                    tracing::warn!(queue = self.queue, error = %e, "sending verdicts failed");
                    break;
                }
            }
        }
        self.verdicts.clear();
    }
}

/// Draws one packet's delay.
fn sample_delay(delay_us: u64, jitter_us: u64, dist: Distribution, rng: &mut impl rand::Rng) -> Duration {
    let mean = delay_us as f64;
    let j = jitter_us as f64;
    let us = if jitter_us == 0 {
        mean
    } else {
        match dist {
            Distribution::Uniform => mean + (rng.random::<f64>() * 2.0 - 1.0) * j,
            Distribution::Normal => {
                // Box–Muller.
                let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
                let u2: f64 = rng.random();
                mean + j * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
            }
        }
    };
    Duration::from_micros(us.max(0.0) as u64)
}

/// Raw sockets that send copies of captured IP packets, marked so our rules skip them.
struct Reinjector {
    v4: OwnedFd,
    v6: OwnedFd,
}

impl Reinjector {
    fn open() -> Result<Self> {
        let open = |family| -> io::Result<OwnedFd> {
            let fd = socket::socket(family, SockType::Raw, SockFlag::SOCK_CLOEXEC, SockProtocol::Raw)?;
            socket::setsockopt(&fd, sockopt::Mark, &OWN_MARK)?;
            Ok(fd)
        };
        let err = |e| Error::io("open raw socket", "duplicate re-injection", e);
        Ok(Self {
            v4: open(AddressFamily::Inet).map_err(err)?,
            v6: open(AddressFamily::Inet6).map_err(err)?,
        })
    }

    fn send(&self, packet: &[u8]) -> io::Result<()> {
        let bad = || io::Error::new(io::ErrorKind::InvalidData, "not an IP packet");
        match packet.first().map(|b| b >> 4) {
            Some(4) if packet.len() >= 20 => {
                let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
                let addr = socket::SockaddrIn::from(SocketAddrV4::new(dst, 0));
                socket::sendto(self.v4.as_raw_fd(), packet, &addr, MsgFlags::empty())?;
            }
            Some(6) if packet.len() >= 40 => {
                let mut o = [0u8; 16];
                o.copy_from_slice(&packet[24..40]);
                let addr = socket::SockaddrIn6::from(SocketAddrV6::new(Ipv6Addr::from(o), 0, 0, 0));
                socket::sendto(self.v6.as_raw_fd(), packet, &addr, MsgFlags::empty())?;
            }
            _ => return Err(bad()),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_follow_their_distribution() {
        let mut rng = rand::rng();
        let n = 20_000;
        for dist in [Distribution::Uniform, Distribution::Normal] {
            let samples: Vec<f64> = (0..n)
                .map(|_| sample_delay(10_000, 2_000, dist, &mut rng).as_micros() as f64)
                .collect();
            let mean = samples.iter().sum::<f64>() / n as f64;
            assert!((mean - 10_000.0).abs() < 100.0, "{dist:?} mean {mean}");
            let min = samples.iter().cloned().fold(f64::MAX, f64::min);
            if dist == Distribution::Uniform {
                assert!(min >= 8_000.0, "uniform stays within the jitter: {min}");
            }
        }
        assert_eq!(
            sample_delay(5, 0, Distribution::Normal, &mut rng),
            Duration::from_micros(5)
        );
    }
}
