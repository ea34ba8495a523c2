//! Faults served over the API (`/v1/faults`, `/v1/probe`, `/v1/signal`): the agent's side of
//! [`chaos_faults`].
//!
//! One [`Injector`] per agent, behind a mutex and only ever used on blocking threads (its
//! netlink and cgroup calls are quick but synchronous, and a freeze waits for the kernel). Its
//! state file lives in `--state-dir`, locked for the agent's lifetime, so an agent restarted
//! after SIGKILL heals what the killed one installed before it serves. Every fault has a TTL:
//! a timer task heals it at expiry. The agent's own TCP port is exempt from every network
//! fault, and link faults that would cut the control path are refused, so the runner can always
//! reach the agent to heal.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path as UrlPath, State};
use chaos_faults::{Capabilities, Capability, Injector, IptablesBackend, process};
use chaos_proto::fault::{
    FaultInfo, FaultKind, FaultRequest, FaultSpec, Feature, FreezeTarget, HealReply, KindSupport, Mechanism,
    ProbeReport,
};
use chaos_proto::{ApiError, ErrorKind, NodeSignalRequest, SignalTarget};
use nix::fcntl::{Flock, FlockArg};
use tokio::runtime::Handle;
use tokio::task::AbortHandle;

use crate::AgentError;
use crate::api::{Agent, Failure, json};
use crate::procs::ProcTable;

/// Longest TTL a fault may have.
pub(crate) const MAX_TTL_MS: u64 = 24 * 60 * 60 * 1000;
/// The injector's state file, inside the state directory.
pub(crate) const STATE_FILE: &str = "faults.json";
/// A TTL heal that failed is retried this often, this many times.
const HEAL_RETRY: Duration = Duration::from_secs(1);
const HEAL_ATTEMPTS: u32 = 30;
/// Longest fault id (the injector's limit).
const MAX_ID_LEN: usize = 64;
/// `/proc/<pid>/comm` holds at most this many bytes.
const COMM_LEN: usize = 15;

fn err(kind: ErrorKind, message: impl Into<String>) -> ApiError {
    ApiError::new(kind, message)
}

/// Maps an error of the mechanisms library to an API error of the matching kind.
pub(crate) fn fault_error(e: chaos_faults::Error) -> ApiError {
    use chaos_faults::Error as E;
    let kind = match &e {
        E::Unsupported { .. } => ErrorKind::Unsupported,
        E::Invalid { .. } => ErrorKind::InvalidRequest,
        E::AlreadyActive { .. } | E::Conflict { .. } => ErrorKind::Conflict,
        E::NotFound(_) => ErrorKind::NotFound,
        E::Signal { source, .. } => match source {
            nix::errno::Errno::ESRCH => ErrorKind::NotFound,
            nix::errno::Errno::EPERM => ErrorKind::PermissionDenied,
            nix::errno::Errno::EINVAL => ErrorKind::InvalidRequest,
            _ => ErrorKind::Internal,
        },
        _ => ErrorKind::Internal,
    };
    err(kind, e.to_string())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A fault the agent installed: its reply, the injector ids it is made of (one, or one per
/// process for `all_procs`), and its TTL timer.
struct Active {
    info: FaultInfo,
    parts: Vec<String>,
    /// Tells this installation apart from a later one reusing the id, so a stale timer never
    /// heals the newer fault.
    serial: u64,
    timer: AbortHandle,
}

struct Inner {
    injector: Injector,
    active: BTreeMap<String, Active>,
    /// Set on shutdown: nothing may be installed after the final heal.
    closed: bool,
    next_id: u64,
    state_dir: StateDir,
}

/// The state directory, created and locked (flock on the directory itself) only once there is
/// something to record, so an agent that never injects leaves nothing in its root directory.
/// The lock keeps a second agent from healing (or recording into) this agent's state.
struct StateDir {
    dir: PathBuf,
    lock: Option<Flock<File>>,
    /// We created it, so we remove it once nothing is recorded in it.
    created: bool,
}

impl StateDir {
    /// Locks `dir` if it exists.
    fn open(dir: &Path) -> Result<Self, String> {
        let mut state = Self {
            dir: dir.to_path_buf(),
            lock: None,
            created: false,
        };
        if dir.exists() {
            state.lock()?;
        }
        Ok(state)
    }

    fn lock(&mut self) -> Result<(), String> {
        let file = File::open(&self.dir).map_err(|e| format!("cannot open it: {e}"))?;
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
            format!("another chaos-agent uses it ({e}): give each agent its own --state-dir")
        })?;
        self.lock = Some(lock);
        Ok(())
    }

    /// Creates and locks the directory before the first fault is recorded.
    fn ensure(&mut self) -> Result<(), ApiError> {
        if self.lock.is_some() {
            return Ok(());
        }
        let dir = self.dir.clone();
        let fail = move |m: String| {
            err(
                ErrorKind::Internal,
                format!("state directory {}: {m}", dir.display()),
            )
        };
        if !self.dir.exists() {
            std::fs::create_dir_all(&self.dir).map_err(|e| fail(format!("cannot create it: {e}")))?;
            self.created = true;
        }
        self.lock().map_err(fail)
    }

    /// After everything was healed on shutdown: removes the (empty) state file, and the
    /// directory if we created it.
    fn tidy(&mut self) {
        let file = self.dir.join(STATE_FILE);
        if let Err(e) = std::fs::remove_file(&file)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::debug!("removing {}: {e}", file.display());
        }
        if self.created {
            let _ = std::fs::remove_dir(&self.dir);
        }
    }
}

fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    // Every update of `Inner` is a single insert/remove around injector calls that keep the
    // ledger consistent themselves, so a poisoned lock is still usable.
    inner.lock().unwrap_or_else(|p| p.into_inner())
}

/// The agent's faults: the injector, the active faults and their timers.
pub(crate) struct Faults {
    inner: Arc<Mutex<Inner>>,
    serial: AtomicU64,
    /// The agent's TCP port, exempt from every network fault.
    listen: SocketAddr,
    /// Local addresses runner connections arrived on (plus the listen address when specific):
    /// the interfaces carrying them must keep working.
    control_ips: Mutex<BTreeSet<IpAddr>>,
    /// Whether started processes get cgroups (then `proc` freezes use the cgroup freezer).
    has_cgroup: bool,
    state_file: PathBuf,
}

/// Runs blocking work on the blocking pool; a panic there becomes an internal error.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(err(ErrorKind::Internal, format!("fault worker failed: {e}"))))
}

impl Faults {
    /// Locks `state_dir` (when it exists), opens the injector's state file in it and heals
    /// whatever a previous agent left there (logging each object). `listen` is the bound
    /// control address. Blocking.
    pub(crate) fn open(state_dir: &Path, listen: SocketAddr, has_cgroup: bool) -> Result<Self, AgentError> {
        let state = StateDir::open(state_dir).map_err(|message| AgentError::BadDir {
            what: "--state-dir",
            path: state_dir.to_path_buf(),
            message,
        })?;
        let state_file = state_dir.join(STATE_FILE);
        let injector = Injector::new(&state_file, &[listen.port()]).map_err(|e| AgentError::Faults {
            path: state_file.clone(),
            message: format!("healing the faults a previous agent left: {e}"),
        })?;
        let report = injector.startup_heal();
        for entry in &report.healed {
            tracing::warn!(fault = %entry.fault, object = ?entry.installed, "healed a fault left by a previous agent");
        }
        for entry in &report.already_gone {
            tracing::info!(fault = %entry.fault, object = ?entry.installed, "a previous agent's fault was already gone");
        }
        let mut control_ips = BTreeSet::new();
        if !listen.ip().is_unspecified() {
            control_ips.insert(listen.ip().to_canonical());
        }
        Ok(Self {
            inner: Arc::new(Mutex::new(Inner {
                injector,
                active: BTreeMap::new(),
                closed: false,
                next_id: 1,
                state_dir: state,
            })),
            serial: AtomicU64::new(1),
            listen,
            control_ips: Mutex::new(control_ips),
            has_cgroup,
            state_file,
        })
    }

    /// Records the local address a runner connection arrived on.
    pub(crate) fn note_control_addr(&self, local: SocketAddr) {
        let ip = local.ip().to_canonical();
        let mut ips = self.control_ips.lock().unwrap_or_else(|p| p.into_inner());
        ips.insert(ip);
    }

