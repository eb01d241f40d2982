//! Private-key operations behind a trait, so that keys can live in a `.p12` (software) or in
//! an HSM (the custody core) without the formats code knowing which.
//!
//! The formats code never holds private key material: it asks a [`PrivateKeyOps`] to sign a
//! digest or to decrypt a key-transport blob, naming the key by a [`KeyId`].

use crate::cert::Certificate;
use std::fmt;
use std::sync::Arc;
use zeroize::Zeroizing;

/// A provider's name for one of its private keys (a keystore alias, a PKCS#11 CKA_ID...).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub String);

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.0)
    }
}
impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Failure of a private-key operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error("no private key {0}")]
    UnknownKey(KeyId),
    /// Key-transport decryption failed. Deliberately carries no detail: callers must not be
    /// able to tell a padding failure from any other (no padding oracle).
    #[error("key transport decryption failed")]
    DecryptFailed,
    #[error("signing with {key} failed: {reason}")]
    SignFailed { key: KeyId, reason: String },
    #[error("key provider unavailable: {0}")]
    Unavailable(String),
    #[error("operation refused by policy: {0}")]
    Refused(String),
    /// The key provider's rate budget is spent for now (the custody core's
    /// `budget_burst`/`budget_per_second`): the same use may succeed after
    /// `retry_after_ms`. A refusal that passes by itself, unlike [`Self::Refused`].
    #[error("operation refused by policy: rate limit reached; retry after {retry_after_ms} ms")]
    RateLimited { retry_after_ms: u64 },
}

/// The two private-key operations ETEE needs.
pub trait PrivateKeyOps: Send + Sync {
    /// RSASSA-PSS with SHA-256, MGF1-SHA-256, salt length 32, over a SHA-256 `digest`
    /// (for CMS: the digest of the DER signed attributes, or of the content without them).
    fn sign_pss_sha256(&self, key: &KeyId, digest: &[u8; 32]) -> Result<Vec<u8>, KeyError>;

    /// RSA PKCS#1 v1.5 decryption of a KeyTransRecipientInfo's encryptedKey. Any failure
    /// the blob may have caused must be reported as [`KeyError::DecryptFailed`], in the
    /// same way; another error (unavailable, refused, unknown key) must only say that the
    /// provider could not try, which no blob causes: it stops the unseal
    /// ([`crate::cms::UnsealError::Key`]) instead of becoming part of the verdict.
    fn decrypt_pkcs1v15(&self, key: &KeyId, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError>;
}

/// How a signer is named in a SignerInfo.
#[derive(Clone, Debug)]
pub enum SignerRef {
    /// eHealth certificate: issuerAndSerialNumber; the outer layer carries `cert` and `chain`.
    Certificate {
        cert: Certificate,
        chain: Vec<Certificate>,
    },
    /// WEB_AUTHN / KeyDepot key: subjectKeyIdentifier = these bytes; no certificates.
    KeyId(Vec<u8>),
}

/// A sender's authentication key: what signs both layers of a sealed message.
#[derive(Clone)]
pub struct SigningKey {
    pub ops: Arc<dyn PrivateKeyOps>,
    pub key: KeyId,
    pub signer: SignerRef,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("key", &self.key)
            .field("signer", &self.signer)
            .finish()
    }
}

/// One key able to open KeyTransRecipientInfos addressed to it.
#[derive(Clone)]
pub struct DecryptionKey {
    pub ops: Arc<dyn PrivateKeyOps>,
    pub key: KeyId,
    /// The ETK encryption certificate, when known (eHealth keys).
    pub cert: Option<Certificate>,
    /// Serial magnitude the key answers to: the certificate's, or the decimal alias's.
    pub serial: Vec<u8>,
    /// subjectKeyIdentifier the key answers to (WEB_AUTHN recipients).
    pub ski: Option<Vec<u8>>,
    /// Modulus size, checked against the policy minimum (2048).
    pub modulus_bits: u32,
}

impl fmt::Debug for DecryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DecryptionKey")
            .field("key", &self.key)
            .field("serial", &crate::cert::decimal(&self.serial))
            .field("modulus_bits", &self.modulus_bits)
            .finish()
    }
}

/// Every decryption key the unsealer may use, old ones included.
#[derive(Clone, Debug, Default)]
pub struct KeyRing {
    keys: Vec<DecryptionKey>,
}

impl KeyRing {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn add(&mut self, key: DecryptionKey) {
        self.keys.push(key);
    }
    pub fn extend(&mut self, keys: impl IntoIterator<Item = DecryptionKey>) {
        self.keys.extend(keys);
    }
    pub fn keys(&self) -> &[DecryptionKey] {
        &self.keys
    }
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Candidates for a recipient named by issuer and serial: the keys whose certificate
    /// matches both first, then the keys that match the serial alone (the official library
    /// compares the decimal serial only, so a message it opens must open here too).
    pub fn candidates_by_serial(&self, issuer_der: &[u8], serial: &[u8]) -> Vec<&DecryptionKey> {
        let serial = strip_zeros(serial);
        let mut exact = Vec::new();
        let mut loose = Vec::new();
        for k in &self.keys {
            if strip_zeros(&k.serial) != serial {
                continue;
            }
            match &k.cert {
                Some(c) if c.issuer_der() == issuer_der => exact.push(k),
                _ => loose.push(k),
            }
        }
        exact.extend(loose);
        exact
    }

    /// Candidates for a recipient named by subjectKeyIdentifier.
    pub fn candidates_by_ski(&self, ski: &[u8]) -> Vec<&DecryptionKey> {
        self.keys
            .iter()
            .filter(|k| k.ski.as_deref() == Some(ski))
            .collect()
    }
}

fn strip_zeros(v: &[u8]) -> &[u8] {
    let n = v.iter().take_while(|&&b| b == 0).count();
    &v[n..]
}
