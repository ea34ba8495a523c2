//! The agent's TLS configuration: TLS 1.3 only, its own node certificate, and on every
//! connection a client certificate issued *directly* by the cluster CA for client
//! authentication.
//!
//! "Directly": the CA carries `pathlen:0`, but webpki does not enforce a trust anchor's
//! constraints, so a leaf under an intermediate CA signed by the cluster CA would pass a plain
//! [`WebPkiClientVerifier`]. [`DirectClientVerifier`] verifies the presented leaf against the
//! CA with an empty list of intermediates, and requires the clientAuth extended key usage to be
//! present (webpki alone accepts a certificate without any extended key usage).

use std::path::Path;
use std::sync::Arc;

use chaos_proto::tls_files;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::UnixTime;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, SignatureVerificationAlgorithm, TrustAnchor};

/// DER contents of the clientAuth extended key usage OID, 1.3.6.1.5.5.7.3.2.
const EKU_CLIENT_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];

/// Why a client certificate that chains to the CA is still refused.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error(
        "the client certificate is not issued directly by the cluster CA (it came with {0} \
         intermediate certificate(s)); only certificates issued directly by the cluster CA are accepted"
    )]
    NotDirect(usize),
    #[error(
        "the client certificate lacks the clientAuth extended key usage; only certificates issued \
         for client authentication (like the runner's) are accepted"
    )]
    NoClientAuth,
}

fn refused(why: Refusal) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(why))))
}

/// A failed handshake, for the log: rustls shows a refusal of ours by its `Debug` form; this
/// says it in words.
pub(crate) fn handshake_error(e: &std::io::Error) -> String {
    let rustls_error = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    if let Some(rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(why)))) = rustls_error {
        return format!("invalid peer certificate: {why}");
    }
    e.to_string()
}

/// Accepts only leaf certificates issued directly by the cluster CA with the clientAuth
/// extended key usage (see the module docs). Everything but the path check is delegated to
/// rustls' own verifier.
#[derive(Debug)]
struct DirectClientVerifier {
    /// rustls' verifier over the same roots: hints, signatures, and the precise error when a
    /// certificate is refused for a reason it also knows.
    webpki: Arc<dyn ClientCertVerifier>,
    roots: Vec<TrustAnchor<'static>>,
    algorithms: &'static [&'static dyn SignatureVerificationAlgorithm],
}

impl ClientCertVerifier for DirectClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.webpki.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.webpki.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.webpki.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let direct = webpki::EndEntityCert::try_from(end_entity).and_then(|cert| {
            cert.verify_for_usage(
                self.algorithms,
                &self.roots,
                &[],
                now,
                webpki::KeyUsage::required(EKU_CLIENT_AUTH),
                None,
                None,
            )
            .map(|_| ())
        });
        if direct.is_ok() {
            return Ok(ClientCertVerified::assertion());
        }
        // Refused. rustls names the reason in its own terms, unless only our stricter rules
        // refuse it: the path is the same (no intermediates either way), so what rustls
        // accepts lacks the required usage.
        match self.webpki.verify_client_cert(end_entity, &[], now) {
            Err(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer))
                if !intermediates.is_empty() =>
            {
                Err(refused(Refusal::NotDirect(intermediates.len())))
            }
            Err(e) => Err(e),
            Ok(_) => Err(refused(Refusal::NoClientAuth)),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

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
    let anchors = roots.roots.clone();
    let webpki = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| bad(&ca_path, format!("cannot verify clients with it: {e}")))?;
    let verifier = Arc::new(DirectClientVerifier {
        webpki,
        roots: anchors,
        algorithms: provider.signature_verification_algorithms.all,
    });

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
