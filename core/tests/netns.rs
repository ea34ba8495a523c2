//! Tests of the `netns` backend with real namespaces, links, cgroups and agents.
//!
//! Every test skips (saying why) when the backend cannot run here. Other tests — in this binary
//! and in others — create clusters at the same time, so leak checks look only for the names of
//! the cluster under test.

#![cfg(target_os = "linux")]

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chaos::backend::ClusterOptions;
use chaos::backend::netns::{self, NetnsCluster};
use chaos::{Cluster, Node, NodeExt, ProcSpec};
use tokio::io::AsyncReadExt;

mod common;
use common::footprint::{Footprint, footprint, stdout_of};

/// Bound on anything in these tests that should be quick.
const QUICK: Duration = Duration::from_secs(20);

fn available(test: &str) -> bool {
    match netns::availability() {
        Ok(()) => true,
        Err(why) => {
            chaos_testkit::skip(test, "netns", &why);
            false
        }
    }
}

async fn new_cluster(name: &str) -> NetnsCluster {
    let options = ClusterOptions {
        name: name.to_string(),
        ..ClusterOptions::default()
    };
    NetnsCluster::new(options)
        .await
        .unwrap_or_else(|e| panic!("{name}: creating a netns cluster: {e}"))
}

/// Records what `cluster` holds (it must have `nodes` nodes), checking the record is complete.
fn snapshot(cluster: &NetnsCluster, nodes: usize) -> Footprint {
    let snap = Footprint::record(
        cluster.provisioner().index(),
        cluster.provisioner().cgroup_dir().to_path_buf(),
        cluster.provisioner().dir().to_path_buf(),
    );
    let present = snap.resources();
    // The hub, each node's namespace, the host link, cgroup, temp dir and state file.
    assert_eq!(
        present.len(),
        1 + nodes + 1 + 3,
        "unexpected footprint: {present:?}"
    );
    assert!(
        snap.pids.len() >= nodes,
        "expected at least one process per node, found {:?}",
        snap.pids
    );
    snap
}

fn sh(script: &str) -> ProcSpec {
    ProcSpec::new("sh", ["-c", script])
}