    /// The interfaces carrying a control address (names, sorted), with the address.
    fn control_interfaces(&self) -> Vec<(String, IpAddr)> {
        let ips = self.control_ips.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut out: Vec<(String, IpAddr)> = crate::api::interface_addresses()
            .into_iter()
            .filter(|(_, ip)| ips.contains(ip))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Refuses a link change that could cut the runner↔agent control path.
    fn check_link(&self, spec: &FaultSpec) -> Result<(), ApiError> {
        let FaultSpec::Link(change) = spec else {
            return Ok(());
        };
        let harmful = change.up == Some(false) || change.mtu.is_some();
        if !harmful {
            return Ok(());
        }
        if let Some((_, ip)) = self
            .control_interfaces()
            .into_iter()
            .find(|(name, _)| *name == change.interface)
        {
            let what = if change.up == Some(false) {
                "take it down"
            } else {
                "change its MTU"
            };
            return Err(err(
                ErrorKind::InvalidRequest,
                format!(
                    "link fault on {}: refusing to {what}, it carries the agent's control address {ip} \
                     (port {}) and a fault must never cut runner↔agent traffic; use a partition fault \
                     (the control port is exempt) or a link fault on another interface",
                    change.interface,
                    self.listen.port()
                ),
            ));
        }
        Ok(())
    }

    /// Resolves agent-level freeze targets into what the injector understands: one
    /// `(suffix, spec)` per injector fault.
    fn resolve(
        &self,
        spec: &FaultSpec,
        procs: &ProcTable,
    ) -> Result<Vec<(Option<String>, FaultSpec)>, ApiError> {
        let freeze_of = |id: u64| -> Result<FaultSpec, ApiError> {
            let target = procs.freeze_target(id)?;
            Ok(FaultSpec::Freeze(match target.cgroup {
                Some(dir) if dir.join("cgroup.freeze").exists() => FreezeTarget::Cgroup {
                    path: dir.to_string_lossy().into_owned(),
                },
                _ => FreezeTarget::ProcessTree {
                    pid: target.pid as i32,
                },
            }))
        };
        match spec {
            FaultSpec::Freeze(FreezeTarget::Proc { id }) => Ok(vec![(None, freeze_of(*id)?)]),
            FaultSpec::Freeze(FreezeTarget::AllProcs) => {
                let ids = procs.running_ids();
                if ids.is_empty() {
                    return Err(err(
                        ErrorKind::Conflict,
                        "freeze all_procs: the agent has no running process to freeze",
                    ));
                }
                ids.into_iter()
                    .map(|id| Ok((Some(format!("p{id}")), freeze_of(id)?)))
                    .collect()
            }
            other => Ok(vec![(None, other.clone())]),
        }
    }

    /// Installs `req`, starts its TTL timer, and returns what was installed.
    pub(crate) async fn inject(&self, req: FaultRequest, procs: &ProcTable) -> Result<FaultInfo, ApiError> {
        if req.ttl_ms == 0 {
            return Err(err(
                ErrorKind::InvalidRequest,
                "ttl_ms must be greater than zero: every fault heals itself when its TTL expires",
            ));
        }
        if req.ttl_ms > MAX_TTL_MS {
            return Err(err(
                ErrorKind::InvalidRequest,
                format!(
                    "ttl_ms {} exceeds the limit of 24 h ({MAX_TTL_MS} ms); re-inject to extend a fault",
                    req.ttl_ms
                ),
            ));
        }
        if let Some(id) = &req.id {
            validate_id(id)?;
        }
        self.check_link(&req.spec)?;
        let parts = self.resolve(&req.spec, procs)?;
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        let inner = self.inner.clone();
        let runtime = Handle::current();
        blocking(move || {
            let mut guard = lock(&inner);
            let state = &mut *guard;
            if state.closed {
                return Err(err(ErrorKind::Conflict, "the agent is shutting down"));
            }
            let id = match req.id {
                Some(id) if state.active.contains_key(&id) => {
                    return Err(err(
                        ErrorKind::Conflict,
                        format!("fault {id:?} is already active; heal it first or use another id"),
                    ));
                }
                Some(id) => id,
                None => loop {
                    let id = format!("f{}", state.next_id);
                    state.next_id += 1;
                    if !state.active.contains_key(&id) {
                        break id;
                    }
                },
            };
            let parts: Vec<(String, FaultSpec)> = parts
                .into_iter()
                .map(|(suffix, spec)| {
                    let part = match suffix {
                        Some(s) => format!("{id}.{s}"),
                        None => id.clone(),
                    };
                    if part.len() > MAX_ID_LEN {
                        return Err(err(
                            ErrorKind::InvalidRequest,
                            format!(
                                "id {id:?} is too long for an all_procs freeze: each process's part is \
                                 named {part:?}, which exceeds {MAX_ID_LEN} characters"
                            ),
                        ));
                    }
                    Ok((part, spec))
                })
                .collect::<Result<_, _>>()?;
            for (_, spec) in &parts {
                refuse_freezing_self(spec)?;
            }
            state.state_dir.ensure()?;
            let injected_ms = now_ms();
            let mut installed: Vec<String> = Vec::new();
            let mut mechanism: Option<Mechanism> = None;
            for (part, spec) in &parts {
                match state.injector.inject(part, spec) {
                    Ok(m) => {
                        mechanism.get_or_insert(m);
                        installed.push(part.clone());
                    }
                    Err(e) => {
                        for done in installed.iter().rev() {
                            if let Err(undo) = state.injector.heal(done) {
                                tracing::error!(fault = %id, part = %done, "undoing a partial fault: {undo}");
                            }
                        }
                        return Err(fault_error(e));
                    }
                }
            }
            let Some(mechanism) = mechanism else {
                return Err(err(ErrorKind::Internal, "fault resolved to nothing to install"));
            };
            let info = FaultInfo {
                id: id.clone(),
                spec: req.spec,
                mechanism,
                injected_ms,
                expires_ms: injected_ms.saturating_add(req.ttl_ms),
            };
            let timer = runtime
                .spawn(expire(
                    inner.clone(),
                    id.clone(),
                    serial,
                    Duration::from_millis(req.ttl_ms),
                ))
                .abort_handle();
            tracing::info!(fault = %id, kind = %info.spec.kind(), mechanism = ?info.mechanism, ttl_ms = req.ttl_ms, "fault active");
            state.active.insert(
                id,
                Active {
                    info: info.clone(),
                    parts: installed,
                    serial,
                    timer,
                },
            );
            Ok(info)
        })
        .await
    }

    /// The active faults, by id.
    pub(crate) async fn list(&self) -> Result<Vec<FaultInfo>, ApiError> {
        let inner = self.inner.clone();
        blocking(move || Ok(lock(&inner).active.values().map(|a| a.info.clone()).collect())).await
    }

    /// Heals fault `id`; false when it was not active.
    pub(crate) async fn heal(&self, id: String) -> Result<bool, ApiError> {
        let inner = self.inner.clone();
        blocking(move || heal_locked(&mut lock(&inner), &id, None)).await
    }

    /// Heals every active fault; returns the ids healed. With `close`, nothing can be injected
    /// afterwards (shutdown). Tries every fault; reports failures together.
    pub(crate) async fn heal_all(&self, close: bool) -> Result<Vec<String>, ApiError> {
        let inner = self.inner.clone();
        blocking(move || {
            let mut state = lock(&inner);
            state.closed |= close;
            let ids: Vec<String> = state.active.keys().cloned().collect();
            let mut healed = Vec::new();
            let mut failed = Vec::new();
            for id in ids {
                match heal_locked(&mut state, &id, None) {
                    Ok(true) => healed.push(id),
                    Ok(false) => {}
                    Err(e) => failed.push(format!("{id}: {}", e.message)),
                }
            }
            // Anything the ledger still holds (e.g. the remains of a failed heal).
            if let Err(e) = state.injector.heal_all() {
                failed.push(format!("ledger: {e}"));
            }
            if failed.is_empty() {
                if close {
                    state.state_dir.tidy();
                }
                Ok(healed)
            } else {
                Err(err(
                    ErrorKind::Internal,
                    format!("healing failed for {}; healed: {healed:?}", failed.join("; ")),
                ))
            }
        })
        .await
    }

    /// Heals everything and refuses new faults; logs instead of failing (the agent is exiting).
    pub(crate) async fn shutdown(&self, why: &str) {
        match self.heal_all(true).await {
            Ok(healed) if healed.is_empty() => {}
            Ok(healed) => tracing::info!(?healed, "{why}: healed every fault"),
            Err(e) => tracing::error!(
                "{why}: {}; what is left is recorded in {} and healed by the next agent using it",
                e.message,
                self.state_file.display()
            ),
        }
    }

    /// What this node supports.
    pub(crate) async fn probe(&self) -> Result<ProbeReport, ApiError> {
        let has_cgroup = self.has_cgroup;
        blocking(move || Ok(probe_report(&chaos_faults::probe(), has_cgroup))).await
    }
}

/// Heals `id` (only if its serial is `serial`, when given). Keeps it listed when healing
/// fails, so it can be retried.
fn heal_locked(state: &mut Inner, id: &str, serial: Option<u64>) -> Result<bool, ApiError> {
    let Some(active) = state.active.remove(id) else {
        return Ok(false);
    };
    if serial.is_some_and(|s| s != active.serial) {
        state.active.insert(id.to_string(), active);
        return Ok(false);
    }
    let mut first_err = None;
    for part in active.parts.iter().rev() {
        if let Err(e) = state.injector.heal(part) {
            tracing::error!(fault = %id, %part, "heal failed: {e}");
            first_err.get_or_insert(e);
        }
    }
    match first_err {
        None => {
            // The timer itself calls with a serial: aborting it would cancel its own log line.
            if serial.is_none() {
                active.timer.abort();
            }
            Ok(true)
        }
        Some(e) => {
            state.active.insert(id.to_string(), active);
            Err(fault_error(e))
        }
    }
}

/// The TTL timer of one fault installation.
async fn expire(inner: Arc<Mutex<Inner>>, id: String, serial: u64, ttl: Duration) {
    tokio::time::sleep(ttl).await;
    for attempt in 1..=HEAL_ATTEMPTS {
        let (inner2, id2) = (inner.clone(), id.clone());
        match blocking(move || heal_locked(&mut lock(&inner2), &id2, Some(serial))).await {
            Ok(true) => {
                tracing::info!(fault = %id, "TTL expired: healed");
                return;
            }
            Ok(false) => return,
            Err(e) => tracing::error!(fault = %id, attempt, "TTL expired but healing failed: {}", e.message),
        }
        tokio::time::sleep(HEAL_RETRY).await;
    }
}

/// Fault ids: what the injector accepts, checked early for a clear message.
fn validate_id(id: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(err(
            ErrorKind::InvalidRequest,
            format!("fault id {id:?}: use 1-64 characters from [A-Za-z0-9_.-]"),
        ))
    }
}

