//! Process faults: signals, the cgroup freezer (v2 and v1), SIGSTOP/SIGCONT of a process tree,
//! and `cgroup.kill`.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use crate::error::{Error, Result};
use crate::spec::Mechanism;

/// How long we wait for a cgroup to report frozen/thawed or empty.
const CGROUP_WAIT: Duration = Duration::from_secs(5);

fn to_signal(sig: i32) -> Result<Option<Signal>> {
    if sig == 0 {
        return Ok(None);
    }
    Signal::try_from(sig)
        .map(Some)
        .map_err(|_| Error::invalid("signal", format!("{sig} is not a signal")))
}

/// Sends `sig` (a Linux signal number; 0 checks existence) to process `pid`.
pub fn signal_pid(pid: i32, sig: i32) -> Result<Mechanism> {
    if pid <= 0 {
        return Err(Error::invalid("pid", format!("{pid} is not a process id")));
    }
    signal::kill(Pid::from_raw(pid), to_signal(sig)?).map_err(|source| Error::Signal {
        target: format!("pid {pid}"),
        signal: sig,
        source,
    })?;
    Ok(Mechanism::Signal)
}

/// Sends `sig` to every process of process group `pgid`.
pub fn signal_group(pgid: i32, sig: i32) -> Result<Mechanism> {
    if pgid <= 1 {
        return Err(Error::invalid(
            "pgid",
            format!("{pgid} is not a process group id we may signal"),
        ));
    }
    signal::killpg(Pid::from_raw(pgid), to_signal(sig)?).map_err(|source| Error::Signal {
        target: format!("process group {pgid}"),
        signal: sig,
        source,
    })?;
    Ok(Mechanism::Signal)
}

/// Pids of the processes whose command name (`/proc/<pid>/comm`, at most 15 bytes) is `name`.
pub fn pids_by_name(name: &str) -> Result<Vec<i32>> {
    let mut pids = Vec::new();
    let dir = fs::read_dir("/proc").map_err(|e| Error::io("read directory", "/proc", e))?;
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if let Ok(comm) = fs::read_to_string(entry.path().join("comm"))
            && comm.trim_end_matches('\n') == name
        {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    Ok(pids)
}

/// Start time of `pid` in clock ticks since boot (field 22 of `/proc/<pid>/stat`), which tells
/// a process apart from a later one reusing its pid. `None` when the process is gone.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: skip past the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// `pid` and all its descendants (via `/proc/<pid>/task/*/children`), parents first, each with
/// its start time.
pub fn tree(pid: i32) -> Result<Vec<(i32, u64)>> {
    let root = start_time(pid).ok_or_else(|| Error::NotFound(format!("process {pid}")))?;
    let mut out = vec![(pid, root)];
    let mut i = 0;
    while i < out.len() {
        let p = out[i].0;
        i += 1;
        let Ok(tasks) = fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let Ok(children) = fs::read_to_string(task.path().join("children")) else {
                continue;
            };
            for child in children.split_whitespace().filter_map(|c| c.parse::<i32>().ok()) {
                if out.iter().any(|(q, _)| *q == child) {
                    continue;
                }
                if let Some(st) = start_time(child) {
                    out.push((child, st));
                }
            }
        }
    }
    Ok(out)
}

/// Sends SIGSTOP to each `(pid, start time)` still alive with that start time.
pub fn stop_processes(pids: &[(i32, u64)]) -> Result<()> {
    send_to_live(pids, Signal::SIGSTOP).map(|_| ())
}

/// Sends SIGCONT to each `(pid, start time)` still alive with that start time. Returns whether
/// any was.
pub fn continue_processes(pids: &[(i32, u64)]) -> Result<bool> {
    send_to_live(pids, Signal::SIGCONT)
}

fn send_to_live(pids: &[(i32, u64)], sig: Signal) -> Result<bool> {
    let mut any = false;
    for &(pid, start) in pids {
        if start_time(pid) != Some(start) {
            continue;
        }
        match signal::kill(Pid::from_raw(pid), sig) {
            Ok(()) => any = true,
            Err(nix::errno::Errno::ESRCH) => {}
            Err(source) => {
                return Err(Error::Signal {
                    target: format!("pid {pid}"),
                    signal: sig as i32,
                    source,
                });
            }
        }
    }
    Ok(any)
}

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

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|e| Error::io("read", path, e))
}

/// Freezes the cgroup at `path` and waits until the kernel reports it frozen.
pub fn freeze_cgroup(path: &Path) -> Result<Mechanism> {
    if cgroup_is_v2(path)? {
        write(&path.join("cgroup.freeze"), "1")?;
        let events = path.join("cgroup.events");
        wait_until(
            || format!("{} to report frozen 1", events.display()),
            || Ok(read(&events)?.lines().any(|l| l.trim() == "frozen 1")),
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

/// Thaws the cgroup at `path`. Returns false (not an error) when the cgroup no longer exists.
pub fn thaw_cgroup(path: &Path, v2: bool) -> Result<bool> {
    if !path.is_dir() {
        return Ok(false);
    }
    if v2 {
        write(&path.join("cgroup.freeze"), "0")?;
        let events = path.join("cgroup.events");
        wait_until(
            || format!("{} to report frozen 0", events.display()),
            || Ok(!read(&events)?.lines().any(|l| l.trim() == "frozen 1")),
        )?;
    } else {
        let state = path.join("freezer.state");
        write(&state, "THAWED")?;
        wait_until(
            || format!("{} to read THAWED", state.display()),
            || Ok(read(&state)?.trim() == "THAWED"),
        )?;
    }
    Ok(true)
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

    #[test]
    fn own_start_time_and_tree() {
        let me = std::process::id() as i32;
        assert!(start_time(me).is_some());
        let t = tree(me).unwrap();
        assert_eq!(t[0].0, me);
        assert!(matches!(tree(i32::MAX), Err(Error::NotFound(_))));
    }

    #[test]
    fn bad_signal_inputs_are_rejected() {
        assert!(signal_pid(0, 15).is_err());
        assert!(signal_group(1, 15).is_err());
        assert!(signal_pid(std::process::id() as i32, 999).is_err());
        assert!(signal_pid(std::process::id() as i32, 0).is_ok());
    }
}
