//! The cluster's network: a /24 of its own, and removing everything labelled with the cluster.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::Path;

use bollard::Docker;
use bollard::models::{Ipam, IpamConfig, NetworkCreateRequest};
use bollard::query_parameters::{ListContainersOptionsBuilder, RemoveContainerOptionsBuilder};

use super::daemon::{bounded, within};
use super::{DAEMON_BOUND, LABEL_CLUSTER, LABEL_FILES, LABEL_OWNER, backend_error};
use crate::Result;

/// How many /24s to try before giving up on finding a free one.
const SUBNET_ATTEMPTS: u32 = 64;

/// The /24 of candidate `i`: `10.(216 + i / 256).(i % 256).0`.
pub(super) fn candidate_subnet(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, (216 + (i / 256) % 16) as u8, (i % 256) as u8, 0)
}

pub(super) fn with_last_octet(net: Ipv4Addr, last: u8) -> Ipv4Addr {
    let [a, b, c, _] = net.octets();
    Ipv4Addr::new(a, b, c, last)
}

/// Whether a host route other than the default one overlaps `net`/24 (only meaningful when
/// the daemon runs on this host, whose routes decide whether the runner reaches the nodes).
fn overlaps_host_route(net: Ipv4Addr) -> bool {
    #[cfg(target_os = "linux")]
    {
        crate::backend::netns::overlaps_host_route(net)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = net;
        false
    }
}

/// A name Docker accepts (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`), at most 40 characters.
pub(super) fn docker_safe(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    if !out.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        out.insert(0, 'c');
    }
    out
}

/// Creates the cluster's network on the first free candidate /24; returns the /24.
pub(super) async fn create_network(
    docker: &Docker,
    network: &str,
    id: &str,
    owner: &str,
    files_dir: Option<&Path>,
    local_daemon: bool,
) -> Result<Ipv4Addr> {
    let mut labels = HashMap::from([
        (LABEL_CLUSTER.to_string(), id.to_string()),
        (LABEL_OWNER.to_string(), owner.to_string()),
    ]);
    if let Some(dir) = files_dir {
        labels.insert(LABEL_FILES.to_string(), dir.display().to_string());
    }
    let start = rand::random::<u32>() % 4096;
    let mut last_error = String::new();
    for attempt in 0..SUBNET_ATTEMPTS {
        let subnet = candidate_subnet((start + attempt * 61) % 4096);
        if local_daemon && overlaps_host_route(subnet) {
            continue;
        }
        let request = NetworkCreateRequest {
            name: network.to_string(),
            driver: Some("bridge".to_string()),
            labels: Some(labels.clone()),
            ipam: Some(Ipam {
                config: Some(vec![IpamConfig {
                    subnet: Some(format!("{subnet}/24")),
                    gateway: Some(with_last_octet(subnet, 1).to_string()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        match within(DAEMON_BOUND, docker.create_network(request)).await {
            Ok(_) => return Ok(subnet),
            // "Pool overlaps with other one on this address space": another network has it.
            Err(f) if f.daemon_message().is_some_and(|m| m.contains("overlap")) => {
                last_error = f.daemon_message().unwrap_or_default().to_string();
            }
            Err(f) => return Err(backend_error(f.describe(&format!("creating network {network}")))),
        }
    }
    Err(backend_error(format!(
        "creating network {network}: no free /24 in 10.216.0.0/12 after {SUBNET_ATTEMPTS} tries \
         (last: {last_error}); remove unused networks (`docker network prune`, `chaos gc`)"
    )))
}

/// Removes every container labelled with cluster `id`, then the network `network`.
pub(super) async fn remove_cluster_resources(docker: &Docker, id: &str, network: &str) -> Result<(), String> {
    let filters = HashMap::from([("label".to_string(), vec![format!("{LABEL_CLUSTER}={id}")])]);
    let list = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    let containers = bounded("listing containers", docker.list_containers(Some(list)))
        .await
        .map_err(|e| e.to_string())?;
    let mut errors = Vec::new();
    let removals = containers
        .iter()
        .filter_map(|c| c.id.clone())
        .map(|cid| async move {
            let options = RemoveContainerOptionsBuilder::new().force(true).v(true).build();
            bounded(
                format!("removing container {cid}"),
                docker.remove_container(&cid, Some(options)),
            )
            .await
        });
    for result in futures_util::future::join_all(removals).await {
        if let Err(e) = result {
            errors.push(e.to_string());
        }
    }
    match within(DAEMON_BOUND, docker.remove_network(network)).await {
        Ok(()) => {}
        Err(f) if f.status() == Some(404) => {}
        Err(f) => errors.push(f.describe(&format!("removing network {network}"))),
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}
