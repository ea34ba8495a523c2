//! Certificates for a cluster: one CA per cluster, one server certificate per node, one client
//! certificate for the runner.
//!
//! Every node gets its own key pair, so a node that is compromised (or simply copied) cannot
//! impersonate another node, and every connection is authenticated in both directions. Keys are
//! only ever written to files with mode 0600 — never passed on a command line or in the
//! environment, where `ps` and `/proc/*/environ` would show them.
//!
//! ```
//! use chaos::certs::ClusterCa;
//!
//! let ca = ClusterCa::generate("example").unwrap();
//! let node = ca.issue_node("n1", &["10.0.0.2".parse().unwrap()], &[]).unwrap();
//! let runner = ca.issue_runner().unwrap();
//! assert!(node.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
//! let _config = chaos::certs::client_config(ca.cert_pem(), &runner).unwrap();
//! ```

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chaos_proto::tls_files;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::OffsetDateTime;

/// How long issued certificates stay valid. Clusters are transient; a day covers any test run
/// while limiting the damage of a leaked key.
const VALIDITY: Duration = Duration::from_secs(24 * 3600);

/// Tolerated clock skew between the runner and the nodes.
const SKEW: Duration = Duration::from_secs(3600);

/// Errors minting, loading or using certificates.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// Certificate generation failed.
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// A file could not be read or written.
    #[error("{path}: {cause}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error. Part of this error's message, so not also its `source()`.
        cause: std::io::Error,
    },
    /// A file did not hold the expected PEM material.
    #[error("{path}: {message}")]
    BadPem {
        /// The file involved.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// rustls rejected the material.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// A cluster's certificate authority: signs the node and runner certificates.
pub struct ClusterCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    key_pem: String,
}

/// A certificate and its private key, both PEM-encoded.
#[derive(Clone)]
pub struct Identity {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// The private key (PKCS#8 PEM). Keep it out of logs, command lines and environments.
    pub key_pem: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

fn validity(params: &mut CertificateParams, not_before: OffsetDateTime, not_after: OffsetDateTime) {
    params.not_before = not_before;
    params.not_after = not_after;
}

fn default_window() -> (OffsetDateTime, OffsetDateTime) {
    window(VALIDITY)
}

/// A validity window from an hour ago (tolerated clock skew) to `validity` from now.
pub fn window(validity: Duration) -> (OffsetDateTime, OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    (now - SKEW, now + validity)
}

impl ClusterCa {
    /// Mints a new CA for the cluster `name`, valid for a day.
    pub fn generate(name: &str) -> Result<Self, CertError> {
        Self::generate_for(name, VALIDITY)
    }

    /// Mints a new CA for `name` valid for `validity` (from an hour ago, for clock skew): a lab
    /// of persistent agents (`hosts`) needs one that outlives a run.
    pub fn generate_for(name: &str, validity: Duration) -> Result<Self, CertError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("chaos cluster CA {name}"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let (nb, na) = window(validity);
        self::validity(&mut params, nb, na);
        let cert = params.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a CA written by [`ClusterCa::write`] from `dir` (`ca.pem` and `ca.key`).
    pub fn load(dir: &Path) -> Result<Self, CertError> {
        let cert_pem = read(&dir.join(tls_files::CA_CERT))?;
        let key_path = dir.join(tls_files::CA_KEY);
        let key_pem = read(&key_path)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| CertError::BadPem {
            path: key_path.clone(),
            message: format!("not a private key: {e}"),
        })?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| CertError::BadPem {
            path: dir.join(tls_files::CA_CERT),
            message: format!("not a CA certificate: {e}"),
        })?;
        Ok(Self {
            issuer,
            cert_pem,
            key_pem,
        })
    }

    /// Writes `ca.pem` and `ca.key` (mode 0600) into `dir`, creating it.
    pub fn write(&self, dir: &Path) -> Result<(), CertError> {
        create_dir(dir)?;
        write_file(&dir.join(tls_files::CA_CERT), &self.cert_pem, 0o644)?;
        write_file(&dir.join(tls_files::CA_KEY), &self.key_pem, 0o600)
    }

    /// The CA certificate (PEM), which both sides trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a server certificate for node `name`, valid for its `ips` and `dns` names.
    pub fn issue_node(&self, name: &str, ips: &[IpAddr], dns: &[String]) -> Result<Identity, CertError> {
        let (nb, na) = default_window();
        self.issue_node_valid(name, ips, dns, nb, na)
    }

