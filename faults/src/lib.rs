//! Linux fault mechanisms for chaos: process signals and freezing, nftables partitions and
//! loss over netlink, a userspace NFQUEUE packet shaper (delay, jitter, duplicate, corrupt,
//! reorder), tbf bandwidth limits, link changes and flaps, a crash-safe ledger and a capability probe.
//!
//! Network faults act on the network namespace of the calling thread (the agent runs inside the
//! node's namespace). The crate only adds and removes objects it created and can name: its own
//! nftables table ([`nft::TABLE`]), root qdiscs with handle [`QDISC_HANDLE`], NFQUEUE numbers
//! it bound. Every object is written to the [`Ledger`] before it is installed, so
//! [`heal_leftovers`] can remove exactly what a killed process left.
//!
//! **A heal is verified.** After removing or restoring an object the injector reads back what
//! the kernel holds — our chains, the root qdisc, the link state, `cgroup.events` /
//! `freezer.state`, the state of every recorded process in `/proc/<pid>/stat` — and forgets
//! the ledger entry only once the effect is gone; otherwise the heal fails with
//! [`Error::NotHealed`] and the entry stays for a retry. "Already gone" is what the kernel
//! says, never a read that failed: a `/proc` file that cannot be read for any reason but
//! ENOENT/ESRCH, or a cgroup path missing because its filesystem is not mounted where it was
//! (see [`cgroup::cgroup_gone`]), is an error.
//!
//! Entry points: [`Injector`] (inject/heal/list by fault id), [`process`] (signals, `/proc`,
//! SIGSTOP trees), [`cgroup`] (freezer, cgroup kill, membership, mounts),
//! [`probe()`](probe::probe).

pub mod cgroup;
mod error;
mod flap;
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
pub use injector::{
    ActiveFault, FIRST_QUEUE, FailedHeal, HealReport, Injector, QDISC_HANDLE, heal_leftovers,
};
pub use ledger::{Installed, Ledger, LedgerEntry};
pub use probe::{Capabilities, Capability, IptablesBackend, probe};
pub use spec::{
    Bandwidth, Direction, Distribution, FaultSpec, FreezeTarget, IpNet, LinkChange, LinkFlap, Mechanism,
    NetScope, PacketEffects, Protocol,
};
