//! The custody core (`etee-custody`) in the `etee` process, in front of the token.
//!
//! - [`HsmToken`]: the core's [`Token`] over the session pool.
//! - [`CustodyKeys`]: a [`PrivateKeyOps`] that turns each private-key use into a custody
//!   [`Request`], so that every signature and decryption passes the lock state and the
//!   policy and is on the audit chain (a [`FileAuditSink`]) before its result is released;
//!   and the same for the wrapping key ([`CustodyKeys::wrap_secret`],
//!   [`CustodyKeys::unwrap_secret`]).
//!
//! Login: the pool logs in once with the configured PIN when it opens (PKCS#11 login is
//! per token, not per session). [`HsmToken::login`] therefore does not call `C_Login`
//! again (that would answer `CKR_USER_ALREADY_LOGGED_IN` for any PIN); it checks the PIN
//! the core passes at `Unlock` against the PIN the pool logged in with, in constant time,
//! and answers `CKR_PIN_INCORRECT` when they differ, so the core's retry counter works as
//! with a real `C_Login`. [`HsmToken::logout`] only stops key use through the core (the
//! core is locked); the pool's sessions stay logged in until the pool is dropped.
//!
//! The default policy: the configured client (`[custody] client`, default `etee-cli`)
//! may sign with `authentication`, decrypt with every ETK key and wrap and unwrap with every
//! wrapping key found in the token when the core opens, within a generous budget;
//! everything else is refused and recorded.

use crate::config::{CustodyConfig, HsmConfig};
use crate::error::{HsmError, PinKind, Result};
use crate::keys;
use crate::list::KeyClass;
use crate::pool::SessionPool;
use crate::Hsm;
use cryptoki::error::RvError;
use etee_custody::custody::Admission;
use etee_custody::file_sink::{FileAuditSink, GroupSync};
use etee_custody::policy::{Budget, Policy, Rule};
use etee_custody::token::{ckr, TokenError, TokenFunction};
use etee_custody::wire::{Blob, Pin as WirePin, WrapSecret, Wrapped};
use etee_custody::{
    ClientId, Custody, Error as CoreError, KeyFacts, KeyKind, Request, Response, Token,
};
use etee_formats::keys::{DecryptionKey, KeyError, KeyId, KeyRing, PrivateKeyOps, SigningKey};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// The budget of the default rules: bursts of 10 000 uses, refilled at 1 000 per second.
pub const DEFAULT_BUDGET: Budget = Budget {
    burst: 10_000,
    per_second: 1_000,
};

/// The token as the custody core sees it: the session pool and the kinds of the private
/// keys found when it was made. Clones are handles to the same token (each key operation
/// borrows one of the pool's sessions), one per concurrent caller of the core.
#[derive(Clone)]
pub struct HsmToken {
    pool: Arc<SessionPool>,
    pin: Arc<Zeroizing<Vec<u8>>>,
    kinds: Arc<BTreeMap<Vec<u8>, KeyKind>>,
}

impl std::fmt::Debug for HsmToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HsmToken")
            .field("token", &self.pool.token_name())
            .field("keys", &self.kinds.len())
            .finish()
    }
}

impl HsmToken {
    /// Reads the keys of the token behind `hsm`: private keys with CKA_SIGN (and not
    /// CKA_DECRYPT) are signing keys — the eHealth authentication key (CKA_ID
    /// `authentication`) and others, such as KeyDepot keys —, private keys with
    /// CKA_DECRYPT are ETK keys, secret keys with CKA_WRAP and CKA_UNWRAP (and neither
    /// CKA_SIGN nor CKA_DECRYPT) are wrapping keys.
    pub fn new(hsm: &Hsm) -> Result<Self> {
        let pin = hsm.config().user_pin()?;
        let mut kinds = BTreeMap::new();
        for k in hsm.list()?.keys {
            let id = hex::decode(&k.id_hex).unwrap_or_default();
            let kind = match k.class {
                KeyClass::PrivateKey if k.sign == Some(true) && k.decrypt != Some(true) => {
                    KeyKind::Authentication
                }
                KeyClass::PrivateKey if k.decrypt == Some(true) && k.sign != Some(true) => {
                    KeyKind::Encryption
                }
                KeyClass::SecretKey
                    if k.wrap == Some(true)
                        && k.unwrap == Some(true)
                        && k.sign != Some(true)
                        && k.decrypt != Some(true) =>
                {
                    KeyKind::Wrapping
                }
                _ => continue,
            };
            kinds.insert(id, kind);
        }
        Ok(Self {
            pool: hsm.pool().clone(),
            pin: Arc::new(Zeroizing::new(pin.expose().as_bytes().to_vec())),
            kinds: Arc::new(kinds),
        })
    }

    /// The keys the core may use, with their kinds.
    pub fn keys(&self) -> impl Iterator<Item = (&[u8], KeyKind)> {
        self.kinds.iter().map(|(id, kind)| (id.as_slice(), *kind))
    }
}

/// The code of a failed decryption, as the core reads it ([`ckr::token_unavailable`]):
/// what the ciphertext may have caused ([`HsmError::DecryptFailed`]) never says the token
/// is unavailable; every other failure happened before or around the token's decryption
/// (no token, no session, the key not found, the pool stopped) and says so, with the
/// token's own code when it is one of those, else `CKR_TOKEN_NOT_PRESENT`.
fn decrypt_code(e: &HsmError) -> u64 {
    match e {
        // The token's own code, for the record (the caller gets the uniform error): never
        // one that reads as "unavailable", which would make the answer differ.
        HsmError::DecryptFailed(Some(_)) => match ck_code(e) {
            code if ckr::token_unavailable(code) => ckr::ENCRYPTED_DATA_INVALID,
            code => code,
        },
        HsmError::DecryptFailed(None) => ckr::ENCRYPTED_DATA_INVALID,
        other => match ck_code(other) {
            code if ckr::token_unavailable(code) => code,
            _ => ckr::TOKEN_NOT_PRESENT,
        },
    }
}

