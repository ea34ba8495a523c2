//! A test bed for the `ec2` backend on this machine, for tests and benchmarks without an AWS
//! account: [`Lab::start`] runs [moto](https://docs.getmoto.org/) (the AWS API emulator, PyPI
//! `moto[server]`) in server mode, makes in it what `infra/` would make (a VPC, two subnets in
//! two zones, a security group, a bucket, tagged with the lab's stack name), writes a settings
//! file pointing the backend at it (`endpoint_url`, `emulator = true`: no real credential is
//! ever looked up), and runs a stand-in for EC2's hypervisor (`hypervisor.rs`) that boots
//! every instance moto reports running by running its user data in a network namespace
//! carrying the instance's private address.
//!
//! moto's VPC is the lab's netns cluster's /24 (its subnets the upper half) and moto listens on
//! that cluster's host address, which every namespace reaches: every address involved is the
//! lab's own, and no traffic goes to a public address.
//!
//! # What it proves, and what it cannot
//!
//! The backend runs unchanged through the real AWS SDK: batched RunInstances, tags, discovery
//! by stack tag, AMI lookup among moto's Amazon Linux images, presigned S3 downloads, user data
//! run as cloud-init would, the agent over mutual TLS, heartbeat loss powering an instance off
//! (terminated by the stand-in), cleanup. It cannot show real boot times (moto's instances run
//! at once), real IMDS or cloud-init, real AMIs, capacity errors (moto never runs out), IAM, or
//! public addresses (the runner never dials one here). See `docs/ec2.md`, section 7.
//!
//! [`Lab::cleanup`] stops the stand-in, moto and the namespaces, and fails if the stand-in could
//! not boot an instance; dropping the lab (a panicking test) kills moto and removes the
//! namespaces too.

mod hypervisor;

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_ec2 as sdk;

pub use hypervisor::Booted;
use hypervisor::Hypervisor;

use super::{Aws, Ec2Settings, tags};
use crate::backend::ClusterOptions;
use crate::backend::netns::NetnsCluster;
use crate::cluster::Cluster;
use crate::ext::NodeExt;
use crate::{Error, Result};

/// The port the lab's instances' agents listen on (each in its own namespace).
pub const LAB_AGENT_PORT: u16 = 7443;
/// The region of the lab (moto ships Amazon Linux 2023 images for it).
pub const LAB_REGION: &str = "us-east-1";
/// Instances per RunInstances call in the lab's settings: small, so that a few nodes already
/// take several batches.
pub const LAB_BATCH_SIZE: u32 = 2;

pub(crate) fn lab_error(message: impl Into<String>) -> Error {
    Error::backend("ec2", format!("test lab: {}", message.into()))
}

/// Whether a lab can run here: network namespaces, `moto_server` on `PATH`, and an agent
/// binary. `Err` is one line saying what is missing.
pub fn availability() -> Result<(), String> {
    crate::backend::netns::availability()?;
    let moto = std::process::Command::new("moto_server")
        .arg("--help")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !moto {
        return Err("moto_server is not on PATH (pip install 'moto[server]')".into());
    }
    crate::backend::agent_binary::obtainable()
}

/// moto in server mode, killed on drop.
struct Moto {
    child: tokio::process::Child,
    addr: SocketAddr,
}

