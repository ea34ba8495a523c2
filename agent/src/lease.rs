//! Leases ([`chaos_proto::lease`]): one runner at a time, each run in a directory of its own,
//! and "ending a run" — heal every fault, kill every process tree, remove the run directory
//! (unless asked to keep it), release the lease — written once for every way a run ends:
//! release, shutdown of a persistent agent, heartbeat loss, takeover.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use chaos_proto::lease::{self, Lease, LeaseRequest};
use chaos_proto::{ApiError, ErrorKind};
use serde::Deserialize;
use tokio::sync::Mutex;

use crate::api::{Agent, Failure, json};

/// Longest heartbeat timeout a lease may ask for.
const MAX_LEASE_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(3600);

/// Longest [`LeaseRequest::runner`].
const MAX_RUNNER_LEN: usize = 256;

/// The lease in force, and what ending a run needs.
pub(crate) struct Leases {
    current: Mutex<Option<Lease>>,
    /// Parent of the run directories: `<root-dir>/runs`.
    root: PathBuf,
    /// The agent's own `--heartbeat-timeout`, in force while no lease is held.
    configured_timeout: Duration,
}

impl Leases {
    pub(crate) fn new(root_dir: &Path, configured_timeout: Duration) -> Self {
        Self {
            current: Mutex::new(None),
            root: root_dir.to_path_buf(),
            configured_timeout,
        }
    }

