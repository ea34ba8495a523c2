//! The runner side of the agent protocol ([`chaos_proto`]): [`AgentClient`] speaks HTTPS and
//! WebSockets to one `chaos-agent` over mutual TLS, and [`AgentNode`] implements [`Node`] on top
//! of it — once, for every backend that runs the agent (netns, Docker, EC2, bare metal).
//!
//! Plain requests share a pool of keep-alive connections. Process streams and TCP tunnels each
//! get their own WebSocket connection; TLS session resumption keeps those handshakes cheap.
//!
//! (Past the usual size on purpose: the client and its `Node` implementation are one job — each
//! `Node` method is the client call it wraps — and splitting them would put every endpoint in
//! two files.)

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chaos_proto::exec::{self, ClientControl, ServerEvent};
use chaos_proto::fault::{FaultInfo, FaultRequest, HealReply, ProbeReport};
use chaos_proto::lease::{Lease, LeaseRequest};
use chaos_proto::paths;
use chaos_proto::{
    ApiError, DirEntry, ErrorKind, ExitStatus, FileStat, FileWritten, HeartbeatReply, KillAllRequest,
    NodeInfo, NodeSignalRequest, ProcId, ProcInfo, ProcSpec, ProcStarted, RestartRequest, Signal,
    SignalRequest, SignalTarget, StdinSpec, WaitReply,
};
use futures_util::{SinkExt, StreamExt, TryStreamExt};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, BodyStream, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::ServerName;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::io::{ReaderStream, StreamReader};

use crate::cluster::{BoxStream, ByteReader, Node, Process, ProcessControl};
use crate::{Error, Result};

type ReqBody = UnsyncBoxBody<Bytes, std::io::Error>;
type Ws = WebSocketStream<TlsStream<TcpStream>>;

/// Size of the chunks files and streams are moved in. Large chunks keep per-frame overhead
/// (syscalls, TLS records, WebSocket headers) small next to the bytes moved.
const CHUNK: usize = 256 * 1024;

/// Bounds of an [`AgentClient`]'s waits.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TCP connect plus TLS handshake.
    pub connect: Duration,
    /// A whole request/reply that moves no stream (info, stat, signal, …).
    pub request: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(5),
            request: Duration::from_secs(30),
        }
    }
}

/// A client of one node's agent.
pub struct AgentClient {
    node: String,
    addr: SocketAddr,
    tls: TlsConnector,
    http: Client<hyper_rustls::HttpsConnector<HttpConnector>, ReqBody>,
    timeouts: Timeouts,
    /// Set once [`AgentClient::shutdown`] was called: the agent's exit is expected, and its
    /// supervisor ([`crate::backend::supervisor`]) does not restart it.
    shutdown_requested: AtomicBool,
    /// The run whose lease this client serves ([`chaos_proto::lease`]), sent with heartbeats
    /// and shutdown so a persistent agent counts them only for that run.
    run: Option<String>,
}

impl std::fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentClient")
            .field("node", &self.node)
            .field("addr", &self.addr)
            .finish()
    }
}

/// Joins an error and its sources into one line.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        source = e.source();
    }
    out
}

impl AgentClient {
    /// A client for the agent of `node` listening at `addr`, authenticating with `tls` (see
    /// [`crate::certs::client_config`]). The agent's certificate must name `addr`'s IP.
    pub fn new(node: impl Into<String>, addr: SocketAddr, tls: Arc<rustls::ClientConfig>) -> Self {
        Self::with_timeouts(node, addr, tls, Timeouts::default())
    }

