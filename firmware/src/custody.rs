//! The custody core: frames in, frames out, and the token touched only in between a policy
//! check and an audit record.
//!
//! For a key operation the order is fixed:
//!
//! 0. for key wrap, the lengths (a secret of 16, 24 or 32 bytes, a wrapped secret 8 more;
//!    else `InvalidLength`: lengths say nothing about keys),
//! 1. lock state (`Locked` → refused),
//! 2. policy: a rule for this client, key and operation (default deny),
//! 3. the key: the token has it and its kind fits (no signing with an ETK key, no decrypting
//!    with the authentication key, wrapping keys wrap and unwrap and do nothing else),
//! 4. the client's rate budget for the key,
//! 5. the use record ([`Outcome::Admitted`]: client, key, operation, input digest) appended
//!    to the audit chain; if it cannot be, `AuditUnavailable` and the token is not asked,
//! 6. the token operation,
//! 7. the record of the outcome (refusals at steps 0–4 are recorded too, as one record),
//! 8. the result, released only if the use record is durable and the outcome record
//!    written; otherwise `AuditUnavailable`.
//!
//! The use record's sync may run while the token works (see [`crate::audit`]): a caller
//! that can wait in parallel starts it with [`Ticket::durable_mark`] before executing.
//!
//! Steps 2 and 3 come in that order so that a client without a rule for a key learns
//! nothing about whether the key exists. A failed decryption leaves the core as
//! [`Error::DecryptFailed`] whatever the token said (the detail is in the audit record),
//! unless the token says it could not try at all (the key, session or device gone:
//! [`ckr::token_unavailable`], which no ciphertext causes), which is passed on. Together
//! with the unsealer carrying on with a random content key, this keeps PKCS#1 v1.5
//! from becoming a padding oracle. A failed unwrap likewise leaves as [`Error::UnwrapFailed`],
//! whatever the token said.
//!
//! Concurrent callers use the same steps split in three, so that the token operation (the
//! slow part) runs without holding the core: [`Custody::admit`] (steps 0–5) hands out a
//! [`Ticket`], [`Ticket::execute`] runs step 6 on a token handle of the caller's, and
//! [`Custody::conclude`] (step 7) appends the outcome record and returns a [`Concluded`]
//! whose response is released (step 8) only once the use record is durable. The sink may
//! write the records of several callers with one sync ([`AuditSink::append_deferred`]).
//! [`Custody::handle_request`] is the same flow in one call.
//!
//! `Status` and `AuditHead` read state and are not recorded; malformed frames have no
//! client to record and are answered with `BadFrame` (the custody process logs them, a
//! few lines a second at most).

use crate::audit::{
    sha256, AuditError, AuditHead, AuditRecord, AuditSink, Hash, Operation, Outcome,
};
use crate::config::{secret_len_ok, DIGEST_LEN, KEY_WRAP_OVERHEAD};
use crate::id::{ClientId, KeyId};
use crate::lock::{Lock, LockState};
use crate::policy::{Denial, KeyUse, Policy};
use crate::token::{ckr, KeyKind, Token, TokenError, TokenFunction};
use crate::wire::{
    self, Error, Plaintext, Request, Response, Signature, StatusReply, WrapSecret, Wrapped,
};

/// The input digest recorded where there is no input to identify (or it is a PIN).
const NO_INPUT: Hash = [0; DIGEST_LEN];

/// Why [`Custody::destroy_key`] did not end in a destruction on record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DestroyError {
    /// The token was not asked, nothing was destroyed: the core is locked, or the use
    /// record could not be written ([`Error::AuditUnavailable`]).
    NotAsked(Error),
    /// The token was asked and failed (`CKR_KEY_HANDLE_INVALID`: no such key); on record.
    Failed(TokenError),
    /// The token was asked and answered `destroyed` (the objects it destroyed, or its
    /// error), but that outcome could not be recorded: the chain shows the use without
    /// its outcome (`unconcluded` in `etee audit verify`).
    OutcomeUnrecorded {
        destroyed: Result<usize, TokenError>,
    },
}

