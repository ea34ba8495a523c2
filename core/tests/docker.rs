//! The docker backend beyond the shared suite: addresses and aliases, Docker-level faults with
//! real traffic between containers, bad images, and nothing left behind.
//!
//! Every test skips, saying why, when no Docker daemon is reachable.

#![cfg(feature = "docker")]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chaos::MachineFault;
use chaos::backend::docker::{self, DockerCluster, DockerOptions, LABEL_CLUSTER};
use chaos::backend::{ClusterOptions, registry};
use chaos::{Cluster, Node, NodeExt, ProcSpec};

/// A docker cluster for `test`, or `None` (with the reason printed) when Docker is unavailable.
async fn cluster(test: &str) -> Option<DockerCluster> {
    if let Err(why) = registry::available("docker") {
        chaos_testkit::skip(test, "docker", &why);
        return None;
    }
    let options = ClusterOptions {
        name: test.to_string(),
        ..ClusterOptions::default()
    };
    Some(
        DockerCluster::new(options, DockerOptions::default())
            .await
            .unwrap_or_else(|e| panic!("{test}: creating a docker cluster: {e}")),
    )
}

async fn sh(node: &dyn Node, script: &str) -> (bool, String) {
    let out = node
        .run("sh", ["-c", script])
        .await
        .unwrap_or_else(|e| panic!("{}: sh -c {script:?}: {e}", node.name()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Containers and networks carrying `cluster`'s label, as `docker` sees them.
async fn labelled(docker: &bollard::Docker, cluster: &str) -> (usize, usize) {
    let filters = HashMap::from([("label".to_string(), vec![format!("{LABEL_CLUSTER}={cluster}")])]);
    let containers = docker
        .list_containers(Some(
            bollard::query_parameters::ListContainersOptionsBuilder::new()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await
        .unwrap();
    let networks = docker
        .list_networks(Some(
            bollard::query_parameters::ListNetworksOptionsBuilder::new()
                .filters(&filters)
                .build(),
        ))
        .await
        .unwrap();
    (containers.len(), networks.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_reach_each_other_by_address_and_name_and_leave_nothing() {
    let Some(cluster) = cluster("docker_reach").await else {
        return;
    };
    let docker = docker::connect().await.unwrap();
    let nodes = cluster.create_nodes(3).await.unwrap();
    assert_eq!(
        nodes.iter().map(|n| n.name()).collect::<Vec<_>>(),
        ["n1", "n2", "n3"]
    );
    let [a, b, c] = [&nodes[0], &nodes[1], &nodes[2]].map(|n| n.addresses()[0]);
    assert!(a != b && b != c && a != c, "{a} {b} {c}");
    let (ok, text) = sh(&*nodes[0], &format!("ping -c 1 -W 2 {b} && ping -c 1 -W 2 n3")).await;
    assert!(ok, "{text}");
    let (ok, text) = sh(&*nodes[1], "hostname; cat /proc/1/comm").await;
    assert!(ok && text.starts_with("n2\n"), "{text}");
    assert_eq!(labelled(&docker, cluster.provisioner().id()).await, (3, 1));

    cluster.cleanup().await.unwrap();
    assert_eq!(
        labelled(&docker, cluster.provisioner().id()).await,
        (0, 0),
        "containers or network left"
    );
}

/// Starts a TCP server on `node` answering `pong` to every connection on `port`.
async fn pong_server(node: &dyn Node, port: u16) {
    let mut spec = ProcSpec::new(
        "sh",
        ["-c", &format!("while true; do echo pong | nc -l -p {port}; done")],
    );
    spec.stdout = chaos::proto::OutputSpec::Null;
    spec.stderr = chaos::proto::OutputSpec::Null;
    node.start(spec).await.expect("starting the pong server");
    // Wait until it listens.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !sh(node, &format!("netstat -ltn | grep -q ':{port} '")).await.0 {
        assert!(
            Instant::now() < deadline,
            "{}: nothing listens on {port}",
            node.name()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether `from` gets `pong` from `to`'s server within a second. (`nc -w` bounds only the
/// connect, which a frozen peer's kernel still completes, hence `timeout`.)
async fn pongs(from: &dyn Node, to: &str, port: u16) -> bool {
    let (_, text) = sh(from, &format!("timeout -s KILL 1 nc -w 1 {to} {port} </dev/null")).await;
    text.contains("pong")
}

/// Whether `from` gets an ICMP echo reply from `to` within a second.
async fn pings(from: &dyn Node, to: &str) -> bool {
    sh(from, &format!("ping -c 1 -W 1 {to}")).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_freezes_a_node_for_its_peers_until_healed_or_expired() {
    let Some(cluster) = cluster("docker_pause").await else {
        return;
    };
    let nodes = cluster.create_nodes(2).await.unwrap();
    let (n1, n2) = (&*nodes[0], &*nodes[1]);
    pong_server(n1, 9000).await;
    assert!(pongs(n2, "n1", 9000).await, "no pong before the fault");

    let fault = cluster
        .inject_machine_fault("n1", MachineFault::Pause, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        cluster
            .list_machine_faults()
            .iter()
            .map(|f| (f.id, f.node.clone(), f.fault))
            .collect::<Vec<_>>(),
        vec![(fault.id(), "n1".to_string(), MachineFault::Pause)]
    );
    assert!(!pongs(n2, "n1", 9000).await, "a paused node answered");
    // A second fault on the same node is refused, naming the first.
    let again = cluster
        .inject_machine_fault("n1", MachineFault::Stop, Duration::from_secs(5))
        .await
        .unwrap_err()
        .to_string();
    assert!(again.contains("already has machine fault"), "{again}");
    assert!(fault.heal().await.unwrap(), "healing an active fault");
    assert!(!fault.heal().await.unwrap(), "healing twice");
    assert!(pongs(n2, "n1", 9000).await, "no pong after unpausing");
    // The agent survived the silence (its grace) and still serves.
    assert!(sh(n1, "true").await.0);

    // With a short TTL the fault heals itself.
    cluster
        .inject_machine_fault("n1", MachineFault::Pause, Duration::from_secs(3))
        .await
        .unwrap();
    assert!(!pongs(n2, "n1", 9000).await);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cluster.list_machine_faults().is_empty() {
        assert!(Instant::now() < deadline, "the pause outlived its TTL");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(pongs(n2, "n1", 9000).await, "no pong after the TTL");
    cluster.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_and_stop_cut_a_node_off_and_heal_back() {
    let Some(cluster) = cluster("docker_disconnect").await else {
        return;
    };
    let docker = docker::connect().await.unwrap();
    let nodes = cluster.create_nodes(2).await.unwrap();
    let (n1, n2) = (&*nodes[0], &*nodes[1]);
    let n1_ip = n1.addresses()[0].to_string();
    assert!(pings(n2, &n1_ip).await);

    let fault = cluster
        .inject_machine_fault("n1", MachineFault::Disconnect, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(!pings(n2, &n1_ip).await, "a disconnected node answered");
    fault.heal().await.unwrap();
    assert!(pings(n2, &n1_ip).await, "reconnected with another address?");
    assert!(pings(n2, "n1").await, "the alias did not come back");

    // Stop: the node's processes die, its agent comes back after the heal.
    let mut spec = ProcSpec::new("sleep", ["1000"]);
    spec.stdout = chaos::proto::OutputSpec::Null;
    let sleeper = n1.start(spec).await.unwrap();
    let fault = cluster
        .inject_machine_fault("n1", MachineFault::Stop, Duration::from_secs(60))
        .await
        .unwrap();
    let info = docker
        .inspect_container(&cluster.provisioner().container_name("n1"), None)
        .await
        .unwrap();
    assert_eq!(info.state.and_then(|s| s.running), Some(false));
    assert!(
        n1.run("true", Vec::<String>::new()).await.is_err(),
        "a stopped node ran a command"
    );
    fault.heal().await.unwrap();
    // Pids start again at 1 in the restarted container, so look for the command, not the pid.
    let _ = sleeper;
    let (_, text) = sh(n1, "ps -o args").await;
    assert!(
        !text.contains("sleep 1000"),
        "a process survived the stop:\n{text}"
    );
    assert!(pings(n2, &n1_ip).await);

    // Restart: same, in one step.
    cluster.restart_node("n2").await.unwrap();
    assert!(sh(n2, "true").await.0);
    cluster.cleanup().await.unwrap();
    assert_eq!(
        labelled(&docker, cluster.provisioner().id()).await,
        (0, 0),
        "left after cleanup"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_heals_faults_left_active() {
    let Some(cluster) = cluster("docker_cleanup_heals").await else {
        return;
    };
    let docker = docker::connect().await.unwrap();
    cluster.create_nodes(3).await.unwrap();
    let ttl = Duration::from_secs(300);
    cluster
        .inject_machine_fault("n1", MachineFault::Pause, ttl)
        .await
        .unwrap();
    cluster
        .inject_machine_fault("n2", MachineFault::Stop, ttl)
        .await
        .unwrap();
    cluster
        .inject_machine_fault("n3", MachineFault::Disconnect, ttl)
        .await
        .unwrap();
    assert_eq!(cluster.list_machine_faults().len(), 3);
    cluster.cleanup().await.unwrap();
    assert_eq!(labelled(&docker, cluster.provisioner().id()).await, (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_partition_between_containers_with_real_traffic() {
    let Some(cluster) = cluster("docker_partition").await else {
        return;
    };
    let nodes = cluster.create_nodes(3).await.unwrap();
    let (n1, n2) = (&*nodes[0], &*nodes[1]);
    for node in &nodes {
        pong_server(&**node, 9000).await;
    }
    let shape = chaos::faults::Shape::Isolate {
        node: "n1".to_string(),
    };
    let handle = chaos::faults::partition(&nodes, &shape, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(!pongs(n2, "n1", 9000).await, "n2 reached an isolated n1");
    assert!(!pongs(n1, "n3", 9000).await, "an isolated n1 reached n3");
    assert!(pongs(n2, "n3", 9000).await, "n2 lost n3, which was not isolated");
    // The runner still drives the isolated node.
    assert!(sh(n1, "true").await.0);
    handle.heal().await.unwrap();
    assert!(pongs(n2, "n1", 9000).await && pongs(n1, "n3", 9000).await);
    cluster.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_image_is_a_clear_error_and_creates_nothing() {
    if let Err(why) = registry::available("docker") {
        chaos_testkit::skip(
            "a_missing_image_is_a_clear_error_and_creates_nothing",
            "docker",
            &why,
        );
        return;
    }
    let docker = docker::connect().await.unwrap();
    let networks_before = docker
        .list_networks(None::<bollard::query_parameters::ListNetworksOptions>)
        .await
        .unwrap()
        .len();
    let options = DockerOptions {
        image: Some("chaos-test/no-such-image:1".to_string()),
        ..DockerOptions::default()
    };
    let err = match DockerCluster::new(ClusterOptions::default(), options).await {
        Ok(_) => panic!("a cluster on a missing image"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("chaos-test/no-such-image:1")
            && err.contains("not found")
            && err.contains("never pulls"),
        "{err}"
    );
    let networks_after = docker
        .list_networks(None::<bollard::query_parameters::ListNetworksOptions>)
        .await
        .unwrap()
        .len();
    assert_eq!(networks_before, networks_after, "a network was created");
}

/// What a remote daemon (`DOCKER_HOST=tcp://…`) gets, tried on the local one: agents reached at
/// published ports of the daemon's host, which survive a stop/start of the container.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_reached_at_published_ports_survive_a_stop() {
    let test = "agents_reached_at_published_ports_survive_a_stop";
    if let Err(why) = registry::available("docker") {
        chaos_testkit::skip(test, "docker", &why);
        return;
    }
    let options = ClusterOptions {
        name: test.to_string(),
        ..ClusterOptions::default()
    };
    let docker_options = DockerOptions {
        reach: Some(docker::Reach::Published),
        upload_files: true,
        ..DockerOptions::default()
    };
    let cluster = DockerCluster::new(options, docker_options).await.unwrap();
    assert_eq!(cluster.provisioner().reach(), docker::Reach::Published);
    let nodes = cluster.create_nodes(2).await.unwrap();
    let info = cluster
        .provisioner()
        .docker()
        .inspect_container(&cluster.provisioner().container_name("n1"), None)
        .await
        .unwrap();
    let published = format!("{:?}", info.host_config.and_then(|h| h.port_bindings));
    assert!(published.contains("7700/tcp"), "{published}");
    // Peers still use container addresses.
    let n2_ip = nodes[1].addresses()[0].to_string();
    assert!(pings(&*nodes[0], &n2_ip).await);
    let fault = cluster
        .inject_machine_fault("n1", MachineFault::Stop, Duration::from_secs(60))
        .await
        .unwrap();
    fault.heal().await.unwrap();
    assert!(
        sh(&*nodes[0], "true").await.0,
        "the agent is not at its port after a restart"
    );
    cluster.cleanup().await.unwrap();
}

/// Builds `tag` locally (no registry: `FROM scratch`, classic builder) holding only a static
/// busybox and `/app/hello.txt`, the way a user ships their system under test.
fn build_user_image(tag: &str) -> Result<(), String> {
    let context = tempfile::tempdir().unwrap();
    std::fs::copy(docker::image::BUSYBOX, context.path().join("busybox"))
        .map_err(|e| format!("needs a static {} (busybox-static): {e}", docker::image::BUSYBOX))?;
    std::fs::write(context.path().join("hello.txt"), "from the user's image\n").unwrap();
    std::fs::write(
        context.path().join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nCOPY hello.txt /app/hello.txt\n",
    )
    .unwrap();
    let out = std::process::Command::new("docker")
        .args(["build", "-q", "-t", tag])
        .arg(context.path())
        .env("DOCKER_BUILDKIT", "0")
        .output()
        .map_err(|e| format!("running docker build: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "docker build: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A local image of the user's own: the static agent goes into every container (bind-mounted
/// from this host, or copied in as for a remote daemon) and is its entrypoint; the image's own
/// files are there, and faults work inside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_local_image_runs_the_agent_copied_in() {
    let test = "a_users_local_image_runs_the_agent_copied_in";
    if let Err(why) = registry::available("docker") {
        chaos_testkit::skip(test, "docker", &why);
        return;
    }
    let tag = format!("chaos-test/user-image:{}", std::process::id());
    build_user_image(&tag).unwrap_or_else(|e| panic!("{test}: {e}"));
    let _image = RemoveImageOnDrop(tag.clone());
    for upload_files in [false, true] {
        let options = ClusterOptions {
            name: test.to_string(),
            ..ClusterOptions::default()
        };
        let docker_options = DockerOptions {
            image: Some(tag.clone()),
            upload_files,
            ..DockerOptions::default()
        };
        let cluster = DockerCluster::new(options, docker_options).await.unwrap();
        assert_eq!(cluster.provisioner().image(), tag);
        let nodes = cluster.create_nodes(2).await.unwrap();
        let out = nodes[0]
            .run("/bin/busybox", ["cat", "/app/hello.txt"])
            .await
            .unwrap();
        assert_eq!(
            out.stdout_str(),
            "from the user's image\n",
            "upload {upload_files}"
        );
        let info = cluster
            .provisioner()
            .docker()
            .inspect_container(&cluster.provisioner().container_name("n1"), None)
            .await
            .unwrap();
        let entrypoint = info.config.and_then(|c| c.entrypoint).unwrap_or_default();
        assert_eq!(entrypoint, [docker::image::AGENT_PATH], "upload {upload_files}");
        // A fault inside the user's container works like anywhere else.
        let cut = chaos::faults::inject(
            &nodes,
            &nodes[0],
            &chaos::faults::Fault::Partition(chaos::faults::Partition {
                traffic: chaos::faults::Traffic::nodes(["n2"]),
            }),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
        let n2 = nodes[1].addresses()[0].to_string();
        let ping = |node: std::sync::Arc<dyn Node>, to: String| async move {
            node.run("/bin/busybox", ["ping", "-c", "1", "-W", "1", to.as_str()])
                .await
                .unwrap()
                .status
                .success()
        };
        assert!(!ping(nodes[0].clone(), n2.clone()).await, "n1 is cut from n2");
        assert!(cut.heal().await.unwrap());
        assert!(ping(nodes[0].clone(), n2.clone()).await, "healed");
        let id = cluster.provisioner().id().to_string();
        cluster.cleanup().await.unwrap();
        assert_eq!(labelled(cluster.provisioner().docker(), &id).await, (0, 0));
    }
}

/// Removes a test-only image when dropped, also when the test fails.
struct RemoveImageOnDrop(String);

impl Drop for RemoveImageOnDrop {
    fn drop(&mut self) {
        match std::process::Command::new("docker")
            .args(["rmi", &self.0])
            .output()
        {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!("docker rmi {}: {}", self.0, String::from_utf8_lossy(&out.stderr)),
            Err(e) => eprintln!("docker rmi {}: {e}", self.0),
        }
    }
}

/// The agent inside a container killed: the container exits with it (the agent is its
/// entrypoint), and the runner's supervisor starts it again — its agent heals what its
/// predecessor recorded and serves. A container stopped on purpose by a `stop` fault is left
/// stopped until the fault heals. Before supervision, a container whose agent died stayed
/// down for the rest of the cluster's life.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_is_restarted_but_a_stopped_container_stays_stopped() {
    use chaos::backend::supervisor::AgentEvent;

    let Some(cluster) = cluster("docker_supervised").await else {
        return;
    };
    let docker = docker::connect().await.unwrap();
    let nodes = cluster.create_nodes(1).await.unwrap();
    let n1 = &*nodes[0];
    let container = cluster.provisioner().container_name("n1");
    let running = async || {
        docker
            .inspect_container(&container, None)
            .await
            .ok()
            .and_then(|i| i.state)
            .and_then(|s| s.running)
    };
    let mut events = cluster
        .agent_events()
        .expect("docker clusters report agent events");

    // A container_stop fault: down on purpose, not restarted until healed.
    let stop = cluster
        .inject_machine_fault("n1", MachineFault::Stop, Duration::from_secs(60))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        running().await,
        Some(false),
        "a stopped container was started again"
    );
    assert!(events.try_recv().is_err(), "the supervisor acted on a stop fault");
    assert!(stop.heal().await.unwrap());
    assert!(sh(n1, "true").await.0);

    // The agent killed from inside: `$PPID` of a process it started is the agent itself.
    let killed = Instant::now();
    let _ = n1.run("sh", ["-c", "kill -9 $PPID"]).await;
    let bound = chaos_testkit::scaled(Duration::from_secs(60));
    let mut died = None;
    loop {
        let event = tokio::time::timeout(bound.saturating_sub(killed.elapsed()), events.recv())
            .await
            .unwrap_or_else(|_| panic!("no restart within {bound:?}; died: {died:?}"))
            .unwrap();
        eprintln!("{event}");
        match event {
            AgentEvent::AgentDied { node, how } => {
                assert_eq!(node, "n1");
                died = Some(how);
            }
            AgentEvent::AgentRestarted { node, .. } => {
                assert_eq!(node, "n1");
                break;
            }
            other => panic!("unexpected: {other}"),
        }
    }
    let how = died.expect("the death was reported before the restart");
    assert!(how.contains("exited with code 137"), "{how}");
    eprintln!("restarted {:?} after the kill", killed.elapsed());
    assert_eq!(running().await, Some(true));
    let (ok, text) = sh(n1, "echo back").await;
    assert!(ok && text == "back\n", "{text}");
    cluster.cleanup().await.unwrap();
    assert_eq!(
        labelled(&docker, cluster.provisioner().id()).await,
        (0, 0),
        "left after cleanup"
    );
}
