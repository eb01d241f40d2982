//! TLS client configuration, with client authentication by a key that never leaves the HSM.
//!
//! The platform identifies callers by their TLS client certificate (KeyDepot writes, KGSS
//! deletions). That certificate is the institution's eHealth authentication certificate,
//! whose key lives in the HSM behind [`PrivateKeyOps`]; rustls must therefore sign the
//! handshake through that trait instead of holding a private key. [`TlsIdentity`] does so:
//! it offers exactly one scheme, `rsa_pss_rsae_sha256` (what TLS 1.3 requires of RSA keys
//! and what [`PrivateKeyOps::sign_pss_sha256`] makes: PSS, MGF1-SHA-256, salt 32), hashes
//! the handshake transcript itself and asks the key provider to sign the digest.
//!
//! The signature is a **blocking** call made inside rustls's handshake: one RSA operation
//! per new connection (connections are kept alive and reused). On a multi-threaded tokio
//! runtime it runs under `block_in_place`, so that the worker's other tasks move to
//! another worker meanwhile; on a current-thread runtime it holds that thread. The connect
//! timeout cannot interrupt it: a connection whose signature took longer fails with the
//! timeout once the signature returns, and an HSM call that never returns is bounded only
//! by the key provider (the custody core, the token) — watch the HSM, not this client.

use crate::error::{ProtocolError, Result};
use etee_formats::keys::{KeyError, KeyId, PrivateKeyOps, SignerRef, SigningKey};
use rustls::client::ResolvesClientCert;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, SignatureAlgorithm, SignatureScheme};
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::Path;
use std::sync::Arc;

/// The one scheme an eHealth authentication key signs with.
const SCHEME: SignatureScheme = SignatureScheme::RSA_PSS_SHA256;

/// A TLS client identity: a certificate chain and a key in a [`PrivateKeyOps`] provider.
#[derive(Clone)]
pub struct TlsIdentity {
    certified: Arc<CertifiedKey>,
}

impl fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("certificates", &self.certified.cert.len())
            .finish()
    }
}

impl TlsIdentity {
    /// The identity of an authentication key named by its certificate (the leaf and its
    /// chain are sent in the handshake). A KeyDepot key (named by key id) has no
    /// certificate and cannot authenticate a TLS client.
    pub fn new(key: &SigningKey) -> Result<Self> {
        let SignerRef::Certificate { cert, chain } = &key.signer else {
            return Err(ProtocolError::Tls(
                "a TLS client identity needs a certificate, not a key id".into(),
            ));
        };
        let certs: Vec<CertificateDer<'static>> = std::iter::once(cert)
            .chain(chain)
            .map(|c| CertificateDer::from(c.der().to_vec()))
            .collect();
        let signing_key = Arc::new(ProviderKey {
            ops: key.ops.clone(),
            key: key.key.clone(),
        });
        Ok(Self {
            certified: Arc::new(CertifiedKey::new(certs, signing_key)),
        })
    }
}

/// A key of a [`PrivateKeyOps`] provider as a rustls signing key.
struct ProviderKey {
    ops: Arc<dyn PrivateKeyOps>,
    key: KeyId,
}

impl fmt::Debug for ProviderKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderKey")
            .field("key", &self.key)
            .finish()
    }
}

impl rustls::sign::SigningKey for ProviderKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn rustls::sign::Signer>> {
        offered.contains(&SCHEME).then(|| {
            Box::new(ProviderSigner {
                ops: self.ops.clone(),
                key: self.key.clone(),
            }) as Box<dyn rustls::sign::Signer>
        })
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::RSA
    }
}

/// Why a TLS handshake failed, when it was the client authentication key (the custody core
/// refused or is unavailable) rather than the network or the server.
pub(crate) fn key_failure(e: &std::io::Error) -> Option<KeyError> {
    let rustls::Error::Other(other) = e.get_ref()?.downcast_ref::<rustls::Error>()? else {
        return None;
    };
    Some(match other.0.downcast_ref::<KeyError>()? {
        KeyError::Refused(why) => KeyError::Refused(format!("client authentication key: {why}")),
        KeyError::RateLimited { retry_after_ms } => KeyError::RateLimited {
            retry_after_ms: *retry_after_ms,
        },
        failed => KeyError::Unavailable(format!("client authentication key: {failed}")),
    })
}

struct ProviderSigner {
    ops: Arc<dyn PrivateKeyOps>,
    key: KeyId,
}

impl fmt::Debug for ProviderSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderSigner")
            .field("key", &self.key)
            .finish()
    }
}

impl rustls::sign::Signer for ProviderSigner {
    /// SHA-256 of the message, signed RSASSA-PSS by the provider (blocking: see the module
    /// documentation).
    fn sign(&self, message: &[u8]) -> std::result::Result<Vec<u8>, rustls::Error> {
        let digest: [u8; 32] = Sha256::digest(message).into();
        let sign = || self.ops.sign_pss_sha256(&self.key, &digest);
        let multi_threaded = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let signed = if multi_threaded {
            tokio::task::block_in_place(sign)
        } else {
            sign()
        };
        // The key's own error, so that the handshake's failure can say the key (not the
        // server) failed: see [`key_failure`].
        signed.map_err(|e| rustls::Error::Other(rustls::OtherError(Arc::new(e))))
    }

    fn scheme(&self) -> SignatureScheme {
        SCHEME
    }
}

/// Presents the identity when the server asks for a client certificate and accepts PSS.
#[derive(Debug)]
struct Resolver(TlsIdentity);