/// A freeze that would include the agent would leave nobody to heal it (nor to answer the
/// runner): refuse it.
fn refuse_freezing_self(spec: &FaultSpec) -> Result<(), ApiError> {
    let me = std::process::id();
    match spec {
        FaultSpec::Freeze(FreezeTarget::ProcessTree { pid }) => {
            let tree = process::tree(*pid).map_err(fault_error)?;
            if tree.iter().any(|(p, _)| *p as u32 == me) {
                return Err(err(
                    ErrorKind::InvalidRequest,
                    format!(
                        "freeze process_tree {pid}: the tree includes the agent itself (pid {me}), which \
                         could then neither answer nor heal; freeze a subtree instead"
                    ),
                ));
            }
        }
        FaultSpec::Freeze(FreezeTarget::Cgroup { path }) => {
            if let Some(holder) = cgroup_holding(Path::new(path), me, 32) {
                return Err(err(
                    ErrorKind::InvalidRequest,
                    format!(
                        "freeze cgroup {path}: it contains the agent itself (pid {me} in {}), which \
                         could then neither answer nor heal; freeze a child cgroup instead",
                        holder.display()
                    ),
                ));
            }
        }
        _ => {}
    }
    Ok(())
}

/// The cgroup under `dir` (itself or a descendant) whose `cgroup.procs` lists `pid`.
fn cgroup_holding(dir: &Path, pid: u32, depth: u32) -> Option<PathBuf> {
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    if procs.lines().any(|l| l.trim().parse::<u32>() == Ok(pid)) {
        return Some(dir.to_path_buf());
    }
    if depth == 0 {
        return None;
    }
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .find_map(|e| cgroup_holding(&e.path(), pid, depth - 1))
}