/// The custody core over a token `T`, writing its audit chain to `A`.
pub struct Custody<T: Token, A: AuditSink> {
    token: T,
    audit: A,
    policy: Policy,
    lock: Lock,
    head: AuditHead,
}

impl<T: Token, A: AuditSink> Custody<T, A> {
    /// A locked core. `head` is where the audit chain in `audit` stands (from
    /// [`crate::audit::verify_chain`] over the stored records, or [`AuditHead::GENESIS`] for
    /// a new chain); the next record continues it.
    pub fn new(token: T, audit: A, policy: Policy, head: AuditHead) -> Self {
        Self {
            token,
            audit,
            policy,
            lock: Lock::new(),
            head,
        }
    }

    /// The same core with the wrong-PIN counter of an earlier run (see
    /// [`crate::audit::PinHistory`]): locked out at once if the earlier run ended so.
    pub fn with_pin_failures(mut self, failures: u8) -> Self {
        self.lock = Lock::after_failures(failures);
        self
    }

    /// Handles one request frame and writes the response frame into `out`; returns its
    /// length. Never panics. Returns 0 (and does nothing) only if `out` is shorter than
    /// [`MAX_RESPONSE_FRAME`].
    ///
    /// A decoded PIN is wiped when this returns; `request` itself is the caller's buffer and
    /// the caller's to wipe.
    pub fn handle(&mut self, request: &[u8], now_ms: u64, out: &mut [u8]) -> usize {
        wire::answer_frame(request, out, |r| self.handle_request(r, now_ms))
    }

    /// Handles one decoded request.
    pub fn handle_request(&mut self, request: &Request, now_ms: u64) -> Response {
        match request {
            Request::Status => Response::Status(self.status()),
            Request::AuditHead => Response::AuditHead(self.head),
            Request::Unlock { pin } => self.unlock(pin.expose(), now_ms),
            Request::Lock => self.lock(now_ms),
            Request::DescribeKey { client, key } => self.describe_key(client, key, now_ms),
            Request::SignPssSha256 { .. }
            | Request::DecryptPkcs1v15 { .. }
            | Request::WrapSecret { .. }
            | Request::UnwrapSecret { .. } => {
                let concluded = match self.admit(request, now_ms) {
                    Admission::Answered(concluded) => concluded,
                    Admission::Admitted(ticket) => {
                        let executed = ticket.execute(&mut self.token);
                        self.conclude(executed, now_ms)
                    }
                };
                let durable = self.audit.wait_durable(concluded.mark);
                concluded.release(durable)
            }
        }
    }

