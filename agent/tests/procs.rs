//! Processes: the exec WebSocket and the detached process API.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use chaos_proto::exec::{ClientControl, STDERR, STDOUT, ServerEvent};
use chaos_proto::{
    ApiError, ErrorKind, ExitStatus, OutputSpec, ProcInfo, ProcSpec, ProcStarted, Signal, SignalRequest,
    StdinSpec, WaitReply,
};
use common::{Agent, Ws, group_members, is_dead, path_str};
use futures_util::{SinkExt, StreamExt};
use hyper::Method;
use tokio_tungstenite::tungstenite::Message;

fn text<T: serde::Serialize>(value: &T) -> Message {
    Message::text(serde_json::to_string(value).unwrap())
}

/// Opens an exec stream for `spec`; returns the socket and the first server event.
async fn exec(agent: &Agent, spec: &ProcSpec) -> (Ws, ServerEvent) {
    let mut ws = agent.ws("/v1/procs/exec").await.expect("exec upgrade");
    ws.send(text(spec)).await.unwrap();
    let first = next_event(&mut ws).await;
    (ws, first)
}

async fn next_event(ws: &mut Ws) -> ServerEvent {
    loop {
        match tokio::time::timeout(common::WAIT, ws.next())
            .await
            .expect("event within bound")
        {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(t.as_str()).expect("server event"),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a text event, got {other:?}"),
        }
    }
}

async fn started(agent: &Agent, spec: &ProcSpec) -> (Ws, ProcStarted) {
    match exec(agent, spec).await {
        (ws, ServerEvent::Started(s)) => (ws, s),
        (_, other) => panic!("expected started, got {other:?}"),
    }
}

/// Reads output frames until the exit event; returns (stdout, stderr, status).
async fn collect(ws: &mut Ws) -> (Vec<u8>, Vec<u8>, ExitStatus) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    loop {
        match tokio::time::timeout(common::WAIT, ws.next())
            .await
            .expect("frame within bound")
        {
            Some(Ok(Message::Binary(data))) => match data.first() {
                Some(&STDOUT) => out.extend_from_slice(&data[1..]),
                Some(&STDERR) => err.extend_from_slice(&data[1..]),
                other => panic!("bad tag {other:?}"),
            },
            Some(Ok(Message::Text(t))) => match serde_json::from_str(t.as_str()).expect("server event") {
                ServerEvent::Exited(status) => return (out, err, status),
                other => panic!("unexpected event {other:?}"),
            },
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("stream ended before the exit event: {other:?}"),
        }
    }
}

fn all_bytes(repeat: usize) -> Vec<u8> {
    (0..repeat).flat_map(|_| 0u8..=255).collect()
}

#[tokio::test]
async fn exec_demuxes_binary_stdout_and_stderr() {
    let agent = Agent::start(&[]);
    let data = all_bytes(1000);
    let file = agent.root().join("bytes.bin");
    std::fs::write(&file, &data).unwrap();
    let f = path_str(&file);
    let spec = ProcSpec::new("sh", ["-c", &format!("cat {f}; cat {f} >&2; cat {f}")]);
    let (mut ws, _) = started(&agent, &spec).await;
    let (out, err, status) = collect(&mut ws).await;
    assert_eq!(out.len(), 2 * data.len());
    assert!(out == [data.clone(), data.clone()].concat(), "stdout differs");
    assert!(err == data, "stderr differs");
    assert!(status.success(), "{status}");
    // After the exit event the server closes.
    let end = tokio::time::timeout(common::WAIT, ws.next()).await.unwrap();
    assert!(matches!(end, Some(Ok(Message::Close(_))) | None), "{end:?}");
}

