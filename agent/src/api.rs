//! The HTTP API: routes, error replies, and the small handlers (info, heartbeat, shutdown,
//! process table).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::extract::rejection::{BytesRejection, FailedToBufferBody, PathRejection, QueryRejection};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use chaos_proto::limits::{MAX_JSON_BODY, MAX_PROC_SPEC};
use chaos_proto::paths;
use chaos_proto::{
    ApiError, ErrorKind, HeartbeatReply, KillAllRequest, NodeInfo, OutputSpec, ProcId, ProcSpec, ProcStarted,
    RestartRequest, SignalRequest, StdinSpec, WaitReply,
};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use crate::faults::{self, Faults};
use crate::files::FileGate;
use crate::heartbeat::Heartbeat;
use crate::lease::{self, Leases};
use crate::procs::ProcTable;
use crate::{body, dial, exec, files, measure};

/// Longest a `wait` long poll blocks.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// State shared by every handler.
pub(crate) struct Agent {
    pub(crate) procs: ProcTable,
    pub(crate) faults: Faults,
    pub(crate) heartbeat: Heartbeat,
    /// Admits the blocking work of file requests.
    pub(crate) files: FileGate,
    /// Notified by `POST /v1/shutdown` (unless persistent).
    pub(crate) shutdown: Notify,
    /// The lease in force ([`chaos_proto::lease`]).
    pub(crate) leases: Leases,
    /// `--on-heartbeat-loss wait`: `POST /v1/shutdown` ends the run instead of the agent.
    pub(crate) persistent: bool,
}

impl Agent {
    pub(crate) fn new(
        root_dir: PathBuf,
        cgroup: Option<PathBuf>,
        faults: Faults,
        heartbeat_timeout: Duration,
        persistent: bool,
    ) -> Self {
        Self {
            leases: Leases::new(&root_dir, heartbeat_timeout),
            persistent,
            procs: ProcTable::new(root_dir, cgroup),
            faults,
            heartbeat: Heartbeat::new(heartbeat_timeout),
            files: FileGate::new(),
            shutdown: Notify::new(),
        }
    }
}

type AppState = State<Arc<Agent>>;

/// An error reply: the [`ApiError`] as JSON with the status of its kind.
#[derive(Debug)]
pub(crate) struct Failure(pub(crate) ApiError);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.kind.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(self.0)).into_response()
    }
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

fn invalid(message: String) -> Failure {
    Failure(ApiError::new(ErrorKind::InvalidRequest, message))
}

impl From<QueryRejection> for Failure {
    fn from(r: QueryRejection) -> Self {
        invalid(format!("bad query: {}", r.body_text()))
    }
}

impl From<PathRejection> for Failure {
    fn from(r: PathRejection) -> Self {
        invalid(format!("bad path parameter: {}", r.body_text()))
    }
}

impl From<BytesRejection> for Failure {
    fn from(r: BytesRejection) -> Self {
        match r {
            BytesRejection::FailedToBufferBody(FailedToBufferBody::LengthLimitError(_)) => invalid(format!(
                "the request body is larger than {MAX_JSON_BODY} bytes (MAX_JSON_BODY), the most the \
                 agent reads for one request"
            )),
            r => invalid(format!("bad body: {}", r.body_text())),
        }
    }
}

impl From<WebSocketUpgradeRejection> for Failure {
    fn from(r: WebSocketUpgradeRejection) -> Self {
        invalid(format!(
            "this endpoint needs a WebSocket upgrade: {}",
            r.body_text()
        ))
    }
}