    /// Steps 0–5 of a key request (see the module doc): a [`Ticket`] to execute, or the
    /// answer (a refusal, already appended to the chain; or the reply to a request that is
    /// not a key operation, handled in full).
    pub fn admit<'r>(&mut self, request: &'r Request, now_ms: u64) -> Admission<'r> {
        let (client, key, operation) = match request {
            Request::SignPssSha256 {
                client,
                key,
                digest,
            } => (client, key, KeyOperation::Sign(digest)),
            Request::DecryptPkcs1v15 { client, key, blob } => {
                (client, key, KeyOperation::Decrypt(blob))
            }
            Request::WrapSecret {
                client,
                key,
                secret,
            } => (client, key, KeyOperation::Wrap(secret)),
            Request::UnwrapSecret {
                client,
                key,
                wrapped,
            } => (client, key, KeyOperation::Unwrap(wrapped)),
            other => {
                return Admission::Answered(Concluded::at_once(self.handle_request(other, now_ms)))
            }
        };
        let (usage, kind) = match operation {
            KeyOperation::Sign(_) => (KeyUse::Sign, KeyKind::Authentication),
            KeyOperation::Decrypt(_) => (KeyUse::Decrypt, KeyKind::Encryption),
            KeyOperation::Wrap(_) => (KeyUse::Wrap, KeyKind::Wrapping),
            KeyOperation::Unwrap(_) => (KeyUse::Unwrap, KeyKind::Wrapping),
        };
        let mut ticket = Ticket {
            client,
            key,
            operation,
            use_mark: None,
        };
        let checked = operation
            .lengths_ok()
            .then_some(())
            .ok_or(Error::InvalidLength)
            .and_then(|()| self.check(client, key, Some((usage, kind)), now_ms));
        match checked {
            Ok(()) => {
                // Step 5: no use of a key that is not on record.
                let (operation, input_digest) = operation.recorded(None);
                match self.record_deferred(
                    now_ms,
                    Some(client),
                    operation,
                    Some(key),
                    input_digest,
                    Outcome::Admitted,
                ) {
                    Ok(mark) => {
                        ticket.use_mark = Some(mark);
                        Admission::Admitted(ticket)
                    }
                    Err(e) => Admission::Answered(Concluded::at_once(Response::Error(e))),
                }
            }
            Err(e) => Admission::Answered(self.conclude(
                Executed {
                    ticket,
                    result: Err(e),
                },
                now_ms,
            )),
        }
    }

    /// Step 7 (and the response of step 8): appends the outcome record of an executed (or
    /// refused) request. The response comes out of [`Concluded::release`], given the
    /// outcome of waiting for [`Concluded::durable_mark`]: the use record of an executed
    /// request, the only record of a refused one.
    pub fn conclude(&mut self, executed: Executed<'_>, now_ms: u64) -> Concluded {
        let Executed { ticket, result } = executed;
        let wrapped = match &result {
            Ok(KeyOutput::Wrapped(wrapped)) => Some(&wrapped[..]),
            _ => None,
        };
        let (operation, input_digest) = ticket.operation.recorded(wrapped);
        // The record keeps the token's detailed error ...
        let recorded = self.record_deferred(
            now_ms,
            Some(ticket.client),
            operation,
            Some(ticket.key),
            input_digest,
            outcome(&result),
        );
        // Written is enough for the outcome of a use whose use record is durable (see
        // `audit`); a refusal is its only record, so it waits for its own.
        let mark = match (recorded, ticket.use_mark) {
            (Ok(_), Some(use_mark)) => use_mark,
            (Ok(mark), None) => mark,
            (Err(e), _) => return Concluded::at_once(Response::Error(e)),
        };
        let response = match result {
            Ok(KeyOutput::Signature(signature)) => Response::Signature(signature),
            Ok(KeyOutput::Plaintext(plaintext)) => Response::Plaintext(plaintext),
            Ok(KeyOutput::Wrapped(wrapped)) => Response::Wrapped(wrapped),
            Ok(KeyOutput::Unwrapped(secret)) => Response::Unwrapped(secret),
            // ... the client gets one uniform error for every failed decryption or unwrap
            // (a token that could not try at all is not a failed decryption).
            Err(Error::Token(t))
                if operation == Operation::DecryptPkcs1v15 && !ckr::token_unavailable(t.ckr) =>
            {
                Response::Error(Error::DecryptFailed)
            }
            Err(Error::Token(_)) if operation == Operation::UnwrapSecret => {
                Response::Error(Error::UnwrapFailed)
            }
            Err(e) => Response::Error(e),
        };
        Concluded { response, mark }
    }

    /// Administrator reset of the wrong-PIN counter (a local call of the process that owns
    /// the core, never a wire request). Recorded; not done if it cannot be recorded.
    pub fn reset_pin_counter(&mut self, now_ms: u64) -> Result<(), Error> {
        self.restart_pin_count(Operation::PinReset, now_ms)
    }

    /// Records that the token's security officer set the user PIN (a local call, after
    /// the host did it with the SO PIN); the wrong-PIN count starts again, since the PIN
    /// it counted against is gone. Not counted as done if it cannot be recorded.
    pub fn user_pin_set(&mut self, now_ms: u64) -> Result<(), Error> {
        self.restart_pin_count(Operation::UserPinSet, now_ms)
    }

    /// Records `operation` (an administrator's, with no client, key or input) and then
    /// clears the wrong-PIN count; nothing is cleared if the record cannot be written.
    fn restart_pin_count(&mut self, operation: Operation, now_ms: u64) -> Result<(), Error> {
        self.record(now_ms, None, operation, None, NO_INPUT, Outcome::Success)?;
        self.lock.reset();
        Ok(())
    }

    /// An administrator destroys a key and the token's other objects with its id (a local
    /// call of the process that owns the core, never a wire request; the host decides
    /// which keys may go). The use is made durable on the chain before the token is asked,
    /// and the outcome follows; refused while the core is locked. Answers how many
    /// objects the token destroyed; the error says whether the token was asked at all.
    pub fn destroy_key(&mut self, key: &KeyId, now_ms: u64) -> Result<usize, DestroyError> {
        if self.lock.state() != LockState::Unlocked {
            return Err(DestroyError::NotAsked(Error::Locked));
        }
        self.record(
            now_ms,
            None,
            Operation::KeyDestroy,
            Some(key),
            NO_INPUT,
            Outcome::Admitted,
        )
        .map_err(DestroyError::NotAsked)?;
        let destroyed = self.token.destroy_key(key);
        let outcome = match destroyed {
            Ok(_) => Outcome::Success,
            Err(e) => Outcome::Refused(Error::Token(e)),
        };
        if self
            .record(
                now_ms,
                None,
                Operation::KeyDestroy,
                Some(key),
                NO_INPUT,
                outcome,
            )
            .is_err()
        {
            return Err(DestroyError::OutcomeUnrecorded { destroyed });
        }
        destroyed.map_err(DestroyError::Failed)
    }

    /// Lock state and PIN tries left.
    pub fn status(&self) -> StatusReply {
        StatusReply {
            state: self.lock.state(),
            pin_tries_left: self.lock.tries_left(),
        }
    }

    /// Where the audit chain stands.
    pub fn audit_head(&self) -> AuditHead {
        self.head
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The token, read-only: key operations go through requests.
    pub fn token(&self) -> &T {
        &self.token
    }

    /// The audit sink, read-only.
    pub fn audit_sink(&self) -> &A {
        &self.audit
    }

    /// Logs out and hands back the token and the sink.
    pub fn into_parts(mut self) -> (T, A) {
        self.token.logout();
        (self.token, self.audit)
    }

    // --- Operations ----------------------------------------------------------------------

    fn unlock(&mut self, pin: &[u8], now_ms: u64) -> Response {
        let result = match self.lock.state() {
            // Already logged in: the PIN is not tried, so nothing is learnt about it.
            LockState::Unlocked => Ok(()),
            LockState::Locked if self.lock.may_try_pin() => {
                // The try is on the chain, durable, before the PIN reaches the token: one
                // whose outcome cannot be recorded (a full disk, a crash) still counts after
                // a restart ([`PinHistory`] counts a try without an outcome as a failure),
                // and with no room for the record the token is not asked at all.
                if let Err(e) = self.record(
                    now_ms,
                    None,
                    Operation::Unlock,
                    None,
                    NO_INPUT,
                    Outcome::Admitted,
                ) {
                    return Response::Error(e);
                }
                match self.token.login(pin) {
                    Ok(()) => {
                        self.lock.login_succeeded();
                        Ok(())
                    }
                    // The PIN never reached the token (no session, say): not a guess.
                    Err(e) if e.function != TokenFunction::Login => Err(Error::Token(e)),
                    Err(e) => {
                        self.lock.login_failed();
                        Err(if e.ckr == ckr::PIN_INCORRECT {
                            Error::PinIncorrect {
                                tries_left: self.lock.tries_left(),
                            }
                        } else {
                            Error::Token(e)
                        })
                    }
                }
            }
            LockState::Locked | LockState::LockedOut => Err(Error::PinLockedOut),
        };
        let recorded = self.record(
            now_ms,
            None,
            Operation::Unlock,
            None,
            NO_INPUT,
            outcome(&result),
        );
        match (recorded, result) {
            (Err(e), _) => {
                // An unlock that is not on record does not stand.
                if self.lock.is_unlocked() {
                    self.token.logout();
                    self.lock.lock();
                }
                Response::Error(e)
            }
            (Ok(()), Ok(())) => Response::Unlocked,
            (Ok(()), Err(e)) => Response::Error(e),
        }
    }

    fn lock(&mut self, now_ms: u64) -> Response {
        // Lock first: locking is the safe state, whether or not it can be recorded.
        if self.lock.is_unlocked() {
            self.token.logout();
        }
        self.lock.lock();
        match self.record(
            now_ms,
            None,
            Operation::Lock,
            None,
            NO_INPUT,
            Outcome::Success,
        ) {
            Ok(()) => Response::Locked,
            Err(e) => Response::Error(e),
        }
    }

    // --- Steps ---------------------------------------------------------------------------

    /// Steps 1–4: everything that must pass before the token is asked about a key. For a
    /// use (`need`: the use and the kind of key it takes), a rule allowing that use; for a
    /// question about the key (`None`: `DescribeKey`), any rule for it, whatever its kind.
    fn check(
        &mut self,
        client: &ClientId,
        key: &KeyId,
        need: Option<(KeyUse, KeyKind)>,
        now_ms: u64,
    ) -> Result<(), Error> {
        if !self.lock.is_unlocked() {
            return Err(Error::Locked);
        }
        let grant = match need {
            Some((usage, _)) => self.policy.permit(client, key, usage),
            None => self.policy.permit_any(client, key),
        }
        .map_err(denied)?;
        match (self.token.key_kind(key), need) {
            (None, _) => return Err(Error::UnknownKey),
            (Some(k), Some((_, kind))) if k != kind => return Err(Error::WrongKeyKind),
            _ => {}
        }
        self.policy.spend(grant, now_ms).map_err(denied)
    }

    /// `DescribeKey`: the lock state, a rule for this client and key (any use; one use of
    /// its budget), the key known (so that a client without a rule learns nothing about
    /// it); then the token's facts, released once their record is durable. Refusals are
    /// recorded too.
    fn describe_key(&mut self, client: &ClientId, key: &KeyId, now_ms: u64) -> Response {
        let facts = self
            .check(client, key, None, now_ms)
            .and_then(|()| self.token.key_facts(key).map_err(Error::Token));
        let outcome = match &facts {
            Ok(_) => Outcome::Success,
            Err(e) => Outcome::Refused(*e),
        };
        let recorded = self.record(
            now_ms,
            Some(client),
            Operation::DescribeKey,
            Some(key),
            NO_INPUT,
            outcome,
        );
        match (recorded, facts) {
            (Err(e), _) | (Ok(()), Err(e)) => Response::Error(e),
            (Ok(()), Ok(facts)) => Response::KeyFacts(facts),
        }
    }

    /// The record of a request that is not a key operation: appends a record continuing the
    /// chain and waits until it is durable; the head moves only if the sink accepted it.
    fn record(
        &mut self,
        now_ms: u64,
        client: Option<&ClientId>,
        operation: Operation,
        key: Option<&KeyId>,
        input_digest: Hash,
        outcome: Outcome,
    ) -> Result<(), Error> {
        let mark = self.record_deferred(now_ms, client, operation, key, input_digest, outcome)?;
        self.audit
            .wait_durable(mark)
            .map_err(|_| Error::AuditUnavailable)
    }

    /// Appends a record continuing the chain, durable once the returned mark is; the head
    /// moves only if the sink accepted it.
    fn record_deferred(
        &mut self,
        now_ms: u64,
        client: Option<&ClientId>,
        operation: Operation,
        key: Option<&KeyId>,
        input_digest: Hash,
        outcome: Outcome,
    ) -> Result<u64, Error> {
        let record = AuditRecord {
            sequence: self.head.next_sequence,
            time_ms: now_ms,
            client: client.cloned(),
            operation,
            key: key.cloned(),
            input_digest,
            outcome,
            prev_hash: self.head.hash,
        };
        let mark = self
            .audit
            .append_deferred(&record)
            .map_err(|_| Error::AuditUnavailable)?;
        self.head = AuditHead::after(&record);
        Ok(mark)
    }
}