    /// Like [`AgentClient::new`] with explicit bounds.
    pub fn with_timeouts(
        node: impl Into<String>,
        addr: SocketAddr,
        tls: Arc<rustls::ClientConfig>,
        timeouts: Timeouts,
    ) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(timeouts.connect));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*tls).clone())
            .https_only()
            .enable_http1()
            .wrap_connector(http);
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(https);
        Self {
            node: node.into(),
            addr,
            tls: TlsConnector::from(tls),
            http,
            timeouts,
            shutdown_requested: AtomicBool::new(false),
            run: None,
        }
    }

    /// The same client for run `run` of a persistent agent (`hosts`): its heartbeats and
    /// shutdown name the run, so they neither keep another run's lease alive nor end it.
    pub fn for_run(mut self, run: Option<String>) -> Self {
        self.run = run;
        self
    }

    /// The node this client talks to.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The agent's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether [`AgentClient::shutdown`] was called on this client: the agent was asked to exit.
    pub fn shutdown_requested(&self) -> bool {
        self.shutdown_requested.load(Ordering::SeqCst)
    }

    /// After [`AgentClient::shutdown`], every request but another shutdown is refused with
    /// [`ErrorKind::Conflict`]: the node was stopped on purpose, which says more than the
    /// `Unreachable` its dead agent would give.
    fn refuse_if_stopped(&self) -> Result<()> {
        if !self.shutdown_requested() {
            return Ok(());
        }
        Err(Error::api(
            &self.node,
            ErrorKind::Conflict,
            "the node was stopped (its agent was asked to shut down): nothing more runs on it",
        ))
    }

    fn url(&self, path: &str, query: &[(&str, &str)]) -> String {
        let mut url = format!("https://{}{}", self.addr, path);
        if !query.is_empty() {
            url.push('?');
            url.push_str(
                &form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(query)
                    .finish(),
            );
        }
        url
    }

    fn unreachable(&self, cause: String) -> Error {
        Error::Unreachable {
            node: self.node.clone(),
            addr: self.addr.to_string(),
            cause,
        }
    }

    fn protocol(&self, message: impl Into<String>) -> Error {
        Error::Protocol {
            node: self.node.clone(),
            message: message.into(),
        }
    }

    fn timeout(&self, what: &str, after: Duration) -> Error {
        Error::Timeout {
            node: self.node.clone(),
            what: what.to_string(),
            after,
        }
    }

    /// Sends a request and returns the response once its head arrived, mapping non-2xx
    /// statuses to the agent's [`ApiError`].
    async fn send(
        &self,
        what: &str,
        req: Request<ReqBody>,
        bound: Option<Duration>,
    ) -> Result<Response<Incoming>> {
        if req.uri().path() != paths::SHUTDOWN {
            self.refuse_if_stopped()?;
        }
        let fut = self.http.request(req);
        let resp = match bound {
            Some(after) => tokio::time::timeout(after, fut)
                .await
                .map_err(|_| self.timeout(what, after))?,
            None => fut.await,
        }
        .map_err(|e| self.unreachable(chain(&e)))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let source = serde_json::from_slice::<ApiError>(&body).unwrap_or_else(|_| {
            ApiError::new(
                ErrorKind::Internal,
                format!("{what}: HTTP {status}: {}", String::from_utf8_lossy(&body)),
            )
        });
        Err(Error::Api {
            node: self.node.clone(),
            error: source,
        })
    }

    fn request(&self, method: Method, url: String, body: ReqBody) -> Result<Request<ReqBody>> {
        Request::builder()
            .method(method)
            .uri(url)
            .body(body)
            .map_err(|e| self.protocol(format!("bad request: {e}")))
    }

    fn empty() -> ReqBody {
        Empty::new().map_err(|never| match never {}).boxed_unsync()
    }

    fn json_body<B: Serialize>(body: &B) -> ReqBody {
        let bytes = serde_json::to_vec(body).unwrap_or_default();
        Full::new(Bytes::from(bytes))
            .map_err(|never| match never {})
            .boxed_unsync()
    }

    /// A request/reply with JSON bodies, bounded by the request timeout.
    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        what: &str,
        method: Method,
        url: String,
        body: Option<&B>,
    ) -> Result<T> {
        let body = body.map(Self::json_body).unwrap_or_else(Self::empty);
        self.call_bounded(what, method, url, body, self.timeouts.request)
            .await
    }

    /// A request whose JSON reply must arrive, whole, within `after`.
    async fn call_bounded<T: DeserializeOwned>(
        &self,
        what: &str,
        method: Method,
        url: String,
        body: ReqBody,
        after: Duration,
    ) -> Result<T> {
        let req = self.request(method, url, body)?;
        let fut = async {
            let resp = self.send(what, req, None).await?;
            self.read_json(what, resp).await
        };
        tokio::time::timeout(after, fut)
            .await
            .map_err(|_| self.timeout(what, after))?
    }

    /// Reads and parses a JSON reply body.
    async fn read_json<T: DeserializeOwned>(&self, what: &str, resp: Response<Incoming>) -> Result<T> {
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| self.unreachable(chain(&e)))?
            .to_bytes();
        // 204 replies carry no body; callers expecting `()` accept `null`.
        let bytes = if bytes.is_empty() {
            Bytes::from_static(b"null")
        } else {
            bytes
        };
        serde_json::from_slice(&bytes).map_err(|e| self.protocol(format!("{what}: bad reply: {e}")))
    }

    /// `GET /v1/info`.
    pub async fn info(&self) -> Result<NodeInfo> {
        self.call::<(), _>("info", Method::GET, self.url(paths::INFO, &[]), None)
            .await
    }

    /// The `run` query pair, when this client serves a run.
    fn run_query(&self) -> Vec<(&str, &str)> {
        self.run.as_deref().map(|r| ("run", r)).into_iter().collect()
    }

    /// `POST /v1/heartbeat` (`?run=ID` for a run's client).
    pub async fn heartbeat(&self) -> Result<HeartbeatReply> {
        let url = self.url(paths::HEARTBEAT, &self.run_query());
        self.call::<(), _>("heartbeat", Method::POST, url, None).await
    }

    /// `POST /v1/heartbeat?grace_ms=G`: a heartbeat counted as given `grace` from now, sent
    /// before the runner cuts itself off from the node on purpose for up to `grace` (so the agent
    /// does not mistake that for a crashed runner and tear the node down).
    pub async fn heartbeat_with_grace(&self, grace: Duration) -> Result<HeartbeatReply> {
        let grace_ms = grace.as_millis().to_string();
        let mut query = self.run_query();
        query.push(("grace_ms", &grace_ms));
        let url = self.url(paths::HEARTBEAT, &query);
        self.call::<(), _>("heartbeat", Method::POST, url, None).await
    }

    /// `POST /v1/shutdown`: the agent kills everything it started and exits. From the first
    /// call on, the agent's end counts as asked for ([`AgentClient::shutdown_requested`]).
    pub async fn shutdown(&self) -> Result<()> {
        self.shutdown_keeping(false).await
    }

    /// [`AgentClient::shutdown`]; with `keep`, a persistent agent keeps the run's directory
    /// (`&keep=true`, [`chaos_proto::lease::kept_marker`]). Other agents ignore `keep`.
    pub async fn shutdown_keeping(&self, keep: bool) -> Result<()> {
        self.shutdown_requested.store(true, Ordering::SeqCst);
        let mut query = self.run_query();
        if keep {
            query.push(("keep", "true"));
        }
        let url = self.url(paths::SHUTDOWN, &query);
        self.call::<(), ()>("shutdown", Method::POST, url, None).await
    }

    /// `POST /v1/lease`: takes the lease of a persistent agent ([`chaos_proto::lease`]); a
    /// [`ErrorKind::Conflict`] names the runner holding it.
    pub async fn take_lease(&self, request: &LeaseRequest) -> Result<Lease> {
        self.call(
            "take lease",
            Method::POST,
            self.url(paths::LEASE, &[]),
            Some(request),
        )
        .await
    }

    /// `GET /v1/lease`: the lease in force, if any.
    pub async fn lease(&self) -> Result<Option<Lease>> {
        self.call::<(), _>("show lease", Method::GET, self.url(paths::LEASE, &[]), None)
            .await
    }

    /// `DELETE /v1/lease?run=ID[&keep=true]`: ends run `run` (heals, kills, removes its
    /// directory unless `keep`, releases the lease); a no-op when it holds no lease.
    pub async fn release_lease(&self, run: &str, keep: bool) -> Result<()> {
        let mut query = vec![("run", run)];
        if keep {
            query.push(("keep", "true"));
        }
        let url = self.url(paths::LEASE, &query);
        self.call::<(), ()>("release lease", Method::DELETE, url, None)
            .await
    }

    /// Streams `data` into `path` on the node with permissions `mode`.
    pub async fn write_file(&self, path: &str, mode: u32, data: ByteReader) -> Result<u64> {
        let mode = format!("{mode:o}");
        let url = self.url(paths::FILES, &[("path", path), ("mode", &mode)]);
        let stream = ReaderStream::with_capacity(data, CHUNK).map_ok(Frame::data);
        let req = self.request(Method::PUT, url, BodyExt::boxed_unsync(StreamBody::new(stream)))?;
        let resp = self.send("write file", req, None).await?;
        let written: FileWritten = self.read_json("write file", resp).await?;
        Ok(written.bytes)
    }

    /// Streams the file at `path` from the node.
    pub async fn read_file(&self, path: &str) -> Result<ByteReader> {
        let req = self.request(
            Method::GET,
            self.url(paths::FILES, &[("path", path)]),
            Self::empty(),
        )?;
        let resp = self.send("read file", req, Some(self.timeouts.request)).await?;
        let frames = BodyStream::new(resp.into_body())
            .try_filter_map(|frame| async move { Ok(frame.into_data().ok()) })
            .map_err(std::io::Error::other);
        Ok(Box::pin(StreamReader::new(frames)))
    }

    /// Metadata of `path`.
    pub async fn stat(&self, path: &str) -> Result<FileStat> {
        self.call::<(), _>(
            "stat",
            Method::GET,
            self.url(paths::FILES_STAT, &[("path", path)]),
            None,
        )
        .await
    }

    /// Entries of the directory `path`.
    pub async fn list_dir(&self, path: &str) -> Result<Vec<DirEntry>> {
        self.call::<(), _>(
            "list",
            Method::GET,
            self.url(paths::FILES_LIST, &[("path", path)]),
            None,
        )
        .await
    }

    /// Removes `path` (a directory only when `recursive` or empty).
    pub async fn remove(&self, path: &str, recursive: bool) -> Result<()> {
        let recursive = if recursive { "true" } else { "false" };
        let url = self.url(paths::FILES, &[("path", path), ("recursive", recursive)]);
        self.call::<(), ()>("remove", Method::DELETE, url, None).await
    }

    /// Processes the agent started, running or exited.
    pub async fn list_procs(&self) -> Result<Vec<ProcInfo>> {
        self.call::<(), _>("list processes", Method::GET, self.url(paths::PROCS, &[]), None)
            .await
    }

    /// Starts a process whose stdio is not piped (files or null) and returns at once.
    pub async fn start_detached(&self, spec: &ProcSpec) -> Result<ProcStarted> {
        self.call(
            "start process",
            Method::POST,
            self.url(paths::PROCS, &[]),
            Some(spec),
        )
        .await
    }

    /// Sends `signal` to process `id` (or its group).
    pub async fn signal(&self, id: ProcId, signal: Signal, group: bool) -> Result<()> {
        let url = self.url(&paths::with_id(paths::PROC_SIGNAL, &id.to_string()), &[]);
        self.call(
            "signal",
            Method::POST,
            url,
            Some(&SignalRequest { signal, group }),
        )
        .await
    }

    /// Waits up to `timeout` for process `id` to exit; `None` if it still runs.
    pub async fn wait_for(&self, id: ProcId, timeout: Duration) -> Result<Option<ExitStatus>> {
        let ms = timeout.as_millis().to_string();
        let url = self.url(
            &paths::with_id(paths::PROC_WAIT, &id.to_string()),
            &[("timeout_ms", &ms)],
        );
        let bound = timeout + self.timeouts.request;
        let reply: WaitReply = self
            .call_bounded("wait", Method::POST, url, Self::empty(), bound)
            .await?;
        Ok(reply.exit)
    }

    /// `POST /v1/faults`: installs a fault for at most `request.ttl_ms`.
    pub async fn inject_fault(&self, request: &FaultRequest) -> Result<FaultInfo> {
        self.call(
            "inject fault",
            Method::POST,
            self.url(paths::FAULTS, &[]),
            Some(request),
        )
        .await
    }

    /// `GET /v1/faults`: the faults active on the node.
    pub async fn list_faults(&self) -> Result<Vec<FaultInfo>> {
        self.call::<(), _>("list faults", Method::GET, self.url(paths::FAULTS, &[]), None)
            .await
    }

    /// `DELETE /v1/faults/{id}`: heals one fault; idempotent.
    pub async fn heal_fault(&self, id: &str) -> Result<HealReply> {
        // Ids are plain `[A-Za-z0-9_.-]`; anything else is encoded so it cannot change the path.
        let id: String = form_urlencoded::byte_serialize(id.as_bytes()).collect();
        let url = self.url(&paths::with_id(paths::FAULT, &id), &[]);
        self.call::<(), _>("heal fault", Method::DELETE, url, None).await
    }

    /// `DELETE /v1/faults`: heals every fault; returns the ids healed.
    pub async fn heal_all_faults(&self) -> Result<Vec<String>> {
        self.call::<(), _>(
            "heal all faults",
            Method::DELETE,
            self.url(paths::FAULTS, &[]),
            None,
        )
        .await
    }

    /// `GET /v1/probe`: the fault kinds and mechanisms the node supports.
    pub async fn probe(&self) -> Result<ProbeReport> {
        self.call::<(), _>("probe", Method::GET, self.url(paths::PROBE, &[]), None)
            .await
    }

    /// `POST /v1/measure/serve`: starts a measurement server on the node for `request.ttl_ms`.
    pub async fn measure_serve(
        &self,
        request: &chaos_proto::measure::MeasureServe,
    ) -> Result<chaos_proto::measure::MeasureServing> {
        self.call(
            "start a measurement server",
            Method::POST,
            self.url(paths::MEASURE_SERVE, &[]),
            Some(request),
        )
        .await
    }

    /// `POST /v1/measure/run`: measures from the node towards a measurement server. Bounded by
    /// the measurement's own length plus the agent's drain and probe bounds.
    pub async fn measure_run(
        &self,
        request: &chaos_proto::measure::MeasureRun,
    ) -> Result<chaos_proto::measure::MeasureReport> {
        let probes = Duration::from_millis(20) * request.rtt_probes + Duration::from_secs(1);
        let bound = Duration::from_millis(request.duration_ms)
            + probes
            + Duration::from_secs(40)
            + self.timeouts.request;
        self.call_bounded(
            "measure",
            Method::POST,
            self.url(paths::MEASURE_RUN, &[]),
            Self::json_body(request),
            bound,
        )
        .await
    }

    /// `POST /v1/procs/kill-all`: sends `signal` to every process tree the agent started;
    /// returns the ids of those that were still running.
    pub async fn kill_all(&self, signal: Signal) -> Result<Vec<ProcId>> {
        let url = self.url(paths::PROCS_KILL_ALL, &[]);
        self.call(
            "kill all processes",
            Method::POST,
            url,
            Some(&KillAllRequest { signal }),
        )
        .await
    }

    /// `POST /v1/procs/{id}/restart`: stops process `id` and starts its spec again.
    pub async fn restart(&self, id: ProcId, request: &RestartRequest) -> Result<ProcStarted> {
        let url = self.url(&paths::with_id(paths::PROC_RESTART, &id.to_string()), &[]);
        // The agent may wait the whole grace period before it answers.
        let after = self.timeouts.request + Duration::from_millis(request.grace_ms);
        self.call_bounded("restart", Method::POST, url, Self::json_body(request), after)
            .await
    }

    /// `POST /v1/signal`: sends `signal` to any process of the node matched by `target`;
    /// returns the pids signalled.
    pub async fn signal_target(&self, signal: Signal, target: SignalTarget) -> Result<Vec<u32>> {
        let body = NodeSignalRequest { signal, target };
        self.call(
            "signal processes",
            Method::POST,
            self.url(paths::SIGNAL, &[]),
            Some(&body),
        )
        .await
    }

    /// Opens a WebSocket to `path_and_query` over a fresh mTLS connection.
    async fn websocket(&self, what: &str, path: &str, query: &[(&str, &str)]) -> Result<Ws> {
        self.refuse_if_stopped()?;
        let after = self.timeouts.connect;
        let url = self.url(path, query).replacen("https://", "wss://", 1);
        let fut = async {
            let tcp = TcpStream::connect(self.addr)
                .await
                .map_err(|e| self.unreachable(e.to_string()))?;
            let _ = tcp.set_nodelay(true);
            let name = ServerName::IpAddress(self.addr.ip().into());
            let tls = self
                .tls
                .connect(name, tcp)
                .await
                .map_err(|e| self.unreachable(format!("TLS: {}", chain(&e))))?;
            let request = url
                .into_client_request()
                .map_err(|e| self.protocol(e.to_string()))?;
            let config = WebSocketConfig::default()
                .write_buffer_size(0)
                .max_message_size(Some(64 << 20))
                .max_frame_size(Some(16 << 20));
            match tokio_tungstenite::client_async_with_config(request, tls, Some(config)).await {
                Ok((ws, _)) => Ok(ws),
                Err(tungstenite::Error::Http(resp)) => {
                    let body = resp.body().as_deref().unwrap_or_default();
                    let source = serde_json::from_slice::<ApiError>(body).unwrap_or_else(|_| {
                        ApiError::new(ErrorKind::Internal, format!("{what}: HTTP {}", resp.status()))
                    });
                    Err(Error::Api {
                        node: self.node.clone(),
                        error: source,
                    })
                }
                Err(e) => Err(self.unreachable(format!("{what}: {}", chain(&e)))),
            }
        };
        tokio::time::timeout(after, fut)
            .await
            .map_err(|_| self.timeout(what, after))?
    }

    /// Starts a process and streams its stdio over a WebSocket (see [`chaos_proto::exec`]).
    pub async fn exec(self: &Arc<Self>, spec: ProcSpec) -> Result<Process> {
        let mut ws = self.websocket("exec", paths::PROCS_EXEC, &[]).await?;
        let spec_json = serde_json::to_string(&spec).map_err(|e| self.protocol(e.to_string()))?;
        ws.send(Message::text(spec_json))
            .await
            .map_err(|e| self.unreachable(format!("exec: {}", chain(&e))))?;
        let after = self.timeouts.request;
        let started = loop {
            let msg = tokio::time::timeout(after, ws.next())
                .await
                .map_err(|_| self.timeout("exec start", after))?;
            match msg {
                Some(Ok(Message::Text(text))) => match serde_json::from_str::<ServerEvent>(&text) {
                    Ok(ServerEvent::Started(started)) => break started,
                    Ok(ServerEvent::Error(source)) => {
                        return Err(Error::Api {
                            node: self.node.clone(),
                            error: source,
                        });
                    }
                    Ok(other) => return Err(self.protocol(format!("exec: expected started, got {other:?}"))),
                    Err(e) => return Err(self.protocol(format!("exec: bad event: {e}"))),
                },
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(other)) => return Err(self.protocol(format!("exec: unexpected frame {other:?}"))),
                Some(Err(e)) => return Err(self.unreachable(format!("exec: {}", chain(&e)))),
                None => return Err(self.protocol("exec: connection closed before the process started")),
            }
        };

        let (exit_tx, exit_rx) = watch::channel(None);
        let (stdout_tx, stdout_rx) = mpsc::channel::<Bytes>(16);
        let (stderr_tx, stderr_rx) = mpsc::channel::<Bytes>(16);
        let piped_stdin = spec.stdin == StdinSpec::Pipe;
        let (stdin_user, stdin_pump) = if piped_stdin {
            let (user, pump) = tokio::io::duplex(CHUNK);
            (Some(user), Some(pump))
        } else {
            (None, None)
        };
        let pump = ExecPump {
            ws,
            stdin: stdin_pump,
            stdout: Some(stdout_tx),
            stderr: Some(stderr_tx),
            exit: exit_tx,
        };
        tokio::spawn(pump.run());

        let control = Arc::new(AgentProcess {
            client: self.clone(),
            id: started.id,
            exit: exit_rx,
        });
        let stdout: Option<ByteReader> = (spec.stdout == chaos_proto::OutputSpec::Pipe)
            .then(|| Box::pin(channel_reader(stdout_rx)) as ByteReader);
        let stderr: Option<ByteReader> = (spec.stderr == chaos_proto::OutputSpec::Pipe)
            .then(|| Box::pin(channel_reader(stderr_rx)) as ByteReader);
        let stdin = stdin_user.map(|w| Box::pin(w) as crate::cluster::ByteWriter);
        Ok(Process::new(
            started.id,
            started.pid,
            stdin,
            stdout,
            stderr,
            control,
        ))
    }

    /// Opens a TCP connection from the node to `addr`, tunnelled over a WebSocket.
    pub async fn dial(&self, addr: &str) -> Result<BoxStream> {
        let ws = self.websocket("dial", paths::DIAL, &[("addr", addr)]).await?;
        let (user, pump) = tokio::io::duplex(CHUNK);
        tokio::spawn(dial_pump(ws, pump));
        Ok(Box::new(user))
    }
}

