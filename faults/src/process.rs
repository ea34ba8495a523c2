//! Process faults: signals, SIGSTOP/SIGCONT of a process tree, and what `/proc` says about a
//! process — the one `/proc/<pid>/stat` parser of the agent and this crate ([`ProcStat`]).
//! The cgroup freezer and `cgroup.kill` live in [`crate::cgroup`] and are re-exported here.
//!
//! "Gone" is decided by the kernel: a process is gone when reading `/proc/<pid>/…` fails with
//! ENOENT or ESRCH. Any other failure (EMFILE when the agent is out of descriptors, EACCES…) is
//! an error, never "gone", so a heal that cannot look never reports success.

use std::fs;
use std::io;
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

pub use crate::cgroup::{cgroup_is_v2, freeze_cgroup, kill_cgroup, thaw_cgroup};
use crate::error::{Error, Result};
use crate::spec::Mechanism;

/// How long a heal waits for continued processes to leave the stopped state.
const CONTINUE_WAIT: Duration = Duration::from_secs(1);

/// How long a pause waits for signalled processes to reach the stopped state (as long as a
/// cgroup freeze waits for the kernel).
pub const STOP_WAIT: Duration = Duration::from_secs(5);

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

/// Whether a failed read of a `/proc/<pid>` file means the process is gone.
pub(crate) fn is_gone(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ESRCH))
}

/// The fields of `/proc/<pid>/stat` chaos uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// State letter: `R`, `S`, `D`, `T` (stopped), `t` (tracing stop), `Z` (zombie), …
    pub state: char,
    /// Parent pid.
    pub ppid: i32,
    /// Process group id.
    pub pgrp: i32,
    /// Start time in clock ticks since boot, which tells a process apart from a later one
    /// reusing its pid.
    pub start_time: u64,
}

impl ProcStat {
    /// Parses the text of `/proc/<pid>/stat`. The command name (field 2) may contain spaces
    /// and parentheses, so fields are counted from the last `)`.
    pub fn parse(stat: &str) -> Option<Self> {
        let (_, rest) = stat.rsplit_once(')')?;
        let mut fields = rest.split_whitespace();
        let state = fields.next()?.chars().next()?;
        let ppid = fields.next()?.parse().ok()?;
        let pgrp = fields.next()?.parse().ok()?;
        // Field 22 (starttime) is the 20th after the name; three are consumed.
        let start_time = fields.nth(16)?.parse().ok()?;
        Some(Self {
            state,
            ppid,
            pgrp,
            start_time,
        })
    }

    /// Stopped by a signal (SIGSTOP, SIGTSTP…), state `T`.
    pub fn is_stopped(&self) -> bool {
        self.state == 'T'
    }

