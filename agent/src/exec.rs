//! `GET /v1/procs/exec`: start a process and stream its stdio over a WebSocket (see
//! [`chaos_proto::exec`]).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use bytes::{BufMut, Bytes, BytesMut};
use chaos_proto::exec::{ClientControl, STDERR, STDOUT, ServerEvent};
use chaos_proto::limits::{MAX_PROC_SPEC, MAX_WS_MESSAGE, WS_FIRST_MESSAGE_TIMEOUT_MS};
use chaos_proto::{ApiError, ErrorKind, ExitStatus, ProcId, ProcSpec};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::ChildStdin;
use tokio::sync::{mpsc, watch};

use crate::api::{Agent, Failure};

/// Largest chunk of output read at once (and so the largest frame payload sent).
const CHUNK: usize = 256 * 1024;

/// How long the client has to send the process spec after the upgrade (pings do not count).
const SPEC_TIMEOUT: Duration = Duration::from_millis(WS_FIRST_MESSAGE_TIMEOUT_MS);

/// Bound of telling a refused client why, so one that does not read cannot hold the session.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(5);

// A spec within its own limit must fit in one WebSocket message.
const _: () = assert!(MAX_WS_MESSAGE >= MAX_PROC_SPEC);

/// After the process exited, how long its output pipes may stay silent before they count as
/// drained. Its own output is already in the pipe at exit; only descendants that inherited
/// the pipe (daemons started in the background) can keep it open, and they must not hold the
/// exit report back forever.
const DRAIN_IDLE: Duration = Duration::from_millis(500);

/// Limits of the WebSockets the agent accepts (exec and dial): a larger frame is refused from
/// its header and a larger message as soon as its fragments pass the limit, so neither is ever
/// buffered whole.
pub(crate) fn configure(ws: WebSocketUpgrade) -> WebSocketUpgrade {
    ws.max_message_size(MAX_WS_MESSAGE).max_frame_size(MAX_WS_MESSAGE)
}

/// The upgrade handler.
pub(crate) async fn handler(
    State(agent): State<Arc<Agent>>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, Failure> {
    Ok(configure(ws?).on_upgrade(move |socket| session(agent, socket)))
}

fn event(ev: &ServerEvent) -> Message {
    // Serializing these plain structs cannot fail; an empty frame would only confuse a client.
    Message::text(serde_json::to_string(ev).unwrap_or_default())
}

async fn read_spec(socket: &mut WebSocket) -> Result<ProcSpec, ApiError> {
    let invalid = |m: String| ApiError::new(ErrorKind::InvalidRequest, m);
    let deadline = tokio::time::Instant::now() + SPEC_TIMEOUT;
    loop {
        let msg = tokio::time::timeout_at(deadline, socket.recv())
            .await
            .map_err(|_| {
                invalid(format!(
                    "no process spec within {WS_FIRST_MESSAGE_TIMEOUT_MS} ms (WS_FIRST_MESSAGE_TIMEOUT_MS) \
                 of the upgrade"
                ))
            })?;
        match msg {
            Some(Ok(Message::Text(text))) => return crate::api::parse_spec(text.as_bytes()),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(other)) => {
                // Named, not printed: a binary message can be a MiB long.
                let got = match other {
                    Message::Binary(data) => format!("a binary message of {} bytes", data.len()),
                    Message::Close(_) => "a close frame".to_string(),
                    _ => "another kind of message".to_string(),
                };
                return Err(invalid(format!(
                    "expected a text message with the process spec, got {got}"
                )));
            }
            Some(Err(e)) => {
                return Err(invalid(format!(
                    "reading the process spec (at most {MAX_PROC_SPEC} bytes, MAX_PROC_SPEC): {e}"
                )));
            }
            None => return Err(invalid("connection closed before the process spec".into())),
        }
    }
}

async fn session(agent: Arc<Agent>, mut socket: WebSocket) {
    let spawned = match read_spec(&mut socket)
        .await
        .and_then(|spec| agent.procs.spawn(spec))
    {
        Ok(spawned) => spawned,
        Err(e) => {
            tracing::info!("exec refused: {e}");
            let refuse = async {
                socket.send(event(&ServerEvent::Error(e))).await?;
                socket.close().await
            };
            let _ = tokio::time::timeout(REFUSAL_TIMEOUT, refuse).await;
            return;
        }
    };
    let entry = spawned.entry;
    let started = ServerEvent::Started(chaos_proto::ProcStarted {
        id: entry.id,
        pid: entry.pid,
    });
    let client_alive = socket.send(event(&started)).await.is_ok();
    let (sink, stream) = socket.split();
    let input = tokio::spawn(input_loop(agent.clone(), entry.id, stream, spawned.stdin));
    let output = Output { sink, client_alive };
    output
        .run(spawned.stdout, spawned.stderr, entry.exit_watch())
        .await;
    entry.stream_ended();
    input.abort();
}

