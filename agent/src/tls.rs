//! The agent's TLS configuration: TLS 1.3 only, its own node certificate, and a client
//! certificate signed by the cluster CA required on every connection.

use std::path::Path;
use std::sync::Arc;

use chaos_proto::tls_files;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::AgentError;

fn bad(path: &Path, message: impl Into<String>) -> AgentError {
    AgentError::Tls {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, AgentError> {
    std::fs::read(path).map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::NotFound => " (write the node's TLS directory with Identity::write_node_dir)",
            _ => "",
        };
        bad(path, format!("cannot read: {e}{hint}"))
    })
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, AgentError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(path, format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(bad(path, "no certificate found"));
    }
    Ok(certs)
}

/// Builds the server configuration from a node TLS directory (`ca.pem`, `node.pem`,
/// `node.key`). Errors name the file at fault.
pub(crate) fn server_config(dir: &Path) -> Result<Arc<rustls::ServerConfig>, AgentError> {
    if !dir.is_dir() {
        return Err(bad(dir, "TLS directory does not exist"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());

    let ca_path = dir.join(tls_files::CA_CERT);
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs(&ca_path)? {
        roots
            .add(cert)
            .map_err(|e| bad(&ca_path, format!("unusable CA certificate: {e}")))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| bad(&ca_path, format!("cannot verify clients with it: {e}")))?;

    let cert_path = dir.join(tls_files::NODE_CERT);
    let chain = certs(&cert_path)?;
    let key_path = dir.join(tls_files::NODE_KEY);
    let key = PrivateKeyDer::from_pem_slice(&read(&key_path)?)
        .map_err(|e| bad(&key_path, format!("not a PEM private key: {e}")))?;

    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| bad(dir, e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| bad(&key_path, format!("does not fit {}: {e}", cert_path.display())))?;
    Ok(Arc::new(config))
}
