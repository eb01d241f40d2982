//! The audit hash chain: every key use, refusal, unlock and lock, recorded before the result
//! is released.
//!
//! Each [`AuditRecord`] holds the previous record's hash; its own hash is
//!
//! ```text
//! SHA-256( prev_hash ‖ postcard(sequence, time_ms, client, operation, key, input_digest, outcome) )
//! ```
//!
//! so altering, dropping or reordering a record breaks every later link. The chain proves
//! integrity only up to a head kept elsewhere ([`AuditHead`], from [`crate::wire::Request::AuditHead`]):
//! whoever can rewrite the whole file can rebuild the chain, and a truncated tail looks like
//! a shorter chain until it is compared with such an anchor.
//!
//! The core writes through an [`AuditSink`] and releases a result only once the sink has
//! accepted its records; if it cannot, the caller gets
//! [`Error::AuditUnavailable`] instead (fail closed).
//!
//! A key use that passes the checks takes two records: [`Outcome::Admitted`] before the
//! token is asked (the *use* record: who, which key, what for, the input's digest), and the
//! outcome after it. The use record must be durable before the result is released; the
//! outcome record must be written (it survives a crash of the process) and becomes durable
//! with the next sync. So the sync overlaps the token operation instead of following it, and
//! a power cut can cost at most the outcome of the last uses, never the fact of a use. A
//! chain whose use record has no outcome after it ([`AuditRecord::concludes`]) shows a use
//! whose end was not recorded: the process or the machine stopped while the token worked.
//! [`verify_chain`] and [`ChainVerifier`] are pure and shared with the host's
//! `etee audit verify`.
//!
//! What is recorded as the input: the SHA-256 of the digest to sign or of the blob to
//! decrypt, enough to match a record to a message without keeping the message. For `Unlock`
//! the input digest is all zeros: a hash of a short PIN would give the PIN away.
//!
//! Key wrap: for `UnwrapSecret` it is the SHA-256 of the wrapped blob, the fingerprint of
//! the stored object. For `WrapSecret` it is the SHA-256 of the wrapped *output* (the
//! record is written after the token operation), the same fingerprint, so that a wrap and
//! every later unwrap of its blob carry the same digest; all zeros when the wrap was
//! refused or failed. Never a hash of the secret itself: the log must not be able to
//! confirm a guess of a key.

use crate::config::DIGEST_LEN;
use crate::id::{ClientId, KeyId};
use crate::token::TokenFunction;
use crate::wire::Error;
use core::borrow::Borrow;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A SHA-256 value.
pub type Hash = [u8; DIGEST_LEN];

/// What was asked. The postcard encoding is the variant index: append only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Operation {
    Unlock,
    Lock,
    SignPssSha256,
    DecryptPkcs1v15,
    /// The administrator reset the wrong-PIN counter.
    PinReset,
    /// A secret wrapped with a wrapping key. The record's `input_digest` is the SHA-256 of
    /// the wrapped output (zeros if none came out), not of the secret: see the module doc.
    WrapSecret,
    /// A wrapped secret unwrapped; `input_digest` is the SHA-256 of the wrapped blob.
    UnwrapSecret,
    /// The token's security officer set the user PIN (`etee hsm init-pin`); the wrong-PIN
    /// count starts again, as after [`Operation::PinReset`].
    UserPinSet,
    /// An administrator destroyed a key and the token's other objects with its id
    /// (`etee keys destroy`): a use record (`Admitted`) made durable before the token is
    /// asked, then the outcome.
    KeyDestroy,
    /// A client asked what the token says about a key's custody (`DescribeKey`): one
    /// record, with the outcome; nothing used.
    DescribeKey,
}

/// What came of it. The postcard encoding is the variant index: append only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Outcome {
    /// The operation succeeded; its result is released once this record is stored.
    Success,
    /// Refused or failed. For a failed decryption this holds the token's detailed error,
    /// which the client never sees (it gets the uniform `DecryptFailed`).
    Refused(Error),
    /// The request passed the checks and goes to the token: the use record, written (and
    /// made durable while the token works) before the token is asked. Its outcome follows
    /// in a later record ([`AuditRecord::concludes`]). For `WrapSecret` the input digest
    /// of the use record is all zeros (the wrapped output does not exist yet).
    Admitted,
}

/// One entry of the chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// 0 for the first record, then +1 each.
    pub sequence: u64,
    /// The caller's `now`, in milliseconds (the core has no clock).
    pub time_ms: u64,
    /// The client for key operations; `None` for unlock, lock and resets.
    pub client: Option<ClientId>,
    pub operation: Operation,
    pub key: Option<KeyId>,
    /// SHA-256 of the operation's input (zeros where there is none, or it is a PIN).
    pub input_digest: Hash,
    pub outcome: Outcome,
    /// Hash of the previous record ([`AuditHead::GENESIS`]'s hash before the first).
    pub prev_hash: Hash,
}

