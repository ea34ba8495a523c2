//! What bounds a large netns cluster on this host besides its address plan, checked before the
//! first node of a `create_nodes` call is made, so a thousand-node cluster fails in a
//! millisecond with the cap and its fix rather than halfway through (`docs/scale.md` lists them).
//!
//! * **File descriptors** of the runner: each node holds a few (its namespace, the agent's
//!   stdout, pooled mTLS connections for heartbeats and calls). A soft `RLIMIT_NOFILE` below the
//!   need is raised to the need (never above the hard limit) — what Go's runtime and systemd do;
//!   a hard limit below it is an error.
//! * **The kernel's IPv4 neighbour (ARP) table**: one table for every namespace of the host, so
//!   each node adds two entries (the node's for the host, the host's for the node);
//!   `net.ipv4.neigh.default.gc_thresh3` caps it (default 1,024) and past it the kernel drops
//!   packets ("neighbour table overflow").
//! * **Pids**: every agent runs a few threads; `kernel.pid_max` and `kernel.threads-max` bound
//!   the host's tasks.
//! * **Memory**: the agents' own memory against what the host has available.
//!
//! Bridge ports (1,024 per bridge) and the address space (a /22) are [`super::MAX_NODES`];
//! nothing per node uses inotify.

use std::io;
use std::path::Path;

/// Runner file descriptors one node holds: measured 4,014 open at 1,000 idle nodes (namespace,
/// agent stdout, pooled keep-alive connections), with headroom for calls and streams in flight.
pub(super) const FDS_PER_NODE: u64 = 6;

/// Neighbour-table entries one node adds: the node's entry for the host, the host's for it.
pub(super) const NEIGHBOURS_PER_NODE: u64 = 2;

/// Tasks (threads) of one idle agent: main, two runtime workers, two fault-worker threads,
/// the heartbeat watchdog, with one spare for blocking work.
pub(super) const TASKS_PER_AGENT: u64 = 7;

/// Memory one idle agent costs the host: its proportional set size, 877 KiB measured at 1,000
/// nodes, rounded up. (Its RSS, ~7 MiB, is mostly the static binary's pages, shared by all.)
pub(super) const AGENT_MEMORY: u64 = 2 << 20;

/// Descriptors and entries kept free for everything else the runner and the host do.
const SLACK: u64 = 256;

const GC_THRESH3: &str = "/proc/sys/net/ipv4/neigh/default/gc_thresh3";

/// Checks every cap for `adding` more nodes beside `existing` ones of this cluster; raises the
/// soft descriptor limit when that is enough. The error names the cap, the numbers and the fix.
pub(super) fn check(existing: u32, adding: u32) -> Result<(), String> {
    let (existing, adding) = (u64::from(existing), u64::from(adding));
    let total = existing + adding;
    descriptors(adding, total)?;
    neighbours(adding, total)?;
    tasks(adding, total)?;
    memory(adding, total)?;
    Ok(())
}

fn descriptors(adding: u64, total: u64) -> Result<(), String> {
    let open = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    let need = open + adding * FDS_PER_NODE + SLACK;
    let (soft, hard) =
        nofile_limit().map_err(|e| format!("reading the open-files limit (RLIMIT_NOFILE): {e}"))?;
    if need <= soft {
        return Ok(());
    }
    if need <= hard {
        set_nofile_limit(need, hard)
            .map_err(|e| format!("raising the open-files limit from {soft} to {need}: {e}"))?;
        tracing::info!(
            "raised this process's open-files limit from {soft} to {need} for {total} netns nodes"
        );
        return Ok(());
    }
    Err(format!(
        "{total} nodes need about {need} open files in the runner ({open} open now, {FDS_PER_NODE} per \
         node) but its hard limit is {hard}: raise it (`ulimit -Hn {need}` as root, LimitNOFILE= for a \
         service, nofile in /etc/security/limits.conf) or use fewer nodes"
    ))
}

