//! Unsealing in one streaming pass, with the official verdict (spec §1.4–§1.6).
//!
//! The outer content is hashed while the middle layer is parsed out of it; the ciphertext
//! is decrypted straight into the inner parser, whose content goes to the caller's writer
//! as it is verified by hashing. The SignerInfos come after the content in BER, so the
//! verdict is known only at the end: **content written to the writer is unverified until
//! [`Unsealed::verdict`] is clean**. [`unseal_to_vec`] and the CLI release content only then.
//!
//! Facts are gathered per layer and the verdict is assembled at the end in the official
//! order: an outer structural fatal hides everything else; outer errors and the
//! signing-time warning come before a middle fatal; decryption errors before an inner
//! fatal; inner errors last.

use super::algorithms::{algorithm_identifier, content_cipher, Digest};
use super::hashing::OffloadHasher;
use super::signer::{self, SignatureCheck, SignerId, SignerInfo};
use super::MAX_STRUCTURE;
use crate::ber::slice::parse_exact;
use crate::ber::stream::{BerStream, ContentFault, Header, ReadError};
use crate::ber::{tag, BerError, BerErrorKind};
use crate::cert::{key_usage, Certificate, Validity};
use crate::keys::{KeyError, KeyId, KeyRing};
use crate::oid;
use crate::revocation::{Evidence, RevocationPolicy};
use crate::trust::{PathCheck, TrustAnchors};
use crate::verdict::{Error as E, Fatal, Verdict, Warning};
use openssl::hash::{Hasher, MessageDigest};
use openssl::pkey::{PKey, Public};
use openssl::symm::{Crypter, Mode};
use std::fmt;
use std::io::{self, Read, Write};
use zeroize::Zeroizing;

/// The most keys one message makes us try to unwrap its content key with (each try is a
/// private-key operation). More than any real key ring needs: an institution's current
/// and old ETK keys.
pub const MAX_KEY_ATTEMPTS: usize = 8;

const OUTER: u8 = 0;
const MIDDLE: u8 = 1;
const INNER: u8 = 2;

/// A signer the receiver expects; for WEB_AUTHN messages also the source of the public key.
#[derive(Clone)]
pub enum ExpectedSigner {
    Certificate(Certificate),
    KeyId {
        ski: Vec<u8>,
        public_key: PKey<Public>,
    },
}

impl fmt::Debug for ExpectedSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Certificate(c) => write!(f, "ExpectedSigner({})", c.subject_string()),
            Self::KeyId { ski, .. } => write!(f, "ExpectedSigner(key id {})", hex::encode(ski)),
        }
    }
}

/// What the unsealer checks against; the defaults are the official library's.
#[derive(Clone)]
pub struct UnsealOptions {
    pub anchors: TrustAnchors,
    pub expected_signers: Vec<ExpectedSigner>,
    /// The KGSS key for an unknown-recipient message; when set, only the KEKRecipientInfo
    /// is used (as the official library does).
    pub kek: Option<Zeroizing<Vec<u8>>>,
    /// Evaluation time, unix seconds; the current time when `None`.
    pub at: Option<i64>,
    /// SIGNING_TIME_EXPIRATION: how old a signing time may be (official default 5 min).
    pub signing_time_expiration: i64,
    /// CLOCK_SKEW allowed on both sides of the window (official default 300 s).
    pub clock_skew: i64,
    /// SIGNING_TIME_TRUST_IMPLICIT: skip the signing-time window check.
    pub signing_time_trust_implicit: bool,
    /// TSA_TRUST_STORE: anchors for signature timestamp authorities (none by default, as
    /// in the official library, so that timestamps report TIMESTAMPTOKEN_TRUST_FAILED).
    pub tsa_anchors: TrustAnchors,
}

impl Default for UnsealOptions {
    fn default() -> Self {
        Self {
            anchors: TrustAnchors::default(),
            expected_signers: Vec::new(),
            kek: None,
            at: None,
            signing_time_expiration: 300,
            clock_skew: 300,
            signing_time_trust_implicit: false,
            tsa_anchors: TrustAnchors::default(),
        }
    }
}

impl fmt::Debug for UnsealOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnsealOptions")
            .field("anchors", &self.anchors.certs().len())
            .field("expected_signers", &self.expected_signers)
            .field("kek", &self.kek.as_ref().map(|_| "<secret>"))
            .field("at", &self.at)
            .finish()
    }
}

/// Who sealed the message: the outer (authentication) signer.
#[derive(Clone, Debug)]
pub struct Sender {
    pub certificate: Option<Certificate>,
    /// subjectKeyIdentifier for WEB_AUTHN signers.
    pub key_id: Option<Vec<u8>>,
}

impl Sender {
    /// The identifiers in the sender's certificate (spec §3.3): type, value, application id.
    pub fn identities(&self) -> Vec<crate::identity::Identity> {
        self.certificate
            .as_ref()
            .map(crate::identity::identities)
            .unwrap_or_default()
    }
}

/// Which key opened the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpenedWith {
    Key(KeyId),
    Kek,
}

/// The outcome of unsealing.
#[derive(Clone, Debug)]
pub struct Unsealed {
    pub verdict: Verdict,
    pub sender: Option<Sender>,
    /// The outer signing time, when present.
    pub signing_time: Option<i64>,
    /// The time of the outer signature's timestamp token, when one is present and holds
    /// (its imprint, its signature, its authority chaining to `tsa_anchors`).
    pub timestamp: Option<i64>,
    pub opened_with: Option<OpenedWith>,
    /// Bytes of content written to the writer (unverified unless the verdict is clean).
    pub content_len: u64,
    pub content_sha256: [u8; 32],
    /// The outer SignerInfo's signature value, when there is one. It identifies a message
    /// whatever its encoding (BER allows many for the same message, and trailing bytes are
    /// ignored): what a replay check should remember, not the bytes as received.
    pub outer_signature: Option<Vec<u8>>,
}

/// Unsealing failed for a reason outside the message: reading input, writing output, or a
/// private key that could not be used at all.
#[derive(Debug, thiserror::Error)]
pub enum UnsealError {
    #[error("reading the message: {0}")]
    Input(io::Error),
    #[error("writing the content: {0}")]
    Output(io::Error),
    /// The key provider could not try the decryption (unreachable, refused by policy, the
    /// key gone): nothing is known about the message. Never a failed decryption, which
    /// carries on with a random key as every other failure of the message does.
    #[error("the private key could not be used: {0}")]
    Key(KeyError),
}

/// Unseals a message held in memory; content is returned only with a clean verdict. The
/// error is a private key that could not be used ([`UnsealError::Key`]): reading a slice
/// and writing a vector do not fail.
pub fn unseal_to_vec(
    message: &[u8],
    keys: &KeyRing,
    opts: &UnsealOptions,
) -> Result<(Unsealed, Option<Vec<u8>>), UnsealError> {
    // Content that is not released (no clean verdict) is wiped when dropped. The content
    // is shorter than the message that carries it: room for it all from the start, so
    // that growing leaves no copy of it behind.
    let mut content = Zeroizing::new(Vec::with_capacity(message.len()));
    let result = unseal(message, &mut *content, keys, opts)?;
    let clean = result.verdict.is_clean();
    Ok((result, clean.then(|| std::mem::take(&mut *content))))
}

