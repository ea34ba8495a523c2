//! Benchmarks of the `docker` backend (plain `main`, prints tables).
//!
//! Run with `cargo bench -p chaos --bench docker` on a machine with a local Docker daemon. The
//! static agent and the default node image are built on first use and cached; the benchmark
//! makes one warm-up cluster with two nodes first, so the figures are the steady state, not
//! that one-time build. Measures:
//!
//! * node ready: `create_nodes(1)` until the node's agent answered a heartbeat over mutual TLS
//!   (certificate, container created, TLS files copied in, container started, agent up), with
//!   where the time went, from the daemon's own timestamps (see [`Phases`]);
//! * 10 nodes: one `create_nodes(10)` call on a fresh cluster, and that cluster's cleanup;
//!   interleaved with the daemon's floor: 10 bare containers of the same image and options on
//!   the same kind of network, created and started at once through the API (no agent);
//! * `true` end to end through the agent (`node.run("true")`: WebSocket exec, spawn, exit status
//!   back) against `docker exec CONTAINER true` (the CLI users compare to) and the same through
//!   the daemon's exec API (bollard: create, start attached, inspect for the exit code),
//!   interleaved in the same run;
//! * 64 MiB moved between a host file and a file in the container, both ways: the agent's
//!   streaming `send_file` / `read_file` against `docker cp`, interleaved in the same run.
//!
//! At the end it checks that no container or network of its clusters is left.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bollard::Docker;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::query_parameters::{
    ListContainersOptionsBuilder, ListNetworksOptionsBuilder, LogsOptionsBuilder,
};
use chaos::backend::ClusterOptions;
use chaos::backend::docker::{self, DockerCluster, DockerOptions, LABEL_CLUSTER};
use chaos::{Cluster, Node, NodeExt};
use futures_util::StreamExt;

mod common;
use common::{Stats, header, ms, row, run_or_skip};

const SINGLE_NODES: usize = 25;
const TEN_ROUNDS: usize = 5;
const TEN: usize = 10;
const TRUE_RUNS: usize = 60;
const FILE_SIZE: usize = 64 << 20;
const FILE_RUNS: usize = 5;

/// Megabytes (10^6 bytes) per second of `bytes` moved in `d`.
fn mbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e6
}

/// Every cluster the benchmark made, by id, for the final leak check.
type Made = Vec<String>;

async fn cluster(name: &str, made: &mut Made) -> DockerCluster {
    let options = ClusterOptions {
        name: name.to_string(),
        ..ClusterOptions::default()
    };
    let c = DockerCluster::new(options, DockerOptions::default())
        .await
        .unwrap_or_else(|e| panic!("creating a docker cluster: {e}"));
    made.push(c.provisioner().id().to_string());
    c
}

/// Where one node's creation went, from the daemon's timestamps (same host, same clock):
///
/// * `create`: from the call to the daemon's `Created` time of the container (certificate
///   issued, create request sent, container object made — the daemon stamps it early);
/// * `to_start`: `Created` to `State.StartedAt` (the rest of create: rootfs, endpoint; the TLS
///   files copied in; start: runc, network namespace and veth, docker-init);
/// * `agent`: `StartedAt` to the daemon's timestamp on the agent's ready line in the log
///   (the agent loading its certificates and binding its port);
/// * `ready`: ready line to `create_nodes` returning (the runner's polling and the first mutual
///   TLS heartbeat).
#[derive(Default)]
struct Phases {
    create: Vec<Duration>,
    to_start: Vec<Duration>,
    agent: Vec<Duration>,
    ready: Vec<Duration>,
}

/// `later - earlier`, zero when the clocks' rounding puts them the other way.
fn between(earlier: SystemTime, later: SystemTime) -> Duration {
    later.duration_since(earlier).unwrap_or_default()
}

fn rfc3339(what: &str, s: &str) -> SystemTime {
    humantime::parse_rfc3339(s).unwrap_or_else(|e| panic!("{what} {s:?}: {e}"))
}

/// The daemon's timestamp on the first log line holding `needle`.
async fn log_time(docker: &Docker, container: &str, needle: &str) -> Option<SystemTime> {
    let options = LogsOptionsBuilder::new()
        .stdout(true)
        .stderr(true)
        .timestamps(true)
        .build();
    let mut logs = docker.logs(container, Some(options));
    let scan = async {
        while let Some(Ok(chunk)) = logs.next().await {
            let text = String::from_utf8_lossy(&chunk.into_bytes()).into_owned();
            for line in text.lines() {
                if line.contains(needle) {
                    let stamp = line.split_whitespace().next()?;
                    return Some(rfc3339("log timestamp", stamp));
                }
            }
        }
        None
    };
    tokio::time::timeout(Duration::from_secs(5), scan)
        .await
        .ok()
        .flatten()
}