/// Turns a channel of chunks into an `AsyncRead`.
fn channel_reader(rx: mpsc::Receiver<Bytes>) -> impl AsyncRead + Send {
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (Ok::<_, std::io::Error>(chunk), rx))
    });
    StreamReader::new(Box::pin(stream))
}

/// Moves bytes between an exec WebSocket and the process's local stdio handles.
struct ExecPump {
    ws: Ws,
    stdin: Option<DuplexStream>,
    stdout: Option<mpsc::Sender<Bytes>>,
    stderr: Option<mpsc::Sender<Bytes>>,
    exit: watch::Sender<Option<ExitStatus>>,
}

impl ExecPump {
    async fn run(mut self) {
        let mut buf = vec![0u8; CHUNK];
        loop {
            tokio::select! {
                msg = self.ws.next() => match msg {
                    Some(Ok(Message::Binary(data))) => self.output(data).await,
                    Some(Ok(Message::Text(text))) => {
                        if let Ok(ServerEvent::Exited(status)) = serde_json::from_str::<ServerEvent>(&text) {
                            let _ = self.exit.send(Some(status));
                            break;
                        }
                    }
                    Some(Ok(Message::Close(_))) | None => break,
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::debug!("exec stream ended: {e}");
                        break;
                    }
                },
                read = read_some(&mut self.stdin, &mut buf) => match read {
                    Ok(0) | Err(_) => {
                        self.stdin = None;
                        let close = serde_json::to_string(&ClientControl::CloseStdin).unwrap_or_default();
                        if self.ws.send(Message::text(close)).await.is_err() {
                            break;
                        }
                    }
                    Ok(n) => {
                        if self.ws.send(Message::binary(Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                            break;
                        }
                    }
                },
            }
        }
        let _ = self.ws.close(None).await;
    }