/// The soft and hard `RLIMIT_NOFILE`.
fn nofile_limit() -> io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable `rlimit` for the duration of the call, which only
    // writes into it.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((limit.rlim_cur, limit.rlim_max))
}

/// Sets `RLIMIT_NOFILE` (soft ≤ hard, so an unprivileged process may do it too).
fn set_nofile_limit(soft: u64, hard: u64) -> io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: `limit` is a valid `rlimit` the call only reads.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Entries in the kernel's IPv4 neighbour table, all namespaces together (the first field of
/// `/proc/net/stat/arp_cache`, hexadecimal).
fn neighbour_entries() -> io::Result<u64> {
    let text = std::fs::read_to_string("/proc/net/stat/arp_cache")?;
    let field = text
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .ok_or_else(|| io::Error::other("no statistics line"))?;
    u64::from_str_radix(field, 16).map_err(io::Error::other)
}

fn neighbours(adding: u64, total: u64) -> Result<(), String> {
    let Some(limit) = read_number(Path::new(GC_THRESH3)) else {
        // Not readable here (no such sysctl in this namespace): nothing to compare with.
        return Ok(());
    };
    let now = neighbour_entries().unwrap_or(0);
    let need = now + adding * NEIGHBOURS_PER_NODE + SLACK;
    if need <= limit {
        return Ok(());
    }
    let suggest = need.next_power_of_two().max(limit * 2);
    Err(format!(
        "{total} nodes need about {need} entries in the kernel's neighbour (ARP) table ({now} in use, \
         {NEIGHBOURS_PER_NODE} per node; the table is shared by every namespace) but \
         net.ipv4.neigh.default.gc_thresh3 is {limit}, past which the kernel drops packets: raise it \
         as root, e.g. `sysctl -w net.ipv4.neigh.default.gc_thresh1={} \
         net.ipv4.neigh.default.gc_thresh2={} net.ipv4.neigh.default.gc_thresh3={suggest}`",
        suggest / 4,
        suggest / 2
    ))
}

fn tasks(adding: u64, total: u64) -> Result<(), String> {
    // /proc/loadavg's fourth field is `running/total` scheduling entities (threads) on the host.
    let running = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| {
            l.split_whitespace()
                .nth(3)?
                .split('/')
                .nth(1)?
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(0);
    let need = running + adding * TASKS_PER_AGENT + SLACK;
    for (sysctl, path) in [
        ("kernel.pid_max", "/proc/sys/kernel/pid_max"),
        ("kernel.threads-max", "/proc/sys/kernel/threads-max"),
    ] {
        if let Some(limit) = read_number(Path::new(path))
            && need > limit
        {
            return Err(format!(
                "{total} nodes need about {need} tasks ({running} on the host now, {TASKS_PER_AGENT} per \
                 agent) but {sysctl} is {limit}: raise it as root (`sysctl -w {sysctl}={}`) or use \
                 fewer nodes",
                need.next_power_of_two()
            ));
        }
    }
    Ok(())
}

fn memory(adding: u64, total: u64) -> Result<(), String> {
    let available = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kib| kib << 10)
    });
    let Some(available) = available else { return Ok(()) };
    let need = adding * AGENT_MEMORY;
    if need <= available {
        return Ok(());
    }
    Err(format!(
        "{total} nodes need about {} MiB for their agents ({} MiB each) but only {} MiB are available: \
         free memory or use fewer nodes",
        need >> 20,
        AGENT_MEMORY >> 20,
        available >> 20
    ))
}

fn read_number(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_cluster_fits_and_an_impossible_one_names_its_cap() {
        check(0, 3).unwrap();
        let e = check(0, 5_000_000).unwrap_err();
        assert!(
            e.contains("5000000 nodes need about") && (e.contains("raise") || e.contains("fewer nodes")),
            "{e}"
        );
    }

    #[test]
    fn the_neighbour_table_is_readable() {
        assert!(neighbour_entries().is_ok());
    }
}
