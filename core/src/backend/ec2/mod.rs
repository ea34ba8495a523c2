//! The `ec2` backend (cargo feature `ec2`): every node is an EC2 instance running `chaos-agent`,
//! launched in batches, tagged, and terminating itself when its runner vanishes.
//!
//! # How a node comes up
//!
//! 1. Nodes created together are cut into batches (`launch.rs`); each batch is one RunInstances
//!    call (MinCount = MaxCount) with the tags `Name`, `io.chaos.cluster`, `io.chaos.owner`,
//!    `io.chaos.expires` on instances and volumes, `InstanceInitiatedShutdownBehavior =
//!    terminate`, IMDSv2 required, and a user data script ([`userdata`]) that holds **no
//!    secret**: presigned GET URLs of the agent binary (uploaded once per content hash) and of
//!    the batch manifest.
//! 2. Once RunInstances returns the private addresses, the runner writes the manifest (address →
//!    presigned URL of that instance's TLS bundle), issues each node's certificate for its
//!    address and uploads the bundle (CA certificate, node certificate, node key).
//! 3. The instance boots, fetches agent, manifest line and bundle, and starts the agent with
//!    `--on-heartbeat-loss poweroff`. As soon as the agent listens, the runner deletes the
//!    bundle (and, once the batch is up, the manifest): the URLs in the user data lead nowhere.
//! 4. The generic [`AgentCluster`] waits for the agent over mutual TLS and supervises it.
//!
//! Every AWS call is bounded (`api_timeout`) and counted ([`Ec2::api_calls`]); every wait is
//! bounded and its error names the node, the instance, what was awaited and the bound.
//! Settings come from the `--backend-config` file ([`settings`]); subnets, security group and
//! bucket not named there are found by the tag `io.chaos.stack` that `infra/` puts on them.
//! The live runner pushes `io.chaos.expires` forward; `chaos gc --backend ec2` terminates
//! instances whose expiry passed or whose runner (on this host) is gone ([`gc`]).

mod aws;
mod discover;
pub mod gc;
#[cfg(target_os = "linux")]
pub mod lab;
mod launch;
mod objects;
pub mod settings;
pub mod tags;
pub mod userdata;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_sdk_ec2::types::{Filter, Tag};
use tokio::sync::OnceCell;

pub use aws::Aws;
pub use gc::collect_garbage;
pub use settings::{Address, Ec2Settings};
/// The AWS SDK crates the backend uses, for callers that inspect what it made.
pub use {aws_sdk_ec2, aws_sdk_s3};

use crate::Result;
use crate::backend::provision::{Limits, Machine, MachineRequest, Provisioner};
use crate::backend::{AgentCluster, ClusterOptions};
use crate::cluster::Cluster;
use aws::error;
use discover::{discover, newest_amazon_linux};

/// A cluster of EC2 instances.
pub type Ec2Cluster = AgentCluster<Ec2>;

/// The backend's limits: 1,000 nodes; provisioning may take up to 10 minutes (boot included).
pub const LIMITS: Limits = Limits {
    max_nodes: 1000,
    provision_time: Duration::from_secs(600),
};

/// Most instance ids one TerminateInstances / CreateTags / DescribeInstances call names.
const IDS_PER_CALL: usize = 500;
/// How often the runner asks which of its instances still run (for the supervisor).
const WATCH_INTERVAL: Duration = Duration::from_secs(10);

/// The registry's entry.
pub const BACKEND: crate::backend::Backend = crate::backend::Backend {
    name: "ec2",
    summary: "one EC2 instance per node, launched in batches, tagged, terminating itself on runner loss",
    availability,
    create: |options| Box::pin(async move { Ok(Arc::new(Ec2::cluster(options).await?) as Arc<dyn Cluster>) }),
    collect_garbage: Some(|options| Box::pin(collect_garbage(options))),
    limits: LIMITS,
    isolated_network: true,
    machine_faults: &[],
    host_labels: false,
    ship_linkage: crate::backend::workspace_binary::Linkage::Static,
};

/// Whether the backend can run here: some AWS configuration must be visible (an endpoint,
/// credentials in the environment, a profile, web identity or container credentials, or
/// `~/.aws`), and the static agent obtainable. Whether the credentials work, the first call
/// says.
pub fn availability() -> Result<(), String> {
    const VARIABLES: [&str; 6] = [
        "AWS_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_PROFILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    ];
    let in_env = VARIABLES
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()));
    let in_home =
        std::env::var_os("HOME").is_some_and(|home| std::path::Path::new(&home).join(".aws").is_dir());
    if !in_env && !in_home {
        return Err(format!(
            "no AWS configuration found (none of {} is set and there is no ~/.aws); see docs/ec2.md",
            VARIABLES.join(", ")
        ));
    }
    crate::backend::agent_binary::obtainable()
}

