//! The stand-in for EC2's hypervisor: moto (the AWS API emulator, in server mode) answers the
//! API; this harness boots what moto says runs. For every instance moto reports `running`, it
//! reads the instance's user data and runs it as cloud-init would — inside a network namespace
//! of a netns cluster the test owns, which also carries the instance's private address (moto's
//! VPC is the netns cluster's /24, its subnets the upper half, so every address is the test's
//! own). moto listens on the netns cluster's host address, which every namespace reaches; no
//! traffic ever goes to a public address.
//!
//! The user data runs as PID 1's child in a PID namespace of its own, with a private tmpfs on
//! `/run`: the agent's `--on-heartbeat-loss poweroff` then ends that PID namespace (the kernel
//! turns `reboot(POWER_OFF)` outside the initial PID namespace into SIGINT for the namespace's
//! init) instead of this machine, and the harness sees the instance power off and terminates it
//! in moto, as `InstanceInitiatedShutdownBehavior = terminate` would.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use chaos::backend::ClusterOptions;
use chaos::backend::ec2::aws_sdk_ec2 as sdk;
use chaos::backend::netns::NetnsCluster;
use chaos::proto::OutputSpec;
use chaos::{Cluster, Node, NodeExt, ProcSpec, Signal};

/// One emulated instance's life, as the harness saw it.
#[derive(Debug, Clone, Default)]
pub struct Booted {
    /// The user data, decoded.
    pub user_data: Vec<u8>,
    /// Whether its init ended by a power-off (SIGINT from the kernel).
    pub powered_off: bool,
    /// Whether the harness stopped it because moto says it was terminated.
    pub stopped: bool,
}

/// moto in server mode, killed on drop.
pub struct Moto {
    child: tokio::process::Child,
    /// `http://<host address>:<port>`.
    pub endpoint: String,
}

impl Moto {
    /// Starts `moto_server` on `ip` (a free port the OS picks), waits until it answers.
    pub async fn start(ip: Ipv4Addr, bound: Duration) -> Moto {
        let port = TcpListener::bind((ip, 0)).unwrap().local_addr().unwrap().port();
        let child = tokio::process::Command::new("moto_server")
            .args(["-H", &ip.to_string(), "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawning moto_server");
        let addr = SocketAddr::from((ip, port));
        let deadline = Instant::now() + bound;
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "moto_server did not listen on {addr} within {bound:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Moto {
            child,
            endpoint: format!("http://{addr}"),
        }
    }

    /// Kills moto now.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// The hypervisor: netns nodes running what moto launched.
pub struct Hypervisor {
    /// The cluster whose namespaces carry the instances.
    pub netns: Arc<NetnsCluster>,
    ec2: sdk::Client,
    /// Instance id → what happened to it.
    pub booted: Arc<Mutex<HashMap<String, Booted>>>,
    /// Errors of the boot loop (a failure to boot an instance fails the test).
    pub errors: Arc<Mutex<Vec<String>>>,
    /// Private address → the namespace carrying it.
    nodes: Arc<Mutex<HashMap<String, Arc<dyn Node>>>>,
    task: tokio::task::JoinHandle<()>,
}

/// What the boot loop keeps per running instance.
struct Running {
    node: Arc<dyn Node>,
    process: Arc<dyn chaos::cluster::ProcessControl>,
}

impl Hypervisor {
    /// Starts the boot loop over `netns`'s namespaces.
    pub fn start(netns: Arc<NetnsCluster>, ec2: sdk::Client) -> Hypervisor {
        let booted = Arc::new(Mutex::new(HashMap::new()));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let nodes = Arc::new(Mutex::new(HashMap::new()));
        let task = tokio::spawn(boot_loop(
            netns.clone(),
            ec2.clone(),
            booted.clone(),
            errors.clone(),
            nodes.clone(),
        ));
        Hypervisor {
            netns,
            ec2,
            booted,
            errors,
            nodes,
            task,
        }
    }

    /// What the harness saw of `instance`.
    pub fn booted(&self, instance: &str) -> Option<Booted> {
        self.booted.lock().unwrap().get(instance).cloned()
    }

    /// Cuts `instance`'s agent off from the runner (drops its port in the instance's
    /// namespace), as a lost network would.
    pub async fn disconnect(&self, ip: &str, port: u16) {
        let node = self.node_of(ip).await;
        let out = node
            .run(
                "iptables",
                [
                    "-I",
                    "INPUT",
                    "-d",
                    ip,
                    "-p",
                    "tcp",
                    "--dport",
                    &port.to_string(),
                    "-j",
                    "DROP",
                ],
            )
            .await
            .unwrap();
        assert!(out.status.success(), "iptables: {}", out.stderr_str());
    }

    async fn node_of(&self, ip: &str) -> Arc<dyn Node> {
        let node = self.nodes.lock().unwrap().get(ip).cloned();
        node.unwrap_or_else(|| panic!("no namespace carries {ip}"))
    }

    /// The state moto reports for `instance`.
    pub async fn state(&self, instance: &str) -> String {
        instance_state(&self.ec2, instance).await
    }

    /// Stops the boot loop and removes the namespaces.
    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
        self.netns
            .cleanup()
            .await
            .expect("cleaning up the hypervisor's namespaces");
    }
}

pub async fn instance_state(ec2: &sdk::Client, instance: &str) -> String {
    let out = ec2
        .describe_instances()
        .instance_ids(instance)
        .send()
        .await
        .unwrap();
    out.reservations()
        .iter()
        .flat_map(|r| r.instances())
        .find_map(|i| i.state().and_then(|s| s.name()).map(|n| n.as_str().to_string()))
        .unwrap_or_default()
}

