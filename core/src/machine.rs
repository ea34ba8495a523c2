//! Machine faults ([`MachineFault`]) as a cluster offers them: injected on one node's machine from
//! outside it, with a TTL, healed by [`MachineFaultHandle::heal`], by the TTL, or by the cluster's
//! cleanup — whichever comes first.
//!
//! The bookkeeping (ids, one active machine fault per node, TTL expiry, listing, healing all) is
//! written once here, in [`MachineFaultTable`]; a cluster only says how to apply and undo a fault
//! on one node ([`MachineFaultHost`]). So every backend's machine faults behave alike, and the
//! scenario engine and `chaos fault` use them through [`crate::Cluster`] without knowing the
//! backend.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
pub use chaos_proto::MachineFault;
use tokio::task::JoinHandle;

use crate::{Error, Result};

/// What a cluster does to apply and undo a machine fault on one node; the rest is
/// [`MachineFaultTable`]'s.
#[async_trait]
pub trait MachineFaultHost: Send + Sync + 'static {
    /// The cluster's table of active machine faults.
    fn machine_fault_table(&self) -> &MachineFaultTable;

    /// Applies `fault` on `node`'s machine, which will be healed after `ttl`.
    async fn apply_machine_fault(&self, node: &str, fault: MachineFault, ttl: Duration) -> Result<()>;

    /// Undoes `fault` on `node`'s machine and returns once the node's agent answers again.
    async fn undo_machine_fault(&self, node: &str, fault: MachineFault) -> Result<()>;
}

/// One active machine fault, as listed by [`crate::Cluster::list_machine_faults`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineFaultInfo {
    /// The fault's id, unique in its cluster.
    pub id: u64,
    /// The node whose machine it acts on.
    pub node: String,
    /// What it does.
    pub fault: MachineFault,
    /// When its TTL passes and it heals by itself.
    pub expires: SystemTime,
}

struct Active {
    info: MachineFaultInfo,
    expiry: JoinHandle<()>,
}

/// The active machine faults of one cluster. See the [module documentation](self).
#[derive(Default)]
pub struct MachineFaultTable {
    next: AtomicU64,
    active: Mutex<HashMap<u64, Active>>,
}

impl MachineFaultTable {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Active>> {
        self.active.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The active faults, by id.
    pub fn list(&self) -> Vec<MachineFaultInfo> {
        let mut faults: Vec<_> = self.lock().values().map(|a| a.info.clone()).collect();
        faults.sort_by_key(|f| f.id);
        faults
    }

    /// Whether `node` has an active machine fault of kind `fault`.
    pub fn is_active(&self, node: &str, fault: MachineFault) -> bool {
        self.lock()
            .values()
            .any(|a| a.info.node == node && a.info.fault == fault)
    }

    /// Forgets every active fault without undoing it (cleanup removes the machines anyway) and
    /// returns them, expiry timers stopped.
    pub fn drain(&self) -> Vec<MachineFaultInfo> {
        self.lock()
            .drain()
            .map(|(_, a)| {
                a.expiry.abort();
                a.info
            })
            .collect()
    }
}

impl Drop for MachineFaultTable {
    fn drop(&mut self) {
        for (_, a) in self.lock().drain() {
            a.expiry.abort();
        }
    }
}

/// An active machine fault. It heals when its TTL passes, when [`heal`](Self::heal) is called,
/// or when the cluster is cleaned up — whichever comes first. Dropping the handle does not heal
/// it.
pub struct MachineFaultHandle {
    host: Weak<dyn MachineFaultHost>,
    info: MachineFaultInfo,
}

impl std::fmt::Debug for MachineFaultHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MachineFaultHandle")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl MachineFaultHandle {
    /// The fault's id, unique in its cluster.
    pub fn id(&self) -> u64 {
        self.info.id
    }

    /// The node whose machine it acts on.
    pub fn node(&self) -> &str {
        &self.info.node
    }

    /// What it does.
    pub fn fault(&self) -> MachineFault {
        self.info.fault
    }

    /// When its TTL passes and it heals by itself.
    pub fn expires(&self) -> SystemTime {
        self.info.expires
    }