    /// Removes the run directories a previous agent left (it was killed or restarted: its runs
    /// are over), except those kept on purpose ([`lease::kept_marker`]). Called by a persistent
    /// agent before it serves.
    pub(crate) fn remove_leftover_runs(&self) {
        let runs = self.root.join(lease::RUNS_DIR);
        let Ok(entries) = std::fs::read_dir(&runs) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            // Markers (`.kept.RUN`) and the directories they mark stay.
            let name = entry.file_name();
            let kept = lease::kept_marker(&path.to_string_lossy());
            if name.to_string_lossy().starts_with('.') || Path::new(&kept).exists() {
                continue;
            }
            match std::fs::remove_dir_all(&path) {
                Ok(()) => tracing::info!(dir = %path.display(), "removed a previous agent's run directory"),
                Err(e) => tracing::warn!(dir = %path.display(), "removing a previous run directory: {e}"),
            }
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// "in use by runner WHO since WHEN" (the runner adds "host NAME is ").
fn in_use(lease: &Lease) -> String {
    let since = UNIX_EPOCH + Duration::from_millis(lease.since_unix_ms);
    format!(
        "in use by runner {} since {} (run {}); ask for a takeover to end that run",
        lease.runner,
        humantime::format_rfc3339_seconds(since),
        lease.run
    )
}

/// Ends the run holding the lease, if any (the caller holds the lease lock): heals every fault,
/// kills every process tree, removes the run directory — or keeps it, marked, when `keep` says
/// so (`None`: as the lease asked for heartbeat loss) — restores the configured heartbeat
/// timeout and releases the lease. Also heals and kills when no lease is held (an agent used
/// without one).
async fn end_locked(agent: &Agent, current: &mut Option<Lease>, keep: Option<bool>, why: &str) {
    match agent.faults.heal_all(false).await {
        Ok(healed) if healed.is_empty() => {}
        Ok(healed) => tracing::info!(?healed, "{why}: healed every fault"),
        Err(e) => tracing::error!("{why}: {}", e.message),
    }
    agent.procs.kill_all(false).await;
    let Some(lease) = current.take() else {
        return;
    };
    let keep = keep.unwrap_or(lease.keep_on_heartbeat_loss);
    let dir = PathBuf::from(&lease.run_dir);
    let marker = PathBuf::from(lease::kept_marker(&lease.run_dir));
    let what = if keep {
        "marking the run directory kept"
    } else {
        "removing the run directory"
    };
    let done = tokio::task::spawn_blocking(move || {
        if keep {
            return std::fs::write(&marker, b"");
        }
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    })
    .await;
    match done {
        Ok(Ok(())) if keep => tracing::info!(dir = %lease.run_dir, "{why}: run directory kept"),
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(dir = %lease.run_dir, "{why}: {what}: {e}"),
        Err(e) => tracing::warn!(dir = %lease.run_dir, "{why}: {what}: {e}"),
    }
    agent.heartbeat.set_timeout(agent.leases.configured_timeout);
    agent.procs.set_default_cwd(agent.leases.root.clone());
    tracing::info!(run = %lease.run, runner = %lease.runner, "{why}: run ended, lease released");
}

/// Ends the current run (see [`end_locked`]), keeping its directory if its lease asked for
/// that on heartbeat loss.
pub(crate) async fn end_run(agent: &Agent, why: &str) {
    end_run_of(agent, None, None, why).await;
}

/// Ends run `run` if it holds the lease (`None`: whatever run does, or none); `keep` as
/// [`end_locked`] takes it.
pub(crate) async fn end_run_of(agent: &Agent, run: Option<&str>, keep: Option<bool>, why: &str) {
    let mut current = agent.leases.current.lock().await;
    let other = matches!((run, current.as_ref()), (Some(run), Some(held)) if held.run != run);
    if other {
        tracing::info!(run = ?run, "{why}: that run does not hold the lease; nothing ended");
        return;
    }
    end_locked(agent, &mut current, keep, why).await;
}

/// Whether `run` holds the lease: a heartbeat naming a run counts only for it, so a runner
/// whose run ended (taken over, or the agent lost its heartbeats) learns it and keeps no other
/// run's lease alive.
pub(crate) async fn check_holder(agent: &Agent, run: &str) -> Result<(), ApiError> {
    match agent.leases.current.lock().await.as_ref() {
        Some(held) if held.run == run => Ok(()),
        Some(held) => Err(ApiError::new(
            ErrorKind::Conflict,
            format!("run {run} ended: {}", in_use(held)),
        )),
        None => Err(ApiError::new(
            ErrorKind::Conflict,
            format!("run {run} ended: no runner holds this agent's lease; take it again"),
        )),
    }
}

fn check(req: &LeaseRequest) -> Result<Duration, ApiError> {
    let invalid = |m: String| ApiError::new(ErrorKind::InvalidRequest, m);
    lease::validate_run_id(&req.run).map_err(invalid)?;
    if req.runner.is_empty() || req.runner.len() > MAX_RUNNER_LEN || req.runner.chars().any(char::is_control)
    {
        return Err(invalid(format!(
            "runner {:?}: give 1-{MAX_RUNNER_LEN} printable characters saying who you are",
            req.runner
        )));
    }
    let timeout = Duration::from_millis(req.heartbeat_timeout_ms);
    if timeout.is_zero() || timeout > MAX_LEASE_HEARTBEAT_TIMEOUT {
        return Err(invalid(format!(
            "heartbeat_timeout_ms={}: must be between 1 and {} ms",
            req.heartbeat_timeout_ms,
            MAX_LEASE_HEARTBEAT_TIMEOUT.as_millis()
        )));
    }
    Ok(timeout)
}

/// `POST /v1/lease`.
pub(crate) async fn acquire(
    State(agent): State<Arc<Agent>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Lease>, Failure> {
    let req: LeaseRequest = json("lease request", body)?;
    let timeout = check(&req)?;
    let mut current = agent.leases.current.lock().await;
    if let Some(held) = current.as_ref() {
        if held.run == req.run {
            agent.heartbeat.set_timeout(timeout);
            return Ok(Json(held.clone()));
        }
        if !req.takeover {
            return Err(ApiError::new(ErrorKind::Conflict, in_use(held)).into());
        }
        let why = format!("taken over by runner {}", req.runner);
        end_locked(&agent, &mut current, None, &why).await;
    }
    let dir = agent.leases.root.join(lease::RUNS_DIR).join(&req.run);
    let made = dir.clone();
    tokio::task::spawn_blocking(move || std::fs::create_dir_all(&made))
        .await
        .map_err(|e| ApiError::new(ErrorKind::Internal, format!("creating the run directory: {e}")))?
        .map_err(|e| {
            ApiError::new(
                ErrorKind::Internal,
                format!("creating the run directory {}: {e}", dir.display()),
            )
        })?;
    let lease = Lease {
        runner: req.runner,
        run: req.run,
        since_unix_ms: now_ms(),
        run_dir: dir.to_string_lossy().into_owned(),
        keep_on_heartbeat_loss: req.keep_on_heartbeat_loss,
    };
    agent.heartbeat.set_timeout(timeout);
    agent.procs.set_default_cwd(dir);
    tracing::info!(run = %lease.run, runner = %lease.runner, dir = %lease.run_dir, "lease granted");
    *current = Some(lease.clone());
    Ok(Json(lease))
}

/// `GET /v1/lease`.
pub(crate) async fn show(State(agent): State<Arc<Agent>>) -> Json<Option<Lease>> {
    Json(agent.leases.current.lock().await.clone())
}

#[derive(Debug, Deserialize)]
pub(crate) struct ReleaseQuery {
    run: String,
    /// Keep the run directory ([`lease::kept_marker`]).
    #[serde(default)]
    keep: bool,
}

/// `DELETE /v1/lease?run=ID[&keep=true]`: ends run `ID`; a no-op when it holds no lease.
pub(crate) async fn release(
    State(agent): State<Arc<Agent>>,
    q: Result<Query<ReleaseQuery>, QueryRejection>,
) -> Result<StatusCode, Failure> {
    let Query(q) = q?;
    let mut current = agent.leases.current.lock().await;
    if current.as_ref().is_some_and(|l| l.run == q.run) {
        end_locked(&agent, &mut current, Some(q.keep), "released by its runner").await;
    }
    Ok(StatusCode::NO_CONTENT)
}
