//! Mutual TLS, start-up errors and basic endpoints of the real agent binary.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chaos::certs::{ClusterCa, Identity};
use chaos_proto::{ApiError, ErrorKind, NodeInfo};
use common::{Agent, Pki, request_with};
use hyper::{Method, StatusCode};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose,
};
use time::OffsetDateTime;

#[tokio::test]
async fn mtls_refuses_bad_clients_and_serves_the_runner() {
    let agent = Agent::start(&[]);

    // A TCP client that never starts the handshake must not hold up anyone else.
    let _silent = tokio::net::TcpStream::connect(agent.addr).await.unwrap();

    // No client certificate at all.
    let mut roots = rustls::RootCertStore::empty();
    for cert in chaos::certs::parse_certs(agent.pki.ca.cert_pem(), std::path::Path::new("ca")).unwrap() {
        roots.add(cert).unwrap();
    }
    let anonymous = Arc::new(
        rustls::ClientConfig::builder_with_provider(chaos::certs::crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    // A certificate signed by another cluster's CA.
    let other_ca = ClusterCa::generate("intruder").unwrap();
    let foreign = agent.pki.client_with(&other_ca.issue_runner().unwrap());
    // A certificate of the right CA whose validity ended yesterday.
    let now = OffsetDateTime::now_utc();
    let expired = agent.pki.client_with(
        &agent
            .pki
            .ca
            .issue_runner_valid(now - time::Duration::days(2), now - time::Duration::days(1))
            .unwrap(),
    );

    for (name, client) in [
        ("no client cert", &anonymous),
        ("foreign CA", &foreign),
        ("expired cert", &expired),
    ] {
        let result = request_with(agent.addr, client, Method::GET, "/v1/info", Bytes::new()).await;
        assert!(result.is_err(), "{name}: the agent answered {result:?}");
    }

    // The failed handshakes did not affect the runner's connections.
    let info: NodeInfo = agent.get("/v1/info").await;
    assert_eq!(info.pid, agent.child.id());
    assert_eq!(info.protocol_version, chaos_proto::PROTOCOL_VERSION);
    assert_eq!(info.agent_version, env!("CARGO_PKG_VERSION"));
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(info.kernel, release.trim());
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(info.hostname, hostname.trim());
    assert!(
        info.addresses.iter().all(|a| !a.is_loopback()),
        "{:?}",
        info.addresses
    );

    let log = agent.stderr();
    assert!(
        log.contains("TLS handshake failed"),
        "handshake failures are logged:\n{log}"
    );
}

/// The cluster CA as an rcgen issuer, read back from the files the runner writes.
fn cluster_issuer(pki: &Pki) -> Issuer<'static, KeyPair> {
    let dir = tempfile::tempdir().unwrap();
    pki.ca.write(dir.path()).unwrap();
    let key_pem = std::fs::read_to_string(dir.path().join(chaos_proto::tls_files::CA_KEY)).unwrap();
    let key = KeyPair::from_pem(&key_pem).unwrap();
    Issuer::from_ca_cert_pem(pki.ca.cert_pem(), key).unwrap()
}

fn params(name: &str, usages: Vec<ExtendedKeyUsagePurpose>) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.extended_key_usages = usages;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params
}

/// A client identity for `params`, signed by `issuer`, presenting `chain` after its own
/// certificate.
fn identity(params: CertificateParams, issuer: &Issuer<'_, KeyPair>, chain: &str) -> Identity {
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    Identity {
        cert_pem: format!("{}{chain}", cert.pem()),
        key_pem: key.serialize_pem(),
    }
}

