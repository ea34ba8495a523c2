//! The cluster-wide resources of a netns cluster — its claimed index (state file), host link,
//! hub namespace, cgroup and temporary directories — how they are claimed and released.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use rtnetlink::Handle;

use super::{
    MAX_CLUSTERS, TEARDOWN_BOUND, backend_error, cgroup, claim, host_link_name, hub_netns_name, links,
    namespace, overlaps_host_route, state_file, subnet,
};
use crate::{Error, Result};

/// The cluster-wide resources, released in [`ClusterRes::teardown`] (also on drop).
pub(super) struct ClusterRes {
    pub(super) index: u32,
    /// The state file: the claim on the index, created before everything else and removed
    /// after everything else.
    pub(super) state_file: Option<PathBuf>,
    /// Whether the host link `chaos<index>` is ours to delete.
    link_created: bool,
    pub(super) hub: Option<Handle>,
    pub(super) hub_fd: Option<File>,
    hub_created: bool,
    pub(super) cgroup_dir: Option<PathBuf>,
    /// The temporary directory (recorded in the state file before it was created).
    pub(super) temp_dir: Option<PathBuf>,
}

impl ClusterRes {
    fn claimed(index: u32, state_file: PathBuf) -> Self {
        Self {
            index,
            state_file: Some(state_file),
            link_created: false,
            hub: None,
            hub_fd: None,
            hub_created: false,
            cgroup_dir: None,
            temp_dir: None,
        }
    }

    /// Releases everything, blocking; returns what could not be released. Idempotent.
    ///
    /// The state file goes last, and only when everything else went: as long as anything of the
    /// cluster may exist, the claim naming its owner exists too, so a runner killed during
    /// teardown (or a teardown that failed) leaves work `chaos gc` finds and finishes. The hub
    /// namespace goes after the host link, whose peer lives in it.
    pub(super) fn teardown(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        self.hub = None;
        if let Some(dir) = self.cgroup_dir.take()
            && let Err(e) = cgroup::remove_tree(&dir, Instant::now() + TEARDOWN_BOUND)
        {
            errors.push(e.to_string());
        }
        if let Some(dir) = self.temp_dir.take() {
            match std::fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    errors.push(format!("removing {}: {e}", dir.display()));
                }
                _ => {}
            }
        }
        // Deleting the host end also deletes its peer in the hub.
        if std::mem::take(&mut self.link_created)
            && let Err(e) = links::delete_link_blocking(&host_link_name(self.index))
        {
            errors.push(e.to_string());
        }
        if std::mem::take(&mut self.hub_created)
            && let Err(e) = namespace::remove(&hub_netns_name(self.index))
        {
            errors.push(e.to_string());
        }
        self.hub_fd = None;
        if let Some(file) = self.state_file.take() {
            if errors.is_empty() {
                if let Err(e) = claim::release(&file) {
                    errors.push(e.to_string());
                }
            } else {
                errors.push(format!(
                    "{} kept, so that `chaos gc` finishes the job once this runner is gone",
                    file.display()
                ));
            }
        }
        errors
    }
}

impl Drop for ClusterRes {
    fn drop(&mut self) {
        for e in self.teardown() {
            tracing::warn!("netns cluster #{}: cleanup: {e}", self.index);
        }
    }
}

/// Claims the first free index whose subnet no host route overlaps — by creating its state file
/// exclusively, naming this runner (see [`claim`]) — then creates its host veth pair and its hub
/// namespace. Returns the claim's record, whose temporary directory is not created yet.
///
/// The search starts after the index this process claimed last, so a process does not reuse an
/// index right after releasing it (which would make leftovers of one cluster look like parts of
/// the next in logs and leak checks).
///
/// Indices with leftovers of an earlier cluster (a state file, a cgroup, namespaces named after
/// them — a crashed runner's, for `chaos gc` to collect) are skipped, never reused; so is an
/// index whose host link exists without a state file (a runner of an older version, which
/// claimed by the link alone).
pub(super) async fn claim_index(
    host: &Handle,
    cgroup_root: &Path,
    cluster: &str,
) -> Result<(
    ClusterRes,
    claim::StateRecord,
    File,
    Option<rtnetlink::sys::Socket>,
)> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = NEXT.load(Ordering::Relaxed);
    let namespaces: Vec<String> = std::fs::read_dir(namespace::NETNS_DIR)
        .map(|dir| {
            dir.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    for index in (start..MAX_CLUSTERS).chain(0..start) {
        let hub = hub_netns_name(index);
        let node_prefix = format!("{hub}-n");
        let cgroup_dir = cgroup_root.join(index.to_string());
        if overlaps_host_route(subnet(index))
            || state_file(index).exists()
            || cgroup_dir.exists()
            || namespaces
                .iter()
                .any(|n| *n == hub || n.starts_with(&node_prefix))
        {
            continue;
        }
        let record = claim::StateRecord {
            index,
            cluster: cluster.to_string(),
            owner: crate::backend::owner::current_tag(),
            runner_pid: std::process::id(),
            host_link: host_link_name(index),
            hub_netns: hub.clone(),
            node_netns: Vec::new(),
            cgroup_dir,
            temp_dir: std::env::temp_dir().join(format!("chaos-netns-{index}-{:08x}", rand::random::<u32>())),
        };
        let path = state_file(index);
        match claim::claim(&path, &record) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => return Err(Error::io("netns backend: claiming a cluster index", e)),
        }
        // From here on, dropping `res` releases what was made, the claim last.
        let mut res = ClusterRes::claimed(index, path);
        let link = host_link_name(index);
        match links::add_veth(host, &link, &format!("{link}h")).await {
            Ok(()) => res.link_created = true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io("netns backend: creating the host link", e)),
        }
        match namespace::create(&hub, true).await {
            Ok(ns) => {
                NEXT.store((index + 1) % MAX_CLUSTERS, Ordering::Relaxed);
                ns.guard.disarm();
                res.hub_created = true;
                return Ok((res, record, ns.fd, ns.netlink));
            }
            // A hub without a host link: left by someone else; leave it and move on.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(Error::io(format!("netns backend: creating namespace {hub}"), e));
            }
        }
    }
    Err(backend_error(format!(
        "all {MAX_CLUSTERS} cluster indices are taken or their subnets overlap host routes; \
         clean up stale clusters (`chaos gc`; links chaos*, `ip netns list`)"
    )))
}
