//! The injector: installs faults, records them in the ledger first, heals them exactly — and
//! only forgets a fault once the kernel confirms its effect is gone.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::flap::Flapper;
use crate::ledger::{Installed, Ledger, LedgerEntry};
use crate::nfqueue::Shaper;
use crate::nft::{self, Action, Nft};
use crate::spec::{FaultSpec, FreezeTarget, Mechanism};
use crate::{cgroup, link, process, qdisc};

/// Handle major number of every qdisc we install (`c4a0:`).
pub const QDISC_HANDLE: u32 = 0xC4A0_0000;
/// First NFQUEUE number we try; each packet fault takes the next free one.
pub const FIRST_QUEUE: u16 = 0xC4A0;

/// A fault currently installed by this injector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActiveFault {
    /// The fault id given by the caller.
    pub id: String,
    /// What was asked.
    pub spec: FaultSpec,
    /// How it was carried out.
    pub mechanism: Mechanism,
}

/// What healing found and removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealReport {
    /// Entries whose object was removed or restored.
    pub healed: Vec<LedgerEntry>,
    /// Entries whose object was already gone.
    pub already_gone: Vec<LedgerEntry>,
    /// Entries whose heal failed or could not be verified; they stay in the ledger.
    #[serde(default)]
    pub failed: Vec<FailedHeal>,
}

/// A ledger entry that could not be healed (or whose heal could not be verified).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedHeal {
    /// The entry, still in the ledger.
    pub entry: LedgerEntry,
    /// Why.
    pub error: String,
}

/// Installs and heals faults in the calling thread's network namespace, keeping a ledger.
///
/// Call every method from the same network namespace (the agent's). Dropping the injector
/// without healing leaves kernel objects in place on purpose (as a crash would): the next
/// [`Injector::new`] on the same state file heals them.
pub struct Injector {
    ledger: Ledger,
    exempt_tcp_ports: Vec<u16>,
    active: BTreeMap<String, ActiveFault>,
    shapers: BTreeMap<String, Shaper>,
    flappers: BTreeMap<String, Flapper>,
    startup_heal: HealReport,
    /// Kept open: closing a netfilter netlink socket after a delete waits for the kernel's
    /// deferred cleanup (an RCU grace period, ~10–15 ms); a live socket lets it run async.
    nft: NftConn,
}

/// A lazily opened nf_tables socket, bound to the network namespace of its first use.
#[derive(Default)]
pub(crate) struct NftConn(Option<Nft>);

impl NftConn {
    fn get(&mut self) -> Result<&mut Nft> {
        if self.0.is_none() {
            self.0 = Some(Nft::open()?);
        }
        Ok(self.0.as_mut().expect("just opened"))
    }
}

impl Injector {
    /// Opens the ledger at `state_path`, heals whatever a previous process left there, and
    /// returns an injector that never affects the local TCP ports in `exempt_tcp_ports` (both
    /// directions), e.g. the agent's own control port.
    ///
    /// Entries whose heal fails or cannot be verified stay in the ledger (see
    /// [`HealReport::failed`] and [`Injector::leftovers`]); heal them later with
    /// [`Injector::heal`]. Only an unreadable ledger is an error.
    pub fn new(state_path: impl AsRef<Path>, exempt_tcp_ports: &[u16]) -> Result<Self> {
        let mut ledger = Ledger::open(state_path.as_ref())?;
        let mut nft = NftConn::default();
        let startup_heal = heal_ledger(&mut ledger, &mut nft);
        if !startup_heal.healed.is_empty() {
            tracing::warn!(
                count = startup_heal.healed.len(),
                "healed faults left by a previous process"
            );
        }
        for failed in &startup_heal.failed {
            tracing::error!(
                fault = %failed.entry.fault,
                object = ?failed.entry.installed,
                "a fault left by a previous process is not healed, kept in the ledger: {}",
                failed.error
            );
        }
        Ok(Self {
            ledger,
            exempt_tcp_ports: exempt_tcp_ports.to_vec(),
            active: BTreeMap::new(),
            shapers: BTreeMap::new(),
            flappers: BTreeMap::new(),
            startup_heal,
            nft,
        })
    }