impl Phases {
    async fn record(&mut self, docker: &Docker, container: &str, t0: SystemTime, t1: SystemTime) {
        let info = docker
            .inspect_container(container, None)
            .await
            .expect("inspecting a node container");
        let created = rfc3339("Created", info.created.as_deref().expect("Created"));
        let started = rfc3339(
            "StartedAt",
            info.state
                .as_ref()
                .and_then(|s| s.started_at.as_deref())
                .expect("StartedAt"),
        );
        let ready = log_time(docker, container, chaos_proto::READY_LINE_PREFIX)
            .await
            .expect("the agent's ready line in the container log");
        self.create.push(between(t0, created));
        self.to_start.push(between(created, started));
        self.agent.push(between(started, ready));
        self.ready.push(between(ready, t1));
    }
}

/// Runs `true` in `container` through the daemon's exec API, as `docker exec` does.
async fn api_exec_true(docker: &Docker, container: &str) {
    let exec = docker
        .create_exec(
            container,
            CreateExecOptions {
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                cmd: Some(vec!["true"]),
                ..Default::default()
            },
        )
        .await
        .expect("creating an exec");
    match docker.start_exec(&exec.id, None).await.expect("starting an exec") {
        StartExecResults::Attached { mut output, .. } => {
            while let Some(chunk) = output.next().await {
                chunk.expect("exec output");
            }
        }
        StartExecResults::Detached => panic!("exec started detached"),
    }
    let inspect = docker.inspect_exec(&exec.id).await.expect("inspecting an exec");
    assert_eq!(inspect.exit_code, Some(0), "exec of true");
}

async fn docker_cli(args: &[&str]) -> Duration {
    let t = Instant::now();
    let out = tokio::process::Command::new("docker")
        .args(args)
        .output()
        .await
        .expect("running the docker CLI");
    let took = t.elapsed();
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

async fn same_contents(a: &Path, b: &Path) {
    let (a_bytes, b_bytes) = (
        tokio::fs::read(a).await.unwrap(),
        tokio::fs::read(b).await.unwrap(),
    );
    assert!(a_bytes == b_bytes, "{} and {} differ", a.display(), b.display());
}

/// Creates and starts `n` bare containers at once on `cluster`'s network, with its image and the
/// same options its nodes get (network alias, `docker-init`, `NET_ADMIN`, a volume), running
/// `sleep`; returns how long until every one was started. Labelled with the cluster, so its
/// cleanup removes them.
async fn bare_containers(docker: &Docker, cluster: &DockerCluster, n: usize) -> Duration {
    use bollard::models::{ContainerCreateBody, EndpointSettings, HostConfig, NetworkingConfig};
    use bollard::query_parameters::CreateContainerOptionsBuilder;
    let t = Instant::now();
    let starts = (0..n).map(|i| async move {
        let name = format!("{}-bare{i}", cluster.provisioner().container_name("x"));
        let body = ContainerCreateBody {
            image: Some(cluster.provisioner().image().to_string()),
            entrypoint: Some(vec!["/bin/sleep".into()]),
            cmd: Some(vec!["600".into()]),
            volumes: Some(vec!["/chaos/root".into()]),
            labels: Some(HashMap::from([(
                LABEL_CLUSTER.to_string(),
                cluster.provisioner().id().to_string(),
            )])),
            host_config: Some(HostConfig {
                cap_add: Some(vec!["NET_ADMIN".into()]),
                init: Some(true),
                network_mode: Some(cluster.provisioner().network().to_string()),
                ..Default::default()
            }),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    cluster.provisioner().network().to_string(),
                    EndpointSettings {
                        aliases: Some(vec![format!("bare{i}")]),
                        ..Default::default()
                    },
                )])),
            }),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::new().name(&name).build();
        docker
            .create_container(Some(options), body)
            .await
            .expect("creating a bare container");
        docker
            .start_container(&name, None)
            .await
            .expect("starting a bare container");
    });
    futures_util::future::join_all(starts).await;
    t.elapsed()
}