/// Parses a JSON body without insisting on a content type (the runner sends none).
pub(crate) fn json<T: DeserializeOwned>(
    what: &str,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, Failure> {
    serde_json::from_slice(&body?).map_err(|e| invalid(format!("bad {what} JSON: {e}")))
}

/// Parses a process spec (`POST /v1/procs` body, first exec message) within
/// [`MAX_PROC_SPEC`].
pub(crate) fn parse_spec(bytes: &[u8]) -> Result<ProcSpec, ApiError> {
    if bytes.len() > MAX_PROC_SPEC {
        return Err(ApiError::new(
            ErrorKind::InvalidRequest,
            format!(
                "the process spec is {} bytes, more than {MAX_PROC_SPEC} (MAX_PROC_SPEC)",
                bytes.len()
            ),
        ));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::new(ErrorKind::InvalidRequest, format!("bad process spec JSON: {e}")))
}

/// The API router. Every request body must keep moving ([`body::require_progress`]); bodies
/// read whole (JSON) are at most [`MAX_JSON_BODY`] bytes.
pub(crate) fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route(paths::INFO, get(info))
        .route(paths::HEARTBEAT, post(heartbeat))
        .route(paths::SHUTDOWN, post(shutdown))
        .route(
            paths::FILES,
            get(files::get).put(files::put).delete(files::remove),
        )
        .route(paths::FILES_STAT, get(files::stat))
        .route(paths::FILES_LIST, get(files::list))
        .route(paths::PROCS, get(list_procs).post(start_proc))
        .route(paths::PROCS_EXEC, get(exec::handler))
        .route(paths::PROC_SIGNAL, post(signal_proc))
        .route(paths::PROC_WAIT, post(wait_proc))
        .route(paths::PROCS_KILL_ALL, post(kill_all_procs))
        .route(paths::PROC_RESTART, post(restart_proc))
        .route(paths::SIGNAL, post(faults::signal))
        .route(
            paths::FAULTS,
            get(faults::list).post(faults::inject).delete(faults::heal_all),
        )
        .route(paths::FAULT, delete(faults::heal))
        .route(paths::PROBE, get(faults::probe))
        .route(paths::DIAL, get(dial::handler))
        .route(paths::MEASURE_SERVE, post(measure::serve))
        .route(paths::MEASURE_RUN, post(measure::run))
        .route(
            paths::LEASE,
            get(lease::show).post(lease::acquire).delete(lease::release),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY))
        .layer(axum::middleware::map_request(body::require_progress))
        .with_state(agent)
}

async fn not_found(method: Method, uri: Uri) -> Failure {
    Failure(ApiError::new(
        ErrorKind::NotFound,
        format!("no such endpoint: {method} {}", uri.path()),
    ))
}

async fn method_not_allowed(method: Method, uri: Uri) -> Failure {
    invalid(format!("method {method} is not allowed on {}", uri.path()))
}

/// Every address of every interface of the node's network namespace, with its interface
/// name. One walk shared by node info and the fault guard that protects control interfaces.
pub(crate) fn interface_addresses() -> Vec<(String, IpAddr)> {
    let mut out = Vec::new();
    match nix::ifaddrs::getifaddrs() {
        Ok(ifaddrs) => {
            for ifa in ifaddrs {
                let Some(addr) = ifa.address else { continue };
                let ip = if let Some(v4) = addr.as_sockaddr_in() {
                    IpAddr::V4(v4.ip())
                } else if let Some(v6) = addr.as_sockaddr_in6() {
                    IpAddr::V6(v6.ip())
                } else {
                    continue;
                };
                out.push((ifa.interface_name, ip));
            }
        }
        Err(e) => tracing::warn!("listing interface addresses: {e}"),
    }
    out
}

fn addresses() -> Vec<IpAddr> {
    let ips: BTreeSet<IpAddr> = interface_addresses()
        .into_iter()
        .map(|(_, ip)| ip)
        .filter(|ip| !ip.is_loopback())
        .collect();
    ips.into_iter().collect()
}

async fn info() -> Json<NodeInfo> {
    let hostname = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    Json(NodeInfo {
        hostname,
        addresses: addresses(),
        kernel,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        protocol_version: chaos_proto::PROTOCOL_VERSION,
        pid: std::process::id(),
    })
}

#[derive(Debug, Deserialize)]
struct HeartbeatQuery {
    grace_ms: Option<u64>,
    /// The run the runner serves ([`chaos_proto::lease`]): refused unless it holds the lease.
    run: Option<String>,
}

async fn heartbeat(
    State(agent): AppState,
    q: Result<Query<HeartbeatQuery>, QueryRejection>,
) -> Result<Json<HeartbeatReply>, Failure> {
    let Query(q) = q?;
    let grace_ms = q.grace_ms.unwrap_or(0);
    if grace_ms > chaos_proto::MAX_HEARTBEAT_GRACE_MS {
        return Err(invalid(format!(
            "grace_ms={grace_ms} is longer than the most an agent grants ({} ms)",
            chaos_proto::MAX_HEARTBEAT_GRACE_MS
        )));
    }
    if let Some(run) = &q.run {
        lease::check_holder(&agent, run).await?;
    }
    agent.heartbeat.beat(Duration::from_millis(grace_ms));
    Ok(Json(HeartbeatReply {
        timeout_ms: agent.heartbeat.timeout().as_millis() as u64,
    }))
}