impl ResolvesClientCert for Resolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        sigschemes
            .contains(&SCHEME)
            .then(|| self.0.certified.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Every certificate of a PEM text.
pub fn certificates_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| ProtocolError::Tls(format!("PEM: {e}")))?;
    if certs.is_empty() {
        return Err(ProtocolError::Tls("no PEM certificate".into()));
    }
    Ok(certs)
}

/// Every certificate of the PEM files at `paths`.
pub fn certificates_from_pem_files(
    paths: &[impl AsRef<Path>],
) -> Result<Vec<CertificateDer<'static>>> {
    let mut out = Vec::new();
    for path in paths {
        let path = path.as_ref();
        let pem = std::fs::read(path)
            .map_err(|e| ProtocolError::Tls(format!("{}: {e}", path.display())))?;
        out.extend(
            certificates_from_pem(&pem)
                .map_err(|e| ProtocolError::Tls(format!("{}: {e}", path.display())))?,
        );
    }
    Ok(out)
}

/// A client configuration: ring, TLS 1.2 and 1.3 (rustls's safe defaults), HTTP/1.1
/// (ALPN), servers verified against `roots` only, and `identity` presented when a server
/// asks for a client certificate.
pub fn client_config(
    roots: &[CertificateDer<'static>],
    identity: Option<TlsIdentity>,
) -> Result<Arc<ClientConfig>> {
    if roots.is_empty() {
        return Err(ProtocolError::Tls("no root certificate".into()));
    }
    let mut store = RootCertStore::empty();
    for root in roots {
        store
            .add(root.clone())
            .map_err(|e| ProtocolError::Tls(format!("root certificate: {e}")))?;
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| ProtocolError::Tls(e.to_string()))?
            .with_root_certificates(store);
    let mut config = match identity {
        Some(identity) => builder.with_client_cert_resolver(Arc::new(Resolver(identity))),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use etee_formats::cert::Certificate;
    use etee_formats::keys::KeyError;
    use etee_formats::keystore::SoftwareKeys;
    use etee_testpki::{InstitutionSpec, TestPki};

    /// A provider signing with one software key, remembering the digests it was given.
    struct Recording {
        inner: SoftwareKeys,
        digests: std::sync::Mutex<Vec<[u8; 32]>>,
    }

    impl PrivateKeyOps for Recording {
        fn sign_pss_sha256(
            &self,
            key: &KeyId,
            digest: &[u8; 32],
        ) -> std::result::Result<Vec<u8>, KeyError> {
            self.digests.lock().unwrap().push(*digest);
            self.inner.sign_pss_sha256(key, digest)
        }
        fn decrypt_pkcs1v15(
            &self,
            key: &KeyId,
            blob: &[u8],
        ) -> std::result::Result<zeroize::Zeroizing<Vec<u8>>, KeyError> {
            self.inner.decrypt_pkcs1v15(key, blob)
        }
    }

    #[test]
    fn signs_pss_sha256_of_the_message_with_the_provider() {
        let pki = TestPki::generate("tls-unit").unwrap();
        let inst = pki
            .institution(&InstitutionSpec::new("NIHII-HOSPITAL", "71000436", "H"))
            .unwrap();
        let mut keys = SoftwareKeys::new();
        keys.insert(KeyId("auth".into()), inst.auth.key.clone());
        let ops = Arc::new(Recording {
            inner: keys,
            digests: Default::default(),
        });
        let cert = Certificate::from_der(&inst.auth.cert.to_der().unwrap()).unwrap();
        let signing = SigningKey {
            ops: ops.clone(),
            key: KeyId("auth".into()),
            signer: SignerRef::Certificate {
                cert,
                chain: vec![],
            },
        };
        let identity = TlsIdentity::new(&signing).unwrap();
        let key = &identity.certified.key;
        assert!(key
            .choose_scheme(&[SignatureScheme::RSA_PKCS1_SHA256])
            .is_none());
        let signer = key
            .choose_scheme(&[
                SignatureScheme::ECDSA_NISTP256_SHA256,
                SignatureScheme::RSA_PSS_SHA256,
            ])
            .unwrap();
        assert_eq!(signer.scheme(), SignatureScheme::RSA_PSS_SHA256);
        let sig = signer.sign(b"transcript").unwrap();
        let expected: [u8; 32] = Sha256::digest(b"transcript").into();
        assert_eq!(ops.digests.lock().unwrap().as_slice(), &[expected]);

        // The signature verifies as TLS's rsa_pss_rsae_sha256 with the certificate's key.
        let public = inst.auth.cert.public_key().unwrap();
        let mut v =
            openssl::sign::Verifier::new(openssl::hash::MessageDigest::sha256(), &public).unwrap();
        v.set_rsa_padding(openssl::rsa::Padding::PKCS1_PSS).unwrap();
        v.set_rsa_pss_saltlen(openssl::sign::RsaPssSaltlen::DIGEST_LENGTH)
            .unwrap();
        v.update(b"transcript").unwrap();
        assert!(v.verify(&sig).unwrap());
        // Debug shows no key material.
        assert!(!format!("{identity:?}").contains("BEGIN"));
    }

    #[test]
    fn a_key_id_signer_is_no_tls_identity() {
        let signing = SigningKey {
            ops: Arc::new(SoftwareKeys::new()),
            key: KeyId("k".into()),
            signer: SignerRef::KeyId(b"id".to_vec()),
        };
        assert!(matches!(
            TlsIdentity::new(&signing),
            Err(ProtocolError::Tls(_))
        ));
        assert!(matches!(
            client_config(&[], None),
            Err(ProtocolError::Tls(_))
        ));
        assert!(certificates_from_pem(b"nothing").is_err());
    }
}
