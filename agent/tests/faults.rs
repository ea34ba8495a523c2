//! Faults through the agent's API, for real: network faults on an agent running inside a
//! throwaway network namespace (reached from the host over a veth pair), process faults on
//! processes the agent started, crash recovery through `--state-dir`, TTL expiry, and the
//! heal-before-exit guarantees.
//!
//! (One file, past the usual size: every test shares the namespace-and-agent fixture below.)

mod common;
mod fault_agent;

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chaos_proto::fault::{
    Bandwidth, FaultKind, FaultRequest, FaultSpec, FreezeTarget, HealReply, IpNet, LinkChange, Mechanism,
    NetScope, ProbeReport,
};
use chaos_proto::{
    ErrorKind, NodeSignalRequest, ProcInfo, ProcSpec, ProcStarted, RestartRequest, Signal, SignalTarget,
};
use common::{WAIT, group_members, is_dead};
use fault_agent::{Pki, TestAgent, TestCgroup, grows, quiet, size, wait_until, writer};
use hyper::{Method, StatusCode};
use nix::sched::{CloneFlags, setns};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The table our faults live in (see `chaos_faults::nft::TABLE`).
const OUR_TABLE: &str = "chaos_agent";
/// Handle major of our qdiscs (see `chaos_faults::QDISC_HANDLE`).
const OUR_QDISC: &str = "c4a0:";

fn root_skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root to create network namespaces".into());
    }
    for tool in ["ip", "nft", "tc"] {
        if Command::new(tool).arg("-V").output().is_err() {
            return Some(format!(
                "the `{tool}` command is needed for test setup and inspection"
            ));
        }
    }
    None
}

macro_rules! require_root {
    () => {
        if let Some(why) = root_skip_reason() {
            chaos_testkit::skip("faults", "root", &why);
            return;
        }
    };
}

fn run(cmd: &[&str]) -> Output {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .expect("spawn test setup command");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A network namespace `cft-agent-<pid>-<n>` joined to the host by a veth pair: the host end
/// has `host_ip`, the namespace end (`eth0`) has `node_ip`. Deleted on drop, even on panic.
struct Node {
    ns: String,
    host_if: String,
    host_ip: Ipv4Addr,
    node_ip: Ipv4Addr,
}

impl Node {
    fn new() -> Self {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        assert!(n < 64, "too many namespaces for one /24");
        let pid = std::process::id();
        let node = Self {
            ns: format!("cft-agent-{pid}-{n}"),
            host_if: format!("cfa{}x{n}", pid % 1_000_000),
            host_ip: Ipv4Addr::new(10, 241, (pid % 256) as u8, (4 * n + 1) as u8),
            node_ip: Ipv4Addr::new(10, 241, (pid % 256) as u8, (4 * n + 2) as u8),
        };
        run(&["ip", "netns", "add", &node.ns]);
        // From here on, Drop cleans up whatever the rest of the setup managed.
        run(&["ip", "-n", &node.ns, "link", "set", "lo", "up"]);
        run(&[
            "ip",
            "link",
            "add",
            &node.host_if,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &node.ns,
        ]);
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{}/30", node.host_ip),
            "dev",
            &node.host_if,
        ]);
        run(&["ip", "link", "set", &node.host_if, "up"]);
        run(&[
            "ip",
            "-n",
            &node.ns,
            "addr",
            "add",
            &format!("{}/30", node.node_ip),
            "dev",
            "eth0",
        ]);
        run(&["ip", "-n", &node.ns, "link", "set", "eth0", "up"]);
        node
    }

    /// Runs a command inside the namespace, returning its stdout (any status).
    fn exec(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .args(args)
            .output()
            .expect("spawn ip netns exec");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn ruleset(&self) -> String {
        self.exec(&["nft", "list", "ruleset"])
    }

    fn qdiscs(&self) -> String {
        self.exec(&["tc", "qdisc", "show", "dev", "eth0"])
    }

    /// Runs `f` on a thread that entered the namespace (processes it spawns live there too).
    fn run_in<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.ns);
        std::thread::spawn(move || {
            let file = File::open(&path).expect("open netns file");
            setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("namespace thread panicked")
    }

    /// A TCP server on the node (not the agent) at `node_ip:port`, accepting until dropped.
    fn tcp_server(&self, port: u16) -> TcpServer {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let addr = SocketAddr::new(IpAddr::V4(self.node_ip), port);
        let listener = self.run_in(move || std::net::TcpListener::bind(addr).expect("bind node server"));
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((s, _)) => drop(s),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        TcpServer { addr, stop }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
        // The host end goes with its peer; this only matters if the move into the namespace failed.
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .stderr(Stdio::null())
            .output();
    }
}