/// Converts the probe's findings into the wire report.
fn probe_report(c: &Capabilities, has_cgroup: bool) -> ProbeReport {
    let feature = |cap: &Capability| Feature {
        available: cap.available,
        detail: cap.detail.clone(),
    };
    let mut features = BTreeMap::new();
    for (name, cap) in [
        ("nftables_netlink", &c.nftables_netlink),
        ("nft_numgen", &c.nft_numgen),
        ("nft_queue", &c.nft_queue),
        ("nfqueue", &c.nfqueue),
        ("netem", &c.netem),
        ("tbf", &c.tbf),
        ("cgroup_v2_freeze", &c.cgroup_v2_freeze),
        ("cgroup_v1_freezer", &c.cgroup_v1_freezer),
        ("cgroup_kill", &c.cgroup_kill),
    ] {
        features.insert(name.to_string(), feature(cap));
    }
    features.insert(
        "agent_cgroup".into(),
        Feature {
            available: has_cgroup,
            detail: if has_cgroup {
                "started processes get their own cgroup: proc freezes use the cgroup freezer".into()
            } else {
                "the agent runs without --cgroup: proc freezes stop process trees with SIGSTOP".into()
            },
        },
    );
    features.insert(
        "iptables".into(),
        Feature {
            available: c.iptables != IptablesBackend::Absent,
            detail: format!(
                "{:?} backend (informational: the agent never runs iptables)",
                c.iptables
            ),
        },
    );
    let need = |names: &[(&str, &Capability)], mechanism: Mechanism| {
        let missing: Vec<String> = names
            .iter()
            .filter(|(_, cap)| !cap.available)
            .map(|(name, cap)| format!("{name}: {}", cap.detail))
            .collect();
        if missing.is_empty() {
            (Some(mechanism), None)
        } else {
            (None, Some(missing.join("; ")))
        }
    };
    let nft = ("nftables_netlink", &c.nftables_netlink);
    let freeze = if has_cgroup && c.cgroup_v2_freeze.available {
        Mechanism::CgroupV2Freeze
    } else {
        Mechanism::SigStopTree
    };
    let kinds = FaultKind::ALL
        .into_iter()
        .map(|kind| {
            let (mechanism, missing) = match kind {
                FaultKind::Partition => need(&[nft], Mechanism::NftablesNetlink),
                FaultKind::Loss => need(&[nft, ("nft_numgen", &c.nft_numgen)], Mechanism::NftablesNetlink),
                FaultKind::Packet => need(
                    &[nft, ("nfqueue", &c.nfqueue)],
                    Mechanism::NfqueueUserspace {
                        queue: chaos_faults::FIRST_QUEUE,
                    },
                ),
                // The agent always exempts its control port, hence htb in front of tbf.
                FaultKind::Bandwidth => need(&[("tbf", &c.tbf)], Mechanism::HtbTbfNetlink),
                FaultKind::Link => (Some(Mechanism::RtnetlinkLink), None),
                FaultKind::Freeze => (Some(freeze.clone()), None),
            };
            KindSupport {
                kind,
                mechanism,
                missing,
            }
        })
        .collect();
    ProbeReport {
        kinds,
        features,
        external_binaries: c.external_binaries.clone(),
    }
}

