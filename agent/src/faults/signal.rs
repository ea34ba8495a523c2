//! `POST /v1/signal`: signals to the node's processes by pid, process group or command name —
//! never to a process outside the node (see `procs::node`), never to the agent itself.

use chaos_faults::process;
use chaos_proto::{ApiError, ErrorKind, NodeSignalRequest, SignalTarget};

use super::fault_error;
use crate::procs::{Membership, NodeScope};

/// `/proc/<pid>/comm` holds at most this many bytes.
const COMM_LEN: usize = 15;

fn err(kind: ErrorKind, message: impl Into<String>) -> ApiError {
    ApiError::new(kind, message)
}

fn internal(e: chaos_faults::Error) -> ApiError {
    err(ErrorKind::Internal, format!("listing the node's processes: {e}"))
}

/// Signals the node's processes matched by `req.target`; returns the pids signalled.
pub(crate) fn signal_node(req: NodeSignalRequest, node: &NodeScope) -> Result<Vec<u32>, ApiError> {
    let sig = req.signal;
    if !(1..=64).contains(&sig.0) {
        return Err(err(
            ErrorKind::InvalidRequest,
            format!("signal {} is out of range 1..=64", sig.0),
        ));
    }
    let me = std::process::id();
    let refuse = |what: String| {
        err(
            ErrorKind::InvalidRequest,
            format!(
                "{what} is the agent itself, which never signals itself; use POST /v1/shutdown to stop it"
            ),
        )
    };
    match req.target {
        SignalTarget::Pid(pid) => {
            if pid == me {
                return Err(refuse(format!("pid {pid}")));
            }
            let pid_i32 = i32::try_from(pid)
                .map_err(|_| err(ErrorKind::InvalidRequest, format!("pid {pid} is out of range")))?;
            node.check_pid(pid_i32)?;
            process::signal_pid(pid_i32, sig.0).map_err(fault_error)?;
            tracing::info!(pid, "sent {sig}");
            Ok(vec![pid])
        }
        SignalTarget::Group(pgid) => {
            if pgid == nix::unistd::getpgrp().as_raw() as u32 {
                return Err(refuse(format!("process group {pgid}")));
            }
            let pgid_i32 = i32::try_from(pgid).map_err(|_| {
                err(
                    ErrorKind::InvalidRequest,
                    format!("process group {pgid} is out of range"),
                )
            })?;
            let members = process::group_members(pgid_i32).map_err(internal)?;
            // killpg reaches every member: the whole group must be the node's.
            for &member in &members {
                if member as u32 == me {
                    return Err(refuse(format!("process group {pgid} (it holds the agent)")));
                }
                if let Membership::Outside(why) = node.membership(member)? {
                    return Err(err(
                        ErrorKind::PermissionDenied,
                        format!(
                            "process group {pgid} is not this node's: its member pid {member} is not a \
                             process of this node: {why}; the agent only acts on {}",
                            node.describe()
                        ),
                    ));
                }
            }
            if members.is_empty() {
                return Err(err(
                    ErrorKind::NotFound,
                    format!("no live process in process group {pgid} on this node"),
                ));
            }
            process::signal_group(pgid_i32, sig.0).map_err(fault_error)?;
            tracing::info!(pgid, ?members, "sent {sig} to a process group");
            Ok(members.into_iter().map(|p| p as u32).collect())
        }
        SignalTarget::Name(name) => {
            if name.is_empty() || name.len() > COMM_LEN || name.contains('/') {
                return Err(err(
                    ErrorKind::InvalidRequest,
                    format!(
                        "process name {name:?} can never match: /proc/<pid>/comm holds 1-{COMM_LEN} bytes \
                         without '/' (use the first {COMM_LEN} bytes of the program name)"
                    ),
                ));
            }
            let mut outside = Vec::new();
            let mut signalled = Vec::new();
            for pid in process::pids_by_name(&name).map_err(internal)? {
                if pid as u32 == me {
                    continue;
                }
                match node.membership(pid)? {
                    Membership::Node => {}
                    Membership::Outside(_) => {
                        outside.push(pid);
                        continue;
                    }
                    Membership::Gone => continue,
                }
                match process::signal_pid(pid, sig.0) {
                    Ok(_) => signalled.push(pid as u32),
                    // Exited between the scan and the signal.
                    Err(chaos_faults::Error::Signal {
                        source: nix::errno::Errno::ESRCH,
                        ..
                    }) => {}
                    Err(e) => return Err(fault_error(e)),
                }
            }
            if signalled.is_empty() {
                let elsewhere = if outside.is_empty() {
                    String::new()
                } else {
                    format!("; processes of that name outside the node were left alone (pids {outside:?})")
                };
                return Err(err(
                    ErrorKind::NotFound,
                    format!(
                        "no process named {name:?} on this node (matched against /proc/<pid>/comm among \
                         {}){elsewhere}",
                        node.describe()
                    ),
                ));
            }
            tracing::info!(%name, pids = ?signalled, spared = ?outside, "sent {sig} by name");
            Ok(signalled)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_never_signals_itself_and_names_must_be_able_to_match() {
        let node = NodeScope::new(None);
        let me = std::process::id();
        let e = signal_node(
            NodeSignalRequest {
                signal: chaos_proto::Signal::STOP,
                target: SignalTarget::Pid(me),
            },
            &node,
        )
        .unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidRequest);
        let e = signal_node(
            NodeSignalRequest {
                signal: chaos_proto::Signal::TERM,
                target: SignalTarget::Name("a-name-longer-than-15".into()),
            },
            &node,
        )
        .unwrap_err();
        assert!(e.message.contains("never match"), "{e}");
        // pid 1 is never a descendant of this process.
        let e = signal_node(
            NodeSignalRequest {
                signal: chaos_proto::Signal(0),
                target: SignalTarget::Pid(1),
            },
            &node,
        )
        .unwrap_err();
        assert_eq!(
            e.kind,
            ErrorKind::InvalidRequest,
            "signal 0 is out of range here: {e}"
        );
        let e = signal_node(
            NodeSignalRequest {
                signal: chaos_proto::Signal::CONT,
                target: SignalTarget::Pid(1),
            },
            &node,
        )
        .unwrap_err();
        assert_eq!(e.kind, ErrorKind::PermissionDenied, "{e}");
        assert!(
            e.message.starts_with("pid 1 is not a process of this node"),
            "{e}"
        );
    }
}