/// What [`Custody::admit`] decided.
// No allocator to box the large variant: the value lives on the stack, once per request.
#[allow(clippy::large_enum_variant)]
pub enum Admission<'r> {
    /// Steps 0–5 passed (the use is on record): execute the ticket, then conclude it.
    Admitted(Ticket<'r>),
    /// The request is answered (and recorded where it is recorded).
    Answered(Concluded),
}

/// The key operation of an admitted request.
#[derive(Clone, Copy)]
enum KeyOperation<'r> {
    Sign(&'r [u8; 32]),
    Decrypt(&'r [u8]),
    Wrap(&'r WrapSecret),
    Unwrap(&'r [u8]),
}

impl KeyOperation<'_> {
    /// The operation and input digest its records carry; `wrapped` is a wrap's output, if
    /// there is one yet: its fingerprint, never a hash of the secret (see `audit`).
    fn recorded(&self, wrapped: Option<&[u8]>) -> (Operation, Hash) {
        match self {
            Self::Sign(digest) => (Operation::SignPssSha256, sha256(&digest[..])),
            Self::Decrypt(blob) => (Operation::DecryptPkcs1v15, sha256(blob)),
            Self::Wrap(_) => (Operation::WrapSecret, wrapped.map_or(NO_INPUT, sha256)),
            Self::Unwrap(wrapped) => (Operation::UnwrapSecret, sha256(wrapped)),
        }
    }

    /// Step 0: key wrap works on whole AES keys only (RFC 3394: 64-bit blocks, at least
    /// two); the token is not asked to guess what else could be meant.
    fn lengths_ok(&self) -> bool {
        match self {
            Self::Sign(_) | Self::Decrypt(_) => true,
            Self::Wrap(secret) => secret_len_ok(secret.len()),
            Self::Unwrap(wrapped) => wrapped
                .len()
                .checked_sub(KEY_WRAP_OVERHEAD)
                .is_some_and(secret_len_ok),
        }
    }
}

/// A key request that passed the lock state, the policy, the key kind and the budget, and
/// whose use record is appended. Only [`Custody::admit`] makes one; [`Custody::conclude`]
/// must follow its execution, or the outcome is neither recorded nor released.
#[must_use = "an admitted request must be executed and concluded"]
pub struct Ticket<'r> {
    client: &'r ClientId,
    key: &'r KeyId,
    operation: KeyOperation<'r>,
    /// The audit sink's mark of the use record (`None` for a refusal, which has none).
    use_mark: Option<u64>,
}

impl<'r> Ticket<'r> {
    /// The audit sink's mark of this use's record. A caller that can sync in parallel
    /// starts making the record durable now, so that the sync overlaps the token
    /// operation; [`Concluded::durable_mark`] waits for the same mark.
    pub fn durable_mark(&self) -> u64 {
        self.use_mark.unwrap_or(0)
    }

    /// Step 6: the token operation, on `token` — the core's token or a handle to the same
    /// token (another session of it), so that concurrent callers do not wait for each
    /// other's HSM calls.
    pub fn execute<T: Token>(self, token: &mut T) -> Executed<'r> {
        let result = match self.operation {
            KeyOperation::Sign(digest) => {
                token_sign(token, self.key, digest).map(KeyOutput::Signature)
            }
            KeyOperation::Decrypt(blob) => {
                token_decrypt(token, self.key, blob).map(KeyOutput::Plaintext)
            }
            KeyOperation::Wrap(secret) => {
                token_wrap(token, self.key, secret).map(KeyOutput::Wrapped)
            }
            KeyOperation::Unwrap(wrapped) => {
                token_unwrap(token, self.key, wrapped).map(KeyOutput::Unwrapped)
            }
        };
        Executed {
            ticket: self,
            result,
        }
    }
}