/// The `ec2` provisioner. See the [module documentation](self).
pub struct Ec2 {
    inner: Arc<Inner>,
}

/// What the provisioner's tasks share.
pub(super) struct Inner {
    aws: Aws,
    settings: Ec2Settings,
    cluster_id: String,
    subnets: Vec<String>,
    security_group: Option<String>,
    bucket: String,
    ami: String,
    heartbeat_timeout: Duration,
    agent_key: OnceCell<String>,
    pending: Mutex<Vec<launch::Pending>>,
    next_batch: AtomicUsize,
    /// Every instance launched for the cluster and not yet terminated by it.
    instances: Mutex<HashSet<String>>,
    nodes: Mutex<HashMap<String, NodeRecord>>,
    /// Instances seen in a state other than pending/running, with that state.
    ended: Mutex<HashMap<String, String>>,
    watcher: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Phases of every node provisioned so far.
    phases: Mutex<Vec<NodePhases>>,
}

/// Where the provisioning of one node spent its time, to tell the runner's own work from the
/// instance's boot ([`Ec2::phases`]).
#[derive(Debug, Clone, Default)]
pub struct NodePhases {
    /// The node.
    pub node: String,
    /// Queued for its batch until its instance was launched: gathering, the agent upload (first
    /// batch), presigning, RunInstances (with capacity fallbacks), the batch manifest.
    pub launch: Duration,
    /// Its certificate issued and its TLS bundle uploaded (and, with `address = "public"`, its
    /// public address awaited).
    pub identity: Duration,
    /// Waiting for its agent to listen: the instance's boot, which the runner only polls for
    /// (every 500 ms).
    pub boot_wait: Duration,
    /// Its bundle (and the batch's last node: the manifest) deleted.
    pub tidy: Duration,
}

impl NodePhases {
    /// The runner's own time for the node: everything but the boot wait.
    pub fn runner(&self) -> Duration {
        self.launch + self.identity + self.tidy
    }
}

#[derive(Debug, Clone)]
struct NodeRecord {
    instance_id: String,
}

impl Ec2 {
    /// An empty cluster: reads the settings file (`options.backend_config`), connects, and
    /// finds subnets, security group, bucket and AMI.
    pub async fn cluster(options: ClusterOptions) -> Result<Ec2Cluster> {
        let provisioner = Self::new(&options).await?;
        AgentCluster::with_provisioner(provisioner, options)
    }

    /// The provisioner alone (see [`Ec2::cluster`]).
    pub async fn new(options: &ClusterOptions) -> Result<Self> {
        let settings = Ec2Settings::load(options.backend_config.as_deref())?;
        let aws = Aws::connect(&settings, None).await?;
        let (subnets, security_group, bucket) = discover(&aws, &settings).await?;
        let ami = match &settings.ami {
            Some(ami) => ami.clone(),
            None => newest_amazon_linux(&aws).await?,
        };
        let safe: String = options
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '-'
                }
            })
            .take(40)
            .collect();
        let cluster_id = format!("{safe}-{:08x}", rand::random::<u32>());
        let inner = Arc::new(Inner {
            aws,
            settings,
            cluster_id,
            subnets,
            security_group,
            bucket,
            ami,
            heartbeat_timeout: options.heartbeat_timeout,
            agent_key: OnceCell::new(),
            pending: Mutex::new(Vec::new()),
            next_batch: AtomicUsize::new(1),
            instances: Mutex::new(HashSet::new()),
            nodes: Mutex::new(HashMap::new()),
            ended: Mutex::new(HashMap::new()),
            watcher: Mutex::new(None),
            phases: Mutex::new(Vec::new()),
        });
        let watcher = tokio::spawn(watch(Arc::downgrade(&inner)));
        *inner.watcher.lock().unwrap_or_else(|e| e.into_inner()) = Some(watcher);
        Ok(Self { inner })
    }

    /// The cluster's id, the value of its `io.chaos.cluster` tags.
    pub fn cluster_id(&self) -> &str {
        &self.inner.cluster_id
    }

    /// The AWS calls made so far, per call name.
    pub fn api_calls(&self) -> BTreeMap<&'static str, u64> {
        self.inner.aws.calls()
    }

    /// Pushes `io.chaos.expires` of every instance of the cluster `expiry` ahead now (the
    /// runner does it by itself at a third of the expiry).
    pub async fn refresh_expiry(&self) -> Result<()> {
        self.inner.refresh_expiry().await
    }

    /// Where the provisioning of each node made so far spent its time (for benchmarks and
    /// diagnosis: the runner's own work against the instances' boot).
    pub fn phases(&self) -> Vec<NodePhases> {
        self.inner
            .phases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The instance of `node`, if it has one.
    pub fn instance_id(&self, node: &str) -> Option<String> {
        self.inner.node(node).map(|r| r.instance_id)
    }
}

