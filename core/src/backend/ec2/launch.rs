//! Batched launches. The cluster asks for machines one node at a time, concurrently; nodes that
//! arrive together (within [`GATHER`]) are cut into even batches of at most `batch_size`, and
//! each batch is **one** RunInstances call (MinCount = MaxCount), the batches running
//! concurrently. A batch that meets a capacity error tries the next subnet, then the next
//! instance type ([`userdata::attempts`]).

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aws_sdk_ec2::types::{
    HttpTokensState, InstanceMetadataOptionsRequest, InstanceType, ResourceType, ShutdownBehavior, Tag,
    TagSpecification,
};
use base64::Engine;
use tokio::sync::oneshot;

use super::aws::{CallError, error};
use super::userdata::{self, UserData};
use super::{Inner, objects, tags};
use crate::{Error, Result};

/// How long the first node of a `create_nodes` call waits for the others before its batch goes.
pub(super) const GATHER: Duration = Duration::from_millis(50);

/// One launched instance, handed to its node's provisioning.
pub(super) struct Launched {
    pub instance_id: String,
    pub private_ip: IpAddr,
    /// The key of this instance's TLS bundle (the manifest's URL for it is presigned already).
    pub bundle_key: String,
    pub batch: Arc<Batch>,
}

/// What the nodes of one batch share: the manifest, deleted once every node is done with it.
pub(super) struct Batch {
    pub id: String,
    pub manifest_key: String,
    pub remaining: AtomicUsize,
}

impl Batch {
    /// Records that one node of the batch is done (up or failed); true for the last one.
    pub(super) fn done(&self) -> bool {
        self.remaining.fetch_sub(1, Ordering::AcqRel) == 1
    }
}

/// A node waiting for its batch.
pub(super) struct Pending {
    pub node: String,
    pub reply: oneshot::Sender<Result<Launched>>,
}

