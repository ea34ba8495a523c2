//! TEMPORARY adapter until the provisioner work lands `chaos_proto::MachineFault` in
//! `proto/src/machine.rs` (owned by that change): the fault model ([`crate::kinds::Machine`])
//! needs the type now. At the merge this file is deleted and `kinds.rs` imports
//! `crate::machine::MachineFault` instead; nothing else refers to this module.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What a cluster can do to a node's whole machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MachineFault {
    /// Freeze everything on the machine, its agent included; thawed at heal.
    Pause,
    /// Stop the machine; started again at heal (its agent comes back, processes do not).
    Stop,
    /// Cut the machine off the cluster network; reconnected with the same address at heal.
    Disconnect,
}

impl MachineFault {
    /// Every machine fault.
    pub const ALL: [MachineFault; 3] = [MachineFault::Pause, MachineFault::Stop, MachineFault::Disconnect];

    /// The name used in files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            MachineFault::Pause => "pause",
            MachineFault::Stop => "stop",
            MachineFault::Disconnect => "disconnect",
        }
    }
}

impl fmt::Display for MachineFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for MachineFault {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        MachineFault::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| format!("unknown machine fault {s:?}; valid: pause, stop, disconnect"))
    }
}