fn ck_code(e: &HsmError) -> u64 {
    let rv = match e {
        HsmError::UnwrapFailed(rv) | HsmError::DecryptFailed(Some(rv)) => Some(*rv),
        _ => e.rv(),
    };
    match rv {
        Some(RvError::GeneralError) => ckr::GENERAL_ERROR,
        Some(RvError::KeySizeRange) => ckr::KEY_SIZE_RANGE,
        Some(RvError::WrappedKeyInvalid) => ckr::WRAPPED_KEY_INVALID,
        Some(RvError::WrappedKeyLenRange) => ckr::WRAPPED_KEY_LEN_RANGE,
        Some(RvError::PinIncorrect) => ckr::PIN_INCORRECT,
        Some(RvError::PinLocked) => ckr::PIN_LOCKED,
        Some(RvError::DataLenRange) => ckr::DATA_LEN_RANGE,
        Some(RvError::DeviceError) => ckr::DEVICE_ERROR,
        Some(RvError::EncryptedDataInvalid) => ckr::ENCRYPTED_DATA_INVALID,
        Some(RvError::EncryptedDataLenRange) => ckr::ENCRYPTED_DATA_LEN_RANGE,
        Some(RvError::KeyHandleInvalid) => ckr::KEY_HANDLE_INVALID,
        Some(RvError::KeyFunctionNotPermitted) => ckr::KEY_FUNCTION_NOT_PERMITTED,
        Some(RvError::SessionHandleInvalid) => ckr::SESSION_HANDLE_INVALID,
        Some(RvError::UserNotLoggedIn) => ckr::USER_NOT_LOGGED_IN,
        Some(RvError::ObjectHandleInvalid) => ckr::OBJECT_HANDLE_INVALID,
        Some(RvError::SessionClosed) => ckr::SESSION_CLOSED,
        Some(RvError::DeviceRemoved) => ckr::DEVICE_REMOVED,
        Some(RvError::TokenNotPresent) => ckr::TOKEN_NOT_PRESENT,
        Some(RvError::CryptokiNotInitialized) => ckr::CRYPTOKI_NOT_INITIALIZED,
        Some(_) => ckr::FUNCTION_FAILED,
        None => match e {
            HsmError::NotFound { .. } => ckr::KEY_HANDLE_INVALID,
            _ => ckr::GENERAL_ERROR,
        },
    }
}

/// The failed PKCS#11 function of `e` when it is one of the steps of a key wrap (which
/// takes several calls), else `default`.
fn wrap_step(e: &HsmError, default: TokenFunction) -> TokenFunction {
    match e {
        HsmError::Pkcs11 { function, .. } => match function.as_str() {
            "C_CreateObject" => TokenFunction::CreateObject,
            "C_DestroyObject" => TokenFunction::DestroyObject,
            "C_GetAttributeValue" => TokenFunction::GetAttributeValue,
            "C_FindObjectsInit" => TokenFunction::FindObjectsInit,
            "C_FindObjects" => TokenFunction::FindObjects,
            "C_FindObjectsFinal" => TokenFunction::FindObjectsFinal,
            _ => default,
        },
        _ => default,
    }
}

fn copy_out(function: TokenFunction, data: &[u8], out: &mut [u8]) -> Result<usize, TokenError> {
    let dest = out
        .get_mut(..data.len())
        .ok_or(TokenError::new(function, ckr::BUFFER_TOO_SMALL))?;
    dest.copy_from_slice(data);
    Ok(data.len())
}

impl Token for HsmToken {
    fn sign_pss_sha256(
        &mut self,
        key: &etee_custody::KeyId,
        digest: &[u8; 32],
        out: &mut [u8],
    ) -> Result<usize, TokenError> {
        let signature = self
            .pool
            .run(|conn| keys::sign_pss(conn, key.as_bytes(), digest))
            .map_err(|e| TokenError::new(TokenFunction::Sign, ck_code(&e)))?;
        copy_out(TokenFunction::Sign, &signature, out)
    }

    fn decrypt_pkcs1v15(
        &mut self,
        key: &etee_custody::KeyId,
        blob: &[u8],
        out: &mut [u8],
    ) -> Result<usize, TokenError> {
        let plain = self
            .pool
            .run(|conn| keys::decrypt_pkcs1v15(conn, key.as_bytes(), blob))
            .map_err(|e| TokenError::new(TokenFunction::Decrypt, decrypt_code(&e)))?;
        copy_out(TokenFunction::Decrypt, &plain, out)
    }

    fn wrap_aes_kw(
        &mut self,
        key: &etee_custody::KeyId,
        secret: &[u8],
        out: &mut [u8],
    ) -> Result<usize, TokenError> {
        let wrapped = self
            .pool
            .run(|conn| keys::wrap_aes_kw(conn, key.as_bytes(), secret))
            .map_err(|e| TokenError::new(wrap_step(&e, TokenFunction::WrapKey), ck_code(&e)))?;
        copy_out(TokenFunction::WrapKey, &wrapped, out)
    }

    fn unwrap_aes_kw(
        &mut self,
        key: &etee_custody::KeyId,
        wrapped: &[u8],
        out: &mut [u8],
    ) -> Result<usize, TokenError> {
        let secret = self
            .pool
            .run(|conn| keys::unwrap_aes_kw(conn, key.as_bytes(), wrapped))
            .map_err(|e| TokenError::new(wrap_step(&e, TokenFunction::UnwrapKey), ck_code(&e)))?;
        copy_out(TokenFunction::UnwrapKey, &secret, out)
    }

    fn login(&mut self, pin: &[u8]) -> Result<(), TokenError> {
        if openssl::memcmp::eq(
            &openssl::sha::sha256(pin),
            &openssl::sha::sha256(self.pin.as_slice()),
        ) {
            Ok(())
        } else {
            Err(TokenError::new(TokenFunction::Login, ckr::PIN_INCORRECT))
        }
    }

    fn logout(&mut self) {}

    fn key_kind(&self, key: &etee_custody::KeyId) -> Option<KeyKind> {
        self.kinds.get(key.as_bytes()).copied()
    }