    /// Heals the fault now and waits until the node's agent answers again. Returns false when it
    /// had already healed (TTL, cleanup, another heal). Idempotent.
    pub async fn heal(&self) -> Result<bool> {
        match self.host.upgrade() {
            Some(host) => heal(&*host, self.info.id, false).await,
            None => Ok(false),
        }
    }
}

/// The longest TTL a machine fault may have: an agent told to expect no heartbeat accepts at
/// most this grace.
pub fn max_ttl() -> Duration {
    Duration::from_millis(chaos_proto::MAX_HEARTBEAT_GRACE_MS)
}

/// Injects `fault` on `node` through `host` for `ttl`: refused when the TTL is out of range or
/// the node already has a machine fault; healed by itself when the TTL passes.
pub async fn inject<H: MachineFaultHost>(
    host: &Arc<H>,
    node: &str,
    fault: MachineFault,
    ttl: Duration,
) -> Result<MachineFaultHandle> {
    let what = || format!("{fault} fault on {node}");
    if ttl.is_zero() || ttl > max_ttl() {
        return Err(Error::invalid(
            what(),
            format!(
                "ttl {ttl:?} out of range: give more than zero and at most {} s",
                max_ttl().as_secs()
            ),
        ));
    }
    let table = host.machine_fault_table();
    if let Some(a) = table.lock().values().find(|a| a.info.node == node) {
        return Err(Error::invalid(
            what(),
            format!(
                "the node already has machine fault #{} ({}); heal it first",
                a.info.id, a.info.fault
            ),
        ));
    }
    host.apply_machine_fault(node, fault, ttl).await?;
    let id = table.next.fetch_add(1, Ordering::Relaxed) + 1;
    let weak: Weak<dyn MachineFaultHost> = {
        let weak: Weak<H> = Arc::downgrade(host);
        weak
    };
    let expiring = weak.clone();
    let expiry = tokio::spawn(async move {
        tokio::time::sleep(ttl).await;
        if let Some(host) = expiring.upgrade()
            && let Err(e) = heal(&*host, id, true).await
        {
            tracing::warn!("machine fault #{id} expired but did not heal: {e}");
        }
    });
    let info = MachineFaultInfo {
        id,
        node: node.to_string(),
        fault,
        expires: SystemTime::now() + ttl,
    };
    table.lock().insert(
        id,
        Active {
            info: info.clone(),
            expiry,
        },
    );
    tracing::info!(node, %fault, ?ttl, id, "machine fault injected");
    Ok(MachineFaultHandle { host: weak, info })
}

/// Heals machine fault `id`; false when it was not active. `from_expiry`: called by the fault's
/// own expiry task, which must not abort itself (it would stop at its next await).
async fn heal(host: &dyn MachineFaultHost, id: u64, from_expiry: bool) -> Result<bool> {
    let Some(active) = host.machine_fault_table().lock().remove(&id) else {
        return Ok(false);
    };
    if !from_expiry {
        active.expiry.abort();
    }
    host.undo_machine_fault(&active.info.node, active.info.fault)
        .await?;
    tracing::info!(node = %active.info.node, fault = %active.info.fault, id, "machine fault healed");
    Ok(true)
}

/// Heals every active machine fault of `host`; returns what was healed. Every fault is tried;
/// those that did not heal are logged, and the first such error returned.
pub async fn heal_all(host: &dyn MachineFaultHost) -> Result<Vec<MachineFaultInfo>> {
    let faults: Vec<MachineFaultInfo> = {
        let mut table = host.machine_fault_table().lock();
        table
            .drain()
            .map(|(_, a)| {
                a.expiry.abort();
                a.info
            })
            .collect()
    };
    let results =
        futures_util::future::join_all(faults.iter().map(|f| host.undo_machine_fault(&f.node, f.fault)))
            .await;
    let mut first_error = None;
    for (fault, result) in faults.iter().zip(results) {
        if let Err(e) = result {
            tracing::warn!(node = %fault.node, fault = %fault.fault, id = fault.id, "machine fault did not heal: {e}");
            first_error.get_or_insert(e);
        }
    }
    match first_error {
        None => Ok(faults),
        Some(e) => Err(e),
    }
}
