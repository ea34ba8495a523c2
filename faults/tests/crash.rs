//! A process holding every kind of network fault is SIGKILLed; `heal_leftovers` on its state
//! file removes everything it installed and nothing else.

mod common;

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::Duration;

use chaos_faults::{
    Bandwidth, Direction, FaultSpec, Injector, NetScope, PacketEffects, heal_leftovers, nft, probe,
};
use common::{Lan, udp_delivered};
use nix::sched::{CloneFlags, setns};

const CHILD_ENV: &str = "CHAOS_FAULTS_CRASH_CHILD";

/// Not a test on its own: the body of the child process the crash test SIGKILLs (run with
/// `--ignored` by that test).
#[test]
#[ignore = "child process of sigkilled_process_leftovers_are_healed_exactly"]
fn crash_child() {
    let spec = std::env::var(CHILD_ENV).expect("run by sigkilled_process_leftovers_are_healed_exactly");
    let (ns, state) = spec.split_once(',').expect("ns,state");
    let file = File::open(format!("/run/netns/{ns}")).unwrap();
    setns(&file, CloneFlags::CLONE_NEWNET).unwrap();
    let mut inj = Injector::new(state, &[7700]).unwrap();
    let peer = IpAddr::V4(Lan::v4(1));
    let out = NetScope::peers([peer]).direction(Direction::Out);
    inj.inject(
        "part",
        &FaultSpec::Partition {
            scope: NetScope::peers([peer]).direction(Direction::In),
        },
    )
    .unwrap();
    inj.inject(
        "loss",
        &FaultSpec::Loss {
            scope: out.clone(),
            percent: 50.0,
        },
    )
    .unwrap();
    let effects = PacketEffects {
        delay_us: 20_000,
        ..PacketEffects::default()
    };
    inj.inject("delay", &FaultSpec::Packet { scope: out, effects })
        .unwrap();
    let bw = Bandwidth {
        interface: "eth0".into(),
        rate_bps: 1_000_000,
        burst_bytes: 0,
        limit_bytes: 0,
        exempt_tcp_ports: vec![],
    };
    inj.inject("bw", &FaultSpec::Bandwidth(bw)).unwrap();
    println!("READY");
    std::thread::sleep(Duration::from_secs(60));
}

fn text(out: std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn sigkilled_process_leftovers_are_healed_exactly() {
    require_root!();
    let lan = Lan::new(2);
    let n = &lan.nodes;
    let foreign = n[0].exec(&[
        "nft",
        "add table inet other; add chain inet other c; add rule inet other c udp dport 1 counter",
    ]);
    assert!(foreign.status.success());
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("faults.json");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_child",
            "--ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_ENV, format!("{},{}", n[0].name, state.display()))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = lines.any(|l| l.map(|l| l.contains("READY")).unwrap_or(false));
    assert!(ready, "child never got its faults in place");
    let rules = text(n[0].exec(&["nft", "list", "ruleset"]));
    assert!(
        rules.contains(nft::TABLE) && rules.contains("chaos fault delay"),
        "{rules}"
    );
    let qd = text(n[0].exec(&["tc", "qdisc", "show", "dev", "eth0"]));
    assert!(
        qd.contains("htb c4a0:") && qd.contains("tbf c4a1:"),
        "exempt port 7700 → htb root: {qd}"
    );
    assert_eq!(
        udp_delivered(&n[1], &n[0], SocketAddr::new(IpAddr::V4(Lan::v4(0)), 9600), 50),
        0,
        "partitioned"
    );

    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let state2 = state.clone();
    let report = n[0].run(move || heal_leftovers(&state2).unwrap());
    assert_eq!(report.healed.len(), 4, "{report:?}");
    let rules = text(n[0].exec(&["nft", "list", "ruleset"]));
    assert!(!rules.contains(nft::TABLE), "{rules}");
    assert!(
        rules.contains("table inet other") && rules.contains("udp dport 1"),
        "foreign table kept: {rules}"
    );
    let qd = text(n[0].exec(&["tc", "qdisc", "show"]));
    assert!(!qd.contains("c4a0") && !qd.contains("c4a1"), "{qd}");
    let ipt = text(n[0].exec(&["iptables-save"]));
    assert!(!ipt.contains("chaos") && !ipt.contains("NFQUEUE"), "{ipt}");
    let to0 = SocketAddr::new(IpAddr::V4(Lan::v4(0)), 9601);
    let to1 = SocketAddr::new(IpAddr::V4(Lan::v4(1)), 9602);
    assert_eq!(udp_delivered(&n[1], &n[0], to0, 100), 100, "inbound healed");
    assert_eq!(
        udp_delivered(&n[0], &n[1], to1, 100),
        100,
        "outbound healed (no loss, no blackholed queue)"
    );
    // Healing again is a no-op.
    let state3 = state.clone();
    let again = n[0].run(move || heal_leftovers(&state3).unwrap());
    assert!(again.healed.is_empty() && again.already_gone.is_empty());
}

#[test]
fn probe_reports_this_kernel() {
    require_root!();
    let lan = Lan::new(1);
    let caps = lan.nodes[0].run(probe);
    eprintln!("{}", serde_json::to_string_pretty(&caps).unwrap());
    assert!(caps.nftables_netlink.available, "{:?}", caps.nftables_netlink);
    assert!(caps.external_binaries.is_empty());
    // Each absent capability explains itself.
    for c in [
        &caps.netem,
        &caps.nft_queue,
        &caps.nfqueue,
        &caps.tbf,
        &caps.cgroup_v1_freezer,
    ] {
        assert!(!c.detail.is_empty());
    }
    // Whatever the probe says about netem must match the kernel.
    let netem_loaded = std::path::Path::new("/sys/module/sch_netem").exists();
    if netem_loaded {
        assert!(caps.netem.available);
    }
}