    async fn output(&mut self, mut data: Bytes) {
        if data.is_empty() {
            return;
        }
        let tag = data[0];
        let payload = data.split_off(1);
        let sink = match tag {
            exec::STDOUT => &mut self.stdout,
            exec::STDERR => &mut self.stderr,
            _ => return,
        };
        // A reader that was dropped no longer wants output: discard it instead of stalling
        // the other stream.
        if let Some(tx) = sink
            && tx.send(payload).await.is_err()
        {
            *sink = None;
        }
    }
}

/// Reads from `stdin` if it is still open; never resolves otherwise.
async fn read_some(stdin: &mut Option<DuplexStream>, buf: &mut [u8]) -> std::io::Result<usize> {
    match stdin {
        Some(s) => s.read(buf).await,
        None => std::future::pending().await,
    }
}

/// Moves bytes between a dial WebSocket and the user's end of a duplex pipe.
async fn dial_pump(mut ws: Ws, mut local: DuplexStream) {
    let mut buf = vec![0u8; CHUNK];
    let mut local_open = true;
    loop {
        tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(Message::Binary(data))) => {
                    if local.write_all(&data).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            read = local.read(&mut buf), if local_open => match read {
                Ok(0) | Err(_) => {
                    local_open = false;
                    let _ = ws.close(None).await;
                }
                Ok(n) => {
                    if ws.send(Message::binary(Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                        break;
                    }
                }
            },
        }
    }
    let _ = local.shutdown().await;
}

