//! Network faults against real namespaces and real traffic.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use chaos_faults::{Direction, FaultSpec, Injector, Mechanism, NetScope, Protocol, heal_leftovers, nft};
use common::{Lan, Netns, tcp_connects, tcp_listener, udp_delivered};

/// How long a connection that must fail is given.
const T: Duration = Duration::from_millis(500);
/// How long a connection that must succeed may take: on a busy machine softirq processing
/// (ksoftirqd) can hold a bridged packet for hundreds of milliseconds.
const T_OK: Duration = Duration::from_secs(5);

fn addr(i: usize, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Lan::v4(i)), port)
}

fn state_file(dir: &tempfile::TempDir) -> std::path::PathBuf {
    dir.path().join("faults.json")
}

fn ruleset(ns: &Netns) -> String {
    String::from_utf8_lossy(&ns.exec(&["nft", "list", "ruleset"]).stdout).into_owned()
}

#[test]
fn partition_two_of_three_then_heal() {
    require_root!();
    let lan = Lan::new(3);
    for (i, ns) in lan.nodes.iter().enumerate() {
        tcp_listener(ns, 8000 + i as u16);
    }
    let n = &lan.nodes;
    assert!(tcp_connects(&n[0], addr(1, 8001), T_OK), "baseline n1->n2");

    let dir = tempfile::tempdir().unwrap();
    let path = state_file(&dir);
    let mech = n[0].run(move || {
        let mut inj = Injector::new(&path, &[]).unwrap();
        let scope = NetScope::peers([IpAddr::V4(Lan::v4(1))]);
        let m = inj.inject("p1", &FaultSpec::Partition { scope }).unwrap();
        std::mem::forget(inj); // keep the fault; heal below from a new injector
        m
    });
    assert_eq!(mech, Mechanism::NftablesNetlink);
    assert!(!tcp_connects(&n[0], addr(1, 8001), T), "n1->n2 must fail");
    assert!(!tcp_connects(&n[1], addr(0, 8000), T), "n2->n1 must fail");
    assert!(tcp_connects(&n[0], addr(2, 8002), T_OK), "n1->n3 still works");
    assert!(tcp_connects(&n[1], addr(2, 8002), T_OK), "n2->n3 still works");
    assert!(tcp_connects(&n[2], addr(0, 8000), T_OK), "n3->n1 still works");
    assert!(
        ruleset(&n[0]).contains("chaos fault p1"),
        "rule carries our comment"
    );

    let path = state_file(&dir);
    n[0].run(move || {
        let mut inj = Injector::new(&path, &[]).unwrap();
        assert_eq!(
            inj.startup_heal().healed.len(),
            1,
            "restart heals the leftover partition"
        );
        assert!(!inj.heal("p1").unwrap(), "healing again is a no-op");
    });
    assert!(tcp_connects(&n[0], addr(1, 8001), T_OK), "healed n1->n2");
    assert!(!ruleset(&n[0]).contains(nft::TABLE), "our table is gone");
}

#[test]
fn one_way_partition_passes_one_direction() {
    require_root!();
    let lan = Lan::new(2);
    let n = &lan.nodes;
    let dir = tempfile::tempdir().unwrap();
    let path = state_file(&dir);
    let handle = n[0].spawn(move || {
        let mut inj = Injector::new(&path, &[]).unwrap();
        let scope = NetScope::peers([IpAddr::V4(Lan::v4(1))]).direction(Direction::Out);
        inj.inject("oneway", &FaultSpec::Partition { scope }).unwrap();
        inj
    });
    let mut inj = handle.join().unwrap();
    let out = udp_delivered(&n[0], &n[1], addr(1, 9000), 200);
    let back = udp_delivered(&n[1], &n[0], addr(0, 9000), 200);
    assert_eq!(out, 0, "n1->n2 is cut");
    assert_eq!(back, 200, "n2->n1 still flows");
    let path = state_file(&dir);
    n[0].run(move || {
        assert!(inj.heal("oneway").unwrap());
        drop(inj);
        assert!(heal_leftovers(&path).unwrap().healed.is_empty());
    });
    assert_eq!(udp_delivered(&n[0], &n[1], addr(1, 9000), 100), 100, "healed");
}

