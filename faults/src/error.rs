//! The crate's error type.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong injecting or healing a fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel (or node) lacks what the fault needs. `feature` names it, e.g.
    /// `"sch_netem (CONFIG_NET_SCH_NETEM)"`.
    #[error("unsupported: {feature} is not available on this node: {reason}")]
    Unsupported {
        /// The missing kernel feature or facility.
        feature: &'static str,
        /// What the probe or the kernel said.
        reason: String,
    },
    /// A fault specification field is invalid.
    #[error("invalid fault {field}: {reason}")]
    Invalid {
        /// The offending field, e.g. `"loss.percent"`.
        field: &'static str,
        /// Why it is invalid and what to do.
        reason: String,
    },
    /// A fault with this id is already installed.
    #[error("fault {id:?} is already active; heal it first or use another id")]
    AlreadyActive {
        /// The fault id.
        id: String,
    },
    /// Installing would touch an object we do not own (e.g. someone else's root qdisc).
    #[error("{object} is owned by someone else ({found}); refusing to replace it")]
    Conflict {
        /// What we wanted to change, e.g. `"root qdisc of eth0"`.
        object: String,
        /// What is there now.
        found: String,
    },
    /// A named object (interface, process, cgroup) does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// A netlink request failed.
    #[error("netlink {op} failed: {source}")]
    Netlink {
        /// What we asked the kernel to do.
        op: String,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// A file operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What we were doing (`"write"`, `"read"`...).
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Sending a signal failed.
    #[error("sending signal {signal} to {target}: {source}")]
    Signal {
        /// `"pid 42"`, `"process group 42"`.
        target: String,
        /// The signal number.
        signal: i32,
        /// The OS error.
        #[source]
        source: nix::Error,
    },
    /// The state file (ledger) is unreadable or corrupt.
    #[error("state file {}: {reason}", path.display())]
    Ledger {
        /// The state file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A heal ran but the kernel does not confirm its effect is gone (a process still stopped,
    /// a cgroup still frozen, a rule still present), or cannot be asked. The object stays in
    /// the ledger and the heal must be retried.
    #[error("{object} is not healed: {reason}")]
    NotHealed {
        /// What is still in place, e.g. `"stopped process 4242"`.
        object: String,
        /// What the kernel said, or why it could not be asked.
        reason: String,
    },
    /// A bounded wait ran out.
    #[error("timed out after {ms} ms waiting for {what}")]
    Timeout {
        /// What we waited for.
        what: String,
        /// The bound.
        ms: u64,
    },
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn netlink(op: impl Into<String>, source: io::Error) -> Self {
        Error::Netlink {
            op: op.into(),
            source,
        }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Error::Invalid {
            field,
            reason: reason.into(),
        }
    }
}
