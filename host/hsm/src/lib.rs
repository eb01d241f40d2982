//! PKCS#11 backend for etee: the institution's private keys live in an HSM (or SoftHSM2)
//! and never leave it.
//!
//! - [`config`]: the `[hsm]` table of the TOML configuration, PIN files, key profiles.
//! - [`token`]: the PKCS#11 module, loaded and `C_Initialize`d once per process; tokens
//!   selected by label or serial (never by slot number); `hsm init`.
//! - [`pool`]: a small pool of logged-in sessions, each on its own thread (cryptoki calls
//!   block), with recovery from session and device errors.
//! - [`keys`]: key generation in the token with safe templates, certificates beside the
//!   keys, CSRs for new authentication keys.
//! - [`import`]: one-time import of an eHealth `.p12` keystore.
//! - [`ops`]: [`HsmKeys`], the [`etee_formats::keys::PrivateKeyOps`] over the token.
//! - [`list`]: what the token holds, with the security attributes of every key.
//! - [`custody`]: the custody core (`etee-custody`) in this process in front of the token:
//!   [`HsmToken`] and [`CustodyKeys`] (policy check and audit record before every result,
//!   including wrapping and unwrapping secrets with a wrapping key).
//! - [`remote`]: the same core in a separate process (`etee custody serve`) behind a Unix
//!   socket, and [`RemoteCustodyKeys`], its client.
//!
//! [`Hsm`] ties them together: open it from a configuration, then seal and unseal with
//! [`Hsm::keys`].
//!
//! ```no_run
//! use etee_formats::cms::{seal, unseal_to_vec, Recipient, SealOptions, UnsealOptions};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let (etk, message): (etee_formats::cert::Certificate, Vec<u8>) = todo!();
//! let config = etee_hsm::Config::load("/etc/etee/institution.toml")?.hsm;
//! let hsm = etee_hsm::Hsm::open(&config)?; // logs in with the PIN file
//! // Seal with the token's authentication key...
//! let sender = hsm.keys().signing_key()?;
//! let mut sealed = Vec::new();
//! seal(&sender, &[Recipient::Certificate(etk)], None, &b"hello"[..], &mut sealed, &SealOptions::default())?;
//! // ...and unseal with every ETK key in the token.
//! let ring = hsm.keys().key_ring()?;
//! let (result, content) = unseal_to_vec(&message, &ring, &UnsealOptions::default()).unwrap();
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

pub mod config;
pub mod custody;
pub mod destroy;
mod error;
pub mod handle;
pub mod import;
pub mod keys;
pub mod list;
pub mod ops;
pub mod ownership;
pub mod pool;
pub mod remote;
pub mod so_shares;
pub mod token;

pub use config::{
    Config, CustodyConfig, CustodyMode, HsmConfig, KeyProfile, KeyRole, Pin, PinSource,
    TokenSelector,
};
pub use custody::{CustodyKeys, HsmToken};
pub use destroy::{destroy_plan, DestroyPlan};
pub use error::{ckr_name, HsmError, PinKind, Result};
pub use handle::CustodyHandle;
pub use import::{ImportOptions, ImportReport, ImportedKey};
pub use keys::GeneratedKey;
pub use list::{CertificateInfo, Inventory, KeyClass, KeyInfo};
pub use ops::HsmKeys;
pub use pool::SessionPool;
pub use remote::RemoteCustodyKeys;
pub use token::{
    check_init, init_token, init_token_reporting, init_token_with, init_user_pin, token_summary,
    InitError, Module, TokenSummary,
};

use std::sync::Arc;

/// An opened token: the configuration and a logged-in session pool.
pub struct Hsm {
    config: HsmConfig,
    pool: Arc<SessionPool>,
}