/// Why processing of a layer stopped.
enum Stop {
    Fatal(Fatal),
    Input(io::Error),
    Output(io::Error),
    Key(KeyError),
}

/// Maps a read failure at `layer` to a fatal, unless it is a real I/O failure.
fn classify(e: ReadError, layer: u8) -> Stop {
    match e {
        ReadError::Ber(_) => Stop::Fatal(structure_fatal(layer)),
        ReadError::Io(e) => classify_io(e),
    }
}

fn classify_io(e: io::Error) -> Stop {
    if let Some(fault) = e.get_ref().and_then(|i| i.downcast_ref::<ContentFault>()) {
        return Stop::Fatal(structure_fatal(fault.layer));
    }
    if e.get_ref().is_some_and(|i| i.is::<CipherFault>()) {
        // A broken ciphertext surfaces inside the inner parser; it is the middle layer's fault.
        return Stop::Fatal(Fatal::ENVELOPED_DATA_STRUCTURE_INCORRECT);
    }
    Stop::Input(e)
}

fn structure_fatal(layer: u8) -> Fatal {
    match layer {
        OUTER => Fatal::OUTER_SIGNED_DATA_STRUCTURE_INCORRECT,
        MIDDLE => Fatal::ENVELOPED_DATA_STRUCTURE_INCORRECT,
        _ => Fatal::INNER_SIGNED_DATA_STRUCTURE_INCORRECT,
    }
}

/// What one SignedData layer showed.
#[derive(Default)]
struct SignedFacts {
    econtent_type: Vec<u8>,
    digests: Vec<(Digest, Vec<u8>)>,
    certs: Vec<Certificate>,
    signer: Option<SignerInfo>,
}

/// Everything gathered during the pass.
#[derive(Default)]
struct Facts {
    outer_fatal: Option<Fatal>,
    outer: SignedFacts,
    middle_fatal: Option<Fatal>,
    decryption_errors: Vec<E>,
    opened_with: Option<OpenedWith>,
    inner_fatal: Option<Fatal>,
    inner: SignedFacts,
    content_len: u64,
    content_sha256: [u8; 32],
}

/// Unseals `input`, writing the (unverified) content to `out`; see the module docs.
pub fn unseal<R: Read, W: Write>(
    input: R,
    out: W,
    keys: &KeyRing,
    opts: &UnsealOptions,
) -> Result<Unsealed, UnsealError> {
    let at = opts.at.unwrap_or_else(crate::unix_now);
    let mut facts = Facts::default();
    let mut out = out;
    match run(input, &mut out, keys, opts, &mut facts) {
        Ok(()) => {}
        Err(Stop::Fatal(f)) => {
            facts.outer_fatal.get_or_insert(f);
        }
        Err(Stop::Input(e)) => return Err(UnsealError::Input(e)),
        Err(Stop::Output(e)) => return Err(UnsealError::Output(e)),
        Err(Stop::Key(e)) => return Err(UnsealError::Key(e)),
    }
    out.flush().map_err(UnsealError::Output)?;
    Ok(assemble(facts, opts, at))
}

/// The outer pass: header, content (middle and inner within), tail.
fn run<R: Read, W: Write>(
    input: R,
    out: &mut W,
    keys: &KeyRing,
    opts: &UnsealOptions,
    facts: &mut Facts,
) -> Result<(), Stop> {
    let mut s0 = BerStream::new(input);
    let head = signed_data_head(&mut s0).map_err(|e| classify(e, OUTER))?;
    facts.outer.econtent_type = head.econtent_type.clone();
    let Some(content_header) = head.content else {
        return Err(Stop::Fatal(Fatal::OUTER_SIGNED_DATA_CONTENT_MISSING));
    };
    {
        let octets = s0.octet_stream(content_header, OUTER);
        let mut hashing = HashingReader {
            inner: octets,
            hasher: OffloadHasher::new(&head.digests),
        };
        let mut s1 = BerStream::new(&mut hashing);
        match middle(&mut s1, out, keys, opts, facts) {
            Ok(()) => {}
            Err(Stop::Fatal(f)) if f == Fatal::OUTER_SIGNED_DATA_STRUCTURE_INCORRECT => {
                return Err(Stop::Fatal(f))
            }
            Err(Stop::Fatal(f)) => {
                facts.middle_fatal.get_or_insert(f);
            }
            Err(other) => return Err(other),
        }
        drop(s1);
        // The rest of the outer content still has to be hashed.
        if let Err(e) = io::copy(&mut hashing, &mut io::sink()) {
            return Err(match classify_io(e) {
                Stop::Fatal(_) => Stop::Fatal(Fatal::OUTER_SIGNED_DATA_STRUCTURE_INCORRECT),
                other => other,
            });
        }
        facts.outer.digests = hashing.hasher.finish();
    }
    let tail = signed_data_tail(&mut s0, &head).map_err(|e| classify(e, OUTER))?;
    let (certs, signer) = tail_facts(&tail, OUTER)?;
    facts.outer.certs = certs;
    facts.outer.signer = Some(signer);
    Ok(())
}

