//! Faults served over the API (`/v1/faults`, `/v1/probe`, `/v1/signal`): the agent's side of
//! [`chaos_faults`].
//!
//! One [`Injector`] per agent, behind a mutex, used only on the fault worker's threads
//! ([`worker`]): fault work never runs on tokio's shared blocking pool, so no file operation,
//! however stuck, can delay a TTL expiry, a heal on heartbeat loss or the heal before exit.
//! Its state file lives in `--state-dir`, locked for the agent's lifetime, so an agent
//! restarted after SIGKILL heals what the killed one installed before it serves.
//!
//! Every fault has a TTL and a driver task that heals it at expiry. **A heal is verified**
//! (see [`chaos_faults`]): a fault stays listed until the kernel confirms its effect is gone.
//! When a heal fails — from the TTL, `DELETE /v1/faults`, heartbeat loss — the fault stays
//! listed with the error ([`FaultInfo::heal_error`]) and its driver retries with backoff
//! (100 ms doubling to 5 s) for as long as the agent lives, logging every attempt. What a
//! previous agent left and could not be healed at start-up stays in the ledger and is retried
//! the same way, by its own driver; the agent starts regardless.
//!
//! Process faults reach only the node's processes (see `procs::node`). The agent's own TCP
//! port is exempt from every network fault, and link faults that would cut the control path
//! are refused, so the runner can always reach the agent to heal.

mod driver;
mod guard;
mod probe;
mod signal;
mod state;
mod worker;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path as UrlPath, State};
use chaos_faults::Injector;
use chaos_proto::fault::{
    FaultInfo, FaultRequest, FaultSpec, FreezeTarget, HealReply, Mechanism, ProbeReport,
};
use chaos_proto::{ApiError, ErrorKind, NodeSignalRequest};
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio::task::AbortHandle;

use self::state::StateDir;
use self::worker::{Lane, Worker};
use crate::AgentError;
use crate::api::{Agent, Failure, json};
use crate::procs::ProcTable;

/// Longest TTL a fault may have.
pub(crate) const MAX_TTL_MS: u64 = 24 * 60 * 60 * 1000;
/// The injector's state file, inside the state directory.
pub(crate) const STATE_FILE: &str = "faults.json";
/// First wait before a failed heal is retried; it doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(100);
/// Longest wait between two attempts to heal a fault.
const RETRY_MAX: Duration = Duration::from_secs(5);
/// How long the heal before exit keeps retrying failed heals; what is left then stays in the
/// state file for the next agent (and the process trees are killed anyway).
const SHUTDOWN_HEAL_BOUND: Duration = Duration::from_secs(2);
/// Longest fault id (the one rule: `chaos_proto::validate_fault_id`).
const MAX_ID_LEN: usize = chaos_proto::MAX_FAULT_ID_LEN;

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

/// The next wait of a backoff that doubles up to [`RETRY_MAX`].
fn next_backoff(current: Duration) -> Duration {
    (current * 2).min(RETRY_MAX)
}

/// A fault the agent installed: its reply (with the last heal error), the injector ids it is
/// made of (one, or one per process for `all_procs`), and its driver.
struct Active {
    info: FaultInfo,
    parts: Vec<String>,
    /// Tells this installation apart from a later one reusing the id, so a stale driver never
    /// heals the newer fault.
    serial: u64,
    /// The task that heals it at expiry and retries failed heals.
    driver: AbortHandle,
    /// Wakes the driver before expiry, to retry a heal that failed elsewhere.
    retry_now: Arc<Notify>,
}

struct Inner {
    injector: Injector,
    active: BTreeMap<String, Active>,
    /// Set on shutdown: nothing may be installed after the final heal.
    closed: bool,
    next_id: u64,
    state_dir: StateDir,
    /// The task retrying a previous agent's faults that are still not healed.
    leftovers_driver: Option<AbortHandle>,
}

fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    // Every update of `Inner` is a single insert/remove around injector calls that keep the
    // ledger consistent themselves, so a poisoned lock is still usable.
    inner.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the API handlers, the drivers and the worker's jobs share.
