//! Cgroup faults — the freezer (v2 `cgroup.freeze`, v1 `freezer.state`) and `cgroup.kill` —
//! and what the kernel says about a cgroup: which cgroup a process is in, where the cgroup
//! filesystems are mounted, and whether a recorded cgroup is really gone.
//!
//! A cgroup directory that is missing counts as gone only if the cgroup filesystem it lived on
//! is still visible where it was mounted when the fault was installed: `ip netns exec` (and any
//! private mount namespace) can remount `/sys` without the cgroup mounts, and a frozen cgroup
//! must not be taken for "already gone" just because this process cannot see it.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::sys::statfs::{CGROUP_SUPER_MAGIC, CGROUP2_SUPER_MAGIC, statfs};
use nix::unistd::Pid;

use crate::error::{Error, Result};
use crate::process::is_gone;
use crate::spec::Mechanism;

/// How long we wait for a cgroup to report frozen/thawed or empty.
const CGROUP_WAIT: Duration = Duration::from_secs(5);

/// Whether `path` is a cgroup v2 directory with `cgroup.freeze` (true) or a v1 freezer cgroup
/// with `freezer.state` (false).
pub fn cgroup_is_v2(path: &Path) -> Result<bool> {
    if !path.is_dir() {
        return Err(Error::NotFound(format!("cgroup directory {}", path.display())));
    }
    if path.join("cgroup.freeze").exists() {
        Ok(true)
    } else if path.join("freezer.state").exists() {
        Ok(false)
    } else {
        Err(Error::Unsupported {
            feature: "cgroup freezer (cgroup v2 cgroup.freeze or v1 freezer controller)",
            reason: format!("{} has neither cgroup.freeze nor freezer.state", path.display()),
        })
    }
}

fn write(path: &Path, value: &str) -> Result<()> {
    fs::write(path, value).map_err(|e| Error::io("write", path, e))
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|e| Error::io("read", path, e))
}