impl Inner {
    /// Queues `node` for the next batch and waits for its instance.
    pub(super) async fn launch(self: &Arc<Self>, node: &str) -> Result<Launched> {
        let (reply, launched) = oneshot::channel();
        let first = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            pending.push(Pending {
                node: node.to_string(),
                reply,
            });
            pending.len() == 1
        };
        if first {
            let inner = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(GATHER).await;
                inner.flush();
            });
        }
        launched.await.map_err(|_| {
            error(format!(
                "node {node}: its batch's launch task ended without an answer"
            ))
        })?
    }

    /// Cuts everything queued into batches and launches each on a task of its own.
    fn flush(self: &Arc<Self>) {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        let mut pending = pending.into_iter();
        for size in userdata::batch_sizes(pending.len(), self.settings.batch_size as usize) {
            let group: Vec<Pending> = pending.by_ref().take(size).collect();
            let number = self.next_batch.fetch_add(1, Ordering::Relaxed);
            let inner = self.clone();
            tokio::spawn(async move {
                let nodes: Vec<String> = group.iter().map(|p| p.node.clone()).collect();
                match inner.run_batch(number, &nodes).await {
                    Ok(launched) => {
                        for (p, l) in group.into_iter().zip(launched) {
                            let _ = p.reply.send(Ok(l));
                        }
                    }
                    Err(e) => {
                        let message = e.to_string();
                        for p in group {
                            let _ = p.reply.send(Err(error(format!("node {}: {message}", p.node))));
                        }
                    }
                }
            });
        }
    }

    /// One batch: user data, RunInstances (with capacity fallbacks), manifest.
    async fn run_batch(self: &Arc<Self>, number: usize, nodes: &[String]) -> Result<Vec<Launched>> {
        let count = nodes.len();
        let batch_id = format!("b{number}");
        let what = format!(
            "batch {batch_id} of cluster {}: nodes {}",
            self.cluster_id,
            nodes.join(",")
        );
        let agent_url = self.agent_url().await?;
        let manifest_key = self.object_key(&format!("{batch_id}/manifest"));
        let manifest_url =
            objects::presign(&self.aws, &self.bucket, &manifest_key, self.settings.url_ttl).await?;
        let script = userdata::render(&UserData {
            cluster: &self.cluster_id,
            agent_url: &agent_url,
            manifest_url: &manifest_url,
            node_dir: &self.settings.node_dir,
            agent_port: self.settings.agent_port,
            heartbeat_timeout: self.heartbeat_timeout,
            fetch_deadline: self.settings.boot_timeout,
        });
        let user_data = base64::engine::general_purpose::STANDARD.encode(script.as_bytes());
        let mut refused = Vec::new();
        let mut instances = None;
        for (subnet, instance_type) in userdata::attempts(&self.subnets, &self.settings.instance_types) {
            let place = format!(
                "{instance_type} in {}",
                subnet.as_deref().unwrap_or("the default subnet")
            );
            let request = self
                .aws
                .ec2
                .run_instances()
                .image_id(&self.ami)
                .instance_type(InstanceType::from(instance_type.as_str()))
                .min_count(count as i32)
                .max_count(count as i32)
                .set_subnet_id(subnet.clone())
                .set_security_group_ids(self.security_group.clone().map(|g| vec![g]))
                .user_data(&user_data)
                .instance_initiated_shutdown_behavior(ShutdownBehavior::Terminate)
                .metadata_options(
                    InstanceMetadataOptionsRequest::builder()
                        .http_tokens(HttpTokensState::Required)
                        .build(),
                )
                .set_tag_specifications(Some(self.tag_specifications()));
            match self
                .aws
                .call(
                    "RunInstances",
                    &format!("{what}; {count} × {place}"),
                    request.send(),
                )
                .await
            {
                Ok(output) => {
                    instances = Some(output.instances().to_vec());
                    break;
                }
                Err(CallError::Service { code, message }) if userdata::is_capacity_error(&code) => {
                    tracing::warn!("{message}; trying the next subnet or instance type");
                    refused.push(format!("{place}: {code}"));
                }
                Err(e) => return Err(error(e.message().to_string())),
            }
        }
        let Some(instances) = instances else {
            return Err(error(format!(
                "RunInstances ({what}): no capacity for {count} instances anywhere configured ({}); add \
                 subnets in other availability zones or instance types to the ec2 settings",
                refused.join("; ")
            )));
        };
        // Recorded at once, so that cleanup terminates them whatever happens next.
        let ids: Vec<String> = instances
            .iter()
            .filter_map(|i| i.instance_id().map(str::to_string))
            .collect();
        self.instances
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(ids.iter().cloned());
        if instances.len() != count || ids.len() != count {
            return Err(error(format!(
                "RunInstances ({what}) launched {} instances ({}) for MinCount = MaxCount = {count}",
                instances.len(),
                ids.join(", ")
            )));
        }
        let batch = Arc::new(Batch {
            id: batch_id.clone(),
            manifest_key: manifest_key.clone(),
            remaining: AtomicUsize::new(count),
        });
        let mut launched = Vec::with_capacity(count);
        let mut lines = Vec::with_capacity(count);
        for instance in &instances {
            let id = instance.instance_id().unwrap_or_default().to_string();
            let private_ip: IpAddr = instance
                .private_ip_address()
                .and_then(|a| a.parse().ok())
                .ok_or_else(|| {
                    error(format!(
                        "RunInstances ({what}): instance {id} has no private IPv4 address"
                    ))
                })?;
            let bundle_key = self.object_key(&format!("{batch_id}/{id}.pem"));
            let url = objects::presign(&self.aws, &self.bucket, &bundle_key, self.settings.url_ttl).await?;
            lines.push((private_ip.to_string(), url));
            launched.push(Launched {
                instance_id: id,
                private_ip,
                bundle_key,
                batch: batch.clone(),
            });
        }
        let manifest = userdata::manifest(lines.iter().map(|(ip, url)| (ip.clone(), url.as_str())));
        objects::put(&self.aws, &self.bucket, &manifest_key, manifest.into_bytes()).await?;
        Ok(launched)
    }

    /// The tags every instance and volume gets at launch.
    fn tag_specifications(&self) -> Vec<TagSpecification> {
        let tags = vec![
            tag("Name", &format!("chaos {}", self.cluster_id)),
            tag(tags::CLUSTER, &self.cluster_id),
            tag(tags::OWNER, &crate::backend::owner::current_tag()),
            tag(tags::EXPIRES, &tags::expires_in(self.settings.expiry)),
        ];
        [ResourceType::Instance, ResourceType::Volume]
            .into_iter()
            .map(|kind| {
                TagSpecification::builder()
                    .resource_type(kind)
                    .set_tags(Some(tags.clone()))
                    .build()
            })
            .collect()
    }

    /// The presigned URL of the agent binary, uploaded first if this content is not there yet.
    async fn agent_url(&self) -> Result<String> {
        let key = self
            .agent_key
            .get_or_try_init(|| async {
                let path =
                    crate::backend::agent_binary::agent_binary(crate::backend::agent_binary::Linkage::Static)
                        .await?;
                let bytes = tokio::fs::read(&path).await.map_err(|e| {
                    Error::invalid(path.display().to_string(), format!("reading the agent: {e}"))
                })?;
                let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
                let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
                let key = format!(
                    "{}/agent/chaos-agent-{}-{hex}",
                    self.settings.key_prefix,
                    crate::backend::agent_binary::AGENT_VERSION
                );
                objects::ensure(&self.aws, &self.bucket, &key, || Ok(bytes)).await?;
                Ok::<_, Error>(key)
            })
            .await?;
        objects::presign(&self.aws, &self.bucket, key, self.settings.url_ttl).await
    }
}

fn tag(key: &str, value: &str) -> Tag {
    Tag::builder().key(key).value(value).build()
}
