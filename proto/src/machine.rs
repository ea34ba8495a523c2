//! Machine faults: faults a provisioner injects on a whole machine *from outside it* — freezing,
//! stopping or unplugging the machine the agent runs on — as opposed to the faults the node's
//! agent installs from inside (`fault::FaultSpec`).
//!
//! Which machine faults a cluster offers depends on its backend (a container can be paused; a
//! network namespace cannot): the runner asks `Cluster::machine_faults` and injects through
//! `Cluster::inject_machine_fault`, with a TTL after which the fault heals by itself.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A fault on a whole machine, injected by its provisioner from outside the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MachineFault {
    /// Every process of the machine frozen (e.g. `docker pause`); healed by thawing it. The agent
    /// is frozen too, so it is told beforehand not to expect heartbeats for the fault's TTL.
    Pause,
    /// The machine stopped (e.g. `docker stop`: SIGTERM, then SIGKILL); healed by starting it
    /// again — its agent comes back, processes started through the old one do not.
    Stop,
    /// The machine unplugged from the cluster network: no packet in or out; healed by plugging
    /// it in again with the same address.
    Disconnect,
}

impl MachineFault {
    /// Every machine fault, in a stable order.
    pub const ALL: [MachineFault; 3] = [MachineFault::Pause, MachineFault::Stop, MachineFault::Disconnect];

    /// The fault's name (`pause`, `stop`, `disconnect`), as in scenario files and on the
    /// command line.
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

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|m| m.name() == s).ok_or_else(|| {
            let names: Vec<_> = Self::ALL.iter().map(|m| m.name()).collect();
            format!("unknown machine fault {s:?}; valid: {}", names.join(", "))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_serde_and_from_str() {
        for fault in MachineFault::ALL {
            let json = serde_json::to_string(&fault).unwrap();
            assert_eq!(json, format!("\"{fault}\""));
            assert_eq!(serde_json::from_str::<MachineFault>(&json).unwrap(), fault);
            assert_eq!(fault.name().parse::<MachineFault>().unwrap(), fault);
        }
        assert!(
            "freeze"
                .parse::<MachineFault>()
                .unwrap_err()
                .contains("pause, stop, disconnect")
        );
    }
}
