//! What an authenticated client cannot do to the agent: pin its threads, grow its memory, or
//! hold its connections open (see `chaos_proto::limits`). Each test is an attack that once
//! worked, run against the real binary with the real limits.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chaos_proto::exec::ServerEvent;
use chaos_proto::fault::{FaultInfo, FaultRequest, FaultSpec, FreezeTarget};
use chaos_proto::limits::{
    BODY_IDLE_TIMEOUT_MS, BODY_MIN_PROGRESS, MAX_BLOCKING_FILE_OPS, MAX_JSON_BODY, MAX_PROC_SPEC,
    WS_FIRST_MESSAGE_TIMEOUT_MS,
};
use chaos_proto::{ApiError, ErrorKind, FileWritten, NodeInfo, OutputSpec, ProcSpec, ProcStarted};
use common::{Agent, KillOnDrop, WAIT, enc, path_str, proc_status, request_with, tls_connect};
use futures_util::{SinkExt, StreamExt};
use hyper::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

const MIB: u64 = 1024 * 1024;

/// The agent's peak resident memory may not exceed this while it refuses an oversized request
/// (an idle debug-build agent sits around 10 MiB).
const RSS_BOUND_KIB: u64 = 50 * 1024;

/// Agent arguments for tests that outlast the default 30 s heartbeat timeout (they send no
/// heartbeats).
const LONG_HEARTBEAT: &[&str] = &["--heartbeat-timeout", "10m"];

/// Milliseconds since the Unix epoch (the clock of the agent's `expires_ms`).
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// State letter of `pid` from `/proc/<pid>/stat` (`T` = stopped).
fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().next()?.chars().next()
}

/// The agent's peak resident set size in KiB. `VmHWM` rather than `VmRSS`: the claim is that
/// memory never grew, and a peak that was freed again (or a sample taken at the wrong moment)
/// would hide from `VmRSS`.
fn peak_rss_kib(agent: &Agent) -> u64 {
    proc_status(agent.child.id(), "VmHWM").expect("VmHWM of the agent")
}

/// A process spec of about `bytes` bytes of JSON: `true` with a huge environment (millions of
/// entries for tens of MiB, as the attack that once took the agent to 2 GB).
fn huge_spec(bytes: usize) -> String {
    let mut out = String::with_capacity(bytes + 64);
    out.push_str(r#"{"command":"true","env":{"#);
    let mut i = 0u64;
    while out.len() < bytes {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!(r#""E{i}":"x""#));
        i += 1;
    }
    out.push_str("}}");
    out
}

/// Whether `got` holds a whole HTTP reply: its head and `content-length` bytes of body.
fn complete_reply(got: &[u8]) -> bool {
    let text = String::from_utf8_lossy(got);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    head.lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")?
                .trim()
                .parse::<usize>()
                .ok()
        })
        .is_some_and(|len| body.len() >= len)
}

/// Reads the agent's reply until it is complete or the agent closes the connection; `None`
/// if neither happens within `bound`.
async fn read_reply(rd: &mut (impl tokio::io::AsyncRead + Unpin), bound: Duration) -> Option<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
            if complete_reply(&got) {
                break;
            }
        }
    };
    tokio::time::timeout(bound, read).await.ok()?;
    Some(String::from_utf8_lossy(&got).into_owned())
}

/// POSTs `body` on a fresh raw connection, writing it from another task while this one reads
/// the reply, and returns the reply (`None` if none came within [`WAIT`]). Raw rather than
/// through hyper: the agent answers an oversized body as soon as it passes the limit and closes
/// without reading the rest, so the client's write of the rest may fail — a client that only
/// reads after writing (hyper's) then reports "error writing a body" instead of the answer.
async fn post_raw(agent: &Agent, path: &str, body: Vec<u8>) -> Option<String> {
    let mut tls = tls_connect(agent.addr, &agent.client).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    let (mut rd, mut wr) = tokio::io::split(tls);
    let writer = tokio::spawn(async move {
        for chunk in body.chunks(MIB as usize) {
            if wr.write_all(chunk).await.is_err() {
                break;
            }
        }
    });
    let reply = read_reply(&mut rd, WAIT).await;
    writer.abort();
    reply
}

