//! Who owns a cluster's resources: a tag naming the runner process, written into netns state
//! files and Docker labels, so `chaos gc` can tell a crashed runner's leftovers from a live
//! runner's cluster.
//!
//! The tag is `<hostname>:<pid>:<start>` where `<start>` is the process start time in clock
//! ticks since boot (field 22 of `/proc/<pid>/stat`), so a reused pid is not mistaken for the
//! owner. The hostname says whether this host can judge the owner at all: a Docker daemon may be
//! shared by runners on several hosts, and a pid means nothing on another host.

use std::sync::OnceLock;

/// What is known of a tag's owner, seen from this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnerState {
    /// The owning process runs on this host.
    Alive,
    /// The owner ran on this host and is gone: its resources are garbage.
    Dead,
    /// The owner ran on another host (a shared remote Docker daemon): not ours to judge.
    Elsewhere(String),
    /// The tag could not be read.
    Unknown,
}

/// A parsed owner tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerTag {
    /// The runner's hostname.
    pub host: String,
    /// The runner's process id on that host.
    pub pid: u32,
    /// The runner's start time in clock ticks since boot; 0 when it could not be read, in which
    /// case only the pid is compared.
    pub start: u64,
}

impl OwnerTag {
    /// Parses `<hostname>:<pid>:<start>`. The numbers are taken from the right, so a hostname
    /// holding a colon still parses.
    pub fn parse(tag: &str) -> Option<Self> {
        let mut parts = tag.rsplitn(3, ':');
        let start = parts.next()?.parse().ok()?;
        let pid = parts.next()?.parse().ok()?;
        let host = parts.next()?;
        (!host.is_empty() && pid != 0).then(|| Self {
            host: host.to_string(),
            pid,
            start,
        })
    }
}

/// This host's name, as the kernel reports it (`gethostname`); empty when it cannot be read.
pub fn hostname() -> &'static str {
    static HOST: OnceLock<String> = OnceLock::new();
    HOST.get_or_init(|| {
        nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default()
    })
}

/// The tag of the running process.
pub fn current_tag() -> String {
    static TAG: OnceLock<String> = OnceLock::new();
    TAG.get_or_init(|| {
        let pid = std::process::id();
        let start = start_time(pid).unwrap_or(0);
        format!("{}:{pid}:{start}", hostname())
    })
    .clone()
}

/// Judges the owner named by `tag`.
pub fn owner_state(tag: &str) -> OwnerState {
    let Some(tag) = OwnerTag::parse(tag) else {
        return OwnerState::Unknown;
    };
    if tag.host != hostname() {
        return OwnerState::Elsewhere(tag.host);
    }
    if process_alive(tag.pid, tag.start) {
        OwnerState::Alive
    } else {
        OwnerState::Dead
    }
}

/// Whether the runner named by `tag` is gone, so what it owns is garbage, and the words that
/// say so for `chaos gc` (`runner pid 42 gone`, `… alive`, `… on host h`).
pub fn verdict(tag: &str) -> (bool, String) {
    let pid = OwnerTag::parse(tag).map_or_else(|| "?".to_string(), |t| t.pid.to_string());
    match owner_state(tag) {
        OwnerState::Alive => (false, format!("runner pid {pid} alive")),
        OwnerState::Dead => (true, format!("runner pid {pid} gone")),
        OwnerState::Elsewhere(host) => (
            false,
            format!("runner pid {pid} on host {host}, not ours to judge"),
        ),
        OwnerState::Unknown => (false, format!("owner tag {tag:?} unreadable")),
    }
}

/// Whether process `pid` of this host runs (exists and is neither a zombie nor dead) and, when
/// `start` is not 0, started at `start` clock ticks after boot (so a reused pid does not count).
pub fn process_alive(pid: u32, start: u64) -> bool {
    match proc_stat(pid) {
        Some((state, started)) => !matches!(state, 'Z' | 'X' | 'x') && (start == 0 || started == start),
        None => false,
    }
}

/// State letter and start time (clock ticks since boot) of process `pid` of this host, from
/// `/proc/<pid>/stat` as `chaos_faults`' one parser reads it; `None` when it is gone.
#[cfg(target_os = "linux")]
fn proc_stat(pid: u32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    chaos_faults::process::ProcStat::parse(&text).map(|s| (s.state, s.start_time))
}

/// Without `/proc`, no process can be judged: every owner looks gone.
#[cfg(not(target_os = "linux"))]
fn proc_stat(_pid: u32) -> Option<(char, u64)> {
    None
}

/// Start time of process `pid` of this host in clock ticks since boot (field 22 of
/// `/proc/<pid>/stat`), which tells it apart from a later process reusing its pid; `None` when
/// it is gone.
pub fn start_time(pid: u32) -> Option<u64> {
    proc_stat(pid).map(|(_, start)| start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tag_names_this_host_and_process() {
        let tag = OwnerTag::parse(&current_tag()).expect("our own tag parses");
        assert_eq!(tag.host, hostname());
        assert_eq!(tag.pid, std::process::id());
        if cfg!(target_os = "linux") {
            assert!(tag.start > 0, "start ticks read from /proc/self/stat");
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn our_own_process_is_alive() {
        assert_eq!(owner_state(&current_tag()), OwnerState::Alive);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_reused_pid_is_dead() {
        let me = OwnerTag::parse(&current_tag()).unwrap();
        let tag = format!("{}:{}:{}", me.host, me.pid, me.start + 1);
        assert_eq!(owner_state(&tag), OwnerState::Dead);
    }

    #[test]
    fn a_pid_that_does_not_exist_is_dead() {
        // Above the kernel's largest pid_max (2^22), so no process can have it.
        let tag = format!("{}:{}:12345", hostname(), (1u32 << 22) + 1);
        assert_eq!(owner_state(&tag), OwnerState::Dead);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_zombie_is_dead() {
        let mut child = std::process::Command::new("true").spawn().expect("spawning true");
        let pid = child.id();
        // Not waited for: once it exits it stays a zombie until reaped.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while process_alive(pid, 0) {
            assert!(std::time::Instant::now() < deadline, "true did not exit");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(
            std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "still a zombie"
        );
        assert_eq!(owner_state(&format!("{}:{pid}:0", hostname())), OwnerState::Dead);
        child.wait().expect("reaping true");
    }

    #[test]
    fn another_host_is_elsewhere() {
        let other = format!("not-{}", hostname());
        assert_eq!(owner_state(&format!("{other}:1:1")), OwnerState::Elsewhere(other));
        // A colon in the hostname stays in the hostname.
        assert_eq!(
            OwnerTag::parse("a:b:42:7").map(|t| t.host),
            Some("a:b".to_string())
        );
    }

    #[test]
    fn garbage_is_unknown() {
        for tag in [
            "",
            "host",
            "host:12",
            "host:x:1",
            "host:1:y",
            ":1:2",
            "host:0:5",
            "host:-1:5",
        ] {
            assert_eq!(owner_state(tag), OwnerState::Unknown, "{tag:?}");
        }
    }
}