/// The middle pass: EnvelopedData, key recovery, decryption into the inner pass.
fn middle<R: Read, W: Write>(
    s1: &mut BerStream<R>,
    out: &mut W,
    keys: &KeyRing,
    opts: &UnsealOptions,
    facts: &mut Facts,
) -> Result<(), Stop> {
    let env = enveloped_head(s1).map_err(|e| classify(e, MIDDLE))?;
    let cek = recover_key(&env, keys, opts, facts)?;
    let Some(cipher) = content_cipher(&env.content_alg) else {
        // Nothing we can decrypt with: the official library fails here too.
        return Err(Stop::Fatal(Fatal::ENVELOPED_DATA_STRUCTURE_INCORRECT));
    };
    // The IV must be exactly one the cipher takes: OpenSSL asserts on a short one.
    let iv = env.iv.clone().unwrap_or_default();
    if Some(iv.len()) != cipher.iv_len() {
        return Err(Stop::Fatal(Fatal::ENVELOPED_DATA_STRUCTURE_INCORRECT));
    }
    let octets = s1.octet_stream(env.encrypted_content, MIDDLE);
    // Cut or zero-padded to the cipher's length in a new buffer: resizing `cek` could
    // move it and leave the old copy unwiped.
    let mut key = Zeroizing::new(vec![0u8; cipher.key_len()]);
    let n = cek.len().min(key.len());
    key[..n].copy_from_slice(&cek[..n]);
    drop(cek);
    let crypter = match Crypter::new(cipher, Mode::Decrypt, &key, Some(&iv)) {
        Ok(c) => c,
        Err(_) => return Err(Stop::Fatal(Fatal::ENVELOPED_DATA_STRUCTURE_INCORRECT)),
    };
    let mut dec = Decryptor::new(octets, crypter);
    let inner_result = {
        let mut s2 = BerStream::new(&mut dec);
        inner(&mut s2, out, facts)
    };
    match inner_result {
        Ok(()) => {}
        Err(Stop::Fatal(f))
            if f == Fatal::INNER_SIGNED_DATA_STRUCTURE_INCORRECT && dec.padding_failed =>
        {
            facts
                .decryption_errors
                .push(E::DECRYPTION_SYMMETRIC_KEY_ALGORITHM_PADDING_UNAUTHORIZED);
            facts.inner_fatal = Some(f);
        }
        Err(Stop::Fatal(f))
            if f == Fatal::INNER_SIGNED_DATA_STRUCTURE_INCORRECT || is_inner_fatal(f) =>
        {
            facts.inner_fatal = Some(f);
        }
        Err(other) => return Err(other),
    }
    // Finish the ciphertext (padding is checked at its end) and the middle framing.
    if let Err(e) = io::copy(&mut dec, &mut io::sink()) {
        match classify_io(e) {
            Stop::Fatal(Fatal::ENVELOPED_DATA_STRUCTURE_INCORRECT) if dec.padding_failed => {
                facts
                    .decryption_errors
                    .push(E::DECRYPTION_SYMMETRIC_KEY_ALGORITHM_PADDING_UNAUTHORIZED);
            }
            other => return Err(other),
        }
    }
    drop(dec);
    enveloped_tail(s1, &env).map_err(|e| classify(e, MIDDLE))
}

fn is_inner_fatal(f: Fatal) -> bool {
    matches!(
        f,
        Fatal::INNER_SIGNED_DATA_CONTENT_MISSING
            | Fatal::MESSAGE_INNER_SIGNED_PART_HAS_NO_SIGNER_INFORMATION
            | Fatal::MESSAGE_INNER_SIGNED_PART_HAS_MORE_THAN_ONE_SIGNER_INFORMATION
            | Fatal::MESSAGE_INNER_SIGNED_PART_CONTAINS_INCORRECTLY_ENCODED_CERTIFICATES_SET
    )
}

/// The inner pass: SignedData whose content is the plaintext.
fn inner<R: Read, W: Write>(
    s2: &mut BerStream<R>,
    out: &mut W,
    facts: &mut Facts,
) -> Result<(), Stop> {
    let head = signed_data_head(s2).map_err(|e| classify(e, INNER))?;
    facts.inner.econtent_type = head.econtent_type.clone();
    let Some(content_header) = head.content else {
        return Err(Stop::Fatal(Fatal::INNER_SIGNED_DATA_CONTENT_MISSING));
    };
    {
        let mut octets = s2.octet_stream(content_header, INNER);
        let mut hasher = OffloadHasher::new(&head.digests);
        let mut report =
            Hasher::new(MessageDigest::sha256()).map_err(|e| Stop::Input(io::Error::other(e)))?;
        // Plaintext: wiped when dropped.
        let mut buf = super::PlainBuf::new(32 * 1024);
        loop {
            let n = match octets.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // A failed read may have written some of the buffer.
                    buf.filled(usize::MAX);
                    return Err(classify_io(e));
                }
            };
            buf.filled(n);
            hasher.update(&buf[..n]);
            report
                .update(&buf[..n])
                .map_err(|e| Stop::Input(io::Error::other(e)))?;
            out.write_all(&buf[..n]).map_err(Stop::Output)?;
            facts.content_len += n as u64;
        }
        facts.inner.digests = hasher.finish();
        if let Ok(d) = report.finish() {
            facts.content_sha256.copy_from_slice(&d);
        }
    }
    let tail = signed_data_tail(s2, &head).map_err(|e| classify(e, INNER))?;
    let (certs, signer) = tail_facts(&tail, INNER)?;
    facts.inner.certs = certs;
    facts.inner.signer = Some(signer);
    Ok(())
}

// ---- structure -------------------------------------------------------------------------

struct SignedDataHead {
    ci: Header,
    explicit: Header,
    sd: Header,
    digests: Vec<Digest>,
    eci: Header,
    econtent_type: Vec<u8>,
    econtent_explicit: Option<Header>,
    content: Option<Header>,
}

fn read_oid<R: Read>(s: &mut BerStream<R>) -> Result<Vec<u8>, ReadError> {
    let h = s.expect_header(tag::OID)?;
    let crate::ber::Length::Definite(n) = h.len else {
        return Err(ReadError::Ber(BerError::new(
            h.offset,
            BerErrorKind::BadValue("OID"),
        )));
    };
    s.read_bytes(n, 64)
}

fn wrong_type(at: u64) -> ReadError {
    ReadError::Ber(BerError::new(at, BerErrorKind::BadValue("content type")))
}

/// Reads a ContentInfo(SignedData) up to the start of its eContent octets.
fn signed_data_head<R: Read>(s: &mut BerStream<R>) -> Result<SignedDataHead, ReadError> {
    let ci = s.expect_header(tag::SEQUENCE)?;
    let at = s.pos();
    if read_oid(s)? != oid::SIGNED_DATA {
        return Err(wrong_type(at));
    }
    let explicit = s.expect_header(tag::ctx_cons(0))?;
    let sd = s.expect_header(tag::SEQUENCE)?;
    let v = s.expect_header(tag::INTEGER)?;
    s.read_bytes(v.end().unwrap_or(0).saturating_sub(s.pos()), 8)?;
    let algs = s.read_element(MAX_STRUCTURE)?;
    let algs = parse_exact(&algs)?.expect(tag::SET)?;
    let mut digests = Vec::new();
    for a in algs.children() {
        if let Some(d) = Digest::from_oid(algorithm_identifier(&a?)?.0) {
            digests.push(d);
        }
    }
    let eci = s.expect_header(tag::SEQUENCE)?;
    let econtent_type = read_oid(s)?;
    let (econtent_explicit, content) = if s.has_more_in(&eci)? {
        let x = s.expect_header(tag::ctx_cons(0))?;
        let h = s.read_header()?;
        if h.tag != tag::OCTET_STRING && h.tag != tag::OCTET_STRING_CONSTRUCTED {
            return Err(ReadError::Ber(BerError::new(
                h.offset,
                BerErrorKind::UnexpectedTag {
                    expected: tag::OCTET_STRING,
                    found: h.tag,
                },
            )));
        }
        (Some(x), Some(h))
    } else {
        (None, None)
    };
    Ok(SignedDataHead {
        ci,
        explicit,
        sd,
        digests,
        eci,
        econtent_type,
        econtent_explicit,
        content,
    })
}

struct SignedDataTail {
    certs: Option<Vec<u8>>,
    signer_infos: Vec<u8>,
}

