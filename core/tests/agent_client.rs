//! The agent client against a real `chaos-agent` on loopback (no root needed), and its bounds
//! against agents that are down or silent.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chaos::agent_client::{AgentClient, AgentNode, Timeouts};
use chaos::certs::{ClusterCa, client_config};
use chaos::proto::{ErrorKind, READY_LINE_PREFIX};
use chaos::{Error, Node, NodeExt, ProcSpec};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// A real agent on 127.0.0.1, killed on drop.
struct LoopbackAgent {
    child: tokio::process::Child,
    node: AgentNode,
    _dir: tempfile::TempDir,
}

impl Drop for LoopbackAgent {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn agent_binary() -> Option<std::path::PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let bin = exe.parent()?.parent()?.join("chaos-agent");
    bin.exists().then_some(bin)
}

async fn start_agent() -> Option<LoopbackAgent> {
    let Some(bin) = agent_binary() else {
        chaos_testkit::skip(
            "agent_client",
            "agent",
            &"chaos-agent binary not built (run `cargo build -p chaos-agent`)",
        );
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::generate("loopback").unwrap();
    let ip = "127.0.0.1".parse().unwrap();
    ca.issue_node("n1", &[ip], &[])
        .unwrap()
        .write_node_dir(&dir.path().join("tls"), ca.cert_pem())
        .unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let mut child = tokio::process::Command::new(bin)
        .args(["--listen", "127.0.0.1:0", "--tls-dir"])
        .arg(dir.path().join("tls"))
        .arg("--root-dir")
        .arg(&root)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let addr = line
        .strip_prefix(READY_LINE_PREFIX)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let tls = client_config(ca.cert_pem(), &ca.issue_runner().unwrap()).unwrap();
    let client = Arc::new(AgentClient::new("n1", addr, tls));
    let node = AgentNode::new(client, vec![ip], root.to_string_lossy().into_owned());
    Some(LoopbackAgent {
        child,
        node,
        _dir: dir,
    })
}

#[tokio::test]
async fn exec_streams_stdin_stdout_and_exit_status() {
    let Some(agent) = start_agent().await else { return };
    let node = &agent.node;
    let info = node.client().info().await.unwrap();
    assert_eq!(info.protocol_version, chaos::proto::PROTOCOL_VERSION);

    let data: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    let out = node
        .run_spec(ProcSpec::new("cat", Vec::<String>::new()), Some(data.clone()))
        .await
        .unwrap();
    assert!(out.status.success(), "{:?}", out.status);
    assert_eq!(out.stdout, data);

    let out = node.run("sh", ["-c", "echo err >&2; exit 7"]).await.unwrap();
    assert_eq!(out.status.code, Some(7));
    assert_eq!(out.stderr, b"err\n");
}

#[tokio::test]
async fn errors_name_the_missing_command_and_file() {
    let Some(agent) = start_agent().await else { return };
    let node = &agent.node;
    let err = node
        .run("no-such-command-xyz", Vec::<String>::new())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), Some(ErrorKind::CommandNotFound), "{err}");
    assert!(err.to_string().contains("no-such-command-xyz"), "{err}");

    let missing = format!("{}/missing", node.root_dir());
    let err = node.read_bytes(&missing).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
}

#[tokio::test]
async fn dial_tunnels_tcp_and_reports_unreachable_targets() {
    let Some(agent) = start_agent().await else { return };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 5];
        sock.read_exact(&mut buf).await.unwrap();
        sock.write_all(&buf).await.unwrap();
    });
    let mut stream = agent.node.dial(&target.to_string()).await.unwrap();
    stream.write_all(b"hello").await.unwrap();
    let mut back = [0u8; 5];
    stream.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"hello");

    // A port nothing listens on: the agent says so instead of upgrading.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let err = agent.node.dial(&closed.to_string()).await.err().unwrap();
    assert_eq!(err.kind(), Some(ErrorKind::Unreachable), "{err}");
}

fn runner_tls() -> Arc<rustls::ClientConfig> {
    let ca = ClusterCa::generate("nobody").unwrap();
    client_config(ca.cert_pem(), &ca.issue_runner().unwrap()).unwrap()
}

#[tokio::test]
async fn an_agent_that_is_down_gives_an_error_naming_the_address() {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let client = AgentClient::new("n9", closed, runner_tls());
    let started = Instant::now();
    let err = client.info().await.unwrap_err();
    assert!(matches!(err, Error::Unreachable { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("n9") && msg.contains(&closed.to_string()), "{msg}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_silent_agent_times_out_within_the_bound() {
    // Accepts TCP but never speaks TLS.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock);
        }
    });
    let timeouts = Timeouts {
        connect: Duration::from_millis(300),
        request: Duration::from_millis(500),
    };
    let client = Arc::new(AgentClient::with_timeouts("n9", addr, runner_tls(), timeouts));
    let started = Instant::now();
    let err = client.info().await.unwrap_err();
    assert!(
        matches!(err, Error::Timeout { .. } | Error::Unreachable { .. }),
        "{err}"
    );
    let err = AgentNode::new(client, vec![], "/")
        .start(ProcSpec::new("true", Vec::<String>::new()))
        .await;
    assert!(matches!(err, Err(Error::Timeout { .. })), "{:?}", err.err());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
}