    fn key_facts(&mut self, key: &etee_custody::KeyId) -> Result<KeyFacts, TokenError> {
        let kind = self.key_kind(key).ok_or(TokenError::new(
            TokenFunction::FindObjects,
            ckr::KEY_HANDLE_INVALID,
        ))?;
        let [sensitive, extractable, never_extractable, local] = self
            .pool
            .run(|conn| keys::custody_attributes(conn, key.as_bytes(), kind == KeyKind::Wrapping))
            .map_err(|e| TokenError::new(TokenFunction::GetAttributeValue, ck_code(&e)))?;
        Ok(KeyFacts {
            kind,
            sensitive,
            extractable,
            never_extractable,
            local,
        })
    }

    fn destroy_key(&mut self, key: &etee_custody::KeyId) -> Result<usize, TokenError> {
        let destroyed = self
            .pool
            .run(|conn| keys::destroy_with_id(conn, key.as_bytes()))
            .map_err(|e| TokenError::new(TokenFunction::DestroyObject, ck_code(&e)))?;
        // This handle's view; the others were made before and serve no more requests
        // (destruction is a ceremony, with the service stopped).
        Arc::make_mut(&mut self.kinds).remove(key.as_bytes());
        Ok(destroyed)
    }
}

/// The in-process core over the token, writing its chain to a file.
pub type HsmCustody = Custody<HsmToken, FileAuditSink>;

struct Inner {
    hsm: Hsm,
    core: Mutex<HsmCustody>,
    /// A handle to the core's token, cloned by each caller for its key operation.
    token: HsmToken,
    /// Waits for audit records outside the core's lock (group commit).
    sync: Arc<GroupSync>,
    /// How long the token usually takes, per kind of key use ([`usual_slot`]), in
    /// microseconds: when the syncer must have a use record durable.
    usual_micros: [AtomicU64; 4],
}

/// A token operation that took longer than this (a stall) counts as this long.
const MAX_USUAL_MICROS: u128 = 100_000;

/// The slot of [`Inner::usual_micros`] for a key request.
fn usual_slot(request: &Request) -> usize {
    match request {
        Request::SignPssSha256 { .. } => 0,
        Request::DecryptPkcs1v15 { .. } => 1,
        Request::WrapSecret { .. } => 2,
        _ => 3,
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Lock (and record it) when the last user goes away.
        if let Ok(core) = self.core.get_mut() {
            let _ = core.handle_request(&Request::Lock, now_ms());
        }
    }
}

/// The token's keys through the custody core: a [`PrivateKeyOps`] whose every use is
/// checked by the policy and recorded on the audit chain first.
///
/// Each handle speaks for one client id ([`Self::for_client`] makes another handle on the
/// same core): the policy decides per client, and the client is on every audit record.
#[derive(Clone)]
pub struct CustodyKeys {
    inner: Arc<Inner>,
    client: ClientId,
}

impl std::fmt::Debug for CustodyKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CustodyKeys")
            .field("hsm", &self.inner.hsm)
            .field("client", &self.client)
            .finish()
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub(crate) fn client_id(name: &str) -> Result<ClientId> {
    ClientId::try_from(name)
        .map_err(|_| HsmError::Config(format!("[custody] client {name:?}: 1 to 32 bytes")))
}

/// The default policy: `client` signs with the signing keys (the authentication key and
/// any other key with CKA_SIGN), decrypts with every
/// ETK key and wraps and unwraps with every wrapping key of `token`, within
/// [`DEFAULT_BUDGET`].
pub fn default_policy(token: &HsmToken, client: &ClientId) -> Result<Policy> {
    policy_for(token, client, DEFAULT_BUDGET)
}

/// The default policy's rules with another `budget`: `client` signs with the signing keys,
/// decrypts with every ETK key and wraps and unwraps with every wrapping key of
/// `token`.
pub fn policy_for(token: &HsmToken, client: &ClientId, budget: Budget) -> Result<Policy> {
    let mut policy = Policy::deny_all();
    for (id, kind) in token.keys() {
        let Some(key) = etee_custody::KeyId::new(id) else {
            // Longer than the core's key ids: not usable through the core.
            continue;
        };
        policy
            .allow(Rule {
                client: client.clone(),
                key,
                sign: kind == KeyKind::Authentication,
                decrypt: kind == KeyKind::Encryption,
                wrap: kind == KeyKind::Wrapping,
                unwrap: kind == KeyKind::Wrapping,
                budget,
            })
            .map_err(|e| HsmError::Config(format!("custody policy: {e:?}")))?;
    }
    Ok(policy)
}

impl CustodyKeys {
    /// Opens the token (logging in with the PIN file), the audit file (verifying the chain
    /// in it), builds the default policy from the keys present (with the configured
    /// budget) and unlocks the core.
    ///
    /// The login counts as the core's unlock: after [`MAX_PIN_ATTEMPTS`] wrong PINs on the
    /// chain the token is not even asked (its own retry counter is spared), and a PIN the
    /// token refuses is recorded on the chain as a failed unlock, so that restarts with a
    /// wrong PIN file lock the core out as wrong `Unlock` requests do.
    ///
    /// [`MAX_PIN_ATTEMPTS`]: etee_custody::config::MAX_PIN_ATTEMPTS
    pub fn open(hsm: &HsmConfig, custody: &CustodyConfig) -> Result<Self> {
        let opened = Self::open_token(hsm, custody)?;
        let token = HsmToken::new(&opened)?;
        let client = client_id(&custody.client)?;
        let policy = policy_for(&token, &client, custody.budget)?;
        Self::with_policy(opened, token, policy, custody)
    }

    /// [`Hsm::open`] (the login with the configured PIN) as the core's unlock: refused
    /// without asking the token when the chain ends locked out; otherwise the try, then
    /// its outcome, on the chain (a PIN the token refuses counted as a failed unlock; see
    /// [`Self::open`]). For callers that open the token themselves before
    /// [`Self::with_policy`], and for commands that use the token without the core.
    pub fn open_token(hsm: &HsmConfig, custody: &CustodyConfig) -> Result<Hsm> {
        login_on_record(hsm, custody)
    }