/// An agent inside `node`'s namespace, listening on its address.
fn start_in(node: &Node, pki: &Pki, root: &Path, extra: &[&str]) -> TestAgent {
    let cmd = TestAgent::command(&[], IpAddr::V4(node.node_ip), pki, root, extra);
    TestAgent::spawn(cmd, pki, |mut cmd| node.run_in(move || cmd.spawn()))
}

struct TcpServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl TcpServer {
    /// Whether a connection from the host gets through within `bound`.
    async fn reachable(&self, bound: Duration) -> bool {
        matches!(
            tokio::time::timeout(bound, tokio::net::TcpStream::connect(self.addr)).await,
            Ok(Ok(_))
        )
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn full_partition() -> FaultSpec {
    FaultSpec::Partition {
        scope: NetScope {
            peers: vec!["0.0.0.0/0".parse::<IpNet>().unwrap()],
            ..NetScope::default()
        },
    }
}

fn bandwidth() -> FaultSpec {
    FaultSpec::Bandwidth(Bandwidth {
        interface: "eth0".into(),
        rate_bps: 10_000_000,
        burst_bytes: 0,
        limit_bytes: 0,
        exempt_tcp_ports: vec![],
    })
}

#[tokio::test]
async fn full_partition_spares_the_control_port_and_heals() {
    require_root!();
    let node = Node::new();
    let pki = Pki::new(IpAddr::V4(node.node_ip));
    let root = tempfile::tempdir().unwrap();
    let agent = start_in(&node, &pki, root.path(), &[]);
    let server = node.tcp_server(7000);
    assert!(
        server.reachable(Duration::from_secs(2)).await,
        "no path before the fault"
    );

    let info = agent.inject(Some("part"), 60_000, full_partition()).await;
    assert_eq!(info.id, "part");
    assert_eq!(info.mechanism, Mechanism::NftablesNetlink);
    assert_eq!(info.expires_ms - info.injected_ms, 60_000);
    assert!(
        !server.reachable(Duration::from_millis(500)).await,
        "TCP from {} to {} passed a full partition",
        node.host_ip,
        server.addr
    );
    // Control traffic survives: fresh connections, TLS and all.
    let listed = agent.faults().await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, "part");
    let _info: chaos_proto::NodeInfo = agent.ok(Method::GET, "/v1/info", &()).await;
    assert!(node.ruleset().contains(OUR_TABLE), "{}", node.ruleset());

    // A second fault with the same id is a conflict; bad TTLs name ttl_ms.
    let e = agent
        .fails(
            Method::POST,
            "/v1/faults",
            &FaultRequest {
                id: Some("part".into()),
                ttl_ms: 1000,
                spec: full_partition(),
            },
        )
        .await;
    assert_eq!(e.kind, ErrorKind::Conflict, "{e}");
    for ttl_ms in [0, 24 * 3600 * 1000 + 1] {
        let req = FaultRequest {
            id: None,
            ttl_ms,
            spec: full_partition(),
        };
        let e = agent.fails(Method::POST, "/v1/faults", &req).await;
        assert_eq!(e.kind, ErrorKind::InvalidRequest);
        assert!(e.message.contains("ttl_ms"), "{e}");
    }
    let no_ttl = serde_json::json!({ "spec": { "kind": "partition", "scope": {} } });
    let e = agent.fails(Method::POST, "/v1/faults", &no_ttl).await;
    assert!(e.message.contains("ttl_ms"), "{e}");

    let reply: HealReply = agent.ok(Method::DELETE, "/v1/faults/part", &()).await;
    assert!(reply.healed);
    let again: HealReply = agent.ok(Method::DELETE, "/v1/faults/part", &()).await;
    assert!(!again.healed, "heal is idempotent");
    assert!(
        server.reachable(Duration::from_secs(2)).await,
        "heal did not restore TCP"
    );
    assert!(agent.faults().await.is_empty());
    assert!(!node.ruleset().contains(OUR_TABLE), "{}", node.ruleset());

    // DELETE /v1/faults heals everything and names what it healed.
    let a = agent.inject(None, 60_000, full_partition()).await;
    let b = agent.inject(None, 60_000, bandwidth()).await;
    assert_ne!(a.id, b.id);
    assert_eq!(
        b.mechanism,
        Mechanism::HtbTbfNetlink,
        "the control port is exempt"
    );
    let mut healed: Vec<String> = agent.ok(Method::DELETE, "/v1/faults", &()).await;
    healed.sort();
    let mut expected = vec![a.id, b.id];
    expected.sort();
    assert_eq!(healed, expected);
    assert!(!node.ruleset().contains(OUR_TABLE));
    assert!(!node.qdiscs().contains(OUR_QDISC), "{}", node.qdiscs());
}

#[tokio::test]
async fn ttl_expiry_heals_by_itself() {
    require_root!();
    let node = Node::new();
    let pki = Pki::new(IpAddr::V4(node.node_ip));
    let root = tempfile::tempdir().unwrap();
    let agent = start_in(&node, &pki, root.path(), &[]);
    let server = node.tcp_server(7001);

    let injected = Instant::now();
    let info = agent.inject(None, 500, full_partition()).await;
    assert!(info.id.starts_with('f'), "generated id {:?}", info.id);
    assert!(!server.reachable(Duration::from_millis(200)).await);
    let mut gone = false;
    while injected.elapsed() < Duration::from_millis(1500) {
        if agent.faults().await.is_empty() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "fault still listed 1.5 s after a 500 ms TTL");
    assert!(
        injected.elapsed() >= Duration::from_millis(450),
        "healed before its TTL"
    );
    assert!(
        server.reachable(Duration::from_secs(1)).await,
        "traffic still blocked after the TTL"
    );
    assert!(!node.ruleset().contains(OUR_TABLE));
    assert!(agent.stderr().contains("TTL expired"), "{}", agent.stderr());
}

#[tokio::test]
async fn a_sigkilled_agents_faults_are_healed_by_the_next_one() {
    require_root!();
    let node = Node::new();
    let pki = Pki::new(IpAddr::V4(node.node_ip));
    let root = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let state_arg = state.path().to_str().unwrap();
    let server = node.tcp_server(7002);
    // Someone else's table: ours must never touch it.
    let foreign = node.exec(&["sh", "-c", "nft add table inet cft_foreign && echo ok"]);
    assert!(foreign.contains("ok"));

    let mut first = start_in(&node, &pki, root.path(), &["--state-dir", state_arg]);
    first.inject(Some("part"), 60_000, full_partition()).await;
    first.inject(Some("bw"), 60_000, bandwidth()).await;
    assert!(node.qdiscs().contains(OUR_QDISC), "{}", node.qdiscs());
    first.child.kill().unwrap(); // SIGKILL: nothing healed
    first.child.wait().unwrap();
    assert!(node.ruleset().contains(OUR_TABLE), "the kill left the rules");
    assert!(!server.reachable(Duration::from_millis(300)).await);

    let second = start_in(&node, &pki, root.path(), &["--state-dir", state_arg]);
    let log = second.stderr();
    assert!(
        log.contains("healed a fault left by a previous agent") && log.contains("part") && log.contains("bw"),
        "{log}"
    );
    let rules = node.ruleset();
    assert!(!rules.contains(OUR_TABLE), "{rules}");
    assert!(
        rules.contains("cft_foreign"),
        "someone else's table is gone: {rules}"
    );
    assert!(!node.qdiscs().contains(OUR_QDISC), "{}", node.qdiscs());
    assert!(server.reachable(Duration::from_secs(2)).await);
    assert!(second.faults().await.is_empty());

    // One agent per state directory.
    let third = Command::new(common::agent_bin())
        .args(["--listen", "127.0.0.1:0", "--tls-dir"])
        .arg(pki.node_dir.path())
        .args(["--state-dir", state_arg])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&third.stderr);
    assert!(!third.status.success());
    assert!(
        err.contains("--state-dir") && err.contains("another chaos-agent"),
        "{err}"
    );
}

