//! Signalling and killing the tree of a started process: its process group, plus — with a
//! cgroup — every process of its cgroup, including those that left the group.

use std::collections::BTreeSet;
use std::io;
use std::path::Path;
use std::time::Duration;

use chaos_faults::process;

use super::ProcEntry;

/// Sends signal number `signal` to `target` (a pid, or a negated process group id).
pub(super) fn send_signal(target: i32, signal: i32) -> io::Result<()> {
    // SAFETY: kill(2) takes two integers and touches no memory of ours; any values are
    // acceptable to it (bad ones give EINVAL/ESRCH).
    let rc = unsafe { libc::kill(target, signal) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Pids listed in the cgroup `dir` (empty when it is gone).
pub(super) fn cgroup_pids(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Process groups with at least one live (not zombie) member; `None` when `/proc` cannot be
/// read (callers then treat every group as live).
pub(super) fn live_groups() -> Option<BTreeSet<i32>> {
    match process::processes() {
        Ok(all) => Some(
            all.into_iter()
                .filter(|(_, st)| !st.is_dead())
                .map(|(_, st)| st.pgrp)
                .collect(),
        ),
        Err(e) => {
            tracing::warn!("listing processes: {e}");
            None
        }
    }
}

/// The process group of `pid`.
fn pgid_of(pid: i32) -> Option<i32> {
    process::stat(pid).ok().flatten().map(|st| st.pgrp)
}

/// Sends `signal` to a started process's tree: its process group, and the processes of its
/// cgroup that left the group (each gets it once). SIGKILL uses [`kill_tree`]. Returns whether
/// any process was there to receive it.
pub(super) fn signal_tree(entry: &ProcEntry, signal: i32) -> bool {
    if signal == libc::SIGKILL {
        return kill_tree(entry);
    }
    let leader = entry.pid as i32;
    let mut any = match send_signal(-leader, signal) {
        Ok(()) => true,
        Err(e) => {
            if e.raw_os_error() != Some(libc::ESRCH) {
                tracing::warn!(id = entry.id, pid = entry.pid, "signalling process group: {e}");
            }
            false
        }
    };
    if let Some(dir) = &entry.cgroup {
        for pid in cgroup_pids(dir) {
            if pgid_of(pid) != Some(leader) && send_signal(pid, signal).is_ok() {
                any = true;
            }
        }
    }
    any
}

/// SIGKILL to the process group and, if it has one, to the whole cgroup. Returns whether any
/// process was there to receive it.
pub(super) fn kill_tree(entry: &ProcEntry) -> bool {
    // The group may outlive its leader (background children), so it is killed even when the
    // leader has exited. ESRCH just means nothing is left.
    let mut any = match send_signal(-(entry.pid as i32), libc::SIGKILL) {
        Ok(()) => true,
        Err(e) => {
            if e.raw_os_error() != Some(libc::ESRCH) {
                tracing::warn!(id = entry.id, pid = entry.pid, "killing process group: {e}");
            }
            false
        }
    };
    if let Some(dir) = &entry.cgroup {
        any |= !cgroup_pids(dir).is_empty();
        kill_cgroup(dir);
    }
    any
}

/// Kills every process in the cgroup `dir`, including ones that left the process group.
fn kill_cgroup(dir: &Path) {
    match std::fs::write(dir.join("cgroup.kill"), b"1") {
        Ok(()) => return,
        Err(e) if e.kind() == io::ErrorKind::NotFound && !dir.exists() => return,
        Err(e) => tracing::debug!(
            "cgroup.kill in {}: {e}; killing its processes one by one",
            dir.display()
        ),
    }
    // Kernels before 5.14 lack cgroup.kill.
    if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let _ = send_signal(pid, libc::SIGKILL);
        }
    }
}

/// Removes the (killed) cgroup `dir` once its processes have exited, retrying until `deadline`.
pub(super) async fn remove_cgroup(dir: &Path, deadline: tokio::time::Instant) {
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(e) => {
                if tokio::time::Instant::now() >= deadline {
                    tracing::warn!("could not remove cgroup {}: {e}", dir.display());
                    return;
                }
                kill_cgroup(dir);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}
