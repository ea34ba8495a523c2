//! Throughput of the agent over mTLS on loopback, and its idle memory.
//!
//! `cargo bench -p chaos-agent --bench exec_throughput` prints MB/s for:
//! - exec stdout read by a bare WebSocket client (the agent's own cost),
//! - exec stdout read through the runner's `AgentClient` (what tests see),
//! - a file download and upload,
//!
//! and the agent's resident memory idle and after the runs.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chaos::agent_client::AgentClient;
use chaos_proto::ProcSpec;
use chaos_proto::exec::{STDOUT, ServerEvent};
use common::{Agent, enc, path_str};
use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::Message;

const BYTES: u64 = 2 << 30;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn report(what: &str, bytes: u64, elapsed: Duration) {
    let mbs = bytes as f64 / elapsed.as_secs_f64() / 1e6;
    println!(
        "{what:<40} {:>6} MiB in {:>6.2?}  {mbs:>8.0} MB/s",
        bytes >> 20,
        elapsed
    );
}

fn zeros_spec() -> ProcSpec {
    ProcSpec::new("head", ["-c", &BYTES.to_string(), "/dev/zero"])
}

async fn raw_exec(agent: &Agent) {
    let mut ws = agent.ws("/v1/procs/exec").await.expect("exec");
    ws.send(Message::text(serde_json::to_string(&zeros_spec()).unwrap()))
        .await
        .unwrap();
    let t0 = Instant::now();
    let mut got = 0u64;
    let mut frames = 0u64;
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(d))) => {
                assert_eq!(d[0], STDOUT);
                got += d.len() as u64 - 1;
                frames += 1;
            }
            Some(Ok(Message::Text(t))) => {
                if let Ok(ServerEvent::Exited(status)) = serde_json::from_str(t.as_str()) {
                    assert!(status.success(), "{status}");
                    break;
                }
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(got, BYTES);
    report("exec stdout, bare WebSocket client", got, t0.elapsed());
    println!("{:<40} {} bytes/frame on average", "", got / frames.max(1));
}

async fn client_exec(agent: &Agent) {
    let client = Arc::new(AgentClient::new("n1", agent.addr, agent.client.clone()));
    let t0 = Instant::now();
    let mut process = client.exec(zeros_spec()).await.expect("exec");
    let mut stdout = process.stdout.take().unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0u64;
    loop {
        let n = stdout.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    assert!(process.wait().await.unwrap().success());
    assert_eq!(got, BYTES);
    report("exec stdout, chaos AgentClient", got, t0.elapsed());
}

async fn files(agent: &Agent) {
    let size = 1u64 << 30;
    let path = agent.root().join("big.bin");
    let p = enc(&path_str(&path));

    let chunk = Bytes::from(vec![0x5au8; 1 << 20]);
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(
        (0..size >> 20).map(move |_| Ok::<_, std::io::Error>(hyper::body::Frame::data(chunk.clone()))),
    ));
    let tls = common::tls_connect(agent.addr, &agent.client).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let t0 = Instant::now();
    let req = hyper::Request::put(format!("/v1/files?path={p}"))
        .header("host", "x")
        .body(body)
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert!(resp.status().is_success());
    resp.into_body().collect().await.unwrap();
    report("file upload (PUT)", size, t0.elapsed());

    let req = hyper::Request::get(format!("/v1/files?path={p}"))
        .header("host", "x")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let tls = common::tls_connect(agent.addr, &agent.client).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let t0 = Instant::now();
    let mut body = sender.send_request(req).await.unwrap().into_body();
    let mut got = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            got += data.len() as u64;
        }
    }
    assert_eq!(got, size);
    report("file download (GET)", size, t0.elapsed());
    std::fs::remove_file(&path).unwrap();
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs this too, without it: stay quick.
    if !std::env::args().any(|a| a == "--bench") {
        println!("exec_throughput: run with `cargo bench` to measure");
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let agent = Agent::start(&[]);
        tokio::time::sleep(Duration::from_millis(500)).await;
        println!("agent idle RSS: {} KiB", rss_kib(agent.child.id()));
        let _: chaos_proto::NodeInfo = agent.get("/v1/info").await;
        println!("agent RSS after one request: {} KiB", rss_kib(agent.child.id()));
        raw_exec(&agent).await;
        client_exec(&agent).await;
        files(&agent).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        println!("agent RSS after the runs: {} KiB", rss_kib(agent.child.id()));
    });
}