impl Inner {
    fn object_key(&self, name: &str) -> String {
        format!("{}/{}/{name}", self.settings.key_prefix, self.cluster_id)
    }

    fn node(&self, node: &str) -> Option<NodeRecord> {
        self.nodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(node)
            .cloned()
    }

    /// Makes node `request.name`: launch (batched), identity, bundle, wait until the agent listens.
    async fn provision(self: &Arc<Self>, request: &MachineRequest<'_>) -> Result<Machine> {
        let node = &request.name;
        let started = Instant::now();
        let launched = self.launch(node).await?;
        let launch = started.elapsed();
        let instance = launched.instance_id.clone();
        self.nodes.lock().unwrap_or_else(|e| e.into_inner()).insert(
            node.clone(),
            NodeRecord {
                instance_id: instance.clone(),
            },
        );
        let mut phases = NodePhases {
            node: node.clone(),
            launch,
            ..NodePhases::default()
        };
        let up = self.bring_up(request, &launched, &mut phases).await;
        // The bundle (the node's key) goes as soon as the agent read it — or could not.
        let tidy = Instant::now();
        let deleted = objects::delete(&self.aws, &self.bucket, &launched.bundle_key).await;
        if launched.batch.done()
            && let Err(e) = objects::delete(&self.aws, &self.bucket, &launched.batch.manifest_key).await
        {
            tracing::warn!("batch {}: deleting its manifest: {e}", launched.batch.id);
        }
        phases.tidy = tidy.elapsed();
        let machine = up?;
        deleted?;
        tracing::debug!(node = %node, instance = %instance, ?phases, "agent listening");
        self.phases.lock().unwrap_or_else(|e| e.into_inner()).push(phases);
        Ok(machine)
    }

    async fn bring_up(
        &self,
        request: &MachineRequest<'_>,
        launched: &launch::Launched,
        phases: &mut NodePhases,
    ) -> Result<Machine> {
        let node = &request.name;
        let instance = &launched.instance_id;
        let started = Instant::now();
        let dial = match self.settings.address {
            Address::Private => launched.private_ip,
            Address::Public => self.public_ip(node, instance).await?,
        };
        let mut ips = vec![launched.private_ip];
        if dial != launched.private_ip {
            ips.push(dial);
        }
        let identity = request.issue_identity(&ips, &[])?;
        let bundle = userdata::bundle(request.ca_pem(), &identity);
        objects::put(&self.aws, &self.bucket, &launched.bundle_key, bundle.into_bytes()).await?;
        phases.identity = started.elapsed();
        let agent = SocketAddr::new(dial, self.settings.agent_port);
        let waiting = Instant::now();
        self.wait_listening(node, instance, agent).await?;
        phases.boot_wait = waiting.elapsed();
        Ok(Machine {
            agent,
            ips: vec![launched.private_ip],
            interfaces: vec![self.settings.interface.clone()],
            root_dir: format!("{}/root", self.settings.node_dir),
        })
    }

