//! The TLS side: the server's certificate and key from PEM files, and client certificates
//! verified against the platform's CA (optional at the TLS layer: ETKDepot is open to
//! anyone, as the real one is; the services that need a caller check for one).

use crate::{PlatformError, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::path::Path;
use std::sync::Arc;

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| PlatformError::File {
        path: path.display().to_string(),
        source,
    })
}

/// Every certificate in a PEM file.
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| PlatformError::Tls(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(PlatformError::Tls(format!(
            "{}: no PEM certificate",
            path.display()
        )));
    }
    Ok(certs)
}

/// The provider every TLS configuration of the platform uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server configuration: `chain` (leaf first) and `key` PEM files, client certificates
/// verified against `client_ca` when presented. HTTP/1.1 only.
pub fn server_config(
    chain: &Path,
    key: &Path,
    client_ca: &[impl AsRef<Path>],
) -> Result<Arc<ServerConfig>> {
    let certs = certificates(chain)?;
    let key_pem = zeroize::Zeroizing::new(read(key)?);
    if let Some(w) = etee_hsm::config::permission_warning_for("TLS key", key) {
        etee_hsm::warn_operator(&w);
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| PlatformError::Tls(format!("{}: {e}", key.display())))?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| PlatformError::Tls(e.to_string()))?;
    let builder = if client_ca.is_empty() {
        builder.with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        for path in client_ca {
            for cert in certificates(path.as_ref())? {
                roots
                    .add(cert)
                    .map_err(|e| PlatformError::Tls(format!("{}: {e}", path.as_ref().display())))?;
            }
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .allow_unauthenticated()
            .build()
            .map_err(|e| PlatformError::Tls(e.to_string()))?;
        builder.with_client_cert_verifier(verifier)
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| PlatformError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