#[tokio::test]
async fn shutdown_heals_and_thaws_before_killing() {
    require_root!();
    let node = Node::new();
    let pki = Pki::new(IpAddr::V4(node.node_ip));
    let root = tempfile::tempdir().unwrap();
    let mut agent = start_in(&node, &pki, root.path(), &[]);
    let file = root.path().join("w.log");
    let proc = agent.start_proc(&writer(&file)).await;
    agent.inject(None, 60_000, full_partition()).await;
    agent
        .inject(
            None,
            60_000,
            FaultSpec::Freeze(FreezeTarget::Proc { id: proc.id }),
        )
        .await;
    let (status, _) = agent.call(Method::POST, "/v1/shutdown", Bytes::new()).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let exit = agent.wait_exit(Duration::from_secs(10)).expect("agent exits");
    assert_eq!(exit.code(), Some(0));
    assert!(!node.ruleset().contains(OUR_TABLE), "{}", node.ruleset());
    assert!(
        wait_until(Duration::from_secs(2), || is_dead(proc.pid)).await,
        "the frozen process survived shutdown"
    );
    assert!(
        agent.stderr().contains("shutdown: healed every fault"),
        "{}",
        agent.stderr()
    );
    assert!(
        !root.path().join(".chaos-agent").exists(),
        "a clean shutdown leaves no state directory behind"
    );
}

