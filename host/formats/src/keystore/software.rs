//! Private keys held in process memory: the software (non-HSM) key provider.

use crate::keys::{KeyError, KeyId, PrivateKeyOps};
use openssl::md::Md;
use openssl::pkey::{Id, PKey, Private};
use openssl::pkey_ctx::PkeyCtx;
use openssl::rsa::Padding;
use openssl::sign::RsaPssSaltlen;
use std::collections::BTreeMap;
use std::fmt;
use zeroize::Zeroizing;

/// A [`PrivateKeyOps`] over OpenSSL keys **held in this process's memory**, typically
/// loaded from a `.p12` file.
///
/// This is the non-HSM path: anything able to read this process's memory can read the
/// keys. Use it for tests, tooling and deployments that accept software keys; production
/// custody belongs in an HSM. OpenSSL wipes key material when a key is freed; `Debug`
/// prints key names only.
#[derive(Default)]
pub struct SoftwareKeys {
    keys: BTreeMap<KeyId, PKey<Private>>,
}

impl fmt::Debug for SoftwareKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SoftwareKeys (in process memory)")
            .field("keys", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl SoftwareKeys {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a key under `id`, returning the key it replaces, if any.
    pub fn insert(&mut self, id: KeyId, key: PKey<Private>) -> Option<PKey<Private>> {
        self.keys.insert(id, key)
    }

    pub fn contains(&self, id: &KeyId) -> bool {
        self.keys.contains_key(id)
    }

    /// The names of the keys held.
    pub fn ids(&self) -> impl Iterator<Item = &KeyId> {
        self.keys.keys()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub(crate) fn get(&self, id: &KeyId) -> Option<&PKey<Private>> {
        self.keys.get(id)
    }

    /// Key size in bits (RSA modulus; EC field size).
    pub fn bits(&self, id: &KeyId) -> Option<u32> {
        self.keys.get(id).map(|k| k.bits())
    }

    /// The key as unencrypted PKCS#8 DER, for importing it elsewhere (an HSM).
    pub fn pkcs8_der(&self, id: &KeyId) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let key = self
            .keys
            .get(id)
            .ok_or_else(|| KeyError::UnknownKey(id.clone()))?;
        key.private_key_to_pkcs8()
            .map(Zeroizing::new)
            .map_err(|e| KeyError::Unavailable(format!("exporting {id}: {e}")))
    }
}

impl PrivateKeyOps for SoftwareKeys {
    fn sign_pss_sha256(&self, key: &KeyId, digest: &[u8; 32]) -> Result<Vec<u8>, KeyError> {
        let pkey = self
            .keys
            .get(key)
            .ok_or_else(|| KeyError::UnknownKey(key.clone()))?;
        let fail = |reason: String| KeyError::SignFailed {
            key: key.clone(),
            reason,
        };
        if !matches!(pkey.id(), Id::RSA | Id::RSA_PSS) {
            return Err(fail("not an RSA key".into()));
        }
        let sign = || -> Result<Vec<u8>, openssl::error::ErrorStack> {
            // EVP_PKEY_sign over the digest: the caller hashed already.
            let mut ctx = PkeyCtx::new(pkey)?;
            ctx.sign_init()?;
            ctx.set_rsa_padding(Padding::PKCS1_PSS)?;
            ctx.set_signature_md(Md::sha256())?;
            ctx.set_rsa_mgf1_md(Md::sha256())?;
            ctx.set_rsa_pss_saltlen(RsaPssSaltlen::custom(32))?;
            let mut sig = Vec::new();
            ctx.sign_to_vec(digest, &mut sig)?;
            Ok(sig)
        };
        sign().map_err(|e| fail(e.to_string()))
    }

    fn decrypt_pkcs1v15(&self, key: &KeyId, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let pkey = self
            .keys
            .get(key)
            .ok_or_else(|| KeyError::UnknownKey(key.clone()))?;
        let decrypt = || -> Result<Zeroizing<Vec<u8>>, openssl::error::ErrorStack> {
            let mut ctx = PkeyCtx::new(pkey)?;
            ctx.decrypt_init()?;
            ctx.set_rsa_padding(Padding::PKCS1)?;
            let mut out = Zeroizing::new(Vec::new());
            ctx.decrypt_to_vec(blob, &mut out)?;
            Ok(out)
        };
        // Every failure looks the same (no padding oracle). A non-RSA key fails in
        // set_rsa_padding, the same way.
        decrypt().map_err(|_| KeyError::DecryptFailed)
    }
}