#[test]
fn loss_30_percent_over_2000_packets() {
    require_root!();
    let lan = Lan::new(2);
    let n = &lan.nodes;
    let dir = tempfile::tempdir().unwrap();
    let path = state_file(&dir);
    let mut inj = n[0].run(move || {
        let mut inj = Injector::new(&path, &[]).unwrap();
        let scope = NetScope::peers([IpAddr::V4(Lan::v4(1))])
            .direction(Direction::Out)
            .protocol(Protocol::Udp);
        assert_eq!(
            inj.inject("loss", &FaultSpec::Loss { scope, percent: 30.0 })
                .unwrap(),
            Mechanism::NftablesNetlink
        );
        inj
    });
    let sent = 2000;
    let got = udp_delivered(&n[0], &n[1], addr(1, 9001), sent);
    let loss = 100.0 * (sent - got) as f64 / sent as f64;
    eprintln!("measured loss {loss:.1}% ({got}/{sent} delivered)");
    assert!((20.0..=40.0).contains(&loss), "loss {loss}% not within 30 ± 10");
    n[0].run(move || inj.heal_all().unwrap());
    assert!(!ruleset(&n[0]).contains(nft::TABLE));
}

#[test]
fn exempt_port_survives_full_partition() {
    require_root!();
    let lan = Lan::new(2);
    let n = &lan.nodes;
    tcp_listener(&n[0], 7700);
    tcp_listener(&n[0], 7701);
    let dir = tempfile::tempdir().unwrap();
    let path = state_file(&dir);
    let mut inj = n[0].run(move || {
        let mut inj = Injector::new(&path, &[7700]).unwrap();
        // Every peer, every protocol, both directions.
        inj.inject(
            "all",
            &FaultSpec::Partition {
                scope: NetScope::default(),
            },
        )
        .unwrap();
        inj
    });
    assert!(
        tcp_connects(&n[1], addr(0, 7700), T_OK),
        "control port still reachable"
    );
    assert!(!tcp_connects(&n[1], addr(0, 7701), T), "other ports are cut");
    n[0].run(move || inj.heal("all").unwrap());
    assert!(tcp_connects(&n[1], addr(0, 7701), T_OK), "healed");
}

#[test]
fn foreign_rules_survive_inject_and_heal() {
    require_root!();
    let lan = Lan::new(2);
    let n = &lan.nodes;
    let out = n[0].exec(&[
        "nft",
        "add table inet other; add chain inet other c; add rule inet other c tcp dport 4242 counter",
    ]);
    assert!(
        out.status.success(),
        "setup nft: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ipt = n[0].exec(&[
        "iptables", "-A", "INPUT", "-p", "tcp", "--dport", "4343", "-j", "ACCEPT",
    ]);
    let have_iptables = ipt.status.success();
    let dir = tempfile::tempdir().unwrap();
    let path = state_file(&dir);
    n[0].run(move || {
        let mut inj = Injector::new(&path, &[]).unwrap();
        let scope = NetScope::peers([IpAddr::V4(Lan::v4(1))]);
        inj.inject("a", &FaultSpec::Partition { scope: scope.clone() })
            .unwrap();
        inj.inject("b", &FaultSpec::Loss { scope, percent: 5.0 }).unwrap();
        assert!(inj.heal("a").unwrap());
        assert!(inj.heal("b").unwrap());
    });
    let rules = ruleset(&n[0]);
    assert!(
        rules.contains("table inet other") && rules.contains("tcp dport 4242"),
        "{rules}"
    );
    assert!(!rules.contains(nft::TABLE), "{rules}");
    if have_iptables {
        let saved = String::from_utf8_lossy(&n[0].exec(&["iptables-save"]).stdout).into_owned();
        assert!(saved.contains("--dport 4343"), "{saved}");
    }
}