struct Shared {
    inner: Mutex<Inner>,
    /// What `GET /v1/faults` answers, refreshed after every change: listing never waits for
    /// a heal in progress.
    listing: Mutex<Vec<FaultInfo>>,
    worker: Worker,
    /// Where drivers run.
    runtime: Handle,
    serial: AtomicU64,
}

impl Shared {
    /// Runs `f` on the locked state, then refreshes the listing.
    fn with_state<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        let mut state = lock(&self.inner);
        let out = f(&mut state);
        let listing: Vec<FaultInfo> = state.active.values().map(|a| a.info.clone()).collect();
        *self.listing.lock().unwrap_or_else(|p| p.into_inner()) = listing;
        out
    }

    /// Starts the driver retrying a previous agent's faults, unless it runs already.
    fn ensure_leftovers_driver(self: &Arc<Self>, state: &mut Inner) {
        if state.leftovers_driver.is_none() && !state.injector.leftovers().is_empty() {
            let task = self.runtime.spawn(driver::retry_leftovers(Arc::downgrade(self)));
            state.leftovers_driver = Some(task.abort_handle());
        }
    }
}

/// The agent's faults: the injector, the active faults and their drivers, the worker.
pub(crate) struct Faults {
    shared: Arc<Shared>,
    /// The agent's TCP port, exempt from every network fault.
    listen: SocketAddr,
    /// Local addresses runner connections arrived on (plus the listen address when specific):
    /// the interfaces carrying them must keep working.
    control_ips: Mutex<BTreeSet<IpAddr>>,
    /// Whether started processes get cgroups (then `proc` freezes use the cgroup freezer).
    has_cgroup: bool,
    /// False with `--no-network-faults`: network kinds are refused (see [`refuse_network`]).
    network_faults: bool,
    state_file: PathBuf,
}

/// Why an agent started with `--no-network-faults` refuses network faults, as the probe and the
/// refusal say it.
pub(crate) const NO_NETWORK_FAULTS: &str = "this agent runs with --no-network-faults: its node shares \
     the host's network stack with other nodes (on the local backend every node is 127.0.0.1), so \
     no rule could confine a network fault to this node; use a backend whose nodes have networks \
     of their own (netns, docker)";

/// Refuses a network fault on an agent started with `--no-network-faults`.
fn refuse_network(spec: &FaultSpec, network_faults: bool) -> Result<(), ApiError> {
    let kind = spec.kind();
    if network_faults || !kind.is_network() {
        return Ok(());
    }
    Err(err(
        ErrorKind::Unsupported,
        format!("{kind} faults are refused: {NO_NETWORK_FAULTS}"),
    ))
}

