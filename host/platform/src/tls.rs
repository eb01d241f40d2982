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

/// The warning of a platform without `client_ca`: it serves, but authenticates nobody.
pub const NO_CLIENT_CA: &str = "no client_ca: no caller can be authenticated, so every KGSS \
     request and every KeyDepot write is refused (ETKDepot and KeyDepot lookups are \
     answered); give client_ca, the CA certificates of the institutions";

/// [`etee_hsm::config::client_ca_warning`] for the platform's callers.
pub fn client_ca_warning(path: &Path, certs: &[CertificateDer<'_>]) -> Option<String> {
    etee_hsm::config::client_ca_warning(path, certs, "callers'")
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
        etee_hsm::warn_operator(NO_CLIENT_CA);
        builder.with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        for path in client_ca {
            let path = path.as_ref();
            let certs = certificates("client_ca", path)?;
            if let Some(w) = client_ca_warning(path, &certs) {
                etee_hsm::warn_operator(&w);
            }
            for cert in certs {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A `client_ca` certificate that is not a CA (a TLS server's) is warned about, a CA
    /// is not; either is taken.
    #[test]
    fn a_client_ca_that_is_not_a_ca_is_warned_about() {
        let pki = etee_testpki::TestPki::generate("platform-tls").unwrap();
        let server = pki.tls_server(&["localhost"]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (chain, key, ca, leaf) = (
            dir.path().join("chain.pem"),
            dir.path().join("key.pem"),
            dir.path().join("ca.pem"),
            dir.path().join("leaf.pem"),
        );
        let mut both = server.cert.to_pem().unwrap();
        both.extend(pki.root.cert.to_pem().unwrap());
        std::fs::write(&chain, both).unwrap();
        std::fs::write(&key, server.key.private_key_to_pem_pkcs8().unwrap()).unwrap();
        std::fs::write(&ca, pki.root.cert.to_pem().unwrap()).unwrap();
        std::fs::write(&leaf, server.cert.to_pem().unwrap()).unwrap();
        let warning =
            |path: &Path| client_ca_warning(path, &certificates("client_ca", path).unwrap());
        assert_eq!(warning(&ca), None);
        let w = warning(&leaf).expect("a leaf is warned about");
        assert!(
            w.contains(&format!(
                "client_ca {}: not a CA certificate",
                leaf.display()
            )) && w.contains("localhost"),
            "{w}"
        );
        // The chain file: its CA is not named, its leaf is.
        let w = warning(&chain).unwrap();
        assert!(w.contains("localhost") && !w.contains("Root CA"), "{w}");
        server_config(&chain, &key, &[&leaf]).unwrap();
        server_config(&chain, &key, &[] as &[&Path]).unwrap();
    }
}
