//! The token's keys through the custody core, wherever it runs: in this process
//! ([`CustodyKeys`]) or in `etee custody serve` ([`RemoteCustodyKeys`], when the
//! configuration says `[custody] mode = "process"`). The CLI, the appliance and KGSS use
//! keys through this one type, so that each of them works the same in both modes.

use crate::config::{Config, CustodyMode};
use crate::error::Result;
use crate::{CustodyKeys, RemoteCustodyKeys};
use etee_custody::KeyFacts;
use etee_formats::keys::{DecryptionKey, KeyError, KeyId, KeyRing, PrivateKeyOps, SigningKey};
use zeroize::Zeroizing;

/// A handle on the custody core, in this process or in another.
#[derive(Clone, Debug)]
pub enum CustodyHandle {
    InProcess(CustodyKeys),
    Process(RemoteCustodyKeys),
}

impl CustodyHandle {
    /// The core the configuration names: a connection to `[custody] socket` when
    /// `mode = "process"` (only the token's certificates are read here, no PIN), else the
    /// token opened and logged in here with the default policy ([`CustodyKeys::open`]).
    pub fn open(config: &Config) -> Result<Self> {
        Ok(match (config.custody.mode, &config.custody.socket) {
            (CustodyMode::Process, Some(socket)) => Self::Process(RemoteCustodyKeys::open(
                &config.hsm,
                &config.custody,
                socket,
            )?),
            _ => Self::InProcess(CustodyKeys::open(&config.hsm, &config.custody)?),
        })
    }

    /// A handle on the same core that speaks for `client`.
    pub fn for_client(&self, client: &str) -> Result<Self> {
        Ok(match self {
            Self::InProcess(k) => Self::InProcess(k.for_client(client)?),
            Self::Process(k) => Self::Process(k.for_client(client)?),
        })
    }

    /// The core in this process, if it runs here (what needs the token itself: its key
    /// attributes, the audit file's syncs).
    pub fn in_process(&self) -> Option<&CustodyKeys> {
        match self {
            Self::InProcess(k) => Some(k),
            Self::Process(_) => None,
        }
    }

    /// The authentication key, used through the core.
    pub fn signing_key(&self) -> Result<SigningKey> {
        match self {
            Self::InProcess(k) => k.signing_key(),
            Self::Process(k) => k.signing_key(),
        }
    }

    /// The ETK keys, used through the core.
    pub fn decryption_keys(&self) -> Result<Vec<DecryptionKey>> {
        match self {
            Self::InProcess(k) => k.decryption_keys(),
            Self::Process(k) => k.decryption_keys(),
        }
    }

    /// [`Self::decryption_keys`] as a [`KeyRing`].
    pub fn key_ring(&self) -> Result<KeyRing> {
        match self {
            Self::InProcess(k) => k.key_ring(),
            Self::Process(k) => k.key_ring(),
        }
    }

    /// Wraps `secret` with the wrapping key `key_id` ([`CustodyKeys::wrap_secret`]).
    pub fn wrap_secret(&self, key_id: &str, secret: &[u8]) -> Result<Vec<u8>, KeyError> {
        match self {
            Self::InProcess(k) => k.wrap_secret(key_id, secret),
            Self::Process(k) => k.wrap_secret(key_id, secret),
        }
    }

    /// Unwraps a secret wrapped with `key_id` ([`CustodyKeys::unwrap_secret`]).
    pub fn unwrap_secret(
        &self,
        key_id: &str,
        wrapped: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        match self {
            Self::InProcess(k) => k.unwrap_secret(key_id, wrapped),
            Self::Process(k) => k.unwrap_secret(key_id, wrapped),
        }
    }

    /// What the token says about the custody of key `key_id`, asked through the core
    /// ([`CustodyKeys::describe_key`]).
    pub fn describe_key(&self, key_id: &str) -> Result<KeyFacts, KeyError> {
        match self {
            Self::InProcess(k) => k.describe_key(key_id),
            Self::Process(k) => k.describe_key(key_id),
        }
    }

    /// The public key (SubjectPublicKeyInfo DER) of key `key_id`: read from the token
    /// (without logging in when the core runs in another process).
    pub fn public_key_der(&self, key_id: &str) -> Result<Vec<u8>> {
        match self {
            Self::InProcess(k) => k.hsm().public_key_der(key_id),
            Self::Process(k) => k.public_key_der(key_id),
        }
    }

    /// The token as it is now.
    pub fn token_summary(&self) -> Result<crate::TokenSummary> {
        match self {
            Self::InProcess(k) => k.hsm().pool().token(),
            Self::Process(k) => k.token_summary(),
        }
    }

    /// Where the audit chain stands; `None` when the custody process does not answer.
    pub fn audit_head(&self) -> Option<etee_custody::AuditHead> {
        match self {
            Self::InProcess(k) => Some(k.audit_head()),
            Self::Process(k) => k.audit_head().ok(),
        }
    }
}

/// Each use goes to the core this handle names, under its client id.
impl PrivateKeyOps for CustodyHandle {
    fn sign_pss_sha256(&self, key: &KeyId, digest: &[u8; 32]) -> Result<Vec<u8>, KeyError> {
        match self {
            Self::InProcess(k) => k.sign_pss_sha256(key, digest),
            Self::Process(k) => k.sign_pss_sha256(key, digest),
        }
    }

    fn decrypt_pkcs1v15(&self, key: &KeyId, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        match self {
            Self::InProcess(k) => k.decrypt_pkcs1v15(key, blob),
            Self::Process(k) => k.decrypt_pkcs1v15(key, blob),
        }
    }
}
