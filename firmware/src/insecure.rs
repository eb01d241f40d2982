//! **INSECURE — for tests only.** An in-memory token and audit sink.
//!
//! [`InsecureMemoryToken`] keeps its "private keys" as plain bytes in memory and does no RSA
//! at all: its signatures, decryptions and key wraps are deterministic functions of SHA-256,
//! good only for telling keys and operations apart (no AES either: its "key wrap" has the
//! lengths and the integrity check of RFC 3394, not its output). It records every call, so that tests can assert
//! that a refused request never reached the token. [`InsecureMemoryAuditSink`] keeps the chain in
//! memory, where it is lost with the process: it is no audit log.
//!
//! Only built with the `insecure` feature (the crate's own tests turn it on); production
//! builds of the host must not enable it.

use crate::audit::{AuditError, AuditRecord, AuditSink};
use crate::config::MAX_PIN_LEN;
use crate::id::KeyId;
use crate::secret::Secret;
use crate::token::{ckr, KeyFacts, KeyKind, Token, TokenError, TokenFunction};
use core::cell::Cell;
use heapless::Vec;
use sha2::{Digest, Sha256};

/// Keys an [`InsecureMemoryToken`] holds.
pub const MAX_FAKE_KEYS: usize = 8;
/// Calls an [`InsecureMemoryToken`] remembers (older ones are kept, newer ones counted).
pub const MAX_CALLS: usize = 64;
/// Length of the fake signatures (that of RSA-2048).
pub const FAKE_SIGNATURE_LEN: usize = 256;
/// Bytes the fake encryption adds to a plaintext (an authentication tag).
pub const FAKE_TAG_LEN: usize = 16;

/// A call that reached the token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    Login,
    Logout,
    Sign(KeyId),
    Decrypt(KeyId),
    Wrap(KeyId),
    Unwrap(KeyId),
    Destroy(KeyId),
    Describe(KeyId),
}

struct FakeKey {
    id: KeyId,
    kind: KeyKind,
    secret: [u8; 32],
}

/// **INSECURE, tests only**: a token whose keys are plain bytes in memory and whose
/// operations are SHA-256 games, not RSA. See the [module docs](self).
pub struct InsecureMemoryToken {
    pin: Secret<MAX_PIN_LEN>,
    logged_in: bool,
    keys: Vec<FakeKey, MAX_FAKE_KEYS>,
    calls: Vec<Call, MAX_CALLS>,
    calls_total: usize,
    fail_next: Cell<Option<TokenError>>,
}

impl InsecureMemoryToken {
    /// A token with user PIN `pin` and no keys; `None` if the PIN is too long.
    pub fn new(pin: &[u8]) -> Option<Self> {
        Some(Self {
            pin: Secret::from_slice(pin)?,
            logged_in: false,
            keys: Vec::new(),
            calls: Vec::new(),
            calls_total: 0,
            fail_next: Cell::new(None),
        })
    }

    /// Adds a key whose fake secret is derived from `seed`. Returns `self` for chaining;
    /// panics if the token is full (tests only).
    pub fn with_key(mut self, id: &KeyId, kind: KeyKind, seed: &[u8]) -> Self {
        let secret = Sha256::new()
            .chain_update(b"insecure fake key")
            .chain_update(seed)
            .finalize()
            .into();
        let key = FakeKey {
            id: id.clone(),
            kind,
            secret,
        };
        assert!(
            self.keys.push(key).is_ok(),
            "InsecureMemoryToken: too many keys"
        );
        self
    }

    /// The next sign, decrypt or login fails with `error` (fault injection; `&self` so that
    /// tests can arm it on a token owned by the core).
    pub fn fail_next(&self, error: TokenError) {
        self.fail_next.set(Some(error));
    }

    /// Calls so far (the first [`MAX_CALLS`]).
    pub fn calls(&self) -> &[Call] {
        &self.calls
    }

    /// Number of calls so far, including those past [`MAX_CALLS`].
    pub fn calls_total(&self) -> usize {
        self.calls_total
    }

    /// Number of sign, decrypt, wrap and unwrap calls so far (within the first
    /// [`MAX_CALLS`]).
    pub fn key_uses(&self) -> usize {
        self.calls.iter().filter(|c| c.is_key_use()).count()
    }

