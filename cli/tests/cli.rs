//! The `chaos` binary, run as a user would: certificates on disk, usable for mutual TLS, and
//! clear one-line errors with exit code 2 on bad input.

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use chaos::certs::{self, Identity};
use chaos::proto::tls_files;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivateKeyDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

fn chaos(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_chaos"))
        .args(args)
        .output()
        .expect("running chaos")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn init(dir: &Path) {
    let out = chaos(&["certs", "init", dir.to_str().unwrap()]);
    assert!(out.status.success(), "certs init failed: {}", stderr(&out));
}

#[test]
fn help_and_version() {
    let out = chaos(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("certs") && help.contains("version") && help.contains("--verbose"),
        "{help}"
    );
    let out = chaos(&["version"]);
    assert!(out.status.success());
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(version.contains(env!("CARGO_PKG_VERSION")), "{version}");
    assert!(
        version.contains(&format!("protocol {}", chaos::proto::PROTOCOL_VERSION)),
        "{version}"
    );
}

#[test]
fn certs_init_writes_the_ca_and_runner_identity_and_refuses_to_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cluster");
    init(&dir);
    for (file, want) in [
        (tls_files::CA_CERT, 0o644),
        (tls_files::CA_KEY, 0o600),
        (tls_files::RUNNER_CERT, 0o644),
        (tls_files::RUNNER_KEY, 0o600),
    ] {
        assert_eq!(mode(&dir.join(file)), want, "{file}");
    }
    let ca_before = std::fs::read_to_string(dir.join(tls_files::CA_CERT)).unwrap();

    let out = chaos(&["certs", "init", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("--force") && err.contains("ca.pem"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.join(tls_files::CA_CERT)).unwrap(),
        ca_before,
        "CA overwritten"
    );

    let out = chaos(&["certs", "init", "--force", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_ne!(
        std::fs::read_to_string(dir.join(tls_files::CA_CERT)).unwrap(),
        ca_before
    );
}

#[test]
fn certs_issue_without_a_ca_names_the_missing_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("nothing-here");
    let out = chaos(&[
        "certs",
        "issue",
        dir.to_str().unwrap(),
        "--name",
        "n1",
        "--ip",
        "10.0.0.2",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains(&dir.join(tls_files::CA_CERT).display().to_string()),
        "{err}"
    );
    assert!(err.contains("chaos certs init"), "{err}");
    assert!(!dir.join("nodes").exists());
}

#[test]
fn certs_issue_rejects_bad_arguments() {
    let tmp = tempfile::tempdir().unwrap();
    init(tmp.path());
    let dir = tmp.path().to_str().unwrap();
    for (args, needle) in [
        (vec!["--name", "../evil", "--ip", "10.0.0.2"], "--name"),
        (vec!["--name", "n1", "--ip", "not-an-ip"], "not-an-ip"),
        (vec!["--name", "n1"], "--ip"),
    ] {
        let mut full = vec!["certs", "issue", dir];
        full.extend(args);
        let out = chaos(&full);
        assert_eq!(out.status.code(), Some(2), "{full:?}");
        assert!(stderr(&out).contains(needle), "{full:?}: {}", stderr(&out));
    }
}

/// Builds the server side of mutual TLS from a node TLS directory, as the agent does.
fn server_config(node_dir: &Path) -> Arc<rustls::ServerConfig> {
    let ca_pem = std::fs::read_to_string(node_dir.join(tls_files::CA_CERT)).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs::parse_certs(&ca_pem, Path::new("ca.pem")).unwrap() {
        roots.add(cert).unwrap();
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        certs::crypto_provider(),
    )
    .build()
    .unwrap();
    let node_pem = std::fs::read_to_string(node_dir.join(tls_files::NODE_CERT)).unwrap();
    let chain = certs::parse_certs(&node_pem, Path::new("node.pem")).unwrap();
    let key = PrivateKeyDer::from_pem_file(node_dir.join(tls_files::NODE_KEY)).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(certs::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    Arc::new(config)
}

/// Runs one mutual-TLS exchange between a server using `node_dir` and the runner identity in
/// `ca_dir`; returns the handshake's error, if any.
async fn mtls_exchange(node_dir: &Path, ca_dir: &Path, server_ip: IpAddr) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(server_config(node_dir));
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 5];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        tls.write_all(&buf).await.map_err(|e| e.to_string())?;
        tls.shutdown().await.map_err(|e| e.to_string())
    });
    let ca_pem = std::fs::read_to_string(ca_dir.join(tls_files::CA_CERT)).unwrap();
    let runner = Identity::load_runner(ca_dir).unwrap();
    let connector = tokio_rustls::TlsConnector::from(certs::client_config(&ca_pem, &runner).unwrap());
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let client = async {
        let mut tls = connector
            .connect(ServerName::IpAddress(server_ip.into()), tcp)
            .await
            .map_err(|e| e.to_string())?;
        tls.write_all(b"hello").await.map_err(|e| e.to_string())?;
        let mut echo = [0u8; 5];
        tls.read_exact(&mut echo).await.map_err(|e| e.to_string())?;
        assert_eq!(&echo, b"hello");
        Ok::<_, String>(())
    };
    let result = tokio::time::timeout(Duration::from_secs(10), client)
        .await
        .expect("handshake within bound");
    server.abort();
    result
}