#[tokio::test]
async fn json_bodies_over_the_limit_are_refused_naming_it() {
    let agent = Agent::start(&[]);
    // 1.5 MiB: over MAX_JSON_BODY, under the 2 MB the agent used to accept.
    let body = huge_spec(MAX_JSON_BODY + MAX_JSON_BODY / 2);
    for path in ["/v1/procs", "/v1/faults", "/v1/procs/kill-all"] {
        let reply = post_raw(&agent, path, body.clone().into_bytes())
            .await
            .unwrap_or_else(|| panic!("{path}: the agent neither answered nor closed the connection"));
        let (head, json) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
        let err: ApiError = serde_json::from_str(json).unwrap_or_else(|_| panic!("{path}: {reply}"));
        assert!(head.starts_with("HTTP/1.1 400"), "{path}: {reply}");
        assert_eq!(err.kind, ErrorKind::InvalidRequest, "{path}: {err}");
        assert!(
            err.message.contains("MAX_JSON_BODY") && err.message.contains(&MAX_JSON_BODY.to_string()),
            "{path}: the limit is not named: {err}"
        );
    }

    // 60 MiB announced and sent: refused after the first MiB, not read (let alone parsed).
    let reply = post_raw(&agent, "/v1/procs", vec![b' '; (60 * MIB) as usize])
        .await
        .expect("the agent neither answered nor closed the connection");
    assert!(
        reply.starts_with("HTTP/1.1 400") && reply.contains("MAX_JSON_BODY"),
        "{reply}"
    );
    let peak = peak_rss_kib(&agent);
    assert!(
        peak < RSS_BOUND_KIB,
        "agent peak RSS {peak} KiB after a 60 MiB body"
    );
    let _: NodeInfo = agent.get("/v1/info").await;
}

/// Sends `spec` on a fresh exec WebSocket, as one frame or as `fragment`-byte frames of one
/// message, and returns the error event the agent answers with.
async fn refused_exec_spec(agent: &Agent, spec: String, fragment: Option<usize>) -> ApiError {
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    let ws = agent.ws("/v1/procs/exec").await.expect("exec upgrade");
    let (mut sink, mut stream) = ws.split();
    let sender = tokio::spawn(async move {
        let Some(size) = fragment else {
            let _ = sink.send(Message::text(spec)).await;
            return;
        };
        let bytes = bytes::Bytes::from(spec);
        let mut at = 0;
        while at < bytes.len() {
            let end = (at + size).min(bytes.len());
            let opcode = if at == 0 { Data::Text } else { Data::Continue };
            let frame = Frame::message(bytes.slice(at..end), OpCode::Data(opcode), end == bytes.len());
            if sink.send(Message::Frame(frame)).await.is_err() {
                return;
            }
            at = end;
        }
    });
    let text = tokio::time::timeout(WAIT, async {
        while let Some(msg) = stream.next().await {
            match msg {
                Ok(Message::Text(text)) => return Some(text),
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => {}
            }
        }
        None
    })
    .await
    .expect("no reply to the oversized spec")
    .expect("the agent closed without saying why");
    sender.abort();
    match serde_json::from_str::<ServerEvent>(text.as_str()).expect("a server event") {
        ServerEvent::Error(e) => e,
        other => panic!("expected an error event, got {other:?}"),
    }
}