    /// Forgets the calls so far.
    pub fn clear_calls(&mut self) {
        self.calls.clear();
        self.calls_total = 0;
    }

    /// Whether the token is logged in.
    pub fn is_logged_in(&self) -> bool {
        self.logged_in
    }

    /// What [`Token::sign_pss_sha256`] will return for `key` and `digest` (for checks).
    pub fn expected_signature(
        &self,
        key: &KeyId,
        digest: &[u8; 32],
    ) -> Option<[u8; FAKE_SIGNATURE_LEN]> {
        let k = self.find(key)?;
        let mut sig = [0u8; FAKE_SIGNATURE_LEN];
        keystream(&k.secret, b"sign", digest, &mut sig);
        Some(sig)
    }

    /// Fake-encrypts `plaintext` for `key`, so that [`Token::decrypt_pkcs1v15`] with that key,
    /// and no other, returns it. Writes `plaintext.len() + FAKE_TAG_LEN` bytes into `out`.
    pub fn fake_encrypt(&self, key: &KeyId, plaintext: &[u8], out: &mut [u8]) -> Option<usize> {
        let k = self.find(key)?;
        let n = plaintext.len() + FAKE_TAG_LEN;
        let (body, tag) = out.get_mut(..n)?.split_at_mut(plaintext.len());
        keystream(&k.secret, b"encrypt", &[], body);
        body.iter_mut().zip(plaintext).for_each(|(b, p)| *b ^= p);
        tag.copy_from_slice(&fake_tag(&k.secret, plaintext));
        Some(n)
    }

    /// Fake-wraps `secret` for `key` as [`Token::wrap_aes_kw`] does, without a login (to
    /// make blobs for tests). Writes `secret.len() + 8` bytes into `out`.
    pub fn fake_wrap(&self, key: &KeyId, secret: &[u8], out: &mut [u8]) -> Option<usize> {
        let k = self.find(key)?;
        fake_kw(&k.secret, secret, out).ok()
    }

    fn find(&self, key: &KeyId) -> Option<&FakeKey> {
        self.keys.iter().find(|k| &k.id == key)
    }

    fn log(&mut self, call: Call) {
        self.calls_total += 1;
        let _ = self.calls.push(call);
    }

    /// The checks a real token makes before a key operation.
    fn usable(
        &mut self,
        key: &KeyId,
        kind: KeyKind,
        function: TokenFunction,
    ) -> Result<[u8; 32], TokenError> {
        if let Some(e) = self.fail_next.take() {
            return Err(e);
        }
        if !self.logged_in {
            return Err(TokenError::new(function, ckr::USER_NOT_LOGGED_IN));
        }
        let k = self
            .find(key)
            .ok_or(TokenError::new(function, ckr::KEY_HANDLE_INVALID))?;
        if k.kind != kind {
            return Err(TokenError::new(function, ckr::KEY_FUNCTION_NOT_PERMITTED));
        }
        Ok(k.secret)
    }
}

impl Token for InsecureMemoryToken {
    fn sign_pss_sha256(
        &mut self,
        key: &KeyId,
        digest: &[u8; 32],
        out: &mut [u8],
    ) -> Result<usize, TokenError> {
        self.log(Call::Sign(key.clone()));
        let secret = self.usable(key, KeyKind::Authentication, TokenFunction::SignInit)?;
        let out = out
            .get_mut(..FAKE_SIGNATURE_LEN)
            .ok_or(TokenError::new(TokenFunction::Sign, ckr::BUFFER_TOO_SMALL))?;
        keystream(&secret, b"sign", digest, out);
        Ok(FAKE_SIGNATURE_LEN)
    }

    fn decrypt_pkcs1v15(
        &mut self,
        key: &KeyId,
        blob: &[u8],
        out: &mut [u8],
    ) -> Result<usize, TokenError> {
        self.log(Call::Decrypt(key.clone()));
        let secret = self.usable(key, KeyKind::Encryption, TokenFunction::DecryptInit)?;
        let invalid = TokenError::new(TokenFunction::Decrypt, ckr::ENCRYPTED_DATA_INVALID);
        let n = blob.len().checked_sub(FAKE_TAG_LEN).ok_or(invalid)?;
        let (body, tag) = blob.split_at(n);
        let out = out.get_mut(..n).ok_or(TokenError::new(
            TokenFunction::Decrypt,
            ckr::BUFFER_TOO_SMALL,
        ))?;
        keystream(&secret, b"encrypt", &[], out);
        out.iter_mut().zip(body).for_each(|(o, b)| *o ^= b);
        if fake_tag(&secret, out) != tag {
            out.fill(0);
            return Err(invalid);
        }
        Ok(n)
    }

