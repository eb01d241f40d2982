//! Request and response frames between the host and the custody core.
//!
//! A frame is
//!
//! ```text
//! version: u16 big-endian | id: u8 | body: postcard encoding of the operation's fields
//! ```
//!
//! The version comes first and has a fixed width so that a peer of any version can read it
//! and answer [`Error::VersionMismatch`] instead of misreading the rest. The id is an explicit
//! number per operation (see [`request_id`], [`response_id`]), checked for duplicates at
//! compile time; Rust variant order does not matter for frames, so operations can be added
//! anywhere and retired ids are never reused. Inside bodies, the nested enums ([`Error`],
//! [`TokenFunction`](crate::token::TokenFunction), ...) use postcard's variant index: there
//! the order *is* the wire contract, and variants are only ever appended (pinned by tests).
//!
//! Frames are bounded ([`config::MAX_REQUEST_FRAME`], [`config::MAX_RESPONSE_FRAME`]); a
//! frame must be consumed exactly, trailing bytes are a [`FrameError::BadFrame`].

use crate::audit::AuditHead;
use crate::config::{
    self, FRAME_HEADER_LEN, MAX_BLOB_LEN, MAX_PIN_LEN, MAX_PLAINTEXT_LEN, MAX_SECRET_LEN,
    MAX_SIGNATURE_LEN, MAX_WRAPPED_LEN, PROTOCOL_VERSION,
};
use crate::id::{ClientId, KeyId};
use crate::lock::LockState;
use crate::secret::Secret;
use crate::token::{KeyFacts, TokenError};
use core::fmt;
use heapless::Vec;
use serde::{Deserialize, Serialize};

/// A user PIN in transit: wiped on drop, never printed.
pub type Pin = Secret<MAX_PIN_LEN>;
/// Decrypted key-transport content (a content-encryption key): wiped on drop, never printed.
pub type Plaintext = Secret<MAX_PLAINTEXT_LEN>;
/// A PKCS#1 v1.5 key-transport blob (the `encryptedKey` of a KeyTransRecipientInfo).
pub type Blob = Vec<u8, MAX_BLOB_LEN>;
/// An RSA signature.
pub type Signature = Vec<u8, MAX_SIGNATURE_LEN>;
/// A secret to wrap or just unwrapped (an AES key of 16, 24 or 32 bytes): wiped on drop,
/// never printed.
pub type WrapSecret = Secret<MAX_SECRET_LEN>;
/// A secret wrapped with AES key wrap (RFC 3394): the secret's length plus 8 bytes. Not
/// secret itself (that is the point of wrapping it), so a plain vector.
pub type Wrapped = Vec<u8, MAX_WRAPPED_LEN>;

/// Numeric ids of requests. Never reuse a retired id.
pub mod request_id {
    pub const STATUS: u8 = 0x01;
    pub const UNLOCK: u8 = 0x02;
    pub const LOCK: u8 = 0x03;
    pub const AUDIT_HEAD: u8 = 0x04;
    pub const SIGN_PSS_SHA256: u8 = 0x10;
    pub const DECRYPT_PKCS1V15: u8 = 0x11;
    pub const WRAP_SECRET: u8 = 0x12;
    pub const UNWRAP_SECRET: u8 = 0x13;
    pub const DESCRIBE_KEY: u8 = 0x14;
    /// Every request id, for the duplicate check.
    pub const ALL: [u8; 9] = [
        STATUS,
        UNLOCK,
        LOCK,
        AUDIT_HEAD,
        SIGN_PSS_SHA256,
        DECRYPT_PKCS1V15,
        WRAP_SECRET,
        UNWRAP_SECRET,
        DESCRIBE_KEY,
    ];
}