fn wait_until(what: impl Fn() -> String, mut done: impl FnMut() -> Result<bool>) -> Result<()> {
    let end = Instant::now() + CGROUP_WAIT;
    loop {
        if done()? {
            return Ok(());
        }
        if Instant::now() >= end {
            return Err(Error::Timeout {
                what: what(),
                ms: CGROUP_WAIT.as_millis() as u64,
            });
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Whether the v2 cgroup at `dir` reports `frozen 1` in `cgroup.events`.
fn v2_frozen(dir: &Path) -> Result<bool> {
    Ok(read(&dir.join("cgroup.events"))?
        .lines()
        .any(|l| l.trim() == "frozen 1"))
}

/// Freezes the cgroup at `path` and waits until the kernel reports it frozen.
pub fn freeze_cgroup(path: &Path) -> Result<Mechanism> {
    if cgroup_is_v2(path)? {
        write(&path.join("cgroup.freeze"), "1")?;
        wait_until(
            || format!("{} to report frozen 1", path.join("cgroup.events").display()),
            || v2_frozen(path),
        )?;
        Ok(Mechanism::CgroupV2Freeze)
    } else {
        let state = path.join("freezer.state");
        write(&state, "FROZEN")?;
        wait_until(
            || format!("{} to read FROZEN", state.display()),
            || Ok(read(&state)?.trim() == "FROZEN"),
        )?;
        Ok(Mechanism::CgroupV1Freezer)
    }
}

/// Thaws the cgroup at `path` and waits until the kernel reports it thawed. Returns false (not
/// an error) when the cgroup is gone — as decided by [`cgroup_gone`] with `mount`, the mount
/// point recorded when it was frozen.
pub fn thaw_cgroup(path: &Path, v2: bool, mount: Option<&Path>) -> Result<bool> {
    if cgroup_gone(path, v2, mount)? {
        return Ok(false);
    }
    let thawed = if v2 {
        write(&path.join("cgroup.freeze"), "0").and_then(|()| {
            wait_until(
                || format!("{} to report frozen 0", path.join("cgroup.events").display()),
                || Ok(!v2_frozen(path)?),
            )
        })
    } else {
        let state = path.join("freezer.state");
        write(&state, "THAWED").and_then(|()| {
            wait_until(
                || format!("{} to read THAWED", state.display()),
                || Ok(read(&state)?.trim() == "THAWED"),
            )
        })
    };
    match thawed {
        Ok(()) => Ok(true),
        // Removed while we thawed it (its processes exited): gone, if the kernel says so.
        Err(e) if cgroup_gone(path, v2, mount)? => {
            tracing::debug!("cgroup {} went away while being thawed: {e}", path.display());
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Checks that the cgroup at `path` is thawed (or gone, as [`cgroup_gone`] decides). Fails
/// with [`Error::NotHealed`] when the kernel still reports it frozen.
pub fn verify_thawed(path: &Path, v2: bool, mount: Option<&Path>) -> Result<()> {
    if cgroup_gone(path, v2, mount)? {
        return Ok(());
    }
    let still = if v2 {
        v2_frozen(path).map(|frozen| frozen.then_some("cgroup.events reports frozen 1"))
    } else {
        read(&path.join("freezer.state"))
            .map(|s| (s.trim() != "THAWED").then_some("freezer.state is not THAWED"))
    };
    match still {
        Ok(None) => Ok(()),
        Ok(Some(why)) => Err(Error::NotHealed {
            object: format!("frozen cgroup {}", path.display()),
            reason: why.to_string(),
        }),
        Err(_) if cgroup_gone(path, v2, mount)? => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether the cgroup directory `path` is gone, decided by the kernel: the directory is
/// missing *and* the nearest existing ancestor at or below `mount` (the mount point recorded
/// when the fault was installed; found in `/proc/self/mountinfo` when `None`) is on a cgroup
/// filesystem of the right version (statfs magic). A missing path whose filesystem is not
/// visible here — `/sys` remounted by `ip netns exec`, another mount namespace — is an
/// [`Error::NotHealed`], never "gone".
pub fn cgroup_gone(path: &Path, v2: bool, mount: Option<&Path>) -> Result<bool> {
    match fs::metadata(path) {
        Ok(_) => return Ok(false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("inspect", path, e)),
    }
    let kind = if v2 { "cgroup2" } else { "cgroup v1 freezer" };
    let unverifiable = |reason: String| Error::NotHealed {
        object: format!("frozen cgroup {}", path.display()),
        reason: format!(
            "{} is missing, but {reason}, so whether the cgroup is gone cannot be told from here \
             (was /sys remounted in this mount namespace, as `ip netns exec` does?); it stays recorded",
            path.display()
        ),
    };
    let mount = match mount {
        Some(m) => m.to_path_buf(),
        None => cgroup_mount_of(path, v2)?.ok_or_else(|| {
            unverifiable(format!(
                "no {kind} filesystem is mounted over it in this mount namespace"
            ))
        })?,
    };
    if !path.starts_with(&mount) {
        return Err(unverifiable(format!(
            "the recorded mount point {} does not contain it",
            mount.display()
        )));
    }
    let magic = if v2 {
        CGROUP2_SUPER_MAGIC
    } else {
        CGROUP_SUPER_MAGIC
    };
    for dir in path.ancestors().skip(1).take_while(|d| d.starts_with(&mount)) {
        match statfs(dir) {
            Ok(fs) if fs.filesystem_type() == magic => return Ok(true),
            Ok(fs) => {
                return Err(unverifiable(format!(
                    "{} is not on a {kind} filesystem (statfs type {:#x}) as it was when the fault was installed",
                    dir.display(),
                    fs.filesystem_type().0
                )));
            }
            Err(nix::errno::Errno::ENOENT) => continue,
            Err(e) => return Err(Error::io("statfs", dir, io::Error::from(e))),
        }
    }
    Err(unverifiable(format!(
        "{}, where the {kind} filesystem was mounted, does not exist in this mount namespace",
        mount.display()
    )))
}

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MountLine {
    point: PathBuf,
    fstype: String,
    super_options: String,
}

/// Undoes mountinfo's octal escapes (`\040` for a space, …).
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(digits) = bytes.get(i + 1..i + 4)
            && let Ok(v) = u8::from_str_radix(std::str::from_utf8(digits).unwrap_or("x"), 8)
        {
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_mountinfo(text: &str) -> Vec<MountLine> {
    text.lines()
        .filter_map(|line| {
            // `id parent maj:min root mount-point options [optional...] - fstype source super-options`
            let (left, right) = line.split_once(" - ")?;
            let point = PathBuf::from(unescape(left.split(' ').nth(4)?));
            let mut right = right.split(' ');
            let fstype = right.next()?.to_string();
            let super_options = right.nth(1).unwrap_or_default().to_string();
            Some(MountLine {
                point,
                fstype,
                super_options,
            })
        })
        .collect()
}

fn is_cgroup_mount(m: &MountLine, v2: bool) -> bool {
    if v2 {
        m.fstype == "cgroup2"
    } else {
        m.fstype == "cgroup" && m.super_options.split(',').any(|o| o == "freezer")
    }
}

/// The mount point of the cgroup filesystem holding `path` in this mount namespace — cgroup2
/// for `v2`, a v1 hierarchy with the freezer controller otherwise: the deepest such mount
/// point containing `path` (the last one mounted when several are stacked). `None` when no
/// such filesystem is mounted over `path`.
pub fn cgroup_mount_of(path: &Path, v2: bool) -> Result<Option<PathBuf>> {
    let text = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| Error::io("read", "/proc/self/mountinfo", e))?;
    Ok(mount_of(&parse_mountinfo(&text), path, v2))
}

/// The first cgroup2 mount point in this mount namespace (`/sys/fs/cgroup` on pure-v2 hosts,
/// `/sys/fs/cgroup/unified` on hybrid ones); `None` when cgroup2 is not mounted.
pub fn cgroup2_mount() -> Result<Option<PathBuf>> {
    let text = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| Error::io("read", "/proc/self/mountinfo", e))?;
    Ok(parse_mountinfo(&text)
        .into_iter()
        .find(|m| is_cgroup_mount(m, true))
        .map(|m| m.point))
}

fn mount_of(mounts: &[MountLine], path: &Path, v2: bool) -> Option<PathBuf> {
    // A later mount on a prefix of `path` (say a fresh sysfs on /sys) hides earlier mounts
    // below it: only mounts after the last such one count.
    let visible_from = mounts
        .iter()
        .rposition(|m| path.starts_with(&m.point) && !is_cgroup_mount(m, v2))
        .map_or(0, |i| i + 1);
    mounts[visible_from..]
        .iter()
        .filter(|m| is_cgroup_mount(m, v2) && path.starts_with(&m.point))
        .max_by_key(|m| m.point.components().count())
        .map(|m| m.point.clone())
}

/// The cgroup v2 path of process `pid` (the `0::` line of `/proc/<pid>/cgroup`, relative to
/// the root of the cgroup2 hierarchy as this process sees it). `Ok(None)` when the process is
/// gone or is in no v2 cgroup.
pub fn cgroup_of(pid: i32) -> Result<Option<String>> {
    if pid <= 0 {
        return Ok(None);
    }
    let path = format!("/proc/{pid}/cgroup");
    match fs::read_to_string(&path) {
        Ok(text) => Ok(text
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .map(|p| p.trim_end().to_string())),
        Err(e) if is_gone(&e) => Ok(None),
        Err(e) => Err(Error::io("read", path, e)),
    }
}

/// Kills every process in the cgroup at `path`: `cgroup.kill` on v2, else SIGKILL to each pid
/// in `cgroup.procs` until it is empty. Waits (bounded) until the cgroup is empty.
pub fn kill_cgroup(path: &Path) -> Result<Mechanism> {
    if !path.is_dir() {
        return Err(Error::NotFound(format!("cgroup directory {}", path.display())));
    }
    let procs = path.join("cgroup.procs");
    let kill = path.join("cgroup.kill");
    let mechanism = if kill.exists() {
        write(&kill, "1")?;
        Mechanism::CgroupKill
    } else {
        Mechanism::Signal
    };
    wait_until(
        || format!("{} to become empty", procs.display()),
        || {
            let pids: Vec<i32> = read(&procs)?
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect();
            if mechanism == Mechanism::Signal {
                for pid in &pids {
                    let _ = signal::kill(Pid::from_raw(*pid), Signal::SIGKILL);
                }
            }
            Ok(pids.is_empty())
        },
    )?;
    Ok(mechanism)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 0:21 / /sys rw,nosuid - sysfs sysfs rw
30 22 0:26 / /sys/fs/cgroup ro - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate
35 30 0:31 / /sys/fs/cgroup/freezer rw - cgroup cgroup rw,freezer
36 30 0:32 / /sys/fs/cgroup/cpu\\040x rw - cgroup cgroup rw,cpu
";

    #[test]
    fn mountinfo_finds_the_cgroup_mount_of_a_path() {
        let mounts = parse_mountinfo(MOUNTINFO);
        assert_eq!(
            mounts[4].point,
            Path::new("/sys/fs/cgroup/cpu x"),
            "octal escapes"
        );
        let v2 = Path::new("/sys/fs/cgroup/unified/chaos/3/n1/proc-2");
        assert_eq!(
            mount_of(&mounts, v2, true).as_deref(),
            Some(Path::new("/sys/fs/cgroup/unified"))
        );
        assert_eq!(mount_of(&mounts, v2, false), None, "no v1 freezer over a v2 path");
        let v1 = Path::new("/sys/fs/cgroup/freezer/x");
        assert_eq!(
            mount_of(&mounts, v1, false).as_deref(),
            Some(Path::new("/sys/fs/cgroup/freezer"))
        );
        assert_eq!(
            mount_of(&mounts, Path::new("/sys/fs/cgroup/cpu x/y"), false),
            None
        );
        // `ip netns exec` mounts a fresh sysfs on /sys: the cgroup mounts below are hidden.
        let hidden = format!("{MOUNTINFO}90 22 0:50 / /sys rw - sysfs sysfs rw\n");
        assert_eq!(mount_of(&parse_mountinfo(&hidden), v2, true), None);
    }

    #[test]
    fn a_missing_cgroup_on_a_plain_directory_is_not_gone() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("frozen");
        // Recorded mount point exists but is not a cgroup filesystem (a remounted /sys looks so).
        let err = cgroup_gone(&missing, true, Some(dir.path())).unwrap_err();
        assert!(matches!(err, Error::NotHealed { .. }), "{err}");
        assert!(err.to_string().contains("not on a cgroup2 filesystem"), "{err}");
        // Recorded mount point missing altogether.
        let unified = dir.path().join("unified");
        let err = cgroup_gone(&unified.join("frozen"), true, Some(&unified)).unwrap_err();
        assert!(
            err.to_string().contains("does not exist in this mount namespace"),
            "{err}"
        );
        // No record and nothing mounted: cannot tell either.
        let err = cgroup_gone(&missing, false, None).unwrap_err();
        assert!(
            err.to_string().contains("no cgroup v1 freezer filesystem"),
            "{err}"
        );
        // An existing directory is not gone, whatever it is.
        assert!(!cgroup_gone(dir.path(), true, None).unwrap());
    }

    #[test]
    fn a_missing_cgroup_under_a_visible_cgroup_mount_is_gone() {
        let Ok(Some(mount)) = cgroup_mount_of(Path::new("/sys/fs/cgroup/unified/x"), true) else {
            chaos_testkit::skip(
                "a_missing_cgroup_under_a_visible_cgroup_mount_is_gone",
                "cgroup2",
                &"no cgroup2 filesystem mounted at /sys/fs/cgroup/unified",
            );
            return;
        };
        let missing = mount.join(format!("chaos-never-created-{}", std::process::id()));
        assert!(cgroup_gone(&missing, true, Some(&mount)).unwrap());
        assert!(cgroup_gone(&missing.join("deeper"), true, None).unwrap());
        assert!(thaw_cgroup(&missing, true, Some(&mount)).is_ok_and(|did| !did));
        assert!(verify_thawed(&missing, true, Some(&mount)).is_ok());
        let me = cgroup_of(std::process::id() as i32).unwrap();
        assert!(me.is_some_and(|p| p.starts_with('/')));
        assert_eq!(cgroup_of(i32::MAX).unwrap(), None);
    }
}