impl Faults {
    /// Locks `state_dir` (when it exists), opens the injector's state file in it, heals
    /// whatever a previous agent left there (logging each object) and starts the fault worker.
    /// What cannot be healed (or verified) now stays recorded and is retried in the background.
    /// `listen` is the bound control address; `network_faults` false refuses network kinds.
    /// Blocking; call it inside the agent's runtime.
    pub(crate) fn open(
        state_dir: &Path,
        listen: SocketAddr,
        has_cgroup: bool,
        network_faults: bool,
    ) -> Result<Self, AgentError> {
        let state = StateDir::open(state_dir).map_err(|message| AgentError::BadDir {
            what: "--state-dir",
            path: state_dir.to_path_buf(),
            message,
        })?;
        let state_file = state_dir.join(STATE_FILE);
        let fail = |message: String| AgentError::Faults {
            path: state_file.clone(),
            message,
        };
        let injector = Injector::new(&state_file, &[listen.port()])
            .map_err(|e| fail(format!("reading the faults a previous agent left: {e}")))?;
        let report = injector.startup_heal();
        for entry in &report.healed {
            tracing::warn!(fault = %entry.fault, object = ?entry.installed, "healed a fault left by a previous agent");
        }
        for entry in &report.already_gone {
            tracing::info!(fault = %entry.fault, object = ?entry.installed, "a previous agent's fault was already gone");
        }
        let runtime = Handle::try_current()
            .map_err(|e| fail(format!("no async runtime for the fault drivers: {e}")))?;
        let worker = Worker::start().map_err(|e| fail(format!("starting the fault worker threads: {e}")))?;
        let mut control_ips = BTreeSet::new();
        if !listen.ip().is_unspecified() {
            control_ips.insert(listen.ip().to_canonical());
        }
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                injector,
                active: BTreeMap::new(),
                closed: false,
                next_id: 1,
                state_dir: state,
                leftovers_driver: None,
            }),
            listing: Mutex::new(Vec::new()),
            worker,
            runtime,
            serial: AtomicU64::new(1),
        });
        shared.with_state(|state| shared.ensure_leftovers_driver(state));
        Ok(Self {
            shared,
            listen,
            control_ips: Mutex::new(control_ips),
            has_cgroup,
            network_faults,
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

    /// Refuses a link change or flap that could cut the runner↔agent control path, unless the
    /// request says `force` (then the heartbeat watchdog is the safety net: a runner cut off
    /// for longer than the heartbeat timeout makes the agent heal everything).
    fn check_link(&self, spec: &FaultSpec) -> Result<(), ApiError> {
        let (interface, what, force) = match spec {
            FaultSpec::Link(change) if change.up == Some(false) => {
                (&change.interface, "take it down", change.force)
            }
            FaultSpec::Link(change) if change.mtu.is_some() => {
                (&change.interface, "change its MTU", change.force)
            }
            FaultSpec::Flap(flap) => (&flap.interface, "flap it", flap.force),
            _ => return Ok(()),
        };
        if force {
            return Ok(());
        }
        if let Some((_, ip)) = self
            .control_interfaces()
            .into_iter()
            .find(|(name, _)| name == interface)
        {
            return Err(err(
                ErrorKind::InvalidRequest,
                format!(
                    "link fault on {interface}: refusing to {what}, it carries the agent's control \
                     address {ip} (port {}) and a fault must never cut runner↔agent traffic unless \
                     forced; use another interface, a partition fault (the control port is exempt), \
                     or set `force` if the node has no other interface (the agent heals everything \
                     if the runner stays cut off past the heartbeat timeout)",
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

    /// Installs `req`, starts its driver (TTL), and returns what was installed.
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
            guard::validate_id(id)?;
        }
        refuse_network(&req.spec, self.network_faults)?;
        self.check_link(&req.spec)?;
        let parts = self.resolve(&req.spec, procs)?;
        let node = procs.node().clone();
        let shared = self.shared.clone();
        let serial = shared.serial.fetch_add(1, Ordering::Relaxed);
        self.shared
            .worker
            .run(Lane::Other, move || {
                // Process targets must be the node's: checked here, off the async threads,
                // since it reads /proc.
                for (_, spec) in &parts {
                    guard::refuse_freezing_self(spec)?;
                    match spec {
                        FaultSpec::Freeze(FreezeTarget::ProcessTree { pid }) => node.check_tree(*pid)?,
                        FaultSpec::Freeze(FreezeTarget::Cgroup { path }) => node.check_cgroup(path)?,
                        _ => {}
                    }
                }
                shared.with_state(|state| install(&shared, state, req, parts, serial))
            })
            .await
    }

    /// The active faults, by id, each with its last heal error. Never waits for fault work.
    pub(crate) fn list(&self) -> Vec<FaultInfo> {
        self.shared
            .listing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Heals fault `id`; false when it was not active. When the heal fails (or is not
    /// verified) the fault stays listed with the error and its driver retries it.
    pub(crate) async fn heal(&self, id: String) -> Result<bool, ApiError> {
        let shared = self.shared.clone();
        self.shared
            .worker
            .run(Lane::Heal, move || {
                shared.with_state(|state| {
                    let healed = heal_locked(state, &id, None, false);
                    if let Err(e) = &healed {
                        tracing::error!(fault = %id, "heal failed, retrying in the background: {}", e.message);
                        shared.ensure_leftovers_driver(state);
                    }
                    healed
                })
            })
            .await
    }

    /// Heals every active fault and whatever a previous agent left; returns the ids healed.
    /// With `close`, nothing can be injected afterwards (shutdown). Tries every fault; reports
    /// failures together (those stay listed and are retried).
    pub(crate) async fn heal_all(&self, close: bool) -> Result<Vec<String>, ApiError> {
        let shared = self.shared.clone();
        self.shared
            .worker
            .run(Lane::Heal, move || {
                shared.with_state(|state| {
                    state.closed |= close;
                    let ids: Vec<String> = state.active.keys().cloned().collect();
                    let mut healed = Vec::new();
                    let mut failed = Vec::new();
                    for id in ids {
                        match heal_locked(state, &id, None, false) {
                            Ok(true) => healed.push(id),
                            Ok(false) => {}
                            Err(e) => failed.push(format!("{id}: {}", e.message)),
                        }
                    }
                    match heal_leftover_ids(state) {
                        Ok(ids) => healed.extend(ids),
                        Err(e) => {
                            failed.push(e);
                            shared.ensure_leftovers_driver(state);
                        }
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
            })
            .await
    }

    /// The heal before exit: heals everything and refuses new faults, retrying failed heals
    /// with backoff for at most [`SHUTDOWN_HEAL_BOUND`]; then stops every driver. Logs
    /// instead of failing (the agent is exiting): what is left stays in the state file, healed
    /// by the next agent using it.
    pub(crate) async fn shutdown(&self, why: &str) {
        let deadline = tokio::time::Instant::now() + SHUTDOWN_HEAL_BOUND;
        let mut backoff = RETRY_FIRST;
        loop {
            match tokio::time::timeout_at(deadline, self.heal_all(true)).await {
                Ok(Ok(healed)) => {
                    if !healed.is_empty() {
                        tracing::info!(?healed, "{why}: healed every fault");
                    }
                    break;
                }
                Ok(Err(e)) if tokio::time::Instant::now() + backoff < deadline => {
                    tracing::error!("{why}: {}; retrying in {backoff:?}", e.message);
                    tokio::time::sleep(backoff).await;
                    backoff = next_backoff(backoff);
                }
                Ok(Err(e)) => {
                    tracing::error!(
                        "{why}: {}; what is left is recorded in {} and healed by the next agent using it",
                        e.message,
                        self.state_file.display()
                    );
                    break;
                }
                Err(_) => {
                    tracing::error!(
                        "{why}: healing still runs after {SHUTDOWN_HEAL_BOUND:?}; going on with the exit; \
                         what is left is recorded in {} and healed by the next agent using it",
                        self.state_file.display()
                    );
                    break;
                }
            }
        }
        // Stop the drivers without waiting for the worker, which may still be busy.
        let mut state = lock(&self.shared.inner);
        for active in state.active.values() {
            active.driver.abort();
        }
        if let Some(driver) = state.leftovers_driver.take() {
            driver.abort();
        }
    }

    /// What this node supports.
    pub(crate) async fn probe(&self, procs: &ProcTable) -> Result<ProbeReport, ApiError> {
        let has_cgroup = self.has_cgroup;
        let network_faults = self.network_faults;
        let children = procs.child_gate();
        self.shared
            .worker
            .run(Lane::Other, move || {
                // The probe runs and waits for programs of its own.
                let _held = children.hold();
                Ok(probe::probe_report(
                    &chaos_faults::probe(),
                    has_cgroup,
                    network_faults,
                ))
            })
            .await
    }

    /// Signals the node's processes matched by `req` (see [`signal::signal_node`]).
    pub(crate) async fn signal(
        &self,
        req: NodeSignalRequest,
        procs: &ProcTable,
    ) -> Result<Vec<u32>, ApiError> {
        let node = procs.node().clone();
        self.shared
            .worker
            .run(Lane::Other, move || signal::signal_node(req, &node))
            .await
    }
}

/// Installs the parts of `req` under a fresh or given id and starts the fault's driver.
fn install(
    shared: &Arc<Shared>,
    state: &mut Inner,
    req: FaultRequest,
    parts: Vec<(Option<String>, FaultSpec)>,
    serial: u64,
) -> Result<FaultInfo, ApiError> {
    if state.closed {
        return Err(err(ErrorKind::Conflict, "the agent is shutting down"));
    }
    let leftovers = state.injector.leftovers();
    let id = match req.id {
        Some(id) if state.active.contains_key(&id) => {
            return Err(err(
                ErrorKind::Conflict,
                format!("fault {id:?} is already active; heal it first or use another id"),
            ));
        }
        Some(id) if leftovers.contains(&id) => {
            return Err(err(
                ErrorKind::Conflict,
                format!(
                    "fault {id:?} was left by a previous agent and is not healed yet (see the agent's \
                     log); heal it (DELETE /v1/faults/{id}) or use another id"
                ),
            ));
        }
        Some(id) => id,
        None => loop {
            let id = format!("f{}", state.next_id);
            state.next_id += 1;
            if !state.active.contains_key(&id) && !leftovers.contains(&id) {
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
    state.state_dir.ensure()?;
    let injected_ms = now_ms();
    // The same deadline goes into the kernel where it can keep it (nftables rules), so the
    // fault ends at its TTL even if this agent is dead by then.
    let deadline = UNIX_EPOCH + Duration::from_millis(injected_ms.saturating_add(req.ttl_ms));
    let mut installed: Vec<String> = Vec::new();
    let mut mechanism: Option<Mechanism> = None;
    for (part, spec) in &parts {
        match state.injector.inject_until(part, spec, Some(deadline)) {
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
        heal_error: None,
        heal_attempts: 0,
    };
    let retry_now = Arc::new(Notify::new());
    let driver = shared
        .runtime
        .spawn(driver::drive(
            Arc::downgrade(shared),
            id.clone(),
            serial,
            std::time::Instant::now() + Duration::from_millis(req.ttl_ms),
            retry_now.clone(),
        ))
        .abort_handle();
    tracing::info!(fault = %id, kind = %info.spec.kind(), mechanism = ?info.mechanism, ttl_ms = req.ttl_ms, "fault active");
    state.active.insert(
        id,
        Active {
            info: info.clone(),
            parts: installed,
            serial,
            driver,
            retry_now,
        },
    );
    Ok(info)
}

/// Heals `id` (only if its serial is `serial`, when given) — or, when no active fault has
/// that id, what a previous agent left under it. Returns false when there was nothing. When
/// healing fails the fault stays listed with the error and the attempt counted; unless the
/// caller is the fault's own driver (`by_driver`), the driver is woken to retry.
fn heal_locked(state: &mut Inner, id: &str, serial: Option<u64>, by_driver: bool) -> Result<bool, ApiError> {
    let Some(active) = state.active.get_mut(id) else {
        if serial.is_none() && state.injector.leftovers().iter().any(|l| l == id) {
            state.injector.heal(id).map_err(fault_error)?;
            tracing::warn!(fault = %id, "healed a fault left by a previous agent");
            return Ok(true);
        }
        return Ok(false);
    };
    if serial.is_some_and(|s| s != active.serial) {
        return Ok(false);
    }
    let mut first_err = None;
    for part in active.parts.iter().rev() {
        if let Err(e) = state.injector.heal(part) {
            first_err.get_or_insert(e);
        }
    }
    match first_err {
        None => {
            if let Some(active) = state.active.remove(id)
                && !by_driver
            {
                // The driver itself must not be aborted: that would cancel its own log line.
                active.driver.abort();
            }
            Ok(true)
        }
        Some(e) => {
            active.info.heal_error = Some(e.to_string());
            active.info.heal_attempts += 1;
            if !by_driver {
                active.retry_now.notify_one();
            }
            Err(fault_error(e))
        }
    }
}

/// Heals every fault a previous agent left that is still recorded. Returns the ids healed, or
/// what failed.
fn heal_leftover_ids(state: &mut Inner) -> Result<Vec<String>, String> {
    let mut healed = Vec::new();
    let mut failed = Vec::new();
    for id in state.injector.leftovers() {
        match state.injector.heal(&id) {
            Ok(_) => healed.push(id),
            Err(e) => failed.push(format!("{id} (left by a previous agent): {e}")),
        }
    }
    if failed.is_empty() {
        Ok(healed)
    } else {
        Err(failed.join("; "))
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
    Ok(Json(agent.faults.list()))
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
    Ok(Json(agent.faults.probe(&agent.procs).await?))
}

/// `POST /v1/signal`.
pub(crate) async fn signal(
    State(agent): State<Arc<Agent>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Vec<u32>>, Failure> {
    let req: NodeSignalRequest = json("signal request", body)?;
    Ok(Json(agent.faults.signal(req, &agent.procs).await?))
}
