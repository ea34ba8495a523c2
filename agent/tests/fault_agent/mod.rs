//! What the fault tests share: a PKI for one node, a `chaos-agent` process with a JSON client,
//! a throwaway cgroup, processes that show whether they run.

#![allow(dead_code)] // Each test binary uses a different subset.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chaos::certs::ClusterCa;
use chaos_proto::fault::{FaultInfo, FaultRequest, FaultSpec};
use chaos_proto::{ApiError, OutputSpec, ProcSpec, ProcStarted};
use hyper::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::common::{self, WAIT, request_with};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A CA and a node TLS directory whose certificate names `ip`.
pub struct Pki {
    pub ca: ClusterCa,
    pub node_dir: tempfile::TempDir,
}

impl Pki {
    pub fn new(ip: IpAddr) -> Self {
        let ca = ClusterCa::generate("agent-fault-test").expect("CA");
        let node = ca.issue_node("n1", &[ip], &[]).expect("node cert");
        let node_dir = tempfile::tempdir().expect("tempdir");
        node.write_node_dir(node_dir.path(), ca.cert_pem())
            .expect("node dir");
        Self { ca, node_dir }
    }
}

/// A `chaos-agent` process. SIGTERMed, then SIGKILLed, on drop.
pub struct TestAgent {
    pub child: Child,
    pub addr: SocketAddr,
    pub client: Arc<rustls::ClientConfig>,
    stderr: Arc<Mutex<String>>,
}

impl TestAgent {
    /// Starts an agent on loopback with `extra` arguments.
    pub fn start(pki: &Pki, root: &Path, extra: &[&str]) -> Self {
        let cmd = Self::command(&[], IpAddr::V4(Ipv4Addr::LOCALHOST), pki, root, extra);
        Self::spawn(cmd, pki, |mut cmd| cmd.spawn())
    }

    /// The command line of an agent listening on `ip`, run through `wrapper` (a program and its
    /// arguments that end by executing the rest, e.g. `unshare …`) when not empty.
    ///
    /// `CHAOS_TEST_AGENT_BIN` names another agent binary to run instead of this build's, e.g.
    /// an older one, to see these tests fail on the behaviour they guard against.
    pub fn command(wrapper: &[&str], ip: IpAddr, pki: &Pki, root: &Path, extra: &[&str]) -> Command {
        let bin = std::env::var_os("CHAOS_TEST_AGENT_BIN").unwrap_or_else(|| common::agent_bin().into());
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(&bin);
                cmd
            }
            None => Command::new(&bin),
        };
        cmd.arg("--listen")
            .arg(SocketAddr::new(ip, 0).to_string())
            .arg("--tls-dir")
            .arg(pki.node_dir.path())
            .arg("--root-dir")
            .arg(root)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Spawns `cmd` with `spawn` (which may enter a namespace first) and waits for the ready
    /// line.
    pub fn spawn(cmd: Command, pki: &Pki, spawn: impl FnOnce(Command) -> std::io::Result<Child>) -> Self {
        let mut child = spawn(cmd).expect("spawning chaos-agent");
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let err_pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err_pipe).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        let Ok(line) = rx.recv_timeout(WAIT) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "no ready line within {WAIT:?}; stderr:\n{}",
                stderr.lock().unwrap()
            );
        };
        let addr = line
            .strip_prefix(&format!("{} ", chaos_proto::READY_LINE_PREFIX))
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .expect("ready line address");
        let client = chaos::certs::client_config(pki.ca.cert_pem(), &pki.ca.issue_runner().unwrap()).unwrap();
        Self {
            child,
            addr,
            client,
            stderr,
        }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub async fn call(&self, method: Method, path: &str, body: Bytes) -> (StatusCode, Bytes) {
        request_with(self.addr, &self.client, method, path, body)
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}\nagent stderr:\n{}", self.stderr()))
    }

    /// A call expected to succeed, its JSON reply decoded.
    pub async fn ok<T: DeserializeOwned>(&self, method: Method, path: &str, body: &impl Serialize) -> T {
        let (status, reply) = self
            .call(method.clone(), path, serde_json::to_vec(body).unwrap().into())
            .await;
        assert!(
            status.is_success(),
            "{method} {path}: {status} {}",
            String::from_utf8_lossy(&reply)
        );
        serde_json::from_slice(&reply).expect("JSON reply")
    }

    /// A call expected to fail, its error decoded.
    pub async fn fails(&self, method: Method, path: &str, body: &impl Serialize) -> ApiError {
        let (status, reply) = self
            .call(method.clone(), path, serde_json::to_vec(body).unwrap().into())
            .await;
        assert!(
            !status.is_success(),
            "{method} {path} should fail: {}",
            String::from_utf8_lossy(&reply)
        );
        let e: ApiError = serde_json::from_slice(&reply).expect("ApiError body");
        assert_eq!(status.as_u16(), e.kind.http_status());
        e
    }

    pub async fn inject(&self, id: Option<&str>, ttl_ms: u64, spec: FaultSpec) -> FaultInfo {
        let req = FaultRequest {
            id: id.map(String::from),
            ttl_ms,
            spec,
        };
        self.ok(Method::POST, "/v1/faults", &req).await
    }

    pub async fn faults(&self) -> Vec<FaultInfo> {
        self.ok(Method::GET, "/v1/faults", &()).await
    }

    pub async fn start_proc(&self, spec: &ProcSpec) -> ProcStarted {
        self.ok(Method::POST, "/v1/procs", spec).await
    }

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
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            if self.wait_exit(Duration::from_secs(5)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        if std::thread::panicking() {
            eprintln!("--- agent stderr ---\n{}", self.stderr());
        }
    }
}