/// `POST /v1/faults`.
pub(crate) async fn inject(
    State(agent): State<Arc<Agent>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<FaultInfo>, Failure> {
    let req: FaultRequest = json("fault request", body)?;
    Ok(Json(agent.faults.inject(req, &agent.procs).await?))
}

/// `GET /v1/faults`.
pub(crate) async fn list(State(agent): State<Arc<Agent>>) -> Result<Json<Vec<FaultInfo>>, Failure> {
    Ok(Json(agent.faults.list().await?))
}

/// `DELETE /v1/faults/{id}`.
pub(crate) async fn heal(
    State(agent): State<Arc<Agent>>,
    id: Result<UrlPath<String>, PathRejection>,
) -> Result<Json<HealReply>, Failure> {
    let UrlPath(id) = id?;
    let healed = agent.faults.heal(id).await?;
    Ok(Json(HealReply { healed }))
}

/// `DELETE /v1/faults`.
pub(crate) async fn heal_all(State(agent): State<Arc<Agent>>) -> Result<Json<Vec<String>>, Failure> {
    Ok(Json(agent.faults.heal_all(false).await?))
}

/// `GET /v1/probe`.
pub(crate) async fn probe(State(agent): State<Arc<Agent>>) -> Result<Json<ProbeReport>, Failure> {
    Ok(Json(agent.faults.probe().await?))
}

/// Live members of process group `pgid`, from `/proc/<pid>/stat`.
fn group_members(pgid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Fields after the (parenthesized, possibly spaced) name: state, ppid, pgrp, …
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.get(2).and_then(|p| p.parse::<u32>().ok()) == Some(pgid) && fields.first() != Some(&"Z") {
            out.push(pid);
        }
    }
    out.sort_unstable();
    out
}