/// Reads what follows the eContent: certificates, CRLs, SignerInfos, and the closings.
fn signed_data_tail<R: Read>(
    s: &mut BerStream<R>,
    head: &SignedDataHead,
) -> Result<SignedDataTail, ReadError> {
    if let Some(x) = &head.econtent_explicit {
        s.close(x)?;
        if s.has_more_in(&head.eci)? {
            return Err(ReadError::Ber(BerError::new(
                s.pos(),
                BerErrorKind::TrailingData,
            )));
        }
    }
    let mut certs = None;
    let mut signer_infos = None;
    while s.has_more_in(&head.sd)? {
        match s.peek_tag()? {
            Some(0xa0) if certs.is_none() && signer_infos.is_none() => {
                certs = Some(s.read_element(MAX_STRUCTURE)?)
            }
            Some(0xa1) if signer_infos.is_none() => s.skip_element()?,
            Some(tag::SET) if signer_infos.is_none() => {
                signer_infos = Some(s.read_element(MAX_STRUCTURE)?)
            }
            _ => {
                return Err(ReadError::Ber(BerError::new(
                    s.pos(),
                    BerErrorKind::TrailingData,
                )))
            }
        }
    }
    let signer_infos = signer_infos.ok_or(ReadError::Ber(BerError::new(
        s.pos(),
        BerErrorKind::BadValue("missing signerInfos"),
    )))?;
    s.close(&head.explicit)?;
    s.close(&head.ci)?;
    Ok(SignedDataTail {
        certs,
        signer_infos,
    })
}

/// Parses the certificates and the single SignerInfo, with the official fatals.
fn tail_facts(tail: &SignedDataTail, layer: u8) -> Result<(Vec<Certificate>, SignerInfo), Stop> {
    let outer = layer == OUTER;
    let structure = Stop::Fatal(structure_fatal(layer));
    let set = parse_exact(&tail.signer_infos).map_err(|_| Stop::Fatal(structure_fatal(layer)))?;
    // Counted in place, the first kept: a SET of a great many SignerInfos costs no copy.
    let (mut count, mut first) = (0usize, None);
    for info in set.children() {
        let info = info.map_err(|_| Stop::Fatal(structure_fatal(layer)))?;
        first.get_or_insert(info);
        count += 1;
    }
    let first = match (count, first) {
        (1, Some(first)) => first,
        (0, _) | (_, None) => {
            return Err(Stop::Fatal(if outer {
                Fatal::MESSAGE_OUTER_SIGNED_PART_HAS_NO_SIGNER_INFORMATION
            } else {
                Fatal::MESSAGE_INNER_SIGNED_PART_HAS_NO_SIGNER_INFORMATION
            }))
        }
        _ => {
            return Err(Stop::Fatal(if outer {
                Fatal::MESSAGE_OUTER_SIGNED_PART_HAS_MORE_THAN_ONE_SIGNER_INFORMATION
            } else {
                Fatal::MESSAGE_INNER_SIGNED_PART_HAS_MORE_THAN_ONE_SIGNER_INFORMATION
            }))
        }
    };
    let signer = SignerInfo::parse(&first).map_err(|_| structure)?;
    let mut certs = Vec::new();
    if let Some(raw) = &tail.certs {
        let bad = || {
            Stop::Fatal(if outer {
                Fatal::MESSAGE_OUTER_SIGNED_PART_CONTAINS_INCORRECTLY_ENCODED_CERTIFICATES_SET
            } else {
                Fatal::MESSAGE_INNER_SIGNED_PART_CONTAINS_INCORRECTLY_ENCODED_CERTIFICATES_SET
            })
        };
        let set = parse_exact(raw).map_err(|_| bad())?;
        // Too many certificates is an oversized structure, as too many bytes of them is.
        let elements = super::certificate_set(&set).map_err(|e| match e.kind {
            BerErrorKind::TooMany { .. } => Stop::Fatal(structure_fatal(layer)),
            _ => bad(),
        })?;
        for c in elements {
            if c.tag == tag::SEQUENCE {
                certs.push(Certificate::from_der(c.raw).map_err(|_| bad())?);
            }
        }
    }
    Ok((certs, signer))
}

struct EnvelopedHead {
    ci: Header,
    explicit: Header,
    ed: Header,
    eci: Header,
    recipient_infos: Vec<u8>,
    content_alg: Vec<u8>,
    iv: Option<Vec<u8>>,
    encrypted_content: Header,
}

fn enveloped_head<R: Read>(s: &mut BerStream<R>) -> Result<EnvelopedHead, ReadError> {
    let ci = s.expect_header(tag::SEQUENCE)?;
    let at = s.pos();
    if read_oid(s)? != oid::ENVELOPED_DATA {
        return Err(wrong_type(at));
    }
    let explicit = s.expect_header(tag::ctx_cons(0))?;
    let ed = s.expect_header(tag::SEQUENCE)?;
    let v = s.expect_header(tag::INTEGER)?;
    s.read_bytes(v.end().unwrap_or(0).saturating_sub(s.pos()), 8)?;
    if s.peek_tag()? == Some(0xa0) {
        s.skip_element()?; // originatorInfo
    }
    let recipient_infos = s.read_element(MAX_STRUCTURE)?;
    parse_exact(&recipient_infos)?.expect(tag::SET)?;
    let eci = s.expect_header(tag::SEQUENCE)?;
    read_oid(s)?;
    let alg = s.read_element(MAX_STRUCTURE)?;
    let alg_t = parse_exact(&alg)?;
    let (content_alg, params) = algorithm_identifier(&alg_t)?;
    let iv = params
        .filter(|p| p.tag == tag::OCTET_STRING)
        .map(|p| p.content.to_vec());
    let content_alg = content_alg.to_vec();
    let encrypted_content = s.read_header()?;
    if encrypted_content.tag != 0x80 && encrypted_content.tag != 0xa0 {
        return Err(ReadError::Ber(BerError::new(
            encrypted_content.offset,
            BerErrorKind::BadValue("encryptedContent missing"),
        )));
    }
    Ok(EnvelopedHead {
        ci,
        explicit,
        ed,
        eci,
        recipient_infos,
        content_alg,
        iv,
        encrypted_content,
    })
}

fn enveloped_tail<R: Read>(s: &mut BerStream<R>, env: &EnvelopedHead) -> Result<(), ReadError> {
    // The encryptedContent, chunks and end-of-contents alike, was consumed by its OctetStream.
    s.close(&env.eci)?;
    while s.has_more_in(&env.ed)? {
        s.skip_element()?; // unprotectedAttrs
    }
    s.close(&env.explicit)?;
    s.close(&env.ci)?;
    Ok(())
}

// ---- keys ------------------------------------------------------------------------------

enum RecipientRef<'a> {
    IssuerSerial { issuer: &'a [u8], serial: &'a [u8] },
    Ski(&'a [u8]),
}

struct Ktri<'a> {
    rid: RecipientRef<'a>,
    alg: &'a [u8],
    encrypted_key: Vec<u8>,
}

