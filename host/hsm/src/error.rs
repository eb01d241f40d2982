//! Errors of the PKCS#11 backend. PINs never appear in them.

use cryptoki::context::Function;
use cryptoki::error::{Error as CkError, RvError};
use std::path::PathBuf;

pub type Result<T, E = HsmError> = std::result::Result<T, E>;

/// Which PIN a PIN error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PinKind {
    User,
    SecurityOfficer,
}

impl std::fmt::Display for PinKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::User => "user",
            Self::SecurityOfficer => "security officer (SO)",
        })
    }
}

/// Failure of the PKCS#11 backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HsmError {
    /// The configuration file is missing, unreadable or wrong.
    #[error("configuration: {0}")]
    Config(String),
    /// A PIN file could not be used (the PIN itself is never shown).
    #[error("PIN file {path}: {reason}")]
    PinFile { path: PathBuf, reason: String },
    /// A PIN given as a systemd credential could not be used (the PIN is never shown).
    #[error("PIN credential {name}: {reason}")]
    Credential { name: String, reason: String },
    /// A share file of the SO PIN could not be used (its content is never shown).
    #[error("SO PIN share {path}: {reason}")]
    Share { path: PathBuf, reason: String },
    /// The SO PIN shares do not combine (too few, of different splits, damaged).
    #[error("SO PIN shares: {0}")]
    Shares(String),
    /// The PKCS#11 library could not be loaded or initialised.
    #[error("PKCS#11 module {module}: {reason}")]
    Module { module: PathBuf, reason: String },
    /// No token answers to the configured label or serial.
    #[error("no token with {selector} in {module} (tokens present: {present}){hint}")]
    TokenNotFound {
        selector: String,
        module: PathBuf,
        present: String,
        /// Where the module looks for tokens, when we know (SoftHSM's `SOFTHSM2_CONF`).
        hint: String,
    },
    /// `hsm init` on a token that is already initialised (it would destroy its keys).
    #[error("token {0} is already initialised; refusing to initialise it again (that would destroy its keys)")]
    TokenAlreadyInitialized(String),
    /// `C_Login` refused the PIN (CKR_PIN_INCORRECT).
    #[error("wrong {kind} PIN for token {token} (CKR_PIN_INCORRECT)")]
    WrongPin { kind: PinKind, token: String },
    /// The PIN is locked after too many failures (CKR_PIN_LOCKED).
    #[error("the {kind} PIN of token {token} is locked (CKR_PIN_LOCKED): the token refuses every login until its security officer sets the PIN again (`etee hsm init-pin --config FILE`, with the SO PIN file or its shares); `etee custody reset-pin` clears only the custody core's own count")]
    PinLocked { kind: PinKind, token: String },
    /// The token's user PIN was never set (CKR_USER_PIN_NOT_INITIALIZED): run `hsm init`.
    #[error("token {0} has no user PIN yet (CKR_USER_PIN_NOT_INITIALIZED): run `etee hsm init`")]
    UserPinNotInitialized(String),
    /// A PKCS#11 call failed.
    #[error("{function}: {code}{}", context_suffix(.context))]
    Pkcs11 {
        /// `C_Sign`, `C_FindObjectsInit`, ...
        function: String,
        /// `CKR_...`, or a description for failures that are not a return value.
        code: String,
        /// The return value, when the failure is one.
        rv: Option<RvError>,
        context: String,
    },
    /// No object with this CKA_ID (or label) in the token.
    #[error("no {what} {id:?} in the token{}", not_found_remedy(what, id))]
    NotFound { what: &'static str, id: String },
    /// A signing key without its certificate: generated, its CSR perhaps made, but the
    /// certificate the CA issued never installed.
    #[error(
        "no certificate {0:?} in the token: once the CA has issued it (for the request of \
         `etee keys csr --key {0}`), install it with `etee keys install-cert --config FILE \
         --key {0} --cert FILE`"
    )]
    NoCertificate(String),
    /// More than one object answers to a CKA_ID that must be unique.
    #[error("{count} {what} objects have CKA_ID {id:?}; ids must be unique")]
    Ambiguous {
        what: &'static str,
        id: String,
        count: usize,
    },
    /// `C_UnwrapKey` failed for a reason that may depend on the wrapped blob (integrity
    /// check, length). Final: the pool does not retry it, so that neither the answer nor
    /// its timing tells one cause from another; the return value is for the audit record.
    #[error("C_UnwrapKey: {} (the wrapped secret was not accepted)", ckr_name(*.0))]
    UnwrapFailed(RvError),
    /// `C_Decrypt` failed for a reason that may depend on the ciphertext (padding, length,
    /// the token's generic errors). Said without detail and final (never retried), so that
    /// neither the answer nor its timing is a padding oracle; the return value is only for
    /// the audit record (which the caller never sees).
    #[error("decryption failed")]
    DecryptFailed(Option<RvError>),
    /// A key with this CKA_ID is already in the token.
    #[error("a key with CKA_ID {0:?} is already in the token")]
    KeyExists(String),
    /// A keystore could not be read.
    #[error("keystore: {0}")]
    Keystore(#[from] etee_formats::keystore::KeystoreError),
    /// A certificate could not be read or does not fit.
    #[error("certificate: {0}")]
    Certificate(String),
    #[error("openssl: {0}")]
    OpenSsl(#[from] openssl::error::ErrorStack),
    /// The session pool was shut down or a worker died.
    #[error("the PKCS#11 session pool is not running")]
    PoolStopped,
    /// A request the backend refuses (bad profile, bad input...).
    #[error("{0}")]
    Invalid(String),
    /// The custody core's audit chain cannot be used (damaged, in use, unwritable).
    #[error("custody audit chain: {0}")]
    Audit(String),
    /// The custody process (`etee custody serve`) cannot be reached.
    #[error("custody process not reachable at {socket}: {reason} (is `etee custody serve --config FILE` running, with this [custody] socket?)")]
    CustodyUnreachable { socket: PathBuf, reason: String },
}

fn context_suffix(context: &str) -> String {
    if context.is_empty() {
        String::new()
    } else {
        format!(" ({context})")
    }
}

impl HsmError {
    /// The PKCS#11 return value behind this error, if any.
    pub fn rv(&self) -> Option<RvError> {
        match self {
            Self::Pkcs11 { rv, .. } => *rv,
            Self::WrongPin { .. } => Some(RvError::PinIncorrect),
            Self::PinLocked { .. } => Some(RvError::PinLocked),
            Self::UserPinNotInitialized(_) => Some(RvError::UserPinNotInitialized),
            // Final by design (see the variant): no return value the pool would recover from.
            Self::UnwrapFailed(_) => None,
            _ => None,
        }
    }

    /// The `CKR_...` name of [`Self::rv`].
    pub fn ckr(&self) -> Option<String> {
        self.rv().map(ckr_name)
    }

    pub(crate) fn ck(e: CkError, context: impl Into<String>) -> Self {
        let context = context.into();
        match e {
            CkError::Pkcs11(rv, function) => Self::Pkcs11 {
                function: function_name(function),
                code: ckr_name(rv),
                rv: Some(rv),
                context,
            },
            other => Self::Pkcs11 {
                function: "cryptoki".into(),
                code: other.to_string(),
                rv: None,
                context,
            },
        }
    }
}

/// `RvError::PinIncorrect` → `CKR_PIN_INCORRECT`.
pub fn ckr_name(rv: RvError) -> String {
    let debug = format!("{rv:?}");
    let mut out = String::from("CKR");
    for c in debug.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// `Function::SignInit` → `C_SignInit`.
pub fn function_name(f: Function) -> String {
    format!("C_{f:?}")
}

/// Extension to turn cryptoki results into ours with a short context.
pub(crate) trait CkContext<T> {
    fn ctx(self, context: &str) -> Result<T>;
}

impl<T> CkContext<T> for std::result::Result<T, CkError> {
    fn ctx(self, context: &str) -> Result<T> {
        self.map_err(|e| HsmError::ck(e, context))
    }
}

/// What to do when the key a command needs most is missing (an empty token, or one
/// whose authentication key was never imported).
fn not_found_remedy(what: &str, id: &str) -> &'static str {
    match (what, id) {
        ("private key", "authentication") => {
            ": import the institution's keystore (`etee keys import --config FILE --p12 \
             FILE`) or generate the key (`etee keys generate --config FILE --profile \
             authentication`), see `etee keys list --config FILE`"
        }
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(ckr_name(RvError::PinIncorrect), "CKR_PIN_INCORRECT");
        assert_eq!(
            ckr_name(RvError::CryptokiNotInitialized),
            "CKR_CRYPTOKI_NOT_INITIALIZED"
        );
        assert_eq!(
            ckr_name(RvError::SessionHandleInvalid),
            "CKR_SESSION_HANDLE_INVALID"
        );
        assert_eq!(function_name(Function::SignInit), "C_SignInit");
        let e = HsmError::ck(
            CkError::Pkcs11(RvError::DeviceError, Function::Sign),
            "key x",
        );
        assert_eq!(e.to_string(), "C_Sign: CKR_DEVICE_ERROR (key x)");
        assert_eq!(e.rv(), Some(RvError::DeviceError));
    }
}