/// Starts a process that lingers, so cleanup has something to kill.
async fn linger(node: &dyn Node) {
    let mut spec = sh("sleep 600");
    spec.stdout = chaos::proto::OutputSpec::Null;
    spec.stderr = chaos::proto::OutputSpec::Null;
    node.start(spec).await.expect("starting sleep");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_reach_each_other_and_the_runner_reaches_them() {
    if !available("nodes_reach_each_other_and_the_runner_reaches_them") {
        return;
    }
    let cluster = new_cluster("reach").await;
    let nodes = cluster.create_nodes(2).await.expect("creating 2 nodes");
    let (n1, n2) = (&nodes[0], &nodes[1]);
    assert_eq!((n1.name(), n2.name()), ("n1", "n2"));
    let ip1 = n1.addresses()[0].to_string();
    let ip2 = n2.addresses()[0].to_string();
    assert_eq!(
        ip1,
        netns::node_address(cluster.provisioner().index(), 1).to_string()
    );
    assert_eq!(
        ip2,
        netns::node_address(cluster.provisioner().index(), 2).to_string()
    );
    let firewall = stdout_of("iptables", &["-S", "FORWARD"]);
    eprintln!(
        "host FORWARD policy DROP: {}",
        firewall.contains("-P FORWARD DROP")
    );

    // The runner reaches each agent (over the cluster bridge): hello world with cat.
    for node in &nodes {
        let path = format!("{}/hello", node.root_dir());
        node.send_bytes(&path, b"Hello, world!".to_vec(), 0o644)
            .await
            .unwrap();
        let out = node.run("cat", [path.as_str()]).await.unwrap();
        assert!(out.status.success(), "{:?} {}", out.status, out.stderr_str());
        assert_eq!(out.stdout, b"Hello, world!");
    }

    // Each node sees only its own address, on eth0, in its own namespace.
    let out = n1.run("ip", ["-4", "-o", "addr", "show"]).await.unwrap();
    let text = out.stdout_str();
    assert!(text.contains(&format!("eth0    inet {ip1}/22")), "{text}");
    assert!(!text.contains(&ip2), "{text}");
    let ns = n1.run("ip", ["netns", "identify"]).await.unwrap().stdout_str();
    assert_eq!(ns.trim(), cluster.provisioner().node_netns("n1").unwrap());

    // Node to node: ICMP, then TCP from a client in n1 to a server in n2.
    let ping = n1
        .run("busybox", ["ping", "-c1", "-W2", ip2.as_str()])
        .await
        .unwrap();
    assert!(
        ping.status.success(),
        "ping n1 → n2: {}{}",
        ping.stdout_str(),
        ping.stderr_str()
    );
    let mut server = n2
        .start(ProcSpec::new("busybox", ["nc", "-l", "-p", "5000"]))
        .await
        .unwrap();
    let client = format!(
        "for i in $(seq 100); do echo hello-from-n1 2>/dev/null >/dev/tcp/{ip2}/5000 && exit 0; sleep 0.05; done; exit 1"
    );
    let sent = n1.run("bash", ["-c", client.as_str()]).await.unwrap();
    assert!(
        sent.status.success(),
        "client in n1 could not connect to n2: {}",
        sent.stderr_str()
    );
    let mut received = String::new();
    let mut stdout = server.stdout.take().unwrap();
    tokio::time::timeout(QUICK, stdout.read_to_string(&mut received))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(received, "hello-from-n1\n");
    let status = tokio::time::timeout(QUICK, server.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status:?}");

    // Independently of the agents: a plain process entered into the namespace reaches the peer.
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &cluster.provisioner().node_netns("n2").unwrap(),
            "busybox",
            "ping",
            "-c1",
            "-W2",
            &ip1,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ping n2 → n1 via ip netns exec: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    cluster.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusters_are_isolated_from_each_other() {
    if !available("clusters_are_isolated_from_each_other") {
        return;
    }
    let (a, b) = tokio::join!(new_cluster("iso-a"), new_cluster("iso-b"));
    assert_ne!(a.provisioner().index(), b.provisioner().index());
    let (na, nb) = tokio::join!(a.create_nodes(1), b.create_nodes(1));
    let (na, nb) = (na.unwrap().remove(0), nb.unwrap().remove(0));
    let target = format!("{}", nb.addresses()[0]);
    let script = format!("echo x >/dev/tcp/{target}/{}", netns::AGENT_PORT);
    let out = na.run("bash", ["-c", script.as_str()]).await.unwrap();
    assert!(
        !out.status.success(),
        "a node of cluster #{} reached cluster #{}",
        a.provisioner().index(),
        b.provisioner().index()
    );
    assert!(out.stderr_str().contains("unreachable"), "{}", out.stderr_str());
    let (ra, rb) = tokio::join!(a.cleanup(), b.cleanup());
    ra.unwrap();
    rb.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_leaves_nothing_and_is_idempotent() {
    if !available("cleanup_leaves_nothing_and_is_idempotent") {
        return;
    }
    let cluster = new_cluster("cleanup").await;
    let nodes = cluster.create_nodes(3).await.unwrap();
    for node in &nodes {
        linger(&**node).await;
    }
    let snap = snapshot(&cluster, 3);
    assert!(
        snap.pids.len() >= 6,
        "3 agents and 3 sleeps expected in the cgroups, got {:?}",
        snap.pids
    );
    cluster.cleanup().await.unwrap();
    snap.assert_gone_now();
    cluster.cleanup().await.expect("a second cleanup is a no-op");
    let err = cluster.create_nodes(1).await.expect_err("no nodes after cleanup");
    assert!(err.to_string().contains("cleaned up"), "{err}");
    // A node used after cleanup fails cleanly, within its bounds.
    let err = tokio::time::timeout(QUICK, nodes[0].run("true", Vec::<String>::new()))
        .await
        .unwrap();
    assert!(err.is_err());
}

#[test]
fn dropping_a_cluster_in_a_panicking_thread_leaves_nothing() {
    if !available("dropping_a_cluster_in_a_panicking_thread_leaves_nothing") {
        return;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let worker = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let cluster = new_cluster("panic").await;
            let nodes = cluster.create_nodes(2).await.unwrap();
            for node in &nodes {
                linger(&**node).await;
            }
            tx.send(snapshot(&cluster, 2)).unwrap();
            panic!("simulated test failure with a live cluster");
        });
    });
    assert!(worker.join().is_err(), "the worker was meant to panic");
    let snap = rx.recv().expect("the worker made a cluster before panicking");
    snap.assert_gone_now();
}