    /// Like [`Self::open`] with an opened token and a policy of the caller's.
    pub fn with_policy(
        hsm: Hsm,
        token: HsmToken,
        policy: Policy,
        custody: &CustodyConfig,
    ) -> Result<Self> {
        let client = client_id(&custody.client)?;
        let pin = token.pin.clone();
        let handle = token.clone();
        let mut core = open_core(token, policy, custody)?;
        let sync = core.audit_sink().group_sync();
        let wire_pin = WirePin::from_slice(&pin)
            .ok_or_else(|| HsmError::Invalid("the user PIN is too long for the core".into()))?;
        match core.handle_request(&Request::Unlock { pin: wire_pin }, now_ms()) {
            Response::Unlocked => {}
            Response::Error(CoreError::PinLockedOut) => return Err(locked_out(custody)),
            Response::Error(e) => {
                return Err(HsmError::Invalid(format!(
                    "unlocking the custody core: {e}"
                )))
            }
            other => {
                return Err(HsmError::Invalid(format!(
                    "unlocking the custody core: unexpected {:?}",
                    other.id()
                )))
            }
        }
        Ok(Self {
            inner: Arc::new(Inner {
                hsm,
                core: Mutex::new(core),
                token: handle,
                sync,
                usual_micros: Default::default(),
            }),
            client,
        })
    }

    /// The administrator's reset of the wrong-PIN counter (after a lock-out), recorded on
    /// the audit chain (`PinReset`). The PIN is not tried here: a login could only be an
    /// uncounted guess (or, counted, would keep the core locked out), and the right to
    /// reset is the right to append to the chain, which the service's user has anyway.
    /// The next login with the PIN file is counted as usual. Returns the number of
    /// consecutive failures it cleared.
    pub fn reset_pin_counter(hsm: &HsmConfig, custody: &CustodyConfig) -> Result<u8> {
        // The configuration must name a token; the chain must exist (nothing to reset else).
        crate::token_summary(hsm)?;
        let path = &custody.audit_file;
        let archived = etee_custody::file_sink::segments(path).unwrap_or_default();
        if !path.is_file() && archived.is_empty() {
            return Err(HsmError::Invalid(format!(
                "no audit chain at {}: no wrong PIN was counted, nothing to reset",
                path.display()
            )));
        }
        let mut core = open_core(LoginOnly::Never, Policy::deny_all(), custody)?;
        let cleared = core.audit_sink().pin_failures_at_open();
        core.reset_pin_counter(now_ms())
            .map_err(|e| HsmError::Invalid(format!("resetting the wrong-PIN counter: {e}")))?;
        Ok(cleared)
    }

    /// `etee hsm init-pin`: the security officer sets the token's user PIN to the
    /// configured one ([`crate::init_user_pin`]) and the change is recorded on the audit
    /// chain (`UserPinSet`, which also clears the core's wrong-PIN count). The chain is
    /// opened first (locked against other processes, verified), so that a chain in use or
    /// damaged stops the change before it happens; the core asks no key of the token
    /// (the user PIN may not work yet).
    pub fn set_user_pin(
        hsm: &HsmConfig,
        custody: &CustodyConfig,
        so_pin: &crate::Pin,
    ) -> Result<crate::TokenSummary> {
        // The token first: a configuration naming none leaves no audit file behind.
        crate::token_summary(hsm)?;
        let mut core = open_core(LoginOnly::Never, Policy::deny_all(), custody)?;
        let summary = crate::init_user_pin(hsm, so_pin)?;
        core.user_pin_set(now_ms()).map_err(|e| {
            HsmError::Audit(format!(
                "the user PIN of token {} was set, but recording it failed: {e}",
                summary.name()
            ))
        })?;
        Ok(summary)
    }

    /// Destroys the key of `plan` ([`crate::destroy_plan`], which decides which keys may
    /// go) with its public key and certificates, through the core: on the audit chain
    /// (`KeyDestroy`) before the token is asked, then its outcome.
    pub fn destroy_key(&self, plan: &crate::DestroyPlan) -> Result<usize> {
        let id = plan.id.as_str();
        let key = etee_custody::KeyId::new(&plan.id_bytes)
            .ok_or_else(|| HsmError::Invalid(format!("key id {id:?} is too long")))?;
        let mut core = self
            .inner
            .core
            .lock()
            .map_err(|_| HsmError::Invalid("the custody core is unusable".into()))?;
        use etee_custody::DestroyError;
        core.destroy_key(&key, now_ms()).map_err(|e| match e {
            DestroyError::Failed(t) if t.ckr == ckr::KEY_HANDLE_INVALID => HsmError::NotFound {
                what: "object with CKA_ID",
                id: id.into(),
            },
            DestroyError::Failed(t) => HsmError::Invalid(format!("destroying key {id:?}: {t}")),
            DestroyError::NotAsked(CoreError::AuditUnavailable) => HsmError::Audit(format!(
                "destroying key {id:?}: its use could not be recorded on the audit chain, so \
                 the token was not asked: nothing was destroyed"
            )),
            DestroyError::NotAsked(e) => {
                HsmError::Invalid(format!("destroying key {id:?}: {e}; nothing was destroyed"))
            }
            DestroyError::OutcomeUnrecorded { destroyed } => HsmError::Audit(format!(
                "destroying key {id:?}: the token {}, but that outcome could not be recorded \
                 on the audit chain (its use is; `etee audit verify` lists it as unconcluded): \
                 check the disk of the audit file, and `etee keys list`",
                match destroyed {
                    Ok(n) => format!("destroyed the key ({n} object(s))"),
                    Err(t) => format!("failed ({t}; the key may still be there)"),
                }
            )),
        })
    }

    /// A handle on the same core (token, policy, audit chain) that speaks for `client`:
    /// what it may do is what the policy grants that client id, and its requests are
    /// recorded under it. The appliance makes one per caller of its API.
    pub fn for_client(&self, client: &str) -> Result<Self> {
        Ok(Self {
            inner: self.inner.clone(),
            client: client_id(client)?,
        })
    }

    /// The client id this handle speaks for.
    pub fn client(&self) -> &ClientId {
        &self.client
    }