/// Client → process: stdin bytes and control messages.
async fn input_loop(
    agent: Arc<Agent>,
    id: ProcId,
    mut stream: SplitStream<WebSocket>,
    stdin: Option<ChildStdin>,
) {
    // A separate writer keeps a child that does not read its stdin from blocking control
    // messages; the bounded channel still pushes back on a client that sends too much.
    let mut stdin_tx = stdin.map(|stdin| {
        let (tx, rx) = mpsc::channel::<Bytes>(8);
        tokio::spawn(stdin_writer(stdin, rx));
        tx
    });
    while let Some(msg) = stream.next().await {
        match msg {
            Ok(Message::Binary(data)) => match &stdin_tx {
                Some(tx) => {
                    if tx.send(data).await.is_err() {
                        tracing::debug!(id, "stdin closed by the process; dropping further input");
                        stdin_tx = None;
                    }
                }
                None => tracing::debug!(
                    id,
                    "stdin is not a pipe (or closed); dropped {} bytes",
                    data.len()
                ),
            },
            Ok(Message::Text(text)) => match serde_json::from_str::<ClientControl>(text.as_str()) {
                Ok(ClientControl::CloseStdin) => stdin_tx = None,
                Ok(ClientControl::Signal { signal, group }) => {
                    if let Err(e) = agent.procs.signal(id, signal, group) {
                        tracing::warn!(id, "signal from exec stream: {e}");
                    }
                }
                Err(e) => tracing::warn!(id, "ignoring bad control message: {e}"),
            },
            Ok(Message::Close(_)) => break,
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(id, "exec stream read ended: {e}");
                break;
            }
        }
    }
    // Dropping the sender closes stdin once the queued bytes are written.
}

async fn stdin_writer(mut stdin: ChildStdin, mut rx: mpsc::Receiver<Bytes>) {
    while let Some(data) = rx.recv().await {
        if stdin.write_all(&data).await.is_err() {
            return;
        }
    }
}

/// One output pipe and the buffer its frames are built in. The tag byte goes first so the
/// payload is read straight into the frame: no copy, and the allocation is reused once the
/// previous frame has been written.
struct Pipe<R> {
    reader: R,
    buf: BytesMut,
    tag: u8,
}

impl<R: AsyncRead + Unpin> Pipe<R> {
    fn new(reader: R, tag: u8) -> Self {
        Self {
            reader,
            buf: BytesMut::new(),
            tag,
        }
    }

    /// The next frame, or `None` at EOF. Cancel-safe: a cancelled read loses no data.
    async fn frame(&mut self) -> std::io::Result<Option<Bytes>> {
        self.buf.clear();
        self.buf.reserve(1 + CHUNK);
        self.buf.put_u8(self.tag);
        let n = self.reader.read_buf(&mut (&mut self.buf).limit(CHUNK)).await?;
        if n == 0 {
            return Ok(None);
        }
        Ok(Some(self.buf.split().freeze()))
    }

    /// Reads and discards until EOF, so writers that inherited the pipe never block or get
    /// SIGPIPE.
    async fn drain(mut self) {
        let mut buf = vec![0u8; 64 * 1024];
        while matches!(self.reader.read(&mut buf).await, Ok(n) if n > 0) {}
    }
}

/// Reads the next frame of an optional pipe; never resolves for a pipe that is gone.
async fn next_frame<R: AsyncRead + Unpin>(pipe: &mut Option<Pipe<R>>) -> std::io::Result<Option<Bytes>> {
    match pipe {
        Some(p) => p.frame().await,
        None => std::future::pending().await,
    }
}

/// Process → client: output frames, then the exit report.
struct Output {
    sink: SplitSink<WebSocket, Message>,
    client_alive: bool,
}

impl Output {
    async fn send(&mut self, msg: Message) {
        if self.client_alive && self.sink.send(msg).await.is_err() {
            // The process keeps running; its output is now read and discarded.
            tracing::debug!("exec client went away");
            self.client_alive = false;
        }
    }

    async fn run<O, E>(
        mut self,
        stdout: Option<O>,
        stderr: Option<E>,
        mut exit: watch::Receiver<Option<ExitStatus>>,
    ) where
        O: AsyncRead + Unpin + Send + 'static,
        E: AsyncRead + Unpin + Send + 'static,
    {
        let mut out = stdout.map(|r| Pipe::new(r, STDOUT));
        let mut err = stderr.map(|r| Pipe::new(r, STDERR));
        let mut status = *exit.borrow_and_update();
        let idle = tokio::time::sleep(DRAIN_IDLE);
        tokio::pin!(idle);
        if status.is_some() {
            idle.as_mut().reset(tokio::time::Instant::now() + DRAIN_IDLE);
        }
        while status.is_none() || out.is_some() || err.is_some() {
            tokio::select! {
                frame = next_frame(&mut out) => match frame {
                    Ok(Some(frame)) => self.send(Message::Binary(frame)).await,
                    _ => out = None,
                },
                frame = next_frame(&mut err) => match frame {
                    Ok(Some(frame)) => self.send(Message::Binary(frame)).await,
                    _ => err = None,
                },
                changed = exit.changed(), if status.is_none() => {
                    status = *exit.borrow_and_update();
                    if changed.is_err() && status.is_none() {
                        // Cannot happen (the reaper records before it drops the sender), but
                        // an unknown status beats waiting forever.
                        status = Some(ExitStatus { code: None, signal: None, duration_us: 0 });
                    }
                },
                () = &mut idle, if status.is_some() => {
                    tracing::debug!("output pipes still open after exit (held by descendants); reporting exit");
                    break;
                },
            }
            if status.is_some() {
                idle.as_mut().reset(tokio::time::Instant::now() + DRAIN_IDLE);
            }
        }
        if let Some(p) = out {
            tokio::spawn(p.drain());
        }
        if let Some(p) = err {
            tokio::spawn(p.drain());
        }
        if let Some(status) = status {
            self.send(event(&ServerEvent::Exited(status))).await;
        }
        if self.client_alive {
            let _ = tokio::time::timeout(Duration::from_secs(5), self.sink.close()).await;
        }
    }
}
