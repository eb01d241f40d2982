//! The TLS side: the server's certificate and key from PEM files, and client certificates
//! verified against the platform's CA (optional at the TLS layer: ETKDepot is open to
//! anyone, as the real one is; the services that need a caller check for one).

use crate::{PlatformError, Result};
use etee_services::tls_files::{self, ClientAuth, ServerFiles, TlsFileError};
use rustls::pki_types::CertificateDer;
use rustls::ServerConfig;
use std::path::Path;
use std::sync::Arc;

/// An unreadable file is a configuration error; one that does not hold what it should, a
/// TLS error.
fn platform_error(e: TlsFileError) -> PlatformError {
    match e {
        TlsFileError::Unreadable(m) => PlatformError::Config(m),
        TlsFileError::Invalid(m) => PlatformError::Tls(m),
    }
}

/// Every certificate in a PEM file, the setting `key` (named with the file in errors).
pub fn certificates(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    tls_files::certificates(key, path).map_err(platform_error)
}

/// The provider every TLS configuration of the platform uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    tls_files::provider()
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
/// verified against `client_ca` when presented (ETKDepot and lookups serve anyone). HTTP/1.1
/// only. Errors name the setting and its file.
pub fn server_config(
    chain: &Path,
    key: &Path,
    client_ca: &[impl AsRef<Path>],
) -> Result<Arc<ServerConfig>> {
    if let Some(w) = etee_hsm::config::permission_warning_for("TLS key", key) {
        etee_hsm::warn_operator(&w);
    }
    let auth = if client_ca.is_empty() {
        etee_hsm::warn_operator(NO_CLIENT_CA);
        ClientAuth::None
    } else {
        ClientAuth::Optional
    };
    let client_ca: Vec<&Path> = client_ca.iter().map(AsRef::as_ref).collect();
    let files = ServerFiles {
        chain,
        key,
        client_ca: &client_ca,
    };
    tls_files::server_config(files, auth, &mut |path, certs| {
        if let Some(w) = client_ca_warning(path, certs) {
            etee_hsm::warn_operator(&w);
        }
    })
    .map_err(platform_error)
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