    /// What [`Injector::new`] healed from the state file.
    pub fn startup_heal(&self) -> &HealReport {
        &self.startup_heal
    }

    /// The faults installed now.
    pub fn active(&self) -> Vec<ActiveFault> {
        self.active.values().cloned().collect()
    }

    /// Ids the ledger still records that this injector did not install: a previous process's
    /// faults whose heal failed or could not be verified. [`Injector::heal`] retries them.
    pub fn leftovers(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .ledger
            .entries()
            .iter()
            .filter(|e| !self.active.contains_key(&e.fault))
            .map(|e| e.fault.clone())
            .collect();
        ids.dedup();
        ids
    }

    /// Installs fault `id`. The object is recorded in the ledger before it is created; on
    /// failure nothing of it is left installed.
    pub fn inject(&mut self, id: &str, spec: &FaultSpec) -> Result<Mechanism> {
        self.inject_until(id, spec, None)
    }

    /// Like [`Injector::inject`], and where the kernel can keep time for us (nftables rules:
    /// partition, loss and packet faults, see [`crate::probe::kernel_expiry`]) the fault stops
    /// acting at `deadline` even if no process is left to heal it. Other mechanisms ignore the
    /// deadline: their heal is the caller's timer's (or the next injector's) job.
    pub fn inject_until(
        &mut self,
        id: &str,
        spec: &FaultSpec,
        deadline: Option<std::time::SystemTime>,
    ) -> Result<Mechanism> {
        nft::validate_id(id)?;
        if self.active.contains_key(id) || self.ledger.entries().iter().any(|e| e.fault == id) {
            return Err(Error::AlreadyActive { id: id.to_string() });
        }
        let deadline = deadline.filter(|_| crate::probe::kernel_expiry().available);
        let result = self.install(id, spec, deadline);
        match result {
            Ok(mechanism) => {
                tracing::info!(id, ?mechanism, "fault injected");
                self.active.insert(
                    id.to_string(),
                    ActiveFault {
                        id: id.to_string(),
                        spec: spec.clone(),
                        mechanism: mechanism.clone(),
                    },
                );
                Ok(mechanism)
            }
            Err(e) => {
                // Undo whatever part got installed; report the original error.
                if let Err(undo) = self.heal(id) {
                    tracing::error!(id, error = %undo, "cleanup after failed injection failed");
                }
                Err(e)
            }
        }
    }