/// A process appending a line to `file` every 20 ms.
pub fn writer(file: &Path) -> ProcSpec {
    let script = format!("while :; do echo x >> '{}'; sleep 0.02; done", file.display());
    quiet(ProcSpec::new("sh", ["-c", script.as_str()]))
}

pub fn quiet(mut spec: ProcSpec) -> ProcSpec {
    spec.stdout = OutputSpec::Null;
    spec.stderr = OutputSpec::Null;
    spec
}

pub fn size(file: &Path) -> u64 {
    std::fs::metadata(file).map(|m| m.len()).unwrap_or(0)
}

/// Whether `file` grows within `window`.
pub async fn grows(file: &Path, window: Duration) -> bool {
    let before = size(file);
    tokio::time::sleep(window).await;
    size(file) > before
}

pub async fn wait_until(bound: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + bound;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A cgroup made for one test, removed (with any leftover children) on drop.
pub struct TestCgroup(pub PathBuf);

impl TestCgroup {
    pub fn create() -> Option<Self> {
        let root = Path::new("/sys/fs/cgroup/unified");
        if !root.join("cgroup.procs").exists() {
            chaos_testkit::skip(
                "faults (cgroup part)",
                "cgroup2",
                &format!("no cgroup v2 hierarchy at {}", root.display()),
            );
            return None;
        }
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = root.join(format!("chaos-agent-fault-test-{}-{n}", std::process::id()));
        if let Err(e) = std::fs::create_dir(&dir) {
            chaos_testkit::skip(
                "faults (cgroup part)",
                "cgroup2",
                &format!("cannot create a cgroup: {e}"),
            );
            return None;
        }
        Some(Self(dir))
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Thaw and kill everything inside, then remove the tree bottom-up, retrying while the
        // killed processes exit (bounded, so a stuck one cannot hang the test).
        let _ = std::fs::write(self.0.join("cgroup.freeze"), "0");
        let _ = std::fs::write(self.0.join("cgroup.kill"), "1");
        let deadline = Instant::now() + Duration::from_secs(5);
        while remove_tree(&self.0).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.0.exists() {
            eprintln!("could not remove test cgroup {}", self.0.display());
        }
    }
}

/// Removes the cgroup `dir` and its descendants, deepest first.
fn remove_tree(dir: &Path) -> std::io::Result<()> {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten().filter(|e| e.path().is_dir()) {
            let _ = std::fs::write(entry.path().join("cgroup.freeze"), "0");
            remove_tree(&entry.path())?;
        }
    }
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