/// An executed (or refused) key request, to be concluded.
#[must_use = "an executed request must be concluded, or its result is lost"]
pub struct Executed<'r> {
    ticket: Ticket<'r>,
    result: Result<KeyOutput, Error>,
}

enum KeyOutput {
    Signature(Signature),
    Plaintext(Plaintext),
    Wrapped(Wrapped),
    Unwrapped(WrapSecret),
}

/// The response to a request, held back until its audit record is durable.
#[must_use = "a concluded request is answered by release()"]
pub struct Concluded {
    response: Response,
    mark: u64,
}

impl Concluded {
    fn at_once(response: Response) -> Self {
        Self { response, mark: 0 }
    }

    /// The audit sink's mark to wait for before [`Concluded::release`].
    pub fn durable_mark(&self) -> u64 {
        self.mark
    }

    /// Step 8: the response if the record is durable (`durable` is the outcome of waiting
    /// for [`Concluded::durable_mark`]); otherwise `AuditUnavailable`, and the result
    /// (a signature or a wiped plaintext) is dropped.
    pub fn release(self, durable: Result<(), AuditError>) -> Response {
        match durable {
            Ok(()) => self.response,
            Err(_) => Response::Error(Error::AuditUnavailable),
        }
    }
}

fn token_sign<T: Token>(token: &mut T, key: &KeyId, digest: &[u8; 32]) -> Result<Signature, Error> {
    let too_long = Error::Token(TokenError::new(TokenFunction::Sign, ckr::BUFFER_TOO_SMALL));
    let mut signature = Signature::new();
    signature
        .resize(signature.capacity(), 0)
        .map_err(|_| too_long)?;
    let n = token
        .sign_pss_sha256(key, digest, &mut signature)
        .map_err(Error::Token)?;
    if n > signature.len() {
        return Err(too_long);
    }
    signature.truncate(n);
    Ok(signature)
}