    /// Waits (within `boot_timeout`) until the agent of `node` accepts TCP connections: then it
    /// has read its TLS files.
    async fn wait_listening(&self, node: &str, instance: &str, agent: SocketAddr) -> Result<()> {
        let bound = self.settings.boot_timeout;
        let deadline = Instant::now() + bound;
        loop {
            let attempt =
                tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(agent)).await;
            if let Ok(Ok(_)) = attempt {
                return Ok(());
            }
            if let Some(state) = self.ended_state(instance) {
                return Err(error(format!(
                    "node {node} (instance {instance}): the instance is {state} before its agent listened on {agent}"
                )));
            }
            if Instant::now() >= deadline {
                return Err(error(format!(
                    "node {node} (instance {instance}): the agent did not listen on {agent} within {bound:?} \
                     (boot_timeout) after RunInstances; see the instance's console output \
                     (aws ec2 get-console-output --instance-id {instance}) and that the security group \
                     admits the runner on port {}",
                    self.settings.agent_port
                )));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The public address of `instance`, once it has one (within `boot_timeout`).
    async fn public_ip(&self, node: &str, instance: &str) -> Result<IpAddr> {
        let bound = self.settings.boot_timeout;
        let deadline = Instant::now() + bound;
        loop {
            let out = self
                .aws
                .must(
                    "DescribeInstances",
                    &format!("public address of node {node} ({instance})"),
                    self.aws.ec2.describe_instances().instance_ids(instance).send(),
                )
                .await?;
            let ip = out
                .reservations()
                .iter()
                .flat_map(|r| r.instances())
                .find_map(|i| i.public_ip_address().and_then(|a| a.parse().ok()));
            if let Some(ip) = ip {
                return Ok(ip);
            }
            if Instant::now() >= deadline {
                return Err(error(format!(
                    "node {node} (instance {instance}): no public address within {bound:?} (boot_timeout); \
                     launch into subnets that map public addresses (infra/'s do) or use address = \"private\""
                )));
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    fn ended_state(&self, instance: &str) -> Option<String> {
        self.ended
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(instance)
            .cloned()
    }

    /// Terminates `ids` (chunked).
    async fn terminate(&self, ids: &[String], what: &str) -> Result<()> {
        for chunk in ids.chunks(IDS_PER_CALL) {
            self.aws
                .must(
                    "TerminateInstances",
                    &format!("{what}: {}", chunk.join(", ")),
                    self.aws
                        .ec2
                        .terminate_instances()
                        .set_instance_ids(Some(chunk.to_vec()))
                        .send(),
                )
                .await?;
        }
        Ok(())
    }

    /// Asks for the state of every instance of the cluster; records the ended ones.
    async fn refresh_states(&self) -> Result<()> {
        let out = self
            .aws
            .must(
                "DescribeInstances",
                &format!("states of cluster {}", self.cluster_id),
                self.aws
                    .ec2
                    .describe_instances()
                    .filters(
                        Filter::builder()
                            .name(format!("tag:{}", tags::CLUSTER))
                            .values(&self.cluster_id)
                            .build(),
                    )
                    .send(),
            )
            .await?;
        let mut ended = self.ended.lock().unwrap_or_else(|e| e.into_inner());
        for instance in out.reservations().iter().flat_map(|r| r.instances()) {
            let state = instance
                .state()
                .and_then(|s| s.name())
                .map(|n| n.as_str().to_string())
                .unwrap_or_default();
            if let Some(id) = instance.instance_id()
                && !matches!(state.as_str(), "pending" | "running")
            {
                ended.insert(id.to_string(), state);
            }
        }
        Ok(())
    }

    /// Pushes `io.chaos.expires` of every live instance `expiry` ahead.
    async fn refresh_expiry(&self) -> Result<()> {
        let ids: Vec<String> = self
            .instances
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect();
        let value = tags::expires_in(self.settings.expiry);
        for chunk in ids.chunks(IDS_PER_CALL) {
            self.aws
                .must(
                    "CreateTags",
                    &format!("refreshing {} of cluster {}", tags::EXPIRES, self.cluster_id),
                    self.aws
                        .ec2
                        .create_tags()
                        .set_resources(Some(chunk.to_vec()))
                        .tags(Tag::builder().key(tags::EXPIRES).value(&value).build())
                        .send(),
                )
                .await?;
        }
        Ok(())
    }

    /// Terminates every instance, waits if asked, deletes the cluster's objects.
    async fn teardown(&self) -> Result<()> {
        if let Some(watcher) = self.watcher.lock().unwrap_or_else(|e| e.into_inner()).take() {
            watcher.abort();
        }
        let ids: Vec<String> = {
            let mut instances = self.instances.lock().unwrap_or_else(|e| e.into_inner());
            let mut ids: Vec<String> = instances.drain().collect();
            ids.sort();
            ids
        };
        let mut errors = Vec::new();
        if let Err(e) = self
            .terminate(&ids, &format!("cleanup of cluster {}", self.cluster_id))
            .await
        {
            errors.push(e.to_string());
        } else if self.settings.wait_terminated
            && let Err(e) = self.wait_terminated(&ids).await
        {
            errors.push(e.to_string());
        }
        let prefix = self.object_key("");
        if let Err(e) = objects::delete_prefix(&self.aws, &self.bucket, &prefix).await {
            errors.push(e.to_string());
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(error(errors.join("; ")))
        }
    }

    async fn wait_terminated(&self, ids: &[String]) -> Result<()> {
        let bound = self.settings.boot_timeout;
        let deadline = Instant::now() + bound;
        loop {
            self.refresh_states().await?;
            let left: Vec<&String> = {
                let ended = self.ended.lock().unwrap_or_else(|e| e.into_inner());
                ids.iter()
                    .filter(|id| ended.get(*id).map(String::as_str) != Some("terminated"))
                    .collect()
            };
            if left.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let left: Vec<&str> = left.iter().map(|s| s.as_str()).collect();
                return Err(error(format!(
                    "cleanup of cluster {}: instances {} not terminated within {bound:?} (boot_timeout)",
                    self.cluster_id,
                    left.join(", ")
                )));
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
}

/// The runner's background work for a cluster: instance states for the supervisor, and the
/// expiry tag pushed forward at a third of the expiry. Ends with the cluster.
async fn watch(inner: std::sync::Weak<Inner>) {
    let mut last_refresh = Instant::now();
    loop {
        tokio::time::sleep(WATCH_INTERVAL).await;
        let Some(inner) = inner.upgrade() else { return };
        if let Err(e) = inner.refresh_states().await {
            tracing::warn!("ec2 cluster {}: {e}", inner.cluster_id);
        }
        if last_refresh.elapsed() >= inner.settings.expiry / 3 {
            match inner.refresh_expiry().await {
                Ok(()) => last_refresh = Instant::now(),
                Err(e) => tracing::warn!("ec2 cluster {}: {e}", inner.cluster_id),
            }
        }
    }
}

#[async_trait]
impl Provisioner for Ec2 {
    fn name(&self) -> &'static str {
        "ec2"
    }

    fn limits(&self) -> Limits {
        LIMITS
    }

    async fn provision(&self, request: MachineRequest<'_>) -> Result<Machine> {
        self.inner.provision(&request).await
    }

    async fn release(&self, node: &str) -> Result<()> {
        let Some(record) = self
            .inner
            .nodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(node)
        else {
            return Ok(());
        };
        self.inner
            .instances
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&record.instance_id);
        self.inner
            .terminate(
                std::slice::from_ref(&record.instance_id),
                &format!("releasing node {node}"),
            )
            .await
    }

    async fn teardown(&self) -> Result<()> {
        self.inner.teardown().await
    }

    fn teardown_now(&self) {
        let inner = self.inner.clone();
        let bound = inner.settings.api_timeout * 2;
        // A thread of its own with a runtime of its own: callable from `Drop` anywhere.
        let done = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
            match runtime {
                Ok(runtime) => {
                    let teardown = async { tokio::time::timeout(bound, inner.teardown()).await };
                    if let Ok(Err(e)) = runtime.block_on(teardown) {
                        tracing::warn!("ec2 cluster {}: teardown: {e}", inner.cluster_id);
                    }
                }
                Err(e) => tracing::warn!(
                    "ec2 cluster {}: no runtime for the teardown: {e}",
                    inner.cluster_id
                ),
            }
        });
        let _ = done.join();
    }

    async fn agent_status(&self, node: &str) -> Option<String> {
        let record = self.inner.node(node)?;
        self.inner
            .ended_state(&record.instance_id)
            .map(|state| format!("instance {} is {state}", record.instance_id))
    }

    async fn agent_exited(&self, node: &str) -> String {
        loop {
            if let Some(how) = self.agent_status(node).await {
                return how;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn restart_agent(&self, node: &str) -> Result<()> {
        Err(error(format!(
            "node {node}: an ec2 node's agent cannot be restarted from outside; its instance terminates \
             itself on heartbeat loss"
        )))
    }

    async fn diagnose(&self, node: &str) -> String {
        match self.instance_id(node) {
            Some(id) => format!("instance {id}: see `aws ec2 get-console-output --instance-id {id}`"),
            None => String::new(),
        }
    }

    fn describe(&self) -> Vec<(&'static str, String)> {
        vec![
            ("cluster", self.inner.cluster_id.clone()),
            ("region", self.inner.aws.region.clone()),
            ("bucket", self.inner.bucket.clone()),
            ("ami", self.inner.ami.clone()),
        ]
    }
}

impl Drop for Ec2 {
    fn drop(&mut self) {
        if let Some(watcher) = self
            .inner
            .watcher
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            watcher.abort();
        }
    }
}

impl std::fmt::Debug for Ec2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ec2")
            .field("cluster", &self.inner.cluster_id)
            .finish_non_exhaustive()
    }
}
