//! Network-hardware faults on veths: a flap of a fixed count ends with the link exactly as it
//! was (`ip -d link` and `tc qdisc` compared whole), an MTU change and a bandwidth limit on the
//! same link are undone exactly, and a fault scoped to one interface leaves the others alone.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use chaos_faults::{Bandwidth, Direction, FaultSpec, Injector, LinkChange, LinkFlap, Mechanism, NetScope};
use common::{Lan, Netns, udp_delivered};

fn text(out: std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Everything a link fault could leave changed on `interface`.
fn snapshot(ns: &Netns, interface: &str) -> (String, String) {
    (
        text(ns.exec(&["ip", "-d", "link", "show", "dev", interface])),
        text(ns.exec(&["tc", "qdisc", "show", "dev", interface])),
    )
}

#[test]
fn flap_mtu_and_bandwidth_restore_the_exact_previous_state() {
    require_root!();
    let lan = Lan::new(2);
    let n = &lan.nodes;
    let before = snapshot(&n[0], "eth0");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("faults.json");
    let (transitions, elapsed) = n[0].run(move || {
        let mut inj = Injector::new(&path, &[]).unwrap();
        let mtu = LinkChange {
            interface: "eth0".into(),
            up: None,
            mtu: Some(1280),
            force: false,
        };
        inj.inject("mtu", &FaultSpec::Link(mtu)).unwrap();
        let bw = Bandwidth {
            interface: "eth0".into(),
            rate_bps: 8_000_000,
            burst_bytes: 0,
            limit_bytes: 0,
            exempt_tcp_ports: vec![],
        };
        inj.inject("bw", &FaultSpec::Bandwidth(bw)).unwrap();
        let flap = LinkFlap {
            interface: "eth0".into(),
            period_ms: 200,
            count: 3,
            force: false,
        };
        let started = Instant::now();
        assert_eq!(
            inj.inject("flap", &FaultSpec::Flap(flap)).unwrap(),
            Mechanism::RtnetlinkLinkFlap
        );
        // Count the up→down transitions until the flap is over (3 × 200 ms), bounded.
        let mut transitions = 0;
        let mut was_up = true;
        let mut last_down = started;
        while started.elapsed() < chaos_testkit::scaled(Duration::from_secs(3)) {
            let up = chaos_faults::link::get("eth0").unwrap().up;
            if was_up && !up {
                transitions += 1;
                last_down = Instant::now();
            }
            was_up = up;
            if transitions == 3 && up && last_down.elapsed() > Duration::from_millis(300) {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let elapsed = started.elapsed();
        let state = chaos_faults::link::get("eth0").unwrap();
        assert!(state.up && state.mtu == 1280, "after the flap: {state:?}");
        inj.heal_all().unwrap();
        assert!(inj.active().is_empty());
        (transitions, elapsed)
    });
    assert_eq!(transitions, 3, "three flaps in {elapsed:?}");
    assert_eq!(snapshot(&n[0], "eth0"), before, "link and qdiscs as before");
    std::thread::sleep(Duration::from_millis(200));
    let to1 = SocketAddr::new(IpAddr::V4(Lan::v4(1)), 9700);
    assert_eq!(udp_delivered(&n[0], &n[1], to1, 50), 50, "traffic flows again");
}

#[test]
fn a_fault_scoped_to_an_interface_leaves_the_others_alone() {
    require_root!();
    let lan = Lan::new(2);
    let n = &lan.nodes;
    // A second, direct link between the two nodes: eth1 with 10.98.0.1 ↔ 10.98.0.2.
    n[0].ip(&[
        "link", "add", "eth1", "type", "veth", "peer", "name", "eth1", "netns", &n[1].name,
    ]);
    for (i, ns) in n.iter().enumerate() {
        ns.ip(&["addr", "add", &format!("10.98.0.{}/24", i + 1), "dev", "eth1"]);
        ns.ip(&["link", "set", "eth1", "up"]);
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("faults.json");
    let mut inj = n[0].run(move || {
        let mut inj = Injector::new(&path, &[]).unwrap();
        let scope = NetScope {
            interface: Some("eth1".into()),
            ..NetScope::default()
        }
        .direction(Direction::Out);
        inj.inject(
            "loss",
            &FaultSpec::Loss {
                scope,
                percent: 100.0,
            },
        )
        .unwrap();
        inj
    });
    std::thread::sleep(Duration::from_millis(100));
    let over_eth0 = SocketAddr::new(IpAddr::V4(Lan::v4(1)), 9710);
    let over_eth1 = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 98, 0, 2)), 9711);
    assert_eq!(udp_delivered(&n[0], &n[1], over_eth0, 50), 50, "eth0 untouched");
    assert_eq!(udp_delivered(&n[0], &n[1], over_eth1, 50), 0, "eth1 drops all");
    inj = n[0].run(move || {
        assert!(inj.heal("loss").unwrap());
        inj
    });
    let again = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 98, 0, 2)), 9712);
    assert_eq!(udp_delivered(&n[0], &n[1], again, 50), 50, "eth1 healed");
    drop(inj);
}