/// [`ProcessControl`] of a process started through an agent.
struct AgentProcess {
    client: Arc<AgentClient>,
    id: ProcId,
    exit: watch::Receiver<Option<ExitStatus>>,
}

#[async_trait]
impl ProcessControl for AgentProcess {
    async fn wait(&self) -> Result<ExitStatus> {
        let mut exit = self.exit.clone();
        // The exec stream delivers the exit status; if it breaks first, ask the agent.
        if let Ok(status) = exit.wait_for(Option::is_some).await
            && let Some(status) = *status
        {
            return Ok(status);
        }
        loop {
            if let Some(status) = self.client.wait_for(self.id, Duration::from_secs(30)).await? {
                return Ok(status);
            }
        }
    }

    async fn signal(&self, signal: Signal, group: bool) -> Result<()> {
        self.client.signal(self.id, signal, group).await
    }
}

/// A [`Node`] reached through its agent. Every agent-based backend uses this type.
pub struct AgentNode {
    client: Arc<AgentClient>,
    addresses: Vec<IpAddr>,
    interfaces: Vec<String>,
    root_dir: String,
}

impl AgentNode {
    /// A node served by `client`, reachable by peers at `addresses`, owning `root_dir`, with no
    /// known interfaces.
    pub fn new(client: Arc<AgentClient>, addresses: Vec<IpAddr>, root_dir: impl Into<String>) -> Self {
        Self::with_interfaces(client, addresses, Vec::new(), root_dir)
    }

