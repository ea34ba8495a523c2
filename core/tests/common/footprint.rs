//! What a `netns` cluster holds on the host, for leak checks. Other tests create clusters at
//! the same time, so everything here looks only for the names of one cluster.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use chaos::backend::netns;

use super::alive_here;

/// stdout of `program args…`, which must succeed.
pub fn stdout_of(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every process id in the cgroup `dir` and its descendants.
pub fn cgroup_pids(dir: &Path) -> Vec<u32> {
    let mut pids: Vec<u32> = std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            pids.extend(cgroup_pids(&entry.path()));
        }
    }
    pids
}

/// Everything of the cluster with `index` and `temp_dir` visible on the host, as `kind name`
/// strings.
///
/// Once a cluster is cleaned up, a runner in another process may claim the same index. It can
/// only do so after our state file is gone, which is removed after everything else of ours
/// (claiming creates the state file exclusively), so when the index's state file names another
/// cluster, only our own directories are checked.
pub fn footprint(index: u32, cgroup_dir: &Path, temp_dir: &Path) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (kind, path) in [("cgroup", cgroup_dir), ("tempdir", temp_dir)] {
        if path.exists() {
            found.insert(format!("{kind} {}", path.display()));
        }
    }
    let state = netns::state_file(index);
    if let Ok(text) = std::fs::read_to_string(&state) {
        let owner: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        if owner["temp_dir"].as_str() != temp_dir.to_str() {
            eprintln!("cluster index {index} was claimed again by {}", owner["cluster"]);
            found.remove(&format!("cgroup {}", cgroup_dir.display()));
            return found;
        }
        found.insert(format!("statefile {}", state.display()));
    }
    let hub = netns::hub_netns_name(index);
    let node_prefix = format!("{hub}-n");
    for line in stdout_of("ip", &["netns", "list"]).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        if name == hub || name.starts_with(&node_prefix) {
            found.insert(format!("netns {name}"));
        }
    }
    let host_link = netns::host_link_name(index);
    for line in stdout_of("ip", &["-o", "link"]).lines() {
        // `7: chaos3@if2: <...>`
        let name = line.split(':').nth(1).unwrap_or_default().trim();
        let name = name.split('@').next().unwrap_or_default();
        if name == host_link || name == format!("{host_link}h") {
            found.insert(format!("link {name}"));
        }
    }
    found
}

/// A cluster's footprint and processes, recorded while it runs.
pub struct Footprint {
    /// The cluster's index.
    pub index: u32,
    /// Its cgroup directory.
    pub cgroup_dir: PathBuf,
    /// Its temporary directory.
    pub temp_dir: PathBuf,
    /// The processes in its cgroups when recorded.
    pub pids: Vec<u32>,
}

impl Footprint {
    /// Records the cluster with `index`, its cgroup and temp dirs, and its processes now.
    pub fn record(index: u32, cgroup_dir: PathBuf, temp_dir: PathBuf) -> Self {
        let pids = cgroup_pids(&cgroup_dir);
        Self {
            index,
            cgroup_dir,
            temp_dir,
            pids,
        }
    }

    /// What of the cluster is on the host now, processes excluded.
    pub fn resources(&self) -> BTreeSet<String> {
        footprint(self.index, &self.cgroup_dir, &self.temp_dir)
    }

    /// The recorded processes still alive.
    pub fn living(&self) -> Vec<u32> {
        self.pids.iter().copied().filter(|&p| alive_here(p)).collect()
    }

    /// Asserts that no resource is left now and that the processes are gone within a moment
    /// (they may still be being reaped).
    pub fn assert_gone_now(&self) {
        let leftovers = self.resources();
        assert!(leftovers.is_empty(), "cluster #{} left {leftovers:?}", self.index);
        self.assert_gone_within(Duration::from_secs(5));
    }

    /// Asserts that every resource and process of the cluster is gone within `bound`.
    pub fn assert_gone_within(&self, bound: Duration) {
        let deadline = Instant::now() + bound;
        loop {
            let mut left: Vec<String> = self.resources().into_iter().collect();
            left.extend(self.living().iter().map(|p| format!("pid {p}")));
            if left.is_empty() {
                return;
            }
            assert!(Instant::now() < deadline, "cluster #{} left {left:?}", self.index);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