async fn run() {
    let mut made: Made = Vec::new();
    let docker = docker::connect().await.expect("connecting to the daemon");

    // Warm-up: builds (or finds) the static agent and the node image, and makes the daemon
    // load the image layers once; nothing of this is measured.
    let t = Instant::now();
    let c = cluster("bench-docker-warm", &mut made).await;
    let first_cluster = t.elapsed();
    c.create_nodes(2).await.expect("warm-up nodes");
    c.cleanup().await.expect("cleanup");
    eprintln!(
        "warm-up: first cluster (static agent and image found or built) in {}",
        ms(first_cluster)
    );

    // Node ready, one at a time, on one cluster (after two warm-up nodes).
    let c = cluster("bench-docker-ready", &mut made).await;
    c.create_nodes(2).await.expect("warm-up nodes");
    let mut single = Vec::new();
    let mut phases = Phases::default();
    for _ in 0..SINGLE_NODES {
        let (t, t0) = (Instant::now(), SystemTime::now());
        let node = c.create_nodes(1).await.expect("creating a node").remove(0);
        let (took, t1) = (t.elapsed(), SystemTime::now());
        single.push(took);
        phases
            .record(&docker, &c.provisioner().container_name(node.name()), t0, t1)
            .await;
    }
    c.cleanup().await.expect("cleanup");
    let single = Stats::new(single);

    // Ten nodes at once, each round on a fresh cluster; interleaved with the daemon's own
    // floor: ten bare containers of the same image on the same network, created and started
    // through the API at once, running `sleep` (no agent, no TLS).
    let mut ten = Vec::new();
    let mut ten_cleanup = Vec::new();
    let mut bare = Vec::new();
    for _ in 0..TEN_ROUNDS {
        let c = cluster("bench-docker-ten", &mut made).await;
        let t = Instant::now();
        let nodes = c.create_nodes(TEN).await.expect("creating 10 nodes");
        ten.push(t.elapsed());
        assert_eq!(nodes.len(), TEN);
        let t = Instant::now();
        c.cleanup().await.expect("cleanup");
        ten_cleanup.push(t.elapsed());

        let c = cluster("bench-docker-bare", &mut made).await;
        bare.push(bare_containers(&docker, &c, TEN).await);
        c.cleanup().await.expect("cleanup");
    }
    let ten = Stats::new(ten);
    let ten_cleanup = Stats::new(ten_cleanup);
    let bare = Stats::new(bare);

    // `true` through the agent vs `docker exec` (CLI and API), interleaved.
    let c = cluster("bench-docker-true", &mut made).await;
    let node: Arc<dyn Node> = c.create_nodes(1).await.expect("creating a node").remove(0);
    let container = c.provisioner().container_name(node.name());
    for _ in 0..5 {
        node.run("true", Vec::<String>::new()).await.expect("warm-up run");
        docker_cli(&["exec", &container, "true"]).await;
        api_exec_true(&docker, &container).await;
    }
    let (mut agent, mut cli, mut api) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..TRUE_RUNS {
        let t = Instant::now();
        let out = node
            .run("true", Vec::<String>::new())
            .await
            .expect("running true");
        agent.push(t.elapsed());
        assert!(out.status.success());
        cli.push(docker_cli(&["exec", &container, "true"]).await);
        let t = Instant::now();
        api_exec_true(&docker, &container).await;
        api.push(t.elapsed());
    }
    let agent = Stats::new(agent);
    let cli = Stats::new(cli);
    let api = Stats::new(api);

    // 64 MiB both ways: the agent's streaming file API vs `docker cp`, on the same node.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let source = dir.path().join("source.bin");
    let data: Vec<u8> = (0..FILE_SIZE)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3])
        .collect();
    tokio::fs::write(&source, &data).await.unwrap();
    drop(data);
    let down_agent = dir.path().join("down-agent.bin");
    let down_cp = dir.path().join("down-cp.bin");
    let remote_agent = format!("{}/up-agent.bin", node.root_dir());
    let remote_cp = format!("{}/up-cp.bin", node.root_dir());
    let source_s = source.to_string_lossy().into_owned();
    let down_cp_s = down_cp.to_string_lossy().into_owned();
    let (mut up_ours, mut down_ours, mut up_cp, mut down_cpt) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // One extra round first, unmeasured: page cache and the container's overlay warm.
    for round in 0..=FILE_RUNS {
        let t = Instant::now();
        let sent = node
            .upload(&source, &remote_agent)
            .await
            .expect("uploading through the agent");
        let up = t.elapsed();
        assert_eq!(sent, FILE_SIZE as u64);

        let t = Instant::now();
        let got = node
            .download(&remote_agent, &down_agent)
            .await
            .expect("downloading");
        let down = t.elapsed();
        assert_eq!(got, FILE_SIZE as u64);

        let cp_up = docker_cli(&["cp", &source_s, &format!("{container}:{remote_cp}")]).await;
        let cp_down = docker_cli(&["cp", &format!("{container}:{remote_cp}"), &down_cp_s]).await;
        if round == 0 {
            // Both copies arrived intact (a round trip each way).
            same_contents(&source, &down_agent).await;
            same_contents(&source, &down_cp).await;
            continue;
        }
        up_ours.push(up);
        down_ours.push(down);
        up_cp.push(cp_up);
        down_cpt.push(cp_down);
    }
    c.cleanup().await.expect("cleanup");
    let files = [
        ("upload through the agent (NodeExt::upload)", Stats::new(up_ours)),
        ("upload with `docker cp`", Stats::new(up_cp)),
        (
            "download through the agent (NodeExt::download)",
            Stats::new(down_ours),
        ),
        ("download with `docker cp`", Stats::new(down_cpt)),
    ];

    // Nothing of ours left: no container, no network with one of our cluster labels.
    let mut left = Vec::new();
    for id in &made {
        let filters = HashMap::from([("label".to_string(), vec![format!("{LABEL_CLUSTER}={id}")])]);
        let containers = docker
            .list_containers(Some(
                ListContainersOptionsBuilder::new()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await
            .expect("listing containers");
        let networks = docker
            .list_networks(Some(ListNetworksOptionsBuilder::new().filters(&filters).build()))
            .await
            .expect("listing networks");
        if !containers.is_empty() || !networks.is_empty() {
            left.push(format!(
                "{id}: {} containers, {} networks",
                containers.len(),
                networks.len()
            ));
        }
    }

    println!();
    header("docker benchmark");
    row(
        "node ready (agent accepting mTLS)",
        &single,
        "median ≤ 400 ms",
        single.median() <= Duration::from_millis(400),
    );
    let parts = [
        ("  call → container Created", &phases.create),
        ("  Created → StartedAt (+ TLS copy-in)", &phases.to_start),
        ("  StartedAt → agent ready line", &phases.agent),
        ("  ready line → first mTLS heartbeat", &phases.ready),
    ];
    for (what, samples) in parts {
        row(what, &Stats::new(samples.clone()), "-", true);
    }
    row(
        "10 nodes concurrently",
        &ten,
        "median ≤ 2 s",
        ten.median() <= Duration::from_secs(2),
    );
    row("10 bare containers (daemon floor)", &bare, "baseline", true);
    row("cleanup of 10 nodes", &ten_cleanup, "-", true);
    let ratio_cli = cli.median().as_secs_f64() / agent.median().as_secs_f64();
    let ratio_api = api.median().as_secs_f64() / agent.median().as_secs_f64();
    row(
        "`true` through the agent",
        &agent,
        &format!("≥ 5× ({ratio_cli:.1}×)"),
        ratio_cli >= 5.0,
    );
    row("`docker exec C true` (CLI)", &cli, "baseline", true);
    row(
        "exec API (create, start, inspect)",
        &api,
        &format!("({ratio_api:.1}×)"),
        true,
    );

    println!();
    println!(
        "| {:<46} | {:>4} | {:>10} | {:>10} | {:>10} |",
        "64 MiB file, host file ↔ container file", "n", "median", "min", "max"
    );
    println!("|{:-<48}|{:-<6}|{:-<12}|{:-<12}|{:-<12}|", "", "", "", "", "");
    for (what, stats) in &files {
        // The fastest run has the highest rate: min time ↔ max rate.
        println!(
            "| {what:<46} | {:>4} | {:>5.0} MB/s | {:>5.0} MB/s | {:>5.0} MB/s |",
            stats.samples.len(),
            mbps(FILE_SIZE, stats.median()),
            mbps(FILE_SIZE, stats.max()),
            mbps(FILE_SIZE, stats.min()),
        );
    }

    println!();
    if left.is_empty() {
        println!(
            "leak check: no container or network left of {} clusters",
            made.len()
        );
    } else {
        println!("leak check FAILED: {}", left.join("; "));
        std::process::exit(1);
    }
}

fn main() {
    run_or_skip("docker", docker::availability(), run());
}