/// The cluster CA has `pathlen:0`, which webpki does not enforce for a trust anchor: a leaf
/// under an intermediate signed by the CA used to be accepted. Only leaves issued directly by
/// the CA, carrying the clientAuth usage, may connect.
#[tokio::test]
async fn only_client_certificates_issued_directly_with_client_auth_are_accepted() {
    let agent = Agent::start(&[]);
    let ca = cluster_issuer(&agent.pki);

    let mut rogue = params("rogue intermediate", Vec::new());
    rogue.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    rogue.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let rogue_key = KeyPair::generate().unwrap();
    let rogue_pem = rogue.signed_by(&rogue_key, &ca).unwrap().pem();
    let rogue = Issuer::new(rogue, rogue_key);
    let via_intermediate = identity(
        params(
            "leaf of an intermediate",
            vec![ExtendedKeyUsagePurpose::ClientAuth],
        ),
        &rogue,
        &rogue_pem,
    );
    // A node's own certificate: issued directly, but for servers only.
    let server_only = agent
        .pki
        .ca
        .issue_node("n2", &["127.0.0.1".parse().unwrap()], &[])
        .unwrap();
    let no_usage = identity(params("no extended key usage", Vec::new()), &ca, "");
    let mut ca_as_client = params("a CA as client", vec![ExtendedKeyUsagePurpose::ClientAuth]);
    ca_as_client.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let ca_as_client = identity(ca_as_client, &ca, "");

    for (name, id) in [
        ("leaf under an intermediate CA", &via_intermediate),
        ("server-auth-only certificate", &server_only),
        ("certificate without extended key usage", &no_usage),
        ("CA certificate", &ca_as_client),
    ] {
        let client = agent.pki.client_with(id);
        let result = request_with(agent.addr, &client, Method::GET, "/v1/info", Bytes::new()).await;
        assert!(result.is_err(), "{name}: the agent answered {result:?}");
    }

    // What the runner really presents still works, and directly issued clientAuth leaves too.
    let info: NodeInfo = agent.get("/v1/info").await;
    assert_eq!(info.pid, agent.child.id());
    let direct = identity(
        params("direct", vec![ExtendedKeyUsagePurpose::ClientAuth]),
        &ca,
        "",
    );
    let (status, _) = request_with(
        agent.addr,
        &agent.pki.client_with(&direct),
        Method::GET,
        "/v1/info",
        Bytes::new(),
    )
    .await
    .expect("a directly issued clientAuth leaf");
    assert_eq!(status, StatusCode::OK);

    let log = agent.stderr();
    assert!(
        log.contains("issued directly by the cluster CA"),
        "the refusal of the intermediate says why:\n{log}"
    );
    assert!(
        log.contains("clientAuth"),
        "the refusal of the usage says why:\n{log}"
    );
}

#[tokio::test]
async fn unknown_routes_and_bad_requests_get_api_errors() {
    let agent = Agent::start(&[]);
    let (status, body) = agent.request(Method::GET, "/v1/nope", Bytes::new()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let err: ApiError = serde_json::from_slice(&body).unwrap();
    assert_eq!(err.kind, ErrorKind::NotFound);
    assert!(err.message.contains("/v1/nope"), "{err}");

    let (status, body) = agent.request(Method::DELETE, "/v1/info", Bytes::new()).await;
    let err: ApiError = serde_json::from_slice(&body).unwrap();
    assert_eq!((status.as_u16(), err.kind), (400, ErrorKind::InvalidRequest));

    let (status, body) = agent.request(Method::POST, "/v1/procs", "{not json").await;
    let err: ApiError = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (status.as_u16(), err.kind),
        (400, ErrorKind::InvalidRequest),
        "{err}"
    );

    let (status, body) = agent
        .request(Method::POST, "/v1/procs/abc/wait", Bytes::new())
        .await;
    let err: ApiError = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (status.as_u16(), err.kind),
        (400, ErrorKind::InvalidRequest),
        "{err}"
    );

    // exec without a WebSocket upgrade.
    let (status, body) = agent.request(Method::GET, "/v1/procs/exec", Bytes::new()).await;
    let err: ApiError = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (status.as_u16(), err.kind),
        (400, ErrorKind::InvalidRequest),
        "{err}"
    );

    let (status, body) = agent.request(Method::POST, "/v1/heartbeat", Bytes::new()).await;
    assert_eq!(status, StatusCode::OK);
    let reply: chaos_proto::HeartbeatReply = serde_json::from_slice(&body).unwrap();
    assert_eq!(reply.timeout_ms, 30_000);
}