/// Numeric ids of responses: a success answers with the id of its request; errors share one.
pub mod response_id {
    use super::request_id as rq;
    pub const STATUS: u8 = rq::STATUS;
    pub const UNLOCKED: u8 = rq::UNLOCK;
    pub const LOCKED: u8 = rq::LOCK;
    pub const AUDIT_HEAD: u8 = rq::AUDIT_HEAD;
    pub const SIGNATURE: u8 = rq::SIGN_PSS_SHA256;
    pub const PLAINTEXT: u8 = rq::DECRYPT_PKCS1V15;
    pub const WRAPPED: u8 = rq::WRAP_SECRET;
    pub const UNWRAPPED: u8 = rq::UNWRAP_SECRET;
    pub const KEY_FACTS: u8 = rq::DESCRIBE_KEY;
    pub const ERROR: u8 = 0xFF;
    /// Every response id, for the duplicate check.
    pub const ALL: [u8; 10] = [
        STATUS, UNLOCKED, LOCKED, AUDIT_HEAD, SIGNATURE, PLAINTEXT, WRAPPED, UNWRAPPED, KEY_FACTS,
        ERROR,
    ];
}

/// Whether all ids differ (`const`, so that a duplicate fails the build).
pub const fn all_distinct(ids: &[u8]) -> bool {
    let mut i = 0;
    while i < ids.len() {
        let mut j = i + 1;
        while j < ids.len() {
            if ids[i] == ids[j] {
                return false;
            }
            j += 1;
        }
        i += 1;
    }
    true
}

const _: () = assert!(all_distinct(&request_id::ALL), "duplicate request id");
const _: () = assert!(all_distinct(&response_id::ALL), "duplicate response id");

/// What the host asks of the core.
// Without an allocator nothing can be boxed: a request is as large as its largest variant.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// Lock state and PIN tries left. Not audited (reads nothing secret, changes nothing).
    Status,
    /// Log in to the token with the user PIN; the core is then unlocked.
    Unlock { pin: Pin },
    /// Log out; key operations are refused until the next `Unlock`.
    Lock,
    /// The current head of the audit chain, to anchor it outside the core.
    AuditHead,
    /// Sign a SHA-256 digest with an authentication key (RSA-PSS, salt 32).
    SignPssSha256 {
        client: ClientId,
        key: KeyId,
        digest: [u8; 32],
    },
    /// Decrypt a PKCS#1 v1.5 key-transport blob with an ETK key.
    DecryptPkcs1v15 {
        client: ClientId,
        key: KeyId,
        blob: Blob,
    },
    /// Wrap a secret (an AES key: 16, 24 or 32 bytes) with a wrapping key (AES key wrap,
    /// RFC 3394), so that it can be stored without being in clear at rest.
    WrapSecret {
        client: ClientId,
        key: KeyId,
        secret: WrapSecret,
    },
    /// Unwrap a secret wrapped by `WrapSecret` with the same key.
    UnwrapSecret {
        client: ClientId,
        key: KeyId,
        wrapped: Wrapped,
    },
    /// What the token says about a key's custody ([`KeyFacts`]: sensitive, extractable,
    /// generated in the token), for an attestation. Uses no key; needs a policy rule for
    /// the client and key (any use) and spends one use of its budget; recorded.
    DescribeKey { client: ClientId, key: KeyId },
}

impl Request {
    /// The frame id of this request.
    pub const fn id(&self) -> u8 {
        match self {
            Self::Status => request_id::STATUS,
            Self::Unlock { .. } => request_id::UNLOCK,
            Self::Lock => request_id::LOCK,
            Self::AuditHead => request_id::AUDIT_HEAD,
            Self::SignPssSha256 { .. } => request_id::SIGN_PSS_SHA256,
            Self::DecryptPkcs1v15 { .. } => request_id::DECRYPT_PKCS1V15,
            Self::WrapSecret { .. } => request_id::WRAP_SECRET,
            Self::UnwrapSecret { .. } => request_id::UNWRAP_SECRET,
            Self::DescribeKey { .. } => request_id::DESCRIBE_KEY,
        }
    }
}

/// Lock state as reported by [`Request::Status`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReply {
    pub state: LockState,
    /// Wrong PINs still allowed before the core refuses to try any more.
    pub pin_tries_left: u8,
}

/// What the core answers.
#[allow(clippy::large_enum_variant)] // no allocator, as for `Request`
#[derive(Debug, PartialEq, Eq)]
pub enum Response {
    Status(StatusReply),
    Unlocked,
    Locked,
    AuditHead(AuditHead),
    Signature(Signature),
    Plaintext(Plaintext),
    Wrapped(Wrapped),
    Unwrapped(WrapSecret),
    KeyFacts(KeyFacts),
    Error(Error),
}

