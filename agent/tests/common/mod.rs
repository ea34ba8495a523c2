//! Test helpers: start the real `chaos-agent` binary with a freshly minted TLS directory and
//! talk to it over mTLS with a plain hyper / tungstenite client.

#![allow(dead_code)] // Each test binary uses a different subset.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chaos::certs::{ClusterCa, Identity};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;

/// Bound of every network wait in the tests.
pub const WAIT: Duration = Duration::from_secs(10);

/// A cluster CA plus a node TLS directory for 127.0.0.1.
pub struct Pki {
    pub ca: ClusterCa,
    pub node_dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Self {
        let ca = ClusterCa::generate("agent-test").expect("CA");
        let node = ca
            .issue_node("n1", &["127.0.0.1".parse().unwrap()], &[])
            .expect("node cert");
        let node_dir = tempfile::tempdir().expect("tempdir");
        node.write_node_dir(node_dir.path(), ca.cert_pem())
            .expect("node dir");
        Self { ca, node_dir }
    }

    /// A client configuration presenting `identity` and trusting the cluster CA.
    pub fn client_with(&self, identity: &Identity) -> Arc<rustls::ClientConfig> {
        chaos::certs::client_config(self.ca.cert_pem(), identity).expect("client config")
    }

    /// The runner's normal client configuration.
    pub fn client(&self) -> Arc<rustls::ClientConfig> {
        self.client_with(&self.ca.issue_runner().expect("runner cert"))
    }
}

/// A running agent; killed (SIGTERM, then SIGKILL) when dropped, so a failing test leaks no
/// agent and — through the agent's own shutdown — no process it started.
pub struct Agent {
    pub child: Child,
    pub addr: SocketAddr,
    pub pki: Pki,
    pub client: Arc<rustls::ClientConfig>,
    pub root: tempfile::TempDir,
    stderr: Arc<Mutex<String>>,
}

/// Collects a child's stderr in the background.
fn collect(mut reader: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let out = Arc::new(Mutex::new(String::new()));
    let sink = out.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    out
}

pub fn agent_bin() -> &'static str {
    env!("CARGO_BIN_EXE_chaos-agent")
}

impl Agent {
    /// Starts an agent on 127.0.0.1:0 with `extra` arguments and waits for its ready line.
    pub fn start(extra: &[&str]) -> Self {
        let pki = Pki::new();
        let root = tempfile::tempdir().expect("tempdir");
        let mut cmd = Command::new(agent_bin());
        cmd.arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--tls-dir")
            .arg(pki.node_dir.path())
            .arg("--root-dir")
            .arg(root.path())
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawning chaos-agent");
        let stderr = collect(child.stderr.take().unwrap());
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep draining so the agent never blocks on a full stdout.
            for _ in lines {}
        });
        let line = match rx.recv_timeout(WAIT) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "no ready line within {WAIT:?}; stderr:\n{}",
                    stderr.lock().unwrap()
                );
            }
        };
        let addr = line
            .strip_prefix(&format!("{} ", chaos_proto::READY_LINE_PREFIX))
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .expect("ready line address");
        let client = pki.client();
        Self {
            child,
            addr,
            pki,
            client,
            root,
            stderr,
        }
    }

    /// What the agent logged so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits up to `bound` for the agent to exit.
    pub fn wait_exit(&mut self, bound: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + bound;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub async fn request(&self, method: Method, path: &str, body: impl Into<Bytes>) -> (StatusCode, Bytes) {
        request_with(self.addr, &self.client, method, path, body.into())
            .await
            .expect("request")
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> T {
        let (status, body) = self.request(Method::GET, path, Bytes::new()).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "GET {path}: {}",
            String::from_utf8_lossy(&body)
        );
        serde_json::from_slice(&body).expect("JSON reply")
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> T {
        let (status, reply) = self
            .request(Method::POST, path, serde_json::to_vec(body).unwrap())
            .await;
        assert!(
            status.is_success(),
            "POST {path}: {status} {}",
            String::from_utf8_lossy(&reply)
        );
        let reply = if reply.is_empty() {
            Bytes::from_static(b"null")
        } else {
            reply
        };
        serde_json::from_slice(&reply).expect("JSON reply")
    }

    pub async fn ws(&self, path: &str) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
        ws_with(self.addr, &self.client, path).await
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SIGTERM lets the agent kill what it started before it exits.
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- agent stderr ---\n{}", self.stderr());
        }
    }
}

pub type Ws = WebSocketStream<TlsStream<TcpStream>>;

/// TCP + TLS to the agent at `addr` with `client`.
pub async fn tls_connect(
    addr: SocketAddr,
    client: &Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let fut = async {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        TlsConnector::from(client.clone())
            .connect(ServerName::IpAddress(addr.ip().into()), tcp)
            .await
    };
    tokio::time::timeout(WAIT, fut)
        .await
        .map_err(|_| std::io::Error::other("TLS connect timed out"))?
}

/// One request on a fresh connection; `Err` for transport failures (refused TLS included).
pub async fn request_with(
    addr: SocketAddr,
    client: &Arc<rustls::ClientConfig>,
    method: Method,
    path: &str,
    body: Bytes,
) -> Result<(StatusCode, Bytes), String> {
    let fut = async {
        let tls = tls_connect(addr, client)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", addr.to_string())
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(WAIT, fut)
        .await
        .map_err(|_| "request timed out".to_string())?
}

/// Opens a WebSocket to `path` (with query) on a fresh mTLS connection.
pub async fn ws_with(
    addr: SocketAddr,
    client: &Arc<rustls::ClientConfig>,
    path: &str,
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let tls = tls_connect(addr, client).await?;
    let url = format!("wss://{addr}{path}");
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(url, tls))
        .await
        .map_err(|_| std::io::Error::other("WebSocket handshake timed out"))??;
    Ok(ws)
}

/// Percent-encodes a query value.
pub fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Whether `pid` is gone or a zombie (dead, waiting for its parent to reap it).
pub fn is_dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => {
            // The state follows the parenthesized command name, which may contain spaces.
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next());
            matches!(state, Some("Z") | Some("X"))
        }
    }
}

/// Pids of every live process whose process group is `pgid`.
pub fn group_members(pgid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // Fields after the name: state, ppid, pgrp, …
        if fields.get(2).and_then(|p| p.parse::<u32>().ok()) == Some(pgid)
            && !matches!(fields.first(), Some(&"Z"))
        {
            out.push(pid);
        }
    }
    out
}

pub fn path_str(p: &Path) -> String {
    p.to_str().expect("UTF-8 path").to_string()
}

/// A numeric field of `/proc/<pid>/status`: `VmHWM` and `VmRSS` in KiB, `Threads` as a count.
pub fn proc_status(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Kills a process group on drop (SIGKILL works on stopped processes too), so a failing test
/// leaves no frozen process behind.
pub struct KillOnDrop(pub u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(-(self.0 as i32)),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}
