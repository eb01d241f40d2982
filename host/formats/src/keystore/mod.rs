//! eHealth keystores (`.p12`) and the software key provider.
//!
//! - [`pkcs12`]: our own PKCS#12 (RFC 7292) reader and writer. OpenSSL's `PKCS12_parse`
//!   returns a single private key, but an eHealth keystore holds several: the
//!   `authentication` key plus one ETK decryption key per alias, old keys included.
//! - [`software`]: [`SoftwareKeys`], a [`crate::keys::PrivateKeyOps`] over keys held in
//!   process memory (the non-HSM path).
//! - [`ehealth`]: [`EhealthKeystore`], which applies the eHealth alias convention and hands
//!   out a [`crate::keys::SigningKey`] and [`crate::keys::DecryptionKey`]s.

pub mod ehealth;
mod pbe;
pub mod pkcs12;
pub mod software;

pub use ehealth::{ehealth_entries, EhealthKeystore, KeyRole, KeystoreEntry};
pub use pkcs12::{read_pfx, write_pfx, CertBag, KeyBag, PfxContents, PfxEntry, Profile};
pub use software::SoftwareKeys;

use crate::ber::BerError;
use crate::cert::CertError;

/// Why a keystore could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeystoreError {
    /// The integrity MAC does not match, or encrypted content does not decrypt. PKCS#12
    /// cannot tell a wrong password from a damaged file, so neither do we.
    #[error("wrong keystore password, or the keystore is corrupt")]
    WrongPasswordOrCorrupt,
    /// An algorithm (PBE scheme, MAC digest, content type...) we do not implement; the
    /// dotted OID.
    #[error("unsupported keystore algorithm or content type {0}")]
    UnsupportedAlgorithm(String),
    /// The encoding is not valid BER.
    #[error("malformed keystore encoding: {0}")]
    Encoding(#[from] BerError),
    /// Valid BER, but not a valid PKCS#12 structure.
    #[error("malformed keystore: {0}")]
    Malformed(String),
    /// A PBE iteration count beyond what we accept (a hostile file could make us spin).
    #[error("iteration count {0} exceeds the limit")]
    TooManyIterations(u64),
    /// RC2 needs OpenSSL 3's legacy provider, and it could not be loaded.
    #[error("the OpenSSL legacy provider (needed for RC2) could not be loaded: {0}")]
    LegacyProviderUnavailable(String),
    /// A certificate in the keystore could not be parsed.
    #[error("keystore certificate: {0}")]
    Certificate(#[from] CertError),
    /// The writer was given an entry it cannot store.
    #[error("invalid keystore entry: {0}")]
    InvalidEntry(String),
    /// No entry with this alias.
    #[error("no keystore entry {0:?}")]
    UnknownAlias(String),
    #[error("openssl: {0}")]
    OpenSsl(#[from] openssl::error::ErrorStack),
    #[error("reading keystore: {0}")]
    Io(#[from] std::io::Error),
}