#[test]
fn dropping_a_cluster_after_its_runtime_is_gone_leaves_nothing() {
    if !available("dropping_a_cluster_after_its_runtime_is_gone_leaves_nothing") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (cluster, snap) = runtime.block_on(async {
        let cluster = new_cluster("no-runtime").await;
        let nodes = cluster.create_nodes(2).await.unwrap();
        linger(&*nodes[1]).await;
        let snap = snapshot(&cluster, 2);
        (cluster, snap)
    });
    drop(runtime);
    drop(cluster);
    snap.assert_gone_now();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_nodes_are_created_used_and_cleaned_up() {
    if !available("fifty_nodes_are_created_used_and_cleaned_up") {
        return;
    }
    let cluster = new_cluster("fifty").await;
    let started = Instant::now();
    let nodes = cluster.create_nodes(50).await.expect("creating 50 nodes");
    eprintln!("50 nodes ready in {:?}", started.elapsed());
    assert_eq!(nodes.len(), 50);
    let names: BTreeSet<_> = nodes.iter().map(|n| n.name().to_string()).collect();
    assert_eq!(names.len(), 50);
    let snap = snapshot(&cluster, 50);

    let runs = nodes.iter().map(|node| {
        let node = node.clone();
        async move {
            let out = node
                .run("sh", ["-c", "true && ip -4 -o addr show dev eth0"])
                .await
                .unwrap();
            assert!(out.status.success(), "{}: {}", node.name(), out.stderr_str());
            let want = format!("inet {}/22", node.addresses()[0]);
            assert!(
                out.stdout_str().contains(&want),
                "{}: {}",
                node.name(),
                out.stdout_str()
            );
        }
    });
    futures_util::future::join_all(runs).await;
    // The last node reaches the first across the bridge.
    let ping = nodes[49]
        .run(
            "busybox",
            ["ping", "-c1", "-W2", &nodes[0].addresses()[0].to_string()],
        )
        .await;
    assert!(ping.unwrap().status.success());

    let started = Instant::now();
    cluster.cleanup().await.unwrap();
    eprintln!("50 nodes cleaned up in {:?}", started.elapsed());
    snap.assert_gone_now();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_count_is_bounded_by_the_subnet() {
    if !available("node_count_is_bounded_by_the_subnet") {
        return;
    }
    let cluster = new_cluster("bounded").await;
    let err = cluster
        .create_nodes(netns::MAX_NODES as usize + 1)
        .await
        .expect_err("too many nodes");
    assert!(err.to_string().contains("at most 1021"), "{err}");
    cluster.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_file_describes_the_cluster() {
    if !available("the_state_file_describes_the_cluster") {
        return;
    }
    let cluster = new_cluster("state").await;
    cluster.create_nodes(2).await.unwrap();
    let text = std::fs::read_to_string(cluster.provisioner().state_file()).unwrap();
    let state: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(state["index"], cluster.provisioner().index());
    assert_eq!(state["cluster"], "state");
    assert_eq!(state["runner_pid"], std::process::id());
    assert_eq!(state["hub_netns"], cluster.provisioner().hub_netns());
    let nodes: Vec<&str> = state["node_netns"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(
        nodes,
        [
            cluster.provisioner().node_netns("n1").unwrap(),
            cluster.provisioner().node_netns("n2").unwrap()
        ]
    );
    assert_eq!(
        state["cgroup_dir"],
        cluster.provisioner().cgroup_dir().to_str().unwrap()
    );
    let shared: Arc<dyn Cluster> = Arc::new(cluster);
    shared.cleanup().await.unwrap();
}

/// Names of the node cgroups in a cluster's cgroup directory.
fn node_cgroups(cgroup_dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(cgroup_dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_node_creation_leaves_no_node_behind() {
    if !available("cancelled_node_creation_leaves_no_node_behind") {
        return;
    }
    let cluster = new_cluster("cancel").await;
    let (index, cgroup_dir, temp_dir) = (
        cluster.provisioner().index(),
        cluster.provisioner().cgroup_dir().to_path_buf(),
        cluster.provisioner().dir().to_path_buf(),
    );
    let mut expected = (
        footprint(index, &cgroup_dir, &temp_dir),
        node_cgroups(&cgroup_dir),
    );
    // Give up at several points of node creation: before, during and after the agents start.
    let mut cancelled = 0;
    for after_ms in [1, 3, 8, 15, 30] {
        match tokio::time::timeout(Duration::from_millis(after_ms), cluster.create_nodes(4)).await {
            Ok(made) => {
                // Done in time on a fast machine: these nodes legitimately exist now.
                assert_eq!(made.unwrap().len(), 4);
                expected = (
                    footprint(index, &cgroup_dir, &temp_dir),
                    node_cgroups(&cgroup_dir),
                );
                continue;
            }
            Err(_) => cancelled += 1,
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let now = (
                footprint(index, &cgroup_dir, &temp_dir),
                node_cgroups(&cgroup_dir),
            );
            if now == expected {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "cancelled after {after_ms} ms, nodes were left: {:?} cgroups {:?}",
                now.0.difference(&expected.0).collect::<Vec<_>>(),
                now.1.difference(&expected.1).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    assert!(cancelled > 0, "no attempt was cancelled");
    // The cluster still works after the cancelled attempts.
    let node = cluster.create_nodes(1).await.unwrap().remove(0);
    assert!(
        node.run("true", Vec::<String>::new())
            .await
            .unwrap()
            .status
            .success()
    );
    cluster.cleanup().await.unwrap();
    let leftovers = footprint(index, &cgroup_dir, &temp_dir);
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// `nsenter --net=<node's namespace> PROGRAM ARGS…`: what the kernel of the node says, asked
/// without the agent (and without `ip netns exec`, which would remount /sys).
fn in_node(cluster: &NetnsCluster, node: &str, program: &str, args: &[&str]) -> String {
    let netns = format!(
        "--net=/run/netns/{}",
        cluster.provisioner().node_netns(node).unwrap()
    );
    let mut argv = vec![netns.as_str(), program];
    argv.extend_from_slice(args);
    stdout_of("nsenter", &argv)
}

/// The agent processes of `node` (its cgroup's `agent` child).
fn agent_pids(cluster: &NetnsCluster, node: &str) -> Vec<u32> {
    common::footprint::cgroup_pids(&cluster.provisioner().cgroup_dir().join(node).join("agent"))
}

/// What of our faults the kernel of each node still holds: nftables table, qdiscs other than
/// the defaults, a frozen cgroup.
fn faults_in_kernel(cluster: &NetnsCluster, frozen_cgroup: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for node in ["n1", "n2", "n3"] {
        let ruleset = in_node(cluster, node, "nft", &["list", "ruleset"]);
        if ruleset.contains("chaos_agent") {
            found.push(format!("{node}: nftables table chaos_agent:\n{ruleset}"));
        }
        let qdiscs = in_node(cluster, node, "tc", &["qdisc", "show", "dev", "eth0"]);
        if ["tbf", "htb", "netem"].iter().any(|q| qdiscs.contains(q)) {
            found.push(format!("{node}: qdisc {qdiscs}"));
        }
    }
    let freeze = std::fs::read_to_string(frozen_cgroup.join("cgroup.freeze")).unwrap_or_default();
    let events = std::fs::read_to_string(frozen_cgroup.join("cgroup.events")).unwrap_or_default();
    if freeze.trim() != "0" || events.contains("frozen 1") {
        found.push(format!(
            "{}: cgroup.freeze {freeze:?}, cgroup.events {events:?}",
            frozen_cgroup.display()
        ));
    }
    found
}

/// Every agent of a cluster SIGKILLed while a partition, a bandwidth limit (tbf qdisc), a delay
/// (NFQUEUE: with its shaper dead, queued packets would simply be dropped) and a pause are in
/// place: the runner's supervisor restarts each agent in its node, the new agent heals what the
/// killed one recorded, and every fault is gone within its TTL + 2 s — the paused process runs
/// again. Before supervision, nothing ever restarted a killed agent on netns, and its faults
/// stayed until `chaos down`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_agents_are_restarted_in_their_nodes_and_heal_their_faults() {
    use chaos::backend::supervisor::AgentEvent;
    use chaos::faults::{self, Bandwidth, Delay, Dur, Fault, Partition, Pause, ProcessTarget, Traffic};
    use chaos::proto::fault::{Distribution, Mechanism};

    let test = "killed_agents_are_restarted_in_their_nodes_and_heal_their_faults";
    if !available(test) {
        return;
    }
    let cluster = new_cluster("supervised").await;
    let nodes = cluster.create_nodes(3).await.expect("creating 3 nodes");
    let (n1, n2, n3) = (&nodes[0], &nodes[1], &nodes[2]);
    let ip2 = n2.addresses()[0].to_string();

    // A process on n1 that counts while it runs.
    let ticks = format!("{}/ticks", n1.root_dir());
    let script = format!("while :; do echo x >> {ticks}; sleep 0.02; done");
    let mut spec = sh(&script);
    spec.stdout = chaos::proto::OutputSpec::Null;
    let counter = n1.start(spec).await.unwrap();
    let size = || std::fs::metadata(&ticks).map_or(0, |m| m.len());
    let grows = async || {
        let before = size();
        let deadline = Instant::now() + QUICK;
        while size() == before {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    };
    assert!(grows().await, "the counter counts");

    // The claim under test is "gone within TTL + 2 s"; the margin covers noticing the death
    // (a 100 ms poll), starting an agent and its startup heal on a loaded 2-core machine.
    let ttl = Duration::from_secs(5);
    let injected = Instant::now();
    let pause = Fault::Pause(Pause {
        process: Some(ProcessTarget::Proc(counter.id)),
    });
    let pause = faults::inject(&nodes, n1, &pause, ttl).await.expect("pause");
    let partition = Fault::Partition(Partition {
        traffic: Traffic::nodes(["n2"]),
    });
    let partition = faults::inject(&nodes, n1, &partition, ttl)
        .await
        .expect("partition");
    let bandwidth = Fault::Bandwidth(Bandwidth {
        interface: "eth0".into(),
        rate_bps: 1_000_000,
        burst_bytes: 0,
        limit_bytes: 0,
        exempt_tcp_ports: Vec::new(),
    });
    faults::inject(&nodes, n2, &bandwidth, ttl)
        .await
        .expect("bandwidth");
    let delay = Fault::Delay(Delay {
        traffic: Traffic::nodes(["n1"]),
        delay: Dur(Duration::from_millis(200)),
        jitter: Dur(Duration::ZERO),
        distribution: Distribution::Uniform,
    });
    let delay = faults::inject(&nodes, n3, &delay, ttl).await.expect("delay");
    eprintln!(
        "pause via {:?}, partition via {:?}, delay via {:?}",
        pause.mechanism(),
        partition.mechanism(),
        delay.mechanism()
    );
    let frozen = cluster
        .provisioner()
        .cgroup_dir()
        .join("n1")
        .join(format!("proc-{}", counter.id));
    assert!(
        matches!(pause.mechanism(), Mechanism::CgroupV2Freeze),
        "{:?}",
        pause.mechanism()
    );
    let before = faults_in_kernel(&cluster, &frozen);
    assert_eq!(before.len(), 4, "every fault is in place: {before:#?}");
    assert!(
        before.iter().any(|f| f.starts_with("n3") && f.contains("queue")),
        "the delay queues packets: {before:#?}"
    );
    let ping = n1
        .run("busybox", ["ping", "-c1", "-W1", ip2.as_str()])
        .await
        .unwrap();
    assert!(!ping.status.success(), "the partition is in place");

    // Kill every agent, the way a crash would.
    let mut events = cluster
        .agent_events()
        .expect("netns clusters report agent events");
    let killed = Instant::now();
    let mut old_agents = Vec::new();
    for node in ["n1", "n2", "n3"] {
        let pids = agent_pids(&cluster, node);
        assert_eq!(pids.len(), 1, "{node}: agent processes {pids:?}");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pids[0] as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        old_agents.push(pids[0]);
    }

    // Every fault gone, as the kernel of each node sees it.
    let bound = ttl + Duration::from_secs(2);
    let left = loop {
        let left = faults_in_kernel(&cluster, &frozen);
        if left.is_empty() || injected.elapsed() > bound {
            break left;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        left.is_empty(),
        "{:?} after injecting (TTL {ttl:?}), {:?} after the kill, still in place: {left:#?}",
        injected.elapsed(),
        killed.elapsed()
    );
    eprintln!("faults gone {:?} after the agents were killed", killed.elapsed());
    assert!(grows().await, "the paused process runs again");

    // The supervisor said so, node by node.
    let mut restarted = BTreeSet::new();
    let mut died = BTreeSet::new();
    let deadline = Instant::now() + QUICK;
    while restarted.len() < 3 {
        let event = tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), events.recv())
            .await
            .unwrap_or_else(|_| panic!("restarted so far: {restarted:?}, died: {died:?}"))
            .unwrap();
        eprintln!("{event}");
        match event {
            AgentEvent::AgentDied { node, how } => {
                assert!(how.contains("signal: 9"), "{node}: {how}");
                died.insert(node);
            }
            AgentEvent::AgentRestarted { node, .. } => {
                assert!(died.contains(&node), "{node} restarted before it died");
                restarted.insert(node);
            }
            other => panic!("unexpected: {other}"),
        }
    }

    // New agents, in the same nodes: same cgroup, same address, same log (appended).
    for (i, node) in nodes.iter().enumerate() {
        let name = node.name();
        let pids = agent_pids(&cluster, name);
        assert_eq!(pids.len(), 1, "{name}: {pids:?}");
        assert_ne!(pids[0], old_agents[i], "{name}: the same agent?");
        assert!(
            node.list_faults().await.unwrap().is_empty(),
            "{name}: a restarted agent lists no fault"
        );
        let log = std::fs::read_to_string(cluster.provisioner().agent_log(name)).unwrap();
        assert_eq!(log.matches("chaos-agent listening").count(), 2, "{name}: {log}");
        assert!(
            log.contains("healed a fault left by a previous agent"),
            "{name}: {log}"
        );
        let ns = node.run("ip", ["netns", "identify"]).await.unwrap().stdout_str();
        assert_eq!(
            Some(ns.trim().to_string()),
            cluster.provisioner().node_netns(name)
        );
    }
    let ping = n1
        .run("busybox", ["ping", "-c1", "-W2", ip2.as_str()])
        .await
        .unwrap();
    assert!(
        ping.status.success(),
        "the partition is healed: {}",
        ping.stdout_str()
    );

    let snap = snapshot(&cluster, 3);
    cluster.cleanup().await.unwrap();
    snap.assert_gone_now();
}

/// Clusters created at the same moment all race for the same first free index; the claim (the
/// state file, linked into place exclusively) lets exactly one win each index, and each state
/// file names its own cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clusters_claim_distinct_indices() {
    if !available("concurrent_clusters_claim_distinct_indices") {
        return;
    }
    let clusters =
        futures_util::future::join_all((0..6).map(|i| new_cluster_named(format!("race-{i}")))).await;
    let indices: BTreeSet<u32> = clusters.iter().map(|c| c.provisioner().index()).collect();
    assert_eq!(
        indices.len(),
        clusters.len(),
        "an index was claimed twice: {indices:?}"
    );
    for cluster in &clusters {
        let record: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(cluster.provisioner().state_file()).unwrap())
                .unwrap();
        assert_eq!(record["index"], cluster.provisioner().index());
        assert_eq!(record["temp_dir"], cluster.provisioner().dir().to_str().unwrap());
        assert_eq!(record["runner_pid"], std::process::id());
    }
    for cluster in clusters {
        let snap = Footprint::record(
            cluster.provisioner().index(),
            cluster.provisioner().cgroup_dir().to_path_buf(),
            cluster.provisioner().dir().to_path_buf(),
        );
        cluster.cleanup().await.unwrap();
        snap.assert_gone_now();
    }
}

async fn new_cluster_named(name: String) -> NetnsCluster {
    new_cluster(&name).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_keeps_node_root_dirs_when_asked() {
    let test = "netns::a_failed_run_keeps_node_root_dirs_when_asked";
    if !available(test) {
        return;
    }
    let options = ClusterOptions {
        name: "keep-failed".into(),
        keep_failed_runs: true,
        ..ClusterOptions::default()
    };
    let cluster = NetnsCluster::new(options).await.unwrap();
    let nodes = cluster.create_nodes(1).await.unwrap();
    let root = nodes[0].root_dir().to_string();
    nodes[0]
        .send_bytes(&format!("{root}/evidence"), b"x".to_vec(), 0o644)
        .await
        .unwrap();
    let kept = cluster.run_failed();
    assert_eq!(kept.len(), 1, "{test}: {kept:?}");
    assert_eq!(
        (kept[0].node.as_str(), kept[0].host.as_str()),
        ("n1", "this machine")
    );
    let kept_dir = Path::new(&kept[0].path).to_path_buf();
    cluster.cleanup().await.unwrap();
    let evidence = kept_dir.join("evidence");
    let survived = evidence.exists();
    // Ours to remove: a kept directory is the user's.
    let _ = std::fs::remove_dir_all(kept_dir.parent().unwrap());
    assert!(survived, "{test}: {} is gone after cleanup", evidence.display());
    assert!(
        !Path::new(&root).exists(),
        "{test}: the cluster directory {root} stayed"
    );

    // Not asked: nothing kept.
    let cluster = new_cluster("keep-not-asked").await;
    cluster.create_nodes(1).await.unwrap();
    assert!(
        cluster.run_failed().is_empty(),
        "{test}: kept without being asked"
    );
    cluster.cleanup().await.unwrap();
}
