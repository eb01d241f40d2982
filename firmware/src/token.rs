//! The HSM as the core sees it: a [`Token`] that logs in and uses keys by id.
//!
//! The host implements it over PKCS#11 (cryptoki: session pool, re-login, re-finding keys
//! by `CKA_ID` after device errors); tests use `insecure::InsecureMemoryToken`
//! (feature `insecure`).
//! The core calls the key-using methods only after the lock state, the policy and the key
//! kind allowed the request, so an implementation may assume that — but a real token also
//! enforces `CKA_SIGN`/`CKA_DECRYPT`/`CKA_WRAP`/`CKA_UNWRAP` itself, which is the second
//! line.

use crate::id::KeyId;
use core::fmt;
use serde::{Deserialize, Serialize};

/// What a key is for. eHealth keeps the two apart: the authentication key signs (and never
/// decrypts), ETK keys decrypt (and never sign); a wrapping key does neither.
///
/// The postcard encoding is the variant index: append new kinds at the end only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeyKind {
    /// The authentication key: RSA-PSS SHA-256 signatures only.
    Authentication,
    /// An ETK key (current or old): PKCS#1 v1.5 key-transport decryption only.
    Encryption,
    /// An AES key that wraps and unwraps secrets (AES key wrap, RFC 3394) only, e.g. the
    /// key under which the KGSS service stores its keys.
    Wrapping,
}

/// A PKCS#11 function, as carried in errors up to the wire and the audit log.
///
/// The postcard encoding is the variant index: append new functions at the end only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum TokenFunction {
    Initialize,
    GetSlotList,
    GetTokenInfo,
    OpenSession,
    CloseSession,
    Login,
    Logout,
    FindObjectsInit,
    FindObjects,
    FindObjectsFinal,
    GetAttributeValue,
    SignInit,
    Sign,
    DecryptInit,
    Decrypt,
    WrapKey,
    UnwrapKey,
    CreateObject,
    DestroyObject,
}

impl TokenFunction {
    /// The PKCS#11 name, e.g. `C_Login`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Initialize => "C_Initialize",
            Self::GetSlotList => "C_GetSlotList",
            Self::GetTokenInfo => "C_GetTokenInfo",
            Self::OpenSession => "C_OpenSession",
            Self::CloseSession => "C_CloseSession",
            Self::Login => "C_Login",
            Self::Logout => "C_Logout",
            Self::FindObjectsInit => "C_FindObjectsInit",
            Self::FindObjects => "C_FindObjects",
            Self::FindObjectsFinal => "C_FindObjectsFinal",
            Self::GetAttributeValue => "C_GetAttributeValue",
            Self::SignInit => "C_SignInit",
            Self::Sign => "C_Sign",
            Self::DecryptInit => "C_DecryptInit",
            Self::Decrypt => "C_Decrypt",
            Self::WrapKey => "C_WrapKey",
            Self::UnwrapKey => "C_UnwrapKey",
            Self::CreateObject => "C_CreateObject",
            Self::DestroyObject => "C_DestroyObject",
        }
    }
}

/// A failed PKCS#11 call: which function, and its `CK_RV`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TokenError {
    pub function: TokenFunction,
    pub ckr: u64,
}

impl TokenError {
    pub const fn new(function: TokenFunction, ckr: u64) -> Self {
        Self { function, ckr }
    }
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed: CKR 0x{:08X}", self.function.name(), self.ckr)
    }
}

/// The `CK_RV` values the core and its tests refer to (PKCS#11 v2.40 / 3.0).
pub mod ckr {
    pub const GENERAL_ERROR: u64 = 0x05;
    pub const FUNCTION_FAILED: u64 = 0x06;
    pub const DATA_LEN_RANGE: u64 = 0x21;
    pub const DEVICE_ERROR: u64 = 0x30;
    pub const DEVICE_REMOVED: u64 = 0x32;
    pub const ENCRYPTED_DATA_INVALID: u64 = 0x40;
    pub const ENCRYPTED_DATA_LEN_RANGE: u64 = 0x41;
    pub const KEY_HANDLE_INVALID: u64 = 0x60;
    pub const KEY_SIZE_RANGE: u64 = 0x62;
    pub const KEY_FUNCTION_NOT_PERMITTED: u64 = 0x68;
    pub const OBJECT_HANDLE_INVALID: u64 = 0x82;
    pub const PIN_INCORRECT: u64 = 0xA0;
    pub const PIN_INVALID: u64 = 0xA1;
    pub const PIN_LEN_RANGE: u64 = 0xA2;
    pub const PIN_LOCKED: u64 = 0xA4;
    pub const SESSION_CLOSED: u64 = 0xB0;
    pub const SESSION_HANDLE_INVALID: u64 = 0xB3;
    pub const TOKEN_NOT_PRESENT: u64 = 0xE0;
    pub const USER_ALREADY_LOGGED_IN: u64 = 0x100;
    pub const USER_NOT_LOGGED_IN: u64 = 0x101;
    pub const WRAPPED_KEY_INVALID: u64 = 0x110;
    pub const WRAPPED_KEY_LEN_RANGE: u64 = 0x112;
    pub const BUFFER_TOO_SMALL: u64 = 0x150;
    pub const CRYPTOKI_NOT_INITIALIZED: u64 = 0x190;