    /// Like [`AgentNode::new`], with the node's interfaces on the cluster network (main first).
    pub fn with_interfaces(
        client: Arc<AgentClient>,
        addresses: Vec<IpAddr>,
        interfaces: Vec<String>,
        root_dir: impl Into<String>,
    ) -> Self {
        Self {
            client,
            addresses,
            interfaces,
            root_dir: root_dir.into(),
        }
    }

    /// The underlying agent client, for agent-only operations (faults, info).
    pub fn client(&self) -> &Arc<AgentClient> {
        &self.client
    }
}

#[async_trait]
impl Node for AgentNode {
    fn name(&self) -> &str {
        self.client.node()
    }

    fn addresses(&self) -> &[IpAddr] {
        &self.addresses
    }

    fn root_dir(&self) -> &str {
        &self.root_dir
    }

    fn interfaces(&self) -> &[String] {
        &self.interfaces
    }

    async fn start(&self, spec: ProcSpec) -> Result<Process> {
        self.client.exec(spec).await
    }

    async fn send_file(&self, path: &str, mode: u32, data: ByteReader) -> Result<u64> {
        self.client.write_file(path, mode, data).await
    }

    async fn read_file(&self, path: &str) -> Result<ByteReader> {
        self.client.read_file(path).await
    }

    async fn stat(&self, path: &str) -> Result<FileStat> {
        self.client.stat(path).await
    }