/// Tells the operator about something to fix in the set-up (a PIN file readable by
/// others...): in the log when the process has one (the services), else on standard error
/// (the commands). Each message once per process, however often it is found.
pub fn warn_operator(message: &str) {
    static SAID: std::sync::Mutex<std::collections::BTreeSet<String>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let new = SAID
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(message.to_owned());
    if !new {
        return;
    }
    // A log whose filter leaves these out (RUST_LOG naming other targets only) must not
    // swallow them: then they go to standard error as the commands write them.
    if tracing::dispatcher::has_been_set()
        && tracing::enabled!(target: "etee::operator", tracing::Level::WARN)
    {
        tracing::warn!(target: "etee::operator", "{message}");
    } else {
        eprintln!("etee: warning: {message}");
    }
}

impl std::fmt::Debug for Hsm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hsm")
            .field("module", &self.config.module)
            .field("token", &self.config.token)
            .field("sessions", &self.pool.size())
            .finish()
    }
}

impl Hsm {
    /// Loads the module (once per process), finds the token, reads the user PIN file and
    /// logs in. A wrong PIN is [`HsmError::WrongPin`].
    ///
    /// The bare login: neither counted nor refused by the custody core's lock-out. Commands
    /// log in through [`CustodyKeys::open_token`], which puts every login with the user PIN
    /// on the audit chain.
    pub fn open(config: &HsmConfig) -> Result<Self> {
        let pin = config.user_pin()?;
        let pool = SessionPool::open(config, pin)?;
        Ok(Self {
            config: config.clone(),
            pool: Arc::new(pool),
        })
    }

    pub fn config(&self) -> &HsmConfig {
        &self.config
    }

    /// The session pool (for callers that run their own PKCS#11 work on it).
    pub fn pool(&self) -> &Arc<SessionPool> {
        &self.pool
    }

    /// The token's keys as a [`etee_formats::keys::PrivateKeyOps`].
    pub fn keys(&self) -> HsmKeys {
        HsmKeys::new(self.pool.clone())
    }

    /// Everything the token holds, with the security attributes of each key.
    pub fn list(&self) -> Result<Inventory> {
        list::inventory(&self.pool)
    }

    /// Generates a key pair (or a wrapping key) in the token following `profile`.
    pub fn generate(&self, profile: &KeyProfile) -> Result<GeneratedKey> {
        keys::generate(&self.pool, profile)
    }

    /// Installs the certificate (and CA chain) of a key generated in the token; an ETK key
    /// is renamed to the certificate's decimal serial. Returns the key's final CKA_ID.
    pub fn install_certificate(
        &self,
        key_id: &str,
        cert: &etee_formats::cert::Certificate,
        chain: &[etee_formats::cert::Certificate],
    ) -> Result<String> {
        keys::install_certificate(&self.pool, key_id, cert, chain)
    }

    /// The DER SubjectPublicKeyInfo of the private key `key_id` (from its modulus and
    /// exponent, so a key whose public object is missing still has one).
    pub fn public_key_der(&self, key_id: &str) -> Result<Vec<u8>> {
        let key_id = key_id.to_string();
        self.pool.run(move |conn| {
            let private = conn.find_object(
                cryptoki::object::ObjectClass::PRIVATE_KEY,
                key_id.as_bytes(),
            )?;
            keys::public_key_der(conn.session(), private)
        })
    }

    /// A PKCS#10 request for an authentication key, signed in the token (RSASSA-PSS);
    /// `subject` is a DER Name ([`keys::subject_der`]).
    pub fn csr(&self, key_id: &str, subject: &[u8]) -> Result<Vec<u8>> {
        keys::csr(&self.pool, key_id, subject)
    }

    /// Imports every usable key of an eHealth keystore (see [`import`]).
    pub fn import(
        &self,
        keystore: &etee_formats::keystore::EhealthKeystore,
        options: &ImportOptions,
    ) -> Result<ImportReport> {
        import::import_keystore(&self.pool, keystore, options)
    }
}

// The appliance shares these across threads.
const _: fn() = || {
    fn shared<T: Send + Sync>() {}
    shared::<Hsm>();
    shared::<HsmKeys>();
    shared::<SessionPool>();
};