    /// The core's token handle (which keys it holds, of which kind), for building a
    /// policy of one's own.
    pub fn token(&self) -> &HsmToken {
        &self.inner.token
    }

    /// The opened token.
    pub fn hsm(&self) -> &Hsm {
        &self.inner.hsm
    }

    /// Runs one request through the core. Key operations hold the core only to admit and
    /// to conclude them: the HSM call runs on this thread with a session of its own while
    /// the syncer thread makes the use record durable, and syncs are shared with
    /// concurrent callers.
    pub fn request(&self, request: &Request) -> Response {
        let admission = self.core().admit(request, now_ms());
        let concluded = match admission {
            Admission::Answered(concluded) => concluded,
            Admission::Admitted(ticket) => {
                // The use record's sync runs while the token works, planned for when the
                // token usually answers this kind of request.
                let usual = &self.inner.usual_micros[usual_slot(request)];
                let needed_in = Duration::from_micros(usual.load(Ordering::Relaxed));
                self.inner.sync.start(ticket.durable_mark(), needed_in);
                let began = Instant::now();
                let executed = ticket.execute(&mut self.inner.token.clone());
                let took = began.elapsed().as_micros().min(MAX_USUAL_MICROS) as u64;
                // Moving average, 1/8 per use (racy updates only blur it).
                let old = usual.load(Ordering::Relaxed);
                usual.store((old * 7 + took) / 8, Ordering::Relaxed);
                self.core().conclude(executed, now_ms())
            }
        };
        let durable = self.inner.sync.wait(concluded.durable_mark());
        concluded.release(durable)
    }

    fn core(&self) -> std::sync::MutexGuard<'_, HsmCustody> {
        self.inner
            .core
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How many `fdatasync`s the audit file needed since it was opened (with concurrent
    /// callers, fewer than records: see [`GroupSync`]).
    pub fn audit_syncs(&self) -> u64 {
        self.inner.sync.syncs()
    }

    /// Where the audit chain stands.
    pub fn audit_head(&self) -> etee_custody::AuditHead {
        match self.request(&Request::AuditHead) {
            Response::AuditHead(h) => h,
            _ => etee_custody::AuditHead::GENESIS,
        }
    }

    /// The authentication key (its certificate and chain from the token), used through
    /// the core.
    pub fn signing_key(&self) -> Result<SigningKey> {
        let mut key = self.inner.hsm.keys().signing_key()?;
        key.ops = Arc::new(self.clone());
        Ok(key)
    }

    /// Every ETK key whose certificate is in the token, used through the core.
    pub fn decryption_keys(&self) -> Result<Vec<DecryptionKey>> {
        let ops: Arc<dyn PrivateKeyOps> = Arc::new(self.clone());
        let mut keys = self.inner.hsm.keys().decryption_keys()?;
        for k in &mut keys {
            k.ops = ops.clone();
        }
        Ok(keys)
    }

    /// [`Self::decryption_keys`] as a [`KeyRing`].
    pub fn key_ring(&self) -> Result<KeyRing> {
        let mut ring = KeyRing::new();
        ring.extend(self.decryption_keys()?);
        Ok(ring)
    }

    fn core_key(key: &KeyId) -> Option<etee_custody::KeyId> {
        etee_custody::KeyId::new(key.0.as_bytes())
    }

    /// What the token says about the custody of key `key_id` (sensitive, extractable,
    /// generated in the token), asked through the core: it needs a policy rule for this
    /// client and the key, and is recorded.
    pub fn describe_key(&self, key_id: &str) -> Result<KeyFacts, KeyError> {
        let request = describe_request(self.client.clone(), key_id)?;
        describe_result(self.request(&request), key_id)
    }

    /// Wraps `secret` (an AES key: 16, 24 or 32 bytes) with the wrapping key `key_id`
    /// (`CKM_AES_KEY_WRAP`, RFC 3394) through the core: policy, then the audit record, then
    /// the wrapped secret (`secret.len() + 8` bytes), safe to store.
    pub fn wrap_secret(&self, key_id: &str, secret: &[u8]) -> Result<Vec<u8>, KeyError> {
        let request = wrap_request(self.client.clone(), key_id, secret)?;
        wrap_result(self.request(&request), key_id)
    }

    /// Unwraps a secret wrapped by [`Self::wrap_secret`] with the same key, through the
    /// core. Every failure of the blob (integrity check, wrong key) is the one uniform
    /// [`KeyError::DecryptFailed`]; the token's detail is on the audit record only.
    pub fn unwrap_secret(
        &self,
        key_id: &str,
        wrapped: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let request = unwrap_request(self.client.clone(), key_id, wrapped)?;
        unwrap_result(self.request(&request), key_id)
    }
}

/// A `DescribeKey` request.
pub(crate) fn describe_request(client: ClientId, key_id: &str) -> Result<Request, KeyError> {
    let key = etee_custody::KeyId::new(key_id.as_bytes())
        .ok_or_else(|| KeyError::UnknownKey(KeyId(key_id.into())))?;
    Ok(Request::DescribeKey { client, key })
}

/// The core's answer to a `DescribeKey` request.
pub(crate) fn describe_result(response: Response, key_id: &str) -> Result<KeyFacts, KeyError> {
    match response {
        Response::KeyFacts(facts) => Ok(facts),
        // A core older than the request reads an unknown frame id.
        Response::Error(CoreError::BadFrame) => Err(KeyError::Unavailable(
            "the custody core does not know DescribeKey (a custody process of an older \
             etee?)"
                .into(),
        )),
        Response::Error(CoreError::Token(t)) => Err(KeyError::Unavailable(format!(
            "reading the attributes of {key_id:?}: {t}"
        ))),
        Response::Error(e) => Err(key_error(e, &KeyId(key_id.into()))),
        _ => Err(KeyError::Unavailable("unexpected custody response".into())),
    }
}

/// A `WrapSecret` request; lengths are left to the core (which records a wrong one).
pub(crate) fn wrap_request(
    client: ClientId,
    key_id: &str,
    secret: &[u8],
) -> Result<Request, KeyError> {
    let key = etee_custody::KeyId::new(key_id.as_bytes())
        .ok_or_else(|| KeyError::UnknownKey(KeyId(key_id.into())))?;
    let secret = WrapSecret::from_slice(secret)
        .ok_or_else(|| KeyError::Refused(CoreError::InvalidLength.to_string()))?;
    Ok(Request::WrapSecret {
        client,
        key,
        secret,
    })
}

/// An `UnwrapSecret` request; a blob too long for any secret is refused here already.
pub(crate) fn unwrap_request(
    client: ClientId,
    key_id: &str,
    wrapped: &[u8],
) -> Result<Request, KeyError> {
    let key = etee_custody::KeyId::new(key_id.as_bytes())
        .ok_or_else(|| KeyError::UnknownKey(KeyId(key_id.into())))?;
    let wrapped = Wrapped::from_slice(wrapped)
        .map_err(|_| KeyError::Refused(CoreError::InvalidLength.to_string()))?;
    Ok(Request::UnwrapSecret {
        client,
        key,
        wrapped,
    })
}

/// The core's answer to a `WrapSecret` request.
pub(crate) fn wrap_result(response: Response, key_id: &str) -> Result<Vec<u8>, KeyError> {
    match response {
        Response::Wrapped(w) => Ok(w.to_vec()),
        // Not a signature: say what failed (wrapping reveals nothing of a blob).
        Response::Error(CoreError::Token(t)) => Err(KeyError::Unavailable(format!(
            "wrapping with {key_id:?}: {t}"
        ))),
        Response::Error(e) => Err(key_error(e, &KeyId(key_id.into()))),
        _ => Err(KeyError::Unavailable("unexpected custody response".into())),
    }
}

/// The core's answer to an `UnwrapSecret` request (failures of the blob stay uniform).
pub(crate) fn unwrap_result(
    response: Response,
    key_id: &str,
) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    match response {
        Response::Unwrapped(s) => Ok(Zeroizing::new(s.expose().to_vec())),
        Response::Error(CoreError::Token(_) | CoreError::UnwrapFailed) => {
            Err(KeyError::DecryptFailed)
        }
        Response::Error(e) => Err(key_error(e, &KeyId(key_id.into()))),
        _ => Err(KeyError::Unavailable("unexpected custody response".into())),
    }
}