impl Moto {
    /// Starts `moto_server` on `ip` (a free port the OS picks) and waits, within `bound`, until
    /// it answers.
    async fn start(ip: Ipv4Addr, bound: Duration) -> Result<Moto> {
        let port = TcpListener::bind((ip, 0))
            .and_then(|l| l.local_addr())
            .map_err(|e| Error::io(format!("ec2 test lab: a free port on {ip} for moto"), e))?
            .port();
        let mut child = tokio::process::Command::new("moto_server")
            .args(["-H", &ip.to_string(), "-p", &port.to_string()])
            // moto loads its Amazon images only with this set (or defaults); be explicit.
            .env("MOTO_EC2_LOAD_DEFAULT_AMIS", "true")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Error::io("ec2 test lab: spawning moto_server", e))?;
        let addr = SocketAddr::from((ip, port));
        let deadline = Instant::now() + bound;
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(lab_error(format!("moto_server on {addr} exited with {status}")));
            }
            if Instant::now() >= deadline {
                return Err(lab_error(format!(
                    "moto_server did not listen on {addr} within {bound:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(Moto { child, addr })
    }
}

/// The emulator, the hypervisor stand-in and the settings file of an `ec2` cluster over them.
/// See the [module documentation](self).
pub struct Lab {
    // Field order is drop order: the boot loop first, then moto, then the namespaces.
    hypervisor: Hypervisor,
    moto: Moto,
    netns: Arc<NetnsCluster>,
    aws: Aws,
    stack: String,
    subnets: Vec<String>,
    settings: String,
    settings_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Lab {
    /// Starts a lab named `name` (its netns cluster is `<name>-hv`). `bound` bounds moto's start,
    /// and is the settings' `boot_timeout` (an instance booting and its agent listening) and
    /// the wait for termination at cleanup.
    pub async fn start(name: &str, bound: Duration) -> Result<Lab> {
        availability().map_err(lab_error)?;
        let netns = Arc::new(
            NetnsCluster::new(ClusterOptions {
                name: format!("{name}-hv"),
                ..ClusterOptions::default()
            })
            .await?,
        );
        let started = Self::populate(&netns, bound).await;
        match started {
            Ok((moto, aws, stack, subnets, settings, dir)) => {
                let settings_path = dir.path().join("ec2.toml");
                std::fs::write(&settings_path, &settings).map_err(|e| {
                    Error::io(format!("ec2 test lab: writing {}", settings_path.display()), e)
                })?;
                let hypervisor = Hypervisor::start(netns.clone(), aws.ec2().clone());
                Ok(Lab {
                    hypervisor,
                    moto,
                    netns,
                    aws,
                    stack,
                    subnets,
                    settings,
                    settings_path,
                    _dir: dir,
                })
            }
            Err(e) => {
                if let Err(c) = netns.cleanup().await {
                    tracing::warn!("ec2 test lab: cleaning up after a failed start: {c}");
                }
                Err(e)
            }
        }
    }

    #[allow(clippy::type_complexity)]
    async fn populate(
        netns: &NetnsCluster,
        bound: Duration,
    ) -> Result<(Moto, Aws, String, Vec<String>, String, tempfile::TempDir)> {
        let moto = Moto::start(netns.provisioner().host_address(), bound).await?;
        let dir = tempfile::Builder::new()
            .prefix("chaos-ec2-lab-")
            .tempdir()
            .map_err(|e| Error::io("ec2 test lab: creating a temporary directory", e))?;
        let stack = format!(
            "chaos-lab-{}-{:06x}",
            std::process::id(),
            rand::random::<u32>() & 0xff_ffff
        );
        let base = format!(
            "region = \"{LAB_REGION}\"\nendpoint_url = \"http://{}\"\nemulator = true\n",
            moto.addr
        );
        let aws = Aws::connect(&Ec2Settings::parse(&base, Path::new("ec2 test lab"))?, None).await?;
        let subnets = infra(&aws, &stack, netns.provisioner().subnet()).await?;
        let settings = format!(
            "{base}stack = \"{stack}\"\nbatch_size = {LAB_BATCH_SIZE}\ninterface = \"eth0\"\n\
             agent_port = {LAB_AGENT_PORT}\nboot_timeout = \"{}s\"\nexpiry = \"10m\"\nwait_terminated = true\n",
            bound.as_secs().max(1)
        );
        Ok((moto, aws, stack, subnets, settings, dir))
    }

    /// Options of an `ec2` cluster named `name` over this lab.
    pub fn cluster_options(&self, name: &str) -> ClusterOptions {
        ClusterOptions {
            name: name.to_string(),
            backend_config: Some(self.settings_path.clone()),
            ..ClusterOptions::default()
        }
    }

    /// The settings file's path (`--backend-config`).
    pub fn settings_path(&self) -> &Path {
        &self.settings_path
    }

    /// The settings file's text (TOML), for a test that writes a variant of it.
    pub fn settings(&self) -> &str {
        &self.settings
    }

    /// The stack name the lab's resources are tagged with; its bucket is `<stack>-nodes`.
    pub fn stack(&self) -> &str {
        &self.stack
    }

    /// The lab's subnets, in the order the backend tries them.
    pub fn subnets(&self) -> &[String] {
        &self.subnets
    }

    /// Where moto listens.
    pub fn moto_addr(&self) -> SocketAddr {
        self.moto.addr
    }

    /// The AWS clients, connected to moto.
    pub fn aws(&self) -> &Aws {
        &self.aws
    }

    /// The EC2 client, connected to moto.
    pub fn ec2(&self) -> &sdk::Client {
        self.aws.ec2()
    }

    /// What the stand-in saw of `instance` (`None` until it booted it).
    pub fn booted(&self, instance: &str) -> Option<Booted> {
        self.hypervisor.booted(instance)
    }

    /// The state moto reports for `instance` (empty when it reports none).
    pub async fn state(&self, instance: &str) -> Result<String> {
        hypervisor::instance_state(self.aws.ec2(), instance).await
    }

    /// Cuts the instance at private address `ip` off from the runner (drops its agent port in
    /// the instance's namespace), as a lost network would.
    pub async fn disconnect(&self, ip: &str) -> Result<()> {
        let node = self
            .hypervisor
            .node_of(ip)
            .ok_or_else(|| lab_error(format!("no namespace carries {ip}")))?;
        let port = LAB_AGENT_PORT.to_string();
        let out = node
            .run(
                "iptables",
                [
                    "-I", "INPUT", "-d", ip, "-p", "tcp", "--dport", &port, "-j", "DROP",
                ],
            )
            .await?;
        if !out.status.success() {
            return Err(lab_error(format!(
                "iptables in {ip}'s namespace: {}",
                out.stderr_str()
            )));
        }
        Ok(())
    }

    /// Stops the stand-in, moto and the namespaces; fails if the stand-in could not boot an
    /// instance or the namespaces could not be removed.
    pub async fn cleanup(mut self) -> Result<()> {
        self.hypervisor.stop().await;
        let errors = self.hypervisor.errors();
        let _ = self.moto.child.kill().await;
        let cleaned = self.netns.cleanup().await;
        if !errors.is_empty() {
            return Err(lab_error(format!(
                "the hypervisor stand-in failed: {}",
                errors.join("; ")
            )));
        }
        cleaned
    }
}

/// What `infra/` would make, made in moto: a VPC on the netns cluster's /24 (`net`) with two
/// subnets (upper half) in two zones, a security group and a bucket `<stack>-nodes`, tagged
/// `io.chaos.stack = <stack>`. Returns the subnets.
async fn infra(aws: &Aws, stack: &str, net: Ipv4Addr) -> Result<Vec<String>> {
    let call = |what: &str| {
        let what = what.to_string();
        move |e: String| lab_error(format!("{what}: {e}"))
    };
    let ec2 = aws.ec2();
    let [a, b, c, _] = net.octets();
    let vpc = ec2
        .create_vpc()
        .cidr_block(format!("{a}.{b}.{c}.0/24"))
        .send()
        .await
        .map_err(|e| call("CreateVpc")(e.to_string()))?;
    let vpc = vpc
        .vpc()
        .and_then(|v| v.vpc_id())
        .ok_or_else(|| lab_error("CreateVpc returned no id"))?
        .to_string();
    let mut resources = Vec::new();
    for (cidr, zone) in [(128, "us-east-1a"), (192, "us-east-1b")] {
        let out = ec2
            .create_subnet()
            .vpc_id(&vpc)
            .cidr_block(format!("{a}.{b}.{c}.{cidr}/26"))
            .availability_zone(zone)
            .send()
            .await
            .map_err(|e| call("CreateSubnet")(e.to_string()))?;
        let id = out.subnet().and_then(|s| s.subnet_id());
        resources.push(
            id.ok_or_else(|| lab_error("CreateSubnet returned no id"))?
                .to_string(),
        );
    }
    let group = ec2
        .create_security_group()
        .group_name(format!("{stack}-nodes"))
        .description("chaos agents")
        .vpc_id(&vpc)
        .send()
        .await
        .map_err(|e| call("CreateSecurityGroup")(e.to_string()))?;
    let subnets = resources.clone();
    let group = group
        .group_id()
        .ok_or_else(|| lab_error("CreateSecurityGroup returned no id"))?;
    resources.push(group.to_string());
    ec2.create_tags()
        .set_resources(Some(resources))
        .tags(sdk::types::Tag::builder().key(tags::STACK).value(stack).build())
        .send()
        .await
        .map_err(|e| call("CreateTags")(e.to_string()))?;
    aws.s3()
        .create_bucket()
        .bucket(format!("{stack}-nodes"))
        .send()
        .await
        .map_err(|e| call("CreateBucket")(e.to_string()))?;
    Ok(subnets)
}