/// Signals any process on the node by pid, process group or command name; never the agent.
fn signal_node(req: NodeSignalRequest) -> Result<Vec<u32>, ApiError> {
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
            let members = group_members(pgid);
            process::signal_group(pgid_i32, sig.0).map_err(fault_error)?;
            tracing::info!(pgid, ?members, "sent {sig} to a process group");
            Ok(members)
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
            let pids: Vec<i32> = process::pids_by_name(&name)
                .map_err(fault_error)?
                .into_iter()
                .filter(|&p| p as u32 != me)
                .collect();
            let mut signalled = Vec::new();
            for pid in pids {
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
                return Err(err(
                    ErrorKind::NotFound,
                    format!("no process named {name:?} on this node (matched against /proc/<pid>/comm)"),
                ));
            }
            tracing::info!(%name, pids = ?signalled, "sent {sig} by name");
            Ok(signalled)
        }
    }
}

/// `POST /v1/signal`.
pub(crate) async fn signal(
    State(_agent): State<Arc<Agent>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Vec<u32>>, Failure> {
    let req: NodeSignalRequest = json("signal request", body)?;
    Ok(Json(blocking(move || signal_node(req)).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap(available: bool, detail: &str) -> Capability {
        Capability {
            available,
            detail: detail.into(),
        }
    }

    #[test]
    fn probe_report_names_the_missing_feature_per_kind() {
        let c = Capabilities {
            nftables_netlink: cap(true, "ok"),
            nft_numgen: cap(true, "ok"),
            nft_queue: cap(false, "CONFIG_NFT_QUEUE is not set"),
            nfqueue: cap(false, "CONFIG_NFT_COMPAT is not set"),
            netem: cap(false, "CONFIG_NET_SCH_NETEM is not set"),
            tbf: cap(true, "ok"),
            cgroup_v2_freeze: cap(true, "ok"),
            cgroup_v1_freezer: cap(false, "none"),
            cgroup_kill: cap(true, "ok"),
            iptables: IptablesBackend::Nft,
            external_binaries: vec![],
        };
        let r = probe_report(&c, true);
        assert!(r.supports(FaultKind::Partition));
        assert!(!r.supports(FaultKind::Packet));
        let packet = r.kind(FaultKind::Packet).unwrap();
        assert!(
            packet
                .missing
                .as_deref()
                .unwrap()
                .contains("nfqueue: CONFIG_NFT_COMPAT"),
            "{packet:?}"
        );
        assert_eq!(
            r.kind(FaultKind::Freeze).unwrap().mechanism,
            Some(Mechanism::CgroupV2Freeze)
        );
        assert_eq!(
            probe_report(&c, false).kind(FaultKind::Freeze).unwrap().mechanism,
            Some(Mechanism::SigStopTree)
        );
        assert!(r.missing().any(|(name, _)| name == "netem"));
        assert!(r.has("agent_cgroup") && r.has("iptables"));
    }

    #[test]
    fn ids_are_checked_before_anything_is_installed() {
        assert!(validate_id("f-1.a_B").is_ok());
        for bad in ["", "a b", "a/b", &"x".repeat(65)] {
            let e = validate_id(bad).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidRequest, "{bad:?}");
        }
    }

    #[test]
    fn the_agent_never_freezes_or_signals_itself() {
        let me = std::process::id();
        let spec = FaultSpec::Freeze(FreezeTarget::ProcessTree { pid: me as i32 });
        let e = refuse_freezing_self(&spec).unwrap_err();
        assert!(e.message.contains("agent itself"), "{e}");
        let e = signal_node(NodeSignalRequest {
            signal: chaos_proto::Signal::STOP,
            target: SignalTarget::Pid(me),
        })
        .unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidRequest);
        let e = signal_node(NodeSignalRequest {
            signal: chaos_proto::Signal::TERM,
            target: SignalTarget::Name("a-name-longer-than-15".into()),
        })
        .unwrap_err();
        assert!(e.message.contains("never match"), "{e}");
    }
}
