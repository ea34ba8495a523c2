//! Delay (userspace NFQUEUE path), bandwidth (tbf) and link faults with real traffic.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use chaos_faults::{
    Bandwidth, Direction, FaultSpec, Injector, LinkChange, Mechanism, NetScope, PacketEffects, Protocol,
    heal_leftovers,
};
use common::{Lan, Netns, udp_delivered};

/// Timing-sensitive tests (delay) must not share the 2 cores with bulk-traffic tests (bandwidth):
/// every test in this file holds this lock.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn addr(i: usize, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Lan::v4(i)), port)
}

/// Starts a UDP echo server in `ns` that stops after `secs`.
fn udp_echo(ns: &Netns, port: u16, secs: u64) {
    let (tx, rx) = std::sync::mpsc::channel();
    ns.spawn(move || {
        let s = UdpSocket::bind(("0.0.0.0", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        tx.send(()).unwrap();
        let end = Instant::now() + Duration::from_secs(secs);
        let mut buf = [0u8; 1500];
        while Instant::now() < end {
            if let Ok((n, from)) = s.recv_from(&mut buf) {
                let _ = s.send_to(&buf[..n], from);
            }
        }
    });
    rx.recv().unwrap();
}

/// Round-trip times of `count` sequential UDP pings from `ns` to `to` (lost ones skipped).
fn udp_rtts(ns: &Netns, to: SocketAddr, count: u32) -> Vec<Duration> {
    ns.run(move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut rtts = Vec::new();
        let mut buf = [0u8; 64];
        for i in 0..count {
            let start = Instant::now();
            s.send_to(&i.to_be_bytes(), to).unwrap();
            // Skip stale replies from earlier pings.
            while let Ok(n) = s.recv(&mut buf) {
                if n == 4 && buf[..4] == i.to_be_bytes() {
                    rtts.push(start.elapsed());
                    break;
                }
            }
        }
        rtts
    })
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
fn delay_100ms_gives_rtt_between_100_and_150ms() {
    require_root!();
    let _serial = serial();
    let lan = Lan::new(2);
    let n = &lan.nodes;
    udp_echo(&n[1], 9200, 30);
    let base = median(udp_rtts(&n[0], addr(1, 9200), 10));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("faults.json");
    let mut inj = n[0].run(move || {
        let mut inj = Injector::new(&path, &[]).unwrap();
        let scope = NetScope::peers([IpAddr::V4(Lan::v4(1))]).direction(Direction::Out);
        let effects = PacketEffects {
            delay_us: 100_000,
            ..PacketEffects::default()
        };
        let m = inj
            .inject("delay", &FaultSpec::Packet { scope, effects })
            .unwrap();
        assert!(matches!(m, Mechanism::NfqueueUserspace { .. }), "{m:?}");
        inj
    });
    let rtts = udp_rtts(&n[0], addr(1, 9200), 20);
    assert!(rtts.len() >= 18, "only {} of 20 pings answered", rtts.len());
    let window = Duration::from_millis(100)..=Duration::from_millis(150);
    // The delay is never shortened; scheduling noise from other load on a 2-core machine may
    // stretch a rare ping, so at least 90 % (and the median) must be inside the window.
    assert!(rtts.iter().all(|r| *r >= Duration::from_millis(100)), "{rtts:?}");
    let inside = rtts.iter().filter(|r| window.contains(r)).count();
    assert!(
        inside * 10 >= rtts.len() * 9,
        "{inside}/{} inside 100–150 ms: {rtts:?}",
        rtts.len()
    );
    let med = median(rtts);
    assert!(window.contains(&med), "median {med:?} (baseline {base:?})");
    eprintln!("baseline rtt {base:?}, delayed median {med:?}, {inside} of 20 within 100–150 ms");
    n[0].run(move || assert!(inj.heal("delay").unwrap()));
    let after = median(udp_rtts(&n[0], addr(1, 9200), 10));
    assert!(after < Duration::from_millis(20), "healed rtt {after:?}");
}

#[test]
fn correlated_loss_corrupt_and_duplicate_in_userspace() {
    require_root!();
    let _serial = serial();
    let lan = Lan::new(2);
    let n = &lan.nodes;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("faults.json");
    let scope = NetScope::peers([IpAddr::V4(Lan::v4(1))])
        .direction(Direction::Out)
        .protocol(Protocol::Udp);

    // Correlated loss keeps the mean.
    let (p, s) = (path.clone(), scope.clone());
    let mut inj = n[0].run(move || {
        let mut inj = Injector::new(&p, &[]).unwrap();
        let effects = PacketEffects {
            loss_percent: 30.0,
            loss_correlation: 50.0,
            ..PacketEffects::default()
        };
        inj.inject("closs", &FaultSpec::Packet { scope: s, effects })
            .unwrap();
        inj
    });
    let got = udp_delivered(&n[0], &n[1], addr(1, 9300), 2000);
    let loss = 100.0 * (2000 - got) as f64 / 2000.0;
    eprintln!("correlated loss measured {loss:.1}%");
    assert!((20.0..=40.0).contains(&loss), "loss {loss}%");

    // Corrupt everything: receivers drop every datagram on checksum.
    let s = scope.clone();
    let mut inj = n[0].run(move || {
        inj.heal("closs").unwrap();
        let effects = PacketEffects {
            corrupt_percent: 100.0,
            ..PacketEffects::default()
        };
        inj.inject("corrupt", &FaultSpec::Packet { scope: s, effects })
            .unwrap();
        inj
    });
    let got = udp_delivered(&n[0], &n[1], addr(1, 9301), 300);
    assert_eq!(got, 0, "corrupted datagrams must fail their checksum");

    // Duplicate everything: every datagram arrives twice.
    let s = scope.clone();
    let mut inj = n[0].run(move || {
        inj.heal("corrupt").unwrap();
        let effects = PacketEffects {
            duplicate_percent: 100.0,
            ..PacketEffects::default()
        };
        inj.inject("dup", &FaultSpec::Packet { scope: s, effects })
            .unwrap();
        inj
    });
    let got = udp_delivered(&n[0], &n[1], addr(1, 9302), 300);
    assert_eq!(got, 600, "each datagram twice");
    n[0].run(move || {
        inj.heal_all().unwrap();
        drop(inj);
        assert!(heal_leftovers(&path).unwrap().healed.is_empty());
    });
    assert_eq!(udp_delivered(&n[0], &n[1], addr(1, 9303), 100), 100, "healed");
}

/// TCP bulk throughput from `from` to a sink in `to`, bits per second over `secs`.
fn tcp_throughput(from: &Netns, to: &Netns, target: SocketAddr, secs: f64) -> f64 {
    let (tx, rx) = std::sync::mpsc::channel();
    let sink = to.spawn(move || {
        let l = TcpListener::bind(target).unwrap();
        tx.send(()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0usize;
        let mut first: Option<Instant> = None;
        let mut skipped = 0usize;
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    // Skip the first 64 KiB: the initial bucket (burst) passes unshaped.
                    if first.is_none() {
                        skipped += n;
                        if skipped >= 64 * 1024 {
                            first = Some(Instant::now());
                        }
                        continue;
                    }
                    total += n;
                }
            }
        }
        (total, first.map(|f| f.elapsed()).unwrap_or_default())
    });
    rx.recv().unwrap();
    from.run(move || {
        let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(2)).unwrap();
        let chunk = vec![0x5au8; 16 * 1024];
        let end = Instant::now() + Duration::from_secs_f64(secs);
        while Instant::now() < end {
            if s.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    let (bytes, elapsed) = sink.join().unwrap();
    bytes as f64 * 8.0 / elapsed.as_secs_f64()
}

#[test]
fn tbf_8mbit_limits_tcp_throughput() {
    require_root!();
    let _serial = serial();
    let lan = Lan::new(2);
    let n = &lan.nodes;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("faults.json");
    let mut inj = n[0].run(move || {
        let mut inj = Injector::new(&path, &[]).unwrap();
        let bw = Bandwidth {
            interface: "eth0".into(),
            rate_bps: 8_000_000,
            burst_bytes: 0,
            limit_bytes: 0,
            exempt_tcp_ports: vec![],
        };
        assert_eq!(
            inj.inject("bw", &FaultSpec::Bandwidth(bw)).unwrap(),
            Mechanism::TbfNetlink
        );
        inj
    });
    let qdiscs =
        String::from_utf8_lossy(&n[0].exec(&["tc", "qdisc", "show", "dev", "eth0"]).stdout).into_owned();
    assert!(qdiscs.contains("tbf c4a0:"), "{qdiscs}");
    let bps = tcp_throughput(&n[0], &n[1], addr(1, 9400), 3.0);
    eprintln!("throughput under 8 Mbit/s tbf: {:.2} Mbit/s", bps / 1e6);
    assert!(
        (6e6..=10e6).contains(&bps),
        "{:.2} Mbit/s not within 8 ± 25 %",
        bps / 1e6
    );
    n[0].run(move || assert!(inj.heal("bw").unwrap()));
    let qdiscs =
        String::from_utf8_lossy(&n[0].exec(&["tc", "qdisc", "show", "dev", "eth0"]).stdout).into_owned();
    assert!(!qdiscs.contains("c4a0"), "{qdiscs}");
}

/// TCP bulk download: a server in `server` on `port` writes for `secs`; the client in `client`
/// reads. Returns bits per second seen by the client (first 64 KiB excluded).
fn tcp_download(server: &Netns, client: &Netns, target: SocketAddr, secs: f64) -> f64 {
    let (tx, rx) = std::sync::mpsc::channel();
    let srv = server.spawn(move || {
        let l = TcpListener::bind(target).unwrap();
        tx.send(()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        let chunk = vec![0x5au8; 16 * 1024];
        let end = Instant::now() + Duration::from_secs_f64(secs);
        while Instant::now() < end {
            if s.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    rx.recv().unwrap();
    let bps = client.run(move || {
        let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(2)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let (mut total, mut skipped, mut first) = (0usize, 0usize, None::<Instant>);
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) if first.is_none() => {
                    skipped += n;
                    if skipped >= 64 * 1024 {
                        first = Some(Instant::now());
                    }
                }
                Ok(n) => total += n,
            }
        }
        total as f64 * 8.0 / first.map(|f| f.elapsed().as_secs_f64()).unwrap_or(f64::MAX)
    });
    srv.join().unwrap();
    bps
}

#[test]
fn bandwidth_limit_exempts_the_control_port() {
    require_root!();
    let _serial = serial();
    let lan = Lan::new(2);
    let n = &lan.nodes;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("faults.json");
    let mut inj = n[0].run(move || {
        let mut inj = Injector::new(&path, &[7700]).unwrap();
        let bw = Bandwidth {
            interface: "eth0".into(),
            rate_bps: 8_000_000,
            burst_bytes: 0,
            limit_bytes: 0,
            exempt_tcp_ports: vec![],
        };
        assert_eq!(
            inj.inject("bw", &FaultSpec::Bandwidth(bw)).unwrap(),
            Mechanism::HtbTbfNetlink
        );
        inj
    });
    let control = tcp_download(&n[0], &n[1], addr(0, 7700), 0.5);
    let other = tcp_download(&n[0], &n[1], addr(0, 7701), 3.0);
    eprintln!(
        "exempt port {:.1} Mbit/s, shaped port {:.2} Mbit/s",
        control / 1e6,
        other / 1e6
    );
    assert!(
        control > 40e6,
        "control port must not be shaped: {:.1} Mbit/s",
        control / 1e6
    );
    assert!(
        (6e6..=10e6).contains(&other),
        "{:.2} Mbit/s not within 8 ± 25 %",
        other / 1e6
    );
    n[0].run(move || assert!(inj.heal("bw").unwrap()));
    let qdiscs = String::from_utf8_lossy(&n[0].exec(&["tc", "qdisc", "show"]).stdout).into_owned();
    assert!(!qdiscs.contains("c4a"), "{qdiscs}");
}

#[test]
fn foreign_root_qdisc_is_refused_and_kept() {
    require_root!();
    let _serial = serial();
    let lan = Lan::new(1);
    let ns = &lan.nodes[0];
    ns.exec(&["tc", "qdisc", "add", "dev", "eth0", "root", "handle", "1:", "htb"]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("faults.json");
    let err = ns.run(move || {
        let mut inj = Injector::new(&path, &[]).unwrap();
        let bw = Bandwidth {
            interface: "eth0".into(),
            rate_bps: 1_000_000,
            burst_bytes: 0,
            limit_bytes: 0,
            exempt_tcp_ports: vec![],
        };
        let err = inj.inject("bw", &FaultSpec::Bandwidth(bw)).unwrap_err();
        assert!(inj.active().is_empty());
        err
    });
    assert!(matches!(err, chaos_faults::Error::Conflict { .. }), "{err}");
    let qdiscs =
        String::from_utf8_lossy(&ns.exec(&["tc", "qdisc", "show", "dev", "eth0"]).stdout).into_owned();
    assert!(qdiscs.contains("htb 1:"), "{qdiscs}");
}

#[test]
fn link_down_and_mtu_are_restored() {
    require_root!();
    let _serial = serial();
    let lan = Lan::new(2);
    let n = &lan.nodes;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("faults.json");
    let p = path.clone();
    n[0].run(move || {
        let mut inj = Injector::new(&p, &[]).unwrap();
        let change = LinkChange {
            interface: "eth0".into(),
            up: Some(false),
            mtu: Some(1280),
            force: false,
        };
        assert_eq!(
            inj.inject("link", &FaultSpec::Link(change)).unwrap(),
            Mechanism::RtnetlinkLink
        );
        let s = chaos_faults::link::get("eth0").unwrap();
        assert!(!s.up && s.mtu == 1280, "{s:?}");
        std::mem::forget(inj); // crash with the link down
    });
    assert_eq!(udp_delivered(&n[0], &n[1], addr(1, 9500), 20), 0, "link is down");
    n[0].run(move || {
        let report = heal_leftovers(&path).unwrap();
        assert_eq!(report.healed.len(), 1);
        let s = chaos_faults::link::get("eth0").unwrap();
        assert!(s.up && s.mtu == 1500, "{s:?}");
        assert!(matches!(
            chaos_faults::link::get("nope0"),
            Err(chaos_faults::Error::NotFound(_))
        ));
    });
    // Carrier and neighbours come back within a moment.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        udp_delivered(&n[0], &n[1], addr(1, 9501), 20),
        20,
        "link restored"
    );
}

#[test]
fn jitter_spreads_delay_and_reorder_lets_some_packets_overtake() {
    require_root!();
    let _serial = serial();
    let lan = Lan::new(2);
    let n = &lan.nodes;
    udp_echo(&n[1], 9800, 30);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("faults.json");
    let scope = NetScope::peers([IpAddr::V4(Lan::v4(1))])
        .direction(Direction::Out)
        .protocol(Protocol::Udp);
    let s = scope.clone();
    let mut inj = n[0].run(move || {
        let mut inj = Injector::new(&path, &[]).unwrap();
        let effects = PacketEffects {
            delay_us: 30_000,
            jitter_us: 10_000,
            distribution: chaos_faults::Distribution::Uniform,
            ..PacketEffects::default()
        };
        inj.inject("jitter", &FaultSpec::Packet { scope: s, effects })
            .unwrap();
        inj
    });
    let rtts = udp_rtts(&n[0], addr(1, 9800), 30);
    assert!(rtts.len() >= 27, "{} of 30 answered", rtts.len());
    let (lo, hi) = (
        rtts.iter().min().copied().unwrap(),
        rtts.iter().max().copied().unwrap(),
    );
    eprintln!("jittered rtts from {lo:?} to {hi:?}");
    assert!(
        lo >= Duration::from_millis(20),
        "uniform 30±10 ms never goes below 20 ms: {lo:?}"
    );
    assert!(
        hi - lo >= Duration::from_millis(5),
        "jitter must spread the delay: {lo:?}..{hi:?}"
    );

    // Reorder: half the packets skip a 50 ms delay, so later packets overtake earlier ones.
    let s = scope.clone();
    let mut inj = n[0].run(move || {
        inj.heal("jitter").unwrap();
        let effects = PacketEffects {
            delay_us: 50_000,
            reorder_percent: 50.0,
            ..PacketEffects::default()
        };
        inj.inject("reorder", &FaultSpec::Packet { scope: s, effects })
            .unwrap();
        inj
    });
    let target = addr(1, 9801);
    let (tx, rx) = std::sync::mpsc::channel();
    let receiver = n[1].spawn(move || {
        let s = UdpSocket::bind(target).unwrap();
        // A generous wait for the first datagram (a busy machine may start the sender late),
        // then 500 ms of quiet ends the stream.
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        tx.send(()).unwrap();
        let mut order = Vec::new();
        let mut buf = [0u8; 8];
        while let Ok(4) = s.recv(&mut buf) {
            order.push(u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]));
            s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        }
        order
    });
    rx.recv().unwrap();
    n[0].run(move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        for i in 0..200u32 {
            s.send_to(&i.to_be_bytes(), target).unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    let order = receiver.join().unwrap();
    assert_eq!(order.len(), 200, "reordering loses nothing");
    let inversions = order.windows(2).filter(|w| w[0] > w[1]).count();
    eprintln!("{inversions} inversions in 200 packets");
    assert!(
        inversions >= 10,
        "expected reordering, got {inversions} inversions"
    );
    n[0].run(move || inj.heal_all().unwrap());
}