    fn wrap_aes_kw(
        &mut self,
        key: &KeyId,
        secret: &[u8],
        out: &mut [u8],
    ) -> Result<usize, TokenError> {
        self.log(Call::Wrap(key.clone()));
        let k = self.usable(key, KeyKind::Wrapping, TokenFunction::WrapKey)?;
        fake_kw(&k, secret, out)
    }

    fn unwrap_aes_kw(
        &mut self,
        key: &KeyId,
        wrapped: &[u8],
        out: &mut [u8],
    ) -> Result<usize, TokenError> {
        self.log(Call::Unwrap(key.clone()));
        let k = self.usable(key, KeyKind::Wrapping, TokenFunction::UnwrapKey)?;
        let error = |ckr| TokenError::new(TokenFunction::UnwrapKey, ckr);
        let n = wrapped
            .len()
            .checked_sub(KW_CHECK_LEN)
            .filter(|&n| n >= 16 && n.is_multiple_of(8))
            .ok_or(error(ckr::WRAPPED_KEY_LEN_RANGE))?;
        let (check, body) = wrapped.split_at(KW_CHECK_LEN);
        let out = out.get_mut(..n).ok_or(error(ckr::BUFFER_TOO_SMALL))?;
        keystream(&k, b"key wrap", check, out);
        out.iter_mut().zip(body).for_each(|(o, b)| *o ^= b);
        if kw_check(&k, out) != check {
            out.fill(0);
            return Err(error(ckr::WRAPPED_KEY_INVALID));
        }
        Ok(n)
    }

    fn login(&mut self, pin: &[u8]) -> Result<(), TokenError> {
        self.log(Call::Login);
        if let Some(e) = self.fail_next.take() {
            return Err(e);
        }
        if pin == self.pin.expose() {
            self.logged_in = true;
            Ok(())
        } else {
            Err(TokenError::new(TokenFunction::Login, ckr::PIN_INCORRECT))
        }
    }

    fn logout(&mut self) {
        self.log(Call::Logout);
        self.logged_in = false;
    }

    fn key_kind(&self, key: &KeyId) -> Option<KeyKind> {
        self.find(key).map(|k| k.kind)
    }

    /// This token keeps its keys as plain bytes, generated by nobody: it says so, and
    /// nothing it holds is ever attestable.
    fn key_facts(&mut self, key: &KeyId) -> Result<KeyFacts, TokenError> {
        self.log(Call::Describe(key.clone()));
        if let Some(e) = self.fail_next.take() {
            return Err(e);
        }
        let error = |ckr| TokenError::new(TokenFunction::GetAttributeValue, ckr);
        if !self.logged_in {
            return Err(error(ckr::USER_NOT_LOGGED_IN));
        }
        let k = self.find(key).ok_or(error(ckr::KEY_HANDLE_INVALID))?;
        Ok(KeyFacts {
            kind: k.kind,
            sensitive: Some(false),
            extractable: Some(true),
            never_extractable: Some(false),
            local: Some(false),
        })
    }

    fn destroy_key(&mut self, key: &KeyId) -> Result<usize, TokenError> {
        self.log(Call::Destroy(key.clone()));
        if let Some(e) = self.fail_next.take() {
            return Err(e);
        }
        if !self.logged_in {
            return Err(TokenError::new(
                TokenFunction::DestroyObject,
                ckr::USER_NOT_LOGGED_IN,
            ));
        }
        let at = self
            .keys
            .iter()
            .position(|k| &k.id == key)
            .ok_or(TokenError::new(
                TokenFunction::DestroyObject,
                ckr::KEY_HANDLE_INVALID,
            ))?;
        let mut gone = self.keys.swap_remove(at);
        gone.secret.fill(0);
        Ok(1)
    }
}