#[tokio::test]
async fn heartbeat_loss_heals_before_exiting() {
    require_root!();
    let node = Node::new();
    let pki = Pki::new(IpAddr::V4(node.node_ip));
    let root = tempfile::tempdir().unwrap();
    let mut agent = start_in(&node, &pki, root.path(), &["--heartbeat-timeout", "1s"]);
    agent.inject(None, 60_000, full_partition()).await;
    let exit = agent.wait_exit(Duration::from_secs(5)).expect("agent exits");
    assert_eq!(exit.code(), Some(3));
    assert!(!node.ruleset().contains(OUR_TABLE), "{}", node.ruleset());
    assert!(agent.stderr().contains("heartbeat loss: healed every fault"));
}

#[tokio::test]
async fn link_faults_spare_the_control_interface_and_missing_things_are_named() {
    require_root!();
    let node = Node::new();
    let pki = Pki::new(IpAddr::V4(node.node_ip));
    let root = tempfile::tempdir().unwrap();
    let agent = start_in(&node, &pki, root.path(), &[]);
    let req = |spec| FaultRequest {
        id: None,
        ttl_ms: 10_000,
        spec,
    };

    for change in [
        LinkChange {
            interface: "eth0".into(),
            up: Some(false),
            mtu: None,
            force: false,
        },
        LinkChange {
            interface: "eth0".into(),
            up: None,
            mtu: Some(1280),
            force: false,
        },
    ] {
        let e = agent
            .fails(Method::POST, "/v1/faults", &req(FaultSpec::Link(change)))
            .await;
        assert_eq!(e.kind, ErrorKind::InvalidRequest);
        assert!(e.message.contains("eth0") && e.message.contains("control"), "{e}");
    }
    // The loopback carries no control address here: its MTU may change, and heals back.
    let lo = agent
        .inject(
            None,
            10_000,
            FaultSpec::Link(LinkChange {
                interface: "lo".into(),
                up: None,
                mtu: Some(1500),
                force: false,
            }),
        )
        .await;
    assert!(node.exec(&["ip", "link", "show", "lo"]).contains("mtu 1500"));
    let _: HealReply = agent
        .ok(Method::DELETE, &format!("/v1/faults/{}", lo.id), &())
        .await;
    assert!(node.exec(&["ip", "link", "show", "lo"]).contains("mtu 65536"));

    let e = agent
        .fails(
            Method::POST,
            "/v1/faults",
            &req(FaultSpec::Link(LinkChange {
                interface: "nope0".into(),
                up: Some(false),
                mtu: None,
                force: false,
            })),
        )
        .await;
    assert_eq!(e.kind, ErrorKind::NotFound);
    assert!(e.message.contains("nope0"), "{e}");

    // Without --cgroup no cgroup is the node's (the freezer's own errors are covered by
    // chaos-faults' tests).
    let not_a_cgroup = tempfile::tempdir().unwrap();
    let e = agent
        .fails(
            Method::POST,
            "/v1/faults",
            &req(FaultSpec::Freeze(FreezeTarget::Cgroup {
                path: not_a_cgroup.path().to_str().unwrap().into(),
            })),
        )
        .await;
    assert_eq!(e.kind, ErrorKind::PermissionDenied);
    assert!(e.message.contains("without --cgroup"), "{e}");
    assert!(
        agent.faults().await.is_empty(),
        "failed injections leave nothing listed"
    );

    let probe: ProbeReport = agent.ok(Method::GET, "/v1/probe", &()).await;
    assert!(probe.has("nfqueue"), "{probe:?}");
    assert!(!probe.has("netem"), "this kernel has no sch_netem: {probe:?}");
    assert!(
        probe
            .missing()
            .any(|(name, why)| name == "netem" && !why.is_empty())
    );
    assert_eq!(
        probe.kind(FaultKind::Packet).unwrap().mechanism,
        Some(Mechanism::NfqueueUserspace {
            queue: chaos_faults::FIRST_QUEUE
        })
    );
    for kind in FaultKind::ALL {
        assert!(probe.supports(kind), "{kind} unsupported here: {probe:?}");
    }
    assert_eq!(
        probe.kind(FaultKind::Freeze).unwrap().mechanism,
        Some(Mechanism::SigStopTree),
        "no --cgroup"
    );
}