impl Response {
    /// The frame id of this response.
    pub const fn id(&self) -> u8 {
        match self {
            Self::Status(_) => response_id::STATUS,
            Self::Unlocked => response_id::UNLOCKED,
            Self::Locked => response_id::LOCKED,
            Self::AuditHead(_) => response_id::AUDIT_HEAD,
            Self::Signature(_) => response_id::SIGNATURE,
            Self::Plaintext(_) => response_id::PLAINTEXT,
            Self::Wrapped(_) => response_id::WRAPPED,
            Self::Unwrapped(_) => response_id::UNWRAPPED,
            Self::KeyFacts(_) => response_id::KEY_FACTS,
            Self::Error(_) => response_id::ERROR,
        }
    }
}

/// Why the core refused or failed a request. Also the outcome stored in audit records.
///
/// The postcard encoding is the variant index: append new variants at the end only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Error {
    /// The frame could not be parsed (truncated, oversized, unknown id, trailing bytes...).
    BadFrame,
    /// The frame's protocol version is not ours.
    VersionMismatch { supported: u16, got: u16 },
    /// Key operations need an `Unlock` first.
    Locked,
    /// The token refused the PIN; `tries_left` more wrong PINs are allowed.
    PinIncorrect { tries_left: u8 },
    /// Too many wrong PINs: no more tries until an administrator resets the counter.
    PinLockedOut,
    /// The policy has no rule letting this client use this key for this operation.
    PolicyDenied,
    /// The client's budget for this key is spent; retry after the given time.
    RateLimited { retry_after_ms: u64 },
    /// The token has no such key (only said to clients the policy lets use that key id).
    UnknownKey,
    /// The key exists but is not for this operation (signing with an ETK key, decrypting
    /// with the authentication key).
    WrongKeyKind,
    /// Key-transport decryption failed. One uniform error, whatever the token said, so that
    /// callers learn nothing about the padding (the detail goes to the audit log only).
    DecryptFailed,
    /// The audit record could not be written, so the result is withheld (fail closed).
    AuditUnavailable,
    /// A PKCS#11 call failed.
    Token(TokenError),
    /// Unwrapping failed (integrity check, length, token error). One uniform error, as for
    /// [`Error::DecryptFailed`]; the detail goes to the audit log only.
    UnwrapFailed,
    /// A secret to wrap is not 16, 24 or 32 bytes long, or a wrapped secret not 8 more.
    InvalidLength,
    /// The request is not served on this channel: the custody process's socket refuses
    /// `Lock` and `Unlock` (the process unlocks itself with its PIN file when it starts and
    /// locks when it stops), so that a client cannot lock the core or guess the PIN.
    NotServed,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadFrame => f.write_str("malformed frame"),
            Self::VersionMismatch { supported, got } => {
                write!(
                    f,
                    "protocol version {got} not supported (this core speaks {supported})"
                )
            }
            Self::Locked => f.write_str("custody core is locked"),
            Self::PinIncorrect { tries_left } => {
                write!(f, "incorrect PIN ({tries_left} tries left)")
            }
            Self::PinLockedOut => {
                f.write_str("too many incorrect PINs; administrator reset needed")
            }
            Self::PolicyDenied => f.write_str("refused by policy"),
            Self::RateLimited { retry_after_ms } => {
                write!(f, "rate limit reached; retry after {retry_after_ms} ms")
            }
            Self::UnknownKey => f.write_str("unknown key"),
            Self::WrongKeyKind => f.write_str("key not usable for this operation"),
            Self::DecryptFailed => f.write_str("key transport decryption failed"),
            Self::AuditUnavailable => f.write_str("audit log unavailable; result withheld"),
            Self::Token(e) => fmt::Display::fmt(e, f),
            Self::UnwrapFailed => f.write_str("unwrapping the secret failed"),
            Self::InvalidLength => {
                f.write_str("a secret must be 16, 24 or 32 bytes (wrapped: 8 bytes more)")
            }
            Self::NotServed => f.write_str(
                "not served on the custody socket (Lock and Unlock are the custody process's own)",
            ),
        }
    }
}