struct Kekri<'a> {
    alg: &'a [u8],
    encrypted_key: Vec<u8>,
}

fn recipients(raw: &[u8]) -> Result<(Vec<Ktri<'_>>, Vec<Kekri<'_>>), BerError> {
    let set = parse_exact(raw)?;
    let mut ktris = Vec::new();
    let mut kekris = Vec::new();
    for ri in set.children() {
        let ri = ri?;
        match ri.tag {
            tag::SEQUENCE => {
                let mut f = ri.seq()?;
                f.next(tag::INTEGER)?;
                let rid_t = f.any()?;
                let rid = match rid_t.tag {
                    tag::SEQUENCE => {
                        let mut r = rid_t.seq()?;
                        let issuer = r.next(tag::SEQUENCE)?.raw;
                        let serial = r.next(tag::INTEGER)?.uint_bytes()?;
                        RecipientRef::IssuerSerial { issuer, serial }
                    }
                    0x80 => RecipientRef::Ski(rid_t.content),
                    found => {
                        return Err(rid_t.err(BerErrorKind::UnexpectedTag {
                            expected: tag::SEQUENCE,
                            found,
                        }))
                    }
                };
                let alg = algorithm_identifier(&f.next(tag::SEQUENCE)?)?.0;
                let encrypted_key = f.next(tag::OCTET_STRING)?.octets()?.into_owned();
                ktris.push(Ktri {
                    rid,
                    alg,
                    encrypted_key,
                });
            }
            0xa2 => {
                let mut f = ri.seq()?;
                f.next(tag::INTEGER)?;
                f.next(tag::SEQUENCE)?;
                let alg = algorithm_identifier(&f.next(tag::SEQUENCE)?)?.0;
                let encrypted_key = f.next(tag::OCTET_STRING)?.octets()?.into_owned();
                kekris.push(Kekri { alg, encrypted_key });
            }
            _ => {} // KeyAgree, password and other recipient infos are not ETEE's.
        }
    }
    Ok((ktris, kekris))
}

/// A key-transport recipient named in a message (issuer and serial, or a KeyDepot key id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AddresseeRef {
    IssuerSerial { issuer: Vec<u8>, serial: Vec<u8> },
    Ski(Vec<u8>),
}

/// Whom a message is for, as its head says: the key-transport recipients and the key
/// identifiers of its KEK recipients (the KGSS key ids of unknown-recipient messages).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Addressees {
    pub key_transport: Vec<AddresseeRef>,
    pub kek_ids: Vec<Vec<u8>>,
}

impl Addressees {
    /// Whether some key of `keys` answers to one of the key-transport recipients.
    pub fn has_key_in(&self, keys: &KeyRing) -> bool {
        self.key_transport.iter().any(|r| match r {
            AddresseeRef::IssuerSerial { issuer, serial } => {
                !keys.candidates_by_serial(issuer, serial).is_empty()
            }
            AddresseeRef::Ski(ski) => !keys.candidates_by_ski(ski).is_empty(),
        })
    }
}

/// Reads the head of a sealed message (the outer SignedData up to the EnvelopedData's
/// recipient infos; nothing is decrypted or verified) and says whom it is addressed to,
/// so that a receiver can fetch a KGSS key before unsealing. A message whose head does
/// not parse gives the fatal that [`unseal`] would report; reading stops at the recipient
/// infos, so a caller that keeps the bytes it fed can replay them into [`unseal`].
pub fn addressees<R: Read>(input: R) -> Result<Addressees, Fatal> {
    let fatal = |stop: Stop| match stop {
        Stop::Fatal(f) => f,
        // Nothing is decrypted here, so no key is asked (`Key` cannot happen).
        Stop::Input(_) | Stop::Output(_) | Stop::Key(_) => {
            Fatal::OUTER_SIGNED_DATA_STRUCTURE_INCORRECT
        }
    };
    let mut s0 = BerStream::new(input);
    let head = signed_data_head(&mut s0).map_err(|e| fatal(classify(e, OUTER)))?;
    let content = head
        .content
        .ok_or(Fatal::OUTER_SIGNED_DATA_CONTENT_MISSING)?;
    let octets = s0.octet_stream(content, OUTER);
    let mut s1 = BerStream::new(octets);
    let env = enveloped_head(&mut s1).map_err(|e| fatal(classify(e, MIDDLE)))?;
    let structure = |_| Fatal::ENVELOPED_DATA_STRUCTURE_INCORRECT;
    let (ktris, _) = recipients(&env.recipient_infos).map_err(structure)?;
    let key_transport = ktris
        .iter()
        .map(|k| match k.rid {
            RecipientRef::IssuerSerial { issuer, serial } => AddresseeRef::IssuerSerial {
                issuer: issuer.to_vec(),
                serial: serial.to_vec(),
            },
            RecipientRef::Ski(ski) => AddresseeRef::Ski(ski.to_vec()),
        })
        .collect();
    let kek_ids = kek_identifiers(&env.recipient_infos).map_err(structure)?;
    Ok(Addressees {
        key_transport,
        kek_ids,
    })
}

/// The `kekid.keyIdentifier` of every KEKRecipientInfo.
fn kek_identifiers(raw: &[u8]) -> Result<Vec<Vec<u8>>, BerError> {
    let mut ids = Vec::new();
    for ri in parse_exact(raw)?.children() {
        let ri = ri?;
        if ri.tag == 0xa2 {
            let mut f = ri.seq()?;
            f.next(tag::INTEGER)?;
            let mut kekid = f.next(tag::SEQUENCE)?.seq()?;
            ids.push(kekid.next(tag::OCTET_STRING)?.octets()?.into_owned());
        }
    }
    Ok(ids)
}

