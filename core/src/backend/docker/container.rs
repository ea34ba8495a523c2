//! Making one node's container: its TLS files, the agent as entrypoint, its address on the
//! cluster network; and what the supervisor asks of it (has it exited, start it again).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use bollard::models::{
    ContainerCreateBody, EndpointIpamConfig, EndpointSettings, HostConfig, NetworkingConfig, PortBinding,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    UploadToContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use futures_util::StreamExt;

use super::daemon::{bounded, is_port_taken, within};
use super::network::with_last_octet;
use super::{
    AGENT_PORT, DAEMON_BOUND, Delivery, Inner, LABEL_CLUSTER, LABEL_NODE, LABEL_OWNER, NodeEntry, ROOT_DIR,
    STATE_DIR, TLS_DIR, image,
};
use crate::backend::provision::{Machine, MachineRequest};
use crate::certs;
use crate::{Error, Result};

/// Host ports published agents get, below Linux's ephemeral range so outgoing connections on
/// the daemon host do not take them.
const PUBLISHED_PORTS: std::ops::Range<u16> = 20_000..32_768;
/// How many host ports to try for one node before giving up.
const PORT_ATTEMPTS: u32 = 8;

impl Inner {
    /// The container name of node `node`: `chaos-<cluster id>-<node>`.
    pub(super) fn container_name(&self, node: &str) -> String {
        format!("chaos-{}-{node}", self.id)
    }

    fn labels(&self, node: Option<&str>) -> HashMap<String, String> {
        let mut labels = HashMap::from([
            (LABEL_CLUSTER.to_string(), self.id.clone()),
            (LABEL_OWNER.to_string(), self.owner.clone()),
        ]);
        if let Some(node) = node {
            labels.insert(LABEL_NODE.to_string(), node.to_string());
        }
        labels
    }

    /// The endpoint settings that give node `name` address `ip` on the cluster network.
    pub(super) fn endpoint(&self, name: &str, ip: Ipv4Addr) -> EndpointSettings {
        EndpointSettings {
            ipam_config: Some(EndpointIpamConfig {
                ipv4_address: Some(ip.to_string()),
                ..Default::default()
            }),
            aliases: Some(vec![name.to_string()]),
            ..Default::default()
        }
    }