#[derive(Debug, Deserialize)]
struct ShutdownQuery {
    /// On a persistent agent: end only this run (a no-op when another run holds the lease).
    run: Option<String>,
    /// On a persistent agent: keep the run's directory ([`chaos_proto::lease::kept_marker`]).
    #[serde(default)]
    keep: bool,
}

async fn shutdown(
    State(agent): AppState,
    q: Result<Query<ShutdownQuery>, QueryRejection>,
) -> Result<StatusCode, Failure> {
    let Query(q) = q?;
    if agent.persistent {
        // A service outlives its runners: the run ends, the agent keeps serving.
        tracing::info!("shutdown requested over the API: ending the run (persistent agent)");
        lease::end_run_of(&agent, q.run.as_deref(), Some(q.keep), "shutdown requested").await;
        return Ok(StatusCode::NO_CONTENT);
    }
    tracing::info!("shutdown requested over the API");
    agent.shutdown.notify_one();
    Ok(StatusCode::NO_CONTENT)
}

async fn list_procs(State(agent): AppState) -> Response {
    agent.procs.list_reply()
}

async fn start_proc(
    State(agent): AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ProcStarted>, Failure> {
    let spec = parse_spec(&body?)?;
    let piped = [
        (spec.stdin == StdinSpec::Pipe, "stdin"),
        (spec.stdout == OutputSpec::Pipe, "stdout"),
        (spec.stderr == OutputSpec::Pipe, "stderr"),
    ];
    if let Some((_, name)) = piped.iter().find(|(p, _)| *p) {
        return Err(invalid(format!(
            "{name} is `pipe`, which needs the exec WebSocket (/v1/procs/exec); use null or file here"
        )));
    }
    let spawned = agent.procs.spawn(spec)?;
    Ok(Json(ProcStarted {
        id: spawned.entry.id,
        pid: spawned.entry.pid,
    }))
}

async fn signal_proc(
    State(agent): AppState,
    id: Result<Path<ProcId>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, Failure> {
    let Path(id) = id?;
    let req: SignalRequest = json("signal request", body)?;
    agent.procs.signal(id, req.signal, req.group)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
struct WaitQuery {
    timeout_ms: Option<u64>,
}

async fn wait_proc(
    State(agent): AppState,
    id: Result<Path<ProcId>, PathRejection>,
    q: Result<Query<WaitQuery>, QueryRejection>,
) -> Result<Json<WaitReply>, Failure> {
    let Path(id) = id?;
    let Query(q) = q?;
    let timeout = q
        .timeout_ms
        .map(Duration::from_millis)
        .unwrap_or(MAX_WAIT)
        .min(MAX_WAIT);
    let exit = agent.procs.wait(id, timeout).await?;
    Ok(Json(WaitReply { exit }))
}

/// An empty body or `null` means "all defaults".
fn json_or_default<T: DeserializeOwned + Default>(
    what: &str,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, Failure> {
    let body = body?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    Ok(json::<Option<T>>(what, Ok(body))?.unwrap_or_default())
}

async fn kill_all_procs(
    State(agent): AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Vec<ProcId>>, Failure> {
    let req: KillAllRequest = json_or_default("kill-all request", body)?;
    Ok(Json(agent.procs.signal_all(req.signal).await?))
}

async fn restart_proc(
    State(agent): AppState,
    id: Result<Path<ProcId>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ProcStarted>, Failure> {
    let Path(id) = id?;
    let req: RestartRequest = json_or_default("restart request", body)?;
    if req.grace_ms > RestartRequest::MAX_GRACE_MS {
        return Err(invalid(format!(
            "grace_ms {} exceeds the limit of {} ms",
            req.grace_ms,
            RestartRequest::MAX_GRACE_MS
        )));
    }
    let spawned = agent
        .procs
        .restart(id, req.signal, Duration::from_millis(req.grace_ms))
        .await?;
    Ok(Json(ProcStarted {
        id: spawned.entry.id,
        pid: spawned.entry.pid,
    }))
}