/// The refusal of a core locked out by wrong PINs.
fn locked_out(custody: &CustodyConfig) -> HsmError {
    HsmError::Invalid(format!(
        "the custody core is locked out after {} wrong PINs (they are on the audit chain {}); \
         the token was not asked. Check the PIN file, then, after investigating, reset the \
         count with `etee custody reset-pin`",
        etee_custody::config::MAX_PIN_ATTEMPTS,
        custody.audit_file.display()
    ))
}

/// The login with the configured user PIN ([`Hsm::open`], `C_Login`) under the rule of
/// the core's `Unlock`. The token is found first (a configuration naming none leaves no
/// audit file), then the chain is taken (locked, so that no other core appends meanwhile)
/// for the time of the login: when it ends locked out the token is not asked at all
/// (sparing a real HSM's own retry counter); otherwise the try is recorded (durably)
/// before the PIN reaches the token, so that a try whose outcome is lost still counts
/// after a restart, and a chain that cannot take the record means no try at all; then
/// the outcome: a `C_Login` the token refuses is recorded as a failed unlock and counted,
/// an accepted one ends a run of wrong PINs.
fn login_on_record(hsm: &HsmConfig, custody: &CustodyConfig) -> Result<Hsm> {
    crate::token_summary(hsm)?;
    // No PIN to try (a missing PIN file or credential) is an error of the configuration,
    // not a login: nothing goes on the chain, where it could only read as a token failure.
    drop(hsm.user_pin()?);
    let opened = Arc::new(Mutex::new(None));
    let login = LoginOnly::Opening {
        hsm: hsm.clone(),
        opened: opened.clone(),
    };
    let mut core = open_core(login, Policy::deny_all(), custody)?;
    if core.status().state == etee_custody::lock::LockState::LockedOut {
        return Err(locked_out(custody));
    }
    // The PIN stays with the pool: `LoginOnly` opens the token (the `C_Login`) when the
    // core asks, after the try is on the chain.
    let pin = WirePin::from_slice(b"-").expect("a one-byte PIN fits");
    let response = core.handle_request(&Request::Unlock { pin }, now_ms());
    let opened = opened.lock().unwrap_or_else(|e| e.into_inner()).take();
    match (opened, response) {
        (Some(Ok(opened)), Response::Unlocked) => Ok(opened),
        // A login that is not on record does not stand.
        (Some(Ok(_)), other) => Err(HsmError::Audit(format!(
            "{}: the login could not be recorded ({}); the token is not used",
            custody.audit_file.display(),
            response_text(&other)
        ))),
        // The try could not be recorded: the token was not asked.
        (None, other) => Err(HsmError::Audit(format!(
            "{}: the login could not be recorded ({}); the PIN was not tried",
            custody.audit_file.display(),
            response_text(&other)
        ))),
        // No PIN reached the token (no PIN file, no session...): not a guess.
        (Some(Err(refused)), _) if login_refusal(&refused).is_none() => Err(refused),
        (Some(Err(refused)), response) => {
            let hint = matches!(refused, HsmError::WrongPin { .. })
                .then(|| hsm.pin.whitespace_hint())
                .flatten();
            let tries_left = core.status().pin_tries_left;
            let counted = counted(custody, refused, response, tries_left);
            Err(match hint {
                Some(hint) => HsmError::Invalid(format!("{counted}. Note: {hint}")),
                None => counted,
            })
        }
    }
}

/// The return value of a `C_Login` the token refused, as the core records it; `None` when
/// the error did not come from a `C_Login` that tried the user PIN.
fn login_refusal(e: &HsmError) -> Option<u64> {
    match e {
        HsmError::WrongPin {
            kind: PinKind::User,
            ..
        } => Some(ckr::PIN_INCORRECT),
        HsmError::PinLocked {
            kind: PinKind::User,
            ..
        } => Some(ckr::PIN_LOCKED),
        HsmError::Pkcs11 { function, .. } if function == "C_Login" => Some(ck_code(e)),
        _ => None,
    }
}