    fn install(
        &mut self,
        id: &str,
        spec: &FaultSpec,
        deadline: Option<std::time::SystemTime>,
    ) -> Result<Mechanism> {
        match spec {
            FaultSpec::Partition { scope } => {
                self.ledger.record(
                    id,
                    Installed::NftChains {
                        fault: id.to_string(),
                    },
                )?;
                self.nft
                    .get()?
                    .install(id, scope, &self.exempt_tcp_ports, Action::Drop, deadline)?;
                Ok(Mechanism::NftablesNetlink)
            }
            FaultSpec::Loss { scope, percent } => {
                if !(0.0..=100.0).contains(percent) {
                    return Err(Error::invalid(
                        "percent",
                        format!("{percent} is not between 0 and 100"),
                    ));
                }
                let per10000 = (percent * 100.0).round() as u32;
                self.ledger.record(
                    id,
                    Installed::NftChains {
                        fault: id.to_string(),
                    },
                )?;
                self.nft.get()?.install(
                    id,
                    scope,
                    &self.exempt_tcp_ports,
                    Action::DropRandom { per10000 },
                    deadline,
                )?;
                Ok(Mechanism::NftablesNetlink)
            }
            FaultSpec::Packet { scope, effects } => {
                effects.validate()?;
                scope.validate()?;
                let shaper = self.start_shaper(effects)?;
                let queue = shaper.queue();
                self.shapers.insert(id.to_string(), shaper);
                self.ledger.record(
                    id,
                    Installed::NftChains {
                        fault: id.to_string(),
                    },
                )?;
                self.nft.get()?.install(
                    id,
                    scope,
                    &self.exempt_tcp_ports,
                    Action::Queue { num: queue },
                    deadline,
                )?;
                Ok(Mechanism::NfqueueUserspace { queue })
            }
            FaultSpec::Bandwidth(bw) => {
                let handle = QDISC_HANDLE;
                qdisc::check_root_free(&bw.interface, handle)?;
                self.ledger.record(
                    id,
                    Installed::RootQdisc {
                        interface: bw.interface.clone(),
                        handle,
                    },
                )?;
                let mut exempt: Vec<u16> = self
                    .exempt_tcp_ports
                    .iter()
                    .chain(&bw.exempt_tcp_ports)
                    .copied()
                    .collect();
                exempt.sort_unstable();
                exempt.dedup();
                qdisc::install(bw, handle, &exempt)
            }
            FaultSpec::Link(change) => {
                if change.up.is_none() && change.mtu.is_none() {
                    return Err(Error::invalid(
                        "link",
                        "nothing to change: give `up` and/or `mtu`",
                    ));
                }
                let state = link::get(&change.interface)?;
                self.ledger.record(
                    id,
                    Installed::Link {
                        interface: change.interface.clone(),
                        was_up: state.up,
                        mtu: state.mtu,
                    },
                )?;
                link::set(&change.interface, change.up, change.mtu)?;
                Ok(Mechanism::RtnetlinkLink)
            }
            FaultSpec::Flap(flap) => {
                flap.validate()?;
                let state = link::get(&flap.interface)?;
                if !state.up {
                    return Err(Error::invalid(
                        "interface",
                        format!(
                            "{} is down: a flap takes an up link down and back up; bring it up first",
                            flap.interface
                        ),
                    ));
                }
                self.ledger.record(
                    id,
                    Installed::Link {
                        interface: flap.interface.clone(),
                        was_up: state.up,
                        mtu: state.mtu,
                    },
                )?;
                let flapper = Flapper::start(flap)?;
                self.flappers.insert(id.to_string(), flapper);
                Ok(Mechanism::RtnetlinkLinkFlap)
            }
            FaultSpec::Freeze(FreezeTarget::Cgroup { path }) => {
                let v2 = cgroup::cgroup_is_v2(Path::new(path))?;
                // Recorded so that a heal can tell "gone" from "not visible from here".
                let mount =
                    cgroup::cgroup_mount_of(Path::new(path), v2)?.map(|m| m.to_string_lossy().into_owned());
                self.ledger.record(
                    id,
                    Installed::CgroupFrozen {
                        path: path.clone(),
                        v2,
                        mount,
                    },
                )?;
                cgroup::freeze_cgroup(Path::new(path))
            }
            FaultSpec::Freeze(FreezeTarget::ProcessTree { pid }) => {
                let tree = process::tree(*pid)?;
                self.ledger
                    .record(id, Installed::StoppedProcesses { pids: tree.clone() })?;
                process::stop_processes(&tree)?;
                Ok(Mechanism::SigStopTree)
            }
            FaultSpec::Freeze(FreezeTarget::Proc { .. } | FreezeTarget::AllProcs) => Err(Error::invalid(
                "freeze target",
                "`proc` and `all_procs` name processes of an agent: the agent resolves them into \
                 `cgroup` or `process_tree` targets; give one of those here",
            )),
        }
    }