async fn boot_loop(
    netns: Arc<NetnsCluster>,
    ec2: sdk::Client,
    booted: Arc<Mutex<HashMap<String, Booted>>>,
    errors: Arc<Mutex<Vec<String>>>,
    nodes: Arc<Mutex<HashMap<String, Arc<dyn Node>>>>,
) {
    let mut running: HashMap<String, Running> = HashMap::new();
    let mut done: HashSet<String> = HashSet::new();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let Ok(out) = ec2.describe_instances().send().await else {
            continue;
        };
        for instance in out.reservations().iter().flat_map(|r| r.instances()) {
            let (Some(id), Some(state)) = (instance.instance_id(), instance.state().and_then(|s| s.name()))
            else {
                continue;
            };
            let id = id.to_string();
            match state.as_str() {
                "running" if !running.contains_key(&id) && !done.contains(&id) => {
                    let ip = instance.private_ip_address().unwrap_or_default().to_string();
                    match boot(&netns, &ec2, &id, &ip).await {
                        Ok((r, user_data)) => {
                            nodes.lock().unwrap().insert(ip.clone(), r.node.clone());
                            booted.lock().unwrap().insert(
                                id.clone(),
                                Booted {
                                    user_data,
                                    ..Booted::default()
                                },
                            );
                            running.insert(id, r);
                        }
                        Err(e) => {
                            errors.lock().unwrap().push(format!("booting {id} ({ip}): {e}"));
                            done.insert(id);
                        }
                    }
                }
                "shutting-down" | "terminated" | "stopping" | "stopped" => {
                    if let Some(r) = running.remove(&id) {
                        let _ = r.process.signal(Signal::KILL, true).await;
                        let _ = r.node.run("true", Vec::<String>::new()).await;
                        if let Some(b) = booted.lock().unwrap().get_mut(&id) {
                            b.stopped = true;
                        }
                        done.insert(id);
                    }
                }
                _ => {}
            }
        }
        // An init that ended by SIGINT powered off: terminate its instance, as EC2 would.
        let mut ended = Vec::new();
        for (id, r) in &running {
            if let Ok(Ok(status)) = tokio::time::timeout(Duration::from_millis(1), r.process.wait()).await {
                ended.push((id.clone(), status));
            }
        }
        for (id, status) in ended {
            running.remove(&id);
            done.insert(id.clone());
            let powered_off = status.signal == Some(libc::SIGINT) || status.code == Some(128 + libc::SIGINT);
            if let Some(b) = booted.lock().unwrap().get_mut(&id) {
                b.powered_off = powered_off;
            }
            if powered_off {
                let _ = ec2.terminate_instances().instance_ids(&id).send().await;
            } else {
                errors
                    .lock()
                    .unwrap()
                    .push(format!("instance {id}: its init ended with {status:?}"));
            }
        }
    }
}

/// The wrapper that plays cloud-init: PID 1 of a fresh PID namespace (checked: a power-off must
/// end the namespace, never the machine), a private `/run`, the user data, then an idle init.
const CLOUD_INIT: &str = r#"[ "$$" = 1 ] || exit 99
mount -t tmpfs -o mode=0755 chaos-instance-run /run || exit 98
sh "$1" >"$2" 2>&1
exec sleep 2147483647
"#;

async fn boot(
    netns: &NetnsCluster,
    ec2: &sdk::Client,
    id: &str,
    ip: &str,
) -> Result<(Running, Vec<u8>), String> {
    let attribute = ec2
        .describe_instance_attribute()
        .instance_id(id)
        .attribute(sdk::types::InstanceAttributeName::UserData)
        .send()
        .await
        .map_err(|e| format!("DescribeInstanceAttribute: {e}"))?;
    let encoded = attribute.user_data().and_then(|v| v.value()).unwrap_or_default();
    let user_data = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|e| format!("user data is not base64: {e}"))?;
    let node = netns
        .create_nodes(1)
        .await
        .map_err(|e| format!("making its namespace: {e}"))?
        .remove(0);
    let iface = node.interfaces()[0].clone();
    let subnet = netns.provisioner().subnet();
    // The instance's address, and the one its outgoing packets carry on the cluster's network.
    let setup =
        format!("ip addr add {ip}/24 dev {iface} && ip route replace {subnet}/24 dev {iface} src {ip}");
    let out = node
        .run("sh", ["-c", setup.as_str()])
        .await
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("{setup}: {}", out.stderr_str()));
    }
    let root = node.root_dir().to_string();
    let script = format!("{root}/user-data");
    node.send_bytes(&script, user_data.clone(), 0o700)
        .await
        .map_err(|e| e.to_string())?;
    let mut spec = ProcSpec::new(
        "unshare",
        [
            "--pid",
            "--fork",
            "--mount",
            "--mount-proc",
            "--propagation",
            "private",
            "sh",
            "-c",
            CLOUD_INIT,
            "cloud-init",
            &script,
            &format!("{root}/cloud-init-output.log"),
        ],
    );
    spec.stdout = OutputSpec::Null;
    spec.stderr = OutputSpec::Null;
    let process = node.start(spec).await.map_err(|e| e.to_string())?;
    Ok((
        Running {
            node,
            process: process.control(),
        },
        user_data,
    ))
}

/// The netns cluster the instances live in, and the moto VPC mapped onto its /24.
pub async fn hypervisor_cluster(name: &str) -> Arc<NetnsCluster> {
    let options = ClusterOptions {
        name: name.to_string(),
        ..ClusterOptions::default()
    };
    Arc::new(
        NetnsCluster::new(options)
            .await
            .expect("creating the hypervisor's netns cluster"),
    )
}
