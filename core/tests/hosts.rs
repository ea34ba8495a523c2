//! What only the `hosts` backend does, against a simulated lab ([`chaos::backend::hosts::lab`]):
//! network namespaces each running a persistent `chaos-agent` started as a service would be,
//! and an inventory pointing at them. (The shared suite runs on `hosts` through
//! `backend_tests!`, over a lab of its own.)
//!
//! - a runner SIGKILLed mid-run: every agent heals, kills the run's processes, removes the run
//!   directory, keeps serving, and the next runner works at once;
//! - a second concurrent runner is refused, naming the holder; a takeover ends the first run;
//! - asking for more nodes than the inventory lists is a clear error;
//! - a label selector makes nodes only on the hosts it matches, and asking for more nodes than
//!   match is a clear error naming the selector; backends without labels refuse a selector.

#![cfg(target_os = "linux")]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use chaos::agent_client::AgentClient;
use chaos::backend::hosts::lab::Lab;
use chaos::backend::{ClusterOptions, new_cluster};
use chaos::certs::{self, ClusterCa, Identity};
use chaos::faults::Shape;
use chaos::{Node, NodeExt};
use chaos_testkit::{scaled, skip};
use common::{alive_here, gone_within};

/// Env var that turns `runner_child` into the runner the parent test kills.
const CHILD_INVENTORY: &str = "CHAOS_HOSTS_TEST_CHILD_INVENTORY";

async fn lab(test: &str, hosts: usize) -> Option<Lab> {
    if let Err(why) = chaos::backend::hosts::lab::availability() {
        skip(test, "hosts", &why);
        return None;
    }
    Some(
        Lab::start(test, hosts, Duration::from_secs(30))
            .await
            .expect("starting the lab"),
    )
}

/// A client of a lab host's agent with the lab's runner identity.
fn client(lab: &Lab, i: usize) -> AgentClient {
    let ca = ClusterCa::load(lab.tls_dir()).unwrap();
    let runner = Identity::load_runner(lab.tls_dir()).unwrap();
    let tls = certs::client_config(ca.cert_pem(), &runner).unwrap();
    let host = &lab.hosts()[i];
    AgentClient::new(host.name.clone(), host.agent, tls)
}

fn options(inventory: &Path, name: &str, heartbeat: Duration) -> ClusterOptions {
    ClusterOptions {
        name: name.into(),
        heartbeat_timeout: heartbeat,
        backend_config: Some(inventory.to_path_buf()),
        ..ClusterOptions::default()
    }
}

