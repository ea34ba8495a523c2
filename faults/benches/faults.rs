//! Benchmarks of the fault mechanisms, in throwaway network namespaces (needs root).
//!
//! 1. Partition inject + heal latency through [`Injector`] (netlink, ledger with fsync) versus
//!    the same rule by shelling out to `nft -f -` and to `iptables`, in the same run.
//! 2. The userspace NFQUEUE delay path: UDP at a paced rate through a 10 ms delay; delivered
//!    packets/s and the error of each packet's one-way delay against 10 ms.
//!
//! Run: `cargo bench -p chaos-faults` (prints a report; exits 0 with a note when not root).

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::Write;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chaos_faults::{Direction, FaultSpec, Injector, NetScope, PacketEffects, Protocol};
use common::{Lan, Netns};

const ROUNDS: usize = 200;

fn rounds() -> usize {
    std::env::var("CHAOS_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(ROUNDS)
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn run_shell(cmd: &str, args: &[&str], stdin: Option<&str>) {
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd}: {e}"));
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Times `inject` then `heal` `ROUNDS` times; returns (inject, heal, total) medians and p90 total.
fn time_rounds<S>(
    state: &mut S,
    mut inject: impl FnMut(&mut S),
    mut heal: impl FnMut(&mut S),
) -> (Duration, Duration, Duration, Duration) {
    let (mut i, mut h, mut t) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds() {
        let a = Instant::now();
        inject(state);
        let b = Instant::now();
        heal(state);
        let c = Instant::now();
        i.push(b - a);
        h.push(c - b);
        t.push(c - a);
    }
    let p90 = percentile(&mut t.clone(), 0.9);
    (
        percentile(&mut i, 0.5),
        percentile(&mut h, 0.5),
        percentile(&mut t, 0.5),
        p90,
    )
}

fn partition_latency(ns: &Netns) {
    let results = ns.run(|| {
        let dir = tempfile::tempdir().unwrap();
        let mut inj = Injector::new(dir.path().join("faults.json"), &[7700]).unwrap();
        let peer = IpAddr::V4(Lan::v4(1));
        let spec = FaultSpec::Partition { scope: NetScope::peers([peer]) };
        let ours = time_rounds(
            &mut inj,
            |inj| {
                inj.inject("p", &spec).unwrap();
            },
            |inj| {
                inj.heal("p").unwrap();
            },
        );
        // With another fault installed, healing the last one does not delete the table (whose
        // base-chain hooks cost the kernel an RCU grace period to unregister).
        let keep = FaultSpec::Partition { scope: NetScope::peers([IpAddr::V4(Lan::v4(0))]) };
        inj.inject("keep", &keep).unwrap();
        let ours_shared = time_rounds(
            &mut inj,
            |inj| {
                inj.inject("p", &spec).unwrap();
            },
            |inj| {
                inj.heal("p").unwrap();
            },
        );
        inj.heal("keep").unwrap();
        // The same fault as an nft script: our table, exempt + drop in both directions.
        let script = "table inet bench {\n\
            chain input { type filter hook input priority -150; tcp dport 7700 return; ip saddr 10.99.0.2 drop; }\n\
            chain output { type filter hook output priority -150; tcp sport 7700 return; ip daddr 10.99.0.2 drop; }\n\
            }\n";
        let nft = time_rounds(
            &mut (),
            |_| run_shell("nft", &["-f", "-"], Some(script)),
            |_| run_shell("nft", &["delete", "table", "inet", "bench"], None),
        );
        let ipt = if Command::new("iptables").arg("-V").output().is_ok() {
            Some(time_rounds(
                &mut (),
                |_| {
                    run_shell("iptables", &["-I", "INPUT", "-s", "10.99.0.2", "-j", "DROP"], None);
                    run_shell("iptables", &["-I", "OUTPUT", "-d", "10.99.0.2", "-j", "DROP"], None);
                },
                |_| {
                    run_shell("iptables", &["-D", "INPUT", "-s", "10.99.0.2", "-j", "DROP"], None);
                    run_shell("iptables", &["-D", "OUTPUT", "-d", "10.99.0.2", "-j", "DROP"], None);
                },
            ))
        } else {
            None
        };
        (ours, ours_shared, nft, ipt)
    });
    println!(
        "partition inject + heal, {} rounds (median inject / heal / total, p90 total):",
        rounds()
    );
    let line = |name: &str, (i, h, t, p90): (Duration, Duration, Duration, Duration)| {
        println!(
            "  {name:<34} {} / {} / {}  (p90 {})",
            ms(i),
            ms(h),
            ms(t),
            ms(p90)
        );
    };
    line("chaos-faults (netlink + ledger)", results.0);
    line("  same, table kept by another fault", results.1);
    line("nft -f - / nft delete table", results.2);
    match results.3 {
        Some(r) => line("iptables -I x2 / iptables -D x2", r),
        None => println!("  iptables: not installed"),
    }
}

/// Sends UDP at `pps` for `secs` through a 10 ms userspace delay; prints delivered rate and
/// delay error percentiles.
fn delay_path(lan: &Lan, pps: u64, secs: u64, with_delay: bool) {
    let delay = Duration::from_millis(10);
    let n = &lan.nodes;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("faults.json");
    let inj = n[0].run(move || {
        let mut inj = Injector::new(&path, &[]).unwrap();
        if with_delay {
            let scope = NetScope::peers([IpAddr::V4(Lan::v4(1))])
                .direction(Direction::Out)
                .protocol(Protocol::Udp);
            let effects = PacketEffects {
                delay_us: 10_000,
                ..PacketEffects::default()
            };
            inj.inject("d", &FaultSpec::Packet { scope, effects }).unwrap();
        }
        inj
    });
    let base = Instant::now();
    let target = SocketAddr::new(IpAddr::V4(Lan::v4(1)), 9700);
    let (tx, rx) = std::sync::mpsc::channel();
    let receiver = n[1].spawn(move || {
        let s = UdpSocket::bind(target).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        tx.send(()).unwrap();
        let mut lat = Vec::with_capacity((pps * secs) as usize);
        let mut buf = [0u8; 64];
        let mut first: Option<Instant> = None;
        let mut last = Instant::now();
        while let Ok(len) = s.recv(&mut buf) {
            let now = Instant::now();
            if len >= 16 {
                let sent = u128::from_be_bytes(buf[..16].try_into().unwrap());
                let sent_at = base + Duration::from_nanos(sent as u64);
                lat.push(now.saturating_duration_since(sent_at));
            }
            first.get_or_insert(now);
            last = now;
        }
        (lat, first.map(|f| last - f).unwrap_or_default())
    });
    rx.recv().unwrap();
    let sent = n[0].run(move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        let total = pps * secs;
        let start = Instant::now();
        let mut sent = 0u64;
        while sent < total {
            // Pace in 1 ms slices.
            let due = (start.elapsed().as_secs_f64() * pps as f64) as u64;
            while sent < due.min(total) {
                let stamp = (Instant::now() - base).as_nanos();
                let mut msg = [0u8; 32];
                msg[..16].copy_from_slice(&stamp.to_be_bytes());
                let _ = s.send_to(&msg, target);
                sent += 1;
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        sent
    });
    let (mut lat, span) = receiver.join().unwrap();
    n[0].run(move || {
        let mut inj = inj;
        inj.heal_all().unwrap();
    });
    let got = lat.len();
    let rate = got as f64 / span.as_secs_f64().max(1e-9);
    let expected = if with_delay { delay } else { Duration::ZERO };
    let mut err: Vec<Duration> = lat.iter().map(|l| l.abs_diff(expected)).collect();
    let label = if with_delay {
        "10 ms NFQUEUE delay"
    } else {
        "no fault (baseline)"
    };
    if got == 0 {
        println!("  {label:<22} target {pps:>6} pps: nothing delivered");
        return;
    }
    println!(
        "  {label:<22} target {pps:>6} pps: delivered {got}/{sent} at {rate:>8.0} pps; |delay error| p50 {} p99 {} max {}",
        ms(percentile(&mut err, 0.5)),
        ms(percentile(&mut err, 0.99)),
        ms(percentile(&mut err, 1.0)),
    );
    lat.clear();
}

fn main() {
    if let Some(why) = common::skip_reason() {
        println!("skipping chaos-faults benchmarks: {why}");
        return;
    }
    // `cargo bench` passes --bench; nothing else to parse.
    let lan = Lan::new(2);
    partition_latency(&lan.nodes[0]);
    println!("userspace delay path (UDP 32-byte payloads, 3 s per run, 2-core VM):");
    delay_path(&lan, 20_000, 3, false);
    for pps in [20_000, 40_000] {
        delay_path(&lan, pps, 3, true);
    }
}
