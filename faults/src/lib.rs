//! Linux fault mechanisms for chaos: process signals and freezing, nftables partitions and
//! loss over netlink, a userspace NFQUEUE packet shaper (delay, jitter, duplicate, corrupt,
//! reorder), tbf bandwidth limits, link changes, a crash-safe ledger and a capability probe.
//!
//! Network faults act on the network namespace of the calling thread (the agent runs inside the
//! node's namespace). The crate only adds and removes objects it created and can name: its own
//! nftables table ([`nft::TABLE`]), root qdiscs with handle [`QDISC_HANDLE`], NFQUEUE numbers
//! it bound. Every object is written to the [`Ledger`] before it is installed, so
//! [`heal_leftovers`] can remove exactly what a killed process left.
//!
//! Entry points: [`Injector`] (inject/heal/list by fault id), [`process`] (signals, freezer,
//! cgroup kill), [`probe()`](probe::probe).

mod error;
mod injector;
mod ledger;
pub mod link;
mod netlink;
pub mod nfqueue;
pub mod nft;
pub mod probe;
pub mod process;
mod qdisc;
mod spec;

pub use error::{Error, Result};
pub use injector::{ActiveFault, FIRST_QUEUE, HealReport, Injector, QDISC_HANDLE, heal_leftovers};
pub use ledger::{Installed, Ledger, LedgerEntry};
pub use probe::{Capabilities, Capability, IptablesBackend, probe};
pub use spec::{
    Bandwidth, Direction, Distribution, FaultSpec, FreezeTarget, IpNet, LinkChange, Mechanism, NetScope,
    PacketEffects, Protocol,
};