/// The hashed fields, in the order of [`AuditRecord`] (so a record's encoding is this
/// encoding followed by the 32 bytes of `prev_hash`).
#[derive(Serialize)]
struct HashedFields<'a> {
    sequence: u64,
    time_ms: u64,
    client: &'a Option<ClientId>,
    operation: Operation,
    key: &'a Option<KeyId>,
    input_digest: &'a Hash,
    outcome: Outcome,
}

impl AuditRecord {
    /// The budget use this record stands for, as (client, key, use): a key use admitted by
    /// the policy (its use record, [`Outcome::Admitted`]), or a question about a key
    /// (`DescribeKey`, use `None`: any rule for the key answers it) that passed the policy
    /// and its budget (answered, or failed at the token); `None` for any other record.
    /// What [`crate::Policy::replay`] takes after a restart.
    pub fn budget_use(&self) -> Option<(&ClientId, &KeyId, Option<crate::policy::KeyUse>)> {
        use crate::policy::KeyUse;
        let usage = match (self.operation, self.outcome) {
            (Operation::SignPssSha256, Outcome::Admitted) => Some(KeyUse::Sign),
            (Operation::DecryptPkcs1v15, Outcome::Admitted) => Some(KeyUse::Decrypt),
            (Operation::WrapSecret, Outcome::Admitted) => Some(KeyUse::Wrap),
            (Operation::UnwrapSecret, Outcome::Admitted) => Some(KeyUse::Unwrap),
            (Operation::DescribeKey, Outcome::Success | Outcome::Refused(Error::Token(_))) => None,
            _ => return None,
        };
        match (&self.client, &self.key) {
            (Some(client), Some(key)) => Some((client, key, usage)),
            _ => None,
        }
    }

    /// This record's hash: SHA-256(prev_hash ‖ postcard encoding of the other fields).
    pub fn hash(&self) -> Hash {
        let mut hasher = Sha256::new();
        hasher.update(self.prev_hash);
        let fields = HashedFields {
            sequence: self.sequence,
            time_ms: self.time_ms,
            client: &self.client,
            operation: self.operation,
            key: &self.key,
            input_digest: &self.input_digest,
            outcome: self.outcome,
        };
        // Cannot fail: the flavor takes every byte, and these field types always serialize.
        let _ = postcard::serialize_with_flavor(&fields, HashFlavor(&mut hasher));
        hasher.finalize().into()
    }

    /// Postcard encoding, at most [`crate::config::MAX_AUDIT_RECORD_LEN`] bytes; `None` if
    /// `out` is too small. For sinks that store records as bytes.
    pub fn encode<'a>(&self, out: &'a mut [u8]) -> Option<&'a [u8]> {
        postcard::to_slice(self, out).ok().map(|b| &*b)
    }

    /// Whether this record is the outcome of the use record `admitted` (an
    /// [`Outcome::Admitted`] record before it): same client, operation and key, and the
    /// same input digest except for `WrapSecret`, whose outcome carries the wrapped
    /// output's digest.
    pub fn concludes(&self, admitted: &AuditRecord) -> bool {
        admitted.outcome == Outcome::Admitted
            && self.outcome != Outcome::Admitted
            && self.sequence > admitted.sequence
            && self.client == admitted.client
            && self.operation == admitted.operation
            && self.key == admitted.key
            && (self.operation == Operation::WrapSecret
                || self.input_digest == admitted.input_digest)
    }

    /// Decodes a record that takes all of `bytes`.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        match postcard::take_from_bytes(bytes) {
            Ok((record, [])) => Some(record),
            _ => None,
        }
    }
}

/// Feeds postcard's output straight into SHA-256 (no buffer, no size limit).
struct HashFlavor<'a>(&'a mut Sha256);

impl postcard::ser_flavors::Flavor for HashFlavor<'_> {
    type Output = ();

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.update(data);
        Ok(())
    }

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.update([data]);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Where the chain stands: the next sequence number and the last record's hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AuditHead {
    /// Records so far (the next record's sequence).
    pub next_sequence: u64,
    /// Hash of the last record; all zeros before the first.
    pub hash: Hash,
}

impl AuditHead {
    /// The head of an empty chain.
    pub const GENESIS: Self = Self {
        next_sequence: 0,
        hash: [0; DIGEST_LEN],
    };

    /// The head after `record` (which must follow this head).
    pub fn after(record: &AuditRecord) -> Self {
        Self {
            next_sequence: record.sequence.saturating_add(1),
            hash: record.hash(),
        }
    }