#[test]
fn removing_one_fault_keeps_the_other() {
    require_root!();
    let lan = Lan::new(3);
    let n = &lan.nodes;
    tcp_listener(&n[1], 8001);
    tcp_listener(&n[2], 8002);
    let dir = tempfile::tempdir().unwrap();
    let path = state_file(&dir);
    let mut inj = n[0].run(move || {
        let mut inj = Injector::new(&path, &[]).unwrap();
        inj.inject(
            "to2",
            &FaultSpec::Partition {
                scope: NetScope::peers([IpAddr::V4(Lan::v4(1))]),
            },
        )
        .unwrap();
        inj.inject(
            "to3",
            &FaultSpec::Partition {
                scope: NetScope::peers([IpAddr::V4(Lan::v4(2))]),
            },
        )
        .unwrap();
        let dup = inj.inject(
            "to3",
            &FaultSpec::Partition {
                scope: NetScope::default(),
            },
        );
        assert!(
            matches!(dup, Err(chaos_faults::Error::AlreadyActive { .. })),
            "{dup:?}"
        );
        assert!(inj.heal("to2").unwrap());
        inj
    });
    assert!(tcp_connects(&n[0], addr(1, 8001), T_OK), "to2 healed");
    assert!(!tcp_connects(&n[0], addr(2, 8002), T), "to3 still active");
    n[0].run(move || inj.heal("to3").unwrap());
    assert!(tcp_connects(&n[0], addr(2, 8002), T_OK));
    assert!(!ruleset(&n[0]).contains(nft::TABLE));
}

#[test]
fn ipv6_partition() {
    require_root!();
    let lan = Lan::new(2);
    let n = &lan.nodes;
    let peer: IpAddr = "fd99::2".parse().unwrap();
    let target = SocketAddr::new(peer, 9100);
    tcp_listener(&n[1], 9100);
    // IPv6 on a fresh veth may need a moment (no DAD, but neighbour discovery).
    assert!(tcp_connects(&n[0], target, Duration::from_secs(3)), "baseline v6");
    let dir = tempfile::tempdir().unwrap();
    let path = state_file(&dir);
    let mut inj = n[0].run(move || {
        let mut inj = Injector::new(&path, &[]).unwrap();
        let scope = NetScope {
            peers: vec!["fd99::/64".parse().unwrap()],
            ..NetScope::default()
        };
        inj.inject("v6", &FaultSpec::Partition { scope }).unwrap();
        inj
    });
    assert!(!tcp_connects(&n[0], target, T), "v6 cut");
    assert!(
        tcp_connects(&n[0], addr(1, 9100), T_OK),
        "IPv4 is not matched by a v6 prefix"
    );
    n[0].run(move || inj.heal("v6").unwrap());
    assert!(tcp_connects(&n[0], target, T_OK), "v6 healed");
}

/// A fault with a deadline stops acting at it even though nobody heals it (its injector is
/// gone, as with a SIGKILLed agent): the kernel compares its own clock with the deadline. The
/// inert chains stay until a heal removes them.
#[test]
fn a_partition_with_a_deadline_ends_in_the_kernel_without_a_heal() {
    require_root!();
    if !chaos_faults::probe::kernel_expiry().available {
        chaos_testkit::skip(
            "a_partition_with_a_deadline_ends_in_the_kernel_without_a_heal",
            "root",
            &chaos_faults::probe::kernel_expiry().detail,
        );
        return;
    }
    let lan = Lan::new(2);
    tcp_listener(&lan.nodes[1], 8001);
    let n = &lan.nodes;
    let dir = tempfile::tempdir().unwrap();
    let path = state_file(&dir);
    let ttl = Duration::from_millis(1500);
    let deadline = std::time::SystemTime::now() + ttl;
    let started = std::time::Instant::now();
    n[0].run(move || {
        let mut inj = Injector::new(&path, &[]).unwrap();
        let scope = NetScope::peers([IpAddr::V4(Lan::v4(1))]);
        inj.inject_until("expiring", &FaultSpec::Partition { scope }, Some(deadline))
            .unwrap();
        std::mem::forget(inj); // no heal: as if the agent had died
    });
    assert!(!tcp_connects(&n[0], addr(1, 8001), T), "cut before the deadline");
    assert!(
        ruleset(&n[0]).contains("meta time <"),
        "the jump carries the deadline"
    );
    while started.elapsed() < ttl {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        tcp_connects(&n[0], addr(1, 8001), T_OK),
        "after the deadline traffic flows with nobody healing"
    );
    assert!(
        ruleset(&n[0]).contains("chaos fault expiring"),
        "the inert rules stay"
    );
    let path = state_file(&dir);
    n[0].run(move || {
        let inj = Injector::new(&path, &[]).unwrap();
        assert_eq!(
            inj.startup_heal().healed.len(),
            1,
            "the next injector removes them"
        );
    });
    assert!(!ruleset(&n[0]).contains(nft::TABLE));
}