impl Call {
    /// Whether the call used a key (as opposed to logging in or out).
    pub fn is_key_use(&self) -> bool {
        matches!(
            self,
            Call::Sign(_) | Call::Decrypt(_) | Call::Wrap(_) | Call::Unwrap(_)
        )
    }
}

/// Bytes of the fake key wrap's integrity check (as RFC 3394's).
const KW_CHECK_LEN: usize = 8;

/// The fake key wrap: an 8-byte check value derived from the secret, then the secret
/// masked by a keystream that depends on that check. Unwrapping with another key or a
/// changed blob fails the check.
fn fake_kw(key: &[u8; 32], secret: &[u8], out: &mut [u8]) -> Result<usize, TokenError> {
    let error = |ckr| TokenError::new(TokenFunction::WrapKey, ckr);
    if secret.len() < 16 || !secret.len().is_multiple_of(8) {
        return Err(error(ckr::KEY_SIZE_RANGE));
    }
    let n = secret.len() + KW_CHECK_LEN;
    let (check, body) = out
        .get_mut(..n)
        .ok_or(error(ckr::BUFFER_TOO_SMALL))?
        .split_at_mut(KW_CHECK_LEN);
    check.copy_from_slice(&kw_check(key, secret));
    keystream(key, b"key wrap", check, body);
    body.iter_mut().zip(secret).for_each(|(b, s)| *b ^= s);
    Ok(n)
}

fn kw_check(key: &[u8; 32], secret: &[u8]) -> [u8; KW_CHECK_LEN] {
    let mut check = [0u8; KW_CHECK_LEN];
    keystream(key, b"key wrap check", secret, &mut check);
    check
}

/// SHA-256 in counter mode over (secret, label, input), filling `out`.
fn keystream(secret: &[u8; 32], label: &[u8], input: &[u8], out: &mut [u8]) {
    for (counter, chunk) in (0u32..).zip(out.chunks_mut(32)) {
        let block = Sha256::new()
            .chain_update(secret)
            .chain_update(label)
            .chain_update(input)
            .chain_update(counter.to_be_bytes())
            .finalize();
        chunk.copy_from_slice(&block[..chunk.len()]);
    }
}

fn fake_tag(secret: &[u8; 32], plaintext: &[u8]) -> [u8; FAKE_TAG_LEN] {
    let mut tag = [0u8; FAKE_TAG_LEN];
    keystream(secret, b"tag", plaintext, &mut tag);
    tag
}

/// **Tests only**: an audit sink in memory, lost with the process. Holds up to `N` records,
/// then fails with [`AuditError::Full`]; can be told to fail.
pub struct InsecureMemoryAuditSink<const N: usize> {
    records: Vec<AuditRecord, N>,
    failing: Cell<bool>,
    /// Appends still accepted before the sink fails (`None`: no such limit).
    accepting: Cell<Option<usize>>,
}

impl<const N: usize> InsecureMemoryAuditSink<N> {
    pub const fn new() -> Self {
        Self {
            records: Vec::new(),
            failing: Cell::new(false),
            accepting: Cell::new(None),
        }
    }

    /// While `failing`, every append fails with [`AuditError::Storage`].
    pub fn set_failing(&self, failing: bool) {
        self.failing.set(failing);
        self.accepting.set(None);
    }

    /// Accepts `appends` more appends, then fails as [`Self::set_failing`] does (until
    /// `set_failing(false)`).
    pub fn fail_after(&self, appends: usize) {
        self.accepting.set(Some(appends));
    }

    /// The stored records, oldest first.
    pub fn records(&self) -> &[AuditRecord] {
        &self.records
    }
}

impl<const N: usize> Default for InsecureMemoryAuditSink<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> AuditSink for InsecureMemoryAuditSink<N> {
    fn append(&mut self, record: &AuditRecord) -> Result<(), AuditError> {
        match self.accepting.get() {
            Some(0) => self.failing.set(true),
            Some(n) => self.accepting.set(Some(n - 1)),
            None => {}
        }
        if self.failing.get() {
            return Err(AuditError::Storage);
        }
        self.records
            .push(record.clone())
            .map_err(|_| AuditError::Full)
    }
}
