//! The stand-in for EC2's hypervisor: moto answers the API; this boots what moto says runs. For
//! every instance moto reports `running`, it reads the instance's user data and runs it as
//! cloud-init would — inside a network namespace of a netns cluster the lab owns, which also
//! carries the instance's private address.
//!
//! The user data runs as PID 1's child in a PID namespace of its own, with a private tmpfs on
//! `/run`: the agent's `--on-heartbeat-loss poweroff` then ends that PID namespace (the kernel
//! turns `reboot(POWER_OFF)` outside the initial PID namespace into SIGINT for the namespace's
//! init) instead of this machine, and the stand-in sees the instance power off and terminates it
//! in moto, as `InstanceInitiatedShutdownBehavior = terminate` would.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_ec2 as sdk;
use base64::Engine;
use chaos_proto::{OutputSpec, ProcSpec, Signal};

use super::lab_error;
use crate::Result;
use crate::backend::netns::NetnsCluster;
use crate::cluster::{Cluster, Node, ProcessControl};
use crate::ext::NodeExt;

/// How often the stand-in asks moto for its instances.
const POLL: Duration = Duration::from_millis(200);

/// One emulated instance's life, as the stand-in saw it.
#[derive(Debug, Clone, Default)]
pub struct Booted {
    /// The user data, decoded.
    pub user_data: Vec<u8>,
    /// Whether its init ended by a power-off (SIGINT from the kernel).
    pub powered_off: bool,
    /// Whether the stand-in stopped it because moto says it was terminated.
    pub stopped: bool,
}

/// What the boot loop shares with its owner.
#[derive(Default)]
struct Shared {
    /// Instance id → what happened to it.
    booted: Mutex<HashMap<String, Booted>>,
    /// Errors of the boot loop (a failure to boot an instance fails the test bed's cleanup).
    errors: Mutex<Vec<String>>,
    /// Private address → the namespace carrying it.
    nodes: Mutex<HashMap<String, Arc<dyn Node>>>,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The boot loop over a netns cluster's namespaces (stopped on drop).
pub(super) struct Hypervisor {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

/// What the boot loop keeps per running instance.
struct Running {
    node: Arc<dyn Node>,
    process: Arc<dyn ProcessControl>,
}

impl Hypervisor {
    /// Starts the boot loop over `netns`'s namespaces.
    pub(super) fn start(netns: Arc<NetnsCluster>, ec2: sdk::Client) -> Hypervisor {
        let shared = Arc::new(Shared::default());
        let task = tokio::spawn(boot_loop(netns, ec2, shared.clone()));
        Hypervisor { shared, task }
    }

    pub(super) fn booted(&self, instance: &str) -> Option<Booted> {
        locked(&self.shared.booted).get(instance).cloned()
    }

    pub(super) fn errors(&self) -> Vec<String> {
        locked(&self.shared.errors).clone()
    }

    pub(super) fn node_of(&self, ip: &str) -> Option<Arc<dyn Node>> {
        locked(&self.shared.nodes).get(ip).cloned()
    }

    /// Stops the boot loop (the instances' processes go with the namespaces).
    pub(super) async fn stop(&mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for Hypervisor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The state moto reports for `instance` (empty when it reports none).
pub(super) async fn instance_state(ec2: &sdk::Client, instance: &str) -> Result<String> {
    let out = ec2
        .describe_instances()
        .instance_ids(instance)
        .send()
        .await
        .map_err(|e| lab_error(format!("DescribeInstances of {instance}: {e}")))?;
    Ok(out
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .find_map(|i| i.state().and_then(|s| s.name()).map(|n| n.as_str().to_string()))
        .unwrap_or_default())
}

async fn boot_loop(netns: Arc<NetnsCluster>, ec2: sdk::Client, shared: Arc<Shared>) {
    let mut running: HashMap<String, Running> = HashMap::new();
    let mut done: HashSet<String> = HashSet::new();
    loop {
        tokio::time::sleep(POLL).await;
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
                            locked(&shared.nodes).insert(ip.clone(), r.node.clone());
                            locked(&shared.booted).insert(
                                id.clone(),
                                Booted {
                                    user_data,
                                    ..Booted::default()
                                },
                            );
                            running.insert(id, r);
                        }
                        Err(e) => {
                            locked(&shared.errors).push(format!("booting {id} ({ip}): {e}"));
                            done.insert(id);
                        }
                    }
                }
                "shutting-down" | "terminated" | "stopping" | "stopped" => {
                    if let Some(r) = running.remove(&id) {
                        let _ = r.process.signal(Signal::KILL, true).await;
                        if let Some(b) = locked(&shared.booted).get_mut(&id) {
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
            if let Some(b) = locked(&shared.booted).get_mut(&id) {
                b.powered_off = powered_off;
            }
            if powered_off {
                if let Err(e) = ec2.terminate_instances().instance_ids(&id).send().await {
                    locked(&shared.errors).push(format!("terminating powered-off {id}: {e}"));
                }
            } else {
                locked(&shared.errors).push(format!("instance {id}: its init ended with {status:?}"));
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

async fn boot(netns: &NetnsCluster, ec2: &sdk::Client, id: &str, ip: &str) -> Result<(Running, Vec<u8>)> {
    let attribute = ec2
        .describe_instance_attribute()
        .instance_id(id)
        .attribute(sdk::types::InstanceAttributeName::UserData)
        .send()
        .await
        .map_err(|e| lab_error(format!("DescribeInstanceAttribute: {e}")))?;
    let encoded = attribute.user_data().and_then(|v| v.value()).unwrap_or_default();
    let user_data = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|e| lab_error(format!("user data is not base64: {e}")))?;
    let node = netns.create_nodes(1).await?.remove(0);
    let iface = node.interfaces()[0].clone();
    let subnet = netns.provisioner().subnet();
    // The instance's address, and the one its outgoing packets carry on the cluster's network.
    let setup =
        format!("ip addr add {ip}/24 dev {iface} && ip route replace {subnet}/24 dev {iface} src {ip}");
    let out = node.run("sh", ["-c", setup.as_str()]).await?;
    if !out.status.success() {
        return Err(lab_error(format!("{setup}: {}", out.stderr_str())));
    }
    let root = node.root_dir().to_string();
    let script = format!("{root}/user-data");
    node.send_bytes(&script, user_data.clone(), 0o700).await?;
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
    let process = node.start(spec).await?;
    Ok((
        Running {
            node,
            process: process.control(),
        },
        user_data,
    ))
}