    /// The head as an anchor to keep outside the chain, `NEXT_SEQUENCE:HASH` (decimal,
    /// then 64 lowercase hex digits): what `etee audit verify` prints and checks with
    /// `--expect-head`, the appliance's `/v1/audit` returns and logs.
    pub fn anchor(&self) -> Anchor<'_> {
        Anchor(self)
    }

    /// The head of an anchor ([`Self::anchor`]); `None` for anything else.
    pub fn from_anchor(text: &str) -> Option<Self> {
        let (records, hex) = text.trim().split_once(':')?;
        let next_sequence = records.parse().ok()?;
        let hex = hex.as_bytes();
        if hex.len() != 2 * DIGEST_LEN {
            return None;
        }
        let mut hash = [0u8; DIGEST_LEN];
        for (byte, pair) in hash.iter_mut().zip(hex.chunks_exact(2)) {
            let digit = |c: u8| (c as char).to_digit(16);
            *byte = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
        }
        Some(Self {
            next_sequence,
            hash,
        })
    }
}

/// [`AuditHead::anchor`]: displays as `NEXT_SEQUENCE:HASH`.
pub struct Anchor<'a>(&'a AuditHead);

impl core::fmt::Display for Anchor<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}:", self.0.next_sequence)?;
        self.0.hash.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// Counts the consecutive failed logins at the end of a chain (since the last successful
/// unlock or administrator reset), to restore the wrong-PIN counter after a restart.
///
/// A login try is recorded before the PIN reaches the token (an `Unlock` admitted) and
/// counted as a failure from then on, until its outcome says it succeeded: a try whose
/// outcome was never recorded (a crash, a full disk) counts. Chains written before the
/// tries were recorded have only the outcomes; a refused login is counted then. A
/// segment's checkpoint keeps both ([`PinHistory::checkpoint_byte`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PinHistory {
    failures: u8,
    /// An admitted try, counted, whose outcome has not been seen yet.
    pending: bool,
}

impl PinHistory {
    pub const fn new() -> Self {
        Self {
            failures: 0,
            pending: false,
        }
    }

    /// A count that continues from a segment's checkpoint ([`Self::checkpoint_byte`]).
    pub const fn continuing(checkpoint: u8) -> Self {
        Self {
            failures: checkpoint & 0x7f,
            pending: checkpoint & 0x80 != 0,
        }
    }

    /// The count as a segment's checkpoint keeps it: the failures (at most 127: far past
    /// any lock-out) and, in the high bit, a try whose outcome is still to come. A
    /// checkpoint written before tries were recorded has the bit clear.
    pub const fn checkpoint_byte(&self) -> u8 {
        let failures = if self.failures > 0x7f {
            0x7f
        } else {
            self.failures
        };
        failures | if self.pending { 0x80 } else { 0 }
    }

    /// Takes the next record of the chain into account.
    pub fn observe(&mut self, record: &AuditRecord) {
        let pending = core::mem::replace(&mut self.pending, false);
        match (record.operation, record.outcome) {
            (Operation::Unlock, Outcome::Admitted) => {
                self.failures = self.failures.saturating_add(1);
                self.pending = true;
            }
            (Operation::Unlock | Operation::PinReset | Operation::UserPinSet, Outcome::Success) => {
                self.failures = 0;
            }
            // Every failed C_Login counts (see `lock`), once: at its admission when it has
            // one; a refusal without a login does not.
            (Operation::Unlock, Outcome::Refused(Error::PinIncorrect { .. })) if !pending => {
                self.failures = self.failures.saturating_add(1)
            }
            (Operation::Unlock, Outcome::Refused(Error::Token(e)))
                if !pending && e.function == TokenFunction::Login =>
            {
                self.failures = self.failures.saturating_add(1)
            }
            // The admitted try did not reach the token after all (no session...): uncounted.
            (Operation::Unlock, Outcome::Refused(Error::Token(e)))
                if pending && e.function != TokenFunction::Login =>
            {
                self.failures = self.failures.saturating_sub(1)
            }
            _ => {}
        }
    }

    /// Consecutive failed logins so far.
    pub const fn failures(&self) -> u8 {
        self.failures
    }
}

/// Why a sink could not store a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuditError {
    /// No room left.
    Full,
    /// The storage failed (I/O error, device gone).
    Storage,
}

/// Durable storage for the chain.
pub trait AuditSink {
    /// Stores `record` after the previous one. Returns `Ok` only once the record is durable
    /// (e.g. written and `fsync`ed), and stores either all of it or nothing: the core
    /// releases the operation's result on `Ok` alone.
    fn append(&mut self, record: &AuditRecord) -> Result<(), AuditError>;