/// Finds and unwraps the content-encryption key as the official library does, except
/// that an RSA failure never shows: a random key takes its place (RFC 3218 §2.3), so that
/// a bad padding cannot be told from a wrong key.
fn recover_key(
    env: &EnvelopedHead,
    keys: &KeyRing,
    opts: &UnsealOptions,
    facts: &mut Facts,
) -> Result<Zeroizing<Vec<u8>>, Stop> {
    let (ktris, kekris) = recipients(&env.recipient_infos)
        .map_err(|_| Stop::Fatal(Fatal::ENVELOPED_DATA_STRUCTURE_INCORRECT))?;
    // The policy's checks in the official order (spec §1.4 step 3): the key-encryption
    // algorithm, the content algorithm, then the key's length.
    let content_alg_allowed = env.content_alg == oid::AES128_CBC;
    let content_alg = |facts: &mut Facts| {
        if !content_alg_allowed {
            facts
                .decryption_errors
                .push(E::DECRYPTION_SYMMETRIC_KEY_ALGORITHM_UNAUTHORIZED);
        }
    };
    if let Some(kek) = &opts.kek {
        let Some(kekri) = kekris.first() else {
            return Err(Stop::Fatal(
                Fatal::ENVELOPED_DATA_CONTAINS_NO_KEKRECIPIENTINFOS,
            ));
        };
        if kekri.alg != oid::AES128_WRAP {
            facts
                .decryption_errors
                .push(E::DECRYPTION_ASYMMETRIC_KEY_ALGORITHM_UNAUTHORIZED);
        }
        content_alg(facts);
        if kek.len() < 16 {
            facts
                .decryption_errors
                .push(E::DECRYPTION_SYMMETRIC_KEY_LENGTH_UNAUTHORIZED);
        }
        let cek = super::algorithms::aes_key_wrap(kek, &kekri.encrypted_key, false).ok_or(
            Stop::Fatal(Fatal::SECRET_KEY_CAN_NOT_DECRYPT_KEKRECIPIENTINFOS),
        )?;
        facts.opened_with = Some(OpenedWith::Kek);
        return Ok(cek);
    }
    if ktris.is_empty() {
        return Err(Stop::Fatal(
            Fatal::ENVELOPED_DATA_CONTAINS_NO_KEYTRANSRECIPIENTINFOS,
        ));
    }
    // Every (recipient info, key) pair we could try: exact matches (issuer and serial, or
    // key id) before serial-only ones, each group in message order. The official library
    // takes the first recipient info whose decimal serial it holds a key for; trying exact
    // matches first keeps a shared serial from hiding the right key.
    let mut exact = Vec::new();
    let mut loose = Vec::new();
    for ktri in &ktris {
        match ktri.rid {
            RecipientRef::IssuerSerial { issuer, serial } => {
                for k in keys.candidates_by_serial(issuer, serial) {
                    let is_exact = k.cert.as_ref().is_some_and(|c| c.issuer_der() == issuer);
                    if is_exact {
                        exact.push((ktri, k))
                    } else {
                        loose.push((ktri, k))
                    }
                }
            }
            RecipientRef::Ski(ski) => {
                exact.extend(keys.candidates_by_ski(ski).into_iter().map(|k| (ktri, k)))
            }
        }
    }
    exact.extend(loose);
    // Each key is tried once, with the first recipient info that names it, and at most
    // MAX_KEY_ATTEMPTS keys: a message may list thousands of recipient infos naming our
    // key, and each try is a private-key operation in the HSM (custody budget, audit
    // records) made before any signature is checked.
    let mut tried = Vec::new();
    exact.retain(|&(_, k)| {
        let new = tried.len() < MAX_KEY_ATTEMPTS && !tried.iter().any(|t| std::ptr::eq(*t, k));
        if new {
            tried.push(k);
        }
        new
    });
    let Some(&(first_ri, first_key)) = exact.first() else {
        return Err(Stop::Fatal(Fatal::DECRYPTION_PRIVATE_KEY_NOT_FOUND));
    };
    let wanted = content_cipher(&env.content_alg)
        .map(|c| c.key_len())
        .unwrap_or(16);
    // Every candidate is tried, whatever the ones before it gave: which keys are asked,
    // and so the time taken and a provider's refusal, must not depend on whether an
    // earlier blob decrypted (the sender orders the recipient infos and may name our keys
    // as it likes). The first that decrypts to a key of the right length opens the
    // message.
    let mut opened = None;
    let mut unusable = None;
    for &(ri, k) in &exact {
        match k.ops.decrypt_pkcs1v15(&k.key, &ri.encrypted_key) {
            Ok(cek) if cek.len() == wanted && opened.is_none() => opened = Some((ri, k, cek)),
            Ok(_) | Err(KeyError::DecryptFailed) => {}
            // The provider could not try (unreachable, a refusal, the key gone): nothing
            // the message caused; reported once every candidate was asked.
            Err(e) => {
                unusable.get_or_insert(e);
            }
        }
    }
    // No verdict on a message some of whose keys could not be asked: the caller reports
    // it, whether or not another key opened it (else the answer would say which).
    if let Some(e) = unusable {
        return Err(Stop::Key(e));
    }
    // The policy checks concern the pair that opened the message, or the first candidate.
    let (ri, key) = opened
        .as_ref()
        .map(|(ri, k, _)| (*ri, *k))
        .unwrap_or((first_ri, first_key));
    if ri.alg != oid::RSA_ENCRYPTION {
        facts
            .decryption_errors
            .push(E::DECRYPTION_ASYMMETRIC_KEY_ALGORITHM_UNAUTHORIZED);
    }
    content_alg(facts);
    if key.modulus_bits < 2048 {
        facts
            .decryption_errors
            .push(E::DECRYPTION_ASYMMETRIC_KEY_LENGTH_UNAUTHORIZED);
    }
    facts.opened_with = Some(OpenedWith::Key(key.key.clone()));
    match opened {
        Some((_, _, cek)) => Ok(cek),
        None => {
            // No candidate could unwrap it: carry on with a random key, indistinguishably
            // (the verdict and `opened_with` look the same as for a damaged ciphertext).
            let mut random = Zeroizing::new(vec![0u8; wanted]);
            let _ = openssl::rand::rand_bytes(&mut random);
            Ok(random)
        }
    }
}

// ---- stream adapters -------------------------------------------------------------------

struct HashingReader<R> {
    inner: R,
    hasher: OffloadHasher,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Payload of the `io::Error` raised when the ciphertext does not decrypt (bad padding,
/// truncated blocks).
#[derive(Debug, thiserror::Error)]
#[error("content decryption failed")]
struct CipherFault;

/// Decrypts a CBC ciphertext stream.
struct Decryptor<R> {
    src: R,
    crypter: Crypter,
    inbuf: Vec<u8>,
    /// Plaintext: wiped when dropped.
    outbuf: super::PlainBuf,
    out_pos: usize,
    out_len: usize,
    finished: bool,
    padding_failed: bool,
}

impl<R: Read> Decryptor<R> {
    fn new(src: R, mut crypter: Crypter) -> Self {
        crypter.pad(true);
        Self {
            src,
            crypter,
            inbuf: vec![0; 32 * 1024],
            outbuf: super::PlainBuf::new(32 * 1024 + 64),
            out_pos: 0,
            out_len: 0,
            finished: false,
            padding_failed: false,
        }
    }
}

impl<R: Read> Read for Decryptor<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.out_pos == self.out_len {
            if self.finished {
                return Ok(0);
            }
            let n = self.src.read(&mut self.inbuf)?;
            self.out_pos = 0;
            if n == 0 {
                self.finished = true;
                // A failed finalisation may have written a block before refusing it.
                self.outbuf.filled(2 * 16);
                match self.crypter.finalize(&mut self.outbuf) {
                    Ok(k) => self.out_len = k,
                    Err(_) => {
                        self.padding_failed = true;
                        self.out_len = 0;
                        return Err(io::Error::new(io::ErrorKind::InvalidData, CipherFault));
                    }
                }
            } else {
                // What update may write: the input and a block held back.
                self.outbuf.filled(n + 16);
                self.out_len = self
                    .crypter
                    .update(&self.inbuf[..n], &mut self.outbuf)
                    .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, CipherFault))?;
            }
        }
        let k = (self.out_len - self.out_pos).min(buf.len());
        buf[..k].copy_from_slice(&self.outbuf[self.out_pos..self.out_pos + k]);
        self.out_pos += k;
        Ok(k)
    }
}