/// The runner the parent kills: takes every host, starts a process tree on each, cuts the
/// network with a long partition, prints `PID <pid>` and `DIR <run dir>` lines, then `READY`,
/// and waits to be killed. Runs only when the parent sets [`CHILD_INVENTORY`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_child() {
    let Ok(inventory) = std::env::var(CHILD_INVENTORY) else {
        return;
    };
    let cluster = new_cluster(
        "hosts",
        options(Path::new(&inventory), "hosts-child", Duration::from_secs(2)),
    )
    .await
    .unwrap();
    let nodes = cluster.create_nodes(2).await.unwrap();
    for node in &nodes {
        let out = node
            .run("sh", ["-c", "sleep 600 >/dev/null 2>&1 & echo $!"])
            .await
            .unwrap();
        println!("PID {}", out.stdout_str().trim());
        node.send_bytes(&format!("{}/marker", node.root_dir()), b"x".to_vec(), 0o644)
            .await
            .unwrap();
        println!("DIR {}", node.root_dir());
    }
    let partition = chaos::faults::partition(
        &nodes,
        &Shape::Isolate { node: "n1".into() },
        Duration::from_secs(600),
    )
    .await
    .unwrap();
    std::mem::forget(partition);
    println!("READY");
    tokio::time::sleep(Duration::from_secs(600)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_runner_leaves_clean_serving_hosts_and_the_next_runner_works_at_once() {
    let test = "hosts::a_killed_runner_leaves_clean_serving_hosts";
    let Some(lab) = lab("killed-runner", 2).await else {
        return;
    };
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "runner_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_INVENTORY, lab.inventory())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut pids = Vec::new();
    let mut dirs = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        // The harness may print `test runner_child ... ` before the first line.
        if let Some((_, pid)) = line.split_once("PID ") {
            pids.push(pid.parse::<u32>().unwrap());
        } else if let Some((_, dir)) = line.split_once("DIR ") {
            dirs.push(dir.to_string());
        } else if line.ends_with("READY") {
            break;
        }
    }
    assert_eq!(
        (pids.len(), dirs.len()),
        (2, 2),
        "{test}: the child runner did not get going"
    );
    for (i, dir) in dirs.iter().enumerate() {
        assert!(Path::new(dir).join("marker").exists(), "{dir}");
        assert!(
            dir.starts_with(&*lab.hosts()[i].root_dir.to_string_lossy()),
            "{dir}"
        );
    }
    let clients: Vec<AgentClient> = (0..2).map(|i| client(&lab, i)).collect();
    assert!(
        !clients[0].list_faults().await.unwrap().is_empty(),
        "the partition is installed"
    );

    child.kill().unwrap();
    child.wait().unwrap();

    // Heartbeat timeout 2 s: each agent ends the run by itself.
    let bound = scaled(Duration::from_secs(15));
    for pid in &pids {
        assert!(
            gone_within(bound, async || alive_here(*pid)).await,
            "pid {pid} survived the runner"
        );
    }
    for (i, client) in clients.iter().enumerate() {
        let lease_gone = gone_within(bound, async || client.lease().await.unwrap().is_some()).await;
        assert!(lease_gone, "host {i}: the dead runner's lease was not released");
        assert!(
            client.list_faults().await.unwrap().is_empty(),
            "host {i}: faults not healed"
        );
        assert!(
            !Path::new(&dirs[i]).exists(),
            "host {i}: run dir {} not removed",
            dirs[i]
        );
    }

    // The next runner works at once, on the same agents (they kept serving).
    let cluster = new_cluster("hosts", lab.cluster_options("next-runner"))
        .await
        .unwrap();
    let nodes: Vec<Arc<dyn Node>> = cluster.create_nodes(2).await.unwrap();
    let ping = nodes[0]
        .run("ping", ["-c1", "-W2", &nodes[1].addresses()[0].to_string()])
        .await
        .unwrap();
    assert!(
        ping.status.success(),
        "the partition is healed: {}",
        ping.stdout_str()
    );
    let dir = nodes[0].root_dir().to_string();
    cluster.cleanup().await.unwrap();
    assert!(!Path::new(&dir).exists(), "cleanup removes the run dir {dir}");
    assert!(
        clients[0].lease().await.unwrap().is_none(),
        "cleanup releases the lease"
    );
    lab.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_runner_is_refused_naming_the_holder_unless_it_takes_over() {
    let Some(lab) = lab("second-runner", 1).await else {
        return;
    };
    let first = new_cluster("hosts", lab.cluster_options("first")).await.unwrap();
    let held = first.create_nodes(1).await.unwrap();
    let sleeper = held[0]
        .start(chaos::ProcSpec::new("sleep", ["600"]))
        .await
        .unwrap();

    let second = new_cluster("hosts", lab.cluster_options("second")).await.unwrap();
    let Err(e) = second.create_nodes(1).await else {
        panic!("the host is held: a second runner must be refused");
    };
    let e = e.to_string();
    assert!(
        e.contains("host n1 is in use by runner ") && e.contains(" since ") && e.contains("takeover"),
        "{e}"
    );
    second.cleanup().await.unwrap();

    // More nodes than hosts: refused before any host is asked.
    let greedy = new_cluster("hosts", lab.cluster_options("greedy")).await.unwrap();
    let Err(e) = greedy.create_nodes(2).await else {
        panic!("one host only: two nodes must be refused");
    };
    let e = e.to_string();
    assert!(
        e.contains("asked for 2 more nodes") && e.contains("lists 1 hosts (n1)"),
        "{e}"
    );
    greedy.cleanup().await.unwrap();

    // A takeover ends the first run (its process dies) and takes the host.
    let text = std::fs::read_to_string(lab.inventory()).unwrap();
    let takeover = lab.inventory().with_file_name("takeover.toml");
    std::fs::write(&takeover, format!("takeover = true\n{text}")).unwrap();
    let third = new_cluster("hosts", options(&takeover, "third", Duration::from_secs(15)))
        .await
        .unwrap();
    let nodes = third.create_nodes(1).await.unwrap();
    assert!(
        gone_within(scaled(Duration::from_secs(5)), async || alive_here(sleeper.pid)).await,
        "the first run's process survived the takeover"
    );
    assert!(
        nodes[0]
            .run("true", Vec::<String>::new())
            .await
            .unwrap()
            .status
            .success()
    );
    // The runner taken over neither keeps the new run alive nor ends it: its heartbeats name
    // its own run (refused now), and so does its cleanup.
    let held = client(&lab, 0)
        .lease()
        .await
        .unwrap()
        .expect("the third run holds the lease");
    first.cleanup().await.unwrap();
    let still = client(&lab, 0)
        .lease()
        .await
        .unwrap()
        .expect("the first runner's cleanup ended nothing");
    assert_eq!(still.run, held.run);
    assert!(
        nodes[0]
            .run("true", Vec::<String>::new())
            .await
            .unwrap()
            .status
            .success()
    );

    // Dropped without cleanup (a panicking test): the run still ends at once, not only when
    // its heartbeats are missed.
    let dir = nodes[0].root_dir().to_string();
    drop(nodes);
    drop(third);
    assert!(
        client(&lab, 0).lease().await.unwrap().is_none(),
        "drop releases the lease"
    );
    assert!(!Path::new(&dir).exists(), "drop removes the run dir {dir}");
    lab.cleanup().await.unwrap();
}

#[tokio::test]
async fn a_missing_inventory_is_a_clear_error() {
    let e = new_cluster("hosts", ClusterOptions::default())
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("--inventory"), "{e}");
    let missing = ClusterOptions {
        backend_config: Some("/nonexistent/inventory.toml".into()),
        ..ClusterOptions::default()
    };
    let e = new_cluster("hosts", missing).await.err().unwrap().to_string();
    assert!(e.contains("/nonexistent/inventory.toml"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_label_selector_takes_only_the_matching_hosts() {
    let Some(lab) = lab("labels", 2).await else {
        return;
    };
    // Host 1 in rack 2, host 2 in rack 1.
    let text = std::fs::read_to_string(lab.inventory()).unwrap();
    let mut rack = ["2", "1"].into_iter();
    let labelled: String = text
        .split_inclusive('\n')
        .map(|line| match line {
            "[[hosts]]\n" => format!(
                "{line}labels = {{ rack = \"{}\", lab = \"yes\" }}\n",
                rack.next().unwrap()
            ),
            _ => line.to_string(),
        })
        .collect();
    assert!(rack.next().is_none(), "every host labelled:\n{labelled}");
    let inventory = lab.inventory().with_file_name("labelled.toml");
    std::fs::write(&inventory, labelled).unwrap();
    let rack1 = |name: &str| ClusterOptions {
        host_labels: BTreeMap::from([("rack".to_string(), "1".to_string())]),
        ..options(&inventory, name, Duration::from_secs(15))
    };

    // More nodes than matching hosts: refused before any host is asked, naming the selector.
    let greedy = new_cluster("hosts", rack1("greedy")).await.unwrap();
    let Err(e) = greedy.create_nodes(2).await else {
        panic!("one host matches rack=1: two nodes must be refused");
    };
    let e = e.to_string();
    assert!(
        e.contains("asked for 2 more nodes")
            && e.contains("lists 1 hosts labelled rack=1 (n2; 2 hosts in all)"),
        "{e}"
    );
    greedy.cleanup().await.unwrap();
    for i in 0..2 {
        assert!(
            client(&lab, i).lease().await.unwrap().is_none(),
            "host {i} was asked"
        );
    }

    // The matching host is node 1; the other host is left alone.
    let cluster = new_cluster("hosts", rack1("rack1")).await.unwrap();
    let nodes = cluster.create_nodes(1).await.unwrap();
    assert_eq!(nodes[0].name(), "n2");
    assert!(
        client(&lab, 0).lease().await.unwrap().is_none(),
        "rack 2 was leased"
    );
    let lease = client(&lab, 1).lease().await.unwrap().expect("rack 1 leased");
    assert_eq!(nodes[0].root_dir(), lease.run_dir);
    cluster.cleanup().await.unwrap();

    // Every pair must match: no host is in rack 1 and labelled lab=no.
    let none = ClusterOptions {
        host_labels: BTreeMap::from([
            ("rack".to_string(), "1".to_string()),
            ("lab".to_string(), "no".to_string()),
        ]),
        ..options(&inventory, "none", Duration::from_secs(15))
    };
    let none = new_cluster("hosts", none).await.unwrap();
    let Err(e) = none.create_nodes(1).await else {
        panic!("no host matches lab=no, rack=1");
    };
    let e = e.to_string();
    assert!(e.contains("lists 0 hosts labelled lab=no, rack=1"), "{e}");
    none.cleanup().await.unwrap();

    // A backend whose machines carry no labels refuses a selector rather than ignore it.
    let Err(e) = new_cluster("local", rack1("local")).await else {
        panic!("local machines carry no labels: a selector must be refused");
    };
    let e = e.to_string();
    assert!(e.contains("rack=1") && e.contains("carry no labels"), "{e}");
    lab.cleanup().await.unwrap();
}

/// Starts `sleep 600` on `node` in the background; its pid.
async fn sleeper(node: &Arc<dyn Node>) -> u32 {
    let out = node
        .run("sh", ["-c", "sleep 600 >/dev/null 2>&1 & echo $!"])
        .await
        .unwrap();
    out.stdout_str().trim().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_keeps_its_directories_when_asked_and_the_hosts_stay_free() {
    let test = "hosts::a_failed_run_keeps_its_directories_when_asked";
    let Some(lab) = lab("keep-failed", 2).await else {
        return;
    };
    let bound = scaled(Duration::from_secs(10));
    let clients: Vec<AgentClient> = (0..2).map(|i| client(&lab, i)).collect();

    // Asked to keep: each host's run directory stays, with its files, marked kept.
    let keeping = ClusterOptions {
        keep_failed_runs: true,
        ..lab.cluster_options("keep")
    };
    let cluster = new_cluster("hosts", keeping).await.unwrap();
    let nodes = cluster.create_nodes(2).await.unwrap();
    let mut pids = Vec::new();
    for node in &nodes {
        node.send_bytes(&format!("{}/evidence", node.root_dir()), b"x".to_vec(), 0o644)
            .await
            .unwrap();
        pids.push(sleeper(node).await);
    }
    let dirs: Vec<String> = nodes.iter().map(|n| n.root_dir().to_string()).collect();
    let kept = cluster.run_failed();
    assert_eq!(
        kept.iter()
            .map(|k| (k.node.as_str(), k.path.as_str()))
            .collect::<Vec<_>>(),
        vec![("n1", dirs[0].as_str()), ("n2", dirs[1].as_str())],
        "{test}: kept {kept:?}"
    );
    assert!(kept[0].host.starts_with("host n1 ("), "{:?}", kept[0]);
    cluster.cleanup().await.unwrap();
    for (i, dir) in dirs.iter().enumerate() {
        assert!(
            Path::new(dir).join("evidence").exists(),
            "{test}: host {i}: kept run dir {dir} lost its files"
        );
        assert!(
            Path::new(&chaos_proto::lease::kept_marker(dir)).exists(),
            "{test}: host {i}: {dir} not marked kept"
        );
        assert!(
            gone_within(bound, async || alive_here(pids[i])).await,
            "{test}: host {i}: pid {} survived a kept run (bound {bound:?})",
            pids[i]
        );
        assert!(
            clients[i].lease().await.unwrap().is_none(),
            "{test}: host {i}: a kept run still holds the lease"
        );
    }

    // The hosts are free for the next runner at once; a failed run without keep removes its
    // directories (nothing asked, nothing kept).
    let cluster = new_cluster("hosts", lab.cluster_options("next")).await.unwrap();
    let nodes = cluster.create_nodes(2).await.unwrap();
    let next_dir = nodes[0].root_dir().to_string();
    assert_ne!(next_dir, dirs[0]);
    assert!(
        cluster.run_failed().is_empty(),
        "{test}: kept without being asked"
    );
    cluster.cleanup().await.unwrap();
    assert!(
        !Path::new(&next_dir).exists(),
        "{test}: {next_dir} kept without being asked"
    );
    for dir in &dirs {
        assert!(
            Path::new(dir).exists(),
            "{test}: the next run removed the kept {dir}"
        );
    }

    // A lease asking to keep on heartbeat loss (the inventory's `keep_failed_runs`): a
    // runner that stops beating leaves its directory, killed and healed, and the host free.
    let request = chaos_proto::lease::LeaseRequest {
        runner: "test".into(),
        run: "silent-runner".into(),
        takeover: false,
        heartbeat_timeout_ms: 500,
        keep_on_heartbeat_loss: true,
    };
    let lease = clients[1].take_lease(&request).await.unwrap();
    std::fs::write(Path::new(&lease.run_dir).join("evidence"), b"y").unwrap();
    let loss_bound = scaled(Duration::from_secs(10));
    assert!(
        gone_within(loss_bound, async || clients[1].lease().await.unwrap().is_some()).await,
        "{test}: host n2: the silent runner's lease outlived {loss_bound:?}"
    );
    assert!(
        Path::new(&lease.run_dir).join("evidence").exists(),
        "{test}: host n2: heartbeat loss removed {} though the lease asked to keep it",
        lease.run_dir
    );
    lab.cleanup().await.unwrap();
}