#[tokio::test]
async fn exec_stdin_round_trips_through_cat() {
    let agent = Agent::start(&[]);
    let mut spec = ProcSpec::new("cat", Vec::<String>::new());
    spec.stdin = StdinSpec::Pipe;
    let (ws, _) = started(&agent, &spec).await;
    // 4 MiB: more than every pipe buffer on the way, so stdin and stdout must flow together.
    let data = all_bytes(16 * 1024);
    let (mut sink, mut stream) = ws.split();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        for chunk in sent.chunks(100_000) {
            sink.send(Message::binary(Bytes::copy_from_slice(chunk)))
                .await
                .unwrap();
        }
        sink.send(text(&ClientControl::CloseStdin)).await.unwrap();
        sink
    });
    let mut out = Vec::new();
    let status = loop {
        match tokio::time::timeout(common::WAIT, stream.next())
            .await
            .expect("frame within bound")
        {
            Some(Ok(Message::Binary(d))) => {
                assert_eq!(d[0], STDOUT);
                out.extend_from_slice(&d[1..]);
            }
            Some(Ok(Message::Text(t))) => match serde_json::from_str(t.as_str()).unwrap() {
                ServerEvent::Exited(s) => break s,
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
    };
    let _sink = writer.await.unwrap();
    assert_eq!(out.len(), data.len());
    assert!(out == data, "stdin did not round-trip");
    assert_eq!(status.code, Some(0));
}

#[tokio::test]
async fn exec_reports_exit_codes_signals_and_missing_commands() {
    let agent = Agent::start(&[]);

    let (mut ws, _) = started(&agent, &ProcSpec::new("sh", ["-c", "exit 7"])).await;
    let (_, _, status) = collect(&mut ws).await;
    assert_eq!((status.code, status.signal), (Some(7), None));

    let (mut ws, s) = started(&agent, &ProcSpec::new("sleep", ["100"])).await;
    ws.send(text(&ClientControl::Signal {
        signal: Signal::TERM,
        group: false,
    }))
    .await
    .unwrap();
    let (_, _, status) = collect(&mut ws).await;
    assert_eq!((status.code, status.signal), (None, Some(15)), "{status}");
    assert!(status.duration_us > 0);
    let reply: WaitReply = agent
        .post(&format!("/v1/procs/{}/wait?timeout_ms=1000", s.id), &())
        .await;
    assert_eq!(reply.exit, Some(status));

    match exec(
        &agent,
        &ProcSpec::new("no-such-command-xyz", Vec::<String>::new()),
    )
    .await
    {
        (_, ServerEvent::Error(e)) => {
            assert_eq!(e.kind, ErrorKind::CommandNotFound);
            assert!(e.message.contains("no-such-command-xyz"), "{e}");
        }
        (_, other) => panic!("expected an error, got {other:?}"),
    }

    let mut spec = ProcSpec::new("true", Vec::<String>::new());
    spec.cwd = Some("/nonexistent/dir".into());
    match exec(&agent, &spec).await {
        (_, ServerEvent::Error(e)) => {
            assert_eq!(e.kind, ErrorKind::NotFound);
            assert!(e.message.contains("/nonexistent/dir"), "{e}");
        }
        (_, other) => panic!("expected an error, got {other:?}"),
    }

    // Not a process spec.
    let mut ws = agent.ws("/v1/procs/exec").await.unwrap();
    ws.send(Message::text("{\"nope\":1}")).await.unwrap();
    match next_event(&mut ws).await {
        ServerEvent::Error(e) => assert_eq!(e.kind, ErrorKind::InvalidRequest),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn exec_uses_env_and_cwd() {
    let agent = Agent::start(&[]);
    let mut spec = ProcSpec::new("sh", ["-c", "echo \"$CHAOS_X\"; pwd; echo \"${HOME:-unset}\""]);
    spec.env.insert("CHAOS_X".into(), "hello world".into());
    spec.env.insert("PATH".into(), "/usr/bin:/bin".into());
    spec.env_clear = true;
    let (mut ws, _) = started(&agent, &spec).await;
    let (out, _, status) = collect(&mut ws).await;
    assert!(status.success());
    let root = std::fs::canonicalize(agent.root()).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        format!("hello world\n{}\nunset\n", root.display())
    );
}

#[tokio::test]
async fn exec_process_survives_client_disconnect_and_background_children_do_not_block_exit() {
    let agent = Agent::start(&[]);
    // 50 MB of output nobody reads: the agent must keep draining it, or head would block
    // (or die of SIGPIPE) instead of exiting 0.
    let (ws, s) = started(
        &agent,
        &ProcSpec::new("sh", ["-c", "head -c 50000000 /dev/zero && exit 5"]),
    )
    .await;
    drop(ws);
    let reply: WaitReply = agent
        .post(&format!("/v1/procs/{}/wait?timeout_ms=20000", s.id), &())
        .await;
    assert_eq!(reply.exit.map(|e| e.code), Some(Some(5)), "{reply:?}");

    // A background child keeps stdout open after the shell exits; the exit is still reported.
    let t0 = Instant::now();
    let (mut ws, s) = started(&agent, &ProcSpec::new("sh", ["-c", "sleep 30 & echo hi"])).await;
    let (out, _, status) = collect(&mut ws).await;
    assert_eq!(out, b"hi\n");
    assert!(status.success());
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "exit report held back {:?}",
        t0.elapsed()
    );
    let survivors = group_members(s.pid);
    assert_eq!(
        survivors.len(),
        1,
        "the background sleep still runs: {survivors:?}"
    );
}

fn detached(command: &str, args: &[&str]) -> ProcSpec {
    let mut spec = ProcSpec::new(command, args.iter().copied());
    spec.stdout = OutputSpec::Null;
    spec.stderr = OutputSpec::Null;
    spec
}

async fn api_error(agent: &Agent, method: Method, path: &str, body: impl Into<Bytes>) -> (u16, ApiError) {
    let (status, body) = agent.request(method, path, body).await;
    let err = serde_json::from_slice(&body)
        .unwrap_or_else(|_| panic!("{status}: {}", String::from_utf8_lossy(&body)));
    (status.as_u16(), err)
}

#[tokio::test]
async fn detached_processes_write_files_and_can_be_signalled_and_waited() {
    let agent = Agent::start(&[]);
    let out = agent.root().join("logs/deep/out.txt");
    let err = agent.root().join("logs/err.txt");
    std::fs::create_dir_all(err.parent().unwrap()).unwrap();
    std::fs::write(&err, "before\n").unwrap();
    let mut spec = ProcSpec::new("sh", ["-c", "echo out; echo err >&2; exit 3"]);
    spec.stdout = OutputSpec::File {
        path: path_str(&out),
        append: false,
    };
    spec.stderr = OutputSpec::File {
        path: path_str(&err),
        append: true,
    };
    let s: ProcStarted = agent.post("/v1/procs", &spec).await;
    let reply: WaitReply = agent
        .post(&format!("/v1/procs/{}/wait?timeout_ms=5000", s.id), &())
        .await;
    assert_eq!(reply.exit.and_then(|e| e.code), Some(3));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "out\n");
    assert_eq!(std::fs::read_to_string(&err).unwrap(), "before\nerr\n");

    // Piped stdio needs the WebSocket.
    let (status, e) = api_error(
        &agent,
        Method::POST,
        "/v1/procs",
        serde_json::to_vec(&ProcSpec::new("true", Vec::<String>::new())).unwrap(),
    )
    .await;
    assert_eq!((status, e.kind), (400, ErrorKind::InvalidRequest), "{e}");
    assert!(e.message.contains("stdout"), "{e}");

    // A tree: the leader and a background child, killed as a group.
    let tree: ProcStarted = agent
        .post("/v1/procs", &detached("sh", &["-c", "sleep 100 & sleep 100"]))
        .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut members = group_members(tree.pid);
    while members.len() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        members = group_members(tree.pid);
    }
    assert!(members.len() >= 2, "{members:?}");
    let reply: WaitReply = agent
        .post(&format!("/v1/procs/{}/wait?timeout_ms=100", tree.id), &())
        .await;
    assert_eq!(reply.exit, None, "still running");
    let list: Vec<ProcInfo> = agent.get("/v1/procs").await;
    let info = list.iter().find(|p| p.id == tree.id).expect("listed");
    assert_eq!((info.pid, info.exit), (tree.pid, None));
    assert!(info.started_ms > 0);
    assert!(list.iter().any(|p| p.id == s.id && p.exit.is_some()));

    let _: () = agent
        .post(
            &format!("/v1/procs/{}/signal", tree.id),
            &SignalRequest {
                signal: Signal::TERM,
                group: true,
            },
        )
        .await;
    let reply: WaitReply = agent
        .post(&format!("/v1/procs/{}/wait?timeout_ms=5000", tree.id), &())
        .await;
    assert_eq!(reply.exit.and_then(|e| e.signal), Some(15));
    let deadline = Instant::now() + Duration::from_secs(2);
    while !members.iter().all(|&p| is_dead(p)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        members.iter().all(|&p| is_dead(p)),
        "group members survived SIGTERM to the group"
    );

    // Signalling an exited leader, an unknown id, an out-of-range signal.
    let body = serde_json::to_vec(&SignalRequest {
        signal: Signal::KILL,
        group: false,
    })
    .unwrap();
    let (status, e) = api_error(
        &agent,
        Method::POST,
        &format!("/v1/procs/{}/signal", tree.id),
        body.clone(),
    )
    .await;
    assert_eq!((status, e.kind), (409, ErrorKind::Conflict), "{e}");
    let (status, e) = api_error(&agent, Method::POST, "/v1/procs/9999/signal", body).await;
    assert_eq!((status, e.kind), (404, ErrorKind::NotFound), "{e}");
    let body = serde_json::to_vec(&SignalRequest {
        signal: Signal(65),
        group: false,
    })
    .unwrap();
    let (status, e) = api_error(&agent, Method::POST, &format!("/v1/procs/{}/signal", s.id), body).await;
    assert_eq!((status, e.kind), (400, ErrorKind::InvalidRequest), "{e}");
    let (status, e) = api_error(
        &agent,
        Method::POST,
        "/v1/procs/9999/wait?timeout_ms=10",
        Bytes::new(),
    )
    .await;
    assert_eq!((status, e.kind), (404, ErrorKind::NotFound), "{e}");

    // A real-time signal reaches the process.
    let rt: ProcStarted = agent.post("/v1/procs", &detached("sleep", &["100"])).await;
    let _: () = agent
        .post(
            &format!("/v1/procs/{}/signal", rt.id),
            &SignalRequest {
                signal: Signal(36),
                group: false,
            },
        )
        .await;
    let reply: WaitReply = agent
        .post(&format!("/v1/procs/{}/wait?timeout_ms=5000", rt.id), &())
        .await;
    assert_eq!(reply.exit.and_then(|e| e.signal), Some(36));
}