/// A response of the core, for a message.
fn response_text(response: &Response) -> String {
    match response {
        Response::Error(e) => e.to_string(),
        other => format!("unexpected response {:#04x}", other.id()),
    }
}

/// The error for a login the token refused, once the core recorded (and counted) it;
/// `tries_left`: the core's count after it.
fn counted(
    custody: &CustodyConfig,
    refused: HsmError,
    response: Response,
    tries_left: u8,
) -> HsmError {
    let chain = custody.audit_file.display();
    match response {
        // This try reached the token; the next ones will not.
        Response::Error(CoreError::PinIncorrect { .. } | CoreError::Token(_))
            if tries_left == 0 =>
        {
            HsmError::Invalid(format!(
                "{refused}; counted on the custody audit chain {chain}: that was the {}th \
                 failed login in a row, so the custody core is now locked out: the token will \
                 not be asked again, whatever the PIN file holds, until `etee custody \
                 reset-pin` (check the PIN file first)",
                etee_custody::config::MAX_PIN_ATTEMPTS
            ))
        }
        Response::Error(CoreError::PinIncorrect { tries_left }) => HsmError::Invalid(format!(
            "{refused}; counted on the custody audit chain {chain}: {tries_left} more wrong \
             PIN(s) and the core locks out (the token keeps its own count too)"
        )),
        // A refusal other than a wrong PIN (the token locked its PIN...): counted as well.
        Response::Error(CoreError::Token(_)) => HsmError::Invalid(format!(
            "{refused}; counted as a failed login on the custody audit chain {chain}: \
             {tries_left} more and the core locks out"
        )),
        Response::Error(CoreError::PinLockedOut) => locked_out(custody),
        other => HsmError::Invalid(format!(
            "{refused}; it could not be recorded on {chain}: {}",
            response_text(&other)
        )),
    }
}

/// The token as the core sees it around a login made by the host (`C_Login` through the
/// session pool, with the configured PIN): its `login` opens the token ([`Hsm::open`])
/// when the core asks — after the core recorded the try — and answers what the token
/// answered, so that the core's `Unlock` counts and records it like any login; no key can
/// be used through it.
enum LoginOnly {
    /// For a core that only records an administrator's act (no login is made).
    Never,
    Opening {
        hsm: HsmConfig,
        /// The opened token, or why it could not be opened, once the core asked.
        opened: Arc<Mutex<Option<Result<Hsm>>>>,
    },
}

impl Token for LoginOnly {
    fn sign_pss_sha256(
        &mut self,
        _: &etee_custody::KeyId,
        _: &[u8; 32],
        _: &mut [u8],
    ) -> Result<usize, TokenError> {
        not_logged_in(TokenFunction::Sign)
    }
    fn decrypt_pkcs1v15(
        &mut self,
        _: &etee_custody::KeyId,
        _: &[u8],
        _: &mut [u8],
    ) -> Result<usize, TokenError> {
        not_logged_in(TokenFunction::Decrypt)
    }
    fn wrap_aes_kw(
        &mut self,
        _: &etee_custody::KeyId,
        _: &[u8],
        _: &mut [u8],
    ) -> Result<usize, TokenError> {
        not_logged_in(TokenFunction::WrapKey)
    }
    fn unwrap_aes_kw(
        &mut self,
        _: &etee_custody::KeyId,
        _: &[u8],
        _: &mut [u8],
    ) -> Result<usize, TokenError> {
        not_logged_in(TokenFunction::UnwrapKey)
    }
    fn login(&mut self, _: &[u8]) -> Result<(), TokenError> {
        let Self::Opening { hsm, opened } = self else {
            return Err(TokenError::new(
                TokenFunction::Login,
                ckr::USER_NOT_LOGGED_IN,
            ));
        };
        let result = Hsm::open(hsm);
        let answer = match &result {
            Ok(_) => Ok(()),
            Err(e) => Err(match login_refusal(e) {
                Some(code) => TokenError::new(TokenFunction::Login, code),
                // Failed before the PIN reached the token: the core does not count it.
                None => TokenError::new(TokenFunction::OpenSession, ck_code(e)),
            }),
        };
        *opened.lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
        answer
    }
    fn logout(&mut self) {}
    fn key_kind(&self, _: &etee_custody::KeyId) -> Option<KeyKind> {
        None
    }
    fn destroy_key(&mut self, _: &etee_custody::KeyId) -> Result<usize, TokenError> {
        not_logged_in(TokenFunction::DestroyObject)
    }
    fn key_facts(&mut self, _: &etee_custody::KeyId) -> Result<KeyFacts, TokenError> {
        not_logged_in(TokenFunction::GetAttributeValue)
    }
}

/// What every key operation of [`LoginOnly`] answers.
fn not_logged_in<T>(function: TokenFunction) -> Result<T, TokenError> {
    Err(TokenError::new(function, ckr::USER_NOT_LOGGED_IN))
}