/// Runs the agent with `tls_dir` and returns (exit code, stderr).
fn start_failure(tls_dir: &std::path::Path) -> (Option<i32>, String) {
    let root = tempfile::tempdir().unwrap();
    let out = Command::new(common::agent_bin())
        .args(["--listen", "127.0.0.1:0", "--tls-dir"])
        .arg(tls_dir)
        .arg("--root-dir")
        .arg(root.path())
        .output()
        .unwrap();
    assert!(
        out.stdout.is_empty(),
        "no ready line expected: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_tls_dir_is_a_one_line_error_naming_the_file() {
    let pki = Pki::new();
    let dir = pki.node_dir.path();

    let check = |case: &str, expect: &str| {
        let (code, stderr) = start_failure(dir);
        assert!(code.is_some_and(|c| c != 0), "{case}: exit code {code:?}");
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "{case}: one line expected:\n{stderr}"
        );
        assert!(
            stderr.contains(expect),
            "{case}: {expect:?} not named in:\n{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{case}: {stderr}");
    };

    let missing = dir.join("missing");
    let (code, stderr) = start_failure(&missing);
    assert!(
        code.is_some_and(|c| c != 0) && stderr.trim().lines().count() == 1 && stderr.contains("missing"),
        "{stderr}"
    );

    // A key that does not belong to the certificate.
    let other = pki
        .ca
        .issue_node("n2", &["127.0.0.1".parse().unwrap()], &[])
        .unwrap();
    let good_key = std::fs::read(dir.join("node.key")).unwrap();
    std::fs::write(dir.join("node.key"), &other.key_pem).unwrap();
    check("mismatched key", "node.key");
    std::fs::write(dir.join("node.key"), &good_key).unwrap();

    std::fs::write(dir.join("node.key"), "not a key").unwrap();
    check("garbage key", "node.key");
    std::fs::write(dir.join("node.key"), &good_key).unwrap();

    std::fs::write(dir.join("ca.pem"), "garbage").unwrap();
    check("garbage CA", "ca.pem");
    std::fs::write(dir.join("ca.pem"), pki.ca.cert_pem()).unwrap();

    std::fs::remove_file(dir.join("node.pem")).unwrap();
    check("missing cert", "node.pem");
}

#[test]
fn bad_root_dir_and_listen_address_are_clear_errors() {
    let pki = Pki::new();
    let out = Command::new(common::agent_bin())
        .args(["--listen", "127.0.0.1:0", "--tls-dir"])
        .arg(pki.node_dir.path())
        .args(["--root-dir", "/nonexistent/chaos-root"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("/nonexistent/chaos-root"),
        "{stderr}"
    );

    // A port that is taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(common::agent_bin())
        .args(["--listen", &addr, "--tls-dir"])
        .arg(pki.node_dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains(&addr), "{stderr}");
}

#[tokio::test]
async fn sigterm_and_shutdown_exit_cleanly() {
    let mut agent = Agent::start(&[]);
    let pid = nix::unistd::Pid::from_raw(agent.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = agent
        .wait_exit(Duration::from_secs(5))
        .expect("agent exits on SIGTERM");
    assert_eq!(status.code(), Some(0));

    let mut agent = Agent::start(&[]);
    let (status, _) = agent.request(Method::POST, "/v1/shutdown", Bytes::new()).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let status = agent
        .wait_exit(Duration::from_secs(5))
        .expect("agent exits after /v1/shutdown");
    assert_eq!(status.code(), Some(0));
}
