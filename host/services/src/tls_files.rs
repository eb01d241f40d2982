//! The TLS files of etee's servers (the appliance's API, the platform): certificates and a
//! key from PEM files, client certificates verified against CA files, HTTP/1.1 only.
//! Errors name the configuration setting and its file, as the operator wrote them.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::path::Path;
use std::sync::Arc;

/// A TLS file that could not be used; the message names the setting and the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsFileError {
    /// The file could not be read.
    #[error("{0}")]
    Unreadable(String),
    /// The file was read but does not hold what the setting needs (no certificate, a key
    /// that is not the certificate's, ...).
    #[error("{0}")]
    Invalid(String),
}

/// The crypto provider of every TLS configuration etee makes.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(key: &str, path: &Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path)
        .map_err(|e| TlsFileError::Unreadable(format!("{key} {}: {e}", path.display())))
}

/// Every certificate of a PEM file, the value of the setting `key`; at least one.
pub fn certificates(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let pem = read(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsFileError::Invalid(format!("{key} {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(TlsFileError::Invalid(format!(
            "{key} {}: no PEM certificate",
            path.display()
        )));
    }
    Ok(certs)
}

/// Whether a server asks its clients for a certificate, and what it does without one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// Every client must present a certificate verified against the CA files.
    Required,
    /// A certificate is verified when presented; a client without one is served (the
    /// services that need a caller check for one).
    Optional,
    /// No client certificate is asked for.
    None,
}

/// The files of a TLS server: `tls_certificate` (the chain, leaf first), `tls_key`, and
/// the `client_ca` files.
#[derive(Clone, Copy, Debug)]
pub struct ServerFiles<'a> {
    pub chain: &'a Path,
    pub key: &'a Path,
    pub client_ca: &'a [&'a Path],
}

/// The server configuration of `files`. `inspect_ca` sees each `client_ca` file's
/// certificates before they are taken (for the caller's warnings). `ClientAuth::None`
/// ignores `client_ca`.
pub fn server_config(
    files: ServerFiles<'_>,
    auth: ClientAuth,
    inspect_ca: &mut dyn FnMut(&Path, &[CertificateDer<'_>]),
) -> Result<Arc<ServerConfig>, TlsFileError> {
    let certs = certificates("tls_certificate", files.chain)?;
    let (chain, key_file) = (files.chain.display(), files.key.display());
    let key_pem = zeroize::Zeroizing::new(read("tls_key", files.key)?);
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| TlsFileError::Invalid(format!("tls_key {key_file}: {e}")))?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsFileError::Invalid(format!("TLS: {e}")))?;
    let builder = match auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Required | ClientAuth::Optional => {
            let mut roots = RootCertStore::empty();
            for &path in files.client_ca {
                let certs = certificates("client_ca", path)?;
                inspect_ca(path, &certs);
                for cert in certs {
                    roots.add(cert).map_err(|e| {
                        TlsFileError::Invalid(format!("client_ca {}: {e}", path.display()))
                    })?;
                }
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
            let verifier = match auth {
                ClientAuth::Optional => verifier.allow_unauthenticated(),
                _ => verifier,
            };
            let verifier = verifier
                .build()
                .map_err(|e| TlsFileError::Invalid(format!("client_ca: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => TlsFileError::Invalid(format!(
            "tls_key {key_file} does not match tls_certificate {chain} (the key of its first \
             certificate)"
        )),
        e => TlsFileError::Invalid(format!("tls_certificate {chain}, tls_key {key_file}: {e}")),
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
