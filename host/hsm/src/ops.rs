//! [`HsmKeys`]: the token's keys behind [`PrivateKeyOps`], so that the formats code seals
//! and unseals with keys it never sees.
//!
//! A [`KeyId`] is the key's CKA_ID as UTF-8 (`authentication`, or an ETK certificate's
//! decimal serial); keys are also found by CKA_LABEL when no CKA_ID matches.

use crate::error::{HsmError, Result};
use crate::keys::{self, AUTHENTICATION_ID};
use crate::pool::SessionPool;
use cryptoki::error::RvError;
use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use etee_formats::keys::{
    DecryptionKey, KeyError, KeyId, KeyRing, PrivateKeyOps, SignerRef, SigningKey,
};
use std::sync::Arc;
use zeroize::Zeroizing;

/// The private keys of one token, used through a [`SessionPool`].
#[derive(Clone)]
pub struct HsmKeys {
    pool: Arc<SessionPool>,
}

impl std::fmt::Debug for HsmKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HsmKeys")
            .field("token", &self.pool.token_name())
            .finish()
    }
}

impl HsmKeys {
    pub fn new(pool: Arc<SessionPool>) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &Arc<SessionPool> {
        &self.pool
    }

    /// The authentication key (CKA_ID `authentication`) with its certificate and the CA
    /// certificates above it found in the token.
    pub fn signing_key(&self) -> Result<SigningKey> {
        self.signing_key_with_id(AUTHENTICATION_ID)
    }

    /// Like [`Self::signing_key`] for another CKA_ID.
    pub fn signing_key_with_id(&self, id: &str) -> Result<SigningKey> {
        let key_id = id.to_string();
        let (cert, chain) = self.pool.run(move |conn| {
            // The private key must be there (this also checks that we are logged in).
            conn.find_object(ObjectClass::PRIVATE_KEY, key_id.as_bytes())?;
            let certs = keys::all_certificates(conn)?;
            let cert = certs
                .iter()
                .find(|(cid, _)| cid == key_id.as_bytes())
                .map(|(_, c)| c.clone())
                .ok_or_else(|| HsmError::NoCertificate(key_id.clone()))?;
            let all: Vec<_> = certs.into_iter().map(|(_, c)| c).collect();
            let chain = keys::chain_for(&cert, &all);
            Ok((cert, chain))
        })?;
        Ok(SigningKey {
            ops: Arc::new(self.clone()),
            key: KeyId(id.to_string()),
            signer: SignerRef::Certificate { cert, chain },
        })
    }

    /// Every ETK decryption key (CKA_DECRYPT) whose certificate is in the token, old ones
    /// included; each answers to its certificate's serial.
    pub fn decryption_keys(&self) -> Result<Vec<DecryptionKey>> {
        let found = self.pool.run(|conn| {
            let certs = keys::all_certificates(conn)?;
            let mut out = Vec::new();
            let handles = conn.find_all(&[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::Decrypt(true),
            ])?;
            for h in handles {
                let attrs = keys::attributes(
                    conn.session(),
                    h,
                    &[AttributeType::Id, AttributeType::Modulus],
                )?;
                let (mut id, mut bits) = (None, 0u32);
                for a in attrs {
                    match a {
                        Attribute::Id(v) => id = Some(v),
                        Attribute::Modulus(v) => bits = modulus_bits(&v),
                        _ => {}
                    }
                }
                let Some(id) = id else { continue };
                if let Some((_, cert)) = certs.iter().find(|(cid, _)| *cid == id) {
                    out.push((
                        String::from_utf8_lossy(&id).into_owned(),
                        cert.clone(),
                        bits,
                    ));
                }
            }
            Ok(out)
        })?;
        let ops: Arc<dyn PrivateKeyOps> = Arc::new(self.clone());
        Ok(found
            .into_iter()
            .map(|(id, cert, bits)| DecryptionKey {
                ops: ops.clone(),
                key: KeyId(id),
                serial: cert.serial().to_vec(),
                cert: Some(cert),
                ski: None,
                modulus_bits: bits,
            })
            .collect())
    }

    /// [`Self::decryption_keys`] as a [`KeyRing`].
    pub fn key_ring(&self) -> Result<KeyRing> {
        let mut ring = KeyRing::new();
        ring.extend(self.decryption_keys()?);
        Ok(ring)
    }
}

fn modulus_bits(n: &[u8]) -> u32 {
    let skip = n.iter().take_while(|&&b| b == 0).count();
    match n.get(skip) {
        Some(&first) => (n.len() - skip) as u32 * 8 - first.leading_zeros(),
        None => 0,
    }
}

impl PrivateKeyOps for HsmKeys {
    fn sign_pss_sha256(&self, key: &KeyId, digest: &[u8; 32]) -> Result<Vec<u8>, KeyError> {
        self.pool
            .run(|conn| keys::sign_pss(conn, key.0.as_bytes(), digest))
            .map_err(|e| match e {
                HsmError::NotFound { .. } => KeyError::UnknownKey(key.clone()),
                HsmError::PoolStopped => KeyError::Unavailable(e.to_string()),
                e => KeyError::SignFailed {
                    key: key.clone(),
                    reason: e.to_string(),
                },
            })
    }

    fn decrypt_pkcs1v15(&self, key: &KeyId, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        self.pool
            .run(|conn| keys::decrypt_pkcs1v15(conn, key.0.as_bytes(), blob))
            // One uniform error for whatever the ciphertext may have caused (no padding
            // oracle); a token that could not try is unavailable, not a failed decryption.
            .map_err(|e| match e {
                HsmError::DecryptFailed(_) => KeyError::DecryptFailed,
                HsmError::NotFound { .. } => KeyError::UnknownKey(key.clone()),
                other => KeyError::Unavailable(format!("decrypting with {}: {other}", key.0)),
            })
    }
}

/// Passes on only the failures that cannot depend on the ciphertext (so that the pool
/// may recover from them and retry); everything else becomes one opaque error, never
/// retried, so that neither the result nor the timing of a retry tells padding errors
/// from others.
pub(crate) fn decrypt_error(e: cryptoki::error::Error) -> HsmError {
    let e = HsmError::ck(e, "decrypting");
    let rv = e.rv();
    match rv {
        Some(
            RvError::SessionHandleInvalid
            | RvError::SessionClosed
            | RvError::CryptokiNotInitialized
            | RvError::UserNotLoggedIn
            | RvError::KeyHandleInvalid
            | RvError::ObjectHandleInvalid
            | RvError::TokenNotPresent
            | RvError::DeviceRemoved,
        ) => e,
        _ => HsmError::DecryptFailed(rv),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn modulus_bits() {
        assert_eq!(super::modulus_bits(&[0x00, 0x80, 0, 0]), 24);
        assert_eq!(super::modulus_bits(&[0x01, 0]), 9);
        assert_eq!(super::modulus_bits(&[]), 0);
    }
}