// ---- verdict ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Policy {
    EhealthCert,
    Eid,
    WebAuthn,
}

impl Policy {
    fn min_key_bits(self) -> u32 {
        match self {
            Self::Eid => 1024,
            _ => 2048,
        }
    }
}

/// The signer a layer resolved to.
struct Resolved {
    policy: Option<Policy>,
    cert: Option<Certificate>,
    ski: Option<Vec<u8>>,
}

fn assemble(facts: Facts, opts: &UnsealOptions, at: i64) -> Unsealed {
    let mut v = Verdict::default();
    let mut sender = None;
    let mut signing_time = None;
    let mut timestamp = None;
    let base = |v: Verdict, sender, signing_time, timestamp, facts: &Facts| Unsealed {
        // Only a message that opened names its key; a fatal (including one that follows a
        // failed key unwrap) must look the same whatever the cause.
        opened_with: if v.fatal.is_none() {
            facts.opened_with.clone()
        } else {
            None
        },
        verdict: v,
        sender,
        signing_time,
        timestamp,
        content_len: facts.content_len,
        content_sha256: facts.content_sha256,
        outer_signature: facts.outer.signer.as_ref().map(|si| si.signature.clone()),
    };
    if let Some(f) = facts.outer_fatal {
        v.fatal(f);
        return base(v, None, None, None, &facts);
    }
    let mut outer_resolved = None;
    if let Some(si) = &facts.outer.signer {
        // The official library reports a signature timestamp's errors before the layer's.
        timestamp = timestamp_check(si, opts, &mut v);
        // Without a signing time, a trusted timestamp's time is the one the signer's
        // certificate is judged at (spec §1.6), else the evaluation time.
        let when = si
            .signing_times
            .first()
            .copied()
            .or(timestamp)
            .unwrap_or(at);
        let r = check_layer(true, &facts.outer, si, None, opts, when, at, &mut v);
        signing_time = si.signing_times.first().copied();
        sender = Some(Sender {
            certificate: r.cert.clone(),
            key_id: r.ski.clone(),
        });
        signing_time_warning(si, opts, at, &mut v);
        outer_resolved = Some(r);
    }
    if let Some(f) = facts.middle_fatal {
        v.fatal(f);
        return base(v, sender, signing_time, timestamp, &facts);
    }
    for e in &facts.decryption_errors {
        v.error(*e);
    }
    if let Some(f) = facts.inner_fatal {
        v.fatal(f);
        return base(v, sender, signing_time, timestamp, &facts);
    }
    if let (Some(si), Some(outer)) = (&facts.inner.signer, &outer_resolved) {
        let mut inner_v = Verdict::default();
        let r = check_layer(
            false,
            &facts.inner,
            si,
            Some((outer, &facts.outer.certs)),
            opts,
            si.signing_times.first().copied().unwrap_or(at),
            at,
            &mut inner_v,
        );
        if !correlated(outer, &r) {
            v.error(E::MESSAGE_INTEGRITY_INVALID);
        }
        for e in inner_v.errors {
            v.error(e);
        }
    }
    base(v, sender, signing_time, timestamp, &facts)
}

