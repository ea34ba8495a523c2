//! The `ec2` backend end to end against moto, the AWS API emulator (PyPI `moto[server]`), with
//! a stand-in for EC2's hypervisor — both from the backend's test lab,
//! [`chaos::backend::ec2::lab::Lab`]: the real SDK, batched RunInstances, tags, AMI lookup among
//! moto's images, presigned downloads over plain HTTP from the emulator, user data run as
//! cloud-init would, agents over mutual TLS, heartbeat loss powering an instance off, the live
//! runner refreshing `io.chaos.expires`, cleanup, and `chaos gc --backend ec2` after a SIGKILLed
//! runner. (The shared backend checks run on the same lab: `cargo test -p chaos --features ec2
//! --test backends`.)
//!
//! Run with `cargo test -p chaos-cli --features ec2 --test ec2` (README, "Run the tests").

#![cfg(target_os = "linux")]

mod capacity;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chaos::backend::ClusterOptions;
use chaos::backend::ec2::aws_sdk_ec2 as sdk;
use chaos::backend::ec2::lab::{self, Lab};
use chaos::backend::ec2::{Aws, Ec2, Ec2Cluster, tags};
use chaos::backend::provision::Provisioner;
use chaos::{Cluster, NodeExt};
use chaos_testkit::{scaled, skip};

const TEST: &str = "ec2_backend_against_moto";
/// The agents' heartbeat timeout in the in-process cluster (a disconnected one powers off then).
const HEARTBEAT: Duration = Duration::from_secs(5);
/// The agent port of the instances.
const AGENT_PORT: u16 = lab::LAB_AGENT_PORT;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ec2_backend_against_moto() {
    if let Err(why) = lab::availability() {
        skip(TEST, "moto", &why);
        return;
    }
    let lab = Lab::start("ec2-e2e", scaled(Duration::from_secs(120)))
        .await
        .expect("starting the ec2 test lab");
    let dir = tempfile::tempdir().unwrap();
    let config = lab.settings_path().to_path_buf();

    cluster_end_to_end(&lab, &config).await;
    capacity_falls_back_to_the_next_subnet(&lab, dir.path()).await;
    gc_after_a_killed_runner(&lab, &config, dir.path()).await;
    // The expiry refresh waits for the live runner's own schedule (tens of seconds): alongside
    // the scenario run, which takes that long anyway.
    tokio::join!(
        expiry_moves_forward_while_the_cluster_lives(&lab, dir.path()),
        raft_scenario_runs(&lab, &config, dir.path()),
    );

    lab.cleanup().await.expect("cleaning up the ec2 test lab");
}

