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
        cluster.index(),
        cluster.cgroup_dir().to_path_buf(),
        cluster.dir().to_path_buf(),
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
    assert_eq!(ip1, netns::node_address(cluster.index(), 1).to_string());
    assert_eq!(ip2, netns::node_address(cluster.index(), 2).to_string());
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
    assert!(text.contains(&format!("eth0    inet {ip1}/24")), "{text}");
    assert!(!text.contains(&ip2), "{text}");
    let ns = n1.run("ip", ["netns", "identify"]).await.unwrap().stdout_str();
    assert_eq!(ns.trim(), cluster.node_netns("n1").unwrap());

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
            &cluster.node_netns("n2").unwrap(),
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
    assert_ne!(a.index(), b.index());
    let (na, nb) = tokio::join!(a.create_nodes(1), b.create_nodes(1));
    let (na, nb) = (na.unwrap().remove(0), nb.unwrap().remove(0));
    let target = format!("{}", nb.addresses()[0]);
    let script = format!("echo x >/dev/tcp/{target}/{}", netns::AGENT_PORT);
    let out = na.run("bash", ["-c", script.as_str()]).await.unwrap();
    assert!(
        !out.status.success(),
        "a node of cluster #{} reached cluster #{}",
        a.index(),
        b.index()
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
            let want = format!("inet {}/24", node.addresses()[0]);
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
    assert!(err.to_string().contains("at most 253"), "{err}");
    cluster.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_file_describes_the_cluster() {
    if !available("the_state_file_describes_the_cluster") {
        return;
    }
    let cluster = new_cluster("state").await;
    cluster.create_nodes(2).await.unwrap();
    let text = std::fs::read_to_string(cluster.state_file()).unwrap();
    let state: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(state["index"], cluster.index());
    assert_eq!(state["cluster"], "state");
    assert_eq!(state["runner_pid"], std::process::id());
    assert_eq!(state["hub_netns"], cluster.hub_netns());
    let nodes: Vec<&str> = state["node_netns"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(
        nodes,
        [
            cluster.node_netns("n1").unwrap(),
            cluster.node_netns("n2").unwrap()
        ]
    );
    assert_eq!(state["cgroup_dir"], cluster.cgroup_dir().to_str().unwrap());
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
        cluster.index(),
        cluster.cgroup_dir().to_path_buf(),
        cluster.dir().to_path_buf(),
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