#[tokio::test]
async fn an_over_limit_spec_is_refused_naming_the_limit() {
    let agent = Agent::start(&[]);
    // Small enough for any request-body limit, too many entries for a spec.
    let args = vec!["a"; chaos_proto::limits::MAX_PROC_ARGS + 1];
    let spec = detached("true", &args);
    let (status, e) = api_error(
        &agent,
        Method::POST,
        "/v1/procs",
        serde_json::to_vec(&spec).unwrap(),
    )
    .await;
    assert_eq!((status, e.kind), (400, ErrorKind::InvalidRequest), "{e}");
    assert!(
        e.message.contains("MAX_PROC_ARGS")
            && e.message
                .contains(&chaos_proto::limits::MAX_PROC_ARGS.to_string()),
        "{e}"
    );

    // Through the exec WebSocket: too many environment entries in a message small enough for
    // the transport (an over-size spec is refused from its frame header: tests/limits.rs).
    let mut spec = ProcSpec::new("true", Vec::<String>::new());
    for i in 0..=chaos_proto::limits::MAX_PROC_ARGS {
        spec.env.insert(format!("E{i}"), String::new());
    }
    assert!(serde_json::to_vec(&spec).unwrap().len() < chaos_proto::limits::MAX_WS_MESSAGE);
    match exec(&agent, &spec).await {
        (_, ServerEvent::Error(e)) => {
            assert_eq!(e.kind, ErrorKind::InvalidRequest, "{e}");
            assert!(e.message.contains("MAX_PROC_ARGS"), "{e}");
        }
        (_, other) => panic!("an over-limit spec started: {other:?}"),
    }
    let list: Vec<ProcInfo> = agent.get("/v1/procs").await;
    assert!(list.is_empty(), "nothing was started: {list:?}");
}