    fn start_shaper(&mut self, effects: &crate::spec::PacketEffects) -> Result<Shaper> {
        let used: Vec<u16> = self.shapers.values().map(Shaper::queue).collect();
        let mut last_err = None;
        for queue in (FIRST_QUEUE..FIRST_QUEUE.saturating_add(256)).filter(|q| !used.contains(q)) {
            match Shaper::start(queue, effects.clone()) {
                Ok(s) => return Ok(s),
                // Someone else in this namespace holds the queue: try the next one.
                Err(Error::Netlink { source, .. }) if source.raw_os_error() == Some(libc::EBUSY) => {
                    last_err = Some(source);
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::netlink(
            "bind an NFQUEUE",
            last_err.unwrap_or_else(|| std::io::Error::other("no free queue number")),
        ))
    }

    /// Heals fault `id`: removes or restores everything recorded for it, checks with the
    /// kernel that the effect is gone, and only then forgets it. Idempotent: healing an unknown
    /// or already-healed id is `Ok(false)`. On error the fault stays active and recorded, so
    /// calling `heal` again retries it.
    pub fn heal(&mut self, id: &str) -> Result<bool> {
        let entries: Vec<LedgerEntry> = self
            .ledger
            .entries()
            .iter()
            .filter(|e| e.fault == id)
            .cloned()
            .collect();
        let mut found = self.active.contains_key(id);
        // A flap's thread stops before the link is restored, so it cannot change it afterwards.
        if let Some(flapper) = self.flappers.remove(id) {
            flapper.stop();
            found = true;
        }
        for entry in entries.iter().rev() {
            heal_installed(&entry.installed, &mut self.nft)?;
            self.ledger.forget(entry)?;
            found = true;
        }
        self.active.remove(id);
        // Stop the userspace shaper only after its rules are gone, so no packet is queued to a
        // queue nobody reads (bypass would let it through anyway).
        if let Some(shaper) = self.shapers.remove(id) {
            shaper.stop();
            found = true;
        }
        if found {
            tracing::info!(id, "fault healed");
        }
        Ok(found)
    }

    /// Heals every fault this injector (or the ledger) knows. Tries all, returns the first error.
    pub fn heal_all(&mut self) -> Result<()> {
        let mut ids: Vec<String> = self.ledger.entries().iter().map(|e| e.fault.clone()).collect();
        ids.extend(self.active.keys().cloned());
        ids.extend(self.shapers.keys().cloned());
        ids.extend(self.flappers.keys().cloned());
        ids.sort();
        ids.dedup();
        let mut first_err = None;
        for id in ids {
            if let Err(e) = self.heal(&id) {
                tracing::error!(id, error = %e, "heal failed");
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// Removes exactly what the state file at `state_path` records (newest first) and forgets each
/// entry once its heal is verified. Idempotent: objects already gone are reported as such.
/// Fails with [`Error::NotHealed`] naming every entry that could not be healed or verified;
/// those stay in the state file, so calling it again retries them.
pub fn heal_leftovers(state_path: impl AsRef<Path>) -> Result<HealReport> {
    let mut ledger = Ledger::open(state_path.as_ref())?;
    let report = heal_ledger(&mut ledger, &mut NftConn::default());
    if report.failed.is_empty() {
        return Ok(report);
    }
    Err(Error::NotHealed {
        object: format!(
            "{} of the objects recorded in {}",
            report.failed.len(),
            ledger.path().display()
        ),
        reason: report
            .failed
            .iter()
            .map(|f| format!("fault {}: {}", f.entry.fault, f.error))
            .collect::<Vec<_>>()
            .join("; "),
    })
}

/// Heals every entry (newest first); entries whose heal fails or is not verified stay.
fn heal_ledger(ledger: &mut Ledger, nft: &mut NftConn) -> HealReport {
    let mut report = HealReport::default();
    let entries: Vec<LedgerEntry> = ledger.entries().to_vec();
    for entry in entries.iter().rev() {
        let healed = match heal_installed(&entry.installed, nft) {
            Ok(healed) => healed,
            Err(e) => {
                report.failed.push(FailedHeal {
                    entry: entry.clone(),
                    error: e.to_string(),
                });
                continue;
            }
        };
        if let Err(e) = ledger.forget(entry) {
            // Healed, but still recorded: the next heal finds it already gone.
            report.failed.push(FailedHeal {
                entry: entry.clone(),
                error: e.to_string(),
            });
        } else if healed {
            report.healed.push(entry.clone());
        } else {
            report.already_gone.push(entry.clone());
        }
    }
    report
}

/// Removes or restores one object, then checks with the kernel that it is gone
/// ([`verify_healed`]). Returns whether there was anything to do.
fn heal_installed(installed: &Installed, nft: &mut NftConn) -> Result<bool> {
    let did = match installed {
        Installed::NftChains { fault } => nft.get()?.remove(fault)?,
        Installed::RootQdisc { interface, handle } => qdisc::remove_root(interface, *handle)?,
        Installed::Link {
            interface,
            was_up,
            mtu,
        } => link::restore(interface, *was_up, *mtu)?,
        Installed::CgroupFrozen { path, v2, mount } => {
            cgroup::thaw_cgroup(Path::new(path), *v2, mount.as_deref().map(Path::new))?
        }
        // Verifies as it goes: SIGCONT, then no recorded process may still be stopped.
        Installed::StoppedProcesses { pids } => process::continue_processes(pids)?,
    };
    verify_healed(installed, nft)?;
    Ok(did)
}

/// Reads back what the kernel holds and fails with [`Error::NotHealed`] while the effect of
/// `installed` is still there: our chains in our table, our root qdisc, the changed link
/// state, a frozen cgroup, a stopped process. A read that fails is an error too — never
/// taken for "gone".
fn verify_healed(installed: &Installed, nft: &mut NftConn) -> Result<()> {
    match installed {
        Installed::NftChains { fault } => {
            let (chain_in, chain_out) = nft::fault_chains(fault);
            let left: Vec<String> = nft
                .get()?
                .chains()?
                .into_iter()
                .filter(|c| *c == chain_in || *c == chain_out)
                .collect();
            if left.is_empty() {
                Ok(())
            } else {
                Err(Error::NotHealed {
                    object: format!("nftables rules of fault {fault}"),
                    reason: format!("chains {left:?} are still in table inet {}", nft::TABLE),
                })
            }
        }
        Installed::RootQdisc { interface, handle } => {
            let index = match link::get(interface) {
                Ok(state) => state.index,
                Err(Error::NotFound(_)) => return Ok(()),
                Err(e) => return Err(e),
            };
            match qdisc::root_qdisc(index, interface)? {
                Some((kind, h)) if h == *handle => Err(Error::NotHealed {
                    object: format!("root qdisc of {interface}"),
                    reason: format!("our {kind} {:x}: is still the root qdisc", h >> 16),
                }),
                _ => Ok(()),
            }
        }
        Installed::Link {
            interface,
            was_up,
            mtu,
        } => match link::get(interface) {
            Err(Error::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
            Ok(now) if now.up == *was_up && now.mtu == *mtu => Ok(()),
            Ok(now) => Err(Error::NotHealed {
                object: format!("link {interface}"),
                reason: format!(
                    "it is {} with MTU {}; it was {} with MTU {mtu}",
                    if now.up { "up" } else { "down" },
                    now.mtu,
                    if *was_up { "up" } else { "down" },
                ),
            }),
        },
        Installed::CgroupFrozen { path, v2, mount } => {
            cgroup::verify_thawed(Path::new(path), *v2, mount.as_deref().map(Path::new))
        }
        Installed::StoppedProcesses { pids } => process::verify_not_stopped(pids),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_level_freeze_targets_are_refused_unresolved() {
        let dir = tempfile::tempdir().unwrap();
        let mut inj = Injector::new(dir.path().join("state.json"), &[]).unwrap();
        for target in [FreezeTarget::Proc { id: 1 }, FreezeTarget::AllProcs] {
            let err = inj.inject("f", &FaultSpec::Freeze(target)).unwrap_err();
            assert!(
                matches!(&err, Error::Invalid { field, .. } if *field == "freeze target"),
                "{err}"
            );
        }
        assert!(inj.active().is_empty());
        assert!(!inj.heal("f").unwrap());
    }
}