/// Freeze by proc id stops the writer, heal resumes it; `all_procs` freezes every process
/// but never the agent.
async fn freeze_round(agent: &TestAgent, dir: &Path, expected: Mechanism) {
    let a = dir.join("a.log");
    let b = dir.join("b.log");
    let pa = agent.start_proc(&writer(&a)).await;
    let pb = agent.start_proc(&writer(&b)).await;
    assert!(
        wait_until(WAIT, || size(&a) > 0 && size(&b) > 0).await,
        "writers never wrote"
    );

    let f = agent
        .inject(None, 30_000, FaultSpec::Freeze(FreezeTarget::Proc { id: pa.id }))
        .await;
    assert_eq!(f.mechanism, expected);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !grows(&a, Duration::from_millis(400)).await,
        "frozen writer kept writing"
    );
    assert!(
        grows(&b, Duration::from_millis(400)).await,
        "the other writer stopped too"
    );
    let _: HealReply = agent
        .ok(Method::DELETE, &format!("/v1/faults/{}", f.id), &())
        .await;
    assert!(
        grows(&a, Duration::from_millis(400)).await,
        "writer did not resume after heal"
    );

    let all = agent
        .inject(Some("all"), 30_000, FaultSpec::Freeze(FreezeTarget::AllProcs))
        .await;
    assert_eq!(all.mechanism, expected);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (sa, sb) = (size(&a), size(&b));
    // The agent still answers while every process it started is frozen.
    let listed = agent.faults().await;
    assert_eq!(listed.len(), 1);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        (size(&a), size(&b)),
        (sa, sb),
        "a node-level freeze let writes through"
    );
    let _: HealReply = agent.ok(Method::DELETE, "/v1/faults/all", &()).await;
    assert!(grows(&a, Duration::from_millis(400)).await && grows(&b, Duration::from_millis(400)).await);

    let e = agent
        .fails(
            Method::POST,
            "/v1/faults",
            &FaultRequest {
                id: None,
                ttl_ms: 1000,
                spec: FaultSpec::Freeze(FreezeTarget::Proc { id: 999 }),
            },
        )
        .await;
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    let mut killed: Vec<u64> = agent
        .ok(Method::POST, "/v1/procs/kill-all", &serde_json::json!({}))
        .await;
    killed.sort();
    assert_eq!(killed, [pa.id, pb.id]);
}