/// A locked core over `token`, continuing the audit chain of `custody.audit_file` (created
/// with its directory if missing), with the wrong-PIN counter the chain ends with and the
/// budgets its recent key uses left (a restart refills nothing: see [`Policy::replay`]).
fn open_core<T: Token>(
    token: T,
    mut policy: Policy,
    custody: &CustodyConfig,
) -> Result<Custody<T, FileAuditSink>> {
    let path = &custody.audit_file;
    use etee_custody::file_sink::{segments, sync_dir, FileSinkError, LOCK_WAIT};
    // A new chain is normal once per token; anywhere else it is a mistyped audit_file,
    // which would restart the record (and the wrong-PIN count): never silent.
    let new_chain = !path.exists() && segments(path).map_or(true, |s| s.is_empty());
    // The directories missing on the way to the file, the deepest first.
    let created: Vec<&std::path::Path> = path
        .ancestors()
        .skip(1)
        .filter(|d| !d.as_os_str().is_empty())
        .take_while(|d| !d.exists())
        .collect();
    if let Some(dir) = created.first() {
        let failed =
            |e: std::io::Error| HsmError::Config(format!("audit directory {}: {e}", dir.display()));
        std::fs::create_dir_all(dir).map_err(failed)?;
        // They must survive a power cut with the chain they will hold: each new entry is
        // made durable in its parent (the file's own entry is the sink's to sync).
        for made in created.iter().rev() {
            sync_dir(made).map_err(failed)?;
        }
    }
    let new_dir = created.first();
    // The uses within the longest time a budget takes to refill (all those of the file
    // when a budget never refills) count against the budgets again.
    let since = policy
        .replay_window_ms()
        .map_or(0, |window| now_ms().saturating_sub(window));
    let mut replay = |record: &etee_custody::AuditRecord| {
        if record.time_ms >= since {
            if let Some((client, key, usage)) = record.budget_use() {
                policy.replay(client, key, usage, record.time_ms);
            }
        }
    };
    // Another core holds the chain (a service, or a short command that will be done soon):
    // say at once that we wait, rather than seem to hang.
    let opened = match FileAuditSink::open_observing(path, Duration::ZERO, since, &mut replay) {
        Err(FileSinkError::InUse) => {
            eprintln!(
                "etee: the audit chain {} is in use by another custody core (`etee custody \
                 serve`, `etee serve`, `etee platform serve` for KGSS's token, or another \
                 etee command on this token); waiting up to {} s for it",
                path.display(),
                LOCK_WAIT.as_secs()
            );
            FileAuditSink::open_observing(path, LOCK_WAIT, since, &mut replay)
        }
        other => other,
    };
    let (sink, head) = opened.map_err(|e| match e {
        FileSinkError::Corrupt { .. } | FileSinkError::Chain(_) => HsmError::Audit(format!(
            "{e}. The core does not run on a damaged chain: keep the file as evidence, run \
             `etee audit verify`, and follow \"A damaged audit chain\" in docs/operations.md"
        )),
        FileSinkError::InUse => HsmError::Audit(format!(
            "{}: {e} (waited {} s)",
            path.display(),
            LOCK_WAIT.as_secs()
        )),
        e => HsmError::Audit(format!("{}: {e}", path.display())),
    })?;
    if new_chain {
        eprintln!(
            "etee: no audit chain at {}{}: a new chain starts there. If this token's chain \
             is elsewhere, stop and set [custody] audit_file to it",
            path.display(),
            new_dir
                .map(|d| format!(" (directory {} created)", d.display()))
                .unwrap_or_default()
        );
    }
    if let Some(cut) = sink.cut_at_open() {
        eprintln!(
            "etee: warning: the audit chain {} ended in an incomplete or damaged record ({} \
             bytes at byte {}): cut, as after a crash while it was written; its bytes are \
             kept in {}. If no crash explains it, investigate (see operations.md).",
            path.display(),
            cut.bytes,
            cut.offset,
            cut.kept.display()
        );
    }
    let failures = sink.pin_failures_at_open();
    let sink = sink.with_segment_limit(custody.audit_segment_bytes);
    Ok(Custody::new(token, sink, policy, head).with_pin_failures(failures))
}

/// A refusal or failure of the core as a [`KeyError`] (decryption and unwrap failures stay
/// uniform).
fn key_error(e: CoreError, key: &KeyId) -> KeyError {
    match e {
        CoreError::DecryptFailed | CoreError::UnwrapFailed => KeyError::DecryptFailed,
        CoreError::AuditUnavailable => KeyError::Unavailable(e.to_string()),
        CoreError::UnknownKey => KeyError::UnknownKey(key.clone()),
        CoreError::RateLimited { retry_after_ms } => KeyError::RateLimited { retry_after_ms },
        CoreError::Token(t) => KeyError::SignFailed {
            key: key.clone(),
            reason: t.to_string(),
        },
        other => KeyError::Refused(other.to_string()),
    }
}

/// The core's answer to a sign request as the result of [`PrivateKeyOps::sign_pss_sha256`].
pub(crate) fn sign_result(response: Response, key: &KeyId) -> Result<Vec<u8>, KeyError> {
    match response {
        Response::Signature(s) => Ok(s.to_vec()),
        Response::Error(e) => Err(key_error(e, key)),
        _ => Err(KeyError::Unavailable("unexpected custody response".into())),
    }
}

/// The core's answer to a decrypt request as the result of
/// [`PrivateKeyOps::decrypt_pkcs1v15`] (token failures stay a uniform `DecryptFailed`).
pub(crate) fn decrypt_result(
    response: Response,
    key: &KeyId,
) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    match response {
        Response::Plaintext(p) => Ok(Zeroizing::new(p.expose().to_vec())),
        Response::Error(CoreError::DecryptFailed) => Err(KeyError::DecryptFailed),
        // The core passes on only what says the token could not try (no ciphertext causes
        // it): the token is unavailable, the message is not judged.
        Response::Error(CoreError::Token(t)) => Err(KeyError::Unavailable(format!(
            "decrypting with {}: {t}",
            key.0
        ))),
        Response::Error(e) => Err(key_error(e, key)),
        _ => Err(KeyError::Unavailable("unexpected custody response".into())),
    }
}

impl PrivateKeyOps for CustodyKeys {
    fn sign_pss_sha256(&self, key: &KeyId, digest: &[u8; 32]) -> Result<Vec<u8>, KeyError> {
        let core_key = Self::core_key(key).ok_or_else(|| KeyError::UnknownKey(key.clone()))?;
        let request = Request::SignPssSha256 {
            client: self.client.clone(),
            key: core_key,
            digest: *digest,
        };
        sign_result(self.request(&request), key)
    }

    fn decrypt_pkcs1v15(&self, key: &KeyId, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let core_key = Self::core_key(key).ok_or(KeyError::DecryptFailed)?;
        let blob = Blob::from_slice(blob).map_err(|_| KeyError::DecryptFailed)?;
        let request = Request::DecryptPkcs1v15 {
            client: self.client.clone(),
            key: core_key,
            blob,
        };
        decrypt_result(self.request(&request), key)
    }
}