    /// Stores `record` after the previous one without waiting for it to be durable, and
    /// returns a mark: the record is durable once [`AuditSink::wait_durable`] (or the
    /// sink's own handle for waiting outside the core) returned `Ok` for that mark. A sink
    /// that can group several records into one sync (`fsync` once for the records of
    /// concurrent callers) overrides both; the default is [`AuditSink::append`], durable
    /// at once.
    fn append_deferred(&mut self, record: &AuditRecord) -> Result<u64, AuditError> {
        self.append(record).map(|()| 0)
    }

    /// Waits until every record up to `mark` is durable.
    fn wait_durable(&self, mark: u64) -> Result<(), AuditError> {
        let _ = mark;
        Ok(())
    }
}

/// Where and why a chain fails verification. Records before `sequence` are intact.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainBreak {
    pub sequence: u64,
    pub reason: BreakReason,
}

/// The kinds of chain breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakReason {
    /// The record in this position carries another sequence number: a record is missing,
    /// duplicated or out of order.
    SequenceMismatch { found: u64 },
    /// This record's hash is not what the next record (or the expected head) holds as its
    /// predecessor: the record, or that link, was altered.
    Altered,
    /// The first record does not link to the starting head.
    Unlinked,
    /// The chain ends before the expected head: records from here on are missing.
    Truncated,
    /// The chain goes on past the expected head.
    BeyondHead,
}

/// Checks records one at a time (for tooling that streams a file).
#[derive(Clone, Debug)]
pub struct ChainVerifier {
    start: AuditHead,
    head: AuditHead,
}

impl ChainVerifier {
    /// Verifies a chain that continues from `start` ([`AuditHead::GENESIS`] for a whole chain,
    /// or a trusted checkpoint for a segment).
    pub const fn new(start: AuditHead) -> Self {
        Self { start, head: start }
    }

    /// Takes the next record.
    pub fn push(&mut self, record: &AuditRecord) -> Result<(), ChainBreak> {
        let expected = self.head.next_sequence;
        if record.sequence != expected {
            return Err(ChainBreak {
                sequence: expected,
                reason: BreakReason::SequenceMismatch {
                    found: record.sequence,
                },
            });
        }
        if record.prev_hash != self.head.hash {
            return Err(if expected == self.start.next_sequence {
                ChainBreak {
                    sequence: expected,
                    reason: BreakReason::Unlinked,
                }
            } else {
                ChainBreak {
                    sequence: expected - 1,
                    reason: BreakReason::Altered,
                }
            });
        }
        self.head = AuditHead::after(record);
        Ok(())
    }

    /// Where the records so far lead.
    pub const fn head(&self) -> AuditHead {
        self.head
    }

    /// Records taken so far.
    pub const fn count(&self) -> u64 {
        self.head.next_sequence - self.start.next_sequence
    }

    /// Checks that the records end exactly at `expected` (an anchor kept outside the log).
    pub fn check_head(&self, expected: &AuditHead) -> Result<(), ChainBreak> {
        let ours = self.head.next_sequence;
        let fail = |sequence, reason| Err(ChainBreak { sequence, reason });
        if ours < expected.next_sequence {
            fail(ours, BreakReason::Truncated)
        } else if ours > expected.next_sequence {
            fail(expected.next_sequence, BreakReason::BeyondHead)
        } else if self.head.hash != expected.hash {
            match ours.checked_sub(1) {
                Some(last) if ours > self.start.next_sequence => fail(last, BreakReason::Altered),
                _ => fail(ours, BreakReason::Unlinked),
            }
        } else {
            Ok(())
        }
    }
}

/// Verifies a whole chain from the genesis head; returns the number of records and the head.
pub fn verify_chain<I>(records: I) -> Result<(u64, AuditHead), ChainBreak>
where
    I: IntoIterator,
    I::Item: Borrow<AuditRecord>,
{
    let mut verifier = ChainVerifier::new(AuditHead::GENESIS);
    for record in records {
        verifier.push(record.borrow())?;
    }
    Ok((verifier.count(), verifier.head()))
}

/// Verifies a whole chain and that it ends exactly at `expected`; returns the record count.
pub fn verify_chain_to<I>(records: I, expected: &AuditHead) -> Result<u64, ChainBreak>
where
    I: IntoIterator,
    I::Item: Borrow<AuditRecord>,
{
    let mut verifier = ChainVerifier::new(AuditHead::GENESIS);
    for record in records {
        verifier.push(record.borrow())?;
    }
    verifier.check_head(expected)?;
    Ok(verifier.count())
}

/// SHA-256 of `data` (the input digest of a record).
pub fn sha256(data: &[u8]) -> Hash {
    Sha256::digest(data).into()
}