#[tokio::test]
async fn freeze_by_proc_id_with_sigstop() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let agent = TestAgent::start(&pki, dir.path(), &[]);
    freeze_round(&agent, dir.path(), Mechanism::SigStopTree).await;
}

#[tokio::test]
async fn freeze_by_proc_id_with_the_cgroup_freezer() {
    if !nix::unistd::geteuid().is_root() {
        chaos_testkit::skip(
            "freeze_by_proc_id_with_the_cgroup_freezer",
            "root",
            &"creating a cgroup needs root",
        );
        return;
    }
    let Some(cg) = TestCgroup::create() else { return };
    if !cg.0.join("cgroup.freeze").exists() {
        chaos_testkit::skip(
            "freeze_by_proc_id_with_the_cgroup_freezer",
            "cgroup2",
            &"this kernel has no cgroup.freeze",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let agent = TestAgent::start(&pki, dir.path(), &["--cgroup", cg.0.to_str().unwrap()]);
    freeze_round(&agent, dir.path(), Mechanism::CgroupV2Freeze).await;
    let probe: ProbeReport = agent.ok(Method::GET, "/v1/probe", &()).await;
    assert_eq!(
        probe.kind(FaultKind::Freeze).unwrap().mechanism,
        Some(Mechanism::CgroupV2Freeze)
    );
    drop(agent);
}

#[tokio::test]
async fn kill_all_kills_every_tree() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let agent = TestAgent::start(&pki, dir.path(), &[]);
    let tree = quiet(ProcSpec::new("sh", ["-c", "sleep 100 & sleep 100"]));
    let a = agent.start_proc(&tree).await;
    let b = agent.start_proc(&tree).await;
    let mut members = Vec::new();
    assert!(
        wait_until(WAIT, || {
            members = [a.pid, b.pid].iter().flat_map(|&p| group_members(p)).collect();
            members.len() >= 4
        })
        .await,
        "trees not complete: {members:?}"
    );
    let mut ids: Vec<u64> = agent
        .ok(Method::POST, "/v1/procs/kill-all", &serde_json::json!({}))
        .await;
    ids.sort();
    assert_eq!(ids, [a.id, b.id]);
    // SIGKILL replies once the trees are reaped.
    let alive: Vec<u32> = members.iter().copied().filter(|&p| !is_dead(p)).collect();
    assert!(alive.is_empty(), "survived kill-all: {alive:?}");
    let procs: Vec<ProcInfo> = agent.ok(Method::GET, "/v1/procs", &()).await;
    assert!(
        procs.iter().all(|p| p.exit.and_then(|e| e.signal) == Some(9)),
        "{procs:?}"
    );
    let again: Vec<u64> = agent.ok(Method::POST, "/v1/procs/kill-all", &()).await;
    assert!(again.is_empty(), "nothing left to signal: {again:?}");

    // Another signal, to the whole tree: SIGTERM ends both shells and their sleeps.
    let c = agent.start_proc(&tree).await;
    assert!(wait_until(WAIT, || group_members(c.pid).len() >= 2).await);
    let tree_c = group_members(c.pid);
    let ids: Vec<u64> = agent
        .ok(
            Method::POST,
            "/v1/procs/kill-all",
            &serde_json::json!({ "signal": 15 }),
        )
        .await;
    assert_eq!(ids, [c.id]);
    assert!(
        wait_until(Duration::from_secs(3), || tree_c.iter().all(|&p| is_dead(p))).await,
        "SIGTERM did not reach the tree {tree_c:?}"
    );
}

fn cmdline(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .replace('\0', " ")
}

#[tokio::test]
async fn restart_runs_the_same_command_under_a_new_pid() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let agent = TestAgent::start(&pki, dir.path(), &[]);
    let first = agent.start_proc(&quiet(ProcSpec::new("sleep", ["101"]))).await;
    let second: ProcStarted = agent
        .ok(
            Method::POST,
            &format!("/v1/procs/{}/restart", first.id),
            &RestartRequest::default(),
        )
        .await;
    assert_ne!(second.pid, first.pid);
    assert_ne!(second.id, first.id);
    assert!(is_dead(first.pid));
    assert!(
        wait_until(WAIT, || cmdline(second.pid) == "sleep 101 ").await,
        "{:?}",
        cmdline(second.pid)
    );
    let procs: Vec<ProcInfo> = agent.ok(Method::GET, "/v1/procs", &()).await;
    let old = procs.iter().find(|p| p.id == first.id).unwrap();
    assert_eq!(old.exit.and_then(|e| e.signal), Some(15), "stopped with SIGTERM");
    let e = agent
        .fails(
            Method::POST,
            &format!("/v1/procs/{}/restart", first.id),
            &RestartRequest::default(),
        )
        .await;
    assert_eq!(e.kind, ErrorKind::Conflict, "restarting twice: {e}");

    // A process ignoring SIGTERM gets SIGKILL once the grace period is over.
    let stubborn = agent
        .start_proc(&quiet(ProcSpec::new(
            "sh",
            ["-c", "trap '' TERM; sleep 102; true"],
        )))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await; // let sh install the trap
    let began = Instant::now();
    let third: ProcStarted = agent
        .ok(
            Method::POST,
            &format!("/v1/procs/{}/restart", stubborn.id),
            &serde_json::json!({ "signal": 15, "grace_ms": 300 }),
        )
        .await;
    assert!(
        began.elapsed() >= Duration::from_millis(300),
        "{:?}",
        began.elapsed()
    );
    let procs: Vec<ProcInfo> = agent.ok(Method::GET, "/v1/procs", &()).await;
    let old = procs.iter().find(|p| p.id == stubborn.id).unwrap();
    assert_eq!(old.exit.and_then(|e| e.signal), Some(9));
    assert!(wait_until(WAIT, || cmdline(third.pid).contains("sleep 102")).await);
}