#[tokio::test]
async fn issued_node_certificates_work_for_mutual_tls() {
    let tmp = tempfile::tempdir().unwrap();
    let ca_dir = tmp.path();
    init(ca_dir);
    let ca = ca_dir.to_str().unwrap();
    let out = chaos(&[
        "certs",
        "issue",
        ca,
        "--name",
        "n1",
        "--ip",
        "127.0.0.1",
        "10.9.9.9",
        "--dns",
        "n1.test",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let node_dir = ca_dir.join("nodes/n1");
    assert_eq!(mode(&node_dir.join(tls_files::NODE_KEY)), 0o600);
    assert_eq!(mode(&node_dir.join(tls_files::NODE_CERT)), 0o644);
    mtls_exchange(&node_dir, ca_dir, "127.0.0.1".parse().unwrap())
        .await
        .expect("mTLS with the issued cert");

    // The certificate names only its own addresses.
    let other_out = tmp.path().join("elsewhere");
    let out = chaos(&[
        "certs",
        "issue",
        ca,
        "--name",
        "n2",
        "--ip",
        "10.0.0.7",
        "--out",
        other_out.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = mtls_exchange(&other_out, ca_dir, "127.0.0.1".parse().unwrap())
        .await
        .expect_err("wrong IP accepted");
    assert!(err.to_lowercase().contains("certificate"), "{err}");

    // A node directory from another CA is not trusted by this runner.
    let foreign = tempfile::tempdir().unwrap();
    init(foreign.path());
    let out = chaos(&[
        "certs",
        "issue",
        foreign.path().to_str().unwrap(),
        "--name",
        "n1",
        "--ip",
        "127.0.0.1",
    ]);
    assert!(out.status.success());
    let err = mtls_exchange(
        &foreign.path().join("nodes/n1"),
        ca_dir,
        "127.0.0.1".parse().unwrap(),
    )
    .await
    .expect_err("foreign CA accepted");
    assert!(err.to_lowercase().contains("certificate"), "{err}");

    // Re-issuing into an existing node directory needs --force.
    let out = chaos(&["certs", "issue", ca, "--name", "n1", "--ip", "127.0.0.1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
}

/// The agent binary next to `chaos`, when the workspace built it.
fn agent_binary() -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_BIN_EXE_chaos")).with_file_name("chaos-agent");
    path.is_file().then_some(path)
}

#[tokio::test]
async fn chaos_agent_serves_with_an_issued_node_directory() {
    let Some(agent) = agent_binary() else {
        chaos_testkit::skip(
            "chaos_agent_serves_with_an_issued_node_directory",
            "agent",
            &"chaos-agent is not built next to chaos (cargo build -p chaos-agent)",
        );
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    init(tmp.path());
    let ca = tmp.path().to_str().unwrap();
    let out = chaos(&["certs", "issue", ca, "--name", "n1", "--ip", "127.0.0.1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let node_dir = tmp.path().join("nodes/n1");

    let mut child = tokio::process::Command::new(agent)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--tls-dir",
            node_dir.to_str().unwrap(),
            "--heartbeat-timeout",
            "10s",
        ])
        .arg("--root-dir")
        .arg(tmp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(10), stdout.read_line(&mut line))
        .await
        .expect("agent ready")
        .unwrap();
    let addr: SocketAddr = line
        .trim()
        .strip_prefix(chaos::proto::READY_LINE_PREFIX)
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .trim()
        .parse()
        .unwrap();

    let ca_pem = std::fs::read_to_string(tmp.path().join(tls_files::CA_CERT)).unwrap();
    let runner = Identity::load_runner(tmp.path()).unwrap();
    let client =
        chaos::agent_client::AgentClient::new("n1", addr, certs::client_config(&ca_pem, &runner).unwrap());
    let info = client.info().await.expect("info over mTLS");
    assert_eq!(info.protocol_version, chaos::proto::PROTOCOL_VERSION);
    client.shutdown().await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("agent exits")
        .unwrap();
    assert!(status.success(), "{status:?}");
}