    /// Like [`ClusterCa::issue_node`] with an explicit validity window (tests use it to mint
    /// expired certificates).
    pub fn issue_node_valid(
        &self,
        name: &str,
        ips: &[IpAddr],
        dns: &[String],
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<Identity, CertError> {
        let mut params = CertificateParams::new(dns.to_vec())?;
        params
            .subject_alt_names
            .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        params.subject_alt_names.push(SanType::DnsName(name.try_into()?));
        params.distinguished_name = cn(&format!("chaos node {name}"));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        validity(&mut params, not_before, not_after);
        self.sign(params)
    }

    /// Issues the runner's client certificate.
    pub fn issue_runner(&self) -> Result<Identity, CertError> {
        let (nb, na) = default_window();
        self.issue_runner_valid(nb, na)
    }

    /// Like [`ClusterCa::issue_runner`] with an explicit validity window.
    pub fn issue_runner_valid(
        &self,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<Identity, CertError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = cn("chaos runner");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        validity(&mut params, not_before, not_after);
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Result<Identity, CertError> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Identity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn cn(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}

impl Identity {
    /// Writes a node's TLS directory: `ca.pem`, `node.pem`, `node.key` (0600). This is the
    /// directory `chaos-agent --tls-dir` reads.
    pub fn write_node_dir(&self, dir: &Path, ca_pem: &str) -> Result<(), CertError> {
        create_dir(dir)?;
        write_file(&dir.join(tls_files::CA_CERT), ca_pem, 0o644)?;
        write_file(&dir.join(tls_files::NODE_CERT), &self.cert_pem, 0o644)?;
        write_file(&dir.join(tls_files::NODE_KEY), &self.key_pem, 0o600)
    }

    /// Writes the runner's identity into `dir`: `runner.pem`, `runner.key` (0600).
    pub fn write_runner(&self, dir: &Path) -> Result<(), CertError> {
        create_dir(dir)?;
        write_file(&dir.join(tls_files::RUNNER_CERT), &self.cert_pem, 0o644)?;
        write_file(&dir.join(tls_files::RUNNER_KEY), &self.key_pem, 0o600)
    }

    /// Loads the runner identity written by [`Identity::write_runner`].
    pub fn load_runner(dir: &Path) -> Result<Self, CertError> {
        Ok(Self {
            cert_pem: read(&dir.join(tls_files::RUNNER_CERT))?,
            key_pem: read(&dir.join(tls_files::RUNNER_KEY))?,
        })
    }
}

/// The rustls crypto provider every chaos TLS endpoint uses (ring; TLS 1.3 only).
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the runner's TLS client configuration: trusts only the cluster CA, presents the
/// runner's client certificate, speaks TLS 1.3 only.
pub fn client_config(ca_pem: &str, runner: &Identity) -> Result<Arc<rustls::ClientConfig>, CertError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in parse_certs(ca_pem, Path::new("<cluster CA>"))? {
        roots.add(cert)?;
    }
    let chain = parse_certs(&runner.cert_pem, Path::new("<runner certificate>"))?;
    let key = PrivateKeyDer::from_pem_slice(runner.key_pem.as_bytes()).map_err(|e| CertError::BadPem {
        path: PathBuf::from("<runner key>"),
        message: format!("not a private key: {e}"),
    })?;
    let config = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    Ok(Arc::new(config))
}

/// Parses every certificate in a PEM string; `origin` names the source in errors.
pub fn parse_certs(pem: &str, origin: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::BadPem {
            path: origin.to_path_buf(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(CertError::BadPem {
            path: origin.to_path_buf(),
            message: "no certificate found".into(),
        });
    }
    Ok(certs)
}

fn read(path: &Path) -> Result<String, CertError> {
    fs::read_to_string(path).map_err(|cause| CertError::Io {
        path: path.to_path_buf(),
        cause,
    })
}

fn create_dir(dir: &Path) -> Result<(), CertError> {
    fs::create_dir_all(dir).map_err(|cause| CertError::Io {
        path: dir.to_path_buf(),
        cause,
    })
}

/// Writes `contents` so the file never exists with looser permissions than `mode`.
fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), CertError> {
    let io = |cause| CertError::Io {
        path: path.to_path_buf(),
        cause,
    };
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    // The file may have existed with other permissions: set them explicitly.
    f.set_permissions(fs::Permissions::from_mode(mode)).map_err(io)?;
    f.write_all(contents.as_bytes()).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_round_trips_through_disk_and_still_signs() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::generate("t").unwrap();
        ca.write(dir.path()).unwrap();
        let mode = fs::metadata(dir.path().join(tls_files::CA_KEY))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let loaded = ClusterCa::load(dir.path()).unwrap();
        assert_eq!(loaded.cert_pem(), ca.cert_pem());
        let node = loaded
            .issue_node("n1", &["127.0.0.1".parse().unwrap()], &[])
            .unwrap();
        assert!(node.cert_pem.contains("BEGIN CERTIFICATE"));
    }

    #[test]
    fn loading_a_missing_ca_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = ClusterCa::load(dir.path()).err().unwrap().to_string();
        assert!(err.contains("ca.pem"), "{err}");
    }

    #[test]
    fn bad_pem_is_a_clear_error() {
        let err = parse_certs("garbage", Path::new("x.pem"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("x.pem") && err.contains("no certificate"), "{err}");
    }
}