#[tokio::test]
async fn signal_reaches_processes_by_pid_group_and_name() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let agent = TestAgent::start(&pki, dir.path(), &[]);
    // A unique command name, so no other process on the machine matches.
    let name = format!("cfs{}", std::process::id());
    let link = dir.path().join(&name);
    let sleep = ["/bin/sleep", "/usr/bin/sleep"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("a sleep binary");
    std::os::unix::fs::symlink(sleep, &link).unwrap();
    let named = agent
        .start_proc(&quiet(ProcSpec::new(link.to_str().unwrap(), ["100"])))
        .await;
    let by_name = NodeSignalRequest {
        signal: Signal::TERM,
        target: SignalTarget::Name(name.clone()),
    };
    assert!(
        wait_until(WAIT, || std::fs::read_to_string(format!(
            "/proc/{}/comm",
            named.pid
        ))
        .is_ok_and(|c| c.trim() == name))
        .await
    );
    let pids: Vec<u32> = agent.ok(Method::POST, "/v1/signal", &by_name).await;
    assert_eq!(pids, [named.pid]);
    let exit: chaos_proto::WaitReply = agent
        .ok(
            Method::POST,
            &format!("/v1/procs/{}/wait?timeout_ms=5000", named.id),
            &(),
        )
        .await;
    assert_eq!(exit.exit.and_then(|e| e.signal), Some(15));
    let e = agent.fails(Method::POST, "/v1/signal", &by_name).await;
    assert_eq!(e.kind, ErrorKind::NotFound);
    assert!(e.message.contains(&name), "{e}");

    let tree = agent
        .start_proc(&quiet(ProcSpec::new("sh", ["-c", "sleep 100 & sleep 100"])))
        .await;
    assert!(wait_until(WAIT, || group_members(tree.pid).len() >= 2).await);
    tokio::time::sleep(Duration::from_millis(200)).await; // let the shell finish forking
    let mut members = group_members(tree.pid);
    members.sort_unstable();
    let pids: Vec<u32> = agent
        .ok(
            Method::POST,
            "/v1/signal",
            &NodeSignalRequest {
                signal: Signal::KILL,
                target: SignalTarget::Group(tree.pid),
            },
        )
        .await;
    assert_eq!(pids, members);
    assert!(wait_until(Duration::from_secs(3), || members.iter().all(|&p| is_dead(p))).await);

    let one = agent.start_proc(&quiet(ProcSpec::new("sleep", ["100"]))).await;
    let pids: Vec<u32> = agent
        .ok(
            Method::POST,
            "/v1/signal",
            &NodeSignalRequest {
                signal: Signal::KILL,
                target: SignalTarget::Pid(one.pid),
            },
        )
        .await;
    assert_eq!(pids, [one.pid]);
    assert!(wait_until(Duration::from_secs(3), || is_dead(one.pid)).await);

    let agent_pid = agent.child.id();
    let e = agent
        .fails(
            Method::POST,
            "/v1/signal",
            &NodeSignalRequest {
                signal: Signal::STOP,
                target: SignalTarget::Pid(agent_pid),
            },
        )
        .await;
    assert_eq!(
        e.kind,
        ErrorKind::InvalidRequest,
        "the agent never signals itself: {e}"
    );
}