    /// Dead, waiting to be reaped (`Z`) or being torn down (`X`).
    pub fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Reads `/proc/<pid>/stat`. `Ok(None)` when the process is gone (ENOENT/ESRCH); any other
/// failure is an error.
pub fn stat(pid: i32) -> Result<Option<ProcStat>> {
    if pid <= 0 {
        return Ok(None);
    }
    let path = format!("/proc/{pid}/stat");
    match fs::read_to_string(&path) {
        Ok(text) => ProcStat::parse(&text).map(Some).ok_or_else(|| {
            Error::io(
                "parse",
                path,
                io::Error::new(io::ErrorKind::InvalidData, format!("unexpected content {text:?}")),
            )
        }),
        Err(e) if is_gone(&e) => Ok(None),
        Err(e) => Err(Error::io("read", path, e)),
    }
}

/// Start time of `pid` in clock ticks since boot (see [`ProcStat::start_time`]). `Ok(None)`
/// when the process is gone.
pub fn start_time(pid: i32) -> Result<Option<u64>> {
    Ok(stat(pid)?.map(|s| s.start_time))
}

/// The pids listed in `/proc`, in ascending order.
fn proc_pids() -> Result<Vec<i32>> {
    let dir = fs::read_dir("/proc").map_err(|e| Error::io("read directory", "/proc", e))?;
    let mut pids = Vec::new();
    for entry in dir {
        let entry = entry.map_err(|e| Error::io("read directory", "/proc", e))?;
        if let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    Ok(pids)
}

/// Every process with its [`ProcStat`], by pid. Processes that exit during the scan are left
/// out; a `/proc` that cannot be read is an error.
pub fn processes() -> Result<Vec<(i32, ProcStat)>> {
    let mut out = Vec::new();
    for pid in proc_pids()? {
        if let Some(st) = stat(pid)? {
            out.push((pid, st));
        }
    }
    Ok(out)
}

/// Live (not zombie) members of process group `pgid`, by pid.
pub fn group_members(pgid: i32) -> Result<Vec<i32>> {
    Ok(processes()?
        .into_iter()
        .filter(|(_, st)| st.pgrp == pgid && !st.is_dead())
        .map(|(pid, _)| pid)
        .collect())
}

/// Pids of the processes whose command name (`/proc/<pid>/comm`, at most 15 bytes) is `name`.
pub fn pids_by_name(name: &str) -> Result<Vec<i32>> {
    let mut pids = Vec::new();
    for pid in proc_pids()? {
        let path = format!("/proc/{pid}/comm");
        match fs::read_to_string(&path) {
            Ok(comm) if comm.trim_end_matches('\n') == name => pids.push(pid),
            Ok(_) => {}
            Err(e) if is_gone(&e) => {}
            Err(e) => return Err(Error::io("read", path, e)),
        }
    }
    Ok(pids)
}

/// `pid` and all its descendants (via `/proc/<pid>/task/*/children`), parents first, each with
/// its start time.
pub fn tree(pid: i32) -> Result<Vec<(i32, u64)>> {
    let root = start_time(pid)?.ok_or_else(|| Error::NotFound(format!("process {pid}")))?;
    let mut out = vec![(pid, root)];
    let mut i = 0;
    while i < out.len() {
        let p = out[i].0;
        i += 1;
        for child in children(p)? {
            if out.iter().any(|(q, _)| *q == child) {
                continue;
            }
            if let Some(st) = start_time(child)? {
                out.push((child, st));
            }
        }
    }
    Ok(out)
}

/// The children of `pid`, from each of its threads' `children` file; empty when it is gone.
pub fn children(pid: i32) -> Result<Vec<i32>> {
    let task_dir = format!("/proc/{pid}/task");
    let tasks = match fs::read_dir(&task_dir) {
        Ok(t) => t,
        Err(e) if is_gone(&e) => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("read directory", task_dir, e)),
    };
    let mut out = Vec::new();
    for task in tasks {
        let task = match task {
            Ok(t) => t,
            Err(e) if is_gone(&e) => continue,
            Err(e) => return Err(Error::io("read directory", &task_dir, e)),
        };
        let path = task.path().join("children");
        match fs::read_to_string(&path) {
            Ok(text) => out.extend(text.split_whitespace().filter_map(|c| c.parse::<i32>().ok())),
            Err(e) if is_gone(&e) => {}
            Err(e) => return Err(Error::io("read", path, e)),
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// Sends SIGSTOP to each `(pid, start time)` still alive with that start time and waits —
/// up to [`STOP_WAIT`] — until every one still alive is paused (state `T`, or `D` with the
/// signal pending): `kill` returns before the target has acted on the signal (on a busy machine,
/// long before), and a pause must be in place when the caller is told it is, as a cgroup freeze
/// is. A process still running after the wait is an error naming it.
pub fn stop_processes(pids: &[(i32, u64)]) -> Result<()> {
    send_to_live(pids, Signal::SIGSTOP)?;
    let end = Instant::now() + STOP_WAIT;
    loop {
        let mut running = None;
        for &(pid, start) in pids {
            // `D` counts as paused: such a process runs no code of its own until it leaves the
            // kernel, and then the pending SIGSTOP stops it. It must count, because a `vfork`
            // parent (dash, busybox sh) waits in `D` for its child to exec — and that child is
            // stopped too, so the parent would never reach `T`.
            let paused = |st: &ProcStat| st.is_stopped() || st.state == 'D';
            if let Some(st) = live_stat(pid, start)?.filter(|st| !paused(st)) {
                running = Some((pid, st));
                break;
            }
        }
        let Some((pid, st)) = running else {
            return Ok(());
        };
        if Instant::now() >= end {
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            return Err(Error::Timeout {
                what: format!(
                    "process {pid} ({}, state {}, parent {}) to stop after SIGSTOP",
                    comm.trim(),
                    st.state,
                    st.ppid
                ),
                ms: STOP_WAIT.as_millis() as u64,
            });
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Sends SIGCONT to each `(pid, start time)` still alive with that start time, then checks
/// that none of them is still stopped ([`verify_not_stopped`]). Returns whether any was alive.
pub fn continue_processes(pids: &[(i32, u64)]) -> Result<bool> {
    let any = send_to_live(pids, Signal::SIGCONT)?;
    verify_not_stopped(pids)?;
    Ok(any)
}

/// The recorded process that is still `pid` (same start time) and not yet reaped.
fn live_stat(pid: i32, start: u64) -> Result<Option<ProcStat>> {
    Ok(stat(pid)?.filter(|st| st.start_time == start && !st.is_dead()))
}

fn send_to_live(pids: &[(i32, u64)], sig: Signal) -> Result<bool> {
    let mut any = false;
    for &(pid, start) in pids {
        if live_stat(pid, start)?.is_none() {
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

/// Checks that no process of `pids` that is still alive (same start time) is stopped (state
/// `T`), waiting up to a second for SIGCONT to take effect. Fails with
/// [`Error::NotHealed`] naming the first one still stopped, or with the error that kept it
/// from looking.
pub fn verify_not_stopped(pids: &[(i32, u64)]) -> Result<()> {
    let end = Instant::now() + CONTINUE_WAIT;
    loop {
        let mut stopped = None;
        for &(pid, start) in pids {
            if live_stat(pid, start)?.is_some_and(|st| st.is_stopped()) {
                stopped = Some(pid);
                break;
            }
        }
        let Some(pid) = stopped else {
            return Ok(());
        };
        if Instant::now() >= end {
            return Err(Error::NotHealed {
                object: format!("stopped process {pid}"),
                reason: format!(
                    "it is still in state T (stopped) {} ms after SIGCONT",
                    CONTINUE_WAIT.as_millis()
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_start_time_and_tree() {
        let me = std::process::id() as i32;
        assert!(start_time(me).unwrap().is_some());
        let t = tree(me).unwrap();
        assert_eq!(t[0].0, me);
        assert!(matches!(tree(i32::MAX), Err(Error::NotFound(_))));
        assert_eq!(
            stat(i32::MAX).unwrap(),
            None,
            "a missing pid is gone, not an error"
        );
    }

    #[test]
    fn stat_parsing_counts_fields_after_the_last_parenthesis() {
        // A command name with spaces and parentheses, as a process may choose.
        let line = "4242 (a) b (c)) T 17 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 \
                    1000 10 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let st = ProcStat::parse(line).unwrap();
        assert_eq!(
            st,
            ProcStat {
                state: 'T',
                ppid: 17,
                pgrp: 4242,
                start_time: 987654
            }
        );
        assert!(st.is_stopped() && !st.is_dead());
        assert!(ProcStat::parse("4242 (truncated").is_none());
        assert!(ProcStat::parse("4242 (x) Z 1 2").is_none(), "too few fields");
        let me = stat(std::process::id() as i32).unwrap().unwrap();
        assert_eq!(me.ppid as u32, std::os::unix::process::parent_id());
    }

    #[test]
    fn bad_signal_inputs_are_rejected() {
        assert!(signal_pid(0, 15).is_err());
        assert!(signal_group(1, 15).is_err());
        assert!(signal_pid(std::process::id() as i32, 999).is_err());
        assert!(signal_pid(std::process::id() as i32, 0).is_ok());
    }

    #[test]
    fn a_stopped_process_fails_verification_until_continued() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id() as i32;
        let start = start_time(pid).unwrap().unwrap();
        stop_processes(&[(pid, start)]).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !stat(pid).unwrap().unwrap().is_stopped() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let err = verify_not_stopped(&[(pid, start)]).unwrap_err();
        assert!(
            matches!(&err, Error::NotHealed { object, .. } if object.contains(&pid.to_string())),
            "{err}"
        );
        // A recorded start time that is not this process's: a reused pid, never touched.
        assert!(verify_not_stopped(&[(pid, start + 1)]).is_ok());
        assert!(continue_processes(&[(pid, start)]).unwrap());
        assert!(!stat(pid).unwrap().unwrap().is_stopped());
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!continue_processes(&[(pid, start)]).unwrap(), "reaped: gone");
    }
}