    /// Creates node `request.name`'s container (with its TLS files, and the agent for a user's
    /// image) and starts it. On failure the container is removed.
    pub(super) async fn create_node(&self, request: &MachineRequest<'_>) -> Result<Machine> {
        let container = self.container_name(&request.name);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = self.published_on.map(|_| {
                PUBLISHED_PORTS.start
                    + (rand::random::<u32>() % u32::from(PUBLISHED_PORTS.end - PUBLISHED_PORTS.start)) as u16
            });
            let result = self.create_container(request, &container, port).await;
            match result {
                Ok(machine) => {
                    self.lock().nodes.push(NodeEntry {
                        name: request.name.clone(),
                        container,
                        ip: match machine.ips.first() {
                            Some(IpAddr::V4(ip)) => *ip,
                            _ => Ipv4Addr::UNSPECIFIED,
                        },
                    });
                    return Ok(machine);
                }
                Err(e) => {
                    self.remove_container(&container).await;
                    // Another process holds the host port we picked: pick another.
                    if !(port.is_some() && attempt < PORT_ATTEMPTS && is_port_taken(&e)) {
                        return Err(e);
                    }
                }
            }
        }
    }

    /// Removes `container` (forced, with its volumes), bounded; errors are not interesting
    /// (it may not exist).
    pub(super) async fn remove_container(&self, container: &str) {
        let options = RemoveContainerOptionsBuilder::new().force(true).v(true).build();
        let _ = tokio::time::timeout(
            DAEMON_BOUND,
            self.docker.remove_container(container, Some(options)),
        )
        .await;
    }

    /// Creates and starts node `request.name`'s container, publishing the agent on
    /// `published_port` when the runner reaches agents that way.
    async fn create_container(
        &self,
        request: &MachineRequest<'_>,
        container: &str,
        published_port: Option<u16>,
    ) -> Result<Machine> {
        let name = request.name.as_str();
        let ip = with_last_octet(self.subnet, (request.number + 1) as u8);
        let mut sans = vec![IpAddr::V4(ip)];
        sans.extend(self.published_on);
        let identity = request.issue_identity(&sans, &[name.to_string(), container.to_string()])?;
        let agent_port = format!("{AGENT_PORT}/tcp");
        let port_bindings = published_port.map(|port| {
            HashMap::from([(
                agent_port.clone(),
                Some(vec![PortBinding {
                    host_ip: None,
                    host_port: Some(port.to_string()),
                }]),
            )])
        });

        let binds = match &self.delivery {
            Delivery::Bind { path, .. } => {
                let tls = path.join(name).join("tls");
                identity.write_node_dir(&tls, request.ca_pem())?;
                let mut binds = vec![format!("{}:{TLS_DIR}:ro", tls.display())];
                if let Some(agent) = &self.user_agent {
                    binds.push(format!("{}:{}:ro", agent.path.display(), image::AGENT_PATH));
                }
                Some(binds)
            }
            Delivery::Upload => None,
        };
        let timeout_ms = request.heartbeat_timeout.as_millis().max(1);
        let body = ContainerCreateBody {
            image: Some(self.image.clone()),
            hostname: Some(name.to_string()),
            entrypoint: Some(vec![image::AGENT_PATH.to_string()]),
            cmd: Some(vec![
                "--listen".into(),
                format!("0.0.0.0:{AGENT_PORT}"),
                "--tls-dir".into(),
                TLS_DIR.into(),
                "--root-dir".into(),
                ROOT_DIR.into(),
                "--state-dir".into(),
                STATE_DIR.into(),
                "--heartbeat-timeout".into(),
                format!("{timeout_ms}ms"),
            ]),
            working_dir: Some(ROOT_DIR.to_string()),
            // An anonymous volume: node files bypass the storage driver (fuse-overlayfs here
            // moves 1 GiB in over a minute), and removing the container with `v` removes it.
            volumes: Some(vec![ROOT_DIR.to_string()]),
            labels: Some(self.labels(Some(name))),
            host_config: Some(HostConfig {
                cap_add: Some(vec!["NET_ADMIN".to_string()]),
                // docker-init as PID 1 reaps orphans of the processes the agent starts.
                init: Some(true),
                network_mode: Some(self.network.clone()),
                port_bindings,
                binds,
                ..Default::default()
            }),
            exposed_ports: published_port.map(|_| vec![agent_port.clone()]),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(self.network.clone(), self.endpoint(name, ip))])),
            }),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::new().name(container).build();
        bounded(
            format!("node {name}: creating container {container} from {}", self.image),
            self.docker.create_container(Some(options), body),
        )
        .await?;

        if matches!(self.delivery, Delivery::Upload) {
            self.upload_files(name, container, request.ca_pem(), &identity)
                .await?;
        }
        bounded(
            format!("node {name}: starting container {container}"),
            self.docker.start_container(container, None),
        )
        .await?;
        let agent = match (self.published_on, published_port) {
            (Some(host), Some(port)) => SocketAddr::new(host, port),
            _ => SocketAddr::new(IpAddr::V4(ip), AGENT_PORT),
        };
        Ok(Machine {
            agent,
            ips: vec![IpAddr::V4(ip)],
            // Docker names a container's first (here: only) network interface eth0.
            interfaces: vec!["eth0".to_string()],
            root_dir: ROOT_DIR.to_string(),
        })
    }

    /// Copies node `name`'s TLS files (and the agent, for a user's image) into its created
    /// container: [`Delivery::Upload`].
    async fn upload_files(
        &self,
        name: &str,
        container: &str,
        ca_pem: &str,
        identity: &certs::Identity,
    ) -> Result<()> {
        let ca = ca_pem.as_bytes();
        let mut files: Vec<(&str, u32, &[u8])> = vec![
            ("chaos/tls/ca.pem", 0o644, ca),
            ("chaos/tls/node.pem", 0o644, identity.cert_pem.as_bytes()),
            ("chaos/tls/node.key", 0o600, identity.key_pem.as_bytes()),
        ];
        if let Some(bytes) = self.user_agent.as_ref().and_then(|a| a.bytes.as_ref()) {
            files.push(("chaos/chaos-agent", 0o755, bytes.as_slice()));
        }
        let archive = tar_archive(
            &[
                ("chaos", 0o755),
                ("chaos/tls", 0o700),
                ("chaos/root", 0o755),
                ("chaos/state", 0o700),
            ],
            &files,
        )
        .map_err(|e| Error::io(format!("node {name}: packing its TLS files"), e))?;
        let upload = UploadToContainerOptionsBuilder::new().path("/").build();
        bounded(
            format!("node {name}: copying TLS files into {container}"),
            self.docker
                .upload_to_container(container, Some(upload), bollard::body_full(archive.into())),
        )
        .await
        .map(drop)
    }

    /// The last lines a container printed, for error messages.
    pub(super) async fn log_tail(&self, container: &str) -> String {
        let options = LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .tail("20")
            .build();
        let mut logs = self.docker.logs(container, Some(options));
        let mut text = String::new();
        let collect = async {
            while let Some(Ok(chunk)) = logs.next().await {
                text.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(3), collect).await;
        if text.trim().is_empty() {
            "(empty)".to_string()
        } else {
            text
        }
    }
    /// `None` while `container` runs; how it ended otherwise.
    pub(super) async fn container_status(&self, container: &str) -> Option<String> {
        match within(DAEMON_BOUND, self.docker.inspect_container(container, None)).await {
            Ok(info) => {
                let state = info.state?;
                if state.running == Some(true) {
                    return None;
                }
                Some(format!(
                    "container {container} {} with code {}",
                    state
                        .status
                        .map_or_else(|| "not running".to_string(), |s| s.to_string()),
                    state.exit_code.unwrap_or_default()
                ))
            }
            Err(f) if f.status() == Some(404) => Some(format!("container {container} is gone")),
            // The daemon does not answer: nothing to conclude.
            Err(_) => None,
        }
    }

    /// Resolves once `container` stops. Docker says when; the agent is the container's
    /// entrypoint (under docker-init), so the container stops when the agent dies.
    pub(super) async fn container_exited(&self, container: &str) -> String {
        loop {
            let options = WaitContainerOptionsBuilder::new()
                .condition("not-running")
                .build();
            let mut wait = self.docker.wait_container(container, Some(options));
            match wait.next().await {
                Some(Ok(exit)) => {
                    return format!("container {container} exited with code {}", exit.status_code);
                }
                Some(Err(bollard::errors::Error::DockerContainerWaitError { code, error })) => {
                    return format!("container {container} exited with code {code} {error}")
                        .trim_end()
                        .to_string();
                }
                // The daemon connection ended or timed out: look, then wait again.
                _ => {}
            }
            if let Some(how) = self.container_status(container).await {
                return how;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// A tar archive of `files` (path relative to `/`, mode, contents) and `dirs` (path, mode).
pub(super) fn tar_archive(dirs: &[(&str, u32)], files: &[(&str, u32, &[u8])]) -> std::io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, mode) in dirs {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(*mode);
        header.set_size(0);
        header.set_mtime(0);
        builder.append_data(&mut header, path, std::io::empty())?;
    }
    for (path, mode, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(*mode);
        header.set_size(data.len() as u64);
        header.set_mtime(0);
        builder.append_data(&mut header, path, *data)?;
    }
    builder.into_inner()
}