    async fn list_dir(&self, path: &str) -> Result<Vec<DirEntry>> {
        self.client.list_dir(path).await
    }

    async fn remove(&self, path: &str, recursive: bool) -> Result<()> {
        self.client.remove(path, recursive).await
    }

    async fn dial(&self, addr: &str) -> Result<BoxStream> {
        self.client.dial(addr).await
    }

    async fn stop(&self) -> Result<()> {
        self.client.shutdown().await
    }

    async fn inject_fault(&self, request: FaultRequest) -> Result<FaultInfo> {
        self.client.inject_fault(&request).await
    }

    async fn heal_fault(&self, id: &str) -> Result<bool> {
        Ok(self.client.heal_fault(id).await?.healed)
    }

    async fn list_faults(&self) -> Result<Vec<FaultInfo>> {
        self.client.list_faults().await
    }

    async fn heal_all_faults(&self) -> Result<Vec<String>> {
        self.client.heal_all_faults().await
    }

    async fn probe(&self) -> Result<ProbeReport> {
        self.client.probe().await
    }

    async fn signal_proc(&self, id: ProcId, signal: Signal, group: bool) -> Result<()> {
        self.client.signal(id, signal, group).await
    }

    async fn kill_all(&self, signal: Signal) -> Result<Vec<ProcId>> {
        self.client.kill_all(signal).await
    }

    async fn signal_target(&self, signal: Signal, target: SignalTarget) -> Result<Vec<u32>> {
        self.client.signal_target(signal, target).await
    }

    async fn restart_proc(&self, id: ProcId, request: RestartRequest) -> Result<ProcStarted> {
        self.client.restart(id, &request).await
    }

    async fn measure_serve(
        &self,
        request: chaos_proto::measure::MeasureServe,
    ) -> Result<chaos_proto::measure::MeasureServing> {
        self.client.measure_serve(&request).await
    }

    async fn measure_run(
        &self,
        request: chaos_proto::measure::MeasureRun,
    ) -> Result<chaos_proto::measure::MeasureReport> {
        self.client.measure_run(&request).await
    }
}