/// The checks of spec §1.4 step 2 (outer) or 4 (inner) for one layer: the signer's
/// certificate judged at `when` (the layer's signing time, or what stands in for it),
/// revocation at the evaluation time `at`.
#[allow(clippy::too_many_arguments)]
fn check_layer(
    outer: bool,
    layer: &SignedFacts,
    si: &SignerInfo,
    outer_signer: Option<(&Resolved, &Vec<Certificate>)>,
    opts: &UnsealOptions,
    when: i64,
    at: i64,
    v: &mut Verdict,
) -> Resolved {
    let pick = |o: E, i: E| if outer { o } else { i };
    // A key-id signer is always under WEB_AUTHN, whose only algorithm is RSASSA-PSS (spec
    // §1.2, §1.4 step 2); a certificate signer's policy is the one its algorithm names,
    // none when no policy names it (then the digest fails too, whatever it is).
    let (policy, algorithm_allowed) = match &si.sid {
        SignerId::SubjectKeyId(_) => (
            Some(Policy::WebAuthn),
            si.signature_alg.as_slice() == oid::RSASSA_PSS,
        ),
        SignerId::IssuerSerial { .. } => {
            let policy = match si.signature_alg.as_slice() {
                x if x == oid::RSASSA_PSS => Some(Policy::EhealthCert),
                x if x == oid::SHA256_WITH_RSA || x == oid::RSA_ENCRYPTION => Some(Policy::Eid),
                _ => None,
            };
            (policy, policy.is_some())
        }
    };
    if policy.is_none() || si.digest_alg != oid::SHA256 {
        v.error(pick(
            E::OUTER_SIGNATURE_DIGEST_ALGORITHM_UNAUTHORIZED,
            E::INNER_SIGNATURE_DIGEST_ALGORITHM_UNAUTHORIZED,
        ));
    }
    if !algorithm_allowed {
        v.error(pick(
            E::OUTER_SIGNATURE_ALGORITHM_UNAUTHORIZED,
            E::INNER_SIGNATURE_ALGORITHM_UNAUTHORIZED,
        ));
    }
    let mut resolved = Resolved {
        policy,
        cert: None,
        ski: None,
    };
    // An inner layer without certificates borrows the outer signer, and only its
    // signature (and key usage) is checked: the certificate was judged as the outer one.
    let mut borrowed = false;
    let key: Option<PKey<Public>> = match &si.sid {
        SignerId::SubjectKeyId(ski) => {
            resolved.ski = Some(ski.clone());
            let key = opts.expected_signers.iter().find_map(|e| match e {
                ExpectedSigner::KeyId { ski: s, public_key } if s == ski => {
                    Some(public_key.clone())
                }
                _ => None,
            });
            if key.is_none() {
                v.error(pick(
                    E::OUTER_SIGNATURE_COULD_NOT_BE_VERIFIED,
                    E::INNER_SIGNATURE_COULD_NOT_BE_VERIFIED,
                ));
                return resolved;
            }
            key
        }
        SignerId::IssuerSerial { issuer, serial } => {
            let own = layer
                .certs
                .iter()
                .find(|c| c.issuer_der() == issuer.as_slice() && c.serial() == serial.as_slice());
            let cert = match (own, outer_signer) {
                (Some(c), _) => Some(c.clone()),
                (None, Some((o, _))) if layer.certs.is_empty() => {
                    borrowed = true;
                    o.cert.clone()
                }
                _ => None,
            };
            match cert {
                Some(c) => {
                    let k = c.public_key().ok();
                    resolved.cert = Some(c);
                    k
                }
                None => {
                    if !borrowed {
                        v.error(pick(
                            E::OUTER_CERTIFICATE_EXPECTED_BUT_NOT_PRESENT,
                            E::INNER_CERTIFICATE_EXPECTED_BUT_NOT_PRESENT,
                        ));
                    }
                    return resolved;
                }
            }
        }
    };
    let check = match &key {
        None => SignatureCheck::Unsupported,
        Some(key) => {
            let mut check = signer::verify(si, key, &layer.digests, &layer.econtent_type);
            // BouncyCastle refuses to verify with a certificate not valid at the signing
            // time, and refuses several signing times.
            let stale = !si.signing_times.is_empty()
                && resolved
                    .cert
                    .as_ref()
                    .is_some_and(|c| c.valid_at(when) != Validity::Valid);
            if check != SignatureCheck::Unsupported && (stale || si.signing_times.len() > 1) {
                check = SignatureCheck::CouldNotVerify;
            }
            check
        }
    };
    match check {
        SignatureCheck::Valid | SignatureCheck::Unsupported => {}
        SignatureCheck::Mismatch => v.error(pick(
            E::OUTER_SIGNATURE_DOES_NOT_MATCH_AUTHENTICATION_CERTIFICATE,
            E::INNER_SIGNATURE_DOES_NOT_MATCH_SIGNATURE_CERTIFICATE,
        )),
        SignatureCheck::CouldNotVerify => v.error(pick(
            E::OUTER_SIGNATURE_COULD_NOT_BE_VERIFIED,
            E::INNER_SIGNATURE_COULD_NOT_BE_VERIFIED,
        )),
    }
    if let Some(cert) = &resolved.cert {
        if !cert.allows_any(key_usage::DIGITAL_SIGNATURE | key_usage::NON_REPUDIATION) {
            v.error(pick(
                E::OUTER_CERTIFICATE_HAS_INVALID_KEYUSAGE,
                E::INNER_CERTIFICATE_HAS_INVALID_KEYUSAGE,
            ));
        }
    }
    if borrowed {
        return resolved;
    }
    let key_ok = match (&key, policy) {
        (Some(k), Some(p)) => k.rsa().is_ok() && k.bits() >= p.min_key_bits(),
        _ => false,
    };
    if !key_ok {
        v.error(pick(
            E::OUTER_SIGNATURE_KEY_LENGTH_UNAUTHORIZED,
            E::INNER_SIGNATURE_KEY_LENGTH_UNAUTHORIZED,
        ));
    }
    if let Some(cert) = &resolved.cert {
        match cert.valid_at(when) {
            Validity::Valid => {}
            Validity::Expired => v.error(pick(
                E::OUTER_CERTIFICATE_EXPIRED,
                E::INNER_CERTIFICATE_EXPIRED,
            )),
            Validity::NotYetValid => v.error(pick(
                E::OUTER_CERTIFICATE_NOT_YET_VALID,
                E::INNER_CERTIFICATE_NOT_YET_VALID,
            )),
        }
        let mut pool: Vec<Certificate> = layer.certs.clone();
        if let Some((_, outer_certs)) = outer_signer {
            pool.extend(outer_certs.iter().cloned());
        }
        // The path at the signing time; revocation at the evaluation time, with the OCSP
        // answers and lists this layer carries first.
        let evidence = match opts.anchors.revocation().policy() {
            RevocationPolicy::None => Evidence::default(),
            _ => Evidence::new(&si.revocation_values, si.signing_times.first().copied()),
        };
        match opts.anchors.check_with(cert, &pool, when, at, &evidence) {
            PathCheck::Trusted => {}
            PathCheck::Untrusted => v.error(pick(
                E::OUTER_CERTIFICATE_CHAIN_NOT_TRUSTED,
                E::INNER_CERTIFICATE_CHAIN_NOT_TRUSTED,
            )),
            PathCheck::Revoked => v.error(pick(
                E::OUTER_CERTIFICATE_REVOKED,
                E::INNER_CERTIFICATE_REVOKED,
            )),
            PathCheck::StatusUnknown => v.error(pick(
                E::OUTER_CERTIFICATE_STATUS_UNKNOWN,
                E::INNER_CERTIFICATE_STATUS_UNKNOWN,
            )),
        }
        if !opts.expected_signers.is_empty()
            && !opts
                .expected_signers
                .iter()
                .any(|e| matches!(e, ExpectedSigner::Certificate(c) if c == cert))
        {
            v.error(pick(
                E::AUTHENTICATION_CERTIFICATE_NOT_IN_LIST_EXPECTED_SIGNERS,
                E::SIGNATURE_CERTIFICATE_NOT_IN_LIST_EXPECTED_SIGNERS,
            ));
        }
    }
    resolved
}

/// The official signing-time rule (outer layer only). A signature timestamp, when
/// present, stands in for the window check and is judged on its own.
fn signing_time_warning(si: &SignerInfo, opts: &UnsealOptions, at: i64, v: &mut Verdict) {
    if si.timestamp.is_some() {
        return;
    }
    if opts.signing_time_trust_implicit {
        return;
    }
    match si.signing_times.first() {
        None => v.warning(Warning::SIGNING_TIME_MISSING),
        Some(&t) => {
            // Saturating: the options are the caller's, any i64 (a window past the ends
            // of time is no window at all, not an overflow).
            let earliest = at
                .saturating_sub(opts.signing_time_expiration)
                .saturating_sub(opts.clock_skew);
            let latest = at.saturating_add(opts.clock_skew);
            if !(earliest < t && t < latest) {
                v.warning(Warning::SIGNING_TIME_EXPIRED);
            }
        }
    }
}

/// Checks the outer signature timestamp, when there is one; its time when it holds (the
/// imprint matches, the token is valid and its authority trusted).
fn timestamp_check(si: &SignerInfo, opts: &UnsealOptions, v: &mut Verdict) -> Option<i64> {
    let token = si.timestamp.as_ref()?;
    let checked = super::timestamp::check(token, &si.signature, &opts.tsa_anchors);
    match checked.error {
        Some(e) => {
            v.error(e);
            None
        }
        None => checked.gen_time,
    }
}

/// Inner/outer correlation (the authenticated-encryption check of the official library).
fn correlated(outer: &Resolved, inner: &Resolved) -> bool {
    if outer.policy.is_some() && inner.policy.is_some() && outer.policy != inner.policy {
        return false;
    }
    match (&outer.ski, &inner.ski, &outer.cert, &inner.cert) {
        (Some(a), Some(b), _, _) => a == b,
        (Some(_), None, _, _) | (None, Some(_), _, _) => false,
        (None, None, Some(a), Some(b)) => {
            let sa = a.subject_attr(oid::AT_SERIAL_NUMBER);
            let sb = b.subject_attr(oid::AT_SERIAL_NUMBER);
            match (sa, sb) {
                (Some(x), Some(y)) => x == y,
                (None, None) => a.subject_der() == b.subject_der() || a.subject() == b.subject(),
                _ => false,
            }
        }
        _ => true,
    }
}