/// `ip -d link show dev IF` inside the node: every attribute a link fault could leave changed.
fn link_details(node: &Node, interface: &str) -> String {
    node.exec(&["ip", "-d", "link", "show", "dev", interface])
}

#[tokio::test]
async fn flaps_spare_the_control_interface_and_heal_exactly_at_ttl_and_after_sigkill() {
    require_root!();
    let node = Node::new();
    let pki = Pki::new(IpAddr::V4(node.node_ip));
    let root = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let state_arg = state.path().to_str().unwrap();
    // A second interface experiments may touch (a bare-metal node's data NIC).
    let made = node.exec(&[
        "sh",
        "-c",
        "ip link add exp0 type veth peer name exp1 && ip link set exp1 up && ip link set exp0 mtu 1400 up && echo ok",
    ]);
    assert!(made.contains("ok"), "{made}");
    let before = link_details(&node, "exp0");
    let qdiscs_before = node.exec(&["tc", "qdisc", "show", "dev", "exp0"]);
    let flap = |interface: &str, force: bool| {
        FaultSpec::Flap(chaos_proto::fault::LinkFlap {
            interface: interface.into(),
            period_ms: 100,
            count: 0,
            force,
        })
    };

    let first = start_in(&node, &pki, root.path(), &["--state-dir", state_arg]);
    let e = first
        .fails(
            Method::POST,
            "/v1/faults",
            &FaultRequest {
                id: None,
                ttl_ms: 10_000,
                spec: flap("eth0", false),
            },
        )
        .await;
    assert_eq!(e.kind, ErrorKind::InvalidRequest);
    assert!(
        e.message.contains("control") && e.message.contains("force"),
        "{e}"
    );

    // TTL: the flap stops and the link is exactly as before.
    let info = first.inject(Some("flap"), 600, flap("exp0", false)).await;
    assert_eq!(info.mechanism, Mechanism::RtnetlinkLinkFlap);
    let saw_down = wait_until(chaos_testkit::scaled(Duration::from_secs(2)), || {
        link_details(&node, "exp0").contains("state DOWN")
    })
    .await;
    assert!(saw_down, "the link never went down");
    let bound = chaos_testkit::scaled(Duration::from_secs(3));
    let started = Instant::now();
    while !first.faults().await.is_empty() {
        assert!(
            started.elapsed() < bound,
            "flap still listed {bound:?} after its 600 ms TTL"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(link_details(&node, "exp0"), before, "state after the TTL heal");

    // SIGKILL mid-flap with a changed MTU: the next agent restores exactly the previous state.
    first
        .inject(
            Some("mtu"),
            60_000,
            FaultSpec::Link(LinkChange {
                interface: "exp0".into(),
                up: None,
                mtu: Some(1280),
                force: false,
            }),
        )
        .await;
    first.inject(Some("flap2"), 60_000, flap("exp0", false)).await;
    tokio::time::sleep(Duration::from_millis(130)).await;
    let mut first = first;
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    assert!(link_details(&node, "exp0").contains("mtu 1280"));
    let second = start_in(&node, &pki, root.path(), &["--state-dir", state_arg]);
    assert!(second.faults().await.is_empty());
    assert_eq!(
        link_details(&node, "exp0"),
        before,
        "state after the SIGKILL heal"
    );
    assert_eq!(node.exec(&["tc", "qdisc", "show", "dev", "exp0"]), qdiscs_before);
}