async fn cluster_end_to_end(lab: &Lab, config: &Path) {
    let aws = lab.aws();
    let ec2 = aws.ec2();
    let options = ClusterOptions {
        name: "ec2-e2e".to_string(),
        heartbeat_timeout: HEARTBEAT,
        node_ready_timeout: scaled(Duration::from_secs(30)),
        backend_config: Some(config.to_path_buf()),
        ..ClusterOptions::default()
    };
    let cluster: Arc<Ec2Cluster> = Arc::new(Ec2::cluster(options).await.expect("creating the ec2 cluster"));
    let started = Instant::now();
    let nodes = cluster.create_nodes(3).await.expect("creating 3 ec2 nodes");
    let took = started.elapsed();
    let calls = cluster.provisioner().api_calls();
    eprintln!("3 nodes in {took:?}; API calls: {calls:?}");
    // Batches of at most 2: one RunInstances for n1+n2, one for n3.
    assert_eq!(lab::LAB_BATCH_SIZE, 2);
    assert_eq!(calls.get("RunInstances"), Some(&2), "{calls:?}");

    // The settings name no AMI: the backend looked one up among moto's Amazon images (moto
    // ships the Amazon Linux 2023 list of us-east-1), and it is a minimal x86_64 one.
    let ami = cluster
        .provisioner()
        .describe()
        .into_iter()
        .find_map(|(key, value)| (key == "ami").then_some(value))
        .expect("the cluster names its AMI");
    let images = ec2.describe_images().image_ids(&ami).send().await.unwrap();
    let image = images
        .images()
        .first()
        .unwrap_or_else(|| panic!("moto knows no {ami}"));
    let name = image.name().unwrap_or_default();
    assert!(
        name.starts_with("al2023-ami-minimal-") && name.ends_with("-x86_64"),
        "{ami} is {name}"
    );
    assert_eq!(image.image_owner_alias(), Some("amazon"), "{ami}");

    // The nodes work: processes, exit codes, files, and the network between them.
    for node in &nodes {
        let ip = node.addresses()[0].to_string();
        let out = node.run("sh", ["-c", "echo $((6 * 7))"]).await.unwrap();
        assert_eq!(out.stdout_str().trim(), "42", "{}", node.name());
        let out = node.run("sh", ["-c", "exit 3"]).await.unwrap();
        assert_eq!(out.status.code, Some(3));
        let path = format!("{}/hello", node.root_dir());
        node.send_bytes(&path, ip.clone().into_bytes(), 0o600)
            .await
            .unwrap();
        assert_eq!(node.read_bytes(&path).await.unwrap(), ip.into_bytes());
    }
    let peer = format!("{}:{AGENT_PORT}", nodes[1].addresses()[0]);
    nodes[0]
        .dial(&peer)
        .await
        .unwrap_or_else(|e| panic!("n1 dialing n2's agent at {peer}: {e}"));

    // Tags at launch, shutdown behaviour, and user data without a secret whose URLs are dead.
    let id = cluster.provisioner().cluster_id().to_string();
    let out = ec2
        .describe_instances()
        .filters(tag_filter(tags::CLUSTER, &id))
        .send()
        .await
        .unwrap();
    let instances: Vec<_> = out
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .cloned()
        .collect();
    assert_eq!(instances.len(), 3);
    for instance in &instances {
        let instance_id = instance.instance_id().unwrap();
        let tag = |key: &str| {
            instance
                .tags()
                .iter()
                .find(|t| t.key() == Some(key))
                .and_then(|t| t.value())
                .map(str::to_string)
        };
        assert_eq!(tag(tags::OWNER), Some(chaos::backend::owner::current_tag()));
        assert!(tag("Name").is_some_and(|n| n.contains(&id)));
        let expires = tag(tags::EXPIRES).expect("expiry tag");
        assert_eq!(
            tags::expired(&expires, std::time::SystemTime::now()),
            Some(false),
            "{expires}"
        );
        let behaviour = ec2
            .describe_instance_attribute()
            .instance_id(instance_id)
            .attribute(sdk::types::InstanceAttributeName::InstanceInitiatedShutdownBehavior)
            .send()
            .await
            .unwrap();
        assert_eq!(
            behaviour
                .instance_initiated_shutdown_behavior()
                .and_then(|v| v.value()),
            Some("terminate")
        );
        let booted = lab
            .booted(instance_id)
            .expect("the hypervisor stand-in booted it");
        let user_data = String::from_utf8(booted.user_data).unwrap();
        for secret in ["-----BEGIN", "PRIVATE KEY", "CERTIFICATE"] {
            assert!(
                !user_data.contains(secret),
                "user data of {instance_id} holds {secret:?}"
            );
        }
        assert!(user_data.contains("--on-heartbeat-loss poweroff"));
        let manifest_url = shell_value(&user_data, "MANIFEST_URL");
        assert_eq!(
            http_status(&manifest_url),
            404,
            "the manifest is deleted once the batch is up"
        );
    }
    let volumes = ec2
        .describe_volumes()
        .filters(tag_filter(tags::CLUSTER, &id))
        .send()
        .await
        .unwrap();
    assert!(
        !volumes.volumes().is_empty(),
        "the instances' volumes carry the cluster tag"
    );
    // Nothing of a node's key is left in the bucket.
    let objects = aws
        .s3()
        .list_objects_v2()
        .bucket(format!("{}-nodes", lab.stack()))
        .prefix(format!("chaos/{id}/"))
        .send()
        .await
        .unwrap();
    let keys: Vec<&str> = objects.contents().iter().filter_map(|o| o.key()).collect();
    assert!(keys.is_empty(), "bundles or manifests left: {keys:?}");

    // A node cut off from its runner powers itself off, and so terminates.
    let lost = instances
        .iter()
        .find(|i| i.private_ip_address() == Some(&nodes[2].addresses()[0].to_string()))
        .and_then(|i| i.instance_id())
        .unwrap()
        .to_string();
    lab.disconnect(&nodes[2].addresses()[0].to_string())
        .await
        .expect("cutting n3 off");
    let bound = HEARTBEAT + scaled(Duration::from_secs(30));
    let deadline = Instant::now() + bound;
    loop {
        let powered_off = lab.booted(&lost).is_some_and(|b| b.powered_off);
        if powered_off && lab.state(&lost).await.unwrap() == "terminated" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{lost} did not power off within {bound:?} of losing its runner"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Cleanup terminates everything (and waits: wait_terminated) and empties the cluster's prefix.
    cluster.cleanup().await.expect("cleaning up the ec2 cluster");
    for instance in &instances {
        let instance_id = instance.instance_id().unwrap();
        assert_eq!(
            lab.state(instance_id).await.unwrap(),
            "terminated",
            "{instance_id}"
        );
    }
}

/// RunInstances into the first subnet fails with `InsufficientInstanceCapacity` (a fault layer
/// in front of moto's EC2 API): the batch goes to the second subnet.
async fn capacity_falls_back_to_the_next_subnet(lab: &Lab, dir: &Path) {
    let aws = lab.aws();
    let subnets = lab.subnets();
    let moto = lab.moto_addr();
    let fault = capacity::CapacityFault::start(moto.ip(), moto, subnets[0].clone()).await;
    let config = dir.join("ec2-capacity.toml");
    let listed: Vec<String> = subnets.iter().map(|s| format!("\"{s}\"")).collect();
    // Every call of this cluster goes through the fault layer.
    let settings = lab.settings().replace(&format!("http://{moto}"), &fault.endpoint);
    assert_ne!(
        settings,
        lab.settings(),
        "the lab's settings name moto's endpoint"
    );
    std::fs::write(&config, format!("{settings}subnets = [{}]\n", listed.join(", "))).unwrap();
    let options = ClusterOptions {
        name: "ec2-capacity".to_string(),
        heartbeat_timeout: HEARTBEAT,
        node_ready_timeout: scaled(Duration::from_secs(30)),
        backend_config: Some(config),
        ..ClusterOptions::default()
    };
    let cluster = Ec2::cluster(options)
        .await
        .expect("creating the ec2 cluster behind the fault layer");
    let nodes = cluster
        .create_nodes(2)
        .await
        .expect("2 nodes despite no capacity in the first subnet");
    let refused = fault.refused.load(std::sync::atomic::Ordering::Relaxed);
    assert!(refused >= 1, "the fault layer refused nothing");
    let calls = cluster.provisioner().api_calls();
    // One refused RunInstances (the SDK's own retries inside it), then one that launched both.
    assert_eq!(calls.get("RunInstances"), Some(&2), "{calls:?}");
    // The live runner pushes the expiry forward (here at once rather than at a third of it).
    let first = cluster.provisioner().instance_id(nodes[0].name()).unwrap();
    let before = expires_tag(aws, &first).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    cluster.provisioner().refresh_expiry().await.unwrap();
    let after = expires_tag(aws, &first).await;
    assert!(
        after > before,
        "io.chaos.expires not pushed forward: {before} → {after}"
    );
    for node in &nodes {
        let out = node.run("true", Vec::<String>::new()).await.unwrap();
        assert!(out.status.success());
        let id = cluster.provisioner().instance_id(node.name()).unwrap();
        let described = aws
            .ec2()
            .describe_instances()
            .instance_ids(&id)
            .send()
            .await
            .unwrap();
        let subnet = described
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .find_map(|i| i.subnet_id().map(str::to_string));
        assert_eq!(
            subnet.as_deref(),
            Some(subnets[1].as_str()),
            "{id} launched in the second subnet"
        );
    }
    cluster.cleanup().await.expect("cleaning up the capacity cluster");
}

/// The `io.chaos.expires` tag of `instance` (RFC 3339 seconds, so it orders as text).
async fn expires_tag(aws: &Aws, instance: &str) -> String {
    let out = aws
        .ec2()
        .describe_instances()
        .instance_ids(instance)
        .send()
        .await
        .unwrap();
    out.reservations()
        .iter()
        .flat_map(|r| r.instances())
        .flat_map(|i| i.tags())
        .find(|t| t.key() == Some(tags::EXPIRES))
        .and_then(|t| t.value())
        .expect("an expiry tag")
        .to_string()
}

/// `chaos up --backend ec2`, SIGKILLed; `chaos gc --backend ec2` finds its instances: one by its
/// dead owner, one by its expired tag alone.
async fn gc_after_a_killed_runner(lab: &Lab, config: &Path, dir: &Path) {
    let ec2 = lab.ec2();
    let state = dir.join("up");
    let mut up = chaos(lab)
        .args([
            "up",
            "--backend",
            "ec2",
            "--nodes",
            "2",
            "--heartbeat-timeout",
            "10m",
            "--state",
        ])
        .arg(&state)
        .arg("--backend-config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let cluster_file = state.join("cluster.json");
    let bound = scaled(Duration::from_secs(120));
    let deadline = Instant::now() + bound;
    while !cluster_file.exists() {
        if let Some(status) = up.try_wait().unwrap() {
            panic!("chaos up --backend ec2 exited with {status}");
        }
        assert!(
            Instant::now() < deadline,
            "chaos up --backend ec2 not up within {bound:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let owner = format!(
        "{}:{}:{}",
        chaos::backend::owner::hostname(),
        up.id(),
        chaos::backend::owner::start_time(up.id()).unwrap()
    );
    up.kill().unwrap();
    up.wait().unwrap();
    let out = ec2
        .describe_instances()
        .filters(tag_filter(tags::OWNER, &owner))
        .filters(
            sdk::types::Filter::builder()
                .name("instance-state-name")
                .values("running")
                .build(),
        )
        .send()
        .await
        .unwrap();
    let ids: Vec<String> = out
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter_map(|i| i.instance_id().map(str::to_string))
        .collect();
    assert_eq!(ids.len(), 2, "chaos up's instances: {ids:?}");
    // The second one: owned elsewhere (not ours to judge), but expired.
    ec2.create_tags()
        .resources(&ids[1])
        .tags(
            sdk::types::Tag::builder()
                .key(tags::OWNER)
                .value("elsewhere:1:1")
                .build(),
        )
        .tags(
            sdk::types::Tag::builder()
                .key(tags::EXPIRES)
                .value("2020-01-01T00:00:00Z")
                .build(),
        )
        .send()
        .await
        .unwrap();

    let gc = |dry_run: bool| {
        let mut command = chaos(lab);
        command
            .args(["gc", "--backend", "ec2", "--backend-config"])
            .arg(config);
        if dry_run {
            command.arg("--dry-run");
        }
        let out = command.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, text) = gc(true);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains(&format!("would remove: ec2 instance {}", ids[0])) && text.contains("gone"),
        "{text}"
    );
    assert!(
        text.contains(&format!("would remove: ec2 instance {}", ids[1])) && text.contains("expired"),
        "{text}"
    );
    for id in &ids {
        assert_eq!(
            lab.state(id).await.unwrap(),
            "running",
            "a dry run changes nothing"
        );
    }
    let (code, text) = gc(false);
    assert_eq!(code, Some(0), "{text}");
    for id in &ids {
        assert_eq!(lab.state(id).await.unwrap(), "terminated", "{id}: {text}");
    }
    let deadline = Instant::now() + scaled(Duration::from_secs(10));
    while !ids.iter().all(|id| lab.booted(id).is_some_and(|b| b.stopped)) {
        assert!(
            Instant::now() < deadline,
            "the hypervisor stand-in did not stop the terminated instances"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A live runner pushes `io.chaos.expires` forward by itself (its watcher, at a third of
/// `expiry`): a one-node cluster with the shortest expiry (1 m) sees its tag move within the
/// schedule's bound, without anyone calling `refresh_expiry`.
async fn expiry_moves_forward_while_the_cluster_lives(lab: &Lab, dir: &Path) {
    let config = dir.join("ec2-expiry.toml");
    let settings = lab.settings().replace("expiry = \"10m\"", "expiry = \"1m\"");
    assert_ne!(
        settings,
        lab.settings(),
        "the lab's settings set expiry = \"10m\""
    );
    std::fs::write(&config, settings).unwrap();
    let options = ClusterOptions {
        name: "ec2-expiry".to_string(),
        node_ready_timeout: scaled(Duration::from_secs(30)),
        backend_config: Some(config),
        ..ClusterOptions::default()
    };
    let cluster = Ec2::cluster(options).await.expect("creating the expiry cluster");
    let nodes = cluster.create_nodes(1).await.expect("creating 1 ec2 node");
    let instance = cluster.provisioner().instance_id(nodes[0].name()).unwrap();
    let first = expires_tag(lab.aws(), &instance).await;
    let started = Instant::now();
    // A third of the expiry, rounded up to the watcher's 10 s tick, plus slack.
    let bound = Duration::from_secs(30) + scaled(Duration::from_secs(15));
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = expires_tag(lab.aws(), &instance).await;
        if now > first {
            eprintln!(
                "io.chaos.expires moved {first} → {now} after {:?}",
                started.elapsed()
            );
            break;
        }
        assert!(
            started.elapsed() < bound,
            "{instance}: io.chaos.expires still {first} after {bound:?} of a live runner (expiry 1m)"
        );
    }
    let out = nodes[0].run("true", Vec::<String>::new()).await.unwrap();
    assert!(out.status.success(), "the node still answers");
    cluster.cleanup().await.expect("cleaning up the expiry cluster");
}

/// `chaos run scenarios/raft.toml --backend ec2 --rounds 1`: etcd on three instances through
/// kills, pauses, partitions and packet faults, checked for recovery, agreement and no lost
/// write.
async fn raft_scenario_runs(lab: &Lab, config: &Path, dir: &Path) {
    if let Err(e) = which("etcd").and(which("etcdctl")) {
        skip("ec2_backend_against_moto (raft scenario)", "etcd", &e);
        return;
    }
    let scenario = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/raft.toml");
    let out_dir = dir.join("runs");
    let started = Instant::now();
    let out = tokio::process::Command::from(chaos(lab))
        .args([
            "run",
            "--backend",
            "ec2",
            "--rounds",
            "1",
            "--seed",
            "7",
            "--backend-config",
        ])
        .arg(config)
        .arg("--out")
        .arg(&out_dir)
        .arg(&scenario)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let bound = scaled(Duration::from_secs(300));
    let out = tokio::time::timeout(bound, out)
        .await
        .unwrap_or_else(|_| panic!("chaos run raft.toml --backend ec2 did not end within {bound:?}"))
        .unwrap();
    eprintln!("raft on ec2 (moto): {:?}", started.elapsed());
    assert!(
        out.status.success(),
        "chaos run raft.toml --backend ec2: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The DescribeInstances/DescribeVolumes filter on tag `key` = `value`.
fn tag_filter(key: &str, value: &str) -> sdk::types::Filter {
    sdk::types::Filter::builder()
        .name(format!("tag:{key}"))
        .values(value)
        .build()
}

fn which(program: &str) -> Result<(), String> {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        Ok(())
    } else {
        Err(format!("{program} is not on PATH"))
    }
}

/// `chaos`, for a settings file that names the emulator. The CLI first checks that some AWS
/// configuration is visible in the environment (the backend's availability, which cannot read
/// the settings file): `AWS_ENDPOINT_URL` satisfies it, as for any emulator user (docs/ec2.md);
/// the settings' own `endpoint_url` is what the calls use. Set on the child only: this process's
/// environment never changes.
fn chaos(lab: &Lab) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_chaos"));
    command.env("AWS_ENDPOINT_URL", format!("http://{}", lab.moto_addr()));
    command
}

/// The value of `NAME='...'` in a shell script.
fn shell_value(script: &str, name: &str) -> String {
    let line = script
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}='")))
        .unwrap_or_else(|| panic!("no {name} in the user data"));
    line.trim_end_matches('\'').replace(r"'\''", "'")
}

/// The HTTP status of a GET of `url` (an address of the test's own network: moto).
fn http_status(url: &str) -> u16 {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
            url,
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
}