/// Why a frame could not be encoded or decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Malformed: truncated, oversized, unknown id, bad body, trailing bytes.
    BadFrame,
    /// Well-formed header of another protocol version.
    VersionMismatch { got: u16 },
    /// The output buffer is smaller than the encoded frame.
    BufferTooSmall,
}

impl From<FrameError> for Error {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::VersionMismatch { got } => Error::VersionMismatch {
                supported: PROTOCOL_VERSION,
                got,
            },
            FrameError::BadFrame | FrameError::BufferTooSmall => Error::BadFrame,
        }
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadFrame => f.write_str("malformed frame"),
            Self::VersionMismatch { got } => write!(f, "frame of protocol version {got}"),
            Self::BufferTooSmall => f.write_str("buffer too small for the frame"),
        }
    }
}

// --- Encoding --------------------------------------------------------------------------------

/// Encodes `request` into `out`; returns the frame (a prefix of `out`).
pub fn encode_request<'a>(request: &Request, out: &'a mut [u8]) -> Result<&'a [u8], FrameError> {
    let body_len = {
        let body = body_of(out)?;
        match request {
            Request::Status | Request::Lock | Request::AuditHead => 0,
            Request::Unlock { pin } => put(pin, body)?,
            Request::SignPssSha256 {
                client,
                key,
                digest,
            } => put(&(client, key, digest), body)?,
            Request::DecryptPkcs1v15 { client, key, blob } => put(&(client, key, blob), body)?,
            Request::WrapSecret {
                client,
                key,
                secret,
            } => put(&(client, key, secret), body)?,
            Request::UnwrapSecret {
                client,
                key,
                wrapped,
            } => put(&(client, key, wrapped), body)?,
            Request::DescribeKey { client, key } => put(&(client, key), body)?,
        }
    };
    finish(out, request.id(), body_len)
}

/// Encodes `response` into `out`; returns the frame (a prefix of `out`).
pub fn encode_response<'a>(response: &Response, out: &'a mut [u8]) -> Result<&'a [u8], FrameError> {
    let body_len = {
        let body = body_of(out)?;
        match response {
            Response::Unlocked | Response::Locked => 0,
            Response::Status(s) => put(s, body)?,
            Response::AuditHead(h) => put(h, body)?,
            Response::Signature(s) => put(s, body)?,
            Response::Plaintext(p) => put(p, body)?,
            Response::Wrapped(w) => put(w, body)?,
            Response::Unwrapped(s) => put(s, body)?,
            Response::KeyFacts(f) => put(f, body)?,
            Response::Error(e) => put(e, body)?,
        }
    };
    finish(out, response.id(), body_len)
}

fn body_of(out: &mut [u8]) -> Result<&mut [u8], FrameError> {
    out.get_mut(FRAME_HEADER_LEN..)
        .ok_or(FrameError::BufferTooSmall)
}

fn put<T: Serialize + ?Sized>(value: &T, body: &mut [u8]) -> Result<usize, FrameError> {
    postcard::to_slice(value, body)
        .map(|b| b.len())
        .map_err(|_| FrameError::BufferTooSmall)
}

fn finish(out: &mut [u8], id: u8, body_len: usize) -> Result<&[u8], FrameError> {
    let [hi, lo] = PROTOCOL_VERSION.to_be_bytes();
    let header = out
        .get_mut(..FRAME_HEADER_LEN)
        .ok_or(FrameError::BufferTooSmall)?;
    header.copy_from_slice(&[hi, lo, id]);
    out.get(..FRAME_HEADER_LEN + body_len)
        .ok_or(FrameError::BufferTooSmall)
}

// --- Decoding --------------------------------------------------------------------------------