/// `GET /v1/procs`: the reply's size, its entries and the table size the agent reports.
async fn list_with_total(agent: &Agent) -> (usize, Vec<ProcInfo>, Option<usize>) {
    use http_body_util::{BodyExt, Full};
    let tls = common::tls_connect(agent.addr, &agent.client).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get("/v1/procs")
        .header("host", agent.addr.to_string())
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = tokio::time::timeout(common::WAIT, sender.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert!(resp.status().is_success());
    let total = resp
        .headers()
        .get(chaos_proto::PROCS_TOTAL_HEADER)
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (body.len(), serde_json::from_slice(&body).unwrap(), total)
}

#[tokio::test]
async fn six_hundred_exited_processes_leave_the_table_and_its_reply_bounded() {
    use chaos_proto::limits::{MAX_EXITED_PROC_SPEC_BYTES, MAX_EXITED_PROCS, MAX_PROCS_REPLY_BYTES};
    let agent = std::sync::Arc::new(Agent::start(&[]));
    // Each spec carries 128 KiB (in arguments of 32 KiB: one string may not exceed 128 KiB):
    // 600 of them would hold 77 MB if the table kept them all.
    const COUNT: usize = 600;
    let chunk = "x".repeat(32 * 1024);
    let spec = detached("true", &[chunk.as_str(); 4]);
    let spec_bytes = spec.size();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..8 {
        let (agent, spec) = (agent.clone(), spec.clone());
        tasks.spawn(async move {
            for _ in (worker..COUNT).step_by(8) {
                let _: ProcStarted = agent.post("/v1/procs", &spec).await;
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let (bytes, list, total) = loop {
        let (bytes, list, total) = list_with_total(&agent).await;
        if list.iter().all(|p| p.exit.is_some()) || Instant::now() > deadline {
            break (bytes, list, total);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        list.iter().all(|p| p.exit.is_some()),
        "{} still running",
        list.iter().filter(|p| p.exit.is_none()).count()
    );
    let total = total.expect("the reply says how many processes the table holds");
    let kept = (MAX_EXITED_PROC_SPEC_BYTES / spec_bytes).min(MAX_EXITED_PROCS);
    assert!(
        total <= kept,
        "the table holds {total} exited processes, more than {kept}"
    );
    assert!(total > 0, "the newest exited processes stay listed");
    assert_eq!(list.len(), total, "under the reply's bounds nothing is left out");
    assert!(bytes <= MAX_PROCS_REPLY_BYTES, "a {bytes}-byte reply");
    // The newest first: the last process started is listed.
    let newest = list.iter().map(|p| p.id).max().unwrap();
    assert_eq!(newest, COUNT as u64);
    let rss = std::fs::read_to_string(format!("/proc/{}/status", agent.child.id()))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .map(str::to_string)
        .unwrap_or_default();
    eprintln!(
        "after {COUNT} exited processes of {spec_bytes} bytes: {total} kept, reply {bytes} bytes, agent {rss}"
    );
}

/// A FIFO as a process's stdin or stdout must not block the agent: `open` of a FIFO without a
/// peer blocks, and it ran on a runtime worker — two such requests froze the whole agent (no
/// reply, SIGTERM ignored). Now it is refused at once, saying how to let the process open it.
#[tokio::test]
async fn a_fifo_as_stdio_never_blocks_the_agent() {
    let agent = Agent::start(&[]);
    let fifo = agent.root().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    for field in ["stdin", "stdout", "stdout"] {
        let mut spec = detached("cat", &[]);
        match field {
            "stdin" => {
                spec.stdin = StdinSpec::File {
                    path: path_str(&fifo),
                }
            }
            _ => {
                spec.stdout = OutputSpec::File {
                    path: path_str(&fifo),
                    append: false,
                }
            }
        }
        let (status, e) = tokio::time::timeout(
            common::WAIT,
            api_error(
                &agent,
                Method::POST,
                "/v1/procs",
                serde_json::to_vec(&spec).unwrap(),
            ),
        )
        .await
        .unwrap_or_else(|_| panic!("a FIFO as {field} is answered within the bound"));
        assert_eq!((status, e.kind), (400, ErrorKind::InvalidRequest), "{field}: {e}");
        assert!(
            e.message.contains("is a fifo") && e.message.contains("sh -c"),
            "{field}: {e}"
        );
    }
    // The agent still answers.
    let info: chaos_proto::NodeInfo = tokio::time::timeout(common::WAIT, agent.get("/v1/info"))
        .await
        .expect("the agent answers");
    assert_eq!(info.protocol_version, chaos_proto::PROTOCOL_VERSION);
}
