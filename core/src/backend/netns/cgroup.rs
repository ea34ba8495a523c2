//! The nodes' cgroup v2 directories: `<cgroup2 mount>/chaos/<cluster index>/<node>`.
//!
//! The agent lives in `<node>/agent` and puts each process it starts in `<node>/proc-<id>`,
//! so killing the node's directory kills everything the node ran, agent included.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The cgroup2 mount point (`/sys/fs/cgroup` on pure-v2 hosts, `/sys/fs/cgroup/unified` on
/// hybrid ones), if there is one; read once from mountinfo by `chaos-faults`.
pub fn cgroup2_mount() -> Option<&'static Path> {
    static MOUNT: OnceLock<Option<PathBuf>> = OnceLock::new();
    MOUNT
        .get_or_init(|| chaos_faults::cgroup::cgroup2_mount().ok().flatten())
        .as_deref()
}

/// Creates `dir` and its parents.
pub fn create(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| io::Error::new(e.kind(), format!("creating cgroup {}: {e}", dir.display())))
}

/// Kills every process in `dir` and its descendants (`cgroup.kill`, falling back to signalling
/// each listed process on kernels without it). A missing directory is not an error.
pub fn kill(dir: &Path) -> io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    match std::fs::write(dir.join("cgroup.kill"), "1") {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            for pid in pids(dir) {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            Ok(())
        }
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("killing cgroup {}: {e}", dir.display()),
        )),
    }
}

/// Every process id in `dir` and its descendants.
pub fn pids(dir: &Path) -> Vec<i32> {
    let mut out: Vec<i32> = std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    for sub in subdirs(dir) {
        out.extend(pids(&sub));
    }
    out
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// Removes `dir` and its descendant cgroups, bottom-up, retrying until `deadline` while
/// killed tasks are still exiting (rmdir fails with EBUSY until they are gone). A missing
/// directory is not an error.
///
/// A busy directory is killed again before each retry: a process can join after the first kill.
/// A runner SIGKILLed while spawning an agent leaves a forked child that has not yet moved
/// itself into `<node>/agent` (it does so just before exec); it joins after gc's kill and would
/// keep the cgroup busy until its heartbeat timeout.
pub fn remove_tree(dir: &Path, deadline: Instant) -> io::Result<()> {
    for sub in subdirs(dir) {
        remove_tree(&sub, deadline)?;
    }
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                // Best effort: the retry (or the final error) reports what stays.
                let _ = kill(dir);
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("removing cgroup {}: {e}", dir.display()),
                ));
            }
        }
    }
}