fn token_decrypt<T: Token>(token: &mut T, key: &KeyId, blob: &[u8]) -> Result<Plaintext, Error> {
    Plaintext::fill_with(|buf| {
        let n = token.decrypt_pkcs1v15(key, blob, buf)?;
        if n > buf.len() {
            return Err(TokenError::new(
                TokenFunction::Decrypt,
                ckr::BUFFER_TOO_SMALL,
            ));
        }
        Ok(n)
    })
    .map_err(Error::Token)
}

/// Wraps `secret` (whose length step 0 checked); the token must return exactly 8 bytes
/// more, anything else is its failure.
fn token_wrap<T: Token>(token: &mut T, key: &KeyId, secret: &WrapSecret) -> Result<Wrapped, Error> {
    let failed = |ckr| Error::Token(TokenError::new(TokenFunction::WrapKey, ckr));
    let mut wrapped = Wrapped::new();
    wrapped
        .resize(wrapped.capacity(), 0)
        .map_err(|_| failed(ckr::BUFFER_TOO_SMALL))?;
    let n = token
        .wrap_aes_kw(key, secret.expose(), &mut wrapped)
        .map_err(Error::Token)?;
    if n != secret.len() + KEY_WRAP_OVERHEAD {
        return Err(failed(ckr::FUNCTION_FAILED));
    }
    wrapped.truncate(n);
    Ok(wrapped)
}

/// Unwraps `wrapped` (whose length step 0 checked) into a wiped buffer; a length other than
/// 8 bytes less is the token's failure (and the partial result is wiped).
fn token_unwrap<T: Token>(token: &mut T, key: &KeyId, wrapped: &[u8]) -> Result<WrapSecret, Error> {
    WrapSecret::fill_with(|buf| {
        let n = token.unwrap_aes_kw(key, wrapped, buf)?;
        if Some(n) != wrapped.len().checked_sub(KEY_WRAP_OVERHEAD) {
            return Err(TokenError::new(
                TokenFunction::UnwrapKey,
                ckr::WRAPPED_KEY_INVALID,
            ));
        }
        Ok(n)
    })
    .map_err(Error::Token)
}

fn outcome<T>(result: &Result<T, Error>) -> Outcome {
    match result {
        Ok(_) => Outcome::Success,
        Err(e) => Outcome::Refused(*e),
    }
}

fn denied(denial: Denial) -> Error {
    match denial {
        Denial::Denied => Error::PolicyDenied,
        Denial::RateLimited { retry_after_ms } => Error::RateLimited { retry_after_ms },
    }
}
