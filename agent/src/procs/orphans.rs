//! Adopted orphans.
//!
//! The agent makes itself a child subreaper (`PR_SET_CHILD_SUBREAPER`): a process that
//! daemonizes (fork, setsid, fork again) under something the agent started is reparented to
//! the agent instead of to init, so it still descends from the agent — it stays the node's
//! (see `node`) and the agent kills it on shutdown. The agent must then reap such orphans
//! itself, or they pile up as zombies (on this project's machines PID 1 does not reap either).
//!
//! It must never reap a child somebody waits for: the child's exit status would be lost. So
//! only pids the table does not own are reaped, and a table spawn holds the gate (read) from
//! before the fork until the child is in the table, as does any other agent code running a
//! child of its own (the fault probe, see `ProcTable::child_gate`), while a reaping round
//! holds it (write): a child is always owned, or waited for, before the reaper can see it.
//!
//! This is process-wide: a program that embeds the agent ([`crate::serve`]) and waits for
//! children of its own by pid will see those reaped by the agent once they exit.

use std::sync::Weak;
use std::time::Duration;

use chaos_faults::process;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};

use super::Shared;
use super::node::{Membership, NodeScope};

/// A reaping round runs on SIGCHLD, and at least this often in case a signal was coalesced.
const REAP_INTERVAL: Duration = Duration::from_secs(1);
/// Most orphans reaped in one round; the next round (at most [`REAP_INTERVAL`] later) goes on.
const MAX_REAPED_PER_ROUND: usize = 256;

/// Makes this process a child subreaper. A failure only loses the adoption of daemonized
/// descendants (logged).
pub(crate) fn become_subreaper() {
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        tracing::warn!(
            "cannot become a child subreaper ({e}): daemonized descendants will not count as the node's"
        );
    }
}

/// Reaps adopted orphans until the table is dropped.
pub(crate) async fn reap_loop(shared: Weak<Shared>) {
    let mut sigchld = match signal(SignalKind::child()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("no SIGCHLD stream ({e}): reaping adopted orphans every {REAP_INTERVAL:?}");
            None
        }
    };
    let mut tick = tokio::time::interval(REAP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        match &mut sigchld {
            Some(s) => tokio::select! {
                got = s.recv() => if got.is_none() { sigchld = None },
                _ = tick.tick() => {}
            },
            None => {
                tick.tick().await;
            }
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        reap_adopted(&shared);
    }
}

/// The agent's children the table does not own, read under the gate's write lock.
fn adopted(shared: &Shared) -> Vec<i32> {
    let owned = shared.owned_pids();
    match process::children(std::process::id() as i32) {
        Ok(children) => children.into_iter().filter(|p| !owned.contains(p)).collect(),
        Err(e) => {
            tracing::debug!("listing the agent's children: {e}");
            Vec::new()
        }
    }
}

/// Reaps the zombies among the agent's children that the table does not own. Returns how many.
/// Skips the round when the gate is held (a spawn or a child of the agent's own is running):
/// the next SIGCHLD or tick comes back.
pub(crate) fn reap_adopted(shared: &Shared) -> usize {
    let _gate = match shared.gate.try_write() {
        Ok(gate) => gate,
        Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => return 0,
    };
    let mut reaped = 0;
    for pid in adopted(shared) {
        if reaped >= MAX_REAPED_PER_ROUND {
            break;
        }
        if !matches!(process::stat(pid), Ok(Some(st)) if st.is_dead()) {
            continue;
        }
        match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => {}
            Ok(status) => {
                reaped += 1;
                tracing::debug!(pid, ?status, "reaped an adopted orphan");
            }
        }
    }
    reaped
}

/// SIGKILLs every adopted orphan that is the node's, with its descendants. Returns the pids
/// signalled.
pub(crate) fn kill_adopted(shared: &Shared, node: &NodeScope) -> Vec<i32> {
    let orphans = {
        let _gate = shared.gate.write().unwrap_or_else(|p| p.into_inner());
        adopted(shared)
    };
    let mut killed = Vec::new();
    for orphan in orphans {
        if !matches!(node.membership(orphan), Ok(Membership::Node)) {
            continue;
        }
        let tree = process::tree(orphan).unwrap_or_default();
        for (pid, _) in tree {
            if nix::sys::signal::kill(Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).is_ok() {
                killed.push(pid);
            }
        }
    }
    killed
}