/// One 60 MB exec spec (millions of environment entries) once took the agent from 0.17 to
/// 2 GB RSS, for good: it was sent in frames under the frame limit, and the whole message was
/// buffered and parsed. Now the WebSocket refuses it once it passes `MAX_PROC_SPEC`, whether in
/// one frame (refused from its header) or in many.
#[tokio::test]
async fn an_oversized_exec_spec_is_refused_without_being_buffered() {
    let agent = Agent::start(&[]);
    let spec = huge_spec(60 * MIB as usize);
    for fragment in [None, Some(256 * 1024)] {
        let e = refused_exec_spec(&agent, spec.clone(), fragment).await;
        assert_eq!(e.kind, ErrorKind::InvalidRequest, "{e}");
        assert!(
            e.message.contains("MAX_PROC_SPEC") && e.message.contains(&MAX_PROC_SPEC.to_string()),
            "frames of {fragment:?} bytes: the limit is not named: {e}"
        );
    }
    let peak = peak_rss_kib(&agent);
    eprintln!("peak RSS of the agent after refusing two 60 MiB exec specs: {peak} KiB");
    assert!(
        peak < RSS_BOUND_KIB,
        "agent peak RSS {peak} KiB after a 60 MiB spec"
    );
    let _: NodeInfo = agent.get("/v1/info").await;
}

/// A body trickled at one byte per 5 s never falls silent for long, so a plain idle timeout
/// would keep it forever: the agent wants `BODY_MIN_PROGRESS` bytes per
/// `BODY_IDLE_TIMEOUT_MS` of waiting.
#[tokio::test]
async fn a_trickled_body_is_cut_off() {
    let agent = Agent::start(LONG_HEARTBEAT);
    let window = Duration::from_millis(BODY_IDLE_TIMEOUT_MS);
    let target = agent.root().join("trickle.bin");
    let mut tls = tls_connect(agent.addr, &agent.client).await.unwrap();
    let head = format!(
        "PUT /v1/files?path={} HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n",
        enc(&path_str(&target))
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.flush().await.unwrap();
    let started = Instant::now();
    let (mut rd, mut wr) = tokio::io::split(tls);
    let trickler = tokio::spawn(async move {
        loop {
            if wr.write_all(b"x").await.is_err() || wr.flush().await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    });
    // Margin over the window: the agent's timer fires on a loaded 2-core machine late by far
    // less than this.
    let reply = read_reply(&mut rd, window + Duration::from_secs(10)).await;
    let elapsed = started.elapsed();
    trickler.abort();
    let reply =
        reply.unwrap_or_else(|| panic!("a body trickled at 1 byte/5 s was still open after {elapsed:?}"));
    assert!(
        elapsed >= window - Duration::from_secs(1),
        "cut off after {elapsed:?}, before the {window:?} window"
    );
    assert!(
        reply.starts_with("HTTP/1.1 400")
            && reply.contains("BODY_IDLE_TIMEOUT_MS")
            && reply.contains("BODY_MIN_PROGRESS"),
        "{reply}"
    );
    // The temporary file is removed off the runtime's workers once the request is dropped,
    // which may be just after the reply left.
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_dir(agent.root()).unwrap().next().is_some() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left: Vec<_> = std::fs::read_dir(agent.root())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "the cut-off upload left files behind: {left:?}");
}

/// A slow upload that keeps moving is not cut off, even when it takes longer than the window.
#[tokio::test]
async fn a_slow_but_moving_upload_completes() {
    let agent = Agent::start(LONG_HEARTBEAT);
    let window = Duration::from_millis(BODY_IDLE_TIMEOUT_MS);
    let gap = window / 2 + Duration::from_secs(1);
    let chunks = 3;
    let target = agent.root().join("slow.bin");
    let mut tls = tls_connect(agent.addr, &agent.client).await.unwrap();
    let head = format!(
        "PUT /v1/files?path={} HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
        enc(&path_str(&target)),
        chunks * BODY_MIN_PROGRESS
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    for i in 0..chunks {
        if i > 0 {
            tokio::time::sleep(gap).await;
        }
        tls.write_all(&vec![b'a' + i as u8; BODY_MIN_PROGRESS])
            .await
            .unwrap();
        tls.flush().await.unwrap();
    }
    assert!(
        started.elapsed() > window,
        "the upload was not slower than the window"
    );
    let reply = read_reply(&mut tls, WAIT)
        .await
        .expect("no reply to the slow upload");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let json = reply.split("\r\n\r\n").nth(1).unwrap_or_default();
    let written: FileWritten = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {reply}"));
    assert_eq!(written.bytes, (chunks * BODY_MIN_PROGRESS) as u64);
    assert_eq!(std::fs::metadata(&target).unwrap().len(), written.bytes);
}

/// An exec WebSocket that never sends its spec is closed after `WS_FIRST_MESSAGE_TIMEOUT_MS`,
/// pings or not.
#[tokio::test]
async fn an_exec_websocket_without_a_spec_is_closed() {
    let agent = Agent::start(&[]);
    let bound = Duration::from_millis(WS_FIRST_MESSAGE_TIMEOUT_MS);
    let mut ws = agent.ws("/v1/procs/exec").await.expect("exec upgrade");
    let started = Instant::now();
    let mut ping = tokio::time::interval(Duration::from_secs(2));
    let mut error = None;
    loop {
        tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(text))) => error = Some(text),
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
            _ = ping.tick() => {
                let _ = ws.send(Message::Ping(Default::default())).await;
            }
            () = tokio::time::sleep_until((started + bound + Duration::from_secs(5)).into()) => {
                panic!("the exec WebSocket was still open after {:?} without a spec", started.elapsed());
            }
        }
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed >= bound - Duration::from_millis(500),
        "closed after only {elapsed:?}"
    );
    let text = error.expect("closed without an error event");
    match serde_json::from_str::<ServerEvent>(text.as_str()).expect("a server event") {
        ServerEvent::Error(e) => assert!(e.message.contains("WS_FIRST_MESSAGE_TIMEOUT_MS"), "{e}"),
        other => panic!("expected an error event, got {other:?}"),
    }
}

