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

/// The file of the setting `key` (both named in errors).
fn read(key: &str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| PlatformError::Config(format!("{key} {}: {e}", path.display())))
}

/// Every certificate in a PEM file, the setting `key` (named with the file in errors).
pub fn certificates(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = read(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| PlatformError::Tls(format!("{key} {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(PlatformError::Tls(format!(
            "{key} {}: no PEM certificate",
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
/// verified against `client_ca` when presented. HTTP/1.1 only. Errors name the setting and
/// its file.
pub fn server_config(
    chain: &Path,
    key: &Path,
    client_ca: &[impl AsRef<Path>],
) -> Result<Arc<ServerConfig>> {
    let certs = certificates("tls_certificate", chain)?;
    let key_pem = zeroize::Zeroizing::new(read("tls_key", key)?);
    if let Some(w) = etee_hsm::config::permission_warning_for("TLS key", key) {
        etee_hsm::warn_operator(&w);
    }
    let (chain, key_file) = (chain.display(), key.display());
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| PlatformError::Tls(format!("tls_key {key_file}: {e}")))?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| PlatformError::Tls(e.to_string()))?;
    let builder = if client_ca.is_empty() {
        builder.with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        for path in client_ca {
            let path = path.as_ref();
            for cert in certificates("client_ca", path)? {
                roots.add(cert).map_err(|e| {
                    PlatformError::Tls(format!("client_ca {}: {e}", path.display()))
                })?;
            }
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .allow_unauthenticated()
            .build()
            .map_err(|e| PlatformError::Tls(format!("client_ca: {e}")))?;
        builder.with_client_cert_verifier(verifier)
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => PlatformError::Tls(format!(
            "tls_key {key_file} does not match tls_certificate {chain} (the key of its \
                 first certificate)"
        )),
        e => PlatformError::Tls(format!("tls_certificate {chain}, tls_key {key_file}: {e}")),
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