/// Answers one request frame: decodes it, has `answer` respond to the request (an
/// undecodable frame is answered with its decoding error), and writes the response frame
/// into `out`. Returns its length; 0 (and nothing done) only if `out` is shorter than
/// [`crate::config::MAX_RESPONSE_FRAME`].
pub fn answer_frame(
    frame: &[u8],
    out: &mut [u8],
    answer: impl FnOnce(&Request) -> Response,
) -> usize {
    if out.len() < crate::config::MAX_RESPONSE_FRAME {
        return 0;
    }
    let response = match decode_request(frame) {
        Ok(request) => answer(&request),
        Err(e) => Response::Error(e.into()),
    };
    // Every response fits in MAX_RESPONSE_FRAME (pinned by tests), so this cannot fail.
    encode_response(&response, out).map_or(0, <[u8]>::len)
}

/// Decodes a request frame. Never panics, whatever the bytes.
pub fn decode_request(frame: &[u8]) -> Result<Request, FrameError> {
    let (id, body) = header(frame, config::MAX_REQUEST_FRAME)?;
    Ok(match id {
        request_id::STATUS => empty(body, Request::Status)?,
        request_id::LOCK => empty(body, Request::Lock)?,
        request_id::AUDIT_HEAD => empty(body, Request::AuditHead)?,
        request_id::UNLOCK => Request::Unlock { pin: exact(body)? },
        request_id::SIGN_PSS_SHA256 => {
            let (client, key, digest) = exact(body)?;
            Request::SignPssSha256 {
                client,
                key,
                digest,
            }
        }
        request_id::DECRYPT_PKCS1V15 => {
            let (client, key, blob) = exact(body)?;
            Request::DecryptPkcs1v15 { client, key, blob }
        }
        request_id::WRAP_SECRET => {
            let (client, key, secret) = exact(body)?;
            Request::WrapSecret {
                client,
                key,
                secret,
            }
        }
        request_id::UNWRAP_SECRET => {
            let (client, key, wrapped) = exact(body)?;
            Request::UnwrapSecret {
                client,
                key,
                wrapped,
            }
        }
        request_id::DESCRIBE_KEY => {
            let (client, key) = exact(body)?;
            Request::DescribeKey { client, key }
        }
        _ => return Err(FrameError::BadFrame),
    })
}

/// Decodes a response frame. Never panics, whatever the bytes.
pub fn decode_response(frame: &[u8]) -> Result<Response, FrameError> {
    let (id, body) = header(frame, config::MAX_RESPONSE_FRAME)?;
    Ok(match id {
        response_id::UNLOCKED => empty(body, Response::Unlocked)?,
        response_id::LOCKED => empty(body, Response::Locked)?,
        response_id::STATUS => Response::Status(exact(body)?),
        response_id::AUDIT_HEAD => Response::AuditHead(exact(body)?),
        response_id::SIGNATURE => Response::Signature(exact(body)?),
        response_id::PLAINTEXT => Response::Plaintext(exact(body)?),
        response_id::WRAPPED => Response::Wrapped(exact(body)?),
        response_id::UNWRAPPED => Response::Unwrapped(exact(body)?),
        response_id::KEY_FACTS => Response::KeyFacts(exact(body)?),
        response_id::ERROR => Response::Error(exact(body)?),
        _ => return Err(FrameError::BadFrame),
    })
}

/// Checks size and version; returns the id and the body.
fn header(frame: &[u8], max: usize) -> Result<(u8, &[u8]), FrameError> {
    if frame.len() > max {
        return Err(FrameError::BadFrame);
    }
    let (version, rest) = match frame {
        [hi, lo, rest @ ..] => (u16::from_be_bytes([*hi, *lo]), rest),
        _ => return Err(FrameError::BadFrame),
    };
    if version != PROTOCOL_VERSION {
        return Err(FrameError::VersionMismatch { got: version });
    }
    match rest {
        [id, body @ ..] => Ok((*id, body)),
        [] => Err(FrameError::BadFrame),
    }
}

fn empty<T>(body: &[u8], value: T) -> Result<T, FrameError> {
    if body.is_empty() {
        Ok(value)
    } else {
        Err(FrameError::BadFrame)
    }
}

/// Decodes a `T` that must take the whole body.
fn exact<'de, T: Deserialize<'de>>(body: &'de [u8]) -> Result<T, FrameError> {
    match postcard::take_from_bytes(body) {
        Ok((value, [])) => Ok(value),
        _ => Err(FrameError::BadFrame),
    }
}