    /// Whether `ckr` says that the token could not try the operation at all: the key,
    /// the session, the login or the device is gone. No input causes these, so a
    /// decryption that fails with one is passed on as the token's error (the caller learns
    /// that the token is unavailable, not that a message is bad); any other failure of a
    /// decryption stays the one uniform `DecryptFailed`.
    pub const fn token_unavailable(ckr: u64) -> bool {
        matches!(
            ckr,
            KEY_HANDLE_INVALID
                | OBJECT_HANDLE_INVALID
                | SESSION_HANDLE_INVALID
                | SESSION_CLOSED
                | USER_NOT_LOGGED_IN
                | DEVICE_REMOVED
                | TOKEN_NOT_PRESENT
                | CRYPTOKI_NOT_INITIALIZED
        )
    }
}

/// The key operations of one HSM token.
///
/// Implementations write results into `out` (sized by the core from
/// [`crate::config::MAX_RSA_LEN`], or [`crate::config::MAX_WRAPPED_LEN`] and
/// [`crate::config::MAX_SECRET_LEN`] for key wrap) and return the length written.
/// What the token says about a key's custody, read from its PKCS#11 attributes
/// (`CKA_SENSITIVE`, `CKA_EXTRACTABLE`, `CKA_NEVER_EXTRACTABLE`, `CKA_LOCAL`): the facts an
/// attestation states. `None` where the token did not say.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyFacts {
    pub kind: KeyKind,
    pub sensitive: Option<bool>,
    pub extractable: Option<bool>,
    pub never_extractable: Option<bool>,
    /// Generated in the token (not imported).
    pub local: Option<bool>,
}

pub trait Token {
    /// RSASSA-PSS, SHA-256, MGF1-SHA-256, salt 32, over a precomputed SHA-256 `digest`
    /// (PKCS#11 `CKM_RSA_PKCS_PSS`).
    fn sign_pss_sha256(
        &mut self,
        key: &KeyId,
        digest: &[u8; 32],
        out: &mut [u8],
    ) -> Result<usize, TokenError>;

    /// RSA PKCS#1 v1.5 decryption of a key-transport blob (`CKM_RSA_PKCS`). The core turns
    /// every failure into one uniform wire error, except those that say the token could not
    /// try ([`ckr::token_unavailable`]): implementations must report a failure that the
    /// blob may have caused with another code.
    fn decrypt_pkcs1v15(
        &mut self,
        key: &KeyId,
        blob: &[u8],
        out: &mut [u8],
    ) -> Result<usize, TokenError>;

    /// AES key wrap (RFC 3394, `CKM_AES_KEY_WRAP`) of `secret` (16, 24 or 32 bytes: an AES
    /// key) under the wrapping key `key`; writes `secret.len() + 8` bytes. The secret is
    /// only ever in `secret` and the token: implementations must not keep or log it.
    fn wrap_aes_kw(
        &mut self,
        key: &KeyId,
        secret: &[u8],
        out: &mut [u8],
    ) -> Result<usize, TokenError>;

    /// The inverse of [`Token::wrap_aes_kw`]: checks the RFC 3394 integrity value and writes
    /// the secret (`wrapped.len() - 8` bytes). Like decryption, every failure reaches the
    /// client as one uniform wire error, whatever the CKR.
    fn unwrap_aes_kw(
        &mut self,
        key: &KeyId,
        wrapped: &[u8],
        out: &mut [u8],
    ) -> Result<usize, TokenError>;

    /// `C_Login` as the user. `CKR_USER_ALREADY_LOGGED_IN` must be reported as success.
    fn login(&mut self, pin: &[u8]) -> Result<(), TokenError>;

    /// `C_Logout`; errors are ignored (the core is locked afterwards either way).
    fn logout(&mut self);

    /// The kind of `key`, or `None` if the token has no such key. Called before any
    /// key use; should answer from metadata found at start-up, without a key operation.
    fn key_kind(&self, key: &KeyId) -> Option<KeyKind>;

    /// Destroys the key `key` with the token's other objects of its id (its public key,
    /// its certificate) and returns how many there were; an error with
    /// [`ckr::KEY_HANDLE_INVALID`] when there is none. Asked only by
    /// [`crate::custody::Custody::destroy_key`], an administrator's local call.
    fn destroy_key(&mut self, key: &KeyId) -> Result<usize, TokenError>;

    /// The custody attributes of `key` ([`KeyFacts`]); reads them, uses nothing. Asked
    /// only for a key of a known kind, after the policy check.
    fn key_facts(&mut self, key: &KeyId) -> Result<KeyFacts, TokenError>;
}