/// One of the flood's clients: sends `GET`s of the FIFO on a keep-alive connection, one after
/// the other, until `stop`. A reply that does not come within a second makes it hang up and
/// reconnect, as the attack did — leaving the agent time to start the `open()` (a client that
/// hangs up at once is dropped before its handler runs). New connections only when needed: a
/// storm of TLS handshakes is a CPU load of its own, not the attack under test (and a reply
/// slowed down by a busy machine must not start one).
async fn flooder(
    addr: std::net::SocketAddr,
    client: Arc<rustls::ClientConfig>,
    request: Arc<str>,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
) {
    'connect: while !stop.load(Ordering::Relaxed) {
        let Ok(mut tls) = tls_connect(addr, &client).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        while !stop.load(Ordering::Relaxed) {
            if tls.write_all(request.as_bytes()).await.is_err() || tls.flush().await.is_err() {
                continue 'connect;
            }
            sent.fetch_add(1, Ordering::Relaxed);
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            let reply = async {
                loop {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return false,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                    if complete_reply(&got) {
                        return true;
                    }
                }
            };
            if !matches!(
                tokio::time::timeout(Duration::from_secs(1), reply).await,
                Ok(true)
            ) {
                continue 'connect;
            }
        }
    }
}

/// 600 clients at a time GET a FIFO (and hang up when no reply comes). Each such request used
/// to leave a blocking-pool thread in `open()` forever, its client long gone; past 512 the pool was full, and TTL heals and the
/// SIGTERM shutdown (which need it) waited behind them: a 5 s pause was still in place 39 s
/// later. Now a pause with a 2 s TTL heals within TTL + 1 s under the flood, SIGTERM exits
/// within 5 s, and the agent's threads stay bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_flood_neither_delays_a_ttl_heal_nor_blocks_shutdown() {
    const FLOODERS: u64 = 600;
    const TTL: Duration = Duration::from_secs(2);
    let mut agent = Agent::start(&[]);
    let pid = agent.child.id();
    let fifo = agent.root().join("flood.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let sleeper: ProcStarted = agent
        .post(
            "/v1/procs",
            &ProcSpec {
                stdout: OutputSpec::Null,
                stderr: OutputSpec::Null,
                ..ProcSpec::new("sleep", ["600"])
            },
        )
        .await;
    let _sleeper = KillOnDrop(sleeper.pid);

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let request: Arc<str> = format!(
        "GET /v1/files?path={} HTTP/1.1\r\nhost: x\r\n\r\n",
        enc(&path_str(&fifo))
    )
    .into();
    let mut flood = JoinSet::new();
    for _ in 0..FLOODERS {
        flood.spawn(flooder(
            agent.addr,
            agent.client.clone(),
            request.clone(),
            stop.clone(),
            sent.clone(),
        ));
    }
    let sampler = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut rss, mut threads) = (0, 0);
            while !stop.load(Ordering::Relaxed) {
                rss = rss.max(proc_status(pid, "VmRSS").unwrap_or(0));
                threads = threads.max(proc_status(pid, "Threads").unwrap_or(0));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (rss, threads)
        })
    };
    // The flood is on once every flooder has sent a request (on the old agent, the blocking
    // pool is full by then).
    let ramp = chaos_testkit::scaled(Duration::from_secs(60));
    let deadline = Instant::now() + ramp;
    while sent.load(Ordering::Relaxed) < FLOODERS {
        assert!(
            Instant::now() < deadline,
            "only {} FIFO requests sent in {ramp:?}",
            sent.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let request = FaultRequest {
        id: None,
        ttl_ms: TTL.as_millis() as u64,
        spec: FaultSpec::Freeze(FreezeTarget::Proc { id: sleeper.id }),
    };
    let (status, reply) = request_with(
        agent.addr,
        &agent.client,
        Method::POST,
        "/v1/faults",
        serde_json::to_vec(&request).unwrap().into(),
    )
    .await
    .unwrap_or_else(|e| panic!("injecting a pause under the FIFO flood: {e}"));
    assert!(
        status.is_success(),
        "{status}: {}",
        String::from_utf8_lossy(&reply)
    );
    let fault: FaultInfo = serde_json::from_slice(&reply).unwrap();
    // Judged against the agent's own expiry time (same clock): the reply itself may come late.
    if now_ms() + 100 < fault.expires_ms {
        while state(sleeper.pid) != Some('T') {
            assert!(
                now_ms() < fault.expires_ms,
                "the pause {} never stopped the process",
                fault.id
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    } else {
        eprintln!("the inject reply came after the pause's TTL; its effect was not seen");
    }
    // The bound is the claim under test, so it is not scaled: one second after the TTL is
    // ample for a timer and a SIGCONT even on a loaded 2-core machine.
    let healed_by = fault.expires_ms + 1000;
    while state(sleeper.pid) == Some('T') {
        assert!(
            now_ms() < healed_by,
            "the pause with a {TTL:?} TTL was still in place {} ms after it expired, under a FIFO \
             flood ({} requests sent)",
            now_ms().saturating_sub(fault.expires_ms),
            sent.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let heal_latency = now_ms() as i64 - fault.expires_ms as i64;
    let peak = peak_rss_kib(&agent);

    // SIGTERM with the flood still on.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let term = Instant::now();
    let exit = agent.wait_exit(Duration::from_secs(5));
    let exit_after = term.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (max_rss, max_threads) = sampler.await.unwrap();
    flood.shutdown().await;
    eprintln!(
        "FIFO flood: {} requests; pause healed {heal_latency} ms after its TTL; agent peak RSS \
         {peak} KiB (sampled VmRSS max {max_rss} KiB), at most {max_threads} threads; exited \
         {exit_after:?} after SIGTERM",
        sent.load(Ordering::Relaxed)
    );
    let exit = exit.expect("the agent did not exit within 5 s of SIGTERM under the flood");
    assert_eq!(exit.code(), Some(0));
    // Two runtime workers, at most MAX_BLOCKING_FILE_OPS file operations, and a few threads
    // of the agent's own (fault work, signal handling, idle pool threads).
    let thread_bound = MAX_BLOCKING_FILE_OPS as u64 + 32;
    assert!(
        max_threads <= thread_bound,
        "the agent ran {max_threads} threads under the flood (bound {thread_bound})"
    );
}
